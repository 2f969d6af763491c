//! The `oauth2-introspection` plugin: tokens issued by a third-party authorization server
//! (Keycloak, Hydra, Auth0, Okta…) are checked with an RFC 7662 introspection call, cached,
//! coalesced and evictable. Kong sells this as an Enterprise plugin; config and upstream headers
//! follow Kong's documentation of that plugin.
//!
//! Where we deliberately differ from Kong: the cache is keyed by a digest, never outlives `exp`,
//! caches negatives briefly, makes one call per token however many requests miss together, and
//! fails closed with 503 when the server cannot answer (never 401, never the anonymous consumer).
//!
//! - [`cache`]: the bounded, single-flight verdict cache (and the seam for a shared one).
//! - [`claims`]: which upstream header carries which claim.
//! - [`client`]: the RFC 7662 call.
//! - [`error`]: refusals and their HTTP answers.
//! - Its admin endpoint, `DELETE /oauth2-introspection/cache/{digest}`, is `admin::introspection`.

pub mod cache;
pub mod claims;
pub mod client;
pub mod error;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::config::Secret;
use crate::entities::{Consumer, Identities, PluginInstance};
use crate::plugin_api::identity;
use crate::plugin_api::metrics::IntrospectionCounters;
use crate::plugin_api::StepKind;
use crate::schema::{Field, FieldErrors, FieldType, Schema};

pub use cache::IntrospectionCache;
use cache::{CacheKey, Verdict};
use claims::{claim_header, claim_value, CLAIM_HEADERS};
use error::{IntrospectionError, Rejection};

/// Plugin name in the admin API.
pub const NAME: &str = "oauth2-introspection";
/// Runs before `oauth2` (1400), as in Kong.
pub const PRIORITY: i32 = super::priority("oauth2-introspection");
/// What admin GET output shows instead of `authorization_value`.
pub const MASK: &str = "******";
/// Largest `timeout` / `keepalive` (ms), Kong's limit for timeouts.
const MAX_MS: i64 = 2_147_483_646;

/// Identity headers set by this plugin; client-sent copies are always removed (a `static`, as
/// [`CLAIM_HEADERS`]).
static CONSUMER_HEADERS: [HeaderName; 4] = [
    identity::CONSUMER_ID,
    identity::CONSUMER_CUSTOM_ID,
    identity::CONSUMER_USERNAME,
    identity::ANONYMOUS_CONSUMER,
];

fn check_non_empty(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => HeaderValue::from_str(s)
            .map(|_| ())
            .map_err(|_| "not a valid header value".into()),
        _ => Err("length must be at least 1".into()),
    }
}

fn check_headers(v: &Value) -> Result<(), String> {
    let Some(map) = v.as_object() else {
        return Err("expected a map".into());
    };
    for (name, value) in map {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("invalid header name '{name}'"));
        }
        if HeaderValue::from_str(value.as_str().unwrap_or_default()).is_err() {
            return Err(format!("invalid value for header '{name}'"));
        }
    }
    Ok(())
}

