//! The in-memory token store, laid out for size: a token costs ~150 bytes instead of ~490.
//!
//! Rows live in fixed-size chunks (no `Vec` doubling slack) of shards chosen by the access token's
//! digest. Each shard indexes its rows by access digest, id and refresh digest with tables of
//! 4-byte slot numbers (the key is read from the row, never copied), and interns what tokens share:
//! credential and service ids, `token_type`, scopes and user ids. The rare fields (refresh digest,
//! code id) sit behind one optional box. Expiry is indexed by second, one bucket of slot numbers
//! per second, so a sweep still takes the expired front without scanning every row.
//!
//! Writes are serialised by one mutex (which makes every call atomic, as the contract needs) and
//! then write-lock the shards they touch; the request hot path, a lookup by access digest, takes
//! only its shard's read lock.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use hashbrown::HashTable;

/// The indexes' hasher: foldhash, seeded at random per store. Every key is made by the gateway
/// (token digests of random tokens, random ids), so nothing a client sends can crowd a bucket,
/// and a lookup per proxied request hashes a 32-byte digest in a few instructions where SipHash
/// took a few hundred.
type RandomState = foldhash::fast::RandomState;
use uuid::Uuid;

use crate::model::{CodeRecord, RefreshOutcome, TokenFilter, TokenHash, TokenRecord};
use crate::observe::{unobserved, LookupObserver, LookupTier};
use crate::{RefreshReplacement, StoreError, TokenStore};

/// How long a redeemed code or rotated refresh token is remembered for replay detection.
const TOMBSTONE_SECONDS: i64 = 24 * 3600;
/// Number of shards (a power of two); a row's shard is the low bits of its access digest.
const SHARDS: usize = 16;
/// Bits of a location that name the shard.
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Rows per chunk: large enough that chunk headers do not count, small enough that the last,
/// partly filled chunk does not either.
const CHUNK: usize = 1024;
/// The interned index standing for "none".
const NONE: u32 = u32::MAX;

/// The fields a few tokens have: a refresh token, an authorization code.
struct Extra {
    refresh: Option<TokenHash>,
    code_id: Option<Uuid>,
}

/// One stored token: fixed-size fields inline, shared values as interned indexes.
struct Row {
    id: Uuid,
    access: TokenHash,
    family_id: Uuid,
    created_at: i64,
    expires_in: i64,
    /// Row expiry; meaningful only when `expires`.
    expires_at: i64,
    extra: Option<Box<Extra>>,
    credential: u32,
    service: u32,
    token_type: u32,
    userid: u32,
    scope: u32,
    expires: bool,
}

impl Row {
    fn expiry(&self) -> Option<i64> {
        self.expires.then_some(self.expires_at)
    }

    fn refresh(&self) -> Option<&TokenHash> {
        self.extra.as_ref().and_then(|e| e.refresh.as_ref())
    }

    fn code_id(&self) -> Option<Uuid> {
        self.extra.as_ref().and_then(|e| e.code_id)
    }

    fn live_at(&self, now: i64) -> bool {
        self.expiry().is_none_or(|t| t >= now)
    }
}

/// Values shared by many rows, stored once with a reference count and freed with the last row.
struct Interner<T> {
    values: Vec<Option<(T, u32)>>,
    free: Vec<u32>,
    index: HashTable<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    fn get(&self, i: u32) -> Option<&T> {
        self.values
            .get(i as usize)
            .and_then(Option::as_ref)
            .map(|(v, _)| v)
    }

