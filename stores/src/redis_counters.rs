//! Window counters in Redis, shared by every node that uses the same Redis: the `rate-limiting`
//! plugin's `redis` policy. A request is checked against all of its windows and counted in each
//! by a server-side script run by `EVALSHA`: the script reads every window's count, and only when
//! all are under their limits increments each (setting its expiry when the increment created it).
//! Redis runs a script atomically, so however many nodes and requests race, a window never admits
//! more than its limit, and a refused request counts in no window.
//!
//! Requests are batched ("smart batching"): while a script call is in flight, the requests that
//! arrive queue; when it returns, the queued ones (up to [`MAX_BATCH`]) go in one call whose script
//! handles them one after the other, in arrival order, exactly as separate calls in that order
//! would. A request arriving while nothing is in flight goes out at once: no timer, no added
//! latency at low load, and under load one round trip, one timer and one script run serve many
//! requests. A failed call fails every request of its batch.
//!
//! The script is loaded with `SCRIPT LOAD` on first use (and again when Redis answers `NOSCRIPT`,
//! after a restart or a `SCRIPT FLUSH`). Every call is bounded by the connection's timeout (a queued
//! request waits for the call in flight, then for its own: at most twice the timeout); after a
//! failure Redis is left alone for [`SKIP_AFTER_FAILURE`], so an outage costs a request nothing (no
//! connection attempt per request) and recovery needs nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::RedisConnectionInfo;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use crate::redis_conn::{Link, RedisConn, RedisTls, RedisTrust};
use crate::StoreError;

/// How long Redis is left alone after a failed call.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_millis(200);

/// Most requests one script call handles (a bound on how long the script holds Redis).
pub const MAX_BATCH: usize = 128;

/// A batch of requests, one after the other, sent as groups: consecutive requests on the same
/// windows (the common case: one client's requests queued together) form one group. `ARGV`
/// holds, per group, its window count `n`, its request count `r`, then `n` pairs (limit, expiry
/// in seconds); its windows' counters are the next `n` of `KEYS`. Returns, per group, how many
/// of its requests are admitted (`m`) then each window's count before the group, all in one text
/// separated by spaces (one reply to parse instead of an integer per count; Lua prints counts
/// below 10^14 exactly).
///
/// The requests of a group count in the same windows, so the first `m` pass and the rest are
/// refused, `m` being the room the fullest window has left (at most `r`): request `j` of the
/// group sees each count plus `min(j, m)`, exactly what `r` calls in a row would show it, and the
/// script's work per group does not grow with `r`.
///
/// Each counter is read once per batch and written once at its end (`INCRBY` by the batch's
/// admitted requests, `EXPIRE` when the batch created it): Redis runs the script atomically, so
/// nobody sees the counts in between, and the outcome is that of one call per request in order,
/// with a few Redis commands per batch instead of one or two per request.
const CHECK_AND_COUNT: &str = "\
local out, count, base, ttl, order = {}, {}, {}, {}, {}
local k, a, o = 1, 1, 1
while a <= #ARGV do
  local n, room = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  for i = 1, n do
    local key = KEYS[k + i - 1]
    local c = count[key]
    if c == nil then
      local v = redis.call('GET', key)
      if v then c = tonumber(v) else c = 0; ttl[key] = ARGV[a + 2 * i + 1] end
      count[key] = c
      base[key] = c
      order[#order + 1] = key
    end
    out[o + i] = c
    local left = tonumber(ARGV[a + 2 * i]) - c
    if left < room then room = left end
  end
  if room < 0 then room = 0 end
  out[o] = room
  if room > 0 then
    for i = 1, n do
      local key = KEYS[k + i - 1]
      count[key] = count[key] + room
    end
  end
  o = o + n + 1
  k = k + n
  a = a + 2 + 2 * n
end
for _, key in ipairs(order) do
  local added = count[key] - base[key]
  if added > 0 then
    redis.call('INCRBY', key, added)
    if ttl[key] then redis.call('EXPIRE', key, ttl[key]) end
  end
end
return table.concat(out, ' ')";

/// The script's answer: decimal numbers separated by single spaces.
fn numbers(text: &str) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(text.len() / 2 + 1);
    for word in text.as_bytes().split(|&b| b == b' ') {
        if word.is_empty() || word.len() > 19 {
            return None;
        }
        let mut n = 0u64;
        for &b in word {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u64::from(b - b'0');
        }
        out.push(n);
    }
    Some(out)
}

