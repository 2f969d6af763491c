//! Kong's status listener (`status_listen`): a read-only server for health checks and scrapes,
//! apart from the admin API so that a load balancer or Prometheus can reach it without the admin
//! token or the admin network. `GET /status` (Kong's shape: the proxy server's connection
//! counters and whether the database answers) and `GET /metrics` (the Prometheus text); any other
//! path is 404, another method on those two paths 405.
//!
//! The admin API serves the same `GET /metrics` (behind `admin_token` when set) through
//! [`metrics_answer`].

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use arc_swap::ArcSwap;
use portcullis_stores::redis_cache::RedisTokenCache;
use portcullis_stores::ConfigStore;
use serde_json::json;

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
pub async fn dispatch(req: HttpRequest, state: web::Data<StatusState>) -> HttpResponse {
    let path = req.path().trim_end_matches('/');
    let known = matches!(path, "/status" | "/metrics");
    if !known {
        return HttpResponse::NotFound().json(json!({ "message": "Not found" }));
    }
    if req.method() != Method::GET {
        return HttpResponse::MethodNotAllowed()
            .insert_header(("allow", "GET"))
            .json(json!({ "message": "Method not allowed" }));
    }
    if path == "/status" {
        status_answer(&state.metrics, &state.probe).await
    } else {
        metrics_answer(&state.metrics, &state.probe).await
    }
}
