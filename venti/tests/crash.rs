//! Crash injection at every durability point (arena fsync, directory fsync, index
//! commit) of put/sync, removal, eviction, pinning, GC and compaction.
//!
//! Each scenario runs once per crash point k = 1, 2, … on a fresh memory backend seeded
//! with k (so torn writes differ), until a run finishes without reaching k. After each
//! crash the backend keeps only what survived, the store reopens, and the checks are:
//! every acknowledged block is there with its bytes, every block whose removal was
//! acknowledged is gone, `verify` finds nothing wrong, and the store takes new puts.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use common::{TestResult, block, put_all, small_options};
use venti::backend::MemoryBackend;
use venti::gc::Gc;
use venti::{Address, Class, PUT_HEADROOM_BYTES, Store, StoreOptions};

/// What a scenario promised before the crash.
#[derive(Default)]
struct Promises {
    /// Must be present with these bytes.
    present: Vec<(Address, Vec<u8>)>,
    /// Must be absent.
    absent: HashSet<Address>,
}

type Setup = dyn Fn(&Store) -> TestResult<Promises>;
type Scenario = dyn Fn(&Store, &RefCell<Promises>) -> venti::Result<()>;

/// Run `scenario` with a crash at every durability point in turn, once per seed (more
/// seeds, so more torn-write outcomes, with `KITH_LONG=1`).
fn crash_everywhere(options: StoreOptions, setup: &Setup, scenario: &Scenario) -> TestResult<u64> {
    let mut points = 0;
    for seed in 0..u64::from(common::cases(1, 8)) {
        points = crash_everywhere_seeded(&options, setup, scenario, seed)?;
    }
    Ok(points)
}

fn crash_everywhere_seeded(
    options: &StoreOptions,
    setup: &Setup,
    scenario: &Scenario,
    seed: u64,
) -> TestResult<u64> {
    let points_max = 10_000;
    for point in 1..points_max {
        let memory = MemoryBackend::new(point + seed * points_max)?;
        let store = Store::open(Arc::new(memory.clone()), options.clone())?;
        let promises = RefCell::new(setup(&store)?);
        store.sync()?;
        memory.crash_at(Some(point));
        let outcome = scenario(&store, &promises);
        let crashed = memory.has_crashed();
        if !crashed {
            outcome?;
        }
        drop(store);
        memory.restart();
        let store = Store::open(Arc::new(memory.clone()), options.clone())
            .map_err(|error| format!("reopen after crash at point {point}: {error}"))?;
        let promises = promises.into_inner();
        for (address, data) in &promises.present {
            let got = store.get(address).map_err(|error| {
                format!("crash at point {point}: acknowledged block {address:?}: {error}")
            })?;
            assert_eq!(&got, data, "crash at point {point}");
        }
        for address in &promises.absent {
            assert!(
                !store.contains(address)?,
                "crash at point {point}: removed block {address:?} is back"
            );
        }
        let report = store.verify()?;
        assert!(
            report.problems.is_empty(),
            "crash at point {point}: {:?}",
            report.problems
        );
        let (address, data) = block(1_000_000 + point, 1234);
        store.put(&address, &data, Class::Pinned)?;
        store.sync()?;
        assert_eq!(store.get(&address)?, data);
        if !crashed {
            return Ok(point);
        }
    }
    Err(format!("scenario still crashing after {points_max} points").into())
}

fn no_setup(_: &Store) -> TestResult<Promises> {
    Ok(Promises::default())
}

/// Blocks `from..to` of varied sizes; several cross the 64 KiB arena limit together.
fn blocks(from: u64, to: u64) -> Vec<(Address, Vec<u8>)> {
    sized_blocks(from, to, 1000, 3571, 20_000)
}

/// Blocks `from..to`, block `n` of `base + (n * step) % spread` bytes.
fn sized_blocks(
    from: u64,
    to: u64,
    base: usize,
    step: usize,
    spread: usize,
) -> Vec<(Address, Vec<u8>)> {
    (from..to)
        .map(|n| block(n, base + (n as usize * step) % spread))
        .collect()
}

#[test]
fn crash_during_puts_and_syncs_loses_nothing_acknowledged() -> TestResult {
    let points = crash_everywhere(small_options(), &no_setup, &|store, promises| {
        for batch in blocks(0, 24).chunks(6) {
            put_all(store, batch, Class::Pinned)?;
            store.sync()?;
            promises.borrow_mut().present.extend(batch.iter().cloned());
        }
        Ok(())
    })?;
    assert!(
        points > 8,
        "the scenario must cross several sync points, saw {points}"
    );
    Ok(())
}

#[test]
fn crash_during_queued_puts_and_syncs_loses_nothing_acknowledged() -> TestResult {
    // The tree writer's path: buffers handed to the store's writer thread.
    let points = crash_everywhere(small_options(), &no_setup, &|store, promises| {
        for batch in blocks(300, 324).chunks(6) {
            let mut tickets = Vec::new();
            for (address, data) in batch {
                let mut buffer = vec![0; PUT_HEADROOM_BYTES];
                buffer.extend_from_slice(data);
                tickets.push(store.put_sealed_owned(address, &mut buffer, Class::Pinned)?);
            }
            if let (Some(first), Some(last)) = (tickets.iter().min(), tickets.iter().max()) {
                store.wait_puts(*first, *last)?;
            }
            store.sync()?;
            promises.borrow_mut().present.extend(batch.iter().cloned());
        }
        Ok(())
    })?;
    assert!(
        points > 8,
        "the scenario must cross several sync points, saw {points}"
    );
    Ok(())
}