fn check_claim(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(c) if !c.is_empty() && claim_header(c).is_some() => Ok(()),
        _ => Err("a claim name must be usable in a header name".into()),
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: NAME,
    fields: vec![
        Field::new("introspection_url", FieldType::String)
            .required()
            .check(crate::schema::check_http_url),
        Field::new("authorization_value", FieldType::String)
            .required()
            .check(check_non_empty),
        Field::new("token_type_hint", FieldType::String),
        Field::new("ttl", FieldType::Number)
            .required()
            .default(|| json!(30))
            .check(|v| crate::schema::check_number_between(v, 0.0, 1e8)),
        Field::new("hide_credentials", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("anonymous", FieldType::String),
        Field::new("consumer_by", FieldType::String)
            .required()
            .default(|| json!("username"))
            .one_of(&["username", "client_id"]),
        Field::new("introspect_request", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("custom_introspection_headers", FieldType::StringMap)
            .required()
            .default(|| json!({}))
            .check(check_headers),
        Field::new(
            "custom_claims_forward",
            FieldType::Set(Box::new(FieldType::String)),
        )
        .required()
        .default(|| json!([]))
        .check(check_claim),
        Field::new("run_on_preflight", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("keepalive", FieldType::Integer)
            .required()
            .default(|| json!(60_000))
            .between(0, MAX_MS),
        Field::new("timeout", FieldType::Integer)
            .required()
            .default(|| json!(10_000))
            .between(1, MAX_MS),
    ],
    entity_checks: vec![],
});

/// Which claim finds the consumer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerBy {
    /// `username` claim → consumer `username`.
    Username,
    /// `client_id` claim → the consumer owning that `oauth2` credential, else consumer `custom_id`.
    ClientId,
}

/// Typed `config` of one instance (no `Debug`: custom headers may carry secrets too).
#[derive(Deserialize)]
pub struct IntrospectionConfig {
    /// RFC 7662 endpoint.
    pub introspection_url: String,
    /// `Authorization` header of the introspection call.
    pub authorization_value: Secret<String>,
    /// `token_type_hint` parameter.
    pub token_type_hint: Option<String>,
    /// Seconds to cache an active verdict (0 = until `exp`).
    pub ttl: f64,
    /// Strip the token before proxying.
    pub hide_credentials: bool,
    /// Consumer id or username used when the token is missing or inactive.
    pub anonymous: Option<String>,
    /// Claim used to find the consumer.
    pub consumer_by: ConsumerBy,
    /// Send `X-Request-Path` / `X-Request-Http-Method` to the server.
    pub introspect_request: bool,
    /// Extra headers on the introspection call.
    pub custom_introspection_headers: Map<String, Value>,
    /// Extra claims forwarded as `X-Credential-<claim>`.
    pub custom_claims_forward: Vec<String>,
    /// Authenticate `OPTIONS` preflights too.
    pub run_on_preflight: bool,
    /// Idle keepalive of the introspection connection, ms.
    pub keepalive: u64,
    /// Introspection timeout, ms.
    pub timeout: u64,
}

/// The plugin kind; owns the process-wide verdict cache.
pub struct IntrospectionPlugin {
    cache: IntrospectionCache,
    counters: IntrospectionCounters,
}

impl IntrospectionPlugin {
    /// The plugin sharing `cache` with the admin API, counting its lookups and calls in
    /// `counters`.
    pub fn new(cache: IntrospectionCache, counters: IntrospectionCounters) -> Self {
        Self { cache, counters }
    }
}

impl Plugin for IntrospectionPlugin {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn allows_consumer_scope(&self) -> bool {
        false
    }
    fn mask_config(&self, config: &mut Map<String, Value>) {
        if let Some(v) = config.get_mut("authorization_value") {
            if v.is_string() {
                *v = Value::String(MASK.into());
            }
        }
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        // A config copied from admin GET output and sent back must not replace the secret.
        if config.get("authorization_value").and_then(Value::as_str) == Some(MASK) {
            let mut e = FieldErrors::new();
            e.insert(
                "authorization_value".into(),
                json!("the masked value cannot be stored; send the real value"),
            );
            return Err(e);
        }
        Ok(())
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let config: IntrospectionConfig =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let authorization = HeaderValue::from_str(config.authorization_value.expose())
            .map_err(|_| "authorization_value is not a valid header value".to_string())?;
        let mut headers = Vec::with_capacity(config.custom_introspection_headers.len());
        for (name, value) in &config.custom_introspection_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value.as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            headers.push((name, value));
        }
        let claims = config
            .custom_claims_forward
            .iter()
            .filter_map(|c| claim_header(c).map(|h| (c.clone(), h)))
            .collect();
        let mut context = Sha256::new();
        for part in [
            config.introspection_url.as_str(),
            config.authorization_value.expose(),
            config.token_type_hint.as_deref().unwrap_or(""),
        ] {
            context.update(part.as_bytes());
            context.update([0]);
        }
        for (name, value) in &headers {
            context.update(name.as_str().as_bytes());
            context.update(b":");
            context.update(value.as_bytes());
            context.update([0]);
        }
        let context = if config.introspect_request {
            VerdictContext::PerRequest(context)
        } else {
            VerdictContext::Fixed(context.finalize().into())
        };
        Ok(Arc::new(IntrospectionRuntime {
            config,
            authorization,
            headers,
            claims,
            context,
            cache: self.cache.clone(),
            counters: self.counters.clone(),
        }))
    }
}

