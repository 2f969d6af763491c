//! Kong's log serializer (`kong.log.serialize()`): the JSON object `http-log` and `file-log` write
//! for each request, built from the log phase's [`Exchange`].
//!
//! Beyond Kong, which redacts only `Authorization` and `Proxy-Authorization`, the values of every
//! header and query argument that carries a credential are written as `REDACTED`: a log line
//! must never hold a token, a client secret, an authorization code, a password or an API key
//! (see [`SECRET_HEADERS`], [`SECRET_ARGS`] and [`SECRET_NAME_PARTS`]). The query string is
//! redacted wherever it appears: `request.querystring`, `request.uri`, `request.url` and
//! `upstream_uri`.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::log_queue::LogQueue;
use crate::entities::{Consumer, Route, Service};
use crate::plugin_api::{Exchange, Flow, HeaderMap, PluginRuntime, RequestCtx};
use crate::schema::FieldErrors;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "REDACTED";

/// Headers whose values are credentials (lower-case): never written in a log entry.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Query arguments whose values are credentials: never written in a log entry.
pub const SECRET_ARGS: &[&str] = &["code", "provision_key"];

/// A header or query argument whose name contains one of these (ASCII case-insensitive) carries
/// a credential: `apikey`, `x-api-key` and most `key-auth` `key_names`, `access_token`,
/// `refresh_token`, `client_secret`, `password`.
pub const SECRET_NAME_PARTS: &[&str] = &["key", "token", "secret", "password", "passwd"];

/// The runtime of a log plugin: its log phase serializes the exchange and queues the entry for
/// the instance's own thread (which sends it or writes it); nothing else runs per request.
pub struct SerializingLogger {
    /// Plugin name.
    pub name: &'static str,
    /// Its priority.
    pub priority: i32,
    /// Where entries go.
    pub queue: LogQueue,
}

#[async_trait(?Send)]
impl PluginRuntime for SerializingLogger {
    fn name(&self) -> &'static str {
        self.name
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    async fn access(&self, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }
    fn logs(&self) -> bool {
        true
    }
    fn log_needs(&self) -> crate::plugin_api::LogNeeds {
        crate::plugin_api::LogNeeds {
            details: true,
            response_headers: true,
            steps: false,
        }
    }
    fn log(&self, exchange: &Exchange) {
        self.queue.push(serialize(exchange).to_string());
    }
}

/// Kong's `custom_fields_by_lua` adds Lua-computed fields to the entry: Portcullis runs no Lua,
/// so a config that sets it is refused rather than silently logging without them.
///
/// # Errors
/// The field error when the field is set.
pub fn refuse_lua(config: &Map<String, Value>) -> Result<(), FieldErrors> {
    if config
        .get("custom_fields_by_lua")
        .is_some_and(|v| !v.is_null())
    {
        let mut e = FieldErrors::new();
        e.insert(
            "custom_fields_by_lua".into(),
            json!("not supported: Portcullis runs no Lua; remove the field"),
        );
        return Err(e);
    }
    Ok(())
}

