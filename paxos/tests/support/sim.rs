//! Deterministic simulation of one volume's Paxos group: N devices running the real
//! [`paxos::Node`], a hostile network, crashing disks, jumping clocks, membership
//! changes, and clients whose history is checked for linearizability.
//!
//! Everything is driven by one seeded RNG and a discrete event queue keyed by
//! (virtual time, sequence number), so a seed replays exactly.
//!
//! - **Network.** Every `Effect::Send` becomes a delivery event after a random delay
//!   (so messages reorder); a message may be dropped or duplicated; partitions block
//!   links in one or both directions (checked at delivery, so in-flight messages die
//!   too). Half of all messages travel as bytes through the codec, and truncated copies
//!   are thrown in as garbage the core must ignore.
//! - **Disks.** Each device has a `MemStore`. `Persist` effects are written and synced
//!   before the next non-`Persist` effect runs (the driver contract). A crash can strike
//!   between any two effects; it keeps a random prefix of unsynced writes.
//! - **Clocks.** Each device sees `global + offset`; offsets jump forward (suspend,
//!   NTP), and global time can jump with nothing running in between.
//! - **State machine.** A key-value store per device, updated atomically with each
//!   applied slot (as fossil's SQLite is), so it survives crashes; snapshots carry it.
//! - **Clients.** Each member device hosts clients issuing put / append (through the
//!   log) and get (read-index). A client that times out or whose device crashes records
//!   an unknown outcome.
//! - **Group.** Four starting topologies (3 voters + learner, 5 voters, 2 devices +
//!   witness + learner, 4 voters with flexible quorums 3/2); the nemesis adds and removes
//!   learners and voters through the leader, compacts logs (lagging devices then get
//!   snapshots), keeps devices offline for long stretches, fires stale timers, and
//!   reports per-link round trips so leadership hand-offs by latency happen.
//! - **Broken-disk mode** (`disk_lies`): crashes may roll a store back past synced
//!   writes; used only to show that the safety checks catch what that breaks.
//!
//! Invariants, one check each, evaluated as each step happens:
//! 1. *agreement*: no two different values chosen (accepted by a phase-2 quorum of the
//!    ballot's configuration) for one slot; a ballot proposes one value per slot;
//!    whatever a device commits was chosen.
//! 2. *committed entries never change*: a device never commits a different entry or
//!    chain hash at a slot it committed before (also across restarts).
//! 3. *prefix agreement*: every device applies the same sequence (entry and apply flag)
//!    with no gaps.
//! 4. *at most once*: every `(proposer, seq)` is applied at most once, in seq order.
//! 5. *durable before send*: an acceptor's `Promise` / `Accepted` is only sent once the
//!    promise / acceptance is synced; a restarted node's promise never regresses; a
//!    read id is sent only once reserved durably and never again after a restart.
//! 6. *linearizability* of the client history (checked once, at the end).
//! 7. *liveness*: once faults stop, every member converges (one leader, equal commit
//!    index and state, empty proposal queues, one more operation per client completes)
//!    within a bound.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use paxos::{
    AcceptorStore, Ballot, Body, ChainHash, Command, Config, ConfigId, DurableWrite, Effect, Entry,
    Envelope, MemStore, Node, NodeId, NodeOptions, ReadId, Slot, Snapshot, Timer, VolumeId, codec,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lincheck::{self, KvInput, KvModel, KvOutput, Operation, Verdict};

/// The volume every simulated device belongs to.
pub const VOLUME: VolumeId = VolumeId(0x4b17_0000_0000_0001);

/// How the group starts out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Three voters with majority quorums, one learner, one spare device.
    ThreeVoters,
    /// Five voters with majority quorums, one spare.
    FiveVoters,
    /// Two devices and a witness (majority of three), one learner.
    TwoDevicesAndWitness,
    /// Four voters with flexible quorums (phase 1: 3, phase 2: 2), one spare.
    FlexibleFour,
}

/// Knobs of one run. [`SimConfig::from_seed`] draws a varied configuration from a seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub topology: Topology,
    /// Virtual time with faults.
    pub fault_ms: u64,
    /// After faults stop, convergence must happen within this.
    pub converge_ms_max: u64,
    pub clients_per_device: usize,
    /// A client gives up on an operation after this long (unknown outcome).
    pub client_timeout_ms: u64,
    /// Faults on: drop/duplicate rates in per-mille, delay bounds.
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub delay_ms_max: u64,
    /// Per-effect chance (per 100,000) of a crash between two effects.
    pub crash_mid_effects_per_100k: u32,
    /// Mean time between nemesis actions.
    pub nemesis_interval_ms: u64,
    pub reconfigure: bool,
    /// Broken-disk mode, to show the checks bite: a crash may roll a device's store back
    /// to an older state, losing *synced* writes (a disk that lies about fsync). The
    /// driver-contract checks (invariant 5) are off in this mode, so the protocol-level
    /// checks must catch the damage.
    pub disk_lies: bool,
    /// Record a readable trace of every event (slow; for replays).
    pub trace: bool,
    /// Trace lines kept (the last ones); `PAXOS_TRACE=N` sets it.
    pub trace_lines: usize,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
        let topology = match seed % 4 {
            0 => Topology::ThreeVoters,
            1 => Topology::FiveVoters,
            2 => Topology::TwoDevicesAndWitness,
            _ => Topology::FlexibleFour,
        };
        SimConfig {
            seed,
            topology,
            fault_ms: rng.random_range(3_000..12_000),
            converge_ms_max: 30_000,
            clients_per_device: rng.random_range(1..=2),
            client_timeout_ms: rng.random_range(500..4_000),
            drop_per_mille: rng.random_range(0..150),
            duplicate_per_mille: rng.random_range(0..60),
            delay_ms_max: rng.random_range(1..60),
            crash_mid_effects_per_100k: rng.random_range(0..60),
            nemesis_interval_ms: rng.random_range(200..1_500),
            reconfigure: rng.random_range(0..3) != 0,
            disk_lies: false,
            trace: std::env::var_os("PAXOS_TRACE").is_some(),
            trace_lines: std::env::var("PAXOS_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 1)
                .unwrap_or(TRACE_LINES_MAX),
        }
    }
}

/// What a run did (for the summary line and for tests that the simulation bites).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub slots_committed: u64,
    pub commands_applied: u64,
    pub reconfigurations: u64,
    pub crashes: u64,
    pub snapshots_installed: u64,
    /// Leadership hand-offs requested (`TimeoutNow` sent).
    pub handoffs: u64,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    pub reads_ok: u64,
    pub lincheck_unknown: bool,
    pub virtual_ms: u64,
}

/// A broken invariant (or a panic inside the core), with how to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub at_ms: u64,
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} broke `{}` at {} ms: {}",
            self.seed, self.invariant, self.at_ms, self.detail
        )?;
        writeln!(
            f,
            "replay: PAXOS_SEED={} PAXOS_TRACE=1 cargo test -p paxos --test simulation replay_seed -- --nocapture",
            self.seed
        )?;
        if !self.trace.is_empty() {
            writeln!(f, "last events:")?;
            for line in &self.trace {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// Runs one seed. A panic inside the core is caught and reported as a failure.
pub fn run_seed(seed: u64) -> Result<Outcome, Failure> {
    run_config(SimConfig::from_seed(seed))
}

pub fn run_config(config: SimConfig) -> Result<Outcome, Failure> {
    let seed = config.seed;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(config.clone());
        let result = sim.run();
        (result, sim.trace)
    }));
    match result {
        Ok((Ok(outcome), _)) => Ok(outcome),
        Ok((Err(failure), _)) if failure.trace.is_empty() && !config.trace => {
            // Replay with tracing on to show what led there (deterministic).
            let mut traced = config;
            traced.trace = true;
            let mut sim = Sim::new(traced);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run())) {
                Ok(Err(mut again)) => {
                    again.trace = sim.trace.iter().cloned().collect();
                    Err(again)
                }
                _ => Err(failure),
            }
        }
        Ok((Err(mut failure), trace)) => {
            failure.trace = trace.into_iter().collect();
            Err(failure)
        }
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(Failure {
                seed,
                invariant: "no panic",
                detail,
                at_ms: 0,
                trace: Vec::new(),
            })
        }
    }
}

