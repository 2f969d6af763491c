//! [`PgTokenStore`]: issued tokens and authorization codes, keyed by SHA-256 digest (`bytea`).
//!
//! Single use is the database's job: a code is taken with `DELETE … RETURNING` (of two concurrent
//! takes exactly one gets the row) and a refresh token is redeemed under `SELECT … FOR UPDATE`,
//! each in one transaction together with its replay tombstone.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{check_text, db_error, pool_error};
use crate::model::{CodeRecord, RefreshOutcome, TokenFilter, TokenHash, TokenRecord};
use crate::observe::{unobserved, LookupObserver, LookupTier, RemoteTier};
use crate::{RefreshReplacement, StoreError, TokenStore};

/// How long a redeemed code or rotated refresh token is remembered for replay detection (as the
/// memory store).
const TOMBSTONE_SECONDS: i64 = 24 * 3600;

const TOKEN_COLS: &str = "id, credential_id, service_id, access_token_hash, refresh_token_hash, \
     token_type, expires_in, authenticated_userid, scope, created_at, expires_at, family_id, code_id";

const CODE_COLS: &str = "id, code_hash, credential_id, service_id, plugin_id, \
     authenticated_userid, scope, challenge, challenge_method, redirect_uri, created_at, expires_at";

/// A row is live while `expires_at` is unset or not yet passed (`TokenRecord::row_live_at`).
const LIVE: &str = "(expires_at IS NULL OR expires_at >= $2)";

/// Refuses text Postgres cannot store before it reaches the database.
fn check_token(t: &TokenRecord) -> Result<(), StoreError> {
    check_text("token_type", Some(&t.token_type))?;
    check_text("authenticated_userid", t.authenticated_userid.as_deref())?;
    check_text("scope", t.scope.as_deref())
}

fn check_code(c: &CodeRecord) -> Result<(), StoreError> {
    check_text("authenticated_userid", c.authenticated_userid.as_deref())?;
    check_text("scope", c.scope.as_deref())?;
    check_text("challenge", c.challenge.as_deref())?;
    check_text("challenge_method", c.challenge_method.as_deref())?;
    check_text("redirect_uri", c.redirect_uri.as_deref())
}

fn digest(bytes: Vec<u8>) -> Result<TokenHash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| StoreError::Internal("stored digest is not 32 bytes".into()))
}

fn token_from_row(row: &Row) -> Result<TokenRecord, StoreError> {
    let refresh: Option<Vec<u8>> = row.try_get(4).map_err(db_error)?;
    Ok(TokenRecord {
        id: row.try_get(0).map_err(db_error)?,
        credential_id: row.try_get(1).map_err(db_error)?,
        service_id: row.try_get(2).map_err(db_error)?,
        access_token_hash: digest(row.try_get(3).map_err(db_error)?)?,
        refresh_token_hash: refresh.map(digest).transpose()?,
        token_type: row.try_get(5).map_err(db_error)?,
        expires_in: row.try_get(6).map_err(db_error)?,
        authenticated_userid: row.try_get(7).map_err(db_error)?,
        scope: row.try_get(8).map_err(db_error)?,
        created_at: row.try_get(9).map_err(db_error)?,
        expires_at: row.try_get(10).map_err(db_error)?,
        family_id: row.try_get(11).map_err(db_error)?,
        code_id: row.try_get(12).map_err(db_error)?,
    })
}

fn code_from_row(row: &Row) -> Result<CodeRecord, StoreError> {
    Ok(CodeRecord {
        id: row.try_get(0).map_err(db_error)?,
        code_hash: digest(row.try_get(1).map_err(db_error)?)?,
        credential_id: row.try_get(2).map_err(db_error)?,
        service_id: row.try_get(3).map_err(db_error)?,
        plugin_id: row.try_get(4).map_err(db_error)?,
        authenticated_userid: row.try_get(5).map_err(db_error)?,
        scope: row.try_get(6).map_err(db_error)?,
        challenge: row.try_get(7).map_err(db_error)?,
        challenge_method: row.try_get(8).map_err(db_error)?,
        redirect_uri: row.try_get(9).map_err(db_error)?,
        created_at: row.try_get(10).map_err(db_error)?,
        expires_at: row.try_get(11).map_err(db_error)?,
    })
}

