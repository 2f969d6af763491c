//! Kong's `http-log` and `file-log` specs (`spec/03-plugins/03-http-log`, `04-file-log`): the
//! schema cases with Kong's error texts, and the log cases that need no nginx internals, against
//! a real log server ([`crate::log_receiver`]) that is up, down or slow, and a real file.
//! Plus what Portcullis adds: credentials are redacted in every entry.
//!
//! Not ported, and why:
//! - `custom_fields_by_lua` cases: Portcullis runs no Lua; the field is refused (tested).
//! - vault references in `http_endpoint` and headers: Portcullis has no vaults.
//! - queue sharing between instances with the same legacy parameters: each instance has its own
//!   queue here.
//! - TLS/mTLS fields of the entry (`request.tls`), gRPC and stream entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis::plugins::log_queue::{stats_of, QueueStats};
use serde_json::{json, Value};

use crate::helpers::{dead_port, eventually, spawn_app, spawn_upstream, TestApp};
use crate::log_receiver::{spawn_held_receiver, spawn_receiver, Received, Receiver};

const WITHIN: Duration = Duration::from_secs(15);

/// A service on the echo upstream at `/logged` with the given log plugin; returns the plugin.
async fn logged(app: &TestApp, plugin: Value) -> Value {
    let upstream = spawn_upstream();
    app.expose("logged", &upstream.url, &["/logged"]).await;
    let (s, plugin) = app.admin_post("/services/logged/plugins", plugin).await;
    assert_eq!(s, 201, "{plugin}");
    plugin
}

async fn http_log(app: &TestApp, config: Value) -> Value {
    logged(app, json!({ "name": "http-log", "config": config })).await
}

async fn arrived(receiver: &Receiver, n: usize) -> Vec<Received> {
    eventually(WITHIN, "log entries arrive", || async {
        let all = receiver.all();
        (all.len() >= n).then_some(all)
    })
    .await
}

/// Waits until one of a queue's counters reaches `n`.
async fn counted(
    stats: &QueueStats,
    within: Duration,
    what: &str,
    counter: fn(&QueueStats) -> &AtomicU64,
    n: u64,
) {
    eventually(within, what, || async {
        (counter(stats).load(Ordering::Relaxed) == n).then_some(())
    })
    .await;
}

fn plugin_id(plugin: &Value) -> uuid::Uuid {
    plugin["id"].as_str().unwrap().parse().unwrap()
}

async fn schema_error(app: &TestApp, name: &str, config: Value) -> Value {
    let (s, body) = app
        .admin_post("/plugins", json!({ "name": name, "config": config }))
        .await;
    assert_eq!(s, 400, "{body}");
    body["fields"].clone()
}

// ---- http-log schema (02-schema_spec.lua) ----

