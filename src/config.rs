//! Layered, typed settings: defaults, then a file (TOML, or Kong's `kong.conf` format for a
//! `*.conf`), then `PORTCULLIS_<KEY>` or Kong's `KONG_<KEY>` environment variables. Key names
//! follow kong.conf so Kong users know them. Every value is checked at load, so `config check`
//! refuses exactly what `serve` would: an unknown key or `PORTCULLIS_*`/`KONG_*` variable (except
//! `PORTCULLIS_TEST_*`, the test suite's own), a wrong type, or a value out of range.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actix_web::http::header::HeaderName;
use ipnet::IpNet;
use portcullis_stores::redis_conn::RedisTrust;
use serde::{Deserialize, Serialize, Serializer};

use crate::gateway_headers::{GatewayHeaders, DEFAULT_HEADERS, DEFAULT_HEADERS_UPSTREAM};

/// A value that must never be printed: `Debug` and `Serialize` show `********`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(v: T) -> Self {
        Self(v)
    }
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("********")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

/// Which stores hold configuration and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// Embedded, in process; nothing survives a restart.
    Memory,
    /// Durable, shared by the nodes of a cluster.
    Postgres,
    /// DB-less (Kong's `database = off`): the configuration comes from `declarative_config` or
    /// `POST /config` and the admin API refuses single-entity writes; held in memory.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of the gateway.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Proxy listeners: `addr[ ssl], …` or `off`.
    pub proxy_listen: String,
    /// Admin API listeners: `addr[ ssl], …` or `off`.
    pub admin_listen: String,
    /// Kong's `status_listen`: read-only listeners serving `GET /status` and `GET /metrics`
    /// (`addr[ ssl], …`, TLS with the proxy's `ssl_cert`), or `off` (the default).
    pub status_listen: String,
    /// `memory`, `postgres` or `off`.
    pub database: Database,
    /// With `database = off`: the declarative file (YAML or JSON) loaded at start and on SIGHUP.
    pub declarative_config: Option<PathBuf>,
    /// Postgres host.
    pub pg_host: String,
    /// Postgres port.
    pub pg_port: u16,
    /// Postgres user.
    pub pg_user: String,
    /// Postgres password.
    pub pg_password: Option<Secret<String>>,
    /// Postgres database.
    pub pg_database: String,
    /// Postgres schema (isolates tenants and tests in one database).
    pub pg_schema: Option<String>,
    /// Postgres pool size.
    pub pg_max_connections: usize,
    /// Postgres connect/statement timeout, milliseconds.
    pub pg_timeout: u64,
    /// TLS to Postgres.
    pub pg_ssl: bool,
    /// Redis URL for the shared token cache and the `rate-limiting` instances naming no Redis
    /// (optional): `redis://`, or `rediss://` for TLS (`#insecure` at the end: unverified).
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key of this gateway.
    pub redis_prefix: String,
    /// Redis timeout, milliseconds.
    pub redis_timeout: u64,
    /// Kong's `lua_ssl_trusted_certificate`: the CAs a verified TLS connection to Redis trusts
    /// (`rediss://` in `redis_url`, `rate-limiting` with `redis.ssl_verify`): `system` (the web
    /// PKI roots built into the gateway, the default) or PEM files (comma-separated string or
    /// list), not both.
    pub lua_ssl_trusted_certificate: Vec<String>,
    /// Proxy TLS certificate (PEM).
    pub ssl_cert: Option<PathBuf>,
    /// Proxy TLS key (PEM).
    pub ssl_cert_key: Option<PathBuf>,
    /// Admin TLS certificate (PEM).
    pub admin_ssl_cert: Option<PathBuf>,
    /// Admin TLS key (PEM).
    pub admin_ssl_cert_key: Option<PathBuf>,
    /// CIDRs whose `X-Forwarded-*` headers are believed (comma-separated string or list).
    pub trusted_ips: Vec<String>,
    /// Header holding the client address when the peer is trusted.
    pub real_ip_header: String,
    /// Proxy worker threads; 0 = number of cores.
    pub worker_processes: usize,
    /// A level (`debug`, `info`, `notice`, `warn`, `error`, `crit`, `alert`, `emerg` as in Kong, or
    /// `trace`, `off`), or a tracing filter of `target=level` directives (`info,portcullis=debug`).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Idle keep-alive connections kept per upstream and worker.
    pub upstream_keepalive_pool_size: usize,
    /// Seconds an idle upstream connection is kept.
    pub upstream_keepalive_idle_timeout: u64,
    /// Largest request body accepted on the admin API and the OAuth endpoints, e.g. `1m`.
    pub client_max_body_size: String,
    /// Longest wait, in seconds, between two reads of a proxied request's body (nginx's
    /// `client_body_timeout`): a client that stalls longer gets `408` and its connection closed.
    pub client_body_timeout: u64,
    /// Longest time, in seconds, a client may take to send the whole head of a request (every
    /// request of a keep-alive connection, and the TLS handshake) on the proxy listeners (nginx's
    /// `client_header_timeout`); a client that takes longer has its connection closed.
    pub client_header_timeout: u64,
    /// When set, every admin request must carry it (`Authorization: Bearer …` or `Kong-Admin-Token`).
    pub admin_token: Option<Secret<String>>,
    /// Failed client authentications a client_id may have from one address inside
    /// `oauth2_auth_failure_window` before the OAuth endpoints answer it `429`; 0 = no limit.
    pub oauth2_auth_failure_limit: u32,
    /// Length of the sliding window of `oauth2_auth_failure_limit`, seconds.
    pub oauth2_auth_failure_window: u64,
    /// Most tokens the memory token store holds (`database = memory` only): beyond it, once the
    /// expired ones are swept, issuance answers `503 temporarily_unavailable` instead of growing
    /// the process until it is killed. Unset: [`DEFAULT_MEMORY_MAX_TOKENS`].
    pub memory_max_tokens: Option<u64>,
    /// Plugins this gateway runs, as Kong's `plugins`: `bundled` (all built-in ones), plugin names,
    /// or `off`.
    pub plugins: Vec<String>,
    /// Kong's `dns_resolver`: the name servers (`ip` or `ip:port`, port 53 by default; IPv6 as
    /// `[ip]:port`) that resolve the host names of upstream targets. Empty: the system's
    /// (`/etc/resolv.conf`, and `/etc/hosts` first).
    pub dns_resolver: Vec<String>,
    /// Kong's `headers`: which of its own headers the gateway adds to answers (`server_tokens`,
    /// `latency_tokens`, single names, or `off`); see [`GatewayHeaders`].
    pub headers: Vec<String>,
    /// Kong's `headers_upstream`: the request id towards the upstream
    /// (`X-Portcullis-Request-Id`, Kong's `X-Kong-Request-Id` accepted for it) or `off`.
    pub headers_upstream: Vec<String>,
}

