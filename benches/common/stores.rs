//! Postgres and Redis for the benches that measure the durable stores: reachability checks, a
//! fresh `pg_schema` with the migrations applied, a fresh Redis key prefix, and their cleanup.
//!
//! Connection settings come from the same variables as the tests (`scripts/test.sh`):
//! `PORTCULLIS_TEST_PG` (libpq `key=value` form, default
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`) and `PORTCULLIS_TEST_REDIS` (default
//! `redis://127.0.0.1:6379`). Both must be on loopback.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

const DEFAULT_PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// `PORTCULLIS_*` settings of a gateway.
pub type Settings = Vec<(String, String)>;

fn reachable(host: &str, port: u16) -> bool {
    let Ok(addr) = format!("{host}:{port}").parse::<SocketAddr>() else {
        return false;
    };
    addr.ip().is_loopback() && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// A schema of its own on the test Postgres, bootstrapped; dropped (cascade) on drop.
pub struct PgSchema {
    /// `PORTCULLIS_DATABASE=postgres` and the `PORTCULLIS_PG_*` settings, schema included.
    pub settings: Settings,
    /// The schema's name.
    pub schema: String,
    host: String,
    port: String,
    user: String,
    dbname: String,
}

impl PgSchema {
    /// A fresh schema `bench_<tag>_<pid>` with the migrations applied.
    ///
    /// # Errors
    /// `Err(reason)` when Postgres is not reachable on loopback or the migrations fail; the bench
    /// reports the reason as a skip.
    pub fn fresh(tag: &str) -> std::result::Result<Self, String> {
        let conn = std::env::var("PORTCULLIS_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.into());
        let mut host = "127.0.0.1".to_string();
        let mut port = "5432".to_string();
        let mut user = "postgres".to_string();
        let mut dbname = "postgres".to_string();
        let mut password = None;
        for pair in conn.split_whitespace() {
            match pair.split_once('=') {
                Some(("host", v)) => host = v.into(),
                Some(("port", v)) => port = v.into(),
                Some(("user", v)) => user = v.into(),
                Some(("dbname", v)) => dbname = v.into(),
                Some(("password", v)) => password = Some(v.to_string()),
                _ => {}
            }
        }
        let port_n: u16 = port.parse().map_err(|_| format!("bad port in {conn:?}"))?;
        if !reachable(&host, port_n) {
            return Err(format!(
                "needs Postgres on loopback ({conn}; set PORTCULLIS_TEST_PG)"
            ));
        }
        let schema = format!("bench_{tag}_{}", std::process::id());
        let mut settings: Settings = vec![
            ("PORTCULLIS_DATABASE".into(), "postgres".into()),
            ("PORTCULLIS_PG_HOST".into(), host.clone()),
            ("PORTCULLIS_PG_PORT".into(), port.clone()),
            ("PORTCULLIS_PG_USER".into(), user.clone()),
            ("PORTCULLIS_PG_DATABASE".into(), dbname.clone()),
            ("PORTCULLIS_PG_SCHEMA".into(), schema.clone()),
        ];
        if let Some(p) = password {
            settings.push(("PORTCULLIS_PG_PASSWORD".into(), p));
        }
        let me = Self {
            settings,
            schema,
            host,
            port,
            user,
            dbname,
        };
        me.bootstrap()
            .map_err(|e| format!("migrations bootstrap failed: {e:#}"))?;
        Ok(me)
    }

    /// `portcullis migrations bootstrap` on this schema, in-process.
    fn bootstrap(&self) -> Result<()> {
        let settings = portcullis::config::Settings::load(None, self.settings.clone())
            .map_err(|e| anyhow!("{e}"))?;
        actix_rt::System::new().block_on(async move {
            portcullis::migrations::run(
                &settings,
                portcullis::migrations::MigrationCommand::Bootstrap,
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let status = Command::new("psql")
            .args(["-h", &self.host, "-p", &self.port, "-U", &self.user])
            .arg(&self.dbname)
            .arg("-qc")
            .arg(format!("drop schema if exists \"{}\" cascade", self.schema))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            super::progress(format_args!(
                "could not drop schema {} (psql missing?); drop it by hand",
                self.schema
            ));
        }
    }
}

/// A Redis key prefix of its own; its keys are deleted on drop (through `redis-cli`).
pub struct RedisPrefix {
    /// `PORTCULLIS_REDIS_URL` and `PORTCULLIS_REDIS_PREFIX`.
    pub settings: Settings,
    url: String,
    prefix: String,
    host: String,
    port: u16,
}

impl RedisPrefix {
    /// The Redis server's host and port (for a plugin that names its Redis field by field).
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// `PORTCULLIS_REDIS_PREFIX` alone: the prefix without `redis_url`, for a gateway on the
    /// memory store whose plugin names the Redis itself.
    pub fn prefix_setting(&self) -> Settings {
        vec![("PORTCULLIS_REDIS_PREFIX".into(), self.prefix.clone())]
    }

    /// A fresh prefix `bench_<tag>_<pid>`.
    ///
    /// # Errors
    /// `Err(reason)` when Redis is not reachable on loopback.
    pub fn fresh(tag: &str) -> std::result::Result<Self, String> {
        let url = std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| DEFAULT_REDIS.into());
        let hostport = url
            .trim_start_matches("redis://")
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let (host, port) = hostport.rsplit_once(':').unwrap_or((&hostport, "6379"));
        let port: u16 = port.parse().unwrap_or(6379);
        if !reachable(host, port) {
            return Err(format!(
                "needs Redis on loopback ({url}; set PORTCULLIS_TEST_REDIS)"
            ));
        }
        let prefix = format!("bench_{tag}_{}", std::process::id());
        Ok(Self {
            settings: vec![
                ("PORTCULLIS_REDIS_URL".into(), url.clone()),
                ("PORTCULLIS_REDIS_PREFIX".into(), prefix.clone()),
            ],
            url,
            prefix,
            host: host.to_string(),
            port,
        })
    }

    fn delete_keys(&self) -> Result<()> {
        let out = Command::new("redis-cli")
            .args(["-u", &self.url, "--scan", "--pattern"])
            .arg(format!("{}:*", self.prefix))
            .output()
            .context("redis-cli")?;
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        for chunk in keys.chunks(500) {
            Command::new("redis-cli")
                .args(["-u", &self.url, "del"])
                .args(chunk)
                .stdout(Stdio::null())
                .status()?;
        }
        Ok(())
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if self.delete_keys().is_err() {
            super::progress(format_args!(
                "could not delete the Redis keys {}:* (redis-cli missing?)",
                self.prefix
            ));
        }
    }
}
