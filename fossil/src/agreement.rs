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
    /// Whether no other device can get an op committed now (this device is the group's
    /// only member): everything committed is then this device's own, which the volume
    /// shows already (committed or pending), so a read barrier has nothing to wait for.
    fn sole_author(&self) -> bool {
        false
    }
    /// The checkpoint the log was truncated behind, if any: `(through, fossil image
    /// root bytes)`; the log continues at `through + 1`.
    fn checkpoint(&self) -> Result<Option<(Slot, Vec<u8>)>>;
    /// Truncate the log through `through`, behind `checkpoint` (fossil image root bytes).
    fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> Result<()>;
}

/// An in-process agreement group for tests: several volumes share one log that commits
/// proposals in arrival order. A member can go offline (its proposals queue, commits
/// stop reaching it) and come back (its queue commits, it sees everything). A member's
/// queue lives in the group, so dropping a volume without syncing and reopening it
/// with [`MemGroup::member`] again simulates a crash that keeps the durable queue.
#[derive(Clone, Debug, Default)]
pub struct MemGroup {
    shared: std::sync::Arc<MemShared>,
}

#[derive(Debug, Default)]
struct MemShared {
    state: parking_lot::Mutex<MemState>,
    changed: parking_lot::Condvar,
}

#[derive(Debug, Default)]
struct MemState {
    /// Committed entries from `log_start` on.
    log: Vec<Vec<u8>>,
    log_start: Slot,
    checkpoint: Option<(Slot, Vec<u8>)>,
    members: std::collections::HashMap<u32, MemMember>,
    /// Proposals wait in their queues until [`MemGroup::commit_some`] (or release).
    held: bool,
}

impl MemState {
    fn end(&self) -> Slot {
        self.log_start + self.log.len() as Slot
    }

    /// The commit end `member` has heard of.
    fn end_seen_by(&self, member: u32) -> Slot {
        match self.members.get(&member) {
            Some(state) if !state.online => state.end_when_offline,
            _ => self.end(),
        }
    }

    /// Commit every queued proposal of an online `member`, in order (unless held).
    fn commit_queue(&mut self, member: u32) {
        if !self.held {
            self.commit_first(member, usize::MAX);
        }
    }

    /// Commit the first `count` queued proposals of an online `member`, in order.
    fn commit_first(&mut self, member: u32, count: usize) {
        let Some(state) = self.members.get_mut(&member) else {
            return;
        };
        if !state.online {
            return;
        }
        let count = count.min(state.queue.len());
        let queue: Vec<(ProposalId, Vec<u8>)> = state.queue.drain(..count).collect();
        let first = self.end();
        let mut committed = Vec::with_capacity(queue.len());
        for (slot, (id, op)) in (first..).zip(queue) {
            committed.push((id, slot));
            self.log.push(op);
        }
        if let Some(state) = self.members.get_mut(&member) {
            state.committed.extend(committed);
        }
    }
}

#[derive(Debug)]
struct MemMember {
    online: bool,
    /// Proposals not committed yet, in order.
    queue: Vec<(ProposalId, Vec<u8>)>,
    next_id: u64,
    committed: std::collections::HashMap<ProposalId, Slot>,
    end_when_offline: Slot,
    applied_end: Slot,
}

impl Default for MemMember {
    fn default() -> MemMember {
        MemMember {
            online: true,
            queue: Vec::new(),
            next_id: 1,
            committed: std::collections::HashMap::new(),
            end_when_offline: 0,
            applied_end: 0,
        }
    }
}

impl MemGroup {
    pub fn new() -> MemGroup {
        MemGroup::default()
    }

    /// The agreement of `member` (created online on first use; the same queue and
    /// state every time it is asked for again).
    pub fn member(&self, member: u32) -> std::sync::Arc<MemAgreement> {
        self.shared.state.lock().members.entry(member).or_default();
        std::sync::Arc::new(MemAgreement {
            shared: std::sync::Arc::clone(&self.shared),
            member,
        })
    }

