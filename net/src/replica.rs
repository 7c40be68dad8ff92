//! A volume's replicated log on one device: the sans-IO Paxos core driven for real.
//!
//! [`Replica`] is one device's participant in one volume's Multi-Paxos group. It owns a
//! [`paxos::Node`] and its SQLite acceptor store, runs them on a tokio task, and turns
//! the core's effects into actions. It is the seam between the log and fossil: fossil
//! proposes operations and applies what is committed; the transport hands frames in
//! ([`Replica::deliver`]) and carries frames out (a [`Link`]).
//!
//! # What it guarantees
//!
//! - **Persist before reveal.** Every `Persist` the core emits is written and synced
//!   before any later effect is executed: no message, no commit notice and no reply to
//!   a caller reveals state a crash could lose. Within one turn of the loop the
//!   persists of all inputs handled in it share one fsync (group commit); the other
//!   effects then run in their original order. Moving a send or a commit notice after
//!   a *later* persist only delays it, which is always safe.
//! - **Proposals survive restarts.** [`Replica::propose`] returns once the operation is
//!   sealed, signed and durably queued by the core; an offline device keeps its queue
//!   across restarts and the core resubmits it in order when a leader is reachable. The
//!   core applies each `(author, seq)` at most once; [`Replica::read_committed`] returns
//!   only applying commands, so fossil sees every operation exactly once, in log order.
//! - **Only verified entries reach fossil.** Committed payloads are sealed entries
//!   ([`crate::entry`]); they are opened on read, and one whose signature, key, volume
//!   or `(author, seq)` does not match the log slot carrying it is refused (reported in
//!   [`Committed::refused`], identically on every device with the same keyring). An
//!   entry whose author this device does not know yet is neither applied nor refused:
//!   reading stops before it until the author's device is known (refusing it would
//!   make this device's namespace differ from those of devices that know it).
//!
//! # Threads and time
//!
//! The task runs on a current-thread tokio runtime on its own OS thread: SQLite's
//! fsync blocks, and a dedicated thread keeps that off the caller's runtime while the
//! effect order stays trivially sequential. The handle's methods are async and work
//! from any runtime. Time is a monotonic millisecond clock local to the replica; the
//! core never depends on it for safety.
//!
//! # Not here
//!
//! Transport, authentication of peers (`from` in [`Replica::deliver`] must be the
//! authenticated device), authorization of membership changes (the caller checks the
//! owner's signature before [`Replica::reconfigure`]), key distribution
//! ([`VolumeKeys`] is the seam to the keyring), and applying operations (fossil).

pub mod mem_link;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use paxos::{
    AcceptorStore, Config, ConfigId, DurableWrite, Effect, NodeId, NodeOptions, ReadId, Role, Slot,
    SqliteStore, Timer, VolumeId,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::entry::{self, EntryHeader, EntryKey, EntryKind, KeyEpoch, KeyRotation};
use crate::error::{Error, Result};

/// Frames waiting in a replica's inbox; more are dropped (Paxos tolerates loss).
pub const INBOX_FRAMES_MAX: usize = 4096;
/// Caller requests waiting for the task; callers wait for room beyond it.
pub const REQUESTS_QUEUED_MAX: usize = 1024;
/// Inputs (frames, requests) handled in one turn, i.e. under one fsync.
pub const INPUTS_PER_TURN_MAX: usize = 256;
/// Proposals merged into one `propose_many` (one fsync for all of them).
pub const PROPOSALS_PER_BATCH_MAX: usize = 256;
/// Slots one [`Replica::read_committed`] scans.
pub const READ_SLOTS_MAX: u64 = 4096;
/// Payload bytes one [`Replica::read_committed`] returns (at least one entry).
pub const READ_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Own proposals whose commit slot the replica remembers for [`Replica::wait_committed`].
pub const OWN_SLOTS_KEPT: usize = 65_536;

/// Outgoing frames: fire-and-forget, best effort. Paxos tolerates loss, duplication and
/// reordering, so an implementation may drop frames when a peer is unreachable or its
/// queue is full; it must not block for long (it is called from the replica's task).
pub trait Link: Send + Sync + 'static {
    /// Sends `bytes` (one encoded Paxos message) to device `to` of this volume.
    fn send(&self, to: NodeId, bytes: Vec<u8>);
}

/// The keyring's view of one volume, as the replica needs it.
pub trait VolumeKeys: Send + Sync + 'static {
    /// The current key epoch and its entry key, for sealing new entries; `None` if this
    /// device holds none (a witness, or keys not granted yet).
    fn sealing_key(&self) -> Option<(KeyEpoch, EntryKey)>;
    /// The entry key of `epoch`, for opening entries.
    fn entry_key(&self, epoch: KeyEpoch) -> Option<EntryKey>;
    /// A key rotation committed at `slot` (verified, opened): take this device's share,
    /// make it durable, and seal with its epoch from now on, all before returning `Ok`
    /// (the replica reads past the rotation only then). `Ok(false)`: this device got no
    /// share (a witness, or the removed device). An `Err` is local (the share does not
    /// open here, the key file cannot be written): reading stops before the rotation
    /// and tries again later. The default holds no keys to learn.
    fn learn_rotation(&self, slot: Slot, rotation: &KeyRotation) -> Result<bool> {
        let _ = (slot, rotation);
        Ok(false)
    }
    /// The signature key of `author` if it is a known, unrevoked device of a member.
    fn verifying_key(&self, author: NodeId) -> Option<VerifyingKey>;
}

/// A fixed keyring: every epoch key and author key given up front (tests, tools, and a
/// starting point for the keyring glue).
#[derive(Clone, Debug, Default)]
pub struct StaticKeys {
    /// Entry keys by epoch; the highest is used for sealing.
    pub epochs: BTreeMap<KeyEpoch, EntryKey>,
    /// Known authors.
    pub authors: BTreeMap<NodeId, VerifyingKey>,
}

impl VolumeKeys for StaticKeys {
    fn sealing_key(&self) -> Option<(KeyEpoch, EntryKey)> {
        self.epochs.last_key_value().map(|(e, k)| (*e, k.clone()))
    }

    fn entry_key(&self, epoch: KeyEpoch) -> Option<EntryKey> {
        self.epochs.get(&epoch).cloned()
    }

    fn verifying_key(&self, author: NodeId) -> Option<VerifyingKey> {
        self.authors.get(&author).copied()
    }
}

/// How to open one replica.
#[derive(Debug)]
pub struct ReplicaOptions {
    /// The core's options (this device's id, the volume, timeouts).
    pub node: NodeOptions,
    /// The volume's first configuration (the same on every device, forever).
    pub genesis: Config,
    /// The SQLite acceptor store (created if missing).
    pub store_path: PathBuf,
    /// This device's signing key; `None` for a witness, which never authors entries.
    pub signing_key: Option<SigningKey>,
}

/// Handle of one of this device's own proposals (its per-device seq in the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// One committed operation, verified and opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOp {
    /// Its log slot.
    pub slot: Slot,
    /// The device that authored (and signed) it.
    pub author: NodeId,
    /// The author's seq: `(author, seq)` is unique in the log.
    pub seq: u64,
    /// The fossil operation bytes.
    pub op: Vec<u8>,
}

/// A run of the committed log.
#[derive(Debug)]
pub struct Committed {
    /// Operations to apply, in slot order (slots holding no-ops, membership changes or
    /// duplicates are absent).
    pub ops: Vec<CommittedOp>,
    /// Committed commands that failed verification, in slot order: skip them (every
    /// device with the same keyring refuses the same ones).
    pub refused: Vec<(Slot, Error)>,
    /// The slot to read from next (every slot below it was covered).
    pub next: Slot,
}

