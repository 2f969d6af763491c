//! The tiered token store (near cache → real Redis → memory) meets the same contract, and its
//! caches never answer for a token the durable store no longer has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_stores::contract;
use portcullis_stores::memory::MemoryTokenStore;
use portcullis_stores::redis_cache::{RedisSettings, RedisTokenCache};
use portcullis_stores::tiered::{NearCacheSettings, TieredTokenStore};
use portcullis_stores::{TokenHash, TokenRecord, TokenStore};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis(prefix: &str) -> RedisTokenCache {
    RedisTokenCache::connect(&RedisSettings {
        url: redis_url(),
        prefix: prefix.into(),
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("redis reachable (scripts/services.sh starts it)")
}

fn record(n: u8, now: i64) -> TokenRecord {
    TokenRecord {
        id: Uuid::new_v4(),
        credential_id: Uuid::nil(),
        service_id: None,
        access_token_hash: TokenHash([n; 32]),
        refresh_token_hash: None,
        token_type: "bearer".into(),
        expires_in: 3600,
        authenticated_userid: None,
        scope: None,
        created_at: now,
        expires_at: Some(now + 7200),
        family_id: Uuid::new_v4(),
        code_id: None,
    }
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_verdict_fetched_across_an_eviction_is_not_stored() {
    let prefix = format!("pt-{}", Uuid::new_v4().simple());
    let (a, b) = (redis(&prefix).await, redis(&prefix).await);
    let token = TokenHash([7; 32]);
    let ttl = Duration::from_secs(60);

    // Node A misses and starts introspecting; node B evicts meanwhile.
    let (found, seen) = a.get_verdict(&token, "ctx").await.unwrap();
    assert_eq!(found, None);
    b.evict_verdicts(&token).await.unwrap();
    assert!(
        !a.put_verdict(&token, "ctx", "stale", ttl, seen)
            .await
            .unwrap(),
        "the answer fetched before the eviction is refused"
    );
    let (found, now_seen) = a.get_verdict(&token, "ctx").await.unwrap();
    assert_eq!(found, None, "nothing came back");
    assert_ne!(now_seen, seen, "the eviction was counted");

    // A miss that starts after the eviction is shared as usual, under every context.
    assert!(a
        .put_verdict(&token, "ctx", "fresh", ttl, now_seen)
        .await
        .unwrap());
    assert!(a
        .put_verdict(&token, "other", "fresh-2", ttl, now_seen)
        .await
        .unwrap());
    assert_eq!(
        b.get_verdict(&token, "ctx").await.unwrap().0.as_deref(),
        Some("fresh")
    );
    b.evict_verdicts(&token).await.unwrap();
    assert_eq!(a.get_verdict(&token, "ctx").await.unwrap().0, None);
    assert_eq!(
        a.get_verdict(&token, "other").await.unwrap().0,
        None,
        "all contexts go"
    );
}

#[tokio::test]
async fn tiered_store_with_redis_meets_the_contract() {
    let prefix = format!("pt-{}", Uuid::new_v4().simple());
    let store = TieredTokenStore::new(
        Arc::new(MemoryTokenStore::new()),
        Some(redis(&prefix).await),
        &NearCacheSettings::default(),
    );
    contract::token_store_contract(&store).await;
}

#[tokio::test]
async fn a_token_seen_by_one_node_is_a_redis_hit_on_another_and_revocation_reaches_both() {
    let prefix = format!("pt-{}", Uuid::new_v4().simple());
    let durable: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let a = TieredTokenStore::new(
        durable.clone(),
        Some(redis(&prefix).await),
        &NearCacheSettings::default(),
    );
    let b = TieredTokenStore::new(
        Arc::new(MemoryTokenStore::new()),
        Some(redis(&prefix).await),
        &NearCacheSettings::default(),
    );
    let t = record(7, now());
    a.insert_token(t.clone()).await.unwrap();
    // Node B's own durable store is empty: the answer can only come from the shared Redis.
    assert_eq!(
        b.token_by_access(&t.access_token_hash, now())
            .await
            .unwrap(),
        Some(t.clone())
    );
    // A revokes; B hears the notice (what the cluster listener does) and refuses at once.
    a.delete_token(t.id).await.unwrap();
    b.invalidate(&[t.access_token_hash]).await;
    assert_eq!(
        b.token_by_access(&t.access_token_hash, now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        a.token_by_access(&t.access_token_hash, now())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn garbage_tokens_are_cached_negatively_and_bounded() {
    let settings = NearCacheSettings {
        max_negative: 100,
        ..NearCacheSettings::default()
    };
    let store = TieredTokenStore::new(Arc::new(MemoryTokenStore::new()), None, &settings);
    for i in 0..=255u8 {
        assert_eq!(
            store
                .token_by_access(&TokenHash([i; 32]), now())
                .await
                .unwrap(),
            None
        );
    }
    // A token issued after a negative lookup is found at once (the negative entry is dropped).
    let t = record(3, now());
    store.insert_token(t.clone()).await.unwrap();
    assert_eq!(
        store
            .token_by_access(&t.access_token_hash, now())
            .await
            .unwrap(),
        Some(t)
    );
}

/// A `redis-server` of its own (no persistence) on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut r = Self { port, child: None };
        r.restart().then_some(r)
    }

    fn restart(&mut self) -> bool {
        self.kill();
        let Ok(child) = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: format!("redis://127.0.0.1:{}", self.port),
            prefix: "pt-dirty".into(),
            timeout: Duration::from_millis(300),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_that_missed_an_eviction_is_flushed_before_it_is_trusted_again() {
    let Some(mut server) = PrivateRedis::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let node = RedisTokenCache::connect(&server.settings()).await.unwrap();
    let t = record(5, now());
    node.put(&t, now()).await.unwrap();

    server.kill();
    assert!(
        node.evict(&[t.access_token_hash]).await.is_err(),
        "the revocation cannot reach Redis"
    );
    assert!(server.restart());
    // A Redis that kept the revoked record (a partition rather than a crash): plant it again.
    let other = RedisTokenCache::connect(&server.settings()).await.unwrap();
    other.put(&t, now()).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match node.get(&t.access_token_hash).await {
            Ok(found) => {
                assert_eq!(found, None, "never the record whose eviction was missed");
                break;
            }
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "redis usable again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        other.get(&t.access_token_hash).await.unwrap(),
        None,
        "flushed for every node"
    );
}
