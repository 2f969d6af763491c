//! The proxy's upstream HTTP clients, one set per worker thread so that a pooled connection is
//! driven by the thread that uses it: the lean HTTP/1.1 client of [`super::http1`] for plain
//! upstreams and bodies the gateway holds, hyper's keep-alive pool for TLS upstreams and
//! streamed uploads. (awc, which the introspection client uses, spawns a task and arms a timer
//! for every request it sends — a measurable cost per proxied request; neither client does.)
//!
//! Both speak `http` 1.x, the types the proxy listeners hand the gateway: a request's headers
//! reach either client without conversion.
//!
//! A TLS or gRPC origin whose host is a name keeps the name in its URL (TLS's server name and
//! certificate check, gRPC's `:authority`) and is pinned to the address the balancer picked
//! from the gateway's own DNS answers: its requests go over a client of that address alone,
//! whose resolver answers the name with that address, so that a pooled connection always goes
//! where the balancer sent the request (hyper pools by the URL's authority, the same for every
//! address of a name).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::headers::{HeaderSink, UpstreamHeaders};
use super::http1::{
    Answer, AnswerBody, BodyStream, Destination, ExchangeError, Http1Pool, Outgoing,
};
use crate::tls::{
    unverified_upstream_config as unverified, verified_upstream_config as verified, UpstreamTls,
};

/// Error type of request bodies sent upstream.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Body of an upstream request: nothing, a buffered body, or the client's body streamed through.
pub type UpstreamBody = BoxBody<Bytes, BodyError>;

/// One pooled upstream client (HTTP and HTTPS).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector<Resolver>>, UpstreamBody>;

/// How a pooled client finds the addresses of a URL's host name.
#[derive(Clone)]
pub enum Resolver {
    /// The system's resolver: a service's or target's name the DNS refresher has not answered
    /// yet.
    System(GaiResolver),
    /// Always this address: the one the balancer picked for the name.
    Pinned(IpAddr),
}

/// What [`Resolver`] answers: the addresses to try in turn.
type Found = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Found;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Found, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::System(system) => system.poll_ready(cx),
            Self::Pinned(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self {
            Self::System(system) => {
                let lookup = system.call(name);
                Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
            }
            // Port 0: the connector puts the URL's port in.
            Self::Pinned(ip) => Box::pin(std::future::ready(Ok(
                vec![SocketAddr::new(*ip, 0)].into_iter()
            ))),
        }
    }
}

/// Upstream clients of one proxy worker: the lean plain-HTTP client, and hyper's verifying TLS
/// (services with `tls_verify = true`) or not (Kong's default).
pub struct UpstreamClients {
    /// Plain-HTTP upstreams, request body absent or buffered.
    pub lean: Rc<Http1Pool>,
    /// Default client.
    pub plain: UpstreamClient,
    /// Client that verifies upstream certificates against the web PKI roots.
    pub verifying: UpstreamClient,
    /// gRPC services: HTTP/2 only (h2c with prior knowledge for `grpc`, ALPN h2 for `grpcs`).
    pub grpc: UpstreamClient,
    /// [`UpstreamClients::grpc`] verifying certificates (`tls_verify`).
    pub grpc_verifying: UpstreamClient,
    /// Clients of services with their own TLS settings, by [`UpstreamTls::id`]: (HTTP/1.1,
    /// gRPC). This worker's alone, so no lock.
    custom: RefCell<HashMap<u64, (UpstreamClient, UpstreamClient)>>,
    /// Clients pinned to one address of a host name, by TLS settings, protocol and address (see
    /// the module's documentation). This worker's alone, so no lock.
    pinned: RefCell<HashMap<PinnedKey, UpstreamClient>>,
    pool_size: usize,
    idle: Duration,
}

/// How many services' own TLS clients a worker keeps before starting afresh (settings replaced
/// by a configuration change are never asked for again).
const CUSTOM_CLIENTS: usize = 256;

/// How many pinned clients a worker keeps before starting afresh (addresses a name no longer
/// resolves to are never asked for again).
const PINNED_CLIENTS: usize = 1024;