#[actix_rt::test]
async fn http_log_accepts_minimal_config_with_defaults() {
    let app = spawn_app().await;
    let (s, p) = app
        .admin_post(
            "/plugins",
            json!({ "name": "http-log", "config": { "http_endpoint": "http://myservice.test/path" } }),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let c = &p["config"];
    assert_eq!(c["method"], "POST");
    assert_eq!(c["content_type"], "application/json");
    assert_eq!(c["timeout"], 10000);
    assert_eq!(c["keepalive"], 60000);
    assert_eq!(
        c["queue"],
        json!({ "max_batch_size": 1, "max_coalescing_delay": 1, "max_entries": 10000,
                "max_bytes": null, "max_retry_time": 60, "initial_retry_delay": 0.01,
                "max_retry_delay": 60, "concurrency_limit": 1 })
    );
}

#[actix_rt::test]
async fn http_log_accepts_empty_headers_with_username_password_in_the_endpoint() {
    let app = spawn_app().await;
    let (s, p) = app
        .admin_post(
            "/plugins",
            json!({ "name": "http-log", "config": {
            "http_endpoint": "http://bob:password@myservice.test/path", "headers": {} } }),
        )
        .await;
    assert_eq!(s, 201, "{p}");
}

#[actix_rt::test]
async fn http_log_does_not_accept_empty_header_values() {
    let app = spawn_app().await;
    let f = schema_error(
        &app,
        "http-log",
        json!({ "http_endpoint": "http://myservice.test/path",
        "headers": { "X-My-Header": "" } }),
    )
    .await;
    assert_eq!(
        f,
        json!({ "config": { "headers": "length must be at least 1" } })
    );
}

#[actix_rt::test]
async fn http_log_does_not_accept_host_content_length_or_content_type_headers() {
    let app = spawn_app().await;
    for (header, shown) in [
        ("Host", "Host"),
        ("coNTEnt-Length", "Content-Length"),
        ("coNTEnt-Type", "Content-Type"),
    ] {
        let f = schema_error(
            &app,
            "http-log",
            json!({ "http_endpoint": "http://myservice.test/path",
            "headers": { header: "123" } }),
        )
        .await;
        assert_eq!(
            f,
            json!({ "config": { "headers": format!("cannot contain '{shown}' header") } })
        );
    }
}

#[actix_rt::test]
async fn http_log_does_not_accept_userinfo_and_an_authorization_header() {
    let app = spawn_app().await;
    let f = schema_error(
        &app,
        "http-log",
        json!({ "http_endpoint": "http://hi:there@myservice.test/path",
        "headers": { "AuthoRIZATion": "bad" } }),
    )
    .await;
    assert_eq!(
        f,
        json!({ "config": "specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed" })
    );
}

#[actix_rt::test]
async fn custom_fields_by_lua_is_refused_by_both_log_plugins() {
    let app = spawn_app().await;
    let lua = json!({ "new_field": "return 123" });
    let f = schema_error(
        &app,
        "http-log",
        json!({ "http_endpoint": "http://myservice.test/path",
        "custom_fields_by_lua": lua }),
    )
    .await;
    assert_eq!(
        f["config"]["custom_fields_by_lua"],
        "not supported: Portcullis runs no Lua; remove the field"
    );
    let f = schema_error(
        &app,
        "file-log",
        json!({ "path": "/tmp/x.log", "custom_fields_by_lua": lua }),
    )
    .await;
    assert_eq!(
        f["config"]["custom_fields_by_lua"],
        "not supported: Portcullis runs no Lua; remove the field"
    );
}

// ---- file-log schema (04-file-log/02-schema_spec.lua) ----

#[actix_rt::test]
async fn file_log_path_is_required() {
    let app = spawn_app().await;
    let f = schema_error(&app, "file-log", json!({ "reopen": true })).await;
    assert_eq!(f, json!({ "config": { "path": "required field missing" } }));
}

#[actix_rt::test]
async fn file_log_rejects_invalid_filenames() {
    let app = spawn_app().await;
    for path in ["/ovo*", "/ovo`", "test&thing", "test%thing", "test\\thing"] {
        let f = schema_error(&app, "file-log", json!({ "path": path, "reopen": true })).await;
        assert_eq!(
            f,
            json!({ "config": { "path": "not a valid filename" } }),
            "{path}"
        );
    }
}

#[actix_rt::test]
async fn file_log_accepts_a_valid_filename() {
    let app = spawn_app().await;
    let (s, p) = app
        .admin_post(
            "/plugins",
            json!({ "name": "file-log", "config": { "path": "/tmp/ovo.log" } }),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["config"]["reopen"], false);
}

// ---- http-log against a real log server (01-log_spec.lua) ----

#[actix_rt::test]
async fn http_log_posts_one_json_object_per_request_with_kong_s_fields() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": format!("{}/post_log/http", receiver.url) }),
    )
    .await;
    let r = app
        .http
        .get(format!("{}/logged/echo?a=1&flag&a=2", app.proxy))
        .header("x-test", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = arrived(&receiver, 1).await;
    let sent = &got[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.target, "/post_log/http");
    assert_eq!(sent.headers["content-type"], "application/json");
    let entry = sent.json();
    assert!(entry.is_object(), "{entry}");
    assert_eq!(entry["request"]["method"], "GET");
    assert_eq!(entry["request"]["uri"], "/logged/echo?a=1&flag&a=2");
    let port = app.proxy.rsplit(':').next().unwrap();
    assert_eq!(
        entry["request"]["url"],
        format!("http://127.0.0.1:{port}/logged/echo?a=1&flag&a=2")
    );
    assert_eq!(
        entry["request"]["querystring"],
        json!({ "a": ["1", "2"], "flag": true })
    );
    assert_eq!(entry["request"]["headers"]["x-test"], "yes");
    assert_eq!(entry["response"]["status"], 200);
    assert!(entry["response"]["size"].as_u64().unwrap() > 0);
    assert_eq!(
        entry["response"]["headers"]["content-type"],
        "application/json"
    );
    assert_eq!(entry["upstream_uri"], "/echo?a=1&flag&a=2");
    assert_eq!(entry["upstream_status"], "200");
    assert_eq!(entry["source"], "service");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    // Entities as the admin API shows them.
    let (_, service) = app.admin_get("/services/logged").await;
    let (_, route) = app.admin_get("/routes/logged-route").await;
    assert_eq!(entry["service"], service);
    assert_eq!(entry["route"], route);
    assert_eq!(entry["tries"].as_array().unwrap().len(), 1);
    assert!(entry["consumer"].is_null());
    assert!(entry["authenticated_entity"].is_null());
    for latency in ["kong", "proxy", "request"] {
        assert!(
            entry["latencies"][latency].as_i64().unwrap() >= 0,
            "{entry}"
        );
    }
    let started = entry["started_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(started <= now && now - started < 60_000);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "counted as sent", |s| &s.sent, 1).await;
}

#[actix_rt::test]
async fn http_log_sends_put_or_patch_basic_auth_from_userinfo_and_custom_headers() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let endpoint = receiver
        .url
        .replace("http://", "http://testuser:testpassword@");
    http_log(&app, json!({ "http_endpoint": format!("{endpoint}/post_auth_log/basic_auth/testuser/testpassword/http"),
        "method": "PUT", "content_type": "application/json; charset=utf-8",
        "headers": { "X-Custom": "custom value" } }))
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let got = arrived(&receiver, 1).await;
    assert_eq!(got[0].method, "PUT");
    assert_eq!(
        got[0].headers["authorization"],
        "Basic dGVzdHVzZXI6dGVzdHBhc3N3b3Jk"
    );
    assert_eq!(got[0].headers["x-custom"], "custom value");
    assert_eq!(
        got[0].headers["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(got[0].json()["request"]["method"], "GET");
}

#[actix_rt::test]
async fn http_log_batches_entries_as_a_json_array_when_max_batch_size_is_above_one() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    http_log(
        &app,
        json!({ "http_endpoint": receiver.url,
        "queue": { "max_batch_size": 3, "max_coalescing_delay": 3600 } }),
    )
    .await;
    for n in 0..3 {
        assert_eq!(
            app.proxy_get(&format!("/logged/echo?n={n}")).await.status(),
            200
        );
    }
    let got = arrived(&receiver, 1).await;
    assert_eq!(got.len(), 1);
    let batch = got[0].json();
    let uris: Vec<&str> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        ["/logged/echo?n=0", "/logged/echo?n=1", "/logged/echo?n=2"]
    );
}

