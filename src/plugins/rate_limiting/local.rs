//! The `local` policy: this node's counters, in memory.
//!
//! Why this shape: a node's limit must hold across its proxy worker threads (per-worker maps would
//! split it), and the hot path must take no lock. So the counters of one (plugin instance, client)
//! pair live in one shared map, split in [`SHARDS`] shards, each an immutable hash map behind an
//! `ArcSwap`: a request loads its shard's snapshot and finds its pair without a lock; only the
//! first request of a new pair takes its shard's writer lock, to publish a copy holding it. Each
//! of the six windows of a pair is one `AtomicU64` holding the window's tag (its start, 24 bits)
//! and its count (40 bits), updated by compare-and-swap: a request is counted only while the count
//! is under the limit, so a window never admits more than its limit however many threads race. A
//! window whose tag is not the current one counts as empty and is overwritten in place, so old
//! windows take no memory. With several windows, a request refused by a later one is taken back
//! from the earlier ones: a refused request counts nowhere (under a race at the limit a concurrent
//! request may be refused while a take-back is in flight: the error is on the safe side).
//!
//! Memory is bounded: a shard holds at most `CAPACITY / SHARDS` pairs. Publishing a copy drops the
//! pairs idle for longer than their longest window (they have nothing left to count), and, if the
//! shard is still full, the one seen least recently.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use uuid::Uuid;

use super::window::Period;

/// Most (plugin instance, client) pairs kept; a few hundred bytes each.
pub const CAPACITY: usize = 200_000;
/// Shards of the map: a new pair copies one shard, at most `CAPACITY / SHARDS` pairs. A power
/// of two ([`shard_of`] takes that many top bits).
pub const SHARDS: usize = 1_024;
const _: () = assert!(SHARDS.is_power_of_two());

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// Who a request is counted for (Kong's identifier): an address, an entity id, or a text (a
/// header's value, the configured path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// The client address.
    Ip(IpAddr),
    /// A consumer, credential or service id.
    Id(Uuid),
    /// A header value or the configured path.
    Text(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    plugin: Uuid,
    who: Identifier,
}

/// The windows of one pair.
struct Slots {
    windows: [AtomicU64; 6],
    /// Seconds the pair may stay idle (its longest window).
    idle: i64,
    /// Unix second of its latest request.
    seen: AtomicI64,
}

impl Slots {
    fn idle_at(&self, now: i64) -> bool {
        self.seen.load(Ordering::Relaxed) + self.idle < now
    }
}

/// foldhash: keys hold client addresses and header values, but a shard is bounded and the seed
/// is random per process.
type Hasher = foldhash::fast::RandomState;
type Pairs = HashMap<Key, Arc<Slots>, Hasher>;

struct Shard {
    pairs: ArcSwap<Pairs>,
    /// Held while a copy with a new pair is made and published; never by a reader.
    writer: Mutex<()>,
}

/// One window a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The window.
    pub period: Period,
    /// Requests it admits (the configured limit rounded up).
    pub cap: u64,
    /// Its start (unix seconds), which tags its count.
    pub start: i64,
}

/// The counters of every `local` instance of this gateway, shared by its workers and kept across
/// configuration changes (a changed limit applies to the counts so far, as in Kong).
#[derive(Clone)]
pub struct LocalCounters {
    shards: Arc<[Shard]>,
    hasher: Hasher,
    /// Most pairs a shard holds.
    per_shard: usize,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::with_shard_capacity(CAPACITY / SHARDS)
    }
}

impl LocalCounters {
    fn with_shard_capacity(per_shard: usize) -> Self {
        let hasher = Hasher::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    pairs: ArcSwap::from_pointee(HashMap::with_hasher(hasher.clone())),
                    writer: Mutex::new(()),
                })
                .collect(),
            hasher,
            per_shard,
        }
    }
}

impl LocalCounters {
    /// Checks a request at `now` against `checks` and counts it in each when it is under every
    /// limit. Returns whether it was admitted and each window's count before it (in `before`).
    pub fn check_and_count(
        &self,
        plugin: Uuid,
        who: Identifier,
        now: i64,
        checks: &[Check],
        before: &mut [u64; 6],
    ) -> bool {
        let key = Key { plugin, who };
        let shard = &self.shards[shard_of(self.hasher.hash_one(&key))];
        // A known pair is counted through the snapshot, without touching its reference count
        // (a line every worker counting for that pair would write).
        let snapshot = shard.pairs.load();
        if let Some(slots) = snapshot.get(&key) {
            return Self::count(slots, now, checks, before);
        }
        drop(snapshot);
        let slots = self.add(shard, key, now, checks);
        Self::count(&slots, now, checks, before)
    }

