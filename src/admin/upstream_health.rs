//! The health of an upstream's targets through the admin API, as Kong serves it:
//! `GET /upstreams/{u}/health` (each target with `health` — `HEALTHY`, `UNHEALTHY`,
//! `HEALTHCHECKS_OFF` or `DNS_ERROR` — and under `data.addresses` each of its addresses with
//! its own; `?balancer_health=1` for the upstream as a whole: `health` and whether the
//! balancer has a peer to give, `balancer_health`), and
//! `PUT /upstreams/{u}/targets/{t}/healthy` / `…/unhealthy` to set all of a target's addresses
//! by hand, `…/targets/{t}/{address}/healthy` / `…/unhealthy` one of them.
//! The states are this node's: each node checks for itself, as Kong's do.

use actix_web::http::Method;
use actix_web::HttpResponse;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{crud, AdminState};
use crate::entities::upstreams::{
    Address, AddressKind, Upstream, DEFAULT_TARGET_PORT, TARGETS, UPSTREAMS,
};
use crate::error::AdminError;
use crate::metrics::TargetHealthState;
use crate::router::dns::{address_key, hosts_of, record_kind, AddressBook};
use crate::router::health::{HealthBook, UpstreamChecks};

/// The port Kong's `…/targets/{t}/{address}/healthy` assumes when the address has none
/// (`kong/db/dao/targets.lua`).
const KONG_DEFAULT_PORT: u16 = 8000;

/// Routes the health paths; `None` when the path is not one of them.
pub async fn dispatch(
    st: &AdminState,
    seg: &[&str],
    method: &Method,
    query: &[(String, String)],
) -> Option<Result<HttpResponse, AdminError>> {
    match seg {
        ["upstreams", upstream, "health"] => Some(match *method {
            Method::GET => health(st, upstream, query).await,
            _ => Err(AdminError::MethodNotAllowed),
        }),
        ["upstreams", upstream, "targets", target, state @ ("healthy" | "unhealthy")] => {
            Some(match *method {
                Method::POST | Method::PUT => {
                    set(st, upstream, target, None, *state == "healthy").await
                }
                _ => Err(AdminError::MethodNotAllowed),
            })
        }
        ["upstreams", upstream, "targets", target, address, state @ ("healthy" | "unhealthy")] => {
            Some(match *method {
                Method::POST | Method::PUT => {
                    set(st, upstream, target, Some(address), *state == "healthy").await
                }
                _ => Err(AdminError::MethodNotAllowed),
            })
        }
        _ => None,
    }
}

/// The upstream row and its typed view; 404 when absent.
async fn upstream_of(st: &AdminState, key: &str) -> Result<(Uuid, Upstream), AdminError> {
    let doc = crud::resolve(st.store.as_ref(), &UPSTREAMS, key)
        .await?
        .ok_or(AdminError::NotFound)?;
    let upstream: Upstream = serde_json::from_value(Value::Object(doc))
        .map_err(|e| AdminError::Internal(format!("stored upstream does not parse: {e}")))?;
    Ok((upstream.id, upstream))
}

/// Kong's names; an address set unhealthy by hand shows so even with the checks off (it gets
/// no traffic).
fn state_name(checks_on: bool, healthy: bool) -> &'static str {
    TargetHealthState::of(checks_on, healthy).admin_name()
}

/// One target's health as Kong's `/upstreams/{u}/health` shows it: `health` (`HEALTHY` when
/// any address is, `UNHEALTHY` when one is and none is healthy, `HEALTHCHECKS_OFF` otherwise;
/// `DNS_ERROR` when its name resolves to nothing) and `data`: its host, port, DNS record kind,
/// weights and each address with its own health.
fn target_health(
    upstream: Uuid,
    target: &Value,
    checks_on: bool,
    book: &HealthBook,
    dns: &AddressBook,
) -> (&'static str, Value) {
    let name = target["target"].as_str().unwrap_or_default();
    let weight = target["weight"].as_u64().unwrap_or(0);
    let Ok(address) = Address::parse(name) else {
        return ("DNS_ERROR", Value::Null);
    };
    let port = address.port.unwrap_or(DEFAULT_TARGET_PORT);
    let hosts = hosts_of(&address, dns).unwrap_or_default();
    let mut addresses = Vec::with_capacity(hosts.len());
    let (mut any_healthy, mut any_unhealthy, mut unavailable) = (false, false, 0);
    let mut total = 0;
    for reached in &hosts {
        let port = reached.port.unwrap_or(port);
        // An SRV record's weight replaces the target's.
        let share = reached.weight.map_or(weight, u64::from);
        total += share;
        let at = address_key(&reached.host, port);
        let healthy = book
            .find(upstream, name, &at)
            .is_none_or(|cell| cell.is_healthy());
        // Kong counts a target of weight 0 as unchecked.
        let state = state_name(checks_on && weight > 0, healthy);
        any_healthy |= state == "HEALTHY";
        any_unhealthy |= state == "UNHEALTHY";
        if !healthy {
            unavailable += share;
        }
        addresses.push(json!({
            "ip": reached.host, "port": port, "weight": share, "health": state,
        }));
    }
    let health = match (hosts.is_empty(), any_healthy, any_unhealthy) {
        (true, _, _) => "DNS_ERROR",
        (false, true, _) => "HEALTHY",
        (false, false, true) => "UNHEALTHY",
        (false, false, false) => "HEALTHCHECKS_OFF",
    };
    let data = json!({
        "host": address.host,
        "port": port,
        "dns": record_kind(&address, dns),
        "nodeWeight": weight,
        "weight": { "total": total, "available": total - unavailable, "unavailable": unavailable },
        "addresses": addresses,
    });
    (health, data)
}

