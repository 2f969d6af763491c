//! The compiled, immutable route table ([`RouterSnapshot`]) that request handlers read without
//! locks. The config registry actor rebuilds and swaps it after every change.
//!
//! Matching follows Kong's traditional_compatible router: every configured attribute must match,
//! and candidates are ordered by number of attributes, plain before wildcard hosts, header count,
//! regex before prefix, `regex_priority`, longest prefix, then age.
//!
//! [`balancer`] compiles where each service's requests go (its own host, or its upstream's
//! targets, their host names as [`dns`] last resolved them) into the same snapshot.

pub mod balancer;
pub mod dns;
pub mod health;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::Method;
use regex::Regex;
use uuid::Uuid;

use crate::entities::upstreams::{Target, Upstream};
use crate::entities::{Identities, IdentityParts, Route, Service};
use crate::plugin_api::{PluginRuntime, Scheme};
use balancer::Destinations;

/// A route with its matchers compiled (regexes built once, hosts lower-cased).
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route as configured (shared with the requests it serves: plugins read its `hosts`).
    pub route: Arc<Route>,
    methods: Vec<Method>,
    hosts: Vec<HostPattern>,
    /// The TLS server names the connection must have asked for (exact or wildcard).
    snis: Vec<HostPattern>,
    headers: Vec<(String, Vec<String>)>,
    paths: Vec<PathPattern>,
    https_only: bool,
}

#[derive(Debug)]
struct HostPattern {
    name: HostName,
    /// Port the Host header must carry (`example.com:8000`); any port when `None`.
    port: Option<String>,
}

#[derive(Debug)]
enum HostName {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    /// `example.*` stored as `example.`.
    Prefix(String),
}

#[derive(Debug, Clone)]
enum PathPattern {
    Prefix(String),
    Regex(Regex),
}

impl HostPattern {
    fn parse(pattern: &str) -> Self {
        let pattern = pattern.to_ascii_lowercase();
        let (name, port) = match pattern.rsplit_once(':') {
            Some((n, p)) if p.parse::<u16>().is_ok() => (n.to_string(), Some(p.to_string())),
            _ => (pattern, None),
        };
        let name = if let Some(rest) = name.strip_prefix('*') {
            HostName::Suffix(rest.to_string())
        } else if let Some(rest) = name.strip_suffix('*') {
            HostName::Prefix(rest.to_string())
        } else {
            HostName::Exact(name)
        };
        Self { name, port }
    }

    fn matches(&self, host: &str, host_with_port: &str) -> bool {
        if let Some(port) = &self.port {
            let sent = host_with_port
                .strip_prefix(host)
                .and_then(|p| p.strip_prefix(':'));
            if sent != Some(port.as_str()) {
                return false;
            }
        }
        match &self.name {
            HostName::Exact(h) => h == host,
            HostName::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
            HostName::Prefix(p) => host.starts_with(p.as_str()) && host.len() > p.len(),
        }
    }
}

impl CompiledRoute {
    /// Compiles a validated route.
    ///
    /// # Errors
    /// A regex that does not compile (validation normally catches it first).
    pub fn compile(route: Route) -> Result<Self, String> {
        let methods = route
            .methods
            .iter()
            .flatten()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let hosts = route
            .hosts
            .iter()
            .flatten()
            .map(|h| HostPattern::parse(h))
            .collect();
        let snis = route
            .snis
            .iter()
            .flatten()
            .map(|h| HostPattern::parse(h))
            .collect();
        let headers = route
            .headers
            .iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    v.iter().map(|s| s.to_ascii_lowercase()).collect(),
                )
            })
            .collect();
        let paths = route
            .paths
            .iter()
            .flatten()
            .map(|p| match p.strip_prefix('~') {
                Some(re) => Regex::new(&format!("^(?:{re})"))
                    .map(PathPattern::Regex)
                    .map_err(|e| e.to_string()),
                None => Ok(PathPattern::Prefix(p.clone())),
            })
            .collect::<Result<_, _>>()?;
        let https_only = !route.protocols.iter().any(|p| p == "http")
            && route.protocols.iter().any(|p| p == "https");
        Ok(Self {
            route: Arc::new(route),
            methods,
            hosts,
            snis,
            headers,
            paths,
            https_only,
        })
    }
}