    /// Offline: `member`'s proposals queue and it hears of no commits. Back online:
    /// its queue commits (after everything committed meanwhile) and it hears of all.
    pub fn set_online(&self, member: u32, online: bool) {
        let mut state = self.shared.state.lock();
        let end = state.end();
        let entry = state.members.entry(member).or_default();
        if entry.online && !online {
            entry.end_when_offline = end;
        }
        entry.online = online;
        if online {
            state.commit_queue(member);
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Held: proposals of online members wait in their queues instead of committing on
    /// arrival, so tests can interleave commits ([`MemGroup::commit_some`]). Released:
    /// every online member's queue commits, in member order.
    pub fn set_held(&self, held: bool) {
        let mut state = self.shared.state.lock();
        state.held = held;
        if !held {
            let mut members: Vec<u32> = state.members.keys().copied().collect();
            members.sort_unstable();
            for member in members {
                state.commit_queue(member);
            }
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Commit the oldest `count` queued proposals of `member` now (if it is online).
    pub fn commit_some(&self, member: u32, count: usize) {
        self.shared.state.lock().commit_first(member, count);
        self.shared.changed.notify_all();
    }

    /// Every slot below it is committed in the group.
    pub fn commit_end(&self) -> Slot {
        self.shared.state.lock().end()
    }

    /// The applied end `member` last noted.
    pub fn applied_end(&self, member: u32) -> Slot {
        self.shared
            .state
            .lock()
            .members
            .get(&member)
            .map_or(0, |state| state.applied_end)
    }
}

/// One member's view of a [`MemGroup`].
#[derive(Debug)]
pub struct MemAgreement {
    shared: std::sync::Arc<MemShared>,
    member: u32,
}

impl MemAgreement {
    /// Wait on the group until `done` says so or `timeout` passes; answers `done`'s
    /// last answer.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&MemState) -> Option<T>,
    ) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        loop {
            if let Some(answer) = done(&state) {
                return Some(answer);
            }
            if self
                .shared
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return done(&state);
            }
        }
    }
}

impl Agreement for MemAgreement {
    fn propose_many(&self, ops: Vec<Vec<u8>>) -> Result<Vec<ProposalId>> {
        let mut state = self.shared.state.lock();
        let member = state.members.entry(self.member).or_default();
        let mut ids = Vec::with_capacity(ops.len());
        for op in ops {
            let id = ProposalId(member.next_id);
            member.next_id += 1;
            member.queue.push((id, op));
            ids.push(id);
        }
        state.commit_queue(self.member);
        drop(state);
        self.shared.changed.notify_all();
        Ok(ids)
    }

    fn pending(&self) -> Result<Vec<(ProposalId, Vec<u8>)>> {
        let state = self.shared.state.lock();
        Ok(state
            .members
            .get(&self.member)
            .map(|member| member.queue.clone())
            .unwrap_or_default())
    }

    fn committed(&self, from: Slot, count_max: usize) -> Result<CommittedRun> {
        let state = self.shared.state.lock();
        if from < state.log_start {
            return Err(crate::Error::Agreement(format!(
                "slot {from} is truncated behind the checkpoint (log starts at {})",
                state.log_start
            )));
        }
        let end = state.end_seen_by(self.member).min(from + count_max as Slot);
        let mut run = CommittedRun {
            ops: Vec::new(),
            next: from.max(end),
        };
        for slot in from..end {
            if let Some(op) = state.log.get((slot - state.log_start) as usize) {
                run.ops.push((slot, op.clone()));
            }
        }
        Ok(run)
    }

    fn commit_end(&self) -> Slot {
        self.shared.state.lock().end_seen_by(self.member)
    }

    fn wait_commit_end_above(&self, seen: Slot, timeout: Duration) -> Result<Slot> {
        let end = self.wait_until(timeout, |state| {
            let end = state.end_seen_by(self.member);
            (end > seen).then_some(end)
        });
        Ok(end.unwrap_or_else(|| self.commit_end()))
    }

    fn wait_committed(&self, id: ProposalId, timeout: Duration) -> Result<Option<Slot>> {
        Ok(self.wait_until(timeout, |state| {
            let member = state.members.get(&self.member)?;
            member
                .committed
                .get(&id)
                .copied()
                .filter(|&slot| slot < state.end_seen_by(self.member))
        }))
    }

    /// Offline members answer `None` at once (no quorum), without waiting.
    fn read_barrier(&self, _timeout: Duration) -> Result<Option<Slot>> {
        let state = self.shared.state.lock();
        let online = state
            .members
            .get(&self.member)
            .is_none_or(|member| member.online);
        Ok(online.then(|| state.end()))
    }

    fn note_applied(&self, end: Slot) {
        let mut state = self.shared.state.lock();
        if let Some(member) = state.members.get_mut(&self.member) {
            member.applied_end = member.applied_end.max(end);
        }
    }

    fn checkpoint(&self) -> Result<Option<(Slot, Vec<u8>)>> {
        Ok(self.shared.state.lock().checkpoint.clone())
    }

    fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> Result<()> {
        let mut state = self.shared.state.lock();
        if through >= state.end_seen_by(self.member) {
            return Err(crate::Error::Agreement(format!(
                "compact through {through}: not committed here"
            )));
        }
        if through < state.log_start {
            return Ok(());
        }
        let drop_count = (through + 1 - state.log_start) as usize;
        let drop_count = drop_count.min(state.log.len());
        state.log.drain(..drop_count);
        state.log_start = through + 1;
        state.checkpoint = Some((through, checkpoint));
        Ok(())
    }
}