    fn find<Q>(&self, h: &RandomState, key: &Q) -> Option<u32>
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let values = &self.values;
        self.index
            .find(h.hash_one(key), |&i| {
                values
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|(v, _)| v.borrow() == key)
            })
            .copied()
    }

    /// Takes a reference to `key`'s entry, creating it with `make` when absent.
    fn acquire<Q>(&mut self, h: &RandomState, key: &Q, make: impl FnOnce() -> T) -> u32
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(i) = self.find(h, key) {
            if let Some(Some((_, refs))) = self.values.get_mut(i as usize) {
                *refs += 1;
            }
            return i;
        }
        let entry = Some((make(), 1));
        let i = match self.free.pop() {
            Some(i) => {
                self.values[i as usize] = entry;
                i
            }
            None => {
                self.values.push(entry);
                u32::try_from(self.values.len() - 1).unwrap_or(NONE)
            }
        };
        let values = &self.values;
        self.index.insert_unique(h.hash_one(key), i, |&j| {
            values
                .get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |(v, _)| h.hash_one::<&Q>(v.borrow()))
        });
        i
    }

    /// Drops one reference; the entry goes with the last.
    fn release<Q>(&mut self, h: &RandomState, i: u32)
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(Some((value, refs))) = self.values.get_mut(i as usize) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let hash = h.hash_one::<&Q>((*value).borrow());
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.values[i as usize] = None;
        self.free.push(i);
    }
}

/// Rows in fixed-size chunks, addressed by slot number; freed slots are reused.
#[derive(Default)]
struct Slab {
    chunks: Vec<Box<[Option<Row>]>>,
    free: Vec<u32>,
    next: u32,
}

impl Slab {
    fn get(&self, slot: u32) -> Option<&Row> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)?.as_ref()
    }

    fn cell(&mut self, slot: u32) -> Option<&mut Option<Row>> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    /// Whether another row fits (slot numbers leave `SHARD_BITS` for the shard).
    fn has_room(&self) -> bool {
        !self.free.is_empty() || self.next < (u32::MAX >> SHARD_BITS)
    }

    /// Stores `row`; the caller checked [`Slab::has_room`].
    fn insert(&mut self, row: Row) -> u32 {
        let slot = self.free.pop().unwrap_or_else(|| {
            let slot = self.next;
            if (slot as usize).is_multiple_of(CHUNK) {
                self.chunks.push((0..CHUNK).map(|_| None).collect());
            }
            self.next += 1;
            slot
        });
        if let Some(cell) = self.cell(slot) {
            *cell = Some(row);
        }
        slot
    }

    fn remove(&mut self, slot: u32) -> Option<Row> {
        let row = self.cell(slot)?.take()?;
        self.free.push(slot);
        Some(row)
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &Row)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .filter_map(|(slot, row)| Some((u32::try_from(slot).ok()?, row.as_ref()?)))
    }
}

/// One shard: its rows, their indexes and the values they share.
#[derive(Default)]
struct Shard {
    rows: Slab,
    by_access: HashTable<u32>,
    by_id: HashTable<u32>,
    by_refresh: HashTable<u32>,
    uuids: Interner<Uuid>,
    strings: Interner<Box<str>>,
}

impl Shard {
    fn find_access(&self, h: &RandomState, hash: &TokenHash) -> Option<u32> {
        let rows = &self.rows;
        self.by_access
            .find(h.hash_one(hash), |&s| {
                rows.get(s).is_some_and(|r| r.access == *hash)
            })
            .copied()
    }

    fn find_id(&self, key: u64, id: Uuid) -> Option<u32> {
        let rows = &self.rows;
        self.by_id
            .find(key, |&s| rows.get(s).is_some_and(|r| r.id == id))
            .copied()
    }

    fn find_refresh(&self, key: u64, hash: &TokenHash) -> Option<u32> {
        let rows = &self.rows;
        self.by_refresh
            .find(key, |&s| {
                rows.get(s).is_some_and(|r| r.refresh() == Some(hash))
            })
            .copied()
    }

    fn text(&self, i: u32) -> Option<String> {
        (i != NONE)
            // From the `str`, not `Box<str>`'s `Display`: no formatting machinery per lookup.
            .then(|| self.strings.get(i).map(|s| String::from(&**s)))
            .flatten()
    }

    fn uuid(&self, i: u32) -> Option<Uuid> {
        (i != NONE).then(|| self.uuids.get(i).copied()).flatten()
    }

