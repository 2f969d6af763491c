//! Where a service's requests go: its own `host:port`, or — when its `host` names an upstream —
//! one of the upstream's targets, chosen by weighted round-robin (Kong's default algorithm) or by
//! consistent hashing.
//!
//! Everything is compiled into the router snapshot when the configuration changes: the targets'
//! origins and a wheel of target positions in which each target appears as often as its weight
//! (interleaved, nginx's smooth weighted round-robin), so a request only bumps one atomic counter
//! and indexes the wheel. Consistent hashing compiles a table of `slots` positions, each owned by
//! the target with the highest weighted rendezvous score for it: a request hashes its key (the
//! consumer, client address, a header, a cookie, the path, a query argument or a named capture
//! of the route's regex path, with Kong's fallback) to a position, and adding a target moves
//! only the positions the new target wins (about 1/N of the keys). A request with no key to hash
//! takes the round-robin wheel.
//!
//! A target written as a host name is expanded into one entry per address its name resolved to
//! (the [`AddressBook`] the DNS refresher keeps current), each with the target's weight, as
//! Kong's balancer adds one address per A record; a name that failed to resolve adds none. A
//! service's own host name is taken the same way: its addresses in turn, Kong's `503 name
//! resolution failed` when it does not resolve. Each address has its own health and load, as
//! in Kong: one address of a name failing its checks leaves the name's other addresses in use.
//!
//! The proxy takes a [`Peers`] cursor per request, reads the request's hash key into it once,
//! and asks it for a peer once per attempt: attempt 0 is the algorithm's choice, each retry the
//! next target after it, so a connect failure is retried on another target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use regex::Regex;
use uuid::Uuid;

use super::dns::{address_key, hosts_of, AddressBook, Reached, Resolution};
use super::health::{HealthBook, UpstreamChecks};
use super::UpstreamOrigin;
use crate::entities::upstreams::{Address, AddressKind, Target, Upstream};
use crate::entities::Service;
use crate::plugin_api::{HeaderName, RequestCtx};

/// Largest wheel built; weights whose reduced sum is larger are scaled down to it (each usable
/// target keeps at least one slot).
const MAX_WHEEL: u64 = 10_000;

/// Kong's answer when no target can take the request.
pub const NO_PEER: &str = "failure to get a peer from the ring-balancer";

/// Kong's answer when a service's own host name does not resolve.
pub const NAME_FAILED: &str = "name resolution failed";

/// Where a routed service's requests go.
pub enum Destinations {
    /// The service's own host and port (an address, or a name not answered yet, connected to
    /// as written).
    Fixed(UpstreamOrigin),
    /// The addresses the service's host name resolved to, taken in turn (as Kong's `toip`
    /// rotates over a name's records); a retry takes the next one.
    Resolved {
        /// One origin per address.
        origins: Vec<UpstreamOrigin>,
        /// The service's rotation.
        next: Arc<Rotation>,
    },
    /// The service's host name did not resolve: Kong's `503 name resolution failed`.
    Unresolved,
    /// The targets of the upstream its host names.
    Balanced(Balancer),
}

/// What a balancer chooses by besides the wheel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The wheel (round-robin), or the hash table when the request has a key.
    Rotation,
    /// The target with the fewest requests in flight for its weight (`least-connections`).
    LeastConnections,
    /// The target with the lowest decaying average answer time, weighed by its requests in
    /// flight (`latency`, a peak-EWMA choice).
    Latency,
}

/// How one service balances over its upstream's targets: the round-robin wheel and, for
/// consistent hashing, the hash table.
pub struct Balancer {
    /// One origin per address of each target with a weight above 0.
    origins: Vec<UpstreamOrigin>,
    /// Positions in `origins`, each as often as its (reduced) weight, interleaved.
    wheel: Vec<u32>,
    /// Requests started so far (the rotation): the service's own counter, carried from snapshot to
    /// snapshot so that a configuration change does not restart the rotation.
    next: Arc<Rotation>,
    /// Consistent hashing, when the upstream's algorithm is `consistent-hashing`.
    hashing: Option<Hashing>,
    /// The algorithm's choice.
    choice: Choice,
    /// Each origin's weight (for `least-connections`).
    weights: Vec<u64>,
}

