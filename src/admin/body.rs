//! Admin request bodies as Kong accepts them: JSON, `application/x-www-form-urlencoded` (dotted
//! keys for records, `a[]=`/`a[1]=`/repeated keys for arrays) and `multipart/form-data`.

use serde_json::{Map, Value};

use crate::error::AdminError;
use crate::schema::Coerce;

/// Parses a body by its content type into an object, and says whether form coercion applies.
///
/// # Errors
/// [`AdminError::BadBody`] when the body cannot be parsed.
pub fn parse(content_type: &str, body: &[u8]) -> Result<(Map<String, Value>, Coerce), AdminError> {
    let ct = content_type.to_ascii_lowercase();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Map::new(), Coerce::No));
    }
    if ct.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| AdminError::BadBody("Cannot parse form body".into()))?;
        return Ok((nest(pairs), Coerce::Yes));
    }
    if ct.starts_with("multipart/form-data") {
        let boundary = ct
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_string())
            .ok_or_else(|| AdminError::BadBody("multipart body without boundary".into()))?;
        // The boundary is case-sensitive: take it from the original header.
        let original = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_string())
            .unwrap_or(boundary);
        return Ok((nest(multipart_fields(body, &original)?), Coerce::Yes));
    }
    // JSON is the default, as in Kong's admin API when no content type is given.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok((o, Coerce::No)),
        _ => Err(AdminError::BadBody("Cannot parse JSON body".into())),
    }
}

/// Parses query-string style pairs (also used for `?tags=` lists).
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

fn multipart_fields(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, AdminError> {
    let bad = || AdminError::BadBody("Cannot parse multipart body".into());
    let text = std::str::from_utf8(body).map_err(|_| bad())?;
    let delimiter = format!("--{boundary}");
    let mut fields = Vec::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (headers, value) = part.split_once("\r\n\r\n").ok_or_else(bad)?;
        let name = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .and_then(|l| l.split(';').find_map(|p| p.trim().strip_prefix("name=")))
            .map(|n| n.trim_matches('"').to_string())
            .ok_or_else(bad)?;
        fields.push((
            name,
            value.strip_suffix("\r\n").unwrap_or(value).to_string(),
        ));
    }
    Ok(fields)
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
        let (m, _) = parse("multipart/form-data; boundary=XyZ", body.as_bytes()).unwrap();
        assert_eq!(Value::Object(m), json!({"name":"svc","url":"http://a.b"}));
    }

    #[test]
    fn json_must_be_an_object() {
        assert!(parse("application/json", b"[1]").is_err());
        assert!(parse("application/json", b"{bad").is_err());
    }
}
