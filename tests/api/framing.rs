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
async fn content_length_beside_chunked_is_400_closes_and_reaches_no_upstream() {
    let app = spawn_with(test_settings()).await;
    // A listener that never answers: any connection the gateway opens to it is recorded.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    app.expose("silent", &url, &["/silent"]).await;
    // Framed by Content-Length, the body would be "0\r\n\r\nGET /silent/smuggled…"; framed
    // by chunked, those bytes are a second request. A front end and the gateway could disagree,
    // so the gateway refuses the request whichever header comes first (RFC 9112 §6.3, as nginx).
    for request in [
        &b"POST /silent/first HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /silent/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /silent/first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\nGET /silent/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /silent/first HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let answer = exchange(&app, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    match upstream.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the upstream was reached: {other:?}"),
    }
    // The same route with one framing header is proxied (the listener is reached).
    let addr = app.proxy.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /silent/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match upstream.accept() {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "a well-framed request reaches the upstream"
    );
}
