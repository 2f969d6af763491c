//! Proxy load bench: the gateway side by side with the direct upstream and nginx,
//! measured in the same run, in turn, with the same request mix and concurrency.
//!
//! ```text
//! cargo bench --bench proxy                              # 64 connections, 2 s warm-up + 10 s, 3 rounds
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 cargo bench --bench proxy   # quick look
//! BENCH_TARGETS="nginx,oauth2 memory,oauth2 + prometheus" cargo bench --bench proxy   # some targets
//! BENCH_VARIANTS=tls,h2 cargo bench --bench proxy        # some variants only
//! ```
//!
//! Targets, each one function (`Setup`); the ones this build cannot run yet say what they need.
//! The `rate-limiting` targets are read against `oauth2 memory` (the same gateway without it).
//! `nginx + gateway headers` is nginx doing the header work of the gateway's oauth2 path (less
//! the token check), read in the `×nginx+headers` column: the like-for-like reference.
//! `nginx cold mix` is nginx sent the cold target's request mix (a different token per request,
//! picked by the load generator's script); the line under the table reads the cold target
//! against it.
//!
//! Variants (`BENCH_VARIANTS`, comma separated, default all), each its own table, JSON and SVG
//! (`target/bench-results/<bench>.json|svg`):
//!
//! | variant | bench | what changes |
//! | --- | --- | --- |
//! | `plain` | `proxy` | every target above, HTTP/1.1 keep-alive, one worker each |
//! | `tls` | `proxy-tls` | nginx and the gateway terminate TLS; keep-alive connections |
//! | `tls-close` | `proxy-tls-close` | TLS with `Connection: close`: a full handshake per request (no resumption) |
//! | `workers2` | `proxy-workers2` | nginx `worker_processes 2`, the gateway 2 workers, plain HTTP/1.1, both with `reuseport` |
//! | `h2` | `proxy-h2` | HTTP/2 over TLS driven by `h2load` (one stream per connection at a time) |
//! | `h2-mux` | `proxy-h2-mux` | HTTP/2 over TLS, `h2load -c16 -m8`: 16 connections, 8 streams each in flight |
//!
//! Every run starts its own processes (nginx, the gateway, and what the target needs) and stops
//! them after it, so a process's own luck does not bias all rounds of one target alike.
//!
//! nginx runs with `keepalive_requests 1000000` on the client and the upstream side in every
//! variant. The TLS variants use the Rust driver (it trusts the bench's certificate), `h2` and
//! `h2-mux` need `h2load` (`apt-get install nghttp2-client`).

mod common;

use std::any::Any;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::admin::{bearer_request, client_credentials_request, token_of, Admin, RESOURCE};
use common::driver::{self, Load, Req};
use common::procs::{self, Front, Gateway, Proc, TlsFiles, Upstream};
use common::report::{self, Refs, Row};
use common::stores::{PgSchema, RedisPrefix, Settings};
use common::{progress, BenchEnv, RoundTarget};
use serde_json::json;

/// A target ready to be measured.
struct Target {
    /// Where the load goes.
    addr: SocketAddr,
    /// The process whose CPU and RSS are reported (the proxy); `None` for the direct target.
    proc: Option<Proc>,
    /// A request mix of its own, when the target needs one (a token it issued; cold tokens: one
    /// token per request); otherwise [`shared_mix`].
    requests: Option<Vec<Req>>,
    /// Whether an unrecorded warm-up run precedes each measured run (not for cold tokens).
    warmup: bool,
    /// Kept alive until the target is dropped, after its proxy.
    _keep: Keep,
}

impl Target {
    /// The gateway `gw` as a target: the shared mix, a warm-up run, nothing else to keep.
    fn gateway(gw: Gateway) -> Self {
        Self {
            addr: gw.tls_proxy.unwrap_or(gw.proxy),
            proc: Some(gw.proc),
            requests: None,
            warmup: true,
            _keep: Vec::new(),
        }
    }
}

enum Setup {
    Ready(Target),
    Skipped(String),
}

