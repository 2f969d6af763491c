//! The gateway's metrics registry: Kong's `prometheus` plugin metrics (`kong_*`, with Kong's
//! names, labels and buckets, so that Kong's Grafana dashboard 7424 works unchanged), the proxy
//! server's connection counters, and the gateway's own `portcullis_*` metrics (tokens issued,
//! token checks, token lookups per store tier, cluster notices and resyncs, introspection cache
//! and calls, store reachability).
//!
//! One [`Metrics`] per gateway: `Application::build` makes it and hands it to the plugins, the
//! proxy server and the listeners that serve `GET /metrics`. (A process runs one gateway; tests
//! run several in one process, and each must count only its own requests.)
//!
//! # Why the `prometheus` crate
//! Recording must take no lock and allocate nothing on the request path. The `prometheus` crate's
//! counters are atomics and its histograms are lock-free (atomic hot/cold shards); a labelled
//! child, once resolved with `with_label_values`, is a handle (an `Arc` of atomics) that can be
//! kept and bumped without a lookup. `prometheus-client`'s histogram takes a write lock on every
//! observation, and its labelled families are behind a `RwLock` read on every lookup. The
//! `prometheus` crate sorts a metric's labels by name in its text output; Prometheus treats label
//! order as meaningless, so queries and dashboards see exactly Kong's series.
//!
//! # The hot path
//! The `prometheus` plugin resolves the handles of a (route, service, consumer, status, source)
//! once per proxy worker thread and keeps them in a thread-local map keyed by ids
//! (`src/plugins/prometheus.rs`): a request that hits the map bumps atomics and allocates
//! nothing. The connection counters and the upstream pool gauge are relaxed atomics. The `portcullis_*` counters the plugins
//! bump are pre-resolved children, plain atomics; so are the token lookup counters and histograms
//! the stores bump ([`TokenLookups`], one child per tier resolved when it is made).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use portcullis_stores::observe::{LookupObserver, LookupTier, RemoteTier};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A gauge the proxy keeps up to date itself (an atomic; no lock).
pub type Gauge = IntGauge;

/// Kong's buckets of `kong_kong_latency_ms`, milliseconds.
pub const KONG_LATENCY_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 750.0, 1000.0,
    3000.0, 6000.0,
];

/// Kong's buckets of `kong_upstream_latency_ms` and `kong_request_latency_ms`, milliseconds.
pub const UPSTREAM_LATENCY_BUCKETS: &[f64] = &[
    25.0, 50.0, 80.0, 100.0, 250.0, 400.0, 700.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// Buckets of `portcullis_token_lookup_ms`, milliseconds: a Redis or Postgres round trip on a
/// local network takes a fraction of a millisecond, so the buckets start well below Kong's 1 ms.
pub const TOKEN_LOOKUP_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

/// Kong's workspace label: the gateway has one workspace, Kong's `default`.
pub const WORKSPACE: &str = "default";

/// Connections and requests of the proxy listeners, counted by the proxy server with relaxed
/// atomics (Kong reads nginx's `stub_status` for the same figures).
#[derive(Debug, Default)]
pub struct ServerCounters {
    accepted: AtomicU64,
    closed: AtomicU64,
    requests: AtomicU64,
    in_flight_started: AtomicU64,
    in_flight_done: AtomicU64,
}

/// The counters as one reading, named as Kong's `/status` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReading {
    /// Connections accepted since start (nginx's `accepted`).
    pub accepted: u64,
    /// Connections handed to the HTTP server: every accepted one (nginx's `handled`; the gateway
    /// has no connection limit that would drop one at accept).
    pub handled: u64,
    /// Connections open now (nginx's `active`).
    pub active: u64,
    /// Requests whose answer is being made now: from the request head read to the answer head
    /// (nginx's `writing`).
    pub writing: u64,
    /// Open connections with no request being answered: idle keep-alive ones, and ones whose
    /// next request head is on its way (nginx's `waiting`; the gateway cannot tell the latter,
    /// nginx's `reading`, apart, so it reports no `reading`).
    pub waiting: u64,
    /// Requests received since start (nginx's `requests`).
    pub requests: u64,
}

