//! Test helpers: a real gateway on free ports with its own stores, a real upstream that echoes what
//! it received, and typed calls for the admin API and the proxy.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use portcullis::config::{Database, Secret, Settings};
use portcullis::plugins::oauth2::VerifiedSecrets;
use portcullis::startup::ServerHandle;
use portcullis::startup::{pg_settings, Application, Stores};
use portcullis_stores::postgres::{self, Migrator, PgSettings};
use serde_json::{json, Value};

/// A running gateway.
pub struct TestApp {
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
    /// `http://127.0.0.1:<proxy port>`.
    pub proxy: String,
    /// `https://127.0.0.1:<proxy tls port>`.
    pub proxy_tls: String,
    /// `https://127.0.0.1:<admin tls port>`.
    pub admin_tls: String,
    /// `http://127.0.0.1:<status port>` (empty when `status_listen` is off).
    pub status: String,
    /// `https://127.0.0.1:<status tls port>` (empty without an `ssl` status listener).
    pub status_tls: String,
    /// Client that accepts the generated certificate and never follows redirects.
    pub http: reqwest::Client,
    /// Handles to stop this gateway's servers.
    pub handles: Vec<ServerHandle>,
    /// The Postgres schema of a `spawn_pg_app` gateway, dropped with the app.
    pub pg: Option<PgSchema>,
    /// The gateway's map of verified hashed secrets (tests count its full verifications).
    pub verified_secrets: VerifiedSecrets,
}

/// Settings every test starts from: loopback, port 0 everywhere, memory store.
pub fn test_settings() -> Settings {
    Settings {
        proxy_listen: "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
        admin_listen: "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
        // Kong's default (port 8007) would be shared by every test's gateway.
        status_listen: "off".into(),
        worker_processes: 1,
        log_level: "warn".into(),
        ..Settings::default()
    }
}

/// Starts a gateway with the default test settings: the memory store, or a fresh Postgres
/// schema when `PORTCULLIS_TEST_DATABASE=postgres` (so the whole suite runs against both).
pub async fn spawn_app() -> TestApp {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        return spawn_pg_app().await;
    }
    spawn_with(test_settings()).await
}

/// The shared test Redis: `PORTCULLIS_TEST_REDIS`, or the local default. Tests sharing it use a
/// `redis_prefix` of their own.
pub fn test_redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Default test server; override with `PORTCULLIS_TEST_PG` (libpq `key=value` form).
pub const DEFAULT_TEST_PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A fresh schema `pt_<random>` of the test Postgres, and gateway settings pointing at it.
/// Dropped (schema and all) when this value is dropped, even if the test failed.
pub struct PgSchema {
    /// Gateway settings: `database = postgres`, `pg_schema` = this schema.
    pub settings: Settings,
}

impl PgSchema {
    /// A fresh schema with every migration applied (through the stores crate's migrator).
    pub async fn migrated() -> Self {
        let schema = Self::unmigrated();
        schema.migrate().await;
        schema
    }

    /// A fresh schema name with nothing in it yet.
    pub fn unmigrated() -> Self {
        let conn = std::env::var("PORTCULLIS_TEST_PG").unwrap_or_else(|_| DEFAULT_TEST_PG.into());
        let pg = PgSettings::from_conn_str(&conn).expect("PORTCULLIS_TEST_PG parses");
        let settings = Settings {
            database: Database::Postgres,
            pg_host: pg.host,
            pg_port: pg.port,
            pg_user: pg.user,
            pg_password: pg.password.map(Secret::new),
            pg_database: pg.dbname,
            pg_schema: Some(format!("pt_{}", uuid::Uuid::new_v4().simple())),
            pg_max_connections: 8,
            ..test_settings()
        };
        Self { settings }
    }

    /// Applies the migrations, as `portcullis migrations up` would.
    pub async fn migrate(&self) {
        let pg = pg_settings(&self.settings);
        let pool = postgres::connect(&pg)
            .await
            .expect("test Postgres reachable");
        Migrator::new(pool, pg.schema.clone())
            .expect("schema name")
            .up()
            .await
            .expect("migrations apply");
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Its own runtime: the test's may be gone, or panicking.
        portcullis_stores::contract::drop_test_schema(
            pg_settings(&self.settings),
            Duration::from_secs(30),
        );
    }
}

