//! The `oauth2` plugin against the real gateway: Kong's conformance cases, grouped,
//! and the places where we deliberately do better (each says so).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_upstream, status_json, TestApp, Upstream};

/// Kong's access_spec fixture, reduced: service + route `/api` on the echo upstream, the plugin
/// with `config`, consumer `bob` with clientid123/secret123 → `http://google.test/kong`.
pub struct Fixture {
    pub app: TestApp,
    pub _upstream: Upstream,
    pub plugin: Value,
}

pub async fn fixture(config: Value) -> Fixture {
    fixture_on(spawn_app().await, config).await
}

/// [`fixture`] on a gateway started with particular settings.
pub async fn fixture_on(app: TestApp, config: Value) -> Fixture {
    let upstream = spawn_upstream();
    app.expose("svc", &upstream.url, &["/api"]).await;
    let (s, plugin) = app
        .admin_post(
            "/services/svc/plugins",
            json!({"name": "oauth2", "config": config}),
        )
        .await;
    assert_eq!(s, 201, "plugin created: {plugin}");
    let (s, consumer) = app
        .admin_post("/consumers", json!({"username": "bob"}))
        .await;
    assert_eq!(s, 201, "{consumer}");
    let (s, cred) = app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "app", "client_id": "clientid123", "client_secret": "secret123", "redirect_uris": ["http://google.test/kong"]}),
        )
        .await;
    assert_eq!(s, 201, "{cred}");
    Fixture {
        app,
        _upstream: upstream,
        plugin,
    }
}

/// An authorize answer's redirect without the RFC 9207 `iss` that ends every one (Kong sends
/// none; `oauth2_rfc` checks its value).
fn without_iss(b: &Value) -> String {
    let uri = b["redirect_uri"].as_str().unwrap();
    uri.rsplit_once("&iss=")
        .unwrap_or_else(|| panic!("no iss in {uri}"))
        .0
        .to_string()
}

fn default_config() -> Value {
    json!({"scopes": ["email", "profile"], "mandatory_scope": true, "provision_key": "provision123",
           "token_expiration": 5, "enable_authorization_code": true, "enable_implicit_grant": true})
}

