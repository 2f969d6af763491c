//! Request framing on the proxy listeners (RFC 9112 §6): requests a front end and the gateway
//! could frame differently are refused with `400` and the connection closed, and a request never
//! becomes two. Raw sockets against a running gateway.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_upstream, spawn_with, test_settings, TestApp};

async fn gateway() -> TestApp {
    let app = spawn_with(test_settings()).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    app
}

/// Writes `request` and reads until the gateway closes the connection.
async fn exchange(app: &TestApp, request: &[u8]) -> String {
    let addr = app.proxy.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("the gateway closes the connection")
        .unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

#[actix_web::test]
async fn ambiguous_framing_is_400_and_closes() {
    let app = gateway().await;
    for (case, request) in [
        (
            "two different Content-Length",
            &b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "obfuscated Transfer-Encoding",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "signed Content-Length",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
        ),
        (
            "bare LF inside a header value",
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Lf: a\rb\r\n\r\n",
        ),
    ] {
        let answer = exchange(&app, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{case}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{case}: {answer}");
    }
}

#[actix_web::test]
async fn content_length_beside_chunked_is_framed_by_chunked_and_never_smuggles_a_request() {
    let app = gateway().await;
    // Framed by Content-Length, the body would be "0\r\n\r\nGET /echo/smuggled…"; framed by
    // chunked, those bytes are a second request. The gateway frames by chunked (RFC 9112
    // §6.3) and closes the connection after the answer, so the second request is never read.
    let answer = exchange(
        &app,
        b"POST /echo/first HTTP/1.1\r\nHost: x\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.contains("\"path\":\"/first\""), "{answer}");
    assert!(!answer.contains("smuggled"), "{answer}");
}
