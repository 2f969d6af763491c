//! The `oauth2-introspection` plugin against a real third-party authorization server:
//! oidc-provider (`tests/introspection/provider.js`), started with node on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use portcullis::config::{Secret, Settings};

use crate::helpers::{
    dead_port, eventually, or_skip, spawn_app, spawn_upstream, spawn_with, status_json,
    test_redis_url, PgSchema, PrivateCluster, PrivateRedis, TestApp, Upstream,
};

/// Serialises `npm install` between tests running in parallel.
static NPM: Mutex<()> = Mutex::new(());

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/introspection")
}

/// Installs oidc-provider (pinned by package-lock.json) unless already there.
fn ensure_npm_deps() {
    let _guard = NPM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = provider_dir();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (is Node installed? scripts/services.sh installs it)");
    assert!(status.success(), "npm ci in tests/introspection failed");
}

/// A running oidc-provider; killed when dropped.
struct AuthServer {
    child: Option<Child>,
    log_path: PathBuf,
    url: String,
    http: reqwest::Client,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

impl AuthServer {
    /// Starts oidc-provider on a free port. The port is free when picked but another test may
    /// take it before node listens: node then exits (EADDRINUSE), and the next port is tried.
    async fn start() -> Self {
        ensure_npm_deps();
        for _ in 0..5 {
            let port = dead_port();
            // The provider's output (startup warnings, crashes) goes to a file named in failures.
            let log_path =
                std::env::temp_dir().join(format!("portcullis-oidc-provider-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            let child = Command::new("node")
                .arg("provider.js")
                .env("PORT", port.to_string())
                .current_dir(provider_dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("node starts");
            let mut server = Self {
                child: Some(child),
                log_path,
                url: format!("http://127.0.0.1:{port}"),
                http: reqwest::Client::new(),
            };
            if server.answers_within(Duration::from_secs(30)).await {
                return server;
            }
            let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
            assert!(
                log.contains("EADDRINUSE"),
                "oidc-provider did not answer within 30 s (log: {})",
                server.log_path.display()
            );
            server.stop();
        }
        panic!("oidc-provider found its port taken five times in a row");
    }

    /// Whether the provider answers before `limit`; `false` at once when node has exited.
    async fn answers_within(&mut self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                return false;
            }
            let answer = self.http.get(format!("{}/__count", self.url)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.url)
    }

    /// A fresh opaque access token (client_credentials) for `client`.
    async fn token(&self, client: &str) -> String {
        let r = self
            .http
            .post(format!("{}/token", self.url))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "read write"),
            ])
            .send()
            .await
            .expect("token endpoint");
        let (status, body) = status_json(r).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// RFC 7009 revocation at the server.
    async fn revoke(&self, token: &str) {
        let r = self
            .http
            .post(format!("{}/token/revocation", self.url))
            .basic_auth("gateway", Some("gateway-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revocation endpoint");
        assert_eq!(r.status(), 200);
    }

    /// Introspection requests the server has received.
    async fn introspections(&self) -> u64 {
        let r = self
            .http
            .get(format!("{}/__count", self.url))
            .send()
            .await
            .expect("count");
        status_json(r).await.1["introspections"]
            .as_u64()
            .expect("count")
    }
}

fn basic(client: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client}:{secret}")))
}

/// Gateway + echo upstream on `/api`, protected by the plugin with `config` merged over defaults
/// pointing at `server`.
async fn protected(server: &AuthServer, extra: Value) -> (TestApp, Upstream) {
    let app = spawn_app().await;
    let upstream = protect(&app, server, extra).await;
    (app, upstream)
}

/// Configures `app` as [`protected`] does; the echo upstream it points at.
async fn protect(app: &TestApp, server: &AuthServer, extra: Value) -> Upstream {
    let config = json!({
        "introspection_url": server.introspection_url(),
        "authorization_value": basic("gateway", "gateway-secret"),
        "hide_credentials": false,
    });
    expose_behind_plugin(app, config, extra).await
}

/// Exposes an echo upstream on `app`'s `/api`, behind the plugin with `config` and `extra`
/// merged over it; the upstream.
async fn expose_behind_plugin(app: &TestApp, mut config: Value, extra: Value) -> Upstream {
    let upstream = spawn_upstream();
    app.expose("svc", &format!("{}/echo", upstream.url), &["/api"])
        .await;
    for (k, v) in extra.as_object().expect("object") {
        config[k] = v.clone();
    }
    let (s, body) = app
        .admin_post(
            "/services/svc/plugins",
            json!({ "name": "oauth2-introspection", "config": config }),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    upstream
}

async fn get_with_token(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.proxy))
        .bearer_auth(token)
        .send()
        .await
        .expect("proxy");
    status_json(r).await
}

