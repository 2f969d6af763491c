//! The proxy listener's server stack candidates, side by side: each variant serves the same
//! fixed answer (the proxy bench's 205-byte JSON body, `Content-Type`, an `X-Request-Id`) after
//! the same header reads (`Host`, `Authorization`), so that instructions per request under
//! callgrind differ only by the HTTP server stack and its runtime. The gateway's own pipeline
//! (router, plugins, upstream client) is the same whatever the stack, and is measured on the
//! gateway itself (`docs/proxy-server-stack.md`).
//!
//! ```text
//! server-stack <variant> <addr> [workers]
//! ```
//!
//! Variants: `actix-web` (today's proxy listener: `HttpServer` + `App` + one default service),
//! `actix-http` (actix-http's `HttpService` on actix-server, no `App`), `actix-http-knobs` (the
//! same, keep-alive left to the OS and the request-head timer off), `actix-http-reuseport` (the
//! h1 service on one current-thread runtime per worker, each with its own `SO_REUSEPORT`
//! listener: no accept thread), `hyper-h1` (hyper 1.x HTTP/1 only), `hyper-auto` (hyper-util's
//! auto builder: HTTP/1.1 and h2c prior knowledge, upgrades), both on one current-thread runtime
//! per worker with `SO_REUSEPORT`, `hyper-auto-timer` (`hyper-auto` with a 5 s request-head
//! timeout), and `hyper-auto-mt` (the same on tokio's multi-thread
//! runtime).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The upstream answer of the proxy bench: 205 bytes of JSON.
const BODY: &[u8] = br#"{"items":[{"id":1,"name":"alpha","price":10},{"id":2,"name":"beta","price":20},{"id":3,"name":"gamma","price":30}],"count":3,"page":1,"next":null,"source":"bench-upstream","note":"fixed body for benches"}"#;
const REQUEST_ID: &str = "0123456789abcdef0123456789abcdef";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(addr)) = (args.get(1), args.get(2)) else {
        return Err("usage: server-stack <variant> <addr> [workers]".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let workers: usize = args.get(3).map(|w| w.parse()).transpose()?.unwrap_or(1);
    match variant.as_str() {
        "actix-web" => actix_web_app(addr, workers),
        "actix-http" => actix_http(addr, workers, false),
        "actix-http-knobs" => actix_http(addr, workers, true),
        "actix-http-reuseport" => per_worker(addr, workers, actix_reuseport),
        "hyper-h1" => per_worker(addr, workers, |l| hyper_serve(l, false)),
        "hyper-auto" => per_worker(addr, workers, |l| hyper_serve(l, true)),
        "hyper-auto-timer" => per_worker(addr, workers, hyper_serve_timer),
        "hyper-auto-mt" => hyper_mt(addr, workers),
        other => Err(format!("unknown variant {other}").into()),
    }
}

/// What every variant checks of the request: the bytes of two headers.
fn looks_authorized(host: Option<&[u8]>, auth: Option<&[u8]>) -> bool {
    host.is_some_and(|h| !h.is_empty()) && auth.is_some_and(|a| a.starts_with(b"Bearer "))
}

// ---- (a) actix-web App + default service, configured like the gateway's proxy listener ----

async fn actix_web_handler(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    let h = req.headers();
    let ok = looks_authorized(
        h.get("host").map(|v| v.as_bytes()),
        h.get("authorization").map(|v| v.as_bytes()),
    );
    let mut resp = if ok {
        actix_web::HttpResponse::Ok()
    } else {
        actix_web::HttpResponse::Unauthorized()
    };
    resp.insert_header(("content-type", "application/json"))
        .insert_header(("x-request-id", REQUEST_ID))
        .body(Bytes::from_static(BODY))
}

fn actix_web_app(addr: SocketAddr, workers: usize) -> Result<(), Error> {
    actix_rt::System::new().block_on(async move {
        actix_web::HttpServer::new(|| {
            actix_web::App::new()
                .app_data(actix_web::web::PayloadConfig::new(usize::MAX))
                .default_service(actix_web::web::to(actix_web_handler))
        })
        .workers(workers)
        .backlog(4096)
        .max_connection_rate(4096)
        .disable_signals()
        .bind(addr)?
        .run()
        .await
    })?;
    Ok(())
}

// ---- (b), (c) actix-http's HttpService, no App ----

use actix_http::HttpMessage as _;

async fn actix_http_handler(
    req: actix_http::Request,
) -> Result<actix_http::Response<Bytes>, Infallible> {
    let h = req.headers();
    let ok = looks_authorized(
        h.get("host").map(|v| v.as_bytes()),
        h.get("authorization").map(|v| v.as_bytes()),
    );
    let status = if ok {
        actix_http::StatusCode::OK
    } else {
        actix_http::StatusCode::UNAUTHORIZED
    };
    let mut resp = actix_http::Response::with_body(status, Bytes::from_static(BODY));
    let headers = resp.headers_mut();
    headers.insert(
        actix_http::header::CONTENT_TYPE,
        actix_http::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        actix_http::header::HeaderName::from_static("x-request-id"),
        actix_http::header::HeaderValue::from_static(REQUEST_ID),
    );
    Ok(resp)
}

/// `HttpService::build()`, with the knobs when asked: no keep-alive timer to re-arm after each
/// response, no timer for the request head or for the close.
macro_rules! actix_builder {
    ($knobs:expr) => {{
        let b = actix_http::HttpService::build();
        if $knobs {
            b.keep_alive(actix_http::KeepAlive::Os)
                .client_request_timeout(Duration::ZERO)
                .client_disconnect_timeout(Duration::ZERO)
        } else {
            b
        }
    }};
}

fn actix_http(addr: SocketAddr, workers: usize, knobs: bool) -> Result<(), Error> {
    actix_rt::System::new().block_on(async move {
        actix_server::Server::build()
            .workers(workers)
            .backlog(4096)
            .max_concurrent_connections(25_000)
            .disable_signals()
            .bind("proxy", addr, move || {
                actix_builder!(knobs).h1(actix_http_handler).tcp()
            })?
            .run()
            .await
    })?;
    Ok(())
}

// ---- (d) one current-thread runtime per worker, SO_REUSEPORT listeners ----

/// A listener with `SO_REUSEPORT`: each worker binds its own and the kernel spreads
/// connections; no accept thread hands them over.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn per_worker(
    addr: SocketAddr,
    workers: usize,
    serve: fn(std::net::TcpListener) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut threads = Vec::new();
    for _ in 0..workers {
        let listener = reuseport_listener(addr)?;
        threads.push(std::thread::spawn(move || serve(listener)));
    }
    for t in threads {
        t.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

fn actix_reuseport(listener: std::net::TcpListener) -> Result<(), Error> {
    use actix_service::{Service, ServiceFactory};
    actix_rt::System::new().block_on(async move {
        let listener = actix_rt::net::TcpListener::from_std(listener)?;
        let service = actix_builder!(true)
            .h1(actix_http_handler)
            .new_service(())
            .await
            .map_err(|_| "h1 service")?;
        let service = std::rc::Rc::new(service);
        loop {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let service = service.clone();
            actix_rt::spawn(async move {
                let _ = service.call((stream, Some(peer))).await;
            });
        }
    })
}

// ---- (e) hyper 1.x ----

async fn hyper_handler(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, Infallible> {
    let h = req.headers();
    // HTTP/2 carries the authority in the URI, not in a Host header.
    let host = h
        .get("host")
        .map(|v| v.as_bytes())
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    let ok = looks_authorized(host, h.get("authorization").map(|v| v.as_bytes()));
    let status = if ok {
        hyper::StatusCode::OK
    } else {
        hyper::StatusCode::UNAUTHORIZED
    };
    let resp = hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", REQUEST_ID)
        .body(http_body_util::Full::new(Bytes::from_static(BODY)))
        .unwrap_or_default();
    Ok(resp)
}

async fn hyper_accept_loop(listener: tokio::net::TcpListener, auto: bool) -> Result<(), Error> {
    hyper_accept_loop_with(listener, auto, false).await
}

/// `timer`: give HTTP/1 a 5 s request-head timeout (hyper arms none without a timer), as a
/// listener facing slow clients must.
async fn hyper_accept_loop_with(
    listener: tokio::net::TcpListener,
    auto: bool,
    timer: bool,
) -> Result<(), Error> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let (stream, _peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let service = hyper::service::service_fn(hyper_handler);
        tokio::spawn(async move {
            if auto {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if timer {
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5));
                }
                let _ = builder.serve_connection_with_upgrades(io, service).await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
            }
        });
    }
}

fn hyper_serve(listener: std::net::TcpListener, auto: bool) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        hyper_accept_loop(listener, auto).await
    })
}

fn hyper_serve_timer(listener: std::net::TcpListener) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        hyper_accept_loop_with(listener, true, true).await
    })
}

fn hyper_mt(addr: SocketAddr, workers: usize) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        hyper_accept_loop(listener, true).await
    })
}
