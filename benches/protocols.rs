//! Protocols bench: WebSocket echo round trips and gRPC unary calls per second, through the
//! gateway and direct to the same upstream, measured in the same run.
//!
//! ```text
//! cargo bench --bench protocols
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 cargo bench --bench protocols
//! ```
//!
//! The upstreams are the test suite's real peers (`tests/support/echo_servers.rs`: a
//! tokio-tungstenite echo server and a tonic server), on threads of this process; the gateway is a
//! child process with an h2c (`http2`) proxy listener, so its CPU per operation is its own. Each
//! of `BENCH_CONNECTIONS` WebSocket connections sends a 32-byte text message and waits for its
//! echo, in a loop; gRPC runs `BENCH_CONNECTIONS` concurrent unary calls of 32 bytes over one
//! HTTP/2 connection.

mod common;
#[path = "../tests/support/echo_servers.rs"]
mod echo_servers;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use common::admin::Admin;
use common::driver::Measured;
use common::procs::{self, Proc};
use common::report::{self, Refs, Row, Run};
use common::{progress, BenchEnv};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn main() -> ExitCode {
    common::bench_main("protocols", run)
}

/// What one measured run counted.
struct Tally {
    ok: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self {
            ok: 0,
            errors: 0,
            latency: Histogram::new(3)?,
        })
    }

    fn into_measured(self, driver: &'static str, elapsed: f64) -> Measured {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        Measured {
            driver,
            responses: self.ok + self.errors,
            ok: self.ok,
            errors: self.errors,
            elapsed,
            rps: self.ok as f64 / elapsed,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            bodies: Vec::new(),
        }
    }
}

