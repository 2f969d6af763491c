//! decK against this gateway: the admin API calls `deck gateway dump`, `deck gateway diff`,
//! `deck gateway sync` and `deck gateway validate --online` make against a Kong 3.x node (no
//! workspace, OSS), replayed in decK's order, every answer decoded as go-kong's structs decode it
//! and compared as go-database-reconciler compares it. Each case runs on the memory store
//! (`deck::memory::…`) and on Postgres (`deck::postgres::…`).
//!
//! Which source each step follows (`Kong/deck` at 4657ee37, which calls
//! `Kong/go-database-reconciler` at 8f5e476, which calls `Kong/go-kong` at dae27d2):
//! - **Version.** decK `cmd/common.go` `fetchKongVersion` → go-kong `kong/client.go`
//!   `Client.Root` (`GET /`, `version` asserted to be a string) → reconciler `pkg/utils`
//!   `ParseKongVersion`; `syncContent` refuses a `_format_version: "3.0"` file below 3.0.
//!   reconciler `pkg/dump/dump.go` `isKongVersion34Plus` → go-kong `kong/information_service.go`
//!   `InfoService.Get`, decoding `GET /` into `Info` (`kong/info.go`: `configuration.database`
//!   string, `portal` bool, `rbac` string).
//! - **Workspaces.** decK `cmd/common.go` `workspaceExists` and reconciler `pkg/utils/utils.go`
//!   `WorkspaceExists` return true without a request when no workspace is named: OSS decK never
//!   calls `GET /workspaces`.
//! - **Dump.** reconciler `pkg/dump/dump.go` `Get` → `getProxyConfiguration`,
//!   `getConsumerGroupsConfiguration`, `getConsumerConfiguration`; every `GetAll*` lists with
//!   `newOpt` (`size=1000`, select tags joined by `,`) through go-kong `kong/list.go`
//!   `Client.list`, which reads `data` and the next page's `offset` (a string, or absent/null on
//!   the last page; `next` is never read). Targets are listed per upstream (`GetAllTargets`,
//!   `/upstreams/{id}/targets`). A 404 is an empty list for `keys`, `key-sets`, `partials`,
//!   `vaults`, `consumer_groups`, `ca_certificates`, `filter-chains` and every credential list;
//!   any other error fails the dump.
//! - **Defaults.** reconciler `pkg/utils/defaulter.go` `getKongDefaulterWithClient` →
//!   `pkg/schema/fetchers.go` `FetchEntitySchema`: `GET /schemas/{services,routes,upstreams,
//!   targets,consumer_group_plugins}` (404: no defaults); go-kong `kong/utils.go`
//!   `FillEntityDefaults` (`flattenLuaSchema`, decoded into the entity's struct, merged into unset
//!   fields). Plugins: reconciler `pkg/types/plugin.go` `createUpdatePlugin` → go-kong
//!   `kong/plugin_service.go` `GetFullSchema` (`GET /schemas/plugins/{name}`) →
//!   `FillPluginsDefaultsWithPartials` (`kong/utils.go` `fillConfigRecord`).
//! - **Diff.** reconciler `pkg/state/types.go` `*.EqualWithOpts`: `reflect.DeepEqual` of the
//!   go-kong structs with empty tags as nil, tags sorted, timestamps cleared and foreign names
//!   cleared; plugins are matched by (name, service, route, consumer) and compared with the
//!   target's defaults filled.
//! - **Sync.** reconciler `pkg/diff/diff.go` `Syncer.diff`: `deleteDuplicates`, then
//!   `createUpdate` level by level in `pkg/diff/order.go` `dependencyOrder` (certificates and
//!   consumers; SNIs, services, upstreams and credentials; routes and targets; plugins), then
//!   `delete` in the reverse order. Creates and updates both call go-kong's `Create` with the id
//!   decK generated: `PUT /{entity}/{id}` (`kong/service_service.go` `Svcservice.Create`, and the
//!   route, consumer, plugin, upstream, certificate and SNI services alike);
//!   `kong/credentials_service.go` `credentialService.Create`: `PUT /consumers/{c}/oauth2/{id}`;
//!   `kong/target_service.go` `TargetService.Create`: `PUT /upstreams/{u}/targets/{id}`, then
//!   `POST /upstreams/{u}/targets` on 404, and `Update`: `PUT`. A certificate create is preceded
//!   by `GET /certificates/{id}` expecting 404 (reconciler `pkg/types/certificate.go`
//!   `createUpdateCertificate`). Deletes are `DELETE /{entity}/{id}`,
//!   `/consumers/{c}/oauth2/{id}` and `/upstreams/{u}/targets/{id}` (`pkg/types/*.go` `Delete`).
//! - **Validate.** decK `validate/validate.go` `validateEntity`: `POST /schemas/{table}/validate`
//!   for each entity of the file, 200 expected; go-kong `PluginService.Validate`:
//!   `POST /schemas/plugins/validate`. Kong's own cases for these endpoints
//!   (`spec/02-integration/04-admin_api/02-kong_routes_spec.lua`,
//!   `/schemas/:db_entity_name/validate`) are ported in V1.
//!
//! Not replayed: key-auth credentials (this gateway keeps only a key's digest, so a dump cannot
//! return the key and decK would update every key-auth on each sync), consumer groups, vaults,
//! keys and partials (not entities here: their lists answer empty or 404 as decK tolerates).

use std::collections::HashMap;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::helpers::{spawn_pg_app, spawn_with, test_settings, TestApp};

/// Which store the gateway runs on.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Memory,
    Postgres,
}

async fn app(store: Store) -> TestApp {
    match store {
        Store::Memory => spawn_with(test_settings()).await,
        Store::Postgres => spawn_pg_app().await,
    }
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Postgres).await;
                }
            )*
        }
    };
}

on_every_store!(
    k1_root_parses_as_go_kong_reads_it,
    k2_dump_of_an_empty_gateway,
    k3_sync_dump_diff_then_update_and_delete,
    k4_dump_pages_with_offset_and_tags,
    v1_validate_endpoints,
);

// ------------------------------------------------------------------------------------------------
// go-kong's structs, field for field: a pointer is an `Option`, a slice an `Option<Vec>` (Go keeps
// `[]` and null apart, and `reflect.DeepEqual` does too), a JSON number must fit the Go type.
// ------------------------------------------------------------------------------------------------

