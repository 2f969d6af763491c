//! Clients with a `hash_secret` credential: a secret that verified is not verified the expensive
//! way again for a while, a wrong one always is, and a changed or deleted credential takes effect
//! at once (on every node sharing the database, as soon as it hears of the change).

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    eventually, spawn_app, spawn_upstream, spawn_with, status_json, PgSchema, TestApp, Upstream,
};

const CLIENT: &str = "hashed-client";

/// A refused client authentication with body parameters: `400 invalid_client` (RFC 6749 §5.2
/// keeps 401 for the `Authorization` header).
const REFUSED: u16 = 400;

/// Service and route `/api` with the `oauth2` plugin (client credentials), consumer `bob` and
/// his application `CLIENT` whose secret `secret` is stored hashed.
async fn protect(app: &TestApp, secret: &str) -> Upstream {
    let upstream = spawn_upstream();
    let b = crate::helpers::client_credentials_fixture_with(
        app,
        &upstream.url,
        json!({"name": "app", "client_id": CLIENT, "client_secret": secret, "hash_secret": true}),
    )
    .await;
    assert_ne!(b["client_secret"], secret, "stored hashed");
    upstream
}

/// Status of a `client_credentials` token request with `secret`.
async fn token(app: &TestApp, secret: &str) -> u16 {
    let r = app
        .http
        .post(format!("{}/api/oauth2/token", app.proxy_tls))
        .json(&json!({"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": secret}))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    if s == 200 {
        assert!(b["access_token"].is_string(), "{b}");
    } else {
        assert_eq!(b["error"], "invalid_client", "{s} {b}");
    }
    s
}

/// Sets the application's secret (hashed) through the admin API.
async fn change_secret(app: &TestApp, secret: &str) -> Value {
    let (s, b) = app
        .admin_patch(
            &format!("/consumers/bob/oauth2/{CLIENT}"),
            json!({"client_secret": secret, "hash_secret": true}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

#[actix_web::test]
async fn a_verified_secret_is_not_verified_again() {
    let app = spawn_app().await;
    let _upstream = protect(&app, "s3cret").await;

    assert_eq!(token(&app, "s3cret").await, 200);
    assert_eq!(app.verified_secrets.verifications(), 1);
    for _ in 0..3 {
        assert_eq!(token(&app, "s3cret").await, 200);
    }
    assert_eq!(
        app.verified_secrets.verifications(),
        1,
        "answered from the verified map"
    );
}

#[actix_web::test]
async fn a_wrong_secret_is_never_remembered() {
    let app = spawn_app().await;
    let _upstream = protect(&app, "s3cret").await;

    assert_eq!(token(&app, "wrong").await, REFUSED);
    assert_eq!(token(&app, "wrong").await, REFUSED);
    assert_eq!(app.verified_secrets.verifications(), 2);

    assert_eq!(token(&app, "s3cret").await, 200);
    assert_eq!(
        token(&app, "wrong").await,
        REFUSED,
        "the right secret's entry"
    );
    assert_eq!(app.verified_secrets.verifications(), 4);
    assert_eq!(token(&app, "s3cret").await, 200);
    assert_eq!(app.verified_secrets.verifications(), 4);
}

#[actix_web::test]
async fn a_changed_secret_takes_effect_at_once() {
    let app = spawn_app().await;
    let _upstream = protect(&app, "old").await;
    assert_eq!(token(&app, "old").await, 200);
    assert_eq!(token(&app, "old").await, 200);

    change_secret(&app, "new").await;
    assert_eq!(
        token(&app, "old").await,
        REFUSED,
        "the old secret is refused"
    );
    assert_eq!(token(&app, "new").await, 200);

    // Set back to the old secret: a new hash of it, verified afresh.
    let before = app.verified_secrets.verifications();
    change_secret(&app, "old").await;
    assert_eq!(token(&app, "old").await, 200);
    assert_eq!(app.verified_secrets.verifications(), before + 1);
    assert_eq!(token(&app, "new").await, REFUSED);
}

#[actix_web::test]
async fn a_secret_of_a_deleted_credential_is_refused_at_once() {
    let app = spawn_app().await;
    let _upstream = protect(&app, "s3cret").await;
    assert_eq!(token(&app, "s3cret").await, 200);

    let (s, b) = app
        .admin_delete(&format!("/consumers/bob/oauth2/{CLIENT}"))
        .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(token(&app, "s3cret").await, REFUSED);
}

/// Node b remembers the old secret; the change made through node a reaches it through the
/// configuration notices, and from then on b refuses the old secret.
#[actix_web::test]
async fn a_secret_changed_on_one_node_is_refused_by_the_other() {
    let schema = PgSchema::migrated().await;
    let a = spawn_with(schema.settings.clone()).await;
    let _upstream = protect(&a, "old").await;
    let b = spawn_with(schema.settings.clone()).await;
    assert_eq!(token(&b, "old").await, 200);
    assert_eq!(token(&b, "old").await, 200);
    assert_eq!(b.verified_secrets.verifications(), 1, "b remembers it");

    change_secret(&a, "new").await;
    // Until b hears of the change it accepts the old secret; once it has, never again.
    eventually(
        Duration::from_secs(5),
        "node b refuses the old secret",
        || async { (token(&b, "old").await == REFUSED).then_some(()) },
    )
    .await;
    assert_eq!(token(&b, "new").await, 200);
    assert_eq!(token(&b, "old").await, REFUSED);
}
