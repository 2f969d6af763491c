//! What the host names of upstream targets and services resolved to, as the balancer compiles
//! them: the DNS refresher ([`crate::actors::dns_refresher`]) resolves each name in the
//! background when its record's TTL runs out, the config registry keeps the answers in an
//! [`AddressBook`] and rebuilds the router snapshot when one changes. Requests never wait for
//! DNS: they read addresses compiled into the snapshot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::entities::upstreams::{Address, AddressKind};

/// The last answer for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its A records (or AAAA records when it has no A record), sorted so that every node
    /// builds the same balancer.
    Addresses(Arc<[IpAddr]>),
    /// Its SRV records of the best (lowest) priority, each target resolved to its addresses
    /// (Kong's `dns_order` asks for SRV first): every address with the record's port and
    /// weight, sorted.
    Service(Arc<[SrvAddress]>),
    /// The name did not resolve (no such name, no record, or no name server answered): as in
    /// Kong, a target by this name takes no traffic until it resolves again, and a service by
    /// this name is answered `503 name resolution failed`.
    Failed,
}

/// One address of an SRV answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvAddress {
    /// An address the record's target resolved to.
    pub ip: IpAddr,
    /// The record's port (0: the target's own, as Kong reads it).
    pub port: u16,
    /// The record's target name (without the final dot), `Host` under `use_srv_name`.
    pub name: Arc<str>,
    /// The record's weight (0 counted as 1, as Kong's balancer counts it).
    pub weight: u32,
}

impl Resolution {
    /// The answer of a lookup that found `addresses` (sorted and deduplicated here; none is
    /// [`Resolution::Failed`], as Kong treats an empty answer).
    pub fn of(mut addresses: Vec<IpAddr>) -> Self {
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() {
            Self::Failed
        } else {
            Self::Addresses(addresses.into())
        }
    }
}

/// The answers by host name (lower case). A name not in the book has not been answered yet: it
/// is connected to by name until its first answer arrives.
pub type AddressBook = HashMap<Arc<str>, Resolution>;

/// One place a target or a service's host is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// Address (or, before a name's first answer, the name) to connect to.
    pub host: String,
    /// An SRV record's port, which replaces the configured one.
    pub port: Option<u16>,
    /// An SRV record's weight, which replaces the target's.
    pub weight: Option<u32>,
    /// An SRV record's target name (`Host` under the upstream's `use_srv_name`).
    pub srv_name: Option<Arc<str>>,
}

impl Reached {
    fn at(host: String) -> Self {
        Self {
            host,
            port: None,
            weight: None,
            srv_name: None,
        }
    }
}

/// Where a target or a service's host is reached: its address as written; a name's addresses
/// (with their SRV ports and weights) as it last resolved, or the name itself until its first
/// answer. `None` when the name failed to resolve (it is reached nowhere).
pub fn hosts_of(address: &Address, dns: &AddressBook) -> Option<Vec<Reached>> {
    if address.kind != AddressKind::Name {
        return Some(vec![Reached::at(address.host.clone())]);
    }
    match dns.get(address.host.to_ascii_lowercase().as_str()) {
        None => Some(vec![Reached::at(address.host.clone())]),
        Some(Resolution::Failed) => None,
        Some(Resolution::Addresses(list)) => {
            Some(list.iter().map(|ip| Reached::at(ip.to_string())).collect())
        }
        Some(Resolution::Service(list)) => Some(
            list.iter()
                .map(|srv| Reached {
                    host: srv.ip.to_string(),
                    port: (srv.port != 0).then_some(srv.port),
                    weight: Some(srv.weight),
                    srv_name: Some(srv.name.clone()),
                })
                .collect(),
        ),
    }
}

/// One address of a target as Kong's health endpoint names it and the health book keys it:
/// `host:port` (`[ip]:port` for IPv6).
pub fn address_key(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What Kong's health endpoint shows as a target's `dns`: the record type of its last answer
/// (`A`, `AAAA`; an address as written answers as its own record), `unknown` before the
/// first answer, the failure when it did not resolve.
pub fn record_kind(address: &Address, dns: &AddressBook) -> &'static str {
    let first = match address.kind {
        AddressKind::Ipv4 => return "A",
        AddressKind::Ipv6 => return "AAAA",
        AddressKind::Name => dns.get(address.host.to_ascii_lowercase().as_str()),
    };
    match first {
        None => "unknown",
        Some(Resolution::Failed) => "name resolution failed",
        Some(Resolution::Addresses(list)) if list.first().is_some_and(IpAddr::is_ipv6) => "AAAA",
        Some(Resolution::Addresses(_)) => "A",
        Some(Resolution::Service(_)) => "SRV",
    }
}
