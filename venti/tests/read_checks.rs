//! A tree read from the store's own arenas skips the address hash
//! (`Store::get_for_open`): damage must still be refused, with the same precise error
//! (`Error::Damaged` naming the block, its arena and offset), for the damaged range
//! only. Each test damages a synced file store on disk, reopens it and reads.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{TestResult, bytes};
use venti::arena::{RECORD_HEADER_BYTES, arena_name};
use venti::backend::FileBackend;
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{Address, BlockRef, Class, Error, Store, StoreOptions};

const CONTENT_BYTES: usize = 3 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    keys: EpochKeys,
    content: Vec<u8>,
    root: BlockRef,
    /// The tree's leaves in content order, with where each starts.
    leaves: Vec<(u64, BlockRef)>,
}

/// Where the index says a block's record is.
#[derive(Clone, Copy, Debug)]
struct Row {
    arena: u32,
    offset: u64,
    length: u32,
}

impl Fixture {
    fn new() -> TestResult<Fixture> {
        let dir = tempfile::tempdir()?;
        let keys = EpochKeys::derive(&[3; 32], &[4; 16], 0);
        let content = bytes(11, CONTENT_BYTES);
        let store = Fixture::open_dir(dir.path())?;
        let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
        writer.write(&content)?;
        let root = writer.finish()?;
        store.sync()?;
        let mut refs = Vec::new();
        TreeReader::new(&store, &keys).walk(&root, |block_ref| {
            refs.push(*block_ref);
            Ok(true)
        })?;
        // The walk visits parents first and children in order; leaves are the refs no
        // pointer block lists as a pointer, i.e. those of the last level.
        let mut leaves = Vec::new();
        let mut at = 0;
        for block_ref in refs.iter().skip(1) {
            if is_leaf(&store, &keys, block_ref) {
                leaves.push((at, *block_ref));
                at += block_ref.length;
            }
        }
        assert_eq!(at, CONTENT_BYTES as u64, "leaves cover the content");
        assert!(leaves.len() >= 8, "{} leaves", leaves.len());
        Ok(Fixture {
            dir,
            keys,
            content,
            root,
            leaves,
        })
    }

    fn open_dir(dir: &Path) -> venti::Result<Store> {
        Store::open(Arc::new(FileBackend::new(dir)?), StoreOptions::default())
    }

    fn open(&self) -> venti::Result<Store> {
        Fixture::open_dir(self.dir.path())
    }

    fn index(&self) -> rusqlite::Result<rusqlite::Connection> {
        rusqlite::Connection::open(self.dir.path().join("index.sqlite"))
    }

    fn row(&self, address: &Address) -> TestResult<Row> {
        let (arena, offset, length) = self.index()?.query_row(
            "SELECT arena, offset, length FROM blocks WHERE address = ?1",
            [&address.0[..]],
            |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, u32>(2)?,
                ))
            },
        )?;
        Ok(Row {
            arena,
            offset: u64::try_from(offset)?,
            length,
        })
    }

    fn arena_bytes(&self, arena: u32) -> TestResult<Vec<u8>> {
        Ok(fs::read(self.dir.path().join(arena_name(arena)))?)
    }

    fn write_arena(&self, arena: u32, bytes: &[u8]) -> TestResult {
        Ok(fs::write(self.dir.path().join(arena_name(arena)), bytes)?)
    }

    /// Bytes of the content the leaf `n` holds.
    fn leaf_range(&self, n: usize) -> (u64, u64) {
        let (start, leaf) = self.leaves[n];
        (start, leaf.length)
    }

    /// Every leaf but `damaged` reads back right through the tree reader, and a read
    /// covering `damaged` fails as `assert_error` wants.
    fn assert_only_leaf_refused(
        &self,
        store: &Store,
        damaged: usize,
        assert_error: impl Fn(&Error),
    ) -> TestResult {
        let reader = TreeReader::new(store, &self.keys);
        for n in 0..self.leaves.len() {
            let (start, length) = self.leaf_range(n);
            let result = reader.read_range(&self.root, start, length);
            if n == damaged {
                assert_error(&result.err().ok_or("damaged leaf was served")?);
                // Also inside a longer read, and from its middle.
                let error = reader
                    .read_range(&self.root, start.saturating_sub(1000), length + 2000)
                    .err()
                    .ok_or("read across the damaged leaf succeeded")?;
                assert_error(&error);
                assert!(
                    reader
                        .read_range(&self.root, start + length / 2, 1)
                        .is_err()
                );
            } else {
                let start_at = start as usize;
                assert_eq!(
                    result?,
                    &self.content[start_at..start_at + length as usize],
                    "leaf {n}"
                );
            }
        }
        Ok(())
    }
}

fn is_leaf(store: &Store, keys: &EpochKeys, block_ref: &BlockRef) -> bool {
    let Ok(sealed) = store.get(&block_ref.address) else {
        return false;
    };
    venti::seal::open(keys, block_ref, &sealed, venti::Kind::Data).is_ok()
}

