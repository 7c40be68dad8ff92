//! Steady-state behaviour of a healthy group, driven without faults or latency
//! (`support/cluster.rs`): a commit costs exactly one round trip
//! (leader → acceptors → leader), and a burst of proposals is batched and pipelined.

// Test code: a failed expectation is the test failing, with its message.
#![allow(clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;
use paxos::NodeId;

/// An elected 3-voter cluster that has already committed a few commands.
fn warmed_up() -> Cluster {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(1)).expect("election");
    for n in 0..3u8 {
        cluster.propose(0, vec![n]).expect("propose");
        cluster.run_until_quiet(100).expect("quiet");
    }
    cluster
}

/// Waves until the leader has committed through `slot_next`.
fn waves_until_leader_commits(cluster: &mut Cluster, leader: usize, slot_next: u64) -> usize {
    let mut waves = 0;
    while cluster.committed_next[leader].0 < slot_next {
        assert!(cluster.in_flight() > 0, "stalled after {waves} waves");
        cluster.wave().expect("wave");
        waves += 1;
        assert!(waves <= 20, "no commit after 20 waves");
    }
    waves
}

#[test]
fn one_commit_costs_one_round_trip() {
    let mut cluster = warmed_up();
    let leader = cluster.leader_index().expect("a leader");
    for round in 0..5u8 {
        let target = cluster.committed_next[leader].0 + 1;
        let batches_before = cluster.stats.accept_batches;
        cluster.propose(leader, vec![round; 16]).expect("propose");
        let waves = waves_until_leader_commits(&mut cluster, leader, target);
        assert_eq!(
            waves, 2,
            "leader → acceptors → leader is two waves, one round trip"
        );
        assert_eq!(
            cluster.stats.accept_batches - batches_before,
            1,
            "one phase-2 batch per commit"
        );
        cluster.run_until_quiet(100).expect("quiet");
    }
}

#[test]
fn a_burst_is_batched_and_pipelined() {
    let mut cluster = warmed_up();
    let leader = cluster.leader_index().expect("a leader");
    let burst: u64 = 1000;
    let target = cluster.committed_next[leader].0 + burst;
    let before = cluster.stats;
    for n in 0..burst {
        cluster
            .propose(leader, n.to_le_bytes().to_vec())
            .expect("propose");
    }
    // The first proposals leave at once, one batch each, until the window of batches in
    // flight is full; everything arriving meanwhile goes out in full batches when the
    // first answers come back. So the burst takes at most two round trips.
    let waves = waves_until_leader_commits(&mut cluster, leader, target);
    assert!(
        waves <= 4,
        "{waves} waves (> 2 round trips) for a burst of {burst}"
    );
    let batches = cluster.stats.accept_batches - before.accept_batches;
    let batch_max = paxos::limits::BATCH_ENTRIES_MAX as u64;
    let batches_max = paxos::limits::BATCHES_IN_FLIGHT_MAX as u64 + burst.div_ceil(batch_max);
    assert!(
        batches <= batches_max,
        "{batches} phase-2 batches for {burst} proposals (at most {batches_max})"
    );
}

#[test]
fn propose_many_syncs_once_per_burst_not_per_proposal() {
    let mut cluster = warmed_up();
    let leader = cluster.leader_index().expect("a leader");
    let burst: u64 = 1000;
    let target = cluster.committed_next[leader].0 + burst;
    let before = cluster.stats;
    let payloads = (0..burst).map(|n| n.to_le_bytes().to_vec()).collect();
    cluster
        .propose_many(leader, payloads)
        .expect("propose_many");
    let waves = waves_until_leader_commits(&mut cluster, leader, target);
    assert!(waves <= 4, "{waves} waves for a burst of {burst}");
    let syncs = cluster.stats.syncs - before.syncs;
    let batches = cluster.stats.accept_batches - before.accept_batches;
    // Every node syncs about once per batch it accepts or commits, not once per proposal.
    assert!(
        syncs < burst / 10,
        "{syncs} syncs (all nodes) for {burst} proposals in {batches} batches"
    );
}
