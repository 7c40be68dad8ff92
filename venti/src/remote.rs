//! Blocks this device does not hold, fetched from other devices on a miss.
//!
//! venti knows nothing of peers: the caller (the daemon, over `net`'s block exchange)
//! hands the store a [`RemoteBlocks`] with [`Store::set_remote`](crate::Store::set_remote).
//! A `get` that misses asks it, checks `Address::of(bytes)` against the address asked
//! for (a remote is untrusted: wrong bytes are refused with
//! [`Error::FetchedMismatch`] and nothing is stored), stores the block in the class
//! chosen with the remote (`Cached` on an on-demand device, `Pinned` on a full copy)
//! and returns it. [`Store::prefetch`](crate::Store::prefetch) fetches many missing
//! blocks in one `fetch_many` (the tree reader uses it for the children it is about to
//! open).
//!
//! Single flight: concurrent misses of one address share one fetch. The first becomes
//! the *leader* of a [`Flight`] and fetches; the others wait for its outcome, then
//! read the block from the local store. A flight whose leader only prefetched (and did
//! not get the block) tells waiters to fetch it themselves.
//!
//! Pushing, the other direction: with [`Store::set_pusher`](crate::Store::set_pusher),
//! the store remembers the address of every block *written here* in the pinned class
//! (`put_sealed_here`, `put_sealed_owned`: sealed in this process; not blocks fetched
//! or received through `put`, and not duplicates of a block already pinned here).
//! [`Store::sync`](crate::Store::sync), after making them durable locally, hands them
//! to the [`BlockPusher`], which returns once enough other devices hold them durably.
//! Those it could not place stay queued (in memory) for the next sync or
//! [`Store::push_unpushed`](crate::Store::push_unpushed); `sync` still returns `Ok`
//! then: the blocks are durable here, and the caller's own rule decides what an
//! unplaced push means (fossil proposes anyway: the op is queued durably, and a
//! device that cannot reach the others cannot commit it either). One push runs at a
//! time, so a sync never returns while blocks put before it are still on their way in
//! another thread's push.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::{Address, Class, Error, Result, Store};

/// Sealed blocks held by other devices.
///
/// Implementations need not verify what they return (the store does), but should not
/// return blocks that were not asked for.
pub trait RemoteBlocks: Send + Sync {
    /// The sealed bytes of `address` from some other device; `None` when no device
    /// that would answer has it. Errors (network, refusals) are `Error::Remote`.
    fn fetch(&self, address: &Address) -> Result<Option<Vec<u8>>>;

    /// Those of `addresses` some device has, in any order; absent ones are left out.
    fn fetch_many(&self, addresses: &[Address]) -> Result<Vec<(Address, Vec<u8>)>> {
        let mut found = Vec::with_capacity(addresses.len());
        for address in addresses {
            if let Some(bytes) = self.fetch(address)? {
                found.push((*address, bytes));
            }
        }
        Ok(found)
    }
}

/// Places blocks written on this device on other devices (the daemon implements it
/// over the network; venti knows no peers).
pub trait BlockPusher: Send + Sync {
    /// Have enough other devices hold `addresses` durably; read their bytes with
    /// [`Store::get_local`] (an address not held here any more needs no push). Returns
    /// the addresses *not* placed, to be retried later; `Err` means none were.
    fn push(&self, store: &Store, addresses: &[Address]) -> Result<Vec<Address>>;
}

/// Push counters for `kith status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Blocks written here that no push has placed yet.
    pub unpushed_blocks: u64,
    /// Blocks placed on other devices since the store was opened.
    pub pushed_blocks: u64,
}

/// The pusher, the queue of blocks it has not placed, and the lock that makes pushes
/// run one at a time.
#[derive(Default)]
pub(crate) struct Pushes {
    pusher: parking_lot::RwLock<Option<Arc<dyn BlockPusher>>>,
    /// Whether puts are noted (a pusher is set): without one the queue would only grow.
    enabled: std::sync::atomic::AtomicBool,
    unpushed: Mutex<Vec<Address>>,
    /// Blocks taken out of `unpushed` by the push under way: still unpushed for
    /// `stats`. Changed only while `unpushed` is locked, so the two add up.
    in_flight: AtomicU64,
    running: Mutex<()>,
    pushed_blocks: AtomicU64,
}

impl Pushes {
    pub fn set(&self, pusher: Option<Arc<dyn BlockPusher>>) {
        self.enabled.store(pusher.is_some(), Ordering::SeqCst);
        *self.pusher.write() = pusher;
    }

    /// A block was appended here: queue it if it is this device's own pinned data.
    pub fn note_put(&self, address: &Address, class: Class, origin: Origin) {
        if origin == Origin::Here && class == Class::Pinned && self.enabled.load(Ordering::Relaxed)
        {
            self.unpushed.lock().push(*address);
        }
    }

    /// Queue addresses again (kept across a restart by the caller, for example).
    pub fn queue(&self, addresses: &[Address]) {
        if self.enabled.load(Ordering::Relaxed) {
            self.unpushed.lock().extend_from_slice(addresses);
        }
    }

