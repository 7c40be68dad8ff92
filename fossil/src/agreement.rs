//! The seam between a volume and a log that several devices write: `Agreement`.
//!
//! With one device the slot of an op is known when it is appended ([`crate::log::Log`]).
//! With several, an op gets its slot only when the group commits it, and other devices'
//! ops may commit first. So a replicated volume proposes its ops, keeps them as a
//! pending layer on top of the committed namespace, and applies what the agreement
//! reports committed, in slot order (see `docs/replication.md`).
//!
//! The implementation for real devices is `net`'s replica (Paxos over QUIC), adapted in
//! the `kith` daemon; fossil never sees a socket. Everything here blocks: call it from
//! plain threads, never from inside an async runtime.

use std::time::Duration;

use crate::Result;

/// A log slot: the position of a committed op.
pub type Slot = u64;

/// One of this device's own proposals: its seq in this device's authored sequence
/// (the `seq` of the fossil op it carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// A run of the committed log, verified and opened.
#[derive(Debug, Default)]
pub struct CommittedRun {
    /// Ops to apply, in slot order: `(slot, fossil op bytes)`. Slots that hold no fossil
    /// op (no-ops, membership changes, duplicates, entries every device refuses) are
    /// absent.
    pub ops: Vec<(Slot, Vec<u8>)>,
    /// Where to continue: every slot below it is covered by this run or an earlier one.
    pub next: Slot,
}

/// A volume's replicated log as fossil uses it.
pub trait Agreement: Send + Sync + std::fmt::Debug {
    /// Queue `ops` (encoded fossil ops authored by this device, in seq order) durably:
    /// on return they survive a crash and will be committed in this order, now or when
    /// a quorum is reachable. The blocks they refer to must already be durable.
    fn propose_many(&self, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>>;
    /// This device's queued ops that are not committed yet, oldest first (after a
    /// restart too).
    fn pending(&self) -> Result<Vec<(ProposalId, Vec<u8>)>>;
    /// Up to `count_max` committed slots from `from` on.
    fn committed(&self, from: Slot, count_max: usize) -> Result<CommittedRun>;
    /// Every slot below it is committed on this device.
    fn commit_end(&self) -> Slot;
    /// Blocks until the commit end passes `seen` or `timeout` passes; answers it.
    fn wait_commit_end_above(&self, seen: Slot, timeout: Duration) -> Result<Slot>;
    /// Blocks until own proposal `id` is committed (`Some(slot)`) or `timeout` passes
    /// (`None`: it stays queued and commits later).
    fn wait_committed(&self, id: ProposalId, timeout: Duration) -> Result<Option<Slot>>;
    /// A read barrier (read index): a slot such that every op committed anywhere before
    /// this call is below it. `None` if no quorum answered within `timeout`.
    fn read_barrier(&self, timeout: Duration) -> Result<Option<Slot>>;
    /// fossil has applied every slot below `end` (progress for status and compaction).
    fn note_applied(&self, end: Slot);
    /// The checkpoint the log was truncated behind, if any: `(through, fossil image
    /// root bytes)`; the log continues at `through + 1`.
    fn checkpoint(&self) -> Result<Option<(Slot, Vec<u8>)>>;
    /// Truncate the log through `through`, behind `checkpoint` (fossil image root bytes).
    fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> Result<()>;
}
