//! A lean HTTP/1.1 client for the proxy's hot path: plain-`http` upstreams and request bodies the
//! gateway already holds (none, or buffered). The request's own future writes the request and
//! reads the answer on a keep-alive connection owned by this worker thread: no connection task to
//! hand the request to and wake, no pool lock, no second header map for the answer. The proxy
//! bench shows these to be a large share of hyper's client cost per request.
//! `https` upstreams and streamed uploads (which need a full-duplex exchange) stay on hyper.
//!
//! Answers are framed as RFC 9112 §6 says, so that no upstream can make the gateway read one
//! answer's bytes as the start of the next: a `Transfer-Encoding` wins over `Content-Length`
//! (and the connection is then not reused), one not ending in `chunked` runs until close;
//! lengths and chunk sizes are plain digits that must not overflow; two different lengths, an
//! unasked-for `101` or a head over 64 KiB are refused (a `502`), as is a malformed start of a
//! chunked body that came with the head; chunk extensions and trailers are bounded. The
//! service's connect, write and read timeouts each bound their own wait. The parser is checked
//! against a separate model of the RFC by the property tests in `http1/differential.rs`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::header::{HeaderMap as ClientHeaders, HeaderName, HeaderValue};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::headers;
use super::timers::{within, Deadline};
use crate::clock::instant_coarse;

/// Headers that frame the answer on this connection: read here, never handed on.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "connection"];

/// Header slots tried first: enough for nearly every answer, and cheap to zero per request.
const FEW_HEADERS: usize = 32;
/// Most header lines an upstream answer may carry.
const MAX_HEADERS: usize = 128;
/// Largest upstream answer head (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) of a chunked answer.
const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of chunk extensions (read and dropped) over one chunked answer.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// Most trailer lines (read and dropped) after a chunked answer.
const MAX_TRAILER_LINES: usize = 64;
/// Most bytes of trailer lines after a chunked answer.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Bodies up to this size are written in the same `send` as the head.
const COALESCE: usize = 16 * 1024;
/// How much room each read of the answer asks for.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be opened: nothing was sent, the request may be tried again.
    Connect(io::Error),
    /// The service's connect, write or read timeout expired (what was being waited for).
    Timeout(&'static str),
    /// The connection broke or the upstream did not speak HTTP/1.1 properly.
    Upstream(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Timeout(what) => write!(f, "timed out {what}"),
            Self::Upstream(detail) => f.write_str(detail),
        }
    }
}

fn broken(what: &str, e: &io::Error) -> ExchangeError {
    ExchangeError::Upstream(format!("{what}: {e}"))
}

/// Where a request goes: the pool key and the address to connect to.
pub struct Destination<'a> {
    /// Pool key (the service's `http://host:port`, shared with the snapshot: no copy per request).
    pub key: &'a Arc<str>,
    /// Host name or address to connect to.
    pub host: &'a str,
    /// Port to connect to.
    pub port: u16,
}

/// What to send: the request head ([`start_head`], the headers, [`end_head`]) and a body the
/// gateway holds in full.
pub struct Outgoing<'a> {
    /// Request method (whether a retry is safe depends on it).
    pub method: &'a str,
    /// The complete request head.
    pub head: &'a [u8],
    /// Request body; `None` sends none.
    pub body: Option<&'a Bytes>,
    /// When the gateway started sending: the pool's clock for judging idle connections, so
    /// the exchange reads the clock once more (at check-in), not twice.
    pub at: Instant,
    /// The service's timeouts.
    pub timeouts: Timeouts,
}

/// A service's `connect_timeout`, `write_timeout` and `read_timeout`, each applied on its own as
/// Kong applies them: to opening the connection, to the wait between two successive writes, and
/// to the wait between two successive reads (of the head and of the body alike).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest wait for a connection to open.
    pub connect: Duration,
    /// Longest wait between two writes of the request.
    pub write: Duration,
    /// Longest wait between two reads of the answer.
    pub read: Duration,
}

/// An upstream answer: status, end-to-end headers (the framing ones are consumed here), the
/// declared length and the body.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers to hand on to the client: hop-by-hop, `Connection`-named and `Content-Length`
    /// are left out.
    pub headers: ClientHeaders,
    /// `Content-Length` of the answer, when it declared one.
    pub length: Option<u64>,
    /// The body.
    pub body: AnswerBody,
}

/// An answer body: complete already (the usual small answer, read with its head) or still
/// arriving.
pub enum AnswerBody {
    /// Every byte of the body.
    Complete(Bytes),
    /// The rest is read as the client takes it.
    Streaming(BodyStream),
}

/// Keep-alive connections of one worker thread, per upstream origin.
pub struct Http1Pool {
    /// Per origin, oldest first: reuse takes the newest, pruning drops from the front.
    // foldhash: two lookups per request by an origin the admin configured; SipHash's
    // flood resistance buys nothing here and costs more than the rest of the lookup.
    idle: RefCell<HashMap<Arc<str>, VecDeque<IdleConn>, foldhash::fast::RandomState>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// `portcullis_upstream_idle_connections`, when the pool is counted.
    gauge: Option<crate::metrics::Gauge>,
}

struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

impl Drop for Http1Pool {
    fn drop(&mut self) {
        let held: usize = self.idle.get_mut().values().map(VecDeque::len).sum();
        self.count(-i64::try_from(held).unwrap_or(i64::MAX));
    }
}