struct Ctx<'a> {
    env: &'a BenchEnv,
    upstream: &'a Upstream,
    /// How nginx and the gateway serve clients in this variant.
    front: Front,
    /// The cold target's tokens, issued once per variant and met cold by a fresh gateway in
    /// every round.
    cold: RefCell<Option<ColdTokens>>,
}

/// One table of the bench: how the proxies are served and which targets are measured.
struct Variant {
    /// Its name in `BENCH_VARIANTS`.
    name: &'static str,
    /// The report's name (`target/bench-results/<bench>.json`).
    bench: &'static str,
    /// What the table's title says about it.
    about: &'static str,
    /// The targets measured (names of [`TARGETS`]).
    targets: &'static [&'static str],
    /// TLS on the client side.
    tls: bool,
    /// `Connection: close` on every request.
    close: bool,
    /// Workers of nginx and the gateway (0: one nginx worker, `BENCH_GATEWAY_WORKERS`).
    workers: usize,
    /// HTTP/2 over TLS (`h2load`).
    h2: bool,
    /// HTTP/2 streams in flight per connection (1 unless `h2`).
    h2_streams: usize,
    /// Connections of the load (0: `BENCH_CONNECTIONS`).
    connections: usize,
}

/// The targets of the TLS and HTTP/2 variants: the direct upstream speaks plain HTTP/1.1 only.
const FRONTED: &[&str] = &[
    "nginx",
    "nginx + gateway headers",
    "portcullis",
    "oauth2 memory",
];

/// Every variant, in the order they run.
const VARIANTS: &[Variant] = &[
    Variant {
        name: "plain",
        bench: "proxy",
        about: "HTTP/1.1 keep-alive",
        targets: &[],
        tls: false,
        close: false,
        workers: 0,
        h2: false,
        h2_streams: 1,
        connections: 0,
    },
    Variant {
        name: "tls",
        bench: "proxy-tls",
        about: "TLS keep-alive",
        targets: FRONTED,
        tls: true,
        close: false,
        workers: 0,
        h2: false,
        h2_streams: 1,
        connections: 0,
    },
    Variant {
        name: "tls-close",
        bench: "proxy-tls-close",
        about: "TLS, Connection: close (a full handshake per request)",
        targets: FRONTED,
        tls: true,
        close: true,
        workers: 0,
        h2: false,
        h2_streams: 1,
        connections: 0,
    },
    Variant {
        name: "workers2",
        bench: "proxy-workers2",
        about: "HTTP/1.1 keep-alive, nginx worker_processes 2, gateway 2 workers",
        targets: &[
            "direct",
            "nginx",
            "nginx + gateway headers",
            "portcullis",
            "oauth2 memory",
        ],
        tls: false,
        close: false,
        workers: 2,
        h2: false,
        h2_streams: 1,
        connections: 0,
    },
    Variant {
        name: "h2",
        bench: "proxy-h2",
        about: "HTTP/2 over TLS (h2load, one stream per connection at a time)",
        targets: FRONTED,
        tls: true,
        close: false,
        workers: 0,
        h2: true,
        h2_streams: 1,
        connections: 0,
    },
    Variant {
        name: "h2-mux",
        bench: "proxy-h2-mux",
        about: "HTTP/2 over TLS (h2load, 16 connections, 8 streams each in flight)",
        targets: FRONTED,
        tls: true,
        close: false,
        workers: 0,
        h2: true,
        h2_streams: 8,
        connections: 16,
    },
];

