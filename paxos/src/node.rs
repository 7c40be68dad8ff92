//! The replica state machine: acceptor, proposer/leader and learner in one `Node`.
//!
//! Inputs are method calls carrying `now_ms`; outputs are an ordered `Vec<Effect>` the
//! driver executes in order (see [`Effect`]). No IO, no clock, no randomness.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::config::Config;
use crate::error::Error;
use crate::ids::{NodeId, ReadId, Slot, VolumeId};
use crate::limits::{
    ENTRY_BYTES_MAX, QUEUE_ENTRIES_MAX, READ_IDS_PER_RESERVATION, READS_PENDING_MAX,
    SNAPSHOT_BYTES_MAX,
};
use crate::message::{Body, Command, Entry, Envelope, Snapshot};
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
    /// Configuration governing slots from `config_start` until its stop entry.
    config: Config,
    config_start: Slot,
    /// State as of the last snapshot (or genesis): what the log replays on top of.
    base: Base,

    // Acceptor.
    promised: Ballot,
    /// Accepted `(ballot, entry)` for slots ≥ `commit_index` of the current config.
    accepted: BTreeMap<Slot, (Ballot, Entry)>,
    /// Highest ballot seen from a voter of this configuration (to pick ours above it).
    ballot_seen: Ballot,

    // Learner (every node learns).
    /// Next slot to commit: every slot below it is committed and emitted.
    commit_index: Slot,
    head: ChainHash,
    /// Committed entries after the snapshot.
    log: BTreeMap<Slot, LogRecord>,
    /// Highest commit index anyone told us about (we fetch up to it).
    known_decided: Slot,
    snapshot: Option<Snapshot>,
    applied_seqs: BTreeMap<NodeId, u64>,
    /// Latest `(decided, head)` a leader announced: verified when reached.
    trusted_head: Option<(Slot, ChainHash)>,
    fetch_sent_ms: Option<u64>,
    /// Node we last asked for entries (its replies are accepted even from outside our
    /// configuration: it may already be in a later one).
    fetch_from: Option<NodeId>,

    // Follower / elections.
    leader: Option<NodeId>,
    last_leader_contact_ms: u64,
    /// Leader-preference ranking from the leader's heartbeats, best first.
    ranking: Vec<NodeId>,
    rtts_ms: BTreeMap<NodeId, u32>,
    candidate: Option<Candidate>,
    lead: Option<LeaderState>,

    // Proposer.
    queue: BTreeMap<u64, Command>,
    next_seq: u64,

    // Reads started here and waiting for the leader's index or for commits.
    reads: BTreeMap<ReadId, Option<Slot>>,
    next_read: u64,
    /// Ids up to this one are durably reserved (`DurableWrite::ReserveReadIds`); a
    /// read beyond it reserves the next block before its id can reach a peer.
    read_ids_reserved: u64,

    /// Latest deadline per timer kind (earlier firings are stale).
    timers: BTreeMap<Timer, u64>,
    /// Set when this node led the configuration that just stopped: it runs phase 1 in
    /// the next one at once instead of waiting for an election timeout.
    handover: bool,
}

/// One committed slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LogRecord {
    entry: Entry,
    /// Chain hash after this slot.
    chain: ChainHash,
    /// The `apply` flag its `Commit` carried.
    apply: bool,
}

/// What the log starts from: genesis or the latest snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Base {
    /// First slot after the base.
    next: Slot,
    head: ChainHash,
    config: Config,
    config_start: Slot,
    applied_seqs: BTreeMap<NodeId, u64>,
}

/// Phase 1 in progress.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Candidate {
    ballot: Ballot,
    first: Slot,
    /// Per voter: its commit index and accepted values at or after `first`.
    promises: BTreeMap<NodeId, (Slot, Vec<AcceptedValue>)>,
}

/// `(slot, ballot, entry)` as reported in a promise.
type AcceptedValue = (Slot, Ballot, Entry);