/// The plugins that run for a route, in priority order.
#[derive(Default)]
pub struct PluginChain {
    /// One entry per plugin name, highest priority first.
    pub entries: Vec<ChainEntry>,
    /// Whether any instance of the chain has a log phase, decided when the chain is built: a
    /// request on a chain without one gathers nothing for the log phase.
    pub logs: bool,
    /// The positions in `entries` of the plugins with a log phase in any of their instances:
    /// a request looks only at these for its log phases.
    pub loggers: Vec<usize>,
    /// Whether one of those has consumer-scoped instances: only then can the consumer an
    /// access phase authenticated change which log phases run.
    pub consumer_scoped_logs: bool,
}

impl PluginChain {
    /// The chain of these entries (highest priority first).
    pub fn new(entries: Vec<ChainEntry>) -> Self {
        let loggers: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.default
                    .iter()
                    .chain(e.by_consumer.values())
                    .any(|s| s.runtime.logs())
            })
            .map(|(i, _)| i)
            .collect();
        let consumer_scoped_logs = loggers.iter().any(|&i| !entries[i].by_consumer.is_empty());
        Self {
            entries,
            logs: !loggers.is_empty(),
            loggers,
            consumer_scoped_logs,
        }
    }
}

/// The instances of one plugin name that may run for a route.
pub struct ChainEntry {
    /// Instance chosen when no consumer-scoped one applies.
    pub default: Option<ScopedRuntime>,
    /// Consumer-scoped instances (used once a consumer is authenticated).
    pub by_consumer: HashMap<Uuid, ScopedRuntime>,
}

/// A runtime plus the protocols it runs on.
#[derive(Clone)]
pub struct ScopedRuntime {
    /// The compiled instance.
    pub runtime: Arc<dyn PluginRuntime>,
    /// Runs on plain http requests.
    pub http: bool,
    /// Runs on https requests.
    pub https: bool,
}

impl ChainEntry {
    /// The instance to run given the consumer known so far.
    pub fn select(&self, consumer: Option<Uuid>, https: bool) -> Option<&Arc<dyn PluginRuntime>> {
        let scoped = consumer
            .and_then(|c| self.by_consumer.get(&c))
            .or(self.default.as_ref())?;
        if (https && scoped.https) || (!https && scoped.http) {
            Some(&scoped.runtime)
        } else {
            None
        }
    }
}

/// One matcher: a route with one of its paths (Kong splits multi-path routes the same way).
pub struct RouteEntry {
    /// The compiled route.
    pub route: Arc<CompiledRoute>,
    path: Option<PathPattern>,
    /// Its service and where its requests go, resolved at compile time.
    pub service: Option<Arc<RoutedService>>,
    /// Its plugin chain.
    pub chain: Arc<PluginChain>,
    priority: (usize, bool, usize, bool, i64, usize, std::cmp::Reverse<i64>),
}

impl RouteEntry {
    /// The entry's regex path, when it has one (its named captures can key consistent hashing).
    pub fn path_regex(&self) -> Option<&Regex> {
        match &self.path {
            Some(PathPattern::Regex(re)) => Some(re),
            _ => None,
        }
    }
}

/// Request attributes the router looks at.
pub struct MatchInput<'a> {
    /// Method.
    pub method: &'a Method,
    /// Host without port, lower case.
    pub host: &'a str,
    /// Host as sent (with port), lower case.
    pub host_with_port: &'a str,
    /// URI path.
    pub path: &'a str,
    /// The TLS server name the connection asked for (lower case), if any.
    pub sni: Option<&'a str>,
    /// Header lookup (lower-case name → first value).
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// A successful match: `'a` borrows the table, `'p` the request path.
pub struct RouteMatch<'a, 'p> {
    /// The matched entry.
    pub entry: &'a RouteEntry,
    /// The prefix of the request path removed when `strip_path` is on (`None` when nothing is
    /// stripped). Paths and regexes match from the start, so it is always a prefix.
    pub stripped: Option<&'p str>,
    /// Whether the route allows only https.
    pub https_only: bool,
}

