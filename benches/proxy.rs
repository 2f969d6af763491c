//! Proxy load bench (issue 7): the gateway side by side with the direct upstream and nginx,
//! measured in the same run, in turn, with the same request mix and concurrency.
//!
//! ```text
//! cargo bench --bench proxy                              # 64 connections, 2 s warm-up + 10 s, 3 rounds
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 cargo bench --bench proxy   # quick look
//! ```
//!
//! Targets, each one function (`Setup`); the ones this build cannot run yet say what they need.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;
use common::admin::{Admin, RESOURCE};
use common::driver::{self, Load, Req};
use common::procs::{self, Proc, Upstream};
use common::report::{self, Refs, Row, Run};
use common::{fmt_secs, progress, BenchEnv};
use serde_json::json;

/// A target ready to be measured.
struct Target {
    /// Where the load goes.
    addr: SocketAddr,
    /// The process whose CPU and RSS are reported (the proxy); `None` for the direct target.
    proc: Option<Proc>,
    /// A bearer token this target accepts (the mix carries it for every target).
    token: Option<String>,
    /// A request mix of its own, when the target needs one (cold tokens: one token per
    /// request); otherwise the shared mix.
    requests: Option<Vec<Req>>,
}

enum Setup {
    Ready(Target),
    Skipped(String),
}

struct Ctx<'a> {
    env: &'a BenchEnv,
    upstream: &'a Upstream,
}

