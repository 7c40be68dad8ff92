//! Unit tests of the core: exact effects for hand-driven inputs, then small clusters
//! driven to quiescence by an in-test loop (no faults; the simulator does faults).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::ids::ConfigId;
use crate::store::{AcceptorStore, MemStore};

const VOLUME: VolumeId = VolumeId(42);

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn config3() -> Config {
    Config::majority(ConfigId(1), [n(1), n(2), n(3)], [], []).unwrap()
}

fn opts(id: u64) -> NodeOptions {
    NodeOptions::new(n(id), VOLUME)
}

fn env(config: ConfigId, ballot: Ballot, body: Body) -> Envelope {
    Envelope {
        volume: VOLUME,
        config,
        ballot,
        body,
    }
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot {
        epoch: ConfigId(1),
        round,
        node: n(node),
    }
}

fn sends(fx: &[Effect]) -> Vec<(NodeId, Envelope)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn cmd(proposer: u64, seq: u64, payload: &[u8]) -> Command {
    Command {
        proposer: n(proposer),
        seq,
        payload: payload.to_vec(),
    }
}

/// Every `Send` comes after every `Persist` that precedes it in the list — trivially
/// true of a list; what we check is that no message revealing a promise/accept is
/// emitted before the write recording it.
fn assert_persist_before_send(fx: &[Effect], ballot: Ballot) {
    let first_send = fx.iter().position(|e| {
        matches!(e, Effect::Send { msg, .. } if msg.ballot == ballot
            && matches!(msg.body, Body::Promise { .. } | Body::Accepted { .. } | Body::Accept { .. }))
    });
    let last_persist = fx.iter().rposition(|e| {
        matches!(
            e,
            Effect::Persist(DurableWrite::Promise { .. } | DurableWrite::Accept { .. })
        )
    });
    if let (Some(send), Some(persist)) = (first_send, last_persist) {
        assert!(persist < send, "persist must precede send: {fx:#?}");
    }
}

/// Elects node 1 of a fresh 3-node cluster by hand; returns the nodes.
fn elected() -> (Node, Node, Node) {
    let mut n1 = Node::new(opts(1), config3());
    let mut n2 = Node::new(opts(2), config3());
    let mut n3 = Node::new(opts(3), config3());
    n1.start(0);
    n2.start(0);
    n3.start(0);
    let fx = n1.handle_timeout(10_000, Timer::Election);
    let b = ballot(1, 1);
    let prepare = sends(&fx)[0].1.clone();
    let fx = n2.handle_message(10_000, n(1), prepare);
    let promise = sends(&fx)[0].1.clone();
    let fx = n1.handle_message(10_001, n(2), promise);
    assert!(n1.is_leader());
    assert_eq!(n1.leader_ballot(), Some(b));
    // The leadership's no-op at slot 0, accepted by n2, commits at n1.
    let noop = sends(&fx)[0].clone();
    assert_eq!(noop.0, n(2));
    let fx = n2.handle_message(10_002, n(1), noop.1);
    let accepted = sends(&fx)[0].1.clone();
    n1.handle_message(10_003, n(2), accepted);
    assert_eq!(n1.commit_index(), Slot(1));
    (n1, n2, n3)
}

#[test]
fn start_arms_only_the_election_timer() {
    let mut node = Node::new(opts(1), config3());
    let fx = node.start(0);
    assert_eq!(fx.len(), 1);
    assert!(matches!(fx[0], Effect::SetTimer { timer: Timer::Election, at_ms } if at_ms >= 1000));
}

#[test]
fn election_timeout_persists_promise_then_sends_prepares() {
    let mut n1 = Node::new(opts(1), config3());
    n1.start(0);
    // A stale (early) firing is ignored.
    assert!(n1.handle_timeout(10, Timer::Election).is_empty());
    let fx = n1.handle_timeout(10_000, Timer::Election);
    let b = ballot(1, 1);
    let timeout = n1.election_timeout_ms();
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Promise { ballot: b }),
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(1), b, Body::Prepare { first: Slot(0) }),
            },
            Effect::Send {
                to: n(3),
                msg: env(ConfigId(1), b, Body::Prepare { first: Slot(0) }),
            },
            Effect::SetTimer {
                timer: Timer::Election,
                at_ms: 10_000 + timeout,
            },
            Effect::SetTimer {
                timer: Timer::Retry,
                at_ms: 10_300,
            },
        ]
    );
    assert_eq!(n1.role(), Role::Candidate);
}

#[test]
fn acceptor_persists_promise_before_replying() {
    let mut n2 = Node::new(opts(2), config3());
    n2.start(0);
    let b = ballot(1, 1);
    let fx = n2.handle_message(
        5,
        n(1),
        env(ConfigId(1), b, Body::Prepare { first: Slot(0) }),
    );
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Promise { ballot: b }),
            Effect::Send {
                to: n(1),
                msg: env(
                    ConfigId(1),
                    b,
                    Body::Promise {
                        first: Slot(0),
                        committed: Slot(0),
                        accepted: vec![],
                    }
                ),
            },
        ]
    );
    // A duplicate prepare is answered again without a second write.
    let fx = n2.handle_message(
        6,
        n(1),
        env(ConfigId(1), b, Body::Prepare { first: Slot(0) }),
    );
    assert_eq!(sends(&fx).len(), 1);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Persist(_))));
}

