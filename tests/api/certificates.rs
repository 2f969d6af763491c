//! Certificates, SNIs and CA certificates: Kong's admin specs
//! `spec/02-integration/04-admin_api/06-certificates_routes_spec.lua` (C… and S…) and
//! `16-ca_certificates_routes_spec.lua` (A…) ported case by case, each with Kong's request and
//! Kong's assertions, on the memory store (`certificates::memory::…`) and on Postgres
//! (`certificates::postgres::…`); Kong's `it_content_types` cases run with each of its three
//! body types. Kong's fixtures (`spec/fixtures/ssl`) are replaced by certificates generated here:
//! an ECDSA pair where Kong has RSA, an Ed25519 pair where Kong has ECDSA (the alternative pair
//! only needs another key type), and an expired CA where Kong uses its expired `cert_alt`.
//!
//! Then TLS through the proxy with a real TLS client (P…): the certificate of each server name,
//! wildcards, the default for unknown names, a change through the admin API applied without a
//! restart; and upstream TLS: a client certificate for an upstream that requires one, a
//! service's CA certificates accepting the right upstream and refusing another (502).
//!
//! Deliberate differences from Kong, asserted as such: `tls_verify_depth` is refused (rustls
//! cannot bound a chain's depth); the text after `invalid certificate: ` / `invalid key: ` is
//! this gateway's (Kong's quotes OpenSSL).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    spawn_pg_app, spawn_tls_upstream_with, spawn_upstream, spawn_with, test_settings, TestApp,
};

/// Which store the gateway runs on.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Memory,
    Postgres,
}

async fn app(store: Store) -> TestApp {
    match store {
        Store::Memory => spawn_with(test_settings()).await,
        Store::Postgres => spawn_pg_app().await,
    }
}

/// A PEM certificate and its key.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn generate(
    names: &[&str],
    alg: &'static rcgen::SignatureAlgorithm,
    shape: impl FnOnce(&mut rcgen::CertificateParams),
    issuer: Option<(&rcgen::Certificate, &rcgen::KeyPair)>,
) -> (Pair, rcgen::Certificate, rcgen::KeyPair) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    shape(&mut params);
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = match issuer {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let pair = Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    };
    (pair, cert, key)
}

/// Kong's `ssl_fixtures.cert`/`key` (and `cert_alt`/`key_alt`): a self-signed ECDSA pair.
fn pair(names: &[&str]) -> Pair {
    generate(names, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {}, None).0
}

/// Kong's `ssl_fixtures.cert_ecdsa`/`key_ecdsa`: a pair of another key type.
fn alt_pair(names: &[&str]) -> Pair {
    generate(names, &rcgen::PKCS_ED25519, |_| {}, None).0
}

fn ca_shape(p: &mut rcgen::CertificateParams) {
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test CA");
}

/// Kong's `ssl_fixtures.cert_ca`: a CA certificate.
fn ca() -> (Pair, rcgen::Certificate, rcgen::KeyPair) {
    generate(&[], &rcgen::PKCS_ECDSA_P256_SHA256, ca_shape, None)
}

/// An expired CA (Kong uses its expired `cert_alt`).
fn expired_ca() -> Pair {
    generate(
        &[],
        &rcgen::PKCS_ECDSA_P256_SHA256,
        |p| {
            ca_shape(p);
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        },
        None,
    )
    .0
}

/// A unique name (Kong's `get_name`).
fn name() -> String {
    format!(
        "name{}.test",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Kong's three request body types (`it_content_types`).
#[derive(Clone, Copy, Debug)]
enum Body {
    Form,
    Multipart,
    Json,
}

const BODIES: [Body; 3] = [Body::Form, Body::Multipart, Body::Json];

/// Sends `fields` as the given body type; arrays become `k[1]=…` pairs as Kong's test client
/// sends them. Returns the status, the body text and its JSON.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Body,
    fields: Value,
) -> (u16, String, Value) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in fields.as_object().unwrap() {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    pairs.push((format!("{k}[{}]", i + 1), item.as_str().unwrap().into()));
                }
            }
            Value::String(s) => pairs.push((k.clone(), s.clone())),
            Value::Null => {}
            other => pairs.push((k.clone(), other.to_string())),
        }
    }
    let rb = app.http.request(method, format!("{}{path}", app.admin));
    let rb = match body {
        Body::Json => rb.json(&fields),
        Body::Form => rb
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&pairs).unwrap()),
        Body::Multipart => {
            let boundary = "certificatesspecboundary";
            let mut out = String::new();
            for (k, v) in &pairs {
                out.push_str(&format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ));
            }
            out.push_str(&format!("--{boundary}--\r\n"));
            rb.header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(out)
        }
    };
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, json)
}

/// Kong's `add_certificate`: a certificate with two fresh names.
async fn add_certificate(app: &TestApp) -> (Value, Vec<String>) {
    let p = pair(&["cert.test"]);
    let mut names = vec![name(), name()];
    names.sort();
    let (s, cert) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": names }),
        )
        .await;
    assert_eq!(s, 201, "{cert}");
    (cert, names)
}

/// Kong's `add_certificate_with_alt_cert`.
async fn add_certificate_with_alt_cert(app: &TestApp) -> (Value, Vec<String>) {
    let (p, a) = (pair(&["cert.test"]), alt_pair(&["cert.test"]));
    let mut names = vec![name(), name()];
    names.sort();
    let (s, cert) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert, "key_alt": a.key,
                    "snis": names }),
        )
        .await;
    assert_eq!(s, 201, "{cert}");
    (cert, names)
}

/// Kong's `get_certificates`: the list with `updated_at` removed.
async fn get_certificates(app: &TestApp) -> Value {
    let (s, mut body) = app.admin_get("/certificates").await;
    assert_eq!(s, 200, "{body}");
    for cert in body["data"].as_array_mut().unwrap() {
        cert.as_object_mut().unwrap().remove("updated_at");
    }
    body
}

fn all_snis(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["snis"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn id(v: &Value) -> &str {
    v["id"].as_str().unwrap()
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $case() {
                    super::$case(super::Store::Postgres).await;
                }
            )*
        }
    };
}