/// Route tables up to this size are scanned in order; larger ones use the [`PathIndex`].
const INDEX_THRESHOLD: usize = 32;

/// Entry positions by plain path prefix, so large tables are not scanned in full.
#[derive(Default)]
pub struct PathIndex {
    /// Entries whose path is this plain prefix, in priority order.
    by_prefix: HashMap<String, Vec<usize>>,
    /// Distinct prefix lengths present, ascending.
    prefix_lengths: Vec<usize>,
    /// Entries without a path or with a regex path, in priority order.
    unindexed: Vec<usize>,
}

impl PathIndex {
    fn build(entries: &[RouteEntry]) -> Self {
        let mut index = Self::default();
        for (i, e) in entries.iter().enumerate() {
            match &e.path {
                Some(PathPattern::Prefix(p)) => {
                    index.by_prefix.entry(p.clone()).or_default().push(i)
                }
                _ => index.unindexed.push(i),
            }
        }
        index.prefix_lengths = index.by_prefix.keys().map(String::len).collect();
        index.prefix_lengths.sort_unstable();
        index.prefix_lengths.dedup();
        index
    }
}

/// Everything a request handler needs, immutable and shared.
#[derive(Default)]
pub struct RouterSnapshot {
    /// Matchers in priority order.
    pub entries: Vec<RouteEntry>,
    /// Prefix index over `entries`.
    index: PathIndex,
    /// Consumers and OAuth clients, handed whole to each request's plugins.
    pub identities: Arc<Identities>,
    /// The global plugins alone: their log phase runs for requests no route matched.
    pub global: Arc<PluginChain>,
    /// The targets' health (for the admin API's `/upstreams/{u}/health`).
    pub health: Arc<health::HealthBook>,
    /// What the targets' host names last resolved to (for the admin API's
    /// `/upstreams/{u}/health`, which lists each target's addresses).
    pub dns: Arc<dns::AddressBook>,
    /// Every upstream target with its health cell, when a `prometheus` plugin exports
    /// `kong_upstream_target_health` (`upstream_health_metrics`); set by the registry.
    pub upstream_health: Option<Arc<[health::ReportedTarget]>>,
    /// Bumped on every rebuild.
    pub version: u64,
}

/// Inputs of a snapshot build, owned by the config registry.
pub struct SnapshotParts<'a> {
    /// Compiled routes.
    pub routes: Vec<Arc<CompiledRoute>>,
    /// Services by id.
    pub services: &'a HashMap<Uuid, Arc<Service>>,
    /// Chains by route id.
    pub chains: HashMap<Uuid, Arc<PluginChain>>,
    /// The global plugins' chain (see [`RouterSnapshot::global`]).
    pub global: Arc<PluginChain>,
    /// Consumers and credentials.
    pub identities: IdentityParts,
    /// Upstreams by id.
    pub upstreams: &'a HashMap<Uuid, Arc<Upstream>>,
    /// Targets by id.
    pub targets: &'a HashMap<Uuid, Arc<Target>>,
    /// Each service's round-robin position, carried across snapshots (a service without one
    /// starts at 0).
    pub rotations: &'a HashMap<Uuid, Arc<balancer::Rotation>>,
    /// The targets' health, carried across snapshots.
    pub health: &'a Arc<health::HealthBook>,
    /// What the targets' host names last resolved to.
    pub dns: &'a dns::AddressBook,
    /// Upstream TLS settings of the services that have their own.
    pub upstream_tls: &'a HashMap<Uuid, Arc<crate::tls::UpstreamTls>>,
    /// Version number.
    pub version: u64,
}

/// A route's service with where its requests go.
pub struct RoutedService {
    /// The service.
    pub service: Arc<Service>,
    /// Its own origin, or its upstream's targets.
    pub destinations: Destinations,
    /// Its own upstream TLS settings (client certificate, CA certificates), if it has any.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
}

