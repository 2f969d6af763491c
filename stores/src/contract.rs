//! The behaviour every store must show. Each function panics (test failure) on a deviation; the
//! stores' tests call them against every implementation (memory and Postgres now, Redis later).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "contract checks are test code"
)]

use serde_json::json;
use uuid::Uuid;

use crate::model::{
    entities, CodeRecord, Document, ListFilter, RefreshOutcome, TokenHash, TokenRecord,
};
use crate::{ConfigStore, RefreshReplacement, StoreError, TokenStore};

fn doc(v: serde_json::Value) -> Document {
    v.as_object().cloned().expect("object")
}

/// Unique keys are enforced, foreign keys checked, restrict and cascade applied, pages chained.
pub async fn config_store_contract(store: &dyn ConfigStore) {
    let svc = Uuid::new_v4();
    store
        .insert(
            &entities::SERVICES,
            doc(json!({"id": svc.to_string(), "name": "s1", "host": "a"})),
        )
        .await
        .unwrap();
    let dup = store
        .insert(
            &entities::SERVICES,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "s1", "host": "b"})),
        )
        .await;
    assert!(
        matches!(dup, Err(StoreError::UniqueViolation { .. })),
        "duplicate name must be refused: {dup:?}"
    );

    let missing = Uuid::new_v4();
    let dangling = store
        .insert(
            &entities::ROUTES,
            doc(json!({"id": Uuid::new_v4().to_string(), "service": {"id": missing.to_string()}})),
        )
        .await;
    assert!(
        matches!(dangling, Err(StoreError::ForeignKeyMissing { .. })),
        "dangling FK: {dangling:?}"
    );

    let route = Uuid::new_v4();
    store
        .insert(
            &entities::ROUTES,
            doc(json!({"id": route.to_string(), "name": "r1", "service": {"id": svc.to_string()}})),
        )
        .await
        .unwrap();
    let plugin = Uuid::new_v4();
    store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": plugin.to_string(), "name": "p", "route": {"id": route.to_string()}, "service": null, "consumer": null})),
        )
        .await
        .unwrap();
    let same_scope = store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "p", "route": {"id": route.to_string()}, "service": null, "consumer": null})),
        )
        .await;
    assert!(
        matches!(same_scope, Err(StoreError::UniqueViolation { .. })),
        "plugin scope unique: {same_scope:?}"
    );

    let restricted = store.delete(&entities::SERVICES, svc).await;
    assert!(matches!(
        restricted,
        Err(StoreError::ReferencedBy {
            referenced_by: "routes",
            ..
        })
    ));
    assert!(
        store.get(&entities::SERVICES, svc).await.unwrap().is_some(),
        "restricted delete removed nothing"
    );

    let removed = store.delete(&entities::ROUTES, route).await.unwrap();
    assert_eq!(removed[0], ("routes", route));
    assert!(
        removed.contains(&("plugins", plugin)),
        "cascade to plugins: {removed:?}"
    );
    assert!(store
        .get(&entities::PLUGINS, plugin)
        .await
        .unwrap()
        .is_none());
    assert!(
        store
            .delete(&entities::ROUTES, route)
            .await
            .unwrap()
            .is_empty(),
        "second delete is a no-op"
    );

    for i in 0..5 {
        store
            .insert(
                &entities::CONSUMERS,
                doc(json!({"id": Uuid::new_v4().to_string(), "username": format!("u{i}"), "tags": if i % 2 == 0 { json!(["even"]) } else { json!(["odd"]) }})),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        size: 2,
        ..ListFilter::default()
    };
    loop {
        let page = store.list(&entities::CONSUMERS, &filter).await.unwrap();
        assert!(page.data.len() <= 2);
        seen.extend(page.data.into_iter().map(|d| d["username"].clone()));
        match page.next_offset {
            Some(o) => filter.offset = Some(o),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "pages cover every row once");
    let even = store
        .list(
            &entities::CONSUMERS,
            &ListFilter {
                size: 100,
                tags: Some((vec!["even".into()], true)),
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(even.data.len(), 3);
    let bad = store
        .list(
            &entities::CONSUMERS,
            &ListFilter {
                size: 10,
                offset: Some("garbage".into()),
                ..ListFilter::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidOffset)));
    let by_name = store
        .get_by(&entities::CONSUMERS, "username", "u3")
        .await
        .unwrap();
    assert!(by_name.is_some());
}

fn hash(n: u8) -> TokenHash {
    TokenHash([n; 32])
}

fn token(access: u8, refresh: Option<u8>, family: Uuid, now: i64) -> TokenRecord {
    TokenRecord {
        id: Uuid::new_v4(),
        credential_id: Uuid::nil(),
        service_id: None,
        access_token_hash: hash(access),
        refresh_token_hash: refresh.map(hash),
        token_type: "bearer".into(),
        expires_in: 60,
        authenticated_userid: Some("clark".into()),
        scope: Some("a b".into()),
        created_at: now,
        expires_at: Some(now + 600),
        family_id: family,
        code_id: None,
    }
}

/// Whether a token store answers [`TokenStore::token_by_access_in_memory`], so that the contract
/// checks the quick path of the stores that have one instead of skipping it for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuickPath {
    /// Every lookup is I/O (Postgres): the quick path must always say "ask the full lookup".
    Absent,
    /// Answers from memory once a full lookup has been made (the memory store at once, the tiered
    /// store from its near cache).
    Present,
}

/// Right after a full lookup, the quick path answers (`Present`) or declines (`Absent`), and an
/// answer is the full lookup's.
async fn in_memory_agrees(store: &dyn TokenStore, quick: QuickPath, digest: &TokenHash, now: i64) {
    let full = store.token_by_access(digest, now).await.unwrap();
    let fast = store.token_by_access_in_memory(digest, now);
    match quick {
        QuickPath::Absent => assert_eq!(fast, None, "a store without a quick path answered"),
        QuickPath::Present => assert_eq!(
            fast,
            Some(full),
            "the in-memory answer differs from the full lookup (or is missing)"
        ),
    }
}

/// Lookups by digest, expiry, single-use codes, atomic rotation with reuse detection.
pub async fn token_store_contract(store: &dyn TokenStore, quick: QuickPath) {
    let now = 1_000_000;
    let family = Uuid::new_v4();
    let t1 = token(1, Some(2), family, now);
    store.insert_token(t1.clone()).await.unwrap();
    assert_eq!(
        store.token_by_access(&hash(1), now).await.unwrap(),
        Some(t1.clone())
    );
    assert_eq!(
        store.token_by_access(&hash(1), now + 601).await.unwrap(),
        None,
        "row past its TTL is invisible"
    );
    in_memory_agrees(store, quick, &hash(1), now).await;
    in_memory_agrees(store, quick, &hash(1), now + 601).await;

    assert_eq!(
        store.token_by_refresh(&hash(2), now).await.unwrap(),
        Some(t1.clone())
    );
    let t2 = token(3, Some(4), family, now + 1);
    let won = store
        .redeem_refresh(
            &hash(2),
            RefreshReplacement::Rotate(Box::new(t2.clone())),
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(won, RefreshOutcome::Redeemed(Box::new(t2.clone())));
    assert_eq!(
        store.token_by_access(&hash(1), now + 1).await.unwrap(),
        None,
        "rotation kills the old access token"
    );
    in_memory_agrees(store, quick, &hash(1), now + 1).await;
    let again = store
        .redeem_refresh(
            &hash(2),
            RefreshReplacement::Rotate(Box::new(token(5, Some(6), family, now))),
            now + 2,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        RefreshOutcome::Reused {
            family_id: family,
            rotated_at: now + 1
        }
    );
    let revoked = store.revoke_family(family).await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        store.token_by_access(&hash(3), now + 2).await.unwrap(),
        None
    );
    in_memory_agrees(store, quick, &hash(3), now + 2).await;

    let code = CodeRecord {
        id: Uuid::new_v4(),
        code_hash: hash(9),
        credential_id: Uuid::nil(),
        service_id: None,
        plugin_id: None,
        authenticated_userid: None,
        scope: None,
        challenge: None,
        challenge_method: None,
        redirect_uri: None,
        created_at: now,
        expires_at: now + 300,
    };
    store.insert_code(code.clone()).await.unwrap();
    assert_eq!(
        store.take_code(&hash(9), now).await.unwrap(),
        Some(code.clone())
    );
    assert!(
        matches!(store.take_code(&hash(9), now).await, Err(StoreError::CodeReplayed { code_id }) if code_id == code.id)
    );

    let expired_code = CodeRecord {
        id: Uuid::new_v4(),
        code_hash: hash(10),
        ..code
    };
    store.insert_code(expired_code).await.unwrap();
    assert_eq!(
        store.take_code(&hash(10), now + 301).await.unwrap(),
        None,
        "expired code is refused"
    );
}

/// Documents come back exactly as stored: null fields stay null, absent fields stay absent,
/// unknown fields and nested values survive; updates replace, and honour the unique keys.
pub async fn config_store_roundtrip(store: &dyn ConfigStore) {
    let svc = doc(json!({
        "id": Uuid::new_v4().to_string(),
        "name": "rt",
        "host": "example.test",
        "port": 8443,
        "path": null,
        "enabled": true,
        "tags": ["a", "b"],
        "ca_certificates": [],
        "created_at": 1_700_000_000,
        "custom_field": {"nested": [1, 2.5, "x", null]},
    }));
    let stored = store
        .insert(&entities::SERVICES, svc.clone())
        .await
        .unwrap();
    assert_eq!(stored, svc);
    let id = Uuid::parse_str(svc["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        store.get(&entities::SERVICES, id).await.unwrap(),
        Some(svc.clone()),
        "read back equals what was stored"
    );
    assert_eq!(
        store
            .get_by(&entities::SERVICES, "name", "rt")
            .await
            .unwrap(),
        Some(svc.clone())
    );

    let route = doc(json!({
        "id": Uuid::new_v4().to_string(),
        "name": "rt-route",
        "paths": ["/a", "~/b$"],
        "headers": {"x-a": ["1", "2"]},
        "sources": [{"ip": "10.0.0.0/8", "port": 80}],
        "service": {"id": id.to_string()},
        "strip_path": false,
        "regex_priority": -3,
    }));
    store
        .insert(&entities::ROUTES, route.clone())
        .await
        .unwrap();
    let rid = Uuid::parse_str(route["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        store.get(&entities::ROUTES, rid).await.unwrap(),
        Some(route.clone())
    );
    let by_service = store
        .list(
            &entities::ROUTES,
            &ListFilter {
                size: 10,
                foreign: Some(("service", id)),
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_service.data, vec![route.clone()]);

    let mut changed = svc.clone();
    changed.insert("host".into(), json!("other.test"));
    changed.remove("custom_field");
    store
        .update(&entities::SERVICES, changed.clone())
        .await
        .unwrap();
    assert_eq!(
        store.get(&entities::SERVICES, id).await.unwrap(),
        Some(changed)
    );

    let other = doc(json!({"id": Uuid::new_v4().to_string(), "name": "rt2", "host": "x"}));
    store
        .insert(&entities::SERVICES, other.clone())
        .await
        .unwrap();
    let mut clash = other.clone();
    clash.insert("name".into(), json!("rt"));
    let err = store.update(&entities::SERVICES, clash).await;
    match err {
        Err(StoreError::UniqueViolation { fields }) => {
            assert_eq!(fields.get("name"), Some(&json!("rt")), "key fields named");
        }
        other => panic!("update onto a taken name: {other:?}"),
    }
    let ghost = doc(json!({"id": Uuid::new_v4().to_string(), "name": "ghost", "host": "x"}));
    assert!(matches!(
        store.update(&entities::SERVICES, ghost).await,
        Err(StoreError::NotFound)
    ));
    let same_id = store.insert(&entities::SERVICES, other.clone()).await;
    assert!(
        matches!(same_id, Err(StoreError::UniqueViolation { .. })),
        "duplicate id: {same_id:?}"
    );
    let bad_fk = store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "p", "service": {"id": Uuid::new_v4().to_string()}})),
        )
        .await;
    assert!(matches!(
        bad_fk,
        Err(StoreError::ForeignKeyMissing {
            field: "service",
            references: "services",
            ..
        })
    ));

    // Deleting a consumer cascades to its plugins and credentials, and reports every row.
    let consumer = Uuid::new_v4();
    store
        .insert(
            &entities::CONSUMERS,
            doc(json!({"id": consumer.to_string(), "username": "rt-user", "custom_id": null})),
        )
        .await
        .unwrap();
    let cred = Uuid::new_v4();
    store
        .insert(
            &entities::OAUTH2_CREDENTIALS,
            doc(json!({"id": cred.to_string(), "name": "app", "client_id": "cid", "consumer": {"id": consumer.to_string()}, "redirect_uris": ["https://a.test/cb"]})),
        )
        .await
        .unwrap();
    let dup_client = store
        .insert(
            &entities::OAUTH2_CREDENTIALS,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "app2", "client_id": "cid", "consumer": {"id": consumer.to_string()}})),
        )
        .await;
    assert!(matches!(
        dup_client,
        Err(StoreError::UniqueViolation { .. })
    ));
    let plugin = Uuid::new_v4();
    store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": plugin.to_string(), "name": "p", "config": {"a": {"b": [1]}}, "consumer": {"id": consumer.to_string()}, "service": null, "route": null})),
        )
        .await
        .unwrap();
    // Same name, different scope: allowed.
    store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "p", "service": null, "route": null, "consumer": null})),
        )
        .await
        .unwrap();
    let global_again = store
        .insert(
            &entities::PLUGINS,
            doc(json!({"id": Uuid::new_v4().to_string(), "name": "p", "service": null, "route": null, "consumer": null})),
        )
        .await;
    assert!(
        matches!(global_again, Err(StoreError::UniqueViolation { .. })),
        "null scope counts as a value: {global_again:?}"
    );
    let removed = store.delete(&entities::CONSUMERS, consumer).await.unwrap();
    assert_eq!(removed[0], ("consumers", consumer));
    assert!(
        removed.contains(&("oauth2_credentials", cred)),
        "{removed:?}"
    );
    assert!(removed.contains(&("plugins", plugin)), "{removed:?}");
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(store
        .get(&entities::OAUTH2_CREDENTIALS, cred)
        .await
        .unwrap()
        .is_none());
    let all_plugins = store.all(&entities::PLUGINS).await.unwrap();
    assert_eq!(all_plugins.len(), 1, "only the global plugin is left");
}

