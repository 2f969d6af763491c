//! Kong's own `oauth2` test suite (`spec/03-plugins/25-oauth2`: `01-schema_spec.lua` to
//! `05-kdf_spec.lua`), one test per case, each run on the memory store
//! (`kong_conformance::memory::…`) and on Postgres (`kong_conformance::postgres::…`).
//!
//! Every case sends Kong's request to Kong's fixture — for the access spec one service + route (by
//! `Host`, as in Kong) + `oauth2` plugin per Kong host, consumer `bob` with Kong's credentials; the
//! invalidation and TTL cases use those specs' own fixtures — and checks all of Kong's assertions.
//! Where Kong reads a database row (the code and token rows of cases 20, 21, 27, 28, 31, 32, 124,
//! 139, 141, 160, 161 and schema 14), the case reads the same record through the token store the
//! gateway writes to (`Kong::token_row`, `Kong::code_row`): codes and tokens are stored as digests,
//! so a row is found by the digest of the value Kong looks up. Where Kong checks that its log has
//! no `[error]` line (115, invalidation 4), the case reads what its own gateway logged
//! (`helpers::logs`). Where we differ from Kong on purpose, the case says `Deliberate difference
//! from Kong:` and the README lists it.
//!
//! Not ported, and why (no fake tests):
//! - 2 and 118 (gRPC) are ported with the tests' tonic echo server in place of Kong's grpcbin
//!   (`HelloService`): the call is the echo's `Unary`, and 118 checks the echoed message where
//!   Kong checks grpcbin's greeting.
//! - 151–159 (*multiple auth, logical AND / OR*): ported with the `key-auth` plugin in
//!   `key_auth.rs` (`and_*`, `or_*`), but for the lower-priority OR case, which needs `jwt`.
//! - 103 (*should not fail when plugin_id is not present … old code*) on the memory store: a code
//!   without a plugin id cannot be made through any interface (only Kong's pre-3.3 migrations left
//!   such rows). It is ported on Postgres, where the test nulls the column as Kong's test does.
//! - schema 13 (*errors when given an invalid service_id on oauth authorization codes*): Kong
//!   validates a raw DAO insert of a code. Codes have no admin API and no request names their
//!   credential or service (the authorize endpoint takes both from the authenticated client and
//!   the matched route), and the store's `CodeRecord` types both as UUIDs, so an invalid one
//!   cannot be expressed anywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use regex::Regex;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use portcullis::config::Settings;
use portcullis::startup::{open_stores, pg_settings};
use portcullis_stores::postgres as pg_store;
use portcullis_stores::{CodeRecord, TokenRecord, TokenStore};

use crate::helpers::{logs, spawn_on, spawn_upstream, test_settings, PgSchema, TestApp, Upstream};

// ------------------------------------------------------------------------------------------------
// Fixture (§10.0)
// ------------------------------------------------------------------------------------------------

/// Which store the gateway runs on.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Memory,
    Postgres,
}

/// Kong's plugin defaults from the blueprint.
fn defaults() -> Value {
    json!({"scopes": ["email", "profile"], "mandatory_scope": true, "provision_key": "provision123",
           "token_expiration": 5, "enable_authorization_code": true, "enable_implicit_grant": true})
}

/// A consumer id that exists nowhere (Kong's oauth2_10 anonymous).
const NO_SUCH_CONSUMER: &str = "00000000-0000-0000-0000-000000000010";

/// Kong's per-host plugin overrides; `/somepath` is the path-only route.
fn overrides(host: &str, no_body_id: &str) -> Value {
    let global = json!({"global_credentials": true});
    match host {
        "oauth2.test" => json!({"scopes": ["email", "profile", "user.email"]}),
        "example-path.test" | "/somepath" => json!({}),
        "oauth2_3.test" => json!({"hide_credentials": true}),
        "oauth2_4.test" => {
            json!({"enable_client_credentials": true, "enable_authorization_code": false})
        }
        "oauth2_5.test" => {
            json!({"enable_password_grant": true, "enable_authorization_code": false, "realm": "test-oauth2"})
        }
        "oauth2_6.test" => {
            json!({"scopes": ["email", "profile", "user.email"], "accept_http_if_already_terminated": true})
        }
        "oauth2_7.test" => json!({"anonymous": no_body_id}),
        "oauth2_8.test" | "oauth2_9.test" | "oauth2_17.test" => global,
        "oauth2_10.test" => with(global, json!({"anonymous": NO_SUCH_CONSUMER})),
        "oauth2_11.test" => with(
            global,
            json!({"token_expiration": 7, "auth_header_name": "custom_header_name"}),
        ),
        "oauth2_12.test" => with(
            global,
            json!({"auth_header_name": "custom_header_name", "hide_credentials": true}),
        ),
        "oauth2_13.test" => with(global, json!({"reuse_refresh_token": true})),
        "oauth2__c.test" => json!({"anonymous": "no-body"}),
        "oauth2_14.test" => with(global, json!({"pkce": "none"})),
        "oauth2_15.test" => with(global, json!({"pkce": "strict"})),
        "oauth2_16.test" => with(global, json!({"pkce": "lax"})),
        "oauth2_18.test" => with(global, json!({"scopes": ["scope18", "profile"]})),
        "oauth2_19.test" => with(global, json!({"scopes": ["scope19", "profile"]})),
        "oauth2_20.test" => with(global, json!({"scopes": ["scope20", "profile"]})),
        "oauth2_21.test" => with(global, json!({"scopes": ["scope20", "scope21"]})),
        // Kong's "ttl" fixture: its own plugins, not the blueprint's defaults.
        "oauth2_21.refresh.test" | "oauth2_22.refresh.test" => json!({
            "scopes": null, "mandatory_scope": false, "token_expiration": null,
            "enable_implicit_grant": null, "global_credentials": false,
            "refresh_token_ttl": if host == "oauth2_21.refresh.test" { 2 } else { 0 },
        }),
        other => panic!("no Kong host {other}"),
    }
}

/// Shallow merge of `extra` into `base`; a `null` in `extra` removes the key.
fn merge(base: &mut Value, extra: &Value) {
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
}

fn with(base: Value, extra: Value) -> Value {
    let mut b = base;
    merge(&mut b, &extra);
    b
}

/// Kong's credentials of consumer `bob` (§10.0): client_id, secret, hashed, redirect_uris, public.
const CREDENTIALS: &[(&str, &str, bool, &[&str], bool)] = &[
    (
        "clientid123",
        "secret123",
        true,
        &["http://google.test/kong"],
        false,
    ),
    (
        "clientid789",
        "secret789",
        false,
        &["http://google.test/kong?foo=bar&code=123"],
        false,
    ),
    (
        "clientid333",
        "secret333",
        true,
        &["http://google.test/kong"],
        false,
    ),
    (
        "clientid456",
        "secret456",
        false,
        &["http://one.test/one/", "http://two.test/two"],
        false,
    ),
    (
        "clientid1011",
        "secret1011",
        true,
        &["http://google.test/kong"],
        false,
    ),
    ("clientid10112", "secret10112", false, &[], false),
    (
        "clientid11211",
        "secret11211",
        false,
        &["http://google.test/kong"],
        true,
    ),
];

/// The hash Kong's DAO stores for a `hash_secret = true` credential: PBKDF2-HMAC-SHA512, 10 000
/// iterations, 32 bytes, random 16-byte salt, `$pbkdf2-sha512$i=10000,l=32$<salt>$<hash>`. The
/// fixture supplies it as is (a hash is kept, not re-hashed), as a database migrated from Kong
/// would; argon2id hashing of new secrets is covered by the API cases 5 and 6. It is also much
/// cheaper than argon2id in a debug build, which keeps ~430 tests fast.
fn kong_pbkdf2(secret: &str) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    kong_pbkdf2_salted(secret, &salt)
}

