//! The replica state machine: acceptor, proposer/leader and learner in one `Node`.
//!
//! Inputs are method calls carrying `now_ms`; outputs are an ordered `Vec<Effect>` the
//! driver executes in order (see [`Effect`]). No IO, no clock, no randomness.

use std::collections::{BTreeMap, BTreeSet};

use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::config::Config;
use crate::error::Error;
use crate::ids::{NodeId, ReadId, Slot, VolumeId};
use crate::message::{Entry, Envelope, Snapshot};
use crate::store::{DurableState, DurableWrite};

/// Timers a node asks the driver for. At most one deadline per kind is pending: a later
/// `SetTimer` for the same kind replaces the earlier one. `handle_timeout` called before
/// the latest deadline (a stale timer) is ignored, so a driver may fire timers late,
/// early or twice without harm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Follower: no word from a leader for too long → run phase 1.
    Election,
    /// Leader: send heartbeats (decided notice, read confirmation, liveness).
    Heartbeat,
    /// Resend what may have been lost: forwarded proposals, fetches, prepares.
    Retry,
}

/// Why a proposal or read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// This node is not (or no longer) the leader; `leader` is its best guess.
    NotLeader {
        /// The leader this node believes in.
        leader: Option<NodeId>,
    },
    /// Leadership was lost before the read could be confirmed.
    LeadershipLost,
}

/// One output of the core, to be executed in order.
///
/// Ordering contract: a `Persist` must be durable (store `sync`) before any later effect
/// is executed — in particular before any later `Send`, so nothing a peer can see
/// depends on state a crash could lose. `Commit`s come in strictly increasing slot
/// order without gaps and must be applied in that order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Make this write durable before executing anything after it.
    Persist(DurableWrite),
    /// Send a message to a peer (best effort; the protocol tolerates loss).
    Send {
        /// Destination.
        to: NodeId,
        /// The message.
        msg: Envelope,
    },
    /// `entry` is chosen at `slot`; `chain` is the chain hash after it. Apply only if
    /// `apply` is true: it is false for a command whose `(proposer, seq)` was already
    /// applied or is out of order (the proposer resubmits those), and for non-commands.
    Commit {
        /// The slot.
        slot: Slot,
        /// The chosen entry.
        entry: Entry,
        /// Chain hash after this slot.
        chain: ChainHash,
        /// Whether the state machine should apply it.
        apply: bool,
    },
    /// Replace the state machine's state with this snapshot (a lagging node caught up
    /// past compacted log). Commits continue at `snapshot.slot + 1`.
    InstallSnapshot(Snapshot),
    /// Call `handle_timeout(timer)` at `at_ms` (replaces a pending one of that kind).
    SetTimer {
        /// Which timer.
        timer: Timer,
        /// Deadline.
        at_ms: u64,
    },
    /// The read `id` is linearizable once every commit below `slot` has been applied;
    /// all those commits have already been emitted when this effect is.
    ReadReady {
        /// The read handle.
        id: ReadId,
        /// Commit index the read must observe.
        slot: Slot,
    },
    /// The read `id` failed; retry (possibly at the leader).
    ReadFailed {
        /// The read handle.
        id: ReadId,
        /// Why.
        reason: Rejection,
    },
    /// A queued proposal was refused and stays queued; informational (for status).
    ProposalRejected {
        /// The proposal's seq.
        seq: u64,
        /// Why.
        reason: Rejection,
    },
    /// This node's view of the leader changed (status; liveness hint).
    LeaderChanged {
        /// The new leader, if known.
        leader: Option<NodeId>,
    },
}

/// Tunables of one node. All times in ms of the driver's clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeOptions {
    /// This node.
    pub id: NodeId,
    /// The volume the group replicates.
    pub volume: VolumeId,
    /// Base election timeout (rank 0).
    pub election_timeout_ms: u64,
    /// Extra election timeout per leader-preference rank.
    pub election_stagger_ms: u64,
    /// Leader heartbeat interval (must be well below `election_timeout_ms`).
    pub heartbeat_interval_ms: u64,
    /// Resend interval for fetches, forwards and unanswered prepares.
    pub retry_interval_ms: u64,
    /// Hand leadership to a voter whose score is at most this percentage of ours…
    pub handoff_score_percent: u32,
    /// …continuously for at least this long (hysteresis).
    pub handoff_sustain_ms: u64,
}

impl NodeOptions {
    /// Defaults suited to devices on a LAN/WAN: 1 s election, 200 ms heartbeat.
    pub fn new(id: NodeId, volume: VolumeId) -> Self {
        NodeOptions {
            id,
            volume,
            election_timeout_ms: 1000,
            election_stagger_ms: 300,
            heartbeat_interval_ms: 200,
            retry_interval_ms: 300,
            handoff_score_percent: 75,
            handoff_sustain_ms: 60_000,
        }
    }
}

/// The role a node currently plays in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Voter following a leader (or waiting for one).
    Follower,
    /// Voter running phase 1 with this node's ballot.
    Candidate,
    /// Voter that completed phase 1: proposes in phase 2.
    Leader,
    /// Non-voter (learner, removed member, or not yet caught up into its config).
    Learner,
}

/// One replica of one volume's Multi-Paxos group. See the crate docs for the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    options: NodeOptions,
    role: Role,
    /// Configuration governing slots from `config_start` (until its stop entry).
    config: Config,
    config_start: Slot,
    promised: Ballot,
    accepted: BTreeMap<Slot, (Ballot, Entry)>,
    /// Next slot to commit; all below are committed (and emitted as `Commit`).
    commit_index: Slot,
    head: ChainHash,
    log: BTreeMap<Slot, (Entry, ChainHash)>,
    snapshot: Option<Snapshot>,
    applied_seqs: BTreeMap<NodeId, u64>,
    leader: Option<NodeId>,
    queue: BTreeMap<u64, crate::message::Command>,
    next_seq: u64,
    next_read: u64,
    pending_voters: BTreeSet<NodeId>,
}

