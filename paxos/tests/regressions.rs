//! Focused reproductions of bugs the simulator found (each names its seed); they must
//! keep passing once fixed. See `/work/briefs/paxos-bugs.md`.

// Test code: a failed expectation is the test failing, with its message.
#![allow(clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;
use paxos::{Config, ConfigId, Effect, NodeId, Role, Timer};

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
    // As in seed 40: a voter is demoted to learner (config 2 = voters {1, 2}).
    cluster
        .reconfigure(majority(2, &[1, 2], &[3]))
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

/// Simulation seeds 34 and 272: a node that missed a commit won phase 1 while its
/// acceptors had committed further; it re-proposed the slot forever and never caught up.
#[test]
fn a_candidate_behind_its_acceptors_catches_up_and_the_group_makes_progress() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(1)).expect("election");
    cluster.propose(0, b"first".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");
    // n3 hears nothing while n1 and n2 commit two more commands.
    for payload in [b"second".to_vec(), b"third".to_vec()] {
        cluster.propose(0, payload).expect("propose");
        cluster.run_without(NodeId(3), 100).expect("quiet");
    }
    let leader_commit = cluster.nodes[0].commit_index();
    assert!(
        cluster.nodes[2].commit_index() < leader_commit,
        "n3 must lag for this test"
    );

    // n3 runs for election much later; whoever leads afterwards, the group must agree
    // and keep committing.
    cluster.now_ms += 60_000;
    cluster.fire(2, Timer::Election).expect("n3 election");
    cluster.run_until_quiet(1_000).expect("quiet");
    for _ in 0..5 {
        if cluster.leader_index().is_some() {
            break;
        }
        cluster.now_ms += 60_000;
        for node in 0..3 {
            cluster.fire(node, Timer::Election).expect("election");
        }
        cluster.run_until_quiet(1_000).expect("quiet");
    }
    let leader = cluster.leader_index().expect("a leader after the election");
    cluster.propose(leader, b"after".to_vec()).expect("propose");
    cluster.run_until_quiet(1_000).expect("quiet");
    // Heartbeats carry the decided index to followers; retries fetch what they miss.
    for _ in 0..3 {
        cluster.now_ms += 1_000;
        cluster.fire(leader, Timer::Heartbeat).expect("heartbeat");
        cluster.run_until_quiet(1_000).expect("quiet");
        for node in 0..3 {
            cluster.fire(node, Timer::Retry).expect("retry");
        }
        cluster.run_until_quiet(1_000).expect("quiet");
    }
    let commits: Vec<_> = cluster.nodes.iter().map(|n| n.commit_index()).collect();
    assert!(
        commits[leader] > leader_commit,
        "no progress after the election: {commits:?}"
    );
    assert!(
        commits.iter().all(|c| *c == commits[leader]),
        "replicas disagree on the commit index: {commits:?}"
    );
}

