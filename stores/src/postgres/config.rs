//! [`PgConfigStore`]: configuration documents in tables with real columns.
//!
//! Each entity has a column list (`Column`); a document maps onto it generically: a field whose
//! value a column holds exactly goes into that column, a field absent from the document is listed
//! in `missing`, and anything a column cannot hold exactly (unknown fields, non-canonical ids) is
//! kept in the `extra` jsonb column. Reading reverses this, so the document returned equals the
//! one stored, null fields included, while names, foreign keys and tags stay queryable columns
//! under real constraints.

use std::collections::VecDeque;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{classify, db_error, has_nul, pool_error, DbFailure, NUL_REASON};
use crate::memory::{doc_id, unique_key_value};
use crate::model::{entities, Document, EntityDef, ListFilter, OnDelete, Page};
use crate::{ConfigStore, StoreError};

/// The SQL type a document field is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `uuid`, a JSON string.
    Uuid,
    /// `bigint`, a JSON integer.
    Int,
    /// `double precision`, any JSON number (millisecond timestamps).
    Float,
    /// `text`, a JSON string.
    Text,
    /// `boolean`.
    Bool,
    /// `text[]`, a JSON array of strings.
    TextArray,
    /// `jsonb`, any JSON value (records, maps, arrays of objects).
    Json,
    /// `uuid` foreign key, a JSON `{"id": "…"}`.
    Foreign,
}

/// One column of an entity table.
#[derive(Debug)]
struct Column {
    field: &'static str,
    column: &'static str,
    kind: Kind,
}

const fn col(field: &'static str, kind: Kind) -> Column {
    Column {
        field,
        column: field,
        kind,
    }
}

const fn fk(field: &'static str, column: &'static str) -> Column {
    Column {
        field,
        column,
        kind: Kind::Foreign,
    }
}

const SERVICES: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("name", Kind::Text),
    col("protocol", Kind::Text),
    col("host", Kind::Text),
    col("port", Kind::Int),
    col("path", Kind::Text),
    col("retries", Kind::Int),
    col("connect_timeout", Kind::Int),
    col("write_timeout", Kind::Int),
    col("read_timeout", Kind::Int),
    col("enabled", Kind::Bool),
    fk("client_certificate", "client_certificate_id"),
    col("tls_verify", Kind::Bool),
    col("tls_verify_depth", Kind::Int),
    col("ca_certificates", Kind::TextArray),
];

const ROUTES: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("name", Kind::Text),
    col("protocols", Kind::TextArray),
    col("methods", Kind::TextArray),
    col("hosts", Kind::TextArray),
    col("paths", Kind::TextArray),
    col("headers", Kind::Json),
    col("snis", Kind::TextArray),
    col("sources", Kind::Json),
    col("destinations", Kind::Json),
    col("https_redirect_status_code", Kind::Int),
    col("regex_priority", Kind::Int),
    col("strip_path", Kind::Bool),
    col("path_handling", Kind::Text),
    col("preserve_host", Kind::Bool),
    col("request_buffering", Kind::Bool),
    col("response_buffering", Kind::Bool),
    fk("service", "service_id"),
];

const CONSUMERS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("username", Kind::Text),
    col("custom_id", Kind::Text),
];

const PLUGINS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("name", Kind::Text),
    col("instance_name", Kind::Text),
    col("config", Kind::Json),
    col("protocols", Kind::TextArray),
    col("enabled", Kind::Bool),
    fk("service", "service_id"),
    fk("route", "route_id"),
    fk("consumer", "consumer_id"),
];

const OAUTH2_CREDENTIALS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    fk("consumer", "consumer_id"),
    col("name", Kind::Text),
    col("client_id", Kind::Text),
    col("client_secret", Kind::Text),
    col("hash_secret", Kind::Bool),
    col("redirect_uris", Kind::TextArray),
    col("client_type", Kind::Text),
];

const KEYAUTH_CREDENTIALS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("tags", Kind::TextArray),
    fk("consumer", "consumer_id"),
    col("key_hash", Kind::Text),
];

const ACLS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("tags", Kind::TextArray),
    fk("consumer", "consumer_id"),
    // `group` is an SQL keyword.
    Column {
        field: "group",
        column: "group_name",
        kind: Kind::Text,
    },
];

