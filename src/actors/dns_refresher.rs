//! Keeps the host names of upstream targets and services resolved, off the request path: the
//! config registry says which names it needs ([`Watch`]); the refresher resolves each new one at
//! once, then again when its record's TTL has run out (half a second after, as Kong's balancer
//! schedules its renewals), and a name that failed again after [`REQUERY_FAILED`] (Kong's
//! `requeryInterval`). It tells the registry only when an answer changed ([`Resolved`]); the
//! registry rebuilds the router snapshot with the new addresses. Names are resolved with
//! hickory's resolver against `dns_resolver`'s name servers, or the system's: SRV records
//! first, then A (or AAAA) records, as Kong's default `dns_order` (`LAST,SRV,A,CNAME`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use crate::router::dns::{Resolution, SrvAddress};

/// How long a name that failed to resolve waits before it is asked again (Kong's balancer
/// `REQUERY_INTERVAL`).
pub const REQUERY_FAILED: Duration = Duration::from_secs(30);

/// How long after its record expires a name is asked again (Kong schedules renewals half a
/// second after expiry, which also bounds the rate of TTL-0 names).
const AFTER_EXPIRY: Duration = Duration::from_millis(500);

/// Builds the resolver: `servers` (Kong's `dns_resolver`) over UDP with TCP for truncated
/// answers, or the system's configuration when there are none.
///
/// # Errors
/// The system's configuration cannot be read, or the resolver cannot be built (described).
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The names the registry needs resolved (lower case); the others are forgotten.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch(pub HashSet<Arc<str>>);

/// A name's answer changed (sent to the registry).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Resolved {
    /// The name (lower case).
    pub name: Arc<str>,
    /// Its new answer.
    pub resolution: Resolution,
}

/// The actor.
pub struct DnsRefresher {
    resolver: TokioResolver,
    registry: Recipient<Resolved>,
    /// Watched names, each with the generation it was watched under: the renewal of a name
    /// forgotten (and perhaps watched again since) stops.
    watched: HashMap<Arc<str>, u64>,
    /// The last answer of each watched name, as the registry has it.
    answers: HashMap<Arc<str>, Resolution>,
    generation: u64,
}

impl DnsRefresher {
    /// A refresher resolving with `resolver` and telling `registry` what changed.
    pub fn new(resolver: TokioResolver, registry: Recipient<Resolved>) -> Self {
        Self {
            resolver,
            registry,
            watched: HashMap::new(),
            answers: HashMap::new(),
            generation: 0,
        }
    }

    /// Resolves `name` now, reports a changed answer, and schedules the next query.
    fn query(&self, name: Arc<str>, generation: u64, ctx: &mut Context<Self>) {
        let resolver = self.resolver.clone();
        let asked = name.clone();
        let lookup = async move {
            match resolve(&resolver, &asked).await {
                Ok((resolution, valid_until)) => (
                    resolution,
                    valid_until.saturating_duration_since(Instant::now()) + AFTER_EXPIRY,
                ),
                Err(e) => {
                    tracing::warn!(name = %asked, error = %e, "DNS resolution failed; the name gets no traffic until it resolves");
                    (Resolution::Failed, REQUERY_FAILED)
                }
            }
        };
        ctx.spawn(
            lookup
                .into_actor(self)
                .map(move |(resolution, next), act, ctx| {
                    if act.watched.get(&name) != Some(&generation) {
                        return;
                    }
                    if act.answers.get(&name) != Some(&resolution) {
                        tracing::debug!(name = %name, ?resolution, "upstream target name resolved");
                        act.answers.insert(name.clone(), resolution.clone());
                        act.registry.do_send(Resolved {
                            name: name.clone(),
                            resolution,
                        });
                    }
                    ctx.run_later(next, move |act, ctx| {
                        if act.watched.get(&name) == Some(&generation) {
                            act.query(name, generation, ctx);
                        }
                    });
                }),
        );
    }
}

/// Resolves `asked` as Kong's default `dns_order` does: its SRV records first, else its A (or
/// AAAA) records. Returns the answer and until when it holds (the shortest TTL in it).
///
/// # Errors
/// The name does not parse, or has neither kind of record (described).
async fn resolve(resolver: &TokioResolver, asked: &str) -> Result<(Resolution, Instant), String> {
    // As written: host names may carry `_` (a label IDNA would refuse; Kong resolves them),
    // which the resolver's own parsing of a `&str` rejects.
    let name = Name::from_ascii(asked).map_err(|e| e.to_string())?;
    if let Some(found) = srv(resolver, &name).await {
        return found;
    }
    let found = resolver.lookup_ip(name).await.map_err(|e| e.to_string())?;
    Ok((Resolution::of(found.iter().collect()), found.valid_until()))
}

/// The SRV answer of `name`, when it has SRV records: the records of the best (lowest)
/// priority, each target resolved to its addresses, each address with the record's port and
/// weight (0 counted as 1, Kong's `SRV_0_WEIGHT`). `None` when the name has no SRV record.
async fn srv(
    resolver: &TokioResolver,
    name: &Name,
) -> Option<Result<(Resolution, Instant), String>> {
    let found = resolver.srv_lookup(name.clone()).await.ok()?;
    let records: Vec<_> = found
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let best = records.iter().map(|r| r.priority).min()?;
    let mut valid_until = found.valid_until();
    let mut addresses = Vec::new();
    let mut failures = Vec::new();
    for record in records.iter().filter(|r| r.priority == best) {
        match resolver.lookup_ip(record.target.clone()).await {
            Ok(ips) => {
                valid_until = valid_until.min(ips.valid_until());
                let name: Arc<str> = record.target.to_ascii().trim_end_matches('.').into();
                addresses.extend(ips.iter().map(|ip| SrvAddress {
                    ip,
                    port: record.port,
                    weight: u32::from(record.weight.max(1)),
                    name: name.clone(),
                }));
            }
            Err(e) => failures.push(format!("{}: {e}", record.target)),
        }
    }
    if addresses.is_empty() {
        return Some(Err(format!(
            "no SRV target resolved ({})",
            failures.join("; ")
        )));
    }
    addresses.sort_unstable();
    addresses.dedup();
    Some(Ok((Resolution::Service(addresses.into()), valid_until)))
}

impl Actor for DnsRefresher {
    type Context = Context<Self>;
}

impl Handler<Watch> for DnsRefresher {
    type Result = ();

    fn handle(&mut self, Watch(names): Watch, ctx: &mut Self::Context) {
        self.watched.retain(|name, _| names.contains(name));
        let watched = &self.watched;
        self.answers.retain(|name, _| watched.contains_key(name));
        for name in names {
            if self.watched.contains_key(&name) {
                continue;
            }
            self.generation += 1;
            self.watched.insert(name.clone(), self.generation);
            self.query(name, self.generation, ctx);
        }
    }
}