impl ServerCounters {
    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// A request head arrived; the returned guard marks the answer head made when dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight_started.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The figures now.
    pub fn read(&self) -> ServerReading {
        // Read the "done" sides first: a concurrent event can only make the difference larger.
        let closed = self.closed.load(Ordering::Relaxed);
        let done = self.in_flight_done.load(Ordering::Relaxed);
        let accepted = self.accepted.load(Ordering::Relaxed);
        let started = self.in_flight_started.load(Ordering::Relaxed);
        let active = accepted.saturating_sub(closed);
        let writing = started.saturating_sub(done);
        ServerReading {
            accepted,
            handled: accepted,
            active,
            writing,
            waiting: active.saturating_sub(writing),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// A request being answered (see [`ServerCounters::request_started`]).
pub struct InFlight<'a>(&'a ServerCounters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Grant types the token endpoint issues tokens for (`portcullis_oauth2_tokens_issued_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// `authorization_code`.
    AuthorizationCode,
    /// `client_credentials`.
    ClientCredentials,
    /// `password`.
    Password,
    /// `refresh_token`.
    RefreshToken,
    /// The implicit grant (`response_type=token` at `/oauth2/authorize`).
    Implicit,
}

impl GrantType {
    const ALL: [Self; 5] = [
        Self::AuthorizationCode,
        Self::ClientCredentials,
        Self::Password,
        Self::RefreshToken,
        Self::Implicit,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
            Self::Implicit => "implicit",
        }
    }
}

/// Why the `oauth2` plugin revoked tokens on its own (`portcullis_oauth2_revocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// An authorization code was presented again: the tokens issued from it (RFC 6749 §4.1.2).
    CodeReplay,
    /// A rotated refresh token was used again: its whole family (OAuth 2.0 Security BCP).
    RefreshReuse,
}

impl Revocation {
    const ALL: [Self; 2] = [Self::CodeReplay, Self::RefreshReuse];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CodeReplay => "code_replay",
            Self::RefreshReuse => "refresh_reuse",
        }
    }
}

/// Outcomes of the `oauth2` plugin's token check on a protected route
/// (`portcullis_oauth2_token_checks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// A live token of this service (or a global one where allowed).
    Valid,
    /// Unknown, revoked, of another service, or global where not allowed.
    Invalid,
    /// Known but expired.
    Expired,
    /// No token in the request.
    Missing,
    /// The token store could not answer (the client got 503).
    StoreUnavailable,
}

impl TokenCheck {
    const ALL: [Self; 5] = [
        Self::Valid,
        Self::Invalid,
        Self::Expired,
        Self::Missing,
        Self::StoreUnavailable,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Missing => "missing",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The `oauth2-introspection` plugin's counters.
#[derive(Clone)]
pub struct IntrospectionCounters {
    /// Verdicts served from the cache.
    pub cache_hits: IntCounter,
    /// Verdicts the cache did not have.
    pub cache_misses: IntCounter,
    /// Calls made to the introspection endpoint.
    pub calls: IntCounter,
    /// Calls that failed (unreachable, timeout, non-2xx, unreadable answer).
    pub errors: IntCounter,
}

/// The `oauth2` plugin's counters: one pre-resolved child per label value, so bumping one is an
/// atomic add.
#[derive(Clone)]
pub struct OAuth2Counters {
    issued: [IntCounter; 5],
    checks: [IntCounter; 5],
    revocations: [IntCounter; 2],
}

impl OAuth2Counters {
    /// A token was issued for `grant`.
    pub fn issued(&self, grant: GrantType) {
        self.issued[grant as usize].inc();
    }

    /// A token check ended with `outcome`.
    pub fn checked(&self, outcome: TokenCheck) {
        self.checks[outcome as usize].inc();
    }

    /// Tokens were revoked for `why` (a replayed code, a reused refresh token).
    pub fn revoked(&self, why: Revocation) {
        self.revocations[why as usize].inc();
    }
}

/// Token lookups by access-token digest, per store tier: the stores report into it (it is their
/// [`LookupObserver`]), through handles resolved once, so recording is an atomic add (and, for
/// Redis and Postgres, one lock-free histogram observation).
///
/// Made before the stores are opened (they keep it) and registered when the gateway's
/// [`Metrics`] are made with it ([`Metrics::with_token_lookups`]).
pub struct TokenLookups {
    answered_family: IntCounterVec,
    waited_family: HistogramVec,
    answered: [IntCounter; 4],
    waited: [Histogram; 2],
}

impl TokenLookups {
    /// The families, not registered yet, with a child per tier.
    ///
    /// # Errors
    /// A bad metric name (never with these names).
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let answered_family = IntCounterVec::new(
            Opts::new(
                "portcullis_token_lookups_total",
                "Token lookups by access-token digest, per tier that answered: near (in-process cache), memory, redis, postgres",
            ),
            &["tier"],
        )?;
        let waited_family = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_token_lookup_ms",
                "Time of each token lookup in Redis and Postgres (hits, misses and errors), milliseconds",
            )
            .buckets(TOKEN_LOOKUP_BUCKETS.to_vec()),
            &["tier"],
        )?;
        Ok(Arc::new(Self {
            answered: LookupTier::ALL.map(|t| answered_family.with_label_values(&[t.as_str()])),
            waited: RemoteTier::ALL.map(|t| waited_family.with_label_values(&[t.as_str()])),
            answered_family,
            waited_family,
        }))
    }

    fn register(&self, r: &Registry) -> Result<(), MetricsError> {
        register(r, self.answered_family.clone())?;
        register(r, self.waited_family.clone())?;
        Ok(())
    }
}

