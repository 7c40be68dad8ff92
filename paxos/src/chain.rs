//! The hash chain over committed entries.
//!
//! `chain(slot) = BLAKE3(chain(slot - 1) ‖ slot as u64 LE ‖ encode(entry))`, starting
//! from a genesis hash derived from the volume id. A learner that knows a head
//! `chain(n)` from the leader (or a snapshot) verifies every entry it pulls from any
//! voter, so a voter cannot hand it a different history without detection.

use crate::codec;
use crate::ids::{Slot, VolumeId};
use crate::message::Entry;

/// A 32-byte chain hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The chain value "before slot 0" of `volume`.
    pub fn genesis(volume: VolumeId) -> ChainHash {
        let mut hasher = blake3::Hasher::new_derive_key("kith paxos chain genesis v1");
        hasher.update(&volume.0.to_le_bytes());
        ChainHash(*hasher.finalize().as_bytes())
    }

    /// The chain value after committing `entry` at `slot` on top of `self`.
    pub fn extend(&self, slot: Slot, entry: &Entry) -> ChainHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.0);
        hasher.update(&slot.0.to_le_bytes());
        codec::write_entry(entry, &mut hasher);
        ChainHash(*hasher.finalize().as_bytes())
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, ..] = self.0;
        write!(f, "ChainHash({a:02x}{b:02x}{c:02x}{d:02x}…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_slot_entry_and_prev() {
        let g = ChainHash::genesis(VolumeId(7));
        assert_ne!(g, ChainHash::genesis(VolumeId(8)));
        let a = g.extend(Slot(0), &Entry::Noop);
        assert_ne!(a, g.extend(Slot(1), &Entry::Noop));
        assert_ne!(a, a.extend(Slot(0), &Entry::Noop));
        assert_eq!(a, g.extend(Slot(0), &Entry::Noop));
    }
}
