//! Integration tests: each starts the real gateway on free ports and sends real HTTP.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod faults;
mod helpers;
mod introspection;
mod kong_conformance;
mod oauth2;
mod postgres;
mod proxy;
mod tls;
mod tutorial;
