//! Proposer and leader: phase 1 once per leadership, phase 2 per batch, read-index,
//! leader preference.
//!
//! Phase 1 covers every slot from the candidate's commit index. Its result is turned
//! into proposals by [`recovery_plan`], which applies Stoppable Paxos' rule for stop
//! entries. Afterwards each batch costs one `Persist` at the leader and one round trip
//! (`Accept` → `Accepted`) to a phase-2 quorum; the commit index rides on later
//! `Accept`s and heartbeats.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::acceptor::entry_bytes;
use super::{Batch, Candidate, Effect, LeaderRead, LeaderState, Node, Rejection, Role, Timer};
use crate::ballot::Ballot;
use crate::ids::{NodeId, ReadId, Slot};
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, BATCHES_IN_FLIGHT_MAX, BYTES_IN_FLIGHT_MAX,
    QUEUE_ENTRIES_MAX, SLOTS_IN_FLIGHT_MAX,
};
use crate::message::{Body, Command, Entry};
use crate::store::DurableWrite;

/// Heartbeats between two unconditional notices to learners.
const LEARNER_NOTICE_EVERY: u64 = 10;

/// What a new leader must propose at `from..` given the highest-ballot accepted value
/// per slot that phase 1 found (all of the current configuration's epoch).
///
/// Holes become `Noop`. A stop entry at slot `s` with ballot `b` is kept — and nothing
/// after `s` is proposed (returned `true`) — unless some later slot holds a value with a
/// ballot above `b`: then the stop cannot have been chosen (no leader proposes past a
/// possibly chosen stop) and a `Noop` replaces it (Stoppable Paxos).
pub(crate) fn recovery_plan(
    from: Slot,
    merged: &BTreeMap<Slot, (Ballot, Entry)>,
) -> (Vec<Entry>, bool) {
    let Some((&last, _)) = merged.range(from..).next_back() else {
        return (Vec::new(), false);
    };
    // Highest ballot strictly after each slot.
    let mut after: BTreeMap<Slot, Ballot> = BTreeMap::new();
    let mut highest = Ballot::ZERO;
    for (slot, (ballot, _)) in merged.range(from..).rev() {
        after.insert(*slot, highest);
        highest = highest.max(*ballot);
    }
    let mut plan = Vec::new();
    let mut slot = from;
    while slot <= last {
        match merged.get(&slot) {
            None => plan.push(Entry::Noop),
            Some((ballot, Entry::Reconfigure(config))) => {
                let later_higher = after.get(&slot).is_some_and(|b| b > ballot);
                if later_higher {
                    plan.push(Entry::Noop);
                } else {
                    plan.push(Entry::Reconfigure(config.clone()));
                    return (plan, true);
                }
            }
            Some((_, entry)) => plan.push(entry.clone()),
        }
        slot = slot.next();
    }
    (plan, false)
}

impl Node {
    /// Phase 1a: campaign with a ballot above every one seen.
    pub(super) fn start_election(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if !self.config.can_lead(self.id()) {
            return;
        }
        self.step_down(now_ms, fx);
        let ballot = self
            .promised
            .max(self.ballot_seen)
            .successor(self.config.id, self.id());
        self.promised = ballot;
        self.ballot_seen = ballot;
        fx.push(Effect::Persist(DurableWrite::Promise { ballot }));
        if self.leader.take().is_some() {
            fx.push(Effect::LeaderChanged { leader: None });
        }
        self.role = Role::Candidate;
        let first = self.commit_index;
        let own = self
            .accepted
            .range(first..)
            .map(|(slot, (b, e))| (*slot, *b, e.clone()))
            .collect();
        let mut promises = BTreeMap::new();
        promises.insert(self.id(), (self.commit_index, own));
        self.candidate = Some(Candidate {
            ballot,
            first,
            promises,
        });
        let others: Vec<NodeId> = self.config.voters.iter().copied().collect();
        for voter in others.into_iter().filter(|v| *v != self.id()) {
            self.send(voter, Body::Prepare { first }, fx);
        }
        self.last_leader_contact_ms = now_ms;
        let at = now_ms.saturating_add(self.election_timeout_ms());
        self.set_timer(Timer::Election, at, fx);
        self.arm_retry(now_ms, fx);
        self.try_finish_phase1(now_ms, fx);
    }

