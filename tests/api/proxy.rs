//! Proxy behaviour (Kong's semantics).

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_upstream};

/// The gateway's own answer headers replace an upstream's of the same names, one value each,
/// over HTTP/1.1 (written as ready-made lines) and HTTP/2 (from the header map); its `Via` entry
/// goes after the upstream's.
#[actix_web::test]
async fn the_gateways_answer_headers_replace_an_upstreams_of_the_same_names() {
    let mut settings = crate::helpers::test_settings();
    settings.proxy_listen = "127.0.0.1:0 http2".into();
    let app = crate::helpers::spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    let url = format!(
        "{}/echo/response-headers?x-portcullis-request-id=up&x-portcullis-upstream-latency=up\
         &x-portcullis-proxy-latency=up&via=1.1+edge&x-upstream=kept",
        app.proxy
    );
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, version) in [
        (&app.http, reqwest::Version::HTTP_11),
        (&h2c, reqwest::Version::HTTP_2),
    ] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
        let all = |name: &str| -> Vec<String> {
            resp.headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let id = all("x-portcullis-request-id");
        assert_eq!(id.len(), 1, "{version:?} {id:?}");
        assert_eq!(id[0].len(), 32, "{version:?} {id:?}");
        for latency in [
            "x-portcullis-upstream-latency",
            "x-portcullis-proxy-latency",
        ] {
            let values = all(latency);
            assert_eq!(values.len(), 1, "{version:?} {latency} {values:?}");
            assert!(values[0].parse::<u64>().is_ok(), "{version:?} {values:?}");
        }
        let via = all("via");
        assert_eq!(via.len(), 2, "{version:?} {via:?}");
        assert_eq!(via[0], "1.1 edge", "{version:?}");
        assert!(via[1].starts_with("1.1 portcullis/"), "{version:?} {via:?}");
        assert_eq!(all("x-upstream"), ["kept"], "{version:?}");
    }
}

#[actix_web::test]
async fn proxies_with_strip_path_and_forwarded_headers() {
    let app = spawn_app().await;
    let upstream = spawn_upstream();
    app.expose("echo", &format!("{}/base", upstream.url), &["/api"])
        .await;
    let resp = app.proxy_get("/api/items?x=1").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-portcullis-request-id"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["path"], "/base/items");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-forwarded-prefix"], "/api");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[actix_web::test]
async fn no_route_is_kongs_404() {
    let app = spawn_app().await;
    let resp = app.proxy_get("/nope").await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["message"], "no Route matched with those values");
    assert!(body["request_id"].is_string());
}

use reqwest::Method;
use serde_json::json;

use crate::helpers::{dead_port, spawn_with, test_settings, TestApp};

/// Creates a service `name` at `url` with one route described by `route` (JSON fields).
async fn service_with_route(app: &TestApp, name: &str, url: &str, route: Value) {
    let (s, body) = app
        .admin_post("/services", json!({ "name": name, "url": url }))
        .await;
    assert_eq!(s, 201, "service {name}: {body}");
    let (s, body) = app
        .admin_post(&format!("/services/{name}/routes"), route)
        .await;
    assert_eq!(s, 201, "route of {name}: {body}");
}

/// Sends a request through the proxy and returns (status, echoed JSON).
async fn send(app: &TestApp, method: Method, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut rb = app.http.request(method, format!("{}{path}", app.proxy));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    crate::helpers::status_json(rb.send().await.expect("proxy reachable")).await
}

