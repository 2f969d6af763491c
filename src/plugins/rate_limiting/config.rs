//! The `rate-limiting` config: Kong 3.x's schema and checks, its deprecated flat `redis_*`
//! fields (folded into `redis` on the way in, shown beside it on the way out, as Kong does), and
//! the refusals of what this gateway does not do.

use std::sync::LazyLock;

use portcullis_stores::redis_conn::RedisTls;
use portcullis_stores::redis_counters::RedisTarget;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::window::PERIODS;
use crate::config::Secret;
use crate::entities::check_path;
use crate::schema::{check_header_name, Field, FieldErrors, FieldType, Schema};

/// What the admin API shows instead of a Redis password.
pub const MASK: &str = "******";

/// Kong's deprecated flat fields and the `redis` field each stands for.
const SHORTHANDS: &[(&str, &str)] = &[
    ("redis_host", "host"),
    ("redis_port", "port"),
    ("redis_password", "password"),
    ("redis_username", "username"),
    ("redis_ssl", "ssl"),
    ("redis_ssl_verify", "ssl_verify"),
    ("redis_server_name", "server_name"),
    ("redis_timeout", "timeout"),
    ("redis_database", "database"),
];

/// Largest timeout (ms), Kong's `typedefs.timeout`.
const MAX_MS: i64 = 2_147_483_646;

fn check_positive(v: &Value) -> Result<(), String> {
    match v.as_f64() {
        Some(n) if n > 0.0 => Ok(()),
        _ => Err("value must be greater than 0".into()),
    }
}

fn check_policy(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some("local" | "redis") => Ok(()),
        Some("cluster") => Err(
            "the cluster policy is not supported: this gateway keeps no \
             counters in its database; use local (per node) or redis (shared by the nodes, exact)"
                .into(),
        ),
        _ => Err("expected one of: local, redis".into()),
    }
}

fn check_non_empty(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err("length must be at least 1".into()),
    }
}

/// Kong's `typedefs.sni`: a host name, without a port, that TLS can send as SNI.
fn check_sni(v: &Value) -> Result<(), String> {
    let name = v.as_str().unwrap_or_default();
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("must not be an IP".into());
    }
    if name.contains(':') {
        return Err("must not have a port".into());
    }
    match rustls::pki_types::DnsName::try_from(name) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("invalid value: {name}")),
    }
}

static REDIS: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "redis",
    fields: vec![
        Field::new("host", FieldType::String).check(check_non_empty),
        Field::new("port", FieldType::Integer)
            .default(|| json!(6379))
            .between(0, 65_535),
        Field::new("timeout", FieldType::Integer)
            .default(|| json!(2000))
            .between(0, MAX_MS),
        Field::new("username", FieldType::String),
        Field::new("password", FieldType::String),
        Field::new("database", FieldType::Integer).default(|| json!(0)),
        Field::new("ssl", FieldType::Boolean).default(|| json!(false)),
        Field::new("ssl_verify", FieldType::Boolean).default(|| json!(false)),
        Field::new("server_name", FieldType::String).check(check_sni),
    ],
    entity_checks: vec![],
});

/// The plugin's `config` schema.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let limit = |name| Field::new(name, FieldType::Number).check(check_positive);
    let mut fields: Vec<Field> = PERIODS.iter().map(|p| limit(p.name())).collect();
    fields.extend([
        Field::new("limit_by", FieldType::String)
            .default(|| json!("consumer"))
            .one_of(&["consumer", "credential", "ip", "service", "header", "path"]),
        Field::new("header_name", FieldType::String).check(check_header_name),
        Field::new("path", FieldType::String).check(check_path),
        Field::new("policy", FieldType::String)
            .default(|| json!("local"))
            .check(check_policy),
        Field::new("fault_tolerant", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("redis", FieldType::Record(LazyLock::force(&REDIS))).default(|| json!({})),
        Field::new("hide_client_headers", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("error_code", FieldType::Integer)
            .default(|| json!(429))
            .between(100, 599),
        Field::new("error_message", FieldType::String).default(|| json!("API rate limit exceeded")),
        Field::new("sync_rate", FieldType::Number)
            .required()
            .default(|| json!(-1)),
    ]);
    for (name, inner) in SHORTHANDS {
        let ty = REDIS
            .field(inner)
            .map_or(FieldType::String, |f| f.ty.clone());
        let mut field = Field::new(name, ty);
        if let Some(f) = REDIS.field(inner) {
            field.between = f.between;
            field.check = f.check;
        }
        fields.push(field);
    }
    Schema {
        name: super::NAME,
        fields,
        entity_checks: vec![],
    }
});

