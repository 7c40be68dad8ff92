//! Log entries and the messages replicas exchange (encoding lives in `codec`).
//!
//! Every message travels in an [`Envelope`] naming the volume, the sender's current
//! configuration and the sender's ballot; the sender's identity is *not* a field — it is
//! the authenticated connection's device, passed to `Node::handle_message` as `from`.
//! A receiver drops anything for another volume, and treats another configuration as a
//! hint that one side lags (the lagging side catches up; nothing is accepted across
//! configurations).

use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::config::Config;
use crate::ids::{ConfigId, NodeId, ReadId, Slot, VolumeId};
use std::collections::BTreeMap;

/// The value of one log slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Fills a slot a new leader found empty; applies as nothing.
    Noop,
    /// A state-machine command (opaque, sealed bytes) from a proposer.
    Command(Command),
    /// Stop sign: this configuration ends at this slot; `Config` governs the slots after
    /// it. Its `id` must be the current id + 1.
    Reconfigure(Config),
}

/// A proposed state-machine command. `(proposer, seq)` identifies it; the applier sees
/// each pair at most once and, per proposer, in increasing `seq` order without gaps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    /// The node that proposed it (its queue owns `seq`).
    pub proposer: NodeId,
    /// Per-proposer sequence number, starting at 1.
    pub seq: u64,
    /// Opaque bytes (a sealed fossil operation), ≤ `ENTRY_BYTES_MAX`.
    pub payload: Vec<u8>,
}

/// State-machine snapshot plus what the log needs to continue after it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// The last slot the snapshot covers (applied through this slot).
    pub slot: Slot,
    /// Chain hash after `slot`.
    pub chain: ChainHash,
    /// The configuration governing `slot + 1`.
    pub config: Config,
    /// Highest applied `seq` per proposer (the at-most-once table).
    pub applied_seqs: BTreeMap<NodeId, u64>,
    /// Opaque state-machine bytes (fossil's checkpoint), ≤ `SNAPSHOT_BYTES_MAX`.
    pub state: Vec<u8>,
}

/// One message with its routing and safety context.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// The volume (group) this message belongs to.
    pub volume: VolumeId,
    /// The sender's current configuration.
    pub config: ConfigId,
    /// The sender's ballot: for leader messages the ballot they act under, for acceptor
    /// replies the ballot they answer, otherwise the highest the sender has seen.
    pub ballot: Ballot,
    /// The message proper.
    pub body: Body,
}

/// Protocol messages. Slot ranges are `[first, first + entries.len())`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// Phase 1a: "promise me `ballot` for every slot ≥ `first`".
    Prepare {
        /// First slot the candidate has not seen chosen.
        first: Slot,
    },
    /// Phase 1b: promised; here is everything I accepted at or after `first`.
    Promise {
        /// Echo of the prepare's `first`.
        first: Slot,
        /// The acceptor's commit index (all slots below it are chosen and known to it).
        committed: Slot,
        /// Accepted `(ballot, entry)` per slot ≥ max(first, committed).
        accepted: Vec<(Slot, Ballot, Entry)>,
    },
    /// Phase 2a for a batch of consecutive slots; `decided` piggybacks the leader's
    /// commit index (all slots below it are chosen).
    Accept {
        /// First slot of the batch.
        first: Slot,
        /// One entry per slot.
        entries: Vec<Entry>,
        /// Leader's commit index.
        decided: Slot,
    },
    /// Phase 2b: accepted the batch `[first, first + count)` at the envelope's ballot.
    Accepted {
        /// First slot of the batch.
        first: Slot,
        /// Number of slots.
        count: u32,
    },
    /// The ballot in the envelope was refused: the acceptor promised `promised`.
    Reject {
        /// The acceptor's promised ballot.
        promised: Ballot,
        /// The acceptor's commit index (a lagging leader learns to catch up).
        committed: Slot,
    },
    /// Leader liveness + commit notice + read-index confirmation round.
    Heartbeat {
        /// Leader's commit index.
        decided: Slot,
        /// Chain hash at `decided` (learners verify what they pull against it).
        head: ChainHash,
        /// Confirmation round number (read-index); acks echo it.
        round: u64,
        /// Leader-preference ranking, best first (liveness hint only).
        ranking: Vec<NodeId>,
    },
    /// Answer to a heartbeat: still promised to the envelope's ballot.
    HeartbeatAck {
        /// Echo of the heartbeat's round.
        round: u64,
        /// The acker's commit index.
        committed: Slot,
        /// The acker's quorum RTT score in ms (lower is better); `u32::MAX` if unknown.
        score_ms: u32,
    },
    /// Ask for committed entries from `first` (catch-up and learner pull).
    Fetch {
        /// First slot wanted.
        first: Slot,
    },
    /// Committed entries `[first, first + entries.len())`, chained from `prev`.
    Entries {
        /// First slot.
        first: Slot,
        /// Chain hash before `first`.
        prev: ChainHash,
        /// Committed entries.
        entries: Vec<Entry>,
        /// The sender's commit index (more may follow).
        committed: Slot,
    },
    /// The requested slots were compacted: start from this snapshot.
    SnapshotData {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// A proposer's queued commands, forwarded to the leader in `seq` order.
    Forward {
        /// Commands (all from the sending proposer).
        commands: Vec<Command>,
    },
    /// "I am not the leader; try `leader`."
    Redirect {
        /// The leader this node believes in, if any.
        leader: Option<NodeId>,
    },
    /// A follower asks the leader for a read index.
    ReadIndexRequest {
        /// The follower's read handle.
        id: ReadId,
    },
    /// The leader's answer: the read may be served once applied through `slot - 1`
    /// (i.e. commit index ≥ `slot`); `None` = refused (not leader), retry elsewhere.
    ReadIndexReply {
        /// The follower's read handle.
        id: ReadId,
        /// The confirmed commit index, if confirmed.
        slot: Option<Slot>,
    },
    /// Leadership hand-off (hysteresis): the leader asks a better-placed voter to start
    /// an election now. Liveness only.
    TimeoutNow,
}
