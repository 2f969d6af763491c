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
        if let Ok((fields, _)) = crate::admin::body::parse(content_type, body) {
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
