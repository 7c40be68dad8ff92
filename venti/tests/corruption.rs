//! Bad input on disk: flipped bits, truncated or deleted arenas, deleted, stale or
//! garbage indexes. Each must give a typed error naming what and where, the store must
//! still open and serve every undamaged block, and nothing may panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{TestResult, block, put_all};
use venti::arena::{ARENA_HEADER_BYTES, RECORD_HEADER_BYTES, arena_name};
use venti::backend::FileBackend;
use venti::{Address, Class, Error, Store, StoreOptions};

const BLOCK_BYTES: usize = 3000;
const RECORD_BYTES: u64 = RECORD_HEADER_BYTES as u64 + BLOCK_BYTES as u64;

fn options() -> StoreOptions {
    StoreOptions {
        // Ten records per arena.
        arena_bytes_max: ARENA_HEADER_BYTES + 10 * RECORD_BYTES,
        ..StoreOptions::default()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    blocks: Vec<(Address, Vec<u8>)>,
}

impl Fixture {
    /// 25 synced blocks in arenas 0 (10), 1 (10) and 2 (5); record `i` of arena `a` is
    /// block `10 a + i` at offset `32 + i × RECORD_BYTES`.
    fn new() -> TestResult<Fixture> {
        let dir = tempfile::tempdir()?;
        let blocks: Vec<_> = (0..25u64).map(|n| block(n, BLOCK_BYTES)).collect();
        let store = Fixture::open_dir(dir.path())?;
        put_all(&store, &blocks, Class::Pinned)?;
        store.sync()?;
        Ok(Fixture { dir, blocks })
    }

    fn open_dir(dir: &Path) -> venti::Result<Store> {
        Store::open(Arc::new(FileBackend::new(dir)?), options())
    }

    fn open(&self) -> venti::Result<Store> {
        Fixture::open_dir(self.dir.path())
    }

    fn arena(&self, id: u32) -> PathBuf {
        self.dir.path().join(arena_name(id))
    }

    fn index(&self) -> PathBuf {
        self.dir.path().join("index.sqlite")
    }

    fn offset_of(block: usize) -> u64 {
        ARENA_HEADER_BYTES + (block % 10) as u64 * RECORD_BYTES
    }

    fn flip(&self, arena: u32, offset: u64) -> TestResult {
        let path = self.arena(arena);
        let mut bytes = fs::read(&path)?;
        let byte = bytes.get_mut(offset as usize).ok_or("offset past end")?;
        *byte ^= 0x04;
        fs::write(&path, bytes)?;
        Ok(())
    }

    /// Every block except `damaged` is served with its bytes.
    fn assert_undamaged_served(&self, store: &Store, damaged: &[usize]) -> TestResult {
        for (n, (address, data)) in self.blocks.iter().enumerate() {
            if !damaged.contains(&n) {
                assert_eq!(&store.get(address)?, data, "block {n}");
            }
        }
        Ok(())
    }
}

fn assert_damaged_at(error: &Error, arena: u32, offset: u64, address: &Address) {
    match error {
        Error::Damaged {
            address: a,
            arena: ar,
            offset: o,
            ..
        } => assert_eq!((a, *ar, *o), (address, arena, offset), "{error}"),
        other => panic!("want Damaged at arena {arena} offset {offset}, got {other:?}"),
    }
}

#[test]
fn a_flipped_bit_in_a_payload_is_reported_with_arena_and_offset() -> TestResult {
    let fixture = Fixture::new()?;
    let offset = Fixture::offset_of(13);
    fixture.flip(1, offset + RECORD_HEADER_BYTES as u64 + 100)?;
    let store = fixture.open()?;
    let address = fixture.blocks[13].0;
    let error = store
        .get(&address)
        .err()
        .ok_or("damaged block was served")?;
    assert_damaged_at(&error, 1, offset, &address);
    assert!(error.to_string().contains("hash"), "{error}");
    fixture.assert_undamaged_served(&store, &[13])?;
    let report = store.verify()?;
    assert_eq!(report.records_checked, 25);
    assert_eq!(report.problems.len(), 1);
    assert_damaged_at(&report.problems[0], 1, offset, &address);
    // Recovery: remove the damaged block and put a good copy again.
    store.remove(&[address])?;
    store.put(&address, &fixture.blocks[13].1, Class::Pinned)?;
    assert_eq!(store.get(&address)?, fixture.blocks[13].1);
    assert!(store.verify()?.problems.is_empty());
    Ok(())
}

#[test]
fn a_flipped_bit_in_a_record_header_is_reported() -> TestResult {
    let fixture = Fixture::new()?;
    let offset = Fixture::offset_of(4);
    fixture.flip(0, offset + 9)?; // inside the length field
    let store = fixture.open()?;
    let error = store
        .get(&fixture.blocks[4].0)
        .err()
        .ok_or("damaged block was served")?;
    assert_damaged_at(&error, 0, offset, &fixture.blocks[4].0);
    fixture.assert_undamaged_served(&store, &[4])?;
    Ok(())
}

#[test]
fn a_flipped_bit_in_an_arena_header_is_reported_and_repaired() -> TestResult {
    let fixture = Fixture::new()?;
    fixture.flip(2, 3)?;
    let store = fixture.open()?;
    assert!(
        store.open_report().iter().any(|e| matches!(
            e,
            Error::Corrupt {
                arena: 2,
                offset: 0,
                ..
            }
        )),
        "{:?}",
        store.open_report()
    );
    fixture.assert_undamaged_served(&store, &[])?;
    assert!(store.verify()?.problems.is_empty());
    Ok(())
}

#[test]
fn a_truncated_arena_loses_only_the_cut_records() -> TestResult {
    let fixture = Fixture::new()?;
    // Cut arena 1 in the middle of its record 7 (block 17): blocks 17, 18, 19 are lost.
    let cut = Fixture::offset_of(17) + 100;
    fs::OpenOptions::new()
        .write(true)
        .open(fixture.arena(1))?
        .set_len(cut)?;
    let store = fixture.open()?;
    let lost: Vec<Address> = store
        .open_report()
        .iter()
        .filter_map(|e| match e {
            Error::Damaged {
                address, arena: 1, ..
            } => Some(*address),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 3, "{:?}", store.open_report());
    for n in [17, 18, 19] {
        assert!(lost.contains(&fixture.blocks[n].0));
        assert!(!store.contains(&fixture.blocks[n].0)?);
    }
    fixture.assert_undamaged_served(&store, &[17, 18, 19])?;
    assert!(store.verify()?.problems.is_empty());
    // The lost blocks can be put again (fetched from a peer) and survive a reopen.
    for n in [17, 18, 19] {
        store.put(&fixture.blocks[n].0, &fixture.blocks[n].1, Class::Pinned)?;
    }
    store.sync()?;
    drop(store);
    let store = fixture.open()?;
    fixture.assert_undamaged_served(&store, &[])?;
    Ok(())
}

#[test]
fn a_deleted_arena_is_reported_and_the_others_are_served() -> TestResult {
    let fixture = Fixture::new()?;
    fs::remove_file(fixture.arena(0))?;
    let store = fixture.open()?;
    assert!(
        store
            .open_report()
            .iter()
            .any(|e| matches!(e, Error::Corrupt { arena: 0, .. })),
        "{:?}",
        store.open_report()
    );
    let lost: Vec<usize> = (0..10).collect();
    fixture.assert_undamaged_served(&store, &lost)?;
    for n in lost {
        assert!(!store.contains(&fixture.blocks[n].0)?);
    }
    Ok(())
}

fn remove_index(fixture: &Fixture) -> TestResult {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = fixture.index().into_os_string();
        path.push(suffix);
        match fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_arenas() -> TestResult {
    let fixture = Fixture::new()?;
    {
        // One cached block, to see classes come back.
        let store = fixture.open()?;
        let (address, data) = block(500, 100);
        store.put(&address, &data, Class::Cached)?;
        store.sync()?;
    }
    remove_index(&fixture)?;
    let store = fixture.open()?;
    assert!(store.open_report().is_empty(), "{:?}", store.open_report());
    fixture.assert_undamaged_served(&store, &[])?;
    assert_eq!(store.class(&fixture.blocks[0].0)?, Some(Class::Pinned));
    assert_eq!(store.class(&block(500, 100).0)?, Some(Class::Cached));
    assert!(store.verify()?.problems.is_empty());
    Ok(())
}

#[test]
fn a_rebuild_recovers_records_behind_a_damaged_one() -> TestResult {
    let fixture = Fixture::new()?;
    fixture.flip(1, Fixture::offset_of(12) + RECORD_HEADER_BYTES as u64 + 5)?;
    remove_index(&fixture)?;
    let store = fixture.open()?;
    assert!(
        store
            .open_report()
            .iter()
            .any(|e| matches!(e, Error::Corrupt { arena: 1, offset, .. } if *offset == Fixture::offset_of(12))),
        "{:?}",
        store.open_report()
    );
    fixture.assert_undamaged_served(&store, &[12])?;
    assert!(!store.contains(&fixture.blocks[12].0)?);
    Ok(())
}

#[test]
fn a_stale_index_is_brought_up_to_date() -> TestResult {
    let fixture = Fixture::new()?;
    // Keep a copy of the index as it was, then add blocks, then restore the old copy.
    let saved = fixture.dir.path().join("saved");
    fs::create_dir(&saved)?;
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let from = fixture.dir.path().join(name);
        if from.exists() {
            fs::copy(&from, saved.join(name))?;
        }
    }
    let more: Vec<_> = (100..115u64).map(|n| block(n, BLOCK_BYTES)).collect();
    {
        let store = fixture.open()?;
        put_all(&store, &more, Class::Pinned)?;
        store.sync()?;
    }
    remove_index(&fixture)?;
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let from = saved.join(name);
        if from.exists() {
            fs::copy(&from, fixture.dir.path().join(name))?;
        }
    }
    let store = fixture.open()?;
    fixture.assert_undamaged_served(&store, &[])?;
    for (address, data) in &more {
        assert_eq!(&store.get(address)?, data);
    }
    assert!(store.verify()?.problems.is_empty());
    Ok(())
}

#[test]
fn a_garbage_index_file_is_set_aside_and_rebuilt() -> TestResult {
    let fixture = Fixture::new()?;
    remove_index(&fixture)?;
    fs::write(fixture.index(), vec![0x5a; 8192])?;
    let store = fixture.open()?;
    fixture.assert_undamaged_served(&store, &[])?;
    assert!(fixture.dir.path().join("index.sqlite.bad").exists());
    Ok(())
}

#[test]
fn garbage_appended_to_an_arena_is_cut_and_never_served() -> TestResult {
    let fixture = Fixture::new()?;
    let path = fixture.arena(2);
    let len_before = fs::metadata(&path)?.len();
    let mut bytes = fs::read(&path)?;
    // A plausible-looking torn record: a header prefix, then noise.
    bytes.extend_from_slice(b"KVRC");
    bytes.extend(common::bytes(9, 5000));
    fs::write(&path, bytes)?;
    let store = fixture.open()?;
    assert!(
        store
            .open_report()
            .iter()
            .any(|e| matches!(e, Error::Corrupt { arena: 2, offset, .. } if *offset == len_before)),
        "{:?}",
        store.open_report()
    );
    assert_eq!(fs::metadata(&path)?.len(), len_before);
    fixture.assert_undamaged_served(&store, &[])?;
    Ok(())
}

#[test]
fn an_arena_rewritten_under_a_stale_index_gives_errors_not_wrong_bytes() -> TestResult {
    // Swap two records of an arena: the index now points every lookup at the wrong
    // block. Each read must fail with where and what, never return the other block.
    let fixture = Fixture::new()?;
    let path = fixture.arena(0);
    let mut bytes = fs::read(&path)?;
    let (a, b) = (
        Fixture::offset_of(0) as usize,
        Fixture::offset_of(1) as usize,
    );
    let record = RECORD_BYTES as usize;
    let first = bytes[a..a + record].to_vec();
    bytes.copy_within(b..b + record, a);
    bytes[b..b + record].copy_from_slice(&first);
    fs::write(&path, bytes)?;
    let store = fixture.open()?;
    for n in [0, 1] {
        let error = store
            .get(&fixture.blocks[n].0)
            .err()
            .ok_or("wrong block served")?;
        assert_damaged_at(&error, 0, Fixture::offset_of(n), &fixture.blocks[n].0);
    }
    fixture.assert_undamaged_served(&store, &[0, 1])?;
    assert_eq!(store.verify()?.problems.len(), 2);
    Ok(())
}
