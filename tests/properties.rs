//! Property tests of the parsers that read what clients send: admin bodies (JSON, url-encoded and
//! multipart forms), OAuth parameters, and the router. Whatever the input, no panic; what a client
//! library would serialize parses back to what it serialized.

// A failing test panics with its message: unwrap/expect are the assertion style here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use portcullis::entities::Route;
use portcullis::forms;
use portcullis::plugins::oauth2::params;
use portcullis::router::{upstream_path, CompiledRoute, MatchInput, RouterSnapshot, SnapshotParts};
use portcullis::schema::Coerce;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data; boundary=\"quoted boundary\"",
    "multipart/form-data",
    "text/plain",
    "",
];

fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(CONTENT_TYPES).prop_map(str::to_string),
        ".{0,60}",
    ]
}

/// Bytes that look like each format often enough to get past the first check.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[a-z.\\[\\]0-9=&%+]{0,120}".prop_map(String::into_bytes),
        "(--XyZ(\r\n|--)(Content-Disposition: form-data; name=\"[a-z]{1,4}\"\r\n\r\n)?[a-z\r\n-]{0,20}){0,5}"
            .prop_map(String::into_bytes),
        "[\\{\\}\\[\\]\":,a-z0-9 ]{0,80}".prop_map(String::into_bytes),
    ]
}

fn key() -> impl Strategy<Value = String> {
    "[a-z_]{1,6}"
}

/// A value a form can carry: a string, a non-empty list of strings, or a record of those.
fn form_value(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        ".{0,12}".prop_map(Value::String),
        proptest::collection::vec(".{0,8}", 1..4)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect())),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => proptest::collection::btree_map(key(), form_value(depth - 1), 1..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
    .boxed()
}

fn form_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(key(), form_value(2), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

/// Kong's form encoding of an object: dotted keys for records, `key[]` for every list element.
fn to_pairs(prefix: &str, object: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (k, v) in object {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::String(s) => out.push((name, s.clone())),
            Value::Array(items) => {
                for item in items {
                    out.push((format!("{name}[]"), item.as_str().unwrap().to_string()));
                }
            }
            Value::Object(inner) => to_pairs(&name, inner, out),
            _ => unreachable!("forms carry strings"),
        }
    }
}

