//! `Application::build(settings)`: stores, actors and bound listeners (port 0 allowed, real ports
//! readable), used by `main` and by the tests alike.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::{Server, Service as _};
use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;
use portcullis_stores::memory::{MemoryConfigStore, MemoryTokenStore};
use portcullis_stores::postgres::{self, Migrator, PgConfigStore, PgSettings, PgTokenStore};
use portcullis_stores::redis_cache::{RedisSettings, RedisTokenCache};
use portcullis_stores::redis_counters::RedisCounters;
use portcullis_stores::tiered::{NearCacheSettings, TieredTokenStore};
use portcullis_stores::{ConfigStore, StoreError, TokenStore};

use crate::actors::cluster_sync::ClusterSync;
use crate::actors::registry::{ConfigRegistry, Reload, ReplaceAll};
use crate::actors::token_lifecycle::TokenLifecycle;
use crate::admin::{self, AdminState};
use crate::config::{ConfigError, Database, Listen, Settings};
use crate::metrics::{Metrics, TokenLookups};
use crate::plugins::introspection::{self, cache::SharedTier, IntrospectionCache};
use crate::plugins::oauth2::lockout::{ClientLockout, LockoutPolicy};
use crate::plugins::oauth2::{OAuthDeps, VerifiedSecrets};
use crate::plugins::rate_limiting::RateLimitDeps;
use crate::plugins::PluginRegistry;
use crate::proxy::server::{ConnectionLimits, ProxyListener, ProxyServer, ProxyServerHandle};
use crate::proxy::upstream::UpstreamClients;
use crate::proxy::ProxyState;
use crate::router::RouterSnapshot;
use crate::status::{Probe, Readiness, StatusState};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store could not be opened.
    #[error("{0}")]
    Store(String),
    /// The store configures a plugin that `plugins` leaves out: running without it would
    /// silently drop what it enforces (Kong refuses to start the same way).
    #[error("plugin '{0}' is in use but not enabled: add it to `plugins` or delete its instances")]
    PluginNotEnabled(String),
    /// The DNS resolver of upstream target names cannot be built (the system's configuration
    /// is unreadable).
    #[error("dns_resolver: {0}")]
    Dns(String),
    /// `declarative_config` cannot be read or is invalid; every problem is named.
    #[error("declarative_config {path}: {reason}")]
    Declarative {
        /// The file.
        path: String,
        /// Why, each problem with its entity path and field.
        reason: String,
    },
}

/// The store in use, for the start-up log: where it is, never a password.
fn store_description(settings: &Settings) -> String {
    match settings.database {
        Database::Memory => "memory (nothing survives a restart)".into(),
        Database::Off => match &settings.declarative_config {
            Some(path) => format!("off (declarative_config {})", path.display()),
            None => "off (empty until POST /config)".into(),
        },
        Database::Postgres => {
            let mut text = format!(
                "postgres {}@{}:{}/{}",
                settings.pg_user, settings.pg_host, settings.pg_port, settings.pg_database
            );
            if let Some(schema) = &settings.pg_schema {
                text.push_str(&format!(" schema {schema}"));
            }
            let redis = settings
                .redis_url
                .as_ref()
                .and_then(|u| url::Url::parse(u.expose()).ok());
            if let Some(url) = redis {
                let host = url.host_str().unwrap_or_default();
                let port = url.port().unwrap_or(6379);
                text.push_str(&format!(", redis {host}:{port}"));
            }
            text
        }
    }
}

/// Refuses to start when a stored plugin instance names a plugin that is not enabled.
async fn refuse_disabled_plugins_in_use(
    store: &dyn ConfigStore,
    enabled: &[&str],
) -> Result<(), StartError> {
    let instances = store
        .all(crate::entities::PLUGINS.def)
        .await
        .map_err(|e| StartError::Store(format!("cannot load configuration: {}", start_line(e))))?;
    match instances
        .iter()
        .filter_map(|doc| doc.get("name").and_then(serde_json::Value::as_str))
        .find(|name| !enabled.contains(name))
    {
        Some(name) => Err(StartError::PluginNotEnabled(name.to_string())),
        None => Ok(()),
    }
}