/// A checkpoint the log was truncated behind, opened and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last slot it covers: the log continues at `through + 1`.
    pub through: Slot,
    /// The device that made it.
    pub author: NodeId,
    /// fossil's checkpoint bytes.
    pub state: Vec<u8>,
}

/// A membership change, proposed as a stop entry through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A voter that may lead.
    AddVoter(NodeId),
    /// A voter that only stores sealed entries (lets two devices keep writing).
    AddWitness(NodeId),
    /// A non-voting member that pulls committed entries.
    AddLearner(NodeId),
    /// Removes a voter, witness or learner.
    Remove(NodeId),
}

/// What `kith status` shows about one volume's log on this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This device.
    pub id: NodeId,
    /// The volume.
    pub volume: VolumeId,
    /// This device's role.
    pub role: Role,
    /// The configuration in force (voters, witnesses, learners, quorums).
    pub config: Config,
    /// The leader this device believes in.
    pub leader: Option<NodeId>,
    /// Per other member: ms since a well-formed frame last arrived from it (`None`:
    /// never since this replica started).
    pub heard_ms_ago: BTreeMap<NodeId, Option<u64>>,
    /// Per other member heard from since this replica started: the commit index it
    /// last reported (a heartbeat ack, a promise, a rejection, or a learner's fetch,
    /// which asks from its commit index). What a leader knows of how far each member is.
    pub reported_commit: BTreeMap<NodeId, Slot>,
    /// Every slot below it is committed here.
    pub commit_end: Slot,
    /// Slots below it were truncated behind a checkpoint.
    pub log_start: Slot,
    /// Every slot below it is applied by fossil (as reported with `note_applied`).
    pub applied_end: Slot,
    /// Own proposals queued and not yet applied (offline work).
    pub queued: usize,
}

/// One volume's Paxos participant on this device. Cheap to clone; all clones drive the
/// same task.
#[derive(Clone, Debug)]
pub struct Replica {
    id: NodeId,
    volume: VolumeId,
    requests: mpsc::Sender<Request>,
    frames: mpsc::Sender<(NodeId, Vec<u8>)>,
    commit_end: watch::Receiver<Slot>,
    stopped: watch::Receiver<bool>,
    applied_end: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
    keys: Arc<dyn VolumeKeysDebug>,
    sole_leader: Arc<AtomicBool>,
    own_sealed: Arc<OwnSealed>,
}

/// Hashes of the entries this replica sealed and proposed, by seq, until they are
/// read back committed: an entry whose bytes hash the same is this device's own, so
/// its signature need not be verified again (`Entry::open_own`). Bounded: past
/// `OWN_SEALED_MAX` the oldest are dropped and those entries are verified as usual.
#[derive(Debug, Default)]
struct OwnSealed(parking_lot::Mutex<BTreeMap<u64, blake3::Hash>>);

/// Own proposals remembered by [`OwnSealed`] (a hash each).
const OWN_SEALED_MAX: usize = 1 << 16;

impl OwnSealed {
    fn remember(&self, seq: u64, sealed: &[u8]) {
        let mut hashes = self.0.lock();
        hashes.insert(seq, blake3::hash(sealed));
        while hashes.len() > OWN_SEALED_MAX {
            hashes.pop_first();
        }
    }

    /// Whether `payload` is exactly what this replica sealed as `seq` (forgets it).
    fn is_own(&self, seq: u64, payload: &[u8]) -> bool {
        self.0
            .lock()
            .remove(&seq)
            .is_some_and(|hash| hash == blake3::hash(payload))
    }
}

/// `VolumeKeys` plus a `Debug` that reveals nothing.
trait VolumeKeysDebug: VolumeKeys {}
impl<T: VolumeKeys> VolumeKeysDebug for T {}
impl std::fmt::Debug for dyn VolumeKeysDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKeys(..)")
    }
}