#[actix_web::test]
async fn valid_token_passes_with_credential_and_consumer_headers() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(
        &server,
        json!({ "consumer_by": "client_id", "custom_claims_forward": ["active"] }),
    )
    .await;
    let (s, _) = app
        .admin_post(
            "/consumers",
            json!({ "username": "svc-account", "custom_id": "gateway" }),
        )
        .await;
    assert_eq!(s, 201);
    let token = server.token("gateway").await;
    let calls_before = server.introspections().await;
    // The first request is a miss (one introspection call); the second is answered from the
    // cache, by the access phase's synchronous path: both must forward the same headers.
    for _ in 0..2 {
        let r = app
            .http
            .get(format!("{}/api/x", app.proxy))
            .bearer_auth(&token)
            .header("x-consumer-id", "spoofed")
            .header("x-credential-sub", "spoofed")
            .header("x-anonymous-consumer", "true")
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(r).await;
        assert_eq!(status, 200, "{body}");
        let h = &body["headers"];
        assert_eq!(h["x-credential-scope"], "read write");
        assert_eq!(h["x-credential-client-id"], "gateway");
        assert_eq!(h["x-credential-token-type"], "Bearer");
        assert_eq!(h["x-credential-iss"], server.url.as_str());
        assert!(h["x-credential-exp"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok());
        assert!(h["x-credential-iat"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok());
        assert_eq!(h["x-credential-active"], "true");
        assert!(h.get("x-credential-sub").is_none(), "client copy removed");
        assert!(
            h.get("x-anonymous-consumer").is_none(),
            "client copy removed"
        );
        assert_eq!(h["x-consumer-username"], "svc-account");
        assert_eq!(h["x-consumer-custom-id"], "gateway");
        assert_ne!(h["x-consumer-id"], "spoofed");
        assert_eq!(h["authorization"], format!("Bearer {token}"));
    }
    assert_eq!(server.introspections().await, calls_before + 1);
}

#[actix_web::test]
async fn revoked_token_is_refused_once_evicted_through_the_admin_api() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({})).await;
    let token = server.token("gateway").await;
    assert_eq!(get_with_token(&app, "/api", &token).await.0, 200);

    server.revoke(&token).await;
    assert_eq!(
        get_with_token(&app, "/api", &token).await.0,
        200,
        "the cached verdict stands until evicted or expired"
    );

    assert_eq!(evict(&app, &token).await, 204);
    let (s, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");
}

/// Evicts `token`'s verdicts through `app`'s admin API (by digest).
async fn evict(app: &TestApp, token: &str) -> u16 {
    let digest = portcullis::crypto::token_hash(token).to_hex();
    let path = format!("/oauth2-introspection/cache/{digest}");
    app.admin_call(reqwest::Method::DELETE, &path, None).await.0
}

