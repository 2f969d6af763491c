//! TLS listeners: the certificate generated at start, and configured PEM files.

use std::path::PathBuf;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_upstream, spawn_with, test_settings};

/// The certificate the server presented, DER encoded.
fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with a peer certificate")
        .to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn any_cert_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .build()
        .unwrap()
}

#[actix_web::test]
async fn listeners_answer_with_the_generated_certificate() {
    let app = spawn_app().await;
    let up = spawn_upstream();
    app.expose("tls", &up.url, &["/tls"]).await;
    let client = any_cert_client();

    let resp = client
        .get(format!("{}/status", app.admin_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let admin_cert = peer_certificate(&resp);
    assert!(
        contains(&admin_cert, b"localhost"),
        "generated for localhost"
    );

    let resp = client
        .get(format!("{}/tls/x", app.proxy_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let proxy_cert = peer_certificate(&resp);
    assert!(contains(&proxy_cert, b"localhost"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["path"], "/x");

    // A client that trusts only the system roots refuses the self-signed certificate.
    let strict = reqwest::Client::new();
    assert!(strict
        .get(format!("{}/status", app.admin_tls))
        .send()
        .await
        .is_err());
}

struct Pem {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    pem: String,
}

fn write_pem(name: &str) -> Pem {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    Pem {
        _dir: dir,
        cert,
        key,
        der: generated.cert.der().to_vec(),
        pem: generated.cert.pem(),
    }
}

/// A client that trusts only `pem` and resolves `name` to loopback `port`.
fn pinned_client(pem: &Pem, name: &str, url: &str) -> reqwest::Client {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.pem.as_bytes()).unwrap())
        .resolve(name, ([127, 0, 0, 1], port).into())
        .tls_info(true)
        .build()
        .unwrap()
}

#[actix_web::test]
async fn listeners_answer_with_configured_pem_certificates() {
    let proxy_pem = write_pem("proxy.portcullis.test");
    let admin_pem = write_pem("admin.portcullis.test");
    let mut settings = test_settings();
    settings.ssl_cert = Some(proxy_pem.cert.clone());
    settings.ssl_cert_key = Some(proxy_pem.key.clone());
    settings.admin_ssl_cert = Some(admin_pem.cert.clone());
    settings.admin_ssl_cert_key = Some(admin_pem.key.clone());
    let app = spawn_with(settings).await;
    let up = spawn_upstream();

    let admin = pinned_client(&admin_pem, "admin.portcullis.test", &app.admin_tls);
    let port = app.admin_tls.rsplit(':').next().unwrap();
    let resp = admin
        .post(format!("https://admin.portcullis.test:{port}/services"))
        .json(&json!({"name": "pem", "url": up.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(peer_certificate(&resp), admin_pem.der);
    let resp = admin
        .post(format!(
            "https://admin.portcullis.test:{port}/services/pem/routes"
        ))
        .json(&json!({"paths": ["/pem"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let proxy = pinned_client(&proxy_pem, "proxy.portcullis.test", &app.proxy_tls);
    let port = app.proxy_tls.rsplit(':').next().unwrap();
    let resp = proxy
        .get(format!("https://proxy.portcullis.test:{port}/pem/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_certificate(&resp), proxy_pem.der);

    // The proxy's certificate is not the admin's: a client pinned to the admin one refuses it.
    let wrong = pinned_client(&admin_pem, "proxy.portcullis.test", &app.proxy_tls);
    assert!(wrong
        .get(format!("https://proxy.portcullis.test:{port}/pem/y"))
        .send()
        .await
        .is_err());
}

#[actix_web::test]
async fn unreadable_or_mismatched_pem_files_fail_start_naming_the_key() {
    let pem = write_pem("x.test");
    let other = write_pem("y.test");
    let mut settings = test_settings();
    settings.ssl_cert = Some(pem.cert.with_file_name("missing.pem"));
    settings.ssl_cert_key = Some(pem.key.clone());
    let err = portcullis::startup::Application::build(settings)
        .await
        .err()
        .expect("start fails")
        .to_string();
    assert!(
        err.contains("`ssl_cert`") && err.contains("missing.pem"),
        "{err}"
    );

    let mut settings = test_settings();
    settings.admin_ssl_cert = Some(pem.cert.clone());
    settings.admin_ssl_cert_key = Some(other.key.clone());
    let err = portcullis::startup::Application::build(settings)
        .await
        .err()
        .expect("start fails")
        .to_string();
    assert!(err.contains("`admin_ssl_cert`"), "{err}");
}

/// The upstream (`Host` it received) that answered `path` for a TLS client asking for `sni`.
async fn served_for_sni(app: &crate::helpers::TestApp, sni: &str, path: &str) -> String {
    let port: u16 = app.proxy_tls.rsplit(':').next().unwrap().parse().unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(sni, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://{sni}:{port}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{sni}{path}");
    let body: serde_json::Value = resp.json().await.unwrap();
    body["headers"]["host"].as_str().unwrap().to_string()
}

/// A route's `snis` match the server name of the TLS handshake (exact or wildcard), outrank a
/// route without them, and never match a request that asked for another name or came over
/// plain HTTP.
#[actix_web::test]
async fn routes_with_snis_match_the_handshake_s_server_name() {
    let app = spawn_app().await;
    let (by_sni, other) = (spawn_upstream(), spawn_upstream());
    for (name, url) in [("by-sni", &by_sni.url), ("other", &other.url)] {
        let (s, b) = app
            .admin_post("/services", json!({"name": name, "url": url}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = app
        .admin_post(
            "/services/by-sni/routes",
            json!({"protocols": ["https"], "snis": ["a.test", "*.wild.test"], "paths": ["/x"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = app
        .admin_post("/services/other/routes", json!({"paths": ["/x"]}))
        .await;
    assert_eq!(s, 201, "{b}");
    let sni_host = format!("127.0.0.1:{}", by_sni.port);
    let other_host = format!("127.0.0.1:{}", other.port);
    assert_eq!(served_for_sni(&app, "a.test", "/x").await, sni_host);
    assert_eq!(served_for_sni(&app, "api.wild.test", "/x").await, sni_host);
    assert_eq!(served_for_sni(&app, "b.test", "/x").await, other_host);
    assert_eq!(served_for_sni(&app, "wild.test", "/x").await, other_host);
    let plain: serde_json::Value = app.proxy_get("/x").await.json().await.unwrap();
    assert_eq!(plain["headers"]["host"], other_host.as_str());
}