type SetupFn = fn(&Ctx<'_>) -> Result<Setup>;

/// Every target, in the order of the table.
const TARGETS: &[(&str, SetupFn)] = &[
    ("direct", direct),
    ("nginx", nginx_proxy),
    ("nginx + gateway headers", nginx_gateway_headers),
    ("portcullis", portcullis_plain),
    ("upstream 3 targets", portcullis_upstream_3_targets),
    ("oauth2 memory", oauth2_memory),
    ("oauth2 + rate-limiting local", oauth2_rate_limiting_local),
    (
        "oauth2 + rate-limiting local hidden",
        oauth2_rate_limiting_local_hidden,
    ),
    ("oauth2 + rate-limiting redis", oauth2_rate_limiting_redis),
    ("oauth2 + prometheus", oauth2_prometheus),
    ("oauth2 pg+redis warm", oauth2_pg_redis_warm),
    ("nginx cold mix", nginx_cold_mix),
    ("oauth2 pg+redis cold", oauth2_pg_redis_cold),
    ("introspection cached", introspection_cached),
];

/// Target 1: Straight to the upstream: the ceiling.
fn direct(ctx: &Ctx<'_>) -> Result<Setup> {
    Ok(Setup::Ready(Target {
        addr: ctx.upstream.addr,
        proc: None,
        requests: None,
        warmup: true,
        _keep: Vec::new(),
    }))
}

/// Target 2: nginx (one worker) as a plain reverse proxy with upstream keep-alive.
fn nginx_proxy(ctx: &Ctx<'_>) -> Result<Setup> {
    nginx_target(ctx, procs::start_nginx_front)
}

/// Target 2b: nginx as target 2, also making and sending the headers the gateway's oauth2 path
/// adds to every request and answer (`procs::start_nginx_front_gateway_headers`). Target 2 does
/// less work than any Kong-compatible proxy can: this one is the like-for-like reference.
fn nginx_gateway_headers(ctx: &Ctx<'_>) -> Result<Setup> {
    nginx_target(ctx, procs::start_nginx_front_gateway_headers)
}

/// An nginx front started by `start`, or skipped when nginx is not installed.
fn nginx_target(
    ctx: &Ctx<'_>,
    start: fn(SocketAddr, &Front) -> Result<(SocketAddr, Proc)>,
) -> Result<Setup> {
    if procs::nginx().is_none() {
        return Ok(Setup::Skipped(
            "needs nginx (apt-get install nginx-light)".into(),
        ));
    }
    let (addr, proc) = start(ctx.upstream.addr, &ctx.front)?;
    Ok(Setup::Ready(Target {
        addr,
        proc: Some(proc),
        requests: None,
        warmup: true,
        _keep: Vec::new(),
    }))
}

/// Target 3: The gateway with a service and a route, no plugin.
fn portcullis_plain(ctx: &Ctx<'_>) -> Result<Setup> {
    let gw = procs::start_gateway_front("portcullis", ctx.env, &[], &ctx.front)?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.expose(ctx.upstream.addr)?;
    admin.wait_ready(None)?;
    Ok(Setup::Ready(Target::gateway(gw)))
}

/// Target 3b: The gateway with a service whose host is an upstream of three targets (the bench
/// upstream on its three ports, weight 100 each, round-robin), no plugin: the cost of balancing
/// next to `portcullis`.
fn portcullis_upstream_3_targets(ctx: &Ctx<'_>) -> Result<Setup> {
    let gw = procs::start_gateway_front("portcullis upstream", ctx.env, &[], &ctx.front)?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.post("/upstreams", json!({"name": "bench-upstream"}))?;
    for addr in std::iter::once(ctx.upstream.addr).chain(ctx.upstream.also.iter().copied()) {
        admin.post(
            "/upstreams/bench-upstream/targets",
            json!({"target": addr.to_string(), "weight": 100}),
        )?;
    }
    admin.post(
        "/services",
        json!({"name": "bench", "host": "bench-upstream", "port": 80}),
    )?;
    admin.post(
        "/services/bench/routes",
        json!({"name": "bench-route", "paths": [common::admin::PREFIX]}),
    )?;
    admin.wait_ready(None)?;
    Ok(Setup::Ready(Target::gateway(gw)))
}

/// A gateway on `settings` with the `oauth2` plugin, and a bearer token it issued and already
/// accepts.
fn oauth2_gateway(
    ctx: &Ctx<'_>,
    name: &str,
    settings: &[(String, String)],
) -> Result<(Gateway, String)> {
    let gw = procs::start_gateway_front(name, ctx.env, settings, &ctx.front)?;
    let admin = Admin::oauth2_service(&gw, ctx.upstream.addr)?;
    let token = admin.client_credentials_token()?;
    admin.wait_ready(Some(&token))?;
    Ok((gw, token))
}

/// Target 4: The gateway with the `oauth2` plugin, `database = memory`, one valid bearer token.
fn oauth2_memory(ctx: &Ctx<'_>) -> Result<Setup> {
    let (gw, token) = oauth2_gateway(ctx, "portcullis oauth2", &[])?;
    Ok(Setup::Ready(Target {
        requests: Some(vec![bearer_request(&token)]),
        ..Target::gateway(gw)
    }))
}

/// A limit no run reaches: every request is checked and counted, none refused.
const NEVER_REACHED: u64 = 1_000_000_000_000;

/// [`oauth2_memory`] plus `rate-limiting` per consumer (one consumer: every request counts on
/// the same counters, the most contended case) with `policy` and its extra `config`.
fn oauth2_rate_limited(
    ctx: &Ctx<'_>,
    name: &str,
    settings: &[(String, String)],
    config: serde_json::Value,
) -> Result<Target> {
    let (gw, token) = oauth2_gateway(ctx, name, settings)?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    let mut config = config;
    config["minute"] = json!(NEVER_REACHED);
    admin.post(
        "/services/bench/plugins",
        json!({"name": "rate-limiting", "config": config}),
    )?;
    admin.wait_ready(Some(&token))?;
    Ok(Target {
        requests: Some(vec![bearer_request(&token)]),
        ..Target::gateway(gw)
    })
}

/// Target: `oauth2` + `rate-limiting`, `policy = local` (this node's lock-free counters).
fn oauth2_rate_limiting_local(ctx: &Ctx<'_>) -> Result<Setup> {
    let target = oauth2_rate_limited(
        ctx,
        "portcullis oauth2 + rate-limiting local",
        &[],
        json!({"policy": "local"}),
    )?;
    Ok(Setup::Ready(target))
}

/// Target: [`oauth2_rate_limiting_local`] with `hide_client_headers`: the counting alone, without
/// Kong's five headers on every answer.
fn oauth2_rate_limiting_local_hidden(ctx: &Ctx<'_>) -> Result<Setup> {
    let target = oauth2_rate_limited(
        ctx,
        "portcullis oauth2 + rate-limiting local hidden",
        &[],
        json!({"policy": "local", "hide_client_headers": true}),
    )?;
    Ok(Setup::Ready(target))
}

/// Target: `oauth2` + `rate-limiting`, `policy = redis` (one script call per request to the
/// loopback Redis), on the memory store: the plugin names the Redis itself.
fn oauth2_rate_limiting_redis(ctx: &Ctx<'_>) -> Result<Setup> {
    let redis = match RedisPrefix::fresh("ratelimit") {
        Ok(r) => r,
        Err(why) => return Ok(Setup::Skipped(why)),
    };
    let (host, port) = redis.host_port();
    let config = json!({"policy": "redis", "redis": {"host": host, "port": port}});
    let target = oauth2_rate_limited(
        ctx,
        "portcullis oauth2 + rate-limiting redis",
        &redis.prefix_setting(),
        config,
    )?;
    Ok(Setup::Ready(Target {
        _keep: vec![Box::new(redis)],
        ..target
    }))
}

/// Target 4b: target 4 plus a global `prometheus` plugin recording every Kong metric (status
/// codes, latencies, bandwidth): the cost of metrics, as a ratio to "oauth2 memory".
fn oauth2_prometheus(ctx: &Ctx<'_>) -> Result<Setup> {
    let gw = procs::start_gateway("portcullis oauth2 + prometheus", ctx.env, &[])?;
    let admin = Admin::oauth2_service(&gw, ctx.upstream.addr)?;
    admin.post(
        "/plugins",
        json!({"name": "prometheus", "config": {
            "status_code_metrics": true,
            "latency_metrics": true,
            "bandwidth_metrics": true,
        }}),
    )?;
    let token = admin.client_credentials_token()?;
    admin.wait_ready(Some(&token))?;
    Ok(Setup::Ready(Target {
        requests: Some(vec![bearer_request(&token)]),
        ..Target::gateway(gw)
    }))
}

/// Guards a target keeps alive as long as its gateway (and drops after it): the Postgres schema,
/// the Redis prefix, the authorization server.
type Keep = Vec<Box<dyn Any>>;

/// A fresh Postgres schema (migrated) and Redis prefix, with the gateway settings for both;
/// `Err(reason)` when either is unreachable.
fn pg_redis(tag: &str) -> Result<(Settings, Keep), String> {
    let redis = RedisPrefix::fresh(tag)?;
    let pg = PgSchema::fresh(tag)?;
    let settings = pg.settings.iter().chain(&redis.settings).cloned().collect();
    Ok((settings, vec![Box::new(pg), Box::new(redis)]))
}

/// Target 5: `oauth2` on Postgres + Redis (near cache → Redis → Postgres), one token, warm in the
/// near cache (it was issued by this gateway, which writes it through every tier).
fn oauth2_pg_redis_warm(ctx: &Ctx<'_>) -> Result<Setup> {
    let (settings, keep) = match pg_redis("warm") {
        Ok(x) => x,
        Err(why) => return Ok(Setup::Skipped(why)),
    };
    let (gw, token) = oauth2_gateway(ctx, "portcullis oauth2 pg+redis", &settings)?;
    Ok(Setup::Ready(Target {
        requests: Some(vec![bearer_request(&token)]),
        _keep: keep,
        ..Target::gateway(gw)
    }))
}

/// Distinct tokens of the cold target (`BENCH_COLD_TOKENS`, default 500,000: issued in about
/// half a minute, and enough for a 5-second run at 100,000 requests a second to meet each token
/// once; a run that sends more meets the first ones again, warm).
fn cold_tokens() -> u64 {
    std::env::var("BENCH_COLD_TOKENS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(500_000u64)
        .max(1)
}

/// The cold target's tokens and the store they live in, kept from one round to the next.
struct ColdTokens {
    /// The gateway settings of the store (Postgres schema, Redis prefix).
    settings: Settings,
    /// Valid tokens, each stored in Postgres and Redis.
    tokens: Vec<String>,
    /// The schema and the prefix.
    _keep: Keep,
}

/// Issues `BENCH_COLD_TOKENS` tokens through a gateway on a fresh Postgres schema and Redis
/// prefix, then stops it; `Err(reason)` when Postgres or Redis is unreachable.
fn issue_cold_tokens(ctx: &Ctx<'_>) -> Result<Result<ColdTokens, String>> {
    let (settings, keep) = match pg_redis("cold") {
        Ok(x) => x,
        Err(why) => return Ok(Err(why)),
    };
    let n = cold_tokens();
    let issuer = procs::start_gateway("portcullis issuer", ctx.env, &settings)?;
    Admin::oauth2_service(&issuer, ctx.upstream.addr)?;
    progress(format_args!(
        "oauth2 pg+redis cold: issuing {n} tokens (at most 3 min)"
    ));
    let mut load = Load::new(
        issuer.proxy,
        vec![client_credentials_request()],
        ctx.env.connections,
        Duration::from_secs(180),
    );
    load.max_requests = Some(n);
    load.keep_every = Some(1);
    let m = driver::run_rust(&load)?;
    progress(format_args!(
        "oauth2 pg+redis cold: {} tokens in {:.1} s ({:.0}/s)",
        m.ok, m.elapsed, m.rps
    ));
    let tokens: Vec<String> = m.bodies.iter().filter_map(|b| token_of(b)).collect();
    if tokens.is_empty() {
        bail!("no token was issued");
    }
    Ok(Ok(ColdTokens {
        settings,
        tokens,
        _keep: keep,
    }))
}

/// Target 6: Same, cold: each request a different valid token, round robin over
/// `BENCH_COLD_TOKENS` tokens, issued once (by a gateway then stopped) and met in every round by
/// a fresh gateway on the same schema and prefix, whose near cache starts empty: each token's
/// first use is a near-cache miss answered by Redis. The near cache takes a token Redis answered
/// for on its second use and keeps it 30 s, so a run is fully cold only while its requests do not
/// outnumber the tokens (no warm-up run for this target).
fn oauth2_pg_redis_cold(ctx: &Ctx<'_>) -> Result<Setup> {
    let requests = match cold_requests(ctx)? {
        Ok(requests) => requests,
        Err(why) => return Ok(Setup::Skipped(why)),
    };
    let cold = ctx.cold.borrow();
    let Some(cold) = cold.as_ref() else {
        bail!("the cold tokens are gone");
    };
    let gw = procs::start_gateway("portcullis oauth2 pg+redis cold", ctx.env, &cold.settings)?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    // Readiness with the last token; the run starts with the first.
    admin.wait_ready(cold.tokens.last().map(String::as_str))?;
    Ok(Setup::Ready(Target {
        requests: Some(requests),
        warmup: false,
        ..Target::gateway(gw)
    }))
}

/// Target 6b: nginx as target 2, sent the cold target's request mix (each request a different
/// token, which the load generator picks from a script per request): the reference the cold
/// target is read against besides plain nginx, so that the mix's cost to the load generator,
/// which shares the cores, weighs on both sides alike.
fn nginx_cold_mix(ctx: &Ctx<'_>) -> Result<Setup> {
    let requests = match cold_requests(ctx)? {
        Ok(requests) => requests,
        Err(why) => return Ok(Setup::Skipped(why)),
    };
    match nginx_target(ctx, procs::start_nginx_front)? {
        Setup::Ready(target) => Ok(Setup::Ready(Target {
            requests: Some(requests),
            warmup: false,
            ..target
        })),
        skipped @ Setup::Skipped(_) => Ok(skipped),
    }
}

/// The cold target's requests (one per token), its tokens issued first if this variant has
/// none yet; `Err(reason)` when Postgres or Redis is unreachable.
fn cold_requests(ctx: &Ctx<'_>) -> Result<Result<Vec<Req>, String>> {
    if ctx.cold.borrow().is_none() {
        match issue_cold_tokens(ctx)? {
            Ok(cold) => *ctx.cold.borrow_mut() = Some(cold),
            Err(why) => return Ok(Err(why)),
        }
    }
    let cold = ctx.cold.borrow();
    let Some(cold) = cold.as_ref() else {
        bail!("the cold tokens are gone");
    };
    Ok(Ok(cold.tokens.iter().map(|t| bearer_request(t)).collect()))
}

/// `tests/introspection`, where the third-party authorization server lives.
fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/introspection")
}

/// A client_credentials token from oidc-provider for its `gateway` client.
fn provider_token(base: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/token"))
            .basic_auth("gateway", Some("gateway-secret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "read write"),
            ])
            .send()
            .await
            .context("oidc-provider token endpoint")?;
        let v: serde_json::Value = r.json().await?;
        v.get("access_token")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("no token from oidc-provider: {v}"))
    })
}