impl Replica {
    /// Opens (or creates) the replica's store, recovers the core from it and starts
    /// the task. `link` carries this replica's outgoing frames.
    pub fn open(
        options: ReplicaOptions,
        keys: Arc<dyn VolumeKeys>,
        link: Arc<dyn Link>,
    ) -> Result<Replica> {
        let keys: Arc<dyn VolumeKeysDebug> = Arc::new(KeysAdapter(keys));
        let store = SqliteStore::open(&options.store_path)?;
        let state = store.load()?;
        let id = options.node.id;
        let volume = options.node.volume;
        let queued = state.queue.clone();
        let node = paxos::Node::recover(options.node, options.genesis, state)?;
        let applied_own = node.applied_seqs().get(&id).copied().unwrap_or(0);
        let pending = queued
            .into_iter()
            .filter(|(seq, _)| *seq > applied_own)
            .map(|(seq, command)| (seq, command.payload))
            .collect();
        let (requests_tx, requests_rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let (frames_tx, frames_rx) = mpsc::channel(INBOX_FRAMES_MAX);
        let (commit_tx, commit_rx) = watch::channel(node.commit_index());
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let killed = Arc::new(AtomicBool::new(false));
        let sole_leader = Arc::new(AtomicBool::new(false));
        let own_sealed = Arc::new(OwnSealed::default());
        let task = Task {
            own_sealed: own_sealed.clone(),
            node,
            store,
            link,
            keys: keys.clone(),
            signing_key: options.signing_key,
            requests: requests_rx,
            frames: frames_rx,
            commit_tx,
            killed: killed.clone(),
            sole_leader: sole_leader.clone(),
            clock: Instant::now(),
            deadlines: BTreeMap::new(),
            last_heard_ms: BTreeMap::new(),
            reported_commit: BTreeMap::new(),
            skipped: BTreeSet::new(),
            own_slots: BTreeMap::new(),
            commit_waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
            snapshot: None,
            pending,
            notified_commit: Slot(0),
            turn: Turn::default(),
            closing: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| Error::Io {
                op: "start the runtime of replica",
                path: options.store_path.clone(),
                source,
            })?;
        std::thread::Builder::new()
            .name(format!("replica-{}", id.0))
            .spawn(move || {
                runtime.block_on(task.run());
                // The task (and the store with it) is gone before anyone hears of it.
                let _ = stopped_tx.send(true);
            })
            .map_err(|source| Error::Io {
                op: "spawn the thread of replica",
                path: options.store_path,
                source,
            })?;
        Ok(Replica {
            id,
            volume,
            requests: requests_tx,
            frames: frames_tx,
            commit_end: commit_rx,
            stopped: stopped_rx,
            applied_end: Arc::new(AtomicU64::new(0)),
            killed,
            keys,
            sole_leader,
            own_sealed,
        })
    }

    /// Whether this device is the only member of the configuration in force (the one
    /// voter, no learners) and its leader: then only its own proposals commit and
    /// nothing commits without it, so its own commit end is the group's and a read
    /// barrier needs no round. Updated after a turn's persists and before any message
    /// of that turn is sent, so another device can commit nothing before this turns
    /// false.
    pub fn is_sole_leader(&self) -> bool {
        self.sole_leader.load(Ordering::Acquire)
    }

    /// This device's id in the group.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The volume.
    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    /// Hands in one frame from `from`, which must be the authenticated sender. Never
    /// blocks and never fails: malformed frames are dropped by the core, and frames
    /// beyond the inbox bound are dropped here.
    pub fn deliver(&self, from: NodeId, bytes: Vec<u8>) {
        if bytes.len() <= paxos::limits::MESSAGE_BYTES_MAX {
            let _ = self.frames.try_send((from, bytes));
        }
    }

    /// Proposes one fossil operation. On return it is sealed, signed and durably
    /// queued: it will be committed once (when a quorum is reachable, across restarts)
    /// and never twice.
    pub async fn propose(&self, op: Vec<u8>) -> Result<ProposalId> {
        let ids = self.propose_many(vec![op]).await?;
        ids.first().copied().ok_or(Error::ReplicaStopped)
    }

    /// Proposes several operations in order, durably queued under one fsync. All or
    /// nothing.
    pub async fn propose_many(&self, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>> {
        if let Some(big) = ops.iter().find(|op| op.len() > entry::OP_BYTES_MAX) {
            return Err(Error::TooLong {
                what: "operation",
                len_bytes: big.len(),
                max_bytes: entry::OP_BYTES_MAX,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.request(Request::Propose { ops, reply }).await?;
        answer.await.map_err(|_| Error::ReplicaStopped)?
    }

    /// Proposes a key rotation (a new epoch's secret sealed to each remaining device),
    /// sealed under the current epoch and signed like an operation; durably queued on
    /// return. Every replica learns the epoch when it reads the entry committed
    /// ([`VolumeKeys::learn_rotation`]) and seals with it from then on.
    pub async fn propose_rotation(&self, rotation: &KeyRotation) -> Result<ProposalId> {
        let plaintext = rotation.to_bytes();
        if plaintext.len() > entry::OP_BYTES_MAX {
            return Err(Error::TooLong {
                what: "key rotation",
                len_bytes: plaintext.len(),
                max_bytes: entry::OP_BYTES_MAX,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.request(Request::ProposeRotation { plaintext, reply })
            .await?;
        answer.await.map_err(|_| Error::ReplicaStopped)?
    }

    /// Waits until proposal `id` is committed and returns its slot (for a proposal
    /// committed so long ago that its slot is forgotten or truncated: a slot at or
    /// after it). `None` if `timeout` passed first: the proposal stays queued.
    pub async fn wait_committed(&self, id: ProposalId, timeout: Duration) -> Result<Option<Slot>> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::WaitCommitted { seq: id.0, reply })
            .await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(slot)) => Ok(Some(slot)),
            Ok(Err(_)) => Err(Error::ReplicaStopped),
            Err(_) => Ok(None),
        }
    }

    /// Up to `count_max` slots (≤ [`READ_SLOTS_MAX`]) of the committed log from `from`,
    /// opened and verified, in slot order, from every author. Slots before the log
    /// start were truncated: `Error::Truncated` says to install [`Replica::snapshot`].
    pub async fn read_committed(&self, from: Slot, count_max: u64) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        let count_max = count_max.min(READ_SLOTS_MAX);
        self.request(Request::Read {
            from,
            count_max,
            reply,
        })
        .await?;
        let raw = answer.await.map_err(|_| Error::ReplicaStopped)??;
        let mut ops = Vec::with_capacity(raw.commands.len());
        let mut refused = Vec::new();
        let mut next = raw.next;
        for command in raw.commands {
            match self.open_command(&command) {
                Ok(OpenedCommand::Op(op)) => ops.push(op),
                Ok(OpenedCommand::Rotation(rotation)) => {
                    // Durable before anything after it is returned: a crash before this
                    // point reads the rotation again (learning is idempotent).
                    match self.keys.learn_rotation(command.slot, &rotation) {
                        Ok(true) => {
                            tracing::info!(volume = ?self.volume, slot = %command.slot, epoch = %rotation.epoch, "new key epoch");
                        }
                        Ok(false) => {
                            tracing::info!(volume = ?self.volume, slot = %command.slot, epoch = %rotation.epoch, "key rotation: nothing new for this device");
                        }
                        Err(error) => {
                            tracing::error!(volume = ?self.volume, slot = %command.slot, %error, "key rotation not kept: reading stops before it");
                            next = command.slot;
                            break;
                        }
                    }
                }
                // Only members' devices propose, so an author this device does not know
                // is one it has not heard of yet (its announcement is on the way).
                // Refusing would be final here and not on devices that know it: the
                // run stops before it instead, and a later read tries again. Likewise
                // an epoch not held yet: its rotation is learned from the log or a
                // checkpoint, never refused for good.
                Err(Error::EntryUnknownAuthor { author }) => {
                    tracing::info!(volume = ?self.volume, slot = %command.slot, %author, "committed entry from a device not known yet: waiting");
                    next = command.slot;
                    break;
                }
                Err(Error::EntryUnknownKeyEpoch { epoch }) => {
                    tracing::warn!(volume = ?self.volume, slot = %command.slot, epoch, "committed entry under a key epoch not held here: waiting");
                    next = command.slot;
                    break;
                }
                Err(error) => {
                    tracing::warn!(volume = ?self.volume, slot = %command.slot, %error, "refusing committed entry");
                    refused.push((command.slot, error));
                }
            }
        }
        Ok(Committed { ops, refused, next })
    }

    /// This device's own proposals that are durably queued and not yet committed, in
    /// proposal order, opened: fossil's pending layer (they survive restarts).
    pub async fn pending(&self) -> Result<Vec<(ProposalId, Vec<u8>)>> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Pending { reply }).await?;
        let sealed = answer.await.map_err(|_| Error::ReplicaStopped)?;
        let mut ops = Vec::with_capacity(sealed.len());
        for (seq, payload) in sealed {
            let command = RawCommand {
                slot: Slot(0),
                proposer: self.id,
                seq,
                payload,
            };
            // A queued key rotation is not fossil's.
            if let OpenedCommand::Op(op) = self.open_command(&command)? {
                ops.push((ProposalId(seq), op.op));
            }
        }
        Ok(ops)
    }

    /// The commit end (every slot below it is committed here), as it changes.
    pub fn commits(&self) -> watch::Receiver<Slot> {
        self.commit_end.clone()
    }

    /// Records how far fossil has applied the log (shown by [`Replica::status`]).
    pub fn note_applied(&self, applied_end: Slot) {
        self.applied_end.fetch_max(applied_end.0, Ordering::Relaxed);
    }

    /// The checkpoint the log is truncated behind, if any, opened and verified. A
    /// lagging device that was sent a snapshot (or any device after compacting)
    /// installs it when `read_committed` answers `Truncated`.
    pub async fn snapshot(&self) -> Result<Option<Checkpoint>> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Snapshot { reply }).await?;
        let Some(snapshot) = answer.await.map_err(|_| Error::ReplicaStopped)? else {
            return Ok(None);
        };
        let (rotations, checkpoint) = SnapshotState::decode(&snapshot.state)?;
        // The rotations the truncated log held, oldest first: each is sealed under an
        // epoch the one before it starts, so a device that missed them learns them all.
        for sealed in rotations {
            let opened = match entry::Entry::open(
                sealed,
                self.volume,
                |epoch| self.keys.entry_key(epoch),
                |author| self.keys.verifying_key(author),
            ) {
                Ok(opened) if opened.header.kind == EntryKind::KeyRotation => opened,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%error, "a key rotation carried by the checkpoint does not open here");
                    continue;
                }
            };
            match KeyRotation::from_bytes(&opened.plaintext) {
                Ok(rotation) => {
                    self.keys.learn_rotation(snapshot.slot, &rotation)?;
                }
                Err(error) => tracing::warn!(%error, "a carried key rotation does not decode"),
            }
        }
        let opened = entry::Entry::open(
            checkpoint,
            self.volume,
            |epoch| self.keys.entry_key(epoch),
            |author| self.keys.verifying_key(author),
        )?;
        if opened.header.kind != EntryKind::Checkpoint || opened.header.seq != snapshot.slot.0 {
            return Err(Error::EntryMisattributed {
                slot: snapshot.slot,
                author: opened.header.author,
                seq: opened.header.seq,
                proposer: opened.header.author,
                log_seq: snapshot.slot.0,
            });
        }
        Ok(Some(Checkpoint {
            through: snapshot.slot,
            author: opened.header.author,
            state: opened.plaintext,
        }))
    }

    /// Truncates the log before `through + 1`, replacing it with fossil's checkpoint of
    /// everything applied through `through` (which must be committed here). Lagging
    /// devices that need truncated slots are sent the checkpoint instead.
    pub async fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Compact {
            through,
            checkpoint,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::ReplicaStopped)?
    }

    /// A linearizable read barrier (read-index, no leases): returns a slot `s` such
    /// that state applied through `s − 1` reflects every write committed before this
    /// call. Retries until `timeout`; `NoQuorum` if no leader could confirm it.
    pub async fn read_index(&self, timeout: Duration) -> Result<Slot> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let (reply, answer) = oneshot::channel();
            self.request(Request::ReadIndex { reply }).await?;
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(Ok(slot))) => return Ok(slot),
                Ok(Ok(Err(()))) => {}
                Ok(Err(_)) => return Err(Error::ReplicaStopped),
                Err(_) => return Err(Error::NoQuorum { timeout_ms }),
            }
            // Refused (no leader yet, or leadership lost): try again shortly.
            let pause = tokio::time::Instant::now() + Duration::from_millis(20);
            if pause >= deadline {
                return Err(Error::NoQuorum { timeout_ms });
            }
            tokio::time::sleep_until(pause).await;
        }
    }

    /// Proposes the next configuration (a stop entry). Only the leader can; others
    /// answer `NotLeader`. Authorization (the owner's signature) is the caller's.
    pub async fn reconfigure(&self, next: Config) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Reconfigure { next, reply }).await?;
        answer.await.map_err(|_| Error::ReplicaStopped)?
    }

    /// Applies `change` to the configuration in force (majority quorums over the new
    /// voters) and proposes the result with [`Replica::reconfigure`].
    pub async fn change_membership(&self, change: MembershipChange) -> Result<()> {
        let current = self.status().await?.config;
        let next = next_config(&current, change)?;
        self.reconfigure(next).await
    }

    /// The replica's state for `kith status`.
    pub async fn status(&self) -> Result<ReplicaStatus> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Status { reply }).await?;
        let mut status = answer.await.map_err(|_| Error::ReplicaStopped)?;
        status.applied_end = Slot(self.applied_end.load(Ordering::Relaxed));
        Ok(status)
    }

    /// Stops the task after the current turn and waits until its store is closed.
    pub async fn close(&self) {
        let _ = self.requests.send(Request::Close).await;
        self.wait_stopped().await;
    }

    /// Stops the task as a crash would: at the next effect boundary, leaving unsynced
    /// writes unsynced and later effects unexecuted. Waits until the store is closed.
    pub async fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.requests.try_send(Request::Close);
        self.wait_stopped().await;
    }

    /// Whether the task has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    async fn wait_stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    async fn request(&self, request: Request) -> Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::ReplicaStopped)
    }

    fn open_command(&self, command: &RawCommand) -> Result<OpenedCommand> {
        let opened = if command.proposer == self.id
            && self.own_sealed.is_own(command.seq, &command.payload)
        {
            entry::Entry::open_own(&command.payload, self.volume, |epoch| {
                self.keys.entry_key(epoch)
            })?
        } else {
            entry::Entry::open(
                &command.payload,
                self.volume,
                |epoch| self.keys.entry_key(epoch),
                |author| self.keys.verifying_key(author),
            )?
        };
        let header = opened.header;
        if !matches!(header.kind, EntryKind::Op | EntryKind::KeyRotation)
            || header.author != command.proposer
            || header.seq != command.seq
        {
            return Err(Error::EntryMisattributed {
                slot: command.slot,
                author: header.author,
                seq: header.seq,
                proposer: command.proposer,
                log_seq: command.seq,
            });
        }
        if header.kind == EntryKind::KeyRotation {
            return KeyRotation::from_bytes(&opened.plaintext).map(OpenedCommand::Rotation);
        }
        Ok(OpenedCommand::Op(CommittedOp {
            slot: command.slot,
            author: header.author,
            seq: header.seq,
            op: opened.plaintext,
        }))
    }
}

