//! The processes under test: the fixed-response upstream (nginx `return 200`, or a minimal hyper
//! server), nginx as a plain reverse proxy, and the gateway as a child process; plus their CPU
//! time and peak RSS read from `/proc`.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper_util::rt::TokioIo;

use super::driver::find_program;
use super::BenchEnv;

/// The 205-byte JSON body every upstream answers: a small API response, the same for every target.
pub const BODY: &str = r#"{"id":"0b9a3f2e-7c41-4d8e-9a6b-2f1e5c3d4a70","status":"ok","service":"inventory","version":"1.4.2","items":[{"sku":"A-1001","qty":12},{"sku":"B-2002","qty":7}],"ts":"2025-01-01T00:00:00Z","region":"local"}"#;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every architecture we run.
const TICKS_PER_SEC: f64 = 100.0;

/// A free loopback port (bound, read back, released; the child binds it right after).
///
/// # Errors
/// No port could be bound.
pub fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A process we started; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Keeps the temp dir (configs, logs) alive as long as the process.
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr going to a log file in a fresh temp dir.
    pub fn spawn(name: &str, mut cmd: Command, dir: tempfile::TempDir) -> Result<Self> {
        let log = dir.path().join("process.log");
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
            _dir: dir,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 30 s) until `addr` accepts connections.
    ///
    /// # Errors
    /// The process exited or the port never opened; the message carries the process's log.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_tail());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within 30 s: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the process printed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// CPU seconds (user + system) used so far by the process and its descendants.
    pub fn cpu_seconds(&self) -> f64 {
        tree(self.pid()).iter().map(|p| cpu_ticks(*p)).sum::<u64>() as f64 / TICKS_PER_SEC
    }

    /// Peak resident set (VmHWM) of the process and its descendants, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        tree(self.pid())
            .iter()
            .map(|p| status_kib(*p, "VmHWM:"))
            .sum::<u64>() as f64
            / 1024.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first (nginx's master then stops its workers), SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|x| x.parse().ok())) {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Fields of `/proc/<pid>/stat` after the command name: [state, ppid, …]; utime and stime are
/// at indices 11 and 12.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid)
        .map(|f| {
            let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            get(11) + get(12)
        })
        .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Upstream

/// A running fixed-response upstream.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Two more addresses it answers on (the same process): an upstream of several targets.
    pub also: Vec<SocketAddr>,
    /// `nginx` or `hyper`.
    pub kind: &'static str,
    /// The process.
    pub proc: Proc,
}

/// nginx binary, unless `BENCH_NO_NGINX` is set.
pub fn nginx() -> Option<PathBuf> {
    if std::env::var_os("BENCH_NO_NGINX").is_some() {
        return None;
    }
    find_program("nginx")
}

/// Starts the upstream: nginx `return 200` (one worker) when nginx is installed, otherwise this
/// executable in its `upstream` role (a one-thread hyper server).
///
/// # Errors
/// It could not start.
pub fn start_upstream(env: &BenchEnv) -> Result<Upstream> {
    let addr = free_addr()?;
    let also = vec![free_addr()?, free_addr()?];
    let want_nginx = env.upstream.as_deref() != Some("hyper");
    if let (true, Some(bin)) = (want_nginx, nginx()) {
        let body = BODY.replace('\'', "\\'");
        let listens: String = std::iter::once(addr)
            .chain(also.iter().copied())
            .map(|a| format!("    listen {a} backlog=4096;\n"))
            .collect();
        let server = format!(
            "  server {{\n{listens}    location / {{\n      default_type application/json;\n      return 200 '{body}';\n    }}\n  }}\n"
        );
        let mut proc = start_nginx(&bin, "nginx-upstream", &server, "")?;
        for a in std::iter::once(addr).chain(also.iter().copied()) {
            proc.wait_listening(a)?;
        }
        return Ok(Upstream {
            addr,
            also,
            kind: "nginx",
            proc,
        });
    }
    let all: Vec<String> = std::iter::once(addr)
        .chain(also.iter().copied())
        .map(|a| a.to_string())
        .collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env("BENCH_ROLE", "upstream")
        .env("BENCH_UPSTREAM_ADDR", all.join(","));
    let mut proc = Proc::spawn("hyper upstream", cmd, tempfile::tempdir()?)?;
    for a in std::iter::once(addr).chain(also.iter().copied()) {
        proc.wait_listening(a)?;
    }
    Ok(Upstream {
        addr,
        also,
        kind: "hyper",
        proc,
    })
}

