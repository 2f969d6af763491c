//! The durable stores: configuration and tokens in Postgres, shared by every gateway node pointed
//! at the same database (and schema).
//!
//! # Layout
//! - this module: [`PgSettings`], the connection pool ([`connect`]) and the one mapping of driver
//!   errors to [`StoreError`] (SQLSTATE codes, never message text).
//! - [`config`]: [`PgConfigStore`], documents mapped to real columns per entity.
//! - [`tokens`]: [`PgTokenStore`], digests in `bytea` columns, atomic code and refresh redemption.
//! - [`migrate`]: the numbered SQL files of `migrations/` and the migrator that applies them.
//! - [`listen`]: the cluster invalidation listener (LISTEN/NOTIFY on a dedicated connection).

pub mod config;
pub mod listen;
pub mod migrate;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use crate::StoreError;

pub use config::PgConfigStore;
/// The connection pool type the stores share (re-exported so the gateway need not name deadpool).
pub use deadpool_postgres::Pool;
pub use migrate::{MigrationStatus, Migrator};
pub use tokens::PgTokenStore;

/// How to reach Postgres; the stores crate's own copy so it does not depend on the gateway config.
#[derive(Clone)]
pub struct PgSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Password, if the server asks for one. Never printed.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// Schema holding every table (isolates tenants and tests); `None` = the server default.
    pub schema: Option<String>,
    /// Pool size.
    pub max_connections: usize,
    /// Connect, pool-wait and statement timeout.
    pub timeout: Duration,
    /// TLS to the server (verified against the webpki roots).
    pub ssl: bool,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("dbname", &self.dbname)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .field("ssl", &self.ssl)
            .finish()
    }
}

impl PgSettings {
    /// Reads a libpq-style `key=value` connection string (tests use `PORTCULLIS_TEST_PG`).
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the string does not parse or names no TCP host.
    pub fn from_conn_str(s: &str) -> Result<Self, StoreError> {
        let cfg: tokio_postgres::Config = s
            .parse()
            .map_err(|e| StoreError::Internal(format!("bad connection string: {e}")))?;
        let host = cfg
            .get_hosts()
            .iter()
            .find_map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => None,
            })
            .unwrap_or_else(|| "127.0.0.1".into());
        Ok(Self {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_string(),
            password: cfg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: cfg.get_dbname().unwrap_or("postgres").to_string(),
            schema: None,
            max_connections: 8,
            timeout: Duration::from_secs(5),
            ssl: false,
        })
    }

    /// `host:port`, for error lines.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Whether `name` can be used as `pg_schema`: a plain lower-case SQL identifier, so it never
/// needs quoting in `search_path` or DDL.
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Builds the pool (every connection gets `search_path` and `statement_timeout` at connect time)
/// and checks that the server answers.
///
/// # Errors
/// [`StoreError::Unavailable`] with one line naming `host:port` and the cause;
/// [`StoreError::Internal`] for an invalid schema name or TLS setup.
pub async fn connect(settings: &PgSettings) -> Result<Pool, StoreError> {
    let pool = pool(settings)?;
    let client = pool.get().await.map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot connect to Postgres at {}: {}",
            settings.endpoint(),
            pool_cause(&e)
        ))
    })?;
    client.simple_query("SELECT 1").await.map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot connect to Postgres at {}: {}",
            settings.endpoint(),
            cause_chain(&e)
        ))
    })?;
    Ok(pool)
}

/// The driver configuration every connection of `settings` uses: `search_path` and
/// `statement_timeout` set at connect time, bounded connect, keepalives.
///
/// # Errors
/// [`StoreError::Internal`] for an invalid schema name.
pub(crate) fn driver_config(settings: &PgSettings) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name("portcullis")
        .connect_timeout(settings.timeout)
        // A server that vanishes without closing the socket (crash, partition) must fail the
        // next statement within the timeout, not after minutes of TCP retransmissions; idle
        // pooled connections to it are noticed by keepalives and dropped.
        .tcp_user_timeout(settings.timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    if let Some(p) = &settings.password {
        cfg.password(p);
    }
    let mut options = format!("-c statement_timeout={}", settings.timeout.as_millis());
    if let Some(schema) = &settings.schema {
        if !valid_schema_name(schema) {
            return Err(StoreError::Internal(format!(
                "pg_schema: invalid schema name '{schema}' (lower-case letters, digits and _)"
            )));
        }
        options.push_str(&format!(" -c search_path={schema}"));
    }
    cfg.options(&options);
    cfg.ssl_mode(if settings.ssl {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Disable
    });
    Ok(cfg)
}

