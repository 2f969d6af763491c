//! Kong's core entities (services, routes, consumers, plugins): their admin schemas and
//! [`EntityKind`]s, and the typed views the config registry builds from validated documents
//! ([`Service`], [`Route`], [`Consumer`], [`PluginInstance`], and the plugins' credentials
//! [`OAuthCredential`], [`KeyAuthCredential`] and [`AclMembership`], whose schemas live with their
//! plugins), plus [`Identities`]: one snapshot's consumers and credentials indexed for the plugins;
//! [`upstreams`]: upstreams and their targets. A leaf: it imports only the schema language.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use portcullis_stores::model::entities as defs;
use portcullis_stores::{EntityDef, TokenHash};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::schema::{Field, FieldType, Schema};

pub mod certificates;
pub mod upstreams;

/// Protocols a service may use.
pub const SERVICE_PROTOCOLS: &[&str] = &[
    "http",
    "https",
    "grpc",
    "grpcs",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
];
/// Protocols a route may use.
pub const ROUTE_PROTOCOLS: &[&str] = &[
    "http",
    "https",
    "grpc",
    "grpcs",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
];
/// HTTP methods a route may list.
const MAX_TIMEOUT: i64 = 2_147_483_646;

/// One admin-visible entity: its store constraints, schema and the key used for name addressing.
#[derive(Debug)]
pub struct EntityKind {
    /// Store definition (unique / foreign keys).
    pub def: &'static EntityDef,
    /// Field schema.
    pub schema: &'static Schema,
    /// Field used for id-or-name addressing (`name`, `username`, `instance_name`, `client_id`).
    pub endpoint_key: &'static str,
    /// How an endpoint key is found in the store when the stored field is not the input one.
    pub endpoint_lookup: EndpointLookup,
}

/// How the admin API finds a row by its endpoint key (a path segment that is not a UUID).
#[derive(Debug, Clone, Copy)]
pub enum EndpointLookup {
    /// The stored field `endpoint_key` holds the value itself.
    Plain,
    /// The stored field holds a digest of the value (`key-auth` keys: `key_hash`).
    Digest {
        /// Stored field.
        field: &'static str,
        /// The digest as stored.
        digest: fn(&str) -> String,
    },
    /// The key names a row only under its parent (`/consumers/{c}/acls/{group}`); at the top
    /// level only ids address rows.
    UnderParent,
}

fn base_fields() -> Vec<Field> {
    vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Integer),
        Field::new("updated_at", FieldType::Integer),
        Field::new("tags", FieldType::Set(Box::new(FieldType::String)))
            .check(check_tag)
            .pattern(TAG_PATTERN),
    ]
}

/// Tags: printable ASCII except `,` and `/` (see `check_tag`).
const TAG_PATTERN: &str = "[!-+\\-.0-~]{1,32}";
/// Names: see `check_name` (which also takes non-ASCII letters and digits).
const NAME_PATTERN: &str = "[A-Za-z0-9._~-]{1,32}";

fn check_tag(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s)
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && c != ',' && c != '/') =>
        {
            Ok(())
        }
        _ => Err(
            "invalid tag: expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
                .into(),
        ),
    }
}

fn check_name(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s)
            if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || ".-_~".contains(c)) =>
        {
            Ok(())
        }
        Some(s) => Err(format!(
            "invalid value '{s}': it must only contain alphanumeric and '., -, _, ~' characters"
        )),
        None => Err("expected a string".into()),
    }
}

fn check_host(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 253
        && (s.parse::<std::net::IpAddr>().is_ok()
            || s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err("invalid hostname".into())
    }
}

/// Kong's `typedefs.path`: starts with `/`, no empty segment (a service's `path`, a plugin's).
///
/// # Errors
/// Kong's message.
pub fn check_path(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.starts_with('/') {
        return Err("should start with: /".into());
    }
    if s.contains("//") {
        return Err("must not have empty segments".into());
    }
    Ok(())
}

fn check_route_path(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if let Some(re) = s.strip_prefix('~') {
        return regex::Regex::new(re)
            .map(|_| ())
            .map_err(|_| format!("invalid regex: '{re}'"));
    }
    if !s.starts_with('/') {
        return Err("should start with: / (fixed path) or ~/ (regex path)".into());
    }
    Ok(())
}

