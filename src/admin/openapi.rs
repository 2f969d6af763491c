//! `GET /openapi.json`: an OpenAPI 3.1 document of the whole admin API, generated from what serves
//! it — the dispatcher's tables ([`COLLECTIONS`], [`NESTED`], [`FOREIGN`]), the entity schemas
//! that validate requests, the plugins' config schemas and the token endpoints — so the document
//! cannot drift from the API. Request bodies are described as JSON; the same fields are accepted
//! as url-encoded or multipart forms (dotted keys for records, `a[]` for arrays).

use serde_json::{json, Map, Value};

use super::oauth2_tokens::{TOKEN_RESPONSE_EXTRA, TOKEN_SCHEMA, TOKEN_SCOPES};
use super::{
    kind_of, nested_kind_of, top_segment, COLLECTIONS, EMPTY_LISTS, FOREIGN, NESTED, NESTED_ONLY,
};
use crate::entities::EntityKind;
use crate::plugins::PluginRegistry;
use crate::schema::{Field, FieldType, Schema};

/// The OpenAPI document of this build's admin API (with the plugins it offers).
pub fn document(plugins: &PluginRegistry) -> Value {
    let mut doc = Document::default();
    doc.info_paths(plugins);
    for (segment, kind) in &COLLECTIONS {
        doc.entity(kind.schema);
        let base = format!("/{segment}");
        let item = format!("{base}/{{{}}}", param(kind));
        doc.collection(&base, kind.schema, None);
        doc.item(&item, kind.schema, &[param(kind)], None);
        doc.creates.push((base, vec![item], param(kind)));
    }
    for (_, kind) in &NESTED_ONLY {
        doc.entity(kind.schema);
    }
    for (parent, child, field) in NESTED {
        let (Some(pkind), Some(ckind)) = (kind_of(parent), nested_kind_of(child)) else {
            continue;
        };
        let base = format!("/{parent}/{{{}}}/{child}", param(pkind));
        doc.collection(&base, ckind.schema, Some((param(pkind), field)));
        let item = format!("{base}/{{{}}}", param(ckind));
        doc.item(
            &item,
            ckind.schema,
            &[param(pkind), param(ckind)],
            Some(field),
        );
        let mut items = vec![item];
        if NESTED_ONLY.iter().all(|(segment, _)| *segment != child) {
            items.push(format!("/{}/{{{}}}", top_segment(child), param(ckind)));
        }
        doc.creates.push((base, items, param(ckind)));
    }
    for (child, field, parent) in FOREIGN {
        let (Some(ckind), Some(pkind)) = (kind_of(child), kind_of(parent)) else {
            continue;
        };
        let path = format!("/{child}/{{{}}}/{field}", param(ckind));
        doc.item(&path, pkind.schema, &[param(ckind)], Some("@foreign"));
    }
    doc.balancing_extras();
    doc.declarative_config();
    doc.tokens();
    doc.plugin_configs(plugins);
    // A plugin is named by one of the plugins this build offers (the registry checks it).
    for input in ["plugins_input", "plugins_patch"] {
        if let Some(name) = doc
            .schemas
            .get_mut(input)
            .and_then(|s| s.pointer_mut("/properties/name"))
        {
            name["enum"] = json!(plugins.names());
        }
    }
    doc.finish()
}

/// The path parameter naming one entity: its table name in the singular.
fn param(kind: &EntityKind) -> &'static str {
    let table = kind.def.name;
    table.strip_suffix('s').unwrap_or(table)
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": json_content(schema) })
}

fn no_content() -> Value {
    json!({ "description": "Done; no body" })
}