#[actix_web::test]
async fn cluster_nodes_share_verdicts_through_redis_and_evict_everywhere() {
    let server = AuthServer::start().await;
    let schema = PgSchema::migrated().await;
    let settings = Settings {
        redis_url: Some(Secret::new(test_redis_url())),
        redis_prefix: format!("pt-{}", uuid::Uuid::new_v4().simple()),
        ..schema.settings.clone()
    };
    let a = spawn_with(settings.clone()).await;
    let b = spawn_with(settings.clone()).await;
    let _upstream = protect(&a, &server, json!({ "ttl": 300 })).await;
    let token = server.token("gateway").await;

    let calls = server.introspections().await;
    assert_eq!(get_with_token(&a, "/api", &token).await.0, 200);
    assert_eq!(server.introspections().await, calls + 1);
    // Node b hears of the route and plugin through the bus, then answers from Redis.
    eventually(
        Duration::from_secs(1),
        "node b serves the route",
        || async { (get_with_token(&b, "/api", &token).await.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        server.introspections().await,
        calls + 1,
        "node b found node a's verdict in Redis"
    );

    server.revoke(&token).await;
    for node in [&a, &b] {
        assert_eq!(get_with_token(node, "/api", &token).await.0, 200, "cached");
    }
    assert_eq!(evict(&a, &token).await, 204);
    eventually(
        Duration::from_secs(1),
        "revocation holds on both nodes",
        || async {
            let a = get_with_token(&a, "/api", &token).await.0;
            let b = get_with_token(&b, "/api", &token).await.0;
            (a == 401 && b == 401).then_some(())
        },
    )
    .await;

    // A node that joins later has an empty L1: it answers from what Redis holds now (the
    // negative verdict, or nothing) and never from the evicted positive one.
    let c = spawn_with(settings).await;
    let (s, body) = get_with_token(&c, "/api", &token).await;
    assert_eq!(s, 401, "{body}");
}

#[actix_web::test]
async fn eviction_with_postgres_down_is_503_but_clears_this_node_and_redis() {
    let Some(cluster) = or_skip(PrivateCluster::start()) else {
        return;
    };
    let Some(redis) = or_skip(PrivateRedis::start()) else {
        return;
    };
    let server = AuthServer::start().await;
    let settings = Settings {
        redis_url: Some(Secret::new(redis.url())),
        redis_prefix: "pt-evict".into(),
        ..cluster.migrated_settings("pt_evict", 1000).await
    };
    let app = spawn_with(settings).await;
    let _upstream = protect(&app, &server, json!({ "ttl": 300 })).await;
    let token = server.token("gateway").await;
    assert_eq!(get_with_token(&app, "/api", &token).await.0, 200);
    server.revoke(&token).await;
    let digest = portcullis::crypto::token_hash(&token).to_hex();
    let verdicts = || {
        redis
            .cli(&[
                "--scan",
                "--pattern",
                &format!("pt-evict:introspect:{digest}:*"),
            ])
            .lines()
            .count()
    };
    assert_eq!(verdicts(), 1, "the verdict is shared through Redis");

    cluster.pg_ctl("stop").expect("private Postgres stops");
    let (s, body) = app
        .admin_call(
            reqwest::Method::DELETE,
            &format!("/oauth2-introspection/cache/{digest}"),
            None,
        )
        .await;
    assert_eq!(s, 503, "the other nodes could not be told: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("other nodes could not be told"), "{body}");
    assert_eq!(verdicts(), 0, "evicted from Redis");
    assert_eq!(
        redis
            .cli(&["get", &format!("pt-evict:introspect-gen:{digest}")])
            .trim(),
        "1",
        "the eviction is counted, so a call in flight cannot put the verdict back"
    );
    let (s, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(s, 401, "this node dropped its copy anyway: {body}");
}

#[actix_web::test]
async fn introspect_request_caches_per_path_and_method() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({ "introspect_request": true })).await;
    let token = server.token("gateway").await;
    let calls = server.introspections().await;
    for path in ["/api/a", "/api/a", "/api/b", "/api/b"] {
        assert_eq!(get_with_token(&app, path, &token).await.0, 200, "{path}");
    }
    assert_eq!(
        server.introspections().await,
        calls + 2,
        "one call per distinct path: the verdict may depend on it"
    );
}

#[actix_web::test]
async fn eviction_accepts_the_raw_token_too() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({})).await;
    let token = server.token("gateway").await;
    assert_eq!(get_with_token(&app, "/api", &token).await.0, 200);
    server.revoke(&token).await;
    let (s, _) = app
        .admin_call(
            reqwest::Method::DELETE,
            &format!("/oauth2-introspection/cache/{token}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(get_with_token(&app, "/api", &token).await.0, 401);
}

#[actix_web::test]
async fn expired_token_is_refused() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({ "ttl": 300 })).await;
    // The `short` client's tokens live 4 s: valid now, and the cache must not outlive `exp`.
    let token = server.token("short").await;
    let (first, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(
        first, 200,
        "a fresh token passes (and its verdict is cached): {body}"
    );
    eventually(Duration::from_secs(20), "expired token refused", || async {
        let (s, body) = get_with_token(&app, "/api", &token).await;
        (s == 401).then_some(body)
    })
    .await;
}

#[actix_web::test]
async fn garbage_and_missing_tokens_are_401_with_www_authenticate() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({})).await;
    for token in [Some("not-a-token"), None] {
        let mut rb = app.http.get(format!("{}/api", app.proxy));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
}

