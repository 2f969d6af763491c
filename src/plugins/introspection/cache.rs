//! The verdict cache: one process-wide, bounded cache of introspection answers, shared by every
//! `oauth2-introspection` instance and by the admin API (which evicts entries), in front of the
//! cluster's Redis when one is configured.
//!
//! - Keyed by the SHA-256 digest of the token (the raw token is never stored) plus a digest of
//!   everything that could change the verdict (URL, credentials, hint, custom headers, and the
//!   request path/method with `introspect_request`), so two instances never share an answer.
//! - Positive verdicts live `min(ttl, exp - now)` (RFC 7662 §4: never beyond `exp`), negative ones
//!   at most [`NEGATIVE_TTL`]; failures are never cached.
//! - Concurrent misses for one key make exactly one call: moka's `try_get_with` runs the first
//!   caller's future and parks the others on it (single-flight, like pingora's `read_through`).
//!
//! - In a cluster (Postgres + Redis) this cache is L1 and Redis is L2: a miss here asks Redis
//!   (`{prefix}:introspect:{token hex}:{context hex}`, expiring with the verdict) before the
//!   authorization server, and an answer from the server is written there, so a token introspected
//!   on one node is a hit on every node. Redis failures only cost the shared tier: the node then
//!   asks the server itself (never an error for the client).
//! - [`IntrospectionCache::evict_everywhere`] (the admin API) drops the verdicts here, deletes them
//!   from Redis and announces the digest on the Postgres bus; every node's cluster sync actor then
//!   calls [`IntrospectionCache::evict`] on its own L1 — the same path, and the same sub-second
//!   delivery, as an `oauth2` token revocation.
//! - An answer still in flight when an eviction is made is not cached: it serves the requests that
//!   were waiting for it (they began before the eviction) and nothing after. On this node a count
//!   of evictions tells; in Redis the digest's eviction count, compared and set on the server.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue};
use moka::future::Cache;
use moka::Expiry;
use portcullis_stores::postgres::listen::announce_verdict_eviction;
use portcullis_stores::postgres::Pool;
use portcullis_stores::redis_cache::{RedisTokenCache, VerdictGeneration};
use portcullis_stores::{StoreError, TokenHash};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims;
use super::error::IntrospectionError;

/// How many verdicts the cache keeps before evicting the least useful ones (each is well under a
/// kilobyte, so this bounds the cache to tens of megabytes).
pub const CAPACITY: u64 = 100_000;

/// Longest time an `active: false` verdict is remembered: long enough to absorb a flood of one bad
/// token, short enough that a freshly issued token reusing a value is not refused for long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// How long Redis keeps a verdict that has neither `ttl` nor `exp` (L1 keeps it until evicted).
const SHARED_UNBOUNDED_TTL: Duration = Duration::from_secs(86_400);

/// Identifies one cached verdict.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// SHA-256 of the token.
    pub token: TokenHash,
    /// SHA-256 of what else the verdict depends on (server, credentials, request details).
    pub context: [u8; 32],
}

/// One introspection answer, as cached.
pub struct Verdict {
    /// RFC 7662 `active`.
    pub active: bool,
    /// The answer's members (empty for inactive tokens).
    pub claims: Map<String, Value>,
    /// The standard claims' upstream headers ([`claims::standard_headers`]), made once here
    /// instead of at every request the verdict admits.
    pub forwarded: Vec<(&'static HeaderName, HeaderValue)>,
    /// How long the cache may keep it (`None`: until evicted).
    cache_for: Option<Duration>,
}

impl Verdict {
    /// A verdict cached according to `ttl` (seconds, 0 = no limit) and the token's `exp`.
    pub fn new(active: bool, claims: Map<String, Value>, ttl: f64, now_unix: i64) -> Self {
        let exp = claims.get("exp").and_then(Value::as_i64);
        let cache_for = cache_duration(active, ttl, exp, now_unix);
        Self::lasting(active, claims, cache_for)
    }

