//! Logging: one tracing subscriber, text or JSON, filtered by `log_level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber (once; later calls are no-ops, as in tests).
pub fn init(settings: &Settings) {
    let level = match settings.log_level.as_str() {
        "notice" => "info",
        "crit" => "error",
        other => other,
    };
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in files and pipes they garble every line.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (log collector restarted, `serve | head`) must not take the gateway
        // down: reporting the failed write would eprintln! to the same closed pipe and panic.
        .log_internal_errors(false);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
