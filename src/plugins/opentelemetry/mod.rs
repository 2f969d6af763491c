//! Kong's `opentelemetry` plugin (priority 14): continues the caller's trace and exports the
//! gateway's part of it to an OpenTelemetry collector as OTLP/HTTP protobuf.
//!
//! - Access phase: reads the caller's trace context (W3C, B3, Jaeger or OT headers, by
//!   `header_type` or the `propagation` record), keeps the trace id (or draws one), draws ids for
//!   the gateway's SERVER span (the request) and CLIENT span (the upstream call), decides sampling
//!   (`sampling_rate`, over the trace id as Kong does; a caller's "not sampled" wins) and writes
//!   the context to the upstream request with the CLIENT span as parent. The ids wait in the
//!   request's [`PluginSlots`](crate::plugin_api::PluginSlots) for the log phase.
//! - Log phase: builds the spans from the exchange's facts (OTel HTTP semantic conventions):
//!   the request (SERVER, `kong`), the route match and each plugin's access phase (INTERNAL,
//!   `kong.router`, `kong.access.plugin.<name>`) and the upstream call (CLIENT, `kong.balancer`),
//!   and queues them for [`export`], which never makes a request wait.
//!
//! Refused, with a message: `logs_endpoint`, the `aws`, `gcp`, `datadog` and `instana` formats,
//! `queue.max_bytes` (Kong applies it to string entries only), and `resource_attributes` values
//! that are Kong templates (`$(...)`, evaluated by Kong's Lua sandbox).

pub mod export;
pub mod propagation;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as SpanStatus};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::entities::PluginInstance;
use crate::plugin_api::{
    Exchange, HeaderMap, HeaderName, HeaderValue, Step, StepKind, Uri, Version,
};
use crate::schema::{Field, FieldErrors, FieldType, Schema};
use export::{ExportSettings, Exporter, QueueSettings};
use propagation::{Extracted, Format, Inject, Outgoing, Propagation};

/// The plugin kind.
pub struct OpenTelemetry;

const NAME: &str = "opentelemetry";
const PRIORITY: i32 = super::priority("opentelemetry");

/// Kong's `header_type` values (those this build refuses included, so that they get a clear
/// message rather than "expected one of").
const HEADER_TYPES: &[&str] = &[
    "preserve",
    "ignore",
    "b3",
    "b3-single",
    "w3c",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
    "instana",
];
const EXTRACTORS: &[&str] = &[
    "w3c", "b3", "jaeger", "ot", "aws", "gcp", "datadog", "instana",
];
const INJECTORS: &[&str] = &[
    "w3c",
    "b3",
    "b3-single",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
    "instana",
];
const INJECT_CHOICES: &[&str] = &[
    "preserve",
    "w3c",
    "b3",
    "b3-single",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
    "instana",
];

fn check_url(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err("expected an http or https URL with a host".into()),
        Err(e) => Err(format!("invalid url: {e}")),
    }
}

fn check_timeout(v: &Value) -> Result<(), String> {
    match v.as_i64() {
        Some(0..=2_147_483_646) => Ok(()),
        _ => Err("value should be between 0 and 2147483646".into()),
    }
}

fn check_header_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if HeaderName::from_bytes(s.as_bytes()).is_ok() {
        Ok(())
    } else {
        Err(format!("bad header name '{s}'"))
    }
}