const UPSTREAMS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("name", Kind::Text),
    col("algorithm", Kind::Text),
    col("hash_on", Kind::Text),
    col("hash_fallback", Kind::Text),
    col("hash_on_header", Kind::Text),
    col("hash_fallback_header", Kind::Text),
    col("hash_on_cookie", Kind::Text),
    col("hash_on_cookie_path", Kind::Text),
    col("hash_on_query_arg", Kind::Text),
    col("hash_fallback_query_arg", Kind::Text),
    col("hash_on_uri_capture", Kind::Text),
    col("hash_fallback_uri_capture", Kind::Text),
    col("slots", Kind::Int),
    col("healthchecks", Kind::Json),
    col("host_header", Kind::Text),
    fk("client_certificate", "client_certificate_id"),
    col("use_srv_name", Kind::Bool),
];

const TARGETS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Float),
    col("updated_at", Kind::Float),
    col("tags", Kind::TextArray),
    fk("upstream", "upstream_id"),
    col("target", Kind::Text),
    col("weight", Kind::Int),
];

const CERTIFICATES: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("cert", Kind::Text),
    col("key", Kind::Text),
    col("cert_alt", Kind::Text),
    col("key_alt", Kind::Text),
];

const SNIS: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("name", Kind::Text),
    fk("certificate", "certificate_id"),
];

const CA_CERTIFICATES: &[Column] = &[
    col("id", Kind::Uuid),
    col("created_at", Kind::Int),
    col("updated_at", Kind::Int),
    col("tags", Kind::TextArray),
    col("cert", Kind::Text),
    col("cert_digest", Kind::Text),
];

/// The columns of an entity's table (its name is `def.name`).
fn columns(def: &EntityDef) -> Result<&'static [Column], StoreError> {
    Ok(match def.name {
        "services" => SERVICES,
        "routes" => ROUTES,
        "consumers" => CONSUMERS,
        "plugins" => PLUGINS,
        "oauth2_credentials" => OAUTH2_CREDENTIALS,
        "keyauth_credentials" => KEYAUTH_CREDENTIALS,
        "acls" => ACLS,
        "upstreams" => UPSTREAMS,
        "targets" => TARGETS,
        "certificates" => CERTIFICATES,
        "snis" => SNIS,
        "ca_certificates" => CA_CERTIFICATES,
        other => return Err(StoreError::Internal(format!("no table for entity {other}"))),
    })
}

fn column_of(def: &EntityDef, field: &str) -> Result<&'static Column, StoreError> {
    columns(def)?
        .iter()
        .find(|c| c.field == field)
        .ok_or_else(|| StoreError::Internal(format!("{}.{field} has no column", def.name)))
}

/// A column value on its way to or from the database.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Uuid(Option<Uuid>),
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bool(Option<bool>),
    TextArray(Option<Vec<String>>),
    Json(Option<Value>),
}

impl Cell {
    fn null(kind: Kind) -> Self {
        match kind {
            Kind::Uuid | Kind::Foreign => Self::Uuid(None),
            Kind::Int => Self::Int(None),
            Kind::Float => Self::Float(None),
            Kind::Text => Self::Text(None),
            Kind::Bool => Self::Bool(None),
            Kind::TextArray => Self::TextArray(None),
            Kind::Json => Self::Json(None),
        }
    }

    /// The column form of a non-null JSON value, if the column type can hold it at all.
    fn from_json(kind: Kind, v: &Value) -> Option<Self> {
        Some(match kind {
            Kind::Uuid => Self::Uuid(Some(Uuid::parse_str(v.as_str()?).ok()?)),
            Kind::Foreign => Self::Uuid(Some(Uuid::parse_str(v.get("id")?.as_str()?).ok()?)),
            Kind::Int => Self::Int(Some(v.as_i64()?)),
            Kind::Float => Self::Float(Some(v.as_f64()?)),
            Kind::Text => Self::Text(Some(v.as_str()?.to_string())),
            Kind::Bool => Self::Bool(Some(v.as_bool()?)),
            Kind::TextArray => Self::TextArray(Some(
                v.as_array()?
                    .iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()?,
            )),
            Kind::Json => Self::Json(Some(v.clone())),
        })
    }

