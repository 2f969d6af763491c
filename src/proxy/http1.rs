//! A lean HTTP/1.1 client for the proxy's hot path: plain-`http` upstreams and request bodies the
//! gateway already holds (none, or buffered). The request's own future writes the request and
//! reads the answer on a keep-alive connection owned by this worker thread: no connection task to
//! hand the request to and wake, no pool lock, no second header map for the answer. The proxy
//! bench showed these to be a large share of hyper's client cost per request (issue 7).
//! `https` upstreams and streamed uploads (which need a full-duplex exchange) stay on hyper.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap as ClientHeaders, HeaderName, HeaderValue};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::headers;

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
/// Bodies up to this size are written in the same `send` as the head.
const COALESCE: usize = 16 * 1024;
/// How much room each read of the answer asks for.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be opened: nothing was sent, the request may be tried again.
    Connect(io::Error),
    /// The connection broke or the upstream did not speak HTTP/1.1 properly.
    Upstream(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
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
}

struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

impl Http1Pool {
    /// A pool keeping at most `max_idle` idle connections per origin for `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            idle: RefCell::new(HashMap::default()),
            max_idle,
            idle_timeout,
        })
    }

    /// An idle connection to `key` that is still open, if any.
    fn checkout(&self, key: &str, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let conns = idle.get_mut(key)?;
        while let Some(conn) = conns.pop_back() {
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
        let now = Instant::now();
        while conns
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) > self.idle_timeout)
        {
            conns.pop_front();
        }
        if conns.len() < self.max_idle {
            conns.push_back(IdleConn { stream, since: now });
        }
    }

    /// Sends `request` to `to` and reads the answer's head (and its body when it came along).
    /// A pooled connection the upstream closed before answering is replaced once by a new one
    /// when the request is safe to send again.
    ///
    /// # Errors
    /// [`ExchangeError::Connect`] when no connection could be opened, otherwise
    /// [`ExchangeError::Upstream`].
    pub async fn exchange(
        self: &Rc<Self>,
        to: &Destination<'_>,
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, ExchangeError> {
        let head = request.head;
        if let Some(stream) = self.checkout(to.key, request.at) {
            match self.exchange_on(stream, to, head, request, no_body).await {
                // Unsent, or safe to send twice: once more on a new connection.
                Err(Attempt::Stale { written }) if written.is_some() || idempotent(request) => {}
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
        Box::pin(self.exchange_on_new(to, head, request, no_body)).await
    }

    /// [`Http1Pool::exchange`] on a newly opened connection.
    async fn exchange_on_new(
        self: &Rc<Self>,
        to: &Destination<'_>,
        head: &[u8],
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, ExchangeError> {
        let stream = TcpStream::connect((to.host, to.port))
            .await
            .map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        match self.exchange_on(stream, to, head, request, no_body).await {
            Ok(answer) => Ok(answer),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Stale { .. }) => Err(ExchangeError::Upstream(
                "upstream closed the connection without answering".into(),
            )),
        }
    }

    async fn exchange_on(
        self: &Rc<Self>,
        mut stream: TcpStream,
        to: &Destination<'_>,
        head: &[u8],
        request: &Outgoing<'_>,
        no_body: bool,
    ) -> Result<Answer, Attempt> {
        let written = match request.body {
            Some(body) if !body.is_empty() && body.len() <= COALESCE => {
                let mut all = BytesMut::with_capacity(head.len() + body.len());
                all.extend_from_slice(head);
                all.extend_from_slice(body);
                stream.write_all(&all).await
            }
            Some(body) if !body.is_empty() => match stream.write_all(head).await {
                Ok(()) => stream.write_all(body).await,
                Err(e) => Err(e),
            },
            _ => stream.write_all(head).await,
        };
        if let Err(e) = written {
            return Err(Attempt::Stale { written: Some(e) });
        }
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let parsed = loop {
            match read_more(&mut stream, &mut buf).await {
                Ok(0) if buf.is_empty() => return Err(Attempt::Stale { written: None }),
                Err(e)
                    if buf.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(Attempt::Stale { written: None })
                }
                Ok(0) => {
                    return Err(Attempt::Failed(ExchangeError::Upstream(
                        "upstream closed the connection in the middle of its answer head".into(),
                    )))
                }
                Err(e) => return Err(Attempt::Failed(broken("reading the upstream answer", &e))),
                Ok(_) => {}
            }
            match parse_head(&mut buf, no_body)? {
                Some(head) => break head,
                None if buf.len() > MAX_HEAD => {
                    return Err(Attempt::Failed(ExchangeError::Upstream(
                        "upstream answer head too large".into(),
                    )))
                }
                None => {}
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
            pool: Rc::clone(self),
            key: Arc::clone(to.key),
        };
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

/// How one attempt on one connection ended, when it did not end with an answer.
enum Attempt {
    /// The connection was closed before any of the answer arrived (`written` holds the write
    /// error when the request itself could not be written).
    Stale { written: Option<io::Error> },
    /// Any other failure.
    Failed(ExchangeError),
}

impl From<ExchangeError> for Attempt {
    fn from(e: ExchangeError) -> Self {
        Self::Failed(e)
    }
}

/// Methods that may be sent again when a kept-alive connection closed before answering.
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
    /// Chunked transfer coding, in the given state.
    Chunked(ChunkState),
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
        if (100..200).contains(&status) && status != 101 {
            skipped += consumed;
            continue;
        }
        let mut chunked = false;
        let mut length = None;
        let mut close = response.version != Some(1);
        let mut named: Vec<String> = Vec::new();
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only a final `chunked` coding frames the body (RFC 9112 §6.3).
                chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                });
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match (length, parsed) {
                    (_, None) => {
                        return Ok(Err(ExchangeError::Upstream(
                            "upstream sent an invalid Content-Length".into(),
                        )))
                    }
                    (Some(earlier), Some(n)) if earlier != n => {
                        return Ok(Err(ExchangeError::Upstream(
                            "upstream sent conflicting Content-Length headers".into(),
                        )))
                    }
                    (_, n) => length = n,
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                if h.value.eq_ignore_ascii_case(b"keep-alive") {
                    // The usual value: nothing to collect.
                    close &= response.version != Some(0);
                    continue;
                }
                for token in headers::connection_tokens(std::iter::once(h.value)) {
                    if token == "close" {
                        close = true;
                    } else if token == "keep-alive" && response.version == Some(0) {
                        close = false;
                    }
                    named.push(token);
                }
            }
        }
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
        let framing = if no_body || matches!(status, 204 | 304) {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(ChunkState::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let head = RawHead {
            status,
            length: if chunked { None } else { length },
            framing,
            // Both framings on one answer smell of smuggling: answered, then not reused
            // (RFC 9112 §6.3).
            keep_alive: !close && framing != Framing::UntilClose && !(chunked && length.is_some()),
        };
        return Ok(Ok(Some((head, skipped + consumed))));
    }
}

/// Reads an answer body off its connection and gives the connection back to the pool when the
/// body ended cleanly on a connection that stays open.
struct BodyReader {
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
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

    /// The body is over: the connection is kept only when nothing unexpected follows it.
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.pool.checkin(&self.key, stream);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), io::Error> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection already released",
            ));
        };
        match read_more(stream, &mut self.buf).await? {
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
                    let stream = self.stream.as_mut()?;
                    match read_more(stream, &mut self.buf).await {
                        Ok(0) => {
                            self.stream = None;
                            return None;
                        }
                        Ok(_) => {}
                        Err(e) => return Some(Err(self.fail(e))),
                    }
                }
                Framing::Chunked(state) => match self.step_chunked(state) {
                    Ok(Some(Step::Data(bytes))) => return Some(Ok(bytes)),
                    Ok(Some(Step::Next(next))) => self.framing = Framing::Chunked(next),
                    Ok(Some(Step::End)) => {
                        self.framing = Framing::Length(0);
                    }
                    Ok(None) => {
                        if let Err(e) = self.fill().await {
                            return Some(Err(self.fail(e)));
                        }
                    }
                    Err(e) => return Some(Err(self.fail(e))),
                },
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.stream = None;
        e
    }

    /// Where the buffered line ends (before its CRLF); `None` while it is incomplete, an error
    /// once more than `limit` bytes wait without one.
    fn line_end(&self, limit: usize, too_long: &str) -> Result<Option<usize>, io::Error> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) => Ok(Some(end)),
            None if self.buf.len() > limit => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                too_long.to_string(),
            )),
            None => Ok(None),
        }
    }

    /// One step of the chunked decoder over what is buffered; `None` when it needs more bytes.
    fn step_chunked(&mut self, state: ChunkState) -> Result<Option<Step>, io::Error> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        match state {
            ChunkState::Size => {
                let Some(end) =
                    self.line_end(MAX_CHUNK_LINE, "upstream chunk-size line too long")?
                else {
                    return Ok(None);
                };
                let line = self.buf.split_to(end + 2);
                let size = std::str::from_utf8(&line[..end])
                    .ok()
                    .and_then(|l| l.split(';').next())
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                    .ok_or_else(|| bad("upstream sent an invalid chunk size"))?;
                Ok(Some(if size == 0 {
                    Step::Next(ChunkState::Trailers)
                } else {
                    Step::Next(ChunkState::Data(size))
                }))
            }
            ChunkState::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let rest = left - take as u64;
                self.framing = Framing::Chunked(if rest == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(rest)
                });
                Ok(Some(Step::Data(self.buf.split_to(take).freeze())))
            }
            ChunkState::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(bad("upstream chunk data not followed by CRLF"));
                }
                let _ = self.buf.split_to(2);
                Ok(Some(Step::Next(ChunkState::Size)))
            }
            ChunkState::Trailers => {
                let Some(end) = self.line_end(MAX_HEAD, "upstream trailers too large")? else {
                    return Ok(None);
                };
                let _ = self.buf.split_to(end + 2);
                Ok(Some(if end == 0 {
                    Step::End
                } else {
                    Step::Next(ChunkState::Trailers)
                }))
            }
        }
    }
}

