//! Declarative bench: a Kong declarative file of 10,000 services (each with a route) and 10,000
//! consumers (each with a key-auth credential), plus the bench service and its route.
//!
//! - (a) the DB-less loader in process: parsing the text, then validating every entity and
//!   building the store that replaces the running configuration (`declarative::load_text`), the
//!   median of `BENCH_ROUNDS`;
//! - (b) `POST /config` of the same file to a running DB-less gateway while a client loop proxies
//!   `GET /api/items` through the bench route (present before and after): how long the POST
//!   takes, and what the load saw while it ran — its longest request, the longest gap between two
//!   answers, failed requests — next to the same load before the swap.
//!
//! ```text
//! cargo bench --bench declarative
//! BENCH_DECLARATIVE_ENTITIES=1000 BENCH_ROUNDS=1 cargo bench --bench declarative
//! ```
//!
//! The load is `BENCH_CONNECTIONS` keep-alive connections (8 unless set) from one thread; wrk
//! cannot say when each request started, so this bench uses its own loop. The gateway runs with
//! `client_max_body_size = 64m`: the file (1.8 MB) is over the default 1m.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::admin::{Admin, PREFIX, RESOURCE};
use common::driver::Measured;
use common::procs::{self, Gateway};
use common::report::{self, Refs, Row, Run};
use common::{median, progress, BenchEnv};
use hdrhistogram::Histogram;
use portcullis::admin::declarative;
use serde_json::{json, Value};

fn main() -> ExitCode {
    common::bench_main("declarative", run)
}

/// The file: `n` services with a route each, `n` consumers with a key-auth credential each, and
/// the bench service in front of `upstream`.
fn document(n: usize, upstream: SocketAddr) -> Value {
    let mut services = vec![json!({
        "name": "bench", "url": format!("http://{upstream}"),
        "routes": [{"name": "bench-route", "paths": [PREFIX]}],
    })];
    services.extend((0..n).map(|i| {
        json!({
            "name": format!("svc-{i}"), "url": format!("http://{upstream}/s{i}"),
            "routes": [{"name": format!("route-{i}"), "paths": [format!("/s/{i}")]}],
        })
    }));
    let consumers: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "username": format!("user-{i}"),
                "keyauth_credentials": [{"key": format!("bench-key-{i}")}],
            })
        })
        .collect();
    json!({"_format_version": "3.0", "services": services, "consumers": consumers})
}

/// The bench service alone (what runs before each swap).
fn small_document(upstream: SocketAddr) -> Value {
    document(0, upstream)
}

/// (a): parse, then validate + build, in process; seconds of each per round.
fn load_in_process(text: &str, rounds: usize) -> Result<Vec<(f64, f64)>> {
    let plugins = declarative::offline_plugins();
    let mut out = Vec::new();
    for round in 1..=rounds {
        let (parse, build) = actix_rt::System::new().block_on(async {
            let t = Instant::now();
            let doc = declarative::parse_text(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            let parse = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let loaded = declarative::load(&doc, &plugins)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let build = t.elapsed().as_secs_f64();
            drop(loaded);
            Ok::<_, anyhow::Error>((parse, build))
        })?;
        progress(format_args!(
            "in process, round {round}/{rounds}: parse {parse:.3} s, validate + build {build:.3} s"
        ));
        out.push((parse, build));
    }
    Ok(out)
}

/// One answer the load got: when its request started (since the load began), how long it took,
/// whether it succeeded.
#[derive(Clone, Copy)]
struct Answer {
    started: f64,
    ended: f64,
    ok: bool,
}

/// The client loop: `connections` keep-alive connections asking for `RESOURCE` until `stop`.
fn spawn_load(
    proxy: SocketAddr,
    connections: usize,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> std::thread::JoinHandle<Result<Vec<Answer>>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(connections)
                .timeout(Duration::from_secs(60))
                .build()?;
            let url = format!("http://{proxy}{RESOURCE}");
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
                    tokio::spawn(async move {
                        let mut answers = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let started = epoch.elapsed().as_secs_f64();
                            let ok = match http.get(&url).send().await {
                                Ok(r) => {
                                    let ok = r.status().is_success();
                                    r.bytes().await.is_ok() && ok
                                }
                                Err(_) => false,
                            };
                            let ended = epoch.elapsed().as_secs_f64();
                            answers.push(Answer { started, ended, ok });
                        }
                        answers
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await?);
            }
            all.sort_by(|a, b| a.ended.total_cmp(&b.ended));
            Ok(all)
        })
    })
}

