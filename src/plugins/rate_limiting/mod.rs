//! Kong's `rate-limiting` plugin (3.x config): requests per second, minute, hour, day, month and
//! year, counted per consumer, credential, address, service, header value or path, on this node
//! (`local`) or in Redis (`redis`, shared by every node), with Kong's headers and answers.
//!
//! Where we deliberately differ from Kong:
//! - the `redis` policy checks and counts every window in one atomic round trip (a script run by
//!   `EVALSHA`), so the limit is exact across nodes, and a refused request counts in no window
//!   (Kong's counts refused requests too: a client retrying while blocked by `second` used up its
//!   `minute` and `hour` as well); requests arriving while a call is in flight go together in the
//!   next one, handled in arrival order (Kong makes separate calls per window and request);
//! - the `local` policy checks and counts in one step, so racing requests never pass the limit
//!   (Kong reads, then counts in a timer);
//! - `policy = cluster` (counters in the database) and `sync_rate` other than `-1` are refused;
//! - `redis.ssl_verify = true` always checks the certificate's name (`server_name`, else `host`;
//!   Kong checks a name only when `server_name` is set), against `lua_ssl_trusted_certificate`;
//! - an instance that names no Redis uses the gateway's own `redis_url`;
//! - the Redis password is masked in the admin API's answers.
//!
//! - [`window`]: the windows, their calendar boundaries and reset countdowns.
//! - [`local`]: the lock-free per-node counters.
//! - [`config`]: the schema, Kong's deprecated `redis_*` fields, and the config checks.

pub mod config;
pub mod local;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use portcullis_stores::redis_conn::RedisTrust;
use portcullis_stores::redis_counters::{RedisCounters, RedisTarget, Window};
use portcullis_stores::StoreError;
use serde_json::{json, Map, Value};
use smallvec::SmallVec;
use uuid::Uuid;

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::body::AnswerBody;
use crate::entities::PluginInstance;
use crate::plugin_api::{empty_answer, Answer, AnswerHeaders, HeaderName, HeaderValue, StatusCode};
use crate::schema::{FieldErrors, Schema};
use config::{Config, LimitBy, PolicyName};
use local::{Check, Identifier, LocalCounters};
use window::{Period, PERIODS};

/// Plugin name in the admin API.
pub const NAME: &str = "rate-limiting";
/// Kong's handler priority: after the authentication plugins, so it can count per consumer.
pub const PRIORITY: i32 = super::priority("rate-limiting");

static PASSED_WITHOUT_REDIS: AtomicU64 = AtomicU64::new(0);
static LAST_REDIS_ERROR_LOG: AtomicI64 = AtomicI64::new(0);

/// Requests let through unchecked because Redis could not count them (`fault_tolerant = true`),
/// since the process started: for a metrics endpoint, since those requests were not limited.
pub fn passed_without_redis() -> u64 {
    PASSED_WITHOUT_REDIS.load(Ordering::Relaxed)
}

/// What the plugin kind shares with the gateway: its own Redis and the key prefix.
#[derive(Clone)]
pub struct RateLimitDeps {
    /// The gateway's `redis_url`, used by `redis` instances that name no Redis of their own.
    pub gateway_redis: Option<RedisCounters>,
    /// `redis_prefix`: every counter key starts with it.
    pub prefix: String,
    /// `lua_ssl_trusted_certificate`: the CAs a verified TLS connection to a named Redis trusts.
    pub trust: RedisTrust,
}

impl Default for RateLimitDeps {
    /// No Redis of the gateway's own, the default prefix, the web PKI roots.
    fn default() -> Self {
        Self {
            gateway_redis: None,
            prefix: "portcullis".into(),
            trust: RedisTrust::WebPki,
        }
    }
}

/// The plugin kind: owns the counters, which outlive recompiled instances (a configuration
/// change anywhere does not reset anyone's counts), and one connection per Redis named.
pub struct RateLimiting {
    local: LocalCounters,
    deps: RateLimitDeps,
    /// Connections to the Redis servers instances name, opened at compile time and shared.
    named: Mutex<HashMap<RedisTarget, RedisCounters>>,
}