    /// Checks and counts a request in one pair's windows.
    fn count(slots: &Slots, now: i64, checks: &[Check], before: &mut [u64; 6]) -> bool {
        if slots.seen.load(Ordering::Relaxed) != now {
            slots.seen.store(now, Ordering::Relaxed);
        }
        for (i, check) in checks.iter().enumerate() {
            let slot = &slots.windows[check.period.index()];
            let (count, admitted) = count_one(slot, tag(check.start), check.cap);
            before[i] = count;
            if !admitted {
                for earlier in &checks[..i] {
                    take_back(&slots.windows[earlier.period.index()], tag(earlier.start));
                }
                for (j, later) in checks.iter().enumerate().skip(i + 1) {
                    before[j] = peek(&slots.windows[later.period.index()], tag(later.start));
                }
                return false;
            }
        }
        true
    }

    /// A pair's counters, added to a published copy of its shard (unless a racing request
    /// added it first).
    fn add(&self, shard: &Shard, key: Key, now: i64, checks: &[Check]) -> Arc<Slots> {
        let _writer = shard
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = shard.pairs.load_full();
        if let Some(slots) = current.get(&key) {
            return slots.clone();
        }
        let idle = checks
            .iter()
            .map(|c| c.period.expiration())
            .max()
            .map_or(1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let slots = Arc::new(Slots {
            windows: Default::default(),
            idle,
            seen: AtomicI64::new(now),
        });
        let mut next: Pairs =
            HashMap::with_capacity_and_hasher(current.len() + 1, self.hasher.clone());
        next.extend(
            current
                .iter()
                .filter(|(_, s)| !s.idle_at(now))
                .map(|(k, s)| (k.clone(), s.clone())),
        );
        if next.len() >= self.per_shard {
            let stalest = next
                .iter()
                .min_by_key(|(_, s)| s.seen.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(stalest) = stalest {
                next.remove(&stalest);
            }
        }
        next.insert(key, slots.clone());
        shard.pairs.store(Arc::new(next));
        slots
    }
}

/// The shard of a key's hash: the top bits of its product with 2^64/φ (Fibonacci hashing),
/// which depend on every bit of the hash. foldhash's low bits alone are not mixed enough for
/// keys that differ in a few bits (consecutive client addresses): with some process seeds one
/// shard in ten got no key of a range that others shared out evenly, filling the rest sooner.
fn shard_of(hash: u64) -> usize {
    const SHARD_BITS: u32 = SHARDS.trailing_zeros();
    let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS);
    // Below SHARDS: the conversion keeps it.
    usize::try_from(mixed).unwrap_or(0)
}

fn tag(start: i64) -> u64 {
    // Two's complement bits of the start: only equality matters.
    u64::from_ne_bytes(start.to_ne_bytes()) & TAG_MASK
}

/// The count of `slot` in the window tagged `tag` (0 when it holds another window).
fn peek(slot: &AtomicU64, tag: u64) -> u64 {
    let value = slot.load(Ordering::Acquire);
    if value >> COUNT_BITS == tag {
        value & COUNT_MASK
    } else {
        0
    }
}

/// Counts one request unless the window is at `cap`; the count before it and whether it counted.
fn count_one(slot: &AtomicU64, tag: u64, cap: u64) -> (u64, bool) {
    let cap = cap.min(COUNT_MASK);
    let mut current = slot.load(Ordering::Acquire);
    loop {
        let count = if current >> COUNT_BITS == tag {
            current & COUNT_MASK
        } else {
            0
        };
        if count >= cap {
            return (count, false);
        }
        let next = (tag << COUNT_BITS) | (count + 1);
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return (count, true),
            Err(seen) => current = seen,
        }
    }
}

