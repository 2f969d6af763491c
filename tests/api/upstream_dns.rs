//! Upstream targets and services written as host names, resolved through a DNS server the test
//! runs itself (`dns_resolver` names it), on the memory store and on Postgres. Kong's behaviour
//! (`kong/runloop/balancer/targets.lua`, `balancers.lua`): each A record of a target's name is
//! one balancer address with the target's weight and the name as `Host`; the name is resolved
//! again when its TTL runs out; a name that does not resolve adds no address, and an upstream
//! left without any answers `503 failure to get a peer from the ring-balancer`. A service's own
//! host name (`balancer/init.lua`, `toip`) rotates over its addresses, and answers
//! `503 name resolution failed` when it does not resolve.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_with, test_settings, PgSchema, TestApp};

/// Which store the gateway runs on.
#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Postgres,
}

/// A DNS server answering A queries from a table the test changes, every record with a TTL of
/// one second; names not in the table answer NXDOMAIN.
struct Zone {
    addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
}

impl Zone {
    fn spawn() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
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

    fn answer(query: &Message, table: &HashMap<String, Vec<Ipv4Addr>>) -> Message {
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
            match table.get(&name) {
                None => answer.metadata.response_code = ResponseCode::NXDomain,
                Some(list) if q.query_type() == RecordType::A => {
                    for ip in list {
                        answer.add_answer(Record::from_rdata(
                            q.name().clone(),
                            1,
                            RData::A(A(*ip)),
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        answer
    }

    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), ips.to_vec());
    }

    fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }
}

/// Starts an HTTP server on `ip:port` answering every request with the address it was reached
/// on and the `Host` it got.
fn spawn_backend(ip: Ipv4Addr, port: u16) -> std::io::Result<()> {
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
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| async move {
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = json!({"address": ip.to_string(), "host": host});
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body.to_string())),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Ok(())
}

/// Backends on 127.0.0.1 and 127.0.0.2, both on the same port (a target names one port for all
/// the addresses of its name).
fn spawn_two_backends() -> u16 {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if spawn_backend(Ipv4Addr::new(127, 0, 0, 2), port).is_ok()
            && spawn_backend(Ipv4Addr::LOCALHOST, port).is_ok()
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// A gateway resolving through `zone` (kept alive with the returned schema on Postgres).
async fn app(store: Store, zone: &Zone) -> TestApp {
    let resolver = vec![zone.addr.to_string()];
    match store {
        Store::Memory => {
            let mut settings = test_settings();
            settings.dns_resolver = resolver;
            spawn_with(settings).await
        }
        Store::Postgres => {
            let schema = PgSchema::migrated().await;
            let mut settings = schema.settings.clone();
            settings.dns_resolver = resolver;
            let mut app = spawn_with(settings).await;
            app.pg = Some(schema);
            app
        }
    }
}

/// An upstream `name` with `targets` (weight 100 each), a service on it and its route `path`.
async fn balanced(app: &TestApp, name: &str, targets: &[String], path: &str) {
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
    let (s, body) = app
        .admin_post("/services", json!({"name": name, "host": name}))
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = app
        .admin_post(
            &format!("/services/{name}/routes"),
            json!({"paths": [path]}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
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

    eventually(Duration::from_secs(10), "both addresses served", || async {
        let seen = tally(&app, "/named", 2).await;
        (seen.get("127.0.0.1") == Some(&1) && seen.get("127.0.0.2") == Some(&1)).then_some(())
    })
    .await;
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

    eventually(Duration::from_secs(10), "both addresses served", || async {
        let seen = tally(&app, "/svc", 2).await;
        (seen.get("127.0.0.1") == Some(&1) && seen.get("127.0.0.2") == Some(&1)).then_some(())
    })
    .await;
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