fn check_route_host(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (s, None),
    };
    let _ = port;
    let wildcards = host.matches('*').count();
    if wildcards > 1 {
        return Err(format!(
            "invalid wildcard: must have at most one wildcard in '{s}'"
        ));
    }
    if wildcards == 1 && !(host.starts_with("*.") || host.ends_with(".*")) {
        return Err(format!(
            "invalid wildcard: must be placed at leftmost or rightmost label in '{s}'"
        ));
    }
    let plain = host.trim_start_matches("*.").trim_end_matches(".*");
    check_host(&Value::String(plain.to_string())).map_err(|_| format!("invalid hostname: {s}"))
}

fn check_method(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("invalid value: {s}"))
    }
}

fn check_redirect_code(v: &Value) -> Result<(), String> {
    match v.as_i64() {
        Some(426 | 301 | 302 | 307 | 308) => Ok(()),
        _ => Err("expected one of: 426, 301, 302, 307, 308".into()),
    }
}

/// Kong's stream protocols (`tcp`, `tls`, `tls_passthrough`, `udp`) are in its schema but this
/// gateway proxies HTTP and gRPC only: a service or route naming one is refused rather than
/// stored and never served.
fn check_proxied_protocol(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(p @ ("tcp" | "tls" | "tls_passthrough" | "udp")) => Err(format!(
            "'{p}' is not supported by this gateway: it proxies http, https, grpc and grpcs (stream routes are not implemented)"
        )),
        _ => Ok(()),
    }
}

fn service_checks(doc: &Map<String, Value>) -> Vec<String> {
    let protocol = doc
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("http");
    let mut errs = Vec::new();
    if !matches!(protocol, "http" | "https" | "grpc" | "grpcs")
        && !doc.get("path").is_none_or(Value::is_null)
    {
        errs.push(format!(
            "value must be null when 'protocol' is '{protocol}'"
        ));
    }
    if !matches!(protocol, "https" | "tls")
        && [
            "client_certificate",
            "tls_verify",
            "tls_verify_depth",
            "ca_certificates",
        ]
        .iter()
        .any(|f| !doc.get(*f).is_none_or(Value::is_null))
    {
        errs.push("tls settings are only allowed when 'protocol' is 'https' or 'tls'".into());
    }
    errs
}

fn route_checks(doc: &Map<String, Value>) -> Vec<String> {
    let protocols: Vec<&str> = doc
        .get("protocols")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let set = |f: &str| match doc.get(f) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        _ => false,
    };
    let mut errs = Vec::new();
    if protocols.is_empty() {
        errs.push("length must be at least 1".into());
    }
    let http_like = protocols.iter().all(|p| matches!(*p, "http" | "https"));
    if http_like
        && !["methods", "hosts", "headers", "paths"]
            .iter()
            .any(|f| set(f))
    {
        let https_only = protocols == ["https"];
        if !(https_only && set("snis")) {
            errs.push(format!(
                "must set one of 'methods', 'hosts', 'headers', 'paths'{} when 'protocols' is '{}'",
                if protocols.contains(&"https") {
                    ", 'snis'"
                } else {
                    ""
                },
                protocols.join("', '")
            ));
        }
    }
    if !http_like && protocols.iter().any(|p| matches!(*p, "http" | "https")) {
        errs.push("mixing http(s) with other protocols is not allowed".into());
    }
    if let Some(Value::Object(h)) = doc.get("headers") {
        if h.keys().any(|k| k.eq_ignore_ascii_case("host")) {
            errs.push(
                "cannot contain 'host' header, which must be specified in the 'hosts' attribute"
                    .into(),
            );
        }
    }
    errs
}

fn consumer_checks(doc: &Map<String, Value>) -> Vec<String> {
    let present = |f: &str| {
        doc.get(f)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if present("username") || present("custom_id") {
        Vec::new()
    } else {
        vec!["at least one of these fields must be non-empty: 'custom_id', 'username'".into()]
    }
}

fn strings(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|s| Value::String((*s).into())).collect())
}

/// rustls verifies the whole chain to a trust anchor and has no setting that bounds its length,
/// so a depth would be accepted and not honoured: any value is refused (null, the default, is
/// what Kong does without one: nginx's default depth).
fn refuse_verify_depth(_: &Value) -> Result<(), String> {
    Err(
        "not supported by this gateway: its TLS library cannot bound the verified chain's \
         depth; leave it null"
            .into(),
    )
}