impl LookupObserver for TokenLookups {
    fn answered(&self, tier: LookupTier) {
        self.answered[tier as usize].inc();
    }

    fn waited(&self, tier: RemoteTier, took: std::time::Duration) {
        self.waited[tier as usize].observe(took.as_secs_f64() * 1000.0);
    }
}

/// Kinds of cluster notices (`portcullis_cluster_notices_total`): the channels other nodes'
/// commits are announced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Access tokens changed or deleted (revocations, rotations, purges).
    Tokens,
    /// Configuration rows inserted, updated or deleted.
    Config,
    /// `oauth2-introspection` verdicts evicted by an operator.
    Verdicts,
}

impl Notice {
    const ALL: [Self; 3] = [Self::Tokens, Self::Config, Self::Verdicts];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Config => "config",
            Self::Verdicts => "verdicts",
        }
    }
}

/// The cluster sync actor's counters: notices heard on the invalidation bus and full resyncs.
#[derive(Clone)]
pub struct ClusterCounters {
    notices: [IntCounter; 3],
    resyncs: IntCounter,
}

impl ClusterCounters {
    /// `count` notices of `kind` were heard.
    pub fn heard(&self, kind: Notice, count: usize) {
        self.notices[kind as usize].inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// The node reloaded everything because it may have missed notices.
    pub fn resynced(&self) {
        self.resyncs.inc();
    }
}

/// The state of an upstream's target as `kong_upstream_target_health` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHealthState {
    /// No health check runs for its upstream, and nobody set it unhealthy.
    HealthchecksOff,
    /// Checked and taking traffic.
    Healthy,
    /// Taking no traffic (a check failed it, or the admin API set it so).
    Unhealthy,
    /// Its name does not resolve (it has no address).
    DnsError,
}

impl TargetHealthState {
    /// The state of a target whose upstream runs checks (`checks_on`) or not: a target set
    /// unhealthy (by hand too) is unhealthy even with the checks off, since it gets no traffic.
    pub const fn of(checks_on: bool, healthy: bool) -> Self {
        match (checks_on, healthy) {
            (_, false) => Self::Unhealthy,
            (false, true) => Self::HealthchecksOff,
            (true, true) => Self::Healthy,
        }
    }

    /// The name `GET /upstreams/{u}/health` answers (Kong's, upper case).
    pub const fn admin_name(self) -> &'static str {
        match self {
            Self::HealthchecksOff => "HEALTHCHECKS_OFF",
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::DnsError => "DNS_ERROR",
        }
    }

    const ALL: [Self; 4] = [
        Self::HealthchecksOff,
        Self::Healthy,
        Self::Unhealthy,
        Self::DnsError,
    ];

    /// The label value (Kong's, lower case).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HealthchecksOff => "healthchecks_off",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::DnsError => "dns_error",
        }
    }
}

/// One target's health read at scrape time (`kong_upstream_target_health`).
#[derive(Debug, Clone)]
pub struct TargetHealthReading {
    /// The upstream's name.
    pub upstream: String,
    /// The target as configured, `host:port`.
    pub target: String,
    /// Where it is reached, `host:port` (empty with [`TargetHealthState::DnsError`]).
    pub address: String,
    /// Its state now.
    pub state: TargetHealthState,
}

/// The labels of one proxied request as Kong's metrics name it.
pub struct RequestLabels<'a> {
    /// The service's name, else its host (Kong's `service`).
    pub service: &'a str,
    /// The route's name, else its id (Kong's `route`).
    pub route: &'a str,
    /// The status code the client got.
    pub code: u16,
    /// `service` when the upstream answered, `kong` otherwise.
    pub source: &'static str,
    /// The consumer's username with `per_consumer`, else empty.
    pub consumer: &'a str,
}

/// The handles one proxied request bumps, resolved once per label set.
pub struct RequestHandles {
    /// `kong_http_requests_total` (with `status_code_metrics`).
    pub requests: Option<IntCounter>,
    /// `kong_bandwidth_bytes` ingress and egress (with `bandwidth_metrics`).
    pub bandwidth: Option<(IntCounter, IntCounter)>,
    /// `kong_kong_latency_ms`, `kong_upstream_latency_ms`, `kong_request_latency_ms` (with
    /// `latency_metrics`).
    pub latency: Option<[Histogram; 3]>,
}

/// Which of Kong's per-request metric groups a `prometheus` plugin instance records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Groups {
    /// `status_code_metrics`.
    pub status_code: bool,
    /// `latency_metrics`.
    pub latency: bool,
    /// `bandwidth_metrics`.
    pub bandwidth: bool,
}

/// What the scrape asks the stores at the moment it is made.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// Whether the configuration store answered (`kong_datastore_reachable`).
    pub datastore: bool,
    /// Postgres answered, when it is the store (`portcullis_postgres_up`).
    pub postgres: Option<bool>,
    /// Redis answered, when configured (`portcullis_redis_up`).
    pub redis: Option<bool>,
    /// The plugins' own counters, read now.
    pub plugins: PluginReadings,
    /// Every upstream target's health, when a `prometheus` plugin asks for it
    /// (`upstream_health_metrics`).
    pub upstream_health: Option<Vec<TargetHealthReading>>,
}