impl Fixture {
    /// POST JSON to an endpoint on the TLS proxy; returns status, headers, body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .app
            .http
            .post(format!("{}{path}", self.app.proxy_tls))
            .json(&body)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        let (s, b) = status_json(r).await;
        (s, headers, b)
    }

    /// A code for clientid123 (Kong's `provision_code`).
    pub async fn code(&self, extra: Value) -> String {
        let mut body = json!({"provision_key": "provision123", "client_id": "clientid123", "scope": "email",
                              "response_type": "code", "state": "hello", "authenticated_userid": "userid123"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, _, b) = self.post("/api/oauth2/authorize", body).await;
        assert_eq!(s, 200, "{b}");
        let uri = b["redirect_uri"].as_str().unwrap().to_string();
        let code = uri
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        assert!(
            code.len() == 32 && code.chars().all(|c| c.is_ascii_alphanumeric()),
            "{uri}"
        );
        code
    }

    /// Code exchanged for tokens.
    pub async fn tokens(&self) -> Value {
        let code = self.code(json!({})).await;
        let (s, _, b) = self
            .post("/api/oauth2/token", json!({"code": code, "client_id": "clientid123", "client_secret": "secret123", "grant_type": "authorization_code"}))
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    /// GET a resource with a bearer token; returns status and echoed request.
    pub async fn get_with(&self, token: &str) -> (u16, Value) {
        self.get_forging(token, &[]).await
    }

    /// [`Self::get_with`], the client also sending headers of its own (identity headers it
    /// forges, say).
    pub async fn get_forging(&self, token: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .app
            .http
            .get(format!("{}/api/request", self.app.proxy))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        status_json(request.send().await.unwrap()).await
    }
}

#[actix_web::test]
async fn plugin_config_defaults_and_generated_provision_key() {
    let app = spawn_app().await;
    let (s, plugin) = app
        .admin_post(
            "/plugins",
            json!({"name": "oauth2", "config": {"enable_password_grant": true}}),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    let c = &plugin["config"];
    assert_eq!(c["token_expiration"], 7200);
    assert_eq!(c["refresh_token_ttl"], 1_209_600);
    assert_eq!(c["pkce"], "lax");
    assert_eq!(c["auth_header_name"], "authorization");
    let key = c["provision_key"].as_str().unwrap();
    assert!(key.len() == 32 && key.chars().all(|ch| ch.is_ascii_alphanumeric()));
}

#[actix_web::test]
async fn plugin_config_validation_matches_kong() {
    let app = spawn_app().await;
    let (s, b) = app
        .admin_post("/plugins", json!({"name": "oauth2", "config": {}}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["fields"]["config"], "at least one of these fields must be true: enable_authorization_code, enable_implicit_grant, enable_client_credentials, enable_password_grant");
    let (s, b) = app.admin_post("/plugins", json!({"name": "oauth2", "config": {"enable_password_grant": true, "mandatory_scope": true}})).await;
    assert_eq!(s, 400);
    assert_eq!(b["fields"]["config"]["scopes"], "required field missing");
    let (s, b) = app.admin_post("/plugins", json!({"name": "oauth2", "config": {"enable_password_grant": true, "refresh_token_ttl": 252_979_200}})).await;
    assert_eq!(s, 400);
    assert_eq!(
        b["fields"]["config"]["refresh_token_ttl"],
        "value should be between 0 and 100000000"
    );
    let (s, b) = app.admin_post("/plugins", json!({"name": "oauth2", "config": {"enable_password_grant": true, "persistent_refresh_token": true}})).await;
    assert_eq!(s, 400);
    assert_eq!(
        b["message"],
        "schema violation (config.persistent_refresh_token: unknown field)"
    );
    let (s, _) = app.admin_post("/consumers", json!({"username": "c"})).await;
    assert_eq!(s, 201);
    let (s, b) = app
        .admin_post(
            "/consumers/c/plugins",
            json!({"name": "oauth2", "config": {"enable_password_grant": true}}),
        )
        .await;
    assert_eq!(s, 400, "oauth2 cannot be consumer-scoped: {b}");
}

#[actix_web::test]
async fn authorize_error_table() {
    let f = fixture(default_config()).await;
    // 1. no provision_key
    let (s, h, b) = f.post("/api/oauth2/authorize", json!({})).await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "invalid_provision_key", "error_description": "Invalid provision_key"})
        )
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["pragma"], "no-cache");
    // 3. no authenticated_userid
    let (s, _, b) = f
        .post(
            "/api/oauth2/authorize",
            json!({"provision_key": "provision123"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_authenticated_userid"))
    );
    // 4. no client
    let (s, _, b) = f
        .post(
            "/api/oauth2/authorize",
            json!({"provision_key": "provision123", "authenticated_userid": "id123"}),
        )
        .await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "invalid_client", "error_description": "Invalid client authentication"})
        )
    );
    let base = json!({"provision_key": "provision123", "authenticated_userid": "id123", "client_id": "clientid123"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // 5. only the client: mandatory scope missing, delivered to the redirect URI
    let (s, _, b) = f.post("/api/oauth2/authorize", base.clone()).await;
    assert_eq!(s, 400);
    assert_eq!(without_iss(&b), "http://google.test/kong?error=invalid_scope&error_description=You%20must%20specify%20a%20scope");
    // 6. invalid scope
    let (_, _, b) = f
        .post("/api/oauth2/authorize", with(json!({"scope": "wot"})))
        .await;
    assert_eq!(without_iss(&b), "http://google.test/kong?error=invalid_scope&error_description=%22wot%22%20is%20an%20invalid%20scope");
    // 7/8. no response_type, with state
    let (_, _, b) = f
        .post(
            "/api/oauth2/authorize",
            with(json!({"scope": "email", "state": "somestate"})),
        )
        .await;
    assert_eq!(without_iss(&b), "http://google.test/kong?error=unsupported_response_type&error_description=Invalid%20response_type&state=somestate");
    // 9. redirect_uri mismatch goes to the first registered URI
    let (_, _, b) = f.post("/api/oauth2/authorize", with(json!({"scope": "email", "response_type": "code", "redirect_uri": "http://hello.test/"}))).await;
    assert_eq!(without_iss(&b), "http://google.test/kong?error=invalid_request&error_description=Invalid%20redirect_uri%20that%20does%20not%20match%20with%20any%20redirect_uri%20created%20with%20the%20application");
    // 12. plain http
    let r = f
        .app
        .http
        .post(format!("{}/api/oauth2/authorize", f.app.proxy))
        .json(&with(json!({"scope": "email", "response_type": "code"})))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "access_denied", "error_description": "You must use HTTPS"})
        )
    );
    // 22. unsupported challenge method
    let (_, _, b) = f.post("/api/oauth2/authorize", with(json!({"scope": "email", "response_type": "code", "state": "hello", "code_challenge": "1234", "code_challenge_method": "foo"}))).await;
    assert_eq!(without_iss(&b), "http://google.test/kong?error=invalid_request&error_description=code_challenge_method%20is%20not%20supported%2c%20must%20be%20S256&state=hello");
    // 18. trailing slash, 19. state
    let (s, h, b) = f
        .post(
            "/api/oauth2/authorize/",
            with(json!({"scope": "email", "response_type": "code", "state": "hello"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(h["cache-control"], "no-store");
    let uri = without_iss(&b);
    assert!(
        uri.starts_with("http://google.test/kong?code=") && uri.ends_with("&state=hello"),
        "{uri}"
    );
    // 405 on GET with Kong's challenge
    let r = f
        .app
        .http
        .get(format!("{}/api/oauth2/authorize", f.app.proxy_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_method\", error_description=\"The HTTP method GET is invalid for the authorization endpoint\"");
}

#[actix_web::test]
async fn code_flow_sets_upstream_headers_and_codes_are_single_use() {
    // Tokens that outlive the test: the 401 after the replay below can only come from the replay.
    let mut config = default_config();
    config["token_expiration"] = json!(3600);
    let f = fixture(config).await;
    let code = f.code(json!({})).await;
    let exchange = json!({"code": code, "client_id": "clientid123", "client_secret": "secret123", "grant_type": "authorization_code", "state": "wot"});
    let (s, h, t) = f.post("/api/oauth2/token", exchange.clone()).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["state"], "wot");
    assert_eq!(t["refresh_token"].as_str().unwrap().len(), 32);
    let access = t["access_token"].as_str().unwrap().to_string();

    // Spoofed identity headers from the client never reach the upstream.
    let (s, echo) = f
        .get_forging(
            &access,
            &[
                ("x-consumer-username", "mallory"),
                ("x-anonymous-consumer", "true"),
                ("x-consumer-custom-id", "mallory"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{echo}");
    let h = &echo["headers"];
    assert!(h.get("x-consumer-custom-id").is_none(), "bob has none: {h}");
    assert_eq!(h["x-consumer-username"], "bob");
    assert_eq!(h["x-authenticated-userid"], "userid123");
    assert_eq!(h["x-authenticated-scope"], "email");
    assert_eq!(h["x-credential-identifier"], "clientid123");
    assert!(h["x-consumer-id"].is_string());
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");

    // 73: a code works once. Better than Kong: the replay also revokes what the code issued.
    let (s, _, b) = f.post("/api/oauth2/token", exchange).await;
    assert_eq!(
        (s, b["error_description"].as_str()),
        (400, Some("Invalid code"))
    );
    let (s, _) = f.get_with(&access).await;
    assert_eq!(
        s, 401,
        "tokens from a replayed code are revoked (RFC 6749 §4.1.2)"
    );
    // And counted.
    let metrics = f
        .app
        .http
        .get(format!("{}/metrics", f.app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "portcullis_oauth2_revocations_total{reason=\"code_replay\"} 1",
        "portcullis_oauth2_revocations_total{reason=\"refresh_reuse\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

#[actix_web::test]
async fn token_endpoint_error_precedence() {
    let f = fixture(default_config()).await;
    let (s, _, b) = f.post("/api/oauth2/token", json!({})).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_client")));
    let (s, _, b) = f
        .post(
            "/api/oauth2/token",
            json!({"code": "x", "client_id": "clientid123", "client_secret": "secret123"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, _, b) = f
        .post("/api/oauth2/token", json!({"code": "hello", "client_id": "clientid123", "client_secret": "secret123", "grant_type": "authorization_code"}))
        .await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "invalid_request", "error_description": "Invalid code"})
        )
    );
    // Basic header with a wrong secret: 401 and the Basic challenge.
    let r = f
        .app
        .http
        .post(format!("{}/api/oauth2/token", f.app.proxy_tls))
        .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTI0")
        .json(&json!({"grant_type": "authorization_code", "code": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"OAuth2.0\"");
}

#[actix_web::test]
async fn implicit_grant_returns_token_in_fragment() {
    let f = fixture(default_config()).await;
    let (s, _, b) = f
        .post("/api/oauth2/authorize", json!({"provision_key": "provision123", "client_id": "clientid123", "scope": "email  profile",
              "response_type": "token", "state": "wot", "authenticated_userid": "userid123"}))
        .await;
    assert_eq!(s, 200, "{b}");
    let uri = b["redirect_uri"].as_str().unwrap();
    let re = regex::Regex::new(r"^http://google\.test/kong#access_token=(\w{32})&expires_in=5&state=wot&token_type=bearer&iss=\S+$").unwrap();
    let token = re.captures(uri).unwrap_or_else(|| panic!("{uri}"))[1].to_string();
    let (s, echo) = f.get_with(&token).await;
    assert_eq!(s, 200);
    assert_eq!(echo["headers"]["x-authenticated-scope"], "email profile");
}

#[actix_web::test]
async fn client_credentials_and_password_grants() {
    let f = fixture(
        json!({"scopes": ["email"], "provision_key": "provision123", "token_expiration": 5,
                           "enable_client_credentials": true, "enable_password_grant": true}),
    )
    .await;
    let (s, _, b) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "client_credentials", "scope": "email"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        b.get("refresh_token").is_none(),
        "client_credentials issues no refresh token"
    );
    // Basic header plus another body client_id: two methods, refused (RFC 6749 §2.3; Kong used
    // the header and ignored the body).
    let r = f
        .app
        .http
        .post(format!("{}/api/oauth2/token", f.app.proxy_tls))
        .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
        .json(&json!({"grant_type": "client_credentials", "client_id": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = f
        .app
        .http
        .post(format!("{}/api/oauth2/token", f.app.proxy_tls))
        .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // authenticated_userid needs the provision key
    let (s, _, b) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "client_credentials", "authenticated_userid": "hello", "provision_key": "nope"}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_provision_key"))
    );
    // password
    let (s, _, b) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "password", "provision_key": "provision123"}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_authenticated_userid"))
    );
    for bad in [json!(["email"]), json!(123), json!(false)] {
        let (s, _, b) = f
            .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "password", "provision_key": "provision123", "authenticated_userid": "id123", "scope": bad}))
            .await;
        assert_eq!(
            (s, &b),
            (
                400,
                &json!({"error": "invalid_request", "error_description": "scope is not a string"})
            )
        );
    }
    let (s, _, b) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "password", "provision_key": "provision123", "authenticated_userid": "id123", "scope": "email"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["refresh_token"].is_string());
    let (s, echo) = f.get_with(b["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(echo["headers"]["x-authenticated-userid"], "id123");
    // 405 with realm-less challenge
    let r = f
        .app
        .http
        .get(format!(
            "{}/api/oauth2/token?grant_type=client_credentials",
            f.app.proxy_tls
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_method\", error_description=\"The HTTP method GET is invalid for the token endpoint\"");
}

#[actix_web::test]
async fn resource_access_challenges() {
    let f = fixture(json!({"enable_client_credentials": true, "realm": "test-oauth2"})).await;
    let r = f.app.proxy_get("/api/request").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"test-oauth2\""
    );
    let (_, b) = status_json(r).await;
    assert_eq!(
        b,
        json!({"error": "invalid_request", "error_description": "The access token is missing"})
    );
    let r = f.app.proxy_get("/api/request?access_token=invalid").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"test-oauth2\", error=\"invalid_token\", error_description=\"The access token is invalid or has expired\""
    );
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let f = fixture(json!({"scopes": ["email"], "provision_key": "provision123", "enable_authorization_code": true,
                           "refresh_token_reuse_grace": 0})).await;
    let t1 = f.tokens().await;
    let refresh = json!({"refresh_token": t1["refresh_token"], "client_id": "clientid123", "client_secret": "secret123", "grant_type": "refresh_token"});
    let (s, _, t2) = f.post("/api/oauth2/token", refresh.clone()).await;
    assert_eq!(s, 200, "{t2}");
    assert_ne!(
        t2["refresh_token"], t1["refresh_token"],
        "rotation by default"
    );
    assert_eq!(
        f.get_with(t1["access_token"].as_str().unwrap()).await.0,
        401,
        "old access token invalidated"
    );
    assert_eq!(
        f.get_with(t2["access_token"].as_str().unwrap()).await.0,
        200
    );
    // Better than Kong: replaying the rotated refresh token revokes the whole family.
    let (s, _, b) = f.post("/api/oauth2/token", refresh).await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "invalid_request", "error_description": "Invalid refresh_token"})
        )
    );
    assert_eq!(
        f.get_with(t2["access_token"].as_str().unwrap()).await.0,
        401,
        "family revoked on reuse"
    );
}