/// Starts a gateway on Postgres, in a fresh migrated schema of its own.
pub async fn spawn_pg_app() -> TestApp {
    let schema = PgSchema::migrated().await;
    let mut app = spawn_with(schema.settings.clone()).await;
    app.pg = Some(schema);
    app
}

/// Retries `probe` until it returns `Some` or `within` has passed (then panics with `what`).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a gateway with the given settings.
pub async fn spawn_with(settings: Settings) -> TestApp {
    logs::install();
    let app = Application::build(settings).await.expect("gateway builds");
    serve(app)
}

/// Starts a gateway on stores the test opened itself (and keeps a handle to, to read what the
/// gateway stored as Kong's tests read the database).
pub async fn spawn_on(settings: Settings, stores: Stores) -> TestApp {
    logs::install();
    let app = Application::build_with(settings, stores)
        .await
        .expect("gateway builds");
    serve(app)
}

/// Runs a built gateway in the background.
fn serve(app: Application) -> TestApp {
    let handles = app.server_handles();
    let verified_secrets = app.verified_secrets.clone();
    let admin = format!("http://127.0.0.1:{}", app.admin_port().expect("admin port"));
    let admin_tls = app
        .admin_tls_port()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .unwrap_or_default();
    let proxy = app
        .proxy_port()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .unwrap_or_default();
    let proxy_tls = app
        .proxy_tls_port()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .unwrap_or_default();
    let status = app
        .status_port()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .unwrap_or_default();
    let status_tls = app
        .status_tls_port()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .unwrap_or_default();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        admin,
        status,
        status_tls,
        proxy,
        proxy_tls,
        admin_tls,
        http: client(),
        handles,
        pg: None,
        verified_secrets,
    }
}

/// A client that trusts any certificate (the generated one is self-signed). It speaks HTTP/1.1
/// as Kong's test client does: over HTTP/2 a request's `:authority` (the URL's) wins over the
/// `Host` header the tests set to pick a route. HTTP/2 tests build their own client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestApp {
    /// Stops the gateway's servers (the stores stay), as a node shutting down.
    pub async fn stop(&self) {
        for h in &self.handles {
            h.stop(true).await;
        }
    }
    /// POST JSON to the admin API; returns status and body.
    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.admin))
            .json(&body)
            .send()
            .await
            .expect("admin reachable");
        status_json(r).await
    }
    /// POST a form to the admin API.
    pub async fn admin_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.admin))
            .form(form)
            .send()
            .await
            .expect("admin reachable");
        status_json(r).await
    }
    /// Any method with an optional JSON body.
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        status_json(rb.send().await.expect("admin reachable")).await
    }
    /// GET on the admin API.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.admin_call(reqwest::Method::GET, path, None).await
    }
    /// PUT JSON on the admin API.
    pub async fn admin_put(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin_call(reqwest::Method::PUT, path, Some(body))
            .await
    }
    /// PATCH JSON on the admin API.
    pub async fn admin_patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin_call(reqwest::Method::PATCH, path, Some(body))
            .await
    }
    /// DELETE on the admin API.
    pub async fn admin_delete(&self, path: &str) -> (u16, Value) {
        self.admin_call(reqwest::Method::DELETE, path, None).await
    }
    /// Sends raw bytes with the given content type to the admin API.
    pub async fn admin_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("admin reachable");
        status_json(r).await
    }
    /// Number of rows `GET /{entity}` lists (first page).
    pub async fn count(&self, entity: &str) -> usize {
        let (s, body) = self.admin_get(&format!("/{entity}")).await;
        assert_eq!(s, 200, "{body}");
        body["data"].as_array().expect("data").len()
    }
    /// Creates a service pointing at `url` and a route with `paths`; returns (service, route).
    pub async fn expose(&self, name: &str, url: &str, paths: &[&str]) -> (Value, Value) {
        let (s, service) = self
            .admin_post("/services", json!({ "name": name, "url": url }))
            .await;
        assert_eq!(s, 201, "service created: {service}");
        let (s, route) = self
            .admin_post(
                &format!("/services/{name}/routes"),
                json!({ "name": format!("{name}-route"), "paths": paths }),
            )
            .await;
        assert_eq!(s, 201, "route created: {route}");
        (service, route)
    }
    /// GET through the proxy.
    pub async fn proxy_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.proxy))
            .send()
            .await
            .expect("proxy reachable")
    }
}

