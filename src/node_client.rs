//! The CLI's calls to the running node its configuration describes (`portcullis drain`,
//! `portcullis health`): where one of its listeners is, and one request to it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use awc::http::Method;

use crate::config::{Listen, Secret};

/// How long a call may take: the node is on this host.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The URL of `path` on the first of `listeners` (`key`'s), on loopback when it listens on every
/// address.
///
/// # Errors
/// No listener, or one on port 0 (the running node's port cannot be known).
pub fn url_on(key: &str, listeners: &[Listen], path: &str) -> Result<String, String> {
    let Some(listen) = listeners.first() else {
        return Err(format!("no listener in `{key}`"));
    };
    let mut addr = listen.addr;
    if addr.port() == 0 {
        return Err(format!(
            "`{key}` names port 0: the node's port cannot be known"
        ));
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if listen.ssl { "https" } else { "http" };
    Ok(format!("{scheme}://{addr}{path}"))
}

/// What the node answered.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Sends one request to `url` with `admin_token` (when given) and `json` as the body (when
/// given). The certificate is not verified: the call goes to this host's own listener, as
/// Kong's CLI does.
///
/// # Errors
/// The node could not be reached, or its answer read.
pub fn send(
    method: Method,
    url: &str,
    admin_token: Option<&Secret<String>>,
    json: Option<&serde_json::Value>,
) -> Result<Answer, String> {
    let failed = |e: &dyn std::fmt::Display| format!("failed to send the request to {url}: {e}");
    // awc needs the runtime from the moment the request is built.
    actix_rt::System::new().block_on(async {
        let connector = awc::Connector::new()
            .rustls_0_23(std::sync::Arc::new(crate::tls::unverified_upstream_config()));
        let client = awc::ClientBuilder::new()
            .connector(connector)
            .timeout(TIMEOUT)
            .finish();
        let mut request = client.request(method, url);
        if let Some(token) = admin_token {
            request = request.insert_header(("kong-admin-token", token.expose().as_str()));
        }
        let sent = match json {
            Some(json) => request.send_json(json).await,
            None => request.send().await,
        };
        let mut answer = sent.map_err(|e| failed(&e))?;
        let body = answer.body().await.map_err(|e| failed(&e))?;
        Ok(Answer {
            status: answer.status().as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
}