/// A pinned client's TLS settings ([`Trust`] without the borrow), whether it speaks gRPC, and
/// its address.
type PinnedKey = (TrustKey, bool, IpAddr);

/// [`Trust`] as a map key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum TrustKey {
    Any,
    Verify,
    Own(u64),
}

impl UpstreamClients {
    /// Clients keeping at most `pool_size` idle connections per upstream for `idle` (Kong's
    /// `upstream_keepalive_pool_size` and `upstream_keepalive_idle_timeout`); the plain-HTTP
    /// pool's idle connections are counted in `idle_gauge`.
    pub fn new(pool_size: usize, idle: Duration, idle_gauge: crate::metrics::Gauge) -> Self {
        Self {
            lean: Http1Pool::counted(pool_size, idle, idle_gauge),
            plain: client(unverified(), Speaks::Http1, pool_size, idle, system()),
            verifying: client(verified(), Speaks::Http1, pool_size, idle, system()),
            grpc: client(unverified(), Speaks::Http2, pool_size, idle, system()),
            grpc_verifying: client(verified(), Speaks::Http2, pool_size, idle, system()),
            custom: RefCell::new(HashMap::new()),
            pinned: RefCell::new(HashMap::new()),
            pool_size,
            idle,
        }
    }

    /// The pooled client of a service with its own TLS settings (built on first use).
    fn custom_client(&self, tls: &UpstreamTls, grpc: bool) -> UpstreamClient {
        let mut custom = self.custom.borrow_mut();
        if !custom.contains_key(&tls.id) && custom.len() >= CUSTOM_CLIENTS {
            custom.clear();
        }
        let (http1, http2) = custom.entry(tls.id).or_insert_with(|| {
            let config = (*tls.config).clone();
            let (size, idle) = (self.pool_size, self.idle);
            (
                client(config.clone(), Speaks::Http1, size, idle, system()),
                client(config, Speaks::Http2, size, idle, system()),
            )
        });
        if grpc {
            http2.clone()
        } else {
            http1.clone()
        }
    }

    /// The client of `trust` and protocol connecting to `ip` alone (built on first use).
    fn pinned_client(&self, trust: Trust<'_>, grpc: bool, ip: IpAddr) -> UpstreamClient {
        let key = (trust.key(), grpc, ip);
        let mut pinned = self.pinned.borrow_mut();
        if !pinned.contains_key(&key) && pinned.len() >= PINNED_CLIENTS {
            pinned.clear();
        }
        pinned
            .entry(key)
            .or_insert_with(|| {
                let speaks = if grpc { Speaks::Http2 } else { Speaks::Http1 };
                let tls = (*trust.config()).clone();
                client(tls, speaks, self.pool_size, self.idle, Resolver::Pinned(ip))
            })
            .clone()
    }

    /// The client for a request of `trust` and protocol, pinned to `pinned` when the balancer
    /// picked an address for the URL's host name.
    fn client_for(
        &self,
        trust: Trust<'_>,
        grpc: bool,
        pinned: Option<IpAddr>,
    ) -> Cow<'_, UpstreamClient> {
        match (pinned, trust, grpc) {
            (Some(ip), _, _) => Cow::Owned(self.pinned_client(trust, grpc, ip)),
            (None, Trust::Own(tls), _) => Cow::Owned(self.custom_client(tls, grpc)),
            (None, Trust::Verify, false) => Cow::Borrowed(&self.verifying),
            (None, Trust::Verify, true) => Cow::Borrowed(&self.grpc_verifying),
            (None, Trust::Any, false) => Cow::Borrowed(&self.plain),
            (None, Trust::Any, true) => Cow::Borrowed(&self.grpc),
        }
    }
}

/// The system's resolver.
fn system() -> Resolver {
    Resolver::System(GaiResolver::new())
}

/// Which TLS client settings an upstream request uses.
#[derive(Clone, Copy)]
pub enum Trust<'a> {
    /// Kong's default: no verification, no client certificate.
    Any,
    /// `tls_verify` against the web PKI roots.
    Verify,
    /// The service's own settings (client certificate, CA certificates).
    Own(&'a UpstreamTls),
}

