//! The proxy listeners: hyper 1.x (hyper-util's `auto` builder: HTTP/1.1, and HTTP/2 by ALPN or
//! prior knowledge) on one current-thread tokio runtime per worker thread, nginx's model. Each
//! worker accepts on its own listening socket (`reuseport`: `SO_REUSEPORT`, the kernel spreads new
//! connections) or on its copy of one shared socket; a connection, its requests, its upstream
//! pools and its plugins' futures stay on the thread that accepted it, so nothing on the request
//! path is `Send` or locked. Why hyper and not actix-web: `docs/proxy-server-stack.md`.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::proxy_protocol;
use super::upstream::UpstreamClients;
use super::{handle, ProxyState, ProxyWorker};
use crate::plugin_api::Scheme;

/// The connection a request came on, as the pipeline needs it.
pub struct Connection {
    /// The client's address (before `trusted_ips` / `real_ip_header`).
    pub peer: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// Whether the listener terminates TLS.
    pub scheme: Scheme,
    /// The server name the client asked for in its TLS handshake (lower case), for routes
    /// with `snis`.
    pub sni: Option<Box<str>>,
}

/// One `proxy_listen` entry, bound at start (so a taken port fails the start, not a worker).
pub struct ProxyListener {
    /// The sockets: one shared by every worker, or with `reuseport` one per worker.
    pub sockets: Vec<std::net::TcpListener>,
    /// The bound address (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// TLS, when the entry has `ssl`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Kong's `http2` flag: on a plain listener, HTTP/2 with prior knowledge (h2c) beside
    /// HTTP/1.1. TLS listeners offer h2 by ALPN whatever the flag.
    pub http2: bool,
    /// Kong's `proxy_protocol`: connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Per-connection limits of the proxy listeners.
#[derive(Clone, Copy)]
pub struct ConnectionLimits {
    /// `client_header_timeout`: the whole head of every request on a connection, keep-alive ones
    /// included, and the TLS handshake.
    pub header_timeout: Duration,
    /// How long stopping waits for requests in flight.
    pub shutdown_timeout: Duration,
}

/// The running proxy listeners. Dropping it stops them (and their worker threads).
pub struct ProxyServer {
    stop: watch::Sender<bool>,
    running: watch::Receiver<usize>,
}

/// Stops the proxy listeners from anywhere (tests stop a node and start another on its store).
#[derive(Clone)]
pub struct ProxyServerHandle {
    stop: watch::Sender<bool>,
    running: watch::Receiver<usize>,
}

impl ProxyServerHandle {
    /// Stops accepting, gives requests in flight the shutdown timeout (when `graceful`), and
    /// returns once every worker thread has finished.
    pub async fn stop(&self, graceful: bool) {
        self.stop.send_replace(graceful);
        let mut running = self.running.clone();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

/// Builds one worker's upstream clients (pools belong to the thread that uses them).
pub type ClientsFactory = Arc<dyn Fn() -> UpstreamClients + Send + Sync>;

impl ProxyServer {
    /// Starts `workers` threads serving every listener.
    ///
    /// # Errors
    /// A socket that cannot be shared with a worker, or a thread that cannot be started.
    pub fn start(
        listeners: Vec<ProxyListener>,
        workers: usize,
        state: Arc<ProxyState>,
        clients: ClientsFactory,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (stop, stop_rx) = watch::channel(false);
        let (running_tx, running) = watch::channel(workers);
        let running_tx = Arc::new(running_tx);
        // The actix system the gateway's actors run in: a worker that belongs to it (as
        // actix-server's workers did) can reach them and is told apart from another gateway's in
        // the same process (tests).
        let system = actix_rt::System::try_current();
        for index in 0..workers {
            // Each worker's own copy of every socket, made here so that a failure is the start's.
            let mut sockets = Vec::with_capacity(listeners.len());
            for listener in &listeners {
                let socket = match listener.sockets.get(index) {
                    Some(own) if listener.sockets.len() > 1 => own.try_clone()?,
                    _ => listener.sockets[0].try_clone()?,
                };
                sockets.push(WorkerSocket {
                    socket,
                    tls: listener.tls.clone().map(tls_acceptor),
                    // TLS listeners offer h2 by ALPN whatever the flag.
                    http2: listener.http2 || listener.tls.is_some(),
                    proxy_protocol: listener.proxy_protocol,
                });
            }
            let (state, clients, stop_rx) = (state.clone(), clients.clone(), stop_rx.clone());
            let running_tx = running_tx.clone();
            let system = system.clone();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    if let Some(system) = system {
                        actix_rt::System::set_current(system);
                    }
                    let worker = ProxyWorker {
                        state,
                        clients: clients(),
                    };
                    run_worker(sockets, worker, limits, stop_rx);
                    running_tx.send_modify(|n| *n = n.saturating_sub(1));
                })?;
        }
        Ok(Self { stop, running })
    }

    /// A handle to stop the listeners.
    pub fn handle(&self) -> ProxyServerHandle {
        ProxyServerHandle {
            stop: self.stop.clone(),
            running: self.running.clone(),
        }
    }