impl RateLimiting {
    /// The kind, wired to the gateway's Redis (if any) and key prefix.
    pub fn new(deps: RateLimitDeps) -> Self {
        Self {
            local: LocalCounters::default(),
            deps,
            named: Mutex::new(HashMap::new()),
        }
    }

    fn redis_for(&self, target: Option<RedisTarget>) -> Result<RedisCounters, String> {
        let Some(target) = target else {
            return self.deps.gateway_redis.clone().ok_or_else(|| {
                "policy 'redis' needs config.redis.host or the gateway's redis_url".to_string()
            });
        };
        let mut named = self
            .named
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counters) = named.get(&target) {
            return Ok(counters.clone());
        }
        let counters = RedisCounters::open(&target, &self.deps.trust).map_err(|e| e.to_string())?;
        named.insert(target, counters.clone());
        Ok(counters)
    }
}

impl Plugin for RateLimiting {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &config::SCHEMA
    }
    fn shorthands(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        config::shorthand_paths()
    }
    fn complete_config(&self, config: &mut Map<String, Value>) {
        config::fold_shorthands(config);
    }
    fn mask_config(&self, config: &mut Map<String, Value>) {
        config::show(config);
    }
    fn check_entity(&self, config: &Map<String, Value>) -> Vec<String> {
        config::at_least_one_limit(config)
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        config::check_fields(config, self.deps.gateway_redis.is_some())
    }
    fn check_whole_config(&self, config: &Map<String, Value>) -> Result<(), String> {
        config::check_whole(config)
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let limits: SmallVec<[Limit; 6]> = PERIODS
            .iter()
            .zip(cfg.limits())
            .filter_map(|(&period, value)| value.map(|value| Limit::new(period, value)))
            .collect();
        if limits.is_empty() {
            return Err("no limit configured".into());
        }
        let store = match cfg.policy {
            PolicyName::Local => Store::Local(self.local.clone()),
            PolicyName::Redis => Store::Redis {
                counters: self.redis_for(cfg.redis.target())?,
                prefix: Arc::from(format!("{}:ratelimit:{}", self.deps.prefix, instance.id)),
            },
        };
        let header = match (&cfg.limit_by, &cfg.header_name) {
            (LimitBy::Header, Some(name)) => Some(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("header_name {name:?} is not a header name"))?,
            ),
            _ => None,
        };
        let status = StatusCode::from_u16(cfg.error_code).map_err(|e| e.to_string())?;
        let message = cfg
            .error_message
            .unwrap_or_else(|| "API rate limit exceeded".into());
        Ok(Arc::new(Runtime {
            plugin: instance.id,
            limits,
            limit_by: cfg.limit_by,
            header,
            path: cfg.path.map(Arc::from),
            store,
            fault_tolerant: cfg.fault_tolerant,
            hide_headers: cfg.hide_client_headers,
            names: ratelimit_names(),
            refusal: (
                status,
                Bytes::from(json!({ "message": message }).to_string()),
            ),
        }))
    }
}

/// One configured window.
#[derive(Debug, Clone)]
struct Limit {
    period: Period,
    /// As configured (Kong's limits are numbers: `6.5` admits 7 requests).
    value: f64,
    /// Requests the window admits.
    cap: u64,
    /// `value` as a header value, made once.
    shown: HeaderValue,
    /// `X-RateLimit-Limit-<Window>` and `X-RateLimit-Remaining-<Window>`, made once.
    names: [HeaderName; 2],
}

impl Limit {
    fn new(period: Period, value: f64) -> Self {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive limit, saturating at u64::MAX"
        )]
        let cap = value.ceil() as u64;
        Self {
            period,
            value,
            cap,
            shown: number(value),
            names: [period.limit_header(), period.remaining_header()],
        }
    }
}

/// Where an instance counts.
enum Store {
    /// This node's memory.
    Local(LocalCounters),
    /// A Redis shared by the nodes; keys start with `prefix` (`{redis_prefix}:ratelimit:{id}`).
    Redis {
        counters: RedisCounters,
        prefix: Arc<str>,
    },
}

/// Why a request is not let through.
enum Refusal {
    /// A window is used up: the configured `error_code` and `error_message`.
    Exceeded,
    /// The counters cannot be read and `fault_tolerant` is off: Kong's opaque 500.
    StoreDown,
}