#[actix_rt::test]
async fn http_log_legacy_queue_size_and_flush_timeout_batch_as_kong_3_does() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    http_log(&app, json!({ "http_endpoint": receiver.url, "queue_size": 2, "flush_timeout": 3600, "retry_count": 3 }))
        .await;
    for _ in 0..2 {
        assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    }
    let got = arrived(&receiver, 1).await;
    assert_eq!(got[0].json().as_array().unwrap().len(), 2);
}

#[actix_rt::test]
async fn http_log_logs_gateway_answers_too() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    app.expose(
        "down",
        &format!("http://127.0.0.1:{}", dead_port()),
        &["/down"],
    )
    .await;
    let (s, b) = app
        .admin_post(
            "/services/down/plugins",
            json!({ "name": "http-log",
            "config": { "http_endpoint": receiver.url } }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(app.proxy_get("/down/x").await.status(), 502);
    let entry = arrived(&receiver, 1).await[0].json();
    assert_eq!(entry["response"]["status"], 502);
    assert_eq!(entry["source"], "error");
    assert_eq!(entry["latencies"]["proxy"], -1);
}

#[actix_rt::test]
async fn a_log_server_that_is_down_loses_entries_counted_and_the_proxy_keeps_answering() {
    let app = spawn_app().await;
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": format!("http://127.0.0.1:{}", dead_port()),
        "queue": { "max_retry_time": -1 } }),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    }
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "five entries lost", |s| &s.lost, 5).await;
    assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
}