#[test]
fn promise_quorum_makes_a_leader_that_heartbeats() {
    let mut n1 = Node::new(opts(1), config3());
    n1.start(0);
    n1.handle_timeout(10_000, Timer::Election);
    let b = ballot(1, 1);
    let promise = env(
        ConfigId(1),
        b,
        Body::Promise {
            first: Slot(0),
            committed: Slot(0),
            accepted: vec![],
        },
    );
    let fx = n1.handle_message(10_001, n(2), promise);
    let heartbeat = Body::Heartbeat {
        decided: Slot(0),
        head: ChainHash::genesis(VOLUME),
        round: 1,
        ranking: vec![n(1), n(2), n(3)],
    };
    let noop = Body::Accept {
        first: Slot(0),
        entries: vec![Entry::Noop],
        decided: Slot(0),
    };
    assert_eq!(
        fx,
        vec![
            Effect::LeaderChanged { leader: Some(n(1)) },
            Effect::Persist(DurableWrite::Accept {
                ballot: b,
                first: Slot(0),
                entries: vec![Entry::Noop],
            }),
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(1), b, noop.clone()),
            },
            Effect::Send {
                to: n(3),
                msg: env(ConfigId(1), b, noop),
            },
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(1), b, heartbeat.clone()),
            },
            Effect::Send {
                to: n(3),
                msg: env(ConfigId(1), b, heartbeat),
            },
            Effect::SetTimer {
                timer: Timer::Heartbeat,
                at_ms: 10_201,
            },
        ]
    );
    assert!(n1.is_leader());
}

#[test]
fn steady_state_commit_takes_one_round_trip() {
    let (mut n1, mut n2, _n3) = elected();
    let b = ballot(1, 1);
    let (seq, fx) = n1.propose(20_000, b"x".to_vec()).unwrap();
    assert_eq!(seq, 1);
    let c = cmd(1, 1, b"x");
    let accept = Body::Accept {
        first: Slot(1),
        entries: vec![Entry::Command(c.clone())],
        decided: Slot(1),
    };
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Enqueue { command: c.clone() }),
            Effect::Persist(DurableWrite::Accept {
                ballot: b,
                first: Slot(1),
                entries: vec![Entry::Command(c.clone())],
            }),
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(1), b, accept.clone()),
            },
            Effect::Send {
                to: n(3),
                msg: env(ConfigId(1), b, accept.clone()),
            },
        ]
    );
    // Acceptor: persist the batch, then acknowledge it; then commit the no-op that the
    // piggybacked `decided` reports chosen.
    let fx = n2.handle_message(20_001, n(1), env(ConfigId(1), b, accept));
    assert_persist_before_send(&fx, b);
    let accepted = env(
        ConfigId(1),
        b,
        Body::Accepted {
            first: Slot(1),
            count: 1,
        },
    );
    let noop_chain = ChainHash::genesis(VOLUME).extend(Slot(0), &Entry::Noop);
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Accept {
                ballot: b,
                first: Slot(1),
                entries: vec![Entry::Command(c.clone())],
            }),
            Effect::Send {
                to: n(1),
                msg: accepted.clone(),
            },
            Effect::Persist(DurableWrite::Commit {
                first: Slot(0),
                entries: vec![Entry::Noop],
                head: noop_chain,
            }),
            Effect::Commit {
                slot: Slot(0),
                entry: Entry::Noop,
                chain: noop_chain,
                apply: false,
            },
        ]
    );
    // Leader: one reply completes a quorum of two: committed, no further message.
    let fx = n1.handle_message(20_002, n(2), accepted);
    let chain = noop_chain.extend(Slot(1), &Entry::Command(c.clone()));
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Commit {
                first: Slot(1),
                entries: vec![Entry::Command(c.clone())],
                head: chain,
            }),
            Effect::Commit {
                slot: Slot(1),
                entry: Entry::Command(c),
                chain,
                apply: true,
            },
            Effect::Persist(DurableWrite::Dequeue { through_seq: 1 }),
        ]
    );
    assert_eq!(n1.commit_index(), Slot(2));
    // The follower learns the commit from the next heartbeat's piggyback.
    let fx = n1.handle_timeout(20_201, Timer::Heartbeat);
    let (to, hb) = sends(&fx)[0].clone();
    assert_eq!(to, n(2));
    let fx = n2.handle_message(20_202, n(1), hb);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Commit {
            slot: Slot(1),
            apply: true,
            ..
        }
    )));
    assert_eq!(n2.commit_index(), Slot(2));
}

#[test]
fn stale_ballot_is_rejected_and_not_accepted() {
    let (mut n1, mut n2, _) = elected();
    let stale = ballot(0, 3);
    let body = Body::Accept {
        first: Slot(1),
        entries: vec![Entry::Noop],
        decided: Slot(0),
    };
    let fx = n2.handle_message(1, n(3), env(ConfigId(1), stale, body));
    assert_eq!(
        fx,
        vec![Effect::Send {
            to: n(3),
            msg: env(
                ConfigId(1),
                stale,
                Body::Reject {
                    promised: ballot(1, 1),
                    committed: Slot(0),
                }
            ),
        }]
    );
    assert!(n2.accepted(Slot(1)).is_none());
    assert_eq!(n2.accepted(Slot(0)).map(|(b, _)| *b), Some(ballot(1, 1)));
    // A higher ballot deposes the leader.
    let higher = ballot(2, 3);
    let fx = n1.handle_message(
        2,
        n(3),
        env(ConfigId(1), higher, Body::Prepare { first: Slot(0) }),
    );
    assert!(!n1.is_leader());
    assert!(fx.contains(&Effect::Persist(DurableWrite::Promise { ballot: higher })));
    assert!(fx.contains(&Effect::LeaderChanged { leader: None }));
}