/// Phase 2 leadership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaderState {
    ballot: Ballot,
    /// Next slot to assign.
    next_slot: Slot,
    /// A stop entry was proposed: nothing more in this configuration.
    stopped: bool,
    /// Proposed batches not yet committed, by first slot.
    batches: BTreeMap<Slot, Batch>,
    /// Entries waiting for the pipelining window.
    pending: VecDeque<Entry>,
    /// Highest seq per proposer already proposed (or found) in this leadership.
    proposed_seqs: BTreeMap<NodeId, u64>,
    /// Heartbeat / read-confirmation round.
    round: u64,
    acked_rounds: BTreeMap<NodeId, u64>,
    reads: Vec<LeaderRead>,
    /// Quorum-RTT scores reported by voters (ms).
    scores: BTreeMap<NodeId, u32>,
    /// A voter that has been clearly better placed since this time.
    better_since: Option<(NodeId, u64)>,
    /// Commit index each voter last reported.
    commits: BTreeMap<NodeId, Slot>,
    /// When each voter last acknowledged us (check-quorum).
    acked_ms: BTreeMap<NodeId, u64>,
    /// When this leadership began.
    since_ms: u64,
    heartbeats_sent: u64,
    learners_told: Slot,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Batch {
    /// Slots in the batch; the entries themselves are in `accepted` (our own
    /// acceptance at our ballot, which nothing replaces while we lead).
    count: u64,
    bytes: usize,
    acks: BTreeSet<NodeId>,
    chosen: bool,
}

/// A read the leader confirms with a heartbeat round.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaderRead {
    /// `None` = started at the leader itself.
    origin: Option<NodeId>,
    id: ReadId,
    round: u64,
    slot: Slot,
}

mod acceptor;
mod catchup;
mod leader;