impl Http1Pool {
    /// A pool keeping at most `max_idle` idle connections per origin for `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            idle: RefCell::new(HashMap::default()),
            max_idle,
            idle_timeout,
            gauge: None,
        })
    }

    /// [`Http1Pool::new`], its idle connections counted in `gauge` (shared by every worker).
    pub fn counted(
        max_idle: usize,
        idle_timeout: Duration,
        gauge: crate::metrics::Gauge,
    ) -> Rc<Self> {
        Rc::new(Self {
            idle: RefCell::new(HashMap::default()),
            max_idle,
            idle_timeout,
            gauge: Some(gauge),
        })
    }

    /// Adds `n` (negative: removes) to the idle count.
    fn count(&self, n: i64) {
        if let Some(gauge) = &self.gauge {
            gauge.add(n);
        }
    }

    /// An idle connection to `key` that is still open, if any.
    fn checkout(&self, key: &str, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let conns = idle.get_mut(key)?;
        while let Some(conn) = conns.pop_back() {
            self.count(-1);
            if now.saturating_duration_since(conn.since) > self.idle_timeout {
                continue;
            }
            // The event loop marks a socket readable when the upstream closes it; an idle
            // connection with nothing to read costs no system call to check.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn.stream),
                // Closed, failed, or bytes nobody asked for: not reusable.
                _ => continue,
            }
        }
        None
    }

    /// Keeps `stream` for the next request to `key`, unless the pool for it is full. Connections
    /// idle past the timeout are closed here, so that the ones steady traffic never reaches
    /// (reuse takes the newest) do not linger.
    fn checkin(&self, key: &Arc<str>, stream: TcpStream) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let conns = match idle.get_mut(&**key) {
            Some(conns) => conns,
            None => idle.entry(Arc::clone(key)).or_default(),
        };
        // Idle times are judged in seconds: the coarse clock is precise enough.
        let now = instant_coarse();
        while conns
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) > self.idle_timeout)
        {
            conns.pop_front();
            self.count(-1);
        }
        if conns.len() < self.max_idle {
            conns.push_back(IdleConn { stream, since: now });
            self.count(1);
        }
    }

    /// Sends `request` to `to` and reads the answer's head (and its body when it came along).
    /// A pooled connection the upstream closed before answering is replaced once by a new one
    /// when the request is safe to send again: none of it was written, or its method is
    /// idempotent.
    ///
    /// # Errors
    /// [`ExchangeError::Connect`] when no connection could be opened, [`ExchangeError::Timeout`]
    /// when a timeout expired, otherwise [`ExchangeError::Upstream`].
    pub async fn exchange(
        self: &Rc<Self>,
        to: &Destination<'_>,
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, ExchangeError> {
        if let Some(stream) = self.checkout(to.key, request.at) {
            match self
                .exchange_on(stream, to, request, request.at, no_body)
                .await
            {
                Err(Attempt::Stale { sent_any }) if !sent_any || idempotent(request) => {}
                Err(Attempt::Stale { .. }) => {
                    return Err(ExchangeError::Upstream(
                        "upstream closed a kept-alive connection without answering".into(),
                    ))
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(answer) => return Ok(answer),
            }
        }
        // A new connection is the rare case: its future is boxed so that it does not make every
        // request's future (copied into actix's box per request) twice as large.
        Box::pin(self.exchange_on_new(to, request, no_body)).await
    }

    /// [`Http1Pool::exchange`] on a newly opened connection.
    async fn exchange_on_new(
        self: &Rc<Self>,
        to: &Destination<'_>,
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, ExchangeError> {
        let connect = TcpStream::connect((to.host, to.port));
        let stream = tokio::time::timeout(request.timeouts.connect, connect)
            .await
            .map_err(|_| ExchangeError::Timeout("connecting to the upstream"))?
            .map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let opened = Instant::now();
        match self.exchange_on(stream, to, request, opened, no_body).await {
            Ok(answer) => Ok(answer),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Stale { .. }) => Err(ExchangeError::Upstream(
                "upstream closed the connection without answering".into(),
            )),
        }
    }

    /// Writes the request on `stream` and reads the answer's head; `ready` is when the
    /// connection was ready to write (the write and first read timeouts count from it).
    async fn exchange_on(
        self: &Rc<Self>,
        mut stream: TcpStream,
        to: &Destination<'_>,
        request: &Outgoing<'_>,
        ready: Instant,
        no_body: bool,
    ) -> Result<Answer, Attempt> {
        let timeouts = request.timeouts;
        let mut writer = Writer {
            stream: &mut stream,
            timeout: timeouts.write,
            deadline: ready + timeouts.write,
            sent_any: false,
            waited: false,
        };
        let head = request.head;
        match request.body {
            Some(body) if !body.is_empty() && body.len() <= COALESCE => {
                let mut all = BytesMut::with_capacity(head.len() + body.len());
                all.extend_from_slice(head);
                all.extend_from_slice(body);
                writer.write_all(&all).await?;
            }
            Some(body) if !body.is_empty() => {
                writer.write_all(head).await?;
                writer.write_all(body).await?;
            }
            _ => writer.write_all(head).await?,
        }
        // The first read's wait counts from the last write; a write that did not wait took no
        // time worth a clock read.
        let mut read_from = if writer.waited { Instant::now() } else { ready };
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let parsed = loop {
            let deadline = Deadline::after(read_from, timeouts.read);
            match within(deadline, read_more(&mut stream, &mut buf)).await {
                Err(_) => {
                    return Err(Attempt::Failed(ExchangeError::Timeout(
                        "reading the upstream answer head",
                    )))
                }
                Ok(Ok(0)) if buf.is_empty() => return Err(Attempt::Stale { sent_any: true }),
                Ok(Err(e))
                    if buf.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(Attempt::Stale { sent_any: true })
                }
                Ok(Ok(0)) => {
                    return Err(Attempt::Failed(ExchangeError::Upstream(
                        "upstream closed the connection in the middle of its answer head".into(),
                    )))
                }
                Ok(Err(e)) => {
                    return Err(Attempt::Failed(broken("reading the upstream answer", &e)))
                }
                Ok(Ok(_)) => {}
            }
            match parse_head(&mut buf, no_body)? {
                Some(head) => break head,
                None if buf.len() > MAX_HEAD => {
                    return Err(Attempt::Failed(ExchangeError::Upstream(
                        "upstream answer head too large".into(),
                    )))
                }
                None => read_from = Instant::now(),
            }
        };
        let Head {
            status,
            headers,
            length,
            framing,
            keep_alive,
        } = parsed;
        let mut reader = BodyReader {
            stream: Some(stream),
            buf,
            framing,
            keep_alive,
            read_timeout: timeouts.read,
            pool: Rc::clone(self),
            key: Arc::clone(to.key),
        };
        if let Err(why) = reader.check_buffered() {
            return Err(Attempt::Failed(ExchangeError::Upstream(why.into())));
        }
        let body = match reader.complete_from_buffer() {
            Some(bytes) => AnswerBody::Complete(bytes),
            None => AnswerBody::Streaming(BodyStream::new(futures_util::stream::unfold(
                reader,
                |mut reader| async move { reader.next_chunk().await.map(|c| (c, reader)) },
            ))),
        };
        Ok(Answer {
            status,
            headers,
            length,
            body,
        })
    }
}

