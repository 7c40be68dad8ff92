//! Block exchange: a device asks the devices of a volume for a sealed block by
//! `(volume, address)` and keeps it only if it hashes to that address; and a writer
//! *pushes* its new blocks to other devices before it proposes the op naming them, so
//! that an acknowledged write survives the loss of its writer.
//!
//! ```text
//! request  (Kind::BLOCK_REQUEST)  = volume u128 (little-endian) ‖ address [32]
//! response (Kind::BLOCK_RESPONSE) = status u8 ‖ sealed block (status FOUND only)
//! status: 0 FOUND, 1 NOT_FOUND, 2 REFUSED (the server's policy says no)
//!
//! push     (Kind::BLOCK_PUSH)     = volume u128 ‖ count u16
//!                                   ‖ (address [32] ‖ len u32 ‖ sealed [len])*count
//! answer   (Kind::BLOCK_RESPONSE) = status u8: 0 STORED (every block of the push is
//!                                   durable here), 2 REFUSED (policy)
//! ```
//!
//! A push is answered only after the receiving store has made its blocks durable
//! (`Store::sync_local`). The receiver accepts pushes only from devices its
//! [`BlockPolicy::may_push`] allows, decodes the whole body first (at most
//! [`PUSH_BLOCKS_MAX`] blocks, each at most venti's largest sealed block, at most
//! [`PUSH_SEALED_BYTES_MAX`] sealed bytes in all) and checks every block against its
//! address; a push with any bad block is refused with an `ERROR` frame and nothing of
//! it is stored. Pushed blocks are stored *pinned*: they are the group's redundancy
//! copy and must survive cache eviction. At most [`PUSHES_IN_FLIGHT_MAX`] pushes are
//! stored at once.
//!
//! Trust nobody's bytes (invariant 2): the client hashes every block it receives and
//! refuses one that does not match ([`Error::BlockMismatch`]), then asks the next
//! device. Serving is gated by the caller's [`BlockPolicy`] (devices of the volume's
//! members only); the transport has already refused devices that are not members of a
//! known user. Blocks are sealed, so a server never needs the volume's keys.
//!
//! Bounds: a response is at most [`RESPONSE_BYTES_MAX`] (venti's largest sealed block
//! plus the status byte); a client has at most its `in_flight_max` requests out per
//! batch; a server reads at most [`SERVES_IN_FLIGHT_MAX`] blocks from its store at once
//! (further requests wait in the transport's bounded queues).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use paxos::VolumeId;
use tokio::sync::Semaphore;
use venti::{Address, BlockStore, Store};

use crate::error::{Error, Result};
use crate::frame::Kind;
use crate::identity::DeviceId;
use crate::quic::{Admission, Endpoint, Inbound, Responder};

/// Bytes of a block request body.
pub const REQUEST_BYTES: usize = 16 + Address::LEN;
/// Largest block response body: the status byte and venti's largest sealed block.
pub const RESPONSE_BYTES_MAX: u32 = (1 + venti::seal::SEALED_BYTES_MAX) as u32;
const _: () = assert!(venti::seal::SEALED_BYTES_MAX < u32::MAX as usize);
/// Block requests a client has in flight per batch unless told otherwise.
pub const FETCHES_IN_FLIGHT_DEFAULT: usize = 8;
/// Store reads one server runs at once.
pub const SERVES_IN_FLIGHT_MAX: usize = 16;
/// Sealed bytes one push carries at most (a client packs batches up to this).
pub const PUSH_SEALED_BYTES_MAX: usize = 4 << 20;
/// Blocks one push carries at most.
pub const PUSH_BLOCKS_MAX: usize = 1024;
/// Bytes of a push body before its blocks, and per block besides its bytes.
const PUSH_HEAD_BYTES: usize = 16 + 2;
const PUSH_BLOCK_HEAD_BYTES: usize = Address::LEN + 4;
/// Largest push body.
pub const PUSH_BODY_BYTES_MAX: u32 =
    (PUSH_HEAD_BYTES + PUSH_BLOCKS_MAX * PUSH_BLOCK_HEAD_BYTES + PUSH_SEALED_BYTES_MAX) as u32;