struct Runtime {
    plugin: Uuid,
    limits: SmallVec<[Limit; 6]>,
    limit_by: LimitBy,
    header: Option<HeaderName>,
    path: Option<Arc<str>>,
    store: Store,
    fault_tolerant: bool,
    hide_headers: bool,
    /// [`ratelimit_names`], made once.
    names: [HeaderName; 3],
    refusal: (StatusCode, Bytes),
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
fn ratelimit_names() -> [HeaderName; 3] {
    [
        HeaderName::from_static("ratelimit-limit"),
        HeaderName::from_static("ratelimit-remaining"),
        HeaderName::from_static("ratelimit-reset"),
    ]
}

/// What one request's check found: each configured window's count before it, and whether it
/// passed.
struct Usage {
    before: [u64; 6],
    admitted: bool,
}

impl Runtime {
    /// Kong's identifier: the configured entity, else the client address.
    fn identify(&self, ctx: &RequestCtx) -> Identifier {
        let found = match self.limit_by {
            LimitBy::Consumer => ctx.consumer.as_ref().map(|c| c.id).or(ctx.credential),
            LimitBy::Credential => ctx.credential,
            LimitBy::Service => ctx.service.as_ref().map(|s| s.id),
            LimitBy::Ip => None,
            LimitBy::Header => {
                return self
                    .header
                    .as_ref()
                    .and_then(|h| ctx.req.headers().get(h))
                    .map_or(Identifier::Ip(ctx.client_ip), |v| {
                        Identifier::Text(Arc::from(String::from_utf8_lossy(v.as_bytes())))
                    });
            }
            LimitBy::Path => {
                return match &self.path {
                    Some(path) if ctx.req.path() == &**path => Identifier::Text(path.clone()),
                    _ => Identifier::Ip(ctx.client_ip),
                };
            }
        };
        found.map_or(Identifier::Ip(ctx.client_ip), Identifier::Id)
    }

    /// Checks and counts in this node's memory: never waits.
    fn count_here(&self, counters: &LocalCounters, who: Identifier, now: i64) -> Usage {
        let mut before = [0; 6];
        // A plain array: collecting into a `SmallVec` cost more than the checks themselves.
        let mut checks = [Check {
            period: Period::Second,
            cap: 0,
            start: 0,
        }; 6];
        for (check, l) in checks.iter_mut().zip(&self.limits) {
            *check = Check {
                period: l.period,
                cap: l.cap,
                start: l.period.start(now),
            };
        }
        let checks = &checks[..self.limits.len()];
        let admitted = counters.check_and_count(self.plugin, who, now, checks, &mut before);
        Usage { before, admitted }
    }

    async fn count(&self, who: Identifier, now: i64) -> Result<Usage, StoreError> {
        match &self.store {
            Store::Local(counters) => Ok(self.count_here(counters, who, now)),
            Store::Redis { counters, prefix } => {
                let windows: Vec<Window> = self
                    .limits
                    .iter()
                    .map(|l| Window {
                        key: redis_key(prefix, &who, l.period, now),
                        limit: l.cap,
                        ttl_secs: l.period.expiration(),
                    })
                    .collect();
                let counted = counters.check_and_count(windows).await?;
                let mut before = [0; 6];
                for (slot, n) in before.iter_mut().zip(counted.before) {
                    *slot = n;
                }
                Ok(Usage {
                    before,
                    admitted: counted.admitted,
                })
            }
        }
    }

    /// What a counted request gets: through with Kong's headers, or the refusal.
    fn decide(&self, ctx: &mut RequestCtx, usage: &Usage, now: i64) -> Flow {
        if usage.admitted {
            if !self.hide_headers {
                self.headers(usage, now, &mut ctx.response_headers);
            }
            return Flow::Continue;
        }
        let mut answer = self.answer(&Refusal::Exceeded);
        if !self.hide_headers {
            let mut headers = AnswerHeaders::default();
            let reset = self.headers(usage, now, &mut headers);
            let h = answer.headers_mut();
            headers.insert_into(h);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(reset));
        }
        Flow::Respond(answer)
    }