/// Status and JSON body (Null when empty or not JSON).
pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A real upstream: `/echo…` answers JSON describing the request, `/slow?ms=` waits first,
/// `/big?bytes=` streams a large body, `/status/{code}` answers that status,
/// `/response-headers?name=value` adds those response headers.
pub struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Port.
    pub port: u16,
}

async fn echo(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(v.to_str().unwrap_or_default()),
            )
        })
        .collect();
    let path = req.path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap(),
        )
        .json(json!({ "status": code }));
    }
    if path.starts_with("/big") {
        // Echo the body back unchanged (large-body streaming test).
        return HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(body);
    }
    let mut answer = HttpResponse::Ok();
    if path == "/response-headers" {
        // Each query argument becomes a response header (Kong's mock upstream).
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
        for (name, value) in pairs {
            answer.append_header((name, value));
        }
    }
    answer.json(json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.query_string(),
        "uri": req.uri().path_and_query().map(|p| p.as_str().to_string()),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// Starts the echo upstream on a free port.
pub fn spawn_upstream() -> Upstream {
    spawn_echo(None)
}

/// Starts the echo upstream over TLS with a freshly generated self-signed certificate.
pub fn spawn_tls_upstream() -> Upstream {
    let config = portcullis::tls::server_config("upstream", None).expect("self-signed config");
    spawn_echo(Some((*config).clone()))
}

/// Starts the echo upstream over TLS with the given server settings (a certificate of the
/// test's, a client certificate required).
pub fn spawn_tls_upstream_with(config: rustls::ServerConfig) -> Upstream {
    spawn_echo(Some(config))
}

fn spawn_echo(tls: Option<rustls::ServerConfig>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let server = HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(256 * 1024 * 1024))
            .default_service(web::to(echo))
    })
    .workers(1)
    .disable_signals();
    let (server, scheme) = match tls {
        Some(config) => (server.listen_rustls_0_23(listener, config), "https"),
        None => (server.listen(listener), "http"),
    };
    actix_rt::spawn(server.expect("listen").run());
    Upstream {
        url: format!("{scheme}://127.0.0.1:{port}"),
        port,
    }
}

/// A port on which nothing listens.
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Whether this run is CI (`CI=true`), where a test that cannot run must fail, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The private server, or `None` after saying on stderr why the test does not run here. Under
/// `CI=true` it fails the test instead: a green CI run means every test ran.
pub fn or_skip<T>(started: Result<T, String>) -> Option<T> {
    match started {
        Ok(server) => Some(server),
        Err(why) if in_ci() => panic!("CI=true and this test cannot run: {why}"),
        Err(why) => {
            eprintln!("skipped: {why} (under CI=true this fails)");
            None
        }
    }
}

/// Why a private server did not start on the port it was given.
enum NotStarted {
    /// The port, free when picked, was taken before the server bound it (a busy run's outgoing
    /// connections draw their local ports from the same range): another port may do.
    PortTaken(String),
    /// Anything else; says what.
    Failed(String),
}

/// Runs `start` on a port free when picked, and on another, up to five in all, while the port
/// turns out taken.
fn start_on_a_free_port<T>(
    mut start: impl FnMut(u16) -> Result<T, NotStarted>,
) -> Result<T, String> {
    let mut attempts = 1;
    loop {
        match start(dead_port()) {
            Ok(server) => return Ok(server),
            Err(NotStarted::PortTaken(_)) if attempts < 5 => attempts += 1,
            Err(NotStarted::PortTaken(why) | NotStarted::Failed(why)) => return Err(why),
        }
    }
}