impl Node {
    /// A fresh node of a new volume whose first configuration is `genesis` (slot 0 on).
    /// A node joining an existing volume starts the same way and catches up.
    pub fn new(options: NodeOptions, genesis: Config) -> Node {
        let head = ChainHash::genesis(options.volume);
        let base = Base {
            next: Slot(0),
            head,
            config: genesis.clone(),
            config_start: Slot(0),
            applied_seqs: BTreeMap::new(),
        };
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
            base,
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            ballot_seen: Ballot::ZERO,
            commit_index: Slot(0),
            head,
            log: BTreeMap::new(),
            known_decided: Slot(0),
            snapshot: None,
            applied_seqs: BTreeMap::new(),
            trusted_head: None,
            fetch_sent_ms: None,
            fetch_from: None,
            leader: None,
            last_leader_contact_ms: 0,
            ranking: Vec::new(),
            rtts_ms: BTreeMap::new(),
            candidate: None,
            lead: None,
            queue: BTreeMap::new(),
            next_seq: 1,
            reads: BTreeMap::new(),
            next_read: 1,
            read_ids_reserved: 0,
            timers: BTreeMap::new(),
            handover: false,
        }
    }

    /// Rebuilds a node after a restart from its durable state (with the same `genesis`
    /// it was created with). Call [`Node::start`] next: it re-emits `InstallSnapshot`
    /// (if any) and the `Commit`s of the durable log — an applier that kept its own
    /// state skips slots it already applied — and resubmits queued proposals.
    ///
    /// Fails with `ChainMismatch` if the durable log does not hash to its stored head.
    pub fn recover(
        options: NodeOptions,
        genesis: Config,
        state: DurableState,
    ) -> Result<Node, Error> {
        let mut node = Node::new(options, genesis);
        if let Some(snapshot) = state.snapshot {
            node.reset_to_snapshot(snapshot);
        }
        let mut scratch = Vec::new();
        for (slot, entry) in state.committed {
            if slot < node.commit_index {
                continue;
            }
            if slot != node.commit_index {
                return Err(Error::ChainMismatch { slot });
            }
            node.commit_one(0, entry, &mut scratch);
        }
        if let Some(head) = state.head
            && head != node.head
        {
            return Err(Error::ChainMismatch {
                slot: node.commit_index,
            });
        }
        node.promised = state.promised;
        node.ballot_seen = state.promised;
        // Accepted values below the commit index are settled; those of older epochs
        // belong to a stopped configuration and can never be chosen.
        node.accepted = state
            .accepted
            .into_iter()
            .filter(|(slot, (ballot, _))| {
                *slot >= node.commit_index && ballot.epoch == node.config.id
            })
            .collect();
        let applied_own = node.applied_own();
        node.queue = state
            .queue
            .into_iter()
            .filter(|(seq, _)| *seq > applied_own)
            .collect();
        node.next_seq = node
            .queue
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(applied_own)
            .saturating_add(1);
        // Ids reserved before the crash may have been sent: start above all of them.
        node.read_ids_reserved = state.read_ids_reserved.0;
        node.next_read = state.read_ids_reserved.0.saturating_add(1);
        node.role = if node.config.is_voter(node.id()) {
            Role::Follower
        } else {
            Role::Learner
        };
        Ok(node)
    }

    /// First call after `new`/`recover`: emits recovered state and arms timers.
    pub fn start(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        // A (re)started driver holds no timers: whatever recovery recorded is void.
        self.timers.clear();
        self.handover = false;
        self.last_leader_contact_ms = now_ms;
        if let Some(snapshot) = &self.snapshot {
            fx.push(Effect::InstallSnapshot(snapshot.clone()));
        }
        for (slot, record) in &self.log {
            fx.push(Effect::Commit {
                slot: *slot,
                entry: record.entry.clone(),
                chain: record.chain,
                apply: record.apply,
            });
        }
        self.arm_election(now_ms, &mut fx);
        self.arm_retry(now_ms, &mut fx);
        fx
    }

    /// Handles one message from peer `from` (the authenticated sender).
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, msg: Envelope) -> Vec<Effect> {
        let mut fx = Vec::new();
        if msg.volume != self.options.volume || from == self.id() {
            return fx;
        }
        let Envelope {
            config,
            ballot,
            body,
            ..
        } = msg;
        if config != self.config.id {
            self.on_other_config(now_ms, from, config, body, &mut fx);
            return fx;
        }
        match body {
            Body::Prepare { first } => self.on_prepare(now_ms, from, ballot, first, &mut fx),
            Body::Promise {
                first,
                committed,
                accepted,
            } => self.on_promise(now_ms, from, ballot, first, committed, accepted, &mut fx),
            Body::Accept {
                first,
                entries,
                decided,
            } => self.on_accept(now_ms, from, ballot, first, entries, decided, &mut fx),
            Body::Accepted { first, count } => {
                self.on_accepted(now_ms, from, ballot, first, count, &mut fx);
            }
            Body::Reject {
                promised,
                committed,
            } => self.on_reject(now_ms, from, ballot, promised, committed, &mut fx),
            Body::Heartbeat {
                decided,
                head,
                round,
                ranking,
            } => self.on_heartbeat(now_ms, from, ballot, decided, head, round, ranking, &mut fx),
            Body::HeartbeatAck {
                round,
                committed,
                score_ms,
            } => self.on_heartbeat_ack(now_ms, from, ballot, round, committed, score_ms, &mut fx),
            Body::Fetch { first } => self.on_fetch(from, config, first, &mut fx),
            Body::Entries {
                first,
                prev,
                entries,
                committed,
            } => self.on_entries(now_ms, from, first, prev, entries, committed, &mut fx),
            Body::SnapshotData { snapshot } => self.on_snapshot(now_ms, from, snapshot, &mut fx),
            Body::Forward { commands } => self.on_forward(now_ms, from, commands, &mut fx),
            Body::Redirect { leader } => self.on_redirect(now_ms, from, leader, &mut fx),
            Body::ReadIndexRequest { id } => self.on_read_request(now_ms, from, id, &mut fx),
            Body::ReadIndexReply { id, slot } => self.on_read_reply(from, id, slot, &mut fx),
            Body::TimeoutNow => self.on_timeout_now(now_ms, from, &mut fx),
        }
        fx
    }

    /// Decodes and handles raw bytes; malformed input is dropped (returns no effects).
    pub fn handle_bytes(&mut self, now_ms: u64, from: NodeId, bytes: &[u8]) -> Vec<Effect> {
        match crate::codec::decode(bytes) {
            Ok(msg) => self.handle_message(now_ms, from, msg),
            Err(_) => Vec::new(),
        }
    }

    /// Handles a timer the driver set with `SetTimer`; a firing before the latest
    /// deadline of that kind is stale and ignored.
    pub fn handle_timeout(&mut self, now_ms: u64, timer: Timer) -> Vec<Effect> {
        let mut fx = Vec::new();
        match self.timers.get(&timer) {
            Some(deadline) if *deadline <= now_ms => {
                self.timers.remove(&timer);
            }
            _ => return fx,
        }
        match timer {
            Timer::Election => self.on_election_timer(now_ms, &mut fx),
            Timer::Heartbeat => self.on_heartbeat_timer(now_ms, &mut fx),
            Timer::Retry => self.on_retry_timer(now_ms, &mut fx),
        }
        fx
    }

    /// Proposes `payload` as a command of this node. It is first queued durably (a
    /// `Persist(Enqueue)` effect) and then proposed (leader), forwarded (follower,
    /// learner) or kept until a leader is reachable (offline). Returns its seq; the
    /// command is applied at most once, in seq order among this node's commands.
    pub fn propose(&mut self, now_ms: u64, payload: Vec<u8>) -> Result<(u64, Vec<Effect>), Error> {
        let (seqs, fx) = self.propose_many(now_ms, vec![payload])?;
        let seq = seqs.first().copied().unwrap_or(0);
        Ok((seq, fx))
    }

    /// Proposes several commands at once, in order: all their `Persist(Enqueue)`
    /// effects come first, so a driver syncs once for the lot (one fsync per batch
    /// rather than per proposal). All or nothing: an oversized payload or a queue
    /// without room for all of them refuses the whole call.
    pub fn propose_many(
        &mut self,
        now_ms: u64,
        payloads: Vec<Vec<u8>>,
    ) -> Result<(Vec<u64>, Vec<Effect>), Error> {
        if let Some(big) = payloads.iter().find(|p| p.len() > ENTRY_BYTES_MAX) {
            return Err(Error::TooLarge {
                what: "proposal",
                len: big.len(),
                max: ENTRY_BYTES_MAX,
            });
        }
        if self.config.witnesses.contains(&self.id()) {
            return Err(self.not_allowed("propose"));
        }
        if self.queue.len().saturating_add(payloads.len()) > QUEUE_ENTRIES_MAX {
            return Err(Error::QueueFull {
                len: self.queue.len(),
            });
        }
        let mut fx = Vec::with_capacity(payloads.len() + 4);
        let mut seqs = Vec::with_capacity(payloads.len());
        let mut commands = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let seq = self.next_seq;
            self.next_seq = seq.saturating_add(1);
            let command = Command {
                proposer: self.id(),
                seq,
                payload,
            };
            fx.push(Effect::Persist(DurableWrite::Enqueue {
                command: command.clone(),
            }));
            self.queue.insert(seq, command.clone());
            seqs.push(seq);
            commands.push(command);
        }
        if self.lead.is_some() {
            self.leader_take_commands(commands);
            self.flush(now_ms, &mut fx);
        } else if let Some(leader) = self.leader.filter(|l| *l != self.id()) {
            for chunk in commands.chunks(crate::limits::FORWARD_ENTRIES_MAX) {
                let body = Body::Forward {
                    commands: chunk.to_vec(),
                };
                self.send(leader, body, &mut fx);
            }
        }
        self.arm_retry(now_ms, &mut fx);
        Ok((seqs, fx))
    }

    /// Proposes the stop entry ending the current configuration; `next` governs the
    /// slots after it and must be numbered current id + 1. Only the leader does this,
    /// once per configuration; authorization (the owner's signature) is the caller's.
    pub fn reconfigure(&mut self, now_ms: u64, next: Config) -> Result<Vec<Effect>, Error> {
        next.validate()?;
        if next.id != self.config.id.next() {
            return Err(Error::InvalidConfig {
                reason: "next configuration must be numbered current + 1",
            });
        }
        let action = self.not_allowed("reconfigure");
        let Some(lead) = self.lead.as_mut() else {
            return Err(action);
        };
        let stop_pending = lead
            .pending
            .iter()
            .any(|e| matches!(e, Entry::Reconfigure(_)));
        if lead.stopped || stop_pending {
            return Err(action);
        }
        lead.pending.push_back(Entry::Reconfigure(next));
        let mut fx = Vec::new();
        self.flush(now_ms, &mut fx);
        Ok(fx)
    }

    /// Starts a linearizable read (read-index). `ReadReady { id, slot }` follows once a
    /// phase-2 quorum confirmed the leader and this node has committed below `slot`;
    /// `ReadFailed` if no leader can confirm it (retry later).
    ///
    /// Read ids never repeat, even across restarts: the first read after a (re)start and
    /// every `READ_IDS_PER_RESERVATION`-th one after it begin with a
    /// `Persist(ReserveReadIds)`. Otherwise a leader's late reply to a request sent
    /// before a crash (its index predates the new read) would answer a new read with
    /// the same id, and the read could miss a write acknowledged before it started.
    pub fn read(&mut self, now_ms: u64) -> Result<(ReadId, Vec<Effect>), Error> {
        let pending = self.reads.len() + self.lead.as_ref().map_or(0, |l| l.reads.len());
        if pending >= READS_PENDING_MAX {
            return Err(Error::TooManyReads);
        }
        let mut fx = Vec::new();
        let id = ReadId(self.next_read);
        if id.0 > self.read_ids_reserved {
            let through = id.0.saturating_add(READ_IDS_PER_RESERVATION - 1);
            fx.push(Effect::Persist(DurableWrite::ReserveReadIds {
                through: ReadId(through),
            }));
            self.read_ids_reserved = through;
        }
        self.next_read = self.next_read.saturating_add(1);
        if self.lead.is_some() {
            self.leader_start_read(now_ms, None, id, &mut fx);
        } else if let Some(leader) = self.leader {
            self.reads.insert(id, None);
            self.send(leader, Body::ReadIndexRequest { id }, &mut fx);
            self.arm_retry(now_ms, &mut fx);
        } else {
            fx.push(Effect::ReadFailed {
                id,
                reason: Rejection::NotLeader { leader: None },
            });
        }
        Ok((id, fx))
    }

    /// Reports a measured round-trip time to `peer` (liveness hint for leader choice).
    pub fn report_rtt(&mut self, now_ms: u64, peer: NodeId, rtt_ms: u32) -> Vec<Effect> {
        let _ = now_ms;
        if self.config.is_member(peer) && peer != self.id() {
            self.rtts_ms.insert(peer, rtt_ms);
        }
        Vec::new()
    }

    /// The application has a snapshot `state` of everything applied through `through`
    /// (which must be committed here); the log up to it is dropped.
    pub fn compact(
        &mut self,
        now_ms: u64,
        through: Slot,
        state: Vec<u8>,
    ) -> Result<Vec<Effect>, Error> {
        let _ = now_ms;
        if state.len() > SNAPSHOT_BYTES_MAX {
            return Err(Error::TooLarge {
                what: "snapshot",
                len: state.len(),
                max: SNAPSHOT_BYTES_MAX,
            });
        }
        if through >= self.commit_index || through < self.base.next {
            return Err(self.not_allowed("compact an uncommitted or already compacted slot"));
        }
        let (snapshot, config_start) = self.snapshot_at(through, state)?;
        self.log = self.log.split_off(&through.next());
        self.base = Base {
            next: through.next(),
            head: snapshot.chain,
            config: snapshot.config.clone(),
            config_start,
            applied_seqs: snapshot.applied_seqs.clone(),
        };
        self.snapshot = Some(snapshot.clone());
        let mut fx = vec![Effect::Persist(DurableWrite::Snapshot(snapshot.clone()))];
        // A witness applies nothing, so it never has a snapshot of its own: it truncates
        // its log behind the ones the voters that apply send it (`on_snapshot`).
        if !self.config.witnesses.contains(&self.id()) {
            let witnesses: Vec<NodeId> = self.config.witnesses.iter().copied().collect();
            for witness in witnesses {
                let body = Body::SnapshotData {
                    snapshot: snapshot.clone(),
                };
                self.send(witness, body, &mut fx);
            }
        }
        Ok(fx)
    }
}

