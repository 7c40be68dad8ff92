//! Three in-process replicas of one volume over the in-memory link, each with its own
//! SQLite acceptor store (synchronous=FULL, so every commit pays real fsyncs):
//!
//! - `replica/commit_throughput`: 3 × 100 single-op proposals submitted concurrently,
//!   one third at each replica, until all are committed (ops/s = elements/s);
//! - `replica/propose_to_commit`: one 64-byte op at a time, `propose` →
//!   `wait_committed`, at the leader and at a follower (forwarded), median per op.
//!
//! The stores live under `$KITH_BENCH_DIR` (default: the system temp dir), so a run can
//! be pointed at the disk a device would use. Compare with the same figures over QUIC.
//!
//! `cargo bench -p net --bench replica`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use net::entry::{EntryKey, KeyEpoch};
use net::replica::mem_link::MemNet;
use net::replica::{Replica, ReplicaOptions, StaticKeys, VolumeKeys};
use paxos::{Config, ConfigId, NodeId, NodeOptions, Role, VolumeId};

const VOLUME: VolumeId = VolumeId(0xbe_4c);
const OP_BYTES: usize = 64;
const OPS_PER_REPLICA: usize = 100;
const WAIT: Duration = Duration::from_secs(30);

fn signing(id: u64) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&id.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

struct Group {
    _dir: tempfile::TempDir,
    replicas: Vec<Replica>,
    leader: usize,
}

fn group(runtime: &tokio::runtime::Runtime) -> Group {
    let dir = match std::env::var_os("KITH_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let genesis = Config::majority(ConfigId(1), (1..=3).map(NodeId), [], []).unwrap();
    let keys: Arc<dyn VolumeKeys> = Arc::new(StaticKeys {
        epochs: [(KeyEpoch(1), EntryKey::derive(&[3; 32]))].into(),
        authors: (1..=3)
            .map(|i| (NodeId(i), signing(i).verifying_key()))
            .collect(),
    });
    let _guard = runtime.enter();
    let net = MemNet::new(runtime.handle().clone(), 1);
    let replicas: Vec<Replica> = (1..=3u64)
        .map(|i| {
            let options = ReplicaOptions {
                node: NodeOptions::new(NodeId(i), VOLUME),
                genesis: genesis.clone(),
                store_path: dir.path().join(format!("{i}.db")),
                signing_key: Some(signing(i)),
            };
            let replica = Replica::open(options, keys.clone(), net.link(NodeId(i))).unwrap();
            net.attach(replica.clone());
            replica
        })
        .collect();
    let leader = runtime.block_on(async {
        loop {
            for (i, r) in replicas.iter().enumerate() {
                if r.status().await.unwrap().role == Role::Leader {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Group {
        _dir: dir,
        replicas,
        leader,
    }
}

async fn propose_and_wait(replica: Replica, op: Vec<u8>) {
    let id = replica.propose(op).await.unwrap();
    let slot = replica.wait_committed(id, WAIT).await.unwrap();
    assert!(slot.is_some(), "not committed within {WAIT:?}");
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let g = group(&runtime);
    let op = vec![0x6b; OP_BYTES];

    let mut throughput = c.benchmark_group("replica");
    throughput.sample_size(10);
    throughput.throughput(Throughput::Elements((3 * OPS_PER_REPLICA) as u64));
    throughput.bench_function("commit_throughput", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut tasks = Vec::new();
                for replica in &g.replicas {
                    for _ in 0..OPS_PER_REPLICA {
                        tasks.push(tokio::spawn(propose_and_wait(replica.clone(), op.clone())));
                    }
                }
                for task in tasks {
                    task.await.unwrap();
                }
            });
        });
    });
    throughput.finish();

    let mut latency = c.benchmark_group("replica/propose_to_commit");
    latency.sample_size(50);
    latency.throughput(Throughput::Elements(1));
    let leader = g.replicas[g.leader].clone();
    let follower = g.replicas[(g.leader + 1) % 3].clone();
    latency.bench_function("at_leader", |b| {
        b.iter(|| runtime.block_on(propose_and_wait(leader.clone(), op.clone())));
    });
    latency.bench_function("at_follower", |b| {
        b.iter(|| runtime.block_on(propose_and_wait(follower.clone(), op.clone())));
    });
    latency.finish();

    runtime.block_on(async {
        for replica in &g.replicas {
            replica.close().await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