impl Settings {
    /// The name servers of `dns_resolver` (port 53 when none is written).
    ///
    /// # Errors
    /// An entry that is not `ip` or `ip:port` (named as Kong names it).
    pub fn dns_servers(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.dns_resolver
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| {
                        entry
                            .parse::<std::net::IpAddr>()
                            .ok()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .filter(|a| a.port() != 0)
                    .ok_or_else(|| ConfigError::Value {
                        key: "dns_resolver",
                        reason: format!(
                            "invalid name server '{entry}': expected ip or ip:port ([ip]:port for IPv6)"
                        ),
                    })
            })
            .collect()
    }

    /// The token limit of the memory token store: the setting, or its default.
    pub fn memory_max_tokens(&self) -> usize {
        usize::try_from(self.memory_max_tokens.unwrap_or(DEFAULT_MEMORY_MAX_TOKENS))
            .unwrap_or(usize::MAX)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_listen: DEFAULT_PROXY_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            status_listen: DEFAULT_STATUS_LISTEN.into(),
            database: Database::Memory,
            declarative_config: None,
            pg_host: "127.0.0.1".into(),
            pg_port: 5432,
            pg_user: "portcullis".into(),
            pg_password: None,
            pg_database: "portcullis".into(),
            pg_schema: None,
            pg_max_connections: 16,
            pg_timeout: 5000,
            pg_ssl: false,
            redis_url: None,
            redis_prefix: "portcullis".into(),
            redis_timeout: 2000,
            lua_ssl_trusted_certificate: vec![SYSTEM_CAS.into()],
            ssl_cert: None,
            ssl_cert_key: None,
            admin_ssl_cert: None,
            admin_ssl_cert_key: None,
            trusted_ips: Vec::new(),
            real_ip_header: "x-real-ip".into(),
            worker_processes: 0,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            upstream_keepalive_pool_size: 512,
            upstream_keepalive_idle_timeout: 60,
            client_max_body_size: "1m".into(),
            client_body_timeout: 60,
            client_header_timeout: 5,
            admin_token: None,
            oauth2_auth_failure_limit: 10,
            oauth2_auth_failure_window: 60,
            memory_max_tokens: None,
            plugins: vec!["bundled".into()],
            dns_resolver: Vec::new(),
            headers: DEFAULT_HEADERS.iter().map(|h| (*h).to_string()).collect(),
            headers_upstream: DEFAULT_HEADERS_UPSTREAM
                .iter()
                .map(|h| (*h).to_string())
                .collect(),
        }
    }
}

/// The `lua_ssl_trusted_certificate` entry naming the gateway's built-in roots.
pub const SYSTEM_CAS: &str = "system";

/// `memory_max_tokens` when unset: about 1 GiB of tokens at the ~146 bytes a client-credentials
/// token costs in the memory token store (`stores/tests/memory_footprint.rs` measures it).
pub const DEFAULT_MEMORY_MAX_TOKENS: u64 = 7_000_000;

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Unreadable {
        /// The path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file does not parse (TOML, or Kong's format for a `*.conf`).
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A key the gateway does not know (a typo would otherwise be silently ignored).
    #[error("unknown config key `{0}`")]
    UnknownKey(String),
    /// A `PORTCULLIS_*` or `KONG_*` environment variable naming no key (a typo, or a Kong
    /// setting the gateway does not implement, would otherwise be ignored).
    #[error("unknown environment variable `{0}`: no such setting")]
    UnknownVariable(String),
    /// A key's value is well-typed but wrong.
    #[error("invalid value for `{key}`: {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<crate::tls::TlsError> for ConfigError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::Value {
            key: e.key(),
            reason: e.to_string(),
        }
    }
}

/// One listener of `proxy_listen` / `admin_listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Address to bind (port 0 = any free port).
    pub addr: SocketAddr,
    /// TLS listener.
    pub ssl: bool,
    /// Length of the queue of connections not yet accepted (`backlog=N`, as nginx's flag).
    pub backlog: u32,
    /// Kong's `http2`: on a plain listener, HTTP/2 with prior knowledge (h2c) beside HTTP/1.1
    /// (TLS listeners offer h2 by ALPN whatever the flag).
    pub http2: bool,
    /// Kong's `reuseport`: one socket per worker thread (`SO_REUSEPORT`), the kernel spreading
    /// new connections over them (the admin and status APIs run one worker: one socket).
    pub reuseport: bool,
    /// Kong's `proxy_protocol`: every connection starts with a PROXY protocol header (v1 or v2),
    /// whose client address counts when the connecting peer is in `trusted_ips`.
    pub proxy_protocol: bool,
}

/// `proxy_listen` unless set: Kong's default, flag for flag. With `reuseport` each worker has a
/// socket of its own and the kernel spreads connections over them; workers sharing one socket
/// take connections as they wake, often very unevenly.
pub const DEFAULT_PROXY_LISTEN: &str =
    "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384";

/// `admin_listen` unless set: Kong's default, flag for flag (loopback only, as Kong).
pub const DEFAULT_ADMIN_LISTEN: &str =
    "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384";

/// `status_listen` unless set: Kong's default (loopback only, read-only endpoints).
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8007 reuseport backlog=16384";

/// The accept queue length of a listener without `backlog=N`.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Kong and nginx listen flags the gateway does not implement: refused at start, naming the
/// flag, rather than accepted and ignored.
const UNSUPPORTED_LISTEN_FLAGS: &[&str] = &[
    "deferred",
    "bind",
    "default_server",
    "ipv6only=on",
    "ipv6only=off",
    "so_keepalive=on",
    "so_keepalive=off",
];

/// Kind of value of each key, for parsing environment overrides.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
}