impl From<crate::tls::TlsError> for StartError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::Config(e.into())
    }
}

/// The stores a gateway runs on.
pub struct Stores {
    /// Configuration.
    pub config: Arc<dyn ConfigStore>,
    /// Tokens and codes.
    pub tokens: Arc<dyn TokenStore>,
    /// With a shared database: where other nodes' changes are heard and which caches they clear.
    pub cluster: Option<ClusterLink>,
    /// The `oauth2-introspection` verdict cache (in front of Redis and the bus in a cluster).
    pub verdicts: IntrospectionCache,
    /// Redis, when configured: state the nodes of a cluster share beyond tokens (failed client
    /// authentications).
    pub redis: Option<RedisTokenCache>,
    /// DB-less mode: the store `config` is, replaced whole by a declarative configuration.
    pub declarative: Option<Arc<MemoryConfigStore>>,
    /// The counters the token stores report their lookups into; the gateway's metrics registry
    /// is made with them.
    pub token_lookups: Arc<TokenLookups>,
}

/// What the cluster sync actor needs: the database to listen on and the caches to invalidate.
pub struct ClusterLink {
    /// The database (and schema) every node of the cluster shares.
    pub pg: PgSettings,
    /// This node's token tiers (the same object as `Stores::tokens`).
    pub tokens: Arc<TieredTokenStore>,
    /// This node's introspection verdicts (the same object as `Stores::verdicts`).
    pub verdicts: IntrospectionCache,
}

/// The stores crate's view of the `redis_*` settings, if Redis is configured.
///
/// # Errors
/// `lua_ssl_trusted_certificate` naming files that cannot be read.
pub fn redis_settings(settings: &Settings) -> Result<Option<RedisSettings>, ConfigError> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    Ok(Some(RedisSettings {
        url: url.expose().clone(),
        trust: settings.redis_trust()?,
        prefix: settings.redis_prefix.clone(),
        timeout: Duration::from_millis(settings.redis_timeout),
    }))
}

/// The Redis tier: opened without waiting for Redis (the gateway serves from the near cache and
/// Postgres until Redis answers; the connection manager keeps trying). An unreachable Redis is a
/// warning, never a reason not to start.
///
/// # Errors
/// [`StartError::Config`] for a `redis_url` or `lua_ssl_trusted_certificate` that does not parse.
async fn open_redis(settings: &Settings) -> Result<Option<RedisTokenCache>, StartError> {
    let Some(redis) = redis_settings(settings)? else {
        return Ok(None);
    };
    let cache = RedisTokenCache::open(&redis).map_err(|e| ConfigError::Value {
        key: "redis_url",
        reason: start_line(e),
    })?;
    if let Err(e) = cache.ping().await {
        tracing::warn!(
            error = %e,
            "redis unreachable at start; serving from Postgres and the near cache until it answers"
        );
    }
    Ok(Some(cache))
}

/// What the `rate-limiting` plugin shares with the gateway: a connection to `redis_url` (made on
/// first use, never waited for), `redis_prefix`, and the CAs of `lua_ssl_trusted_certificate`.
///
/// # Errors
/// [`StartError::Config`] for a `redis_url` or `lua_ssl_trusted_certificate` that does not parse.
fn rate_limit_deps(settings: &Settings) -> Result<RateLimitDeps, StartError> {
    let trust = settings.redis_trust()?;
    let gateway_redis = match &settings.redis_url {
        Some(url) => Some(
            RedisCounters::open_url(
                url.expose(),
                Duration::from_millis(settings.redis_timeout),
                &trust,
            )
            .map_err(|e| ConfigError::Value {
                key: "redis_url",
                reason: start_line(e),
            })?,
        ),
        None => None,
    };
    Ok(RateLimitDeps {
        gateway_redis,
        prefix: settings.redis_prefix.clone(),
        trust,
    })
}

