//! Kong's `upstreams` and `targets`: their admin schemas (Kong 3.x fields, defaults and checks,
//! with Kong's error texts), the address rules of both (`normalize_ip`: a name, an IPv4 or an
//! IPv6 address, an optional port; targets default to port 8000), and the typed views the config
//! registry hands to the router's balancer. What Portcullis does not do yet is refused here, with
//! the setting named, so that no accepted setting is silently ignored.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{base_fields, check_path, EntityKind, Ref};
use crate::schema::{self, Coerce, Field, FieldErrors, FieldType, Schema};
use portcullis_stores::model::entities as defs;

/// The port of a target written without one (Kong's `DEFAULT_PORT`).
pub const DEFAULT_TARGET_PORT: u16 = 8000;

/// Algorithms this build balances with; Kong's others are refused by name.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "round-robin",
    "consistent-hashing",
    "least-connections",
    "latency",
];

const HASH_ON: &[&str] = &[
    "none",
    "consumer",
    "ip",
    "header",
    "cookie",
    "path",
    "query_arg",
    "uri_capture",
];

/// What kind of address a host string is (Kong's `hostname_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// A host name.
    Name,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address (written in brackets when a port follows).
    Ipv6,
}

/// A parsed host with an optional port, normalised as Kong's `normalize_ip` does (IPv4 without
/// leading zeros, IPv6 fully expanded in lower case, names as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Name or normalised address.
    pub host: String,
    /// Kind of `host`.
    pub kind: AddressKind,
    /// Port, when one was written.
    pub port: Option<u16>,
}

impl Address {
    /// Parses `text` (`name`, `name:port`, `ipv4`, `ipv4:port`, `ipv6`, `[ipv6]:port`).
    ///
    /// # Errors
    /// Kong's reason (`invalid hostname: …`, `invalid ipv4 address: …`, `invalid port number`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let colons = text.matches(':').count();
        if colons > 1 {
            return parse_ipv6(text);
        }
        let without_colons = text.replace(':', "");
        if !without_colons.is_empty()
            && without_colons
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
        {
            return parse_ipv4(text);
        }
        parse_name(text)
    }

    /// `host:port` as Kong formats a target (`[v6]:port` for IPv6).
    pub fn format(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        match self.kind {
            AddressKind::Ipv6 => format!("[{}]:{port}", self.host),
            _ => format!("{}:{port}", self.host),
        }
    }
}

fn port_of(text: &str) -> Result<u16, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| "invalid port number".to_string())?;
    u16::try_from(n).map_err(|_| "invalid port number".to_string())
}

fn parse_ipv4(text: &str) -> Result<Address, String> {
    let invalid = || format!("invalid ipv4 address: {text}");
    let (addr, port) = match text.split_once(':') {
        Some((a, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (a, Some(p)),
        Some(_) => return Err(invalid()),
        None => (text, None),
    };
    let parts: Vec<&str> = addr.split('.').collect();
    if parts.len() != 4
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 3 || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(invalid());
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        *o = p.parse().map_err(|_| invalid())?;
    }
    let port = port.map(port_of).transpose()?;
    Ok(Address {
        host: std::net::Ipv4Addr::from(octets).to_string(),
        kind: AddressKind::Ipv4,
        port,
    })
}

fn parse_ipv6(text: &str) -> Result<Address, String> {
    let invalid = || format!("invalid ipv6 address: {text}");
    let (addr, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']').ok_or_else(invalid)?;
            let port = match after {
                "" => None,
                p => {
                    let digits = p
                        .strip_prefix(':')
                        .ok_or_else(|| "invalid ipv6 address".to_string())?;
                    if !digits.chars().all(|c| c.is_ascii_digit()) {
                        return Err("invalid ipv6 address".into());
                    }
                    Some(port_of(digits)?)
                }
            };
            (inside, port)
        }
        None => (text, None),
    };
    let parsed: std::net::Ipv6Addr = addr.parse().map_err(|_| invalid())?;
    let host = parsed
        .segments()
        .iter()
        .map(|s| format!("{s:04x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Address {
        host,
        kind: AddressKind::Ipv6,
        port,
    })
}

