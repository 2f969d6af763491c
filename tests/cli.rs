//! The real `portcullis` binary: `--version`, `config check`, bad configurations, `serve`.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/echo_servers.rs"]
mod echo_servers;
#[path = "support/log_receiver.rs"]
mod log_receiver;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The binary with no `PORTCULLIS_*` or `KONG_*` variables inherited from the test environment, and no
/// status listener (Kong's default port, 8007, would be shared by the tests' gateways) unless a
/// test sets one.
fn portcullis() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_") || name.starts_with("KONG_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("PORTCULLIS_STATUS_LISTEN", "off");
    cmd.stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failed run printed exactly one error line naming `key`.
fn assert_one_line_error(out: &Output, key: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains(&format!("`{key}`")),
        "names {key}: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("Error:") || l.contains(" INFO ")),
        "nothing else but start-up logs: {stderr}"
    );
}

fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn version_prints_the_crate_version() {
    let out = portcullis().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_kong_conf_and_kong_variables_configure_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "kong.conf",
        "# Kong's format: unquoted values, trailing comments\n\
         database = off              # DB-less\n\
         admin_listen = 127.0.0.1:9001 reuseport backlog=16384, 127.0.0.1:9444 http2 ssl\n\
         trusted_ips = 10.0.0.0/8, 127.0.0.1\n",
    );
    let out = portcullis()
        .args(["config", "check", "-c"])
        .arg(&file)
        .env("KONG_ADMIN_TOKEN", "hunter2-admin-token")
        .env("KONG_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective: toml::Table = stdout.parse().expect("TOML on stdout");
    assert_eq!(effective["database"].as_str(), Some("off"));
    assert_eq!(
        effective["admin_listen"].as_str(),
        Some("127.0.0.1:9001 reuseport backlog=16384, 127.0.0.1:9444 http2 ssl")
    );
    assert_eq!(
        effective["trusted_ips"],
        toml::Value::Array(vec!["10.0.0.0/8".into(), "127.0.0.1".into()])
    );
    assert_eq!(effective["log_level"].as_str(), Some("notice"));
    assert_eq!(effective["admin_token"].as_str(), Some("********"));
    assert!(!stdout.contains("hunter2"), "{stdout}");

    // A Kong setting the gateway does not implement: one line naming it, nothing started.
    let out = portcullis()
        .args(["config", "check", "-c"])
        .arg(&file)
        .env("KONG_PROXY_ACCESS_LOG", "/dev/stdout")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error: unknown environment variable `KONG_PROXY_ACCESS_LOG`: no such setting\n"
    );
}

#[test]
fn config_check_prints_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "portcullis.toml",
        "proxy_listen = \"127.0.0.1:9000\"\nlog_level = \"debug\"\ntrusted_ips = \"10.0.0.0/8, 127.0.0.1\"\n",
    );
    let out = portcullis()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("PORTCULLIS_ADMIN_TOKEN", "hunter2-admin-token")
        .env("PORTCULLIS_PG_PASSWORD", "pg-secret-password")
        .env("PORTCULLIS_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "configuration ok");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains("pg-secret"), "{stdout}");
    let effective: toml::Table = stdout.parse().expect("TOML on stdout");
    assert_eq!(effective["admin_token"].as_str(), Some("********"));
    assert_eq!(effective["pg_password"].as_str(), Some("********"));
    assert_eq!(
        effective["proxy_listen"].as_str(),
        Some("127.0.0.1:9000"),
        "from the file"
    );
    assert_eq!(
        effective["log_level"].as_str(),
        Some("warn"),
        "env beats the file"
    );
    assert_eq!(
        effective["trusted_ips"],
        toml::Value::Array(vec!["10.0.0.0/8".into(), "127.0.0.1".into()])
    );
    assert_eq!(
        effective["admin_listen"].as_str(),
        Some(portcullis::config::DEFAULT_ADMIN_LISTEN),
        "default"
    );
}

#[test]
fn bad_configs_fail_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            "unknown.toml",
            "proxy_listen = \"127.0.0.1:0\"\ncolour = \"red\"\n".to_string(),
            "colour",
        ),
        (
            "type.toml",
            "pg_port = \"not a port\"\n".to_string(),
            "pg_port",
        ),
        (
            "type2.toml",
            "worker_processes = true\n".to_string(),
            "worker_processes",
        ),
        (
            "cert.toml",
            format!(
                "ssl_cert = {:?}\nssl_cert_key = {:?}\n",
                missing.display().to_string(),
                missing.display().to_string()
            ),
            "ssl_cert",
        ),
        (
            "half.toml",
            "admin_ssl_cert = \"/x.pem\"\n".to_string(),
            "admin_ssl_cert",
        ),
        (
            "listen.toml",
            "proxy_listen = \"127.0.0.1:0 sslx\"\n".to_string(),
            "proxy_listen",
        ),
        (
            "cidr.toml",
            "trusted_ips = [\"10.0.0.300/8\"]\n".to_string(),
            "trusted_ips",
        ),
        (
            "size.toml",
            "client_max_body_size = \"lots\"\n".to_string(),
            "client_max_body_size",
        ),
        (
            // Redis is a cache: without a durable store behind it tokens would vanish with it.
            "redis_memory.toml",
            "redis_url = \"redis://127.0.0.1:6379\"\n".to_string(),
            "redis_url",
        ),
    ];
    for (name, content, key) in cases {
        let file = write(dir.path(), name, &content);
        for command in [&["config", "check"][..], &["serve"][..]] {
            let out = portcullis()
                .args(command)
                .arg("--config")
                .arg(&file)
                .output()
                .unwrap();
            assert_one_line_error(&out, key);
        }
    }
    let out = portcullis()
        .args(["config", "check"])
        .env("PORTCULLIS_PG_PORT", "eighty")
        .output()
        .unwrap();
    assert_one_line_error(&out, "pg_port");
    let out = portcullis()
        .args(["config", "check", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("absent.toml"));
}

