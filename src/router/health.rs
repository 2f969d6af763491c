//! The health of an upstream's targets, as Kong's health checker keeps it: a target is healthy
//! until its consecutive failures reach a threshold, then unhealthy (it gets no traffic) until its
//! consecutive successes reach another. Two sources feed the counters: the proxy, which reports
//! the outcome of every request it sends to a target (passive checks, Kong's circuit breaker), and
//! the active checker (`crate::actors::health_checker`), which probes each target on an interval.
//!
//! One [`TargetHealth`] per address of a target and node (Kong keeps health per address: a
//! target whose name resolves to three addresses has three), made of atomics: the proxy reads
//! and reports without a lock, the active checker and the admin API (`…/healthy`,
//! `…/unhealthy`, `…/{address}/healthy`) write the same cells. The [`HealthBook`] keeps them across configuration changes (a new snapshot does not
//! forget which targets are down), and every snapshot carries it for the admin API to read.
//! When a `prometheus` plugin asks for `upstream_health_metrics`, the snapshot also carries the
//! list of [`ReportedTarget`]s the scrape reads (`kong_upstream_target_health`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use super::dns::{address_key, hosts_of, AddressBook};
use crate::entities::upstreams::{
    CheckType, Counters, HealthChecks, Target, Upstream, DEFAULT_TARGET_PORT,
};

/// What a request (or a probe) to a target came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status.
    Status(u16),
    /// The connection failed (refused, reset, broken mid-answer).
    TcpFailure,
    /// The target did not answer in time.
    Timeout,
}

/// The thresholds and statuses of one kind of check (active or passive), compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `tcp`: only connection failures and timeouts count; any answer is a success.
    tcp_only: bool,
    healthy_statuses: Vec<u16>,
    successes: u32,
    unhealthy_statuses: Vec<u16>,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

impl Rules {
    /// The rules of `kind` with its counters.
    pub fn new(kind: CheckType, healthy: &Counters, unhealthy: &Counters) -> Self {
        Self {
            tcp_only: kind == CheckType::Tcp,
            healthy_statuses: healthy.http_statuses.clone(),
            successes: healthy.successes,
            unhealthy_statuses: unhealthy.http_statuses.clone(),
            http_failures: unhealthy.http_failures,
            tcp_failures: unhealthy.tcp_failures,
            timeouts: unhealthy.timeouts,
        }
    }

    /// Whether any failure can make a target unhealthy (Kong's checks are off at all zeros).
    pub fn can_fail(&self) -> bool {
        self.http_failures > 0 || self.tcp_failures > 0 || self.timeouts > 0
    }
}

/// The health of one target on this node.
#[derive(Debug)]
pub struct TargetHealth {
    healthy: AtomicBool,
    successes: AtomicU32,
    http_failures: AtomicU32,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
}

impl Default for TargetHealth {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            http_failures: AtomicU32::new(0),
            tcp_failures: AtomicU32::new(0),
            timeouts: AtomicU32::new(0),
        }
    }
}

impl TargetHealth {
    /// Whether the target takes traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the state (the admin API's `…/healthy` and `…/unhealthy`, or a threshold reached);
    /// the counters start again.
    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        for counter in [
            &self.successes,
            &self.http_failures,
            &self.tcp_failures,
            &self.timeouts,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// Counts `outcome` under `rules`; flips the state when a threshold is reached. Returns the
    /// new state when it changed.
    pub fn record(&self, outcome: Outcome, rules: &Rules) -> Option<bool> {
        let success = match outcome {
            Outcome::Status(_) if rules.tcp_only => true,
            Outcome::Status(s) if rules.unhealthy_statuses.contains(&s) => {
                return self.failed(&self.http_failures, rules.http_failures);
            }
            Outcome::Status(s) => rules.healthy_statuses.contains(&s),
            Outcome::TcpFailure => return self.failed(&self.tcp_failures, rules.tcp_failures),
            Outcome::Timeout => return self.failed(&self.timeouts, rules.timeouts),
        };
        if !success {
            return None;
        }
        for counter in [&self.http_failures, &self.tcp_failures, &self.timeouts] {
            counter.store(0, Ordering::Relaxed);
        }
        let count = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.is_healthy() && rules.successes > 0 && count >= rules.successes {
            self.set(true);
            return Some(true);
        }
        None
    }

    fn failed(&self, counter: &AtomicU32, threshold: u32) -> Option<bool> {
        self.successes.store(0, Ordering::Relaxed);
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if self.is_healthy() && threshold > 0 && count >= threshold {
            self.set(false);
            return Some(false);
        }
        None
    }
}

/// The load of one target as this node sees it: requests in flight and the decaying average of
/// its answer times. Kept across snapshots with the health.
#[derive(Debug, Default)]
pub struct TargetLoad {
    in_flight: AtomicU32,
    /// Microseconds, exponentially weighted (0: no answer yet).
    ewma_micros: AtomicU64,
}

impl TargetLoad {
    /// A request leaves for the target: counted until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The target answered (its head) after `took`.
    pub fn answered(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        // Lost updates between workers only blur an average.
        let old = self.ewma_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(7) / 8).saturating_add(sample / 8)
        };
        self.ewma_micros.store(new.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        u64::from(self.in_flight.load(Ordering::Relaxed))
    }