/// One compiled `oauth2-introspection` instance.
pub struct IntrospectionRuntime {
    config: IntrospectionConfig,
    authorization: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `custom_claims_forward` with their header names.
    claims: Vec<(String, HeaderName)>,
    /// What the verdict depends on besides the token.
    context: VerdictContext,
    cache: IntrospectionCache,
    counters: IntrospectionCounters,
}

/// The cache key's context digest: finished at config time unless `introspect_request` makes it
/// depend on the request's path and method.
enum VerdictContext {
    /// Digest of the server, credentials, hint and custom headers.
    Fixed([u8; 32]),
    /// The same digest state, completed with the request's path and method on each request.
    PerRequest(Sha256),
}

/// Where the token was found (for `hide_credentials`).
enum Source {
    Header,
    Query,
}

/// The bearer token: `Authorization: Bearer <t>`, else the `access_token` query argument.
fn extract_token(ctx: &RequestCtx) -> Option<(String, Source)> {
    let header = ctx
        .req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut parts = v.split_ascii_whitespace(); // `to_str`: visible ASCII, spaces and tabs
            match (parts.next(), parts.next(), parts.next()) {
                (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.to_string())
                }
                _ => None,
            }
        });
    if let Some(token) = header {
        return Some((token, Source::Header));
    }
    ctx.query()
        .into_iter()
        .find(|(k, v)| k == "access_token" && !v.is_empty())
        .map(|(_, v)| (v, Source::Query))
}

fn now_unix() -> i64 {
    crate::clock::now()
}

fn set_consumer(ctx: &mut RequestCtx, consumer: Arc<Consumer>) {
    ctx.set_consumer_headers(&consumer, |_| false);
    ctx.consumer = Some(consumer);
}

impl IntrospectionRuntime {
    /// Removes the client's (and earlier plugins') copies of every header this plugin sets.
    fn clear_identity_headers(&self, ctx: &mut RequestCtx) {
        ctx.clear_upstream_picked(|name| {
            // Every one of them is an `x-` name (the custom claims' too: `x-credential-<claim>`),
            // so most of a request's headers are passed over without a comparison.
            name.as_str().starts_with("x-")
                && (CLAIM_HEADERS.iter().any(|(_, h)| h == name)
                    || CONSUMER_HEADERS.contains(name)
                    || self.claims.iter().any(|(_, h)| h == name))
        });
    }

    fn cache_key(&self, ctx: &RequestCtx, token: &str) -> CacheKey {
        let context = match &self.context {
            VerdictContext::Fixed(digest) => *digest,
            VerdictContext::PerRequest(state) => {
                let mut state = state.clone();
                state.update(ctx.req.path().as_bytes());
                state.update([0]);
                state.update(ctx.req.method().as_str().as_bytes());
                state.finalize().into()
            }
        };
        CacheKey {
            token: crate::crypto::token_hash(token),
            context,
        }
    }