/// Counters the plugins keep outside the registry (their queues run on threads of their own),
/// read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct PluginReadings {
    /// Each log plugin instance's queue (`http-log`, `file-log`): its id and its counts.
    pub log_queues: Vec<(String, QueueReading)>,
    /// Spans the `opentelemetry` exporters delivered and dropped, all instances together.
    pub spans: (u64, u64),
    /// Requests `rate-limiting` let through without counting because Redis could not answer.
    pub rate_limit_unchecked: u64,
}

/// One log queue's counts since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueReading {
    /// Entries taken into the queue.
    pub accepted: u64,
    /// Entries refused because the queue was full.
    pub dropped: u64,
    /// Entries delivered.
    pub sent: u64,
    /// Entries given up after `max_retry_time`.
    pub lost: u64,
}

/// The registry and every metric of one gateway.
pub struct Metrics {
    id: u64,
    registry: Registry,
    node_id: String,
    /// The proxy listeners' connection and request counters.
    pub server: ServerCounters,
    /// The `oauth2` plugin's counters.
    pub oauth2: OAuth2Counters,
    /// The `oauth2-introspection` plugin's counters.
    pub introspection: IntrospectionCounters,
    /// Token lookups per store tier (the stores hold the same object).
    pub token_lookups: Arc<TokenLookups>,
    /// The cluster sync actor's counters.
    pub cluster: ClusterCounters,
    /// Idle keep-alive connections to plain-HTTP upstreams, kept by every proxy worker's pool.
    pub upstream_idle: Gauge,
    http_requests: IntCounterVec,
    bandwidth: IntCounterVec,
    latency: [HistogramVec; 3],
    connections: IntGaugeVec,
    nginx_requests: IntGaugeVec,
    datastore_reachable: IntGauge,
    postgres_up: IntGauge,
    redis_up: IntGauge,
    /// Log plugin queue entries by plugin instance and outcome (read from the queues).
    log_entries: IntCounterVec,
    /// Spans by outcome (read from the exporters).
    spans: IntCounterVec,
    /// Requests rate-limiting passed uncounted (read from the plugin).
    rate_limit_unchecked: IntCounter,
    /// Kong's `kong_upstream_target_health` (set from the health book at scrape time).
    upstream_target_health: IntGaugeVec,
}