/// Upstream path the echo server saw, for a GET with these headers.
async fn upstream_path(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> String {
    let (s, body) = send(app, Method::GET, path, headers).await;
    assert_eq!(s, 200, "{path} {headers:?}: {body}");
    body["path"].as_str().unwrap_or_default().to_string()
}

#[actix_web::test]
async fn route_priority_follows_kong() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    let u = &up.url;
    // Longest prefix wins.
    service_with_route(
        &app,
        "short",
        &format!("{u}/short"),
        json!({"paths": ["/p"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "long",
        &format!("{u}/long"),
        json!({"paths": ["/p/long"], "strip_path": false}),
    )
    .await;
    assert_eq!(
        upstream_path(&app, "/p/long/x", &[]).await,
        "/long/p/long/x"
    );
    assert_eq!(upstream_path(&app, "/p/x", &[]).await, "/short/p/x");
    assert_eq!(
        upstream_path(&app, "/plong", &[]).await,
        "/short/plong",
        "prefix, not segment"
    );

    // A regex beats a prefix, however long the prefix.
    service_with_route(
        &app,
        "prefix",
        &format!("{u}/prefix"),
        json!({"paths": ["/v/1/very/long/prefix"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "regex",
        &format!("{u}/regex"),
        json!({"paths": ["~/v/\\d+/"], "strip_path": false}),
    )
    .await;
    assert_eq!(
        upstream_path(&app, "/v/1/very/long/prefix", &[]).await,
        "/regex/v/1/very/long/prefix"
    );
    assert_eq!(upstream_path(&app, "/v/9/x", &[]).await, "/regex/v/9/x");

    // More attributes win: paths + methods beats paths alone.
    service_with_route(
        &app,
        "any",
        &format!("{u}/any"),
        json!({"paths": ["/m"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "post",
        &format!("{u}/post"),
        json!({"paths": ["/m"], "methods": ["POST"], "strip_path": false}),
    )
    .await;
    assert_eq!(upstream_path(&app, "/m", &[]).await, "/any/m");
    let (_, body) = send(&app, Method::POST, "/m", &[]).await;
    assert_eq!(body["path"], "/post/m");

    // Headers.
    service_with_route(
        &app,
        "plain",
        &format!("{u}/plain"),
        json!({"paths": ["/h"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "v2",
        &format!("{u}/v2"),
        json!({"paths": ["/h"], "headers": {"x-version": ["2", "3"]}, "strip_path": false}),
    )
    .await;
    assert_eq!(upstream_path(&app, "/h", &[]).await, "/plain/h");
    assert_eq!(
        upstream_path(&app, "/h", &[("x-version", "3")]).await,
        "/v2/h"
    );
    assert_eq!(
        upstream_path(&app, "/h", &[("x-version", "4")]).await,
        "/plain/h"
    );

    // Hosts: exact beats wildcard; leading and trailing wildcards; no match is 404.
    service_with_route(
        &app,
        "wild",
        &format!("{u}/wild"),
        json!({"hosts": ["*.example.test"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "exact",
        &format!("{u}/exact"),
        json!({"hosts": ["api.example.test"], "strip_path": false}),
    )
    .await;
    service_with_route(
        &app,
        "tail",
        &format!("{u}/tail"),
        json!({"hosts": ["shop.*"], "strip_path": false}),
    )
    .await;
    assert_eq!(
        upstream_path(&app, "/z", &[("host", "api.example.test")]).await,
        "/exact/z"
    );
    assert_eq!(
        upstream_path(&app, "/z", &[("host", "www.example.test:8000")]).await,
        "/wild/z"
    );
    assert_eq!(
        upstream_path(&app, "/z", &[("host", "shop.test")]).await,
        "/tail/z"
    );
    let (s, _) = send(&app, Method::GET, "/z", &[("host", "example.test")]).await;
    assert_eq!(s, 404);

    // Methods alone.
    service_with_route(
        &app,
        "del",
        &format!("{u}/del"),
        json!({"methods": ["DELETE"], "strip_path": false}),
    )
    .await;
    let (_, body) = send(&app, Method::DELETE, "/anything", &[]).await;
    assert_eq!(body["path"], "/del/anything");
    let (s, _) = send(&app, Method::PUT, "/anything", &[]).await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn strip_path_table_through_the_proxy() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    // (service path, strip_path, request, upstream path), Kong's `strip_path` rules.
    let cases: &[(&str, bool, &str, &str)] = &[
        ("/svc", true, "/api/foo", "/svc/foo"),
        ("/svc", true, "/api", "/svc"),
        ("/svc", true, "/api/", "/svc/"),
        ("/svc/", true, "/api/foo", "/svc/foo"),
        ("/svc/", true, "/api", "/svc"),
        ("/", true, "/api/foo", "/foo"),
        ("", true, "/api/foo", "/foo"),
        ("/", true, "/api", "/"),
        ("", true, "/api", "/"),
        ("/svc", false, "/api/foo", "/svc/api/foo"),
        ("/svc/", false, "/api/foo", "/svc/api/foo"),
        ("", false, "/api/foo", "/api/foo"),
        ("/svc", true, "/apifoo", "/svc/foo"),
    ];
    for (i, (svc_path, strip, req, want)) in cases.iter().enumerate() {
        let host = format!("case{i}.test");
        service_with_route(
            &app,
            &format!("case{i}"),
            &format!("{}{svc_path}", up.url),
            json!({"paths": ["/api"], "hosts": [host], "strip_path": strip}),
        )
        .await;
        let (s, body) = send(
            &app,
            Method::GET,
            &format!("{req}?q=1&r"),
            &[("host", &host)],
        )
        .await;
        assert_eq!(s, 200, "case {i}: {body}");
        assert_eq!(
            body["path"], *want,
            "service.path {svc_path:?} strip_path {strip} request {req}"
        );
        assert_eq!(body["query"], "q=1&r", "query passed through unchanged");
    }
}

#[actix_web::test]
async fn preserve_host_sends_the_clients_host() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "keep",
        &up.url,
        json!({"paths": ["/keep"], "preserve_host": true}),
    )
    .await;
    service_with_route(&app, "drop", &up.url, json!({"paths": ["/drop"]})).await;
    let (_, body) = send(&app, Method::GET, "/keep", &[("host", "client.test:9999")]).await;
    assert_eq!(body["headers"]["host"], "client.test:9999");
    let (_, body) = send(&app, Method::GET, "/drop", &[("host", "client.test")]).await;
    assert_eq!(body["headers"]["host"], format!("127.0.0.1:{}", up.port));
    assert_eq!(body["headers"]["x-forwarded-host"], "client.test");
}

#[actix_web::test]
async fn https_only_routes_answer_426_or_redirect() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "secure",
        &up.url,
        json!({"paths": ["/secure"], "protocols": ["https"]}),
    )
    .await;
    service_with_route(
        &app,
        "moved",
        &up.url,
        json!({"paths": ["/moved"], "protocols": ["https"], "https_redirect_status_code": 301}),
    )
    .await;
    let resp = app.proxy_get("/secure/x").await;
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["upgrade"], "TLS/1.2, HTTP/1.1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Please use HTTPS protocol");

    let resp = app
        .http
        .get(format!("{}/moved/x?y=1", app.proxy))
        .header("host", "gw.test:8000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://gw.test/moved/x?y=1");

    // The same routes over TLS are proxied.
    let resp = app
        .http
        .get(format!("{}/secure/x", app.proxy_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
}

#[actix_web::test]
async fn forwarded_headers_from_untrusted_clients_are_replaced() {
    assert_forwarded_headers_replaced(spawn_app().await).await;
}

/// `trusted_ips` set, but not to the peer: its headers are replaced all the same.
#[actix_web::test]
async fn forwarded_headers_from_a_peer_outside_trusted_ips_are_replaced() {
    let mut settings = test_settings();
    settings.trusted_ips = vec!["10.0.0.0/8".into(), "127.0.0.2".into(), "::1".into()];
    assert_forwarded_headers_replaced(spawn_with(settings).await).await;
}

/// Spoofed `X-Forwarded-*`, `X-Real-IP` and `Via` from 127.0.0.1 reach the upstream as the
/// gateway's own values.
async fn assert_forwarded_headers_replaced(app: TestApp) {
    let up = spawn_upstream();
    service_with_route(
        &app,
        "fw",
        &up.url,
        json!({"paths": ["/fw"], "strip_path": false}),
    )
    .await;
    let spoofed = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-path", "/evil"),
        ("x-forwarded-prefix", "/evil"),
        ("x-real-ip", "1.2.3.4"),
        ("via", "1.1 upstream-proxy"),
        ("host", "gw.test"),
    ];
    let (s, body) = send(&app, Method::GET, "/fw/a?x=1", &spoofed).await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    let port = app.proxy.rsplit(':').next().unwrap();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gw.test");
    assert_eq!(h["x-forwarded-port"], port);
    assert_eq!(h["x-forwarded-path"], "/fw/a");
    assert!(
        h.get("x-forwarded-prefix").is_none(),
        "nothing stripped: {h}"
    );
    let via = h["via"].as_str().unwrap();
    assert!(
        via.starts_with("1.1 upstream-proxy, 1.1 portcullis/"),
        "{via}"
    );
    assert!(h["x-portcullis-request-id"].is_string());
}

#[actix_web::test]
async fn forwarded_headers_from_trusted_clients_are_kept() {
    let mut settings = test_settings();
    settings.trusted_ips = vec!["127.0.0.1/32".into()];
    let app = spawn_with(settings).await;
    let up = spawn_upstream();
    service_with_route(&app, "fw", &up.url, json!({"paths": ["/fw"]})).await;
    let forwarded = [
        ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "public.test"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-path", "/outer/fw/a"),
        ("x-forwarded-prefix", "/outer"),
        ("x-real-ip", "9.9.9.9"),
    ];
    let (s, body) = send(&app, Method::GET, "/fw/a", &forwarded).await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 9.9.9.9");
    assert_eq!(
        h["x-real-ip"], "9.9.9.9",
        "client address from real_ip_header"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "public.test");
    assert_eq!(h["x-forwarded-port"], "443");
    assert_eq!(h["x-forwarded-path"], "/outer/fw/a");
    assert_eq!(h["x-forwarded-prefix"], "/outer");

    // Without the headers, our own values.
    let (_, body) = send(&app, Method::GET, "/fw/a", &[]).await;
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-prefix"], "/fw");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[actix_web::test]
async fn https_only_route_trusts_forwarded_proto_only_from_trusted_peers() {
    let mut settings = test_settings();
    settings.trusted_ips = vec!["127.0.0.1".into()];
    let trusting = spawn_with(settings).await;
    let strict = spawn_app().await;
    let up = spawn_upstream();
    for app in [&trusting, &strict] {
        service_with_route(
            app,
            "s",
            &up.url,
            json!({"paths": ["/s"], "protocols": ["https"]}),
        )
        .await;
    }
    let (s, _) = send(
        &trusting,
        Method::GET,
        "/s",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = send(
        &strict,
        Method::GET,
        "/s",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(s, 426);
}

#[actix_web::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(&app, "hop", &up.url, json!({"paths": ["/hop"]})).await;
    let (s, body) = send(
        &app,
        Method::GET,
        "/hop",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "yes"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let h = &body["headers"];
    assert_eq!(h["x-end-to-end"], "yes");
    for name in ["x-private", "keep-alive", "te", "proxy-connection"] {
        assert!(h.get(name).is_none(), "{name} forwarded: {h}");
    }
}

#[actix_web::test]
async fn upstream_down_is_502_with_request_id() {
    let app = spawn_app().await;
    let port = dead_port();
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "down", "url": format!("http://127.0.0.1:{port}"), "retries": 1}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    app.admin_post("/services/down/routes", json!({"paths": ["/down"]}))
        .await;
    let resp = app.proxy_get("/down").await;
    assert_gateway_error(
        resp,
        502,
        "An invalid response was received from the upstream server",
    )
    .await;
}

/// A gateway-written error: its status, and Kong's `{"message", "request_id"}` body carrying the
/// response's own request id.
async fn assert_gateway_error(resp: reqwest::Response, status: u16, message: &str) {
    assert_eq!(resp.status(), status);
    let id = resp.headers()["x-portcullis-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"message": message, "request_id": id}));
}

#[actix_web::test]
async fn https_upstreams_are_verified_only_when_the_service_asks() {
    let app = spawn_app().await;
    let up = crate::helpers::spawn_tls_upstream();
    for (name, verify) in [("tls-default", None), ("tls-verified", Some(true))] {
        let mut service = json!({"name": name, "url": up.url, "retries": 0});
        if let Some(v) = verify {
            service["tls_verify"] = json!(v);
        }
        let (s, body) = app.admin_post("/services", service).await;
        assert_eq!(s, 201, "{body}");
        let (s, body) = app
            .admin_post(
                &format!("/services/{name}/routes"),
                json!({"paths": [format!("/{name}")]}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    // Kong's default: a self-signed upstream is accepted, and the body and headers come through.
    let resp = app.proxy_get("/tls-default/x?a=1").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["uri"], "/x?a=1");
    assert_eq!(body["headers"]["host"], format!("127.0.0.1:{}", up.port));
    assert!(body["headers"]["x-forwarded-for"].is_string(), "{body}");
    // `tls_verify = true`: the self-signed certificate is refused, nothing reaches the upstream.
    let resp = app.proxy_get("/tls-verified/x").await;
    assert_eq!(resp.status(), 502);
}

#[actix_web::test]
async fn slow_upstream_is_504() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "slow", "url": up.url, "read_timeout": 100, "connect_timeout": 100}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    app.admin_post(
        "/services/slow/routes",
        json!({"paths": ["/slow"], "strip_path": false}),
    )
    .await;
    let resp = app.proxy_get("/slow/5000").await;
    assert_gateway_error(resp, 504, "The upstream server is timing out").await;
}

#[actix_web::test]
async fn large_bodies_stream_intact_both_ways() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "big",
        &up.url,
        json!({"paths": ["/big"], "strip_path": false}),
    )
    .await;
    let payload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let resp = app
        .http
        .post(format!("{}/big", app.proxy))
        .header("content-type", "application/octet-stream")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got[..] == payload[..], "body changed on the way");

    // Chunked (no Content-Length) request bodies too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .http
        .post(format!("{}/big", app.proxy))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert!(got[..] == payload[..], "chunked body changed on the way");
}

#[actix_web::test]
async fn request_termination_precedence_route_service_global() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "a",
        &up.url,
        json!({"name": "a-route", "paths": ["/a"]}),
    )
    .await;
    let (s, _) = app
        .admin_post(
            "/services/a/routes",
            json!({"name": "a-other", "paths": ["/a2"]}),
        )
        .await;
    assert_eq!(s, 201);
    service_with_route(
        &app,
        "b",
        &up.url,
        json!({"name": "b-route", "paths": ["/b"]}),
    )
    .await;
    service_with_route(&app, "open", &up.url, json!({"paths": ["/open"]})).await;
    assert_eq!(app.proxy_get("/a").await.status(), 200);

    let plugin = |status: u16, message: &str| json!({"name": "request-termination", "config": {"status_code": status, "message": message}});
    let (s, global) = app.admin_post("/plugins", plugin(503, "global")).await;
    assert_eq!(s, 201, "{global}");
    let (s, _) = app
        .admin_post("/services/a/plugins", plugin(403, "service"))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .admin_post("/routes/a-route/plugins", plugin(418, "route"))
        .await;
    assert_eq!(s, 201);
    // A route + service scoped instance beats a route-only one.
    let (s, b_route) = app.admin_get("/routes/b-route").await;
    assert_eq!(s, 200);
    let (_, b_service) = app.admin_get("/services/b").await;
    let (s, _) = app
        .admin_post(
            "/plugins",
            json!({"name": "request-termination", "route": {"id": b_route["id"]}, "service": {"id": b_service["id"]}, "config": {"status_code": 409, "message": "route+service"}}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .admin_post("/routes/b-route/plugins", plugin(410, "route only"))
        .await;
    assert_eq!(s, 201);

    for (path, status, message) in [
        ("/a", 418, "route"),
        ("/a2", 403, "service"),
        ("/b", 409, "route+service"),
        ("/open", 503, "global"),
    ] {
        let resp = app.proxy_get(path).await;
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"message": message}), "{path}");
    }

    // Disabling and deleting take effect at once.
    let gid = global["id"].as_str().unwrap();
    let (s, _) = app
        .admin_patch(&format!("/plugins/{gid}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.proxy_get("/open").await.status(), 200);
    let (s, _) = app
        .admin_patch(
            &format!("/plugins/{gid}"),
            json!({"enabled": true, "protocols": ["https"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.proxy_get("/open").await.status(),
        200,
        "plugin runs on https only"
    );
    let resp = app
        .http
        .get(format!("{}/open", app.proxy_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(app.admin_delete(&format!("/plugins/{gid}")).await.0, 204);
    let resp = app
        .http
        .get(format!("{}/open", app.proxy_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[actix_web::test]
async fn request_termination_custom_body_and_disabled_service() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(&app, "t", &up.url, json!({"paths": ["/t"]})).await;
    let (s, body) = app
        .admin_post(
            "/services/t/plugins",
            json!({"name": "request-termination", "config": {"status_code": 451, "body": "<p>gone</p>", "content_type": "text/html"}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let resp = app.proxy_get("/t").await;
    assert_eq!(resp.status(), 451);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert_eq!(resp.text().await.unwrap(), "<p>gone</p>");

    service_with_route(&app, "off", &up.url, json!({"paths": ["/off"]})).await;
    let (s, _) = app
        .admin_patch("/services/off", json!({"enabled": false}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.proxy_get("/off").await.status(), 404);
}

#[actix_web::test]
async fn https_redirect_uses_trusted_forwarded_host() {
    let mut settings = test_settings();
    settings.trusted_ips = vec!["127.0.0.1/32".into()];
    let app = spawn_with(settings).await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "moved",
        &up.url,
        json!({"paths": ["/moved"], "protocols": ["https"], "https_redirect_status_code": 308}),
    )
    .await;
    let resp = app
        .http
        .get(format!("{}/moved", app.proxy))
        .header("x-forwarded-host", "public.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "https://public.test/moved");
}

#[actix_web::test]
async fn regex_paths_strip_what_they_matched() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    service_with_route(
        &app,
        "re",
        &format!("{}/base", up.url),
        json!({"paths": ["~/v\\d+"]}),
    )
    .await;
    let resp = app.proxy_get("/v12/items").await;
    assert_eq!(resp.status(), 200);
    let via = resp.headers()["via"].to_str().unwrap().to_string();
    assert!(via.starts_with("1.1 portcullis/"), "{via}");
    assert!(resp.headers().contains_key("x-portcullis-upstream-latency"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/base/items");
    assert_eq!(body["headers"]["x-forwarded-prefix"], "/v12");
    let (s, _) = send(&app, Method::GET, "/x/v12", &[]).await;
    assert_eq!(s, 404, "regexes are anchored at the start");
}

#[actix_web::test]
async fn wildcard_host_with_port_matches_only_that_port() {
    let app = spawn_app().await;
    let upstream = spawn_upstream();
    service_with_route(
        &app,
        "wild",
        &upstream.url,
        json!({"hosts": ["*.ported.test:8000"]}),
    )
    .await;
    let get = |host: &'static str| {
        app.http
            .get(format!("{}/x", app.proxy))
            .header("host", host)
            .send()
    };
    assert_eq!(get("a.ported.test:8000").await.unwrap().status(), 200);
    assert_eq!(get("a.ported.test:9000").await.unwrap().status(), 404);
    assert_eq!(get("a.ported.test").await.unwrap().status(), 404);
}

#[actix_web::test]
async fn a_bare_trailing_question_mark_reaches_the_upstream() {
    let app = spawn_app().await;
    let upstream = spawn_upstream();
    app.expose("bare", &upstream.url, &["/bare"]).await;
    // reqwest drops an empty query, so send the request line by hand.
    let port: u16 = app.proxy.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /bare/x? HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["path"], "/x");
    assert_eq!(body["uri"], "/x?", "the bare ? is kept");
}

/// A scripted HTTP/1.1 upstream: answers by path with raw bytes, closes each connection after
/// its second request, and counts the connections it accepted.
async fn spawn_scripted_upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    actix_rt::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            actix_rt::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..2 {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or_default();
                    let huge_head;
                    let answer: &[u8] = match path {
                        "/huge-head" => {
                            // 130,000 bytes in 20 lines: over the size limit, not the line limit.
                            let filler = "x".repeat(6490);
                            let lines = (0..20).map(|i| format!("X-F{i:02}: {filler}\r\n"));
                            huge_head = format!(
                                "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
                                lines.collect::<String>()
                            );
                            huge_head.as_bytes()
                        }
                        "/coded-with-length" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nall of it",
                        "/plus-length" => b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
                        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
                        "/signed-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n",
                        "/stall" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                        "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw bytes",
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                        "/interim" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        "/until-close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
                        "/short" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                        _ => b"HTTP/1.1 abc\r\n\r\n",
                    };
                    if conn.write_all(answer).await.is_err() || path != "/chunked" {
                        if path == "/stall" {
                            // Part of the body, then nothing more, the connection held open.
                            std::future::pending::<()>().await;
                        }
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[actix_web::test]
async fn upstream_answers_are_framed_and_connections_reused_or_replaced() {
    use std::sync::atomic::Ordering;
    let app = spawn_app().await;
    let (port, accepted) = spawn_scripted_upstream().await;
    app.expose("raw", &format!("http://127.0.0.1:{port}"), &["/raw"])
        .await;
    let get = |path: &'static str| {
        let app = &app;
        async move {
            let resp = app.proxy_get(&format!("/raw{path}")).await;
            let status = resp.status().as_u16();
            let kind = resp.headers().get("x-kind").cloned();
            (status, kind, resp.bytes().await)
        }
    };
    // Chunked answers are decoded (extensions and trailers dropped) and the connection reused.
    for round in 1..=2 {
        let (status, kind, body) = get("/chunked").await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(kind.unwrap(), "chunked");
        assert_eq!(&body.unwrap()[..], b"hello world");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "round {round} reused");
    }
    // The upstream closed that connection after its second answer: a new one is opened.
    let (status, _, body) = get("/chunked").await;
    assert_eq!((status, &body.unwrap()[..]), (200, &b"hello world"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Interim answers are skipped; a body delimited by closing the connection arrives whole.
    let (status, _, body) = get("/interim").await;
    assert_eq!((status, &body.unwrap()[..]), (200, &b"ok"[..]));
    let (status, _, body) = get("/until-close").await;
    assert_eq!((status, &body.unwrap()[..]), (200, &b"until the end"[..]));
    // A malformed head is Kong's 502; a body cut short fails the client's read, not the gateway.
    let resp = app.proxy_get("/raw/garbage").await;
    assert_gateway_error(
        resp,
        502,
        "An invalid response was received from the upstream server",
    )
    .await;
    let short = app
        .http
        .get(format!("{}/raw/short", app.proxy))
        .send()
        .await;
    let complete = match short {
        Ok(resp) => resp.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!complete, "a truncated body must not look complete");
    // The head was already on its way: the log says why the client's connection was closed.
    crate::helpers::eventually(
        std::time::Duration::from_secs(5),
        "the broken body is logged",
        || async {
            crate::helpers::logs::logged(tracing::Level::WARN)
                .into_iter()
                .find(|line| {
                    line.contains("closing the client connection")
                        && line.contains("before the end of the body")
                })
        },
    )
    .await;
    // The gateway still serves after all of that.
    let (status, _, body) = get("/chunked").await;
    assert_eq!((status, &body.unwrap()[..]), (200, &b"hello world"[..]));
}

#[actix_web::test]
async fn upstream_answers_that_could_desynchronise_are_refused_with_502() {
    let app = spawn_app().await;
    let (port, _) = spawn_scripted_upstream().await;
    app.expose("raw", &format!("http://127.0.0.1:{port}"), &["/raw"])
        .await;
    for path in [
        "/plus-length",
        "/two-lengths",
        "/signed-chunk",
        "/switch",
        "/huge-head",
    ] {
        let resp = app.proxy_get(&format!("/raw{path}")).await;
        assert_eq!(resp.status(), 502, "{path}");
        assert_gateway_error(
            resp,
            502,
            "An invalid response was received from the upstream server",
        )
        .await;
    }
    // A coding that does not end in chunked overrides the length: the body runs until close.
    let resp = app.proxy_get("/raw/coded-with-length").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"all of it");
}

#[actix_web::test]
async fn read_timeout_bounds_the_waits_for_an_upstream_body_on_both_clients() {
    let app = spawn_app().await;
    let (port, _) = spawn_scripted_upstream().await;
    let (s, _) = app
        .admin_post(
            "/services",
            json!({"name": "stall", "url": format!("http://127.0.0.1:{port}"), "read_timeout": 200}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .admin_post(
            "/services/stall/routes",
            json!({"paths": ["/stall"], "strip_path": false}),
        )
        .await;
    assert_eq!(s, 201);
    // A body-less GET takes the lean client; a streamed upload takes hyper's.
    let get = app.http.get(format!("{}/stall", app.proxy));
    let upload = app
        .http
        .post(format!("{}/stall", app.proxy))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"up")),
        ])));
    for request in [get, upload] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // The gateway cuts the body, long before this test's own patience runs out.
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), resp.bytes()).await;
        assert!(
            matches!(body, Ok(Err(_))),
            "the stalled body ends in an error"
        );
    }
}

/// Kong's default `headers` and `headers_upstream`: `Server` where the upstream sent none and on
/// the gateway's own answers, `Via` and the latencies on proxied answers, the response latency on
/// the gateway's own, the admin latency on the admin API's, and the request id both ways.
#[actix_web::test]
async fn kongs_default_headers_go_where_kong_puts_them() {
    let app = spawn_app().await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    let product = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
    let number = |resp: &reqwest::Response, name: &str| -> u64 {
        let value = resp
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        value.to_str().unwrap().parse().unwrap()
    };

    let proxied = app.proxy_get("/echo/x").await;
    assert_eq!(proxied.status(), 200);
    assert_eq!(proxied.headers()["server"], product);
    assert!(proxied.headers()["via"]
        .to_str()
        .unwrap()
        .ends_with(product));
    number(&proxied, "x-portcullis-upstream-latency");
    number(&proxied, "x-portcullis-proxy-latency");
    assert!(!proxied
        .headers()
        .contains_key("x-portcullis-response-latency"));
    assert!(!proxied
        .headers()
        .contains_key("x-portcullis-upstream-status"));
    let id = proxied.headers()["x-portcullis-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen: Value = proxied.json().await.unwrap();
    assert_eq!(seen["headers"]["x-portcullis-request-id"], id.as_str());

    let own = app.proxy_get("/nowhere").await;
    assert_eq!(own.status(), 404);
    assert_eq!(own.headers()["server"], product);
    number(&own, "x-portcullis-response-latency");
    assert!(!own.headers().contains_key("via"));
    assert!(!own.headers().contains_key("x-portcullis-proxy-latency"));
    assert_eq!(own.headers()["x-portcullis-request-id"].len(), 32);

    let admin = admin_root(&app).await;
    assert_eq!(admin.status(), 200);
    assert_eq!(admin.headers()["server"], product);
    number(&admin, "x-portcullis-admin-latency");
}

/// `headers` keeps only what it names (Kong's names or the gateway's), and `headers_upstream =
/// off` sends no request id upstream: a client's own then passes through.
#[actix_web::test]
async fn headers_settings_keep_only_what_they_name() {
    let mut settings = crate::helpers::test_settings();
    settings.headers = vec!["X-Kong-Upstream-Status".into()];
    settings.headers_upstream = vec!["off".into()];
    let app = crate::helpers::spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    let ours = [
        "server",
        "via",
        "x-portcullis-upstream-latency",
        "x-portcullis-proxy-latency",
        "x-portcullis-response-latency",
        "x-portcullis-admin-latency",
        "x-portcullis-request-id",
    ];
    let none_of_ours = |resp: &reqwest::Response| {
        for name in ours {
            assert!(
                !resp.headers().contains_key(name),
                "{name}: {:?}",
                resp.headers()
            );
        }
    };

    let proxied = app.proxy_get("/echo/status/201").await;
    assert_eq!(proxied.status(), 201);
    none_of_ours(&proxied);
    assert_eq!(proxied.headers()["x-portcullis-upstream-status"], "201");

    let plain = app.proxy_get("/echo/x").await;
    none_of_ours(&plain);
    let seen: Value = plain.json().await.unwrap();
    let upstream_saw = seen["headers"].as_object().expect("the echo's headers");
    assert!(upstream_saw.contains_key("x-forwarded-for"), "{seen}");
    assert!(
        !upstream_saw.contains_key("x-portcullis-request-id"),
        "{seen}"
    );

    let mine = app
        .http
        .get(format!("{}/echo/x", app.proxy))
        .header("x-portcullis-request-id", "mine")
        .send()
        .await
        .unwrap();
    let seen: Value = mine.json().await.unwrap();
    assert_eq!(seen["headers"]["x-portcullis-request-id"], "mine");

    let own = app.proxy_get("/nowhere").await;
    assert_eq!(own.status(), 404);
    none_of_ours(&own);
    assert!(!own.headers().contains_key("x-portcullis-upstream-status"));

    let admin = admin_root(&app).await;
    assert_eq!(admin.status(), 200);
    none_of_ours(&admin);
}

/// The admin API's `GET /` as it answered (its headers are what the tests read).
async fn admin_root(app: &crate::helpers::TestApp) -> reqwest::Response {
    app.http
        .get(format!("{}/", app.admin))
        .send()
        .await
        .expect("admin GET /")
}
