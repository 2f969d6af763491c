//! Kong's generated endpoints for every entity: list, create, read, upsert (PUT), merge (PATCH),
//! delete, nested under a parent and through a foreign key. Documents are read and validated
//! here; the config registry makes each write, checking the row is still the one read.

use std::sync::Arc;
use std::time::Duration;

use actix::{Handler, Message};
use actix_web::HttpResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_stores::{ConfigStore, Document, ListFilter};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::AdminState;
use crate::actors::registry::{ConfigRegistry, Delete, Insert, Update};
use crate::clock::{now, now_ms};
use crate::entities::upstreams::{
    check_upstream_name, expand_upstream_shorthands, format_target, validate_upstream,
};
use crate::entities::{expand_service_url, EndpointLookup, EntityKind};
use crate::error::{AdminError, RegistryError};
use crate::plugins::key_auth::credentials as keyauth;
use crate::plugins::oauth2::credentials;
use crate::plugins::PluginRegistry;
use crate::schema::{self, Coerce, FieldErrors, FieldType};

/// How long an admin write may wait for the registry before answering 503.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// How many times a write is re-read and tried when its row changed between the read and the
/// registry's check. Each round one of the writers racing for a row wins, so this many writers to
/// one row at once all succeed.
const WRITE_TRIES: u32 = 32;

/// Finds a document by UUID or by the entity's endpoint key (outside any parent).
///
/// # Errors
/// Store failures.
pub async fn resolve(
    store: &dyn ConfigStore,
    kind: &EntityKind,
    key: &str,
) -> Result<Option<Document>, AdminError> {
    resolve_under(store, kind, key, None).await
}