/// The lengths of `batch`'s groups, in order: runs of consecutive requests on the same windows
/// (the script counts a group at once).
fn group_lens(batch: &[Pending]) -> SmallVec<[usize; 8]> {
    let mut lens = SmallVec::new();
    let mut start = 0;
    for i in 1..=batch.len() {
        if i == batch.len() || !same_windows(&batch[start].windows, &batch[i].windows) {
            lens.push(i - start);
            start = i;
        }
    }
    lens
}

/// Whether two requests count in the same windows, with the same limits and expiries.
fn same_windows(a: &[Window], b: &[Window]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.limit == b.limit && a.ttl_secs == b.ttl_secs && a.key == b.key)
}

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
pub struct Window {
    /// The counter's full key (prefix included).
    pub key: String,
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
    pub before: SmallVec<[u64; 6]>,
}

/// Counters on one Redis server; clones share the connection and the queue.
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
    /// Requests waiting for the call in flight to return. Held only to push or take, never
    /// across an `.await`.
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Whether a task is sending batches (it takes the queue until it finds it empty).
    sending: bool,
    waiting: Vec<Pending>,
}

/// Set while a task sends batches: if the task is dropped before it finds the queue empty (its
/// runtime shut down), the next request starts another instead of queueing forever.
struct Sending<'a> {
    counters: &'a RedisCounters,
    armed: bool,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.counters.queue().sending = false;
        }
    }
}

