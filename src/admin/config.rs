//! DB-less mode on the admin API (`database = off`): `POST /config` replaces the whole running
//! configuration with a declarative one, `GET /config` exports it, and single-entity writes are
//! refused with Kong's `405`. Also the reading of `declarative_config` at start and on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::Addr;
use actix_web::http::Method;
use actix_web::HttpResponse;
use arc_swap::ArcSwap;
use portcullis_stores::memory::MemoryConfigStore;
use portcullis_stores::model::entities as defs;
use serde_json::{json, Map, Value};

use super::declarative::{self, Invalid, Loaded};
use super::{crud, AdminState};
use crate::actors::registry::{ConfigRegistry, ReplaceAll};
use crate::error::AdminError;
use crate::plugins::PluginRegistry;

/// How long a swap may wait for the registry before answering 503.
const SWAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What DB-less mode keeps: the store a declarative configuration replaces, the file it was read
/// from, and the digest of the running one (`check_hash`).
pub struct DbLess {
    /// The admin API's and the registry's store.
    pub target: Arc<MemoryConfigStore>,
    /// `declarative_config`, re-read on SIGHUP.
    pub file: Option<PathBuf>,
    /// Digest of the running configuration; empty before the first one, and while the running
    /// one holds no entity (Kong's zeros in `/status`; `/status/ready` answers 503).
    pub hash: Arc<ArcSwap<String>>,
}

/// Reads and validates a declarative file.
///
/// # Errors
/// One line per problem (entity path and field), or why the file cannot be read.
pub async fn read_file(path: &Path, plugins: &PluginRegistry) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    declarative::load_text(&text, plugins)
        .await
        .map_err(|e| lines(&e))
}

/// Every problem on a line of its own.
pub fn lines(invalid: &Invalid) -> String {
    let lines: Vec<String> = invalid.problems.iter().map(ToString::to_string).collect();
    format!("declarative config is invalid:\n  {}", lines.join("\n  "))
}

impl DbLess {
    /// Re-reads `declarative_config` (SIGHUP): a bad file is logged and changes nothing.
    pub async fn reload_file(&self, registry: &Addr<ConfigRegistry>, plugins: &PluginRegistry) {
        let Some(path) = &self.file else {
            tracing::warn!("SIGHUP: no declarative_config to re-read");
            return;
        };
        match read_file(path, plugins).await {
            Ok(loaded) => match self.swap(registry, loaded).await {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "SIGHUP: declarative configuration reloaded")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "SIGHUP: reload failed")
                }
            },
            Err(reason) => {
                tracing::error!(file = %path.display(), %reason, "SIGHUP: declarative configuration refused; the running one is kept");
            }
        }
    }

    /// Replaces the running configuration.
    async fn swap(
        &self,
        registry: &Addr<ConfigRegistry>,
        loaded: Loaded,
    ) -> Result<(), AdminError> {
        let hash = loaded.hash.clone();
        let msg = ReplaceAll {
            target: self.target.clone(),
            next: loaded.store,
        };
        // Bounded as every admin write: a saturated registry answers 503.
        let result = match tokio::time::timeout(SWAP_WAIT, registry.send(msg)).await {
            Ok(Ok(r)) => r.map_err(AdminError::from),
            Ok(Err(_)) | Err(_) => Err(AdminError::Unavailable),
        };
        // The swap itself happened unless the mailbox refused it.
        if !matches!(result, Err(AdminError::Unavailable)) {
            self.hash.store(Arc::new(hash));
        }
        result
    }
}

/// A refused declarative configuration as the admin API answers it (Kong's body).
fn refused(invalid: Invalid) -> AdminError {
    AdminError::Declarative(Box::new(invalid.to_kong_body()))
}

/// Kong's verb for a refused write.
fn operation(method: &Method) -> Option<&'static str> {
    match *method {
        Method::POST => Some("create"),
        Method::PUT => Some("create or update"),
        Method::PATCH => Some("update"),
        Method::DELETE => Some("remove"),
        _ => None,
    }
}

/// In DB-less mode, a write to an entity is refused as Kong refuses it (`405`, code 12).
pub fn refuse_entity_write(
    st: &AdminState,
    table: Option<&str>,
    method: &Method,
) -> Option<AdminError> {
    st.dbless.as_ref()?;
    let (table, op) = (table?, operation(method)?);
    Some(AdminError::OperationUnsupported(format!(
        "cannot {op} '{table}' entities when not using a database"
    )))
}

/// `GET /config`, `POST /config`; `None` for other paths.
pub async fn dispatch(
    st: &AdminState,
    seg: &[&str],
    method: &Method,
    query: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> Option<Result<HttpResponse, AdminError>> {
    if seg != ["config"] {
        return None;
    }
    let Some(dbless) = &st.dbless else {
        return Some(Err(AdminError::BadBody(
            "this endpoint is only available when the gateway is configured to not use a database (database = off)".into(),
        )));
    };
    Some(match *method {
        Method::GET => export(st).await,
        Method::POST => post(st, dbless, query, content_type, body).await,
        _ => Err(AdminError::MethodNotAllowed),
    })
}

async fn export(st: &AdminState) -> Result<HttpResponse, AdminError> {
    let doc = declarative::export(st.store.as_ref()).await?;
    let text = declarative::to_yaml(&doc).map_err(AdminError::Internal)?;
    Ok(HttpResponse::Ok().json(json!({ "config": text })))
}

/// The declarative document a request carries: a `config` field (text or object) of a JSON or
/// form body, the JSON body itself when it has `_format_version`, or a raw YAML body.
fn document_of(content_type: &str, body: &[u8]) -> Result<Value, AdminError> {
    let essence = crate::forms::media_type(content_type);
    let structured = matches!(
        essence.as_str(),
        "application/json" | "application/x-www-form-urlencoded" | "multipart/form-data"
    );
    if structured {
        let (mut fields, _) = crate::forms::parse(content_type, body)?;
        if fields.contains_key("_format_version") {
            return Ok(Value::Object(fields));
        }
        return match fields.remove("config") {
            Some(Value::String(text)) => declarative::parse_text(&text).map_err(refused),
            Some(Value::Object(o)) => Ok(Value::Object(o)),
            _ => Err(AdminError::BadBody(
                "expected a declarative configuration".into(),
            )),
        };
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| AdminError::BadBody("expected a declarative configuration".into()))?;
    if text.trim().is_empty() {
        return Err(AdminError::BadBody(
            "expected a declarative configuration".into(),
        ));
    }
    declarative::parse_text(text).map_err(refused)
}

async fn post(
    st: &AdminState,
    dbless: &DbLess,
    query: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> Result<HttpResponse, AdminError> {
    let check_hash = query.iter().any(|(k, v)| k == "check_hash" && v == "1");
    let doc = document_of(content_type, body)?;
    if check_hash && **dbless.hash.load() == declarative::hash_of(&doc) {
        return Ok(HttpResponse::NotModified().finish());
    }
    let loaded = declarative::load(&doc, &st.plugins)
        .await
        .map_err(refused)?;
    let mut entities = Map::new();
    for def in defs::ALL {
        let Some(kind) = crud::kind_by_table(def.name) else {
            continue;
        };
        let rows: Map<String, Value> = loaded
            .store
            .documents(def)
            .into_iter()
            .map(|d| {
                let id = d
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                (id, crud::render(&st.plugins, kind, d))
            })
            .collect();
        if !rows.is_empty() {
            entities.insert(def.name.into(), Value::Object(rows));
        }
    }
    dbless.swap(&st.registry, loaded).await?;
    Ok(HttpResponse::Created().json(Value::Object(entities)))
}
