//! `portcullis migrations bootstrap | up | list | reset --yes`, as Kong's `kong migrations`.
//!
//! The SQL and the migrator live in the stores crate (`portcullis_stores::postgres::migrate`);
//! this module turns the settings into a connection and the results into what the command prints.

use portcullis_stores::postgres::{self, Migrator};
use portcullis_stores::StoreError;

use crate::config::{Database, Settings};
use crate::startup::pg_settings;

/// A `migrations` subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationCommand {
    /// Create the schema and every table of a fresh database.
    Bootstrap,
    /// Apply the pending migrations.
    Up,
    /// Show the applied and pending migrations.
    List,
    /// Drop everything Portcullis created; `confirmed` is the `--yes` flag.
    Reset {
        /// Whether `--yes` was given.
        confirmed: bool,
    },
}

/// Why a `migrations` command failed: one line for the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(String);

impl From<StoreError> for MigrationError {
    fn from(e: StoreError) -> Self {
        Self(match e {
            StoreError::Unavailable(line) | StoreError::Internal(line) => line,
            other => other.to_string(),
        })
    }
}

/// Runs one command; returns what to print on success.
///
/// # Errors
/// A memory database, an unreachable server, a failed migration, or `reset` without `--yes`.
pub async fn run(settings: &Settings, command: MigrationCommand) -> Result<String, MigrationError> {
    if settings.database != Database::Postgres {
        return Err(MigrationError(
            "migrations need database = postgres (set PORTCULLIS_DATABASE=postgres)".into(),
        ));
    }
    let pg = pg_settings(settings);
    let place = match &pg.schema {
        Some(schema) => format!("database '{}' schema '{schema}'", pg.dbname),
        None => format!("database '{}'", pg.dbname),
    };
    if command == (MigrationCommand::Reset { confirmed: false }) {
        return Err(MigrationError(format!(
            "reset drops every Portcullis table of {place}: run `portcullis migrations reset --yes` to confirm"
        )));
    }
    let pool = postgres::connect(&pg).await?;
    let migrator = Migrator::new(pool, pg.schema.clone())?;
    let mut out = String::new();
    match command {
        MigrationCommand::Bootstrap => {
            let status = migrator.status().await?;
            if !status.is_fresh() {
                out.push_str(&format!("{place} is already bootstrapped\n"));
                if !status.is_current() {
                    out.push_str(&format!(
                        "{} pending migration(s): run `portcullis migrations up`\n",
                        status.pending.len()
                    ));
                }
                return Ok(out);
            }
            out.push_str(&format!("bootstrapping {place}...\n"));
            for name in migrator.up().await? {
                out.push_str(&format!("migrating {name}... done\n"));
            }
            out.push_str("database is up-to-date\n");
        }
        MigrationCommand::Up => {
            let applied = migrator.up().await?;
            if applied.is_empty() {
                out.push_str("database is already up-to-date\n");
            }
            for name in &applied {
                out.push_str(&format!("migrating {name}... done\n"));
            }
            if !applied.is_empty() {
                out.push_str(&format!("{} migration(s) applied\n", applied.len()));
            }
        }
        MigrationCommand::List => {
            let status = migrator.status().await?;
            out.push_str(&format!("{place}\n"));
            out.push_str("executed migrations:\n");
            for name in &status.applied {
                out.push_str(&format!("  {name}\n"));
            }
            if status.pending.is_empty() {
                out.push_str("database is up-to-date\n");
            } else {
                out.push_str("pending migrations:\n");
                for name in &status.pending {
                    out.push_str(&format!("  {name}\n"));
                }
                out.push_str(if status.is_fresh() {
                    "run `portcullis migrations bootstrap`\n"
                } else {
                    "run `portcullis migrations up`\n"
                });
            }
        }
        MigrationCommand::Reset { .. } => {
            migrator.reset().await?;
            out.push_str(&format!("{place} reset: every Portcullis table dropped\n"));
        }
    }
    Ok(out)
}
