//! Configurations: who votes, who only learns, and how big the quorums are.
//!
//! A configuration governs a contiguous range of slots: it starts at the slot after the
//! previous configuration's stop entry and ends at the slot holding its own chosen
//! `Entry::Reconfigure` (Stoppable Paxos). Quorums are *flexible* (Flexible Paxos): any
//! `phase1_quorum` voters for phase 1 and any `phase2_quorum` voters for phase 2, with
//! `phase1_quorum + phase2_quorum > voters`, so every phase-1 quorum meets every
//! phase-2 quorum. Witnesses are voters that never lead and never apply entries; they
//! only store (sealed) accepted values, which lets two devices and one witness keep
//! committing while either device is off.

use std::collections::BTreeSet;

use crate::error::Error;
use crate::ids::{ConfigId, NodeId};
use crate::limits::{LEARNERS_MAX, VOTERS_MAX};

/// Membership and quorum sizes of one configuration. Build with [`Config::new`], which
/// validates; decoded configurations are validated too.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Consecutive number; also the ballot epoch of this configuration.
    pub id: ConfigId,
    /// Acceptors, including witnesses (1..=`VOTERS_MAX`).
    pub voters: BTreeSet<NodeId>,
    /// Subset of `voters` that vote but never lead and hold sealed bytes only.
    pub witnesses: BTreeSet<NodeId>,
    /// Non-voting members that pull committed entries (≤ `LEARNERS_MAX`).
    pub learners: BTreeSet<NodeId>,
    /// Size of a phase-1 (prepare/promise) quorum.
    pub phase1_quorum: u8,
    /// Size of a phase-2 (accept/accepted) quorum; also used to confirm reads.
    pub phase2_quorum: u8,
}

impl Config {
    /// A configuration with majority quorums for both phases.
    pub fn majority(
        id: ConfigId,
        voters: impl IntoIterator<Item = NodeId>,
        witnesses: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Result<Config, Error> {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        let majority = u8::try_from(voters.len() / 2 + 1).unwrap_or(u8::MAX);
        Config::new(id, voters, witnesses, learners, majority, majority)
    }

    /// A validated configuration with explicit (flexible) quorum sizes.
    pub fn new(
        id: ConfigId,
        voters: impl IntoIterator<Item = NodeId>,
        witnesses: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
        phase1_quorum: u8,
        phase2_quorum: u8,
    ) -> Result<Config, Error> {
        let config = Config {
            id,
            voters: voters.into_iter().collect(),
            witnesses: witnesses.into_iter().collect(),
            learners: learners.into_iter().collect(),
            phase1_quorum,
            phase2_quorum,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the structural rules every configuration must satisfy.
    pub fn validate(&self) -> Result<(), Error> {
        let voters = self.voters.len();
        let invalid = |reason: &'static str| Err(Error::InvalidConfig { reason });
        if voters == 0 || voters > VOTERS_MAX {
            return invalid("voter count must be 1..=VOTERS_MAX");
        }
        if self.learners.len() > LEARNERS_MAX {
            return invalid("too many learners");
        }
        if !self.witnesses.is_subset(&self.voters) {
            return invalid("witnesses must be voters");
        }
        if self.witnesses.len() >= voters {
            return invalid("at least one voter must be able to lead");
        }
        if !self.learners.is_disjoint(&self.voters) {
            return invalid("a node is either a voter or a learner");
        }
        let (q1, q2) = (
            usize::from(self.phase1_quorum),
            usize::from(self.phase2_quorum),
        );
        if q1 == 0 || q2 == 0 || q1 > voters || q2 > voters {
            return invalid("quorum sizes must be 1..=voters");
        }
        if q1 + q2 <= voters {
            return invalid("phase-1 and phase-2 quorums must intersect");
        }
        Ok(())
    }

    /// Whether `node` votes (acceptor, possibly a witness).
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node)
    }

    /// Whether `node` may lead (a voter that is not a witness).
    pub fn can_lead(&self, node: NodeId) -> bool {
        self.is_voter(node) && !self.witnesses.contains(&node)
    }

    /// Whether `node` is a member at all (voter or learner).
    pub fn is_member(&self, node: NodeId) -> bool {
        self.is_voter(node) || self.learners.contains(&node)
    }

    /// Whether the voters in `acks` form a phase-1 quorum (non-voters are not counted).
    pub fn is_phase1_quorum<'a>(&self, acks: impl IntoIterator<Item = &'a NodeId>) -> bool {
        self.count_voters(acks) >= usize::from(self.phase1_quorum)
    }

    /// Whether the voters in `acks` form a phase-2 quorum (non-voters are not counted).
    pub fn is_phase2_quorum<'a>(&self, acks: impl IntoIterator<Item = &'a NodeId>) -> bool {
        self.count_voters(acks) >= usize::from(self.phase2_quorum)
    }

    fn count_voters<'a>(&self, acks: impl IntoIterator<Item = &'a NodeId>) -> usize {
        acks.into_iter().filter(|n| self.is_voter(**n)).count()
    }

    /// Every member except `me` (voters first, then learners), in id order.
    pub fn others(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .iter()
            .chain(self.learners.iter())
            .copied()
            .filter(move |n| *n != me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    #[test]
    fn majority_of_three_is_two() {
        let c = Config::majority(ConfigId(1), ids(&[1, 2, 3]), [], []).unwrap();
        assert_eq!((c.phase1_quorum, c.phase2_quorum), (2, 2));
        assert!(c.is_phase2_quorum(&ids(&[1, 3])));
        assert!(!c.is_phase2_quorum(&ids(&[1, 9])));
    }

    #[test]
    fn non_intersecting_quorums_are_refused() {
        let err = Config::new(ConfigId(1), ids(&[1, 2, 3, 4]), [], [], 2, 2).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }));
        assert!(Config::new(ConfigId(1), ids(&[1, 2, 3, 4]), [], [], 3, 2).is_ok());
    }

    #[test]
    fn witness_rules() {
        assert!(Config::majority(ConfigId(1), ids(&[1]), ids(&[1]), []).is_err());
        assert!(Config::majority(ConfigId(1), ids(&[1, 2]), ids(&[3]), []).is_err());
        let c = Config::majority(ConfigId(1), ids(&[1, 2, 3]), ids(&[3]), []).unwrap();
        assert!(c.is_voter(NodeId(3)) && !c.can_lead(NodeId(3)));
    }

    #[test]
    fn bounds() {
        let too_many: Vec<NodeId> = (0..10).map(NodeId).collect();
        assert!(Config::majority(ConfigId(1), too_many, [], []).is_err());
        let learners: Vec<NodeId> = (100..351).map(NodeId).collect();
        assert!(Config::majority(ConfigId(1), ids(&[1]), [], learners).is_err());
        assert!(Config::majority(ConfigId(1), ids(&[1]), [], ids(&[1])).is_err());
    }
}
