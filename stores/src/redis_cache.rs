//! The Redis layer of token lookup: records keyed by `{prefix}:tok:{sha256 hex}` (never by the raw
//! token), binary values (a version byte, then postcard: a cold lookup decodes them without scanning
//! text; JSON values cached by earlier versions still read), TTL equal to the token's remaining life. Shared by every node of a cluster so
//! a token issued on one node is a Redis hit on the others. Redis is a cache: every failure here is
//! reported as [`StoreError::Unavailable`] and the caller falls back to the durable store.
//!
//! The same connection also holds the `oauth2-introspection` verdicts of the cluster, keyed by
//! `{prefix}:introspect:{token sha256 hex}:{context hex}` (opaque JSON the gateway writes), so a token
//! introspected on one node is a hit on the others. An eviction also counts itself under
//! `{prefix}:introspect-gen:{token sha256 hex}`, and a verdict is stored only if the count is the
//! one seen when its introspection began: a call in flight during an eviction cannot put the
//! evicted verdict back.
//!
//! Two safety rules while Redis is away:
//! - after a failed command the cache is skipped for [`SKIP_AFTER_FAILURE`], so an outage costs
//!   the hot path nothing (no connect attempt per request); the connection manager reconnects by
//!   itself on the next command after that.
//! - an eviction that could not be made (Redis down or skipped) marks the cache dirty: Redis may
//!   still hold a revoked token. A dirty cache answers nothing until every key of the prefix has
//!   been deleted once Redis is back (it is only a cache; it refills from the durable store).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::model::{TokenHash, TokenRecord};
use crate::redis_batch::{self, Joined, Raw};
use crate::redis_conn::{AnswerBound, RedisConn, RedisTrust};
use crate::StoreError;

/// Connection settings of the Redis layer.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`, or `rediss://` for TLS (`#insecure` at the end: unverified).
    pub url: String,
    /// The CAs a verified `rediss://` connection trusts.
    pub trust: RedisTrust,
    /// Prefix of every key (isolates gateways and tests sharing one Redis).
    pub prefix: String,
    /// Bound on every command.
    pub timeout: Duration,
}

/// How long Redis is left alone after a failed command.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// How long Redis remembers that a token digest's verdicts were evicted: far longer than any
/// introspection call can be in flight.
const VERDICT_GENERATION_TTL_SECS: i64 = 86_400;

/// How many times a token digest's introspection verdicts had been evicted when its cached
/// verdict was read; a verdict is stored only if that is still the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerdictGeneration(pub u64);

/// Health shared by the clones of one cache.
struct Health {
    /// Origin of `skip_until_ms`.
    origin: Instant,
    /// Milliseconds since `origin` before which Redis is not asked; 0 when Redis has not failed
    /// since the last skip ended (then no clock is read).
    skip_until_ms: AtomicU64,
    /// An eviction was missed: flush the prefix before trusting Redis again.
    dirty: AtomicBool,
    /// A flush is running (one at a time).
    flushing: AtomicBool,
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    fn skipping(&self) -> bool {
        let until = self.skip_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.now_ms() < until {
            return true;
        }
        // Over: the next commands skip the clock (unless a failure since set a new end).
        let _ = self
            .skip_until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }
    fn failed(&self) {
        // At least 1: 0 means "not skipping".
        let until =
            (self.now_ms() + u64::try_from(SKIP_AFTER_FAILURE.as_millis()).unwrap_or(0)).max(1);
        self.skip_until_ms.store(until, Ordering::Relaxed);
    }
}

/// Token cache in Redis.
#[derive(Clone)]
pub struct RedisTokenCache {
    conn: RedisConn,
    prefix: String,
    timeout: Duration,
    health: Arc<Health>,
}

/// The first byte of a cached record in its binary form (then postcard). Records cached as JSON
/// by earlier versions start with `{` and still read; one with an unknown first byte reads as a
/// miss, so the durable store answers.
const RECORD_BINARY_V1: u8 = 0x01;