/// The stores crate's view of the `pg_*` settings.
pub fn pg_settings(settings: &Settings) -> PgSettings {
    PgSettings {
        host: settings.pg_host.clone(),
        port: settings.pg_port,
        user: settings.pg_user.clone(),
        password: settings.pg_password.as_ref().map(|p| p.expose().clone()),
        dbname: settings.pg_database.clone(),
        schema: settings.pg_schema.clone(),
        max_connections: settings.pg_max_connections,
        timeout: Duration::from_millis(settings.pg_timeout),
        ssl: settings.pg_ssl,
    }
}

/// One line for a store error met at start-up (the `Unavailable` text already names host:port).
fn start_line(e: StoreError) -> String {
    match e {
        StoreError::Unavailable(line) | StoreError::Internal(line) => line,
        other => other.to_string(),
    }
}

/// The Postgres pool of `settings`, once the schema is known to be fully migrated: what `serve`
/// and the `config db_import` / `db_export` commands need before they touch a table.
///
/// # Errors
/// [`StartError::Store`] naming host/port and the cause, or the migration command to run.
pub async fn open_migrated_pool(settings: &Settings) -> Result<postgres::Pool, StartError> {
    let pg = pg_settings(settings);
    let pool = postgres::connect(&pg)
        .await
        .map_err(|e| StartError::Store(start_line(e)))?;
    let status = Migrator::new(pool.clone(), pg.schema.clone())
        .map_err(|e| StartError::Store(start_line(e)))?
        .status()
        .await
        .map_err(|e| StartError::Store(start_line(e)))?;
    let place = match &pg.schema {
        Some(schema) => format!("database '{}' (schema '{schema}')", pg.dbname),
        None => format!("database '{}'", pg.dbname),
    };
    if status.is_fresh() {
        return Err(StartError::Store(format!(
            "{place} is not bootstrapped: run `portcullis migrations bootstrap`"
        )));
    }
    if !status.is_current() {
        return Err(StartError::Store(format!(
            "{place} has pending migrations ({}): run `portcullis migrations up`",
            status.pending.join(", ")
        )));
    }
    Ok(pool)
}

/// Opens the Postgres pool and checks the schema is migrated; `serve` refuses to run on a
/// database with pending migrations and names the command to run.
///
/// # Errors
/// [`StartError::Store`] naming host/port and the cause, or the migration command to run.
pub async fn open_postgres(settings: &Settings) -> Result<Stores, StartError> {
    let pg = pg_settings(settings);
    let pool = open_migrated_pool(settings).await?;
    let redis = open_redis(settings).await?;
    let verdicts = IntrospectionCache::clustered(
        introspection::cache::CAPACITY,
        SharedTier {
            redis: redis.clone(),
            bus: Some(pool.clone()),
        },
    );
    let token_lookups = new_token_lookups()?;
    let tiered = Arc::new(
        TieredTokenStore::new(
            Arc::new(PgTokenStore::new(pool.clone()).observed_by(token_lookups.clone())),
            redis.clone(),
            &NearCacheSettings::default(),
        )
        .observed_by(token_lookups.clone()),
    );
    Ok(Stores {
        config: Arc::new(PgConfigStore::new(pool)),
        tokens: tiered.clone(),
        cluster: Some(ClusterLink {
            pg,
            tokens: tiered,
            verdicts: verdicts.clone(),
        }),
        verdicts,
        redis,
        declarative: None,
        token_lookups,
    })
}

/// The token lookup counters the stores are opened with.
fn new_token_lookups() -> Result<Arc<TokenLookups>, StartError> {
    TokenLookups::new().map_err(|e| StartError::Store(e.to_string()))
}

/// Opens the stores the settings ask for.
///
/// # Errors
/// [`StartError::Store`] naming host/port and the cause.
pub async fn open_stores(settings: &Settings) -> Result<Stores, StartError> {
    match settings.database {
        Database::Memory => {
            let token_lookups = new_token_lookups()?;
            Ok(Stores {
                config: Arc::new(MemoryConfigStore::new()),
                tokens: Arc::new(
                    MemoryTokenStore::with_max_tokens(settings.memory_max_tokens())
                        .observed_by(token_lookups.clone()),
                ),
                cluster: None,
                verdicts: IntrospectionCache::default(),
                redis: None,
                declarative: None,
                token_lookups,
            })
        }
        Database::Off => {
            let store = Arc::new(MemoryConfigStore::new());
            let token_lookups = new_token_lookups()?;
            Ok(Stores {
                config: store.clone(),
                tokens: Arc::new(MemoryTokenStore::new().observed_by(token_lookups.clone())),
                cluster: None,
                verdicts: IntrospectionCache::default(),
                redis: None,
                declarative: Some(store),
                token_lookups,
            })
        }
        Database::Postgres => open_postgres(settings).await,
    }
}

