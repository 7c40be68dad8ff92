//! A store that fetches what it misses from other devices (`Store::set_remote`): the
//! fetched block is verified, stored in the remote's class and served; lies are
//! refused; concurrent misses fetch once; a tree is read through a remote in batches;
//! fetched cached blocks stay within the cache budget. A store with a pusher hands
//! the blocks written here (and only those) to it at sync, once they are durable, and
//! keeps what it could not place for the next sync.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{TestBackend, TestResult, block, bytes, for_each_backend, small_options};
use parking_lot::{Condvar, Mutex};
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{Address, BlockPusher, Class, Error, RemoteBlocks, Store, StoreOptions};

/// Another device: serves what its own store holds, counting requests.
struct Device {
    store: Arc<Store>,
    fetches: AtomicUsize,
    batches: AtomicUsize,
    batched_addresses: AtomicUsize,
}

impl Device {
    fn new(store: Arc<Store>) -> Arc<Device> {
        Arc::new(Device {
            store,
            fetches: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            batched_addresses: AtomicUsize::new(0),
        })
    }

    fn lookup(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        match self.store.get_local(address) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl RemoteBlocks for Device {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.lookup(address)
    }

    fn fetch_many(&self, addresses: &[Address]) -> venti::Result<Vec<(Address, Vec<u8>)>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batched_addresses
            .fetch_add(addresses.len(), Ordering::SeqCst);
        let mut found = Vec::new();
        for address in addresses {
            if let Some(bytes) = self.lookup(address)? {
                found.push((*address, bytes));
            }
        }
        Ok(found)
    }
}

/// A device that answers every request with the asked-for block, one byte flipped.
struct Liar {
    blocks: HashMap<Address, Vec<u8>>,
}

impl RemoteBlocks for Liar {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(address).map(|bytes| {
            let mut bytes = bytes.clone();
            if let Some(first) = bytes.first_mut() {
                *first ^= 1;
            }
            bytes
        }))
    }
}

/// A device whose answers wait until the test opens the gate.
struct Gated {
    inner: Arc<dyn RemoteBlocks>,
    open: Mutex<bool>,
    opened: Condvar,
    fetches: AtomicUsize,
    batches: AtomicUsize,
}

impl Gated {
    fn open_gate(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

impl Gated {
    fn new(inner: Arc<dyn RemoteBlocks>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            open: Mutex::new(false),
            opened: Condvar::new(),
            fetches: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
        })
    }

    fn wait_for_gate(&self) {
        let mut open = self.open.lock();
        while !*open {
            self.opened.wait(&mut open);
        }
    }
}

impl RemoteBlocks for Gated {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.wait_for_gate();
        self.inner.fetch(address)
    }

    fn fetch_many(&self, addresses: &[Address]) -> venti::Result<Vec<(Address, Vec<u8>)>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.wait_for_gate();
        self.inner.fetch_many(addresses)
    }
}

/// A device whose batches come back empty (say, every peer it asked was busy) while
/// single fetches work.
struct NoBatches(Arc<Device>);