#[derive(Default)]
struct Document {
    paths: Map<String, Value>,
    schemas: Map<String, Value>,
    /// Creating operations: `(POST path, item paths the created id addresses, their parameter)`,
    /// turned into OpenAPI links by [`Document::link_creations`].
    creates: Vec<(String, Vec<String>, &'static str)>,
}

/// What may go wrong in an operation, beyond its success answer.
#[derive(Clone, Copy)]
struct Failures {
    bad_request: bool,
    not_found: bool,
    conflict: bool,
    body: bool,
    store: bool,
}

impl Failures {
    const NONE: Self = Self {
        bad_request: false,
        not_found: false,
        conflict: false,
        body: false,
        store: false,
    };
    const READ: Self = Self {
        not_found: true,
        store: true,
        ..Self::NONE
    };
    const LIST: Self = Self {
        bad_request: true,
        ..Self::READ
    };
    const WRITE: Self = Self {
        bad_request: true,
        not_found: true,
        conflict: true,
        body: true,
        store: true,
    };
    const DELETE: Self = Self {
        bad_request: true,
        conflict: true,
        ..Self::READ
    };
}

impl Document {
    fn op(&mut self, path: &str, method: &str, mut op: Value) {
        op["operationId"] = json!(operation_id(method, path));
        let entry = self
            .paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}));
        entry[method] = op;
    }

    /// `/upstreams/{upstream}/targets/all`, and the lists decK reads that are always empty here.
    fn balancing_extras(&mut self) {
        let mut all = Self::operation(
            "List every target of an upstream, weight 0 included".into(),
            &["upstream"],
            None,
            ("200", response("One page", reference("targets_page"))),
            Failures {
                not_found: true,
                ..Failures::LIST
            },
        );
        if let Some(Value::Array(params)) = all.get_mut("parameters") {
            params.extend(paging_params());
        }
        self.op("/upstreams/{upstream}/targets/all", "get", all);
        let empty = json!({
            "type": "object", "required": ["data", "next"],
            "properties": { "data": { "type": "array", "maxItems": 0 }, "next": { "type": "null" } },
        });
        for list in EMPTY_LISTS {
            let op = Self::operation(
                format!("{list}: not managed by this gateway; always an empty page"),
                &[],
                None,
                ("200", response("An empty page", empty.clone())),
                Failures::NONE,
            );
            self.op(&format!("/{list}"), "get", op);
        }
    }

    /// `GET /config` and `POST /config` (DB-less mode; a gateway with a database answers `400`).
    fn declarative_config(&mut self) {
        let only_dbless = "; with a database (database = memory or postgres) the answer is 400";
        let export = Self::operation(
            format!(
                "The running configuration as a declarative document (DB-less mode){only_dbless}"
            ),
            &[],
            None,
            (
                "200",
                response(
                    "The configuration, Kong 3.0 YAML text",
                    json!({
                        "type": "object", "required": ["config"],
                        "properties": { "config": { "type": "string" } },
                    }),
                ),
            ),
            Failures {
                bad_request: true,
                store: true,
                ..Failures::NONE
            },
        );
        self.op("/config", "get", export);
        let document = json!({
            "type": "object",
            "description": "A declarative configuration (`_format_version: \"3.0\"`, then \
                            the entity sections)",
            "required": ["_format_version"],
            "properties": { "_format_version": { "type": "string", "enum": ["3.0"] } },
        });
        let body = json!({
            "anyOf": [
                {
                    "type": "object", "required": ["config"],
                    "properties": { "config": {
                        "description": "The declarative configuration as YAML or JSON text, \
                                        or as an object",
                        "anyOf": [{ "type": "string" }, document.clone()],
                    } },
                },
                document,
            ],
        });
        let mut replace = Self::operation(
            format!(
                "Replace the whole running configuration with a declarative one (DB-less mode; \
                 also accepted as a raw YAML body){only_dbless}"
            ),
            &[],
            Some(body),
            (
                "201",
                response(
                    "Applied: every entity of the new configuration by table and id",
                    json!({
                        "type": "object",
                        "additionalProperties": { "type": "object" },
                    }),
                ),
            ),
            Failures {
                bad_request: true,
                body: true,
                store: true,
                ..Failures::NONE
            },
        );
        replace["parameters"] = json!([{
            "name": "check_hash", "in": "query", "required": false,
            "description": "1: answer 304 without applying when the configuration is the \
                            running one",
            "schema": { "type": "string", "enum": ["0", "1"] },
        }]);
        replace["responses"]["304"] =
            json!({ "description": "check_hash=1 and the configuration is the running one" });
        self.op("/config", "post", replace);
    }

    /// An operation with its success answer and the failures it can meet.
    fn operation(
        summary: String,
        params: &[&str],
        body: Option<Value>,
        success: (&str, Value),
        failures: Failures,
    ) -> Value {
        let mut responses = Map::new();
        responses.insert(success.0.into(), success.1);
        if failures.bad_request {
            responses.insert(
                "400".into(),
                response(
                    "Invalid input (schema violation, bad body, size or offset)",
                    reference("Error"),
                ),
            );
        }
        responses.insert(
            "401".into(),
            response(
                "`admin_token` is set and was not presented",
                reference("Error"),
            ),
        );
        if failures.not_found {
            responses.insert("404".into(), response("Not found", reference("NotFound")));
        }
        if failures.conflict {
            responses.insert(
                "409".into(),
                response(
                    "A unique field is taken, or the row kept changing while the write was \
                     applied (nothing was changed)",
                    reference("Error"),
                ),
            );
        }
        if failures.body {
            responses.insert(
                "413".into(),
                response(
                    "Body larger than `client_max_body_size`",
                    reference("Error"),
                ),
            );
        }
        if failures.store {
            responses.insert(
                "503".into(),
                response(
                    "The database is unavailable: nothing was changed (or, for a delete, the row is \
                 gone but its tokens are removed later)",
                    reference("Error"),
                ),
            );
        }
        let mut op = json!({ "summary": summary, "responses": responses });
        if !params.is_empty() {
            op["parameters"] = Value::Array(
                params
                    .iter()
                    .map(|p| {
                        let mut param = json!({
                            "name": p, "in": "path", "required": true,
                            "description": format!("The {p}'s id or its name-like key"),
                            "schema": { "type": "string" },
                        });
                        if let Some(key) = example_key(p) {
                            param["example"] = json!(key);
                        }
                        param
                    })
                    .collect(),
            );
        }
        if let Some(schema) = body {
            op["requestBody"] = json!({ "required": false, "content": json_content(schema) });
        }
        op
    }

    /// Response, input and page schemas of one entity.
    fn entity(&mut self, schema: &Schema) {
        let name = schema.name;
        let mut out = response_schema(schema);
        let mut input = input_schema(schema, true, None);
        let mut patch = input_schema(schema, false, None);
        match name {
            "services" => {
                // The write-only shorthand `expand_service_url` turns into protocol/host/port/path.
                let url =
                    json!({ "type": "string", "description": "protocol://host:port/path in one" });
                input["properties"]["url"] = url.clone();
                patch["properties"]["url"] = url;
                if let Some(Value::Array(required)) = input.get_mut("required") {
                    required.retain(|r| r != "host");
                }
            }
            "plugins" => {
                out["properties"]["config"] = json!({ "anyOf": [reference("plugin_configs")] });
                let config = json!({ "anyOf": [reference("plugin_config_inputs")] });
                input["properties"]["config"] = config.clone();
                patch["properties"]["config"] = config;
            }
            _ if name == TOKEN_SCHEMA.name => {
                for (field, ty) in TOKEN_RESPONSE_EXTRA {
                    out["properties"][*field] = json!({ "type": ty });
                }
            }
            _ => {}
        }
        if let Some(example) = example(name, None) {
            input["example"] = example;
        }
        self.schemas.insert(name.into(), out);
        self.schemas
            .insert(format!("{name}_page"), page(reference(name)));
        self.schemas.insert(format!("{name}_input"), input);
        self.schemas.insert(format!("{name}_patch"), patch);
    }

    /// `GET`/`POST` on a collection, top level or under a parent (whose key fills `field`).
    fn collection(&mut self, path: &str, schema: &Schema, parent: Option<(&str, &str)>) {
        let name = schema.name;
        let params: Vec<&str> = parent.iter().map(|(p, _)| *p).collect();
        let mut list = Self::operation(
            format!("List {name}"),
            &params,
            None,
            (
                "200",
                response("One page", reference(&format!("{name}_page"))),
            ),
            Failures {
                not_found: parent.is_some(),
                ..Failures::LIST
            },
        );
        if let Some(Value::Array(list_params)) = list.get_mut("parameters") {
            list_params.extend(paging_params());
        } else {
            list["parameters"] = Value::Array(paging_params().into());
        }
        self.op(path, "get", list);
        let create = Self::operation(
            format!("Create one of {name}"),
            &params,
            Some(body(schema, parent.map(|(_, field)| field))),
            ("201", response("Created", reference(name))),
            Failures {
                not_found: parent.is_some(),
                ..Failures::WRITE
            },
        );
        self.op(path, "post", create);
    }

    /// `GET`/`PUT`/`PATCH`/`DELETE` on one entity; `parent_field` is the foreign key filled from
    /// the URL, or `@foreign` for a parent reached through a child (no `DELETE`).
    fn item(&mut self, path: &str, schema: &Schema, params: &[&str], parent_field: Option<&str>) {
        let name = schema.name;
        let omit = parent_field.filter(|f| *f != "@foreign");
        let ok = |what: &str| ("200", response(what, reference(name)));
        let read = Self::operation(
            format!("Read one of {name}"),
            params,
            None,
            ok("The entity"),
            Failures::READ,
        );
        self.op(path, "get", read);
        let put = Self::operation(
            format!("Create or replace one of {name}"),
            params,
            Some(body(schema, omit)),
            ok("Stored"),
            Failures::WRITE,
        );
        self.op(path, "put", put);
        let patch = Self::operation(
            format!("Update fields of one of {name}"),
            params,
            Some(reference(&format!("{name}_patch"))),
            ok("Updated"),
            Failures::WRITE,
        );
        self.op(path, "patch", patch);
        if parent_field != Some("@foreign") {
            let delete = Self::operation(
                format!("Delete one of {name}"),
                params,
                None,
                ("204", no_content()),
                Failures {
                    // A certificate addressed by an SNI name that does not exist: Kong's 404.
                    not_found: parent_field.is_some() || name == "certificates",
                    ..Failures::DELETE
                },
            );
            self.op(path, "delete", delete);
        }
    }

    /// The `oauth2_tokens` endpoints, in each scope the token dispatcher serves.
    fn tokens(&mut self) {
        let name = TOKEN_SCHEMA.name;
        self.entity(&TOKEN_SCHEMA);
        for (base, scope_param, filled) in TOKEN_SCOPES {
            self.collection(base, &TOKEN_SCHEMA, scope_param.zip(filled));
            let item = format!("{base}/{{oauth2_token}}");
            let mut params: Vec<&str> = scope_param.iter().copied().collect();
            params.push("oauth2_token");
            self.item(&item, &TOKEN_SCHEMA, &params, filled);
            for (field, target) in [
                ("service", "services"),
                ("credential", "oauth2_credentials"),
            ] {
                let read = Self::operation(
                    format!("Read the {field} of one of {name}"),
                    &params,
                    None,
                    ("200", response("The entity", reference(target))),
                    Failures::READ,
                );
                self.op(&format!("{item}/{field}"), "get", read);
            }
            self.creates.push((
                (*base).to_string(),
                vec![item, "/oauth2_tokens/{oauth2_token}".into()],
                "oauth2_token",
            ));
        }
    }

    /// Each plugin's `config` schema, and the union the plugin entity refers to.
    fn plugin_configs(&mut self, plugins: &PluginRegistry) {
        let (mut outputs, mut inputs) = (Vec::new(), Vec::new());
        for name in plugins.names() {
            let Some(plugin) = plugins.get(name) else {
                continue;
            };
            let key = format!("plugin_config.{name}");
            self.schemas
                .insert(key.clone(), response_schema(plugin.schema()));
            self.schemas.insert(
                format!("{key}_input"),
                input_schema(plugin.schema(), true, None),
            );
            outputs.push(reference(&key));
            inputs.push(reference(&format!("{key}_input")));
        }
        self.schemas
            .insert("plugin_configs".into(), json!({ "anyOf": outputs }));
        self.schemas
            .insert("plugin_config_inputs".into(), json!({ "anyOf": inputs }));
    }

    /// Node information, health, schemas, the introspection cache and this document.
    fn info_paths(&mut self, plugins: &PluginRegistry) {
        let enabled = json!({
            "type": "object",
            "required": ["enabled_plugins"],
            "properties": { "enabled_plugins": {
                "type": "array", "items": { "type": "string", "enum": plugins.names() },
            } },
        });
        for (path, summary, schema) in [
            ("/", "Node information", node_schema()),
            (
                "/status",
                "Health: whether the database answers",
                status_schema(),
            ),
            ("/plugins/enabled", "Plugins this node offers", enabled),
            (
                "/openapi.json",
                "This document",
                json!({ "type": "object" }),
            ),
        ] {
            // `/status` reports an unreachable store in its body, not as an error.
            let op = Self::operation(
                summary.into(),
                &[],
                None,
                ("200", response(summary, schema)),
                Failures::NONE,
            );
            self.op(path, "get", op);
        }
        // The Prometheus text, not JSON.
        let mut metrics = Self::operation(
            "Metrics in the Prometheus text format".into(),
            &[],
            None,
            ("200", no_content()),
            Failures::NONE,
        );
        metrics["responses"]["200"] = json!({
            "description": "Metrics in the Prometheus text format (0.0.4)",
            "content": { "text/plain": { "schema": { "type": "string" } } },
        });
        self.op("/metrics", "get", metrics);
        let fields = json!({
            "type": "object",
            "required": ["fields"],
            "properties": { "fields": { "type": "array", "items": { "type": "object" } } },
        });
        for (path, param) in [
            ("/schemas/{entity}", "entity"),
            ("/schemas/plugins/{plugin_name}", "plugin_name"),
            ("/plugins/schema/{plugin_name}", "plugin_name"),
        ] {
            let op = Self::operation(
                format!("The schema of one {param}"),
                &[param],
                None,
                ("200", response("The schema", fields.clone())),
                Failures {
                    not_found: true,
                    ..Failures::NONE
                },
            );
            self.op(path, "get", op);
        }
        let validated = json!({
            "type": "object",
            "required": ["message"],
            "properties": { "message": { "type": "string" } },
        });
        for (path, params) in [
            ("/schemas/{entity}/validate", &["entity"][..]),
            ("/schemas/plugins/validate", &[][..]),
        ] {
            let op = Self::operation(
                "Validate a body as a create would, storing nothing".into(),
                params,
                Some(json!({ "type": "object" })),
                ("200", response("The body is valid", validated.clone())),
                Failures {
                    bad_request: true,
                    not_found: !params.is_empty(),
                    body: true,
                    ..Failures::NONE
                },
            );
            self.op(path, "post", op);
        }
        let evict = Self::operation(
            "Evict a token's cached oauth2-introspection verdicts on every node".into(),
            &["token_or_digest"],
            None,
            ("204", no_content()),
            Failures {
                store: true,
                ..Failures::NONE
            },
        );
        self.op(
            "/oauth2-introspection/cache/{token_or_digest}",
            "delete",
            evict,
        );
    }

    /// Links from each creating operation to the operations that address what it created (its
    /// `id`), the other path parameters taken from the creating request.
    fn link_creations(&mut self) {
        for (post, prefixes, created) in std::mem::take(&mut self.creates) {
            let known = path_params(&post);
            let mut links = Map::new();
            for (path, item) in &self.paths {
                if !prefixes
                    .iter()
                    .any(|p| path == p || path.starts_with(&format!("{p}/")))
                {
                    continue;
                }
                let needed = path_params(path);
                if !needed.iter().all(|n| *n == created || known.contains(n)) {
                    continue;
                }
                let parameters: Map<String, Value> = needed
                    .iter()
                    .map(|n| {
                        let source = if *n == created {
                            "$response.body#/id".to_string()
                        } else {
                            format!("$request.path.{n}")
                        };
                        ((*n).to_string(), Value::String(source))
                    })
                    .collect();
                for op in item.as_object().into_iter().flat_map(Map::values) {
                    if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                        links.insert(
                            id.to_string(),
                            json!({ "operationId": id, "parameters": parameters }),
                        );
                    }
                }
            }
            if let Some(response) = self
                .paths
                .get_mut(&post)
                .and_then(|p| p.pointer_mut("/post/responses/201"))
            {
                response["links"] = Value::Object(links);
            }
        }
    }

    fn finish(mut self) -> Value {
        self.link_creations();
        self.schemas.insert(
            "Error".into(),
            json!({
                "type": "object",
                "description": "Kong's error shape; `code`, `name` and `fields` are set for \
                                schema, unique and foreign-key violations and paging errors",
                "required": ["message"],
                "properties": {
                    "code": { "type": "integer" },
                    "name": { "type": "string" },
                    "message": { "type": "string" },
                    "fields": { "type": "object" },
                },
            }),
        );
        self.schemas.insert(
            "NotFound".into(),
            json!({
                "type": "object",
                "required": ["message"],
                // `SNI not found`: a certificate addressed by a server name no certificate has
                // (Kong's message).
                "properties": { "message": { "enum": ["Not found", "SNI not found"] } },
            }),
        );
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Portcullis admin API",
                "version": super::info::VERSION,
                "description": "Kong-compatible admin API. Request bodies may also be sent as \
                                url-encoded or multipart forms (dotted keys for records, `a[]` \
                                for arrays). Entities are addressed by id or by their name-like \
                                key (name, username, instance_name, client_id).",
            },
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {
                    "adminToken": { "type": "apiKey", "in": "header", "name": "Kong-Admin-Token" },
                },
            },
            // The token is only checked when `admin_token` is set.
            "security": [{}, { "adminToken": [] }],
            "paths": self.paths,
        })
    }
}