/// Writes a request with the service's `write_timeout` between two successive writes,
/// remembering whether any byte left (a request partly sent is re-sent only when idempotent).
struct Writer<'s> {
    stream: &'s mut TcpStream,
    timeout: Duration,
    deadline: Instant,
    sent_any: bool,
    /// Whether a write had to wait (the clock was read again).
    waited: bool,
}

impl Writer<'_> {
    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Attempt> {
        while !bytes.is_empty() {
            let write = tokio::time::timeout_at(self.deadline.into(), self.stream.write(bytes));
            match write.await {
                Err(_) => {
                    return Err(Attempt::Failed(ExchangeError::Timeout(
                        "writing the request upstream",
                    )))
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(Attempt::Stale {
                        sent_any: self.sent_any,
                    })
                }
                Ok(Ok(n)) => {
                    self.sent_any = true;
                    bytes = &bytes[n..];
                    if !bytes.is_empty() {
                        self.waited = true;
                        self.deadline = Instant::now() + self.timeout;
                    }
                }
            }
        }
        Ok(())
    }
}

/// How one attempt on one connection ended, when it did not end with an answer.
enum Attempt {
    /// The connection was closed before any of the answer arrived; `sent_any` says whether any
    /// byte of the request had left.
    Stale { sent_any: bool },
    /// Any other failure.
    Failed(ExchangeError),
}

impl From<ExchangeError> for Attempt {
    fn from(e: ExchangeError) -> Self {
        Self::Failed(e)
    }
}

/// Methods that may be sent again when a kept-alive connection closed after (part of) the
/// request was written.
fn idempotent(request: &Outgoing<'_>) -> bool {
    matches!(
        request.method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

/// A request head's request line; the headers follow, then [`end_head`].
pub fn start_head(method: &str, target: &str, headers: usize) -> BytesMut {
    let mut head = BytesMut::with_capacity(256 + headers * 48);
    head.put_slice(method.as_bytes());
    head.put_u8(b' ');
    head.put_slice(target.as_bytes());
    head.put_slice(b" HTTP/1.1\r\n");
    head
}

/// Ends a request head: `Content-Length: 0` for a body-less POST, PUT or PATCH that declares no
/// length (as hyper did: some servers insist on a length for those methods), then the empty line.
pub fn end_head(head: &mut BytesMut, method: &str, declares_length: bool) {
    if !declares_length && matches!(method, "POST" | "PUT" | "PATCH") {
        head.put_slice(b"content-length: 0\r\n");
    }
    head.put_slice(b"\r\n");
}

/// How the answer's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding, decoded by this state.
    Chunked(Dechunker),
    /// Everything until the upstream closes the connection.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// The chunked decoder (RFC 9112 §7.1): where it is, and what is left of the bounds on chunk
/// extensions and trailers, which the gateway reads only to drop them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dechunker {
    state: ChunkState,
    extension_bytes: usize,
    trailer_lines: usize,
    trailer_bytes: usize,
}

/// What one step of the chunked decoder consumed.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// Body bytes.
    Data,
    /// Framing: a size line, a CRLF, a trailer line.
    Framing,
    /// The last chunk and its trailers: the body is over.
    End,
}

impl Dechunker {
    fn new() -> Self {
        Self {
            state: ChunkState::Size,
            extension_bytes: 0,
            trailer_lines: 0,
            trailer_bytes: 0,
        }
    }

    /// One step over the front of `buf`: how many bytes it consumed and what they were;
    /// `None` when it needs more bytes.
    ///
    /// # Errors
    /// Why the body is malformed or over a bound.
    fn step(&mut self, buf: &[u8]) -> Result<Option<(usize, Piece)>, &'static str> {
        match self.state {
            ChunkState::Size => {
                let Some(end) = line_end(buf, MAX_CHUNK_LINE, "upstream chunk-size line too long")?
                else {
                    return Ok(None);
                };
                let (size, extensions) = chunk_size(&buf[..end])?;
                self.extension_bytes += extensions;
                if self.extension_bytes > MAX_CHUNK_EXTENSIONS {
                    return Err("upstream chunk extensions too large");
                }
                self.state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
                Ok(Some((end + 2, Piece::Framing)))
            }
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - take as u64;
                self.state = if rest == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(rest)
                };
                Ok(Some((take, Piece::Data)))
            }
            ChunkState::DataEnd => match buf.get(..2) {
                None if buf.first().is_none_or(|b| *b == b'\r') => Ok(None),
                Some(b"\r\n") => {
                    self.state = ChunkState::Size;
                    Ok(Some((2, Piece::Framing)))
                }
                _ => Err("upstream chunk data not followed by CRLF"),
            },
            ChunkState::Trailers => {
                // The empty line that ends the trailers is not counted against them.
                let room = MAX_TRAILER_BYTES - self.trailer_bytes + 2;
                let Some(end) = line_end(buf, room, "upstream trailers too large")? else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some((2, Piece::End)));
                }
                if buf[..end].iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                    return Err("upstream sent a malformed trailer line");
                }
                self.trailer_lines += 1;
                self.trailer_bytes += end + 2;
                if self.trailer_lines > MAX_TRAILER_LINES || self.trailer_bytes > MAX_TRAILER_BYTES
                {
                    return Err("upstream trailers too large");
                }
                Ok(Some((end + 2, Piece::Framing)))
            }
        }
    }
}