/// Kong's serializer output for one exchange (as a JSON value).
pub fn serialize(exchange: &Exchange) -> Value {
    let req = &exchange.req;
    let query = req.uri().query();
    let request_uri = redact_target(
        req.uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str),
    );
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .unwrap_or_default();
    let url = format!(
        "{}://{}:{}{}",
        exchange.scheme.as_str(),
        host.to_ascii_lowercase(),
        req.local_addr().port(),
        request_uri
    );
    let mut request = Map::new();
    request.insert("id".into(), json!(exchange.request_id));
    request.insert("method".into(), json!(req.method().as_str()));
    request.insert("uri".into(), json!(request_uri));
    request.insert("url".into(), json!(url));
    request.insert("size".into(), json!(exchange.request_size));
    request.insert(
        "querystring".into(),
        Value::Object(querystring(query.unwrap_or_default())),
    );
    request.insert("headers".into(), Value::Object(headers(req.headers())));

    let mut response = Map::new();
    response.insert("status".into(), json!(exchange.status.as_u16()));
    response.insert("size".into(), json!(exchange.response_size));
    response.insert(
        "headers".into(),
        Value::Object(
            exchange
                .response_headers
                .as_ref()
                .map(headers)
                .unwrap_or_default(),
        ),
    );

    let mut root = Map::new();
    root.insert("request".into(), Value::Object(request));
    root.insert(
        "upstream_uri".into(),
        json!(exchange
            .upstream_uri
            .as_deref()
            .map(redact_target)
            .unwrap_or_default()),
    );
    root.insert(
        "upstream_status".into(),
        json!(exchange
            .upstream_status
            .map(|s| s.as_u16().to_string())
            .unwrap_or_default()),
    );
    root.insert("response".into(), Value::Object(response));
    root.insert("latencies".into(), latencies(exchange));
    if !exchange.tries.is_empty() {
        let tries: Vec<Value> = exchange
            .tries
            .iter()
            .map(|t| json!({ "ip": &*t.host, "port": t.port }))
            .collect();
        root.insert("tries".into(), Value::Array(tries));
    }
    root.insert("client_ip".into(), json!(exchange.client_ip.to_string()));
    root.insert("started_at".into(), json!(millis_since_epoch(exchange)));
    root.insert("source".into(), json!(exchange.source.as_str()));
    root.insert("workspace_name".into(), json!("default"));
    if let Some(service) = &exchange.service {
        root.insert("service".into(), service_json(service));
    }
    if let Some(route) = &exchange.route {
        root.insert("route".into(), route_json(route));
    }
    if let Some(consumer) = &exchange.consumer {
        root.insert("consumer".into(), consumer_json(consumer));
    }
    if let Some(credential) = exchange.credential {
        root.insert(
            "authenticated_entity".into(),
            json!({
                "id": credential,
                "consumer_id": exchange.consumer.as_ref().map(|c| c.id),
            }),
        );
    }
    Value::Object(root)
}

/// Kong's latencies in whole milliseconds: `proxy` is -1 when no upstream was asked.
fn latencies(exchange: &Exchange) -> Value {
    let l = &exchange.latencies;
    json!({
        "kong": ms(l.gateway),
        "proxy": l.upstream.map_or(-1, |u| i64::try_from(ms(u)).unwrap_or(i64::MAX)),
        "request": ms(l.request),
        "receive": 0,
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn millis_since_epoch(exchange: &Exchange) -> u64 {
    exchange.started_at.duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// Whether a header's value is a credential.
fn secret_header(name: &str) -> bool {
    SECRET_HEADERS.contains(&name) || secret_part(name)
}

/// Whether a query argument's value is a credential (names compared as sent, case-insensitive).
fn secret_arg(name: &str) -> bool {
    SECRET_ARGS.iter().any(|s| s.eq_ignore_ascii_case(name)) || secret_part(name)
}

/// Whether a name contains one of [`SECRET_NAME_PARTS`].
fn secret_part(name: &str) -> bool {
    let bytes = name.as_bytes();
    SECRET_NAME_PARTS.iter().any(|part| {
        bytes
            .windows(part.len())
            .any(|w| w.eq_ignore_ascii_case(part.as_bytes()))
    })
}

/// Headers as Kong shows them: lower-case names, a repeated header as an array of its values.
fn headers(map: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in map.keys() {
        let secret = secret_header(name.as_str());
        let mut values: Vec<Value> = map
            .get_all(name)
            .iter()
            .map(|v| {
                if secret {
                    json!(REDACTED)
                } else {
                    json!(String::from_utf8_lossy(v.as_bytes()))
                }
            })
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_string(), value);
    }
    out
}

/// The query string as Kong's `get_query()`: decoded names and values, an argument without `=`
/// as `true`, a repeated one as an array; credentials redacted.
fn querystring(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (decode(n), Value::String(decode(v).into_owned())),
            None => (decode(pair), Value::Bool(true)),
        };
        if name.is_empty() {
            continue;
        }
        let value = if secret_arg(&name) && value != Value::Bool(true) {
            json!(REDACTED)
        } else {
            value
        };
        match out.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                out.insert(name.into_owned(), value);
            }
        }
    }
    out
}

