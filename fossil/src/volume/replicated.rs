//! A volume on a group log ([`Agreement`]): the committed layer and the pending layer.
//!
//! The SQLite namespace holds, in committed transactions, exactly the committed log
//! through `applied_end` (invariant 3 holds on disk). This device's own ops that are
//! not committed yet form the pending layer: they are applied on top, inside the one
//! open transaction, so programs here see their changes at once, online or offline.
//! When commits arrive: roll the transaction back, apply the committed run and commit,
//! then apply the still-pending ops again. `apply` is deterministic and every op
//! carries its preconditions, so a pending op resolves at commit exactly as it does on
//! every other device (a conflict name, a conflict copy, a no-op).
//!
//! Ordering: an op's blocks are synced before the op is proposed (other devices fetch
//! them from here). Ops queue in memory like the single-device log buffer and are
//! proposed together at commit points (interval, fsync, close of a written file,
//! `sync_all`); a crash before that loses only un-fsynced work. Proposed ops are
//! durable in the agreement and come back through `Agreement::pending` on restart.
//!
//! What other devices changed is reported, after the volume lock is released, to the
//! `on_remote_change` hook as [`Invalidation`]s: the inodes and names a remote op
//! touched, and those of this device's own ops whose outcome changed (a pending create
//! that committed under a conflict name keeps its inode number; only its name moves).
//!
//! Checkpoints: once the log since the last checkpoint passes a bound
//! ([`CHECKPOINT_OPS_DEFAULT`] slots or [`CHECKPOINT_BYTES_DEFAULT`] bytes of ops), the
//! background thread captures the committed layer into an [`Image`] — read on a second
//! SQLite connection, whose read transaction sees exactly the committed state (the
//! pending layer lives in the main connection's open transaction), so no request
//! waits for the scan — stores it, syncs the store and only then has the agreement
//! truncate its log behind it (`Agreement::compact`). Each device compacts on its own.
//!
//! Progress: a run of committed ops is applied in one transaction (a device added
//! later replays the whole log at open that way), and the agreement hears of the
//! applied end only when it commits. So the run tells an [`ApplyProgressHook`] how far
//! it has come as it goes, at a bounded rate, for `kith status` to show.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use venti::BlockRef;

use super::{Shared, State};
use crate::agreement::{Agreement, CommittedRun, ProposalId, Slot};
use crate::apply::{Outcome, apply};
use crate::checkpoint::Image;
use crate::namespace::Namespace;
use crate::op::{Op, OpBody};
use crate::{Error, InodeNo, Result};

/// Most committed slots read from the agreement per call.
const COMMITTED_READ_MAX: usize = 1024;
/// After a read barrier found no quorum, opens skip it this long.
const BARRIER_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A joined device waiting for genesis re-checks this often.
const GENESIS_POLL: Duration = Duration::from_millis(100);
/// After a failed catch-up the applier waits this long before trying again.
const APPLIER_RETRY: Duration = Duration::from_millis(200);
/// Most committed ops kept read ahead of the applied end (see [`CommittedAhead`]).
const AHEAD_OPS_MAX: usize = 4 * COMMITTED_READ_MAX;
/// And most bytes of them.
const AHEAD_BYTES_MAX: usize = 16 << 20;
/// Most ops handed to the agreement in one call (the replica refuses a call that does
/// not fit its queue whole; this keeps one call well inside it).
const PROPOSE_OPS_MAX: usize = 1024;
/// A checkpoint is due once this many slots were applied since the last one. The log
/// behind a checkpoint costs memory and disk on every device (the agreement keeps
/// committed entries, sealed and signed, a few hundred bytes each for metadata ops)
/// and replay time for a device that catches up; a checkpoint costs one scan of the
/// namespace and the image's new chunks in the store (unchanged stretches of the
/// image dedupe). At 10,000 slots the log stays at a few MB while a namespace of
/// 100,000 files is scanned at most once per 10,000 changes.
pub const CHECKPOINT_OPS_DEFAULT: u64 = 10_000;
/// Or once this many bytes of committed ops were applied (ops carrying inline content
/// of up to 4 KiB fill the log faster than their count says).
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 32 << 20;
/// After a failed automatic checkpoint, the next attempt waits this long.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(30);
/// A run being applied tells its [`ApplyProgressHook`] after this many ops at the
/// latest...
const PROGRESS_OPS_MAX: u64 = 256;
/// ...or sooner, once this long passed since it last told it (slow ops: snapshots).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// The clock is read every this many ops, not for each (it would cost more than the
/// rest of the reporting).
const PROGRESS_CLOCK_OPS: u64 = 16;

/// Something the kernel may hold in its caches that a remote change made stale.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invalidation {
    /// Attributes or content of this inode changed.
    Inode(InodeNo),
    /// A name appeared in, vanished from or moved within `parent`.
    Entry { parent: InodeNo, name: OsString },
}

/// Where this device is with the volume's log (`kith status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncStatus {
    /// Every committed slot below it is applied.
    pub applied_end: u64,
    /// Every slot below it is committed, as far as this device knows.
    pub commit_end: u64,
    /// This device's ops not committed yet (proposed or still to be proposed).
    pub pending: usize,
    /// Of those, ops not proposed yet (until the next commit point).
    pub unproposed: usize,
}

/// How far a run of committed ops being applied has come (see [`ApplyProgressHook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyProgress {
    /// Every committed slot below it is applied in the run's transaction. That is
    /// committed to the database only when the run ends: a run that fails is rolled
    /// back, and what it told is not applied after all.
    pub applied_end: u64,
    /// Where the run stops: the commit end (as far as it is taken) when it began.
    pub end: u64,
}

/// Told how far a long run of committed ops has come while it is applied: at open
/// (a device that was away, or added later, replays the log) and in a catch-up.
/// Every [`PROGRESS_OPS_MAX`] ops, or sooner once [`PROGRESS_INTERVAL`] passed, and
/// once more when a run ends. It runs on the applying thread, inside `open` or under
/// the volume lock: it must be quick (store a number) and must not call the volume.
pub type ApplyProgressHook = Arc<dyn Fn(ApplyProgress) + Send + Sync>;

/// Tells an [`ApplyProgressHook`] (if any) how a run goes, at a bounded rate.
struct ProgressReporter<'a> {
    hook: Option<&'a ApplyProgressHook>,
    end: Slot,
    /// Ops applied since the hook was last told, and since the clock was last read.
    ops_since_told: u64,
    ops_since_clock: u64,
    told_at: Instant,
}

impl<'a> ProgressReporter<'a> {
    fn new(hook: Option<&'a ApplyProgressHook>, end: Slot) -> ProgressReporter<'a> {
        ProgressReporter {
            hook,
            end,
            ops_since_told: 0,
            ops_since_clock: 0,
            told_at: Instant::now(),
        }
    }

    /// One more op applied; every slot below `applied_end` is.
    fn applied(&mut self, applied_end: Slot) {
        if self.hook.is_none() {
            return;
        }
        self.ops_since_told += 1;
        self.ops_since_clock += 1;
        let due = if self.ops_since_told >= PROGRESS_OPS_MAX {
            true
        } else if self.ops_since_clock >= PROGRESS_CLOCK_OPS {
            self.ops_since_clock = 0;
            self.told_at.elapsed() >= PROGRESS_INTERVAL
        } else {
            false
        };
        if due {
            self.tell(applied_end);
        }
    }

    fn tell(&mut self, applied_end: Slot) {
        if let Some(hook) = self.hook {
            hook(ApplyProgress {
                applied_end,
                end: self.end,
            });
            self.ops_since_told = 0;
            self.ops_since_clock = 0;
            self.told_at = Instant::now();
        }
    }
}

/// When a replicated volume checkpoints on its own, and where it is with it.
#[derive(Debug)]
pub(super) struct Checkpoints {
    /// A checkpoint is due after this many slots (0: never on its own)...
    ops_max: u64,
    /// ...or this many bytes of committed ops (0: no byte bound).
    bytes_max: u64,
    /// The namespace database, opened a second time to capture the committed layer.
    namespace_path: PathBuf,
    /// The log continues at this slot after the last checkpoint (0: none yet).
    end: AtomicU64,
    /// Bytes of committed ops applied since the last checkpoint.
    bytes: AtomicU64,
    /// Held while a checkpoint is taken: one at a time.
    running: Mutex<()>,
    /// No automatic attempt before this (after a failure).
    retry_at: Mutex<Option<Instant>>,
    /// Test hook: the next checkpoint stops (fails) right after this step, as a
    /// killed process would.
    #[cfg(test)]
    crash_after: Mutex<Option<CheckpointStep>>,
}

/// The steps of a checkpoint, in order (kill points for the crash test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckpointStep {
    Captured,
    ImageWritten,
    ImageSynced,
    Compacted,
}