/// A queued request and where its answer goes.
struct Pending {
    windows: Vec<Window>,
    reply: oneshot::Sender<Result<Counted, StoreError>>,
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
        let conn = crate::redis_conn::open_url(
            url,
            trust,
            timeout,
            crate::redis_conn::AnswerBound::Connection,
            "redis_url",
        )?;
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
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks a request against its windows and, when it is under every limit, counts it in each,
    /// atomically on the server: in the next script call, alone or with the requests that queued
    /// beside it.
    ///
    /// Must run inside a Tokio runtime (the batches are sent by a spawned task).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not answer in time (or was failing a moment
    /// ago), refuses the login, or answers something unexpected.
    pub async fn check_and_count(&self, windows: Vec<Window>) -> Result<Counted, StoreError> {
        if self.now_ms() < self.shared.skip_until_ms.load(Ordering::Relaxed) {
            return Err(unavailable("skipped after a recent failure"));
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue();
            queue.waiting.push(Pending { windows, reply });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            tokio::spawn(self.clone().send_batches());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("the batch was dropped")))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends the queued requests, a batch per call, until the queue is empty.
    async fn send_batches(self) {
        let mut sending = Sending {
            counters: &self,
            armed: true,
        };
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.queue();
                if queue.waiting.is_empty() {
                    queue.sending = false;
                    sending.armed = false;
                    return;
                }
                if queue.waiting.len() <= MAX_BATCH {
                    std::mem::take(&mut queue.waiting)
                } else {
                    queue.waiting.drain(..MAX_BATCH).collect()
                }
            };
            self.send(batch).await;
        }
    }

    /// One script call for `batch`; every request of it gets its answer, or the call's error.
    async fn send(&self, batch: Vec<Pending>) {
        // Found once: the call is built from the groups and their answers are read by them.
        let lens = group_lens(&batch);
        let res = if self.now_ms() < self.shared.skip_until_ms.load(Ordering::Relaxed) {
            Err(unavailable("skipped after a recent failure"))
        } else {
            let res = tokio::time::timeout(self.timeout, self.run(&batch, &lens))
                .await
                .map_err(|_| unavailable("timed out"))
                .and_then(|r| r);
            if res.is_err() {
                let until = self.now_ms()
                    + u64::try_from(SKIP_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX);
                self.shared.skip_until_ms.store(until, Ordering::Relaxed);
            }
            res
        };
        match res {
            Ok(answer) => {
                let mut rest = answer.as_slice();
                let mut batch = batch.into_iter();
                for len in lens {
                    let n = batch.as_slice().first().map_or(0, |p| p.windows.len());
                    let mine = rest.split_at_checked(n + 1).map(|(mine, tail)| {
                        rest = tail;
                        mine
                    });
                    for (j, pending) in batch.by_ref().take(len).enumerate() {
                        let counted = match mine {
                            Some(mine) => {
                                let seen = (j as u64).min(mine[0]);
                                Ok(Counted {
                                    admitted: (j as u64) < mine[0],
                                    before: mine[1..].iter().map(|c| c + seen).collect(),
                                })
                            }
                            None => Err(unavailable("short script answer")),
                        };
                        // The request may have gone (its client left): nothing to tell.
                        let _ = pending.reply.send(counted);
                    }
                }
            }
            Err(e) => {
                let message = match e {
                    StoreError::Unavailable(message) => message,
                    other => other.to_string(),
                };
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    async fn run(&self, batch: &[Pending], lens: &[usize]) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.here();
        let sha = match self.shared.sha.get() {
            Some(sha) => sha,
            None => self.load(&mut conn).await?,
        };
        let cmd = Self::evalsha(sha, batch, lens);
        let text: String = match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load(&mut conn).await?;
                cmd.query_async(&mut conn).await
            }
            other => other,
        }
        .map_err(unavailable)?;
        numbers(&text).ok_or_else(|| unavailable("unexpected script answer"))
    }

    /// The script call for `batch`, whose groups are `lens` long.
    fn evalsha(sha: &str, batch: &[Pending], lens: &[usize]) -> redis::Cmd {
        let firsts = || {
            lens.iter().scan(0, |at, &len| {
                let first = &batch[*at];
                *at += len;
                Some((first, len))
            })
        };
        let (mut keys, mut bytes, mut args) = (0, 0, 0);
        for (p, _) in firsts() {
            keys += p.windows.len();
            bytes += p.windows.iter().map(|w| w.key.len() + 24).sum::<usize>();
            args += 2 + 2 * p.windows.len();
        }
        // Sized once: growing the argument buffers cost more than writing them.
        let mut cmd = redis::Cmd::with_capacity(3 + keys + args, 64 + bytes + 8 * lens.len());
        cmd.arg("EVALSHA").arg(sha).arg(keys);
        for (p, _) in firsts() {
            for w in &p.windows {
                cmd.arg(&w.key);
            }
        }
        for (p, len) in firsts() {
            cmd.arg(p.windows.len()).arg(len);
            for w in &p.windows {
                cmd.arg(w.limit).arg(w.ttl_secs.max(1));
            }
        }
        cmd
    }

    /// Loads the script; its digest (the same every time).
    async fn load(&self, conn: &mut Link) -> Result<&str, StoreError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CHECK_AND_COUNT)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        Ok(self.shared.sha.get_or_init(|| sha))
    }
}

#[cfg(test)]
mod tests {
    use super::numbers;

    #[test]
    fn the_answer_is_read_as_numbers_or_refused_whole() {
        assert_eq!(
            numbers("1 0 17 99999999999999"),
            Some(vec![1, 0, 17, 99_999_999_999_999])
        );
        assert_eq!(numbers("0"), Some(vec![0]));
        for bad in [
            "",
            "1  2",
            "1 2 ",
            "-1",
            "1.5",
            "12345678901234567890",
            "1 x",
        ] {
            assert_eq!(numbers(bad), None, "{bad:?}");
        }
    }
}