    /// The verdict for `token`, from the cache or one introspection call (timed as a step of
    /// the request when one was made and steps are timed).
    async fn verdict(
        &self,
        ctx: &mut RequestCtx,
        token: &str,
        key: CacheKey,
    ) -> Result<Arc<Verdict>, Rejection> {
        let began = ctx.step_begins();
        let (verdict, called) = self.cached_verdict(ctx, token, key).await;
        if called {
            ctx.step_ends(StepKind::IntrospectionCall, began);
        }
        verdict
    }

    /// The verdict for `token` and whether an introspection call was made for it.
    async fn cached_verdict(
        &self,
        ctx: &RequestCtx,
        token: &str,
        key: CacheKey,
    ) -> (Result<Arc<Verdict>, Rejection>, bool) {
        // The call is only prepared on a miss; a cache hit costs the lookup alone.
        let called = std::cell::Cell::new(false);
        let introspect = || async {
            called.set(true);
            self.counters.calls.inc();
            let mut headers = self.headers.clone();
            if self.config.introspect_request {
                for (name, value) in [
                    ("x-request-path", ctx.req.path()),
                    ("x-request-http-method", ctx.req.method().as_str()),
                ] {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        headers.push((HeaderName::from_static(name), v));
                    }
                }
            }
            let call = client::Call {
                url: &self.config.introspection_url,
                authorization: &self.authorization,
                token,
                token_type_hint: self.config.token_type_hint.as_deref(),
                headers,
                timeout: Duration::from_millis(self.config.timeout),
                keepalive: Duration::from_millis(self.config.keepalive),
            };
            let answer = client::introspect(call)
                .await
                .inspect_err(|e: &IntrospectionError| {
                    self.counters.errors.inc();
                    tracing::warn!(plugin = NAME, error = %e, "token introspection failed");
                })?;
            Ok(Verdict::new(
                answer.active,
                answer.claims,
                self.config.ttl,
                now_unix(),
            ))
        };
        let verdict = self.cache.get_or_introspect(key, introspect).await;
        let called = called.get();
        if called {
            self.counters.cache_misses.inc();
        } else {
            self.counters.cache_hits.inc();
        }
        (judged(verdict), called)
    }

    fn find_consumer(&self, snapshot: &Identities, verdict: &Verdict) -> Option<Arc<Consumer>> {
        let claim = |name: &str| verdict.claims.get(name).and_then(Value::as_str);
        match self.config.consumer_by {
            ConsumerBy::Username => claim("username")
                .and_then(|u| snapshot.consumers_by_username.get(u))
                .cloned(),
            ConsumerBy::ClientId => {
                let client_id = claim("client_id")?;
                snapshot
                    .oauth2_by_client_id
                    .get(client_id)
                    .and_then(|c| snapshot.consumers.get(&c.consumer_id))
                    .or_else(|| {
                        // Kong maps `client_id` to the consumer's `custom_id`. A linear scan: the
                        // snapshot has no custom_id index yet (worth adding if consumers are many).
                        snapshot
                            .consumers
                            .values()
                            .find(|c| c.custom_id.as_deref() == Some(client_id))
                    })
                    .cloned()
            }
        }
    }

    fn accept(&self, ctx: &mut RequestCtx, verdict: &Verdict) {
        for (header, value) in &verdict.forwarded {
            ctx.set_upstream_value(header, value.clone());
        }
        for (claim, header) in &self.claims {
            if let Some(value) = verdict.claims.get(claim).and_then(claim_value) {
                ctx.set_upstream(header, &value);
            }
        }
        if let Some(consumer) = self.find_consumer(&ctx.snapshot, verdict) {
            set_consumer(ctx, consumer);
        }
        ctx.authenticated = true;
    }

    fn anonymous(ctx: &mut RequestCtx, key: &str) -> Result<(), Rejection> {
        let consumer = ctx
            .snapshot
            .consumer_by_id_or_name(key)
            .cloned()
            .ok_or_else(|| Rejection::AnonymousMissing(key.to_string()))?;
        set_consumer(ctx, consumer);
        ctx.set_upstream(&identity::ANONYMOUS_CONSUMER, "true");
        Ok(())
    }

    /// The access phase as far as it goes without waiting: the answer, or what a cache miss
    /// found for the phase that waits.
    fn check_now(&self, ctx: &mut RequestCtx) -> Result<Flow, Missed> {
        if !self.config.run_on_preflight && ctx.req.method() == Method::OPTIONS {
            return Ok(Flow::Continue);
        }
        // Kong's "logical OR": an earlier auth plugin already authenticated the request.
        if self.config.anonymous.is_some() && ctx.authenticated {
            return Ok(Flow::Continue);
        }
        let Some((token, source)) = extract_token(ctx) else {
            self.clear_identity_headers(ctx);
            return Ok(self.conclude(ctx, Err(Rejection::Missing)));
        };
        let key = self.cache_key(ctx, &token);
        let Some(verdict) = self.cache.get_now(&key) else {
            return Err(Missed { token, source, key });
        };
        self.counters.cache_hits.inc();
        self.clear_identity_headers(ctx);
        self.hide_credentials(ctx, source);
        Ok(self.conclude(ctx, judged(Ok(verdict))))
    }

    /// `hide_credentials`: the token does not reach the upstream.
    fn hide_credentials(&self, ctx: &mut RequestCtx, source: Source) {
        if self.config.hide_credentials {
            match source {
                Source::Header => ctx.clear_upstream(&http::header::AUTHORIZATION),
                Source::Query => ctx.strip_query_arg(&crate::plugin_api::ACCESS_TOKEN_ARG),
            }
        }
    }

    /// Admits the request with its verdict, or as the anonymous consumer when the refusal
    /// allows one, or refuses it.
    fn conclude(&self, ctx: &mut RequestCtx, outcome: Result<Arc<Verdict>, Rejection>) -> Flow {
        let refused = match outcome {
            Ok(verdict) => {
                self.accept(ctx, &verdict);
                return Flow::Continue;
            }
            Err(rejection) => rejection,
        };
        let refused = match (&self.config.anonymous, refused.allows_anonymous()) {
            (Some(key), true) => match Self::anonymous(ctx, key) {
                Ok(()) => return Flow::Continue,
                Err(e) => e,
            },
            _ => refused,
        };
        Flow::Respond(refused.to_response())
    }
}