/// Echo round trips over `connections` WebSocket connections to `url` for `seconds`.
async fn websocket_load(url: &str, connections: usize, seconds: Duration) -> Result<Measured> {
    let tally = Rc::new(RefCell::new(Tally::new()?));
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        sockets.push(ws);
    }
    let started = Instant::now();
    let until = started + seconds;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let tally = tally.clone();
            tokio::task::spawn_local(async move {
                let message = Message::text("x".repeat(32));
                while Instant::now() < until {
                    let sent = Instant::now();
                    let echoed = match ws.send(message.clone()).await {
                        Ok(()) => ws.next().await,
                        Err(_) => None,
                    };
                    let mut t = tally.borrow_mut();
                    match echoed {
                        Some(Ok(Message::Text(_))) => {
                            t.ok += 1;
                            let _ = t.latency.record(sent.elapsed().as_micros() as u64);
                        }
                        _ => {
                            t.errors += 1;
                            return;
                        }
                    }
                }
                let _ = ws.close(None).await;
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tally = Rc::try_unwrap(tally)
        .map_err(|_| anyhow!("a WebSocket task outlived the run"))?
        .into_inner();
    Ok(tally.into_measured("websocket", elapsed))
}

/// Unary calls, `concurrency` at a time over one HTTP/2 connection to `origin`, for `seconds`.
async fn grpc_load(origin: &str, concurrency: usize, seconds: Duration) -> Result<Measured> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, tonic::body::Body>(connector);
    let grpc = tonic::client::Grpc::with_origin(hyper, origin.parse()?);
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Unary");
    let tally = Rc::new(RefCell::new(Tally::new()?));
    let started = Instant::now();
    let until = started + seconds;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut grpc, tally, path) = (grpc.clone(), tally.clone(), path.clone());
            tokio::task::spawn_local(async move {
                let message = Bytes::from(vec![b'x'; 32]);
                while Instant::now() < until {
                    let sent = Instant::now();
                    let answer = match grpc.ready().await {
                        Ok(()) => {
                            grpc.unary(
                                tonic::Request::new(message.clone()),
                                path.clone(),
                                echo_servers::Raw,
                            )
                            .await
                        }
                        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                    };
                    let mut t = tally.borrow_mut();
                    match answer {
                        Ok(_) => {
                            t.ok += 1;
                            let _ = t.latency.record(sent.elapsed().as_micros() as u64);
                        }
                        Err(_) => t.errors += 1,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tally = Rc::try_unwrap(tally)
        .map_err(|_| anyhow!("a gRPC task outlived the run"))?
        .into_inner();
    Ok(tally.into_measured("grpc", elapsed))
}

/// One target: what it loads, and the process whose CPU it is charged to.
struct Target {
    name: &'static str,
    websocket: bool,
    base: String,
    through_gateway: bool,
}

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    let ws_upstream = echo_servers::spawn_ws_upstream(echo_servers::Upstream::Echo);
    let grpc_port = echo_servers::spawn_grpc_upstream();
    let gw = procs::start_gateway_flagged("portcullis", &env, &[], "http2")?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.post("/services", json!({"name": "ws", "url": ws_upstream}))?;
    admin.post(
        "/services/ws/routes",
        json!({"name": "ws", "paths": ["/ws"]}),
    )?;
    admin.post(
        "/services",
        json!({"name": "grpc", "url": format!("grpc://127.0.0.1:{grpc_port}")}),
    )?;
    admin.post(
        "/services/grpc/routes",
        json!({"name": "grpc", "protocols": ["grpc", "grpcs"],
               "paths": ["/test.Echo/"], "strip_path": false}),
    )?;
    let targets = [
        Target {
            name: "websocket direct",
            websocket: true,
            base: ws_upstream.replacen("http://", "ws://", 1),
            through_gateway: false,
        },
        Target {
            name: "websocket via portcullis",
            websocket: true,
            base: format!("ws://{}/ws", gw.proxy),
            through_gateway: true,
        },
        Target {
            name: "grpc direct",
            websocket: false,
            base: format!("http://127.0.0.1:{grpc_port}"),
            through_gateway: false,
        },
        Target {
            name: "grpc via portcullis",
            websocket: false,
            base: format!("http://{}", gw.proxy),
            through_gateway: true,
        },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=env.rounds {
        for (target, runs) in targets.iter().zip(&mut runs) {
            progress(format_args!(
                "round {round}/{}: {}",
                env.rounds, target.name
            ));
            let proc: Option<&Proc> = target.through_gateway.then_some(&gw.proc);
            let load = |seconds: Duration| async move {
                if target.websocket {
                    websocket_load(&target.base, env.connections, seconds).await
                } else {
                    grpc_load(&target.base, env.connections, seconds).await
                }
            };
            local.block_on(&runtime, load(env.warmup()))?;
            let cpu_before = proc.map(Proc::cpu_seconds);
            let measured = local.block_on(&runtime, load(env.duration()))?;
            let cpu = proc
                .map(Proc::cpu_seconds)
                .zip(cpu_before)
                .map(|(after, before)| after - before);
            let cpu_s_per_1k = cpu
                .filter(|_| measured.ok > 0)
                .map(|c| c / measured.ok as f64 * 1000.0);
            progress(format_args!(
                "  {}: {:.0} ops/s, p99 {:.2} ms, {} errors",
                target.name, measured.rps, measured.p99_ms, measured.errors
            ));
            runs.push(Run {
                round,
                measured,
                cpu_s_per_1k,
            });
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(runs)
        .map(|(target, runs)| {
            let rss = target.through_gateway.then(|| gw.proc.peak_rss_mib());
            Row::from_runs(target.name, runs, rss)
        })
        .collect();
    let settings = json!({
        "seconds": env.seconds,
        "rounds": env.rounds,
        "connections": env.connections,
        "machine": report::machine(),
    });
    let mut rows = rows.into_iter();
    let websocket: Vec<Row> = rows.by_ref().take(2).collect();
    let grpc: Vec<Row> = rows.collect();
    report::publish(
        "protocols-websocket",
        &format!(
            "WebSocket: echo round trips of 32 bytes over {} connections, {} s × {} round(s) \
             (median); req/s = round trips/s; CPU and RSS are the gateway's",
            env.connections, env.seconds, env.rounds
        ),
        &Refs {
            throughput: &[("direct", "websocket direct")],
            p99: Some(("direct", "websocket direct")),
            same_mix: &[],
        },
        "Portcullis vs direct: WebSocket echo",
        settings.clone(),
        &websocket,
    )?;
    report::publish(
        "protocols-grpc",
        &format!(
            "gRPC: unary calls of 32 bytes, {} at a time over one HTTP/2 connection, {} s × {} \
             round(s) (median); req/s = calls/s; CPU and RSS are the gateway's",
            env.connections, env.seconds, env.rounds
        ),
        &Refs {
            throughput: &[("direct", "grpc direct")],
            p99: Some(("direct", "grpc direct")),
            same_mix: &[],
        },
        "Portcullis vs direct: gRPC unary",
        settings,
        &grpc,
    )
}
