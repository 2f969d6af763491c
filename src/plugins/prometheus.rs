//! Kong's `prometheus` plugin (priority 13): in the log phase, counts each request of its scope
//! in Kong's metrics (`kong_http_requests_total`, `kong_kong_latency_ms`,
//! `kong_upstream_latency_ms`, `kong_request_latency_ms`, `kong_bandwidth_bytes`), with Kong's
//! names, labels and buckets, served by `GET /metrics` on the status and admin listeners.
//!
//! As in Kong: a request no route matched is not counted; the service label is the service's
//! name, else its host; the route label is the route's name, else its id; the consumer label is
//! the consumer's username with `per_consumer`, else empty; `source` is `service` when the upstream
//! answered and `kong` otherwise; latencies are whole milliseconds.
//!
//! With `upstream_health_metrics` on any enabled instance (a global property in Kong, as here),
//! the scrape also reports Kong's `kong_upstream_target_health`: the registry puts the targets
//! into the router snapshot ([`exports_upstream_health`]) and the scrape reads their cells.
//!
//! Recording takes no lock and allocates nothing once a label set has been seen on a proxy worker
//! thread: the handles of each (route, service, consumer, status, source) are resolved once per
//! thread and kept in a thread-local map keyed by ids (the request path is thread-per-core, so
//! nothing is shared). An entry is re-resolved when its route, service or consumer object was
//! replaced by a configuration change (a rename changes the labels).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::entities::{Consumer, PluginInstance, Route, Service};
use crate::plugin_api::metrics::{Groups, Metrics, RequestHandles, RequestLabels};
use crate::plugin_api::{Exchange, Source};
use crate::schema::{Field, FieldErrors, FieldType, Schema};

/// The plugin kind, holding the gateway's registry.
pub struct Prometheus {
    metrics: Arc<Metrics>,
}

impl Prometheus {
    /// The plugin, recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let flag = |name| {
        Field::new(name, FieldType::Boolean)
            .required()
            .default(|| json!(false))
    };
    Schema {
        name: "prometheus",
        fields: vec![
            flag("per_consumer"),
            flag("status_code_metrics"),
            flag("ai_metrics"),
            flag("latency_metrics"),
            flag("bandwidth_metrics"),
            flag("upstream_health_metrics"),
            flag("wasm_metrics"),
        ],
        entity_checks: vec![],
    }
});

/// Kong's switches this gateway has nothing to report for: refused when on, rather than accepted
/// and silently empty.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("ai_metrics", "the gateway has no AI plugins"),
    ("wasm_metrics", "the gateway runs no Wasm filters"),
];

/// Whether `instance` is a `prometheus` plugin asking for `kong_upstream_target_health`: as in
/// Kong, one such enabled instance turns it on for every scrape.
pub fn exports_upstream_health(instance: &PluginInstance) -> bool {
    instance.name == "prometheus"
        && instance.config.get("upstream_health_metrics") == Some(&Value::Bool(true))
}

#[derive(Deserialize)]
struct Config {
    per_consumer: bool,
    status_code_metrics: bool,
    latency_metrics: bool,
    bandwidth_metrics: bool,
}

struct Runtime {
    metrics: Arc<Metrics>,
    per_consumer: bool,
    groups: Groups,
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn priority(&self) -> i32 {
        crate::plugins::priority("prometheus")
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        for (field, why) in UNSUPPORTED {
            if config.get(*field).and_then(Value::as_bool) == Some(true) {
                errors.insert(
                    (*field).into(),
                    json!(format!("not supported by this gateway: {why}")),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(Runtime {
            metrics: self.metrics.clone(),
            per_consumer: cfg.per_consumer,
            groups: Groups {
                status_code: cfg.status_code_metrics,
                latency: cfg.latency_metrics,
                bandwidth: cfg.bandwidth_metrics,
            },
        }))
    }
}

/// What identifies a label set without building it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    registry: u64,
    groups: Groups,
    route: Uuid,
    service: Option<Uuid>,
    consumer: Option<Uuid>,
    code: u16,
    from_service: bool,
}

/// Resolved handles, with the objects whose names they were resolved from.
struct Entry {
    route: Arc<Route>,
    service: Option<Arc<Service>>,
    consumer: Option<Arc<Consumer>>,
    handles: RequestHandles,
}

impl Entry {
    fn is_for(
        &self,
        route: &Arc<Route>,
        service: Option<&Arc<Service>>,
        consumer: Option<&Arc<Consumer>>,
    ) -> bool {
        fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        Arc::ptr_eq(&self.route, route)
            && same(self.service.as_ref(), service)
            && same(self.consumer.as_ref(), consumer)
    }
}

/// Label sets a worker thread keeps before it starts over (deleted routes and consumers would
/// otherwise stay forever).
const MAX_ENTRIES: usize = 10_000;

thread_local! {
    static HANDLES: RefCell<HashMap<Key, Rc<Entry>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn millis(d: std::time::Duration) -> f64 {
    // Kong's latencies are whole milliseconds.
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds fit an f64 exactly"
    )]
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64 as f64;
    ms
}