/// Simulation seed 17544 (linearizability): a follower's read request was still pending
/// at the leader when the follower crashed. After the restart the follower numbered its
/// next read from 1 again, the leader's late reply to the *old* request (an index from
/// before a write that completed in between) carried the same id, and the new read was
/// served without that write — a stale read. Read ids must never repeat, even across
/// restarts.
#[test]
fn a_reply_to_a_read_sent_before_a_crash_does_not_answer_a_read_after_it() {
    let genesis = majority(1, &[1, 2, 3], &[]);
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(1)).expect("election");
    cluster.propose(0, b"w1".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");

    // n2 asks the leader for a read index; the leader starts a confirmation round but
    // its heartbeats are lost, so the old read stays pending at the leader.
    let old_read = cluster.read(1).expect("read");
    cluster.wave().expect("request reaches the leader");
    cluster.drop_in_flight_to(NodeId(2));
    cluster.drop_in_flight_to(NodeId(3));
    assert_eq!(cluster.in_flight(), 0);

    // n2 crashes and restarts; meanwhile a write completes at the leader.
    let effects = cluster.restart(1, genesis).expect("restart");
    cluster.run_effects(1, effects).expect("start");
    cluster.propose(0, b"w2".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");
    let after_write = cluster.nodes[0].commit_index();
    assert!(
        cluster.nodes[1].leader() == Some(NodeId(1)),
        "n2 must know the leader again for this test"
    );

    // A read started after the write completed must observe it, whatever replies to
    // earlier requests are still around.
    let new_read = cluster.read(1).expect("read");
    assert_ne!(new_read, old_read, "a restarted node reused a read id");
    cluster.run_until_quiet(100).expect("quiet");
    for _ in 0..3 {
        cluster.now_ms += 1_000;
        cluster.fire(0, Timer::Heartbeat).expect("heartbeat");
        cluster.run_until_quiet(100).expect("quiet");
    }
    let served: Vec<_> = cluster
        .reads_ready
        .iter()
        .filter(|(node, id, _)| *node == NodeId(2) && *id == new_read)
        .collect();
    assert_eq!(served.len(), 1, "the new read is served once: {served:?}");
    assert!(
        served[0].2 >= after_write,
        "read started after the write committed below {after_write} was served at {}",
        served[0].2
    );
}

/// Note N1 in `/work/briefs/paxos-bugs.md` (old simulator seeds 100121, 100265, 104690):
/// a voter removed by a reconfiguration while it was cut off never learned it: the
/// members ignored its fetches (it is not a member), so it kept leading or campaigning
/// in a configuration that was over. Members now serve it the log up to the stop entry
/// that removed it (and nothing after).
#[test]
fn a_voter_removed_while_cut_off_learns_it_was_removed() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.elect(NodeId(3)).expect("election");
    cluster.propose(2, b"before".to_vec()).expect("propose");
    cluster.run_until_quiet(100).expect("quiet");

    // n3 is cut off; n1 takes over and removes it.
    cluster.now_ms += 60_000;
    cluster.fire(0, Timer::Election).expect("n1 election");
    cluster.run_without(NodeId(3), 1_000).expect("quiet");
    assert!(cluster.nodes[0].is_leader(), "n1 leads without n3");
    let next = majority(2, &[1, 2], &[]);
    let effects = cluster.nodes[0]
        .reconfigure(cluster.now_ms, next.clone())
        .expect("reconfigure");
    cluster.run_effects(0, effects).expect("effects");
    cluster.run_without(NodeId(3), 1_000).expect("quiet");
    // n1 campaigns in configuration 2 at once; n2 was still in configuration 1 when its
    // prepare arrived, so the retry's prepare completes phase 1.
    cluster.now_ms += 1_000;
    cluster.fire(0, Timer::Retry).expect("n1 retry");
    cluster.run_without(NodeId(3), 1_000).expect("quiet");
    assert!(cluster.nodes[0].is_leader(), "n1 leads configuration 2");
    assert_eq!(cluster.nodes[0].config().id, ConfigId(2));
    let stop_next = cluster.nodes[0].config_start();
    assert_eq!(cluster.nodes[2].config().id, ConfigId(1), "n3 missed it");

    // The partition heals; whatever n3 sends (heartbeats as the old leader, prepares
    // after stepping down) is answered from configuration 2, and it catches up.
    for _ in 0..4 {
        cluster.now_ms += 1_000;
        for timer in [Timer::Heartbeat, Timer::Election, Timer::Retry] {
            cluster.fire(2, timer).expect("n3 timer");
            cluster.run_until_quiet(1_000).expect("quiet");
        }
    }
    let n3 = &cluster.nodes[2];
    assert_eq!(
        n3.config(),
        &next,
        "n3 learned the configuration without it"
    );
    assert_eq!(n3.role(), Role::Learner);
    assert!(!n3.is_leader());
    assert_eq!(
        n3.commit_index(),
        stop_next,
        "n3 got the log through the stop entry and nothing after it"
    );
    // And the group is unaffected: n1 still leads configuration 2 and commits.
    assert!(cluster.nodes[0].is_leader());
    cluster.propose(0, b"after".to_vec()).expect("propose");
    cluster.run_until_quiet(1_000).expect("quiet");
    assert!(cluster.nodes[0].commit_index() > stop_next);
    assert_eq!(cluster.nodes[2].commit_index(), stop_next);
}
