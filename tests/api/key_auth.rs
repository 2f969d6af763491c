//! Kong's `key-auth` specs (`spec/03-plugins/09-key-auth`: `01-api_spec.lua`,
//! `02-access_spec.lua`), one test per case, each on the memory store (`key_auth::memory::…`) and
//! on Postgres (`key_auth::postgres::…`), with Kong's requests and Kong's assertions.
//!
//! Deliberate difference from Kong: keys are stored as SHA-256 digests. The write that sets a key
//! answers with it in `key`; reads answer `key_hash` instead (Kong answers `key` on every read).
//! Cases that read a key back from a later GET read it from the write's answer instead.
//!
//! Not ported, and why:
//! - *creates a key-auth credential with a ttl*, *GET #ttl*, *contains #ttl*, *auto-expiring keys*:
//!   credentials have no `ttl` here; the field is refused (see `post_with_ttl_is_refused`).
//! - *key in gRPC headers*: the gateway proxies HTTP only.
//! - *multiple auth … logical AND / OR* of this spec: Kong pairs key-auth with basic-auth, which
//!   this build does not have. The same cases of Kong's oauth2 spec (`25-oauth2/03-access_spec`,
//!   key-auth with oauth2) are ported here instead (`and_*`, `or_*`), but for the one with `jwt`.
//! - *removes apikey in encoded query*: Kong re-encodes the whole query when it strips one
//!   argument; the gateway forwards every other argument byte for byte (the exact answer is in
//!   `hide_credentials_strips_an_encoded_query_key_only`).

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{
    on_both_stores, spawn_on_backend, spawn_upstream, with_bob, Backend, TestApp, Upstream,
};

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 01-api_spec.lua
// ---------------------------------------------------------------------------------------------

async fn post_creates_with_key(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, cred) = app
        .admin_post("/consumers/bob/key-auth", json!({"key": "1234"}))
        .await;
    assert_eq!(s, 201, "{cred}");
    assert_eq!(cred["consumer"]["id"], bob["id"]);
    assert_eq!(cred["key"], "1234");
    assert_eq!(cred["key_hash"], digest("1234"));
}

async fn post_generates_a_unique_key(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, first) = app.admin_post("/consumers/bob/key-auth", json!({})).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["consumer"]["id"], bob["id"]);
    let first_key = first["key"].as_str().expect("a generated key").to_string();
    assert_eq!(first["key_hash"], digest(&first_key));
    let (s, _) = app
        .admin_delete(&format!("/key-auths/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 204);
    let (s, second) = app.admin_post("/consumers/bob/key-auth", json!({})).await;
    assert_eq!(s, 201, "{second}");
    let second_key = second["key"].as_str().expect("a generated key");
    assert_ne!(first_key, second_key);
}

async fn post_with_tags(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, cred) = app
        .admin_post(
            "/consumers/bob/key-auth",
            json!({"key": "keyauth-with-tags", "tags": ["tag1", "tag2"]}),
        )
        .await;
    assert_eq!(s, 201, "{cred}");
    assert_eq!(cred["consumer"]["id"], bob["id"]);
    assert_eq!(cred["tags"], json!(["tag1", "tag2"]));
}

/// Kong: *creates a key-auth credential with a ttl*. Deliberate difference: no `ttl` here.
async fn post_with_ttl_is_refused(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (s, body) = app
        .admin_post("/consumers/bob/key-auth", json!({"ttl": 1}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["fields"], json!({"ttl": "unknown field"}));
    assert_eq!(app.count("key-auths").await, 0);
}

async fn get_first_page(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    for _ in 0..3 {
        let (s, _) = app.admin_post("/consumers/bob/key-auth", json!({})).await;
        assert_eq!(s, 201);
    }
    let (s, page) = app.admin_get("/consumers/bob/key-auth").await;
    assert_eq!(s, 200, "{page}");
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    // Reads never show a key, only its digest.
    assert!(data
        .iter()
        .all(|c| c.get("key").is_none() && c["key_hash"].is_string()));
}

/// A credential made for the item cases; returns (credential as created, its key).
async fn one_credential(app: &TestApp) -> (Value, String) {
    let (s, cred) = app.admin_post("/consumers/bob/key-auth", json!({})).await;
    assert_eq!(s, 201, "{cred}");
    let key = cred["key"].as_str().unwrap().to_string();
    (cred, key)
}

async fn get_by_id(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, _) = one_credential(&app).await;
    let (s, got) = app
        .admin_get(&format!(
            "/consumers/bob/key-auth/{}",
            cred["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["id"], cred["id"]);
    assert!(got.get("key").is_none(), "{got}");
}

async fn get_by_key(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, key) = one_credential(&app).await;
    let (s, got) = app
        .admin_get(&format!("/consumers/bob/key-auth/{key}"))
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["id"], cred["id"]);
}

async fn get_by_id_only_under_its_consumer(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, _) = one_credential(&app).await;
    let (s, _) = app
        .admin_post("/consumers", json!({"username": "alice"}))
        .await;
    assert_eq!(s, 201);
    let id = cred["id"].as_str().unwrap();
    let (s, _) = app
        .admin_get(&format!("/consumers/bob/key-auth/{id}"))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .admin_get(&format!("/consumers/alice/key-auth/{id}"))
        .await;
    assert_eq!(s, 404);
}

