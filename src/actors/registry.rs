//! The config registry actor: the single writer of the gateway configuration on this node.
//!
//! Its protocol is typed: three writes ([`Insert`], [`Update`], [`Delete`]) and two re-reads
//! ([`Reload`], [`Refresh`]). The admin API validates a document before sending it; the actor
//! checks that the row is still the one the caller read (so a read-merge-write such as PATCH loses
//! no concurrent change made on this node: the caller re-reads and retries on
//! [`RegistryError::Changed`]), writes it, removes the tokens and codes of deleted credentials and
//! services, and publishes a new [`RouterSnapshot`]. A write the store committed is always
//! published, whatever fails after the commit. Request handlers only load the snapshot; they never
//! wait on this mailbox.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;
use portcullis_stores::model::entities as defs;
use portcullis_stores::{ConfigStore, Document, EntityDef, StoreError, TokenStore};
use serde_json::Value;
use uuid::Uuid;

use super::dns_refresher::{DnsRefresher, Resolved, Watch};
use super::health_checker::{HealthChecker, Probe, Stop};
use crate::entities::certificates::{CaCertificate, Certificate, Sni};
use crate::entities::upstreams::{Address, AddressKind, Target, Upstream};
use crate::entities::{
    AclMembership, Consumer, IdentityParts, KeyAuthCredential, OAuthCredential, PluginInstance,
    Route, Service,
};
use crate::error::RegistryError;
use crate::plugin_api::PluginRuntime;
use crate::plugins::PluginRegistry;
use crate::router::balancer::Rotation;
use crate::router::dns::{address_key, hosts_of, AddressBook, Reached};
use crate::router::health::{reported_targets, HealthBook};
use crate::router::{
    ChainEntry, CompiledRoute, PluginChain, RouterSnapshot, ScopedRuntime, SnapshotParts,
};
use crate::tls::{Served, SniIndex, UpstreamTls};

