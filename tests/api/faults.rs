//! Faults of the shared services under traffic, on a real Postgres and a real `redis-server` that
//! the tests start, kill and start again: valid tokens keep working, nothing answers 401 for a valid
//! token or 500 for anything, and recovery needs nobody.

use std::time::Duration;

use portcullis::config::{Secret, Settings};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    eventually, or_skip, spawn_upstream, spawn_with, status_json, PgSchema, PrivateCluster,
    PrivateRedis, TestApp,
};

/// Client-credentials issuance on `app`; status and body.
async fn issue(app: &TestApp) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}/api/oauth2/token", app.proxy_tls))
        .json(
            &json!({"client_id": "clientid123", "client_secret": "secret123",
                      "grant_type": "client_credentials"}),
        )
        .send()
        .await
        .unwrap();
    status_json(r).await
}

/// A freshly issued access token.
async fn token(app: &TestApp) -> String {
    let (s, b) = issue(app).await;
    assert_eq!(s, 200, "token issued: {b}");
    b["access_token"].as_str().unwrap().to_string()
}

/// Status of a proxied request with `token`.
async fn use_token(app: &TestApp, token: &str) -> u16 {
    app.http
        .get(format!("{}/api/request", app.proxy))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn with_redis(settings: &Settings, redis: &PrivateRedis, prefix: &str) -> Settings {
    Settings {
        redis_url: Some(Secret::new(redis.url())),
        redis_prefix: prefix.to_string(),
        redis_timeout: 500,
        ..settings.clone()
    }
}

#[actix_web::test]
async fn redis_killed_mid_traffic_costs_nothing_and_is_refilled_when_back() {
    let Some(mut redis) = or_skip(PrivateRedis::start()) else {
        return;
    };
    let schema = PgSchema::migrated().await;
    let prefix = format!("pt-{}", Uuid::new_v4().simple());
    let settings = with_redis(&schema.settings, &redis, &prefix);
    let keys = |redis: &PrivateRedis| {
        redis
            .cli(&["--scan", "--pattern", &format!("{prefix}:tok:*")])
            .lines()
            .count()
    };
    let upstream = spawn_upstream();
    let a = spawn_with(settings.clone()).await;
    crate::helpers::client_credentials_fixture(&a, &upstream.url).await;
    let before = token(&a).await;
    assert_eq!(use_token(&a, &before).await, 200);
    assert!(keys(&redis) >= 1, "issuance writes through to Redis");

    redis.kill();
    // A second node starts with Redis down (a warning, not a failure) and has nothing cached:
    // it can only answer from Postgres.
    let b = spawn_with(settings.clone()).await;
    for _ in 0..10 {
        assert_eq!(use_token(&a, &before).await, 200, "near cache");
        assert_eq!(use_token(&b, &before).await, 200, "Postgres, Redis down");
    }
    let during = token(&b).await;
    assert_eq!(
        use_token(&a, &during).await,
        200,
        "issued during the outage"
    );
    assert_eq!(use_token(&b, &during).await, 200);
    assert_eq!(
        use_token(&b, "garbage").await,
        401,
        "an invalid token is still refused"
    );

    assert!(redis.restart(), "redis starts again (empty)");
    eventually(
        Duration::from_secs(10),
        "the gateway reconnects to Redis and fills it again",
        || async {
            let t = token(&a).await;
            assert_eq!(use_token(&b, &t).await, 200);
            (keys(&redis) >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(use_token(&b, &before).await, 200);
}

#[actix_web::test]
async fn postgres_down_mid_traffic_keeps_cached_tokens_and_refuses_writes_with_503() {
    let Some(cluster) = or_skip(PrivateCluster::start()) else {
        return;
    };
    let Some(redis) = or_skip(PrivateRedis::start()) else {
        return;
    };
    let base = cluster.migrated_settings("pt_faults", 2000).await;
    let settings = with_redis(&base, &redis, "pt-faults");
    let upstream = spawn_upstream();
    let a = spawn_with(settings.clone()).await;
    crate::helpers::client_credentials_fixture(&a, &upstream.url).await;
    let b = spawn_with(settings.clone()).await;
    let seen_by_both = token(&a).await;
    assert_eq!(use_token(&a, &seen_by_both).await, 200);
    assert_eq!(use_token(&b, &seen_by_both).await, 200);
    let only_in_redis_for_b = token(&a).await;
    // In neither cache of node B: B never saw it, and its Redis copy is gone.
    let in_neither_cache = token(&a).await;
    let digest = portcullis::crypto::token_hash(&in_neither_cache).to_hex();
    assert_eq!(
        redis
            .cli(&["del", &format!("pt-faults:tok:{digest}")])
            .trim(),
        "1",
        "issuance wrote the token through to Redis"
    );

    cluster.pg_ctl("stop").expect("cluster stops");
    for _ in 0..5 {
        assert_eq!(use_token(&a, &seen_by_both).await, 200, "near cache");
        assert_eq!(use_token(&b, &seen_by_both).await, 200, "near cache");
    }
    assert_eq!(
        use_token(&b, &only_in_redis_for_b).await,
        200,
        "Redis answers for a token B never saw"
    );
    for unknown in [in_neither_cache.as_str(), "never-issued"] {
        let r = b
            .http
            .get(format!("{}/api/request", b.proxy))
            .bearer_auth(unknown)
            .send()
            .await
            .unwrap();
        let (s, body) = status_json(r).await;
        assert_eq!(
            (s, body),
            (
                503,
                json!({"message": "The token store is temporarily unavailable"})
            ),
            "a token found in no cache cannot be checked, and is not called invalid"
        );
    }
    let (s, body) = issue(&a).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let (s, body) = b
        .admin_post("/consumers", json!({"username": "during"}))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(body["message"].is_string(), "{body}");

    cluster.pg_ctl("start").expect("cluster starts again");
    eventually(Duration::from_secs(20), "issuance works again", || async {
        (issue(&a).await.0 == 200).then_some(())
    })
    .await;
    let (s, list) = b.admin_get("/oauth2_tokens").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        4,
        "the three tokens issued before the outage are still there, and the new one: {list}"
    );
    assert_eq!(use_token(&a, &seen_by_both).await, 200);
    assert_eq!(use_token(&b, &only_in_redis_for_b).await, 200);
    assert_eq!(
        use_token(&b, &in_neither_cache).await,
        200,
        "valid again once it can be checked"
    );
}

/// A node that missed notices resyncs when its listener reconnects: changes committed without a
/// notice (triggers off, as for a node cut off at that moment) are served stale until Postgres
/// restarts, and are seen once the listener is back, long before the near cache's 30 s would
/// have dropped the token on its own.
#[actix_web::test]
async fn a_listener_reconnect_resyncs_what_the_node_missed() {
    let Some(cluster) = or_skip(PrivateCluster::start()) else {
        return;
    };
    let settings = cluster.migrated_settings("pt_resync", 2000).await;
    let upstream = spawn_upstream();
    let app = spawn_with(settings).await;
    crate::helpers::client_credentials_fixture(&app, &upstream.url).await;
    app.expose("gone", &upstream.url, &["/gone"]).await;
    assert_eq!(app.proxy_get("/gone/echo").await.status(), 200);
    let revoked = token(&app).await;
    assert_eq!(use_token(&app, &revoked).await, 200);
    let cached_at = std::time::Instant::now();

    // Changed behind the node's back: in replica mode no trigger fires, so nothing is notified.
    cluster.psql(
        "SET session_replication_role = replica; \
         DELETE FROM pt_resync.oauth2_tokens; \
         DELETE FROM pt_resync.routes WHERE name = 'gone-route'",
    );
    assert_eq!(use_token(&app, &revoked).await, 200, "near cache, stale");
    assert_eq!(
        app.proxy_get("/gone/echo").await.status(),
        200,
        "snapshot, stale"
    );

    cluster.pg_ctl("stop").expect("cluster stops");
    cluster.pg_ctl("start").expect("cluster starts again");
    eventually(
        Duration::from_secs(20),
        "the reconnected listener resyncs routes and tokens",
        || async {
            let route = app.proxy_get("/gone/echo").await.status().as_u16();
            let token = use_token(&app, &revoked).await;
            (route == 404 && token == 401).then_some(())
        },
    )
    .await;
    assert!(
        cached_at.elapsed() < Duration::from_secs(30),
        "the token went with the resync, not with the near cache's lifetime"
    );
    assert_eq!(
        app.proxy_get("/api/request").await.status(),
        401,
        "the rest is served"
    );
}