impl Checkpoints {
    pub(super) fn new(ops_max: u64, bytes_max: u64, namespace_path: PathBuf) -> Checkpoints {
        Checkpoints {
            ops_max,
            bytes_max,
            namespace_path,
            end: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            running: Mutex::new(()),
            retry_at: Mutex::new(None),
            #[cfg(test)]
            crash_after: Mutex::new(None),
        }
    }

    /// No checkpoint runs while the guard lives (GC rounds take turns with them).
    pub(super) fn exclusive(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.running.lock()
    }

    /// A checkpoint through `end - 1` exists (made here or installed).
    fn covered(&self, end: Slot) {
        if self.end.fetch_max(end, Ordering::AcqRel) < end {
            self.bytes.store(0, Ordering::Release);
        }
    }

    /// Test hook: fail here if the test asked to crash after `step`.
    #[cfg(test)]
    fn step(&self, step: CheckpointStep) -> Result<()> {
        if *self.crash_after.lock() == Some(step) {
            return Err(Error::Io(std::io::Error::other(format!(
                "injected crash after {step:?}"
            ))));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn step(&self, _step: CheckpointStep) -> Result<()> {
        Ok(())
    }

    fn note_bytes(&self, bytes: usize) {
        self.bytes
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// Whether the log applied through `applied_end` is long enough to checkpoint.
    fn due(&self, applied_end: Slot) -> bool {
        if self.ops_max == 0 {
            return false;
        }
        if self.retry_at.lock().is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let ops = applied_end.saturating_sub(self.end.load(Ordering::Acquire));
        ops >= self.ops_max
            || self.bytes_max > 0 && ops > 0 && self.bytes.load(Ordering::Acquire) >= self.bytes_max
    }
}

/// The replicated half of a volume's state.
#[derive(Debug)]
pub(super) struct Replica {
    pub(super) agreement: Arc<dyn Agreement>,
    /// This device's uncommitted ops, oldest first: the proposed ones, then the batch
    /// waiting for the next commit point.
    pub(super) pending: VecDeque<PendingOp>,
    /// The next slot to apply; every committed slot below it is in the database.
    pub(super) applied_end: Slot,
    pub(super) applied_end_shared: Arc<AtomicU64>,
    /// The first `committed_prefix` pending ops are known to be committed, exactly as
    /// proposed and with nothing between them, in the slots `applied_end..verified_end`:
    /// the open transaction already holds their committed effect. They become
    /// committed state in groups (see [`State::catch_up`]).
    committed_prefix: usize,
    verified_end: Slot,
    /// When the oldest op of the committed prefix was seen committed.
    deferred_since: Option<Instant>,
    /// How long (and how many ops) a committed prefix may wait for its database commit.
    group_commit: Duration,
    group_commit_ops_max: usize,
    create_if_empty: bool,
    genesis_wait: Duration,
    /// Gathered under the lock, handed to the hook after it is released.
    invalidations: Vec<Invalidation>,
    /// Held by whoever hands a batch to the agreement, from taking the batch (under the
    /// volume lock) until its ids are recorded (under it again): batches reach the
    /// agreement in the order they were taken, and proposing (an fsync in the replica)
    /// does not hold the volume lock. Lock order: `proposing`, then the volume lock;
    /// code already holding the volume lock may only `try_lock` it.
    pub(super) proposing: Arc<Mutex<()>>,
    ahead: CommittedAhead,
    pub(super) checkpoints: Arc<Checkpoints>,
    /// Told how a long run goes while it is applied.
    pub(super) apply_progress: ProgressHook,
}

/// An optional [`ApplyProgressHook`]; `Debug` says only whether there is one.
#[derive(Clone, Default)]
pub(super) struct ProgressHook(pub(super) Option<ApplyProgressHook>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProgressHook")
            .field(&self.0.is_some())
            .finish()
    }
}

/// Committed ops the applier read from the agreement without the volume lock, for the
/// next catch-up to apply. Reading verifies every entry (a signature check each),
/// which under the lock would hold every request up for the whole run. Committed slots
/// never change, so what is read ahead stays right until it is applied.
#[derive(Debug, Default)]
struct CommittedAhead {
    /// Every committed slot in `from..next` that holds an op is in `ops`, in order.
    from: Slot,
    next: Slot,
    ops: VecDeque<(Slot, Vec<u8>)>,
    /// Bytes in `ops`.
    bytes: usize,
}

impl CommittedAhead {
    /// Up to `count_max` ops from `from` on, if this run covers `from`.
    fn run(&self, from: Slot, count_max: usize) -> Option<CommittedRun> {
        if from < self.from || from >= self.next || count_max == 0 {
            return None;
        }
        let mut ops: Vec<(Slot, Vec<u8>)> = Vec::new();
        let mut next = self.next;
        for (slot, bytes) in self.ops.iter().filter(|(slot, _)| *slot >= from) {
            if ops.len() == count_max {
                next = *slot;
                break;
            }
            ops.push((*slot, bytes.clone()));
        }
        Some(CommittedRun { ops, next })
    }

    /// Add the run read from `from` if it continues this one (or this one is empty).
    fn extend(&mut self, from: Slot, run: CommittedRun) {
        let run_bytes: usize = run.ops.iter().map(|(_, bytes)| bytes.len()).sum();
        if run.next <= from
            || self.ops.len() + run.ops.len() > AHEAD_OPS_MAX
            || self.bytes + run_bytes > AHEAD_BYTES_MAX
        {
            return;
        }
        if self.next <= self.from || self.ops.is_empty() && from != self.next {
            self.from = from;
            self.ops.clear();
            self.bytes = 0;
        } else if from != self.next {
            return;
        }
        self.ops.extend(run.ops);
        self.bytes += run_bytes;
        self.next = run.next;
    }

    /// Drop what is applied (everything below `end`).
    fn forget_below(&mut self, end: Slot) {
        while let Some((slot, bytes)) = self.ops.front() {
            if *slot >= end {
                break;
            }
            self.bytes -= bytes.len();
            self.ops.pop_front();
        }
        self.from = self.from.max(end);
        if self.from >= self.next {
            self.ops.clear();
            self.bytes = 0;
            self.next = self.from;
        }
    }

    /// Where reading ahead goes on, for a volume applied through `applied_end`.
    fn read_from(&self, applied_end: Slot) -> Slot {
        if self.from <= applied_end && self.next > applied_end {
            self.next
        } else {
            applied_end
        }
    }
}

#[derive(Debug)]
pub(super) struct PendingOp {
    op: Op,
    proposal: Proposal,
    /// What it did in the pending layer last time it was applied.
    outcome: Outcome,
}

/// Where a pending op is on its way into the agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposal {
    /// Waiting for the next commit point.
    Queued,
    /// Taken into the batch a proposer is handing to the agreement without the volume
    /// lock; only while that proposer holds [`Replica::proposing`].
    InFlight,
    /// Durably queued in the agreement.
    Proposed(ProposalId),
}

/// One batch taken from the queue under the volume lock, proposed without it.
struct Batch {
    agreement: Arc<dyn Agreement>,
    /// The encoded ops, in seq order, and their seqs.
    ops: Vec<Vec<u8>>,
    seqs: Vec<u64>,
    /// The content store must be synced before the ops go out (`content_generation`
    /// when the batch was taken).
    content_unsynced: Option<u64>,
}

impl Replica {
    pub(super) fn new(
        agreement: Arc<dyn Agreement>,
        create_if_empty: bool,
        genesis_wait: Duration,
        group_commit: Duration,
        group_commit_ops_max: usize,
        checkpoints: Checkpoints,
    ) -> Replica {
        Replica {
            agreement,
            pending: VecDeque::new(),
            applied_end: 0,
            applied_end_shared: Arc::new(AtomicU64::new(0)),
            committed_prefix: 0,
            verified_end: 0,
            deferred_since: None,
            group_commit,
            group_commit_ops_max,
            create_if_empty,
            genesis_wait,
            invalidations: Vec::new(),
            proposing: Arc::new(Mutex::new(())),
            ahead: CommittedAhead::default(),
            checkpoints: Arc::new(checkpoints),
            apply_progress: ProgressHook::default(),
        }
    }

