//! How an introspection answer's claims reach the upstream: which header carries which claim
//! and how a claim's JSON value is written in it. The standard claims' headers are worked out
//! once per verdict ([`standard_headers`]), when it is cached, not once per request.

use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Standard claims forwarded upstream, with their header (`username` twice: Kong renamed
/// `X-Credential-Username` to `X-Credential-Identifier` in 3.0; both are sent). A `static`: a
/// `const` array of header names is built and dropped again wherever it is used.
pub static CLAIM_HEADERS: [(&str, HeaderName); 12] = [
    ("scope", HeaderName::from_static("x-credential-scope")),
    (
        "client_id",
        HeaderName::from_static("x-credential-client-id"),
    ),
    ("username", HeaderName::from_static("x-credential-username")),
    (
        "username",
        HeaderName::from_static("x-credential-identifier"),
    ),
    (
        "token_type",
        HeaderName::from_static("x-credential-token-type"),
    ),
    ("exp", HeaderName::from_static("x-credential-exp")),
    ("iat", HeaderName::from_static("x-credential-iat")),
    ("nbf", HeaderName::from_static("x-credential-nbf")),
    ("sub", HeaderName::from_static("x-credential-sub")),
    ("aud", HeaderName::from_static("x-credential-aud")),
    ("iss", HeaderName::from_static("x-credential-iss")),
    ("jti", HeaderName::from_static("x-credential-jti")),
];

/// A claim as a header value: strings as is, numbers and booleans printed, string arrays joined
/// with `, ` (e.g. several `aud`), anything else as JSON.
pub fn claim_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// The header a custom claim is forwarded in (`custom_claims_forward`): `X-Credential-<claim>`.
pub fn claim_header(claim: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(format!("x-credential-{}", claim.to_ascii_lowercase()).as_bytes()).ok()
}

/// The standard claims' upstream headers for these claims, in [`CLAIM_HEADERS`]' order; a claim
/// absent, `null`, or not a valid header value gives none.
pub fn standard_headers(claims: &Map<String, Value>) -> Vec<(&'static HeaderName, HeaderValue)> {
    CLAIM_HEADERS
        .iter()
        .filter_map(|(claim, header)| {
            let value = claims.get(*claim).and_then(claim_value)?;
            HeaderValue::from_str(&value).ok().map(|v| (header, v))
        })
        .collect()
}