async fn put_creates_with_key(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, cred) = app
        .admin_put("/consumers/bob/key-auth/1234", json!({}))
        .await;
    assert_eq!(s, 200, "{cred}");
    assert_eq!(cred["consumer"]["id"], bob["id"]);
    assert_eq!(cred["key"], "1234");
}

async fn put_by_id_generates_the_key(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, cred) = app
        .admin_put(
            "/consumers/bob/key-auth/c16bbff7-5d0d-4a28-8127-1ee581898f11",
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{cred}");
    assert_eq!(cred["consumer"]["id"], bob["id"]);
    assert_eq!(cred["id"], "c16bbff7-5d0d-4a28-8127-1ee581898f11");
    assert!(cred["key"].is_string(), "{cred}");
}

async fn patch_by_id(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, _) = one_credential(&app).await;
    let (s, got) = app
        .admin_patch(
            &format!("/consumers/bob/key-auth/{}", cred["id"].as_str().unwrap()),
            json!({"key": "4321"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["key"], "4321");
    assert_eq!(got["key_hash"], digest("4321"));
}

async fn patch_by_key(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (_, key) = one_credential(&app).await;
    let (s, got) = app
        .admin_patch(
            &format!("/consumers/bob/key-auth/{key}"),
            json!({"key": "4321UPD"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["key"], "4321UPD");
    // The old key no longer names it.
    let (s, _) = app
        .admin_get(&format!("/consumers/bob/key-auth/{key}"))
        .await;
    assert_eq!(s, 404);
}

async fn patch_refuses_invalid_input(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, _) = one_credential(&app).await;
    let (s, body) = app
        .admin_patch(
            &format!("/consumers/bob/key-auth/{}", cred["id"].as_str().unwrap()),
            json!({"key": 123}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["fields"], json!({"key": "expected a string"}));
}

async fn delete_by_id(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (cred, _) = one_credential(&app).await;
    let (s, _) = app
        .admin_delete(&format!(
            "/consumers/bob/key-auth/{}",
            cred["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 204);
    assert_eq!(app.count("key-auths").await, 0);
}

async fn delete_unknown_is_404(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    one_credential(&app).await;
    let (s, _) = app.admin_delete("/consumers/bob/key-auth/blah").await;
    assert_eq!(s, 404);
    let (s, _) = app
        .admin_delete("/consumers/bob/key-auth/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(s, 404);
}

async fn plugin_refuses_invalid_key_names(backend: Backend) {
    let app = spawn_on_backend(backend).await;
    let upstream = spawn_upstream();
    let (s, _) = app
        .admin_post("/services", json!({"name": "s", "url": upstream.url}))
        .await;
    assert_eq!(s, 201);
    let (s, route) = app
        .admin_post("/services/s/routes", json!({"hosts": ["keyauth1.test"]}))
        .await;
    assert_eq!(s, 201);
    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({"name": "key-auth", "route": {"id": route["id"]},
                   "config": {"key_names": ["hello\\world"]}}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["fields"]["config"]["key_names"][0],
        "bad header name 'hello\\world', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    );
    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({"name": "key-auth", "route": {"id": route["id"]},
                   "config": {"key_names": ["hello-world"]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["config"]["key_names"][0], "hello-world");
}

async fn lists_every_key_auth_and_paginates(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (s, _) = app
        .admin_post("/consumers", json!({"username": "bob-the-buidler"}))
        .await;
    assert_eq!(s, 201);
    for consumer in ["bob", "bob-the-buidler"] {
        for _ in 0..3 {
            let (s, _) = app
                .admin_post(&format!("/consumers/{consumer}/key-auth"), json!({}))
                .await;
            assert_eq!(s, 201);
        }
    }
    for path in ["/key-auths/", "/key-auths"] {
        let (s, page) = app.admin_get(path).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(page["data"].as_array().unwrap().len(), 6);
    }
    let (s, first) = app.admin_get("/key-auths?size=3").await;
    assert_eq!(s, 200);
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let offset = first["offset"].as_str().unwrap();
    let (s, second) = app
        .admin_get(&format!("/key-auths?size=3&offset={offset}"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(second["data"].as_array().unwrap().len(), 3);
    assert_ne!(first["data"], second["data"]);
    assert!(second.get("offset").is_none(), "last page: {second}");
}

async fn top_level_post_needs_a_consumer(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, body) = app.admin_post("/key-auths", json!({"key": "1234"})).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["message"],
        "schema violation (consumer: required field missing)"
    );
    let (s, body) = app
        .admin_post(
            "/key-auths",
            json!({"key": "1234", "consumer": {"id": bob["id"]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["key"], "1234");
}

async fn top_level_put_needs_a_consumer(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (s, body) = app.admin_put("/key-auths/1234", json!({})).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["message"],
        "schema violation (consumer: required field missing)"
    );
    let (s, body) = app
        .admin_put("/key-auths/1234", json!({"consumer": {"id": bob["id"]}}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["key"], "1234");
}

async fn consumer_of_a_credential(backend: Backend) {
    let (app, bob) = with_bob(backend).await;
    let (cred, key) = one_credential(&app).await;
    let id = cred["id"].as_str().unwrap();
    for path in [
        format!("/key-auths/{id}/consumer"),
        format!("/key-auths/{key}/consumer"),
    ] {
        let (s, got) = app.admin_get(&path).await;
        assert_eq!(s, 200, "{path}: {got}");
        assert_eq!(got, bob);
    }
    let (s, _) = app
        .admin_get(&format!("/key-auths/{}/consumer", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app.admin_get("/key-auths/aXrandomStringQ/consumer").await;
    assert_eq!(s, 404);
}

/// Keys are unique; the violation names the key the client sent, as Kong's does.
async fn duplicate_key_is_a_unique_violation(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let (s, _) = app
        .admin_post("/consumers/bob/key-auth", json!({"key": "1234"}))
        .await;
    assert_eq!(s, 201);
    let (s, body) = app
        .admin_post("/consumers/bob/key-auth", json!({"key": "1234"}))
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(
        body["message"],
        "UNIQUE violation detected on '{key=\"1234\"}'"
    );
    assert_eq!(body["fields"], json!({"key": "1234"}));
}

/// A credential read back (digest only) can be written again as it is, and still authenticates.
async fn a_read_credential_can_be_written_back(backend: Backend) {
    let (app, _) = with_bob(backend).await;
    let upstream = spawn_upstream();
    app.host_with_plugin(&upstream.url, "key-auth1.test", "key-auth", json!({}))
        .await;
    let (cred, key) = one_credential(&app).await;
    let id = cred["id"].as_str().unwrap();
    let (s, read) = app.admin_get(&format!("/key-auths/{id}")).await;
    assert_eq!(s, 200);
    let (s, _) = app.admin_delete(&format!("/key-auths/{id}")).await;
    assert_eq!(s, 204);
    let (s, written) = app
        .admin_put(&format!("/key-auths/{id}"), read.clone())
        .await;
    assert_eq!(s, 200, "{written}");
    assert!(written.get("key").is_none(), "{written}");
    assert_eq!(written["key_hash"], read["key_hash"]);
    let r = app
        .proxy_to(Method::GET, "key-auth1.test", "/request")
        .header("apikey", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// 02-access_spec.lua
// ---------------------------------------------------------------------------------------------

/// Kong's access fixture: consumers `no-body` and `bob`, `bob`'s key `kong`, and the plugin
/// config of each `key-auth<n>.test` host that `hosts` lists.
struct Fixture {
    app: TestApp,
    _upstream: Upstream,
    credential: Value,
    no_body: Value,
}

const NO_SUCH_CONSUMER: &str = "6d4e7c2f-1a87-4a55-9a5b-2b1a1f000004";

fn host_config(host: &str, no_body_id: &str) -> Value {
    match host {
        "key-auth1.test" => json!({}),
        "key-auth2.test" => json!({"hide_credentials": true, "realm": "test-realm"}),
        "key-auth3.test" => json!({"anonymous": no_body_id}),
        "key-auth4.test" => json!({"anonymous": NO_SUCH_CONSUMER}),
        "key-auth5.test" => json!({"key_in_body": true}),
        "key-auth6.test" => json!({"key_in_body": true, "hide_credentials": true}),
        "key-auth7.test" => json!({"run_on_preflight": false}),
        "key-auth8.test" => json!({"key_names": ["api_key"]}),
        "key-auth9.test" => json!({"key_names": ["api-key"]}),
        "key-auth10.test" => json!({"anonymous": "no-body"}),
        other => panic!("no Kong host {other}"),
    }
}

impl Fixture {
    async fn start(backend: Backend, hosts: &[&str]) -> Self {
        let app = spawn_on_backend(backend).await;
        let upstream = spawn_upstream();
        let (s, no_body) = app
            .admin_post("/consumers", json!({"username": "no-body"}))
            .await;
        assert_eq!(s, 201);
        let (s, _) = app
            .admin_post("/consumers", json!({"username": "bob"}))
            .await;
        assert_eq!(s, 201);
        let (s, credential) = app
            .admin_post("/consumers/bob/key-auth", json!({"key": "kong"}))
            .await;
        assert_eq!(s, 201, "{credential}");
        let no_body_id = no_body["id"].as_str().unwrap().to_string();
        for host in hosts {
            app.host_with_plugin(
                &upstream.url,
                host,
                "key-auth",
                host_config(host, &no_body_id),
            )
            .await;
        }
        Self {
            app,
            _upstream: upstream,
            credential,
            no_body,
        }
    }

    fn send(&self, method: Method, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.app.proxy_to(method, host, path)
    }
}

/// Status, JSON body and `WWW-Authenticate` of an answer.
async fn answer(rb: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
    let r = rb.send().await.expect("proxy reachable");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let (s, body) = crate::helpers::status_json(r).await;
    (s, body, challenge)
}

fn assert_denied(got: (u16, Value, Option<String>), message: &str, challenge: &str) {
    let (s, body, header) = got;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body, json!({"message": message}));
    assert_eq!(header.as_deref(), Some(challenge));
}

async fn options_pass_without_run_on_preflight(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth7.test"]).await;
    let (s, body, _) = answer(f.send(Method::OPTIONS, "key-auth7.test", "/status/200")).await;
    assert_eq!(s, 200, "{body}");
}

async fn options_are_checked_with_run_on_preflight(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let got = answer(f.send(Method::OPTIONS, "key-auth1.test", "/status/200")).await;
    assert_denied(got, "No API key found in request", "Key");
}

async fn missing_credentials(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let got = answer(f.send(Method::GET, "key-auth1.test", "/status/200")).await;
    assert_denied(got, "No API key found in request", "Key");
}

async fn empty_key_header_without_realm(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let rb = f
        .send(Method::GET, "key-auth1.test", "/status/200")
        .header("apikey", "");
    assert_denied(answer(rb).await, "No API key found in request", "Key");
}

async fn empty_key_header_with_realm(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth2.test"]).await;
    let rb = f
        .send(Method::GET, "key-auth2.test", "/status/200")
        .header("apikey", "");
    assert_denied(
        answer(rb).await,
        "No API key found in request",
        "Key realm=\"test-realm\"",
    );
}

async fn empty_key_querystring(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let got = answer(f.send(Method::GET, "key-auth1.test", "/status/200?apikey")).await;
    assert_denied(got, "No API key found in request", "Key");
}

async fn query_key_authenticates(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let (s, body, _) = answer(f.send(Method::GET, "key-auth1.test", "/request?apikey=kong")).await;
    assert_eq!(s, 200, "{body}");
}

async fn query_key_invalid(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let got = answer(f.send(Method::GET, "key-auth1.test", "/status/200?apikey=123")).await;
    assert_denied(got, "Unauthorized", "Key");
}

async fn query_key_duplicated(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let got = answer(f.send(
        Method::GET,
        "key-auth1.test",
        "/status/200?apikey=kong&apikey=kong",
    ))
    .await;
    assert_denied(got, "Duplicate API key found", "Key");
}

const BODY_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data",
];

/// Kong's test client encodes `fields` in the content type it is given.
fn encoded(content_type: &str, fields: &[(&str, &str)]) -> (String, String) {
    match content_type {
        "application/json" => {
            let o: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(v)))
                .collect();
            (content_type.to_string(), Value::Object(o).to_string())
        }
        "multipart/form-data" => {
            let mut body = String::new();
            for (k, v) in fields {
                body.push_str(&format!(
                    "--XxBoundaryxX\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ));
            }
            body.push_str("--XxBoundaryxX--\r\n");
            ("multipart/form-data; boundary=XxBoundaryxX".into(), body)
        }
        _ => (
            content_type.to_string(),
            serde_urlencoded::to_string(fields).unwrap(),
        ),
    }
}

fn with_body(
    rb: reqwest::RequestBuilder,
    content_type: &str,
    fields: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let (ct, body) = encoded(content_type, fields);
    rb.header("content-type", ct).body(body)
}

async fn body_key_authenticates(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth5.test"]).await;
    for ct in BODY_TYPES {
        let rb = with_body(
            f.send(Method::POST, "key-auth5.test", "/request"),
            ct,
            &[("apikey", "kong")],
        );
        let (s, body, _) = answer(rb).await;
        assert_eq!(s, 200, "{ct}: {body}");
        let rb = with_body(
            f.send(Method::POST, "key-auth5.test", "/request?apikey=kong"),
            ct,
            &[("non_apikey", "kong")],
        );
        assert_eq!(answer(rb).await.0, 200, "{ct}: in query");
        let rb = with_body(
            f.send(Method::POST, "key-auth5.test", "/request?apikey=kong")
                .header("apikey", "kong"),
            ct,
            &[("non_apikey", "kong")],
        );
        assert_eq!(answer(rb).await.0, 200, "{ct}: in header");
    }
}

async fn body_key_invalid(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth5.test"]).await;
    for ct in BODY_TYPES {
        let rb = with_body(
            f.send(Method::POST, "key-auth5.test", "/status/200"),
            ct,
            &[("apikey", "123")],
        );
        assert_denied(answer(rb).await, "Unauthorized", "Key");
    }
}

async fn body_key_duplicated(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth5.test"]).await;
    let rb = f
        .send(Method::POST, "key-auth5.test", "/status/200")
        .json(&json!({"apikey": ["kong", "kong"]}));
    assert_denied(answer(rb).await, "Duplicate API key found", "Key");
    let form = "application/x-www-form-urlencoded";
    let rb = f
        .send(Method::POST, "key-auth5.test", "/status/200")
        .header("content-type", form)
        .body("apikey=kong&apikey=kong");
    assert_denied(answer(rb).await, "Duplicate API key found", "Key");
    for body in [
        "apikey[]=kong&apikey[]=kong",
        "apikey[1]=kong&apikey[1]=kong",
    ] {
        let rb = f
            .send(Method::POST, "key-auth5.test", "/status/200")
            .header("content-type", form)
            .body(body);
        assert_denied(answer(rb).await, "No API key found in request", "Key");
    }
}

async fn header_key_authenticates(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let rb = f
        .send(Method::GET, "key-auth1.test", "/request")
        .header("apikey", "kong");
    assert_eq!(answer(rb).await.0, 200);
    let rb = f
        .send(Method::GET, "key-auth1.test", "/status/200")
        .header("apikey", "123");
    assert_denied(answer(rb).await, "Unauthorized", "Key");
}

async fn underscores_or_hyphens_in_key_headers(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth8.test"]).await;
    for name in ["api_key", "api-key"] {
        let rb = f
            .send(Method::GET, "key-auth8.test", "/request")
            .header(name, "kong");
        assert_eq!(answer(rb).await.0, 200, "{name}");
        let rb = f
            .send(Method::GET, "key-auth8.test", "/status/200")
            .header(name, "123");
        assert_denied(answer(rb).await, "Unauthorized", "Key");
    }
}

async fn sends_consumer_headers(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let (s, body, _) = answer(f.send(Method::GET, "key-auth1.test", "/request?apikey=kong")).await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert!(h["x-consumer-id"].is_string(), "{h}");
    assert_eq!(h["x-consumer-username"], "bob");
    assert_eq!(h["x-credential-identifier"], f.credential["id"]);
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
}

/// Kong's `config.hide_credentials` harness: query string, headers and body, for each content
/// type, with the plugin keeping (`key-auth1`/`5`) and hiding (`key-auth2`/`6`) the key.
async fn hide_credentials(backend: Backend) {
    let hosts = [
        "key-auth1.test",
        "key-auth2.test",
        "key-auth5.test",
        "key-auth6.test",
    ];
    let f = Fixture::start(backend, &hosts).await;
    for (host, hidden) in [("key-auth1.test", false), ("key-auth2.test", true)] {
        let (s, body, _) = answer(f.send(Method::GET, host, "/request?apikey=kong")).await;
        assert_eq!(s, 200);
        assert_eq!(
            body["query"],
            if hidden { "" } else { "apikey=kong" },
            "{host}"
        );
        let rb = f
            .send(Method::GET, host, "/request")
            .header("apikey", "kong");
        let (s, body, _) = answer(rb).await;
        assert_eq!(s, 200);
        assert_eq!(body["headers"].get("apikey").is_some(), !hidden, "{host}");
    }
    for ct in BODY_TYPES {
        for (host, hidden) in [("key-auth5.test", false), ("key-auth6.test", true)] {
            let rb = with_body(
                f.send(Method::POST, host, "/request"),
                ct,
                &[("apikey", "kong"), ("foo", "bar")],
            );
            let (s, body, _) = answer(rb).await;
            assert_eq!(s, 200, "{ct} {host}: {body}");
            let sent = body["body"].as_str().unwrap();
            assert_eq!(sent.contains("apikey"), !hidden, "{ct} {host}: {sent}");
            assert!(
                sent.contains("bar"),
                "{ct} {host}: the MIME type and other fields stay: {sent}"
            );
            assert!(
                body["headers"]["content-type"]
                    .as_str()
                    .unwrap()
                    .starts_with(ct),
                "{ct}: {body}"
            );
        }
    }
}

async fn key_in_body_with_unsupported_content_type(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth6.test"]).await;
    let rb = f
        .send(Method::POST, "key-auth6.test", "/status/200")
        .header("content-type", "text/plain")
        .body("foobar");
    assert_denied(answer(rb).await, "No API key found in request", "Key");
}

async fn query_order_kept(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test", "key-auth2.test"]).await;
    let path = "/request?c=value1&b=value2&apikey=kong&a=value3";
    let (_, body, _) = answer(f.send(Method::GET, "key-auth1.test", path)).await;
    assert_eq!(body["uri"], path);
    let (_, body, _) = answer(f.send(Method::GET, "key-auth2.test", path)).await;
    assert_eq!(body["uri"], "/request?c=value1&b=value2&a=value3");
}

/// Kong: *removes apikey in encoded query and preserves order of query parameters*. Kong answers
/// `/request?c=value1&b=value2&a=value3` (it re-encodes the query); the other arguments are
/// forwarded as the client wrote them.
async fn hide_credentials_strips_an_encoded_query_key_only(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth2.test"]).await;
    let path = "/request?c=valu%651&b=value2&api%6B%65%79=kong&a=valu%653";
    let (s, body, _) = answer(f.send(Method::GET, "key-auth2.test", path)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["uri"], "/request?c=valu%651&b=value2&a=valu%653");
}

async fn anonymous_with_right_credentials(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth3.test"]).await;
    let (s, body, _) = answer(f.send(Method::GET, "key-auth3.test", "/request?apikey=kong")).await;
    assert_eq!(s, 200);
    let h = &body["headers"];
    assert_eq!(h["x-consumer-username"], "bob");
    assert_eq!(h["x-credential-identifier"], f.credential["id"]);
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
}

async fn anonymous_with_wrong_credentials(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth3.test", "key-auth10.test"]).await;
    for host in ["key-auth3.test", "key-auth10.test"] {
        let (s, body, _) = answer(f.send(Method::GET, host, "/request")).await;
        assert_eq!(s, 200, "{host}");
        let h = &body["headers"];
        assert_eq!(h["x-anonymous-consumer"], "true");
        assert!(h.get("x-credential-identifier").is_none(), "{h}");
        assert_eq!(h["x-consumer-username"], "no-body");
        assert_eq!(h["x-consumer-id"], f.no_body["id"]);
    }
}

async fn anonymous_that_does_not_exist(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth4.test"]).await;
    let (s, body, _) = answer(f.send(Method::GET, "key-auth4.test", "/request")).await;
    assert_eq!(s, 500);
    assert_eq!(
        body["message"],
        format!("anonymous consumer {NO_SUCH_CONSUMER} is configured but doesn't exist")
    );
}

/// A key stops working as soon as its credential (or its consumer) is deleted.
async fn deleted_keys_stop_working(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let ok = || {
        f.send(Method::GET, "key-auth1.test", "/request")
            .header("apikey", "kong")
    };
    assert_eq!(answer(ok()).await.0, 200);
    let (s, _) = f.app.admin_delete("/consumers/bob").await;
    assert_eq!(s, 204);
    assert_eq!(f.app.count("key-auths").await, 0);
    assert_denied(answer(ok()).await, "Unauthorized", "Key");
}

/// A client cannot pose as a consumer: consumer headers it sends are replaced or removed.
async fn forged_consumer_headers_are_replaced(backend: Backend) {
    let f = Fixture::start(backend, &["key-auth1.test"]).await;
    let rb = f
        .send(Method::GET, "key-auth1.test", "/request?apikey=kong")
        .header("x-consumer-username", "admin")
        .header("x-anonymous-consumer", "true")
        .header("x-consumer-custom-id", "forged");
    let (s, body, _) = answer(rb).await;
    assert_eq!(s, 200);
    let h = &body["headers"];
    assert_eq!(h["x-consumer-username"], "bob");
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    assert!(h.get("x-consumer-custom-id").is_none(), "{h}");
}

// ---------------------------------------------------------------------------------------------
// 25-oauth2/03-access_spec.lua: multiple auth (oauth2 1400, then key-auth 1250)
// ---------------------------------------------------------------------------------------------

/// Kong's fixture: `logical-and.test` (oauth2 + key-auth), `logical-or.test` (both with
/// `anonymous`), consumers `Anonymous`, `Mickey` (key `Mouse`) and `Aladdin` (OAuth client
/// `clientid4567`).
struct Multi {
    app: TestApp,
    _upstream: Upstream,
    anonymous: Value,
    mickey: Value,
    aladdin: Value,
    keyauth: Value,
}

impl Multi {
    async fn start(backend: Backend) -> Self {
        let app = spawn_on_backend(backend).await;
        let upstream = spawn_upstream();
        let mut consumers = Vec::new();
        for name in ["Anonymous", "Mickey", "Aladdin"] {
            let (s, c) = app
                .admin_post("/consumers", json!({"username": name}))
                .await;
            assert_eq!(s, 201);
            consumers.push(c);
        }
        let anonymous_id = consumers[0]["id"].clone();
        let oauth2 = |anonymous: bool| {
            let mut c = json!({"scopes": ["email", "profile", "user.email"],
                "provision_key": "provision123", "enable_authorization_code": true});
            if anonymous {
                c["anonymous"] = anonymous_id.clone();
            }
            c
        };
        for (host, anonymous) in [("logical-and.test", false), ("logical-or.test", true)] {
            app.host_with_plugin(&upstream.url, host, "oauth2", oauth2(anonymous))
                .await;
            let key_auth = if anonymous {
                json!({"anonymous": anonymous_id})
            } else {
                json!({})
            };
            let (s, b) = app
                .admin_post(
                    &format!("/routes/route-{host}/plugins"),
                    json!({"name": "key-auth", "config": key_auth}),
                )
                .await;
            assert_eq!(s, 201, "{b}");
        }
        let (s, keyauth) = app
            .admin_post("/consumers/Mickey/key-auth", json!({"key": "Mouse"}))
            .await;
        assert_eq!(s, 201);
        let (s, b) = app
            .admin_post(
                "/consumers/Aladdin/oauth2",
                json!({"client_id": "clientid4567", "client_secret": "secret4567",
                       "redirect_uris": ["http://google.test/kong"], "name": "testapp"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let aladdin = consumers.pop().unwrap();
        let mickey = consumers.pop().unwrap();
        Self {
            app,
            _upstream: upstream,
            anonymous: consumers.pop().unwrap(),
            mickey,
            aladdin,
            keyauth,
        }
    }

    /// Kong's `provision_token`: a code for `clientid4567`, exchanged, over HTTPS.
    async fn token(&self, host: &str) -> String {
        let post = |path: &str, body: Value| {
            self.app
                .http
                .post(format!("{}{path}", self.app.proxy_tls))
                .header("host", host)
                .header("apikey", "Mouse")
                .json(&body)
        };
        let r = post(
            "/oauth2/authorize",
            json!({"provision_key": "provision123",
            "client_id": "clientid4567", "scope": "email", "response_type": "code",
            "state": "hello", "authenticated_userid": "userid123"}),
        );
        let (s, body) = crate::helpers::status_json(r.send().await.unwrap()).await;
        assert_eq!(s, 200, "{body}");
        let uri = body["redirect_uri"].as_str().unwrap();
        let code = uri
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let r = post(
            "/oauth2/token",
            json!({"code": code, "client_id": "clientid4567",
            "client_secret": "secret4567", "grant_type": "authorization_code"}),
        );
        let (s, body) = crate::helpers::status_json(r.send().await.unwrap()).await;
        assert_eq!(s, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn get(&self, host: &str, headers: &[(&str, &str)]) -> (u16, Value, Option<String>) {
        let mut rb = self.app.proxy_to(Method::GET, host, "/request");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        answer(rb).await
    }
}

async fn and_passes_with_all_credentials(backend: Backend) {
    let m = Multi::start(backend).await;
    let bearer = format!("bearer {}", m.token("logical-and.test").await);
    let (s, body, _) = m
        .get(
            "logical-and.test",
            &[("apikey", "Mouse"), ("authorization", &bearer)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    // key-auth runs last: its consumer and credential are the ones sent.
    assert_eq!(h["x-consumer-id"], m.mickey["id"]);
    assert_eq!(h["x-credential-identifier"], m.keyauth["id"]);
}

async fn and_fails_with_only_the_key(backend: Backend) {
    let m = Multi::start(backend).await;
    let (s, _, challenge) = m.get("logical-and.test", &[("apikey", "Mouse")]).await;
    assert_eq!(s, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
}

async fn and_fails_with_only_the_token(backend: Backend) {
    let m = Multi::start(backend).await;
    let bearer = format!("bearer {}", m.token("logical-and.test").await);
    let (s, _, challenge) = m
        .get("logical-and.test", &[("authorization", &bearer)])
        .await;
    assert_eq!(s, 401);
    assert_eq!(challenge.as_deref(), Some("Key"));
}

async fn and_fails_with_no_credential(backend: Backend) {
    let m = Multi::start(backend).await;
    let (s, _, challenge) = m.get("logical-and.test", &[]).await;
    assert_eq!(s, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
}

async fn or_passes_with_all_credentials(backend: Backend) {
    let m = Multi::start(backend).await;
    let bearer = format!("bearer {}", m.token("logical-or.test").await);
    let (s, body, _) = m
        .get(
            "logical-or.test",
            &[("apikey", "Mouse"), ("authorization", &bearer)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    // oauth2 ran first and authenticated; key-auth (logical OR) keeps its consumer.
    assert_eq!(h["x-consumer-id"], m.aladdin["id"]);
    assert_eq!(h["x-credential-identifier"], "clientid4567");
}

async fn or_passes_with_only_the_key(backend: Backend) {
    let m = Multi::start(backend).await;
    let headers = [
        ("apikey", "Mouse"),
        ("x-authenticated-scope", "all-access"),
        ("x-authenticated-userid", "admin"),
    ];
    let (s, body, _) = m.get("logical-or.test", &headers).await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    assert_eq!(h["x-consumer-id"], m.mickey["id"]);
    assert_eq!(h["x-credential-identifier"], m.keyauth["id"]);
    assert!(h.get("x-authenticated-scope").is_none(), "{h}");
    assert!(h.get("x-authenticated-userid").is_none(), "{h}");
}

async fn or_passes_with_only_the_token(backend: Backend) {
    let m = Multi::start(backend).await;
    let bearer = format!("bearer {}", m.token("logical-or.test").await);
    let (s, body, _) = m
        .get("logical-or.test", &[("authorization", &bearer)])
        .await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    assert_eq!(h["x-consumer-id"], m.aladdin["id"]);
    assert_eq!(h["x-credential-identifier"], "clientid4567");
}

async fn or_passes_with_no_credential(backend: Backend) {
    let m = Multi::start(backend).await;
    let (s, body, _) = m.get("logical-or.test", &[]).await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert_eq!(h["x-anonymous-consumer"], "true");
    assert_eq!(h["x-consumer-id"], m.anonymous["id"]);
    assert!(h.get("x-credential-identifier").is_none(), "{h}");
}

on_both_stores!(
    post_creates_with_key,
    post_generates_a_unique_key,
    post_with_tags,
    post_with_ttl_is_refused,
    get_first_page,
    get_by_id,
    get_by_key,
    get_by_id_only_under_its_consumer,
    put_creates_with_key,
    put_by_id_generates_the_key,
    patch_by_id,
    patch_by_key,
    patch_refuses_invalid_input,
    delete_by_id,
    delete_unknown_is_404,
    plugin_refuses_invalid_key_names,
    lists_every_key_auth_and_paginates,
    top_level_post_needs_a_consumer,
    top_level_put_needs_a_consumer,
    consumer_of_a_credential,
    duplicate_key_is_a_unique_violation,
    a_read_credential_can_be_written_back,
    options_pass_without_run_on_preflight,
    options_are_checked_with_run_on_preflight,
    missing_credentials,
    empty_key_header_without_realm,
    empty_key_header_with_realm,
    empty_key_querystring,
    query_key_authenticates,
    query_key_invalid,
    query_key_duplicated,
    body_key_authenticates,
    body_key_invalid,
    body_key_duplicated,
    header_key_authenticates,
    underscores_or_hyphens_in_key_headers,
    sends_consumer_headers,
    hide_credentials,
    key_in_body_with_unsupported_content_type,
    query_order_kept,
    hide_credentials_strips_an_encoded_query_key_only,
    anonymous_with_right_credentials,
    anonymous_with_wrong_credentials,
    anonymous_that_does_not_exist,
    deleted_keys_stop_working,
    forged_consumer_headers_are_replaced,
    and_passes_with_all_credentials,
    and_fails_with_only_the_key,
    and_fails_with_only_the_token,
    and_fails_with_no_credential,
    or_passes_with_all_credentials,
    or_passes_with_only_the_key,
    or_passes_with_only_the_token,
    or_passes_with_no_credential,
);