#[test]
fn wrong_volume_non_voter_and_forged_ballots_are_ignored() {
    let (_, mut n2, _) = elected();
    let b = ballot(5, 1);
    let mut msg = env(ConfigId(1), b, Body::Prepare { first: Slot(0) });
    msg.volume = VolumeId(7);
    assert!(n2.handle_message(1, n(1), msg).is_empty());
    // From a non-member.
    let forged = Ballot { node: n(9), ..b };
    assert!(
        n2.handle_message(
            1,
            n(9),
            env(ConfigId(1), forged, Body::Prepare { first: Slot(0) })
        )
        .is_empty()
    );
    // Ballot claiming another node than the sender.
    assert!(
        n2.handle_message(
            1,
            n(3),
            env(ConfigId(1), b, Body::Prepare { first: Slot(0) })
        )
        .is_empty()
    );
    // Wrong epoch for the configuration.
    let wrong_epoch = Ballot {
        epoch: ConfigId(9),
        ..b
    };
    assert!(
        n2.handle_message(
            1,
            n(1),
            env(ConfigId(1), wrong_epoch, Body::Prepare { first: Slot(0) })
        )
        .is_empty()
    );
    assert_eq!(n2.promised(), ballot(1, 1));
}

#[test]
fn garbage_bytes_are_dropped() {
    let (_, mut n2, _) = elected();
    let before = n2.clone();
    assert!(n2.handle_bytes(1, n(1), &[1, 2, 3]).is_empty());
    assert!(n2.handle_bytes(1, n(1), &[]).is_empty());
    assert_eq!(n2, before);
}

// ---------------------------------------------------------------------------------
// A small fault-free driver for multi-step scenarios.

/// Nodes, their stores, and messages in flight. Effects execute in order; a `Persist`
/// is synced before anything after it (the driver contract).
struct Net {
    nodes: BTreeMap<NodeId, Node>,
    stores: BTreeMap<NodeId, MemStore>,
    genesis: Config,
    in_flight: VecDeque<(NodeId, NodeId, Envelope)>,
    timers: BTreeMap<(NodeId, Timer), u64>,
    commits: BTreeMap<NodeId, Vec<(Slot, Entry, bool)>>,
    ready_reads: BTreeMap<NodeId, Vec<(ReadId, Slot)>>,
    down: BTreeSet<NodeId>,
    now: u64,
    messages: u64,
}

