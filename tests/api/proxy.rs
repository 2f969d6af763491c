//! Proxy behaviour (Kong's semantics, `../shared/reference/gateways.md` §2).

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_upstream};

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