#[actix_web::test]
async fn reuse_refresh_token_keeps_the_refresh_token() {
    let f = fixture(json!({"scopes": ["email"], "provision_key": "provision123", "enable_authorization_code": true, "reuse_refresh_token": true})).await;
    let t1 = f.tokens().await;
    let refresh = json!({"refresh_token": t1["refresh_token"], "client_id": "clientid123", "client_secret": "secret123", "grant_type": "refresh_token"});
    let (s, _, t2) = f.post("/api/oauth2/token", refresh.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(t2["refresh_token"], t1["refresh_token"]);
    assert_ne!(t2["access_token"], t1["access_token"]);
    assert_eq!(
        f.get_with(t1["access_token"].as_str().unwrap()).await.0,
        401
    );
    let (s, _, _) = f.post("/api/oauth2/token", refresh).await;
    assert_eq!(s, 200, "the same refresh token keeps working");
}

#[actix_web::test]
async fn concurrent_redemptions_of_one_code_have_one_winner() {
    let f = fixture(json!({"scopes": ["email"], "provision_key": "provision123", "enable_authorization_code": true})).await;
    let code = f.code(json!({})).await;
    let body = json!({"code": code, "client_id": "clientid123", "client_secret": "secret123", "grant_type": "authorization_code"});
    let calls = (0..10).map(|_| f.post("/api/oauth2/token", body.clone()));
    let results = futures_util::future::join_all(calls).await;
    let wins = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(wins, 1, "{results:?}");
    let invalid = json!({"error": "invalid_request", "error_description": "Invalid code"});
    let refused = results
        .iter()
        .filter(|(s, _, b)| *s == 400 && *b == invalid)
        .count();
    assert_eq!(
        refused, 9,
        "every loser is told the code is invalid: {results:?}"
    );
}

#[actix_web::test]
async fn hide_credentials_strips_header_query_and_form() {
    let f = fixture(json!({"enable_client_credentials": true, "hide_credentials": true})).await;
    let (_, _, t) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "client_credentials"}))
        .await;
    let token = t["access_token"].as_str().unwrap();
    let (s, echo) = f.get_with(token).await;
    assert_eq!(s, 200);
    assert!(echo["headers"].get("authorization").is_none());
    let r = f
        .app
        .proxy_get(&format!("/api/request?access_token={token}&keep=1"))
        .await;
    let (s, echo) = status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(echo["query"], "keep=1");
    let r = f
        .app
        .http
        .post(format!("{}/api/request", f.app.proxy))
        .form(&[("access_token", token), ("other", "x")])
        .send()
        .await
        .unwrap();
    let (s, echo) = status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(echo["body"], "other=x");
}