/// Stops one of the gateway's servers: the proxy listeners (hyper, their own worker threads) or
/// an admin server (actix-web).
#[derive(Clone)]
pub enum ServerHandle {
    /// The proxy listeners.
    Proxy(ProxyServerHandle),
    /// An admin API server.
    Admin(actix_web::dev::ServerHandle),
}

impl ServerHandle {
    /// Stops the server; `graceful` gives requests in flight the shutdown timeout.
    pub async fn stop(&self, graceful: bool) {
        match self {
            Self::Proxy(handle) => handle.stop(graceful).await,
            Self::Admin(handle) => handle.stop(graceful).await,
        }
    }
}

/// A built gateway: listeners bound, actors started, servers ready to run.
pub struct Application {
    proxy: Vec<(SocketAddr, bool)>,
    admin: Vec<(SocketAddr, bool)>,
    status: Vec<(SocketAddr, bool)>,
    servers: Vec<Server>,
    proxy_server: Option<ProxyServer>,
    /// The current router snapshot (tests inspect it).
    pub snapshot: Arc<ArcSwap<RouterSnapshot>>,
    /// Hashed client secrets verified recently (tests count the verifications it saves).
    pub verified_secrets: VerifiedSecrets,
    /// DB-less mode: what SIGHUP needs to re-read `declarative_config`.
    hup: Option<Reloader>,
}

/// Re-reads `declarative_config` on SIGHUP.
struct Reloader {
    dbless: Arc<crate::admin::config::DbLess>,
    registry: actix::Addr<ConfigRegistry>,
    plugins: Arc<PluginRegistry>,
}

/// A listening socket with the entry's backlog (std's `TcpListener::bind` fixes it at 128, and
/// actix's own `backlog` applies only to the addresses it binds itself).
fn bind(key: &'static str, listen: &Listen, addr: SocketAddr) -> Result<TcpListener, ConfigError> {
    let failed = cannot_bind(key, listen.addr);
    let socket = bound_socket(addr, listen.reuseport).map_err(failed)?;
    let backlog = i32::try_from(listen.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    Ok(socket.into())
}

/// Binds one listener of an actix-web server (the admin and the status APIs). Those run one
/// worker, so `reuseport` makes one `SO_REUSEPORT` socket, after the proxy's taken-port probe.
fn bind_actix(key: &'static str, listen: &Listen) -> Result<TcpListener, ConfigError> {
    if listen.reuseport {
        refuse_taken_port(key, listen)?;
    }
    bind(key, listen, listen.addr)
}

/// Fails when `listen`'s port is taken. A listener with `reuseport` needs this before it binds:
/// `SO_REUSEPORT` would let it share the port with another process (a second gateway, a stale
/// one), each silently taking part of the other's connections, where a taken port must fail
/// the start. A socket without `SO_REUSEPORT` binds only a port nobody listens on.
fn refuse_taken_port(key: &'static str, listen: &Listen) -> Result<(), ConfigError> {
    if listen.addr.port() == 0 {
        return Ok(());
    }
    bound_socket(listen.addr, false)
        .map(drop)
        .map_err(cannot_bind(key, listen.addr))
}

/// A TCP socket bound to `addr`, not yet listening.
fn bound_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restarted gateway may bind while old connections sit in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The error of a listener that cannot be bound, naming the setting and the address.
fn cannot_bind(
    key: &'static str,
    addr: SocketAddr,
) -> impl Fn(std::io::Error) -> ConfigError + Copy {
    move |e| ConfigError::Value {
        key,
        reason: format!("cannot bind {addr}: {e}"),
    }
}

/// The TLS configuration of a group of actix listeners: read (or generated) for the first
/// `ssl` listener of the group, the same for the others.
fn tls_once(
    made: &mut Option<Arc<rustls::ServerConfig>>,
    key: &'static str,
    files: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ServerConfig, StartError> {
    if let Some(config) = made {
        return Ok((**config).clone());
    }
    let config = crate::tls::server_config(key, files)?;
    let copy = (*config).clone();
    *made = Some(config);
    Ok(copy)
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| StartError::Store(e.to_string()))
}

/// The status listeners (`status_listen`): one actix-web worker, read-only handlers but the
/// drain, TLS with the proxy's certificate.
fn status_server(
    settings: &Settings,
    listen: &[Listen],
    state: StatusState,
    addrs: &mut Vec<(SocketAddr, bool)>,
) -> Result<Server, StartError> {
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // The drain's parameters are a few bytes.
            .app_data(web::PayloadConfig::new(4096))
            .default_service(web::to(crate::status::dispatch))
    })
    .workers(1)
    .shutdown_timeout(5)
    .disable_signals();
    let mut tls_config = None;
    for entry in listen {
        let listener = bind_actix("status_listen", entry)?;
        let addr = local_addr(&listener)?;
        // TLS offers h2 by ALPN whatever the flag, as the proxy's TLS listeners do.
        server = if entry.ssl {
            let files = settings
                .ssl_cert
                .as_deref()
                .zip(settings.ssl_cert_key.as_deref());
            let cfg = tls_once(&mut tls_config, "ssl_cert", files)?;
            server.listen_rustls_0_23(listener, cfg)
        } else if entry.http2 {
            server.listen_auto_h2c(listener)
        } else {
            server.listen(listener)
        }
        .map_err(|e| ConfigError::Value {
            key: "status_listen",
            reason: e.to_string(),
        })?;
        tracing::info!(%addr, tls = entry.ssl, "status listener listening");
        addrs.push((addr, entry.ssl));
    }
    Ok(server.run())
}

