//! The numbered SQL files of `migrations/`, embedded in the binary, and the migrator that applies
//! them (`portcullis migrations bootstrap | up | list | reset`).
//!
//! Every run holds a transaction-scoped advisory lock keyed by the schema, so two nodes running
//! `migrations up` at once take turns: the second finds nothing left to do. Each run is one
//! transaction (Postgres DDL is transactional), so a failed migration leaves nothing behind.

use deadpool_postgres::{GenericClient, Pool};

use super::{db_error, pool_error, valid_schema_name};
use crate::StoreError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number (the file's numeric prefix); applied in increasing order.
    pub version: i32,
    /// File name without `.sql`.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration this build knows, in order.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core",
        sql: include_str!("../../../migrations/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "0002_oauth2_tokens",
        sql: include_str!("../../../migrations/0002_oauth2_tokens.sql"),
    },
    Migration {
        version: 3,
        name: "0003_cluster_notify",
        sql: include_str!("../../../migrations/0003_cluster_notify.sql"),
    },
    Migration {
        version: 4,
        name: "0004_key_auth_acl",
        sql: include_str!("../../../migrations/0004_key_auth_acl.sql"),
    },
    Migration {
        version: 5,
        name: "0005_upstreams",
        sql: include_str!("../../../migrations/0005_upstreams.sql"),
    },
    Migration {
        version: 6,
        name: "0006_certificates",
        sql: include_str!("../../../migrations/0006_certificates.sql"),
    },
];

/// The tables the migrations create, dropped by `reset` (most dependent first).
const TABLES: &[&str] = &[
    "oauth2_rotated_refresh_tokens",
    "oauth2_used_codes",
    "oauth2_authorization_codes",
    "oauth2_tokens",
    "oauth2_credentials",
    "keyauth_credentials",
    "acls",
    "targets",
    "upstreams",
    "plugins",
    "routes",
    "consumers",
    "services",
    "snis",
    "certificates",
    "ca_certificates",
    "portcullis_migrations",
];

/// The functions the migrations create, dropped by `reset` (their triggers go with the tables).
const FUNCTIONS: &[&str] = &[
    "portcullis_notify_token()",
    "portcullis_notify_config()",
    "portcullis_channel(text, text)",
];

/// Where a database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Names of the applied migrations, in order.
    pub applied: Vec<String>,
    /// Names of the migrations still to apply, in order.
    pub pending: Vec<String>,
}

impl MigrationStatus {
    /// Whether no migration was ever applied (`migrations bootstrap` is the command to run).
    pub fn is_fresh(&self) -> bool {
        self.applied.is_empty()
    }

    /// Whether the schema is current (the gateway may serve).
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Applies, lists and resets the migrations inside one schema.
pub struct Migrator {
    pool: Pool,
    schema: Option<String>,
}

impl Migrator {
    /// A migrator on a pool from [`super::connect`]; `schema` is the same as the pool's.
    ///
    /// # Errors
    /// [`StoreError::Internal`] for an invalid schema name.
    pub fn new(pool: Pool, schema: Option<String>) -> Result<Self, StoreError> {
        if let Some(s) = &schema {
            if !valid_schema_name(s) {
                return Err(StoreError::Internal(format!(
                    "pg_schema: invalid schema name '{s}'"
                )));
            }
        }
        Ok(Self { pool, schema })
    }

    /// Which migrations are applied and which are pending.
    ///
    /// # Errors
    /// An unavailable database.
    pub async fn status(&self) -> Result<MigrationStatus, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let applied = applied_versions(&client).await?;
        Ok(split(&applied))
    }

    /// Applies every pending migration (creating the schema if absent); returns the names applied.
    ///
    /// # Errors
    /// An unavailable database, or a migration that fails (nothing of this run is kept).
    pub async fn up(&self) -> Result<Vec<String>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = self.locked_transaction(&mut client).await?;
        if let Some(schema) = &self.schema {
            // The name was validated: a plain identifier, safe to splice.
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path = {schema}"
            ))
            .await
            .map_err(db_error)?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS portcullis_migrations (\
                 version integer PRIMARY KEY, \
                 name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db_error)?;
        let applied = applied_versions(&tx).await?;
        let mut done = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            tx.batch_execute(m.sql).await.map_err(|e| {
                tracing::error!(migration = m.name, error = %e, "migration failed");
                db_error(e)
            })?;
            tx.execute(
                "INSERT INTO portcullis_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await
            .map_err(db_error)?;
            tracing::info!(migration = m.name, "migration applied");
            done.push(m.name.to_string());
        }
        tx.commit().await.map_err(db_error)?;
        Ok(done)
    }

    /// Drops everything the migrations created (the whole schema when `pg_schema` is set).
    ///
    /// # Errors
    /// An unavailable database.
    pub async fn reset(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = self.locked_transaction(&mut client).await?;
        let sql = match &self.schema {
            Some(schema) => format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            None => format!(
                "DROP TABLE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}",
                TABLES.join(", "),
                FUNCTIONS.join(", ")
            ),
        };
        tx.batch_execute(&sql).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    /// A transaction holding this schema's migration lock. Waiting for another node's run is
    /// expected, so it has no statement timeout.
    async fn locked_transaction<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'c>, StoreError> {
        let tx = client.transaction().await.map_err(db_error)?;
        tx.batch_execute(
            "SET LOCAL statement_timeout = 0; SET LOCAL client_min_messages = warning",
        )
        .await
        .map_err(db_error)?;
        let key = format!("portcullis_migrations:{}", self.schema_name());
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
            .await
            .map_err(db_error)?;
        Ok(tx)
    }

    fn schema_name(&self) -> &str {
        self.schema.as_deref().unwrap_or("")
    }
}

/// Versions recorded in `portcullis_migrations` (none when the table does not exist yet).
async fn applied_versions(client: &impl GenericClient) -> Result<Vec<i32>, StoreError> {
    let exists = client
        .query_one(
            "SELECT to_regclass('portcullis_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_error)?;
    let exists: bool = exists.try_get(0).map_err(db_error)?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version FROM portcullis_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(db_error))
        .collect()
}

fn split(applied: &[i32]) -> MigrationStatus {
    let (done, todo): (Vec<&Migration>, Vec<&Migration>) = MIGRATIONS
        .iter()
        .partition(|m| applied.contains(&m.version));
    MigrationStatus {
        applied: done.iter().map(|m| m.name.to_string()).collect(),
        pending: todo.iter().map(|m| m.name.to_string()).collect(),
    }
}
