//! gRPC through the gateway: a tonic client and a tonic server (messages as raw bytes, so no
//! protobuf code generation), over h2c (a plain listener with `http2`) and TLS, unary and every
//! kind of streaming, trailers, a 10 MiB message, and an oauth2 refusal as UNAUTHENTICATED.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::helpers::{spawn_with, test_settings, TestApp};

const BIG: usize = 16 * 1024 * 1024;

/// Messages are the bytes themselves.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The test service `test.Echo`: Unary, Fail (an error with a custom trailer), ServerStream
/// (three copies), ClientStream (the concatenation) and Bidi (echo each).
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Unary;
impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(request.into_inner())) })
    }
}

struct Fail;
impl tonic::server::UnaryService<Bytes> for Fail {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let mut status = Status::new(Code::FailedPrecondition, "not today");
            status
                .metadata_mut()
                .insert("x-custom-trailer", MetadataValue::from_static("kept"));
            Err(status)
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<Bytes> for ServerStream {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let message = request.into_inner();
        Box::pin(async move {
            let copies = stream::iter((0..3).map(move |_| Ok(message.clone()))).boxed();
            Ok(Response::new(copies))
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<Bytes> for ClientStream {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let mut all = Vec::new();
            while let Some(message) = incoming.message().await? {
                all.extend_from_slice(&message);
            }
            Ok(Response::new(Bytes::from(all)))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Bytes> for Bidi {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(request.into_inner().boxed())) })
    }
}

impl<B> tower_service::Service<http::Request<B>> for Echo
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw)
                .max_decoding_message_size(BIG)
                .max_encoding_message_size(BIG);
            Ok(match request.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, request).await,
                "/test.Echo/Fail" => grpc.unary(Fail, request).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, request).await,
                "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, request).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi, request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Starts the tonic server on its own thread and runtime; returns its port.
fn spawn_grpc_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(Echo)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    port
}

/// A gRPC client over hyper's HTTP/2 client: h2c for `http://`, TLS trusting the gateway's
/// self-signed certificate for `https://`.
type Client = tonic::client::Grpc<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        tonic::body::Body,
    >,
>;

fn client(origin: &str) -> Client {
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

async fn unary(client: &mut Client, name: &str, message: Bytes) -> Result<Bytes, Status> {
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
    let (s, b) = app
        .admin_post(
            "/services",
            json!({"name": "echo", "url": format!("grpc://127.0.0.1:{port}")}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post(
            "/services/echo/routes",
            json!({"name": "echo", "protocols": ["grpc", "grpcs"], "paths": ["/test.Echo/"], "strip_path": false}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    app
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
