//! `Application::build(settings)`: stores, actors and bound listeners (port 0 allowed, real ports
//! readable), used by `main` and by the tests alike.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::Server;
use actix_web::http::header::HeaderName;
use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;
use portcullis_stores::memory::{MemoryConfigStore, MemoryTokenStore};
use portcullis_stores::postgres::{self, Migrator, PgConfigStore, PgSettings, PgTokenStore};
use portcullis_stores::redis_cache::{RedisSettings, RedisTokenCache};
use portcullis_stores::tiered::{NearCacheSettings, TieredTokenStore};
use portcullis_stores::{ConfigStore, StoreError, TokenStore};

use crate::actors::cluster_sync::ClusterSync;
use crate::actors::registry::{ConfigRegistry, Reload};
use crate::actors::token_lifecycle::TokenLifecycle;
use crate::admin::{self, AdminState};
use crate::config::{ConfigError, Database, Listen, Settings};
use crate::plugins::introspection::{self, cache::SharedTier, IntrospectionCache};
use crate::plugins::oauth2::OAuthDeps;
use crate::plugins::PluginRegistry;
use crate::proxy::upstream::UpstreamClients;
use crate::proxy::{self, ProxyState, ProxyWorker};
use crate::router::RouterSnapshot;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store could not be opened.
    #[error("{0}")]
    Store(String),
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
pub fn redis_settings(settings: &Settings) -> Option<RedisSettings> {
    settings.redis_url.as_ref().map(|url| RedisSettings {
        url: url.expose().clone(),
        prefix: settings.redis_prefix.clone(),
        timeout: Duration::from_millis(settings.redis_timeout),
    })
}

