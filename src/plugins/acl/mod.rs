//! Kong's `acl` plugin: lets a request through only when the consumer an auth plugin identified
//! is (`allow`) or is not (`deny`) in one of the listed groups, and tells the upstream the
//! consumer's groups in `X-Consumer-Groups`. Behaviour, config and error bodies: Kong 3.x
//! `kong/plugins/acl` and its specs (`spec/03-plugins/18-acl`). Groups come from the router
//! snapshot, joined once per snapshot.
//!
//! Kong also honours "authenticated groups" that plugins such as `ldap-auth` set without a
//! consumer; no plugin of this build sets them, so a request is always judged by its consumer's
//! groups, which is what Kong does when there are none (`always_use_authenticated_groups`
//! included).

pub mod acls;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::entities::PluginInstance;
use crate::plugin_api::identity;
use crate::plugin_api::{json_answer, Answer, StatusCode};
use crate::schema::{Field, FieldType, Schema};

/// Kong's handler priority: after every auth plugin.
const PRIORITY: i32 = super::priority("acl");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "acl",
    fields: vec![
        Field::new("allow", FieldType::Array(Box::new(FieldType::String))),
        Field::new("deny", FieldType::Array(Box::new(FieldType::String))),
        Field::new("hide_groups_header", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("always_use_authenticated_groups", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
    ],
    entity_checks: vec![],
});

#[derive(Deserialize)]
struct Config {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    hide_groups_header: bool,
}

/// The plugin kind.
pub struct Acl;

fn non_empty(config: &Map<String, Value>, field: &str) -> bool {
    match config.get(field) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

impl Plugin for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn allows_consumer_scope(&self) -> bool {
        false
    }
    fn check_entity(&self, config: &Map<String, Value>) -> Vec<String> {
        let fields = "'config.allow', 'config.deny'";
        match (non_empty(config, "allow"), non_empty(config, "deny")) {
            (false, false) => vec![format!(
                "at least one of these fields must be non-empty: {fields}"
            )],
            (true, true) => vec![format!(
                "exactly one of these fields must be non-empty: {fields}"
            )],
            _ => Vec::new(),
        }
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let (deny, groups) = match (cfg.deny.filter(|d| !d.is_empty()), cfg.allow) {
            (Some(deny), _) => (true, deny),
            (None, Some(allow)) => (false, allow),
            (None, None) => return Err("neither allow nor deny is set".into()),
        };
        Ok(Arc::new(Runtime {
            deny,
            groups,
            hide_groups_header: cfg.hide_groups_header,
        }))
    }
}

/// One compiled instance.
struct Runtime {
    /// `deny` list (else `allow`).
    deny: bool,
    /// The listed groups.
    groups: Vec<String>,
    hide_groups_header: bool,
}

fn refuse(status: StatusCode) -> Flow {
    let message = if status == StatusCode::FORBIDDEN {
        "You cannot consume this service"
    } else {
        "Unauthorized"
    };
    let answer: Answer = json_answer(status, &json!({ "message": message }));
    Flow::Respond(answer)
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        "acl"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    /// Never waits: answered without a future.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        Some(self.check(ctx))
    }
}

impl Runtime {
    /// The access phase (it never waits).
    fn check(&self, ctx: &mut RequestCtx) -> Flow {
        // No client may claim groups: the header is the gateway's to set.
        ctx.clear_upstream(&identity::CONSUMER_GROUPS);
        // Kong answers 403 to a request with a credential and 401 to one without.
        let unidentified = if ctx.authenticated {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let Some(consumer) = ctx.consumer.as_ref().map(|c| c.id) else {
            return refuse(unidentified);
        };
        let snapshot = ctx.snapshot.clone();
        let groups = snapshot.groups.get(&consumer);
        let blocked = match (groups, self.deny) {
            (None, false) => return refuse(unidentified),
            (None, true) => false,
            (Some(g), deny) => g.any_of(&self.groups) == deny,
        };
        if blocked {
            return refuse(StatusCode::FORBIDDEN);
        }
        if let (false, Some(g)) = (self.hide_groups_header, groups) {
            ctx.set_upstream(&identity::CONSUMER_GROUPS, &g.header);
        }
        Flow::Continue
    }
}