/// Listing, renewal, revocation by code and by owner, and the expiry sweep.
pub async fn token_store_lifecycle(store: &dyn TokenStore) {
    let now = 2_000_000;
    let cred = Uuid::new_v4();
    let service = Uuid::new_v4();
    let family = Uuid::new_v4();
    let mut ids = Vec::new();
    for n in 0..5u8 {
        let mut t = token(100 + n, Some(150 + n), Uuid::new_v4(), now);
        t.credential_id = cred;
        t.service_id = (n % 2 == 0).then_some(service);
        if n == 0 {
            t.family_id = family;
        }
        ids.push(t.id);
        store.insert_token(t).await.unwrap();
    }
    let dup = store.insert_token(token(100, None, family, now)).await;
    assert!(
        matches!(dup, Err(StoreError::UniqueViolation { .. })),
        "access digest is unique: {dup:?}"
    );
    ids.sort();
    let mut seen = Vec::new();
    let mut filter = crate::model::TokenFilter {
        credential_id: Some(cred),
        size: 2,
        ..Default::default()
    };
    loop {
        let (page, next) = store.list_tokens(&filter, now).await.unwrap();
        seen.extend(page.iter().map(|t| t.id));
        match next {
            Some(o) => filter.offset = Some(o),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages in id order cover every token once");
    let (bound, _) = store
        .list_tokens(
            &crate::model::TokenFilter {
                service_id: Some(service),
                size: 100,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(bound.len(), 3);

    // Renewal keeps the row and refresh token, swaps the access token and restarts the clock.
    let renewed = store
        .redeem_refresh(
            &hash(150),
            RefreshReplacement::Renew {
                access_token_hash: hash(200),
                expires_in: 30,
                expires_at: Some(now + 900),
            },
            now + 10,
        )
        .await
        .unwrap();
    let RefreshOutcome::Redeemed(renewed) = renewed else {
        panic!("renew: {renewed:?}");
    };
    assert_eq!(renewed.created_at, now + 10);
    assert_eq!(renewed.refresh_token_hash, Some(hash(150)));
    assert_eq!(
        store.token_by_access(&hash(200), now + 10).await.unwrap(),
        Some(*renewed.clone())
    );
    assert_eq!(
        store.token_by_access(&hash(100), now + 10).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .redeem_refresh(
                &hash(99),
                RefreshReplacement::Rotate(Box::new(token(98, None, family, now))),
                now
            )
            .await
            .unwrap(),
        RefreshOutcome::NotFound
    );

    let mut edited = *renewed;
    edited.scope = Some("changed".into());
    store.update_token(edited.clone()).await.unwrap();
    assert_eq!(
        store.token_by_id(edited.id, now).await.unwrap(),
        Some(edited.clone())
    );
    let mut ghost = edited.clone();
    ghost.id = Uuid::new_v4();
    assert!(matches!(
        store.update_token(ghost).await,
        Err(StoreError::NotFound)
    ));

    // Tokens issued from a code, and their whole family, go when the code is replayed.
    let code_id = Uuid::new_v4();
    let fam = Uuid::new_v4();
    let mut from_code = token(120, Some(121), fam, now);
    from_code.code_id = Some(code_id);
    store.insert_token(from_code.clone()).await.unwrap();
    let mut rotated_child = token(122, Some(123), fam, now);
    rotated_child.code_id = None;
    store.insert_token(rotated_child).await.unwrap();
    let revoked = store.revoke_by_code(code_id).await.unwrap();
    assert_eq!(revoked.len(), 2, "code's token and its family");

    // Removing the credential takes its tokens and codes.
    let code = CodeRecord {
        id: Uuid::new_v4(),
        code_hash: hash(130),
        credential_id: cred,
        service_id: None,
        plugin_id: Some(Uuid::new_v4()),
        authenticated_userid: Some("u".into()),
        scope: Some("s".into()),
        challenge: Some("abc".into()),
        challenge_method: Some("S256".into()),
        redirect_uri: Some("https://a.test/cb".into()),
        created_at: now,
        expires_at: now + 300,
    };
    store.insert_code(code).await.unwrap();
    let owned = store.delete_owned_by(&[cred], &[]).await.unwrap();
    assert_eq!(owned.len(), 5);
    assert_eq!(store.take_code(&hash(130), now).await.unwrap(), None);
    assert_eq!(
        store.delete_token(Uuid::new_v4()).await.unwrap(),
        None,
        "deleting nothing is fine"
    );

    // The sweep removes expired rows only (a row expiring at `now` is still live).
    let mut old = token(140, None, Uuid::new_v4(), now);
    old.expires_at = Some(now - 1);
    store.insert_token(old.clone()).await.unwrap();
    let keep = token(141, None, Uuid::new_v4(), now);
    store.insert_token(keep.clone()).await.unwrap();
    let mut last_second = token(142, None, Uuid::new_v4(), now);
    last_second.expires_at = Some(now);
    store.insert_token(last_second.clone()).await.unwrap();
    let earlier = now - 10;
    assert!(store.token_by_id(old.id, earlier).await.unwrap().is_some());
    let purged = store.purge_expired(now, 100).await.unwrap();
    assert!(purged >= 1, "expired token purged");
    assert_eq!(
        store.token_by_id(old.id, earlier).await.unwrap(),
        None,
        "the expired row is gone, not only hidden"
    );
    assert_eq!(store.token_by_id(keep.id, now).await.unwrap(), Some(keep));
    assert_eq!(
        store.token_by_id(last_second.id, now).await.unwrap(),
        Some(last_second)
    );
}

/// A start line for `n` tasks, after checking that they can really run at once: on a
/// current-thread runtime a store without await points would serve them one after another.
fn on_many_threads(n: usize) -> std::sync::Arc<tokio::sync::Barrier> {
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread,
        "a concurrency check needs a multi-thread runtime"
    );
    std::sync::Arc::new(tokio::sync::Barrier::new(n))
}

/// N concurrent takes of one code: exactly one gets it, the others see nothing or a replay.
pub async fn concurrent_take_code(store: std::sync::Arc<dyn TokenStore>, n: usize) {
    let now = 3_000_000;
    let code = CodeRecord {
        id: Uuid::new_v4(),
        code_hash: hash(77),
        credential_id: Uuid::nil(),
        service_id: None,
        plugin_id: None,
        authenticated_userid: None,
        scope: None,
        challenge: None,
        challenge_method: None,
        redirect_uri: None,
        created_at: now,
        expires_at: now + 300,
    };
    store.insert_code(code.clone()).await.unwrap();
    let start = on_many_threads(n);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store.take_code(&hash(77), now).await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(c)) => {
                assert_eq!(c, code);
                wins += 1;
            }
            Ok(None) | Err(StoreError::CodeReplayed { .. }) => {}
            Err(e) => panic!("take_code failed: {e:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one take wins");
}

/// N concurrent inserts of one unique name: one succeeds, the rest are unique violations.
pub async fn concurrent_unique_insert(store: std::sync::Arc<dyn ConfigStore>, n: usize) {
    let start = on_many_threads(n);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store
                    .insert(
                        &entities::SERVICES,
                        doc(json!({"id": Uuid::new_v4().to_string(), "name": "race", "host": "a"})),
                    )
                    .await
            })
        })
        .collect();
    let (mut ok, mut unique) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::UniqueViolation { fields }) => {
                assert_eq!(fields.get("name"), Some(&json!("race")));
                unique += 1;
            }
            Err(e) => panic!("insert failed: {e:?}"),
        }
    }
    assert_eq!((ok, unique), (1, n - 1));
}

/// Drops a test's Postgres schema (every Portcullis table in it) from a `Drop` impl. It runs on a
/// thread and runtime of its own, since the test's runtime may be gone or panicking, and it waits
/// at most `within`: the drop usually runs on the test's runtime thread, so a connection of that
/// runtime still holding a lock in the schema cannot release it while we wait. Better a schema
/// left behind (test schemas have random names) than a test that never ends.
pub fn drop_test_schema(pg: crate::postgres::PgSettings, within: std::time::Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(pool) = crate::postgres::connect(&pg).await {
                if let Ok(m) = crate::postgres::Migrator::new(pool, pg.schema.clone()) {
                    let _ = m.reset().await;
                }
            }
        });
        let _ = done.send(());
    });
    let _ = finished.recv_timeout(within);
}