fn parse_name(text: &str) -> Result<Address, String> {
    let invalid = || format!("invalid hostname: {text}");
    let (name, port) = match text.rsplit_once(':') {
        Some((n, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            (n, Some(port_of(p)?))
        }
        _ => (text, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(invalid());
    }
    let segments: Vec<&str> = name.split('.').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.ends_with('-') || (segment.is_empty() && i != last) {
            return Err(invalid());
        }
    }
    Ok(Address {
        host: name.to_string(),
        kind: AddressKind::Name,
        port,
    })
}

/// Kong's check of an upstream name: a host name, no address, no port.
///
/// # Errors
/// Kong's text, e.g. `Invalid name ('1.2.3.4'); no ip addresses allowed`.
pub fn check_upstream_name(name: &str) -> Result<(), String> {
    match Address::parse(name) {
        Err(_) => Err(format!("Invalid name ('{name}'); must be a valid hostname")),
        Ok(a) if a.kind != AddressKind::Name => {
            Err(format!("Invalid name ('{name}'); no ip addresses allowed"))
        }
        Ok(a) if a.port.is_some() => Err(format!("Invalid name ('{name}'); no port allowed")),
        Ok(_) => Ok(()),
    }
}

fn check_name_field(v: &Value) -> Result<(), String> {
    check_upstream_name(v.as_str().unwrap_or_default())
}

fn check_host_with_optional_port(v: &Value) -> Result<(), String> {
    Address::parse(v.as_str().unwrap_or_default()).map(drop)
}

fn check_header_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "bad header name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        ))
    }
}

fn check_cookie_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let bad = |c: char| c.is_ascii_control() || c == ' ' || "()<>@,;:\\\"/?={}[]".contains(c);
    if s.chars().any(bad) {
        Err("contains one or more invalid characters. ASCII control characters (0-31;127), space, tab and the characters ()<>@,;:\\\"/?={}[] are not allowed.".into())
    } else {
        Ok(())
    }
}

fn check_not_empty(v: &Value) -> Result<(), String> {
    if v.as_str().is_some_and(str::is_empty) {
        Err("length must be at least 1".into())
    } else {
        Ok(())
    }
}

fn check_target(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    Address::parse(s)
        .map(drop)
        .map_err(|_| format!("Invalid target ('{s}'); not a valid hostname or ip address"))
}

fn check_status(v: &Value) -> Result<(), String> {
    match v.as_i64() {
        Some(100..=999) => Ok(()),
        _ => Err("value should be between 100 and 999".into()),
    }
}

fn statuses(list: &[u16]) -> Value {
    Value::Array(list.iter().map(|s| json!(s)).collect())
}

fn counter(name: &'static str) -> Field {
    Field::new(name, FieldType::Integer)
        .default(|| json!(0))
        .between(0, 255)
}

fn interval() -> Field {
    Field::new("interval", FieldType::Number)
        .default(|| json!(0))
        .between(0, 65535)
}

fn status_list(default: fn() -> Value) -> Field {
    Field::new(
        "http_statuses",
        FieldType::Array(Box::new(FieldType::Integer)),
    )
    .default(default)
    .check(check_status)
}

fn record_schema(name: &'static str, fields: Vec<Field>) -> Schema {
    Schema {
        name,
        fields,
        entity_checks: Vec::new(),
    }
}

static ACTIVE_HEALTHY: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "healthy",
        vec![
            interval(),
            status_list(|| statuses(&[200, 302])),
            counter("successes"),
        ],
    )
});
static ACTIVE_UNHEALTHY: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "unhealthy",
        vec![
            interval(),
            status_list(|| statuses(&[429, 404, 500, 501, 502, 503, 504, 505])),
            counter("tcp_failures"),
            counter("timeouts"),
            counter("http_failures"),
        ],
    )
});
static PASSIVE_HEALTHY: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "healthy",
        vec![
            status_list(|| {
                statuses(&[
                    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                    306, 307, 308,
                ])
            }),
            counter("successes"),
        ],
    )
});
static PASSIVE_UNHEALTHY: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "unhealthy",
        vec![
            status_list(|| statuses(&[429, 500, 503])),
            counter("tcp_failures"),
            counter("timeouts"),
            counter("http_failures"),
        ],
    )
});

