//! The Kong-compatible admin API. One dispatcher maps Kong's URL shapes onto the generic entity
//! operations of [`crud`]; bodies are parsed by [`crate::forms`]; node info and schemas live in
//! [`info`], the OpenAPI document in [`openapi`]. The plugins' own endpoints live here too, so
//! plugins never import the admin API: [`oauth2_tokens`] (issued tokens) and [`introspection`]
//! (verdict cache eviction). DB-less mode (`database = off`) lives in [`config`]: `POST /config`,
//! `GET /config`, and Kong's `405` for single-entity writes; [`declarative`] reads Kong's
//! declarative format with the same validation as every write here. [`validate`] answers Kong's
//! dry-run `POST /schemas/…/validate` with the same rules, storing nothing.

pub mod certificates;
pub mod config;
pub mod crud;
pub mod declarative;
pub mod info;
pub mod introspection;
pub mod oauth2_tokens;
pub mod openapi;
pub mod upstream_health;
pub mod validate;

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use actix::Addr;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use portcullis_stores::{ConfigStore, TokenStore};

use crate::actors::registry::ConfigRegistry;
use crate::config::Settings;
use crate::entities::certificates::{CA_CERTIFICATES, CERTIFICATES, SNIS};
use crate::entities::upstreams::{TARGETS, UPSTREAMS};
use crate::entities::{EntityKind, CONSUMERS, PLUGINS, ROUTES, SERVICES};
use crate::error::AdminError;
use crate::gateway_headers::{self as own, GatewayHeaders};
use crate::plugins::acl::acls::ACLS;
use crate::plugins::key_auth::credentials::CREDENTIALS as KEYAUTH_CREDENTIALS;
use crate::plugins::oauth2::credentials::CREDENTIALS;
use crate::plugins::PluginRegistry;
use crate::router::RouterSnapshot;
use crate::schema::Coerce;

/// What the admin handlers share.
pub struct AdminState {
    /// Configuration store (reads go straight to it; writes go through the registry).
    pub store: Arc<dyn ConfigStore>,
    /// Token store (`/oauth2_tokens`).
    pub tokens: Arc<dyn TokenStore>,
    /// The single writer.
    pub registry: Addr<ConfigRegistry>,
    /// Available plugins.
    pub plugins: Arc<PluginRegistry>,
    /// Effective settings.
    pub settings: Arc<Settings>,
    /// Current router snapshot (for `/status`).
    pub snapshot: Arc<ArcSwap<RouterSnapshot>>,
    /// Start time (for `/status`).
    pub started: Instant,
    /// Node id reported by `/`.
    pub node_id: uuid::Uuid,
    /// The gateway's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The stores `GET /metrics` asks.
    pub probe: crate::status::Probe,
    /// DB-less mode (`database = off`): entity writes refused, `/config` replaces everything.
    pub dbless: Option<Arc<config::DbLess>>,
}

/// The entity collections at the top of the URL space: segment → entity. The dispatcher and the
/// OpenAPI document both read this table.
pub static COLLECTIONS: [(&str, &LazyLock<EntityKind>); 11] = [
    ("services", &SERVICES),
    ("routes", &ROUTES),
    ("consumers", &CONSUMERS),
    ("plugins", &PLUGINS),
    ("oauth2", &CREDENTIALS),
    ("key-auths", &KEYAUTH_CREDENTIALS),
    ("acls", &ACLS),
    ("upstreams", &UPSTREAMS),
    ("certificates", &CERTIFICATES),
    ("snis", &SNIS),
    ("ca_certificates", &CA_CERTIFICATES),
];

/// Collections whose nested segment differs from their top-level one (Kong's
/// `admin_api_nested_name`): `/consumers/{c}/key-auth` lists `/key-auths` rows.
const NESTED_NAMES: [(&str, &str); 1] = [("key-auth", "key-auths")];

/// Entities reached only under their parent: Kong disables `/targets` (404), targets live under
/// `/upstreams/{u}/targets`.
pub static NESTED_ONLY: [(&str, &LazyLock<EntityKind>); 1] = [("targets", &TARGETS)];

