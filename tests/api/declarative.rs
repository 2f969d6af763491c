//! DB-less mode (`database = off`): a declarative file loaded at start, `POST /config` swapping
//! the whole configuration, `GET /config`, Kong's 405 for entity writes, and refusals that name
//! the entity and field at fault and change nothing. Cases ported from Kong's
//! `spec/02-integration/04-admin_api/15-off_spec.lua` where they apply.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis::admin::declarative::generated_id;
use portcullis::config::{Database, Settings};
use portcullis::startup::Application;
use serde_json::{json, Value};

use crate::helpers::{spawn_upstream, spawn_with, status_json, test_settings, TestApp};

fn dbless_settings(file: Option<&std::path::Path>) -> Settings {
    Settings {
        database: Database::Off,
        declarative_config: file.map(std::path::Path::to_path_buf),
        ..test_settings()
    }
}

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "decl test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// A file with every entity kind: services with nested routes and plugins, an upstream with a
/// target, consumers with every credential kind, certificates with SNIs, a CA certificate,
/// top-level entities referencing others by name.
fn every_kind(upstream_port: u16, route_path: &str, with_credential: bool) -> Value {
    let cert = rcgen::generate_simple_self_signed(vec!["decl.test".to_string()]).unwrap();
    let credentials = if with_credential {
        json!([{ "name": "app", "client_id": "clientid123", "client_secret": "secret123",
                  "redirect_uris": ["http://google.test/kong"] }])
    } else {
        json!([])
    };
    json!({
        "_format_version": "3.0",
        "_transform": true,
        "certificates": [{
            "cert": cert.cert.pem(),
            "key": cert.key_pair.serialize_pem(),
            "snis": [{ "name": "decl.test" }],
        }],
        "ca_certificates": [{ "cert": ca_pem() }],
        "upstreams": [{
            "name": "echo-upstream",
            "targets": [{ "target": format!("127.0.0.1:{upstream_port}") }],
        }],
        "services": [{
            "name": "svc",
            "host": "echo-upstream",
            "protocol": "http",
            "routes": [{ "name": "api", "paths": [route_path] }],
            "plugins": [{ "name": "oauth2", "config": { "enable_client_credentials": true } }],
        }, {
            "name": "other",
            "url": format!("http://127.0.0.1:{upstream_port}"),
        }],
        "routes": [{ "name": "closed", "paths": ["/closed"], "service": "other" }],
        "plugins": [{ "name": "request-termination", "route": "closed",
                      "config": { "status_code": 403, "message": "closed" } }],
        "consumers": [{
            "username": "bob",
            "oauth2_credentials": credentials,
            "keyauth_credentials": [{ "key": "bobs-key" }],
            "acls": [{ "group": "staff" }],
        }],
        "acls": [{ "consumer": "bob", "group": "admins" }],
    })
}