/// Observers (for drivers, status and tests).
impl Node {
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

    /// The ballot this node leads (or campaigns) with, if any.
    pub fn leader_ballot(&self) -> Option<Ballot> {
        match (&self.lead, &self.candidate) {
            (Some(lead), _) => Some(lead.ballot),
            (None, Some(candidate)) => Some(candidate.ballot),
            (None, None) => None,
        }
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
        self.log.get(&slot).map(|r| &r.entry)
    }

    /// First slot still in the log (slots below were compacted into the snapshot).
    pub fn log_start(&self) -> Slot {
        self.base.next
    }

    /// Highest applied seq per proposer (the at-most-once table).
    pub fn applied_seqs(&self) -> &BTreeMap<NodeId, u64> {
        &self.applied_seqs
    }

    /// Own proposals queued and not yet applied.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// This node's quorum-RTT score (ms): the `phase2_quorum - 1`-th smallest RTT to
    /// another voter, i.e. how long a phase-2 round would take if it led. Lower is better.
    pub fn score_ms(&self) -> u32 {
        let needed = usize::from(self.config.phase2_quorum).saturating_sub(1);
        if needed == 0 {
            return 0;
        }
        let mut rtts: Vec<u32> = self
            .config
            .voters
            .iter()
            .filter(|v| **v != self.id())
            .map(|v| self.rtts_ms.get(v).copied().unwrap_or(u32::MAX))
            .collect();
        rtts.sort_unstable();
        rtts.get(needed - 1).copied().unwrap_or(u32::MAX)
    }
}