    /// Add a local op to the batch; answers the provisional slot it is applied at.
    pub(super) fn queue(&mut self, op: Op) -> u64 {
        let slot = self.provisional_slot(self.pending.len());
        self.pending.push_back(PendingOp {
            op,
            proposal: Proposal::Queued,
            outcome: Outcome::Applied,
        });
        slot
    }

    /// Pending ops are applied as if they committed next, in order (only snapshots
    /// record their slot; the committed one replaces it).
    fn provisional_slot(&self, index: usize) -> u64 {
        self.applied_end + index as u64
    }

    pub(super) fn unproposed(&self) -> usize {
        self.pending
            .iter()
            .filter(|op| !matches!(op.proposal, Proposal::Proposed(_)))
            .count()
    }

    /// Ops not committed in the group yet.
    pub(super) fn uncommitted(&self) -> usize {
        self.pending.len() - self.committed_prefix
    }

    /// A batch in flight failed: its ops wait for the next commit point.
    fn requeue_in_flight(&mut self) {
        for pending in &mut self.pending {
            if pending.proposal == Proposal::InFlight {
                pending.proposal = Proposal::Queued;
            }
        }
    }

    /// Up to `count_max` committed ops from `from` on: read ahead, or from the
    /// agreement.
    fn committed(&self, from: Slot, count_max: usize) -> Result<CommittedRun> {
        match self.ahead.run(from, count_max) {
            Some(run) => Ok(run),
            None => self.agreement.committed(from, count_max),
        }
    }

    fn set_applied_end(&mut self, end: Slot) {
        self.ahead.forget_below(end);
        self.committed_prefix = 0;
        self.verified_end = end;
        self.deferred_since = None;
        self.applied_end = end;
        self.applied_end_shared.store(end, Ordering::Release);
        self.agreement.note_applied(end);
    }
}

impl State {
    fn replica(&mut self) -> Result<&mut Replica> {
        self.replica
            .as_mut()
            .ok_or(Error::Invalid("not a replicated volume"))
    }

    /// Open: install the agreement's checkpoint if the database is behind it, apply
    /// what is committed, take back the pending ops, create or wait for the root.
    pub(super) fn recover_replicated(&mut self) -> Result<()> {
        let applied_end = self.ns.applied_end()?;
        self.replica()?.set_applied_end(applied_end);
        let agreement = Arc::clone(&self.replica()?.agreement);
        if let Some((through, root)) = agreement.checkpoint()? {
            self.replica()?
                .checkpoints
                .covered(through.saturating_add(1));
            if applied_end <= through {
                self.install_checkpoint(&root)?;
            }
        }
        self.apply_committed_run(Slot::MAX)?;
        for (id, bytes) in agreement.pending()? {
            let op = match Op::decode(&bytes) {
                Ok(op) => op,
                // Every device will apply it as a no-op when it commits.
                Err(error) => {
                    tracing::warn!(?id, %error, "volume: an own queued op does not decode");
                    continue;
                }
            };
            self.replica()?.pending.push_back(PendingOp {
                op,
                proposal: Proposal::Proposed(id),
                outcome: Outcome::Applied,
            });
        }
        let applied_seq = self.ns.author(self.device)?.map_or(0, |(seq, _)| seq);
        let pending_seq = self
            .replica()?
            .pending
            .iter()
            .map(|pending| pending.op.seq)
            .max()
            .unwrap_or(0);
        self.next_seq = applied_seq.max(pending_seq) + 1;
        let genesis_pending = self
            .replica()?
            .pending
            .iter()
            .any(|pending| matches!(pending.op.body, OpBody::Genesis { .. }));
        if self.ns.inode(InodeNo::ROOT)?.is_none() && !genesis_pending {
            if self.replica()?.create_if_empty {
                self.reapply_pending()?;
                let meta = std::fs::metadata(&self.dir)?;
                self.submit(OpBody::Genesis {
                    owner: self.device,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    perm: 0o755,
                })?;
            } else {
                self.wait_for_genesis()?;
            }
        }
        self.reapply_pending()?;
        self.replica()?.invalidations.clear();
        // Nobody here holds unlinked inodes open after a restart. (A device without
        // write rights yet cannot reclaim; that must not keep it from opening.)
        for ino in self.ns.orphans()? {
            if let Err(error) = self.submit(OpBody::Reclaim { ino }) {
                tracing::debug!(?ino, %error, "volume: orphan left for another device");
            }
        }
        self.propose_batch()
    }

    /// A joined device: apply commits as they come until the root exists, at most
    /// `genesis_wait`.
    fn wait_for_genesis(&mut self) -> Result<()> {
        let agreement = Arc::clone(&self.replica()?.agreement);
        let genesis_wait = self.replica()?.genesis_wait;
        let started = Instant::now();
        loop {
            let remaining = genesis_wait.saturating_sub(started.elapsed());
            if let Ok(Some(barrier)) = agreement.read_barrier(remaining) {
                while agreement.commit_end() < barrier && started.elapsed() < genesis_wait {
                    agreement.wait_commit_end_above(
                        agreement.commit_end(),
                        genesis_wait.saturating_sub(started.elapsed()),
                    )?;
                }
            }
            self.apply_committed_run(Slot::MAX)?;
            if self.ns.inode(InodeNo::ROOT)?.is_some() {
                return Ok(());
            }
            let remaining = genesis_wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(Error::NoRoot {
                    waited_ms: u64::try_from(genesis_wait.as_millis()).unwrap_or(u64::MAX),
                });
            }
            let applied_end = self.replica()?.applied_end;
            agreement.wait_commit_end_above(applied_end, remaining.min(GENESIS_POLL))?;
        }
    }