/// [`Replica`] for synchronous callers (fossil and the FUSE threads): each method runs
/// the async one to completion on a small runtime of its own. Calling it from inside a
/// tokio runtime would block that runtime's thread, so that is refused with
/// `Error::Config`; async code uses [`Replica`] directly.
#[derive(Clone, Debug)]
pub struct BlockingReplica {
    replica: Replica,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BlockingReplica {
    /// Wraps `replica`.
    pub fn new(replica: Replica) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::Config {
                reason: format!("runtime for blocking replica calls: {e}"),
            })?;
        Ok(BlockingReplica {
            replica,
            runtime: Arc::new(runtime),
        })
    }

    /// The async handle.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn run<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Config {
                reason: "BlockingReplica called from inside a tokio runtime".to_owned(),
            });
        }
        self.runtime.block_on(future)
    }

    /// [`Replica::propose`].
    pub fn propose(&self, op: Vec<u8>) -> Result<ProposalId> {
        self.run(self.replica.propose(op))
    }

    /// [`Replica::propose_many`].
    pub fn propose_many(&self, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>> {
        self.run(self.replica.propose_many(ops))
    }

    /// [`Replica::pending`].
    pub fn pending(&self) -> Result<Vec<(ProposalId, Vec<u8>)>> {
        self.run(self.replica.pending())
    }

    /// [`Replica::wait_committed`].
    pub fn wait_committed(&self, id: ProposalId, timeout: Duration) -> Result<Option<Slot>> {
        self.run(self.replica.wait_committed(id, timeout))
    }

    /// [`Replica::propose_rotation`].
    pub fn propose_rotation(&self, rotation: &KeyRotation) -> Result<ProposalId> {
        self.run(self.replica.propose_rotation(rotation))
    }

    /// [`Replica::read_committed`].
    pub fn read_committed(&self, from: Slot, count_max: u64) -> Result<Committed> {
        self.run(self.replica.read_committed(from, count_max))
    }

    /// The commit end now (every slot below it is committed here).
    pub fn commit_end(&self) -> Slot {
        *self.replica.commit_end.borrow()
    }

    /// Blocks until the commit end passes `seen` or `timeout` passes; returns it.
    pub fn wait_commit_end_above(&self, seen: Slot, timeout: Duration) -> Result<Slot> {
        let mut commits = self.replica.commits();
        self.run(async move {
            let reached = {
                let wait = commits.wait_for(|end| *end > seen);
                match tokio::time::timeout(timeout, wait).await {
                    Ok(Ok(end)) => Some(*end),
                    Ok(Err(_)) => return Err(Error::ReplicaStopped),
                    Err(_) => None,
                }
            };
            Ok(reached.unwrap_or_else(|| *commits.borrow()))
        })
    }

    /// [`Replica::read_index`].
    pub fn read_index(&self, timeout: Duration) -> Result<Slot> {
        self.run(self.replica.read_index(timeout))
    }

    /// [`Replica::snapshot`].
    pub fn snapshot(&self) -> Result<Option<Checkpoint>> {
        self.run(self.replica.snapshot())
    }

    /// [`Replica::compact`].
    pub fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> Result<()> {
        self.run(self.replica.compact(through, checkpoint))
    }

    /// [`Replica::note_applied`].
    pub fn note_applied(&self, applied_end: Slot) {
        self.replica.note_applied(applied_end);
    }

    /// [`Replica::status`].
    pub fn status(&self) -> Result<ReplicaStatus> {
        self.run(self.replica.status())
    }

    /// [`Replica::change_membership`].
    pub fn change_membership(&self, change: MembershipChange) -> Result<()> {
        self.run(self.replica.change_membership(change))
    }
}

