//! [`ReplicaAgreement`]: fossil's [`Agreement`] seam over net's replica.
//!
//! fossil calls it from FUSE threads and its background thread, never from inside a
//! tokio runtime: [`BlockingReplica`] runs each call to completion on a small runtime
//! of its own and refuses to be called from a runtime thread, so the daemon's network
//! runtime never blocks on fossil and fossil never blocks a network worker.
//!
//! Mapping:
//! - committed entries that every device refuses (bad signature, unknown author,
//!   another volume, misattributed) are skipped: the replica reports them in
//!   `refused`, identically on every device with the same keyring, so skipping keeps
//!   the namespace a pure function of the log (invariant 3). They are logged.
//! - a read barrier that finds no quorum in time is `None` (fossil serves local
//!   state); every other replica failure is `fossil::Error::Agreement`.
//! - on the only member (and leader) of the volume a read barrier is answered here
//!   with the local commit end, without a round through the replica: nothing commits
//!   without this device then, so every commit made before the call is below it; and
//!   `sole_author` tells fossil that all that commits is its own, so it need not wait
//!   for a barrier at all. That is every fresh store until a second device joins, and
//!   it keeps lookups of names that do not exist (each one asks for a barrier) off the
//!   replica's fsyncs and the applier's work.

use std::time::Duration;

use fossil::agreement::{Agreement, CommittedRun, ProposalId, Slot};
use net::replica::{self, BlockingReplica};

/// A volume's Paxos replica as fossil's log.
#[derive(Debug)]
pub struct ReplicaAgreement {
    replica: BlockingReplica,
}

impl ReplicaAgreement {
    pub fn new(replica: BlockingReplica) -> ReplicaAgreement {
        ReplicaAgreement { replica }
    }

    /// The replica behind it.
    #[cfg(test)]
    pub fn replica(&self) -> &BlockingReplica {
        &self.replica
    }
}

fn agreement_error(error: net::Error) -> fossil::Error {
    fossil::Error::Agreement(error.to_string())
}

impl Agreement for ReplicaAgreement {
    fn propose_many(&self, ops: Vec<Vec<u8>>) -> fossil::Result<Vec<ProposalId>> {
        let ids = self.replica.propose_many(ops).map_err(agreement_error)?;
        Ok(ids.into_iter().map(|id| ProposalId(id.0)).collect())
    }

    fn pending(&self) -> fossil::Result<Vec<(ProposalId, Vec<u8>)>> {
        let pending = self.replica.pending().map_err(agreement_error)?;
        Ok(pending
            .into_iter()
            .map(|(id, op)| (ProposalId(id.0), op))
            .collect())
    }

    fn committed(&self, from: Slot, count_max: usize) -> fossil::Result<CommittedRun> {
        let count_max = u64::try_from(count_max).unwrap_or(u64::MAX);
        let run = self
            .replica
            .read_committed(paxos::Slot(from), count_max)
            .map_err(agreement_error)?;
        for (slot, error) in &run.refused {
            tracing::warn!(slot = slot.0, %error, "skipping a committed entry every device refuses");
        }
        Ok(CommittedRun {
            ops: run.ops.into_iter().map(|op| (op.slot.0, op.op)).collect(),
            next: run.next.0,
        })
    }

    fn commit_end(&self) -> Slot {
        self.replica.commit_end().0
    }

    fn wait_commit_end_above(&self, seen: Slot, timeout: Duration) -> fossil::Result<Slot> {
        self.replica
            .wait_commit_end_above(paxos::Slot(seen), timeout)
            .map(|end| end.0)
            .map_err(agreement_error)
    }

    fn wait_committed(&self, id: ProposalId, timeout: Duration) -> fossil::Result<Option<Slot>> {
        self.replica
            .wait_committed(replica::ProposalId(id.0), timeout)
            .map(|slot| slot.map(|slot| slot.0))
            .map_err(agreement_error)
    }

    fn read_barrier(&self, timeout: Duration) -> fossil::Result<Option<Slot>> {
        if self.replica.replica().is_sole_leader() {
            return Ok(Some(self.commit_end()));
        }
        match self.replica.read_index(timeout) {
            Ok(slot) => Ok(Some(slot.0)),
            Err(net::Error::NoQuorum { .. }) => Ok(None),
            Err(error) => Err(agreement_error(error)),
        }
    }

    fn note_applied(&self, end: Slot) {
        self.replica.note_applied(paxos::Slot(end));
    }

    fn sole_author(&self) -> bool {
        self.replica.replica().is_sole_leader()
    }

    fn checkpoint(&self) -> fossil::Result<Option<(Slot, Vec<u8>)>> {
        let checkpoint = self.replica.snapshot().map_err(agreement_error)?;
        Ok(checkpoint.map(|c| (c.through.0, c.state)))
    }

