//! The compiled, immutable route table ([`RouterSnapshot`]) that request handlers read without
//! locks. The config registry actor rebuilds and swaps it after every change.
//!
//! Matching follows Kong's traditional_compatible router: every configured attribute must match,
//! and candidates are ordered by number of attributes, plain before wildcard hosts, header count,
//! regex before prefix, `regex_priority`, longest prefix, then age.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::Method;
use regex::Regex;
use uuid::Uuid;

use crate::entities::{Consumer, Route, Service};
use crate::plugins::oauth2::OAuthCredential;
use crate::plugins::PluginRuntime;

/// A route with its matchers compiled (regexes built once, hosts lower-cased).
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    methods: Vec<Method>,
    hosts: Vec<HostPattern>,
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
            route,
            methods,
            hosts,
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
    /// Its service, resolved at compile time.
    pub service: Option<Arc<Service>>,
    /// Its plugin chain.
    pub chain: Arc<PluginChain>,
    priority: (usize, bool, usize, bool, i64, usize, std::cmp::Reverse<i64>),
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
    /// Header lookup (lower-case name → first value).
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// A successful match.
pub struct RouteMatch<'a> {
    /// The matched entry.
    pub entry: &'a RouteEntry,
    /// The prefix removed when `strip_path` is on (`None` when nothing is stripped).
    pub stripped: Option<String>,
    /// Whether the route allows only https.
    pub https_only: bool,
}

/// Everything a request handler needs, immutable and shared.
#[derive(Default)]
pub struct RouterSnapshot {
    /// Matchers in priority order.
    pub entries: Vec<RouteEntry>,
    /// Consumers by id.
    pub consumers: HashMap<Uuid, Arc<Consumer>>,
    /// Consumers by username.
    pub consumers_by_username: HashMap<String, Arc<Consumer>>,
    /// OAuth 2.0 credentials by client_id.
    pub oauth2_by_client_id: HashMap<String, Arc<OAuthCredential>>,
    /// OAuth 2.0 credentials by id.
    pub oauth2_by_id: HashMap<Uuid, Arc<OAuthCredential>>,
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
    /// Consumers.
    pub consumers: Vec<Arc<Consumer>>,
    /// OAuth credentials.
    pub credentials: Vec<Arc<OAuthCredential>>,
    /// Version number.
    pub version: u64,
}

impl RouterSnapshot {
    /// Builds the ordered matcher list and lookup maps.
    pub fn build(parts: SnapshotParts<'_>) -> Self {
        let mut entries = Vec::new();
        for route in parts.routes {
            let service = route
                .route
                .service
                .and_then(|s| parts.services.get(&s.id).cloned());
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
        let consumers_by_username = parts
            .consumers
            .iter()
            .filter_map(|c| c.username.clone().map(|u| (u, c.clone())))
            .collect();
        Self {
            entries,
            consumers: parts.consumers.into_iter().map(|c| (c.id, c)).collect(),
            consumers_by_username,
            oauth2_by_client_id: parts
                .credentials
                .iter()
                .map(|c| (c.client_id.clone(), c.clone()))
                .collect(),
            oauth2_by_id: parts.credentials.into_iter().map(|c| (c.id, c)).collect(),
            version: parts.version,
        }
    }

    /// Finds the highest-priority route matching the request.
    pub fn find(&self, input: &MatchInput<'_>) -> Option<RouteMatch<'_>> {
        for entry in &self.entries {
            let r = &entry.route;
            if !r.methods.is_empty() && !r.methods.contains(input.method) {
                continue;
            }
            if !r.hosts.is_empty()
                && !r
                    .hosts
                    .iter()
                    .any(|h| h.matches(input.host, input.host_with_port))
            {
                continue;
            }
            if !r.headers.iter().all(|(name, values)| {
                (input.header)(name)
                    .is_some_and(|v| values.iter().any(|want| want.eq_ignore_ascii_case(&v)))
            }) {
                continue;
            }
            let matched_prefix = match &entry.path {
                None => None,
                Some(PathPattern::Prefix(p)) => {
                    if !input.path.starts_with(p.as_str()) {
                        continue;
                    }
                    Some(p.clone())
                }
                Some(PathPattern::Regex(re)) => match re.find(input.path) {
                    Some(m) => Some(m.as_str().to_string()),
                    None => continue,
                },
            };
            let stripped = if r.route.strip_path {
                matched_prefix.filter(|p| !p.is_empty() && p != "/")
            } else {
                None
            };
            return Some(RouteMatch {
                entry,
                stripped,
                https_only: r.https_only,
            });
        }
        None
    }

    /// Finds a consumer by id or username (the `anonymous` setting accepts either).
    pub fn consumer_by_id_or_name(&self, key: &str) -> Option<&Arc<Consumer>> {
        Uuid::parse_str(key)
            .ok()
            .and_then(|id| self.consumers.get(&id))
            .or_else(|| self.consumers_by_username.get(key))
    }
}

/// Joins the service path and the request path as Kong does (`path_handling = v0`).
pub fn upstream_path(service_path: Option<&str>, stripped: Option<&str>, req_path: &str) -> String {
    match stripped {
        Some(prefix) => {
            let postfix = &req_path[prefix.len().min(req_path.len())..];
            let base = service_path.unwrap_or("/").trim_end_matches('/');
            if postfix.is_empty() {
                if base.is_empty() {
                    "/".to_string()
                } else {
                    base.to_string()
                }
            } else if postfix.starts_with('/') {
                format!("{base}{postfix}")
            } else {
                format!("{base}/{postfix}")
            }
        }
        None => match service_path {
            None => req_path.to_string(),
            Some(base) => format!("{}{}", base.trim_end_matches('/'), req_path),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::upstream_path;

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