const TRACE_LINES_MAX: usize = 400;
const LINCHECK_STEPS_MAX: u64 = 2_000_000;
const KEYS: [&str; 3] = ["a", "b", "c"];
const RTT_REPORT_INTERVAL_MS: u64 = 500;
/// How long a device may stay offline in a "long absence".
const OFFLINE_LONG_MS: std::ops::Range<u64> = 8_000..30_000;

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Timer {
        device: usize,
        incarnation: u64,
        timer: Timer,
        at_device_ms: u64,
    },
    ClientTick {
        client: usize,
    },
    ClientDeadline {
        client: usize,
        op: u64,
    },
    Restart {
        device: usize,
        incarnation: u64,
    },
    Nemesis,
    /// Every device reports its measured round trips (leader preference input).
    RttReport,
    EndFaults,
    ConvergenceCheck,
}

#[derive(Clone, Debug)]
enum Message {
    Typed(Box<Envelope>),
    Bytes(Vec<u8>),
}

#[derive(Debug)]
struct StateMachine {
    kv: BTreeMap<String, String>,
    applied_next: Slot,
}

#[derive(Debug)]
struct Device {
    id: NodeId,
    node: Option<Node>,
    store: MemStore,
    /// Broken-disk mode: an older copy of `store` a crash may roll back to.
    stale_store: Option<MemStore>,
    /// Writes handed to the store and not yet synced, mirrored for the trackers.
    unsynced: Vec<DurableWrite>,
    sm: StateMachine,
    clock_offset_ms: u64,
    incarnation: u64,
    timers: BTreeMap<Timer, u64>,
    /// Commits this device emitted, by slot (invariant 2).
    commits: BTreeMap<Slot, (Entry, ChainHash)>,
    /// Synced acceptor state, for invariant 5.
    durable_promised: Ballot,
    durable_commit_next: Slot,
    /// Last slot covered by a durable snapshot (compaction or install).
    durable_snapshot_slot: Option<Slot>,
    /// Highest read id durably reserved (invariant 5: ids on the wire are reserved).
    durable_read_ids: ReadId,
    /// Highest read id sent in this incarnation / in all earlier ones (a reply to an
    /// earlier incarnation's request must never match a new read).
    read_id_sent: ReadId,
    read_id_sent_before: ReadId,
    /// Own proposals waiting for their client: seq → client.
    proposals: BTreeMap<u64, usize>,
    reads: BTreeMap<ReadId, usize>,
    /// Confirmed reads waiting for the state machine to catch up: (slot, client).
    reads_ready: Vec<(Slot, usize)>,
}

#[derive(Debug)]
struct Pending {
    op: u64,
    history_index: usize,
    probe: bool,
}

#[derive(Debug)]
struct Client {
    id: u64,
    device: usize,
    ops_started: u64,
    pending: Option<Pending>,
    /// After faults stop: one more operation that must complete (liveness).
    probe_due: bool,
    probe_done: bool,
}

/// Acceptances of one (slot, ballot).
#[derive(Debug)]
struct Acceptance {
    entry: Entry,
    acceptors: BTreeSet<NodeId>,
}

struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now_ms: u64,
    sequence: u64,
    events: BTreeMap<(u64, u64), Event>,
    devices: Vec<Device>,
    clients: Vec<Client>,
    genesis: Config,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(usize, usize)>,
    faults_on: bool,
    /// Base round trip per unordered device pair (what `report_rtt` is told).
    link_rtt_ms: BTreeMap<(usize, usize), u32>,
    faults_ended_ms: u64,
    drop_per_mille: u32,
    duplicate_per_mille: u32,
    delay_ms_max: u64,
    /// Known configurations by id (genesis, then chosen stop entries).
    configs: BTreeMap<ConfigId, Config>,
    acceptances: BTreeMap<(Slot, Ballot), Acceptance>,
    chosen: BTreeMap<Slot, Entry>,
    /// The applied sequence every device must follow: (entry, apply).
    reference: Vec<(Entry, bool)>,
    reference_seqs: BTreeMap<NodeId, u64>,
    history: Vec<Operation<KvInput, KvOutput>>,
    /// The command each history write was proposed as (`None` for reads).
    history_commands: Vec<Option<Command>>,
    /// Strictly increasing timestamp for history events.
    history_clock: u64,
    outcome: Outcome,
    trace: std::collections::VecDeque<String>,
    failure: Option<Failure>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .finish()
    }
}

fn node_options(id: NodeId) -> NodeOptions {
    let mut options = NodeOptions::new(id, VOLUME);
    // Short enough that leadership hand-offs by latency happen inside a run.
    options.handoff_sustain_ms = 1_500;
    options
}

fn genesis_config(topology: Topology) -> (Config, usize) {
    let ids = |range: std::ops::RangeInclusive<u64>| range.map(NodeId).collect::<Vec<_>>();
    let config = match topology {
        Topology::ThreeVoters => Config::majority(ConfigId(1), ids(1..=3), [], ids(4..=4)),
        Topology::FiveVoters => Config::majority(ConfigId(1), ids(1..=5), [], []),
        Topology::TwoDevicesAndWitness => {
            Config::majority(ConfigId(1), ids(1..=3), ids(3..=3), ids(4..=4))
        }
        Topology::FlexibleFour => Config::new(ConfigId(1), ids(1..=4), [], [], 3, 2),
    };
    let devices = match topology {
        Topology::ThreeVoters => 5,
        Topology::FiveVoters => 6,
        Topology::TwoDevicesAndWitness => 5,
        Topology::FlexibleFour => 5,
    };
    match config {
        Ok(config) => (config, devices),
        Err(error) => panic!("genesis configuration of {topology:?} is invalid: {error}"),
    }
}