impl Net {
    fn new(genesis: Config, extra: &[u64]) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            genesis: genesis.clone(),
            in_flight: VecDeque::new(),
            timers: BTreeMap::new(),
            commits: BTreeMap::new(),
            ready_reads: BTreeMap::new(),
            down: BTreeSet::new(),
            now: 0,
            messages: 0,
        };
        let ids: BTreeSet<NodeId> = genesis
            .voters
            .iter()
            .chain(genesis.learners.iter())
            .copied()
            .chain(extra.iter().map(|e| n(*e)))
            .collect();
        for id in ids {
            let mut node = Node::new(NodeOptions::new(id, VOLUME), genesis.clone());
            let fx = node.start(0);
            net.nodes.insert(id, node);
            net.stores.insert(id, MemStore::new());
            net.run_effects(id, fx);
        }
        net
    }

    fn run_effects(&mut self, id: NodeId, fx: Vec<Effect>) {
        for effect in fx {
            match effect {
                Effect::Persist(w) => {
                    let store = self.stores.get_mut(&id).unwrap();
                    store.persist(&w).unwrap();
                }
                Effect::Send { to, msg } => {
                    // Every message survives the codec.
                    let bytes = crate::codec::encode(&msg);
                    assert_eq!(crate::codec::decode(&bytes).unwrap(), msg);
                    self.in_flight.push_back((id, to, msg));
                }
                Effect::Commit {
                    slot, entry, apply, ..
                } => {
                    let log = self.commits.entry(id).or_default();
                    if let Some((last, _, _)) = log.last() {
                        assert_eq!(last.next(), slot, "commits in order at {id}");
                    }
                    log.push((slot, entry, apply));
                }
                Effect::InstallSnapshot(s) => {
                    // The state machine now stands at `s.slot`.
                    let log = self.commits.entry(id).or_default();
                    log.retain(|(slot, _, _)| *slot < s.slot);
                    log.push((s.slot, Entry::Noop, false));
                }
                Effect::SetTimer { timer, at_ms } => {
                    self.timers.insert((id, timer), at_ms);
                }
                Effect::ReadReady { id: read, slot } => {
                    self.ready_reads.entry(id).or_default().push((read, slot));
                }
                _ => {}
            }
        }
    }

    /// Delivers messages until none are left (bounded).
    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, msg)) = self.in_flight.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if self.down.contains(&to) || self.down.contains(&from) {
                continue;
            }
            self.messages += 1;
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            let fx = node.handle_message(self.now, from, msg);
            self.run_effects(to, fx);
        }
    }

    /// Advances time by `ms`, firing due timers in deadline order and delivering.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            self.deliver_all();
            let due = self
                .timers
                .iter()
                .filter(|((id, _), at)| **at <= end && !self.down.contains(id))
                .min_by_key(|(_, at)| **at)
                .map(|(k, at)| (*k, *at));
            let Some(((id, timer), at)) = due else {
                break;
            };
            self.timers.remove(&(id, timer));
            self.now = self.now.max(at);
            let fx = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .handle_timeout(self.now, timer);
            self.run_effects(id, fx);
        }
        self.now = end;
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|node| node.is_leader() && !self.down.contains(&node.id()))
            .map(Node::id)
    }

    fn propose(&mut self, id: u64, payload: &[u8]) -> u64 {
        let (seq, fx) = self
            .nodes
            .get_mut(&n(id))
            .unwrap()
            .propose(self.now, payload.to_vec())
            .unwrap();
        self.run_effects(n(id), fx);
        self.deliver_all();
        seq
    }

    fn applied_payloads(&self, id: u64) -> Vec<Vec<u8>> {
        self.commits
            .get(&n(id))
            .map(|log| {
                log.iter()
                    .filter_map(|(_, e, apply)| match e {
                        Entry::Command(c) if *apply => Some(c.payload.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn crash_and_restart(&mut self, id: u64) {
        let store = self.stores.get_mut(&n(id)).unwrap();
        store.crash(0);
        let state = store.load().unwrap();
        let mut node =
            Node::recover(NodeOptions::new(n(id), VOLUME), self.genesis.clone(), state).unwrap();
        self.timers.retain(|(node, _), _| *node != n(id));
        self.commits.remove(&n(id));
        let fx = node.start(self.now);
        self.nodes.insert(n(id), node);
        self.run_effects(n(id), fx);
    }
}

#[test]
fn cluster_elects_one_leader_and_all_apply_the_same_sequence() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    assert_eq!(net.nodes.values().filter(|n| n.is_leader()).count(), 1);
    for i in 0..20u8 {
        net.propose(1 + u64::from(i % 3), &[i]);
    }
    net.advance(1_000);
    let reference = net.applied_payloads(leader.0);
    assert_eq!(reference.len(), 20);
    for id in 1..=3 {
        assert_eq!(net.applied_payloads(id), reference, "node {id}");
    }
    // Each proposer's commands are applied in its own order.
    for proposer in 1..=3u8 {
        let mine: Vec<u8> = reference
            .iter()
            .map(|p| p[0])
            .filter(|b| b % 3 == proposer - 1)
            .collect();
        let mut sorted = mine.clone();
        sorted.sort_unstable();
        assert_eq!(mine, sorted);
    }
}

#[test]
fn preferred_voter_by_rtt_wins_the_first_election() {
    let mut net = Net::new(config3(), &[]);
    // Nodes 2 and 3 are close to each other, node 1 is far from both. With majority
    // quorums of three a leader needs one other voter, so 2 and 3 tie (ids break it).
    let rtts = [(1, 2, 100), (1, 3, 50), (2, 3, 10)];
    for (a, b, rtt) in rtts {
        net.nodes.get_mut(&n(a)).unwrap().report_rtt(0, n(b), rtt);
        net.nodes.get_mut(&n(b)).unwrap().report_rtt(0, n(a), rtt);
    }
    net.advance(3_000);
    let leader = net.leader().unwrap();
    // With no ranking yet, node order decides the first election; the leader then
    // publishes a ranking by quorum RTT in which node 2 comes first.
    assert_eq!(leader, n(1));
    assert_eq!(net.nodes[&leader].ranking, vec![n(2), n(3), n(1)]);
    // Not before the hysteresis period…
    net.advance(30_000);
    assert_eq!(net.leader(), Some(n(1)));
    // …but after it, leadership moves to node 2, and stays.
    net.advance(40_000);
    assert_eq!(net.leader(), Some(n(2)));
    net.advance(70_000);
    assert_eq!(net.leader(), Some(n(2)), "no flapping");
}

#[test]
fn leader_crash_elects_another_and_keeps_committed_entries() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let first = net.leader().unwrap();
    net.propose(first.0, b"a");
    net.advance(500);
    net.down.insert(first);
    net.advance(5_000);
    let second = net.leader().unwrap();
    assert_ne!(first, second);
    net.propose(second.0, b"b");
    net.advance(500);
    net.down.remove(&first);
    net.crash_and_restart(first.0);
    net.advance(3_000);
    for id in 1..=3 {
        assert_eq!(
            net.applied_payloads(id),
            vec![b"a".to_vec(), b"b".to_vec()],
            "node {id}"
        );
    }
}

#[test]
fn witness_and_one_device_keep_committing() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [n(3)], []).unwrap();
    for off in [1, 2] {
        let mut net = Net::new(genesis.clone(), &[]);
        net.down.insert(n(off));
        net.advance(10_000);
        let on = 3 - off;
        assert_eq!(
            net.leader(),
            Some(n(on)),
            "device {on} leads with the witness"
        );
        net.propose(on, b"w");
        net.advance(500);
        assert_eq!(net.applied_payloads(on), vec![b"w".to_vec()]);
        // The witness never leads and refuses to propose.
        let witness = net.nodes.get_mut(&n(3)).unwrap();
        assert!(!witness.is_leader());
        assert!(witness.propose(0, vec![1]).is_err());
    }
}

#[test]
fn reconfiguration_adds_a_voter_and_removes_one() {
    let mut net = Net::new(config3(), &[4]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    net.propose(leader.0, b"before");
    let next = Config::majority(ConfigId(2), [n(1), n(2), n(4)], [], [n(3)]).unwrap();
    let fx = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .reconfigure(net.now, next.clone())
        .unwrap();
    net.run_effects(leader, fx);
    net.advance(5_000);
    for id in 1..=4 {
        let node = &net.nodes[&n(id)];
        assert_eq!(node.config().id, ConfigId(2), "node {id}");
        assert_eq!(node.config().voters, next.voters);
    }
    let leader = net.leader().expect("leader of the new configuration");
    assert!(next.can_lead(leader));
    net.propose(4, b"after");
    net.propose(3, b"learner");
    net.advance(3_000);
    let expected = vec![b"before".to_vec(), b"after".to_vec(), b"learner".to_vec()];
    for id in 1..=4 {
        assert_eq!(net.applied_payloads(id), expected, "node {id}");
    }
    // The removed voter (now a learner) no longer counts: 1 and 2 down stops commits.
    assert!(!net.nodes[&n(3)].config().is_voter(n(3)));
}

#[test]
fn stale_configuration_messages_are_not_accepted() {
    let mut net = Net::new(config3(), &[4]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    let next = Config::majority(ConfigId(2), [n(1), n(2), n(4)], [], []).unwrap();
    let fx = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .reconfigure(net.now, next)
        .unwrap();
    net.run_effects(leader, fx);
    net.advance(5_000);
    // Node 3 (removed) tries to lead config 1 at a slot now governed by config 2.
    let old = Ballot {
        epoch: ConfigId(1),
        round: 99,
        node: n(3),
    };
    let accept = Body::Accept {
        first: Slot(5),
        entries: vec![Entry::Noop],
        decided: Slot(0),
    };
    let n1 = net.nodes.get_mut(&n(1)).unwrap();
    let fx = n1.handle_message(net.now, n(3), env(ConfigId(1), old, accept));
    assert!(n1.accepted(Slot(5)).is_none());
    assert!(!fx.iter().any(|e| matches!(e, Effect::Persist(_))));
}

#[test]
fn read_index_confirms_with_a_quorum_round() {
    let (mut n1, mut n2, _) = elected();
    let (id, fx) = n1.read(30_000).unwrap();
    // A heartbeat round goes out; no ReadReady before a quorum confirms.
    assert!(!fx.iter().any(|e| matches!(e, Effect::ReadReady { .. })));
    let (_, hb) = sends(&fx)[0].clone();
    let fx = n2.handle_message(30_001, n(1), hb);
    let (_, ack) = sends(&fx)[0].clone();
    let fx = n1.handle_message(30_002, n(2), ack);
    assert_eq!(fx, vec![Effect::ReadReady { id, slot: Slot(1) }]);
}

#[test]
fn read_ids_are_reserved_durably_and_never_repeat_after_a_restart() {
    let (_, mut n2, _) = elected();
    // n2 heard the leader (its no-op), so a read is a request to n1, preceded by the
    // durable reservation of a block of ids.
    let (first, fx) = n2.read(20_000).unwrap();
    let reserved = ReadId(READ_IDS_PER_RESERVATION);
    assert_eq!(first, ReadId(1));
    assert_eq!(
        fx[0],
        Effect::Persist(DurableWrite::ReserveReadIds { through: reserved })
    );
    assert_eq!(
        sends(&fx),
        vec![(
            n(1),
            env(
                ConfigId(1),
                ballot(1, 1),
                Body::ReadIndexRequest { id: first }
            )
        )]
    );
    // Within the block: no more writes.
    let (second, fx) = n2.read(20_001).unwrap();
    assert_eq!(second, ReadId(2));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Persist(_))));

    // After a crash the node starts above everything it reserved, so a late reply to
    // `first` or `second` can never answer a new read.
    let mut store = MemStore::new();
    store
        .persist(&DurableWrite::ReserveReadIds { through: reserved })
        .unwrap();
    let mut restarted = Node::recover(opts(2), config3(), store.load().unwrap()).unwrap();
    restarted.start(30_000);
    restarted.leader = Some(n(1)); // As if it heard the leader again.
    let (id, fx) = restarted.read(30_001).unwrap();
    assert_eq!(id, ReadId(READ_IDS_PER_RESERVATION + 1));
    assert_eq!(
        fx[0],
        Effect::Persist(DurableWrite::ReserveReadIds {
            through: ReadId(2 * READ_IDS_PER_RESERVATION)
        })
    );
}