fn upstream_clients(settings: &Settings, metrics: &Metrics) -> UpstreamClients {
    UpstreamClients::new(
        settings.upstream_keepalive_pool_size,
        Duration::from_secs(settings.upstream_keepalive_idle_timeout),
        metrics.upstream_idle.clone(),
    )
}

impl Application {
    /// Builds everything; must run inside an actix system (the actors live there).
    ///
    /// # Errors
    /// Configuration problems (bind failures, certificates) and store failures.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let stores = open_stores(&settings).await?;
        Self::build_with(settings, stores).await
    }

    /// Builds on stores opened by the caller.
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with(settings: Settings, stores: Stores) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let settings = Arc::new(settings);
        let snapshot = Arc::new(ArcSwap::from_pointee(RouterSnapshot::default()));
        let enabled = settings.enabled_plugins()?;
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            store = %store_description(&settings),
            plugins = %enabled.join(","),
            "portcullis starting"
        );
        refuse_disabled_plugins_in_use(stores.config.as_ref(), &enabled).await?;
        let node_id = uuid::Uuid::new_v4();
        let metrics = Arc::new(
            Metrics::with_token_lookups(
                node_id,
                crate::admin::info::KONG_VERSION,
                stores.token_lookups.clone(),
            )
            .map_err(|e| StartError::Store(e.to_string()))?,
        );
        let cluster_counters = metrics.cluster.clone();
        let probe = Probe {
            store: stores.config.clone(),
            postgres: settings.database == Database::Postgres,
            redis: stores.redis.clone(),
            snapshot: snapshot.clone(),
        };
        let verified_secrets = VerifiedSecrets::default();
        let plugins = Arc::new(
            PluginRegistry::builtin(
                OAuthDeps {
                    tokens: stores.tokens.clone(),
                    lockout: ClientLockout::new(
                        LockoutPolicy {
                            limit: settings.oauth2_auth_failure_limit,
                            window: Duration::from_secs(settings.oauth2_auth_failure_window),
                        },
                        stores.redis.clone(),
                    ),
                    secrets: verified_secrets.clone(),
                    metrics: metrics.clone(),
                },
                stores.verdicts.clone(),
                rate_limit_deps(&settings)?,
            )
            .only(&enabled),
        );
        let sni = Arc::new(ArcSwap::from_pointee(crate::tls::SniIndex::default()));
        let registry = ConfigRegistry::new(
            stores.config.clone(),
            stores.tokens.clone(),
            plugins.clone(),
            snapshot.clone(),
        )
        .serving_sni(sni.clone())
        .resolving_with(
            crate::actors::dns_refresher::resolver(&settings.dns_servers()?)
                .map_err(StartError::Dns)?,
        )
        .start();
        registry
            .send(Reload)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?
            .map_err(|e| StartError::Store(format!("cannot load configuration: {e}")))?;
        let declarative = match &stores.declarative {
            Some(target) => {
                let dbless = crate::admin::config::DbLess {
                    target: target.clone(),
                    file: settings.declarative_config.clone(),
                    hash: Arc::new(ArcSwap::from_pointee(String::new())),
                };
                if let Some(path) = &dbless.file {
                    let loaded = crate::admin::config::read_file(path, &plugins)
                        .await
                        .map_err(|reason| StartError::Declarative {
                            path: path.display().to_string(),
                            reason,
                        })?;
                    dbless.hash.store(Arc::new(loaded.hash.clone()));
                    registry
                        .send(ReplaceAll {
                            target: target.clone(),
                            next: loaded.store,
                        })
                        .await
                        .map_err(|e| StartError::Store(e.to_string()))?
                        .map_err(|e| StartError::Store(e.to_string()))?;
                }
                Some(Arc::new(dbless))
            }
            None => None,
        };

        let proxy_listen = settings.proxy_listeners()?;
        let admin_listen = settings.admin_listeners()?;
        let status_listen = settings.status_listeners()?;
        let mut servers = Vec::new();
        let mut proxy_addrs = Vec::new();
        let mut admin_addrs = Vec::new();

        let gateway_headers = settings.gateway_headers()?;
        let proxy_state = Arc::new(ProxyState {
            snapshot: snapshot.clone(),
            trusted: settings.trusted_networks()?,
            real_ip_header: http::HeaderName::from_bytes(
                settings.real_ip_header.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| ConfigError::Value {
                key: "real_ip_header",
                reason: "not a header name".into(),
            })?,
            max_body: settings.max_body_bytes()?,
            client_body_timeout: Duration::from_secs(settings.client_body_timeout),
            metrics: metrics.clone(),
            headers: gateway_headers,
        });
        let mut proxy_server = None;
        if !proxy_listen.is_empty() {
            let workers = settings.workers();
            let mut tls_config = None;
            let mut listeners = Vec::with_capacity(proxy_listen.len());
            for listen in &proxy_listen {
                let tls = if listen.ssl {
                    if tls_config.is_none() {
                        let files = settings
                            .ssl_cert
                            .as_deref()
                            .zip(settings.ssl_cert_key.as_deref());
                        tls_config = Some(crate::tls::sni_server_config(
                            "ssl_cert",
                            files,
                            sni.clone(),
                        )?);
                    }
                    tls_config.clone()
                } else {
                    None
                };
                let sockets = if listen.reuseport {
                    refuse_taken_port("proxy_listen", listen)?;
                    let first = bind("proxy_listen", listen, listen.addr)?;
                    // Port 0: the others take the port the first one got.
                    let addr = local_addr(&first)?;
                    let mut sockets = vec![first];
                    for _ in 1..workers {
                        sockets.push(bind("proxy_listen", listen, addr)?);
                    }
                    sockets
                } else {
                    vec![bind("proxy_listen", listen, listen.addr)?]
                };
                let addr = local_addr(&sockets[0])?;
                tracing::info!(%addr, tls = listen.ssl, http2 = listen.http2, reuseport = listen.reuseport, "proxy listening");
                proxy_addrs.push((addr, listen.ssl));
                listeners.push(ProxyListener {
                    sockets,
                    addr,
                    tls,
                    http2: listen.http2,
                    proxy_protocol: listen.proxy_protocol,
                });
            }
            let client_settings = settings.clone();
            let client_metrics = metrics.clone();
            let server = ProxyServer::start(
                listeners,
                workers,
                proxy_state,
                Arc::new(move || upstream_clients(&client_settings, &client_metrics)),
                ConnectionLimits {
                    header_timeout: Duration::from_secs(settings.client_header_timeout),
                    shutdown_timeout: Duration::from_secs(5),
                },
            )
            .map_err(|e| ConfigError::Value {
                key: "proxy_listen",
                reason: e.to_string(),
            })?;
            proxy_server = Some(server);
        }

        if !admin_listen.is_empty() {
            let admin_state = web::Data::new(AdminState {
                store: stores.config.clone(),
                tokens: stores.tokens.clone(),
                registry: registry.clone(),
                plugins: plugins.clone(),
                settings: settings.clone(),
                snapshot: snapshot.clone(),
                started: Instant::now(),
                node_id,
                metrics: metrics.clone(),
                probe: probe.clone(),
                dbless: declarative.clone(),
            });
            let on = gateway_headers;
            let mut server = HttpServer::new(move || {
                App::new()
                    .app_data(admin_state.clone())
                    .app_data(web::PayloadConfig::new(usize::MAX))
                    .wrap_fn(move |req, service| {
                        let started = Instant::now();
                        let answer = service.call(req);
                        async move {
                            let mut answer = answer.await?;
                            admin::stamp(answer.headers_mut(), on, started);
                            Ok(answer)
                        }
                    })
                    .default_service(web::to(admin::dispatch))
            })
            .workers(1)
            .shutdown_timeout(5)
            .disable_signals();
            let mut tls_config = None;
            for listen in &admin_listen {
                let listener = bind_actix("admin_listen", listen)?;
                let addr = local_addr(&listener)?;
                // TLS offers h2 by ALPN whatever the flag, as the proxy's TLS listeners do.
                server = if listen.ssl {
                    let files = settings
                        .admin_ssl_cert
                        .as_deref()
                        .zip(settings.admin_ssl_cert_key.as_deref());
                    let cfg = tls_once(&mut tls_config, "admin_ssl_cert", files)?;
                    server.listen_rustls_0_23(listener, cfg)
                } else if listen.http2 {
                    server.listen_auto_h2c(listener)
                } else {
                    server.listen(listener)
                }
                .map_err(|e| ConfigError::Value {
                    key: "admin_listen",
                    reason: e.to_string(),
                })?;
                tracing::info!(%addr, tls = listen.ssl, http2 = listen.http2, reuseport = listen.reuseport, "admin API listening");
                admin_addrs.push((addr, listen.ssl));
            }
            servers.push(server.run());
        }
        let mut status_addrs = Vec::new();
        if !status_listen.is_empty() {
            let state = StatusState {
                metrics,
                probe,
                readiness: Readiness {
                    draining: Arc::default(),
                    declarative_hash: declarative.as_ref().map(|d| d.hash.clone()),
                },
                admin_token: settings.admin_token.clone(),
            };
            let server = status_server(&settings, &status_listen, state, &mut status_addrs)?;
            servers.push(server);
        }
        // Started last: an actor started but never polled (a bind failed above) would set its
        // timer while the runtime is being dropped, and panic instead of the one-line error.
        TokenLifecycle::new(stores.tokens.clone(), Duration::from_secs(60)).start();
        if let Some(link) = stores.cluster {
            ClusterSync::new(link.pg, link.tokens, link.verdicts, registry.clone())
                .counting_into(cluster_counters)
                .start();
        }
        Ok(Self {
            proxy: proxy_addrs,
            admin: admin_addrs,
            status: status_addrs,
            servers,
            proxy_server,
            snapshot,
            verified_secrets,
            hup: declarative.map(|dbless| Reloader {
                dbless,
                registry: registry.clone(),
                plugins: plugins.clone(),
            }),
        })
    }

    /// Handles to stop the servers (tests stop a node to start it again on the same database).
    pub fn server_handles(&self) -> Vec<ServerHandle> {
        let admin = self.servers.iter().map(|s| ServerHandle::Admin(s.handle()));
        let proxy = self
            .proxy_server
            .iter()
            .map(|s| ServerHandle::Proxy(s.handle()));
        proxy.chain(admin).collect()
    }

    fn port(list: &[(SocketAddr, bool)], tls: bool) -> Option<u16> {
        list.iter().find(|(_, t)| *t == tls).map(|(a, _)| a.port())
    }

    /// First plain proxy port.
    pub fn proxy_port(&self) -> Option<u16> {
        Self::port(&self.proxy, false)
    }
    /// First TLS proxy port.
    pub fn proxy_tls_port(&self) -> Option<u16> {
        Self::port(&self.proxy, true)
    }
    /// First plain admin port.
    pub fn admin_port(&self) -> Option<u16> {
        Self::port(&self.admin, false)
    }
    /// First TLS admin port.
    pub fn admin_tls_port(&self) -> Option<u16> {
        Self::port(&self.admin, true)
    }
    /// First plain status port.
    pub fn status_port(&self) -> Option<u16> {
        Self::port(&self.status, false)
    }
    /// First TLS status port.
    pub fn status_tls_port(&self) -> Option<u16> {
        Self::port(&self.status, true)
    }

    /// Runs until every server stops (or the process gets SIGINT/SIGTERM).
    ///
    /// # Errors
    /// I/O errors of the servers.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handles = self.server_handles();
        let proxy_stopped = self.proxy_server.as_ref().map(ProxyServer::stopped);
        let admin = futures_util::future::try_join_all(self.servers);
        // Held until this returns: dropping it stops the proxy workers.
        let _proxy_server = self.proxy_server;
        let servers = async move {
            let (admin, ()) = futures_util::future::join(admin, async move {
                if let Some(stopped) = proxy_stopped {
                    stopped.await;
                }
            })
            .await;
            admin
        };
        tracing::info!(
            pid = std::process::id(),
            "ready; stop with Ctrl-C or SIGTERM (requests in flight get 5 s to finish)"
        );
        tokio::select! {
            res = servers => res.map(|_| ()),
            () = reopen_log_files_on_sigusr1() => Ok(()),
            () = reload_on_sighup(self.hup) => Ok(()),
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                for h in handles {
                    h.stop(true).await;
                }
                let unsent = crate::plugins::log_queue::flush_all(LOG_FLUSH).await;
                if unsent > 0 {
                    tracing::warn!(unsent, "log entries not sent before the stop");
                }
                Ok(())
            }
        }
    }
}

