//! WebSocket through the gateway: a real client (tokio-tungstenite) and a real WebSocket server
//! as the upstream, over ws and wss, on open and oauth2-protected routes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::echo_servers::{spawn_ws_upstream, Upstream};
use crate::helpers::{spawn_app, TestApp};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(base: &str, path: &str) -> String {
    format!(
        "{}{path}",
        base.replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    )
}

async fn connect(url: &str, token: Option<&str>) -> Result<Client, WsError> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    // Trusts the gateway's generated certificate (wss).
    let tls = reqwest_free_tls_config();
    let (ws, response) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await?;
    assert_eq!(response.status(), 101);
    Ok(ws)
}

/// A rustls client config that accepts any certificate (the test gateway's is self-signed).
fn reqwest_free_tls_config() -> Arc<rustls::ClientConfig> {
    Arc::new(portcullis::tls::unverified_upstream_config())
}

/// Sends `message` and returns the next data message.
async fn round_trip(ws: &mut Client, message: Message) -> Message {
    ws.send(message).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("the tunnel is open")
            .unwrap();
        if matches!(
            next,
            Message::Text(_) | Message::Binary(_) | Message::Close(_)
        ) {
            return next;
        }
    }
}

async fn exposed(upstream: &str) -> TestApp {
    let app = spawn_app().await;
    app.expose("ws", upstream, &["/ws"]).await;
    app
}

#[actix_web::test]
async fn text_binary_and_a_thousand_messages_in_order_pass_both_ways() {
    let app = exposed(&spawn_ws_upstream(Upstream::Echo)).await;
    let mut ws = connect(&ws_url(&app.proxy, "/ws/echo"), None)
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("hello")).await,
        Message::text("hello")
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        round_trip(&mut ws, Message::binary(big.clone())).await,
        Message::binary(big)
    );
    for i in 0..1000 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..1000 {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next, Message::text(format!("m{i}")));
    }
    ws.close(None).await.unwrap();
    // The close handshake completes through the tunnel.
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), ws.collect::<Vec<_>>())
        .await
        .expect("the tunnel closes");
    assert!(
        rest.iter()
            .all(|m| matches!(m, Ok(Message::Close(_)))
                || matches!(m, Err(WsError::ConnectionClosed))),
        "{rest:?}"
    );
}

#[actix_web::test]
async fn wss_on_the_tls_listener_reaches_a_plain_upstream() {
    let app = exposed(&spawn_ws_upstream(Upstream::Echo)).await;
    let mut ws = connect(&ws_url(&app.proxy_tls, "/ws/secure"), None)
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("over tls")).await,
        Message::text("over tls")
    );
}

#[actix_web::test]
async fn a_close_from_the_upstream_reaches_the_client() {
    let app = exposed(&spawn_ws_upstream(Upstream::CloseAfterFirst)).await;
    let mut ws = connect(&ws_url(&app.proxy, "/ws/bye"), None).await.unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("hi")).await,
        Message::text("bye")
    );
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the close within 10 s");
    assert!(
        matches!(next, Some(Ok(Message::Close(_))) | None),
        "{next:?}"
    );
}

#[actix_web::test]
async fn an_oauth2_route_refuses_the_handshake_without_a_token_and_tunnels_with_one() {
    let app = spawn_app().await;
    crate::helpers::client_credentials_fixture(&app, &spawn_ws_upstream(Upstream::Echo)).await;
    match connect(&ws_url(&app.proxy, "/api/ws"), None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "expected a 401 refusal, got {:?}",
            other.map(|_| "a tunnel")
        ),
    }
    match connect(&ws_url(&app.proxy, "/api/ws"), Some("not-a-token")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "expected a 401 refusal, got {:?}",
            other.map(|_| "a tunnel")
        ),
    }
    let response = app
        .http
        .post(format!("{}/api/oauth2/token", app.proxy_tls))
        .json(
            &json!({"client_id": "clientid123", "client_secret": "secret123",
                      "grant_type": "client_credentials"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token: serde_json::Value = response.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();
    let mut ws = connect(&ws_url(&app.proxy_tls, "/api/ws"), Some(token))
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("authorised")).await,
        Message::text("authorised")
    );
}

/// An HTTP server that refuses every request with `403 no websocket here`.
fn spawn_refusing_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 17\r\nconnection: close\r\n\r\nno websocket here",
                );
            });
        }
    });
    format!("http://{addr}")
}

#[actix_web::test]
async fn an_upstream_that_does_not_switch_answers_as_any_request() {
    let app = exposed(&spawn_refusing_upstream()).await;
    match connect(&ws_url(&app.proxy, "/ws/plain"), None).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.body().as_deref(), Some(&b"no websocket here"[..]));
        }
        other => panic!(
            "expected the upstream's 403, got {:?}",
            other.map(|_| "a tunnel")
        ),
    }
}

#[actix_web::test]
async fn a_tunnel_idle_for_the_read_timeout_is_closed() {
    let app = spawn_app().await;
    let upstream = spawn_ws_upstream(Upstream::Echo);
    let (s, b) = app
        .admin_post(
            "/services",
            json!({"name": "idle", "url": upstream, "read_timeout": 1000}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post(
            "/services/idle/routes",
            json!({"name": "idle", "paths": ["/idle"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut ws = connect(&ws_url(&app.proxy, "/idle"), None).await.unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("awake")).await,
        Message::text("awake")
    );
    // Nothing either way: the gateway closes the tunnel after about a second.
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed within 10 s");
    assert!(
        matches!(next, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{next:?}"
    );
}