/// The request body of a create or replace: the entity's input schema, or (under a parent) an
/// inline copy without the foreign key the URL fills, with its example.
fn body(schema: &Schema, omit: Option<&str>) -> Value {
    let name = schema.name;
    let Some(field) = omit else {
        return reference(&format!("{name}_input"));
    };
    let mut body = input_schema(schema, true, Some(field));
    if let Some(example) = example(name, Some(field)) {
        body["example"] = example;
    }
    body
}

/// A valid body for creating one entity of `table` (without the foreign key `omit` that a nested
/// path fills), so that generated and hand-written calls can start from one that is accepted.
/// Each entity's example refers to the others' by their [`example_key`].
fn example(table: &str, omit: Option<&str>) -> Option<Value> {
    let mut example = match table {
        "services" => json!({ "name": "example-service", "url": "http://example.com:8080/api" }),
        "routes" => json!({
            "name": "example-route", "paths": ["/example"],
            "service": { "name": "example-service" },
        }),
        "consumers" => json!({ "username": "example-user" }),
        "plugins" => json!({
            "name": "request-termination", "instance_name": "example-plugin",
            "config": { "status_code": 503, "message": "closed" },
        }),
        "oauth2_credentials" => json!({
            "name": "example-app", "client_id": "example-client",
            "redirect_uris": ["https://example.com/cb"],
            "consumer": { "username": "example-user" },
        }),
        "keyauth_credentials" => json!({
            "key": "example-key", "consumer": { "username": "example-user" },
        }),
        "acls" => json!({ "group": "example-group", "consumer": { "username": "example-user" } }),
        "upstreams" => json!({ "name": "example.upstream" }),
        "targets" => json!({ "target": "127.0.0.1:8080", "weight": 100 }),
        _ => return None,
    };
    if let (Some(field), Some(o)) = (omit, example.as_object_mut()) {
        o.remove(field);
    }
    Some(example)
}

