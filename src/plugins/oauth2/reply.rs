//! How the OAuth endpoints answer: RFC 6749 `error`/`error_description` JSON with Kong's cache
//! headers and challenges, and Kong's `{"redirect_uri": …}` envelope with its exact encoding.

use crate::plugin_api::{json_answer, Answer, HeaderValue};
use http::StatusCode;
use serde_json::{Map, Value};

/// An OAuth error: RFC 6749 code and Kong's description text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, …
    pub error: &'static str,
    /// Human-readable text (Kong's wording).
    pub description: String,
}

impl OAuthError {
    /// Builds an error.
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }

    /// As response parameters.
    pub fn params(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(self.error.into()));
        m.insert(
            "error_description".into(),
            Value::String(self.description.clone()),
        );
        m
    }
}

/// JSON answer of the authorize/token endpoints (always `Cache-Control: no-store`).
pub fn endpoint_json(status: StatusCode, body: &Value) -> Answer {
    let mut answer = json_answer(status, body);
    let headers = answer.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    answer
}

/// The `realm="…", ` prefix of Bearer challenges, if a realm is configured.
pub fn realm_prefix(realm: Option<&str>) -> String {
    match realm.filter(|r| !r.is_empty()) {
        Some(r) => format!("realm=\"{r}\", "),
        None => String::new(),
    }
}

/// 405 for anything but POST on the endpoints.
pub fn invalid_method(method: &str, endpoint: &str, realm: Option<&str>) -> Answer {
    let description = format!("The HTTP method {method} is invalid for the {endpoint} endpoint");
    let challenge = format!(
        "Bearer {}error=\"invalid_method\", error_description=\"{description}\"",
        realm_prefix(realm)
    );
    let mut answer = json_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({ "error": "invalid_method", "error_description": description }),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        answer
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, value);
    }
    answer
}

/// Kong's query encoding for redirect URIs: every byte but `A-Za-z0-9_` as lower-case `%xx`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn render_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Encodes args Kong's way: keys sorted, empty values as bare keys.
pub fn encode_args(args: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = args.keys().collect();
    keys.sort();
    let mut parts = Vec::new();
    for k in keys {
        match &args[k] {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(v) = render_value(item) {
                        parts.push(format!("{}%5b{}%5d={}", encode(k), i + 1, encode(&v)));
                    }
                }
            }
            v => match render_value(v) {
                Some(s) if s.is_empty() => parts.push(encode(k)),
                Some(s) => parts.push(format!("{}={}", encode(k), encode(&s))),
                None => {}
            },
        }
    }
    parts.join("&")
}

fn decode_args(s: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (
                k,
                Value::String(
                    percent_encoding::percent_decode_str(&v.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned(),
                ),
            ),
            None => (pair, Value::Bool(true)),
        };
        m.insert(
            percent_encoding::percent_decode_str(k)
                .decode_utf8_lossy()
                .into_owned(),
            v,
        );
    }
    m
}

/// A redirect (query or fragment: registered URIs have no fragment of their own) with the RFC
/// 9207 `iss` parameter appended last, so the rest reads as Kong writes it.
pub fn with_issuer(mut url: String, issuer: &str) -> String {
    url.push_str("&iss=");
    url.push_str(&encode(issuer));
    url
}

/// The registered redirect URI with `params` merged into its query (or its fragment).
pub fn redirect_with(registered: &str, params: &Map<String, Value>, in_fragment: bool) -> String {
    let (base, fragment) = match registered.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (registered, None),
    };
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    if in_fragment {
        let mut args = fragment.map(decode_args).unwrap_or_default();
        args.extend(params.clone());
        match query {
            Some(q) => format!("{path}?{q}#{}", encode_args(&args)),
            None => format!("{path}#{}", encode_args(&args)),
        }
    } else {
        let mut args = query.map(decode_args).unwrap_or_default();
        args.extend(params.clone());
        format!("{path}?{}", encode_args(&args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kong_redirect_encoding() {
        let p = OAuthError::new("invalid_scope", "\"wot\" is an invalid scope").params();
        assert_eq!(
            redirect_with("http://google.test/kong", &p, false),
            "http://google.test/kong?error=invalid_scope&error_description=%22wot%22%20is%20an%20invalid%20scope"
        );
        let mut m = Map::new();
        m.insert("code".into(), json!("abc"));
        assert_eq!(
            redirect_with("http://google.test/kong?foo=bar&code=123", &m, false),
            "http://google.test/kong?code=abc&foo=bar"
        );
        let mut t = Map::new();
        t.insert("access_token".into(), json!("t"));
        t.insert("token_type".into(), json!("bearer"));
        t.insert("state".into(), json!("wot"));
        assert_eq!(
            redirect_with("http://google.test/kong", &t, true),
            "http://google.test/kong#access_token=t&state=wot&token_type=bearer"
        );
        let e = OAuthError::new(
            "invalid_request",
            "code_challenge_method is not supported, must be S256",
        )
        .params();
        assert!(redirect_with("http://x.test/cb", &e, false)
            .contains("is%20not%20supported%2c%20must%20be%20S256"));
    }
}