/// `kong/info.go` `Info`.
#[derive(Debug, Deserialize)]
struct Info {
    version: Option<String>,
    configuration: Option<RuntimeConfiguration>,
}

/// `kong/info.go` `RuntimeConfiguration`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct RuntimeConfiguration {
    database: Option<String>,
    portal: Option<bool>,
    rbac: Option<String>,
}

/// `kong/list.go` `Client.list`'s page.
#[derive(Debug, Deserialize)]
struct Page {
    data: Vec<Value>,
    offset: Option<String>,
}

/// `kong/service.go` `Service`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Service {
    client_certificate: Option<Box<Certificate>>,
    connect_timeout: Option<i64>,
    created_at: Option<i64>,
    enabled: Option<bool>,
    host: Option<String>,
    id: Option<String>,
    name: Option<String>,
    path: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    read_timeout: Option<i64>,
    retries: Option<i64>,
    updated_at: Option<i64>,
    url: Option<String>,
    write_timeout: Option<i64>,
    tags: Option<Vec<String>>,
    tls_sans: Option<Sans>,
    tls_verify: Option<bool>,
    tls_verify_depth: Option<i64>,
    ca_certificates: Option<Vec<String>>,
}

/// `kong/service.go` `SANs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sans {
    dnsnames: Option<Vec<String>>,
    uris: Option<Vec<String>>,
}

/// `kong/route.go` `Route`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Route {
    created_at: Option<i64>,
    expression: Option<String>,
    hosts: Option<Vec<String>>,
    headers: Option<HashMap<String, Vec<String>>>,
    id: Option<String>,
    name: Option<String>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    path_handling: Option<String>,
    preserve_host: Option<bool>,
    priority: Option<u64>,
    protocols: Option<Vec<String>>,
    regex_priority: Option<i64>,
    service: Option<Box<Service>>,
    strip_path: Option<bool>,
    updated_at: Option<i64>,
    snis: Option<Vec<String>>,
    sources: Option<Vec<CidrPort>>,
    destinations: Option<Vec<CidrPort>>,
    tags: Option<Vec<String>>,
    https_redirect_status_code: Option<i64>,
    request_buffering: Option<bool>,
    response_buffering: Option<bool>,
}

/// `kong/route.go` `CIDRPort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CidrPort {
    ip: Option<String>,
    port: Option<i64>,
}

/// `kong/consumer.go` `Consumer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Consumer {
    id: Option<String>,
    custom_id: Option<String>,
    username: Option<String>,
    created_at: Option<i64>,
    tags: Option<Vec<String>>,
}

/// `kong/credentials.go` `Oauth2Credential`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Oauth2Credential {
    consumer: Option<Box<Consumer>>,
    created_at: Option<i64>,
    id: Option<String>,
    name: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_type: Option<String>,
    hash_secret: Option<bool>,
    redirect_uris: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

/// `kong/plugin.go` `Plugin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plugin {
    created_at: Option<i64>,
    id: Option<String>,
    name: Option<String>,
    instance_name: Option<String>,
    route: Option<Box<Route>>,
    service: Option<Box<Service>>,
    consumer: Option<Box<Consumer>>,
    consumer_group: Option<ConsumerGroup>,
    config: Option<Map<String, Value>>,
    enabled: Option<bool>,
    run_on: Option<String>,
    condition: Option<String>,
    ordering: Option<PluginOrdering>,
    protocols: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

/// `kong/consumer_group.go` `ConsumerGroup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ConsumerGroup {
    id: Option<String>,
    name: Option<String>,
    created_at: Option<i64>,
    tags: Option<Vec<String>>,
}

/// `kong/plugin.go` `PluginOrdering`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PluginOrdering {
    before: Option<HashMap<String, Vec<String>>>,
    after: Option<HashMap<String, Vec<String>>>,
}

/// `kong/upstream.go` `Upstream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Upstream {
    id: Option<String>,
    name: Option<String>,
    host_header: Option<String>,
    client_certificate: Option<Box<Certificate>>,
    algorithm: Option<String>,
    slots: Option<i64>,
    healthchecks: Option<Healthcheck>,
    created_at: Option<i64>,
    hash_on: Option<String>,
    hash_fallback: Option<String>,
    hash_on_header: Option<String>,
    hash_fallback_header: Option<String>,
    hash_on_cookie: Option<String>,
    hash_on_cookie_path: Option<String>,
    hash_on_query_arg: Option<String>,
    hash_fallback_query_arg: Option<String>,
    hash_on_uri_capture: Option<String>,
    hash_fallback_uri_capture: Option<String>,
    use_srv_name: Option<bool>,
    sticky_sessions_cookie: Option<String>,
    sticky_sessions_cookie_path: Option<String>,
    tags: Option<Vec<String>>,
}

/// `kong/upstream.go` `Healthcheck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Healthcheck {
    active: Option<ActiveHealthcheck>,
    passive: Option<PassiveHealthcheck>,
    threshold: Option<f64>,
}

/// `kong/upstream.go` `ActiveHealthcheck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ActiveHealthcheck {
    concurrency: Option<i64>,
    healthy: Option<Healthy>,
    http_path: Option<String>,
    https_sni: Option<String>,
    https_verify_certificate: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<String>,
    timeout: Option<i64>,
    unhealthy: Option<Unhealthy>,
    headers: Option<HashMap<String, Vec<String>>>,
}

/// `kong/upstream.go` `PassiveHealthcheck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PassiveHealthcheck {
    healthy: Option<Healthy>,
    #[serde(rename = "type")]
    kind: Option<String>,
    unhealthy: Option<Unhealthy>,
}

/// `kong/upstream.go` `Healthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Healthy {
    http_statuses: Option<Vec<i64>>,
    interval: Option<i64>,
    successes: Option<i64>,
}

/// `kong/upstream.go` `Unhealthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unhealthy {
    http_failures: Option<i64>,
    http_statuses: Option<Vec<i64>>,
    tcp_failures: Option<i64>,
    timeouts: Option<i64>,
    interval: Option<i64>,
}