impl RemoteBlocks for NoBatches {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        self.0.fetch(address)
    }

    fn fetch_many(&self, _addresses: &[Address]) -> venti::Result<Vec<(Address, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// A device holding `blocks` (in a memory store of its own).
fn device_with(blocks: &[(Address, Vec<u8>)]) -> TestResult<(TestBackend, Arc<Device>)> {
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(small_options())?;
    common::put_all(&store, blocks, Class::Pinned)?;
    Ok((backend, Device::new(Arc::new(store))))
}

#[test]
fn a_miss_is_fetched_verified_and_stored_in_the_remote_class() -> TestResult {
    for_each_backend(|backend| {
        let blocks: Vec<_> = (0..4u64).map(|n| block(n, 3000)).collect();
        let (_device_backend, device) = device_with(&blocks)?;
        for (class, (address, data)) in [Class::Cached, Class::Pinned].into_iter().zip(&blocks) {
            let store = backend.open(small_options())?;
            store.set_remote(Some(device.clone()), class);
            let fetches_before = device.fetches.load(Ordering::SeqCst);
            assert_eq!(&store.get(address)?, data);
            assert_eq!(store.class(address)?, Some(class));
            // Held now: a second read does not ask again, and it survives a reopen.
            assert_eq!(&store.get(address)?, data);
            assert_eq!(device.fetches.load(Ordering::SeqCst), fetches_before + 1);
            let remote = store.remote_stats();
            assert_eq!((remote.fetched_blocks, remote.fetched_bytes), (1, 3000));
            assert_eq!(remote.fetches_in_flight, 0);
            assert_eq!(store.stats()?.remote, remote);
            store.sync()?;
            drop(store);
            let reopened = backend.open(small_options())?;
            assert_eq!(&reopened.get(address)?, data);
        }
        Ok(())
    })
}

#[test]
fn without_a_remote_or_from_a_remote_without_the_block_a_miss_is_not_found() -> TestResult {
    let (address, _) = block(1, 1000);
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(small_options())?;
    assert!(matches!(store.get(&address), Err(Error::NotFound { address: a }) if a == address));
    let (_device_backend, device) = device_with(&[])?;
    store.set_remote(Some(device.clone()), Class::Cached);
    assert!(matches!(store.get(&address), Err(Error::NotFound { address: a }) if a == address));
    assert_eq!(device.fetches.load(Ordering::SeqCst), 1);
    assert!(!store.contains(&address)?);
    assert_eq!(store.remote_stats().fetched_blocks, 0);
    // Unset: no more asking.
    store.set_remote(None, Class::Cached);
    assert!(matches!(store.get(&address), Err(Error::NotFound { .. })));
    assert_eq!(device.fetches.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn a_lying_remote_is_refused_nothing_is_stored_and_the_store_stays_usable() -> TestResult {
    for_each_backend(|backend| {
        let (address, data) = block(7, 5000);
        let store = backend.open(small_options())?;
        let liar = Liar {
            blocks: HashMap::from([(address, data.clone())]),
        };
        store.set_remote(Some(Arc::new(liar)), Class::Pinned);
        match store.get(&address) {
            Err(Error::FetchedMismatch {
                address: named,
                actual,
            }) => {
                assert_eq!(named, address);
                assert_ne!(actual, address);
            }
            other => panic!("expected FetchedMismatch, got {other:?}"),
        }
        assert!(!store.contains(&address)?);
        assert_eq!(store.remote_stats().refused_blocks, 1);
        assert_eq!(store.remote_stats().fetched_blocks, 0);
        // A batch of lies stores nothing either.
        store.prefetch(&[address])?;
        assert!(!store.contains(&address)?);
        // Still a working store: puts and reads of its own blocks, and the true block
        // once it arrives by other means.
        let (own, own_data) = block(8, 2000);
        store.put(&own, &own_data, Class::Pinned)?;
        store.put(&address, &data, Class::Pinned)?;
        store.sync()?;
        assert_eq!(store.get(&own)?, own_data);
        assert_eq!(store.get(&address)?, data);
        assert!(store.verify()?.problems.is_empty());
        Ok(())
    })
}

/// A device that is unreachable until `up` is set.
struct Flaky {
    inner: Arc<Device>,
    up: Mutex<bool>,
}

impl RemoteBlocks for Flaky {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        if !*self.up.lock() {
            return Err(Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )));
        }
        self.inner.fetch(address)
    }
}