const _: () = assert!(venti::seal::SEALED_BYTES_MAX <= PUSH_SEALED_BYTES_MAX);
const _: () = assert!(PUSH_BLOCKS_MAX <= u16::MAX as usize);
/// Pushes one server stores at once (each holds up to a push body in memory).
pub const PUSHES_IN_FLIGHT_MAX: usize = 4;

const STATUS_FOUND: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_REFUSED: u8 = 2;
const STATUS_STORED: u8 = 0;

/// The body of a request for `address` of `volume`.
pub fn encode_request(volume: VolumeId, address: &Address) -> [u8; REQUEST_BYTES] {
    let mut out = [0u8; REQUEST_BYTES];
    let (head, tail) = out.split_at_mut(16);
    head.copy_from_slice(&volume.0.to_le_bytes());
    tail.copy_from_slice(address.as_bytes());
    out
}

/// Decodes a request body.
pub fn decode_request(body: &[u8]) -> Result<(VolumeId, Address)> {
    let bytes: &[u8; REQUEST_BYTES] = body
        .try_into()
        .map_err(|_| Error::malformed("block request", "not 48 bytes"))?;
    let (volume, address) = bytes.split_at(16);
    let volume = u128::from_le_bytes(
        volume
            .try_into()
            .map_err(|_| Error::malformed("block request", "volume"))?,
    );
    let address = Address(
        address
            .try_into()
            .map_err(|_| Error::malformed("block request", "address"))?,
    );
    Ok((VolumeId(volume), address))
}

/// The body of a push of `blocks` for `volume`. Errors if the blocks do not fit one
/// push ([`push_batches`] cuts a list into pushes that do).
pub fn encode_push(volume: VolumeId, blocks: &[(Address, &[u8])]) -> Result<Vec<u8>> {
    let sealed_bytes: usize = blocks.iter().map(|(_, bytes)| bytes.len()).sum();
    if blocks.len() > PUSH_BLOCKS_MAX
        || sealed_bytes > PUSH_SEALED_BYTES_MAX
        || blocks
            .iter()
            .any(|(_, bytes)| bytes.len() > venti::seal::SEALED_BYTES_MAX)
    {
        return Err(Error::malformed("block push", "over the push bounds"));
    }
    let mut out =
        Vec::with_capacity(PUSH_HEAD_BYTES + blocks.len() * PUSH_BLOCK_HEAD_BYTES + sealed_bytes);
    out.extend_from_slice(&volume.0.to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u16).to_le_bytes());
    for (address, bytes) in blocks {
        out.extend_from_slice(address.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// A decoded push: every block hashes to its address.
#[derive(Debug)]
pub struct Push<'a> {
    pub volume: VolumeId,
    pub blocks: Vec<(Address, &'a [u8])>,
}

/// Decodes a push body, refusing it whole if it is malformed, over a bound, or holds a
/// block whose bytes do not hash to its address.
pub fn decode_push(body: &[u8]) -> Result<Push<'_>> {
    let too_short = || Error::malformed("block push", "truncated");
    let volume = body.get(..16).ok_or_else(too_short)?;
    let volume = VolumeId(u128::from_le_bytes(
        volume.try_into().map_err(|_| too_short())?,
    ));
    let count = body.get(16..18).ok_or_else(too_short)?;
    let count = usize::from(u16::from_le_bytes(
        count.try_into().map_err(|_| too_short())?,
    ));
    if count == 0 || count > PUSH_BLOCKS_MAX {
        return Err(Error::malformed("block push", "block count out of bounds"));
    }
    let mut rest = body.get(PUSH_HEAD_BYTES..).ok_or_else(too_short)?;
    let mut blocks = Vec::with_capacity(count);
    let mut sealed_bytes = 0usize;
    for _ in 0..count {
        let (head, tail) = rest
            .split_at_checked(PUSH_BLOCK_HEAD_BYTES)
            .ok_or_else(too_short)?;
        let (address, len) = head.split_at(Address::LEN);
        let address = Address(address.try_into().map_err(|_| too_short())?);
        let len = u32::from_le_bytes(len.try_into().map_err(|_| too_short())?) as usize;
        if len > venti::seal::SEALED_BYTES_MAX {
            return Err(Error::malformed("block push", "block over venti's largest"));
        }
        sealed_bytes += len;
        if sealed_bytes > PUSH_SEALED_BYTES_MAX {
            return Err(Error::malformed("block push", "over the push's byte bound"));
        }
        let (bytes, tail) = tail.split_at_checked(len).ok_or_else(too_short)?;
        if Address::of(bytes) != address {
            return Err(Error::malformed(
                "block push",
                "a block does not hash to its address",
            ));
        }
        blocks.push((address, bytes));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Error::malformed("block push", "bytes after the last block"));
    }
    Ok(Push { volume, blocks })
}