/// [`kong_pbkdf2`] with a given salt (Kong's `secret.hash(s, { salt = … })`).
fn kong_pbkdf2_salted(secret: &str, salt: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(secret.as_bytes(), salt, 10_000, &mut out);
    format!(
        "$pbkdf2-sha512$i=10000,l=32${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
}

/// A running gateway with Kong's fixture for some hosts.
pub struct Kong {
    pub app: TestApp,
    _upstream: Upstream,
    /// Consumer `no-body`.
    pub no_body: Value,
    /// The gateway's token store (Kong's tests read the same rows from its database).
    pub tokens: Arc<dyn TokenStore>,
}

/// The gateway settings of the fixture: Kong's `trusted_ips = 127.0.0.1`.
fn kong_settings() -> Settings {
    Settings {
        trusted_ips: vec!["127.0.0.1".into()],
        ..test_settings()
    }
}

/// A gateway with `settings` on `store`; on Postgres, in a fresh migrated schema of its own
/// (dropped with the app).
async fn start_app(store: Store, settings: Settings) -> TestApp {
    start_app_on_stores(store, settings).await.0
}

/// Same, also returning the gateway's token store: Kong's tests read the database rows of codes
/// and tokens; these tests read the same records through the store the gateway writes to.
async fn start_app_on_stores(store: Store, settings: Settings) -> (TestApp, Arc<dyn TokenStore>) {
    let (settings, schema) = match store {
        Store::Memory => (settings, None),
        Store::Postgres => {
            let schema = PgSchema::migrated().await;
            let pg = schema.settings.clone();
            let settings = Settings {
                database: pg.database,
                pg_host: pg.pg_host,
                pg_port: pg.pg_port,
                pg_user: pg.pg_user,
                pg_password: pg.pg_password,
                pg_database: pg.pg_database,
                pg_schema: pg.pg_schema,
                pg_max_connections: pg.pg_max_connections,
                ..settings
            };
            (settings, Some(schema))
        }
    };
    let stores = open_stores(&settings).await.expect("stores open");
    let tokens = stores.tokens.clone();
    let mut app = spawn_on(settings, stores).await;
    app.pg = schema;
    (app, tokens)
}

impl Kong {
    /// The fixture with the plugin routes of `hosts` (only those: fewer admin calls per test).
    pub async fn start(store: Store, hosts: &[&str]) -> Self {
        Self::start_with(store, hosts, json!({})).await
    }

    /// Same, with `patch` merged into every listed host's plugin config (e.g. a short expiry).
    pub async fn start_with(store: Store, hosts: &[&str], patch: Value) -> Self {
        Self::start_full(store, kong_settings(), hosts, patch).await
    }

    /// Same, on a gateway with other `settings`.
    pub async fn start_full(
        store: Store,
        settings: Settings,
        hosts: &[&str],
        patch: Value,
    ) -> Self {
        let (app, tokens) = start_app_on_stores(store, settings).await;
        let upstream = spawn_upstream();
        let (s, bob) = app
            .admin_post("/consumers", json!({"username": "bob"}))
            .await;
        assert_eq!(s, 201, "{bob}");
        let (s, no_body) = app
            .admin_post("/consumers", json!({"username": "no-body"}))
            .await;
        assert_eq!(s, 201, "{no_body}");
        for (id, secret, hashed, uris, public) in CREDENTIALS {
            let stored = if *hashed {
                kong_pbkdf2(secret)
            } else {
                (*secret).to_string()
            };
            let mut body = json!({"name": format!("app {id}"), "client_id": id,
                                  "client_secret": stored, "hash_secret": hashed});
            if !uris.is_empty() {
                body["redirect_uris"] = json!(uris);
            }
            if *public {
                body["client_type"] = json!("public");
            }
            let (s, c) = app.admin_post("/consumers/bob/oauth2", body).await;
            assert_eq!(s, 201, "{c}");
        }
        let no_body_id = no_body["id"].as_str().expect("id").to_string();
        for (i, host) in hosts.iter().enumerate() {
            let name = format!("s{i}");
            let (s, svc) = app
                .admin_post("/services", json!({"name": name, "url": upstream.url}))
                .await;
            assert_eq!(s, 201, "{svc}");
            let route = if host.starts_with('/') {
                json!({"name": format!("r{i}"), "paths": [host]})
            } else {
                json!({"name": format!("r{i}"), "hosts": [host]})
            };
            let (s, route) = app
                .admin_post(&format!("/services/{name}/routes"), route)
                .await;
            assert_eq!(s, 201, "{route}");
            let mut config = defaults();
            merge(&mut config, &overrides(host, &no_body_id));
            merge(&mut config, &patch);
            let (s, plugin) = app
                .admin_post(
                    &format!("/routes/r{i}/plugins"),
                    json!({"name": "oauth2", "config": config}),
                )
                .await;
            assert_eq!(s, 201, "{host}: {plugin}");
        }
        Self {
            app,
            _upstream: upstream,
            no_body,
            tokens,
        }
    }

    fn builder(&self, base: &str, method: Method, host: &str, path: &str) -> RequestBuilder {
        let (host, path) = if host.starts_with('/') {
            ("", format!("{host}{path}"))
        } else {
            (host, path.to_string())
        };
        let rb = self.app.http.request(method, format!("{base}{path}"));
        if host.is_empty() {
            rb
        } else {
            rb.header("host", host)
        }
    }

    /// A request to the HTTPS proxy port (Kong's `proxy_ssl_client`) with `Host: host`.
    pub fn tls(&self, method: Method, host: &str, path: &str) -> RequestBuilder {
        self.builder(&self.app.proxy_tls, method, host, path)
    }

    /// A request to the plain HTTP proxy port (Kong's `proxy_client`).
    pub fn plain(&self, method: Method, host: &str, path: &str) -> RequestBuilder {
        self.builder(&self.app.proxy, method, host, path)
    }

    /// POST a JSON body over HTTPS.
    pub async fn post(&self, host: &str, path: &str, body: Value) -> Resp {
        send(self.tls(Method::POST, host, path).json(&body)).await
    }

    /// Kong's `provision_code`: a code for `clientid123` (overridable by `extra`).
    pub async fn code(&self, host: &str, extra: Value) -> String {
        let body = with(
            json!({"provision_key": "provision123", "client_id": "clientid123", "scope": "email",
                   "response_type": "code", "state": "hello", "authenticated_userid": "userid123"}),
            extra,
        );
        let r = self.post(host, "/oauth2/authorize", body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let uri = r.redirect().to_string();
        let re = Regex::new(r"^http://google\.test/kong\?code=(\w{32})&state=hello$").unwrap();
        re.captures(&uri)
            .unwrap_or_else(|| panic!("code redirect: {uri}"))[1]
            .to_string()
    }

    /// Kong's `provision_token`: a code (with `code_extra`) exchanged (with `token_extra`).
    pub async fn token(&self, host: &str, code_extra: Value, token_extra: Value) -> Value {
        let r = self.exchange(host, code_extra, token_extra).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// A code exchanged at the token endpoint, whatever the answer.
    pub async fn exchange(&self, host: &str, code_extra: Value, token_extra: Value) -> Resp {
        let client = code_extra
            .get("client_id")
            .cloned()
            .unwrap_or(json!("clientid123"));
        let code = self.code(host, code_extra).await;
        let body = with(
            json!({"code": code, "client_id": client, "client_secret": "secret123",
                   "grant_type": "authorization_code"}),
            token_extra,
        );
        self.post(host, "/oauth2/token", body).await
    }

    /// The default token of `oauth2.test`'s plugin, as a plain access token string.
    pub async fn access(&self, host: &str) -> String {
        self.token(host, json!({}), json!({})).await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Kong's `refresh_token` helper: refresh as clientid123.
    pub async fn refresh(&self, host: &str, refresh_token: &Value) -> Resp {
        self.post(
            host,
            "/oauth2/token",
            json!({"refresh_token": refresh_token, "client_id": "clientid123",
                   "client_secret": "secret123", "grant_type": "refresh_token"}),
        )
        .await
    }

    /// GET `/request` over plain HTTP with `authorization: bearer <token>`.
    pub async fn get_bearer(&self, host: &str, token: &str) -> Resp {
        send(
            self.plain(Method::GET, host, "/request")
                .header("authorization", format!("bearer {token}")),
        )
        .await
    }

    /// GET `/request?access_token=<token>` over HTTPS (Kong's "sets the right upstream headers"
    /// request).
    pub async fn get_ssl_query(&self, host: &str, token: &Value) -> Resp {
        let token = token.as_str().expect("a token string");
        send(self.tls(Method::GET, host, &format!("/request?access_token={token}"))).await
    }

    /// Status 200, and the upstream was told consumer `bob`, `scope`, `userid` and credential
    /// `clientid123` (Kong's "sets the right upstream headers" assertions).
    pub async fn upstream_saw_bob(&self, r: &Resp, scope: &str, userid: &str) {
        assert_eq!(r.status, 200, "{}", r.body);
        let h = r.upstream();
        assert_eq!(h["x-consumer-id"], self.bob_id().await);
        assert_eq!(h["x-consumer-username"], "bob");
        assert_eq!(h["x-authenticated-scope"], scope);
        assert_eq!(h["x-authenticated-userid"], userid);
        assert_eq!(h["x-credential-identifier"], "clientid123");
    }

    /// The id of consumer `bob`.
    pub async fn bob_id(&self) -> String {
        let (s, c) = self.app.admin_get("/consumers/bob").await;
        assert_eq!(s, 200, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    /// The id of credential `client_id`.
    pub async fn credential_id(&self, client_id: &str) -> String {
        let (s, c) = self.app.admin_get(&format!("/oauth2/{client_id}")).await;
        assert_eq!(s, 200, "{c}");
        c["id"].as_str().unwrap().to_string()
    }
}

impl Kong {
    /// Kong's `db.oauth2_tokens:select_by_access_token`: the stored token, as the store shows it
    /// `ahead` seconds from now (rows past their TTL are gone).
    pub async fn token_row(&self, access: &str, ahead: i64) -> Option<TokenRecord> {
        self.tokens
            .token_by_access(&portcullis::crypto::token_hash(access), unix_now() + ahead)
            .await
            .expect("token store answers")
    }

    /// Kong's `db.oauth2_authorization_codes:select_by_code`. The store only gives a code out by
    /// taking it, so the code cannot be redeemed afterwards (Kong's tests never do).
    pub async fn code_row(&self, code: &str) -> Option<CodeRecord> {
        self.tokens
            .take_code(&portcullis::crypto::token_hash(code), unix_now())
            .await
            .expect("token store answers")
    }
}

/// Seconds since the epoch, the store's clock.
fn unix_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("fits")
}

/// An answer: status, headers, JSON body (`Null` if none).
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// A header's value, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Status and whole body are exactly these.
    #[track_caller]
    pub fn is(&self, status: u16, body: Value) {
        assert_eq!((self.status, &self.body), (status, &body));
    }

    /// `Cache-Control: no-store` and `Pragma: no-cache`.
    #[track_caller]
    pub fn no_cache(&self) {
        assert_eq!(self.header("cache-control"), "no-store");
        assert_eq!(self.header("pragma"), "no-cache");
    }

    /// The `redirect_uri` of an authorize answer.
    #[track_caller]
    pub fn redirect(&self) -> &str {
        self.body["redirect_uri"]
            .as_str()
            .unwrap_or_else(|| panic!("no redirect_uri: {} {}", self.status, self.body))
    }

    /// Status 200 and a redirect matching `re`.
    #[track_caller]
    pub fn redirects_like(&self, re: &str) {
        assert_eq!(self.status, 200, "{}", self.body);
        let uri = self.redirect();
        assert!(Regex::new(re).unwrap().is_match(uri), "{uri} !~ {re}");
    }

    /// Status 400 and exactly this redirect.
    #[track_caller]
    pub fn redirects_to(&self, uri: &str) {
        self.is(400, json!({ "redirect_uri": uri }));
    }

    /// The echoed upstream request headers.
    pub fn upstream(&self) -> &Value {
        &self.body["headers"]
    }

    /// A `bearer` token answer with Kong's shape (32-char tokens).
    #[track_caller]
    pub fn is_token(&self, expires_in: i64, with_refresh: bool) {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.body["token_type"], "bearer");
        assert_eq!(self.body["expires_in"], expires_in);
        assert!(is_token32(&self.body["access_token"]), "{}", self.body);
        assert_eq!(
            is_token32(&self.body["refresh_token"]),
            with_refresh,
            "{}",
            self.body
        );
    }
}

fn is_token32(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Sends and reads the answer.
pub async fn send(rb: RequestBuilder) -> Resp {
    let r = rb.send().await.expect("gateway reachable");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let mut body = serde_json::from_str(&text).unwrap_or(Value::Null);
    // Deliberate difference from Kong: every authorize redirect ends with RFC 9207's `iss` (Kong sends none). It is
    // checked and cut here, so the cases compare the rest with Kong's exact redirect.
    if let Some(uri) = body["redirect_uri"].as_str() {
        let (kong, iss) = uri
            .rsplit_once("&iss=")
            .unwrap_or_else(|| panic!("no iss in {uri}"));
        assert!(iss.starts_with("http") && !iss.contains('&'), "{uri}");
        body["redirect_uri"] = Value::String(kong.to_string());
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Polls `probe` every 200 ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `multipart/form-data` body of text fields (reqwest's multipart feature is not enabled).
fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "kongconformanceboundary";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// S256 challenge of a verifier.
fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A random 50-character verifier (Kong's test uses 50 random characters).
fn verifier() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(50)
        .map(char::from)
        .collect()
}

const INVALID_TOKEN_CHALLENGE: &str = "Bearer error=\"invalid_token\", error_description=\"The access token is invalid or has expired\"";

fn err(error: &str, description: &str) -> Value {
    json!({"error": error, "error_description": description})
}

fn invalid_client() -> Value {
    err("invalid_client", "Invalid client authentication")
}

fn invalid_token() -> Value {
    err(
        "invalid_token",
        "The access token is invalid or has expired",
    )
}

fn missing_token() -> Value {
    err("invalid_request", "The access token is missing")
}

const CODE_RE: &str = r"^http://google\.test/kong\?code=\w{32}$";

// ------------------------------------------------------------------------------------------------
// 10.1 OAuth2 Authorization › Code Grant (POST /oauth2/authorize, HTTPS, Host oauth2.test)
// ------------------------------------------------------------------------------------------------

const O: &str = "oauth2.test";

/// The authorize parameters most cases build on.
fn authz(extra: Value) -> Value {
    with(
        json!({"provision_key": "provision123", "authenticated_userid": "id123", "client_id": "clientid123"}),
        extra,
    )
}

async fn c001_authorize_no_provision_key(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(k.tls(Method::POST, O, "/oauth2/authorize")).await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
    r.no_cache();
}

async fn c003_authorize_no_parameter(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            json!({"provision_key": "provision123"}),
        )
        .await;
    r.is(
        400,
        err(
            "invalid_authenticated_userid",
            "Missing authenticated_userid parameter",
        ),
    );
}

async fn c004_authorize_only_provision_key_and_userid(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            json!({"provision_key": "provision123", "authenticated_userid": "id123"}),
        )
        .await;
    r.is(400, invalid_client());
    r.no_cache();
}

async fn c005_authorize_only_client_id(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.post(O, "/oauth2/authorize", authz(json!({}))).await;
    r.redirects_to("http://google.test/kong?error=invalid_scope&error_description=You%20must%20specify%20a%20scope");
}

async fn c006_authorize_invalid_scope(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(O, "/oauth2/authorize", authz(json!({"scope": "wot"})))
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_scope&error_description=%22wot%22%20is%20an%20invalid%20scope");
}

async fn c007_authorize_no_response_type(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(O, "/oauth2/authorize", authz(json!({"scope": "email"})))
        .await;
    r.redirects_to("http://google.test/kong?error=unsupported_response_type&error_description=Invalid%20response_type");
}

async fn c008_authorize_no_response_type_with_state(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            authz(json!({"scope": "email", "state": "somestate"})),
        )
        .await;
    r.redirects_to("http://google.test/kong?error=unsupported_response_type&error_description=Invalid%20response_type&state=somestate");
}

async fn c009_authorize_redirect_uri_mismatch(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            authz(json!({"scope": "email", "response_type": "code", "redirect_uri": "http://hello.test/"})),
        )
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_request&error_description=Invalid%20redirect_uri%20that%20does%20not%20match%20with%20any%20redirect_uri%20created%20with%20the%20application");
}

async fn c010_authorize_redirect_uri_with_query_string(store: Store) {
    let h = "oauth2_6.test";
    let k = Kong::start(store, &[h]).await;
    let r = send(
        k.plain(Method::POST, h, "/oauth2/authorize")
            .header("x-forwarded-proto", "https")
            .json(&authz(
                json!({"client_id": "clientid789", "scope": "email", "response_type": "code"}),
            )),
    )
    .await;
    r.redirects_like(r"^http://google\.test/kong\?code=\w{32}&foo=bar$");
}

async fn c011_authorize_multiple_redirect_uris(store: Store) {
    let h = "oauth2_6.test";
    let k = Kong::start(store, &[h]).await;
    let r = send(
        k.plain(Method::POST, h, "/oauth2/authorize")
            .header("x-forwarded-proto", "https")
            .json(&authz(
                json!({"client_id": "clientid456", "scope": "email", "response_type": "code"}),
            )),
    )
    .await;
    r.redirects_like(r"^http://one\.test/one/\?code=\w{32}$");
}

async fn c012_authorize_fails_without_https(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(
        k.plain(Method::POST, O, "/oauth2/authorize")
            .json(&authz(json!({"scope": "email", "response_type": "code"}))),
    )
    .await;
    r.is(400, err("access_denied", "You must use HTTPS"));
}

async fn c013_authorize_http_accepted_if_already_terminated(store: Store) {
    let h = "oauth2_6.test";
    let k = Kong::start(store, &[h]).await;
    let r = send(
        k.plain(Method::POST, h, "/oauth2/authorize")
            .header("x-forwarded-proto", "https")
            .json(&authz(json!({"scope": "email", "response_type": "code"}))),
    )
    .await;
    r.redirects_like(CODE_RE);
}

async fn c014_authorize_http_refused_if_not_accepted(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(
        k.plain(Method::POST, O, "/oauth2/authorize")
            .header("x-forwarded-proto", "https")
            .json(&authz(json!({"scope": "email", "response_type": "code"}))),
    )
    .await;
    r.is(400, err("access_denied", "You must use HTTPS"));
}

async fn c015_authorize_returns_success(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            authz(json!({"scope": "email", "response_type": "code"})),
        )
        .await;
    r.redirects_like(CODE_RE);
}

async fn c016_authorize_fails_with_a_path_when_using_the_dns(store: Store) {
    let h = "example-path.test";
    let k = Kong::start(store, &[h]).await;
    let r = k
        .post(
            h,
            "/oauth2/authorize",
            authz(json!({"provision_key": "provision123a", "scope": "email", "response_type": "code"})),
        )
        .await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
}

async fn c017_authorize_success_with_a_path(store: Store) {
    let k = Kong::start(store, &["/somepath"]).await;
    let r = k
        .post(
            "/somepath",
            "/oauth2/authorize",
            authz(json!({"scope": "email", "response_type": "code"})),
        )
        .await;
    r.redirects_like(CODE_RE);
}

async fn c018_authorize_success_with_final_slash(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize/",
            authz(json!({"scope": "email", "response_type": "code"})),
        )
        .await;
    r.redirects_like(CODE_RE);
}

async fn c019_authorize_success_with_state(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            authz(json!({"scope": "email", "response_type": "code", "state": "hello"})),
        )
        .await;
    r.redirects_like(r"^http://google\.test/kong\?code=\w{32}&state=hello$");
    r.no_cache();
}

/// Cases 20–21: Kong's code request with `scope`; Kong then reads the code row (here: through the
/// token store, where the code is kept as its digest).
async fn stored_code(store: Store, scope: &str) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({"scope": scope})).await;
    let row = k.code_row(&code).await.expect("the code is stored");
    assert_eq!(row.code_hash, portcullis::crypto::token_hash(&code));
    assert_eq!(row.authenticated_userid.as_deref(), Some("userid123"));
    assert_eq!(row.scope.as_deref(), Some(scope));
    assert_eq!(
        row.credential_id.to_string(),
        k.credential_id("clientid123").await
    );
}

async fn c020_authorize_stores_authenticated_user_properties(store: Store) {
    stored_code(store, "email").await;
}

async fn c021_authorize_stores_dotted_scope(store: Store) {
    stored_code(store, "user.email").await;
}

fn public_authz(extra: Value) -> Value {
    authz(with(
        json!({"client_id": "clientid11211", "scope": "email", "response_type": "code", "state": "hello"}),
        extra,
    ))
}

async fn c022_authorize_unsupported_challenge_method(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            public_authz(json!({"code_challenge": "1234", "code_challenge_method": "foo"})),
        )
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_request&error_description=code_challenge_method%20is%20not%20supported%2c%20must%20be%20S256&state=hello");
}

async fn c023_authorize_challenge_method_without_challenge(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            public_authz(json!({"code_challenge_method": "H256"})),
        )
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_request&error_description=code_challenge%20is%20required%20when%20code_method%20is%20present&state=hello");
}

async fn c024_authorize_public_client_needs_challenge(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(O, "/oauth2/authorize", public_authz(json!({})))
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_request&error_description=code_challenge%20is%20required%20for%20public%20clients&state=hello");
}

async fn c025_authorize_confidential_client_needs_challenge_when_strict(store: Store) {
    let h = "oauth2_15.test";
    let k = Kong::start(store, &[h]).await;
    let r = k
        .post(
            h,
            "/oauth2/authorize",
            public_authz(json!({"client_id": "clientid123"})),
        )
        .await;
    r.redirects_to("http://google.test/kong?error=invalid_request&error_description=code_challenge%20is%20required%20for%20confidential%20clients&state=hello");
}

async fn c026_authorize_public_client_without_challenge_when_pkce_none(store: Store) {
    let h = "oauth2_14.test";
    let k = Kong::start(store, &[h]).await;
    let r = k
        .post(h, "/oauth2/authorize", public_authz(json!({})))
        .await;
    r.redirects_like(r"^http://google\.test/kong\?code=\w{32}&state=hello$");
}

/// Cases 27–28: Kong's request for the public client with challenge `1234`; Kong then reads the
/// code row (here: through the token store) for the stored challenge and method.
async fn stored_challenge(store: Store, method: Value) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            authz(json!({"client_id": "clientid11211", "scope": "user.email",
                         "response_type": "code", "state": "hello",
                         "authenticated_userid": "userid123", "code_challenge": "1234",
                         "code_challenge_method": method})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let uri = r.redirect().to_string();
    let re = Regex::new(r"^http://google\.test/kong\?code=(\w{32})&state=hello$").unwrap();
    let code = re.captures(&uri).unwrap_or_else(|| panic!("{uri}"))[1].to_string();
    let row = k.code_row(&code).await.expect("the code is stored");
    assert_eq!(row.challenge.as_deref(), Some("1234"));
    assert_eq!(row.challenge_method.as_deref(), Some("S256"));
}

async fn c027_authorize_defaults_challenge_method_to_s256(store: Store) {
    stored_challenge(store, Value::Null).await;
}

async fn c028_authorize_saves_code_challenge(store: Store) {
    stored_challenge(store, json!("S256")).await;
}

// 10.1 OAuth2 Authorization › Implicit Grant

fn implicit(extra: Value) -> Value {
    with(
        json!({"provision_key": "provision123", "authenticated_userid": "userid123",
               "client_id": "clientid123", "scope": "email", "response_type": "token"}),
        extra,
    )
}

/// The access token inside an implicit-grant redirect fragment.
fn fragment_token(r: &Resp) -> String {
    let uri = r.redirect();
    let re = Regex::new(r"#access_token=(\w{32})&").unwrap();
    assert!(!uri.contains("refresh_token"), "{uri}");
    re.captures(uri).unwrap_or_else(|| panic!("{uri}"))[1].to_string()
}

