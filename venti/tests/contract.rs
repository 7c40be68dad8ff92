//! Contract tests: every body runs against the memory and the file backend, so the two
//! cannot drift apart.

mod common;

use std::collections::HashSet;

use common::{TestResult, block, for_each_backend, put_all, small_options};
use venti::gc::Gc;
use venti::{Address, BlockStore, Class, Error, PUT_HEADROOM_BYTES, StoreOptions};

#[test]
fn put_get_contains_round_trip_across_arenas() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        // Sizes from empty to bigger than an arena, so records cross arena boundaries.
        let blocks: Vec<_> = (0..40u64)
            .map(|n| block(n, (n as usize * 7919) % 90_000))
            .collect();
        put_all(&store, &blocks, Class::Pinned)?;
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data, "before sync");
            assert!(store.contains(address)?);
        }
        store.sync()?;
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data, "after sync");
        }
        let missing = Address::of(b"never stored");
        assert!(
            matches!(store.get(&missing), Err(Error::NotFound { address }) if address == missing)
        );
        assert!(!store.contains(&missing)?);
        let stats = store.stats()?;
        assert_eq!(stats.blocks, 40);
        assert!(stats.arenas > 1, "small arenas must roll over: {stats:?}");
        assert_eq!(stats.dead_bytes, 0);
        Ok(())
    })
}

#[test]
fn synced_blocks_survive_reopen_with_a_clean_report() -> TestResult {
    for_each_backend(|backend| {
        let blocks: Vec<_> = (0..25u64).map(|n| block(n, 5000 + n as usize)).collect();
        {
            let store = backend.open(small_options())?;
            put_all(&store, &blocks, Class::Pinned)?;
            store.sync()?;
        }
        let store = backend.open(small_options())?;
        assert!(store.open_report().is_empty(), "{:?}", store.open_report());
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data);
        }
        Ok(())
    })
}

#[test]
fn written_but_unsynced_blocks_are_reindexed_after_a_process_crash() -> TestResult {
    // The process dies (the store is dropped without sync) but the OS keeps what was
    // written: the tail scan must find those records.
    for_each_backend(|backend| {
        let blocks: Vec<_> = (0..12u64).map(|n| block(n, 3000)).collect();
        {
            let store = backend.open(small_options())?;
            put_all(&store, &blocks[..6], Class::Pinned)?;
            store.sync()?;
            put_all(&store, &blocks[6..], Class::Cached)?;
        }
        let store = backend.open(small_options())?;
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data);
        }
        assert_eq!(store.class(&blocks[0].0)?, Some(Class::Pinned));
        assert_eq!(store.class(&blocks[11].0)?, Some(Class::Cached));
        Ok(())
    })
}

#[test]
fn put_refuses_bytes_that_do_not_match_their_address() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let (address, _) = block(1, 100);
        let result = store.put(&address, b"other bytes", Class::Pinned);
        assert!(matches!(result, Err(Error::AddressMismatch { address: a }) if a == address));
        assert!(!store.contains(&address)?);
        Ok(())
    })
}

#[test]
fn duplicate_puts_store_one_copy_and_pinning_upgrades() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let (address, data) = block(3, 4000);
        store.put(&address, &data, Class::Cached)?;
        store.sync()?;
        let before = store.stats()?;
        store.put(&address, &data, Class::Cached)?;
        store.sync()?;
        assert_eq!(store.stats()?.arena_bytes, before.arena_bytes);
        assert_eq!(store.class(&address)?, Some(Class::Cached));
        // A pinned put of a cached block upgrades it, never the reverse.
        store.put(&address, &data, Class::Pinned)?;
        store.put(&address, &data, Class::Cached)?;
        store.sync()?;
        assert_eq!(store.class(&address)?, Some(Class::Pinned));
        let stats = store.stats()?;
        assert_eq!(
            (stats.blocks, stats.pinned_bytes, stats.cached_bytes),
            (1, 4000, 0)
        );
        // The upgrade is written to the arena: a rebuilt index still has it pinned.
        drop(store);
        let store = venti::Store::open_rebuilding_index(backend.backend.clone(), small_options())?;
        assert_eq!(store.class(&address)?, Some(Class::Pinned));
        assert_eq!(store.get(&address)?, data);
        Ok(())
    })
}