/// Builds the pool without connecting (connections are made on first use and re-made after a
/// server restart: closed connections are dropped when they come back to the pool).
///
/// # Errors
/// [`StoreError::Internal`] for an invalid schema name or TLS setup.
pub fn pool(settings: &PgSettings) -> Result<Pool, StoreError> {
    let cfg = driver_config(settings)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if settings.ssl {
        Manager::from_config(cfg, tls_connector()?, manager_config)
    } else {
        Manager::from_config(cfg, tokio_postgres::NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(settings.max_connections.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.timeout))
        .create_timeout(Some(settings.timeout))
        .recycle_timeout(Some(settings.timeout))
        .build()
        .map_err(|e| StoreError::Internal(format!("postgres pool: {e}")))
}

pub(crate) fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Internal(format!("pg_ssl: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The error's message followed by its sources, `: `-separated (driver errors carry no secrets).
pub(crate) fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => cause_chain(e),
        deadpool_postgres::PoolError::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// A pool that cannot hand out a connection: the server is down, unreachable or saturated.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    let cause = pool_cause(&e);
    tracing::warn!(%cause, "postgres unavailable");
    StoreError::Unavailable(cause)
}

/// What a failed statement means, decided from its SQLSTATE.
pub(crate) enum DbFailure {
    /// 23505, with the violated constraint (or index) name.
    Unique(String),
    /// 23503, with the violated constraint name.
    ForeignKey(String),
    /// Anything else, already reduced to a store error.
    Other(StoreError),
}

/// Classifies a driver error: constraint violations by SQLSTATE and constraint name, lost
/// connections and server shutdowns as [`StoreError::Unavailable`], the rest as internal.
pub(crate) fn classify(e: tokio_postgres::Error) -> DbFailure {
    if let Some(db) = e.as_db_error() {
        let constraint = db.constraint().unwrap_or_default().to_string();
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return DbFailure::Unique(constraint);
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return DbFailure::ForeignKey(constraint);
        }
        // 22021 / 22P05: a character the database cannot store (the pre-checks catch NUL).
        if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
        {
            return DbFailure::Other(StoreError::InvalidValue {
                field: "@entity".into(),
                reason: "invalid value: contains a character the database cannot store",
            });
        }
        // Class 08 (connection exception), 57P0x (shutdown, crash, cannot connect now),
        // 53xxx (insufficient resources), 57014 (statement timeout): retrying later may work.
        let unavailable = code.code().starts_with("08")
            || code.code().starts_with("57P")
            || code.code().starts_with("53")
            || *code == SqlState::QUERY_CANCELED;
        return DbFailure::Other(if unavailable {
            tracing::warn!(code = code.code(), "postgres unavailable");
            StoreError::Unavailable(format!("postgres: {}", code.code()))
        } else {
            tracing::error!(code = code.code(), error = %db, "postgres statement failed");
            StoreError::Internal(format!("postgres: {}", code.code()))
        });
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        tracing::warn!(cause = %cause_chain(&e), "postgres connection lost");
        DbFailure::Other(StoreError::Unavailable("connection lost".into()))
    } else {
        tracing::error!(cause = %cause_chain(&e), "postgres client error");
        DbFailure::Other(StoreError::Internal("postgres client error".into()))
    }
}

/// What a client is told about a string Postgres cannot store.
pub(crate) const NUL_REASON: &str = "invalid value: must not contain a NUL character";

/// Whether a JSON value holds a string (or object key) with a NUL character, which neither
/// Postgres `text` nor `jsonb` can store.
pub(crate) fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Refuses a NUL character in a text value before it reaches the database.
pub(crate) fn check_text(field: &str, value: Option<&str>) -> Result<(), StoreError> {
    if value.is_some_and(|s| s.contains('\0')) {
        return Err(StoreError::InvalidValue {
            field: field.to_string(),
            reason: NUL_REASON,
        });
    }
    Ok(())
}

/// A driver error where no constraint violation is expected.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    match classify(e) {
        DbFailure::Unique(_) => StoreError::UniqueViolation {
            fields: serde_json::Map::new(),
        },
        DbFailure::ForeignKey(c) => StoreError::Internal(format!("foreign key {c}")),
        DbFailure::Other(e) => e,
    }
}