const KEYS: &[(&str, Kind)] = &[
    ("proxy_listen", Kind::Str),
    ("admin_listen", Kind::Str),
    ("status_listen", Kind::Str),
    ("database", Kind::Str),
    ("declarative_config", Kind::Str),
    ("pg_host", Kind::Str),
    ("pg_port", Kind::Int),
    ("pg_user", Kind::Str),
    ("pg_password", Kind::Str),
    ("pg_database", Kind::Str),
    ("pg_schema", Kind::Str),
    ("pg_max_connections", Kind::Int),
    ("pg_timeout", Kind::Int),
    ("pg_ssl", Kind::Bool),
    ("redis_url", Kind::Str),
    ("redis_prefix", Kind::Str),
    ("redis_timeout", Kind::Int),
    ("lua_ssl_trusted_certificate", Kind::List),
    ("ssl_cert", Kind::Str),
    ("ssl_cert_key", Kind::Str),
    ("admin_ssl_cert", Kind::Str),
    ("admin_ssl_cert_key", Kind::Str),
    ("trusted_ips", Kind::List),
    ("real_ip_header", Kind::Str),
    ("worker_processes", Kind::Int),
    ("log_level", Kind::Str),
    ("log_format", Kind::Str),
    ("upstream_keepalive_pool_size", Kind::Int),
    ("upstream_keepalive_idle_timeout", Kind::Int),
    ("client_max_body_size", Kind::Str),
    ("client_body_timeout", Kind::Int),
    ("client_header_timeout", Kind::Int),
    ("admin_token", Kind::Str),
    ("oauth2_auth_failure_limit", Kind::Int),
    ("oauth2_auth_failure_window", Kind::Int),
    ("memory_max_tokens", Kind::Int),
    ("plugins", Kind::List),
    ("dns_resolver", Kind::List),
    ("headers", Kind::List),
    ("headers_upstream", Kind::List),
];

/// Prefix of the environment variables the test suite reads itself (`PORTCULLIS_TEST_PG`, …):
/// never settings, so ignored rather than refused (a gateway started by a test inherits them).
const TEST_VARIABLES: &str = "PORTCULLIS_TEST_";

/// The built-in plugins, as `plugins = bundled` enables them.
pub const BUNDLED_PLUGINS: &[&str] = &[
    "acl",
    "cors",
    "file-log",
    "http-log",
    "key-auth",
    "oauth2",
    "oauth2-introspection",
    "opentelemetry",
    "prometheus",
    "rate-limiting",
    "request-termination",
];

/// Kong's log levels without a tracing equivalent, and the tracing level they mean.
const KONG_LEVELS: &[(&str, &str)] = &[
    ("notice", "info"),
    ("crit", "error"),
    ("alert", "error"),
    ("emerg", "error"),
];

/// The levels tracing knows.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