async fn c029_implicit_returns_success(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.post(O, "/oauth2/authorize", implicit(json!({}))).await;
    r.redirects_like(
        r"^http://google\.test/kong#access_token=\w{32}&expires_in=\d+&token_type=bearer$",
    );
    r.no_cache();
}

async fn c030_implicit_returns_the_state(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(O, "/oauth2/authorize", implicit(json!({"state": "wot"})))
        .await;
    r.redirects_like(
        r"^http://google\.test/kong#access_token=\w{32}&expires_in=\d+&state=wot&token_type=bearer$",
    );
}

/// Cases 31 and 124: an implicit token for `client` on `host`; Kong reads its row: the token,
/// `expires_in` and no refresh token (here: through the token store).
async fn implicit_row(store: Store, host: &str, client: &str, expires_in: i64) {
    let k = Kong::start(store, &[host]).await;
    let r = k
        .post(
            host,
            "/oauth2/authorize",
            implicit(json!({"authenticated_userid": "id123", "client_id": client})),
        )
        .await;
    r.redirects_like(
        r"^http://google\.test/kong#access_token=\w{32}&expires_in=\d+&token_type=bearer$",
    );
    let token = fragment_token(&r);
    let row = k.token_row(&token, 0).await.expect("the token is stored");
    assert_eq!(
        row.access_token_hash,
        portcullis::crypto::token_hash(&token)
    );
    assert_eq!(row.expires_in, expires_in);
    assert_eq!(row.refresh_token_hash, None);
}

async fn c031_implicit_token_has_the_right_expiration(store: Store) {
    implicit_row(store, O, "clientid123", 5).await;
}

async fn c032_implicit_stores_authenticated_user_properties(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            implicit(json!({"scope": "email  profile"})),
        )
        .await;
    r.redirects_like(
        r"^http://google\.test/kong#access_token=\w{32}&expires_in=\d+&token_type=bearer$",
    );
    let token = fragment_token(&r);
    let row = k.token_row(&token, 0).await.expect("the token is stored");
    assert_eq!(
        row.access_token_hash,
        portcullis::crypto::token_hash(&token)
    );
    assert_eq!(row.authenticated_userid.as_deref(), Some("userid123"));
    assert_eq!(row.scope.as_deref(), Some("email profile"));
    assert_eq!(row.expires_in, 5);
    assert_eq!(row.refresh_token_hash, None);
}

async fn c033_implicit_sets_the_right_upstream_headers(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/authorize",
            implicit(json!({"scope": "email  profile"})),
        )
        .await;
    let token = fragment_token(&r);
    let r = send(k.plain(Method::GET, O, &format!("/request?access_token={token}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.upstream();
    assert_eq!(h["x-consumer-id"], k.bob_id().await);
    assert_eq!(h["x-consumer-username"], "bob");
    assert_eq!(h["x-authenticated-scope"], "email profile");
    assert_eq!(h["x-authenticated-userid"], "userid123");
    assert_eq!(h["x-credential-identifier"], "clientid123");
}

// ------------------------------------------------------------------------------------------------
// Every case on both stores.
// ------------------------------------------------------------------------------------------------

/// Expands the listed cases into `memory::<case>` and `postgres::<case>` tests.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Postgres).await;
                }
            )*
        }
    };
}

// ------------------------------------------------------------------------------------------------
// 10.1 OAuth2 Authorization › Client Credentials (POST /oauth2/token, Host oauth2_4.test)
// ------------------------------------------------------------------------------------------------

const CC: &str = "oauth2_4.test";

fn cc(extra: Value) -> Value {
    with(
        json!({"client_id": "clientid123", "client_secret": "secret123", "scope": "email",
               "grant_type": "client_credentials"}),
        extra,
    )
}

async fn c034_client_credentials_no_client_secret(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            json!({"client_id": "clientid123", "scope": "email", "response_type": "token"}),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c035_client_credentials_empty_client_id_and_secret(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"client_id": "", "client_secret": ""})),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c036_client_credentials_missing_client_id_and_secret(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"client_id": null, "client_secret": null})),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c037_token_endpoint_refuses_get_without_realm(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(k.tls(
        Method::GET,
        CC,
        "/oauth2/token?client_id&grant_type=client_credentials&client_secret",
    ))
    .await;
    let d = "The HTTP method GET is invalid for the token endpoint";
    r.is(405, err("invalid_method", d));
    assert_eq!(
        r.header("www-authenticate"),
        format!("Bearer error=\"invalid_method\", error_description=\"{d}\"")
    );
}

async fn c038_token_endpoint_refuses_get_with_realm(store: Store) {
    let h = "oauth2_5.test";
    let k = Kong::start(store, &[h]).await;
    let r = send(k.tls(
        Method::GET,
        h,
        "/oauth2/token?client_id&grant_type=client_credentials&client_secret",
    ))
    .await;
    let d = "The HTTP method GET is invalid for the token endpoint";
    r.is(405, err("invalid_method", d));
    assert_eq!(
        r.header("www-authenticate"),
        format!(
            "Bearer realm=\"test-oauth2\", error=\"invalid_method\", error_description=\"{d}\""
        )
    );
}

async fn c039_client_credentials_no_grant_type(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(CC, "/oauth2/token", cc(json!({"grant_type": null})))
        .await;
    r.is(400, err("unsupported_grant_type", "Invalid grant_type"));
}

async fn c040_client_credentials_fails_without_https(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(
        k.plain(Method::POST, CC, "/oauth2/token")
            .json(&cc(json!({}))),
    )
    .await;
    r.is(400, err("access_denied", "You must use HTTPS"));
}

async fn c041_client_credentials_userid_without_provision_key(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"authenticated_userid": "user123"})),
        )
        .await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
}

async fn c042_client_credentials_userid_with_invalid_provision_key(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"authenticated_userid": "user123", "provision_key": "hello"})),
        )
        .await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
}

async fn c043_client_credentials_returns_success(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k.post(CC, "/oauth2/token", cc(json!({}))).await;
    r.is_token(5, false);
}

async fn c044_client_credentials_app_with_multiple_redirect_uris(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"client_id": "clientid456", "client_secret": "secret456"})),
        )
        .await;
    r.is_token(5, false);
}

async fn c045_client_credentials_with_a_valid_redirect_uri(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(
                json!({"client_id": "clientid456", "client_secret": "secret456",
                      "redirect_uri": "http://two.test/two"}),
            ),
        )
        .await;
    r.is_token(5, false);
}

async fn c046_client_credentials_app_without_redirect_uri(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"client_id": "clientid10112", "client_secret": "secret10112"})),
        )
        .await;
    r.is_token(5, false);
}

async fn c047_client_credentials_userid_and_valid_provision_key(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"authenticated_userid": "user123", "provision_key": "provision123"})),
        )
        .await;
    r.is_token(5, false);
}

async fn c048_client_credentials_with_authorization_header(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(
        k.tls(Method::POST, CC, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
            .json(&json!({"scope": "email", "grant_type": "client_credentials"})),
    )
    .await;
    r.is_token(5, false);
}

async fn c049_client_credentials_header_and_client_id_body_param(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(
        k.tls(Method::POST, CC, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
            .json(&json!({"client_id": "clientid123", "scope": "email",
                          "grant_type": "client_credentials"})),
    )
    .await;
    r.is_token(5, false);
}

async fn c050_client_credentials_wrong_authorization_header(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(
        k.tls(Method::POST, CC, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTI0")
            .json(&json!({"scope": "email", "grant_type": "client_credentials"})),
    )
    .await;
    r.is(401, invalid_client());
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"OAuth2.0\"");
}

async fn c051_client_credentials_sets_the_right_upstream_headers(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let t = k
        .post(
            CC,
            "/oauth2/token",
            cc(json!({"authenticated_userid": "hello", "provision_key": "provision123"})),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let r = k.get_ssl_query(CC, &t.body["access_token"]).await;
    k.upstream_saw_bob(&r, "email", "hello").await;
}

async fn c052_client_credentials_works_in_a_multipart_request(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let (ct, body) = multipart(&[
        ("client_id", "clientid123"),
        ("client_secret", "secret123"),
        ("scope", "email"),
        ("grant_type", "client_credentials"),
    ]);
    let r = send(
        k.tls(Method::POST, CC, "/oauth2/token")
            .header("content-type", ct)
            .body(body),
    )
    .await;
    r.is_token(5, false);
    let token = r.body["access_token"].as_str().unwrap().to_string();
    let (ct, body) = multipart(&[("access_token", &token)]);
    let r = send(
        k.plain(Method::POST, CC, "/request")
            .header("content-type", ct)
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// ------------------------------------------------------------------------------------------------
// 10.1 OAuth2 Authorization › Password Grant (Host oauth2_5.test, realm test-oauth2)
// ------------------------------------------------------------------------------------------------

const PW: &str = "oauth2_5.test";

fn pw(extra: Value) -> Value {
    with(
        json!({"client_id": "clientid123", "client_secret": "secret123", "scope": "email",
               "grant_type": "password", "provision_key": "provision123",
               "authenticated_userid": "id123"}),
        extra,
    )
}

async fn c053_password_blocks_unauthorized_requests_without_realm(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let r = send(k.plain(Method::GET, CC, "/request")).await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer");
}

async fn c054_password_blocks_unauthorized_requests_with_realm(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = send(k.plain(Method::GET, PW, "/request")).await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"test-oauth2\"");
}

async fn c055_password_no_client_secret(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            json!({"client_id": "clientid123", "scope": "email", "response_type": "token"}),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c056_password_no_grant_type(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            json!({"client_id": "clientid123", "client_secret": "secret123", "scope": "email"}),
        )
        .await;
    r.is(400, err("unsupported_grant_type", "Invalid grant_type"));
}

async fn c057_password_no_provision_key_with_response_type(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            pw(json!({"provision_key": null, "authenticated_userid": null, "response_type": "token"})),
        )
        .await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
}

async fn c058_password_no_provision_key(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            pw(json!({"provision_key": null, "authenticated_userid": null})),
        )
        .await;
    r.is(400, err("invalid_provision_key", "Invalid provision_key"));
}

async fn c059_password_no_authenticated_userid(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            pw(json!({"authenticated_userid": null})),
        )
        .await;
    r.is(
        400,
        err(
            "invalid_authenticated_userid",
            "Missing authenticated_userid parameter",
        ),
    );
}

async fn c060_password_returns_success(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k.post(PW, "/oauth2/token", pw(json!({}))).await;
    r.is_token(5, true);
}

async fn c061_password_with_authorization_header(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = send(
        k.tls(Method::POST, PW, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
            .json(&pw(json!({"client_id": null, "client_secret": null}))),
    )
    .await;
    r.is_token(5, true);
}

async fn c062_password_wrong_authorization_header(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = send(
        k.tls(Method::POST, PW, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTI0")
            .json(&pw(json!({"client_id": null, "client_secret": null}))),
    )
    .await;
    r.is(401, invalid_client());
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"OAuth2.0\"");
}

async fn c063_password_sets_the_right_upstream_headers(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let t = send(
        k.tls(Method::POST, PW, "/oauth2/token")
            .header("authorization", "Basic Y2xpZW50aWQxMjM6c2VjcmV0MTIz")
            .json(
                &json!({"provision_key": "provision123", "authenticated_userid": "id123",
                          "scope": "email", "grant_type": "password"}),
            ),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let r = k.get_ssl_query(PW, &t.body["access_token"]).await;
    k.upstream_saw_bob(&r, "email", "id123").await;
}

// ------------------------------------------------------------------------------------------------
// 10.1 OAuth2 Access Token (POST /oauth2/token, Host oauth2.test)
// ------------------------------------------------------------------------------------------------

async fn c064_token_nothing_sent(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(k.tls(Method::POST, O, "/oauth2/token")).await;
    r.is(400, invalid_client());
    r.no_cache();
}

async fn c065_token_only_the_code(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({})).await;
    let r = k.post(O, "/oauth2/token", json!({"code": code})).await;
    r.is(400, invalid_client());
    r.no_cache();
}

async fn c066_token_only_code_and_client_secret(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({})).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"code": code, "client_secret": "secret123"}),
        )
        .await;
    r.is(400, invalid_client());
    r.no_cache();
}

async fn c067_token_no_grant_type(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.exchange(O, json!({}), json!({"grant_type": null})).await;
    r.is(400, err("unsupported_grant_type", "Invalid grant_type"));
}

async fn c068_token_wrong_code(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({})).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"code": format!("{code}hello"), "client_id": "clientid123",
                   "client_secret": "secret123", "grant_type": "authorization_code"}),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

async fn c069_token_success_without_state(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.exchange(O, json!({}), json!({})).await;
    r.is_token(5, true);
    r.no_cache();
    assert!(r.body.get("state").is_none(), "{}", r.body);
}

async fn c070_token_success_with_state(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.exchange(O, json!({}), json!({"state": "wot"})).await;
    r.is_token(5, true);
    assert_eq!(r.body["state"], "wot");
}

async fn c071_token_code_of_another_client(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({"client_id": "clientid333"})).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                   "grant_type": "authorization_code", "state": "wot"}),
        )
        .await;
    r.is(
        400,
        json!({"error": "invalid_request", "error_description": "Invalid code", "state": "wot"}),
    );
}

async fn c072_token_sets_the_right_upstream_headers(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let r = k.get_ssl_query(O, &t["access_token"]).await;
    k.upstream_saw_bob(&r, "email", "userid123").await;
}

/// Deliberate difference from Kong (beyond this case's assertions): the replay also revokes the
/// tokens the code issued.
async fn c073_token_code_used_more_than_once(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({})).await;
    let body = json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                      "grant_type": "authorization_code"});
    k.post(O, "/oauth2/token", body.clone())
        .await
        .is_token(5, true);
    let r = k.post(O, "/oauth2/token", body).await;
    r.is(400, err("invalid_request", "Invalid code"));
}

async fn c074_token_code_used_by_another_application(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .exchange(
            O,
            json!({}),
            json!({"client_id": "clientid789", "client_secret": "secret789"}),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

async fn c075_token_code_used_for_another_api(store: Store) {
    let k = Kong::start(store, &[O, "oauth2_3.test"]).await;
    let code = k.code(O, json!({})).await;
    let r = k
        .post(
            "oauth2_3.test",
            "/oauth2/token",
            json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                   "grant_type": "authorization_code"}),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

/// A code for the public client with `challenge` (the S256 challenge of a verifier).
/// As Kong's `provision_code`, it also sends `code_method: S256`, a misspelt parameter that is
/// ignored (the method defaults to S256).
async fn public_code(k: &Kong, host: &str, challenge: &str) -> String {
    k.code(
        host,
        json!({"client_id": "clientid11211", "code_challenge": challenge, "code_method": "S256"}),
    )
    .await
}

fn public_exchange(code: &str, extra: Value) -> Value {
    with(
        json!({"code": code, "client_id": "clientid11211", "grant_type": "authorization_code"}),
        extra,
    )
}

async fn c076_token_succeeds_with_code_challenge(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let v = verifier();
    let code = public_code(&k, O, &challenge(&v)).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(&code, json!({"code_verifier": v})),
        )
        .await;
    r.is_token(5, true);
}

/// Cases 77–79: the public client authenticating with a Basic header and no secret.
async fn public_basic(store: Store, basic: &str) {
    let k = Kong::start(store, &[O]).await;
    let v = verifier();
    let code = public_code(&k, O, &challenge(&v)).await;
    let r = send(
        k.tls(Method::POST, O, "/oauth2/token")
            .header("authorization", format!("Basic {basic}"))
            .json(&json!({"code": code, "grant_type": "authorization_code", "code_verifier": v})),
    )
    .await;
    r.is_token(5, true);
}

async fn c077_token_authorization_header_for_public_app(store: Store) {
    public_basic(store, "Y2xpZW50aWQxMTIxMQ==").await;
}

async fn c078_token_authorization_header_for_public_app_with_colon(store: Store) {
    public_basic(store, "Y2xpZW50aWQxMTIxMTo=").await;
}

async fn c079_token_authorization_header_for_public_app_with_empty_secret(store: Store) {
    public_basic(store, "Y2xpZW50aWQxMTIxMTogICAg").await;
}

async fn c080_token_secret_provided_for_public_app(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let v = verifier();
    let code = public_code(&k, O, &challenge(&v)).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(
                &code,
                json!({"code_verifier": v, "client_secret": "secret11211"}),
            ),
        )
        .await;
    r.is(
        400,
        err(
            "invalid_request",
            "client_secret is disallowed for public clients",
        ),
    );
}