/// One input of consistent hashing (Kong's `hash_on` values).
enum HashSource {
    None,
    Consumer,
    Ip,
    Header(HeaderName),
    /// The cookie of this name; a request without it gets a generated value, set on its answer
    /// with the cookie's path so that the client sticks to its target.
    Cookie {
        name: String,
        path: String,
    },
    Path,
    QueryArg(String),
    /// The named capture group of the matched route's regex path.
    UriCapture(String),
}

/// The consistent-hashing table of a balancer and what it hashes.
struct Hashing {
    /// Origin position owning each slot.
    table: Vec<u32>,
    on: HashSource,
    fallback: HashSource,
}

/// A service's round-robin position, kept by the config registry across snapshots.
pub type Rotation = AtomicUsize;

/// One request's view of its service's destinations: which wheel slot it drew and, once read,
/// its consistent-hashing key.
#[derive(Clone, Copy)]
pub struct Peers<'a> {
    destinations: &'a Destinations,
    ticket: usize,
    /// The matched route's regex path (for `uri_capture` hashing).
    pattern: Option<&'a Regex>,
    /// The request's hash key, read by [`Peers::read_key`].
    key: Option<u64>,
}

impl Destinations {
    /// The destinations of `service`: balanced when an upstream of `upstreams` (by name) has its
    /// host as name, otherwise its own host (as `place.dns` last resolved a name); rotating with
    /// `place.rotation`.
    pub fn of(service: &Service, upstreams: &UpstreamIndex<'_>, place: &Placement<'_>) -> Self {
        match upstreams.get(service.host.as_str()) {
            Some((upstream, targets)) => {
                Self::Balanced(Balancer::build(service, upstream, targets, place))
            }
            None => Self::own(service, place),
        }
    }

    /// The service's own host: an address as it is, a name as it last resolved.
    fn own(service: &Service, place: &Placement<'_>) -> Self {
        let name = Address::parse(&service.host)
            .ok()
            .filter(|a| a.kind == AddressKind::Name);
        let Some(name) = name else {
            return Self::Fixed(UpstreamOrigin::of(service));
        };
        match place.dns.get(name.host.to_ascii_lowercase().as_str()) {
            None => Self::Fixed(UpstreamOrigin::of(service)),
            Some(Resolution::Failed) => Self::Unresolved,
            // An SRV answer's weights are not used here: a service's addresses are taken in
            // turn.
            Some(Resolution::Addresses(_) | Resolution::Service(_)) => Self::Resolved {
                origins: endpoints(&name, &service.host, service, place.dns)
                    .iter()
                    .map(|(reached, url_host)| {
                        UpstreamOrigin::new(
                            &service.protocol,
                            &reached.host,
                            url_host,
                            &service.host,
                            reached.port.unwrap_or(service.port),
                        )
                    })
                    .collect(),
                next: place.rotation.clone(),
            },
        }
    }

    /// A cursor for one request (draws its wheel slot) matched by a route whose regex path is
    /// `pattern`, if it has one.
    pub fn peers<'a>(&'a self, pattern: Option<&'a Regex>) -> Peers<'a> {
        let ticket = match self {
            Self::Fixed(_) | Self::Unresolved => 0,
            Self::Resolved { next, .. } => next.fetch_add(1, Ordering::Relaxed),
            Self::Balanced(b) => b.next.fetch_add(1, Ordering::Relaxed),
        };
        Peers {
            destinations: self,
            ticket,
            pattern,
            key: None,
        }
    }
}