fn tokens_from_rows(rows: &[Row]) -> Result<Vec<TokenRecord>, StoreError> {
    rows.iter().map(token_from_row).collect()
}

async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(db_error)?;
    client.query(&stmt, params).await.map_err(db_error)
}

async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(db_error)?;
    client.execute(&stmt, params).await.map_err(db_error)
}

/// The digests of a token as the `bytea` parameters the statements take.
fn digests(t: &TokenRecord) -> (&[u8], Option<&[u8]>) {
    (
        t.access_token_hash.0.as_slice(),
        t.refresh_token_hash.as_ref().map(|h| h.0.as_slice()),
    )
}

/// Parameters `$1..$13` of the token INSERT and UPDATE, in `TOKEN_COLS` order.
fn token_params<'a>(
    t: &'a TokenRecord,
    access: &'a &'a [u8],
    refresh: &'a Option<&'a [u8]>,
) -> [&'a (dyn ToSql + Sync); 13] {
    [
        &t.id,
        &t.credential_id,
        &t.service_id,
        access,
        refresh,
        &t.token_type,
        &t.expires_in,
        &t.authenticated_userid,
        &t.scope,
        &t.created_at,
        &t.expires_at,
        &t.family_id,
        &t.code_id,
    ]
}

async fn insert_token_with(client: &impl GenericClient, t: &TokenRecord) -> Result<(), StoreError> {
    check_token(t)?;
    let sql = format!(
        "INSERT INTO oauth2_tokens ({TOKEN_COLS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    let (access, refresh) = digests(t);
    execute(client, &sql, &token_params(t, &access, &refresh))
        .await
        .map(|_| ())
}

/// Postgres [`TokenStore`].
#[derive(Clone)]
pub struct PgTokenStore {
    pool: Pool,
    observer: Arc<dyn LookupObserver>,
}

impl PgTokenStore {
    /// A store on a pool from [`super::connect`]; the schema must be migrated.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            observer: unobserved(),
        }
    }

    /// The store, telling `observer` about each lookup by access-token digest (answered, and
    /// how long the query took).
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn LookupObserver>) -> Self {
        self.observer = observer;
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn delete_tokens(
        &self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("DELETE FROM oauth2_tokens WHERE {condition} RETURNING {TOKEN_COLS}");
        let client = self.client().await?;
        let rows = query(&client, &sql, params).await?;
        let mut tokens = tokens_from_rows(&rows)?;
        tokens.sort_by_key(|t| t.id);
        Ok(tokens)
    }
}

impl PgTokenStore {
    /// The live token whose `column` (a unique key: id or a digest) equals `value`.
    async fn live_token_where(
        &self,
        column: &'static str,
        value: &(dyn ToSql + Sync),
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLS} FROM oauth2_tokens WHERE {column} = $1 AND {LIVE}");
        let client = self.client().await?;
        let rows = query(&client, &sql, &[value, &now]).await?;
        rows.first().map(token_from_row).transpose()
    }
}