/// A change to apply to the mirror.
#[derive(Debug, Clone)]
enum Change {
    /// A document was inserted or replaced.
    Upsert(&'static str, Document),
    /// Documents were deleted (the entity and id of each, cascades included).
    Delete(Vec<(&'static str, Uuid)>),
}

/// Inserts a validated document (`doc["id"]` set); answers with the stored row.
#[derive(Message)]
#[rtype(result = "Result<Document, RegistryError>")]
pub struct Insert {
    /// The entity.
    pub def: &'static EntityDef,
    /// The document to store.
    pub doc: Document,
}

/// Replaces a row with a validated document, provided the row is still `expected` (what the
/// caller read and merged into); answers with the stored row.
#[derive(Message)]
#[rtype(result = "Result<Document, RegistryError>")]
pub struct Update {
    /// The entity.
    pub def: &'static EntityDef,
    /// The replacement, with the same id.
    pub doc: Document,
    /// The row as the caller read it.
    pub expected: Document,
}

/// Deletes a row and what depends on it, provided the row is still `expected`; answers with
/// every `(entity, id)` removed.
#[derive(Message)]
#[rtype(result = "Result<Vec<(&'static str, Uuid)>, RegistryError>")]
pub struct Delete {
    /// The entity.
    pub def: &'static EntityDef,
    /// The row as the caller read it (and checked against the request's path).
    pub expected: Document,
}

/// Re-read everything from the store and republish (start-up, cluster resync).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Reload;

/// Replaces the whole configuration held in `target` with `next` (DB-less: a declarative file
/// or `POST /config`), then publishes it; rows whose id the new configuration keeps keep their
/// tokens, the tokens of removed credentials and services are deleted.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct ReplaceAll {
    /// The store the admin API reads (the registry's own store in DB-less mode).
    pub target: Arc<portcullis_stores::memory::MemoryConfigStore>,
    /// The validated configuration.
    pub next: portcullis_stores::memory::MemoryConfigStore,
}

/// Apply changes made elsewhere (another node) after re-reading the named rows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh(pub Vec<(&'static str, Uuid)>);

/// Tries again to remove the tokens and codes of deleted credentials and services.
#[derive(Message)]
#[rtype(result = "()")]
struct RetryCascade {
    owners: Owners,
    attempt: u32,
}

/// How often a failed token cascade is retried (after 1, 2, 4 … 128 s: about four minutes).
const CASCADE_RETRIES: u32 = 8;

/// Deleted rows that own tokens and codes.
#[derive(Debug, Default, Clone)]
struct Owners {
    credentials: Vec<Uuid>,
    services: Vec<Uuid>,
}

impl Owners {
    fn of(removed: &[(&'static str, Uuid)]) -> Self {
        let mut owners = Self::default();
        for (entity, id) in removed {
            match *entity {
                "oauth2_credentials" => owners.credentials.push(*id),
                "services" => owners.services.push(*id),
                _ => {}
            }
        }
        owners
    }

    fn is_empty(&self) -> bool {
        self.credentials.is_empty() && self.services.is_empty()
    }

    /// Deletes their tokens and codes.
    async fn cascade(&self, tokens: &dyn TokenStore) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        tokens
            .delete_owned_by(&self.credentials, &self.services)
            .await
            .map(drop)
    }
}

/// Best default instance and best consumer-scoped instances of one plugin name (with rank).
type NameSlot = (
    Option<(u8, ScopedRuntime)>,
    HashMap<Uuid, (u8, ScopedRuntime)>,
);

struct Plugged {
    /// The stored row it was compiled from: the same row heard again (a node's own write coming
    /// back through the cluster feed) keeps the runtime, whose queue thread and open file a
    /// recompile would replace.
    doc: Document,
    instance: PluginInstance,
    runtime: Option<Arc<dyn PluginRuntime>>,
}

/// Typed mirror of the configuration; the single source for snapshot builds.
#[derive(Default)]
struct Mirror {
    services: HashMap<Uuid, Arc<Service>>,
    routes: HashMap<Uuid, Arc<CompiledRoute>>,
    consumers: HashMap<Uuid, Arc<Consumer>>,
    plugins: BTreeMap<Uuid, Plugged>,
    credentials: HashMap<Uuid, Arc<OAuthCredential>>,
    keyauth: HashMap<Uuid, Arc<KeyAuthCredential>>,
    acls: HashMap<Uuid, Arc<AclMembership>>,
    upstreams: HashMap<Uuid, Arc<Upstream>>,
    targets: HashMap<Uuid, Arc<Target>>,
    certificates: HashMap<Uuid, Arc<Certificate>>,
    snis: HashMap<Uuid, Arc<Sni>>,
    ca_certificates: HashMap<Uuid, Arc<CaCertificate>>,
}

/// Each balanced service's round-robin position, kept across snapshots (and mirror reloads) so
/// that a configuration change — this node's own echoed back by the cluster bus included — does
/// not restart the rotation.
type Rotations = HashMap<Uuid, Arc<Rotation>>;

/// What a service's upstream TLS settings were built from: the certificate rows (a changed row
/// is a new `Arc`; the key holds them, so their addresses cannot be reused meanwhile) and
/// `tls_verify`.
#[derive(Clone)]
struct TlsKey {
    client: Option<Option<Arc<Certificate>>>,
    cas: Option<Vec<Option<Arc<CaCertificate>>>>,
    verify: bool,
}

impl TlsKey {
    /// Built from the very same rows.
    fn same(&self, other: &Self) -> bool {
        fn same_row<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        let client = match (&self.client, &other.client) {
            (Some(a), Some(b)) => same_row(a, b),
            (None, None) => true,
            _ => false,
        };
        let cas = match (&self.cas, &other.cas) {
            (Some(a), Some(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_row(x, y))
            }
            (None, None) => true,
            _ => false,
        };
        client && cas && self.verify == other.verify
    }
}

/// The actor.
pub struct ConfigRegistry {
    store: Arc<dyn ConfigStore>,
    tokens: Arc<dyn TokenStore>,
    plugins: Arc<PluginRegistry>,
    snapshot: Arc<ArcSwap<RouterSnapshot>>,
    sni: Arc<ArcSwap<SniIndex>>,
    upstream_tls: HashMap<Uuid, (TlsKey, Arc<UpstreamTls>)>,
    mirror: Mirror,
    rotations: Rotations,
    /// The targets' health, kept across snapshots.
    health: Arc<HealthBook>,
    /// The running active checkers, by upstream, with the configuration each was started for.
    checkers: HashMap<Uuid, (String, Addr<HealthChecker>)>,
    /// The resolver of target host names, until the refresher that uses it starts.
    resolver: Option<hickory_resolver::TokioResolver>,
    /// Keeps the target host names resolved (none without a resolver: names are then
    /// connected to as written).
    refresher: Option<Addr<DnsRefresher>>,
    /// What the target host names resolved to, as the refresher last said.
    dns: AddressBook,
    /// The names the refresher was last asked to watch.
    watched: HashSet<Arc<str>>,
    version: u64,
}

impl ConfigRegistry {
    /// A registry publishing into `snapshot`.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        tokens: Arc<dyn TokenStore>,
        plugins: Arc<PluginRegistry>,
        snapshot: Arc<ArcSwap<RouterSnapshot>>,
    ) -> Self {
        Self {
            store,
            tokens,
            plugins,
            snapshot,
            sni: Arc::new(ArcSwap::from_pointee(SniIndex::default())),
            upstream_tls: HashMap::new(),
            mirror: Mirror::default(),
            rotations: Rotations::default(),
            health: Arc::default(),
            checkers: HashMap::new(),
            resolver: None,
            refresher: None,
            dns: AddressBook::new(),
            watched: HashSet::new(),
            version: 0,
        }
    }

    /// Resolves the host names of upstream targets with `resolver`, in the background (see
    /// [`DnsRefresher`]).
    #[must_use]
    pub fn resolving_with(mut self, resolver: hickory_resolver::TokioResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Asks the refresher to watch the host names of the targets (weight 0 too: the health
    /// endpoint lists every target's addresses, as Kong's) and of the services not balanced
    /// over an upstream, and forgets the answers of the others.
    fn watch_names(&mut self) {
        let Some(refresher) = &self.refresher else {
            return;
        };
        let upstreams: HashSet<&str> = self
            .mirror
            .upstreams
            .values()
            .map(|u| u.name.as_str())
            .collect();
        let services = self
            .mirror
            .services
            .values()
            .filter(|s| !upstreams.contains(s.host.as_str()))
            .filter_map(|s| Address::parse(&s.host).ok());
        let names: HashSet<Arc<str>> = self
            .mirror
            .targets
            .values()
            .filter_map(|t| t.address().ok())
            .chain(services)
            .filter(|a| a.kind == AddressKind::Name)
            .map(|a| Arc::from(a.host.to_ascii_lowercase()))
            .collect();
        if names != self.watched {
            self.dns.retain(|name, _| names.contains(name));
            refresher.do_send(Watch(names.clone()));
            self.watched = names;
        }
    }

    /// Publishes the certificates of the configured SNIs into `sni` too (the proxy's TLS
    /// listeners read it on every handshake).
    #[must_use]
    pub fn serving_sni(mut self, sni: Arc<ArcSwap<SniIndex>>) -> Self {
        self.sni = sni;
        self
    }

    fn upsert(&mut self, entity: &str, doc: &Document) {
        let value = Value::Object(doc.clone());
        let result: Result<(), String> = (|| {
            match entity {
                "services" => {
                    let s: Service = serde_json::from_value(value).map_err(|e| e.to_string())?;
                    self.mirror.services.insert(s.id, Arc::new(s));
                }
                "routes" => {
                    let r: Route = serde_json::from_value(value).map_err(|e| e.to_string())?;
                    let id = r.id;
                    self.mirror
                        .routes
                        .insert(id, Arc::new(CompiledRoute::compile(r)?));
                }
                "consumers" => {
                    let c: Consumer = serde_json::from_value(value).map_err(|e| e.to_string())?;
                    self.mirror.consumers.insert(c.id, Arc::new(c));
                }
                "plugins" => {
                    let id = portcullis_stores::memory::doc_id(doc).map_err(|e| e.to_string())?;
                    if self
                        .mirror
                        .plugins
                        .get(&id)
                        .is_some_and(|old| old.doc == *doc)
                    {
                        return Ok(());
                    }
                    let p: PluginInstance =
                        serde_json::from_value(value).map_err(|e| e.to_string())?;
                    let runtime = match self.plugins.get(&p.name) {
                        Some(kind) => match kind.compile(&p) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                tracing::error!(plugin = %p.name, id = %p.id, error = %e, "plugin config cannot run");
                                None
                            }
                        },
                        None => None,
                    };
                    self.mirror.plugins.insert(
                        p.id,
                        Plugged {
                            doc: doc.clone(),
                            instance: p,
                            runtime,
                        },
                    );
                }
                "oauth2_credentials" => {
                    let c = OAuthCredential::from_doc(doc)?;
                    self.mirror.credentials.insert(c.id, Arc::new(c));
                }
                "keyauth_credentials" => {
                    let c = KeyAuthCredential::from_doc(doc)?;
                    self.mirror.keyauth.insert(c.id, Arc::new(c));
                }
                "acls" => {
                    let m = AclMembership::from_doc(doc)?;
                    self.mirror.acls.insert(m.id, Arc::new(m));
                }
                "upstreams" => {
                    let u: Upstream = serde_json::from_value(value).map_err(|e| e.to_string())?;
                    self.mirror.upstreams.insert(u.id, Arc::new(u));
                }
                "targets" => {
                    let t: Target = serde_json::from_value(value).map_err(|e| e.to_string())?;
                    self.mirror.targets.insert(t.id, Arc::new(t));
                }
                "certificates" => {
                    let c = Certificate::from_doc(doc)?;
                    self.mirror.certificates.insert(c.id, Arc::new(c));
                }
                "snis" => {
                    let n = Sni::from_doc(doc)?;
                    self.mirror.snis.insert(n.id, Arc::new(n));
                }
                "ca_certificates" => {
                    let c = CaCertificate::from_doc(doc)?;
                    self.mirror.ca_certificates.insert(c.id, Arc::new(c));
                }
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(entity, error = %e, "stored document does not match its schema; skipped");
        }
    }

    fn remove(&mut self, entity: &str, id: Uuid) {
        match entity {
            "services" => drop(self.mirror.services.remove(&id)),
            "routes" => drop(self.mirror.routes.remove(&id)),
            "consumers" => drop(self.mirror.consumers.remove(&id)),
            "plugins" => drop(self.mirror.plugins.remove(&id)),
            "oauth2_credentials" => drop(self.mirror.credentials.remove(&id)),
            "keyauth_credentials" => drop(self.mirror.keyauth.remove(&id)),
            "acls" => drop(self.mirror.acls.remove(&id)),
            "upstreams" => drop(self.mirror.upstreams.remove(&id)),
            "targets" => drop(self.mirror.targets.remove(&id)),
            "certificates" => drop(self.mirror.certificates.remove(&id)),
            "snis" => drop(self.mirror.snis.remove(&id)),
            "ca_certificates" => drop(self.mirror.ca_certificates.remove(&id)),
            _ => {}
        }
    }

    fn chains(&self) -> HashMap<Uuid, Arc<PluginChain>> {
        let active = self.active_plugins();
        self.mirror
            .routes
            .values()
            .map(|route| {
                let rid = route.route.id;
                let sid = route.route.service.map(|s| s.id);
                (rid, Arc::new(chain_of(&active, Some(rid), sid)))
            })
            .collect()
    }

    /// The global plugins alone: what runs (its log phase) for a request no route matched.
    fn global_chain(&self) -> Arc<PluginChain> {
        Arc::new(chain_of(&self.active_plugins(), None, None))
    }

    fn active_plugins(&self) -> Vec<(&PluginInstance, &Arc<dyn PluginRuntime>)> {
        self.mirror
            .plugins
            .values()
            .filter(|p| p.instance.enabled)
            .filter_map(|p| p.runtime.as_ref().map(|r| (&p.instance, r)))
            .collect()
    }

    /// One probe per address of each of `targets` (as their names last resolved; a name that
    /// failed has none), each with its address's health cell.
    fn probes_of(&self, upstream: &Upstream, targets: &[&Target]) -> Vec<Probe> {
        let mut probes = Vec::new();
        for t in targets {
            let Some((address, places)) = places_of(t, &self.dns) else {
                continue;
            };
            for (reached, port) in places {
                let host = reached.host;
                let at = address_key(&host, port);
                // The name the proxy sends as `Host` (an SRV record's under `use_srv_name`).
                let name = match &reached.srv_name {
                    Some(srv) if upstream.use_srv_name => srv.to_string(),
                    _ => address.host.clone(),
                };
                probes.push(Probe {
                    target: t.target.clone(),
                    health: self.health.of(upstream.id, &t.target, &at),
                    address: at,
                    host_header: upstream
                        .host_header
                        .clone()
                        .unwrap_or_else(|| format!("{name}:{port}")),
                    server_name: name,
                    host,
                    port,
                });
            }
        }
        probes
    }

    /// Starts an active checker for each upstream whose checks have an interval, and stops
    /// those whose upstream, checks, targets or their addresses changed.
    fn run_checkers(&mut self) {
        let mut wanted: HashMap<Uuid, (String, HealthChecker)> = HashMap::new();
        for upstream in self.mirror.upstreams.values() {
            let active = &upstream.healthchecks.active;
            if active.healthy.interval <= 0.0 && active.unhealthy.interval <= 0.0 {
                continue;
            }
            let mut targets: Vec<&Target> = self
                .mirror
                .targets
                .values()
                .filter(|t| t.upstream.id == upstream.id && t.weight > 0)
                .map(|t| &**t)
                .collect();
            targets.sort_by(|a, b| a.target.cmp(&b.target));
            let probes = self.probes_of(upstream, &targets);
            // The addresses as well: a name's new answer restarts the checker with them.
            let fingerprint = format!(
                "{:?}|{:?}|{}",
                upstream.healthchecks,
                upstream.host_header,
                probes
                    .iter()
                    .map(|p| format!("{}@{}", p.target, p.address))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if self
                .checkers
                .get(&upstream.id)
                .is_some_and(|(running, _)| *running == fingerprint)
            {
                continue;
            }
            wanted.insert(
                upstream.id,
                (
                    fingerprint,
                    HealthChecker::new(upstream.name.clone(), active.clone(), probes),
                ),
            );
        }
        self.checkers.retain(|id, (fingerprint, addr)| {
            let keep = !wanted.contains_key(id)
                && self.mirror.upstreams.get(id).is_some_and(|u| {
                    u.healthchecks.active.healthy.interval > 0.0
                        || u.healthchecks.active.unhealthy.interval > 0.0
                });
            if !keep {
                tracing::debug!(upstream = %id, %fingerprint, "active health checker stopped");
                addr.do_send(Stop);
            }
            keep
        });
        for (id, (fingerprint, checker)) in wanted {
            self.checkers.insert(id, (fingerprint, checker.start()));
        }
    }

    /// Rebuilds the upstream TLS settings of the services whose own settings (or certificate
    /// rows) changed; the others keep theirs, and with them their pooled connections.
    fn refresh_upstream_tls(&mut self) {
        let mirror = &self.mirror;
        let mut next = HashMap::new();
        for service in mirror.services.values() {
            let verify = service.tls_verify == Some(true);
            let cas = service
                .ca_certificates
                .as_deref()
                .filter(|c| !c.is_empty() && verify);
            if service.client_certificate.is_none() && cas.is_none() {
                continue;
            }
            let client = service
                .client_certificate
                .map(|c| mirror.certificates.get(&c.id).cloned());
            let ca_rows: Option<Vec<Option<Arc<CaCertificate>>>> = cas.map(|ids| {
                ids.iter()
                    .map(|id| mirror.ca_certificates.get(id).cloned())
                    .collect()
            });
            let key = TlsKey {
                client: client.clone(),
                cas: ca_rows.clone(),
                verify,
            };
            if let Some((old_key, tls)) = self.upstream_tls.get(&service.id) {
                if old_key.same(&key) {
                    next.insert(service.id, (key, tls.clone()));
                    continue;
                }
            }
            if client.as_ref().is_some_and(Option::is_none)
                || ca_rows
                    .as_ref()
                    .is_some_and(|r| r.iter().any(Option::is_none))
            {
                // Kong answers 500 for such a service; here its upstream TLS fails (502).
                tracing::error!(service = %service.id, "a certificate the service names does not exist");
            }
            let client = client.flatten().map(|c| c.key.clone());
            let ders: Option<Vec<_>> =
                ca_rows.map(|rows| rows.into_iter().flatten().map(|r| r.der.clone()).collect());
            match UpstreamTls::new(client, ders.as_deref(), verify) {
                Ok(tls) => {
                    next.insert(service.id, (key, Arc::new(tls)));
                }
                Err(e) => {
                    tracing::error!(service = %service.id, error = %e, "cannot build the service's upstream TLS settings; its upstream is trusted by nothing");
                    // Fail closed: never fall back to the default (unverified) client.
                    if let Ok(tls) = UpstreamTls::new(None, Some(&[]), true) {
                        next.insert(service.id, (key, Arc::new(tls)));
                    }
                }
            }
        }
        self.upstream_tls = next;
    }

    fn publish(&mut self) {
        self.version += 1;
        self.refresh_upstream_tls();
        let upstream_tls: HashMap<Uuid, Arc<UpstreamTls>> = self
            .upstream_tls
            .iter()
            .map(|(id, (_, tls))| (*id, tls.clone()))
            .collect();
        let services = &self.mirror.services;
        self.rotations.retain(|id, _| services.contains_key(id));
        for id in services.keys() {
            self.rotations.entry(*id).or_default();
        }
        self.run_checkers();
        let mut live: HashMap<Uuid, HashSet<(String, String)>> = self
            .mirror
            .upstreams
            .keys()
            .map(|id| (*id, HashSet::new()))
            .collect();
        for target in self.mirror.targets.values() {
            let (Some(list), Some((_, places))) = (
                live.get_mut(&target.upstream.id),
                places_of(target, &self.dns),
            ) else {
                continue;
            };
            for (reached, port) in places {
                list.insert((target.target.clone(), address_key(&reached.host, port)));
            }
        }
        self.health.retain(&live);
        self.watch_names();
        let parts = SnapshotParts {
            routes: self.mirror.routes.values().cloned().collect(),
            services: &self.mirror.services,
            chains: self.chains(),
            global: self.global_chain(),
            identities: IdentityParts {
                consumers: self.mirror.consumers.values().cloned().collect(),
                oauth2: self.mirror.credentials.values().cloned().collect(),
                keyauth: self.mirror.keyauth.values().cloned().collect(),
                acls: self.mirror.acls.values().cloned().collect(),
            },
            upstreams: &self.mirror.upstreams,
            targets: &self.mirror.targets,
            rotations: &self.rotations,
            health: &self.health,
            dns: &self.dns,
            upstream_tls: &upstream_tls,
            version: self.version,
        };
        let mut snapshot = RouterSnapshot::build(parts);
        if self
            .active_plugins()
            .iter()
            .any(|(instance, _)| crate::plugins::prometheus::exports_upstream_health(instance))
        {
            snapshot.upstream_health = Some(Arc::from(reported_targets(
                &self.mirror.upstreams,
                &self.mirror.targets,
                &self.health,
                &self.dns,
            )));
        }
        self.snapshot.store(Arc::new(snapshot));
        self.sni.store(Arc::new(self.sni_index()));
    }

    /// The served certificate of every SNI whose certificate is loaded.
    fn sni_index(&self) -> SniIndex {
        let certificates = &self.mirror.certificates;
        SniIndex::new(self.mirror.snis.values().filter_map(|sni| {
            certificates.get(&sni.certificate).map(|c| {
                let served = Served {
                    main: c.key.clone(),
                    alt: c.alt.clone(),
                };
                (sni.name.clone(), served)
            })
        }))
    }

    fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Upsert(entity, doc) => self.upsert(entity, doc),
                Change::Delete(rows) => {
                    for (entity, id) in rows {
                        self.remove(entity, *id);
                    }
                }
            }
        }
        self.publish();
    }
}

impl Actor for ConfigRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Writes queue here while a slow store answers; the admin handlers bound their wait.
        ctx.set_mailbox_capacity(1024);
        if let Some(resolver) = self.resolver.take() {
            let registry = ctx.address().recipient();
            self.refresher = Some(DnsRefresher::new(resolver, registry).start());
        }
    }
}

