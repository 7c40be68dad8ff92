//! Seeded whole-group simulation of the real Paxos core (see `support/sim.rs` for the
//! world and the invariants).
//!
//! - `seeds_in_time_box`: by default a FIXED range of `SEEDS_DEFAULT` seeds, so the
//!   verdict never depends on how fast the machine is (a time box that reaches further
//!   on a quiet machine would make CI flaky the day a seed beyond the usual reach
//!   fails). `PAXOS_SEEDS=N` runs exactly N seeds; `PAXOS_SIM_SECONDS=S` (or
//!   `KITH_LONG=1` → 20 min) explores as many seeds as fit in S seconds — for hunting,
//!   never the default. All start at `PAXOS_SEED_START` (default 0). (The test keeps
//!   its old name because CI invokes it by name.)
//! - `replay_seed`: `PAXOS_SEED=N` replays one seed (add `PAXOS_TRACE=1` for the
//!   event trace).
//! - `regression_seeds`: every seed that once found a bug.
//! - `lying_disk_is_caught`: the checks bite — a disk that forgets synced writes must
//!   make some seed break a safety invariant.

#[path = "support/lincheck.rs"]
mod lincheck;
#[path = "support/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use sim::{Outcome, run_seed};

/// Seeds that found bugs (see `/work/briefs/paxos-bugs.md`); they must keep passing.
/// 34, 272: a leader behind its acceptors re-proposed a committed slot forever (B2).
/// 40: a voter restarted after a reconfiguration never armed its election timer (B1).
/// 17544: a restarted follower reused a read id; the leader's late reply to its
/// pre-crash request served a new read at a stale index (linearizability).
/// 7499, 8828, 8960: reported failing `liveness` by a CI time-box run at bc3b70d; they
/// pass when replayed (or run in a range) at bc3b70d and later, so no cause was found —
/// kept here so they stay covered beyond `SEEDS_DEFAULT`.
/// (Seeds replay different paths once the core changes; the focused reproductions live
/// in `tests/regressions.rs`.)
const REGRESSION_SEEDS: &[u64] = &[34, 40, 272, 7499, 8828, 8960, 17544];

/// Stop collecting after this many failing seeds.
const FAILURES_MAX: usize = 10;

/// Seeds the default run covers (about 50 s on the 2-core CI box, 60–80 s on a loaded
/// one). Seeds 0..40000 all passed when this was set; raise it only after running the
/// new range (`PAXOS_SEED_START=… PAXOS_SEEDS=…`).
const SEEDS_DEFAULT: u64 = 8_000;

/// How much to run: a fixed number of seeds, or as many as fit in a time box.
#[derive(Clone, Copy, Debug)]
enum Extent {
    Seeds(u64),
    TimeBox(Duration),
}