#[test]
fn follower_read_waits_for_the_leaders_index() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    let follower = (1..=3).map(n).find(|id| *id != leader).unwrap();
    net.propose(leader.0, b"w");
    let (id, fx) = net.nodes.get_mut(&follower).unwrap().read(net.now).unwrap();
    net.run_effects(follower, fx);
    net.advance(1_000);
    let ready = &net.ready_reads[&follower];
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, id);
    assert!(net.nodes[&follower].commit_index() >= ready[0].1);
    assert!(
        ready[0].1 >= Slot(1),
        "the read observes the committed write"
    );
}

#[test]
fn learners_pull_verified_entries() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [], [n(7)]).unwrap();
    let mut net = Net::new(genesis, &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    for i in 0..5u8 {
        net.propose(leader.0, &[i]);
    }
    net.propose(7, b"from learner");
    net.advance(2_000);
    let expected = net.applied_payloads(leader.0);
    assert_eq!(expected.len(), 6);
    assert_eq!(net.applied_payloads(7), expected);
    assert_eq!(
        net.nodes[&n(7)].chain_head(),
        net.nodes[&leader].chain_head()
    );
}

#[test]
fn forged_history_is_refused_by_a_learner() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [], [n(7)]).unwrap();
    let mut learner = Node::new(opts(7), genesis);
    learner.start(0);
    let b = ballot(1, 1);
    let real = Entry::Command(cmd(1, 1, b"real"));
    let head = ChainHash::genesis(VOLUME).extend(Slot(0), &real);
    let hb = Body::Heartbeat {
        decided: Slot(1),
        head,
        round: 1,
        ranking: vec![],
    };
    learner.handle_message(1, n(1), env(ConfigId(1), b, hb));
    let forged = Body::Entries {
        first: Slot(0),
        prev: ChainHash::genesis(VOLUME),
        entries: vec![Entry::Command(cmd(1, 1, b"forged"))],
        committed: Slot(1),
    };
    let fx = learner.handle_message(2, n(2), env(ConfigId(1), b, forged));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert_eq!(learner.commit_index(), Slot(0));
    let genuine = Body::Entries {
        first: Slot(0),
        prev: ChainHash::genesis(VOLUME),
        entries: vec![real],
        committed: Slot(1),
    };
    learner.handle_message(3, n(2), env(ConfigId(1), b, genuine));
    assert_eq!(learner.commit_index(), Slot(1));
    assert_eq!(learner.chain_head(), head);
}

#[test]
fn offline_proposer_queues_durably_and_submits_in_order_once() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    let offline = (1..=3).map(n).find(|id| *id != leader).unwrap();
    net.down.insert(offline);
    for i in 0..3u8 {
        net.propose(offline.0, &[i]);
    }
    assert_eq!(net.nodes[&offline].queued(), 3);
    // Crash while offline: the queue survives in the store.
    net.crash_and_restart(offline.0);
    assert_eq!(net.nodes[&offline].queued(), 3);
    net.advance(2_000);
    net.down.remove(&offline);
    net.advance(5_000);
    assert_eq!(net.nodes[&offline].queued(), 0);
    let applied = net.applied_payloads(leader.0);
    assert_eq!(applied, vec![vec![0], vec![1], vec![2]]);
    assert_eq!(net.applied_payloads(offline.0), applied);
}