/// Kong's `typedefs.propagation`.
static PROPAGATION: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "propagation",
    fields: vec![
        Field::new("extract", FieldType::Array(Box::new(FieldType::String))).one_of(EXTRACTORS),
        Field::new("clear", FieldType::Array(Box::new(FieldType::String))).check(check_header_name),
        Field::new("inject", FieldType::Array(Box::new(FieldType::String))).one_of(INJECT_CHOICES),
        Field::new("default_format", FieldType::String)
            .required()
            .one_of(INJECTORS),
    ],
    entity_checks: vec![],
});

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: NAME,
    fields: vec![
        Field::new("traces_endpoint", FieldType::String).check(check_url),
        // Kong 3.x's older name for `traces_endpoint` (a shorthand: never stored).
        Field {
            write_only: true,
            ..Field::new("endpoint", FieldType::String).check(check_url)
        },
        Field::new("logs_endpoint", FieldType::String),
        Field::new("headers", FieldType::StringMap),
        Field::new("resource_attributes", FieldType::StringMap),
        Field::new(
            "queue",
            FieldType::Record(&crate::plugins::log_queue::QUEUE_SCHEMA),
        )
        .required()
        .default(|| json!({ "max_batch_size": 200 })),
        // Deprecated by Kong for `queue.max_batch_size` / `queue.max_coalescing_delay`, which
        // they set (shorthands: never stored).
        Field {
            write_only: true,
            ..Field::new("batch_span_count", FieldType::Integer).between(1, 1_000_000)
        },
        Field {
            write_only: true,
            ..Field::new("batch_flush_delay", FieldType::Integer).between(0, 3600)
        },
        Field::new("connect_timeout", FieldType::Integer)
            .required()
            .default(|| json!(1000))
            .check(check_timeout),
        Field::new("send_timeout", FieldType::Integer)
            .required()
            .default(|| json!(5000))
            .check(check_timeout),
        Field::new("read_timeout", FieldType::Integer)
            .required()
            .default(|| json!(5000))
            .check(check_timeout),
        Field::new("http_response_header_for_traceid", FieldType::String).check(check_header_name),
        Field::new("header_type", FieldType::String)
            .default(|| json!("preserve"))
            .one_of(HEADER_TYPES),
        Field::new("sampling_rate", FieldType::Number)
            .check(|v| crate::schema::check_number_between(v, 0.0, 1.0)),
        Field::new("propagation", FieldType::Record(&PROPAGATION))
            .required()
            .default(|| json!({ "default_format": "w3c" })),
    ],
    entity_checks: vec![],
});

