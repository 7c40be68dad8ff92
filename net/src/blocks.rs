//! Block exchange: a device asks the devices of a volume for a sealed block by
//! `(volume, address)` and keeps it only if it hashes to that address.
//!
//! ```text
//! request  (Kind::BLOCK_REQUEST)  = volume u128 (little-endian) ‖ address [32]
//! response (Kind::BLOCK_RESPONSE) = status u8 ‖ sealed block (status FOUND only)
//! status: 0 FOUND, 1 NOT_FOUND, 2 REFUSED (the server's policy says no)
//! ```
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
use venti::{Address, BlockStore};

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

const STATUS_FOUND: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_REFUSED: u8 = 2;

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

/// Which devices may fetch which volumes' blocks from this device.
pub trait BlockPolicy: Send + Sync + 'static {
    /// Whether `device` (authenticated) may fetch blocks of `volume`.
    fn may_fetch(&self, device: &DeviceId, volume: VolumeId) -> bool;
}

impl<F> BlockPolicy for F
where
    F: Fn(&DeviceId, VolumeId) -> bool + Send + Sync + 'static,
{
    fn may_fetch(&self, device: &DeviceId, volume: VolumeId) -> bool {
        self(device, volume)
    }
}

/// Serves block requests from a store to the devices the policy allows.
pub struct BlockServer {
    store: Arc<dyn BlockStore>,
    policy: Arc<dyn BlockPolicy>,
    reads: Arc<Semaphore>,
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
        }
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
