//! Declarative configuration to and from the Postgres store, as Kong's `kong config db_import` and
//! `kong config db_export` (`kong/cmd/config.lua`). A file validated exactly as DB-less mode and
//! `config parse` validate it ([`crate::admin::config::read_file`]) is written in one
//! transaction, every entity upserted by its id (given, or derived as DB-less mode derives it, so
//! importing a file twice writes the same rows); the database is exported with `GET /config`'s
//! renderer. Nodes serving the same database pick an import up through the tables' notify
//! triggers (migration 0003 and later), delivered when the transaction commits.

use std::path::Path;

use portcullis_stores::model::entities as defs;
use portcullis_stores::postgres::PgConfigStore;
use portcullis_stores::{Document, EntityDef, StoreError};
use serde_json::Value;

use crate::admin::declarative;
use crate::config::{Database, Settings};

/// Why `config db_import` or `config db_export` failed: one message for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The settings do not name a database (`database = memory` or `off`).
    #[error(
        "`portcullis config {command}` only works with database = postgres (set \
         PORTCULLIS_DATABASE=postgres); with database = off, load a declarative file with \
         declarative_config, SIGHUP or POST /config"
    )]
    NotPostgres {
        /// `db_import` or `db_export`.
        command: &'static str,
    },
    /// The settings are invalid, or the database cannot be reached or is not migrated (names
    /// the migration command to run).
    #[error("{0}")]
    Start(#[from] crate::startup::StartError),
    /// The file cannot be read or is invalid: every problem with its entity path and field, as
    /// `config parse` prints them.
    #[error("{0}")]
    Invalid(String),
    /// A row could not be written; the transaction was rolled back and nothing was written.
    #[error("import failed, nothing was written: {0}")]
    Write(String),
    /// The database failed while reading.
    #[error("export failed: {0}")]
    Read(String),
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Rows written (inserted or updated) per entity, in dependency order; entities without
    /// rows left out.
    pub counts: Vec<(&'static str, usize)>,
}

fn require_postgres(settings: &Settings, command: &'static str) -> Result<(), TransferError> {
    if settings.database == Database::Postgres {
        Ok(())
    } else {
        Err(TransferError::NotPostgres { command })
    }
}

/// `config db_import FILE`: validates the file, then writes every entity in one transaction.
///
/// # Errors
/// See [`TransferError`]; on any of them nothing was written.
pub async fn import(settings: &Settings, file: &Path) -> Result<Imported, TransferError> {
    require_postgres(settings, "db_import")?;
    let enabled = settings
        .enabled_plugins()
        .map_err(|e| TransferError::Start(e.into()))?;
    // The plugins a node of these settings runs: an instance of any other would stop it.
    let plugins = declarative::offline_plugins().only(&enabled);
    let loaded = crate::admin::config::read_file(file, &plugins)
        .await
        .map_err(|e| TransferError::Invalid(format!("{}: {e}", file.display())))?;
    let pool = crate::startup::open_migrated_pool(settings).await?;
    let mut rows: Vec<(&'static EntityDef, Document)> = Vec::new();
    let mut counts = Vec::new();
    // `ALL` lists parents before children, as the foreign keys need.
    for def in defs::ALL {
        let mut docs = loaded.store.documents(def);
        if docs.is_empty() {
            continue;
        }
        docs.sort_by(|a, b| id_text(a).cmp(id_text(b)));
        counts.push((def.name, docs.len()));
        rows.extend(docs.into_iter().map(|d| (def, d)));
    }
    PgConfigStore::new(pool)
        .upsert_all(&rows)
        .await
        .map_err(|(at, e)| TransferError::Write(write_failure(rows.get(at), e)))?;
    Ok(Imported { counts })
}

fn id_text(doc: &Document) -> &str {
    doc.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// One line naming the row that failed and why (no SQL, no secret: key values are names).
fn write_failure(row: Option<&(&'static EntityDef, Document)>, e: StoreError) -> String {
    let why = match e {
        StoreError::UniqueViolation { fields } => {
            let taken: Vec<String> = fields
                .iter()
                .map(|(k, v)| match v.as_str() {
                    // Stored digests and certificates are not shown.
                    Some(_) if k == "key_hash" || k == "cert_digest" => k.clone(),
                    Some(s) => format!("{k} '{s}'"),
                    None => format!("{k} {v}"),
                })
                .collect();
            format!(
                "uniqueness violation: {} already taken by another row in the database",
                taken.join(", ")
            )
        }
        StoreError::ForeignKeyMissing {
            field, references, ..
        } => format!("{field} references a {references} row that does not exist"),
        StoreError::InvalidValue { field, reason } => format!("{field}: {reason}"),
        StoreError::Unavailable(line) | StoreError::Internal(line) => line,
        other => other.to_string(),
    };
    match row {
        Some((def, doc)) => format!("{} {}: {why}", def.name, id_text(doc)),
        None => why,
    }
}

/// `config db_export`: the database as `GET /config` renders a configuration (Kong 3.0 YAML),
/// read as one consistent snapshot.
///
/// # Errors
/// See [`TransferError`].
pub async fn export(settings: &Settings) -> Result<String, TransferError> {
    require_postgres(settings, "db_export")?;
    let pool = crate::startup::open_migrated_pool(settings).await?;
    let tables = PgConfigStore::new(pool)
        .snapshot()
        .await
        .map_err(|e| TransferError::Read(store_line(e)))?;
    declarative::to_yaml(&declarative::export_tables(tables)).map_err(TransferError::Read)
}

fn store_line(e: StoreError) -> String {
    match e {
        StoreError::Unavailable(line) | StoreError::Internal(line) => line,
        other => other.to_string(),
    }
}
