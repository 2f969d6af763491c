//! The listeners' flags (`http2`, `reuseport`: the proxy's, the admin API's and the status
//! API's) and per-connection limits (`client_header_timeout`), against a running gateway with
//! real clients and raw sockets.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use portcullis::config::Settings;

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
    // No HTTP/2 SETTINGS frame: an HTTP/1.1 400, then the connection is closed.
    let answer = String::from_utf8_lossy(&raw);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");

    // The line alone, the rest of the preface still to come, is refused as well; an HTTP/1
    // request on the same listener is served.
    let mut conn = TcpStream::connect(plain_addr(&app)).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("closed")
        .unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(app.proxy_get("/nowhere").await.status(), 404);
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

/// Asserts a gateway with `settings`, whose `key` names `taken` with `flags`, fails to start on
/// that address.
async fn refused_a_taken_port(settings: Settings, key: &str, taken: &str, flags: &str) {
    let err = match portcullis::startup::Application::build(settings).await {
        Ok(_) => panic!("a second gateway bound {taken} with '{flags}'"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(key) && err.contains(&format!("cannot bind {taken}")),
        "'{flags}': {err}"
    );
}

#[actix_web::test]
async fn reuseport_does_not_share_a_port_another_process_listens_on() {
    // Kong's default `proxy_listen` has `reuseport`: a second gateway started on the same port
    // must fail, not split the first one's connections with it.
    let mut settings = test_settings();
    settings.worker_processes = 2;
    settings.proxy_listen = "127.0.0.1:0 reuseport".into();
    let first = spawn_with(settings).await;
    let taken = plain_addr(&first);
    for flags in [" reuseport", " reuseport backlog=16384", ""] {
        let mut settings = test_settings();
        settings.worker_processes = 2;
        settings.proxy_listen = format!("{taken}{flags}");
        refused_a_taken_port(settings, "proxy_listen", &taken, flags).await;
    }
    let port: u16 = taken.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        listening_sockets(port),
        2,
        "the first gateway's sockets only"
    );
}

/// The port of a `scheme://127.0.0.1:port` base URL.
fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}

/// What a GET of `url` answered with `client`: the HTTP version and the status.
async fn version_and_status(client: &reqwest::Client, url: &str) -> (reqwest::Version, u16) {
    let resp = client.get(url).send().await.unwrap();
    (resp.version(), resp.status().as_u16())
}

#[actix_web::test]
async fn the_admin_and_status_listeners_take_kong_s_http2_and_reuseport_flags() {
    // Kong's default `admin_listen`, on free ports; Kong's `status_listen` with `http2`.
    let mut settings = test_settings();
    settings.admin_listen =
        "127.0.0.1:0 reuseport backlog=16384, 127.0.0.1:0 http2 ssl reuseport backlog=16384".into();
    settings.status_listen = "127.0.0.1:0 http2 reuseport".into();
    let app = spawn_with(settings).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let alpn = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert_eq!(
        version_and_status(&alpn, &format!("{}/status", app.admin_tls)).await,
        (reqwest::Version::HTTP_2, 200),
        "h2 by ALPN on the admin API's TLS listener"
    );
    assert_eq!(
        version_and_status(&h2c, &format!("{}/status", app.status)).await,
        (reqwest::Version::HTTP_2, 200),
        "h2c on the status listener with `http2`"
    );
    // Without `http2` a plain listener speaks HTTP/1.1 only.
    assert!(
        h2c.get(format!("{}/status", app.admin))
            .send()
            .await
            .is_err(),
        "h2c answered on an admin listener without `http2`"
    );
    assert_eq!(
        version_and_status(&app.http, &format!("{}/status", app.admin)).await,
        (reqwest::Version::HTTP_11, 200)
    );
    // One worker serves each of these APIs: one socket per listener, as without `reuseport`.
    for base in [&app.admin, &app.admin_tls, &app.status] {
        assert_eq!(listening_sockets(port_of(base)), 1, "{base}");
    }
    // A port the first gateway listens on fails a second one's start, `reuseport` or not.
    let taken = app.admin.trim_start_matches("http://");
    for flags in [" reuseport", ""] {
        let mut settings = test_settings();
        settings.admin_listen = format!("{taken}{flags}");
        refused_a_taken_port(settings, "admin_listen", taken, flags).await;
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

/// A gateway whose plain listener takes the PROXY protocol, an echo route, and the listener's
/// address.
async fn proxy_protocol_gateway(trusted_ips: &[&str]) -> (TestApp, String) {
    let mut settings = test_settings();
    settings.proxy_listen = "127.0.0.1:0 proxy_protocol, 127.0.0.1:0 ssl".into();
    settings.trusted_ips = trusted_ips.iter().map(|s| (*s).to_string()).collect();
    let app = spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    let addr = plain_addr(&app);
    (app, addr)
}

/// Sends `header` then one request, and returns the `x-real-ip` the upstream saw.
async fn real_ip_behind(addr: &str, header: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(header).await.unwrap();
    conn.write_all(b"GET /echo/pp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    echo["headers"]["x-real-ip"].as_str().unwrap().to_string()
}

fn v2_header(source: &str) -> Vec<u8> {
    let source: std::net::SocketAddr = source.parse().unwrap();
    // Both addresses of one family, as a balancer sends them.
    let destination: std::net::SocketAddr = if source.is_ipv6() {
        "[2001:db8::1]:8000".parse().unwrap()
    } else {
        "10.0.0.1:8000".parse().unwrap()
    };
    let addresses = (source, destination);
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .build()
    .unwrap()
}

#[actix_web::test]
async fn a_trusted_balancer_s_proxy_protocol_header_names_the_client() {
    let (_app, addr) = proxy_protocol_gateway(&["127.0.0.1/32"]).await;
    assert_eq!(
        real_ip_behind(&addr, b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8000\r\n").await,
        "203.0.113.7"
    );
    assert_eq!(
        real_ip_behind(&addr, &v2_header("[2001:db8::7]:51234")).await,
        "2001:db8::7"
    );
    assert_eq!(
        real_ip_behind(&addr, &v2_header("198.51.100.9:4000")).await,
        "198.51.100.9"
    );
    // A health check of the balancer itself names no client: the peer counts.
    assert_eq!(
        real_ip_behind(&addr, b"PROXY UNKNOWN\r\n").await,
        "127.0.0.1"
    );
}

#[actix_web::test]
async fn an_untrusted_peer_s_proxy_protocol_header_is_read_but_not_believed() {
    let (_app, addr) = proxy_protocol_gateway(&[]).await;
    assert_eq!(
        real_ip_behind(&addr, b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8000\r\n").await,
        "127.0.0.1"
    );
}

#[actix_web::test]
async fn a_connection_without_a_proxy_protocol_header_is_closed_unanswered() {
    let (_app, addr) = proxy_protocol_gateway(&["127.0.0.1/32"]).await;
    for start in [
        &b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(start).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
            .await
            .expect("closed")
            .unwrap_or_default();
        assert_eq!(raw, b"", "{:?}", String::from_utf8_lossy(&raw));
    }
}
