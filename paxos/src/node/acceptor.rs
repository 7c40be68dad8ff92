//! Acceptor and follower: promises, accepts, heartbeats, and learning what is chosen.
//!
//! Safety rests here: a promise or an accept is recorded (a `Persist` effect) before the
//! reply that reveals it, an acceptor never accepts below its promise, and it only
//! treats a slot as chosen when the leader whose ballot it accepted the value under
//! says so (`decided` piggybacked on `Accept`/`Heartbeat`).

use super::{Effect, Node, Role};
use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::ids::{NodeId, Slot};
use crate::limits::{ACCEPT_WINDOW_SLOTS, ACCEPTED_BYTES_MAX, BATCH_ENTRIES_MAX, VOTERS_MAX};
use crate::message::{Body, Entry};
use crate::store::DurableWrite;

/// Payload bytes an entry occupies (what the byte bounds count).
pub(super) fn entry_bytes(entry: &Entry) -> usize {
    match entry {
        Entry::Noop => 0,
        Entry::Command(c) => c.payload.len(),
        Entry::Reconfigure(c) => 8 * (c.voters.len() + c.learners.len() + c.witnesses.len()),
    }
}

impl Node {
    /// Whether `ballot` is a well-formed leader ballot of `from` in our configuration.
    fn is_leader_ballot(&self, from: NodeId, ballot: Ballot) -> bool {
        self.config.can_lead(from) && ballot.node == from && ballot.epoch == self.config.id
    }

    /// A ballot above ours exists: abandon our own leadership or candidacy.
    fn yield_to(&mut self, now_ms: u64, ballot: Ballot, fx: &mut Vec<Effect>) {
        if self.lead.as_ref().is_some_and(|l| l.ballot < ballot) {
            self.step_down(now_ms, fx);
        }
        if self.candidate.as_ref().is_some_and(|c| c.ballot < ballot) {
            self.candidate = None;
            self.role = Role::Follower;
        }
    }

    fn reject(&self, from: NodeId, refused: Ballot, fx: &mut Vec<Effect>) {
        let body = Body::Reject {
            promised: self.promised,
            committed: self.commit_index,
        };
        self.send_with_ballot(from, refused, body, fx);
    }

    /// Phase 1a.
    pub(super) fn on_prepare(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        first: Slot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(self.id()) || !self.is_leader_ballot(from, ballot) {
            return;
        }
        self.note_ballot(ballot);
        if ballot < self.promised {
            self.reject(from, ballot, fx);
            return;
        }
        if self.hears_live_leader(now_ms, from) {
            // Stickiness (liveness only; ignoring a message is always safe): while a
            // leader we follow is alive, a voter returning from a partition or a long
            // absence does not depose it. A leader without a quorum steps down
            // (check-quorum), which lifts this within an election timeout.
            return;
        }
        self.yield_to(now_ms, ballot, fx);
        if ballot > self.promised {
            self.promised = ballot;
            fx.push(Effect::Persist(DurableWrite::Promise { ballot }));
        }
        // Give the candidate time to finish before we campaign ourselves.
        self.last_leader_contact_ms = now_ms;
        let from_slot = first.max(self.commit_index);
        let accepted = self
            .accepted
            .range(from_slot..)
            .map(|(slot, (b, e))| (*slot, *b, e.clone()))
            .collect();
        let body = Body::Promise {
            first,
            committed: self.commit_index,
            accepted,
        };
        self.send_with_ballot(from, ballot, body, fx);
        self.arm_election(now_ms, fx);
    }

    /// Whether we follow a leader other than `candidate` that we heard from within the
    /// base election timeout.
    fn hears_live_leader(&self, now_ms: u64, candidate: NodeId) -> bool {
        let me = self.id();
        let follows_other = self.leader.is_some_and(|l| l != candidate && l != me);
        let recent = now_ms
            < self
                .last_leader_contact_ms
                .saturating_add(self.options.election_timeout_ms);
        follows_other && recent && self.lead.is_none()
    }

