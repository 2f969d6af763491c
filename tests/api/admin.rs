//! Admin API behaviour (Kong's semantics, `../shared/reference/gateways.md` §1).

use serde_json::json;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn create_service_with_url_shorthand_fills_defaults() {
    let app = spawn_app().await;
    let (status, body) = app
        .admin_post(
            "/services",
            json!({"name": "s1", "url": "https://example.com:8443/api"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["protocol"], "https");
    assert_eq!(body["host"], "example.com");
    assert_eq!(body["port"], 8443);
    assert_eq!(body["path"], "/api");
    assert_eq!(body["retries"], 5);
    assert!(body.get("url").is_none(), "url is write-only");
}

#[actix_web::test]
async fn duplicate_name_is_409_with_kong_body() {
    let app = spawn_app().await;
    let (s, _) = app
        .admin_post("/services", json!({"name": "dup", "host": "a.test"}))
        .await;
    assert_eq!(s, 201);
    let (s, body) = app
        .admin_post("/services", json!({"name": "dup", "host": "b.test"}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(body["code"], 5);
    assert_eq!(body["name"], "unique constraint violation");
    assert_eq!(
        body["message"],
        "UNIQUE violation detected on '{name=\"dup\"}'"
    );
    assert_eq!(body["fields"], json!({"name": "dup"}));
}