/// The name-like key of a path parameter's entity in [`example`].
fn example_key(param: &str) -> Option<&'static str> {
    Some(match param {
        "service" => "example-service",
        "route" => "example-route",
        "consumer" => "example-user",
        "plugin" => "example-plugin",
        "oauth2_credential" => "example-client",
        "keyauth_credential" => "example-key",
        "upstream" => "example.upstream",
        "target" => "127.0.0.1:8080",
        "entity" => "services",
        "plugin_name" => "oauth2",
        _ => return None,
    })
}

/// A unique, readable operation id: `get_services_service_routes`.
fn operation_id(method: &str, path: &str) -> String {
    let rest: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_matches(|c| c == '{' || c == '}')
                .replace(['.', '-'], "_")
        })
        .collect();
    if rest.is_empty() {
        format!("{method}_root")
    } else {
        format!("{method}_{}", rest.join("_"))
    }
}

/// The `{parameters}` of a path template.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// `GET /` (see `info::node`).
fn node_schema() -> Value {
    json!({
        "type": "object",
        "required": ["version", "tagline", "node_id", "plugins", "configuration"],
        "properties": {
            "version": { "type": "string" },
            "tagline": { "type": "string" },
            "node_id": { "type": "string", "format": "uuid" },
            "hostname": { "type": "string" },
            "plugins": { "type": "object", "properties": {
                "available_on_server": { "type": "object" },
                "enabled_in_cluster": { "type": "array", "items": { "type": "string" } },
            } },
            "configuration": { "type": ["object", "null"] },
        },
    })
}