/// Shared plumbing: sending, timers, committing.
impl Node {
    fn not_allowed(&self, action: &'static str) -> Error {
        Error::NotAllowed {
            node: self.id(),
            action,
            config: self.config.id,
        }
    }

    /// The ballot this node speaks with.
    fn own_ballot(&self) -> Ballot {
        self.leader_ballot().unwrap_or(self.promised)
    }

    fn send(&self, to: NodeId, body: Body, fx: &mut Vec<Effect>) {
        self.send_with_ballot(to, self.own_ballot(), body, fx);
    }

    fn send_with_ballot(&self, to: NodeId, ballot: Ballot, body: Body, fx: &mut Vec<Effect>) {
        fx.push(Effect::Send {
            to,
            msg: Envelope {
                volume: self.options.volume,
                config: self.config.id,
                ballot,
                body,
            },
        });
    }

    fn set_timer(&mut self, timer: Timer, at_ms: u64, fx: &mut Vec<Effect>) {
        self.timers.insert(timer, at_ms);
        fx.push(Effect::SetTimer { timer, at_ms });
    }

    /// Position in the leader-preference ranking (0 = preferred).
    fn rank(&self) -> u64 {
        let me = self.id();
        let position = match self.ranking.iter().position(|n| *n == me) {
            Some(p) => p,
            None => self
                .config
                .voters
                .iter()
                .filter(|v| self.config.can_lead(**v))
                .position(|v| *v == me)
                .unwrap_or(0),
        };
        u64::try_from(position).unwrap_or(u64::MAX)
    }