impl Settings {
    /// Loads defaults, then `file` (if any), then `PORTCULLIS_*` variables from `env`, and checks
    /// every value.
    ///
    /// # Errors
    /// The first problem found, naming the key.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                if is_kong_conf(path) {
                    kong_conf_table(path, &text)?
                } else {
                    text.parse::<toml::Table>()
                        .map_err(|e| syntax_error(path, &text, &e))?
                }
            }
            None => toml::Table::new(),
        };
        for list in [
            "trusted_ips",
            "plugins",
            "lua_ssl_trusted_certificate",
            "dns_resolver",
        ] {
            if let Some(toml::Value::String(s)) = table.get(list).cloned() {
                table.insert(list.into(), split_list(&s));
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        // The same error whatever order the environment lists its variables in.
        env.sort();
        // Which variable set each key: `KONG_X` and `PORTCULLIS_X` may both be set, to one value.
        let mut set_by: Vec<(&'static str, String, String)> = Vec::new();
        for (name, value) in env {
            if name.starts_with(TEST_VARIABLES) {
                continue;
            }
            let Some(key) = name
                .strip_prefix("PORTCULLIS_")
                .or_else(|| name.strip_prefix("KONG_"))
            else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let Some((k, kind)) = KEYS.iter().find(|(k, _)| *k == key) else {
                return Err(ConfigError::UnknownVariable(name));
            };
            if let Some((_, other, _)) = set_by.iter().find(|(seen, _, v)| seen == k && *v != value)
            {
                return Err(ConfigError::Value {
                    key: k,
                    reason: format!("{other} and {name} are both set, to different values"),
                });
            }
            table.insert((*k).to_string(), typed(k, *kind, value.clone())?);
            set_by.push((k, name, value));
        }
        if let Some(unknown) = table
            .keys()
            .find(|k| !KEYS.iter().any(|(name, _)| name == k))
        {
            return Err(ConfigError::UnknownKey(unknown.clone()));
        }
        let settings: Settings =
            Settings::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                // serde's message does not say which key; find it by deserializing each alone.
                let culprit = KEYS.iter().find(|(name, _)| {
                    table.get(*name).is_some_and(|v| {
                        let mut alone = toml::Table::new();
                        alone.insert((*name).to_string(), v.clone());
                        Settings::deserialize(toml::Value::Table(alone)).is_err()
                    })
                });
                match culprit {
                    Some((key, _)) => ConfigError::Value {
                        key,
                        reason: one_line(e.message()),
                    },
                    None => ConfigError::Invalid(one_line(e.message())),
                }
            })?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.proxy_listeners()?;
        self.admin_listeners()?;
        self.status_listeners()?;
        self.trusted_networks()?;
        self.max_body_bytes()?;
        if !(1..=86_400).contains(&self.client_body_timeout) {
            return Err(ConfigError::Value {
                key: "client_body_timeout",
                reason: format!(
                    "expected 1 to 86400 seconds, got {}",
                    self.client_body_timeout
                ),
            });
        }
        if !(1..=3_600).contains(&self.client_header_timeout) {
            return Err(ConfigError::Value {
                key: "client_header_timeout",
                reason: format!(
                    "expected 1 to 3600 seconds, got {}",
                    self.client_header_timeout
                ),
            });
        }
        if !(1..=86_400).contains(&self.oauth2_auth_failure_window) {
            return Err(ConfigError::Value {
                key: "oauth2_auth_failure_window",
                reason: format!(
                    "expected 1 to 86400 seconds, got {}",
                    self.oauth2_auth_failure_window
                ),
            });
        }
        for (key, cert, pem_key) in [
            ("ssl_cert", &self.ssl_cert, &self.ssl_cert_key),
            (
                "admin_ssl_cert",
                &self.admin_ssl_cert,
                &self.admin_ssl_cert_key,
            ),
        ] {
            match (cert, pem_key) {
                (Some(cert), Some(pem_key)) => {
                    // Read and pair them now, so `config check` reports what `serve` would.
                    crate::tls::install_crypto_provider();
                    crate::tls::server_config(key, Some((cert, pem_key)))?;
                }
                (None, None) => {}
                _ => {
                    return Err(ConfigError::Value {
                        key,
                        reason: format!("{key} and {key}_key must be set together"),
                    })
                }
            }
        }
        self.log_filter()?;
        self.enabled_plugins()?;
        self.redis_trust()?;
        self.dns_servers()?;
        self.check_values()?;
        if let Some(schema) = &self.pg_schema {
            if !portcullis_stores::postgres::valid_schema_name(schema) {
                return Err(ConfigError::Value {
                    key: "pg_schema",
                    reason: format!(
                        "invalid schema name '{schema}': lower-case letters, digits and _, at most 63"
                    ),
                });
            }
        }
        if self.pg_max_connections == 0 {
            return Err(ConfigError::Value {
                key: "pg_max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.declarative_config.is_some() && self.database != Database::Off {
            return Err(ConfigError::Value {
                key: "declarative_config",
                reason: "a declarative configuration is only read with database = \"off\"; set database = \"off\" or remove declarative_config".into(),
            });
        }
        match self.memory_max_tokens {
            Some(0) => {
                return Err(ConfigError::Value {
                    key: "memory_max_tokens",
                    reason: "must be at least 1".into(),
                })
            }
            // Postgres holds the tokens on disk; the near cache in front of it is bounded by
            // itself, so a memory limit there would be a setting that does nothing.
            Some(_) if self.database == Database::Postgres => {
                return Err(ConfigError::Value {
                    key: "memory_max_tokens",
                    reason: "applies to database = \"memory\" only: with postgres tokens are stored in the database".into(),
                })
            }
            _ => {}
        }
        if self.redis_url.is_some() && self.database != Database::Postgres {
            return Err(ConfigError::Value {
                key: "redis_url",
                reason: "Redis needs a durable store behind it: set database = \"postgres\" or remove redis_url".into(),
            });
        }
        Ok(())
    }

    /// The ranges and shapes serde's types do not say.
    fn check_values(&self) -> Result<(), ConfigError> {
        let value = |key: &'static str, reason: &str| ConfigError::Value {
            key,
            reason: reason.into(),
        };
        for (key, text) in [
            ("pg_host", &self.pg_host),
            ("pg_user", &self.pg_user),
            ("pg_database", &self.pg_database),
            ("redis_prefix", &self.redis_prefix),
        ] {
            if text.trim().is_empty() {
                return Err(value(key, "must not be empty"));
            }
        }
        if self.pg_port == 0 {
            return Err(value("pg_port", "must be a port from 1 to 65535"));
        }
        for (key, millis) in [
            ("pg_timeout", self.pg_timeout),
            ("redis_timeout", self.redis_timeout),
        ] {
            if millis == 0 {
                return Err(value(key, "must be at least 1 (milliseconds)"));
            }
        }
        if let Some(url) = &self.redis_url {
            let scheme = url::Url::parse(url.expose()).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("redis" | "rediss")) {
                // The URL may carry a password: never echoed.
                return Err(value("redis_url", "not a redis:// or rediss:// URL"));
            }
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(value(
                "admin_token",
                "must not be empty (leave it unset for an admin API without a token)",
            ));
        }
        if HeaderName::from_bytes(self.real_ip_header.to_ascii_lowercase().as_bytes()).is_err() {
            return Err(value("real_ip_header", "not a header name"));
        }
        self.gateway_headers()?;
        Ok(())
    }

    /// `log_level` as a tracing filter: Kong's levels mapped to tracing's, directives checked. A
    /// bare word that is not a level is refused: tracing would read `loud` as "every event of the
    /// target `loud`", and the gateway would then log nothing.
    ///
    /// # Errors
    /// An unknown level or a directive that does not parse, naming `log_level`.
    pub fn log_filter(&self) -> Result<String, ConfigError> {
        let level = self.log_level.trim().to_ascii_lowercase();
        if let Some((_, mapped)) = KONG_LEVELS.iter().find(|(kong, _)| *kong == level) {
            return Ok((*mapped).to_string());
        }
        let invalid = |reason: String| ConfigError::Value {
            key: "log_level",
            reason,
        };
        for directive in self.log_level.split(',').map(str::trim) {
            let bare_level = LEVELS.contains(&directive.to_ascii_lowercase().as_str());
            if !bare_level && !directive.contains('=') {
                return Err(invalid(format!(
                    "unknown level '{directive}': use debug, info, notice, warn, error, crit, \
                     or a filter like info,portcullis=debug"
                )));
            }
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.log_level)
            .map_err(|e| invalid(format!("'{}' is not a log filter: {e}", self.log_level)))?;
        Ok(self.log_level.clone())
    }

    /// The plugins `plugins` enables, each a built-in one.
    ///
    /// # Errors
    /// An unknown plugin name, or `off` with other names.
    pub fn enabled_plugins(&self) -> Result<Vec<&'static str>, ConfigError> {
        let mut enabled: Vec<&'static str> = Vec::new();
        let off = self.plugins.iter().any(|p| p == "off");
        if off && self.plugins.len() > 1 {
            return Err(ConfigError::Value {
                key: "plugins",
                reason: "'off' cannot be combined with plugin names".into(),
            });
        }
        for name in self.plugins.iter().filter(|p| *p != "off") {
            let names: Vec<&'static str> = if name == "bundled" {
                BUNDLED_PLUGINS.to_vec()
            } else {
                let known = BUNDLED_PLUGINS.iter().find(|p| **p == name.as_str());
                vec![*known.ok_or_else(|| ConfigError::Value {
                    key: "plugins",
                    reason: format!(
                        "unknown plugin '{name}': use bundled, off, or some of {}",
                        BUNDLED_PLUGINS.join(", ")
                    ),
                })?]
            };
            for name in names {
                if !enabled.contains(&name) {
                    enabled.push(name);
                }
            }
        }
        Ok(enabled)
    }

    /// `headers` and `headers_upstream` read into what the listeners add. Each name is Kong's
    /// (`X-Kong-Proxy-Latency`) or the gateway's (`X-Portcullis-Proxy-Latency`), in any case; the
    /// headers themselves are sent under the gateway's names.
    ///
    /// # Errors
    /// An unknown name, or `off` beside names (Kong reads `via, off` as `via`; a list that says
    /// both is a mistake worth naming).
    pub fn gateway_headers(&self) -> Result<GatewayHeaders, ConfigError> {
        let mut on = GatewayHeaders::default();
        for (key, entries, upstream) in [
            ("headers", &self.headers, false),
            ("headers_upstream", &self.headers_upstream, true),
        ] {
            let off = entries.iter().any(|e| e.trim().eq_ignore_ascii_case("off"));
            if off && entries.len() > 1 {
                return Err(ConfigError::Value {
                    key,
                    reason: "'off' cannot be combined with header names".into(),
                });
            }
            for entry in entries
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.eq_ignore_ascii_case("off"))
            {
                let token = entry.to_ascii_lowercase();
                let known = if upstream {
                    GatewayHeaders::upstream_token(&token, &mut on)
                } else {
                    GatewayHeaders::answer_token(&token, &mut on)
                };
                if !known {
                    return Err(ConfigError::Value {
                        key,
                        reason: format!("invalid entry '{entry}'"),
                    });
                }
            }
        }
        Ok(on)
    }

    /// The CAs `lua_ssl_trusted_certificate` names, read (blocking file I/O: call it at start).
    ///
    /// # Errors
    /// An empty list, `system` beside files, or a file that cannot be read or holds no
    /// certificate, naming `lua_ssl_trusted_certificate`.
    pub fn redis_trust(&self) -> Result<RedisTrust, ConfigError> {
        const KEY: &str = "lua_ssl_trusted_certificate";
        let entries = &self.lua_ssl_trusted_certificate;
        let system = entries.iter().any(|e| e == SYSTEM_CAS);
        match (system, entries.len()) {
            (_, 0) => Err(ConfigError::Value {
                key: KEY,
                reason: "must name `system` or CA certificate files (PEM)".into(),
            }),
            (true, 1) => Ok(RedisTrust::WebPki),
            (true, _) => Err(ConfigError::Value {
                key: KEY,
                reason: "`system` cannot be combined with files: list either `system` or the CA \
                         files to trust instead"
                    .into(),
            }),
            (false, _) => {
                let paths: Vec<&Path> = entries.iter().map(Path::new).collect();
                let pem = crate::tls::read_cas(KEY, &paths)?;
                Ok(RedisTrust::Pem(pem.into()))
            }
        }
    }

    /// Parsed `proxy_listen`.
    ///
    /// # Errors
    /// A malformed entry.
    pub fn proxy_listeners(&self) -> Result<Vec<Listen>, ConfigError> {
        parse_listen("proxy_listen", &self.proxy_listen)
    }

    /// Parsed `admin_listen`.
    ///
    /// # Errors
    /// A malformed entry.
    pub fn admin_listeners(&self) -> Result<Vec<Listen>, ConfigError> {
        parse_listen("admin_listen", &self.admin_listen)
    }

    /// Parsed `status_listen`.
    ///
    /// # Errors
    /// A malformed entry, or a flag other than `ssl` and `backlog=N`. (`ssl` serves the proxy's
    /// certificate: `ssl_cert`, or the generated one the proxy serves without it.)
    pub fn status_listeners(&self) -> Result<Vec<Listen>, ConfigError> {
        parse_listen("status_listen", &self.status_listen)
    }

    /// Parsed `trusted_ips` (`0.0.0.0/0,::/0` or `unix` as in Kong).
    ///
    /// # Errors
    /// A malformed CIDR.
    pub fn trusted_networks(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.trusted_ips
            .iter()
            .filter(|s| !s.is_empty() && *s != "unix")
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| ConfigError::Value {
                        key: "trusted_ips",
                        reason: format!("'{s}' is not an IP or CIDR"),
                    })
            })
            .collect()
    }

    /// `client_max_body_size` in bytes (`k`/`m`/`g` suffixes as in nginx; 0 = unlimited).
    ///
    /// # Errors
    /// A malformed size.
    pub fn max_body_bytes(&self) -> Result<usize, ConfigError> {
        let s = self.client_max_body_size.trim().to_ascii_lowercase();
        let (num, mult) = match s.chars().last() {
            Some('k') => (&s[..s.len() - 1], 1024),
            Some('m') => (&s[..s.len() - 1], 1024 * 1024),
            Some('g') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
            _ => (s.as_str(), 1),
        };
        let invalid = || ConfigError::Value {
            key: "client_max_body_size",
            reason: format!(
                "'{}' is not a size like 8k or 1m",
                self.client_max_body_size
            ),
        };
        let n: usize = num.parse().map_err(|_| invalid())?;
        if n == 0 {
            return Ok(usize::MAX);
        }
        n.checked_mul(mult).ok_or_else(invalid)
    }

    /// Worker threads for the proxy.
    pub fn workers(&self) -> usize {
        if self.worker_processes == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.worker_processes
        }
    }

    /// The effective settings as TOML with secrets masked, for `portcullis config check`.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// Error text on one line (log and terminal friendly).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A TOML syntax error as one line with its position.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" at line {line}")
        })
        .unwrap_or_default();
    ConfigError::Invalid(format!("{}{at}: {}", path.display(), one_line(e.message())))
}