    /// A verdict the cache keeps for `cache_for`.
    fn lasting(active: bool, claims: Map<String, Value>, cache_for: Option<Duration>) -> Self {
        let claims = if active { claims } else { Map::new() };
        Self {
            active,
            forwarded: claims::standard_headers(&claims),
            claims,
            cache_for,
        }
    }
}

/// A verdict as written to Redis: the expiry is absolute, so every node reading it keeps it only
/// for what is left.
#[derive(Serialize, Deserialize)]
struct SharedVerdict {
    active: bool,
    claims: Map<String, Value>,
    /// Unix milliseconds after which the verdict is void (`None`: until evicted).
    until_ms: Option<u128>,
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl SharedVerdict {
    fn of(verdict: &Verdict, now_ms: u128) -> Self {
        Self {
            active: verdict.active,
            claims: verdict.claims.clone(),
            until_ms: verdict.cache_for.map(|d| now_ms + d.as_millis()),
        }
    }

    /// The verdict with what is left of its life; `None` once it has run out.
    fn into_verdict(self, now_ms: u128) -> Option<Verdict> {
        let cache_for = match self.until_ms {
            Some(until) if until <= now_ms => return None,
            Some(until) => Some(Duration::from_millis(
                u64::try_from(until - now_ms).unwrap_or(u64::MAX),
            )),
            None => None,
        };
        Some(Verdict::lasting(self.active, self.claims, cache_for))
    }
}

/// `min(ttl, exp - now)` for active tokens, `min(ttl, NEGATIVE_TTL)` for inactive ones.
fn cache_duration(active: bool, ttl: f64, exp: Option<i64>, now_unix: i64) -> Option<Duration> {
    let ttl = (ttl > 0.0)
        .then(|| Duration::try_from_secs_f64(ttl).ok())
        .flatten();
    if !active {
        return Some(ttl.map_or(NEGATIVE_TTL, |t| t.min(NEGATIVE_TTL)));
    }
    let until_exp = exp.map(|e| Duration::from_secs(u64::try_from(e - now_unix).unwrap_or(0)));
    match (ttl, until_exp) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct PerEntry;

impl Expiry<CacheKey, Arc<Verdict>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Verdict>,
        _created_at: Instant,
    ) -> Option<Duration> {
        value.cache_for
    }
}

/// The cluster's side of the cache: Redis (L2) and the Postgres bus eviction is announced on.
#[derive(Clone, Default)]
pub struct SharedTier {
    /// Verdicts shared by the nodes.
    pub redis: Option<RedisTokenCache>,
    /// Where evictions are announced to the other nodes.
    pub bus: Option<Pool>,
}

/// The cache's hasher: foldhash, seeded at random per process. Keys are SHA-256 digests, so no
/// client can aim its tokens at one bucket without the seed, and a lookup per proxied request
/// hashes 64 bytes in a few instructions where moka's default SipHash took over 300.
type KeyHasher = foldhash::fast::RandomState;

/// Handle on the process-wide verdict cache; clones share it.
#[derive(Clone)]
pub struct IntrospectionCache {
    inner: Cache<CacheKey, Arc<Verdict>, KeyHasher>,
    shared: SharedTier,
    /// Evictions made on this node so far (an answer fetched across one is not cached).
    evictions: Arc<AtomicU64>,
}

/// Why a miss left nothing in the cache.
enum Miss {
    /// The call failed: shared with the waiting requests, never cached.
    Failed(Arc<IntrospectionError>),
    /// An eviction was made while the call was in flight: the answer serves the requests that
    /// were waiting for it and is not cached.
    Superseded(Arc<Verdict>),
}

impl Default for IntrospectionCache {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

impl IntrospectionCache {
    /// A node-local cache holding at most `capacity` verdicts.
    pub fn new(capacity: u64) -> Self {
        Self::clustered(capacity, SharedTier::default())
    }

    /// A cache of `capacity` verdicts in front of the cluster's shared tier.
    pub fn clustered(capacity: u64, shared: SharedTier) -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build_with_hasher(KeyHasher::default()),
            shared,
            evictions: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The cached verdict when it can be read without waiting: a proxied request whose verdict
    /// is cached is then checked without a future. `None` is a miss, or moka needing to wait for
    /// its housekeeping (rare): [`Self::get_or_introspect`] then answers. moka's futures are
    /// cancel-safe at every await, so giving up on one that would wait loses nothing.
    pub fn get_now(&self, key: &CacheKey) -> Option<Arc<Verdict>> {
        self.inner.get(key).now_or_never().flatten()
    }