/// Where the line at the front of `buf` ends (before its CRLF); `None` while it is incomplete,
/// an error once more than `limit` bytes wait without one.
fn line_end(
    buf: &[u8],
    limit: usize,
    too_long: &'static str,
) -> Result<Option<usize>, &'static str> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end + 2 > limit => Err(too_long),
        Some(end) => Ok(Some(end)),
        None if buf.len() >= limit => Err(too_long),
        None => Ok(None),
    }
}

/// A chunk-size line (without its CRLF): hex digits only, no sign, no overflow, then optional
/// whitespace and `;`-led extensions free of control characters. The size, and the extensions'
/// length.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("upstream sent an invalid chunk size");
    }
    let size = line[..digits]
        .iter()
        .try_fold(0u64, |n, d| {
            // Only hex digits were taken.
            let d = char::from(*d).to_digit(16).map(u64::from)?;
            n.checked_mul(16)?.checked_add(d)
        })
        .ok_or("upstream chunk size overflows")?;
    let rest = &line[digits..];
    let extensions = &rest[rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len())..];
    match extensions.first() {
        None => Ok((size, 0)),
        Some(b';')
            if !extensions
                .iter()
                .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) =>
        {
            Ok((size, extensions.len()))
        }
        Some(b';') => Err("upstream sent a malformed chunk extension"),
        Some(_) => Err("upstream sent an invalid chunk size"),
    }
}

struct Head {
    status: u16,
    headers: ClientHeaders,
    length: Option<u64>,
    framing: Framing,
    keep_alive: bool,
}

/// A parsed head whose header lines (in [`Lines`]) still point into the read buffer: once the
/// head's bytes are split off and frozen, each value shares them instead of being copied into its
/// own allocation.
struct RawHead {
    status: u16,
    length: Option<u64>,
    framing: Framing,
    keep_alive: bool,
}

/// The header lines of a head being parsed: each name with its value's place in the buffer.
/// Filled in place (it is large: moving it through the parser's results cost more than it saved).
type Lines = SmallVec<[(HeaderName, Range<usize>); 12]>;

impl RawHead {
    fn into_head(self, lines: &mut Lines, bytes: &Bytes) -> Head {
        let mut headers = ClientHeaders::with_capacity(lines.len() + 4);
        for (name, range) in lines.drain(..) {
            // A value httparse took but `HeaderValue` refuses is left out.
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(range)) {
                headers.append(name, value);
            }
        }
        Head {
            status: self.status,
            headers,
            length: self.length,
            framing: self.framing,
            keep_alive: self.keep_alive,
        }
    }
}

/// Parses one answer head off the front of `buf` (skipping interim `1xx` answers); `None` until
/// the head is complete.
fn parse_head(buf: &mut BytesMut, no_body: bool) -> Result<Option<Head>, ExchangeError> {
    // Uninitialised slots: zeroing them was a kilobyte of stores per answer.
    let mut few = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; FEW_HEADERS];
    let mut lines = Lines::new();
    let parsed = match parse_head_with(buf, no_body, &mut few, &mut lines) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            parse_head_with(buf, no_body, &mut many, &mut lines)
        }
        other => other,
    }
    .map_err(|e| {
        ExchangeError::Upstream(format!("upstream answered with a malformed head: {e}"))
    })??;
    Ok(parsed.map(|(raw, consumed)| {
        // One allocation makes the buffer shared; the values then point into the head's bytes.
        let bytes = buf.split_to(consumed).freeze();
        raw.into_head(&mut lines, &bytes)
    }))
}

/// [`parse_head`] with `slots` for the header lines; the outer error is httparse's, the inner
/// one a framing header the gateway cannot use.
type Parsed = Result<Option<(RawHead, usize)>, ExchangeError>;