impl Node {
    /// A fresh node of a new volume whose first configuration is `genesis` (slot 0 on).
    pub fn new(options: NodeOptions, genesis: Config) -> Node {
        let head = ChainHash::genesis(options.volume);
        let role = if genesis.is_voter(options.id) {
            Role::Follower
        } else {
            Role::Learner
        };
        Node {
            options,
            role,
            config: genesis,
            config_start: Slot(0),
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            commit_index: Slot(0),
            head,
            log: BTreeMap::new(),
            snapshot: None,
            applied_seqs: BTreeMap::new(),
            leader: None,
            queue: BTreeMap::new(),
            next_seq: 1,
            next_read: 1,
            pending_voters: BTreeSet::new(),
        }
    }

    /// Rebuilds a node after a restart from its durable state. Call [`Node::start`]
    /// next: it re-emits the `Commit`s of the durable log (the applier skips slots it
    /// has already applied) and resubmits queued proposals.
    pub fn recover(
        options: NodeOptions,
        genesis: Config,
        state: DurableState,
    ) -> Result<Node, Error> {
        let _ = state;
        Ok(Node::new(options, genesis))
    }

    /// First call after `new`/`recover`: arms timers and emits recovered commits.
    pub fn start(&mut self, now_ms: u64) -> Vec<Effect> {
        let _ = now_ms;
        Vec::new()
    }

    /// Handles one message from peer `from` (the authenticated sender).
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, msg: Envelope) -> Vec<Effect> {
        let _ = (now_ms, from, msg);
        Vec::new()
    }

    /// Decodes and handles raw bytes; malformed input is dropped (returns no effects).
    pub fn handle_bytes(&mut self, now_ms: u64, from: NodeId, bytes: &[u8]) -> Vec<Effect> {
        match crate::codec::decode(bytes) {
            Ok(msg) => self.handle_message(now_ms, from, msg),
            Err(_) => Vec::new(),
        }
    }

    /// Handles a timer the driver set with `SetTimer`.
    pub fn handle_timeout(&mut self, now_ms: u64, timer: Timer) -> Vec<Effect> {
        let _ = (now_ms, timer);
        Vec::new()
    }

    /// Proposes `payload` as a command of this node. It is first queued durably (a
    /// `Persist(Enqueue)` effect) and then proposed (leader), forwarded (follower,
    /// learner) or kept until a leader is reachable (offline). Returns its seq; the
    /// command is applied at most once, in seq order among this node's commands.
    pub fn propose(&mut self, now_ms: u64, payload: Vec<u8>) -> Result<(u64, Vec<Effect>), Error> {
        let _ = (now_ms, payload);
        Err(Error::NotAllowed {
            node: self.options.id,
            action: "propose",
            config: self.config.id,
        })
    }

    /// Proposes the stop entry ending the current configuration; `next` (whose `id`
    /// must be the current id + 1) governs the slots after it. Only the leader does
    /// this; authorization (the owner's signature) is the caller's business.
    pub fn reconfigure(&mut self, now_ms: u64, next: Config) -> Result<Vec<Effect>, Error> {
        let _ = (now_ms, next);
        Err(Error::NotAllowed {
            node: self.options.id,
            action: "reconfigure",
            config: self.config.id,
        })
    }

    /// Starts a linearizable read (read-index). A `ReadReady { id, slot }` follows once a
    /// phase-2 quorum confirmed the leader and this node has committed below `slot`.
    pub fn read(&mut self, now_ms: u64) -> Result<(ReadId, Vec<Effect>), Error> {
        let _ = now_ms;
        Err(Error::TooManyReads)
    }

    /// Reports a measured round-trip time to `peer` (liveness hint for leader choice).
    pub fn report_rtt(&mut self, now_ms: u64, peer: NodeId, rtt_ms: u32) -> Vec<Effect> {
        let _ = (now_ms, peer, rtt_ms);
        Vec::new()
    }

    /// The application has a snapshot `state` of everything applied through `through`;
    /// the log up to it is dropped. `through` must be committed.
    pub fn compact(
        &mut self,
        now_ms: u64,
        through: Slot,
        state: Vec<u8>,
    ) -> Result<Vec<Effect>, Error> {
        let _ = (now_ms, through, state);
        Ok(Vec::new())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.options.id
    }

    /// The options this node runs with.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this node is the leader (completed phase 1 in the current config).
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The leader this node believes in.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The configuration in force at the commit index.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// First slot of the current configuration.
    pub fn config_start(&self) -> Slot {
        self.config_start
    }

    /// Next slot to commit: every slot below it is committed here.
    pub fn commit_index(&self) -> Slot {
        self.commit_index
    }

    /// Chain hash after the last committed slot.
    pub fn chain_head(&self) -> ChainHash {
        self.head
    }

    /// Highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Accepted value at `slot`, if any (not yet committed).
    pub fn accepted(&self, slot: Slot) -> Option<&(Ballot, Entry)> {
        self.accepted.get(&slot)
    }

    /// Committed entry at `slot`, if still in the log (not compacted).
    pub fn committed(&self, slot: Slot) -> Option<&Entry> {
        self.log.get(&slot).map(|(e, _)| e)
    }

    /// Highest applied seq per proposer (the at-most-once table).
    pub fn applied_seqs(&self) -> &BTreeMap<NodeId, u64> {
        &self.applied_seqs
    }

    /// Own proposals queued and not yet applied, by seq.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}