/// A token without a scope or a user: the client's copies of those headers are removed, not
/// passed on as if the token carried them.
#[actix_web::test]
async fn headers_a_token_has_no_value_for_are_removed() {
    let f = fixture(json!({"enable_client_credentials": true})).await;
    let (s, _, t) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "client_credentials"}))
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, echo) = f
        .get_forging(
            t["access_token"].as_str().unwrap(),
            &[
                ("x-authenticated-scope", "admin"),
                ("x-authenticated-userid", "root"),
                ("x-anonymous-consumer", "true"),
                ("x-credential-identifier", "forged"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{echo}");
    let h = &echo["headers"];
    assert_eq!(h["x-credential-identifier"], "clientid123");
    assert_eq!(h["x-consumer-username"], "bob");
    for gone in [
        "x-authenticated-scope",
        "x-authenticated-userid",
        "x-anonymous-consumer",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
}

#[actix_web::test]
async fn anonymous_fallback_by_username_and_missing_consumer() {
    let f = fixture(json!({"enable_client_credentials": true, "anonymous": "no-body"})).await;
    let (s, _) = f
        .app
        .admin_post("/consumers", json!({"username": "no-body"}))
        .await;
    assert_eq!(s, 201);
    let r = f
        .app
        .http
        .get(format!("{}/api/request", f.app.proxy))
        .header("x-credential-identifier", "forged")
        .send()
        .await
        .unwrap();
    let (s, echo) = status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(echo["headers"]["x-anonymous-consumer"], "true");
    assert_eq!(echo["headers"]["x-consumer-username"], "no-body");
    assert!(echo["headers"].get("x-credential-identifier").is_none());

    let plugin_id = f.plugin["id"].as_str().unwrap();
    let missing = "00000000-0000-0000-0000-0000000000aa";
    let (s, b) = f
        .app
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/plugins/{plugin_id}"),
            Some(json!({"config": {"anonymous": missing}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = status_json(f.app.proxy_get("/api/request").await).await;
    assert_eq!(
        (s, &b),
        (
            500,
            &json!({"message": format!("anonymous consumer {missing} is configured but doesn't exist")})
        )
    );
}

#[actix_web::test]
async fn revoke_introspect_and_metadata_beyond_kong() {
    let f = fixture(json!({"scopes": ["email"], "enable_client_credentials": true})).await;
    let (_, _, t) = f
        .post("/api/oauth2/token", json!({"client_id": "clientid123", "client_secret": "secret123", "grant_type": "client_credentials", "scope": "email"}))
        .await;
    let token = t["access_token"].as_str().unwrap();
    let (s, _, info) = f
        .post(
            "/api/oauth2/introspect",
            json!({"client_id": "clientid123", "client_secret": "secret123", "token": token}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(info["active"], true);
    assert_eq!(info["scope"], "email");
    assert_eq!(info["client_id"], "clientid123");
    let (s, _, _) = f
        .post(
            "/api/oauth2/introspect",
            json!({"client_id": "clientid123", "client_secret": "bad", "token": token}),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _, _) = f
        .post(
            "/api/oauth2/revoke",
            json!({"client_id": "clientid123", "client_secret": "secret123", "token": token}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(f.get_with(token).await.0, 401, "revoked token refused");
    let (_, _, info) = f
        .post(
            "/api/oauth2/introspect",
            json!({"client_id": "clientid123", "client_secret": "secret123", "token": token}),
        )
        .await;
    assert_eq!(info, json!({"active": false}));
    let (s, _, _) = f
        .post(
            "/api/oauth2/revoke",
            json!({"client_id": "clientid123", "client_secret": "secret123", "token": "unknown"}),
        )
        .await;
    assert_eq!(s, 200, "RFC 7009: unknown tokens answer 200");
    let r = f
        .app
        .http
        .get(format!(
            "{}/api/.well-known/oauth-authorization-server",
            f.app.proxy_tls
        ))
        .send()
        .await
        .unwrap();
    let (s, meta) = status_json(r).await;
    assert_eq!(s, 200);
    assert!(meta["token_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/api/oauth2/token"));
    assert!(meta["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("client_credentials")));
}

#[actix_web::test]
async fn bad_input_never_gets_a_token_or_a_500() {
    let f = fixture(json!({"scopes": ["email"], "enable_client_credentials": true, "provision_key": "provision123", "enable_authorization_code": true})).await;
    let url = format!("{}/api/oauth2/token", f.app.proxy_tls);
    // Bodies the gateway cannot read carry no client credentials: invalid_client.
    let no_client =
        json!({"error": "invalid_client", "error_description": "Invalid client authentication"});
    let bodies: Vec<(&str, Vec<u8>, Value)> = vec![
        ("application/json", b"{not json".to_vec(), no_client.clone()),
        ("application/json", b"[1,2,3]".to_vec(), no_client.clone()),
        ("text/plain", b"grant_type=client_credentials&client_id=clientid123&client_secret=secret123".to_vec(), no_client.clone()),
        ("application/x-www-form-urlencoded", b"grant_type=client_credentials&grant_type=password&client_id=clientid123&client_secret=secret123".to_vec(),
         json!({"error": "invalid_request", "error_description": "grant_type must not be included more than once"})),
        ("application/x-www-form-urlencoded", vec![0xff, 0xfe, 0x00, 0x01], no_client.clone()),
        ("multipart/form-data; boundary=x", b"--x\r\ngarbage".to_vec(), no_client),
    ];
    for (ct, body, expected) in bodies {
        let r = f
            .app
            .http
            .post(&url)
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (s, b) = status_json(r).await;
        assert_eq!((s, &b), (400, &expected), "{ct} {body:?}");
    }
    let mut form = HashMap::new();
    form.insert("grant_type", "client_credentials");
    form.insert("client_id", "clientid123");
    form.insert("client_secret", "secret123");
    let big = "a".repeat(2 * 1024 * 1024);
    form.insert("scope", &big);
    let r = f.app.http.post(&url).form(&form).send().await.unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, b),
        (
            413,
            json!({"error": "invalid_request", "error_description": "The request body is too large"})
        ),
        "a body over client_max_body_size"
    );
}

#[actix_web::test]
async fn credentials_api_kong_cases() {
    let app = spawn_app().await;
    app.admin_post("/consumers", json!({"username": "bob"}))
        .await;
    app.admin_post("/consumers", json!({"username": "alice"}))
        .await;
    let (s, b) = app.admin_post("/consumers/bob/oauth2", json!({})).await;
    assert_eq!(
        (s, &b["fields"]),
        (400, &json!({"name": "required field missing"}))
    );
    let (s, b) = app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "x", "redirect_uris": ["http://ok.test/", "not-valid"]}),
        )
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (
            400,
            &json!({"redirect_uris": [null, "cannot parse 'not-valid'"]})
        )
    );
    let (s, b) = app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "x", "redirect_uris": ["http://test.test/#with-fragment"]}),
        )
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (
            400,
            &json!({"redirect_uris": ["fragment not allowed in 'http://test.test/#with-fragment'"]})
        )
    );
    let (s, cred) = app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "Test APP", "tags": ["tag1", "tag2"]}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(cred["redirect_uris"], Value::Null);
    assert_eq!(cred["client_type"], "confidential");
    assert_eq!(cred["hash_secret"], false);
    let client_id = cred["client_id"].as_str().unwrap();
    assert_eq!(client_id.len(), 32);
    assert_eq!(
        app.admin_get(&format!("/consumers/bob/oauth2/{client_id}"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.admin_get(&format!("/consumers/alice/oauth2/{client_id}"))
            .await
            .0,
        404,
        "belongs to bob"
    );
    let (s, b) = app
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/consumers/bob/oauth2/{client_id}"),
            Some(json!({"client_secret": "new"})),
        )
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (
            400,
            &json!({"@entity": ["all or none of these fields must be set: 'hash_secret', 'client_secret'"]})
        )
    );
    let (s, b) = app
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/consumers/bob/oauth2/{client_id}"),
            Some(json!({"client_secret": "new", "hash_secret": true})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        b["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"),
        "{b}"
    );
    let (s, b) = app.admin_post("/oauth2", json!({"name": "x"})).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            400,
            Some("schema violation (consumer: required field missing)")
        )
    );
    let (s, b) = app
        .admin_call(
            reqwest::Method::PUT,
            "/consumers/bob/oauth2/client_one",
            Some(json!({"name": "one"})),
        )
        .await;
    assert_eq!((s, b["client_id"].as_str()), (200, Some("client_one")));
    assert_eq!(
        app.admin_call(reqwest::Method::DELETE, "/consumers/bob/oauth2/blah", None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.admin_call(
            reqwest::Method::DELETE,
            "/consumers/bob/oauth2/client_one",
            None
        )
        .await
        .0,
        204
    );
    let (s, list) = app.admin_get("/consumers/bob/oauth2").await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 1));
}

