//! Where the `oauth2` plugin deliberately differs from Kong (the README's table), each claim with
//! a test that fails when the behaviour goes: codes consumed by a failed redemption, PKCE `plain`,
//! and the grace window of refresh-token reuse.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_with, test_settings};
use crate::oauth2::{fixture, fixture_on, Fixture};

/// RFC 7636 appendix B: a verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const S256_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn config(extra: Value) -> Value {
    let mut config = json!({"scopes": ["email"], "provision_key": "provision123",
                            "enable_authorization_code": true, "token_expiration": 3600});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// Redeems `code` as clientid123 with `extra` fields; status and body.
async fn redeem(f: &Fixture, code: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"code": code, "client_id": "clientid123", "client_secret": "secret123",
                          "grant_type": "authorization_code"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, _, b) = f.post("/api/oauth2/token", body).await;
    (s, b)
}

fn invalid_code() -> Value {
    json!({"error": "invalid_request", "error_description": "Invalid code"})
}

/// How many tokens the gateway holds.
async fn tokens_issued(f: &Fixture) -> usize {
    f.app.count("oauth2_tokens").await
}

#[actix_web::test]
async fn a_code_presented_by_another_client_is_consumed() {
    let f = fixture(config(json!({}))).await;
    let (s, b) = f
        .app
        .admin_post(
            "/consumers/bob/oauth2",
            json!({"name": "other", "client_id": "clientid789", "client_secret": "secret789",
                   "redirect_uris": ["http://google.test/other"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let code = f.code(json!({})).await;

    let (s, _, b) = f
        .post(
            "/api/oauth2/token",
            json!({"code": code, "client_id": "clientid789", "client_secret": "secret789",
                                          "grant_type": "authorization_code"}),
        )
        .await;
    assert_eq!((s, b), (400, invalid_code()), "another client");
    let (s, b) = redeem(&f, &code, json!({})).await;
    assert_eq!(
        (s, b),
        (400, invalid_code()),
        "the rightful client cannot use it afterwards: it was probably intercepted"
    );
    assert_eq!(tokens_issued(&f).await, 0);

    // The same redemption of an untouched code works: the refusal above is the consumption.
    let fresh = f.code(json!({})).await;
    let (s, b) = redeem(&f, &fresh, json!({})).await;
    assert_eq!(s, 200, "{b}");
}

#[actix_web::test]
async fn a_code_presented_with_a_wrong_verifier_is_consumed() {
    let f = fixture(config(json!({}))).await;
    let challenge = json!({"code_challenge": S256_CHALLENGE, "code_challenge_method": "S256"});
    let code = f.code(challenge.clone()).await;

    let (s, b) = redeem(&f, &code, json!({"code_verifier": "x".repeat(43)})).await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid code"})
        ),
        "wrong verifier"
    );
    let (s, b) = redeem(&f, &code, json!({"code_verifier": VERIFIER})).await;
    assert_eq!(
        (s, b),
        (400, invalid_code()),
        "the right verifier comes too late"
    );
    assert_eq!(tokens_issued(&f).await, 0);

    let fresh = f.code(challenge).await;
    let (s, b) = redeem(&f, &fresh, json!({"code_verifier": VERIFIER})).await;
    assert_eq!(s, 200, "the right verifier on an untouched code: {b}");
}

#[actix_web::test]
async fn pkce_plain_challenges_are_accepted_and_checked() {
    let f = fixture(config(json!({}))).await;
    let plain = json!({"code_challenge": VERIFIER, "code_challenge_method": "plain"});

    let code = f.code(plain.clone()).await;
    let (s, b) = redeem(&f, &code, json!({"code_verifier": VERIFIER})).await;
    assert_eq!(s, 200, "{b}");
    let (s, echo) = f.get_with(b["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{echo}");

    // `plain` compares the verifier itself: its S256 form does not match.
    let code = f.code(plain).await;
    let (s, b) = redeem(&f, &code, json!({"code_verifier": S256_CHALLENGE})).await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid code"})
        )
    );
}

#[actix_web::test]
async fn reusing_a_rotated_refresh_token_revokes_the_family_once_the_grace_has_passed() {
    let f = fixture(config(json!({"refresh_token_reuse_grace": 2}))).await;
    let t1 = f.tokens().await;
    let refresh = json!({"refresh_token": t1["refresh_token"], "client_id": "clientid123",
                         "client_secret": "secret123", "grant_type": "refresh_token"});
    let (s, _, t2) = f.post("/api/oauth2/token", refresh.clone()).await;
    assert_eq!(s, 200, "{t2}");
    let rotated = Instant::now();
    let t2_access = t2["access_token"].as_str().unwrap().to_string();
    let refused = json!({"error": "invalid_request", "error_description": "Invalid refresh_token"});

    // Inside the window (a concurrent refresh that lost): refused, the family kept.
    let (s, _, b) = f.post("/api/oauth2/token", refresh.clone()).await;
    assert_eq!((s, &b), (400, &refused));
    assert_eq!(
        f.get_with(&t2_access).await.0,
        200,
        "inside the grace window"
    );

    // Once the window has passed, the same reuse revokes the family.
    eventually(
        Duration::from_secs(10),
        "a reuse after the grace revokes the family",
        || async {
            let (s, _, b) = f.post("/api/oauth2/token", refresh.clone()).await;
            assert_eq!((s, &b), (400, &refused));
            (f.get_with(&t2_access).await.0 == 401).then_some(())
        },
    )
    .await;
    assert!(
        rotated.elapsed() >= Duration::from_secs(1),
        "revoked after {:?}, inside a 2 s grace",
        rotated.elapsed()
    );
}

/// A gateway on the memory store bounded to 5 tokens, with client_credentials enabled.
async fn bounded_fixture(extra: Value) -> Fixture {
    let settings = portcullis::config::Settings {
        memory_max_tokens: Some(5),
        ..test_settings()
    };
    let mut config = json!({"scopes": ["email"], "provision_key": "provision123",
                            "enable_client_credentials": true, "token_expiration": 3600});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    fixture_on(spawn_with(settings).await, config).await
}

async fn client_credentials(f: &Fixture) -> (u16, Value) {
    let (s, _, b) = f
        .post(
            "/api/oauth2/token",
            json!({"client_id": "clientid123", "client_secret": "secret123",
                                          "grant_type": "client_credentials", "scope": "email"}),
        )
        .await;
    (s, b)
}

fn store_full() -> Value {
    json!({"error": "temporarily_unavailable",
           "error_description": "The authorization server holds as many tokens as it may; try again later"})
}

/// Kong's memory-less design has no such limit; `database = memory` here stops issuing at
/// `memory_max_tokens` instead of growing until the process is killed, and existing tokens work on.
#[actix_web::test]
async fn memory_max_tokens_refuses_issuance_until_a_token_is_revoked() {
    let f = bounded_fixture(json!({})).await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let (s, b) = client_credentials(&f).await;
        assert_eq!(s, 200, "{b}");
        tokens.push(b["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(client_credentials(&f).await, (503, store_full()));
    for token in &tokens {
        assert_eq!(
            f.get_with(token).await.0,
            200,
            "existing tokens keep working"
        );
    }
    let (s, page) = f.app.admin_get("/oauth2_tokens").await;
    assert_eq!(s, 200, "{page}");
    let id = page["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        f.app.admin_delete(&format!("/oauth2_tokens/{id}")).await.0,
        204
    );
    let (s, b) = client_credentials(&f).await;
    assert_eq!(s, 200, "one revoked, one issued: {b}");
    assert_eq!(client_credentials(&f).await, (503, store_full()));
}

/// Expired tokens are swept before issuance is refused: the limit counts live tokens only.
#[actix_web::test]
async fn memory_max_tokens_issues_again_once_tokens_expire() {
    let f = bounded_fixture(json!({"token_expiration": 1, "refresh_token_ttl": 1})).await;
    for _ in 0..5 {
        let (s, b) = client_credentials(&f).await;
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(client_credentials(&f).await, (503, store_full()));
    eventually(Duration::from_secs(10), "issuance after expiry", || async {
        let (s, b) = client_credentials(&f).await;
        assert!(s == 200 || (s, &b) == (503, &store_full()), "{s} {b}");
        (s == 200).then_some(())
    })
    .await;
}