    /// Replace the committed layer with the checkpoint whose root is `root` (fossil
    /// image root bytes); its blocks come through the content store.
    fn install_checkpoint(&mut self, root: &[u8]) -> Result<()> {
        let root = BlockRef::decode(root).map_err(|error| Error::Corrupt {
            what: "checkpoint root",
            detail: error.to_string(),
        })?;
        let image = Image::decode(&self.content.read_meta(&root)?)?;
        let applied_end = self.replica()?.applied_end;
        if image.applied_end < applied_end {
            return Ok(());
        }
        self.ns.rollback()?;
        self.ns.load(&image)?;
        self.replica()?.set_applied_end(image.applied_end);
        self.replica()?.checkpoints.covered(image.applied_end);
        // Own ops the checkpoint covers are committed.
        let applied_seq = self.ns.author(self.device)?.map_or(0, |(seq, _)| seq);
        self.replica()?
            .pending
            .retain(|pending| pending.op.seq > applied_seq);
        // The kernel may hold anything: every inode and name it looked up is stale.
        let mut stale: Vec<Invalidation> = self
            .lookups
            .keys()
            .map(|&ino| Invalidation::Inode(ino))
            .collect();
        stale.extend(
            self.names
                .values()
                .map(|(parent, name)| Invalidation::Entry {
                    parent: *parent,
                    name: OsString::from_vec(name.clone()),
                }),
        );
        self.replica()?.invalidations.extend(stale);
        tracing::info!(
            applied_end = image.applied_end,
            "volume: installed checkpoint"
        );
        Ok(())
    }

    /// Apply, with the pending layer rolled back, every committed slot up to the
    /// agreement's commit end, and commit the database. Own ops leave the pending
    /// queue; what remote ops (and own ops that resolved otherwise) touched is noted.
    fn apply_committed_run(&mut self, end_max: Slot) -> Result<()> {
        let agreement = Arc::clone(&self.replica()?.agreement);
        let end = agreement.commit_end().min(end_max);
        let mut next = self.replica()?.applied_end;
        if end <= next {
            return Ok(());
        }
        // The committed prefix is applied below like any committed op (its bytes were
        // counted when it was verified).
        let replica = self.replica()?;
        let counted_end = replica.verified_end;
        let checkpoints = Arc::clone(&replica.checkpoints);
        let progress_hook = replica.apply_progress.clone();
        let mut progress = ProgressReporter::new(progress_hook.0.as_ref(), end);
        replica.committed_prefix = 0;
        replica.verified_end = next;
        replica.deferred_since = None;
        self.ns.rollback()?;
        self.ns.begin()?;
        let mut own_committed: Vec<(Op, Outcome)> = Vec::new();
        let mut remote: Vec<Invalidation> = Vec::new();
        while next < end {
            let run = match self.replica()?.committed(next, COMMITTED_READ_MAX) {
                Ok(run) => run,
                Err(error) => match agreement.checkpoint()? {
                    Some((through, root)) if through >= next => {
                        // What this run applied so far lies below the checkpoint.
                        self.ns.rollback()?;
                        self.install_checkpoint(&root)?;
                        let installed = self.replica()?.applied_end;
                        if installed <= next {
                            return Err(error);
                        }
                        self.ns.begin()?;
                        next = installed;
                        continue;
                    }
                    _ => {
                        self.ns.rollback()?;
                        return Err(error);
                    }
                },
            };
            for (slot, bytes) in run.ops {
                if slot >= counted_end {
                    checkpoints.note_bytes(bytes.len());
                }
                match Op::decode(&bytes) {
                    Ok(op) => {
                        let outcome = apply(&self.ns, slot, &op)?;
                        self.after_apply(&outcome)?;
                        if op.author == self.device {
                            own_committed.push((op, outcome));
                        } else {
                            touched(&op, &outcome, &mut remote);
                        }
                    }
                    // Every device sees the same bytes, so skipping is deterministic.
                    Err(error) => {
                        tracing::warn!(slot, %error, "log: undecodable entry applied as a no-op")
                    }
                }
                progress.applied(slot.saturating_add(1));
            }
            if run.next <= next {
                break;
            }
            next = run.next;
        }
        self.ns.set_applied_end(next)?;
        if let Err(error) = self.ns.commit() {
            self.ns.rollback()?;
            return Err(error);
        }
        self.replica()?.set_applied_end(next);
        progress.tell(next);
        let mut changed = remote;
        for (op, outcome) in own_committed {
            let replica = self.replica()?;
            let mut seen = None;
            while replica
                .pending
                .front()
                .is_some_and(|pending| pending.op.seq <= op.seq)
            {
                if let Some(pending) = replica.pending.pop_front()
                    && pending.op.seq == op.seq
                {
                    seen = Some(pending.outcome);
                }
            }
            if seen.as_ref() != Some(&outcome) {
                if let Some(seen) = &seen {
                    touched(&op, seen, &mut changed);
                }
                touched(&op, &outcome, &mut changed);
                self.follow_rename(&outcome);
            }
        }
        self.replica()?.invalidations.extend(changed);
        Ok(())
    }

    /// Extend the committed prefix over the slots up to `end` if they hold exactly the
    /// next pending ops, as proposed; `false` when anything else committed there (a
    /// remote op, or an own op the prefix cannot take, such as a snapshot, which
    /// records its slot).
    fn extend_committed_prefix(&mut self, end: Slot) -> Result<bool> {
        let replica = self.replica()?;
        let mut from = replica.verified_end;
        while from < end {
            let Ok(run) = replica.committed(from, COMMITTED_READ_MAX.min((end - from) as usize))
            else {
                return Ok(false);
            };
            for (_, bytes) in &run.ops {
                let Some(next) = replica.pending.get(replica.committed_prefix) else {
                    return Ok(false);
                };
                if next.proposal == Proposal::Queued
                    || matches!(next.op.body, OpBody::Snapshot { .. })
                    || *bytes != next.op.encode()
                {
                    return Ok(false);
                }
                replica.committed_prefix += 1;
                replica.checkpoints.note_bytes(bytes.len());
            }
            if run.next <= from {
                break;
            }
            from = run.next;
            replica.verified_end = from;
            replica.deferred_since.get_or_insert_with(Instant::now);
        }
        Ok(true)
    }

    /// Every pending op is in the committed prefix: the open transaction holds exactly
    /// the committed state through `verified_end`, so it is committed as it is.
    fn promote_pending(&mut self) -> Result<()> {
        let end = self.replica()?.verified_end;
        self.ns.set_applied_end(end)?;
        if let Err(error) = self.ns.commit() {
            self.reapply_pending()?;
            return Err(error);
        }
        let replica = self.replica()?;
        replica.pending.clear();
        replica.set_applied_end(end);
        Ok(())
    }

    /// The names map follows an own inode that ended up under another name.
    fn follow_rename(&mut self, outcome: &Outcome) {
        if let Outcome::Conflict { ino, parent, name } | Outcome::Created { ino, parent, name } =
            outcome
            && self.names.contains_key(ino)
        {
            self.names.insert(*ino, (*parent, name.clone()));
        }
    }