/// Services schema.
pub static SERVICE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("name", FieldType::String)
            .check(check_name)
            .pattern(NAME_PATTERN),
        Field::new("protocol", FieldType::String)
            .required()
            .default(|| json!("http"))
            .one_of(SERVICE_PROTOCOLS)
            .check(check_proxied_protocol),
        Field::new("host", FieldType::String)
            .required()
            .check(check_host)
            .pattern("[A-Za-z0-9_-]{1,20}(\\.[A-Za-z0-9_-]{1,20}){0,3}"),
        Field::new("port", FieldType::Integer)
            .required()
            .default(|| json!(80))
            .between(0, 65535),
        Field::new("path", FieldType::String).check(check_path),
        Field::new("retries", FieldType::Integer)
            .default(|| json!(5))
            .between(0, 32767),
        Field::new("connect_timeout", FieldType::Integer)
            .default(|| json!(60000))
            .between(1, MAX_TIMEOUT),
        Field::new("write_timeout", FieldType::Integer)
            .default(|| json!(60000))
            .between(1, MAX_TIMEOUT),
        Field::new("read_timeout", FieldType::Integer)
            .default(|| json!(60000))
            .between(1, MAX_TIMEOUT),
        Field::new("enabled", FieldType::Boolean).default(|| json!(true)),
        Field::new("client_certificate", FieldType::Foreign("certificates")),
        Field::new("tls_verify", FieldType::Boolean),
        Field::new("tls_verify_depth", FieldType::Integer)
            .between(0, 64)
            .check(refuse_verify_depth),
        Field::new(
            "ca_certificates",
            FieldType::Array(Box::new(FieldType::Uuid)),
        ),
    ]);
    Schema {
        name: "services",
        fields,
        entity_checks: vec![service_checks],
    }
});

/// Routes schema.
pub static ROUTE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("name", FieldType::String)
            .check(check_name)
            .pattern(NAME_PATTERN),
        Field::new("protocols", FieldType::Set(Box::new(FieldType::String)))
            .required()
            .default(|| strings(&["http", "https"]))
            .one_of(ROUTE_PROTOCOLS)
            .check(check_proxied_protocol),
        Field::new("methods", FieldType::Set(Box::new(FieldType::String)))
            .check(check_method)
            .pattern("[A-Z]{1,10}"),
        Field::new("hosts", FieldType::Array(Box::new(FieldType::String)))
            .check(check_route_host)
            .pattern("(\\*\\.)?[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}"),
        Field::new("paths", FieldType::Array(Box::new(FieldType::String)))
            .check(check_route_path)
            .pattern("/[A-Za-z0-9._~/-]{0,30}"),
        Field::new("headers", FieldType::StringListMap),
        Field::new("snis", FieldType::Set(Box::new(FieldType::String))),
        Field::new("sources", FieldType::Array(Box::new(FieldType::StringMap))),
        Field::new(
            "destinations",
            FieldType::Array(Box::new(FieldType::StringMap)),
        ),
        Field::new("https_redirect_status_code", FieldType::Integer)
            .required()
            .default(|| json!(426))
            .check(check_redirect_code),
        Field::new("regex_priority", FieldType::Integer).default(|| json!(0)),
        Field::new("strip_path", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("path_handling", FieldType::String)
            .default(|| json!("v0"))
            .one_of(&["v0", "v1"]),
        Field::new("preserve_host", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("request_buffering", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("response_buffering", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("service", FieldType::Foreign("services")),
    ]);
    Schema {
        name: "routes",
        fields,
        entity_checks: vec![route_checks],
    }
});

/// Consumers schema.
pub static CONSUMER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("username", FieldType::String),
        Field::new("custom_id", FieldType::String),
    ]);
    Schema {
        name: "consumers",
        fields,
        entity_checks: vec![consumer_checks],
    }
});

/// Plugins schema; `config` is validated by the named plugin's schema (see `plugins::registry`).
pub static PLUGIN_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("name", FieldType::String).required(),
        Field::new("instance_name", FieldType::String)
            .check(check_name)
            .pattern(NAME_PATTERN),
        Field::new("config", FieldType::AnyRecord),
        Field::new("protocols", FieldType::Set(Box::new(FieldType::String)))
            .required()
            .default(|| strings(&["grpc", "grpcs", "http", "https"]))
            .one_of(ROUTE_PROTOCOLS),
        Field::new("enabled", FieldType::Boolean)
            .required()
            .default(|| json!(true)),
        Field::new("service", FieldType::Foreign("services")),
        Field::new("route", FieldType::Foreign("routes")),
        Field::new("consumer", FieldType::Foreign("consumers")),
    ]);
    Schema {
        name: "plugins",
        fields,
        entity_checks: Vec::new(),
    }
});

