//! The request pipeline: match a route in the current snapshot → run the plugin chain's access
//! phases → forward to the service over a keep-alive pool → stream the answer back → response and
//! log phases. No lock and no actor mailbox on this path.

pub mod headers;
pub mod http1;
pub mod upstream;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::error::ProxyError;
use crate::plugins::{Flow, PluginRuntime, RequestCtx};
use crate::router::{upstream_path, MatchInput, RouterSnapshot, UpstreamOrigin};
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
}

/// What one proxy worker thread hands its requests: the shared state, the worker's own upstream
/// clients and the listener's scheme, in one piece so a request looks up one thing, not three.
pub struct ProxyWorker {
    /// Shared by every worker.
    pub state: web::Data<ProxyState>,
    /// This worker's connection pools.
    pub clients: UpstreamClients,
    /// `http` or `https`: which listener the worker serves.
    pub scheme: &'static str,
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
    req: HttpRequest,
    payload: web::Payload,
    worker: web::Data<ProxyWorker>,
) -> HttpResponse {
    let started = Instant::now();
    let id = RequestId::new();
    let request_id = id.as_str();
    let mut response = match proxy(
        &req,
        payload,
        &worker.state,
        &worker.clients,
        worker.scheme,
        request_id,
        started,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => e.to_response(request_id),
    };
    if let Ok(v) = HeaderValue::from_bytes(&id.0) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ProxyState,
    clients: &UpstreamClients,
    scheme: &'static str,
    request_id: &str,
    started: Instant,
) -> Result<HttpResponse, ProxyError> {
    let snapshot = state.snapshot.load_full();
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
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
    let sent_host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
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
        method: req.method(),
        host,
        host_with_port: &host_with_port,
        path,
        header: &header_lookup,
    };
    let matched = snapshot.find(&input).ok_or(ProxyError::NoRoute)?;
    let entry = matched.entry;
    let effective_https = scheme == "https"
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
        return Ok(HttpResponse::build(
            StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
        )
        .insert_header(("Location", location))
        .finish());
    }
    let routed = entry.service.as_deref().ok_or(ProxyError::Unavailable(
        "no Service found with those values",
    ))?;
    let (service, origin) = (&routed.service, &routed.origin);
    if !service.enabled {
        return Err(ProxyError::NoRoute);
    }

    let mut ctx = RequestCtx {
        req: req.clone(),
        scheme,
        client_ip,
        trusted,
        service: Some(service.clone()),
        snapshot: snapshot.clone(),
        body: None,
        body_too_large: false,
        // An auth plugin records about six edits: room for them up front.
        upstream_headers: Vec::with_capacity(8),
        strip_query: Vec::new(),
        replace_body: None,
        consumer: None,
        authenticated: false,
        max_body: state.max_body,
    };
    let mut payload = Some(payload);
    // The runtimes whose access phase ran, for the response and log phases (borrowed from the
    // snapshot: no allocation and no reference count for the usual handful).
    let mut ran: SmallVec<[&Arc<dyn PluginRuntime>; 4]> = SmallVec::new();
    let https = scheme == "https";
    let mut short_circuit = None;
    for link in &entry.chain.entries {
        let Some(runtime) = link.select(ctx.consumer.as_ref().map(|c| c.id), https) else {
            continue;
        };
        if ctx.body.is_none() && runtime.needs_body(&ctx) {
            if let Some(p) = payload.take() {
                match buffer(p, state.max_body).await {
                    Ok(body) => ctx.body = Some(body),
                    Err(ProxyError::TooLarge) => ctx.body_too_large = true,
                    Err(e) => return Err(e),
                }
            }
        }
        ran.push(runtime);
        if let Flow::Respond(resp) = runtime.access(&mut ctx).await {
            short_circuit = Some(resp);
            break;
        }
    }
    if short_circuit.is_none() && ctx.body_too_large {
        return Err(ProxyError::TooLarge);
    }
    let mut response = match short_circuit {
        Some(resp) => resp,
        None => {
            forward(
                req,
                payload,
                &mut ctx,
                service,
                origin,
                matched.stripped,
                entry.route.route.preserve_host,
                host,
                clients,
                scheme,
                request_id,
                started,
            )
            .await
            // Answer upstream failures here so the response and log phases still run.
            .unwrap_or_else(|e| e.to_response(request_id))
        }
    };
    for runtime in &ran {
        runtime.response_headers(&ctx, response.headers_mut());
    }
    let status = response.status().as_u16();
    for runtime in &ran {
        runtime.log(&ctx, status);
    }
    Ok(response)
}

