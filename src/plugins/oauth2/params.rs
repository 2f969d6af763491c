//! Parameters of the OAuth endpoints and of resource requests, sourced as Kong does: query string
//! args, then (for POST/PUT/PATCH) the body by content type, body winning on collisions. JSON keeps
//! its types (so `scope` may be a number and is then rejected); repeated form keys become arrays.

use bytes::Bytes;
use serde_json::{Map, Value};

/// Query-string pairs as a map (repeated keys become arrays).
pub fn from_pairs(pairs: Vec<(String, String)>, into: &mut Map<String, Value>) {
    for (k, v) in pairs {
        match into.get_mut(&k) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            Some(existing) => {
                let prev = existing.take();
                *existing = Value::Array(vec![prev, Value::String(v)]);
            }
            None => {
                into.insert(k, Value::String(v));
            }
        }
    }
}

/// The body's parameters, or an empty map when the content type is not understood.
pub fn body_params(content_type: &str, body: &[u8]) -> Map<String, Value> {
    let ct = content_type.to_ascii_lowercase();
    let mut out = Map::new();
    if ct.starts_with("application/x-www-form-urlencoded") {
        if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
            from_pairs(pairs, &mut out);
        }
    } else if ct.starts_with("application/json") {
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
            out = o;
        }
    } else if ct.starts_with("multipart/form-data") {
        if let Ok((fields, _)) = crate::forms::parse(content_type, body) {
            for (k, v) in fields {
                out.insert(k, v);
            }
        }
    }
    out
}

/// Query args merged with body params (body wins).
pub fn merged(query: &str, content_type: &str, body: Option<&Bytes>) -> Map<String, Value> {
    let mut params = Map::new();
    if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
        from_pairs(pairs, &mut params);
    }
    if let Some(body) = body {
        for (k, v) in body_params(content_type, body) {
            params.insert(k, v);
        }
    }
    params
}

/// A string parameter; `None` when absent or not a string.
pub fn string<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    params.get(key).and_then(Value::as_str)
}

/// A non-blank string parameter.
pub fn non_blank<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    string(params, key).filter(|s| !s.trim().is_empty())
}

/// A form body with one key removed (for `hide_credentials`).
pub fn form_without(body: &[u8], key: &str) -> Bytes {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let kept: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != key).collect();
    Bytes::from(serde_urlencoded::to_string(kept).unwrap_or_default())
}

/// The parameters of the OAuth endpoints that RFC 6749 §3.1 allows once each: a request that
/// repeats one (twice in the form, or in both the query and the body) or gives one a non-string
/// value is ambiguous and refused, never resolved by picking one of the values.
pub const SINGLE_VALUED: &[&str] = &[
    "grant_type",
    "response_type",
    "client_id",
    "client_secret",
    "redirect_uri",
    "scope",
    "state",
    "code",
    "code_verifier",
    "code_challenge",
    "code_challenge_method",
    "refresh_token",
    "provision_key",
    "authenticated_userid",
    "token",
    "token_type_hint",
];

/// Why an OAuth endpoint request's parameters cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// A parameter of [`SINGLE_VALUED`] given more than once.
    Repeated(&'static str),
    /// A parameter of [`SINGLE_VALUED`] whose value is not a string (a JSON number, list, object).
    NotAString(&'static str),
    /// `client_secret` in the request URI (RFC 6749 §2.3.1: "MUST NOT be included in the request
    /// URI").
    SecretInUri,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Repeated(name) => write!(f, "{name} must not be included more than once"),
            Self::NotAString(name) => write!(f, "{name} is not a string"),
            Self::SecretInUri => f.write_str("client_secret must not be sent in the request URI"),
        }
    }
}

/// The parameters of an OAuth endpoint request: query args and (for POST) the body, with the
/// RFC 6749 §2.3.1 and §3.1 rules applied (see [`ParamError`]). Parameters outside
/// [`SINGLE_VALUED`] keep Kong's merge (body wins).
///
/// # Errors
/// The first [`ParamError`] found.
pub fn endpoint_params(
    query: &str,
    content_type: &str,
    body: Option<&Bytes>,
) -> Result<Map<String, Value>, ParamError> {
    let mut from_query = Map::new();
    if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
        from_pairs(pairs, &mut from_query);
    }
    if from_query.contains_key("client_secret") {
        return Err(ParamError::SecretInUri);
    }
    let from_body = body
        .map(|b| body_params(content_type, b))
        .unwrap_or_default();
    let json_body = content_type
        .to_ascii_lowercase()
        .starts_with("application/json");
    for name in SINGLE_VALUED {
        let in_query = from_query.get(*name);
        let in_body = from_body.get(*name);
        if in_query.is_some() && in_body.is_some() {
            return Err(ParamError::Repeated(name));
        }
        match in_query.or(in_body) {
            None | Some(Value::String(_)) => {}
            // Repeated form or query keys become arrays (see `from_pairs`); in a JSON body an
            // array is a list given where one string belongs.
            Some(Value::Array(_)) if !(json_body && in_body.is_some()) => {
                return Err(ParamError::Repeated(name))
            }
            Some(_) => return Err(ParamError::NotAString(name)),
        }
    }
    let mut params = from_query;
    params.extend(from_body);
    Ok(params)
}