fn check_type() -> Field {
    Field::new("type", FieldType::String)
        .default(|| json!("http"))
        .one_of(&["tcp", "http", "https", "grpc", "grpcs"])
}

fn defaults_of(schema: &'static Schema) -> Value {
    schema::validate(schema, &Map::new(), Coerce::No)
        .map(Value::Object)
        .unwrap_or(Value::Null)
}

static ACTIVE: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "active",
        vec![
            check_type(),
            Field::new("timeout", FieldType::Number)
                .default(|| json!(1))
                .between(0, 65535),
            Field::new("concurrency", FieldType::Integer)
                .default(|| json!(10))
                .between(1, 1 << 31),
            Field::new("http_path", FieldType::String)
                .default(|| json!("/"))
                .check(check_path),
            Field::new("https_sni", FieldType::String),
            Field::new("https_verify_certificate", FieldType::Boolean)
                .required()
                .default(|| json!(true)),
            Field::new("headers", FieldType::StringListMap),
            Field::new("healthy", FieldType::Record(&ACTIVE_HEALTHY))
                .default(|| defaults_of(&ACTIVE_HEALTHY)),
            Field::new("unhealthy", FieldType::Record(&ACTIVE_UNHEALTHY))
                .default(|| defaults_of(&ACTIVE_UNHEALTHY)),
        ],
    )
});
static PASSIVE: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "passive",
        vec![
            check_type(),
            Field::new("healthy", FieldType::Record(&PASSIVE_HEALTHY))
                .default(|| defaults_of(&PASSIVE_HEALTHY)),
            Field::new("unhealthy", FieldType::Record(&PASSIVE_UNHEALTHY))
                .default(|| defaults_of(&PASSIVE_UNHEALTHY)),
        ],
    )
});
static HEALTHCHECKS: LazyLock<Schema> = LazyLock::new(|| {
    record_schema(
        "healthchecks",
        vec![
            Field::new("active", FieldType::Record(&ACTIVE)).default(|| defaults_of(&ACTIVE)),
            Field::new("passive", FieldType::Record(&PASSIVE)).default(|| defaults_of(&PASSIVE)),
            Field::new("threshold", FieldType::Number)
                .default(|| json!(0))
                .between(0, 100),
        ],
    )
});

fn hash_field(name: &'static str) -> Field {
    Field::new(name, FieldType::String)
        .default(|| json!("none"))
        .one_of(HASH_ON)
}

/// Upstreams schema (Kong 3.x fields and defaults).
pub static UPSTREAM_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("name", FieldType::String)
            .required()
            .check(check_name_field)
            .pattern("[a-z]([a-z0-9-]{0,19}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,19}[a-z0-9])?){0,3}"),
        Field::new("algorithm", FieldType::String)
            .default(|| json!("round-robin"))
            .one_of(&[
                "consistent-hashing",
                "least-connections",
                "round-robin",
                "latency",
            ]),
        hash_field("hash_on"),
        hash_field("hash_fallback"),
        Field::new("hash_on_header", FieldType::String).check(check_header_name),
        Field::new("hash_fallback_header", FieldType::String).check(check_header_name),
        Field::new("hash_on_cookie", FieldType::String).check(check_cookie_name),
        Field::new("hash_on_cookie_path", FieldType::String)
            .default(|| json!("/"))
            .check(check_path),
        Field::new("hash_on_query_arg", FieldType::String).check(check_not_empty),
        Field::new("hash_fallback_query_arg", FieldType::String).check(check_not_empty),
        Field::new("hash_on_uri_capture", FieldType::String).check(check_not_empty),
        Field::new("hash_fallback_uri_capture", FieldType::String).check(check_not_empty),
        Field::new("slots", FieldType::Integer)
            .default(|| json!(10000))
            .between(10, 65536),
        Field::new("healthchecks", FieldType::Record(&HEALTHCHECKS))
            .default(|| defaults_of(&HEALTHCHECKS)),
        Field::new("host_header", FieldType::String).check(check_host_with_optional_port),
        Field::new("client_certificate", FieldType::Foreign("certificates")),
        Field::new("use_srv_name", FieldType::Boolean).default(|| json!(false)),
    ]);
    Schema {
        name: "upstreams",
        fields,
        entity_checks: Vec::new(),
    }
});

