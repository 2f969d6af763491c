//! The single writers: the config registry (configuration → router snapshot) and the token
//! lifecycle (expiry sweeps).

pub mod registry;
pub mod token_lifecycle;
