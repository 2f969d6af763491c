//! The embedded store: everything in process memory, nothing survives a restart.
//!
//! Writes take one short lock each (no `.await` inside), which makes every call atomic; token
//! lookups by access-token digest, the request hot path, read a sharded map without that lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use dashmap::DashMap;
use serde_json::Value;
use uuid::Uuid;

use crate::model::{entities, CodeRecord, Document, EntityDef, ListFilter, OnDelete, Page};
use crate::model::{RefreshOutcome, TokenFilter, TokenHash, TokenRecord};
use crate::{ConfigStore, RefreshReplacement, StoreError, TokenStore};

/// How long a redeemed code or rotated refresh token is remembered for replay detection.
const TOMBSTONE_SECONDS: i64 = 24 * 3600;

/// In-memory [`ConfigStore`].
#[derive(Default)]
pub struct MemoryConfigStore {
    tables: RwLock<HashMap<&'static str, BTreeMap<Uuid, Document>>>,
}

impl MemoryConfigStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every table at once with those of `other` (a DB-less configuration swap):
    /// readers see the whole old configuration or the whole new one, never a mix.
    pub fn replace_with(&self, other: MemoryConfigStore) {
        let tables = other.tables.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.write() = tables;
    }

    /// Every document of an entity, without awaiting (the embedded store answers at once).
    pub fn documents(&self, def: &EntityDef) -> Vec<Document> {
        self.read()
            .get(def.name)
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces a document by id without checking constraints: for a caller that swaps in an
    /// equal row (the running one, with its timestamps) for one it already checked.
    pub fn replace_document(&self, def: &EntityDef, id: Uuid, doc: Document) {
        if let Some(row) = self.write().get_mut(def.name).and_then(|t| t.get_mut(&id)) {
            *row = doc;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<&'static str, BTreeMap<Uuid, Document>>> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<&'static str, BTreeMap<Uuid, Document>>> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads `doc["id"]` as a UUID.
pub fn doc_id(doc: &Document) -> Result<Uuid, StoreError> {
    doc.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| StoreError::Internal("document without a valid id".into()))
}

/// Reads a foreign key `{"id": …}` field.
pub fn foreign_id(doc: &Document, field: &str) -> Option<Uuid> {
    doc.get(field)?
        .get("id")?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The value of a unique key of `doc`, or `None` when the key does not apply (single-field null).
pub fn unique_key_value(doc: &Document, key: &[&str]) -> Option<Vec<Value>> {
    let values: Vec<Value> = key
        .iter()
        .map(|f| match doc.get(*f) {
            Some(Value::Object(o)) => o.get("id").cloned().unwrap_or(Value::Null),
            Some(v) => v.clone(),
            None => Value::Null,
        })
        .collect();
    if key.len() == 1 && values[0].is_null() {
        None
    } else {
        Some(values)
    }
}

/// Whether a document carries the requested tags.
pub fn tags_match(doc: &Document, tags: &(Vec<String>, bool)) -> bool {
    let have: Vec<&str> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let (wanted, all) = tags;
    if *all {
        wanted.iter().all(|t| have.contains(&t.as_str()))
    } else {
        wanted.iter().any(|t| have.contains(&t.as_str()))
    }
}

fn check_constraints(
    tables: &HashMap<&'static str, BTreeMap<Uuid, Document>>,
    def: &'static EntityDef,
    id: Uuid,
    doc: &Document,
) -> Result<(), StoreError> {
    let empty = BTreeMap::new();
    let rows = tables.get(def.name).unwrap_or(&empty);
    for key in def.unique {
        let Some(value) = unique_key_value(doc, key) else {
            continue;
        };
        let taken = rows.iter().any(|(other, row)| {
            *other != id && unique_key_value(row, key).as_ref() == Some(&value)
        });
        if taken {
            let fields = key
                .iter()
                .zip(value)
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| ((*k).to_string(), v))
                .collect();
            return Err(StoreError::UniqueViolation { fields });
        }
    }
    for fk in def.foreign_keys {
        if let Some(target) = foreign_id(doc, fk.field) {
            let exists = tables
                .get(fk.references)
                .is_some_and(|t| t.contains_key(&target));
            if !exists {
                return Err(StoreError::ForeignKeyMissing {
                    field: fk.field,
                    references: fk.references,
                    id: target,
                });
            }
        }
    }
    Ok(())
}

/// Collects the rows a delete removes (cascade) or fails on (restrict), depth first.
fn collect_delete(
    tables: &HashMap<&'static str, BTreeMap<Uuid, Document>>,
    def: &'static EntityDef,
    id: Uuid,
    out: &mut Vec<(&'static str, Uuid)>,
) -> Result<(), StoreError> {
    if out.contains(&(def.name, id)) {
        return Ok(());
    }
    out.push((def.name, id));
    for child in entities::ALL {
        for fk in child
            .foreign_keys
            .iter()
            .filter(|fk| fk.references == def.name)
        {
            let Some(rows) = tables.get(child.name) else {
                continue;
            };
            let refs: Vec<Uuid> = rows
                .iter()
                .filter(|(_, row)| foreign_id(row, fk.field) == Some(id))
                .map(|(cid, _)| *cid)
                .collect();
            if refs.is_empty() {
                continue;
            }
            match fk.on_delete {
                OnDelete::Restrict => {
                    return Err(StoreError::ReferencedBy {
                        entity: def.name,
                        referenced_by: child.name,
                    })
                }
                OnDelete::Cascade => {
                    for cid in refs {
                        collect_delete(tables, child, cid, out)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn decode_offset(offset: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(offset).map_err(|_| StoreError::InvalidOffset)
}

#[async_trait]
impl ConfigStore for MemoryConfigStore {
    async fn insert(&self, def: &'static EntityDef, doc: Document) -> Result<Document, StoreError> {
        let id = doc_id(&doc)?;
        let mut tables = self.write();
        if tables.get(def.name).is_some_and(|t| t.contains_key(&id)) {
            let mut fields = serde_json::Map::new();
            fields.insert("id".into(), Value::String(id.to_string()));
            return Err(StoreError::UniqueViolation { fields });
        }
        check_constraints(&tables, def, id, &doc)?;
        tables.entry(def.name).or_default().insert(id, doc.clone());
        Ok(doc)
    }

    async fn update(&self, def: &'static EntityDef, doc: Document) -> Result<Document, StoreError> {
        let id = doc_id(&doc)?;
        let mut tables = self.write();
        if !tables.get(def.name).is_some_and(|t| t.contains_key(&id)) {
            return Err(StoreError::NotFound);
        }
        check_constraints(&tables, def, id, &doc)?;
        tables.entry(def.name).or_default().insert(id, doc.clone());
        Ok(doc)
    }

    async fn delete(
        &self,
        def: &'static EntityDef,
        id: Uuid,
    ) -> Result<Vec<(&'static str, Uuid)>, StoreError> {
        let mut tables = self.write();
        if !tables.get(def.name).is_some_and(|t| t.contains_key(&id)) {
            return Ok(Vec::new());
        }
        let mut doomed = Vec::new();
        collect_delete(&tables, def, id, &mut doomed)?;
        for (name, row) in &doomed {
            if let Some(t) = tables.get_mut(name) {
                t.remove(row);
            }
        }
        Ok(doomed)
    }

    async fn get(&self, def: &'static EntityDef, id: Uuid) -> Result<Option<Document>, StoreError> {
        Ok(self.read().get(def.name).and_then(|t| t.get(&id)).cloned())
    }

    async fn get_by(
        &self,
        def: &'static EntityDef,
        field: &str,
        value: &str,
    ) -> Result<Option<Document>, StoreError> {
        let tables = self.read();
        Ok(tables
            .get(def.name)
            .and_then(|t| {
                t.values()
                    .find(|d| d.get(field).and_then(Value::as_str) == Some(value))
            })
            .cloned())
    }

    async fn list(&self, def: &'static EntityDef, filter: &ListFilter) -> Result<Page, StoreError> {
        let after = filter.offset.as_deref().map(decode_offset).transpose()?;
        let tables = self.read();
        let Some(rows) = tables.get(def.name) else {
            return Ok(Page::default());
        };
        let size = filter.size.max(1);
        let mut matching = rows
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| **id > a))
            .filter(|(_, d)| {
                filter
                    .foreign
                    .is_none_or(|(f, fid)| foreign_id(d, f) == Some(fid))
            })
            .filter(|(_, d)| filter.tags.as_ref().is_none_or(|t| tags_match(d, t)));
        let data: Vec<Document> = matching
            .by_ref()
            .take(size)
            .map(|(_, d)| d.clone())
            .collect();
        let next_offset = if matching.next().is_some() {
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
        Ok(self
            .read()
            .get(def.name)
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default())
    }
}

/// Token rows and their indexes. A row is stored once and shared (`Arc`) by `by_id` and the
/// lock-free `by_access` map: two copies per token made the store ~1 KiB per token.
#[derive(Default)]
struct TokenTables {
    by_id: BTreeMap<Uuid, Arc<TokenRecord>>,
    /// Rows that expire, in expiry order: a sweep takes the expired front instead of scanning
    /// every row under the lock (a million live tokens held issuance up for each sweep step).
    by_expiry: BTreeSet<(i64, Uuid)>,
    by_refresh: HashMap<TokenHash, Uuid>,
    rotated: HashMap<TokenHash, (Uuid, i64)>,
    codes: HashMap<TokenHash, CodeRecord>,
    used_codes: HashMap<TokenHash, (Uuid, i64)>,
}

/// In-memory [`TokenStore`].
#[derive(Default)]
pub struct MemoryTokenStore {
    by_access: DashMap<TokenHash, Arc<TokenRecord>>,
    tables: Mutex<TokenTables>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, TokenTables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live_by_access(&self, hash: &TokenHash, now: i64) -> Option<TokenRecord> {
        self.by_access
            .get(hash)
            .map(|r| TokenRecord::clone(r.value()))
            .filter(|r| r.row_live_at(now))
    }

    fn insert_locked(&self, t: &mut TokenTables, token: TokenRecord) -> Result<(), StoreError> {
        if self.by_access.contains_key(&token.access_token_hash)
            || token
                .refresh_token_hash
                .is_some_and(|r| t.by_refresh.contains_key(&r))
            || t.by_id.contains_key(&token.id)
        {
            return Err(StoreError::UniqueViolation {
                fields: serde_json::Map::new(),
            });
        }
        if let Some(r) = token.refresh_token_hash {
            t.by_refresh.insert(r, token.id);
        }
        if let Some(at) = token.expires_at {
            t.by_expiry.insert((at, token.id));
        }
        let token = Arc::new(token);
        self.by_access
            .insert(token.access_token_hash, Arc::clone(&token));
        t.by_id.insert(token.id, token);
        Ok(())
    }

    fn remove_locked(&self, t: &mut TokenTables, id: Uuid) -> Option<TokenRecord> {
        let token = t.by_id.remove(&id)?;
        if let Some(at) = token.expires_at {
            t.by_expiry.remove(&(at, id));
        }
        self.by_access.remove(&token.access_token_hash);
        if let Some(r) = token.refresh_token_hash {
            t.by_refresh.remove(&r);
        }
        Some(Arc::unwrap_or_clone(token))
    }

    fn remove_where(&self, pred: impl Fn(&TokenRecord) -> bool) -> Vec<TokenRecord> {
        let mut t = self.lock();
        let ids: Vec<Uuid> = t.by_id.values().filter(|r| pred(r)).map(|r| r.id).collect();
        ids.into_iter()
            .filter_map(|id| self.remove_locked(&mut t, id))
            .collect()
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let mut t = self.lock();
        self.insert_locked(&mut t, token)
    }

    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.live_by_access(hash, now))
    }

    fn token_by_access_in_memory(&self, hash: &TokenHash, now: i64) -> Option<Option<TokenRecord>> {
        Some(self.live_by_access(hash, now))
    }

    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let t = self.lock();
        Ok(t.by_refresh
            .get(hash)
            .and_then(|id| t.by_id.get(id))
            .map(|r| TokenRecord::clone(r))
            .filter(|r| r.row_live_at(now)))
    }

    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .lock()
            .by_id
            .get(&id)
            .map(|r| TokenRecord::clone(r))
            .filter(|r| r.row_live_at(now)))
    }

    async fn update_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let mut t = self.lock();
        let Some(old) = self.remove_locked(&mut t, token.id) else {
            return Err(StoreError::NotFound);
        };
        if let Err(e) = self.insert_locked(&mut t, token) {
            // Put the old row back: a rejected update changes nothing.
            self.insert_locked(&mut t, old)?;
            return Err(e);
        }
        Ok(())
    }

    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let mut t = self.lock();
        Ok(self.remove_locked(&mut t, id))
    }

    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut t = self.lock();
        let live = t
            .by_refresh
            .get(refresh)
            .copied()
            .and_then(|id| t.by_id.get(&id).map(|r| TokenRecord::clone(r)));
        let Some(old) = live.filter(|r| r.row_live_at(now)) else {
            return Ok(match t.rotated.get(refresh) {
                Some((family_id, rotated_at)) => RefreshOutcome::Reused {
                    family_id: *family_id,
                    rotated_at: *rotated_at,
                },
                None => RefreshOutcome::NotFound,
            });
        };
        match replacement {
            RefreshReplacement::Rotate(new) => {
                self.remove_locked(&mut t, old.id);
                t.rotated.insert(*refresh, (old.family_id, now));
                let new = *new;
                self.insert_locked(&mut t, new.clone())?;
                Ok(RefreshOutcome::Redeemed(Box::new(new)))
            }
            RefreshReplacement::Renew {
                access_token_hash,
                expires_in,
                expires_at,
            } => {
                self.remove_locked(&mut t, old.id);
                let renewed = TokenRecord {
                    access_token_hash,
                    expires_in,
                    expires_at,
                    created_at: now,
                    ..old
                };
                self.insert_locked(&mut t, renewed.clone())?;
                Ok(RefreshOutcome::Redeemed(Box::new(renewed)))
            }
        }
    }

    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.remove_where(|r| r.family_id == family))
    }

    async fn insert_code(&self, code: CodeRecord) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.codes.contains_key(&code.code_hash) {
            return Err(StoreError::UniqueViolation {
                fields: serde_json::Map::new(),
            });
        }
        t.codes.insert(code.code_hash, code);
        Ok(())
    }

    async fn take_code(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let mut t = self.lock();
        if let Some((code_id, _)) = t.used_codes.get(hash) {
            return Err(StoreError::CodeReplayed { code_id: *code_id });
        }
        let Some(code) = t.codes.remove(hash) else {
            return Ok(None);
        };
        if code.expires_at < now {
            return Ok(None);
        }
        t.used_codes.insert(*hash, (code.id, now));
        Ok(Some(code))
    }

    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        let family: Vec<Uuid> = self
            .lock()
            .by_id
            .values()
            .filter(|r| r.code_id == Some(code_id))
            .map(|r| r.family_id)
            .collect();
        Ok(self.remove_where(|r| r.code_id == Some(code_id) || family.contains(&r.family_id)))
    }

    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        {
            let mut t = self.lock();
            t.codes.retain(|_, c| {
                !credentials.contains(&c.credential_id)
                    && !c.service_id.is_some_and(|s| services.contains(&s))
            });
        }
        Ok(self.remove_where(|r| {
            credentials.contains(&r.credential_id)
                || r.service_id.is_some_and(|s| services.contains(&s))
        }))
    }

    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: i64,
    ) -> Result<(Vec<TokenRecord>, Option<String>), StoreError> {
        let after = filter.offset.as_deref().map(decode_offset).transpose()?;
        let t = self.lock();
        let mut matching = t
            .by_id
            .values()
            .filter(|r| after.is_none_or(|a| r.id > a))
            .filter(|r| r.row_live_at(now))
            .filter(|r| filter.credential_id.is_none_or(|c| r.credential_id == c))
            .filter(|r| filter.service_id.is_none_or(|s| r.service_id == Some(s)));
        let data: Vec<TokenRecord> = matching
            .by_ref()
            .take(filter.size.max(1))
            .map(|r| TokenRecord::clone(r))
            .collect();
        let next = if matching.next().is_some() {
            data.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok((data, next))
    }

    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError> {
        let mut t = self.lock();
        // Expired means `expires_at < now` (`row_live_at`): the set's front up to `(now, nil)`.
        let expired: Vec<Uuid> = t
            .by_expiry
            .range(..(now, Uuid::nil()))
            .take(batch)
            .map(|(_, id)| *id)
            .collect();
        let mut removed = expired.len() as u64;
        for id in expired {
            self.remove_locked(&mut t, id);
        }
        let before = t.codes.len() + t.rotated.len() + t.used_codes.len();
        t.codes.retain(|_, c| c.expires_at >= now);
        t.rotated
            .retain(|_, (_, at)| now - *at <= TOMBSTONE_SECONDS);
        t.used_codes
            .retain(|_, (_, at)| now - *at <= TOMBSTONE_SECONDS);
        removed += (before - t.codes.len() - t.rotated.len() - t.used_codes.len()) as u64;
        Ok(removed)
    }
}