    /// Push what is queued; what the pusher could not place goes back in the queue.
    /// Returns how many blocks stay queued.
    pub fn push(&self, store: &Store) -> Result<usize> {
        let Some(pusher) = self.pusher.read().clone() else {
            return Ok(0);
        };
        let _running = self.running.lock();
        let mut batch = {
            let mut unpushed = self.unpushed.lock();
            self.in_flight
                .store(unpushed.len() as u64, Ordering::Relaxed);
            std::mem::take(&mut *unpushed)
        };
        if batch.is_empty() {
            return Ok(0);
        }
        batch.sort_unstable();
        batch.dedup();
        let left = match pusher.push(store, &batch) {
            Ok(left) => left,
            Err(error) => {
                tracing::debug!(%error, blocks = batch.len(), "push failed; blocks stay queued");
                batch.clone()
            }
        };
        self.pushed_blocks.fetch_add(
            batch.len().saturating_sub(left.len()) as u64,
            Ordering::Relaxed,
        );
        let mut unpushed = self.unpushed.lock();
        unpushed.extend_from_slice(&left);
        self.in_flight.store(0, Ordering::Relaxed);
        Ok(unpushed.len())
    }

    pub fn stats(&self) -> PushStats {
        let unpushed = self.unpushed.lock();
        PushStats {
            unpushed_blocks: unpushed.len() as u64 + self.in_flight.load(Ordering::Relaxed),
            pushed_blocks: self.pushed_blocks.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for Pushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pushes")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Where the bytes of a put come from: sealed in this process (this device's data,
/// to be pushed) or from elsewhere (fetched, received, read back: not pushed again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Here,
    Elsewhere,
}

/// Fetch counters for `kith status`; cheap to read (no sync, no index query).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Addresses being fetched right now (a batch counts each of its addresses).
    pub fetches_in_flight: u64,
    /// Blocks fetched, verified and stored since the store was opened.
    pub fetched_blocks: u64,
    /// Sealed bytes of those blocks.
    pub fetched_bytes: u64,
    /// Blocks a remote sent whose bytes did not hash to their address.
    pub refused_blocks: u64,
}

/// The remote a store fetches misses from, and the class fetched blocks get.
#[derive(Clone)]
pub(crate) struct Remote {
    pub blocks: Arc<dyn RemoteBlocks>,
    pub class: Class,
}

/// How a flight ended, as its waiters see it.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// The block is in the local store now.
    Stored,
    /// No device has it.
    Absent,
    /// The remote sent bytes that do not hash to the address.
    Mismatch { actual: Address },
    /// The fetch failed; the text of its error.
    Failed(String),
    /// The leader only prefetched and did not get the block: fetch it yourself.
    Retry,
}

impl Outcome {
    pub fn of<T>(result: &Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::Stored,
            Err(Error::NotFound { .. }) => Outcome::Absent,
            Err(Error::FetchedMismatch { actual, .. }) => Outcome::Mismatch { actual: *actual },
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

/// One address being fetched.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Flight {
    /// Block until the leader has finished.
    pub fn wait(&self) -> Outcome {
        let mut outcome = self.outcome.lock();
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            self.done.wait(&mut outcome);
        }
    }
}

/// The flights in progress, and the counters.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Address, Arc<Flight>>>,
    pub in_flight: AtomicU64,
    pub fetched_blocks: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub refused_blocks: AtomicU64,
}

/// Either the caller leads the fetch of an address, or it waits for another's.
pub(crate) enum Joined<'f> {
    Leader(Lead<'f>),
    Waiter(Arc<Flight>),
}

impl Flights {
    /// Join the flight of `address`, starting it if there is none.
    pub fn join(&self, address: &Address) -> Joined<'_> {
        let mut map = self.map.lock();
        if let Some(flight) = map.get(address) {
            return Joined::Waiter(flight.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(*address, flight.clone());
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Joined::Leader(Lead {
            flights: self,
            address: *address,
            flight,
            finished: false,
        })
    }

    /// Start flights for those of `addresses` nobody is fetching yet.
    pub fn lead_free<'f>(&'f self, addresses: &[Address]) -> Vec<Lead<'f>> {
        let mut map = self.map.lock();
        let mut leads = Vec::new();
        for address in addresses {
            if map.contains_key(address) {
                continue;
            }
            let flight = Arc::new(Flight::default());
            map.insert(*address, flight.clone());
            leads.push(Lead {
                flights: self,
                address: *address,
                flight,
                finished: false,
            });
        }
        self.in_flight
            .fetch_add(leads.len() as u64, Ordering::Relaxed);
        leads
    }

    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            fetches_in_flight: self.in_flight.load(Ordering::Relaxed),
            fetched_blocks: self.fetched_blocks.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            refused_blocks: self.refused_blocks.load(Ordering::Relaxed),
        }
    }
}

/// The right and duty to fetch one address. Dropped unfinished (a panic in the
/// remote), it tells the waiters to try themselves.
pub(crate) struct Lead<'f> {
    flights: &'f Flights,
    pub address: Address,
    flight: Arc<Flight>,
    finished: bool,
}

impl Lead<'_> {
    /// End the flight: later misses start a new one, waiters learn `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flights.map.lock().remove(&self.address);
        self.flights.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self.flight.outcome.lock() = Some(outcome);
        self.flight.done.notify_all();
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.end(Outcome::Retry);
    }
}
