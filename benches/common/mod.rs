//! Code shared by the load benches (`proxy`, `tokens`, `scale`): bench settings from the
//! environment, the processes under test (upstream, nginx, the gateway), the load driver (wrk or
//! our own), per-process CPU and memory, and the report (table, JSON, SVG).
//!
//! A load bench is a program that prints figures: it never fails because the machine was slow.
//! It aborts (with a one-line reason) only when its setup fails.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

pub mod admin;
pub mod driver;
pub mod procs;
pub mod report;
pub mod stores;

use std::path::PathBuf;
use std::time::Duration;

/// Bench settings, read from `BENCH_*` variables so runs can be shortened while developing.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    /// Measured seconds per run (`BENCH_SECONDS`, default 10).
    pub seconds: u64,
    /// Rounds; each target is measured once per round, the median is reported
    /// (`BENCH_ROUNDS`, default 3).
    pub rounds: usize,
    /// Keep-alive connections (`BENCH_CONNECTIONS`, default 64).
    pub connections: usize,
    /// Unrecorded warm-up seconds before each measured run (`BENCH_WARMUP`, default 2).
    pub warmup: u64,
    /// Gateway worker threads (`BENCH_GATEWAY_WORKERS`, default 1, like nginx with one worker).
    pub workers: usize,
    /// Use our Rust driver even when wrk is installed (`BENCH_DRIVER=rust`).
    pub force_rust_driver: bool,
    /// Upstream kind (`BENCH_UPSTREAM=hyper|nginx`; default nginx when installed).
    pub upstream: Option<String>,
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl BenchEnv {
    /// Reads the `BENCH_*` variables.
    pub fn from_env() -> Self {
        Self {
            seconds: var("BENCH_SECONDS", 10u64).max(1),
            rounds: var("BENCH_ROUNDS", 3usize).max(1),
            connections: var("BENCH_CONNECTIONS", 64usize).max(1),
            warmup: var("BENCH_WARMUP", 2u64),
            workers: var("BENCH_GATEWAY_WORKERS", 1usize).max(1),
            force_rust_driver: std::env::var("BENCH_DRIVER").is_ok_and(|v| v == "rust"),
            upstream: std::env::var("BENCH_UPSTREAM").ok(),
        }
    }

    /// Measured duration of one run.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// Warm-up duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup)
    }
}

/// `target/bench-results/`, created on demand.
///
/// # Errors
/// The directory cannot be created.
pub fn results_dir() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Progress line on stderr.
pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// Formats seconds as `1m05s`.
pub fn fmt_secs(secs: u64) -> String {
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Median of the values (NaN-free input); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// When this bench executable was started as one of the processes under test (the gateway or
/// the fixed-response upstream), runs that role and returns its exit code. Benches call this
/// first thing in `main`, so a bench can spawn itself as a separate, separately measured process.
pub fn run_role_if_asked() -> Option<std::process::ExitCode> {
    let role = std::env::var("BENCH_ROLE").ok()?;
    let result = match role.as_str() {
        "gateway" => procs::serve_gateway(),
        "upstream" => procs::serve_upstream(),
        other => Err(anyhow::anyhow!("unknown BENCH_ROLE {other}")),
    };
    Some(match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error ({role}): {e:#}");
            std::process::ExitCode::FAILURE
        }
    })
}