impl<'a> Trust<'a> {
    /// What a service with `tls_verify` and its own settings `own` asks for.
    pub fn of(tls_verify: Option<bool>, own: Option<&'a UpstreamTls>) -> Self {
        match (own, tls_verify) {
            (Some(tls), _) => Self::Own(tls),
            (None, Some(true)) => Self::Verify,
            (None, _) => Self::Any,
        }
    }

    /// As a map key.
    fn key(self) -> TrustKey {
        match self {
            Self::Any => TrustKey::Any,
            Self::Verify => TrustKey::Verify,
            Self::Own(tls) => TrustKey::Own(tls.id),
        }
    }

    /// The rustls settings of a connection made outside the shared pools (WebSocket tunnels,
    /// pinned clients).
    pub fn config(self) -> Arc<rustls::ClientConfig> {
        match self {
            Self::Own(tls) => tls.config.clone(),
            Self::Verify => Arc::new(verified()),
            Self::Any => Arc::new(unverified()),
        }
    }
}

/// How a request over hyper's client reaches its upstream.
#[derive(Clone, Copy)]
pub struct Via<'a> {
    /// How the upstream's TLS is checked.
    pub trust: Trust<'a>,
    /// The address the balancer picked for the URL's host name
    /// ([`crate::router::UpstreamOrigin::pinned`]).
    pub pinned: Option<IpAddr>,
}

/// Which HTTP version a pooled client speaks to its upstreams.
#[derive(Clone, Copy)]
enum Speaks {
    /// HTTP/1.1: services `http` and `https`.
    Http1,
    /// HTTP/2 only, over TLS (ALPN h2) or plain (prior knowledge): services `grpc` and `grpcs`.
    Http2,
}

/// `tls` must not name ALPN protocols: hyper-rustls announces the ones it speaks itself.
fn client(
    tls: rustls::ClientConfig,
    speaks: Speaks,
    pool_size: usize,
    idle: Duration,
    resolver: Resolver,
) -> UpstreamClient {
    let mut http = HttpConnector::new_with_resolver(resolver);
    // The scheme is checked by the TLS wrapper; the plain connector must accept `https` URIs.
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match speaks {
        Speaks::Http1 => connector.enable_http1().wrap_connector(http),
        Speaks::Http2 => connector.enable_http2().wrap_connector(http),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(pool_size);
    if let Speaks::Http2 = speaks {
        builder.timer(TokioTimer::new()).http2_only(true);
    }
    builder.build(connector)
}

/// A failure of hyper's pooled client as the retry loop needs it.
fn send_error(e: &hyper_util::client::legacy::Error) -> SendError {
    let detail =
        std::error::Error::source(e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
    if e.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Failed(detail)
    }
}

/// Why an upstream exchange failed, as the proxy's retry loop needs to know it.
pub enum SendError {
    /// A timeout expired: on the lean client the service's connect, write or read timeout,
    /// each on its own; on hyper's, no answer head within the connect + read timeouts.
    Timeout,
    /// No connection could be opened (may be retried: nothing was sent).
    Connect(String),
    /// Any other failure (logged, never shown to the client).
    Failed(String),
}

impl UpstreamClients {
    /// Sends a request with a held body (or none) to a plain-HTTP upstream over the lean client,
    /// which applies the service's timeouts carried by `request` itself.
    ///
    /// # Errors
    /// As [`SendError`].
    pub async fn send_lean(
        &self,
        to: &Destination<'_>,
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, SendError> {
        match self.lean.exchange(to, request, no_body).await {
            Ok(answer) => Ok(answer),
            Err(ExchangeError::Connect(e)) => Err(SendError::Connect(e.to_string())),
            Err(ExchangeError::Timeout(what)) => {
                tracing::debug!(what, "upstream timed out");
                Err(SendError::Timeout)
            }
            Err(e @ ExchangeError::Upstream(_)) => Err(SendError::Failed(e.to_string())),
        }
    }

    /// Sends a gRPC request (HTTP/2) and returns the answer as it comes: its body, trailers
    /// included, streams to the client without a timeout of its own (gRPC streams may be quiet
    /// for long; the client's deadline and the service's connect + read timeout for the head
    /// bound the call).
    ///
    /// # Errors
    /// As [`SendError`].
    pub async fn send_grpc(
        &self,
        request: http::Request<UpstreamBody>,
        via: Via<'_>,
        deadline: Instant,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let client = self.client_for(via.trust, true, via.pinned);
        match tokio::time::timeout_at(deadline.into(), client.request(request)).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(send_error(&e)),
        }
    }

    /// Sends a request over hyper's pooled client (TLS upstreams, streamed uploads); `via`
    /// picks the client that checks upstream certificates as the service asks and connects to
    /// the address the balancer picked. The head must arrive by `deadline`; then
    /// `read_timeout` bounds each wait for more of the body.
    ///
    /// # Errors
    /// As [`SendError`].
    pub async fn send_hyper(
        &self,
        request: http::Request<UpstreamBody>,
        via: Via<'_>,
        no_body: bool,
        deadline: Instant,
        read_timeout: Duration,
    ) -> Result<Answer, SendError> {
        let client = self.client_for(via.trust, false, via.pinned);
        match tokio::time::timeout_at(deadline.into(), client.request(request)).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok(answer_of(resp, no_body, read_timeout)),
            Ok(Err(e)) => Err(send_error(&e)),
        }
    }
}

