//! Token endpoint bench: `client_credentials` issuance per second, and
//! authorization-code redemption per second (codes are made first, each redeemed once, as fast
//! as the connections allow).
//!
//! ```text
//! cargo bench --bench tokens
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 cargo bench --bench tokens
//! BENCH_ONLY=hashed-secret cargo bench --bench tokens      # only the hashed-secret figures
//! ```
//!
//! Hashed secrets (memory store): `client_credentials` issuance with a `hash_secret` credential
//! next to the plain one, and the p99 of proxied requests (valid bearer token) idle and while
//! 4 clients issue tokens with the hashed secret as fast as they can (goal: ≤ 2× idle).
//!
//! Stores: `memory` always; `postgres` (a fresh `pg_schema`, migrated, dropped afterwards) when
//! Postgres answers on loopback at `PORTCULLIS_TEST_PG` (libpq `key=value` form, default as in
//! `scripts/test.sh`: `host=127.0.0.1 port=5432 user=postgres dbname=test`). Otherwise it says
//! why not.

mod common;

use std::process::ExitCode;

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use common::admin::{
    bearer_request, client_credentials_request, code_of, Admin, CLIENT_ID, CLIENT_SECRET, PREFIX,
    PROVISION_KEY,
};
use common::driver::{self, Load, Measured, Order, Req};
use common::procs::{self, Gateway};
use common::report::{self, Refs, Row, Run};
use common::stores::{PgSchema, Settings};
use common::{fmt_secs, measure, progress, BenchEnv};
use serde_json::json;

/// Most codes made per round (bounds memory and the redemption run).
const MAX_CODES: u64 = 300_000;

/// Client id of the application whose secret is stored hashed (argon2id); same secret as the
/// plain one.
const HASHED_CLIENT_ID: &str = "bench-hashed-client";

/// Connections issuing tokens with the hashed secret while proxied requests are measured.
const HASHED_CLIENTS: usize = 4;

/// Row names of the hashed-secret figures.
const PLAIN_CC: &str = "client_credentials memory";
const HASHED_CC: &str = "client_credentials hashed secret memory";
const PROXIED_IDLE: &str = "proxied (oauth2 memory) idle";
const PROXIED_LOADED: &str = "proxied (oauth2 memory), 4 clients issuing with a hashed secret";
const HASHED_DURING: &str = "  the 4 clients' hashed-secret issuance meanwhile";

/// `PORTCULLIS_*` settings of a gateway and the schema it needs kept (Postgres), or why it cannot
/// be measured here.
type StoreSettings = Result<(Settings, Option<PgSchema>), String>;

/// The stores to measure: memory, and Postgres in a fresh schema (dropped at the end) when it is
/// reachable.
fn stores() -> Vec<(&'static str, StoreSettings)> {
    let memory = Ok((vec![("PORTCULLIS_DATABASE".into(), "memory".into())], None));
    let postgres = PgSchema::fresh("tokens").map(|pg| (pg.settings.clone(), Some(pg)));
    vec![("memory", memory), ("postgres", postgres)]
}

fn authorize_request() -> Req {
    Req::form(
        &format!("{PREFIX}/oauth2/authorize"),
        &[
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("provision_key", PROVISION_KEY),
            ("authenticated_userid", "bench-user"),
        ],
    )
    .header("x-forwarded-proto", "https")
}

