//! API keys (`/consumers/{c}/key-auth`, `/key-auths`): schema, and the digest that replaces the
//! key before storage.
//!
//! Kong stores keys in clear and shows them on every read. Here a key is stored only as the
//! lower-case hex of its SHA-256 digest (`key_hash`), as tokens are: the write that sets a key
//! (given, or generated when absent) answers with it in `key` once; reads show `key_hash` only. A
//! credential read back can be written again as it is (`key_hash` is accepted as input), so a
//! configuration copied between gateways keeps working without the keys ever leaving the clients.

use std::sync::LazyLock;

use portcullis_stores::model::entities as defs;
use serde_json::{json, Map, Value};

use crate::crypto;
use crate::entities::{EndpointLookup, EntityKind};
use crate::schema::{Field, FieldType, Schema};

fn check_key(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some("") => Err("length must be at least 1".into()),
        Some(_) => Ok(()),
        None => Err("expected a string".into()),
    }
}

fn check_digest(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(())
        }
        _ => Err("expected the lower-case hex SHA-256 digest of a key".into()),
    }
}

/// Schema of `keyauth_credentials`.
pub static CREDENTIAL_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "keyauth_credentials",
    fields: vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Integer),
        Field::new("consumer", FieldType::Foreign("consumers")).required(),
        Field::new("key", FieldType::String)
            .check(check_key)
            .pattern("[A-Za-z0-9_-]{8,40}"),
        Field::new("key_hash", FieldType::String)
            .check(check_digest)
            .pattern("[0-9a-f]{64}"),
        Field::new("tags", FieldType::Set(Box::new(FieldType::String))),
    ],
    entity_checks: vec![],
});

/// The digest of a key as `key_hash` stores it.
pub fn key_digest(key: &str) -> String {
    crypto::token_hash(key).to_hex()
}

/// API keys as an admin entity (addressed by id or by the key itself, found by its digest).
pub static CREDENTIALS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::KEYAUTH_CREDENTIALS,
    schema: &CREDENTIAL_SCHEMA,
    endpoint_key: "key",
    endpoint_lookup: EndpointLookup::Digest {
        field: "key_hash",
        digest: key_digest,
    },
});

/// Replaces `key` with its digest; generates a key when neither a key nor a digest is given.
/// Returns the key in clear when this write set one (for the answer, never stored).
pub fn prepare_for_storage(doc: &mut Map<String, Value>) -> Option<String> {
    let key = match doc.remove("key") {
        Some(Value::String(key)) => key,
        _ if doc.get("key_hash").is_some_and(Value::is_string) => return None,
        _ => crypto::random_token(),
    };
    doc.insert("key_hash".into(), json!(key_digest(&key)));
    Some(key)
}