async fn health(
    st: &AdminState,
    key: &str,
    query: &[(String, String)],
) -> Result<HttpResponse, AdminError> {
    let (id, upstream) = upstream_of(st, key).await?;
    let checks_on = UpstreamChecks::of(&upstream.healthchecks).on();
    let snapshot = st.snapshot.load();
    let (book, dns) = (snapshot.health.clone(), snapshot.dns.clone());
    let base = format!("/upstreams/{key}/health");
    if query
        .iter()
        .any(|(k, v)| k == "balancer_health" && v == "1")
    {
        let all = crud::list_page(st, &TARGETS, Some(("upstream", id)), &[], &base).await?;
        let any_healthy = all["data"].as_array().into_iter().flatten().any(|t| {
            t["weight"].as_u64().unwrap_or(0) > 0
                && target_health(id, t, true, &book, &dns).0 == "HEALTHY"
        });
        return Ok(HttpResponse::Ok().json(json!({
            "data": {
                "id": id,
                "health": state_name(checks_on, any_healthy),
                // Whether the balancer has an address to give, checks or not.
                "balancer_health": if any_healthy { "HEALTHY" } else { "UNHEALTHY" },
            },
            "next": null,
            "node_id": st.node_id,
        })));
    }
    let mut page = crud::list_page(st, &TARGETS, Some(("upstream", id)), query, &base).await?;
    for target in page["data"].as_array_mut().into_iter().flatten() {
        let (health, data) = target_health(id, target, checks_on, &book, &dns);
        target["health"] = json!(health);
        target["data"] = data;
    }
    page["node_id"] = json!(st.node_id);
    Ok(HttpResponse::Ok().json(page))
}

/// Sets the health of every address of a target (`address` absent: Kong's
/// `set_all_target_statuses_for_hostname`) or of one of them (`ip` or `ip:port`, Kong's
/// default port 8000 when none is written; a name sets every address on that port); an
/// address the target does not have is Kong's `400 target not found`.
async fn set(
    st: &AdminState,
    upstream_key: &str,
    target_key: &str,
    address: Option<&str>,
    healthy: bool,
) -> Result<HttpResponse, AdminError> {
    let (id, upstream) = upstream_of(st, upstream_key).await?;
    let target = crud::resolve_under(
        st.store.as_ref(),
        &TARGETS,
        target_key,
        Some(("upstream", id)),
    )
    .await?
    .ok_or(AdminError::NotFound)?;
    let belongs = target
        .get("upstream")
        .and_then(|u| u.get("id"))
        .and_then(Value::as_str)
        .and_then(|u| Uuid::parse_str(u).ok())
        == Some(id);
    let name = target.get("target").and_then(Value::as_str);
    let (true, Some(name)) = (belongs, name) else {
        return Err(AdminError::NotFound);
    };
    let snapshot = st.snapshot.load();
    let parsed = Address::parse(name)
        .map_err(|e| AdminError::Internal(format!("stored target does not parse: {e}")))?;
    let port = parsed.port.unwrap_or(DEFAULT_TARGET_PORT);
    // The target's addresses now (a cell is made for one no request has reached yet).
    let addresses: Vec<(String, u16)> = hosts_of(&parsed, &snapshot.dns)
        .unwrap_or_default()
        .iter()
        .map(|reached| {
            let port = reached.port.unwrap_or(port);
            (address_key(&reached.host, port), port)
        })
        .collect();
    let chosen: Vec<&String> = match address.map(Address::parse) {
        None => addresses.iter().map(|(at, _)| at).collect(),
        Some(Err(_)) => return Err(AdminError::AddressNotFound),
        // A name (an SRV record's target, say): every address of the target on its port, as
        // Kong's `set_all_target_statuses_for_hostname`.
        Some(Ok(written)) if written.kind == AddressKind::Name => {
            let on = written.port.unwrap_or(KONG_DEFAULT_PORT);
            addresses
                .iter()
                .filter(|(_, port)| *port == on)
                .map(|(at, _)| at)
                .collect()
        }
        Some(Ok(written)) => {
            let at = address_key(&written.host, written.port.unwrap_or(KONG_DEFAULT_PORT));
            let found = addresses.iter().find(|(known, _)| *known == at);
            vec![&found.ok_or(AdminError::AddressNotFound)?.0]
        }
    };
    for at in chosen {
        snapshot.health.of(id, name, at).set(healthy);
    }
    tracing::info!(upstream = %upstream.name, target = %name, address, healthy, "target health set through the admin API");
    Ok(HttpResponse::NoContent().finish())
}
