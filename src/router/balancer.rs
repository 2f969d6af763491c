//! Where a service's requests go: its own `host:port`, or — when its `host` names an upstream —
//! one of the upstream's targets, chosen by weighted round-robin (Kong's default algorithm).
//!
//! Everything is compiled into the router snapshot when the configuration changes: the targets'
//! origins and a wheel of target positions in which each target appears as often as its weight
//! (interleaved, nginx's smooth weighted round-robin), so a request only bumps one atomic counter
//! and indexes the wheel. The proxy takes a [`Peers`] cursor per request and asks it for a peer
//! once per attempt: attempt 0 is the wheel's choice, each retry the next target after it, so a
//! connect failure is retried on another target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use uuid::Uuid;

use super::UpstreamOrigin;
use crate::entities::upstreams::{AddressKind, Target, Upstream};
use crate::entities::Service;

/// Largest wheel built; weights whose reduced sum is larger are scaled down to it (each usable
/// target keeps at least one slot).
const MAX_WHEEL: u64 = 10_000;

/// Kong's answer when no target can take the request.
pub const NO_PEER: &str = "failure to get a peer from the ring-balancer";

/// Where a routed service's requests go.
pub enum Destinations {
    /// The service's own host and port.
    Fixed(UpstreamOrigin),
    /// The targets of the upstream its host names.
    Balanced(Balancer),
}

/// The round-robin state of one service over its upstream's targets.
pub struct Balancer {
    /// One origin per target with a weight above 0.
    origins: Vec<UpstreamOrigin>,
    /// Positions in `origins`, each as often as its (reduced) weight, interleaved.
    wheel: Vec<u32>,
    /// Requests started so far (the rotation).
    next: AtomicUsize,
}

/// One request's view of its service's destinations: which wheel slot it drew.
#[derive(Clone, Copy)]
pub struct Peers<'a> {
    destinations: &'a Destinations,
    ticket: usize,
}

impl Destinations {
    /// The destinations of `service`: balanced when an upstream of `upstreams` (by name) has its
    /// host as name.
    pub fn of(service: &Service, upstreams: &UpstreamIndex<'_>) -> Self {
        match upstreams.get(service.host.as_str()) {
            Some((upstream, targets)) => {
                Self::Balanced(Balancer::build(service, upstream, targets))
            }
            None => Self::Fixed(UpstreamOrigin::of(service)),
        }
    }

    /// A cursor for one request (draws its wheel slot).
    pub fn peers(&self) -> Peers<'_> {
        let ticket = match self {
            Self::Fixed(_) => 0,
            Self::Balanced(b) => b.next.fetch_add(1, Ordering::Relaxed),
        };
        Peers {
            destinations: self,
            ticket,
        }
    }
}

impl<'a> Peers<'a> {
    /// The origin for attempt `attempt` (0 first, then each retry): `None` when the upstream has
    /// no target that takes traffic.
    pub fn pick(&self, attempt: u32) -> Option<&'a UpstreamOrigin> {
        match self.destinations {
            Destinations::Fixed(origin) => Some(origin),
            Destinations::Balanced(b) => b.pick(self.ticket, attempt),
        }
    }
}

/// Upstreams by name, each with its targets.
pub type UpstreamIndex<'a> = HashMap<&'a str, (&'a Upstream, Vec<&'a Target>)>;

/// Indexes upstreams by name with their targets (in `host:port` order, so every node builds the
/// same wheel).
pub fn index<'a>(
    upstreams: &'a HashMap<Uuid, std::sync::Arc<Upstream>>,
    targets: &'a HashMap<Uuid, std::sync::Arc<Target>>,
) -> UpstreamIndex<'a> {
    let mut by_id: HashMap<Uuid, Vec<&Target>> = HashMap::new();
    for t in targets.values() {
        by_id.entry(t.upstream.id).or_default().push(t);
    }
    upstreams
        .values()
        .map(|u| {
            let mut list = by_id.remove(&u.id).unwrap_or_default();
            list.sort_by(|a, b| a.target.cmp(&b.target));
            (u.name.as_str(), (&**u, list))
        })
        .collect()
}

impl Balancer {
    /// Compiles the targets of `upstream` for `service` (whose protocol and timeouts apply).
    pub fn build(service: &Service, upstream: &Upstream, targets: &[&Target]) -> Self {
        let mut origins = Vec::new();
        let mut weights = Vec::new();
        for target in targets.iter().filter(|t| t.weight > 0) {
            let Ok(address) = target.address() else {
                tracing::error!(target = %target.target, "stored target does not parse; skipped");
                continue;
            };
            let port = address
                .port
                .unwrap_or(crate::entities::upstreams::DEFAULT_TARGET_PORT);
            let url_host = match address.kind {
                AddressKind::Ipv6 => format!("[{}]", address.host),
                _ => address.host.clone(),
            };
            let host_name = upstream.host_header.as_deref().unwrap_or(&url_host);
            origins.push(UpstreamOrigin::new(
                &service.protocol,
                &address.host,
                &url_host,
                host_name,
                port,
            ));
            weights.push(u64::from(target.weight));
        }
        Self {
            wheel: wheel(&weights),
            origins,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self, ticket: usize, attempt: u32) -> Option<&UpstreamOrigin> {
        let slot = *self.wheel.get(ticket % self.wheel.len().max(1))?;
        let first = usize::try_from(slot).ok()?;
        let step = usize::try_from(attempt).ok()?;
        self.origins.get((first + step) % self.origins.len())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The smooth weighted round-robin sequence of `weights` (all above 0): position `i` appears
/// `weights[i] / gcd` times, spread out rather than in runs.
fn wheel(weights: &[u64]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let mut total: u64 = reduced.iter().sum();
    if total > MAX_WHEEL {
        for w in &mut reduced {
            *w = (*w * MAX_WHEEL / total).max(1);
        }
        total = reduced.iter().sum();
    }
    let signed = |w: u64| i64::try_from(w).unwrap_or(i64::MAX);
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += signed(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= signed(total);
        out.push(u32::try_from(best).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wheel;

    #[test]
    fn the_wheel_holds_each_target_as_often_as_its_weight_interleaved() {
        let w = wheel(&[300, 100, 200]);
        assert_eq!(w.len(), 6);
        let count = |i: u32| w.iter().filter(|x| **x == i).count();
        assert_eq!((count(0), count(1), count(2)), (3, 1, 2));
        // Smooth: the heaviest target never takes three slots in a row.
        assert!(!w.windows(3).any(|s| s.iter().all(|x| *x == 0)), "{w:?}");
        assert_eq!(wheel(&[]), Vec::<u32>::new());
        let big = wheel(&[65535, 1]);
        assert!(big.len() <= 10_001 && big.contains(&1), "{}", big.len());
    }
}
