//! One connection to a Redis server, plain or TLS, made on first use and re-made after failures,
//! shared by its clones (one per thread on threads that ask for their own): what the token cache
//! and the rate-limiting counters talk through.
//!
//! Plain connections are the redis crate's `ConnectionManager`. TLS connections are our own
//! rustls client, with the redis crate speaking RESP (and logging in) over the encrypted stream:
//! the crate's TLS features cannot do what Kong's Redis settings say. Without verification they
//! send no server name at all (Kong sends `server_name` as SNI whatever `ssl_verify` says), and
//! they verify the name of the host connected to, while `server_name` may name another (Kong's
//! own spec connects to `127.0.0.1` and verifies `test-redis.example.com`).
//!
//! - [`RedisTrust`]: the CAs a verified connection trusts (`lua_ssl_trusted_certificate`).
//! - [`RedisTls`]: one server's TLS settings (`ssl_verify`, `server_name`).
//! - `rediss://` URLs: TLS, verified unless the URL ends in `#insecure` (the redis crate's
//!   convention).
//! - [`crate::serve_from_this_worker_thread`]: a thread that runs its own runtime for good (a
//!   proxy worker) gets connections of its own, driven on that runtime.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisFuture, RedisResult, Value,
};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::StoreError;

/// The certificate authorities a verified TLS connection to Redis trusts.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RedisTrust {
    /// The web PKI roots built into the gateway (Mozilla's list, as every other outbound TLS
    /// connection of the gateway): Kong's `lua_ssl_trusted_certificate = system`.
    #[default]
    WebPki,
    /// Exactly the CA certificates of this PEM (Kong's `lua_ssl_trusted_certificate` naming
    /// files).
    Pem(Arc<[u8]>),
}

impl std::fmt::Debug for RedisTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
        }
    }
}

/// How one Redis server is reached over TLS (a `rate-limiting` instance's `redis.ssl_verify` and
/// `redis.server_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisTls {
    /// Check the server's certificate against the [`RedisTrust`] and the name it must carry;
    /// `false` accepts any certificate (Kong's default).
    pub verify: bool,
    /// Sent as SNI and, with `verify`, the name the certificate must carry; else the host's
    /// name (and no SNI for an address).
    pub server_name: Option<String>,
}

/// Who bounds a command's wait for its answer on a plain connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerBound {
    /// The connection: every command fails after the timeout. For callers that send commands
    /// without a bound of their own (the rate-limiting counters).
    Connection,
    /// The caller, around every command it sends (the token cache, which also counts the
    /// failure there): the connection arms no second timer of its own per command, which a
    /// token's first use on a node would otherwise pay for twice. TLS connections keep theirs
    /// either way: their answer timing out is what makes them connect again.
    Caller,
}

/// A connection to one Redis server; clones share it, except on threads that use connections
/// of their own ([`use_thread_connections`]): there [`RedisConn::here`] answers with that
/// thread's.
#[derive(Clone)]
pub(crate) struct RedisConn {
    /// The connection every other thread shares.
    shared: Link,
    /// How a thread makes one of its own: the same server, settings and bounds.
    origin: Arc<Origin>,
}

/// A connection commands are sent over.
#[derive(Clone)]
pub(crate) enum Link {
    /// Plain TCP, through the redis crate's connection manager.
    Plain(ConnectionManager),
    /// TLS, through our rustls client.
    Tls(TlsConn),
}

/// What every [`Link`] to the server is made from, the shared one and each thread's own
/// (nothing is connected until first use).
enum Origin {
    Plain(Box<PlainOrigin>),
    Tls(TlsTarget),
}

/// A plain connection's client and its manager's settings.
struct PlainOrigin {
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
}

/// A thread's own links, each beside the origin it was made from (held weakly: the links of an
/// origin no longer in use are dropped).
type OwnLinks = Vec<(Weak<Origin>, Link)>;

impl Origin {
    /// A new link, not connected yet. A plain one starts the connection manager's task on the
    /// calling thread's runtime.
    fn link(&self) -> Result<Link, StoreError> {
        match self {
            Self::Plain(plain) => {
                ConnectionManager::new_lazy_with_config(plain.client.clone(), plain.config.clone())
                    .map(Link::Plain)
                    .map_err(|e| internal("redis", e))
            }
            Self::Tls(target) => Ok(Link::Tls(TlsConn(Arc::new(TlsShared {
                target: target.clone(),
                current: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
            })))),
        }
    }
}

thread_local! {
    /// This thread's own links, by the [`Origin`] they were made from; `None` on threads that
    /// share (the default).
    static OWN_LINKS: RefCell<Option<OwnLinks>> = const { RefCell::new(None) };
}

/// From now on, commands sent from this thread go over connections of its own, made on first
/// use and driven by this thread's runtime, instead of the shared connection, whose reads and
/// writes run on the thread that first used it: every command then crossed threads twice (a
/// wake-up each way). For threads that run one runtime for as long as they live — the proxy
/// workers; a thread whose runtime ends before it does must not call it (its connections'
/// drivers would end with the runtime).
pub(crate) fn use_thread_connections() {
    OWN_LINKS.with(|own| {
        own.borrow_mut().get_or_insert_with(Vec::new);
    });
}