/// Targets schema (Kong 3.x: millisecond timestamps, weight 0..65535, default 100).
pub static TARGET_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Number),
        Field::new("updated_at", FieldType::Number),
        Field::new("tags", FieldType::Set(Box::new(FieldType::String)))
            .check(super::check_tag)
            .pattern(super::TAG_PATTERN),
    ];
    fields.extend([
        Field::new("upstream", FieldType::Foreign("upstreams")).required(),
        Field::new("target", FieldType::String)
            .required()
            .check(check_target)
            .pattern("127\\.0\\.0\\.1:[1-9][0-9]{3}"),
        Field::new("weight", FieldType::Integer)
            .default(|| json!(100))
            .between(0, 65535),
    ]);
    Schema {
        name: "targets",
        fields,
        entity_checks: Vec::new(),
    }
});

/// Upstreams as an admin entity.
pub static UPSTREAMS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::UPSTREAMS,
    schema: &UPSTREAM_SCHEMA,
    endpoint_key: "name",
    endpoint_lookup: super::EndpointLookup::Plain,
});
/// Targets as an admin entity (reached only under their upstream).
pub static TARGETS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::TARGETS,
    schema: &TARGET_SCHEMA,
    endpoint_key: "target",
    // `host:port` is unique only within its upstream.
    endpoint_lookup: super::EndpointLookup::UnderParent,
});

/// Kong's upstream shorthands, applied to the input before validation: `least-connections` and
/// `latency` clear `hash_on`; a `hash_on` of `none` means round-robin, any other value
/// consistent hashing; a `hash_on` of null means `none`.
pub fn expand_upstream_shorthands(input: &mut Map<String, Value>) {
    if let Some(Value::String(a)) = input.get("algorithm") {
        if a == "least-connections" || a == "latency" {
            input.insert("hash_on".into(), Value::Null);
        }
    }
    match input.get("hash_on").cloned() {
        None => {}
        Some(Value::Null) => {
            input.insert("hash_on".into(), json!("none"));
        }
        Some(Value::String(h)) if h == "none" => {
            input.insert("algorithm".into(), json!("round-robin"));
        }
        Some(_) => {
            input.insert("algorithm".into(), json!("consistent-hashing"));
        }
    }
}

/// A condition of Kong's upstream entity checks: when `if_field` equals `if_value`, `then_field`
/// must be set (`None`) or one of the listed values.
type Conditional = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static [&'static str]>,
);

const CONDITIONALS: &[Conditional] = &[
    ("hash_on", "header", "hash_on_header", None),
    ("hash_fallback", "header", "hash_fallback_header", None),
    ("hash_on", "cookie", "hash_on_cookie", None),
    ("hash_fallback", "cookie", "hash_on_cookie", None),
    ("hash_on", "none", "hash_fallback", Some(&["none"])),
    ("hash_on", "cookie", "hash_fallback", Some(&["none"])),
    (
        "hash_on",
        "consumer",
        "hash_fallback",
        Some(&[
            "none",
            "ip",
            "header",
            "cookie",
            "path",
            "query_arg",
            "uri_capture",
        ]),
    ),
    (
        "hash_on",
        "ip",
        "hash_fallback",
        Some(&[
            "none",
            "consumer",
            "header",
            "cookie",
            "path",
            "query_arg",
            "uri_capture",
        ]),
    ),
    (
        "hash_on",
        "path",
        "hash_fallback",
        Some(&[
            "none",
            "consumer",
            "header",
            "cookie",
            "query_arg",
            "ip",
            "uri_capture",
        ]),
    ),
    ("hash_on", "query_arg", "hash_on_query_arg", None),
    (
        "hash_fallback",
        "query_arg",
        "hash_fallback_query_arg",
        None,
    ),
    ("hash_on", "uri_capture", "hash_on_uri_capture", None),
    (
        "hash_fallback",
        "uri_capture",
        "hash_fallback_uri_capture",
        None,
    ),
];