    /// Election timeout: base + rank × stagger + a fixed per-node jitter, so the
    /// preferred voter usually times out first and ties are unlikely.
    fn election_timeout_ms(&self) -> u64 {
        let o = &self.options;
        let jitter_span = o.election_stagger_ms / 2 + 1;
        let jitter = (self.id().0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % jitter_span;
        o.election_timeout_ms
            .saturating_add(self.rank().saturating_mul(o.election_stagger_ms))
            .saturating_add(jitter)
    }

    /// Ensures an election timer is pending if this node may lead.
    fn arm_election(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if self.config.can_lead(self.id()) && !self.timers.contains_key(&Timer::Election) {
            let at = now_ms.saturating_add(self.election_timeout_ms());
            self.set_timer(Timer::Election, at, fx);
        }
    }

    fn has_retry_work(&self) -> bool {
        !self.queue.is_empty()
            || self.reads.values().any(Option::is_none)
            || self.candidate.is_some()
            || self.known_decided > self.commit_index
    }

    /// Ensures a retry timer is pending if anything may need resending.
    fn arm_retry(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if self.has_retry_work() && !self.timers.contains_key(&Timer::Retry) {
            let at = now_ms.saturating_add(self.options.retry_interval_ms);
            self.set_timer(Timer::Retry, at, fx);
        }
    }

    /// Records contact with the leader `from`.
    fn leader_contact(&mut self, now_ms: u64, from: NodeId, fx: &mut Vec<Effect>) {
        self.last_leader_contact_ms = now_ms;
        if self.leader != Some(from) {
            self.leader = Some(from);
            fx.push(Effect::LeaderChanged { leader: Some(from) });
            // A proposer that was offline (or redirected) submits its queue now.
            self.forward_queue(from, fx);
            let waiting: Vec<ReadId> = self
                .reads
                .iter()
                .filter(|(_, s)| s.is_none())
                .map(|(id, _)| *id)
                .collect();
            for id in waiting {
                self.send(from, Body::ReadIndexRequest { id }, fx);
            }
        }
        self.arm_election(now_ms, fx);
    }

    fn forward_queue(&self, leader: NodeId, fx: &mut Vec<Effect>) {
        if self.queue.is_empty() || leader == self.id() {
            return;
        }
        let mut bytes = 0usize;
        let commands: Vec<Command> = self
            .queue
            .values()
            .take(crate::limits::FORWARD_ENTRIES_MAX)
            .take_while(|c| {
                // Always at least one command (each is ≤ ENTRY_BYTES_MAX).
                let first = bytes == 0;
                bytes = bytes.saturating_add(c.payload.len().max(1));
                first || bytes <= crate::limits::BATCH_BYTES_MAX
            })
            .cloned()
            .collect();
        self.send(leader, Body::Forward { commands }, fx);
    }

    fn applied_own(&self) -> u64 {
        self.applied_seqs.get(&self.id()).copied().unwrap_or(0)
    }

    fn note_ballot(&mut self, ballot: Ballot) {
        if ballot.epoch == self.config.id {
            self.ballot_seen = self.ballot_seen.max(ballot);
        }
    }

    /// Commits a run of entries starting at the commit index: one `Persist(Commit)`,
    /// then one `Commit` effect per entry (and whatever a stop entry triggers).
    fn commit_run(&mut self, now_ms: u64, entries: Vec<Entry>, fx: &mut Vec<Effect>) {
        if entries.is_empty() {
            return;
        }
        let first = self.commit_index;
        let mut later = Vec::with_capacity(entries.len() + 2);
        for entry in entries.iter().cloned() {
            self.commit_one(now_ms, entry, &mut later);
        }
        fx.push(Effect::Persist(DurableWrite::Commit {
            first,
            entries,
            head: self.head,
        }));
        fx.append(&mut later);
    }

    /// Commits one entry at the commit index (no persistence; see `commit_run`).
    fn commit_one(&mut self, now_ms: u64, entry: Entry, fx: &mut Vec<Effect>) {
        let slot = self.commit_index;
        let chain = self.head.extend(slot, &entry);
        let apply = match &entry {
            Entry::Command(c) => {
                let last = self.applied_seqs.get(&c.proposer).copied().unwrap_or(0);
                let fresh = c.seq == last.saturating_add(1);
                if fresh {
                    self.applied_seqs.insert(c.proposer, c.seq);
                } else if let Some(lead) = self.lead.as_mut() {
                    // A gap: let the proposer's resubmission start again after `last`.
                    lead.proposed_seqs.insert(c.proposer, last);
                }
                fresh
            }
            Entry::Noop | Entry::Reconfigure(_) => false,
        };
        self.head = chain;
        self.commit_index = slot.next();
        self.known_decided = self.known_decided.max(self.commit_index);
        self.accepted.remove(&slot);
        self.log.insert(
            slot,
            LogRecord {
                entry: entry.clone(),
                chain,
                apply,
            },
        );
        let next = match &entry {
            Entry::Reconfigure(next) => Some(next.clone()),
            _ => None,
        };
        fx.push(Effect::Commit {
            slot,
            entry,
            chain,
            apply,
        });
        if let Some(next) = next {
            self.switch_config(now_ms, next, fx);
        }
    }

    /// The stop entry just committed at `commit_index - 1`: the next configuration
    /// governs from here. Accepted values at later slots were accepted under the old
    /// configuration's ballots and can never be chosen (Stoppable Paxos); drop them.
    fn switch_config(&mut self, now_ms: u64, mut next: Config, fx: &mut Vec<Effect>) {
        next.id = self.config.id.next();
        let was_leader = self.lead.is_some();
        self.step_down(now_ms, fx);
        self.candidate = None;
        self.config = next;
        self.config_start = self.commit_index;
        if !self.accepted.is_empty() {
            self.accepted.clear();
            fx.push(Effect::Persist(DurableWrite::DiscardAccepted {
                from: self.commit_index,
            }));
        }
        self.ranking.clear();
        self.rtts_ms.retain(|n, _| self.config.is_member(*n));
        if self.leader.take().is_some() {
            fx.push(Effect::LeaderChanged { leader: None });
        }
        self.role = if self.config.is_voter(self.id()) {
            Role::Follower
        } else {
            Role::Learner
        };
        self.timers.remove(&Timer::Election);
        self.last_leader_contact_ms = now_ms;
        self.handover = was_leader;
        self.arm_election(now_ms, fx);
    }

    /// Work that follows any advance of the commit index.
    fn after_commit(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let commit_index = self.commit_index;
        let ready: Vec<(ReadId, Slot)> = self
            .reads
            .iter()
            .filter_map(|(id, slot)| slot.filter(|s| *s <= commit_index).map(|s| (*id, s)))
            .collect();
        for (id, slot) in ready {
            self.reads.remove(&id);
            fx.push(Effect::ReadReady { id, slot });
        }
        let applied_own = self.applied_own();
        if self
            .queue
            .keys()
            .next()
            .is_some_and(|seq| *seq <= applied_own)
        {
            self.queue = self.queue.split_off(&applied_own.saturating_add(1));
            fx.push(Effect::Persist(DurableWrite::Dequeue {
                through_seq: applied_own,
            }));
        }
        if self.candidate.is_some() {
            self.try_finish_phase1(now_ms, fx);
        }
        if self.lead.is_some() {
            self.flush(now_ms, fx);
        }
        if self.handover {
            self.handover = false;
            if self.config.can_lead(self.id()) && self.lead.is_none() {
                self.start_election(now_ms, fx);
            }
        }
    }

    /// Installs `snapshot` as the base of the log (state-only; effects by the caller).
    fn reset_to_snapshot(&mut self, snapshot: Snapshot) {
        let next = snapshot.slot.next();
        if snapshot.config.id != self.config.id {
            self.config = snapshot.config.clone();
            self.config_start = next;
            self.accepted.clear();
            self.candidate = None;
            self.lead = None;
            self.leader = None;
            self.ranking.clear();
        } else {
            self.accepted = self.accepted.split_off(&next);
        }
        self.base = Base {
            next,
            head: snapshot.chain,
            config: snapshot.config.clone(),
            config_start: self.config_start,
            applied_seqs: snapshot.applied_seqs.clone(),
        };
        self.commit_index = next;
        self.known_decided = self.known_decided.max(next);
        self.head = snapshot.chain;
        self.log.clear();
        self.applied_seqs = snapshot.applied_seqs.clone();
        self.role = if self.lead.is_some() {
            Role::Leader
        } else if self.config.is_voter(self.id()) {
            Role::Follower
        } else {
            Role::Learner
        };
        self.snapshot = Some(snapshot);
    }

    /// The snapshot of the state after `through` (replaying the log from the base),
    /// and the first slot of the configuration governing `through + 1`.
    fn snapshot_at(&self, through: Slot, state: Vec<u8>) -> Result<(Snapshot, Slot), Error> {
        let mut config = self.base.config.clone();
        let mut config_start = self.base.config_start;
        let mut applied_seqs = self.base.applied_seqs.clone();
        let mut chain = self.base.head;
        for (slot, record) in self.log.range(..=through) {
            chain = record.chain;
            match &record.entry {
                Entry::Command(c) if record.apply => {
                    applied_seqs.insert(c.proposer, c.seq);
                }
                Entry::Reconfigure(next) => {
                    let mut next = next.clone();
                    next.id = config.id.next();
                    config = next;
                    config_start = slot.next();
                }
                _ => {}
            }
        }
        if self.log.range(..=through).next_back().map(|(s, _)| *s) != Some(through) {
            return Err(self.not_allowed("compact a slot not in the log"));
        }
        Ok((
            Snapshot {
                slot: through,
                chain,
                config,
                applied_seqs,
                state,
            },
            config_start,
        ))
    }

    /// Election timer: start phase 1 if the leader has been silent long enough.
    fn on_election_timer(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if !self.config.can_lead(self.id()) || self.lead.is_some() {
            return;
        }
        let deadline = self
            .last_leader_contact_ms
            .saturating_add(self.election_timeout_ms());
        if now_ms < deadline {
            self.set_timer(Timer::Election, deadline, fx);
            return;
        }
        self.start_election(now_ms, fx);
    }

    /// Retry timer: resend whatever may have been lost.
    fn on_retry_timer(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if !self.queue.is_empty() {
            if self.lead.is_some() {
                let commands: Vec<Command> = self.queue.values().cloned().collect();
                self.leader_take_commands(commands);
                self.flush(now_ms, fx);
            } else if let Some(leader) = self.leader {
                self.forward_queue(leader, fx);
            }
        }
        let waiting: Vec<ReadId> = self
            .reads
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            match self.leader.filter(|l| *l != self.id()) {
                Some(leader) => self.send(leader, Body::ReadIndexRequest { id }, fx),
                None => {
                    self.reads.remove(&id);
                    fx.push(Effect::ReadFailed {
                        id,
                        reason: Rejection::NotLeader { leader: None },
                    });
                }
            }
        }
        if let Some(candidate) = &self.candidate {
            let first = candidate.first;
            let missing: Vec<NodeId> = self
                .config
                .voters
                .iter()
                .filter(|v| !candidate.promises.contains_key(v))
                .copied()
                .collect();
            for voter in missing {
                self.send(voter, Body::Prepare { first }, fx);
            }
        }
        if self.known_decided > self.commit_index {
            // The last fetch did not finish the catch-up (lost, or its peer is down):
            // ask the next voter in turn.
            if let Some(peer) = self.next_fetch_peer() {
                self.fetch_sent_ms = None;
                self.request_fetch(now_ms, peer, fx);
            }
        }
        self.arm_retry(now_ms, fx);
    }