/// Target 7: `oauth2-introspection` against the real third-party authorization server
/// (oidc-provider, `tests/introspection/provider.js`), one token, its verdict cached (default
/// `ttl`, 30 s) after the first call.
fn introspection_cached(ctx: &Ctx<'_>) -> Result<Setup> {
    let dir = provider_dir();
    if driver::find_program("node").is_none() {
        return Ok(Setup::Skipped("needs node (oidc-provider)".into()));
    }
    if !dir.join("node_modules/oidc-provider/package.json").exists() {
        return Ok(Setup::Skipped(
            "needs oidc-provider: npm ci in tests/introspection".into(),
        ));
    }
    let addr = procs::free_addr()?;
    let mut cmd = Command::new("node");
    cmd.arg("provider.js")
        .env("PORT", addr.port().to_string())
        .env("TOKEN_TTL", "3600")
        .current_dir(&dir);
    let mut provider = Proc::spawn("oidc-provider", cmd, tempfile::tempdir()?)?;
    provider.wait_listening(addr)?;
    let base = format!("http://{addr}");
    let token = provider_token(&base)?;

    let gw = procs::start_gateway("portcullis introspection", ctx.env, &[])?;
    let admin = Admin::new(gw.admin, gw.proxy)?;
    admin.expose(ctx.upstream.addr)?;
    let basic = STANDARD.encode("gateway:gateway-secret");
    admin.post(
        "/services/bench/plugins",
        json!({"name": "oauth2-introspection", "config": {
            "introspection_url": format!("{base}/token/introspection"),
            "authorization_value": format!("Basic {basic}"),
        }}),
    )?;
    admin.wait_ready(Some(&token))?;
    Ok(Setup::Ready(Target {
        requests: Some(vec![bearer_request(&token)]),
        _keep: vec![Box::new(provider)],
        ..Target::gateway(gw)
    }))
}

