//! Block exchange over real QUIC on 127.0.0.1: devices serve blocks from a venti store
//! behind a policy, clients verify every block against its address; pushed blocks are
//! stored pinned and durable before the answer, and bad pushes are refused whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use net::Error;
use net::blocks::{
    BlockClient, BlockPolicy, BlockServer, PUSH_SEALED_BYTES_MAX, decode_push, encode_push,
    push_batches,
};
use net::frame::Kind;
use net::identity::{DeviceId, DeviceIdentity};
use net::link::Dispatch;
use net::quic::{Endpoint, TrustSet};
use paxos::VolumeId;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use venti::backend::MemoryBackend;
use venti::{Address, BlockStore, Class, Store, StoreOptions};

const VOLUME: VolumeId = VolumeId(0xb10c_0005);
const OTHER_VOLUME: VolumeId = VolumeId(0xb10c_0006);

/// One device on loopback: its endpoint, and its block server if it serves.
struct Device {
    identity: DeviceIdentity,
    endpoint: Endpoint,
    dispatch: JoinHandle<()>,
}

impl Device {
    fn id(&self) -> DeviceId {
        self.identity.device_id()
    }

    async fn close(self) {
        self.endpoint.close().await;
        self.dispatch.abort();
    }
}

/// Binds a device trusting `members` (at the transport) that serves `store` under `policy`.
fn device(
    identity: DeviceIdentity,
    members: &[DeviceId],
    serve: Option<(Arc<dyn BlockStore>, Arc<dyn BlockPolicy>)>,
) -> Device {
    let trust = Arc::new(TrustSet::with_members(members.iter().copied()));
    let (endpoint, inbound) =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity, trust).unwrap();
    let dispatch = Dispatch {
        blocks: serve.map(|(store, policy)| Arc::new(BlockServer::new(store, policy))),
        ..Dispatch::default()
    }
    .spawn(inbound);
    Device {
        identity,
        endpoint,
        dispatch,
    }
}

/// A client that can dial every one of `servers`.
fn client_of(client: &Device, servers: &[&Device]) -> BlockClient {
    for server in servers {
        client
            .endpoint
            .set_addresses(server.id(), vec![server.endpoint.local_addr().unwrap()]);
    }
    BlockClient::new(client.endpoint.clone())
}

fn memory_store() -> Arc<Store> {
    Arc::new(
        Store::open(
            Arc::new(MemoryBackend::new(1).unwrap()),
            StoreOptions::default(),
        )
        .unwrap(),
    )
}

/// `count` random blocks of `len_bytes` each, put into `store`.
fn put_blocks(store: &Store, count: usize, len_bytes: usize, seed: u64) -> Vec<(Address, Vec<u8>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut bytes = vec![0u8; len_bytes];
            rng.fill(&mut bytes[..]);
            let address = Address::of(&bytes);
            store.put(&address, &bytes, Class::Pinned).unwrap();
            (address, bytes)
        })
        .collect()
}

fn allow_volume(volume: VolumeId) -> Arc<dyn BlockPolicy> {
    Arc::new(move |_: &DeviceId, asked: VolumeId| asked == volume)
}

/// Only `allowed`, and only for `volume`.
fn allow_only(allowed: DeviceId, volume: VolumeId) -> Arc<dyn BlockPolicy> {
    Arc::new(move |device: &DeviceId, asked: VolumeId| *device == allowed && asked == volume)
}

/// Three fresh device identities, all members at the transport.
fn three_devices() -> ([DeviceIdentity; 3], Vec<DeviceId>) {
    let ids = [
        DeviceIdentity::generate(),
        DeviceIdentity::generate(),
        DeviceIdentity::generate(),
    ];
    let members = ids.iter().map(DeviceIdentity::device_id).collect();
    (ids, members)
}

/// A store that answers every address with the same wrong bytes (a lying peer).
struct LyingStore;

impl BlockStore for LyingStore {
    fn put(&self, _: &Address, _: &[u8], _: Class) -> venti::Result<()> {
        Ok(())
    }
    fn get(&self, _: &Address) -> venti::Result<Vec<u8>> {
        Ok(b"not the block you asked for".to_vec())
    }
    fn contains(&self, _: &Address) -> venti::Result<bool> {
        Ok(true)
    }
}