fn parse_head_with<'b>(
    buf: &'b [u8],
    no_body: bool,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    lines: &mut Lines,
) -> Result<Parsed, httparse::Error> {
    let mut skipped = 0;
    loop {
        lines.clear();
        let mut response = httparse::Response::new(&mut []);
        let consumed = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &buf[skipped..],
            &mut *slots,
        )? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return Ok(Ok(None)),
        };
        let status = response.code.unwrap_or(502);
        if status == 101 {
            // The lean client never asks for an upgrade (`Upgrade` is hop-by-hop, not forwarded).
            return Ok(Err(ExchangeError::Upstream(
                "upstream switched protocols though no upgrade was asked for".into(),
            )));
        }
        if (100..200).contains(&status) {
            skipped += consumed;
            continue;
        }
        if skipped + consumed > MAX_HEAD {
            return Ok(Err(ExchangeError::Upstream(
                "upstream answer head too large".into(),
            )));
        }
        let http11 = response.version == Some(1);
        let mut framing = FramingHeaders::default();
        let mut named: Vec<String> = Vec::new();
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                framing.connection(h.value, &mut named);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                framing.transfer_encoding(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                framing.content_length(h.value);
            }
        }
        let (framing, length, keep_alive) = match framing.decide(http11, no_body, status) {
            Ok(decided) => decided,
            Err(why) => return Ok(Err(ExchangeError::Upstream(why.into()))),
        };
        for h in response.headers.iter() {
            // Framing headers were read above; they are not converted only to be dropped.
            if FRAMING.iter().any(|f| h.name.eq_ignore_ascii_case(f)) {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                continue;
            };
            if !headers::passes_to_client(name.as_str(), &named) {
                continue;
            }
            // httparse hands out slices of `buf`: the value's place in it.
            let start = (h.value.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
            let range = start..start.saturating_add(h.value.len());
            if range.end <= buf.len() {
                lines.push((name, range));
            }
        }
        let head = RawHead {
            status,
            length,
            framing,
            keep_alive,
        };
        return Ok(Ok(Some((head, skipped + consumed))));
    }
}

/// What an answer's `Content-Length` lines said.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum DeclaredLength {
    /// No `Content-Length`.
    #[default]
    Absent,
    /// One length, however many times it was repeated.
    Valid(u64),
    /// A value that is not a decimal length, overflows, or differs from another one.
    Invalid,
}

/// The framing headers of one answer head, gathered line by line and judged once
/// (RFC 9112 §6.1 and §6.3, RFC 9110 §8.6).
#[derive(Default)]
struct FramingHeaders {
    /// `Some(final coding is chunked)` once a `Transfer-Encoding` line was seen.
    transfer_chunked: Option<bool>,
    length: DeclaredLength,
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    fn connection(&mut self, value: &[u8], named: &mut Vec<String>) {
        if value.eq_ignore_ascii_case(b"keep-alive") {
            // The usual value: nothing to collect.
            self.keep_alive = true;
            return;
        }
        for token in headers::connection_tokens(std::iter::once(value)) {
            match token.as_str() {
                "close" => self.close = true,
                "keep-alive" => self.keep_alive = true,
                _ => {}
            }
            named.push(token);
        }
    }

    /// The codings of all lines form one list: the last non-empty element is the final coding.
    fn transfer_encoding(&mut self, value: &[u8]) {
        let last = value
            .rsplit(|b| *b == b',')
            .map(trim_ows)
            .find(|coding| !coding.is_empty());
        match last {
            Some(coding) => self.transfer_chunked = Some(coding.eq_ignore_ascii_case(b"chunked")),
            None => {
                self.transfer_chunked.get_or_insert(false);
            }
        }
    }

    /// Each line may list the length several times: every element must be the same length.
    fn content_length(&mut self, value: &[u8]) {
        if self.length == DeclaredLength::Invalid {
            return;
        }
        for element in value.split(|b| *b == b',') {
            self.length = match (self.length, decimal_length(trim_ows(element))) {
                (_, None) => DeclaredLength::Invalid,
                (DeclaredLength::Valid(earlier), Some(n)) if earlier != n => {
                    DeclaredLength::Invalid
                }
                (_, Some(n)) => DeclaredLength::Valid(n),
            };
            if self.length == DeclaredLength::Invalid {
                return;
            }
        }
    }

    /// How the body is delimited, the length to declare to the client, and whether the
    /// connection may carry another request afterwards.
    fn decide(
        &self,
        http11: bool,
        no_body: bool,
        status: u16,
    ) -> Result<(Framing, Option<u64>, bool), &'static str> {
        let persistent = !self.close && (http11 || self.keep_alive);
        let (framing, length, reusable) = match self.transfer_chunked {
            // Transfer-Encoding overrides Content-Length, which is then ignored; both on one
            // answer smell of smuggling, so the connection is not reused. A final coding other
            // than chunked (or any coding on HTTP/1.0) leaves the body running until close.
            Some(chunked) => {
                let chunked = chunked && http11;
                let framing = if chunked {
                    Framing::Chunked(Dechunker::new())
                } else {
                    Framing::UntilClose
                };
                (
                    framing,
                    None,
                    chunked && self.length == DeclaredLength::Absent,
                )
            }
            None => match self.length {
                DeclaredLength::Invalid => {
                    return Err("upstream sent an invalid or conflicting Content-Length")
                }
                DeclaredLength::Valid(n) => (Framing::Length(n), Some(n), true),
                DeclaredLength::Absent => (Framing::UntilClose, None, false),
            },
        };
        if no_body || matches!(status, 204 | 304) {
            // Nothing to delimit: only a suspicious Transfer-Encoding stops reuse.
            let reusable = reusable || self.transfer_chunked.is_none();
            return Ok((Framing::Length(0), length, persistent && reusable));
        }
        Ok((framing, length, persistent && reusable))
    }
}

/// `value` without the optional whitespace (spaces and tabs) around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// A `Content-Length` element: ASCII digits only (no sign, no inner space), no overflow.
fn decimal_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let d = d.is_ascii_digit().then(|| u64::from(d - b'0'))?;
        n.checked_mul(10)?.checked_add(d)
    })
}

/// Reads an answer body off its connection and gives the connection back to the pool when the
/// body ended cleanly on a connection that stays open.
struct BodyReader {
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    /// The service's `read_timeout`: the longest wait between two reads.
    read_timeout: Duration,
    pool: Rc<Http1Pool>,
    key: Arc<str>,
}

