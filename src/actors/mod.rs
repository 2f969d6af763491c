//! The single writers: the config registry (configuration → router snapshot), the token
//! lifecycle (expiry sweeps) and the cluster sync (other nodes' changes → caches and snapshot);
//! beside them the active health checkers and the DNS refresher (target names → addresses),
//! which report to the registry.

pub mod cluster_sync;
pub mod dns_refresher;
pub mod health_checker;
pub mod registry;
pub mod token_lifecycle;
