//! Kong's `http-log` plugin: each request's log entry ([`super::log_serializer`]) is queued
//! ([`super::log_queue`]) and sent in batches to an HTTP endpoint, a JSON object per request
//! when `queue.max_batch_size` is 1, a JSON array of them otherwise. The proxy thread only
//! serializes and enqueues; sending, retrying and waiting happen on the queue's own thread.
//!
//! `custom_fields_by_lua` is refused: Portcullis runs no Lua. Kong 3.x's deprecated fields keep
//! their Kong meaning: `queue_size` (≠ 1) sets `queue.max_batch_size`, `flush_timeout` (≠ 2)
//! sets `queue.max_coalescing_delay`, `retry_count` is accepted and has no effect (a warning
//! says to use `queue.max_retry_time`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{json, Map, Value};

use super::log_queue::{LogQueue, QueueSettings, Sender, Sending, QUEUE_SCHEMA};
use super::log_serializer::{refuse_lua, SerializingLogger};
use super::{Plugin, PluginRuntime};
use crate::entities::PluginInstance;
use crate::plugin_api::{HeaderMap, HeaderName, HeaderValue, Method};
use crate::schema::{Field, FieldErrors, FieldType, Schema};

const NAME: &str = "http-log";
const PRIORITY: i32 = super::priority("http-log");

/// The plugin kind.
pub struct HttpLog;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: NAME,
    fields: vec![
        Field::new("http_endpoint", FieldType::String)
            .required()
            .check(crate::schema::check_http_url),
        Field::new("method", FieldType::String)
            .required()
            .default(|| json!("POST"))
            .one_of(&["POST", "PUT", "PATCH"]),
        Field::new("content_type", FieldType::String)
            .required()
            .default(|| json!("application/json"))
            .one_of(&["application/json", "application/json; charset=utf-8"]),
        Field::new("timeout", FieldType::Number)
            .required()
            .default(|| json!(10_000))
            .check(|v| crate::schema::check_number_between(v, 0.0, 1e9)),
        Field::new("keepalive", FieldType::Number)
            .required()
            .default(|| json!(60_000))
            .check(|v| crate::schema::check_number_between(v, 0.0, 1e9)),
        Field::new("retry_count", FieldType::Integer),
        Field::new("queue_size", FieldType::Integer),
        Field::new("flush_timeout", FieldType::Number),
        Field::new("headers", FieldType::StringMap).check(check_headers),
        Field::new("queue", FieldType::Record(&QUEUE_SCHEMA))
            .required()
            .default(|| json!({})),
        Field::new("custom_fields_by_lua", FieldType::StringMap),
    ],
    entity_checks: vec![],
});

/// Kong's header rules: a valid name that is not `Host`, `Content-Length` or `Content-Type`
/// (the plugin sets those), and a non-empty value.
fn check_headers(v: &Value) -> Result<(), String> {
    let Some(map) = v.as_object() else {
        return Err("expected a map".into());
    };
    for (name, value) in map {
        let lower = name.to_ascii_lowercase();
        for (reserved, shown) in [
            ("host", "Host"),
            ("content-length", "Content-Length"),
            ("content-type", "Content-Type"),
        ] {
            if lower == reserved {
                return Err(format!("cannot contain '{shown}' header"));
            }
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("invalid header name '{name}'"));
        }
        let value = value.as_str().unwrap_or_default();
        if value.is_empty() {
            return Err("length must be at least 1".into());
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(format!("invalid value for header '{name}'"));
        }
    }
    Ok(())
}

impl Plugin for HttpLog {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        refuse_lua(config)
    }
    fn check_whole_config(&self, config: &Map<String, Value>) -> Result<(), String> {
        let userinfo = config
            .get("http_endpoint")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
        let authorization = config
            .get("headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("authorization")));
        if userinfo && authorization {
            return Err("specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed".into());
        }
        Ok(())
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let config = instance
            .config
            .as_object()
            .ok_or("http-log config is not an object")?;
        let target = Target::from_config(config)?;
        let queue = queue_settings(config)?;
        let batched = queue.max_batch_size > 1;
        let sender = target.into_sender(batched);
        let queue = LogQueue::start(NAME, instance.id, queue, sender)?;
        Ok(Arc::new(SerializingLogger {
            name: NAME,
            priority: PRIORITY,
            queue,
        }))
    }
}

/// The `queue` record with Kong's translation of the deprecated fields.
fn queue_settings(config: &Map<String, Value>) -> Result<QueueSettings, String> {
    let mut queue = config
        .get("queue")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if config
        .get("retry_count")
        .and_then(Value::as_i64)
        .is_some_and(|n| n != 10)
    {
        tracing::warn!("http-log: the retry_count parameter no longer works, please update your configuration to use initial_retry_delay and max_retry_time instead");
    }
    if let Some(n) = config
        .get("queue_size")
        .and_then(Value::as_i64)
        .filter(|n| *n != 1)
    {
        tracing::warn!("http-log: the queue_size parameter is deprecated, please update your configuration to use queue.max_batch_size instead");
        queue.insert("max_batch_size".into(), json!(n.max(1)));
    }
    if let Some(n) = config
        .get("flush_timeout")
        .and_then(Value::as_f64)
        .filter(|n| (*n - 2.0).abs() > f64::EPSILON)
    {
        tracing::warn!("http-log: the flush_timeout parameter is deprecated, please update your configuration to use queue.max_coalescing_delay instead");
        queue.insert("max_coalescing_delay".into(), json!(n.max(0.0)));
    }
    QueueSettings::from_config(&queue)
}

type LogClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where and how batches are sent, fixed at compile time.
struct Target {
    /// `http_endpoint` without its user info.
    uri: http::Uri,
    /// `host:port`, the only part of the endpoint that errors name.
    shown: String,
    method: Method,
    headers: HeaderMap,
    timeout: Duration,
    client: LogClient,
}

impl Target {
    fn from_config(config: &Map<String, Value>) -> Result<Self, String> {
        let str_of = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or_default();
        let ms = |k: &str| {
            Duration::from_secs_f64(config.get(k).and_then(Value::as_f64).unwrap_or(0.0) / 1000.0)
        };
        let mut url = url::Url::parse(str_of("http_endpoint")).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(str_of("content_type"))
            .map_err(|_| "content_type is not a header value")?;
        headers.insert(http::header::CONTENT_TYPE, content_type);
        if !url.username().is_empty() || url.password().is_some() {
            // Kong sends the user info as written in the URL, base64-encoded.
            let userinfo = format!("{}:{}", url.username(), url.password().unwrap_or_default());
            let basic = base64::engine::general_purpose::STANDARD.encode(userinfo);
            let value = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|_| "http_endpoint user info is not usable")?;
            headers.insert(http::header::AUTHORIZATION, value);
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        for (name, value) in config
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value.as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            headers.entry(name).or_insert(value);
        }
        let shown = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let uri: http::Uri = url.as_str().parse().map_err(|e| format!("{e}"))?;
        let method = Method::from_bytes(str_of("method").as_bytes()).map_err(|e| e.to_string())?;
        Ok(Self {
            uri,
            shown,
            method,
            headers,
            timeout: ms("timeout"),
            client: client(ms("keepalive")),
        })
    }

    /// The queue's sender: one request per batch; a 2xx answer accepts it.
    fn into_sender(self, batched: bool) -> Sender {
        let target = Arc::new(self);
        Arc::new(move |batch: Arc<[String]>| -> Sending {
            let target = Arc::clone(&target);
            Box::pin(async move { target.send(&batch, batched).await })
        })
    }

    async fn send(&self, batch: &[String], batched: bool) -> Result<(), String> {
        let body = if batched {
            let mut body =
                String::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 1);
            body.push('[');
            for (n, entry) in batch.iter().enumerate() {
                if n > 0 {
                    body.push(',');
                }
                body.push_str(entry);
            }
            body.push(']');
            body
        } else {
            batch.concat()
        };
        let mut request = http::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let exchange = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("failed request to {}: {}", self.shown, describe(&e)))?;
            let status = answer.status();
            // Read the answer whole, as Kong does, so that the connection can be reused.
            let _ = answer.into_body().collect().await;
            if status.as_u16() < 300 {
                Ok(())
            } else {
                Err(format!(
                    "request to {} returned status code {}",
                    self.shown,
                    status.as_u16()
                ))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("failed request to {}: timeout", self.shown)))
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}"))
}

/// A pooled client verifying certificates against the web PKI roots (Kong does not verify).
fn client(keepalive: Duration) -> LogClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::verified_upstream_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(keepalive)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{validate, Coerce};

    fn config(input: Value) -> Result<Map<String, Value>, Value> {
        let Value::Object(input) = input else {
            panic!("an object")
        };
        let out = validate(&SCHEMA, &input, Coerce::No).map_err(Value::Object)?;
        HttpLog.check_config(&out).map_err(Value::Object)?;
        HttpLog
            .check_whole_config(&out)
            .map_err(|m| json!({ "config": m }))?;
        Ok(out)
    }

    #[test]
    fn legacy_queue_parameters_are_converted_as_kong_does() {
        let out = config(json!({
            "http_endpoint": "http://hi:there@myservice.test/path",
            "retry_count": 23, "queue_size": 46, "flush_timeout": 92,
        }))
        .unwrap();
        let queue = queue_settings(&out).unwrap();
        assert_eq!(queue.max_batch_size, 46);
        assert_eq!(queue.max_coalescing_delay, Duration::from_secs(92));
    }

    #[test]
    fn userinfo_becomes_basic_auth_and_leaves_the_url() {
        let out =
            config(json!({ "http_endpoint": "http://hi:there@myservice.test/path" })).unwrap();
        let target = Target::from_config(&out).unwrap();
        assert_eq!(target.uri.to_string(), "http://myservice.test/path");
        assert_eq!(target.headers["authorization"], "Basic aGk6dGhlcmU=");
        assert_eq!(target.shown, "myservice.test:80");
    }
}