on_every_store!(
    c1_retrieves_all_certificates_with_snis,
    c2_post_refuses_duplicated_snis,
    c3_post_refuses_a_pre_existing_sni,
    c4_creates_a_certificate_with_the_snis_pseudo_property,
    c5_returns_snis_as_empty_when_none_is_set,
    c6_c7_retrieves_a_certificate_by_id,
    c8_c9_retrieves_a_certificate_by_sni,
    c10_c11_returns_404_for_unknown_uuid_and_sni,
    c12_put_creates_if_not_found,
    c13_put_creates_a_new_sni_when_provided_in_the_url,
    c14_put_with_the_url_sni_also_in_the_body,
    c15_c16_put_upserts_if_found,
    c17_c18_put_handles_invalid_input,
    c19_c20_handles_mismatched_keys_and_certificates,
    c21_errors_on_non_distinct_certs,
    c22_c23_patch_updates_a_certificate_by_id,
    c24_patch_by_id_returns_the_full_certificate,
    c25_patch_updates_a_certificate_by_sni,
    c26_patch_returns_404_for_a_random_id,
    c27_patch_updates_the_snis_of_a_certificate,
    c28_patch_updates_only_the_certificate_without_snis,
    c29_patch_refuses_duplicated_snis,
    c30_patch_refuses_an_sni_of_another_certificate,
    c31_patch_with_null_snis_deletes_them,
    c32_c33_delete_deletes_the_certificate_and_its_snis,
    s1_post_snis_of_a_missing_certificate_is_404,
    s2_s3_creates_an_sni_under_a_certificate,
    s4_returns_409_when_the_sni_exists,
    s5_lists_the_snis_of_a_certificate,
    s6_s7_creates_wildcard_snis,
    s8_rejects_invalid_snis,
    s9_s11_retrieves_snis_by_name_and_id,
    s12_s14_put_snis,
    s15_patch_moves_an_sni_to_another_certificate,
    s16_deletes_an_sni,
    a1_lists_ca_certificates,
    a2_a6_post_checks_ca_certificates,
    a7_a8_delete_refused_while_a_service_lists_it,
    a9_a11_patch_checks_ca_certificates,
    a12_a16_put_ca_certificates,
    x1_tls_verify_depth_is_refused,
    x2_a_service_client_certificate_must_exist,
    x3_tags_and_pages_as_every_entity,
);

async fn c1_retrieves_all_certificates_with_snis(store: Store) {
    let app = app(store).await;
    let p = pair(&["cert.test"]);
    let my_snis: Vec<String> = (1..=150).map(|i| format!("my-sni-{i:03}.test")).collect();
    let (s, body) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": my_snis }),
        )
        .await;
    assert_eq!(s, 201, "{body}");

    let json = get_certificates(&app).await;
    assert_eq!(json["data"].as_array().unwrap().len(), 1);
    assert!(json["data"][0]["cert"].is_string());
    assert!(json["data"][0]["key"].is_string());
    assert_eq!(json["data"][0]["cert_alt"], Value::Null);
    assert_eq!(json["data"][0]["key_alt"], Value::Null);
    assert_eq!(json["data"][0]["snis"], json!(my_snis));
}

async fn c2_post_refuses_duplicated_snis(store: Store) {
    let app = app(store).await;
    let p = pair(&["cert.test"]);
    let (n1, n2) = (name(), name());
    let (s, body) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": [n1, n2, n1] }),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["message"],
        format!("schema violation (snis: {n1} is duplicated)")
    );
    let snis = all_snis(&get_certificates(&app).await);
    assert!(!snis.contains(&n1) && !snis.contains(&n2));
    assert_eq!(app.count("certificates").await, 0);
}

async fn c3_post_refuses_a_pre_existing_sni(store: Store) {
    let app = app(store).await;
    let p = pair(&["cert.test"]);
    let (n1, n2) = (name(), name());
    let (s, first) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": [n1] }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, body) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": [n1, n2] }),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        body["message"],
        format!(
            "schema violation (snis: {n1} already associated with existing certificate '{}')",
            id(&first)
        )
    );
    assert!(!all_snis(&get_certificates(&app).await).contains(&n2));
    assert_eq!(app.count("certificates").await, 1);
}

async fn c4_creates_a_certificate_with_the_snis_pseudo_property(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        let p = pair(&["cert.test"]);
        let mut names = vec![name(), name()];
        names.sort();
        let (s, _, json) = send(
            &app,
            Method::POST,
            "/certificates",
            body,
            json!({ "cert": p.cert, "key": p.key, "snis": names }),
        )
        .await;
        assert_eq!(s, 201, "{body:?}: {json}");
        assert_eq!(json["cert"], p.cert, "{body:?}");
        assert_eq!(json["key"], p.key, "{body:?}");
        assert_eq!(json["cert_alt"], Value::Null);
        assert_eq!(json["key_alt"], Value::Null);
        assert_eq!(json["snis"], json!(names), "{body:?}");
    }
}

