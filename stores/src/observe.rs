//! What the token stores tell an observer about their lookups by access-token digest (the token
//! check every protected request makes): which tier answered, and how long the remote tiers took.
//!
//! The gateway implements [`LookupObserver`] with pre-resolved metric handles (atomics) and hands
//! it to the stores when it opens them, so this crate needs no metrics library and never imports
//! the gateway. A store without an observer reports to [`Unobserved`], which does nothing.
//!
//! In-process tiers (the near cache, the memory store) are counted, not timed: a clock read costs
//! about as much as the lookup itself, and the answer takes well under a microsecond, below any
//! useful bucket. Redis and Postgres are timed, since their round trip is what a slow token check
//! is made of.

use std::sync::Arc;
use std::time::Duration;

/// The tier that gave a lookup its answer (found or not found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupTier {
    /// The in-process near cache of the tiered store (a positive or a negative entry).
    Near,
    /// The memory store (`database = memory` and DB-less).
    Memory,
    /// Redis had the token.
    Redis,
    /// Postgres answered.
    Postgres,
}

impl LookupTier {
    /// Every tier, in label order.
    pub const ALL: [Self; 4] = [Self::Near, Self::Memory, Self::Redis, Self::Postgres];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Near => "near",
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// A tier reached over the network, whose lookups are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteTier {
    /// The shared Redis cache.
    Redis,
    /// The durable Postgres store.
    Postgres,
}

impl RemoteTier {
    /// Every remote tier, in label order.
    pub const ALL: [Self; 2] = [Self::Redis, Self::Postgres];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// Told about every token lookup by access-token digest. Called on the request path: an
/// implementation must take no lock and allocate nothing.
pub trait LookupObserver: Send + Sync + 'static {
    /// `tier` gave the lookup its answer.
    fn answered(&self, tier: LookupTier);
    /// A call to `tier` took `took`, whatever it answered (a miss, or an error, included).
    fn waited(&self, tier: RemoteTier, took: Duration);
}

/// The observer of a store nobody watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl LookupObserver for Unobserved {
    fn answered(&self, _tier: LookupTier) {}
    fn waited(&self, _tier: RemoteTier, _took: Duration) {}
}

/// A shared [`Unobserved`], the stores' default.
pub fn unobserved() -> Arc<dyn LookupObserver> {
    Arc::new(Unobserved)
}
