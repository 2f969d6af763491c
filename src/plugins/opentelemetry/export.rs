//! Sending finished spans to a collector as OTLP/HTTP protobuf, off the request path.
//!
//! A proxy thread hands a request's spans to a bounded channel with `try_send` and goes on: a
//! full queue drops them and counts the drop. One thread per exporter, with its own
//! current-thread runtime, drains the channel into batches (Kong's queue settings: batch size,
//! coalescing delay, retries with exponential backoff, one or unlimited sends at a time) and
//! POSTs each as an `ExportTraceServiceRequest`. Instances whose export settings are the same
//! share one exporter, so a config change that recompiles the plugins keeps the queue and its
//! counters.
//!
//! Why not the OpenTelemetry SDK's batch processor: it owns its spans' lifecycle through the
//! `tracing`/`opentelemetry` API (a tracer per process, spans opened and closed as guards) and
//! expects one async runtime for its exporter; the proxy has one current-thread runtime per
//! worker and only learns a request's timings once the answer is written. Building the OTLP
//! messages from the log phase's facts and batching them here is smaller and never blocks a
//! worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;

use crate::plugin_api::{HeaderName, HeaderValue, Uri};

/// Kong's queue settings, as they apply to spans.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Spans per export request at most.
    pub max_batch_size: usize,
    /// How long the first span of a batch waits for others.
    pub max_coalescing_delay: Duration,
    /// Requests' span groups waiting at most; more are dropped.
    pub max_entries: usize,
    /// How long a failing batch is retried before it is dropped (`None`: never retried).
    pub max_retry_time: Option<Duration>,
    /// The first wait before a retry; each next one doubles.
    pub initial_retry_delay: Duration,
    /// The longest wait between retries.
    pub max_retry_delay: Duration,
    /// Whether batches may be sent side by side (`concurrency_limit = -1`).
    pub concurrent: bool,
}

/// Where and how spans are sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// `traces_endpoint`.
    pub endpoint: Uri,
    /// `headers`, sent with every export request (often a collector's token: never logged).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The resource's attributes.
    pub resource: Vec<KeyValue>,
    /// The queue.
    pub queue: QueueSettings,
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// `send_timeout` + `read_timeout`: the bound on writing a batch and reading the answer's
    /// head (hyper's client does not time the two apart).
    pub exchange_timeout: Duration,
}

/// What happened to the spans handed to one collector endpoint: lock-free, read by operators'
/// probes and the tests.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full, or the collector failed past `max_retry_time`.
    pub dropped: AtomicU64,
}

/// Every exporter's counters, by `traces_endpoint`.
static COUNTERS: LazyLock<Mutex<HashMap<String, Arc<ExportCounters>>>> =
    LazyLock::new(Mutex::default);

/// Spans exported and dropped by every exporter together (for `/metrics`, read at scrape time).
pub fn totals() -> (u64, u64) {
    COUNTERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .fold((0, 0), |(exported, dropped), c| {
            (
                exported + c.exported.load(Ordering::Relaxed),
                dropped + c.dropped.load(Ordering::Relaxed),
            )
        })
}

/// The counters of spans sent to `endpoint` (the configured `traces_endpoint`, as written),
/// created on first use and kept for the process's life.
pub fn counters(endpoint: &str) -> Arc<ExportCounters> {
    COUNTERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(endpoint.to_string())
        .or_default()
        .clone()
}

/// One request's spans, on their way to the exporter thread.
type Entry = Vec<Span>;

/// A queue to one collector, drained by its own thread; the thread ends once every handle is
/// dropped and the queue is sent.
pub struct Exporter {
    queue: mpsc::Sender<Entry>,
    counters: Arc<ExportCounters>,
}

