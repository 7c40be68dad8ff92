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
