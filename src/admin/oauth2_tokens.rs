//! Admin endpoints for issued tokens (`/oauth2_tokens`, nested under `/oauth2/{c}` and
//! `/services/{s}`), Kong's semantics on our token store.
//!
//! Deliberate difference from Kong: tokens are stored as digests, so the plain `access_token` and
//! `refresh_token` appear only in the answer that created or changed them; reads show
//! `access_token_digest` instead. A token can still be addressed by its plain value in the URL.

use std::sync::LazyLock;

use actix_web::http::Method;
use actix_web::HttpResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_stores::model::entities as defs;
use portcullis_stores::{TokenFilter, TokenRecord};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{crud, AdminState};
use crate::clock::now;
use crate::crypto;
use crate::error::AdminError;
use crate::plugins::oauth2::credentials::CREDENTIALS;
use crate::plugins::oauth2::MAX_TTL;
use crate::schema::{self, Coerce, Field, FieldErrors, FieldType, Schema};

/// Parses the request body on demand.
pub type ParseBody<'a> = &'a dyn Fn() -> Result<(Map<String, Value>, Coerce), AdminError>;

/// Schema of `oauth2_tokens` as the admin API accepts it.
pub static TOKEN_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "oauth2_tokens",
    fields: vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Integer),
        Field::new("credential", FieldType::Foreign("oauth2_credentials")).required(),
        Field::new("service", FieldType::Foreign("services")),
        Field::new("token_type", FieldType::String)
            .required()
            .default(|| json!("bearer"))
            .one_of(&["bearer"]),
        Field::new("expires_in", FieldType::Integer)
            .required()
            .between(0, crate::plugins::oauth2::MAX_TOKEN_EXPIRATION),
        Field::new("access_token", FieldType::String),
        Field::new("refresh_token", FieldType::String),
        Field::new("authenticated_userid", FieldType::String),
        Field::new("scope", FieldType::String),
        Field::new("ttl", FieldType::Integer).between(0, MAX_TTL),
    ],
    entity_checks: vec![],
});

/// The token collections [`dispatch`] serves, for the admin API's OpenAPI document: `(path, path
/// parameter of the scope, token field the scope fills)`.
pub const TOKEN_SCOPES: [(&str, Option<&str>, Option<&str>); 3] = [
    ("/oauth2_tokens", None, None),
    (
        "/oauth2/{oauth2_credential}/oauth2_tokens",
        Some("oauth2_credential"),
        Some("credential"),
    ),
    (
        "/services/{service}/oauth2_tokens",
        Some("service"),
        Some("service"),
    ),
];

/// Fields a token read shows beyond [`TOKEN_SCHEMA`] (see `render`): `(name, JSON type)`.
pub const TOKEN_RESPONSE_EXTRA: &[(&str, &str)] = &[("access_token_digest", "string")];

/// Which slice of the tokens a path addresses.
#[derive(Clone, Copy)]
enum Scope {
    All,
    Credential(Uuid),
    Service(Uuid),
}