/// What a balancer is built with besides the upstream and its targets: where each service's
/// rotation and each target's health live, and what the targets' names resolved to.
pub struct Placement<'a> {
    /// The targets' health.
    pub health: &'a HealthBook,
    /// The service's round-robin position.
    pub rotation: Arc<Rotation>,
    /// The answers for the targets' host names.
    pub dns: &'a AddressBook,
}

impl<'a> Peers<'a> {
    /// Reads the request's consistent-hashing key (once, before the first pick: the plugins
    /// have run, so the consumer is known; retries keep it, as Kong's do). When the upstream
    /// hashes on a cookie the request lacks, a value is generated and the `Set-Cookie` the
    /// answer must carry is returned (Kong's sticky cookie).
    pub fn read_key(&mut self, ctx: &RequestCtx) -> Option<HeaderValue> {
        let Destinations::Balanced(b) = self.destinations else {
            return None;
        };
        let hashing = b.hashing.as_ref()?;
        let path = ctx.req.uri().path();
        let mut sticky = None;
        self.key = hashing
            .on
            .hash(ctx, self.pattern, path)
            .or_else(|| hashing.fallback.hash(ctx, self.pattern, path))
            .or_else(|| {
                let (name, cookie_path) = hashing.on.cookie().or(hashing.fallback.cookie())?;
                let value = Uuid::new_v4().to_string();
                sticky = HeaderValue::from_str(&format!(
                    "{name}={value}; Path={cookie_path}; Same-Site=Lax; HttpOnly"
                ))
                .ok();
                let mut h = Fnv::default();
                h.write(value.as_bytes());
                Some(h.finish())
            });
        sticky
    }

    /// The origin for attempt `attempt` (0 first, then each retry): `None` when the upstream
    /// has no target that takes traffic.
    pub fn pick(&self, attempt: u32) -> Option<&'a UpstreamOrigin> {
        match self.destinations {
            Destinations::Fixed(origin) => Some(origin),
            Destinations::Resolved { origins, .. } => {
                let step = usize::try_from(attempt).ok()?;
                origins.get(self.ticket.wrapping_add(step) % origins.len().max(1))
            }
            Destinations::Unresolved => None,
            Destinations::Balanced(b) => b.pick(self.ticket, attempt, self.key),
        }
    }

    /// Kong's message when [`Peers::pick`] finds nothing.
    pub fn refusal(&self) -> &'static str {
        match self.destinations {
            Destinations::Unresolved => NAME_FAILED,
            _ => NO_PEER,
        }
    }
}

/// Upstreams by name, each with its targets.
pub type UpstreamIndex<'a> = HashMap<&'a str, (&'a Upstream, Vec<&'a Target>)>;

