//! Declarative configuration, Kong's DB-less format (`_format_version: "3.0"`): a YAML or JSON
//! document listing every entity, nested under its parent or referencing it by name. Each entity
//! goes through the admin API's own validation ([`crud::build_doc`]), ids missing from the file are
//! derived as Kong derives them (UUID v5 over the entity's cache key or endpoint key), and the
//! result is a complete [`MemoryConfigStore`] that replaces the running configuration at once.
//! Every problem is reported with the entity it belongs to and its field, in Kong's shapes.

use std::collections::{HashMap, HashSet};

use portcullis_stores::memory::MemoryConfigStore;
use portcullis_stores::model::entities as defs;
use portcullis_stores::{ConfigStore, Document, EntityDef, StoreError};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::crud;
use crate::error::AdminError;
use crate::plugins::PluginRegistry;
use crate::schema::Coerce;

/// The format versions read. Older ones (`1.1`, `2.1`) need Kong's route-path migration.
pub const FORMAT_VERSIONS: &[&str] = &["3.0"];

/// Kong's namespace of its per-entity namespaces for generated ids.
const ENTITIES_NAMESPACE: Uuid = Uuid::from_u128(0xfd02801f_0957_4a15_a55a_c8d9606f30b5);

/// The entity sections of a file: `(key, children as (key, foreign-key field))`.
const SECTIONS: [(&str, &[(&str, &str)]); 12] = [
    ("certificates", &[("snis", "certificate")]),
    ("snis", &[]),
    ("ca_certificates", &[]),
    ("services", &[("routes", "service"), ("plugins", "service")]),
    ("routes", &[("plugins", "route")]),
    (
        "consumers",
        &[
            ("plugins", "consumer"),
            ("oauth2_credentials", "consumer"),
            ("keyauth_credentials", "consumer"),
            ("acls", "consumer"),
        ],
    ),
    ("plugins", &[]),
    ("oauth2_credentials", &[]),
    ("keyauth_credentials", &[]),
    ("acls", &[]),
    ("upstreams", &[("targets", "upstream")]),
    ("targets", &[]),
];

/// Kong entities this gateway does not have: named in the error rather than "unknown".
const UNSUPPORTED_SECTIONS: &[&str] = &[
    "basicauth_credentials",
    "hmacauth_credentials",
    "jwt_secrets",
    "mtls_auth_credentials",
    "consumer_groups",
    "consumer_group_consumers",
    "consumer_group_plugins",
    "vaults",
    "key_sets",
    "keys",
    "filter_chains",
    "workspaces",
    "parameters",
    "licenses",
];