    /// Phase 1b.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_promise(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        first: Slot,
        committed: Slot,
        accepted: Vec<(Slot, Ballot, Entry)>,
        fx: &mut Vec<Effect>,
    ) {
        let epoch = self.config.id;
        let voter = self.config.is_voter(from);
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let well_formed = accepted
            .iter()
            .all(|(slot, b, _)| *slot >= first && b.epoch == epoch && *b < ballot);
        if ballot != candidate.ballot || first != candidate.first || !voter || !well_formed {
            return;
        }
        candidate.promises.insert(from, (committed, accepted));
        self.known_decided = self.known_decided.max(committed);
        self.try_finish_phase1(now_ms, fx);
    }

    /// Becomes leader once a phase-1 quorum promised and we know every slot they
    /// reported committed.
    pub(super) fn try_finish_phase1(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some(candidate) = &self.candidate else {
            return;
        };
        if !self.config.is_phase1_quorum(candidate.promises.keys()) {
            return;
        }
        let ahead = candidate
            .promises
            .iter()
            .filter(|(_, (committed, _))| *committed > self.commit_index)
            .max_by_key(|(_, (committed, _))| *committed)
            .map(|(node, _)| *node);
        if let Some(peer) = ahead {
            // Someone committed more: learn it before leading (a leader only ever
            // commits through its own quorums).
            self.request_fetch(now_ms, peer, fx);
            return;
        }
        let Some(candidate) = self.candidate.take() else {
            return;
        };
        let mut merged: BTreeMap<Slot, (Ballot, Entry)> = BTreeMap::new();
        for (_, accepted) in candidate.promises.into_values() {
            for (slot, ballot, entry) in accepted {
                if slot < self.commit_index {
                    continue;
                }
                let newer = merged.get(&slot).is_none_or(|(b, _)| *b < ballot);
                if newer {
                    merged.insert(slot, (ballot, entry));
                }
            }
        }
        let (mut plan, stopped) = recovery_plan(self.commit_index, &merged);
        if !stopped {
            // A no-op at our ballot commits every recovered slot even if nobody
            // proposes (a read-index waits for it) and marks the leadership's start.
            plan.push(Entry::Noop);
        }
        let mut proposed_seqs = BTreeMap::new();
        for entry in &plan {
            if let Entry::Command(c) = entry {
                let seq = proposed_seqs.entry(c.proposer).or_insert(0);
                *seq = (*seq).max(c.seq);
            }
        }
        self.lead = Some(LeaderState {
            ballot: candidate.ballot,
            next_slot: self.commit_index,
            stopped: false,
            batches: BTreeMap::new(),
            pending: VecDeque::new(),
            proposed_seqs,
            round: 0,
            acked_rounds: BTreeMap::new(),
            reads: Vec::new(),
            scores: BTreeMap::new(),
            better_since: None,
            commits: BTreeMap::new(),
            acked_ms: BTreeMap::new(),
            since_ms: now_ms,
            heartbeats_sent: 0,
            learners_told: Slot(0),
        });
        self.role = Role::Leader;
        self.leader = Some(self.id());
        fx.push(Effect::LeaderChanged {
            leader: Some(self.id()),
        });
        self.timers.remove(&Timer::Election);
        let mut plan = plan.into_iter().peekable();
        while plan.peek().is_some() {
            let batch: Vec<Entry> = plan.by_ref().take(BATCH_ENTRIES_MAX).collect();
            self.propose_batch(now_ms, batch, fx);
            if self.lead.is_none() {
                return;
            }
        }
        if let Some(lead) = self.lead.as_mut() {
            lead.stopped = stopped;
        }
        self.send_heartbeats(now_ms, fx);
        let at = now_ms.saturating_add(self.options.heartbeat_interval_ms);
        self.set_timer(Timer::Heartbeat, at, fx);
        let own: Vec<Command> = self.queue.values().cloned().collect();
        self.leader_take_commands(own);
        self.flush(now_ms, fx);
    }

    /// Leaves leadership (a higher ballot exists, or the configuration stopped).
    pub(super) fn step_down(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some(lead) = self.lead.take() else {
            return;
        };
        for read in lead.reads {
            match read.origin {
                None => fx.push(Effect::ReadFailed {
                    id: read.id,
                    reason: Rejection::LeadershipLost,
                }),
                Some(origin) => self.send_with_ballot(
                    origin,
                    lead.ballot,
                    Body::ReadIndexReply {
                        id: read.id,
                        slot: None,
                    },
                    fx,
                ),
            }
        }
        self.role = if self.config.is_voter(self.id()) {
            Role::Follower
        } else {
            Role::Learner
        };
        if self.leader == Some(self.id()) {
            self.leader = None;
            fx.push(Effect::LeaderChanged { leader: None });
        }
        self.timers.remove(&Timer::Heartbeat);
        self.last_leader_contact_ms = now_ms;
        self.arm_election(now_ms, fx);
        self.arm_retry(now_ms, fx);
    }

    /// Queues commands for proposal, keeping each proposer's seqs in order and once.
    pub(super) fn leader_take_commands(&mut self, commands: Vec<Command>) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        for command in commands {
            if lead.pending.len() >= QUEUE_ENTRIES_MAX {
                return;
            }
            let applied = self.applied_seqs.get(&command.proposer).copied();
            let proposed = lead.proposed_seqs.get(&command.proposer).copied();
            let expected = applied.max(proposed).unwrap_or(0).saturating_add(1);
            if command.seq < expected {
                continue;
            }
            if command.seq > expected {
                // A gap: the proposer resubmits in order.
                continue;
            }
            lead.proposed_seqs.insert(command.proposer, command.seq);
            lead.pending.push_back(Entry::Command(command));
        }
    }

    /// Cuts pending entries into batches while the pipelining window allows.
    pub(super) fn flush(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        loop {
            let window_end = self.commit_index.plus(SLOTS_IN_FLIGHT_MAX);
            let Some(lead) = self.lead.as_mut() else {
                return;
            };
            let in_flight_bytes: usize = lead.batches.values().map(|b| b.bytes).sum();
            if lead.pending.is_empty()
                || lead.stopped
                || lead.batches.len() >= BATCHES_IN_FLIGHT_MAX
                || lead.next_slot >= window_end
                || in_flight_bytes >= BYTES_IN_FLIGHT_MAX
            {
                return;
            }
            let room = window_end.0.saturating_sub(lead.next_slot.0);
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(entry) = lead.pending.front() {
                let size = entry_bytes(entry);
                let full = u64::try_from(batch.len()).unwrap_or(u64::MAX) >= room
                    || batch.len() >= BATCH_ENTRIES_MAX
                    || (!batch.is_empty() && bytes.saturating_add(size) > BATCH_BYTES_MAX);
                if full {
                    break;
                }
                let Some(entry) = lead.pending.pop_front() else {
                    break;
                };
                bytes = bytes.saturating_add(size);
                let stop = matches!(entry, Entry::Reconfigure(_));
                batch.push(entry);
                if stop {
                    lead.stopped = true;
                    break;
                }
            }
            if batch.is_empty() {
                return;
            }
            self.propose_batch(now_ms, batch, fx);
        }
    }

    /// Phase 2a for one batch at the next slots: accept it ourselves (persisted before
    /// anything is sent), then send it to the other voters.
    fn propose_batch(&mut self, now_ms: u64, entries: Vec<Entry>, fx: &mut Vec<Effect>) {
        let decided = self.commit_index;
        let me = self.id();
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let ballot = lead.ballot;
        let first = lead.next_slot;
        let count = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        lead.next_slot = first.plus(count);
        let bytes = entries.iter().map(entry_bytes).sum();
        let mut acks = BTreeSet::new();
        acks.insert(me);
        let chosen = self.config.is_phase2_quorum(&acks);
        lead.batches.insert(
            first,
            Batch {
                count,
                bytes,
                acks,
                chosen,
            },
        );
        self.promised = self.promised.max(ballot);
        let mut slot = first;
        for entry in &entries {
            self.accepted.insert(slot, (ballot, entry.clone()));
            slot = slot.next();
        }
        let voters: Vec<NodeId> = self
            .config
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me)
            .collect();
        fx.push(Effect::Persist(DurableWrite::Accept {
            ballot,
            first,
            entries: entries.clone(),
        }));
        // One copy per message; the last message takes the original.
        let mut entries = Some(entries);
        for (i, voter) in voters.iter().enumerate() {
            let batch = if i + 1 == voters.len() {
                entries.take().unwrap_or_default()
            } else {
                entries.clone().unwrap_or_default()
            };
            let body = Body::Accept {
                first,
                entries: batch,
                decided,
            };
            self.send_with_ballot(*voter, ballot, body, fx);
        }
        if chosen {
            self.commit_chosen(now_ms, fx);
        }
    }

    /// Phase 2b.
    pub(super) fn on_accepted(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        first: Slot,
        count: u32,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(from) {
            return;
        }
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if ballot != lead.ballot {
            return;
        }
        lead.acked_ms.insert(from, now_ms);
        let Some(batch) = lead.batches.get_mut(&first) else {
            return;
        };
        if u64::from(count) != batch.count {
            return;
        }
        batch.acks.insert(from);
        if !batch.chosen && self.config.is_phase2_quorum(&batch.acks) {
            batch.chosen = true;
            self.commit_chosen(now_ms, fx);
        }
    }

    /// Commits chosen batches in slot order.
    fn commit_chosen(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let mut progressed = false;
        loop {
            let commit_index = self.commit_index;
            let Some(lead) = self.lead.as_mut() else {
                break;
            };
            let ready = lead
                .batches
                .first_key_value()
                .is_some_and(|(first, b)| *first == commit_index && b.chosen);
            if !ready {
                break;
            }
            let Some((first, batch)) = lead.batches.pop_first() else {
                break;
            };
            let ballot = lead.ballot;
            let Some(entries) = self.take_own_accepted(first, batch.count, ballot) else {
                // Our own acceptance is gone: we cannot be leading any more.
                self.step_down(now_ms, fx);
                break;
            };
            self.commit_run(now_ms, entries, fx);
            progressed = true;
        }
        if progressed {
            self.confirm_reads(fx);
            self.after_commit(now_ms, fx);
        }
    }

    /// Removes and returns our accepted entries for `count` slots from `first`, if all
    /// carry `ballot`.
    fn take_own_accepted(&mut self, first: Slot, count: u64, ballot: Ballot) -> Option<Vec<Entry>> {
        let last = first.plus(count.checked_sub(1)?);
        let own = self
            .accepted
            .range(first..=last)
            .filter(|(_, (b, _))| *b == ballot)
            .count();
        if u64::try_from(own).ok()? != count {
            return None;
        }
        let mut entries = Vec::with_capacity(own);
        let mut slot = first;
        while slot <= last {
            entries.push(self.accepted.remove(&slot)?.1);
            slot = slot.next();
        }
        Some(entries)
    }

    /// A refusal: a higher ballot exists (step down) or the refuser is ahead (catch up).
    pub(super) fn on_reject(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        committed: Slot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(from) {
            return;
        }
        self.note_ballot(promised);
        if committed > self.commit_index {
            self.known_decided = self.known_decided.max(committed);
            self.request_fetch(now_ms, from, fx);
        }
        if self.own_ballot() != ballot || promised <= ballot {
            return;
        }
        if self.lead.is_some() {
            self.step_down(now_ms, fx);
        }
        if self.candidate.take().is_some() {
            self.role = Role::Follower;
            self.last_leader_contact_ms = now_ms;
            self.arm_election(now_ms, fx);
        }
    }

    /// Heartbeat timer: liveness, commit notices, retransmission, hand-off.
    pub(super) fn on_heartbeat_timer(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if self.lead.is_none() {
            return;
        }
        if !self.hears_quorum(now_ms) {
            // Check-quorum: followers that still hear our heartbeats would otherwise
            // ignore every other candidate (stickiness) while we cannot commit.
            self.step_down(now_ms, fx);
            return;
        }
        self.send_heartbeats(now_ms, fx);
        self.retransmit(fx);
        self.consider_handoff(now_ms, fx);
        let at = now_ms.saturating_add(self.options.heartbeat_interval_ms);
        self.set_timer(Timer::Heartbeat, at, fx);
    }

    /// Whether a phase-2 quorum (us included) acknowledged us within twice the base
    /// election timeout (always true early in a leadership). Generous on purpose: a
    /// spurious step-down costs an election.
    fn hears_quorum(&self, now_ms: u64) -> bool {
        let Some(lead) = &self.lead else {
            return false;
        };
        let window = self.options.election_timeout_ms.saturating_mul(2);
        if now_ms < lead.since_ms.saturating_add(window) {
            return true;
        }
        let mut recent: BTreeSet<NodeId> = lead
            .acked_ms
            .iter()
            .filter(|(_, at)| now_ms < at.saturating_add(window))
            .map(|(n, _)| *n)
            .collect();
        recent.insert(self.id());
        self.config.is_phase2_quorum(&recent)
    }

    /// Starts a confirmation round: a heartbeat to every voter (and, when there is news
    /// or periodically, a commit notice to learners).
    pub(super) fn send_heartbeats(&mut self, _now_ms: u64, fx: &mut Vec<Effect>) {
        let me = self.id();
        let own_score = self.score_ms();
        let commit_index = self.commit_index;
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        lead.round = lead.round.saturating_add(1);
        lead.heartbeats_sent = lead.heartbeats_sent.saturating_add(1);
        let tell_learners =
            lead.learners_told < commit_index || lead.heartbeats_sent % LEARNER_NOTICE_EVERY == 1;
        if tell_learners {
            lead.learners_told = commit_index;
        }
        let mut ranked: Vec<(u32, NodeId)> = self
            .config
            .voters
            .iter()
            .filter(|v| self.config.can_lead(**v))
            .map(|v| {
                let score = if *v == me {
                    own_score
                } else {
                    lead.scores.get(v).copied().unwrap_or(u32::MAX)
                };
                (score, *v)
            })
            .collect();
        ranked.sort_unstable();
        let ranking: Vec<NodeId> = ranked.into_iter().map(|(_, n)| n).collect();
        let body = Body::Heartbeat {
            decided: commit_index,
            head: self.head,
            round: lead.round,
            ranking: ranking.clone(),
        };
        let ballot = lead.ballot;
        self.ranking = ranking;
        let voters: Vec<NodeId> = self.config.voters.iter().copied().collect();
        for voter in voters.into_iter().filter(|v| *v != me) {
            self.send_with_ballot(voter, ballot, body.clone(), fx);
        }
        if tell_learners {
            let learners: Vec<NodeId> = self.config.learners.iter().copied().collect();
            for learner in learners {
                self.send_with_ballot(learner, ballot, body.clone(), fx);
            }
        }
    }

    /// Resends unacknowledged batches (messages may have been lost).
    fn retransmit(&self, fx: &mut Vec<Effect>) {
        let Some(lead) = &self.lead else {
            return;
        };
        for (first, batch) in lead.batches.iter().filter(|(_, b)| !b.chosen) {
            let last = first.plus(batch.count.saturating_sub(1));
            let entries: Vec<Entry> = self
                .accepted
                .range(*first..=last)
                .map(|(_, (_, e))| e.clone())
                .collect();
            for voter in self
                .config
                .voters
                .iter()
                .filter(|v| !batch.acks.contains(v))
            {
                let body = Body::Accept {
                    first: *first,
                    entries: entries.clone(),
                    decided: self.commit_index,
                };
                self.send_with_ballot(*voter, lead.ballot, body, fx);
            }
        }
    }

    /// Hands leadership to a clearly better-placed voter after a sustained period.
    fn consider_handoff(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let own = u64::from(self.score_ms());
        let percent = u64::from(self.options.handoff_score_percent);
        let sustain = self.options.handoff_sustain_ms;
        let commit_index = self.commit_index;
        let me = self.id();
        let Some(best) = self.ranking.first().copied() else {
            return;
        };
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let best_score = lead.scores.get(&best).copied().map(u64::from);
        let better = best != me
            && best_score.is_some_and(|s| s.saturating_mul(100) <= own.saturating_mul(percent));
        if !better {
            lead.better_since = None;
            return;
        }
        match lead.better_since {
            Some((node, since)) if node == best => {
                let caught_up = lead.commits.get(&best).is_some_and(|c| *c >= commit_index);
                if now_ms.saturating_sub(since) >= sustain && caught_up {
                    self.send(best, Body::TimeoutNow, fx);
                    // Stop heartbeating so the followers' stickiness lapses for `best`.
                    self.step_down(now_ms, fx);
                }
            }
            _ => lead.better_since = Some((best, now_ms)),
        }
    }

    /// A voter confirms our leadership for `round` and reports its score.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_heartbeat_ack(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        round: u64,
        committed: Slot,
        score_ms: u32,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(from) {
            return;
        }
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if ballot != lead.ballot {
            return;
        }
        let acked = lead.acked_rounds.entry(from).or_insert(0);
        *acked = (*acked).max(round);
        lead.acked_ms.insert(from, now_ms);
        lead.scores.insert(from, score_ms);
        lead.commits.insert(from, committed);
        self.confirm_reads(fx);
        if committed > self.commit_index {
            // A voter committed past us (a slot chosen after our phase 1 looked):
            // learn it; the catch-up ends this leadership and a fresh phase 1 follows.
            self.known_decided = self.known_decided.max(committed);
            self.request_fetch(now_ms, from, fx);
        }
    }

    /// Registers a read at the leader and starts a confirmation round for it.
    pub(super) fn leader_start_read(
        &mut self,
        now_ms: u64,
        origin: Option<NodeId>,
        id: ReadId,
        fx: &mut Vec<Effect>,
    ) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        // Everything proposed so far: includes every write acknowledged anywhere.
        let slot = lead.next_slot;
        lead.reads.push(LeaderRead {
            origin,
            id,
            round: lead.round.saturating_add(1),
            slot,
        });
        self.send_heartbeats(now_ms, fx);
        self.confirm_reads(fx);
    }

    /// Reads whose round a phase-2 quorum confirmed are answered (remote) or wait for
    /// the commit index (local).
    fn confirm_reads(&mut self, fx: &mut Vec<Effect>) {
        let me = self.id();
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if lead.reads.is_empty() {
            return;
        }
        let ballot = lead.ballot;
        let mut confirmed = Vec::new();
        let mut waiting = Vec::new();
        for read in std::mem::take(&mut lead.reads) {
            let mut acks: BTreeSet<NodeId> = lead
                .acked_rounds
                .iter()
                .filter(|(_, r)| **r >= read.round)
                .map(|(n, _)| *n)
                .collect();
            acks.insert(me);
            if self.config.is_phase2_quorum(&acks) {
                confirmed.push(read);
            } else {
                waiting.push(read);
            }
        }
        lead.reads = waiting;
        for read in confirmed {
            match read.origin {
                Some(origin) => {
                    let body = Body::ReadIndexReply {
                        id: read.id,
                        slot: Some(read.slot),
                    };
                    self.send_with_ballot(origin, ballot, body, fx);
                }
                None if read.slot <= self.commit_index => fx.push(Effect::ReadReady {
                    id: read.id,
                    slot: read.slot,
                }),
                None => {
                    self.reads.insert(read.id, Some(read.slot));
                }
            }
        }
    }

    /// A member asks the leader for a read index.
    pub(super) fn on_read_request(
        &mut self,
        now_ms: u64,
        from: NodeId,
        id: ReadId,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_member(from) {
            return;
        }
        let pending = self.lead.as_ref().map(|l| l.reads.len());
        match pending {
            Some(n) if n < crate::limits::READS_PENDING_MAX => {
                self.leader_start_read(now_ms, Some(from), id, fx);
            }
            _ => self.send(from, Body::ReadIndexReply { id, slot: None }, fx),
        }
    }

    /// A member forwards its queued commands.
    pub(super) fn on_forward(
        &mut self,
        now_ms: u64,
        from: NodeId,
        commands: Vec<Command>,
        fx: &mut Vec<Effect>,
    ) {
        let well_formed = commands.len() <= crate::limits::FORWARD_ENTRIES_MAX
            && commands
                .iter()
                .all(|c| c.proposer == from && c.payload.len() <= crate::limits::ENTRY_BYTES_MAX);
        if !self.config.is_member(from) || !well_formed {
            return;
        }
        if self.lead.is_some() {
            self.leader_take_commands(commands);
            self.flush(now_ms, fx);
        } else {
            let leader = self.leader.filter(|l| *l != self.id());
            self.send(from, Body::Redirect { leader }, fx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::ConfigId;

    fn b(round: u64) -> Ballot {
        Ballot {
            epoch: ConfigId(1),
            round,
            node: NodeId(1),
        }
    }

    fn stop() -> Entry {
        let next = Config::majority(ConfigId(2), [NodeId(1), NodeId(2)], [], []).unwrap();
        Entry::Reconfigure(next)
    }

    #[test]
    fn holes_become_noops() {
        let mut merged = BTreeMap::new();
        merged.insert(Slot(7), (b(1), Entry::Noop));
        let (plan, stopped) = recovery_plan(Slot(5), &merged);
        assert_eq!(plan, vec![Entry::Noop, Entry::Noop, Entry::Noop]);
        assert!(!stopped);
        assert_eq!(recovery_plan(Slot(8), &merged), (Vec::new(), false));
    }

    #[test]
    fn a_possibly_chosen_stop_truncates_the_plan() {
        let mut merged = BTreeMap::new();
        merged.insert(Slot(0), (b(2), stop()));
        merged.insert(Slot(1), (b(1), Entry::Noop));
        let (plan, stopped) = recovery_plan(Slot(0), &merged);
        assert_eq!(plan, vec![stop()]);
        assert!(stopped);
    }

    #[test]
    fn a_stop_overtaken_by_a_higher_ballot_later_becomes_noop() {
        let mut merged = BTreeMap::new();
        merged.insert(Slot(0), (b(1), stop()));
        merged.insert(Slot(1), (b(2), Entry::Noop));
        let (plan, stopped) = recovery_plan(Slot(0), &merged);
        assert_eq!(plan, vec![Entry::Noop, Entry::Noop]);
        assert!(!stopped);
    }
}
