//! Durable state: what a node must find again after a crash, and the stores that keep it.
//!
//! The core never writes anything itself; it emits `Effect::Persist(DurableWrite)`.
//! The driver hands each write to an [`AcceptorStore`] (`write`, buffered) and calls
//! `sync` before executing any later non-`Persist` effect. [`DurableState::apply`] is
//! the single definition of what a write means; both stores implement exactly it (the
//! contract test runs one body against both).

use std::collections::BTreeMap;

use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::error::Error;
use crate::ids::{ReadId, Slot};
use crate::message::{Command, Entry, Snapshot};

mod sqlite;
pub use sqlite::SqliteStore;

/// One durable change, in the order the core emitted it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DurableWrite {
    /// Promise: never accept a ballot below `ballot` again.
    Promise {
        /// The promised ballot.
        ballot: Ballot,
    },
    /// Accepted `entries` at consecutive slots from `first` at `ballot` (implies the
    /// promise of `ballot`). One write per phase-2 batch.
    Accept {
        /// The ballot.
        ballot: Ballot,
        /// First slot.
        first: Slot,
        /// One entry per slot.
        entries: Vec<Entry>,
    },
    /// Entries `[first, first + len)` are chosen and committed, in order; `head` is the
    /// chain hash after the last one. Accepted values for these slots are dropped.
    Commit {
        /// First slot (the previous commit index).
        first: Slot,
        /// The chosen entries.
        entries: Vec<Entry>,
        /// Chain hash after the last entry.
        head: ChainHash,
    },
    /// Replace everything up to `snapshot.slot` by the snapshot (install or compaction):
    /// committed entries and accepted values at or below it are dropped.
    Snapshot(Snapshot),
    /// Discard accepted values at slots ≥ `from` (they belong to a stopped
    /// configuration and can never be chosen).
    DiscardAccepted {
        /// First slot discarded.
        from: Slot,
    },
    /// Queue one of this node's own proposals until it is applied.
    Enqueue {
        /// The command (`proposer` = this node).
        command: Command,
    },
    /// Own queued proposals with `seq ≤ through_seq` have been applied (or skipped for
    /// good); forget them.
    Dequeue {
        /// Highest dequeued seq.
        through_seq: u64,
    },
    /// Read ids up to `through` may be used (and sent to a leader) from now on; after a
    /// restart the node starts above it, so no reply to an earlier request can be
    /// mistaken for the reply to a new one.
    ReserveReadIds {
        /// Highest reserved id.
        through: ReadId,
    },
}

/// Everything a node persists. `Node::recover` rebuilds a node from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct DurableState {
    /// Highest ballot promised.
    pub promised: Ballot,
    /// Accepted `(ballot, entry)` per slot not yet committed.
    pub accepted: BTreeMap<Slot, (Ballot, Entry)>,
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Committed entries after the snapshot (or from slot 0), contiguous.
    pub committed: BTreeMap<Slot, Entry>,
    /// Chain hash after the last committed entry (as written with it).
    pub head: Option<ChainHash>,
    /// This node's own queued proposals by seq.
    pub queue: BTreeMap<u64, Command>,
    /// Highest read id reserved (0 = none yet).
    pub read_ids_reserved: ReadId,
}

impl DurableState {
    /// Applies one write: the reference semantics every store implements.
    pub fn apply(&mut self, write: &DurableWrite) {
        self.apply_owned(write.clone());
    }

    /// [`DurableState::apply`], moving the write's entries instead of copying them.
    pub fn apply_owned(&mut self, write: DurableWrite) {
        match write {
            DurableWrite::Promise { ballot } => {
                self.promised = self.promised.max(ballot);
            }
            DurableWrite::Accept {
                ballot,
                first,
                entries,
            } => {
                self.promised = self.promised.max(ballot);
                let mut slot = first;
                for entry in entries {
                    self.accepted.insert(slot, (ballot, entry));
                    slot = slot.next();
                }
            }
            DurableWrite::Commit {
                first,
                entries,
                head,
            } => {
                let mut slot = first;
                for entry in entries {
                    self.committed.insert(slot, entry);
                    slot = slot.next();
                }
                // Anything accepted below the commit index is settled.
                while self
                    .accepted
                    .first_key_value()
                    .is_some_and(|(s, _)| *s < slot)
                {
                    self.accepted.pop_first();
                }
                self.head = Some(head);
            }
            DurableWrite::Snapshot(snapshot) => {
                let after = snapshot.slot.next();
                self.committed = self.committed.split_off(&after);
                self.accepted = self.accepted.split_off(&after);
                if self.committed.is_empty() {
                    self.head = Some(snapshot.chain);
                }
                self.snapshot = Some(snapshot);
            }
            DurableWrite::DiscardAccepted { from } => {
                self.accepted.split_off(&from);
            }
            DurableWrite::Enqueue { command } => {
                self.queue.insert(command.seq, command);
            }
            DurableWrite::Dequeue { through_seq } => {
                while self
                    .queue
                    .first_key_value()
                    .is_some_and(|(seq, _)| *seq <= through_seq)
                {
                    self.queue.pop_first();
                }
            }
            DurableWrite::ReserveReadIds { through } => {
                self.read_ids_reserved = self.read_ids_reserved.max(through);
            }
        }
    }
}

/// A durable home for a node's [`DurableState`].
///
/// Contract: `write` may buffer; after `sync` returns `Ok`, every write so far survives
/// a crash; a crash loses only an unsynced *suffix* of writes (never reorders them).
/// `load` returns the state as a restart would find it.
pub trait AcceptorStore {
    /// Records one write (possibly buffered).
    fn write(&mut self, write: &DurableWrite) -> Result<(), Error>;
    /// Makes every write so far durable (fsync) before returning.
    fn sync(&mut self) -> Result<(), Error>;
    /// The durable state.
    fn load(&self) -> Result<DurableState, Error>;