    fn record(&self, slot: u32) -> Option<TokenRecord> {
        let r = self.rows.get(slot)?;
        Some(TokenRecord {
            id: r.id,
            credential_id: self.uuid(r.credential)?,
            service_id: self.uuid(r.service),
            access_token_hash: r.access,
            refresh_token_hash: r.refresh().copied(),
            token_type: self.text(r.token_type)?,
            expires_in: r.expires_in,
            authenticated_userid: self.text(r.userid),
            scope: self.text(r.scope),
            created_at: r.created_at,
            expires_at: r.expiry(),
            family_id: r.family_id,
            code_id: r.code_id(),
        })
    }

    fn intern_text(&mut self, h: &RandomState, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.strings.acquire(h, s, || s.into()))
    }

    fn insert(&mut self, h: &RandomState, t: TokenRecord) -> Result<u32, StoreError> {
        if !self.rows.has_room() {
            return Err(StoreError::Full);
        }
        let extra = (t.refresh_token_hash.is_some() || t.code_id.is_some()).then(|| {
            Box::new(Extra {
                refresh: t.refresh_token_hash,
                code_id: t.code_id,
            })
        });
        let row = Row {
            id: t.id,
            access: t.access_token_hash,
            family_id: t.family_id,
            created_at: t.created_at,
            expires_in: t.expires_in,
            expires_at: t.expires_at.unwrap_or_default(),
            extra,
            credential: self.uuids.acquire(h, &t.credential_id, || t.credential_id),
            service: t
                .service_id
                .map_or(NONE, |s| self.uuids.acquire(h, &s, || s)),
            token_type: self.intern_text(h, Some(&t.token_type)),
            userid: self.intern_text(h, t.authenticated_userid.as_deref()),
            scope: self.intern_text(h, t.scope.as_deref()),
            expires: t.expires_at.is_some(),
        };
        let slot = self.rows.insert(row);
        let rows = &self.rows;
        let key = |s: &u32, f: &dyn Fn(&Row) -> u64| rows.get(*s).map_or(0, f);
        self.by_access
            .insert_unique(h.hash_one(t.access_token_hash), slot, |s| {
                key(s, &|r| h.hash_one(r.access))
            });
        self.by_id
            .insert_unique(h.hash_one(t.id), slot, |s| key(s, &|r| h.hash_one(r.id)));
        if let Some(refresh) = &t.refresh_token_hash {
            self.by_refresh
                .insert_unique(h.hash_one(refresh), slot, |s| {
                    key(s, &|r| r.refresh().map_or(0, |x| h.hash_one(x)))
                });
        }
        Ok(slot)
    }

    fn release_refs(&mut self, h: &RandomState, refs: &Row) {
        for i in [refs.credential, refs.service] {
            if i != NONE {
                self.uuids.release::<Uuid>(h, i);
            }
        }
        for i in [refs.token_type, refs.userid, refs.scope] {
            if i != NONE {
                self.strings.release::<str>(h, i);
            }
        }
    }

    fn remove(&mut self, h: &RandomState, slot: u32) -> Option<TokenRecord> {
        let record = self.record(slot)?;
        if let Ok(e) = self
            .by_access
            .find_entry(h.hash_one(record.access_token_hash), |&s| s == slot)
        {
            e.remove();
        }
        if let Ok(e) = self.by_id.find_entry(h.hash_one(record.id), |&s| s == slot) {
            e.remove();
        }
        if let Some(refresh) = &record.refresh_token_hash {
            if let Ok(e) = self
                .by_refresh
                .find_entry(h.hash_one(refresh), |&s| s == slot)
            {
                e.remove();
            }
        }
        let row = self.rows.remove(slot)?;
        self.release_refs(h, &row);
        Some(record)
    }
}

/// What writers share: expiry buckets, codes and tombstones, the row count.
#[derive(Default)]
struct Side {
    live: usize,
    /// Locations (`slot << SHARD_BITS | shard`) of the rows expiring in each second.
    by_expiry: BTreeMap<i64, Vec<u32>>,
    rotated: HashMap<TokenHash, (Uuid, i64)>,
    codes: HashMap<TokenHash, CodeRecord>,
    used_codes: HashMap<TokenHash, (Uuid, i64)>,
}

fn location(shard: usize, slot: u32) -> u32 {
    (slot << SHARD_BITS) | u32::try_from(shard).unwrap_or_default()
}