    /// The cached verdict, or the result of the call `introspect` makes — run once however many
    /// requests miss on the same key together. Errors are shared with the waiting requests but not
    /// cached.
    ///
    /// # Errors
    /// The introspection error of the one call made for this miss.
    pub async fn get_or_introspect<M, F>(
        &self,
        key: CacheKey,
        introspect: M,
    ) -> Result<Arc<Verdict>, Arc<IntrospectionError>>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Verdict, IntrospectionError>>,
    {
        if let Some(verdict) = self.inner.get(&key).await {
            return Ok(verdict);
        }
        // A miss: its state (the HTTP call, the Redis round trips) is large and rare next to
        // hits, so it is made only now and boxed: the future of every cached request stays small
        // (it is allocated and moved per request).
        Box::pin(self.fetch(key, introspect())).await
    }

    /// [`Self::get_or_introspect`] after a miss.
    async fn fetch<F>(
        &self,
        key: CacheKey,
        introspect: F,
    ) -> Result<Arc<Verdict>, Arc<IntrospectionError>>
    where
        F: Future<Output = Result<Verdict, IntrospectionError>>,
    {
        let redis = self.shared.redis.as_ref();
        let (token, context) = (key.token, key.context);
        let evictions = &self.evictions;
        let started = evictions.load(Ordering::Acquire);
        let fetched = self
            .inner
            .try_get_with(key, async move {
                let outcome = |verdict: Verdict| {
                    let verdict = Arc::new(verdict);
                    if evictions.load(Ordering::Acquire) == started {
                        Ok(verdict)
                    } else {
                        Err(Miss::Superseded(verdict))
                    }
                };
                // Only a miss gets here: the Redis key is spelled out then, never on a hit.
                let Some(redis) = redis else {
                    let verdict = introspect.await.map_err(|e| Miss::Failed(Arc::new(e)))?;
                    return outcome(verdict);
                };
                let context = TokenHash(context).to_hex();
                let (shared, generation) = shared_get(redis, &token, &context).await;
                if let Some(verdict) = shared {
                    return outcome(verdict);
                }
                let verdict = introspect.await.map_err(|e| Miss::Failed(Arc::new(e)))?;
                if let Some(generation) = generation {
                    shared_put(redis, &token, &context, &verdict, generation).await;
                }
                outcome(verdict)
            })
            .await;
        fetched.or_else(|miss| match &*miss {
            Miss::Superseded(verdict) => Ok(verdict.clone()),
            Miss::Failed(e) => Err(e.clone()),
        })
    }

    /// Drops this token's verdicts on this node, in Redis, and (through the Postgres bus) on every
    /// other node; returns how many were dropped here.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the other nodes could not be told (Postgres down): this
    /// node and Redis are clean, the others keep their copy until it expires.
    pub async fn evict_everywhere(&self, token: &TokenHash) -> Result<usize, StoreError> {
        let evicted = self.evict(token).await;
        if let Some(redis) = &self.shared.redis {
            if let Err(e) = redis.evict_verdicts(token).await {
                // Marked dirty by the store: Redis answers nothing until it has been flushed.
                tracing::warn!(error = %e, "oauth2-introspection: shared cache not evicted; it will be flushed when Redis answers");
            }
        }
        if let Some(pool) = &self.shared.bus {
            announce_verdict_eviction(pool, token).await?;
        }
        Ok(evicted)
    }

    /// Empties this node's L1 (the cluster listener reconnected: evictions may have been missed).
    pub fn clear_local(&self) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        self.inner.invalidate_all();
    }

    /// Drops every verdict for this token digest on this node (all instances); returns how many
    /// were dropped.
    pub async fn evict(&self, token: &TokenHash) -> usize {
        // Counted first: a call in flight now must not cache what it brings back.
        self.evictions.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<Arc<CacheKey>> = self
            .inner
            .iter()
            .filter(|(k, _)| k.token == *token)
            .map(|(k, _)| k)
            .collect();
        for key in &keys {
            self.inner.invalidate(key.as_ref()).await;
        }
        keys.len()
    }
}

/// The verdict Redis holds for this key, if any is left, and the digest's eviction count (`None`:
/// Redis failed, which is a miss and no put).
async fn shared_get(
    redis: &RedisTokenCache,
    token: &TokenHash,
    context: &str,
) -> (Option<Verdict>, Option<VerdictGeneration>) {
    let (raw, generation) = match redis.get_verdict(token, context).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "oauth2-introspection: shared cache skipped");
            return (None, None);
        }
    };
    let verdict = raw
        .and_then(|raw| serde_json::from_str::<SharedVerdict>(&raw).ok())
        .and_then(|shared| shared.into_verdict(unix_ms()));
    (verdict, Some(generation))
}