/// Collections nested under a parent (`/services/{s}/routes`): `(parent segment, child segment,
/// foreign-key field of the child)`.
pub const NESTED: [(&str, &str, &str); 9] = [
    ("services", "routes", "service"),
    ("services", "plugins", "service"),
    ("routes", "plugins", "route"),
    ("consumers", "plugins", "consumer"),
    ("consumers", "oauth2", "consumer"),
    ("consumers", "key-auth", "consumer"),
    ("consumers", "acls", "consumer"),
    ("upstreams", "targets", "upstream"),
    ("certificates", "snis", "certificate"),
];

/// Lists decK reads whose entities this gateway does not have: always empty, so a sync sees
/// nothing to manage there.
pub const EMPTY_LISTS: [&str; 6] = [
    "vaults",
    "consumer_groups",
    "basic-auths",
    "jwts",
    "hmac-auths",
    "tags",
];

/// A child's parent reached through its foreign key (`/routes/{r}/service`): `(child segment,
/// foreign-key field, parent segment)`.
pub const FOREIGN: [(&str, &str, &str); 7] = [
    ("routes", "service", "services"),
    ("plugins", "service", "services"),
    ("plugins", "route", "routes"),
    ("plugins", "consumer", "consumers"),
    ("oauth2", "consumer", "consumers"),
    ("key-auths", "consumer", "consumers"),
    ("acls", "consumer", "consumers"),
];

/// The entity of a collection segment, top-level or nested-only.
fn kind_of(segment: &str) -> Option<&'static EntityKind> {
    top_kind_of(segment).or_else(|| {
        NESTED_ONLY
            .iter()
            .find(|(s, _)| *s == segment)
            .map(|(_, kind)| &***kind)
    })
}

/// The entity of a collection at the top of the URL space.
fn top_kind_of(segment: &str) -> Option<&'static EntityKind> {
    COLLECTIONS
        .iter()
        .find(|(s, _)| *s == segment)
        .map(|(_, kind)| &***kind)
}

/// The top-level segment of a nested collection segment (`key-auth` → `key-auths`).
fn top_segment(segment: &str) -> &str {
    NESTED_NAMES
        .iter()
        .find(|(nested, _)| *nested == segment)
        .map_or(segment, |(_, top)| *top)
}

/// The entity of a nested collection segment.
fn nested_kind_of(segment: &str) -> Option<&'static EntityKind> {
    kind_of(top_segment(segment))
}

/// `(parent segment, child segment) → foreign-key field of the child`.
fn nested_field(parent: &str, child: &str) -> Option<&'static str> {
    NESTED
        .iter()
        .find(|(p, c, _)| *p == parent && *c == child)
        .map(|(_, _, field)| *field)
}

/// `(child segment, fk segment) → parent segment` for `/routes/{r}/service` style paths.
fn foreign_parent(child: &str, field: &str) -> Option<&'static str> {
    FOREIGN
        .iter()
        .find(|(c, f, _)| *c == child && *f == field)
        .map(|(_, _, parent)| *parent)
}

fn authorized(state: &AdminState, req: &HttpRequest) -> bool {
    crate::admin_token::presented(state.settings.admin_token.as_ref(), req)
}