/// Services as an admin entity.
pub static SERVICES: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::SERVICES,
    schema: &SERVICE_SCHEMA,
    endpoint_key: "name",
    endpoint_lookup: EndpointLookup::Plain,
});
/// Routes as an admin entity.
pub static ROUTES: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::ROUTES,
    schema: &ROUTE_SCHEMA,
    endpoint_key: "name",
    endpoint_lookup: EndpointLookup::Plain,
});
/// Consumers as an admin entity.
pub static CONSUMERS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::CONSUMERS,
    schema: &CONSUMER_SCHEMA,
    endpoint_key: "username",
    endpoint_lookup: EndpointLookup::Plain,
});
/// Plugins as an admin entity.
pub static PLUGINS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::PLUGINS,
    schema: &PLUGIN_SCHEMA,
    endpoint_key: "instance_name",
    endpoint_lookup: EndpointLookup::Plain,
});

/// Expands the write-only service `url` into protocol/host/port/path (Kong's rules).
///
/// # Errors
/// The field error for `url` when it does not parse.
pub fn expand_service_url(input: &mut Map<String, Value>) -> Result<(), Map<String, Value>> {
    let Some(url) = input.remove("url") else {
        return Ok(());
    };
    let mut err = Map::new();
    let Some(text) = url.as_str() else {
        err.insert("url".into(), json!("expected a string"));
        return Err(err);
    };
    let parsed = match url::Url::parse(text) {
        Ok(u) if u.host_str().is_some() => u,
        _ => {
            err.insert("url".into(), json!("missing host in url"));
            return Err(err);
        }
    };
    let scheme = parsed.scheme().to_string();
    input.insert("protocol".into(), json!(scheme));
    input.insert("host".into(), json!(parsed.host_str().unwrap_or_default()));
    let port = parsed
        .port()
        .unwrap_or(if scheme == "https" || scheme == "grpcs" {
            443
        } else {
            80
        });
    input.insert("port".into(), json!(port));
    let path = parsed.path();
    // Url normalises an absent path to "/"; Kong keeps the path only when one was written.
    let has_path = text.splitn(4, '/').nth(3).is_some();
    input.insert(
        "path".into(),
        if has_path { json!(path) } else { Value::Null },
    );
    Ok(())
}

/// Typed view of a validated service, used by the router and the proxy.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: Option<String>,
    /// `http` or `https` (others are stored but not proxied).
    pub protocol: String,
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Base path joined with the request path.
    pub path: Option<String>,
    /// Connection attempts after the first failure.
    pub retries: u32,
    /// Milliseconds.
    pub connect_timeout: u64,
    /// Milliseconds.
    pub write_timeout: u64,
    /// Milliseconds.
    pub read_timeout: u64,
    /// Verify the upstream certificate (Kong's default: no).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Certificate presented to the upstream when it asks for one (mutual TLS).
    #[serde(default)]
    pub client_certificate: Option<Ref>,
    /// CA certificates the upstream's certificate is verified against (with `tls_verify`).
    #[serde(default)]
    pub ca_certificates: Option<Vec<Uuid>>,
    /// Disabled services answer like a missing route.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The row's other fields (`created_at`, `tags`, …), kept so that the log plugins show the
    /// entity as the admin API does.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// A foreign-key reference in a document.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Ref {
    /// Referenced id.
    pub id: Uuid,
}

/// Typed view of a validated route.
#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: Option<String>,
    /// Creation time (ties in priority).
    pub created_at: i64,
    /// Allowed protocols.
    pub protocols: Vec<String>,
    /// Allowed methods.
    pub methods: Option<Vec<String>>,
    /// Host patterns.
    pub hosts: Option<Vec<String>>,
    /// Path prefixes and `~` regexes.
    pub paths: Option<Vec<String>>,
    /// Header conditions.
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// TLS server names (SNI) the route matches (https / grpcs only).
    #[serde(default)]
    pub snis: Option<Vec<String>>,
    /// Status for http requests on https-only routes.
    pub https_redirect_status_code: u16,
    /// Order among regex routes.
    pub regex_priority: i64,
    /// Remove the matched prefix upstream.
    pub strip_path: bool,
    /// Send the client's Host upstream.
    pub preserve_host: bool,
    /// Target service.
    pub service: Option<Ref>,
    /// The row's other fields (`created_at`, `tags`, …), kept so that the log plugins show the
    /// entity as the admin API does.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Typed view of a validated consumer.
