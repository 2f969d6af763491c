//! The store contract, run against Postgres: each test migrates its own fresh schema `pt_<random>`
//! and drops it at the end (even when the test fails), so tests run in parallel.
//!
//! The server comes from `PORTCULLIS_TEST_PG` (default
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_stores::contract;
use portcullis_stores::postgres::{self, Migrator, PgConfigStore, PgSettings, PgTokenStore};
use portcullis_stores::StoreError;

const DEFAULT_PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A migrated schema of its own; dropped on drop.
struct TestDb {
    settings: PgSettings,
    pool: deadpool_postgres::Pool,
}

fn test_settings() -> PgSettings {
    let conn = std::env::var("PORTCULLIS_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.into());
    let mut settings = PgSettings::from_conn_str(&conn).expect("PORTCULLIS_TEST_PG parses");
    settings.schema = Some(format!("pt_{}", uuid::Uuid::new_v4().simple()));
    settings.max_connections = 20;
    settings
}

impl TestDb {
    async fn new() -> Self {
        let settings = test_settings();
        let pool = postgres::connect(&settings)
            .await
            .expect("test Postgres reachable");
        let migrator = Migrator::new(pool.clone(), settings.schema.clone()).unwrap();
        migrator.up().await.expect("migrations apply");
        Self { settings, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        contract::drop_test_schema(self.settings.clone(), std::time::Duration::from_secs(30));
    }
}

#[tokio::test]
async fn pg_config_store_meets_the_contract() {
    let db = TestDb::new().await;
    contract::config_store_contract(&PgConfigStore::new(db.pool.clone())).await;
}

#[tokio::test]
async fn pg_config_store_round_trips_documents() {
    let db = TestDb::new().await;
    contract::config_store_roundtrip(&PgConfigStore::new(db.pool.clone())).await;
}

#[tokio::test]
async fn pg_token_store_meets_the_contract() {
    let db = TestDb::new().await;
    contract::token_store_contract(
        &PgTokenStore::new(db.pool.clone()),
        contract::QuickPath::Absent,
    )
    .await;
}

#[tokio::test]
async fn pg_token_store_lifecycle() {
    let db = TestDb::new().await;
    contract::token_store_lifecycle(&PgTokenStore::new(db.pool.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrent_take_code_has_one_winner() {
    let db = TestDb::new().await;
    contract::concurrent_take_code(Arc::new(PgTokenStore::new(db.pool.clone())), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrent_unique_insert_has_one_winner() {
    let db = TestDb::new().await;
    contract::concurrent_unique_insert(Arc::new(PgConfigStore::new(db.pool.clone())), 16).await;
}

#[tokio::test]
async fn migrations_are_recorded_and_idempotent() {
    let db = TestDb::new().await;
    let migrator = Migrator::new(db.pool.clone(), db.settings.schema.clone()).unwrap();
    let status = migrator.status().await.unwrap();
    assert!(status.is_current(), "{status:?}");
    assert_eq!(status.applied.len(), postgres::migrate::MIGRATIONS.len());
    assert!(
        migrator.up().await.unwrap().is_empty(),
        "nothing left to do"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_up_apply_each_migration_once() {
    let settings = test_settings();
    let guard = TestDb {
        settings: settings.clone(),
        pool: postgres::connect(&settings).await.unwrap(),
    };
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let pool = guard.pool.clone();
            let schema = settings.schema.clone();
            tokio::spawn(async move { Migrator::new(pool, schema).unwrap().up().await })
        })
        .collect();
    let mut applied = Vec::new();
    for t in tasks {
        applied.extend(t.await.unwrap().expect("every concurrent run succeeds"));
    }
    assert_eq!(
        applied.len(),
        postgres::migrate::MIGRATIONS.len(),
        "each migration applied exactly once: {applied:?}"
    );
}

#[tokio::test]
async fn fresh_schema_reports_pending_migrations() {
    let settings = test_settings();
    let guard = TestDb {
        settings: settings.clone(),
        pool: postgres::connect(&settings).await.unwrap(),
    };
    let status = Migrator::new(guard.pool.clone(), settings.schema.clone())
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(status.is_fresh());
    assert_eq!(status.pending.len(), postgres::migrate::MIGRATIONS.len());
}

#[tokio::test]
async fn unreachable_server_is_unavailable_naming_host_and_port() {
    let mut settings = test_settings();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.port = port;
    settings.password = Some("s3cret-pw".into());
    let err = postgres::connect(&settings).await.unwrap_err();
    let StoreError::Unavailable(line) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(!line.contains("s3cret-pw"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
}

#[tokio::test]
async fn invalid_schema_name_is_refused() {
    let mut settings = test_settings();
    settings.schema = Some("bad; drop table x".into());
    assert!(matches!(
        postgres::connect(&settings).await,
        Err(StoreError::Internal(_))
    ));
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field() {
    let db = TestDb::new().await;
    let store = PgConfigStore::new(db.pool.clone());
    let doc = serde_json::json!({"id": uuid::Uuid::new_v4().to_string(), "username": "a\u{0}b"});
    let err = portcullis_stores::ConfigStore::insert(
        &store,
        &portcullis_stores::model::entities::CONSUMERS,
        doc.as_object().unwrap().clone(),
    )
    .await;
    assert!(
        matches!(&err, Err(StoreError::InvalidValue { field, .. }) if field == "username"),
        "{err:?}"
    );
    let found = portcullis_stores::ConfigStore::get_by(
        &store,
        &portcullis_stores::model::entities::CONSUMERS,
        "username",
        "a\u{0}b",
    )
    .await
    .unwrap();
    assert!(found.is_none());
}

#[tokio::test]
async fn pg_ssl_against_a_server_without_tls_is_a_clear_error() {
    let mut settings = test_settings();
    settings.ssl = true;
    match postgres::connect(&settings).await {
        // The local server has no TLS: one line naming the endpoint and the cause.
        Err(StoreError::Unavailable(line)) => {
            assert!(line.contains(&settings.endpoint()), "{line}");
        }
        // A server with TLS and a publicly trusted certificate would accept.
        Ok(_) => {}
        Err(other) => panic!("unexpected: {other:?}"),
    }
}

fn record(n: u8, now: i64, expires_at: i64) -> portcullis_stores::TokenRecord {
    portcullis_stores::TokenRecord {
        id: uuid::Uuid::new_v4(),
        credential_id: uuid::Uuid::nil(),
        service_id: None,
        access_token_hash: portcullis_stores::TokenHash([n; 32]),
        refresh_token_hash: None,
        token_type: "bearer".into(),
        expires_in: 60,
        authenticated_userid: None,
        scope: None,
        created_at: now,
        expires_at: Some(expires_at),
        family_id: uuid::Uuid::new_v4(),
        code_id: None,
    }
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<postgres::listen::ChangeEvent>,
) -> postgres::listen::ChangeEvent {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("listener alive")
}

#[tokio::test]
async fn listener_hears_committed_changes_of_its_own_schema_only() {
    use portcullis_stores::model::entities;
    use portcullis_stores::postgres::listen::{listen, ChangeEvent};
    use portcullis_stores::{ConfigStore, TokenStore};

    let a = TestDb::new().await;
    let b = TestDb::new().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(listen(a.settings.clone(), tx));
    assert_eq!(next_event(&mut rx).await, ChangeEvent::Connected);

    // Another schema's changes are not heard: the next event is the change made in A.
    let other = PgTokenStore::new(b.pool.clone());
    let t = record(9, 1_000, 5_000);
    other.insert_token(t.clone()).await.unwrap();
    other.delete_token(t.id).await.unwrap();

    let tokens = PgTokenStore::new(a.pool.clone());
    let t = record(7, 1_000, 5_000);
    tokens.insert_token(t.clone()).await.unwrap();
    tokens.delete_token(t.id).await.unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        ChangeEvent::Tokens(vec![t.access_token_hash]),
        "insert is silent, delete announces the old digest"
    );

    let config = PgConfigStore::new(a.pool.clone());
    let id = uuid::Uuid::new_v4();
    let doc = serde_json::json!({"id": id.to_string(), "name": "s1", "host": "a"});
    config
        .insert(&entities::SERVICES, doc.as_object().unwrap().clone())
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        ChangeEvent::Config(vec![("services", id)])
    );
    drop(rx);
    listener.abort();
}

#[tokio::test]
async fn only_one_node_sweeps_at_a_time() {
    use portcullis_stores::TokenStore;

    let db = TestDb::new().await;
    let store = PgTokenStore::new(db.pool.clone());
    store.insert_token(record(1, 1_000, 1_500)).await.unwrap();

    // Another node is sweeping: it holds the schema's sweep lock in an open transaction.
    let mut other = db.pool.get().await.unwrap();
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('portcullis_sweep:' || current_schema()))",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(store.purge_expired(2_000, 100).await.unwrap(), 0, "skipped");
    tx.rollback().await.unwrap();
    assert_eq!(store.purge_expired(2_000, 100).await.unwrap(), 1, "swept");
}