#[actix_web::test]
async fn tokens_api_and_invalidations() {
    let f = fixture(json!({"enable_client_credentials": true})).await;
    let (_, cred) = f.app.admin_get("/oauth2/clientid123").await;
    let cred_id = cred["id"].as_str().unwrap();
    let (_, svc) = f.app.admin_get("/services/svc").await;
    let svc_id = svc["id"].as_str().unwrap();
    let (s, b) = f.app.admin_post("/oauth2_tokens", json!({})).await;
    assert_eq!(s, 400);
    assert_eq!(
        b["fields"],
        json!({"credential": "required field missing", "expires_in": "required field missing"})
    );
    let (s, t) = f
        .app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": cred_id}, "service": {"id": svc_id}, "expires_in": 10}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["refresh_token"], Value::Null);
    let access = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        f.get_with(&access).await.0,
        200,
        "an admin-created token works"
    );
    let (s, by_value) = f.app.admin_get(&format!("/oauth2_tokens/{access}")).await;
    assert_eq!((s, &by_value["id"]), (200, &t["id"]));
    assert!(
        by_value["access_token"].is_null(),
        "stored as a digest: never shown again"
    );
    let (s, b) = f
        .app
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/oauth2_tokens/{access}"),
            Some(json!({"expires_in": "hello"})),
        )
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (400, &json!({"expires_in": "expected an integer"}))
    );
    let (s, _) = f
        .app
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/oauth2_tokens/{}", t["id"].as_str().unwrap()),
            Some(json!({"access_token": "updated_token"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        f.get_with(&access).await.0,
        401,
        "old value refused after PATCH"
    );
    assert_eq!(f.get_with("updated_token").await.0, 200);
    let (s, b) = f
        .app
        .admin_call(
            reqwest::Method::PUT,
            "/oauth2_tokens/foobar",
            Some(
                json!({"credential": {"id": cred_id}, "service": {"id": svc_id}, "expires_in": 10}),
            ),
        )
        .await;
    assert_eq!((s, b["access_token"].as_str()), (200, Some("foobar")));
    let (s, list) = f
        .app
        .admin_get(&format!("/oauth2/{cred_id}/oauth2_tokens"))
        .await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 2));
    assert_eq!(
        f.app
            .admin_call(reqwest::Method::DELETE, "/oauth2_tokens/foobar", None)
            .await
            .0,
        204
    );
    assert_eq!(
        f.get_with("foobar").await.0,
        401,
        "deleted token refused at once"
    );
    assert_eq!(
        f.app
            .admin_call(reqwest::Method::DELETE, "/oauth2_tokens/blah", None)
            .await
            .0,
        204
    );
    // Deleting the consumer cascades to credentials and their tokens.
    assert_eq!(
        f.app
            .admin_call(reqwest::Method::DELETE, "/consumers/bob", None)
            .await
            .0,
        204
    );
    assert_eq!(
        f.get_with("updated_token").await.0,
        401,
        "tokens of a deleted consumer are refused"
    );
    let (s, list) = f.app.admin_get("/oauth2_tokens").await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 0));
}