/// A service's upstream origin as the proxy sends it: computed once per snapshot instead of being
/// formatted for every request.
pub struct UpstreamOrigin {
    /// `http://host:port` or `https://host:port`; the path and query follow.
    pub base: Arc<str>,
    /// `Host` sent upstream (unless the route preserves the client's): the port is left out when
    /// it is the scheme's default.
    pub host: Option<HeaderValue>,
    /// Whether the upstream speaks TLS.
    pub tls: bool,
    /// The target's health, when it belongs to an upstream.
    pub health: Option<Arc<health::TargetHealth>>,
    /// The upstream's passive checks, when they can fail a target: the proxy reports each
    /// outcome under them.
    pub passive: Option<Arc<health::Rules>>,
    /// The target's load, when the upstream balances by it (`least-connections`, `latency`).
    pub load: Option<Arc<health::TargetLoad>>,
    /// Host name or address to connect to.
    pub connect_host: String,
    /// The name TLS asks the upstream for (the target's name when `connect_host` is one of its
    /// addresses).
    pub server_name: String,
    /// Port to connect to.
    pub port: u16,
    /// The address the balancer picked when the URL keeps the host name (TLS and gRPC origins,
    /// whose server name, `Host` and `:authority` are the name): hyper's client connects here
    /// instead of resolving the name again.
    pub pinned: Option<IpAddr>,
}

impl UpstreamOrigin {
    /// Counts a proxied request's outcome under the upstream's passive checks (nothing when
    /// they are off).
    pub fn report(&self, outcome: health::Outcome) {
        if let (Some(health), Some(rules)) = (&self.health, &self.passive) {
            if let Some(healthy) = health.record(outcome, rules) {
                tracing::warn!(
                    target = %format_args!("{}:{}", self.connect_host, self.port),
                    healthy,
                    "passive health check changed the target's state"
                );
            }
        }
    }

    /// The origin of `service`.
    pub fn of(service: &Service) -> Self {
        Self::new(
            &service.protocol,
            &service.host,
            &service.host,
            &service.host,
            service.port,
        )
    }

    /// An origin speaking `protocol` at `connect_host:port`, written `url_host` in its URL and
    /// announced as `host_name` in `Host` (with the port unless it is the scheme's default).
    pub fn new(
        protocol: &str,
        connect_host: &str,
        url_host: &str,
        host_name: &str,
        port: u16,
    ) -> Self {
        let scheme = if protocol == "https" || protocol == "grpcs" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let default_port = matches!((scheme, port), (Scheme::Http, 80) | (Scheme::Https, 443));
        let host = if default_port {
            host_name.to_string()
        } else {
            format!("{host_name}:{port}")
        };
        let server_name = url_host.trim_start_matches('[').trim_end_matches(']');
        let pinned = if server_name.parse::<IpAddr>().is_ok() {
            None
        } else {
            connect_host.parse::<IpAddr>().ok()
        };
        Self {
            host: HeaderValue::from_str(&host).ok(),
            base: format!("{}://{url_host}:{port}", scheme.as_str()).into(),
            tls: scheme.is_https(),
            connect_host: connect_host.to_string(),
            server_name: server_name.to_string(),
            port,
            pinned,
            health: None,
            passive: None,
            load: None,
        }
    }
}

