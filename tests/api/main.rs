//! Integration tests: each starts the real gateway on free ports and sends real HTTP.

mod admin;
mod helpers;
mod proxy;