/// Handles the token paths; `None` when the path is not one of them.
pub async fn dispatch(
    st: &AdminState,
    seg: &[&str],
    method: &Method,
    query: &[(String, String)],
    parse: ParseBody<'_>,
) -> Option<Result<HttpResponse, AdminError>> {
    let (scope, rest): (Result<Scope, AdminError>, &[&str]) = match seg {
        ["oauth2_tokens", rest @ ..] => (Ok(Scope::All), rest),
        ["oauth2", cred, "oauth2_tokens", rest @ ..] => (credential_scope(st, cred).await, rest),
        ["services", svc, "oauth2_tokens", rest @ ..] => (service_scope(st, svc).await, rest),
        _ => return None,
    };
    let scope = match scope {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(match (rest, method) {
        ([], &Method::GET) => list(st, scope, query).await,
        ([], &Method::POST) => match parse() {
            Ok((input, coerce)) => write(st, scope, None, input, coerce, false).await,
            Err(e) => Err(e),
        },
        ([key], &Method::GET) => read(st, scope, key)
            .await
            .map(|t| HttpResponse::Ok().json(render(&t, None, None))),
        ([key], &Method::PUT) => match parse() {
            Ok((input, coerce)) => write(st, scope, Some(key), input, coerce, false).await,
            Err(e) => Err(e),
        },
        ([key], &Method::PATCH) => match parse() {
            Ok((input, coerce)) => write(st, scope, Some(key), input, coerce, true).await,
            Err(e) => Err(e),
        },
        ([key], &Method::DELETE) => delete(st, scope, key).await,
        ([key, "service"], &Method::GET) => foreign(st, scope, key, true).await,
        ([key, "credential"], &Method::GET) => foreign(st, scope, key, false).await,
        _ => Err(AdminError::MethodNotAllowed),
    })
}

async fn credential_scope(st: &AdminState, key: &str) -> Result<Scope, AdminError> {
    crud::parent_id(st, &CREDENTIALS, key)
        .await
        .map(Scope::Credential)
}

async fn service_scope(st: &AdminState, key: &str) -> Result<Scope, AdminError> {
    crud::parent_id(st, &crate::entities::SERVICES, key)
        .await
        .map(Scope::Service)
}

fn in_scope(t: &TokenRecord, scope: Scope) -> bool {
    match scope {
        Scope::All => true,
        Scope::Credential(c) => t.credential_id == c,
        Scope::Service(s) => t.service_id == Some(s),
    }
}

async fn find(st: &AdminState, key: &str) -> Result<Option<TokenRecord>, AdminError> {
    let at = now();
    Ok(match Uuid::parse_str(key) {
        Ok(id) => st.tokens.token_by_id(id, at).await?,
        Err(_) => {
            st.tokens
                .token_by_access(&crypto::token_hash(key), at)
                .await?
        }
    })
}

async fn read(st: &AdminState, scope: Scope, key: &str) -> Result<TokenRecord, AdminError> {
    find(st, key)
        .await?
        .filter(|t| in_scope(t, scope))
        .ok_or(AdminError::NotFound)
}

/// The token as the API shows it; plain values only when just set.
fn render(t: &TokenRecord, access: Option<&str>, refresh: Option<&str>) -> Value {
    let ttl = t.expires_at.map(|e| (e - now()).max(0));
    json!({
        "id": t.id,
        "created_at": t.created_at,
        "credential": { "id": t.credential_id },
        "service": t.service_id.map(|s| json!({ "id": s })),
        "token_type": t.token_type,
        "expires_in": t.expires_in,
        "access_token": access,
        "access_token_digest": t.access_token_hash.to_hex(),
        "refresh_token": refresh,
        "authenticated_userid": t.authenticated_userid,
        "scope": t.scope,
        "ttl": ttl,
    })
}

/// The current record as admin input (for PATCH merges).
fn as_input(t: &TokenRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(t.id));
    m.insert("created_at".into(), json!(t.created_at));
    m.insert("credential".into(), json!({ "id": t.credential_id }));
    m.insert(
        "service".into(),
        t.service_id.map_or(Value::Null, |s| json!({ "id": s })),
    );
    m.insert("token_type".into(), json!(t.token_type));
    m.insert("expires_in".into(), json!(t.expires_in));
    m.insert("authenticated_userid".into(), json!(t.authenticated_userid));
    m.insert("scope".into(), json!(t.scope));
    m
}