/// `limit_by`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitBy {
    /// The consumer, else the credential, else the address.
    Consumer,
    /// The credential, else the address.
    Credential,
    /// The client address.
    Ip,
    /// The route's service, else the address.
    Service,
    /// The value of `header_name`, else the address.
    Header,
    /// `path` when the request's path is exactly it, else the address.
    Path,
}

/// `policy`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// This node's memory.
    Local,
    /// Redis, shared by the nodes.
    Redis,
}

/// `config.redis` (no `Debug`: the password is here).
#[derive(Deserialize)]
pub struct RedisConfig {
    /// Host; none means the gateway's own `redis_url` (whose scheme says whether it is TLS: the
    /// `ssl*` fields below apply to `host` only, as Kong's do).
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Connect and command timeout, ms.
    pub timeout: Option<u64>,
    /// ACL user.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret<String>>,
    /// Database number.
    pub database: Option<i64>,
    /// TLS to Redis.
    #[serde(default)]
    pub ssl: bool,
    /// With `ssl`: check the server's certificate against `lua_ssl_trusted_certificate` and the
    /// name it must carry (`server_name`, else `host`).
    #[serde(default)]
    pub ssl_verify: bool,
    /// With `ssl` and `ssl_verify`: the name the certificate must carry, sent as SNI.
    pub server_name: Option<String>,
}

impl RedisConfig {
    /// The server this names, if it names one.
    pub fn target(&self) -> Option<RedisTarget> {
        let host = self.host.clone()?;
        Some(RedisTarget {
            host,
            port: self.port.unwrap_or(6379),
            database: self.database.unwrap_or(0),
            username: self.username.clone(),
            password: self
                .password
                .as_ref()
                .map(|p| p.expose().clone())
                .filter(|p| !p.is_empty()),
            timeout_ms: self.timeout.unwrap_or(2000),
            tls: self.ssl.then(|| RedisTls {
                verify: self.ssl_verify,
                server_name: self.server_name.clone(),
            }),
        })
    }
}

/// The typed config of one instance.
#[derive(Deserialize)]
pub struct Config {
    second: Option<f64>,
    minute: Option<f64>,
    hour: Option<f64>,
    day: Option<f64>,
    month: Option<f64>,
    year: Option<f64>,
    /// What requests are counted per.
    pub limit_by: LimitBy,
    /// The header of `limit_by = header`.
    pub header_name: Option<String>,
    /// The path of `limit_by = path`.
    pub path: Option<String>,
    /// Where counts live.
    pub policy: PolicyName,
    /// Let requests through when Redis cannot count.
    pub fault_tolerant: bool,
    /// The Redis of `policy = redis`.
    pub redis: RedisConfig,
    /// Send no rate-limit headers.
    pub hide_client_headers: bool,
    /// Status of a refusal.
    pub error_code: u16,
    /// Message of a refusal.
    pub error_message: Option<String>,
}

impl Config {
    /// The limits in [`PERIODS`] order.
    pub fn limits(&self) -> [Option<f64>; 6] {
        [
            self.second,
            self.minute,
            self.hour,
            self.day,
            self.month,
            self.year,
        ]
    }
}

/// Kong's deprecated `redis_*` fields with the path of the `redis` field each stands for.
pub fn shorthand_paths() -> Vec<(&'static str, Vec<&'static str>)> {
    SHORTHANDS
        .iter()
        .map(|(flat, inner)| (*flat, vec!["redis", *inner]))
        .collect()
}

/// Folds Kong's deprecated `redis_*` fields into `redis` (they win: they are in this request,
/// since a stored config never keeps them) and drops them.
pub fn fold_shorthands(config: &mut Map<String, Value>) {
    for (flat, inner) in SHORTHANDS {
        let Some(value) = config.remove(*flat).filter(|v| !v.is_null()) else {
            continue;
        };
        if let Some(Value::Object(redis)) = config.get_mut("redis") {
            redis.insert((*inner).into(), value);
        } else {
            config.insert("redis".into(), json!({ *inner: value }));
        }
    }
}

