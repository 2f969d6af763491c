//! Kong's `oauth2` plugin: the gateway is the authorization server of every route it protects
//! (`…/oauth2/authorize`, `…/oauth2/token`) and checks bearer tokens on every other path.
//!
//! Behaviour spec: `../shared/reference/kong-oauth2.md`. Where we deliberately differ from Kong the
//! item says so (digests at rest, atomic single-use codes, revocation, introspection).

pub mod access;
pub mod admin;
pub mod authorize;
pub mod credentials;
pub mod extras;
pub mod params;
pub mod reply;
pub mod runtime;
pub mod token;

use std::sync::{Arc, LazyLock};

use portcullis_stores::TokenStore;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Plugin, PluginRuntime};
use crate::entities::PluginInstance;
use crate::schema::{Field, FieldErrors, FieldType, Schema};

pub use credentials::OAuthCredential;

/// Handles the plugin needs beyond the request: where tokens and codes live.
#[derive(Clone)]
pub struct OAuthDeps {
    /// Token and code store.
    pub tokens: Arc<dyn TokenStore>,
}

/// The plugin kind.
pub struct OAuth2Plugin {
    deps: OAuthDeps,
}

impl OAuth2Plugin {
    /// The plugin wired to its stores.
    pub fn new(deps: OAuthDeps) -> Self {
        Self { deps }
    }
}

/// Largest `refresh_token_ttl` (Kong's DAO_MAX_TTL).
pub const MAX_TTL: i64 = 100_000_000;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "oauth2",
    fields: vec![
        Field::new("scopes", FieldType::Array(Box::new(FieldType::String))),
        Field::new("mandatory_scope", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("provision_key", FieldType::String),
        Field::new("token_expiration", FieldType::Number)
            .required()
            .default(|| json!(7200)),
        Field::new("enable_authorization_code", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("enable_implicit_grant", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("enable_client_credentials", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("enable_password_grant", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("hide_credentials", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("accept_http_if_already_terminated", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("anonymous", FieldType::String),
        Field::new("global_credentials", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("auth_header_name", FieldType::String).default(|| json!("authorization")),
        Field::new("refresh_token_ttl", FieldType::Number)
            .required()
            .default(|| json!(1_209_600))
            .between(0, MAX_TTL),
        Field::new("reuse_refresh_token", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("pkce", FieldType::String)
            .default(|| json!("lax"))
            .one_of(&["none", "lax", "strict"]),
        Field::new("realm", FieldType::String),
        // Beyond Kong: seconds during which reusing a just-rotated refresh token is refused without
        // revoking its family (two concurrent refreshes from one client; ory/hydra#1831).
        Field::new("refresh_token_reuse_grace", FieldType::Integer)
            .required()
            .default(|| json!(10))
            .between(0, 3600),
    ],
    entity_checks: vec![],
});

/// Typed `config` of one instance.
#[derive(Debug, Clone, Deserialize)]
pub struct OAuthConfig {
    /// Allowed scopes; `None` = scopes ignored.
    pub scopes: Option<Vec<String>>,
    /// A scope must be requested.
    pub mandatory_scope: bool,
    /// Shared secret with the operator's login app.
    pub provision_key: String,
    /// Access-token lifetime in seconds; 0 = never expires.
    pub token_expiration: f64,
    /// `response_type=code` allowed.
    pub enable_authorization_code: bool,
    /// `response_type=token` allowed.
    pub enable_implicit_grant: bool,
    /// `grant_type=client_credentials` allowed.
    pub enable_client_credentials: bool,
    /// `grant_type=password` allowed.
    pub enable_password_grant: bool,
    /// Strip the token before proxying.
    pub hide_credentials: bool,
    /// Accept plain http from trusted proxies that terminated TLS.
    pub accept_http_if_already_terminated: bool,
    /// Consumer id or username to fall back to.
    pub anonymous: Option<String>,
    /// Tokens not bound to a service.
    pub global_credentials: bool,
    /// Header carrying the bearer token / Basic credentials.
    pub auth_header_name: Option<String>,
    /// Row lifetime of a token and its refresh token, seconds; 0 = forever.
    pub refresh_token_ttl: f64,
    /// Keep the refresh token across refreshes.
    pub reuse_refresh_token: bool,
    /// `none`, `lax` or `strict`.
    pub pkce: Option<String>,
    /// `realm` in `WWW-Authenticate`.
    pub realm: Option<String>,
    /// Grace window for concurrent refreshes, seconds.
    pub refresh_token_reuse_grace: i64,
}

impl Plugin for OAuth2Plugin {
    fn name(&self) -> &'static str {
        "oauth2"
    }
    fn priority(&self) -> i32 {
        1400
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn allows_consumer_scope(&self) -> bool {
        false
    }
    fn complete_config(&self, config: &mut Map<String, Value>) {
        if config.get("provision_key").is_none_or(Value::is_null) {
            config.insert(
                "provision_key".into(),
                Value::String(crate::crypto::random_token()),
            );
        }
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        let on = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mut errors = FieldErrors::new();
        if ![
            "enable_authorization_code",
            "enable_implicit_grant",
            "enable_client_credentials",
            "enable_password_grant",
        ]
        .iter()
        .any(|k| on(k))
        {
            errors.insert(
                "@entity".into(),
                json!(["at least one of these fields must be true: enable_authorization_code, enable_implicit_grant, enable_client_credentials, enable_password_grant"]),
            );
        }
        if on("mandatory_scope") && config.get("scopes").is_none_or(Value::is_null) {
            errors.insert("scopes".into(), json!("required field missing"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let config: OAuthConfig =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let auth_headers = header_variants(
            config
                .auth_header_name
                .as_deref()
                .unwrap_or("authorization"),
        );
        let auth_headers_in = auth_headers
            .iter()
            .filter_map(|n| actix_web::http::header::HeaderName::from_bytes(n.as_ref()).ok())
            .collect();
        Ok(Arc::new(OAuthRuntime {
            plugin_id: instance.id,
            config,
            deps: self.deps.clone(),
            auth_headers,
            auth_headers_in,
        }))
    }
}

/// One compiled `oauth2` instance.
pub struct OAuthRuntime {
    /// The plugin instance id (codes remember which instance issued them).
    pub plugin_id: Uuid,
    /// Typed config.
    pub config: OAuthConfig,
    /// Stores.
    pub deps: OAuthDeps,
    /// `auth_header_name` and its `-`/`_` variants, lower case, deduplicated.
    pub auth_headers: Vec<http::HeaderName>,
    /// The same names as the client request's header map spells them (actix's `http` 0.2), so
    /// the per-request lookup does not parse a name.
    pub auth_headers_in: Vec<actix_web::http::header::HeaderName>,
}

/// The header names `auth_header_name` stands for (Kong treats `-` and `_` alike).
fn header_variants(name: &str) -> Vec<http::HeaderName> {
    let name = name.to_ascii_lowercase();
    let mut names = Vec::new();
    for n in [name.clone(), name.replace('_', "-"), name.replace('-', "_")] {
        if let Ok(h) = http::HeaderName::from_bytes(n.as_bytes()) {
            if !names.contains(&h) {
                names.push(h);
            }
        }
    }
    names
}