    /// Phase 2a for a batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_accept(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        first: Slot,
        entries: Vec<Entry>,
        decided: Slot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(self.id()) || !self.is_leader_ballot(from, ballot) {
            return;
        }
        self.note_ballot(ballot);
        if ballot < self.promised {
            self.reject(from, ballot, fx);
            return;
        }
        if entries.is_empty() || entries.len() > BATCH_ENTRIES_MAX {
            return;
        }
        self.yield_to(now_ms, ballot, fx);
        self.leader_contact(now_ms, from, fx);
        // Learn with what we already hold; the effects go after our reply.
        let mut later = Vec::new();
        self.learn_decided(now_ms, from, ballot, decided, &mut later);
        let count = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        let last = first.plus(count - 1);
        let in_window = first >= self.commit_index
            && first >= self.config_start
            && last < self.commit_index.plus(ACCEPT_WINDOW_SLOTS);
        if self.config.id != ballot.epoch || !in_window {
            if first < self.commit_index && self.config.id == ballot.epoch {
                // These slots are committed here: tell the leader, which catches up.
                self.reject(from, ballot, &mut later);
            } else if first > self.commit_index && self.commit_index < decided {
                // We lag behind the leader's window: catch up first.
                self.request_fetch(now_ms, from, &mut later);
            }
            fx.append(&mut later);
            return;
        }
        let replaced: usize = self
            .accepted
            .range(first..=last)
            .map(|(_, (_, e))| entry_bytes(e))
            .sum();
        let held: usize = self.accepted.values().map(|(_, e)| entry_bytes(e)).sum();
        let incoming: usize = entries.iter().map(entry_bytes).sum();
        if held.saturating_sub(replaced).saturating_add(incoming) > ACCEPTED_BYTES_MAX {
            fx.append(&mut later);
            return;
        }
        self.promised = self.promised.max(ballot);
        let mut slot = first;
        for entry in &entries {
            self.accepted.insert(slot, (ballot, entry.clone()));
            slot = slot.next();
        }
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        fx.push(Effect::Persist(DurableWrite::Accept {
            ballot,
            first,
            entries,
        }));
        self.send_with_ballot(from, ballot, Body::Accepted { first, count }, fx);
        fx.append(&mut later);
    }

    /// Commits the slots below `decided` whose accepted value carries `ballot` (the
    /// leader's): that leader proposed exactly one value per slot and saw it chosen.
    /// A slot we lack is fetched from `from`.
    pub(super) fn learn_decided(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        decided: Slot,
        fx: &mut Vec<Effect>,
    ) {
        self.known_decided = self.known_decided.max(decided);
        let mut run = Vec::new();
        let mut slot = self.commit_index;
        while slot < decided && self.accepted.get(&slot).is_some_and(|(b, _)| *b == ballot) {
            // Committing it: the accepted copy is no longer needed.
            if let Some((_, entry)) = self.accepted.remove(&slot) {
                run.push(entry);
            }
            slot = slot.next();
        }
        if !run.is_empty() {
            self.commit_run(now_ms, run, fx);
            self.after_commit(now_ms, fx);
        }
        if self.commit_index < self.known_decided {
            self.request_fetch(now_ms, from, fx);
        }
    }

    /// Leader liveness, commit notice and read confirmation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_heartbeat(
        &mut self,
        now_ms: u64,
        from: NodeId,
        ballot: Ballot,
        decided: Slot,
        head: ChainHash,
        round: u64,
        ranking: Vec<NodeId>,
        fx: &mut Vec<Effect>,
    ) {
        if !self.is_leader_ballot(from, ballot) {
            return;
        }
        let voter = self.config.is_voter(self.id());
        if voter {
            self.note_ballot(ballot);
            if ballot < self.promised {
                self.reject(from, ballot, fx);
                return;
            }
            self.yield_to(now_ms, ballot, fx);
        }
        self.leader_contact(now_ms, from, fx);
        if ranking.len() <= VOTERS_MAX && ranking.iter().all(|n| self.config.can_lead(*n)) {
            self.ranking = ranking;
        }
        if self.trusted_head.is_none_or(|(slot, _)| slot < decided) {
            self.trusted_head = Some((decided, head));
        }
        if voter {
            self.learn_decided(now_ms, from, ballot, decided, fx);
            let body = Body::HeartbeatAck {
                round,
                committed: self.commit_index,
                score_ms: self.score_ms(),
            };
            self.send_with_ballot(from, ballot, body, fx);
        } else {
            self.known_decided = self.known_decided.max(decided);
            if self.commit_index < decided {
                let peer = self.pull_peer(from);
                self.request_fetch(now_ms, peer, fx);
            }
        }
        self.arm_retry(now_ms, fx);
    }

    /// The leader hands over (hysteresis decided it): campaign now.
    pub(super) fn on_timeout_now(&mut self, now_ms: u64, from: NodeId, fx: &mut Vec<Effect>) {
        if self.leader == Some(from)
            && self.role == Role::Follower
            && self.config.can_lead(self.id())
        {
            self.start_election(now_ms, fx);
        }
    }
}