#[test]
fn a_failing_remote_is_a_retryable_error_naming_the_address() -> TestResult {
    let blocks = vec![block(5, 3000)];
    let (address, data) = blocks[0].clone();
    let (_device_backend, device) = device_with(&blocks)?;
    let flaky = Arc::new(Flaky {
        inner: device,
        up: Mutex::new(false),
    });
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(small_options())?;
    store.set_remote(Some(flaky.clone()), Class::Cached);
    match store.get(&address) {
        Err(Error::Remote { address: named, .. }) => assert_eq!(named, address),
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(!store.contains(&address)?);
    assert_eq!(store.remote_stats().fetches_in_flight, 0);
    *flaky.up.lock() = true;
    assert_eq!(store.get(&address)?, data);
    Ok(())
}

#[test]
fn concurrent_misses_of_one_address_fetch_once() -> TestResult {
    let blocks = vec![block(3, 4000)];
    let (address, data) = blocks[0].clone();
    let (_device_backend, device) = device_with(&blocks)?;
    let gated = Gated::new(device);
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = Arc::new(backend.open(small_options())?);
    store.set_remote(Some(gated.clone()), Class::Cached);
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || store.get(&address))
        })
        .collect();
    // Give every reader time to miss while the first fetch is held at the gate (a
    // reader arriving later finds the block stored: still one fetch).
    while store.remote_stats().fetches_in_flight == 0 {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    gated.open_gate();
    for reader in readers {
        let read = reader.join().map_err(|_| "reader panicked")??;
        assert_eq!(read, data);
    }
    assert_eq!(gated.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(store.remote_stats().fetched_blocks, 1);
    assert_eq!(store.remote_stats().fetches_in_flight, 0);
    Ok(())
}

#[test]
fn concurrent_misses_all_see_a_lie_refused() -> TestResult {
    let (address, data) = block(4, 4000);
    let gated = Gated::new(Arc::new(Liar {
        blocks: HashMap::from([(address, data)]),
    }));
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = Arc::new(backend.open(small_options())?);
    store.set_remote(Some(gated.clone()), Class::Cached);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || store.get(&address))
        })
        .collect();
    while store.remote_stats().fetches_in_flight == 0 {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100));
    gated.open_gate();
    for reader in readers {
        let read = reader.join().map_err(|_| "reader panicked")?;
        assert!(
            matches!(read, Err(Error::FetchedMismatch { address: a, .. }) if a == address),
            "{read:?}"
        );
    }
    assert!(!store.contains(&address)?);
    Ok(())
}

#[test]
fn a_read_during_a_prefetch_of_its_block_waits_for_that_batch() -> TestResult {
    let blocks: Vec<_> = (0..3u64).map(|n| block(n, 4000)).collect();
    let addresses: Vec<Address> = blocks.iter().map(|(address, _)| *address).collect();
    let (_device_backend, device) = device_with(&blocks)?;
    let gated = Gated::new(device);
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = Arc::new(backend.open(small_options())?);
    store.set_remote(Some(gated.clone()), Class::Cached);
    let prefetcher = {
        let (store, addresses) = (store.clone(), addresses.clone());
        thread::spawn(move || store.prefetch(&addresses))
    };
    while store.remote_stats().fetches_in_flight < 3 {
        thread::sleep(Duration::from_millis(5));
    }
    let reader = {
        let store = store.clone();
        let address = addresses[1];
        thread::spawn(move || store.get(&address))
    };
    thread::sleep(Duration::from_millis(100));
    gated.open_gate();
    prefetcher.join().map_err(|_| "prefetch panicked")??;
    let read = reader.join().map_err(|_| "reader panicked")??;
    assert_eq!(read, blocks[1].1);
    assert_eq!(gated.batches.load(Ordering::SeqCst), 1);
    assert_eq!(
        gated.fetches.load(Ordering::SeqCst),
        0,
        "the reader fetched on its own"
    );
    for (address, data) in &blocks {
        assert_eq!(&store.get(address)?, data);
    }
    assert_eq!(store.remote_stats().fetched_blocks, 3);
    Ok(())
}