/// Waits up to 20 s for a freshly spawned `redis-server` to answer `ping`; one that exits
/// first most likely found its port taken, one still silent then is killed.
fn until_redis_answers(
    child: &mut std::process::Child,
    port: u16,
    ping: impl Fn() -> bool,
) -> Result<(), NotStarted> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ping() {
            return Ok(());
        }
        if child.try_wait().ok().flatten().is_some() {
            return Err(NotStarted::PortTaken(format!(
                "redis-server on port {port} exited at start (port taken?)"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(NotStarted::Failed(format!(
        "redis-server on port {port} did not answer PING within 20 s"
    )))
}

/// A Postgres cluster of its own in a temporary directory, run as the `postgres` user.
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// Starts one, or says why this machine cannot (no server binaries, not root, initdb or
    /// start failed: the server's log is quoted).
    pub fn start() -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no PostgreSQL server installed (/usr/lib/postgresql: {e})"))?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let chown = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.status.success() {
            return Err(format!(
                "cannot give a directory to the postgres user (needs root): {}",
                String::from_utf8_lossy(&chown.stderr).trim()
            ));
        }
        let data = dir.path().join("data");
        let mut cluster = Self {
            bin,
            data,
            port: 0,
            _dir: dir,
        };
        let data = cluster.data.to_string_lossy().into_owned();
        cluster
            .run(
                "initdb",
                &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
            )
            .map_err(|e| format!("initdb: {e}"))?;
        let log_path = format!("{data}.log");
        start_on_a_free_port(|port| {
            cluster.port = port;
            let _ = std::fs::remove_file(&log_path);
            cluster.pg_ctl("start").map_err(|e| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let why = format!("pg_ctl start: {e}; server log: {log}");
                if log.contains("Address already in use") {
                    NotStarted::PortTaken(why)
                } else {
                    NotStarted::Failed(why)
                }
            })
        })?;
        Ok(cluster)
    }

    /// Gateway settings on this cluster's `postgres` database in schema `schema`, migrated
    /// (`pg_timeout` bounds every query, so an outage is noticed quickly).
    pub async fn migrated_settings(&self, schema: &str, pg_timeout: u64) -> Settings {
        let settings = Settings {
            database: Database::Postgres,
            pg_host: "127.0.0.1".into(),
            pg_port: self.port,
            pg_user: "postgres".into(),
            pg_database: "postgres".into(),
            pg_schema: Some(schema.into()),
            pg_timeout,
            ..test_settings()
        };
        let pg = pg_settings(&settings);
        let pool = postgres::connect(&pg).await.expect("private cluster up");
        Migrator::new(pool, pg.schema.clone())
            .expect("schema name")
            .up()
            .await
            .expect("migrations apply");
        settings
    }

    /// Runs a server tool as the `postgres` user; its stderr when it fails.
    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs `sql` with `psql` as the superuser on this cluster's `postgres` database (stopping
    /// at the first error); its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_ctl start|stop` (fast shutdown), waiting for it.
    pub fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let socket_dir = self.data.parent().unwrap_or(Path::new("/tmp"));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            socket_dir.display()
        );
        let data = self.data.to_string_lossy().into_owned();
        let log = format!("{data}.log");
        let mut args = vec!["-D", &data, "-l", &log, "-o", &options, "-w"];
        if action == "stop" {
            args.extend(["-m", "fast"]);
        }
        args.push(action);
        self.run("pg_ctl", &args)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// A `redis-server` of its own on a free port (no persistence), to kill and start again.
pub struct PrivateRedis {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one, or says why it could not (`redis-server` not installed, or not answering).
    pub fn start() -> Result<Self, String> {
        let mut redis = Self {
            port: 0,
            child: None,
        };
        start_on_a_free_port(|port| {
            redis.port = port;
            redis.start_again()
        })?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port; true once it answers.
    pub fn restart(&mut self) -> bool {
        self.start_again().is_ok()
    }

    fn start_again(&mut self) -> Result<(), NotStarted> {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| NotStarted::Failed(format!("redis-server: {e}")))?;
        let answered = until_redis_answers(&mut child, self.port, || {
            self.cli(&["ping"]).trim() == "PONG"
        });
        self.child = Some(child);
        answered
    }

