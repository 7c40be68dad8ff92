//! A minimal, fault-free driver for a few `Node`s: zero-latency network, in-memory
//! stores, no timers unless asked. Used to measure steady-state behaviour (round trips
//! per commit, throughput) where the full simulator's randomness would only add noise.
//!
//! Messages are delivered in *waves*: everything in flight at the start of a wave is
//! delivered, and what that produces forms the next wave. A leader → acceptor →
//! leader exchange is therefore two waves, one round trip.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Instant;

use paxos::{
    AcceptorStore, Body, Config, ConfigId, Effect, Envelope, MemStore, Node, NodeId, NodeOptions,
    ReadId, Slot, Timer, VolumeId,
};

pub const VOLUME: VolumeId = VolumeId(0xbe_4c);

/// Counters over everything the cluster executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages: u64,
    /// Phase-2 `Accept` messages sent (one per acceptor per batch).
    pub accepts_sent: u64,
    /// Phase-2 `Accept` batches (an `Accept` to all acceptors counts once).
    pub accept_batches: u64,
    pub persists: u64,
    pub syncs: u64,
    /// `Commit` effects at each node, summed.
    pub commits: u64,
}

#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub stores: Vec<MemStore>,
    in_flight: VecDeque<(NodeId, NodeId, Envelope)>,
    pub now_ms: u64,
    pub stats: Stats,
    /// Slots committed (emitted as `Commit`) per node.
    pub committed_next: Vec<Slot>,
    /// Wall time spent in each node (its `Node` calls and its store), for the benches.
    pub busy_ns: Vec<u64>,
    /// `ReadReady` effects in the order they were emitted: (node, read, slot).
    pub reads_ready: Vec<(NodeId, ReadId, Slot)>,
}

fn index(id: NodeId) -> usize {
    (id.0 as usize).saturating_sub(1)
}

impl Cluster {
    /// `voters` voters with majority quorums, ids 1..=voters.
    pub fn new(voters: u64) -> Result<Self, String> {
        let genesis = Config::majority(ConfigId(1), (1..=voters).map(NodeId), [], [])
            .map_err(|e| e.to_string())?;
        let mut cluster = Cluster {
            nodes: (1..=voters)
                .map(|id| Node::new(NodeOptions::new(NodeId(id), VOLUME), genesis.clone()))
                .collect(),
            stores: (1..=voters).map(|_| MemStore::new()).collect(),
            in_flight: VecDeque::new(),
            now_ms: 0,
            stats: Stats::default(),
            committed_next: vec![Slot(0); voters as usize],
            busy_ns: vec![0; voters as usize],
            reads_ready: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            let effects = cluster.nodes[i].start(0);
            cluster.execute(i, effects)?;
        }
        Ok(cluster)
    }

    /// Makes `leader` run for leadership (its election timer fires late enough to count)
    /// and delivers messages until the cluster is quiet.
    pub fn elect(&mut self, leader: NodeId) -> Result<(), String> {
        self.now_ms += 60_000;
        self.in_flight.clear();
        let i = index(leader);
        let effects = self.nodes[i].handle_timeout(self.now_ms, Timer::Election);
        self.execute(i, effects)?;
        self.run_until_quiet(10_000)?;
        if self.nodes[i].is_leader() {
            Ok(())
        } else {
            Err(format!(
                "{leader} did not become leader: {:?}",
                self.nodes[i].role()
            ))
        }
    }

    pub fn leader_index(&self) -> Option<usize> {
        self.nodes.iter().position(Node::is_leader)
    }

    /// Proposes at node `at` (index) and executes the resulting effects.
    pub fn propose(&mut self, at: usize, payload: Vec<u8>) -> Result<u64, String> {
        let began = Instant::now();
        let (seq, effects) = self.nodes[at]
            .propose(self.now_ms, payload)
            .map_err(|e| e.to_string())?;
        self.execute(at, effects)?;
        self.busy_ns[at] += began.elapsed().as_nanos() as u64;
        Ok(seq)
    }

    /// Proposes several payloads at once (`Node::propose_many`: one sync for the lot).
    pub fn propose_many(&mut self, at: usize, payloads: Vec<Vec<u8>>) -> Result<Vec<u64>, String> {
        let began = Instant::now();
        let (seqs, effects) = self.nodes[at]
            .propose_many(self.now_ms, payloads)
            .map_err(|e| e.to_string())?;
        self.execute(at, effects)?;
        self.busy_ns[at] += began.elapsed().as_nanos() as u64;
        Ok(seqs)
    }

    /// Starts a linearizable read at node `at` and executes the resulting effects.
    pub fn read(&mut self, at: usize) -> Result<ReadId, String> {
        let (id, effects) = self.nodes[at]
            .read(self.now_ms)
            .map_err(|e| e.to_string())?;
        self.execute(at, effects)?;
        Ok(id)
    }