/// A token record as the cache stores it.
fn encode_record(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![RECORD_BINARY_V1])
        .map_err(|e| StoreError::Internal(format!("encoding a token record: {e}")))
}

/// A cached token record; `None` for bytes that are not one (then a miss).
fn decode_record(bytes: &[u8]) -> Option<TokenRecord> {
    match bytes.split_first()? {
        (&RECORD_BINARY_V1, rest) => match postcard::take_from_bytes(rest) {
            Ok((record, [])) => Some(record),
            _ => None,
        },
        (b'{', _) => serde_json::from_slice(bytes).ok(),
        _ => None,
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisTokenCache {
    /// A cache whose connection is made on first use and re-made after failures; never waits for
    /// Redis (a gateway starts while Redis is down and uses it once it is up).
    ///
    /// # Errors
    /// [`StoreError::Internal`] for a URL or trusted CAs that do not parse.
    pub fn open(settings: &RedisSettings) -> Result<Self, StoreError> {
        // Every command goes through `bounded`, which times it and counts its failure.
        let conn = crate::redis_conn::open_url(
            &settings.url,
            &settings.trust,
            settings.timeout,
            AnswerBound::Caller,
            "redis_url",
        )?;
        Ok(Self {
            conn,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            health: Arc::new(Health {
                origin: Instant::now(),
                skip_until_ms: AtomicU64::new(0),
                dirty: AtomicBool::new(false),
                flushing: AtomicBool::new(false),
            }),
        })
    }

    /// Opens and checks that Redis answers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis cannot be reached in time.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let cache = Self::open(settings).map_err(|e| unavailable(e.to_string()))?;
        cache.ping().await?;
        Ok(cache)
    }

    /// Asks Redis for a `PONG`, bypassing the skip window.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.here();
        let res: Result<String, StoreError> = tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| unavailable("timed out"))
        .and_then(|r| r.map_err(unavailable));
        res.map(|_| ())
    }

    /// `<prefix>:tok:<hex digest>`, made on every lookup the near cache misses.
    fn key(&self, hash: &TokenHash) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 5 + 64);
        key.push_str(&self.prefix);
        key.push_str(":tok:");
        hash.push_hex(&mut key);
        key
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self.health.skipping() {
            return Err(unavailable("skipped after a recent failure"));
        }
        let res = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("timed out"))
            .and_then(|r| r.map_err(unavailable));
        if res.is_err() {
            self.health.failed();
        }
        res
    }

    /// Before a read: a dirty cache is flushed first (by one caller; the others are told Redis is
    /// unavailable meanwhile and read the durable store).
    async fn ensure_clean(&self) -> Result<(), StoreError> {
        if !self.health.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        if self
            .health
            .flushing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(unavailable("flushing after missed evictions"));
        }
        // Cleared first: an eviction missed during the flush marks it dirty again.
        self.health.dirty.store(false, Ordering::Release);
        let res = self.flush().await;
        if res.is_err() {
            self.health.dirty.store(true, Ordering::Release);
        } else {
            tracing::info!("redis back: cached tokens flushed after missed evictions");
        }
        self.health.flushing.store(false, Ordering::Release);
        res
    }

    /// Deletes every key of this prefix that a missed eviction could have left stale: tokens and
    /// introspection verdicts.
    async fn flush(&self) -> Result<(), StoreError> {
        self.delete_matching(&format!("{}:tok:*", self.prefix))
            .await?;
        self.delete_matching(&format!("{}:introspect:*", self.prefix))
            .await
    }

    /// Deletes every key matching a `SCAN` pattern.
    async fn delete_matching(&self, pattern: &str) -> Result<(), StoreError> {
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.conn.here();
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            if !keys.is_empty() {
                self.bounded(conn.del::<_, ()>(keys)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The cached record for an access-token digest.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn get(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.ensure_clean().await?;
        let key = self.key(hash);
        let answer = match redis_batch::join(self.batch_id(), key) {
            Joined::NotHere(key) => {
                return Ok(self.get_raw(&key).await?.as_deref().and_then(decode_record));
            }
            Joined::Opened(answer) => {
                tokio::task::spawn_local(self.clone().send_batches());
                answer
            }
            Joined::Waiting(answer) => answer,
        };
        let raw = answer
            .await
            .map_err(|_| unavailable("the batch of lookups was dropped"))??;
        Ok(raw.as_deref().and_then(decode_record))
    }

    /// What Redis holds under `key`, as one bounded `GET`.
    async fn get_raw(&self, key: &str) -> Result<Raw, StoreError> {
        self.bounded(self.conn.here().get::<_, Raw>(key)).await
    }

    /// This cache's identity among the open batches of a thread: its shared health's address
    /// (clones share it; it outlives every batch, whose sender holds a clone).
    fn batch_id(&self) -> usize {
        Arc::as_ptr(&self.health) as usize
    }

    /// Sends the batches of lookups gathered for this cache on this thread, one command at a
    /// time, until none waits (spawned by the lookup that found no sender, so its first batch
    /// goes after the tasks already woken this turn have joined): one `MGET`, or a `GET` for one
    /// key, bounded as every command.
    async fn send_batches(self) {
        let _on_duty = redis_batch::OnDuty(self.batch_id());
        while let Some(redis_batch::Batch { keys, waiters }) = redis_batch::take(self.batch_id()) {
            let values = if let [key] = keys.as_slice() {
                self.get_raw(key).await.map(|v| vec![v])
            } else {
                let mut conn = self.conn.here();
                self.bounded(
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query_async::<Vec<Raw>>(&mut conn),
                )
                .await
            };
            redis_batch::answer(waiters, values);
        }
    }

    /// Caches a record until the earlier of its access-token and row expiry.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn put(&self, record: &TokenRecord, now: i64) -> Result<(), StoreError> {
        let access_end =
            (record.expires_in > 0).then(|| record.created_at.saturating_add(record.expires_in));
        let end = match (access_end, record.expires_at) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        let ttl = match end {
            Some(e) if e <= now => return Ok(()),
            Some(e) => u64::try_from(e - now).unwrap_or(1),
            // Never expires: keep it a day; a miss simply reads Postgres again.
            None => 86_400,
        };
        let value = encode_record(record)?;
        let mut conn = self.conn.here();
        let key = self.key(&record.access_token_hash);
        self.bounded(conn.set_ex::<_, _, ()>(key, value, ttl)).await
    }

    /// Drops cached records (revocation, rotation, deletion).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn evict(&self, hashes: &[TokenHash]) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.key(h)).collect();
        let mut conn = self.conn.here();
        let res = self.bounded(conn.del::<_, ()>(keys)).await;
        if res.is_err() {
            // Redis may still hold a revoked token: never trust it before a flush.
            self.health.dirty.store(true, Ordering::Release);
        }
        res
    }

    fn verdict_key(&self, token: &TokenHash, context: &str) -> String {
        format!("{}:introspect:{}:{context}", self.prefix, token.to_hex())
    }

    /// The eviction count of a token digest's verdicts (outside the `introspect:*` pattern, so a
    /// flush keeps it).
    fn verdict_generation_key(&self, token: &TokenHash) -> String {
        format!("{}:introspect-gen:{}", self.prefix, token.to_hex())
    }

    /// A cached introspection verdict (opaque JSON) for a token digest and a context digest
    /// (hex), with the digest's current [`VerdictGeneration`] (pass it back to
    /// [`RedisTokenCache::put_verdict`]).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn get_verdict(
        &self,
        token: &TokenHash,
        context: &str,
    ) -> Result<(Option<String>, VerdictGeneration), StoreError> {
        self.ensure_clean().await?;
        let mut conn = self.conn.here();
        let keys = [
            self.verdict_key(token, context),
            self.verdict_generation_key(token),
        ];
        let (verdict, generation): (Option<String>, Option<u64>) =
            self.bounded(conn.mget(&keys)).await?;
        Ok((verdict, VerdictGeneration(generation.unwrap_or(0))))
    }

    /// Caches an introspection verdict for `ttl` (at least one millisecond), unless the digest
    /// was evicted since `seen` was read: a verdict fetched before an eviction must not come back
    /// after it. Returns whether it was stored.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn put_verdict(
        &self,
        token: &TokenHash,
        context: &str,
        value: &str,
        ttl: Duration,
        seen: VerdictGeneration,
    ) -> Result<bool, StoreError> {
        // Compare and set in one step, on the server.
        const PUT_IF_NOT_EVICTED: &str = "if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then \
             return 0 end redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.here();
        let stored: i64 = self
            .bounded(
                redis::cmd("EVAL")
                    .arg(PUT_IF_NOT_EVICTED)
                    .arg(2)
                    .arg(self.verdict_key(token, context))
                    .arg(self.verdict_generation_key(token))
                    .arg(value)
                    .arg(ms)
                    .arg(seen.0)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(stored == 1)
    }

    /// Drops every cached verdict of a token digest (all contexts) and counts the eviction, so
    /// that a verdict fetched before it is not stored after it. A failure marks the cache dirty,
    /// like a missed token eviction: nothing in Redis is trusted again before a flush.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn evict_verdicts(&self, token: &TokenHash) -> Result<(), StoreError> {
        let res = self.count_and_delete_verdicts(token).await;
        if res.is_err() {
            self.health.dirty.store(true, Ordering::Release);
        }
        res
    }

    async fn count_and_delete_verdicts(&self, token: &TokenHash) -> Result<(), StoreError> {
        // Counted first: a put racing the deletion below either sees the new count or is
        // deleted by it.
        let mut conn = self.conn.here();
        let generation_key = self.verdict_generation_key(token);
        self.bounded(
            redis::pipe()
                .atomic()
                .incr(&generation_key, 1)
                .ignore()
                .expire(&generation_key, VERDICT_GENERATION_TTL_SECS)
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await?;
        self.delete_matching(&format!("{}:introspect:{}:*", self.prefix, token.to_hex()))
            .await
    }

    fn failures_key(&self, key: &str) -> String {
        format!("{}:authfail:{key}", self.prefix)
    }

    /// The failed client authentications recorded under `key` (a client and an address) in the
    /// window of `window_ms` ending at `now_ms`; older ones are dropped on the way. Shared by the
    /// nodes of a cluster, so a brute force spread over several nodes is counted once.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn failures_in_window(
        &self,
        key: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<FailureWindow, StoreError> {
        const COUNT: &str = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) \
             local n = redis.call('ZCARD', KEYS[1]) \
             local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES') \
             if n == 0 then return {0, -1} end return {n, tonumber(first[2])}";
        let mut conn = self.conn.here();
        let (count, oldest): (u64, i64) = self
            .bounded(
                redis::cmd("EVAL")
                    .arg(COUNT)
                    .arg(1)
                    .arg(self.failures_key(key))
                    .arg(now_ms.saturating_sub(window_ms))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(FailureWindow {
            count,
            oldest_ms: u64::try_from(oldest).ok(),
        })
    }

    /// Records one failed client authentication under `key` at `now_ms`; the key expires with
    /// the window.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), StoreError> {
        let key = self.failures_key(key);
        let member = format!("{now_ms}:{}", uuid::Uuid::new_v4().simple());
        let mut conn = self.conn.here();
        self.bounded(
            redis::pipe()
                .atomic()
                .zadd(&key, member, now_ms)
                .ignore()
                .pexpire(&key, i64::try_from(window_ms).unwrap_or(i64::MAX))
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }
}

