//! The request pipeline: match a route in the current snapshot → run the plugin chain's access
//! phases → forward to the service over a keep-alive pool → stream the answer back → response and
//! log phases. No lock and no actor mailbox on this path.

pub mod grpc;
pub mod headers;
pub mod http1;
pub mod proxy_protocol;
pub mod server;
pub mod timers;
pub mod tunnel;
pub mod upstream;

use std::borrow::Cow;
use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::stream::LocalBoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::body::{AnswerBody, BodyError, Finish};
use crate::entities::Service;
use crate::error::ProxyError;
use crate::gateway_headers::{self as own, GatewayHeaders};
use crate::plugin_api::{
    empty_answer, Answer, ClientRequest, Exchange, Flow, Latencies, LogNeeds, PluginRuntime,
    RequestCtx, Source, Step, StepKind, Try,
};
use crate::router::balancer::Peers;
use crate::router::health::{Outcome, TargetLoad};
use crate::router::{upstream_path, MatchInput, RouterSnapshot};
use server::Connection;
use upstream::{SendError, UpstreamClients};

/// What every proxy worker shares.
pub struct ProxyState {
    /// Current router snapshot.
    pub snapshot: Arc<ArcSwap<RouterSnapshot>>,
    /// `trusted_ips`.
    pub trusted: Vec<IpNet>,
    /// `real_ip_header`.
    pub real_ip_header: HeaderName,
    /// Largest body a plugin may buffer.
    pub max_body: usize,
    /// `client_body_timeout`: the longest wait between two reads of a request body.
    pub client_body_timeout: Duration,
    /// The gateway's metrics (connection and request counters).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Which of its own headers the gateway adds (`headers`, `headers_upstream`).
    pub headers: GatewayHeaders,
}

/// What one proxy worker thread hands its requests: the shared state and the worker's own
/// upstream clients, in one piece so a request looks up one thing, not two.
pub struct ProxyWorker {
    /// Shared by every worker.
    pub state: Arc<ProxyState>,
    /// This worker's connection pools.
    pub clients: UpstreamClients,
}

impl ProxyState {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// A request id: 128 random bits as 32 lower-case hex digits (Kong's format). Drawn from the
/// thread's user-space CSPRNG: a `getrandom` system call per request (uuid v4) was measurable.
struct RequestId([u8; 32]);

impl RequestId {
    fn new() -> Self {
        let bits: u128 = rand::random();
        let mut out = [0u8; 32];
        for (i, byte) in bits.to_be_bytes().iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        Self(out)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The proxy handler: every request on the proxy listeners comes here.
pub async fn handle(
    req: http::Request<Incoming>,
    conn: &Connection,
    worker: &ProxyWorker,
) -> Answer {
    let started = Instant::now();
    let _in_flight = worker.state.metrics.server.request_started();
    let id = RequestId::new();
    let request_id = id.as_str();
    let (mut head, body) = req.into_parts();
    // hyper leaves this only on requests that ask for an upgrade.
    let upgrade = Cell::new(head.extensions.remove::<OnUpgrade>());
    let req = Rc::new(ClientRequest::new(head, conn.peer, conn.local));
    let refused_body = Cell::new(None);
    let on = worker.state.headers;
    let incoming = Arrival {
        req: &req,
        conn,
        request_id,
        headers: on,
        started,
        body_timeout: worker.state.client_body_timeout,
        refused_body: &refused_body,
        upgrade: &upgrade,
    };
    let mut journey = Journey::default();
    let mut response = match proxy(
        &incoming,
        body,
        &worker.state,
        &worker.clients,
        &mut journey,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            journey.source = Source::Gateway;
            made_here(&req, e.to_response(request_id))
        }
    };
    if journey.source != Source::Service {
        made_by_gateway(response.headers_mut(), on, started);
    }
    if let (true, Ok(mut v)) = (on.request_id, HeaderValue::from_bytes(&id.0)) {
        // Never the same twice: HTTP/2's HPACK would add every one to the connection's table,
        // evicting the entries that do repeat (a table insert and an eviction per answer);
        // marked sensitive, it goes out as a literal that is never indexed.
        v.set_sensitive(true);
        response.headers_mut().insert(own::REQUEST_ID, v);
    }
    if let Some(body) = refused_body.take() {
        tokio::task::spawn_local(linger(body));
    }
    if !journey.loggers.is_empty() {
        journey.hand_to_log_phase(&incoming, &mut response);
    }
    response
}

/// What the log phase needs, gathered as a request goes through the pipeline. Filled only in
/// part (and without allocating) when no plugin of the request has a log phase.
struct Journey {
    /// The runtimes whose log phase runs for this request (rarely more than two).
    loggers: SmallVec<[Arc<dyn PluginRuntime>; 2]>,
    /// What those log phases read beyond the basics.
    needs: LogNeeds,
    client_ip: Option<IpAddr>,
    scheme: Option<crate::plugin_api::Scheme>,
    route: Option<Arc<crate::entities::Route>>,
    service: Option<Arc<Service>>,
    consumer: Option<Arc<crate::entities::Consumer>>,
    credential: Option<uuid::Uuid>,
    source: Source,
    /// Bytes of the request body the gateway knows of (declared or buffered).
    request_body: u64,
    trail: Trail,
    /// The plugins' per-request values, taken from the context once its phases ran.
    slots: crate::plugin_api::PluginSlots,
    /// The timed steps (only when [`Trail::wanted`]).
    steps: Vec<Step>,
}

impl Default for Journey {
    fn default() -> Self {
        Self {
            loggers: SmallVec::new(),
            needs: LogNeeds::default(),
            client_ip: None,
            scheme: None,
            route: None,
            service: None,
            consumer: None,
            credential: None,
            source: Source::Gateway,
            request_body: 0,
            trail: Trail::default(),
            slots: crate::plugin_api::PluginSlots::default(),
            steps: Vec::new(),
        }
    }
}

/// What happened upstream, recorded for the log phase (only when [`Trail::wanted`]).
#[derive(Default)]
struct Trail {
    /// Whether a log phase will read it: nothing is copied otherwise.
    wanted: bool,
    /// Whether a log phase reads the upstream URI and the tries ([`LogNeeds::details`]).
    details: bool,
    upstream_uri: Option<String>,
    upstream_status: Option<StatusCode>,
    upstream_latency: Option<Duration>,
    /// From the request's arrival to the first upstream attempt.
    before_upstream: Option<Duration>,
    tries: Vec<Try>,
    /// The WebSocket tunnel this request opened: its log phase waits for the tunnel's end.
    tunnel: Option<Rc<tunnel::TunnelLog>>,
}

impl Trail {
    fn attempt(&mut self, origin: &crate::router::UpstreamOrigin) {
        if self.details {
            self.tries.push(Try {
                host: Arc::from(origin.connect_host.as_str()),
                port: origin.port,
            });
        }
    }
}

impl Journey {
    /// Picks the runtimes of `chain` (as selected for this request) that have a log phase.
    fn log_with(&mut self, chain: &crate::router::PluginChain, https: bool) {
        self.loggers.clear();
        self.needs = LogNeeds::default();
        if chain.logs {
            let consumer = self.consumer.as_ref().map(|c| c.id);
            for &at in &chain.loggers {
                if let Some(runtime) = chain.entries[at].select(consumer, https) {
                    if runtime.logs() {
                        self.needs = self.needs.union(runtime.log_needs());
                        self.loggers.push(runtime.clone());
                    }
                }
            }
        }
        self.trail.wanted = !self.loggers.is_empty();
        self.trail.details = self.needs.details;
    }

