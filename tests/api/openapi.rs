//! `GET /openapi.json`: the document's examples are accepted, and every operation it describes
//! is served with one of the statuses it documents (schemathesis, in tests/schemathesis.rs, then
//! generates thousands of requests from the same document).

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_with, test_settings};

/// A component schema by `$ref`, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// The path with each parameter replaced by its example (or a key that names nothing).
fn concrete(path: &str, op: &Value) -> String {
    let mut out = path.to_string();
    for p in op["parameters"].as_array().into_iter().flatten() {
        if p["in"] == "path" {
            let name = p["name"].as_str().unwrap();
            let value = p["example"].as_str().unwrap_or("nothing-here");
            out = out.replace(&format!("{{{name}}}"), value);
        }
    }
    out
}

#[actix_web::test]
async fn every_described_operation_answers_a_documented_status() {
    let app = spawn_app().await;
    let (s, doc) = app.admin_get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // Each entity's example body creates it (the examples refer to one another by name).
    for entity in ["services", "routes", "consumers", "plugins", "oauth2"] {
        let op = &doc["paths"][format!("/{entity}")]["post"];
        let schema = resolve(
            &doc,
            &op["requestBody"]["content"]["application/json"]["schema"],
        );
        let (s, body) = app
            .admin_post(&format!("/{entity}"), schema["example"].clone())
            .await;
        assert_eq!(s, 201, "{entity} example: {body}");
    }

    let paths = doc["paths"].as_object().unwrap();
    let mut calls = 0;
    // Deletes last, so that every other operation meets the example entities.
    for deleting in [false, true] {
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                if (method == "delete") != deleting {
                    continue;
                }
                let url = concrete(path, op);
                let body = op["requestBody"]["content"]["application/json"]["schema"]
                    .as_object()
                    .map(|_| {
                        let schema = resolve(
                            &doc,
                            &op["requestBody"]["content"]["application/json"]["schema"],
                        );
                        match &schema["example"] {
                            Value::Null => serde_json::json!({}),
                            example => example.clone(),
                        }
                    });
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (status, answer) = app.admin_call(m, &url, body).await;
                let documented = op["responses"].get(status.to_string());
                assert!(
                    documented.is_some(),
                    "{method} {url} answered {status}, not documented: {answer}"
                );
                calls += 1;
                // Reads of the example entities themselves must find them.
                let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                if method == "get"
                    && segments.len() == 2
                    && segments[1].starts_with('{')
                    && !url.ends_with("nothing-here")
                {
                    assert_eq!(status, 200, "{method} {url}: {answer}");
                }
            }
        }
    }
    assert!(calls > 100, "{calls} operations called");
}

#[actix_web::test]
async fn the_document_needs_the_admin_token_it_documents() {
    let mut settings = test_settings();
    settings.admin_token = Some(portcullis::config::Secret::new("s3cret".into()));
    let app = spawn_with(settings).await;
    let (s, _) = app.admin_get("/openapi.json").await;
    assert_eq!(s, 401);
    let (s, _) = app.admin_get("/status").await;
    assert_eq!(s, 401);

    let r = app
        .http
        .get(format!("{}/openapi.json", app.admin))
        .header("kong-admin-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    let scheme = &doc["components"]["securitySchemes"]["adminToken"];
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "Kong-Admin-Token");
    for path in ["/services", "/status"] {
        assert!(
            doc["paths"][path]["get"]["responses"].get("401").is_some(),
            "{path}"
        );
    }
}