impl RouterSnapshot {
    /// Builds the ordered matcher list and lookup maps.
    pub fn build(parts: SnapshotParts<'_>) -> Self {
        let mut entries = Vec::new();
        let mut routed: HashMap<Uuid, Arc<RoutedService>> = HashMap::new();
        let upstreams = balancer::index(parts.upstreams, parts.targets);
        for route in parts.routes {
            // One per service, shared by its routes.
            let service = route
                .route
                .service
                .and_then(|s| parts.services.get(&s.id))
                .map(|s| {
                    routed
                        .entry(s.id)
                        .or_insert_with(|| {
                            Arc::new(RoutedService {
                                service: s.clone(),
                                destinations: Destinations::of(
                                    s,
                                    &upstreams,
                                    &balancer::Placement {
                                        health: parts.health,
                                        rotation: parts
                                            .rotations
                                            .get(&s.id)
                                            .cloned()
                                            .unwrap_or_default(),
                                        dns: parts.dns,
                                    },
                                ),
                                tls: parts.upstream_tls.get(&s.id).cloned(),
                            })
                        })
                        .clone()
                });
            let chain = parts
                .chains
                .get(&route.route.id)
                .cloned()
                .unwrap_or_default();
            let paths: Vec<Option<PathPattern>> = if route.paths.is_empty() {
                vec![None]
            } else {
                route.paths.iter().cloned().map(Some).collect()
            };
            for path in paths {
                let attributes = usize::from(!route.methods.is_empty())
                    + usize::from(!route.hosts.is_empty())
                    + usize::from(!route.snis.is_empty())
                    + usize::from(!route.headers.is_empty())
                    + usize::from(path.is_some());
                let plain_host = !route.hosts.is_empty()
                    && route
                        .hosts
                        .iter()
                        .all(|h| matches!(h.name, HostName::Exact(_)));
                let (is_regex, prefix_len) = match &path {
                    Some(PathPattern::Regex(_)) => (true, 0),
                    Some(PathPattern::Prefix(p)) => (false, p.len()),
                    None => (false, 0),
                };
                let priority = (
                    attributes,
                    plain_host,
                    route.headers.len(),
                    is_regex,
                    if is_regex {
                        route.route.regex_priority
                    } else {
                        0
                    },
                    prefix_len,
                    std::cmp::Reverse(route.route.created_at),
                );
                entries.push(RouteEntry {
                    route: route.clone(),
                    path,
                    service: service.clone(),
                    chain: chain.clone(),
                    priority,
                });
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.priority));
        Self {
            index: PathIndex::build(&entries),
            entries,
            identities: Arc::new(Identities::build(parts.identities)),
            global: parts.global,
            health: parts.health.clone(),
            dns: Arc::new(parts.dns.clone()),
            upstream_health: None,
            version: parts.version,
        }
    }

    /// Finds the highest-priority route matching the request.
    ///
    /// Small tables are scanned in order. Large ones go through [`PathIndex`]: only the entries
    /// whose plain prefix is a prefix of the request path, plus those without one, are tried, so
    /// the cost follows the path's length, not the number of routes.
    pub fn find<'p>(&self, input: &MatchInput<'p>) -> Option<RouteMatch<'_, 'p>> {
        if self.entries.len() <= INDEX_THRESHOLD {
            return self.entries.iter().find_map(|e| Self::try_entry(e, input));
        }
        let mut best: Option<(usize, RouteMatch<'_, 'p>)> = None;
        let mut consider = |list: &[usize]| {
            let limit = best.as_ref().map_or(usize::MAX, |(i, _)| *i);
            for &i in list.iter().take_while(|i| **i < limit) {
                if let Some(m) = Self::try_entry(&self.entries[i], input) {
                    best = Some((i, m));
                    return;
                }
            }
        };
        consider(&self.index.unindexed);
        for &len in &self.index.prefix_lengths {
            if len > input.path.len() {
                break;
            }
            if let Some(list) = input
                .path
                .get(..len)
                .and_then(|p| self.index.by_prefix.get(p))
            {
                consider(list);
            }
        }
        best.map(|(_, m)| m)
    }

    fn try_entry<'s, 'p>(
        entry: &'s RouteEntry,
        input: &MatchInput<'p>,
    ) -> Option<RouteMatch<'s, 'p>> {
        let r = &entry.route;
        if !r.methods.is_empty() && !r.methods.contains(input.method) {
            return None;
        }
        if !r.hosts.is_empty()
            && !r
                .hosts
                .iter()
                .any(|h| h.matches(input.host, input.host_with_port))
        {
            return None;
        }
        if !r.snis.is_empty()
            && !input
                .sni
                .is_some_and(|sni| r.snis.iter().any(|s| s.matches(sni, sni)))
        {
            return None;
        }
        if !r.headers.iter().all(|(name, values)| {
            (input.header)(name)
                .is_some_and(|v| values.iter().any(|want| want.eq_ignore_ascii_case(&v)))
        }) {
            return None;
        }
        let matched_prefix = match &entry.path {
            None => None,
            Some(PathPattern::Prefix(p)) => {
                if !input.path.starts_with(p.as_str()) {
                    return None;
                }
                Some(&input.path[..p.len()])
            }
            // Anchored at the start (`^(?:…)`), so the match is a prefix of the path.
            Some(PathPattern::Regex(re)) => Some(&input.path[..re.find(input.path)?.end()]),
        };
        let stripped = if r.route.strip_path {
            matched_prefix.filter(|p| !p.is_empty() && *p != "/")
        } else {
            None
        };
        Some(RouteMatch {
            entry,
            stripped,
            https_only: r.https_only,
        })
    }
}

