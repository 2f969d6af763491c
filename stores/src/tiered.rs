//! Token lookup in tiers: an in-process near cache, then Redis (optional), then the durable store.
//! Writes go to the durable store first and then evict or refresh the caches, so the durable store
//! stays the truth. Negative results are cached briefly and in bounded number, so a flood of garbage
//! tokens can neither fill memory nor hammer the durable store. A record Redis answered with is
//! cached on the second sighting of its digest (see `crate::sightings`); one read from the durable
//! store, or just issued on this node, at once.
//!
//! Other nodes' changes reach this node's caches through [`TieredTokenStore::invalidate`], called by
//! the cluster invalidation listener.
//!
//! A lookup that read the durable store (or Redis) while an invalidation ran may hold a record
//! that was revoked meanwhile; it must not put it back into the caches. Every invalidation bumps an
//! epoch before and after it clears the caches, and a lookup caches what it read only if the
//! epoch did not move while it was reading.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::sync::Cache;
use uuid::Uuid;

use crate::model::{CodeRecord, RefreshOutcome, TokenFilter, TokenHash, TokenRecord};
use crate::observe::{unobserved, LookupObserver, LookupTier, RemoteTier};
use crate::redis_cache::RedisTokenCache;
use crate::sightings::Sightings;
use crate::{RefreshReplacement, StoreError, TokenStore};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The near caches' hasher: foldhash, seeded at random per store, as the memory store's indexes.
/// Keys are SHA-256 digests, so a client choosing its tokens cannot aim them at one bucket
/// without the seed, and a lookup per proxied request hashes 32 bytes in a few instructions
/// where moka's default SipHash took about 270.
type NearHasher = foldhash::fast::RandomState;

/// Sizes and lifetimes of the near cache.
#[derive(Debug, Clone)]
pub struct NearCacheSettings {
    /// Most positive entries kept.
    pub max_entries: u64,
    /// Safety-net lifetime of a positive entry (invalidation normally removes it first).
    pub ttl: Duration,
    /// Most negative entries kept.
    pub max_negative: u64,
    /// Lifetime of a negative entry.
    pub negative_ttl: Duration,
}

impl Default for NearCacheSettings {
    fn default() -> Self {
        Self {
            max_entries: 200_000,
            ttl: Duration::from_secs(30),
            max_negative: 20_000,
            negative_ttl: Duration::from_secs(2),
        }
    }
}

/// The tiered store.
pub struct TieredTokenStore {
    durable: Arc<dyn TokenStore>,
    redis: Option<RedisTokenCache>,
    near: Cache<TokenHash, Arc<TokenRecord>, NearHasher>,
    negative: Cache<TokenHash, (), NearHasher>,
    /// Digests Redis answered for lately: a record read there is cached on its second sighting.
    sightings: Sightings,
    epoch: AtomicU64,
    observer: Arc<dyn LookupObserver>,
}

impl TieredTokenStore {
    /// Layers the caches over `durable`.
    pub fn new(
        durable: Arc<dyn TokenStore>,
        redis: Option<RedisTokenCache>,
        settings: &NearCacheSettings,
    ) -> Self {
        Self {
            durable,
            redis,
            near: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build_with_hasher(NearHasher::default()),
            negative: Cache::builder()
                .max_capacity(settings.max_negative)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(NearHasher::default()),
            sightings: Sightings::sized_for(settings.max_entries),
            epoch: AtomicU64::new(0),
            observer: unobserved(),
        }
    }

    /// The store, telling `observer` about each lookup by access-token digest its own tiers
    /// answer: near-cache hits (counted only, see [`crate::observe`]) and Redis (answered and
    /// timed). The durable store reports its own.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn LookupObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Forgets access-token digests in this node's near cache (another node changed them).
    pub fn invalidate_local(&self, hashes: &[TokenHash]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for h in hashes {
            self.near.invalidate(h);
            self.negative.invalidate(h);
        }
    }

