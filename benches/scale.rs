//! Scale bench (issue 7): token validation throughput and p99 with 1k stored tokens vs many
//! (100k by default; `BENCH_SCALE_TOKENS=1000000` for the issue's 1M, which takes minutes to
//! seed here). The cost of validating a token must not grow with the number of tokens.
//!
//! ```text
//! cargo bench --bench scale
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 BENCH_SCALE_TOKENS=20000 cargo bench --bench scale
//! ```
//!
//! The gateway has no bulk token import (`POST /oauth2_tokens` is not implemented), so tokens are
//! seeded through `client_credentials` as fast as the connections allow. Each validation request
//! carries one of ~1,000 tokens spread over the whole seeded range, in turn.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use common::admin::{bearer_request, client_credentials_request, token_of, Admin, RESOURCE};
use common::driver::{self, Load, Req};
use common::procs::{self, Gateway};
use common::report::{self, Refs, Row, Run};
use common::{fmt_secs, progress, BenchEnv};
use serde_json::json;

/// Distinct tokens in the validation mix.
const MIX_TOKENS: u64 = 1000;

fn main() -> ExitCode {
    if let Some(code) = common::run_role_if_asked() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Sized {
    name: String,
    gw: Gateway,
    mix: Vec<Req>,
    seeded: u64,
    seed_rate: f64,
}

/// A fresh gateway holding `n` tokens; the validation mix uses ~1,000 of them.
fn seeded_gateway(
    env: &BenchEnv,
    upstream: std::net::SocketAddr,
    n: u64,
    cap: Duration,
) -> Result<Sized> {
    let name = if n % 1000 == 0 && n < 1_000_000 {
        format!("{}k tokens", n / 1000)
    } else if n % 1_000_000 == 0 {
        format!("{}M tokens", n / 1_000_000)
    } else {
        format!("{n} tokens")
    };
    let gw = procs::start_gateway(&format!("portcullis {name}"), env, &[])?;
    Admin::oauth2_service(&gw, upstream)?;
    progress(format_args!(
        "{name}: seeding through client_credentials (at most {})",
        fmt_secs(cap.as_secs())
    ));
    let mut load = Load::new(
        gw.proxy,
        vec![client_credentials_request()],
        env.connections,
        cap,
    );
    load.max_requests = Some(n);
    load.keep_every = Some((n / MIX_TOKENS).max(1));
    let m = driver::run_rust(&load)?;
    progress(format_args!(
        "{name}: {} tokens in {:.1} s ({:.0}/s)",
        m.ok, m.elapsed, m.rps
    ));
    let mix: Vec<Req> = m
        .bodies
        .iter()
        .filter_map(|b| token_of(b))
        .map(|t| bearer_request(&t))
        .collect();
    if mix.is_empty() {
        bail!("{name}: no token was issued");
    }
    Ok(Sized {
        name,
        gw,
        mix,
        seeded: m.ok,
        seed_rate: m.rps,
    })
}

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    let big: u64 = std::env::var("BENCH_SCALE_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cap = Duration::from_secs(
        std::env::var("BENCH_SEED_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900),
    );
    let upstream = procs::start_upstream(&env)?;
    progress(format_args!(
        "upstream: {} on {}",
        upstream.kind, upstream.addr
    ));
    let sizes = [1000u64.min(big), big];
    let mut targets = Vec::new();
    for n in sizes {
        targets.push(seeded_gateway(&env, upstream.addr, n, cap)?);
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let per_run = env.warmup + env.seconds;
    let total = targets.len() * env.rounds;
    let mut done = 0;
    let mut driver_name = "";
    for round in 1..=env.rounds {
        for (i, t) in targets.iter().enumerate() {
            let mut load = Load::new(t.gw.proxy, t.mix.clone(), env.connections, env.warmup());
            driver_name = driver::driver_for(&load, env.force_rust_driver);
            progress(format_args!(
                "round {round}/{}: {} via {driver_name}, about {} left",
                env.rounds,
                t.name,
                fmt_secs((total - done) as u64 * per_run)
            ));
            if env.warmup > 0 {
                driver::run(&load, env.force_rust_driver)?;
            }
            load.duration = env.duration();
            let cpu0 = t.gw.proc.cpu_seconds();
            let m = driver::run(&load, env.force_rust_driver)?;
            let cpu = t.gw.proc.cpu_seconds() - cpu0;
            progress(format_args!(
                "  {}: {:.0} req/s, p99 {:.2} ms, {} errors",
                t.name, m.rps, m.p99_ms, m.errors
            ));
            let cpu_s_per_1k = (m.ok > 0).then(|| cpu / m.ok as f64 * 1000.0);
            runs[i].push(Run {
                round,
                measured: m,
                cpu_s_per_1k,
            });
            done += 1;
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(runs)
        .map(|(t, runs)| Row::from_runs(&t.name, runs, Some(t.gw.proc.peak_rss_mib())))
        .collect();
    let small = rows.first().map(|r| r.target.clone()).unwrap_or_default();
    let title = format!(
        "scale: GET {RESOURCE}, each request one of ~{MIX_TOKENS} valid tokens in turn, {} connections, {} s × {} round(s) (median), driver {driver_name}; RSS includes the stored tokens",
        env.connections, env.seconds, env.rounds
    );
    report::print_table(
        &title,
        &rows,
        &Refs {
            throughput: &[("1k", &small)],
            p99: Some(("1k", &small)),
        },
    );
    let seeded: Vec<_> = targets
        .iter()
        .map(|t| json!({"target": t.name, "tokens": t.seeded, "seed_tokens_per_s": t.seed_rate, "mix_tokens": t.mix.len()}))
        .collect();
    let settings = json!({
        "seconds": env.seconds, "rounds": env.rounds, "connections": env.connections,
        "warmup": env.warmup, "gateway_workers": env.workers, "driver": driver_name,
        "upstream": upstream.kind, "seeded": seeded,
    });
    let json_path = report::write_json("scale", settings, &rows)?;
    let svg_path = report::write_svg("scale", "Token validation: 1k vs many stored tokens", &rows)?;
    println!(
        "\nwritten: {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}