struct Trio {
    server: Device,
    client: Device,
    blocks: Vec<(Address, Vec<u8>)>,
}

/// A server holding `count` blocks of `len_bytes` for VOLUME, and a client of it.
fn trio(count: usize, len_bytes: usize) -> Trio {
    let (server_id, client_id) = (DeviceIdentity::generate(), DeviceIdentity::generate());
    let members = [server_id.device_id(), client_id.device_id()];
    let store = memory_store();
    let blocks = put_blocks(&store, count, len_bytes, 1);
    let server = device(server_id, &members, Some((store, allow_volume(VOLUME))));
    let client = device(client_id, &members, None);
    Trio {
        server,
        client,
        blocks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_fetch_many_return_verified_blocks_in_order() {
    let trio = trio(24, 64 << 10);
    let fetcher = client_of(&trio.client, &[&trio.server]).with_in_flight_max(4);
    let peers = [trio.server.id()];

    let (address, bytes) = &trio.blocks[0];
    let fetched = fetcher.fetch(VOLUME, address, &peers).await.unwrap();
    assert_eq!(&fetched.bytes, bytes);
    assert_eq!(fetched.from, trio.server.id());
    assert!(fetched.failures.is_empty());

    let addresses: Vec<Address> = trio.blocks.iter().map(|(a, _)| *a).collect();
    let results = fetcher.fetch_many(VOLUME, &addresses, &peers).await;
    assert_eq!(results.len(), trio.blocks.len());
    for (result, (address, bytes)) in results.into_iter().zip(&trio.blocks) {
        let fetched = result.unwrap();
        assert_eq!(&fetched.bytes, bytes, "block {address} differs");
    }
    trio.client.close().await;
    trio.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_sealed_block_venti_allows_fits_a_response() {
    let trio = trio(1, venti::seal::SEALED_BYTES_MAX);
    let fetcher = client_of(&trio.client, &[&trio.server]);
    let (address, bytes) = &trio.blocks[0];
    let fetched = fetcher
        .fetch(VOLUME, address, &[trio.server.id()])
        .await
        .unwrap();
    assert_eq!(fetched.bytes.len(), venti::seal::SEALED_BYTES_MAX);
    assert_eq!(&fetched.bytes, bytes);
    trio.client.close().await;
    trio.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_does_not_match_its_address_is_refused_and_the_next_peer_tried() {
    let (ids, members) = three_devices();
    let [liar_id, honest_id, client_id] = ids;
    let store = memory_store();
    let blocks = put_blocks(&store, 1, 4096, 2);
    let liar = device(
        liar_id,
        &members,
        Some((Arc::new(LyingStore), allow_volume(VOLUME))),
    );
    let honest = device(honest_id, &members, Some((store, allow_volume(VOLUME))));
    let client = device(client_id, &members, None);
    let fetcher = client_of(&client, &[&liar, &honest]);
    let (address, bytes) = &blocks[0];

    let fetched = fetcher
        .fetch(VOLUME, address, &[liar.id(), honest.id()])
        .await
        .unwrap();
    assert_eq!(&fetched.bytes, bytes);
    assert_eq!(fetched.from, honest.id());
    assert_eq!(fetched.failures.len(), 1);
    let (who, why) = &fetched.failures[0];
    assert_eq!(*who, liar.id());
    match why {
        Error::BlockMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, address);
            assert_eq!(*actual, Address::of(b"not the block you asked for"));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }

    // With only the liar to ask, the fetch fails with the mismatch as its cause.
    match fetcher.fetch(VOLUME, address, &[liar.id()]).await {
        Err(Error::BlockUnavailable {
            peers_asked: 1,
            last,
            ..
        }) => assert!(matches!(*last, Error::BlockMismatch { .. }), "{last:?}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    for device in [client, liar, honest] {
        device.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_policy_refuses_gets_refused() {
    let (ids, members) = three_devices();
    let [server_id, allowed_id, outsider_id] = ids;
    let allowed_device = allowed_id.device_id();
    // Only `allowed` may fetch, and only VOLUME; `outsider` is a member at the
    // transport (say, a device of another user sharing a different volume).
    let policy = allow_only(allowed_device, VOLUME);
    let store = memory_store();
    let blocks = put_blocks(&store, 1, 4096, 3);
    let server = device(server_id, &members, Some((store, policy)));
    let allowed = device(allowed_id, &members, None);
    let outsider = device(outsider_id, &members, None);
    let (address, bytes) = &blocks[0];

    let outsider_fetcher = client_of(&outsider, &[&server]);
    match outsider_fetcher
        .fetch_from(server.id(), VOLUME, address)
        .await
    {
        Err(Error::BlockRefused { volume, .. }) => assert_eq!(volume, VOLUME.0),
        other => panic!("expected refused, got {other:?}"),
    }
    let allowed_fetcher = client_of(&allowed, &[&server]);
    match allowed_fetcher
        .fetch_from(server.id(), OTHER_VOLUME, address)
        .await
    {
        Err(Error::BlockRefused { volume, .. }) => assert_eq!(volume, OTHER_VOLUME.0),
        other => panic!("expected refused for another volume, got {other:?}"),
    }
    let fetched = allowed_fetcher
        .fetch_from(server.id(), VOLUME, address)
        .await
        .unwrap();
    assert_eq!(fetched.as_ref(), Some(bytes));
    for device in [server, allowed, outsider] {
        device.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_block_is_not_found_and_a_malformed_request_refused() {
    let trio = trio(1, 4096);
    let fetcher = client_of(&trio.client, &[&trio.server]);
    let missing = Address::of(b"never stored");
    assert_eq!(
        fetcher
            .fetch_from(trio.server.id(), VOLUME, &missing)
            .await
            .unwrap(),
        None
    );
    match fetcher.fetch(VOLUME, &missing, &[trio.server.id()]).await {
        Err(Error::BlockNotFound {
            address,
            peers_asked: 1,
        }) => assert_eq!(address, missing),
        other => panic!("expected not found, got {other:?}"),
    }
    let fetched = fetcher.fetch(VOLUME, &trio.blocks[0].0, &[]).await;
    assert!(matches!(
        fetched,
        Err(Error::BlockNotFound { peers_asked: 0, .. })
    ));

    let answer = trio
        .client
        .endpoint
        .request(trio.server.id(), Kind::BLOCK_REQUEST, b"short")
        .await;
    assert!(matches!(answer, Err(Error::Refused { .. })), "{answer:?}");
    trio.client.close().await;
    trio.server.close().await;
}

/// A device that takes pushes into `store` (and serves it) under `policy`.
fn receiver(
    identity: DeviceIdentity,
    members: &[DeviceId],
    store: Arc<Store>,
    policy: Arc<dyn BlockPolicy>,
) -> Device {
    let trust = Arc::new(TrustSet::with_members(members.iter().copied()));
    let (endpoint, inbound) =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity, trust).unwrap();
    let server = BlockServer::new(store.clone(), policy).accepting_pushes(store);
    let dispatch = Dispatch {
        blocks: Some(Arc::new(server)),
        ..Dispatch::default()
    }
    .spawn(inbound);
    Device {
        identity,
        endpoint,
        dispatch,
    }
}

fn random_blocks(count: usize, len_bytes: usize, seed: u64) -> Vec<(Address, Vec<u8>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut bytes = vec![0u8; len_bytes];
            rng.fill(&mut bytes[..]);
            (Address::of(&bytes), bytes)
        })
        .collect()
}

fn as_push(blocks: &[(Address, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(Address, &[u8])> = blocks.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    encode_push(VOLUME, &borrowed).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_blocks_are_pinned_and_durable_when_the_push_is_answered() {
    let (receiver_id, writer_id) = (DeviceIdentity::generate(), DeviceIdentity::generate());
    let members = [receiver_id.device_id(), writer_id.device_id()];
    let backend = Arc::new(MemoryBackend::new(1).unwrap());
    let store = Arc::new(Store::open(backend.clone(), StoreOptions::default()).unwrap());
    let receiving = receiver(receiver_id, &members, store.clone(), allow_volume(VOLUME));
    let writer = device(writer_id, &members, None);
    let pusher = client_of(&writer, &[&receiving]);

    let blocks = random_blocks(80, 64 << 10, 9);
    let sizes: Vec<usize> = blocks.iter().map(|(_, b)| b.len()).collect();
    let batches = push_batches(&sizes);
    assert!(batches.len() > 1, "80 blocks of 64 KiB fit no single push");
    for batch in batches {
        pusher
            .push_to(receiving.id(), &as_push(&blocks[batch]))
            .await
            .unwrap();
    }
    for (address, bytes) in &blocks {
        assert_eq!(&store.get_local(address).unwrap(), bytes);
        assert_eq!(store.class(address).unwrap(), Some(Class::Pinned));
    }
    // Durable: a crash right after the answer keeps every block (the memory backend
    // drops whatever was not synced).
    receiving.close().await;
    writer.close().await;
    backend.crash_now();
    drop(store);
    backend.restart();
    let reopened = Store::open(backend, StoreOptions::default()).unwrap();
    for (address, bytes) in &blocks {
        assert_eq!(&reopened.get_local(address).unwrap(), bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_a_block_that_does_not_match_its_address_is_refused_whole() {
    let (receiver_id, writer_id) = (DeviceIdentity::generate(), DeviceIdentity::generate());
    let members = [receiver_id.device_id(), writer_id.device_id()];
    let store = memory_store();
    let receiving = receiver(receiver_id, &members, store.clone(), allow_volume(VOLUME));
    let writer = device(writer_id, &members, None);
    let pusher = client_of(&writer, &[&receiving]);

    let mut blocks = random_blocks(3, 4096, 10);
    blocks[2].1[7] ^= 1;
    match pusher.push_to(receiving.id(), &as_push(&blocks)).await {
        Err(Error::Refused { message }) => assert!(message.contains("address"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing of it is stored, not even the good blocks before the bad one.
    for (address, _) in &blocks {
        assert!(!store.contains(address).unwrap());
    }
    // The server goes on taking good pushes.
    let good = random_blocks(1, 4096, 11);
    pusher
        .push_to(receiving.id(), &as_push(&good))
        .await
        .unwrap();
    assert!(store.contains(&good[0].0).unwrap());
    receiving.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_from_devices_the_policy_refuses_or_to_a_server_that_takes_none_are_refused() {
    let (ids, members) = three_devices();
    let [receiver_id, allowed_id, outsider_id] = ids;
    let policy = allow_only(allowed_id.device_id(), VOLUME);
    let store = memory_store();
    let receiving = receiver(receiver_id, &members, store.clone(), policy);
    let allowed = device(allowed_id, &members, None);
    // A member at the transport whose pushes the policy refuses (not a device of the
    // volume), and which serves blocks without taking pushes.
    let outsider = device(
        outsider_id,
        &members,
        Some((memory_store(), allow_volume(VOLUME))),
    );
    let blocks = random_blocks(2, 4096, 12);
    let body = as_push(&blocks);

    match client_of(&outsider, &[&receiving])
        .push_to(receiving.id(), &body)
        .await
    {
        Err(Error::BlockRefused { volume, .. }) => assert_eq!(volume, VOLUME.0),
        other => panic!("expected refused, got {other:?}"),
    }
    let borrowed: Vec<(Address, &[u8])> = blocks.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let other_volume = encode_push(OTHER_VOLUME, &borrowed).unwrap();
    let allowed_pusher = client_of(&allowed, &[&receiving, &outsider]);
    match allowed_pusher.push_to(receiving.id(), &other_volume).await {
        Err(Error::BlockRefused { volume, .. }) => assert_eq!(volume, OTHER_VOLUME.0),
        other => panic!("expected refused for another volume, got {other:?}"),
    }
    for (address, _) in &blocks {
        assert!(!store.contains(address).unwrap());
    }
    match allowed_pusher.push_to(outsider.id(), &body).await {
        Err(Error::Refused { .. }) => {}
        other => panic!("a server without a push store must refuse, got {other:?}"),
    }
    allowed_pusher.push_to(receiving.id(), &body).await.unwrap();
    assert!(store.contains(&blocks[0].0).unwrap());
    for device in [receiving, allowed, outsider] {
        device.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_pushes_are_refused_and_nothing_is_stored() {
    let (receiver_id, writer_id) = (DeviceIdentity::generate(), DeviceIdentity::generate());
    let members = [receiver_id.device_id(), writer_id.device_id()];
    let store = memory_store();
    let receiving = receiver(receiver_id, &members, store.clone(), allow_volume(VOLUME));
    let writer = device(writer_id, &members, None);
    let pusher = client_of(&writer, &[&receiving]);

    // One block over venti's largest sealed block, with its true address.
    let huge = vec![7u8; venti::seal::SEALED_BYTES_MAX + 1];
    let huge_address = Address::of(&huge);
    assert!(encode_push(VOLUME, &[(huge_address, &huge)]).is_err());
    let mut body = VOLUME.0.to_le_bytes().to_vec();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(huge_address.as_bytes());
    body.extend_from_slice(&(huge.len() as u32).to_le_bytes());
    body.extend_from_slice(&huge);
    assert!(decode_push(&body).is_err());
    match pusher.push_to(receiving.id(), &body).await {
        Err(Error::Refused { message }) => assert!(message.contains("largest"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!store.contains(&huge_address).unwrap());

    // More sealed bytes in one push than the bound, in blocks of a legal size.
    let many = random_blocks(PUSH_SEALED_BYTES_MAX / (256 << 10) + 1, 256 << 10, 13);
    let borrowed: Vec<(Address, &[u8])> = many.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    assert!(encode_push(VOLUME, &borrowed).is_err());
    let mut body = VOLUME.0.to_le_bytes().to_vec();
    body.extend_from_slice(&(many.len() as u16).to_le_bytes());
    for (address, bytes) in &many {
        body.extend_from_slice(address.as_bytes());
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(bytes);
    }
    // Too long for the frame kind: the sending transport already refuses it.
    let sent = writer
        .endpoint
        .request(receiving.id(), Kind::BLOCK_PUSH, &body)
        .await;
    assert!(sent.is_err(), "{sent:?}");

    // Truncated, empty, and trailing-garbage bodies.
    let good = as_push(&random_blocks(1, 1000, 14));
    let mut trailing = good.clone();
    trailing.push(0);
    let mut empty = VOLUME.0.to_le_bytes().to_vec();
    empty.extend_from_slice(&0u16.to_le_bytes());
    for bad in [
        &good[..good.len() - 1],
        &good[..10],
        &trailing[..],
        &empty[..],
    ] {
        assert!(decode_push(bad).is_err());
        match pusher.push_to(receiving.id(), bad).await {
            Err(Error::Refused { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    for (address, _) in &many {
        assert!(!store.contains(address).unwrap());
    }
    assert_eq!(store.stats().unwrap().blocks, 0);
    pusher.push_to(receiving.id(), &good).await.unwrap();
    assert_eq!(store.stats().unwrap().blocks, 1);
    receiving.close().await;
    writer.close().await;
}

#[test]
fn push_batches_fit_the_bounds_and_cover_every_block_in_order() {
    let sizes = [100usize, 3 << 20, 2 << 20, 256 << 10, 1, 4 << 20, 5];
    let batches = push_batches(&sizes);
    let mut next = 0;
    for batch in &batches {
        assert_eq!(batch.start, next);
        assert!(!batch.is_empty());
        let bytes: usize = sizes[batch.clone()].iter().sum();
        assert!(bytes <= PUSH_SEALED_BYTES_MAX || batch.len() == 1);
        next = batch.end;
    }
    assert_eq!(next, sizes.len());
    assert_eq!(push_batches(&[]), Vec::<std::ops::Range<usize>>::new());
    assert_eq!(push_batches(&vec![10; 2000]), vec![0..1024, 1024..2000]);
}

/// Fetch throughput of 64 KiB blocks from one server on loopback. A measurement, not a
/// check: `cargo test -p net --release --test blocks -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints MB/s"]
async fn measure_fetch_throughput_of_64_kib_blocks() {
    let count = 1024;
    let trio = trio(count, 64 << 10);
    let addresses: Vec<Address> = trio.blocks.iter().map(|(a, _)| *a).collect();
    let peers = [trio.server.id()];
    for in_flight in [1, 8, 16] {
        let fetcher = client_of(&trio.client, &[&trio.server]).with_in_flight_max(in_flight);
        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let results = fetcher.fetch_many(VOLUME, &addresses, &peers).await;
            let elapsed = started.elapsed();
            assert!(results.iter().all(Result::is_ok));
            rates.push((count * (64 << 10)) as f64 / 1e6 / elapsed.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "in flight {in_flight}: 64 MiB of 64 KiB blocks, median {:.0} MB/s (runs {:?})",
            rates[rates.len() / 2],
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
    trio.client.close().await;
    trio.server.close().await;
}
