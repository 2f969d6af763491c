//! The proxy listeners' flags (`http2`, `reuseport`) and per-connection limits
//! (`client_header_timeout`), against a running gateway with real clients and raw sockets.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_upstream, spawn_with, test_settings, TestApp};

fn plain_addr(app: &TestApp) -> String {
    app.proxy.trim_start_matches("http://").to_string()
}

/// Reads one answer (head and a `Content-Length` body) off a keep-alive connection.
async fn read_answer(conn: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole answer: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if raw.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[actix_web::test]
async fn the_http2_flag_serves_prior_knowledge_h2c_beside_http1() {
    let mut settings = test_settings();
    settings.proxy_listen = "127.0.0.1:0 http2, 127.0.0.1:0 ssl".into();
    let app = spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;

    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2c
        .post(format!("{}/echo/h2c", app.proxy))
        .body("over h2c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["body"], "over h2c", "{echo}");

    // HTTP/1.1 on the same listener.
    let resp = app.proxy_get("/echo/h1").await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[actix_web::test]
async fn without_the_http2_flag_a_plain_listener_refuses_the_h2c_preface() {
    let app = spawn_with(test_settings()).await;
    let mut conn = TcpStream::connect(plain_addr(&app)).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("closed")
        .unwrap();
    // No HTTP/2 SETTINGS frame, no answer: the connection is closed.
    assert_eq!(raw, b"", "{:?}", String::from_utf8_lossy(&raw));
}

/// Listening sockets on `port` in the kernel's table (`/proc/net/tcp`, state 0A = LISTEN).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let suffix = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.get(1).is_some_and(|a| a.ends_with(&suffix)) && cols.get(3) == Some(&"0A")
        })
        .count()
}

#[actix_web::test]
async fn reuseport_gives_every_worker_a_socket_of_its_own() {
    let upstream = spawn_upstream();
    for (flag, sockets) in [(" reuseport", 3), ("", 1)] {
        let mut settings = test_settings();
        settings.worker_processes = 3;
        settings.proxy_listen = format!("127.0.0.1:0{flag}, 127.0.0.1:0 ssl");
        let app = spawn_with(settings).await;
        app.expose("echo", &upstream.url, &["/echo"]).await;
        let port: u16 = plain_addr(&app)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            listening_sockets(port),
            sockets,
            "proxy_listen with '{flag}'"
        );
        // Every new connection is served, whichever socket the kernel gives it to.
        for i in 0..60 {
            let client = reqwest::Client::new();
            let resp = client
                .get(format!("{}/echo/{i}", app.proxy))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "'{flag}' request {i}");
        }
    }
}

#[actix_web::test]
async fn a_keep_alive_request_whose_head_drips_is_cut_at_client_header_timeout() {
    let mut settings = test_settings();
    settings.client_header_timeout = 1;
    let app = spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;

    let mut conn = TcpStream::connect(plain_addr(&app)).await.unwrap();
    conn.write_all(b"GET /echo/first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");

    // The second request's head, one header line every 300 ms: never complete.
    let started = Instant::now();
    conn.write_all(b"GET /echo/second HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if conn
            .write_all(format!("x-drip-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(1), conn.read(&mut buf)).await
        {
            if matches!(read, Ok(0) | Err(_)) {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the dripping head was never cut off");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "cut after {elapsed:?} with client_header_timeout = 1 s"
    );
}
