//! paxos — one Multi-Paxos group per Kith volume, as a sans-IO state machine.
//!
//! Every directory change in a volume is a command in that volume's replicated log;
//! this crate decides the order of the log among the volume's devices. It is a pure
//! state machine: it does no IO, reads no clock (`now_ms` is an input) and draws no
//! random numbers, so the same [`Node`] runs over QUIC in `net`, in the seeded fault
//! simulator and under the stateright model checker (every type is
//! `Clone + Eq + Hash + Debug`, maps are `BTreeMap`s).
//!
//! # Goals
//!
//! - **Safety beyond doubt**: at most one value is chosen per slot; a chosen value never
//!   changes; every replica commits the same sequence. Safety never depends on timing,
//!   clocks, message order, leases or the leader-preference hints (DESIGN invariant 6).
//! - **One round trip per commit** in steady state (leader → phase-2 quorum → leader),
//!   with batching and pipelining.
//! - Membership changes through the log; two devices plus a witness keep writing with
//!   either device off; 250 learners without burdening the leader.
//!
//! # Non-goals
//!
//! Byzantine faults (voters are the owner's devices; Paxos tolerates crashes, not lies);
//! authorization of commands and reconfigurations (the caller checks signatures before
//! calling [`Node::reconfigure`]; fossil checks rights at apply time); transport,
//! encryption and entry signatures (payloads are opaque sealed bytes); leases.
//!
//! # Roles and driving a node
//!
//! Voters are acceptors; non-witness voters may lead; witnesses vote and store sealed
//! entries but never lead; learners (non-voters) pull committed entries. Inputs:
//! [`Node::handle_message`] (or [`Node::handle_bytes`]), [`Node::handle_timeout`],
//! [`Node::propose`] (or [`Node::propose_many`]), [`Node::read`], [`Node::reconfigure`],
//! [`Node::report_rtt`], [`Node::compact`]; after a restart [`Node::recover`] then [`Node::start`]. Each returns
//! an ordered `Vec<`[`Effect`]`>` the driver executes in order:
//!
//! - `Persist(w)`: hand `w` to the [`AcceptorStore`]; it must be durable (synced) before
//!   any later effect runs — **persist before send**: no promise, acceptance or commit
//!   is revealed before it is on disk.
//! - `Send { to, msg }`: best effort; loss, duplication and reordering are tolerated.
//! - `Commit { slot, entry, chain, apply }`: in slot order without gaps; apply the
//!   command iff `apply` (at most once per `(proposer, seq)`, in seq order).
//! - `SetTimer`, `ReadReady`/`ReadFailed`, `InstallSnapshot`, `LeaderChanged`, …
//!
//! ```
//! use paxos::{Config, ConfigId, Effect, Node, NodeId, NodeOptions, Timer, VolumeId};
//!
//! let voters = [NodeId(1), NodeId(2), NodeId(3)];
//! let genesis = Config::majority(ConfigId(1), voters, [], []).unwrap();
//! let mut node = Node::new(NodeOptions::new(NodeId(1), VolumeId(7)), genesis);
//! let effects = node.start(0);
//! let Effect::SetTimer { timer: Timer::Election, at_ms } = effects[0] else { panic!() };
//! // Nobody led before the timeout: campaign. The promise is persisted before the
//! // prepares that reveal it are sent.
//! let effects = node.handle_timeout(at_ms, Timer::Election);
//! assert!(matches!(effects[0], Effect::Persist(_)));
//! assert!(matches!(effects[1], Effect::Send { .. }));
//! ```
//!
//! # Protocol
//!
//! Ballots are `(epoch, round, node)`, ordered lexicographically; the epoch is the
//! configuration id. Every message is an [`Envelope`] `{volume, config, ballot, body}`;
//! the sender is the authenticated peer given as `from`.
//!
//! - **Phase 1, once per leadership.** A voter whose election timer expires picks a
//!   ballot above every one it has seen, persists the promise to itself, and sends
//!   `Prepare{first}` (its commit index) to the voters. An acceptor whose promise is not
//!   higher persists the promise and answers `Promise{first, committed, accepted}` with
//!   every value it accepted at slots ≥ first, else `Reject{promised, committed}`. With a
//!   phase-1 quorum of promises the candidate first fetches any slots a promiser reported
//!   committed beyond its own (a leader commits only through its own quorums), then
//!   re-proposes, per slot, the value with the highest ballot (holes: `Noop`), applying
//!   Stoppable Paxos' rule to stop entries (see `recovery_plan`).
//! - **Phase 2, per batch.** The leader cuts pending commands into `Accept{first,
//!   entries, decided}` batches (≤ `BATCH_ENTRIES_MAX` entries, ≤ `BATCH_BYTES_MAX`), at
//!   most `BATCHES_IN_FLIGHT_MAX` / `SLOTS_IN_FLIGHT_MAX` / `BYTES_IN_FLIGHT_MAX`
//!   outstanding, accepts each itself (one `Persist`), and sends it to every voter. An
//!   acceptor with no higher promise persists the batch (one write) and replies
//!   `Accepted{first, count}`. A phase-2 quorum of acceptances makes the batch chosen;
//!   the leader commits chosen batches in slot order. `decided` (the leader's commit
//!   index) rides on the next `Accept` and on heartbeats: an acceptor commits each slot
//!   below it whose accepted value carries that leader's ballot, and fetches the rest.
//! - **Leader liveness and preference.** The leader sends `Heartbeat{decided, head,
//!   round, ranking}`; voters answer `HeartbeatAck{round, committed, score_ms}`. A node's
//!   score is its `phase2_quorum − 1`-th smallest RTT to another voter (what a commit
//!   would cost if it led); the leader ranks leader-capable voters by score and
//!   publishes the ranking; election timeouts grow with rank (plus a fixed per-node
//!   jitter); the leader hands over (`TimeoutNow`) only to a caught-up voter whose score
//!   has been ≤ `handoff_score_percent` of its own for `handoff_sustain_ms`, and then
//!   stops leading. A voter ignores `Prepare`s while it hears a live leader (one
//!   election timeout), so a device back from a partition or a long absence does not
//!   depose it; a leader that has not heard a phase-2 quorum for two election timeouts
//!   steps down (check-quorum), which lifts that stickiness. Both are liveness rules:
//!   ignoring a message or leaving leadership is always safe.
//! - **Reads** (read-index, no leases): the leader records the next unassigned slot,
//!   runs a heartbeat round, and once a phase-2 quorum acknowledged that round under
//!   its ballot the read is served at commit index ≥ that slot. Followers ask the
//!   leader (`ReadIndexRequest`/`ReadIndexReply`) and wait for their own commits. A
//!   reply names its request by `ReadId`; a node never reuses one, even across
//!   restarts (ids are reserved durably in blocks), so a late reply to a request sent
//!   before a crash cannot answer a read started after it.
//! - **Proposers** (any member but witnesses): [`Node::propose`] queues the command
//!   durably with the next per-proposer seq, then proposes (leader) or `Forward`s it; the
//!   queue is resent in order on every retry tick and leader change and trimmed when the
//!   commands apply. The leader proposes each proposer's seqs in order, once; the commit
//!   path applies `(proposer, seq)` only if `seq = last applied + 1`.
//! - **Reconfiguration** (Stoppable Paxos). `Entry::Reconfigure(next)` chosen at slot
//!   `s` ends configuration `c` at `s`; `next` (numbered `c + 1`) governs slots > s. The
//!   leader proposes nothing after a stop; values accepted under `c` at slots > s can
//!   never be chosen and are discarded when a node commits the stop. A node switches
//!   configuration only when it has committed through `s`, so the old configuration
//!   finishes every slot ≤ s. Messages for another configuration are never accepted: the
//!   lagging side is told (or asks) and catches up.
//! - **Catch-up, learners, truncation.** `Fetch{first}` is answered with `Entries{first,
//!   prev, entries, committed}` (≤ `CATCHUP_ENTRIES_MAX`) or, below the compacted prefix,
//!   `SnapshotData`. Committed entries form a hash chain `h(s) = BLAKE3(h(s−1) ‖ s ‖
//!   entry)`; a puller checks the chain continues its own head and matches the head a
//!   leader announced before committing anything. Learners pull from their nearest
//!   voter; the leader only sends them small heartbeats. [`Node::compact`] replaces the
//!   log up to a slot with an application snapshot. A device removed while it was cut
//!   off is served the log up to the stop entry that removed it (nothing later), so it
//!   learns it left instead of leading or campaigning in a configuration that is over.
//!
//! # Invariants
//!
//! 1. An acceptor never accepts below its promise, and persists a promise or an
//!    acceptance before any message revealing it.
//! 2. A leader proposes at most one value per slot per ballot, and only after phase 1
//!    at that ballot; re-proposals follow the highest-ballot rule.
//! 3. One value per slot; a chosen value never changes; commits are gap-free and in
//!    order; the chain hash after a slot is the same on every replica.
//! 4. Nothing is chosen in configuration `c` after its stop slot; `c + 1` never
//!    decides a slot ≤ it.
//! 5. Peer input never panics the core: it is bounded by the codec (`limits`) and
//!    anything malformed, stale, replayed or from the wrong volume/configuration/role is
//!    ignored or refused.

#![deny(clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod ballot;
mod chain;
pub mod codec;
mod config;
mod error;
mod ids;
pub mod limits;
mod message;
mod node;
mod store;

pub use ballot::Ballot;
pub use chain::ChainHash;
pub use config::Config;
pub use error::Error;
pub use ids::{ConfigId, Epoch, NodeId, ReadId, Slot, VolumeId};
pub use message::{Body, Command, Entry, Envelope, Snapshot};
pub use node::{Effect, Node, NodeOptions, Rejection, Role, Timer};
pub use store::{AcceptorStore, DurableState, DurableWrite, MemStore, SqliteStore};