async fn c081_token_secret_provided_for_public_app_in_header(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let v = verifier();
    let code = public_code(&k, O, &challenge(&v)).await;
    let r = send(
        k.tls(Method::POST, O, "/oauth2/token")
            .header(
                "authorization",
                "Basic Y2xpZW50aWQxMTIxMTpzZWNyZXQxMTIxMQ==",
            )
            .json(&json!({"code": code, "grant_type": "authorization_code", "code_verifier": v})),
    )
    .await;
    r.is(
        400,
        err(
            "invalid_request",
            "client_secret is disallowed for public clients",
        ),
    );
}

fn verifier_required() -> Value {
    err(
        "invalid_request",
        "code_verifier is required for PKCE authorization requests",
    )
}

fn verifier_length() -> Value {
    err(
        "invalid_request",
        "code_verifier must be between 43 and 128 characters",
    )
}

async fn c082_token_no_code_verifier_for_public_app(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, &challenge(&verifier())).await;
    let r = k
        .post(O, "/oauth2/token", public_exchange(&code, json!({})))
        .await;
    r.is(400, verifier_required());
}

async fn c083_token_no_code_verifier_when_pkce_none(store: Store) {
    let h = "oauth2_14.test";
    let k = Kong::start(store, &[h]).await;
    let r = k.exchange(h, json!({}), json!({})).await;
    r.is_token(5, true);
}

async fn c084_token_code_challenge_with_padding(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, "2aC4cMSkAsMRtZbhHhiZkDW3sddRf_iTRGil1r9gi8w=").await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(
                &code,
                json!({"code_verifier": "abcdelfhigklmnopqrstuvwxyz0123456789abcdefg"}),
            ),
        )
        .await;
    r.is_token(5, true);
}

async fn c085_token_code_challenge_with_plus_or_slash(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, "0LoS6Gtrw16r07+ZXsCf8MeAi21QHmKc3LJdUCA5w/o=").await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(
                &code,
                json!({"code_verifier": "abcdelfhigklmnopqrstuvwxyz0123456789abcdefghijklmnop9"}),
            ),
        )
        .await;
    r.is_token(5, true);
}

/// Cases 86–87: a public code whose challenge is the S256 of `v`, redeemed with `v`.
async fn redeem_with_own_verifier(store: Store, v: &str) -> Resp {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, &challenge(v)).await;
    k.post(
        O,
        "/oauth2/token",
        public_exchange(&code, json!({"code_verifier": v})),
    )
    .await
}

async fn c086_token_code_verifier_longer_than_128(store: Store) {
    let r = redeem_with_own_verifier(store, &"abc123".repeat(30)).await;
    r.is(400, verifier_length());
}

async fn c087_token_code_verifier_shorter_than_43(store: Store) {
    let r = redeem_with_own_verifier(store, "abc123").await;
    r.is(400, verifier_length());
}

async fn c088_token_code_verifier_missing(store: Store) {
    let r = redeem_public_code(store, json!({"code_verifier": null})).await;
    r.is(400, verifier_required());
}

async fn c089_token_secret_mismatch_for_non_authorization_code_grant(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    let r = k
        .post(
            PW,
            "/oauth2/token",
            pw(json!({"client_secret": "bogus", "code": "whatever"})),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c090_token_code_verifier_empty(store: Store) {
    let r = redeem_public_code(store, json!({"code_verifier": ""})).await;
    r.is(400, verifier_length());
}

async fn c091_token_code_verifier_not_a_string(store: Store) {
    let r = redeem_public_code(store, json!({"code_verifier": 12})).await;
    r.is(400, err("invalid_request", "code_verifier is not a string"));
}

async fn c092_token_code_verifier_does_not_match(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, "abc123").await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(&code, json!({"code_verifier": verifier()})),
        )
        .await;
    r.is(400, err("invalid_grant", "Invalid code"));
}

async fn c093_token_code_verifier_does_not_match_confidential_strict(store: Store) {
    let h = "oauth2_15.test";
    let k = Kong::start(store, &[h]).await;
    let r = k
        .exchange(
            h,
            json!({"code_challenge": "abc123"}),
            json!({"code_verifier": verifier()}),
        )
        .await;
    r.is(400, err("invalid_grant", "Invalid code"));
}

async fn c094_token_wrong_code_for_public_app(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let v = verifier();
    public_code(&k, O, &challenge(&v)).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange("abc", json!({"code_verifier": v})),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

async fn c095_token_no_code_for_public_app(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"client_id": "clientid11211", "grant_type": "authorization_code",
                   "code_verifier": "verifier"}),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

async fn c096_token_no_secret_for_confidential_app(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k
        .exchange(O, json!({}), json!({"client_secret": null}))
        .await;
    r.is(400, invalid_client());
}

/// Cases 97–99: a confidential client's code issued with a challenge needs the verifier.
async fn confidential_needs_verifier(store: Store, host: &str) {
    let k = Kong::start(store, &[host]).await;
    let r = k
        .exchange(
            host,
            json!({"code_challenge": challenge(&verifier())}),
            json!({}),
        )
        .await;
    r.is(400, verifier_required());
}

async fn c097_token_no_code_verifier_confidential_when_strict(store: Store) {
    confidential_needs_verifier(store, "oauth2_15.test").await;
}

async fn c098_token_no_code_verifier_confidential_with_pkce_when_lax(store: Store) {
    confidential_needs_verifier(store, "oauth2_16.test").await;
}

async fn c099_token_no_code_verifier_confidential_with_pkce_when_none(store: Store) {
    confidential_needs_verifier(store, "oauth2_14.test").await;
}

async fn c100_token_no_code_verifier_confidential_without_pkce_when_none(store: Store) {
    let h = "oauth2_14.test";
    let k = Kong::start(store, &[h]).await;
    k.exchange(h, json!({}), json!({})).await.is_token(5, true);
}

async fn c101_token_no_code_verifier_confidential_without_pkce_when_lax(store: Store) {
    let h = "oauth2_16.test";
    let k = Kong::start(store, &[h]).await;
    k.exchange(h, json!({}), json!({})).await.is_token(5, true);
}

async fn c102_token_code_from_a_different_global_plugin_instance(store: Store) {
    let k = Kong::start(store, &["oauth2_16.test", "oauth2_17.test"]).await;
    let code = k.code("oauth2_16.test", json!({})).await;
    let r = k
        .post(
            "oauth2_17.test",
            "/oauth2/token",
            json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                   "grant_type": "authorization_code"}),
        )
        .await;
    r.is(400, err("invalid_request", "Invalid code"));
}

/// Postgres only (see the top of the file): Kong's test nulls the code row's plugin, as codes
/// issued before Kong 3.3 have none; such a legacy code is still accepted by a global plugin.
#[actix_web::test]
async fn c103_token_code_without_plugin_id_is_accepted_postgres() {
    let h = "oauth2_17.test";
    let k = Kong::start(Store::Postgres, &[h]).await;
    let code = k.code(h, json!({})).await;
    let schema = k.app.pg.as_ref().expect("on Postgres");
    let pool = pg_store::connect(&pg_settings(&schema.settings))
        .await
        .unwrap();
    let db = pool.get().await.unwrap();
    let n = db
        .execute(
            "UPDATE oauth2_authorization_codes SET plugin_id = NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = k
        .post(
            h,
            "/oauth2/token",
            json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                   "grant_type": "authorization_code"}),
        )
        .await;
    r.is_token(5, true);
}

// ------------------------------------------------------------------------------------------------
// 10.1 Making a request (resource access, plain HTTP)
// ------------------------------------------------------------------------------------------------

async fn c104_request_no_access_token_in_json_body(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(
        k.plain(Method::POST, O, "/request")
            .header("content-type", "application/json"),
    )
    .await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer");
}