fn decode(s: &str) -> Cow<'_, str> {
    if s.contains(['+', '%']) {
        let spaced = s.replace('+', " ");
        Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// A request target (path and query) with the values of credential arguments replaced; the
/// rest is kept byte for byte.
pub fn redact_target(target: &str) -> Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    let secret = |pair: &str| {
        pair.split_once('=')
            .is_some_and(|(name, _)| secret_arg(&decode(name)))
    };
    if !query.split('&').any(secret) {
        return Cow::Borrowed(target);
    }
    let redacted: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_arg(&decode(name)) => {
                Cow::Owned(format!("{name}={REDACTED}"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", redacted.join("&")))
}

/// An entity as the admin API shows it: the row's other fields, then the typed ones.
fn entity(other: &Map<String, Value>, typed: Value) -> Value {
    let mut out = other.clone();
    if let Value::Object(typed) = typed {
        out.extend(typed);
    }
    Value::Object(out)
}

fn service_json(s: &Service) -> Value {
    entity(
        &s.other,
        json!({
            "id": s.id,
            "name": s.name,
            "protocol": s.protocol,
            "host": s.host,
            "port": s.port,
            "path": s.path,
            "retries": s.retries,
            "connect_timeout": s.connect_timeout,
            "write_timeout": s.write_timeout,
            "read_timeout": s.read_timeout,
            "tls_verify": s.tls_verify,
            "client_certificate": s.client_certificate.as_ref().map(|c| json!({ "id": c.id })),
            "ca_certificates": s.ca_certificates,
            "enabled": s.enabled,
        }),
    )
}

fn route_json(r: &Route) -> Value {
    entity(
        &r.other,
        json!({
            "id": r.id,
            "name": r.name,
            "created_at": r.created_at,
            "protocols": r.protocols,
            "methods": r.methods,
            "hosts": r.hosts,
            "paths": r.paths,
            "headers": r.headers,
            "snis": r.snis,
            "https_redirect_status_code": r.https_redirect_status_code,
            "regex_priority": r.regex_priority,
            "strip_path": r.strip_path,
            "preserve_host": r.preserve_host,
            "service": r.service.map(|s| json!({ "id": s.id })),
        }),
    )
}

/// A consumer holds no secret: its credentials are entities of their own, never part of it.
fn consumer_json(c: &Consumer) -> Value {
    entity(
        &c.other,
        json!({ "id": c.id, "username": c.username, "custom_id": c.custom_id }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_reads_as_kong_s_get_query_with_credentials_redacted() {
        let q = querystring("a=1&flag&a=2&access_token=t0k&Code=xyz&name=J%20D+x");
        assert_eq!(
            Value::Object(q),
            json!({
                "a": ["1", "2"],
                "flag": true,
                "access_token": REDACTED,
                "Code": REDACTED,
                "name": "J D x",
            })
        );
    }

    #[test]
    fn a_target_keeps_everything_but_the_credentials() {
        assert_eq!(redact_target("/p?a=1&b=2"), "/p?a=1&b=2");
        assert_eq!(redact_target("/p"), "/p");
        assert_eq!(
            redact_target("/p?a=1&client_secret=s3&refresh_token=r&password=pw&apikey=k&z"),
            "/p?a=1&client_secret=REDACTED&refresh_token=REDACTED&password=REDACTED&apikey=REDACTED&z"
        );
        assert_eq!(
            redact_target("/p?access%5Ftoken=x"),
            "/p?access%5Ftoken=REDACTED"
        );
    }

    #[test]
    fn headers_are_lower_case_repeated_as_arrays_and_credentials_redacted() {
        let mut map = HeaderMap::new();
        map.append("X-One", "1".parse().unwrap());
        map.append("x-two", "a".parse().unwrap());
        map.append("x-two", "b".parse().unwrap());
        map.append("Authorization", "Bearer t".parse().unwrap());
        map.append("cookie", "s=1".parse().unwrap());
        map.append("apikey", "k".parse().unwrap());
        map.append("x-my-api-key", "k".parse().unwrap());
        map.append("x-auth-token", "t".parse().unwrap());
        assert_eq!(
            Value::Object(headers(&map)),
            json!({
                "x-one": "1",
                "x-two": ["a", "b"],
                "authorization": REDACTED,
                "cookie": REDACTED,
                "apikey": REDACTED,
                "x-my-api-key": REDACTED,
                "x-auth-token": REDACTED,
            })
        );
    }
}