/// `kong/target.go` `Target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Target {
    created_at: Option<f64>,
    id: Option<String>,
    target: Option<String>,
    upstream: Option<Box<Upstream>>,
    weight: Option<i64>,
    tags: Option<Vec<String>>,
    failover: Option<bool>,
}

/// `kong/certificate.go` `Certificate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Certificate {
    id: Option<String>,
    cert: Option<String>,
    cert_alt: Option<String>,
    key: Option<String>,
    key_alt: Option<String>,
    created_at: Option<i64>,
    snis: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

/// `kong/sni.go` `SNI`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sni {
    id: Option<String>,
    name: Option<String>,
    created_at: Option<i64>,
    certificate: Option<Box<Certificate>>,
    tags: Option<Vec<String>>,
}

/// Decodes `v` as go-kong decodes it into `T` (panics, naming `what`, where Go's decoder fails).
fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> T {
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("go-kong cannot decode {what}: {e}\n{v:#}"))
}

/// `v` decoded into go-kong's `T` and re-encoded: only the fields go-kong keeps, nil pointers
/// dropped (a plugin's `config` is a Go map: its nulls are entries, kept).
fn as_go_kong<T: DeserializeOwned + Serialize>(what: &str, v: &Value) -> Value {
    let typed: T = decode(what, v);
    let mut out = serde_json::to_value(typed).unwrap();
    strip_nil_pointers(&mut out);
    out
}

fn strip_nil_pointers(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            for (k, v) in o.iter_mut() {
                if k != "config" {
                    strip_nil_pointers(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nil_pointers),
        _ => {}
    }
}

/// reconciler `pkg/state/types.go` `EqualWithOpts(…, ignoreID=false, ignoreTS=true, …)`: tags
/// empty → nil and sorted, timestamps cleared, foreign references compared by id only, plugin
/// protocols sorted.
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    for ts in ["created_at", "updated_at"] {
        o.remove(ts);
    }
    match o.get_mut("tags") {
        Some(Value::Array(tags)) if tags.is_empty() => {
            o.remove("tags");
        }
        Some(Value::Array(tags)) => tags.sort_by_key(|t| t.as_str().unwrap_or_default().to_owned()),
        _ => {}
    }
    let plugin = o.contains_key("config");
    if let (true, Some(Value::Array(p))) = (plugin, o.get_mut("protocols")) {
        p.sort_by_key(|t| t.as_str().unwrap_or_default().to_owned());
    }
    for (fk, name) in [
        ("service", "name"),
        ("route", "name"),
        ("consumer", "username"),
    ] {
        if let Some(Value::Object(r)) = o.get_mut(fk) {
            r.remove(name);
        }
    }
    v
}

// ------------------------------------------------------------------------------------------------
// decK's calls
// ------------------------------------------------------------------------------------------------

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    app.admin_call(method, path, body).await
}

/// reconciler `pkg/dump/dump.go` `GetAll*`: every page of `path` (go-kong `Client.list`:
/// `size`, `tags`, then the `offset` each page hands back), or `None` on a 404 decK tolerates.
async fn list_all(app: &TestApp, path: &str, size: usize, tags: &[&str]) -> Option<Vec<Value>> {
    let mut query = format!("size={size}");
    if !tags.is_empty() {
        query.push_str(&format!("&tags={}", tags.join(",")));
    }
    let mut all = Vec::new();
    let mut offset: Option<String> = None;
    loop {
        let url = match &offset {
            Some(o) => format!("{path}?{query}&offset={o}"),
            None => format!("{path}?{query}"),
        };
        let (s, body) = app.admin_get(&url).await;
        if s == 404 {
            assert!(all.is_empty(), "{path}: 404 after a page");
            return None;
        }
        assert_eq!(s, 200, "{url}: {body}");
        let page: Page = decode(&format!("the page of {path}"), &body);
        all.extend(page.data);
        match page.offset {
            Some(next) => offset = Some(next),
            None => return Some(all),
        }
    }
}

/// Lists whose 404 the dump takes as "none" (`dump.go`: `IsNotFoundErr` branches).
const TOLERATED: [&str; 14] = [
    "/keys",
    "/key-sets",
    "/partials",
    "/vaults",
    "/consumer_groups",
    "/ca_certificates",
    "/filter-chains",
    "/key-auths",
    "/hmac-auths",
    "/jwts",
    "/basic-auths",
    "/oauth2",
    "/acls",
    "/mtls-auths",
];

/// Lists that must answer 200 (any error fails the dump).
const REQUIRED: [&str; 7] = [
    "/services",
    "/routes",
    "/plugins",
    "/certificates",
    "/snis",
    "/consumers",
    "/upstreams",
];

/// What `deck gateway dump` reads, each row decoded and re-encoded as go-kong keeps it.
#[derive(Debug, Default, PartialEq)]
struct Dump {
    services: Vec<Value>,
    routes: Vec<Value>,
    plugins: Vec<Value>,
    certificates: Vec<Value>,
    snis: Vec<Value>,
    consumers: Vec<Value>,
    upstreams: Vec<Value>,
    targets: Vec<Value>,
    oauth2: Vec<Value>,
}

impl Dump {
    fn total(&self) -> usize {
        self.services.len()
            + self.routes.len()
            + self.plugins.len()
            + self.certificates.len()
            + self.snis.len()
            + self.consumers.len()
            + self.upstreams.len()
            + self.targets.len()
            + self.oauth2.len()
    }
}

fn sorted_by_id(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| r["id"].as_str().unwrap_or_default().to_owned());
    rows
}