#[test]
fn duplicate_commands_are_committed_but_not_applied() {
    let (mut n1, _, _) = elected();
    let c = cmd(2, 1, b"once");
    let forward = env(
        ConfigId(1),
        ballot(0, 2),
        Body::Forward {
            commands: vec![c.clone()],
        },
    );
    n1.handle_message(1, n(2), forward.clone());
    // The same command again (retry) is not proposed twice by this leader.
    let fx = n1.handle_message(2, n(2), forward);
    assert!(sends(&fx).is_empty());
    // Commit-time check: a second commit of (2, 1) would not be applied.
    let mut scratch = Vec::new();
    n1.commit_one(3, Entry::Command(c.clone()), &mut scratch);
    n1.commit_one(3, Entry::Command(c), &mut scratch);
    let flags: Vec<bool> = scratch
        .iter()
        .filter_map(|e| match e {
            Effect::Commit { apply, .. } => Some(*apply),
            _ => None,
        })
        .collect();
    assert_eq!(flags, vec![true, false]);
}

#[test]
fn compaction_and_snapshot_catch_up() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    let lagging = (1..=3).map(n).find(|id| *id != leader).unwrap();
    net.down.insert(lagging);
    for i in 0..10u8 {
        net.propose(leader.0, &[i]);
    }
    net.advance(500);
    let through = Slot(net.nodes[&leader].commit_index().0 - 1);
    for id in (1..=3).map(n).filter(|id| *id != lagging) {
        let node = net.nodes.get_mut(&id).unwrap();
        let fx = node.compact(net.now, through, b"state".to_vec()).unwrap();
        net.run_effects(id, fx);
        assert_eq!(net.nodes[&id].log_start(), through.next());
    }
    net.propose(leader.0, b"after");
    net.down.remove(&lagging);
    net.advance(3_000);
    let node = &net.nodes[&lagging];
    assert_eq!(node.commit_index(), net.nodes[&leader].commit_index());
    assert_eq!(node.chain_head(), net.nodes[&leader].chain_head());
    assert_eq!(
        net.applied_payloads(lagging.0).last(),
        Some(&b"after".to_vec())
    );
}

#[test]
fn a_witness_truncates_behind_a_voters_snapshot_and_serves_it_to_a_lagging_device() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [n(3)], []).unwrap();
    let mut net = Net::new(genesis, &[]);
    net.down.insert(n(2));
    net.advance(10_000);
    assert_eq!(net.leader(), Some(n(1)));
    for i in 0..10u8 {
        net.propose(1, &[i]);
    }
    net.advance(500);
    let through = Slot(net.nodes[&n(1)].commit_index().0 - 1);
    let witness_end = net.nodes[&n(3)].commit_index();
    assert!(
        witness_end > through,
        "the witness committed past the snapshot"
    );

    // A snapshot whose history differs from the witness's log is not taken.
    let mut forged = net.nodes.get(&n(1)).unwrap().clone();
    let fx = forged.compact(net.now, through, b"state".to_vec()).unwrap();
    let Some(Effect::Send { msg, .. }) = fx.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("compaction tells the witness: {fx:?}");
    };
    let mut wrong = msg.clone();
    if let Body::SnapshotData { snapshot } = &mut wrong.body {
        snapshot.chain = ChainHash::default();
    }
    let fx = net
        .nodes
        .get_mut(&n(3))
        .unwrap()
        .handle_message(net.now, n(1), wrong);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(net.nodes[&n(3)].log_start(), Slot(0));

    // The voter compacts; the witness truncates behind the same slot and keeps the
    // voter's state, durably.
    let fx = net
        .nodes
        .get_mut(&n(1))
        .unwrap()
        .compact(net.now, through, b"state".to_vec())
        .unwrap();
    assert!(matches!(fx[0], Effect::Persist(DurableWrite::Snapshot(_))));
    net.run_effects(n(1), fx);
    net.deliver_all();
    let witness = &net.nodes[&n(3)];
    assert_eq!(witness.log_start(), through.next());
    assert_eq!(witness.commit_index(), witness_end, "nothing uncommitted");
    let stored = net.stores[&n(3)].load().unwrap();
    let snapshot = stored.snapshot.expect("the witness stored the snapshot");
    assert_eq!(
        (snapshot.slot, snapshot.state),
        (through, b"state".to_vec())
    );
    assert!(stored.committed.keys().all(|slot| *slot > through));
    // An older snapshot changes nothing.
    let again = env(
        ConfigId(1),
        ballot(1, 1),
        Body::SnapshotData {
            snapshot: Snapshot {
                slot: Slot(2),
                ..net.nodes[&n(1)].snapshot.clone().unwrap()
            },
        },
    );
    assert!(
        net.nodes
            .get_mut(&n(3))
            .unwrap()
            .handle_message(net.now, n(1), again)
            .is_empty()
    );

    // Device 1 goes away, device 2 comes back: the witness's snapshot and log are
    // all it can catch up from, and then it leads with the witness.
    net.down.insert(n(1));
    net.down.remove(&n(2));
    net.advance(10_000);
    assert_eq!(net.leader(), Some(n(2)));
    assert_eq!(net.nodes[&n(2)].log_start(), through.next());
    net.propose(2, b"after");
    net.advance(500);
    assert_eq!(net.applied_payloads(2).last(), Some(&b"after".to_vec()));
}

#[test]
fn recovery_restores_promise_accepts_and_log() {
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    net.propose(leader.0, b"durable");
    net.advance(500);
    let before = net.nodes[&leader].clone();
    net.crash_and_restart(leader.0);
    let after = &net.nodes[&leader];
    assert_eq!(after.promised(), before.promised());
    assert_eq!(after.commit_index(), before.commit_index());
    assert_eq!(after.chain_head(), before.chain_head());
    assert_eq!(net.applied_payloads(leader.0), vec![b"durable".to_vec()]);
}

