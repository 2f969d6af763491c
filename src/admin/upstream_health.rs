//! The health of an upstream's targets through the admin API, as Kong serves it:
//! `GET /upstreams/{u}/health` (each target with `health` — `HEALTHY`, `UNHEALTHY` or
//! `HEALTHCHECKS_OFF` — and its address; `?balancer_health=1` for the upstream as a whole), and
//! `POST /upstreams/{u}/targets/{t}/healthy` / `…/unhealthy` to set a target's state by hand.
//! The states are this node's: each node checks for itself, as Kong's do.

use actix_web::http::Method;
use actix_web::HttpResponse;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{crud, AdminState};
use crate::entities::upstreams::{Address, Upstream, DEFAULT_TARGET_PORT, TARGETS, UPSTREAMS};
use crate::error::AdminError;
use crate::metrics::TargetHealthState;
use crate::router::health::UpstreamChecks;

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
                Method::POST | Method::PUT => set(st, upstream, target, *state == "healthy").await,
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

/// Kong's names; a target set unhealthy by hand shows so even with the checks off (it gets no
/// traffic).
fn state_name(checks_on: bool, healthy: bool) -> &'static str {
    TargetHealthState::of(checks_on, healthy).admin_name()
}

async fn health(
    st: &AdminState,
    key: &str,
    query: &[(String, String)],
) -> Result<HttpResponse, AdminError> {
    let (id, upstream) = upstream_of(st, key).await?;
    let checks_on = UpstreamChecks::of(&upstream.healthchecks).on();
    let book = st.snapshot.load().health.clone();
    let healthy_of = |target: &str| book.find(id, target).is_none_or(|h| h.is_healthy());
    let base = format!("/upstreams/{key}/health");
    let mut page = crud::list_page(st, &TARGETS, Some(("upstream", id)), query, &base).await?;
    if query
        .iter()
        .any(|(k, v)| k == "balancer_health" && v == "1")
    {
        let all = crud::list_page(st, &TARGETS, Some(("upstream", id)), &[], &base).await?;
        let any_healthy = all["data"].as_array().into_iter().flatten().any(|t| {
            t["weight"].as_u64().unwrap_or(0) > 0
                && healthy_of(t["target"].as_str().unwrap_or_default())
        });
        return Ok(HttpResponse::Ok().json(json!({
            "data": { "id": id, "health": state_name(checks_on, any_healthy) },
            "next": null,
            "node_id": st.node_id,
        })));
    }
    for target in page["data"].as_array_mut().into_iter().flatten() {
        let name = target["target"].as_str().unwrap_or_default().to_string();
        let state = state_name(checks_on, healthy_of(&name));
        let address = Address::parse(&name).ok();
        target["health"] = json!(state);
        target["data"] = json!({
            "addresses": [{
                "ip": address.as_ref().map(|a| a.host.clone()),
                "port": address.as_ref().map(|a| a.port.unwrap_or(DEFAULT_TARGET_PORT)),
                "health": state,
                "weight": target["weight"],
            }],
            "weight": { "total": target["weight"], "available": if state == "UNHEALTHY" { json!(0) } else { target["weight"].clone() }, "unavailable": if state == "UNHEALTHY" { target["weight"].clone() } else { json!(0) } },
        });
    }
    page["node_id"] = json!(st.node_id);
    Ok(HttpResponse::Ok().json(page))
}

async fn set(
    st: &AdminState,
    upstream_key: &str,
    target_key: &str,
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
    st.snapshot.load().health.of(id, name).set(healthy);
    tracing::info!(upstream = %upstream.name, target = %name, healthy, "target health set through the admin API");
    Ok(HttpResponse::NoContent().finish())
}