#[async_trait]
impl TokenStore for PgTokenStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        insert_token_with(&client, &token).await
    }

    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let started = Instant::now();
        let found = self
            .live_token_where("access_token_hash", &hash.0.as_slice(), now)
            .await;
        self.observer
            .waited(RemoteTier::Postgres, started.elapsed());
        if found.is_ok() {
            self.observer.answered(LookupTier::Postgres);
        }
        found
    }

    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.live_token_where("refresh_token_hash", &hash.0.as_slice(), now)
            .await
    }

    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.live_token_where("id", &id, now).await
    }

    async fn update_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        check_token(&t)?;
        let sql = "UPDATE oauth2_tokens SET credential_id = $2, service_id = $3, \
                   access_token_hash = $4, refresh_token_hash = $5, token_type = $6, \
                   expires_in = $7, authenticated_userid = $8, scope = $9, created_at = $10, \
                   expires_at = $11, family_id = $12, code_id = $13 WHERE id = $1";
        let (access, refresh) = digests(&t);
        let client = self.client().await?;
        let n = execute(&client, sql, &token_params(&t, &access, &refresh)).await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.delete_tokens("id = $1", &[&id]).await?.pop())
    }

    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let hash = refresh.0.as_slice();
        // The row lock makes concurrent redemptions of one refresh token take turns; the loser
        // re-reads after the winner commits and finds the row gone (rotation).
        let sql = format!(
            "SELECT {TOKEN_COLS} FROM oauth2_tokens WHERE refresh_token_hash = $1 AND {LIVE} \
             FOR UPDATE"
        );
        let rows = query(&tx, &sql, &[&hash, &now]).await?;
        let Some(old) = rows.first().map(token_from_row).transpose()? else {
            let rows = query(
                &tx,
                "SELECT family_id, rotated_at FROM oauth2_rotated_refresh_tokens \
                 WHERE refresh_token_hash = $1",
                &[&hash],
            )
            .await?;
            let outcome = match rows.first() {
                Some(row) => RefreshOutcome::Reused {
                    family_id: row.try_get(0).map_err(db_error)?,
                    rotated_at: row.try_get(1).map_err(db_error)?,
                },
                None => RefreshOutcome::NotFound,
            };
            end_read_only(tx).await?;
            return Ok(outcome);
        };
        let outcome = match replacement {
            RefreshReplacement::Rotate(new) => {
                execute(&tx, "DELETE FROM oauth2_tokens WHERE id = $1", &[&old.id]).await?;
                execute(
                    &tx,
                    "INSERT INTO oauth2_rotated_refresh_tokens \
                     (refresh_token_hash, family_id, rotated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (refresh_token_hash) \
                     DO UPDATE SET family_id = EXCLUDED.family_id, rotated_at = EXCLUDED.rotated_at",
                    &[&hash, &old.family_id, &now],
                )
                .await?;
                insert_token_with(&tx, &new).await?;
                RefreshOutcome::Redeemed(new)
            }
            RefreshReplacement::Renew {
                access_token_hash,
                expires_in,
                expires_at,
            } => {
                let renewed = TokenRecord {
                    access_token_hash,
                    expires_in,
                    expires_at,
                    created_at: now,
                    ..old
                };
                execute(
                    &tx,
                    "UPDATE oauth2_tokens SET access_token_hash = $2, expires_in = $3, \
                     expires_at = $4, created_at = $5 WHERE id = $1",
                    &[
                        &renewed.id,
                        &renewed.access_token_hash.0.as_slice(),
                        &renewed.expires_in,
                        &renewed.expires_at,
                        &renewed.created_at,
                    ],
                )
                .await?;
                RefreshOutcome::Redeemed(Box::new(renewed))
            }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        self.delete_tokens("family_id = $1", &[&family]).await
    }

    async fn insert_code(&self, c: CodeRecord) -> Result<(), StoreError> {
        check_code(&c)?;
        let sql = format!(
            "INSERT INTO oauth2_authorization_codes ({CODE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let client = self.client().await?;
        execute(
            &client,
            &sql,
            &[
                &c.id,
                &c.code_hash.0.as_slice(),
                &c.credential_id,
                &c.service_id,
                &c.plugin_id,
                &c.authenticated_userid,
                &c.scope,
                &c.challenge,
                &c.challenge_method,
                &c.redirect_uri,
                &c.created_at,
                &c.expires_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn take_code(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let bytes = hash.0.as_slice();
        let used = query(
            &tx,
            "SELECT code_id FROM oauth2_used_codes WHERE code_hash = $1",
            &[&bytes],
        )
        .await?;
        if let Some(row) = used.first() {
            let code_id = row.try_get(0).map_err(db_error)?;
            end_read_only(tx).await?;
            return Err(StoreError::CodeReplayed { code_id });
        }
        // Of two concurrent takes, the second DELETE waits on the first's row lock and then
        // finds nothing: exactly one caller gets the code.
        let sql = format!(
            "DELETE FROM oauth2_authorization_codes WHERE code_hash = $1 RETURNING {CODE_COLS}"
        );
        let rows = query(&tx, &sql, &[&bytes]).await?;
        let Some(code) = rows.first().map(code_from_row).transpose()? else {
            // Taken meanwhile by a concurrent caller: that is a replay too.
            let used = query(
                &tx,
                "SELECT code_id FROM oauth2_used_codes WHERE code_hash = $1",
                &[&bytes],
            )
            .await?;
            let replayed = used
                .first()
                .map(|row| row.try_get(0))
                .transpose()
                .map_err(db_error)?;
            end_read_only(tx).await?;
            return match replayed {
                Some(code_id) => Err(StoreError::CodeReplayed { code_id }),
                None => Ok(None),
            };
        };
        if code.expires_at < now {
            // Expired: gone, and no tombstone (as the memory store).
            tx.commit().await.map_err(db_error)?;
            return Ok(None);
        }
        execute(
            &tx,
            "INSERT INTO oauth2_used_codes (code_hash, code_id, used_at) VALUES ($1, $2, $3) \
             ON CONFLICT (code_hash) DO NOTHING",
            &[&bytes, &code.id, &now],
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(code))
    }

    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        self.delete_tokens(
            "code_id = $1 OR family_id IN \
             (SELECT family_id FROM oauth2_tokens WHERE code_id = $1)",
            &[&code_id],
        )
        .await
    }

    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let credentials = credentials.to_vec();
        let services = services.to_vec();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        execute(
            &tx,
            "DELETE FROM oauth2_authorization_codes \
             WHERE credential_id = ANY($1) OR service_id = ANY($2)",
            &[&credentials, &services],
        )
        .await?;
        let sql = format!(
            "DELETE FROM oauth2_tokens WHERE credential_id = ANY($1) OR service_id = ANY($2) \
             RETURNING {TOKEN_COLS}"
        );
        let rows = query(&tx, &sql, &[&credentials, &services]).await?;
        tx.commit().await.map_err(db_error)?;
        let mut tokens = tokens_from_rows(&rows)?;
        tokens.sort_by_key(|t| t.id);
        Ok(tokens)
    }

    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: i64,
    ) -> Result<(Vec<TokenRecord>, Option<String>), StoreError> {
        let after = filter
            .offset
            .as_deref()
            .map(|o| Uuid::parse_str(o).map_err(|_| StoreError::InvalidOffset))
            .transpose()?;
        let size = filter.size.max(1);
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        // One statement for every filter combination: NULL parameters match everything.
        let sql = format!(
            "SELECT {TOKEN_COLS} FROM oauth2_tokens WHERE {LIVE} \
             AND ($1::uuid IS NULL OR id > $1) \
             AND ($3::uuid IS NULL OR credential_id = $3) \
             AND ($4::uuid IS NULL OR service_id = $4) \
             ORDER BY id LIMIT $5"
        );
        let client = self.client().await?;
        let rows = query(
            &client,
            &sql,
            &[
                &after,
                &now,
                &filter.credential_id,
                &filter.service_id,
                &limit,
            ],
        )
        .await?;
        let mut data = tokens_from_rows(&rows)?;
        let next = if data.len() > size {
            data.truncate(size);
            data.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok((data, next))
    }

    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let horizon = now - TOMBSTONE_SECONDS;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // One node of a cluster sweeps at a time: the others find the lock taken and do nothing
        // (the lock is keyed by schema and released with the transaction, even if the node dies).
        let locked = query(
            &tx,
            "SELECT pg_try_advisory_xact_lock(hashtext('portcullis_sweep:' || current_schema()))",
            &[],
        )
        .await?;
        let locked: bool = match locked.first() {
            Some(row) => row.try_get(0).map_err(db_error)?,
            None => false,
        };
        if !locked {
            tracing::debug!("another node is sweeping; skipped");
            end_read_only(tx).await?;
            return Ok(0);
        }
        // Each sweep walks its expiry index and removes at most `batch` rows per table:
        // expired tokens and codes, and replay tombstones past their horizon.
        let swept = [
            ("oauth2_tokens", "id", "expires_at", now),
            ("oauth2_authorization_codes", "id", "expires_at", now),
            (
                "oauth2_rotated_refresh_tokens",
                "refresh_token_hash",
                "rotated_at",
                horizon,
            ),
            ("oauth2_used_codes", "code_hash", "used_at", horizon),
        ];
        let mut removed = 0;
        for (table, key, at, bound) in swept {
            let sql = format!(
                "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} \
                 WHERE {at} < $1 ORDER BY {at} LIMIT $2)"
            );
            removed += execute(&tx, &sql, &[&bound, &batch]).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }
}

/// Ends a transaction that changed nothing, before its connection goes back to the pool. Dropping
/// it would only queue the `ROLLBACK`: the row locks it took stay held until the connection's task
/// next runs, and a caller that then blocks its runtime (dropping a test schema, say) waits forever.
async fn end_read_only(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.rollback().await.map_err(db_error)
}
