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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use driver::{Load, Req};
use procs::Proc;
use report::Run;

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
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// The `main` of every load bench: the process role this executable was spawned for, if any,
/// otherwise `run`, with its error (if it fails) on one line as `<bench> bench: <error>`.
pub fn bench_main(bench: &str, run: fn() -> anyhow::Result<()>) -> ExitCode {
    if let Some(code) = run_role_if_asked() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench} bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// When this bench executable was started as one of the processes under test (the gateway or
/// the fixed-response upstream), runs that role and returns its exit code. [`bench_main`] calls
/// this first, so a bench can spawn itself as a separate, separately measured process.
pub fn run_role_if_asked() -> Option<ExitCode> {
    let role = std::env::var("BENCH_ROLE").ok()?;
    let result = match role.as_str() {
        "gateway" => procs::serve_gateway(),
        "upstream" => procs::serve_upstream(),
        other => Err(anyhow::anyhow!("unknown BENCH_ROLE {other}")),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error ({role}): {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// Runs `load` once, charging the CPU that `proc` (the process under test, if any) spent on it
/// to the successful responses.
///
/// # Errors
/// The driver failed.
pub fn measure(
    env: &BenchEnv,
    proc: Option<&Proc>,
    load: &Load,
    round: usize,
) -> anyhow::Result<Run> {
    let cpu_before = proc.map(Proc::cpu_seconds);
    let m = driver::run(load, env.force_rust_driver)?;
    let cpu = proc
        .map(Proc::cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let cpu_s_per_1k = cpu.filter(|_| m.ok > 0).map(|c| c / m.ok as f64 * 1000.0);
    Ok(Run {
        round,
        measured: m,
        cpu_s_per_1k,
    })
}

/// One target of [`measure_rounds`].
pub struct RoundTarget<'a> {
    /// Its name in the progress lines.
    pub name: &'a str,
    /// Where the load goes.
    pub addr: SocketAddr,
    /// The request mix, sent round robin.
    pub requests: &'a [Req],
    /// The process whose CPU is reported (the proxy); `None` for the direct upstream.
    pub proc: Option<&'a Proc>,
    /// Whether an unrecorded warm-up run (when `BENCH_WARMUP` > 0) precedes each measured run.
    pub warmup: bool,
    /// Speak TLS with this client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// HTTP/2 over TLS (`h2load`).
    pub h2: bool,
    /// HTTP/2 streams in flight per connection.
    pub h2_streams: usize,
    /// Connections of the load.
    pub connections: usize,
}

/// Measures every target once per round, in turn, so that a machine that drifts during the bench
/// affects them all alike (every other round in reverse order, so that a drift within a round
/// does not always favour the first targets); returns each target's runs, and the driver of the
/// last run.
///
/// # Errors
/// The driver failed.
pub fn measure_rounds(
    env: &BenchEnv,
    targets: &[RoundTarget<'_>],
) -> anyhow::Result<(Vec<Vec<Run>>, &'static str)> {
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let total = targets.len() * env.rounds;
    let mut done = 0;
    let mut driver_name = "";
    for round in 1..=env.rounds {
        for i in round_order(round, targets.len()) {
            let (run, driver) = measure_target(env, &targets[i], round, total - done)?;
            runs[i].push(run);
            driver_name = driver;
            done += 1;
        }
    }
    Ok((runs, driver_name))
}

/// The order in which `round` visits `n` targets: as listed in odd rounds, reversed in even
/// ones.
pub fn round_order(round: usize, n: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    }
}

/// One run of `t` in `round` (after its unrecorded warm-up run, when it has one), with progress
/// lines; `left` runs remain, this one included. Returns the run and the driver that made it.
///
/// # Errors
/// The driver failed.
pub fn measure_target(
    env: &BenchEnv,
    t: &RoundTarget<'_>,
    round: usize,
    left: usize,
) -> anyhow::Result<(Run, &'static str)> {
    let mut load = Load::new(t.addr, t.requests.to_vec(), t.connections, env.warmup());
    load.tls.clone_from(&t.tls);
    load.h2 = t.h2;
    load.h2_streams = t.h2_streams;
    let driver_name = driver::driver_for(&load, env.force_rust_driver);
    progress(format_args!(
        "round {round}/{}: {} via {driver_name}, about {} left",
        env.rounds,
        t.name,
        fmt_secs(left as u64 * (env.warmup + env.seconds))
    ));
    if env.warmup > 0 && t.warmup {
        driver::run(&load, env.force_rust_driver)?;
    }
    load.duration = env.duration();
    let run = measure(env, t.proc, &load, round)?;
    let m = &run.measured;
    progress(format_args!(
        "  {}: {:.0} req/s, p99 {:.2} ms, {} errors",
        t.name, m.rps, m.p99_ms, m.errors
    ));
    Ok((run, driver_name))
}