enum Step {
    Data(Bytes),
    Next(ChunkState),
    End,
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
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
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
    fn dechunk(wire: &[u8]) -> Result<Vec<u8>, io::Error> {
        let mut reader = BodyReader {
            stream: None,
            buf: BytesMut::new(),
            framing: Framing::Chunked(ChunkState::Size),
            keep_alive: true,
            pool: Http1Pool::new(1, Duration::from_secs(1)),
            key: Arc::from("k"),
        };
        let (mut body, mut fed) = (Vec::new(), 0);
        loop {
            let Framing::Chunked(state) = reader.framing else {
                return Ok(body);
            };
            match reader.step_chunked(state)? {
                Some(Step::Data(bytes)) => body.extend_from_slice(&bytes),
                Some(Step::Next(next)) => reader.framing = Framing::Chunked(next),
                Some(Step::End) => return Ok(body),
                None if fed < wire.len() => {
                    reader.buf.extend_from_slice(&wire[fed..=fed]);
                    fed += 1;
                }
                None => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body = dechunk(b"5;ext=1\r\nhello\r\nA\r\n world!!!!\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world!!!!");
        assert!(dechunk(b"zz\r\nhello\r\n0\r\n\r\n").is_err());
        assert!(dechunk(b"5\r\nhelloXX0\r\n\r\n").is_err());
        assert!(dechunk(b"5\r\nhel").is_err(), "cut short");
        assert!(
            dechunk(&[b'1'; MAX_CHUNK_LINE + 2]).is_err(),
            "endless size line"
        );
    }

    #[test]
    fn bad_lengths_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(parse_head(&mut buf, false).is_err(), "{raw}");
        }
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
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