async fn list(
    st: &AdminState,
    scope: Scope,
    query: &[(String, String)],
) -> Result<HttpResponse, AdminError> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (size, offset) = crud::paging(query)?;
    let filter = TokenFilter {
        credential_id: if let Scope::Credential(c) = scope {
            Some(c)
        } else {
            None
        },
        service_id: if let Scope::Service(s) = scope {
            Some(s)
        } else {
            None
        },
        offset,
        size,
    };
    let (tokens, next) = st
        .tokens
        .list_tokens(&filter, now())
        .await
        .map_err(|e| match e {
            portcullis_stores::StoreError::InvalidOffset => {
                AdminError::InvalidOffset(get("offset").unwrap_or_default())
            }
            other => other.into(),
        })?;
    let data: Vec<Value> = tokens.iter().map(|t| render(t, None, None)).collect();
    let mut body = json!({ "data": data, "next": null });
    if let Some(n) = next {
        let token = URL_SAFE_NO_PAD.encode(n.as_bytes());
        body["offset"] = json!(token);
        body["next"] = json!(format!("/oauth2_tokens?offset={token}"));
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn write(
    st: &AdminState,
    scope: Scope,
    key: Option<&str>,
    mut input: Map<String, Value>,
    coerce: Coerce,
    merge: bool,
) -> Result<HttpResponse, AdminError> {
    match scope {
        Scope::Credential(c) => {
            input.insert("credential".into(), json!({ "id": c }));
        }
        Scope::Service(s) => {
            input.insert("service".into(), json!({ "id": s }));
        }
        Scope::All => {}
    }
    let existing = match key {
        Some(k) => find(st, k).await?.filter(|t| in_scope(t, scope)),
        None => None,
    };
    if merge && existing.is_none() {
        return Err(AdminError::NotFound);
    }
    if let (Some(k), None) = (key, &existing) {
        match Uuid::parse_str(k) {
            Ok(id) => {
                input.insert("id".into(), json!(id));
            }
            Err(_) => {
                input.insert("access_token".into(), json!(k));
            }
        }
    }
    let input = match (&existing, merge) {
        (Some(t), true) => {
            let mut base = as_input(t);
            base.extend(input);
            base
        }
        _ => input,
    };
    let doc = schema::validate(&TOKEN_SCHEMA, &input, coerce).map_err(AdminError::Schema)?;
    let credential =
        crud::fk(&doc, "credential").ok_or_else(|| AdminError::Internal("credential".into()))?;
    if st
        .store
        .get(&defs::OAUTH2_CREDENTIALS, credential)
        .await?
        .is_none()
    {
        return Err(AdminError::ForeignMissing {
            field: "credential",
            references: "oauth2_credentials",
            id: credential,
        });
    }
    let service = crud::fk(&doc, "service");
    if let Some(s) = service {
        if st.store.get(&defs::SERVICES, s).await?.is_none() {
            return Err(AdminError::ForeignMissing {
                field: "service",
                references: "services",
                id: s,
            });
        }
    }
    let access = doc
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let refresh = doc
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let generated_access = access.clone().unwrap_or_else(crypto::random_token);
    let created_at = existing.as_ref().map_or_else(now, |t| t.created_at);
    let ttl = doc.get("ttl").and_then(Value::as_i64);
    let record = TokenRecord {
        id: existing
            .as_ref()
            .map(|t| t.id)
            .or_else(|| {
                doc.get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok())
            })
            .unwrap_or_else(Uuid::new_v4),
        credential_id: credential,
        service_id: service,
        access_token_hash: match (&access, &existing) {
            (None, Some(t)) if merge => t.access_token_hash,
            _ => crypto::token_hash(&generated_access),
        },
        refresh_token_hash: match (&refresh, &existing) {
            (None, Some(t)) if merge => t.refresh_token_hash,
            (r, _) => r.as_deref().map(crypto::token_hash),
        },
        token_type: "bearer".into(),
        expires_in: doc
            .get("expires_in")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        authenticated_userid: doc
            .get("authenticated_userid")
            .and_then(Value::as_str)
            .map(str::to_string),
        scope: doc.get("scope").and_then(Value::as_str).map(str::to_string),
        created_at,
        expires_at: match ttl {
            Some(0) => None,
            Some(t) => Some(now() + t),
            None => existing.as_ref().and_then(|t| t.expires_at),
        },
        family_id: existing.as_ref().map_or_else(Uuid::new_v4, |t| t.family_id),
        code_id: existing.as_ref().and_then(|t| t.code_id),
    };
    let shown_access = if existing.is_some() && merge {
        access.as_deref()
    } else {
        Some(generated_access.as_str())
    };
    let body = render(&record, shown_access, refresh.as_deref());
    match existing {
        Some(_) => st.tokens.update_token(record).await?,
        None => st.tokens.insert_token(record).await.map_err(|e| match e {
            portcullis_stores::StoreError::UniqueViolation { .. } => {
                let mut f = FieldErrors::new();
                f.insert("access_token".into(), json!("already exists"));
                AdminError::Unique(f)
            }
            other => other.into(),
        })?,
    }
    let status = if key.is_some() {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::CREATED
    };
    Ok(HttpResponse::build(status).json(body))
}

async fn delete(st: &AdminState, scope: Scope, key: &str) -> Result<HttpResponse, AdminError> {
    match find(st, key).await?.filter(|t| in_scope(t, scope)) {
        Some(t) => {
            st.tokens.delete_token(t.id).await?;
        }
        None if !matches!(scope, Scope::All) => return Err(AdminError::NotFound),
        None => {}
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn foreign(
    st: &AdminState,
    scope: Scope,
    key: &str,
    service: bool,
) -> Result<HttpResponse, AdminError> {
    let t = read(st, scope, key).await?;
    let doc = if service {
        let id = t.service_id.ok_or(AdminError::NotFound)?;
        st.store.get(&defs::SERVICES, id).await?
    } else {
        st.store
            .get(&defs::OAUTH2_CREDENTIALS, t.credential_id)
            .await?
    };
    doc.map(|d| HttpResponse::Ok().json(Value::Object(d)))
        .ok_or(AdminError::NotFound)
}