const DISTINCT: &[(&str, &str)] = &[
    ("hash_on_header", "hash_fallback_header"),
    ("hash_on_query_arg", "hash_fallback_query_arg"),
    ("hash_on_uri_capture", "hash_fallback_uri_capture"),
];

/// Validates an upstream as Kong does: field rules, then the conditional and distinct entity
/// checks (a failed conditional replaces the field's own error and names its cause in
/// `@entity`), then what this build refuses.
///
/// # Errors
/// Every problem found, in Kong's `fields` shape.
pub fn validate_upstream(
    input: &Map<String, Value>,
    coerce: Coerce,
) -> Result<Map<String, Value>, FieldErrors> {
    let validated = schema::validate(&UPSTREAM_SCHEMA, input, coerce);
    let mut errors = validated.as_ref().err().cloned().unwrap_or_default();
    let value = |f: &str| -> Option<Value> {
        match input.get(f) {
            Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
            None => UPSTREAM_SCHEMA
                .field(f)
                .and_then(|field| field.default)
                .map(|d| d()),
        }
    };
    let mut entity = Vec::new();
    for (if_field, if_value, then_field, allowed) in CONDITIONALS {
        if value(if_field).as_ref().and_then(Value::as_str) != Some(if_value) {
            continue;
        }
        let then = value(then_field);
        let failure = match (allowed, then.as_ref().and_then(Value::as_str)) {
            (None, None) => Some("required field missing".to_string()),
            (Some(list), v) if !v.is_some_and(|v| list.contains(&v)) => {
                Some(format!("expected one of: {}", list.join(", ")))
            }
            _ => None,
        };
        if let Some(message) = failure {
            errors.insert((*then_field).into(), Value::String(message));
            let text = format!("failed conditional validation given value of field '{if_field}'");
            if !entity.contains(&text) {
                entity.push(text);
            }
        }
    }
    for (a, b) in DISTINCT {
        if errors.contains_key(*a) || errors.contains_key(*b) {
            continue;
        }
        if let (Some(x), Some(y)) = (value(a), value(b)) {
            if x == y {
                entity.push(format!(
                    "values of these fields must be distinct: '{a}', '{b}'"
                ));
            }
        }
    }
    if !entity.is_empty() {
        errors.insert(
            "@entity".into(),
            Value::Array(entity.into_iter().map(Value::String).collect()),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let doc = validated.unwrap_or_default();
    refuse_unsupported(&doc)?;
    Ok(doc)
}

/// Refuses the settings this build accepts in Kong's schema but does not honour yet: algorithms
/// it does not balance with, gRPC health checks, `https_sni`, a health threshold, client
/// certificates and SRV names.
fn refuse_unsupported(doc: &Map<String, Value>) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    if let Some(a) = doc.get("algorithm").and_then(Value::as_str) {
        if !SUPPORTED_ALGORITHMS.contains(&a) {
            errors.insert(
                "algorithm".into(),
                json!(format!(
                    "'{a}' is not supported by this gateway (supported: {})",
                    SUPPORTED_ALGORITHMS.join(", ")
                )),
            );
        }
    }
    if let Some(checks) = doc.get("healthchecks") {
        let mut unsupported = Map::new();
        for kind in ["active", "passive"] {
            let kind_type = checks
                .pointer(&format!("/{kind}/type"))
                .and_then(Value::as_str);
            if let Some(t @ ("grpc" | "grpcs")) = kind_type {
                unsupported.insert(
                    kind.into(),
                    json!({"type": format!("'{t}' health checks are not supported by this gateway (supported: http, https, tcp)")}),
                );
            }
        }
        if !checks
            .pointer("/active/https_sni")
            .is_none_or(Value::is_null)
        {
            let active = unsupported.entry("active").or_insert_with(|| json!({}));
            active["https_sni"] = json!(
                "https_sni is not supported by this gateway: probes send the target's host name"
            );
        }
        if checks
            .get("threshold")
            .and_then(Value::as_f64)
            .is_some_and(|t| t != 0.0)
        {
            unsupported.insert(
                "threshold".into(),
                json!("a health threshold is not supported by this gateway: only 0 is accepted"),
            );
        }
        if !unsupported.is_empty() {
            errors.insert("healthchecks".into(), Value::Object(unsupported));
        }
    }
    if !doc.get("client_certificate").is_none_or(Value::is_null) {
        errors.insert(
            "client_certificate".into(),
            json!("client certificates are not supported by this gateway"),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Kong's target formatting, applied before validation: the address normalised and the default
/// port added (`konghq.test` → `konghq.test:8000`).
///
/// # Errors
/// `target`: Kong's `Invalid target; not a valid hostname or ip address`.
pub fn format_target(input: &mut Map<String, Value>) -> Result<(), FieldErrors> {
    let Some(Value::String(text)) = input.get("target") else {
        return Ok(());
    };
    match Address::parse(text) {
        Ok(a) => {
            input.insert("target".into(), json!(a.format(DEFAULT_TARGET_PORT)));
            Ok(())
        }
        Err(_) => {
            let mut e = FieldErrors::new();
            e.insert(
                "target".into(),
                json!("Invalid target; not a valid hostname or ip address"),
            );
            Err(e)
        }
    }
}

/// Typed view of a validated upstream, for the router's balancer.
#[derive(Debug, Clone, Deserialize)]
pub struct Upstream {
    /// Id.
    pub id: Uuid,
    /// The host name services use to reach it.
    pub name: String,
    /// Balancing algorithm (only the supported ones are stored).
    pub algorithm: String,
    /// What consistent hashing hashes (`none`, `consumer`, `ip`, `header`, `cookie`, `path`,
    /// `query_arg`, `uri_capture`).
    pub hash_on: String,
    /// What it hashes when `hash_on` gives nothing.
    pub hash_fallback: String,
    /// Header hashed when `hash_on` is `header`.
    pub hash_on_header: Option<String>,
    /// Header hashed when `hash_fallback` is `header`.
    pub hash_fallback_header: Option<String>,
    /// Query argument hashed when `hash_on` is `query_arg`.
    pub hash_on_query_arg: Option<String>,
    /// Query argument hashed when `hash_fallback` is `query_arg`.
    pub hash_fallback_query_arg: Option<String>,
    /// Cookie hashed when `hash_on` or `hash_fallback` is `cookie` (generated and set on the
    /// answer when the request has none).
    pub hash_on_cookie: Option<String>,
    /// `Path` of the generated cookie.
    pub hash_on_cookie_path: Option<String>,
    /// Named capture group of the route's regex path hashed when `hash_on` is `uri_capture`.
    pub hash_on_uri_capture: Option<String>,
    /// Named capture group hashed when `hash_fallback` is `uri_capture`.
    pub hash_fallback_uri_capture: Option<String>,
    /// Positions of the consistent-hashing table (10..65536).
    pub slots: u32,
    /// `Host` sent to the targets instead of the target's own name.
    pub host_header: Option<String>,
    /// `Host` is an SRV record's target name instead of the target's (when the target's name
    /// has SRV records).
    #[serde(default)]
    pub use_srv_name: bool,
    /// How the targets' health is checked.
    #[serde(default)]
    pub healthchecks: HealthChecks,
}

/// An upstream's `healthchecks` (Kong's record; every field has Kong's default).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HealthChecks {
    /// Probes sent by the gateway on an interval.
    #[serde(default)]
    pub active: ActiveChecks,
    /// Outcomes of proxied requests (the circuit breaker).
    #[serde(default)]
    pub passive: PassiveChecks,
}

/// What a check looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// Connections only: any answer is a success.
    Tcp,
    /// HTTP statuses over plain connections.
    #[default]
    Http,
    /// HTTP statuses over TLS.
    Https,
    /// gRPC health (refused by the schema checks of this build).
    Grpc,
    /// gRPC health over TLS (refused likewise).
    Grpcs,
}

/// Kong's `healthy` / `unhealthy` records (fields absent from one of them stay 0 or empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Seconds between active probes of targets in this state (0: none).
    pub interval: f64,
    /// Statuses that count for this state.
    pub http_statuses: Vec<u16>,
    /// Consecutive successes that make a target healthy.
    pub successes: u32,
    /// Consecutive bad statuses that make a target unhealthy.
    pub http_failures: u32,
    /// Consecutive connection failures that make a target unhealthy.
    pub tcp_failures: u32,
    /// Consecutive timeouts that make a target unhealthy.
    pub timeouts: u32,
}

/// `healthchecks.active`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ActiveChecks {
    /// What the probe looks at.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Seconds a probe may take.
    pub timeout: f64,
    /// Probes in flight at once.
    pub concurrency: u32,
    /// Path probed.
    pub http_path: String,
    /// Verify the target's certificate (`https`).
    pub https_verify_certificate: bool,
    /// Headers sent with each probe.
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// Probing healthy targets.
    pub healthy: Counters,
    /// Probing unhealthy targets.
    pub unhealthy: Counters,
}