fn multipart(boundary: &str, pairs: &[(String, String)]) -> Vec<u8> {
    let mut body = String::new();
    for (name, value) in pairs {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body.into_bytes()
}

/// JSON without floats (whose text form is not guaranteed to round-trip).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn body_parsing_never_panics(ct in content_type(), body in body_bytes()) {
        let _ = forms::parse(&ct, &body);
        let _ = params::body_params(&ct, &body);
    }

    #[test]
    fn json_objects_round_trip(object in proptest::collection::btree_map(".{0,8}", json_value(), 0..6)) {
        let object: Map<String, Value> = object.into_iter().collect();
        let text = serde_json::to_vec(&object).unwrap();
        let (parsed, coerce) = forms::parse("application/json", &text).unwrap();
        prop_assert_eq!(coerce, Coerce::No);
        prop_assert_eq!(parsed, object);
    }

    #[test]
    fn url_encoded_forms_round_trip(object in form_object()) {
        let mut pairs = Vec::new();
        to_pairs("", &object, &mut pairs);
        let text = serde_urlencoded::to_string(&pairs).unwrap();
        let (parsed, coerce) = forms::parse("application/x-www-form-urlencoded", text.as_bytes()).unwrap();
        if !pairs.is_empty() {
            prop_assert_eq!(coerce, Coerce::Yes);
        }
        prop_assert_eq!(parsed, object);
    }

    #[test]
    fn multipart_forms_round_trip(object in form_object(), boundary in "[A-Za-z0-9'()+_,-]{12,40}") {
        let mut pairs = Vec::new();
        to_pairs("", &object, &mut pairs);
        prop_assume!(pairs.iter().all(|(_, v)| !v.contains(boundary.as_str())));
        let body = multipart(&boundary, &pairs);
        let ct = format!("multipart/form-data; boundary=\"{boundary}\"");
        let (parsed, _) = forms::parse(&ct, &body).unwrap();
        prop_assert_eq!(parsed, object);
    }

    #[test]
    fn oauth_parameters_never_panic(
        query in ".{0,80}",
        ct in content_type(),
        body in proptest::option::of(body_bytes()),
        strip in ".{0,6}",
    ) {
        let body = body.map(Bytes::from);
        let merged = params::merged(&query, &ct, body.as_ref());
        for key in merged.keys() {
            let _ = params::non_blank(&merged, key);
        }
        if let Some(body) = &body {
            let _ = params::form_without(body, &strip);
        }
    }

    /// Query pairs come back as serialized: one value as a string, repeated keys as a list in
    /// order.
    #[test]
    fn oauth_query_parameters_round_trip(pairs in proptest::collection::vec((key(), ".{0,10}"), 0..8)) {
        let query = serde_urlencoded::to_string(&pairs).unwrap();
        let merged = params::merged(&query, "", None);
        let mut want: Map<String, Value> = Map::new();
        for (k, v) in &pairs {
            let all: Vec<Value> = pairs.iter().filter(|(n, _)| n == k).map(|(_, v)| json!(v)).collect();
            want.insert(k.clone(), if all.len() == 1 { json!(v) } else { Value::Array(all) });
        }
        prop_assert_eq!(merged, want);
    }

    /// The body wins over the query string, whatever its format.
    #[test]
    fn oauth_body_parameters_win(k in key(), from_query in "[a-z]{1,8}", from_body in "[a-z]{1,8}", as_json in any::<bool>()) {
        let query = serde_urlencoded::to_string([(&k, &from_query)]).unwrap();
        let (ct, body) = if as_json {
            ("application/json", serde_json::to_vec(&json!({ &k: from_body })).unwrap())
        } else {
            ("application/x-www-form-urlencoded", serde_urlencoded::to_string([(&k, &from_body)]).unwrap().into_bytes())
        };
        let merged = params::merged(&query, ct, Some(&Bytes::from(body)));
        prop_assert_eq!(params::string(&merged, &k), Some(from_body.as_str()));
    }

    /// `form_without` drops exactly one key and keeps the other pairs in order.
    #[test]
    fn form_without_removes_only_its_key(pairs in proptest::collection::vec((key(), ".{0,10}"), 0..8), drop in key()) {
        let body = serde_urlencoded::to_string(&pairs).unwrap();
        let kept = params::form_without(body.as_bytes(), &drop);
        let back: Vec<(String, String)> = serde_urlencoded::from_bytes(&kept).unwrap();
        let want: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| *k != drop).collect();
        prop_assert_eq!(back, want);
    }

    /// The upstream path is the service path joined with what is left of the request path.
    #[test]
    fn upstream_paths_join_service_and_request(
        service in proptest::option::of("(/[a-zé0-9]{0,4}){0,3}/?"),
        req in "(/[a-zé0-9._~%-]{0,5}){1,4}/?",
        cut in any::<prop::sample::Index>(),
        strip in any::<bool>(),
    ) {
        let boundaries: Vec<usize> = req.char_indices().map(|(i, _)| i).chain([req.len()]).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let stripped = strip.then(|| &req[..at]);
        let out = upstream_path(service.as_deref(), stripped, &req);
        prop_assert!(out.starts_with('/'), "{out}");
        let rest = &req[stripped.map_or(0, str::len)..];
        let rest = rest.trim_start_matches('/');
        prop_assert!(out.trim_end_matches('/').ends_with(rest.trim_end_matches('/')), "{out} for {rest}");
        if stripped.is_none() && service.is_none() {
            prop_assert_eq!(out.as_ref(), req.as_str());
        }
    }

    /// Any table, any request: no panic, and a match satisfies its route's method, path and
    /// strip rules.
    #[test]
    fn router_matches_only_what_routes_allow(
        routes in proptest::collection::vec(route_spec(), 1..48),
        method in proptest::sample::select(vec![Method::GET, Method::POST, Method::DELETE]),
        host in "[ab]\\.test|c\\.b\\.test|é\\.test",
        path in "(/[a-z0-9é]{0,3}){0,4}",
        header in proptest::option::of("[01]"),
    ) {
        let compiled: Vec<Arc<CompiledRoute>> = routes
            .into_iter()
            .enumerate()
            .filter_map(|(i, spec)| compile(i, spec))
            .collect();
        let snapshot = RouterSnapshot::build(SnapshotParts {
            routes: compiled,
            services: &HashMap::new(),
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
        });
        let lookup = |n: &str| (n == "x-v").then(|| header.clone()).flatten();
        let input = MatchInput { sni: None, method: &method, host: &host, host_with_port: &host, path: &path, header: &lookup };
        if let Some(found) = snapshot.find(&input) {
            let route = &found.entry.route.route;
            if let Some(methods) = &route.methods {
                prop_assert!(methods.iter().any(|m| m == method.as_str()));
            }
            if let Some(stripped) = found.stripped {
                prop_assert!(path.starts_with(stripped));
                prop_assert!(route.strip_path);
            }
            if let Some(paths) = &route.paths {
                prop_assert!(paths.iter().any(|p| p.starts_with('~') || path.starts_with(p.as_str())));
            }
        }
    }
}