/// The `upstream` role: a hyper 1.x HTTP/1.1 server on one thread answering [`BODY`] to
/// everything, on each address of `BENCH_UPSTREAM_ADDR` (comma separated).
///
/// # Errors
/// Bind or runtime failure.
pub fn serve_upstream() -> Result<()> {
    let addrs: Vec<SocketAddr> = std::env::var("BENCH_UPSTREAM_ADDR")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for addr in addrs {
            listeners.push(tokio::net::TcpListener::bind(addr).await?);
        }
        let mut accepted = futures_util::stream::select_all(
            listeners.into_iter().map(|l| Box::pin(tokio_stream_of(l))),
        );
        loop {
            let Some(stream) = futures_util::StreamExt::next(&mut accepted).await else {
                return Ok(());
            };
            let stream = stream?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let mut resp =
                        hyper::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The connections a listener accepts, as a stream.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}

/// Starts nginx with one worker and `server` blocks (plus `http_extra`) from a config written
/// into a fresh temp dir.
fn start_nginx(bin: &Path, name: &str, server: &str, http_extra: &str) -> Result<Proc> {
    start_nginx_workers(bin, name, server, http_extra, 1)
}

/// [`start_nginx`] with `workers` worker processes.
fn start_nginx_workers(
    bin: &Path,
    name: &str,
    server: &str,
    http_extra: &str,
    workers: usize,
) -> Result<Proc> {
    let dir = tempfile::tempdir()?;
    let p = dir.path();
    std::fs::create_dir_all(p.join("logs"))?;
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n  \
         client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n{http_extra}{server}}}\n",
        pid = p.join("nginx.pid").display(),
        err = p.join("logs/error.log").display(),
        tmp = p.display(),
    );
    let conf_path = p.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(p)
        .arg("-e")
        .arg(p.join("logs/error.log"));
    Proc::spawn(name, cmd, dir)
}

/// nginx as a plain reverse proxy to `upstream` with upstream keep-alive (one worker), listening
/// on the returned address.
///
/// # Errors
/// nginx is missing or did not start.
pub fn start_nginx_proxy(upstream: SocketAddr) -> Result<(SocketAddr, Proc)> {
    start_nginx_front(upstream, &Front::default())
}

/// How the client side of a proxy under test is served: worker count, TLS, HTTP/2.
#[derive(Clone, Default)]
pub struct Front {
    /// Worker processes (nginx) or threads (the gateway); 0 = the bench's default.
    pub workers: usize,
    /// Serve TLS with this certificate.
    pub tls: Option<std::sync::Arc<TlsFiles>>,
    /// Offer HTTP/2 (by ALPN on TLS).
    pub h2: bool,
}

/// A self-signed certificate for 127.0.0.1 in PEM files, and a client configuration trusting it
/// (session resumption off: with `Connection: close` every request pays a full handshake).
pub struct TlsFiles {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// What the load driver connects with.
    pub client: std::sync::Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Generates the certificate.
    ///
    /// # Errors
    /// Generation or writing failed.
    pub fn generate() -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, certified.cert.pem())?;
        std::fs::write(&key, certified.key_pair.serialize_pem())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone())?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            cert,
            key,
            client: std::sync::Arc::new(client),
            _dir: dir,
        })
    }
}