impl RedisConn {
    /// The shared link made from `origin`, and `origin` kept for threads that make their own.
    fn new(origin: Origin) -> Result<Self, StoreError> {
        Ok(Self {
            shared: origin.link()?,
            origin: Arc::new(origin),
        })
    }

    /// The link to send a command over from this thread: its own, on a thread that uses
    /// connections of its own, else the shared one.
    pub(crate) fn here(&self) -> Link {
        OWN_LINKS.with(|own| {
            let mut own = own.borrow_mut();
            let Some(own) = own.as_mut() else {
                return self.shared.clone();
            };
            let origin = Arc::as_ptr(&self.origin);
            if let Some((_, link)) = own.iter().find(|(o, _)| std::ptr::eq(o.as_ptr(), origin)) {
                return link.clone();
            }
            // Links of origins no longer in use (a plugin instance replaced) close here.
            own.retain(|(o, _)| o.strong_count() > 0);
            // The shared link was made from the same origin: this cannot fail where that did not.
            match self.origin.link() {
                Ok(link) => {
                    own.push((Arc::downgrade(&self.origin), link.clone()));
                    link
                }
                Err(_) => self.shared.clone(),
            }
        })
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Plain(conn) => conn.req_packed_command(cmd),
            Self::Tls(conn) => Box::pin(conn.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Plain(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Tls(conn) => Box::pin(conn.commands(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Plain(conn) => conn.get_db(),
            Self::Tls(conn) => conn.0.target.redis.db(),
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

/// The server of a `redis://` or `rediss://` URL (`what` names the setting in errors, which never
/// quote the URL: it may carry a password). Never waits for Redis.
///
/// # Errors
/// [`StoreError::Internal`] for a URL that does not parse, or trusted CAs that do not.
pub(crate) fn open_url(
    url: &str,
    trust: &RedisTrust,
    timeout: Duration,
    bound: AnswerBound,
    what: &str,
) -> Result<RedisConn, StoreError> {
    let tls_rest = url
        .split_once("://")
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("rediss"))
        .map(|(_, rest)| rest);
    let Some(rest) = tls_rest else {
        let info = url.into_connection_info().map_err(|e| internal(what, e))?;
        return plain(info, timeout, bound, what);
    };
    let (rest, verify) = match rest.split_once('#') {
        None => (rest, true),
        Some((rest, "insecure")) => (rest, false),
        Some(_) => return Err(internal(what, "only #insecure may end a rediss:// URL")),
    };
    let info = format!("redis://{rest}")
        .into_connection_info()
        .map_err(|e| internal(what, e))?;
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(internal(what, "a rediss:// URL names a host and port"));
    };
    let tls = RedisTls {
        verify,
        server_name: None,
    };
    open_tls(
        host,
        *port,
        &tls,
        trust,
        info.redis_settings().clone(),
        timeout,
    )
}

/// A server named field by field: plain TCP, or TLS as `tls` says. Never waits for Redis.
///
/// # Errors
/// [`StoreError::Internal`] when the connection cannot be set up.
pub(crate) fn open_host(
    host: &str,
    port: u16,
    tls: Option<&RedisTls>,
    trust: &RedisTrust,
    redis: RedisConnectionInfo,
    timeout: Duration,
) -> Result<RedisConn, StoreError> {
    if let Some(tls) = tls {
        return open_tls(host, port, tls, trust, redis, timeout);
    }
    let info = ConnectionAddr::Tcp(host.to_string(), port)
        .into_connection_info()
        .map_err(|e| internal("redis", e))?
        .set_redis_settings(redis);
    plain(info, timeout, AnswerBound::Connection, "redis")
}

/// The connection manager, every connection attempt bounded by `timeout`, and every command too
/// unless its callers bound them. Its socket sends each write at once (`TCP_NODELAY`, off in the
/// redis crate's defaults, on in the TLS connections): with Nagle's algorithm a command written
/// while an earlier one's answer is outstanding waits for that answer, which a worker that
/// pipelines the token lookups of many requests over one connection does all the time.
fn plain(
    info: ConnectionInfo,
    timeout: Duration,
    bound: AnswerBound,
    what: &str,
) -> Result<RedisConn, StoreError> {
    let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(|e| internal(what, e))?;
    let answer_timeout = (bound == AnswerBound::Connection).then_some(timeout);
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(answer_timeout)
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100));
    RedisConn::new(Origin::Plain(Box::new(PlainOrigin { client, config })))
}

fn open_tls(
    host: &str,
    port: u16,
    tls: &RedisTls,
    trust: &RedisTrust,
    redis: RedisConnectionInfo,
    timeout: Duration,
) -> Result<RedisConn, StoreError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let name = ServerName::try_from(name.to_string())
        .map_err(|_| internal("redis", "the server name is not a host name or address"))?;
    let config = client_config(tls.verify, trust)?;
    RedisConn::new(Origin::Tls(TlsTarget {
        host: host.to_string(),
        port,
        name,
        connector: TlsConnector::from(Arc::new(config)),
        redis,
        timeout,
    }))
}

/// TLS 1.2 and 1.3 (ring), verifying against `trust` or accepting any certificate.
fn client_config(verify: bool, trust: &RedisTrust) -> Result<rustls::ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| internal("redis TLS", e))?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::unverified::AnyServerCertificate(
                provider,
            )))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        RedisTrust::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        RedisTrust::Pem(pem) => {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| internal("lua_ssl_trusted_certificate", e))?;
                roots
                    .add(cert)
                    .map_err(|e| internal("lua_ssl_trusted_certificate", e))?;
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A TLS connection made on first use, and again after a failure that closed it.
#[derive(Clone)]
pub(crate) struct TlsConn(Arc<TlsShared>);