#[actix_web::test]
async fn wrong_authorization_value_is_503_with_a_clear_error() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(
        &server,
        json!({ "authorization_value": basic("gateway", "wrong-secret") }),
    )
    .await;
    let token = server.token("gateway").await;
    let (s, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(s, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("refused the gateway's credentials"),
        "{message}"
    );
    assert!(!body.to_string().contains(&token));
    assert!(!body.to_string().contains("wrong-secret"));
}

#[actix_web::test]
async fn server_stopped_is_503_even_with_anonymous() {
    let mut server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({ "anonymous": "anon" })).await;
    let (s, _) = app
        .admin_post("/consumers", json!({ "username": "anon" }))
        .await;
    assert_eq!(s, 201);
    let token = server.token("gateway").await;
    server.stop();
    let (s, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["message"], "The authorization server is unreachable");
}

#[actix_web::test]
async fn hundred_concurrent_requests_make_one_introspection_call() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({})).await;
    let token = server.token("gateway").await;
    let before = server.introspections().await;
    let requests = (0..100).map(|_| get_with_token(&app, "/api", &token));
    let results = futures_util::future::join_all(requests).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert_eq!(server.introspections().await - before, 1);
}

#[actix_web::test]
async fn hide_credentials_strips_header_and_query_token() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({ "hide_credentials": true })).await;
    let token = server.token("gateway").await;
    let (s, body) = get_with_token(&app, "/api", &token).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["headers"].get("authorization").is_none());

    let r = app
        .http
        .get(format!("{}/api?x=1&access_token={token}", app.proxy))
        .send()
        .await
        .unwrap();
    let (s, body) = status_json(r).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-credential-client-id"], "gateway");
}

#[actix_web::test]
async fn anonymous_fallback_for_missing_or_inactive_tokens() {
    let server = AuthServer::start().await;
    let (app, _up) = protected(&server, json!({ "anonymous": "anon" })).await;
    let (s, anon) = app
        .admin_post("/consumers", json!({ "username": "anon" }))
        .await;
    assert_eq!(s, 201);
    for token in [Some("not-a-token"), None] {
        let mut rb = app.http.get(format!("{}/api", app.proxy));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let (s, body) = status_json(rb.send().await.unwrap()).await;
        assert_eq!(s, 200, "{body}");
        let h = &body["headers"];
        assert_eq!(h["x-anonymous-consumer"], "true");
        assert_eq!(h["x-consumer-username"], "anon");
        assert_eq!(h["x-consumer-id"], anon["id"]);
        assert!(h.get("x-credential-client-id").is_none());
    }
}