    /// Build the pending layer again: drop the open transaction, apply every pending
    /// op on the committed layer.
    fn reapply_pending(&mut self) -> Result<()> {
        self.ns.rollback()?;
        self.ns.begin()?;
        let mut pending = std::mem::take(&mut self.replica()?.pending);
        let mut changed = Vec::new();
        let mut result = Ok(());
        for (index, entry) in pending.iter_mut().enumerate() {
            let slot = self.replica()?.provisional_slot(index);
            let outcome = match apply(&self.ns, slot, &entry.op) {
                Ok(outcome) => outcome,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            if let Err(error) = self.after_apply(&outcome) {
                result = Err(error);
                break;
            }
            if outcome != entry.outcome {
                touched(&entry.op, &entry.outcome, &mut changed);
                touched(&entry.op, &outcome, &mut changed);
                self.follow_rename(&outcome);
                entry.outcome = outcome;
            }
        }
        let replica = self.replica()?;
        replica.pending = pending;
        replica.invalidations.extend(changed);
        result
    }

    /// The commit cycle: roll back the pending layer, apply what committed, re-apply
    /// what is still pending.
    ///
    /// Online, what commits is mostly this device's own pending ops, unchanged: the
    /// pending layer already shows them, so they only need to become committed state,
    /// and that is done in groups like the single-device commit (every
    /// `commit_interval_ms` or `commit_ops_max` ops, or when `force`d): the database
    /// commit, and a roll back and apply again when later ops are still pending, are
    /// paid once per group, not once per op.
    ///
    /// Only slots below `end_max` are taken (the applier stops where it read ahead).
    pub(super) fn catch_up(&mut self, force: bool, end_max: Slot) -> Result<()> {
        let (end, applied_end) = {
            let replica = self.replica()?;
            (
                replica.agreement.commit_end().min(end_max),
                replica.applied_end,
            )
        };
        if end <= applied_end {
            return Ok(());
        }
        if self.ns.in_transaction() && self.extend_committed_prefix(end)? {
            let replica = self.replica()?;
            let due = force
                || replica.committed_prefix >= replica.group_commit_ops_max
                || replica
                    .deferred_since
                    .is_some_and(|since| since.elapsed() >= replica.group_commit);
            if !due {
                return Ok(());
            }
            if replica.committed_prefix == replica.pending.len() {
                return self.promote_pending();
            }
        }
        let applied = self.apply_committed_run(end);
        // Whether or not that worked, the pending layer goes back on top.
        let reapplied = self.reapply_pending();
        applied.and(reapplied)
    }

    /// A local op was applied in the pending layer: keep its outcome. A no-op there
    /// means this device may not do it (no rights yet, e.g. a joined device before its
    /// grant commits): the op is dropped unproposed, so it cannot take effect later.
    pub(super) fn note_pending_outcome(&mut self, outcome: &Outcome) -> Result<()> {
        if let Outcome::NoOp(reason) = outcome {
            self.replica()?.pending.pop_back();
            self.next_seq -= 1;
            self.reapply_pending()?;
            return Err(match *reason {
                "author is not a member" | "author lacks rights" => Error::NotPermitted,
                reason => {
                    tracing::error!(reason, "local op applied as a no-op");
                    Error::Invalid(reason)
                }
            });
        }
        if let Some(last) = self.replica()?.pending.back_mut() {
            last.outcome = outcome.clone();
        }
        Ok(())
    }

    /// Propose the queued ops while holding the volume lock (opening, checkpoints, a
    /// full queue). If another thread is proposing outside the lock right now, this
    /// leaves the queue to the next commit point rather than wait for it here (which
    /// would invert the lock order); the callers that need their ops durably queued
    /// use [`propose`], which does wait.
    pub(super) fn propose_batch(&mut self) -> Result<()> {
        let proposing = Arc::clone(&self.replica()?.proposing);
        let Some(_proposing) = proposing.try_lock() else {
            return Ok(());
        };
        let through_seq = self.next_seq.saturating_sub(1);
        while let Some(batch) = self.take_batch(through_seq)? {
            if batch.content_unsynced.is_some() {
                if let Err(error) = self.content.sync() {
                    self.replica()?.requeue_in_flight();
                    return Err(error);
                }
                self.content_unsynced = false;
            }
            let proposed = batch.agreement.propose_many(batch.ops);
            self.record_proposed(&batch.seqs, proposed)?;
        }
        Ok(())
    }

    /// Take the queued ops up to `through_seq` (at most [`PROPOSE_OPS_MAX`], oldest
    /// first) into a batch, marked in flight; `None` if there is none. The caller holds
    /// [`Replica::proposing`].
    fn take_batch(&mut self, through_seq: u64) -> Result<Option<Batch>> {
        let content_unsynced = self.content_unsynced.then_some(self.content_generation);
        let replica = self.replica()?;
        let mut ops = Vec::new();
        let mut seqs = Vec::new();
        for pending in replica
            .pending
            .iter_mut()
            .filter(|pending| pending.proposal == Proposal::Queued && pending.op.seq <= through_seq)
            .take(PROPOSE_OPS_MAX)
        {
            ops.push(pending.op.encode());
            seqs.push(pending.op.seq);
            pending.proposal = Proposal::InFlight;
        }
        let agreement = Arc::clone(&replica.agreement);
        self.uncommitted_ops = 0;
        self.last_commit = Instant::now();
        if ops.is_empty() {
            return Ok(None);
        }
        Ok(Some(Batch {
            agreement,
            ops,
            seqs,
            content_unsynced,
        }))
    }

    /// The agreement answered for the batch of `seqs`: its ops are proposed (those
    /// that committed meanwhile have left the queue already), or back in the queue.
    fn record_proposed(&mut self, seqs: &[u64], proposed: Result<Vec<ProposalId>>) -> Result<()> {
        let replica = self.replica()?;
        let ids = match proposed {
            Ok(ids) if ids.len() == seqs.len() => ids,
            Ok(ids) => {
                replica.requeue_in_flight();
                return Err(Error::Agreement(format!(
                    "proposed {} ops, got {} ids",
                    seqs.len(),
                    ids.len()
                )));
            }
            Err(error) => {
                replica.requeue_in_flight();
                return Err(error);
            }
        };
        let by_seq: std::collections::HashMap<u64, ProposalId> =
            seqs.iter().copied().zip(ids).collect();
        for pending in replica
            .pending
            .iter_mut()
            .filter(|pending| pending.proposal == Proposal::InFlight)
        {
            match by_seq.get(&pending.op.seq) {
                Some(id) => pending.proposal = Proposal::Proposed(*id),
                // Not in this batch: cannot happen while `proposing` is held.
                None => pending.proposal = Proposal::Queued,
            }
        }
        Ok(())
    }

    /// The proposal to wait for so that every op of this device proposed so far is
    /// committed (proposals commit in order).
    pub(super) fn last_proposal(&self) -> Option<ProposalId> {
        self.replica.as_ref().and_then(|replica| {
            replica
                .pending
                .iter()
                .rev()
                .find_map(|pending| match pending.proposal {
                    Proposal::Proposed(id) => Some(id),
                    Proposal::Queued | Proposal::InFlight => None,
                })
        })
    }
}

/// What `op` (with `outcome`) changed that the kernel may have cached.
fn touched(op: &Op, outcome: &Outcome, out: &mut Vec<Invalidation>) {
    let entry = |parent: InodeNo, name: &[u8]| Invalidation::Entry {
        parent,
        name: OsString::from_vec(name.to_vec()),
    };
    match outcome {
        Outcome::NoOp(_) => return,
        Outcome::Created { ino, parent, name } | Outcome::Conflict { ino, parent, name } => {
            out.push(Invalidation::Inode(*ino));
            out.push(Invalidation::Inode(*parent));
            out.push(entry(*parent, name));
        }
        Outcome::Applied | Outcome::Snapshot { .. } => {}
    }
    match &op.body {
        OpBody::Genesis { .. } => out.push(Invalidation::Inode(InodeNo::ROOT)),
        OpBody::Grant { .. } | OpBody::Reclaim { .. } => {}
        OpBody::Create { parent, name, .. } => {
            out.push(Invalidation::Inode(*parent));
            out.push(entry(*parent, name));
        }
        OpBody::Write { ino, .. }
        | OpBody::SetAttr { ino, .. }
        | OpBody::SetXattr { ino, .. }
        | OpBody::RemoveXattr { ino, .. } => out.push(Invalidation::Inode(*ino)),
        OpBody::Link {
            ino,
            new_parent,
            new_name,
        } => {
            out.push(Invalidation::Inode(*ino));
            out.push(Invalidation::Inode(*new_parent));
            out.push(entry(*new_parent, new_name));
        }
        OpBody::Unlink { parent, name, ino } => {
            out.push(Invalidation::Inode(*parent));
            out.push(Invalidation::Inode(*ino));
            out.push(entry(*parent, name));
        }
        OpBody::Rename {
            parent,
            name,
            ino,
            new_parent,
            new_name,
            replaced,
            ..
        } => {
            out.push(Invalidation::Inode(*parent));
            out.push(Invalidation::Inode(*new_parent));
            out.push(Invalidation::Inode(*ino));
            if let Some(replaced) = replaced {
                out.push(Invalidation::Inode(*replaced));
            }
            out.push(entry(*parent, name));
            out.push(entry(*new_parent, new_name));
        }
        OpBody::Snapshot { .. } => {
            out.push(Invalidation::Inode(InodeNo::ROOT));
            out.push(entry(InodeNo::ROOT, super::SNAPSHOTS_NAME));
        }
    }
}

/// Apply what is committed now, then tell the hook what changed (lock released).
///
/// `hook_thread` says where the hook runs: here, or (for calls made while the kernel
/// waits on a request: open, fsync, close) on the notifier thread, since a kernel cache
/// invalidation issued from inside a request can deadlock on the locks that request
/// holds.
pub(super) fn catch_up(shared: &Shared, force: bool, hook_thread: HookThread) -> Result<()> {
    catch_up_to(shared, force, hook_thread, Slot::MAX)
}

/// [`catch_up`] of the slots below `end_max` only.
fn catch_up_to(shared: &Shared, force: bool, hook_thread: HookThread, end_max: Slot) -> Result<()> {
    // Catch-ups that run the hook here are serialized through delivery, so when one
    // returns, whatever an earlier one applied has been told to the hook too.
    let _delivering = match (&shared.sync, hook_thread) {
        (Some(sync), HookThread::Here) => Some(sync.delivering.lock()),
        _ => None,
    };
    let (result, changes) = {
        let mut state = shared.state.lock();
        let result = state.catch_up(force, end_max);
        let changes = match state.replica.as_mut() {
            Some(replica) => std::mem::take(&mut replica.invalidations),
            None => Vec::new(),
        };
        (result, changes)
    };
    deliver(shared, changes, hook_thread);
    result
}

/// Where the hook runs for a catch-up (see [`catch_up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HookThread {
    /// On the calling thread (a fossil thread, or a caller outside any kernel
    /// request), before the catch-up returns.
    Here,
    /// On the notifier thread: the caller is serving a kernel request.
    Notifier,
}