/// One problem of a declarative file.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Where: `services[0].routes[1]`, or the top-level key.
    pub path: String,
    /// The same place as `(section, index)` steps; empty for a top-level key.
    pub place: Vec<(&'static str, usize)>,
    /// The entity (`services`), when the problem is an entity's.
    pub entity: Option<&'static str>,
    /// The entity as the file gave it.
    pub input: Option<Map<String, Value>>,
    /// The field at fault (`config.second`), `None` for the entity as a whole.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(name) = self
            .input
            .as_ref()
            .and_then(|i| i.get("name").or_else(|| i.get("username")))
            .and_then(Value::as_str)
        {
            write!(f, " ({name})")?;
        }
        match &self.field {
            Some(field) => write!(f, ": {field}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// Why a declarative configuration was refused; nothing of it was applied.
#[derive(Debug, Clone, Default)]
pub struct Invalid {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        write!(f, "declarative config is invalid: {}", lines.join("; "))
    }
}

impl Invalid {
    fn one(path: &str, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                place: Vec::new(),
                entity: None,
                input: None,
                field: None,
                message: message.into(),
            }],
        }
    }

    /// Kong's answer body: code 14, the errors by place in `fields`, and `flattened_errors`
    /// (one entry per entity with its field errors).
    pub fn to_kong_body(&self) -> Value {
        let mut fields = Map::new();
        let mut flattened: Vec<Value> = Vec::new();
        let mut by_entity: HashMap<String, usize> = HashMap::new();
        for p in &self.problems {
            let Some(entity) = p.entity else {
                fields.insert(p.path.clone(), json!(p.message));
                continue;
            };
            let key = format!("{}/{}", entity, p.path);
            let idx = *by_entity.entry(key).or_insert_with(|| {
                let input = p.input.clone().unwrap_or_default();
                let mut e = Map::new();
                if let Some(name) = input.get("name").and_then(Value::as_str) {
                    e.insert("entity_name".into(), json!(name));
                }
                if let Some(id) = input
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| Uuid::parse_str(s).is_ok())
                {
                    e.insert("entity_id".into(), json!(id));
                }
                if let Some(tags) = input.get("tags").filter(|t| t.is_array()) {
                    e.insert("entity_tags".into(), tags.clone());
                }
                e.insert("entity_type".into(), json!(singular(entity)));
                e.insert("entity".into(), Value::Object(input));
                e.insert("errors".into(), json!([]));
                flattened.push(Value::Object(e));
                flattened.len() - 1
            });
            let error = match &p.field {
                Some(field) => json!({"type": "field", "field": field, "message": p.message}),
                None => json!({"type": "entity", "message": p.message}),
            };
            if let Some(Value::Array(errors)) = flattened[idx].get_mut("errors") {
                errors.push(error);
            }
            place_error(&mut fields, p);
        }
        let fields = Value::Object(fields);
        json!({
            "code": 14,
            "name": "invalid declarative configuration",
            "message": format!("declarative config is invalid: {}", lua_pretty(&fields)),
            "fields": fields,
            "flattened_errors": flattened,
        })
    }
}

/// Puts a problem where Kong's nested error table has it: `{services: [{routes: [{field}]}]}`,
/// an entity's own error as the entry's text.
fn place_error(fields: &mut Map<String, Value>, p: &Problem) {
    let mut node = fields;
    let last = p.place.len().saturating_sub(1);
    for (step, (section, idx)) in p.place.iter().enumerate() {
        let list = node
            .entry((*section).to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = list else { return };
        if list.len() <= *idx {
            list.resize(idx + 1, Value::Null);
        }
        let entry = &mut list[*idx];
        if step == last && p.field.is_none() {
            if entry.is_null() {
                *entry = json!(p.message);
            }
            return;
        }
        if entry.is_null() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(obj) = entry else { return };
        node = obj;
    }
    let Some(field) = &p.field else { return };
    let mut parts: Vec<&str> = field.split('.').collect();
    let leaf = parts.pop().unwrap_or_default();
    for part in parts {
        let next = node
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(obj) = next else { return };
        node = obj;
    }
    node.insert(leaf.to_string(), json!(p.message));
}

/// A value as Penlight's `pretty.write(t, "")` prints a Lua table (Kong's error message).
fn lua_pretty(v: &Value) -> String {
    fn key(k: &str) -> String {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            format!("{k}=")
        } else {
            format!("[{}]=", lua_pretty(&json!(k)))
        }
    }
    match v {
        Value::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}{}", key(k), lua_pretty(&o[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let mut parts = Vec::new();
            let mut holes = false;
            for (i, e) in a.iter().enumerate() {
                if e.is_null() {
                    holes = true;
                } else if holes {
                    parts.push(format!("[{}]={}", i + 1, lua_pretty(e)));
                } else {
                    parts.push(lua_pretty(e));
                }
            }
            format!("{{{}}}", parts.join(","))
        }
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn singular(entity: &str) -> &str {
    match entity {
        "services" => "service",
        "routes" => "route",
        "consumers" => "consumer",
        "plugins" => "plugin",
        "oauth2_credentials" => "oauth2_credential",
        "keyauth_credentials" => "keyauth_credential",
        "acls" => "acl",
        "upstreams" => "upstream",
        "targets" => "target",
        "certificates" => "certificate",
        "snis" => "sni",
        "ca_certificates" => "ca_certificate",
        other => other,
    }
}