/// Indexes upstreams by name with their targets (in `host:port` order, so every node builds the
/// same wheel).
pub fn index<'a>(
    upstreams: &'a HashMap<Uuid, Arc<Upstream>>,
    targets: &'a HashMap<Uuid, Arc<Target>>,
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
    pub fn build(
        service: &Service,
        upstream: &Upstream,
        targets: &[&Target],
        place: &Placement<'_>,
    ) -> Self {
        let checks = UpstreamChecks::of(&upstream.healthchecks);
        let mut origins = Vec::new();
        let mut weights = Vec::new();
        let mut keys = Vec::new();
        for target in targets.iter().filter(|t| t.weight > 0) {
            let Ok(address) = target.address() else {
                tracing::error!(target = %target.target, "stored target does not parse; skipped");
                continue;
            };
            let port = address
                .port
                .unwrap_or(crate::entities::upstreams::DEFAULT_TARGET_PORT);
            let written = match address.kind {
                AddressKind::Ipv6 => format!("[{}]", address.host),
                _ => address.host.clone(),
            };
            for (reached, url_host) in endpoints(&address, &written, service, place.dns) {
                // An SRV record's port and weight replace the target's, as in Kong, and its
                // target name the `Host` under `use_srv_name`.
                let port = reached.port.unwrap_or(port);
                let host_name = match (&upstream.host_header, &reached.srv_name) {
                    (Some(header), _) => header.as_str(),
                    (None, Some(srv)) if upstream.use_srv_name => srv,
                    (None, _) => &written,
                };
                let connect_host = reached.host;
                let mut origin = UpstreamOrigin::new(
                    &service.protocol,
                    &connect_host,
                    &url_host,
                    host_name,
                    port,
                );
                // Health and load are the address's (as Kong keeps them), always read: an
                // address set unhealthy through the admin API gets no traffic even with the
                // checks off.
                let at = address_key(&connect_host, port);
                origin.health = Some(place.health.of(upstream.id, &target.target, &at));
                origin.passive.clone_from(&checks.passive);
                if upstream.algorithm == "least-connections" || upstream.algorithm == "latency" {
                    origin.load = Some(place.health.load_of(upstream.id, &target.target, &at));
                }
                origins.push(origin);
                weights.push(u64::from(reached.weight.unwrap_or(target.weight)));
                let mut h = Fnv::default();
                h.write(target.target.as_bytes());
                if connect_host != address.host {
                    h.write(b"@");
                    h.write(connect_host.as_bytes());
                }
                if let Some(srv_port) = reached.port {
                    h.write(&srv_port.to_be_bytes());
                }
                keys.push(h.finish());
            }
        }
        let hashing = (upstream.algorithm == "consistent-hashing").then(|| Hashing {
            table: table(&keys, &weights, upstream.slots),
            on: HashSource::of(upstream, false),
            fallback: HashSource::of(upstream, true),
        });
        let choice = match upstream.algorithm.as_str() {
            "least-connections" => Choice::LeastConnections,
            "latency" => Choice::Latency,
            _ => Choice::Rotation,
        };
        Self {
            wheel: wheel(&weights),
            origins,
            next: place.rotation.clone(),
            hashing,
            choice,
            weights,
        }
    }

    fn pick(&self, ticket: usize, attempt: u32, key: Option<u64>) -> Option<&UpstreamOrigin> {
        let hashed = self.hashing.as_ref().zip(key).and_then(|(h, key)| {
            let slot = usize::try_from(key % h.table.len().max(1) as u64).ok()?;
            h.table.get(slot).copied()
        });
        let slot = match (hashed, self.choice) {
            (Some(slot), _) => slot,
            (None, Choice::Rotation) => *self.wheel.get(ticket % self.wheel.len().max(1))?,
            (None, choice) => self.least_loaded(choice, ticket)?,
        };
        let first = usize::try_from(slot).ok()?;
        let step = usize::try_from(attempt).ok()?;
        let count = self.origins.len();
        // The `attempt`-th healthy target from the chosen one on: unhealthy targets get nothing,
        // and each retry moves to another healthy one.
        (0..count)
            .filter_map(|k| self.origins.get((first + k) % count))
            .filter(|o| o.health.as_ref().is_none_or(|h| h.is_healthy()))
            .cycle()
            .nth(step)
    }
}