#[derive(Debug, Clone, Deserialize)]
pub struct Consumer {
    /// Id.
    pub id: Uuid,
    /// Username.
    pub username: Option<String>,
    /// Custom id.
    pub custom_id: Option<String>,
    /// The row's other fields (`created_at`, `tags`, …), kept so that the log plugins show the
    /// entity as the admin API does.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Typed view of a validated plugin instance.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginInstance {
    /// Id.
    pub id: Uuid,
    /// Plugin name.
    pub name: String,
    /// Validated config with defaults.
    #[serde(default)]
    pub config: Value,
    /// Whether it runs.
    pub enabled: bool,
    /// Protocols it runs on.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Service scope.
    pub service: Option<Ref>,
    /// Route scope.
    pub route: Option<Ref>,
    /// Consumer scope.
    pub consumer: Option<Ref>,
}

#[derive(Deserialize)]
struct CredentialRef {
    id: Uuid,
}

#[derive(Deserialize)]
struct RawCredential {
    id: Uuid,
    consumer: CredentialRef,
    name: String,
    client_id: String,
    client_secret: String,
    hash_secret: bool,
    redirect_uris: Option<Vec<String>>,
    client_type: String,
}

/// An OAuth 2.0 client (an `oauth2_credentials` row) as the router snapshot indexes it and the
/// `oauth2` plugin authenticates against. Its schema and secret check live with the plugin
/// (`plugins::oauth2::credentials`, `plugins::oauth2::verified`); the view lives here so the
/// router does not import plugins.
#[derive(Debug, Clone)]
pub struct OAuthCredential {
    /// Credential id.
    pub id: Uuid,
    /// Owning consumer.
    pub consumer_id: Uuid,
    /// Display name.
    pub name: String,
    /// Public client identifier.
    pub client_id: String,
    /// Plain secret, or a hash when `hash_secret`.
    pub client_secret: String,
    /// Whether `client_secret` is hashed.
    pub hash_secret: bool,
    /// Registered redirect URIs (`None`: the client may only use client_credentials).
    pub redirect_uris: Option<Vec<String>>,
    /// Public clients send no secret.
    pub public: bool,
}

impl OAuthCredential {
    /// Typed view of a stored document.
    ///
    /// # Errors
    /// A document that does not satisfy the schema.
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let raw: RawCredential =
            serde_json::from_value(Value::Object(doc.clone())).map_err(|e| e.to_string())?;
        Ok(Self {
            id: raw.id,
            consumer_id: raw.consumer.id,
            name: raw.name,
            client_id: raw.client_id,
            client_secret: raw.client_secret,
            hash_secret: raw.hash_secret,
            redirect_uris: raw.redirect_uris,
            public: raw.client_type == "public",
        })
    }
}

#[derive(Deserialize)]
struct RawKeyAuth {
    id: Uuid,
    consumer: CredentialRef,
    key_hash: String,
}

/// An API key (a `keyauth_credentials` row) as the router snapshot indexes it and the `key-auth`
/// plugin authenticates against: only the key's SHA-256 digest is known. Its schema lives with the
/// plugin (`plugins::key_auth::credentials`).
#[derive(Debug, Clone)]
pub struct KeyAuthCredential {
    /// Credential id (sent upstream as `X-Credential-Identifier`).
    pub id: Uuid,
    /// Owning consumer.
    pub consumer_id: Uuid,
    /// SHA-256 digest of the key.
    pub key_hash: TokenHash,
}

impl KeyAuthCredential {
    /// Typed view of a stored document.
    ///
    /// # Errors
    /// A document that does not satisfy the schema.
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let raw: RawKeyAuth =
            serde_json::from_value(Value::Object(doc.clone())).map_err(|e| e.to_string())?;
        let key_hash = TokenHash::from_hex(&raw.key_hash).ok_or("key_hash is not a digest")?;
        Ok(Self {
            id: raw.id,
            consumer_id: raw.consumer.id,
            key_hash,
        })
    }
}

#[derive(Deserialize)]
struct RawAcl {
    id: Uuid,
    consumer: CredentialRef,
    group: String,
}

/// A consumer's membership of one group (an `acls` row), which the `acl` plugin checks.
#[derive(Debug, Clone)]
pub struct AclMembership {
    /// Row id.
    pub id: Uuid,
    /// The member.
    pub consumer_id: Uuid,
    /// Group name.
    pub group: String,
}