    /// Watches the answer's body: once it is written (or dropped) the log phases run.
    fn hand_to_log_phase(self, incoming: &Arrival<'_>, response: &mut Answer) {
        let req = incoming.req;
        let tunnel = self.trail.tunnel;
        let needs = self.needs;
        let upstream = self.trail.upstream_latency;
        let exchange = Exchange {
            req: Rc::clone(req),
            request_id: if needs.details {
                incoming.request_id.to_string()
            } else {
                String::new()
            },
            scheme: self.scheme.unwrap_or(incoming.conn.scheme),
            client_ip: self.client_ip.unwrap_or(incoming.conn.peer.ip()),
            route: self.route,
            service: self.service,
            consumer: self.consumer,
            credential: self.credential,
            status: response.status(),
            source: self.source,
            upstream_status: self.trail.upstream_status,
            upstream_uri: self.trail.upstream_uri,
            tries: self.trail.tries,
            response_headers: needs.response_headers.then(|| response.headers().clone()),
            request_size: head_size(req) + self.request_body,
            response_size: answer_head_size(response),
            complete: false,
            started_at: if needs.details {
                std::time::SystemTime::now()
                    .checked_sub(incoming.started.elapsed())
                    .unwrap_or(std::time::UNIX_EPOCH)
            } else {
                std::time::UNIX_EPOCH
            },
            latencies: Latencies {
                upstream,
                before_upstream: self.trail.before_upstream,
                ..Latencies::default()
            },
            slots: self.slots,
            steps: self.steps,
        };
        let pending = Box::new(PendingLog {
            exchange,
            loggers: self.loggers,
            started: incoming.started,
        });
        if let (Some(tunnel), StatusCode::SWITCHING_PROTOCOLS) = (tunnel, response.status()) {
            tunnel.hand(pending);
            return;
        }
        let body = std::mem::replace(response.body_mut(), AnswerBody::Empty);
        *response.body_mut() = body.watch(pending);
    }
}

/// The log phases of one exchange, run once its answer is done.
struct PendingLog {
    exchange: Exchange,
    loggers: SmallVec<[Arc<dyn PluginRuntime>; 2]>,
    started: Instant,
}

impl PendingLog {
    /// A WebSocket tunnel closed: the exchange counts the bytes carried each way.
    fn tunnel_closed(mut self: Box<Self>, to_upstream: u64, to_client: u64) {
        self.exchange.request_size += to_upstream;
        self.finish(to_client, true);
    }
}

impl Finish for PendingLog {
    fn finish(self: Box<Self>, body_bytes: u64, complete: bool) {
        let PendingLog {
            mut exchange,
            loggers,
            started,
        } = *self;
        exchange.response_size += body_bytes;
        exchange.complete = complete;
        let request = started.elapsed();
        exchange.latencies.request = request;
        exchange.latencies.gateway =
            request.saturating_sub(exchange.latencies.upstream.unwrap_or_default());
        for logger in &loggers {
            logger.log(&exchange);
        }
    }
}

/// The request head's size as HTTP/1.1 writes it (`METHOD target HTTP/1.1`, the headers, the
/// blank line): what nginx's `$request_length` counts before the body, whatever the version.
fn head_size(req: &ClientRequest) -> u64 {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len();
    (line + headers_size(req.headers()) + 2) as u64
}

/// The answer head's size as HTTP/1.1 writes it (nginx's `$bytes_sent` before the body).
fn answer_head_size(answer: &Answer) -> u64 {
    let lines = answer
        .extensions()
        .get::<hyper::ext::HeaderBlock>()
        .map_or(0, |block| block.as_bytes().len());
    ("HTTP/1.1 200 ".len()
        + answer.status().canonical_reason().map_or(0, str::len)
        + 2
        + headers_size(answer.headers())
        + lines
        + 2) as u64
}

fn headers_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum()
}

/// Reads and discards the rest of a body the gateway refused (413), while its answer is written
/// and until the client stops sending, as nginx's lingering close does: a connection closed with
/// unread bytes is reset, and a client still sending would lose the answer. Bounded by
/// [`LINGER_TIME`] in all and [`LINGER_TIMEOUT`] between two reads; then the connection closes.
async fn linger(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    while let Ok(Ok(Some(Ok(_)))) =
        tokio::time::timeout_at(deadline, tokio::time::timeout(LINGER_TIMEOUT, body.frame())).await
    {
    }
}

/// nginx's `lingering_time`.
const LINGER_TIME: Duration = Duration::from_secs(30);
/// nginx's `lingering_timeout`.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// One request as the pipeline hands it along: what arrived, on which connection, and when.
struct Arrival<'a> {
    req: &'a Rc<ClientRequest>,
    conn: &'a Connection,
    request_id: &'a str,
    /// Which of its own headers the gateway adds.
    headers: GatewayHeaders,
    started: Instant,
    /// `client_body_timeout`.
    body_timeout: Duration,
    /// A body refused as too large, drained after the answer (see [`linger`]).
    refused_body: &'a Cell<Option<Incoming>>,
    /// The client connection's upgrade, when the request asked for one.
    upgrade: &'a Cell<Option<OnUpgrade>>,
}

