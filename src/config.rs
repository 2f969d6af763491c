//! Layered, typed settings: defaults, then a TOML file, then `PORTCULLIS_<KEY>` environment
//! variables. Key names follow kong.conf so Kong users know them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

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
    /// `memory` or `postgres`.
    pub database: Database,
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
    /// Redis URL for the shared token cache (optional).
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key of this gateway.
    pub redis_prefix: String,
    /// Redis timeout, milliseconds.
    pub redis_timeout: u64,
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
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Idle keep-alive connections kept per upstream and worker.
    pub upstream_keepalive_pool_size: usize,
    /// Seconds an idle upstream connection is kept.
    pub upstream_keepalive_idle_timeout: u64,
    /// Largest request body accepted on the admin API and the OAuth endpoints, e.g. `1m`.
    pub client_max_body_size: String,
    /// When set, every admin request must carry it (`Authorization: Bearer …` or `Kong-Admin-Token`).
    pub admin_token: Option<Secret<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_listen: "0.0.0.0:8000, 0.0.0.0:8443 ssl".into(),
            admin_listen: "127.0.0.1:8001, 127.0.0.1:8444 ssl".into(),
            database: Database::Memory,
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
            admin_token: None,
        }
    }
}

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
    /// The file is not valid TOML.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A key the gateway does not know (a typo would otherwise be silently ignored).
    #[error("unknown config key `{0}`")]
    UnknownKey(String),
    /// A key's value is well-typed but wrong.
    #[error("invalid value for `{key}`: {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// One listener of `proxy_listen` / `admin_listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Address to bind (port 0 = any free port).
    pub addr: SocketAddr,
    /// TLS listener.
    pub ssl: bool,
}

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
    ("database", Kind::Str),
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
    ("admin_token", Kind::Str),
];

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
                text.parse::<toml::Table>()
                    .map_err(|e| syntax_error(path, &text, &e))?
            }
            None => toml::Table::new(),
        };
        if let Some(toml::Value::String(s)) = table.get("trusted_ips").cloned() {
            table.insert("trusted_ips".into(), split_list(&s));
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("PORTCULLIS_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let Some((k, kind)) = KEYS.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            let parsed = match kind {
                Kind::Str => toml::Value::String(value),
                Kind::Int => value
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Value {
                        key: k,
                        reason: format!("expected an integer, got '{value}'"),
                    })?,
                Kind::Bool => match value.trim() {
                    "on" | "true" | "1" => toml::Value::Boolean(true),
                    "off" | "false" | "0" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Value {
                            key: k,
                            reason: format!("expected on/off, got '{value}'"),
                        })
                    }
                },
                Kind::List => split_list(&value),
            };
            table.insert((*k).to_string(), parsed);
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
        self.trusted_networks()?;
        self.max_body_bytes()?;
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
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace" | "notice" | "crit"
        ) && tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err()
        {
            return Err(ConfigError::Value {
                key: "log_level",
                reason: format!("unknown level '{}'", self.log_level),
            });
        }
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
        if self.redis_url.is_some() && self.database == Database::Memory {
            return Err(ConfigError::Value {
                key: "redis_url",
                reason: "Redis needs a durable store behind it: set database = \"postgres\" or remove redis_url".into(),
            });
        }
        Ok(())
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
        let n: usize = num.parse().map_err(|_| ConfigError::Value {
            key: "client_max_body_size",
            reason: format!(
                "'{}' is not a size like 8k or 1m",
                self.client_max_body_size
            ),
        })?;
        Ok(if n == 0 { usize::MAX } else { n * mult })
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
            let mut ssl = false;
            for flag in words {
                match flag {
                    "ssl" => ssl = true,
                    "http2" | "reuseport" | "deferred" | "bind" | "proxy_protocol" => {}
                    f if f.starts_with("backlog=") => {}
                    f => {
                        return Err(ConfigError::Value {
                            key,
                            reason: format!("unknown listen flag '{f}'"),
                        })
                    }
                }
            }
            Ok(Listen { addr, ssl })
        })
        .collect()
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
                ssl: false
            }]
        );
        let err = Settings::load(None, [("PORTCULLIS_PG_PORT".into(), "abc".into())]).unwrap_err();
        assert!(err.to_string().contains("pg_port"), "{err}");
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
    fn secrets_are_masked() {
        let s = Settings {
            admin_token: Some(Secret::new("hunter2".into())),
            ..Settings::default()
        };
        assert!(!s.to_masked_toml().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
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
    fn pg_password_is_masked() {
        let s = Settings {
            pg_password: Some(Secret::new("pg-hunter2".into())),
            ..Settings::default()
        };
        assert!(!s.to_masked_toml().contains("pg-hunter2"));
        assert!(!format!("{s:?}").contains("pg-hunter2"));
    }
}