/// A stored config as the admin API shows it: the password masked, and Kong's deprecated
/// `redis_*` fields beside `redis` (Kong 3.6+ shows both).
pub fn show(config: &mut Map<String, Value>) {
    if let Some(Value::Object(redis)) = config.get_mut("redis") {
        if let Some(password) = redis.get_mut("password") {
            if password.as_str().is_some_and(|p| !p.is_empty()) {
                *password = Value::String(MASK.into());
            }
        }
    }
    let redis = config.get("redis").and_then(Value::as_object).cloned();
    for (flat, inner) in SHORTHANDS {
        let value = redis
            .as_ref()
            .and_then(|r| r.get(*inner))
            .cloned()
            .unwrap_or(Value::Null);
        config.insert((*flat).into(), value);
    }
}

/// Kong's `at_least_one_of` on the six limits (an `@entity` error).
pub fn at_least_one_limit(config: &Map<String, Value>) -> Vec<String> {
    if PERIODS
        .iter()
        .any(|p| config.get(p.name()).is_some_and(|v| !v.is_null()))
    {
        return Vec::new();
    }
    vec![
        "at least one of these fields must be non-empty: 'config.second', 'config.minute', \
          'config.hour', 'config.day', 'config.month', 'config.year'"
            .into(),
    ]
}

fn is_set(config: &Map<String, Value>, key: &str) -> bool {
    config.get(key).is_some_and(|v| !v.is_null())
}

/// Kong's conditional requirements, and the masked password this gateway refuses to store.
///
/// # Errors
/// Field errors under `config`.
pub fn check_fields(config: &Map<String, Value>, gateway_redis: bool) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    let limit_by = config.get("limit_by").and_then(Value::as_str);
    if limit_by == Some("header") && !is_set(config, "header_name") {
        errors.insert("header_name".into(), json!("required field missing"));
    }
    if limit_by == Some("path") && !is_set(config, "path") {
        errors.insert("path".into(), json!("required field missing"));
    }
    let empty = Map::new();
    let redis = config
        .get("redis")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut redis_errors = FieldErrors::new();
    if config.get("policy").and_then(Value::as_str) == Some("redis") {
        if is_set(redis, "host") {
            for field in ["port", "timeout"] {
                if !is_set(redis, field) {
                    redis_errors.insert(field.into(), json!("required field missing"));
                }
            }
        } else if !gateway_redis {
            redis_errors.insert(
                "host".into(),
                json!(
                    "required field missing: policy 'redis' needs config.redis.host, or the \
                       gateway's redis_url setting"
                ),
            );
        } else if redis.get("ssl").and_then(Value::as_bool) == Some(true) {
            redis_errors.insert(
                "ssl".into(),
                json!(
                    "applies to config.redis.host: without a host the gateway's redis_url is \
                       used, whose scheme says whether it is TLS (rediss://)"
                ),
            );
        }
    }
    if redis.get("password").and_then(Value::as_str) == Some(MASK) {
        redis_errors.insert(
            "password".into(),
            json!("the masked value cannot be stored; send the real password"),
        );
    }
    if !redis_errors.is_empty() {
        errors.insert("redis".into(), Value::Object(redis_errors));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Kong's whole-config check: a longer window's limit is never below a shorter one's; and
/// `sync_rate`, which this gateway refuses (it counts every request as it arrives).
///
/// # Errors
/// Kong's message.
pub fn check_whole(config: &Map<String, Value>) -> Result<(), String> {
    let value = |name: &str| config.get(name).and_then(Value::as_f64);
    for (i, lower) in PERIODS.iter().enumerate() {
        let Some(v1) = value(lower.name()) else {
            continue;
        };
        for upper in &PERIODS[i + 1..] {
            if let Some(v2) = value(upper.name()).filter(|v2| *v2 < v1) {
                return Err(format!(
                    "The limit for {}({v2:.1}) cannot be lower than the limit for {}({v1:.1})",
                    upper.name(),
                    lower.name()
                ));
            }
        }
    }
    let sync_rate = value("sync_rate").unwrap_or(-1.0);
    #[expect(clippy::float_cmp, reason = "-1 is Kong's exact sentinel")]
    let realtime = sync_rate == -1.0;
    if !realtime {
        if config.get("policy").and_then(Value::as_str) != Some("redis") {
            return Err("sync_rate can only be used with the redis policy".into());
        }
        return Err(
            "sync_rate is not supported: every request is counted in Redis as it \
                    arrives, exactly across nodes; use -1 (the default)"
                .into(),
        );
    }
    Ok(())
}
