//! Kong's status listener (`status_listen`): a server for health checks and scrapes, apart from
//! the admin API so that a load balancer or Prometheus can reach it without the admin token or
//! the admin network. `GET /status` (Kong's shape: the proxy server's connection counters and
//! whether the database answers), `GET /status/ready` (Kong's readiness probe) and
//! `GET /metrics` (the Prometheus text); its one write is `POST /status/ready` with
//! `status=draining` (Kong's `kong drain`). Any other path is 404, another method 405.
//!
//! The admin API serves the same `GET /metrics` (behind `admin_token` when set) through
//! [`metrics_answer`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use arc_swap::ArcSwap;
use portcullis_stores::redis_cache::RedisTokenCache;
use portcullis_stores::ConfigStore;
use serde_json::json;

use crate::config::Secret;
use crate::error::AdminError;
use crate::metrics::{
    Metrics, PluginReadings, Probes, QueueReading, TargetHealthReading, TargetHealthState,
    CONTENT_TYPE,
};
use crate::router::RouterSnapshot;

/// What a scrape or a status request asks the stores.
#[derive(Clone)]
pub struct Probe {
    /// The configuration store (`kong_datastore_reachable`, `database.reachable`).
    pub store: Arc<dyn ConfigStore>,
    /// Whether that store is Postgres (`portcullis_postgres_up` is reported then).
    pub postgres: bool,
    /// Redis, when configured (`portcullis_redis_up`).
    pub redis: Option<RedisTokenCache>,
    /// The router snapshots, whose upstream targets `kong_upstream_target_health` reports.
    pub snapshot: Arc<ArcSwap<RouterSnapshot>>,
}

impl Probe {
    /// Whether the configuration store answers a one-row read now.
    pub async fn datastore_reachable(&self) -> bool {
        self.store
            .list(
                &portcullis_stores::model::entities::SERVICES,
                &portcullis_stores::ListFilter {
                    size: 1,
                    ..Default::default()
                },
            )
            .await
            .is_ok()
    }

    /// Asks every store now.
    pub async fn probes(&self) -> Probes {
        let datastore = self.datastore_reachable().await;
        let redis = match &self.redis {
            Some(redis) => Some(redis.ping().await.is_ok()),
            None => None,
        };
        Probes {
            datastore,
            postgres: self.postgres.then_some(datastore),
            redis,
            plugins: plugin_readings(),
            upstream_health: self.upstream_health(),
        }
    }

    /// Each upstream target's state now, when a `prometheus` plugin exports them.
    fn upstream_health(&self) -> Option<Vec<TargetHealthReading>> {
        let snapshot = self.snapshot.load();
        let targets = snapshot.upstream_health.as_ref()?;
        Some(
            targets
                .iter()
                .map(|t| TargetHealthReading {
                    upstream: t.upstream.clone(),
                    target: t.target.clone(),
                    address: t.address.clone(),
                    state: t.health.as_ref().map_or(TargetHealthState::DnsError, |h| {
                        TargetHealthState::of(t.checks_on, h.is_healthy())
                    }),
                })
                .collect(),
        )
    }
}

/// The counters the plugins keep themselves (log queues, span exporters, rate-limiting's Redis
/// misses), read now.
fn plugin_readings() -> PluginReadings {
    use std::sync::atomic::Ordering::Relaxed;
    let log_queues = crate::plugins::log_queue::all_stats()
        .into_iter()
        .map(|(id, stats)| {
            let reading = QueueReading {
                accepted: stats.accepted.load(Relaxed),
                dropped: stats.dropped.load(Relaxed),
                sent: stats.sent.load(Relaxed),
                lost: stats.lost.load(Relaxed),
            };
            (id.to_string(), reading)
        })
        .collect();
    PluginReadings {
        log_queues,
        spans: crate::plugins::opentelemetry::export::totals(),
        rate_limit_unchecked: crate::plugins::rate_limiting::passed_without_redis(),
    }
}

/// What the status listener's handlers share.
pub struct StatusState {
    /// The gateway's registry.
    pub metrics: Arc<Metrics>,
    /// The stores to ask.
    pub probe: Probe,
    /// What `GET /status/ready` answers from.
    pub readiness: Readiness,
    /// `admin_token`, which `POST /status/ready` needs when it is set.
    pub admin_token: Option<Secret<String>>,
}