fn deliver(shared: &Shared, mut changes: Vec<Invalidation>, hook_thread: HookThread) {
    if changes.is_empty() {
        return;
    }
    let Some(sync) = shared.sync.as_ref() else {
        return;
    };
    let Some(hook) = sync.on_remote_change.as_ref() else {
        return;
    };
    changes.sort();
    changes.dedup();
    if hook_thread == HookThread::Notifier
        && let Some(notifier) = &sync.notifier
    {
        if notifier.send(changes).is_err() {
            tracing::warn!("volume: the notifier thread is gone; invalidations dropped");
        }
        return;
    }
    hook(&changes);
}

/// Runs the hook for invalidations found while serving requests, in order; ends when
/// the volume is gone (its sender dropped).
pub(super) fn notifier_loop(
    changes: std::sync::mpsc::Receiver<Vec<Invalidation>>,
    hook: super::RemoteChangeHook,
) {
    while let Ok(batch) = changes.recv() {
        hook(&batch);
    }
}

/// Wait (without the volume lock) up to `commit_wait` for this device's proposal
/// `last` to commit, then apply it. A timeout is not an error: the op stays queued.
pub(super) fn wait_committed(shared: &Shared, last: Option<ProposalId>) {
    let (Some(sync), Some(last)) = (&shared.sync, last) else {
        return;
    };
    match sync.agreement.wait_committed(last, sync.commit_wait) {
        Ok(Some(_)) => {
            if let Err(error) = catch_up(shared, false, HookThread::Notifier) {
                tracing::warn!(%error, "volume: applying commits failed");
            }
        }
        Ok(None) => tracing::debug!(
            ?last,
            "volume: no quorum within the commit wait; the ops stay queued"
        ),
        Err(error) => tracing::warn!(%error, "volume: waiting for a commit failed"),
    }
}

/// `open`'s barrier: apply everything committed anywhere before now (bounded).
///
/// Nothing to do when this device is the only one that can commit: all that committed
/// is its own, which the volume shows already.
///
/// Offline every barrier would wait its whole timeout, for every open: after one that
/// found no quorum, opens serve the local state (all there is) without trying again
/// for [`BARRIER_RETRY_AFTER_FAILURE`].
pub(super) fn read_barrier(shared: &Shared) {
    let Some(sync) = &shared.sync else {
        return;
    };
    if sync.agreement.sole_author() {
        return;
    }
    if sync
        .barrier_failed_at
        .lock()
        .is_some_and(|at| at.elapsed() < BARRIER_RETRY_AFTER_FAILURE)
    {
        return;
    }
    let started = Instant::now();
    let barrier = match sync.agreement.read_barrier(sync.read_barrier) {
        Ok(Some(barrier)) => {
            *sync.barrier_failed_at.lock() = None;
            barrier
        }
        Ok(None) => {
            *sync.barrier_failed_at.lock() = Some(Instant::now());
            return;
        }
        Err(error) => {
            *sync.barrier_failed_at.lock() = Some(Instant::now());
            tracing::debug!(%error, "volume: read barrier failed; serving local state");
            return;
        }
    };
    if sync.applied_end.load(Ordering::Acquire) >= barrier {
        return;
    }
    while sync.agreement.commit_end() < barrier {
        let remaining = sync.read_barrier.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            break;
        }
        if let Err(error) = sync
            .agreement
            .wait_commit_end_above(sync.agreement.commit_end(), remaining)
        {
            tracing::debug!(%error, "volume: waiting for the barrier failed");
            break;
        }
    }
    if let Err(error) = catch_up(shared, false, HookThread::Notifier) {
        tracing::warn!(%error, "volume: applying commits failed");
    }
}

/// Propose every op queued so far, holding the volume lock only to take the batch and
/// to record its ids: the content sync and the proposal (fsyncs) run without it, so
/// requests go on meanwhile and the ops they queue form the next batch. Returns once
/// every op queued before the call is durably queued in the agreement (or the
/// proposal failed and they are queued again here).
pub(super) fn propose(shared: &Shared) -> Result<()> {
    let Some(sync) = &shared.sync else {
        return Ok(());
    };
    let _proposing = sync.proposing.lock();
    let through_seq = shared.state.lock().next_seq.saturating_sub(1);
    loop {
        let Some(batch) = shared.state.lock().take_batch(through_seq)? else {
            return Ok(());
        };
        if let Some(generation) = batch.content_unsynced {
            if let Err(error) = shared.content.sync() {
                shared.state.lock().replica()?.requeue_in_flight();
                return Err(error);
            }
            let mut state = shared.state.lock();
            // Blocks referred to since the batch was taken wait for the next sync.
            if state.content_generation == generation {
                state.content_unsynced = false;
            }
        }
        let proposed = batch.agreement.propose_many(batch.ops);
        shared.state.lock().record_proposed(&batch.seqs, proposed)?;
    }
}

/// The timer's commit point: flush idle files, then propose (see [`propose`]).
pub(super) fn background_propose(shared: &Shared) -> Result<()> {
    let flushed = shared.state.lock().flush_idle();
    let proposed = propose(shared);
    flushed.and(proposed)
}

