//! Focused reproductions of bugs the simulator found (each names its seed); they must
//! keep passing once fixed. See `/work/briefs/paxos-bugs.md`.

// Test code: a failed expectation is the test failing, with its message.
#![allow(clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;
use paxos::{Config, ConfigId, Effect, NodeId, Timer};

fn majority(id: u64, voters: &[u64], learners: &[u64]) -> Config {
    Config::majority(
        ConfigId(id),
        voters.iter().copied().map(NodeId),
        [],
        learners.iter().copied().map(NodeId),
    )
    .expect("valid configuration")
}

/// Simulation seed 40: after a reconfiguration, a voter restarted from its store never
/// armed its election timer, so once the leader died nobody ever ran for election.
#[test]
fn restarted_voter_arms_its_election_timer_after_a_reconfiguration() {
    let genesis = majority(1, &[1, 2, 3], &[]);
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(1)).expect("election");
    cluster.propose(0, b"before".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");
    cluster
        .reconfigure(majority(2, &[1, 2, 3], &[4]))
        .expect("reconfiguration");
    assert_eq!(
        cluster.nodes[1].config().id,
        ConfigId(2),
        "follower learned the new configuration"
    );

    let effects = cluster.restart(1, genesis).expect("restart");
    assert_eq!(
        cluster.nodes[1].config().id,
        ConfigId(2),
        "recovered into the new configuration"
    );
    let arms_election = effects.iter().any(|effect| {
        matches!(
            effect,
            Effect::SetTimer {
                timer: Timer::Election,
                ..
            }
        )
    });
    assert!(
        arms_election,
        "a restarted voter must arm its election timer; start() emitted {effects:?}"
    );
}

/// Control: the same restart without a reconfiguration arms the timer.
#[test]
fn restarted_voter_arms_its_election_timer() {
    let genesis = majority(1, &[1, 2, 3], &[]);
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(1)).expect("election");
    cluster.propose(0, b"before".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");
    let effects = cluster.restart(1, genesis).expect("restart");
    assert!(effects.iter().any(|effect| matches!(
        effect,
        Effect::SetTimer {
            timer: Timer::Election,
            ..
        }
    )));
}