#[test]
fn listen_flags_the_gateway_does_not_implement_stop_it_naming_the_flag() {
    for flag in ["deferred", "bind"] {
        for command in [&["config", "check"][..], &["serve"][..]] {
            let out = portcullis()
                .args(command)
                .env("PORTCULLIS_PROXY_LISTEN", format!("127.0.0.1:0 {flag}"))
                .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
                .output()
                .unwrap();
            assert_one_line_error(&out, "proxy_listen");
            assert!(
                text(&out.stderr).contains(&format!("listen flag '{flag}' is not supported")),
                "{flag}: {}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn a_listener_s_backlog_is_the_one_its_flag_asks_for() {
    let served = serve_with(&[("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0 backlog=37")]);
    let port = served.proxy.rsplit(':').next().unwrap();
    // For a listening socket, ss's Send-Q column is the accept queue's maximum length.
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) to read the backlog back");
    let listing = text(&out.stdout);
    let columns: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(columns.get(2).copied(), Some("37"), "{listing}");
}

#[test]
fn serve_fails_cleanly_when_a_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (proxy, admin, key) in [
        (
            format!("127.0.0.1:{port}"),
            "127.0.0.1:0".to_string(),
            "proxy_listen",
        ),
        (
            "127.0.0.1:0".to_string(),
            format!("127.0.0.1:{port}"),
            "admin_listen",
        ),
    ] {
        let out = portcullis()
            .arg("serve")
            .env("PORTCULLIS_PROXY_LISTEN", proxy)
            .env("PORTCULLIS_ADMIN_LISTEN", admin)
            .output()
            .unwrap();
        assert_one_line_error(&out, key);
    }
}

/// A running `portcullis serve`, killed when dropped.
struct Served {
    child: Child,
    proxy: String,
    admin: String,
    /// Its log up to the "ready" line.
    log: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `addr=127.0.0.1:1234` from a log line.
fn addr_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr field")
        .to_string()
}

fn serve() -> Served {
    serve_with(&[])
}

/// `portcullis serve` on free ports with `env` added, once it logged that it is ready.
fn serve_with(env: &[(&str, &str)]) -> Served {
    let mut cmd = portcullis();
    cmd.arg("serve")
        .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_WORKER_PROCESSES", "1")
        .env("PORTCULLIS_LOG_LEVEL", "info");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // The reader stops once the test has its ports, closing the pipe: the gateway must keep
    // serving with its stderr gone (it used to panic on the first log line after that).
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut served = Served {
        child,
        proxy: String::new(),
        admin: String::new(),
        log: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !served.log.last().is_some_and(|l| l.contains(" ready; ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("listening lines on stderr");
        assert!(
            !line.contains('\u{1b}'),
            "no colour codes in piped logs: {line:?}"
        );
        if line.contains("proxy listening") {
            served.proxy = format!("http://{}", addr_of(&line));
        } else if line.contains("admin API listening") {
            served.admin = format!("http://{}", addr_of(&line));
        }
        served.log.push(line);
    }
    served
}

/// Sends SIGTERM and waits (at most 20 s) for the gateway to exit.
async fn stop_with_sigterm(served: &mut Served) -> std::process::ExitStatus {
    let pid = served.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_answers_on_the_logged_ports_and_stops_on_sigterm() {
    let mut served = serve();
    let http = reqwest::Client::new();
    let status = http
        .get(format!("{}/status", served.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);

    // Proxy to the admin API itself: a real upstream without another server.
    let resp = http
        .post(format!("{}/services", served.admin))
        .json(&json!({"name": "self", "url": served.admin}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = http
        .post(format!("{}/services/self/routes", served.admin))
        .json(&json!({"paths": ["/gw"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = http
        .get(format!("{}/gw/status", served.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["configuration"]["routes"], 1, "{body}");
    let resp = http
        .get(format!("{}/nowhere", served.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let status = stop_with_sigterm(&mut served).await;
    assert!(status.success(), "graceful stop exits 0: {status:?}");
}

/// The complete JSON lines of a `file-log` file (none when it does not exist). A line without
/// its `\n` is still being written: a write crossing a page boundary becomes visible a page at a
/// time.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn drain_makes_the_running_node_s_readiness_probe_answer_503() {
    let status_listen = format!("127.0.0.1:{}", free_port());
    let _served = serve_with(&[("PORTCULLIS_STATUS_LISTEN", &status_listen)]);
    let http = reqwest::Client::new();
    let probe = || async {
        let r = http
            .get(format!("http://{status_listen}/status/ready"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(probe().await, (200, r#"{"message":"ready"}"#.to_string()));
    // `kong drain` reads the node's configuration: here its environment.
    let (ok, stdout, stderr) = run("drain", &[("PORTCULLIS_STATUS_LISTEN", &status_listen)]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "the node's status successfully changed to 'draining'\n"
    );
    assert_eq!(
        probe().await,
        (503, r#"{"message":"draining"}"#.to_string())
    );

    // Nothing to drain: one error line and a failure, where Kong prints and succeeds.
    let (ok, _, stderr) = run("drain", &[]);
    assert!(!ok);
    assert_eq!(stderr, "Error: no listener in `status_listen`\n");
    let nobody = format!("127.0.0.1:{}", free_port());
    let (ok, _, stderr) = run("drain", &[("PORTCULLIS_STATUS_LISTEN", &nobody)]);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "Error: failed to send the request to http://{nobody}/status/ready: "
        )),
        "{stderr}"
    );
}

/// `portcullis <command>` with `envs`: whether it succeeded, its stdout and its stderr.
fn run(command: &str, envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = portcullis()
        .arg(command)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn health_says_whether_the_running_node_is_ready() {
    let status_listen = format!("127.0.0.1:{}", free_port());
    let served = serve_with(&[("PORTCULLIS_STATUS_LISTEN", &status_listen)]);
    let health = |envs: &[(&str, &str)]| run("health", envs);
    let url = format!("http://{status_listen}/status/ready");
    assert_eq!(
        health(&[("PORTCULLIS_STATUS_LISTEN", &status_listen)]),
        (
            true,
            format!("healthy: {url} answered 200\n"),
            String::new()
        )
    );
    let (drained, _, stderr) = run("drain", &[("PORTCULLIS_STATUS_LISTEN", &status_listen)]);
    assert!(drained, "{stderr}");
    assert_eq!(
        health(&[("PORTCULLIS_STATUS_LISTEN", &status_listen)]),
        (
            false,
            String::new(),
            format!("Error: not healthy: {url} answered 503 {{\"message\":\"draining\"}}\n")
        )
    );
    // Without a status listener, the admin API's /status (with the token when one is set).
    let admin = served_admin_port(&served);
    let admin_listen = format!("127.0.0.1:{admin}");
    let (ok, stdout, stderr) = health(&[("PORTCULLIS_ADMIN_LISTEN", &admin_listen)]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!("healthy: http://{admin_listen}/status answered 200\n")
    );
    let nobody = format!("127.0.0.1:{}", free_port());
    let (ok, _, stderr) = health(&[("PORTCULLIS_STATUS_LISTEN", &nobody)]);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "Error: failed to send the request to http://{nobody}/status/ready: "
        )),
        "{stderr}"
    );
}

/// The admin API's port of a gateway [`serve_with`] started.
fn served_admin_port(served: &Served) -> u16 {
    served.admin.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn file_log_reopens_its_file_on_sigusr1_after_logrotate_moved_it() {
    let served = serve();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    for (url, body) in [
        ("/services", json!({"name": "self", "url": served.admin})),
        ("/services/self/routes", json!({"paths": ["/gw"]})),
        (
            "/services/self/plugins",
            json!({"name": "file-log", "config": {"path": path}}),
        ),
    ] {
        let resp = http
            .post(format!("{}{url}", served.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{url}");
    }
    let get = |n: u32| {
        let http = http.clone();
        let url = format!("{}/gw/status?n={n}", served.proxy);
        async move { assert_eq!(http.get(url).send().await.unwrap().status(), 200) }
    };
    get(1).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while json_lines(&path).is_empty() {
        assert!(Instant::now() < deadline, "first line never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // logrotate: move the file, then signal the gateway.
    std::fs::rename(&path, &rotated).unwrap();
    let pid = served.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    // The signal is handled asynchronously: requests go on until a line lands in a new file.
    let mut n = 1;
    while json_lines(&path).is_empty() {
        assert!(Instant::now() < deadline, "no new file after SIGUSR1");
        n += 1;
        get(n).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while json_lines(&rotated).len() + json_lines(&path).len() < n as usize {
        assert!(
            Instant::now() < deadline,
            "lines of the last requests never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = json_lines(&rotated);
    let new = json_lines(&path);
    let uri = |l: &Value| l["request"]["uri"].as_str().unwrap().to_string();
    assert_eq!(uri(&old[0]), "/gw/status?n=1");
    let all: Vec<String> = old.iter().chain(&new).map(uri).collect();
    let expected: Vec<String> = (1..=n).map(|i| format!("/gw/status?n={i}")).collect();
    assert_eq!(
        all, expected,
        "every request logged once, in order, across the two files"
    );
}

#[tokio::test]
async fn a_graceful_stop_sends_the_log_entries_still_waiting_for_a_batch() {
    let mut served = serve();
    let http = reqwest::Client::new();
    let receiver = log_receiver::spawn_receiver(200, Duration::ZERO);
    for (url, body) in [
        ("/services", json!({"name": "self", "url": served.admin})),
        ("/services/self/routes", json!({"paths": ["/gw"]})),
        (
            "/services/self/plugins",
            json!({"name": "http-log", "config": {"http_endpoint": receiver.url,
                "queue": {"max_batch_size": 10, "max_coalescing_delay": 3600}}}),
        ),
    ] {
        let resp = http
            .post(format!("{}{url}", served.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{url}");
    }
    for n in 0..2 {
        let resp = http
            .get(format!("{}/gw/status?n={n}", served.proxy))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(receiver.all().is_empty(), "held for a fuller batch");
    let status = stop_with_sigterm(&mut served).await;
    assert!(status.success(), "{status:?}");
    let got = receiver.all();
    assert_eq!(got.len(), 1, "one batch");
    let uris: Vec<String> = got[0]
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["uri"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uris, ["/gw/status?n=0", "/gw/status?n=1"]);
}

#[test]
fn log_level_must_be_a_level_or_a_filter() {
    for level in ["loud", "info,loud", "portcullis=loud"] {
        for command in [&["config", "check"][..], &["serve"][..]] {
            let out = portcullis()
                .args(command)
                .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
                .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
                .env("PORTCULLIS_LOG_LEVEL", level)
                .output()
                .unwrap();
            assert_one_line_error(&out, "log_level");
        }
    }
    for level in ["notice", "info,portcullis=debug"] {
        let out = portcullis()
            .args(["config", "check"])
            .env("PORTCULLIS_LOG_LEVEL", level)
            .output()
            .unwrap();
        assert!(out.status.success(), "{level}: {}", text(&out.stderr));
    }
}

#[test]
fn unknown_portcullis_variables_are_refused_like_unknown_keys() {
    for command in [&["config", "check"][..], &["serve"][..]] {
        let out = portcullis()
            .args(command)
            .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_ADMIN_TOKN", "typo")
            .output()
            .unwrap();
        assert_one_line_error(&out, "PORTCULLIS_ADMIN_TOKN");
    }
}

#[test]
fn the_plugins_setting_is_checked_and_honoured() {
    for command in [&["config", "check"][..], &["serve"][..]] {
        let out = portcullis()
            .args(command)
            .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_PLUGINS", "bundled,acme-auth")
            .output()
            .unwrap();
        assert_one_line_error(&out, "plugins");
        assert!(text(&out.stderr).contains("'acme-auth'"));
    }
}

#[tokio::test]
async fn a_plugin_left_out_of_plugins_is_not_enabled() {
    let served = serve_with(&[("PORTCULLIS_PLUGINS", "request-termination")]);
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/plugins", served.admin))
        .json(&json!({"name": "oauth2", "config": {"enable_client_credentials": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["fields"]["name"],
        "plugin 'oauth2' not enabled; add it to the 'plugins' configuration property"
    );
    let resp = http
        .post(format!("{}/plugins", served.admin))
        .json(&json!({"name": "request-termination"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let root: Value = http
        .get(format!("{}/", served.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        root["plugins"]["enabled_in_cluster"],
        json!(["request-termination"])
    );
}

#[test]
fn start_up_logs_each_event_once_with_version_store_listeners_and_how_to_stop() {
    // The test suite's own variables are not settings: a gateway started under it still starts.
    let served = serve_with(&[
        ("PORTCULLIS_TEST_PG", "host=127.0.0.1 port=1 user=nobody"),
        ("PORTCULLIS_TEST_DATABASE", "postgres"),
    ]);
    let log = &served.log;
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    let starting: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("portcullis starting"))
        .collect();
    assert_eq!(starting.len(), 1, "{log:#?}");
    assert!(
        starting[0].contains(&format!("version={}", env!("CARGO_PKG_VERSION"))),
        "{log:#?}"
    );
    assert!(starting[0].contains("store=memory"), "{log:#?}");
    assert!(
        starting[0]
            .contains("plugins=acl,cors,file-log,http-log,key-auth,oauth2,oauth2-introspection,opentelemetry,prometheus,rate-limiting,request-termination"),
        "{log:#?}"
    );
    assert_eq!(count("proxy listening"), 1, "{log:#?}");
    assert_eq!(count("admin API listening"), 1, "{log:#?}");
    let ready: Vec<&String> = log.iter().filter(|l| l.contains(" ready; ")).collect();
    assert_eq!(ready.len(), 1, "{log:#?}");
    assert!(
        ready[0].contains("Ctrl-C or SIGTERM")
            && ready[0].contains(&format!("pid={}", served.child.id())),
        "{log:#?}"
    );
    // actix-server's own announcements of the same listeners are not repeated.
    assert_eq!(count("actix"), 0, "{log:#?}");
    assert_eq!(log.len(), 4, "one line per event: {log:#?}");
}

/// The test Postgres (`PORTCULLIS_TEST_PG`) as stores settings in `schema`.
fn test_pg(schema: &str) -> portcullis_stores::postgres::PgSettings {
    let conn = std::env::var("PORTCULLIS_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let mut pg = portcullis_stores::postgres::PgSettings::from_conn_str(&conn).unwrap();
    pg.schema = Some(schema.to_string());
    pg
}

/// The same, as the gateway's `PORTCULLIS_*` variables.
fn pg_env(pg: &portcullis_stores::postgres::PgSettings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PORTCULLIS_DATABASE", "postgres".to_string()),
        ("PORTCULLIS_PG_HOST", pg.host.clone()),
        ("PORTCULLIS_PG_PORT", pg.port.to_string()),
        ("PORTCULLIS_PG_USER", pg.user.clone()),
        ("PORTCULLIS_PG_DATABASE", pg.dbname.clone()),
        (
            "PORTCULLIS_PG_SCHEMA",
            pg.schema.clone().unwrap_or_default(),
        ),
        ("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0".into()),
        ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("PORTCULLIS_LOG_LEVEL", "warn".into()),
    ];
    if let Some(p) = &pg.password {
        env.push(("PORTCULLIS_PG_PASSWORD", p.clone()));
    }
    env
}

#[tokio::test]
async fn migrations_list_up_and_reset_and_serve_refuses_pending_ones() {
    let schema = format!("pt_{}", uuid::Uuid::new_v4().simple());
    let pg = test_pg(&schema);
    let env = pg_env(&pg);
    let run = |args: &[&str]| portcullis().envs(env.clone()).args(args).output().unwrap();
    // Dropped last: the schema goes even if an assertion fails.
    struct Reset<'a>(&'a dyn Fn(&[&str]) -> Output);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["migrations", "reset", "--yes"]);
        }
    }
    let _reset = Reset(&run);
    let stdout = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let place = format!("database '{}' schema '{schema}'", pg.dbname);

    assert_eq!(
        stdout(&run(&["migrations", "list"])),
        format!(
            "{place}\nexecuted migrations:\npending migrations:\n  0001_core\n  \
             0002_oauth2_tokens\n  0003_cluster_notify\n  0004_key_auth_acl\n  0005_upstreams\n  \
             0006_certificates\nrun `portcullis migrations bootstrap`\n"
        )
    );
    stdout(&run(&["migrations", "bootstrap"]));

    // The database of an older release: the last migration not applied yet.
    let pool = portcullis_stores::postgres::connect(&pg).await.unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "DELETE FROM portcullis_migrations WHERE version = 6; \
             ALTER TABLE services DROP CONSTRAINT services_client_certificate_fk; \
             DROP TABLE snis, certificates, ca_certificates",
        )
        .await
        .unwrap();
    drop(pool);
    assert_eq!(
        stdout(&run(&["migrations", "list"])),
        format!(
            "{place}\nexecuted migrations:\n  0001_core\n  0002_oauth2_tokens\n  \
             0003_cluster_notify\n  0004_key_auth_acl\n  0005_upstreams\npending migrations:\n  \
             0006_certificates\nrun `portcullis migrations up`\n"
        )
    );
    let refused = run(&["serve"]);
    assert!(
        !refused.status.success(),
        "serve refuses pending migrations"
    );
    let stderr = text(&refused.stderr);
    assert!(
        stderr
            .contains("has pending migrations (0006_certificates): run `portcullis migrations up`"),
        "{stderr}"
    );

    assert_eq!(
        stdout(&run(&["migrations", "up"])),
        "migrating 0006_certificates... done\n1 migration(s) applied\n"
    );
    assert_eq!(
        stdout(&run(&["migrations", "up"])),
        "database is already up-to-date\n"
    );
    assert_eq!(
        stdout(&run(&["migrations", "list"])),
        format!(
            "{place}\nexecuted migrations:\n  0001_core\n  0002_oauth2_tokens\n  \
             0003_cluster_notify\n  0004_key_auth_acl\n  0005_upstreams\n  0006_certificates\n\
             database is up-to-date\n"
        )
    );

    let unconfirmed = run(&["migrations", "reset"]);
    assert!(!unconfirmed.status.success());
    assert_eq!(
        text(&unconfirmed.stderr),
        format!(
            "Error: reset drops every Portcullis table of {place}: run \
             `portcullis migrations reset --yes` to confirm\n"
        )
    );
    assert!(
        stdout(&run(&["migrations", "list"])).ends_with("database is up-to-date\n"),
        "nothing dropped without --yes"
    );
    assert_eq!(
        stdout(&run(&["migrations", "reset", "--yes"])),
        format!("{place} reset: every Portcullis table dropped\n")
    );
    assert!(
        stdout(&run(&["migrations", "list"])).ends_with("run `portcullis migrations bootstrap`\n"),
        "fresh again"
    );
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test]
async fn a_thousand_idle_websocket_tunnels_cost_the_gateway_little_memory() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    const TUNNELS: usize = 1_000;
    let served = serve();
    let upstream = echo_servers::spawn_ws_upstream(echo_servers::Upstream::Echo);
    let admin = reqwest::Client::new();
    let created = admin
        .post(format!("{}/services", served.admin))
        .json(&json!({ "name": "ws", "url": upstream }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created = admin
        .post(format!("{}/services/ws/routes", served.admin))
        .json(&json!({ "paths": ["/ws"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = served.proxy.replacen("http://", "ws://", 1) + "/ws";
    // One tunnel first, so the worker's buffers and pools exist before the baseline.
    let (mut warm, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    warm.send(Message::text("warm")).await.unwrap();
    assert_eq!(warm.next().await.unwrap().unwrap(), Message::text("warm"));
    let before = rss_kib(served.child.id());

    let mut tunnels = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        let (ws, response) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        tunnels.push(ws);
    }
    // Every tunnel carries a message both ways, then sits idle.
    for (i, ws) in tunnels.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for (i, ws) in tunnels.iter_mut().enumerate() {
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(format!("m{i}")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(served.child.id());
    let per_tunnel = during.saturating_sub(before) / TUNNELS as u64;
    println!("gateway RSS: {before} KiB before, {during} KiB with {TUNNELS} idle tunnels ({per_tunnel} KiB each)");
    // Two sockets and two copy buffers per tunnel: a leaked buffer per message or a thread per
    // tunnel would cost far more.
    assert!(
        per_tunnel <= 64,
        "{per_tunnel} KiB per idle tunnel ({before} KiB before, {during} KiB during)"
    );

    // They all close, and the gateway goes on answering.
    for mut ws in tunnels {
        ws.close(None).await.unwrap();
    }
    let status = reqwest::get(format!("{}/nowhere", served.proxy))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

#[test]
fn config_init_writes_a_starter_file_that_config_parse_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.yml");
    let out = portcullis()
        .args(["config", "init"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("_format_version: \"3.0\""), "{written}");
    assert!(written.contains("name: oauth2"), "{written}");
    // Never overwrites.
    let again = portcullis()
        .args(["config", "init"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).starts_with("Error: cannot create"),
        "{}",
        text(&again.stderr)
    );
    let parsed = portcullis()
        .args(["config", "parse"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", text(&parsed.stderr));
    assert_eq!(text(&parsed.stdout), "parse successful\n");
    // Without a file: kong.yml in the working directory, as Kong's.
    let cwd = tempfile::tempdir().unwrap();
    let out = portcullis()
        .args(["config", "init"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(cwd.path().join("kong.yml")).unwrap(),
        written
    );
}

#[test]
fn config_parse_names_each_entity_path_and_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.yml",
        "_format_version: \"3.0\"\nservices:\n  - name: s1\n    url: http://127.0.0.1:1\n    colour: blue\n    routes:\n      - name: r1\n        protocols: [nope]\nroutes:\n  - name: r2\n    paths: [/x]\n    service: missing\n",
    );
    let out = portcullis()
        .args(["config", "parse"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("services[0] (s1): colour: unknown field"),
        "{stderr}"
    );
    assert!(
        stderr.contains("services[0].routes[0] (r1): protocols"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0] (r2): service: invalid reference 'service: missing' (no such entry in 'services')"),
        "{stderr}"
    );
}

async fn admin_status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url).send().await.unwrap().status().as_u16()
}

async fn until_status(http: &reqwest::Client, url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_status(http, url).await != want {
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_dbless_loads_the_file_and_sighup_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str| {
        format!(
            "_format_version: \"3.0\"\nservices:\n  - name: {name}\n    url: http://127.0.0.1:1\n"
        )
    };
    let file = write(dir.path(), "kong.yml", &service("one"));
    let mut served = serve_with(&[
        ("PORTCULLIS_DATABASE", "off"),
        ("PORTCULLIS_DECLARATIVE_CONFIG", file.to_str().unwrap()),
    ]);
    let http = reqwest::Client::new();
    let url = |name: &str| format!("{}/services/{name}", served.admin);
    assert_eq!(admin_status(&http, &url("one")).await, 200);
    let hup = |pid: u32| {
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    std::fs::write(&file, service("two")).unwrap();
    hup(served.child.id());
    until_status(&http, &url("two"), 200).await;
    assert_eq!(admin_status(&http, &url("one")).await, 404);
    // A bad file is refused; the running configuration stays.
    std::fs::write(&file, "services: [").unwrap();
    hup(served.child.id());
    std::fs::write(&file, service("three")).unwrap();
    hup(served.child.id());
    until_status(&http, &url("three"), 200).await;
    assert!(served.child.try_wait().unwrap().is_none(), "still serving");
    let status = stop_with_sigterm(&mut served).await;
    assert!(status.success());
}

#[test]
fn serve_refuses_an_invalid_declarative_file_naming_entity_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "kong.yml",
        "_format_version: \"3.0\"\nconsumers:\n  - username: bob\n    acls:\n      - group: 7\n",
    );
    let out = portcullis()
        .arg("serve")
        .env("PORTCULLIS_DATABASE", "off")
        .env("PORTCULLIS_DECLARATIVE_CONFIG", &file)
        .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("consumers[0].acls[0]: group: expected a string"),
        "{stderr}"
    );
}

/// A fresh, migrated schema of the test Postgres for one test, reset when dropped.
struct Schema {
    pg: portcullis_stores::postgres::PgSettings,
    env: Vec<(&'static str, String)>,
}

impl Schema {
    fn bootstrapped() -> Self {
        let pg = test_pg(&format!("pt_{}", uuid::Uuid::new_v4().simple()));
        let env = pg_env(&pg);
        let schema = Self { pg, env };
        let out = schema.run(&["migrations", "bootstrap"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        schema
    }

    /// `portcullis ARGS` with this schema's settings.
    fn run(&self, args: &[&str]) -> Output {
        portcullis()
            .envs(self.env.clone())
            .args(args)
            .output()
            .unwrap()
    }

    /// `config db_import FILE`, which must succeed.
    fn import(&self, file: &Path) -> String {
        let out = self.run(&["config", "db_import", file.to_str().unwrap()]);
        assert!(out.status.success(), "db_import: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `config db_export` to standard output, which must succeed.
    fn export(&self) -> String {
        let out = self.run(&["config", "db_export"]);
        assert!(out.status.success(), "db_export: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Rows per configuration table.
    async fn counts(&self) -> Vec<(&'static str, i64)> {
        let pool = portcullis_stores::postgres::connect(&self.pg)
            .await
            .unwrap();
        let client = pool.get().await.unwrap();
        let mut out = Vec::new();
        for table in portcullis_stores::model::entities::ALL
            .iter()
            .map(|d| d.name)
        {
            let row = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap();
            out.push((table, row.get::<_, i64>(0)));
        }
        out
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self.run(&["migrations", "reset", "--yes"]);
    }
}

/// An HTTP/1.1 upstream on a free port answering every request `200 upstream`.
fn spawn_http_upstream() -> u16 {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
                );
            });
        }
    });
    port
}

/// A declarative file with every entity kind this gateway has: a route guarded by `key-auth` and
/// `acl` to an upstream with one target, an `oauth2` service, a consumer with a key, a hashed
/// OAuth client and a group, a certificate with its SNI and a CA certificate.
fn every_entity_kind(upstream_port: u16) -> Value {
    let (cert, key, _) = certificate("io.test");
    let ca = ca_certificate("ca.io.test");
    json!({
        "_format_version": "3.0",
        "certificates": [{ "cert": cert, "key": key, "snis": ["io.test"] }],
        "ca_certificates": [{ "cert": ca, "tags": ["ca"] }],
        "upstreams": [{
            "name": "io-upstream",
            "targets": [{ "target": format!("127.0.0.1:{upstream_port}"), "weight": 50 }],
        }],
        "services": [
            {
                "name": "io-keyed",
                "host": "io-upstream",
                "routes": [{
                    "name": "io-keyed-route",
                    "paths": ["/keyed"],
                    "plugins": [{ "name": "key-auth" }],
                }],
            },
            {
                "name": "io-oauth",
                "url": format!("http://127.0.0.1:{upstream_port}"),
                "routes": [{ "name": "io-oauth-route", "paths": ["/oauth"] }],
                "plugins": [{
                    "name": "oauth2",
                    "config": {
                        "enable_client_credentials": true,
                        "accept_http_if_already_terminated": true,
                    },
                }],
            },
        ],
        "consumers": [{
            "username": "alice",
            "custom_id": "a-1",
            "keyauth_credentials": [{ "key": "alice-key-0123456789" }],
            "oauth2_credentials": [{
                "name": "alice's app",
                "client_id": "alice-client",
                "client_secret": "alice-secret-0123456789",
                "hash_secret": true,
                "redirect_uris": ["http://localhost/cb"],
            }],
            "acls": [{ "group": "readers" }],
        }],
        "plugins": [{ "name": "acl", "route": "io-keyed-route", "config": { "allow": ["readers"] } }],
    })
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

/// A self-signed CA certificate (PEM).
fn ca_certificate(name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn write_json(dir: &Path, name: &str, doc: &Value) -> std::path::PathBuf {
    write(dir, name, &serde_json::to_string_pretty(doc).unwrap())
}

/// A status of `GET url` with an optional `apikey` header.
async fn proxied(http: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = http.get(url);
    if let Some(key) = key {
        req = req.header("apikey", key);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn db_import_then_db_export_round_trips_through_an_empty_database_and_db_less_mode() {
    let upstream = spawn_http_upstream();
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "kong.json", &every_entity_kind(upstream));
    let first = Schema::bootstrapped();

    assert_eq!(
        first.import(&file),
        "parse successful, beginning import\n  certificates: 1\n  snis: 1\n  ca_certificates: 1\n  \
         services: 2\n  routes: 2\n  consumers: 1\n  plugins: 3\n  oauth2_credentials: 1\n  \
         keyauth_credentials: 1\n  acls: 1\n  upstreams: 1\n  targets: 1\nimport successful\n"
    );
    let counts = first.counts().await;
    assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    // The same file again writes the same rows (ids derived as DB-less mode derives them).
    first.import(&file);
    assert_eq!(first.counts().await, counts);

    let exported = first.export();
    let doc: Value = serde_yaml::from_str(&exported).unwrap();
    assert_eq!(doc["_format_version"], "3.0");
    // Ids as DB-less mode derives them: Kong's UUID v5 of the service name.
    assert_eq!(
        doc["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "io-keyed")
            .unwrap()["id"],
        "d6daf11f-0000-5036-8898-c5b0ce01610a"
    );
    // Secrets stay as stored: the client secret hashed, the key as its digest only.
    let client = &doc["oauth2_credentials"][0];
    assert!(
        client["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("$argon2"),
        "{client}"
    );
    let key = &doc["keyauth_credentials"][0];
    assert!(key.get("key").is_none(), "{key}");
    assert_eq!(key["key_hash"].as_str().unwrap().len(), 64, "{key}");
    assert!(!exported.contains("alice-secret-0123456789"));
    assert!(!exported.contains("alice-key-0123456789"));
    assert!(
        doc.get("oauth2_tokens").is_none(),
        "tokens are never exported"
    );

    // Into an empty database, and out again: the same document. A row of long ago keeps its
    // timestamps.
    let mut doc = doc;
    doc["services"][0]["created_at"] = json!(1_600_000_000);
    doc["services"][0]["updated_at"] = json!(1_600_000_001);
    let exported = serde_yaml::to_string(&doc).unwrap();
    let exported_file = write(dir.path(), "exported.yml", &exported);
    let second = Schema::bootstrapped();
    second.import(&exported_file);
    assert_eq!(second.export(), exported);
    assert_eq!(second.counts().await, counts);

    // A DB-less gateway from the exported file serves the same routes: the key it never saw in
    // clear still opens the key-auth route, the secret still hashed gets a token.
    let served = serve_with(&[
        ("PORTCULLIS_DATABASE", "off"),
        (
            "PORTCULLIS_DECLARATIVE_CONFIG",
            exported_file.to_str().unwrap(),
        ),
        // The token endpoint wants TLS; the test terminates it "in front" of the gateway.
        ("PORTCULLIS_TRUSTED_IPS", "127.0.0.1"),
    ]);
    let http = reqwest::Client::new();
    let keyed = format!("{}/keyed", served.proxy);
    assert_eq!(proxied(&http, &keyed, None).await.0, 401);
    assert_eq!(
        proxied(&http, &keyed, Some("wrong-key-0123456789")).await.0,
        401
    );
    assert_eq!(
        proxied(&http, &keyed, Some("alice-key-0123456789")).await,
        (200, "upstream".to_string())
    );
    let token = http
        .post(format!("{}/oauth/oauth2/token", served.proxy))
        .header("x-forwarded-proto", "https")
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "alice-client"),
            ("client_secret", "alice-secret-0123456789"),
        ])
        .send()
        .await
        .unwrap();
    let status = token.status();
    let token: Value = token.json().await.unwrap();
    assert_eq!(status, 200, "{token}");
    let bearer = token["access_token"].as_str().unwrap();
    let oauth = format!("{}/oauth", served.proxy);
    assert_eq!(proxied(&http, &oauth, None).await.0, 401);
    let resp = http.get(&oauth).bearer_auth(bearer).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_refused_db_import_writes_nothing() {
    let upstream = spawn_http_upstream();
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::bootstrapped();
    schema.import(&write_json(
        dir.path(),
        "kong.json",
        &every_entity_kind(upstream),
    ));
    let before = schema.counts().await;

    // Invalid: refused as `config parse` refuses it, before the database is touched.
    let bad = write(
        dir.path(),
        "bad.yml",
        "_format_version: \"3.0\"\nservices:\n  - name: new-one\n    url: http://127.0.0.1:1\n    colour: blue\n",
    );
    let parsed = portcullis()
        .args(["config", "parse"])
        .arg(&bad)
        .output()
        .unwrap();
    let imported = schema.run(&["config", "db_import", bad.to_str().unwrap()]);
    assert!(!imported.status.success());
    assert_eq!(text(&imported.stderr), text(&parsed.stderr));
    assert!(
        text(&imported.stderr).contains("services[0] (new-one): colour: unknown field"),
        "{}",
        text(&imported.stderr)
    );
    assert_eq!(schema.counts().await, before);

    // Valid, but a later row collides with the database (another consumer is `alice`): the
    // service written before it is rolled back too.
    let colliding = write(
        dir.path(),
        "colliding.yml",
        "_format_version: \"3.0\"\nservices:\n  - name: new-one\n    url: http://127.0.0.1:1\n\
         consumers:\n  - username: alice\n    id: 00000000-0000-4000-8000-000000000001\n",
    );
    let out = schema.run(&["config", "db_import", colliding.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "Error: import failed, nothing was written: consumers \
         00000000-0000-4000-8000-000000000001: uniqueness violation: username 'alice' already \
         taken by another row in the database\n"
    );
    assert_eq!(schema.counts().await, before);
}

#[test]
fn db_import_and_db_export_need_database_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "kong.yml",
        "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n",
    );
    for database in ["memory", "off"] {
        for (command, args) in [
            ("db_import", vec![file.to_str().unwrap()]),
            ("db_export", vec![]),
        ] {
            let out = portcullis()
                .env("PORTCULLIS_DATABASE", database)
                .args(["config", command])
                .args(&args)
                .output()
                .unwrap();
            assert!(!out.status.success());
            assert_eq!(
                text(&out.stderr),
                format!(
                    "Error: `portcullis config {command}` only works with database = postgres \
                     (set PORTCULLIS_DATABASE=postgres); with database = off, load a declarative \
                     file with declarative_config, SIGHUP or POST /config\n"
                )
            );
        }
    }
}

#[tokio::test]
async fn db_export_writes_a_new_file_only_and_refuses_a_schema_with_pending_migrations() {
    let schema = Schema::bootstrapped();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.yml");
    let out = schema.run(&["config", "db_export", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "_format_version: '3.0'\n_transform: true\n"
    );
    // As Kong's: never over an existing file.
    std::fs::write(&target, "mine").unwrap();
    let again = schema.run(&["config", "db_export", target.to_str().unwrap()]);
    assert!(!again.status.success());
    assert_eq!(
        text(&again.stderr),
        format!(
            "Error: {} already exists. Will not overwrite it.\n",
            target.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");

    // As serve: a schema with pending migrations is refused, naming the command to run.
    let pool = portcullis_stores::postgres::connect(&schema.pg)
        .await
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "DELETE FROM portcullis_migrations WHERE version = 6; \
             ALTER TABLE services DROP CONSTRAINT services_client_certificate_fk; \
             DROP TABLE snis, certificates, ca_certificates",
        )
        .await
        .unwrap();
    drop(pool);
    let file = write(
        dir.path(),
        "kong.yml",
        "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n",
    );
    for args in [
        vec!["config", "db_export"],
        vec!["config", "db_import", file.to_str().unwrap()],
    ] {
        let out = schema.run(&args);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains(
                "has pending migrations (0006_certificates): run `portcullis migrations up`"
            ),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_running_gateway_serves_a_route_db_import_adds_without_a_restart() {
    let upstream = spawn_http_upstream();
    let schema = Schema::bootstrapped();
    let env: Vec<(&str, &str)> = schema
        .env
        .iter()
        .filter(|(k, _)| !k.ends_with("_LISTEN") && *k != "PORTCULLIS_LOG_LEVEL")
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let served = serve_with(&env);
    let http = reqwest::Client::new();
    let url = format!("{}/late", served.proxy);
    assert_eq!(proxied(&http, &url, None).await.0, 404);
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(
        dir.path(),
        "late.json",
        &json!({
            "_format_version": "3.0",
            "services": [{
                "name": "late",
                "url": format!("http://127.0.0.1:{upstream}"),
                "routes": [{ "name": "late", "paths": ["/late"] }],
            }],
        }),
    );
    schema.import(&file);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = proxied(&http, &url, None).await;
        if answer == (200, "upstream".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "never served: {answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
