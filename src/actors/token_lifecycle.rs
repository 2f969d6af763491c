//! The token lifecycle actor: purges expired tokens, codes and replay tombstones in bounded
//! batches (Kong never cleans them up: Kong/kong#3135), off the request path.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use portcullis_stores::TokenStore;

/// Rows removed per sweep step; a sweep repeats steps until a step removes fewer.
pub const SWEEP_BATCH: usize = 1000;

/// The actor.
pub struct TokenLifecycle {
    tokens: Arc<dyn TokenStore>,
    every: Duration,
}

impl TokenLifecycle {
    /// Sweeps `tokens` every `every`.
    pub fn new(tokens: Arc<dyn TokenStore>, every: Duration) -> Self {
        Self { tokens, every }
    }
}

/// Run one sweep now; answers how many rows were removed.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Sweep;

async fn sweep(tokens: Arc<dyn TokenStore>) -> u64 {
    let mut total = 0;
    loop {
        let now = crate::clock::now();
        match tokens.purge_expired(now, SWEEP_BATCH).await {
            Ok(n) => {
                total += n;
                if n < SWEEP_BATCH as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "token sweep failed; will retry on the next tick");
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(removed = total, "expired tokens purged");
    }
    total
}

impl Actor for TokenLifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.every, |act, ctx| {
            ctx.spawn(sweep(act.tokens.clone()).into_actor(act).map(|_, _, _| ()));
        });
    }
}

impl Handler<Sweep> for TokenLifecycle {
    type Result = ResponseFuture<u64>;

    fn handle(&mut self, _msg: Sweep, _ctx: &mut Self::Context) -> Self::Result {
        Box::pin(sweep(self.tokens.clone()))
    }
}
