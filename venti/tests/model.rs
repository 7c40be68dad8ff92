//! Model-based tests: random put/get/remove/sync/gc/compact/crash/reopen sequences on
//! the real store, checked after every step against a `HashMap` reference.
//!
//! The reference knows, per block, whether it is *durable* (a sync or a deleting
//! operation committed it) or only *written*. After a crash a durable block must be
//! there with its bytes; a written one may or may not be (and the reference learns
//! which); a block never put or acknowledged as removed must be absent; `verify` must
//! find nothing wrong.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{TestResult, block, cases, small_options};
use proptest::prelude::*;
use venti::backend::{Backend, FileBackend, MemoryBackend};
use venti::gc::Gc;
use venti::{Address, Class, Error, Store};

/// Blocks are drawn from a small universe so operations collide often.
const UNIVERSE: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Put {
        block: u64,
        pinned: bool,
    },
    Get {
        block: u64,
    },
    Remove {
        blocks: Vec<u64>,
    },
    Sync,
    /// GC keeping `live`, with `during` put between begin and finish.
    Gc {
        live: Vec<u64>,
        during: Vec<u64>,
    },
    Compact,
    /// Drop the store without syncing and reopen (process crash; the OS keeps writes).
    Reopen,
    /// Power loss: unsynced writes lost or torn (memory backend only).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let block = 0..UNIVERSE;
    prop_oneof![
        6 => (block.clone(), any::<bool>()).prop_map(|(block, pinned)| Op::Put { block, pinned }),
        4 => block.clone().prop_map(|block| Op::Get { block }),
        1 => proptest::collection::vec(block.clone(), 1..4).prop_map(|blocks| Op::Remove { blocks }),
        2 => Just(Op::Sync),
        1 => (proptest::collection::vec(block.clone(), 0..16), proptest::collection::vec(block, 0..3))
            .prop_map(|(live, during)| Op::Gc { live, during }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn data(n: u64) -> (Address, Vec<u8>) {
    block(n, 200 + (n as usize * 2311) % 9000)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Certainty {
    Durable,
    Written,
}

struct Model {
    blocks: HashMap<u64, Certainty>,
}

impl Model {
    fn make_durable(&mut self) {
        for certainty in self.blocks.values_mut() {
            *certainty = Certainty::Durable;
        }
    }
}

fn run(ops: &[Op], memory: Option<MemoryBackend>, backend: Arc<dyn Backend>) -> TestResult {
    let options = small_options();
    let mut store = Store::open(backend.clone(), options.clone())?;
    let mut model = Model {
        blocks: HashMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Put { block, pinned } => {
                let (address, bytes) = data(*block);
                let class = if *pinned {
                    Class::Pinned
                } else {
                    Class::Cached
                };
                store.put(&address, &bytes, class)?;
                model.blocks.entry(*block).or_insert(Certainty::Written);
            }
            Op::Get { block } => {
                let (address, bytes) = data(*block);
                match (store.get(&address), model.blocks.contains_key(block)) {
                    (Ok(got), true) => assert_eq!(got, bytes, "step {step}"),
                    (Err(Error::NotFound { .. }), false) => {}
                    (other, expected) => {
                        return Err(format!(
                            "step {step}: get {block}: {other:?}, expected present={expected}"
                        )
                        .into());
                    }
                }
            }
            Op::Remove { blocks } => {
                let addresses: Vec<Address> = blocks.iter().map(|n| data(*n).0).collect();
                store.remove(&addresses)?;
                model.make_durable();
                for n in blocks {
                    model.blocks.remove(n);
                }
            }
            Op::Sync => {
                store.sync()?;
                model.make_durable();
            }
            Op::Gc { live, during } => {
                let gc = Gc::begin(&store)?;
                model.make_durable();
                for n in during {
                    let (address, bytes) = data(*n);
                    store.put(&address, &bytes, Class::Pinned)?;
                }
                let live_set: HashSet<Address> = live.iter().map(|n| data(*n).0).collect();
                gc.finish(&live_set)?;
                model
                    .blocks
                    .retain(|n, _| live.contains(n) || during.contains(n));
                for n in during {
                    model.blocks.insert(*n, Certainty::Durable);
                }
                model.make_durable();
                assert_eq!(
                    store.stats()?.dead_bytes,
                    0,
                    "step {step}: GC left dead bytes"
                );
            }
            Op::Compact => {
                store.compact(0.0)?;
                model.make_durable();
            }
            Op::Reopen | Op::Crash => {
                drop(store);
                if let (Op::Crash, Some(memory)) = (op, &memory) {
                    memory.restart();
                }
                store = Store::open(backend.clone(), options.clone())?;
                let mut settled = HashMap::new();
                for (n, certainty) in &model.blocks {
                    let present = store.contains(&data(*n).0)?;
                    if *certainty == Certainty::Durable && !present {
                        return Err(format!("step {step}: durable block {n} lost").into());
                    }
                    if present {
                        settled.insert(*n, Certainty::Durable);
                    }
                }
                model.blocks = settled;
                let report = store.verify()?;
                assert!(
                    report.problems.is_empty(),
                    "step {step}: {:?}",
                    report.problems
                );
            }
        }
        // Nothing outside the model is ever present.
        for n in 0..UNIVERSE {
            if !model.blocks.contains_key(&n) {
                assert!(
                    !store.contains(&data(n).0)?,
                    "step {step}: block {n} should be absent"
                );
            }
        }
    }
    for (n, _) in model.blocks.iter() {
        let (address, bytes) = data(*n);
        assert_eq!(store.get(&address)?, bytes);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48, 1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..60), seed: u64) {
        let memory = MemoryBackend::new(seed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        run(&ops, Some(memory.clone()), Arc::new(memory)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    #[test]
    fn file_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let backend = FileBackend::new(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The file backend cannot lose writes on demand: Crash acts like Reopen.
        run(&ops, None, Arc::new(backend)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
