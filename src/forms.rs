//! Request bodies as Kong accepts them: JSON, `application/x-www-form-urlencoded` (dotted keys
//! for records, `a[]=`/`a[1]=`/repeated keys for arrays) and `multipart/form-data` (parsed by
//! `multer`). Both the admin API and the OAuth endpoints read bodies through here, so this module
//! knows nothing of either: its errors are its own, mapped to HTTP by their callers.

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::{Map, Value};

use crate::schema::Coerce;

/// Why a body could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// An `application/x-www-form-urlencoded` body that does not decode.
    #[error("Cannot parse form body")]
    Form,
    /// A `multipart/form-data` content type without a `boundary` parameter.
    #[error("multipart body without boundary")]
    MissingBoundary,
    /// A multipart body that is malformed or has a part that is not UTF-8 text.
    #[error("Cannot parse multipart body")]
    Multipart,
    /// A JSON body that does not parse, or is not an object.
    #[error("Cannot parse JSON body")]
    Json,
}

/// A `Content-Type`'s media type, lower case, without its parameters (`; charset=…`).
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parses a body by its content type into an object, and says whether form coercion applies
/// (form values are all strings; the schema converts them to the field types).
///
/// # Errors
/// A [`FormError`] naming the format that did not parse.
pub fn parse(content_type: &str, body: &[u8]) -> Result<(Map<String, Value>, Coerce), FormError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Map::new(), Coerce::No));
    }
    match media_type(content_type).as_str() {
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|_| FormError::Form)?;
            Ok((nest(pairs), Coerce::Yes))
        }
        "multipart/form-data" => Ok((nest(multipart_fields(content_type, body)?), Coerce::Yes)),
        // JSON is the default, as in Kong's admin API when no content type is given.
        _ => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => Ok((o, Coerce::No)),
            _ => Err(FormError::Json),
        },
    }
}

/// Builds an object from form pairs: `a.b=x` nests records, `a[]=x`/`a[1]=x` and repeated keys
/// make arrays (also used for `?tags=` lists).
pub fn nest(pairs: Vec<(String, String)>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in pairs {
        let path: Vec<String> = key
            .split('.')
            .map(|seg| {
                // `paths[]` and `paths[1]` both mean "an element of paths".
                match seg.find('[') {
                    Some(i) if seg.ends_with(']') => seg[..i].to_string(),
                    _ => seg.to_string(),
                }
            })
            .collect();
        let is_array = key.ends_with(']');
        insert(&mut out, &path, Value::String(value), is_array);
    }
    out
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: Value, is_array: bool) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match map.get_mut(head) {
            Some(Value::Array(a)) => a.push(value),
            Some(existing) => {
                let prev = existing.take();
                *existing = Value::Array(vec![prev, value]);
            }
            None => {
                map.insert(
                    head.clone(),
                    if is_array {
                        Value::Array(vec![value])
                    } else {
                        value
                    },
                );
            }
        }
        return;
    }
    let child = map
        .entry(head.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(inner) = child {
        insert(inner, rest, value, is_array);
    }
}

/// The named parts of a multipart body, in order, as `(name, text)`; unnamed parts are skipped
/// and repeated names kept.
///
/// # Errors
/// A missing boundary, a malformed body, or a part that is not UTF-8.
pub fn multipart_fields(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, FormError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| FormError::MissingBoundary)?;
    let chunk: Result<Bytes, std::convert::Infallible> = Ok(Bytes::copy_from_slice(body));
    let mut multipart = multer::Multipart::new(futures_util::stream::iter([chunk]), boundary);
    // The whole body is in memory, so no step ever waits: `now_or_never` drives it to the end.
    async move {
        let mut fields = Vec::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|_| FormError::Multipart)?
        {
            let name = field.name().map(str::to_string);
            // The bytes as sent: multer's `text()` would drop a leading byte-order mark.
            let bytes = field.bytes().await.map_err(|_| FormError::Multipart)?;
            let text = String::from_utf8(bytes.into()).map_err(|_| FormError::Multipart)?;
            if let Some(name) = name {
                fields.push((name, text));
            }
        }
        Ok(fields)
    }
    .now_or_never()
    .unwrap_or(Err(FormError::Multipart))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_keys_nest_like_kong() {
        let (m, c) = parse(
            "application/x-www-form-urlencoded",
            b"name=oauth2&config.scopes=a&config.scopes=b&paths[]=/x&config.enable_authorization_code=true",
        )
        .unwrap();
        assert_eq!(c, Coerce::Yes);
        assert_eq!(
            Value::Object(m),
            json!({"name":"oauth2","paths":["/x"],"config":{"scopes":["a","b"],"enable_authorization_code":"true"}})
        );
    }

    #[test]
    fn multipart_fields_parse() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nsvc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"url\"\r\n\r\nhttp://a.b\r\n--XyZ--\r\n";
        let (m, c) = parse("multipart/form-data; boundary=XyZ", body.as_bytes()).unwrap();
        assert_eq!(c, Coerce::Yes);
        assert_eq!(Value::Object(m), json!({"name":"svc","url":"http://a.b"}));
    }

    #[test]
    fn multipart_without_boundary_or_with_garbage_is_refused() {
        assert_eq!(
            parse("multipart/form-data", b"x").unwrap_err(),
            FormError::MissingBoundary
        );
        assert_eq!(
            parse("multipart/form-data; boundary=XyZ", b"no parts here").unwrap_err(),
            FormError::Multipart
        );
    }

    #[test]
    fn json_must_be_an_object() {
        assert_eq!(
            parse("application/json", b"[1]").unwrap_err(),
            FormError::Json
        );
        assert_eq!(
            parse("application/json", b"{bad").unwrap_err(),
            FormError::Json
        );
    }
}
