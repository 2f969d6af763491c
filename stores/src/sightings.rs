//! Which access-token digests Redis answered for recently: the near cache's admission test.
//!
//! Putting a record into the near cache costs far more than its instruction count suggests: the
//! cache's write bookkeeping (frequency sketch, access-order queues, the lifetime's timer wheel)
//! runs in batches on the inserting thread, and a node meeting many tokens once each (a client
//! that takes a fresh token per call, a node that joined after the tokens were issued) spent its
//! time inserting records it never read again. A record read from Redis is therefore cached on the
//! second sighting of its digest, not the first: a token in use is served from memory from its
//! third request on, and a token used once never costs an insert.
//!
//! The table holds one 32-bit fingerprint per slot, written and read with atomics: no lock, no
//! allocation after start. Digests are SHA-256 outputs, uniform already, so slot and fingerprint
//! are plain slices of them. Two digests sharing a slot overwrite each other (one of them is
//! admitted a sighting later), and two sharing slot and fingerprint admit each other a sighting
//! early: both only move when a record is cached, never what a lookup answers.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::model::TokenHash;

/// Fewest slots, so a small near cache still remembers a burst of first sightings.
const MIN_SLOTS: usize = 1 << 12;
/// Most slots (4 MiB of fingerprints).
const MAX_SLOTS: usize = 1 << 20;

/// The fingerprint of the digest last seen in each slot.
pub(crate) struct Sightings {
    slots: Box<[AtomicU32]>,
    mask: usize,
}

impl Sightings {
    /// A table with a slot per near-cache entry (rounded up to a power of two, within bounds).
    pub(crate) fn sized_for(entries: u64) -> Self {
        let wanted = usize::try_from(entries).unwrap_or(MAX_SLOTS);
        let len = wanted.clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two();
        Self {
            slots: (0..len).map(|_| AtomicU32::new(0)).collect(),
            mask: len - 1,
        }
    }

    /// Records a sighting of `hash` and tells whether its slot held it already: the second of
    /// two sightings in a row answers `true`.
    pub(crate) fn seen_again(&self, hash: &TokenHash) -> bool {
        let [s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, ..] = hash.0;
        let slot = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // Never 0, which is an empty slot's value.
        let fingerprint = u32::from_le_bytes([f0, f1, f2, f3]) | 1;
        // Truncating the slot bits is the point: `mask` keeps the low ones.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "only the bits under the mask are used"
        )]
        let index = slot as usize & self.mask;
        self.slots[index].swap(fingerprint, Ordering::Relaxed) == fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(slot: u64, fingerprint: u32) -> TokenHash {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&slot.to_le_bytes());
        bytes[8..12].copy_from_slice(&fingerprint.to_le_bytes());
        TokenHash(bytes)
    }

    #[test]
    fn a_digest_is_seen_again_from_its_second_sighting() {
        let table = Sightings::sized_for(1_000);
        let d = digest(7, 0xdead_beef);
        assert!(!table.seen_again(&d));
        assert!(table.seen_again(&d));
        assert!(table.seen_again(&d));
    }

    #[test]
    fn a_digest_that_shares_its_slot_pushes_the_other_out() {
        let table = Sightings::sized_for(1_000);
        let len = table.slots.len() as u64;
        let a = digest(3, 0x1111_1110);
        let b = digest(3 + len, 0x2222_2222);
        assert!(!table.seen_again(&a));
        assert!(!table.seen_again(&b), "same slot, another fingerprint");
        assert!(!table.seen_again(&a), "b replaced a");
        assert!(table.seen_again(&a));
    }

    #[test]
    fn an_all_zero_digest_is_not_taken_for_an_empty_slot() {
        let table = Sightings::sized_for(0);
        let zero = TokenHash([0; 32]);
        assert!(!table.seen_again(&zero));
        assert!(table.seen_again(&zero));
    }

    #[test]
    fn the_table_is_a_power_of_two_within_its_bounds() {
        assert_eq!(Sightings::sized_for(0).slots.len(), MIN_SLOTS);
        assert_eq!(Sightings::sized_for(200_000).slots.len(), 1 << 18);
        assert_eq!(Sightings::sized_for(u64::MAX).slots.len(), MAX_SLOTS);
    }
}
