//! What the host names of upstream targets and services resolved to, as the balancer compiles
//! them: the DNS refresher ([`crate::actors::dns_refresher`]) resolves each name in the
//! background when its record's TTL runs out, the config registry keeps the answers in an
//! [`AddressBook`] and rebuilds the router snapshot when one changes. Requests never wait for
//! DNS: they read addresses compiled into the snapshot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The last answer for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its A records (or AAAA records when it has no A record), sorted so that every node
    /// builds the same balancer.
    Addresses(Arc<[IpAddr]>),
    /// The name did not resolve (no such name, no record, or no name server answered): as in
    /// Kong, a target by this name takes no traffic until it resolves again, and a service by
    /// this name is answered `503 name resolution failed`.
    Failed,
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
