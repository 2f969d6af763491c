//! Logging: one tracing subscriber, text or JSON, filtered by `log_level`.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Libraries whose debug and trace lines print request data: statement parameters (client
/// secrets, provision keys) in tokio-postgres. Their lines below `info` are dropped whatever
/// `log_level` says: no secret reaches a log at any level.
const QUIET_BELOW_INFO: &[&str] = &["tokio_postgres"];

/// Whether a line may be logged at all (see [`QUIET_BELOW_INFO`]).
fn not_secret_bearing(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || !QUIET_BELOW_INFO
            .iter()
            .any(|target| meta.target().starts_with(target))
}

/// actix-server announces its workers and each listener at `info`, lines the start-up log already
/// says once in its own words: only its warnings and errors are kept, unless `log_level` names it.
const ACTIX_SERVER: &str = "actix_server";

/// The filter for a validated `log_level`.
fn filter(settings: &Settings) -> EnvFilter {
    let mut directives = settings.log_filter().unwrap_or_else(|_| "info".into());
    if directives != "off" && !directives.contains(ACTIX_SERVER) {
        directives.push_str(",actix_server=warn");
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber (once; later calls are no-ops, as in tests).
pub fn init(settings: &Settings) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in files and pipes they garble every line.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (log collector restarted, `serve | head`) must not take the gateway
        // down: reporting the failed write would eprintln! to the same closed pipe and panic.
        .log_internal_errors(false);
    let quiet = tracing_subscriber::filter::filter_fn(not_secret_bearing);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().finish().with(quiet).try_init(),
        LogFormat::Text => builder.finish().with(quiet).try_init(),
    };
}