/// What the admin API adds to each of its answers, of what `headers` keeps (Kong's admin header
/// filter): `Server` (removed when left out) and how long the answer took.
pub fn stamp(
    headers: &mut actix_web::http::header::HeaderMap,
    on: GatewayHeaders,
    started: Instant,
) {
    use actix_web::http::header::{HeaderName, HeaderValue, SERVER};
    if on.server {
        headers.insert(SERVER, HeaderValue::from_static(own::PRODUCT));
    } else {
        headers.remove(SERVER);
    }
    if on.admin_latency {
        headers.insert(
            HeaderName::from_static(own::ADMIN_LATENCY),
            HeaderValue::from(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
    }
}

/// The one admin handler: authenticates, parses, dispatches.
pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let path = req.path().trim_end_matches('/').to_string();
    // Every request, `/status` included: it reveals the node's configuration counts and store
    // health, which are the operator's business.
    if !authorized(&state, &req) {
        return Err(AdminError::Unauthorized);
    }
    let max = state.settings.max_body_bytes().unwrap_or(usize::MAX);
    let body = read_body(&req, payload, max).await?;
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parse = || -> Result<(serde_json::Map<String, serde_json::Value>, Coerce), AdminError> {
        Ok(crate::forms::parse(&content_type, &body)?)
    };
    let st = state.get_ref();

    match (seg.as_slice(), &method) {
        ([], &Method::GET) => return info::node(st),
        (["status"], &Method::GET) => return info::status(st).await,
        (["metrics"], &Method::GET) => {
            return Ok(crate::status::metrics_answer(&st.metrics, &st.probe).await)
        }
        (["openapi.json"], &Method::GET) => {
            return Ok(HttpResponse::Ok().json(openapi::document(&st.plugins)))
        }
        (["plugins", "enabled"], &Method::GET) => return info::enabled(st),
        (["schemas", "plugins", "validate"], &Method::POST) => {
            let (input, coerce) = parse()?;
            return validate::validate(st, "plugins", input, coerce);
        }
        (["schemas", entity, "validate"], &Method::POST) => {
            let (input, coerce) = parse()?;
            return validate::validate(st, entity, input, coerce);
        }
        (["schemas", "plugins", name], &Method::GET)
        | (["plugins", "schema", name], &Method::GET) => return info::plugin_schema(st, name),
        (["schemas", entity], &Method::GET) => return info::entity_schema(entity),
        _ => {}
    }
    if let Some(resp) = introspection::dispatch(st, &seg, &method).await {
        return resp;
    }
    if let Some(resp) = upstream_health::dispatch(st, &seg, &method, &query).await {
        return resp;
    }
    if let Some(resp) = config::dispatch(st, &seg, &method, &query, &content_type, &body).await {
        return resp;
    }
    if let Some(e) = config::refuse_entity_write(st, written_table(&seg, &method), &method) {
        return Err(e);
    }
    if let Some(resp) = oauth2_tokens::dispatch(st, &seg, &method, &query, &parse).await {
        return resp;
    }
    if let Some(resp) = certificates::dispatch(st, &seg, &method, &query, &parse).await {
        return resp;
    }

    match seg.as_slice() {
        [list] if EMPTY_LISTS.contains(list) => match method {
            Method::GET => {
                Ok(HttpResponse::Ok().json(serde_json::json!({"data": [], "next": null})))
            }
            _ => Err(AdminError::MethodNotAllowed),
        },
        [entity] => {
            let kind = top_kind_of(entity).ok_or(AdminError::NotFound)?;
            match method {
                Method::GET => crud::list(st, kind, None, &query, &format!("/{entity}")).await,
                Method::POST => {
                    let (input, coerce) = parse()?;
                    crud::create(st, kind, input, coerce, None).await
                }
                _ => Err(AdminError::MethodNotAllowed),
            }
        }
        [entity, key] => {
            let kind = top_kind_of(entity).ok_or(AdminError::NotFound)?;
            entity_item(st, kind, key, &method, parse, None).await
        }
        [parent, pkey, third] => {
            if let (Some(field), Some(pkind)) = (nested_field(parent, third), kind_of(parent)) {
                let kind = nested_kind_of(third).ok_or(AdminError::NotFound)?;
                let pid = crud::parent_id(st, pkind, pkey).await?;
                return match method {
                    Method::GET => {
                        crud::list(
                            st,
                            kind,
                            Some((field, pid)),
                            &query,
                            &format!("/{parent}/{pkey}/{third}"),
                        )
                        .await
                    }
                    Method::POST => {
                        let (input, coerce) = parse()?;
                        crud::create(st, kind, input, coerce, Some((field, pid))).await
                    }
                    _ => Err(AdminError::MethodNotAllowed),
                };
            }
            if let (Some(parent_seg), Some(ckind)) =
                (foreign_parent(parent, third), kind_of(parent))
            {
                let pkind = kind_of(parent_seg).ok_or(AdminError::NotFound)?;
                let child = crud::resolve(st.store.as_ref(), ckind, pkey)
                    .await?
                    .ok_or(AdminError::NotFound)?;
                let target = crud::fk(&child, third).ok_or(AdminError::NotFound)?;
                return match method {
                    Method::DELETE => Err(AdminError::MethodNotAllowed),
                    _ => entity_item(st, pkind, &target.to_string(), &method, parse, None).await,
                };
            }
            Err(AdminError::NotFound)
        }
        ["upstreams", pkey, "targets", "all"] => match method {
            Method::GET => {
                let pid = crud::parent_id(st, &UPSTREAMS, pkey).await?;
                let base = format!("/upstreams/{pkey}/targets/all");
                let mut body =
                    crud::list_page(st, &TARGETS, Some(("upstream", pid)), &query, &base).await?;
                // Kong's link here carries the offset alone.
                if let Some(offset) = body.get("offset").and_then(|o| o.as_str()) {
                    body["next"] = serde_json::json!(format!("{base}?offset={offset}"));
                }
                Ok(HttpResponse::Ok().json(body))
            }
            _ => Err(AdminError::MethodNotAllowed),
        },
        [parent, pkey, child, ckey] => {
            let field = nested_field(parent, child).ok_or(AdminError::NotFound)?;
            let pkind = kind_of(parent).ok_or(AdminError::NotFound)?;
            let kind = nested_kind_of(child).ok_or(AdminError::NotFound)?;
            let pid = crud::parent_id(st, pkind, pkey).await?;
            entity_item(st, kind, ckey, &method, parse, Some((field, pid))).await
        }
        _ => Err(AdminError::NotFound),
    }
}

/// The entity table a path writes to (`/services/{s}/routes` → `routes`), `None` for paths
/// that are no entity's.
fn written_table(seg: &[&str], method: &Method) -> Option<&'static str> {
    // Only the methods a path answers are refused as writes; others stay `Method not allowed`.
    let on_collection = *method == Method::POST;
    let on_item = matches!(*method, Method::PUT | Method::PATCH | Method::DELETE);
    let kind = match seg {
        [entity] if on_collection => top_kind_of(entity)?,
        [entity, _] if on_item => top_kind_of(entity)?,
        [parent, _, third] if nested_field(parent, third).is_some() && on_collection => {
            nested_kind_of(third)?
        }
        [parent, _, third] if *method == Method::PUT || *method == Method::PATCH => {
            kind_of(foreign_parent(parent, third)?)?
        }
        [parent, _, child, _] if nested_field(parent, child).is_some() && on_item => {
            nested_kind_of(child)?
        }
        _ => return None,
    };
    Some(kind.def.name)
}