impl AclMembership {
    /// Typed view of a stored document.
    ///
    /// # Errors
    /// A document that does not satisfy the schema.
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let raw: RawAcl =
            serde_json::from_value(Value::Object(doc.clone())).map_err(|e| e.to_string())?;
        Ok(Self {
            id: raw.id,
            consumer_id: raw.consumer.id,
            group: raw.group,
        })
    }
}

/// One consumer's groups, prepared once per snapshot for the `acl` plugin: the names to match and
/// the `X-Consumer-Groups` value, so a request neither joins nor allocates.
#[derive(Debug, Clone, Default)]
pub struct ConsumerGroups {
    /// Group names, sorted (Kong lists them in storage order, which no client can rely on).
    pub names: Vec<String>,
    /// The names joined with `", "` (Kong's header value).
    pub header: String,
}

impl ConsumerGroups {
    /// Whether the consumer belongs to any of `groups`.
    pub fn any_of(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.names.iter().any(|n| n == g))
    }
}

/// Entities by id, looked up on every authenticated request. Ids are UUIDs that only the admin
/// API sets, so foldhash (several times cheaper than SipHash) needs no flood resistance.
pub type IdMap<T> = HashMap<Uuid, Arc<T>, foldhash::fast::RandomState>;

/// The identity rows of one configuration snapshot, before indexing.
#[derive(Default)]
pub struct IdentityParts {
    /// Consumers.
    pub consumers: Vec<Arc<Consumer>>,
    /// OAuth 2.0 clients.
    pub oauth2: Vec<Arc<OAuthCredential>>,
    /// API keys.
    pub keyauth: Vec<Arc<KeyAuthCredential>>,
    /// Group memberships.
    pub acls: Vec<Arc<AclMembership>>,
}

/// The consumers and credentials of one configuration snapshot, indexed the ways plugins look
/// them up. Built by the router snapshot and shared whole (one reference count) with each
/// request's plugins, so plugins read identities without depending on the router.
#[derive(Default)]
pub struct Identities {
    /// Consumers by id.
    pub consumers: IdMap<Consumer>,
    /// Consumers by username.
    pub consumers_by_username: HashMap<String, Arc<Consumer>>,
    /// OAuth 2.0 credentials by client_id.
    pub oauth2_by_client_id: HashMap<String, Arc<OAuthCredential>>,
    /// OAuth 2.0 credentials by id.
    pub oauth2_by_id: IdMap<OAuthCredential>,
    /// API keys by the digest of the key. The digest is uniformly distributed and chosen by no
    /// one, so foldhash needs no flood resistance here either.
    pub keyauth_by_hash: HashMap<TokenHash, Arc<KeyAuthCredential>, foldhash::fast::RandomState>,
    /// Groups by consumer id (consumers without groups are absent).
    pub groups: IdMap<ConsumerGroups>,
}

impl Identities {
    /// Indexes the given consumers and credentials.
    pub fn build(parts: IdentityParts) -> Self {
        let IdentityParts {
            consumers,
            oauth2,
            keyauth,
            mut acls,
        } = parts;
        acls.sort_by(|a, b| a.group.cmp(&b.group));
        let mut groups: HashMap<Uuid, ConsumerGroups, foldhash::fast::RandomState> =
            HashMap::default();
        for m in acls {
            let entry = groups.entry(m.consumer_id).or_default();
            if !entry.header.is_empty() {
                entry.header.push_str(", ");
            }
            entry.header.push_str(&m.group);
            entry.names.push(m.group.clone());
        }
        Self {
            consumers_by_username: consumers
                .iter()
                .filter_map(|c| c.username.clone().map(|u| (u, c.clone())))
                .collect(),
            consumers: consumers.into_iter().map(|c| (c.id, c)).collect(),
            oauth2_by_client_id: oauth2
                .iter()
                .map(|c| (c.client_id.clone(), c.clone()))
                .collect(),
            oauth2_by_id: oauth2.into_iter().map(|c| (c.id, c)).collect(),
            keyauth_by_hash: keyauth.into_iter().map(|c| (c.key_hash, c)).collect(),
            groups: groups
                .into_iter()
                .map(|(id, g)| (id, Arc::new(g)))
                .collect(),
        }
    }

    /// Finds a consumer by id or username (the `anonymous` setting accepts either).
    pub fn consumer_by_id_or_name(&self, key: &str) -> Option<&Arc<Consumer>> {
        Uuid::parse_str(key)
            .ok()
            .and_then(|id| self.consumers.get(&id))
            .or_else(|| self.consumers_by_username.get(key))
    }
}