impl BodyReader {
    /// The whole body when it is already buffered with a `Content-Length` (or is empty); the
    /// connection then goes back to the pool at once.
    fn complete_from_buffer(&mut self) -> Option<Bytes> {
        let Framing::Length(n) = self.framing else {
            return None;
        };
        let n = usize::try_from(n).ok()?;
        if self.buf.len() < n {
            return None;
        }
        // Usually the body is all that is left: the buffer itself becomes the body's bytes.
        let body = if self.buf.len() == n {
            std::mem::take(&mut self.buf).freeze()
        } else {
            self.buf.split_to(n).freeze()
        };
        self.framing = Framing::Length(0);
        self.finish();
        Some(body)
    }

    /// Checks the chunked framing of what came with the head, so that a malformed start of the
    /// body is still a `502` rather than a broken answer after its head.
    ///
    /// # Errors
    /// Why the body is malformed.
    fn check_buffered(&self) -> Result<(), &'static str> {
        let Framing::Chunked(mut dechunker) = self.framing else {
            return Ok(());
        };
        let mut at = 0;
        while let Some((n, piece)) = dechunker.step(&self.buf[at..])? {
            at += n;
            if piece == Piece::End {
                break;
            }
        }
        Ok(())
    }

    /// The body is over: the connection is kept only when nothing unexpected follows it.
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.pool.checkin(&self.key, stream);
            }
        }
    }

    /// Reads more of the body; `Ok(0)` when the upstream closed the connection.
    async fn read(&mut self) -> Result<usize, io::Error> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(0);
        };
        let deadline = Deadline::after_now(self.read_timeout);
        match within(deadline, read_more(stream, &mut self.buf)).await {
            Ok(read) => read,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream read timed out",
            )),
        }
    }

    async fn fill(&mut self) -> Result<(), io::Error> {
        match self.read().await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed the connection before the end of the body",
            )),
            _ => Ok(()),
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            match self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return None;
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        if let Err(e) = self.fill().await {
                            return Some(Err(self.fail(e)));
                        }
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    self.framing = Framing::Length(left - take as u64);
                    return Some(Ok(self.buf.split_to(take).freeze()));
                }
                Framing::UntilClose => {
                    if !self.buf.is_empty() {
                        return Some(Ok(self.buf.split().freeze()));
                    }
                    match self.read().await {
                        Ok(0) => {
                            self.stream = None;
                            return None;
                        }
                        Ok(_) => {}
                        Err(e) => return Some(Err(self.fail(e))),
                    }
                }
                Framing::Chunked(mut dechunker) => match dechunker.step(&self.buf) {
                    Ok(Some((n, piece))) => {
                        self.framing = Framing::Chunked(dechunker);
                        match piece {
                            Piece::Data => return Some(Ok(self.buf.split_to(n).freeze())),
                            Piece::Framing => self.buf.advance(n),
                            Piece::End => {
                                self.buf.advance(n);
                                self.framing = Framing::Length(0);
                            }
                        }
                    }
                    Ok(None) => {
                        if let Err(e) = self.fill().await {
                            return Some(Err(self.fail(e)));
                        }
                    }
                    Err(why) => {
                        let e = io::Error::new(io::ErrorKind::InvalidData, why);
                        return Some(Err(self.fail(e)));
                    }
                },
            }
        }
    }

    /// The body cannot be finished: the connection is dropped, and the client's (whose answer
    /// head is already on its way) is closed by the server when the body stream fails.
    fn fail(&mut self, e: io::Error) -> io::Error {
        self.stream = None;
        tracing::warn!(
            upstream = %self.key,
            error = %e,
            "upstream answer body broken after its head was sent; closing the client connection"
        );
        e
    }
}

/// The rest of an answer body, read as the client takes it.
pub struct BodyStream(Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>>>>);

impl BodyStream {
    /// Wraps any body stream (hyper's, for the answers it fetches).
    pub fn new(stream: impl Stream<Item = Result<Bytes, io::Error>> + 'static) -> Self {
        Self(Box::pin(stream))
    }
}