async fn c5_returns_snis_as_empty_when_none_is_set(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        let p = pair(&["cert.test"]);
        let (s, text, json) = send(
            &app,
            Method::POST,
            "/certificates",
            body,
            json!({ "cert": p.cert, "key": p.key }),
        )
        .await;
        assert_eq!(s, 201, "{body:?}: {json}");
        assert!(json["cert"].is_string() && json["key"].is_string());
        assert_eq!(json["cert_alt"], Value::Null);
        assert_eq!(json["key_alt"], Value::Null);
        assert!(text.contains(r#""snis":[]"#), "{text}");
    }
}

async fn c6_c7_retrieves_a_certificate_by_id(store: Store) {
    let app = app(store).await;
    let (certificate, names) = add_certificate(&app).await;
    let (s, json) = app
        .admin_get(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(s, 200);
    assert!(json["cert"].is_string() && json["key"].is_string());
    assert_eq!(json["cert_alt"], Value::Null);
    assert_eq!(json["key_alt"], Value::Null);
    assert_eq!(json["snis"], json!(names));

    let (certificate, names) = add_certificate_with_alt_cert(&app).await;
    let (s, json) = app
        .admin_get(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(s, 200);
    for f in ["cert", "key", "cert_alt", "key_alt"] {
        assert!(json[f].is_string(), "{f}");
    }
    assert_eq!(json["snis"], json!(names));
}

async fn c8_c9_retrieves_a_certificate_by_sni(store: Store) {
    let app = app(store).await;
    let (_, names) = add_certificate(&app).await;
    let (s1, json1) = app.admin_get(&format!("/certificates/{}", names[0])).await;
    let (s2, json2) = app.admin_get(&format!("/certificates/{}", names[1])).await;
    assert_eq!((s1, s2), (200, 200));
    assert!(json1["cert"].is_string() && json1["key"].is_string());
    assert_eq!(json1["cert_alt"], Value::Null);
    assert_eq!(json1["key_alt"], Value::Null);
    assert_eq!(json1["snis"], json!(names));
    assert_eq!(json1, json2);

    let (_, names) = add_certificate_with_alt_cert(&app).await;
    let (s1, json1) = app.admin_get(&format!("/certificates/{}", names[0])).await;
    let (s2, json2) = app.admin_get(&format!("/certificates/{}", names[1])).await;
    assert_eq!((s1, s2), (200, 200));
    assert!(json1["cert_alt"].is_string() && json1["key_alt"].is_string());
    assert_eq!(json1["snis"], json!(names));
    assert_eq!(json1, json2);
}

async fn c10_c11_returns_404_for_unknown_uuid_and_sni(store: Store) {
    let app = app(store).await;
    let (s, _) = app
        .admin_get(&format!("/certificates/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, 404);
    let (s, body) = app.admin_get("/certificates/doesntexist.test").await;
    assert_eq!((s, body), (404, json!({ "message": "SNI not found" })));
}

async fn c12_put_creates_if_not_found(store: Store) {
    let app = app(store).await;
    let (n1, cid) = (name(), uuid::Uuid::new_v4());
    let p = pair(&["cert.test"]);
    let (s, json) = app
        .admin_put(
            &format!("/certificates/{cid}"),
            json!({ "cert": p.cert, "key": p.key, "snis": [n1] }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["cert"], p.cert);
    assert_eq!(json["cert_alt"], Value::Null);
    assert_eq!(json["key_alt"], Value::Null);
    assert_eq!(json["snis"], json!([n1]));
    let (_, in_db) = app.admin_get(&format!("/certificates/{cid}")).await;
    assert_eq!(json, in_db);
}

async fn c13_put_creates_a_new_sni_when_provided_in_the_url(store: Store) {
    let app = app(store).await;
    let mut names = vec![name(), name()];
    names.sort();
    let p = pair(&["cert.test"]);
    let (s, json) = app
        .admin_put(
            &format!("/certificates/{}", names[0]),
            json!({ "cert": p.cert, "key": p.key, "snis": [names[1]] }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["cert"], p.cert);
    assert_eq!(json["cert_alt"], Value::Null);
    assert_eq!(json["snis"], json!(names));
    let (_, in_db) = app.admin_get(&format!("/certificates/{}", id(&json))).await;
    assert_eq!(json, in_db);
}

async fn c14_put_with_the_url_sni_also_in_the_body(store: Store) {
    let app = app(store).await;
    let mut names = vec![name(), name()];
    names.sort();
    let p = pair(&["cert.test"]);
    let (s, json) = app
        .admin_put(
            &format!("/certificates/{}", names[0]),
            json!({ "cert": p.cert, "key": p.key, "snis": names }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["cert"], p.cert);
    assert_eq!(json["snis"], json!(names));
    let (_, in_db) = app.admin_get(&format!("/certificates/{}", id(&json))).await;
    assert_eq!(json, in_db);
}

async fn c15_c16_put_upserts_if_found(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    // Kong sleeps a second so that updated_at moves; the clock is read the same way here.
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    let p = pair(&["other.test"]);
    let (s, json) = app
        .admin_put(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "cert": p.cert, "key": p.key }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["cert"], p.cert);
    assert_eq!(json["key"], p.key);
    assert_eq!(json["cert_alt"], Value::Null);
    assert_eq!(json["key_alt"], Value::Null);
    assert_eq!(json["snis"], json!([]));
    assert!(certificate["updated_at"].as_i64() < json["updated_at"].as_i64());
    let (_, in_db) = app
        .admin_get(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(json, in_db);

    let (certificate, _) = add_certificate_with_alt_cert(&app).await;
    let (p, a) = (pair(&["other.test"]), alt_pair(&["other.test"]));
    let (s, json) = app
        .admin_put(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert, "key_alt": a.key }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(
        (
            &json["cert"],
            &json["key"],
            &json["cert_alt"],
            &json["key_alt"]
        ),
        (&json!(p.cert), &json!(p.key), &json!(a.cert), &json!(a.key))
    );
    assert_eq!(json["snis"], json!([]));
    let (_, in_db) = app
        .admin_get(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(json, in_db);
}

async fn c17_c18_put_handles_invalid_input(store: Store) {
    let app = app(store).await;
    let (s, body) = app
        .admin_put(
            &format!("/certificates/{}", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "2 schema violations (cert: required field missing; key: required field missing)",
            "fields": { "cert": "required field missing", "key": "required field missing" },
        })
    );

    let (p, a) = (pair(&["cert.test"]), alt_pair(&["cert.test"]));
    let (s, body) = app
        .admin_put(
            &format!("/certificates/{}", uuid::Uuid::new_v4()),
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert }),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "schema violation (all or none of these fields must be set: 'cert_alt', 'key_alt')",
            "fields": { "@entity": ["all or none of these fields must be set: 'cert_alt', 'key_alt'"] },
        })
    );
}

async fn c19_c20_handles_mismatched_keys_and_certificates(store: Store) {
    let app = app(store).await;
    let (p, other) = (pair(&["cert.test"]), pair(&["other.test"]));
    let (s, body) = app
        .admin_post("/certificates", json!({ "cert": p.cert, "key": other.key }))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "schema violation (certificate does not match key)",
            "fields": { "@entity": ["certificate does not match key"] },
        })
    );

    let (a, other_alt) = (alt_pair(&["cert.test"]), alt_pair(&["other.test"]));
    let (s, body) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert, "key_alt": other_alt.key }),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "schema violation (alternative certificate does not match key)",
            "fields": { "@entity": ["alternative certificate does not match key"] },
        })
    );
}

async fn c21_errors_on_non_distinct_certs(store: Store) {
    let app = app(store).await;
    let p = pair(&["cert.test"]);
    let (s, body) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "cert_alt": p.cert, "key_alt": p.key }),
        )
        .await;
    assert_eq!(s, 400);
    let text = "certificate and alternative certificate need to have different type (e.g. RSA \
                and ECDSA), the provided certificates were both of the same type";
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": format!("schema violation ({text})"),
            "fields": { "@entity": [text] },
        })
    );
}

