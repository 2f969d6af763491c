//! Upstream targets and services written as host names, resolved through a DNS server the test
//! runs itself (`dns_resolver` names it), on the memory store and on Postgres. Kong's behaviour
//! (`kong/runloop/balancer/targets.lua`, `balancers.lua`): each A record of a target's name is
//! one balancer address with the target's weight and the name as `Host`; the name is resolved
//! again when its TTL runs out; a name that does not resolve adds no address, and an upstream
//! left without any answers `503 failure to get a peer from the ring-balancer`. A service's own
//! host name (`balancer/init.lua`, `toip`) rotates over its addresses, and answers
//! `503 name resolution failed` when it does not resolve. Over TLS and gRPC the request goes to
//! the address the balancer picked as well, with the name as TLS server name (SNI and the
//! certificate check) and as `Host` (D…). Each address keeps its own health (H…), and Kong's
//! `08-targets_routes_spec` `/upstreams/{upstream}/health/` cases, which resolve names through
//! Kong's DNS mocks, run against the test's server (K…), and so do the DNS cases of
//! `05-proxy/10-balancer/01-healthchecks_spec` (P…). A name with SRV records balances over
//! the best priority's records with their ports and weights (S…).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portcullis::config::Settings;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_with, test_settings, PgSchema, TestApp};

/// Which store the gateway runs on.
#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Postgres,
}

/// A DNS server answering A and SRV queries from a table the test changes, every record with
/// a TTL of one second; names not in the table answer NXDOMAIN.
pub(crate) struct Zone {
    pub(crate) addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Names>>>,
}

/// The records of one name: A, and SRV as (priority, weight, port, target).
#[derive(Default)]
struct Names {
    a: Vec<Ipv4Addr>,
    srv: Vec<(u16, u16, u16, String)>,
}

impl Zone {
    pub(crate) fn spawn() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Names>>> = Arc::default();
        let table = records.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = Self::answer(&query, &table.lock().unwrap());
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer);
            }
        });
        Self { addr, records }
    }

    fn answer(query: &Message, table: &HashMap<String, Names>) -> Message {
        let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.metadata.authoritative = true;
        answer.add_queries(query.queries.clone());
        for q in &query.queries {
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let Some(names) = table.get(&name) else {
                answer.metadata.response_code = ResponseCode::NXDomain;
                continue;
            };
            let data: Vec<RData> = match q.query_type() {
                RecordType::A => names.a.iter().map(|ip| RData::A(A(*ip))).collect(),
                RecordType::SRV => names
                    .srv
                    .iter()
                    .map(|(priority, weight, port, target)| {
                        let target = Name::from_ascii(target).unwrap();
                        RData::SRV(SRV::new(*priority, *weight, *port, target))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for rdata in data {
                answer.add_answer(Record::from_rdata(q.name().clone(), 1, rdata));
            }
        }
        answer
    }

    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut records = self.records.lock().unwrap();
        records.entry(name.to_string()).or_default().a = ips.to_vec();
    }

    /// SRV records of `name`: (priority, weight, port, target).
    fn set_srv(&self, name: &str, services: &[(u16, u16, u16, &str)]) {
        let mut records = self.records.lock().unwrap();
        records.entry(name.to_string()).or_default().srv = services
            .iter()
            .map(|(p, w, port, t)| (*p, *w, *port, t.to_string()))
            .collect();
    }

    fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }
}

/// A certificate authority of the test's, issuing the TLS backends' certificates.
struct TestCa {
    pem: String,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream_dns test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// Server settings presenting a certificate for `name` (no IP address in it) issued by
    /// this CA.
    fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

/// Starts an HTTP server on `ip:port` (over TLS with `tls`) answering every request with the
/// address it was reached on, the `Host` it got and the server name the TLS client asked for.
fn spawn_backend(
    ip: Ipv4Addr,
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind((ip, port))?;
    listener.set_nonblocking(true)?;
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
                let tls = tls.clone();
                tokio::spawn(async move {
                    let serve = |sni: Option<String>| {
                        hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let sni = sni.clone();
                                async move {
                                    let host = req
                                        .headers()
                                        .get("host")
                                        .and_then(|h| h.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string();
                                    let body =
                                        json!({"address": ip.to_string(), "host": host, "sni": sni});
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::from(
                                            body.to_string(),
                                        )),
                                    ))
                                }
                            },
                        )
                    };
                    let http1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http1.serve_connection(io, serve(None)).await;
                        }
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_string);
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http1.serve_connection(io, serve(sni)).await;
                        }
                    }
                });
            }
        });
    });
    Ok(())
}

/// Backends on 127.0.0.1 and 127.0.0.2, both on the same port (a target names one port for all
/// the addresses of its name).
fn spawn_two_backends() -> u16 {
    spawn_two_backends_with(None)
}