impl Balancer {
    /// The healthy origin with the lowest load score: requests in flight per weight
    /// (`least-connections`), or average answer time times requests in flight plus one
    /// (`latency`; a target not yet measured scores 0, so each is tried). Ties go to the first
    /// from the request's rotation ticket on, so equal targets share the traffic.
    fn least_loaded(&self, choice: Choice, ticket: usize) -> Option<u32> {
        let count = self.origins.len();
        let mut best: Option<(u128, usize)> = None;
        for k in 0..count {
            let i = (ticket + k) % count;
            let origin = self.origins.get(i)?;
            if origin.health.as_ref().is_some_and(|h| !h.is_healthy()) {
                continue;
            }
            let Some(load) = origin.load.as_deref() else {
                continue;
            };
            let score = match choice {
                // (in flight + 1) / weight, compared as a fraction over the common weight product.
                Choice::LeastConnections => {
                    let weight = u128::from(*self.weights.get(i)?).max(1);
                    u128::from(load.in_flight() + 1) * 1_000_000 / weight
                }
                Choice::Latency => {
                    u128::from(load.average_micros()) * u128::from(load.in_flight() + 1)
                }
                Choice::Rotation => 0,
            };
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        best.and_then(|(_, i)| u32::try_from(i).ok())
    }
}

/// Where the requests for one target go: each place it is reached (with an SRV record's port
/// and weight) and the host its URL is written with. An address is itself; a name is each
/// address it resolved to (none when it failed to resolve), or — before its first answer —
/// the name, connected to as written. Plain-HTTP origins are written with the address (the
/// connection pool is keyed by it); TLS and gRPC origins keep the name in their URL (the TLS
/// server name), pinned to the address.
fn endpoints(
    address: &Address,
    written: &str,
    service: &Service,
    dns: &AddressBook,
) -> Vec<(Reached, String)> {
    // TLS and gRPC keep the name in the URL: it is the server name TLS asks for and checks the
    // certificate against, and gRPC's `:authority`. Their origin is pinned to the address
    // (`UpstreamOrigin::pinned`), which hyper's client connects to.
    let by_name = matches!(service.protocol.as_str(), "https" | "grpcs" | "grpc");
    let answered = address.kind == AddressKind::Name
        && matches!(
            dns.get(address.host.to_ascii_lowercase().as_str()),
            Some(Resolution::Addresses(_) | Resolution::Service(_))
        );
    hosts_of(address, dns)
        .unwrap_or_default()
        .into_iter()
        .map(|reached| {
            let url_host = if !answered || by_name {
                written.to_string()
            } else if reached.host.contains(':') {
                format!("[{}]", reached.host)
            } else {
                reached.host.clone()
            };
            (reached, url_host)
        })
        .collect()
}

impl HashSource {
    /// The upstream's `hash_on` source, or its `hash_fallback` one.
    fn of(upstream: &Upstream, fallback: bool) -> Self {
        let (kind, header, arg, capture) = if fallback {
            (
                &upstream.hash_fallback,
                &upstream.hash_fallback_header,
                &upstream.hash_fallback_query_arg,
                &upstream.hash_fallback_uri_capture,
            )
        } else {
            (
                &upstream.hash_on,
                &upstream.hash_on_header,
                &upstream.hash_on_query_arg,
                &upstream.hash_on_uri_capture,
            )
        };
        match kind.as_str() {
            "consumer" => Self::Consumer,
            "ip" => Self::Ip,
            "header" => header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .map_or(Self::None, Self::Header),
            "cookie" => upstream
                .hash_on_cookie
                .clone()
                .map_or(Self::None, |name| Self::Cookie {
                    name,
                    path: upstream
                        .hash_on_cookie_path
                        .clone()
                        .unwrap_or_else(|| "/".into()),
                }),
            "path" => Self::Path,
            "query_arg" => arg.clone().map_or(Self::None, Self::QueryArg),
            "uri_capture" => capture.clone().map_or(Self::None, Self::UriCapture),
            _ => Self::None,
        }
    }

    /// The cookie's name and path, when this source is a cookie.
    fn cookie(&self) -> Option<(&str, &str)> {
        match self {
            Self::Cookie { name, path } => Some((name, path)),
            _ => None,
        }
    }