    /// Resolves when every worker thread has finished.
    pub fn stopped(&self) -> impl Future<Output = ()> + 'static {
        let mut running = self.running.clone();
        async move {
            let _ = running.wait_for(|n| *n == 0).await;
        }
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        // Graceful only if a handle asked for it before: whoever wanted to wait for requests in
        // flight stopped the listeners first.
        self.stop.send_modify(|_| {});
    }
}

/// A listener as one worker serves it.
struct WorkerSocket {
    socket: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http2: bool,
    proxy_protocol: bool,
}

/// The TLS acceptor of a listener: h2 and HTTP/1.1 offered by ALPN.
fn tls_acceptor(config: Arc<rustls::ServerConfig>) -> tokio_rustls::TlsAcceptor {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Runs tasks of a worker's connections on the worker's own thread: hyper's HTTP/2 streams
/// carry the pipeline's futures, which are not `Send`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

fn run_worker(
    sockets: Vec<WorkerSocket>,
    worker: ProxyWorker,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "proxy worker cannot start its runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        tokio::task::spawn_local(super::timers::drive());
        // This thread runs this runtime and `LocalSet` until it ends: Redis commands sent from
        // here (the token cache, rate-limiting's counters) go over connections of its own, driven
        // here, and the token lookups of its connections go to Redis together.
        portcullis_stores::serve_from_this_worker_thread();
        let worker = Rc::new(worker);
        let open = Rc::new(OpenConnections::default());
        let mut accepting = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let listener = match TcpListener::from_std(socket.socket) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(error = %e, "proxy worker cannot use its listener");
                    return;
                }
            };
            let listen = Rc::new(Listen {
                scheme: if socket.tls.is_some() {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                tls: socket.tls,
                protocols: protocols(socket.http2, limits),
                header_timeout: limits.header_timeout,
                proxy_protocol: socket.proxy_protocol,
            });
            accepting.push(tokio::task::spawn_local(accept_loop(
                listener,
                listen,
                worker.clone(),
                open.clone(),
                stop.clone(),
            )));
        }
        let _ = stop.changed().await;
        let wait = *stop.borrow();
        for task in &accepting {
            task.abort();
        }
        drop(accepting);
        if wait {
            // Every connection was told to finish its request in flight and close.
            let _ = tokio::time::timeout(limits.shutdown_timeout, open.all_closed()).await;
        }
    });
}

/// What a worker's connections on one listener share.
struct Listen {
    scheme: Scheme,
    tls: Option<tokio_rustls::TlsAcceptor>,
    protocols: Protocols,
    header_timeout: Duration,
    proxy_protocol: bool,
}

/// The HTTP versions a listener serves.
enum Protocols {
    /// HTTP/1.1 only: a plain listener without `http2`. hyper's own HTTP/1 server: hyper-util's
    /// `auto` builder serves h2 to a client that sends the preface even when told HTTP/1 only
    /// (0.1.21, with upgrades), and Kong without `http2` answers the preface with 400.
    Http1(hyper::server::conn::http1::Builder),
    /// HTTP/1.1 and HTTP/2 (by ALPN on TLS, by the preface on plain `http2` listeners).
    Both(auto::Builder<LocalExec>),
}

fn protocols(http2: bool, limits: ConnectionLimits) -> Protocols {
    if !http2 {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(super::timers::WorkerTimer)
            .header_read_timeout(limits.header_timeout);
        return Protocols::Http1(http1);
    }
    let mut both = auto::Builder::new(LocalExec);
    both.http1()
        .timer(super::timers::WorkerTimer)
        .header_read_timeout(limits.header_timeout);
    both.http2().timer(TokioTimer::new());
    Protocols::Both(both)
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4), up to the end of
/// its request line: enough to tell it from any HTTP/1 request.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How a connection to a plain HTTP/1-only listener opens.
enum Opening {
    /// With the HTTP/2 preface: refused.
    H2Preface,
    /// With anything else: hyper reads it (the bytes were only peeked at).
    Other,
    /// With nothing before `client_header_timeout`, or with an error: closed, as hyper would.
    Silent,
}

/// Looks once per connection at its first bytes, leaving them for hyper.
async fn opening(stream: &TcpStream, wait: Duration) -> Opening {
    let mut first = [0u8; H2_PREFACE_LINE.len()];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        // "PRI " begins no HTTP/1 request this gateway serves: the first four bytes decide even
        // when the rest of the line is still on its way.
        Ok(Ok(n)) if n >= 4 && first[..n] == H2_PREFACE_LINE[..n] => Opening::H2Preface,
        Ok(Ok(n)) if n > 0 => Opening::Other,
        _ => Opening::Silent,
    }
}

/// Answers the HTTP/2 preface on a listener without Kong's `http2` flag as nginx does: `400`,
/// then close (hyper alone closes without a word, and the client cannot tell why). What the
/// client sent after the preface is read and dropped for a moment first, so that closing with
/// unread bytes does not reset the connection before the client has read the answer.
async fn refuse_h2_preface(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REFUSAL: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    tracing::debug!("HTTP/2 preface on a listener without `http2`: 400");
    if stream.write_all(REFUSAL).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let linger = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), linger).await;
}

