//! Storage for Portcullis.
//!
//! The gateway never talks to a database driver directly: the admin API and the config registry
//! hold an `Arc<dyn ConfigStore>`, the `oauth2` plugin, the admin API's token endpoints
//! and the token lifecycle an `Arc<dyn TokenStore>`, and this crate decides where the data lives. The proxy reads neither: it
//! serves from the router snapshot the registry builds.
//!
//! # Layout
//! - [`model`]: entity definitions (unique keys, foreign keys and their delete rules) that every
//!   `ConfigStore` enforces, and the typed token/code records of the `TokenStore`.
//! - [`error`]: [`StoreError`], the one error every store answers with; the gateway maps it to HTTP.
//! - [`memory`]: the embedded default, used by `database = memory` and by tests; also the document
//!   helpers (`doc_id`, `foreign_id`) every store and the gateway share.
//! - [`redis_cache`]: the shared token cache in Redis, keyed by digest, and the cluster's shared
//!   `oauth2-introspection` verdicts and failed client authentications.
//! - [`redis_counters`]: request counters per time window in Redis (the `rate-limiting` plugin's
//!   `redis` policy), checked and counted in one atomic round trip.
//! - [`redis_conn`]: the one connection to a Redis server both talk through, plain or TLS (the
//!   CAs trusted, verification, the server name).
//! - `redis_batch`: a proxy worker's token lookups sent to Redis together, one command in
//!   flight at a time (see [`serve_from_this_worker_thread`]).
//! - [`tiered`]: near cache → Redis → durable store for token lookups.
//! - `sightings`: which digests Redis answered for lately, so the near cache takes a record read
//!   there on its second sighting and a token used once never costs an insert.
//! - [`observe`]: the observer the token stores tell which tier answered a lookup and how long
//!   Redis and Postgres took (the gateway's metrics implement it).
//! - [`postgres`]: the durable stores (`database = postgres`), their pool, their migrations and
//!   the LISTEN/NOTIFY listener that tells each node what the others changed.
//! - `contract` (feature `contract`, test code): the behaviour every implementation must show, as
//!   functions the tests run against each store.

#[cfg(feature = "contract")]
pub mod contract;
pub mod error;
pub mod memory;
mod memory_tokens;
pub mod model;
pub mod observe;
pub mod postgres;
mod redis_batch;
pub mod redis_cache;
pub mod redis_conn;
pub mod redis_counters;
mod sightings;
pub mod tiered;
pub mod unverified;

pub use error::StoreError;
pub use model::{
    CodeRecord, Document, EntityDef, ForeignKeyDef, ListFilter, OnDelete, Page, RefreshOutcome,
    TokenFilter, TokenHash, TokenRecord,
};

/// Tells the stores that the calling thread is a proxy worker: it runs one runtime, and a
/// `LocalSet` on it, for as long as it lives. Redis commands sent from it then go over connections
/// of its own, driven there ([`redis_conn`]), and the token lookups it makes go to Redis together,
/// one command in flight at a time (`redis_batch`). Call it from a task of that `LocalSet`; a
/// thread whose runtime ends before it does must not call it.
pub fn serve_from_this_worker_thread() {
    redis_conn::use_thread_connections();
    redis_batch::batch_token_lookups();
}

use async_trait::async_trait;
use uuid::Uuid;

/// Durable home of the gateway configuration (services, routes, consumers, plugins, credentials).
///
/// Entities are JSON documents already validated by the gateway's schemas; the store enforces the
/// constraints declared by [`EntityDef`] (unique keys, foreign keys, restrict/cascade on delete) and
/// performs each call atomically, so a rejected write leaves nothing behind.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    /// Inserts a new document; `doc["id"]` must be set.
    ///
    /// # Errors
    /// Unique or foreign-key violations, or an unavailable backend.
    async fn insert(
        &self,
        entity: &'static EntityDef,
        doc: Document,
    ) -> Result<Document, StoreError>;

    /// Replaces the document with `doc["id"]`, which must exist.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], unique or foreign-key violations, or an unavailable backend.
    async fn update(
        &self,
        entity: &'static EntityDef,
        doc: Document,
    ) -> Result<Document, StoreError>;

    /// Deletes a document and, following the foreign-key rules, everything that depends on it.
    /// Returns every `(entity name, id)` removed, the document itself first; empty when absent.
    ///
    /// # Errors
    /// [`StoreError::ReferencedBy`] when a restricting reference exists.
    async fn delete(
        &self,
        entity: &'static EntityDef,
        id: Uuid,
    ) -> Result<Vec<(&'static str, Uuid)>, StoreError>;

    /// Reads one document by id.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn get(
        &self,
        entity: &'static EntityDef,
        id: Uuid,
    ) -> Result<Option<Document>, StoreError>;

    /// Reads one document by a unique text field (a name, a username, a client_id).
    ///
    /// # Errors
    /// An unavailable backend.
    async fn get_by(
        &self,
        entity: &'static EntityDef,
        field: &str,
        value: &str,
    ) -> Result<Option<Document>, StoreError>;

    /// Lists one page of documents in id order.
    ///
    /// # Errors
    /// [`StoreError::InvalidOffset`] or an unavailable backend.
    async fn list(
        &self,
        entity: &'static EntityDef,
        filter: &ListFilter,
    ) -> Result<Page, StoreError>;

    /// Every document of an entity, for compiling the router snapshot.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn all(&self, entity: &'static EntityDef) -> Result<Vec<Document>, StoreError>;
}