/// Reads the body up to `max` bytes: a larger declared length is refused before reading, a
/// longer chunked body as soon as it passes the limit (never buffered whole).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::Bytes, AdminError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(AdminError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| AdminError::BadBody("Cannot read request body".into()))?;
        if buf.len().saturating_add(chunk.len()) > max {
            return Err(AdminError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn entity_item(
    st: &AdminState,
    kind: &'static EntityKind,
    key: &str,
    method: &Method,
    parse: impl Fn() -> Result<(serde_json::Map<String, serde_json::Value>, Coerce), AdminError>,
    parent: Option<(&'static str, uuid::Uuid)>,
) -> Result<HttpResponse, AdminError> {
    match *method {
        Method::GET => crud::read(st, kind, key, parent).await,
        // Kong's PUT on a target updates it in place, like PATCH (it never creates one).
        Method::PUT if kind.def.name == "targets" => {
            let (input, coerce) = parse()?;
            crud::patch(st, kind, key.to_string(), input, coerce, parent).await
        }
        Method::PUT => {
            let (input, coerce) = parse()?;
            crud::upsert(st, kind, key.to_string(), input, coerce, parent).await
        }
        Method::PATCH => {
            let (input, coerce) = parse()?;
            crud::patch(st, kind, key.to_string(), input, coerce, parent).await
        }
        Method::DELETE => crud::delete(st, kind, key.to_string(), parent).await,
        _ => Err(AdminError::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_names_known_collections() {
        for (parent, child, _) in NESTED {
            assert!(
                kind_of(parent).is_some() && nested_kind_of(child).is_some(),
                "{parent}/{child}"
            );
        }
        for (child, field, parent) in FOREIGN {
            assert!(
                kind_of(child).is_some() && kind_of(parent).is_some(),
                "{child}/{field}"
            );
        }
    }
}
