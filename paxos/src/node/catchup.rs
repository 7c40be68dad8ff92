//! Catch-up and learners: fetching committed entries (verified along the hash chain)
//! or a snapshot, and serving them; plus the proposer's and reader's replies.
//!
//! A lagging voter, a new member and every learner pull; nobody pushes history. A
//! reply is taken only from a voter of our configuration or the node we asked, must
//! continue our chain exactly, and must match the head a leader announced if it reaches
//! that slot — so a wrong history is refused before anything is committed from it.

use super::{Effect, Node, Rejection, Role};
use crate::chain::ChainHash;
use crate::ids::{ConfigId, NodeId, ReadId, Slot};
use crate::limits::{CATCHUP_BYTES_MAX, CATCHUP_ENTRIES_MAX};
use crate::message::{Body, Entry, Snapshot};
use crate::store::DurableWrite;

impl Node {
    /// Asks `peer` for committed entries from our commit index (at most one request
    /// per retry interval).
    pub(super) fn request_fetch(&mut self, now_ms: u64, peer: NodeId, fx: &mut Vec<Effect>) {
        if peer == self.id() {
            return;
        }
        let recent = self
            .fetch_sent_ms
            .is_some_and(|t| now_ms < t.saturating_add(self.options.retry_interval_ms));
        if recent && self.fetch_from == Some(peer) {
            return;
        }
        self.fetch_sent_ms = Some(now_ms);
        self.fetch_from = Some(peer);
        self.send(
            peer,
            Body::Fetch {
                first: self.commit_index,
            },
            fx,
        );
        self.arm_retry(now_ms, fx);
    }

    /// Where a learner pulls from: the voter with the lowest measured RTT, else `hint`.
    pub(super) fn pull_peer(&self, hint: NodeId) -> NodeId {
        self.config
            .voters
            .iter()
            .filter_map(|v| self.rtts_ms.get(v).map(|rtt| (*rtt, *v)))
            .min()
            .map_or(hint, |(_, v)| v)
    }

    /// Serves committed history from `first` to `from`, which asked from configuration
    /// `from_config`.
    ///
    /// A member gets everything. A non-member that belonged to `from_config` (a device
    /// removed while it was cut off) gets the log up to the stop entry that ended that
    /// configuration and nothing after it: committing the stop shows it that it left,
    /// so it stops campaigning or leading a configuration that is over.
    pub(super) fn on_fetch(
        &mut self,
        from: NodeId,
        from_config: ConfigId,
        first: Slot,
        fx: &mut Vec<Effect>,
    ) {
        let limit = if self.config.is_member(from) {
            None
        } else {
            match self.stop_of_config_with(from_config, from) {
                Some(stop) if first <= stop => Some(stop),
                _ => return,
            }
        };
        if first < self.base.next {
            if limit.is_some() {
                return; // A snapshot would reveal state past the stop.
            }
            if let Some(snapshot) = &self.snapshot {
                let body = Body::SnapshotData {
                    snapshot: snapshot.clone(),
                };
                self.send(from, body, fx);
            }
            return;
        }
        let prev = if first == self.base.next {
            self.base.head
        } else {
            match self.log.get(&Slot(first.0.saturating_sub(1))) {
                Some(record) => record.chain,
                None => {
                    // Beyond our log: tell how far we are.
                    let body = Body::Entries {
                        first,
                        prev: ChainHash::default(),
                        entries: Vec::new(),
                        committed: self.commit_index,
                    };
                    self.send(from, body, fx);
                    return;
                }
            }
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let last = limit.unwrap_or(Slot(u64::MAX));
        for record in self.log.range(first..=last).map(|(_, r)| r) {
            let size = super::acceptor::entry_bytes(&record.entry);
            if entries.len() >= CATCHUP_ENTRIES_MAX
                || (!entries.is_empty() && bytes.saturating_add(size) > CATCHUP_BYTES_MAX)
            {
                break;
            }
            bytes = bytes.saturating_add(size);
            entries.push(record.entry.clone());
        }
        let committed = limit.map_or(self.commit_index, Slot::next);
        let body = Body::Entries {
            first,
            prev,
            entries,
            committed,
        };
        self.send(from, body, fx);
    }

    /// The slot of the stop entry that ended configuration `id`, if the log still
    /// holds it and `node` was a member of `id`.
    fn stop_of_config_with(&self, id: ConfigId, node: NodeId) -> Option<Slot> {
        let mut current = self.base.config.id;
        let mut member = self.base.config.is_member(node);
        for (slot, record) in &self.log {
            if let Entry::Reconfigure(next) = &record.entry {
                if current == id {
                    return member.then_some(*slot);
                }
                current = current.next();
                member = next.is_member(node);
            }
        }
        None
    }

    fn trusted_source(&self, from: NodeId) -> bool {
        self.config.is_voter(from) || self.fetch_from == Some(from)
    }

    /// Committed entries arrive: verify along the chain, then commit.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_entries(
        &mut self,
        now_ms: u64,
        from: NodeId,
        first: Slot,
        prev: ChainHash,
        entries: Vec<Entry>,
        committed: Slot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.trusted_source(from) {
            return;
        }
        self.known_decided = self.known_decided.max(committed);
        if first > self.commit_index {
            return;
        }
        // Walk the overlap: it must reproduce our own head.
        let skip = usize::try_from(self.commit_index.0 - first.0).unwrap_or(usize::MAX);
        let mut chain = prev;
        let mut slot = first;
        for entry in entries.iter().take(skip) {
            chain = chain.extend(slot, entry);
            slot = slot.next();
        }
        if slot != self.commit_index || chain != self.head {
            return;
        }
        let new: Vec<Entry> = entries.into_iter().skip(skip).collect();
        // The new part must match the head a leader announced, if it reaches it.
        if let Some((trusted_slot, trusted_head)) = self.trusted_head
            && trusted_slot > self.commit_index
        {
            let mut check = self.head;
            let mut s = self.commit_index;
            for entry in &new {
                check = check.extend(s, entry);
                s = s.next();
                if s == trusted_slot && check != trusted_head {
                    return;
                }
            }
        }
        if !new.is_empty() {
            if self.lead.is_some() {
                // Someone committed past us: we are not a current leader.
                self.step_down(now_ms, fx);
            }
            self.commit_run(now_ms, new, fx);
            self.after_commit(now_ms, fx);
        }
        if self.commit_index < committed {
            // The peer has more: ask for the next part at once.
            self.fetch_sent_ms = None;
            self.request_fetch(now_ms, from, fx);
        }
    }

