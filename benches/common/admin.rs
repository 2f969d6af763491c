//! Setting the gateway up through its admin API, and getting credentials from the `oauth2`
//! plugin's endpoints, the way a user would (mirrors `tests/api/helpers.rs` and
//! `tests/api/oauth2.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::driver::Req;
use super::procs::Gateway;

/// Client id of the bench application.
pub const CLIENT_ID: &str = "bench-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "bench-secret";
/// Provision key of the plugin (authorization codes).
pub const PROVISION_KEY: &str = "bench-provision";
/// Route prefix of the bench service.
pub const PREFIX: &str = "/api";
/// Path every load request asks for.
pub const RESOURCE: &str = "/api/items";

/// A blocking admin client (a private single-thread runtime around reqwest).
pub struct Admin {
    base: String,
    proxy: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Admin {
    /// Client for the gateway at `admin` / `proxy`.
    ///
    /// # Errors
    /// Runtime or client construction failed.
    pub fn new(admin: SocketAddr, proxy: SocketAddr) -> Result<Self> {
        Ok(Self {
            base: format!("http://{admin}"),
            proxy: format!("http://{proxy}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Client for `gw` with the bench service in front of `upstream` and the `oauth2` plugin
    /// set up on it ([`Admin::expose`], then [`Admin::enable_oauth2`]).
    ///
    /// # Errors
    /// As [`Admin::new`] and [`Admin::post`].
    pub fn oauth2_service(gw: &Gateway, upstream: SocketAddr) -> Result<Self> {
        let admin = Self::new(gw.admin, gw.proxy)?;
        admin.expose(upstream)?;
        admin.enable_oauth2()?;
        Ok(admin)
    }

    /// POST JSON to the admin API; the created document.
    ///
    /// # Errors
    /// Transport failure or a non-2xx answer (with its body).
    pub fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.rt.block_on(async {
            let r = self
                .http
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {path}"))?;
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("POST {path}: {status} {v}");
            }
            Ok(v)
        })
    }

    /// Service `bench` → `upstream`, route `/api`.
    ///
    /// # Errors
    /// As [`Admin::post`].
    pub fn expose(&self, upstream: SocketAddr) -> Result<()> {
        self.post(
            "/services",
            json!({"name": "bench", "url": format!("http://{upstream}")}),
        )?;
        self.post(
            "/services/bench/routes",
            json!({"name": "bench-route", "paths": [PREFIX]}),
        )?;
        Ok(())
    }

    /// The `oauth2` plugin on the bench service (client credentials and authorization codes
    /// over plain HTTP from a trusted peer), consumer `bench` and its application.
    ///
    /// # Errors
    /// As [`Admin::post`].
    pub fn enable_oauth2(&self) -> Result<()> {
        self.post(
            "/services/bench/plugins",
            json!({"name": "oauth2", "config": {
                "enable_client_credentials": true,
                "enable_authorization_code": true,
                "provision_key": PROVISION_KEY,
                "accept_http_if_already_terminated": true,
                "token_expiration": 7200
            }}),
        )?;
        self.post("/consumers", json!({"username": "bench"}))?;
        self.post(
            "/consumers/bench/oauth2",
            json!({"name": "bench-app", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "redirect_uris": ["http://localhost/cb"]}),
        )?;
        Ok(())
    }

    /// One access token through `client_credentials`.
    ///
    /// # Errors
    /// The endpoint did not answer with a token.
    pub fn client_credentials_token(&self) -> Result<String> {
        self.rt.block_on(async {
            let r = self
                .http
                .post(format!("{}{PREFIX}/oauth2/token", self.proxy))
                .header("x-forwarded-proto", "https")
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                ])
                .send()
                .await?;
            let v: Value = r.json().await?;
            v.get("access_token")
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("no token: {v}"))
        })
    }

    /// Polls `GET /api/items` (with `token` as bearer, if any) until it answers 200 (the
    /// snapshot is published), at most 10 s.
    ///
    /// # Errors
    /// It never answered 200.
    pub fn wait_ready(&self, token: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.rt.block_on(async {
            loop {
                let mut rb = self.http.get(format!("{}{RESOURCE}", self.proxy));
                if let Some(token) = token {
                    rb = rb.header("authorization", format!("Bearer {token}"));
                }
                let status = rb.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                if status == 200 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("GET {RESOURCE} still answers {status} after 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// The load request of the validation benches: the resource with `token` as bearer.
pub fn bearer_request(token: &str) -> Req {
    Req::get(RESOURCE).header("authorization", &format!("Bearer {token}"))
}

/// The request that issues a token through `client_credentials` (over plain HTTP from a trusted
/// peer, hence `X-Forwarded-Proto`), for benches that issue tokens by the thousand.
pub fn client_credentials_request() -> Req {
    Req::form(
        &format!("{PREFIX}/oauth2/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .header("x-forwarded-proto", "https")
}

/// `access_token` of a token endpoint answer.
pub fn token_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("access_token")?.as_str().map(str::to_string)
}

/// The `code` in an authorize answer's `redirect_uri`.
pub fn code_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let uri = url::Url::parse(v.get("redirect_uri")?.as_str()?).ok()?;
    uri.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, c)| c.into_owned())
}