/// A validated configuration, ready to replace the running one.
pub struct Loaded {
    /// Every entity, constraints checked.
    pub store: MemoryConfigStore,
    /// Digest of the document (`check_hash`); empty when it holds no entity.
    pub hash: String,
}

/// Parses YAML or JSON text (JSON is YAML) into a document.
///
/// # Errors
/// The parser's message with its line and column.
pub fn parse_text(text: &str) -> Result<Value, Invalid> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        Invalid::one(
            "document",
            format!("failed parsing declarative configuration: {e}"),
        )
    })?;
    Ok(value)
}

/// Digest of a document, stable for the same content whatever its key order.
pub fn hash_of(value: &Value) -> String {
    // serde_json's maps are ordered by key: the serialization is canonical.
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// One entity of the file, flattened.
struct Item {
    table: &'static str,
    path: String,
    place: Vec<(&'static str, usize)>,
    input: Map<String, Value>,
    original: Map<String, Value>,
    parent: Option<(&'static str, usize)>,
    id: Option<Uuid>,
}

/// Kong's id of an entity from its natural key (UUID v5 in the entity's namespace).
pub fn generated_id(table: &str, key: &str) -> Uuid {
    let namespace = v5(&ENTITIES_NAMESPACE, table);
    v5(&namespace, key)
}

fn v5(namespace: &Uuid, name: &str) -> Uuid {
    let mut hasher = sha1::Sha1::new();
    sha1::Digest::update(&mut hasher, namespace.as_bytes());
    sha1::Digest::update(&mut hasher, name.as_bytes());
    let hash = sha1::Digest::finalize(hasher);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

fn table_key(table: &str) -> Option<&'static str> {
    SECTIONS.iter().map(|(k, _)| *k).find(|k| *k == table)
}

fn children_of(table: &str) -> &'static [(&'static str, &'static str)] {
    SECTIONS
        .iter()
        .find(|(k, _)| *k == table)
        .map_or(&[], |(_, c)| c)
}

/// Kong's cache key for the id of an entity without one (`None`: a random id).
fn cache_key(items: &[Item], item: &Item) -> Option<String> {
    let text = |k: &str| {
        item.input
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let parent_id = |field: &str| match item.parent {
        Some((f, idx)) if f == field => items[idx].id.map(|u| u.to_string()),
        _ => None,
    };
    let composite = |fields: &[(&str, bool)]| -> Option<String> {
        let mut ck = vec![item.table.to_string(), "*".to_string()];
        for (k, required) in fields {
            match item.input.get(*k) {
                Some(Value::String(s)) => ck.push(s.clone()),
                None | Some(Value::Null) => match parent_id(k) {
                    Some(id) => ck.push(id),
                    None if *required => return None,
                    None => ck.push(String::new()),
                },
                // Kong leaves a `{id = …}` reference out of the key.
                Some(_) => {}
            }
        }
        Some(ck.join(":"))
    };
    match item.table {
        "services" | "routes" | "upstreams" | "snis" => text("name"),
        "consumers" => text("username"),
        "plugins" => composite(&[
            ("name", true),
            ("route", false),
            ("service", false),
            ("consumer", false),
        ]),
        "acls" => composite(&[("consumer", true), ("group", true)]),
        "targets" => composite(&[("upstream", true), ("target", true)]),
        // Kong draws these at random (their key is generated); a stable id keeps a client's
        // tokens valid across reloads of the same file.
        "oauth2_credentials" => text("client_id").map(|c| format!("oauth2_credentials:*:{c}")),
        // Kong's key is the API key itself (its endpoint key); a file that carries only the
        // stored digest (`config db_export`'s) gets an id from the digest.
        "keyauth_credentials" => {
            text("key").or_else(|| text("key_hash").map(|h| format!("keyauth_credentials:*:{h}")))
        }
        // Kong draws these at random; an id from the certificate text keeps `config db_import`
        // of the same file an update of the same rows.
        "certificates" | "ca_certificates" => text("cert").map(|cert| {
            let alt = text("cert_alt").unwrap_or_default();
            let digest = Sha256::digest(format!("{cert}\n{alt}").as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}:*:{hex}", item.table)
        }),
        _ => None,
    }
}

/// Flattens the document into items, parents before children.
fn flatten(doc: &Value) -> Result<Vec<Item>, Invalid> {
    let Value::Object(top) = doc else {
        return Err(Invalid::one(
            "error",
            "failed parsing declarative configuration: expected an object",
        ));
    };
    let mut invalid = Invalid::default();
    match top.get("_format_version") {
        None => invalid
            .problems
            .push(Invalid::one("_format_version", "required field missing").problems.remove(0)),
        Some(Value::String(v)) if FORMAT_VERSIONS.contains(&v.as_str()) => {}
        Some(other) => invalid.problems.push(
            Invalid::one(
                "_format_version",
                format!(
                    "unsupported format version {other}: expected \"3.0\" (convert older files with `deck file convert`)"
                ),
            )
            .problems
            .remove(0),
        ),
    }
    let mut items = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "_format_version" | "_comment" => {}
            // `true`: secrets are given in clear and hashed on load; `false` (what Kong's
            // `db_export` writes): they are given as stored. Both read the same here, because a
            // value that is already a hash (a `$argon2`/`$pbkdf2` client secret, a `key_hash`)
            // is never hashed again, and a key-auth `key` is stored as its digest either way
            // (Kong stores it in clear, so its export holds the clear key).
            "_transform" => {
                if !value.is_boolean() {
                    invalid
                        .problems
                        .extend(Invalid::one("_transform", "expected a boolean").problems);
                }
            }
            "_workspace" => {
                if value.as_str() != Some("default") {
                    invalid.problems.extend(
                        Invalid::one("_workspace", "workspaces are not supported").problems,
                    );
                }
            }
            k if table_key(k).is_some() => {
                let table = table_key(k).unwrap_or_default();
                push_section(&mut items, &mut invalid, table, k, value, None, &[]);
            }
            k if UNSUPPORTED_SECTIONS.contains(&k) => invalid.problems.extend(
                Invalid::one(k, format!("entity '{k}' is not supported by this gateway")).problems,
            ),
            k => invalid
                .problems
                .extend(Invalid::one(k, "unknown field").problems),
        }
    }
    if invalid.problems.is_empty() {
        Ok(items)
    } else {
        Err(invalid)
    }
}

fn push_section(
    items: &mut Vec<Item>,
    invalid: &mut Invalid,
    table: &'static str,
    path: &str,
    value: &Value,
    parent: Option<(&'static str, usize)>,
    place: &[(&'static str, usize)],
) {
    let Value::Array(list) = value else {
        if !value.is_null() {
            invalid
                .problems
                .extend(Invalid::one(path, "expected an array").problems);
        }
        return;
    };
    for (i, entry) in list.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let mut here_place = place.to_vec();
        here_place.push((table, i));
        let entry = match (table, entry) {
            // A certificate's `snis` may list names.
            ("snis", Value::String(name)) => json!({ "name": name }),
            _ => entry.clone(),
        };
        let Value::Object(mut input) = entry else {
            invalid
                .problems
                .extend(Invalid::one(&here, "expected a record").problems);
            continue;
        };
        let original = input.clone();
        // Kong's annotations on any entity.
        input.remove("_comment");
        input.remove("_ignore");
        let mut nested = Vec::new();
        for (child, field) in children_of(table) {
            if let Some(v) = input.remove(*child) {
                nested.push((*child, *field, v));
            }
        }
        if let Some((field, _)) = parent {
            if input.get(field).is_some_and(|v| !v.is_null()) {
                invalid.problems.push(Problem {
                    path: here.clone(),
                    place: here_place.clone(),
                    entity: Some(table),
                    input: Some(original.clone()),
                    field: Some(field.into()),
                    message: "value must be null: the entity is nested under its parent".into(),
                });
            }
        }
        items.push(Item {
            table,
            path: here.clone(),
            place: here_place.clone(),
            input,
            original,
            parent,
            id: None,
        });
        let idx = items.len() - 1;
        for (child, field, v) in nested {
            let Some(child_table) = table_key(child) else {
                continue;
            };
            push_section(
                items,
                invalid,
                child_table,
                &format!("{here}.{child}"),
                &v,
                Some((field, idx)),
                &here_place,
            );
        }
    }
}

fn problem(item: &Item, field: Option<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: item.path.clone(),
        place: item.place.clone(),
        entity: Some(item.table),
        input: Some(item.original.clone()),
        field,
        message: message.into(),
    }
}

/// The field errors of the admin API's validation as problems of `item`.
fn admin_problems(item: &Item, e: AdminError) -> Vec<Problem> {
    fn walk(item: &Item, prefix: &str, fields: &Map<String, Value>, out: &mut Vec<Problem>) {
        for (k, v) in fields {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => walk(item, &name, inner, out),
                Value::Array(list) if k == "@entity" => {
                    for m in list {
                        out.push(problem(item, None, m.as_str().unwrap_or_default()));
                    }
                }
                Value::String(m) if k == "@entity" => out.push(problem(item, None, m.clone())),
                Value::String(m) => out.push(problem(item, Some(name), m.clone())),
                other => out.push(problem(item, Some(name), other.to_string())),
            }
        }
    }
    let mut out = Vec::new();
    match e {
        AdminError::Schema(fields) => walk(item, "", &fields, &mut out),
        other => out.push(problem(item, None, other.to_string())),
    }
    out
}

/// The endpoint key a reference by text names (`service: my-service`).
fn endpoint_field(table: &str) -> &'static str {
    match table {
        "consumers" => "username",
        "plugins" => "instance_name",
        "targets" => "target",
        _ => "name",
    }
}