impl Handler<Resolved> for ConfigRegistry {
    type Result = ();

    fn handle(&mut self, msg: Resolved, _ctx: &mut Self::Context) {
        if self.watched.contains(&msg.name) {
            self.dns.insert(msg.name, msg.resolution);
            self.publish();
        }
    }
}

/// The row's id when the stored row is still `expected`; [`RegistryError::Changed`] otherwise.
async fn unchanged(
    store: &dyn ConfigStore,
    def: &'static EntityDef,
    expected: &Document,
) -> Result<Uuid, RegistryError> {
    let id = portcullis_stores::memory::doc_id(expected)?;
    match store.get(def, id).await? {
        Some(current) if current == *expected => Ok(id),
        _ => Err(RegistryError::Changed),
    }
}

impl Handler<Insert> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<Document, RegistryError>>;

    fn handle(&mut self, msg: Insert, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let Insert { def, doc } = msg;
        let fut = async move { store.insert(def, doc).await };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<Document, StoreError>, act, _| {
                let stored = res?;
                act.apply(&[Change::Upsert(def.name, stored.clone())]);
                Ok(stored)
            },
        )))
    }
}

impl Handler<Update> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<Document, RegistryError>>;

    fn handle(&mut self, msg: Update, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let Update { def, doc, expected } = msg;
        let fut = async move {
            unchanged(store.as_ref(), def, &expected).await?;
            Ok(store.update(def, doc).await?)
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<Document, RegistryError>, act, _| {
                let stored = res?;
                act.apply(&[Change::Upsert(def.name, stored.clone())]);
                Ok(stored)
            },
        )))
    }
}

