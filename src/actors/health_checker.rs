//! Active health checks: one actor per upstream whose `healthchecks.active` has an interval,
//! probing each address of its targets (each name as it last resolved) — healthy ones every
//! `healthy.interval` seconds, unhealthy ones every `unhealthy.interval` — with at most
//! `concurrency` probes in flight. A probe is an HTTP `GET http_path` (`http`, `https`, TLS
//! asking for the target's name) or a connection (`tcp`); its outcome is counted in the
//! address's [`TargetHealth`], which the proxy reads on every pick. Each node checks for
//! itself, as Kong's nodes do. The config registry starts the actors and stops them when the
//! upstream, its targets or their addresses change.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::entities::upstreams::{ActiveChecks, CheckType};
use crate::router::health::{Outcome, Rules, TargetHealth};

/// One address of a target as the checker probes it (each address has its own health, as in
/// Kong).
#[derive(Clone)]
pub struct Probe {
    /// `host:port` as configured (for logs).
    pub target: String,
    /// The address, `ip:port` (for logs).
    pub address: String,
    /// Host to connect to: the address the target's name resolved to, or the target's own.
    pub host: String,
    /// The name TLS asks `https` probes for: the target's host as configured.
    pub server_name: String,
    /// Port to connect to.
    pub port: u16,
    /// `Host` sent with HTTP probes.
    pub host_header: String,
    /// The cell the proxy reads.
    pub health: Arc<TargetHealth>,
}

/// The active checker of one upstream.
pub struct HealthChecker {
    upstream: String,
    config: Rc<ActiveChecks>,
    rules: Rc<Rules>,
    probes: Rc<Vec<Probe>>,
}

impl HealthChecker {
    /// A checker of `probes` under `config` (the upstream's `healthchecks.active`).
    pub fn new(upstream: String, config: ActiveChecks, probes: Vec<Probe>) -> Self {
        let rules = Rules::new(config.kind, &config.healthy, &config.unhealthy);
        Self {
            upstream,
            config: Rc::new(config),
            rules: Rc::new(rules),
            probes: Rc::new(probes),
        }
    }

    /// Probes every target currently in the `healthy` state, unless the previous round of that
    /// state is still running.
    fn round(&self, healthy: bool, busy: &Rc<Cell<bool>>) {
        if busy.replace(true) {
            return;
        }
        let (config, rules, probes) =
            (self.config.clone(), self.rules.clone(), self.probes.clone());
        let (busy, upstream) = (busy.clone(), self.upstream.clone());
        actix::spawn(async move {
            let due = probes.iter().filter(|p| p.health.is_healthy() == healthy);
            let limit = usize::try_from(config.concurrency.max(1)).unwrap_or(1);
            futures_util::stream::iter(due)
                .for_each_concurrent(limit, |probe| {
                    let (config, rules, upstream) = (&config, &rules, &upstream);
                    async move {
                        let outcome = probe_once(probe, config).await;
                        if let Some(now) = probe.health.record(outcome, rules) {
                            tracing::warn!(
                                upstream = %upstream,
                                target = %probe.target,
                                address = %probe.address,
                                healthy = now,
                                ?outcome,
                                "active health check changed the target's state"
                            );
                        }
                    }
                })
                .await;
            busy.set(false);
        });
    }
}

impl Actor for HealthChecker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for (healthy, interval) in [
            (true, self.config.healthy.interval),
            (false, self.config.unhealthy.interval),
        ] {
            if interval > 0.0 {
                let busy = Rc::new(Cell::new(false));
                let every = Duration::from_secs_f64(interval);
                ctx.run_interval(every, move |checker, _| checker.round(healthy, &busy));
            }
        }
    }
}

/// Stops a checker (its configuration changed or its upstream is gone).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for HealthChecker {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// One probe of one target, bounded by the check's `timeout`.
async fn probe_once(probe: &Probe, config: &ActiveChecks) -> Outcome {
    let limit = Duration::from_secs_f64(config.timeout.max(0.001));
    match tokio::time::timeout(limit, probe_unbounded(probe, config)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

async fn probe_unbounded(probe: &Probe, config: &ActiveChecks) -> Outcome {
    let Ok(tcp) = TcpStream::connect((probe.host.as_str(), probe.port)).await else {
        return Outcome::TcpFailure;
    };
    let _ = tcp.set_nodelay(true);
    let request = match request(probe, config) {
        Some(request) => request,
        None => return Outcome::TcpFailure,
    };
    match config.kind {
        // A connection is all a tcp check asks.
        CheckType::Tcp => Outcome::Status(200),
        CheckType::Https => {
            let tls = if config.https_verify_certificate {
                crate::tls::verified_upstream_config()
            } else {
                crate::tls::unverified_upstream_config()
            };
            let Ok(name) = rustls::pki_types::ServerName::try_from(probe.server_name.clone())
            else {
                return Outcome::TcpFailure;
            };
            match tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
            {
                Ok(stream) => get(TokioIo::new(stream), request).await,
                Err(_) => Outcome::TcpFailure,
            }
        }
        CheckType::Http | CheckType::Grpc | CheckType::Grpcs => {
            get(TokioIo::new(tcp), request).await
        }
    }
}

/// The probe's request: `GET http_path` with the target's `Host` and the configured headers.
fn request(probe: &Probe, config: &ActiveChecks) -> Option<http::Request<Empty<Bytes>>> {
    let mut builder = http::Request::get(config.http_path.as_str())
        .header(http::header::HOST, probe.host_header.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        );
    for (name, values) in config.headers.iter().flatten() {
        for value in values {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    builder.body(Empty::new()).ok()
}

async fn get<I>(io: I, request: http::Request<Empty<Bytes>>) -> Outcome
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(io).await else {
        return Outcome::TcpFailure;
    };
    actix::spawn(async move {
        let _ = connection.await;
    });
    match sender.send_request(request).await {
        Ok(answer) => Outcome::Status(answer.status().as_u16()),
        Err(_) => Outcome::TcpFailure,
    }
}
