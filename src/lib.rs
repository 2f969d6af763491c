//! Portcullis: an API gateway that speaks Kong's admin API and turns upstream services into
//! OAuth 2.0 protected resources.
//!
//! # Layout
//! - [`config`]: layered typed settings (defaults → TOML file → `PORTCULLIS_*`), secrets masked.
//! - [`startup`]: `Application::build`, binding listeners (port 0 allowed) for `main` and tests;
//!   opens the stores (memory, or Postgres after checking its migrations, with the near cache and
//!   Redis tiers in front of its token store).
//! - [`migrations`]: the `portcullis migrations …` commands over the stores crate's migrator.
//! - [`declarative_db`]: the `portcullis config db_import` / `db_export` commands: a declarative
//!   file into and out of the Postgres store.
//! - [`error`]: the error enums of the admin API, the config registry and the proxy, and their one
//!   mapping to HTTP.
//! - [`schema`]: the declarative schema language (Kong-shaped validation errors, defaults).
//! - [`entities`]: services, routes, consumers, plugins, upstreams and targets, certificates,
//!   SNIs and CA certificates: schemas (with Kong's PEM checks) and typed views; the views of the plugins' credentials (OAuth clients, API keys, group memberships)
//!   and the consumers and credentials a snapshot hands to plugins ([`entities::Identities`]).
//! - [`forms`]: request bodies (JSON, url-encoded and multipart forms) as Kong reads them, for the
//!   admin API and the OAuth endpoints alike.
//! - [`admin`]: the Kong-compatible admin API, the plugins' admin endpoints included, its
//!   OpenAPI document (`GET /openapi.json`) generated from the dispatcher's tables and the schemas,
//!   and declarative configuration (DB-less mode, `config parse`).
//! - [`router`]: the compiled, immutable route table read lock-free by the proxy, with each
//!   service's destinations (its own origin, or its upstream's targets — host names expanded to
//!   the addresses they last resolved to — chosen by weighted round-robin or consistent hashing).
//! - [`proxy`]: the request pipeline (match → plugins → forward → respond) and header rules.
//! - [`plugin_api`]: the plugin contract (`Plugin`, `PluginRuntime`, `RequestCtx`, `Flow`,
//!   `Scheme`, `Exchange`, `PluginSlots`), a leaf the router, the proxy and the plugins share.
//! - [`plugins`]: the built-in plugins (`oauth2`, `oauth2-introspection`, `key-auth`, `acl`,
//!   `cors`, `rate-limiting`, `request-termination`, `http-log`, `file-log`, `opentelemetry`),
//!   the log plugins' serializer and bounded queue, and the registry of the kinds this build
//!   offers.
//! - [`actors`]: the single writers: config registry, token lifecycle, cluster sync (other nodes'
//!   changes heard through Postgres LISTEN/NOTIFY → caches and router snapshot); the active
//!   health checkers and the DNS refresher (target host names re-resolved when their TTL ends).
//! - [`body`]: the body type of every answer the proxy listeners write.
//! - [`clock`]: the wall clock in unix seconds, a leaf every layer reads time from.
//! - [`gateway_headers`]: the headers the gateway adds of its own accord (`Server`, `Via`, the
//!   latencies, the request id) and which of them Kong's `headers` and `headers_upstream` keep.
//! - [`crypto`]: random tokens, digests, constant-time comparison, secret hashing.
//! - [`tls`]: rustls server and client configs, self-signed certificates, the proxy listeners'
//!   certificate choice by SNI, services' own upstream TLS settings, and their own error.
//! - [`telemetry`]: logging (text or JSON).
//! - [`metrics`]: the registry of one gateway: Kong's `prometheus` metrics, the proxy server's
//!   connection counters and the `portcullis_*` metrics, rendered for `GET /metrics`.
//! - [`status`]: the read-only status listener (`status_listen`): `GET /status`, `GET /metrics`.
//!
//! Layers, lowest first: `clock`, `crypto`, `gateway_headers`, `schema`, `tls` → `config`,
//! `entities`, `error`, `forms`, `metrics` → `telemetry`, `plugin_api` → `router` → `plugins`, `proxy` → `actors` → `admin` →
//! `status` → `startup` → `migrations`, `declarative_db`. Each module imports only from layers below it. A unit test
//! (`layers`) fails on an import cycle or a lower layer importing a higher one.
//!
//! Storage lives in the `portcullis-stores` crate (`stores/`).

/// The process allocator: mimalloc (feature `mimalloc`, on by default) is markedly cheaper than
/// glibc for the many short-lived per-request allocations of the proxy path.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod actors;
pub mod admin;
pub mod admin_token;
pub mod answer_headers;
pub mod body;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod declarative_db;
pub mod entities;
pub mod error;
pub mod forms;
pub mod gateway_headers;
pub mod kong_conf;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod migrations;
pub mod node_client;
pub mod plugin_api;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod schema;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod tls;