/// How long a graceful stop waits for the log plugins' queues to empty.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// `SIGHUP` re-reads `declarative_config` in DB-less mode (a bad file is logged and changes
/// nothing). Never returns.
async fn reload_on_sighup(hup: Option<Reloader>) {
    #[cfg(unix)]
    if let Some(hup) = hup {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            while signal.recv().await.is_some() {
                hup.dbless.reload_file(&hup.registry, &hup.plugins).await;
            }
        }
    }
    std::future::pending::<()>().await;
}

/// `SIGUSR1` asks the log plugins to reopen their files (logrotate's `postrotate`), as it asks
/// nginx in Kong. Never returns; without the signal's support it waits forever.
async fn reopen_log_files_on_sigusr1() {
    #[cfg(unix)]
    if let Ok(mut usr1) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening log files");
            crate::plugin_api::reopen_log_files();
        }
    }
    std::future::pending::<()>().await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[actix_rt::test]
    async fn a_stored_plugin_that_is_not_enabled_stops_the_start() {
        let store = MemoryConfigStore::new();
        let serde_json::Value::Object(doc) = json!({
            "id": uuid::Uuid::new_v4(),
            "name": "oauth2",
            "config": {},
            "enabled": true,
        }) else {
            unreachable!()
        };
        store
            .insert(crate::entities::PLUGINS.def, doc)
            .await
            .unwrap();
        let err = refuse_disabled_plugins_in_use(&store, &["request-termination"])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin 'oauth2' is in use but not enabled: add it to `plugins` or delete its instances"
        );
        assert!(refuse_disabled_plugins_in_use(&store, &["oauth2"])
            .await
            .is_ok());
    }
}
