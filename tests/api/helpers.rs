//! Test helpers: a real gateway on free ports with its own stores, a real upstream that echoes what
//! it received, and typed calls for the admin API and the proxy.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use portcullis::config::{Database, Secret, Settings};
use portcullis::startup::{pg_settings, Application};
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
    /// Client that accepts the generated certificate and never follows redirects.
    pub http: reqwest::Client,
    /// Handles to stop this gateway's servers.
    pub handles: Vec<ServerHandle>,
    /// The Postgres schema of a `spawn_pg_app` gateway, dropped with the app.
    pub pg: Option<PgSchema>,
}

/// Settings every test starts from: loopback, port 0 everywhere, memory store.
pub fn test_settings() -> Settings {
    Settings {
        proxy_listen: "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
        admin_listen: "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
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
        let pg = pg_settings(&self.settings);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(pool) = postgres::connect(&pg).await {
                    if let Ok(m) = Migrator::new(pool, pg.schema.clone()) {
                        let _ = m.reset().await;
                    }
                }
            });
        })
        .join();
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
    portcullis::telemetry::init(&settings);
    let app = Application::build(settings).await.expect("gateway builds");
    let handles = app.server_handles();
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
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        admin,
        proxy,
        proxy_tls,
        admin_tls,
        http: client(),
        handles,
        pg: None,
    }
}

/// A client that trusts any certificate (the generated one is self-signed).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
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
/// `/big?bytes=` streams a large body, `/status/{code}` answers that status.
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
    HttpResponse::Ok().json(json!({
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

/// A Postgres cluster of its own in a temporary directory, run as the `postgres` user.
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// `None` when this machine cannot run one (no server binaries, not root).
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let data = dir.path().join("data");
        let cluster = Self {
            bin,
            data,
            port: dead_port(),
            _dir: dir,
        };
        let ok = cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str()?,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        (ok && cluster.pg_ctl("start")).then_some(cluster)
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

    fn run(&self, tool: &str, args: &[&str]) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `pg_ctl start|stop` (fast shutdown), waiting for it.
    pub fn pg_ctl(&self, action: &str) -> bool {
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
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// A `redis-server` of its own on a free port (no persistence), to kill and start again.
pub struct PrivateRedis {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// `None` when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        let mut redis = Self {
            port: dead_port(),
            child: None,
        };
        redis.restart().then_some(redis)
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
        self.kill();
        let Ok(child) = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["ping"]).trim() == "PONG" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
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