/// `GET /status` (see `info::status`).
fn status_schema() -> Value {
    json!({
        "type": "object",
        "required": ["database", "server", "configuration"],
        "properties": {
            "database": { "type": "object", "properties": { "reachable": { "type": "boolean" } } },
            "server": { "type": "object", "properties": { "uptime_seconds": { "type": "integer" } } },
            "configuration": { "type": "object", "properties": {
                "version": { "type": "integer" }, "routes": { "type": "integer" },
            } },
        },
    })
}

/// Kong's `size` and `offset` query parameters of lists.
fn paging_params() -> [Value; 3] {
    [
        json!({ "name": "size", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } }),
        json!({ "name": "offset", "in": "query", "required": false,
                "description": "The `offset` of the previous page",
                "schema": { "type": "string" } }),
        json!({ "name": "tags", "in": "query", "required": false,
                "description": "`a,b`: tagged a or b; `a/b`: tagged a and b",
                "schema": { "type": "string" } }),
    ]
}

fn page(item: Value) -> Value {
    json!({
        "type": "object",
        "required": ["data", "next"],
        "properties": {
            "data": { "type": "array", "items": item },
            "next": { "type": ["string", "null"] },
            "offset": { "type": "string" },
        },
    })
}

/// A value of `ty` as the API returns it.
fn output_type(field: &Field, ty: &FieldType) -> Value {
    let mut s = match ty {
        FieldType::String => json!({ "type": "string" }),
        FieldType::Uuid => json!({ "type": "string", "format": "uuid" }),
        FieldType::Integer => json!({ "type": "integer" }),
        FieldType::Number => json!({ "type": "number" }),
        FieldType::Boolean => json!({ "type": "boolean" }),
        FieldType::Array(el) | FieldType::Set(el) => {
            json!({ "type": "array", "items": output_type(field, el) })
        }
        FieldType::StringListMap => json!({
            "type": "object",
            "additionalProperties": { "type": "array", "items": { "type": "string" } },
        }),
        FieldType::StringMap => {
            json!({ "type": "object", "additionalProperties": { "type": "string" } })
        }
        FieldType::Record(inner) => response_schema(inner),
        FieldType::AnyRecord => json!({ "type": "object" }),
        FieldType::Foreign(_) => json!({
            "type": "object",
            "required": ["id"],
            "properties": { "id": { "type": "string", "format": "uuid" } },
        }),
    };
    constrain(field, ty, &mut s);
    s
}