impl Handler<Delete> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<Vec<(&'static str, Uuid)>, RegistryError>>;

    fn handle(&mut self, msg: Delete, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let tokens = self.tokens.clone();
        let Delete { def, expected } = msg;
        let fut = async move {
            let id = unchanged(store.as_ref(), def, &expected).await?;
            let removed = store.delete(def, id).await?;
            // Committed: from here on the snapshot is published whatever the token store says.
            let owners = Owners::of(&removed);
            let cascade = owners.cascade(tokens.as_ref()).await;
            Ok::<_, RegistryError>((removed, owners, cascade))
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |res: Result<_, RegistryError>, act, ctx| {
                let (removed, owners, cascade) = res?;
                act.apply(&[Change::Delete(removed.clone())]);
                match cascade {
                    Ok(()) => Ok(removed),
                    Err(e) => {
                        ctx.notify_later(
                            RetryCascade { owners, attempt: 1 },
                            Duration::from_secs(1),
                        );
                        Err(RegistryError::TokensKept(e))
                    }
                }
            },
        )))
    }
}

impl Handler<RetryCascade> for ConfigRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: RetryCascade, _ctx: &mut Self::Context) -> Self::Result {
        let tokens = self.tokens.clone();
        let RetryCascade { owners, attempt } = msg;
        let fut = async move {
            let result = owners.cascade(tokens.as_ref()).await;
            (owners, result)
        };
        Box::pin(fut.into_actor(self).map(move |(owners, result), _, ctx| {
            let Err(e) = result else {
                tracing::info!(attempt, "tokens of deleted credentials and services removed");
                return;
            };
            if attempt < CASCADE_RETRIES {
                tracing::warn!(error = %e, attempt, "cannot remove the tokens of deleted credentials and services yet; retrying");
                let next = RetryCascade { owners, attempt: attempt + 1 };
                ctx.notify_later(next, Duration::from_secs(1 << attempt));
            } else {
                tracing::error!(error = %e, credentials = ?owners.credentials, services = ?owners.services,
                    "gave up removing the tokens of deleted credentials and services; they stay refused (their owner is gone) and the expiry sweep removes those that expire");
            }
        }))
    }
}

