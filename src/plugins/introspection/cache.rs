//! The verdict cache: one process-wide, bounded cache of introspection answers, shared by every
//! `oauth2-introspection` instance and by the admin API (which evicts entries).
//!
//! - Keyed by the SHA-256 digest of the token (the raw token is never stored) plus a digest of
//!   everything that could change the verdict (URL, credentials, hint, custom headers, and the
//!   request path/method with `introspect_request`), so two instances never share an answer.
//! - Positive verdicts live `min(ttl, exp - now)` (RFC 7662 §4: never beyond `exp`), negative ones
//!   at most [`NEGATIVE_TTL`]; failures are never cached.
//! - Concurrent misses for one key make exactly one call: moka's `try_get_with` runs the first
//!   caller's future and parks the others on it (single-flight, like pingora's `read_through`).
//!
//! Seam for the cluster-shared cache (Redis, a later issue): the runtime and the admin API only use
//! [`IntrospectionCache::get_or_introspect`] and [`IntrospectionCache::evict`]. A shared tier goes
//! behind those two methods — this cache as L1, Redis as L2 keyed by the hex digests, and `evict`
//! publishing the digest on a channel every node's L1 listens to — without touching the callers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use portcullis_stores::TokenHash;
use serde_json::{Map, Value};

use super::error::IntrospectionError;

/// How many verdicts the cache keeps before evicting the least useful ones (each is well under a
/// kilobyte, so this bounds the cache to tens of megabytes).
pub const CAPACITY: u64 = 100_000;

/// Longest time an `active: false` verdict is remembered: long enough to absorb a flood of one bad
/// token, short enough that a freshly issued token reusing a value is not refused for long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

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
    /// How long the cache may keep it (`None`: until evicted).
    cache_for: Option<Duration>,
}

impl Verdict {
    /// A verdict cached according to `ttl` (seconds, 0 = no limit) and the token's `exp`.
    pub fn new(active: bool, claims: Map<String, Value>, ttl: f64, now_unix: i64) -> Self {
        let exp = claims.get("exp").and_then(Value::as_i64);
        let cache_for = cache_duration(active, ttl, exp, now_unix);
        Self {
            active,
            claims: if active { claims } else { Map::new() },
            cache_for,
        }
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

/// Handle on the process-wide verdict cache; clones share it.
#[derive(Clone)]
pub struct IntrospectionCache {
    inner: Cache<CacheKey, Arc<Verdict>>,
}

impl Default for IntrospectionCache {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

impl IntrospectionCache {
    /// A cache holding at most `capacity` verdicts.
    pub fn new(capacity: u64) -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build(),
        }
    }

    /// The cached verdict, or the result of `introspect` — run once however many requests miss on
    /// the same key together. Errors are shared with the waiting requests but not cached.
    ///
    /// # Errors
    /// The introspection error of the one call made for this miss.
    pub async fn get_or_introspect<F>(
        &self,
        key: CacheKey,
        introspect: F,
    ) -> Result<Arc<Verdict>, Arc<IntrospectionError>>
    where
        F: Future<Output = Result<Verdict, IntrospectionError>>,
    {
        self.inner
            .try_get_with(key, async move { introspect.await.map(Arc::new) })
            .await
    }

    /// Drops every verdict for this token digest (all instances); returns how many were dropped.
    pub async fn evict(&self, token: &TokenHash) -> usize {
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
            cache.get_or_introspect(key(1), async move {
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
            .get_or_introspect(key(2), async {
                Ok(Verdict::new(true, Map::new(), 30.0, 0))
            })
            .await
            .unwrap();
        assert_eq!(cache.evict(&token).await, 2);
        assert_eq!(cache.evict(&token).await, 0);
    }
}
