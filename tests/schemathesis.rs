//! schemathesis against a live gateway: the admin API's own `GET /openapi.json` drives generated
//! requests (valid and invalid), and every answer must be no server error, a documented status,
//! a documented content type and match its documented schema. Once on the memory store, once on
//! a fresh Postgres schema.
//!
//! Needs the `st` command (`pip install schemathesis==4.32.5`, done by `scripts/services.sh`); under
//! `CI=true` a missing `st` fails the test. `PORTCULLIS_TEST_SCHEMATHESIS_EXAMPLES` sets the examples per
//! operation (default 15), `PORTCULLIS_TEST_SCHEMATHESIS_SEED` the seed (default fixed, so a failure
//! reproduces).

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis::config::{Database, Secret, Settings};
use portcullis::startup::{pg_settings, Application};
use portcullis_stores::postgres::{self, Migrator, PgSettings};

/// The version `scripts/services.sh` installs.
const PINNED: &str = "4.32.5";
/// The checks the admin API must pass with no failure.
const CHECKS: &str =
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// Fuzzing also draws path parameters from earlier answers (ids and names of created entities),
/// so that generated requests reach existing rows rather than 404s; the stateful phase follows
/// the document's links (create, then read, change, nest under and delete what was created).
const CONFIG: &str = r#"
[phases.fuzzing]
extra-data-sources = { responses = true }

[phases.stateful]
max-steps = 12
"#;
/// A run longer than this is a failure (a hung gateway must not hang CI).
const TIME_BOUND: Duration = Duration::from_secs(300);

fn settings() -> Settings {
    Settings {
        proxy_listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        status_listen: "off".into(),
        worker_processes: 1,
        log_level: "error".into(),
        ..Settings::default()
    }
}

/// The schemathesis command line (`st`, or the module run by `python3` when its script is not on
/// `PATH`), or `None` (a failure under `CI=true`) when it is not installed.
fn schemathesis() -> Option<Vec<String>> {
    let candidates: Vec<Vec<String>> = match std::env::var("PORTCULLIS_TEST_SCHEMATHESIS") {
        Ok(cmd) => vec![vec![cmd]],
        Err(_) => vec![
            vec!["st".into()],
            vec!["python3".into(), "-m".into(), "schemathesis.cli".into()],
        ],
    };
    for cmd in &candidates {
        let version = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(out) = version {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !text.contains(PINNED) {
                eprintln!("schemathesis: expected version {PINNED}, found {text}");
            }
            return Some(cmd.clone());
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "schemathesis not found: run scripts/services.sh (pip install schemathesis=={PINNED})"
    );
    eprintln!("SKIPPED: schemathesis not found; pip install schemathesis=={PINNED}");
    None
}

/// Runs schemathesis against a gateway built from `settings`; panics with its report on failure.
/// One run at a time: two runs side by side on a 2-core machine (the test harness starts both
/// tests at once) each take twice as long and can pass [`TIME_BOUND`] without anything wrong.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_against(settings: Settings, label: &str) {
    let Some(st) = schemathesis() else {
        return;
    };
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let app = Application::build(settings).await.expect("gateway builds");
    let port = app.admin_port().expect("admin port");
    actix_rt::spawn(app.run_until_stopped());
    let examples =
        std::env::var("PORTCULLIS_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let seed =
        std::env::var("PORTCULLIS_TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261204".into());
    let report = std::env::temp_dir().join(format!("portcullis-schemathesis-{label}"));
    std::fs::create_dir_all(&report).expect("report directory");
    let config = report.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("config written");
    let mut cmd = Command::new(&st[0]);
    cmd.args(&st[1..])
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // One worker: with two, schemathesis describes hypothesis strategies on two threads at
        // once, and CPython 3.11 keeps one AST recursion counter per interpreter, which two
        // threads parsing together can leave wrong ("AST constructor recursion depth mismatch",
        // python/cpython#106905): a crash of the tool reported as an error of the API.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .arg("--report-dir")
        .arg(&report)
        .arg("--no-color")
        // schemathesis keeps a cache in its working directory: not in the source tree.
        .current_dir(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The gateway runs on this thread's runtime: wait for schemathesis off it.
    let run = actix_web::rt::task::spawn_blocking(move || {
        let child = cmd.spawn().expect("schemathesis starts");
        wait_bounded(child, TIME_BOUND)
    });
    let (status, output) = run.await.expect("schemathesis runner");
    assert!(
        status == Some(0),
        "schemathesis on {label} failed (exit {status:?}; reports in {}):\n{output}",
        report.display()
    );
    // The run must have exercised the API, not stopped at the schema.
    assert!(
        output.contains("passed") && !output.contains("No operations"),
        "schemathesis on {label} ran nothing:\n{output}"
    );
    println!("{output}");
}

/// Waits for `child` at most `bound`, killing it then; returns its exit code and output.
fn wait_bounded(mut child: std::process::Child, bound: Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("schemathesis waits") {
            break status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "{}\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, text)
}

#[actix_web::test]
async fn admin_api_conforms_to_its_openapi_document_on_memory() {
    run_against(settings(), "memory").await;
}

#[actix_web::test]
async fn admin_api_conforms_to_its_openapi_document_on_postgres() {
    let conn = std::env::var("PORTCULLIS_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let pg = PgSettings::from_conn_str(&conn).expect("PORTCULLIS_TEST_PG parses");
    let settings = Settings {
        database: Database::Postgres,
        pg_host: pg.host,
        pg_port: pg.port,
        pg_user: pg.user,
        pg_password: pg.password.map(Secret::new),
        pg_database: pg.dbname,
        pg_schema: Some(format!("st_{}", uuid::Uuid::new_v4().simple())),
        pg_max_connections: 8,
        ..settings()
    };
    let schema = Schema(pg_settings(&settings));
    let pool = postgres::connect(&schema.0)
        .await
        .expect("test Postgres reachable");
    Migrator::new(pool, schema.0.schema.clone())
        .expect("schema name")
        .up()
        .await
        .expect("migrations apply");
    run_against(settings, "postgres").await;
}

/// A test's own Postgres schema, dropped with this value even when the test failed.
struct Schema(PgSettings);

impl Drop for Schema {
    fn drop(&mut self) {
        portcullis_stores::contract::drop_test_schema(self.0.clone(), Duration::from_secs(30));
    }
}
