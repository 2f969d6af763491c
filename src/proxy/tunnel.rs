//! WebSocket through the proxy, as Kong (nginx) carries it: a handshake (`Upgrade: websocket`)
//! that passed the access phases goes to the upstream on a connection of its own with its
//! `Upgrade` and `Connection` headers; when the upstream answers `101`, the client gets the `101`
//! and the two connections are spliced both ways, bytes copied without reading frames, until
//! both sides have closed or neither has sent anything for the service's `read_timeout`.
//! Any other answer passes through as an ordinary one.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http_body_util::Empty;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http1::Timeouts;
use crate::error::ProxyError;
use crate::plugin_api::ClientRequest;
use crate::router::UpstreamOrigin;

/// Whether the client asks for a WebSocket: `Upgrade: websocket` (the only upgrade Kong passes
/// on) on an HTTP/1.1 GET whose `Connection` names `upgrade`.
pub fn wants_websocket(req: &ClientRequest) -> bool {
    let headers = req.headers();
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && headers
            .get(UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Where the handshake goes and how long each step may take.
pub struct Destination<'a> {
    /// The service's origin.
    pub origin: &'a UpstreamOrigin,
    /// How the upstream's TLS is checked (`tls_verify`, the service's own settings).
    pub trust: super::upstream::Trust<'a>,
    /// The service's timeouts; `read` also bounds how long a tunnel may sit idle.
    pub timeouts: Timeouts,
}

/// Sends the handshake `request` (its headers already decided by the header rules) and returns
/// the upstream's answer. On `101`, the splice of `client` and the upstream connection is started
/// on this worker; it runs once hyper has written the `101` to the client.
///
/// # Errors
/// The upstream could not be reached or did not answer in time (as any proxied request).
pub async fn handshake(
    to: &Destination<'_>,
    mut request: http::Request<Empty<Bytes>>,
    client: OnUpgrade,
    log: Option<Rc<TunnelLog>>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let headers = request.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let timeouts = to.timeouts;
    let tcp = tokio::time::timeout(
        timeouts.connect,
        TcpStream::connect((to.origin.connect_host.as_str(), to.origin.port)),
    )
    .await
    .map_err(|_| ProxyError::Timeout)?
    .map_err(|e| ProxyError::BadGateway(format!("websocket upstream connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut answer = if to.origin.tls {
        let config = to.trust.config();
        let name = rustls::pki_types::ServerName::try_from(to.origin.server_name.clone())
            .map_err(|e| ProxyError::BadGateway(format!("websocket upstream name: {e}")))?;
        let tls = tokio::time::timeout(
            timeouts.connect,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ProxyError::Timeout)?
        .map_err(|e| ProxyError::BadGateway(format!("websocket upstream TLS: {e}")))?;
        exchange(TokioIo::new(tls), request, timeouts).await?
    } else {
        exchange(TokioIo::new(tcp), request, timeouts).await?
    };
    if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut answer);
        tokio::task::spawn_local(async move {
            let (to_upstream, to_client) = splice(client, upstream, timeouts.read).await;
            if let Some(log) = log {
                log.closed(to_upstream, to_client);
            }
        });
    }
    Ok(answer)
}

/// One HTTP/1.1 exchange on a fresh connection that may be upgraded.
async fn exchange<I>(
    io: I,
    request: http::Request<Empty<Bytes>>,
    timeouts: Timeouts,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ProxyError::BadGateway(format!("websocket upstream: {e}")))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "websocket upstream connection ended with an error");
        }
    });
    tokio::time::timeout(timeouts.read, sender.send_request(request))
        .await
        .map_err(|_| ProxyError::Timeout)?
        .map_err(|e| ProxyError::BadGateway(format!("websocket upstream: {e}")))
}

/// Copies bytes both ways until both sides have closed, or neither sent anything for `idle`;
/// returns the bytes carried (client to upstream, upstream to client).
async fn splice(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) -> (u64, u64) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade did not complete");
            return (0, 0);
        }
    };
    let last = Rc::new(Cell::new(Instant::now()));
    let (from_client, from_upstream) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let mut client = Active::new(TokioIo::new(client), last.clone(), from_client.clone());
    let mut upstream = Active::new(TokioIo::new(upstream), last.clone(), from_upstream.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_until = last.get() + idle;
        tokio::select! {
            done = &mut copy => {
                if let Err(e) = &done {
                    tracing::debug!(error = %e, "websocket tunnel ended with an error");
                }
                return done.unwrap_or((from_client.get(), from_upstream.get()));
            }
            () = tokio::time::sleep_until(quiet_until) => {
                if last.get() + idle <= Instant::now() {
                    tracing::debug!(?idle, "websocket tunnel idle; closing both sides");
                    return (from_client.get(), from_upstream.get());
                }
            }
        }
    }
}

/// A tunnel's log phase: it runs when the tunnel closes, with the bytes it carried, whichever
/// comes first of the close and the proxy handing over the pending log.
#[derive(Default)]
pub struct TunnelLog {
    pending: Cell<Option<Box<super::PendingLog>>>,
    closed: Cell<Option<(u64, u64)>>,
}

impl TunnelLog {
    /// The tunnel closed after carrying these bytes.
    fn closed(&self, to_upstream: u64, to_client: u64) {
        match self.pending.take() {
            Some(pending) => pending.tunnel_closed(to_upstream, to_client),
            None => self.closed.set(Some((to_upstream, to_client))),
        }
    }

    /// The log phases to run when the tunnel closes.
    pub(super) fn hand(&self, pending: Box<super::PendingLog>) {
        match self.closed.get() {
            Some((to_upstream, to_client)) => pending.tunnel_closed(to_upstream, to_client),
            None => self.pending.set(Some(pending)),
        }
    }
}

/// An I/O half that records when bytes last moved through it.
struct Active<T> {
    inner: T,
    last: Rc<Cell<Instant>>,
    /// Bytes read from this side.
    read: Rc<Cell<u64>>,
}

impl<T> Active<T> {
    fn new(inner: T, last: Rc<Cell<Instant>>, read: Rc<Cell<u64>>) -> Self {
        Self { inner, last, read }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.set(Instant::now());
            this.read
                .set(this.read.get() + (buf.filled().len() - before) as u64);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