/// nginx as a reverse proxy to `upstream` (upstream keep-alive, `keepalive_requests 1000000` on
/// both sides) served as `front` says, listening on the returned address.
///
/// # Errors
/// nginx is missing or did not start.
pub fn start_nginx_front(upstream: SocketAddr, front: &Front) -> Result<(SocketAddr, Proc)> {
    start_nginx_front_with(upstream, front, "")
}

/// The header work the gateway does on every proxied request, as nginx directives: the
/// `X-Forwarded-*` set, `X-Real-IP`, `Via` and a request id towards the upstream, `Via`, the
/// two latency headers and the request id towards the client (Kong's defaults, under the
/// gateway's names), and the three consumer headers its `oauth2` plugin sends upstream (fixed
/// values: nginx checks no token). What it costs nginx, the upstream and the load generator to
/// make and read them is then on both sides of a ratio.
const GATEWAY_HEADERS: &str = include_str!("../server-stack/gateway-headers.nginx");

/// [`start_nginx_front`] doing the gateway's header work as well ([`GATEWAY_HEADERS`]): the
/// like-for-like reference for the gateway's `oauth2` path, less the token check.
///
/// # Errors
/// As [`start_nginx_front`].
pub fn start_nginx_front_gateway_headers(
    upstream: SocketAddr,
    front: &Front,
) -> Result<(SocketAddr, Proc)> {
    start_nginx_front_with(upstream, front, GATEWAY_HEADERS)
}

fn start_nginx_front_with(
    upstream: SocketAddr,
    front: &Front,
    directives: &str,
) -> Result<(SocketAddr, Proc)> {
    let bin = nginx().context("nginx is not installed")?;
    let addr = free_addr()?;
    let upstream_block = format!(
        "  upstream backend {{\n    server {upstream};\n    keepalive 128;\n    keepalive_requests 1000000;\n  }}\n"
    );
    // `reuseport` as Kong's nginx listens (its default `proxy_listen`): with several workers,
    // each accepts on its own socket.
    let listen = match (&front.tls, front.h2) {
        (Some(tls), h2) => format!(
            "{addr} ssl{} reuseport backlog=4096;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_session_tickets off;\n    ssl_session_cache off;",
            if h2 { " http2" } else { "" },
            tls.cert.display(),
            tls.key.display()
        ),
        (None, _) => format!("{addr} reuseport backlog=4096;"),
    };
    let server = format!(
        "  server {{\n    listen {listen}\n    location / {{\n      proxy_pass http://backend;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering on;\n{directives}    }}\n  }}\n"
    );
    let workers = front.workers.max(1);
    let mut proc = start_nginx_workers(&bin, "nginx proxy", &server, &upstream_block, workers)?;
    proc.wait_listening(addr)?;
    Ok((addr, proc))
}

// ---------------------------------------------------------------------------------------------
// Gateway