/// The Redis tier: opened without waiting for Redis (the gateway serves from the near cache and
/// Postgres until Redis answers; the connection manager keeps trying). An unreachable Redis is a
/// warning, never a reason not to start.
///
/// # Errors
/// [`StartError::Config`] for a `redis_url` that does not parse.
async fn open_redis(settings: &Settings) -> Result<Option<RedisTokenCache>, StartError> {
    let Some(redis) = redis_settings(settings) else {
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

/// Opens the Postgres pool and checks the schema is migrated; `serve` refuses to run on a
/// database with pending migrations and names the command to run.
///
/// # Errors
/// [`StartError::Store`] naming host/port and the cause, or the migration command to run.
pub async fn open_postgres(settings: &Settings) -> Result<Stores, StartError> {
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
    let redis = open_redis(settings).await?;
    let verdicts = IntrospectionCache::clustered(
        introspection::cache::CAPACITY,
        SharedTier {
            redis: redis.clone(),
            bus: Some(pool.clone()),
        },
    );
    let tiered = Arc::new(TieredTokenStore::new(
        Arc::new(PgTokenStore::new(pool.clone())),
        redis,
        &NearCacheSettings::default(),
    ));
    Ok(Stores {
        config: Arc::new(PgConfigStore::new(pool)),
        tokens: tiered.clone(),
        cluster: Some(ClusterLink {
            pg,
            tokens: tiered,
            verdicts: verdicts.clone(),
        }),
        verdicts,
    })
}

/// Opens the stores the settings ask for.
///
/// # Errors
/// [`StartError::Store`] naming host/port and the cause.
pub async fn open_stores(settings: &Settings) -> Result<Stores, StartError> {
    match settings.database {
        Database::Memory => Ok(Stores {
            config: Arc::new(MemoryConfigStore::new()),
            tokens: Arc::new(MemoryTokenStore::new()),
            cluster: None,
            verdicts: IntrospectionCache::default(),
        }),
        Database::Postgres => open_postgres(settings).await,
    }
}

/// A built gateway: listeners bound, actors started, servers ready to run.
pub struct Application {
    proxy: Vec<(SocketAddr, bool)>,
    admin: Vec<(SocketAddr, bool)>,
    servers: Vec<Server>,
    /// The current router snapshot (tests inspect it).
    pub snapshot: Arc<ArcSwap<RouterSnapshot>>,
}

fn bind(key: &'static str, listen: &Listen) -> Result<TcpListener, ConfigError> {
    let listener = TcpListener::bind(listen.addr).map_err(|e| ConfigError::Value {
        key,
        reason: format!("cannot bind {}: {e}", listen.addr),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ConfigError::Value {
            key,
            reason: e.to_string(),
        })?;
    Ok(listener)
}

fn upstream_clients(settings: &Settings) -> UpstreamClients {
    UpstreamClients::new(
        settings.upstream_keepalive_pool_size,
        Duration::from_secs(settings.upstream_keepalive_idle_timeout),
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
        let plugins = Arc::new(PluginRegistry::builtin(
            OAuthDeps {
                tokens: stores.tokens.clone(),
            },
            stores.verdicts.clone(),
        ));
        let registry = ConfigRegistry::new(
            stores.config.clone(),
            stores.tokens.clone(),
            plugins.clone(),
            snapshot.clone(),
        )
        .start();
        registry
            .send(Reload)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?
            .map_err(|e| StartError::Store(format!("cannot load configuration: {e}")))?;

        let proxy_listen = settings.proxy_listeners()?;
        let admin_listen = settings.admin_listeners()?;
        let mut servers = Vec::new();
        let mut proxy_addrs = Vec::new();
        let mut admin_addrs = Vec::new();

        let proxy_state = web::Data::new(ProxyState {
            snapshot: snapshot.clone(),
            trusted: settings.trusted_networks()?,
            real_ip_header: HeaderName::from_bytes(
                settings.real_ip_header.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| ConfigError::Value {
                key: "real_ip_header",
                reason: "not a header name".into(),
            })?,
            max_body: settings.max_body_bytes()?,
        });
        for tls in [false, true] {
            let listeners: Vec<&Listen> = proxy_listen.iter().filter(|l| l.ssl == tls).collect();
            if listeners.is_empty() {
                continue;
            }
            let state = proxy_state.clone();
            let client_settings = settings.clone();
            let scheme = if tls { "https" } else { "http" };
            let mut server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(ProxyWorker {
                        state: state.clone(),
                        clients: upstream_clients(&client_settings),
                        scheme,
                    }))
                    .app_data(web::PayloadConfig::new(usize::MAX))
                    .default_service(web::to(proxy::handle))
            })
            .workers(settings.workers())
            .backlog(4096)
            .max_connection_rate(4096)
            .shutdown_timeout(5)
            .disable_signals();
            let tls_config = if tls {
                let files = settings
                    .ssl_cert
                    .as_deref()
                    .zip(settings.ssl_cert_key.as_deref());
                Some(crate::tls::server_config("ssl_cert", files)?)
            } else {
                None
            };
            for listen in listeners {
                let listener = bind("proxy_listen", listen)?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| StartError::Store(e.to_string()))?;
                server = match &tls_config {
                    Some(cfg) => server.listen_rustls_0_23(listener, (**cfg).clone()),
                    None => server.listen(listener),
                }
                .map_err(|e| ConfigError::Value {
                    key: "proxy_listen",
                    reason: e.to_string(),
                })?;
                tracing::info!(%addr, tls, "proxy listening");
                proxy_addrs.push((addr, tls));
            }
            servers.push(server.run());
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
                node_id: uuid::Uuid::new_v4(),
            });
            let mut server = HttpServer::new(move || {
                App::new()
                    .app_data(admin_state.clone())
                    .app_data(web::PayloadConfig::new(usize::MAX))
                    .default_service(web::to(admin::dispatch))
            })
            .workers(1)
            .shutdown_timeout(5)
            .disable_signals();
            let mut tls_config = None;
            for listen in &admin_listen {
                let listener = bind("admin_listen", listen)?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| StartError::Store(e.to_string()))?;
                server = if listen.ssl {
                    if tls_config.is_none() {
                        let files = settings
                            .admin_ssl_cert
                            .as_deref()
                            .zip(settings.admin_ssl_cert_key.as_deref());
                        tls_config = Some(crate::tls::server_config("admin_ssl_cert", files)?);
                    }
                    let cfg = tls_config
                        .as_ref()
                        .map(|c| (**c).clone())
                        .ok_or_else(|| StartError::Store("tls".into()))?;
                    server.listen_rustls_0_23(listener, cfg)
                } else {
                    server.listen(listener)
                }
                .map_err(|e| ConfigError::Value {
                    key: "admin_listen",
                    reason: e.to_string(),
                })?;
                tracing::info!(%addr, tls = listen.ssl, "admin API listening");
                admin_addrs.push((addr, listen.ssl));
            }
            servers.push(server.run());
        }
        // Started last: an actor started but never polled (a bind failed above) would set its
        // timer while the runtime is being dropped, and panic instead of the one-line error.
        TokenLifecycle::new(stores.tokens.clone(), Duration::from_secs(60)).start();
        if let Some(link) = stores.cluster {
            ClusterSync::new(link.pg, link.tokens, link.verdicts, registry.clone()).start();
        }
        Ok(Self {
            proxy: proxy_addrs,
            admin: admin_addrs,
            servers,
            snapshot,
        })
    }

    /// Handles to stop the servers (tests stop a node to start it again on the same database).
    pub fn server_handles(&self) -> Vec<actix_web::dev::ServerHandle> {
        self.servers.iter().map(Server::handle).collect()
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

    /// Runs until every server stops (or the process gets SIGINT/SIGTERM).
    ///
    /// # Errors
    /// I/O errors of the servers.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handles: Vec<_> = self.servers.iter().map(Server::handle).collect();
        let servers = futures_util::future::try_join_all(self.servers);
        tokio::select! {
            res = servers => res.map(|_| ()),
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                for h in handles {
                    h.stop(true).await;
                }
                Ok(())
            }
        }
    }
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
