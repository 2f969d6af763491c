//! Admin API behaviour (Kong's semantics).

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

use reqwest::Method;

use crate::helpers::{spawn_upstream, spawn_with, test_settings};

#[actix_web::test]
async fn read_by_id_and_by_name() {
    let app = spawn_app().await;
    let (_, created) = app
        .admin_post("/services", json!({"name": "svc", "host": "a.test"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let (s, by_id) = app.admin_get(&format!("/services/{id}")).await;
    assert_eq!(s, 200);
    let (s, by_name) = app.admin_get("/services/svc").await;
    assert_eq!(s, 200);
    assert_eq!(by_id, by_name);
    assert_eq!(by_id, created);
    let (s, body) = app.admin_get("/services/nope").await;
    assert_eq!(s, 404);
    assert_eq!(body, json!({"message": "Not found"}));
    let (s, _) = app
        .admin_get("/services/3f4e3a52-0b5d-4c0e-9c36-95e1e8f4b0aa")
        .await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn put_creates_then_replaces_with_defaults_restored() {
    let app = spawn_app().await;
    let (s, created) = app
        .admin_put(
            "/services/upsert-me",
            json!({"host": "a.test", "retries": 1, "tags": ["x"]}),
        )
        .await;
    assert_eq!(s, 200, "PUT answers 200 also when it creates: {created}");
    assert_eq!(created["name"], "upsert-me");
    assert_eq!(created["retries"], 1);
    let (s, replaced) = app
        .admin_put("/services/upsert-me", json!({"host": "b.test"}))
        .await;
    assert_eq!(s, 200, "{replaced}");
    assert_eq!(replaced["id"], created["id"], "same row");
    assert_eq!(replaced["created_at"], created["created_at"]);
    assert_eq!(replaced["host"], "b.test");
    assert_eq!(replaced["retries"], 5, "omitted fields go back to defaults");
    assert_eq!(replaced["tags"], json!(null));
    assert_eq!(app.count("services").await, 1);

    // PUT by id creates with that id.
    let id = "7b0a3c1e-1111-4222-8333-944455556666";
    let (s, by_id) = app
        .admin_put(&format!("/services/{id}"), json!({"host": "c.test"}))
        .await;
    assert_eq!(s, 200, "{by_id}");
    assert_eq!(by_id["id"], id);
    assert_eq!(app.count("services").await, 2);
}

#[actix_web::test]
async fn patch_merges_config_and_replaces_arrays() {
    let app = spawn_app().await;
    let (s, svc) = app
        .admin_post(
            "/services",
            json!({"name": "p", "host": "a.test", "tags": ["a", "b"], "retries": 2}),
        )
        .await;
    assert_eq!(s, 201, "{svc}");
    let (s, patched) = app
        .admin_patch("/services/p", json!({"tags": ["c"], "port": 8080}))
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["tags"], json!(["c"]), "arrays are replaced whole");
    assert_eq!(patched["port"], 8080);
    assert_eq!(patched["retries"], 2, "untouched fields kept");
    assert_eq!(patched["host"], "a.test");

    let (s, plugin) = app
        .admin_post(
            "/plugins",
            json!({"name": "request-termination", "config": {"status_code": 403, "message": "no"}}),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    let pid = plugin["id"].as_str().unwrap();
    let (s, patched) = app
        .admin_patch(
            &format!("/plugins/{pid}"),
            json!({"config": {"status_code": 418}}),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["config"]["status_code"], 418);
    assert_eq!(
        patched["config"]["message"], "no",
        "nested config merged field by field"
    );
    assert_eq!(patched["config"]["echo"], false, "defaults still filled");

    let (s, _) = app
        .admin_patch("/services/missing", json!({"port": 1}))
        .await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn delete_is_204_and_idempotent() {
    let app = spawn_app().await;
    app.admin_post("/services", json!({"name": "d", "host": "a.test"}))
        .await;
    let (s, body) = app.admin_delete("/services/d").await;
    assert_eq!(s, 204);
    assert_eq!(body, serde_json::Value::Null);
    let (s, _) = app.admin_delete("/services/d").await;
    assert_eq!(s, 204, "deleting nothing is still 204");
    let (s, _) = app.admin_get("/services/d").await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn nested_routes_are_filtered_injected_and_checked() {
    let app = spawn_app().await;
    app.admin_post("/services", json!({"name": "s1", "host": "a.test"}))
        .await;
    let (_, s2) = app
        .admin_post("/services", json!({"name": "s2", "host": "b.test"}))
        .await;
    let (s, r1) = app
        .admin_post(
            "/services/s1/routes",
            json!({"name": "r1", "paths": ["/one"]}),
        )
        .await;
    assert_eq!(s, 201, "{r1}");
    let (_, s1) = app.admin_get("/services/s1").await;
    assert_eq!(
        r1["service"],
        json!({"id": s1["id"]}),
        "FK injected from the URL"
    );
    let (s, r2) = app
        .admin_post(
            "/services/s2/routes",
            json!({"name": "r2", "paths": ["/two"]}),
        )
        .await;
    assert_eq!(s, 201, "{r2}");

    let (s, list) = app.admin_get("/services/s1/routes").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["r1"]);

    let (s, got) = app.admin_get("/services/s1/routes/r1").await;
    assert_eq!(s, 200);
    assert_eq!(got["id"], r1["id"]);
    let (s, body) = app.admin_get("/services/s1/routes/r2").await;
    assert_eq!(s, 404, "r2 belongs to s2");
    assert_eq!(body, json!({"message": "Not found"}));
    let (s, _) = app.admin_delete("/services/s1/routes/r2").await;
    assert_eq!(s, 404);
    let (s, _) = app
        .admin_patch("/services/s1/routes/r2", json!({"paths": ["/x"]}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app.admin_get("/services/nope/routes").await;
    assert_eq!(s, 404, "missing parent");
    assert_eq!(app.count("routes").await, 2, "nothing deleted");

    // Through the foreign key.
    let (s, svc) = app.admin_get("/routes/r2/service").await;
    assert_eq!(s, 200);
    assert_eq!(svc["id"], s2["id"]);
    let (s, body) = app.admin_delete("/routes/r2/service").await;
    assert_eq!(s, 405, "{body}");
    assert_eq!(body["message"], "Method not allowed");
    assert_eq!(app.count("services").await, 2);
}

#[actix_web::test]
async fn pagination_pages_through_everything() {
    let app = spawn_app().await;
    for i in 0..5 {
        let (s, _) = app
            .admin_post(
                "/consumers",
                json!({"username": format!("u{i}"), "tags": ["t"]}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/consumers?size=2&tags=t".to_string();
    let mut pages = 0;
    loop {
        let (s, page) = app.admin_get(&path).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        for c in page["data"].as_array().unwrap() {
            seen.push(c["username"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with("/consumers?offset="), "{next}");
                assert!(next.contains("&size=2"), "{next}");
                assert!(next.contains("&tags=t"), "{next}");
                assert!(page["offset"].is_string());
                path = next.to_string();
            }
            None => {
                assert!(page.get("offset").is_none());
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, vec!["u0", "u1", "u2", "u3", "u4"]);

    for bad in ["abc", "0", "1001"] {
        let (s, body) = app.admin_get(&format!("/consumers?size={bad}")).await;
        assert_eq!(s, 400, "size={bad}");
        assert_eq!(body["code"], 9);
        assert_eq!(body["name"], "invalid size");
    }
    let (s, body) = app.admin_get("/consumers?offset=!!notbase64").await;
    assert_eq!(s, 400);
    assert_eq!(body["code"], 7);
    assert_eq!(body["name"], "invalid offset");
    assert_eq!(
        body["message"],
        "'!!notbase64' is not a valid offset: bad base64 encoding"
    );
    // Valid base64 that is not an offset we handed out.
    let (s, body) = app.admin_get("/consumers?offset=aGVsbG8").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["code"], 7);
}

#[actix_web::test]
async fn tags_filter_and_or() {
    let app = spawn_app().await;
    for (name, tags) in [
        ("ab", json!(["a", "b"])),
        ("a", json!(["a"])),
        ("c", json!(["c"])),
    ] {
        let (s, body) = app
            .admin_post(
                "/services",
                json!({"name": name, "host": "x.test", "tags": tags}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let names = |body: serde_json::Value| {
        let mut n: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let (_, and) = app.admin_get("/services?tags=a,b").await;
    assert_eq!(names(and), vec!["ab"]);
    let (_, or) = app.admin_get("/services?tags=b/c").await;
    assert_eq!(names(or), vec!["ab", "c"]);
    let (_, one) = app.admin_get("/services?tags=a").await;
    assert_eq!(names(one), vec!["a", "ab"]);

    let (s, body) = app
        .admin_post(
            "/services",
            json!({"name": "bad", "host": "x.test", "tags": ["a,b"]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["fields"]["tags"].is_array(), "{body}");
}

#[actix_web::test]
async fn consumers_by_custom_id() {
    let app = spawn_app().await;
    let (s, c) = app
        .admin_post(
            "/consumers",
            json!({"username": "alice", "custom_id": "42"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    app.admin_post("/consumers", json!({"username": "bob"}))
        .await;
    let (s, body) = app.admin_get("/consumers?custom_id=42").await;
    assert_eq!(s, 200);
    assert_eq!(body["data"], json!([c]));
    assert_eq!(body["next"], json!(null));
    let (_, body) = app.admin_get("/consumers?custom_id=nope").await;
    assert_eq!(body["data"], json!([]));

    let (s, body) = app.admin_post("/consumers", json!({"tags": ["x"]})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"]["@entity"],
        json!(["at least one of these fields must be non-empty: 'custom_id', 'username'"])
    );
    let (s, body) = app
        .admin_post(
            "/consumers",
            json!({"username": "carol", "custom_id": "42"}),
        )
        .await;
    assert_eq!(s, 409, "custom_id is unique: {body}");
}

#[actix_web::test]
async fn form_and_multipart_bodies() {
    let app = spawn_app().await;
    let (s, svc) = app
        .admin_form(
            "/services",
            &[
                ("name", "formed"),
                ("url", "http://a.test:8080/base"),
                ("retries", "3"),
                ("enabled", "false"),
            ],
        )
        .await;
    assert_eq!(s, 201, "{svc}");
    assert_eq!(svc["port"], 8080);
    assert_eq!(svc["retries"], 3, "strings coerced to integers");
    assert_eq!(svc["enabled"], false);
    let (s, route) = app
        .admin_form(
            "/services/formed/routes",
            &[
                ("paths[]", "/a"),
                ("paths[]", "/b"),
                ("methods", "GET"),
                ("strip_path", "false"),
                ("headers.x-version", "1"),
            ],
        )
        .await;
    assert_eq!(s, 201, "{route}");
    assert_eq!(route["paths"], json!(["/a", "/b"]));
    assert_eq!(route["methods"], json!(["GET"]));
    assert_eq!(route["strip_path"], false);
    assert_eq!(route["headers"], json!({"x-version": ["1"]}));

    let (s, body) = app
        .admin_form(
            "/services",
            &[("name", "bad"), ("host", "a.test"), ("port", "x")],
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["fields"]["port"], "expected an integer");

    let multipart = "--BoUnDaRy\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmulti\r\n\
--BoUnDaRy\r\nContent-Disposition: form-data; name=\"host\"\r\n\r\nm.test\r\n\
--BoUnDaRy\r\nContent-Disposition: form-data; name=\"port\"\r\n\r\n81\r\n\
--BoUnDaRy\r\nContent-Disposition: form-data; name=\"tags[]\"\r\n\r\nx\r\n--BoUnDaRy--\r\n";
    let (s, svc) = app
        .admin_raw(
            Method::POST,
            "/services",
            "multipart/form-data; boundary=BoUnDaRy",
            multipart,
        )
        .await;
    assert_eq!(s, 201, "{svc}");
    assert_eq!(svc["name"], "multi");
    assert_eq!(svc["host"], "m.test");
    assert_eq!(svc["port"], 81);
    assert_eq!(svc["tags"], json!(["x"]));
}

#[actix_web::test]
async fn schema_violations_in_kongs_shape() {
    let app = spawn_app().await;
    let (s, body) = app.admin_post("/services", json!({"name": "x"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2, "name": "schema violation",
            "message": "schema violation (host: required field missing)",
            "fields": {"host": "required field missing"},
        })
    );
    let (s, body) = app
        .admin_post(
            "/services",
            json!({"host": "a.test", "port": 70000, "protocol": "gopher"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"]["port"],
        "value should be between 0 and 65535"
    );
    assert_eq!(
        body["message"],
        "2 schema violations (port: value should be between 0 and 65535; protocol: expected one of: http, https, grpc, grpcs, tcp, tls, tls_passthrough, udp)"
    );

    // Entity-level checks go under @entity.
    let (s, body) = app
        .admin_post("/routes", json!({"protocols": ["http"]}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"]["@entity"],
        json!([
            "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'"
        ])
    );
    assert_eq!(
        body["message"],
        "schema violation (must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http')"
    );

    // Errors on array elements sit at the element's position.
    let (s, body) = app
        .admin_post("/routes", json!({"paths": ["/ok", "bad"]}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"]["paths"],
        json!([null, "should start with: / (fixed path) or ~/ (regex path)"])
    );
    assert_eq!(
        body["message"],
        "schema violation (paths.2: should start with: / (fixed path) or ~/ (regex path))"
    );

    // Nested plugin config errors.
    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({"name": "request-termination", "config": {"status_code": 99}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"],
        json!({"config": {"status_code": "value should be between 100 and 599"}})
    );
    assert_eq!(
        body["message"],
        "schema violation (config.status_code: value should be between 100 and 599)"
    );

    // Unknown fields are named.
    let (s, body) = app
        .admin_post("/services", json!({"host": "a.test", "colour": "red"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["fields"], json!({"colour": "unknown field"}));
    assert_eq!(app.count("services").await, 0, "nothing written");
}

#[actix_web::test]
async fn malformed_json_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    for body in ["{\"host\": ", "[1,2]", "\"host\""] {
        let (s, resp) = app
            .admin_raw(Method::POST, "/services", "application/json", body)
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(resp, json!({"message": "Cannot parse JSON body"}));
    }
    let (s, _) = app
        .admin_raw(Method::PUT, "/services/x", "application/json", "{not json")
        .await;
    assert_eq!(s, 400);
    assert_eq!(app.count("services").await, 0);
}

#[actix_web::test]
async fn foreign_keys_restrict_and_dangle() {
    let app = spawn_app().await;
    let upstream = spawn_upstream();
    let (service, route) = app.expose("fk", &upstream.url, &["/fk"]).await;
    let (s, body) = app.admin_delete("/services/fk").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body,
        json!({
            "code": 4, "name": "foreign key violation",
            "message": "an existing 'routes' entity references this 'services' entity",
            "fields": {"@referenced_by": "routes"},
        })
    );
    let (s, _) = app.admin_get("/services/fk").await;
    assert_eq!(s, 200, "nothing deleted");
    assert_eq!(app.count("routes").await, 1);
    assert_eq!(app.proxy_get("/fk").await.status(), 200, "still proxied");

    let missing = "0b3a4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";
    let (s, body) = app
        .admin_post(
            "/routes",
            json!({"paths": ["/x"], "service": {"id": missing}}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["code"], 4);
    assert_eq!(
        body["message"],
        format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' entity.")
    );
    assert_eq!(body["fields"], json!({"service": {"id": missing}}));
    assert_eq!(app.count("routes").await, 1);

    // Deleting the route first frees the service; plugins on it cascade.
    let rid = route["id"].as_str().unwrap();
    let (s, _) = app
        .admin_post(
            &format!("/routes/{rid}/plugins"),
            json!({"name": "request-termination"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(app.admin_delete(&format!("/routes/{rid}")).await.0, 204);
    assert_eq!(app.count("plugins").await, 0, "plugins cascade");
    let sid = service["id"].as_str().unwrap();
    assert_eq!(app.admin_delete(&format!("/services/{sid}")).await.0, 204);
}

#[actix_web::test]
async fn plugins_names_scopes_and_defaults() {
    let app = spawn_app().await;
    let (s, body) = app.admin_post("/plugins", json!({"name": "x"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body["fields"]["name"],
        "plugin 'x' not enabled; add it to the 'plugins' configuration property"
    );
    assert_eq!(
        body["message"],
        "schema violation (name: plugin 'x' not enabled; add it to the 'plugins' configuration property)"
    );

    let (s, plugin) = app
        .admin_post("/plugins", json!({"name": "request-termination"}))
        .await;
    assert_eq!(s, 201, "{plugin}");
    assert_eq!(
        plugin["config"]["status_code"], 503,
        "config defaults filled"
    );
    assert_eq!(plugin["config"]["echo"], false);
    assert_eq!(plugin["config"]["message"], json!(null));
    assert_eq!(plugin["enabled"], true);
    assert_eq!(
        plugin["protocols"],
        json!(["grpc", "grpcs", "http", "https"])
    );
    let (s, body) = app
        .admin_post("/plugins", json!({"name": "request-termination"}))
        .await;
    assert_eq!(s, 409, "same plugin at the same scope: {body}");
    assert_eq!(body["code"], 5);

    // Another scope is fine.
    app.admin_post("/services", json!({"name": "svc", "host": "a.test"}))
        .await;
    let (s, scoped) = app
        .admin_post(
            "/services/svc/plugins",
            json!({"name": "request-termination", "config": {"status_code": 403}}),
        )
        .await;
    assert_eq!(s, 201, "{scoped}");
    let (_, list) = app.admin_get("/services/svc/plugins").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.count("plugins").await, 2);

    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({"name": "request-termination", "config": {"message": "a", "body": "b"}, "service": {"id": scoped["service"]["id"]}}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["fields"]["config"]["@entity"],
        json!(["message cannot be used with content_type or body"])
    );
}

#[actix_web::test]
async fn info_endpoints() {
    let app = spawn_app().await;
    let (s, node) = app.admin_get("/").await;
    assert_eq!(s, 200);
    assert!(node["version"].is_string());
    assert!(node["node_id"].is_string());
    let available = &node["plugins"]["available_on_server"];
    assert!(available["request-termination"].is_object(), "{node}");
    assert!(available["oauth2"].is_object(), "{node}");

    let (s, status) = app.admin_get("/status").await;
    assert_eq!(s, 200);
    assert_eq!(status["database"]["reachable"], true);

    let (s, enabled) = app.admin_get("/plugins/enabled").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = enabled["enabled_plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(names.contains(&"request-termination") && names.contains(&"oauth2"));

    let (s, schema) = app.admin_get("/schemas/plugins/request-termination").await;
    assert_eq!(s, 200, "{schema}");
    let config = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f.get("config"))
        .expect("config field");
    let status_code = config["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f.get("status_code"))
        .expect("status_code");
    assert_eq!(status_code["default"], 503);
    assert_eq!(status_code["between"], json!([100, 599]));
    let (s, _) = app.admin_get("/schemas/plugins/nope").await;
    assert_eq!(s, 404);

    let (s, schema) = app.admin_get("/schemas/services").await;
    assert_eq!(s, 200);
    let host = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f.get("host"))
        .expect("host");
    assert_eq!(host["required"], true);
    let (s, _) = app.admin_get("/schemas/nope").await;
    assert_eq!(s, 404);
    let (s, _) = app.admin_get("/nope").await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn admin_token_is_required_when_set() {
    let mut settings = test_settings();
    settings.admin_token = Some(portcullis::config::Secret::new("s3cret".into()));
    let app = spawn_with(settings).await;
    let (s, body) = app.admin_get("/services").await;
    assert_eq!(s, 401);
    assert_eq!(
        body["message"],
        "Unauthorized: a valid admin token is required"
    );
    let r = app
        .http
        .get(format!("{}/services", app.admin))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = app
        .http
        .get(format!("{}/services", app.admin))
        .header("authorization", "Bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(format!("{}/services", app.admin))
        .header("kong-admin-token", "s3cret")
        .json(&json!({"host": "a.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (s, _) = app.admin_get("/status").await;
    assert_eq!(s, 401, "/status needs the token like every admin request");
    let r = app
        .http
        .get(format!("{}/status", app.admin))
        .header("kong-admin-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, node) = app.admin_get("/").await;
    assert_eq!(s, 401, "{node}");
}

#[actix_web::test]
async fn oversized_body_is_413_and_writes_nothing() {
    let mut settings = test_settings();
    settings.client_max_body_size = "1k".into();
    let app = spawn_with(settings).await;
    let big = "x".repeat(4096);
    let (s, body) = app
        .admin_post("/services", json!({"host": "a.test", "tags": [big]}))
        .await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["message"], "request body too large");
    let (s, _) = app
        .admin_post("/services", json!({"name": "small", "host": "a.test"}))
        .await;
    assert_eq!(s, 201, "under the limit is fine");
    assert_eq!(app.count("services").await, 1);
}

#[actix_web::test]
async fn oversized_declared_body_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut settings = test_settings();
    settings.client_max_body_size = "1k".into();
    let app = spawn_with(settings).await;
    let addr = app.admin.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Announce 10 GB and send none of it: the answer must not wait for the body.
    conn.write_all(
        b"POST /services HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read(&mut head))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A chunked body over the limit is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let resp = app
        .http
        .post(format!("{}/services", app.admin))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[actix_web::test]
async fn nested_put_patch_and_pagination_keep_the_parent() {
    let app = spawn_app().await;
    app.admin_post("/services", json!({"name": "s", "host": "a.test"}))
        .await;
    let (_, other) = app
        .admin_post("/services", json!({"name": "o", "host": "b.test"}))
        .await;
    let (s, route) = app
        .admin_put("/services/s/routes/put-route", json!({"paths": ["/p"]}))
        .await;
    assert_eq!(s, 200, "{route}");
    let (_, svc) = app.admin_get("/services/s").await;
    assert_eq!(route["service"]["id"], svc["id"]);
    assert_eq!(route["name"], "put-route");
    for i in 0..3 {
        let (s, _) = app
            .admin_post("/services/s/routes", json!({"paths": [format!("/n{i}")]}))
            .await;
        assert_eq!(s, 201);
    }
    app.admin_post("/services/o/routes", json!({"paths": ["/o"]}))
        .await;
    let (s, page) = app.admin_get("/services/s/routes?size=3").await;
    assert_eq!(s, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    let next = page["next"].as_str().unwrap();
    assert!(next.starts_with("/services/s/routes?offset="), "{next}");
    let (_, rest) = app.admin_get(next).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], json!(null));

    // Re-pointing a route at a missing service is a FK violation; at another one is fine.
    let (s, body) = app
        .admin_patch(
            "/routes/put-route",
            json!({"service": {"id": "0b3a4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"}}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["code"], 4);
    let (s, moved) = app
        .admin_patch("/routes/put-route", json!({"service": {"id": other["id"]}}))
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["service"]["id"], other["id"]);
    assert_eq!(moved["paths"], json!(["/p"]));
}

#[actix_web::test]
async fn plugin_config_from_a_form_and_consumer_cascade() {
    let app = spawn_app().await;
    let (s, plugin) = app
        .admin_form(
            "/plugins",
            &[
                ("name", "request-termination"),
                ("config.status_code", "429"),
                ("config.message", "slow down"),
                ("protocols[]", "http"),
            ],
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    assert_eq!(plugin["config"]["status_code"], 429);
    assert_eq!(plugin["protocols"], json!(["http"]));

    let (s, _) = app
        .admin_post("/consumers", json!({"username": "carl"}))
        .await;
    assert_eq!(s, 201);
    let (s, scoped) = app
        .admin_post(
            "/consumers/carl/plugins",
            json!({"name": "request-termination"}),
        )
        .await;
    assert_eq!(s, 201, "{scoped}");
    assert_eq!(app.count("plugins").await, 2);
    assert_eq!(app.admin_delete("/consumers/carl").await.0, 204);
    assert_eq!(app.count("plugins").await, 1, "consumer plugins cascade");

    let (s, body) = app
        .admin_post(
            "/plugins",
            json!({"name": "request-termination", "config": {"status_code": "403"}}),
        )
        .await;
    assert_eq!(s, 400, "JSON is not coerced: {body}");
    assert_eq!(
        body["fields"]["config"]["status_code"],
        "expected an integer"
    );
}

/// Kong's stream protocols are in its schema, but this gateway proxies HTTP and gRPC only: a
/// service or route naming one is refused, and nothing is stored.
#[actix_web::test]
async fn stream_protocols_are_refused_by_name() {
    let app = spawn_app().await;
    let refusal = |p: &str| {
        format!("'{p}' is not supported by this gateway: it proxies http, https, grpc and grpcs (stream routes are not implemented)")
    };
    for protocol in ["tcp", "tls", "tls_passthrough", "udp"] {
        let (s, body) = app
            .admin_post(
                "/services",
                json!({"host": "a.test", "port": 9000, "protocol": protocol}),
            )
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["fields"]["protocol"], refusal(protocol), "{body}");
        let (s, body) = app
            .admin_post(
                "/routes",
                json!({"protocols": ["http", protocol], "paths": ["/s"]}),
            )
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(
            body["fields"]["protocols"],
            json!([null, refusal(protocol)]),
            "{body}"
        );
    }
    assert_eq!(app.count("services").await, 0);
    assert_eq!(app.count("routes").await, 0);
}