/// Whether `path` is in Kong's format (`kong.conf`, any `*.conf`) rather than TOML.
fn is_kong_conf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "conf")
}

/// The settings of a file in Kong's format, typed as environment variables are.
fn kong_conf_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let lines = crate::kong_conf::parse(text).map_err(|number| {
        ConfigError::Invalid(format!(
            "{} at line {number}: expected `key = value`",
            path.display()
        ))
    })?;
    let mut table = toml::Table::new();
    for line in lines {
        let Some((key, kind)) = KEYS.iter().find(|(k, _)| *k == line.key) else {
            return Err(ConfigError::UnknownKey(line.key));
        };
        table.insert((*key).to_string(), typed(key, *kind, line.value)?);
    }
    Ok(table)
}

/// A value given as text (an environment variable, a `kong.conf` line) as `key`'s type.
fn typed(key: &'static str, kind: Kind, value: String) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str => toml::Value::String(value),
        Kind::Int => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| ConfigError::Value {
                key,
                reason: format!("expected an integer, got '{value}'"),
            })?,
        Kind::Bool => match value.trim() {
            "on" | "true" | "1" => toml::Value::Boolean(true),
            "off" | "false" | "0" => toml::Value::Boolean(false),
            _ => {
                return Err(ConfigError::Value {
                    key,
                    reason: format!("expected on/off, got '{value}'"),
                })
            }
        },
        Kind::List => split_list(&value),
    })
}

fn split_list(s: &str) -> toml::Value {
    toml::Value::Array(
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| toml::Value::String(p.into()))
            .collect(),
    )
}