/// [`spawn_two_backends`], over TLS with `tls`.
fn spawn_two_backends_with(tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if spawn_backend(Ipv4Addr::new(127, 0, 0, 2), port, tls.clone()).is_ok()
            && spawn_backend(Ipv4Addr::LOCALHOST, port, tls.clone()).is_ok()
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// A gateway resolving through `zone` (kept alive with the returned schema on Postgres).
async fn app(store: Store, zone: &Zone) -> TestApp {
    app_with(store, zone, |_| {}).await
}

/// [`app`] with its settings changed by `tweak` as well.
async fn app_with(store: Store, zone: &Zone, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let resolver = vec![zone.addr.to_string()];
    match store {
        Store::Memory => {
            let mut settings = test_settings();
            settings.dns_resolver = resolver;
            tweak(&mut settings);
            spawn_with(settings).await
        }
        Store::Postgres => {
            let schema = PgSchema::migrated().await;
            let mut settings = schema.settings.clone();
            settings.dns_resolver = resolver;
            tweak(&mut settings);
            let mut app = spawn_with(settings).await;
            app.pg = Some(schema);
            app
        }
    }
}

/// An upstream `name` with `targets` (weight 100 each), a service on it and its route `path`.
async fn balanced(app: &TestApp, name: &str, targets: &[String], path: &str) {
    balanced_with(app, name, targets, path, json!({})).await;
}

/// [`balanced`], the service created with the fields of `service` as well.
async fn balanced_with(app: &TestApp, name: &str, targets: &[String], path: &str, service: Value) {
    let (s, body) = app.admin_post("/upstreams", json!({"name": name})).await;
    assert_eq!(s, 201, "{body}");
    for target in targets {
        let (s, body) = app
            .admin_post(
                &format!("/upstreams/{name}/targets"),
                json!({"target": target, "weight": 100}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let mut fields = json!({"name": name, "host": name});
    if let (Some(all), Some(more)) = (fields.as_object_mut(), service.as_object()) {
        all.extend(more.clone());
    }
    let (s, body) = app.admin_post("/services", fields).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            &format!("/services/{name}/routes"),
            json!({"paths": [path]}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
}

/// Waits until two requests to `path` reach 127.0.0.1 and 127.0.0.2 once each: the name's two
/// addresses are both in the rotation.
async fn both_addresses_served(app: &TestApp, path: &str) {
    eventually(Duration::from_secs(10), "both addresses served", || async {
        let seen = tally(app, path, 2).await;
        (seen.get("127.0.0.1") == Some(&1) && seen.get("127.0.0.2") == Some(&1)).then_some(())
    })
    .await;
}

/// `n` requests to `path`, one after the other: the count of answers by backend address (and
/// `503 <message>` for Kong's refusal).
async fn tally(app: &TestApp, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = app.proxy_get(path).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let key = match status {
            200 => body["address"].as_str().unwrap_or_default().to_string(),
            other => format!("{other} {}", body["message"].as_str().unwrap_or_default()),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

/// D1: a target whose name has two A records is two balancer entries (round-robin alternates
/// exactly between the addresses, each getting `Host: <name>:<port>`); after the answer changes
/// and its one-second TTL passes, traffic follows the new answer; once the name stops resolving,
/// Kong's 503.
async fn d1_a_name_with_two_addresses_follows_its_answer(store: Store) {
    let zone = Zone::spawn();
    let port = spawn_two_backends();
    let (one, two) = (Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2));
    zone.set("api.dns.test", &[one, two]);
    let app = app(store, &zone).await;
    balanced(
        &app,
        "named.up",
        &[format!("api.dns.test:{port}")],
        "/named",
    )
    .await;

    both_addresses_served(&app, "/named").await;
    let seen = tally(&app, "/named", 100).await;
    assert_eq!(
        seen,
        HashMap::from([("127.0.0.1".into(), 50), ("127.0.0.2".into(), 50)])
    );
    let r = app.proxy_get("/named").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["host"], format!("api.dns.test:{port}"));

    zone.set("api.dns.test", &[two]);
    eventually(
        Duration::from_secs(10),
        "traffic follows the new answer",
        || async {
            let seen = tally(&app, "/named", 4).await;
            (seen.get("127.0.0.2") == Some(&4)).then_some(())
        },
    )
    .await;
    assert_eq!(
        tally(&app, "/named", 20).await,
        HashMap::from([("127.0.0.2".into(), 20)])
    );

    zone.remove("api.dns.test");
    eventually(
        Duration::from_secs(10),
        "Kong's 503 once the name fails",
        || async {
            let seen = tally(&app, "/named", 1).await;
            seen.contains_key("503 failure to get a peer from the ring-balancer")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        tally(&app, "/named", 5).await,
        HashMap::from([("503 failure to get a peer from the ring-balancer".into(), 5)])
    );
}

/// D2: a target whose name does not resolve takes no traffic: beside an address target, every
/// request goes to the address; alone, Kong's 503.
async fn d2_a_name_that_does_not_resolve_gets_no_traffic(store: Store) {
    let zone = Zone::spawn();
    let port = spawn_two_backends();
    let app = app(store, &zone).await;
    balanced(
        &app,
        "mixed.up",
        &[
            format!("missing.dns.test:{port}"),
            format!("127.0.0.2:{port}"),
        ],
        "/mixed",
    )
    .await;
    balanced(&app, "lost.up", &[format!("gone.dns.test:{port}")], "/lost").await;

    let refused = HashMap::from([("503 failure to get a peer from the ring-balancer".into(), 5)]);
    eventually(
        Duration::from_secs(10),
        "the unresolved name refused",
        || async { (tally(&app, "/lost", 5).await == refused).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "only the address served",
        || async {
            (tally(&app, "/mixed", 10).await == HashMap::from([("127.0.0.2".into(), 10)]))
                .then_some(())
        },
    )
    .await;
}

/// D3: a service whose own host is a name takes its addresses in turn, with `Host: <name>:<port>`;
/// when the name stops resolving, Kong's `503 name resolution failed`.
async fn d3_a_service_host_name_rotates_over_its_addresses(store: Store) {
    let zone = Zone::spawn();
    let port = spawn_two_backends();
    zone.set(
        "svc.dns.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "svc", "url": format!("http://svc.dns.test:{port}")}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post("/services/svc/routes", json!({"paths": ["/svc"]}))
        .await;
    assert_eq!(s, 201, "{body}");

    both_addresses_served(&app, "/svc").await;
    assert_eq!(
        tally(&app, "/svc", 10).await,
        HashMap::from([("127.0.0.1".into(), 5), ("127.0.0.2".into(), 5)])
    );
    let body: Value = app.proxy_get("/svc").await.json().await.unwrap();
    assert_eq!(body["host"], format!("svc.dns.test:{port}"));

    zone.remove("svc.dns.test");
    eventually(
        Duration::from_secs(10),
        "Kong's 503 once the name fails",
        || async {
            let seen = tally(&app, "/svc", 1).await;
            seen.contains_key("503 name resolution failed")
                .then_some(())
        },
    )
    .await;
    let r = app.proxy_get("/svc").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "name resolution failed");
    assert!(body["request_id"].is_string(), "{body}");
}

/// The test CA as a CA certificate of the gateway's (its id).
async fn trusted(app: &TestApp, ca: &TestCa) -> Value {
    let (s, body) = app
        .admin_post("/ca_certificates", json!({"cert": ca.pem}))
        .await;
    assert_eq!(s, 201, "{body}");
    body["id"].clone()
}

/// One request to `path`: the backend's JSON (the status must be 200).
async fn answer(app: &TestApp, path: &str) -> Value {
    let r = app.proxy_get(path).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

/// D4: an `https` upstream whose target is a name with two A records: each address gets its
/// share (the name is resolved by the test's DNS server only, never by the system's), and each
/// connection asks for the name as TLS server name and verifies the backend's certificate,
/// which names no address, against it (`tls_verify` with the test's CA). A backend presenting
/// a certificate for another name is refused.
async fn d4_https_targets_by_name_go_to_each_address_verified_by_name(store: Store) {
    let zone = Zone::spawn();
    let ca = TestCa::new();
    let port = spawn_two_backends_with(Some(ca.server("tls.dns.test")));
    let wrong = spawn_two_backends_with(Some(ca.server("other.dns.test")));
    zone.set(
        "tls.dns.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    let ca_id = trusted(&app, &ca).await;
    let tls =
        json!({"protocol": "https", "port": 443, "tls_verify": true, "ca_certificates": [ca_id]});
    balanced_with(
        &app,
        "tls.up",
        &[format!("tls.dns.test:{port}")],
        "/tls",
        tls.clone(),
    )
    .await;
    balanced_with(
        &app,
        "wrong.up",
        &[format!("tls.dns.test:{wrong}")],
        "/wrong",
        tls,
    )
    .await;

    both_addresses_served(&app, "/tls").await;
    assert_eq!(
        tally(&app, "/tls", 20).await,
        HashMap::from([("127.0.0.1".into(), 10), ("127.0.0.2".into(), 10)])
    );
    for _ in 0..2 {
        let body = answer(&app, "/tls").await;
        assert_eq!(body["sni"], "tls.dns.test", "{body}");
        assert_eq!(body["host"], format!("tls.dns.test:{port}"), "{body}");
    }
    let r = app.proxy_get("/wrong").await;
    assert_eq!(r.status(), 502);
}

/// D5: a service whose own host is a name, over `https`: its addresses in turn, each connection
/// verified against the name.
async fn d5_an_https_service_host_name_rotates_verified_by_name(store: Store) {
    let zone = Zone::spawn();
    let ca = TestCa::new();
    let port = spawn_two_backends_with(Some(ca.server("svc.tls.test")));
    zone.set(
        "svc.tls.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    let ca_id = trusted(&app, &ca).await;
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "svc", "url": format!("https://svc.tls.test:{port}"),
                   "tls_verify": true, "ca_certificates": [ca_id]}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post("/services/svc/routes", json!({"paths": ["/svc"]}))
        .await;
    assert_eq!(s, 201, "{body}");

    both_addresses_served(&app, "/svc").await;
    assert_eq!(
        tally(&app, "/svc", 10).await,
        HashMap::from([("127.0.0.1".into(), 5), ("127.0.0.2".into(), 5)])
    );
    let body = answer(&app, "/svc").await;
    assert_eq!(body["sni"], "svc.tls.test", "{body}");
    assert_eq!(body["host"], format!("svc.tls.test:{port}"), "{body}");
}

/// D6: a `grpc` service whose host is a name only the test's DNS server knows: calls reach the
/// tonic server at the address it resolved to.
async fn d6_a_grpc_service_by_name_reaches_its_address(store: Store) {
    let zone = Zone::spawn();
    let grpc_port = crate::echo_servers::spawn_grpc_upstream();
    zone.set("grpc.dns.test", &[Ipv4Addr::LOCALHOST]);
    let app = app_with(store, &zone, |settings| {
        settings.proxy_listen = "127.0.0.1:0 http2".into();
    })
    .await;
    crate::grpc::expose_echo(&app, "echo", &format!("grpc://grpc.dns.test:{grpc_port}")).await;
    let mut grpc = crate::grpc::client(&app.proxy);
    let echoed = eventually(Duration::from_secs(10), "the call answered", || async {
        crate::grpc::unary(
            &mut grpc.clone(),
            "Unary",
            bytes::Bytes::from_static(b"ping"),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(&echoed[..], b"ping");
    let again = crate::grpc::unary(&mut grpc, "Unary", bytes::Bytes::from_static(b"pong"))
        .await
        .unwrap();
    assert_eq!(&again[..], b"pong");
}

/// The target `target` of `upstream` in `/upstreams/{upstream}/health`.
async fn health_row(app: &TestApp, upstream: &str, target: &str) -> Value {
    let (s, body) = app
        .admin_get(&format!("/upstreams/{upstream}/health"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body["node_id"].is_string(), "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("{target} in {body}"))
}

/// The target's row of the upstream's health, after checking each address's health in it.
async fn addresses_are(
    app: &TestApp,
    upstream: &str,
    target: &str,
    expected: &[(&String, &str)],
) -> Value {
    let row = health_row(app, upstream, target).await;
    let expected: HashMap<String, String> = expected
        .iter()
        .map(|(address, health)| ((*address).clone(), (*health).to_string()))
        .collect();
    assert_eq!(address_health(&row), expected, "{row}");
    row
}

/// Each address of a health row with its health, by `ip:port`.
fn address_health(row: &Value) -> HashMap<String, String> {
    row["data"]["addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("addresses in {row}"))
        .iter()
        .map(|a| {
            (
                format!("{}:{}", a["ip"].as_str().unwrap(), a["port"]),
                a["health"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Passive checks failing an address at its first connection failure, with `successes` to
/// bring it back.
fn passive_checks() -> Value {
    json!({"healthchecks": {"passive": {
        "healthy": {"successes": 1},
        "unhealthy": {"tcp_failures": 1, "http_failures": 1, "timeouts": 1},
    }}})
}

/// H1: health is kept per address, as Kong keeps it: a target whose name resolves to a live
/// backend and to an address where nothing listens loses only the dead address at its first
/// connection failure (the request is retried on the live one); `/upstreams/{u}/health` lists
/// both addresses under `data.addresses`, each with its own health, and the target as
/// `HEALTHY` (one address is), with Kong's weights.
async fn h1_a_dead_address_of_a_name_fails_alone(store: Store) {
    let zone = Zone::spawn();
    let port = spawn_two_backends();
    // Nothing listens on 127.0.0.3.
    zone.set(
        "half.dns.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 3)],
    );
    let app = app(store, &zone).await;
    let (s, body) = app
        .admin_post("/upstreams", {
            let mut up = passive_checks();
            up["name"] = json!("half.up");
            up
        })
        .await;
    assert_eq!(s, 201, "{body}");
    let target = format!("half.dns.test:{port}");
    let (s, body) = app
        .admin_post(
            "/upstreams/half.up/targets",
            json!({"target": target, "weight": 100}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "half", "host": "half.up", "retries": 2}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post("/services/half/routes", json!({"paths": ["/half"]}))
        .await;
    assert_eq!(s, 201, "{body}");
    let (live, dead) = (format!("127.0.0.1:{port}"), format!("127.0.0.3:{port}"));
    eventually(Duration::from_secs(10), "both addresses listed", || async {
        let row = health_row(&app, "half.up", &target).await;
        (address_health(&row).len() == 2).then_some(())
    })
    .await;

    assert_eq!(
        tally(&app, "/half", 20).await,
        HashMap::from([("127.0.0.1".into(), 20)])
    );
    let row = addresses_are(
        &app,
        "half.up",
        &target,
        &[(&live, "HEALTHY"), (&dead, "UNHEALTHY")],
    )
    .await;
    assert_eq!(row["health"], "HEALTHY", "{row}");
    assert_eq!(row["data"]["host"], "half.dns.test", "{row}");
    assert_eq!(row["data"]["port"], port, "{row}");
    assert_eq!(row["data"]["dns"], "A", "{row}");
    assert_eq!(row["data"]["nodeWeight"], 100, "{row}");
    assert_eq!(
        row["data"]["weight"],
        json!({"total": 200, "available": 100, "unavailable": 100}),
        "{row}"
    );
}

/// H2: `…/targets/{t}/{address}/unhealthy` and `…/healthy` set one address of a name; without
/// an address, every address of the target; an address the target does not have is Kong's
/// `400 target not found`.
async fn h2_one_address_is_set_by_hand(store: Store) {
    let zone = Zone::spawn();
    let port = spawn_two_backends();
    zone.set(
        "pair.dns.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    let target = format!("pair.dns.test:{port}");
    balanced_with(
        &app,
        "pair.up",
        std::slice::from_ref(&target),
        "/pair",
        json!({}),
    )
    .await;
    let (s, body) = app
        .admin_patch("/upstreams/pair.up", passive_checks())
        .await;
    assert_eq!(s, 200, "{body}");
    both_addresses_served(&app, "/pair").await;
    let (one, two) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let base = format!("/upstreams/pair.up/targets/{target}");

    let (s, body) = app
        .admin_put(&format!("{base}/{two}/unhealthy"), json!({}))
        .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(
        tally(&app, "/pair", 10).await,
        HashMap::from([("127.0.0.1".into(), 10)])
    );
    let row = addresses_are(
        &app,
        "pair.up",
        &target,
        &[(&one, "HEALTHY"), (&two, "UNHEALTHY")],
    )
    .await;
    assert_eq!(row["health"], "HEALTHY", "{row}");

    let (s, body) = app
        .admin_put(&format!("{base}/{two}/healthy"), json!({}))
        .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(
        tally(&app, "/pair", 10).await,
        HashMap::from([("127.0.0.1".into(), 5), ("127.0.0.2".into(), 5)])
    );

    let (s, body) = app.admin_put(&format!("{base}/unhealthy"), json!({})).await;
    assert_eq!(s, 204, "{body}");
    let row = health_row(&app, "pair.up", &target).await;
    assert_eq!(row["health"], "UNHEALTHY", "{row}");
    assert_eq!(
        address_health(&row),
        HashMap::from([
            (one.clone(), "UNHEALTHY".to_string()),
            (two.clone(), "UNHEALTHY".to_string())
        ]),
        "{row}"
    );
    assert_eq!(
        tally(&app, "/pair", 3).await,
        HashMap::from([("503 failure to get a peer from the ring-balancer".into(), 3)])
    );

    let (s, body) = app
        .admin_put(&format!("{base}/127.0.0.9:{port}/healthy"), json!({}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body, json!({"message": "target not found"}));
}

/// Kong's `add_targets`: four targets `fmt` with `%d` = 1…4, weight 10 each.
async fn add_targets(app: &TestApp, upstream: &str, fmt: &str) -> Vec<Value> {
    let mut targets = Vec::new();
    for i in 1..=4 {
        let (s, body) = app
            .admin_post(
                &format!("/upstreams/{upstream}/targets"),
                json!({"target": fmt.replace("%d", &i.to_string()), "weight": 10}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        targets.push(body);
    }
    targets
}

/// Kong's `check_health_endpoint`: with and without a trailing slash, 200 with the node's id,
/// `n` targets, `targets` among them, and `health` on every target that has addresses and on
/// each of its addresses. (Kong also asserts the order of the rows, which follows its
/// database's; ours are in id order.) Returns why the health is not yet `health`, for polling.
async fn check_health_endpoint(
    app: &TestApp,
    upstream: &str,
    targets: &[Value],
    n: usize,
    health: &str,
) -> Result<(), String> {
    let (_, root) = app.admin_get("/").await;
    for append in ["", "/"] {
        let (s, res) = app
            .admin_get(&format!("/upstreams/{upstream}/health{append}"))
            .await;
        assert_eq!(s, 200, "{res}");
        assert_eq!(res["node_id"], root["node_id"], "{res}");
        let data = res["data"].as_array().unwrap();
        assert_eq!(data.len(), n, "{res}");
        for target in targets {
            assert!(
                data.iter()
                    .any(|row| row["id"] == target["id"] && row["target"] == target["target"]),
                "{target} in {res}"
            );
        }
        for row in data {
            if let Some(addresses) = row["data"]["addresses"].as_array() {
                for address in addresses {
                    if address["health"] != health {
                        return Err(format!("{address} is not {health} in {res}"));
                    }
                }
                if row["health"] != health {
                    return Err(format!("{row} is not {health}"));
                }
            }
        }
    }
    Ok(())
}

/// Polls [`check_health_endpoint`] until it holds (Kong's `pwait_until`, 15 s).
async fn wait_health(app: &TestApp, upstream: &str, targets: &[Value], n: usize, health: &str) {
    let what = format!("every target and address of {upstream} {health}");
    eventually(Duration::from_secs(15), &what, || async {
        check_health_endpoint(app, upstream, targets, n, health)
            .await
            .ok()
    })
    .await;
}

/// A gateway for Kong's health endpoint cases: `custom_localhost` (Kong's hosts-file mock)
/// resolves to 127.0.0.1 through the test's DNS server; `bad-*` names do not resolve.
async fn health_gateway(store: Store) -> (Zone, TestApp) {
    let zone = Zone::spawn();
    zone.set("custom_localhost", &[Ipv4Addr::LOCALHOST]);
    let app = app(store, &zone).await;
    (zone, app)
}

/// Kong's `before_each`: a fresh upstream, and with `on`, the passive checks Kong's *with
/// healthchecks on* cases PATCH in.
async fn health_upstream(app: &TestApp, name: &str, on: bool) {
    let (s, body) = app.admin_post("/upstreams", json!({"name": name})).await;
    assert_eq!(s, 201, "{body}");
    if on {
        let (s, body) = app
            .admin_patch(
                &format!("/upstreams/{name}"),
                json!({"healthchecks": {"passive": {
                    "healthy": {"successes": 1},
                    "unhealthy": {"tcp_failures": 1, "http_failures": 1, "timeouts": 1},
                }}}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
}

/// K1 (`08-targets_routes_spec` /upstreams/{upstream}/health/, healthchecks off): *returns
/// HEALTHCHECKS_OFF for targets that resolve*.
async fn k1_healthchecks_off_for_targets_that_resolve(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k1-health", false).await;
    add_targets(&app, "k1-health", "127.0.0.1:8%d").await;
    let targets = add_targets(&app, "k1-health", "custom_localhost:8%d").await;
    wait_health(&app, "k1-health", &targets, 8, "HEALTHCHECKS_OFF").await;
    // Each name's address is the one it resolved to.
    let (_, res) = app.admin_get("/upstreams/k1-health/health").await;
    for row in res["data"].as_array().unwrap() {
        assert_eq!(row["data"]["addresses"][0]["ip"], "127.0.0.1", "{row}");
    }
}

/// K2 (healthchecks off): *returns DNS_ERROR if DNS cannot be resolved*.
async fn k2_healthchecks_off_dns_error(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k2-health", false).await;
    let targets = add_targets(&app, "k2-health", "bad-health-target-%d:80").await;
    wait_health(&app, "k2-health", &targets, 4, "DNS_ERROR").await;
}

/// K3 (healthchecks on): *returns DNS_ERROR if DNS cannot be resolved*.
async fn k3_healthchecks_on_dns_error(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k3-health", true).await;
    let targets = add_targets(&app, "k3-health", "bad-target-%d:80").await;
    wait_health(&app, "k3-health", &targets, 4, "DNS_ERROR").await;
}

/// K4 (healthchecks on): *returns HEALTHY if failure not detected*.
async fn k4_healthchecks_on_healthy(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k4-health", true).await;
    let targets = add_targets(&app, "k4-health", "custom_localhost:222%d").await;
    wait_health(&app, "k4-health", &targets, 4, "HEALTHY").await;
}

/// K5 (healthchecks on): *returns UNHEALTHY if failure detected* (active checks, nothing
/// listening on the targets' ports).
async fn k5_healthchecks_on_unhealthy(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k5-health", true).await;
    let targets = add_targets(&app, "k5-health", "custom_localhost:222%d").await;
    let (s, body) = app
        .admin_put(
            "/upstreams/k5-health",
            json!({"healthchecks": {"active": {
                "healthy": {"interval": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1},
            }}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    wait_health(&app, "k5-health", &targets, 4, "UNHEALTHY").await;
}

/// K6 (healthchecks on): *returns HEALTHCHECKS_OFF for target with weight 0* and *return
/// HEALTHY if weight of target turns from zero to non-zero*.
async fn k6_weight_zero_is_healthchecks_off_until_it_is_not(store: Store) {
    let (_zone, app) = health_gateway(store).await;
    health_upstream(&app, "k6-health", true).await;
    let (s, body) = app
        .admin_post(
            "/upstreams/k6-health/targets",
            json!({"target": "custom_localhost:2221", "weight": 0}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let addresses_are = |health: &'static str| {
        let app = &app;
        async move {
            let (s, res) = app.admin_get("/upstreams/k6-health/health").await;
            assert_eq!(s, 200, "{res}");
            assert_eq!(res["data"].as_array().unwrap().len(), 1, "{res}");
            let addresses = res["data"][0]["data"]["addresses"].as_array().unwrap();
            (!addresses.is_empty() && addresses.iter().all(|a| a["health"] == health)).then_some(())
        }
    };
    eventually(
        Duration::from_secs(15),
        "HEALTHCHECKS_OFF at weight 0",
        || addresses_are("HEALTHCHECKS_OFF"),
    )
    .await;
    let (s, body) = app
        .admin_patch(
            "/upstreams/k6-health/targets/custom_localhost:2221",
            json!({"weight": 10}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    eventually(Duration::from_secs(15), "HEALTHY at weight 10", || {
        addresses_are("HEALTHY")
    })
    .await;
}

/// A free port on `ip`, with the echo backend listening on it.
fn backend_on(ip: Ipv4Addr) -> u16 {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if spawn_backend(ip, port, None).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// S1: a target whose name has SRV records (Kong's `dns_order` asks for SRV first) balances
/// over the records of the best priority, each with its own port and weight (a record of a
/// lower priority gets nothing), `Host` being the target's name with the record's port; the
/// health endpoint lists each SRV address with its port and weight, `dns` `SRV`.
async fn s1_a_name_with_srv_records_balances_over_their_ports_and_weights(store: Store) {
    let zone = Zone::spawn();
    let (one, two) = (Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2));
    let (port_one, port_two) = (backend_on(one), backend_on(two));
    let unused = crate::helpers::dead_port();
    zone.set("one.srv.test", &[one]);
    zone.set("two.srv.test", &[two]);
    zone.set("three.srv.test", &[one]);
    zone.set_srv(
        "api.srv.test",
        &[
            (10, 30, port_one, "one.srv.test"),
            (10, 10, port_two, "two.srv.test"),
            (20, 50, unused, "three.srv.test"),
        ],
    );
    let app = app(store, &zone).await;
    let target = "api.srv.test:80".to_string();
    balanced(&app, "srv.up", std::slice::from_ref(&target), "/srv").await;

    eventually(
        Duration::from_secs(10),
        "both SRV targets served",
        || async {
            let seen = tally(&app, "/srv", 4).await;
            (seen.get("127.0.0.1") == Some(&3) && seen.get("127.0.0.2") == Some(&1)).then_some(())
        },
    )
    .await;
    assert_eq!(
        tally(&app, "/srv", 40).await,
        HashMap::from([("127.0.0.1".into(), 30), ("127.0.0.2".into(), 10)])
    );
    let mut hosts = std::collections::HashSet::new();
    for _ in 0..4 {
        let body = answer(&app, "/srv").await;
        hosts.insert(body["host"].as_str().unwrap().to_string());
    }
    assert_eq!(
        hosts,
        std::collections::HashSet::from([
            format!("api.srv.test:{port_one}"),
            format!("api.srv.test:{port_two}")
        ])
    );

    let row = health_row(&app, "srv.up", &target).await;
    assert_eq!(row["data"]["dns"], "SRV", "{row}");
    let mut addresses: Vec<(String, u64, u64)> = row["data"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["ip"].as_str().unwrap().to_string(),
                a["port"].as_u64().unwrap(),
                a["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    addresses.sort();
    assert_eq!(
        addresses,
        vec![
            ("127.0.0.1".to_string(), u64::from(port_one), 30),
            ("127.0.0.2".to_string(), u64::from(port_two), 10),
        ],
        "{row}"
    );
    assert_eq!(
        row["data"]["weight"],
        json!({"total": 40, "available": 40, "unavailable": 0}),
        "{row}"
    );
}

/// Kong's `bu.add_upstream` with passive checks failing an address at its first connection
/// failure, a target `target` and `bu.add_api` (a service on the upstream, `connect_timeout`
/// 100 ms, and its route `path`).
async fn failing_upstream(app: &TestApp, name: &str, target: &str, path: &str, extra: Value) {
    let mut upstream = json!({"name": name, "healthchecks": {"passive": {
        "unhealthy": {"tcp_failures": 1},
    }}});
    if let (Some(all), Some(more)) = (upstream.as_object_mut(), extra.as_object()) {
        all.extend(more.clone());
    }
    let (s, body) = app.admin_post("/upstreams", upstream).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            &format!("/upstreams/{name}/targets"),
            json!({"target": target}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": name, "host": name, "connect_timeout": 100}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            &format!("/services/{name}/routes"),
            json!({"paths": [path]}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    // Kong resolves a target when it is added; here the first answer arrives in the
    // background, and requests sent before it would go to the name itself.
    eventually(Duration::from_secs(10), "the target resolved", || async {
        let row = first_health(app, name).await;
        let addresses = row["data"]["addresses"].as_array()?;
        let resolved = |a: &Value| text(&a["ip"]).parse::<IpAddr>().is_ok();
        (!addresses.is_empty() && addresses.iter().all(resolved)).then_some(())
    })
    .await;
}

/// Kong's `bu.client_requests(bu.SLOTS, …)` against servers that refuse connections: none of
/// the 10 requests succeeds, and the last is Kong's 503.
async fn all_requests_fail(app: &TestApp, path: &str) {
    eventually(Duration::from_secs(15), "every request refused", || async {
        let mut last = 0;
        let mut oks = 0;
        for _ in 0..10 {
            last = app.proxy_get(path).await.status().as_u16();
            oks += usize::from(last == 200);
        }
        (oks == 0 && last == 503).then_some(())
    })
    .await;
}

/// The first target's row of `/upstreams/{upstream}/health`.
async fn first_health(app: &TestApp, upstream: &str) -> Value {
    let (s, body) = app
        .admin_get(&format!("/upstreams/{upstream}/health"))
        .await;
    assert_eq!(s, 200, "{body}");
    body["data"][0].clone()
}

/// Polls until the first target's health is `target` and its addresses' are `addresses` (in
/// order, with their ips).
async fn wait_addresses(app: &TestApp, upstream: &str, target: &str, addresses: &[(&str, &str)]) {
    eventually(Duration::from_secs(15), target, || async {
        let row = first_health(app, upstream).await;
        let seen: Vec<(String, String)> = row["data"]["addresses"]
            .as_array()?
            .iter()
            .map(|a| (text(&a["ip"]), text(&a["health"])))
            .collect();
        let want: Vec<(String, String)> = addresses
            .iter()
            .map(|(ip, h)| (ip.to_string(), h.to_string()))
            .collect();
        (row["health"] == target && seen == want).then_some(())
    })
    .await;
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// P1 (`05-proxy/10-balancer/01-healthchecks_spec`): *2-level dns sets the proper
/// health-check* — an SRV target whose record's target name resolves to an address that
/// refuses connections: every request fails, the last with Kong's 503, and the target is
/// `UNHEALTHY`. (Kong's SRV record points at port 80, where nothing is expected to listen;
/// here a port known free.)
async fn p1_two_level_dns_sets_the_proper_health_check(store: Store) {
    let zone = Zone::spawn();
    let dead = crate::helpers::dead_port();
    zone.set_srv(
        "_srv._pro.my.srv.test.test",
        &[(10, 10, dead, "a.my.srv.test.test")],
    );
    zone.set("a.my.srv.test.test", &[Ipv4Addr::LOCALHOST]);
    let app = app(store, &zone).await;
    failing_upstream(
        &app,
        "p1.up",
        "_srv._pro.my.srv.test.test:80",
        "/p1",
        json!({}),
    )
    .await;
    all_requests_fail(&app, "/p1").await;
    eventually(Duration::from_secs(15), "UNHEALTHY", || async {
        (first_health(&app, "p1.up").await["health"] == "UNHEALTHY").then_some(())
    })
    .await;
}

/// P2: *a target that resolves to 2 IPs reports health separately* (with `host_header` set
/// too, Kong's next case): both addresses fail; setting one address healthy makes it and the
/// target `HEALTHY`, the other staying `UNHEALTHY`; setting it unhealthy again, all are.
/// (Kong's target port is 80; here a port known free on both addresses.)
async fn p2_a_target_that_resolves_to_2_ips_reports_health_separately(store: Store) {
    let zone = Zone::spawn();
    let dead = crate::helpers::dead_port();
    zone.set(
        "multiple-ips.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    for (name, extra) in [
        ("p2.up", json!({})),
        (
            "p2-host.up",
            json!({"host_header": "another.multiple-ips.test"}),
        ),
    ] {
        let path = format!("/{name}");
        let target = format!("multiple-ips.test:{dead}");
        failing_upstream(&app, name, &target, &path, extra).await;
        all_requests_fail(&app, &path).await;
        let one = [("127.0.0.1", "UNHEALTHY"), ("127.0.0.2", "UNHEALTHY")];
        wait_addresses(&app, name, "UNHEALTHY", &one).await;

        let address = format!("/upstreams/{name}/targets/{target}/127.0.0.2:{dead}");
        let (s, body) = app
            .admin_put(&format!("{address}/healthy"), json!({}))
            .await;
        assert_eq!(s, 204, "{body}");
        let two = [("127.0.0.1", "UNHEALTHY"), ("127.0.0.2", "HEALTHY")];
        wait_addresses(&app, name, "HEALTHY", &two).await;

        let (s, body) = app
            .admin_put(&format!("{address}/unhealthy"), json!({}))
            .await;
        assert_eq!(s, 204, "{body}");
        wait_addresses(&app, name, "UNHEALTHY", &one).await;
    }
}

/// P3: *a target that resolves to an SRV record that changes port*: the SRV record's port is
/// the address's; the address fails, and setting it healthy by the record's target name and
/// port (Kong's `…/{target}/a-changes-port.test:90/healthy`) brings it back. Kong lists the
/// address under the record's target name; here under the address that name resolved to.
async fn p3_a_target_that_resolves_to_an_srv_record_that_changes_port(store: Store) {
    let zone = Zone::spawn();
    let dead = crate::helpers::dead_port();
    zone.set_srv(
        "_srv._pro.srv-changes-port.test",
        &[(10, 10, dead, "a-changes-port.test")],
    );
    zone.set("a-changes-port.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
    let app = app(store, &zone).await;
    let target = "_srv._pro.srv-changes-port.test:80";
    failing_upstream(&app, "p3.up", target, "/p3", json!({})).await;
    all_requests_fail(&app, "/p3").await;
    wait_addresses(&app, "p3.up", "UNHEALTHY", &[("127.0.0.3", "UNHEALTHY")]).await;
    let row = first_health(&app, "p3.up").await;
    assert_eq!(row["data"]["addresses"][0]["port"], dead, "{row}");

    let (s, body) = app
        .admin_put(
            &format!("/upstreams/p3.up/targets/{target}/a-changes-port.test:{dead}/healthy"),
            json!({}),
        )
        .await;
    assert_eq!(s, 204, "{body}");
    wait_addresses(&app, "p3.up", "HEALTHY", &[("127.0.0.3", "HEALTHY")]).await;
    let row = first_health(&app, "p3.up").await;
    assert_eq!(row["data"]["addresses"][0]["port"], dead, "{row}");
}

/// P4: *a target that has healthchecks disabled*: the target and its address are
/// `HEALTHCHECKS_OFF`; the balancer's health is `HEALTHCHECKS_OFF` with `balancer_health`
/// `HEALTHY`.
async fn p4_a_target_that_has_healthchecks_disabled(store: Store) {
    let zone = Zone::spawn();
    zone.set(
        "multiple-ips.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
    );
    let app = app(store, &zone).await;
    failing_upstream(
        &app,
        "p4.up",
        "multiple-ips.test:80",
        "/p4",
        json!({"healthchecks": {
            "passive": {"unhealthy": {"http_failures": 0, "tcp_failures": 0, "timeouts": 0}},
            "active": {"healthy": {"interval": 0}, "unhealthy": {"interval": 0}},
        }}),
    )
    .await;
    let row = first_health(&app, "p4.up").await;
    assert_eq!(row["health"], "HEALTHCHECKS_OFF", "{row}");
    assert_eq!(
        row["data"]["addresses"][0]["health"], "HEALTHCHECKS_OFF",
        "{row}"
    );
    let (s, balancer) = app
        .admin_get("/upstreams/p4.up/health?balancer_health=1")
        .await;
    assert_eq!(s, 200, "{balancer}");
    assert_eq!(balancer["data"]["health"], "HEALTHCHECKS_OFF", "{balancer}");
    assert_eq!(balancer["data"]["balancer_health"], "HEALTHY", "{balancer}");
}

/// S2: `use_srv_name` (Kong's upstream setting): `Host` is the SRV record's target name with
/// the record's port; without it, the target's name.
async fn s2_use_srv_name_sends_the_records_target_as_host(store: Store) {
    let zone = Zone::spawn();
    let port = backend_on(Ipv4Addr::LOCALHOST);
    zone.set("backend.srv.test", &[Ipv4Addr::LOCALHOST]);
    zone.set_srv("named.srv.test", &[(1, 1, port, "backend.srv.test")]);
    let app = app(store, &zone).await;
    for (name, use_srv_name, host) in [
        ("srv-name.up", true, format!("backend.srv.test:{port}")),
        ("target-name.up", false, format!("named.srv.test:{port}")),
    ] {
        let (s, body) = app
            .admin_post(
                "/upstreams",
                json!({"name": name, "use_srv_name": use_srv_name}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["use_srv_name"], use_srv_name, "{body}");
        let (s, body) = app
            .admin_post(
                &format!("/upstreams/{name}/targets"),
                json!({"target": "named.srv.test:80"}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        let (s, body) = app
            .admin_post("/services", json!({"name": name, "host": name}))
            .await;
        assert_eq!(s, 201, "{body}");
        let (s, body) = app
            .admin_post(
                &format!("/services/{name}/routes"),
                json!({"paths": [format!("/{name}")]}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        let path = format!("/{name}");
        let body = eventually(Duration::from_secs(10), "the SRV record served", || async {
            let r = app.proxy_get(&path).await;
            if r.status() != 200 {
                return None;
            }
            r.json::<Value>().await.ok()
        })
        .await;
        assert_eq!(body["host"], host, "{body}");
    }
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Postgres).await;
                }
            )*
        }
    };
}

on_every_store!(
    d1_a_name_with_two_addresses_follows_its_answer,
    d2_a_name_that_does_not_resolve_gets_no_traffic,
    d3_a_service_host_name_rotates_over_its_addresses,
    d4_https_targets_by_name_go_to_each_address_verified_by_name,
    d5_an_https_service_host_name_rotates_verified_by_name,
    d6_a_grpc_service_by_name_reaches_its_address,
    h1_a_dead_address_of_a_name_fails_alone,
    h2_one_address_is_set_by_hand,
    k1_healthchecks_off_for_targets_that_resolve,
    k2_healthchecks_off_dns_error,
    k3_healthchecks_on_dns_error,
    k4_healthchecks_on_healthy,
    k5_healthchecks_on_unhealthy,
    k6_weight_zero_is_healthchecks_off_until_it_is_not,
    s1_a_name_with_srv_records_balances_over_their_ports_and_weights,
    s2_use_srv_name_sends_the_records_target_as_host,
    p1_two_level_dns_sets_the_proper_health_check,
    p2_a_target_that_resolves_to_2_ips_reports_health_separately,
    p3_a_target_that_resolves_to_an_srv_record_that_changes_port,
    p4_a_target_that_has_healthchecks_disabled,
);

#[test]
fn dns_resolver_entries_are_checked() {
    let mut settings = test_settings();
    settings.dns_resolver = vec![
        "127.0.0.1:5353".into(),
        "10.0.0.1".into(),
        "[::1]:53".into(),
    ];
    let servers: Vec<SocketAddr> = settings.dns_servers().unwrap();
    assert_eq!(
        servers,
        vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, 5353)),
            SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 53)),
            SocketAddr::from((IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 53)),
        ]
    );
    settings.dns_resolver = vec!["ns.example:53".into()];
    assert_eq!(
        settings.dns_servers().unwrap_err().to_string(),
        "invalid value for `dns_resolver`: invalid name server 'ns.example:53': expected ip or ip:port ([ip]:port for IPv6)"
    );
}