/// reconciler `dump.Get`: the version check of `isKongVersion34Plus`, then every list.
async fn dump(app: &TestApp, size: usize, tags: &[&str]) -> Dump {
    let (s, root) = app.admin_get("/").await;
    assert_eq!(s, 200);
    let info: Info = decode("GET /", &root);
    assert!(info.version.is_some());
    let mut out = Dump::default();
    for path in REQUIRED {
        let rows = list_all(app, path, size, tags)
            .await
            .unwrap_or_else(|| panic!("{path} must answer 200"));
        let rows: Vec<Value> = match path {
            "/services" => rows
                .iter()
                .map(|r| as_go_kong::<Service>(path, r))
                .collect(),
            "/routes" => rows.iter().map(|r| as_go_kong::<Route>(path, r)).collect(),
            "/plugins" => rows.iter().map(|r| as_go_kong::<Plugin>(path, r)).collect(),
            // dump.go `GetAllCertificates` drops `snis`: SNIs are dumped on their own.
            "/certificates" => rows
                .iter()
                .map(|r| {
                    let mut c = as_go_kong::<Certificate>(path, r);
                    c.as_object_mut().unwrap().remove("snis");
                    c
                })
                .collect(),
            "/snis" => rows.iter().map(|r| as_go_kong::<Sni>(path, r)).collect(),
            "/consumers" => rows
                .iter()
                .map(|r| as_go_kong::<Consumer>(path, r))
                .collect(),
            _ => rows
                .iter()
                .map(|r| as_go_kong::<Upstream>(path, r))
                .collect(),
        };
        let rows = sorted_by_id(rows);
        match path {
            "/services" => out.services = rows,
            "/routes" => out.routes = rows,
            "/plugins" => out.plugins = rows,
            "/certificates" => out.certificates = rows,
            "/snis" => out.snis = rows,
            "/consumers" => out.consumers = rows,
            _ => out.upstreams = rows,
        }
    }
    for upstream in out.upstreams.clone() {
        let path = format!("/upstreams/{}/targets", upstream["id"].as_str().unwrap());
        let rows = list_all(app, &path, size, tags)
            .await
            .unwrap_or_else(|| panic!("{path} must answer 200"));
        out.targets
            .extend(rows.iter().map(|r| as_go_kong::<Target>(&path, r)));
    }
    out.targets = sorted_by_id(std::mem::take(&mut out.targets));
    for path in TOLERATED {
        let rows = list_all(app, path, size, tags).await.unwrap_or_default();
        match path {
            "/oauth2" => {
                out.oauth2 = sorted_by_id(
                    rows.iter()
                        .map(|r| as_go_kong::<Oauth2Credential>(path, r))
                        .collect(),
                );
            }
            // Rows of kinds this case never writes: none may appear.
            _ => assert!(rows.is_empty(), "{path}: {rows:?}"),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// decK's defaults
// ------------------------------------------------------------------------------------------------

/// go-kong `kong/utils.go` `flattenLuaSchema`: `{field: default}` (records flattened in place,
/// null where no default).
fn flatten_defaults(schema: &Value) -> Value {
    let mut out = Map::new();
    for field in schema["fields"].as_array().cloned().unwrap_or_default() {
        let (name, def) = field.as_object().unwrap().iter().next().unwrap();
        let value = if def["type"] == "record" {
            flatten_defaults(def)
        } else {
            def.get("default").cloned().unwrap_or(Value::Null)
        };
        out.insert(name.clone(), value);
    }
    Value::Object(out)
}

/// mergo's `Merge(entity, defaults)`: unset (nil or empty) fields take the default; structs on
/// both sides merge field by field.
fn merge_defaults(target: &mut Value, defaults: &Value) {
    let (Some(t), Some(d)) = (target.as_object_mut(), defaults.as_object()) else {
        return;
    };
    for (k, dv) in d {
        match t.get_mut(k) {
            None | Some(Value::Null) => {
                if !dv.is_null() {
                    t.insert(k.clone(), dv.clone());
                }
            }
            Some(Value::Array(a)) if a.is_empty() && !dv.is_null() => {
                t.insert(k.clone(), dv.clone());
            }
            Some(tv @ Value::Object(_)) if dv.is_object() => merge_defaults(tv, dv),
            Some(_) => {}
        }
    }
}

/// reconciler `defaulter.go` `addEntityDefaults`: `GET /schemas/{entity}`, flattened and decoded
/// into go-kong's struct (which must accept every default's type).
async fn entity_defaults<T: DeserializeOwned + Serialize>(app: &TestApp, entity: &str) -> Value {
    let (s, schema) = app.admin_get(&format!("/schemas/{entity}")).await;
    assert_eq!(s, 200, "/schemas/{entity}: {schema}");
    as_go_kong::<T>(
        &format!("the defaults of {entity}"),
        &flatten_defaults(&schema),
    )
}

/// The four defaulted kinds' defaults, as decK's defaulter holds them.
struct Defaults {
    service: Value,
    route: Value,
    upstream: Value,
    target: Value,
    plugin_schemas: HashMap<String, Value>,
}

async fn defaults(app: &TestApp, plugins: &[&str]) -> Defaults {
    // No consumer-group plugins here: the 404 means "no defaults" to decK.
    let (s, _) = app.admin_get("/schemas/consumer_group_plugins").await;
    assert_eq!(s, 404);
    let mut plugin_schemas = HashMap::new();
    for name in plugins {
        let (s, schema) = app.admin_get(&format!("/schemas/plugins/{name}")).await;
        assert_eq!(s, 200, "{schema}");
        plugin_schemas.insert((*name).to_string(), schema);
    }
    Defaults {
        service: entity_defaults::<Service>(app, "services").await,
        route: entity_defaults::<Route>(app, "routes").await,
        upstream: entity_defaults::<Upstream>(app, "upstreams").await,
        target: entity_defaults::<Target>(app, "targets").await,
        plugin_schemas,
    }
}

/// go-kong `fillConfigRecord` (defaults and auto fields both filled).
fn fill_config_record(schema: &Value, config: &Map<String, Value>) -> Map<String, Value> {
    let mut res = config.clone();
    let record_default = schema.get("default");
    for field in schema["fields"].as_array().cloned().unwrap_or_default() {
        let (name, def) = field.as_object().unwrap().iter().next().unwrap();
        match config.get(name) {
            Some(Value::Object(_)) if def.get("keys").is_some() && def.get("values").is_some() => {
                continue
            }
            Some(Value::Array(_)) if def["elements"]["type"] != "record" => continue,
            Some(Value::Object(_) | Value::Array(_)) | None => {}
            Some(_) => continue,
        }
        let required = def["required"] == true;
        if def["type"] == "record" && (config.get(name).is_some() || required) {
            let sub = match config.get(name) {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            let filled = fill_config_record(def, &sub);
            if !filled.is_empty() {
                res.insert(name.clone(), Value::Object(filled));
            }
            continue;
        }
        if def["elements"]["type"] == "record" {
            if let Some(Value::Array(items)) = config.get(name) {
                if !items.is_empty() {
                    let filled = items
                        .iter()
                        .map(|i| match i {
                            Value::Object(o) => {
                                Value::Object(fill_config_record(&def["elements"], o))
                            }
                            other => other.clone(),
                        })
                        .collect();
                    res.insert(name.clone(), Value::Array(filled));
                    continue;
                }
            }
        }
        let value = match record_default.and_then(|d| d.get(name)) {
            Some(v) => v.clone(),
            None => def.get("default").cloned().unwrap_or(Value::Null),
        };
        res.insert(name.clone(), value);
    }
    res
}

/// go-kong `FillPluginsDefaultsWithPartials` on a plugin of the file.
fn plugin_with_defaults(defaults: &Defaults, plugin: &Value) -> Value {
    let name = plugin["name"].as_str().unwrap();
    let schema = &defaults.plugin_schemas[name];
    let config_schema = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f.get("config"))
        .expect("go-kong getConfigSchema: a 'config' field");
    let mut out = plugin.clone();
    let config = plugin["config"].as_object().cloned().unwrap_or_default();
    out["config"] = Value::Object(fill_config_record(config_schema, &config));
    if out.get("protocols").is_none_or(Value::is_null) {
        let protocols = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|f| f.get("protocols"))
            .map(|p| p["default"].clone())
            .unwrap_or(Value::Null);
        out["protocols"] = protocols;
    }
    if out.get("enabled").is_none_or(Value::is_null) {
        out["enabled"] = json!(true);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The file decK syncs
// ------------------------------------------------------------------------------------------------

/// A declarative file as decK's builder turns it into entities: every entity with the id decK
/// generated, references by id.
#[derive(Clone, Debug, Default)]
struct File {
    certificates: Vec<Value>,
    consumers: Vec<Value>,
    snis: Vec<Value>,
    services: Vec<Value>,
    upstreams: Vec<Value>,
    oauth2: Vec<Value>,
    routes: Vec<Value>,
    targets: Vec<Value>,
    plugins: Vec<Value>,
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The first file: a service with two routes, a consumer with an oauth2 credential, plugins on
/// the service, a route and globally, an upstream with two targets, a certificate with an SNI.
fn first_file() -> File {
    let (cert, key) = pem_pair("deck.test");
    let cert_id = id();
    let consumer_id = id();
    let consumer2_id = id();
    let service_id = id();
    let upstream_id = id();
    let route_id = id();
    let route2_id = id();
    File {
        certificates: vec![json!({"id": cert_id, "cert": cert, "key": key, "tags": ["deck"]})],
        consumers: vec![
            json!({"id": consumer_id, "username": "alice", "custom_id": "a-1", "tags": ["deck"]}),
            json!({"id": consumer2_id, "username": "bob", "tags": ["deck"]}),
        ],
        snis: vec![
            json!({"id": id(), "name": "deck.test", "certificate": {"id": cert_id},
                          "tags": ["deck"]}),
        ],
        services: vec![
            json!({"id": service_id, "name": "svc", "host": "deck-upstream",
                              "port": 8080, "path": "/base", "tags": ["deck", "a"]}),
        ],
        upstreams: vec![json!({"id": upstream_id, "name": "deck-upstream", "tags": ["deck"]})],
        oauth2: vec![
            json!({"id": id(), "consumer": {"id": consumer_id}, "name": "app",
                   "client_id": "deck-client", "client_secret": "deck-secret",
                   "client_type": "confidential", "hash_secret": false,
                   "redirect_uris": ["https://app.test/cb"], "tags": ["deck"]}),
            json!({"id": id(), "consumer": {"id": consumer2_id}, "name": "bob-app",
                   "client_id": "bob-client", "client_secret": "bob-secret",
                   "client_type": "confidential", "hash_secret": false,
                   "redirect_uris": ["https://bob.test/cb"], "tags": ["deck"]}),
        ],
        routes: vec![
            json!({"id": route_id, "name": "r1", "paths": ["/deck"], "methods": ["GET", "POST"],
                   "service": {"id": service_id}, "tags": ["deck"]}),
            json!({"id": route2_id, "name": "r2", "hosts": ["deck.test"],
                   "service": {"id": service_id}, "tags": ["deck"]}),
        ],
        targets: vec![
            json!({"id": id(), "target": "127.0.0.1:8081", "upstream": {"id": upstream_id},
                   "tags": ["deck"]}),
            json!({"id": id(), "target": "127.0.0.1:8082", "weight": 50,
                   "upstream": {"id": upstream_id}, "tags": ["deck"]}),
        ],
        plugins: vec![
            json!({"id": id(), "name": "rate-limiting", "service": {"id": service_id},
                   "config": {"minute": 50, "policy": "local"}, "tags": ["deck"]}),
            json!({"id": id(), "name": "cors", "route": {"id": route2_id},
                   "config": {"origins": ["https://app.test"]}, "tags": ["deck"]}),
            json!({"id": id(), "name": "prometheus", "tags": ["deck"]}),
        ],
    }
}

/// The file with the defaults decK fills before it diffs, each row as go-kong keeps it.
fn expected(file: &File, defaults: &Defaults) -> Dump {
    let with = |rows: &[Value], d: &Value| -> Vec<Value> {
        rows.iter()
            .map(|r| {
                let mut r = r.clone();
                merge_defaults(&mut r, d);
                r
            })
            .collect()
    };
    let typed = |rows: Vec<Value>, f: fn(&str, &Value) -> Value| -> Vec<Value> {
        sorted_by_id(rows.iter().map(|r| f("the file", r)).collect())
    };
    Dump {
        services: typed(
            with(&file.services, &defaults.service),
            as_go_kong::<Service>,
        ),
        routes: typed(with(&file.routes, &defaults.route), as_go_kong::<Route>),
        plugins: typed(
            file.plugins
                .iter()
                .map(|p| plugin_with_defaults(defaults, p))
                .collect(),
            as_go_kong::<Plugin>,
        ),
        certificates: typed(file.certificates.clone(), as_go_kong::<Certificate>),
        snis: typed(file.snis.clone(), as_go_kong::<Sni>),
        consumers: typed(file.consumers.clone(), as_go_kong::<Consumer>),
        upstreams: typed(
            with(&file.upstreams, &defaults.upstream),
            as_go_kong::<Upstream>,
        ),
        targets: typed(with(&file.targets, &defaults.target), as_go_kong::<Target>),
        oauth2: typed(file.oauth2.clone(), as_go_kong::<Oauth2Credential>),
    }
}

/// One operation of a sync plan.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Create(&'static str, Value),
    Update(&'static str, Value),
    Delete(&'static str, Value),
}

/// The kinds in `pkg/diff/order.go`'s levels (only those this case writes).
const LEVELS: [&[&str]; 4] = [
    &["certificates", "consumers"],
    &["snis", "services", "upstreams", "oauth2"],
    &["routes", "targets"],
    &["plugins"],
];

fn rows<'a>(d: &'a Dump, kind: &str) -> &'a Vec<Value> {
    match kind {
        "certificates" => &d.certificates,
        "consumers" => &d.consumers,
        "snis" => &d.snis,
        "services" => &d.services,
        "upstreams" => &d.upstreams,
        "oauth2" => &d.oauth2,
        "routes" => &d.routes,
        "targets" => &d.targets,
        _ => &d.plugins,
    }
}

/// What a plugin is matched by (`pluginDiffer`: name and its service, route and consumer).
fn plugin_key(p: &Value) -> (Value, Value, Value, Value) {
    (
        p["name"].clone(),
        p["service"]["id"].clone(),
        p["route"]["id"].clone(),
        p["consumer"]["id"].clone(),
    )
}

fn same_row(kind: &str, a: &Value, b: &Value) -> bool {
    if kind == "plugins" {
        plugin_key(a) == plugin_key(b)
    } else {
        a["id"] == b["id"]
    }
}

/// go-kong `ClearUnmatchingDeprecations`: a shorthand field the file does not use is dropped
/// from the plugin Kong answered with (Kong echoes shorthands beside the fields they replace).
fn clear_unmatching_deprecations(defaults: &Defaults, have: &Value, want: &Value) -> Value {
    let mut have = have.clone();
    let Some(schema) = want["name"]
        .as_str()
        .and_then(|n| defaults.plugin_schemas.get(n))
    else {
        return have;
    };
    let config_schema = schema["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|f| f.get("config"))
        .cloned()
        .unwrap_or(Value::Null);
    for shorthand in config_schema["shorthand_fields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for name in shorthand.as_object().into_iter().flat_map(|o| o.keys()) {
            if want["config"].get(name).is_none() {
                if let Some(Value::Object(c)) = have.get_mut("config") {
                    c.remove(name);
                }
            }
        }
    }
    have
}

/// reconciler `Syncer.diff`: creates and updates level by level, then deletes in the reverse
/// order; an update only where `EqualWithOpts` says the rows differ.
fn plan(defaults: &Defaults, current: &Dump, target: &Dump) -> Vec<Op> {
    let mut ops = Vec::new();
    for level in LEVELS {
        for kind in level {
            let kind: &'static str = kind;
            for want in rows(target, kind) {
                match rows(current, kind).iter().find(|c| same_row(kind, c, want)) {
                    None => ops.push(Op::Create(kind, want.clone())),
                    Some(have)
                        if comparable(clear_unmatching_deprecations(defaults, have, want))
                            != comparable(want.clone()) =>
                    {
                        let mut want = want.clone();
                        // decK updates the row it found (a plugin keeps its id).
                        want["id"] = have["id"].clone();
                        ops.push(Op::Update(kind, want));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    for level in LEVELS.iter().rev() {
        for kind in level.iter() {
            let kind: &'static str = kind;
            for have in rows(current, kind) {
                if !rows(target, kind).iter().any(|t| same_row(kind, t, have)) {
                    ops.push(Op::Delete(kind, have.clone()));
                }
            }
        }
    }
    ops
}

/// The body decK sends: go-kong's struct marshalled (nil pointers left out, `omitempty`).
fn body(row: &Value) -> Value {
    let mut b = row.clone();
    b.as_object_mut().unwrap().remove("created_at");
    b
}

/// Runs one operation with go-kong's calls; the answer must decode into go-kong's struct and
/// carry the id decK chose.
async fn apply(app: &TestApp, op: &Op) {
    let (method, kind, row) = match op {
        Op::Create(k, r) => ("create", *k, r),
        Op::Update(k, r) => ("update", *k, r),
        Op::Delete(k, r) => ("delete", *k, r),
    };
    let id = row["id"].as_str().unwrap();
    if method == "delete" {
        let path = match kind {
            "oauth2" => format!(
                "/consumers/{}/oauth2/{id}",
                row["consumer"]["id"].as_str().unwrap()
            ),
            "targets" => {
                format!(
                    "/upstreams/{}/targets/{id}",
                    row["upstream"]["id"].as_str().unwrap()
                )
            }
            _ => format!("/{kind}/{id}"),
        };
        let (s, b) = call(app, Method::DELETE, &path, None).await;
        assert_eq!(s, 204, "DELETE {path}: {b}");
        return;
    }
    let answer = match kind {
        "oauth2" => {
            let path = format!(
                "/consumers/{}/oauth2/{id}",
                row["consumer"]["id"].as_str().unwrap()
            );
            let (s, b) = call(app, Method::PUT, &path, Some(body(row))).await;
            assert_eq!(s, 200, "PUT {path}: {b}");
            as_go_kong::<Oauth2Credential>(&path, &b)
        }
        "targets" => {
            let base = format!(
                "/upstreams/{}/targets",
                row["upstream"]["id"].as_str().unwrap()
            );
            let (s, mut b) = call(app, Method::PUT, &format!("{base}/{id}"), Some(body(row))).await;
            if method == "create" {
                // go-kong `TargetService.Create`: the PUT of a new target is 404, then POST.
                assert_eq!(s, 404, "PUT {base}/{id} of a new target: {b}");
                let (s, created) = call(app, Method::POST, &base, Some(body(row))).await;
                assert_eq!(s, 201, "POST {base}: {created}");
                b = created;
            } else {
                assert_eq!(s, 200, "PUT {base}/{id}: {b}");
            }
            as_go_kong::<Target>(&base, &b)
        }
        _ => {
            if kind == "certificates" && method == "create" {
                let (s, b) = app.admin_get(&format!("/certificates/{id}")).await;
                assert_eq!(s, 404, "GET /certificates/{id} before its create: {b}");
            }
            let path = format!("/{kind}/{id}");
            let (s, b) = call(app, Method::PUT, &path, Some(body(row))).await;
            assert_eq!(s, 200, "PUT {path}: {b}");
            match kind {
                "certificates" => as_go_kong::<Certificate>(&path, &b),
                "consumers" => as_go_kong::<Consumer>(&path, &b),
                "snis" => as_go_kong::<Sni>(&path, &b),
                "services" => as_go_kong::<Service>(&path, &b),
                "upstreams" => as_go_kong::<Upstream>(&path, &b),
                "routes" => as_go_kong::<Route>(&path, &b),
                _ => as_go_kong::<Plugin>(&path, &b),
            }
        }
    };
    assert_eq!(answer["id"], row["id"], "{kind}: {answer}");
}

/// `deck gateway sync`: dump, plan, apply in order; the operations it made.
async fn sync(app: &TestApp, defaults: &Defaults, target: &Dump) -> Vec<Op> {
    let current = dump(app, 1000, &[]).await;
    let ops = plan(defaults, &current, target);
    for op in &ops {
        apply(app, op).await;
    }
    ops
}

fn summary(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|op| match op {
            Op::Create(k, r) => format!("create {k} {}", r["id"].as_str().unwrap()),
            Op::Update(k, r) => format!("update {k} {}", r["id"].as_str().unwrap()),
            Op::Delete(k, r) => format!("delete {k} {}", r["id"].as_str().unwrap()),
        })
        .collect()
}

fn show_diff(defaults: &Defaults, current: &Dump, target: &Dump) -> String {
    plan(defaults, current, target)
        .iter()
        .map(|op| match op {
            Op::Update(k, want) => {
                let have = rows(current, k)
                    .iter()
                    .find(|c| same_row(k, c, want))
                    .cloned()
                    .unwrap_or_default();
                format!(
                    "update {k}:\n have {:#}\n want {:#}",
                    comparable(clear_unmatching_deprecations(defaults, &have, want)),
                    comparable(want.clone())
                )
            }
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------------
// Cases
// ------------------------------------------------------------------------------------------------

/// K1: `GET /` as decK reads it: `version` a string go-kong's `ParseSemanticVersion` parses to
/// 3.x (≥ 3.4, so consumer-group scoped plugins are assumed), `configuration` decodes into
/// `RuntimeConfiguration` with the store's name as `database`.
async fn k1_root_parses_as_go_kong_reads_it(store: Store) {
    let app = app(store).await;
    let (s, root) = app.admin_get("/").await;
    assert_eq!(s, 200);
    assert!(
        root["version"].is_string(),
        "cmd/common.go asserts a string"
    );
    let info: Info = decode("GET /", &root);
    let version = info.version.unwrap();
    let re = regex::Regex::new(r"^(\d+)\.(\d+)\.(\d+)").unwrap();
    let caps = re.captures(&version).expect("a semantic version");
    let (major, minor): (u64, u64) = (caps[1].parse().unwrap(), caps[2].parse().unwrap());
    assert!((major, minor) >= (3, 4), "{version}");
    let database = info.configuration.unwrap().database.unwrap();
    let want = match store {
        Store::Memory => "memory",
        Store::Postgres => "postgres",
    };
    assert_eq!(database, want);
}

/// K2: `deck gateway dump` of an empty gateway: every list it needs answers an empty page with
/// no `offset`, every list it tolerates answers an empty page or 404, and the dump is empty.
async fn k2_dump_of_an_empty_gateway(store: Store) {
    let app = app(store).await;
    for path in REQUIRED {
        let (s, body) = app.admin_get(&format!("{path}?size=1000")).await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(body["data"], json!([]), "{path}");
        assert!(
            body.get("offset").is_none_or(Value::is_null),
            "{path}: {body}"
        );
    }
    for path in TOLERATED {
        let (s, body) = app.admin_get(&format!("{path}?size=1000")).await;
        assert!(
            (s == 200 && body["data"] == json!([])) || s == 404,
            "{path}: {s} {body}"
        );
    }
    let d = dump(&app, 1000, &[]).await;
    assert_eq!(d, Dump::default());
}

/// K3: `deck gateway sync` of a file to an empty gateway creates every entity with decK's calls
/// in decK's order; `deck gateway dump` then reads back exactly the file (with the defaults decK
/// fills); `deck gateway diff` finds nothing to do; a second file updates a service, a route, a
/// plugin's config, a target's weight and an oauth2 credential, and deletes a consumer (with its
/// credential), a route (with its plugin), a target and the SNI; the dump then matches it.
async fn k3_sync_dump_diff_then_update_and_delete(store: Store) {
    let app = app(store).await;
    let defaults = defaults(&app, &["rate-limiting", "cors", "prometheus"]).await;
    let file = first_file();
    let target = expected(&file, &defaults);

    let ops = sync(&app, &defaults, &target).await;
    let kinds: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::Create(k, _) => *k,
            other => panic!("an empty gateway needs only creates: {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "certificates",
            "consumers",
            "consumers",
            "snis",
            "services",
            "upstreams",
            "oauth2",
            "oauth2",
            "routes",
            "routes",
            "targets",
            "targets",
            "plugins",
            "plugins",
            "plugins",
        ]
    );

    let dumped = dump(&app, 1000, &[]).await;
    assert_eq!(dumped.total(), 15);
    let diff = plan(&defaults, &dumped, &target);
    assert!(
        diff.is_empty(),
        "diff after sync:\n{}",
        show_diff(&defaults, &dumped, &target)
    );
    // `deck gateway diff` again, and a second sync: nothing to do.
    assert!(sync(&app, &defaults, &target).await.is_empty());

    // The second file.
    let mut second = file.clone();
    second.services[0]["retries"] = json!(2);
    second.services[0]["path"] = json!("/v2");
    second.routes[0]["paths"] = json!(["/deck", "/deck2"]);
    second.plugins[0]["config"]["minute"] = json!(70);
    second.targets[1]["weight"] = json!(10);
    second.oauth2[0]["redirect_uris"] = json!(["https://app.test/cb", "https://app.test/cb2"]);
    let bob = second.consumers.remove(1);
    second.oauth2.retain(|c| c["consumer"]["id"] != bob["id"]);
    let r2 = second.routes.remove(1);
    second.plugins.retain(|p| p["route"]["id"] != r2["id"]);
    second.targets.remove(0);
    second.snis.clear();
    let target2 = expected(&second, &defaults);
    let ops = sync(&app, &defaults, &target2).await;
    let by_id = |rows: &[Value], i: usize| rows[i]["id"].as_str().unwrap().to_string();
    let want = vec![
        format!("update services {}", by_id(&file.services, 0)),
        format!("update oauth2 {}", by_id(&file.oauth2, 0)),
        format!("update routes {}", by_id(&file.routes, 0)),
        format!("update targets {}", by_id(&file.targets, 1)),
        format!("update plugins {}", by_id(&file.plugins, 0)),
        format!("delete plugins {}", by_id(&file.plugins, 1)),
        format!("delete routes {}", by_id(&file.routes, 1)),
        format!("delete targets {}", by_id(&file.targets, 0)),
        format!("delete snis {}", by_id(&file.snis, 0)),
        format!("delete oauth2 {}", by_id(&file.oauth2, 1)),
        format!("delete consumers {}", by_id(&file.consumers, 1)),
    ];
    assert_eq!(summary(&ops), want);
    let dumped = dump(&app, 1000, &[]).await;
    assert!(
        plan(&defaults, &dumped, &target2).is_empty(),
        "diff after the second sync:\n{}",
        show_diff(&defaults, &dumped, &target2)
    );
    // certificate, alice, svc, the upstream, alice's app, r1, one target, two plugins.
    assert_eq!(dumped.total(), 9);
    let (s, _) = app
        .admin_get(&format!("/routes/{}", by_id(&file.routes, 1)))
        .await;
    assert_eq!(s, 404);
}

/// K4: go-kong's paging: with a page size of 1 every row still arrives once, each page's
/// `offset` a string; select tags (`tags=a,b`: rows carrying all of them) narrow every list.
async fn k4_dump_pages_with_offset_and_tags(store: Store) {
    let app = app(store).await;
    let defaults = defaults(&app, &["rate-limiting", "cors", "prometheus"]).await;
    let target = expected(&first_file(), &defaults);
    sync(&app, &defaults, &target).await;
    let whole = dump(&app, 1000, &[]).await;
    let paged = dump(&app, 1, &[]).await;
    assert_eq!(paged, whole);
    let (s, page) = app.admin_get("/routes?size=1").await;
    assert_eq!(s, 200);
    assert!(page["offset"].is_string(), "{page}");
    let tagged = dump(&app, 1000, &["deck", "a"]).await;
    assert_eq!(tagged.services, whole.services);
    assert_eq!(tagged.total(), 1, "only the service has both tags");
}

/// V1: Kong's `/schemas/:db_entity_name/validate` cases
/// (`02-kong_routes_spec.lua`), and the tables `deck gateway validate --online` posts to.
async fn v1_validate_endpoints(store: Store) {
    let app = app(store).await;
    let ok = json!({"message": "schema validation successful"});
    // returns 200 on a valid schema
    let (s, b) = call(
        &app,
        Method::POST,
        "/schemas/services/validate",
        Some(json!({"host": "example.com"})),
    )
    .await;
    assert_eq!((s, &b), (200, &ok));
    // returns 200 on certificates schema with snis
    let (cert, key) = pem_pair("a.test");
    let (s, b) = call(
        &app,
        Method::POST,
        "/schemas/certificates/validate",
        Some(json!({"cert": cert, "key": key, "snis": ["a", "b", "c"]})),
    )
    .await;
    assert_eq!((s, &b), (200, &ok));
    // returns 400 on certificates schema with invalid snis
    let (s, b) = call(
        &app,
        Method::POST,
        "/schemas/certificates/validate",
        Some(json!({"cert": cert, "key": key, "snis": ["120.0.9.32:90"]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        b,
        json!({
            "fields": {"snis": ["must not be an IP"]},
            "name": "schema violation",
            "message": "schema violation (snis.1: must not be an IP)",
            "code": 2,
        })
    );
    // returns 200 on a valid plugin schema
    let (s, b) = call(
        &app,
        Method::POST,
        "/schemas/plugins/validate",
        Some(json!({"name": "key-auth",
                    "config": {"key_names": ["foo", "bar"], "hide_credentials": true}})),
    )
    .await;
    assert_eq!((s, &b), (200, &ok));
    // returns 400 on an invalid plugin subschema
    let (s, b) = call(
        &app,
        Method::POST,
        "/schemas/plugins/validate",
        Some(json!({"name": "key-auth", "config": {"keys": "foo"}})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["name"], "schema violation");

    // decK's tables, each with a row of the first file: 200, nothing stored.
    let file = first_file();
    for (table, row) in [
        ("services", &file.services[0]),
        ("routes", &file.routes[0]),
        ("consumers", &file.consumers[0]),
        ("certificates", &file.certificates[0]),
        ("snis", &file.snis[0]),
        ("upstreams", &file.upstreams[0]),
        ("targets", &file.targets[0]),
        ("oauth2_credentials", &file.oauth2[0]),
        ("plugins", &file.plugins[0]),
        ("acls", &json!({"consumer": {"id": id()}, "group": "g"})),
        (
            "keyauth_credentials",
            &json!({"consumer": {"id": id()}, "key": "k"}),
        ),
    ] {
        let path = if table == "plugins" {
            "/schemas/plugins/validate".to_string()
        } else {
            format!("/schemas/{table}/validate")
        };
        let (s, b) = call(&app, Method::POST, &path, Some(row.clone())).await;
        assert_eq!((s, &b), (200, &ok), "{table}");
    }
    let (s, _) = call(
        &app,
        Method::POST,
        "/schemas/workspaces/validate",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 404);
    let d = dump(&app, 1000, &[]).await;
    assert_eq!(d, Dump::default(), "validation stores nothing");
}