/// `(paths, methods, hosts, header value, strip_path)` of a generated route.
type RouteSpec = (
    Option<Vec<String>>,
    Option<Vec<&'static str>>,
    Option<Vec<&'static str>>,
    Option<&'static str>,
    bool,
);

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    let path = prop_oneof![
        3 => "(/[a-z0-9é]{0,3}){1,3}",
        1 => proptest::sample::select(vec!["~/[a-z]+$", "~/a/[0-9]*", "~/(é|b)/?", "/"]).prop_map(str::to_string),
    ];
    (
        proptest::option::of(proptest::collection::vec(path, 1..3)),
        proptest::option::of(proptest::sample::subsequence(
            vec!["GET", "POST", "PUT"],
            1..3,
        )),
        proptest::option::of(proptest::sample::subsequence(
            vec!["a.test", "*.b.test", "é.*", "c.test:80"],
            1..3,
        )),
        proptest::option::of(proptest::sample::select(vec!["0", "1"])),
        any::<bool>(),
    )
}

fn compile(
    i: usize,
    (paths, methods, hosts, header, strip): RouteSpec,
) -> Option<Arc<CompiledRoute>> {
    let route: Route = serde_json::from_value(json!({
        "id": uuid::Uuid::new_v4(), "created_at": i, "protocols": ["http", "https"],
        "https_redirect_status_code": 426, "regex_priority": i % 3, "strip_path": strip,
        "preserve_host": false, "paths": paths, "methods": methods, "hosts": hosts,
        "headers": header.map(|v| json!({ "x-v": [v] })),
    }))
    .unwrap();
    Some(Arc::new(CompiledRoute::compile(route).ok()?))
}

/// Every field's documented `pattern` (shown in the OpenAPI input schemas) only describes values
/// its check accepts.
#[test]
fn documented_patterns_only_describe_accepted_values() {
    use proptest::test_runner::{Config, TestRunner};
    let mut checked = 0;
    let nested_only = portcullis::admin::NESTED_ONLY.iter();
    for (_, kind) in portcullis::admin::COLLECTIONS.iter().chain(nested_only) {
        for field in &kind.schema.fields {
            let (Some(pattern), Some(check)) = (field.pattern, field.check) else {
                continue;
            };
            let strategy = proptest::string::string_regex(pattern).unwrap();
            let mut runner = TestRunner::new(Config {
                cases: 200,
                ..Config::default()
            });
            runner
                .run(&strategy, |value| {
                    let verdict = check(&Value::String(value.clone()));
                    prop_assert!(verdict.is_ok(), "{}: {value:?}: {verdict:?}", field.name);
                    Ok(())
                })
                .unwrap();
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} patterns checked");
}
