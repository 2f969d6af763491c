//! Kong's `key-auth` plugin: a consumer is identified by an API key sent in a header, the query
//! string or the body. Behaviour, config and error bodies: Kong 3.x `kong/plugins/key-auth` and
//! its specs (`spec/03-plugins/09-key-auth`). Keys are compared as SHA-256 digests (see
//! [`credentials`]), looked up in the router snapshot: no store round trip per request.

pub mod credentials;
pub mod lookup;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use portcullis_stores::TokenHash;
use serde::Deserialize;
use serde_json::json;

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::entities::{Consumer, PluginInstance};
use crate::plugin_api::identity;
use crate::plugin_api::{json_answer, Answer, HeaderName, HeaderValue, Method, StatusCode};
use lookup::Found;

/// Kong's handler priority: after `cors` (2000), before `oauth2` (1400) and `acl` (950).
const PRIORITY: i32 = super::priority("key-auth");

static SCHEMA: LazyLock<crate::schema::Schema> = LazyLock::new(|| {
    use crate::schema::{Field, FieldType, Schema};
    let flag = |name, default: bool| {
        Field::new(name, FieldType::Boolean)
            .required()
            .default(if default {
                || json!(true)
            } else {
                || json!(false)
            })
    };
    Schema {
        name: "key-auth",
        fields: vec![
            Field::new("key_names", FieldType::Array(Box::new(FieldType::String)))
                .required()
                .default(|| json!(["apikey"]))
                .check(crate::schema::check_header_name)
                .pattern("[A-Za-z0-9_-]{1,32}"),
            flag("hide_credentials", false),
            Field::new("anonymous", FieldType::String),
            flag("key_in_header", true),
            flag("key_in_query", true),
            flag("key_in_body", false),
            flag("run_on_preflight", true),
            Field::new("realm", FieldType::String),
        ],
        entity_checks: vec![],
    }
});

#[derive(Deserialize)]
struct Config {
    key_names: Vec<String>,
    hide_credentials: bool,
    anonymous: Option<String>,
    key_in_header: bool,
    key_in_query: bool,
    key_in_body: bool,
    run_on_preflight: bool,
    realm: Option<String>,
}

/// The plugin kind.
pub struct KeyAuth;

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static crate::schema::Schema {
        &SCHEMA
    }
    fn allows_consumer_scope(&self) -> bool {
        false
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let names = cfg
            .key_names
            .iter()
            .map(|n| KeyName::new(n))
            .collect::<Result<Vec<_>, _>>()?;
        let challenge = match &cfg.realm {
            Some(realm) => format!("Key realm=\"{realm}\""),
            None => "Key".to_string(),
        };
        Ok(Arc::new(Runtime {
            names,
            hide: cfg.hide_credentials,
            anonymous: cfg.anonymous,
            in_header: cfg.key_in_header,
            in_query: cfg.key_in_query,
            in_body: cfg.key_in_body,
            on_preflight: cfg.run_on_preflight,
            challenge: HeaderValue::from_str(&challenge).map_err(|e| e.to_string())?,
        }))
    }
}

/// One of `key_names`, prepared for every source.
struct KeyName {
    /// As configured (query and body field name).
    name: Arc<str>,
    /// Header spellings: as configured, and with `-`/`_` swapped (Kong treats them alike).
    headers: Vec<HeaderName>,
}

impl KeyName {
    fn new(name: &str) -> Result<Self, String> {
        let lower = name.to_ascii_lowercase();
        let mut headers: Vec<HeaderName> = Vec::new();
        for spelling in [
            lower.clone(),
            lower.replace('_', "-"),
            lower.replace('-', "_"),
        ] {
            let h = HeaderName::from_bytes(spelling.as_bytes()).map_err(|e| e.to_string())?;
            if !headers.contains(&h) {
                headers.push(h);
            }
        }
        Ok(Self {
            name: Arc::from(name),
            headers,
        })
    }
}

/// One compiled instance.
struct Runtime {
    names: Vec<KeyName>,
    hide: bool,
    anonymous: Option<String>,
    in_header: bool,
    in_query: bool,
    in_body: bool,
    on_preflight: bool,
    /// `WWW-Authenticate` of every 401: `Key`, or `Key realm="…"` when a realm is set.
    challenge: HeaderValue,
}

/// Why a request did not authenticate (Kong's messages).
#[derive(Debug, Clone, Copy)]
enum Denied {
    Missing,
    Duplicate,
    Invalid,
}

impl Denied {
    const fn message(self) -> &'static str {
        match self {
            Self::Missing => "No API key found in request",
            Self::Duplicate => "Duplicate API key found",
            Self::Invalid => "Unauthorized",
        }
    }
}

