//! Token endpoint bench (issue 7): `client_credentials` issuance per second, and
//! authorization-code redemption per second (codes are made first, each redeemed once, as fast
//! as the connections allow).
//!
//! ```text
//! cargo bench --bench tokens
//! BENCH_SECONDS=3 BENCH_ROUNDS=1 cargo bench --bench tokens
//! ```
//!
//! Stores: `memory` always; `postgres` (a fresh `pg_schema`, migrated, dropped afterwards) when
//! Postgres answers on loopback at `PORTCULLIS_TEST_PG` (libpq `key=value` form, default as in
//! `scripts/test.sh`: `host=127.0.0.1 port=5432 user=postgres dbname=test`). Otherwise it says
//! why not.

mod common;

use std::process::ExitCode;

use anyhow::{bail, Result};
use common::admin::{
    client_credentials_request, code_of, Admin, CLIENT_ID, CLIENT_SECRET, PREFIX, PROVISION_KEY,
};
use common::driver::{self, Load, Measured, Order, Req};
use common::procs::{self, Gateway};
use common::report::{self, Refs, Row};
use common::stores::{PgSchema, Settings};
use common::{fmt_secs, measure, progress, BenchEnv};
use serde_json::json;

/// Most codes made per round (bounds memory and the redemption run).
const MAX_CODES: u64 = 300_000;

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

fn run() -> Result<()> {
    let env = BenchEnv::from_env();
    // The token endpoints answer from the plugin; the upstream only backs the route.
    let upstream = procs::start_upstream(&BenchEnv {
        upstream: Some("hyper".into()),
        ..env.clone()
    })?;
    let mut rows = Vec::new();
    for (store, settings) in stores() {
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
        Admin::oauth2_service(&gw, upstream.addr)?.client_credentials_token()?;
        bench_store(&env, store, &gw, &mut rows)?;
    }
    let title = format!(
        "tokens: successful answers per second, {} connections, {} s × {} round(s) (median); CPU per 1k answers and RSS are the gateway's (goal with Postgres: ≥ 2,000 client_credentials tokens/s)",
        env.connections, env.seconds, env.rounds
    );
    let settings = json!({
        "seconds": env.seconds, "rounds": env.rounds, "connections": env.connections,
        "warmup": env.warmup, "gateway_workers": env.workers, "max_codes_per_round": MAX_CODES,
    });
    report::publish(
        "tokens",
        &title,
        &Refs {
            throughput: &[("cc memory", "client_credentials memory")],
            p99: None,
        },
        "Portcullis token endpoints",
        settings,
        &rows,
    )
}