/// The `one_of` and `between` constraints of a field on a scalar schema.
fn constrain(field: &Field, ty: &FieldType, s: &mut Value) {
    if matches!(ty, FieldType::String) && !field.one_of.is_empty() {
        s["enum"] = json!(field.one_of);
    }
    if let (FieldType::Integer, Some((lo, hi))) = (ty, field.between) {
        s["minimum"] = json!(lo);
        s["maximum"] = json!(hi);
    }
}

/// Allows `null` besides the schema's own type.
fn nullable(mut s: Value) -> Value {
    match s.get("type").cloned() {
        Some(Value::String(t)) => {
            s["type"] = json!([t, "null"]);
            if let Some(Value::Array(values)) = s.get_mut("enum") {
                values.push(Value::Null);
            }
            s
        }
        _ => json!({ "anyOf": [s, { "type": "null" }] }),
    }
}

/// A record as the API returns it: every readable field, `null` where not required.
fn response_schema(schema: &Schema) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in schema.fields.iter().filter(|f| !f.write_only) {
        let ty = output_type(field, &field.ty);
        if field.required {
            required.push(field.name);
            properties.insert(field.name.into(), ty);
        } else {
            properties.insert(field.name.into(), nullable(ty));
        }
    }
    json!({ "type": "object", "required": required, "properties": properties })
}

