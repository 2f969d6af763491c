//! Where `key-auth` finds a key, as Kong's handler does: for each name of `key_names`, in order,
//! the request headers (`-` and `_` alike), then the query string, then the body (form, JSON or
//! multipart). A name given more than once is a duplicate, never resolved by picking one; a
//! value that is not a string (a bare `?apikey`, a JSON number) does not count. Also how the key
//! is removed again for `hide_credentials`.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::plugin_api::{HeaderMap, HeaderName};

/// What one source holds under one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// Nothing.
    Absent,
    /// Something that is not a string (a name without `=` in the query, a JSON number): Kong
    /// goes on with the next name.
    NotString,
    /// One string.
    One(Cow<'a, str>),
    /// More than one value (or a JSON list or object).
    Many,
}

impl Found<'_> {
    /// Whether the source holds anything under the name.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

/// The values of the header variants of one name.
pub fn in_headers<'a>(headers: &'a HeaderMap, names: &[HeaderName]) -> Found<'a> {
    let mut found = Found::Absent;
    for name in names {
        for value in headers.get_all(name) {
            if !found.is_absent() {
                return Found::Many;
            }
            found = match value.to_str() {
                Ok(v) => Found::One(Cow::Borrowed(v)),
                Err(_) => Found::NotString,
            };
        }
    }
    found
}

/// The value of a query-string argument (`+` and percent escapes decoded, as nginx does).
pub fn in_query<'a>(query: &'a str, name: &str) -> Found<'a> {
    let mut found = Found::Absent;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((n, v)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
            continue;
        };
        if n != name {
            continue;
        }
        if !found.is_absent() {
            return Found::Many;
        }
        found = if pair.contains('=') {
            Found::One(v)
        } else {
            Found::NotString
        };
    }
    found
}

/// The body's fields by content type, or nothing when the body is not one Kong reads (Kong logs
/// the parse failure and reads no key from it).
pub fn body_fields(content_type: &str, body: &[u8]) -> Map<String, Value> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut out = Map::new();
    let pairs = match essence.as_str() {
        "application/json" => {
            return match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) => o,
                _ => out,
            }
        }
        "application/x-www-form-urlencoded" => {
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default()
        }
        "multipart/form-data" => {
            crate::forms::multipart_fields(content_type, body).unwrap_or_default()
        }
        _ => return out,
    };
    for (k, v) in pairs {
        match out.get_mut(&k) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            Some(existing) => *existing = Value::Array(vec![existing.take(), Value::String(v)]),
            None => drop(out.insert(k, Value::String(v))),
        }
    }
    out
}

/// One body field as a [`Found`].
pub fn in_body<'a>(fields: &'a Map<String, Value>, name: &str) -> Found<'a> {
    match fields.get(name) {
        None | Some(Value::Null) => Found::Absent,
        Some(Value::String(s)) => Found::One(Cow::Borrowed(s)),
        Some(Value::Array(_) | Value::Object(_)) => Found::Many,
        Some(_) => Found::NotString,
    }
}

/// The body without the field `name`, in its own content type; `None` when it has no such field
/// or is not a type Kong rewrites.
pub fn body_without(content_type: &str, body: &[u8], name: &str) -> Option<Bytes> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => {
            let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else {
                return None;
            };
            o.remove(name)?;
            serde_json::to_vec(&o).ok().map(Bytes::from)
        }
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
            let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != name).collect();
            (kept.len() < pairs.len())
                .then(|| serde_urlencoded::to_string(kept).ok().map(Bytes::from))
                .flatten()
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(content_type).ok()?;
            multipart_without(&boundary, body, name)
        }
        _ => None,
    }
}

/// A multipart body without the parts named `name`, every other part kept byte for byte.
fn multipart_without(boundary: &str, body: &[u8], name: &str) -> Option<Bytes> {
    // Every delimiter is CRLF + `--boundary`; the first may open the body without the CRLF.
    let delimiter = format!("\r\n--{boundary}");
    let mut data = Vec::with_capacity(body.len() + 2);
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(body);
    let mut pieces = Vec::new();
    let mut rest = data.as_slice();
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        pieces.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    pieces.push(rest);
    let before = pieces.len();
    // pieces[0] is the preamble; every other piece starts right after a delimiter.
    let wanted = format!("name=\"{name}\"");
    let kept: Vec<&[u8]> = pieces
        .iter()
        .enumerate()
        .filter(|(i, piece)| *i == 0 || !part_named(piece, &wanted))
        .map(|(_, p)| *p)
        .collect();
    if kept.len() == before {
        return None;
    }
    let joined = kept.join(delimiter.as_bytes());
    Some(Bytes::copy_from_slice(joined.get(2..).unwrap_or_default()))
}

/// Whether a multipart piece's `Content-Disposition` carries `wanted` (`name="…"`) as its name.
fn part_named(piece: &[u8], wanted: &str) -> bool {
    let head_end = find(piece, b"\r\n\r\n").unwrap_or(piece.len());
    let head = String::from_utf8_lossy(&piece[..head_end]);
    head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("content-disposition:")
            && line.split(';').map(str::trim).any(|param| param == wanted)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_duplicates_found() {
        assert_eq!(
            in_query("a=1&api%6B%65%79=k+y", "apikey"),
            Found::One("k y".into())
        );
        assert_eq!(in_query("apikey", "apikey"), Found::NotString);
        assert_eq!(in_query("apikey=a&apikey=a", "apikey"), Found::Many);
        assert_eq!(in_query("apikey[]=a", "apikey"), Found::Absent);
    }

    #[test]
    fn multipart_parts_are_removed_byte_for_byte() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nkong\r\n--XyZ\r\nContent-Disposition: form-data; name=\"foo\"\r\n\r\nbar\r\n--XyZ--\r\n";
        let out = multipart_without("XyZ", body.as_bytes(), "apikey").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"foo\"\r\n\r\nbar\r\n--XyZ--\r\n"
        );
        assert!(multipart_without("XyZ", body.as_bytes(), "other").is_none());
    }
}