/// `Volume::checkpoint` on a replicated volume: propose what is queued, apply what
/// committed, then checkpoint the committed layer (see [`checkpoint_committed`]).
/// Answers the root of the checkpoint the log is now truncated behind.
pub(super) fn checkpoint(shared: &Shared) -> Result<BlockRef> {
    let Some(sync) = &shared.sync else {
        return Err(Error::Invalid("not a replicated volume"));
    };
    shared.state.lock().flush_all()?;
    propose(shared)?;
    let last = shared.state.lock().last_proposal();
    wait_committed(shared, last);
    catch_up(shared, true, HookThread::Here)?;
    let _running = sync.checkpoints.running.lock();
    if let Some(root) = checkpoint_committed(shared)? {
        return Ok(root);
    }
    // Nothing applied past the last checkpoint: that one stands.
    match sync.agreement.checkpoint()? {
        Some((_, root)) => BlockRef::decode(&root).map_err(|error| Error::Corrupt {
            what: "checkpoint root",
            detail: error.to_string(),
        }),
        None => Err(Error::Invalid("nothing applied to checkpoint yet")),
    }
}

/// The background thread's check: checkpoint if the log since the last checkpoint
/// passed its bound. A failure is logged and retried after [`CHECKPOINT_RETRY`].
pub(super) fn checkpoint_if_due(shared: &Shared) {
    let Some(sync) = &shared.sync else {
        return;
    };
    if !sync
        .checkpoints
        .due(sync.applied_end.load(Ordering::Acquire))
    {
        return;
    }
    let Some(_running) = sync.checkpoints.running.try_lock() else {
        return;
    };
    let started = Instant::now();
    match checkpoint_committed(shared) {
        Ok(Some(_)) => tracing::info!(
            through = sync
                .checkpoints
                .end
                .load(Ordering::Acquire)
                .saturating_sub(1),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "volume: checkpoint taken, log truncated behind it"
        ),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "volume: automatic checkpoint failed; retrying later");
            *sync.checkpoints.retry_at.lock() = Some(Instant::now() + CHECKPOINT_RETRY);
        }
    }
}

/// Checkpoint the committed layer without the volume lock: capture it from a read
/// transaction on a second connection to the namespace database (it sees the last
/// committed state, never the pending layer of the main connection's open
/// transaction), store the image, make it durable (and placed on other voters: the
/// store's sync pushes), and only then have the agreement truncate its log behind it.
/// A crash anywhere in between leaves the old checkpoint and the whole log.
///
/// `None` if the committed layer is not past the agreement's checkpoint. The caller
/// holds `Checkpoints::running`.
fn checkpoint_committed(shared: &Shared) -> Result<Option<BlockRef>> {
    let Some(sync) = &shared.sync else {
        return Err(Error::Invalid("not a replicated volume"));
    };
    let image = {
        let mut reader = Namespace::open_reader(&sync.checkpoints.namespace_path)?;
        reader.begin()?;
        let image = Image::capture(&reader);
        reader.rollback()?;
        image?
    };
    sync.checkpoints.step(CheckpointStep::Captured)?;
    let Some(through) = image.applied_end.checked_sub(1) else {
        return Ok(None);
    };
    if let Some((done, _)) = sync.agreement.checkpoint()? {
        sync.checkpoints.covered(done.saturating_add(1));
        if done >= through {
            return Ok(None);
        }
    }
    let encoded = image.encode();
    drop(image);
    let root = shared.content.write_meta(&encoded)?;
    drop(encoded);
    sync.checkpoints.step(CheckpointStep::ImageWritten)?;
    shared.content.sync()?;
    sync.checkpoints.step(CheckpointStep::ImageSynced)?;
    sync.agreement.compact(through, root.encode().to_vec())?;
    sync.checkpoints.step(CheckpointStep::Compacted)?;
    sync.checkpoints.covered(through.saturating_add(1));
    give_back_free_memory();
    Ok(Some(root))
}

/// After a checkpoint the image, the scan's buffers and the truncated log are freed,
/// tens of MB with 100,000 files, but glibc keeps freed memory in its per-thread
/// arenas: measured with 100,000 files, 246 MB resident of which 157 MB live
/// (`tests/bench/many-files-rss.sh -t`). Hand it back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_back_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it only releases free pages of the
    // allocator's own arenas and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_free_memory() {}

/// Applies commits as the agreement reports them, never holding the volume lock
/// while it waits.
///
/// A group of own ops may wait for its database commit; the poll interval brings it
/// in when its time is up.
pub(super) fn applier_loop(shared: Weak<Shared>, agreement: Arc<dyn Agreement>, poll: Duration) {
    let mut handled: Slot = 0;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if *strong.stop.lock() {
            return;
        }
        let Some(sync) = &strong.sync else {
            return;
        };
        let applied_end = sync.applied_end.load(Ordering::Acquire);
        handled = handled.max(applied_end);
        let end = match agreement.wait_commit_end_above(handled, poll) {
            Ok(end) => end,
            Err(error) => {
                tracing::warn!(%error, "volume: watching the commit end failed");
                pause(&strong, APPLIER_RETRY);
                continue;
            }
        };
        handled = handled.max(end);
        // Verify what committed without the lock, then apply that much under it.
        let read_end = if end > sync.applied_end.load(Ordering::Acquire) {
            read_ahead(&strong, agreement.as_ref())
        } else {
            None
        };
        if end > sync.applied_end.load(Ordering::Acquire)
            && let Err(error) = catch_up_to(
                &strong,
                false,
                HookThread::Here,
                read_end.unwrap_or(Slot::MAX),
            )
        {
            tracing::warn!(%error, "volume: applying commits failed");
            pause(&strong, APPLIER_RETRY);
        }
    }
}

/// Read (and so verify) what committed without the volume lock, for the catch-up
/// that follows (see [`CommittedAhead`]), going on while more commits arrive (at most
/// [`AHEAD_OPS_MAX`] ops); answers where the read-ahead ends, if it covers the
/// applied end. A failure is left to that catch-up, which reads again under the lock
/// and handles it.
fn read_ahead(shared: &Shared, agreement: &dyn Agreement) -> Option<Slot> {
    let mut covered = None;
    for _ in 0..AHEAD_OPS_MAX / COMMITTED_READ_MAX {
        let from = {
            let mut state = shared.state.lock();
            let replica = state.replica.as_mut()?;
            let from = replica.ahead.read_from(replica.applied_end);
            covered = (from > replica.applied_end).then_some(from);
            from
        };
        if from >= agreement.commit_end() {
            break;
        }
        let Ok(run) = agreement.committed(from, COMMITTED_READ_MAX) else {
            break;
        };
        let mut state = shared.state.lock();
        let replica = state.replica.as_mut()?;
        let before = replica.ahead.next;
        replica.ahead.extend(from, run);
        if replica.ahead.next == before {
            // Full, or the applied end moved on meanwhile.
            break;
        }
        covered = Some(replica.ahead.next);
    }
    covered
}

