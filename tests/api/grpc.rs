//! gRPC through the gateway: a tonic client and a tonic server (messages as raw bytes, so no
//! protobuf code generation), over h2c (a plain listener with `http2`) and TLS, unary and every
//! kind of streaming, trailers, a 10 MiB message, deadlines, and an oauth2 refusal as
//! UNAUTHENTICATED.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use serde_json::json;
use tonic::{Code, Request, Response, Status};

use crate::echo_servers::{spawn_grpc_upstream, Raw, BIG};
use crate::helpers::{spawn_with, test_settings, TestApp};

/// A gRPC client over hyper's HTTP/2 client: h2c for `http://`, TLS trusting the gateway's
/// self-signed certificate for `https://`.
pub(crate) type Client = tonic::client::Grpc<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        tonic::body::Body,
    >,
>;

pub(crate) fn client(origin: &str) -> Client {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(portcullis::tls::unverified_upstream_config())
        .https_or_http()
        .enable_http2()
        .wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    tonic::client::Grpc::with_origin(hyper, origin.parse().unwrap())
        .max_decoding_message_size(BIG)
        .max_encoding_message_size(BIG)
}

fn method(name: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/test.Echo/{name}")).unwrap()
}

pub(crate) async fn unary(
    client: &mut Client,
    name: &str,
    message: Bytes,
) -> Result<Bytes, Status> {
    client.ready().await.unwrap();
    client
        .unary(Request::new(message), method(name), Raw)
        .await
        .map(Response::into_inner)
}

/// A gateway with an h2c listener, a `grpc` service on the tonic server and a route for
/// `test.Echo`.
async fn gateway() -> TestApp {
    let mut settings = test_settings();
    settings.proxy_listen = "127.0.0.1:0 http2, 127.0.0.1:0 ssl".into();
    let app = spawn_with(settings).await;
    let port = spawn_grpc_upstream();
    expose_echo(&app, "echo", &format!("grpc://127.0.0.1:{port}")).await;
    app
}

/// A `grpc` service `name` at `url` (a tonic echo server) with a `grpc`/`grpcs` route of the
/// same name for `test.Echo`.
pub(crate) async fn expose_echo(app: &TestApp, name: &str, url: &str) {
    let (s, b) = app
        .admin_post("/services", json!({"name": name, "url": url}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post(
            &format!("/services/{name}/routes"),
            json!({"name": name, "protocols": ["grpc", "grpcs"], "paths": ["/test.Echo/"],
                   "strip_path": false}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

#[actix_web::test]
async fn unary_streaming_and_trailers_pass_over_h2c_and_tls() {
    let app = gateway().await;
    for origin in [&app.proxy, &app.proxy_tls] {
        let mut grpc = client(origin);
        assert_eq!(
            unary(&mut grpc, "Unary", Bytes::from_static(b"ping"))
                .await
                .unwrap(),
            Bytes::from_static(b"ping"),
            "{origin}"
        );

        let failed = unary(&mut grpc, "Fail", Bytes::new()).await.unwrap_err();
        assert_eq!(failed.code(), Code::FailedPrecondition, "{origin}");
        assert_eq!(failed.message(), "not today");
        assert_eq!(failed.metadata().get("x-custom-trailer").unwrap(), "kept");

        grpc.ready().await.unwrap();
        let copies: Vec<Bytes> = grpc
            .server_streaming(
                Request::new(Bytes::from_static(b"again")),
                method("ServerStream"),
                Raw,
            )
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(copies, vec![Bytes::from_static(b"again"); 3]);

        grpc.ready().await.unwrap();
        let parts =
            stream::iter(["a", "b", "c"].map(|s: &'static str| Bytes::from_static(s.as_bytes())));
        let joined = grpc
            .client_streaming(Request::new(parts), method("ClientStream"), Raw)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(joined, Bytes::from_static(b"abc"));

        grpc.ready().await.unwrap();
        let outgoing = stream::iter((0..100).map(|i| Bytes::from(format!("m{i}"))));
        let echoed: Vec<Bytes> = grpc
            .streaming(Request::new(outgoing), method("Bidi"), Raw)
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect()
            .await;
        let expected: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("m{i}"))).collect();
        assert_eq!(echoed, expected);
    }
}

#[actix_web::test]
async fn a_ten_mebibyte_message_passes_whole() {
    let app = gateway().await;
    let big: Bytes = (0..10 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let mut grpc = client(&app.proxy);
    let echoed = tokio::time::timeout(
        Duration::from_secs(60),
        unary(&mut grpc, "Unary", big.clone()),
    )
    .await
    .expect("within a minute")
    .unwrap();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "the message came back altered");
}

#[actix_web::test]
async fn refusals_are_grpc_statuses() {
    let app = gateway().await;
    let (s, b) = app
        .admin_post(
            "/services/echo/plugins",
            json!({"name": "oauth2", "config": {"enable_client_credentials": true}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut grpc = client(&app.proxy);
    let refused = unary(&mut grpc, "Unary", Bytes::from_static(b"ping"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "The access token is missing");

    // No route: Kong's 404 is NOT_FOUND.
    grpc.ready().await.unwrap();
    let nowhere = grpc
        .unary(
            Request::new(Bytes::new()),
            PathAndQuery::from_static("/other.Service/Call"),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::NotFound);
    assert_eq!(nowhere.message(), "no Route matched with those values");
}

#[actix_web::test]
async fn a_call_past_its_deadline_ends_deadline_exceeded_and_the_connection_serves_on() {
    let app = gateway().await;
    let mut grpc = client(&app.proxy);
    // The client's own deadline (grpc-timeout), far shorter than the service's read_timeout.
    grpc.ready().await.unwrap();
    let mut call = Request::new(Bytes::from_static(b"3000"));
    call.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let late = grpc.unary(call, method("Slow"), Raw).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ended at the client's deadline, not the upstream's answer: {:?}",
        started.elapsed()
    );
    // A call within its deadline on the same connection.
    let mut call = Request::new(Bytes::from_static(b"10"));
    call.set_timeout(Duration::from_secs(5));
    grpc.ready().await.unwrap();
    let answer = grpc.unary(call, method("Slow"), Raw).await.unwrap();
    assert_eq!(answer.into_inner(), Bytes::from_static(b"10"));

    // Without a client deadline, the service's timeouts bound the call.
    let (s, b) = app
        .admin_patch(
            "/services/echo",
            json!({"connect_timeout": 300, "read_timeout": 300}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let late = unary(&mut grpc, "Slow", Bytes::from_static(b"3000"))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert_eq!(
        unary(&mut grpc, "Unary", Bytes::from_static(b"ping"))
            .await
            .unwrap(),
        Bytes::from_static(b"ping")
    );
}