    /// Kong's headers, added to `out`: each window's limit and remaining, and `RateLimit-*` of
    /// the window with the fewest requests left (the longer one on a tie), whose reset is also the
    /// `Retry-After` of a refusal (returned).
    fn headers(&self, usage: &Usage, now: i64, out: &mut AnswerHeaders) -> u64 {
        let stop = (!usage.admitted).then(|| {
            self.limits
                .iter()
                .zip(usage.before)
                .position(|(l, n)| n >= l.cap)
                .unwrap_or(0)
        });
        // The window with the fewest requests left (the longer one on a tie) and that count.
        let (mut best, mut fewest) = (0, f64::INFINITY);
        for (i, (limit, used)) in self.limits.iter().zip(usage.before).enumerate() {
            #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^53")]
            let mut remaining = limit.value - used as f64;
            if stop.is_none_or(|s| s == i) {
                remaining -= 1.0;
            }
            let remaining = remaining.max(0.0);
            out.set(&limit.names[0], &limit.shown);
            set_number(out, &limit.names[1], remaining);
            if remaining <= fewest {
                (best, fewest) = (i, remaining);
            }
        }
        let Some(limit) = self.limits.get(best) else {
            return 1;
        };
        let reset = limit.period.reset(now);
        let [limit_name, remaining_name, reset_name] = &self.names;
        out.set(limit_name, &limit.shown);
        set_number(out, remaining_name, fewest);
        out.set_count(reset_name, reset);
        reset
    }

    fn answer(&self, refusal: &Refusal) -> Answer {
        let (status, body) = match refusal {
            Refusal::Exceeded => (self.refusal.0, self.refusal.1.clone()),
            Refusal::StoreDown => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"message":"An unexpected error occurred"}"#),
            ),
        };
        let mut answer = empty_answer(status);
        *answer.body_mut() = AnswerBody::full(body);
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        answer
    }

    /// Redis could not count: pass (counted, logged at most once a second) or refuse with 500.
    fn store_down(&self, e: &StoreError, now: i64) -> Flow {
        let last = LAST_REDIS_ERROR_LOG.load(Ordering::Relaxed);
        let log = last != now
            && LAST_REDIS_ERROR_LOG
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if self.fault_tolerant {
            PASSED_WITHOUT_REDIS.fetch_add(1, Ordering::Relaxed);
            if log {
                tracing::error!(error = %e, "rate-limiting: Redis cannot count; requests pass unlimited (fault_tolerant)");
            }
            return Flow::Continue;
        }
        if log {
            tracing::error!(error = %e, "rate-limiting: Redis cannot count; requests are refused (fault_tolerant = false)");
        }
        Flow::Respond(self.answer(&Refusal::StoreDown))
    }
}

/// A window's counter in Redis: `{prefix}:{who}:{window start}:{window name}`.
fn redis_key(prefix: &str, who: &Identifier, period: Period, now: i64) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(prefix.len() + 72);
    key.push_str(prefix);
    key.push(':');
    match who {
        Identifier::Id(id) => {
            key.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
        }
        Identifier::Ip(ip) => {
            let _ = write!(key, "{ip}");
        }
        Identifier::Text(text) => key.push_str(text),
    }
    key.push(':');
    push_decimal(&mut key, period.start(now));
    key.push(':');
    key.push_str(period.name());
    key
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery: this runs per
/// request).
fn push_decimal(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `v` as a whole number when Kong (Lua) prints it without a fraction.
fn integral(v: f64) -> Option<u64> {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "integral and in range"
    )]
    (v.fract() == 0.0 && (0.0..1e15).contains(&v)).then_some(v as u64)
}

/// Sets `name` to a number as Kong (Lua) prints it ([`number`]), whole ones without making a
/// `HeaderValue`.
fn set_number(out: &mut AnswerHeaders, name: &HeaderName, v: f64) {
    match integral(v) {
        Some(n) => out.set_count(name, n),
        None => out.set(name, &number(v)),
    }
}

