//! Brute-force protection of client authentication (RFC 6749 §10.10): failed client
//! authentications are counted per client_id and client address in a sliding window; past
//! the limit, the token, introspection and revocation endpoints refuse that pair with `429` and
//! `Retry-After` without looking at the secret. With Redis configured the window lives there, so the
//! count holds across the nodes of a cluster; otherwise (or while Redis is away) in memory.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_stores::redis_cache::RedisTokenCache;
use sha2::{Digest, Sha256};

/// How many (client, address) pairs the memory window remembers at most; the oldest go first. An
/// attacker spraying addresses cannot grow the gateway's memory past this.
const MEMORY_CAPACITY: u64 = 100_000;

/// The limit and window (`oauth2_auth_failure_limit`, `oauth2_auth_failure_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures allowed inside the window; 0 turns the protection off.
    pub limit: u32,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for LockoutPolicy {
    /// The settings' defaults: 10 failures a minute.
    fn default() -> Self {
        Self {
            limit: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// The failure counts of one gateway (shared by its `oauth2` instances: a client is the same
/// client on every route).
#[derive(Clone)]
pub struct ClientLockout {
    policy: LockoutPolicy,
    memory: moka::future::Cache<String, Arc<Mutex<VecDeque<u64>>>>,
    redis: Option<RedisTokenCache>,
}

/// The pair a failure is counted under: a digest of the client_id as presented (it may be
/// anything a caller typed) and the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutKey(String);

impl LockoutKey {
    /// The key of `client_id` presented from `ip`.
    pub fn new(client_id: &str, ip: IpAddr) -> Self {
        let digest = Sha256::digest(client_id.as_bytes());
        Self(format!("{}:{ip}", URL_SAFE_NO_PAD.encode(&digest[..16])))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ClientLockout {
    /// Counts in Redis when it is given, else in memory.
    pub fn new(policy: LockoutPolicy, redis: Option<RedisTokenCache>) -> Self {
        Self {
            policy,
            memory: moka::future::Cache::builder()
                .max_capacity(MEMORY_CAPACITY)
                .time_to_idle(policy.window)
                .build(),
            redis,
        }
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.policy.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Seconds until `key` may try again, when it has used up its failures; `None` when it may
    /// try now.
    pub async fn retry_after(&self, key: &LockoutKey) -> Option<u64> {
        if self.policy.limit == 0 {
            return None;
        }
        let now = now_ms();
        let window = self.window_ms();
        let (count, oldest) = match &self.redis {
            Some(redis) => match redis.failures_in_window(&key.0, now, window).await {
                Ok(w) => (w.count, w.oldest_ms),
                Err(_) => self.memory_window(key, now).await,
            },
            None => self.memory_window(key, now).await,
        };
        if count < u64::from(self.policy.limit) {
            return None;
        }
        let free_at = oldest.unwrap_or(now).saturating_add(window);
        Some(free_at.saturating_sub(now).div_ceil(1000).max(1))
    }

    /// Records one failed authentication of `key`.
    pub async fn record_failure(&self, key: &LockoutKey) {
        if self.policy.limit == 0 {
            return;
        }
        let now = now_ms();
        if let Some(redis) = &self.redis {
            if redis
                .record_failure(&key.0, now, self.window_ms())
                .await
                .is_ok()
            {
                return;
            }
        }
        let entry = self.memory_entry(key).await;
        let mut times = entry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::drop_expired(&mut times, now, self.window_ms());
        // More than `limit` entries are never needed to decide.
        if times.len() >= usize::try_from(self.policy.limit).unwrap_or(usize::MAX) {
            times.pop_front();
        }
        times.push_back(now);
    }

    async fn memory_entry(&self, key: &LockoutKey) -> Arc<Mutex<VecDeque<u64>>> {
        self.memory
            .get_with(key.0.clone(), async { Arc::default() })
            .await
    }

    async fn memory_window(&self, key: &LockoutKey, now: u64) -> (u64, Option<u64>) {
        let Some(entry) = self.memory.get(&key.0).await else {
            return (0, None);
        };
        let mut times = entry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::drop_expired(&mut times, now, self.window_ms());
        (times.len() as u64, times.front().copied())
    }

    fn drop_expired(times: &mut VecDeque<u64>, now: u64, window: u64) {
        while times
            .front()
            .is_some_and(|t| *t <= now.saturating_sub(window))
        {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(limit: u32) -> ClientLockout {
        ClientLockout::new(
            LockoutPolicy {
                limit,
                window: Duration::from_secs(60),
            },
            None,
        )
    }

    #[tokio::test]
    async fn the_limit_th_failure_locks_the_pair_and_no_other() {
        let l = lockout(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other_ip: IpAddr = "192.0.2.2".parse().unwrap();
        let key = LockoutKey::new("client", ip);
        for _ in 0..2 {
            l.record_failure(&key).await;
            assert_eq!(l.retry_after(&key).await, None);
        }
        l.record_failure(&key).await;
        let wait = l.retry_after(&key).await.expect("locked after 3 failures");
        assert!((59..=60).contains(&wait), "{wait}");
        assert_eq!(
            l.retry_after(&LockoutKey::new("client", other_ip)).await,
            None
        );
        assert_eq!(l.retry_after(&LockoutKey::new("other", ip)).await, None);
    }

    #[tokio::test]
    async fn a_zero_limit_never_locks() {
        let l = lockout(0);
        let key = LockoutKey::new("client", "192.0.2.1".parse().unwrap());
        for _ in 0..100 {
            l.record_failure(&key).await;
        }
        assert_eq!(l.retry_after(&key).await, None);
    }

    #[test]
    fn failures_older_than_the_window_are_dropped() {
        let mut times: VecDeque<u64> = [1_000, 50_000, 70_000].into();
        ClientLockout::drop_expired(&mut times, 61_000, 60_000);
        assert_eq!(times, VecDeque::from([50_000, 70_000]));
    }
}