    /// The JSON form of a column value (NULL → `null`).
    fn to_json(&self, kind: Kind) -> Value {
        match self {
            Self::Uuid(Some(u)) if kind == Kind::Foreign => {
                let mut o = Map::new();
                o.insert("id".into(), Value::String(u.to_string()));
                Value::Object(o)
            }
            Self::Uuid(Some(u)) => Value::String(u.to_string()),
            Self::Int(Some(i)) => Value::from(*i),
            Self::Float(Some(f)) => Value::from(*f),
            Self::Text(Some(s)) => Value::String(s.clone()),
            Self::Bool(Some(b)) => Value::Bool(*b),
            Self::TextArray(Some(a)) => {
                Value::Array(a.iter().cloned().map(Value::String).collect())
            }
            Self::Json(Some(v)) => v.clone(),
            _ => Value::Null,
        }
    }

    fn read(row: &Row, idx: usize, kind: Kind) -> Result<Self, tokio_postgres::Error> {
        Ok(match kind {
            Kind::Uuid | Kind::Foreign => Self::Uuid(row.try_get(idx)?),
            Kind::Int => Self::Int(row.try_get(idx)?),
            Kind::Float => Self::Float(row.try_get(idx)?),
            Kind::Text => Self::Text(row.try_get(idx)?),
            Kind::Bool => Self::Bool(row.try_get(idx)?),
            Kind::TextArray => Self::TextArray(row.try_get(idx)?),
            Kind::Json => Self::Json(row.try_get(idx)?),
        })
    }

    fn into_param(self) -> Box<dyn ToSql + Sync + Send> {
        match self {
            Self::Uuid(v) => Box::new(v),
            Self::Int(v) => Box::new(v),
            Self::Float(v) => Box::new(v),
            Self::Text(v) => Box::new(v),
            Self::Bool(v) => Box::new(v),
            Self::TextArray(v) => Box::new(v),
            Self::Json(v) => Box::new(v),
        }
    }
}

/// Refuses a document Postgres cannot store (a NUL character anywhere), naming the field.
fn check_storable(doc: &Document) -> Result<(), StoreError> {
    match doc.iter().find(|(k, v)| k.contains('\0') || has_nul(v)) {
        Some((k, _)) => Err(StoreError::InvalidValue {
            field: k.replace('\0', ""),
            reason: NUL_REASON,
        }),
        None => Ok(()),
    }
}

/// A document split into column parameters (in column order), `missing` and `extra`.
fn encode(cols: &[Column], doc: &Document) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let mut params = Vec::with_capacity(cols.len() + 2);
    let mut missing: Vec<String> = Vec::new();
    let mut extra = Map::new();
    for c in cols {
        let cell = match doc.get(c.field) {
            None => {
                missing.push(c.field.to_string());
                Cell::null(c.kind)
            }
            Some(Value::Null) => Cell::null(c.kind),
            Some(v) => match Cell::from_json(c.kind, v) {
                Some(cell) => {
                    if cell.to_json(c.kind) != *v {
                        extra.insert(c.field.to_string(), v.clone());
                    }
                    cell
                }
                None => {
                    extra.insert(c.field.to_string(), v.clone());
                    Cell::null(c.kind)
                }
            },
        };
        params.push(cell.into_param());
    }
    for (k, v) in doc {
        if !cols.iter().any(|c| c.field == k) {
            extra.insert(k.clone(), v.clone());
        }
    }
    params.push(Box::new(missing));
    params.push(Box::new(Value::Object(extra)));
    params
}

/// Rebuilds the document from a row selected with [`select_list`].
fn decode(cols: &[Column], row: &Row) -> Result<Document, StoreError> {
    let n = cols.len();
    let missing: Vec<String> = row.try_get(n).map_err(db_error)?;
    let extra: Value = row.try_get(n + 1).map_err(db_error)?;
    let mut doc = Map::new();
    for (i, c) in cols.iter().enumerate() {
        if missing.iter().any(|m| m == c.field) {
            continue;
        }
        let cell = Cell::read(row, i, c.kind).map_err(db_error)?;
        doc.insert(c.field.to_string(), cell.to_json(c.kind));
    }
    if let Value::Object(extra) = extra {
        doc.extend(extra);
    }
    Ok(doc)
}

fn select_list(cols: &[Column]) -> String {
    let mut s: Vec<&str> = cols.iter().map(|c| c.column).collect();
    s.push("missing");
    s.push("extra");
    s.join(", ")
}