#[test]
fn removed_blocks_stay_removed_and_compaction_frees_their_bytes() -> TestResult {
    for_each_backend(|backend| {
        let blocks: Vec<_> = (0..30u64).map(|n| block(n, 6000)).collect();
        let removed: Vec<Address> = blocks.iter().step_by(3).map(|(a, _)| *a).collect();
        {
            let store = backend.open(small_options())?;
            put_all(&store, &blocks, Class::Pinned)?;
            store.remove(&removed)?;
            for address in &removed {
                assert!(!store.contains(address)?);
            }
            let before = store.stats()?;
            assert_eq!(before.dead_bytes, 10 * (6000 + 56));
            let report = store.compact(0.0)?;
            assert!(report.arenas_rewritten > 0);
            let after = store.stats()?;
            assert_eq!(after.dead_bytes, 0);
            assert_eq!(after.arena_bytes + report.bytes_freed, before.arena_bytes);
        }
        // Still removed after reopen, and after rebuilding the index from the arenas:
        // compaction erased the records.
        for rebuild in [false, true] {
            let store = if rebuild {
                venti::Store::open_rebuilding_index(backend.backend.clone(), small_options())?
            } else {
                backend.open(small_options())?
            };
            for (address, data) in &blocks {
                if removed.contains(address) {
                    assert!(
                        !store.contains(address)?,
                        "removed block came back (rebuild={rebuild})"
                    );
                } else {
                    assert_eq!(&store.get(address)?, data);
                }
            }
        }
        Ok(())
    })
}

#[test]
fn pinned_blocks_are_never_evicted_and_cached_ones_fit_the_budget() -> TestResult {
    for_each_backend(|backend| {
        let options = StoreOptions {
            cache_bytes_max: 10 * 1000,
            ..small_options()
        };
        let store = backend.open(options)?;
        let pinned: Vec<_> = (0..20u64).map(|n| block(n, 1000)).collect();
        let cached: Vec<_> = (100..130u64).map(|n| block(n, 1000)).collect();
        put_all(&store, &pinned, Class::Pinned)?;
        put_all(&store, &cached, Class::Cached)?;
        store.sync()?;
        let stats = store.stats()?;
        assert!(stats.cached_bytes <= 10_000, "{stats:?}");
        assert_eq!(stats.pinned_bytes, 20_000);
        for (address, data) in &pinned {
            assert_eq!(&store.get(address)?, data);
        }
        let cached_left = cached
            .iter()
            .filter(|(a, _)| store.contains(a).unwrap_or(false))
            .count();
        assert_eq!(cached_left, 10);
        Ok(())
    })
}

#[test]
fn the_least_hit_cached_blocks_go_first() -> TestResult {
    for_each_backend(|backend| {
        let options = StoreOptions {
            cache_bytes_max: 3 * 1000,
            ..small_options()
        };
        let store = backend.open(options)?;
        let blocks: Vec<_> = (0..4u64).map(|n| block(n, 1000)).collect();
        put_all(&store, &blocks[..3], Class::Cached)?;
        store.sync()?;
        for _ in 0..3 {
            store.get(&blocks[0].0)?;
        }
        for _ in 0..2 {
            store.get(&blocks[1].0)?;
        }
        store.sync()?;
        // Block 2 (no reads) and the newcomer tie on hits; block 2 was hit longer ago.
        store.put(&blocks[3].0, &blocks[3].1, Class::Cached)?;
        store.sync()?;
        let present: Vec<bool> = blocks
            .iter()
            .map(|(a, _)| store.contains(a).unwrap_or(false))
            .collect();
        assert_eq!(present, vec![true, true, false, true]);
        Ok(())
    })
}

#[test]
fn ageing_lets_old_popularity_fade() -> TestResult {
    for_each_backend(|backend| {
        let options = StoreOptions {
            cache_bytes_max: 2 * 1000,
            ageing_interval_hits: 8,
            ..small_options()
        };
        let store = backend.open(options)?;
        let blocks: Vec<_> = (0..3u64).map(|n| block(n, 1000)).collect();
        put_all(&store, &blocks[..2], Class::Cached)?;
        store.sync()?;
        // Block 0 was popular once (7 reads, then halvings), block 1 is read now.
        for _ in 0..7 {
            store.get(&blocks[0].0)?;
        }
        store.sync()?;
        for _ in 0..4 {
            for _ in 0..5 {
                store.get(&blocks[1].0)?;
            }
            store.sync()?;
        }
        store.put(&blocks[2].0, &blocks[2].1, Class::Cached)?;
        store.get(&blocks[2].0)?;
        store.get(&blocks[2].0)?;
        store.sync()?;
        assert!(!store.contains(&blocks[0].0)?, "aged block must go first");
        assert!(store.contains(&blocks[1].0)?);
        assert!(store.contains(&blocks[2].0)?);
        Ok(())
    })
}