impl Extent {
    fn from_env() -> Extent {
        if let Some(seeds) = env_u64("PAXOS_SEEDS") {
            return Extent::Seeds(seeds);
        }
        let seconds =
            env_u64("PAXOS_SIM_SECONDS").or_else(|| std::env::var_os("KITH_LONG").map(|_| 1200));
        match seconds {
            Some(seconds) => Extent::TimeBox(Duration::from_secs(seconds)),
            None => Extent::Seeds(SEEDS_DEFAULT),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    slots: u64,
    commands: u64,
    reconfigurations: u64,
    crashes: u64,
    snapshots: u64,
    handoffs: u64,
    ops_ok: u64,
    ops_unknown: u64,
    reads_ok: u64,
    lincheck_unknown: u64,
    /// Seeds whose history the checker could not decide within its budget.
    lincheck_unknown_seeds: Vec<u64>,
    messages: u64,
    dropped: u64,
}

impl Totals {
    fn add(&mut self, seed: u64, outcome: &Outcome) {
        if outcome.lincheck_unknown && self.lincheck_unknown_seeds.len() < 10 {
            self.lincheck_unknown_seeds.push(seed);
        }
        self.seeds += 1;
        self.slots += outcome.slots_committed;
        self.commands += outcome.commands_applied;
        self.reconfigurations += outcome.reconfigurations;
        self.crashes += outcome.crashes;
        self.snapshots += outcome.snapshots_installed;
        self.handoffs += outcome.handoffs;
        self.ops_ok += outcome.ops_ok;
        self.ops_unknown += outcome.ops_unknown;
        self.reads_ok += outcome.reads_ok;
        self.lincheck_unknown += u64::from(outcome.lincheck_unknown);
        self.messages += outcome.messages_sent;
        self.dropped += outcome.messages_dropped;
    }
}

fn run_or_panic(seed: u64) -> Outcome {
    match run_seed(seed) {
        Ok(outcome) => outcome,
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn seeds_in_time_box() {
    if std::env::var_os("PAXOS_SEED").is_some() {
        return; // replay_seed handles it.
    }
    let start = env_u64("PAXOS_SEED_START").unwrap_or(0);
    let extent = Extent::from_env();
    let began = Instant::now();
    let mut totals = Totals::default();
    let mut failures: Vec<sim::Failure> = Vec::new();
    let mut seed = start;
    loop {
        match extent {
            Extent::Seeds(n) if totals.seeds >= n => break,
            Extent::TimeBox(budget) if began.elapsed() >= budget => break,
            _ => {}
        }
        match run_seed(seed) {
            Ok(outcome) => totals.add(seed, &outcome),
            Err(failure) => {
                totals.seeds += 1;
                failures.push(failure);
                if failures.len() >= FAILURES_MAX {
                    break;
                }
            }
        }
        seed += 1;
    }
    println!(
        "simulated seeds {start}..{seed} in {:.1} s: {totals:?}",
        began.elapsed().as_secs_f64()
    );
    if let Some(first) = failures.first() {
        let seeds: Vec<String> = failures
            .iter()
            .map(|f| format!("{} ({})", f.seed, f.invariant))
            .collect();
        panic!(
            "{} of {} seeds failed: {}\nfirst failure:\n{first}",
            failures.len(),
            totals.seeds,
            seeds.join(", ")
        );
    }
    // The run must have exercised what it claims to check, or passing means little.
    assert!(totals.seeds >= 20, "only {} seeds ran", totals.seeds);
    assert!(
        totals.commands > totals.seeds,
        "almost nothing committed: {totals:?}"
    );
    assert!(
        totals.crashes > 0 && totals.ops_unknown > 0 && totals.reads_ok > 0,
        "{totals:?}"
    );
    assert!(
        totals.reconfigurations > 0,
        "no reconfiguration completed: {totals:?}"
    );
    assert!(
        totals.snapshots > 0,
        "no snapshot was ever installed: {totals:?}"
    );
    assert!(
        totals.handoffs > 0,
        "no leadership hand-off by latency happened: {totals:?}"
    );
}

#[test]
fn replay_seed() {
    let Some(seed) = env_u64("PAXOS_SEED") else {
        return;
    };
    let outcome = run_or_panic(seed);
    println!("seed {seed}: {outcome:?}");
}

#[test]
fn regression_seeds() {
    for &seed in REGRESSION_SEEDS {
        run_or_panic(seed);
    }
}

/// The checks must bite: with a disk that loses synced writes on a crash (amnesia — the
/// one fault Paxos cannot survive), some seed must break a safety invariant. The
/// driver-contract checks are off in that mode, so agreement, prefix agreement,
/// at-most-once or linearizability has to catch it.
#[test]
fn lying_disk_is_caught() {
    const SAFETY: [&str; 5] = [
        "agreement",
        "committed entries never change",
        "prefix agreement",
        "at most once",
        "linearizability",
    ];
    let mut caught = Vec::new();
    let mut tried = 0;
    for seed in 0..SEEDS_LYING_MAX {
        let mut config = sim::SimConfig::from_seed(seed);
        config.disk_lies = true;
        config.crash_mid_effects_per_100k = 200;
        config.nemesis_interval_ms = 150;
        tried += 1;
        if let Err(failure) = sim::run_config(config)
            && SAFETY.contains(&failure.invariant)
        {
            if caught.is_empty() {
                println!("first: {}", failure.detail);
            }
            caught.push((seed, failure.invariant));
            if caught.len() >= 3 {
                break;
            }
        }
    }
    println!(
        "lying disk: {} of {tried} seeds broke safety: {caught:?}",
        caught.len()
    );
    assert!(
        !caught.is_empty(),
        "{tried} seeds with a lying disk and no safety violation detected"
    );
}

const SEEDS_LYING_MAX: u64 = 400;
