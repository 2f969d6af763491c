//! Where the `oauth2` endpoints follow RFC 6749 and the Security BCP (RFC 9700) more strictly than
//! Kong: client types, code binding, one authentication method, the issuer, brute-force lockout,
//! parameter rules and bounds. Each runs on the memory store, and on Postgres when the suite does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use portcullis::config::Settings;
use serde_json::{json, Value};

use crate::helpers::{
    spawn_upstream, spawn_with, status_json, test_redis_url, test_settings, PgSchema, TestApp,
    Upstream,
};

/// A gateway with `/api` protected by oauth2 (every grant on), consumer `bob` with a confidential
/// client `conf`/`conf-secret` and a public client `pub`, both redirecting to two URIs.
struct Rfc {
    app: TestApp,
    _upstream: Upstream,
}

const CB: &str = "https://shop.example/cb";
const CB2: &str = "https://shop.example/cb2";

/// The suite's store (memory, or Postgres under `PORTCULLIS_TEST_DATABASE=postgres`) with
/// `adjust` applied to the test settings.
async fn spawn_adjusted(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        let schema = PgSchema::migrated().await;
        let mut settings = schema.settings.clone();
        adjust(&mut settings);
        let mut app = spawn_with(settings).await;
        app.pg = Some(schema);
        return app;
    }
    let mut settings = test_settings();
    adjust(&mut settings);
    spawn_with(settings).await
}

impl Rfc {
    async fn start(config: Value) -> Self {
        Self::start_with(config, |_| {}).await
    }

    async fn start_with(config: Value, adjust: impl FnOnce(&mut Settings)) -> Self {
        let app = spawn_adjusted(adjust).await;
        let upstream = spawn_upstream();
        app.expose("svc", &upstream.url, &["/api"]).await;
        let mut full = json!({"provision_key": "provision123", "enable_authorization_code": true,
            "enable_client_credentials": true, "enable_password_grant": true, "pkce": "none"});
        for (k, v) in config.as_object().unwrap() {
            full[k] = v.clone();
        }
        let (s, b) = app
            .admin_post(
                "/services/svc/plugins",
                json!({"name": "oauth2", "config": full}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = app
            .admin_post("/consumers", json!({"username": "bob"}))
            .await;
        assert_eq!(s, 201, "{b}");
        for (id, secret, kind) in [
            ("conf", "conf-secret", "confidential"),
            ("pub", "unused", "public"),
        ] {
            let (s, b) = app
                .admin_post(
                    "/consumers/bob/oauth2",
                    json!({"name": id, "client_id": id, "client_secret": secret,
                           "client_type": kind, "redirect_uris": [CB, CB2]}),
                )
                .await;
            assert_eq!(s, 201, "{b}");
        }
        Self {
            app,
            _upstream: upstream,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.proxy_tls)
    }

    async fn json(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .app
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        let (s, b) = status_json(r).await;
        (s, headers, b)
    }

    async fn form(&self, path: &str, form: &str, basic: Option<&str>) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string());
        if let Some(b) = basic {
            req = req.header("authorization", format!("Basic {b}"));
        }
        status_json(req.send().await.unwrap()).await
    }

