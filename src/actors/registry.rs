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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;
use portcullis_stores::model::entities as defs;
use portcullis_stores::{ConfigStore, Document, EntityDef, StoreError, TokenStore};
use serde_json::Value;
use uuid::Uuid;

use crate::entities::upstreams::{Target, Upstream};
use crate::entities::{
    AclMembership, Consumer, IdentityParts, KeyAuthCredential, OAuthCredential, PluginInstance,
    Route, Service,
};
use crate::error::RegistryError;
use crate::plugin_api::PluginRuntime;
use crate::plugins::PluginRegistry;
use crate::router::balancer::Rotation;
use crate::router::{
    ChainEntry, CompiledRoute, PluginChain, RouterSnapshot, ScopedRuntime, SnapshotParts,
};

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
}

/// Each balanced service's round-robin position, kept across snapshots (and mirror reloads) so
/// that a configuration change — this node's own echoed back by the cluster bus included — does
/// not restart the rotation.
type Rotations = HashMap<Uuid, Arc<Rotation>>;

/// The actor.
pub struct ConfigRegistry {
    store: Arc<dyn ConfigStore>,
    tokens: Arc<dyn TokenStore>,
    plugins: Arc<PluginRegistry>,
    snapshot: Arc<ArcSwap<RouterSnapshot>>,
    mirror: Mirror,
    rotations: Rotations,
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
            mirror: Mirror::default(),
            rotations: Rotations::default(),
            version: 0,
        }
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
            _ => {}
        }
    }

    fn chains(&self) -> HashMap<Uuid, Arc<PluginChain>> {
        let active: Vec<(&PluginInstance, &Arc<dyn PluginRuntime>)> = self
            .mirror
            .plugins
            .values()
            .filter(|p| p.instance.enabled)
            .filter_map(|p| p.runtime.as_ref().map(|r| (&p.instance, r)))
            .collect();
        let mut chains = HashMap::new();
        for route in self.mirror.routes.values() {
            let rid = route.route.id;
            let sid = route.route.service.map(|s| s.id);
            // Kong's precedence, most specific first (consumer-less and consumer-scoped lists).
            let rank = |p: &PluginInstance| -> Option<(bool, u8)> {
                let r = p.route.map(|x| x.id);
                let s = p.service.map(|x| x.id);
                if r.is_some() && r != Some(rid) || s.is_some() && s != sid {
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
            for (inst, runtime) in &active {
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
            chains.insert(rid, Arc::new(PluginChain { entries }));
        }
        chains
    }

    fn publish(&mut self) {
        self.version += 1;
        let services = &self.mirror.services;
        self.rotations.retain(|id, _| services.contains_key(id));
        for id in services.keys() {
            self.rotations.entry(*id).or_default();
        }
        let parts = SnapshotParts {
            routes: self.mirror.routes.values().cloned().collect(),
            services: &self.mirror.services,
            chains: self.chains(),
            identities: IdentityParts {
                consumers: self.mirror.consumers.values().cloned().collect(),
                oauth2: self.mirror.credentials.values().cloned().collect(),
                keyauth: self.mirror.keyauth.values().cloned().collect(),
                acls: self.mirror.acls.values().cloned().collect(),
            },
            upstreams: &self.mirror.upstreams,
            targets: &self.mirror.targets,
            rotations: &self.rotations,
            version: self.version,
        };
        self.snapshot.store(Arc::new(RouterSnapshot::build(parts)));
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