/// One TLS link: its target and its live connection.
struct TlsShared {
    /// Where it connects to, and how.
    target: TlsTarget,
    /// The live connection, read without a lock by every command.
    current: ArcSwapOption<MultiplexedConnection>,
    /// Held while connecting, so one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// A TLS server and the settings of a connection to it.
#[derive(Clone)]
struct TlsTarget {
    host: String,
    port: u16,
    /// SNI (when a name, not an address) and the name verified.
    name: ServerName<'static>,
    connector: TlsConnector,
    /// Login and database.
    redis: RedisConnectionInfo,
    /// Bound on connecting (TCP, TLS, login) and on every command.
    timeout: Duration,
}

impl TlsConn {
    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut conn = self.connection().await?;
        let res = conn.send_packed_command(cmd).await;
        self.check(&res);
        res
    }

    async fn commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut conn = self.connection().await?;
        let res = conn.send_packed_commands(pipeline, offset, count).await;
        self.check(&res);
        res
    }

    /// A failure that lost the connection drops it: the next command connects again.
    fn check<T>(&self, res: &RedisResult<T>) {
        if res
            .as_ref()
            .is_err_and(|e| e.is_unrecoverable_error() || e.is_timeout())
        {
            self.0.current.store(None);
        }
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.0.current.load_full() {
            return Ok((*conn).clone());
        }
        let _connecting = self.0.connecting.lock().await;
        if let Some(conn) = self.0.current.load_full() {
            return Ok((*conn).clone());
        }
        let conn = tokio::time::timeout(self.0.target.timeout, self.connect())
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        self.0.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// TCP, the TLS handshake, then the redis crate's login (`AUTH`, `SELECT`) over the stream.
    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let shared = &self.0.target;
        let tcp = tokio::net::TcpStream::connect((shared.host.as_str(), shared.port)).await?;
        tcp.set_nodelay(true)?;
        let stream = shared.connector.connect(shared.name.clone(), tcp).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(shared.timeout))
            .set_response_timeout(Some(shared.timeout));
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&shared.redis, stream, config).await?;
        tokio::spawn(driver);
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A connection opened in `runtime` (the connection manager starts a task there).
    fn open(runtime: &tokio::runtime::Runtime) -> RedisConn {
        let _entered = runtime.enter();
        let url = std::env::var("PORTCULLIS_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        open_url(
            &url,
            &RedisTrust::WebPki,
            Duration::from_secs(2),
            AnswerBound::Connection,
            "redis_url",
        )
        .unwrap()
    }

    /// The id Redis gave the connection a command from this thread went over.
    fn client_id(runtime: &tokio::runtime::Runtime, conn: &RedisConn) -> i64 {
        runtime.block_on(async {
            let mut link = conn.here();
            redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut link)
                .await
                .expect("redis reachable (scripts/services.sh starts it)")
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_thread_that_asks_for_its_own_connections_gets_one_and_keeps_it() {
        let main = runtime();
        let conn = open(&main);
        let shared = client_id(&main, &conn);
        assert_eq!(client_id(&main, &conn), shared, "one shared connection");
        let worker = conn.clone();
        let (own, again, kept) = std::thread::spawn(move || {
            let runtime = runtime();
            use_thread_connections();
            let own = client_id(&runtime, &worker);
            let again = client_id(&runtime, &worker);
            // Once every handle of an origin is gone, its link goes when another is made.
            let gone = open(&runtime);
            client_id(&runtime, &gone);
            drop(gone);
            let other = open(&runtime);
            client_id(&runtime, &other);
            let kept = OWN_LINKS.with(|own| own.borrow().as_ref().map(Vec::len));
            (own, again, kept)
        })
        .join()
        .unwrap();
        assert_ne!(own, shared, "the worker thread has a connection of its own");
        assert_eq!(again, own, "and keeps using it");
        assert_eq!(kept, Some(2), "the dropped origin's link was let go");
        assert_eq!(
            client_id(&main, &conn),
            shared,
            "the others still share theirs"
        );
    }
}
