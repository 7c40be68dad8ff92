//! GC over real hash trees: mark from roots with `mark_tree`, sweep and compact, then
//! the live trees read back whole and the dead tree's own blocks are gone.

mod common;

use std::collections::HashSet;

use common::{TestResult, bytes, for_each_backend, small_options};
use venti::gc::{Gc, mark_tree};
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{Address, BlockRef, Class, Store, StoreOptions};

fn write_tree(store: &Store, keys: &EpochKeys, data: &[u8]) -> venti::Result<BlockRef> {
    let mut writer = TreeWriter::new(store, keys, Class::Pinned).with_threads(0);
    writer.write(data)?;
    writer.finish()
}

fn addresses(reader: &TreeReader<'_>, root: &BlockRef) -> venti::Result<HashSet<Address>> {
    let mut set = HashSet::new();
    mark_tree(reader, root, &mut set)?;
    Ok(set)
}

#[test]
fn gc_from_roots_keeps_live_trees_and_erases_a_dead_one() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(StoreOptions {
            arena_bytes_max: 1 << 20,
            ..small_options()
        })?;
        let keys = EpochKeys::derive(&[3; 32], &[4; 16], 1);
        let kept_data = bytes(1, 3 << 20);
        // The dead tree shares its first megabyte with the kept one.
        let mut dead_data = kept_data[..1 << 20].to_vec();
        dead_data.extend(bytes(2, 2 << 20));
        let kept = write_tree(&store, &keys, &kept_data)?;
        let dead = write_tree(&store, &keys, &dead_data)?;
        store.sync()?;

        let reader = TreeReader::new(&store, &keys);
        let kept_blocks = addresses(&reader, &kept)?;
        let dead_blocks = addresses(&reader, &dead)?;
        let shared: HashSet<Address> = kept_blocks.intersection(&dead_blocks).copied().collect();
        assert!(!shared.is_empty(), "the trees must share leaves");
        assert!(kept_blocks.len() > 10);

        let gc = Gc::begin(&store)?;
        let mut live = HashSet::new();
        mark_tree(&reader, &kept, &mut live)?;
        let report = gc.finish(&live)?;

        let swept: HashSet<Address> = report.swept.iter().copied().collect();
        let dead_only: HashSet<Address> = dead_blocks.difference(&kept_blocks).copied().collect();
        assert_eq!(swept, dead_only);
        assert_eq!(TreeReader::new(&store, &keys).read_all(&kept)?, kept_data);
        for address in &dead_only {
            assert!(!store.contains(address)?);
        }
        assert_eq!(store.stats()?.dead_bytes, 0);
        Ok(())
    })
}

#[test]
fn a_round_from_an_earlier_fence_keeps_everything_put_since() -> TestResult {
    for_each_backend(|backend| {
        let store = backend.open(small_options())?;
        let keys = EpochKeys::derive(&[5; 32], &[6; 16], 1);
        let old_dead = write_tree(&store, &keys, &bytes(7, 300_000))?;
        let fence = venti::gc::fence(&store)?;
        let young_unnamed = write_tree(&store, &keys, &bytes(8, 300_000))?;
        // A block from before the fence put again since is young too.
        let again = write_tree(&store, &keys, &bytes(9, 300_000))?;
        let fence_after_again = venti::gc::fence(&store)?;
        write_tree(&store, &keys, &bytes(9, 300_000))?;
        store.sync()?;

        let reader = TreeReader::new(&store, &keys);
        let old_blocks = addresses(&reader, &old_dead)?;
        let young_blocks = addresses(&reader, &young_unnamed)?;
        let again_blocks = addresses(&reader, &again)?;
        // Nothing is live: only age decides.
        let report = Gc::from_fence(&store, fence).finish(&HashSet::new())?;
        let swept: HashSet<Address> = report.swept.iter().copied().collect();
        assert_eq!(swept, old_blocks);
        let later = Gc::from_fence(&store, fence_after_again).finish(&HashSet::new())?;
        let swept_later: HashSet<Address> = later.swept.iter().copied().collect();
        assert_eq!(swept_later, young_blocks, "the block put again stays");
        assert_eq!(
            TreeReader::new(&store, &keys).read_all(&again)?,
            bytes(9, 300_000)
        );
        assert!(
            again_blocks
                .iter()
                .all(|a| store.contains(a).unwrap_or(false))
        );
        Ok(())
    })
}