/// Keeps the timestamps the file gives (validated with the rest of the entity): an exported
/// configuration loaded again, into DB-less mode or by `config db_import`, is the same rows, not
/// rows stamped with the time of the load. Kong keeps a given `created_at` too.
fn keep_timestamps(input: &Map<String, Value>, doc: &mut Map<String, Value>) {
    for field in ["created_at", "updated_at"] {
        if let Some(v) = input.get(field).filter(|v| v.is_number()) {
            if doc.contains_key(field) {
                doc.insert(field.into(), v.clone());
            }
        }
    }
}

/// Validates a parsed document into a complete configuration.
///
/// # Errors
/// Every problem found, each naming its entity and field.
pub async fn load(doc: &Value, plugins: &PluginRegistry) -> Result<Loaded, Invalid> {
    let mut items = flatten(doc)?;
    let mut invalid = Invalid::default();
    // Ids: given, or derived in file order (a parent's before its children's).
    for i in 0..items.len() {
        let given = items[i].input.get("id").cloned();
        let id = match given {
            Some(Value::String(s)) => match Uuid::parse_str(&s) {
                Ok(u) => Some(u),
                Err(_) => {
                    invalid.problems.push(problem(
                        &items[i],
                        Some("id".into()),
                        "expected a valid UUID",
                    ));
                    None
                }
            },
            Some(_) => {
                invalid
                    .problems
                    .push(problem(&items[i], Some("id".into()), "expected a string"));
                None
            }
            None => Some(match cache_key(&items, &items[i]) {
                Some(key) => generated_id(items[i].table, &key),
                None => Uuid::new_v4(),
            }),
        };
        items[i].id = id;
    }
    // Names and ids of every entity, for references.
    let mut by_key: HashMap<(&str, String), Uuid> = HashMap::new();
    let mut ids: HashSet<(&str, Uuid)> = HashSet::new();
    for item in &items {
        let Some(id) = item.id else { continue };
        ids.insert((item.table, id));
        if let Some(k) = item
            .input
            .get(endpoint_field(item.table))
            .and_then(Value::as_str)
        {
            by_key.insert((item.table, k.to_string()), id);
        }
    }
    let store = MemoryConfigStore::new();
    let mut built: Vec<(
        &'static portcullis_stores::EntityDef,
        usize,
        Map<String, Value>,
    )> = Vec::new();
    for (idx, item) in items.iter().enumerate() {
        let Some(kind) = crud::kind_by_table(item.table) else {
            continue;
        };
        let mut input = item.input.clone();
        if let Some(id) = item.id {
            input.insert("id".into(), json!(id.to_string()));
        }
        if let Some((field, pidx)) = item.parent {
            if let Some(pid) = items[pidx].id {
                input.insert(field.into(), json!({ "id": pid.to_string() }));
            }
        }
        let mut bad = false;
        for fk in kind.def.foreign_keys {
            let Some(reference) = input.get(fk.field).cloned() else {
                continue;
            };
            let resolved = match &reference {
                Value::Null => continue,
                Value::String(s) => Uuid::parse_str(s)
                    .ok()
                    .filter(|u| ids.contains(&(fk.references, *u)))
                    .or_else(|| by_key.get(&(fk.references, s.clone())).copied()),
                Value::Object(o) => match o.get("id").and_then(Value::as_str) {
                    Some(s) => Uuid::parse_str(s)
                        .ok()
                        .filter(|u| ids.contains(&(fk.references, *u))),
                    None => o
                        .get(endpoint_field(fk.references))
                        .and_then(Value::as_str)
                        .and_then(|k| by_key.get(&(fk.references, k.to_string())).copied()),
                },
                _ => None,
            };
            match resolved {
                Some(id) => {
                    input.insert(fk.field.into(), json!({ "id": id.to_string() }));
                }
                None => {
                    let shown = match &reference {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    invalid.problems.push(problem(
                        item,
                        Some(fk.field.into()),
                        format!(
                            "invalid reference '{}: {shown}' (no such entry in '{}')",
                            fk.field, fk.references
                        ),
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        if let Err(e) = crud::expand_shorthands(kind, &mut input) {
            invalid.problems.extend(admin_problems(item, e));
            continue;
        }
        match crud::build_doc(kind, plugins, input, Coerce::No, None) {
            Ok(mut b) => {
                keep_timestamps(&item.input, &mut b.doc);
                built.push((kind.def, idx, b.doc));
            }
            Err(e) => invalid.problems.extend(admin_problems(item, e)),
        }
    }
    if !invalid.problems.is_empty() {
        return Err(invalid);
    }
    // Constraints (ids, unique keys, references), in dependency order, each row against the
    // keys of the rows admitted before it.
    let mut taken = Taken::default();
    for def in defs::ALL {
        for (d, idx, doc) in built.iter().filter(|(d, _, _)| d.name == def.name) {
            match taken.admit(d, doc) {
                Ok(id) => store.insert_checked(d, id, doc.clone()),
                Err(e) => invalid
                    .problems
                    .push(constraint_problem(&items[*idx], def.name, e)),
            }
        }
    }
    if !invalid.problems.is_empty() {
        return Err(invalid);
    }
    Ok(Loaded {
        store,
        // Kong's: a configuration without an entity has no hash (`/status` shows zeros and
        // the node is not ready).
        hash: if built.is_empty() {
            String::new()
        } else {
            hash_of(doc)
        },
    })
}

/// The keys of the rows a load has admitted so far: each new row is checked against them in
/// constant time, with the store's own rules and errors (a single-field key ignores nulls, a
/// reference must name an admitted row).
#[derive(Default)]
struct Taken {
    ids: HashMap<&'static str, HashSet<Uuid>>,
    /// `(table, index of the key in its `unique` list)` → the key values taken, as JSON text.
    unique: HashMap<(&'static str, usize), HashSet<String>>,
}

impl Taken {
    /// Admits `doc` into `def`'s table, or says which constraint it breaks.
    fn admit(
        &mut self,
        def: &'static portcullis_stores::EntityDef,
        doc: &Map<String, Value>,
    ) -> Result<Uuid, StoreError> {
        use portcullis_stores::memory::{doc_id, foreign_id, unique_key_value};
        let id = doc_id(doc)?;
        if self.ids.get(def.name).is_some_and(|ids| ids.contains(&id)) {
            let mut fields = Map::new();
            fields.insert("id".into(), Value::String(id.to_string()));
            return Err(StoreError::UniqueViolation { fields });
        }
        let mut keys = Vec::with_capacity(def.unique.len());
        for (i, key) in def.unique.iter().enumerate() {
            let Some(value) = unique_key_value(doc, key) else {
                continue;
            };
            let text = Value::Array(value.clone()).to_string();
            if self
                .unique
                .get(&(def.name, i))
                .is_some_and(|set| set.contains(&text))
            {
                let fields = key
                    .iter()
                    .zip(value)
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| ((*k).to_string(), v))
                    .collect();
                return Err(StoreError::UniqueViolation { fields });
            }
            keys.push((i, text));
        }
        for fk in def.foreign_keys {
            if let Some(target) = foreign_id(doc, fk.field) {
                if !self
                    .ids
                    .get(fk.references)
                    .is_some_and(|ids| ids.contains(&target))
                {
                    return Err(StoreError::ForeignKeyMissing {
                        field: fk.field,
                        references: fk.references,
                        id: target,
                    });
                }
            }
        }
        self.ids.entry(def.name).or_default().insert(id);
        for (i, text) in keys {
            self.unique.entry((def.name, i)).or_default().insert(text);
        }
        Ok(id)
    }
}

/// A row a load could not admit, as the problem of its entity (a duplicate natural key named by
/// that key, as Kong names it).
fn constraint_problem(item: &Item, table: &str, e: StoreError) -> Problem {
    let message = match e {
        StoreError::UniqueViolation { fields } => {
            let (k, v) = fields
                .iter()
                .next()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .unwrap_or_default();
            // A derived id collides when the natural key does: name that key.
            let derived = (k == "id" && !item.original.contains_key("id"))
                .then(|| endpoint_field(item.table))
                .and_then(|f| {
                    let v = item.input.get(f)?.as_str()?;
                    Some((f.to_string(), v.to_string()))
                });
            let (k, v) = match derived {
                Some(kv) => kv,
                None if k == "id" => ("primary key".to_string(), v),
                None => (k, v),
            };
            format!("uniqueness violation: '{table}' entity with {k} set to '{v}' already declared")
        }
        other => AdminError::from(other).to_string(),
    };
    problem(item, None, message)
}

/// Parses and validates text in one step (`config parse`, `POST /config`, start-up).
///
/// # Errors
/// As [`parse_text`] and [`load`].
pub async fn load_text(text: &str, plugins: &PluginRegistry) -> Result<Loaded, Invalid> {
    let doc = parse_text(text)?;
    load(&doc, plugins).await
}

/// The running configuration as a declarative document (`GET /config`): top-level sections,
/// references by id, secrets as stored (hashed client secrets stay hashed).
///
/// # Errors
/// Store failures.
pub async fn export(store: &dyn ConfigStore) -> Result<Value, StoreError> {
    let mut tables = Vec::with_capacity(defs::ALL.len());
    for def in defs::ALL {
        tables.push((def, store.all(def).await?));
    }
    Ok(export_tables(tables))
}

/// The declarative document of every entity's rows, as [`export`] and `config db_export` write
/// it. Secrets stay as stored: a `hash_secret` client secret as its hash (loading it again keeps
/// the hash: a hash is never hashed again), a key-auth key as its SHA-256 digest in `key_hash`
/// (accepted as input, so the key keeps working without ever being in the file). Tokens and
/// codes are not configuration and are never exported.
pub fn export_tables(tables: Vec<(&'static EntityDef, Vec<Document>)>) -> Value {
    let mut out = Map::new();
    out.insert("_format_version".into(), json!("3.0"));
    out.insert("_transform".into(), json!(true));
    for (def, mut docs) in tables {
        if docs.is_empty() {
            continue;
        }
        for d in &mut docs {
            // Derived again on load.
            d.remove("cert_digest");
        }
        out.insert(
            def.name.into(),
            Value::Array(docs.into_iter().map(Value::Object).collect()),
        );
    }
    Value::Object(out)
}

/// A declarative document as the YAML text `GET /config` answers and `config db_export` writes.
///
/// # Errors
/// The serializer's (not expected for a JSON value).
pub fn to_yaml(doc: &Value) -> Result<String, String> {
    serde_yaml::to_string(doc).map_err(|e| e.to_string())
}

/// A commented starter file (`config init`): the Step On tutorial's service, route, `oauth2`
/// plugin, consumer and OAuth client.
pub const STARTER: &str = r#"# Portcullis declarative configuration (Kong's format, DB-less mode).
# Check it with `portcullis config parse kong.yml`, run it with
#   PORTCULLIS_DATABASE=off PORTCULLIS_DECLARATIVE_CONFIG=kong.yml portcullis serve
# and apply a changed file without a restart with SIGHUP or `POST /config`.
_format_version: "3.0"
_transform: true

services:
  # The upstream API. Entities without an `id` get one derived from their name, so the same
  # file always gives the same ids.
  - name: step-on-api-server
    url: https://localhost:8443
    routes:
      # Requests to /stepon/... are proxied to the service (the prefix is stripped).
      - name: step-on-route
        paths:
          - /stepon
    plugins:
      # OAuth 2.0 authorization server for this service: tokens at /stepon/oauth2/token.
      - name: oauth2
        config:
          scopes:
            - user_profile
            - biometric
            - step_counts
          enable_authorization_code: true
          enable_client_credentials: true
          mandatory_scope: false

consumers:
  # The client application and its OAuth 2.0 credentials.
  - username: shoeflyshoe
    oauth2_credentials:
      - name: Shoe Fly Shoe Customer Rewards
        client_id: shoeflyshoe-client
        # Replace before use; stored hashed with hash_secret.
        client_secret: change-me-to-a-long-random-secret
        hash_secret: true
        redirect_uris:
          - http://localhost:1234/authorize
"#;

/// The plugin kinds of this build, for checking a file outside a running gateway.
pub fn offline_plugins() -> PluginRegistry {
    use std::sync::Arc;
    PluginRegistry::builtin(
        crate::plugins::oauth2::OAuthDeps::in_memory(Arc::new(
            portcullis_stores::memory::MemoryTokenStore::new(),
        )),
        crate::plugins::introspection::IntrospectionCache::default(),
        crate::plugins::rate_limiting::RateLimitDeps::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kong_s_uuid_v5_in_the_entity_namespace() {
        // Kong: uuid.factory_v5(uuid.factory_v5(NS)("services"))("my-service").
        let ns = v5(&ENTITIES_NAMESPACE, "services");
        assert_eq!(
            generated_id("services", "my-service"),
            v5(&ns, "my-service")
        );
        assert_eq!(generated_id("services", "a").get_version_num(), 5);
        assert_ne!(generated_id("services", "a"), generated_id("routes", "a"));
        // RFC 4122 v5 as Python's `uuid.uuid5(uuid.uuid5(NS, "services"), "svc")` gives it.
        assert_eq!(
            generated_id("services", "svc").to_string(),
            "b9f04b04-ab65-5e2a-b4c4-f82b7d5b781c"
        );
    }

    #[actix_rt::test]
    async fn the_starter_file_parses() {
        let loaded = load_text(STARTER, &offline_plugins()).await.unwrap();
        assert_eq!(loaded.store.documents(&defs::SERVICES).len(), 1);
        assert_eq!(loaded.store.documents(&defs::OAUTH2_CREDENTIALS).len(), 1);
    }

    #[test]
    fn problems_name_the_entity_path_and_field() {
        let p = Problem {
            path: "services[0].routes[1]".into(),
            place: vec![("services", 0), ("routes", 1)],
            entity: Some("routes"),
            input: Some(Map::from_iter([("name".to_string(), json!("r1"))])),
            field: Some("protocols".into()),
            message: "expected one of: http, https".into(),
        };
        assert_eq!(
            p.to_string(),
            "services[0].routes[1] (r1): protocols: expected one of: http, https"
        );
    }
}