/// Cuts `sizes` (bytes of each block, in order) into consecutive ranges that each fit
/// one push.
pub fn push_batches(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, size) in sizes.iter().enumerate() {
        if index > start
            && (bytes + size > PUSH_SEALED_BYTES_MAX || index - start == PUSH_BLOCKS_MAX)
        {
            batches.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// Which devices may fetch which volumes' blocks from this device, and push theirs.
pub trait BlockPolicy: Send + Sync + 'static {
    /// Whether `device` (authenticated) may fetch blocks of `volume`.
    fn may_fetch(&self, device: &DeviceId, volume: VolumeId) -> bool;

    /// Whether `device` may have this device store blocks of `volume` for it (pinned:
    /// they take disk space until the namespace drops them). The devices that may fetch.
    fn may_push(&self, device: &DeviceId, volume: VolumeId) -> bool {
        self.may_fetch(device, volume)
    }
}

impl<F> BlockPolicy for F
where
    F: Fn(&DeviceId, VolumeId) -> bool + Send + Sync + 'static,
{
    fn may_fetch(&self, device: &DeviceId, volume: VolumeId) -> bool {
        self(device, volume)
    }
}

/// Serves block requests from a store to the devices the policy allows, and (with
/// [`BlockServer::accepting_pushes`]) stores what they push.
pub struct BlockServer {
    store: Arc<dyn BlockStore>,
    policy: Arc<dyn BlockPolicy>,
    reads: Arc<Semaphore>,
    pushes: Option<Arc<Store>>,
    push_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for BlockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServer")
            .field("reads_free", &self.reads.available_permits())
            .finish_non_exhaustive()
    }
}

impl BlockServer {
    pub fn new(store: Arc<dyn BlockStore>, policy: Arc<dyn BlockPolicy>) -> BlockServer {
        BlockServer {
            store,
            policy,
            reads: Arc::new(Semaphore::new(SERVES_IN_FLIGHT_MAX)),
            pushes: None,
            push_slots: Arc::new(Semaphore::new(PUSHES_IN_FLIGHT_MAX)),
        }
    }

    /// Accept [`Kind::BLOCK_PUSH`] from the devices the policy allows into `store`
    /// (without this, pushes are refused).
    pub fn accepting_pushes(mut self, store: Arc<Store>) -> BlockServer {
        self.pushes = Some(store);
        self
    }

    /// Answers one inbound [`Kind::BLOCK_REQUEST`] on a task of the current tokio
    /// runtime (the store read runs on a blocking thread). Anything else is refused.
    pub fn serve(&self, inbound: Inbound) {
        let Inbound {
            peer,
            admission,
            frame,
            responder,
            ..
        } = inbound;
        let Some(responder) = responder else {
            tracing::debug!(%peer, "block request sent as a message; dropped");
            return;
        };
        if frame.kind == Kind::BLOCK_PUSH && admission == Admission::Member {
            self.store_push(peer, frame.body, responder);
            return;
        }
        if frame.kind != Kind::BLOCK_REQUEST || admission != Admission::Member {
            responder.refuse("not a block request from a member");
            return;
        }
        let (volume, address) = match decode_request(&frame.body) {
            Ok(request) => request,
            Err(error) => {
                responder.refuse(&error.to_string());
                return;
            }
        };
        if !self.policy.may_fetch(&peer, volume) {
            tracing::debug!(%peer, volume = volume.0, "block request refused by policy");
            responder.respond(Kind::BLOCK_RESPONSE, vec![STATUS_REFUSED]);
            return;
        }
        let store = self.store.clone();
        let reads = self.reads.clone();
        tokio::spawn(async move {
            let Ok(_permit) = reads.acquire_owned().await else {
                return;
            };
            let read = tokio::task::spawn_blocking(move || read_block(&*store, &address)).await;
            answer(responder, read.unwrap_or(Err(())), &peer, &address);
        });
    }
}

