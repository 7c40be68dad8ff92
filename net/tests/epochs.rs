//! Key rotation through the log: real replicas (tokio, SQLite files in temp dirs) on an
//! in-memory network, each with a [`VolumeKeyring`] that keeps learned epochs in memory
//! (standing in for `volume.key`).
//!
//! What must hold: every replica switches its sealing epoch exactly at the rotation's
//! slot; entries sealed under an older epoch stay readable wherever they commit; a
//! device without a share never learns the epoch (and stops before entries sealed
//! under it rather than skip them); a rotation that cannot be kept is not read past;
//! a replica that catches up from a checkpoint learns the rotations the truncated log
//! held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::WAIT;
use net::Error;
use net::entry::{KeyEpoch, KeyRotation};
use net::identity::DeviceIdentity;
use net::keyring::VolumeKeyring;
use net::pairing::open_epoch_secret;
use net::replica::mem_link::MemNet;
use net::replica::{Replica, ReplicaOptions, VolumeKeys};
use paxos::{Config, ConfigId, NodeId, NodeOptions, Slot, VolumeId};
use zeroize::Zeroizing;

const VOLUME: VolumeId = VolumeId(0x4b17_e90c);
const SECRET_0: [u8; 32] = [0x10; 32];
const SECRET_1: [u8; 32] = [0x11; 32];

/// What a device's keep hook saw, and whether it fails (a full disk).
#[derive(Default)]
struct Kept {
    epochs: parking_lot::Mutex<Vec<KeyEpoch>>,
    failing: AtomicBool,
}

struct Group {
    dir: tempfile::TempDir,
    net: MemNet,
    genesis: Config,
    identities: BTreeMap<NodeId, DeviceIdentity>,
    kept: BTreeMap<NodeId, Arc<Kept>>,
    keyrings: BTreeMap<NodeId, Arc<VolumeKeyring>>,
    replicas: BTreeMap<NodeId, Replica>,
}

impl Group {
    /// Voters 1..=3, each holding epoch 0 only.
    fn new() -> Group {
        let genesis = Config::majority(ConfigId(1), (1..=3).map(NodeId), [], []).unwrap();
        let identities = (1..=3)
            .map(|i| (NodeId(i), DeviceIdentity::generate()))
            .collect();
        let mut group = Group {
            dir: tempfile::tempdir().unwrap(),
            net: MemNet::new(tokio::runtime::Handle::current(), 5),
            genesis,
            identities,
            kept: BTreeMap::new(),
            keyrings: BTreeMap::new(),
            replicas: BTreeMap::new(),
        };
        for i in 1..=3 {
            group.start(NodeId(i), "");
        }
        group
    }

    /// Starts `id` with a fresh keyring of epoch 0 (its acceptor file named after
    /// `generation`: a new one starts from nothing).
    fn start(&mut self, id: NodeId, generation: &str) {
        let kept = Arc::new(Kept::default());
        let hook = kept.clone();
        let authors: BTreeMap<NodeId, ed25519_dalek::VerifyingKey> = self
            .identities
            .iter()
            .map(|(node, identity)| (*node, identity.signing_key().verifying_key()))
            .collect();
        let keyring = Arc::new(VolumeKeyring::new(
            VOLUME,
            id,
            &self.identities[&id],
            [(KeyEpoch(0), Zeroizing::new(SECRET_0))],
            Box::new(move |epoch, _secret| {
                if hook.failing.load(Ordering::SeqCst) {
                    return Err("disk full".into());
                }
                hook.epochs.lock().push(epoch);
                Ok(())
            }),
            Box::new(move |author| authors.get(&author).copied()),
        ));
        let options = ReplicaOptions {
            node: NodeOptions {
                election_timeout_ms: 150,
                election_stagger_ms: 50,
                heartbeat_interval_ms: 30,
                retry_interval_ms: 40,
                ..NodeOptions::new(id, VOLUME)
            },
            genesis: self.genesis.clone(),
            store_path: self.dir.path().join(format!("{}{generation}.db", id.0)),
            signing_key: Some(self.identities[&id].signing_key()),
        };
        let keys: Arc<dyn VolumeKeys> = keyring.clone();
        let replica = Replica::open(options, keys, self.net.link(id)).unwrap();
        self.net.attach(replica.clone());
        self.kept.insert(id, kept);
        self.keyrings.insert(id, keyring);
        self.replicas.insert(id, replica);
    }

    fn get(&self, id: u64) -> &Replica {
        &self.replicas[&NodeId(id)]
    }

    fn sealing_epoch(&self, id: u64) -> KeyEpoch {
        self.keyrings[&NodeId(id)].sealing_key().unwrap().0
    }

    fn kept(&self, id: u64) -> Vec<KeyEpoch> {
        self.kept[&NodeId(id)].epochs.lock().clone()
    }