/// Where issued tokens and authorization codes live; every secret is keyed by its SHA-256 digest.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a newly issued token.
    ///
    /// # Errors
    /// [`StoreError::UniqueViolation`] on a digest collision, or an unavailable backend.
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError>;

    /// Finds a live token by the digest of its access token (rows past their TTL are invisible).
    ///
    /// # Errors
    /// An unavailable backend.
    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// [`TokenStore::token_by_access`] when the store can answer from memory, with no I/O:
    /// `None` means "ask [`TokenStore::token_by_access`]". The token check on every proxied
    /// request tries this first, which spares it a boxed future per request.
    fn token_by_access_in_memory(
        &self,
        _hash: &TokenHash,
        _now: i64,
    ) -> Option<Option<TokenRecord>> {
        None
    }

    /// Finds a live token by the digest of its refresh token (to check ownership before redeeming).
    ///
    /// # Errors
    /// An unavailable backend.
    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// Finds a live token by id.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError>;

    /// Replaces a token record in place (admin PATCH/PUT); the id must exist.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or an unavailable backend.
    async fn update_token(&self, token: TokenRecord) -> Result<(), StoreError>;

    /// Deletes a token; returns it if it existed.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError>;

    /// Atomically redeems a refresh token: exactly one concurrent caller gets `Rotated`.
    ///
    /// With `replacement` the old row is deleted and the new one inserted (rotation); without it the
    /// row is kept and only its access token and clock are renewed (`reuse_refresh_token`). A refresh
    /// token that was already rotated is reported as `Reused` with its family so the caller can
    /// revoke the family.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Deletes every token of a rotation family; returns the removed tokens.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError>;

    /// Stores a new authorization code.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn insert_code(&self, code: CodeRecord) -> Result<(), StoreError>;

    /// Atomically takes (deletes and returns) a live code. A code that was already redeemed is
    /// reported with `Err(StoreError::CodeReplayed { code_id })` so the caller can revoke its tokens.
    ///
    /// # Errors
    /// [`StoreError::CodeReplayed`] or an unavailable backend.
    async fn take_code(&self, hash: &TokenHash, now: i64)
        -> Result<Option<CodeRecord>, StoreError>;

    /// Deletes every token issued from the given authorization code.
    ///
    /// # Errors
    /// An unavailable backend.
    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError>;

    /// Deletes the tokens and codes of removed credentials or services (cascade).
    ///
    /// # Errors
    /// An unavailable backend.
    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// Lists live tokens in id order.
    ///
    /// # Errors
    /// [`StoreError::InvalidOffset`] or an unavailable backend.
    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: i64,
    ) -> Result<(Vec<TokenRecord>, Option<String>), StoreError>;

    /// Removes at most `batch` expired tokens, codes and rotation tombstones; returns how many
    /// (0 when a shared store is being swept by another node of the cluster right now).
    ///
    /// # Errors
    /// An unavailable backend.
    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError>;
}

/// What a refresh does to the row it redeems.
#[derive(Debug, Clone)]
pub enum RefreshReplacement {
    /// Rotation: the old row goes, this one replaces it (same family).
    Rotate(Box<TokenRecord>),
    /// `reuse_refresh_token`: keep the row and refresh token, renew the access token and clock.
    Renew {
        /// Digest of the new access token.
        access_token_hash: TokenHash,
        /// Access-token lifetime in seconds.
        expires_in: i64,
        /// New row expiry, if any.
        expires_at: Option<i64>,
    },
}