/// Equal rows but for when they were written.
fn same_but_timestamps(a: &Document, b: &Document) -> bool {
    let strip = |d: &Document| {
        let mut d = d.clone();
        d.remove("created_at");
        d.remove("updated_at");
        d
    };
    strip(a) == strip(b)
}

impl Handler<ReplaceAll> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<(), RegistryError>>;

    fn handle(&mut self, msg: ReplaceAll, _ctx: &mut Self::Context) -> Self::Result {
        let ReplaceAll { target, next } = msg;
        let mut removed = Vec::new();
        let mut upserts = Vec::new();
        for def in defs::ALL {
            let mut running: HashMap<Uuid, Document> = target
                .documents(def)
                .into_iter()
                .filter_map(|d| Some((portcullis_stores::memory::doc_id(&d).ok()?, d)))
                .collect();
            for mut doc in next.documents(def) {
                let Ok(id) = portcullis_stores::memory::doc_id(&doc) else {
                    continue;
                };
                // A row the new configuration repeats keeps the running one (its timestamps):
                // its plugin runtime, and the counters and queues it holds, carry on.
                if let Some(old) = running.remove(&id) {
                    if same_but_timestamps(&old, &doc) {
                        next.replace_document(def, id, old.clone());
                        doc = old;
                    }
                }
                upserts.push(Change::Upsert(def.name, doc));
            }
            removed.extend(running.into_keys().map(|id| (def.name, id)));
        }
        // No await between the swap and the publication: the admin API's reads and the proxy's
        // snapshot move to the new configuration together.
        target.replace_with(next);
        let mut changes = vec![Change::Delete(removed.clone())];
        changes.extend(upserts);
        self.apply(&changes);
        let owners = Owners::of(&removed);
        let tokens = self.tokens.clone();
        let fut = async move {
            owners
                .cascade(tokens.as_ref())
                .await
                .map_err(|e| (owners, e))
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |res: Result<(), (Owners, StoreError)>, _act, ctx| match res {
                Ok(()) => Ok(()),
                Err((owners, e)) => {
                    ctx.notify_later(RetryCascade { owners, attempt: 1 }, Duration::from_secs(1));
                    Err(RegistryError::TokensKept(e))
                }
            },
        )))
    }
}

