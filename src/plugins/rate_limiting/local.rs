//! The `local` policy: this node's counters, in memory.
//!
//! Why this shape: a node's limit must hold across its proxy worker threads (per-worker maps would
//! split it), and the hot path must take no lock. So the counters of one (plugin instance, client)
//! pair live in one shared map whose reads take no lock (moka's concurrent hash table), and each of
//! the six windows is one `AtomicU64` holding the window's tag (its start, 24 bits) and its count
//! (40 bits), updated by compare-and-swap: a request is counted only while the count is under the
//! limit, so a window never admits more than its limit however many threads race. A window whose
//! tag is not the current one counts as empty and is overwritten in place, so old windows take no
//! memory. With several windows, a request refused by a later one is taken back from the earlier
//! ones: a refused request counts nowhere (under a race at the limit a concurrent request may be
//! refused while a take-back is in flight: the error is on the safe side).
//!
//! Memory is bounded: at most [`CAPACITY`] pairs are kept (least recently used first out), and a
//! pair idle for longer than its longest window is dropped, having nothing left to count.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::window::Period;

/// Most (plugin instance, client) pairs kept; a few hundred bytes each.
pub const CAPACITY: u64 = 200_000;

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

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Id(id) => id.fmt(f),
            Self::Text(text) => f.write_str(text),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    plugin: Uuid,
    who: Identifier,
}

/// The windows of one pair.
struct Slots {
    windows: [AtomicU64; 6],
    /// How long the pair may stay idle (its longest window).
    idle: Duration,
}

struct IdleForLongestWindow;

impl moka::Expiry<Key, Arc<Slots>> for IdleForLongestWindow {
    fn expire_after_create(&self, _: &Key, slots: &Arc<Slots>, _: Instant) -> Option<Duration> {
        Some(slots.idle)
    }
    fn expire_after_read(
        &self,
        _: &Key,
        slots: &Arc<Slots>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(slots.idle)
    }
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
    pairs: moka::sync::Cache<Key, Arc<Slots>>,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self {
            pairs: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(IdleForLongestWindow)
                .build(),
        }
    }
}

impl LocalCounters {
    /// Checks a request against `checks` and counts it in each when it is under every limit.
    /// Returns whether it was admitted and each window's count before it (in `before`).
    pub fn check_and_count(
        &self,
        plugin: Uuid,
        who: Identifier,
        checks: &[Check],
        before: &mut [u64; 6],
    ) -> bool {
        let idle = checks
            .iter()
            .map(|c| Duration::from_secs(c.period.expiration()))
            .max()
            .unwrap_or(Duration::from_secs(1));
        let slots = self.pairs.get_with(Key { plugin, who }, || {
            Arc::new(Slots {
                windows: Default::default(),
                idle,
            })
        });
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
                &checks(3, 10, now),
                &mut before
            ));
            assert_eq!(before[..2], [n, n]);
        }
        assert!(!counters.check_and_count(plugin, who.clone(), &checks(3, 10, now), &mut before));
        assert_eq!(
            before[..2],
            [3, 3],
            "the refused request counted in no window"
        );
        // The next minute starts empty; the hour remembers.
        let later = now + 60;
        assert!(counters.check_and_count(plugin, who, &checks(3, 10, later), &mut before));
        assert_eq!(before[..2], [0, 3]);
    }

    #[test]
    fn a_refusal_by_a_later_window_is_taken_back_from_the_earlier_ones() {
        let counters = LocalCounters::default();
        let (plugin, who) = (Uuid::new_v4(), Identifier::Text(Arc::from("v1")));
        let now = 1_709_214_330;
        let mut before = [0; 6];
        assert!(counters.check_and_count(plugin, who.clone(), &checks(5, 1, now), &mut before));
        assert!(!counters.check_and_count(plugin, who.clone(), &checks(5, 1, now), &mut before));
        assert_eq!(before[..2], [1, 1]);
        assert!(!counters.check_and_count(plugin, who, &checks(5, 1, now), &mut before));
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
}
