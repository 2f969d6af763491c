//! OAuth 2.0 client credentials (`/consumers/{c}/oauth2`, `/oauth2`): schema, secret hashing on
//! write, and the typed view the token endpoint authenticates against.

use std::sync::LazyLock;

use portcullis_stores::model::entities as defs;
use serde_json::{json, Map, Value};

use crate::crypto;
pub use crate::entities::OAuthCredential;
use crate::entities::{EndpointLookup, EntityKind};
use crate::schema::{Field, FieldErrors, FieldType, Schema};

fn check_redirect_uri(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.contains('#') {
        return Err(format!("fragment not allowed in '{s}'"));
    }
    match url::Url::parse(s) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(format!("cannot parse '{s}'")),
    }
}

/// Schema of `oauth2_credentials`.
pub static CREDENTIAL_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema {
    name: "oauth2_credentials",
    fields: vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Integer),
        Field::new("updated_at", FieldType::Integer),
        Field::new("tags", FieldType::Set(Box::new(FieldType::String))),
        Field::new("consumer", FieldType::Foreign("consumers")).required(),
        Field::new("name", FieldType::String).required(),
        Field::new("client_id", FieldType::String)
            .required()
            .default(|| json!(crypto::random_token())),
        Field::new("client_secret", FieldType::String)
            .required()
            .default(|| json!(crypto::random_token())),
        Field::new("hash_secret", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new(
            "redirect_uris",
            FieldType::Array(Box::new(FieldType::String)),
        )
        .check(check_redirect_uri)
        // Host labels never hold `--`: one starting `xn--` is punycode, which URL parsers decode
        // and may refuse.
        .pattern(
            "https?://([a-z0-9]{1,10}(-[a-z0-9]{1,9})?\\.){0,3}[a-z][a-z0-9]{0,9}(-[a-z0-9]{1,9})?(/[A-Za-z0-9._~-]{0,10}){0,3}",
        ),
        Field::new("client_type", FieldType::String)
            .required()
            .default(|| json!("confidential"))
            .one_of(&["confidential", "public"]),
    ],
    entity_checks: vec![],
}
});

/// Credentials as an admin entity.
pub static CREDENTIALS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::OAUTH2_CREDENTIALS,
    schema: &CREDENTIAL_SCHEMA,
    endpoint_key: "client_id",
    endpoint_lookup: EndpointLookup::Plain,
});

/// Kong couples `hash_secret` and `client_secret` on partial updates.
///
/// # Errors
/// The `@entity` error when only one of them is patched.
pub fn check_patch(patch: &Map<String, Value>) -> Result<(), FieldErrors> {
    if patch.contains_key("hash_secret") != patch.contains_key("client_secret") {
        let mut e = FieldErrors::new();
        e.insert(
            "@entity".into(),
            json!(["all or none of these fields must be set: 'hash_secret', 'client_secret'"]),
        );
        return Err(e);
    }
    Ok(())
}

/// Hashes the secret before storage when `hash_secret` is set and it is not a hash already.
///
/// # Errors
/// Never in practice (argon2 with default parameters).
pub fn prepare_for_storage(doc: &mut Map<String, Value>) -> Result<(), String> {
    let hash = doc
        .get("hash_secret")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let (true, Some(Value::String(secret))) = (hash, doc.get("client_secret")) {
        if !crypto::is_hashed(secret) {
            let hashed = crypto::hash_secret(secret)?;
            doc.insert("client_secret".into(), Value::String(hashed));
        }
    }
    Ok(())
}