impl Handler<Reload> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<(), StoreError>>;

    fn handle(&mut self, _msg: Reload, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let fut = async move {
            let mut all = Vec::new();
            for def in defs::ALL {
                for doc in store.all(def).await? {
                    all.push(Change::Upsert(def.name, doc));
                }
            }
            Ok(all)
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |res: Result<Vec<Change>, StoreError>, act, _| {
                let changes = res?;
                act.mirror = Mirror::default();
                act.apply(&changes);
                Ok(())
            },
        )))
    }
}

impl Handler<Refresh> for ConfigRegistry {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Refresh, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let fut = async move {
            let mut changes = Vec::new();
            for (entity, id) in msg.0 {
                let Some(def) = defs::by_name(entity) else {
                    continue;
                };
                match store.get(def, id).await {
                    Ok(Some(doc)) => changes.push(Change::Upsert(def.name, doc)),
                    Ok(None) => changes.push(Change::Delete(vec![(def.name, id)])),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot refresh a changed row; keeping the old one")
                    }
                }
            }
            changes
        };
        AtomicResponse::new(Box::pin(
            fut.into_actor(self)
                .map(|changes, act, _| act.apply(&changes)),
        ))
    }
}

/// The chain of a route (`rid`) of a service (`sid`): each plugin name's most specific instance,
/// by Kong's precedence, highest priority first. Without a route and a service, the global
/// plugins alone.
fn chain_of(
    active: &[(&PluginInstance, &Arc<dyn PluginRuntime>)],
    rid: Option<Uuid>,
    sid: Option<Uuid>,
) -> PluginChain {
    // Kong's precedence, most specific first (consumer-less and consumer-scoped lists).
    let rank = |p: &PluginInstance| -> Option<(bool, u8)> {
        let r = p.route.map(|x| x.id);
        let s = p.service.map(|x| x.id);
        if r.is_some() && r != rid || s.is_some() && s != sid {
            return None;
        }
        let c = p.consumer.is_some();
        Some(match (r.is_some(), s.is_some()) {
            (true, true) => (c, 0),
            (true, false) => (c, 1),
            (false, true) => (c, 2),
            (false, false) => (c, 3),
        })
    };
    let mut by_name: BTreeMap<&str, NameSlot> = BTreeMap::new();
    for (inst, runtime) in active {
        let Some((consumer_scoped, level)) = rank(inst) else {
            continue;
        };
        let scoped = ScopedRuntime {
            runtime: (*runtime).clone(),
            http: inst.protocols.iter().any(|p| p == "http" || p == "grpc"),
            https: inst.protocols.iter().any(|p| p == "https" || p == "grpcs"),
        };
        let slot = by_name.entry(inst.name.as_str()).or_default();
        if consumer_scoped {
            let Some(c) = inst.consumer.map(|c| c.id) else {
                continue;
            };
            let better = slot.1.get(&c).is_none_or(|(l, _)| level < *l);
            if better {
                slot.1.insert(c, (level, scoped));
            }
        } else if slot.0.as_ref().is_none_or(|(l, _)| level < *l) {
            slot.0 = Some((level, scoped));
        }
    }
    let mut entries: Vec<ChainEntry> = by_name
        .into_values()
        .map(|(default, by_consumer)| ChainEntry {
            default: default.map(|(_, s)| s),
            by_consumer: by_consumer.into_iter().map(|(c, (_, s))| (c, s)).collect(),
        })
        .collect();
    let priority = |e: &ChainEntry| {
        e.default
            .as_ref()
            .or_else(|| e.by_consumer.values().next())
            .map(|s| s.runtime.priority())
            .unwrap_or_default()
    };
    entries.sort_by_key(|e| std::cmp::Reverse(priority(e)));
    PluginChain::new(entries)
}