/// What [`IntrospectionRuntime::access_now`] found before the cache missed: the token, where it
/// came from and its cache key, so that the access phase neither extracts nor hashes it again.
struct Missed {
    token: String,
    source: Source,
    key: CacheKey,
}

/// A cached or fetched verdict as the request's outcome: inactive tokens and failed calls are
/// refusals.
fn judged(
    verdict: Result<Arc<Verdict>, Arc<IntrospectionError>>,
) -> Result<Arc<Verdict>, Rejection> {
    match verdict {
        Ok(v) if v.active => Ok(v),
        Ok(_) => Err(Rejection::Inactive),
        Err(e) => Err(Rejection::Unavailable(e)),
    }
}

#[async_trait(?Send)]
impl PluginRuntime for IntrospectionRuntime {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    /// A request whose verdict is cached (or that carries no token, or needs no check) is
    /// checked without a future; a miss leaves its token and key to [`Self::access`].
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        match self.check_now(ctx) {
            Ok(flow) => Some(flow),
            Err(missed) => {
                ctx.slots.insert(missed);
                None
            }
        }
    }

    async fn access(&self, ctx: &mut RequestCtx) -> Flow {
        let missed = match ctx.slots.take::<Missed>() {
            Some(missed) => missed,
            None => match self.check_now(ctx) {
                Ok(flow) => return flow,
                Err(missed) => missed,
            },
        };
        self.clear_identity_headers(ctx);
        self.hide_credentials(ctx, missed.source);
        let outcome = self.verdict(ctx, &missed.token, missed.key).await;
        self.conclude(ctx, outcome)
    }
}
