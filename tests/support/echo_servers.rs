//! Real protocol peers the tests and the benches both run as upstreams: a tonic gRPC server
//! (service `test.Echo`, messages as raw bytes, so no protobuf code generation) and a
//! tokio-tungstenite WebSocket server. Each runs on a thread and runtime of its own.
//! Included by path (`#[path]`) from `tests/api/main.rs` and `benches/protocols.rs`.

// Each includer uses a part of them; a peer that cannot start is a failed setup, so it panics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures_util::stream::{self, BoxStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

/// The largest message either side accepts.
pub const BIG: usize = 16 * 1024 * 1024;

/// Messages are the bytes themselves.
#[derive(Clone, Copy, Default)]
pub struct Raw;

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

/// The test service `test.Echo`: Unary, Fail (an error with a custom trailer), Slow (answers
/// after the milliseconds its message names), ServerStream
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

/// Answers after sleeping the number of milliseconds its message spells (ASCII digits).
struct Slow;
impl tonic::server::UnaryService<Bytes> for Slow {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let message = request.into_inner();
        let millis = std::str::from_utf8(&message)
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
            Ok(Response::new(message))
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
                "/test.Echo/Slow" => grpc.unary(Slow, request).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, request).await,
                "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, request).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi, request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Starts the tonic server on its own thread and runtime; returns its port.
pub fn spawn_grpc_upstream() -> u16 {
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
                .serve_with_incoming(
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                        accepted.inspect(|stream| {
                            // Small messages: no Nagle delay against the peer's delayed ACK.
                            let _ = stream.set_nodelay(true);
                        })
                    }),
                )
                .await
                .unwrap();
        });
    });
    port
}

/// What the echo upstream does with each connection.
#[derive(Clone, Copy)]
pub enum Upstream {
    /// Sends every message back.
    Echo,
    /// Answers the first message with "bye" and closes.
    CloseAfterFirst,
}

/// A WebSocket server on its own thread and runtime; returns its `http://` URL.
pub fn spawn_ws_upstream(kind: Upstream) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        match (kind, message) {
                            // Read on: the next read flushes tungstenite's reply to the close.
                            (_, Message::Close(_)) => {}
                            (Upstream::Echo, m @ (Message::Text(_) | Message::Binary(_))) => {
                                let sent = ws.send(m).await;
                                if sent.is_err() {
                                    break;
                                }
                            }
                            (Upstream::CloseAfterFirst, _) => {
                                let _ = ws.send(Message::text("bye")).await;
                                let _ = ws.close(None).await;
                                break;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
    });
    format!("http://{addr}")
}