/// The figures of the answers whose requests started in `[from, to)`, as the report's
/// [`Measured`]; also their longest request and the longest time without an answer, in ms.
fn window(answers: &[Answer], from: f64, to: f64) -> Result<(Measured, f64, f64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).context("histogram")?;
    let (mut ok, mut errors, mut longest) = (0u64, 0u64, 0f64);
    let mut last_end = from;
    let mut gap = 0f64;
    for a in answers
        .iter()
        .filter(|a| a.started >= from && a.started < to)
    {
        let latency = a.ended - a.started;
        hist.saturating_record((latency * 1e6) as u64);
        longest = longest.max(latency);
        if a.ok {
            ok += 1;
        } else {
            errors += 1;
        }
        gap = gap.max(a.ended - last_end);
        last_end = last_end.max(a.ended);
    }
    let elapsed = (to - from).max(1e-6);
    let measured = Measured {
        driver: "rust-loop",
        responses: ok + errors,
        ok,
        errors,
        elapsed,
        rps: ok as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1e3,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1e3,
        p999_ms: hist.value_at_quantile(0.999) as f64 / 1e3,
        bodies: Vec::new(),
    };
    Ok((measured, longest * 1e3, gap * 1e3))
}

/// What one swap measured.
struct Swap {
    post_s: f64,
    before: Measured,
    during: Measured,
    before_longest_ms: f64,
    during_longest_ms: f64,
    during_gap_ms: f64,
}