async fn c22_c23_patch_updates_a_certificate_by_id(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        let (certificate, _) = add_certificate(&app).await;
        let p = pair(&["other.test"]);
        let (s, _, json) = send(
            &app,
            Method::PATCH,
            &format!("/certificates/{}", id(&certificate)),
            body,
            json!({ "cert": p.cert, "key": p.key }),
        )
        .await;
        assert_eq!(s, 200, "{body:?}: {json}");
        assert_eq!(json["cert"], p.cert);
        assert_eq!(json["cert_alt"], Value::Null);
        assert_eq!(json["key_alt"], Value::Null);

        let (certificate, _) = add_certificate_with_alt_cert(&app).await;
        let (p, a) = (pair(&["other.test"]), alt_pair(&["other.test"]));
        let (s, _, json) = send(
            &app,
            Method::PATCH,
            &format!("/certificates/{}", id(&certificate)),
            body,
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert, "key_alt": a.key }),
        )
        .await;
        assert_eq!(s, 200, "{body:?}: {json}");
        assert_eq!(json["cert"], p.cert);
        assert_eq!(json["cert_alt"], a.cert);
    }
}

async fn c24_patch_by_id_returns_the_full_certificate(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        for with_alt in [false, true] {
            let (mut certificate, names) = if with_alt {
                add_certificate_with_alt_cert(&app).await
            } else {
                add_certificate(&app).await
            };
            for key in [id(&certificate).to_string(), names[0].clone()] {
                let (s, _, mut json) = send(
                    &app,
                    Method::PATCH,
                    &format!("/certificates/{key}"),
                    body,
                    json!({}),
                )
                .await;
                assert_eq!(s, 200, "{body:?}: {json}");
                json.as_object_mut().unwrap().remove("updated_at");
                certificate.as_object_mut().unwrap().remove("updated_at");
                assert_eq!(certificate, json, "{body:?} {key}");
            }
        }
    }
}

async fn c25_patch_updates_a_certificate_by_sni(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        let (_, names) = add_certificate(&app).await;
        let p = pair(&["other.test"]);
        let (s, _, json) = send(
            &app,
            Method::PATCH,
            &format!("/certificates/{}", names[0]),
            body,
            json!({ "cert": p.cert, "key": p.key }),
        )
        .await;
        assert_eq!(s, 200, "{body:?}: {json}");
        assert_eq!(json["cert"], p.cert);
        assert_eq!(json["cert_alt"], Value::Null);
        assert_eq!(json["key_alt"], Value::Null);

        let (_, names) = add_certificate_with_alt_cert(&app).await;
        let (p, a) = (pair(&["other.test"]), alt_pair(&["other.test"]));
        let (s, _, json) = send(
            &app,
            Method::PATCH,
            &format!("/certificates/{}", names[0]),
            body,
            json!({ "cert": p.cert, "key": p.key, "cert_alt": a.cert, "key_alt": a.key }),
        )
        .await;
        assert_eq!(s, 200, "{body:?}: {json}");
        assert_eq!(
            (
                &json["cert"],
                &json["key"],
                &json["cert_alt"],
                &json["key_alt"]
            ),
            (&json!(p.cert), &json!(p.key), &json!(a.cert), &json!(a.key))
        );
    }
}

async fn c26_patch_returns_404_for_a_random_id(store: Store) {
    let app = app(store).await;
    let (n1, p) = (name(), pair(&["cert.test"]));
    let (s, _) = app
        .admin_patch(
            &format!("/certificates/{}", uuid::Uuid::new_v4()),
            json!({ "cert": p.cert, "key": p.key, "snis": [n1] }),
        )
        .await;
    assert_eq!(s, 404);
    assert!(!all_snis(&get_certificates(&app).await).contains(&n1));
    let (s, _) = app.admin_get(&format!("/snis/{n1}")).await;
    assert_eq!(s, 404);
}

async fn c27_patch_updates_the_snis_of_a_certificate(store: Store) {
    let app = app(store).await;
    for with_alt in [false, true] {
        let (certificate, _) = if with_alt {
            add_certificate_with_alt_cert(&app).await
        } else {
            add_certificate(&app).await
        };
        let n1 = name();
        let before = get_certificates(&app).await;
        let (s, json) = app
            .admin_patch(
                &format!("/certificates/{}", id(&certificate)),
                json!({ "snis": [n1] }),
            )
            .await;
        assert_eq!(s, 200, "{json}");
        assert_eq!(json["snis"], json!([n1]));
        let after = get_certificates(&app).await;
        let (b, a) = (
            before["data"].as_array().unwrap(),
            after["data"].as_array().unwrap(),
        );
        assert_eq!(b.len(), a.len());
        for (i, data) in a.iter().enumerate() {
            if data["id"] == certificate["id"] {
                assert_eq!(data["snis"], json!([n1]));
            } else {
                assert_eq!(data["snis"], b[i]["snis"]);
            }
        }
    }
}

async fn c28_patch_updates_only_the_certificate_without_snis(store: Store) {
    let app = app(store).await;
    let (certificate, names) = add_certificate(&app).await;
    let before = get_certificates(&app).await;
    let p = pair(&["other.test"]);
    let (s, json) = app
        .admin_patch(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "cert": p.cert, "key": p.key }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["snis"], json!(names));
    assert_eq!(
        (&json["cert"], &json["key"]),
        (&json!(p.cert), &json!(p.key))
    );
    assert_eq!(json["cert_alt"], Value::Null);
    assert_eq!(json["key_alt"], Value::Null);
    let (s, json) = app
        .admin_get(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (&json["cert"], &json["key"]),
        (&json!(p.cert), &json!(p.key))
    );
    let after = get_certificates(&app).await;
    assert_eq!(all_snis(&before), all_snis(&after));
    assert_eq!(
        before["data"].as_array().unwrap().len(),
        after["data"].as_array().unwrap().len()
    );
}

async fn c29_patch_refuses_duplicated_snis(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let before = get_certificates(&app).await;
    let n1 = name();
    let (s, json) = app
        .admin_patch(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "snis": [n1, n1] }),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        format!("schema violation (snis: {n1} is duplicated)")
    );
    assert_eq!(before, get_certificates(&app).await);
}