    /// `write` then `sync`.
    fn persist(&mut self, write: &DurableWrite) -> Result<(), Error> {
        self.write(write)?;
        self.sync()
    }
}

/// In-memory store that can crash: writes since the last `sync` are lost (or a prefix of
/// them kept, like a torn flush).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemStore {
    durable: DurableState,
    unsynced: Vec<DurableWrite>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash that keeps the first `keep` unsynced writes and loses the rest.
    pub fn crash(&mut self, keep: usize) {
        let kept: Vec<DurableWrite> = self.unsynced.drain(..).take(keep).collect();
        for w in kept {
            self.durable.apply_owned(w);
        }
    }

    /// Writes not yet synced.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
    }
}

impl AcceptorStore for MemStore {
    fn write(&mut self, write: &DurableWrite) -> Result<(), Error> {
        self.unsynced.push(write.clone());
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Error> {
        for w in std::mem::take(&mut self.unsynced) {
            self.durable.apply_owned(w);
        }
        Ok(())
    }

    fn load(&self) -> Result<DurableState, Error> {
        Ok(self.durable.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::{ConfigId, NodeId};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn ballot(round: u64) -> Ballot {
        Ballot {
            epoch: ConfigId(1),
            round,
            node: NodeId(1),
        }
    }

    fn command(seq: u64) -> Command {
        Command {
            proposer: NodeId(1),
            seq,
            payload: vec![u8::try_from(seq % 256).unwrap(); 3],
        }
    }

    fn write() -> impl Strategy<Value = DurableWrite> {
        let entry = prop_oneof![
            Just(Entry::Noop),
            (1u64..50).prop_map(|s| Entry::Command(command(s))),
        ];
        prop_oneof![
            (0u64..10).prop_map(|r| DurableWrite::Promise { ballot: ballot(r) }),
            (0u64..10, 0u64..40, vec(entry.clone(), 1..5)).prop_map(|(r, first, entries)| {
                DurableWrite::Accept {
                    ballot: ballot(r),
                    first: Slot(first),
                    entries,
                }
            }),
            (0u64..40, vec(entry, 1..5), any::<[u8; 32]>()).prop_map(|(first, entries, h)| {
                DurableWrite::Commit {
                    first: Slot(first),
                    entries,
                    head: ChainHash(h),
                }
            }),
            (0u64..40, any::<[u8; 32]>()).prop_map(|(slot, h)| {
                let config = Config::majority(ConfigId(1), [NodeId(1)], [], []).unwrap();
                DurableWrite::Snapshot(Snapshot {
                    slot: Slot(slot),
                    chain: ChainHash(h),
                    config,
                    applied_seqs: [(NodeId(1), slot)].into_iter().collect(),
                    state: vec![1, 2, 3],
                })
            }),
            (0u64..40).prop_map(|f| DurableWrite::DiscardAccepted { from: Slot(f) }),
            (1u64..50).prop_map(|s| DurableWrite::Enqueue {
                command: command(s)
            }),
            (0u64..50).prop_map(|s| DurableWrite::Dequeue { through_seq: s }),
            (0u64..1 << 20).prop_map(|r| DurableWrite::ReserveReadIds { through: ReadId(r) }),
        ]
    }

    /// One body for every store: after any writes with syncs at arbitrary points, and
    /// a crash keeping a prefix of the unsynced writes, `load` equals the reference.
    fn contract(store: &mut dyn AcceptorStore, ops: &[(DurableWrite, bool)]) -> DurableState {
        for (w, sync) in ops {
            store.write(w).unwrap();
            if *sync {
                store.sync().unwrap();
            }
        }
        store.sync().unwrap();
        store.load().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn sqlite_and_memory_stores_agree(ops in vec((write(), any::<bool>()), 0..30)) {
            let mut reference = DurableState::default();
            for (w, _) in &ops {
                reference.apply(w);
            }
            let mut mem = MemStore::new();
            prop_assert_eq!(&contract(&mut mem, &ops), &reference);
            let dir = tempfile::tempdir().unwrap();
            let mut sqlite = SqliteStore::open(&dir.path().join("acceptor.db")).unwrap();
            prop_assert_eq!(&contract(&mut sqlite, &ops), &reference);
            // Reopening the file finds the same state.
            drop(sqlite);
            let reopened = SqliteStore::open(&dir.path().join("acceptor.db")).unwrap();
            prop_assert_eq!(&reopened.load().unwrap(), &reference);
        }

        #[test]
        fn memory_crash_loses_exactly_the_unsynced_suffix(
            synced in vec(write(), 0..10),
            unsynced in vec(write(), 0..10),
            keep in 0usize..12,
        ) {
            let mut store = MemStore::new();
            let mut expected = DurableState::default();
            for w in &synced {
                store.write(w).unwrap();
                expected.apply(w);
            }
            store.sync().unwrap();
            for w in &unsynced {
                store.write(w).unwrap();
            }
            for w in unsynced.iter().take(keep) {
                expected.apply(w);
            }
            store.crash(keep);
            prop_assert_eq!(store.load().unwrap(), expected);
        }
    }

    #[test]
    fn sqlite_unsynced_writes_are_not_visible_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store
            .persist(&DurableWrite::Promise { ballot: ballot(1) })
            .unwrap();
        store
            .write(&DurableWrite::Promise { ballot: ballot(2) })
            .unwrap();
        // Dropping the connection without `sync` rolls the open transaction back,
        // like a crash before fsync.
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.load().unwrap().promised, ballot(1));
    }
}
