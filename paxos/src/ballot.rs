//! Ballots: the totally ordered proposal numbers of Paxos.
//!
//! A ballot is `(epoch, round, node)`, compared lexicographically in that order (the
//! derived `Ord` follows field order). The epoch is the configuration id, so a new
//! configuration's ballots outrank every ballot of the previous one; the node part
//! makes ballots of different proposers distinct, so two leaders never share one.

use crate::ids::{ConfigId, NodeId};

/// A Paxos ballot. `Ballot::ZERO` is below every ballot a node can use (rounds start at 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    /// The configuration this ballot belongs to.
    pub epoch: ConfigId,
    /// Increases with every election attempt inside one epoch.
    pub round: u64,
    /// The proposer (leader candidate) that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot no acceptor has promised anything to.
    pub const ZERO: Ballot = Ballot {
        epoch: ConfigId(0),
        round: 0,
        node: NodeId(0),
    };

    /// The smallest ballot `node` owns in `epoch` that is above `self`.
    #[must_use]
    pub fn successor(self, epoch: ConfigId, node: NodeId) -> Ballot {
        let round = if epoch > self.epoch {
            1
        } else {
            self.round.saturating_add(1)
        };
        Ballot {
            epoch: epoch.max(self.epoch),
            round,
            node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_epoch_then_round_then_node() {
        let b = |e, r, n| Ballot {
            epoch: ConfigId(e),
            round: r,
            node: NodeId(n),
        };
        assert!(b(1, 9, 9) < b(2, 1, 1));
        assert!(b(1, 1, 9) < b(1, 2, 1));
        assert!(b(1, 1, 1) < b(1, 1, 2));
        assert!(Ballot::ZERO < b(0, 1, 0));
    }

    #[test]
    fn successor_is_above_and_owned() {
        let seen = Ballot {
            epoch: ConfigId(3),
            round: 7,
            node: NodeId(2),
        };
        let next = seen.successor(ConfigId(3), NodeId(1));
        assert!(next > seen);
        assert_eq!(next.node, NodeId(1));
        let next_epoch = seen.successor(ConfigId(4), NodeId(1));
        assert_eq!((next_epoch.epoch, next_epoch.round), (ConfigId(4), 1));
    }
}