async fn c30_patch_refuses_an_sni_of_another_certificate(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let (certificate2, names2) = add_certificate(&app).await;
    let before = get_certificates(&app).await;
    let (s, json) = app
        .admin_patch(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "snis": names2 }),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        format!(
            "schema violation (snis: {} already associated with existing certificate '{}')",
            names2[0],
            id(&certificate2)
        )
    );
    assert_eq!(before, get_certificates(&app).await);
}

async fn c31_patch_with_null_snis_deletes_them(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let (other, other_names) = add_certificate(&app).await;
    let r = app
        .http
        .patch(format!("{}/certificates/{}", app.admin, id(&certificate)))
        .json(&json!({ "snis": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains(r#""snis":[]"#), "{text}");
    let after = get_certificates(&app).await;
    assert_eq!(after["data"].as_array().unwrap().len(), 2);
    for data in after["data"].as_array().unwrap() {
        if data["id"] == certificate["id"] {
            assert_eq!(data["snis"], json!([]));
        } else {
            assert_eq!(data["id"], other["id"]);
            assert_eq!(data["snis"], json!(other_names));
        }
    }
}

async fn c32_c33_delete_deletes_the_certificate_and_its_snis(store: Store) {
    let app = app(store).await;
    let before = get_certificates(&app).await;
    let (_, names) = add_certificate(&app).await;
    let (s, _) = app
        .admin_delete(&format!("/certificates/{}", names[0]))
        .await;
    assert_eq!(s, 204);
    assert_eq!(before, get_certificates(&app).await);
    assert_eq!(app.count("snis").await, 0);

    let (certificate, _) = add_certificate(&app).await;
    let (s, _) = app
        .admin_delete(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(s, 204);
    assert_eq!(before, get_certificates(&app).await);
    assert_eq!(app.count("snis").await, 0);
}

async fn s1_post_snis_of_a_missing_certificate_is_404(store: Store) {
    let app = app(store).await;
    let (s, json) = app
        .admin_post(
            "/certificates/585e4c16-c656-11e6-8db9-5f512d8a12cd/snis",
            json!({ "name": name() }),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(json["message"], "Not found");
}

async fn s2_s3_creates_an_sni_under_a_certificate(store: Store) {
    let app = app(store).await;
    for body in BODIES {
        let (certificate, names) = add_certificate(&app).await;
        for key in [id(&certificate).to_string(), names[0].clone()] {
            let n1 = name();
            let (s, _, json) = send(
                &app,
                Method::POST,
                &format!("/certificates/{key}/snis"),
                body,
                json!({ "name": n1 }),
            )
            .await;
            assert_eq!(s, 201, "{body:?}: {json}");
            assert_eq!(json["name"], n1);
            assert_eq!(json["certificate"]["id"], certificate["id"]);
        }
    }
}

async fn s4_returns_409_when_the_sni_exists(store: Store) {
    let app = app(store).await;
    let (certificate, names) = add_certificate(&app).await;
    let (s, json) = app
        .admin_post(
            &format!("/certificates/{}/snis", id(&certificate)),
            json!({ "name": names[0] }),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(json["name"], "unique constraint violation");
}

async fn s5_lists_the_snis_of_a_certificate(store: Store) {
    let app = app(store).await;
    let p = pair(&["cert.test"]);
    let (_, certificate) = app
        .admin_post("/certificates", json!({ "cert": p.cert, "key": p.key }))
        .await;
    let n1 = name();
    let (s, _) = app
        .admin_post(
            "/snis",
            json!({ "name": n1, "certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, json) = app
        .admin_get(&format!("/certificates/{}/snis", id(&certificate)))
        .await;
    assert_eq!(s, 200);
    assert_eq!(json["data"].as_array().unwrap().len(), 1);
    assert_eq!(json["data"][0]["name"], n1);
    assert_eq!(json["data"][0]["certificate"]["id"], certificate["id"]);
}

async fn s6_s7_creates_wildcard_snis(store: Store) {
    let app = app(store).await;
    for wildcard in [format!("*.{}", name()), format!("{}.*", name())] {
        let (certificate, _) = add_certificate(&app).await;
        let (s, json) = app
            .admin_post(
                "/snis",
                json!({ "name": wildcard, "certificate": { "id": certificate["id"] } }),
            )
            .await;
        assert_eq!(s, 201, "{json}");
        assert_eq!(json["name"], wildcard);
        assert_eq!(json["certificate"]["id"], certificate["id"]);
    }
}

async fn s8_rejects_invalid_snis(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let (s, json) = app
        .admin_post(
            "/snis",
            json!({ "name": "*.wildcard.*", "certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["fields"]["name"],
        "only one wildcard must be specified"
    );
}

async fn s9_s11_retrieves_snis_by_name_and_id(store: Store) {
    let app = app(store).await;
    let (certificate, names) = add_certificate(&app).await;
    let (s, _) = app
        .admin_post(
            "/snis",
            json!({ "name": "*.wildcard.test", "certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, json) = app.admin_get("/snis/%2A.wildcard.test").await;
    assert_eq!(s, 200);
    assert_eq!(json["name"], "*.wildcard.test");

    let (s, json) = app.admin_get(&format!("/snis/{}", names[0])).await;
    assert_eq!(s, 200);
    assert_eq!(json["name"], names[0]);
    assert_eq!(json["certificate"]["id"], certificate["id"]);

    let n1 = name();
    let (_, sni) = app
        .admin_post(
            "/snis",
            json!({ "name": n1, "certificate": { "id": certificate["id"] } }),
        )
        .await;
    let (s, json) = app.admin_get(&format!("/snis/{}", id(&sni))).await;
    assert_eq!(s, 200);
    assert_eq!(json["name"], n1);
    assert_eq!(json["certificate"]["id"], certificate["id"]);
}

async fn s12_s14_put_snis(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let (n1, sid) = (name(), uuid::Uuid::new_v4());
    let (s, json) = app
        .admin_put(
            &format!("/snis/{sid}"),
            json!({ "certificate": { "id": certificate["id"] }, "name": n1 }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["name"], n1);
    let (_, in_db) = app.admin_get(&format!("/snis/{sid}")).await;
    assert_eq!(json, in_db);

    let sni = json;
    let n2 = name();
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, json) = app
        .admin_put(
            &format!("/snis/{}", id(&sni)),
            json!({ "name": n2, "certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(json["name"], n2);
    let (_, in_db) = app.admin_get(&format!("/snis/{}", id(&sni))).await;
    assert_eq!(json, in_db);
    assert!(sni["updated_at"].as_i64() < json["updated_at"].as_i64());

    let (s, body) = app
        .admin_put(&format!("/snis/{}", uuid::Uuid::new_v4()), json!({}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "2 schema violations (certificate: required field missing; name: required field missing)",
            "fields": { "certificate": "required field missing", "name": "required field missing" },
        })
    );
}

async fn s15_patch_moves_an_sni_to_another_certificate(store: Store) {
    let app = app(store).await;
    for with_alt in [false, true] {
        let (certificate, names) = add_certificate(&app).await;
        let p = pair(&["other.test"]);
        let mut second = json!({ "cert": p.cert, "key": p.key });
        if with_alt {
            let a = alt_pair(&["other.test"]);
            second["cert_alt"] = json!(a.cert);
            second["key_alt"] = json!(a.key);
        }
        let (s, certificate_2) = app.admin_post("/certificates", second).await;
        assert_eq!(s, 201, "{certificate_2}");
        let (s, json) = app
            .admin_patch(
                &format!("/snis/{}", names[0]),
                json!({ "certificate": { "id": certificate_2["id"] } }),
            )
            .await;
        assert_eq!(s, 200, "{json}");
        assert_eq!(json["certificate"]["id"], certificate_2["id"]);
        let (_, json) = app
            .admin_get(&format!("/certificates/{}", id(&certificate)))
            .await;
        assert_eq!(json["snis"], json!([names[1]]));
        let (_, json) = app
            .admin_get(&format!("/certificates/{}", id(&certificate_2)))
            .await;
        assert_eq!(json["snis"], json!([names[0]]));
    }
}

async fn s16_deletes_an_sni(store: Store) {
    let app = app(store).await;
    let (certificate, _) = add_certificate(&app).await;
    let n1 = name();
    let (s, _) = app
        .admin_post(
            "/snis",
            json!({ "name": n1, "certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app.admin_delete(&format!("/snis/{n1}")).await;
    assert_eq!(s, 204);
    let (s, _) = app.admin_get(&format!("/snis/{n1}")).await;
    assert_eq!(s, 404);
}

async fn a1_lists_ca_certificates(store: Store) {
    let app = app(store).await;
    let (s, json) = app.admin_get("/ca_certificates").await;
    assert_eq!(s, 200);
    assert_eq!(json["data"].as_array().unwrap().len(), 0);
    let (cert_ca, _, _) = ca();
    let (s, _) = app
        .admin_post("/ca_certificates", json!({ "cert": cert_ca.cert }))
        .await;
    assert_eq!(s, 201);
    let (s, json) = app.admin_get("/ca_certificates").await;
    assert_eq!(s, 200);
    assert_eq!(json["data"].as_array().unwrap().len(), 1);
    assert_eq!(json["data"][0]["cert"], cert_ca.cert);
}

async fn a2_a6_post_checks_ca_certificates(store: Store) {
    let app = app(store).await;
    let (cert_ca, _, _) = ca();
    let (s, json) = app
        .admin_post("/ca_certificates", json!({ "cert": cert_ca.cert }))
        .await;
    assert_eq!(s, 201, "{json}");
    // Kong's on-write digest: the SHA-256 of the DER form, lower-case hex.
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&cert_ca.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(json["cert_digest"], digest);

    let app = &app;
    let message = |body: Value| async move {
        let (s, json) = app.admin_post("/ca_certificates", body).await;
        assert_eq!(s, 400, "{json}");
        json["message"].as_str().unwrap().to_string()
    };
    assert_eq!(
        message(json!({})).await,
        "schema violation (cert: required field missing)"
    );
    let leaf = pair(&["cert.test"]);
    assert_eq!(
        message(json!({ "cert": leaf.cert })).await,
        "schema violation (certificate does not appear to be a CA because it is missing the \"CA\" basic constraint)"
    );
    assert_eq!(
        message(json!({ "cert": expired_ca().cert })).await,
        "schema violation (certificate expired, \"Not After\" time is in the past)"
    );
    assert_eq!(
        message(json!({ "cert": format!("{}\n{}", leaf.cert, leaf.cert) })).await,
        "schema violation (please submit only one certificate at a time)"
    );
}

async fn a7_a8_delete_refused_while_a_service_lists_it(store: Store) {
    let app = app(store).await;
    let (cert_ca, _, _) = ca();
    let (_, ca_row) = app
        .admin_post("/ca_certificates", json!({ "cert": cert_ca.cert }))
        .await;
    let up = spawn_upstream();
    let (s, service) = app
        .admin_post(
            "/services/",
            json!({ "url": format!("https://127.0.0.1:{}", up.port), "protocol": "https",
                    "ca_certificates": [ca_row["id"]] }),
        )
        .await;
    assert_eq!(s, 201, "{service}");
    let (s, json) = app
        .admin_delete(&format!("/ca_certificates/{}", id(&ca_row)))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        format!(
            "ca certificate {} is still referenced by services (id = {})",
            id(&ca_row),
            id(&service)
        )
    );
    let (s, _) = app
        .admin_delete(&format!("/services/{}", id(&service)))
        .await;
    assert_eq!(s, 204);

    let (s, _) = app
        .admin_delete(&format!("/ca_certificates/{}", id(&ca_row)))
        .await;
    assert_eq!(s, 204);
    assert_eq!(app.count("ca_certificates").await, 0);
}

async fn a9_a11_patch_checks_ca_certificates(store: Store) {
    let app = app(store).await;
    let (cert_ca, _, _) = ca();
    let (_, ca_row) = app
        .admin_post("/ca_certificates", json!({ "cert": cert_ca.cert }))
        .await;
    let path = format!("/ca_certificates/{}", id(&ca_row));
    let leaf = pair(&["cert.test"]);
    let (s, json) = app.admin_patch(&path, json!({ "cert": leaf.cert })).await;
    assert_eq!(s, 400);
    assert_eq!(json["message"], "schema violation (certificate does not appear to be a CA because it is missing the \"CA\" basic constraint)");
    let (s, json) = app
        .admin_patch(&path, json!({ "cert": expired_ca().cert }))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        "schema violation (certificate expired, \"Not After\" time is in the past)"
    );
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (other_ca, _, _) = ca();
    let (s, new_ca) = app
        .admin_patch(&path, json!({ "cert": other_ca.cert }))
        .await;
    assert_eq!(s, 200, "{new_ca}");
    assert!(ca_row["updated_at"].as_i64() < new_ca["updated_at"].as_i64());
}

async fn a12_a16_put_ca_certificates(store: Store) {
    let app = app(store).await;
    let (cert_ca, _, _) = ca();
    let (_, ca_row) = app
        .admin_post("/ca_certificates", json!({ "cert": cert_ca.cert }))
        .await;
    let path = format!("/ca_certificates/{}", id(&ca_row));
    let (s, json) = app.admin_put(&path, json!({})).await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        "schema violation (cert: required field missing)"
    );
    let (s, json) = app
        .admin_put(&path, json!({ "cert": pair(&["c.test"]).cert }))
        .await;
    assert_eq!(s, 400);
    assert_eq!(json["message"], "schema violation (certificate does not appear to be a CA because it is missing the \"CA\" basic constraint)");
    let (s, json) = app
        .admin_put(&path, json!({ "cert": expired_ca().cert }))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        json["message"],
        "schema violation (certificate expired, \"Not After\" time is in the past)"
    );
    let (other_ca, _, _) = ca();
    let (s, _) = app.admin_put(&path, json!({ "cert": other_ca.cert })).await;
    assert_eq!(s, 200);
    let (_, json) = app.admin_get("/ca_certificates").await;
    assert_eq!(json["data"].as_array().unwrap().len(), 1);
    assert_eq!(json["data"][0]["cert"], other_ca.cert);

    let (s, _) = app.admin_delete(&path).await;
    assert_eq!(s, 204);
    let fixed = "/ca_certificates/123e4567-e89b-12d3-a456-426655440000";
    let (s, _) = app.admin_put(fixed, json!({ "cert": cert_ca.cert })).await;
    assert_eq!(s, 200);
    let (s, json) = app.admin_get(fixed).await;
    assert_eq!(s, 200);
    assert_eq!(json["cert"], cert_ca.cert);
}

/// Not Kong's: rustls has no chain depth limit, so a depth is refused rather than ignored.
async fn x1_tls_verify_depth_is_refused(store: Store) {
    let app = app(store).await;
    let (s, json) = app
        .admin_post(
            "/services",
            json!({ "url": "https://127.0.0.1:9", "tls_verify": true, "tls_verify_depth": 2 }),
        )
        .await;
    assert_eq!(s, 400, "{json}");
    assert_eq!(
        json["fields"],
        json!({ "tls_verify_depth": "not supported by this gateway: its TLS library cannot \
                 bound the verified chain's depth; leave it null" })
    );
    let (s, json) = app
        .admin_post(
            "/services",
            json!({ "url": "https://127.0.0.1:9", "tls_verify_depth": null }),
        )
        .await;
    assert_eq!(s, 201, "{json}");
}

/// Kong's foreign key: a service's client certificate exists, and cannot be deleted while used.
async fn x2_a_service_client_certificate_must_exist(store: Store) {
    let app = app(store).await;
    let missing = uuid::Uuid::new_v4();
    let (s, json) = app
        .admin_post(
            "/services",
            json!({ "url": "https://127.0.0.1:9", "client_certificate": { "id": missing } }),
        )
        .await;
    assert_eq!(s, 400, "{json}");
    assert_eq!(
        json["message"],
        format!(
            "the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'certificates' entity."
        )
    );
    let (certificate, _) = add_certificate(&app).await;
    let (s, _) = app
        .admin_post(
            "/services",
            json!({ "url": "https://127.0.0.1:9",
                    "client_certificate": { "id": certificate["id"] } }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, json) = app
        .admin_delete(&format!("/certificates/{}", id(&certificate)))
        .await;
    assert_eq!(s, 400, "{json}");
    assert_eq!(
        json["message"],
        "an existing 'services' entity references this 'certificates' entity"
    );
}

/// Tags filter and pages walk certificates, SNIs and CA certificates as every other entity.
async fn x3_tags_and_pages_as_every_entity(store: Store) {
    let app = app(store).await;
    for i in 0..3 {
        let p = pair(&["cert.test"]);
        let tags = if i == 0 {
            json!(["blue"])
        } else {
            json!(["red"])
        };
        let (s, json) = app
            .admin_post(
                "/certificates",
                json!({ "cert": p.cert, "key": p.key, "tags": tags,
                        "snis": [format!("tagged{i}.test")] }),
            )
            .await;
        assert_eq!(s, 201, "{json}");
        let (s, json) = app
            .admin_post(
                "/ca_certificates",
                json!({ "cert": ca().0.cert, "tags": tags }),
            )
            .await;
        assert_eq!(s, 201, "{json}");
    }
    for entity in ["certificates", "ca_certificates"] {
        let (s, blue) = app.admin_get(&format!("/{entity}?tags=blue")).await;
        assert_eq!(s, 200);
        assert_eq!(blue["data"].as_array().unwrap().len(), 1, "{entity}");
        assert_eq!(blue["data"][0]["tags"], json!(["blue"]));
        let mut seen = Vec::new();
        let mut path = format!("/{entity}?size=2");
        loop {
            let (s, page) = app.admin_get(&path).await;
            assert_eq!(s, 200, "{page}");
            for row in page["data"].as_array().unwrap() {
                seen.push(row["id"].clone());
            }
            match page["next"].as_str() {
                Some(next) => path = next.to_string(),
                None => break,
            }
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "{entity}: every row once");
    }
    let (s, first) = app.admin_get("/certificates?size=2").await;
    assert_eq!(s, 200);
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert!(first["data"][0]["snis"].is_array());
    let (s, snis) = app.admin_get("/snis?size=2").await;
    assert_eq!(s, 200);
    assert_eq!(snis["data"].as_array().unwrap().len(), 2);
    assert!(snis["next"].is_string(), "{snis}");
}

// ---- TLS through the proxy -------------------------------------------------------------------

/// The certificate the proxy presents for `server_name` (SNI), DER encoded.
async fn presented(app: &TestApp, server_name: &str) -> Vec<u8> {
    let port: u16 = app.proxy_tls.rsplit(':').next().unwrap().parse().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve(server_name, addr)
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://{server_name}:{port}/no-route-here"))
        .send()
        .await
        .unwrap();
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a peer certificate")
        .to_vec()
}

async fn certificate_for(app: &TestApp, p: &Pair, snis: &[&str]) -> Value {
    let (s, json) = app
        .admin_post(
            "/certificates",
            json!({ "cert": p.cert, "key": p.key, "snis": snis }),
        )
        .await;
    assert_eq!(s, 201, "{json}");
    json
}

#[actix_web::test]
async fn p1_each_server_name_gets_its_certificate_and_unknown_ones_the_default() {
    let app = spawn_with(test_settings()).await;
    let default = presented(&app, "unknown.test").await;
    let (a, b, w, x) = (
        pair(&["a.test"]),
        pair(&["b.test"]),
        pair(&["*.w.test"]),
        pair(&["x.example.*"]),
    );
    certificate_for(&app, &a, &["a.test"]).await;
    certificate_for(&app, &b, &["b.test"]).await;
    certificate_for(&app, &w, &["*.w.test"]).await;
    certificate_for(&app, &x, &["x.example.*"]).await;

    assert_eq!(presented(&app, "a.test").await, a.der);
    assert_eq!(presented(&app, "b.test").await, b.der);
    assert_eq!(presented(&app, "one.w.test").await, w.der);
    assert_eq!(presented(&app, "two.w.test").await, w.der);
    assert_eq!(presented(&app, "x.example.org").await, x.der);
    // `*.w.test` covers one label only, as Kong's lookup (and TLS) does; `w.test` is not it.
    assert_eq!(presented(&app, "w.test").await, default);
    assert_eq!(presented(&app, "unknown.test").await, default);
    assert_ne!(default, a.der);

    // Kong's `*` SNI replaces the default certificate.
    let star = pair(&["star.test"]);
    certificate_for(&app, &star, &["*"]).await;
    assert_eq!(presented(&app, "unknown.test").await, star.der);
    assert_eq!(presented(&app, "a.test").await, a.der);
}

#[actix_web::test]
async fn p2_a_certificate_changed_through_the_admin_api_is_served_at_once() {
    let app = spawn_pg_app().await;
    let (old, new) = (pair(&["live.test"]), pair(&["live.test"]));
    let certificate = certificate_for(&app, &old, &["live.test"]).await;
    assert_eq!(presented(&app, "live.test").await, old.der);

    let (s, json) = app
        .admin_patch(
            &format!("/certificates/{}", id(&certificate)),
            json!({ "cert": new.cert, "key": new.key }),
        )
        .await;
    assert_eq!(s, 200, "{json}");
    assert_eq!(presented(&app, "live.test").await, new.der);

    // Its name moved elsewhere, then deleted: the default again.
    let default = presented(&app, "nothing.test").await;
    let (s, _) = app.admin_delete("/snis/live.test").await;
    assert_eq!(s, 204);
    assert_eq!(presented(&app, "live.test").await, default);
}

/// A TLS upstream presenting `server` and requiring a client certificate issued by `client_ca`.
fn mtls_upstream(server: &Pair, client_ca: Option<&Pair>) -> crate::helpers::Upstream {
    let chain = rustls_pemfile::certs(&mut server.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut server.key.as_bytes())
        .unwrap()
        .unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.cert.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    spawn_tls_upstream_with(builder.with_single_cert(chain, key).unwrap())
}

fn issued(ca: &(Pair, rcgen::Certificate, rcgen::KeyPair), names: &[&str], client: bool) -> Pair {
    generate(
        names,
        &rcgen::PKCS_ECDSA_P256_SHA256,
        |p| {
            p.extended_key_usages = vec![if client {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            }];
        },
        Some((&ca.1, &ca.2)),
    )
    .0
}

async fn route(app: &TestApp, path: &str, service: Value) {
    let (s, service) = app.admin_post("/services", service).await;
    assert_eq!(s, 201, "{service}");
    let (s, route) = app
        .admin_post(
            "/routes",
            json!({ "paths": [path], "service": { "id": service["id"] } }),
        )
        .await;
    assert_eq!(s, 201, "{route}");
}

#[actix_web::test]
async fn p3_upstream_mtls_presents_the_service_client_certificate() {
    let app = spawn_with(test_settings()).await;
    let client_ca = ca();
    let server_ca = ca();
    let server = issued(&server_ca, &["127.0.0.1"], false);
    let up = mtls_upstream(&server, Some(&client_ca.0));
    let client = issued(&client_ca, &["gateway.test"], true);
    let certificate = certificate_for(&app, &client, &[]).await;
    let url = format!("https://127.0.0.1:{}", up.port);
    route(
        &app,
        "/with-cert",
        json!({ "url": url, "client_certificate": { "id": certificate["id"] } }),
    )
    .await;
    route(&app, "/without-cert", json!({ "url": url })).await;

    let r = app.proxy_get("/with-cert/echo").await;
    assert_eq!(r.status(), 200);
    let r = app.proxy_get("/without-cert/echo").await;
    assert_eq!(
        r.status(),
        502,
        "the upstream requires a client certificate"
    );
}

#[actix_web::test]
async fn p4_tls_verify_with_ca_certificates_accepts_the_right_upstream_only() {
    let app = spawn_pg_app().await;
    let right_ca = ca();
    let wrong_ca = ca();
    let right = mtls_upstream(&issued(&right_ca, &["127.0.0.1"], false), None);
    let wrong = mtls_upstream(&issued(&wrong_ca, &["127.0.0.1"], false), None);
    let (s, ca_row) = app
        .admin_post("/ca_certificates", json!({ "cert": right_ca.0.cert }))
        .await;
    assert_eq!(s, 201, "{ca_row}");
    for (path, port) in [("/right", right.port), ("/wrong", wrong.port)] {
        route(
            &app,
            path,
            json!({ "url": format!("https://127.0.0.1:{port}"), "tls_verify": true,
                    "ca_certificates": [ca_row["id"]] }),
        )
        .await;
    }
    let r = app.proxy_get("/right/echo").await;
    assert_eq!(r.status(), 200);
    let r = app.proxy_get("/wrong/echo").await;
    assert_eq!(r.status(), 502);

    // The CA replaced by the other one: the verdicts swap without a restart.
    let (s, _) = app
        .admin_patch(
            &format!("/ca_certificates/{}", id(&ca_row)),
            json!({ "cert": wrong_ca.0.cert }),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.proxy_get("/right/echo").await.status(), 502);
    assert_eq!(app.proxy_get("/wrong/echo").await.status(), 200);
}