/// Joins the service path and the request path as Kong does (`path_handling = v0`).
pub fn upstream_path<'p>(
    service_path: Option<&str>,
    stripped: Option<&str>,
    req_path: &'p str,
) -> Cow<'p, str> {
    match stripped {
        Some(prefix) => {
            let postfix = &req_path[prefix.len().min(req_path.len())..];
            let base = service_path.unwrap_or("/").trim_end_matches('/');
            if postfix.is_empty() {
                if base.is_empty() {
                    Cow::Borrowed("/")
                } else {
                    Cow::Owned(base.to_string())
                }
            } else if base.is_empty() && postfix.starts_with('/') {
                // A service without a path (the usual Kong setup): the rest of the request path.
                Cow::Borrowed(postfix)
            } else if postfix.starts_with('/') {
                Cow::Owned([base, postfix].concat())
            } else {
                Cow::Owned([base, "/", postfix].concat())
            }
        }
        None => match service_path {
            None => Cow::Borrowed(req_path),
            Some(base) => Cow::Owned([base.trim_end_matches('/'), req_path].concat()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{upstream_path, UpstreamOrigin};

    #[test]
    fn origins_leave_out_the_default_port_from_host_only() {
        let cases = [
            ("http", 80, "http://api.test:80", "api.test"),
            ("https", 443, "https://api.test:443", "api.test"),
            ("http", 8080, "http://api.test:8080", "api.test:8080"),
            ("https", 80, "https://api.test:80", "api.test:80"),
            ("grpcs", 443, "https://api.test:443", "api.test"),
        ];
        for (protocol, port, base, host) in cases {
            let service: crate::entities::Service = serde_json::from_value(serde_json::json!({
                "id": uuid::Uuid::new_v4(), "protocol": protocol, "host": "api.test",
                "port": port, "retries": 5, "connect_timeout": 60000,
                "write_timeout": 60000, "read_timeout": 60000
            }))
            .unwrap();
            let origin = UpstreamOrigin::of(&service);
            assert_eq!(&*origin.base, base, "{protocol}:{port}");
            assert_eq!(origin.host.unwrap(), host, "{protocol}:{port}");
        }
    }

    #[test]
    fn strip_path_table_of_kong() {
        let cases = [
            (Some("/svc"), Some("/api"), "/api/foo", "/svc/foo"),
            (Some("/svc"), Some("/api"), "/api", "/svc"),
            (Some("/svc"), Some("/api"), "/api/", "/svc/"),
            (Some("/svc/"), Some("/api"), "/api/foo", "/svc/foo"),
            (Some("/svc/"), Some("/api"), "/api", "/svc"),
            (Some("/"), Some("/api"), "/api/foo", "/foo"),
            (None, Some("/api"), "/api/foo", "/foo"),
            (None, Some("/api"), "/api", "/"),
            (Some("/svc"), None, "/api/foo", "/svc/api/foo"),
            (Some("/svc/"), None, "/api/foo", "/svc/api/foo"),
            (None, None, "/anything/x", "/anything/x"),
            (Some("/svc"), Some("/api"), "/apifoo", "/svc/foo"),
        ];
        for (svc, stripped, req, want) in cases {
            assert_eq!(
                upstream_path(svc, stripped, req),
                want,
                "service {svc:?} stripped {stripped:?} request {req}"
            );
        }
    }
}

#[cfg(test)]
mod index_tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use http::Method;
    use serde_json::json;

    use super::{CompiledRoute, MatchInput, RouterSnapshot, SnapshotParts};
    use crate::entities::Route;

    fn route(i: usize, paths: serde_json::Value, extra: serde_json::Value) -> Arc<CompiledRoute> {
        let mut doc = json!({
            "id": uuid::Uuid::new_v4(), "name": format!("r{i}"), "created_at": i,
            "protocols": ["http", "https"], "https_redirect_status_code": 426, "regex_priority": (i % 3),
            "strip_path": true, "preserve_host": false, "paths": paths,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            doc[k] = v.clone();
        }
        let route: Route = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(CompiledRoute::compile(route).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The index must pick exactly what the full ordered scan picks.
    #[test]
    fn indexed_lookup_agrees_with_the_ordered_scan() {
        let mut routes = Vec::new();
        for i in 0..400 {
            let paths = match i % 7 {
                0 => json!([format!("/api/v{}", i % 13)]),
                1 => json!([format!("/api/v{}/items", i % 11)]),
                2 => json!([format!("~/api/v{}/[0-9]+$", i % 5)]),
                3 => json!(["/"]),
                4 => json!([format!("/s{i}")]),
                5 => json!(null),
                _ => json!([format!("/api/v{}", i % 4), "/other"]),
            };
            let extra = match i % 5 {
                0 => json!({"methods": ["GET"]}),
                1 => json!({"hosts": ["a.test", "*.b.test"]}),
                2 => json!({"headers": {"x-v": ["1"]}}),
                _ => json!({}),
            };
            if paths.is_null() && extra.as_object().is_some_and(|o| o.is_empty()) {
                continue;
            }
            routes.push(route(i, paths, extra));
        }
        let services = HashMap::new();
        let snapshot = RouterSnapshot::build(SnapshotParts {
            routes,
            services: &services,
            chains: HashMap::new(),
            global: Default::default(),
            identities: crate::entities::IdentityParts::default(),
            upstreams: &HashMap::new(),
            targets: &HashMap::new(),
            rotations: &HashMap::new(),
            health: &Default::default(),
            dns: &HashMap::new(),
            upstream_tls: &HashMap::new(),
            version: 1,
        });
        assert!(snapshot.entries.len() > super::INDEX_THRESHOLD);
        let paths = [
            "/",
            "/api",
            "/api/v1",
            "/api/v1/items",
            "/api/v3/42",
            "/api/v10/items/x",
            "/s17",
            "/s170",
            "/other/x",
            "/nothing",
            "",
        ];
        let hosts = ["a.test", "x.b.test", "c.test"];
        let methods = [Method::GET, Method::POST];
        let header_sets: [Option<&str>; 2] = [Some("1"), None];
        for path in paths {
            for host in hosts {
                for method in &methods {
                    for hv in header_sets {
                        let header = |n: &str| {
                            if n == "x-v" {
                                hv.map(str::to_string)
                            } else {
                                None
                            }
                        };
                        let input = MatchInput {
                            sni: None,
                            method,
                            host,
                            host_with_port: host,
                            path,
                            header: &header,
                        };
                        let scanned = snapshot
                            .entries
                            .iter()
                            .position(|e| RouterSnapshot::try_entry(e, &input).is_some());
                        let indexed = snapshot.find(&input).map(|m| {
                            snapshot
                                .entries
                                .iter()
                                .position(|e| std::ptr::eq(e, m.entry))
                                .unwrap_or(usize::MAX)
                        });
                        assert_eq!(
                            indexed, scanned,
                            "path {path} host {host} method {method} header {hv:?}"
                        );
                    }
                }
            }
        }
    }
}