/// Ids of [`Metrics`] objects, so that caches keyed by them never mix two gateways of a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why the registry could not be made: a metric registered twice or badly named (a programming
/// error, caught by the unit tests).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> Result<T, MetricsError> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Every metric, registered; `node_id` and `version` are what `kong_node_info` reports (the
    /// Kong release whose admin API the gateway speaks, as `GET /` reports it).
    ///
    /// # Errors
    /// A metric that cannot be registered (never with these names).
    pub fn new(node_id: uuid::Uuid, version: &str) -> Result<Self, MetricsError> {
        Self::with_token_lookups(node_id, version, TokenLookups::new()?)
    }

    /// As [`Metrics::new`], with the token lookup counters the stores were opened with.
    ///
    /// # Errors
    /// A metric that cannot be registered (never with these names).
    pub fn with_token_lookups(
        node_id: uuid::Uuid,
        version: &str,
        token_lookups: Arc<TokenLookups>,
    ) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        let node_id = node_id.hyphenated().to_string();
        let http_requests = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "kong_http_requests_total",
                    "HTTP status codes per consumer/service/route in Kong",
                ),
                &[
                    "service",
                    "route",
                    "code",
                    "source",
                    "workspace",
                    "consumer",
                ],
            )?,
        )?;
        let bandwidth = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "kong_bandwidth_bytes",
                    "Total bandwidth (ingress/egress) throughput in bytes",
                ),
                &["service", "route", "direction", "workspace", "consumer"],
            )?,
        )?;
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["service", "route", "workspace"],
            )
            .map_err(MetricsError::from)
            .and_then(|h| register(r, h))
        };
        let latency = [
            histogram(
                "kong_kong_latency_ms",
                "Latency added by Kong and enabled plugins for each service/route in Kong",
                KONG_LATENCY_BUCKETS,
            )?,
            histogram(
                "kong_upstream_latency_ms",
                "Latency added by upstream response for each service/route in Kong",
                UPSTREAM_LATENCY_BUCKETS,
            )?,
            histogram(
                "kong_request_latency_ms",
                "Total latency incurred during requests for each service/route in Kong",
                UPSTREAM_LATENCY_BUCKETS,
            )?,
        ];
        let connections = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "kong_nginx_connections_total",
                    "Number of connections by subsystem",
                ),
                &["node_id", "subsystem", "state"],
            )?,
        )?;
        let nginx_requests = register(
            r,
            IntGaugeVec::new(
                Opts::new("kong_nginx_requests_total", "Number of requests total"),
                &["node_id", "subsystem"],
            )?,
        )?;
        let datastore_reachable = register(
            r,
            IntGauge::new(
                "kong_datastore_reachable",
                "Datastore reachable from Kong, 0 is unreachable",
            )?,
        )?;
        let node_info = register(
            r,
            IntGaugeVec::new(
                Opts::new("kong_node_info", "Kong Node metadata information"),
                &["node_id", "version"],
            )?,
        )?;
        node_info
            .with_label_values(&[node_id.as_str(), version])
            .set(1);
        // Kong counts failures of its shared-dict metric writes here; recording cannot fail in
        // this registry, so it stays 0 (Kong's tests and alerts read it).
        register(
            r,
            IntCounter::new(
                "kong_nginx_metric_errors_total",
                "Number of nginx-lua-prometheus errors",
            )?,
        )?;
        let oauth2 = Self::oauth2_counters(r)?;
        let upstream_idle = register(
            r,
            IntGauge::new(
                "portcullis_upstream_idle_connections",
                "Idle keep-alive connections to plain-HTTP upstreams held by the proxy workers",
            )?,
        )?;
        let introspection = Self::introspection_counters(r)?;
        token_lookups.register(r)?;
        let cluster = Self::cluster_counters(r)?;
        let upstream_target_health = IntGaugeVec::new(
            Opts::new(
                "kong_upstream_target_health",
                "Health status of targets of upstream. States = healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.",
            ),
            &["upstream", "target", "address", "state", "subsystem"],
        )?;
        let postgres_up = IntGauge::new(
            "portcullis_postgres_up",
            "Postgres answered the scrape's check, 0 is unreachable",
        )?;
        let redis_up = IntGauge::new(
            "portcullis_redis_up",
            "Redis answered the scrape's check, 0 is unreachable",
        )?;
        let log_entries = IntCounterVec::new(
            Opts::new(
                "portcullis_log_queue_entries_total",
                "Entries of the http-log and file-log queues, per plugin instance: accepted, dropped (queue full), sent, lost (retries exhausted)",
            ),
            &["plugin_id", "outcome"],
        )?;
        let spans = IntCounterVec::new(
            Opts::new(
                "portcullis_opentelemetry_spans_total",
                "Spans of the opentelemetry plugin: exported, or dropped (queue full, collector down)",
            ),
            &["outcome"],
        )?;
        let rate_limit_unchecked = IntCounter::new(
            "portcullis_rate_limiting_unchecked_total",
            "Requests rate-limiting let through uncounted because Redis did not answer (fault_tolerant)",
        )?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            node_id,
            server: ServerCounters::default(),
            oauth2,
            introspection,
            token_lookups,
            cluster,
            upstream_idle,
            http_requests,
            bandwidth,
            latency,
            connections,
            nginx_requests,
            datastore_reachable,
            postgres_up,
            redis_up,
            log_entries,
            spans,
            rate_limit_unchecked,
            upstream_target_health,
        })
    }

    fn cluster_counters(r: &Registry) -> Result<ClusterCounters, MetricsError> {
        let notices = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_cluster_notices_total",
                    "Change notices heard on the cluster bus (Postgres LISTEN), per kind: tokens, config, verdicts",
                ),
                &["kind"],
            )?,
        )?;
        let resyncs = register(
            r,
            IntCounter::new(
                "portcullis_cluster_resyncs_total",
                "Full reloads from the database because notices may have been missed: the first LISTEN after start and every reconnect",
            )?,
        )?;
        Ok(ClusterCounters {
            notices: Notice::ALL.map(|k| notices.with_label_values(&[k.as_str()])),
            resyncs,
        })
    }

    fn oauth2_counters(r: &Registry) -> Result<OAuth2Counters, MetricsError> {
        let issued = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_oauth2_tokens_issued_total",
                    "Access tokens issued by the oauth2 plugin, per grant type",
                ),
                &["grant_type"],
            )?,
        )?;
        let checks = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_oauth2_token_checks_total",
                    "Token checks of the oauth2 plugin on protected routes, per outcome",
                ),
                &["outcome"],
            )?,
        )?;
        let revocations = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_oauth2_revocations_total",
                    "Revocations the oauth2 plugin made itself: a replayed code, a reused rotated refresh token",
                ),
                &["reason"],
            )?,
        )?;
        Ok(OAuth2Counters {
            issued: GrantType::ALL.map(|g| issued.with_label_values(&[g.as_str()])),
            checks: TokenCheck::ALL.map(|c| checks.with_label_values(&[c.as_str()])),
            revocations: Revocation::ALL.map(|w| revocations.with_label_values(&[w.as_str()])),
        })
    }

    fn introspection_counters(r: &Registry) -> Result<IntrospectionCounters, MetricsError> {
        let cache = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_introspection_cache_total",
                    "Verdict lookups of the oauth2-introspection plugin, hit or miss",
                ),
                &["result"],
            )?,
        )?;
        let calls = register(
            r,
            IntCounter::new(
                "portcullis_introspection_calls_total",
                "Calls of the oauth2-introspection plugin to the introspection endpoint",
            )?,
        )?;
        let errors = register(
            r,
            IntCounter::new(
                "portcullis_introspection_errors_total",
                "Calls to the introspection endpoint that failed",
            )?,
        )?;
        Ok(IntrospectionCounters {
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            calls,
            errors,
        })
    }

    /// A registry for unit tests and tools that need one and have no node id.
    ///
    /// # Panics
    /// Never: the names are fixed and valid (the unit tests build one).
    #[expect(clippy::expect_used, reason = "fixed, tested metric names")]
    pub fn standalone() -> Arc<Self> {
        Arc::new(Self::new(uuid::Uuid::new_v4(), "0.0.0").expect("the metric names are valid"))
    }

    /// This registry's id, unique in the process (keys of per-thread handle caches).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node id the node metrics carry.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Resolves the handles of one label set (allocates: callers cache the result).
    pub fn request_handles(&self, labels: &RequestLabels<'_>, groups: Groups) -> RequestHandles {
        let (service, route) = (labels.service, labels.route);
        let requests = groups.status_code.then(|| {
            let code = labels.code.to_string();
            self.http_requests.with_label_values(&[
                service,
                route,
                code.as_str(),
                labels.source,
                WORKSPACE,
                labels.consumer,
            ])
        });
        let bandwidth = groups.bandwidth.then(|| {
            let child = |direction| {
                self.bandwidth.with_label_values(&[
                    service,
                    route,
                    direction,
                    WORKSPACE,
                    labels.consumer,
                ])
            };
            (child("ingress"), child("egress"))
        });
        let latency = groups.latency.then(|| {
            self.latency
                .each_ref()
                .map(|h| h.with_label_values(&[service, route, WORKSPACE]))
        });
        RequestHandles {
            requests,
            bandwidth,
            latency,
        }
    }

    /// The text exposition (Prometheus format 0.0.4) with the gauges set from `probes` and the
    /// server counters now.
    pub fn render(&self, probes: Probes) -> String {
        let server = self.server.read();
        let node = self.node_id.as_str();
        for (state, value) in [
            ("accepted", server.accepted),
            ("handled", server.handled),
            ("total", server.requests),
            ("active", server.active),
            ("writing", server.writing),
            ("waiting", server.waiting),
        ] {
            self.connections
                .with_label_values(&[node, "http", state])
                .set(gauge(value));
        }
        self.nginx_requests
            .with_label_values(&[node, "http"])
            .set(gauge(server.requests));
        self.datastore_reachable.set(i64::from(probes.datastore));
        let mut families = self.registry.gather();
        let mut extra = Vec::new();
        if let Some(up) = probes.postgres {
            self.postgres_up.set(i64::from(up));
            extra.extend(prometheus::core::Collector::collect(&self.postgres_up));
        }
        if let Some(up) = probes.redis {
            self.redis_up.set(i64::from(up));
            extra.extend(prometheus::core::Collector::collect(&self.redis_up));
        }
        self.record_plugins(&probes.plugins);
        if let Some(targets) = &probes.upstream_health {
            self.record_upstream_health(targets);
            extra.extend(prometheus::core::Collector::collect(
                &self.upstream_target_health,
            ));
        }
        families.extend(extra);
        families.extend(prometheus::core::Collector::collect(&self.log_entries));
        families.extend(prometheus::core::Collector::collect(&self.spans));
        families.extend(prometheus::core::Collector::collect(
            &self.rate_limit_unchecked,
        ));
        // The encoder refuses a family without a sample (no log plugin yet, say).
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    /// Sets `kong_upstream_target_health` to `targets` alone (a deleted target disappears), each
    /// with Kong's four states: 1 for its state, 0 for the others.
    fn record_upstream_health(&self, targets: &[TargetHealthReading]) {
        self.upstream_target_health.reset();
        for t in targets {
            for state in TargetHealthState::ALL {
                self.upstream_target_health
                    .with_label_values(&[
                        t.upstream.as_str(),
                        t.target.as_str(),
                        t.address.as_str(),
                        state.as_str(),
                        "http",
                    ])
                    .set(i64::from(state == t.state));
            }
        }
    }

    /// Brings the plugin counters up to `readings` (they only grow, so each moves by the
    /// difference).
    fn record_plugins(&self, readings: &PluginReadings) {
        let catch_up = |counter: IntCounter, now: u64| {
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        for (id, queue) in &readings.log_queues {
            for (outcome, now) in [
                ("accepted", queue.accepted),
                ("dropped", queue.dropped),
                ("sent", queue.sent),
                ("lost", queue.lost),
            ] {
                catch_up(self.log_entries.with_label_values(&[id, outcome]), now);
            }
        }
        catch_up(
            self.spans.with_label_values(&["exported"]),
            readings.spans.0,
        );
        catch_up(self.spans.with_label_values(&["dropped"]), readings.spans.1);
        catch_up(
            self.rate_limit_unchecked.clone(),
            readings.rate_limit_unchecked,
        );
    }
}

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RequestLabels<'static> {
        RequestLabels {
            service: "mock-service",
            route: "http-route",
            code: 200,
            source: "service",
            consumer: "",
        }
    }

    const ALL: Groups = Groups {
        status_code: true,
        latency: true,
        bandwidth: true,
    };

    #[test]
    fn the_registry_builds_and_renders_the_node_metrics() {
        let metrics = Metrics::standalone();
        let text = metrics.render(Probes {
            datastore: true,
            ..Probes::default()
        });
        assert!(text.contains("kong_datastore_reachable 1\n"), "{text}");
        assert!(
            !text.contains("portcullis_log_queue_entries_total"),
            "no queue, no family: {text}"
        );
        let readings = PluginReadings {
            log_queues: vec![(
                "q1".into(),
                QueueReading {
                    accepted: 5,
                    dropped: 2,
                    sent: 3,
                    lost: 0,
                },
            )],
            spans: (7, 1),
            rate_limit_unchecked: 4,
        };
        for _ in 0..2 {
            // Read twice: the counters follow the readings, never add them up.
            let text = metrics.render(Probes {
                plugins: readings.clone(),
                ..Probes::default()
            });
            for line in [
                "portcullis_log_queue_entries_total{outcome=\"dropped\",plugin_id=\"q1\"} 2",
                "portcullis_log_queue_entries_total{outcome=\"sent\",plugin_id=\"q1\"} 3",
                "portcullis_opentelemetry_spans_total{outcome=\"exported\"} 7",
                "portcullis_opentelemetry_spans_total{outcome=\"dropped\"} 1",
                "portcullis_rate_limiting_unchecked_total 4",
            ] {
                assert!(text.contains(line), "{line} in {text}");
            }
        }
        assert!(
            text.contains("kong_nginx_metric_errors_total 0\n"),
            "{text}"
        );
        let info = format!(
            "kong_node_info{{node_id=\"{}\",version=\"{}\"}} 1\n",
            metrics.node_id(),
            "0.0.0"
        );
        assert!(text.contains(&info), "{text}");
        assert!(!text.contains("portcullis_redis_up"), "{text}");
    }

    #[test]
    fn per_request_families_appear_only_once_recorded() {
        let metrics = Metrics::standalone();
        let text = metrics.render(Probes::default());
        assert!(!text.contains("kong_http_requests_total"), "{text}");
        assert!(!text.contains("kong_kong_latency_ms"), "{text}");
        let handles = metrics.request_handles(&labels(), ALL);
        if let Some(c) = handles.requests {
            c.inc();
        }
        let text = metrics.render(Probes::default());
        assert!(text.contains(
            "kong_http_requests_total{code=\"200\",consumer=\"\",route=\"http-route\",service=\"mock-service\",source=\"service\",workspace=\"default\"} 1\n"
        ), "{text}");
    }

    #[test]
    fn the_latency_buckets_are_kongs() {
        let metrics = Metrics::standalone();
        let handles = metrics.request_handles(&labels(), ALL);
        let [kong, upstream, request] = handles.latency.unwrap();
        kong.observe(3.0);
        upstream.observe(30.0);
        request.observe(33.0);
        let text = metrics.render(Probes::default());
        let le = |name: &str, bound: &str, n: u32| {
            format!("{name}_bucket{{route=\"http-route\",service=\"mock-service\",workspace=\"default\",le=\"{bound}\"}} {n}\n")
        };
        assert!(text.contains(&le("kong_kong_latency_ms", "2", 0)), "{text}");
        assert!(text.contains(&le("kong_kong_latency_ms", "5", 1)), "{text}");
        assert!(
            text.contains(&le("kong_kong_latency_ms", "6000", 1)),
            "{text}"
        );
        assert!(
            text.contains(&le("kong_upstream_latency_ms", "25", 0)),
            "{text}"
        );
        assert!(
            text.contains(&le("kong_upstream_latency_ms", "50", 1)),
            "{text}"
        );
        assert!(
            text.contains(&le("kong_request_latency_ms", "60000", 1)),
            "{text}"
        );
    }

    #[test]
    fn server_counters_split_active_connections_into_writing_and_waiting() {
        let counters = ServerCounters::default();
        counters.connection_opened();
        counters.connection_opened();
        counters.connection_opened();
        counters.connection_closed();
        let in_flight = counters.request_started();
        let reading = counters.read();
        assert_eq!(
            reading,
            ServerReading {
                accepted: 3,
                handled: 3,
                active: 2,
                writing: 1,
                waiting: 1,
                requests: 1,
            }
        );
        drop(in_flight);
        assert_eq!(counters.read().writing, 0);
        assert_eq!(counters.read().waiting, 2);
    }

    #[test]
    fn oauth2_counters_start_at_zero_for_every_label() {
        let metrics = Metrics::standalone();
        metrics.oauth2.issued(GrantType::Password);
        metrics.oauth2.checked(TokenCheck::Expired);
        let text = metrics.render(Probes::default());
        assert!(text.contains("portcullis_oauth2_tokens_issued_total{grant_type=\"password\"} 1\n"));
        assert!(text.contains(
            "portcullis_oauth2_tokens_issued_total{grant_type=\"client_credentials\"} 0\n"
        ));
        assert!(text.contains("portcullis_oauth2_token_checks_total{outcome=\"expired\"} 1\n"));
        assert!(text
            .contains("portcullis_oauth2_token_checks_total{outcome=\"store_unavailable\"} 0\n"));
    }
    #[test]
    fn token_lookups_count_every_tier_and_time_the_remote_ones() {
        let metrics = Metrics::standalone();
        let lookups: &dyn LookupObserver = metrics.token_lookups.as_ref();
        lookups.answered(LookupTier::Near);
        lookups.answered(LookupTier::Near);
        lookups.answered(LookupTier::Postgres);
        lookups.waited(RemoteTier::Redis, std::time::Duration::from_micros(300));
        lookups.waited(RemoteTier::Postgres, std::time::Duration::from_millis(3));
        let text = metrics.render(Probes::default());
        for line in [
            "portcullis_token_lookups_total{tier=\"near\"} 2\n",
            "portcullis_token_lookups_total{tier=\"memory\"} 0\n",
            "portcullis_token_lookups_total{tier=\"redis\"} 0\n",
            "portcullis_token_lookups_total{tier=\"postgres\"} 1\n",
            "portcullis_token_lookup_ms_bucket{tier=\"redis\",le=\"0.25\"} 0\n",
            "portcullis_token_lookup_ms_bucket{tier=\"redis\",le=\"0.5\"} 1\n",
            "portcullis_token_lookup_ms_bucket{tier=\"postgres\",le=\"2.5\"} 0\n",
            "portcullis_token_lookup_ms_bucket{tier=\"postgres\",le=\"5\"} 1\n",
            "portcullis_token_lookup_ms_count{tier=\"postgres\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("tier=\"near\",le="),
            "the near tier is not timed"
        );
    }

    #[test]
    fn cluster_counters_count_notices_per_kind() {
        let metrics = Metrics::standalone();
        metrics.cluster.heard(Notice::Config, 3);
        metrics.cluster.heard(Notice::Tokens, 1);
        metrics.cluster.resynced();
        let text = metrics.render(Probes::default());
        for line in [
            "portcullis_cluster_notices_total{kind=\"config\"} 3\n",
            "portcullis_cluster_notices_total{kind=\"tokens\"} 1\n",
            "portcullis_cluster_notices_total{kind=\"verdicts\"} 0\n",
            "portcullis_cluster_resyncs_total 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn target_health_has_kongs_four_states_and_only_the_targets_read_now() {
        let metrics = Metrics::standalone();
        let reading = |target: &str, state| TargetHealthReading {
            upstream: "up".into(),
            target: target.into(),
            address: target.into(),
            state,
        };
        let text = metrics.render(Probes::default());
        assert!(!text.contains("kong_upstream_target_health"), "{text}");
        let text = metrics.render(Probes {
            upstream_health: Some(vec![
                reading("10.0.0.1:80", TargetHealthState::Unhealthy),
                reading("10.0.0.2:80", TargetHealthState::HealthchecksOff),
            ]),
            ..Probes::default()
        });
        let line = |target: &str, state: &str, value: u8| {
            format!("kong_upstream_target_health{{address=\"{target}\",state=\"{state}\",subsystem=\"http\",target=\"{target}\",upstream=\"up\"}} {value}\n")
        };
        for expected in [
            line("10.0.0.1:80", "unhealthy", 1),
            line("10.0.0.1:80", "healthy", 0),
            line("10.0.0.1:80", "healthchecks_off", 0),
            line("10.0.0.1:80", "dns_error", 0),
            line("10.0.0.2:80", "healthchecks_off", 1),
            line("10.0.0.2:80", "unhealthy", 0),
        ] {
            assert!(text.contains(&expected), "{expected} in {text}");
        }
        let text = metrics.render(Probes {
            upstream_health: Some(vec![reading("10.0.0.2:80", TargetHealthState::Healthy)]),
            ..Probes::default()
        });
        assert!(
            !text.contains("10.0.0.1:80"),
            "a gone target is gone: {text}"
        );
        assert!(text.contains(&line("10.0.0.2:80", "healthy", 1)), "{text}");
    }
}