impl Runtime {
    fn resolve(
        &self,
        route: &Arc<Route>,
        service: Option<&Arc<Service>>,
        consumer: Option<&Arc<Consumer>>,
        exchange: &Exchange,
        source: &'static str,
    ) -> Entry {
        let route_id;
        let route_label = match &route.name {
            Some(name) => name.as_str(),
            None => {
                route_id = route.id.hyphenated().to_string();
                route_id.as_str()
            }
        };
        let service_label = service
            .map(|s| s.name.as_deref().unwrap_or(&s.host))
            .unwrap_or_default();
        let consumer_label = consumer
            .and_then(|c| c.username.as_deref())
            .unwrap_or_default();
        let handles = self.metrics.request_handles(
            &RequestLabels {
                service: service_label,
                route: route_label,
                code: exchange.status.as_u16(),
                source,
                consumer: consumer_label,
            },
            self.groups,
        );
        Entry {
            route: route.clone(),
            service: service.cloned(),
            consumer: consumer.cloned(),
            handles,
        }
    }

    fn handles(&self, exchange: &Exchange, route: &Arc<Route>) -> Rc<Entry> {
        let service = exchange.service.as_ref();
        let consumer = exchange.consumer.as_ref().filter(|_| self.per_consumer);
        let from_service = exchange.source == Source::Service;
        let key = Key {
            registry: self.metrics.id(),
            groups: self.groups,
            route: route.id,
            service: service.map(|s| s.id),
            consumer: consumer.map(|c| c.id),
            code: exchange.status.as_u16(),
            from_service,
        };
        HANDLES.with(|cell| {
            let mut map = cell.borrow_mut();
            if let Some(entry) = map.get(&key).filter(|e| e.is_for(route, service, consumer)) {
                return entry.clone();
            }
            let source = if from_service { "service" } else { "kong" };
            let entry = Rc::new(self.resolve(route, service, consumer, exchange, source));
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, entry.clone());
            entry
        })
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn priority(&self) -> i32 {
        crate::plugins::priority("prometheus")
    }
    async fn access(&self, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }
    fn logs(&self) -> bool {
        true
    }
    fn log(&self, exchange: &Exchange) {
        // Kong counts only requests a route matched.
        let Some(route) = exchange.route.as_ref() else {
            return;
        };
        let entry = self.handles(exchange, route);
        let handles = &entry.handles;
        if let Some((ingress, egress)) = &handles.bandwidth {
            if exchange.request_size > 0 {
                ingress.inc_by(exchange.request_size);
            }
            if exchange.response_size > 0 {
                egress.inc_by(exchange.response_size);
            }
        }
        if let Some(requests) = &handles.requests {
            requests.inc();
        }
        if let Some([kong, upstream, request]) = &handles.latency {
            let latencies = &exchange.latencies;
            request.observe(millis(latencies.request));
            if let Some(waited) = latencies.upstream {
                upstream.observe(millis(waited));
            }
            kong.observe(millis(latencies.gateway));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, bool)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect()
    }