fn parse_listen(key: &'static str, value: &str) -> Result<Vec<Listen>, ConfigError> {
    if value.trim() == "off" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let mut words = entry.split_whitespace();
            let addr_text = words.next().unwrap_or_default();
            let addr: SocketAddr = addr_text
                .parse()
                .or_else(|_| format!("0.0.0.0:{addr_text}").parse())
                .map_err(|_| ConfigError::Value {
                    key,
                    reason: format!("'{addr_text}' is not an address like 0.0.0.0:8000"),
                })?;
            let mut listen = Listen {
                addr,
                ssl: false,
                backlog: DEFAULT_BACKLOG,
                http2: false,
                reuseport: false,
                proxy_protocol: false,
            };
            for flag in words {
                let reason = match flag {
                    "ssl" => {
                        listen.ssl = true;
                        continue;
                    }
                    // The admin API's and the status listeners (actix-web) do not read it.
                    "proxy_protocol" if key == "admin_listen" || key == "status_listen" => {
                        format!("listen flag '{flag}' is not supported by this gateway")
                    }
                    "http2" => {
                        listen.http2 = true;
                        continue;
                    }
                    "reuseport" => {
                        listen.reuseport = true;
                        continue;
                    }
                    "proxy_protocol" => {
                        listen.proxy_protocol = true;
                        continue;
                    }
                    f if f.starts_with("backlog=") => match parse_backlog(&f["backlog=".len()..]) {
                        Some(n) => {
                            listen.backlog = n;
                            continue;
                        }
                        None => format!("'{f}' is not a backlog from 1 to {}", i32::MAX),
                    },
                    f if UNSUPPORTED_LISTEN_FLAGS.contains(&f) => {
                        format!("listen flag '{f}' is not supported by this gateway")
                    }
                    f => format!("unknown listen flag '{f}'"),
                };
                return Err(ConfigError::Value { key, reason });
            }
            Ok(listen)
        })
        .collect()
}