#[actix_web::test]
async fn config_is_validated_and_authorization_value_masked() {
    let app = spawn_app().await;
    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({ "name": "oauth2-introspection", "config": { "consumer_by": "email", "introspection_url": "ftp://x" } }),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["name"], "schema violation");
    assert_eq!(
        body["fields"]["config"]["authorization_value"],
        "required field missing"
    );
    assert_eq!(
        body["fields"]["config"]["consumer_by"],
        "expected one of: username, client_id"
    );
    assert!(body["fields"]["config"]["introspection_url"].is_string());

    let (s, plugin) = app
        .admin_post(
            "/plugins",
            json!({ "name": "oauth2-introspection", "config": {
                "introspection_url": format!("http://127.0.0.1:{}/introspect", dead_port()),
                "authorization_value": "Basic c2VjcmV0",
            } }),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    assert_eq!(plugin["config"]["authorization_value"], "******");
    assert_eq!(plugin["config"]["ttl"], 30);
    assert_eq!(plugin["config"]["timeout"], 10000);
    let (s, read) = app
        .admin_get(&format!("/plugins/{}", plugin["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(read["config"]["authorization_value"], "******");
    let (_, list) = app.admin_get("/plugins").await;
    assert!(!list.to_string().contains("c2VjcmV0"));

    let (s, body) = app
        .admin_call(
            reqwest::Method::PUT,
            &format!("/plugins/{}", plugin["id"].as_str().unwrap()),
            Some(json!({ "name": "oauth2-introspection", "config": read["config"] })),
        )
        .await;
    assert_eq!(
        s, 400,
        "sending the mask back must not overwrite the secret: {body}"
    );
    assert!(body["fields"]["config"]["authorization_value"].is_string());
}

/// Gateway whose plugin introspects at `url` (no oidc-provider involved).
async fn protected_by(url: &str, extra: Value) -> (TestApp, Upstream) {
    let app = spawn_app().await;
    let config = json!({ "introspection_url": url, "authorization_value": "Basic eDp5" });
    let upstream = expose_behind_plugin(&app, config, extra).await;
    (app, upstream)
}

#[actix_web::test]
async fn garbage_from_the_server_is_503() {
    // The echo upstream answers 200 JSON without `active`: not an RFC 7662 answer.
    let fake = spawn_upstream();
    let (app, _up) = protected_by(&format!("{}/echo", fake.url), json!({})).await;
    let (s, body) = get_with_token(&app, "/api", "some-token").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(
        body["message"],
        "The authorization server answered an invalid response"
    );
    let (s, _) = get_with_token(&app, "/api", "some-token").await;
    assert_eq!(s, 503, "failures are not cached as verdicts");
}

#[actix_web::test]
async fn a_server_slower_than_timeout_is_503() {
    // Accepts connections (kernel backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/introspect", silent.local_addr().unwrap());
    let (app, _up) = protected_by(&url, json!({ "timeout": 200 })).await;
    let (s, body) = get_with_token(&app, "/api", "some-token").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(
        body["message"],
        "The authorization server did not answer in time"
    );
    drop(silent);
}

/// An authorization server whose answer and speed a test controls: the one way to hold an
/// introspection call in flight while an eviction is made.
struct ScriptedServer {
    active: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    calls: std::sync::atomic::AtomicU64,
}

async fn scripted_introspect(
    state: actix_web::web::Data<ScriptedServer>,
) -> actix_web::HttpResponse {
    use std::sync::atomic::Ordering;
    state.calls.fetch_add(1, Ordering::SeqCst);
    // The verdict as of the moment the call arrives, delivered after the delay.
    let active = state.active.load(Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    actix_rt::time::sleep(Duration::from_millis(delay)).await;
    actix_web::HttpResponse::Ok().json(json!({ "active": active, "sub": "scripted-user" }))
}

fn spawn_scripted_server(state: actix_web::web::Data<ScriptedServer>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .default_service(actix_web::web::to(scripted_introspect))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    format!("http://127.0.0.1:{port}/introspect")
}

#[actix_web::test]
async fn an_answer_in_flight_during_an_eviction_is_not_cached() {
    use std::sync::atomic::Ordering;
    let state = actix_web::web::Data::new(ScriptedServer {
        active: true.into(),
        delay_ms: 800.into(),
        calls: 0.into(),
    });
    let url = spawn_scripted_server(state.clone());
    let (app, _up) = protected_by(&url, json!({ "ttl": 60 })).await;

    // The first request waits on a slow "active" answer; the token is revoked at the server
    // and evicted through the admin API while that answer is on its way.
    let in_flight = get_with_token(&app, "/api", "revoked-in-flight");
    let revoke = async {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        state.active.store(false, Ordering::SeqCst);
        state.delay_ms.store(0, Ordering::SeqCst);
        evict(&app, "revoked-in-flight").await
    };
    let ((first, body), evicted) = futures_util::future::join(in_flight, revoke).await;
    assert_eq!(evicted, 204);
    assert_eq!(first, 200, "it began before the eviction: {body}");

    let (second, body) = get_with_token(&app, "/api", "revoked-in-flight").await;
    assert_eq!(
        second, 401,
        "the answer fetched across the eviction was cached: {body}"
    );
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        2,
        "asked the server again"
    );
}