fn redeem_request(code: &str) -> Req {
    Req::form(
        &format!("{PREFIX}/oauth2/token"),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .header("x-forwarded-proto", "https")
}

/// A `client_credentials` request of the application with the hashed secret.
fn hashed_request() -> Req {
    Req::form(
        &format!("{PREFIX}/oauth2/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", HASHED_CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .header("x-forwarded-proto", "https")
}

fn main() -> ExitCode {
    common::bench_main("tokens", run)
}

fn say(what: &str, m: &Measured) {
    progress(format_args!(
        "  {what}: {:.0}/s, p99 {:.2} ms, {} ok, {} errors",
        m.rps, m.p99_ms, m.ok, m.errors
    ));
}

/// The three measurements on one gateway: issuance, code creation, redemption.
fn bench_store(env: &BenchEnv, store: &str, gw: &Gateway, rows: &mut Vec<Row>) -> Result<()> {
    let cc_name = format!("client_credentials {store}");
    let code_name = format!("authorize (code) {store}");
    let redeem_name = format!("code redemption {store}");
    let (mut cc, mut made, mut redeemed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=env.rounds {
        let left = (env.rounds - round + 1) as u64 * (env.warmup + 3 * env.seconds);
        progress(format_args!(
            "{store} round {round}/{}: client_credentials for {} s, at most {} left for this store",
            env.rounds,
            env.seconds,
            fmt_secs(left)
        ));
        let mut load = Load::new(
            gw.proxy,
            vec![client_credentials_request()],
            env.connections,
            env.warmup(),
        );
        if env.warmup > 0 {
            driver::run(&load, env.force_rust_driver)?;
        }
        load.duration = env.duration();
        let run = measure(env, Some(&gw.proc), &load, round)?;
        say("client_credentials", &run.measured);
        cc.push(run);

        progress(format_args!(
            "{store} round {round}: making codes for up to {} s",
            env.seconds
        ));
        let mut load = Load::new(
            gw.proxy,
            vec![authorize_request()],
            env.connections,
            env.duration(),
        );
        load.keep_every = Some(1);
        load.max_requests = Some(MAX_CODES);
        let mut run = measure(env, Some(&gw.proc), &load, round)?;
        say("authorize", &run.measured);
        let codes: Vec<String> = std::mem::take(&mut run.measured.bodies)
            .iter()
            .filter_map(|b| code_of(b))
            .collect();
        made.push(run);
        if codes.is_empty() {
            bail!("no authorization code could be made");
        }

        progress(format_args!(
            "{store} round {round}: redeeming {} codes, each once",
            codes.len()
        ));
        let requests: Vec<Req> = codes.iter().map(|c| redeem_request(c)).collect();
        let mut load = Load::new(gw.proxy, requests, env.connections, env.duration() * 3);
        load.order = Order::Once;
        let run = measure(env, Some(&gw.proc), &load, round)?;
        say("redemption", &run.measured);
        redeemed.push(run);
    }
    let rss = Some(gw.proc.peak_rss_mib());
    rows.push(Row::from_runs(&cc_name, cc, rss));
    rows.push(Row::from_runs(&code_name, made, rss));
    rows.push(Row::from_runs(&redeem_name, redeemed, rss));
    Ok(())
}

/// One measured run of `requests` over `connections`, after the warm-up run if there is one.
fn warm_then_measure(
    env: &BenchEnv,
    gw: &Gateway,
    requests: Vec<Req>,
    connections: usize,
    round: usize,
) -> Result<Run> {
    let mut load = Load::new(gw.proxy, requests, connections, env.warmup());
    if env.warmup > 0 {
        driver::run(&load, env.force_rust_driver)?;
    }
    load.duration = env.duration();
    measure(env, Some(&gw.proc), &load, round)
}

/// The proxied requests measured while [`HASHED_CLIENTS`] connections issue tokens with the
/// hashed secret as fast as they can (they start a warm-up ahead and stop a second after);
/// the proxied run, and the issuers' run.
fn measure_under_hashed_load(
    env: &BenchEnv,
    gw: &Gateway,
    probe: &[Req],
    round: usize,
) -> Result<(Run, Run)> {
    let lead = env.warmup().max(Duration::from_secs(1));
    let issuing = Load::new(
        gw.proxy,
        vec![hashed_request()],
        HASHED_CLIENTS,
        lead + env.duration() + Duration::from_secs(1),
    );
    let force_rust = env.force_rust_driver;
    let issuers = std::thread::spawn(move || driver::run(&issuing, force_rust));
    let mut load = Load::new(gw.proxy, probe.to_vec(), env.connections, lead);
    driver::run(&load, force_rust)?;
    load.duration = env.duration();
    let mut proxied = measure(env, Some(&gw.proc), &load, round)?;
    // The gateway's CPU in this run is mostly the issuers' argon2: not a per-request figure.
    proxied.cpu_s_per_1k = None;
    let issued = issuers
        .join()
        .map_err(|_| anyhow!("the issuing thread panicked"))??;
    let issued = Run {
        round,
        measured: issued,
        cpu_s_per_1k: None,
    };
    Ok((proxied, issued))
}

/// The hashed-secret figures on the memory gateway (set up by [`Admin::oauth2_service`]):
/// issuance with the hashed secret (and with the plain one when `plain`), then the proxied
/// requests idle and under hashed-secret issuance, each round in that order.
fn bench_hashed(
    env: &BenchEnv,
    gw: &Gateway,
    admin: &Admin,
    plain: bool,
    rows: &mut Vec<Row>,
) -> Result<()> {
    admin.post(
        "/consumers/bench/oauth2",
        json!({"name": "bench-hashed-app", "client_id": HASHED_CLIENT_ID,
               "client_secret": CLIENT_SECRET, "hash_secret": true}),
    )?;
    let token = admin.client_credentials_token()?;
    admin.wait_ready(Some(&token))?;
    let probe = vec![bearer_request(&token)];
    let mut runs: [Vec<Run>; 5] = Default::default();
    let [plain_cc, hashed_cc, idle, loaded, during] = &mut runs;
    for round in 1..=env.rounds {
        progress(format_args!(
            "memory round {round}/{}: hashed secrets, about {} left",
            env.rounds,
            fmt_secs((env.rounds - round + 1) as u64 * (4 * (env.warmup + env.seconds) + 2))
        ));
        if plain {
            let run = warm_then_measure(
                env,
                gw,
                vec![client_credentials_request()],
                env.connections,
                round,
            )?;
            say("client_credentials", &run.measured);
            plain_cc.push(run);
        }
        let run = warm_then_measure(env, gw, vec![hashed_request()], env.connections, round)?;
        say("client_credentials, hashed secret", &run.measured);
        hashed_cc.push(run);
        let run = warm_then_measure(env, gw, probe.clone(), env.connections, round)?;
        say("proxied, idle", &run.measured);
        idle.push(run);
        let (proxied, issued) = measure_under_hashed_load(env, gw, &probe, round)?;
        say("proxied, under hashed-secret issuance", &proxied.measured);
        say("  hashed-secret issuance meanwhile", &issued.measured);
        loaded.push(proxied);
        during.push(issued);
    }
    let rss = Some(gw.proc.peak_rss_mib());
    let [plain_cc, hashed_cc, idle, loaded, during] = runs;
    if plain {
        rows.push(Row::from_runs(PLAIN_CC, plain_cc, rss));
    }
    rows.push(Row::from_runs(HASHED_CC, hashed_cc, rss));
    rows.push(Row::from_runs(PROXIED_IDLE, idle, rss));
    rows.push(Row::from_runs(PROXIED_LOADED, loaded, rss));
    rows.push(Row::from_runs(HASHED_DURING, during, rss));
    Ok(())
}

/// The hashed-secret summary under the table: issuance next to plain, and the p99 ratio.
fn print_hashed_summary(rows: &[Row]) {
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.target == name && r.skipped.is_none())
    };
    let (Some(plain), Some(hashed), Some(idle), Some(loaded)) = (
        find(PLAIN_CC),
        find(HASHED_CC),
        find(PROXIED_IDLE),
        find(PROXIED_LOADED),
    ) else {
        return;
    };
    println!(
        "\nclient_credentials with a hashed secret: {:.0}/s, {:.2}× the plain secret's {:.0}/s",
        hashed.rps,
        hashed.rps / plain.rps.max(f64::MIN_POSITIVE),
        plain.rps
    );
    println!(
        "p99 of proxied requests while {HASHED_CLIENTS} clients issue with a hashed secret: {:.2} ms, {:.2}× idle ({:.2} ms; goal ≤ 2×)",
        loaded.p99_ms,
        loaded.p99_ms / idle.p99_ms.max(f64::MIN_POSITIVE),
        idle.p99_ms
    );
}

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    let only_hashed = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "hashed-secret");
    // The token endpoints answer from the plugin; the upstream only backs the route.
    let upstream = procs::start_upstream(&BenchEnv {
        upstream: Some("hyper".into()),
        ..env.clone()
    })?;
    let mut rows = Vec::new();
    for (store, settings) in stores() {
        if only_hashed && store != "memory" {
            continue;
        }
        let skip = |rows: &mut Vec<Row>, why: String| {
            progress(format_args!("{store}: skipped: {why}"));
            for what in ["client_credentials", "authorize (code)", "code redemption"] {
                rows.push(Row::skipped(&format!("{what} {store}"), why.clone()));
            }
        };
        let (settings, _schema) = match settings {
            Ok(s) => s,
            Err(why) => {
                skip(&mut rows, why);
                continue;
            }
        };
        progress(format_args!("{store}: starting the gateway"));
        let gw = match procs::start_gateway(&format!("portcullis {store}"), &env, &settings) {
            Ok(gw) => gw,
            Err(e) => {
                skip(&mut rows, format!("gateway did not start: {e:#}"));
                continue;
            }
        };
        let admin = Admin::oauth2_service(&gw, upstream.addr)?;
        admin.client_credentials_token()?;
        if !only_hashed {
            bench_store(&env, store, &gw, &mut rows)?;
        }
        if store == "memory" {
            bench_hashed(&env, &gw, &admin, only_hashed, &mut rows)?;
        }
    }
    let title = format!(
        "tokens: successful answers per second, {} connections, {} s × {} round(s) (median); CPU per 1k answers and RSS are the gateway's (goals: with Postgres ≥ 2,000 client_credentials tokens/s; proxied p99 under hashed-secret issuance ≤ 2× idle)",
        env.connections, env.seconds, env.rounds
    );
    let settings = json!({
        "seconds": env.seconds, "rounds": env.rounds, "connections": env.connections,
        "warmup": env.warmup, "gateway_workers": env.workers, "max_codes_per_round": MAX_CODES,
        "hashed_secret_clients": HASHED_CLIENTS, "only": if only_hashed { "hashed-secret" } else { "all" },
    });
    report::publish(
        "tokens",
        &title,
        &Refs {
            throughput: &[("cc memory", PLAIN_CC)],
            p99: Some(("idle", PROXIED_IDLE)),
            same_mix: &[],
        },
        "Portcullis token endpoints",
        settings,
        &rows,
    )?;
    print_hashed_summary(&rows);
    Ok(())
}
