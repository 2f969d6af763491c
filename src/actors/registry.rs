//! The config registry actor: the single writer of the gateway configuration.
//!
//! Admin writes arrive as closures run one at a time inside the actor (so read-merge-write
//! sequences such as PATCH are atomic on this node); each successful write updates the actor's typed
//! mirror of the configuration and publishes a new [`RouterSnapshot`]. Request handlers only load
//! the snapshot; they never wait on this mailbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;
use futures_util::future::LocalBoxFuture;
use portcullis_stores::model::entities as defs;
use portcullis_stores::{ConfigStore, Document, StoreError, TokenStore};
use serde_json::Value;
use uuid::Uuid;

use crate::entities::{Consumer, PluginInstance, Route, Service};
use crate::error::AdminError;
use crate::plugins::oauth2::OAuthCredential;
use crate::plugins::{PluginRegistry, PluginRuntime};
use crate::router::{
    ChainEntry, CompiledRoute, PluginChain, RouterSnapshot, ScopedRuntime, SnapshotParts,
};

/// A change a write made, applied to the mirror afterwards.
#[derive(Debug, Clone)]
pub enum Change {
    /// A document was inserted or replaced.
    Upsert(&'static str, Document),
    /// Documents were deleted (the entity and id of each, cascades included).
    Delete(Vec<(&'static str, Uuid)>),
}

/// What a write returns: the document to answer with, and the changes made.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Document for the response body (`None` for deletes).
    pub document: Option<Document>,
    /// Changes to apply to the mirror.
    pub changes: Vec<Change>,
}

impl WriteOutcome {
    /// A row inserted or replaced: answered with it, and mirrored.
    pub fn upserted(entity: &'static str, stored: Document) -> Self {
        Self {
            document: Some(stored.clone()),
            changes: vec![Change::Upsert(entity, stored)],
        }
    }
}

/// Stores a write may use.
#[derive(Clone)]
pub struct WriteCtx {
    /// Configuration store.
    pub store: Arc<dyn ConfigStore>,
}

type WriteFn =
    Box<dyn FnOnce(WriteCtx) -> LocalBoxFuture<'static, Result<WriteOutcome, AdminError>> + Send>;

/// Run a write inside the registry.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, AdminError>")]
pub struct Write(pub WriteFn);

/// Re-read everything from the store and republish (start-up, cluster resync).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Reload;

/// Apply changes made elsewhere (another node) after re-reading the named rows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh(pub Vec<(&'static str, Uuid)>);

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
}

/// The actor.
pub struct ConfigRegistry {
    store: Arc<dyn ConfigStore>,
    tokens: Arc<dyn TokenStore>,
    plugins: Arc<PluginRegistry>,
    snapshot: Arc<ArcSwap<RouterSnapshot>>,
    mirror: Mirror,
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
        let parts = SnapshotParts {
            routes: self.mirror.routes.values().cloned().collect(),
            services: &self.mirror.services,
            chains: self.chains(),
            consumers: self.mirror.consumers.values().cloned().collect(),
            credentials: self.mirror.credentials.values().cloned().collect(),
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

/// Deletes the tokens and codes owned by removed credentials and services.
async fn cascade_tokens(
    tokens: Arc<dyn TokenStore>,
    changes: Vec<Change>,
) -> Result<(), AdminError> {
    let mut credentials = Vec::new();
    let mut services = Vec::new();
    for change in &changes {
        if let Change::Delete(rows) = change {
            for (entity, id) in rows {
                match *entity {
                    "oauth2_credentials" => credentials.push(*id),
                    "services" => services.push(*id),
                    _ => {}
                }
            }
        }
    }
    if !credentials.is_empty() || !services.is_empty() {
        tokens.delete_owned_by(&credentials, &services).await?;
    }
    Ok(())
}

impl Handler<Write> for ConfigRegistry {
    type Result = AtomicResponse<Self, Result<WriteOutcome, AdminError>>;

    fn handle(&mut self, msg: Write, _ctx: &mut Self::Context) -> Self::Result {
        let ctx = WriteCtx {
            store: self.store.clone(),
        };
        let tokens = self.tokens.clone();
        let fut = async move {
            let outcome = (msg.0)(ctx).await?;
            cascade_tokens(tokens, outcome.changes.clone()).await?;
            Ok(outcome)
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |res: Result<WriteOutcome, AdminError>, act, _| {
                if let Ok(outcome) = &res {
                    act.apply(&outcome.changes);
                }
                res
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