    /// `secret` as epoch 1, sealed to `recipients`.
    fn rotation(&self, recipients: &[u64]) -> KeyRotation {
        let recipients: Vec<(NodeId, [u8; 32])> = recipients
            .iter()
            .map(|i| (NodeId(*i), self.identities[&NodeId(*i)].public().kem_public))
            .collect();
        KeyRotation::seal(VOLUME, KeyEpoch(1), &SECRET_1, &recipients).unwrap()
    }

    /// Waits until a live replica leads and returns it.
    async fn leader(&self) -> NodeId {
        common::leader(&self.replicas).await
    }
}

async fn committed_slot(replica: &Replica, id: net::replica::ProposalId) -> Slot {
    replica
        .wait_committed(id, WAIT)
        .await
        .unwrap()
        .expect("commits")
}

async fn wait_commit_end(replica: &Replica, end: Slot) {
    let mut commits = replica.commits();
    tokio::time::timeout(WAIT, commits.wait_for(|s| *s >= end))
        .await
        .expect("commits in time")
        .unwrap();
}

/// The ops `replica` reads from `from` up to `end` (stopping early where it waits),
/// and the slot it stopped at.
async fn read_ops(replica: &Replica, from: Slot, end: Slot) -> (Vec<Vec<u8>>, Slot) {
    let mut ops = Vec::new();
    let mut next = from;
    while next < end {
        let run = replica.read_committed(next, end.0 - next.0).await.unwrap();
        assert!(run.refused.is_empty(), "{:?}", run.refused);
        ops.extend(run.ops.into_iter().map(|op| op.op));
        if run.next == next {
            break;
        }
        next = run.next;
    }
    (ops, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_switches_sealing_at_its_slot_and_older_entries_still_open() {
    let group = Group::new();
    group.leader().await;
    let before = group.get(1).propose(b"before".to_vec()).await.unwrap();
    committed_slot(group.get(1), before).await;
    // Device 3 is the one being removed: no share.
    let rotation = group
        .get(1)
        .propose_rotation(&group.rotation(&[1, 2]))
        .await;
    let rotation_slot = committed_slot(group.get(1), rotation.unwrap()).await;
    // Device 2 has not read the rotation yet: it still seals under epoch 0, and its
    // entry commits after the rotation.
    assert_eq!(group.sealing_epoch(2), KeyEpoch(0));
    let late = group.get(2).propose(b"sealed under e0".to_vec()).await;
    let late_slot = committed_slot(group.get(2), late.unwrap()).await;
    assert!(late_slot > rotation_slot);
    for id in 1..=3 {
        wait_commit_end(group.get(id), late_slot.next()).await;
        // Up to the rotation: nothing changes.
        let (ops, _) = read_ops(group.get(id), Slot(0), rotation_slot).await;
        assert_eq!(ops, [b"before".to_vec()], "device {id}");
        assert_eq!(group.sealing_epoch(id), KeyEpoch(0), "device {id}");
        assert!(group.kept(id).is_empty(), "device {id}");
        // From the rotation on: devices with a share keep it first, then seal with it.
        let (ops, next) = read_ops(group.get(id), rotation_slot, late_slot.next()).await;
        assert_eq!(ops, [b"sealed under e0".to_vec()], "device {id}");
        assert_eq!(next, late_slot.next(), "device {id}");
        let expected = if id == 3 { KeyEpoch(0) } else { KeyEpoch(1) };
        assert_eq!(group.sealing_epoch(id), expected, "device {id}");
        let kept = if id == 3 { vec![] } else { vec![KeyEpoch(1)] };
        assert_eq!(group.kept(id), kept, "device {id}");
    }
    // Read again (a restart re-reads from its applied slot): learned once only.
    read_ops(group.get(1), Slot(0), late_slot.next()).await;
    assert_eq!(group.kept(1), [KeyEpoch(1)]);
    // New entries are sealed under epoch 1: devices 1 and 2 read them, device 3 stops
    // before (waits) rather than skip them.
    let new = group.get(2).propose(b"sealed under e1".to_vec()).await;
    let new_slot = committed_slot(group.get(2), new.unwrap()).await;
    for id in 1..=3 {
        wait_commit_end(group.get(id), new_slot.next()).await;
        let (ops, next) = read_ops(group.get(id), Slot(0), new_slot.next()).await;
        if id == 3 {
            assert_eq!(ops, [b"before".to_vec(), b"sealed under e0".to_vec()]);
            assert_eq!(
                next, new_slot,
                "the removed device stops before the e1 entry"
            );
        } else {
            assert_eq!(
                ops,
                [
                    b"before".to_vec(),
                    b"sealed under e0".to_vec(),
                    b"sealed under e1".to_vec()
                ],
                "device {id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_cannot_be_kept_is_not_read_past() {
    let group = Group::new();
    group.leader().await;
    let rotation = group
        .get(1)
        .propose_rotation(&group.rotation(&[1, 2, 3]))
        .await;
    let rotation_slot = committed_slot(group.get(1), rotation.unwrap()).await;
    let after = group.get(1).propose(b"after".to_vec()).await.unwrap();
    let after_slot = committed_slot(group.get(1), after).await;
    wait_commit_end(group.get(2), after_slot.next()).await;
    group.kept[&NodeId(2)].failing.store(true, Ordering::SeqCst);
    let (ops, next) = read_ops(group.get(2), Slot(0), after_slot.next()).await;
    assert!(
        ops.is_empty(),
        "nothing after the rotation is returned: {ops:?}"
    );
    assert_eq!(next, rotation_slot);
    assert_eq!(group.sealing_epoch(2), KeyEpoch(0));
    group.kept[&NodeId(2)]
        .failing
        .store(false, Ordering::SeqCst);
    let (ops, _) = read_ops(group.get(2), next, after_slot.next()).await;
    assert_eq!(ops, [b"after".to_vec()]);
    assert_eq!(group.sealing_epoch(2), KeyEpoch(1));
    assert_eq!(group.kept(2), [KeyEpoch(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_catching_up_from_a_checkpoint_learns_the_rotation_it_missed() {
    let mut group = Group::new();
    let leader = group.leader().await;
    let away = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    group.net.isolate(away);
    let rotation = group.replicas[&leader]
        .propose_rotation(&group.rotation(&[1, 2, 3]))
        .await;
    let rotation_slot = committed_slot(&group.replicas[&leader], rotation.unwrap()).await;
    let mut last = rotation_slot;
    for (id, replica) in &group.replicas {
        if *id != away {
            // Reading past the rotation: the checkpoint is sealed under epoch 1.
            read_ops(replica, Slot(0), rotation_slot.next()).await;
            assert_eq!(group.sealing_epoch(id.0), KeyEpoch(1));
        }
    }
    for n in 0..5u8 {
        let id = group.replicas[&leader].propose(vec![n]).await.unwrap();
        last = committed_slot(&group.replicas[&leader], id).await;
    }
    for (id, replica) in &group.replicas {
        if *id != away {
            wait_commit_end(replica, last.next()).await;
            replica.compact(last, b"checkpoint".to_vec()).await.unwrap();
        }
    }
    // The away device lost its disk too: it starts from nothing but epoch 0.
    group.net.detach(away);
    if let Some(old) = group.replicas.remove(&away) {
        old.kill().await;
    }
    group.start(away, "-fresh");
    let replica = group.replicas[&away].clone();
    group.net.reconnect(away);
    wait_commit_end(&replica, last.next()).await;
    assert!(matches!(
        replica.read_committed(Slot(0), 10).await,
        Err(Error::Truncated { .. })
    ));
    assert_eq!(group.sealing_epoch(away.0), KeyEpoch(0));
    let checkpoint = replica.snapshot().await.unwrap().unwrap();
    assert_eq!(checkpoint.state, b"checkpoint");
    assert_eq!(checkpoint.through, last);
    assert_eq!(group.kept(away.0), [KeyEpoch(1)]);
    assert_eq!(group.sealing_epoch(away.0), KeyEpoch(1));
}

#[test]
fn a_share_opens_only_for_its_device_and_the_removed_device_gets_none() {
    let devices: Vec<DeviceIdentity> = (0..3).map(|_| DeviceIdentity::generate()).collect();
    let recipients: Vec<(NodeId, [u8; 32])> = devices[..2]
        .iter()
        .enumerate()
        .map(|(i, d)| (NodeId(i as u64 + 1), d.public().kem_public))
        .collect();
    let rotation = KeyRotation::seal(VOLUME, KeyEpoch(4), &SECRET_1, &recipients).unwrap();
    let share_2 = rotation.share_for(NodeId(2)).unwrap();
    assert_eq!(
        *open_epoch_secret(&devices[1], VOLUME, NodeId(2), KeyEpoch(4), share_2).unwrap(),
        SECRET_1
    );
    // The removed device (node 3) has no share, and another's does not open for it.
    assert!(rotation.share_for(NodeId(3)).is_none());
    assert!(open_epoch_secret(&devices[2], VOLUME, NodeId(2), KeyEpoch(4), share_2).is_err());
    assert!(open_epoch_secret(&devices[2], VOLUME, NodeId(3), KeyEpoch(4), share_2).is_err());
    // Nor under another epoch or volume (the HPKE info binds them).
    assert!(open_epoch_secret(&devices[1], VOLUME, NodeId(2), KeyEpoch(5), share_2).is_err());
    assert!(open_epoch_secret(&devices[1], VolumeId(1), NodeId(2), KeyEpoch(4), share_2).is_err());
    // Its keyring learns nothing.
    let removed = VolumeKeyring::new(
        VOLUME,
        NodeId(3),
        &devices[2],
        [(KeyEpoch(0), Zeroizing::new(SECRET_0))],
        Box::new(|_, _| panic!("nothing to keep")),
        Box::new(|_| None),
    );
    assert!(!removed.learn(&rotation).unwrap());
    assert_eq!(removed.epochs(), [KeyEpoch(0)]);
}
