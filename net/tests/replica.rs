//! The replicated log end to end: real tokio, real SQLite files in temp dirs, replicas
//! talking over an in-memory network with loss, delay and partitions.
//!
//! Every test checks the same two things at the end: all replicas read the same
//! sequence of (author, seq, op), and every proposal that was acknowledged appears in
//! it exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::WAIT;
use ed25519_dalek::SigningKey;
use net::Error;
use net::entry::{EntryKey, KeyEpoch};
use net::replica::mem_link::{Faults, MemNet};
use net::replica::{
    CommittedOp, MembershipChange, ProposalId, Replica, ReplicaOptions, StaticKeys, VolumeKeys,
};
use paxos::{Config, ConfigId, NodeId, NodeOptions, Role, Slot, VolumeId};
use rand::{Rng, SeedableRng};

const VOLUME: VolumeId = VolumeId(0x4b17_7e57);

fn signing(id: NodeId) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&id.0.to_le_bytes());
    seed[31] = 0x5a;
    SigningKey::from_bytes(&seed)
}

/// Every device's keyring: the epoch key and devices 1..=4 (4 joins later as a learner).
fn full_keys() -> StaticKeys {
    StaticKeys {
        epochs: [(KeyEpoch(1), EntryKey::derive(&[7; 32]))].into(),
        authors: (1..=4)
            .map(|i| (NodeId(i), signing(NodeId(i)).verifying_key()))
            .collect(),
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    net: MemNet,
    genesis: Config,
    keys: BTreeMap<NodeId, Arc<dyn VolumeKeys>>,
    witnesses: BTreeSet<NodeId>,
    replicas: BTreeMap<NodeId, Replica>,
}

impl Cluster {
    /// Voters 1..=n (majority quorums), `witnesses` among them, all started.
    fn new(n: u64, witnesses: &[u64]) -> Cluster {
        let ids: Vec<u64> = (1..=n).collect();
        let genesis = Config::majority(
            ConfigId(1),
            ids.iter().map(|i| NodeId(*i)),
            witnesses.iter().map(|i| NodeId(*i)),
            [],
        )
        .unwrap();
        let keys = ids
            .iter()
            .map(|i| {
                let mut keys = full_keys();
                if witnesses.contains(i) {
                    // A witness stores and votes on sealed entries; it holds no key.
                    keys.epochs.clear();
                }
                let keys: Arc<dyn VolumeKeys> = Arc::new(keys);
                (NodeId(*i), keys)
            })
            .collect();
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            net: MemNet::new(tokio::runtime::Handle::current(), 7),
            genesis,
            keys,
            witnesses: witnesses.iter().map(|i| NodeId(*i)).collect(),
            replicas: BTreeMap::new(),
        };
        for i in ids {
            cluster.start(NodeId(i));
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let node = NodeOptions {
            election_timeout_ms: 150,
            election_stagger_ms: 50,
            heartbeat_interval_ms: 30,
            retry_interval_ms: 40,
            ..NodeOptions::new(id, VOLUME)
        };
        let options = ReplicaOptions {
            node,
            genesis: self.genesis.clone(),
            store_path: self.dir.path().join(format!("{}.db", id.0)),
            signing_key: (!self.witnesses.contains(&id)).then(|| signing(id)),
        };
        let replica = Replica::open(options, self.keys[&id].clone(), self.net.link(id)).unwrap();
        self.net.attach(replica.clone());
        self.replicas.insert(id, replica);
    }

    async fn kill(&mut self, id: NodeId) {
        self.net.detach(id);
        if let Some(replica) = self.replicas.remove(&id) {
            replica.kill().await;
        }
    }

    fn get(&self, id: u64) -> &Replica {
        &self.replicas[&NodeId(id)]
    }

    /// Waits until a live replica leads and returns it.
    async fn leader(&self) -> NodeId {
        common::leader(&self.replicas).await
    }

    /// Waits until every live non-witness replica has committed below `end`, and
    /// returns what each reads from slot 0.
    async fn read_everywhere(&self, end: Slot) -> BTreeMap<NodeId, Vec<CommittedOp>> {
        let mut out = BTreeMap::new();
        for (id, replica) in &self.replicas {
            if self.witnesses.contains(id) {
                continue;
            }
            let mut commits = replica.commits();
            tokio::time::timeout(WAIT, commits.wait_for(|s| *s >= end))
                .await
                .unwrap_or_else(|_| panic!("{id} did not reach {end}"))
                .unwrap();
            out.insert(*id, read_all(replica, Slot(0), end).await.unwrap());
        }
        out
    }

    /// The highest commit end among live replicas.
    async fn commit_end(&self) -> Slot {
        let mut end = Slot(0);
        for replica in self.replicas.values() {
            end = end.max(replica.status().await.unwrap().commit_end);
        }
        end
    }
}

/// Everything committed in `[from, end)`, following `next`.
async fn read_all(replica: &Replica, from: Slot, end: Slot) -> net::Result<Vec<CommittedOp>> {
    let mut ops = Vec::new();
    let mut at = from;
    while at < end {
        let batch = replica.read_committed(at, 1000).await?;
        assert!(batch.refused.is_empty(), "refused: {:?}", batch.refused);
        // A batch may run past `end` (into entries committed since).
        ops.extend(batch.ops.into_iter().filter(|op| op.slot < end));
        if batch.next == at {
            break;
        }
        at = batch.next;
    }
    Ok(ops)
}

fn summary(ops: &[CommittedOp]) -> Vec<(NodeId, u64, Vec<u8>)> {
    ops.iter()
        .map(|o| (o.author, o.seq, o.op.clone()))
        .collect()
}

/// All replicas read the same sequence; `acked` ops each appear exactly once.
fn assert_agree(reads: &BTreeMap<NodeId, Vec<CommittedOp>>, acked: &BTreeSet<Vec<u8>>) {
    let mut views = reads.values().map(|ops| summary(ops));
    let first = views.next().unwrap();
    for other in views {
        assert_eq!(first, other, "replicas read different logs");
    }
    let mut seen = BTreeMap::new();
    for (_, _, op) in &first {
        *seen.entry(op.clone()).or_insert(0u32) += 1;
    }
    for op in acked {
        assert_eq!(
            seen.get(op),
            Some(&1),
            "acknowledged op {:?} committed {:?} times",
            String::from_utf8_lossy(op),
            seen.get(op)
        );
    }
    assert!(seen.values().all(|n| *n == 1), "an op was committed twice");
}

fn op(author: u64, n: u64) -> Vec<u8> {
    format!("op {author}/{n}").into_bytes()
}

async fn propose_and_wait(replica: &Replica, ops: Vec<Vec<u8>>) -> Vec<ProposalId> {
    let ids = replica.propose_many(ops).await.unwrap();
    for id in &ids {
        let slot = replica.wait_committed(*id, WAIT).await.unwrap();
        assert!(slot.is_some(), "{id:?} not committed in time");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_proposals_from_all_and_read_the_same_sequence() {
    let cluster = Cluster::new(3, &[]);
    cluster.leader().await;
    let mut acked = BTreeSet::new();
    let mut tasks = Vec::new();
    for id in 1..=3u64 {
        let replica = cluster.get(id).clone();
        let ops: Vec<Vec<u8>> = (0..40).map(|n| op(id, n)).collect();
        acked.extend(ops.clone());
        tasks.push(tokio::spawn(async move {
            // Single proposals and batches, interleaved with the other replicas.
            for chunk in ops.chunks(5) {
                for one in chunk.iter().take(2) {
                    propose_and_wait(&replica, vec![one.clone()]).await;
                }
                propose_and_wait(&replica, chunk[2..].to_vec()).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &acked);
    let first = reads.values().next().unwrap();
    assert_eq!(first.len(), 120);
    // Each author's ops appear in its seq order.
    for id in 1..=3u64 {
        let mine: Vec<u64> = first
            .iter()
            .filter(|o| o.author == NodeId(id))
            .map(|o| o.seq)
            .collect();
        assert_eq!(mine, (1..=40).collect::<Vec<u64>>());
    }
    cluster.get(1).note_applied(Slot(7));
    let status = cluster.get(1).status().await.unwrap();
    assert_eq!(status.applied_end, Slot(7));
    assert_eq!(status.queued, 0);
    assert!(status.heard_ms_ago.values().all(Option::is_some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_stream_restarts_from_its_files_without_losing_commits() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let follower = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    // The leader streams proposals without waiting for commits; a follower streams
    // one at a time. Each keeps what was acknowledged (durably queued).
    let leader_replica = cluster.get(leader.0).clone();
    let leader_stream = tokio::spawn(async move {
        let mut acked = Vec::new();
        for n in 0..3000 {
            match leader_replica.propose(op(leader.0, n)).await {
                Ok(_) => acked.push(op(leader.0, n)),
                Err(Error::ReplicaStopped) => break,
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        acked
    });
    let follower_replica = cluster.get(follower.0).clone();
    let follower_stream = tokio::spawn(async move {
        let mut acked = Vec::new();
        for n in 0..60 {
            let id = follower_replica.propose(op(follower.0, n)).await.unwrap();
            acked.push(op(follower.0, n));
            let slot = follower_replica.wait_committed(id, WAIT).await.unwrap();
            assert!(slot.is_some());
        }
        acked
    });
    // Kill the leader once the streams are well under way.
    let mut commits = cluster.get(follower.0).commits();
    tokio::time::timeout(WAIT, commits.wait_for(|s| s.0 >= 60))
        .await
        .unwrap()
        .unwrap();
    let end_before = *commits.borrow();
    let before_kill = summary(
        &read_all(cluster.get(follower.0), Slot(0), end_before)
            .await
            .unwrap(),
    );
    cluster.kill(leader).await;
    let mut acked: BTreeSet<Vec<u8>> = leader_stream.await.unwrap().into_iter().collect();
    assert!(
        acked.len() >= 20,
        "the kill came too early to test anything"
    );

    // The others elect a new leader; the follower's stream goes on through it.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    acked.extend(follower_stream.await.unwrap());
    // The old leader comes back from its SQLite file, catches up and resubmits what
    // it had acknowledged but not committed.
    cluster.start(leader);
    propose_and_wait(cluster.get(leader.0), vec![b"after restart".to_vec()]).await;
    acked.insert(b"after restart".to_vec());
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &acked);
    // Nothing committed before the kill was lost or changed.
    let after = summary(&reads[&leader]);
    assert_eq!(&after[..before_kill.len()], &before_kill[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_replica_catches_up_on_500_entries_from_the_log() {
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let away = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    cluster.net.isolate(away);
    let mut acked = BTreeSet::new();
    for batch in 0..10u64 {
        let ops: Vec<Vec<u8>> = (0..50).map(|n| op(leader.0, batch * 50 + n)).collect();
        acked.extend(ops.clone());
        propose_and_wait(cluster.get(leader.0), ops).await;
    }
    let end = cluster.commit_end().await;
    assert!(end.0 >= 500);
    assert!(cluster.replicas[&away].status().await.unwrap().commit_end < Slot(10));
    cluster.net.reconnect(away);
    let reads = cluster.read_everywhere(end).await;
    assert_agree(&reads, &acked);
    assert_eq!(reads[&away].len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_replica_catches_up_from_a_checkpoint() {
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let away = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    cluster.net.isolate(away);
    let ops: Vec<Vec<u8>> = (0..100).map(|n| op(leader.0, n)).collect();
    propose_and_wait(cluster.get(leader.0), ops).await;
    let end = cluster.commit_end().await;
    let through = Slot(end.0 - 1);
    // Both reachable replicas truncate behind a checkpoint of everything so far.
    for (id, replica) in &cluster.replicas {
        if *id != away {
            let mut commits = replica.commits();
            commits.wait_for(|s| *s >= end).await.unwrap();
            replica
                .compact(through, format!("checkpoint by {}", id.0).into_bytes())
                .await
                .unwrap();
            assert!(matches!(
                replica.read_committed(Slot(0), 10).await,
                Err(Error::Truncated { .. })
            ));
        }
    }
    // Later ops go to the log after the checkpoint.
    let later: Vec<Vec<u8>> = (100..110).map(|n| op(leader.0, n)).collect();
    propose_and_wait(cluster.get(leader.0), later.clone()).await;
    let end = cluster.commit_end().await;
    cluster.net.reconnect(away);
    let replica = &cluster.replicas[&away];
    let mut commits = replica.commits();
    tokio::time::timeout(WAIT, commits.wait_for(|s| *s >= end))
        .await
        .unwrap()
        .unwrap();
    let Err(Error::Truncated { log_start }) = replica.read_committed(Slot(0), 10).await else {
        panic!("the lagging replica should have installed the checkpoint");
    };
    assert_eq!(log_start, through.next());
    let checkpoint = replica.snapshot().await.unwrap().unwrap();
    assert_eq!(checkpoint.through, through);
    assert!(checkpoint.state.starts_with(b"checkpoint by "));
    let tail = read_all(replica, log_start, end).await.unwrap();
    let tail_ops: Vec<Vec<u8>> = tail.into_iter().map(|o| o.op).collect();
    assert_eq!(tail_ops, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_made_offline_survive_a_restart_and_commit_once_after_healing() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let away = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    cluster.net.isolate(away);
    let offline: Vec<Vec<u8>> = (0..20).map(|n| op(away.0, n)).collect();
    let mut ids = Vec::new();
    for one in &offline {
        ids.push(cluster.replicas[&away].propose(one.clone()).await.unwrap());
    }
    assert_eq!(cluster.replicas[&away].status().await.unwrap().queued, 20);
    assert_eq!(
        cluster.replicas[&away]
            .wait_committed(ids[0], Duration::from_millis(300))
            .await
            .unwrap(),
        None,
        "nothing commits while cut off"
    );
    let pending: Vec<Vec<u8>> = cluster.replicas[&away]
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, op)| op)
        .collect();
    assert_eq!(pending, offline);
    // Restart while still cut off: the queue is on disk.
    cluster.kill(away).await;
    cluster.start(away);
    assert_eq!(cluster.replicas[&away].status().await.unwrap().queued, 20);
    let pending_after_restart: Vec<(ProposalId, Vec<u8>)> =
        cluster.replicas[&away].pending().await.unwrap();
    assert_eq!(
        pending_after_restart
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        ids
    );
    // Meanwhile the others commit, on a lossy network.
    cluster.net.set_faults(Faults {
        drop_percent: 15,
        delay_ms: 2,
        isolated: [away].into(),
    });
    let mut acked: BTreeSet<Vec<u8>> = offline.iter().cloned().collect();
    let online: Vec<Vec<u8>> = (0..20).map(|n| op(leader.0, n)).collect();
    acked.extend(online.clone());
    propose_and_wait(cluster.get(leader.0), online).await;
    cluster.net.set_faults(Faults {
        drop_percent: 15,
        delay_ms: 2,
        isolated: BTreeSet::new(),
    });
    for id in ids {
        assert!(
            cluster.replicas[&away]
                .wait_committed(id, WAIT)
                .await
                .unwrap()
                .is_some()
        );
    }
    cluster.net.set_faults(Faults::default());
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &acked);
    assert_eq!(cluster.replicas[&away].status().await.unwrap().queued, 0);
    assert!(cluster.replicas[&away].pending().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_and_a_witness_keep_committing_with_either_device_down() {
    let mut cluster = Cluster::new(3, &[3]);
    cluster.leader().await;
    let witness = cluster.get(3).clone();
    assert!(matches!(
        witness.propose(b"from the witness".to_vec()).await,
        Err(Error::NoEntryKeys)
    ));
    let mut acked = BTreeSet::new();
    for down in [1u64, 2] {
        let up = 3 - down;
        cluster.kill(NodeId(down)).await;
        let ops: Vec<Vec<u8>> = (0..10).map(|n| op(up, 100 * down + n)).collect();
        acked.extend(ops.clone());
        propose_and_wait(cluster.get(up), ops).await;
        cluster.start(NodeId(down));
    }
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_eq!(reads.len(), 2);
    assert_agree(&reads, &acked);
    // The witness holds the log, sealed, but cannot open it.
    let end = cluster.commit_end().await;
    let mut commits = witness.commits();
    tokio::time::timeout(WAIT, commits.wait_for(|s| *s >= end))
        .await
        .unwrap()
        .unwrap();
    // An entry under a key epoch this node does not hold is waited for, never
    // skipped (a device may learn the epoch later); a witness never learns one.
    let seen = witness.read_committed(Slot(0), 100).await.unwrap();
    assert!(seen.ops.is_empty());
    assert!(seen.refused.is_empty());
    assert!(seen.next < end, "read past {:?} of {end:?}", seen.next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_author_stops_the_read_until_known_and_bad_signatures_are_refused() {
    let mut cluster = Cluster::new(3, &[]);
    // Replica 1's keyring does not know device 2 and holds a wrong key for device 3.
    let mut keys = full_keys();
    keys.authors.remove(&NodeId(2));
    let wrong = SigningKey::from_bytes(&[0xee; 32]).verifying_key();
    keys.authors.insert(NodeId(3), wrong);
    cluster.keys.insert(NodeId(1), Arc::new(keys));
    cluster.kill(NodeId(1)).await;
    cluster.start(NodeId(1));
    cluster.leader().await;
    for id in 1..=3u64 {
        propose_and_wait(cluster.get(id), vec![op(id, 0)]).await;
    }
    let end = cluster.commit_end().await;
    let mut commits = cluster.get(1).commits();
    commits.wait_for(|s| *s >= end).await.unwrap();
    // Device 2 is not known yet: neither applied nor refused; reading stops before it
    // (refusing would be final here and not on devices that know it).
    let seen_by_1 = cluster.get(1).read_committed(Slot(0), 100).await.unwrap();
    assert_eq!(summary(&seen_by_1.ops), vec![(NodeId(1), 1, op(1, 0))]);
    assert!(seen_by_1.refused.is_empty(), "{:?}", seen_by_1.refused);
    assert!(seen_by_1.next < end);
    let again = cluster
        .get(1)
        .read_committed(seen_by_1.next, 100)
        .await
        .unwrap();
    assert!(again.ops.is_empty() && again.next == seen_by_1.next);
    // Once device 2 is known, reading goes on from there; the bad signature of 3 is
    // refused, as on every device holding that keyring.
    let mut keys = full_keys();
    keys.authors.insert(NodeId(3), wrong);
    cluster.keys.insert(NodeId(1), Arc::new(keys));
    cluster.kill(NodeId(1)).await;
    cluster.start(NodeId(1));
    let rest = cluster
        .get(1)
        .read_committed(seen_by_1.next, 100)
        .await
        .unwrap();
    assert_eq!(summary(&rest.ops), vec![(NodeId(2), 1, op(2, 0))]);
    assert_eq!(rest.refused.len(), 1, "{:?}", rest.refused);
    assert!(matches!(
        rest.refused[0].1,
        Error::EntryBadSignature { author } if author == NodeId(3)
    ));
    // A replica with the full keyring reads all three.
    let seen_by_2 = read_all(cluster.get(2), Slot(0), end).await.unwrap();
    assert_eq!(seen_by_2.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_never_panic_and_the_group_keeps_committing() {
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Valid frames to mutate: encode a few real messages by capturing nothing — build
    // them from the codec instead.
    let valid = paxos::codec::encode(&paxos::Envelope {
        volume: VOLUME,
        config: ConfigId(1),
        ballot: paxos::Ballot::ZERO,
        body: paxos::Body::Fetch { first: Slot(0) },
    });
    let mut acked = BTreeSet::new();
    for round in 0..20u64 {
        for replica in cluster.replicas.values() {
            for _ in 0..50 {
                let len = rng.random_range(0..200usize);
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                replica.deliver(NodeId(rng.random_range(0..5)), bytes);
                let mut flipped = valid.clone();
                let at = rng.random_range(0..flipped.len());
                flipped[at] ^= 1 << rng.random_range(0..8);
                replica.deliver(NodeId(rng.random_range(1..4)), flipped);
                let cut = rng.random_range(0..valid.len());
                replica.deliver(NodeId(rng.random_range(1..4)), valid[..cut].to_vec());
            }
        }
        propose_and_wait(cluster.get(leader.0), vec![op(leader.0, round)]).await;
        acked.insert(op(leader.0, round));
    }
    for replica in cluster.replicas.values() {
        assert!(!replica.is_stopped());
    }
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_and_membership_changes_go_through_the_log() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let follower = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    propose_and_wait(cluster.get(leader.0), vec![op(leader.0, 0)]).await;
    let written_at = cluster.commit_end().await;
    // A read barrier on a follower covers everything committed before it.
    let barrier = cluster.replicas[&follower].read_index(WAIT).await.unwrap();
    assert!(barrier >= written_at, "{barrier} < {written_at}");
    // Only the leader reconfigures.
    assert!(matches!(
        cluster.replicas[&follower]
            .change_membership(MembershipChange::AddLearner(NodeId(4)))
            .await,
        Err(Error::NotLeader { .. })
    ));
    cluster.keys.insert(NodeId(4), Arc::new(full_keys()));
    cluster
        .get(leader.0)
        .change_membership(MembershipChange::AddLearner(NodeId(4)))
        .await
        .unwrap();
    cluster.start(NodeId(4));
    let learner = cluster.get(4).clone();
    tokio::time::timeout(WAIT, async {
        loop {
            let status = learner.status().await.unwrap();
            if status.config.learners.contains(&NodeId(4)) && status.role == Role::Learner {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the learner did not learn its configuration");
    // The learner proposes (forwarded) and reads like everyone else.
    propose_and_wait(&learner, vec![op(4, 0)]).await;
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &[op(leader.0, 0), op(4, 0)].into());
}

#[test]
fn blocking_handle_serves_synchronous_callers() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime.block_on(async {
        let cluster = Cluster::new(3, &[]);
        cluster.leader().await;
        cluster
    });
    // A plain thread, as fossil's writers and the FUSE threads are.
    let blocking = net::replica::BlockingReplica::new(cluster.get(2).clone()).unwrap();
    let start = blocking.commit_end();
    let id = blocking.propose(b"from a sync thread".to_vec()).unwrap();
    let slot = blocking.wait_committed(id, WAIT).unwrap().unwrap();
    assert!(slot >= start);
    assert!(blocking.wait_commit_end_above(slot, WAIT).unwrap() > slot);
    let read = blocking.read_committed(slot, 1).unwrap();
    assert_eq!(read.ops[0].op, b"from a sync thread");
    assert!(blocking.read_index(WAIT).unwrap() > slot);
    // Inside a runtime it refuses instead of blocking a runtime thread.
    let inside = runtime.block_on(async { blocking.status() });
    assert!(matches!(inside, Err(Error::Config { .. })));
    runtime.block_on(async {
        for replica in cluster.replicas.values() {
            replica.close().await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_that_reach_the_log_are_refused_by_every_reader() {
    use net::entry::{Entry, EntryHeader, EntryKind};
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    // Device 3 is cut off; someone speaking as device 3 forwards three commands to
    // the leader: an entry sealed for another volume, device 2's entry replayed under
    // device 3's name, and bytes that are no entry at all.
    cluster.net.isolate(NodeId(3));
    let key = EntryKey::derive(&[7; 32]);
    let header = |volume, author: u64, seq| EntryHeader {
        kind: EntryKind::Op,
        volume,
        epoch: KeyEpoch(1),
        author: NodeId(author),
        seq,
    };
    let other_volume =
        Entry::seal(header(VolumeId(999), 3, 1), b"x", &key, &signing(NodeId(3))).unwrap();
    let replayed = Entry::seal(header(VOLUME, 2, 2), b"y", &key, &signing(NodeId(2))).unwrap();
    let commands = vec![
        (1, other_volume.into_bytes()),
        (2, replayed.into_bytes()),
        (3, b"no entry at all".to_vec()),
    ]
    .into_iter()
    .map(|(seq, payload)| paxos::Command {
        proposer: NodeId(3),
        seq,
        payload,
    })
    .collect();
    let forward = paxos::codec::encode(&paxos::Envelope {
        volume: VOLUME,
        config: ConfigId(1),
        ballot: paxos::Ballot::ZERO,
        body: paxos::Body::Forward { commands },
    });
    // A node that stopped leading drops a forward (it answers with a redirect), as the
    // network may: deliver to whoever leads until the three reach the log. Commands
    // are taken at most once, so a second delivery adds nothing.
    let mut leader = leader;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        cluster.replicas[&leader].deliver(NodeId(3), forward.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = cluster
            .get(leader.0)
            .read_committed(Slot(0), 100)
            .await
            .unwrap();
        if read.refused.len() >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forwarded commands never reached the log: {:?}",
            read.refused
        );
        leader = cluster.leader().await;
    }
    // A genuine op after them.
    propose_and_wait(cluster.get(leader.0), vec![op(leader.0, 0)]).await;
    let end = cluster.commit_end().await;
    for id in [1u64, 2] {
        let replica = cluster.get(id);
        let mut commits = replica.commits();
        tokio::time::timeout(WAIT, commits.wait_for(|s| *s >= end))
            .await
            .unwrap()
            .unwrap();
        let read = replica.read_committed(Slot(0), 100).await.unwrap();
        assert_eq!(summary(&read.ops), vec![(leader, 1, op(leader.0, 0))]);
        let refused: Vec<&Error> = read.refused.iter().map(|(_, e)| e).collect();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(matches!(
            refused[0],
            Error::EntryWrongVolume { found: 999, .. }
        ));
        assert!(matches!(
            refused[1],
            Error::EntryMisattributed { author, proposer, .. }
                if *author == NodeId(2) && *proposer == NodeId(3)
        ));
        assert!(matches!(refused[2], Error::Malformed { .. }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_group_restarts_from_its_files() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let mut acked = BTreeSet::new();
    for id in 1..=3u64 {
        let ops: Vec<Vec<u8>> = (0..10).map(|n| op(id, n)).collect();
        acked.extend(ops.clone());
        propose_and_wait(cluster.get(id), ops).await;
    }
    let end_before = cluster.commit_end().await;
    let before = cluster.read_everywhere(end_before).await;
    // Queued on the leader but perhaps not committed when everything goes down.
    let queued: Vec<Vec<u8>> = (10..15).map(|n| op(leader.0, n)).collect();
    cluster
        .get(leader.0)
        .propose_many(queued.clone())
        .await
        .unwrap();
    acked.extend(queued);
    for id in 1..=3u64 {
        cluster.kill(NodeId(id)).await;
    }
    for id in 1..=3u64 {
        cluster.start(NodeId(id));
    }
    // Committed entries are readable at once, before any election.
    for (id, ops) in &before {
        let again = read_all(&cluster.replicas[id], Slot(0), end_before)
            .await
            .unwrap();
        assert_eq!(summary(&again), summary(ops));
    }
    cluster.leader().await;
    propose_and_wait(cluster.get(2), vec![op(2, 99)]).await;
    acked.insert(op(2, 99));
    let reads = cluster.read_everywhere(cluster.commit_end().await).await;
    assert_agree(&reads, &acked);
}
