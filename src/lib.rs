//! Portcullis: an API gateway that speaks Kong's admin API and turns upstream services into
//! OAuth 2.0 protected resources.
//!
//! # Layout
//! - [`config`]: layered typed settings (defaults → TOML file → `PORTCULLIS_*`), secrets masked.
//! - [`startup`]: `Application::build`, binding listeners (port 0 allowed) for `main` and tests;
//!   opens the stores (memory, or Postgres after checking its migrations, with the near cache and
//!   Redis tiers in front of its token store).
//! - [`migrations`]: the `portcullis migrations …` commands over the stores crate's migrator.
//! - [`error`]: the error enums of the admin API and the proxy, and their one mapping to HTTP.
//! - [`schema`]: the declarative schema language (Kong-shaped validation errors, defaults).
//! - [`entities`]: services, routes, consumers, plugins: schemas and typed views.
//! - [`admin`]: the Kong-compatible admin API.
//! - [`router`]: the compiled, immutable route table read lock-free by the proxy.
//! - [`proxy`]: the request pipeline (match → plugins → forward → respond) and header rules.
//! - [`plugins`]: the plugin framework and the built-in plugins (`oauth2`, `oauth2-introspection`,
//!   `request-termination`).
//! - [`actors`]: the single writers: config registry, token lifecycle, cluster sync (other nodes'
//!   changes heard through Postgres LISTEN/NOTIFY → caches and router snapshot).
//! - [`crypto`]: random tokens, digests, constant-time comparison, secret hashing.
//! - [`tls`]: rustls server configs, self-signed certificates.
//! - [`telemetry`]: logging (text or JSON).
//!
//!
//! Storage lives in the `portcullis-stores` crate (`stores/`).

/// The process allocator: mimalloc (feature `mimalloc`, on by default) is markedly cheaper than
/// glibc for the many short-lived per-request allocations of the proxy path.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod actors;
pub mod admin;
pub mod config;
pub mod crypto;
pub mod entities;
pub mod error;
pub mod migrations;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod schema;
pub mod startup;
pub mod telemetry;
pub mod tls;
