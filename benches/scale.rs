//! Scale bench: token validation throughput and p99 with 1k stored tokens vs many
//! (100k by default; `BENCH_SCALE_TOKENS=1000000` for 1M, which takes minutes to
//! seed here). The cost of validating a token must not grow with the number of tokens.
//!
//! ```text
//! cargo bench --bench scale
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 BENCH_SCALE_TOKENS=20000 cargo bench --bench scale
//! ```
//!
//! The gateway has no bulk token import, so tokens are seeded through `client_credentials` as fast
//! as the connections allow. Each validation request carries one of ~1,000 tokens spread over the
//! whole seeded range, in turn.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use common::admin::{bearer_request, client_credentials_request, token_of, Admin, RESOURCE};
use common::driver::{self, Load, Req};
use common::procs::{self, Gateway};
use common::report::{self, Refs, Row};
use common::{fmt_secs, progress, BenchEnv, RoundTarget};
use serde_json::json;

/// Distinct tokens in the validation mix.
const MIX_TOKENS: u64 = 1000;

fn main() -> ExitCode {
    common::bench_main("scale", run)
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
    let name = if n.is_multiple_of(1000) && n < 1_000_000 {
        format!("{}k tokens", n / 1000)
    } else if n.is_multiple_of(1_000_000) {
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
    let round_targets: Vec<RoundTarget<'_>> = targets
        .iter()
        .map(|t| RoundTarget {
            name: &t.name,
            addr: t.gw.proxy,
            requests: &t.mix,
            proc: Some(&t.gw.proc),
            warmup: true,
            tls: None,
            h2: false,
            h2_streams: 1,
            connections: env.connections,
        })
        .collect();
    let (runs, driver_name) = common::measure_rounds(&env, &round_targets)?;
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
    let seeded: Vec<_> = targets
        .iter()
        .map(|t| json!({"target": t.name, "tokens": t.seeded, "seed_tokens_per_s": t.seed_rate, "mix_tokens": t.mix.len()}))
        .collect();
    let settings = json!({
        "seconds": env.seconds, "rounds": env.rounds, "connections": env.connections,
        "warmup": env.warmup, "gateway_workers": env.workers, "driver": driver_name,
        "upstream": upstream.kind, "seeded": seeded,
    });
    report::publish(
        "scale",
        &title,
        &Refs {
            throughput: &[("1k", &small)],
            p99: Some(("1k", &small)),
            same_mix: &[],
        },
        "Token validation: 1k vs many stored tokens",
        settings,
        &rows,
    )
}
