//! The embedded store: everything in process memory, nothing survives a restart.
//!
//! Writes take one short lock each (no `.await` inside), which makes every call atomic. The token
//! store is laid out for size in `memory_tokens` and re-exported here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::model::{entities, Document, EntityDef, ListFilter, OnDelete, Page};
use crate::{ConfigStore, StoreError};

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

    /// Adds a document without checking constraints: for a caller that checked a whole
    /// configuration's keys itself at once (a declarative load: linear, where checking each row
    /// against its table is quadratic in the size of the file).
    pub fn insert_checked(&self, def: &'static EntityDef, id: Uuid, doc: Document) {
        self.write().entry(def.name).or_default().insert(id, doc);
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

pub use crate::memory_tokens::MemoryTokenStore;