/// Finds a document by UUID or by the entity's endpoint key, as seen from `parent` (the parent
/// row of a nested path): a key that names rows only under a parent (`acls` groups) is looked up
/// among that parent's rows.
///
/// # Errors
/// Store failures.
pub async fn resolve_under(
    store: &dyn ConfigStore,
    kind: &EntityKind,
    key: &str,
    parent: Option<(&'static str, Uuid)>,
) -> Result<Option<Document>, AdminError> {
    if let Ok(id) = Uuid::parse_str(key) {
        return Ok(store.get(kind.def, id).await?);
    }
    match kind.endpoint_lookup {
        EndpointLookup::Plain => Ok(store.get_by(kind.def, kind.endpoint_key, key).await?),
        EndpointLookup::Digest { field, digest } => {
            Ok(store.get_by(kind.def, field, &digest(key)).await?)
        }
        EndpointLookup::UnderParent => match parent {
            Some(foreign) => find_among_children(store, kind, key, foreign).await,
            None => Ok(None),
        },
    }
}

/// The row of `parent` whose endpoint key is `key` (a consumer has a handful of groups: the
/// pages are read until it is found).
async fn find_among_children(
    store: &dyn ConfigStore,
    kind: &EntityKind,
    key: &str,
    parent: (&'static str, Uuid),
) -> Result<Option<Document>, AdminError> {
    let mut offset = None;
    loop {
        let filter = ListFilter {
            foreign: Some(parent),
            tags: None,
            offset,
            size: 1000,
        };
        let page = store.list(kind.def, &filter).await?;
        if let Some(found) = page
            .data
            .into_iter()
            .find(|d| d.get(kind.endpoint_key).and_then(Value::as_str) == Some(key))
        {
            return Ok(Some(found));
        }
        match page.next_offset {
            Some(next) => offset = Some(next),
            None => return Ok(None),
        }
    }
}

/// Applies an entity's input shorthands (Kong runs them on the request's fields, before any
/// merge with a stored row): the service `url`, the upstream `algorithm`/`hash_on` pair.
///
/// # Errors
/// The field error of a shorthand that does not parse.
pub fn expand_shorthands(
    kind: &EntityKind,
    input: &mut Map<String, Value>,
) -> Result<(), AdminError> {
    match kind.def.name {
        "services" => expand_service_url(input).map_err(AdminError::Schema),
        "upstreams" => {
            expand_upstream_shorthands(input);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Reads `doc[field]["id"]`.
pub fn fk(doc: &Document, field: &str) -> Option<Uuid> {
    portcullis_stores::memory::foreign_id(doc, field)
}

/// A validated document ready to store, and a secret the write's answer shows once (a `key-auth`
/// key, stored only as its digest).
pub struct Built {
    /// The document to store.
    pub doc: Document,
    /// `(field, value)` added to the answer of this write only.
    pub shown_once: Option<(&'static str, String)>,
}

/// The answer to a write: the stored row as [`render`] shows it, plus the secret it showed once.
fn render_written(
    plugins: &PluginRegistry,
    kind: &EntityKind,
    stored: Document,
    shown_once: Option<(&'static str, String)>,
) -> Value {
    let mut out = render(plugins, kind, stored);
    if let (Some((field, value)), Some(o)) = (shown_once, out.as_object_mut()) {
        o.insert(field.into(), Value::String(value));
    }
    out
}

/// A unique violation on a stored digest is reported on the field the client wrote (`key`), with
/// the value the client sent, as Kong reports it.
fn unique_on_shown(e: AdminError, kind: &EntityKind, shown: Option<&(&str, String)>) -> AdminError {
    match (e, kind.endpoint_lookup, shown) {
        (AdminError::Unique(fields), EndpointLookup::Digest { field, .. }, Some((name, value)))
            if fields.contains_key(field) =>
        {
            let mut f = Map::new();
            f.insert((*name).into(), Value::String(value.clone()));
            AdminError::Unique(f)
        }
        (e, _, _) => e,
    }
}

/// The document as the API returns it (write-only fields removed, plugin secrets masked).
pub fn render(plugins: &PluginRegistry, kind: &EntityKind, mut doc: Document) -> Value {
    schema::strip_write_only(kind.schema, &mut doc);
    if kind.def.name == "plugins" {
        let plugin = doc
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| plugins.get(n));
        if let (Some(plugin), Some(Value::Object(config))) = (plugin, doc.get_mut("config")) {
            plugin.mask_config(config);
        }
    }
    Value::Object(doc)
}

fn nest_errors(field: &str, inner: FieldErrors) -> FieldErrors {
    let mut e = FieldErrors::new();
    e.insert(field.into(), Value::Object(inner));
    e
}

/// Validates input into a storable document: schema, plugin config, generated values, hashing.
///
/// # Errors
/// [`AdminError::Schema`] with every problem found.
pub fn build_doc(
    kind: &EntityKind,
    plugins: &PluginRegistry,
    mut input: Map<String, Value>,
    coerce: Coerce,
    existing: Option<&Document>,
) -> Result<Built, AdminError> {
    if kind.def.name == "targets" {
        format_target(&mut input).map_err(AdminError::Schema)?;
    }
    let mut doc = if kind.def.name == "upstreams" {
        validate_upstream(&input, coerce)
    } else {
        schema::validate(kind.schema, &input, coerce)
    }
    .map_err(AdminError::Schema)?;
    if kind.def.name == "plugins" {
        validate_plugin(plugins, &mut doc, coerce)?;
    }
    match kind.def.name {
        // Kong's transient field: the names are `snis` rows, written by the certificates module.
        "certificates" => drop(doc.remove("snis")),
        "ca_certificates" => crate::entities::certificates::set_cert_digest(&mut doc),
        _ => {}
    }
    if kind.def.name == "oauth2_credentials" {
        credentials::prepare_for_storage(&mut doc).map_err(AdminError::Internal)?;
    }
    let shown_once = if kind.def.name == "keyauth_credentials" {
        keyauth::prepare_for_storage(&mut doc).map(|key| ("key", key))
    } else {
        None
    };
    let id = existing
        .and_then(|e| e.get("id").cloned())
        .or_else(|| doc.get("id").filter(|v| !v.is_null()).cloned())
        .unwrap_or_else(|| json!(Uuid::new_v4().to_string()));
    doc.insert("id".into(), id);
    // Kong's `auto_timestamp_ms` fields are numbers with milliseconds, the others whole seconds.
    let millis = matches!(
        kind.schema.field("created_at").map(|f| &f.ty),
        Some(FieldType::Number)
    );
    let now = if millis {
        json!(now_ms())
    } else {
        json!(now())
    };
    let created = existing
        .and_then(|e| e.get("created_at").cloned())
        .unwrap_or_else(|| now.clone());
    doc.insert("created_at".into(), created);
    if kind.schema.field("updated_at").is_some() {
        doc.insert("updated_at".into(), json!(now));
    }
    Ok(Built { doc, shown_once })
}

fn validate_plugin(
    plugins: &PluginRegistry,
    doc: &mut Document,
    coerce: Coerce,
) -> Result<(), AdminError> {
    let name = doc
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(plugin) = plugins.get(&name) else {
        let mut e = FieldErrors::new();
        e.insert(
            "name".into(),
            json!(format!(
                "plugin '{name}' not enabled; add it to the 'plugins' configuration property"
            )),
        );
        return Err(AdminError::Schema(e));
    };
    if !plugin.allows_consumer_scope() && !doc.get("consumer").is_none_or(Value::is_null) {
        let mut e = FieldErrors::new();
        e.insert("consumer".into(), json!("value must be null"));
        return Err(AdminError::Schema(e));
    }
    let raw = match doc.get("config") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let mut config = schema::validate(plugin.schema(), &raw, coerce)
        .map_err(|e| AdminError::Schema(nest_errors("config", e)))?;
    plugin.complete_config(&mut config);
    let entity_errors = plugin.check_entity(&config);
    if !entity_errors.is_empty() {
        let mut e = FieldErrors::new();
        e.insert("@entity".into(), json!(entity_errors));
        return Err(AdminError::Schema(e));
    }
    plugin
        .check_config(&config)
        .map_err(|e| AdminError::Schema(nest_errors("config", e)))?;
    plugin.check_whole_config(&config).map_err(|message| {
        let mut e = FieldErrors::new();
        e.insert("config".into(), Value::String(message));
        AdminError::Schema(e)
    })?;
    doc.insert("config".into(), Value::Object(config));
    Ok(())
}

/// The admin entity stored in a table.
pub fn kind_by_table(table: &str) -> Option<&'static EntityKind> {
    Some(match table {
        "services" => &crate::entities::SERVICES,
        "routes" => &crate::entities::ROUTES,
        "consumers" => &crate::entities::CONSUMERS,
        "plugins" => &crate::entities::PLUGINS,
        "oauth2_credentials" => &credentials::CREDENTIALS,
        "keyauth_credentials" => &keyauth::CREDENTIALS,
        "acls" => &crate::plugins::acl::acls::ACLS,
        "upstreams" => &crate::entities::upstreams::UPSTREAMS,
        "targets" => &crate::entities::upstreams::TARGETS,
        "certificates" => &crate::entities::certificates::CERTIFICATES,
        "snis" => &crate::entities::certificates::SNIS,
        "ca_certificates" => &crate::entities::certificates::CA_CERTIFICATES,
        _ => return None,
    })
}

/// Kong accepts a foreign key by its endpoint key too (`"service": {"name": "s1"}`): resolve it to
/// `{"id": …}`.
///
/// # Errors
/// A schema violation when the named row does not exist; store failures.
pub async fn resolve_foreign_names(
    store: &dyn ConfigStore,
    kind: &EntityKind,
    input: &mut Map<String, Value>,
) -> Result<(), AdminError> {
    for fk_def in kind.def.foreign_keys {
        let Some(Value::Object(reference)) = input.get(fk_def.field) else {
            continue;
        };
        if reference.contains_key("id") {
            continue;
        }
        let Some(parent) = kind_by_table(fk_def.references) else {
            continue;
        };
        let Some(name) = reference
            .get(parent.endpoint_key)
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        match store.get_by(parent.def, parent.endpoint_key, &name).await? {
            Some(doc) => {
                let id = doc.get("id").cloned().unwrap_or(Value::Null);
                input.insert(fk_def.field.into(), json!({ "id": id }));
            }
            None => {
                let mut e = FieldErrors::new();
                e.insert(
                    fk_def.field.into(),
                    json!(format!("the foreign key '{{{}=\"{name}\"}}' does not reference an existing '{}' entity.", parent.endpoint_key, parent.def.name)),
                );
                return Err(AdminError::Schema(e));
            }
        }
    }
    Ok(())
}

/// Sends one typed write to the registry, bounding the wait.
///
/// # Errors
/// The write's own error, or 503 when the registry is saturated.
pub async fn send<M, T>(state: &AdminState, msg: M) -> Result<T, AdminError>
where
    M: Message<Result = Result<T, RegistryError>> + Send + 'static,
    T: Send + 'static,
    ConfigRegistry: Handler<M>,
{
    match tokio::time::timeout(WRITE_WAIT, state.registry.send(msg)).await {
        Ok(Ok(result)) => result.map_err(AdminError::from),
        Ok(Err(_)) | Err(_) => Err(AdminError::Unavailable),
    }
}

/// Whether a write that found its row changed should be read and tried again.
fn again(result: &Result<impl Sized, AdminError>, tries: &mut u32) -> bool {
    *tries += 1;
    matches!(result, Err(AdminError::Contended)) && *tries < WRITE_TRIES
}

/// Kong's `size` (1..=1000, default 100) and opaque `offset` query parameters.
///
/// # Errors
/// 400 invalid size (code 9) or invalid offset (code 7).
pub fn paging(query: &[(String, String)]) -> Result<(usize, Option<String>), AdminError> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let size = match get("size") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            Ok(_) => {
                return Err(AdminError::InvalidSize(
                    "size must be an integer between 1 and 1000".into(),
                ))
            }
            Err(_) => return Err(AdminError::InvalidSize("size must be a number".into())),
        },
    };
    let offset = match get("offset") {
        None => None,
        Some(o) => Some(
            URL_SAFE_NO_PAD
                .decode(o.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(AdminError::InvalidOffset(o))?,
        ),
    };
    Ok((size, offset))
}

/// `GET /E`, `GET /P/{p}/E`.
///
/// # Errors
/// Bad size/offset, store failures.
pub async fn list(
    state: &AdminState,
    kind: &'static EntityKind,
    foreign: Option<(&'static str, Uuid)>,
    query: &[(String, String)],
    base_path: &str,
) -> Result<HttpResponse, AdminError> {
    let body = list_page(state, kind, foreign, query, base_path).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// One page of a list as its JSON body (`data`, `next`, `offset`), for endpoints that shape
/// their `next` link themselves.
///
/// # Errors
/// Bad size/offset, store failures.
pub async fn list_page(
    state: &AdminState,
    kind: &'static EntityKind,
    foreign: Option<(&'static str, Uuid)>,
    query: &[(String, String)],
    base_path: &str,
) -> Result<Value, AdminError> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (size, offset) = paging(query)?;
    // `?tags` without a value: Kong refuses it rather than listing everything.
    if get("tags").is_some_and(|t| t.is_empty()) {
        return Err(AdminError::InvalidOption {
            field: "tags",
            reason: "cannot be null",
        });
    }
    let tags = get("tags").map(|t| {
        if t.contains('/') {
            (t.split('/').map(str::to_string).collect(), false)
        } else {
            (t.split(',').map(str::to_string).collect(), true)
        }
    });
    if kind.def.name == "consumers" {
        if let Some(custom_id) = get("custom_id") {
            let found = state
                .store
                .get_by(kind.def, "custom_id", &custom_id)
                .await?;
            let data: Vec<Value> = found
                .into_iter()
                .map(|d| render(&state.plugins, kind, d))
                .collect();
            return Ok(json!({ "data": data, "next": null }));
        }
    }
    let filter = ListFilter {
        foreign,
        tags,
        offset: offset.clone(),
        size,
    };
    let page = state
        .store
        .list(kind.def, &filter)
        .await
        .map_err(|e| match e {
            portcullis_stores::StoreError::InvalidOffset => {
                AdminError::InvalidOffset(get("offset").unwrap_or_default())
            }
            other => other.into(),
        })?;
    let data: Vec<Value> = page
        .data
        .into_iter()
        .map(|d| render(&state.plugins, kind, d))
        .collect();
    let mut body = json!({ "data": data, "next": null });
    if let Some(next) = page.next_offset {
        let token = URL_SAFE_NO_PAD.encode(next.as_bytes());
        let mut next_url = format!("{base_path}?offset={token}");
        if let Some(s) = get("size") {
            next_url.push_str(&format!("&size={s}"));
        }
        if let Some(t) = get("tags") {
            next_url.push_str(&format!(
                "&tags={}",
                percent_encoding::utf8_percent_encode(&t, percent_encoding::NON_ALPHANUMERIC)
            ));
        }
        body["offset"] = json!(token);
        body["next"] = json!(next_url);
    }
    Ok(body)
}

/// `POST /E`, `POST /P/{p}/E` (foreign key injected from the URL).
///
/// # Errors
/// Schema, unique and foreign-key violations; store failures.
pub async fn create(
    state: &AdminState,
    kind: &'static EntityKind,
    input: Map<String, Value>,
    coerce: Coerce,
    foreign: Option<(&'static str, Uuid)>,
) -> Result<HttpResponse, AdminError> {
    let body = create_value(state, kind, input, coerce, foreign).await?;
    Ok(HttpResponse::Created().json(body))
}

/// [`create`]'s answer body, for endpoints that add to it (a certificate's `snis`).
///
/// # Errors
/// As [`create`].
pub async fn create_value(
    state: &AdminState,
    kind: &'static EntityKind,
    mut input: Map<String, Value>,
    coerce: Coerce,
    foreign: Option<(&'static str, Uuid)>,
) -> Result<Value, AdminError> {
    if let Some((field, id)) = foreign {
        input.insert(field.into(), json!({ "id": id.to_string() }));
    }
    resolve_foreign_names(state.store.as_ref(), kind, &mut input).await?;
    expand_shorthands(kind, &mut input)?;
    let Built { doc, shown_once } = build_doc(kind, &state.plugins, input, coerce, None)?;
    let stored = send(state, Insert { def: kind.def, doc })
        .await
        .map_err(|e| unique_on_shown(e, kind, shown_once.as_ref()))?;
    Ok(render_written(&state.plugins, kind, stored, shown_once))
}

/// `GET /E/{key}` (optionally checking it belongs to a parent).
///
/// # Errors
/// 404, store failures.
pub async fn read(
    state: &AdminState,
    kind: &'static EntityKind,
    key: &str,
    parent: Option<(&'static str, Uuid)>,
) -> Result<HttpResponse, AdminError> {
    let doc = resolve_under(state.store.as_ref(), kind, key, parent)
        .await?
        .ok_or(AdminError::NotFound)?;
    if let Some((field, pid)) = parent {
        if fk(&doc, field) != Some(pid) {
            return Err(AdminError::NotFound);
        }
    }
    Ok(HttpResponse::Ok().json(render(&state.plugins, kind, doc)))
}

/// `PUT /E/{key}`: create or fully replace.
///
/// # Errors
/// Schema, unique and foreign-key violations; 404 when the row belongs to another parent.
pub async fn upsert(
    state: &AdminState,
    kind: &'static EntityKind,
    key: String,
    input: Map<String, Value>,
    coerce: Coerce,
    parent: Option<(&'static str, Uuid)>,
) -> Result<HttpResponse, AdminError> {
    let body = upsert_value(state, kind, key, input, coerce, parent).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// [`upsert`]'s answer body, for endpoints that add to it.
///
/// # Errors
/// As [`upsert`].
pub async fn upsert_value(
    state: &AdminState,
    kind: &'static EntityKind,
    key: String,
    mut input: Map<String, Value>,
    coerce: Coerce,
    parent: Option<(&'static str, Uuid)>,
) -> Result<Value, AdminError> {
    if let Some((field, id)) = parent {
        input.insert(field.into(), json!({ "id": id.to_string() }));
    }
    match Uuid::parse_str(&key) {
        Ok(id) => {
            input.insert("id".into(), json!(id.to_string()));
        }
        Err(_) => {
            if kind.def.name == "upstreams" {
                check_upstream_name(&key).map_err(AdminError::InvalidKey)?;
            }
            input.insert(kind.endpoint_key.into(), json!(key));
        }
    }
    resolve_foreign_names(state.store.as_ref(), kind, &mut input).await?;
    expand_shorthands(kind, &mut input)?;
    let mut tries = 0;
    loop {
        let existing = resolve_under(state.store.as_ref(), kind, &key, parent).await?;
        if let (Some(doc), Some((field, pid))) = (&existing, parent) {
            if fk(doc, field) != Some(pid) {
                return Err(AdminError::NotFound);
            }
        }
        let Built { doc, shown_once } = build_doc(
            kind,
            &state.plugins,
            input.clone(),
            coerce,
            existing.as_ref(),
        )?;
        let def = kind.def;
        let result = match existing {
            Some(expected) => send(state, Update { def, doc, expected }).await,
            // Created meanwhile by another request: read it again and replace it, as PUT does.
            None => match send(state, Insert { def, doc }).await {
                Err(AdminError::Unique(_))
                    if resolve_under(state.store.as_ref(), kind, &key, parent)
                        .await?
                        .is_some() =>
                {
                    Err(AdminError::Contended)
                }
                other => other,
            },
        };
        if !again(&result, &mut tries) {
            let stored = result.map_err(|e| unique_on_shown(e, kind, shown_once.as_ref()))?;
            return Ok(render_written(&state.plugins, kind, stored, shown_once));
        }
    }
}

/// `PATCH /E/{key}`: merge into the existing row.
///
/// # Errors
/// 404, schema, unique and foreign-key violations.
pub async fn patch(
    state: &AdminState,
    kind: &'static EntityKind,
    key: String,
    input: Map<String, Value>,
    coerce: Coerce,
    parent: Option<(&'static str, Uuid)>,
) -> Result<HttpResponse, AdminError> {
    let body = patch_value(state, kind, key, input, coerce, parent).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// [`patch`]'s answer body, for endpoints that add to it.
///
/// # Errors
/// As [`patch`].
pub async fn patch_value(
    state: &AdminState,
    kind: &'static EntityKind,
    key: String,
    input: Map<String, Value>,
    coerce: Coerce,
    parent: Option<(&'static str, Uuid)>,
) -> Result<Value, AdminError> {
    if kind.def.name == "oauth2_credentials" {
        credentials::check_patch(&input).map_err(AdminError::Schema)?;
    }
    let mut tries = 0;
    loop {
        let existing = resolve_under(state.store.as_ref(), kind, &key, parent)
            .await?
            .ok_or(AdminError::NotFound)?;
        if let Some((field, pid)) = parent {
            if fk(&existing, field) != Some(pid) {
                return Err(AdminError::NotFound);
            }
        }
        let mut merged = existing.clone();
        merged.remove("updated_at");
        let mut input = input.clone();
        resolve_foreign_names(state.store.as_ref(), kind, &mut input).await?;
        expand_shorthands(kind, &mut input)?;
        schema::merge_patch(kind.schema, &mut merged, input);
        let Built { doc, shown_once } =
            build_doc(kind, &state.plugins, merged, coerce, Some(&existing))?;
        let update = Update {
            def: kind.def,
            doc,
            expected: existing,
        };
        let result = send(state, update).await;
        if !again(&result, &mut tries) {
            let stored = result.map_err(|e| unique_on_shown(e, kind, shown_once.as_ref()))?;
            return Ok(render_written(&state.plugins, kind, stored, shown_once));
        }
    }
}

/// `DELETE /E/{key}`: 204 also when nothing existed (top level); cascades and restricts.
///
/// # Errors
/// 400 when restricted; 404 for a nested row of another parent.
pub async fn delete(
    state: &AdminState,
    kind: &'static EntityKind,
    key: String,
    parent: Option<(&'static str, Uuid)>,
) -> Result<HttpResponse, AdminError> {
    let mut tries = 0;
    loop {
        let Some(existing) = resolve_under(state.store.as_ref(), kind, &key, parent).await? else {
            return if parent.is_some() {
                Err(AdminError::NotFound)
            } else {
                Ok(HttpResponse::NoContent().finish())
            };
        };
        if let Some((field, pid)) = parent {
            if fk(&existing, field) != Some(pid) {
                return Err(AdminError::NotFound);
            }
        }
        let result = send(
            state,
            Delete {
                def: kind.def,
                expected: existing,
            },
        )
        .await;
        if !again(&result, &mut tries) {
            return result.map(|_| HttpResponse::NoContent().finish());
        }
    }
}

fn fk_id(doc: &Document) -> Result<Uuid, AdminError> {
    portcullis_stores::memory::doc_id(doc).map_err(AdminError::from)
}

/// Resolves a parent row for nested paths; 404 when absent.
///
/// # Errors
/// 404, store failures.
pub async fn parent_id(
    state: &AdminState,
    kind: &EntityKind,
    key: &str,
) -> Result<Uuid, AdminError> {
    let doc = resolve(state.store.as_ref(), kind, key)
        .await?
        .ok_or(AdminError::NotFound)?;
    fk_id(&doc)
}

/// Shared handle type so callers can clone cheaply.
pub type Shared = Arc<AdminState>;