/// Blocks `from..to` of 100–300 KB (sealed-chunk sizes): a few make a full stage.
fn large_blocks(from: u64, to: u64) -> Vec<(Address, Vec<u8>)> {
    sized_blocks(from, to, 100_000, 7919, 200_000)
}

#[test]
fn crash_during_staged_appends_keeps_every_synced_tail() -> TestResult {
    // Large arenas, so the writer thread's stage fills (direct writes of whole
    // stages) and every sync leaves an unaligned tail that the next direct write
    // covers again; single puts in between take the write-now path. A crash keeps any
    // subset of the unsynced writes, some torn: the synced records under a rewritten
    // block must survive all of them.
    let options = StoreOptions::default();
    let points = crash_everywhere(options, &no_setup, &|store, promises| {
        let mut n = 500;
        for round in 0..6u64 {
            let batch = large_blocks(n, n + 8 + round * 5);
            n += batch.len() as u64;
            let mut tickets = Vec::new();
            for (address, data) in &batch {
                let mut buffer = vec![0; PUT_HEADROOM_BYTES];
                buffer.extend_from_slice(data);
                tickets.push(store.put_sealed_owned(address, &mut buffer, Class::Pinned)?);
            }
            if let (Some(first), Some(last)) = (tickets.iter().min(), tickets.iter().max()) {
                store.wait_puts(*first, *last)?;
            }
            let single = block(10_000 + round, 777 + round as usize * 1000);
            store.put(&single.0, &single.1, Class::Pinned)?;
            store.sync()?;
            let mut promises = promises.borrow_mut();
            promises.present.extend(batch);
            promises.present.push(single);
        }
        Ok(())
    })?;
    assert!(
        points > 8,
        "the scenario must cross several sync points, saw {points}"
    );
    Ok(())
}

#[test]
fn crash_during_remove_never_brings_back_a_removed_block() -> TestResult {
    let setup = |store: &Store| -> TestResult<Promises> {
        let all = blocks(0, 20);
        put_all(store, &all, Class::Pinned)?;
        Ok(Promises {
            present: all,
            absent: HashSet::new(),
        })
    };
    crash_everywhere(small_options(), &setup, &|store, promises| {
        let victims: Vec<Address> = promises
            .borrow()
            .present
            .iter()
            .step_by(2)
            .map(|(a, _)| *a)
            .collect();
        // Unsynced puts first: remove must commit them before it deletes.
        let extra = blocks(100, 104);
        put_all(store, &extra, Class::Pinned)?;
        store.remove(&victims)?;
        let mut promises = promises.borrow_mut();
        promises.present.retain(|(a, _)| !victims.contains(a));
        promises.present.extend(extra);
        promises.absent.extend(victims);
        Ok(())
    })?;
    Ok(())
}

#[test]
fn crash_during_compaction_keeps_live_blocks_and_erases_dead_ones() -> TestResult {
    let setup = |store: &Store| -> TestResult<Promises> {
        let all = blocks(0, 30);
        put_all(store, &all, Class::Pinned)?;
        let dead: Vec<Address> = all.iter().skip(1).step_by(3).map(|(a, _)| *a).collect();
        store.remove(&dead)?;
        Ok(Promises {
            present: all.into_iter().filter(|(a, _)| !dead.contains(a)).collect(),
            absent: dead.into_iter().collect(),
        })
    };
    let points = crash_everywhere(small_options(), &setup, &|store, _| {
        let report = store.compact(0.0)?;
        assert!(report.arenas_rewritten > 1);
        Ok(())
    })?;
    assert!(
        points > 6,
        "compaction must cross several sync points, saw {points}"
    );
    Ok(())
}

#[test]
fn crash_during_gc_keeps_live_blocks_and_blocks_put_during_the_round() -> TestResult {
    let setup = |store: &Store| -> TestResult<Promises> {
        let all = blocks(0, 24);
        put_all(store, &all, Class::Pinned)?;
        Ok(Promises {
            present: all,
            absent: HashSet::new(),
        })
    };
    crash_everywhere(small_options(), &setup, &|store, promises| {
        let old = promises.borrow().present.clone();
        let live: HashSet<Address> = old.iter().step_by(2).map(|(a, _)| *a).collect();
        // From here on the dead blocks may go at any point; the live ones must stay.
        promises
            .borrow_mut()
            .present
            .retain(|(a, _)| live.contains(a));
        let gc = Gc::begin(store)?;
        let during = blocks(200, 206);
        put_all(store, &during, Class::Pinned)?;
        let report = gc.finish(&live)?;
        let mut promises = promises.borrow_mut();
        promises.present.extend(during);
        promises.absent.extend(report.swept);
        Ok(())
    })?;
    Ok(())
}

#[test]
fn crash_during_eviction_and_pinning_keeps_pinned_blocks() -> TestResult {
    let options = StoreOptions {
        cache_bytes_max: 40_000,
        ..small_options()
    };
    let setup = |store: &Store| -> TestResult<Promises> {
        let pinned = blocks(0, 8);
        put_all(store, &pinned, Class::Pinned)?;
        put_all(store, &blocks(50, 54), Class::Cached)?;
        Ok(Promises {
            present: pinned,
            absent: HashSet::new(),
        })
    };
    crash_everywhere(options, &setup, &|store, promises| {
        // Pin a cached block (a new record), then overflow the cache budget.
        let (address, data) = blocks(50, 51).remove(0);
        store.set_class(&address, Class::Pinned)?;
        promises.borrow_mut().present.push((address, data));
        let more = blocks(60, 70);
        put_all(store, &more, Class::Cached)?;
        store.sync()?;
        assert!(store.stats()?.cached_bytes <= 40_000);
        Ok(())
    })?;
    Ok(())
}