#[test]
fn unpinning_makes_a_block_evictable() -> TestResult {
    for_each_backend(|backend| {
        let options = StoreOptions {
            cache_bytes_max: 1000,
            ..small_options()
        };
        let store = backend.open(options)?;
        let blocks: Vec<_> = (0..2u64).map(|n| block(n, 1000)).collect();
        put_all(&store, &blocks, Class::Pinned)?;
        store.set_class(&blocks[0].0, Class::Cached)?;
        assert_eq!(store.class(&blocks[0].0)?, Some(Class::Cached));
        store.set_class(&blocks[1].0, Class::Cached)?;
        // Two cached blocks over a one-block budget: one went.
        let left = blocks
            .iter()
            .filter(|(a, _)| store.contains(a).unwrap_or(false))
            .count();
        assert_eq!(left, 1);
        assert!(matches!(
            store.set_class(&Address::of(b"absent"), Class::Pinned),
            Err(Error::NotFound { .. })
        ));
        Ok(())
    })
}

#[test]
fn gc_sweeps_what_is_not_live_but_keeps_blocks_put_during_the_round() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let old: Vec<_> = (0..20u64).map(|n| block(n, 2000)).collect();
        put_all(&store, &old, Class::Pinned)?;
        store.sync()?;
        let gc = Gc::begin(&store)?;
        // While the caller marks: a brand-new block, and a dead old block put again
        // (a new file reusing a chunk). Neither is in the live set.
        let (fresh, fresh_data) = block(99, 2000);
        store.put(&fresh, &fresh_data, Class::Pinned)?;
        store.put(&old[1].0, &old[1].1, Class::Pinned)?;
        let live: HashSet<Address> = old.iter().step_by(2).map(|(a, _)| *a).collect();
        let report = gc.finish(&live)?;
        assert_eq!(report.swept.len(), 9, "odd blocks except the re-put one");
        assert!(report.compaction.bytes_freed >= 9 * 2000);
        assert_eq!(store.get(&fresh)?, fresh_data);
        assert_eq!(store.get(&old[1].0)?, old[1].1);
        for (n, (address, data)) in old.iter().enumerate() {
            if n % 2 == 0 || n == 1 {
                assert_eq!(&store.get(address)?, data);
            } else {
                assert!(!store.contains(address)?);
            }
        }
        assert_eq!(store.stats()?.dead_bytes, 0);
        assert!(store.verify()?.problems.is_empty());
        Ok(())
    })
}

#[test]
fn verify_checks_every_record_of_a_clean_store() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let blocks: Vec<_> = (0..15u64).map(|n| block(n, 9000)).collect();
        put_all(&store, &blocks, Class::Pinned)?;
        let report = store.verify()?;
        assert_eq!(report.records_checked, 15);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        Ok(())
    })
}

#[test]
fn the_block_store_trait_moves_blocks() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let dyn_store: &dyn BlockStore = &store;
        let (address, data) = block(5, 777);
        dyn_store.put(&address, &data, Class::Pinned)?;
        assert!(dyn_store.contains(&address)?);
        assert_eq!(dyn_store.get(&address)?, data);
        Ok(())
    })
}

#[test]
fn an_owned_put_lets_the_caller_reuse_its_buffer_at_once() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(StoreOptions::default())?;
        let dyn_store: &dyn BlockStore = &store;
        let blocks: Vec<_> = (0..48u64).map(|n| block(n, 70_000 + n as usize)).collect();
        let mut buffer = Vec::new();
        let mut tickets = Vec::new();
        for (address, data) in &blocks {
            buffer.clear();
            buffer.resize(PUT_HEADROOM_BYTES, 0);
            buffer.extend_from_slice(data);
            tickets.push(dyn_store.put_sealed_owned(address, &mut buffer, Class::Pinned)?);
            // A store may copy (staged) or take (unstaged) the buffer; whatever it
            // leaves is the caller's, to overwrite before the put completes.
            buffer.fill(0xEE);
        }
        for ticket in tickets {
            dyn_store.wait_puts(ticket, ticket)?;
        }
        store.sync()?;
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data);
        }
        assert!(store.verify()?.problems.is_empty());
        Ok(())
    })
}

#[test]
fn oversized_blocks_are_refused() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(StoreOptions {
            verify_puts: false,
            ..small_options()
        })?;
        let data = vec![0u8; (16 << 20) + 1];
        let result = store.put(&Address::of(&data), &data, Class::Pinned);
        assert!(matches!(result, Err(Error::TooLarge { .. })));
        Ok(())
    })
}