#[test]
fn blocks_a_batch_did_not_bring_are_fetched_one_by_one() -> TestResult {
    let blocks: Vec<_> = (0..4u64).map(|n| block(n, 2000)).collect();
    let addresses: Vec<Address> = blocks.iter().map(|(address, _)| *address).collect();
    let (_device_backend, device) = device_with(&blocks)?;
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(small_options())?;
    store.set_remote(Some(Arc::new(NoBatches(device.clone()))), Class::Pinned);
    store.prefetch(&addresses)?;
    assert_eq!(store.remote_stats().fetched_blocks, 0);
    assert_eq!(store.remote_stats().fetches_in_flight, 0);
    for (address, data) in &blocks {
        assert_eq!(&store.get(address)?, data);
    }
    assert_eq!(device.fetches.load(Ordering::SeqCst), 4);
    Ok(())
}

#[test]
fn a_tree_written_on_one_device_reads_back_on_another_in_batches() -> TestResult {
    let keys = EpochKeys::derive(&[5; 32], &[2; 16], 0);
    let (device_backend, _) = device_with(&[])?;
    let origin = Arc::new(device_backend.open(StoreOptions::default())?);
    // ~16 MiB of incompressible content: a few hundred leaves under two pointer levels.
    let content = bytes(42, 16 << 20);
    let mut writer = TreeWriter::new(origin.as_ref(), &keys, Class::Pinned);
    for piece in content.chunks(1 << 20) {
        writer.write(piece)?;
    }
    let root = writer.finish()?;
    origin.sync()?;
    let origin_blocks = origin.stats()?.blocks;
    let device = Device::new(origin);

    for class in [Class::Cached, Class::Pinned] {
        let backend = TestBackend::new(common::Kind::Memory)?;
        let store = backend.open(StoreOptions::default())?;
        store.set_remote(Some(device.clone()), class);
        let (fetches, batches) = (
            device.fetches.load(Ordering::SeqCst),
            device.batches.load(Ordering::SeqCst),
        );
        let reader = TreeReader::new(&store, &keys);
        // A range first (only its blocks come over), then the whole file.
        let middle = reader.read_range(&root, 5 << 20, 300_000)?;
        assert_eq!(middle, &content[5 << 20..(5 << 20) + 300_000]);
        let partial_blocks = store.stats()?.blocks;
        assert!(
            partial_blocks < origin_blocks / 4,
            "{partial_blocks} of {origin_blocks}"
        );
        assert!(reader.read_all(&root)? == content, "content differs");
        assert_eq!(store.stats()?.blocks, origin_blocks);
        let single = device.fetches.load(Ordering::SeqCst) - fetches;
        let batched = device.batches.load(Ordering::SeqCst) - batches;
        // Leaves come in batches; one-by-one fetches are for the path of pointer
        // blocks at most.
        assert!(single <= 4, "{single} single fetches");
        assert!(
            batched >= 1 && (batched as u64) < origin_blocks / 8,
            "{batched} batches"
        );
        assert_eq!(store.remote_stats().fetched_blocks, origin_blocks);
        assert_eq!(store.class(&root.address)?, Some(class));
    }
    Ok(())
}

#[test]
fn fetched_cached_blocks_are_evicted_least_hit_first_and_fetched_again() -> TestResult {
    for_each_backend(|backend| {
        let blocks: Vec<_> = (0..40u64).map(|n| block(n, 1000)).collect();
        let own: Vec<_> = (100..105u64).map(|n| block(n, 1000)).collect();
        let (_device_backend, device) = device_with(&blocks)?;
        let store = backend.open(StoreOptions {
            cache_bytes_max: 10 * 1000,
            ..small_options()
        })?;
        common::put_all(&store, &own, Class::Pinned)?;
        store.set_remote(Some(device.clone()), Class::Cached);
        // Block 0 is read often; the rest once each, all without an explicit sync.
        for (address, data) in &blocks {
            assert_eq!(&store.get(address)?, data);
            assert_eq!(store.get(&blocks[0].0)?, blocks[0].1);
        }
        store.sync()?;
        let stats = store.stats()?;
        assert!(stats.cached_bytes <= 10_000, "{stats:?}");
        assert_eq!(stats.pinned_bytes, 5000);
        assert!(store.contains(&blocks[0].0)?, "the most read block stays");
        assert!(
            !store.contains(&blocks[1].0)?,
            "an early, once-read block goes"
        );
        for (address, data) in &own {
            assert_eq!(&store.get(address)?, data);
        }
        // An evicted block can be fetched again.
        let fetches = device.fetches.load(Ordering::SeqCst);
        assert_eq!(store.get(&blocks[1].0)?, blocks[1].1);
        assert_eq!(device.fetches.load(Ordering::SeqCst), fetches + 1);
        Ok(())
    })
}

