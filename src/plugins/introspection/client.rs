//! The RFC 7662 call: a form POST of the token to the authorization server, authenticated with the
//! configured `Authorization` value, answered by a JSON object whose `active` member decides.
//!
//! One awc client per worker thread and per (keepalive, timeout) pair: awc clients are `!Send`, and
//! every actix worker is its own single-threaded runtime, so a thread-local pool is the natural fit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::error::IntrospectionError;

/// Largest introspection answer we read; RFC 7662 answers are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

thread_local! {
    static CLIENTS: RefCell<HashMap<(u64, u64), awc::Client>> = RefCell::new(HashMap::new());
}

fn client(keepalive: Duration, timeout: Duration) -> awc::Client {
    let key = (
        u64::try_from(keepalive.as_millis()).unwrap_or(u64::MAX),
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    );
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let connector = awc::Connector::new()
                    .timeout(timeout)
                    .conn_keep_alive(keepalive);
                awc::ClientBuilder::new()
                    .connector(connector)
                    .disable_redirects()
                    .timeout(timeout)
                    .finish()
            })
            .clone()
    })
}

/// Everything one introspection call needs.
pub struct Call<'a> {
    /// `introspection_url`.
    pub url: &'a str,
    /// `authorization_value`, sent as the `Authorization` header.
    pub authorization: &'a HeaderValue,
    /// The token to introspect.
    pub token: &'a str,
    /// `token_type_hint`, when configured.
    pub token_type_hint: Option<&'a str>,
    /// `custom_introspection_headers` plus, with `introspect_request`, the request path and method.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `timeout`.
    pub timeout: Duration,
    /// `keepalive`.
    pub keepalive: Duration,
}

/// The server's answer: whether the token is active, and its claims.
pub struct Answer {
    /// RFC 7662 `active`.
    pub active: bool,
    /// Every member of the answer (`scope`, `client_id`, `exp`, extensions…).
    pub claims: Map<String, Value>,
}

/// Introspects one token.
///
/// # Errors
/// [`IntrospectionError`] when no verdict could be obtained (unreachable, timeout, non-2xx,
/// not an RFC 7662 object).
pub async fn introspect(call: Call<'_>) -> Result<Answer, IntrospectionError> {
    let mut request = client(call.keepalive, call.timeout)
        .post(call.url)
        .timeout(call.timeout)
        .insert_header(("accept", "application/json"))
        .insert_header(("authorization", call.authorization.as_bytes()));
    for (name, value) in call.headers {
        request = request.insert_header((name.as_str(), value.as_bytes()));
    }
    let mut form = vec![("token", call.token)];
    if let Some(hint) = call.token_type_hint {
        form.push(("token_type_hint", hint));
    }
    let mut response = request.send_form(&form).await.map_err(|e| match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            IntrospectionError::Timeout
        }
        other => IntrospectionError::Unreachable(other.to_string()),
    })?;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(IntrospectionError::Refused(status.as_u16()));
    }
    if !status.is_success() {
        return Err(IntrospectionError::Status(status.as_u16()));
    }
    let body = response
        .body()
        .limit(MAX_RESPONSE)
        .await
        .map_err(|e| match e {
            awc::error::PayloadError::Overflow => IntrospectionError::Malformed("answer too large"),
            _ => IntrospectionError::Malformed("answer body could not be read"),
        })?;
    parse(&body)
}

/// Parses an RFC 7662 answer: a JSON object with a boolean `active`.
///
/// # Errors
/// [`IntrospectionError::Malformed`] for anything else.
pub fn parse(body: &[u8]) -> Result<Answer, IntrospectionError> {
    let claims: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| IntrospectionError::Malformed("not a JSON object"))?;
    match claims.get("active") {
        Some(Value::Bool(active)) => Ok(Answer {
            active: *active,
            claims,
        }),
        _ => Err(IntrospectionError::Malformed("no boolean `active` member")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_active_and_refuses_garbage() {
        let a = parse(br#"{"active":true,"scope":"read"}"#).unwrap();
        assert!(a.active);
        assert_eq!(a.claims["scope"], "read");
        assert!(!parse(br#"{"active":false}"#).unwrap().active);
        for bad in [&b"<html>"[..], b"[]", br#"{"active":"true"}"#, b"{}"] {
            assert!(matches!(parse(bad), Err(IntrospectionError::Malformed(_))));
        }
    }
}