fn pause(shared: &Shared, duration: Duration) {
    let mut stop = shared.stop.lock();
    if !*stop {
        shared.wake.wait_for(&mut stop, duration);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::Caller;
    use crate::agreement::MemGroup;
    use crate::content::{ContentStore, MemContent};
    use crate::op::{DeviceId, Rights};
    use crate::volume::{Volume, VolumeOptions};

    const ME: Caller = Caller {
        uid: 1000,
        gid: 1000,
    };
    const WAIT: Duration = Duration::from_secs(20);

    /// Devices of one group sharing one content store (standing in for fetching).
    struct Devices {
        group: MemGroup,
        content: Arc<MemContent>,
        dirs: Vec<tempfile::TempDir>,
    }

    impl Devices {
        fn new(count: usize) -> Devices {
            Devices {
                group: MemGroup::new(),
                content: Arc::new(MemContent::new()),
                dirs: (0..count).map(|_| tempfile::tempdir().unwrap()).collect(),
            }
        }

        fn open(&self, device: u32, checkpoint_ops: u64) -> Volume {
            self.open_telling(device, checkpoint_ops, None)
        }

        /// [`Devices::open`] with an apply progress hook.
        fn open_telling(
            &self,
            device: u32,
            checkpoint_ops: u64,
            apply_progress: Option<ApplyProgressHook>,
        ) -> Volume {
            let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&self.content));
            let agreement: Arc<dyn Agreement> = self.group.member(device);
            let options = VolumeOptions {
                device: DeviceId(device),
                content: Some(content),
                agreement: Some(agreement),
                create_if_empty: device == 1,
                commit_wait_ms: 50,
                commit_interval_ms: 10,
                checkpoint_ops,
                apply_progress,
                ..VolumeOptions::default()
            };
            Volume::open_with(self.dirs[device as usize - 1].path(), options).unwrap()
        }

        /// The slot the group's log is truncated behind, if any.
        fn compacted_through(&self) -> Option<Slot> {
            self.group
                .member(1)
                .checkpoint()
                .unwrap()
                .map(|(through, _)| through)
        }
    }

    fn mkdirs(volume: &Volume, names: impl IntoIterator<Item = String>) {
        for name in names {
            volume
                .mkdir(InodeNo::ROOT, OsStr::new(&name), 0o755, ME)
                .unwrap();
        }
        volume.sync_all().unwrap();
    }

    fn names(volume: &Volume) -> Vec<String> {
        volume.apply_committed().unwrap();
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let entries = volume.readdir(InodeNo::ROOT, cookie).unwrap();
            let Some(last) = entries.last() else {
                break;
            };
            cookie = last.cookie;
            names.extend(
                entries
                    .iter()
                    .map(|entry| entry.name.to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with('.')),
            );
        }
        names.sort();
        names
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn numbered(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|n| format!("{prefix}-{n:04}")).collect()
    }

    #[test]
    fn the_log_is_truncated_on_its_own_and_a_late_device_starts_from_the_checkpoint() {
        let devices = Devices::new(2);
        let a = devices.open(1, 40);
        a.grant(DeviceId(2), Rights::Write).unwrap();
        mkdirs(&a, numbered("first", 100));
        wait_for("a checkpoint past the first 100 ops", || {
            devices
                .compacted_through()
                .is_some_and(|through| through >= 80)
        });
        mkdirs(&a, numbered("second", 100));
        wait_for("a second checkpoint", || {
            devices
                .compacted_through()
                .is_some_and(|through| through >= 180)
        });
        let through = devices.compacted_through().unwrap();
        assert!(
            devices.group.member(2).committed(0, 10).is_err(),
            "the log before the checkpoint is gone"
        );
        // Device 2 comes late: the image plus the log after it.
        let b = devices.open(2, 40);
        assert!(b.sync_status().applied_end > through);
        let mut expected = numbered("first", 100);
        expected.extend(numbered("second", 100));
        assert_eq!(names(&b), expected);
        mkdirs(&b, ["from-b".to_owned()]);
        expected.push("from-b".to_owned());
        expected.sort();
        wait_for("a to see b's directory", || names(&a) == expected);
    }

    #[test]
    fn a_replay_at_open_tells_its_progress_as_it_goes() {
        const DIRS: usize = 2_000;
        let devices = Devices::new(2);
        let a = devices.open(1, 0);
        a.grant(DeviceId(2), Rights::Write).unwrap();
        mkdirs(&a, numbered("dir", DIRS));
        let end = a.sync_status().commit_end;
        assert!(end > DIRS as u64, "commit end {end}");
        // Device 2 opens with nothing applied: it replays the whole log in one run.
        let told: Arc<Mutex<Vec<ApplyProgress>>> = Arc::default();
        let hook: ApplyProgressHook = {
            let told = Arc::clone(&told);
            Arc::new(move |progress| told.lock().push(progress))
        };
        let b = devices.open_telling(2, 0, Some(hook));
        assert_eq!(b.sync_status().applied_end, end);
        let told = told.lock().clone();
        let ends: Vec<u64> = told.iter().map(|progress| progress.applied_end).collect();
        assert!(
            ends.iter().any(|&applied| 0 < applied && applied < end),
            "no value between 0 and {end}: {ends:?}"
        );
        assert!(
            ends.windows(2).all(|pair| pair[0] <= pair[1]),
            "progress went back: {ends:?}"
        );
        assert_eq!(ends.last(), Some(&end), "the run's end is told last");
        assert!(told.iter().all(|progress| progress.end == end), "{told:?}");
        // Bounded: at most one report per PROGRESS_OPS_MAX ops, or per clock look.
        assert!(
            told.len() as u64 <= end / PROGRESS_CLOCK_OPS + 1,
            "{} reports for {end} slots",
            told.len()
        );
        assert_eq!(names(&b), numbered("dir", DIRS));
    }

    #[test]
    fn a_checkpoint_holds_the_committed_layer_only() {
        let devices = Devices::new(1);
        let a = devices.open(1, 0);
        mkdirs(&a, numbered("committed", 3));
        // Held: the next op stays pending (shown here, not committed in the group).
        devices.group.set_held(true);
        mkdirs(&a, ["pending".to_owned()]);
        assert!(names(&a).contains(&"pending".to_owned()));
        let root = a.checkpoint().unwrap();
        let image = Image::decode(&devices.content.read_meta(&root).unwrap()).unwrap();
        let in_image: Vec<&[u8]> = image
            .dirents
            .iter()
            .map(|(_, name, _)| name.as_slice())
            .collect();
        assert!(in_image.contains(&&b"committed-0001"[..]), "{in_image:?}");
        assert!(
            !in_image.contains(&&b"pending"[..]),
            "pending op in the image"
        );
        assert!(
            names(&a).contains(&"pending".to_owned()),
            "the pending layer is still shown"
        );
        devices.group.set_held(false);
        wait_for("the pending op to commit", || {
            a.sync_status().pending == 0 && names(&a).contains(&"pending".to_owned())
        });
    }

    #[test]
    fn a_crash_at_any_point_of_a_checkpoint_keeps_every_committed_op() {
        let steps = [
            CheckpointStep::Captured,
            CheckpointStep::ImageWritten,
            CheckpointStep::ImageSynced,
            CheckpointStep::Compacted,
        ];
        for step in steps {
            let devices = Devices::new(1);
            let a = devices.open(1, 0);
            let expected = numbered("dir", 30);
            mkdirs(&a, expected.clone());
            let checkpoints = Arc::clone(&a.shared.sync.as_ref().unwrap().checkpoints);
            *checkpoints.crash_after.lock() = Some(step);
            assert!(
                a.checkpoint().is_err(),
                "{step:?}: the crash was not injected"
            );
            a.abandon();
            let compacted = devices.compacted_through().is_some();
            assert_eq!(compacted, step == CheckpointStep::Compacted, "{step:?}");
            // The process died there: what it left opens with every committed op...
            let a = devices.open(1, 0);
            assert_eq!(names(&a), expected, "{step:?}");
            a.abandon();
            // ...even if the database was lost too (rebuilt from the checkpoint, if
            // the log was truncated, plus the log).
            for file in [
                "namespace.sqlite",
                "namespace.sqlite-wal",
                "namespace.sqlite-shm",
            ] {
                let _ = std::fs::remove_file(devices.dirs[0].path().join(file));
            }
            let a = devices.open(1, 0);
            assert_eq!(names(&a), expected, "{step:?}, database lost");
            // A later checkpoint goes through.
            a.checkpoint().unwrap();
            assert!(devices.compacted_through().is_some(), "{step:?}");
        }
    }
}