impl Exporter {
    /// The exporter for these settings (`key` names them; `endpoint` is `traces_endpoint` as
    /// configured, naming the [`counters`]): a running one with the same settings, or a new one.
    ///
    /// # Errors
    /// The exporter thread could not be started.
    pub fn shared(
        settings: ExportSettings,
        key: String,
        endpoint: &str,
    ) -> Result<Arc<Self>, String> {
        static EXPORTERS: LazyLock<Mutex<HashMap<String, Weak<Exporter>>>> =
            LazyLock::new(Mutex::default);
        let mut exporters = EXPORTERS.lock().unwrap_or_else(PoisonError::into_inner);
        exporters.retain(|_, e| e.strong_count() > 0);
        if let Some(running) = exporters.get(&key).and_then(Weak::upgrade) {
            return Ok(running);
        }
        let counters = counters(endpoint);
        let (queue, entries) = mpsc::channel(settings.queue.max_entries.max(1));
        let exporter = Arc::new(Self {
            queue,
            counters: counters.clone(),
        });
        std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drain(entries, settings, counters)),
                    Err(e) => tracing::error!(error = %e, "opentelemetry: no exporter runtime"),
                }
            })
            .map_err(|e| format!("cannot start the span exporter: {e}"))?;
        exporters.insert(key, Arc::downgrade(&exporter));
        Ok(exporter)
    }

    /// Queues a request's spans; never waits. A full queue drops them (counted).
    pub fn push(&self, spans: Vec<Span>) {
        let count = spans.len() as u64;
        if self.queue.try_send(spans).is_err() {
            self.counters.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::verified_upstream_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The exporter thread: batches what arrives and sends it, until every sender is gone.
async fn drain(
    mut entries: mpsc::Receiver<Entry>,
    settings: ExportSettings,
    counters: Arc<ExportCounters>,
) {
    let settings = Arc::new(settings);
    let client = http_client(settings.connect_timeout);
    let max = settings.queue.max_batch_size.max(1);
    let mut open = true;
    let mut sending = tokio::task::JoinSet::new();
    while open {
        let Some(first) = entries.recv().await else {
            break;
        };
        let mut batch = first;
        let deadline = tokio::time::Instant::now() + settings.queue.max_coalescing_delay;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, entries.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(max));
            let send = send_with_retries(client.clone(), settings.clone(), counters.clone(), batch);
            if settings.queue.concurrent {
                sending.spawn(send);
            } else {
                send.await;
            }
            batch = rest;
        }
        while sending.try_join_next().is_some() {}
    }
    while sending.join_next().await.is_some() {}
}

/// Sends one batch, retrying with exponential backoff within `max_retry_time`.
async fn send_with_retries(
    client: HttpClient,
    settings: Arc<ExportSettings>,
    counters: Arc<ExportCounters>,
    spans: Vec<Span>,
) {
    let count = spans.len() as u64;
    let body = Bytes::from(encode(&settings.resource, spans));
    let started = tokio::time::Instant::now();
    let mut delay = settings.queue.initial_retry_delay;
    loop {
        let error = match send(&client, &settings, body.clone()).await {
            Ok(()) => {
                counters.exported.fetch_add(count, Ordering::Relaxed);
                return;
            }
            Err(e) => e,
        };
        let retry = settings
            .queue
            .max_retry_time
            .is_some_and(|limit| started.elapsed() + delay <= limit);
        if !retry {
            let earlier = counters.dropped.fetch_add(count, Ordering::Relaxed);
            // The endpoint's host only: a URL may carry credentials, headers often do. Once
            // per hundred thousand spans dropped: a collector that is down is said, not
            // shouted.
            if earlier / 100_000 != (earlier + count) / 100_000 || earlier == 0 {
                tracing::warn!(
                    collector = settings.endpoint.host().unwrap_or_default(),
                    error = %error,
                    dropped = earlier + count,
                    "opentelemetry: spans dropped, the collector did not take them"
                );
            }
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.queue.max_retry_delay);
    }
}

/// One export request: POST, `application/x-protobuf`, a 2xx answer.
async fn send(client: &HttpClient, settings: &ExportSettings, body: Bytes) -> Result<(), String> {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = settings.endpoint.clone();
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    for (name, value) in &settings.headers {
        headers.insert(name.clone(), value.clone());
    }
    let exchange = async {
        let answer =
            client
                .request(request)
                .await
                .map_err(|e| match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                })?;
        let status = answer.status();
        // Read to the end so the connection can carry the next batch.
        let _ = answer.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    };
    tokio::time::timeout(settings.exchange_timeout, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// An OTLP export request: one resource, one scope (the gateway), the spans.
pub fn encode(resource: &[KeyValue], spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "portcullis".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}