impl BlockServer {
    /// Checks and stores one push on a blocking thread, then answers.
    fn store_push(&self, peer: DeviceId, body: Vec<u8>, responder: Responder) {
        let Some(store) = self.pushes.clone() else {
            responder.refuse("this device takes no pushed blocks");
            return;
        };
        // The policy needs only the volume; the blocks are checked off the runtime.
        let Some(volume) = body
            .get(..16)
            .and_then(|volume| <[u8; 16]>::try_from(volume).ok())
            .map(|volume| VolumeId(u128::from_le_bytes(volume)))
        else {
            responder.refuse("malformed block push: truncated");
            return;
        };
        if !self.policy.may_push(&peer, volume) {
            tracing::debug!(%peer, volume = volume.0, "block push refused by policy");
            responder.respond(Kind::BLOCK_RESPONSE, vec![STATUS_REFUSED]);
            return;
        }
        let slots = self.push_slots.clone();
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let stored = tokio::task::spawn_blocking(move || store_pushed(&store, &body)).await;
            match stored {
                Ok(Ok(())) => responder.respond(Kind::BLOCK_RESPONSE, vec![STATUS_STORED]),
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "block push refused");
                    responder.refuse(&error);
                }
                Err(_) => responder.refuse("store error"),
            }
        });
    }
}

/// Decodes a push (every block checked against its address before any is stored),
/// stores its blocks pinned and makes them durable.
fn store_pushed(store: &Store, body: &[u8]) -> std::result::Result<(), String> {
    let push = decode_push(body).map_err(|error| error.to_string())?;
    for (address, bytes) in &push.blocks {
        store
            .put_verified(address, bytes, venti::Class::Pinned)
            .map_err(|error| error.to_string())?;
    }
    store.sync_local().map_err(|error| error.to_string())
}

/// The response body for `address` from `store`; `Err` on a local store fault.
fn read_block(store: &dyn BlockStore, address: &Address) -> Result<Vec<u8>, ()> {
    // Only what this device holds: a store that fetches its misses from other devices
    // must not relay (a friend's cache serves no one else, and two devices missing a
    // block would ask each other in a circle).
    match store.get_local(address) {
        Ok(sealed) => {
            let mut body = Vec::with_capacity(1 + sealed.len());
            body.push(STATUS_FOUND);
            body.extend_from_slice(&sealed);
            Ok(body)
        }
        Err(venti::Error::NotFound { .. }) => Ok(vec![STATUS_NOT_FOUND]),
        Err(error) => {
            tracing::warn!(%address, %error, "reading a block to serve failed");
            Err(())
        }
    }
}

fn answer(responder: Responder, body: Result<Vec<u8>, ()>, peer: &DeviceId, address: &Address) {
    match body {
        Ok(body) => responder.respond(Kind::BLOCK_RESPONSE, body),
        Err(()) => {
            tracing::debug!(%peer, %address, "block request answered with a store error");
            responder.refuse("store error");
        }
    }
}

/// A block and where it came from.
#[derive(Debug)]
pub struct Fetched {
    /// The sealed bytes; `Address::of(bytes)` is the address asked for.
    pub bytes: Vec<u8>,
    /// The device that sent them.
    pub from: DeviceId,
    /// Devices asked before it that failed (not counting "not found"), with why.
    pub failures: Vec<(DeviceId, Error)>,
}

/// Fetches blocks from other devices over an [`Endpoint`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlockClient {
    endpoint: Endpoint,
    in_flight_max: usize,
}

impl BlockClient {
    pub fn new(endpoint: Endpoint) -> BlockClient {
        BlockClient {
            endpoint,
            in_flight_max: FETCHES_IN_FLIGHT_DEFAULT,
        }
    }

    /// At most `in_flight_max` (≥ 1) requests in flight per [`fetch_many`](Self::fetch_many).
    pub fn with_in_flight_max(mut self, in_flight_max: usize) -> BlockClient {
        self.in_flight_max = in_flight_max.max(1);
        self
    }