    /// Runs `redis-cli` against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` of its own serving TLS only (no plain port), with a password, and a
/// certificate for `localhost`, `127.0.0.1` and `redis.test` signed by a CA made for it.
pub struct TlsRedis {
    /// TLS port on 127.0.0.1.
    pub port: u16,
    /// The `requirepass` password.
    pub password: String,
    /// The CA that signed the server's certificate (PEM file).
    pub ca_file: PathBuf,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts one, or says why it could not (`redis-server` not installed or built without TLS,
    /// or not answering).
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca = rcgen::CertificateParams::new(Vec::new()).map_err(|e| e.to_string())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test Redis CA");
        let ca = ca.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let names = ["localhost", "127.0.0.1", "redis.test"].map(String::from);
        let cert = rcgen::CertificateParams::new(names.to_vec())
            .and_then(|p| p.signed_by(&key, &ca, &ca_key))
            .map_err(|e| e.to_string())?;
        let file = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map(|()| path)
        };
        let files = (|| {
            Ok::<_, std::io::Error>((
                file("ca.pem", ca.pem())?,
                file("redis.pem", cert.pem())?,
                file("redis.key", key.serialize_pem())?,
            ))
        })()
        .map_err(|e| format!("writing the certificates: {e}"))?;
        let (ca_file, cert_file, key_file) = files;
        let password = format!("redis-tls-{}", uuid::Uuid::new_v4().simple());
        let path = |p: &Path| p.display().to_string();
        let started = start_on_a_free_port(|port| {
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &path(&cert_file)])
                .args(["--tls-key-file", &path(&key_file)])
                .args(["--tls-ca-cert-file", &path(&ca_file)])
                .args(["--tls-auth-clients", "no", "--requirepass", &password])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| NotStarted::Failed(format!("redis-server: {e}")))?;
            until_redis_answers(&mut child, port, || {
                tls_redis_cli(port, &ca_file, &password, &["ping"]).trim() == "PONG"
            })
            .map_err(|e| match e {
                NotStarted::Failed(why) => {
                    NotStarted::Failed(format!("{why} (built without TLS?)"))
                }
                taken => taken,
            })?;
            Ok((port, child))
        });
        let (port, child) = started?;
        Ok(Self {
            port,
            password,
            ca_file,
            child,
            dir,
        })
    }

    /// Runs `redis-cli` over TLS against this server, logged in; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        tls_redis_cli(self.port, &self.ca_file, &self.password, args)
    }

    /// A CA of its own that signed nothing this server presents, as a PEM file beside the
    /// server's (for a gateway that must not trust it).
    pub fn other_ca_file(&self) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA");
        let path = self.dir.path().join("other-ca.pem");
        std::fs::write(&path, ca.pem()).expect("write the other CA");
        path
    }
}

/// `redis-cli` over TLS to the server on `port`, trusting `ca_file`, logged in with `password`;
/// its stdout.
fn tls_redis_cli(port: u16, ca_file: &Path, password: &str, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca_file)
        .args(["-p", &port.to_string(), "--no-auth-warning"])
        .args(["-a", password])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the gateway logs, captured per test.
///
/// One subscriber is installed per test binary (the first gateway a test starts installs it, in
/// place of the gateway's own): it prints warnings and errors to stderr as the gateway would, and
/// keeps every WARN and ERROR event with the id of the actix system it was logged on. Each
/// `#[actix_web::test]` runs its own actix system, and the gateway's servers (their worker
/// arbiters), actors and the tasks they spawn all run on that system, so a test reads only what
/// its own gateways logged although tests run in parallel. Events logged on threads outside any
/// actix system (the blocking pool) are printed but not attributed to a test.
pub mod logs {
    use std::fmt::Write as _;
    use std::io::IsTerminal;
    use std::sync::{Mutex, Once};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    /// One captured event.
    #[derive(Debug, Clone)]
    pub struct Line {
        /// The actix system it was logged on.
        pub system: usize,
        /// Its level.
        pub level: Level,
        /// Target, message and fields, as one line.
        pub text: String,
    }

    static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    /// Installs the capturing subscriber (once per test binary).
    pub fn install() {
        INSTALL.call_once(|| {
            let print = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
            let _ = tracing_subscriber::registry()
                .with(print)
                .with(Capture.with_filter(LevelFilter::WARN))
                .try_init();
        });
    }

    /// The ERROR events logged so far on the calling test's actix system.
    pub fn errors() -> Vec<String> {
        logged(Level::ERROR)
    }