/// `current` changed by `change`, numbered current + 1, majority quorums.
pub fn next_config(current: &Config, change: MembershipChange) -> Result<Config> {
    let mut voters = current.voters.clone();
    let mut witnesses = current.witnesses.clone();
    let mut learners = current.learners.clone();
    let remove = |n: NodeId,
                  v: &mut BTreeSet<NodeId>,
                  w: &mut BTreeSet<NodeId>,
                  l: &mut BTreeSet<NodeId>| {
        v.remove(&n);
        w.remove(&n);
        l.remove(&n);
    };
    match change {
        MembershipChange::AddVoter(n) => {
            remove(n, &mut voters, &mut witnesses, &mut learners);
            voters.insert(n);
        }
        MembershipChange::AddWitness(n) => {
            remove(n, &mut voters, &mut witnesses, &mut learners);
            voters.insert(n);
            witnesses.insert(n);
        }
        MembershipChange::AddLearner(n) => {
            remove(n, &mut voters, &mut witnesses, &mut learners);
            learners.insert(n);
        }
        MembershipChange::Remove(n) => remove(n, &mut voters, &mut witnesses, &mut learners),
    }
    Ok(Config::majority(
        ConfigId(current.id.0.saturating_add(1)),
        voters,
        witnesses,
        learners,
    )?)
}

struct KeysAdapter(Arc<dyn VolumeKeys>);

impl VolumeKeys for KeysAdapter {
    fn sealing_key(&self) -> Option<(KeyEpoch, EntryKey)> {
        self.0.sealing_key()
    }
    fn entry_key(&self, epoch: KeyEpoch) -> Option<EntryKey> {
        self.0.entry_key(epoch)
    }
    fn learn_rotation(&self, slot: Slot, rotation: &KeyRotation) -> Result<bool> {
        self.0.learn_rotation(slot, rotation)
    }
    fn verifying_key(&self, author: NodeId) -> Option<VerifyingKey> {
        self.0.verifying_key(author)
    }
}

/// A committed command as the log holds it (still sealed).
/// A committed command, opened: fossil's operation, or a key rotation for the keyring.
enum OpenedCommand {
    Op(CommittedOp),
    Rotation(KeyRotation),
}

/// Key rotations a snapshot carries at most (the newest are kept): a device more
/// rotations behind than that cannot catch up from a checkpoint and pairs again.
pub const ROTATIONS_CARRIED_MAX: usize = 64;
const SNAPSHOT_STATE_MAGIC: &[u8; 4] = b"KSNP";
const SNAPSHOT_STATE_VERSION: u8 = 1;

/// What the Paxos snapshot holds: the sealed key rotations of the truncated log, then
/// the sealed checkpoint entry.
///
/// ```text
/// state = "KSNP" ‖ ver u8 (=1) ‖ n u16 ‖ (len u32 ‖ sealed rotation entry)*n ‖ sealed checkpoint
///       | sealed checkpoint                      (before rotations: starts with entry version 1)
/// ```
struct SnapshotState;

impl SnapshotState {
    fn encode(rotations: &[Vec<u8>], checkpoint: &[u8]) -> Vec<u8> {
        let carried: usize = rotations.iter().map(|r| 4 + r.len()).sum();
        let mut out = Vec::with_capacity(7 + carried + checkpoint.len());
        out.extend_from_slice(SNAPSHOT_STATE_MAGIC);
        out.push(SNAPSHOT_STATE_VERSION);
        out.extend_from_slice(&(rotations.len().min(ROTATIONS_CARRIED_MAX) as u16).to_le_bytes());
        for rotation in rotations.iter().take(ROTATIONS_CARRIED_MAX) {
            out.extend_from_slice(&(rotation.len() as u32).to_le_bytes());
            out.extend_from_slice(rotation);
        }
        out.extend_from_slice(checkpoint);
        out
    }

    /// The carried rotations and the checkpoint entry (shapes checked, nothing opened).
    fn decode(state: &[u8]) -> Result<(Vec<&[u8]>, &[u8])> {
        let Some(rest) = state.strip_prefix(SNAPSHOT_STATE_MAGIC) else {
            return Ok((Vec::new(), state));
        };
        let malformed = || Error::malformed("snapshot", "truncated rotations");
        let (&version, rest) = rest.split_first().ok_or_else(malformed)?;
        if version != SNAPSHOT_STATE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "snapshot",
                version,
            });
        }
        let (count, mut rest) = rest.split_at_checked(2).ok_or_else(malformed)?;
        let count = usize::from(u16::from_le_bytes([count[0], count[1]]));
        if count > ROTATIONS_CARRIED_MAX {
            return Err(Error::malformed("snapshot", "too many rotations"));
        }
        let mut rotations = Vec::with_capacity(count);
        for _ in 0..count {
            let (len, tail) = rest.split_at_checked(4).ok_or_else(malformed)?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len > paxos::limits::ENTRY_BYTES_MAX {
                return Err(Error::malformed("snapshot", "rotation too long"));
            }
            let (rotation, tail) = tail.split_at_checked(len).ok_or_else(malformed)?;
            rotations.push(rotation);
            rest = tail;
        }
        Ok((rotations, rest))
    }
}

#[derive(Debug)]
struct RawCommand {
    slot: Slot,
    proposer: NodeId,
    seq: u64,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct RawRead {
    commands: Vec<RawCommand>,
    next: Slot,
}

#[derive(Debug)]
enum Request {
    Propose {
        ops: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<ProposalId>>>,
    },
    ProposeRotation {
        plaintext: Vec<u8>,
        reply: oneshot::Sender<Result<ProposalId>>,
    },
    WaitCommitted {
        seq: u64,
        reply: oneshot::Sender<Slot>,
    },
    Read {
        from: Slot,
        count_max: u64,
        reply: oneshot::Sender<Result<RawRead>>,
    },
    Snapshot {
        reply: oneshot::Sender<Option<paxos::Snapshot>>,
    },
    Compact {
        through: Slot,
        checkpoint: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    ReadIndex {
        reply: oneshot::Sender<std::result::Result<Slot, ()>>,
    },
    Reconfigure {
        next: Config,
        reply: oneshot::Sender<Result<()>>,
    },
    Status {
        reply: oneshot::Sender<ReplicaStatus>,
    },
    Pending {
        reply: oneshot::Sender<Vec<(u64, Vec<u8>)>>,
    },
    Close,
}

/// A reply held until the turn's persists are synced.
type Deferred = Box<dyn FnOnce() + Send>;

/// What one turn of the loop must still do, in this order: write and sync `persists`,
/// execute `effects`, send `replies`.
#[derive(Default)]
struct Turn {
    persists: Vec<DurableWrite>,
    effects: Vec<Effect>,
    replies: Vec<Deferred>,
}

impl Turn {
    fn push(&mut self, fx: Vec<Effect>) {
        for effect in fx {
            match effect {
                Effect::Persist(write) => self.persists.push(write),
                other => self.effects.push(other),
            }
        }
    }