/// What Kong's readiness probe (`GET /status/ready`) decides from, beyond the store.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set by `POST /status/ready` with `status=draining` (`portcullis drain`): from then on
    /// the probe answers 503, so a load balancer stops sending new traffic to a node about to
    /// stop, which still serves what it is sent. Only a restart clears it, as in Kong.
    pub draining: Arc<AtomicBool>,
    /// DB-less: the running declarative configuration's hash, empty while there is none (or
    /// it holds no entity): a node with nothing to route is not ready.
    pub declarative_hash: Option<Arc<ArcSwap<String>>>,
}

impl Readiness {
    /// Why the node is not ready to proxy now (Kong's messages), or `None`.
    async fn not_ready(&self, probe: &Probe) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining");
        }
        if !probe.datastore_reachable().await {
            return Some("failed to connect to database");
        }
        if self
            .declarative_hash
            .as_ref()
            .is_some_and(|hash| hash.load().is_empty())
        {
            return Some("no configuration available (empty configuration present)");
        }
        None
    }
}

/// `GET /status/ready`: 200 `{"message": "ready"}`, or 503 with why not.
async fn ready_answer(state: &StatusState) -> HttpResponse {
    match state.readiness.not_ready(&state.probe).await {
        None => HttpResponse::Ok().json(json!({ "message": "ready" })),
        Some(why) => HttpResponse::ServiceUnavailable().json(json!({ "message": why })),
    }
}

/// `POST /status/ready` with `status=draining` (JSON, form or query, as Kong reads its
/// parameters): 204, and the probe answers 503 from then on. Any other request is 400 with why
/// (Kong's is an empty 400); without `admin_token` when one is set, 401.
fn drain(state: &StatusState, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    if !crate::admin_token::presented(state.admin_token.as_ref(), req) {
        return AdminError::Unauthorized.error_response();
    }
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let from_body = match crate::forms::parse(content_type, body) {
        Ok((params, _)) => params.get("status").cloned(),
        Err(e) => return AdminError::BadBody(e.to_string()).error_response(),
    };
    let from_query = || {
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "status"))
            .map(|(_, v)| serde_json::Value::String(v))
    };
    match from_body.or_else(from_query) {
        Some(status) if status == "draining" => {
            state.readiness.draining.store(true, Ordering::Relaxed);
            tracing::info!("draining: GET /status/ready answers 503 from now on");
            HttpResponse::NoContent().finish()
        }
        _ => AdminError::BadBody("status must be \"draining\"".into()).error_response(),
    }
}

/// `GET /metrics`: the Prometheus text with the stores asked now.
pub async fn metrics_answer(metrics: &Metrics, probe: &Probe) -> HttpResponse {
    let text = metrics.render(probe.probes().await);
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(text)
}

/// `GET /status`: Kong's shape (`server` counters as nginx names them, `database.reachable`).
/// nginx's `connections_reading` is absent: the gateway cannot tell a connection reading its next
/// request head from an idle one (both are in `connections_waiting`).
pub async fn status_answer(metrics: &Metrics, probe: &Probe) -> HttpResponse {
    let server = metrics.server.read();
    let reachable = probe.datastore_reachable().await;
    HttpResponse::Ok().json(json!({
        "database": { "reachable": reachable },
        "server": {
            "connections_accepted": server.accepted,
            "connections_handled": server.handled,
            "connections_active": server.active,
            "connections_writing": server.writing,
            "connections_waiting": server.waiting,
            "total_requests": server.requests,
        },
    }))
}

/// The status listener's one handler.
pub async fn dispatch(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<StatusState>,
) -> HttpResponse {
    let path = req.path().trim_end_matches('/');
    let allowed = match path {
        "/status" | "/metrics" => "GET",
        "/status/ready" => "GET, POST",
        _ => return HttpResponse::NotFound().json(json!({ "message": "Not found" })),
    };
    match (path, req.method()) {
        ("/status", &Method::GET) => status_answer(&state.metrics, &state.probe).await,
        ("/metrics", &Method::GET) => metrics_answer(&state.metrics, &state.probe).await,
        ("/status/ready", &Method::GET) => ready_answer(&state).await,
        ("/status/ready", &Method::POST) => drain(&state, &req, &body),
        _ => HttpResponse::MethodNotAllowed()
            .insert_header(("allow", allowed))
            .json(json!({ "message": "Method not allowed" })),
    }
}