fn encode_op(input: &KvInput) -> Vec<u8> {
    let (tag, key, value) = match input {
        KvInput::Put { key, value } => (0u8, key, value.as_str()),
        KvInput::Append { key, value } => (1u8, key, value.as_str()),
        KvInput::Get { key } => (2u8, key, ""),
    };
    let mut bytes = vec![tag, key.len() as u8];
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

fn decode_op(bytes: &[u8]) -> Option<KvInput> {
    let (&tag, rest) = bytes.split_first()?;
    let (&key_len, rest) = rest.split_first()?;
    let key_len = usize::from(key_len);
    let key = String::from_utf8(rest.get(..key_len)?.to_vec()).ok()?;
    let value = String::from_utf8(rest.get(key_len..)?.to_vec()).ok()?;
    match tag {
        0 => Some(KvInput::Put { key, value }),
        1 => Some(KvInput::Append { key, value }),
        2 => Some(KvInput::Get { key }),
        _ => None,
    }
}

fn encode_kv(kv: &BTreeMap<String, String>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (key, value) in kv {
        for part in [key, value] {
            bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
    }
    bytes
}

fn decode_kv(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut kv = BTreeMap::new();
    let take = |bytes: &mut &[u8]| -> Option<String> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let part = String::from_utf8(rest.get(..len)?.to_vec()).ok()?;
        *bytes = rest.get(len..)?;
        Some(part)
    };
    while !bytes.is_empty() {
        let key = take(&mut bytes)?;
        let value = take(&mut bytes)?;
        kv.insert(key, value);
    }
    Some(kv)
}

impl Sim {
    fn new(config: SimConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let (genesis, device_count) = genesis_config(config.topology);
        let devices = (0..device_count)
            .map(|index| {
                let id = NodeId(index as u64 + 1);
                Device {
                    id,
                    node: Some(Node::new(node_options(id), genesis.clone())),
                    store: MemStore::new(),
                    stale_store: None,
                    unsynced: Vec::new(),
                    sm: StateMachine {
                        kv: BTreeMap::new(),
                        applied_next: Slot(0),
                    },
                    clock_offset_ms: 0,
                    incarnation: 0,
                    timers: BTreeMap::new(),
                    commits: BTreeMap::new(),
                    durable_promised: Ballot::ZERO,
                    durable_commit_next: Slot(0),
                    durable_snapshot_slot: None,
                    durable_read_ids: ReadId(0),
                    read_id_sent: ReadId(0),
                    read_id_sent_before: ReadId(0),
                    proposals: BTreeMap::new(),
                    reads: BTreeMap::new(),
                    reads_ready: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        let mut clients = Vec::new();
        for (index, device) in devices.iter().enumerate() {
            // Witnesses hold sealed entries only: no clients there.
            if genesis.witnesses.contains(&device.id) {
                continue;
            }
            for _ in 0..config.clients_per_device {
                clients.push(Client {
                    id: clients.len() as u64 + 1,
                    device: index,
                    ops_started: 0,
                    pending: None,
                    probe_due: false,
                    probe_done: false,
                });
            }
        }
        let mut configs = BTreeMap::new();
        configs.insert(genesis.id, genesis.clone());
        Sim {
            drop_per_mille: config.drop_per_mille,
            duplicate_per_mille: config.duplicate_per_mille,
            delay_ms_max: config.delay_ms_max,
            config,
            rng,
            now_ms: 0,
            sequence: 0,
            events: BTreeMap::new(),
            devices,
            clients,
            genesis,
            blocked: BTreeSet::new(),
            faults_on: true,
            link_rtt_ms: BTreeMap::new(),
            faults_ended_ms: 0,
            configs,
            acceptances: BTreeMap::new(),
            chosen: BTreeMap::new(),
            reference: Vec::new(),
            reference_seqs: BTreeMap::new(),
            history: Vec::new(),
            history_commands: Vec::new(),
            history_clock: 0,
            outcome: Outcome::default(),
            trace: std::collections::VecDeque::new(),
            failure: None,
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((at_ms, self.sequence), event);
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                seed: self.config.seed,
                invariant,
                detail,
                at_ms: self.now_ms,
                trace: Vec::new(),
            });
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.config.trace {
            if self.trace.len() >= self.config.trace_lines {
                self.trace.pop_front();
            }
            let line = format!("{:>7} {}", self.now_ms, line());
            self.trace.push_back(line);
        }
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
    }

    fn device_now(&self, device: usize) -> u64 {
        self.now_ms + self.devices[device].clock_offset_ms
    }

    fn run(&mut self) -> Result<Outcome, Failure> {
        for device in 0..self.devices.len() {
            let now = self.device_now(device);
            if let Some(node) = self.devices[device].node.as_mut() {
                let effects = node.start(now);
                self.execute(device, effects);
            }
        }
        for client in 0..self.clients.len() {
            let at = self.rng.random_range(0..200);
            self.schedule(at, Event::ClientTick { client });
        }
        self.roll_link_rtts();
        self.schedule(RTT_REPORT_INTERVAL_MS, Event::RttReport);
        let first_nemesis = self.config.nemesis_interval_ms;
        self.schedule(first_nemesis, Event::Nemesis);
        self.schedule(self.config.fault_ms, Event::EndFaults);

        let deadline_ms = self.config.fault_ms + self.config.converge_ms_max;
        let mut converged = false;
        while let Some(((at_ms, _), event)) = self.events.pop_first() {
            self.now_ms = self.now_ms.max(at_ms);
            if self.now_ms > deadline_ms {
                break;
            }
            self.outcome.events += 1;
            if let Event::ConvergenceCheck = event {
                if self.converged() {
                    converged = true;
                    break;
                }
                self.schedule(self.now_ms + 100, Event::ConvergenceCheck);
            } else {
                self.step(event);
            }
            if let Some(failure) = self.failure.take() {
                return Err(failure);
            }
        }
        if !converged {
            let detail = self.convergence_report();
            self.fail(
                "liveness",
                format!(
                    "no convergence within {} ms after faults stopped: {detail}",
                    self.config.converge_ms_max
                ),
            );
        }
        self.check_final_states();
        self.check_linearizable();
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        self.outcome.virtual_ms = self.now_ms;
        self.outcome.slots_committed = self.reference.len() as u64;
        Ok(self.outcome.clone())
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::Timer {
                device,
                incarnation,
                timer,
                at_device_ms,
            } => {
                let live = self.devices[device].incarnation == incarnation;
                let current = self.devices[device].timers.get(&timer) == Some(&at_device_ms);
                // Stale timers are mostly dropped, sometimes fired (the core must ignore
                // them).
                if live && (current || self.chance(50)) {
                    if current {
                        self.devices[device].timers.remove(&timer);
                    }
                    let now = self.device_now(device);
                    self.log(|| format!("n{} timer {timer:?}", device + 1));
                    if let Some(node) = self.devices[device].node.as_mut() {
                        let effects = node.handle_timeout(now, timer);
                        self.execute(device, effects);
                    }
                }
            }
            Event::ClientTick { client } => self.client_tick(client),
            Event::ClientDeadline { client, op } => self.client_deadline(client, op),
            Event::Restart {
                device,
                incarnation,
            } => self.restart(device, incarnation),
            Event::Nemesis => {
                if self.faults_on {
                    self.nemesis();
                    let wait = self
                        .rng
                        .random_range(1..=2 * self.config.nemesis_interval_ms);
                    self.schedule(self.now_ms + wait, Event::Nemesis);
                }
            }
            Event::EndFaults => self.end_faults(),
            Event::RttReport => {
                self.report_rtts();
                self.schedule(self.now_ms + RTT_REPORT_INTERVAL_MS, Event::RttReport);
            }
            Event::ConvergenceCheck => {}
        }
    }

    // ---- network ------------------------------------------------------------------

    fn send(&mut self, from: usize, to_id: NodeId, envelope: Envelope) {
        self.outcome.messages_sent += 1;
        let Some(to) = self.device_index(to_id) else {
            return;
        };
        self.check_durable_before_send(from, &envelope);
        if matches!(envelope.body, Body::TimeoutNow) {
            self.outcome.handoffs += 1;
        }
        if self.chance(self.drop_per_mille) {
            self.outcome.messages_dropped += 1;
            return;
        }
        let copies = if self.chance(self.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(0..=self.delay_ms_max);
            let message = if self.rng.random_bool(0.5) {
                let bytes = codec::encode(&envelope);
                match codec::decode(&bytes) {
                    Ok(decoded) if decoded == envelope => {}
                    other => self.fail(
                        "codec round trip",
                        format!("{envelope:?} decoded as {other:?}"),
                    ),
                }
                if self.faults_on && self.chance(10) && bytes.len() > 1 {
                    // Garbage: a truncated copy.
                    let cut = self.rng.random_range(0..bytes.len());
                    let garbage = bytes[..cut].to_vec();
                    self.schedule(
                        self.now_ms + delay,
                        Event::Deliver {
                            from,
                            to,
                            message: Message::Bytes(garbage),
                        },
                    );
                }
                Message::Bytes(bytes)
            } else {
                Message::Typed(Box::new(envelope.clone()))
            };
            self.schedule(self.now_ms + delay, Event::Deliver { from, to, message });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        if self.blocked.contains(&(from, to)) || self.devices[to].node.is_none() {
            self.outcome.messages_dropped += 1;
            return;
        }
        let now = self.device_now(to);
        let from_id = self.devices[from].id;
        if self.config.trace {
            let text = match &message {
                Message::Typed(envelope) => format!("{envelope:?}"),
                Message::Bytes(bytes) => match codec::decode(bytes) {
                    Ok(envelope) => format!("{envelope:?}"),
                    Err(error) => format!("garbage ({error})"),
                },
            };
            self.log(|| format!("n{} -> n{}: {text}", from + 1, to + 1));
        }
        let Some(node) = self.devices[to].node.as_mut() else {
            return;
        };
        let effects = match message {
            Message::Typed(envelope) => node.handle_message(now, from_id, *envelope),
            Message::Bytes(bytes) => node.handle_bytes(now, from_id, &bytes),
        };
        self.execute(to, effects);
    }

    fn device_index(&self, id: NodeId) -> Option<usize> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        (index < self.devices.len()).then_some(index)
    }

    // ---- effects ------------------------------------------------------------------

    fn execute(&mut self, device: usize, effects: Vec<Effect>) {
        let incarnation = self.devices[device].incarnation;
        for effect in effects {
            if self.faults_on
                && self.config.crash_mid_effects_per_100k > 0
                && self.rng.random_range(0..100_000) < self.config.crash_mid_effects_per_100k
            {
                self.crash(device, "between effects");
                return;
            }
            if self.devices[device].incarnation != incarnation {
                return;
            }
            if let Effect::Persist(write) = effect {
                self.log(|| format!("n{} persist {write:?}", device + 1));
                if let Err(error) = self.devices[device].store.write(&write) {
                    self.fail("store", format!("write failed: {error}"));
                }
                self.devices[device].unsynced.push(write);
                continue;
            }
            self.sync(device);
            self.apply_effect(device, effect);
        }
        self.sync(device);
    }

    fn sync(&mut self, device: usize) {
        if self.devices[device].unsynced.is_empty() {
            return;
        }
        if let Err(error) = self.devices[device].store.sync() {
            self.fail("store", format!("sync failed: {error}"));
        }
        let writes = std::mem::take(&mut self.devices[device].unsynced);
        for write in &writes {
            self.on_durable(device, write);
        }
    }

    /// Tracks what became durable at `device` (invariants 1 and 5).
    fn on_durable(&mut self, device: usize, write: &DurableWrite) {
        let id = self.devices[device].id;
        match write {
            DurableWrite::Promise { ballot } => {
                let promised = &mut self.devices[device].durable_promised;
                *promised = (*promised).max(*ballot);
            }
            DurableWrite::Accept {
                ballot,
                first,
                entries,
            } => {
                let promised = &mut self.devices[device].durable_promised;
                *promised = (*promised).max(*ballot);
                for (offset, entry) in entries.iter().enumerate() {
                    let slot = first.plus(offset as u64);
                    self.record_acceptance(id, slot, *ballot, entry);
                }
            }
            DurableWrite::Commit { first, entries, .. } => {
                let next = first.plus(entries.len() as u64);
                let commit_next = &mut self.devices[device].durable_commit_next;
                *commit_next = (*commit_next).max(next);
            }
            DurableWrite::Snapshot(snapshot) => {
                let next = snapshot.slot.next();
                let commit_next = &mut self.devices[device].durable_commit_next;
                *commit_next = (*commit_next).max(next);
                let covered = &mut self.devices[device].durable_snapshot_slot;
                *covered = (*covered).max(Some(snapshot.slot));
                self.learn_config(snapshot.config.clone());
            }
            DurableWrite::ReserveReadIds { through } => {
                let reserved = &mut self.devices[device].durable_read_ids;
                *reserved = (*reserved).max(*through);
            }
            DurableWrite::DiscardAccepted { .. }
            | DurableWrite::Enqueue { .. }
            | DurableWrite::Dequeue { .. } => {}
        }
    }

    fn record_acceptance(&mut self, acceptor: NodeId, slot: Slot, ballot: Ballot, entry: &Entry) {
        let acceptance = self
            .acceptances
            .entry((slot, ballot))
            .or_insert_with(|| Acceptance {
                entry: entry.clone(),
                acceptors: BTreeSet::new(),
            });
        if acceptance.entry != *entry {
            let detail = format!(
                "ballot {ballot:?} proposed two values at {slot}: {:?} and {entry:?}",
                acceptance.entry
            );
            self.fail("agreement", detail);
            return;
        }
        acceptance.acceptors.insert(acceptor);
        self.check_chosen(slot, ballot);
    }

    fn check_chosen(&mut self, slot: Slot, ballot: Ballot) {
        let Some(config) = self.configs.get(&ballot.epoch) else {
            return; // Evaluated once the configuration is learned.
        };
        let Some(acceptance) = self.acceptances.get(&(slot, ballot)) else {
            return;
        };
        if !config.is_phase2_quorum(&acceptance.acceptors) {
            return;
        }
        let entry = acceptance.entry.clone();
        match self.chosen.get(&slot) {
            Some(previous) if *previous != entry => {
                let detail = format!(
                    "two values chosen at {slot}: {previous:?} and {entry:?} (ballot {ballot:?}, acceptors {:?})",
                    acceptance.acceptors
                );
                self.fail("agreement", detail);
            }
            Some(_) => {}
            None => {
                self.chosen.insert(slot, entry);
            }
        }
    }

    fn learn_config(&mut self, config: Config) {
        if self.configs.contains_key(&config.id) {
            if self.configs.get(&config.id) != Some(&config) {
                let detail = format!("two configurations with id {:?}", config.id);
                self.fail("agreement", detail);
            }
            return;
        }
        let id = config.id;
        self.configs.insert(id, config);
        let pending: Vec<(Slot, Ballot)> = self
            .acceptances
            .keys()
            .filter(|(_, ballot)| ballot.epoch == id)
            .copied()
            .collect();
        for (slot, ballot) in pending {
            self.check_chosen(slot, ballot);
        }
    }

    /// Invariant 5: nothing an acceptor tells a peer depends on unsynced state.
    fn check_durable_before_send(&mut self, from: usize, envelope: &Envelope) {
        if self.config.disk_lies {
            return;
        }
        let device = &self.devices[from];
        match &envelope.body {
            Body::Promise { .. } if device.durable_promised < envelope.ballot => {
                let detail = format!(
                    "n{} sent a promise for {:?} but has only {:?} durable",
                    from + 1,
                    envelope.ballot,
                    device.durable_promised
                );
                self.fail("durable before send", detail);
            }
            // A read id reaches a peer only once reserved durably, so a restarted node
            // (which starts above its reservation) never reuses one.
            Body::ReadIndexRequest { id } => {
                if *id > device.durable_read_ids {
                    let detail = format!(
                        "n{} sent read {id:?} but has only {:?} reserved durably",
                        from + 1,
                        device.durable_read_ids
                    );
                    self.fail("durable before send", detail);
                } else if *id <= device.read_id_sent_before {
                    let detail = format!(
                        "n{} reused read {id:?} after a restart (sent up to {:?} before)",
                        from + 1,
                        device.read_id_sent_before
                    );
                    self.fail("durable before send", detail);
                }
                let sent = &mut self.devices[from].read_id_sent;
                *sent = (*sent).max(*id);
            }
            Body::Accepted { first, count } => {
                let id = device.id;
                for offset in 0..u64::from(*count) {
                    let slot = first.plus(offset);
                    if slot < self.devices[from].durable_commit_next {
                        continue; // Chosen and durably committed here already.
                    }
                    let durable = self
                        .acceptances
                        .get(&(slot, envelope.ballot))
                        .is_some_and(|acceptance| acceptance.acceptors.contains(&id));
                    if !durable {
                        let detail = format!(
                            "n{} sent Accepted for {slot} at {:?} without a durable acceptance",
                            from + 1,
                            envelope.ballot
                        );
                        self.fail("durable before send", detail);
                        return;
                    }
                }
            }
            _ => {}
        }
    }

    fn apply_effect(&mut self, device: usize, effect: Effect) {
        match effect {
            Effect::Persist(_) => {}
            Effect::Send { to, msg } => self.send(device, to, msg),
            Effect::Commit {
                slot,
                entry,
                chain,
                apply,
            } => self.commit(device, slot, entry, chain, apply),
            Effect::InstallSnapshot(snapshot) => self.install_snapshot(device, snapshot),
            Effect::SetTimer { timer, at_ms } => {
                self.log(|| format!("n{} set timer {timer:?} at {at_ms}", device + 1));
                let incarnation = self.devices[device].incarnation;
                self.devices[device].timers.insert(timer, at_ms);
                let global = at_ms
                    .saturating_sub(self.devices[device].clock_offset_ms)
                    .max(self.now_ms);
                self.schedule(
                    global,
                    Event::Timer {
                        device,
                        incarnation,
                        timer,
                        at_device_ms: at_ms,
                    },
                );
            }
            Effect::ReadReady { id, slot } => {
                if let Some(client) = self.devices[device].reads.remove(&id) {
                    self.devices[device].reads_ready.push((slot, client));
                    self.serve_reads(device);
                }
            }
            Effect::ReadFailed { id, .. } => {
                if let Some(client) = self.devices[device].reads.remove(&id) {
                    self.finish_unknown(client);
                }
            }
            Effect::ProposalRejected { .. } | Effect::LeaderChanged { .. } => {}
        }
    }

    fn commit(&mut self, device: usize, slot: Slot, entry: Entry, chain: ChainHash, apply: bool) {
        self.log(|| format!("n{} commit {slot} {entry:?} apply={apply}", device + 1));
        // 1. Whatever is committed was chosen.
        match self.chosen.get(&slot) {
            Some(chosen) if *chosen == entry => {}
            other => {
                let detail = format!(
                    "n{} committed {entry:?} at {slot}, chosen: {other:?}",
                    device + 1
                );
                self.fail("agreement", detail);
                return;
            }
        }
        if let Entry::Reconfigure(config) = &entry {
            self.learn_config(config.clone());
        }
        // 2. Committed entries never change.
        match self.devices[device].commits.get(&slot) {
            Some((previous, previous_chain)) => {
                if *previous != entry || *previous_chain != chain {
                    let detail = format!(
                        "n{} committed {entry:?} ({chain:?}) at {slot}, earlier {previous:?} ({previous_chain:?})",
                        device + 1
                    );
                    self.fail("committed entries never change", detail);
                }
            }
            None => {
                self.devices[device]
                    .commits
                    .insert(slot, (entry.clone(), chain));
            }
        }
        // 3. Same applied sequence everywhere, no gaps.
        let applied_next = self.devices[device].sm.applied_next;
        if slot < applied_next {
            return; // Re-emitted after a restart; already applied.
        }
        if slot > applied_next {
            let detail = format!(
                "n{} committed {slot} but has applied only up to {applied_next}",
                device + 1
            );
            self.fail("prefix agreement", detail);
            return;
        }
        let index = slot.0 as usize;
        match self.reference.get(index) {
            Some(reference) => {
                if *reference != (entry.clone(), apply) {
                    let detail = format!(
                        "n{} applies ({entry:?}, {apply}) at {slot}, others applied {reference:?}",
                        device + 1
                    );
                    self.fail("prefix agreement", detail);
                    return;
                }
            }
            None => {
                self.reference.push((entry.clone(), apply));
                // 4. At most once, in seq order.
                if let (Entry::Command(command), true) = (&entry, apply) {
                    let last = self.reference_seqs.entry(command.proposer).or_insert(0);
                    if command.seq <= *last {
                        let detail = format!(
                            "({:?}, {}) applied at {slot} after seq {last}",
                            command.proposer, command.seq
                        );
                        self.fail("at most once", detail);
                        return;
                    }
                    *last = command.seq;
                    self.outcome.commands_applied += 1;
                }
                if let Entry::Reconfigure(_) = &entry {
                    self.outcome.reconfigurations += 1;
                }
            }
        }
        self.devices[device].sm.applied_next = slot.next();
        if let (Entry::Command(command), true) = (&entry, apply) {
            self.apply_command(device, command);
        }
        self.serve_reads(device);
    }

    fn apply_command(&mut self, device: usize, command: &Command) {
        let Some(input) = decode_op(&command.payload) else {
            self.fail(
                "state machine",
                format!("undecodable payload {:?}", command.payload),
            );
            return;
        };
        let output = KvModel::apply(&mut self.devices[device].sm.kv, &input);
        if command.proposer == self.devices[device].id
            && let Some(client) = self.devices[device].proposals.remove(&command.seq)
        {
            self.finish(client, output);
        }
    }

    fn install_snapshot(&mut self, device: usize, snapshot: Snapshot) {
        self.log(|| format!("n{} install snapshot through {}", device + 1, snapshot.slot));
        self.learn_config(snapshot.config.clone());
        if snapshot.slot.next() <= self.devices[device].sm.applied_next {
            return; // The durable state machine already has it.
        }
        let Some(kv) = decode_kv(&snapshot.state) else {
            self.fail("snapshot", "undecodable snapshot state".into());
            return;
        };
        // The snapshot must equal the reference sequence replayed through its slot.
        let through = snapshot.slot.0 as usize;
        if through >= self.reference.len() {
            let detail = format!("snapshot through {} beyond anything applied", snapshot.slot);
            self.fail("snapshot", detail);
            return;
        }
        let mut expected = BTreeMap::new();
        for (entry, apply) in &self.reference[..=through] {
            if let (Entry::Command(command), true) = (entry, apply)
                && let Some(input) = decode_op(&command.payload)
            {
                KvModel::apply(&mut expected, &input);
            }
        }
        if expected != kv {
            let detail = format!("snapshot through {} differs from the log", snapshot.slot);
            self.fail("snapshot", detail);
            return;
        }
        self.outcome.snapshots_installed += 1;
        let sm = &mut self.devices[device].sm;
        sm.kv = kv;
        sm.applied_next = snapshot.slot.next();
        self.serve_reads(device);
    }

    fn serve_reads(&mut self, device: usize) {
        let applied_next = self.devices[device].sm.applied_next;
        let ready: Vec<(Slot, usize)> = self.devices[device]
            .reads_ready
            .iter()
            .filter(|(slot, _)| *slot <= applied_next)
            .copied()
            .collect();
        self.devices[device]
            .reads_ready
            .retain(|(slot, _)| *slot > applied_next);
        for (_, client) in ready {
            let Some(pending) = &self.clients[client].pending else {
                continue;
            };
            let KvInput::Get { key } = &self.history[pending.history_index].input else {
                continue;
            };
            let value = self.devices[device].sm.kv.get(key).cloned();
            self.outcome.reads_ok += 1;
            self.finish(client, KvOutput::Value(value));
        }
    }

    // ---- crashes ------------------------------------------------------------------

    fn crash(&mut self, device: usize, why: &str) {
        if self.devices[device].node.is_none() {
            return;
        }
        self.outcome.crashes += 1;
        let unsynced = self.devices[device].unsynced.len();
        let keep = self.rng.random_range(0..=unsynced);
        self.log(|| {
            format!(
                "n{} crash ({why}), keeps {keep}/{unsynced} unsynced writes",
                device + 1
            )
        });
        self.devices[device].store.crash(keep);
        if self.config.disk_lies
            && let Some(stale) = self.devices[device].stale_store.take()
        {
            self.devices[device].store = stale;
        }
        let writes = std::mem::take(&mut self.devices[device].unsynced);
        for write in writes.iter().take(keep) {
            self.on_durable(device, write);
        }
        let dev = &mut self.devices[device];
        dev.node = None;
        dev.incarnation += 1;
        dev.read_id_sent_before = dev.read_id_sent_before.max(dev.read_id_sent);
        dev.timers.clear();
        dev.proposals.clear();
        dev.reads.clear();
        dev.reads_ready.clear();
        // The device's clients die with it: their operations have unknown outcomes.
        for client in 0..self.clients.len() {
            if self.clients[client].device == device && self.clients[client].pending.is_some() {
                self.finish_unknown(client);
            }
        }
    }

    fn restart(&mut self, device: usize, incarnation: u64) {
        if self.devices[device].incarnation != incarnation || self.devices[device].node.is_some() {
            return;
        }
        let id = self.devices[device].id;
        let state = match self.devices[device].store.load() {
            Ok(state) => state,
            Err(error) => {
                self.fail(
                    "recovery",
                    format!("n{} cannot load its store: {error}", device + 1),
                );
                return;
            }
        };
        let mut node = match Node::recover(node_options(id), self.genesis.clone(), state) {
            Ok(node) => node,
            Err(error) => {
                self.fail(
                    "recovery",
                    format!("n{} cannot recover: {error}", device + 1),
                );
                return;
            }
        };
        if !self.config.disk_lies && node.promised() < self.devices[device].durable_promised {
            let detail = format!(
                "n{} recovered promise {:?} below durable {:?}",
                device + 1,
                node.promised(),
                self.devices[device].durable_promised
            );
            self.fail("durable before send", detail);
        }
        self.log(|| format!("n{} restart", device + 1));
        let now = self.device_now(device);
        let effects = node.start(now);
        self.devices[device].node = Some(node);
        self.execute(device, effects);
        for client in 0..self.clients.len() {
            if self.clients[client].device == device {
                let at = self.now_ms + self.rng.random_range(0..100);
                self.schedule(at, Event::ClientTick { client });
            }
        }
    }

    // ---- clients ------------------------------------------------------------------

    fn client_tick(&mut self, client: usize) {
        let device = self.clients[client].device;
        if self.clients[client].pending.is_some() || self.devices[device].node.is_none() {
            return;
        }
        let probe = !self.faults_on;
        if probe && (!self.clients[client].probe_due || self.clients[client].probe_done) {
            return;
        }
        let op = self.clients[client].ops_started + 1;
        self.clients[client].ops_started = op;
        let client_id = self.clients[client].id;
        let key = KEYS[self.rng.random_range(0..KEYS.len())].to_owned();
        let input = match self.rng.random_range(0..10) {
            0..4 => KvInput::Put {
                key,
                value: format!("{client_id}.{op}"),
            },
            4..7 => KvInput::Append {
                key,
                value: format!("{client_id}.{op};"),
            },
            _ => KvInput::Get { key },
        };
        self.history_clock += 1;
        let call_time = self.history_clock;
        let now = self.device_now(device);
        let Some(node) = self.devices[device].node.as_mut() else {
            return;
        };
        let started = match &input {
            KvInput::Get { .. } => node.read(now).map(|(id, effects)| (Err(id), effects)),
            _ => node
                .propose(now, encode_op(&input))
                .map(|(seq, effects)| (Ok(seq), effects)),
        };
        let (handle, effects) = match started {
            Ok(started) => started,
            Err(_) => {
                // Refused up front: it never happened. Try again later.
                let at = self.now_ms + self.rng.random_range(50..300);
                self.schedule(at, Event::ClientTick { client });
                return;
            }
        };
        self.log(|| format!("client {client_id}@n{} calls {input:?}", device + 1));
        let history_index = self.history.len();
        self.history_commands.push(match &handle {
            Ok(seq) => Some(Command {
                proposer: self.devices[device].id,
                seq: *seq,
                payload: encode_op(&input),
            }),
            Err(_) => None,
        });
        self.history.push(Operation {
            client: client_id,
            input,
            call_time,
            return_time: None,
            output: None,
        });
        self.clients[client].pending = Some(Pending {
            op,
            history_index,
            probe,
        });
        match handle {
            Ok(seq) => {
                self.devices[device].proposals.insert(seq, client);
            }
            Err(read) => {
                self.devices[device].reads.insert(read, client);
            }
        }
        if !probe {
            let deadline = self.now_ms + self.config.client_timeout_ms;
            self.schedule(deadline, Event::ClientDeadline { client, op });
        }
        self.execute(device, effects);
    }

    fn client_deadline(&mut self, client: usize, op: u64) {
        let timed_out = matches!(&self.clients[client].pending, Some(pending) if pending.op == op && !pending.probe);
        if timed_out {
            let device = self.clients[client].device;
            self.devices[device].proposals.retain(|_, c| *c != client);
            self.devices[device].reads.retain(|_, c| *c != client);
            self.devices[device]
                .reads_ready
                .retain(|(_, c)| *c != client);
            self.finish_unknown(client);
        }
    }

    fn finish(&mut self, client: usize, output: KvOutput) {
        let Some(pending) = self.clients[client].pending.take() else {
            return;
        };
        self.history_clock += 1;
        let operation = &mut self.history[pending.history_index];
        operation.return_time = Some(self.history_clock);
        operation.output = Some(output);
        let (client_id, output) = (self.clients[client].id, operation.output.clone());
        self.log(|| format!("client {client_id} returns {output:?}"));
        self.outcome.ops_ok += 1;
        if pending.probe {
            self.clients[client].probe_done = true;
        }
        let think = self.rng.random_range(0..40);
        self.schedule(self.now_ms + think, Event::ClientTick { client });
    }

    fn finish_unknown(&mut self, client: usize) {
        if self.clients[client].pending.take().is_none() {
            return;
        }
        self.outcome.ops_unknown += 1;
        let client_id = self.clients[client].id;
        self.log(|| format!("client {client_id} gives up"));
        let think = self.rng.random_range(0..40);
        self.schedule(self.now_ms + think, Event::ClientTick { client });
    }

    // ---- faults -------------------------------------------------------------------

    fn up_devices(&self) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&d| self.devices[d].node.is_some())
            .collect()
    }

    fn roll_link_rtts(&mut self) {
        let count = self.devices.len();
        for a in 0..count {
            for b in a + 1..count {
                let rtt = self.rng.random_range(2..200);
                self.link_rtt_ms.insert((a, b), rtt);
            }
        }
    }

    fn report_rtts(&mut self) {
        for device in 0..self.devices.len() {
            if self.devices[device].node.is_none() {
                continue;
            }
            let now = self.device_now(device);
            for peer in 0..self.devices.len() {
                let key = (device.min(peer), device.max(peer));
                let Some(&base) = self.link_rtt_ms.get(&key) else {
                    continue;
                };
                let rtt = base + self.rng.random_range(0..10);
                let peer_id = self.devices[peer].id;
                let effects = match self.devices[device].node.as_mut() {
                    Some(node) => node.report_rtt(now, peer_id, rtt),
                    None => Vec::new(),
                };
                self.execute(device, effects);
            }
        }
    }

    fn nemesis(&mut self) {
        let count = self.devices.len();
        if self.config.disk_lies {
            let device = self.rng.random_range(0..count);
            if self.devices[device].stale_store.is_none() {
                self.devices[device].stale_store = Some(self.devices[device].store.clone());
            }
        }
        match self.rng.random_range(0..100) {
            0..15 => {
                // Two-sided partition into random halves.
                let side: Vec<bool> = (0..count).map(|_| self.rng.random_bool(0.5)).collect();
                self.blocked.clear();
                for a in 0..count {
                    for b in 0..count {
                        if side[a] != side[b] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.log(|| format!("partition {side:?}"));
            }
            15..25 => {
                // One-way: a cannot reach b.
                let a = self.rng.random_range(0..count);
                let b = self.rng.random_range(0..count);
                if a != b {
                    self.blocked.insert((a, b));
                    self.log(|| format!("one-way block n{} -> n{}", a + 1, b + 1));
                }
            }
            25..32 => {
                // Isolate one device completely.
                let a = self.rng.random_range(0..count);
                for b in 0..count {
                    if a != b {
                        self.blocked.insert((a, b));
                        self.blocked.insert((b, a));
                    }
                }
                self.log(|| format!("isolate n{}", a + 1));
            }
            32..45 => {
                self.blocked.clear();
                self.log(|| "heal".into());
            }
            45..60 => {
                let up = self.up_devices();
                // Keep enough devices up that progress is possible most of the time.
                if up.len() + 1 >= count.saturating_sub(1) && !up.is_empty() {
                    let device = up[self.rng.random_range(0..up.len())];
                    let offline = if self.rng.random_range(0..10) == 0 {
                        self.rng.random_range(OFFLINE_LONG_MS)
                    } else {
                        self.rng.random_range(10..2_000)
                    };
                    self.crash(device, "nemesis");
                    let incarnation = self.devices[device].incarnation;
                    self.schedule(
                        self.now_ms + offline,
                        Event::Restart {
                            device,
                            incarnation,
                        },
                    );
                }
            }
            60..66 => {
                let device = self.rng.random_range(0..count);
                let jump = self.rng.random_range(500..20_000);
                self.devices[device].clock_offset_ms += jump;
                self.log(|| format!("n{} clock jumps {jump} ms", device + 1));
                // Its armed timers now fire earlier in global time.
                let timers: Vec<(Timer, u64)> = self.devices[device]
                    .timers
                    .iter()
                    .map(|(t, at)| (*t, *at))
                    .collect();
                let incarnation = self.devices[device].incarnation;
                for (timer, at_device_ms) in timers {
                    let global = at_device_ms
                        .saturating_sub(self.devices[device].clock_offset_ms)
                        .max(self.now_ms);
                    self.schedule(
                        global,
                        Event::Timer {
                            device,
                            incarnation,
                            timer,
                            at_device_ms,
                        },
                    );
                }
            }
            66..70 => {
                // Everybody sleeps (global suspend): time passes, nothing runs.
                let jump = self.rng.random_range(500..5_000);
                self.log(|| format!("global clock jumps {jump} ms"));
                self.now_ms += jump;
            }
            70..82 => {
                if self.config.reconfigure {
                    self.reconfigure();
                }
            }
            82..90 => self.compact_somewhere(),
            _ => {
                self.drop_per_mille = self
                    .rng
                    .random_range(0..=self.config.drop_per_mille.max(1) * 2);
                self.duplicate_per_mille = self
                    .rng
                    .random_range(0..=self.config.duplicate_per_mille.max(1));
                self.delay_ms_max = self
                    .rng
                    .random_range(1..=self.config.delay_ms_max.max(1) * 3);
                self.roll_link_rtts();
                self.log(|| "network rates change".into());
            }
        }
    }

    fn reconfigure(&mut self) {
        let Some(leader) = (0..self.devices.len()).find(|&d| {
            self.devices[d]
                .node
                .as_ref()
                .is_some_and(|node| node.is_leader())
        }) else {
            return;
        };
        let Some(current) = self.devices[leader]
            .node
            .as_ref()
            .map(|n| n.config().clone())
        else {
            return;
        };
        let all: Vec<NodeId> = self.devices.iter().map(|d| d.id).collect();
        let outsiders: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !current.is_member(*id))
            .collect();
        let mut voters = current.voters.clone();
        let mut learners = current.learners.clone();
        let plain_voters: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| !current.witnesses.contains(v))
            .collect();
        let (q1, q2) = (current.phase1_quorum, current.phase2_quorum);
        let learner_list: Vec<NodeId> = learners.iter().copied().collect();
        let keeps_quorums = match self.rng.random_range(0..5) {
            0 if !outsiders.is_empty() => {
                learners.insert(outsiders[self.rng.random_range(0..outsiders.len())]);
                true
            }
            1 if !learner_list.is_empty() && voters.len() < 5 => {
                let learner = learner_list[self.rng.random_range(0..learner_list.len())];
                learners.remove(&learner);
                voters.insert(learner);
                false
            }
            2 if plain_voters.len() > 2 => {
                // Demote a voter (possibly the leader itself) to learner.
                let voter = plain_voters[self.rng.random_range(0..plain_voters.len())];
                voters.remove(&voter);
                learners.insert(voter);
                false
            }
            3 if !learner_list.is_empty() => {
                let learner = learner_list[self.rng.random_range(0..learner_list.len())];
                learners.remove(&learner);
                true
            }
            4 if plain_voters.len() > 2 => {
                let voter = plain_voters[self.rng.random_range(0..plain_voters.len())];
                voters.remove(&voter);
                false
            }
            _ => return,
        };
        let next_id = current.id.next();
        let next = if keeps_quorums {
            Config::new(next_id, voters, current.witnesses.clone(), learners, q1, q2)
        } else {
            Config::majority(next_id, voters, current.witnesses.clone(), learners)
        };
        let Ok(next) = next else {
            return;
        };
        self.log(|| format!("n{} reconfigures to {next:?}", leader + 1));
        let now = self.device_now(leader);
        if let Some(node) = self.devices[leader].node.as_mut()
            && let Ok(effects) = node.reconfigure(now, next)
        {
            self.execute(leader, effects);
        }
    }

    fn compact_somewhere(&mut self) {
        let up = self.up_devices();
        if up.is_empty() {
            return;
        }
        let device = up[self.rng.random_range(0..up.len())];
        let applied_next = self.devices[device].sm.applied_next;
        let Some(through) = applied_next.0.checked_sub(1).map(Slot) else {
            return;
        };
        // Only slots this node has committed and not yet compacted may be compacted.
        let committed = self.devices[device]
            .node
            .as_ref()
            .is_some_and(|node| through < node.commit_index());
        if !committed || self.devices[device].durable_snapshot_slot >= Some(through) {
            return;
        }
        let state = encode_kv(&self.devices[device].sm.kv);
        let now = self.device_now(device);
        self.log(|| format!("n{} compacts through {through}", device + 1));
        if let Some(node) = self.devices[device].node.as_mut() {
            match node.compact(now, through, state) {
                Ok(effects) => self.execute(device, effects),
                Err(error) => {
                    let detail = format!(
                        "n{} refused to compact an applied slot: {error}",
                        device + 1
                    );
                    self.fail("snapshot", detail);
                }
            }
        }
    }

    fn end_faults(&mut self) {
        self.log(|| "faults end".into());
        self.faults_on = false;
        self.faults_ended_ms = self.now_ms;
        self.blocked.clear();
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        self.delay_ms_max = 5;
        for device in 0..self.devices.len() {
            if self.devices[device].node.is_none() {
                let incarnation = self.devices[device].incarnation;
                self.schedule(
                    self.now_ms + 1,
                    Event::Restart {
                        device,
                        incarnation,
                    },
                );
            }
        }
        let members = self.latest_members();
        for client in 0..self.clients.len() {
            let device_id = self.devices[self.clients[client].device].id;
            if members.contains(&device_id) {
                self.clients[client].probe_due = true;
                let at = self.now_ms + self.rng.random_range(0..100);
                self.schedule(at, Event::ClientTick { client });
            }
        }
        self.schedule(self.now_ms + 100, Event::ConvergenceCheck);
    }

    /// Members (voters and learners) of the newest configuration any device knows.
    fn latest_members(&self) -> BTreeSet<NodeId> {
        self.configs
            .values()
            .next_back()
            .map(|config| config.voters.union(&config.learners).copied().collect())
            .unwrap_or_default()
    }

    fn latest_config(&self) -> Option<&Config> {
        self.configs.values().next_back()
    }

    fn converged(&self) -> bool {
        self.convergence_report().is_empty()
    }

    /// Empty when converged; otherwise what is still missing.
    fn convergence_report(&self) -> String {
        let Some(config) = self.latest_config() else {
            return "no configuration".into();
        };
        let mut missing = Vec::new();
        // A device removed from the group may still believe it leads the configuration
        // it was removed from (nobody talks to it any more); only members count.
        let leaders: Vec<NodeId> = self
            .devices
            .iter()
            .filter(|d| config.is_member(d.id))
            .filter(|d| d.node.as_ref().is_some_and(|n| n.is_leader()))
            .map(|d| d.id)
            .collect();
        let leader_commit = leaders
            .first()
            .and_then(|id| self.device_index(*id))
            .and_then(|d| self.devices[d].node.as_ref())
            .map(|n| n.commit_index());
        if leaders.len() != 1 {
            missing.push(format!("leaders {leaders:?}"));
        }
        let mut states = BTreeSet::new();
        for device in &self.devices {
            if !config.is_member(device.id) || config.witnesses.contains(&device.id) {
                continue;
            }
            let Some(node) = device.node.as_ref() else {
                missing.push(format!("{} down", device.id));
                continue;
            };
            if Some(node.commit_index()) != leader_commit {
                missing.push(format!(
                    "{} commit {} vs leader {leader_commit:?}",
                    device.id,
                    node.commit_index()
                ));
            }
            if device.sm.applied_next != node.commit_index() {
                missing.push(format!(
                    "{} applied {} of {}",
                    device.id,
                    device.sm.applied_next,
                    node.commit_index()
                ));
            }
            if node.queued() > 0 {
                missing.push(format!(
                    "{} has {} queued proposals",
                    device.id,
                    node.queued()
                ));
            }
            states.insert(encode_kv(&device.sm.kv));
        }
        if states.len() > 1 {
            missing.push(format!("{} different states", states.len()));
        }
        for client in &self.clients {
            // Devices removed from the group after faults stopped are not owed progress.
            let member = config.is_member(self.devices[client.device].id);
            if member && client.probe_due && !client.probe_done {
                missing.push(format!("client {} probe pending", client.id));
            }
        }
        missing.join("; ")
    }

    fn check_final_states(&mut self) {
        // Every applied state equals the reference sequence replayed from scratch.
        let mut expected = BTreeMap::new();
        for (entry, apply) in &self.reference {
            if let (Entry::Command(command), true) = (entry, apply)
                && let Some(input) = decode_op(&command.payload)
            {
                KvModel::apply(&mut expected, &input);
            }
        }
        let reference_len = self.reference.len() as u64;
        for device in 0..self.devices.len() {
            let sm = &self.devices[device].sm;
            if sm.applied_next.0 == reference_len && sm.kv != expected {
                let detail = format!("n{} state differs from the log replayed", device + 1);
                self.fail("prefix agreement", detail);
            }
        }
    }

    /// The history to check: a write whose outcome the client never learned and whose
    /// command no device ever applied had no effect on the state machine (it only
    /// changes by applying committed commands), so it is left out; every other unknown
    /// write stays in with return time +∞. This only prunes search space the checker
    /// would otherwise have to explore — timed-out writes that did take effect, however
    /// late, are still checked as "may have happened at any point after the call".
    fn history_to_check(&self) -> Vec<Operation<KvInput, KvOutput>> {
        let applied: std::collections::HashSet<&Command> = self
            .reference
            .iter()
            .filter_map(|(entry, apply)| match (entry, apply) {
                (Entry::Command(command), true) => Some(command),
                _ => None,
            })
            .collect();
        self.history
            .iter()
            .zip(&self.history_commands)
            .filter(
                |(operation, command)| match (operation.output.as_ref(), command) {
                    (None, Some(command)) => applied.contains(command),
                    _ => true,
                },
            )
            .map(|(operation, _)| operation.clone())
            .collect()
    }

    fn check_linearizable(&mut self) {
        let history = self.history_to_check();
        let steps_max = std::env::var("PAXOS_LINCHECK_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LINCHECK_STEPS_MAX);
        match lincheck::check_kv(&history, steps_max) {
            Verdict::Linearizable => {}
            Verdict::Unknown { .. } => {
                self.outcome.lincheck_unknown = true;
                if self.config.trace {
                    let unknown = history.iter().filter(|op| op.output.is_none()).count();
                    // Printed directly: the run passes, so no failure carries the trace.
                    println!("lincheck gave up: {} ops, {unknown} unknown", history.len());
                    for op in history.iter().filter(|op| op.output.is_none()) {
                        println!("  unknown: {op:?}");
                    }
                }
            }
            Verdict::NotLinearizable {
                partition,
                operations,
                longest_prefix,
            } => {
                let mut detail = format!("key {partition}: no linearization of\n");
                for index in &operations {
                    detail.push_str(&format!("    #{index} {:?}\n", history[*index]));
                }
                detail.push_str(&format!(
                    "  longest linearizable prefix: {longest_prefix:?}"
                ));
                self.fail("linearizability", detail);
            }
        }
    }
}