/// Takes back one request counted in the window tagged `tag` (nothing if the window moved on).
fn take_back(slot: &AtomicU64, tag: u64) {
    let mut current = slot.load(Ordering::Acquire);
    while current >> COUNT_BITS == tag && current & COUNT_MASK > 0 {
        match slot.compare_exchange_weak(current, current - 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(minute_cap: u64, hour_cap: u64, now: i64) -> [Check; 2] {
        [
            Check {
                period: Period::Minute,
                cap: minute_cap,
                start: Period::Minute.start(now),
            },
            Check {
                period: Period::Hour,
                cap: hour_cap,
                start: Period::Hour.start(now),
            },
        ]
    }

    #[test]
    fn a_window_admits_its_limit_then_refuses_without_counting() {
        let counters = LocalCounters::default();
        let (plugin, who) = (Uuid::new_v4(), Identifier::Ip([127, 0, 0, 1].into()));
        let now = 1_709_214_330;
        let mut before = [0; 6];
        for n in 0..3 {
            assert!(counters.check_and_count(
                plugin,
                who.clone(),
                now,
                &checks(3, 10, now),
                &mut before
            ));
            assert_eq!(before[..2], [n, n]);
        }
        assert!(!counters.check_and_count(
            plugin,
            who.clone(),
            now,
            &checks(3, 10, now),
            &mut before
        ));
        assert_eq!(
            before[..2],
            [3, 3],
            "the refused request counted in no window"
        );
        // The next minute starts empty; the hour remembers.
        let later = now + 60;
        assert!(counters.check_and_count(plugin, who, later, &checks(3, 10, later), &mut before));
        assert_eq!(before[..2], [0, 3]);
    }

    #[test]
    fn a_refusal_by_a_later_window_is_taken_back_from_the_earlier_ones() {
        let counters = LocalCounters::default();
        let (plugin, who) = (Uuid::new_v4(), Identifier::Text(Arc::from("v1")));
        let now = 1_709_214_330;
        let mut before = [0; 6];
        assert!(counters.check_and_count(
            plugin,
            who.clone(),
            now,
            &checks(5, 1, now),
            &mut before
        ));
        assert!(!counters.check_and_count(
            plugin,
            who.clone(),
            now,
            &checks(5, 1, now),
            &mut before
        ));
        assert_eq!(before[..2], [1, 1]);
        assert!(!counters.check_and_count(plugin, who, now, &checks(5, 1, now), &mut before));
        assert_eq!(before[..2], [1, 1]);
    }

    #[test]
    fn racing_threads_never_get_more_than_the_limit() {
        let counters = LocalCounters::default();
        let plugin = Uuid::new_v4();
        let now = 1_709_214_330;
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let counters = counters.clone();
                    s.spawn(move || {
                        let mut before = [0; 6];
                        (0..500)
                            .filter(|_| {
                                counters.check_and_count(
                                    plugin,
                                    Identifier::Id(plugin),
                                    now,
                                    &checks(1_000, 100_000, now),
                                    &mut before,
                                )
                            })
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
    }

    #[test]
    fn memory_stays_bounded_and_a_busy_pair_keeps_its_count() {
        let counters = LocalCounters::with_shard_capacity(2);
        let plugin = Uuid::new_v4();
        let busy = Identifier::Text(Arc::from("busy"));
        let now = 1_709_214_330;
        let mut before = [0; 6];
        for n in 0..10_000_u32 {
            let who = Identifier::Ip(std::net::Ipv4Addr::from(n).into());
            assert!(counters.check_and_count(plugin, who, now, &checks(5, 10, now), &mut before));
            // Seen later than every other pair: never the one a full shard drops.
            let admitted = counters.check_and_count(
                plugin,
                busy.clone(),
                now + 1,
                &checks(1_000_000, 1_000_000, now),
                &mut before,
            );
            assert!(admitted);
            assert_eq!(before[0], u64::from(n), "the busy pair's count carried on");
        }
        let kept: usize = counters.shards.iter().map(|s| s.pairs.load().len()).sum();
        assert!(kept <= 2 * SHARDS, "{kept} pairs kept");
        assert!(kept > SHARDS, "{kept} pairs kept");
    }

    #[test]
    fn every_bit_of_a_hash_moves_its_shard() {
        let spread = |hashes: &mut dyn Iterator<Item = u64>| {
            hashes
                .map(shard_of)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let n = 4 * SHARDS as u64;
        assert_eq!(spread(&mut (0..n)), SHARDS, "hashes differing in low bits");
        assert_eq!(
            spread(&mut (0..n).map(|h| h << 52)),
            SHARDS,
            "hashes differing in high bits"
        );
    }

    #[test]
    fn pairs_idle_past_their_longest_window_are_dropped() {
        let counters = LocalCounters::default();
        let plugin = Uuid::new_v4();
        let now = 1_709_214_330;
        let mut before = [0; 6];
        let second = |now| {
            [Check {
                period: Period::Second,
                cap: 1,
                start: now,
            }]
        };
        for n in 0..4_000_u32 {
            let who = Identifier::Ip(std::net::Ipv4Addr::from(n).into());
            assert!(counters.check_and_count(plugin, who, now, &second(now), &mut before));
        }
        // Two seconds later, new pairs replace every shard's idle ones as they are added.
        let later = now + 2;
        for n in 4_000..8_000_u32 {
            let who = Identifier::Ip(std::net::Ipv4Addr::from(n).into());
            assert!(counters.check_and_count(plugin, who, later, &second(later), &mut before));
        }
        let kept: usize = counters.shards.iter().map(|s| s.pairs.load().len()).sum();
        assert!(kept < 5_000, "{kept} pairs kept");
    }
}