/// A value of `ty` as the API accepts it in JSON.
fn input_type(field: &Field, ty: &FieldType) -> Value {
    let mut s = match ty {
        FieldType::String if field.pattern.is_some() => json!({
            "type": "string",
            "pattern": format!("^(?:{})$", field.pattern.unwrap_or_default()),
        }),
        FieldType::Array(el) | FieldType::Set(el) => {
            json!({ "type": "array", "items": input_type(field, el) })
        }
        FieldType::StringListMap => json!({
            "type": "object",
            "additionalProperties": { "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } },
            ] },
        }),
        FieldType::Record(inner) => input_schema(inner, true, None),
        FieldType::Foreign(_) => json!({
            "anyOf": [
                { "type": "object", "properties": { "id": { "type": "string", "format": "uuid" } } },
                { "type": "string", "format": "uuid" },
            ],
            "description": "`{\"id\": …}`, or the referenced entity's name-like key \
                            (`{\"name\": …}`), or the bare id",
        }),
        other => return output_type(field, other),
    };
    constrain(field, ty, &mut s);
    s
}

/// A record as the API accepts it; `required` lists the required fields without a default
/// (none for `PATCH`); `omit` is a foreign key filled from the URL. Unknown fields are refused.
fn input_schema(schema: &Schema, required: bool, omit: Option<&str>) -> Value {
    let mut properties = Map::new();
    let mut must = Vec::new();
    for field in &schema.fields {
        if Some(field.name) == omit {
            continue;
        }
        let ty = input_type(field, &field.ty);
        if field.required && field.default.is_none() {
            must.push(field.name);
        }
        // `null` means "absent" for an optional field; a required one refuses it, default or not.
        let ty = if field.required { ty } else { nullable(ty) };
        properties.insert(field.name.into(), ty);
    }
    let mut s = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    if required && !must.is_empty() {
        s["required"] = json!(must);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn registry() -> PluginRegistry {
        PluginRegistry::builtin(
            crate::plugins::oauth2::OAuthDeps::in_memory(std::sync::Arc::new(
                portcullis_stores::memory::MemoryTokenStore::new(),
            )),
            crate::plugins::introspection::IntrospectionCache::default(),
            crate::plugins::rate_limiting::RateLimitDeps::default(),
        )
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document(&registry());
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{} references", found.len());
        for r in found {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn every_dispatcher_path_is_described() {
        let doc = document(&registry());
        let paths = doc["paths"].as_object().unwrap();
        for want in [
            "/services/{service}",
            "/services/{service}/routes/{route}",
            "/consumers/{consumer}/oauth2/{oauth2_credential}",
            "/routes/{route}/service",
            "/plugins/{plugin}/consumer",
            "/oauth2/{oauth2_credential}/oauth2_tokens/{oauth2_token}/credential",
            "/services/{service}/oauth2_tokens",
            "/oauth2-introspection/cache/{token_or_digest}",
            "/schemas/plugins/{plugin_name}",
            "/schemas/{entity}/validate",
            "/schemas/plugins/validate",
            "/openapi.json",
            "/metrics",
            "/config",
        ] {
            assert!(paths.contains_key(want), "{want} missing");
        }
        assert!(paths["/routes/{route}/service"].get("delete").is_none());
        assert_eq!(
            doc["components"]["schemas"]["routes"]["properties"]["protocols"]["items"]["enum"],
            json!(crate::entities::ROUTE_PROTOCOLS)
        );
    }

    #[test]
    fn operation_ids_are_unique_and_links_point_at_them() {
        let doc = document(&registry());
        let mut ids = std::collections::HashSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "{id} twice");
            }
        }
        let links = doc["paths"]["/services/{service}/routes"]["post"]["responses"]["201"]["links"]
            .as_object()
            .unwrap();
        assert_eq!(
            links["get_services_service_routes_route"]["parameters"],
            json!({ "service": "$request.path.service", "route": "$response.body#/id" })
        );
        assert_eq!(
            links["patch_routes_route"]["parameters"],
            json!({ "route": "$response.body#/id" })
        );
        let from_services = doc["paths"]["/services"]["post"]["responses"]["201"]["links"]
            .as_object()
            .unwrap();
        assert_eq!(
            from_services["post_services_service_routes"]["parameters"],
            json!({ "service": "$response.body#/id" })
        );
        let from_tokens = doc["paths"]["/oauth2_tokens"]["post"]["responses"]["201"]["links"]
            .as_object()
            .unwrap();
        assert!(from_tokens.contains_key("get_oauth2_tokens_oauth2_token_credential"));
        for link in links.values() {
            assert!(ids.contains(link["operationId"].as_str().unwrap()));
        }
    }

    #[test]
    fn plugin_config_schemas_come_from_the_plugins() {
        let doc = document(&registry());
        let schemas = &doc["components"]["schemas"];
        for name in registry().names() {
            assert!(
                schemas.get(format!("plugin_config.{name}_input")).is_some(),
                "{name}"
            );
        }
        assert!(schemas["plugin_config.oauth2_input"]["properties"]
            .get("enable_authorization_code")
            .is_some());
    }
}
