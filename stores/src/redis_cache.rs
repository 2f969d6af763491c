//! The Redis layer of token lookup: records keyed by `{prefix}:tok:{sha256 hex}` (never by the raw
//! token), JSON values, TTL equal to the token's remaining life. Shared by every node of a cluster so
//! a token issued on one node is a Redis hit on the others. Redis is a cache: every failure here is
//! reported as [`StoreError::Unavailable`] and the caller falls back to the durable store.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::model::{TokenHash, TokenRecord};
use crate::StoreError;

/// Connection settings of the Redis layer.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every key (isolates gateways and tests sharing one Redis).
    pub prefix: String,
    /// Bound on every command.
    pub timeout: Duration,
}

/// Token cache in Redis.
#[derive(Clone)]
pub struct RedisTokenCache {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisTokenCache {
    /// Connects (the manager reconnects by itself after failures).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis cannot be reached in time.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            settings.timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unavailable("connect timed out"))?
        .map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
        })
    }

    fn key(&self, hash: &TokenHash) -> String {
        format!("{}:tok:{}", self.prefix, hash.to_hex())
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    /// The cached record for an access-token digest.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn get(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(hash);
        let raw: Option<String> = self.bounded(conn.get(key)).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Caches a record until the earlier of its access-token and row expiry.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn put(&self, record: &TokenRecord, now: i64) -> Result<(), StoreError> {
        let access_end = (record.expires_in > 0).then(|| record.created_at + record.expires_in);
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
        let value =
            serde_json::to_string(record).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
        self.bounded(conn.del::<_, ()>(keys)).await
    }
}