async fn c105_request_access_token_in_querystring(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = send(k.plain(Method::GET, O, &format!("/request?access_token={t}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

const CUSTOM: &str = "oauth2_11.test";

async fn c106_request_access_token_in_custom_header(store: Store) {
    let k = Kong::start(store, &[CUSTOM]).await;
    let t = k.access(CUSTOM).await;
    let r = send(
        k.plain(Method::GET, CUSTOM, "/request")
            .header("custom_header_name", format!("bearer {t}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn c107_request_access_token_in_duplicate_custom_headers(store: Store) {
    let k = Kong::start(store, &[CUSTOM]).await;
    let t = k.access(CUSTOM).await;
    let r = send(
        k.plain(Method::GET, CUSTOM, "/request")
            .header("custom_header_name", format!("bearer {t}"))
            .header("custom_header_name", format!("bearer {t}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn c108_request_empty_custom_header(store: Store) {
    let k = Kong::start(store, &[CUSTOM]).await;
    let r = send(
        k.plain(Method::GET, CUSTOM, "/request")
            .header("custom_header_name", ""),
    )
    .await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer");
}

/// Cases 109–110: a refresh token of one global plugin used at another.
/// A public client's PKCE code (S256 challenge of [`verifier`]) redeemed with these token-request
/// fields.
async fn redeem_public_code(store: Store, token_extra: Value) -> Resp {
    let k = Kong::start(store, &[O]).await;
    let code = public_code(&k, O, &challenge(&verifier())).await;
    k.post(O, "/oauth2/token", public_exchange(&code, token_extra))
        .await
}

async fn refresh_across(store: Store, from: &str, to: &str, scope: &str) -> Resp {
    let k = Kong::start(store, &[from, to]).await;
    let t = k
        .token(
            from,
            json!({"scope": scope}),
            json!({"redirect_uri": "http://google.test/kong"}),
        )
        .await;
    k.refresh(to, &t["refresh_token"]).await
}

async fn c109_refresh_fails_when_scope_is_mismatching(store: Store) {
    let r = refresh_across(store, "oauth2_18.test", "oauth2_19.test", "scope18").await;
    r.is(400, err("invalid_scope", "Scope mismatch"));
}

async fn c110_refresh_succeeds_when_scope_is_a_subset(store: Store) {
    let r = refresh_across(store, "oauth2_20.test", "oauth2_21.test", "scope20").await;
    r.is_token(5, true);
}

async fn c111_request_token_in_the_wrong_header(store: Store) {
    let k = Kong::start(store, &[CUSTOM]).await;
    let t = k.access(CUSTOM).await;
    let r = k.get_bearer(CUSTOM, &t).await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer");
}

/// Cases 112–113: a token of oauth2.test refused on another service.
async fn other_api(store: Store, other: &str) {
    let k = Kong::start(store, &[O, other]).await;
    let t = k.access(O).await;
    let r = k.get_bearer(other, &t).await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

async fn c112_request_different_api_without_realm(store: Store) {
    other_api(store, "oauth2_3.test").await;
}

async fn c113_request_different_api_with_realm(store: Store) {
    other_api(store, "oauth2_4.test").await;
}

async fn c114_request_access_token_in_a_form_body(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = send(
        k.plain(Method::POST, O, "/request")
            .json(&json!({"access_token": t})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn c115_request_without_body(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let r = k.get_ssl_query(O, &t["access_token"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(logs::errors(), Vec::<String>::new(), "no error in the log");
}

async fn c116_request_authorization_header_bearer(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = k.get_bearer(O, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Kong's `oauth2_grpc.test`: a `grpc` service (the tests' tonic echo server in place of Kong's
/// grpcbin) with the blueprint's `oauth2` plugin, called over `grpcs` on `test.Echo`, and reached
/// by HTTPS with that host for Kong's `provision_token`.
const GRPC: &str = "oauth2_grpc.test";

async fn grpc_fixture(store: Store) -> Kong {
    let k = Kong::start(store, &[]).await;
    let port = crate::echo_servers::spawn_grpc_upstream();
    crate::grpc::expose_echo(&k.app, "grpc", &format!("grpc://127.0.0.1:{port}")).await;
    let (s, r) = k
        .app
        .admin_post(
            "/services/grpc/routes",
            json!({"name": "grpc-provision", "protocols": ["https"], "hosts": [GRPC]}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let (s, plugin) = k
        .app
        .admin_post(
            "/services/grpc/plugins",
            json!({"name": "oauth2", "config": defaults()}),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    k
}

/// A unary call of `test.Echo` over `grpcs`, with `authorization` metadata when given.
async fn grpc_call(k: &Kong, authorization: Option<&str>) -> Result<bytes::Bytes, tonic::Status> {
    let mut client = crate::grpc::client(&k.app.proxy_tls);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(bytes::Bytes::from_static(b"hello noname"));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.Echo/Unary"),
            crate::echo_servers::Raw,
        )
        .await
        .map(tonic::Response::into_inner)
}

async fn c002_grpc_call_without_credentials(store: Store) {
    let k = grpc_fixture(store).await;
    let refused = grpc_call(&k, None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

async fn c118_grpc_call_with_credentials(store: Store) {
    let k = grpc_fixture(store).await;
    let token = k.access(GRPC).await;
    let reply = grpc_call(&k, Some(&format!("bearer {token}")))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"hello noname");
}

async fn c117_request_authorization_header_token(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = k.get_bearer(O, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.upstream();
    assert_eq!(h["x-consumer-id"], k.bob_id().await);
    assert_eq!(h["x-consumer-username"], "bob");
    assert_eq!(h["x-authenticated-userid"], "userid123");
    assert_eq!(h["x-authenticated-scope"], "email");
    assert_eq!(h["x-credential-identifier"], "clientid123");
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
}

/// Deliberate difference from Kong: Kong answers `invalid_scope` "scope must be a string"; a parameter that is not
/// one string is a malformed request (RFC 6749 §5.2 `invalid_request`), named in the answer.
async fn c119_password_scope_not_a_string(store: Store) {
    let k = Kong::start(store, &[PW]).await;
    for scope in [json!(["email"]), json!(123), json!(false)] {
        let r = k
            .post(PW, "/oauth2/token", pw(json!({"scope": scope})))
            .await;
        r.is(400, err("invalid_request", "scope is not a string"));
    }
}

async fn c120_anonymous_with_right_credentials(store: Store) {
    let h = "oauth2_7.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.token(h, json!({}), json!({})).await;
    let r = send(k.tls(Method::POST, h, "/request").header(
        "authorization",
        format!("bearer {}", t["access_token"].as_str().unwrap()),
    ))
    .await;
    k.upstream_saw_bob(&r, "email", "userid123").await;
    assert!(
        r.upstream().get("x-anonymous-consumer").is_none(),
        "{}",
        r.body
    );
}

/// Cases 121–122: no token, anonymous by id or by username.
async fn anonymous_fallback(store: Store, host: &str) {
    let k = Kong::start(store, &[host]).await;
    let r = send(k.plain(Method::GET, host, "/request")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.upstream();
    assert_eq!(h["x-anonymous-consumer"], "true");
    assert_eq!(h["x-consumer-username"], "no-body");
    assert_eq!(h["x-consumer-id"], k.no_body["id"]);
    assert!(h.get("x-credential-identifier").is_none(), "{h}");
}

async fn c121_anonymous_with_wrong_credentials(store: Store) {
    anonymous_fallback(store, "oauth2_7.test").await;
}

async fn c122_anonymous_by_username_with_wrong_credentials(store: Store) {
    anonymous_fallback(store, "oauth2__c.test").await;
}

async fn c123_anonymous_user_does_not_exist(store: Store) {
    let h = "oauth2_10.test";
    let k = Kong::start(store, &[h]).await;
    let r = send(k.plain(Method::GET, h, "/request")).await;
    r.is(
        500,
        json!({"message": format!("anonymous consumer {NO_SUCH_CONSUMER} is configured but doesn't exist")}),
    );
}

async fn c124_implicit_token_expiration_with_custom_header(store: Store) {
    implicit_row(store, CUSTOM, "clientid1011", 7).await;
}

async fn c125_request_correct_service_after_the_wrong_one(store: Store) {
    let k = Kong::start(store, &[O, "oauth2_3.test"]).await;
    let t = k.access(O).await;
    assert_eq!(k.get_bearer("oauth2_3.test", &t).await.status, 401);
    let r = k.get_bearer(O, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// 10.1 Making a request › Global Credentials

async fn c126_global_and_non_global_apis_do_not_share(store: Store) {
    let k = Kong::start(store, &["oauth2_8.test", O]).await;
    let t = k.access("oauth2_8.test").await;
    assert_eq!(k.get_bearer("oauth2_8.test", &t).await.status, 200);
    let r = k.get_bearer(O, &t).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

async fn c127_global_and_non_global_apis_do_not_share_2(store: Store) {
    let k = Kong::start(store, &["oauth2_8.test", O]).await;
    let t = k.access(O).await;
    let r = k.get_bearer("oauth2_8.test", &t).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
    assert_eq!(k.get_bearer(O, &t).await.status, 200);
}

async fn c128_global_apis_share_credentials(store: Store) {
    let k = Kong::start(store, &["oauth2_8.test", "oauth2_9.test"]).await;
    let t = k.access("oauth2_8.test").await;
    assert_eq!(k.get_bearer("oauth2_8.test", &t).await.status, 200);
    assert_eq!(k.get_bearer("oauth2_9.test", &t).await.status, 200);
}

// 10.1 Authentication challenge

async fn c129_challenge_without_authentication(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(k.plain(Method::GET, O, "/request")).await;
    r.is(401, missing_token());
    assert_eq!(r.header("www-authenticate"), "Bearer");
}

async fn c130_challenge_invalid_token_in_url(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = send(k.plain(Method::GET, O, "/request?access_token=invalid")).await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

async fn c131_challenge_invalid_token_in_header(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.get_bearer(O, "invalid").await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

/// token_expiration 2 instead of Kong's 5, to keep the suite short; polled, not slept.
async fn c132_challenge_expired_token(store: Store) {
    let k = Kong::start_with(store, &[O], json!({"token_expiration": 2})).await;
    let t = k.access(O).await;
    assert_eq!(k.get_bearer(O, &t).await.status, 200);
    eventually(Duration::from_secs(8), "the token expires", || async {
        k.get_bearer(O, &t).await.status == 401
    })
    .await;
    let r = k.get_bearer(O, &t).await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

// ------------------------------------------------------------------------------------------------
// 10.1 Refresh Token (Host oauth2.test)
// ------------------------------------------------------------------------------------------------

async fn c133_refresh_invalid_refresh_token(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let r = k.refresh(O, &json!("hello")).await;
    r.is(400, err("invalid_request", "Invalid refresh_token"));
}

async fn c134_refresh_a_valid_token(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    k.refresh(O, &t["refresh_token"]).await.is_token(5, true);
}

/// A token of the public client (via PKCE), for 135–136.
async fn public_token(k: &Kong) -> Value {
    let v = verifier();
    let code = public_code(k, O, &challenge(&v)).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            public_exchange(&code, json!({"code_verifier": v})),
        )
        .await;
    r.is_token(5, true);
    r.body
}

async fn c135_refresh_public_app_without_a_secret(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = public_token(&k).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"refresh_token": t["refresh_token"], "client_id": "clientid11211",
                   "grant_type": "refresh_token"}),
        )
        .await;
    r.is_token(5, true);
}

async fn c136_refresh_public_app_with_a_secret(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = public_token(&k).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"refresh_token": t["refresh_token"], "client_id": "clientid11211",
                   "client_secret": "secret11211", "grant_type": "refresh_token"}),
        )
        .await;
    r.is(
        400,
        err(
            "invalid_request",
            "client_secret is disallowed for public clients",
        ),
    );
}

async fn c137_refresh_confidential_app_without_a_secret(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let r = k
        .post(
            O,
            "/oauth2/token",
            json!({"refresh_token": t["refresh_token"], "client_id": "clientid123",
                   "grant_type": "refresh_token"}),
        )
        .await;
    r.is(400, invalid_client());
}

async fn c138_refresh_token_of_another_application(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k
        .token(
            O,
            json!({"client_id": "clientid333"}),
            json!({"client_secret": "secret333"}),
        )
        .await;
    let r = k.refresh(O, &t["refresh_token"]).await;
    r.is(400, invalid_client());
    r.no_cache();
}

/// `POST /request` over plain HTTP with `authorization: bearer <token>` (cases 139, 141).
async fn post_bearer(k: &Kong, host: &str, token: &str) -> Resp {
    send(
        k.plain(Method::POST, host, "/request")
            .header("authorization", format!("bearer {token}")),
    )
    .await
}

async fn c139_refresh_after_expiry(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let old = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(post_bearer(&k, O, &old).await.status, 200);
    let id = k.token_row(&old, 0).await.expect("stored").id;
    assert!(k
        .tokens
        .token_by_id(id, unix_now())
        .await
        .unwrap()
        .is_some());
    eventually(Duration::from_secs(7), "the token expires", || async {
        post_bearer(&k, O, &old).await.status == 401
    })
    .await;
    let r = post_bearer(&k, O, &old).await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
    let r = send(
        k.tls(Method::POST, O, "/oauth2/token")
            .header("authorization", format!("bearer {old}"))
            .json(
                &json!({"refresh_token": t["refresh_token"], "client_id": "clientid123",
                          "client_secret": "secret123", "grant_type": "refresh_token"}),
            ),
    )
    .await;
    r.is_token(5, true);
    assert_ne!(r.body["access_token"], t["access_token"]);
    assert_ne!(r.body["refresh_token"], t["refresh_token"]);
    let gone = k.tokens.token_by_id(id, unix_now()).await.unwrap();
    assert!(gone.is_none(), "old row gone");
}

async fn c140_refresh_rewrites_non_persistent_refresh_tokens(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let r = k.refresh(O, &t["refresh_token"]).await;
    r.is_token(5, true);
    assert_ne!(r.body["refresh_token"], t["refresh_token"]);
}

async fn c141_refresh_does_not_rewrite_persistent_refresh_tokens(store: Store) {
    let h = "oauth2_13.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.token(h, json!({}), json!({})).await;
    let r = k.refresh(h, &t["refresh_token"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refreshed = r.body;
    let new_access = k
        .token_row(refreshed["access_token"].as_str().unwrap(), 0)
        .await
        .expect("new access token stored");
    let refresh_hash = portcullis::crypto::token_hash(t["refresh_token"].as_str().unwrap());
    let new_refresh = k
        .tokens
        .token_by_refresh(&refresh_hash, unix_now())
        .await
        .unwrap()
        .expect("the refresh token is kept");
    assert_eq!(new_access.id, new_refresh.id);

    // Kong sets the row's created_at to 123: the refreshed access token has expired.
    k.tokens
        .update_token(TokenRecord {
            created_at: 123,
            ..new_refresh
        })
        .await
        .expect("row updated");
    let access = refreshed["access_token"].as_str().unwrap().to_string();
    let expired = || async {
        send(
            k.tls(Method::POST, h, "/request")
                .header("authorization", format!("bearer {access}")),
        )
        .await
    };
    eventually(Duration::from_secs(7), "the token expires", || async {
        expired().await.status == 401
    })
    .await;
    let r = expired().await;
    r.is(401, invalid_token());
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);

    let last = k.refresh(h, &refreshed["refresh_token"]).await;
    assert_eq!(last.status, 200, "{}", last.body);
    let newest = last.body["access_token"].as_str().unwrap().to_string();
    let r = send(
        k.plain(Method::GET, h, "/request")
            .header("authorization", format!("bearer {newest}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream()["authorization"], format!("bearer {newest}"));
}

// ------------------------------------------------------------------------------------------------
// 10.1 Hide Credentials
// ------------------------------------------------------------------------------------------------

async fn form_request(k: &Kong, host: &str, token: &str) -> Resp {
    send(
        k.plain(Method::POST, host, "/request")
            .form(&[("access_token", token)]),
    )
    .await
}

async fn c142_does_not_hide_credentials_in_the_body(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = form_request(&k, O, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["body"], format!("access_token={t}"));
}

async fn c143_hides_credentials_in_the_body(store: Store) {
    let h = "oauth2_3.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.access(h).await;
    let r = form_request(&k, h, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body["body"].as_str().unwrap().contains("access_token"),
        "{}",
        r.body
    );
}

async fn c144_does_not_hide_credentials_in_the_querystring(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = send(k.plain(Method::GET, O, &format!("/request?access_token={t}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["query"], format!("access_token={t}"));
}

async fn hidden_in_query(store: Store, host: &str) {
    let k = Kong::start(store, &[host]).await;
    let t = k.access(host).await;
    let r = send(k.plain(Method::GET, host, &format!("/request?access_token={t}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["query"], "");
}

async fn c145_hides_credentials_in_the_querystring(store: Store) {
    hidden_in_query(store, "oauth2_3.test").await;
}

async fn c146_hides_credentials_in_the_querystring_with_custom_header(store: Store) {
    hidden_in_query(store, "oauth2_12.test").await;
}

async fn c147_does_not_hide_credentials_in_the_header(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.access(O).await;
    let r = k.get_bearer(O, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream()["authorization"], format!("bearer {t}"));
}

async fn c148_hides_credentials_in_the_header(store: Store) {
    let h = "oauth2_3.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.access(h).await;
    let r = k.get_bearer(h, &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.upstream().get("authorization").is_none(), "{}", r.body);
}

async fn c149_hides_credentials_in_the_custom_header(store: Store) {
    let h = "oauth2_12.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.access(h).await;
    let r = send(
        k.plain(Method::GET, h, "/request")
            .header("custom_header_name", format!("bearer {t}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.upstream().get("authorization").is_none(), "{}", r.body);
    assert!(
        r.upstream().get("custom_header_name").is_none(),
        "{}",
        r.body
    );
    assert!(
        r.upstream().get("custom-header-name").is_none(),
        "{}",
        r.body
    );
}

async fn c150_does_not_abort_on_multipart_upload(store: Store) {
    let h = "oauth2_3.test";
    let k = Kong::start(store, &[h]).await;
    let t = k.access(h).await;
    let (ct, body) = multipart(&[("foo", "bar")]);
    let r = send(
        k.plain(Method::POST, h, &format!("/request?access_token={t}"))
            .header("content-type", ct)
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// ------------------------------------------------------------------------------------------------
// 10.3 TTL and regressions
// ------------------------------------------------------------------------------------------------

/// Kong's "ttl" fixture on `host`: consumer `bobo` with `clientid7890`; a token provisioned for
/// it, and its row read at once (it exists).
async fn ttl_token(store: Store, host: &str) -> (Kong, String) {
    let k = Kong::start(store, &[host]).await;
    let (s, c) = k
        .app
        .admin_post("/consumers", json!({"username": "bobo"}))
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = k
        .app
        .admin_post(
            "/consumers/bobo/oauth2",
            json!({"client_id": "clientid7890", "client_secret": "secret7890",
                   "redirect_uris": ["http://google.test/kong"], "name": "testapp"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let t = k
        .token(
            host,
            json!({"client_id": "clientid7890"}),
            json!({"client_secret": "secret7890"}),
        )
        .await;
    let access = t["access_token"].as_str().unwrap().to_string();
    assert!(k.token_row(&access, 0).await.is_some(), "stored");
    (k, access)
}

async fn c160_refresh_token_deleted_after_ttl(store: Store) {
    let (k, access) = ttl_token(store, "oauth2_21.refresh.test").await;
    eventually(Duration::from_secs(3), "the row expires", || async {
        k.token_row(&access, 0).await.is_none()
    })
    .await;
}

/// Kong waits 2.2 s and reads the row again; these tests do not sleep, so the row is read as the
/// store will show it 2.2 s later (rounded up: 3 s) and a year later: it is there.
async fn c161_refresh_token_not_deleted_when_ttl_is_0(store: Store) {
    let (k, access) = ttl_token(store, "oauth2_22.refresh.test").await;
    assert!(k.token_row(&access, 3).await.is_some(), "kept after 3 s");
    k.tokens
        .purge_expired(unix_now() + 3, 1000)
        .await
        .expect("the sweeper runs");
    assert!(k.token_row(&access, 3).await.is_some(), "not swept");
    assert!(k.token_row(&access, 365 * 86_400).await.is_some(), "kept");
}

async fn c162_global_token_on_non_global_plugin(store: Store) {
    let k = Kong::start(store, &["oauth2_8.test", O]).await;
    let t = k.access("oauth2_8.test").await;
    let r = send(
        k.plain(Method::POST, O, "/request")
            .json(&json!({"access_token": t})),
    )
    .await;
    r.is(
        401,
        err(
            "invalid_token",
            "The access token is global, but the current plugin is configured without 'global_credentials'",
        ),
    );
    assert_eq!(r.header("www-authenticate"), INVALID_TOKEN_CHALLENGE);
}

// ------------------------------------------------------------------------------------------------
// 10.4 02-api_spec.lua — the credentials and tokens admin API
// ------------------------------------------------------------------------------------------------

/// A gateway with consumers `bob` and `alice` (no plugin needed).
async fn api(store: Store) -> (TestApp, Value) {
    let app = start_app(store, test_settings()).await;
    let (s, bob) = app
        .admin_post("/consumers", json!({"username": "bob"}))
        .await;
    assert_eq!(s, 201, "{bob}");
    let (s, alice) = app
        .admin_post("/consumers", json!({"username": "alice"}))
        .await;
    assert_eq!(s, 201, "{alice}");
    (app, bob)
}

/// Creates a credential of bob; returns it.
async fn bob_credential(app: &TestApp, body: Value) -> Value {
    let (s, c) = app.admin_post("/consumers/bob/oauth2", body).await;
    assert_eq!(s, 201, "{c}");
    c
}

async fn api01_creates_a_credential(store: Store) {
    let (app, bob) = api(store).await;
    let c = bob_credential(
        &app,
        json!({"name": "Test APP", "redirect_uris": ["http://google.test/"]}),
    )
    .await;
    assert_eq!(c["consumer"]["id"], bob["id"]);
    assert_eq!(c["name"], "Test APP");
    assert_eq!(c["redirect_uris"], json!(["http://google.test/"]));
    let c = bob_credential(&app, json!({"name": "Test APP"})).await;
    assert_eq!(c["redirect_uris"], Value::Null);
}

async fn api02_creates_a_credential_with_tags(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "Test APP", "tags": ["tag1", "tag2"]})).await;
    assert_eq!(c["tags"], json!(["tag1", "tag2"]));
}

async fn api03_creates_a_credential_with_multiple_redirect_uris(store: Store) {
    let (app, _) = api(store).await;
    let uris = json!(["http://google.test/", "http://google.example/"]);
    let c = bob_credential(&app, json!({"name": "Test APP", "redirect_uris": uris})).await;
    assert_eq!(c["redirect_uris"], uris);
}

async fn api04_creates_credentials_with_the_same_client_secret(store: Store) {
    let (app, _) = api(store).await;
    let (s, _) = app
        .admin_post("/consumers", json!({"username": "sally"}))
        .await;
    assert_eq!(s, 201);
    bob_credential(&app, json!({"name": "a", "client_secret": "secret123"})).await;
    let (s, c) = app
        .admin_post(
            "/consumers/sally/oauth2",
            json!({"name": "b", "client_secret": "secret123"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
}

/// Kong's body of cases 5–8, with `extra`.
fn test_app(extra: Value) -> Value {
    with(
        json!({"name": "Test APP", "redirect_uris": ["http://google.test/"]}),
        extra,
    )
}

/// Deliberate difference from Kong: new secrets are hashed with argon2id, not Kong's PBKDF2
/// (Kong's "does not need rehash" = the current format; Kong's PBKDF2 hashes still verify).
async fn api05_creates_a_credential_with_a_hashed_auto_generated_secret(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, test_app(json!({"hash_secret": true}))).await;
    assert_eq!(c["hash_secret"], true);
    let secret = c["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("$argon2id$"), "{secret}");
}

/// As 5 for the format; the hashed secret "test" verifies and "invalid" does not, checked where
/// it matters, at the token endpoint.
async fn api06_creates_a_credential_with_a_hashed_client_secret(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let c = bob_credential(
        &k.app,
        test_app(json!({"client_secret": "test", "hash_secret": true})),
    )
    .await;
    assert_eq!(c["hash_secret"], true);
    let secret = c["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("$argon2id$"), "{secret}");
    let client = c["client_id"].as_str().unwrap().to_string();
    let ask = |secret: &'static str| {
        k.post(
            CC,
            "/oauth2/token",
            cc(json!({"client_id": client, "client_secret": secret})),
        )
    };
    ask("test").await.is_token(5, false);
    ask("invalid").await.is(400, invalid_client());
}

/// `hash_secret` left out: it defaults to false and the generated secret is kept as is (Kong:
/// "needs rehash", i.e. not a hash).
async fn api07_creates_a_credential_without_hashing_the_auto_generated_secret(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, test_app(json!({}))).await;
    assert_eq!(c["hash_secret"], false);
    assert!(is_token32(&c["client_secret"]), "{c}");
}

/// `hash_secret` left out: the given secret is stored as is, not as a hash of it.
async fn api08_creates_a_credential_without_hashing_the_client_secret(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, test_app(json!({"client_secret": "test"}))).await;
    assert_eq!(c["hash_secret"], false);
    assert_eq!(c["client_secret"], "test");
}

async fn api09_post_returns_bad_request(store: Store) {
    let (app, _) = api(store).await;
    let (s, b) = app.admin_post("/consumers/bob/oauth2", json!({})).await;
    assert_eq!(
        (s, &b["fields"]),
        (400, &json!({"name": "required field missing"}))
    );
}

async fn api10_post_returns_bad_request_with_invalid_redirect_uris(store: Store) {
    let (app, _) = api(store).await;
    let cases = [
        (json!(["not-valid"]), json!(["cannot parse 'not-valid'"])),
        (
            json!(["http://test.test/#with-fragment"]),
            json!(["fragment not allowed in 'http://test.test/#with-fragment'"]),
        ),
        (
            json!(["http://valid.test", "not-valid"]),
            json!([null, "cannot parse 'not-valid'"]),
        ),
        (
            json!(["http://valid.test", "http://test.test/#with-fragment"]),
            json!([
                null,
                "fragment not allowed in 'http://test.test/#with-fragment'"
            ]),
        ),
    ];
    for (uris, errors) in cases {
        let (s, b) = app
            .admin_post(
                "/consumers/bob/oauth2",
                json!({"name": "Test APP", "redirect_uris": uris}),
            )
            .await;
        assert_eq!(
            (s, &b["fields"]),
            (400, &json!({ "redirect_uris": errors }))
        );
    }
}

async fn api11_put_creates_a_credential(store: Store) {
    let (app, _) = api(store).await;
    let (s, c) = app
        .admin_put(
            "/consumers/bob/oauth2/client_one",
            json!({"name": "Test APP", "redirect_uris": ["http://google.test/"]}),
        )
        .await;
    assert_eq!(
        (s, c["client_id"].as_str()),
        (200, Some("client_one")),
        "{c}"
    );
    let (s, c) = app
        .admin_put(
            "/consumers/bob/oauth2/client_one",
            json!({"name": "Test APP"}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["redirect_uris"], Value::Null);
}

async fn api12_put_returns_bad_request(store: Store) {
    let (app, _) = api(store).await;
    let (s, b) = app
        .admin_put("/consumers/bob/oauth2/client_two", json!({}))
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (400, &json!({"name": "required field missing"}))
    );
}

async fn api13_get_retrieves_the_first_page(store: Store) {
    let (app, _) = api(store).await;
    let (s, _) = app
        .admin_post("/consumers", json!({"username": "get_test"}))
        .await;
    assert_eq!(s, 201);
    for i in 0..3 {
        let (s, _) = app
            .admin_post(
                "/consumers/get_test/oauth2",
                json!({"name": format!("app{i}"), "redirect_uris": ["http://google.test/"]}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (s, page) = app.admin_get("/consumers/get_test/oauth2").await;
    assert_eq!((s, page["data"].as_array().unwrap().len()), (200, 3));
}

async fn api14_get_credential_by_id(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let (s, b) = app
        .admin_get(&format!(
            "/consumers/bob/oauth2/{}",
            c["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((s, &b["id"]), (200, &c["id"]));
}

async fn api15_get_credential_by_client_id(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let (s, b) = app
        .admin_get(&format!(
            "/consumers/bob/oauth2/{}",
            c["client_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((s, &b["id"]), (200, &c["id"]));
}

async fn owner_only(store: Store, key: &str) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let k = c[key].as_str().unwrap();
    assert_eq!(
        app.admin_get(&format!("/consumers/bob/oauth2/{k}")).await.0,
        200
    );
    assert_eq!(
        app.admin_get(&format!("/consumers/alice/oauth2/{k}"))
            .await
            .0,
        404
    );
}

async fn api16_get_credential_by_id_only_for_its_consumer(store: Store) {
    owner_only(store, "id").await;
}

async fn api17_get_credential_by_client_id_only_for_its_consumer(store: Store) {
    owner_only(store, "client_id").await;
}

async fn patch_name(store: Store, key: &str) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let (s, b) = app
        .admin_patch(
            &format!("/consumers/bob/oauth2/{}", c[key].as_str().unwrap()),
            json!({"name": "4321"}),
        )
        .await;
    assert_eq!((s, b["name"].as_str()), (200, Some("4321")), "{b}");
}

async fn api18_patch_updates_a_credential_by_id(store: Store) {
    patch_name(store, "id").await;
}

async fn api19_patch_updates_a_credential_by_client_id(store: Store) {
    patch_name(store, "client_id").await;
}

async fn patch_error(store: Store, patch: Value, fields: Value) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let (s, b) = app
        .admin_patch(
            &format!("/consumers/bob/oauth2/{}", c["id"].as_str().unwrap()),
            patch,
        )
        .await;
    assert_eq!((s, &b["fields"]), (400, &fields), "{b}");
}

async fn api20_patch_handles_invalid_input(store: Store) {
    patch_error(
        store,
        json!({"redirect_uris": ["not-valid"]}),
        json!({"redirect_uris": ["cannot parse 'not-valid'"]}),
    )
    .await;
}

fn all_or_none() -> Value {
    json!({"@entity": ["all or none of these fields must be set: 'hash_secret', 'client_secret'"]})
}

async fn api21_patch_client_secret_requires_hash_secret(store: Store) {
    patch_error(store, json!({"client_secret": "test"}), all_or_none()).await;
}

async fn api22_patch_hash_secret_requires_client_secret(store: Store) {
    patch_error(store, json!({"hash_secret": true}), all_or_none()).await;
}

async fn api23_delete_deletes_a_credential(store: Store) {
    let (app, _) = api(store).await;
    let c = bob_credential(&app, json!({"name": "a"})).await;
    let path = format!("/consumers/bob/oauth2/{}", c["id"].as_str().unwrap());
    assert_eq!(app.admin_delete(&path).await.0, 204);
    assert_eq!(app.admin_get(&path).await.0, 404);
}

async fn api24_delete_returns_404_on_invalid_input(store: Store) {
    let (app, _) = api(store).await;
    assert_eq!(app.admin_delete("/consumers/bob/oauth2/blah").await.0, 404);
}

async fn api25_delete_returns_404_if_not_found(store: Store) {
    let (app, _) = api(store).await;
    let path = "/consumers/bob/oauth2/00000000-0000-0000-0000-000000000000";
    assert_eq!(app.admin_delete(path).await.0, 404);
}

const CONSUMER_MISSING: &str = "schema violation (consumer: required field missing)";

async fn api26_post_oauth2_without_consumer(store: Store) {
    let (app, _) = api(store).await;
    let (s, b) = app
        .admin_post(
            "/oauth2",
            json!({"name": "Test APP", "redirect_uris": ["http://google.test/"]}),
        )
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some(CONSUMER_MISSING)),
        "{b}"
    );
}

async fn api27_post_oauth2_creates_a_credential(store: Store) {
    let (app, bob) = api(store).await;
    let (s, b) = app
        .admin_post(
            "/oauth2",
            json!({"name": "Test APP", "redirect_uris": ["http://google.test/"], "consumer": {"id": bob["id"]}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["consumer"]["id"], bob["id"]);
}

async fn api28_put_oauth2_without_consumer(store: Store) {
    let (app, _) = api(store).await;
    let (s, b) = app
        .admin_put(
            "/oauth2/client-1",
            json!({"name": "Test APP", "redirect_uris": ["http://google.test/"]}),
        )
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some(CONSUMER_MISSING)),
        "{b}"
    );
}

async fn api29_put_oauth2_creates_a_credential(store: Store) {
    let (app, bob) = api(store).await;
    let (s, b) = app
        .admin_put(
            "/oauth2/client-1",
            json!({"name": "Test APP", "redirect_uris": ["http://google.test/"], "consumer": {"id": bob["id"]}}),
        )
        .await;
    assert_eq!((s, b["client_id"].as_str()), (200, Some("client-1")), "{b}");
}

/// A gateway with a service and bob's credential, for the tokens API; returns their ids.
async fn tokens_api(store: Store) -> (TestApp, String, String) {
    let (app, _) = api(store).await;
    let (s, svc) = app
        .admin_post(
            "/services",
            json!({"name": "svc", "url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(s, 201, "{svc}");
    let c = bob_credential(&app, json!({"name": "a"})).await;
    (
        app,
        c["id"].as_str().unwrap().to_string(),
        svc["id"].as_str().unwrap().to_string(),
    )
}

async fn new_token(app: &TestApp, cred: &str, svc: &str) -> Value {
    let (s, t) = app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": cred}, "service": {"id": svc}, "expires_in": 10}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    t
}

async fn api30_post_creates_a_token(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    assert_eq!(t["expires_in"], 10);
    assert!(t["access_token"].is_string(), "{t}");
    assert_eq!(t["service"]["id"], svc);
    assert_eq!(t["refresh_token"], Value::Null);
    assert_eq!(t["token_type"], "bearer");
}

fn token_fields_missing() -> Value {
    json!({"expires_in": "required field missing", "credential": "required field missing"})
}

async fn api31_post_token_returns_bad_request(store: Store) {
    let (app, _, _) = tokens_api(store).await;
    let (s, b) = app.admin_post("/oauth2_tokens", json!({})).await;
    assert_eq!((s, &b["fields"]), (400, &token_fields_missing()));
}

async fn api32_get_tokens_first_page(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    for _ in 0..3 {
        new_token(&app, &cred, &svc).await;
    }
    let (s, page) = app.admin_get("/oauth2_tokens").await;
    assert_eq!((s, page["data"].as_array().unwrap().len()), (200, 3));
}

async fn api33_get_token_by_id(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    let (s, b) = app
        .admin_get(&format!("/oauth2_tokens/{}", t["id"].as_str().unwrap()))
        .await;
    assert_eq!((s, &b["id"]), (200, &t["id"]));
}

/// Deliberate difference from Kong: the answer shows `access_token_digest`, not the plain token.
async fn api34_get_token_by_access_token(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    let (s, b) = app
        .admin_get(&format!(
            "/oauth2_tokens/{}",
            t["access_token"].as_str().unwrap()
        ))
        .await;
    assert_eq!((s, &b["id"]), (200, &t["id"]));
    assert_eq!(b["access_token"], Value::Null);
    assert!(b["access_token_digest"].is_string(), "{b}");
}

async fn api35_put_creates_a_token(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let (s, t) = app
        .admin_put(
            "/oauth2_tokens/foobar",
            json!({"credential": {"id": cred}, "service": {"id": svc}, "expires_in": 10}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["access_token"], "foobar");
    assert_eq!(t["refresh_token"], Value::Null);
    assert_eq!(t["token_type"], "bearer");
}

async fn api36_put_token_returns_bad_request(store: Store) {
    let (app, _, _) = tokens_api(store).await;
    let (s, b) = app.admin_put("/oauth2_tokens/foobar", json!({})).await;
    assert_eq!((s, &b["fields"]), (400, &token_fields_missing()));
}

async fn patch_expires_in(store: Store, key: &str, value: i64) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    let (s, b) = app
        .admin_patch(
            &format!("/oauth2_tokens/{}", t[key].as_str().unwrap()),
            json!({"expires_in": value}),
        )
        .await;
    assert_eq!((s, b["expires_in"].as_i64()), (200, Some(value)), "{b}");
}

async fn api37_patch_updates_a_token_by_id(store: Store) {
    patch_expires_in(store, "id", 20).await;
}

async fn api38_patch_updates_a_token_by_access_token(store: Store) {
    patch_expires_in(store, "access_token", 400).await;
}

async fn api39_patch_token_handles_invalid_input(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    let (s, b) = app
        .admin_patch(
            &format!("/oauth2_tokens/{}", t["id"].as_str().unwrap()),
            json!({"expires_in": "hello"}),
        )
        .await;
    assert_eq!(
        (s, &b["fields"]),
        (400, &json!({"expires_in": "expected an integer"}))
    );
}

async fn api40_delete_deletes_a_token(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let t = new_token(&app, &cred, &svc).await;
    let path = format!("/oauth2_tokens/{}", t["id"].as_str().unwrap());
    assert_eq!(app.admin_delete(&path).await.0, 204);
    assert_eq!(app.admin_get(&path).await.0, 404);
}

async fn api41_delete_returns_204_on_inexisting_tokens(store: Store) {
    let (app, _, _) = tokens_api(store).await;
    assert_eq!(app.admin_delete("/oauth2_tokens/blah").await.0, 204);
    let zero = "/oauth2_tokens/00000000-0000-0000-0000-000000000000";
    assert_eq!(app.admin_delete(zero).await.0, 204);
}

// ------------------------------------------------------------------------------------------------
// 10.5 01-schema_spec.lua — through the admin API
// ------------------------------------------------------------------------------------------------

/// Creates a global oauth2 plugin with `config`; returns status and body.
async fn plugin_with(store: Store, config: Value) -> (u16, Value) {
    let app = start_app(store, test_settings()).await;
    app.admin_post("/plugins", json!({"name": "oauth2", "config": config}))
        .await
}

async fn schema01_scopes_not_required_without_mandatory_scope(store: Store) {
    let (s, b) = plugin_with(store, json!({"enable_authorization_code": true})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["config"]["mandatory_scope"], false);
}

async fn schema02_valid_with_scopes_and_mandatory_scope(store: Store) {
    let (s, b) = plugin_with(
        store,
        json!({"scopes": ["email", "info"], "mandatory_scope": true, "enable_authorization_code": true}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

async fn schema03_provision_key_auto_generated(store: Store) {
    let (s, b) = plugin_with(store, json!({"enable_authorization_code": true})).await;
    assert_eq!(s, 201, "{b}");
    assert!(is_token32(&b["config"]["provision_key"]), "{b}");
}

async fn schema04_given_provision_key_kept(store: Store) {
    let (s, b) = plugin_with(
        store,
        json!({"enable_authorization_code": true, "provision_key": "hello"}),
    )
    .await;
    assert_eq!((s, &b["config"]["provision_key"]), (201, &json!("hello")));
}

async fn schema05_auth_header_name_defaults(store: Store) {
    let (s, b) = plugin_with(store, json!({"enable_authorization_code": true})).await;
    assert_eq!(
        (s, &b["config"]["auth_header_name"]),
        (201, &json!("authorization"))
    );
}

async fn schema06_custom_auth_header_name_kept(store: Store) {
    let (s, b) = plugin_with(
        store,
        json!({"enable_authorization_code": true, "auth_header_name": "custom_header_name"}),
    )
    .await;
    assert_eq!(
        (s, &b["config"]["auth_header_name"]),
        (201, &json!("custom_header_name"))
    );
}

async fn schema07_refresh_token_ttl_default(store: Store) {
    let (s, b) = plugin_with(store, json!({"enable_authorization_code": true})).await;
    assert_eq!(
        (s, &b["config"]["refresh_token_ttl"]),
        (201, &json!(1_209_600))
    );
}

async fn schema08_refresh_token_ttl_too_large(store: Store) {
    let (s, b) = plugin_with(
        store,
        json!({"enable_authorization_code": true, "refresh_token_ttl": 252_979_200}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"]["refresh_token_ttl"],
        "value should be between 0 and 100000000"
    );
}

async fn schema09_reuse_refresh_token_defaults_false(store: Store) {
    let (s, b) = plugin_with(store, json!({"enable_authorization_code": true})).await;
    assert_eq!(
        (s, &b["config"]["reuse_refresh_token"]),
        (201, &json!(false))
    );
}

async fn schema10_error_when_no_flow_is_enabled(store: Store) {
    let (s, b) = plugin_with(store, json!({})).await;
    assert_eq!(s, 400, "{b}");
    let message = "at least one of these fields must be true: enable_authorization_code, enable_implicit_grant, enable_client_credentials, enable_password_grant";
    assert_eq!(b["fields"], json!({ "config": message }));
    assert_eq!(
        b["message"],
        format!("schema violation (config: {message})")
    );
}

async fn schema11_error_when_mandatory_scope_without_scopes(store: Store) {
    let (s, b) = plugin_with(
        store,
        json!({"enable_authorization_code": true, "mandatory_scope": true}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["fields"]["config"]["scopes"], "required field missing");
}

/// Kong validates raw DAO inserts of tokens; here the same validation answers on the admin API.
///
/// Deliberate difference from Kong: the admin API fills `token_type`'s default (`bearer`), as
/// Kong's own admin API does, so Kong's `token_type: "required field missing"` (a raw insert
/// without defaults) cannot appear; and it refuses references to rows that do not exist, so the
/// valid insert names an existing credential and service where Kong's uses random UUIDs.
async fn schema12_token_with_invalid_uuids(store: Store) {
    let (app, cred, svc) = tokens_api(store).await;
    let (s, b) = app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": "foo"}, "service": {"id": "bar"}, "expires_in": 1}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"],
        json!({"credential": {"id": "expected a valid UUID"},
               "service": {"id": "expected a valid UUID"}})
    );
    let (s, b) = app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": "foo"}, "service": {"id": uuid::Uuid::new_v4()},
                   "expires_in": 1}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"],
        json!({"credential": {"id": "expected a valid UUID"}})
    );
    let (s, b) = app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": cred}, "service": {"id": svc}, "expires_in": 1,
                   "token_type": "bearer"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

/// Kong inserts a token and a code for a service straight into the database, deletes the service
/// and reads both again. Here the token is made through the admin API and the code through the
/// token store (codes have no admin API), the service is deleted through the admin API, and both
/// are read through the token store.
async fn schema14_deleting_a_service_deletes_its_tokens_and_codes(store: Store) {
    let (app, tokens) = start_app_on_stores(store, test_settings()).await;
    let (s, service) = app
        .admin_post("/services", json!({"url": "http://127.0.0.1:9"}))
        .await;
    assert_eq!(s, 201, "{service}");
    let (s, consumer) = app.admin_post("/consumers", json!({"username": "c"})).await;
    assert_eq!(s, 201, "{consumer}");
    let (s, credential) = app
        .admin_post(
            "/consumers/c/oauth2",
            json!({"name": "app", "redirect_uris": ["http://example.com"]}),
        )
        .await;
    assert_eq!(s, 201, "{credential}");
    let (service_id, credential_id) = (service["id"].clone(), credential["id"].clone());
    let (s, token) = app
        .admin_post(
            "/oauth2_tokens",
            json!({"credential": {"id": credential_id}, "service": {"id": service_id},
                   "expires_in": 10}),
        )
        .await;
    assert_eq!(s, 201, "{token}");
    let token_id: uuid::Uuid = serde_json::from_value(token["id"].clone()).unwrap();
    // Two codes: the store shows a code only by taking it, so one is read before, one after.
    let [before, code] =
        ["code-read-before", "code-read-after"].map(portcullis::crypto::token_hash);
    let now = unix_now();
    for hash in [before, code] {
        tokens
            .insert_code(CodeRecord {
                id: uuid::Uuid::new_v4(),
                code_hash: hash,
                credential_id: serde_json::from_value(credential_id.clone()).unwrap(),
                service_id: Some(serde_json::from_value(service_id.clone()).unwrap()),
                plugin_id: None,
                authenticated_userid: None,
                scope: None,
                challenge: None,
                challenge_method: None,
                redirect_uri: None,
                created_at: now,
                expires_at: now + 300,
            })
            .await
            .expect("code stored");
    }
    assert!(tokens.token_by_id(token_id, now).await.unwrap().is_some());
    assert!(tokens.take_code(&before, now).await.unwrap().is_some());

    let path = format!("/services/{}", service_id.as_str().unwrap());
    assert_eq!(app.admin_delete(&path).await.0, 204);
    assert_eq!(app.admin_get(&path).await.0, 404, "no more service");
    let now = unix_now();
    assert!(
        tokens.token_by_id(token_id, now).await.unwrap().is_none(),
        "no more token"
    );
    assert!(
        tokens.take_code(&code, now).await.unwrap().is_none(),
        "no more code"
    );
}

// ------------------------------------------------------------------------------------------------
// 10.6 04-invalidations_spec.lua — a credential, consumer or token first used (so the gateway
// holds it in its snapshot or near cache), then changed through the admin API
// ------------------------------------------------------------------------------------------------

/// Kong's invalidations fixture: one route by host `oauth2.com` with its oauth2 plugin, consumer
/// `bob` with a plain-secret credential `clientid123` redirecting to `http://google.com/kong`.
///
/// Deliberate difference from Kong: Kong checks that its cache holds the credential or token
/// (`GET /cache/<key>`) before changing it, and waits for the invalidation event; Portcullis has no
/// `/cache` endpoint (credentials live in the router snapshot, tokens in the near cache in front of
/// Postgres), and an admin change has taken effect on this node when the admin API answers, so the
/// cases use the credential or token first and check the change at once.
struct Invalidations {
    app: TestApp,
    _upstream: Upstream,
}

const INV: &str = "oauth2.com";

impl Invalidations {
    async fn start(store: Store) -> Self {
        let app = start_app(store, test_settings()).await;
        let upstream = spawn_upstream();
        let (s, b) = app
            .admin_post("/services", json!({"name": "s", "url": upstream.url}))
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = app
            .admin_post(
                "/services/s/routes",
                json!({"name": "r", "hosts": [INV], "protocols": ["http", "https"]}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let config = json!({"scopes": ["email", "profile"], "enable_authorization_code": true,
                            "mandatory_scope": true, "provision_key": "provision123",
                            "token_expiration": 5, "enable_implicit_grant": true});
        let (s, b) = app
            .admin_post(
                "/routes/r/plugins",
                json!({"name": "oauth2", "config": config}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = app
            .admin_post("/consumers", json!({"username": "bob"}))
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = app
            .admin_post(
                "/consumers/bob/oauth2",
                json!({"client_id": "clientid123", "client_secret": "secret123",
                       "redirect_uris": ["http://google.com/kong"], "name": "testapp"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        Self {
            app,
            _upstream: upstream,
        }
    }

    fn ssl(&self, method: Method, path: &str) -> RequestBuilder {
        self.app
            .http
            .request(method, format!("{}{path}", self.app.proxy_tls))
            .header("host", INV)
    }

    /// Kong's `provision_code`: the code, or `None` when the answer has no redirect.
    async fn code(&self, client_id: &str) -> Option<String> {
        let r = send(self.ssl(Method::POST, "/oauth2/authorize").json(&json!({
            "provision_key": "provision123", "client_id": client_id, "scope": "email",
            "response_type": "code", "state": "hello", "authenticated_userid": "userid123"})))
        .await;
        let uri = r.body["redirect_uri"].as_str()?;
        let re = Regex::new(r"^http://google\.com/kong\?code=(\w{32})&state=hello$").unwrap();
        Some(re.captures(uri).unwrap_or_else(|| panic!("{uri}"))[1].to_string())
    }

    /// A code of `code_client` exchanged by `client` (Kong sends no `code` when it got none).
    async fn exchange(&self, code_client: &str, client: &str) -> Resp {
        let mut body = json!({"client_id": client, "client_secret": "secret123",
                              "grant_type": "authorization_code"});
        if let Some(code) = self.code(code_client).await {
            body["code"] = json!(code);
        }
        send(self.ssl(Method::POST, "/oauth2/token").json(&body)).await
    }

    /// `GET /status/200?access_token=…`: the status.
    async fn use_token(&self, access: &str) -> u16 {
        send(self.ssl(Method::GET, &format!("/status/200?access_token={access}")))
            .await
            .status
    }

    /// A token of `clientid123`, used once (200).
    async fn used_token(&self) -> String {
        let r = self.exchange("clientid123", "clientid123").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let access = r.body["access_token"].as_str().unwrap().to_string();
        assert_eq!(self.use_token(&access).await, 200);
        access
    }

    /// The id of credential `clientid123`.
    async fn credential_id(&self) -> String {
        let (s, c) = self
            .app
            .admin_get("/consumers/bob/oauth2/clientid123")
            .await;
        assert_eq!(s, 200, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    /// The id of a token (Kong: `db.oauth2_tokens:select_by_access_token`).
    async fn token_id(&self, access: &str) -> String {
        let (s, t) = self
            .app
            .admin_get(&format!("/oauth2_tokens/{access}"))
            .await;
        assert_eq!(s, 200, "{t}");
        t["id"].as_str().unwrap().to_string()
    }
}

async fn inv1_deleting_the_credential(store: Store) {
    let k = Invalidations::start(store).await;
    let r = k.exchange("clientid123", "clientid123").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = k.credential_id().await;
    let (s, b) = k
        .app
        .admin_delete(&format!("/consumers/bob/oauth2/{id}"))
        .await;
    assert_eq!(s, 204, "{b}");
    let r = k.exchange("clientid123", "clientid123").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

async fn inv2_updating_the_credential(store: Store) {
    let k = Invalidations::start(store).await;
    let r = k.exchange("clientid123", "clientid123").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = k.exchange("updated_clientid123", "clientid123").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let id = k.credential_id().await;
    let (s, b) = k
        .app
        .admin_patch(
            &format!("/consumers/bob/oauth2/{id}"),
            json!({"client_id": "updated_clientid123"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let r = k
        .exchange("updated_clientid123", "updated_clientid123")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = k.exchange("clientid123", "clientid123").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

async fn inv3_deleting_the_consumer(store: Store) {
    let k = Invalidations::start(store).await;
    let access = k.used_token().await;
    assert_eq!(k.app.admin_delete("/consumers/bob").await.0, 204);
    let r = k.exchange("clientid123", "clientid123").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(k.use_token(&access).await, 401);
}

async fn inv4_deleting_the_token(store: Store) {
    let k = Invalidations::start(store).await;
    let access = k.used_token().await;
    assert_eq!(logs::errors(), Vec::<String>::new(), "no error in the log");
    let id = k.token_id(&access).await;
    assert_eq!(
        k.app.admin_delete(&format!("/oauth2_tokens/{id}")).await.0,
        204
    );
    assert_eq!(k.use_token(&access).await, 401);
}

async fn inv5_updating_the_access_token(store: Store) {
    let k = Invalidations::start(store).await;
    let access = k.used_token().await;
    let id = k.token_id(&access).await;
    let (s, b) = k
        .app
        .admin_patch(
            &format!("/oauth2_tokens/{id}"),
            json!({"access_token": "updated_token"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(k.use_token("updated_token").await, 200);
    assert_eq!(k.use_token(&access).await, 401);
}

async fn inv6_deleting_the_credential_invalidates_its_tokens(store: Store) {
    let k = Invalidations::start(store).await;
    let access = k.used_token().await;
    let id = k.credential_id().await;
    let (s, b) = k
        .app
        .admin_delete(&format!("/consumers/bob/oauth2/{id}"))
        .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(k.use_token(&access).await, 401);
}

// ------------------------------------------------------------------------------------------------
// 10.7 05-kdf_spec.lua — client secret hashing, seen through the admin API and the token endpoint
// ------------------------------------------------------------------------------------------------
//
// Deliberate difference from Kong: Kong hashes secrets with PBKDF2-SHA512; Portcullis hashes new
// secrets with argon2id and verifies Kong's PBKDF2 hashes (a database migrated from Kong). Kong's
// unit spec calls `hash` and `verify` directly; here a hash is what the admin API stores for
// `hash_secret = true`, and "verifies" is a client_credentials token answered 200 (or refused).

/// Kong's static vector: PBKDF2 of "tofu" with the salt "a litte bit, just a little bit".
const KDF_STATIC_KEY: &str = "$pbkdf2-sha512$i=10000,l=32$YSBsaXR0ZSBiaXQsIGp1c3QgYSBsaXR0bGUgYml0$z6ysNworexAhDELywIDi0ba0B0T7F/MBZ6Ige9lWRYI";

/// A credential of bob with `client_id` and this `client_secret`, hashed (or kept if a hash).
async fn hashed_credential(k: &Kong, client_id: &str, secret: &str) -> Value {
    bob_credential(
        &k.app,
        json!({"name": client_id, "client_id": client_id, "client_secret": secret,
               "hash_secret": true}),
    )
    .await
}

/// A client_credentials token request of `client_id` with secret "tofu".
async fn tofu_token(k: &Kong, client_id: &str) -> Resp {
    k.post(
        CC,
        "/oauth2/token",
        cc(json!({"client_id": client_id, "client_secret": "tofu"})),
    )
    .await
}

/// Kong: `hash("tofu", { salt })` equals the static vector. Ours does not derive PBKDF2 hashes
/// (see above); the vector is what the fixture's Kong-format hashes are made by, and a credential
/// stored with it is kept as is and verifies "tofu".
async fn kdf1_sanity(store: Store) {
    assert_eq!(
        kong_pbkdf2_salted("tofu", b"a litte bit, just a little bit"),
        KDF_STATIC_KEY
    );
    let k = Kong::start(store, &[CC]).await;
    let c = hashed_credential(&k, "static", KDF_STATIC_KEY).await;
    assert_eq!(c["client_secret"], KDF_STATIC_KEY);
    tofu_token(&k, "static").await.is_token(5, false);
}

/// Kong: `hash("tofu")` is not the static vector (a random salt). Here: two credentials hashing
/// "tofu" store two different hashes, neither of them the vector.
async fn kdf2_uses_random_salt_by_default(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let a = hashed_credential(&k, "tofu-a", "tofu").await["client_secret"].clone();
    let b = hashed_credential(&k, "tofu-b", "tofu").await["client_secret"].clone();
    assert_ne!(a, b);
    for h in [&a, &b] {
        assert_ne!(h, KDF_STATIC_KEY);
        assert!(h.as_str().unwrap().starts_with("$argon2id$"), "{h}");
    }
}

/// Kong: "tofu" verifies against `hash("tofu")` and the static vector, not against `hash("bun")`.
async fn kdf3_verifies_correctly(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    hashed_credential(&k, "tofu", "tofu").await;
    hashed_credential(&k, "static", KDF_STATIC_KEY).await;
    hashed_credential(&k, "bun", "bun").await;
    tofu_token(&k, "tofu").await.is_token(5, false);
    tofu_token(&k, "static").await.is_token(5, false);
    tofu_token(&k, "bun").await.is(400, invalid_client());
}

// ------------------------------------------------------------------------------------------------
// Beyond Kong: bad input and concurrency
// ------------------------------------------------------------------------------------------------

/// A body over `client_max_body_size` is refused before any grant runs: never a 500, never a
/// token.
async fn bad1_oversized_body_on_the_token_endpoint(store: Store) {
    let settings = Settings {
        client_max_body_size: "1k".into(),
        ..kong_settings()
    };
    let k = Kong::start_full(store, settings, &[CC], json!({})).await;
    let big = "a".repeat(8 * 1024);
    let r = send(k.tls(Method::POST, CC, "/oauth2/token").form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "clientid123"),
        ("client_secret", "secret123"),
        ("scope", "email"),
        ("padding", &big),
    ]))
    .await;
    // Buffering stops at the limit and the endpoint answers in RFC 6749's shape.
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_request");
    assert_eq!(r.body["error_description"], "The request body is too large");
    assert!(r.body.get("access_token").is_none(), "{}", r.body);
    // The same request under the limit succeeds: the limit, not the content, refused it.
    k.post(CC, "/oauth2/token", cc(json!({})))
        .await
        .is_token(5, false);
}

/// Deliberate difference from Kong: a repeated parameter is refused by name as RFC 6749 §3.1 says ("MUST NOT be
/// included more than once"); Kong turns it into a list that whichever check meets it refuses.
async fn bad2_repeated_form_parameters(store: Store) {
    let k = Kong::start(store, &[CC]).await;
    let base =
        "client_id=clientid123&client_secret=secret123&scope=email&grant_type=client_credentials";
    let cases = [
        (
            format!("{base}&grant_type=client_credentials"),
            err(
                "invalid_request",
                "grant_type must not be included more than once",
            ),
        ),
        (
            format!("{base}&client_id=clientid123"),
            err(
                "invalid_request",
                "client_id must not be included more than once",
            ),
        ),
        (
            format!("{base}&scope=email"),
            err(
                "invalid_request",
                "scope must not be included more than once",
            ),
        ),
    ];
    for (body, expected) in cases {
        let r = send(
            k.tls(Method::POST, CC, "/oauth2/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone()),
        )
        .await;
        assert_eq!((r.status, &r.body), (400, &expected), "{body}");
    }
}

/// Bodies the endpoint cannot read are ignored (Kong's rule), so the request lacks its
/// parameters: a clear OAuth error.
async fn bad3_wrong_content_types(store: Store) {
    let k = Kong::start(store, &[CC, O]).await;
    let form =
        "client_id=clientid123&client_secret=secret123&scope=email&grant_type=client_credentials";
    let cases: [(&str, Vec<u8>); 6] = [
        ("text/plain", form.into()),
        (
            "application/xml",
            b"<grant_type>client_credentials</grant_type>".to_vec(),
        ),
        ("application/json", form.into()),
        ("application/json", b"[\"client_credentials\"]".to_vec()),
        (
            "application/x-www-form-urlencoded",
            vec![0xff, 0xfe, 0x00, b'=', 0x80],
        ),
        ("multipart/form-data", b"--x\r\ngarbage".to_vec()),
    ];
    for (ct, body) in &cases {
        let r = send(
            k.tls(Method::POST, CC, "/oauth2/token")
                .header("content-type", *ct)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (r.status, &r.body),
            (400, &invalid_client()),
            "{ct} {body:?}"
        );
        r.no_cache();
        let r = send(
            k.tls(Method::POST, O, "/oauth2/authorize")
                .header("content-type", *ct)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (r.status, &r.body),
            (400, &err("invalid_provision_key", "Invalid provision_key")),
            "{ct} {body:?}"
        );
    }
}

/// Parallel refreshes of one refresh token: rotation has one winner; the losers are refused
/// within the grace window without revoking the family, so the winner's tokens keep working.
async fn conc1_parallel_refreshes_of_one_refresh_token(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let t = k.token(O, json!({}), json!({})).await;
    let calls = (0..8).map(|_| k.refresh(O, &t["refresh_token"]));
    let results = futures_util::future::join_all(calls).await;
    let winners: Vec<&Resp> = results.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results
            .iter()
            .map(|r| (r.status, &r.body))
            .collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| r.status != 200) {
        r.is(400, err("invalid_request", "Invalid refresh_token"));
    }
    let won = &winners[0].body;
    let r = k.get_bearer(O, won["access_token"].as_str().unwrap()).await;
    assert_eq!(
        r.status, 200,
        "the winner's access token still works: {}",
        r.body
    );
    k.refresh(O, &won["refresh_token"]).await.is_token(5, true);
    assert_eq!(
        k.get_bearer(O, t["access_token"].as_str().unwrap())
            .await
            .status,
        401
    );
}

/// Parallel redemptions of one code: exactly one token.
async fn conc2_parallel_redemptions_of_one_code(store: Store) {
    let k = Kong::start(store, &[O]).await;
    let code = k.code(O, json!({})).await;
    let body = json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                      "grant_type": "authorization_code"});
    let calls = (0..8).map(|_| k.post(O, "/oauth2/token", body.clone()));
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.status == 200).count(), 1);
    for r in results.iter().filter(|r| r.status != 200) {
        r.is(400, err("invalid_request", "Invalid code"));
    }
}

on_every_store!(
    c001_authorize_no_provision_key,
    c002_grpc_call_without_credentials,
    c003_authorize_no_parameter,
    c004_authorize_only_provision_key_and_userid,
    c005_authorize_only_client_id,
    c006_authorize_invalid_scope,
    c007_authorize_no_response_type,
    c008_authorize_no_response_type_with_state,
    c009_authorize_redirect_uri_mismatch,
    c010_authorize_redirect_uri_with_query_string,
    c011_authorize_multiple_redirect_uris,
    c012_authorize_fails_without_https,
    c013_authorize_http_accepted_if_already_terminated,
    c014_authorize_http_refused_if_not_accepted,
    c015_authorize_returns_success,
    c016_authorize_fails_with_a_path_when_using_the_dns,
    c017_authorize_success_with_a_path,
    c018_authorize_success_with_final_slash,
    c019_authorize_success_with_state,
    c020_authorize_stores_authenticated_user_properties,
    c021_authorize_stores_dotted_scope,
    c022_authorize_unsupported_challenge_method,
    c023_authorize_challenge_method_without_challenge,
    c024_authorize_public_client_needs_challenge,
    c025_authorize_confidential_client_needs_challenge_when_strict,
    c026_authorize_public_client_without_challenge_when_pkce_none,
    c027_authorize_defaults_challenge_method_to_s256,
    c028_authorize_saves_code_challenge,
    c029_implicit_returns_success,
    c030_implicit_returns_the_state,
    c031_implicit_token_has_the_right_expiration,
    c032_implicit_stores_authenticated_user_properties,
    c033_implicit_sets_the_right_upstream_headers,
    c034_client_credentials_no_client_secret,
    c035_client_credentials_empty_client_id_and_secret,
    c036_client_credentials_missing_client_id_and_secret,
    c037_token_endpoint_refuses_get_without_realm,
    c038_token_endpoint_refuses_get_with_realm,
    c039_client_credentials_no_grant_type,
    c040_client_credentials_fails_without_https,
    c041_client_credentials_userid_without_provision_key,
    c042_client_credentials_userid_with_invalid_provision_key,
    c043_client_credentials_returns_success,
    c044_client_credentials_app_with_multiple_redirect_uris,
    c045_client_credentials_with_a_valid_redirect_uri,
    c046_client_credentials_app_without_redirect_uri,
    c047_client_credentials_userid_and_valid_provision_key,
    c048_client_credentials_with_authorization_header,
    c049_client_credentials_header_and_client_id_body_param,
    c050_client_credentials_wrong_authorization_header,
    c051_client_credentials_sets_the_right_upstream_headers,
    c052_client_credentials_works_in_a_multipart_request,
    c053_password_blocks_unauthorized_requests_without_realm,
    c054_password_blocks_unauthorized_requests_with_realm,
    c055_password_no_client_secret,
    c056_password_no_grant_type,
    c057_password_no_provision_key_with_response_type,
    c058_password_no_provision_key,
    c059_password_no_authenticated_userid,
    c060_password_returns_success,
    c061_password_with_authorization_header,
    c062_password_wrong_authorization_header,
    c063_password_sets_the_right_upstream_headers,
    c064_token_nothing_sent,
    c065_token_only_the_code,
    c066_token_only_code_and_client_secret,
    c067_token_no_grant_type,
    c068_token_wrong_code,
    c069_token_success_without_state,
    c070_token_success_with_state,
    c071_token_code_of_another_client,
    c072_token_sets_the_right_upstream_headers,
    c073_token_code_used_more_than_once,
    c074_token_code_used_by_another_application,
    c075_token_code_used_for_another_api,
    c076_token_succeeds_with_code_challenge,
    c077_token_authorization_header_for_public_app,
    c078_token_authorization_header_for_public_app_with_colon,
    c079_token_authorization_header_for_public_app_with_empty_secret,
    c080_token_secret_provided_for_public_app,
    c081_token_secret_provided_for_public_app_in_header,
    c082_token_no_code_verifier_for_public_app,
    c083_token_no_code_verifier_when_pkce_none,
    c084_token_code_challenge_with_padding,
    c085_token_code_challenge_with_plus_or_slash,
    c086_token_code_verifier_longer_than_128,
    c087_token_code_verifier_shorter_than_43,
    c088_token_code_verifier_missing,
    c089_token_secret_mismatch_for_non_authorization_code_grant,
    c090_token_code_verifier_empty,
    c091_token_code_verifier_not_a_string,
    c092_token_code_verifier_does_not_match,
    c093_token_code_verifier_does_not_match_confidential_strict,
    c094_token_wrong_code_for_public_app,
    c095_token_no_code_for_public_app,
    c096_token_no_secret_for_confidential_app,
    c097_token_no_code_verifier_confidential_when_strict,
    c098_token_no_code_verifier_confidential_with_pkce_when_lax,
    c099_token_no_code_verifier_confidential_with_pkce_when_none,
    c100_token_no_code_verifier_confidential_without_pkce_when_none,
    c101_token_no_code_verifier_confidential_without_pkce_when_lax,
    c102_token_code_from_a_different_global_plugin_instance,
    c104_request_no_access_token_in_json_body,
    c105_request_access_token_in_querystring,
    c106_request_access_token_in_custom_header,
    c107_request_access_token_in_duplicate_custom_headers,
    c108_request_empty_custom_header,
    c109_refresh_fails_when_scope_is_mismatching,
    c110_refresh_succeeds_when_scope_is_a_subset,
    c111_request_token_in_the_wrong_header,
    c112_request_different_api_without_realm,
    c113_request_different_api_with_realm,
    c114_request_access_token_in_a_form_body,
    c115_request_without_body,
    c116_request_authorization_header_bearer,
    c117_request_authorization_header_token,
    c118_grpc_call_with_credentials,
    c119_password_scope_not_a_string,
    c120_anonymous_with_right_credentials,
    c121_anonymous_with_wrong_credentials,
    c122_anonymous_by_username_with_wrong_credentials,
    c123_anonymous_user_does_not_exist,
    c124_implicit_token_expiration_with_custom_header,
    c125_request_correct_service_after_the_wrong_one,
    c126_global_and_non_global_apis_do_not_share,
    c127_global_and_non_global_apis_do_not_share_2,
    c128_global_apis_share_credentials,
    c129_challenge_without_authentication,
    c130_challenge_invalid_token_in_url,
    c131_challenge_invalid_token_in_header,
    c132_challenge_expired_token,
    c133_refresh_invalid_refresh_token,
    c134_refresh_a_valid_token,
    c135_refresh_public_app_without_a_secret,
    c136_refresh_public_app_with_a_secret,
    c137_refresh_confidential_app_without_a_secret,
    c138_refresh_token_of_another_application,
    c139_refresh_after_expiry,
    c140_refresh_rewrites_non_persistent_refresh_tokens,
    c141_refresh_does_not_rewrite_persistent_refresh_tokens,
    c142_does_not_hide_credentials_in_the_body,
    c143_hides_credentials_in_the_body,
    c144_does_not_hide_credentials_in_the_querystring,
    c145_hides_credentials_in_the_querystring,
    c146_hides_credentials_in_the_querystring_with_custom_header,
    c147_does_not_hide_credentials_in_the_header,
    c148_hides_credentials_in_the_header,
    c149_hides_credentials_in_the_custom_header,
    c150_does_not_abort_on_multipart_upload,
    c160_refresh_token_deleted_after_ttl,
    c161_refresh_token_not_deleted_when_ttl_is_0,
    c162_global_token_on_non_global_plugin,
    api01_creates_a_credential,
    api02_creates_a_credential_with_tags,
    api03_creates_a_credential_with_multiple_redirect_uris,
    api04_creates_credentials_with_the_same_client_secret,
    api05_creates_a_credential_with_a_hashed_auto_generated_secret,
    api06_creates_a_credential_with_a_hashed_client_secret,
    api07_creates_a_credential_without_hashing_the_auto_generated_secret,
    api08_creates_a_credential_without_hashing_the_client_secret,
    api09_post_returns_bad_request,
    api10_post_returns_bad_request_with_invalid_redirect_uris,
    api11_put_creates_a_credential,
    api12_put_returns_bad_request,
    api13_get_retrieves_the_first_page,
    api14_get_credential_by_id,
    api15_get_credential_by_client_id,
    api16_get_credential_by_id_only_for_its_consumer,
    api17_get_credential_by_client_id_only_for_its_consumer,
    api18_patch_updates_a_credential_by_id,
    api19_patch_updates_a_credential_by_client_id,
    api20_patch_handles_invalid_input,
    api21_patch_client_secret_requires_hash_secret,
    api22_patch_hash_secret_requires_client_secret,
    api23_delete_deletes_a_credential,
    api24_delete_returns_404_on_invalid_input,
    api25_delete_returns_404_if_not_found,
    api26_post_oauth2_without_consumer,
    api27_post_oauth2_creates_a_credential,
    api28_put_oauth2_without_consumer,
    api29_put_oauth2_creates_a_credential,
    api30_post_creates_a_token,
    api31_post_token_returns_bad_request,
    api32_get_tokens_first_page,
    api33_get_token_by_id,
    api34_get_token_by_access_token,
    api35_put_creates_a_token,
    api36_put_token_returns_bad_request,
    api37_patch_updates_a_token_by_id,
    api38_patch_updates_a_token_by_access_token,
    api39_patch_token_handles_invalid_input,
    api40_delete_deletes_a_token,
    api41_delete_returns_204_on_inexisting_tokens,
    schema01_scopes_not_required_without_mandatory_scope,
    schema02_valid_with_scopes_and_mandatory_scope,
    schema03_provision_key_auto_generated,
    schema04_given_provision_key_kept,
    schema05_auth_header_name_defaults,
    schema06_custom_auth_header_name_kept,
    schema07_refresh_token_ttl_default,
    schema08_refresh_token_ttl_too_large,
    schema09_reuse_refresh_token_defaults_false,
    schema10_error_when_no_flow_is_enabled,
    schema11_error_when_mandatory_scope_without_scopes,
    schema12_token_with_invalid_uuids,
    schema14_deleting_a_service_deletes_its_tokens_and_codes,
    kdf1_sanity,
    kdf2_uses_random_salt_by_default,
    kdf3_verifies_correctly,
    inv1_deleting_the_credential,
    inv2_updating_the_credential,
    inv3_deleting_the_consumer,
    inv4_deleting_the_token,
    inv5_updating_the_access_token,
    inv6_deleting_the_credential_invalidates_its_tokens,
    bad1_oversized_body_on_the_token_endpoint,
    bad2_repeated_form_parameters,
    bad3_wrong_content_types,
    conc1_parallel_refreshes_of_one_refresh_token,
    conc2_parallel_redemptions_of_one_code,
);