/// Shares a fresh verdict with the other nodes, unless the digest was evicted since `generation`
/// was read; a Redis failure only costs them a call.
async fn shared_put(
    redis: &RedisTokenCache,
    token: &TokenHash,
    context: &str,
    verdict: &Verdict,
    generation: VerdictGeneration,
) {
    let ttl = match verdict.cache_for {
        Some(d) if d.is_zero() => return,
        Some(d) => d,
        None => SHARED_UNBOUNDED_TTL,
    };
    let Ok(value) = serde_json::to_string(&SharedVerdict::of(verdict, unix_ms())) else {
        return;
    };
    match redis
        .put_verdict(token, context, &value, ttl, generation)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("oauth2-introspection: verdict evicted while in flight; not shared")
        }
        Err(e) => tracing::debug!(error = %e, "oauth2-introspection: verdict not shared"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_verdicts_never_outlive_exp_or_ttl() {
        let s = Duration::from_secs;
        assert_eq!(cache_duration(true, 30.0, Some(1_010), 1_000), Some(s(10)));
        assert_eq!(cache_duration(true, 30.0, Some(9_000), 1_000), Some(s(30)));
        assert_eq!(cache_duration(true, 30.0, Some(900), 1_000), Some(s(0)));
        assert_eq!(cache_duration(true, 0.0, Some(1_010), 1_000), Some(s(10)));
        assert_eq!(cache_duration(true, 30.0, None, 1_000), Some(s(30)));
        assert_eq!(cache_duration(true, 0.0, None, 1_000), None);
    }

    #[test]
    fn negative_verdicts_are_short() {
        assert_eq!(cache_duration(false, 30.0, None, 0), Some(NEGATIVE_TTL));
        assert_eq!(cache_duration(false, 0.0, None, 0), Some(NEGATIVE_TTL));
        assert_eq!(
            cache_duration(false, 1.0, None, 0),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn shared_verdicts_keep_only_what_is_left_of_their_life() {
        let v = Verdict::new(true, Map::new(), 30.0, 0);
        let shared = SharedVerdict::of(&v, 1_000_000);
        assert_eq!(shared.until_ms, Some(1_030_000));
        let round: SharedVerdict =
            serde_json::from_str(&serde_json::to_string(&shared).unwrap()).unwrap();
        let back = round.into_verdict(1_010_000).unwrap();
        assert!(back.active);
        assert_eq!(back.cache_for, Some(Duration::from_secs(20)));
        assert!(SharedVerdict::of(&v, 0).into_verdict(30_000).is_none());
        let forever = Verdict::new(true, Map::new(), 0.0, 0);
        let kept = SharedVerdict::of(&forever, 5)
            .into_verdict(u128::MAX)
            .unwrap();
        assert_eq!(kept.cache_for, None);
    }

    #[actix_rt::test]
    async fn concurrent_misses_make_one_call_and_evict_drops_all_contexts() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = IntrospectionCache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let token = crate::crypto::token_hash("t");
        let key = |c: u8| CacheKey {
            token,
            context: [c; 32],
        };
        let lookups = (0..20).map(|_| {
            let calls = calls.clone();
            cache.get_or_introspect(key(1), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                actix_rt::task::yield_now().await;
                Ok(Verdict::new(true, Map::new(), 30.0, 0))
            })
        });
        for r in futures_util::future::join_all(lookups).await {
            assert!(r.unwrap().active);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get_or_introspect(key(2), || async {
                Ok(Verdict::new(true, Map::new(), 30.0, 0))
            })
            .await
            .unwrap();
        assert_eq!(cache.evict(&token).await, 2);
        assert_eq!(cache.evict(&token).await, 0);
    }
}