    fn reply<T: Send + 'static>(&mut self, reply: oneshot::Sender<T>, value: T) {
        self.replies.push(Box::new(move || {
            let _ = reply.send(value);
        }));
    }
}

/// Why the task stops.
#[derive(Debug)]
enum Stop {
    Closed,
    Killed,
    Store(paxos::Error),
}

struct Task {
    node: paxos::Node,
    store: SqliteStore,
    link: Arc<dyn Link>,
    keys: Arc<dyn VolumeKeysDebug>,
    signing_key: Option<SigningKey>,
    requests: mpsc::Receiver<Request>,
    frames: mpsc::Receiver<(NodeId, Vec<u8>)>,
    commit_tx: watch::Sender<Slot>,
    killed: Arc<AtomicBool>,
    /// See [`Replica::is_sole_leader`].
    sole_leader: Arc<AtomicBool>,
    own_sealed: Arc<OwnSealed>,
    clock: Instant,
    deadlines: BTreeMap<Timer, u64>,
    last_heard_ms: BTreeMap<NodeId, u64>,
    /// See [`ReplicaStatus::reported_commit`].
    reported_commit: BTreeMap<NodeId, Slot>,
    /// Committed command slots whose `apply` flag was false (duplicates, gaps).
    skipped: BTreeSet<Slot>,
    /// Commit slot of own proposals, by seq (the latest `OWN_SLOTS_KEPT`).
    own_slots: BTreeMap<u64, Slot>,
    commit_waiters: BTreeMap<u64, Vec<oneshot::Sender<Slot>>>,
    reads: BTreeMap<ReadId, oneshot::Sender<std::result::Result<Slot, ()>>>,
    /// The latest snapshot (installed from a peer or made by `compact`).
    snapshot: Option<paxos::Snapshot>,
    /// The leader's commit index last announced to followers (see `notify_commits`).
    notified_commit: Slot,
    /// Mirror of the core's durable queue of own proposals: sealed payload by seq.
    pending: BTreeMap<u64, Vec<u8>>,
    turn: Turn,
    closing: Option<Stop>,
}

impl Task {
    async fn run(mut self) {
        let fx = self.node.start(self.now_ms());
        self.push(fx);
        let stop = loop {
            if let Err(stop) = self.finish_turn() {
                break stop;
            }
            if let Some(stop) = self.closing.take() {
                break stop;
            }
            self.next_turn().await;
        };
        match stop {
            Stop::Store(error) => {
                tracing::error!(node = %self.node.id(), %error, "replica stopped: store failed");
            }
            Stop::Killed | Stop::Closed => {
                tracing::debug!(node = %self.node.id(), ?stop, "replica stopped");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Adds the core's effects to this turn, keeping the mirror of the durable queue.
    /// (Replies that read the mirror are deferred past the turn's sync like all others.)
    fn push(&mut self, fx: Vec<Effect>) {
        for effect in &fx {
            match effect {
                Effect::Persist(DurableWrite::Enqueue { command }) => {
                    self.pending.insert(command.seq, command.payload.clone());
                }
                Effect::Persist(DurableWrite::Dequeue { through_seq }) => {
                    self.pending = self.pending.split_off(&through_seq.saturating_add(1));
                }
                _ => {}
            }
        }
        self.turn.push(fx);
    }

    /// Waits for input, then handles everything ready (bounded) into `self.turn`.
    async fn next_turn(&mut self) {
        let next_deadline = self.deadlines.values().min().copied();
        let sleep_until = next_deadline.map(|at_ms| {
            tokio::time::Instant::from_std(
                self.clock + Duration::from_millis(at_ms.saturating_sub(1)),
            )
        });
        tokio::select! {
            biased;
            request = self.requests.recv() => match request {
                Some(request) => self.on_request(request),
                None => self.closing = Some(Stop::Closed),
            },
            frame = self.frames.recv() => match frame {
                Some((from, bytes)) => self.on_frame(from, &bytes),
                None => self.closing = Some(Stop::Closed),
            },
            () = sleep_or_forever(sleep_until) => {}
        }
        for _ in 0..INPUTS_PER_TURN_MAX {
            if self.closing.is_some() {
                break;
            }
            let mut idle = true;
            if let Ok(request) = self.requests.try_recv() {
                self.on_request(request);
                idle = false;
            }
            if let Ok((from, bytes)) = self.frames.try_recv() {
                self.on_frame(from, &bytes);
                idle = false;
            }
            if idle {
                break;
            }
        }
        self.fire_timers();
        self.notify_commits();
    }

    /// Tells followers about new commits now rather than at the next heartbeat.
    ///
    /// The core announces its commit index on the next `Accept` or heartbeat, so when
    /// the leader is idle a follower learns of a commit up to a heartbeat interval
    /// late, and so does every device waiting to read it. If this turn advanced the
    /// leader's commit index and sent no `Accept` carrying it, start a read-index
    /// round: its heartbeats carry the new commit index to every voter (and learner).
    /// Reads never affect safety; nobody waits on this one.
    fn notify_commits(&mut self) {
        let commit_index = self.node.commit_index();
        if !self.node.is_leader() || commit_index <= self.notified_commit {
            return;
        }
        self.notified_commit = commit_index;
        let announced = self.turn.effects.iter().any(|effect| {
            matches!(effect, Effect::Send { msg, .. }
                if matches!(msg.body, paxos::Body::Accept { decided, .. } if decided >= commit_index))
        });
        if !announced && let Ok((_, fx)) = self.node.read(self.now_ms()) {
            self.push(fx);
        }
    }

    fn fire_timers(&mut self) {
        let now_ms = self.now_ms();
        let due: Vec<Timer> = self
            .deadlines
            .iter()
            .filter(|(_, at_ms)| **at_ms <= now_ms)
            .map(|(timer, _)| *timer)
            .collect();
        for timer in due {
            self.deadlines.remove(&timer);
            let fx = self.node.handle_timeout(now_ms, timer);
            self.push(fx);
        }
    }

    fn on_frame(&mut self, from: NodeId, bytes: &[u8]) {
        let Ok(message) = paxos::codec::decode(bytes) else {
            return;
        };
        let now_ms = self.now_ms();
        if self.node.config().is_member(from) {
            self.last_heard_ms.insert(from, now_ms);
            let reported = match &message.body {
                paxos::Body::Fetch { first } => Some(*first),
                paxos::Body::HeartbeatAck { committed, .. }
                | paxos::Body::Promise { committed, .. }
                | paxos::Body::Reject { committed, .. } => Some(*committed),
                _ => None,
            };
            if let Some(slot) = reported {
                self.reported_commit.insert(from, slot);
            }
        }
        let fx = self.node.handle_message(now_ms, from, message);
        self.push(fx);
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Propose { ops, reply } => self.on_propose(ops, reply),
            Request::ProposeRotation { plaintext, reply } => {
                let result = self
                    .propose_sealed_as(EntryKind::KeyRotation, vec![plaintext])
                    .and_then(|ids| ids.first().copied().ok_or(Error::ReplicaStopped));
                self.turn.reply(reply, result);
            }
            Request::WaitCommitted { seq, reply } => {
                if let Some(slot) = self.own_slots.get(&seq) {
                    self.turn.reply(reply, *slot);
                } else if seq <= self.applied_own() {
                    // Committed, but its slot is forgotten: the commit end bounds it.
                    let bound = Slot(self.node.commit_index().0.saturating_sub(1));
                    self.turn.reply(reply, bound);
                } else {
                    self.commit_waiters.entry(seq).or_default().push(reply);
                }
            }
            Request::Read {
                from,
                count_max,
                reply,
            } => {
                let read = self.read_raw(from, count_max);
                self.turn.reply(reply, read);
            }
            Request::Snapshot { reply } => {
                let snapshot = self.snapshot.clone();
                self.turn.reply(reply, snapshot);
            }
            Request::Compact {
                through,
                checkpoint,
                reply,
            } => {
                let result = self.compact(through, &checkpoint);
                self.turn.reply(reply, result);
            }
            Request::ReadIndex { reply } => match self.node.read(self.now_ms()) {
                Ok((id, fx)) => {
                    self.reads.insert(id, reply);
                    self.push(fx);
                }
                Err(_) => self.turn.reply(reply, Err(())),
            },
            Request::Reconfigure { next, reply } => {
                let result = match self.node.reconfigure(self.now_ms(), next) {
                    Ok(fx) => {
                        self.push(fx);
                        Ok(())
                    }
                    Err(paxos::Error::NotAllowed { .. }) if !self.node.is_leader() => {
                        Err(Error::NotLeader {
                            leader: self.node.leader(),
                        })
                    }
                    Err(error) => Err(error.into()),
                };
                self.turn.reply(reply, result);
            }
            Request::Status { reply } => {
                let status = self.status();
                self.turn.reply(reply, status);
            }
            Request::Pending { reply } => {
                let pending = self.pending.iter().map(|(s, p)| (*s, p.clone())).collect();
                self.turn.reply(reply, pending);
            }
            Request::Close => self.closing = Some(Stop::Closed),
        }
    }

    fn applied_own(&self) -> u64 {
        self.node
            .applied_seqs()
            .get(&self.node.id())
            .copied()
            .unwrap_or(0)
    }

    /// Merges queued proposal requests (bounded) into one `propose_many`.
    fn on_propose(&mut self, ops: Vec<Vec<u8>>, reply: oneshot::Sender<Result<Vec<ProposalId>>>) {
        let mut batch = vec![(ops, reply)];
        let mut count: usize = batch.iter().map(|(ops, _)| ops.len()).sum();
        let mut other = None;
        while count < PROPOSALS_PER_BATCH_MAX {
            match self.requests.try_recv() {
                Ok(Request::Propose { ops, reply }) => {
                    count = count.saturating_add(ops.len());
                    batch.push((ops, reply));
                }
                Ok(request) => {
                    other = Some(request);
                    break;
                }
                Err(_) => break,
            }
        }
        if batch.len() == 1 {
            for (ops, reply) in batch {
                let result = self.propose_sealed(ops);
                self.turn.reply(reply, result);
            }
        } else {
            let all: Vec<Vec<u8>> = batch
                .iter()
                .flat_map(|(ops, _)| ops.iter().cloned())
                .collect();
            match self.propose_sealed(all) {
                Ok(ids) => {
                    let mut ids = ids.into_iter();
                    for (ops, reply) in batch {
                        let mine: Vec<ProposalId> = ids.by_ref().take(ops.len()).collect();
                        self.turn.reply(reply, Ok(mine));
                    }
                }
                Err(_) => {
                    // Refused as a whole (nothing was queued), e.g. too little room in
                    // the queue: each request succeeds or fails on its own.
                    for (ops, reply) in batch {
                        let result = self.propose_sealed(ops);
                        self.turn.reply(reply, result);
                    }
                }
            }
        }
        if let Some(request) = other {
            self.on_request(request);
        }
    }

    /// Seals `ops` with the seqs the core will give them and proposes them.
    fn propose_sealed(&mut self, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>> {
        self.propose_sealed_as(EntryKind::Op, ops)
    }

    /// [`Task::propose_sealed`] for entries of `kind`.
    fn propose_sealed_as(&mut self, kind: EntryKind, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>> {
        let signing_key = self.signing_key.as_ref().ok_or(Error::NoEntryKeys)?;
        let (epoch, key) = self.keys.sealing_key().ok_or(Error::NoEntryKeys)?;
        // The core numbers own proposals consecutively after those applied and queued.
        let first_seq = self
            .applied_own()
            .saturating_add(u64::try_from(self.node.queued()).unwrap_or(u64::MAX))
            .saturating_add(1);
        let mut sealed = Vec::with_capacity(ops.len());
        for (seq, op) in (first_seq..).zip(&ops) {
            let header = EntryHeader {
                kind,
                volume: self.node.options().volume,
                epoch,
                author: self.node.id(),
                seq,
            };
            let entry = entry::Entry::seal(header, op, &key, signing_key)?.into_bytes();
            self.own_sealed.remember(seq, &entry);
            sealed.push(entry);
        }
        let (seqs, fx) = self.node.propose_many(self.now_ms(), sealed)?;
        self.push(fx);
        if seqs.first().is_some_and(|s| *s != first_seq) {
            // Cannot happen while the core numbers its queue contiguously; if it ever
            // does, readers refuse these entries as misattributed rather than trust them.
            tracing::error!(expected = first_seq, got = ?seqs.first(), "proposal seq mismatch");
        }
        Ok(seqs.into_iter().map(ProposalId).collect())
    }

    fn read_raw(&self, from: Slot, count_max: u64) -> Result<RawRead> {
        let log_start = self.node.log_start();
        if from < log_start {
            return Err(Error::Truncated { log_start });
        }
        let end = Slot(from.0.saturating_add(count_max)).min(self.node.commit_index());
        let mut commands = Vec::new();
        let mut bytes: usize = 0;
        let mut slot = from;
        while slot < end {
            if let Some(paxos::Entry::Command(command)) = self.node.committed(slot)
                && !self.skipped.contains(&slot)
            {
                bytes = bytes.saturating_add(command.payload.len());
                if bytes > READ_BYTES_MAX && !commands.is_empty() {
                    break;
                }
                commands.push(RawCommand {
                    slot,
                    proposer: command.proposer,
                    seq: command.seq,
                    payload: command.payload.clone(),
                });
            }
            slot = slot.next();
        }
        Ok(RawRead {
            commands,
            next: slot.max(from),
        })
    }

    fn compact(&mut self, through: Slot, checkpoint: &[u8]) -> Result<()> {
        let signing_key = self.signing_key.as_ref().ok_or(Error::NoEntryKeys)?;
        let (epoch, key) = self.keys.sealing_key().ok_or(Error::NoEntryKeys)?;
        let header = EntryHeader {
            kind: EntryKind::Checkpoint,
            volume: self.node.options().volume,
            epoch,
            author: self.node.id(),
            seq: through.0,
        };
        let sealed = entry::Entry::seal(header, checkpoint, &key, signing_key)?;
        let state = SnapshotState::encode(&self.rotations_through(through), sealed.as_bytes());
        let fx = self.node.compact(self.now_ms(), through, state)?;
        self.push(fx);
        Ok(())
    }

    /// The sealed key rotations a snapshot through `through` must carry: those of the
    /// current snapshot, then those of the log up to `through`; the newest
    /// `ROTATIONS_CARRIED_MAX`.
    fn rotations_through(&self, through: Slot) -> Vec<Vec<u8>> {
        let mut rotations: Vec<Vec<u8>> = self
            .snapshot
            .as_ref()
            .and_then(|snapshot| SnapshotState::decode(&snapshot.state).ok())
            .map(|(carried, _)| carried.into_iter().map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let mut slot = self.node.log_start();
        while slot <= through {
            if let Some(paxos::Entry::Command(command)) = self.node.committed(slot)
                && !self.skipped.contains(&slot)
                && EntryHeader::parse(&command.payload)
                    .is_ok_and(|header| header.kind == EntryKind::KeyRotation)
            {
                rotations.push(command.payload.clone());
            }
            slot = slot.next();
        }
        let excess = rotations.len().saturating_sub(ROTATIONS_CARRIED_MAX);
        rotations.drain(..excess);
        while rotations.iter().map(|r| 4 + r.len()).sum::<usize>()
            > entry::SNAPSHOT_ROTATIONS_BYTES_MAX
        {
            rotations.remove(0);
        }
        rotations
    }

    fn status(&self) -> ReplicaStatus {
        let now_ms = self.now_ms();
        let config = self.node.config().clone();
        let heard_ms_ago = config
            .voters
            .iter()
            .chain(&config.learners)
            .filter(|n| **n != self.node.id())
            .map(|n| {
                let ago = self.last_heard_ms.get(n).map(|t| now_ms.saturating_sub(*t));
                (*n, ago)
            })
            .collect();
        let reported_commit = self
            .reported_commit
            .iter()
            .filter(|(n, _)| config.is_member(**n))
            .map(|(n, slot)| (*n, *slot))
            .collect();
        ReplicaStatus {
            id: self.node.id(),
            volume: self.node.options().volume,
            role: self.node.role(),
            config,
            leader: self.node.leader(),
            heard_ms_ago,
            reported_commit,
            commit_end: self.node.commit_index(),
            log_start: self.node.log_start(),
            applied_end: Slot(0),
            queued: self.node.queued(),
        }
    }

    fn check_killed(&self) -> std::result::Result<(), Stop> {
        if self.killed.load(Ordering::SeqCst) {
            Err(Stop::Killed)
        } else {
            Ok(())
        }
    }

    /// Executes the turn: persists (one sync), then effects in order, then replies.
    /// A kill stops it at the next boundary, as a crash would.
    fn finish_turn(&mut self) -> std::result::Result<(), Stop> {
        let turn = std::mem::take(&mut self.turn);
        if !turn.persists.is_empty() {
            for write in &turn.persists {
                self.check_killed()?;
                self.store.write(write).map_err(Stop::Store)?;
                if let DurableWrite::Snapshot(snapshot) = write {
                    self.snapshot = Some(snapshot.clone());
                    self.forget_before(snapshot.slot);
                }
            }
            self.check_killed()?;
            self.store.sync().map_err(Stop::Store)?;
        }
        let config = self.node.config();
        let sole_leader = self.node.is_leader()
            && config.voters.len() == 1
            && config.voters.contains(&self.node.id())
            && config.learners.is_empty();
        self.sole_leader.store(sole_leader, Ordering::Release);
        let mut commit_end = None;
        for effect in turn.effects {
            self.check_killed()?;
            self.execute(effect, &mut commit_end);
        }
        if let Some(end) = commit_end {
            self.commit_tx.send_replace(end);
        }
        for reply in turn.replies {
            reply();
        }
        // Callers that gave up waiting leave closed senders behind.
        self.commit_waiters.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
        Ok(())
    }

    fn execute(&mut self, effect: Effect, commit_end: &mut Option<Slot>) {
        match effect {
            Effect::Persist(_) => {}
            Effect::Send { to, msg } => self.link.send(to, paxos::codec::encode(&msg)),
            Effect::Commit {
                slot, entry, apply, ..
            } => {
                if let paxos::Entry::Command(command) = &entry {
                    if !apply {
                        self.skipped.insert(slot);
                    } else if command.proposer == self.node.id() {
                        self.own_committed(command.seq, slot);
                    }
                }
                *commit_end = Some(slot.next());
            }
            Effect::InstallSnapshot(snapshot) => {
                let own = snapshot
                    .applied_seqs
                    .get(&self.node.id())
                    .copied()
                    .unwrap_or(0);
                let through = snapshot.slot;
                self.forget_before(through);
                let done: Vec<u64> = self.commit_waiters.range(..=own).map(|(s, _)| *s).collect();
                for seq in done {
                    for waiter in self.commit_waiters.remove(&seq).unwrap_or_default() {
                        let _ = waiter.send(through);
                    }
                }
                self.snapshot = Some(snapshot);
                *commit_end = Some(through.next());
            }
            Effect::SetTimer { timer, at_ms } => {
                self.deadlines.insert(timer, at_ms);
            }
            Effect::ReadReady { id, slot } => {
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Ok(slot));
                }
            }
            Effect::ReadFailed { id, .. } => {
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Err(()));
                }
            }
            Effect::ProposalRejected { seq, reason } => {
                tracing::debug!(seq, ?reason, "proposal waits for a leader");
            }
            Effect::LeaderChanged { leader } => {
                tracing::debug!(node = %self.node.id(), ?leader, "leader changed");
            }
        }
    }

    fn own_committed(&mut self, seq: u64, slot: Slot) {
        self.own_slots.insert(seq, slot);
        while self.own_slots.len() > OWN_SLOTS_KEPT {
            self.own_slots.pop_first();
        }
        for waiter in self.commit_waiters.remove(&seq).unwrap_or_default() {
            let _ = waiter.send(slot);
        }
    }

    fn forget_before(&mut self, through: Slot) {
        self.skipped = self.skipped.split_off(&through.next());
    }
}

async fn sleep_or_forever(until: Option<tokio::time::Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn only_the_exact_bytes_sealed_here_count_as_own_and_only_once() {
        let own = OwnSealed::default();
        own.remember(7, b"sealed entry");
        assert!(!own.is_own(8, b"sealed entry"), "another seq");
        assert!(!own.is_own(7, b"sealed entrY"), "other bytes");
        own.remember(7, b"sealed entry");
        assert!(own.is_own(7, b"sealed entry"));
        assert!(!own.is_own(7, b"sealed entry"), "forgotten once read");
        for seq in 0..(OWN_SEALED_MAX as u64 + 10) {
            own.remember(seq, b"x");
        }
        assert_eq!(own.0.lock().len(), OWN_SEALED_MAX);
        assert!(!own.is_own(0, b"x"), "the oldest went first");
    }

    #[test]
    fn membership_changes_renumber_and_requorum() {
        let genesis = Config::majority(ConfigId(1), ids(&[1, 2]), [], []).unwrap();
        let with_witness = next_config(&genesis, MembershipChange::AddWitness(NodeId(3))).unwrap();
        assert_eq!(with_witness.id, ConfigId(2));
        assert_eq!(with_witness.voters, ids(&[1, 2, 3]));
        assert_eq!(with_witness.witnesses, ids(&[3]));
        assert_eq!(with_witness.phase2_quorum, 2);
        // Promoting the witness to a full voter moves it, it does not duplicate it.
        let promoted = next_config(&with_witness, MembershipChange::AddVoter(NodeId(3))).unwrap();
        assert!(promoted.witnesses.is_empty());
        let learner = next_config(&promoted, MembershipChange::AddLearner(NodeId(2))).unwrap();
        assert_eq!(learner.voters, ids(&[1, 3]));
        assert_eq!(learner.learners, ids(&[2]));
        let removed = next_config(&learner, MembershipChange::Remove(NodeId(2))).unwrap();
        assert!(removed.learners.is_empty());
        assert_eq!(removed.id, ConfigId(5));
        // The core's rules still hold: the last leader-capable voter cannot go.
        let only_witness = Config::new(ConfigId(1), ids(&[1, 2]), ids(&[2]), [], 2, 1).unwrap();
        assert!(next_config(&only_witness, MembershipChange::Remove(NodeId(1))).is_err());
    }
}