fn split(loc: u32) -> (usize, u32) {
    ((loc as usize) & (SHARDS - 1), loc >> SHARD_BITS)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// In-memory [`TokenStore`], optionally bounded in how many tokens it holds.
pub struct MemoryTokenStore {
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
    side: Mutex<Side>,
    max_tokens: usize,
    observer: Arc<dyn LookupObserver>,
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTokenStore {
    /// An empty, unbounded store (tests, embedded use).
    pub fn new() -> Self {
        Self::with_max_tokens(usize::MAX)
    }

    /// An empty store that refuses to issue beyond `max_tokens` live tokens
    /// ([`StoreError::Full`]) once expired ones are swept: `database = memory` must not grow
    /// until the process is killed.
    pub fn with_max_tokens(max_tokens: usize) -> Self {
        Self {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            side: Mutex::default(),
            max_tokens,
            observer: unobserved(),
        }
    }

    /// The store, telling `observer` about each lookup by access-token digest.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn LookupObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// How many tokens the store holds (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().live
    }

    /// Whether the store holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn shard_of(hash: &TokenHash) -> usize {
        hash.0[0] as usize & (SHARDS - 1)
    }

    fn live_by_access(&self, hash: &TokenHash, now: i64) -> Option<TokenRecord> {
        let shard = self.read(Self::shard_of(hash));
        let slot = shard.find_access(&self.hasher, hash)?;
        shard.record(slot).filter(|r| r.row_live_at(now))
    }

    /// Where the row with this id lives.
    fn locate_id(&self, id: Uuid) -> Option<u32> {
        let key = self.hasher.hash_one(id);
        (0..SHARDS).find_map(|s| self.read(s).find_id(key, id).map(|slot| location(s, slot)))
    }

    /// Where the row with this refresh digest lives.
    fn locate_refresh(&self, hash: &TokenHash) -> Option<u32> {
        let key = self.hasher.hash_one(hash);
        (0..SHARDS).find_map(|s| {
            self.read(s)
                .find_refresh(key, hash)
                .map(|slot| location(s, slot))
        })
    }

    fn record_at(&self, loc: u32) -> Option<TokenRecord> {
        let (shard, slot) = split(loc);
        self.read(shard).record(slot)
    }

    fn insert_locked(&self, side: &mut Side, token: TokenRecord) -> Result<(), StoreError> {
        let shard_no = Self::shard_of(&token.access_token_hash);
        let taken = self
            .read(shard_no)
            .find_access(&self.hasher, &token.access_token_hash)
            .is_some()
            || token
                .refresh_token_hash
                .is_some_and(|r| self.locate_refresh(&r).is_some())
            || self.locate_id(token.id).is_some();
        if taken {
            return Err(StoreError::UniqueViolation {
                fields: serde_json::Map::new(),
            });
        }
        let expires_at = token.expires_at;
        let slot = self.write(shard_no).insert(&self.hasher, token)?;
        if let Some(at) = expires_at {
            side.by_expiry
                .entry(at)
                .or_default()
                .push(location(shard_no, slot));
        }
        side.live += 1;
        Ok(())
    }

    /// Removes the row at `loc`; `indexed` says whether its expiry bucket still lists it.
    fn remove_locked(&self, side: &mut Side, loc: u32, indexed: bool) -> Option<TokenRecord> {
        let (shard, slot) = split(loc);
        let record = self.write(shard).remove(&self.hasher, slot)?;
        side.live -= 1;
        if let (true, Some(at)) = (indexed, record.expires_at) {
            if let Some(bucket) = side.by_expiry.get_mut(&at) {
                if let Some(i) = bucket.iter().position(|l| *l == loc) {
                    bucket.swap_remove(i);
                }
                if bucket.is_empty() {
                    side.by_expiry.remove(&at);
                }
            }
        }
        Some(record)
    }

    fn remove_where(&self, pred: impl Fn(&Shard, &Row) -> bool) -> Vec<TokenRecord> {
        let mut side = self.lock();
        let mut doomed = Vec::new();
        for s in 0..SHARDS {
            let shard = self.read(s);
            doomed.extend(
                shard
                    .rows
                    .iter()
                    .filter(|(_, r)| pred(&shard, r))
                    .map(|(slot, _)| location(s, slot)),
            );
        }
        doomed
            .into_iter()
            .filter_map(|loc| self.remove_locked(&mut side, loc, true))
            .collect()
    }

    /// Removes up to `batch` rows expired at `now` (`expires_at < now`), oldest first.
    fn sweep_locked(&self, side: &mut Side, now: i64, batch: usize) -> u64 {
        let mut removed = 0u64;
        let mut left = batch;
        while left > 0 {
            let Some(mut entry) = side.by_expiry.first_entry() else {
                break;
            };
            if *entry.key() >= now {
                break;
            }
            let bucket = entry.get_mut();
            let take: Vec<u32> = if bucket.len() <= left {
                entry.remove()
            } else {
                bucket.split_off(bucket.len() - left)
            };
            left -= take.len();
            for loc in take {
                if self.remove_locked(side, loc, false).is_some() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let mut side = self.lock();
        if side.live >= self.max_tokens {
            self.sweep_locked(&mut side, now(), usize::MAX);
            if side.live >= self.max_tokens {
                return Err(StoreError::Full);
            }
        }
        self.insert_locked(&mut side, token)
    }

    async fn token_by_access(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.observer.answered(LookupTier::Memory);
        Ok(self.live_by_access(hash, now))
    }

    fn token_by_access_in_memory(&self, hash: &TokenHash, now: i64) -> Option<Option<TokenRecord>> {
        self.observer.answered(LookupTier::Memory);
        Some(self.live_by_access(hash, now))
    }

    async fn token_by_refresh(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .locate_refresh(hash)
            .and_then(|loc| self.record_at(loc))
            .filter(|r| r.row_live_at(now)))
    }

    async fn token_by_id(&self, id: Uuid, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .locate_id(id)
            .and_then(|loc| self.record_at(loc))
            .filter(|r| r.row_live_at(now)))
    }

    async fn update_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let mut side = self.lock();
        let Some(old) = self
            .locate_id(token.id)
            .and_then(|loc| self.remove_locked(&mut side, loc, true))
        else {
            return Err(StoreError::NotFound);
        };
        if let Err(e) = self.insert_locked(&mut side, token) {
            // Put the old row back: a rejected update changes nothing.
            self.insert_locked(&mut side, old)?;
            return Err(e);
        }
        Ok(())
    }

    async fn delete_token(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let mut side = self.lock();
        Ok(self
            .locate_id(id)
            .and_then(|loc| self.remove_locked(&mut side, loc, true)))
    }

    async fn redeem_refresh(
        &self,
        refresh: &TokenHash,
        replacement: RefreshReplacement,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut side = self.lock();
        let live = self
            .locate_refresh(refresh)
            .and_then(|loc| Some((loc, self.record_at(loc)?)))
            .filter(|(_, r)| r.row_live_at(now));
        let Some((loc, old)) = live else {
            return Ok(match side.rotated.get(refresh) {
                Some((family_id, rotated_at)) => RefreshOutcome::Reused {
                    family_id: *family_id,
                    rotated_at: *rotated_at,
                },
                None => RefreshOutcome::NotFound,
            });
        };
        match replacement {
            RefreshReplacement::Rotate(new) => {
                self.remove_locked(&mut side, loc, true);
                side.rotated.insert(*refresh, (old.family_id, now));
                let new = *new;
                self.insert_locked(&mut side, new.clone())?;
                Ok(RefreshOutcome::Redeemed(Box::new(new)))
            }
            RefreshReplacement::Renew {
                access_token_hash,
                expires_in,
                expires_at,
            } => {
                self.remove_locked(&mut side, loc, true);
                let renewed = TokenRecord {
                    access_token_hash,
                    expires_in,
                    expires_at,
                    created_at: now,
                    ..old
                };
                self.insert_locked(&mut side, renewed.clone())?;
                Ok(RefreshOutcome::Redeemed(Box::new(renewed)))
            }
        }
    }

    async fn revoke_family(&self, family: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.remove_where(|_, r| r.family_id == family))
    }

    async fn insert_code(&self, code: CodeRecord) -> Result<(), StoreError> {
        let mut side = self.lock();
        if side.codes.contains_key(&code.code_hash) {
            return Err(StoreError::UniqueViolation {
                fields: serde_json::Map::new(),
            });
        }
        side.codes.insert(code.code_hash, code);
        Ok(())
    }

    async fn take_code(
        &self,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let mut side = self.lock();
        if let Some((code_id, _)) = side.used_codes.get(hash) {
            return Err(StoreError::CodeReplayed { code_id: *code_id });
        }
        let Some(code) = side.codes.remove(hash) else {
            return Ok(None);
        };
        if code.expires_at < now {
            return Ok(None);
        }
        side.used_codes.insert(*hash, (code.id, now));
        Ok(Some(code))
    }

    async fn revoke_by_code(&self, code_id: Uuid) -> Result<Vec<TokenRecord>, StoreError> {
        let mut families: Vec<Uuid> = Vec::new();
        for s in 0..SHARDS {
            let shard = self.read(s);
            families.extend(
                shard
                    .rows
                    .iter()
                    .filter(|(_, r)| r.code_id() == Some(code_id))
                    .map(|(_, r)| r.family_id),
            );
        }
        Ok(self
            .remove_where(|_, r| r.code_id() == Some(code_id) || families.contains(&r.family_id)))
    }

    async fn delete_owned_by(
        &self,
        credentials: &[Uuid],
        services: &[Uuid],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.lock().codes.retain(|_, c| {
            !credentials.contains(&c.credential_id)
                && !c.service_id.is_some_and(|s| services.contains(&s))
        });
        Ok(self.remove_where(|shard, r| {
            shard
                .uuid(r.credential)
                .is_some_and(|c| credentials.contains(&c))
                || shard.uuid(r.service).is_some_and(|s| services.contains(&s))
        }))
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
        let want = filter.size.max(1) + 1;
        // The `want` smallest matching ids, found shard by shard without copying the rows.
        let mut found: Vec<(Uuid, u32)> = Vec::new();
        for s in 0..SHARDS {
            let shard = self.read(s);
            for (slot, r) in shard.rows.iter() {
                let matches = after.is_none_or(|a| r.id > a)
                    && r.live_at(now)
                    && filter
                        .credential_id
                        .is_none_or(|c| shard.uuid(r.credential) == Some(c))
                    && filter
                        .service_id
                        .is_none_or(|c| shard.uuid(r.service) == Some(c));
                if matches {
                    found.push((r.id, location(s, slot)));
                    if found.len() >= 4 * want {
                        found.select_nth_unstable(want - 1);
                        found.truncate(want);
                    }
                }
            }
        }
        found.sort_unstable();
        found.truncate(want);
        let more = found.len() == want;
        let data: Vec<TokenRecord> = found
            .iter()
            .take(want - 1)
            .filter_map(|(id, loc)| self.record_at(*loc).filter(|r| r.id == *id))
            .collect();
        let next = if more {
            data.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok((data, next))
    }

    async fn purge_expired(&self, now: i64, batch: usize) -> Result<u64, StoreError> {
        let mut side = self.lock();
        let mut removed = self.sweep_locked(&mut side, now, batch);
        let before = side.codes.len() + side.rotated.len() + side.used_codes.len();
        side.codes.retain(|_, c| c.expires_at >= now);
        side.rotated
            .retain(|_, (_, at)| now - *at <= TOMBSTONE_SECONDS);
        side.used_codes
            .retain(|_, (_, at)| now - *at <= TOMBSTONE_SECONDS);
        removed += (before - side.codes.len() - side.rotated.len() - side.used_codes.len()) as u64;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::Row;

    #[test]
    fn a_row_stays_small() {
        // The footprint test's budget rests on this size; a new field must earn its bytes.
        assert!(
            std::mem::size_of::<Option<Row>>() <= 120,
            "{}",
            std::mem::size_of::<Option<Row>>()
        );
    }
}