    #[test]
    fn switches_without_anything_to_report_are_refused_by_name() {
        let plugin = Prometheus::new(Metrics::standalone());
        let errors = plugin
            .check_config(&config(&[
                ("ai_metrics", true),
                ("wasm_metrics", true),
                ("upstream_health_metrics", true),
                ("latency_metrics", true),
            ]))
            .unwrap_err();
        assert_eq!(
            errors.get("ai_metrics"),
            Some(&json!(
                "not supported by this gateway: the gateway has no AI plugins"
            ))
        );
        assert_eq!(
            errors.get("wasm_metrics"),
            Some(&json!(
                "not supported by this gateway: the gateway runs no Wasm filters"
            ))
        );
        assert_eq!(errors.len(), 2, "upstream_health_metrics is accepted");
        assert!(plugin
            .check_config(&config(&[("ai_metrics", false), ("per_consumer", true)]))
            .is_ok());
    }

    fn exchange(route: &Arc<Route>, status: u16) -> Exchange {
        let (head, ()) = http::Request::new(()).into_parts();
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        Exchange {
            req: Rc::new(crate::plugin_api::ClientRequest::new(head, addr, addr)),
            request_id: String::new(),
            scheme: crate::plugin_api::Scheme::Http,
            client_ip: addr.ip(),
            route: Some(route.clone()),
            service: None,
            consumer: None,
            credential: None,
            status: http::StatusCode::from_u16(status).unwrap(),
            source: Source::Service,
            upstream_status: None,
            upstream_uri: None,
            tries: Vec::new(),
            response_headers: None,
            request_size: 100,
            response_size: 200,
            complete: true,
            started_at: std::time::SystemTime::now(),
            latencies: crate::plugin_api::Latencies::default(),
            slots: Default::default(),
            steps: Vec::new(),
        }
    }

    fn route(name: &str) -> Arc<Route> {
        Arc::new(
            serde_json::from_value(json!({
                "id": Uuid::new_v4(),
                "name": name,
                "created_at": 0,
                "protocols": ["http"],
                "https_redirect_status_code": 426,
                "regex_priority": 0,
                "strip_path": true,
                "preserve_host": false,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_known_label_set_is_served_from_the_thread_cache() {
        let metrics = Metrics::standalone();
        let runtime = Runtime {
            metrics: metrics.clone(),
            per_consumer: false,
            groups: Groups {
                status_code: true,
                latency: true,
                bandwidth: true,
            },
        };
        let route = route("cached");
        let first = runtime.handles(&exchange(&route, 200), &route);
        let second = runtime.handles(&exchange(&route, 200), &route);
        assert!(Rc::ptr_eq(&first, &second), "resolved once");
        let other_code = runtime.handles(&exchange(&route, 404), &route);
        assert!(!Rc::ptr_eq(&first, &other_code));
        // The route replaced by a configuration change (same id, new name): resolved again.
        let renamed: Arc<Route> = Arc::new(Route {
            name: Some("renamed".into()),
            ..(*route).clone()
        });
        let third = runtime.handles(&exchange(&renamed, 200), &renamed);
        assert!(!Rc::ptr_eq(&first, &third));
        runtime.log(&exchange(&renamed, 200));
        let text = metrics.render(Default::default());
        assert!(text.contains("kong_http_requests_total{code=\"200\",consumer=\"\",route=\"renamed\",service=\"\",source=\"service\",workspace=\"default\"} 1\n"), "{text}");
        assert!(text.contains("kong_bandwidth_bytes{consumer=\"\",direction=\"ingress\",route=\"renamed\",service=\"\",workspace=\"default\"} 100\n"), "{text}");
        assert!(text.contains("kong_bandwidth_bytes{consumer=\"\",direction=\"egress\",route=\"renamed\",service=\"\",workspace=\"default\"} 200\n"), "{text}");
        // No upstream was asked: no upstream latency observed, the others once.
        assert!(text.contains("kong_upstream_latency_ms_count{route=\"renamed\",service=\"\",workspace=\"default\"} 0\n"), "{text}");
        assert!(text.contains("kong_request_latency_ms_count{route=\"renamed\",service=\"\",workspace=\"default\"} 1\n"), "{text}");
    }

    #[test]
    fn latencies_are_whole_milliseconds() {
        assert_eq!(millis(std::time::Duration::from_micros(2_999)), 2.0);
        assert_eq!(millis(std::time::Duration::from_secs(3)), 3000.0);
    }
}