/// Writes the upstream request's headers into hyper's header map.
impl HeaderSink for http::HeaderMap {
    fn put(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            self.append(name, value);
        }
    }
}

/// hyper's request for `url` with the decided headers.
///
/// # Errors
/// A URL or method hyper's types refuse (described).
pub fn hyper_request(
    method: &http::Method,
    url: String,
    headers: &UpstreamHeaders<'_>,
    body: UpstreamBody,
) -> Result<http::Request<UpstreamBody>, String> {
    let uri = http::Uri::try_from(url).map_err(|e| e.to_string())?;
    let method = method.clone();
    let mut map = http::HeaderMap::with_capacity(headers.client.len() + 10);
    headers.write(&mut map);
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Ok(request)
}

/// hyper's answer in the shape the lean client gives: end-to-end headers only, body as a stream
/// whose every wait is bounded by the service's `read_timeout`.
pub(super) fn answer_of(
    resp: http::Response<hyper::body::Incoming>,
    no_body: bool,
    read_timeout: Duration,
) -> Answer {
    let (parts, body) = resp.into_parts();
    let out = super::headers::end_to_end(&parts.headers);
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if no_body {
        AnswerBody::Complete(Bytes::new())
    } else {
        let data = http_body_util::BodyDataStream::new(body);
        AnswerBody::Streaming(BodyStream::new(futures_util::stream::unfold(
            Some(data),
            move |data| async move {
                let mut data = data?;
                match tokio::time::timeout(read_timeout, data.next()).await {
                    Ok(None) => None,
                    Ok(Some(piece)) => Some((piece.map_err(std::io::Error::other), Some(data))),
                    Err(_) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "upstream read timed out",
                        );
                        tracing::warn!(
                            error = %e,
                            "upstream answer body broken after its head was sent; \
                             closing the client connection"
                        );
                        Some((Err(e), None))
                    }
                }
            },
        )))
    };
    Answer {
        status: parts.status.as_u16(),
        headers: out,
        length,
        body,
    }
}

/// An empty request body.
pub fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A buffered request body (sent again as is on a retry).
pub fn full(body: Bytes) -> UpstreamBody {
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// The client's body streamed through as it arrives. The body's reads are bounded by timers of
/// this worker thread, the pooled client wants a `Send` body: a local task hands the chunks over. The first
/// error ends the body (the upstream request fails with it).
pub fn streamed<S>(mut body: S) -> UpstreamBody
where
    S: futures_util::Stream<Item = Result<Bytes, String>> + Unpin + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(8);
    tokio::task::spawn_local(async move {
        while let Some(chunk) = body.next().await {
            let failed = chunk.is_err();
            let frame = chunk.map(Frame::data).map_err(BodyError::from);
            if tx.send(frame).await.is_err() || failed {
                break;
            }
        }
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}
