//! Kong's readiness probe on the status listener (`GET /status/ready`) and its drain
//! (`POST /status/ready` with `status=draining`): on memory, DB-less and a Postgres that stops.

use portcullis::config::{Database, Secret, Settings};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, or_skip, spawn_upstream, spawn_with, status_json, test_settings, PrivateCluster,
    TestApp,
};

/// The test settings with a status listener on a free port.
fn with_status(settings: Settings) -> Settings {
    Settings {
        status_listen: "127.0.0.1:0".into(),
        ..settings
    }
}

/// `method path` on the status listener.
async fn on_status(app: &TestApp, method: Method, path: &str) -> reqwest::Response {
    app.http
        .request(method, format!("{}{path}", app.status))
        .send()
        .await
        .unwrap()
}

/// `GET /status/ready`: status and body.
async fn ready(app: &TestApp) -> (u16, Value) {
    status_json(on_status(app, Method::GET, "/status/ready").await).await
}

/// `POST /status/ready` as `build` makes it; status and body (`null` when empty).
async fn post_ready(
    app: &TestApp,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let r = build(app.http.post(format!("{}/status/ready", app.status)))
        .send()
        .await
        .unwrap();
    status_json(r).await
}

#[actix_web::test]
async fn a_node_is_ready_until_drained_and_still_proxies_then() {
    let app = spawn_with(with_status(test_settings())).await;
    let upstream = spawn_upstream();
    app.expose("echo", &upstream.url, &["/echo"]).await;
    assert_eq!(ready(&app).await, (200, json!({ "message": "ready" })));

    // Anything but `status=draining` is refused, and changes nothing.
    for body in [
        json!({}),
        json!({ "status": "ready" }),
        json!({ "status": 1 }),
    ] {
        assert_eq!(
            post_ready(&app, |r| r.json(&body)).await,
            (400, json!({ "message": "status must be \"draining\"" })),
            "{body}"
        );
    }
    assert_eq!(
        post_ready(&app, |r| r
            .header("content-type", "application/json")
            .body("{"))
        .await
        .0,
        400
    );
    assert_eq!(ready(&app).await.0, 200);

    // Kong's `kong drain` sends JSON; a form or the query string say the same.
    assert_eq!(
        post_ready(&app, |r| r.form(&[("status", "draining")])).await,
        (204, Value::Null)
    );
    assert_eq!(ready(&app).await, (503, json!({ "message": "draining" })));
    assert_eq!(
        post_ready(&app, |r| r.json(&json!({ "status": "draining" }))).await,
        (204, Value::Null),
        "draining again"
    );
    // A draining node serves what it is still sent.
    assert_eq!(app.proxy_get("/echo/x").await.status(), 200);
    assert_eq!(on_status(&app, Method::GET, "/status").await.status(), 200);

    // The other methods: 405 naming the two.
    let r = on_status(&app, Method::PUT, "/status/ready").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    let r = on_status(&app, Method::GET, "/status/readiness").await;
    assert_eq!(r.status(), 404);
}

#[actix_web::test]
async fn with_an_admin_token_only_its_holder_drains_the_node() {
    let app = spawn_with(with_status(Settings {
        admin_token: Some(Secret::new("s3cret".into())),
        ..test_settings()
    }))
    .await;
    // The probe itself stays open, as load balancers call it.
    assert_eq!(ready(&app).await.0, 200);
    for wrong in [None, Some("s3cre"), Some("s3cret-")] {
        let (status, body) = post_ready(&app, |r| {
            let r = r.json(&json!({ "status": "draining" }));
            match wrong {
                Some(token) => r.header("kong-admin-token", token),
                None => r,
            }
        })
        .await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
    }
    assert_eq!(ready(&app).await.0, 200, "still ready");
    assert_eq!(
        post_ready(&app, |r| r
            .query(&[("status", "draining")])
            .bearer_auth("s3cret"))
        .await
        .0,
        204
    );
    assert_eq!(ready(&app).await, (503, json!({ "message": "draining" })));
}

#[actix_web::test]
async fn a_db_less_node_is_ready_while_a_configuration_with_entities_runs() {
    let app = spawn_with(with_status(Settings {
        database: Database::Off,
        ..test_settings()
    }))
    .await;
    let empty = json!({
        "message": "no configuration available (empty configuration present)"
    });
    assert_eq!(ready(&app).await, (503, empty.clone()));
    let upstream = spawn_upstream();
    let config = json!({
        "_format_version": "3.0",
        "services": [{ "name": "s", "url": upstream.url, "routes": [{ "paths": ["/s"] }] }],
    });
    let (s, b) = app
        .admin_post("/config", json!({ "config": config.to_string() }))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(ready(&app).await, (200, json!({ "message": "ready" })));
    // A configuration without an entity is Kong's empty one: zeros for a hash, not ready.
    let (s, b) = app
        .admin_post(
            "/config",
            json!({ "config": json!({ "_format_version": "3.0" }).to_string() }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(ready(&app).await, (503, empty));
    let (_, status) = app.admin_get("/status").await;
    assert_eq!(status["configuration_hash"], json!("0".repeat(32)));
}

#[actix_web::test]
async fn a_node_whose_database_does_not_answer_is_not_ready() {
    let Some(cluster) = or_skip(PrivateCluster::start()) else {
        return;
    };
    let settings = cluster.migrated_settings("pt_ready", 1000).await;
    let app = spawn_with(with_status(settings)).await;
    assert_eq!(ready(&app).await, (200, json!({ "message": "ready" })));
    cluster.pg_ctl("stop").expect("cluster stops");
    assert_eq!(
        ready(&app).await,
        (503, json!({ "message": "failed to connect to database" }))
    );
    cluster.pg_ctl("start").expect("cluster starts");
    eventually(
        std::time::Duration::from_secs(30),
        "ready again",
        || async { (ready(&app).await.0 == 200).then_some(()) },
    )
    .await;
}