#[actix_rt::test]
async fn a_failing_log_server_is_retried_until_it_accepts() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(500, Duration::ZERO);
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": receiver.url,
        "queue": { "initial_retry_delay": 0.05, "max_retry_delay": 0.05, "max_retry_time": 0.3 } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "the entry given up", |s| &s.lost, 1).await;
    let tries = receiver.all().len();
    assert!(tries >= 2, "retried: {tries} tries");
    assert!(receiver
        .all()
        .iter()
        .all(|r| r.body == receiver.all()[0].body));
}

#[actix_rt::test]
async fn a_stuck_log_server_does_not_hold_the_proxy_and_a_full_queue_drops_and_counts() {
    let app = spawn_app().await;
    let receiver = spawn_held_receiver(200);
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": receiver.url,
        "queue": { "max_entries": 1 } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    // The queue's thread has taken the first entry and waits on the log server, which answers
    // nothing until released: the queue cannot drain while the test counts.
    arrived(&receiver, 1).await;
    for _ in 0..4 {
        // Were the proxy waiting on the log server, this would not answer before the release.
        let answer = actix_rt::time::timeout(WITHIN, app.proxy_get("/logged/echo"))
            .await
            .expect("the proxy answers while the log server is stuck");
        assert_eq!(answer.status(), 200);
    }
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    // One waits in the queue (max_entries = 1), three are dropped. The log phase runs after the
    // answer has gone, so the last entry may reach the queue after the client has its answer.
    counted(&stats, WITHIN, "three entries dropped", |s| &s.dropped, 3).await;
    assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
    receiver.release();
    counted(&stats, WITHIN, "the two kept entries sent", |s| &s.sent, 2).await;
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
}

#[actix_rt::test]
async fn http_log_s_client_adds_the_host_header() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    http_log(&app, json!({ "http_endpoint": receiver.url })).await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let got = arrived(&receiver, 1).await;
    assert_eq!(
        got[0].headers["host"],
        receiver.url.trim_start_matches("http://")
    );
}