#[test]
fn fetching_past_the_budget_evicts_without_waiting_for_a_sync() -> TestResult {
    let blocks: Vec<_> = (0..64u64).map(|n| block(n, 1000)).collect();
    let (_device_backend, device) = device_with(&blocks)?;
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(StoreOptions {
        cache_bytes_max: 16 * 1000,
        ..small_options()
    })?;
    store.set_remote(Some(device), Class::Cached);
    for (address, _) in &blocks {
        store.get(address)?;
    }
    // Never synced by the caller, yet the fetches evicted: far fewer than 64 are left.
    let held = blocks
        .iter()
        .filter(|(address, _)| store.contains(address).unwrap_or(false))
        .count();
    assert!(held <= 17, "{held} blocks held over a 16-block budget");
    Ok(())
}

/// Another device that takes pushed blocks into its own store while `accepting`, and
/// records what each push asked for.
struct Receiver {
    store: Store,
    accepting: std::sync::atomic::AtomicBool,
    pushes: Mutex<Vec<Vec<Address>>>,
}

impl Receiver {
    fn new(backend: &TestBackend) -> TestResult<Arc<Receiver>> {
        Ok(Arc::new(Receiver {
            store: backend.open(small_options())?,
            accepting: std::sync::atomic::AtomicBool::new(true),
            pushes: Mutex::new(Vec::new()),
        }))
    }

