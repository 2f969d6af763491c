//! Window counters in Redis, shared by every node that uses the same Redis: the `rate-limiting`
//! plugin's `redis` policy. One call checks and counts a request against all of its windows in
//! one round trip, with a server-side script run by `EVALSHA`: the script reads every window's
//! count, and only when all are under their limits increments each (setting its expiry when the
//! increment created it). Redis runs a script atomically, so however many nodes and requests race,
//! a window never admits more than its limit, and a refused request counts in no window.
//!
//! The script is loaded with `SCRIPT LOAD` on first use (and again when Redis answers `NOSCRIPT`,
//! after a restart or a `SCRIPT FLUSH`). Every command is bounded by the connection's timeout;
//! after a failure Redis is left alone for [`SKIP_AFTER_FAILURE`], so an outage costs a request
//! nothing (no connection attempt per request) and recovery needs nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::RedisConnectionInfo;

use crate::redis_conn::{RedisConn, RedisTls, RedisTrust};
use crate::StoreError;

/// How long Redis is left alone after a failed call.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_millis(200);

/// `KEYS[i]` a window's counter, `ARGV[2i-1]` its limit, `ARGV[2i]` its expiry in seconds.
/// Returns `{admitted (0|1), count before this request of window 1, of window 2, …}`.
const CHECK_AND_COUNT: &str = "\
local counts = {1}
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  counts[i + 1] = n
  if n >= tonumber(ARGV[2 * i - 1]) then counts[1] = 0 end
end
if counts[1] == 1 then
  for i, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
  end
end
return counts";

/// Where a Redis server is and how to log in (never printed: no `Debug`, the password is here).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number (`SELECT`).
    pub database: i64,
    /// ACL user name (Redis 6+), if any.
    pub username: Option<String>,
    /// Password (`AUTH`), if any.
    pub password: Option<String>,
    /// Bound on connecting and on every call, in milliseconds.
    pub timeout_ms: u64,
    /// TLS, if the server is reached over TLS.
    pub tls: Option<RedisTls>,
}

/// One window of a request: its counter's key, its limit and how long the counter lives.
#[derive(Debug, Clone)]
pub struct Window<'a> {
    /// The counter's full key (prefix included).
    pub key: &'a str,
    /// Requests the window admits.
    pub limit: u64,
    /// Seconds the counter lives after its first request.
    pub ttl_secs: u64,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Whether the request was under every limit (and so was counted in every window).
    pub admitted: bool,
    /// Each window's count before this request, in the order given.
    pub before: Vec<u64>,
}

/// Counters on one Redis server; clones share the connection.
#[derive(Clone)]
pub struct RedisCounters {
    conn: RedisConn,
    timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    /// The script's digest once loaded (a SHA-1 of the script: it never changes).
    sha: OnceLock<String>,
    /// Origin of `skip_until_ms`.
    origin: Instant,
    /// Milliseconds since `origin` before which Redis is not asked.
    skip_until_ms: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisCounters {
    /// Counters on the server of a `redis://` or `rediss://` URL (the gateway's `redis_url`); a
    /// verified `rediss://` connection trusts `trust`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] for a URL or trusted CAs that do not parse.
    pub fn open_url(url: &str, timeout: Duration, trust: &RedisTrust) -> Result<Self, StoreError> {
        let conn = crate::redis_conn::open_url(url, trust, timeout, "redis_url")?;
        Ok(Self::on(conn, timeout))
    }

    /// Counters on a server named field by field (a plugin's `config.redis`); a verified TLS
    /// connection trusts `trust`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the connection cannot be set up.
    pub fn open(target: &RedisTarget, trust: &RedisTrust) -> Result<Self, StoreError> {
        let mut redis = RedisConnectionInfo::default().set_db(target.database);
        if let Some(user) = &target.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &target.password {
            redis = redis.set_password(password);
        }
        let timeout = Duration::from_millis(target.timeout_ms.max(1));
        let conn = crate::redis_conn::open_host(
            &target.host,
            target.port,
            target.tls.as_ref(),
            trust,
            redis,
            timeout,
        )?;
        Ok(Self::on(conn, timeout))
    }

    /// Never waits for Redis: the connection is made on first use and re-made after failures.
    fn on(conn: RedisConn, timeout: Duration) -> Self {
        Self {
            conn,
            timeout,
            shared: Arc::new(Shared {
                sha: OnceLock::new(),
                origin: Instant::now(),
                skip_until_ms: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks a request against its windows and, when it is under every limit, counts it in each:
    /// one round trip, atomic on the server.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not answer in time (or was failing a moment
    /// ago), refuses the login, or answers something unexpected.
    pub async fn check_and_count(&self, windows: &[Window<'_>]) -> Result<Counted, StoreError> {
        if self.now_ms() < self.shared.skip_until_ms.load(Ordering::Relaxed) {
            return Err(unavailable("skipped after a recent failure"));
        }
        let res = tokio::time::timeout(self.timeout, self.run(windows))
            .await
            .map_err(|_| unavailable("timed out"))
            .and_then(|r| r);
        if res.is_err() {
            let until =
                self.now_ms() + u64::try_from(SKIP_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX);
            self.shared.skip_until_ms.store(until, Ordering::Relaxed);
        }
        res
    }

    async fn run(&self, windows: &[Window<'_>]) -> Result<Counted, StoreError> {
        let mut conn = self.conn.clone();
        let sha = match self.shared.sha.get() {
            Some(sha) => sha,
            None => self.load(&mut conn).await?,
        };
        let answer = match Self::evalsha(sha, windows, &mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load(&mut conn).await?;
                Self::evalsha(sha, windows, &mut conn).await
            }
            other => other,
        }
        .map_err(unavailable)?;
        let (admitted, before) = answer
            .split_first()
            .ok_or_else(|| unavailable("empty script answer"))?;
        Ok(Counted {
            admitted: *admitted == 1,
            before: before.to_vec(),
        })
    }

    async fn evalsha(
        sha: &str,
        windows: &[Window<'_>],
        conn: &mut RedisConn,
    ) -> redis::RedisResult<Vec<u64>> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(windows.len());
        for w in windows {
            cmd.arg(w.key);
        }
        for w in windows {
            cmd.arg(w.limit).arg(w.ttl_secs.max(1));
        }
        cmd.query_async(conn).await
    }

    /// Loads the script; its digest (the same every time).
    async fn load(&self, conn: &mut RedisConn) -> Result<&str, StoreError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CHECK_AND_COUNT)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        Ok(self.shared.sha.get_or_init(|| sha))
    }
}
