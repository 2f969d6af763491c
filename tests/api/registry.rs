//! The config registry against the real gateway: a delete the store committed is live at once,
//! even when removing its tokens fails afterwards, and the admin client is told exactly that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portcullis::config::Settings;
use portcullis::startup::open_stores;
use portcullis_stores::{
    CodeRecord, RefreshOutcome, RefreshReplacement, StoreError, TokenFilter, TokenHash,
    TokenRecord, TokenStore,
};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{eventually, spawn_on, spawn_upstream, status_json, test_settings, PgSchema};

/// A token store whose cascade (`delete_owned_by`) fails while `failing` is set: no real store
/// can be made to fail at exactly the point between the config commit and the token cascade.
/// Everything else goes to the real store underneath.
struct CascadeFails {
    inner: Arc<dyn TokenStore>,
    failing: AtomicBool,
}

#[async_trait]
impl TokenStore for CascadeFails {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.inner.insert_token(token).await
    }
    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_by_access(hash, now).await
    }
    fn token_by_access_in_memory(&self, hash: &TokenHash, now: i64) -> Option<Option<TokenRecord>> {
        self.inner.token_by_access_in_memory(hash, now)
    }
    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_by_refresh(hash, now).await
    }
    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_by_id(id, now).await
    }
    async fn update_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.inner.update_token(token).await
    }
    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.delete_token(id).await
    }
    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        self.inner.redeem_refresh(refresh, replacement, now).await
    }
    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.revoke_family(family).await
    }
    async fn insert_code(&self, code: CodeRecord) -> Result<(), StoreError> {
        self.inner.insert_code(code).await
    }
    async fn take_code(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.inner.take_code(hash, now).await
    }
    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.revoke_by_code(code_id).await
    }
    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("token store down (test)".into()));
        }
        self.inner.delete_owned_by(credentials, services).await
    }
    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: i64,
    ) -> Result<(Vec<TokenRecord>, Option<String>), StoreError> {
        self.inner.list_tokens(filter, now).await
    }
    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError> {
        self.inner.purge_expired(now, batch).await
    }
}

/// Deletes a credential whose token cascade fails: the delete must still be live (the snapshot
/// republished, its token refused), the answer must say so, and the tokens must go once the token
/// store is back.
async fn failed_cascade_still_publishes(settings: Settings) {
    // Arrange: the gateway on a token store whose cascade fails; a credential with a live token.
    let mut stores = open_stores(&settings).await.expect("stores open");
    let tokens = Arc::new(CascadeFails {
        inner: stores.tokens.clone(),
        failing: AtomicBool::new(true),
    });
    stores.tokens = tokens.clone();
    let app = spawn_on(settings, stores).await;
    let upstream = spawn_upstream();
    let cred = crate::helpers::client_credentials_fixture_with(
        &app,
        &upstream.url,
        json!({"name": "app", "client_id": "cid", "client_secret": "secret"}),
    )
    .await;
    let r = app
        .http
        .post(format!("{}/api/oauth2/token", app.proxy_tls))
        .json(&json!({"client_id": "cid", "client_secret": "secret", "grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(s, 200, "{b}");
    let access = b["access_token"].as_str().unwrap().to_string();
    let proxied = |token: String| {
        let (http, url) = (app.http.clone(), format!("{}/api/request", app.proxy));
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(proxied(access.clone()).await, 200, "the token works before");

    // Act: delete the credential while the token cascade fails.
    let id = cred["id"].as_str().unwrap();
    let (s, b) = app
        .admin_delete(&format!("/consumers/bob/oauth2/{id}"))
        .await;

    // Assert: told what happened (deleted, tokens kept for now), not "nothing changed".
    assert_eq!(s, 503, "{b}");
    let message = b["message"].as_str().unwrap();
    assert!(message.starts_with("Deleted."), "{message}");
    assert!(message.contains("refused from now on"), "{message}");
    // The row is gone and the snapshot without it is live: the token is refused at once.
    let (s, _) = app.admin_get(&format!("/consumers/bob/oauth2/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(proxied(access.clone()).await, 401, "the token is refused");
    let (s, listed) = app.admin_get("/oauth2_tokens").await;
    assert_eq!(s, 200);
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "still stored: {listed}"
    );

    // The token store comes back: the registry's retry removes the token.
    tokens.failing.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "the retried cascade removes the token",
        || async {
            let (_, listed) = app.admin_get("/oauth2_tokens").await;
            listed["data"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        },
    )
    .await;
    assert_eq!(proxied(access).await, 401);
}

#[actix_web::test]
async fn failed_token_cascade_still_publishes_the_delete_on_memory() {
    failed_cascade_still_publishes(test_settings()).await;
}

#[actix_web::test]
async fn failed_token_cascade_still_publishes_the_delete_on_postgres() {
    let schema = PgSchema::migrated().await;
    failed_cascade_still_publishes(schema.settings.clone()).await;
}

/// Parallel PATCHes of different fields of one row lose none of them (each merges onto the row
/// the one before it wrote), and parallel PUTs of one new key create it once and replace it.
#[actix_web::test]
async fn parallel_writes_to_one_row_lose_nothing() {
    let app = crate::helpers::spawn_app().await;
    let (s, b) = app
        .admin_post(
            "/services",
            json!({"name": "svc", "url": "http://up.test:80"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let changes = [
        json!({"retries": 1}),
        json!({"connect_timeout": 1001}),
        json!({"read_timeout": 1002}),
        json!({"write_timeout": 1003}),
        json!({"path": "/p"}),
        json!({"host": "up2.test"}),
        json!({"port": 8080}),
        json!({"tags": ["t"]}),
    ];
    let patches = changes
        .iter()
        .map(|c| app.admin_patch("/services/svc", c.clone()));
    for (s, b) in futures_util::future::join_all(patches).await {
        assert_eq!(s, 200, "{b}");
    }
    let (_, svc) = app.admin_get("/services/svc").await;
    for change in &changes {
        for (field, value) in change.as_object().unwrap() {
            assert_eq!(&svc[field], value, "{field} kept: {svc}");
        }
    }

    let puts =
        (0..5).map(|i| app.admin_put("/consumers/alice", json!({"custom_id": format!("c{i}")})));
    for (s, b) in futures_util::future::join_all(puts).await {
        assert_eq!(s, 200, "{b}");
    }
    let (_, listed) = app.admin_get("/consumers").await;
    let alices = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["username"] == "alice")
        .count();
    assert_eq!(alices, 1, "{listed}");
}
