//! Identifier newtypes shared by every part of the protocol.
//!
//! All are plain integers so that states stay `Copy + Ord + Hash` (stateright needs
//! hashable, totally ordered state) and encode as fixed-width little-endian fields.

use std::fmt;

/// One replica (a device, a witness or a learner) of a volume's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// The volume whose log this group agrees on; every message names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VolumeId(pub u128);

/// A configuration (membership + quorum sizes). Configurations are numbered
/// consecutively from the genesis configuration; the number doubles as the ballot
/// *epoch*, so every ballot of configuration `c + 1` is above every ballot of `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigId(pub u64);

/// The epoch part of a ballot: the configuration the ballot belongs to.
pub type Epoch = ConfigId;

/// A position in the replicated log. Slot 0 is the first slot of the genesis config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Slot(pub u64);

/// Handle of a linearizable read started with [`crate::Node::read`]. A node never
/// reuses one, not even across restarts (ids are reserved durably in blocks): the
/// leader's reply names the request by it, and a reply to a request sent before a
/// crash must not answer a read started after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReadId(pub u64);

impl ConfigId {
    /// The configuration that follows this one.
    #[must_use]
    pub fn next(self) -> ConfigId {
        ConfigId(self.0.saturating_add(1))
    }
}

impl Slot {
    /// The following slot (saturating: `u64::MAX` slots are never reached).
    #[must_use]
    pub fn next(self) -> Slot {
        Slot(self.0.saturating_add(1))
    }

    /// `self + n`, saturating.
    #[must_use]
    pub fn plus(self, n: u64) -> Slot {
        Slot(self.0.saturating_add(n))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}