/// A gateway child process.
pub struct Gateway {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The TLS proxy listener of a gateway started with a [`Front`] with TLS (the plain one,
    /// `proxy`, still serves the bench's setup requests).
    pub tls_proxy: Option<SocketAddr>,
    /// The process.
    pub proc: Proc,
}

/// Starts the gateway as a child process configured by `PORTCULLIS_*` variables: listeners on
/// free loopback ports, `database = memory`, `log_level = error`, `worker_processes` from the
/// bench settings, loopback trusted (the token endpoints are then reachable over plain HTTP with
/// `X-Forwarded-Proto: https`), then `extra`, which may override them (e.g. the settings of a
/// [`super::stores::PgSchema`]).
///
/// The executable is `BENCH_GATEWAY_BIN` (e.g. `target/release/portcullis`, run as `serve`) when
/// set, otherwise this bench executable in its `gateway` role: the same library code, built in
/// the same release profile, so the bench never measures a stale binary.
///
/// # Errors
/// It did not start; the message carries its log.
pub fn start_gateway(name: &str, env: &BenchEnv, extra: &[(String, String)]) -> Result<Gateway> {
    start_gateway_flagged(name, env, extra, "")
}

/// [`start_gateway`] served as `front` says: its worker count, and a TLS proxy listener with the
/// bench's certificate (which offers h2 by ALPN).
///
/// # Errors
/// As [`start_gateway`].
pub fn start_gateway_front(
    name: &str,
    env: &BenchEnv,
    extra: &[(String, String)],
    front: &Front,
) -> Result<Gateway> {
    let mut settings: Vec<(String, String)> = Vec::new();
    if front.workers > 0 {
        settings.push((
            "PORTCULLIS_WORKER_PROCESSES".into(),
            front.workers.to_string(),
        ));
    }
    if let Some(tls) = &front.tls {
        settings.push(("PORTCULLIS_SSL_CERT".into(), tls.cert.display().to_string()));
        settings.push((
            "PORTCULLIS_SSL_CERT_KEY".into(),
            tls.key.display().to_string(),
        ));
    }
    settings.extend(extra.iter().cloned());
    let tls_proxy = match front.tls {
        Some(_) => Some(free_addr()?),
        None => None,
    };
    let proxy = free_addr()?;
    // `reuseport` as in Kong's default `proxy_listen` (and the nginx reference's `listen`): with
    // several workers, each accepts on its own socket.
    let listen = match tls_proxy {
        Some(tls) => format!("{proxy} reuseport, {tls} ssl reuseport"),
        None => format!("{proxy} reuseport"),
    };
    let mut gw = spawn_gateway(name, env, &settings, proxy, &listen)?;
    if let Some(tls) = tls_proxy {
        gw.proc.wait_listening(tls)?;
        gw.tls_proxy = Some(tls);
    }
    Ok(gw)
}

/// [`start_gateway`] with listen flags on the proxy listener (`http2` for h2c).
///
/// # Errors
/// As [`start_gateway`].
pub fn start_gateway_flagged(
    name: &str,
    env: &BenchEnv,
    extra: &[(String, String)],
    flags: &str,
) -> Result<Gateway> {
    let proxy = free_addr()?;
    let listen = format!("{proxy} {flags}");
    spawn_gateway(name, env, extra, proxy, listen.trim_end())
}

/// Starts the gateway with `listen` as its proxy listeners, `proxy` among them (plain).
fn spawn_gateway(
    name: &str,
    env: &BenchEnv,
    extra: &[(String, String)],
    proxy: SocketAddr,
    listen: &str,
) -> Result<Gateway> {
    let admin = free_addr()?;
    let mut cmd = match std::env::var_os("BENCH_GATEWAY_BIN") {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.arg("serve");
            c
        }
        None => {
            let mut c = Command::new(std::env::current_exe()?);
            c.env("BENCH_ROLE", "gateway");
            c
        }
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") || k.starts_with("KONG_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PORTCULLIS_PROXY_LISTEN", listen)
        .env("PORTCULLIS_ADMIN_LISTEN", admin.to_string())
        .env("PORTCULLIS_STATUS_LISTEN", "off")
        .env("PORTCULLIS_DATABASE", "memory")
        .env("PORTCULLIS_LOG_LEVEL", "error")
        .env("PORTCULLIS_WORKER_PROCESSES", env.workers.to_string())
        .env("PORTCULLIS_TRUSTED_IPS", "127.0.0.1/32");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(name, cmd, tempfile::tempdir()?)?;
    proc.wait_listening(admin)?;
    proc.wait_listening(proxy)?;
    Ok(Gateway {
        proxy,
        admin,
        tls_proxy: None,
        proc,
    })
}

/// The `gateway` role: what `portcullis serve` does, with settings from `PORTCULLIS_*`.
///
/// # Errors
/// Bad settings or a failed start.
pub fn serve_gateway() -> Result<()> {
    let settings = portcullis::config::Settings::load(None, std::env::vars())?;
    portcullis::telemetry::init(&settings);
    actix_rt::System::new().block_on(async move {
        let app = portcullis::startup::Application::build(settings).await?;
        app.run_until_stopped().await?;
        Ok(())
    })
}