/// Where a matched request goes and how its upstream request is shaped.
struct Upstream<'a> {
    service: &'a Service,
    /// How the upstream's TLS is checked.
    trust: upstream::Trust<'a>,
    peers: Peers<'a>,
    /// The path prefix `strip_path` removed.
    stripped: Option<&'a str>,
    /// Send the client's `Host` instead of the service's.
    preserve_host: bool,
    /// The request's host without its port (for `X-Forwarded-Host`).
    host: &'a str,
    /// The request's authority as the client sent it (what `preserve_host` passes on).
    sent_host: &'a str,
}

async fn proxy(
    incoming: &Arrival<'_>,
    payload: Incoming,
    state: &ProxyState,
    clients: &UpstreamClients,
    journey: &mut Journey,
) -> Result<Answer, ProxyError> {
    let Arrival {
        req,
        conn,
        request_id,
        ..
    } = *incoming;
    let scheme = conn.scheme;
    let https = scheme.is_https();
    let snapshot = state.snapshot.load_full();
    // Until a route matches, the global plugins' log phases are the ones that run.
    journey.log_with(&snapshot.global, https);
    let peer = conn.peer.ip();
    let trusted = state.is_trusted(peer);
    let client_ip = if trusted {
        req.headers()
            .get(&state.real_ip_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    } else {
        peer
    };
    let sent_host = request_authority(req);
    // Clients almost always send a lower-case host: copy only when there is a letter to fold.
    let host_with_port = if sent_host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(sent_host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(sent_host)
    };
    let host = headers::strip_port(&host_with_port);
    let path = req.uri().path();
    let header_lookup = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let input = MatchInput {
        sni: conn.sni.as_deref(),
        method: req.method(),
        host,
        host_with_port: &host_with_port,
        path,
        header: &header_lookup,
    };
    let matched = snapshot.find(&input).ok_or(ProxyError::NoRoute)?;
    let entry = matched.entry;
    journey.log_with(&entry.chain, https);
    // Steps are timed only for a log phase that reads them: a clock read is a measurable cost
    // per request.
    let timed = journey.needs.steps.then_some(incoming.started);
    if let Some(started) = timed {
        journey.steps.push(Step {
            kind: StepKind::Router,
            start: Duration::ZERO,
            took: started.elapsed(),
        });
    }
    if journey.trail.wanted {
        journey.client_ip = Some(client_ip);
        journey.route = Some(entry.route.route.clone());
        journey.service = entry.service.as_ref().map(|s| s.service.clone());
    }
    let effective_https = scheme.is_https()
        || (trusted
            && req
                .headers()
                .get(X_FORWARDED_PROTO)
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https")));
    if matched.https_only && !effective_https {
        let code = entry.route.route.https_redirect_status_code;
        if code == 426 {
            return Err(ProxyError::UseHttps);
        }
        // Kong redirects to the host without the plain listener's port (nginx `$host`), or to
        // the trusted `X-Forwarded-Host`: keeping the http port would send TLS to a plain port.
        let target_host = trusted
            .then(|| header_lookup("x-forwarded-host"))
            .flatten()
            .unwrap_or_else(|| host.to_string());
        let location = format!(
            "https://{}{}",
            target_host,
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let mut answer =
            empty_answer(StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY));
        let location = HeaderValue::try_from(location)
            .map_err(|_| ProxyError::Internal("redirect location is not a header value".into()))?;
        answer
            .headers_mut()
            .insert(http::header::LOCATION, location);
        return Ok(answer);
    }
    let routed = entry.service.as_deref().ok_or(ProxyError::Unavailable(
        "no Service found with those values",
    ))?;
    let (service, peers) = (
        &routed.service,
        routed.destinations.peers(entry.path_regex()),
    );
    if !service.enabled {
        return Err(ProxyError::NoRoute);
    }

    let mut ctx = RequestCtx {
        req: Rc::clone(req),
        scheme,
        client_ip,
        trusted,
        route: entry.route.route.clone(),
        service: Some(service.clone()),
        snapshot: snapshot.identities.clone(),
        body: None,
        body_too_large: false,
        // An auth plugin records about six edits: room for them up front.
        upstream_headers: Vec::with_capacity(8),
        strip_query: Vec::new(),
        replace_body: None,
        consumer: None,
        authenticated: false,
        credential: None,
        response_headers: crate::plugin_api::AnswerHeaders::default(),
        max_body: state.max_body,
        slots: crate::plugin_api::PluginSlots::default(),
        steps_from: timed,
        steps: Vec::new(),
    };
    let mut payload = Some(payload);
    // The runtimes whose access phase ran, for the response and log phases (borrowed from the
    // snapshot: no allocation and no reference count for the usual handful).
    let mut ran: SmallVec<[&Arc<dyn PluginRuntime>; 4]> = SmallVec::new();
    let mut short_circuit = None;
    for link in &entry.chain.entries {
        let Some(runtime) = link.select(ctx.consumer.as_ref().map(|c| c.id), https) else {
            continue;
        };
        if ctx.body.is_none() && runtime.needs_body(&ctx) {
            if let Some(p) = payload.take() {
                match buffer(p, state.max_body, incoming).await {
                    Ok(body) => ctx.body = Some(body),
                    Err(ProxyError::TooLarge) => ctx.body_too_large = true,
                    Err(e) => return Err(e),
                }
            }
        }
        ran.push(runtime);
        let began = timed.map(|started| (started, Instant::now()));
        let flow = match runtime.access_now(&mut ctx) {
            Some(flow) => flow,
            None => runtime.access(&mut ctx).await,
        };
        if let Some((started, began)) = began {
            journey.steps.push(Step {
                kind: StepKind::Access(runtime.name()),
                start: began.saturating_duration_since(started),
                took: began.elapsed(),
            });
            // The plugin's own steps, inside its access phase.
            journey.steps.append(&mut ctx.steps);
        }
        if let Flow::Respond(resp) = flow {
            short_circuit = Some(resp);
            break;
        }
    }
    if entry.chain.logs && ctx.consumer.is_some() {
        journey.consumer = ctx.consumer.clone();
        if entry.chain.consumer_scoped_logs {
            // A consumer-scoped instance may now be the one that runs.
            journey.log_with(&entry.chain, https);
        }
    }
    if journey.trail.wanted {
        journey.credential = ctx.credential;
        journey.route = Some(ctx.route.clone());
        journey.service = ctx.service.clone();
        journey.client_ip = Some(client_ip);
        journey.request_body = match &ctx.body {
            Some(body) => body.len() as u64,
            None => req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
    }
    if short_circuit.is_none() && ctx.body_too_large {
        return Err(ProxyError::TooLarge);
    }
    let mut response = match short_circuit {
        Some(mut resp) => {
            journey.source = Source::Exit;
            if ctx.body_too_large {
                // The rest of the body is never read: the connection cannot carry another
                // request.
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            made_here(req, resp)
        }
        None => {
            let upstream = Upstream {
                service,
                trust: upstream::Trust::of(service.tls_verify, routed.tls.as_deref()),
                peers,
                stripped: matched.stripped,
                preserve_host: entry.route.route.preserve_host,
                host,
                sent_host,
            };
            match forward(
                incoming,
                &upstream,
                payload,
                &mut ctx,
                clients,
                &mut journey.trail,
            )
            .await
            {
                Ok(answer) => {
                    journey.source = Source::Service;
                    answer
                }
                // Answered here so the response phases still run.
                Err(e) => made_here(req, e.to_response(request_id)),
            }
        }
    };
    if !ctx.response_headers.is_empty() {
        let set = std::mem::take(&mut ctx.response_headers);
        if req.version() <= Version::HTTP_11 && !journey.needs.response_headers {
            // hyper's HTTP/1 server writes the lines as they are: no map insert per header.
            let lines = set.into_lines(response.headers_mut());
            response
                .extensions_mut()
                .insert(hyper::ext::HeaderBlock::from_lines(lines));
        } else {
            // HTTP/2 encodes from the map, and a log phase reads the headers there.
            set.insert_into(response.headers_mut());
        }
    }
    for runtime in &ran {
        runtime.response_headers(&ctx, response.headers_mut());
    }
    if journey.trail.wanted {
        journey.slots = std::mem::take(&mut ctx.slots);
    }
    Ok(response)
}

/// The request's authority: the request target's (absolute form, HTTP/2 `:authority`) wins over
/// `Host`, as RFC 9112 §3.2.2 and RFC 9113 §8.3.1 require; user information is never part of it.
fn request_authority(req: &ClientRequest) -> &str {
    match req.uri().authority() {
        Some(authority) => authority.as_str().rsplit('@').next().unwrap_or_default(),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    }
}

async fn buffer(
    mut payload: Incoming,
    max: usize,
    incoming: &Arrival<'_>,
) -> Result<Bytes, ProxyError> {
    let mut buf = BytesMut::new();
    loop {
        let Ok(next) = tokio::time::timeout(incoming.body_timeout, payload.frame()).await else {
            return Err(ProxyError::ClientTimeout);
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ProxyError::BadGateway(format!("client body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            // Trailers: nothing a plugin reads.
            continue;
        };
        if buf.len() + chunk.len() > max {
            incoming.refused_body.set(Some(payload));
            return Err(ProxyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A client's body on its way upstream: every read bounded by `client_body_timeout`, and a flag
/// raised when that bound cut it (the upstream request then fails, and the client gets a 408).
struct ClientBody {
    chunks: LocalBoxStream<'static, Result<Bytes, String>>,
    timed_out: Rc<Cell<bool>>,
}

/// The next piece of a client body, trailers skipped.
async fn next_data(payload: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match payload.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The request's body, or `None` when it has none. HTTP/1.1 framing tells up front; an HTTP/2
/// request without `content-length` and without END_STREAM on its headers tells only by its
/// first DATA frame or its end of stream, so that first read is made here.
async fn client_body(
    incoming: &Arrival<'_>,
    mut payload: Incoming,
) -> Result<Option<ClientBody>, ProxyError> {
    let (req, read_within) = (incoming.req, incoming.body_timeout);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .map(HeaderValue::as_bytes);
    if payload.is_end_stream() || declared == Some(b"0") {
        return Ok(None);
    }
    let mut first = None;
    if declared.is_none() && req.version() == Version::HTTP_2 {
        let Ok(next) = tokio::time::timeout(read_within, next_data(&mut payload)).await else {
            return Err(ProxyError::ClientTimeout);
        };
        match next {
            None => return Ok(None),
            Some(chunk) => {
                first =
                    Some(chunk.map_err(|e| ProxyError::BadGateway(format!("client body: {e}")))?);
            }
        }
    }
    let timed_out = Rc::new(Cell::new(false));
    let flag = timed_out.clone();
    let rest = futures_util::stream::unfold(Some(payload), move |state| {
        let flag = flag.clone();
        async move {
            let mut payload = state?;
            match tokio::time::timeout(read_within, next_data(&mut payload)).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(payload))),
                Ok(Some(Err(e))) => Some((Err(format!("client body: {e}")), None)),
                Ok(None) => None,
                Err(_) => {
                    flag.set(true);
                    Some((Err("client body timeout".to_string()), None))
                }
            }
        }
    });
    Ok(Some(ClientBody {
        chunks: futures_util::stream::iter(first.map(Ok))
            .chain(rest)
            .boxed_local(),
        timed_out,
    }))
}

async fn forward<'a>(
    incoming: &Arrival<'_>,
    upstream: &Upstream<'a>,
    payload: Option<Incoming>,
    ctx: &mut RequestCtx,
    clients: &UpstreamClients,
    trail: &mut Trail,
) -> Result<Answer, ProxyError> {
    let Arrival {
        req,
        conn,
        request_id,
        headers: on,
        started,
        ..
    } = *incoming;
    let scheme = conn.scheme;
    let Upstream {
        service,
        trust,
        peers,
        stripped,
        preserve_host,
        host,
        sent_host,
    } = *upstream;
    let path = upstream_path(service.path.as_deref(), stripped, req.uri().path());
    let query = headers::filtered_query(req.query_string(), &ctx.strip_query);
    let target = match &query {
        Some(q) => Cow::Owned([&*path, "?", q].concat()),
        // Kong passes a bare trailing `?` through unchanged.
        None if req.uri().query() == Some("") => Cow::Owned([&*path, "?"].concat()),
        None => path,
    };
    let mut peers = peers;
    let sticky_cookie = peers.read_key(ctx);
    let mut origin = peers
        .pick(0)
        .ok_or_else(|| ProxyError::Unavailable(peers.refusal()))?;
    trail.attempt(origin);
    if trail.details {
        trail.upstream_uri = Some(target.to_string());
    }
    // The client's authority when the route preserves it (and the client sent one).
    let host_for = |origin: &'a crate::router::UpstreamOrigin| {
        Some(sent_host.as_bytes())
            .filter(|h| preserve_host && !h.is_empty())
            .or(origin.host.as_ref().map(HeaderValue::as_bytes))
    };
    let via = |origin: &crate::router::UpstreamOrigin| upstream::Via {
        trust,
        pinned: origin.pinned,
    };
    let replay_body = ctx.replace_body.take().or_else(|| ctx.body.clone());
    // gRPC: the client's HTTP/2 stream goes on as it is, trailers included.
    let grpc = matches!(service.protocol.as_str(), "grpc" | "grpcs");
    let (mut client_body, grpc_body) = match (&replay_body, payload) {
        (_, payload) if grpc => (None, Some(payload)),
        (None, Some(p)) => (client_body(incoming, p).await?, None),
        _ => (None, None),
    };
    let streams_body = client_body.is_some();
    let body_timed_out = client_body.as_ref().map(|b| b.timed_out.clone());
    let mut upstream_headers = headers::UpstreamHeaders {
        client: req.headers(),
        host: host_for(origin),
        forwarded: headers::Forwarded {
            trusted: ctx.trusted,
            client_ip: ctx.client_ip,
            scheme,
            host,
            port: conn.local.port(),
            path: req.uri().path(),
            prefix: stripped,
            request_id: on.request_id_upstream.then_some(request_id),
        },
        edits: &ctx.upstream_headers,
        // A plugin may have rewritten the body: its length, not the client's, goes upstream.
        content_length: replay_body.as_ref().map(Bytes::len),
    };
    // The lean client applies each timeout on its own; hyper's is bounded as a whole.
    let timeouts = http1::Timeouts {
        connect: Duration::from_millis(service.connect_timeout),
        write: Duration::from_millis(service.write_timeout),
        read: Duration::from_millis(service.read_timeout),
    };
    let timeout = timeouts.connect.saturating_add(timeouts.read);
    let no_body = req.method() == Method::HEAD;
    // The hot path: a plain upstream and a body the gateway holds (or none).
    let lean = !origin.tls && !streams_body && !grpc;
    let mut attempts = 0u32;
    // One clock read serves the proxy latency, the first attempt's deadline and the upstream
    // latency's start (each read is a measurable cost per request on a VM).
    let sent_at = Instant::now();
    let proxy_latency = sent_at.saturating_duration_since(started);
    trail.before_upstream = Some(proxy_latency);
    let mut deadline = sent_at + timeout;
    if let Some(payload) = grpc_body {
        let body = match (&replay_body, payload) {
            (Some(bytes), _) => upstream::full(bytes.clone()),
            (None, Some(p)) => p.map_err(upstream::BodyError::from).boxed(),
            (None, None) => upstream::empty(),
        };
        let url = [&*origin.base, &*target].concat();
        let mut request = upstream::hyper_request(req.method(), url, &upstream_headers, body)
            .map_err(ProxyError::BadGateway)?;
        // Hop-by-hop to the header rules, but what gRPC servers require of a call.
        request
            .headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
        *request.version_mut() = Version::HTTP_2;
        // The client's deadline bounds the wait as well: past it nobody reads the answer, and
        // the client gets DEADLINE_EXCEEDED (a 504) from here instead of a late answer.
        if let Some(left) = grpc::client_deadline(req) {
            deadline = deadline.min(sent_at + left);
        }
        let in_flight = origin.load.as_ref().map(TargetLoad::start);
        let answer = Box::pin(clients.send_grpc(request, via(origin), deadline)).await;
        if let (Some(load), true) = (&origin.load, answer.is_ok()) {
            load.answered(sent_at.elapsed());
        }
        drop(in_flight);
        origin.report(match &answer {
            Ok(answer) => Outcome::Status(answer.status().as_u16()),
            Err(SendError::Timeout) => Outcome::Timeout,
            Err(_) => Outcome::TcpFailure,
        });
        let answer = answer.map_err(|e| match e {
            SendError::Timeout => ProxyError::Timeout,
            SendError::Connect(detail) | SendError::Failed(detail) => {
                ProxyError::BadGateway(detail)
            }
        })?;
        let upstream_latency = sent_at.elapsed();
        trail.upstream_latency = Some(upstream_latency);
        trail.upstream_status = Some(answer.status());
        let (parts, body) = answer.into_parts();
        let mut response = empty_answer(parts.status);
        *response.body_mut() = AnswerBody::Frames(body);
        *response.headers_mut() = headers::end_to_end(&parts.headers);
        stamp(&mut response, on, upstream_latency, proxy_latency);
        set_sticky_cookie(response.headers_mut(), sticky_cookie);
        return Ok(response);
    }
    let head_for = |headers: &headers::UpstreamHeaders<'_>| {
        lean.then(|| {
            let method = req.method().as_str();
            let mut head = http1::start_head(method, &target, req.headers().len() + 10);
            headers.write(&mut head);
            http1::end_head(&mut head, method, headers.declares_length());
            head
        })
    };
    let mut lean_head = head_for(&upstream_headers);
    let websocket = incoming
        .upgrade
        .take()
        .filter(|_| tunnel::wants_websocket(req));
    let tunnelled = websocket.is_some();
    let answer = if let Some(client) = websocket {
        let mut request = http::Request::new(http_body_util::Empty::new());
        *request.uri_mut() = http::Uri::try_from(&*target)
            .map_err(|e| ProxyError::BadGateway(format!("websocket target: {e}")))?;
        upstream_headers.write(request.headers_mut());
        let to = tunnel::Destination {
            origin,
            trust,
            timeouts,
        };
        let log = trail.wanted.then(|| {
            let log = Rc::new(tunnel::TunnelLog::default());
            trail.tunnel = Some(log.clone());
            log
        });
        let answer = tunnel::handshake(&to, request, client, log).await?;
        upstream::answer_of(answer, false, timeouts.read)
    } else {
        loop {
            let in_flight = origin.load.as_ref().map(TargetLoad::start);
            let tried_at = origin.load.is_some().then(Instant::now);
            let outcome = match &lean_head {
                Some(head) => {
                    let to = http1::Destination {
                        key: &origin.base,
                        host: &origin.connect_host,
                        port: origin.port,
                    };
                    let outgoing = http1::Outgoing {
                        method: req.method().as_str(),
                        head,
                        body: replay_body.as_ref(),
                        at: sent_at,
                        timeouts,
                    };
                    clients.send_lean(&to, &outgoing, no_body).await
                }
                None => {
                    let body = match (&replay_body, client_body.take()) {
                        (Some(body), _) => upstream::full(body.clone()),
                        (None, Some(client)) => upstream::streamed(client.chunks),
                        (None, None) => upstream::empty(),
                    };
                    let url = [&*origin.base, &*target].concat();
                    let mut request =
                        upstream::hyper_request(req.method(), url, &upstream_headers, body)
                            .map_err(ProxyError::BadGateway)?;
                    if streams_body && !request.headers().contains_key(http::header::CONTENT_LENGTH)
                    {
                        // Said explicitly: hyper sends no body of unknown length on a GET otherwise.
                        request.headers_mut().insert(
                            http::header::TRANSFER_ENCODING,
                            http::HeaderValue::from_static("chunked"),
                        );
                    }
                    // Boxed: hyper's future would double the size of every request's future.
                    Box::pin(clients.send_hyper(
                        request,
                        via(origin),
                        no_body,
                        deadline,
                        timeouts.read,
                    ))
                    .await
                }
            };
            if outcome.is_err() && body_timed_out.as_ref().is_some_and(|t| t.get()) {
                // The client stalled, not the upstream (whose connection the failure closed).
                return Err(ProxyError::ClientTimeout);
            }
            origin.report(match &outcome {
                Ok(answer) => Outcome::Status(answer.status),
                Err(SendError::Timeout) => Outcome::Timeout,
                Err(SendError::Connect(_) | SendError::Failed(_)) => Outcome::TcpFailure,
            });
            if let (Some(load), Some(at), true) = (&origin.load, tried_at, outcome.is_ok()) {
                load.answered(at.elapsed());
            }
            drop(in_flight);
            match outcome {
                Ok(answer) => break answer,
                Err(SendError::Connect(detail)) if attempts < service.retries && !streams_body => {
                    attempts += 1;
                    // The next try goes to the next target (the same origin without an
                    // upstream).
                    origin = peers
                        .pick(attempts)
                        .ok_or_else(|| ProxyError::Unavailable(peers.refusal()))?;
                    trail.attempt(origin);
                    upstream_headers.host = host_for(origin);
                    lean_head = head_for(&upstream_headers);
                    deadline = Instant::now() + timeout;
                    tracing::debug!(error = %detail, attempts, "upstream connect failed; retrying");
                }
                Err(SendError::Timeout) => return Err(ProxyError::Timeout),
                Err(SendError::Connect(detail) | SendError::Failed(detail)) => {
                    return Err(ProxyError::BadGateway(detail))
                }
            }
        }
    };
    let upstream_latency = sent_at.elapsed();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    trail.upstream_latency = Some(upstream_latency);
    trail.upstream_status = Some(status);
    let mut response = empty_answer(status);
    *response.headers_mut() = answer.headers;
    stamp(&mut response, on, upstream_latency, proxy_latency);
    let out = response.headers_mut();
    set_sticky_cookie(out, sticky_cookie);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if !tunnelled {
            // The connection would carry some other protocol than the answer's HTTP.
            return Err(ProxyError::BadGateway(
                "the upstream switched protocols unasked".into(),
            ));
        }
        out.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        out.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        return Ok(response);
    }
    if no_body || matches!(status.as_u16(), 204 | 304) {
        if let (true, Some(length)) = (no_body, answer.length) {
            // A HEAD answer tells the length its GET would have.
            out.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        return Ok(response);
    }
    *response.body_mut() = match answer.body {
        http1::AnswerBody::Complete(bytes) => AnswerBody::full(bytes),
        http1::AnswerBody::Streaming(stream) => {
            AnswerBody::stream(stream.map_err(BodyError::from), answer.length)
        }
    };
    Ok(response)
}

/// Sets the cookie consistent hashing generated for a request that had none, replacing one of
/// the same name the upstream set (Kong's `set_cookie`).
fn set_sticky_cookie(out: &mut http::HeaderMap, cookie: Option<HeaderValue>) {
    let Some(cookie) = cookie else {
        return;
    };
    let name = cookie
        .as_bytes()
        .split(|b| *b == b'=')
        .next()
        .unwrap_or_default();
    let kept: Vec<HeaderValue> = out
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| {
            v.as_bytes()
                .strip_prefix(name)
                .is_none_or(|rest| !rest.starts_with(b"="))
        })
        .cloned()
        .collect();
    out.remove(http::header::SET_COOKIE);
    for value in kept {
        out.append(http::header::SET_COOKIE, value);
    }
    out.append(http::header::SET_COOKIE, cookie);
}

/// The one place an answer the gateway makes itself (a plugin's, or a [`ProxyError`]'s) takes
/// the client's protocol: a gRPC call gets a gRPC status.
fn made_here(req: &ClientRequest, answer: Answer) -> Answer {
    if grpc::is_grpc(req) {
        grpc::refusal(answer)
    } else {
        answer
    }
}

/// What the gateway adds to every upstream answer, of what `headers` keeps: its `Via` entry, the
/// two latencies, the upstream's status, and `Server` where the upstream sent none.
fn stamp(
    answer: &mut Answer,
    on: GatewayHeaders,
    upstream_latency: Duration,
    proxy_latency: Duration,
) {
    let status = answer.status();
    let out = answer.headers_mut();
    if on.via {
        out.append(http::header::VIA, VIA_VALUE);
    }
    if on.upstream_latency {
        out.insert(own::UPSTREAM_LATENCY, millis_value(upstream_latency));
    }
    if on.proxy_latency {
        out.insert(own::PROXY_LATENCY, millis_value(proxy_latency));
    }
    if on.upstream_status {
        out.insert(own::UPSTREAM_STATUS, HeaderValue::from(status.as_u16()));
    }
    if on.server && !out.contains_key(http::header::SERVER) {
        out.insert(http::header::SERVER, own::SERVER_VALUE);
    }
}

/// What the gateway adds to an answer it made itself (a plugin's or its own), of what `headers`
/// keeps: `Server` (removed when `headers` leaves it out, as Kong does) and how long the answer
/// took.
fn made_by_gateway(out: &mut http::HeaderMap, on: GatewayHeaders, started: Instant) {
    if on.server {
        out.insert(http::header::SERVER, own::SERVER_VALUE);
    } else {
        out.remove(http::header::SERVER);
    }
    if on.response_latency {
        out.insert(own::RESPONSE_LATENCY, millis_value(started.elapsed()));
    }
}

/// A latency header's value in whole milliseconds. Values under a second, nearly all of them,
/// point into a static table: `HeaderValue::from(u64)` allocates.
fn millis_value(latency: Duration) -> HeaderValue {
    let ms = latency.as_millis();
    let Some(digits) = usize::try_from(ms).ok().and_then(|i| MILLIS_DIGITS.get(i)) else {
        return HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX));
    };
    let skip = if ms < 10 { 2 } else { usize::from(ms < 100) };
    HeaderValue::from_maybe_shared(Bytes::from_static(&digits[skip..]))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `000` to `999` as ASCII digits.
static MILLIS_DIGITS: [[u8; 3]; 1000] = {
    let mut table = [[0u8; 3]; 1000];
    let mut n = 0;
    while n < 1000 {
        table[n] = [
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        n += 1;
    }
    table
};

/// Looked up by a constant name: a lookup by `&str` builds (and allocates) a custom name.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// [`own::VIA`] as a header value.
const VIA_VALUE: HeaderValue = HeaderValue::from_static(own::VIA);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{millis_value, RequestId};

    #[test]
    fn latency_values_are_plain_decimal_milliseconds() {
        for (ms, want) in [
            (0, "0"),
            (7, "7"),
            (10, "10"),
            (99, "99"),
            (100, "100"),
            (999, "999"),
            (1000, "1000"),
            (123_456, "123456"),
        ] {
            assert_eq!(millis_value(Duration::from_millis(ms)), want, "{ms} ms");
        }
        assert_eq!(millis_value(Duration::from_micros(1_999)), "1");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_eq!(a.as_str().len(), 32);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.as_str(), b.as_str());
    }
}