    /// The events at `level` logged so far on the calling test's actix system.
    pub fn logged(level: Level) -> Vec<String> {
        let system = actix_rt::System::current().id();
        LINES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| l.system == system && l.level == level)
            .map(|l| l.text.clone())
            .collect()
    }

    struct Capture;

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let Some(system) = actix_rt::System::try_current() else {
                return;
            };
            let mut text = Text(event.metadata().target().to_string());
            event.record(&mut text);
            LINES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Line {
                    system: system.id(),
                    level: *event.metadata().level(),
                    text: text.0,
                });
        }
    }

    struct Text(String);

    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    /// What this test's gateway logs on its worker threads is this test's; what another actix
    /// system logs is not.
    #[actix_web::test]
    async fn a_test_reads_what_its_own_gateway_logged() {
        let app = super::spawn_with(super::test_settings()).await;
        let url = format!("http://127.0.0.1:{}", super::dead_port());
        app.expose("down", &url, &["/down"]).await;
        assert_eq!(app.proxy_get("/down").await.status(), 502);
        let warnings = logged(Level::WARN);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("upstream failed"), "{warnings:?}");
        std::thread::spawn(|| {
            actix_rt::System::new().block_on(async { tracing::error!("another test's error") });
        })
        .join()
        .expect("the other system ran");
        assert_eq!(errors(), Vec::<String>::new());
        tracing::error!("this test's error");
        assert_eq!(errors().len(), 1);
    }
}

/// Service + route `/api` on `upstream`, the `oauth2` plugin (client credentials), consumer `bob`
/// with clientid123/secret123.
pub async fn client_credentials_fixture(app: &TestApp, upstream: &str) {
    client_credentials_fixture_with(
        app,
        upstream,
        json!({"name": "app", "client_id": "clientid123", "client_secret": "secret123",
               "redirect_uris": ["http://google.test/kong"]}),
    )
    .await;
}

/// [`client_credentials_fixture`] with `bob`'s credential given whole; returns it as created.
pub async fn client_credentials_fixture_with(
    app: &TestApp,
    upstream: &str,
    credential: Value,
) -> Value {
    app.expose("svc", upstream, &["/api"]).await;
    let (s, b) = app
        .admin_post(
            "/services/svc/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post("/consumers", json!({"username": "bob"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app.admin_post("/consumers/bob/oauth2", credential).await;
    assert_eq!(s, 201, "{b}");
    b
}

/// Which store a plugin conformance test runs its gateway on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Postgres,
}

/// A gateway on `backend` with the default test settings; on Postgres in a fresh migrated schema
/// of its own (dropped with the app).
pub async fn spawn_on_backend(backend: Backend) -> TestApp {
    match backend {
        Backend::Memory => spawn_with(test_settings()).await,
        Backend::Postgres => spawn_pg_app().await,
    }
}

/// Expands the listed cases (`async fn case(backend: Backend)`) into `memory::<case>` and
/// `postgres::<case>` tests.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

impl TestApp {
    /// Sends a proxy request with the given `Host` (Kong's fixtures pick routes by host).
    pub fn proxy_to(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.proxy))
            .header("host", host)
    }

    /// Creates a service on `upstream` with a route for `host` and the plugin `name` with
    /// `config` on that route; returns the route.
    pub async fn host_with_plugin(
        &self,
        upstream: &str,
        host: &str,
        name: &str,
        config: Value,
    ) -> Value {
        let service = format!("svc-{host}");
        let (s, svc) = self
            .admin_post("/services", json!({"name": service, "url": upstream}))
            .await;
        assert_eq!(s, 201, "{svc}");
        let (s, route) = self
            .admin_post(
                &format!("/services/{service}/routes"),
                json!({"name": format!("route-{host}"), "hosts": [host]}),
            )
            .await;
        assert_eq!(s, 201, "{route}");
        let (s, plugin) = self
            .admin_post(
                &format!("/routes/route-{host}/plugins"),
                json!({"name": name, "config": config}),
            )
            .await;
        assert_eq!(s, 201, "{host}: {plugin}");
        route
    }
}

/// A gateway on `backend` with consumer `bob`; returns it and `bob` as created.
pub async fn with_bob(backend: Backend) -> (TestApp, Value) {
    let app = spawn_on_backend(backend).await;
    let (s, bob) = app
        .admin_post("/consumers", json!({"username": "bob"}))
        .await;
    assert_eq!(s, 201, "{bob}");
    (app, bob)
}