#[actix_rt::test]
async fn http_log_puts_changed_configuration_into_effect_immediately() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": receiver.url, "headers": { "key1": "value1" } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    assert_eq!(arrived(&receiver, 1).await[0].headers["key1"], "value1");
    let (s, b) = app
        .admin_patch(
            &format!("/plugins/{}", plugin["id"].as_str().unwrap()),
            json!({ "config": { "headers": { "key1": "value2" } } }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    assert_eq!(arrived(&receiver, 2).await[1].headers["key1"], "value2");
}

#[actix_rt::test]
async fn http_log_sends_each_entry_at_once_when_concurrency_limit_is_minus_one() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    http_log(
        &app,
        json!({ "http_endpoint": receiver.url,
        "queue": { "concurrency_limit": -1, "max_batch_size": 10, "max_coalescing_delay": 3600 } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    // Not held for a batch of ten or an hour: sent alone, in an array as every entry is when
    // max_batch_size is above 1 (Kong's shape).
    let body = arrived(&receiver, 1).await[0].json();
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["client_ip"], "127.0.0.1");
}

#[actix_rt::test]
async fn http_log_enabled_globally_logs_a_request_no_route_matches() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let (s, b) = app
        .admin_post(
            "/plugins",
            json!({ "name": "http-log", "config": { "http_endpoint": receiver.url } }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(app.proxy_get("/nonexistant/proxy/path").await.status(), 404);
    let entry = arrived(&receiver, 1).await[0].json();
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert_eq!(entry["response"]["status"], 404);
    assert!(entry["route"].is_null() && entry["service"].is_null());
    assert_eq!(crate::helpers::logs::errors(), Vec::<String>::new());
}

#[actix_rt::test]
async fn http_log_gracefully_handles_a_log_server_that_never_answers() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::from_secs(30));
    let plugin = http_log(
        &app,
        json!({ "http_endpoint": receiver.url, "timeout": 100,
        "queue": { "max_retry_time": -1 } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    // `timeout` (100 ms), not the default 10 s, ends the try.
    let within = Duration::from_secs(5);
    counted(&stats, within, "given up after its timeout", |s| &s.lost, 1).await;
}

#[actix_rt::test]
async fn http_log_instances_do_not_mix_their_entries() {
    let app = spawn_app().await;
    let (one, two) = (
        spawn_receiver(200, Duration::ZERO),
        spawn_receiver(200, Duration::ZERO),
    );
    let upstream = spawn_upstream();
    for (name, receiver) in [("one", &one), ("two", &two)] {
        app.expose(name, &upstream.url, &[&format!("/{name}")])
            .await;
        let (s, b) = app
            .admin_post(
                &format!("/services/{name}/plugins"),
                json!({ "name": "http-log",
                "config": { "http_endpoint": receiver.url,
                    "queue": { "max_batch_size": 5, "max_coalescing_delay": 0.2 } } }),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    for i in 0..10 {
        assert_eq!(
            app.proxy_get(&format!("/one/status/{}", 200 + i % 5))
                .await
                .status(),
            200 + i % 5
        );
        assert_eq!(
            app.proxy_get(&format!("/two/status/{}", 400 + i % 5))
                .await
                .status(),
            400 + i % 5
        );
    }
    for (receiver, base) in [(&one, 200), (&two, 400)] {
        let entries = eventually(WITHIN, "ten entries each", || async {
            let entries: Vec<Value> = receiver
                .all()
                .iter()
                .flat_map(|r| r.json().as_array().cloned().unwrap())
                .collect();
            (entries.len() >= 10).then_some(entries)
        })
        .await;
        let mut statuses: Vec<u64> = entries
            .iter()
            .map(|e| e["response"]["status"].as_u64().unwrap())
            .collect();
        statuses.sort_unstable();
        let mut expected: Vec<u64> = (0..10).map(|i| base + i % 5).collect();
        expected.sort_unstable();
        assert_eq!(statuses, expected);
    }
}

// ---- file-log (04-file-log/01-log_spec.lua) ----

async fn file_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    eventually(WITHIN, "log lines written", || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only lines with their `\n`: a read can overlap the write of the last one (a write
        // that crosses a page boundary becomes visible a page at a time).
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let lines: Vec<Value> = complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[actix_rt::test]
async fn file_log_logs_to_file() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.log");
    logged(
        &app,
        json!({ "name": "file-log", "config": { "path": path } }),
    )
    .await;
    let r = app
        .http
        .get(format!("{}/logged/echo", app.proxy))
        .header("file-log-uuid", "a-uuid")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = file_lines(&path, 1).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request"]["headers"]["file-log-uuid"], "a-uuid");
    assert_eq!(lines[0]["response"]["status"], 200);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

/// A log plugin scoped to a consumer runs for that consumer's requests only, once key-auth has
/// told who the caller is, and in their place of the service's instance (Kong's precedence: one
/// instance per plugin name, a consumer's before a service's).
#[actix_rt::test]
async fn a_consumer_scoped_file_log_logs_only_that_consumer_s_requests() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (bob_path, all_path) = (dir.path().join("bob.log"), dir.path().join("all.log"));
    logged(&app, json!({ "name": "key-auth" })).await;
    let (s, b) = app
        .admin_post(
            "/services/logged/plugins",
            json!({ "name": "file-log", "config": { "path": all_path } }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    for who in ["bob", "alice"] {
        let (s, b) = app
            .admin_post("/consumers", json!({ "username": who }))
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = app
            .admin_post(
                &format!("/consumers/{who}/key-auth"),
                json!({ "key": format!("{who}-key") }),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = app
        .admin_post(
            "/consumers/bob/plugins",
            json!({ "name": "file-log", "config": { "path": bob_path } }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    for (who, n) in [("alice", 1), ("bob", 1), ("alice", 2)] {
        let r = app
            .http
            .get(format!("{}/logged/echo?n={n}", app.proxy))
            .header("apikey", format!("{who}-key"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{who}");
    }
    file_lines(&bob_path, 1).await;
    file_lines(&all_path, 2).await;
    // Give a line written to the wrong file time to land before reading both once more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (bob, all) = (
        file_lines(&bob_path, 1).await,
        file_lines(&all_path, 2).await,
    );
    let users = |lines: &[Value]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l["consumer"]["username"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(users(&bob), ["bob"]);
    assert_eq!(bob[0]["request"]["querystring"]["n"], "1");
    assert_eq!(users(&all), ["alice", "alice"]);
}

#[actix_rt::test]
async fn file_log_reopens_the_file_on_each_request_when_reopen_is_true() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.log");
    logged(
        &app,
        json!({ "name": "file-log", "config": { "path": path, "reopen": true } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo?n=1").await.status(), 200);
    file_lines(&path, 1).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(app.proxy_get("/logged/echo?n=2").await.status(), 200);
    let lines = file_lines(&path, 1).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request"]["uri"], "/logged/echo?n=2");
}

#[actix_rt::test]
async fn file_log_keeps_writing_to_the_open_file_when_reopen_is_false() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.log");
    let moved = dir.path().join("file.log.1");
    logged(
        &app,
        json!({ "name": "file-log", "config": { "path": path } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo?n=1").await.status(), 200);
    file_lines(&path, 1).await;
    std::fs::rename(&path, &moved).unwrap();
    assert_eq!(app.proxy_get("/logged/echo?n=2").await.status(), 200);
    let lines = file_lines(&moved, 2).await;
    assert_eq!(lines[1]["request"]["uri"], "/logged/echo?n=2");
    assert!(!path.exists());
}

#[actix_rt::test]
async fn file_log_does_not_create_the_file_when_its_directory_does_not_exist() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("file.log");
    let plugin = logged(
        &app,
        json!({ "name": "file-log", "config": { "path": path } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "the entry lost", |s| &s.lost, 1).await;
    assert!(!path.exists());
}

#[actix_rt::test]
async fn file_log_survives_a_path_that_is_a_directory() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = logged(
        &app,
        json!({ "name": "file-log", "config": { "path": dir.path() } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "both entries lost", |s| &s.lost, 2).await;
}

#[actix_rt::test]
async fn file_log_loses_lines_when_the_file_is_removed_and_reopen_is_false() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.log");
    let plugin = logged(
        &app,
        json!({ "name": "file-log", "config": { "path": path } }),
    )
    .await;
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    file_lines(&path, 1).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(app.proxy_get("/logged/echo").await.status(), 200);
    let stats = stats_of(plugin_id(&plugin)).unwrap();
    counted(&stats, WITHIN, "the second line written", |s| &s.sent, 2).await;
    assert!(!path.exists(), "written to the removed file, as Kong does");
}

// ---- redaction (Portcullis) ----

#[actix_rt::test]
async fn no_credential_reaches_a_log_entry() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.log");
    logged(
        &app,
        json!({ "name": "http-log", "config": { "http_endpoint": receiver.url } }),
    )
    .await;
    let (s, b) = app
        .admin_post(
            "/services/logged/plugins",
            json!({ "name": "file-log", "config": { "path": path } }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post("/services/logged/plugins", json!({ "name": "key-auth" }))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post("/consumers", json!({ "username": "bob" }))
        .await;
    assert_eq!(s, 201, "{b}");
    let secret = |what: &str| format!("{what}-{}", uuid::Uuid::new_v4().simple());
    let apikey = secret("apikey");
    let (s, b) = app
        .admin_post("/consumers/bob/key-auth", json!({ "key": apikey }))
        .await;
    assert_eq!(s, 201, "{b}");
    let (token, client_secret, code, refresh, password, bearer, cookie) = (
        secret("token"),
        secret("client-secret"),
        secret("code"),
        secret("refresh"),
        secret("password"),
        secret("bearer"),
        secret("cookie"),
    );
    let r = app
        .http
        .get(format!(
            "{}/logged/echo?access_token={token}&client_secret={client_secret}&code={code}&refresh_token={refresh}&password={password}&keep=me",
            app.proxy
        ))
        .header("apikey", &apikey)
        .header("authorization", format!("Bearer {bearer}"))
        .header("cookie", format!("session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(format!("{}/logged/echo?apikey={apikey}", app.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: String = arrived(&receiver, 2)
        .await
        .iter()
        .map(|r| r.body.clone())
        .collect();
    let written = file_lines(&path, 2).await;
    let written = serde_json::to_string(&written).unwrap();
    for secret in [
        &apikey,
        &token,
        &client_secret,
        &code,
        &refresh,
        &password,
        &bearer,
        &cookie,
    ] {
        assert!(
            !sent.contains(secret.as_str()),
            "{secret} sent to the log server: {sent}"
        );
        assert!(
            !written.contains(secret.as_str()),
            "{secret} written to the file: {written}"
        );
    }
    // The first request's entry (the log server records in order of arrival, and the queue
    // sends one entry at a time, but the order is not what this test is about).
    let entry = receiver
        .all()
        .iter()
        .map(Received::json)
        .find(|e| e["request"]["querystring"]["keep"] == "me")
        .expect("the first request's entry");
    assert_eq!(
        entry["request"]["querystring"],
        json!({ "access_token": "REDACTED", "client_secret": "REDACTED", "code": "REDACTED",
                "refresh_token": "REDACTED", "password": "REDACTED", "keep": "me" })
    );
    assert_eq!(entry["request"]["headers"]["apikey"], "REDACTED");
    assert_eq!(entry["request"]["headers"]["authorization"], "REDACTED");
    assert_eq!(entry["request"]["headers"]["cookie"], "REDACTED");
    assert_eq!(
        entry["request"]["uri"],
        "/logged/echo?access_token=REDACTED&client_secret=REDACTED&code=REDACTED&refresh_token=REDACTED&password=REDACTED&keep=me"
    );
    let (_, bob) = app.admin_get("/consumers/bob").await;
    assert_eq!(entry["consumer"], bob);
    assert_eq!(
        entry["authenticated_entity"]["consumer_id"],
        entry["consumer"]["id"]
    );
    assert!(entry["authenticated_entity"]["id"].is_string());
    for line in crate::helpers::logs::logged(tracing::Level::WARN)
        .iter()
        .chain(&crate::helpers::logs::errors())
    {
        for secret in [
            &apikey,
            &token,
            &client_secret,
            &code,
            &refresh,
            &password,
            &bearer,
            &cookie,
        ] {
            assert!(
                !line.contains(secret.as_str()),
                "{secret} in the gateway's log: {line}"
            );
        }
    }
}

/// The log phase runs for every plugin of the route, not only those whose access phase ran:
/// `oauth2` (priority 1004) refuses a request without a token before `http-log` (12) is reached,
/// and the refusal is still logged, as a plugin's answer.
#[actix_rt::test]
async fn a_request_a_plugin_refused_is_logged_with_the_status_the_client_got() {
    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    http_log(&app, json!({ "http_endpoint": receiver.url })).await;
    let (s, b) = app
        .admin_post(
            "/services/logged/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let refused = app.proxy_get("/logged/echo").await;
    assert_eq!(refused.status(), 401);
    let entry = arrived(&receiver, 1).await[0].json();
    assert_eq!(entry["response"]["status"], 401);
    assert_eq!(entry["source"], "exit");
    assert_eq!(entry["latencies"]["proxy"], -1);
    assert_eq!(entry["upstream_uri"], "", "{entry}");
}

/// The bytes of a logged part's header lines (`name: value` and their line ends).
fn header_bytes(part: &Value) -> u64 {
    let headers = part["headers"].as_object().unwrap();
    headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.as_str().map_or(0, str::len) + 2)
        .sum::<usize>() as u64
}

/// A WebSocket tunnel is one request in the log phase, logged when it closes, with the bytes it
/// carried each way.
#[actix_rt::test]
async fn a_websocket_tunnel_is_logged_once_closed_with_its_bytes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app().await;
    let receiver = spawn_receiver(200, Duration::ZERO);
    let upstream = crate::echo_servers::spawn_ws_upstream(crate::echo_servers::Upstream::Echo);
    app.expose("ws", &upstream, &["/ws"]).await;
    let (s, b) = app
        .admin_post(
            "/services/ws/plugins",
            json!({"name": "http-log", "config": {"http_endpoint": receiver.url}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let url = app.proxy.replacen("http://", "ws://", 1) + "/ws";
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let message = "x".repeat(10_000);
    ws.send(Message::text(message.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(message));
    // Open for a while: nothing logged yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.all().is_empty(), "logged before the tunnel closed");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    // Both sides closed: the tunnel ends.
    drop(ws);
    let entry = arrived(&receiver, 1).await[0].json();
    assert_eq!(entry["response"]["status"], 101);
    assert_eq!(entry["source"], "service");
    // 10,000 bytes each way, in masked (client) and unmasked (server) frames.
    let (sent, got) = (
        entry["request"]["size"].as_u64().unwrap(),
        entry["response"]["size"].as_u64().unwrap(),
    );
    // Each size: the head (its header lines, a start line under 100 bytes) and the frames.
    for (size, part) in [(sent, &entry["request"]), (got, &entry["response"])] {
        let lines = header_bytes(part);
        assert!(
            (lines + 10_000..lines + 10_700).contains(&size),
            "{size} bytes for {lines} bytes of header lines: {entry}"
        );
    }
    assert!(
        entry["latencies"]["request"].as_u64().unwrap() >= 500,
        "{entry}"
    );
}
