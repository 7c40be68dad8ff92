//! Steady-state Paxos figures in simulation with zero network latency (one core,
//! in-memory stores, real `Node`s, messages delivered in waves):
//!
//! - `commit_throughput/burst_*`: committed operations per second when a leader gets
//!   bursts of proposals (batching + pipelining). Target: > 100,000/s.
//! - Round trips per commit in steady state, printed before the timing runs (a wave
//!   count, not a time: leader → acceptors is one wave, the replies another).
//!   Target: exactly 1.
//!
//! Run: `cargo bench -p paxos --bench paxos`.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::hint::black_box;

use cluster::Cluster;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use paxos::NodeId;

const OPS_PER_ITERATION: u64 = 10_000;

fn elected() -> Cluster {
    let mut cluster = match Cluster::new(3) {
        Ok(cluster) => cluster,
        Err(error) => panic!("cluster: {error}"),
    };
    if let Err(error) = cluster.elect(NodeId(1)) {
        panic!("election: {error}");
    }
    cluster
}

/// Proposes `ops` in bursts of `burst` at the leader, delivering until each burst is
/// committed at the leader. Returns the number of waves (message hops) used.
fn commit_in_bursts(cluster: &mut Cluster, ops: u64, burst: u64) -> usize {
    let Some(leader) = cluster.leader_index() else {
        panic!("no leader");
    };
    let mut waves = 0;
    let mut proposed = 0;
    while proposed < ops {
        let n = burst.min(ops - proposed);
        let target = cluster.committed_next[leader].0 + n;
        for i in 0..n {
            if let Err(error) = cluster.propose(leader, (proposed + i).to_le_bytes().to_vec()) {
                panic!("propose: {error}");
            }
        }
        proposed += n;
        while cluster.committed_next[leader].0 < target {
            match cluster.wave() {
                Ok(0) => panic!("stalled before commit"),
                Ok(_) => waves += 1,
                Err(error) => panic!("{error}"),
            }
        }
    }
    waves
}

/// Like [`commit_in_bursts`], but each burst is one `propose_many` call (one sync for
/// the burst's queue writes).
fn commit_in_bursts_many(cluster: &mut Cluster, ops: u64, burst: u64) -> usize {
    let Some(leader) = cluster.leader_index() else {
        panic!("no leader");
    };
    let mut waves = 0;
    let mut proposed = 0;
    while proposed < ops {
        let n = burst.min(ops - proposed);
        let target = cluster.committed_next[leader].0 + n;
        let payloads = (proposed..proposed + n)
            .map(|i| i.to_le_bytes().to_vec())
            .collect();
        if let Err(error) = cluster.propose_many(leader, payloads) {
            panic!("propose_many: {error}");
        }
        proposed += n;
        while cluster.committed_next[leader].0 < target {
            match cluster.wave() {
                Ok(0) => panic!("stalled before commit"),
                Ok(_) => waves += 1,
                Err(error) => panic!("{error}"),
            }
        }
    }
    waves
}

fn round_trips_per_commit() {
    let mut cluster = elected();
    // Warm up, then count single-proposal commits.
    commit_in_bursts(&mut cluster, 10, 1);
    let commits: u64 = 100;
    let before = cluster.stats;
    let waves = commit_in_bursts(&mut cluster, commits, 1);
    let batches = cluster.stats.accept_batches - before.accept_batches;
    let messages = cluster.stats.messages - before.messages;
    println!(
        "steady state, 3 voters: {:.2} round trips per commit ({waves} waves / 2 / {commits} commits), \
         {:.2} phase-2 batches per commit, {:.2} messages per commit",
        waves as f64 / 2.0 / commits as f64,
        batches as f64 / commits as f64,
        messages as f64 / commits as f64,
    );
    let mut cluster = elected();
    let before = cluster.stats;
    let busy_before = cluster.busy_ns.clone();
    let began = std::time::Instant::now();
    let waves = commit_in_bursts(&mut cluster, OPS_PER_ITERATION, 1024);
    let elapsed_s = began.elapsed().as_secs_f64();
    let batches = cluster.stats.accept_batches - before.accept_batches;
    println!(
        "bursts of 1024, 3 voters: {OPS_PER_ITERATION} commits in {} round trips, {batches} phase-2 batches \
         ({:.1} commits per batch)",
        waves / 2,
        OPS_PER_ITERATION as f64 / batches.max(1) as f64,
    );
    // Where one core's time goes: the leader alone vs. the whole simulated group.
    let busy_s: Vec<f64> = cluster
        .busy_ns
        .iter()
        .zip(&busy_before)
        .map(|(after, before)| (after - before) as f64 / 1e9)
        .collect();
    let leader_s = busy_s.first().copied().unwrap_or(f64::NAN);
    println!(
        "  one core, whole group: {:.0} commits/s; time per node {busy_s:.3?} s; \
         leader alone: {:.0} commits/s",
        OPS_PER_ITERATION as f64 / elapsed_s,
        OPS_PER_ITERATION as f64 / leader_s,
    );
}

fn throughput(c: &mut Criterion) {
    round_trips_per_commit();
    let mut group = c.benchmark_group("commit_throughput");
    group.throughput(Throughput::Elements(OPS_PER_ITERATION));
    group.sample_size(20);
    for burst in [1u64, 64, 1024] {
        group.bench_function(format!("burst_{burst}"), |b| {
            b.iter_batched(
                elected,
                |mut cluster| black_box(commit_in_bursts(&mut cluster, OPS_PER_ITERATION, burst)),
                BatchSize::LargeInput,
            );
        });
    }
    group.bench_function("burst_1024_propose_many", |b| {
        b.iter_batched(
            elected,
            |mut cluster| black_box(commit_in_bursts_many(&mut cluster, OPS_PER_ITERATION, 1024)),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
