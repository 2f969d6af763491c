//! The tutorial "Kong Gateway + OAuth2 in 4 steps" (Step On, Shoe Fly Shoe, Clark), request
//! for request as a user follows it, and a real OAuth 2.0 client library driving the gateway.

use std::net::TcpListener;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, PkceCodeChallenge, PkceCodeVerifier,
    RefreshToken, Scope, TokenResponse, TokenUrl,
};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, status_json, TestApp};

/// Step On's API server: `GET /stepcounts` over HTTPS with a self-signed certificate, answering
/// 401 without a user, else that user's step counts, and echoing the identity headers it saw.
fn spawn_step_on() -> u16 {
    portcullis::tls::install_crypto_provider();
    let (certs, key) = portcullis::tls::self_signed().unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new().route(
            "/stepcounts",
            web::get().to(|req: HttpRequest| async move {
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let seen = json!({
                    "x-consumer-username": h("x-consumer-username"),
                    "x-authenticated-userid": h("x-authenticated-userid"),
                    "x-authenticated-scope": h("x-authenticated-scope"),
                    "x-anonymous-consumer": h("x-anonymous-consumer"),
                });
                match h("x-authenticated-userid").or_else(|| h("mock-logged-in-as")) {
                    None => HttpResponse::Unauthorized()
                        .json(json!({"message": "who are you?", "seen": seen})),
                    Some(user) => HttpResponse::Ok().json(
                        json!({"user": user, "stepcounts": [8123, 10456, 4521], "seen": seen}),
                    ),
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen_rustls_0_23(listener, config)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    port
}

/// Admin call over the admin TLS listener, as the tutorial does (`https://localhost:8001`).
async fn admin(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.admin_tls))
        .json(&body)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

#[actix_web::test]
async fn the_step_on_tutorial_works_as_written() {
    let app = spawn_app().await;
    let step_on = spawn_step_on();
    let proxy = app.proxy_tls.clone();

    // 2. Add service and route.
    let (s, b) = admin(
        &app,
        "/services",
        json!({"name": "step-on-api-server", "url": format!("https://localhost:{step_on}")}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = admin(&app, "/routes", json!({"name": "step-on-route", "paths": ["/stepon"], "service": {"name": "step-on-api-server"}})).await;
    assert_eq!(s, 201, "{b}");
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .header("mock-logged-in-as", "clark")
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!((s, b["user"].as_str()), (200, Some("clark")), "{b}");

    // 3. Enable the plugin; without a token the gateway refuses.
    let (s, plugin) = admin(
        &app,
        "/services/step-on-api-server/plugins",
        json!({"name": "oauth2", "config": {"scopes": ["user_profile", "biometric", "step_counts"], "enable_authorization_code": true}}),
    )
    .await;
    assert_eq!(s, 201, "{plugin}");
    let provision_key = plugin["config"]["provision_key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .header("mock-logged-in-as", "clark")
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, &b),
        (
            401,
            &json!({"error": "invalid_request", "error_description": "The access token is missing"})
        )
    );

    // The client application: consumer and credential.
    let (s, _) = admin(&app, "/consumers", json!({"username": "shoeflyshoe"})).await;
    assert_eq!(s, 201);
    let (s, cred) = admin(
        &app,
        "/consumers/shoeflyshoe/oauth2",
        json!({"name": "Shoe Fly Shoe Customer Rewards", "redirect_uris": ["http://localhost:1234/authorize"]}),
    )
    .await;
    assert_eq!(s, 201, "{cred}");
    let client_id = cred["client_id"].as_str().unwrap().to_string();
    let client_secret = cred["client_secret"].as_str().unwrap().to_string();

    // 4. Clark authorizes; Step On's web server asks for a code.
    let r = app
        .http
        .post(format!("{proxy}/stepon/oauth2/authorize"))
        .json(
            &json!({"client_id": client_id, "response_type": "code", "scope": "step_counts",
                      "provision_key": provision_key, "authenticated_userid": "clark"}),
        )
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(s, 200, "{b}");
    let redirect = b["redirect_uri"].as_str().unwrap();
    let code = redirect
        .strip_prefix("http://localhost:1234/authorize?code=")
        .and_then(|rest| rest.split_once("&iss=").map(|(code, _)| code))
        .unwrap_or_else(|| panic!("{redirect}"));

    // The store exchanges the code.
    let r = app
        .http
        .post(format!("{proxy}/stepon/oauth2/token"))
        .json(&json!({"grant_type": "authorization_code", "client_id": client_id, "client_secret": client_secret, "code": code}))
        .send()
        .await
        .unwrap();
    let (s, tokens) = status_json(r).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["expires_in"], 7200, "expires in two hours");
    let access = tokens["access_token"].as_str().unwrap().to_string();

    // The store calls the resource server with the token.
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["user"], "clark");
    assert_eq!(b["seen"]["x-consumer-username"], "shoeflyshoe");
    assert_eq!(b["seen"]["x-authenticated-userid"], "clark");
    assert_eq!(b["seen"]["x-authenticated-scope"], "step_counts");

    // Refreshing invalidates the old access token.
    let r = app
        .http
        .post(format!("{proxy}/stepon/oauth2/token"))
        .json(&json!({"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret, "refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    let (s, fresh) = status_json(r).await;
    assert_eq!(s, 200, "{fresh}");
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "old access token refused after refresh");
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .bearer_auth(fresh["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Anonymous fallback: requests without a token reach the upstream as the anonymous consumer.
    let (s, _) = admin(&app, "/consumers", json!({"username": "anonymous-users"})).await;
    assert_eq!(s, 201);
    let r = app
        .http
        .patch(format!(
            "{}/plugins/{}",
            app.admin_tls,
            plugin["id"].as_str().unwrap()
        ))
        .json(&json!({"config": {"anonymous": "anonymous-users"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(format!("{proxy}/stepon/stepcounts"))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        s, 401,
        "the upstream itself refuses a request without a user: {b}"
    );
    assert_eq!(
        b["message"], "who are you?",
        "the request reached the upstream"
    );
    assert_eq!(b["seen"]["x-anonymous-consumer"], "true");
    assert_eq!(b["seen"]["x-consumer-username"], "anonymous-users");
}

async fn oauth_fixture() -> (TestApp, String, String, String) {
    let app = spawn_app().await;
    let upstream = crate::helpers::spawn_upstream();
    app.expose("svc", &upstream.url, &["/api"]).await;
    let (s, plugin) = app
        .admin_post(
            "/services/svc/plugins",
            json!({"name": "oauth2", "config": {"scopes": ["read"], "enable_authorization_code": true, "enable_client_credentials": true, "pkce": "strict"}}),
        )
        .await;
    assert_eq!(s, 201, "{plugin}");
    app.admin_post("/consumers", json!({"username": "lib"}))
        .await;
    let (s, cred) = app
        .admin_post("/consumers/lib/oauth2", json!({"name": "lib", "redirect_uris": ["http://localhost:9/cb"], "hash_secret": true, "client_secret": "s3cret-lib"}))
        .await;
    assert_eq!(s, 201, "{cred}");
    assert_ne!(cred["client_secret"], "s3cret-lib", "hashed at rest");
    let provision = plugin["config"]["provision_key"]
        .as_str()
        .unwrap()
        .to_string();
    (
        app,
        cred["client_id"].as_str().unwrap().to_string(),
        "s3cret-lib".to_string(),
        provision,
    )
}

fn lib_http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[actix_web::test]
async fn oauth2_crate_drives_pkce_code_flow_client_credentials_and_refresh() {
    // RFC 7636 appendix B.
    let verifier = PkceCodeVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_string());
    let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
    assert_eq!(
        challenge.as_str(),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );

    let (app, client_id, secret, provision) = oauth_fixture().await;
    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_client_secret(ClientSecret::new(secret))
        .set_auth_uri(AuthUrl::new(format!("{}/api/oauth2/authorize", app.proxy_tls)).unwrap())
        .set_token_uri(TokenUrl::new(format!("{}/api/oauth2/token", app.proxy_tls)).unwrap());
    let http = lib_http();

    // The operator's login app asks for the code with the provision key and the challenge.
    let r = app
        .http
        .post(format!("{}/api/oauth2/authorize", app.proxy_tls))
        .json(&json!({"client_id": client_id, "response_type": "code", "scope": "read", "provision_key": provision,
                      "authenticated_userid": "clark", "code_challenge": challenge.as_str(), "code_challenge_method": "S256"}))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(s, 200, "{b}");
    let code = b["redirect_uri"]
        .as_str()
        .unwrap()
        .split("code=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_string();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange with PKCE");
    let refresh = tokens.refresh_token().expect("refresh token").clone();
    let r = app
        .http
        .get(format!("{}/api/x", app.proxy))
        .bearer_auth(tokens.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let refreshed = client
        .exchange_refresh_token(&RefreshToken::new(refresh.secret().clone()))
        .request_async(&http)
        .await
        .expect("refresh");
    assert_ne!(
        refreshed.access_token().secret(),
        tokens.access_token().secret()
    );

    let cc = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http)
        .await
        .expect("client credentials");
    let r = app
        .http
        .get(format!("{}/api/x", app.proxy))
        .bearer_auth(cc.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[actix_web::test]
async fn pkce_strict_refuses_a_wrong_verifier() {
    let (app, client_id, secret, provision) = oauth_fixture().await;
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new("a".repeat(50)));
    let r = app
        .http
        .post(format!("{}/api/oauth2/authorize", app.proxy_tls))
        .json(&json!({"client_id": client_id, "response_type": "code", "scope": "read", "provision_key": provision,
                      "authenticated_userid": "clark", "code_challenge": challenge.as_str()}))
        .send()
        .await
        .unwrap();
    let (_, b) = status_json(r).await;
    let code = b["redirect_uri"]
        .as_str()
        .unwrap()
        .split("code=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_string();
    let r = app
        .http
        .post(format!("{}/api/oauth2/token", app.proxy_tls))
        .json(&json!({"grant_type": "authorization_code", "client_id": client_id, "client_secret": secret, "code": code, "code_verifier": "b".repeat(50)}))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(
        (s, &b),
        (
            400,
            &json!({"error": "invalid_grant", "error_description": "Invalid code"})
        )
    );
}