impl Runtime {
    fn content_type(ctx: &RequestCtx) -> &str {
        ctx.req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The key's digest and the index of the name it was found under, as Kong searches.
    fn find_key(&self, ctx: &RequestCtx) -> Result<(TokenHash, usize), Denied> {
        let body_fields = match (&ctx.body, self.in_body) {
            (Some(body), true) => Some(lookup::body_fields(Self::content_type(ctx), body)),
            _ => None,
        };
        for (i, name) in self.names.iter().enumerate() {
            let mut found = Found::Absent;
            if self.in_header {
                found = lookup::in_headers(ctx.req.headers(), &name.headers);
            }
            if found.is_absent() && self.in_query {
                found = lookup::in_query(ctx.req.query_string(), &name.name);
            }
            if found.is_absent() {
                if let Some(fields) = &body_fields {
                    found = lookup::in_body(fields, &name.name);
                }
            }
            match found {
                Found::One(key) if key.is_empty() => return Err(Denied::Missing),
                Found::One(key) => return Ok((crate::crypto::token_hash(&key), i)),
                Found::Many => return Err(Denied::Duplicate),
                Found::Absent | Found::NotString => {}
            }
        }
        Err(Denied::Missing)
    }

    /// Removes the key under `name` from every place Kong removes it (header, query and, when
    /// the body is read, the body), whichever it came from.
    fn hide_key(&self, ctx: &mut RequestCtx, index: usize) {
        let Some(name) = self.names.get(index) else {
            return;
        };
        ctx.clear_upstream_picked(|n| name.headers.contains(n));
        ctx.strip_query_arg(&name.name);
        if self.in_body {
            if let Some(body) = &ctx.body {
                if let Some(without) =
                    lookup::body_without(Self::content_type(ctx), body, &name.name)
                {
                    ctx.replace_body = Some(without);
                }
            }
        }
    }

    fn authenticate(&self, ctx: &mut RequestCtx) -> Result<(), Denied> {
        let (digest, index) = self.find_key(ctx)?;
        if self.hide {
            self.hide_key(ctx, index);
        }
        let snapshot = ctx.snapshot.clone();
        let credential = snapshot
            .keyauth_by_hash
            .get(&digest)
            // The map found it by digest; the comparison that decides is constant-time.
            .filter(|c| crate::crypto::ct_eq(&c.key_hash.0, &digest.0))
            .ok_or(Denied::Invalid)?;
        let consumer = snapshot
            .consumers
            .get(&credential.consumer_id)
            .ok_or(Denied::Invalid)?;
        set_consumer(ctx, consumer, Some(credential.id));
        ctx.consumer = Some(consumer.clone());
        ctx.credential = Some(credential.id);
        ctx.authenticated = true;
        Ok(())
    }

    fn denial(&self, why: Denied) -> Answer {
        let mut answer = json_answer(
            StatusCode::UNAUTHORIZED,
            &json!({ "message": why.message() }),
        );
        answer.headers_mut().insert(
            HeaderName::from_static("www-authenticate"),
            self.challenge.clone(),
        );
        answer
    }
}

/// Kong's `set_consumer`: the consumer's headers, the credential's id, and whether the consumer
/// is the anonymous one.
fn set_consumer(ctx: &mut RequestCtx, consumer: &Consumer, credential: Option<uuid::Uuid>) {
    match credential {
        Some(id) => {
            ctx.set_consumer_headers(consumer, |n| n == identity::ANONYMOUS_CONSUMER);
            let mut buf = uuid::Uuid::encode_buffer();
            ctx.set_upstream(
                &identity::CREDENTIAL_IDENTIFIER,
                id.hyphenated().encode_lower(&mut buf),
            );
        }
        None => {
            ctx.set_consumer_headers(consumer, |n| n == identity::CREDENTIAL_IDENTIFIER);
            ctx.set_upstream(&identity::ANONYMOUS_CONSUMER, "true");
        }
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        "key-auth"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn needs_body(&self, _ctx: &RequestCtx) -> bool {
        self.in_body
    }
    /// Never waits: answered without a future.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        Some(self.check(ctx))
    }
}

impl Runtime {
    /// The access phase (it never waits).
    fn check(&self, ctx: &mut RequestCtx) -> Flow {
        if !self.on_preflight && ctx.req.method() == Method::OPTIONS {
            return Flow::Continue;
        }
        let Some(anonymous) = &self.anonymous else {
            return match self.authenticate(ctx) {
                Ok(()) => Flow::Continue,
                Err(why) => Flow::Respond(self.denial(why)),
            };
        };
        // Logical OR: an earlier auth plugin already authenticated the request.
        if ctx.authenticated {
            return Flow::Continue;
        }
        if self.authenticate(ctx).is_ok() {
            return Flow::Continue;
        }
        let Some(consumer) = ctx.snapshot.consumer_by_id_or_name(anonymous).cloned() else {
            return Flow::Respond(json_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({
                    "message": format!("anonymous consumer {anonymous} is configured but doesn't exist")
                }),
            ));
        };
        set_consumer(ctx, &consumer, None);
        ctx.consumer = Some(consumer);
        Flow::Continue
    }
}
