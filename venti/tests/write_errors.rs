//! Failed arena writes (a full disk) on the store's writer thread: the error reaches
//! every put it affected, nothing that was not written is ever indexed, and the store
//! takes new puts once writes succeed again.

mod common;

use std::sync::Arc;

use common::{TestResult, block};
use venti::backend::MemoryBackend;
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{
    Address, BlockStore, Class, Error, PUT_HEADROOM_BYTES, PutTicket, Store, StoreOptions,
};

fn is_full(error: &Error) -> bool {
    matches!(error, Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull)
}

fn owned(sealed: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0; PUT_HEADROOM_BYTES];
    buffer.extend_from_slice(sealed);
    buffer
}

/// Everything indexed reads back, and the report of a reopen is clean.
fn assert_consistent_after_reopen(memory: &MemoryBackend) -> TestResult<Store> {
    let store = Store::open(Arc::new(memory.clone()), StoreOptions::default())?;
    let report = store.verify()?;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    Ok(store)
}

#[test]
fn a_failed_write_fails_its_put_and_the_store_goes_on() -> TestResult {
    let memory = MemoryBackend::new(1)?;
    let store = Store::open(Arc::new(memory.clone()), StoreOptions::default())?;
    let (kept, kept_bytes) = block(1, 5000);
    store.put(&kept, &kept_bytes, Class::Pinned)?;
    memory.fail_writes(true);
    let (lost, lost_bytes) = block(2, 5000);
    let error = store
        .put(&lost, &lost_bytes, Class::Pinned)
        .expect_err("a put whose write failed must fail");
    assert!(is_full(&error), "{error}");
    assert!(!store.contains(&lost)?);
    memory.fail_writes(false);
    let (later, later_bytes) = block(3, 5000);
    store.put(&later, &later_bytes, Class::Pinned)?;
    store.sync()?;
    assert_eq!(store.get(&kept)?, kept_bytes);
    assert_eq!(store.get(&later)?, later_bytes);
    assert!(matches!(store.get(&lost), Err(Error::NotFound { .. })));
    drop(store);
    let store = assert_consistent_after_reopen(&memory)?;
    assert_eq!(store.get(&later)?, later_bytes);
    assert!(!store.contains(&lost)?);
    // The failed attempt left no trace a rebuilt index could bring back either.
    drop(store);
    let store = Store::open_rebuilding_index(Arc::new(memory.clone()), StoreOptions::default())?;
    assert!(!store.contains(&lost)?);
    assert_eq!(store.get(&kept)?, kept_bytes);
    Ok(())
}

#[test]
fn a_duplicate_of_a_queued_block_shares_its_ticket() -> TestResult {
    let memory = MemoryBackend::new(2)?;
    let store = Store::open(Arc::new(memory), StoreOptions::default())?;
    let (address, bytes) = block(5, 20_000);
    let ticket = store.put_sealed_owned(&address, &mut owned(&bytes), Class::Pinned)?;
    let duplicate = store.put_sealed_owned(&address, &mut owned(&bytes), Class::Pinned)?;
    assert_ne!(ticket, PutTicket::DONE);
    assert_eq!(duplicate, ticket);
    store.wait_puts(ticket, ticket)?;
    store.sync()?;
    // Committed: a duplicate needs no write and no wait.
    let committed = store.put_sealed_owned(&address, &mut owned(&bytes), Class::Pinned)?;
    assert_eq!(committed, PutTicket::DONE);
    Ok(())
}

#[test]
fn queued_puts_learn_of_a_failure_another_caller_took() -> TestResult {
    let memory = MemoryBackend::new(2)?;
    let store = Store::open(Arc::new(memory.clone()), StoreOptions::default())?;
    memory.fail_writes(true);
    // Caller A queues blocks (and a duplicate); none can be written. Each put either
    // fails at once (it met the failure of an earlier one) or gets a ticket.
    let blocks: Vec<(Address, Vec<u8>)> = (10..14).map(|n| block(n, 20_000)).collect();
    let mut tickets = Vec::new();
    for (address, bytes) in blocks.iter().chain(&blocks[1..2]) {
        match store.put_sealed_owned(address, &mut owned(bytes), Class::Pinned) {
            Ok(ticket) => tickets.push(ticket),
            Err(error) => assert!(is_full(&error), "{error}"),
        }
    }
    // Caller B's put fails too.
    let (other, other_bytes) = block(20, 1000);
    assert!(store.put(&other, &other_bytes, Class::Pinned).is_err());
    memory.fail_writes(false);
    // A sync now succeeds (the failure was reported and rolled back), yet every one of
    // A's tickets still says its put failed.
    store.sync()?;
    for ticket in &tickets {
        assert!(store.wait_puts(*ticket, *ticket).is_err(), "{ticket:?}");
    }
    if let (Some(first), Some(last)) = (tickets.first(), tickets.last()) {
        assert!(store.wait_puts(*first, *last).is_err());
    }
    for (address, _) in &blocks {
        assert!(!store.contains(address)?, "rolled back block is indexed");
    }
    // Puts after the failure succeed, into the space the failed ones had.
    let (address, bytes) = &blocks[0];
    let ticket = store.put_sealed_owned(address, &mut owned(bytes), Class::Pinned)?;
    store.wait_puts(ticket, ticket)?;
    store.sync()?;
    drop(store);
    let store = assert_consistent_after_reopen(&memory)?;
    assert_eq!(store.get(address)?, *bytes);
    assert!(!store.contains(&blocks[2].0)?);
    Ok(())
}

#[test]
fn a_tree_written_while_the_disk_fills_fails_and_leaves_a_consistent_store() -> TestResult {
    let memory = MemoryBackend::new(3)?;
    let store = Store::open(Arc::new(memory.clone()), StoreOptions::default())?;
    let keys = EpochKeys::derive(&[1; 32], &[2; 16], 0);
    let first = common::bytes(7, 3 << 20);
    let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
    writer.write(&first)?;
    let first_root = writer.finish()?;
    store.sync()?;

    let second = common::bytes(8, 6 << 20);
    let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
    let (head, tail) = second.split_at(2 << 20);
    writer.write(head)?;
    memory.fail_writes(true);
    let outcome = writer.write(tail).and_then(|()| writer.finish());
    assert!(outcome.is_err(), "ingest onto a full disk must fail");
    memory.fail_writes(false);
    store.sync()?;
    drop(store);
    let store = assert_consistent_after_reopen(&memory)?;
    assert_eq!(TreeReader::new(&store, &keys).read_all(&first_root)?, first);
    Ok(())
}

#[test]
fn a_block_still_queued_can_be_read() -> TestResult {
    let memory = MemoryBackend::new(4)?;
    let store = Store::open(Arc::new(memory), StoreOptions::default())?;
    let blocks: Vec<(Address, Vec<u8>)> = (0..64).map(|n| block(n, 200_000)).collect();
    for (address, bytes) in &blocks {
        let dyn_store: &dyn BlockStore = &store;
        dyn_store.put_sealed_owned(address, &mut owned(bytes), Class::Pinned)?;
        assert_eq!(store.get(address)?, *bytes);
    }
    Ok(())
}