    /// The decaying average answer time in microseconds (0: none measured yet).
    pub fn average_micros(&self) -> u64 {
        self.ewma_micros.load(Ordering::Relaxed)
    }
}

/// A request in flight to a target (see [`TargetLoad::start`]).
pub struct InFlight(Arc<TargetLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one upstream's targets are checked.
#[derive(Debug, Clone, Default)]
pub struct UpstreamChecks {
    /// Passive rules, when passive checks can fail a target.
    pub passive: Option<Arc<Rules>>,
    /// Whether active probes run.
    pub active: bool,
}

impl UpstreamChecks {
    /// The checks `config` turns on.
    pub fn of(config: &HealthChecks) -> Self {
        let passive = Rules::new(
            config.passive.kind,
            &config.passive.healthy,
            &config.passive.unhealthy,
        );
        Self {
            passive: passive.can_fail().then(|| Arc::new(passive)),
            active: config.active.healthy.interval > 0.0 || config.active.unhealthy.interval > 0.0,
        }
    }

    /// Whether any check runs (Kong's `HEALTHCHECKS_OFF` otherwise).
    pub fn on(&self) -> bool {
        self.passive.is_some() || self.active
    }
}

/// The cells of one kind (health or load) by upstream, then by target (`host:port` as
/// configured) and address (`ip:port`, see [`super::dns::address_key`]).
type Cells<T> = RwLock<HashMap<Uuid, HashMap<(String, String), Arc<T>>>>;

/// The health and load of every address of every target this node knows, kept by the config
/// registry across snapshots. As in Kong, each address of a target has its own: a name
/// resolving to three addresses has three cells, each failed or brought back on its own.
#[derive(Debug, Default)]
pub struct HealthBook {
    targets: Cells<TargetHealth>,
    loads: Cells<TargetLoad>,
}

impl HealthBook {
    /// The cell of `address` of `target` of `upstream`, made healthy the first time. Called
    /// when snapshots are built and by the admin API, never per request.
    pub fn of(&self, upstream: Uuid, target: &str, address: &str) -> Arc<TargetHealth> {
        cell_in(&self.targets, upstream, target, address)
    }

    /// The load of `address` of `target` of `upstream` (made the first time).
    pub fn load_of(&self, upstream: Uuid, target: &str, address: &str) -> Arc<TargetLoad> {
        cell_in(&self.loads, upstream, target, address)
    }

    /// The cell of `address` of `target` of `upstream`, if the node has one.
    pub fn find(&self, upstream: Uuid, target: &str, address: &str) -> Option<Arc<TargetHealth>> {
        self.targets
            .read()
            .ok()?
            .get(&upstream)
            .and_then(|u| u.get(&(target.to_string(), address.to_string())))
            .cloned()
    }

    /// Forgets the addresses no longer configured or resolved (`keep` lists the live ones by
    /// upstream, as (target, address)).
    pub fn retain(&self, keep: &HashMap<Uuid, HashSet<(String, String)>>) {
        if let Ok(mut all) = self.targets.write() {
            forget_gone(&mut all, keep);
        }
        if let Ok(mut all) = self.loads.write() {
            forget_gone(&mut all, keep);
        }
    }
}

/// One address's health cell under the names a scrape reports it by.
#[derive(Debug)]
pub struct ReportedTarget {
    /// The upstream's name.
    pub upstream: String,
    /// The target, `host:port`.
    pub target: String,
    /// The address, `ip:port` (empty when the target's name does not resolve).
    pub address: String,
    /// Whether any check runs for the upstream.
    pub checks_on: bool,
    /// The cell the proxy, the checker and the admin API write; `None` when the target's name
    /// does not resolve (Kong's `dns_error`).
    pub health: Option<Arc<TargetHealth>>,
}

/// Every address of every target of `upstreams` (as `dns` resolved the targets' names) with its
/// cell in `book` (made healthy the first time), by upstream name, target and address. Called
/// when a snapshot is built, never per request.
pub fn reported_targets(
    upstreams: &HashMap<Uuid, Arc<Upstream>>,
    targets: &HashMap<Uuid, Arc<Target>>,
    book: &HealthBook,
    dns: &AddressBook,
) -> Vec<ReportedTarget> {
    let mut out: Vec<ReportedTarget> = Vec::new();
    for t in targets.values() {
        let (Some(upstream), Ok(address)) = (upstreams.get(&t.upstream.id), t.address()) else {
            continue;
        };
        let checks_on = UpstreamChecks::of(&upstream.healthchecks).on();
        let port = address.port.unwrap_or(DEFAULT_TARGET_PORT);
        let row = |address: String, health| ReportedTarget {
            upstream: upstream.name.clone(),
            target: t.target.clone(),
            address,
            checks_on,
            health,
        };
        match hosts_of(&address, dns) {
            None => out.push(row(String::new(), None)),
            Some(hosts) => out.extend(hosts.iter().map(|reached| {
                let at = address_key(&reached.host, reached.port.unwrap_or(port));
                let cell = book.of(upstream.id, &t.target, &at);
                row(at, Some(cell))
            })),
        }
    }
    out.sort_by(|a, b| {
        (&a.upstream, &a.target, &a.address).cmp(&(&b.upstream, &b.target, &b.address))
    });
    out
}

/// The cell of `address` of `target` of `upstream` in `cells`, made the first time.
fn cell_in<T: Default>(cells: &Cells<T>, upstream: Uuid, target: &str, address: &str) -> Arc<T> {
    let key = (target.to_string(), address.to_string());
    if let Some(found) = cells
        .read()
        .ok()
        .and_then(|t| t.get(&upstream).and_then(|u| u.get(&key)).cloned())
    {
        return found;
    }
    let Ok(mut all) = cells.write() else {
        return Arc::default();
    };
    all.entry(upstream)
        .or_default()
        .entry(key)
        .or_default()
        .clone()
}

/// Drops the entries of `cells` whose upstream or (target, address) `keep` does not list.
fn forget_gone<T>(
    cells: &mut HashMap<Uuid, HashMap<(String, String), T>>,
    keep: &HashMap<Uuid, HashSet<(String, String)>>,
) {
    cells.retain(|upstream, addresses| {
        let Some(live) = keep.get(upstream) else {
            return false;
        };
        addresses.retain(|key, _| live.contains(key));
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            tcp_only: false,
            healthy_statuses: vec![200],
            successes: 2,
            unhealthy_statuses: vec![500],
            http_failures: 3,
            tcp_failures: 1,
            timeouts: 2,
        }
    }

    #[test]
    fn consecutive_failures_up_to_the_threshold_make_a_target_unhealthy() {
        let health = TargetHealth::default();
        let rules = rules();
        assert_eq!(health.record(Outcome::Status(500), &rules), None);
        assert_eq!(health.record(Outcome::Status(500), &rules), None);
        // A success in between starts the count again.
        assert_eq!(health.record(Outcome::Status(200), &rules), None);
        assert_eq!(health.record(Outcome::Status(500), &rules), None);
        assert_eq!(health.record(Outcome::Status(500), &rules), None);
        assert!(health.is_healthy());
        assert_eq!(health.record(Outcome::Status(500), &rules), Some(false));
        assert!(!health.is_healthy());
        assert_eq!(health.record(Outcome::Status(200), &rules), None);
        assert_eq!(health.record(Outcome::Status(200), &rules), Some(true));
        assert!(health.is_healthy());
        assert_eq!(health.record(Outcome::TcpFailure, &rules), Some(false));
    }

    #[test]
    fn tcp_rules_count_any_answer_as_a_success_and_zero_thresholds_never_fail() {
        let health = TargetHealth::default();
        let tcp = Rules {
            tcp_only: true,
            ..rules()
        };
        for _ in 0..10 {
            assert_eq!(health.record(Outcome::Status(500), &tcp), None);
        }
        assert!(health.is_healthy());
        let off = Rules::default();
        assert!(!off.can_fail());
        for _ in 0..10 {
            assert_eq!(health.record(Outcome::TcpFailure, &off), None);
        }
        assert!(health.is_healthy());
    }
}