/// A number as Kong (Lua) prints it: whole values without a fraction.
fn number(v: f64) -> HeaderValue {
    match integral(v) {
        Some(n) => HeaderValue::from(n),
        None => HeaderValue::try_from(v.to_string()).unwrap_or(HeaderValue::from_static("0")),
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    /// The `local` policy never waits.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        let Store::Local(counters) = &self.store else {
            return None;
        };
        let now = crate::clock::now();
        let usage = self.count_here(counters, self.identify(ctx), now);
        Some(self.decide(ctx, &usage, now))
    }
    async fn access(&self, ctx: &mut RequestCtx) -> Flow {
        let now = crate::clock::now();
        let who = self.identify(ctx);
        match self.count(who, now).await {
            Ok(usage) => self.decide(ctx, &usage, now),
            Err(e) => self.store_down(&e, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(limits: &[(Period, f64)]) -> Runtime {
        Runtime {
            plugin: Uuid::new_v4(),
            limits: limits.iter().map(|&(p, v)| Limit::new(p, v)).collect(),
            limit_by: LimitBy::Ip,
            header: None,
            path: None,
            store: Store::Local(LocalCounters::default()),
            fault_tolerant: true,
            hide_headers: false,
            names: ratelimit_names(),
            refusal: (StatusCode::TOO_MANY_REQUESTS, Bytes::new()),
        }
    }

    fn header<'a>(h: &'a AnswerHeaders, name: &str) -> &'a str {
        h.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }

    /// 2024-02-29T13:45:30Z.
    const NOW: i64 = 1_709_214_330;

    #[test]
    fn the_window_with_fewest_left_names_the_ratelimit_headers() {
        let rt = runtime(&[(Period::Minute, 6.0), (Period::Hour, 99_999.0)]);
        let usage = Usage {
            before: [2, 2, 0, 0, 0, 0],
            admitted: true,
        };
        let mut h = AnswerHeaders::default();
        let reset = rt.headers(&usage, NOW, &mut h);
        assert_eq!(header(&h, "x-ratelimit-remaining-minute"), "3");
        assert_eq!(header(&h, "x-ratelimit-remaining-hour"), "99996");
        assert_eq!(header(&h, "ratelimit-limit"), "6");
        assert_eq!(header(&h, "ratelimit-remaining"), "3");
        assert_eq!((header(&h, "ratelimit-reset"), reset), ("30", 30));
    }

    #[test]
    fn a_refusal_reports_the_used_up_window_at_zero_and_the_others_unchanged() {
        let rt = runtime(&[(Period::Minute, 6.0), (Period::Hour, 99_999.0)]);
        let usage = Usage {
            before: [6, 6, 0, 0, 0, 0],
            admitted: false,
        };
        let mut h = AnswerHeaders::default();
        rt.headers(&usage, NOW, &mut h);
        assert_eq!(header(&h, "x-ratelimit-remaining-minute"), "0");
        assert_eq!(header(&h, "x-ratelimit-remaining-hour"), "99993");
        assert_eq!(header(&h, "ratelimit-remaining"), "0");
    }

    #[test]
    fn on_a_tie_the_longer_window_names_the_headers() {
        let rt = runtime(&[(Period::Second, 5.0), (Period::Minute, 5.0)]);
        let usage = Usage {
            before: [5, 5, 0, 0, 0, 0],
            admitted: false,
        };
        let mut h = AnswerHeaders::default();
        let reset = rt.headers(&usage, NOW, &mut h);
        assert_eq!(
            reset, 30,
            "the minute's reset: waiting a second would not help"
        );
        assert_eq!(header(&h, "ratelimit-limit"), "5");
    }

    #[test]
    fn window_starts_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 1_709_214_330, -42, i64::MAX, i64::MIN] {
            let mut out = String::from("k");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("k{n}"));
        }
    }

    #[test]
    fn fractional_limits_print_as_kong_prints_them() {
        assert_eq!(number(6.0), "6");
        assert_eq!(number(6.5), "6.5");
        let mut h = AnswerHeaders::default();
        let (whole, half) = (
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-b"),
        );
        set_number(&mut h, &whole, 3_600.0);
        set_number(&mut h, &half, 0.5);
        assert_eq!((header(&h, "x-a"), header(&h, "x-b")), ("3600", "0.5"));
        assert_eq!(Limit::new(Period::Second, 6.5).cap, 7);
    }
}
