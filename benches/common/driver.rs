//! The load driver: `wrk` when it is on PATH, otherwise our own closed-loop driver (hyper 1.x
//! client, N keep-alive connections on one thread like `wrk -t1`, fixed duration, HDR histogram).
//! TLS runs always use our driver (it trusts the bench's own certificate; a request with
//! `Connection: close` makes it reconnect, handshake included), HTTP/2 runs use `h2load`.
//! All report the same [`Measured`] figures.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method};
use hyper_util::rt::TokioIo;

/// One request of a mix.
#[derive(Debug, Clone)]
pub struct Req {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Extra headers (Host is added by the driver).
    pub headers: Vec<(String, String)>,
    /// Body (empty for GET).
    pub body: Bytes,
}

impl Req {
    /// A GET.
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A POST of an `application/x-www-form-urlencoded` body.
    pub fn form(path: &str, pairs: &[(&str, &str)]) -> Self {
        let body = serde_urlencoded::to_string(pairs).unwrap_or_default();
        Self {
            method: Method::POST,
            path: path.into(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: Bytes::from(body),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// How the driver walks through the requests of a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Round robin, for as long as the run lasts.
    Cycle,
    /// Each request once (one-shot credentials such as authorization codes); the run ends when
    /// they are all sent or the duration is over.
    Once,
}

/// A load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where to send.
    pub addr: SocketAddr,
    /// The mix.
    pub requests: Arc<Vec<Req>>,
    /// Walk order.
    pub order: Order,
    /// Keep-alive connections.
    pub connections: usize,
    /// Upper bound on the run's length.
    pub duration: Duration,
    /// Upper bound on the number of requests sent.
    pub max_requests: Option<u64>,
    /// Keep the body of every n-th successful response (Rust driver only).
    pub keep_every: Option<u64>,
    /// Speak TLS with this client configuration (Rust driver, or `h2load` when `h2`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/2 over TLS with `h2load`.
    pub h2: bool,
    /// HTTP/2 streams in flight per connection (`h2load -m`): 1 is like HTTP/1.1 keep-alive.
    pub h2_streams: usize,
}

impl Load {
    /// A cycling run of `requests` for `duration` over `connections` connections.
    pub fn new(
        addr: SocketAddr,
        requests: Vec<Req>,
        connections: usize,
        duration: Duration,
    ) -> Self {
        Self {
            addr,
            requests: Arc::new(requests),
            order: Order::Cycle,
            connections,
            duration,
            max_requests: None,
            keep_every: None,
            tls: None,
            h2: false,
            h2_streams: 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    /// `wrk` or `rust`.
    pub driver: &'static str,
    /// Responses received (any status).
    pub responses: u64,
    /// Successful (2xx/3xx) responses.
    pub ok: u64,
    /// Non-2xx/3xx responses plus connection/read/timeout errors.
    pub errors: u64,
    /// Seconds from the first request to the end of the run.
    pub elapsed: f64,
    /// Successful responses per second.
    pub rps: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Kept bodies (see [`Load::keep_every`]).
    #[serde(skip)]
    pub bodies: Vec<Bytes>,
}

/// Whether an executable is on PATH (or in the sbin directories, where Debian puts nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Which driver [`run`] will use for a mix.
pub fn driver_for(load: &Load, force_rust: bool) -> &'static str {
    if load.h2 {
        return "h2load";
    }
    let wrk_can = load.tls.is_none()
        && load.order == Order::Cycle
        && load.keep_every.is_none()
        && load.max_requests.is_none();
    if !force_rust && wrk_can && find_program("wrk").is_some() {
        "wrk"
    } else {
        "rust"
    }
}

/// Runs the load with wrk when it can (cycling mix, no body capture, wrk installed), otherwise
/// with the Rust driver.
///
/// # Errors
/// The driver could not start or its output could not be read.
pub fn run(load: &Load, force_rust: bool) -> Result<Measured> {
    match driver_for(load, force_rust) {
        "h2load" => run_h2load(load),
        "wrk" => run_wrk(load),
        _ => run_rust(load),
    }
}

// ---------------------------------------------------------------------------------------------
// h2load

/// Runs the load with `h2load` over TLS (ALPN h2): `connections` clients on one thread,
/// `h2_streams` streams each in flight, for the duration; latencies from its per-request log.
fn run_h2load(load: &Load) -> Result<Measured> {
    let h2load =
        find_program("h2load").context("h2load not found (apt-get install nghttp2-client)")?;
    let first = load.requests.first().context("empty request mix")?;
    if load.requests.len() > 1 || !first.body.is_empty() {
        bail!("h2load runs take one bodiless request");
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("requests.tsv");
    let mut cmd = Command::new(h2load);
    cmd.arg("-t1")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-m{}", load.h2_streams.max(1)))
        .arg(format!("-D{}", load.duration.as_secs().max(1)))
        .arg("--log-file")
        .arg(&log);
    for (k, v) in &first.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd
        .arg(format!("https://{}{}", load.addr, first.path))
        .output()
        .context("running h2load")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut hist = new_hist()?;
    let (mut responses, mut ok) = (0u64, 0u64);
    for line in std::fs::read_to_string(&log)?.lines() {
        // start (µs since the epoch), status, µs until the end of the response
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(micros)) = (
            f.get(1).and_then(|x| x.parse::<u16>().ok()),
            f.get(2).and_then(|x| x.parse::<u64>().ok()),
        ) else {
            continue;
        };
        responses += 1;
        if (200..400).contains(&status) {
            ok += 1;
            hist.saturating_record(micros);
        }
    }
    let errored: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests:"))
        .and_then(|l| {
            l.split(',')
                .find_map(|p| p.trim().strip_suffix(" errored"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let elapsed = load.duration.as_secs_f64().max(1e-6);
    Ok(Measured {
        driver: "h2load",
        responses,
        ok,
        errors: responses - ok + errored,
        elapsed,
        rps: ok as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1e3,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1e3,
        p999_ms: hist.value_at_quantile(0.999) as f64 / 1e3,
        bodies: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// wrk

fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Requests per Lua function of the script: LuaJIT refuses a function with more than 65,536
/// constants, which one function making half a million distinct requests (the cold target's)
/// has.
const LUA_REQUESTS_PER_FUNCTION: usize = 1_000;

/// The Lua script: precomputed requests when the mix has more than one (or a body), and a
/// `done` hook printing exact counts and the 50/99/99.9 percentiles (µs) on one line.
fn wrk_script(load: &Load) -> String {
    let mut s = String::new();
    let single = load.requests.len() == 1 && load.requests[0].body.is_empty();
    if !single {
        s.push_str("local reqs = {}\nlocal i = 0\nlocal parts = {}\n");
        for (n, r) in load.requests.iter().enumerate() {
            if n % LUA_REQUESTS_PER_FUNCTION == 0 {
                if n > 0 {
                    s.push_str("end\n");
                }
                s.push_str("parts[#parts + 1] = function()\n");
            }
            let headers: Vec<String> = r
                .headers
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_str(k), lua_str(v)))
                .collect();
            let body = if r.body.is_empty() {
                "nil".to_string()
            } else {
                lua_str(&String::from_utf8_lossy(&r.body))
            };
            s.push_str(&format!(
                "  reqs[#reqs + 1] = wrk.format({}, {}, {{{}}}, {})\n",
                lua_str(r.method.as_str()),
                lua_str(&r.path),
                headers.join(", "),
                body
            ));
        }
        s.push_str(
            "end\ninit = function(args)\n  for _, part in ipairs(parts) do part() end\nend\n\
             request = function()\n  i = i + 1\n  return reqs[(i % #reqs) + 1]\nend\n",
        );
    }
    s.push_str(
        "done = function(summary, latency, requests)\n  local e = summary.errors\n  \
         io.write(string.format(\"BENCH %d %d %d %d %d %d %d\\n\", summary.requests, \
         summary.duration, e.status, e.connect + e.read + e.write + e.timeout, \
         latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    );
    s
}

fn run_wrk(load: &Load) -> Result<Measured> {
    let wrk = find_program("wrk").context("wrk not found")?;
    let dir = tempfile::tempdir()?;
    let script_path = dir.path().join("bench.lua");
    std::fs::File::create(&script_path)?.write_all(wrk_script(load).as_bytes())?;
    let first = load.requests.first().context("empty request mix")?;
    let url = format!("http://{}{}", load.addr, first.path);
    let mut cmd = Command::new(wrk);
    cmd.arg("-t1")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(&script_path);
    if load.requests.len() == 1 {
        for (k, v) in &first.headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
    }
    let out = cmd.arg(&url).output().context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&stdout)
}

/// Parses wrk's `--latency` report and our `BENCH` line.
fn parse_wrk(stdout: &str) -> Result<Measured> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| format!("no BENCH line in wrk output:\n{stdout}"))?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("BENCH line")?;
    if n.len() != 7 {
        bail!("BENCH line has {} fields", n.len());
    }
    let (responses, dur_us, status_err, sock_err) = (n[0], n[1], n[2], n[3]);
    let elapsed = dur_us / 1e6;
    // wrk's own "Requests/sec" counts every response; we report the successful ones, so a
    // target that answers 401 fast does not look fast.
    let reported_rps: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(responses / elapsed.max(1e-9));
    let ok = (responses - status_err).max(0.0);
    Ok(Measured {
        driver: "wrk",
        responses: responses as u64,
        ok: ok as u64,
        errors: (status_err + sock_err) as u64,
        elapsed,
        rps: reported_rps * ok / responses.max(1.0),
        p50_ms: n[4] / 1e3,
        p99_ms: n[5] / 1e3,
        p999_ms: n[6] / 1e3,
        bodies: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Rust driver

struct Shared {
    load: Load,
    prepared: Vec<(Method, hyper::Uri, HeaderMap, Bytes)>,
    next: AtomicU64,
    ok: AtomicU64,
    deadline: Instant,
}

impl Shared {
    /// Index of the next request to send, or `None` when the run is over.
    fn next(&self) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let len = self.prepared.len() as u64;
        if self.load.max_requests.is_some_and(|m| n >= m) {
            return None;
        }
        match self.load.order {
            Order::Cycle => Some((n % len) as usize),
            Order::Once => (n < len).then_some(n as usize),
        }
    }
}

#[derive(Default)]
struct ConnStats {
    responses: u64,
    errors: u64,
    bodies: Vec<Bytes>,
    last: Option<Instant>,
}

fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 120_000_000, 3).context("histogram")
}

/// Runs the load with our driver on a single-threaded tokio runtime (like `wrk -t1`).
///
/// # Errors
/// Bad request mix or runtime failure.
pub fn run_rust(load: &Load) -> Result<Measured> {
    if load.requests.is_empty() {
        bail!("empty request mix");
    }
    let host = HeaderValue::from_str(&load.addr.to_string())?;
    let prepared = load
        .requests
        .iter()
        .map(|r| {
            let mut h = HeaderMap::new();
            h.insert(HOST, host.clone());
            for (k, v) in &r.headers {
                h.append(
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(v)?,
                );
            }
            if !r.body.is_empty() && !h.contains_key(CONTENT_TYPE) {
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
            }
            Ok((
                r.method.clone(),
                r.path.parse::<hyper::Uri>()?,
                h,
                r.body.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            load: load.clone(),
            prepared,
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            deadline: started + load.duration,
        });
        let ticker = tokio::spawn(tick(shared.clone()));
        let tasks: Vec<_> = (0..load.connections)
            .map(|_| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut hist = new_hist()?;
                    let mut stats = ConnStats::default();
                    connection_loop(&shared, &mut hist, &mut stats).await;
                    Ok::<_, anyhow::Error>((hist, stats))
                })
            })
            .collect();
        let mut hist = new_hist()?;
        let mut total = ConnStats::default();
        for t in tasks {
            let (h, s) = t.await??;
            hist.add(&h).context("merge histograms")?;
            total.responses += s.responses;
            total.errors += s.errors;
            total.bodies.extend(s.bodies);
            total.last = total.last.max(s.last);
        }
        ticker.abort();
        // A one-shot run ends with its last response, a timed one at the deadline.
        let end = match load.order {
            Order::Once => total.last.unwrap_or_else(Instant::now),
            Order::Cycle => Instant::now().min(shared.deadline),
        };
        let elapsed = end.duration_since(started).as_secs_f64().max(1e-6);
        let ok = shared.ok.load(Ordering::Relaxed);
        Ok(Measured {
            driver: "rust",
            responses: total.responses,
            ok,
            errors: total.errors,
            elapsed,
            rps: ok as f64 / elapsed,
            p50_ms: hist.value_at_quantile(0.50) as f64 / 1e3,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1e3,
            p999_ms: hist.value_at_quantile(0.999) as f64 / 1e3,
            bodies: total.bodies,
        })
    })
}

/// Prints the time left every 5 s during long runs.
async fn tick(shared: Arc<Shared>) {
    if shared.load.duration < Duration::from_secs(10) {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let left = shared
            .deadline
            .saturating_duration_since(Instant::now())
            .as_secs();
        super::progress(format_args!(
            "  … {} ok responses, at most {} left",
            shared.ok.load(Ordering::Relaxed),
            super::fmt_secs(left)
        ));
    }
}

/// What a connection's request loop ended with.
enum Flow {
    /// The run is over.
    Done,
    /// Open a new connection (an error, or the request asked for `Connection: close`).
    Reconnect,
}

async fn connection_loop(shared: &Shared, hist: &mut Histogram<u64>, stats: &mut ConnStats) {
    loop {
        let remaining = shared.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        let stream =
            match tokio::time::timeout(remaining, tokio::net::TcpStream::connect(shared.load.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => {
                    stats.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => return,
            };
        let _ = stream.set_nodelay(true);
        let flow = match &shared.load.tls {
            None => requests(shared, hist, stats, stream).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(shared.load.addr.ip().into());
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let handshake = tokio::time::timeout(remaining, connector.connect(name, stream));
                match handshake.await {
                    Ok(Ok(tls)) => requests(shared, hist, stats, tls).await,
                    Ok(Err(_)) => {
                        stats.errors += 1;
                        Flow::Reconnect
                    }
                    Err(_) => Flow::Done,
                }
            }
        };
        if let Flow::Done = flow {
            return;
        }
    }
}

/// Sends requests on one connection until the run ends or the connection must be replaced.
async fn requests<IO>(
    shared: &Shared,
    hist: &mut Histogram<u64>,
    stats: &mut ConnStats,
    io: IO,
) -> Flow
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await
    else {
        stats.errors += 1;
        return Flow::Reconnect;
    };
    let driver = tokio::spawn(conn);
    loop {
        let Some(idx) = shared.next() else {
            driver.abort();
            return Flow::Done;
        };
        let (method, uri, headers, body) = &shared.prepared[idx];
        let close = headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let mut req = hyper::Request::new(Full::new(body.clone()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        let remaining = shared.deadline.saturating_duration_since(Instant::now());
        let start = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(remaining, exchange).await {
            Err(_) => {
                // Still in flight at the deadline: not counted, like wrk.
                driver.abort();
                return Flow::Done;
            }
            Ok(Err(_)) => {
                stats.errors += 1;
                driver.abort();
                return Flow::Reconnect;
            }
            Ok(Ok((status, body))) => {
                let now = Instant::now();
                hist.saturating_record(now.duration_since(start).as_micros() as u64);
                stats.responses += 1;
                stats.last = Some(now);
                if status.is_success() || status.is_redirection() {
                    let n = shared.ok.fetch_add(1, Ordering::Relaxed);
                    if shared
                        .load
                        .keep_every
                        .is_some_and(|k| n.is_multiple_of(k.max(1)))
                    {
                        stats.bodies.push(body);
                    }
                } else {
                    stats.errors += 1;
                }
                if close {
                    driver.abort();
                    return Flow::Reconnect;
                }
            }
        }
    }
}