    fn compact(&self, through: Slot, checkpoint: Vec<u8>) -> fossil::Result<()> {
        self.replica
            .compact(paxos::Slot(through), checkpoint)
            .map_err(agreement_error)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use net::entry::{EntryKey, KeyEpoch};
    use net::replica::mem_link::MemNet;
    use net::replica::{Replica, ReplicaOptions, StaticKeys, VolumeKeys};
    use paxos::{Config, ConfigId, NodeId, NodeOptions, VolumeId};

    use super::*;

    const VOLUME: VolumeId = VolumeId(0x6b17_4a67);
    const WAIT: Duration = Duration::from_secs(10);

    fn signing(id: u64) -> SigningKey {
        let mut seed = [0x33u8; 32];
        seed[..8].copy_from_slice(&id.to_le_bytes());
        SigningKey::from_bytes(&seed)
    }

    /// Three voters on an in-memory network; the runtime delivers delayed frames only.
    struct Group {
        _dir: tempfile::TempDir,
        runtime: tokio::runtime::Runtime,
        net: MemNet,
        agreements: BTreeMap<u64, ReplicaAgreement>,
    }

    impl Group {
        /// A group of `authors`; every device knows the true key of those in `honest`
        /// and a wrong one for the others (their entries commit, and are refused).
        fn new(authors: &[u64], honest: &[u64]) -> Group {
            let dir = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let net = MemNet::new(runtime.handle().clone(), 11);
            let genesis =
                Config::majority(ConfigId(1), authors.iter().map(|i| NodeId(*i)), [], []).unwrap();
            let keys: Arc<dyn VolumeKeys> = Arc::new(StaticKeys {
                epochs: [(KeyEpoch(1), EntryKey::derive(&[9; 32]))].into(),
                authors: authors
                    .iter()
                    .map(|i| {
                        let key = if honest.contains(i) { *i } else { 0xee };
                        (NodeId(*i), signing(key).verifying_key())
                    })
                    .collect(),
            });
            let mut agreements = BTreeMap::new();
            for id in authors {
                let options = ReplicaOptions {
                    node: NodeOptions {
                        election_timeout_ms: 150,
                        election_stagger_ms: 50,
                        heartbeat_interval_ms: 30,
                        retry_interval_ms: 40,
                        ..NodeOptions::new(NodeId(*id), VOLUME)
                    },
                    genesis: genesis.clone(),
                    store_path: dir.path().join(format!("acceptor-{id}.sqlite")),
                    signing_key: Some(signing(*id)),
                };
                let replica = {
                    let _guard = runtime.enter();
                    Replica::open(options, keys.clone(), net.link(NodeId(*id))).unwrap()
                };
                net.attach(replica.clone());
                let blocking = BlockingReplica::new(replica).unwrap();
                agreements.insert(*id, ReplicaAgreement::new(blocking));
            }
            Group {
                _dir: dir,
                runtime,
                net,
                agreements,
            }
        }

        fn get(&self, id: u64) -> &ReplicaAgreement {
            self.agreements.get(&id).unwrap()
        }

        /// Reads everything committed on `id`, following `next` (bounded).
        fn read_all(&self, id: u64, until: Slot) -> Vec<(Slot, Vec<u8>)> {
            let agreement = self.get(id);
            let mut from = 0;
            let mut ops = Vec::new();
            for _ in 0..1000 {
                if from >= until {
                    break;
                }
                let end = agreement.commit_end();
                if end <= from {
                    agreement.wait_commit_end_above(from, WAIT).unwrap();
                    continue;
                }
                let run = agreement.committed(from, 64).unwrap();
                ops.extend(run.ops);
                from = run.next;
            }
            ops
        }

        fn close(self) {
            for agreement in self.agreements.values() {
                self.runtime.block_on(agreement.replica().replica().close());
            }
        }
    }

    #[test]
    fn proposals_commit_and_every_device_reads_them_in_the_same_order() {
        let group = Group::new(&[1, 2, 3], &[1, 2, 3]);
        let a = group.get(1);
        let b = group.get(2);
        let ids = a
            .propose_many(vec![b"a1".to_vec(), b"a2".to_vec()])
            .unwrap();
        assert_eq!(ids, vec![ProposalId(1), ProposalId(2)]);
        let from_b = b.propose_many(vec![b"b1".to_vec()]).unwrap();
        let mut last = 0;
        for id in &ids {
            last = last.max(a.wait_committed(*id, WAIT).unwrap().expect("committed"));
        }
        last = last.max(
            b.wait_committed(from_b[0], WAIT)
                .unwrap()
                .expect("committed"),
        );
        assert!(a.pending().unwrap().is_empty());
        let on_a = group.read_all(1, last + 1);
        let on_c = group.read_all(3, last + 1);
        assert_eq!(on_a, on_c, "devices disagree on the log");
        let ops: Vec<&[u8]> = on_a.iter().map(|(_, op)| op.as_slice()).collect();
        assert_eq!(ops.len(), 3, "{ops:?}");
        let a_order: Vec<&[u8]> = ops.iter().copied().filter(|op| op[0] == b'a').collect();
        assert_eq!(a_order, vec![&b"a1"[..], &b"a2"[..]]);
        // A barrier on a third device covers every commit made before it.
        let barrier = group.get(3).read_barrier(WAIT).unwrap().expect("quorum");
        assert!(barrier > last, "barrier {barrier} below commit {last}");
        group.get(3).note_applied(last + 1);
        assert_eq!(
            group.get(3).replica().status().unwrap().applied_end,
            paxos::Slot(last + 1)
        );
        group.close();
    }

    #[test]
    fn entries_every_device_refuses_are_skipped_and_later_ones_still_read() {
        // Device 3's entries carry a signature that does not verify under the key every
        // device holds for it: they commit, and every device refuses them. (An author
        // not known at all stops the read instead: see net's replica tests.)
        let group = Group::new(&[1, 2, 3], &[1, 2]);
        let forged = group.get(3).propose_many(vec![b"forged".to_vec()]).unwrap();
        let forged_slot = group
            .get(3)
            .wait_committed(forged[0], WAIT)
            .unwrap()
            .expect("committed");
        let good = group.get(1).propose_many(vec![b"good".to_vec()]).unwrap();
        let good_slot = group
            .get(1)
            .wait_committed(good[0], WAIT)
            .unwrap()
            .expect("committed");
        let read = group.read_all(2, forged_slot.max(good_slot) + 1);
        assert_eq!(read, vec![(good_slot, b"good".to_vec())]);
        group.close();
    }

    #[test]
    fn without_a_quorum_proposals_stay_pending_and_the_barrier_answers_none() {
        let group = Group::new(&[1, 2, 3], &[1, 2, 3]);
        group.net.isolate(NodeId(1));
        let a = group.get(1);
        let ids = a.propose_many(vec![b"offline".to_vec()]).unwrap();
        let short = Duration::from_millis(300);
        assert_eq!(a.wait_committed(ids[0], short).unwrap(), None);
        assert_eq!(a.read_barrier(short).unwrap(), None);
        assert_eq!(a.pending().unwrap(), vec![(ids[0], b"offline".to_vec())]);
        group.net.reconnect(NodeId(1));
        assert!(a.wait_committed(ids[0], WAIT).unwrap().is_some());
        assert!(a.pending().unwrap().is_empty());
        group.close();
    }

    /// Waits (bounded) until the replica has elected itself.
    fn wait_for_leadership(agreement: &ReplicaAgreement) {
        for _ in 0..500 {
            if agreement.replica().status().unwrap().leader.is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no leader elected");
    }

    #[test]
    fn the_only_voter_answers_a_barrier_locally_and_others_ask_the_group() {
        // With its replica task stopped, a device can answer a barrier only without a
        // round through it.
        let alone = Group::new(&[1], &[1]);
        let a = alone.get(1);
        wait_for_leadership(a);
        let ids = a.propose_many(vec![b"one".to_vec()]).unwrap();
        let slot = a.wait_committed(ids[0], WAIT).unwrap().expect("committed");
        assert!(a.sole_author());
        alone.runtime.block_on(a.replica().replica().close());
        let barrier = a
            .read_barrier(WAIT)
            .expect("the only voter answers without its replica task")
            .expect("a barrier");
        assert!(barrier > slot, "barrier {barrier} below commit {slot}");
        assert_eq!(barrier, a.commit_end());
        alone.close();

        let group = Group::new(&[1, 2, 3], &[1, 2, 3]);
        let b = group.get(2);
        wait_for_leadership(b);
        assert!(!b.sole_author());
        assert!(b.read_barrier(WAIT).unwrap().is_some());
        group.runtime.block_on(b.replica().replica().close());
        assert!(
            b.read_barrier(WAIT).is_err(),
            "one of three voters answered a barrier without asking the group"
        );
        group.close();
    }

    #[test]
    fn calls_from_inside_a_runtime_are_refused_not_deadlocked() {
        let group = Group::new(&[1], &[1]);
        let refused = group
            .runtime
            .block_on(async { group.get(1).propose_many(vec![b"x".to_vec()]) });
        assert!(matches!(refused, Err(fossil::Error::Agreement(_))));
        group.close();
    }
}