    /// Executes effects a test obtained from node `at` directly (e.g. from `restart`).
    pub fn run_effects(&mut self, at: usize, effects: Vec<Effect>) -> Result<(), String> {
        self.execute(at, effects)
    }

    /// Fires a timer at node `at` at the current time.
    pub fn fire(&mut self, at: usize, timer: Timer) -> Result<(), String> {
        let effects = self.nodes[at].handle_timeout(self.now_ms, timer);
        self.execute(at, effects)
    }

    /// Delivers one wave; returns how many messages it held.
    pub fn wave(&mut self) -> Result<usize, String> {
        let wave: Vec<_> = self.in_flight.drain(..).collect();
        let count = wave.len();
        for (from, to, envelope) in wave {
            let i = index(to);
            if i >= self.nodes.len() {
                continue;
            }
            let began = Instant::now();
            let effects = self.nodes[i].handle_message(self.now_ms, from, envelope);
            self.execute(i, effects)?;
            self.busy_ns[i] += began.elapsed().as_nanos() as u64;
        }
        Ok(count)
    }

    /// Delivers waves until nothing is in flight; returns the number of waves.
    pub fn run_until_quiet(&mut self, waves_max: usize) -> Result<usize, String> {
        for waves in 0..waves_max {
            if self.in_flight.is_empty() {
                return Ok(waves);
            }
            self.wave()?;
        }
        Err(format!("still busy after {waves_max} waves"))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn execute(&mut self, i: usize, effects: Vec<Effect>) -> Result<(), String> {
        let from = self.nodes[i].id();
        let mut unsynced = false;
        let mut accept_batch_counted = None;
        for effect in effects {
            match effect {
                Effect::Persist(write) => {
                    self.stats.persists += 1;
                    self.stores[i].write(&write).map_err(|e| e.to_string())?;
                    unsynced = true;
                    continue;
                }
                _ if unsynced => {
                    self.stats.syncs += 1;
                    self.stores[i].sync().map_err(|e| e.to_string())?;
                    unsynced = false;
                }
                _ => {}
            }
            match effect {
                Effect::Send { to, msg } => {
                    self.stats.messages += 1;
                    if let Body::Accept { first, .. } = &msg.body {
                        self.stats.accepts_sent += 1;
                        if accept_batch_counted != Some(*first) {
                            accept_batch_counted = Some(*first);
                            self.stats.accept_batches += 1;
                        }
                    }
                    self.in_flight.push_back((from, to, msg));
                }
                Effect::Commit { slot, .. } => {
                    self.stats.commits += 1;
                    if slot != self.committed_next[i] {
                        return Err(format!(
                            "{from} committed {slot}, expected {}",
                            self.committed_next[i]
                        ));
                    }
                    self.committed_next[i] = slot.next();
                }
                Effect::ReadReady { id, slot } => self.reads_ready.push((from, id, slot)),
                _ => {}
            }
        }
        if unsynced {
            self.stats.syncs += 1;
            self.stores[i].sync().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Cluster {
    /// Asks the leader to move to `next` and delivers until quiet.
    pub fn reconfigure(&mut self, next: Config) -> Result<(), String> {
        let leader = self.leader_index().ok_or("no leader")?;
        let effects = self.nodes[leader]
            .reconfigure(self.now_ms, next)
            .map_err(|e| e.to_string())?;
        self.execute(leader, effects)?;
        self.run_until_quiet(10_000).map(|_| ())
    }

    /// Crashes node `at` (losing unsynced writes — there are none between calls) and
    /// restarts it from its store; returns the effects of `start`.
    pub fn restart(&mut self, at: usize, genesis: Config) -> Result<Vec<Effect>, String> {
        let state = self.stores[at].load().map_err(|e| e.to_string())?;
        let options = self.nodes[at].options().clone();
        self.nodes[at] = Node::recover(options, genesis, state).map_err(|e| e.to_string())?;
        self.committed_next[at] = Slot(0);
        let effects = self.nodes[at].start(self.now_ms);
        Ok(effects)
    }
}

impl Cluster {
    /// Drops every message in flight to `to` (a partition for one wave).
    pub fn drop_in_flight_to(&mut self, to: NodeId) -> usize {
        let before = self.in_flight.len();
        self.in_flight.retain(|(_, dest, _)| *dest != to);
        before - self.in_flight.len()
    }

    /// Delivers waves until quiet while `to` receives nothing.
    pub fn run_without(&mut self, to: NodeId, waves_max: usize) -> Result<(), String> {
        for _ in 0..waves_max {
            self.drop_in_flight_to(to);
            if self.in_flight.is_empty() {
                return Ok(());
            }
            self.wave()?;
        }
        Err(format!("still busy after {waves_max} waves"))
    }
}