/// What [`RedisTokenCache::failures_in_window`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    /// Failures inside the window.
    pub count: u64,
    /// When the oldest of them happened (milliseconds since the Unix epoch).
    pub oldest_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    use super::{decode_record, encode_record, Health, RECORD_BINARY_V1};
    use crate::model::{TokenHash, TokenRecord};

    #[test]
    fn a_failure_skips_redis_until_its_end_and_then_no_more() {
        let health = Health {
            origin: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
        };
        assert!(!health.skipping());
        health.failed();
        assert!(health.skipping(), "within SKIP_AFTER_FAILURE of a failure");
        assert!(health.skip_until_ms.load(Ordering::Relaxed) > 0);
        // An end already passed (1 ms after the origin): not skipping, and the end is cleared.
        health.skip_until_ms.store(1, Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(!health.skipping());
        assert_eq!(health.skip_until_ms.load(Ordering::Relaxed), 0);
        health.failed();
        assert!(health.skipping(), "a later failure skips again");
    }

    fn records() -> [TokenRecord; 2] {
        let now = 1_700_000_000;
        let sparse = TokenRecord {
            id: Uuid::from_u128(1),
            credential_id: Uuid::from_u128(2),
            service_id: None,
            access_token_hash: TokenHash([7; 32]),
            refresh_token_hash: None,
            token_type: "bearer".into(),
            expires_in: 0,
            authenticated_userid: None,
            scope: None,
            created_at: now,
            expires_at: None,
            family_id: Uuid::from_u128(3),
            code_id: None,
        };
        let full = TokenRecord {
            service_id: Some(Uuid::from_u128(4)),
            refresh_token_hash: Some(TokenHash([9; 32])),
            expires_in: 7200,
            authenticated_userid: Some("clark ✓".into()),
            scope: Some("read write".into()),
            created_at: -1,
            expires_at: Some(i64::MAX),
            code_id: Some(Uuid::from_u128(5)),
            ..sparse.clone()
        };
        [sparse, full]
    }

    /// Runs `test` on a current-thread runtime inside a `LocalSet` whose thread batches token
    /// lookups, as a proxy worker does.
    fn on_a_batching_worker<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            crate::redis_batch::batch_token_lookups();
            test().await;
        });
    }

    fn cache_at(url: String) -> super::RedisTokenCache {
        super::RedisTokenCache::open(&super::RedisSettings {
            url,
            trust: crate::redis_conn::RedisTrust::WebPki,
            prefix: format!("batch{}", Uuid::new_v4().simple()),
            timeout: std::time::Duration::from_secs(2),
        })
        .unwrap()
    }

    /// Redis's line on client `id` (its last command in `cmd=`), asked over `other`.
    async fn last_command(other: &mut redis::aio::MultiplexedConnection, id: i64) -> String {
        redis::cmd("CLIENT")
            .arg("LIST")
            .arg("ID")
            .arg(id)
            .query_async(other)
            .await
            .unwrap()
    }

    /// Lookups made in one turn of a batching worker reach Redis as one `MGET`, and each gets its
    /// own key's record, or none.
    #[test]
    fn lookups_made_in_one_turn_go_as_one_command_each_answered_with_its_own_record() {
        on_a_batching_worker(|| async {
            let url = std::env::var("PORTCULLIS_TEST_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let cache = cache_at(url.clone());
            let [sparse, full] = records();
            let one = TokenRecord {
                access_token_hash: TokenHash([1; 32]),
                ..sparse
            };
            let two = TokenRecord {
                access_token_hash: TokenHash([2; 32]),
                ..full
            };
            cache.put(&one, 0).await.expect("redis reachable");
            cache.put(&two, 0).await.unwrap();
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut cache.conn.here())
                .await
                .unwrap();
            let (got_one, got_none, got_two) = tokio::join!(
                cache.get(&one.access_token_hash),
                cache.get(&TokenHash([3; 32])),
                cache.get(&two.access_token_hash),
            );
            assert_eq!(got_one.unwrap(), Some(one.clone()));
            assert_eq!(got_none.unwrap(), None);
            assert_eq!(got_two.unwrap(), Some(two.clone()));
            // The last command of the cache's connection, seen from another one.
            let mut other = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let client = last_command(&mut other, id).await;
            assert!(client.contains(" cmd=mget "), "{client}");
            // A lookup on its own is a GET.
            assert_eq!(
                cache.get(&one.access_token_hash).await.unwrap(),
                Some(one.clone())
            );
            let client = last_command(&mut other, id).await;
            assert!(client.contains(" cmd=get "), "{client}");
            cache
                .evict(&[one.access_token_hash, two.access_token_hash])
                .await
                .unwrap();
        });
    }

    /// A batch Redis does not answer fails every lookup in it, as Unavailable (the tiered store
    /// then reads Postgres).
    #[test]
    fn a_batch_that_fails_fails_every_lookup_in_it() {
        on_a_batching_worker(|| async {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = closed.local_addr().unwrap();
            drop(closed);
            let cache = cache_at(format!("redis://{addr}"));
            let (a, b) = tokio::join!(
                cache.get(&TokenHash([1; 32])),
                cache.get(&TokenHash([2; 32]))
            );
            for got in [a, b] {
                assert!(
                    matches!(got, Err(crate::StoreError::Unavailable(_))),
                    "{got:?}"
                );
            }
        });
    }

    #[test]
    fn a_record_reads_back_as_it_was_cached() {
        for record in records() {
            let bytes = encode_record(&record).unwrap();
            assert_eq!(bytes[0], RECORD_BINARY_V1);
            // The digests travel as their 32 bytes, not as 64 hex digits.
            assert!(bytes.len() < 200, "{} bytes", bytes.len());
            assert_eq!(decode_record(&bytes), Some(record));
        }
    }

    #[test]
    fn json_an_earlier_version_cached_still_reads() {
        for record in records() {
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(decode_record(&json), Some(record));
        }
    }

    #[test]
    fn bytes_that_are_no_record_read_as_a_miss() {
        let [_, full] = records();
        let bytes = encode_record(&full).unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        let mut unknown = bytes.clone();
        unknown[0] = 0x02;
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..1],
            &longer[..],
            &unknown[..],
            b"",
            b"{\"id\":",
            b"not json",
        ] {
            assert_eq!(decode_record(bad), None, "{bad:?}");
        }
    }

    /// The token cache's connection arms no answer timer of its own ([`AnswerBound::Caller`]):
    /// every command it sends must still come back within the timeout when Redis takes the
    /// connection and never answers (a hung server, a black-holed network), as Unavailable, so
    /// that the tiered store reads Postgres instead.
    #[tokio::test]
    async fn a_redis_that_never_answers_is_unavailable_within_the_timeout() {
        use std::time::{Duration, Instant};

        use super::{RedisSettings, RedisTokenCache};
        use crate::StoreError;

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conns = Vec::new();
            while let Ok((mut conn, _)) = silent.accept().await {
                // The connection's setup (the client's `CLIENT SETINFO` pipeline) is answered,
                // one `+OK` a command; nothing after it ever is.
                let mut setup = vec![0; 4096];
                let n = conn.read(&mut setup).await.unwrap_or(0);
                let commands = setup[..n].windows(3).filter(|w| w == b"\r\n*").count()
                    + usize::from(setup.first() == Some(&b'*'));
                let _ = conn.write_all(&b"+OK\r\n".repeat(commands)).await;
                conns.push(conn);
            }
        });
        let cache = RedisTokenCache::open(&RedisSettings {
            url: format!("redis://{addr}"),
            trust: crate::redis_conn::RedisTrust::WebPki,
            prefix: "silent".into(),
            timeout: Duration::from_millis(300),
        })
        .unwrap();
        // Unavailable, and well within the test's own limit (which a hang would reach).
        async fn unavailable_in_time<T: std::fmt::Debug>(
            command: impl std::future::Future<Output = Result<T, StoreError>>,
        ) {
            let started = Instant::now();
            let got = tokio::time::timeout(Duration::from_secs(10), command)
                .await
                .expect("the command came back");
            assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
        unavailable_in_time(cache.get(&TokenHash([7; 32]))).await;
        // Past the skip window, a write is bounded the same way.
        tokio::time::sleep(super::SKIP_AFTER_FAILURE).await;
        let [record, _] = records();
        unavailable_in_time(cache.put(&record, 0)).await;
        held.abort();
    }
}