    /// A snapshot arrives because the slots we asked for were compacted, or — to a
    /// witness — because a voter compacted its log.
    pub(super) fn on_snapshot(
        &mut self,
        now_ms: u64,
        from: NodeId,
        snapshot: Snapshot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.trusted_source(from) || snapshot.config.id < self.config.id {
            return;
        }
        if snapshot.slot < self.commit_index {
            self.compact_behind_peer_snapshot(now_ms, snapshot, fx);
            return;
        }
        if self.lead.is_some() {
            self.step_down(now_ms, fx);
        }
        let had_config = self.config.id;
        self.reset_to_snapshot(snapshot.clone());
        fx.push(Effect::Persist(DurableWrite::Snapshot(snapshot.clone())));
        if had_config != self.config.id {
            fx.push(Effect::Persist(DurableWrite::DiscardAccepted {
                from: self.commit_index,
            }));
        }
        fx.push(Effect::InstallSnapshot(snapshot));
        self.after_commit(now_ms, fx);
        if self.role != Role::Learner {
            self.arm_election(now_ms, fx);
        }
        if self.commit_index < self.known_decided {
            self.fetch_sent_ms = None;
            self.request_fetch(now_ms, from, fx);
        }
    }

    /// A witness truncates its log behind a snapshot of slots it has committed itself.
    ///
    /// It holds no state machine, so the snapshot's opaque state (the voter's sealed
    /// checkpoint) is kept as it came, to be served to lagging nodes as the voter
    /// would serve it. Everything else of the snapshot (chain, configuration, applied
    /// seqs) is recomputed from this node's own log, and only a snapshot whose chain
    /// hash equals this log's at its slot is taken: it describes exactly the history
    /// this node committed. Nodes that apply the log compact behind their own state.
    fn compact_behind_peer_snapshot(
        &mut self,
        now_ms: u64,
        snapshot: Snapshot,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.witnesses.contains(&self.id()) || snapshot.slot < self.base.next {
            return;
        }
        let same_history = self
            .log
            .get(&snapshot.slot)
            .is_some_and(|record| record.chain == snapshot.chain);
        if !same_history {
            return;
        }
        if let Ok(compacted) = self.compact(now_ms, snapshot.slot, snapshot.state) {
            fx.extend(compacted);
        }
    }

    /// Our forward reached a non-leader.
    pub(super) fn on_redirect(
        &mut self,
        now_ms: u64,
        from: NodeId,
        leader: Option<NodeId>,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.is_voter(from) {
            return;
        }
        match leader.filter(|l| *l != self.id() && self.config.can_lead(*l)) {
            Some(leader) if self.leader != Some(leader) => {
                self.leader = Some(leader);
                fx.push(Effect::LeaderChanged {
                    leader: Some(leader),
                });
                self.forward_queue(leader, fx);
            }
            Some(_) => {}
            None => {
                if let Some(seq) = self.queue.keys().next() {
                    fx.push(Effect::ProposalRejected {
                        seq: *seq,
                        reason: Rejection::NotLeader { leader: None },
                    });
                }
                if self.leader == Some(from) {
                    self.leader = None;
                    fx.push(Effect::LeaderChanged { leader: None });
                }
            }
        }
        self.arm_retry(now_ms, fx);
    }

    /// The leader answered a read-index request.
    pub(super) fn on_read_reply(
        &mut self,
        from: NodeId,
        id: ReadId,
        slot: Option<Slot>,
        fx: &mut Vec<Effect>,
    ) {
        if !self.config.can_lead(from) || self.reads.get(&id) != Some(&None) {
            return;
        }
        match slot {
            Some(slot) if slot <= self.commit_index => {
                self.reads.remove(&id);
                fx.push(Effect::ReadReady { id, slot });
            }
            Some(slot) => {
                self.reads.insert(id, Some(slot));
            }
            None => {
                self.reads.remove(&id);
                fx.push(Effect::ReadFailed {
                    id,
                    reason: Rejection::NotLeader {
                        leader: self.leader,
                    },
                });
            }
        }
    }
}