    /// The voter after the last one we fetched from, in id order (cyclic).
    fn next_fetch_peer(&self) -> Option<NodeId> {
        let me = self.id();
        let mut voters = self.config.voters.iter().copied().filter(|v| *v != me);
        let first = self.config.voters.iter().copied().find(|v| *v != me);
        match self.fetch_from {
            Some(last) => voters.find(|v| *v > last).or(first),
            None => self.leader.filter(|l| *l != me).or(first),
        }
    }

    /// A message from another configuration: one side lags. Committed history is
    /// served and taken across configurations; anything else only triggers catch-up.
    fn on_other_config(
        &mut self,
        now_ms: u64,
        from: NodeId,
        config: crate::ids::ConfigId,
        body: Body,
        fx: &mut Vec<Effect>,
    ) {
        match body {
            Body::Fetch { first } => self.on_fetch(from, config, first, fx),
            Body::Entries {
                first,
                prev,
                entries,
                committed,
            } => self.on_entries(now_ms, from, first, prev, entries, committed, fx),
            Body::SnapshotData { snapshot } => self.on_snapshot(now_ms, from, snapshot, fx),
            _ if config > self.config.id => {
                // We lag: fetch from the sender, which is in a later configuration.
                self.fetch_sent_ms = None;
                self.request_fetch(now_ms, from, fx);
            }
            Body::Prepare { .. }
            | Body::Accept { .. }
            | Body::Heartbeat { .. }
            | Body::Forward { .. }
            | Body::ReadIndexRequest { .. } => {
                // The sender lags: our configuration in the envelope tells it to catch up.
                let body = Body::Reject {
                    promised: self.promised,
                    committed: self.commit_index,
                };
                self.send(from, body, fx);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