/// A target's address and each place it reaches as its name last resolved (none when the name
/// failed), with the port it is reached on: an SRV record's, else the target's.
fn places_of(target: &Target, dns: &AddressBook) -> Option<(Address, Vec<(Reached, u16)>)> {
    let address = target.address().ok()?;
    let port = address
        .port
        .unwrap_or(crate::entities::upstreams::DEFAULT_TARGET_PORT);
    let places = hosts_of(&address, dns)
        .unwrap_or_default()
        .into_iter()
        .map(|reached| {
            let at = reached.port.unwrap_or(port);
            (reached, at)
        })
        .collect();
    Some((address, places))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix::Actor;
    use arc_swap::ArcSwap;
    use portcullis_stores::memory::{MemoryConfigStore, MemoryTokenStore};
    use portcullis_stores::model::entities as defs;
    use portcullis_stores::{ConfigStore, Document};
    use serde_json::json;
    use uuid::Uuid;

    use super::{ConfigRegistry, Delete, Insert, Update};
    use crate::error::RegistryError;
    use crate::plugins::introspection::IntrospectionCache;
    use crate::plugins::oauth2::OAuthDeps;
    use crate::plugins::PluginRegistry;
    use crate::router::RouterSnapshot;

    fn consumer(id: Uuid, username: &str) -> Document {
        let doc = json!({"id": id, "username": username, "custom_id": null, "created_at": 1});
        doc.as_object().cloned().unwrap_or_default()
    }

    /// A write whose row changed since the caller read it changes nothing (store and snapshot),
    /// so the caller's re-read sees the other write instead of overwriting it.
    #[actix_web::test]
    async fn writes_on_a_row_changed_since_it_was_read_change_nothing() {
        let store = Arc::new(MemoryConfigStore::new());
        let tokens = Arc::new(MemoryTokenStore::new());
        let plugins = Arc::new(PluginRegistry::builtin(
            OAuthDeps::in_memory(tokens.clone()),
            IntrospectionCache::default(),
            crate::plugins::rate_limiting::RateLimitDeps::default(),
        ));
        let snapshot = Arc::new(ArcSwap::from_pointee(RouterSnapshot::default()));
        let registry =
            ConfigRegistry::new(store.clone(), tokens, plugins, snapshot.clone()).start();
        let def = &defs::CONSUMERS;
        let id = Uuid::new_v4();
        let read = registry
            .send(Insert {
                def,
                doc: consumer(id, "a"),
            })
            .await
            .unwrap()
            .unwrap();
        let first = Update {
            def,
            doc: consumer(id, "b"),
            expected: read.clone(),
        };
        registry.send(first).await.unwrap().unwrap();

        let stale = Update {
            def,
            doc: consumer(id, "c"),
            expected: read.clone(),
        };
        let updated = registry.send(stale).await.unwrap();
        let deleted = registry
            .send(Delete {
                def,
                expected: read,
            })
            .await
            .unwrap();

        assert!(
            matches!(updated, Err(RegistryError::Changed)),
            "{updated:?}"
        );
        assert!(
            matches!(deleted, Err(RegistryError::Changed)),
            "{deleted:?}"
        );
        let stored = store.get(def, id).await.unwrap().unwrap();
        assert_eq!(stored["username"], "b");
        let published = snapshot.load();
        assert_eq!(
            published.identities.consumers[&id].username.as_deref(),
            Some("b")
        );
    }
}