async fn buffer(mut payload: web::Payload, max: usize) -> Result<Bytes, ProxyError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ProxyError::BadGateway(format!("client body: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(ProxyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn forward(
    req: &HttpRequest,
    payload: Option<web::Payload>,
    ctx: &mut RequestCtx,
    service: &crate::entities::Service,
    origin: &UpstreamOrigin,
    stripped: Option<&str>,
    preserve_host: bool,
    host: &str,
    clients: &UpstreamClients,
    scheme: &'static str,
    request_id: &str,
    started: Instant,
) -> Result<HttpResponse, ProxyError> {
    let path = upstream_path(service.path.as_deref(), stripped, req.uri().path());
    let query = headers::filtered_query(req.query_string(), &ctx.strip_query);
    let target = match &query {
        Some(q) => Cow::Owned([&*path, "?", q].concat()),
        // Kong passes a bare trailing `?` through unchanged.
        None if req.uri().query() == Some("") => Cow::Owned([&*path, "?"].concat()),
        None => path,
    };
    let service_host = origin.host.as_ref().map(http::HeaderValue::as_bytes);
    // The client's `Host` when the route preserves it (and the client sent one).
    let host_value = req
        .headers()
        .get(actix_web::http::header::HOST)
        .filter(|_| preserve_host)
        .map(actix_web::http::header::HeaderValue::as_bytes)
        .or(service_host);
    let replay_body = ctx.replace_body.take().or_else(|| ctx.body.clone());
    let streams_body = replay_body.is_none() && has_body(req);
    let upstream_headers = headers::UpstreamHeaders {
        client: req.headers(),
        host: host_value,
        forwarded: headers::Forwarded {
            trusted: ctx.trusted,
            client_ip: ctx.client_ip,
            scheme,
            host,
            port: req.app_config().local_addr().port(),
            path: req.uri().path(),
            prefix: stripped,
            request_id,
        },
        edits: &ctx.upstream_headers,
        // A plugin may have rewritten the body: its length, not the client's, goes upstream.
        content_length: replay_body.as_ref().map(Bytes::len),
    };
    let timeout =
        Duration::from_millis(service.connect_timeout.saturating_add(service.read_timeout));
    let no_body = req.method() == Method::HEAD;
    // The hot path: a plain upstream and a body the gateway holds (or none).
    let lean = !origin.tls && !streams_body;
    let mut attempts = 0u32;
    let mut payload = payload;
    // One clock read serves the proxy latency, the first attempt's deadline and the upstream
    // latency's start (each read is a measurable cost per request on a VM).
    let sent_at = Instant::now();
    let proxy_latency = sent_at.saturating_duration_since(started);
    let mut deadline = sent_at + timeout;
    let lean_head = lean.then(|| {
        let method = req.method().as_str();
        let mut head = http1::start_head(method, &target, req.headers().len() + 10);
        upstream_headers.write(&mut head);
        http1::end_head(&mut head, method, upstream_headers.declares_length());
        head
    });
    let answer = loop {
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
                };
                clients.send_lean(&to, &outgoing, no_body, deadline).await
            }
            None => {
                let body = match (&replay_body, payload.take()) {
                    (Some(body), _) => upstream::full(body.clone()),
                    (None, Some(p)) if streams_body => upstream::streamed(p),
                    _ => upstream::empty(),
                };
                let url = [&*origin.base, &*target].concat();
                let uri =
                    http::Uri::try_from(url).map_err(|e| ProxyError::BadGateway(e.to_string()))?;
                let method = http::Method::from_bytes(req.method().as_str().as_bytes())
                    .map_err(|e| ProxyError::BadGateway(e.to_string()))?;
                let mut headers = http::HeaderMap::with_capacity(req.headers().len() + 10);
                upstream_headers.write(&mut headers);
                let mut request = http::Request::new(body);
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                let verify = service.tls_verify == Some(true);
                // Boxed: hyper's future would double the size of every request's future.
                Box::pin(clients.send_hyper(request, verify, no_body, deadline)).await
            }
        };
        match outcome {
            Ok(answer) => break answer,
            Err(SendError::Connect(detail)) if attempts < service.retries && !streams_body => {
                attempts += 1;
                deadline = Instant::now() + timeout;
                tracing::debug!(error = %detail, attempts, "upstream connect failed; retrying");
            }
            Err(SendError::Timeout) => return Err(ProxyError::Timeout),
            Err(SendError::Connect(detail) | SendError::Failed(detail)) => {
                return Err(ProxyError::BadGateway(detail))
            }
        }
    };
    let upstream_latency = sent_at.elapsed();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::new(status);
    *response.headers_mut() = answer.headers;
    let out = response.headers_mut();
    out.append(actix_web::http::header::VIA, VIA_VALUE);
    out.insert(UPSTREAM_LATENCY, millis_value(upstream_latency));
    out.insert(PROXY_LATENCY, millis_value(proxy_latency));
    if no_body || matches!(status.as_u16(), 204 | 304) {
        return Ok(response);
    }
    Ok(match (answer.body, answer.length) {
        (http1::AnswerBody::Complete(bytes), _) => response.set_body(BoxBody::new(bytes)),
        (http1::AnswerBody::Streaming(stream), Some(len)) => {
            response.set_body(BoxBody::new(SizedStream::new(len, stream)))
        }
        (http1::AnswerBody::Streaming(stream), None) => {
            response.set_body(BoxBody::new(BodyStream::new(stream)))
        }
    })
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
const UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-portcullis-upstream-latency");
const PROXY_LATENCY: HeaderName = HeaderName::from_static("x-portcullis-proxy-latency");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-portcullis-request-id");

/// Our `Via` entry on upstream requests and client responses.
pub const VIA: &str = concat!("1.1 portcullis/", env!("CARGO_PKG_VERSION"));
const VIA_VALUE: HeaderValue = HeaderValue::from_static(VIA);

fn has_body(req: &HttpRequest) -> bool {
    req.headers()
        .contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0")
        || req.content_type() == "multipart/form-data"
}

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