impl Default for ActiveChecks {
    fn default() -> Self {
        Self {
            kind: CheckType::Http,
            timeout: 1.0,
            concurrency: 10,
            http_path: "/".into(),
            https_verify_certificate: true,
            headers: None,
            healthy: Counters::default(),
            unhealthy: Counters::default(),
        }
    }
}

/// `healthchecks.passive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PassiveChecks {
    /// What counts.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Outcomes that count as successes.
    pub healthy: Counters,
    /// Outcomes that count as failures.
    pub unhealthy: Counters,
}

/// Typed view of a validated target.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    /// Id.
    pub id: Uuid,
    /// Owning upstream.
    pub upstream: Ref,
    /// `host:port`, formatted.
    pub target: String,
    /// Share of the traffic; 0 takes none.
    pub weight: u32,
}

impl Target {
    /// The target's address, parsed.
    ///
    /// # Errors
    /// A stored target that no longer parses (never written by the admin API).
    pub fn address(&self) -> Result<Address, String> {
        Address::parse(&self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::{check_upstream_name, Address};

    #[test]
    fn addresses_normalise_as_kong_does() {
        let cases = [
            ("konghq.test", "konghq.test:8000"),
            ("konghq.test:123", "konghq.test:123"),
            ("127.000.0.1:80", "127.0.0.1:80"),
            ("::1", "[0000:0000:0000:0000:0000:0000:0000:0001]:8000"),
            (
                "[0000:0000:0000:0000:0000:0000:0000:0001]:8192",
                "[0000:0000:0000:0000:0000:0000:0000:0001]:8192",
            ),
            ("localhost:8192", "localhost:8192"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Address::parse(input).map(|a| a.format(8000)).as_deref(),
                Ok(want),
                "{input}"
            );
        }
        for bad in [
            "some invalid host name",
            "a-.b",
            "1.2.3.4.5",
            "x:70000",
            "[::1]x",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_upstream_name("1.2.3.4"),
            Err("Invalid name ('1.2.3.4'); no ip addresses allowed".into())
        );
        assert_eq!(
            check_upstream_name("a.test:80"),
            Err("Invalid name ('a.test:80'); no port allowed".into())
        );
        assert!(check_upstream_name("my-upstream").is_ok());
    }
}
