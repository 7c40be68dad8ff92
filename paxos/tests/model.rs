//! Model checking of the REAL Paxos core with stateright.
//!
//! A thin adapter implements `stateright::actor::Actor` by calling `Node`'s sans-IO
//! methods and mapping its effects: `Persist` → `Out::save` (the durable state a crash
//! keeps), `Send` → `Out::send` (messages travel as codec bytes, which also gives the
//! `Ord` the checker needs), `SetTimer` → `Out::set_timer`. The model's network loses,
//! duplicates and reorders; at most one actor crashes at a time and restarts from what
//! it saved. In the model a handler's save and sends are one atomic step, so the
//! driver's persist-before-send order is checked by the simulator instead.
//!
//! Time: a timer fires "at its deadline", so each actor keeps a virtual clock that jumps
//! to the deadline of the timer that fired; `within_boundary` cuts paths once any
//! clock passes `CLOCK_MS_MAX`. That bounds heartbeats and elections, and with them
//! the state space.
//!
//! Properties: agreement (always), validity (always: only proposed commands and the
//! planned configuration are ever committed), a command is sometimes chosen, and in the
//! reconfiguration case the stop entry with the new configuration is sometimes chosen.
//!
//! Bounds are small so CI runs stay under a minute; `KITH_LONG=1` raises them. The
//! number of states explored is printed (`cargo test -p paxos --test model -- --nocapture`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use paxos::{
    Config, ConfigId, DurableState, Effect, Entry, Node, NodeId, NodeOptions, Timer, VolumeId,
    codec,
};
use stateright::actor::{
    Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out, model_timeout,
};
use stateright::{Checker, Expectation, Model, UniformChooser};

const VOLUME: VolumeId = VolumeId(0x4d0d_e100);

/// A message on the model's network: the codec's bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Wire(Vec<u8>);

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match codec::decode(&self.0) {
            Ok(envelope) => write!(f, "{:?}", envelope.body),
            Err(error) => write!(f, "undecodable: {error}"),
        }
    }
}

#[derive(Clone, Debug)]
struct PaxosActor {
    options: NodeOptions,
    genesis: Config,
    /// Proposed once, at first start.
    proposal: Option<Vec<u8>>,
    /// The leader proposes this configuration once.
    reconfigure_to: Option<Config>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ActorState {
    node: Node,
    durable: DurableState,
    now_ms: u64,
    deadlines: BTreeMap<Timer, u64>,
    reconfigure_requested: bool,
}

fn node_id(id: Id) -> NodeId {
    NodeId(usize::from(id) as u64 + 1)
}

fn actor_id(node: NodeId) -> Id {
    Id::from(node.0.saturating_sub(1) as usize)
}

impl PaxosActor {
    /// Executes effects in order; a `Persist` is saved before anything after it.
    fn run_effects(&self, state: &mut ActorState, effects: Vec<Effect>, o: &mut Out<Self>) {
        let mut unsaved = false;
        for effect in effects {
            if let Effect::Persist(write) = &effect {
                state.durable.apply(write);
                unsaved = true;
                continue;
            }
            if unsaved {
                o.save(state.durable.clone());
                unsaved = false;
            }
            match effect {
                Effect::Send { to, msg } => o.send(actor_id(to), Wire(codec::encode(&msg))),
                Effect::SetTimer { timer, at_ms } => {
                    state.deadlines.insert(timer, at_ms);
                    o.set_timer(timer, model_timeout());
                }
                _ => {}
            }
        }
        if unsaved {
            o.save(state.durable.clone());
        }
        self.maybe_reconfigure(state, o);
    }

    fn maybe_reconfigure(&self, state: &mut ActorState, o: &mut Out<Self>) {
        let Some(next) = &self.reconfigure_to else {
            return;
        };
        if state.reconfigure_requested || !state.node.is_leader() {
            return;
        }
        if state.node.config().id != self.genesis.id {
            return;
        }
        state.reconfigure_requested = true;
        if let Ok(effects) = state.node.reconfigure(state.now_ms, next.clone()) {
            self.run_effects(state, effects, o);
        }
    }
}

impl Actor for PaxosActor {
    type Msg = Wire;
    type Timer = Timer;
    type State = ActorState;
    type Storage = DurableState;
    type Random = ();