/// `N` of `backlog=N`: a positive count the kernel's `listen` takes (it caps it at `somaxconn`).
fn parse_backlog(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=i32::MAX.unsigned_abs()).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_types_are_checked() {
        let s = Settings::load(
            None,
            [("PORTCULLIS_PROXY_LISTEN".into(), "127.0.0.1:0".into())],
        )
        .unwrap();
        assert_eq!(
            s.proxy_listeners().unwrap(),
            vec![Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                ssl: false,
                backlog: DEFAULT_BACKLOG,
                http2: false,
                reuseport: false,
                proxy_protocol: false,
            }]
        );
        let err = Settings::load(None, [("PORTCULLIS_PG_PORT".into(), "abc".into())]).unwrap_err();
        assert!(err.to_string().contains("pg_port"), "{err}");
    }

    #[test]
    fn a_kong_conf_file_and_kong_variables_are_read_as_kong_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kong.conf");
        std::fs::write(
            &file,
            "# a Kong deployment's file\n\
             database = postgres           # the store\n\
             pg_host = db.internal\n\
             pg_port = 6432\n\
             pg_password = p\\#ss\n\
             pg_ssl = on\n\
             admin_listen = 127.0.0.1:9001 reuseport backlog=16384\n\
             trusted_ips = 10.0.0.0/8, 127.0.0.1\n\
             log_level = notice\n",
        )
        .unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        let s = Settings::load(Some(&file), env(&[("KONG_PG_USER", "kong")])).unwrap();
        assert_eq!(s.database, Database::Postgres);
        assert_eq!((s.pg_host.as_str(), s.pg_port), ("db.internal", 6432));
        assert_eq!(
            s.pg_password.as_ref().map(|p| p.expose().as_str()),
            Some("p#ss")
        );
        assert!(s.pg_ssl);
        assert_eq!(s.pg_user, "kong", "KONG_PG_USER");
        assert_eq!(s.admin_listeners().unwrap()[0].addr.port(), 9001);
        assert_eq!(s.trusted_ips, ["10.0.0.0/8", "127.0.0.1"]);

        // `KONG_X` and `PORTCULLIS_X` together must agree.
        let same = [("KONG_PG_USER", "kong"), ("PORTCULLIS_PG_USER", "kong")];
        assert_eq!(Settings::load(None, env(&same)).unwrap().pg_user, "kong");
        let differ = [("KONG_PG_USER", "kong"), ("PORTCULLIS_PG_USER", "root")];
        assert_eq!(
            Settings::load(None, env(&differ)).unwrap_err().to_string(),
            "invalid value for `pg_user`: KONG_PG_USER and PORTCULLIS_PG_USER are both set, to different values"
        );
        // A Kong setting this gateway does not implement is refused, by file or variable.
        let unknown = [("KONG_PROXY_ACCESS_LOG", "/dev/stdout")];
        assert_eq!(
            Settings::load(None, env(&unknown)).unwrap_err().to_string(),
            "unknown environment variable `KONG_PROXY_ACCESS_LOG`: no such setting"
        );
        std::fs::write(&file, "mem_cache_size = 128m\n").unwrap();
        assert_eq!(
            Settings::load(Some(&file), []).unwrap_err().to_string(),
            "unknown config key `mem_cache_size`"
        );
        std::fs::write(&file, "pg_port = 5432\npg_host\n").unwrap();
        assert_eq!(
            Settings::load(Some(&file), []).unwrap_err().to_string(),
            format!(
                "invalid config: {} at line 2: expected `key = value`",
                file.display()
            )
        );
        std::fs::write(&file, "pg_port = five\n").unwrap();
        assert_eq!(
            Settings::load(Some(&file), []).unwrap_err().to_string(),
            "invalid value for `pg_port`: expected an integer, got 'five'"
        );
    }

    /// Address, `ssl`, `http2`, `reuseport`, `backlog` of each listener.
    fn shape(listeners: &[Listen]) -> Vec<(String, bool, bool, bool, u32)> {
        listeners
            .iter()
            .map(|l| (l.addr.to_string(), l.ssl, l.http2, l.reuseport, l.backlog))
            .collect()
    }

    #[test]
    fn the_default_proxy_listeners_are_kongs() {
        assert_eq!(
            shape(&Settings::default().proxy_listeners().unwrap()),
            vec![
                ("0.0.0.0:8000".to_string(), false, false, true, 16384),
                ("0.0.0.0:8443".to_string(), true, true, true, 16384),
            ]
        );
    }

    #[test]
    fn the_default_admin_listeners_are_kongs() {
        assert_eq!(
            shape(&Settings::default().admin_listeners().unwrap()),
            vec![
                ("127.0.0.1:8001".to_string(), false, false, true, 16384),
                ("127.0.0.1:8444".to_string(), true, true, true, 16384),
            ]
        );
    }

    #[test]
    fn bad_keys_and_types_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "proxy_listen = \"127.0.0.1:0\"\ncolour = 1\n").unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err().to_string();
        assert_eq!(err, "unknown config key `colour`");
        std::fs::write(&file, "pg_port = \"abc\"\n").unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err().to_string();
        assert!(err.starts_with("invalid value for `pg_port`"), "{err}");
        std::fs::write(&file, "x = [\n").unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err().to_string();
        assert!(err.contains(" at line ") && !err.contains('\n'), "{err}");
        let err = Settings::load(None, [("PORTCULLIS_DATABASE".into(), "mysql".into())])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid value for `database`"), "{err}");
    }

    #[test]
    fn defaults_listen_like_kong() {
        let s = Settings::default();
        let proxy = s.proxy_listeners().unwrap();
        assert_eq!(proxy.len(), 2);
        assert!(proxy[1].ssl);
        assert_eq!(s.admin_listeners().unwrap()[0].addr.port(), 8001);
    }

    #[test]
    fn status_listen_is_kongs_by_default_and_refuses_proxy_protocol() {
        let mut s = Settings::default();
        assert_eq!(
            shape(&s.status_listeners().unwrap()),
            vec![("127.0.0.1:8007".to_string(), false, false, true, 16384)]
        );
        s.status_listen = "off".into();
        assert!(s.status_listeners().unwrap().is_empty());
        s.status_listen = "127.0.0.1:8100, 127.0.0.1:8101 ssl backlog=64".into();
        let parsed = s.status_listeners().unwrap();
        assert_eq!(parsed[0].addr.port(), 8100);
        assert!(!parsed[0].ssl);
        assert_eq!((parsed[1].ssl, parsed[1].backlog), (true, 64));
        s.status_listen = "127.0.0.1:8100 proxy_protocol".into();
        assert_eq!(
            s.status_listeners().unwrap_err().to_string(),
            "invalid value for `status_listen`: listen flag 'proxy_protocol' is not supported by this gateway"
        );
        s.status_listen = "127.0.0.1:8100 h3".into();
        assert_eq!(
            s.status_listeners().unwrap_err().to_string(),
            "invalid value for `status_listen`: unknown listen flag 'h3'"
        );
    }

    #[test]
    fn listen_flags_are_honoured_or_refused_by_name() {
        let listen = |value: &str| parse_listen("proxy_listen", value).map_err(|e| e.to_string());
        let parsed = listen("127.0.0.1:0 ssl backlog=16, 127.0.0.1:0").unwrap();
        assert_eq!((parsed[0].ssl, parsed[0].backlog), (true, 16));
        assert_eq!((parsed[1].ssl, parsed[1].backlog), (false, DEFAULT_BACKLOG));
        let flagged = listen("127.0.0.1:0 http2 reuseport proxy_protocol").unwrap();
        assert!(flagged[0].http2 && flagged[0].reuseport && flagged[0].proxy_protocol);
        assert!(!parsed[0].http2 && !parsed[0].reuseport && !parsed[0].proxy_protocol);
        for key in ["admin_listen", "status_listen"] {
            let flagged = parse_listen(key, "127.0.0.1:0 http2 reuseport").unwrap();
            assert!(flagged[0].http2 && flagged[0].reuseport);
            assert_eq!(
                parse_listen(key, "127.0.0.1:0 proxy_protocol")
                    .unwrap_err()
                    .to_string(),
                format!(
                    "invalid value for `{key}`: listen flag 'proxy_protocol' is not supported by this gateway"
                )
            );
        }
        for flag in ["deferred", "bind"] {
            assert_eq!(
                listen(&format!("127.0.0.1:0 {flag}")).unwrap_err(),
                format!(
                    "invalid value for `proxy_listen`: listen flag '{flag}' is not supported by this gateway"
                )
            );
        }
        for bad in [
            "backlog=",
            "backlog=0",
            "backlog=-1",
            "backlog=+5",
            "backlog=2147483648",
        ] {
            assert_eq!(
                listen(&format!("127.0.0.1:0 {bad}")).unwrap_err(),
                format!("invalid value for `proxy_listen`: '{bad}' is not a backlog from 1 to 2147483647")
            );
        }
    }

    #[test]
    fn secrets_are_masked() {
        let s = Settings {
            admin_token: Some(Secret::new("hunter2".into())),
            ..Settings::default()
        };
        assert!(!s.to_masked_toml().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn memory_max_tokens_is_positive_and_for_the_memory_store_only() {
        let load = |pairs: &[(&str, &str)]| {
            Settings::load(
                None,
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            load(&[]).unwrap().memory_max_tokens(),
            usize::try_from(DEFAULT_MEMORY_MAX_TOKENS).unwrap()
        );
        assert_eq!(
            load(&[("PORTCULLIS_MEMORY_MAX_TOKENS", "5")])
                .unwrap()
                .memory_max_tokens(),
            5
        );
        assert_eq!(
            load(&[("PORTCULLIS_MEMORY_MAX_TOKENS", "0")]).unwrap_err(),
            "invalid value for `memory_max_tokens`: must be at least 1"
        );
        assert_eq!(
            load(&[
                ("PORTCULLIS_MEMORY_MAX_TOKENS", "5"),
                ("PORTCULLIS_DATABASE", "postgres")
            ])
            .unwrap_err(),
            "invalid value for `memory_max_tokens`: applies to database = \"memory\" only: with postgres tokens are stored in the database"
        );
    }

    #[test]
    fn pg_schema_must_be_a_plain_identifier() {
        let err = Settings::load(
            None,
            [("PORTCULLIS_PG_SCHEMA".into(), "x; drop table y".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pg_schema"), "{err}");
        assert!(Settings::load(None, [("PORTCULLIS_PG_SCHEMA".into(), "tenant_1".into())]).is_ok());
    }

    #[test]
    fn log_level_is_a_level_or_a_filter() {
        let load = |level: &str| {
            Settings::load(None, [("PORTCULLIS_LOG_LEVEL".into(), level.into())])
                .map(|s| s.log_filter().unwrap())
                .map_err(|e| e.to_string())
        };
        assert_eq!(load("notice").unwrap(), "info");
        assert_eq!(load("crit").unwrap(), "error");
        assert_eq!(load("debug").unwrap(), "debug");
        assert_eq!(
            load("info,portcullis=debug").unwrap(),
            "info,portcullis=debug"
        );
        for bad in ["loud", "info,loud", "portcullis=loud", ""] {
            let err = load(bad).unwrap_err();
            assert!(
                err.starts_with("invalid value for `log_level`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unknown_variables_are_refused_but_the_test_suite_s_are_not() {
        let err = Settings::load(None, [("PORTCULLIS_PG_PROT".into(), "5432".into())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown environment variable `PORTCULLIS_PG_PROT`: no such setting"
        );
        let s = Settings::load(
            None,
            [
                ("PORTCULLIS_TEST_PG".into(), "host=127.0.0.1".into()),
                ("PORTCULLIS_TEST_DATABASE".into(), "postgres".into()),
                ("PORTCULLISX".into(), "1".into()),
            ],
        );
        assert!(s.is_ok());
    }

    #[test]
    fn headers_and_headers_upstream_read_as_kong_reads_them() {
        let load = |headers: &str, upstream: &str| {
            Settings::load(
                None,
                [
                    ("KONG_HEADERS".into(), headers.into()),
                    ("KONG_HEADERS_UPSTREAM".into(), upstream.into()),
                ],
            )
            .and_then(|s| s.gateway_headers())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            Settings::default().gateway_headers().unwrap(),
            GatewayHeaders::KONG_DEFAULT
        );
        assert_eq!(
            load(
                "server_tokens, latency_tokens, X-Kong-Request-Id",
                "X-Kong-Request-Id"
            ),
            Ok(GatewayHeaders::KONG_DEFAULT)
        );
        assert_eq!(load("off", "off"), Ok(GatewayHeaders::default()));
        let some = load(
            "Via, x-portcullis-upstream-status",
            "x-portcullis-request-id",
        )
        .unwrap();
        assert_eq!(
            some,
            GatewayHeaders {
                via: true,
                upstream_status: true,
                request_id_upstream: true,
                ..GatewayHeaders::default()
            }
        );
        assert_eq!(
            load("via, x-kong-upstream", "off").unwrap_err(),
            "invalid value for `headers`: invalid entry 'x-kong-upstream'"
        );
        assert_eq!(
            load("via", "via").unwrap_err(),
            "invalid value for `headers_upstream`: invalid entry 'via'"
        );
        assert_eq!(
            load("via, off", "off").unwrap_err(),
            "invalid value for `headers`: 'off' cannot be combined with header names"
        );
    }

    #[test]
    fn plugins_is_bundled_a_list_or_off() {
        let load = |value: &str| {
            Settings::load(None, [("PORTCULLIS_PLUGINS".into(), value.into())])
                .and_then(|s| s.enabled_plugins())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            Settings::default().enabled_plugins().unwrap(),
            BUNDLED_PLUGINS
        );
        assert_eq!(load("bundled").unwrap(), BUNDLED_PLUGINS);
        assert_eq!(load("oauth2, oauth2").unwrap(), vec!["oauth2"]);
        assert!(load("off").unwrap().is_empty());
        let err = load("bundled,acme").unwrap_err();
        assert!(
            err.starts_with("invalid value for `plugins`: unknown plugin 'acme'"),
            "{err}"
        );
        assert!(load("off,oauth2").is_err());
    }

    #[test]
    fn values_out_of_range_are_refused() {
        for (name, value, key) in [
            ("PORTCULLIS_PG_PORT", "0", "pg_port"),
            ("PORTCULLIS_PG_HOST", " ", "pg_host"),
            ("PORTCULLIS_PG_TIMEOUT", "0", "pg_timeout"),
            ("PORTCULLIS_CLIENT_BODY_TIMEOUT", "0", "client_body_timeout"),
            (
                "PORTCULLIS_CLIENT_HEADER_TIMEOUT",
                "0",
                "client_header_timeout",
            ),
            (
                "PORTCULLIS_CLIENT_HEADER_TIMEOUT",
                "3601",
                "client_header_timeout",
            ),
            (
                "PORTCULLIS_CLIENT_BODY_TIMEOUT",
                "86401",
                "client_body_timeout",
            ),
            ("PORTCULLIS_REDIS_PREFIX", "", "redis_prefix"),
            ("PORTCULLIS_ADMIN_TOKEN", "", "admin_token"),
            ("PORTCULLIS_REAL_IP_HEADER", "x real ip", "real_ip_header"),
            (
                "PORTCULLIS_CLIENT_MAX_BODY_SIZE",
                "99999999999999999999g",
                "client_max_body_size",
            ),
        ] {
            let err = Settings::load(None, [(name.into(), value.into())])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{name}={value}: {err}");
        }
        let err = Settings::load(
            None,
            [
                ("PORTCULLIS_DATABASE".into(), "postgres".into()),
                (
                    "PORTCULLIS_REDIS_URL".into(),
                    "http://:pw@cache:6379".into(),
                ),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`redis_url`") && !err.contains("pw"), "{err}");
    }

    #[test]
    fn lua_ssl_trusted_certificate_is_system_or_ca_files() {
        let load = |value: &str| {
            Settings::load(
                None,
                [(
                    "PORTCULLIS_LUA_SSL_TRUSTED_CERTIFICATE".into(),
                    value.into(),
                )],
            )
        };
        let default = Settings::load(None, []).unwrap();
        assert_eq!(default.redis_trust().unwrap(), RedisTrust::WebPki);
        assert_eq!(
            load("system").unwrap().redis_trust().unwrap(),
            RedisTrust::WebPki
        );

        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        std::fs::write(&a, ca.cert.pem()).unwrap();
        std::fs::write(&b, ca.cert.pem()).unwrap();
        let both = format!("{}, {}", a.display(), b.display());
        match load(&both).unwrap().redis_trust().unwrap() {
            RedisTrust::Pem(pem) => {
                let certs = rustls_pemfile::certs(&mut &pem[..]).count();
                assert_eq!(certs, 2, "both files' certificates");
            }
            RedisTrust::WebPki => panic!("the files, not the built-in roots"),
        }

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        for (value, reason) in [
            (
                format!("system,{}", a.display()),
                "`system` cannot be combined with files",
            ),
            ("".into(), "must name `system` or CA certificate files"),
            (
                dir.path().join("absent.pem").display().to_string(),
                "cannot read",
            ),
            (empty.display().to_string(), "no PEM certificate in"),
        ] {
            let err = load(&value).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid value for `lua_ssl_trusted_certificate`: ")
                    && err.contains(reason),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn pg_password_is_masked() {
        let s = Settings {
            pg_password: Some(Secret::new("pg-hunter2".into())),
            ..Settings::default()
        };
        assert!(!s.to_masked_toml().contains("pg-hunter2"));
        assert!(!format!("{s:?}").contains("pg-hunter2"));
    }
}