    /// A code for `client` with the extra authorize parameters.
    async fn code(&self, client: &str, extra: Value) -> String {
        let mut body = json!({"provision_key": "provision123", "client_id": client,
            "response_type": "code", "authenticated_userid": "u1"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, _, b) = self.json("/api/oauth2/authorize", body).await;
        assert_eq!(s, 200, "{b}");
        let uri = b["redirect_uri"].as_str().unwrap();
        uri.split_once("code=")
            .and_then(|(_, rest)| rest.split('&').next())
            .unwrap()
            .to_string()
    }

    async fn redeem(&self, code: &str, redirect_uri: Option<&str>) -> (u16, Value) {
        let mut body = json!({"grant_type": "authorization_code", "code": code,
            "client_id": "conf", "client_secret": "conf-secret"});
        if let Some(uri) = redirect_uri {
            body["redirect_uri"] = json!(uri);
        }
        let (s, _, b) = self.json("/api/oauth2/token", body).await;
        (s, b)
    }
}

fn err(error: &str, description: &str) -> Value {
    json!({"error": error, "error_description": description})
}

fn basic(id: &str, secret: &str) -> String {
    B64.encode(format!("{id}:{secret}"))
}

// RFC 6749 §4.4 and §4.3: grants for clients that can keep a secret. Kong issues these tokens to
// public clients that send only their client_id.
#[actix_web::test]
async fn public_clients_cannot_use_client_credentials_or_password() {
    let t = Rfc::start(json!({})).await;
    let refused = err(
        "unauthorized_client",
        "Public clients may not use this grant type",
    );
    let (s, _, b) = t
        .json(
            "/api/oauth2/token",
            json!({"grant_type": "client_credentials", "client_id": "pub"}),
        )
        .await;
    assert_eq!((s, &b), (400, &refused));
    let (s, _, b) = t
        .json(
            "/api/oauth2/token",
            json!({"grant_type": "password", "client_id": "pub",
            "provision_key": "provision123", "authenticated_userid": "u1"}),
        )
        .await;
    assert_eq!((s, &b), (400, &refused));
    // A confidential client still gets both.
    let (s, _, b) = t
        .json(
            "/api/oauth2/token",
            json!({"grant_type": "client_credentials",
            "client_id": "conf", "client_secret": "conf-secret"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = t
        .json("/api/oauth2/token", json!({"grant_type": "password", "client_id": "conf",
            "client_secret": "conf-secret", "provision_key": "provision123", "authenticated_userid": "u1"}))
        .await;
    assert_eq!(s, 200, "{b}");
}

// RFC 7662 §2.1: the introspection caller must be authorized, which a public client cannot be.
// RFC 7009 §2.1: a public client may revoke its own tokens by naming itself.
#[actix_web::test]
async fn introspection_needs_a_confidential_client_and_revocation_accepts_a_public_one() {
    let t = Rfc::start(json!({})).await;
    let code = t.code("pub", json!({})).await;
    let (s, _, tokens) = t
        .json(
            "/api/oauth2/token",
            json!({"grant_type": "authorization_code", "code": code, "client_id": "pub"}),
        )
        .await;
    assert_eq!(s, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let (s, h, b) = t
        .json(
            "/api/oauth2/introspect",
            json!({"token": access, "client_id": "pub"}),
        )
        .await;
    assert_eq!(
        (s, &b),
        (401, &err("invalid_client", "Invalid client authentication"))
    );
    assert_eq!(h["www-authenticate"], "Basic realm=\"OAuth2.0\"");
    let (s, _, b) = t
        .json(
            "/api/oauth2/revoke",
            json!({"token": access, "client_id": "pub"}),
        )
        .await;
    assert_eq!((s, &b), (200, &json!({})));
    let (s, _) = {
        let r = t
            .app
            .http
            .get(format!("{}/api/x", t.app.proxy))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        status_json(r).await
    };
    assert_eq!(s, 401, "the revoked token is refused");
}

// RFC 6749 §4.1.3: the redirect_uri of the authorization request (or its absence) is bound to the
// code. Kong redeems a code with any registered redirect_uri, or with none.
#[actix_web::test]
async fn a_code_is_redeemed_only_with_the_redirect_uri_it_was_issued_for() {
    let t = Rfc::start(json!({})).await;
    let mismatch = err(
        "invalid_grant",
        "redirect_uri does not match the one of the authorization request",
    );
    let code = t.code("conf", json!({"redirect_uri": CB})).await;
    assert_eq!(t.redeem(&code, Some(CB2)).await, (400, mismatch.clone()));
    let code = t.code("conf", json!({"redirect_uri": CB})).await;
    assert_eq!(t.redeem(&code, None).await, (400, mismatch));
    let code = t.code("conf", json!({"redirect_uri": CB})).await;
    let (s, b) = t.redeem(&code, Some(CB)).await;
    assert_eq!(s, 200, "{b}");
    // Without a redirect_uri at authorization, redemption needs none (a registered one is allowed).
    let code = t.code("conf", json!({})).await;
    let (s, b) = t.redeem(&code, None).await;
    assert_eq!(s, 200, "{b}");
    let code = t.code("conf", json!({})).await;
    let (s, b) = t.redeem(&code, Some(CB2)).await;
    assert_eq!(s, 200, "{b}");
}

// RFC 6749 §2.3: one authentication method per request; §2.3.1: never in the request URI, and
// the Basic credentials form-urlencoded. Kong picks one of two methods silently and finds
// "basic " anywhere in the header.
#[actix_web::test]
async fn client_authentication_uses_exactly_one_method() {
    let t = Rfc::start(json!({})).await;
    let two = err(
        "invalid_request",
        "Client authentication must use one method: the Authorization header or the client_id and client_secret parameters",
    );
    let cc = "grant_type=client_credentials";
    // Basic for one client, body credentials for another.
    let (s, b) = t
        .form(
            "/api/oauth2/token",
            &format!("{cc}&client_id=pub&client_secret=x"),
            Some(&basic("conf", "conf-secret")),
        )
        .await;
    assert_eq!((s, &b), (400, &two));
    // Basic plus a body secret of the same client.
    let (s, b) = t
        .form(
            "/api/oauth2/token",
            &format!("{cc}&client_secret=conf-secret"),
            Some(&basic("conf", "conf-secret")),
        )
        .await;
    assert_eq!((s, &b), (400, &two));
    // Basic plus the same client_id in the body is one method.
    let (s, b) = t
        .form(
            "/api/oauth2/token",
            &format!("{cc}&client_id=conf"),
            Some(&basic("conf", "conf-secret")),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // A secret in the query string, even with the body right.
    let (s, b) = t
        .form(
            "/api/oauth2/token?client_secret=conf-secret",
            &format!("{cc}&client_id=conf&client_secret=conf-secret"),
            None,
        )
        .await;
    assert_eq!(
        (s, &b),
        (
            400,
            &err(
                "invalid_request",
                "client_secret must not be sent in the request URI"
            )
        )
    );
    // The scheme must open the header.
    let r = t
        .app
        .http
        .post(t.url("/api/oauth2/token"))
        .header(
            "authorization",
            format!("Bearer basic {}", basic("conf", "conf-secret")),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, &b),
        (400, &err("invalid_client", "Invalid client authentication"))
    );
}

#[actix_web::test]
async fn basic_credentials_are_form_urldecoded() {
    let t = Rfc::start(json!({})).await;
    let (s, b) = t
        .app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "odd", "client_id": "odd id", "client_secret": "p:ss+wörd"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let encoded = B64.encode("odd+id:p%3Ass%2Bw%C3%B6rd");
    let (s, b) = t
        .form(
            "/api/oauth2/token",
            "grant_type=client_credentials",
            Some(&encoded),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Sent raw, '+' reads as a space: not the secret.
    let (s, b) = t
        .form(
            "/api/oauth2/token",
            "grant_type=client_credentials",
            Some(&B64.encode("odd id:p:ss+wörd")),
        )
        .await;
    assert_eq!(
        (s, &b),
        (401, &err("invalid_client", "Invalid client authentication"))
    );
}

fn proxy_port(app: &TestApp) -> String {
    app.proxy_tls.rsplit(':').next().unwrap().to_string()
}

// RFC 8414 §2 and RFC 9207: the issuer is the server's, never the caller's Host. Kong has no
// metadata endpoint; ours used to echo Host.
#[actix_web::test]
async fn the_issuer_never_comes_from_the_callers_host() {
    let t = Rfc::start(json!({})).await;
    let r = t
        .app
        .http
        .get(t.url("/api/.well-known/oauth-authorization-server"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    let (s, meta) = status_json(r).await;
    assert_eq!(s, 200, "{meta}");
    let issuer = format!("https://127.0.0.1:{}/api", proxy_port(&t.app));
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(
        meta["authorization_endpoint"],
        format!("{issuer}/oauth2/authorize")
    );
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        meta["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert!(!meta.to_string().contains("evil.example"), "{meta}");

    // The authorize answer carries `iss`, on success and on error.
    let (s, _, b) = t
        .json(
            "/api/oauth2/authorize",
            json!({"provision_key": "provision123", "client_id": "conf",
            "response_type": "code", "authenticated_userid": "u1", "redirect_uri": CB}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let iss = format!("iss={}", encode(&issuer));
    let uri = b["redirect_uri"].as_str().unwrap();
    assert!(uri.starts_with(CB) && uri.contains(&iss), "{uri}");
    let (s, _, b) = t
        .json(
            "/api/oauth2/authorize",
            json!({"provision_key": "provision123", "client_id": "conf",
            "response_type": "nonsense", "authenticated_userid": "u1"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let uri = b["redirect_uri"].as_str().unwrap();
    assert!(
        uri.contains("error=unsupported_response_type") && uri.contains(&iss),
        "{uri}"
    );
}

/// Kong's redirect encoding: every byte but `A-Za-z0-9_` as `%xx`.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

#[actix_web::test]
async fn a_configured_issuer_or_the_routes_host_names_the_server() {
    let t = Rfc::start(json!({"issuer": "https://auth.example.com/shop/"})).await;
    let r = t
        .app
        .http
        .get(t.url("/api/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    let (_, meta) = status_json(r).await;
    assert_eq!(meta["issuer"], "https://auth.example.com/shop");
    assert_eq!(
        meta["token_endpoint"],
        "https://auth.example.com/shop/oauth2/token"
    );
    let (s, b) = t
        .app
        .admin_post(
            "/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true, "issuer": "http://auth.example.com"}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"]["issuer"],
        "'http://auth.example.com' is not an https URL without query or fragment"
    );

    // Without `issuer`, a route with one host names it.
    let (s, b) = t
        .app
        .admin_post(
            "/services/svc/routes",
            json!({"name": "shop", "hosts": ["shop.example"], "paths": ["/hosted"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = t
        .app
        .admin_post(
            "/routes/shop/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let r = t
        .app
        .http
        .get(t.url("/hosted/.well-known/oauth-authorization-server"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    let (s, meta) = status_json(r).await;
    assert_eq!(s, 200, "{meta}");
    assert_eq!(meta["issuer"], "https://shop.example/hosted");
}

// RFC 6749 §10.10 / RFC 9700 §4.10: guessing a secret is throttled per client_id and address.
// Kong answers every guess.
#[actix_web::test]
async fn failed_client_authentications_lock_the_client_and_address_out() {
    let t = Rfc::start_with(json!({}), |s| {
        s.oauth2_auth_failure_limit = 3;
        s.trusted_ips = vec!["127.0.0.1/32".into()];
    })
    .await;
    let send = |from: &'static str, secret: &'static str, path: &'static str| {
        let req = t
            .app
            .http
            .post(t.url(path))
            .header("x-real-ip", from)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "conf"),
                ("client_secret", secret),
                ("token", "whatever"),
            ]);
        async move {
            let r = req.send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let (s, b) = status_json(r).await;
            (s, retry, b)
        }
    };
    for _ in 0..3 {
        let (s, retry, b) = send("192.0.2.1", "guess", "/api/oauth2/token").await;
        assert_eq!(
            (s, retry, &b),
            (
                400,
                None,
                &err("invalid_client", "Invalid client authentication")
            )
        );
    }
    let locked = err(
        "invalid_client",
        "Too many failed client authentications; retry later",
    );
    // Past the limit even the right secret is not looked at, on all three endpoints.
    for path in [
        "/api/oauth2/token",
        "/api/oauth2/introspect",
        "/api/oauth2/revoke",
    ] {
        let (s, retry, b) = send("192.0.2.1", "conf-secret", path).await;
        assert_eq!((s, &b), (429, &locked), "{path}");
        let retry = retry.expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Another address is not locked, and its success does not unlock the first.
    let (s, _, b) = send("192.0.2.2", "conf-secret", "/api/oauth2/token").await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = send("192.0.2.1", "conf-secret", "/api/oauth2/token").await;
    assert_eq!(s, 429);
}

// In a cluster the count lives in Redis: failures on one node lock the pair out on another.
#[actix_web::test]
async fn the_lockout_holds_across_nodes_sharing_redis() {
    let schema = PgSchema::migrated().await;
    let mut settings = schema.settings.clone();
    settings.redis_url = Some(portcullis::config::Secret::new(test_redis_url()));
    settings.redis_prefix = format!("lock{}", uuid::Uuid::new_v4().simple());
    settings.oauth2_auth_failure_limit = 2;
    let node_a = spawn_with(settings.clone()).await;
    let upstream = spawn_upstream();
    crate::helpers::client_credentials_fixture(&node_a, &upstream.url).await;
    let node_b = spawn_with(settings).await;
    let token = |app: &TestApp, secret: &str| {
        app.http
            .post(format!("{}/api/oauth2/token", app.proxy_tls))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "clientid123"),
                ("client_secret", secret),
            ])
            .send()
    };
    // Node B learns the configuration through the cluster bus.
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "node B serves the route",
        || async {
            let r = token(&node_b, "secret123").await.unwrap();
            (r.status() == 200).then_some(())
        },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(token(&node_a, "guess").await.unwrap().status(), 400);
    }
    let r = token(&node_b, "secret123").await.unwrap();
    assert_eq!(r.status(), 429, "locked on the other node too");
    node_a.stop().await;
    node_b.stop().await;
    drop(schema);
}

// RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once." Kong
// turns repeats into lists and answers with whatever check meets them first.
#[actix_web::test]
async fn repeated_or_non_string_parameters_are_refused_by_name() {
    let t = Rfc::start(json!({"scopes": ["a", "b"]})).await;
    let authz = "provision_key=provision123&response_type=code&authenticated_userid=u1";
    for name in [
        "redirect_uri",
        "scope",
        "state",
        "client_id",
        "code",
        "code_verifier",
    ] {
        let value = if name == "redirect_uri" { CB } else { "a" };
        let client = if name == "client_id" {
            ""
        } else {
            "&client_id=conf"
        };
        let form = format!("{authz}{client}&{name}={value}&{name}={value}");
        let (s, b) = t.form("/api/oauth2/authorize", &form, None).await;
        assert_eq!(
            (s, &b),
            (
                400,
                &err(
                    "invalid_request",
                    &format!("{name} must not be included more than once")
                )
            ),
            "{name}"
        );
        let (s, _, b) = t
            .json(
                "/api/oauth2/token",
                json!({"grant_type": "authorization_code", "client_id": "conf",
                    "client_secret": "conf-secret", name: {"x": 1}}),
            )
            .await;
        assert_eq!(
            (s, &b),
            (
                400,
                &err("invalid_request", &format!("{name} is not a string"))
            ),
            "{name}"
        );
    }
    // Once in the query and once in the body is twice.
    let (s, b) = t
        .form(
            "/api/oauth2/token?scope=a",
            "grant_type=client_credentials&client_id=conf&client_secret=conf-secret&scope=a",
            None,
        )
        .await;
    assert_eq!(
        (s, &b),
        (
            400,
            &err(
                "invalid_request",
                "scope must not be included more than once"
            )
        )
    );
}

// Lifetimes are bounded (ten years) with Kong's schema error; Kong accepts 1e308 and overflows.
#[actix_web::test]
async fn token_lifetimes_are_bounded() {
    let t = Rfc::start(json!({})).await;
    let (s, b) = t
        .app
        .admin_post(
            "/plugins",
            json!({"name": "oauth2",
        "config": {"enable_client_credentials": true, "token_expiration": 1e308}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"]["token_expiration"],
        "value should be between 0 and 315360000"
    );
    let (s, b) = t
        .app
        .admin_post(
            "/plugins",
            json!({"name": "oauth2",
        "config": {"enable_client_credentials": true, "token_expiration": -1}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let plugin = t.app.admin_get("/plugins").await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = t
        .app
        .admin_patch(
            &format!("/plugins/{plugin}"),
            json!({"config": {"token_expiration": 315_360_000}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, tokens) = crate::helpers::eventually(
        std::time::Duration::from_secs(5),
        "the new lifetime applies",
        || async {
            let got = t
                .json(
                    "/api/oauth2/token",
                    json!({"grant_type": "client_credentials",
                "client_id": "conf", "client_secret": "conf-secret"}),
                )
                .await;
            (got.2["expires_in"] == 315_360_000).then_some(got)
        },
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, intro) = t
        .json(
            "/api/oauth2/introspect",
            json!({"token": tokens["access_token"], "client_id": "conf", "client_secret": "conf-secret"}),
        )
        .await;
    assert_eq!(s, 200, "{intro}");
    let (iat, exp) = (
        intro["iat"].as_i64().unwrap(),
        intro["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 315_360_000, "{intro}");
}