    /// Asks one device. `Ok(None)`: it does not hold the block.
    pub async fn fetch_from(
        &self,
        peer: DeviceId,
        volume: VolumeId,
        address: &Address,
    ) -> Result<Option<Vec<u8>>> {
        let request = encode_request(volume, address);
        let answer = self
            .endpoint
            .request(peer, Kind::BLOCK_REQUEST, &request)
            .await?;
        if answer.kind != Kind::BLOCK_RESPONSE {
            return Err(Error::malformed("block response", "wrong frame kind"));
        }
        let mut body = answer.body;
        match body.first().copied() {
            Some(STATUS_FOUND) => {
                body.remove(0);
                let actual = Address::of(&body);
                if actual != *address {
                    return Err(Error::BlockMismatch {
                        peer: peer.fingerprint(),
                        expected: *address,
                        actual,
                    });
                }
                Ok(Some(body))
            }
            Some(STATUS_NOT_FOUND) if body.len() == 1 => Ok(None),
            Some(STATUS_REFUSED) if body.len() == 1 => Err(Error::BlockRefused {
                peer: peer.fingerprint(),
                volume: volume.0,
            }),
            _ => Err(Error::malformed("block response", "bad status")),
        }
    }

    /// Sends one push (a body from [`encode_push`]) to `peer`; `Ok` once `peer` holds
    /// every block of it durably.
    pub async fn push_to(&self, peer: DeviceId, body: &[u8]) -> Result<()> {
        let answer = self.endpoint.request(peer, Kind::BLOCK_PUSH, body).await?;
        if answer.kind != Kind::BLOCK_RESPONSE {
            return Err(Error::malformed("block push answer", "wrong frame kind"));
        }
        match answer.body.as_slice() {
            [STATUS_STORED] => Ok(()),
            [STATUS_REFUSED] => Err(Error::BlockRefused {
                peer: peer.fingerprint(),
                volume: body
                    .get(..16)
                    .and_then(|volume| <[u8; 16]>::try_from(volume).ok())
                    .map(u128::from_le_bytes)
                    .unwrap_or_default(),
            }),
            _ => Err(Error::malformed("block push answer", "bad status")),
        }
    }

    /// Asks `peers` in order until one sends the block and it matches `address`.
    pub async fn fetch(
        &self,
        volume: VolumeId,
        address: &Address,
        peers: &[DeviceId],
    ) -> Result<Fetched> {
        let mut failures = Vec::new();
        for peer in peers {
            match self.fetch_from(*peer, volume, address).await {
                Ok(Some(bytes)) => {
                    return Ok(Fetched {
                        bytes,
                        from: *peer,
                        failures,
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%peer, %address, %error, "block fetch failed; next device");
                    failures.push((*peer, error));
                }
            }
        }
        Err(match failures.pop() {
            Some((_, last)) => Error::BlockUnavailable {
                address: *address,
                peers_asked: peers.len(),
                last: Box::new(last),
            },
            None => Error::BlockNotFound {
                address: *address,
                peers_asked: peers.len(),
            },
        })
    }

    /// [`fetch`](Self::fetch) of each address, at most `in_flight_max` at once;
    /// results in the order of `addresses`.
    pub async fn fetch_many(
        &self,
        volume: VolumeId,
        addresses: &[Address],
        peers: &[DeviceId],
    ) -> Vec<Result<Fetched>> {
        let addresses: Arc<[Address]> = addresses.into();
        let peers: Arc<[DeviceId]> = peers.into();
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.in_flight_max.min(addresses.len()) {
            let (client, addresses, peers, next) =
                (self.clone(), addresses.clone(), peers.clone(), next.clone());
            workers.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(address) = addresses.get(index) else {
                        return done;
                    };
                    done.push((index, client.fetch(volume, address, &peers).await));
                }
            });
        }
        let mut results: Vec<Option<Result<Fetched>>> = std::iter::repeat_with(|| None)
            .take(addresses.len())
            .collect();
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(done) => {
                    for (index, result) in done {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(result);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "block fetch worker failed"),
            }
        }
        results
            .into_iter()
            .zip(addresses.iter())
            .map(|(result, address)| {
                result.unwrap_or(Err(Error::BlockUnavailable {
                    address: *address,
                    peers_asked: 0,
                    last: Box::new(Error::EndpointClosed),
                }))
            })
            .collect()
    }
}