#[test]
fn effects_never_send_before_the_write_they_reveal() {
    // Drive a busy cluster and check every effect list.
    let mut net = Net::new(config3(), &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    for i in 0..50u8 {
        let (_, fx) = net
            .nodes
            .get_mut(&leader)
            .unwrap()
            .propose(net.now, vec![i])
            .unwrap();
        let b = net.nodes[&leader].leader_ballot().unwrap();
        assert_persist_before_send(&fx, b);
        net.run_effects(leader, fx);
    }
    net.advance(1_000);
    assert_eq!(net.applied_payloads(leader.0).len(), 50);
}

#[test]
fn a_leader_behind_its_acceptors_catches_up_instead_of_stalling() {
    // n3 accepted slot 1 from leader n1 but commits it only after promising n2.
    let (mut n1, mut n2, mut n3) = elected();
    let (_, fx) = n1.propose(1, b"a".to_vec()).unwrap();
    let accept_for_3 = sends(&fx)[1].1.clone();
    let fx = n3.handle_message(2, n(1), accept_for_3);
    let accepted = sends(&fx)[0].1.clone();
    n1.handle_message(3, n(3), accepted);
    assert_eq!(n1.commit_index(), Slot(2));
    // n2 never saw slot 1; it campaigns and n3 promises (nothing committed at n3 yet).
    let fx = n2.handle_timeout(100_000, Timer::Election);
    let prepare = sends(&fx)
        .into_iter()
        .find(|(to, _)| *to == n(3))
        .unwrap()
        .1;
    let fx = n3.handle_message(100_001, n(2), prepare);
    let promise = sends(&fx)[0].1.clone();
    // Meanwhile n3 learns slots 0 and 1 are committed (a fetch from n1).
    let entries = env(
        ConfigId(1),
        ballot(1, 1),
        Body::Entries {
            first: Slot(0),
            prev: ChainHash::genesis(VOLUME),
            entries: vec![Entry::Noop, Entry::Command(cmd(1, 1, b"a"))],
            committed: Slot(2),
        },
    );
    n3.handle_message(100_002, n(1), entries);
    assert_eq!(n3.commit_index(), Slot(2));
    let fx = n2.handle_message(100_003, n(3), promise);
    assert!(n2.is_leader());
    // n2 re-proposes from slot 0; n3 has those committed and answers with its index.
    let accept = sends(&fx)
        .into_iter()
        .find(|(to, m)| *to == n(3) && matches!(m.body, Body::Accept { .. }))
        .unwrap()
        .1;
    let fx = n3.handle_message(100_004, n(2), accept);
    let reply = sends(&fx)[0].1.clone();
    assert!(matches!(
        reply.body,
        Body::Reject {
            committed: Slot(2),
            ..
        }
    ));
    // n2 fetches, catches up, and leaves a leadership whose phase 1 was outdated.
    let fx = n2.handle_message(100_005, n(3), reply);
    let (to, fetch) = sends(&fx)[0].clone();
    assert_eq!((to, &fetch.body), (n(3), &Body::Fetch { first: Slot(0) }));
    let fx = n3.handle_message(100_006, n(2), fetch);
    let entries = sends(&fx)[0].1.clone();
    n2.handle_message(100_007, n(3), entries);
    assert_eq!(n2.commit_index(), Slot(2));
    assert!(!n2.is_leader());
}

#[test]
fn committing_a_stop_switches_configuration_and_the_old_leader_campaigns_in_the_new() {
    let (mut n1, mut n2, _) = elected();
    let b = ballot(1, 1);
    let next = Config::majority(ConfigId(2), [n(1), n(2), n(4)], [], [n(3)]).unwrap();
    let fx = n1.reconfigure(1, next.clone()).unwrap();
    let stop = Entry::Reconfigure(next.clone());
    let accept = Body::Accept {
        first: Slot(1),
        entries: vec![stop.clone()],
        decided: Slot(1),
    };
    assert_eq!(
        fx,
        vec![
            Effect::Persist(DurableWrite::Accept {
                ballot: b,
                first: Slot(1),
                entries: vec![stop.clone()],
            }),
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(1), b, accept.clone()),
            },
            Effect::Send {
                to: n(3),
                msg: env(ConfigId(1), b, accept.clone()),
            },
        ]
    );
    // Nothing more is proposed in configuration 1 after the stop.
    let (_, fx) = n1.propose(2, b"held".to_vec()).unwrap();
    assert!(sends(&fx).is_empty());
    assert!(n1.reconfigure(2, next.clone()).is_err());
    let fx = n2.handle_message(3, n(1), env(ConfigId(1), b, accept));
    let accepted = sends(&fx)[0].1.clone();
    let fx = n1.handle_message(4, n(2), accepted);
    let chain = n1.chain_head();
    let new_ballot = Ballot {
        epoch: ConfigId(2),
        round: 1,
        node: n(1),
    };
    let visible: Vec<Effect> = fx
        .into_iter()
        .filter(|e| !matches!(e, Effect::SetTimer { .. }))
        .collect();
    assert_eq!(
        visible,
        vec![
            Effect::Persist(DurableWrite::Commit {
                first: Slot(1),
                entries: vec![stop.clone()],
                head: chain,
            }),
            Effect::Commit {
                slot: Slot(1),
                entry: stop,
                chain,
                apply: false,
            },
            Effect::LeaderChanged { leader: None },
            Effect::Persist(DurableWrite::Promise { ballot: new_ballot }),
            Effect::Send {
                to: n(2),
                msg: env(ConfigId(2), new_ballot, Body::Prepare { first: Slot(2) }),
            },
            Effect::Send {
                to: n(4),
                msg: env(ConfigId(2), new_ballot, Body::Prepare { first: Slot(2) }),
            },
        ]
    );
    assert_eq!(n1.config().id, ConfigId(2));
    assert_eq!(n1.config_start(), Slot(2));
    // n2 has not committed the stop yet: a configuration-2 prepare makes it catch up
    // from the sender instead of promising across configurations.
    let prepare = env(ConfigId(2), new_ballot, Body::Prepare { first: Slot(2) });
    let fx = n2.handle_message(5, n(1), prepare);
    assert_eq!(
        sends(&fx),
        vec![(n(1), env(ConfigId(1), b, Body::Fetch { first: Slot(1) }))]
    );
    assert_eq!(n2.promised(), b);
}