    /// The request's key for this source, hashed; `None` when the request has none. `pattern`
    /// is the matched route's regex path, `path` the request path it matched.
    fn hash(&self, ctx: &RequestCtx, pattern: Option<&Regex>, path: &str) -> Option<u64> {
        let mut h = Fnv::default();
        match self {
            Self::None => return None,
            Self::Cookie { name, .. } => h.write(cookie(ctx, name)?),
            Self::UriCapture(group) => {
                h.write(pattern?.captures(path)?.name(group)?.as_str().as_bytes());
            }
            Self::Consumer => h.write(ctx.consumer.as_ref()?.id.as_bytes()),
            Self::Ip => match ctx.client_ip {
                std::net::IpAddr::V4(a) => h.write(&a.octets()),
                std::net::IpAddr::V6(a) => h.write(&a.octets()),
            },
            Self::Header(name) => {
                // Several lines of one header count as one value, joined as nginx joins them.
                let mut any = false;
                for value in ctx.req.headers().get_all(name) {
                    if any {
                        h.write(b", ");
                    }
                    h.write(value.as_bytes());
                    any = true;
                }
                if !any {
                    return None;
                }
            }
            Self::Path => h.write(ctx.req.uri().path().as_bytes()),
            Self::QueryArg(arg) => {
                let mut values: Vec<String> =
                    url::form_urlencoded::parse(ctx.req.query_string().as_bytes())
                        .filter(|(k, _)| k == arg)
                        .map(|(_, v)| v.into_owned())
                        .collect();
                if values.is_empty() {
                    return None;
                }
                values.sort();
                h.write(values.join(",").as_bytes());
            }
        }
        Some(h.finish())
    }
}

/// The value of the cookie `name` in the request's `Cookie` headers (the first one, as nginx's
/// `$cookie_` reads it).
fn cookie<'r>(ctx: &'r RequestCtx, name: &str) -> Option<&'r [u8]> {
    ctx.req
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(value.trim_ascii_end())
        })
}

/// FNV-1a with a final mix: the same on every node and every run (the table must map a key to the
/// same target cluster-wide), unlike the std hasher's random keys.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(self) -> u64 {
        mix(self.0)
    }
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The consistent-hashing table: for each of `slots` positions, the target (by its `host:port`
/// `keys` and `weights`) with the highest weighted rendezvous score. A target's score for a
/// position does not depend on the other targets, so adding one changes only the positions it
/// wins, and each target wins a share of positions proportional to its weight.
fn table(keys: &[u64], weights: &[u64], slots: u32) -> Vec<u32> {
    if keys.is_empty() {
        return Vec::new();
    }
    (0..u64::from(slots.max(1)))
        .map(|slot| {
            let mut best = (f64::NEG_INFINITY, 0u32);
            for (i, (key, weight)) in keys.iter().zip(weights).enumerate() {
                // A uniform draw in (0, 1) from the pair, then w / -ln(u): the largest wins.
                let draw = mix(key ^ mix(slot));
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "53 bits of the draw and weights below 2^16 are exact"
                )]
                let (u, w) = (
                    ((draw >> 11) as f64 + 0.5) / (1u64 << 53) as f64,
                    *weight as f64,
                );
                let score = w / -u.ln();
                if score > best.0 {
                    best = (score, u32::try_from(i).unwrap_or_default());
                }
            }
            best.1
        })
        .collect()
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
    use super::{table, wheel, Fnv};

    fn key(target: &str) -> u64 {
        let mut h = Fnv::default();
        h.write(target.as_bytes());
        h.finish()
    }

    #[test]
    fn the_hash_table_follows_the_weights_and_a_new_target_takes_only_its_share() {
        let targets: Vec<u64> = (0..4).map(|i| key(&format!("10.0.0.{i}:80"))).collect();
        let before = table(&targets[..3], &[100, 100, 200], 10_000);
        let count = |t: &[u32], i: u32| t.iter().filter(|x| **x == i).count();
        for (i, want) in [(0, 2500), (1, 2500), (2, 5000)] {
            let got = count(&before, i);
            assert!(got.abs_diff(want) < 300, "target {i}: {got} of 10000");
        }
        let after = table(&targets, &[100, 100, 200, 100], 10_000);
        let moved: Vec<usize> = (0..10_000).filter(|s| before[*s] != after[*s]).collect();
        assert!(
            moved.iter().all(|s| after[*s] == 3),
            "only to the new target"
        );
        assert!(
            moved.len().abs_diff(2000) < 300,
            "{} of 10000 moved",
            moved.len()
        );
    }

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