fn main() -> ExitCode {
    common::bench_main("proxy", run)
}

/// The variants `BENCH_VARIANTS` asks for (default all).
fn chosen_variants() -> Result<Vec<&'static Variant>> {
    let Ok(wanted) = std::env::var("BENCH_VARIANTS") else {
        return Ok(VARIANTS.iter().collect());
    };
    wanted
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            VARIANTS.iter().find(|v| v.name == w).with_context(|| {
                let names: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
                format!(
                    "unknown variant {w} in BENCH_VARIANTS (known: {})",
                    names.join(", ")
                )
            })
        })
        .collect()
}

fn run() -> Result<()> {
    let variants = chosen_variants()?;
    let env = BenchEnv::from_env();
    let upstream = procs::start_upstream(&env)?;
    progress(format_args!(
        "upstream: {} on {} ({} connections, {} s warm-up + {} s per run, {} round(s))",
        upstream.kind, upstream.addr, env.connections, env.warmup, env.seconds, env.rounds
    ));
    let tls = if variants.iter().any(|v| v.tls) {
        Some(std::sync::Arc::new(TlsFiles::generate()?))
    } else {
        None
    };
    for variant in variants {
        progress(format_args!("variant {}: {}", variant.name, variant.about));
        let front = Front {
            workers: variant.workers,
            tls: tls.clone().filter(|_| variant.tls),
            h2: variant.h2,
        };
        if variant.h2 && driver::find_program("h2load").is_none() {
            progress(format_args!(
                "variant {}: skipped: needs h2load (apt-get install nghttp2-client)",
                variant.name
            ));
            continue;
        }
        run_variant(&env, &upstream, variant, front)?;
    }
    Ok(())
}