type SetupFn = fn(&Ctx<'_>) -> Result<Setup>;

/// Every target, in the order of the table.
const TARGETS: &[(&str, SetupFn)] = &[
    ("direct", direct),
    ("nginx", nginx_proxy),
    ("portcullis", portcullis_plain),
    ("oauth2 memory", oauth2_memory),
    ("oauth2 pg+redis warm", oauth2_pg_redis_warm),
    ("oauth2 pg+redis cold", oauth2_pg_redis_cold),
    ("introspection cached", introspection_cached),
];

/// Target 1: Straight to the upstream: the ceiling.
fn direct(ctx: &Ctx<'_>) -> Result<Setup> {
    Ok(Setup::Ready(Target {
        addr: ctx.upstream.addr,
        proc: None,
        token: None,
        requests: None,
    }))
}

/// Target 2: nginx as a plain reverse proxy with upstream keep-alive (perf-ceiling.md's nginx-w1).
fn nginx_proxy(ctx: &Ctx<'_>) -> Result<Setup> {
    if procs::nginx().is_none() {
        return Ok(Setup::Skipped(
            "needs nginx (apt-get install nginx-light)".into(),
        ));
    }
    let (addr, proc) = procs::start_nginx_proxy(ctx.upstream.addr)?;
    Ok(Setup::Ready(Target {
        addr,
        proc: Some(proc),
        token: None,
        requests: None,
    }))
}

/// Target 3: The gateway with a service and a route, no plugin.
fn portcullis_plain(ctx: &Ctx<'_>) -> Result<Setup> {
    let gw = procs::start_gateway("portcullis", ctx.env, &[])?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.expose(ctx.upstream.addr)?;
    admin.wait_ready(&[])?;
    Ok(Setup::Ready(Target {
        addr: gw.proxy,
        proc: Some(gw.proc),
        token: None,
        requests: None,
    }))
}

/// Target 4: The gateway with the `oauth2` plugin, `database = memory`, one valid bearer token.
fn oauth2_memory(ctx: &Ctx<'_>) -> Result<Setup> {
    let gw = procs::start_gateway(
        "portcullis oauth2",
        ctx.env,
        &[("PORTCULLIS_DATABASE", "memory")],
    )?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.expose(ctx.upstream.addr)?;
    admin.enable_oauth2()?;
    let token = admin.client_credentials_token()?;
    admin.wait_ready(&[("authorization".into(), format!("Bearer {token}"))])?;
    Ok(Setup::Ready(Target {
        addr: gw.proxy,
        proc: Some(gw.proc),
        token: Some(token),
        requests: None,
    }))
}

/// Target 5: `oauth2` on Postgres + Redis, the token warm in the near cache. To add when the stores
/// land: `start_gateway` with `PORTCULLIS_DATABASE=postgres`, `PORTCULLIS_PG_*` from
/// `PORTCULLIS_TEST_PG`, `PORTCULLIS_REDIS_URL` from `PORTCULLIS_TEST_REDIS`, then as
/// [`oauth2_memory`].
fn oauth2_pg_redis_warm(_ctx: &Ctx<'_>) -> Result<Setup> {
    Ok(Setup::Skipped(
        "needs the Postgres + Redis token stores (database = postgres is not in this build yet)"
            .into(),
    ))
}

/// Target 6: Same, cold: each request a different valid token out of 100k issued. To add: issue the
/// tokens as `benches/scale.rs` does and return them as the target's own `requests`.
fn oauth2_pg_redis_cold(_ctx: &Ctx<'_>) -> Result<Setup> {
    Ok(Setup::Skipped(
        "needs the Postgres + Redis token stores (database = postgres is not in this build yet)"
            .into(),
    ))
}

/// Target 7: `oauth2-introspection` against the real third-party authorization server, cached.
fn introspection_cached(_ctx: &Ctx<'_>) -> Result<Setup> {
    Ok(Setup::Skipped(
        "needs the third-party introspection server set up for benches (not on this branch yet)"
            .into(),
    ))
}

fn main() -> ExitCode {
    if let Some(code) = common::run_role_if_asked() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    let upstream = procs::start_upstream(&env)?;
    progress(format_args!(
        "upstream: {} on {} ({} connections, {} s warm-up + {} s per run, {} round(s))",
        upstream.kind, upstream.addr, env.connections, env.warmup, env.seconds, env.rounds
    ));
    let ctx = Ctx {
        env: &env,
        upstream: &upstream,
    };
    let mut setups = Vec::new();
    for (name, setup) in TARGETS {
        progress(format_args!("setting up {name}"));
        let s = match setup(&ctx) {
            Ok(s) => s,
            Err(e) => {
                progress(format_args!("{name}: setup failed: {e:#}"));
                Setup::Skipped(format!("setup failed: {e:#}"))
            }
        };
        if let Setup::Skipped(why) = &s {
            progress(format_args!("{name}: skipped: {why}"));
        }
        setups.push((*name, s));
    }

    // The same mix for every target: the resource with the oauth2 target's bearer token (the
    // other targets forward the header untouched).
    let token = setups
        .iter()
        .find_map(|(_, s)| match s {
            Setup::Ready(t) => t.token.clone(),
            Setup::Skipped(_) => None,
        })
        .unwrap_or_else(|| "0123456789abcdef0123456789abcdef".into());
    let mix = vec![Req::get(RESOURCE).header("authorization", &format!("Bearer {token}"))];

    let ready: Vec<usize> = (0..setups.len())
        .filter(|i| matches!(setups[*i].1, Setup::Ready(_)))
        .collect();
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    let per_run = env.warmup + env.seconds;
    let total = ready.len() * env.rounds;
    let mut done = 0;
    let mut driver_name = "";
    for round in 1..=env.rounds {
        for &i in &ready {
            let (name, Setup::Ready(t)) = &setups[i] else {
                continue;
            };
            let requests = t.requests.clone().unwrap_or_else(|| mix.clone());
            let mut load = Load::new(t.addr, requests, env.connections, env.warmup());
            driver_name = driver::driver_for(&load, env.force_rust_driver);
            progress(format_args!(
                "round {round}/{}: {name} via {driver_name}, about {} left",
                env.rounds,
                fmt_secs((total - done) as u64 * per_run)
            ));
            if env.warmup > 0 {
                driver::run(&load, env.force_rust_driver)?;
            }
            load.duration = env.duration();
            let cpu0 = t.proc.as_ref().map(Proc::cpu_seconds);
            let m = driver::run(&load, env.force_rust_driver)?;
            let cpu = t
                .proc
                .as_ref()
                .map(Proc::cpu_seconds)
                .zip(cpu0)
                .map(|(b, a)| b - a);
            let ok = m.rps * m.elapsed;
            let cpu_s_per_1k = cpu.filter(|_| ok > 0.0).map(|c| c / ok * 1000.0);
            progress(format_args!(
                "  {name}: {:.0} req/s, p99 {:.2} ms, {} errors",
                m.rps, m.p99_ms, m.errors
            ));
            runs[i].push(Run {
                round,
                measured: m,
                cpu_s_per_1k,
            });
            done += 1;
        }
    }

    let rows: Vec<Row> = setups
        .iter()
        .zip(runs)
        .map(|((name, s), runs)| match s {
            Setup::Ready(t) => Row::from_runs(name, runs, t.proc.as_ref().map(Proc::peak_rss_mib)),
            Setup::Skipped(why) => Row::skipped(name, why.clone()),
        })
        .collect();
    let title = format!(
        "proxy: GET {RESOURCE} with a bearer token, {} connections, {} s × {} round(s) (median), driver {driver_name}, upstream {}; CPU and RSS are the proxy's",
        env.connections, env.seconds, env.rounds, upstream.kind
    );
    report::print_table(
        &title,
        &rows,
        &Refs {
            throughput: &[("direct", "direct"), ("nginx", "nginx")],
            p99: Some(("nginx", "nginx")),
        },
    );
    let settings = json!({
        "seconds": env.seconds, "rounds": env.rounds, "connections": env.connections,
        "warmup": env.warmup, "gateway_workers": env.workers, "driver": driver_name,
        "upstream": upstream.kind, "request": format!("GET {RESOURCE}, Authorization: Bearer <token>"),
    });
    let json_path = report::write_json("proxy", settings, &rows)?;
    let svg_path = report::write_svg("proxy", "Portcullis vs direct vs nginx", &rows)?;
    println!(
        "\nwritten: {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}