    fn on_start(&self, _id: Id, storage: &Option<DurableState>, o: &mut Out<Self>) -> ActorState {
        let (node, fresh) = match storage {
            Some(durable) => {
                match Node::recover(self.options.clone(), self.genesis.clone(), durable.clone()) {
                    Ok(node) => (node, false),
                    Err(error) => panic!("recovery from saved state failed: {error}"),
                }
            }
            None => (Node::new(self.options.clone(), self.genesis.clone()), true),
        };
        let mut state = ActorState {
            node,
            durable: storage.clone().unwrap_or_default(),
            now_ms: 0,
            deadlines: BTreeMap::new(),
            reconfigure_requested: false,
        };
        let effects = state.node.start(0);
        self.run_effects(&mut state, effects, o);
        if fresh
            && let Some(payload) = &self.proposal
            && let Ok((_, effects)) = state.node.propose(0, payload.clone())
        {
            self.run_effects(&mut state, effects, o);
        }
        state
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<ActorState>, src: Id, msg: Wire, o: &mut Out<Self>) {
        let state = state.to_mut();
        let now = state.now_ms;
        let effects = state.node.handle_bytes(now, node_id(src), &msg.0);
        self.run_effects(state, effects, o);
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<ActorState>, timer: &Timer, o: &mut Out<Self>) {
        let state = state.to_mut();
        if let Some(deadline) = state.deadlines.remove(timer) {
            state.now_ms = state.now_ms.max(deadline);
        }
        let now = state.now_ms;
        let effects = state.node.handle_timeout(now, *timer);
        self.run_effects(state, effects, o);
    }
}

/// What the properties need to know about the run.
#[derive(Clone, Debug)]
struct Plan {
    proposals: Vec<Vec<u8>>,
    reconfigure_to: Option<Config>,
    clock_ms_max: u64,
    /// Whether a delivered message may be delivered again (any number of times).
    duplicating: bool,
}

type State = ActorModelState<PaxosActor>;
type PaxosModel = ActorModel<PaxosActor, Plan>;

fn committed_entries(state: &State) -> impl Iterator<Item = (usize, paxos::Slot, &Entry)> {
    state
        .actor_states
        .iter()
        .enumerate()
        .flat_map(|(actor, s)| {
            (0..s.node.commit_index().0).filter_map(move |slot| {
                let slot = paxos::Slot(slot);
                s.node.committed(slot).map(|entry| (actor, slot, entry))
            })
        })
}

fn agreement(_: &PaxosModel, state: &State) -> bool {
    let mut seen: BTreeMap<paxos::Slot, &Entry> = BTreeMap::new();
    for (_, slot, entry) in committed_entries(state) {
        if let Some(previous) = seen.insert(slot, entry)
            && previous != entry
        {
            return false;
        }
    }
    true
}

fn validity(model: &PaxosModel, state: &State) -> bool {
    committed_entries(state).all(|(_, _, entry)| match entry {
        Entry::Noop => true,
        Entry::Command(command) => model.cfg.proposals.contains(&command.payload),
        Entry::Reconfigure(config) => model.cfg.reconfigure_to.as_ref() == Some(config),
    })
}

fn command_chosen(_: &PaxosModel, state: &State) -> bool {
    committed_entries(state).any(|(_, _, entry)| matches!(entry, Entry::Command(_)))
}

fn reconfiguration_chosen(_: &PaxosModel, state: &State) -> bool {
    committed_entries(state).any(|(_, _, entry)| matches!(entry, Entry::Reconfigure(_)))
}

fn within_clock(plan: &Plan, state: &State) -> bool {
    state
        .actor_states
        .iter()
        .all(|s| s.now_ms <= plan.clock_ms_max)
}

/// Election timers as in production; heartbeat and retry intervals beyond the clock
/// bound, so those timers never fire inside the model (commits still travel on the next
/// `Accept`; liveness helpers are the simulator's business). Every timer that can fire
/// multiplies the state space.
fn options(id: u64) -> NodeOptions {
    let mut options = NodeOptions::new(NodeId(id), VOLUME);
    options.election_timeout_ms = 1_000;
    options.election_stagger_ms = 300;
    options.heartbeat_interval_ms = 1_000_000;
    options.retry_interval_ms = 1_000_000;
    options
}

fn build(actors: u64, genesis: Config, plan: Plan, crashes: usize) -> PaxosModel {
    let proposers = plan.proposals.len() as u64;
    let network = if plan.duplicating {
        Network::new_unordered_duplicating([])
    } else {
        Network::new_unordered_nonduplicating([])
    };
    let mut model = ActorModel::new(plan.clone(), ())
        .init_network(network)
        .lossy_network(LossyNetwork::Yes)
        .max_crashes(crashes)
        .within_boundary(within_clock)
        .property(Expectation::Always, "agreement", agreement)
        .property(Expectation::Always, "validity", validity)
        .property(Expectation::Sometimes, "command chosen", command_chosen);
    if plan.reconfigure_to.is_some() {
        model = model.property(
            Expectation::Sometimes,
            "reconfiguration chosen",
            reconfiguration_chosen,
        );
    }
    for id in 1..=actors {
        let proposal = (id <= proposers).then(|| plan.proposals[(id - 1) as usize].clone());
        model = model.actor(PaxosActor {
            options: options(id),
            genesis: genesis.clone(),
            proposal,
            // Only genesis voters lead the first configuration.
            reconfigure_to: plan.reconfigure_to.clone(),
        });
    }
    model
}

struct Bounds {
    clock_ms_max: u64,
    /// Breadth-first: every state up to some depth (memory grows with it).
    bfs_states_max: usize,
    /// Random walks from the initial state to the clock bound: deep, not exhaustive.
    walk_states_max: usize,
    /// A guard against hangs only. The state counts above must be what ends each run
    /// (reached well within this on the CI box), so every run explores the same states
    /// and the verdict cannot depend on machine speed.
    time_max: Duration,
}

fn bounds() -> Bounds {
    if std::env::var_os("KITH_LONG").is_some() {
        Bounds {
            clock_ms_max: 4_000,
            bfs_states_max: 3_000_000,
            walk_states_max: 100_000_000,
            time_max: Duration::from_secs(3_600),
        }
    } else {
        Bounds {
            clock_ms_max: 2_500,
            bfs_states_max: 80_000,
            walk_states_max: 300_000,
            time_max: Duration::from_secs(300),
        }
    }
}

/// Checks `make()`'s model twice — breadth-first (all states up to a depth) and by
/// random walks (deep paths) — and asserts: no counterexample to an `always` property in
/// either; an example of every `sometimes` property in one of them.
fn check(name: &str, make: impl Fn() -> PaxosModel, bounds: &Bounds) {
    let properties: Vec<(&'static str, Expectation)> = make()
        .properties()
        .into_iter()
        .map(|p| (p.name, p.expectation))
        .collect();
    let began = Instant::now();
    let bfs = make()
        .checker()
        .threads(1)
        .target_state_count(bounds.bfs_states_max)
        .timeout(bounds.time_max)
        .spawn_bfs()
        .join();
    println!(
        "model {name}: breadth-first {} states ({} unique), complete to depth {}, {:.1} s",
        bfs.state_count(),
        bfs.unique_state_count(),
        bfs.max_depth().saturating_sub(1),
        began.elapsed().as_secs_f64()
    );
    let began = Instant::now();
    let walks = make()
        .checker()
        .threads(1)
        .target_state_count(bounds.walk_states_max)
        .timeout(bounds.time_max)
        .spawn_simulation(0x5eed, UniformChooser)
        .join();
    println!(
        "model {name}: random walks {} states, max depth {}, {:.1} s",
        walks.state_count(),
        walks.max_depth(),
        began.elapsed().as_secs_f64()
    );
    for (property, expectation) in properties {
        let found = [bfs.discovery(property), walks.discovery(property)];
        match expectation {
            Expectation::Always | Expectation::Eventually => {
                if let Some(path) = found.into_iter().flatten().next() {
                    panic!("{name}: counterexample to `{property}`:\n{path}");
                }
            }
            Expectation::Sometimes => {
                assert!(
                    found.iter().any(Option::is_some),
                    "{name}: no example of `{property}` found"
                );
            }
        }
    }
}

fn three_voters(id: u64) -> Config {
    match Config::majority(ConfigId(id), [1, 2, 3].map(NodeId), [], []) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn three_voters_two_proposals_lossy_network_one_crash() {
    let bounds = bounds();
    let plan = Plan {
        proposals: vec![b"x".to_vec(), b"y".to_vec()],
        reconfigure_to: None,
        clock_ms_max: bounds.clock_ms_max,
        duplicating: false,
    };
    check(
        "3 voters, 2 proposals, lossy network, 1 crash",
        || build(3, three_voters(1), plan.clone(), 1),
        &bounds,
    );
}

#[test]
fn three_voters_lossy_duplicating_network() {
    let bounds = bounds();
    let plan = Plan {
        proposals: vec![b"x".to_vec()],
        reconfigure_to: None,
        clock_ms_max: bounds.clock_ms_max,
        duplicating: true,
    };
    check(
        "3 voters, 1 proposal, lossy duplicating network",
        || build(3, three_voters(1), plan.clone(), 0),
        &bounds,
    );
}

#[test]
fn reconfiguration_replaces_a_voter() {
    let bounds = bounds();
    // {1, 2, 3} → {1, 2, 4}: node 4 starts outside the group.
    let next = match Config::majority(ConfigId(2), [1, 2, 4].map(NodeId), [], []) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    let plan = Plan {
        proposals: vec![b"x".to_vec()],
        reconfigure_to: Some(next),
        clock_ms_max: bounds.clock_ms_max,
        duplicating: false,
    };
    check(
        "3 voters → replace one, lossy network",
        || build(4, three_voters(1), plan.clone(), 0),
        &bounds,
    );
}