#[test]
fn witness_counts_toward_quorums_but_never_campaigns() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [n(3)], []).unwrap();
    let mut witness = Node::new(opts(3), genesis.clone());
    assert!(witness.propose(0, vec![1]).is_err());
    assert!(
        witness.start(0).is_empty(),
        "no election timer for a witness"
    );
    assert!(witness.handle_timeout(u64::MAX, Timer::Election).is_empty());
    // It promises and accepts like any acceptor.
    let b = ballot(1, 1);
    let fx = witness.handle_message(
        1,
        n(1),
        env(ConfigId(1), b, Body::Prepare { first: Slot(0) }),
    );
    assert!(matches!(sends(&fx)[0].1.body, Body::Promise { .. }));
    // A leader with one device down commits with the witness's acceptance.
    let mut n1 = Node::new(opts(1), genesis);
    n1.start(0);
    n1.handle_timeout(10_000, Timer::Election);
    let promise = env(
        ConfigId(1),
        b,
        Body::Promise {
            first: Slot(0),
            committed: Slot(0),
            accepted: vec![],
        },
    );
    let fx = n1.handle_message(10_001, n(3), promise);
    assert!(n1.is_leader());
    let to_witness = sends(&fx)
        .into_iter()
        .find(|(to, _)| *to == n(3))
        .unwrap()
        .1;
    let fx = witness.handle_message(10_002, n(1), to_witness);
    let accepted = sends(&fx)[0].1.clone();
    n1.handle_message(10_003, n(3), accepted);
    assert_eq!(n1.commit_index(), Slot(1));
    // A ballot owned by the witness is never accepted from it.
    let forged = Ballot {
        node: n(3),
        round: 9,
        ..b
    };
    let mut n2 = Node::new(opts(2), n1.config().clone());
    n2.start(0);
    assert!(
        n2.handle_message(
            1,
            n(3),
            env(ConfigId(1), forged, Body::Prepare { first: Slot(0) })
        )
        .is_empty()
    );
}

#[test]
fn a_learner_whose_nearest_voter_is_down_pulls_from_another() {
    let genesis = Config::majority(ConfigId(1), [n(1), n(2), n(3)], [], [n(7)]).unwrap();
    let mut net = Net::new(genesis, &[]);
    net.advance(3_000);
    let leader = net.leader().unwrap();
    let nearest = (1..=3).map(n).find(|id| *id != leader).unwrap();
    net.nodes.get_mut(&n(7)).unwrap().report_rtt(0, nearest, 1);
    net.down.insert(nearest);
    for i in 0..3u8 {
        net.propose(leader.0, &[i]);
    }
    net.advance(3_000);
    assert_eq!(net.applied_payloads(7), net.applied_payloads(leader.0));
    assert_eq!(net.applied_payloads(7).len(), 3);
}

#[test]
fn propose_many_persists_all_before_one_batch() {
    let (mut n1, _, _) = elected();
    let (seqs, fx) = n1
        .propose_many(1, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .unwrap();
    assert_eq!(seqs, vec![1, 2, 3]);
    let kinds: Vec<&str> = fx
        .iter()
        .map(|e| match e {
            Effect::Persist(DurableWrite::Enqueue { .. }) => "enqueue",
            Effect::Persist(DurableWrite::Accept { .. }) => "accept",
            Effect::Send { .. } => "send",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["enqueue", "enqueue", "enqueue", "accept", "send", "send"]
    );
    // All or nothing.
    let too_big = vec![0u8; crate::limits::ENTRY_BYTES_MAX + 1];
    assert!(n1.propose_many(2, vec![b"ok".to_vec(), too_big]).is_err());
    assert_eq!(n1.queued(), 3);
}

#[test]
fn a_returning_voter_does_not_depose_a_live_leader() {
    let (_, mut n2, _) = elected();
    // n2 heard from leader n1 at 10_002. A prepare from n3 soon after is ignored…
    let b3 = ballot(7, 3);
    let prepare = env(ConfigId(1), b3, Body::Prepare { first: Slot(0) });
    assert!(n2.handle_message(10_500, n(3), prepare.clone()).is_empty());
    assert_eq!(n2.promised(), ballot(1, 1));
    // …but once the leader has been silent for an election timeout, it is answered.
    let fx = n2.handle_message(20_000, n(3), prepare);
    assert!(fx.contains(&Effect::Persist(DurableWrite::Promise { ballot: b3 })));
}

#[test]
fn a_leader_that_hears_no_quorum_steps_down() {
    let (mut n1, _, _) = elected();
    // Acks were last heard at 10_003; two election timeouts later nobody answered.
    let fx = n1.handle_timeout(10_201, Timer::Heartbeat);
    assert!(n1.is_leader(), "still within the window: {fx:?}");
    let fx = n1.handle_timeout(30_000, Timer::Heartbeat);
    assert!(!n1.is_leader());
    assert!(fx.contains(&Effect::LeaderChanged { leader: None }));
    assert!(
        sends(&fx).is_empty(),
        "no heartbeats from a leader without a quorum"
    );
}
