//! Integration tests: each starts the real gateway on free ports and sends real HTTP.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acl;
mod admin;
mod bodies;
mod certificates;
mod cors;
mod deck;
mod declarative;
#[path = "../support/echo_servers.rs"]
mod echo_servers;
mod faults;
mod framing;
mod grpc;
mod hashed_secrets;
mod helpers;
mod introspection;
mod key_auth;
mod kong_conformance;
mod listeners;
#[path = "../support/log_receiver.rs"]
mod log_receiver;
mod logging;
mod metrics;
mod oauth2;
mod oauth2_deviations;
mod oauth2_rfc;
mod openapi;
mod opentelemetry;
mod postgres;
mod proxy;
mod rate_limiting;
mod readiness;
mod registry;
mod tls;
mod tutorial;
mod upstream_dns;
mod upstreams;
mod websocket;
