//! The one error type of every store; the gateway maps each variant to an HTTP answer.

use serde_json::Value;
use uuid::Uuid;

/// Why a store call failed. Variants carry only what a client may see; backend detail is logged
/// by the store and reduced to a category here.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key is already taken; `fields` holds the offending key values.
    #[error("unique constraint violation on {fields:?}")]
    UniqueViolation {
        /// Offending key values, e.g. `{"name": "s1"}`.
        fields: serde_json::Map<String, Value>,
    },
    /// A foreign key points at a row that does not exist.
    #[error("foreign key {field} references a missing {references} row")]
    ForeignKeyMissing {
        /// The foreign-key field.
        field: &'static str,
        /// The referenced entity.
        references: &'static str,
        /// The missing id.
        id: Uuid,
    },
    /// The row is still referenced by a restricting foreign key of `referenced_by`.
    #[error("row of {entity} is referenced by {referenced_by}")]
    ReferencedBy {
        /// Entity whose row was to be deleted.
        entity: &'static str,
        /// Entity holding the restricting reference.
        referenced_by: &'static str,
    },
    /// The row to update does not exist.
    #[error("not found")]
    NotFound,
    /// A pagination offset that this store did not hand out.
    #[error("invalid offset")]
    InvalidOffset,
    /// An authorization code that was already redeemed was presented again.
    #[error("authorization code replayed")]
    CodeReplayed {
        /// The code's id, to revoke the tokens issued from it.
        code_id: Uuid,
    },
    /// A value this backend cannot store (Postgres text cannot hold a NUL character); the
    /// client sent it, so it is the client's error, not a 500.
    #[error("invalid value for {field}: {reason}")]
    InvalidValue {
        /// The offending top-level field.
        field: String,
        /// Why, in words a client may see.
        reason: &'static str,
    },
    /// The store holds as many tokens as it may (`memory_max_tokens`) even after sweeping the
    /// expired ones: issuance waits until tokens expire or are revoked, existing tokens still work.
    #[error("token store full")]
    Full,
    /// The backend cannot be reached right now; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupt data. Never shown to clients.
    #[error("store error: {0}")]
    Internal(String),
}