impl Stream for BodyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, no_body: bool) -> Head {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, no_body)
            .expect("parses")
            .expect("complete")
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked(Dechunker::new()));
        assert_eq!(h.length, None);
        assert!(!h.keep_alive, "both framings: not reused");
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Length(0));
        let h = head("HTTP/1.1 304 Not Modified\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn interim_answers_are_skipped_and_framing_headers_consumed() {
        let h = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nConnection: x-hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nContent-Length: 0\r\nX-Kept: yes\r\n\r\n",
            false,
        );
        assert_eq!(h.status, 201);
        assert_eq!(h.headers.len(), 1);
        assert_eq!(h.headers.get("x-kept").unwrap(), "yes");
        assert_eq!(h.length, Some(0));
    }

    #[test]
    fn answers_with_many_headers_parse_and_too_many_are_refused() {
        let lines = |n: usize| {
            (0..n)
                .map(|i| format!("X-H{i}: {i}\r\n"))
                .collect::<String>()
        };
        let raw = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n", lines(40));
        assert_eq!(head(&raw, false).headers.len(), 40);
        let raw = format!("HTTP/1.1 200 OK\r\n{}\r\n", lines(MAX_HEADERS + 1));
        let mut buf = BytesMut::from(raw.as_bytes());
        assert!(parse_head(&mut buf, false).is_err());
    }

    #[tokio::test]
    async fn the_pool_reuses_open_connections_and_closes_stale_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Http1Pool::new(2, Duration::from_millis(200));
        let key: Arc<str> = Arc::from("k");
        let mut upstream_sides = Vec::new();
        for _ in 0..3 {
            let conn = TcpStream::connect(addr).await.unwrap();
            upstream_sides.push(listener.accept().await.unwrap().0);
            pool.checkin(&key, conn);
        }
        assert_eq!(pool.idle.borrow()[&*key].len(), 2, "at most max_idle kept");
        // The upstream closes the newest idle connection: reuse skips it, takes the other.
        drop(upstream_sides.remove(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout(&key, Instant::now()).is_some());
        assert!(
            pool.idle.borrow()[&*key].is_empty(),
            "the closed one was dropped"
        );
        assert!(pool.checkout(&key, Instant::now()).is_none());
        // Connections idle past the timeout are closed when the next one comes back.
        for _ in 0..2 {
            let conn = TcpStream::connect(addr).await.unwrap();
            upstream_sides.push(listener.accept().await.unwrap().0);
            pool.checkin(&key, conn);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let conn = TcpStream::connect(addr).await.unwrap();
        pool.checkin(&key, conn);
        assert_eq!(pool.idle.borrow()[&*key].len(), 1, "both older ones pruned");
    }

    /// Decodes `wire` fed one byte at a time: the body, or the decoder's error.
    fn dechunk(wire: &[u8]) -> Result<Vec<u8>, &'static str> {
        let mut dechunker = Dechunker::new();
        let (mut buf, mut body, mut fed) = (Vec::new(), Vec::new(), 0);
        loop {
            match dechunker.step(&buf)? {
                Some((n, piece)) => {
                    if piece == Piece::Data {
                        body.extend_from_slice(&buf[..n]);
                    }
                    buf.drain(..n);
                    if piece == Piece::End {
                        return Ok(body);
                    }
                }
                None if fed < wire.len() => {
                    buf.push(wire[fed]);
                    fed += 1;
                }
                None => return Err("cut short"),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body = dechunk(b"5;ext=1\r\nhello\r\nA\r\n world!!!!\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world!!!!");
        assert_eq!(
            dechunk(b"5 ; a=\"b c\"\r\nhello\r\n0\r\n\r\n").unwrap(),
            b"hello"
        );
        assert_eq!(dechunk(b"005\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
        assert!(dechunk(b"zz\r\nhello\r\n0\r\n\r\n").is_err());
        assert!(dechunk(b"5\r\nhelloXX0\r\n\r\n").is_err());
        assert!(dechunk(b"5\r\nhel").is_err(), "cut short");
        assert!(
            dechunk(&[b'1'; MAX_CHUNK_LINE + 2]).is_err(),
            "endless size line"
        );
    }

    #[test]
    fn chunk_sizes_are_hex_digits_only() {
        for wire in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(dechunk(wire).is_err(), "{}", String::from_utf8_lossy(wire));
        }
        assert_eq!(chunk_size(b"ffffffffffffffff"), Ok((u64::MAX, 0)));
        assert_eq!(chunk_size(b"0000000000000000001"), Ok((1, 0)));
    }

    #[test]
    fn trailers_and_extensions_are_bounded() {
        let lines = |n: usize| "X-T: 1\r\n".repeat(n);
        let wire = format!("0\r\n{}\r\n", lines(MAX_TRAILER_LINES));
        assert!(dechunk(wire.as_bytes()).is_ok());
        let wire = format!("0\r\n{}\r\n", lines(MAX_TRAILER_LINES + 1));
        assert_eq!(dechunk(wire.as_bytes()), Err("upstream trailers too large"));
        let wire = format!("0\r\nX-T: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(dechunk(wire.as_bytes()), Err("upstream trailers too large"));
        assert!(dechunk(b"0\r\nX-T: 1\nX-U: 2\r\n\r\n").is_err(), "bare LF");
        // Each size line is short, but their extensions add up.
        let chunk = format!("1;{}\r\na\r\n", "e".repeat(1000));
        let wire = format!("{}0\r\n\r\n", chunk.repeat(17));
        assert_eq!(
            dechunk(wire.as_bytes()),
            Err("upstream chunk extensions too large")
        );
        let wire = format!("{}0\r\n\r\n", chunk.repeat(16));
        assert_eq!(dechunk(wire.as_bytes()).unwrap().len(), 16);
    }

    #[test]
    fn bad_lengths_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(parse_head(&mut buf, false).is_err(), "{raw}");
        }
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
    }

    #[test]
    fn repeated_identical_lengths_are_one_length() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\n",
        ] {
            let h = head(raw, false);
            assert_eq!(
                (h.framing, h.length, h.keep_alive),
                (Framing::Length(5), Some(5), true)
            );
        }
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Length(u64::MAX));
    }

    #[test]
    fn transfer_codings_not_ending_in_chunked_run_until_close() {
        for raw in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let h = head(raw, false);
            assert_eq!(
                (h.framing, h.length, h.keep_alive),
                (Framing::UntilClose, None, false),
                "{raw}"
            );
        }
        // The Content-Length a Transfer-Encoding overrides is ignored, even when malformed.
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: +x\r\nTransfer-Encoding: gzip, Chunked \r\n\r\n",
            false,
        );
        assert_eq!(
            (h.framing, h.keep_alive),
            (Framing::Chunked(Dechunker::new()), false)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(
            (h.framing, h.keep_alive),
            (Framing::Chunked(Dechunker::new()), true)
        );
        let h = head(
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), false));
    }

    #[test]
    fn a_close_token_wins_over_keep_alive() {
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn heads_over_the_limit_are_refused_even_when_complete() {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let mut buf = BytesMut::from(raw.as_bytes());
        assert!(parse_head(&mut buf, false).is_err());
    }

    /// An upstream on port 0 whose every connection is served by `serve`, and how many
    /// connections it accepted.
    async fn upstream<F, Fut>(serve: F) -> (u16, Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(conn, n));
            }
        });
        (port, accepted)
    }

    /// Reads one request head off `conn`; false when the connection closed first.
    async fn read_request(conn: &mut TcpStream) -> bool {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => seen.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    const SECOND: Duration = Duration::from_secs(1);

    struct Call {
        pool: Rc<Http1Pool>,
        key: Arc<str>,
        port: u16,
        timeouts: Timeouts,
    }

    impl Call {
        fn new(port: u16, read: Duration, write: Duration) -> Self {
            Self {
                pool: Http1Pool::new(4, Duration::from_secs(60)),
                key: Arc::from("k"),
                port,
                timeouts: Timeouts {
                    connect: SECOND,
                    write,
                    read,
                },
            }
        }

        async fn send(&self, method: &str, body: Option<&Bytes>) -> Result<Answer, ExchangeError> {
            let head = format!("{method} / HTTP/1.1\r\nhost: up\r\n\r\n");
            let to = Destination {
                key: &self.key,
                host: "127.0.0.1",
                port: self.port,
            };
            let outgoing = Outgoing {
                method,
                head: head.as_bytes(),
                body,
                at: Instant::now(),
                timeouts: self.timeouts,
            };
            self.pool.exchange(&to, &outgoing, false).await
        }
    }

    /// The body of `answer`, or the error its stream ended with.
    async fn body_of(answer: Answer) -> Result<Vec<u8>, io::Error> {
        use futures_util::StreamExt;
        match answer.body {
            AnswerBody::Complete(bytes) => Ok(bytes.to_vec()),
            AnswerBody::Streaming(mut stream) => {
                let mut body = Vec::new();
                while let Some(piece) = stream.next().await {
                    body.extend_from_slice(&piece?);
                }
                Ok(body)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_timeout_bounds_each_read_not_the_whole_answer() {
        // Ten body bytes 400 ms apart: four seconds in all, each wait under the 1 s timeout.
        let (port, _) = upstream(|mut conn, _| async move {
            read_request(&mut conn).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                .await;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = conn.write_all(b"x").await;
            }
        })
        .await;
        let call = Call::new(port, SECOND, SECOND);
        let answer = call.send("GET", None).await.unwrap();
        assert_eq!(body_of(answer).await.unwrap(), b"xxxxxxxxxx");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_and_so_does_a_late_head() {
        let (port, _) = upstream(|mut conn, n| async move {
            read_request(&mut conn).await;
            if n == 0 {
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                    .await;
            } else {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await;
        // A 60 s connect timeout is not added to the 1 s read timeout.
        let mut call = Call::new(port, SECOND, SECOND);
        call.timeouts.connect = Duration::from_secs(60);
        let answer = call.send("GET", None).await.unwrap();
        let e = body_of(answer).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let late = call.send("GET", None).await;
        assert!(matches!(late, Err(ExchangeError::Timeout(_))), "late head");
    }

    #[tokio::test(start_paused = true)]
    async fn write_timeout_bounds_a_request_the_upstream_does_not_read() {
        let (port, _) = upstream(|conn, _| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(conn);
        })
        .await;
        let call = Call::new(port, Duration::from_secs(3600), SECOND);
        let body = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
        let sent = call.send("PUT", Some(&body)).await;
        assert!(matches!(sent, Err(ExchangeError::Timeout(what)) if what.contains("writing")));
    }

    #[tokio::test]
    async fn only_idempotent_requests_are_sent_again_after_a_kept_alive_connection_closed() {
        // The first connection answers once, then reads the next request and closes.
        let (port, accepted) = upstream(|mut conn, _| async move {
            read_request(&mut conn).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            read_request(&mut conn).await;
        })
        .await;
        let call = Call::new(port, SECOND * 5, SECOND * 5);
        let count = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        call.send("GET", None).await.unwrap();
        let post = call.send("POST", None).await;
        assert!(
            matches!(post, Err(ExchangeError::Upstream(_))),
            "POST not re-sent"
        );
        assert_eq!(count(), 1);
        call.send("GET", None).await.unwrap();
        let get = call.send("GET", None).await.unwrap();
        assert_eq!(body_of(get).await.unwrap(), b"ok", "GET re-sent");
        assert_eq!(count(), 3);
    }

    #[tokio::test]
    async fn a_malformed_start_of_body_is_refused_and_a_later_one_breaks_the_stream() {
        let go_on = Arc::new(tokio::sync::Notify::new());
        let resume = Arc::clone(&go_on);
        let (port, _) = upstream(move |mut conn, n| {
            let resume = Arc::clone(&resume);
            async move {
                read_request(&mut conn).await;
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = conn.write_all(head).await;
                if n == 0 {
                    let _ = conn.write_all(b"+5\r\nhello\r\n0\r\n\r\n").await;
                } else {
                    // Once the head was handed on: a chunk size with a sign.
                    resume.notified().await;
                    let _ = conn.write_all(b"5\r\nhello\r\n-5\r\nhello\r\n").await;
                }
            }
        })
        .await;
        let call = Call::new(port, SECOND * 5, SECOND * 5);
        let refused = call.send("GET", None).await;
        assert!(
            matches!(&refused, Err(ExchangeError::Upstream(why)) if why.contains("chunk size")),
            "{:?}",
            refused.err()
        );
        let answer = call.send("GET", None).await.unwrap();
        assert_eq!(answer.status, 200);
        go_on.notify_one();
        let e = body_of(answer).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn heads_end_with_a_length_where_servers_want_one() {
        let head = |method: &str, declares_length: bool| {
            let mut head = start_head(method, "/a?b=1", 1);
            head.put_slice(b"host: up:81\r\n");
            end_head(&mut head, method, declares_length);
            head
        };
        assert_eq!(
            &head("GET", false)[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: up:81\r\n\r\n"
        );
        assert_eq!(
            &head("POST", false)[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: up:81\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(!head("PUT", true).ends_with(b"content-length: 0\r\n\r\n"));
    }
}
