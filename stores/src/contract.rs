//! The behaviour every store must show. Each function panics (test failure) on a deviation; the
//! stores' tests call them against every implementation (memory now, Postgres and Redis later).

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

/// Lookups by digest, expiry, single-use codes, atomic rotation with reuse detection.
pub async fn token_store_contract(store: &dyn TokenStore) {
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