/// The connections a worker has open, so that stopping can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: Cell<usize>,
    none_left: tokio::sync::Notify,
}

impl OpenConnections {
    fn opened(self: &Rc<Self>) -> OpenGuard {
        self.count.set(self.count.get() + 1);
        OpenGuard(self.clone())
    }

    async fn all_closed(&self) {
        while self.count.get() > 0 {
            self.none_left.notified().await;
        }
    }
}

/// One open connection; counted down when dropped.
struct OpenGuard(Rc<OpenConnections>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let count = self.0.count.get().saturating_sub(1);
        self.0.count.set(count);
        if count == 0 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// One connection in the server counters of `/status` and `/metrics`: opened when made, closed
/// when dropped.
struct Counted(Arc<super::ProxyState>);

impl Counted {
    fn new(state: Arc<super::ProxyState>) -> Self {
        state.metrics.server.connection_opened();
        Self(state)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.server.connection_closed();
    }
}

/// Drives a connection; when the worker is told to stop, the connection finishes the request in
/// flight and closes (hyper's graceful shutdown).
macro_rules! drive {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let mut stop = $stop;
        tokio::select! {
            result = conn.as_mut() => result.map_err(BoxError::from),
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(BoxError::from)
            }
        }
    }};
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn accept_loop(
    listener: TcpListener,
    listen: Rc<Listen>,
    worker: Rc<ProxyWorker>,
    open: Rc<OpenConnections>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: the
                // listener itself is fine; give the process a moment to free descriptors.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let connection = Connection {
            peer,
            local,
            scheme: listen.scheme,
            sni: None,
        };
        tokio::task::spawn_local(serve(
            stream,
            connection,
            listen.clone(),
            worker.clone(),
            (open.opened(), stop.clone()),
        ));
    }
}

async fn serve(
    mut stream: TcpStream,
    mut connection: Connection,
    listen: Rc<Listen>,
    worker: Rc<ProxyWorker>,
    (_open, stop): (OpenGuard, watch::Receiver<bool>),
) {
    let _counted = Counted::new(worker.state.clone());
    if listen.proxy_protocol {
        match proxy_protocol::read_header(&mut stream, listen.header_timeout).await {
            // The balancer's word counts only when the balancer is trusted.
            Ok(Some(client)) if worker.state.is_trusted(connection.peer.ip()) => {
                connection.peer = client;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(peer = %connection.peer, error = %e, "connection closed");
                return;
            }
        }
    }
    // The handshake comes first: the server name it carries is part of every request's routing.
    let (plain, tls) = match &listen.tls {
        None => (Some(stream), None),
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout(listen.header_timeout, handshake).await {
                Ok(Ok(tls)) => {
                    connection.sni = tls
                        .get_ref()
                        .1
                        .server_name()
                        .map(|name| name.to_ascii_lowercase().into_boxed_str());
                    (None, Some(tls))
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let plain = match (plain, &listen.protocols) {
        (Some(stream), Protocols::Http1(_)) => {
            match opening(&stream, listen.header_timeout).await {
                Opening::Other => Some(stream),
                Opening::H2Preface => return refuse_h2_preface(stream).await,
                Opening::Silent => return,
            }
        }
        (plain, _) => plain,
    };
    let connection = Rc::new(connection);
    let call = move |req| {
        let (connection, worker) = (connection.clone(), worker.clone());
        async move { Ok::<_, Infallible>(handle(req, &connection, &worker).await) }
    };
    // On a connection that may speak HTTP/2, each request's future is boxed once: HTTP/2 moves it
    // into a task of its own per stream, and a box makes that move a pointer's rather than the
    // whole state machine's. HTTP/1.1 polls it in place, and the allocation would only cost.
    let boxed = |req| Box::pin(call(req));
    let tls_h2 = tls
        .as_ref()
        .is_some_and(|tls| tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()));
    let result = match (plain, tls, &listen.protocols) {
        (Some(stream), _, Protocols::Http1(http1)) => drive!(
            http1
                .serve_connection(TokioIo::new(stream), service_fn(&call))
                .with_upgrades(),
            stop
        ),
        (Some(stream), _, Protocols::Both(both)) => drive!(
            both.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(&boxed)),
            stop
        ),
        (None, Some(tls), Protocols::Http1(http1)) => drive!(
            http1
                .serve_connection(TokioIo::new(tls), service_fn(&call))
                .with_upgrades(),
            stop
        ),
        (None, Some(tls), Protocols::Both(both)) if tls_h2 => drive!(
            both.serve_connection_with_upgrades(TokioIo::new(tls), service_fn(&boxed)),
            stop
        ),
        (None, Some(tls), Protocols::Both(both)) => drive!(
            both.serve_connection_with_upgrades(TokioIo::new(tls), service_fn(&call)),
            stop
        ),
        (None, None, _) => return,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
