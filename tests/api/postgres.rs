//! The gateway on Postgres: CRUD in a schema of its own, restarts, concurrent creates, and an
//! outage of the database while the gateway runs (on a private Postgres cluster this test starts,
//! stops and restarts).

use std::time::Duration;

use portcullis::startup::pg_settings;
use portcullis_stores::postgres::{self, PgTokenStore};
use portcullis_stores::{TokenHash, TokenRecord, TokenStore};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    eventually, or_skip, spawn_pg_app, spawn_upstream, spawn_with, PgSchema, PrivateCluster,
};

#[actix_web::test]
async fn crud_on_postgres_answers_like_kong() {
    let app = spawn_pg_app().await;
    let upstream = spawn_upstream();
    let (service, route) = app.expose("pg-svc", &upstream.url, &["/pg"]).await;
    assert_eq!(service["name"], "pg-svc");
    assert_eq!(route["service"]["id"], service["id"]);

    let (s, got) = app.admin_get("/services/pg-svc").await;
    assert_eq!(s, 200);
    assert_eq!(got, service, "read back equals the create answer");
    let resp = app.proxy_get("/pg/echo").await;
    assert_eq!(resp.status(), 200);

    let (s, body) = app
        .admin_post("/services", json!({"name": "pg-svc", "host": "b.test"}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(body["fields"], json!({"name": "pg-svc"}));

    let (s, body) = app
        .admin_post(
            "/routes",
            json!({"paths": ["/x"], "service": {"id": Uuid::new_v4().to_string()}}),
        )
        .await;
    assert_eq!(s, 400, "dangling foreign key: {body}");

    let (s, body) = app
        .admin_call(reqwest::Method::DELETE, "/services/pg-svc", None)
        .await;
    assert_eq!(
        (s, &body),
        (
            400,
            &json!({
                "code": 4, "name": "foreign key violation",
                "message": "an existing 'routes' entity references this 'services' entity",
                "fields": {"@referenced_by": "routes"},
            })
        ),
        "a service with routes cannot be deleted"
    );
    let (s, _) = app
        .admin_call(reqwest::Method::DELETE, "/routes/pg-svc-route", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app
        .admin_call(reqwest::Method::DELETE, "/services/pg-svc", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app.admin_get("/services/pg-svc").await;
    assert_eq!(s, 404);
}

#[actix_web::test]
async fn entities_and_tokens_survive_a_restart() {
    let schema = PgSchema::migrated().await;
    let first = spawn_with(schema.settings.clone()).await;
    let upstream = spawn_upstream();
    first.expose("keep", &upstream.url, &["/keep"]).await;
    let (s, consumer) = first
        .admin_post("/consumers", json!({"username": "clark"}))
        .await;
    assert_eq!(s, 201, "{consumer}");
    let (s, plugin) = first
        .admin_post(
            "/routes/keep-route/plugins",
            // No config: the core's plugin schema refuses config keys for now (reported).
            json!({"name": "request-termination"}),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    let pool = postgres::connect(&pg_settings(&schema.settings))
        .await
        .unwrap();
    let token = TokenRecord {
        id: Uuid::new_v4(),
        credential_id: Uuid::new_v4(),
        service_id: None,
        access_token_hash: TokenHash([7; 32]),
        refresh_token_hash: Some(TokenHash([8; 32])),
        token_type: "bearer".into(),
        expires_in: 7200,
        authenticated_userid: None,
        scope: Some("read".into()),
        created_at: 1,
        expires_at: None,
        family_id: Uuid::new_v4(),
        code_id: None,
    };
    PgTokenStore::new(pool.clone())
        .insert_token(token.clone())
        .await
        .unwrap();
    first.stop().await;

    let second = spawn_with(schema.settings.clone()).await;
    let (s, got) = second.admin_get("/consumers/clark").await;
    assert_eq!(s, 200);
    assert_eq!(got, consumer);
    let (s, got) = second
        .admin_get(&format!("/plugins/{}", plugin["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(got, plugin);
    let resp = second.proxy_get("/keep/anything").await;
    assert_eq!(
        resp.status(),
        503,
        "the restarted node routes and runs plugins (request-termination's default)"
    );
    assert_eq!(
        PgTokenStore::new(pool)
            .token_by_access(&TokenHash([7; 32]), 2)
            .await
            .unwrap(),
        Some(token)
    );
}

#[actix_web::test]
async fn parallel_creates_of_one_name_give_one_201_and_the_rest_409() {
    let app = spawn_pg_app().await;
    let n = 8;
    let calls = (0..n).map(|i| {
        app.admin_post(
            "/services",
            json!({"name": "same", "host": format!("h{i}.test")}),
        )
    });
    let results = futures_util::future::join_all(calls).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let conflicts = results.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((created, conflicts), (1, n - 1), "{results:?}");
}

#[actix_web::test]
async fn serve_refuses_a_schema_with_pending_migrations() {
    let schema = PgSchema::unmigrated();
    let err = portcullis::startup::Application::build(schema.settings.clone())
        .await
        .err()
        .expect("refuses to start");
    let line = err.to_string();
    assert!(line.contains("portcullis migrations bootstrap"), "{line}");
}

#[actix_web::test]
async fn unreachable_postgres_at_start_is_one_line_naming_host_and_port() {
    let mut settings = PgSchema::unmigrated().settings.clone();
    settings.pg_port = crate::helpers::dead_port();
    let line = portcullis::startup::Application::build(settings.clone())
        .await
        .err()
        .expect("refuses to start")
        .to_string();
    assert!(
        line.contains(&format!("127.0.0.1:{}", settings.pg_port)),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}

#[actix_web::test]
async fn postgres_outage_answers_503_keeps_proxying_and_recovers() {
    let Some(cluster) = or_skip(PrivateCluster::start()) else {
        return;
    };
    let settings = cluster.migrated_settings("pt_outage", 2000).await;
    let app = spawn_with(settings).await;
    let upstream = spawn_upstream();
    app.expose("up", &upstream.url, &["/up"]).await;
    assert_eq!(app.proxy_get("/up/echo").await.status(), 200);

    cluster.pg_ctl("stop").expect("cluster stops");
    let (s, body) = app
        .admin_post("/services", json!({"name": "during", "host": "d.test"}))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(body["message"].is_string(), "Kong-style body: {body}");
    let text = body.to_string().to_lowercase();
    assert!(
        !text.contains("sql") && !text.contains("postgres") && !text.contains("error connecting"),
        "no internals: {body}"
    );
    assert_eq!(
        app.proxy_get("/up/echo").await.status(),
        200,
        "the proxy keeps serving from its snapshot"
    );

    cluster.pg_ctl("start").expect("cluster starts again");
    eventually(
        Duration::from_secs(20),
        "admin writes work again",
        || async {
            let (s, _) = app
                .admin_post("/services", json!({"name": "after", "host": "a.test"}))
                .await;
            (s == 201).then_some(())
        },
    )
    .await;
    let (s, _) = app.admin_get("/services/during").await;
    assert_eq!(s, 404, "the refused write left nothing behind");
    let (s, _) = app.admin_get("/services/after").await;
    assert_eq!(s, 200);
}

#[actix_web::test]
async fn text_postgres_cannot_hold_is_a_400_not_a_500() {
    let app = spawn_pg_app().await;
    let (s, body) = app
        .admin_post("/consumers", json!({"username": "nul\u{0}byte"}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["name"], "schema violation", "{body}");
    assert!(body["fields"]["username"].is_string(), "{body}");
    let (s, body) = app
        .admin_post(
            "/consumers",
            json!({"username": "fine", "tags": ["a\u{0}"]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = app.admin_get("/consumers/fine").await;
    assert_eq!(s, 404, "nothing written");
}