/// Sends declarative files to `POST /config` (the text as it is, so the client's own encoding
/// stays out of the measured time).
struct ConfigPoster {
    url: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl ConfigPoster {
    fn new(gw: &Gateway) -> Result<Self> {
        Ok(Self {
            url: format!("http://{}/config", gw.admin),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// The status of a GET of `url` (0 when it could not be sent).
    fn status_of(&self, url: &str) -> u16 {
        self.rt.block_on(async {
            match self.http.get(url).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        })
    }

    /// POSTs `text`; fails unless the answer is 201.
    fn post(&self, text: &str) -> Result<()> {
        self.rt.block_on(async {
            let r = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(text.to_string())
                .send()
                .await
                .context("POST /config")?;
            let status = r.status();
            let body = r.bytes().await.context("POST /config answer")?;
            if status.as_u16() != 201 {
                bail!(
                    "POST /config answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                );
            }
            Ok(())
        })
    }
}

/// (b): one swap of the big file into a gateway running the small one, under load.
fn swap_under_load(
    gw: &Gateway,
    admin: &Admin,
    poster: &ConfigPoster,
    (small, big): (&str, &str),
    last_route: &str,
    connections: usize,
) -> Result<Swap> {
    poster.post(small)?;
    admin.wait_ready(None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let load = spawn_load(gw.proxy, connections, stop.clone(), epoch);
    std::thread::sleep(Duration::from_secs(2));
    let from = epoch.elapsed().as_secs_f64();
    poster.post(big)?;
    let to = epoch.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let answers = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    // The swap took: the file's last route proxies.
    let status = poster.status_of(&format!("http://{}{last_route}", gw.proxy));
    if status != 200 {
        bail!("GET {last_route} answered {status} after the swap");
    }
    let (before, before_longest_ms, _) = window(&answers, 0.5, from)?;
    let (during, during_longest_ms, during_gap_ms) = window(&answers, from, to)?;
    Ok(Swap {
        post_s: to - from,
        before,
        during,
        before_longest_ms,
        during_longest_ms,
        during_gap_ms,
    })
}

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    let n: usize = std::env::var("BENCH_DECLARATIVE_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let upstream = procs::start_upstream(&env)?;
    let big = serde_json::to_string(&document(n, upstream.addr))?;
    let small = serde_json::to_string(&small_document(upstream.addr))?;
    progress(format_args!(
        "file: {n} services + routes, {n} consumers + key-auth credentials, {:.1} MB",
        big.len() as f64 / 1e6
    ));

    let in_process = load_in_process(&big, env.rounds)?;
    let parse_s = median(&in_process.iter().map(|r| r.0).collect::<Vec<_>>());
    let build_s = median(&in_process.iter().map(|r| r.1).collect::<Vec<_>>());

    let gw = procs::start_gateway(
        "portcullis DB-less",
        &env,
        &[
            ("PORTCULLIS_DATABASE".into(), "off".into()),
            // The file is larger than the default 1m body limit (Kong's admin default is 10m).
            ("PORTCULLIS_CLIENT_MAX_BODY_SIZE".into(), "64m".into()),
        ],
    )?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    let poster = ConfigPoster::new(&gw)?;
    let mut swaps = Vec::new();
    for round in 1..=env.rounds {
        let s = swap_under_load(
            &gw,
            &admin,
            &poster,
            (&small, &big),
            &format!("/s/{}", n.saturating_sub(1)),
            connections,
        )?;
        progress(format_args!(
            "swap, round {round}/{}: POST /config {:.3} s; during it {} answers, {} failed, longest {:.1} ms, longest gap {:.1} ms (before: longest {:.1} ms)",
            env.rounds,
            s.post_s,
            s.during.responses,
            s.during.errors,
            s.during_longest_ms,
            s.during_gap_ms,
            s.before_longest_ms
        ));
        swaps.push(s);
    }
    let post_s = median(&swaps.iter().map(|s| s.post_s).collect::<Vec<_>>());
    let longest_ms = swaps
        .iter()
        .map(|s| s.during_longest_ms)
        .fold(0f64, f64::max);
    let gap_ms = swaps.iter().map(|s| s.during_gap_ms).fold(0f64, f64::max);
    let failed: u64 = swaps.iter().map(|s| s.during.errors).sum();
    let before_longest_ms = swaps
        .iter()
        .map(|s| s.before_longest_ms)
        .fold(0f64, f64::max);

    let runs = |pick: fn(&Swap) -> &Measured| -> Vec<Run> {
        swaps
            .iter()
            .enumerate()
            .map(|(i, s)| Run {
                round: i + 1,
                measured: pick(s).clone(),
                cpu_s_per_1k: None,
            })
            .collect()
    };
    let rows = vec![
        Row::from_runs("proxy before the swap", runs(|s| &s.before), None),
        Row::from_runs(
            "proxy during POST /config",
            runs(|s| &s.during),
            Some(gw.proc.peak_rss_mib()),
        ),
    ];
    println!(
        "\ndeclarative: {n} services + routes, {n} consumers + key-auth credentials ({:.1} MB of JSON), median of {} round(s)",
        big.len() as f64 / 1e6,
        env.rounds
    );
    println!("{:<44} {:>10}", "step", "seconds");
    println!("{:<44} {:>10.3}", "parse (in process)", parse_s);
    println!("{:<44} {:>10.3}", "validate + build (in process)", build_s);
    println!(
        "{:<44} {:>10.3}",
        "parse + validate + build (in process)",
        parse_s + build_s
    );
    println!(
        "{:<44} {:>10.3}",
        "POST /config under load (HTTP, swap)", post_s
    );
    println!(
        "during the swaps: longest request {longest_ms:.1} ms, longest gap between answers {gap_ms:.1} ms, {failed} failed (before: longest {before_longest_ms:.1} ms)"
    );
    let settings = json!({
        "entities": n, "file_bytes": big.len(), "rounds": env.rounds,
        "connections": connections, "gateway_workers": env.workers, "upstream": upstream.kind,
        "in_process_parse_s": parse_s, "in_process_validate_build_s": build_s,
        "in_process_rounds": in_process.iter().map(|(p, b)| json!({"parse_s": p, "validate_build_s": b})).collect::<Vec<_>>(),
        "post_config_s": post_s,
        "post_config_rounds": swaps.iter().map(|s| s.post_s).collect::<Vec<_>>(),
        "during_swap_longest_request_ms": longest_ms,
        "during_swap_longest_gap_ms": gap_ms,
        "during_swap_failed_requests": failed,
        "before_swap_longest_request_ms": before_longest_ms,
    });
    let title = format!(
        "declarative: GET {RESOURCE} through the bench route, {connections} connections, while POST /config swaps in {n} services + routes and {n} consumers + credentials"
    );
    report::publish(
        "declarative",
        &title,
        &Refs {
            throughput: &[("before", "proxy before the swap")],
            p99: Some(("before", "proxy before the swap")),
            same_mix: &[],
        },
        "Proxying while POST /config loads 10k services and consumers",
        settings,
        &rows,
    )
}
