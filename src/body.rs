//! The body of every answer the proxy listeners write: nothing, bytes the gateway holds (a
//! plugin's JSON, a small upstream answer read with its head), or an upstream body still arriving.
//! One concrete type instead of a boxed trait object: the common answers cost no allocation for
//! their body, and hyper writes a known length as `Content-Length`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::LocalBoxStream;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};

/// Why a streamed body stopped early (the connection to the client is then closed: its head is
/// already written).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An answer's body as the proxy listeners write it.
pub enum AnswerBody {
    /// No body (`Content-Length: 0` where the status allows one).
    Empty,
    /// Every byte, held; taken on the first poll.
    Full(Option<Bytes>),
    /// Chunks still arriving, with the length the upstream declared (written as
    /// `Content-Length`; chunked otherwise).
    Stream {
        /// The chunks.
        chunks: LocalBoxStream<'static, Result<Bytes, BodyError>>,
        /// Bytes still expected, when declared.
        length: Option<u64>,
    },
    /// An upstream HTTP/2 body passed on frame by frame, trailers included (gRPC's
    /// `grpc-status` comes in them).
    Frames(hyper::body::Incoming),
    /// Another body, counted as it is written, with what to do once it is done.
    Watched(Box<Watched>),
}

/// What runs once an answer's body is done: written to its end, or dropped because the client
/// went away or the upstream broke off. The proxy's log phase hangs here.
pub trait Finish {
    /// Called once, with the body bytes written and whether the body reached its end.
    fn finish(self: Box<Self>, body_bytes: u64, complete: bool);
}

/// A body being counted (see [`AnswerBody::watch`]).
pub struct Watched {
    inner: AnswerBody,
    written: u64,
    complete: bool,
    then: Option<Box<dyn Finish>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            then.finish(self.written, self.complete);
        }
    }
}

impl AnswerBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// This body, counted as it is written; `then` runs once it is done (at its end, or when
    /// hyper drops it because the connection closed).
    pub fn watch(self, then: Box<dyn Finish>) -> Self {
        let complete = self.is_end_stream();
        Self::Watched(Box::new(Watched {
            inner: self,
            written: 0,
            complete,
            then: Some(then),
        }))
    }

    /// A body read as the client takes it.
    pub fn stream(
        chunks: impl Stream<Item = Result<Bytes, BodyError>> + 'static,
        length: Option<u64>,
    ) -> Self {
        Self::Stream {
            chunks: Box::pin(chunks),
            length,
        }
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream { chunks, length } => match chunks.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(left) = length {
                        *left = left.saturating_sub(chunk.len() as u64);
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Self::Frames(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
            Self::Watched(watched) => {
                let polled = Pin::new(&mut watched.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            watched.written += data.len() as u64;
                        }
                    }
                    Poll::Ready(None) => watched.complete = true,
                    Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty | Self::Full(None) => true,
            Self::Full(Some(bytes)) => bytes.is_empty(),
            Self::Stream { length, .. } => *length == Some(0),
            Self::Frames(incoming) => incoming.is_end_stream(),
            Self::Watched(watched) => watched.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty | Self::Full(None) => SizeHint::with_exact(0),
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Stream {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            Self::Stream { length: None, .. } => SizeHint::default(),
            Self::Frames(incoming) => incoming.size_hint(),
            Self::Watched(watched) => watched.inner.size_hint(),
        }
    }
}

impl From<Bytes> for AnswerBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl From<String> for AnswerBody {
    fn from(text: String) -> Self {
        Self::full(text)
    }
}

impl From<&'static str> for AnswerBody {
    fn from(text: &'static str) -> Self {
        Self::full(Bytes::from_static(text.as_bytes()))
    }
}
