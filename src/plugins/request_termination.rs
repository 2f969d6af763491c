//! Kong's `request-termination` plugin: answer every request on its scope with a fixed response
//! (maintenance windows, blocking a consumer). Also the simplest proof of the plugin phases.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::body::AnswerBody;
use crate::entities::PluginInstance;
use crate::plugin_api::{empty_answer, HeaderValue, StatusCode};
use crate::schema::{Field, FieldErrors, FieldType, Schema};

/// The plugin kind.
pub struct RequestTermination;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "request-termination",
    fields: vec![
        Field::new("status_code", FieldType::Integer)
            .required()
            .default(|| json!(503))
            .between(100, 599),
        Field::new("message", FieldType::String),
        Field::new("content_type", FieldType::String),
        Field::new("body", FieldType::String),
        Field::new("echo", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("trigger", FieldType::String),
    ],
    entity_checks: vec![],
});

#[derive(Deserialize)]
struct Config {
    status_code: u16,
    message: Option<String>,
    content_type: Option<String>,
    body: Option<String>,
}

struct Runtime {
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
}

impl Plugin for RequestTermination {
    fn name(&self) -> &'static str {
        "request-termination"
    }
    fn priority(&self) -> i32 {
        crate::plugins::priority("request-termination")
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        let set = |k: &str| config.get(k).is_some_and(|v| !v.is_null());
        if set("message") && set("body") {
            let mut e = FieldErrors::new();
            e.insert(
                "@entity".into(),
                json!(["message cannot be used with content_type or body"]),
            );
            return Err(e);
        }
        let content_type = config.get("content_type").and_then(Value::as_str);
        if content_type.is_some_and(|c| HeaderValue::from_str(c).is_err()) {
            let mut e = FieldErrors::new();
            e.insert("content_type".into(), json!("not a valid header value"));
            return Err(e);
        }
        Ok(())
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let status = StatusCode::from_u16(cfg.status_code).map_err(|e| e.to_string())?;
        let (content_type, body) = match cfg.body {
            Some(body) => (
                cfg.content_type
                    .unwrap_or_else(|| "application/json; charset=utf-8".into()),
                body,
            ),
            None => {
                let message = cfg.message.unwrap_or_else(|| {
                    status
                        .canonical_reason()
                        .unwrap_or("Service unavailable")
                        .to_string()
                });
                (
                    "application/json; charset=utf-8".into(),
                    json!({ "message": message }).to_string(),
                )
            }
        };
        let content_type = HeaderValue::from_str(&content_type)
            .map_err(|_| format!("content_type {content_type:?} is not a header value"))?;
        Ok(Arc::new(Runtime {
            status,
            content_type,
            body: Bytes::from(body),
        }))
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        "request-termination"
    }
    fn priority(&self) -> i32 {
        crate::plugins::priority("request-termination")
    }
    /// Never waits: answered without a future.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        Some(self.check(ctx))
    }
}

impl Runtime {
    /// The access phase (it never waits).
    fn check(&self, _ctx: &mut RequestCtx) -> Flow {
        let mut answer = empty_answer(self.status);
        *answer.body_mut() = AnswerBody::full(self.body.clone());
        answer
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, self.content_type.clone());
        Flow::Respond(answer)
    }
}
