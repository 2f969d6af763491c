//! No secret in any log line at any level: the real binary at `log_level = trace` runs the Step On
//! tutorial (credential, provision key, code, tokens, refresh, a wrong secret) on the memory store
//! and on Postgres + Redis, and its whole log is searched for every secret value it saw.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/log_receiver.rs"]
mod log_receiver;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A running gateway whose stderr is collected line by line.
struct Gateway {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    admin: String,
    proxy_tls: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn portcullis(env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_") || name.starts_with("KONG_") {
            cmd.env_remove(name);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn addr_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr field")
        .to_string()
}

fn start(env: &[(&str, String)]) -> Gateway {
    let mut env = env.to_vec();
    env.extend([
        (
            "PORTCULLIS_PROXY_LISTEN",
            "127.0.0.1:0, 127.0.0.1:0 ssl".into(),
        ),
        ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("PORTCULLIS_STATUS_LISTEN", "off".into()),
        ("PORTCULLIS_WORKER_PROCESSES", "1".into()),
        ("PORTCULLIS_LOG_LEVEL", "trace".into()),
    ]);
    let mut child = portcullis(&env)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line.clone());
            let _ = tx.send(line);
        }
    });
    let (mut admin, mut proxy_tls) = (String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.is_empty() || proxy_tls.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("listening lines: {:?}", log.lock().unwrap()));
        if line.contains("admin API listening") {
            admin = format!("http://{}", addr_of(&line));
        } else if line.contains("proxy listening") && line.contains("tls=true") {
            proxy_tls = format!("https://{}", addr_of(&line));
        }
    }
    Gateway {
        child,
        log,
        admin,
        proxy_tls,
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The tutorial's requests; returns every secret value that crossed the gateway.
async fn run_tutorial(gw: &Gateway) -> Vec<String> {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let (admin, proxy) = (&gw.admin, &gw.proxy_tls);
    // The admin API itself is the upstream: a real one without another server.
    let (s, b) = post(
        &http,
        format!("{admin}/services"),
        json!({"name": "step-on", "url": admin}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        &http,
        format!("{admin}/services/step-on/routes"),
        json!({"paths": ["/stepon"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, plugin) = post(&http, format!("{admin}/services/step-on/plugins"),
        json!({"name": "oauth2", "config": {"scopes": ["step_counts"], "enable_authorization_code": true}})).await;
    assert_eq!(s, 201, "{plugin}");
    let provision_key = plugin["config"]["provision_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = post(
        &http,
        format!("{admin}/consumers"),
        json!({"username": "shoeflyshoe"}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, cred) = post(
        &http,
        format!("{admin}/consumers/shoeflyshoe/oauth2"),
        json!({"name": "Shoe Fly Shoe", "redirect_uris": ["http://localhost:1234/authorize"]}),
    )
    .await;
    assert_eq!(s, 201, "{cred}");
    let client_id = cred["client_id"].as_str().unwrap().to_string();
    let client_secret = cred["client_secret"].as_str().unwrap().to_string();

    let (s, b) = post(
        &http,
        format!("{proxy}/stepon/oauth2/authorize"),
        json!({"client_id": client_id, "response_type": "code", "scope": "step_counts",
               "provision_key": provision_key, "authenticated_userid": "clark"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let redirect = b["redirect_uri"].as_str().unwrap();
    let code = redirect
        .split_once("code=")
        .and_then(|(_, rest)| rest.split('&').next())
        .unwrap()
        .to_string();
    let wrong_secret = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let (s, b) = post(&http, format!("{proxy}/stepon/oauth2/token"),
        json!({"grant_type": "authorization_code", "client_id": client_id, "client_secret": wrong_secret, "code": "not-a-code"})).await;
    assert_eq!(s, 400, "{b}");
    let (s, tokens) = post(&http, format!("{proxy}/stepon/oauth2/token"),
        json!({"grant_type": "authorization_code", "client_id": client_id, "client_secret": client_secret, "code": code})).await;
    assert_eq!(s, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let r = http
        .get(format!("{proxy}/stepon/status"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, fresh) = post(&http, format!("{proxy}/stepon/oauth2/token"),
        json!({"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret, "refresh_token": refresh})).await;
    assert_eq!(s, 200, "{fresh}");
    let r = http
        .get(format!(
            "{proxy}/stepon/status?access_token={}",
            fresh["access_token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut keys = use_api_keys(&http, admin, proxy).await;
    keys.extend(use_certificates(&http, admin, proxy).await);
    keys.push(rate_limit_on_a_dead_redis(&http, admin, proxy).await);
    keys.extend([
        client_secret,
        provision_key,
        code,
        wrong_secret,
        access,
        refresh,
        fresh["access_token"].as_str().unwrap().to_string(),
        fresh["refresh_token"].as_str().unwrap().to_string(),
    ]);
    keys
}

/// `rate-limiting` with a Redis password, on a port where no Redis listens, and over TLS to a
/// port that answers no TLS (the admin API's), so both failures are logged; returns the password.
async fn rate_limit_on_a_dead_redis(http: &reqwest::Client, admin: &str, proxy: &str) -> String {
    let password = format!("redis-password-{}", uuid::Uuid::new_v4().simple());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    for (name, redis) in [
        (
            "limited",
            json!({"host": "127.0.0.1", "port": port, "password": password,
                   "username": "default", "timeout": 200}),
        ),
        (
            "limited-tls",
            json!({"host": "127.0.0.1", "port": admin_port, "password": password,
                   "username": "default", "timeout": 200, "ssl": true, "ssl_verify": true,
                   "server_name": "redis.test"}),
        ),
    ] {
        for (path, body) in [
            ("/services".to_string(), json!({"name": name, "url": admin})),
            (
                format!("/services/{name}/routes"),
                json!({"name": name, "paths": [format!("/{name}")]}),
            ),
            (
                format!("/services/{name}/plugins"),
                json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "redis",
                    "redis": redis}}),
            ),
        ] {
            let (s, b) = post(http, format!("{admin}{path}"), body).await;
            assert_eq!(s, 201, "{path}: {b}");
            assert!(!b.to_string().contains(&password), "{b}");
        }
        let r = http
            .get(format!("{proxy}/{name}/status"))
            .send()
            .await
            .unwrap();
        // fault_tolerant (the default): the request passes unlimited.
        assert_eq!(r.status(), 200, "{name}");
    }
    password
}

/// `key-auth` on another service: a generated key and a chosen one, each sent in a header, the
/// query string and a body, a wrong key, and a key replaced through the admin API; returns them.
async fn use_api_keys(http: &reqwest::Client, admin: &str, proxy: &str) -> Vec<String> {
    // A service of its own: the tutorial's oauth2 plugin covers every route of `step-on`.
    let (s, b) = post(
        http,
        format!("{admin}/services"),
        json!({"name": "keyed", "url": admin}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        http,
        format!("{admin}/services/keyed/routes"),
        json!({"name": "keyed", "paths": ["/keyed"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        http,
        format!("{admin}/routes/keyed/plugins"),
        json!({"name": "key-auth", "config": {"key_in_body": true, "hide_credentials": true}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, generated) = post(
        http,
        format!("{admin}/consumers/shoeflyshoe/key-auth"),
        json!({}),
    )
    .await;
    assert_eq!(s, 201, "{generated}");
    let generated_key = generated["key"].as_str().unwrap().to_string();
    let chosen_key = format!("chosen-{}", uuid::Uuid::new_v4().simple());
    let (s, b) = post(
        http,
        format!("{admin}/key-auths"),
        json!({"key": chosen_key, "consumer": {"username": "shoeflyshoe"}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let wrong_key = format!("wrong-key-{}", uuid::Uuid::new_v4().simple());
    for key in [&generated_key, &chosen_key, &wrong_key] {
        let expected = if *key == wrong_key { 401 } else { 200 };
        let by_header = http
            .get(format!("{proxy}/keyed/status"))
            .header("apikey", key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(by_header.status(), expected);
        let by_query = http
            .get(format!("{proxy}/keyed/status?apikey={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), expected);
        let by_body = http
            .post(format!("{proxy}/keyed/status"))
            .form(&[("apikey", key.as_str())])
            .send()
            .await
            .unwrap();
        // The admin API answers 404 to a POST on /status: the key got through.
        assert_eq!(by_body.status(), if *key == wrong_key { 401 } else { 404 });
    }
    let replaced = format!("replaced-{}", uuid::Uuid::new_v4().simple());
    let r = http
        .patch(format!(
            "{admin}/consumers/shoeflyshoe/key-auth/{generated_key}"
        ))
        .json(&json!({"key": replaced}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    vec![generated_key, chosen_key, wrong_key, replaced]
}

/// TLS per host: a certificate with its private key created, served by SNI, renewed, and a
/// renewal refused (its key does not match); returns each line of every private key's PEM body.
async fn use_certificates(http: &reqwest::Client, admin: &str, proxy_tls: &str) -> Vec<String> {
    let pair = || {
        let g = rcgen::generate_simple_self_signed(vec!["logged.test".to_string()]).unwrap();
        (g.cert.pem(), g.key_pair.serialize_pem())
    };
    let (first, renewed, stray) = (pair(), pair(), pair());
    let (s, cert) = post(
        http,
        format!("{admin}/certificates"),
        json!({"cert": first.0, "key": first.1, "snis": ["logged.test"]}),
    )
    .await;
    assert_eq!(s, 201, "{cert}");
    let port: u16 = proxy_tls.rsplit(':').next().unwrap().parse().unwrap();
    let sni_client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(
            "logged.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .unwrap();
    let r = sni_client
        .get(format!("https://logged.test:{port}/none"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let path = format!("{admin}/certificates/{}", cert["id"].as_str().unwrap());
    let r = http
        .patch(&path)
        .json(&json!({"cert": renewed.0, "key": renewed.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .patch(&path)
        .json(&json!({"cert": renewed.0, "key": stray.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    [first.1, renewed.1, stray.1]
        .iter()
        .flat_map(|k| {
            k.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_secret_logged(gw: &Gateway, secrets: &[String]) {
    let log = gw.log.lock().unwrap();
    // The wrong secret's failure is logged, once, with the client and its address.
    let failures: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("client authentication failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(
        failures[0].contains("client_ip=127.0.0.1") && failures[0].contains("client_id="),
        "{}",
        failures[0]
    );
    assert!(log.len() > 50, "trace logging is on: {} lines", log.len());
    for secret in secrets {
        let leaks: Vec<String> = log
            .iter()
            .filter(|l| l.contains(secret.as_str()))
            .map(|l| l.chars().take(300).collect::<String>())
            .collect();
        assert!(leaks.is_empty(), "a secret is in the log: {leaks:#?}");
    }
}

#[tokio::test]
async fn no_secret_is_logged_at_trace_on_the_memory_store() {
    let gw = start(&[]);
    let secrets = run_tutorial(&gw).await;
    assert_no_secret_logged(&gw, &secrets);
}

/// The tutorial again with `http-log` (to a log server that refuses every batch, so that the
/// gateway logs each failure) and `file-log` on every route: no secret in the log server's bodies, in the
/// file, or in the gateway's own log.
#[tokio::test]
async fn no_secret_reaches_http_log_file_log_or_the_gateway_log() {
    let gw = start(&[]);
    let http = reqwest::Client::new();
    let receiver = log_receiver::spawn_receiver(500, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    for plugin in [
        json!({"name": "http-log", "config": {
            "http_endpoint": receiver.url.replace("http://", "http://user:pa55@"),
            "queue": {"max_retry_time": -1}}}),
        json!({"name": "file-log", "config": {"path": file}}),
    ] {
        let (s, b) = post(&http, format!("{}/plugins", gw.admin), plugin).await;
        assert_eq!(s, 201, "{b}");
    }
    let secrets = run_tutorial(&gw).await;
    // Every proxied request is logged; wait until the log server and the file have them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        let written = std::fs::read_to_string(&file).unwrap_or_default();
        // Complete lines only: the last one may still be being written.
        let lines = written.matches('\n').count();
        if lines > 5 && lines == receiver.all().len() {
            break written;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} lines, {} sent",
            receiver.all().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sent: String = receiver.all().iter().map(|r| r.body.clone()).collect();
    assert!(written.contains("REDACTED") && sent.contains("REDACTED"));
    for secret in &secrets {
        assert!(
            !sent.contains(secret.as_str()),
            "a secret sent to the log server"
        );
        assert!(
            !written.contains(secret.as_str()),
            "a secret written to the log file"
        );
    }
    assert_no_secret_logged(&gw, &secrets);
    let log = gw.log.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("log entries could not be sent")),
        "the log server's refusals are logged"
    );
    assert!(
        !log.iter().any(|l| l.contains("pa55")),
        "the log server's password is not logged"
    );
}

#[tokio::test]
async fn no_secret_is_logged_at_trace_on_postgres_and_redis() {
    let conn = std::env::var("PORTCULLIS_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let pg = portcullis_stores::postgres::PgSettings::from_conn_str(&conn).unwrap();
    let redis =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let schema = format!("pt_{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("PORTCULLIS_DATABASE", "postgres".to_string()),
        ("PORTCULLIS_PG_HOST", pg.host.clone()),
        ("PORTCULLIS_PG_PORT", pg.port.to_string()),
        ("PORTCULLIS_PG_USER", pg.user.clone()),
        ("PORTCULLIS_PG_DATABASE", pg.dbname.clone()),
        ("PORTCULLIS_PG_SCHEMA", schema.clone()),
        ("PORTCULLIS_REDIS_URL", redis),
        ("PORTCULLIS_REDIS_PREFIX", schema.clone()),
    ];
    if let Some(password) = &pg.password {
        env.push(("PORTCULLIS_PG_PASSWORD", password.clone()));
    }
    let up = portcullis(&env)
        .args(["migrations", "up"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "migrations up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let gw = start(&env);
    let secrets = run_tutorial(&gw).await;
    assert_no_secret_logged(&gw, &secrets);
    drop(gw);
    let reset = portcullis(&env)
        .args(["migrations", "reset", "--yes"])
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
}