fn as_params(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Name of the constraint (or unique index) enforcing a unique key, as in the migrations.
fn unique_constraint(def: &EntityDef, key: &[&str]) -> String {
    format!("{}_{}_key", def.name, key.join("_"))
}

/// Name of the constraint enforcing a foreign key, as in the migrations.
fn foreign_constraint(def: &EntityDef, field: &str) -> String {
    format!("{}_{field}_fk", def.name)
}

/// Maps a failed write of `doc` to the store error, from the SQLSTATE and constraint name.
fn write_error(def: &'static EntityDef, doc: &Document, e: tokio_postgres::Error) -> StoreError {
    match classify(e) {
        DbFailure::Unique(constraint) => {
            let mut fields = Map::new();
            if constraint == format!("{}_pkey", def.name) {
                if let Some(id) = doc.get("id") {
                    fields.insert("id".into(), id.clone());
                }
                return StoreError::UniqueViolation { fields };
            }
            if let Some(key) = def
                .unique
                .iter()
                .find(|k| unique_constraint(def, k) == constraint)
            {
                if let Some(values) = unique_key_value(doc, key) {
                    for (k, v) in key.iter().zip(values) {
                        if !v.is_null() {
                            fields.insert((*k).to_string(), v);
                        }
                    }
                }
            }
            StoreError::UniqueViolation { fields }
        }
        DbFailure::ForeignKey(constraint) => {
            match def
                .foreign_keys
                .iter()
                .find(|f| foreign_constraint(def, f.field) == constraint)
            {
                Some(f) => StoreError::ForeignKeyMissing {
                    field: f.field,
                    references: f.references,
                    id: crate::memory::foreign_id(doc, f.field).unwrap_or_default(),
                },
                None => StoreError::Internal(format!("unknown foreign key {constraint}")),
            }
        }
        DbFailure::Other(e) => e,
    }
}

/// Maps a failed delete: a restricting reference becomes [`StoreError::ReferencedBy`].
fn delete_error(def: &'static EntityDef, e: tokio_postgres::Error) -> StoreError {
    match classify(e) {
        DbFailure::ForeignKey(constraint) => entities::ALL
            .iter()
            .find_map(|child| {
                child
                    .foreign_keys
                    .iter()
                    .any(|f| foreign_constraint(child, f.field) == constraint)
                    .then_some(StoreError::ReferencedBy {
                        entity: def.name,
                        referenced_by: child.name,
                    })
            })
            .unwrap_or_else(|| StoreError::Internal(format!("unknown foreign key {constraint}"))),
        DbFailure::Unique(c) => StoreError::Internal(format!("unique {c} on delete")),
        DbFailure::Other(e) => e,
    }
}

/// Postgres [`ConfigStore`]: one table per entity, constraints enforced by the database.
#[derive(Clone)]
pub struct PgConfigStore {
    pool: Pool,
}

impl PgConfigStore {
    /// A store on a pool from [`super::connect`]; the schema must be migrated.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Writes every document in one transaction, each upserted by its id, in the order given
    /// (parents before children): `config db_import` needs all of a file or nothing of it. The
    /// tables' triggers announce each row to the cluster when, and only if, the transaction
    /// commits.
    ///
    /// # Errors
    /// The position in `docs` of the document that failed with its store error (unique or
    /// foreign-key violation, unstorable value); the transaction is rolled back. An unavailable
    /// database is reported at position `docs.len()` when it fails outside any one document.
    pub async fn upsert_all(
        &self,
        docs: &[(&'static EntityDef, Document)],
    ) -> Result<(), (usize, StoreError)> {
        let whole = |e: StoreError| (docs.len(), e);
        let mut client = self.client().await.map_err(whole)?;
        let tx = client.transaction().await.map_err(|e| whole(db_error(e)))?;
        for (i, (def, doc)) in docs.iter().enumerate() {
            let at = |e: StoreError| (i, e);
            doc_id(doc).map_err(at)?;
            check_storable(doc).map_err(at)?;
            let cols = columns(def).map_err(at)?;
            let stmt = tx
                .prepare_cached(&upsert_sql(def, cols))
                .await
                .map_err(|e| at(db_error(e)))?;
            let params = encode(cols, doc);
            tx.execute(&stmt, &as_params(&params))
                .await
                .map_err(|e| at(write_error(def, doc, e)))?;
        }
        tx.commit().await.map_err(|e| whole(db_error(e)))
    }

    /// Every document of every entity (in [`entities::ALL`]'s order) read in one repeatable-read,
    /// read-only transaction: `config db_export` sees one moment of a database other nodes keep
    /// writing, so no exported reference names a row the export lacks.
    ///
    /// # Errors
    /// An unavailable database.
    pub async fn snapshot(&self) -> Result<Vec<(&'static EntityDef, Vec<Document>)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(entities::ALL.len());
        for def in entities::ALL {
            let cols = columns(def)?;
            let sql = format!("SELECT {} FROM {} ORDER BY id", select_list(cols), def.name);
            out.push((def, query_docs(&tx, cols, &sql, &[]).await?));
        }
        tx.commit().await.map_err(db_error)?;
        Ok(out)
    }
}

/// `INSERT … ON CONFLICT (id) DO UPDATE`: the row with the document's id becomes the document.
fn upsert_sql(def: &EntityDef, cols: &[Column]) -> String {
    let placeholders: Vec<String> = (1..=cols.len() + 2).map(|i| format!("${i}")).collect();
    let mut sets: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|c| format!("{0} = EXCLUDED.{0}", c.column))
        .collect();
    sets.push("missing = EXCLUDED.missing".into());
    sets.push("extra = EXCLUDED.extra".into());
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        def.name,
        select_list(cols),
        placeholders.join(", "),
        sets.join(", ")
    )
}

async fn query_docs(
    client: &impl GenericClient,
    cols: &[Column],
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Document>, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(db_error)?;
    let rows = client.query(&stmt, params).await.map_err(db_error)?;
    rows.iter().map(|r| decode(cols, r)).collect()
}

#[async_trait]
impl ConfigStore for PgConfigStore {
    async fn insert(&self, def: &'static EntityDef, doc: Document) -> Result<Document, StoreError> {
        doc_id(&doc)?;
        check_storable(&doc)?;
        let cols = columns(def)?;
        let names = select_list(cols);
        let placeholders: Vec<String> = (1..=cols.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({names}) VALUES ({})",
            def.name,
            placeholders.join(", ")
        );
        let params = encode(cols, &doc);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
        client
            .execute(&stmt, &as_params(&params))
            .await
            .map_err(|e| write_error(def, &doc, e))?;
        Ok(doc)
    }

    async fn update(&self, def: &'static EntityDef, doc: Document) -> Result<Document, StoreError> {
        let id = doc_id(&doc)?;
        check_storable(&doc)?;
        let cols = columns(def)?;
        let mut sets: Vec<String> = cols
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, c)| format!("{} = ${}", c.column, i + 1))
            .collect();
        sets.push(format!("missing = ${}", cols.len() + 1));
        sets.push(format!("extra = ${}", cols.len() + 2));
        let sql = format!("UPDATE {} SET {} WHERE id = $1", def.name, sets.join(", "));
        let mut params = encode(cols, &doc);
        params[0] = Box::new(id);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
        let n = client
            .execute(&stmt, &as_params(&params))
            .await
            .map_err(|e| write_error(def, &doc, e))?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(doc)
    }

    async fn delete(
        &self,
        def: &'static EntityDef,
        id: Uuid,
    ) -> Result<Vec<(&'static str, Uuid)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // Lock the row: a concurrent insert referencing it waits for us (its foreign-key check
        // needs a share lock), so the cascade set collected below is exactly what goes.
        let lock = tx
            .prepare_cached(&format!(
                "SELECT id FROM {} WHERE id = $1 FOR UPDATE",
                def.name
            ))
            .await
            .map_err(db_error)?;
        if tx
            .query_opt(&lock, &[&id])
            .await
            .map_err(db_error)?
            .is_none()
        {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Vec::new());
        }
        let mut doomed = vec![(def.name, id)];
        let mut queue = VecDeque::from([(def, id)]);
        while let Some((parent, pid)) = queue.pop_front() {
            for child in entities::ALL {
                for f in child
                    .foreign_keys
                    .iter()
                    .filter(|f| f.references == parent.name)
                {
                    let column = column_of(child, f.field)?.column;
                    let sql = format!(
                        "SELECT id FROM {} WHERE {column} = $1 ORDER BY id FOR UPDATE",
                        child.name
                    );
                    let stmt = tx.prepare_cached(&sql).await.map_err(db_error)?;
                    let rows = tx.query(&stmt, &[&pid]).await.map_err(db_error)?;
                    if rows.is_empty() {
                        continue;
                    }
                    if f.on_delete == OnDelete::Restrict {
                        return Err(StoreError::ReferencedBy {
                            entity: parent.name,
                            referenced_by: child.name,
                        });
                    }
                    for row in rows {
                        let cid: Uuid = row.try_get(0).map_err(db_error)?;
                        if !doomed.contains(&(child.name, cid)) {
                            doomed.push((child.name, cid));
                            queue.push_back((child, cid));
                        }
                    }
                }
            }
        }
        // The database applies the cascades itself (ON DELETE CASCADE); what it removes is the
        // set collected above.
        let stmt = tx
            .prepare_cached(&format!("DELETE FROM {} WHERE id = $1", def.name))
            .await
            .map_err(db_error)?;
        tx.execute(&stmt, &[&id])
            .await
            .map_err(|e| delete_error(def, e))?;
        tx.commit().await.map_err(db_error)?;
        Ok(doomed)
    }

    async fn get(&self, def: &'static EntityDef, id: Uuid) -> Result<Option<Document>, StoreError> {
        let cols = columns(def)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1",
            select_list(cols),
            def.name
        );
        let client = self.client().await?;
        Ok(query_docs(&client, cols, &sql, &[&id]).await?.pop())
    }

    async fn get_by(
        &self,
        def: &'static EntityDef,
        field: &str,
        value: &str,
    ) -> Result<Option<Document>, StoreError> {
        if value.contains('\0') {
            // Nothing stored can hold a NUL character, so nothing matches.
            return Ok(None);
        }
        let cols = columns(def)?;
        let client = self.client().await?;
        let list = select_list(cols);
        let found = match cols.iter().find(|c| c.field == field) {
            Some(c) if c.kind == Kind::Text => {
                let sql = format!(
                    "SELECT {list} FROM {} WHERE {} = $1 ORDER BY id LIMIT 1",
                    def.name, c.column
                );
                query_docs(&client, cols, &sql, &[&value]).await?
            }
            // Not a text column: the value can only be a string kept in `extra`.
            _ => {
                let sql = format!(
                    "SELECT {list} FROM {} WHERE extra -> $1::text = to_jsonb($2::text) \
                     ORDER BY id LIMIT 1",
                    def.name
                );
                query_docs(&client, cols, &sql, &[&field, &value]).await?
            }
        };
        Ok(found.into_iter().next())
    }

    async fn list(&self, def: &'static EntityDef, filter: &ListFilter) -> Result<Page, StoreError> {
        let after = filter
            .offset
            .as_deref()
            .map(|o| Uuid::parse_str(o).map_err(|_| StoreError::InvalidOffset))
            .transpose()?;
        let cols = columns(def)?;
        let size = filter.size.max(1);
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        if let Some(after) = after {
            params.push(Box::new(after));
            conds.push(format!("id > ${}", params.len()));
        }
        if let Some((field, fid)) = filter.foreign {
            let c = column_of(def, field)?;
            params.push(Box::new(fid));
            conds.push(format!("{} = ${}", c.column, params.len()));
        }
        if let Some((tags, all)) = &filter.tags {
            // A stored tag never holds a NUL character: such a wanted tag matches nothing.
            let storable: Vec<String> =
                tags.iter().filter(|t| !t.contains('\0')).cloned().collect();
            if *all && storable.len() < tags.len() {
                return Ok(Page::default());
            }
            params.push(Box::new(storable));
            let op = if *all { "@>" } else { "&&" };
            conds.push(format!("tags {op} ${}", params.len()));
        }
        params.push(Box::new(limit));
        let where_clause = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM {} {where_clause} ORDER BY id LIMIT ${}",
            select_list(cols),
            def.name,
            params.len()
        );
        let client = self.client().await?;
        let mut data = query_docs(&client, cols, &sql, &as_params(&params)).await?;
        let next_offset = if data.len() > size {
            data.truncate(size);
            data.last()
                .and_then(|d| d.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        } else {
            None
        };
        Ok(Page { data, next_offset })
    }

    async fn all(&self, def: &'static EntityDef) -> Result<Vec<Document>, StoreError> {
        let cols = columns(def)?;
        let sql = format!("SELECT {} FROM {} ORDER BY id", select_list(cols), def.name);
        let client = self.client().await?;
        query_docs(&client, cols, &sql, &[]).await
    }
}
