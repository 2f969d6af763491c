//! Three real `portcullis serve` processes on loopback sharing one Postgres schema and one Redis
//! prefix (the topology of `scripts/cluster.sh`, which sets the same `PORTCULLIS_*` variables; the
//! tests start each node themselves so that they can kill and restart one).
//!
//! "Within 1 s" is the deadline of the polling loops below, counted from the moment
//! the change was acknowledged; nothing here sleeps to wait for an outcome.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_stores::postgres::PgSettings;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const DEFAULT_TEST_PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
const PROPAGATION: Duration = Duration::from_secs(1);

/// One gateway process; killed (SIGKILL) and reaped when dropped.
struct Node {
    child: Child,
    proxy: String,
    proxy_tls: String,
    admin: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A schema, a Redis prefix and the nodes running on them. Dropping it kills every node, drops the
/// schema and deletes the prefix's keys.
struct Cluster {
    env: Vec<(String, String)>,
    redis_url: String,
    prefix: String,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Node>>,
    http: reqwest::Client,
    started: usize,
}

fn base_env(schema: &str, prefix: &str) -> Vec<(String, String)> {
    let conn = std::env::var("PORTCULLIS_TEST_PG").unwrap_or_else(|_| DEFAULT_TEST_PG.into());
    let pg = PgSettings::from_conn_str(&conn).expect("PORTCULLIS_TEST_PG parses");
    let redis =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut env = vec![
        ("PORTCULLIS_DATABASE", "postgres".to_string()),
        ("PORTCULLIS_PG_HOST", pg.host),
        ("PORTCULLIS_PG_PORT", pg.port.to_string()),
        ("PORTCULLIS_PG_USER", pg.user),
        ("PORTCULLIS_PG_DATABASE", pg.dbname),
        ("PORTCULLIS_PG_SCHEMA", schema.to_string()),
        ("PORTCULLIS_REDIS_URL", redis),
        ("PORTCULLIS_REDIS_PREFIX", prefix.to_string()),
        (
            "PORTCULLIS_PROXY_LISTEN",
            "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
        ),
        ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("PORTCULLIS_STATUS_LISTEN", "off".into()),
        ("PORTCULLIS_WORKER_PROCESSES", "1".into()),
        ("PORTCULLIS_LOG_LEVEL", "info".into()),
        ("PORTCULLIS_LOG_FORMAT", "text".into()),
    ];
    if let Some(p) = pg.password {
        env.push(("PORTCULLIS_PG_PASSWORD", p));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The binary with this cluster's variables and none inherited.
fn portcullis(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_") || name.starts_with("KONG_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// `addr=127.0.0.1:1234` from a log line.
fn addr_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(str::to_string)
}

impl Cluster {
    /// Bootstraps a fresh schema with the real binary, then starts `n` nodes.
    fn start(n: usize) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let schema = format!("pt_{id}");
        let prefix = format!("pt-{id}");
        let env = base_env(&schema, &prefix);
        let redis_url = env
            .iter()
            .find(|(k, _)| k == "PORTCULLIS_REDIS_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let out = portcullis(&env)
            .args(["migrations", "bootstrap"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = Self {
            env,
            redis_url,
            prefix,
            dir: tempfile::tempdir().unwrap(),
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            started: 0,
        };
        for _ in 0..n {
            let node = cluster.spawn();
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Starts one node, its stderr in a file of its own; returns once it listens.
    fn spawn(&mut self) -> Node {
        self.started += 1;
        let log = self.dir.path().join(format!("node-{}.log", self.started));
        let child = portcullis(&self.env)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            proxy: String::new(),
            proxy_tls: String::new(),
            admin: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            for line in text.lines() {
                let Some(addr) = addr_of(line) else { continue };
                if line.contains("proxy listening") && line.contains("tls=true") {
                    node.proxy_tls = format!("https://{addr}");
                } else if line.contains("proxy listening") {
                    node.proxy = format!("http://{addr}");
                } else if line.contains("admin API listening") {
                    node.admin = format!("http://{addr}");
                }
            }
            if !node.proxy.is_empty() && !node.proxy_tls.is_empty() && !node.admin.is_empty() {
                return node;
            }
            assert!(
                node.child.try_wait().unwrap().is_none(),
                "node exited: {text}"
            );
            assert!(Instant::now() < deadline, "node not listening: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node running")
    }

    /// SIGKILL: the node dies without any shutdown work.
    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = None;
        let node = self.spawn();
        self.nodes[i] = Some(node);
    }

    async fn admin(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.node(i).admin));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        self.admin(i, reqwest::Method::POST, path, Some(body)).await
    }

    /// On node `i`: service `svc` → node `i`'s own admin API, route `/api`, the `oauth2` plugin
    /// (client credentials), consumer `bob` with clientid123/secret123.
    async fn configure(&self, i: usize) {
        let upstream = self.node(i).admin.clone();
        for (path, body) in [
            ("/services", json!({"name": "svc", "url": upstream})),
            (
                "/services/svc/routes",
                json!({"name": "api", "paths": ["/api"]}),
            ),
            (
                "/services/svc/plugins",
                json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
            ),
            ("/consumers", json!({"username": "bob"})),
            (
                "/consumers/bob/oauth2",
                json!({"name": "app", "client_id": "clientid123", "client_secret": "secret123",
                       "redirect_uris": ["http://google.test/kong"]}),
            ),
        ] {
            let (s, b) = self.post(i, path, body).await;
            assert_eq!(s, 201, "{path}: {b}");
        }
    }

    /// Client-credentials token issued by node `i`.
    async fn token(&self, i: usize) -> String {
        let r = self
            .http
            .post(format!("{}/api/oauth2/token", self.node(i).proxy_tls))
            .json(
                &json!({"client_id": "clientid123", "client_secret": "secret123",
                          "grant_type": "client_credentials"}),
            )
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "token issued: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Status of `GET {path}` through node `i`'s proxy, with `token` if given.
    async fn get(&self, i: usize, path: &str, token: Option<&str>) -> u16 {
        let mut rb = self.http.get(format!("{}{path}", self.node(i).proxy));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send().await.unwrap().status().as_u16()
    }

    /// Status of a protected request through node `i`.
    async fn use_token(&self, i: usize, token: &str) -> u16 {
        self.get(i, "/api/status", Some(token)).await
    }

    /// Polls until every node in `nodes` answers `want` for `path` (with `token`); the deadline is
    /// `PROPAGATION` from now.
    async fn within_a_second(
        &self,
        nodes: &[usize],
        path: &str,
        token: Option<&str>,
        want: u16,
        what: &str,
    ) {
        let deadline = Instant::now() + PROPAGATION;
        let mut pending: Vec<usize> = nodes.to_vec();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                if self.get(i, path, token).await != want {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: nodes {pending:?} not within {PROPAGATION:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = portcullis(&self.env)
            .args(["migrations", "reset", "--yes"])
            .output();
        let pattern = format!("{}:*", self.prefix);
        if let Ok(out) = Command::new("redis-cli")
            .args(["-u", &self.redis_url, "--scan", "--pattern", &pattern])
            .output()
        {
            let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                let _ = Command::new("redis-cli")
                    .args(["-u", &self.redis_url, "del"])
                    .args(&keys)
                    .output();
            }
        }
    }
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

#[tokio::test]
async fn a_token_works_on_every_node_at_once_and_a_revocation_reaches_all_within_a_second() {
    let cluster = Cluster::start(3);
    cluster.configure(A).await;
    // Every node must have the configuration before the token test means anything.
    cluster
        .within_a_second(&[A, B, C], "/api/status", None, 401, "plugin everywhere")
        .await;

    let token = cluster.token(A).await;
    for i in [A, B, C] {
        assert_eq!(cluster.use_token(i, &token).await, 200, "node {i} at once");
    }
    // Revoked on B through the admin API (by id, as Kong's clients do).
    let (s, t) = cluster
        .admin(
            B,
            reqwest::Method::GET,
            &format!("/oauth2_tokens/{token}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let id = t["id"].as_str().unwrap();
    let (s, _) = cluster
        .admin(
            B,
            reqwest::Method::DELETE,
            &format!("/oauth2_tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    cluster
        .within_a_second(&[A, C], "/api/status", Some(&token), 401, "revoked on B")
        .await;

    // Revoked on C through RFC 7009.
    let token = cluster.token(B).await;
    for i in [A, B, C] {
        assert_eq!(cluster.use_token(i, &token).await, 200, "node {i}");
    }
    let r = cluster
        .http
        .post(format!("{}/api/oauth2/revoke", cluster.node(C).proxy_tls))
        .json(&json!({"client_id": "clientid123", "client_secret": "secret123", "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    cluster
        .within_a_second(&[A, B], "/api/status", Some(&token), 401, "revoked on C")
        .await;
}

#[tokio::test]
async fn a_route_added_on_one_node_routes_on_another_and_a_restarted_node_serves_the_current_state()
{
    let mut cluster = Cluster::start(3);
    cluster.configure(A).await;
    cluster
        .within_a_second(&[C], "/api/status", None, 401, "plugin on C")
        .await;
    let upstream = cluster.node(A).admin.clone();
    let (s, b) = cluster
        .post(A, "/services", json!({"name": "open", "url": upstream}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = cluster
        .post(
            A,
            "/services/open/routes",
            json!({"name": "open", "paths": ["/open"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    cluster
        .within_a_second(&[C], "/open/status", None, 200, "route added on A")
        .await;

    let kept = cluster.token(A).await;
    let revoked = cluster.token(A).await;
    assert_eq!(cluster.use_token(C, &revoked).await, 200, "cached on C");
    cluster.kill(C);
    // While C is down: a route goes, another comes, a token is revoked.
    let (s, _) = cluster
        .admin(A, reqwest::Method::DELETE, "/routes/open", None)
        .await;
    assert_eq!(s, 204);
    let (s, b) = cluster
        .post(
            A,
            "/services/open/routes",
            json!({"name": "later", "paths": ["/later"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = cluster
        .admin(
            B,
            reqwest::Method::DELETE,
            &format!("/oauth2_tokens/{revoked}"),
            None,
        )
        .await;
    assert_eq!(s, 204);

    cluster.restart(C);
    assert_eq!(
        cluster.get(C, "/later/status", None).await,
        200,
        "new route"
    );
    assert_eq!(
        cluster.get(C, "/open/status", None).await,
        404,
        "deleted route"
    );
    assert_eq!(cluster.use_token(C, &kept).await, 200);
    assert_eq!(cluster.use_token(C, &revoked).await, 401);
}

/// API keys and group memberships written on one node are honoured by every node within a second
/// (the `keyauth_credentials` and `acls` notify triggers), and so are their deletions.
#[tokio::test]
async fn keys_and_groups_written_on_one_node_apply_on_every_node() {
    let cluster = Cluster::start(3);
    let upstream = cluster.node(A).admin.clone();
    let writes = [
        ("/services", json!({"name": "keyed", "url": upstream})),
        (
            "/services/keyed/routes",
            json!({"name": "keyed", "paths": ["/keyed"]}),
        ),
        ("/routes/keyed/plugins", json!({"name": "key-auth"})),
        (
            "/routes/keyed/plugins",
            json!({"name": "acl", "config": {"allow": ["ops"]}}),
        ),
        ("/consumers", json!({"username": "ann"})),
        ("/consumers/ann/key-auth", json!({"key": "ann-key"})),
    ];
    for (path, body) in writes {
        let (s, b) = cluster.post(A, path, body).await;
        assert_eq!(s, 201, "{path}: {b}");
    }
    let keyed = "/keyed/status?apikey=ann-key";
    cluster
        .within_a_second(&[B, C], keyed, None, 403, "key added on A, no group yet")
        .await;
    let (s, b) = cluster
        .post(B, "/consumers/ann/acls", json!({"group": "ops"}))
        .await;
    assert_eq!(s, 201, "{b}");
    cluster
        .within_a_second(&[A, C], keyed, None, 200, "group added on B")
        .await;
    let (s, _) = cluster
        .admin(
            C,
            reqwest::Method::DELETE,
            "/consumers/ann/key-auth/ann-key",
            None,
        )
        .await;
    assert_eq!(s, 204);
    cluster
        .within_a_second(&[A, B], keyed, None, 401, "key deleted on C")
        .await;
}

#[tokio::test]
async fn a_revocation_committed_by_a_node_that_dies_at_once_still_reaches_every_node() {
    let mut cluster = Cluster::start(3);
    cluster.configure(A).await;
    cluster
        .within_a_second(&[A, B, C], "/api/status", None, 401, "plugin everywhere")
        .await;
    let token = cluster.token(A).await;
    for i in [A, B, C] {
        assert_eq!(
            cluster.use_token(i, &token).await,
            200,
            "cached on node {i}"
        );
    }
    let (s, _) = cluster
        .admin(
            B,
            reqwest::Method::DELETE,
            &format!("/oauth2_tokens/{token}"),
            None,
        )
        .await;
    assert_eq!(s, 204, "committed");
    cluster.kill(B);
    cluster
        .within_a_second(
            &[A, C],
            "/api/status",
            Some(&token),
            401,
            "revoked by a dead node",
        )
        .await;
}

/// `scripts/cluster.sh` (the same topology without the test harness): it bootstraps the schema,
/// starts the nodes, prints their ports, and `stop` ends them.
#[tokio::test]
async fn the_cluster_script_starts_nodes_that_share_state_and_stops_them() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let env = base_env(&format!("pt_{id}"), &format!("pt-{id}"));
    // Dropped last: resets the schema the script bootstrapped.
    struct Reset(Vec<(String, String)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = portcullis(&self.0)
                .args(["migrations", "reset", "--yes"])
                .output();
        }
    }
    let _reset = Reset(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
    let run = |args: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.arg(script).args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("PORTCULLIS_") || name.starts_with("KONG_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORTCULLIS_BIN", BIN)
            .env("CLUSTER_DIR", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Stops the nodes even if an assertion below fails.
    struct Stop<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["stop"]);
        }
    }
    let out = run(&["start", "-d", "2"]);
    let _stop = Stop(&run);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admins: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "admin")
                .nth(1)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(admins.len(), 2, "{stdout}");
    let http = reqwest::Client::new();
    let s = http
        .post(format!("{}/consumers", admins[0]))
        .json(&json!({"username": "shared"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 201);
    let s = http
        .get(format!("{}/consumers/shared", admins[1]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 200, "one database behind both nodes");

    let out = run(&["stop"]);
    assert!(out.status.success());
    assert!(
        http.get(format!("{}/status", admins[0]))
            .send()
            .await
            .is_err(),
        "stopped"
    );
}

/// The certificate `node`'s TLS proxy listener presents for `server_name` (SNI), DER encoded.
async fn presented(node: &Node, server_name: &str) -> Vec<u8> {
    let port: u16 = node.proxy_tls.rsplit(':').next().unwrap().parse().unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve(
            server_name,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://{server_name}:{port}/"))
        .send()
        .await
        .unwrap();
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a peer certificate")
        .to_vec()
}

/// A self-signed certificate for `name`: (PEM certificate, PEM key, DER certificate).
fn certificate(name: &str) -> (String, String, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (
        generated.cert.pem(),
        generated.key_pair.serialize_pem(),
        generated.cert.der().to_vec(),
    )
}

#[tokio::test]
async fn a_certificate_written_on_one_node_is_served_by_every_node() {
    let cluster = Cluster::start(2);
    let (cert, key, der) = certificate("shared.test");
    let (s, body) = cluster
        .post(
            A,
            "/certificates",
            json!({ "cert": cert, "key": key, "snis": ["shared.test"] }),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + PROPAGATION;
    while presented(cluster.node(B), "shared.test").await != der {
        assert!(
            Instant::now() < deadline,
            "certificate added on A not served by B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (cert, key, renewed) = certificate("shared.test");
    let (s, body) = cluster
        .admin(
            B,
            reqwest::Method::PATCH,
            &format!("/certificates/{id}"),
            Some(json!({ "cert": cert, "key": key })),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let deadline = Instant::now() + PROPAGATION;
    while presented(cluster.node(A), "shared.test").await != renewed {
        assert!(
            Instant::now() < deadline,
            "certificate renewed on B not served by A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes counting in one Redis (the gateway's `redis_url`: the plugin names none): 300
/// concurrent requests spread over the nodes against `minute = 100`, and exactly 100 pass.
#[tokio::test]
async fn rate_limiting_on_redis_is_exact_across_three_nodes() {
    let cluster = Cluster::start(3);
    let upstream = cluster.node(A).admin.clone();
    for (path, body) in [
        ("/services", json!({"name": "rl", "url": upstream})),
        (
            "/services/rl/routes",
            json!({"name": "rl", "paths": ["/limited"]}),
        ),
        (
            "/services/rl/plugins",
            json!({"name": "rate-limiting", "config": {
                "minute": 100, "policy": "redis", "limit_by": "header",
                "header_name": "x-tenant"}}),
        ),
    ] {
        let (s, b) = cluster.post(A, path, body).await;
        assert_eq!(s, 201, "{path}: {b}");
    }
    // Every node has the plugin (requests without `x-tenant` count per address, apart).
    let deadline = Instant::now() + PROPAGATION;
    for i in [A, B, C] {
        loop {
            let r = cluster
                .http
                .get(format!("{}/limited/status", cluster.node(i).proxy))
                .send()
                .await
                .unwrap();
            if r.headers().contains_key("x-ratelimit-limit-minute") {
                break;
            }
            assert!(Instant::now() < deadline, "plugin on node {i}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The burst must fall in one minute: wait (bounded) until at least 20 s of it are left.
    let left = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        60 - now % 60
    };
    let deadline = Instant::now() + Duration::from_secs(21);
    while left() <= 20 {
        assert!(Instant::now() < deadline, "the minute never turned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = (0..300).map(|n| {
        let url = format!("{}/limited/status", cluster.node(n % 3).proxy);
        let http = cluster.http.clone();
        async move {
            http.get(url)
                .header("x-tenant", "acme")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((passed, refused), (100, 200), "{statuses:?}");
}

impl Cluster {
    /// Node `i`'s admin scrape.
    async fn metrics(&self, i: usize) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.node(i).admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    }

    /// Polls node `i`'s scrape until it has every line of `lines`; the deadline is `PROPAGATION`
    /// from now (the notices of an acknowledged change are committed already).
    async fn metrics_within_a_second(&self, i: usize, lines: &[&str]) {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let body = self.metrics(i).await;
            if lines.iter().all(|l| body.lines().any(|b| b == *l)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} lacks {lines:?} within {PROPAGATION:?}:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the listening connections of this cluster's schema (`portcullis-listener <schema>`),
    /// as a Postgres restart or a partition would; returns how many were ended.
    async fn cut_listeners(&self) -> i64 {
        let schema = self
            .env
            .iter()
            .find(|(k, _)| k == "PORTCULLIS_PG_SCHEMA")
            .map(|(_, v)| v.clone())
            .unwrap();
        let conn = std::env::var("PORTCULLIS_TEST_PG").unwrap_or_else(|_| DEFAULT_TEST_PG.into());
        let pg = PgSettings::from_conn_str(&conn).unwrap();
        let name = portcullis_stores::postgres::listen::application_name(&PgSettings {
            schema: Some(schema),
            ..pg.clone()
        });
        let pool = portcullis_stores::postgres::connect(&pg).await.unwrap();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        row.get(0)
    }
}

/// `portcullis_cluster_notices_total{kind}` counts every notice a node hears (another node's
/// configuration rows, token revocations, verdict evictions), and
/// `portcullis_cluster_resyncs_total` every full reload: the first LISTEN, then each reconnect.
#[tokio::test]
async fn notices_from_another_node_and_resyncs_are_counted() {
    let cluster = Cluster::start(2);
    for i in [A, B] {
        cluster
            .metrics_within_a_second(i, &["portcullis_cluster_resyncs_total 1"])
            .await;
    }
    let before = cluster.metrics(A).await;
    for kind in ["config", "tokens", "verdicts"] {
        let line = format!("portcullis_cluster_notices_total{{kind=\"{kind}\"}} 0");
        assert!(before.lines().any(|l| l == line), "{line}\n{before}");
    }
    // Five configuration rows written on B: service, route, plugin, consumer, credential.
    cluster.configure(B).await;
    cluster
        .metrics_within_a_second(A, &["portcullis_cluster_notices_total{kind=\"config\"} 5"])
        .await;
    // A token revoked on B (its row deleted), then its introspection verdicts evicted on B.
    let token = cluster.token(B).await;
    let (s, t) = cluster
        .admin(
            B,
            reqwest::Method::GET,
            &format!("/oauth2_tokens/{token}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let id = t["id"].as_str().unwrap();
    let (s, _) = cluster
        .admin(
            B,
            reqwest::Method::DELETE,
            &format!("/oauth2_tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, b) = cluster
        .admin(
            B,
            reqwest::Method::DELETE,
            &format!("/oauth2-introspection/cache/{token}"),
            None,
        )
        .await;
    assert_eq!(s, 204, "{b}");
    cluster
        .metrics_within_a_second(
            A,
            &[
                "portcullis_cluster_notices_total{kind=\"config\"} 5",
                "portcullis_cluster_notices_total{kind=\"tokens\"} 1",
                "portcullis_cluster_notices_total{kind=\"verdicts\"} 1",
                "portcullis_cluster_resyncs_total 1",
            ],
        )
        .await;
    // Both nodes' listeners cut: each reconnects and resyncs once more.
    assert_eq!(cluster.cut_listeners().await, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in [A, B] {
        loop {
            let body = cluster.metrics(i).await;
            if body
                .lines()
                .any(|l| l == "portcullis_cluster_resyncs_total 2")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not resync:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
