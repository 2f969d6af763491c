//! Request bodies whatever their framing, slow clients, and the request target's authority:
//! real HTTP/2 and raw HTTP/1.1 clients against a running gateway.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_upstream, spawn_with, test_settings, TestApp};

/// A client that offers HTTP/2 by ALPN (and trusts the generated certificate).
fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The plain proxy listener's address.
fn plain_addr(app: &TestApp) -> String {
    app.proxy.trim_start_matches("http://").to_string()
}

/// Writes `request` on a new connection and reads until the gateway closes it (at most 20 s).
async fn exchange(app: &TestApp, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(plain_addr(app)).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut raw))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// The echo upstream's JSON at the end of a raw answer.
fn echoed(answer: &str) -> Value {
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[actix_web::test]
async fn an_http2_body_without_content_length_reaches_the_upstream_whole_and_chunked() {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    app.expose("h2", &upstream.url, &["/h2"]).await;
    let chunks: Vec<Result<String, std::io::Error>> = (0..40)
        .map(|i| Ok(format!("{i:04}:{}\n", "x".repeat(1000))))
        .collect();
    let sent: String = chunks
        .iter()
        .map(|c| c.as_ref().unwrap().as_str())
        .collect();

    let resp = h2_client()
        .post(format!("{}/h2/upload", app.proxy_tls))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body"], sent.as_str());
    assert_eq!(echo["headers"]["transfer-encoding"], "chunked");
    assert_eq!(echo["headers"].get("content-length"), None);
}

#[actix_web::test]
async fn an_http2_request_without_a_body_reaches_the_upstream_without_one() {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    app.expose("h2", &upstream.url, &["/h2"]).await;

    let resp = h2_client()
        .get(format!("{}/h2/read", app.proxy_tls))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body"], "");
    assert_eq!(echo["headers"].get("transfer-encoding"), None);
}

#[actix_web::test]
async fn a_get_with_a_chunked_body_keeps_it() {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    app.expose("get", &upstream.url, &["/get"]).await;

    let answer = exchange(
        &app,
        b"GET /get/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let echo = echoed(&answer);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["body"], "hello world", "{echo}");
}

/// An upstream that accepts one connection, reads it until the gateway closes it, and then
/// reports what it had received.
async fn spawn_sink() -> (u16, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    actix_rt::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let _ = conn.read_to_end(&mut received).await;
        let _ = tx.send(received);
    });
    (port, rx)
}

#[actix_web::test]
async fn a_stalled_body_is_408_and_closes_both_connections() {
    let mut settings = test_settings();
    settings.client_body_timeout = 1;
    let app = spawn_with(settings).await;
    let framings: [(&str, &[u8], &str); 2] = [
        (
            "length",
            b"Content-Length: 100\r\n\r\nonly 21 of 100 bytes.",
            "\r\n\r\nonly 21 of 100 bytes.",
        ),
        (
            "chunked",
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            "\r\n\r\n5\r\nfirst\r\n",
        ),
    ];
    for (name, rest, upstream_got) in framings {
        let (port, upstream_closed) = spawn_sink().await;
        app.expose(
            name,
            &format!("http://127.0.0.1:{port}"),
            &[&format!("/{name}")],
        )
        .await;
        let mut request = format!("POST /{name}/x HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
        request.extend_from_slice(rest);

        let answer = exchange(&app, &request).await;

        assert!(answer.starts_with("HTTP/1.1 408 "), "{name}: {answer}");
        assert!(
            answer.contains("\r\nconnection: close\r\n"),
            "{name}: {answer}"
        );
        let received = tokio::time::timeout(Duration::from_secs(20), upstream_closed)
            .await
            .expect("the upstream connection is closed")
            .unwrap();
        let received = String::from_utf8_lossy(&received);
        assert!(received.ends_with(upstream_got), "{name}: {received}");
    }
}

#[actix_web::test]
async fn a_body_too_large_for_a_plugin_is_413_and_the_connection_closes_when_the_client_stops_sending(
) {
    let mut settings = test_settings();
    settings.client_max_body_size = "1k".into();
    let app = spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("big", &upstream.url, &["/big"]).await;
    let (s, b) = app
        .admin_post(
            "/services/big/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut conn = TcpStream::connect(plain_addr(&app)).await.unwrap();
    // 4 KiB in chunks and no last chunk: the rest never comes, so only a close ends the read
    // below (a server that drained the dropped body would wait for it forever).
    conn.write_all(
        b"POST /big/oauth2/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..4 {
        conn.write_all(b"400\r\n").await.unwrap();
        conn.write_all(&[b'a'; 1024]).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
    }

    // The gateway reads and drops what the client still sends (nginx's lingering close: a
    // connection closed on unread bytes is reset, and the client would lose the 413), and
    // closes after 5 s without any.
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut raw))
        .await
        .expect("closed without waiting for the rest of the body")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let answer = String::from_utf8_lossy(&raw);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}

#[actix_web::test]
async fn an_absolute_form_target_s_authority_wins_over_host() {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    let (s, b) = app
        .admin_post("/services", json!({"name": "abs", "url": upstream.url}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post(
            "/services/abs/routes",
            json!({"hosts": ["target.test"], "paths": ["/abs"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    let answer = exchange(
        &app,
        b"GET http://target.test/abs/x HTTP/1.1\r\nHost: header.test\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        echoed(&answer)["headers"]["x-forwarded-host"],
        "target.test"
    );
}

#[actix_web::test]
async fn an_http2_authority_wins_over_host() {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    let (s, b) = app
        .admin_post("/services", json!({"name": "auth", "url": upstream.url}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post(
            "/services/auth/routes",
            json!({"hosts": ["target.test"], "paths": ["/auth"], "preserve_host": true}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let port: u16 = app.proxy_tls.rsplit(':').next().unwrap().parse().unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("target.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();

    let resp = client
        .get(format!("https://target.test:{port}/auth/x"))
        .header("host", "header.test")
        .send()
        .await
        .unwrap();

    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-forwarded-host"], "target.test");
    assert_eq!(echo["headers"]["host"], format!("target.test:{port}"));
}