/// The request every target without a mix of its own is sent: the resource, with a bearer
/// token of a real token's shape (the targets without `oauth2` forward the header untouched).
fn shared_mix() -> Vec<Req> {
    vec![bearer_request("0123456789abcdef0123456789abcdef")]
}

/// A target's runs so far, or why it is not measured.
enum TargetRuns {
    /// Its runs, and the largest peak RSS of its processes (MiB).
    Runs(Vec<common::report::Run>, Option<f64>),
    /// Why it is not measured.
    Skipped(String),
}

fn run_variant(env: &BenchEnv, upstream: &Upstream, variant: &Variant, front: Front) -> Result<()> {
    let connections = if variant.connections > 0 {
        variant.connections
    } else {
        env.connections
    };
    let ctx = Ctx {
        env,
        upstream,
        front,
        cold: RefCell::new(None),
    };
    // `BENCH_TARGETS=nginx,oauth2 memory,…` measures only those (names as in the table).
    let only = std::env::var("BENCH_TARGETS").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|n| n.trim() == name))
    };
    let targets: Vec<(&str, SetupFn)> = TARGETS
        .iter()
        .filter(|(name, _)| variant.targets.is_empty() || variant.targets.contains(name))
        .copied()
        .collect();
    let mut measured: Vec<TargetRuns> = targets
        .iter()
        .map(|(name, _)| {
            if wanted(name) {
                TargetRuns::Runs(Vec::new(), None)
            } else {
                TargetRuns::Skipped("not in BENCH_TARGETS".into())
            }
        })
        .collect();
    let close = |reqs: Vec<Req>| -> Vec<Req> {
        reqs.into_iter()
            .map(|r| {
                if variant.close {
                    r.header("connection", "close")
                } else {
                    r
                }
            })
            .collect()
    };
    let tls = ctx.front.tls.as_ref().map(|f| f.client.clone());
    let mut driver_name = "";
    let mut done = 0;
    // Every run on processes started for it and stopped after it: a process's own luck (its
    // memory layout, where its threads land) then varies from round to round, and the median
    // over rounds removes it instead of carrying it into every round of one target.
    for round in 1..=env.rounds {
        for i in common::round_order(round, targets.len()) {
            let (name, setup) = targets[i];
            if !matches!(measured[i], TargetRuns::Runs(..)) {
                continue;
            }
            progress(format_args!("round {round}: setting up {name}"));
            let target = match setup(&ctx) {
                Ok(Setup::Ready(t)) => t,
                Ok(Setup::Skipped(why)) => {
                    progress(format_args!("{name}: skipped: {why}"));
                    measured[i] = TargetRuns::Skipped(why);
                    continue;
                }
                Err(e) => {
                    progress(format_args!("{name}: setup failed: {e:#}"));
                    measured[i] = TargetRuns::Skipped(format!("setup failed: {e:#}"));
                    continue;
                }
            };
            let requests = close(target.requests.clone().unwrap_or_else(shared_mix));
            let active = measured
                .iter()
                .filter(|m| matches!(m, TargetRuns::Runs(..)))
                .count();
            let left = (active * env.rounds).saturating_sub(done);
            let (run, driver) = common::measure_target(
                env,
                &RoundTarget {
                    name,
                    addr: target.addr,
                    requests: &requests,
                    proc: target.proc.as_ref(),
                    warmup: target.warmup,
                    tls: tls.clone(),
                    h2: variant.h2,
                    h2_streams: variant.h2_streams,
                    connections,
                },
                round,
                left,
            )?;
            driver_name = driver;
            done += 1;
            if let TargetRuns::Runs(runs, rss) = &mut measured[i] {
                runs.push(run);
                if let Some(proc) = &target.proc {
                    *rss = Some(rss.unwrap_or(0.0).max(proc.peak_rss_mib()));
                }
            }
        }
    }

    let rows: Vec<Row> = targets
        .iter()
        .zip(measured)
        .map(|((name, _), m)| match m {
            TargetRuns::Runs(runs, rss) => Row::from_runs(name, runs, rss),
            TargetRuns::Skipped(why) => Row::skipped(name, why),
        })
        .collect();
    let request = format!(
        "GET {RESOURCE}, Authorization: Bearer <token>{}",
        if variant.close {
            ", Connection: close"
        } else {
            ""
        }
    );
    let title = format!(
        "proxy ({}): {request}, {connections} connections, {} s × {} round(s) (median), driver {driver_name}, upstream {}; CPU and RSS are the proxy's",
        variant.about, env.seconds, env.rounds, upstream.kind
    );
    let workers = if variant.workers > 0 {
        variant.workers
    } else {
        env.workers
    };
    let settings = json!({
        "variant": variant.name, "seconds": env.seconds, "rounds": env.rounds,
        "connections": connections, "warmup": env.warmup, "gateway_workers": workers,
        "nginx_workers": variant.workers.max(1), "tls": variant.tls, "http2": variant.h2,
        "http2_streams_per_connection": variant.h2_streams,
        "connection_close": variant.close, "driver": driver_name,
        "upstream": upstream.kind, "request": request,
    });
    let throughput: &[(&str, &str)] =
        if variant.targets.contains(&"direct") || variant.targets.is_empty() {
            &[
                ("direct", "direct"),
                ("nginx", "nginx"),
                ("nginx+headers", "nginx + gateway headers"),
                ("oauth2", "oauth2 memory"),
            ]
        } else {
            &[
                ("nginx", "nginx"),
                ("nginx+headers", "nginx + gateway headers"),
                ("oauth2", "oauth2 memory"),
            ]
        };
    report::publish(
        variant.bench,
        &title,
        &Refs {
            throughput,
            p99: Some(("nginx", "nginx")),
            same_mix: &[("oauth2 pg+redis cold", "nginx cold mix")],
        },
        &if variant.name == "plain" {
            "Portcullis vs direct vs nginx".to_string()
        } else {
            format!("Portcullis vs nginx ({})", variant.about)
        },
        settings,
        &rows,
    )
}
