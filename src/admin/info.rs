//! Node information, health and schemas: `/`, `/status`, `/plugins/enabled`, `/schemas/…`.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::AdminState;
use crate::error::AdminError;
use crate::schema::{Field, FieldType, Schema};

/// This build's version (plugins' versions, `portcullis_version` in `GET /`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Kong release whose admin API this gateway speaks, reported as `version` by `GET /`:
/// decK and go-kong read it to pick their formats (go-kong's `ParseSemanticVersion` must parse
/// it, and decK refuses a `_format_version: "3.0"` file for a Kong below 3.0).
pub const KONG_VERSION: &str = "3.10.0";

/// `GET /`.
///
/// # Errors
/// Never.
pub fn node(st: &AdminState) -> Result<HttpResponse, AdminError> {
    let mut available = Map::new();
    for name in st.plugins.names() {
        if let Some(p) = st.plugins.get(name) {
            available.insert(
                name.into(),
                json!({ "version": VERSION, "priority": p.priority() }),
            );
        }
    }
    let configuration: Value = toml::from_str::<toml::Value>(&st.settings.to_masked_toml())
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(json!({
        "version": KONG_VERSION,
        "portcullis_version": VERSION,
        "tagline": "Welcome to portcullis",
        "node_id": st.node_id,
        "hostname": std::env::var("HOSTNAME").unwrap_or_default(),
        "plugins": { "available_on_server": available, "enabled_in_cluster": st.plugins.names() },
        "configuration": configuration,
    })))
}

/// `GET /status`: liveness plus whether the store answers.
///
/// # Errors
/// Never; an unreachable store is reported in the body.
pub async fn status(st: &AdminState) -> Result<HttpResponse, AdminError> {
    let reachable = st.probe.datastore_reachable().await;
    let snapshot = st.snapshot.load();
    let mut body = json!({
        "database": { "reachable": reachable },
        "server": { "uptime_seconds": st.started.elapsed().as_secs() },
        "configuration": { "version": snapshot.version, "routes": snapshot.entries.len() },
    });
    // DB-less: Kong's digest of the running declarative configuration (zeros before the first).
    if let Some(dbless) = &st.dbless {
        let hash = dbless.hash.load();
        body["configuration_hash"] = if hash.is_empty() {
            json!("0".repeat(32))
        } else {
            json!(hash.as_str())
        };
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /plugins/enabled`.
///
/// # Errors
/// Never.
pub fn enabled(st: &AdminState) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(json!({ "enabled_plugins": st.plugins.names() })))
}

fn type_name(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::String | FieldType::Uuid => "string",
        FieldType::Integer => "integer",
        FieldType::Number => "number",
        FieldType::Boolean => "boolean",
        FieldType::Array(_) => "array",
        FieldType::Set(_) => "set",
        FieldType::StringListMap | FieldType::StringMap => "map",
        FieldType::Record(_) | FieldType::AnyRecord => "record",
        FieldType::Foreign(_) => "foreign",
    }
}

fn describe(field: &Field) -> Value {
    let mut d = Map::new();
    d.insert("type".into(), json!(type_name(&field.ty)));
    if field.required {
        d.insert("required".into(), json!(true));
    }
    if let Some(def) = field.default {
        d.insert("default".into(), def());
    }
    if !field.one_of.is_empty() {
        d.insert("one_of".into(), json!(field.one_of));
    }
    if let Some((lo, hi)) = field.between {
        d.insert("between".into(), json!([lo, hi]));
    }
    match &field.ty {
        FieldType::Record(inner) => {
            // Kong's entities make every record required (`make_records_required`), so that
            // they answer with the record's whole structure; decK fills a record's defaults only
            // when it is required.
            d.insert("required".into(), json!(true));
            d.insert("fields".into(), fields(inner));
        }
        FieldType::Foreign(reference) => {
            d.insert("reference".into(), json!(reference));
        }
        FieldType::Array(el) | FieldType::Set(el) => {
            d.insert("elements".into(), json!({ "type": type_name(el) }));
        }
        _ => {}
    }
    json!({ field.name: d })
}

fn fields(schema: &Schema) -> Value {
    Value::Array(schema.fields.iter().map(describe).collect())
}

/// `GET /schemas/plugins/{name}`: the plugin entity's fields, `config` with the plugin's own.
/// Fields that are never stored (write-only) and Kong's shorthands are listed as the record's
/// `shorthand_fields`, as Kong lists them.
///
/// # Errors
/// 404 for an unknown plugin.
pub fn plugin_schema(st: &AdminState, name: &str) -> Result<HttpResponse, AdminError> {
    let plugin = st.plugins.get(name).ok_or(AdminError::NotFound)?;
    let shorthands = plugin.shorthands();
    let schema = plugin.schema();
    let mut stored = Vec::new();
    let mut shorthand_fields = Vec::new();
    for field in &schema.fields {
        let replaced = shorthands.iter().find(|(n, _)| *n == field.name);
        if replaced.is_none() && !field.write_only {
            stored.push(describe(field));
            continue;
        }
        let mut d = Map::new();
        d.insert("type".into(), json!(type_name(&field.ty)));
        if let Some((_, path)) = replaced {
            d.insert(
                "deprecation".into(),
                json!({ "replaced_with": [{ "path": path }] }),
            );
        }
        shorthand_fields.push(json!({ field.name: d }));
    }
    let mut config = Map::new();
    config.insert("type".into(), json!("record"));
    config.insert("required".into(), json!(true));
    config.insert("fields".into(), Value::Array(stored));
    if !shorthand_fields.is_empty() {
        config.insert("shorthand_fields".into(), Value::Array(shorthand_fields));
    }
    let mut consumer = json!({ "type": "foreign", "reference": "consumers" });
    if !plugin.allows_consumer_scope() {
        // Kong's `typedefs.no_consumer`.
        consumer["eq"] = Value::Null;
    }
    Ok(HttpResponse::Ok().json(json!({
        "fields": [
            { "consumer": consumer },
            { "protocols": { "type": "set", "default": ["grpc", "grpcs", "http", "https"] } },
            { "config": config },
        ]
    })))
}

/// `GET /schemas/{entity}`.
///
/// # Errors
/// 404 for an unknown entity.
pub fn entity_schema(entity: &str) -> Result<HttpResponse, AdminError> {
    let schema: &Schema = match entity {
        "services" => &crate::entities::SERVICE_SCHEMA,
        "routes" => &crate::entities::ROUTE_SCHEMA,
        "consumers" => &crate::entities::CONSUMER_SCHEMA,
        "plugins" => &crate::entities::PLUGIN_SCHEMA,
        "oauth2_credentials" | "oauth2" => &crate::plugins::oauth2::credentials::CREDENTIAL_SCHEMA,
        "keyauth_credentials" | "key-auths" => {
            &crate::plugins::key_auth::credentials::CREDENTIAL_SCHEMA
        }
        "acls" => &crate::plugins::acl::acls::ACL_SCHEMA,
        "certificates" => &crate::entities::certificates::CERTIFICATE_SCHEMA,
        "snis" => &crate::entities::certificates::SNI_SCHEMA,
        "ca_certificates" => &crate::entities::certificates::CA_CERTIFICATE_SCHEMA,
        // decK's defaulter fills a file's upstreams and targets from these two.
        "upstreams" => &crate::entities::upstreams::UPSTREAM_SCHEMA,
        "targets" => &crate::entities::upstreams::TARGET_SCHEMA,
        _ => return Err(AdminError::NotFound),
    };
    Ok(HttpResponse::Ok().json(json!({ "fields": fields(schema) })))
}