async fn token(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}{path}/oauth2/token", app.proxy_tls))
        .json(
            &json!({"client_id": "clientid123", "client_secret": "secret123",
                      "grant_type": "client_credentials"}),
        )
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn get_with(app: &TestApp, path: &str, token: &str) -> u16 {
    app.http
        .get(format!("{}{path}", app.proxy))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post_config(app: &TestApp, query: &str, doc: &Value) -> (u16, Value) {
    app.admin_post(
        &format!("/config{query}"),
        json!({ "config": doc.to_string() }),
    )
    .await
}

async fn start(doc: &Value) -> (TestApp, tempfile::NamedTempFile) {
    let file = write_file(&serde_yaml::to_string(doc).unwrap());
    let app = spawn_with(dbless_settings(Some(file.path()))).await;
    (app, file)
}

/// `_transform: false`, as Kong's `kong config db_export` writes it: secrets as stored. A client
/// secret stored hashed (`hash_secret`) stays that hash and still verifies the clear secret; a
/// key-auth key (clear in Kong's storage) works; a `_transform` that is not a boolean is refused.
#[actix_web::test]
async fn a_file_kong_exported_with_transform_false_loads() {
    let upstream = spawn_upstream();
    let hashed = portcullis::crypto::hash_secret("secret123").unwrap();
    let mut doc = every_kind(upstream.port, "/api", true);
    doc["_transform"] = json!(false);
    doc["consumers"][0]["oauth2_credentials"][0]["client_secret"] = json!(hashed);
    doc["consumers"][0]["oauth2_credentials"][0]["hash_secret"] = json!(true);
    let (app, _file) = start(&doc).await;
    let (_, creds) = app.admin_get("/oauth2").await;
    assert_eq!(creds["data"][0]["client_secret"], json!(hashed), "{creds}");
    let (s, t) = token(&app, "/api").await;
    assert_eq!(s, 200, "{t}");
    let (_, keys) = app.admin_get("/key-auths").await;
    assert_eq!(keys["data"].as_array().map(Vec::len), Some(1), "{keys}");

    doc["_transform"] = json!("no");
    let (s, body) = post_config(&app, "", &doc).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["fields"]["_transform"],
        json!("expected a boolean"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_file_with_every_entity_kind_loads_and_serves() {
    let upstream = spawn_upstream();
    let (app, _file) = start(&every_kind(upstream.port, "/api", true)).await;
    for (entity, n) in [
        ("services", 2),
        ("routes", 2),
        ("plugins", 2),
        ("consumers", 1),
        ("oauth2", 1),
        ("key-auths", 1),
        ("acls", 2),
        ("upstreams", 1),
        ("certificates", 1),
        ("snis", 1),
        ("ca_certificates", 1),
    ] {
        assert_eq!(app.count(entity).await, n, "{entity}");
    }
    assert_eq!(app.count("upstreams/echo-upstream/targets").await, 1);
    // Kong's ids: UUID v5 of the endpoint key in the entity's namespace.
    let (_, svc) = app.admin_get("/services/svc").await;
    assert_eq!(
        svc["id"],
        json!(generated_id("services", "svc").to_string())
    );
    let (s, t) = token(&app, "/api").await;
    assert_eq!(s, 200, "{t}");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(get_with(&app, "/api/x", access).await, 200);
    assert_eq!(get_with(&app, "/api/x", "not-a-token").await, 401);
    let r = app
        .http
        .get(format!("{}/closed", app.proxy))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!((s, b), (403, json!({"message": "closed"})));
}

#[actix_web::test]
async fn entity_writes_answer_405_with_kong_s_message() {
    let upstream = spawn_upstream();
    let (app, _file) = start(&every_kind(upstream.port, "/api", true)).await;
    let cases = [
        (
            reqwest::Method::POST,
            "/routes",
            "cannot create 'routes' entities when not using a database",
        ),
        (
            reqwest::Method::PUT,
            "/services/svc",
            "cannot create or update 'services' entities when not using a database",
        ),
        (
            reqwest::Method::PATCH,
            "/services/svc",
            "cannot update 'services' entities when not using a database",
        ),
        (
            reqwest::Method::DELETE,
            "/consumers/bob",
            "cannot remove 'consumers' entities when not using a database",
        ),
        (
            reqwest::Method::POST,
            "/consumers/bob/acls",
            "cannot create 'acls' entities when not using a database",
        ),
        (
            reqwest::Method::POST,
            "/certificates",
            "cannot create 'certificates' entities when not using a database",
        ),
        (
            reqwest::Method::POST,
            "/upstreams/echo-upstream/targets",
            "cannot create 'targets' entities when not using a database",
        ),
    ];
    for (method, path, message) in cases {
        let (s, b) = app
            .admin_call(method.clone(), path, Some(json!({"name": "x"})))
            .await;
        assert_eq!(s, 405, "{method} {path}: {b}");
        assert_eq!(
            b,
            json!({"code": 12, "name": "operation unsupported", "message": message})
        );
    }
    // Reads work.
    assert_eq!(app.count("services").await, 2);
}

#[actix_web::test]
async fn post_config_replaces_everything_and_keeps_the_tokens_of_kept_credentials() {
    let upstream = spawn_upstream();
    let (app, _file) = start(&every_kind(upstream.port, "/api", true)).await;
    let (_, t) = token(&app, "/api").await;
    let access = t["access_token"].as_str().unwrap().to_string();

    // The same credential (same id) under a new route path: its token stays valid.
    let (s, b) = post_config(&app, "", &every_kind(upstream.port, "/v2", true)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["services"].as_object().unwrap().len(), 2);
    assert_eq!(get_with(&app, "/v2/x", &access).await, 200);
    assert_eq!(
        app.http
            .get(format!("{}/api/x", app.proxy))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Without the credential: its tokens are refused.
    let (s, b) = post_config(&app, "", &every_kind(upstream.port, "/v2", false)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(get_with(&app, "/v2/x", &access).await, 401);
    assert_eq!(app.count("oauth2").await, 0);
}

#[actix_web::test]
async fn check_hash_answers_304_for_the_running_configuration() {
    let upstream = spawn_upstream();
    let doc = every_kind(upstream.port, "/api", true);
    let app = spawn_with(dbless_settings(None)).await;
    assert_eq!(app.count("services").await, 0);
    let (_, status) = app.admin_get("/status").await;
    assert_eq!(status["configuration_hash"], json!("0".repeat(32)));
    let (s, _) = post_config(&app, "?check_hash=1", &doc).await;
    assert_eq!(s, 201);
    let (_, status) = app.admin_get("/status").await;
    let hash = status["configuration_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 32);
    assert_ne!(hash, "0".repeat(32));
    let r = app
        .http
        .post(format!("{}/config?check_hash=1", app.admin))
        .json(&json!({"config": doc.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Without check_hash the same configuration is applied again.
    let (s, _) = post_config(&app, "", &doc).await;
    assert_eq!(s, 201);
}

#[actix_web::test]
async fn post_config_takes_a_raw_yaml_body_and_get_config_exports_the_running_one() {
    let upstream = spawn_upstream();
    let app = spawn_with(dbless_settings(None)).await;
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: raw\n    url: http://127.0.0.1:{}\n    routes:\n      - name: raw-route\n        paths: [/raw]\n",
        upstream.port
    );
    let (s, b) = app
        .admin_raw(reqwest::Method::POST, "/config", "text/yaml", yaml)
        .await;
    assert_eq!(s, 201, "{b}");
    let r = app
        .http
        .get(format!("{}/raw/x", app.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, exported) = app.admin_get("/config").await;
    assert_eq!(s, 200);
    let text = exported["config"].as_str().unwrap();
    // The export loads back as the same configuration.
    let (s, b) = app
        .admin_raw(
            reqwest::Method::POST,
            "/config",
            "text/yaml",
            text.to_string(),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (_, route) = app.admin_get("/routes/raw-route").await;
    assert_eq!(
        route["id"],
        json!(generated_id("routes", "raw-route").to_string())
    );
}

#[actix_web::test]
async fn bad_configurations_name_entity_and_field_and_change_nothing() {
    let upstream = spawn_upstream();
    let (app, _file) = start(&every_kind(upstream.port, "/api", true)).await;
    let svc = |extra: Value| {
        let mut doc = json!({"_format_version": "3.0", "services": [
            {"name": "s1", "url": "http://127.0.0.1:1"}
        ]});
        if let (Some(d), Value::Object(e)) = (doc.as_object_mut(), extra) {
            d.extend(e);
        }
        doc
    };
    // Does not parse.
    let (s, b) = app
        .admin_raw(
            reqwest::Method::POST,
            "/config",
            "text/yaml",
            "services: [\n  - name: {",
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["code"], 14);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("failed parsing declarative configuration"),
        "{b}"
    );

    // Unknown field of an entity.
    let (s, b) = post_config(
        &app,
        "",
        &json!({"_format_version": "3.0", "services": [
        {"name": "s1", "url": "http://127.0.0.1:1", "colour": "blue"}]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["name"], "invalid declarative configuration");
    assert_eq!(b["flattened_errors"][0]["entity_type"], "service");
    assert_eq!(b["flattened_errors"][0]["entity_name"], "s1");
    assert_eq!(
        b["flattened_errors"][0]["errors"],
        json!([{"type": "field", "field": "colour", "message": "unknown field"}])
    );
    assert_eq!(
        b["fields"],
        json!({"services": [{"colour": "unknown field"}]})
    );

    // Unknown top-level section, and an unsupported one named.
    let (s, b) = post_config(&app, "", &svc(json!({"jwt_secrets": []}))).await;
    assert_eq!(s, 400);
    assert_eq!(
        b["fields"]["jwt_secrets"],
        "entity 'jwt_secrets' is not supported by this gateway"
    );
    let (s, b) = post_config(&app, "", &svc(json!({"nonsense": []}))).await;
    assert_eq!(s, 400);
    assert_eq!(b["fields"]["nonsense"], "unknown field");

    // Duplicate name.
    let (s, b) = post_config(
        &app,
        "",
        &json!({"_format_version": "3.0", "services": [
        {"name": "s1", "url": "http://127.0.0.1:1"},
        {"name": "s1", "url": "http://127.0.0.1:2"}]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let errors = &b["flattened_errors"][0]["errors"];
    assert_eq!(errors[0]["type"], "entity");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("uniqueness violation: 'services' entity with "),
        "{b}"
    );

    // A reference to a missing entity.
    let (s, b) = post_config(
        &app,
        "",
        &svc(json!({"routes": [{"name": "r", "paths": ["/r"], "service": "nope"}]})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["flattened_errors"][0]["entity_type"], "route");
    assert_eq!(
        b["flattened_errors"][0]["errors"],
        json!([{"type": "field", "field": "service",
        "message": "invalid reference 'service: nope' (no such entry in 'services')"}])
    );

    // A plugin configuration its schema refuses, nested under its service.
    let (s, b) = post_config(
        &app,
        "",
        &json!({"_format_version": "3.0", "services": [
        {"name": "s1", "url": "http://127.0.0.1:1",
         "plugins": [{"name": "request-termination", "config": {"status_code": 99}}]}]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["flattened_errors"][0]["entity_type"], "plugin");
    assert_eq!(
        b["flattened_errors"][0]["errors"][0]["field"],
        "config.status_code"
    );
    assert!(
        b["fields"]["services"][0]["plugins"][0]["config"]["status_code"].is_string(),
        "{b}"
    );

    // A plugin this gateway does not have.
    let (s, b) = post_config(&app, "", &svc(json!({"plugins": [{"name": "basic-auth"}]}))).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["flattened_errors"][0]["errors"][0]["field"], "name");

    // 50 MB: refused by size before it is read.
    let big = vec![b'#'; 50 * 1024 * 1024];
    let (s, _) = app
        .admin_raw(reqwest::Method::POST, "/config", "text/yaml", big)
        .await;
    assert_eq!(s, 413);

    // Nothing changed.
    assert_eq!(app.count("services").await, 2);
    let (_, t) = token(&app, "/api").await;
    assert_eq!(
        get_with(&app, "/api/x", t["access_token"].as_str().unwrap()).await,
        200
    );
}

#[actix_web::test]
async fn a_swap_under_traffic_drops_no_request() {
    let upstream = spawn_upstream();
    let doc_a = every_kind(upstream.port, "/api", true);
    let (app, _file) = start(&doc_a).await;
    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut traffic = Vec::new();
    for _ in 0..4 {
        let (app, stop, answered) = (app.clone(), stop.clone(), answered.clone());
        traffic.push(actix_rt::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = app
                    .http
                    .get(format!("{}/closed", app.proxy))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                answered.fetch_add(1, Ordering::Relaxed);
            }
            statuses
        }));
    }
    for i in 0..10 {
        let path = if i % 2 == 0 { "/v2" } else { "/api" };
        let (s, b) = post_config(&app, "", &every_kind(upstream.port, path, true)).await;
        assert_eq!(s, 201, "{b}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 403), "{statuses:?}");
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
}

#[actix_web::test]
async fn an_invalid_file_stops_the_start_naming_entity_and_field() {
    let file = write_file(
        "_format_version: \"3.0\"\nservices:\n  - name: s1\n    url: http://127.0.0.1:1\n    routes:\n      - name: r1\n        protocols: [nope]\n",
    );
    let err = Application::build(dbless_settings(Some(file.path())))
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("services[0].routes[0] (r1): protocols"),
        "{text}"
    );
}

#[test]
fn a_declarative_file_with_another_database_is_refused() {
    let env = |db: &str| {
        vec![
            ("PORTCULLIS_DATABASE".to_string(), db.to_string()),
            (
                "PORTCULLIS_DECLARATIVE_CONFIG".to_string(),
                "kong.yml".to_string(),
            ),
        ]
    };
    let err = Settings::load(None, env("memory")).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "invalid value for `declarative_config`: a declarative configuration is only read with database = \"off\"; set database = \"off\" or remove declarative_config"
    );
    let settings = Settings::load(None, env("off")).unwrap();
    assert_eq!(settings.database, Database::Off);
    assert_eq!(
        settings.declarative_config.as_deref(),
        Some(std::path::Path::new("kong.yml"))
    );
}

/// Kong's fixtures (`spec/fixtures/*.yml` shapes): each loads, or fails with one error naming
/// what this gateway lacks.
#[actix_web::test]
async fn kong_s_fixture_files_load_or_name_what_is_unsupported() {
    let app = spawn_with(dbless_settings(None)).await;
    let loads = r#"
_format_version: "3.0"
services:
- name: foo
  host: example.com
  protocol: https
  _comment: my comment
  _ignore:
  - foo: bar
  routes:
  - name: bar
    paths:
    - /
    plugins:
    - name: request-termination
      config:
        status_code: 200
consumers:
- username: bob
  keyauth_credentials:
  - key: bob-key
"#;
    let (s, b) = app
        .admin_raw(reqwest::Method::POST, "/config", "text/yaml", loads)
        .await;
    assert_eq!(s, 201, "{b}");
    let basic_auth = "_format_version: \"3.0\"\nconsumers:\n- username: bob\nbasicauth_credentials:\n- consumer: bob\n  username: bob\n  password: secret\n";
    let (s, b) = app
        .admin_raw(reqwest::Method::POST, "/config", "text/yaml", basic_auth)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        b["fields"],
        json!({"basicauth_credentials": "entity 'basicauth_credentials' is not supported by this gateway"})
    );
    let old_format = "_format_version: \"1.1\"\nservices:\n- name: s\n  url: http://example.com\n";
    let (s, b) = app
        .admin_raw(reqwest::Method::POST, "/config", "text/yaml", old_format)
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["fields"].as_object().unwrap().len(), 1, "{b}");
    assert!(
        b["fields"]["_format_version"]
            .as_str()
            .unwrap()
            .contains("\"3.0\""),
        "{b}"
    );
    assert_eq!(app.count("services").await, 1);
}

/// Kong's answer without `flattened_errors` (Kong adds them with `?flatten_errors=1`; we always do).
fn kong_shape(mut b: Value) -> Value {
    b.as_object_mut().unwrap().remove("flattened_errors");
    b
}

/// Kong's off_spec `/config` cases: an invalid config string, a validation error, primary and
/// endpoint key uniqueness errors, no input.
#[actix_web::test]
async fn kong_s_config_error_answers() {
    let app = spawn_with(dbless_settings(None)).await;
    let (s, b) = app
        .admin_post("/config", json!({"config": "bobby tables"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        kong_shape(b),
        json!({
            "code": 14,
            "fields": {"error": "failed parsing declarative configuration: expected an object"},
            "message": "declarative config is invalid: {error=\"failed parsing declarative configuration: expected an object\"}",
            "name": "invalid declarative configuration",
        })
    );

    let (s, b) = app
        .admin_post(
            "/config",
            json!({"config": "_format_version: \"3.0\"\nservices:\n- port: -12\n"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        kong_shape(b),
        json!({
            "code": 14,
            "fields": {"services": [{"host": "required field missing", "port": "value should be between 0 and 65535"}]},
            "message": "declarative config is invalid: {services={{host=\"required field missing\",port=\"value should be between 0 and 65535\"}}}",
            "name": "invalid declarative configuration",
        })
    );

    let id = "0855b320-0dd2-547d-891d-601e9b38647f";
    let (s, b) = app.admin_post("/config", json!({"config": format!(
        "_format_version: \"3.0\"\nservices:\n- id: {id}\n  name: foo\n  host: example.com\n- id: {id}\n  name: bar\n  host: example.test\n")})).await;
    assert_eq!(s, 400);
    let msg = format!(
        "uniqueness violation: 'services' entity with primary key set to '{id}' already declared"
    );
    assert_eq!(
        kong_shape(b),
        json!({
            "code": 14,
            "fields": {"services": [null, msg]},
            "message": format!("declarative config is invalid: {{services={{[2]=\"{msg}\"}}}}"),
            "name": "invalid declarative configuration",
        })
    );

    let (s, b) = app.admin_post("/config", json!({"config":
        "_format_version: \"3.0\"\nservices:\n- name: foo\n  host: example.com\n- name: foo\n  host: example.test\n"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        b["fields"],
        json!({"services": [null,
        "uniqueness violation: 'services' entity with name set to 'foo' already declared"]})
    );

    let r = app
        .http
        .post(format!("{}/config", app.admin))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"message": "expected a declarative configuration"})
        )
    );
}

/// Kong's off_spec: on a collection only POST is a (refused) write, on an item PUT is one and
/// POST is not allowed at all.
#[actix_web::test]
async fn kong_s_405_cases() {
    let app = spawn_with(dbless_settings(None)).await;
    let unsupported = |m: &str| json!({"code": 12, "name": "operation unsupported", "message": m});
    for method in [
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::POST,
    ] {
        let (s, b) = app
            .admin_call(method.clone(), "/routes", Some(json!({"paths": ["/"]})))
            .await;
        assert_eq!(s, 405);
        if method == reqwest::Method::POST {
            assert_eq!(
                b,
                unsupported("cannot create 'routes' entities when not using a database")
            );
        } else {
            assert_eq!(b, json!({"message": "Method not allowed"}), "{method}");
        }
    }
    let item = format!("/routes/{}", uuid::Uuid::new_v4());
    let (s, b) = app
        .admin_call(reqwest::Method::PUT, &item, Some(json!({"paths": ["/"]})))
        .await;
    assert_eq!(
        (s, b),
        (
            405,
            unsupported("cannot create or update 'routes' entities when not using a database")
        )
    );
    let (s, b) = app
        .admin_call(reqwest::Method::POST, &item, Some(json!({"paths": ["/"]})))
        .await;
    assert_eq!((s, b), (405, json!({"message": "Method not allowed"})));
    // Kong's invalid offset answer holds in DB-less mode too.
    let (s, b) = app.admin_get("/routes?offset=x").await;
    assert_eq!(s, 400);
    assert_eq!(b["name"], "invalid offset");
}

/// `POST /config` on a gateway with a database: Kong's 400.
#[actix_web::test]
async fn config_endpoint_needs_dbless_mode() {
    let app = spawn_with(test_settings()).await;
    let (s, b) = app.admin_get("/config").await;
    assert_eq!(s, 400);
    assert_eq!(
        b,
        json!({"message": "this endpoint is only available when the gateway is configured to not use a database (database = off)"})
    );
}

/// Re-applying a configuration that repeats a plugin keeps its running instance: a
/// `rate-limiting` counter is not reset by a `POST /config` (a controller may post every few
/// seconds).
#[actix_web::test]
async fn reapplying_a_configuration_keeps_rate_limit_counters() {
    let upstream = spawn_upstream();
    let app = spawn_with(dbless_settings(None)).await;
    let doc = json!({"_format_version": "3.0", "services": [{
        "name": "limited", "url": upstream.url, "routes": [{"name": "limited", "paths": ["/limited"]}],
        "plugins": [{"name": "rate-limiting", "config": {"minute": 2, "policy": "local"}}],
    }]});
    let (s, b) = post_config(&app, "", &doc).await;
    assert_eq!(s, 201, "{b}");
    let get = || async {
        app.http
            .get(format!("{}/limited", app.proxy))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get().await, 200);
    assert_eq!(get().await, 200);
    let (s, _) = post_config(&app, "", &doc).await;
    assert_eq!(s, 201);
    assert_eq!(get().await, 429);
}
