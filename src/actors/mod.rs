//! The single writers: the config registry (configuration → router snapshot), the token
//! lifecycle (expiry sweeps) and the cluster sync (other nodes' changes → caches and snapshot).

pub mod cluster_sync;
pub mod health_checker;
pub mod registry;
pub mod token_lifecycle;