fn assert_damaged(error: &Error, address: &Address, row: Row, reason: &str) {
    match error {
        Error::Damaged {
            address: a,
            arena,
            offset,
            reason: why,
        } => {
            assert_eq!(
                (a, *arena, *offset),
                (address, row.arena, row.offset),
                "{error}"
            );
            assert!(why.contains(reason), "{error}");
        }
        other => panic!("want Damaged at {row:?}, got {other:?}"),
    }
}

#[test]
fn a_flipped_bit_in_a_leaf_record_is_refused_as_damaged_with_its_place() -> TestResult {
    let fixture = Fixture::new()?;
    // A bit in the version byte, the ciphertext, and the tag of three leaves.
    for (n, at) in [(2, 0), (3, 1 + 500), (5, usize::MAX)] {
        let leaf = fixture.leaves[n].1;
        let row = fixture.row(&leaf.address)?;
        let mut arena = fixture.arena_bytes(row.arena)?;
        let payload_at = row.offset as usize + RECORD_HEADER_BYTES;
        let at = at.min(row.length as usize - 1);
        arena[payload_at + at] ^= 0x20;
        fixture.write_arena(row.arena, &arena)?;
        let store = fixture.open()?;
        fixture.assert_only_leaf_refused(&store, n, |error| {
            assert_damaged(error, &leaf.address, row, "does not hash")
        })?;
        // get (which serves other devices) and verify refuse it the same way.
        assert_damaged(
            &store.get(&leaf.address).err().ok_or("get served it")?,
            &leaf.address,
            row,
            "does not hash",
        );
        assert_eq!(store.verify()?.problems.len(), 1);
        drop(store);
        arena[payload_at + at] ^= 0x20;
        fixture.write_arena(row.arena, &arena)?;
    }
    Ok(())
}

#[test]
fn another_blocks_payload_under_a_leafs_header_is_refused_as_damaged() -> TestResult {
    let fixture = Fixture::new()?;
    let (victim, donor) = (fixture.leaves[1].1, fixture.leaves[4].1);
    let (victim_row, donor_row) = (fixture.row(&victim.address)?, fixture.row(&donor.address)?);
    let mut arena = fixture.arena_bytes(victim_row.arena)?;
    let donor_bytes = fixture.arena_bytes(donor_row.arena)?;
    // As much of the donor's sealed block as fits, header of the victim kept: a
    // well-formed block, authentic under the donor's key, not under the victim's.
    let fits = victim_row.length.min(donor_row.length) as usize;
    let from = donor_row.offset as usize + RECORD_HEADER_BYTES;
    let to = victim_row.offset as usize + RECORD_HEADER_BYTES;
    arena[to..to + fits].copy_from_slice(&donor_bytes[from..from + fits]);
    fixture.write_arena(victim_row.arena, &arena)?;
    let store = fixture.open()?;
    fixture.assert_only_leaf_refused(&store, 1, |error| {
        assert_damaged(error, &victim.address, victim_row, "does not hash")
    })?;
    Ok(())
}

#[test]
fn an_index_row_pointing_at_another_record_is_refused_as_damaged() -> TestResult {
    let fixture = Fixture::new()?;
    let (victim, other) = (fixture.leaves[3].1, fixture.leaves[6].1);
    let other_row = fixture.row(&other.address)?;
    // The victim's row now names the other leaf's record, length and all.
    let changed = fixture.index()?.execute(
        "UPDATE blocks SET arena = ?1, offset = ?2, length = ?3 WHERE address = ?4",
        rusqlite::params![
            other_row.arena,
            i64::try_from(other_row.offset)?,
            other_row.length,
            &victim.address.0[..]
        ],
    )?;
    assert_eq!(changed, 1);
    let store = fixture.open()?;
    fixture.assert_only_leaf_refused(&store, 3, |error| {
        assert_damaged(error, &victim.address, other_row, "record holds")
    })?;
    Ok(())
}

#[test]
fn a_read_of_undamaged_trees_matches_get_and_open() -> TestResult {
    // The unhashed path gives the very content the hashed one does, pointer blocks
    // included (the root and its children are opened through it).
    let fixture = Fixture::new()?;
    let store = fixture.open()?;
    let reader = TreeReader::new(&store, &fixture.keys);
    assert_eq!(reader.read_all(&fixture.root)?, fixture.content);
    // Compressed leaves open into buffers of their own.
    let text = b"compressible text, ".repeat(100_000);
    let mut writer = TreeWriter::new(&store, &fixture.keys, Class::Pinned);
    writer.write(&text)?;
    let text_root = writer.finish()?;
    store.sync()?;
    drop(store);
    let store = fixture.open()?;
    let reader = TreeReader::new(&store, &fixture.keys);
    assert_eq!(reader.read_all(&text_root)?, text);
    assert_eq!(
        reader.read_range(&text_root, 777_777, 300_000)?,
        &text[777_777..1_077_777]
    );
    for (_, leaf) in &fixture.leaves {
        let mut buffer = vec![0xEE; 7];
        let fetched = store.get_for_open(&leaf.address, &mut buffer)?;
        assert_eq!(
            buffer.get(fetched.range.clone()).ok_or("range outside")?,
            &store.get(&leaf.address)?[..]
        );
        assert!(matches!(
            fetched.check,
            venti::seal::AddressCheck::Unhashed { .. }
        ));
    }
    Ok(())
}
