//! Router micro-bench: time to match a request against a snapshot of 10 vs 10,000
//! routes, built the way the config registry builds it (`CompiledRoute::compile`, then
//! `RouterSnapshot::build`).
//!
//! ```text
//! cargo bench --bench router
//! ```

// Benches abort on setup failure; a route that does not compile is such a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use portcullis::entities::Route;
use portcullis::router::{CompiledRoute, MatchInput, RouterSnapshot, SnapshotParts};
use serde_json::json;

/// `n` routes: every tenth has a host, every seventh a method list, the rest a path prefix only
/// (`/svc{i}/`), so the snapshot is sorted the way a real mixed table is.
fn snapshot(n: usize) -> RouterSnapshot {
    let routes = (0..n)
        .map(|i| {
            let mut doc = json!({
                "id": uuid::Uuid::new_v4(),
                "name": format!("r{i}"),
                "created_at": 1_700_000_000 + i as i64,
                "protocols": ["http", "https"],
                "paths": [format!("/svc{i}/")],
                "https_redirect_status_code": 426,
                "regex_priority": 0,
                "strip_path": true,
                "preserve_host": false,
            });
            if i % 10 == 0 {
                doc["hosts"] = json!([format!("h{i}.example.com")]);
            }
            if i % 7 == 0 {
                doc["methods"] = json!(["GET", "POST"]);
            }
            let route: Route = serde_json::from_value(doc).expect("route document");
            Arc::new(CompiledRoute::compile(route).expect("route compiles"))
        })
        .collect();
    let services = HashMap::new();
    RouterSnapshot::build(SnapshotParts {
        routes,
        services: &services,
        chains: HashMap::new(),
        global: Default::default(),
        identities: Default::default(),
        upstreams: &HashMap::new(),
        targets: &HashMap::new(),
        rotations: &HashMap::new(),
        health: &Default::default(),
        dns: &HashMap::new(),
        upstream_tls: &HashMap::new(),
        version: 1,
    })
}

fn no_header(_: &str) -> Option<String> {
    None
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_find");
    for n in [10usize, 10_000] {
        let snap = snapshot(n);
        // First, middle and last route by index, a path-only route, and a miss.
        let cases = [
            ("hit_first", "/svc1/items".to_string()),
            ("hit_middle", format!("/svc{}/items", n / 2 + 1)),
            ("hit_last", format!("/svc{}/items", n - 1)),
            ("miss", "/nowhere/items".to_string()),
        ];
        for (case, path) in cases {
            let found = snap
                .find(&MatchInput {
                    sni: None,
                    method: &Method::GET,
                    host: "api.example.com",
                    host_with_port: "api.example.com:8000",
                    path: &path,
                    header: &no_header,
                })
                .is_some();
            assert_eq!(found, case != "miss", "{case} with {n} routes");
            group.bench_with_input(BenchmarkId::new(case, n), &path, |b, path| {
                b.iter(|| {
                    let input = MatchInput {
                        sni: None,
                        method: &Method::GET,
                        host: "api.example.com",
                        host_with_port: "api.example.com:8000",
                        path: black_box(path),
                        header: &no_header,
                    };
                    black_box(snap.find(&input).map(|m| m.entry.route.route.id))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