fn field_error(errors: &mut FieldErrors, path: &[&str], message: String) {
    let mut at = errors;
    for key in &path[..path.len() - 1] {
        let next = at
            .entry((*key).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(map) = next else { return };
        at = map;
    }
    if let Some(last) = path.last() {
        at.insert((*last).to_string(), Value::String(message));
    }
}

fn unsupported_format(name: &str) -> String {
    format!("the '{name}' format is not supported; use w3c, b3, b3-single, jaeger or ot")
}

impl Plugin for OpenTelemetry {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn complete_config(&self, config: &mut Map<String, Value>) {
        if let Some(endpoint) = config.remove("endpoint").filter(|v| !v.is_null()) {
            config.insert("traces_endpoint".into(), endpoint);
        }
        let count = config.remove("batch_span_count").filter(|v| !v.is_null());
        let delay = config.remove("batch_flush_delay").filter(|v| !v.is_null());
        if let Some(Value::Object(queue)) = config.get_mut("queue") {
            if let Some(count) = count {
                queue.insert("max_batch_size".into(), count);
            }
            if let Some(delay) = delay {
                queue.insert("max_coalescing_delay".into(), delay);
            }
        }
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::new();
        let set = |k: &str| config.get(k).is_some_and(|v| !v.is_null());
        if set("logs_endpoint") {
            field_error(
                &mut e,
                &["logs_endpoint"],
                "not supported: this plugin exports traces only".into(),
            );
        } else if !set("traces_endpoint") {
            e.insert(
                "@entity".into(),
                json!([
                    "at least one of these fields must be non-empty: 'traces_endpoint', 'logs_endpoint'"
                ]),
            );
        }
        if let Some(Value::Object(headers)) = config.get("headers") {
            for (name, value) in headers {
                if HeaderName::from_bytes(name.as_bytes()).is_err()
                    || HeaderValue::from_str(value.as_str().unwrap_or_default()).is_err()
                {
                    field_error(&mut e, &["headers"], format!("bad header '{name}'"));
                }
            }
        }
        if let Some(Value::Object(attributes)) = config.get("resource_attributes") {
            for value in attributes.values().filter_map(Value::as_str) {
                if value.is_empty() {
                    field_error(
                        &mut e,
                        &["resource_attributes"],
                        "length must be at least 1".into(),
                    );
                } else if value.contains("$(") {
                    field_error(
                        &mut e,
                        &["resource_attributes"],
                        "template values ($(...)) are not supported; give the value itself".into(),
                    );
                }
            }
        }
        let header_type = config.get("header_type").and_then(Value::as_str);
        if let Some(h) = header_type.filter(|h| propagation::UNSUPPORTED.contains(h)) {
            field_error(&mut e, &["header_type"], unsupported_format(h));
        }
        if let Some(Value::Object(p)) = config.get("propagation") {
            for key in ["extract", "inject"] {
                let names = p.get(key).and_then(Value::as_array);
                let bad = names
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|n| propagation::UNSUPPORTED.contains(n));
                if let Some(bad) = bad {
                    field_error(&mut e, &["propagation", key], unsupported_format(bad));
                }
            }
            let default = p.get("default_format").and_then(Value::as_str);
            if let Some(d) = default.filter(|d| propagation::UNSUPPORTED.contains(d)) {
                field_error(
                    &mut e,
                    &["propagation", "default_format"],
                    unsupported_format(d),
                );
            }
        }
        if let Some(Value::Object(q)) = config.get("queue") {
            if q.get("max_bytes").is_some_and(|v| !v.is_null()) {
                field_error(
                    &mut e,
                    &["queue", "max_bytes"],
                    "not supported: spans are not string entries (Kong fails every span with it)"
                        .into(),
                );
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e)
        }
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let endpoint_text = cfg
            .traces_endpoint
            .clone()
            .ok_or("opentelemetry needs a traces_endpoint")?;
        let endpoint: Uri = endpoint_text
            .parse()
            .map_err(|e| format!("traces_endpoint: {e}"))?;
        let key = json!([
            endpoint_text,
            cfg.headers,
            cfg.resource_attributes,
            instance.config.get("queue"),
            cfg.connect_timeout,
            cfg.send_timeout,
            cfg.read_timeout,
        ])
        .to_string();
        let settings = ExportSettings {
            endpoint,
            headers: cfg
                .headers
                .iter()
                .flatten()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            resource: resource(cfg.resource_attributes.as_ref()),
            queue: cfg.queue.settings(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout),
            exchange_timeout: Duration::from_millis(cfg.send_timeout + cfg.read_timeout),
        };
        let exporter = Exporter::shared(settings, key, &endpoint_text)?;
        let trace_id_header = cfg
            .http_response_header_for_traceid
            .as_deref()
            .map(|h| HeaderName::from_bytes(h.as_bytes()))
            .transpose()
            .map_err(|e| format!("http_response_header_for_traceid: {e}"))?;
        Ok(Arc::new(Runtime {
            propagation: cfg.propagation()?,
            sampling_rate: cfg.sampling_rate.unwrap_or(1.0),
            trace_id_header,
            exporter,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(redacted("/a"), "/a");
        assert_eq!(redacted("/a?"), "/a?");
        assert_eq!(
            redacted("/a?access_token=abc&flag&apikey=k&e="),
            "/a?access_token=REDACTED&flag&apikey=REDACTED&e="
        );
    }
}

#[derive(Deserialize)]
struct Config {
    traces_endpoint: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    resource_attributes: Option<BTreeMap<String, String>>,
    queue: QueueConfig,
    connect_timeout: u64,
    send_timeout: u64,
    read_timeout: u64,
    http_response_header_for_traceid: Option<String>,
    header_type: Option<String>,
    sampling_rate: Option<f64>,
    propagation: PropagationConfig,
}

#[derive(Deserialize)]
struct QueueConfig {
    max_batch_size: usize,
    max_coalescing_delay: f64,
    max_entries: usize,
    max_retry_time: f64,
    initial_retry_delay: f64,
    max_retry_delay: f64,
    concurrency_limit: i64,
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

impl QueueConfig {
    fn settings(&self) -> QueueSettings {
        QueueSettings {
            max_batch_size: self.max_batch_size,
            max_coalescing_delay: seconds(self.max_coalescing_delay),
            max_entries: self.max_entries,
            max_retry_time: (self.max_retry_time > 0.0).then(|| seconds(self.max_retry_time)),
            initial_retry_delay: seconds(self.initial_retry_delay),
            max_retry_delay: seconds(self.max_retry_delay),
            concurrent: self.concurrency_limit == -1,
        }
    }
}

#[derive(Deserialize)]
struct PropagationConfig {
    extract: Option<Vec<String>>,
    clear: Option<Vec<String>>,
    inject: Option<Vec<String>>,
    default_format: String,
}

fn format(name: &str) -> Result<Format, String> {
    Format::named(name).ok_or_else(|| unsupported_format(name))
}

impl Config {
    /// Kong's `get_plugin_params`: the `propagation` record when it says anything beyond its
    /// default format, else the formats `header_type` implies.
    fn propagation(&self) -> Result<Propagation, String> {
        let p = &self.propagation;
        let default_format = format(&p.default_format)?;
        if p.extract.is_some() || p.clear.is_some() || p.inject.is_some() {
            return Ok(Propagation {
                extract: p
                    .extract
                    .iter()
                    .flatten()
                    .map(|n| format(n))
                    .collect::<Result<_, _>>()?,
                clear: p
                    .clear
                    .iter()
                    .flatten()
                    .map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("propagation.clear: {e}"))?,
                inject: p
                    .inject
                    .iter()
                    .flatten()
                    .map(|n| match n.as_str() {
                        "preserve" => Ok(Inject::Preserve),
                        n => format(n).map(Inject::Format),
                    })
                    .collect::<Result<_, _>>()?,
                default_format,
            });
        }
        let all = propagation::EXTRACT_ALL.to_vec();
        let (extract, inject) = match self.header_type.as_deref() {
            None => (Vec::new(), Vec::new()),
            Some("preserve") => (all, vec![Inject::Preserve]),
            Some("ignore") => (Vec::new(), vec![Inject::Format(default_format)]),
            Some(other) => (all, vec![Inject::Preserve, Inject::Format(format(other)?)]),
        };
        Ok(Propagation {
            extract,
            clear: Vec::new(),
            inject,
            default_format,
        })
    }
}

fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// `service.name = portcullis`, `service.version`, then `resource_attributes` (which may
/// replace them).
fn resource(extra: Option<&BTreeMap<String, String>>) -> Vec<KeyValue> {
    let mut attributes: BTreeMap<&str, &str> = BTreeMap::new();
    attributes.insert("service.name", "portcullis");
    attributes.insert("service.version", env!("CARGO_PKG_VERSION"));
    for (k, v) in extra.into_iter().flatten() {
        attributes.insert(k, v);
    }
    attributes
        .into_iter()
        .map(|(k, v)| string_attribute(k, v))
        .collect()
}

/// One compiled instance.
struct Runtime {
    propagation: Propagation,
    sampling_rate: f64,
    trace_id_header: Option<HeaderName>,
    exporter: Arc<Exporter>,
}

/// What the access phase decided about a request's trace, kept for the later phases.
#[derive(Debug, Clone, Copy)]
struct Trace {
    trace_id: [u8; 16],
    /// The caller's span, when one was read.
    parent: Option<[u8; 8]>,
    server_span: [u8; 8],
    client_span: [u8; 8],
    sampled: bool,
}

impl Runtime {
    /// Reads the caller's context and decides the request's trace.
    fn begin(&self, headers: &HeaderMap) -> (Trace, Option<(Format, Extracted)>) {
        let found = propagation::extract(headers, &self.propagation.extract);
        let extracted = found.map(|(_, e)| e).unwrap_or_default();
        let trace_id = extracted
            .trace_id
            .unwrap_or_else(|| rand::random::<u128>().to_be_bytes());
        let sampled = extracted.sampled != Some(false)
            && propagation::sampled_by_rate(&trace_id, self.sampling_rate);
        let trace = Trace {
            trace_id,
            parent: extracted.span_id,
            server_span: rand::random::<u64>().to_be_bytes(),
            client_span: rand::random::<u64>().to_be_bytes(),
            sampled,
        };
        (trace, found)
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    async fn access(&self, ctx: &mut RequestCtx) -> Flow {
        let (trace, found) = self.begin(ctx.req.headers());
        for name in &self.propagation.clear {
            ctx.clear_upstream(name);
        }
        let extracted = found.map(|(_, e)| e).unwrap_or_default();
        let out = Outgoing {
            trace_id: trace.trace_id,
            short_trace_id: extracted.short_trace_id,
            span_id: trace.client_span,
            parent_id: trace.server_span,
            sampled: trace.sampled,
            debug: extracted.debug,
        };
        for inject in &self.propagation.inject {
            let format = match inject {
                Inject::Format(f) => *f,
                Inject::Preserve => match found {
                    Some((Format::B3, e)) if e.single_header => Format::B3Single,
                    Some((f, _)) => f,
                    None => self.propagation.default_format,
                },
            };
            propagation::inject(format, &out, ctx);
        }
        ctx.slots.insert(trace);
        Flow::Continue
    }
    fn response_headers(&self, ctx: &RequestCtx, headers: &mut HeaderMap) {
        let (Some(name), Some(trace)) = (&self.trace_id_header, ctx.slots.get::<Trace>()) else {
            return;
        };
        if let Ok(v) = HeaderValue::from_str(&propagation::to_hex(&trace.trace_id)) {
            headers.append(name.clone(), v);
        }
    }
    fn logs(&self) -> bool {
        true
    }
    fn log_needs(&self) -> crate::plugin_api::LogNeeds {
        crate::plugin_api::LogNeeds {
            details: true,
            response_headers: false,
            steps: true,
        }
    }
    fn log(&self, exchange: &Exchange) {
        // No access phase ran (no route matched, or the request failed before its plugins):
        // the request is traced alike, without an upstream call.
        let trace = match exchange.slots.get::<Trace>() {
            Some(trace) => *trace,
            None => self.begin(exchange.req.headers()).0,
        };
        if !trace.sampled {
            return;
        }
        let mut spans = Vec::with_capacity(2 + exchange.steps.len());
        spans.push(server_span(exchange, &trace));
        // A plugin's own steps (token lookup, introspection call) follow its access phase's
        // step, and are children of its span.
        let mut access_span = None;
        for step in &exchange.steps {
            let parent = match step.kind {
                StepKind::TokenLookup | StepKind::IntrospectionCall => access_span,
                StepKind::Router | StepKind::Access(_) => None,
            };
            let span = step_span(exchange, &trace, step, parent);
            if let StepKind::Access(_) = step.kind {
                access_span = span.span_id.as_slice().try_into().ok();
            }
            spans.push(span);
        }
        if let Some(client) = client_span(exchange, &trace) {
            spans.push(client);
        }
        self.exporter.push(spans);
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A request target with every query value replaced by `REDACTED`: query strings carry tokens
/// and keys (`access_token`, `apikey`, signatures) that must not leave for a collector.
fn redacted(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let mut out = String::with_capacity(target.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// Span flags: sampled, and whether the parent is known to be remote (OTLP 1.1).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The request, as the gateway served it (Kong's `kong` span).
fn server_span(exchange: &Exchange, trace: &Trace) -> Span {
    let req = &exchange.req;
    let start = unix_nanos(exchange.started_at);
    let end =
        start.saturating_add(u64::try_from(exchange.latencies.request.as_nanos()).unwrap_or(0));
    // The authority as the client sent it (absolute form or `Host`), and its host alone.
    let authority = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    // User information is never part of what is exported.
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = authority
        .parse::<http::uri::Authority>()
        .map_or_else(|_| authority.to_string(), |a| a.host().to_string());
    let target = redacted(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut attributes = vec![
        string_attribute("http.request.method", req.method().as_str()),
        string_attribute(
            "url.full",
            format!("{}://{authority}{target}", exchange.scheme.as_str()),
        ),
        string_attribute("url.path", req.path()),
        string_attribute("url.scheme", exchange.scheme.as_str()),
        int_attribute(
            "http.response.status_code",
            i64::from(exchange.status.as_u16()),
        ),
        string_attribute("server.address", host),
        int_attribute("server.port", i64::from(req.local_addr().port())),
        string_attribute("client.address", exchange.client_ip.to_string()),
        string_attribute("network.peer.address", req.peer_addr().ip().to_string()),
        string_attribute("network.protocol.version", protocol_version(req.version())),
        string_attribute("portcullis.request.id", exchange.request_id.as_str()),
    ];
    if let Some((_, query)) = target.split_once('?') {
        attributes.push(string_attribute("url.query", query));
    }
    if let Some(path) = exchange
        .route
        .as_ref()
        .and_then(|r| r.paths.as_ref())
        .and_then(|p| p.first())
    {
        attributes.push(string_attribute("http.route", path.as_str()));
    }
    let error = exchange.status.is_server_error();
    let remote = if trace.parent.is_some() {
        FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
    } else {
        FLAG_HAS_IS_REMOTE
    };
    Span {
        trace_id: trace.trace_id.to_vec(),
        span_id: trace.server_span.to_vec(),
        trace_state: req
            .headers()
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        parent_span_id: trace.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: FLAG_SAMPLED | remote,
        name: "kong".into(),
        kind: SpanKind::Server.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(Status {
            code: if error {
                SpanStatus::Error
            } else {
                SpanStatus::Unset
            }
            .into(),
            ..Status::default()
        }),
        ..Span::default()
    }
}

/// One of the gateway's own steps, a child of the request's span (Kong's `kong.router` and
/// `kong.access.plugin.<name>` spans), or of `parent` (a plugin's access span) for the steps a
/// plugin times itself: `portcullis.oauth2.token_lookup`, `portcullis.introspection.call`.
fn step_span(exchange: &Exchange, trace: &Trace, step: &Step, parent: Option<[u8; 8]>) -> Span {
    let start = unix_nanos(exchange.started_at + step.start);
    let name = match step.kind {
        StepKind::Router => "kong.router".to_string(),
        StepKind::Access(plugin) => format!("kong.access.plugin.{plugin}"),
        StepKind::TokenLookup => "portcullis.oauth2.token_lookup".to_string(),
        StepKind::IntrospectionCall => "portcullis.introspection.call".to_string(),
    };
    Span {
        trace_id: trace.trace_id.to_vec(),
        span_id: rand::random::<u64>().to_be_bytes().to_vec(),
        parent_span_id: parent.unwrap_or(trace.server_span).to_vec(),
        flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
        name,
        kind: match step.kind {
            StepKind::IntrospectionCall => SpanKind::Client,
            _ => SpanKind::Internal,
        }
        .into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(u64::try_from(step.took.as_nanos()).unwrap_or(0)),
        ..Span::default()
    }
}

/// The call to the upstream (Kong's `kong.balancer` span), when one was made: from the first
/// attempt to the answer's head, on the last attempt's address.
fn client_span(exchange: &Exchange, trace: &Trace) -> Option<Span> {
    let last = exchange.tries.last()?;
    let before = exchange.latencies.before_upstream?;
    let start = unix_nanos(exchange.started_at + before);
    let end = match exchange.latencies.upstream {
        Some(took) => start.saturating_add(u64::try_from(took.as_nanos()).unwrap_or(0)),
        None => unix_nanos(exchange.started_at + exchange.latencies.request),
    };
    let mut attributes = vec![
        string_attribute("http.request.method", exchange.req.method().as_str()),
        string_attribute("server.address", &*last.host),
        int_attribute("server.port", i64::from(last.port)),
        int_attribute(
            "http.request.resend_count",
            i64::try_from(exchange.tries.len() - 1).unwrap_or(0),
        ),
    ];
    if let Some(uri) = &exchange.upstream_uri {
        let scheme = exchange.service.as_ref().map_or("http", |s| {
            if s.protocol == "https" {
                "https"
            } else {
                "http"
            }
        });
        attributes.push(string_attribute(
            "url.full",
            format!("{scheme}://{}:{}{}", last.host, last.port, redacted(uri)),
        ));
    }
    let error = match exchange.upstream_status {
        Some(status) => {
            attributes.push(int_attribute(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            status.is_server_error() || status.is_client_error()
        }
        None => true,
    };
    Some(Span {
        trace_id: trace.trace_id.to_vec(),
        span_id: trace.client_span.to_vec(),
        parent_span_id: trace.server_span.to_vec(),
        flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
        name: "kong.balancer".into(),
        kind: SpanKind::Client.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(Status {
            code: if error {
                SpanStatus::Error
            } else {
                SpanStatus::Unset
            }
            .into(),
            message: if exchange.upstream_status.is_none() {
                "the upstream did not answer".into()
            } else {
                String::new()
            },
        }),
        ..Span::default()
    })
}
