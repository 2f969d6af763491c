//! The cluster sync actor: this node's end of the invalidation bus. A sibling of the token
//! lifecycle actor (which sweeps); this one owns cross-node revocation fan-out and cache
//! invalidation.
//!
//! It runs the stores crate's Postgres listener (`LISTEN` on a dedicated connection; triggers
//! notify at commit) and reacts to what it hears:
//! - token notices: the digests are evicted from this node's near cache and from Redis (every node
//!   evicts, so Redis is cleaned even when the revoking node died right after its commit);
//! - verdict notices (`DELETE /oauth2-introspection/cache/…` on any node): the digests' cached
//!   introspection verdicts are dropped from this node's L1;
//! - config notices: the registry re-reads the named rows and publishes a new router snapshot;
//! - every (re)connect: the near cache and the verdict L1 are emptied and the registry reloads
//!   everything, so a node
//!   that missed notices (restart, partition, Postgres restart) serves nothing stale afterwards.
//!
//! It counts what it hears (`portcullis_cluster_notices_total{kind}`, one per notice, this node's
//! own commits included: Postgres notifies every listening session) and every resync
//! (`portcullis_cluster_resyncs_total`).
//!
//! The listener reconnects with backoff forever; nothing here can stop the gateway.

use std::sync::Arc;

use actix::prelude::*;
use portcullis_stores::postgres::listen::{listen, ChangeEvent};
use portcullis_stores::postgres::PgSettings;
use portcullis_stores::tiered::TieredTokenStore;
use tokio::sync::mpsc;

use crate::actors::registry::{ConfigRegistry, Refresh, Reload};
use crate::metrics::{ClusterCounters, Notice};
use crate::plugins::introspection::IntrospectionCache;

/// The actor.
pub struct ClusterSync {
    pg: PgSettings,
    tokens: Arc<TieredTokenStore>,
    verdicts: IntrospectionCache,
    registry: Addr<ConfigRegistry>,
    counters: Option<ClusterCounters>,
}

impl ClusterSync {
    /// Listens on the database of `pg`; invalidates `tokens` and `verdicts`, refreshes `registry`.
    pub fn new(
        pg: PgSettings,
        tokens: Arc<TieredTokenStore>,
        verdicts: IntrospectionCache,
        registry: Addr<ConfigRegistry>,
    ) -> Self {
        Self {
            pg,
            tokens,
            verdicts,
            registry,
            counters: None,
        }
    }

    /// The actor, counting notices and resyncs into `counters`.
    #[must_use]
    pub fn counting_into(mut self, counters: ClusterCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    fn count(&self, event: &ChangeEvent) {
        let Some(counters) = &self.counters else {
            return;
        };
        match event {
            // Counted once the caches are emptied (below).
            ChangeEvent::Connected | ChangeEvent::Disconnected(_) => {}
            ChangeEvent::Tokens(hashes) => counters.heard(Notice::Tokens, hashes.len()),
            ChangeEvent::Config(rows) => counters.heard(Notice::Config, rows.len()),
            ChangeEvent::Verdicts(hashes) => counters.heard(Notice::Verdicts, hashes.len()),
        }
    }
}

impl Actor for ClusterSync {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (tx, rx) = mpsc::unbounded_channel();
        // The listener stops by itself once this actor (the receiver) is gone.
        actix::spawn(listen(self.pg.clone(), tx));
        ctx.add_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        }));
    }
}

impl StreamHandler<ChangeEvent> for ClusterSync {
    fn handle(&mut self, event: ChangeEvent, ctx: &mut Self::Context) {
        self.count(&event);
        match event {
            ChangeEvent::Connected => {
                self.tokens.clear_local();
                self.verdicts.clear_local();
                if let Some(counters) = &self.counters {
                    counters.resynced();
                }
                let registry = self.registry.clone();
                ctx.spawn(
                    async move {
                        match registry.send(Reload).await {
                            Ok(Ok(())) => tracing::debug!("configuration resynced from the database"),
                            Ok(Err(e)) => {
                                // The listener will reconnect (and resync) when the database
                                // comes back; meanwhile the last snapshot keeps serving.
                                tracing::warn!(error = %e, "cannot resync the configuration; keeping the current one")
                            }
                            Err(e) => tracing::error!(error = %e, "registry unreachable"),
                        }
                    }
                    .into_actor(self),
                );
            }
            ChangeEvent::Tokens(hashes) => {
                let tokens = self.tokens.clone();
                // Near cache first, at once; Redis after (bounded by redis_timeout).
                tokens.invalidate_local(&hashes);
                ctx.spawn(async move { tokens.invalidate(&hashes).await }.into_actor(self));
            }
            ChangeEvent::Config(rows) => self.registry.do_send(Refresh(rows)),
            ChangeEvent::Verdicts(hashes) => {
                let verdicts = self.verdicts.clone();
                ctx.spawn(
                    async move {
                        for h in &hashes {
                            verdicts.evict(h).await;
                        }
                    }
                    .into_actor(self),
                );
            }
            ChangeEvent::Disconnected(_) => {}
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("cluster listener stopped");
    }
}