    fn pushed(&self) -> Vec<Address> {
        let mut all: Vec<Address> = self.pushes.lock().iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

impl BlockPusher for Receiver {
    fn push(&self, store: &Store, addresses: &[Address]) -> venti::Result<Vec<Address>> {
        self.pushes.lock().push(addresses.to_vec());
        if !self.accepting.load(Ordering::SeqCst) {
            return Ok(addresses.to_vec());
        }
        for address in addresses {
            // What the pusher is handed is durable on the writer already: it survives
            // a crash there (read it back from a reopened copy of the writer's files
            // is what `sync_local` promises; here: it is readable and held).
            let bytes = store.get_local(address)?;
            self.store.put(address, &bytes, Class::Pinned)?;
        }
        self.store.sync_local()?;
        Ok(Vec::new())
    }
}

fn sorted(mut addresses: Vec<Address>) -> Vec<Address> {
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

#[test]
fn blocks_written_here_are_pushed_at_sync_and_fetched_or_received_ones_are_not() -> TestResult {
    for_each_backend(|backend| {
        let other = TestBackend::new(common::Kind::Memory)?;
        let receiver = Receiver::new(&other)?;
        let fetched: Vec<_> = (100..103u64).map(|n| block(n, 2000)).collect();
        let (_device_backend, device) = device_with(&fetched)?;
        let store = backend.open(small_options())?;
        store.set_remote(Some(device.clone()), Class::Pinned);
        store.set_pusher(Some(receiver.clone()));

        // This device's data: a tree written here, pinned, and a block sealed here.
        let keys = EpochKeys::derive(&[5; 32], &[6; 16], 0);
        let content = bytes(9, 300_000);
        let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
        writer.write(&content)?;
        let root = writer.finish()?;
        let (own, own_bytes) = block(7, 1500);
        store.put_sealed_here(&own, &own_bytes, Class::Pinned)?;
        // Not this device's: fetched (even pinned, as on a full copy), received
        // through `put` (another device's push), and cached blocks sealed here.
        for (address, _) in &fetched {
            store.get(address)?;
        }
        let (received, received_bytes) = block(8, 1500);
        store.put(&received, &received_bytes, Class::Pinned)?;
        let (scratch, scratch_bytes) = block(11, 1500);
        store.put_sealed_here(&scratch, &scratch_bytes, Class::Cached)?;
        assert_eq!(
            store.push_stats().unpushed_blocks as usize,
            tree_blocks(&store, &keys, &root)? + 1
        );
        assert!(receiver.pushed().is_empty(), "pushed before any sync");

        store.sync()?;
        let mut expected = tree_addresses(&store, &keys, &root)?;
        expected.push(own);
        assert_eq!(receiver.pushed(), sorted(expected.clone()));
        for address in &expected {
            assert!(receiver.store.contains(address)?);
        }
        for address in fetched.iter().map(|(a, _)| a).chain([&received, &scratch]) {
            assert!(!receiver.pushed().contains(address), "{address} pushed");
        }
        let stats = store.push_stats();
        assert_eq!(
            (stats.unpushed_blocks, stats.pushed_blocks),
            (0, expected.len() as u64)
        );

        // Writing the same data again stores nothing new: nothing more to push.
        let pushes = receiver.pushes.lock().len();
        store.put_sealed_here(&own, &own_bytes, Class::Pinned)?;
        store.sync()?;
        assert_eq!(receiver.pushes.lock().len(), pushes);
        // The reader of the other device opens what it holds.
        let remote_reader = TreeReader::new(&receiver.store, &keys);
        assert_eq!(
            remote_reader.read_range(&root, 0, content.len() as u64)?,
            content
        );
        Ok(())
    })
}

fn tree_addresses(
    store: &Store,
    keys: &EpochKeys,
    root: &venti::BlockRef,
) -> TestResult<Vec<Address>> {
    let mut live = std::collections::HashSet::new();
    venti::gc::mark_tree(&TreeReader::new(store, keys), root, &mut live)?;
    Ok(live.into_iter().collect())
}

fn tree_blocks(store: &Store, keys: &EpochKeys, root: &venti::BlockRef) -> TestResult<usize> {
    Ok(tree_addresses(store, keys, root)?.len())
}

#[test]
fn blocks_a_push_could_not_place_stay_queued_and_go_with_the_next_sync() -> TestResult {
    let backend = TestBackend::new(common::Kind::Memory)?;
    let other = TestBackend::new(common::Kind::Memory)?;
    let receiver = Receiver::new(&other)?;
    let store = backend.open(small_options())?;
    store.set_pusher(Some(receiver.clone()));
    receiver.accepting.store(false, Ordering::SeqCst);
    let first: Vec<_> = (0..3u64).map(|n| block(n, 1000)).collect();
    for (address, data) in &first {
        store.put_sealed_here(address, data, Class::Pinned)?;
    }
    // Peers away: the sync still succeeds (durable here) and the blocks stay queued.
    store.sync()?;
    assert_eq!(store.push_stats().unpushed_blocks, 3);
    assert_eq!(store.push_stats().pushed_blocks, 0);
    for (address, _) in &first {
        assert!(store.contains(address)?);
        assert!(!receiver.store.contains(address)?);
    }

    // Back: the next sync pushes the old ones with the new one, once each.
    receiver.accepting.store(true, Ordering::SeqCst);
    let (late, late_bytes) = block(9, 1000);
    store.put_sealed_here(&late, &late_bytes, Class::Pinned)?;
    store.sync()?;
    let last = receiver.pushes.lock().last().cloned().unwrap_or_default();
    let mut expected: Vec<Address> = first.iter().map(|(a, _)| *a).collect();
    expected.push(late);
    assert_eq!(sorted(last), sorted(expected.clone()));
    for address in &expected {
        assert!(receiver.store.contains(address)?);
    }
    assert_eq!(store.push_stats().unpushed_blocks, 0);
    assert_eq!(store.push_stats().pushed_blocks, 4);

    // A background retry pushes without a local sync; queued addresses from a previous
    // run go too; a block no longer held here is dropped by the pusher, not retried.
    receiver.accepting.store(false, Ordering::SeqCst);
    let (queued, queued_bytes) = block(20, 1000);
    store.put_sealed_here(&queued, &queued_bytes, Class::Pinned)?;
    store.sync()?;
    assert_eq!(store.push_stats().unpushed_blocks, 1);
    receiver.accepting.store(true, Ordering::SeqCst);
    assert_eq!(store.push_unpushed()?, 0);
    assert!(receiver.store.contains(&queued)?);
    store.queue_push(&[late]);
    assert_eq!(store.push_unpushed()?, 0);
    Ok(())
}

/// A pusher that holds every push until the test lets it go.
struct HeldPusher {
    entered: std::sync::mpsc::SyncSender<()>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BlockPusher for HeldPusher {
    fn push(&self, _store: &Store, _addresses: &[Address]) -> venti::Result<Vec<Address>> {
        let _ = self.entered.send(());
        let _ = self.release.lock().recv();
        Ok(Vec::new())
    }
}

#[test]
fn blocks_being_pushed_still_count_as_unpushed() -> TestResult {
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = Arc::new(backend.open(small_options())?);
    let (entered, pushing) = std::sync::mpsc::sync_channel(1);
    let (release, held) = std::sync::mpsc::sync_channel(1);
    store.set_pusher(Some(Arc::new(HeldPusher {
        entered,
        release: Mutex::new(held),
    })));
    for n in 0..3u64 {
        let (address, data) = block(n, 1000);
        store.put_sealed_here(&address, &data, Class::Pinned)?;
    }
    let pushing_store = Arc::clone(&store);
    let push = thread::spawn(move || pushing_store.push_unpushed());
    pushing.recv_timeout(Duration::from_secs(10))?;
    // The push holds the batch: status must not say all is placed.
    assert_eq!(store.push_stats().unpushed_blocks, 3);
    release.send(())?;
    assert_eq!(push.join().map_err(|_| "push thread panicked")??, 0);
    assert_eq!(store.push_stats().unpushed_blocks, 0);
    assert_eq!(store.push_stats().pushed_blocks, 3);
    Ok(())
}

#[test]
fn without_a_pusher_nothing_is_queued_and_sync_pushes_nothing() -> TestResult {
    let backend = TestBackend::new(common::Kind::Memory)?;
    let store = backend.open(small_options())?;
    let (address, data) = block(1, 1000);
    store.put_sealed_here(&address, &data, Class::Pinned)?;
    store.sync()?;
    store.queue_push(&[address]);
    assert_eq!(store.push_stats().unpushed_blocks, 0);
    assert_eq!(store.push_unpushed()?, 0);
    // Set later: blocks written before are not queued; new ones are.
    let other = TestBackend::new(common::Kind::Memory)?;
    let receiver = Receiver::new(&other)?;
    store.set_pusher(Some(receiver.clone()));
    let (new, new_data) = block(2, 1000);
    store.put_sealed_here(&new, &new_data, Class::Pinned)?;
    store.sync()?;
    assert_eq!(receiver.pushed(), vec![new]);
    // Unset: nothing more is queued or pushed.
    store.set_pusher(None);
    let (after, after_data) = block(3, 1000);
    store.put_sealed_here(&after, &after_data, Class::Pinned)?;
    store.sync()?;
    assert_eq!(receiver.pushed(), vec![new]);
    assert_eq!(store.push_stats().unpushed_blocks, 0);
    Ok(())
}