    /// Forgets digests here and in Redis: every node does this on a revocation notice, so Redis is
    /// cleaned even when the revoking node died right after its commit.
    pub async fn invalidate(&self, hashes: &[TokenHash]) {
        self.invalidate_local(hashes);
        if let Some(r) = &self.redis {
            if let Err(e) = r.evict(hashes).await {
                tracing::warn!(error = %e, "cannot evict revoked tokens from redis; it is flushed before it is trusted again");
            }
            // A lookup that read Redis before the eviction must not cache what it read.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Drops everything cached locally (after a reconnect, when notices may have been missed).
    pub fn clear_local(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.near.invalidate_all();
        self.negative.invalidate_all();
    }

    async fn forget(&self, records: &[TokenRecord]) {
        let hashes: Vec<TokenHash> = records.iter().map(|r| r.access_token_hash).collect();
        self.invalidate(&hashes).await;
    }

    async fn remember(&self, record: &TokenRecord, now: i64) {
        self.negative.invalidate(&record.access_token_hash);
        self.near
            .insert(record.access_token_hash, Arc::new(record.clone()));
        if let Some(r) = &self.redis {
            if let Err(e) = r.put(record, now).await {
                tracing::debug!(error = %e, "redis write-through failed; the durable store has the token");
            }
        }
    }
}

#[async_trait]
impl TokenStore for TieredTokenStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.durable.insert_token(token.clone()).await?;
        self.remember(&token, token.created_at).await;
        Ok(())
    }

    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(known) = self.token_by_access_in_memory(hash, now) {
            return Ok(known);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let unchanged = || self.epoch.load(Ordering::Acquire) == epoch;
        if let Some(r) = &self.redis {
            let started = Instant::now();
            let cached = r.get(hash).await;
            self.observer.waited(RemoteTier::Redis, started.elapsed());
            match cached {
                Ok(Some(record)) => {
                    self.observer.answered(LookupTier::Redis);
                    if self.sightings.seen_again(hash) && unchanged() {
                        self.near.insert(*hash, Arc::new(record.clone()));
                    }
                    return Ok(Some(record).filter(|t| t.row_live_at(now)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "redis lookup failed; reading the durable store")
                }
            }
        }
        match self.durable.token_by_access(hash, now).await? {
            Some(record) => {
                if unchanged() {
                    self.remember(&record, now).await;
                }
                Ok(Some(record))
            }
            None => {
                if unchanged() {
                    self.negative.insert(*hash, ());
                }
                Ok(None)
            }
        }
    }

    fn token_by_access_in_memory(&self, hash: &TokenHash, now: i64) -> Option<Option<TokenRecord>> {
        if let Some(hit) = self.near.get(hash) {
            self.observer.answered(LookupTier::Near);
            return Some(Some(hit.as_ref().clone()).filter(|r| r.row_live_at(now)));
        }
        if self.negative.contains_key(hash) {
            self.observer.answered(LookupTier::Near);
            return Some(None);
        }
        None
    }

    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.durable.token_by_refresh(hash, now).await
    }

    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.durable.token_by_id(id, now).await
    }

    async fn update_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let old = self.durable.token_by_id(token.id, now_secs()).await?;
        self.durable.update_token(token.clone()).await?;
        if let Some(old) = old {
            self.forget(&[old]).await;
        }
        self.forget(&[token]).await;
        Ok(())
    }

    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let removed = self.durable.delete_token(id).await?;
        if let Some(r) = &removed {
            self.forget(std::slice::from_ref(r)).await;
        }
        Ok(removed)
    }

    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        // The old access token dies with the redemption: find it first to evict it after.
        let old = self.durable.token_by_refresh(refresh, now).await?;
        let outcome = self
            .durable
            .redeem_refresh(refresh, replacement, now)
            .await?;
        if let (RefreshOutcome::Redeemed(_), Some(old)) = (&outcome, old) {
            self.forget(&[old]).await;
        }
        Ok(outcome)
    }

    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        let removed = self.durable.revoke_family(family).await?;
        self.forget(&removed).await;
        Ok(removed)
    }

    async fn insert_code(&self, code: CodeRecord) -> Result<(), StoreError> {
        self.durable.insert_code(code).await
    }

    async fn take_code(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.durable.take_code(hash, now).await
    }

    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        let removed = self.durable.revoke_by_code(code_id).await?;
        self.forget(&removed).await;
        Ok(removed)
    }

    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let removed = self.durable.delete_owned_by(credentials, services).await?;
        self.forget(&removed).await;
        Ok(removed)
    }

    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: i64,
    ) -> Result<(Vec<TokenRecord>, Option<String>), StoreError> {
        self.durable.list_tokens(filter, now).await
    }

    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError> {
        // Expired rows are already refused on read (row_live_at); caches age out on their own.
        self.durable.purge_expired(now, batch).await
    }
}
