//! [`Store`]: sealed blocks in arenas, found through the SQLite index.
//!
//! One writer, many readers. Puts take the writer lock, reserve the record's place at
//! the end of the current arena, note it in an in-memory *pending* map and queue the
//! record (header and sealed block in one owned buffer) to the arena writer thread
//! (`write_queue.rs`), which appends it (gathered into 4 MiB aligned `O_DIRECT`
//! writes where the file system allows it, else one `write_at` each; no fsync); a
//! single `put` that finds the writer thread idle makes that write itself. A put
//! touches SQLite only for one indexed lookup (is the address stored already?). `sync()`
//! first waits for the queue to be written (the staged tail included), then fsyncs
//! every arena written since the last sync (and the directory, if an arena was
//! created) and only then commits all pending rows to the index in one transaction. Readers take no writer lock: they look
//! in the pending map (waiting for a record still queued), then in the index through
//! their own read-only SQLite connection, and `read_at` the record, checking header and
//! hash before returning a byte — except [`Store::get_for_open`], the tree reader's
//! path, which checks the header and leaves the payload hash to the opener (one read
//! into the reader's buffer, no hash: see `seal`'s "Which checks a read needs").
//!
//! A queued write that fails (ENOSPC) stops the writer from writing anything after it;
//! the next put or sync (whichever takes the writer lock first) rolls back the rows and
//! arena space reserved for the failed writes and returns the error. Every put learns
//! its own outcome: `put` waits for its write, and `put_sealed_owned` returns a ticket
//! that [`BlockStore::wait_puts`] checks (the tree writer does so before `finish`
//! returns).
//!
//! Durability contract: after `sync()` returns, every block put before it survives a
//! crash at any instant. Arena bytes are durable before the index commit that refers to
//! them; records past an arena's `indexed_through` are re-indexed on open (they were
//! written but their commit was lost); a torn or garbage tail is cut, never served.
//! Operations that delete (`remove`, eviction, compaction) sync pending puts first, so a
//! tail scan can never resurrect a block that was removed.
//!
//! Classes: cached blocks count hits in memory; hits reach the index in the next commit,
//! and every `ageing_interval_hits` hits all cached hit counts are halved. When cached
//! bytes exceed `cache_bytes_max`, the least-hit cached blocks leave the index at the
//! next sync (their bytes leave the disk at the next compaction).
//!
//! Remote: with [`Store::set_remote`], a `get` that finds nothing locally fetches the
//! block from other devices (see [`crate::remote`]): verified against its address,
//! stored in the remote's class, single-flight per address. Fetching cached blocks
//! past the budget by `1/CACHE_OVERSHOOT_ONE_IN` syncs (which evicts) on the spot, so
//! an on-demand device that only reads stays within its budget without a sync per
//! block. [`Store::get_local`] never asks the remote (serving others must not).
//!
//! Push: with [`Store::set_pusher`], blocks sealed here and stored pinned are queued,
//! and [`Store::sync`] hands them to the pusher once they are durable, so that other
//! devices hold them before the caller proposes an op naming them (see
//! [`crate::remote`]). [`Store::sync_local`] only makes puts durable.
//!
//! Known limits: the index is the only record of `remove` and of a downgrade from
//! pinned to cached, so rebuilding the index from the arenas brings back removed
//! blocks that compaction has not yet erased and re-pins downgraded ones — both err on
//! the side of keeping data. A put of an address that is indexed but whose record is
//! damaged is a no-op: `remove` it first, then put it again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use crate::arena::{
    self, ARENA_HEADER_BYTES, ArenaHeader, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
    RecordHeader, ScanItem,
};
use crate::backend::{Backend, BackendFile};
use crate::index::{self, Index, IndexState, Location, Meta, Reader, Upsert};
use crate::remote::{
    BlockPusher, Flights, Joined, Lead, Origin, Outcome, PushStats, Pushes, Remote, RemoteBlocks,
    RemoteStats,
};
use crate::seal::AddressCheck;
use crate::write_queue::{WriteJob, WriteQueue};
use crate::{Address, BlockStore, Class, Error, Fetched, PUT_HEADROOM_BYTES, PutTicket, Result};

/// How many reads may find a block's arena gone (compaction moved it) before giving up.
const GET_ATTEMPTS_MAX: usize = 4;
/// Distinct addresses whose hits are buffered between commits; more are not counted.
const HIT_BUFFER_ENTRIES_MAX: usize = 1 << 16;
/// Rows fetched per round of eviction.
const EVICTION_BATCH_ROWS: usize = 256;
/// Fetched cached blocks may pass the cache budget by `1/CACHE_OVERSHOOT_ONE_IN` of it
/// before the fetch syncs and evicts (a regular sync evicts down to the budget).
const CACHE_OVERSHOOT_ONE_IN: u64 = 16;
/// Addresses asked for in one `fetch_many` (a batch of 64 KiB blocks: 4 MiB).
const PREFETCH_BATCH_ADDRESSES_MAX: usize = 64;

/// Tunables; [`StoreOptions::default`] suits a desktop.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// An arena is closed and a new one started when the next record would pass this.
    pub arena_bytes_max: u64,
    /// Budget for cached-class payload bytes.
    pub cache_bytes_max: u64,
    /// Halve cached hit counts after this many hits.
    pub ageing_interval_hits: u64,
    /// Unsynced bytes that force an internal sync (bounds the pending map).
    pub unsynced_bytes_max: u64,
    /// Idle read-only index connections kept for reuse.
    pub readers_idle_max: usize,
    /// Hash every put and refuse bytes that do not match their address.
    pub verify_puts: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            arena_bytes_max: 1 << 30,
            cache_bytes_max: 4 << 30,
            ageing_interval_hits: 1 << 16,
            unsynced_bytes_max: 1 << 30,
            readers_idle_max: 16,
            verify_puts: true,
        }
    }
}

/// Counts and sizes, from the index plus what is pending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub blocks: u64,
    pub pinned_bytes: u64,
    pub cached_bytes: u64,
    pub arenas: u64,
    /// Arena file bytes on disk, headers and dead records included.
    pub arena_bytes: u64,
    /// Arena bytes no index row refers to (removed, evicted, torn): compaction frees them.
    pub dead_bytes: u64,
    /// Blocks fetched from other devices, and what is being fetched now.
    pub remote: RemoteStats,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub records_checked: u64,
    /// One typed error (with arena and offset) per bad record or arena header.
    pub problems: Vec<Error>,
}

/// What a compaction pass did.
#[derive(Debug, Default)]
pub struct CompactReport {
    pub arenas_rewritten: u64,
    pub records_copied: u64,
    /// Arena file bytes before minus after (puts during compaction count against it).
    pub bytes_freed: u64,
    /// Records that could not be copied because they were damaged; their rows are gone.
    pub damaged: Vec<Error>,
}

/// The block store. See the module comment for the design.
pub struct Store {
    backend: Arc<dyn Backend>,
    options: StoreOptions,
    index_path: PathBuf,
    writer: Mutex<Writer>,
    /// Queued or written but not yet committed to the index. Only the writer inserts or
    /// clears.
    pending: RwLock<HashMap<Address, Pending>>,
    /// The arena writer thread's queue, and the thread (joined on drop).
    queue: WriteQueue,
    writer_thread: Option<JoinHandle<()>>,
    arenas: RwLock<HashMap<u32, Arc<dyn BackendFile>>>,
    readers: Mutex<Vec<Reader>>,
    hits: Mutex<HashMap<Address, u32>>,
    open_report: Vec<Error>,
    remote: RwLock<Option<Remote>>,
    flights: Flights,
    pushes: Pushes,
    /// Rounds of index deletions since open; see [`Store::removals`].
    removals: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Writer {
    index: Index,
    meta: Meta,
    /// The arena puts append to, and its length.
    current: Option<(u32, u64)>,
    /// Arenas written since the last sync, with the length they must be indexed through.
    unsynced_arenas: BTreeMap<u32, u64>,
    dir_dirty: bool,
    upserts: Vec<Upsert>,
    touches: Vec<(Address, u64)>,
    unsynced_bytes: u64,
    /// Cached payload bytes, committed and pending.
    cached_bytes: u64,
    hits_since_ageing: u64,
    scratch: Vec<u8>,
    /// The last ticket queued to the writer thread.
    last_ticket: u64,
    /// Records queued since the queue was last seen fully written, in ticket order:
    /// what a failed write makes the store roll back.
    in_flight: VecDeque<Reservation>,
}

/// How `append` gets a record into its arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// Hand it to the writer thread (bulk puts: the caller goes on sealing).
    Queued,
    /// Write it on the calling thread if the writer thread has nothing queued (a
    /// single put that waits for its write anyway saves two thread switches),
    /// otherwise queue it behind the rest.
    DirectWhenIdle,
}

/// A pending block: where its record is, and the ticket of its queued write
/// (`PutTicket::DONE` for a record written directly).
#[derive(Clone, Copy, Debug)]
struct Pending {
    location: Location,
    ticket: u64,
}

/// A record queued to the writer thread.
#[derive(Clone, Copy, Debug)]
struct Reservation {
    ticket: u64,
    location: Location,
}

impl Store {
    /// Open (or create) the store on `backend`, reconciling the index with the arenas:
    /// re-index unindexed tails, cut torn tails, drop rows of missing or truncated
    /// arenas, finish interrupted compactions. Problems found are in [`Store::open_report`].
    pub fn open(backend: Arc<dyn Backend>, options: StoreOptions) -> Result<Store> {
        let index_path = backend.index_path();
        let (index, state) = Index::open(&index_path)?;
        let mut report = Vec::new();
        let mut writer = Writer {
            meta: Meta::default(),
            index,
            current: None,
            unsynced_arenas: BTreeMap::new(),
            dir_dirty: false,
            upserts: Vec::new(),
            touches: Vec::new(),
            unsynced_bytes: 0,
            cached_bytes: 0,
            hits_since_ageing: 0,
            scratch: Vec::new(),
            last_ticket: 0,
            in_flight: VecDeque::new(),
        };
        let arenas = reconcile(backend.as_ref(), &mut writer, state, &mut report)?;
        let (_, cached_bytes, _) = index::totals(writer.index.conn())?;
        writer.cached_bytes = cached_bytes;
        let (queue, writer_thread) = WriteQueue::start(writer.last_ticket + 1)?;
        Ok(Store {
            backend,
            options,
            index_path,
            writer: Mutex::new(writer),
            pending: RwLock::new(HashMap::new()),
            queue,
            writer_thread: Some(writer_thread),
            arenas: RwLock::new(arenas),
            readers: Mutex::new(Vec::new()),
            hits: Mutex::new(HashMap::new()),
            open_report: report,
            remote: RwLock::new(None),
            flights: Flights::default(),
            pushes: Pushes::default(),
            removals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Delete the index and open, rebuilding it from the arenas.
    pub fn open_rebuilding_index(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Store> {
        let path = backend.index_path();
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        Store::open(backend, options)
    }

    /// What open found wrong and repaired or worked around: cut tails, damaged stretches,
    /// lost rows. Empty for a clean store.
    pub fn open_report(&self) -> &[Error] {
        &self.open_report
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Store `sealed` under `address`. Written when this returns `Ok`; durable after
    /// the next [`Store::sync`].
    pub fn put(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        self.put_checked(
            address,
            sealed,
            class,
            self.options.verify_puts,
            Origin::Elsewhere,
        )
    }

    /// [`Store::put`] without re-hashing: for blocks sealed in this process, whose
    /// address was computed from these bytes.
    pub fn put_sealed_here(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        self.put_checked(address, sealed, class, false, Origin::Here)
    }

    /// [`Store::put`] of bytes from elsewhere that the caller has just hashed and found
    /// equal to `address` (a block another device pushed here): not hashed again, and
    /// never pushed on by this device.
    pub fn put_verified(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        self.put_checked(address, sealed, class, false, Origin::Elsewhere)
    }

    /// [`Store::put_sealed_here`] of `buffer[PUT_HEADROOM_BYTES..]`, without copying it
    /// or waiting for the write: the record header goes into the headroom and the
    /// buffer (taken, `buffer` is left empty) to the writer thread. The put has
    /// succeeded once [`Store::wait_puts`] over the returned ticket says so.
    pub fn put_sealed_owned(
        &self,
        address: &Address,
        buffer: &mut Vec<u8>,
        class: Class,
    ) -> Result<PutTicket> {
        self.put_buffer(address, buffer, class, Write::Queued, Origin::Here)
    }

    fn put_buffer(
        &self,
        address: &Address,
        buffer: &mut Vec<u8>,
        class: Class,
        write: Write,
        origin: Origin,
    ) -> Result<PutTicket> {
        let sealed_bytes = buffer
            .len()
            .checked_sub(PUT_HEADROOM_BYTES)
            .ok_or_else(|| Error::Malformed {
                what: "put buffer",
                detail: format!("{} bytes, shorter than its headroom", buffer.len()),
            })?;
        if sealed_bytes > RECORD_PAYLOAD_BYTES_MAX as usize {
            return Err(Error::TooLarge {
                bytes: sealed_bytes,
                bytes_max: RECORD_PAYLOAD_BYTES_MAX as usize,
            });
        }
        let mut writer = self.writer.lock();
        if self.queue.has_failure() {
            self.roll_back_failed_writes(&mut writer)?;
        }
        let pending = self.pending.read().get(address).copied();
        let (existing, ticket) = match pending {
            // A duplicate of a queued block succeeds only if that write does.
            Some(pending) => (Some(pending.location), PutTicket(pending.ticket)),
            None => (
                index::lookup(writer.index.conn(), address)?,
                PutTicket::DONE,
            ),
        };
        let seq = writer.next_seq();
        match existing {
            Some(location) if location.class == Class::Pinned || class == Class::Cached => {
                writer.touches.push((*address, seq));
                Ok(ticket)
            }
            Some(location) => {
                // Cached → pinned: a new record, so a rebuilt index keeps the promise.
                writer.cached_bytes = writer
                    .cached_bytes
                    .saturating_sub(u64::from(location.length));
                let buffer = std::mem::take(buffer);
                let ticket =
                    self.append(&mut writer, address, buffer, Class::Pinned, seq, write)?;
                self.pushes.note_put(address, Class::Pinned, origin);
                Ok(ticket)
            }
            None => {
                let buffer = std::mem::take(buffer);
                let ticket = self.append(&mut writer, address, buffer, class, seq, write)?;
                self.pushes.note_put(address, class, origin);
                Ok(ticket)
            }
        }
    }

    /// Wait for the puts with tickets `first..=last`; an error if any of them failed
    /// (or, conservatively, a put of another caller queued between them).
    pub fn wait_puts(&self, first: PutTicket, last: PutTicket) -> Result<()> {
        if last == PutTicket::DONE {
            return Ok(());
        }
        let outcome = self.queue.wait(first.0.max(1), last.0);
        if outcome.is_err() && self.queue.has_failure() {
            // Roll back now, so no lookup finds the failed blocks pending. The error
            // it returns is the one `outcome` already carries.
            let mut writer = self.writer.lock();
            let _ = self.roll_back_failed_writes(&mut writer);
        }
        outcome
    }

    /// A buffer the writer thread is done with, for the next `put_sealed_owned`.
    pub fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.queue.spare_buffer()
    }

    fn put_checked(
        &self,
        address: &Address,
        sealed: &[u8],
        class: Class,
        verify: bool,
        origin: Origin,
    ) -> Result<()> {
        if sealed.len() > RECORD_PAYLOAD_BYTES_MAX as usize {
            return Err(Error::TooLarge {
                bytes: sealed.len(),
                bytes_max: RECORD_PAYLOAD_BYTES_MAX as usize,
            });
        }
        if verify && Address::of(sealed) != *address {
            return Err(Error::AddressMismatch { address: *address });
        }
        let mut buffer = self.queue.spare_buffer().unwrap_or_default();
        buffer.clear();
        buffer.reserve(PUT_HEADROOM_BYTES + sealed.len());
        buffer.resize(PUT_HEADROOM_BYTES, 0);
        buffer.extend_from_slice(sealed);
        let ticket = self.put_buffer(address, &mut buffer, class, Write::DirectWhenIdle, origin)?;
        self.wait_puts(ticket, ticket)
    }

    /// Fetch blocks missing here from `remote` (none: stop fetching), storing them as
    /// `class`.
    pub fn set_remote(&self, remote: Option<Arc<dyn RemoteBlocks>>, class: Class) {
        *self.remote.write() = remote.map(|blocks| Remote { blocks, class });
    }

    /// Fetch counters; cheap (no sync), for status displays.
    pub fn remote_stats(&self) -> RemoteStats {
        self.flights.stats()
    }

    /// The sealed bytes of `address`, checked against it; fetched from the remote (if
    /// one is set) when not held here.
    pub fn get(&self, address: &Address) -> Result<Vec<u8>> {
        match self.get_local(address) {
            Err(Error::NotFound { .. }) => {}
            held => return held,
        }
        let Some(remote) = self.remote.read().clone() else {
            return Err(Error::NotFound { address: *address });
        };
        for _ in 0..GET_ATTEMPTS_MAX {
            match self.flights.join(address) {
                Joined::Leader(lead) => return self.fetch_one(&remote, lead),
                Joined::Waiter(flight) => match flight.wait() {
                    Outcome::Stored | Outcome::Retry => match self.get_local(address) {
                        // Evicted again already, or only prefetched: go again.
                        Err(Error::NotFound { .. }) => continue,
                        held => return held,
                    },
                    Outcome::Absent => return Err(Error::NotFound { address: *address }),
                    Outcome::Mismatch { actual } => {
                        return Err(Error::FetchedMismatch {
                            address: *address,
                            actual,
                        });
                    }
                    Outcome::Failed(detail) => {
                        return Err(Error::Remote {
                            address: *address,
                            detail,
                        });
                    }
                },
            }
        }
        Err(Error::NotFound { address: *address })
    }

    /// Fetch the missing ones of `addresses` from the remote in batches, and store
    /// them. Fetch failures are logged and left to `get`; errors are the local store's.
    pub fn prefetch(&self, addresses: &[Address]) -> Result<()> {
        let Some(remote) = self.remote.read().clone() else {
            return Ok(());
        };
        let mut seen = HashSet::with_capacity(addresses.len());
        let mut missing = Vec::new();
        for address in addresses {
            if seen.insert(*address) && self.locate(address)?.is_none() {
                missing.push(*address);
            }
        }
        for batch in missing.chunks(PREFETCH_BATCH_ADDRESSES_MAX) {
            let mut leads = self.flights.lead_free(batch);
            if leads.is_empty() {
                continue;
            }
            let asked: Vec<Address> = leads.iter().map(|lead| lead.address).collect();
            let fetched = match remote.blocks.fetch_many(&asked) {
                Ok(fetched) => fetched,
                Err(error) => {
                    tracing::debug!(%error, blocks = asked.len(), "prefetch failed");
                    continue;
                }
            };
            for (address, bytes) in fetched {
                let Some(at) = leads.iter().position(|lead| lead.address == address) else {
                    tracing::debug!(%address, "prefetch: remote sent a block not asked for");
                    continue;
                };
                let lead = leads.swap_remove(at);
                let stored = self.store_fetched(&remote, &address, &bytes);
                match stored {
                    Ok(()) | Err(Error::FetchedMismatch { .. }) => {
                        lead.finish(Outcome::of(&stored));
                    }
                    Err(error) => {
                        lead.finish(Outcome::Retry);
                        return Err(error);
                    }
                }
            }
            // Dropping the rest tells their waiters to fetch on their own.
        }
        Ok(())
    }

    /// Lead the fetch of one address: fetch, verify, store, and tell the waiters.
    fn fetch_one(&self, remote: &Remote, lead: Lead<'_>) -> Result<Vec<u8>> {
        let address = lead.address;
        // Another leader may have stored it between our miss and our lead.
        let result = match self.get_local(&address) {
            Err(Error::NotFound { .. }) => match remote.blocks.fetch(&address) {
                Ok(Some(bytes)) => self.store_fetched(remote, &address, &bytes).map(|()| bytes),
                Ok(None) => Err(Error::NotFound { address }),
                Err(Error::NotFound { .. }) => Err(Error::NotFound { address }),
                Err(error @ (Error::Remote { .. } | Error::FetchedMismatch { .. })) => Err(error),
                Err(error) => Err(Error::Remote {
                    address,
                    detail: error.to_string(),
                }),
            },
            held => held,
        };
        lead.finish(Outcome::of(&result));
        result
    }

    /// Verify fetched bytes against their address and store them in the remote's class.
    fn store_fetched(&self, remote: &Remote, address: &Address, bytes: &[u8]) -> Result<()> {
        let actual = Address::of(bytes);
        if actual != *address {
            self.flights.refused_blocks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%address, %actual, "block from another device refused: wrong bytes");
            return Err(Error::FetchedMismatch {
                address: *address,
                actual,
            });
        }
        self.put_checked(address, bytes, remote.class, false, Origin::Elsewhere)?;
        self.flights.fetched_blocks.fetch_add(1, Ordering::Relaxed);
        self.flights
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if remote.class == Class::Cached {
            let budget = self.options.cache_bytes_max;
            let mut writer = self.writer.lock();
            if writer.cached_bytes > budget.saturating_add(budget / CACHE_OVERSHOOT_ONE_IN) {
                self.sync_locked(&mut writer)?;
            }
        }
        Ok(())
    }

    /// The sealed bytes of `address` if this store holds them, checked against it;
    /// never asks the remote.
    pub fn get_local(&self, address: &Address) -> Result<Vec<u8>> {
        self.read_local(address, |file, location| {
            let (_, bytes) = arena::read_record(
                file,
                location.arena,
                location.offset,
                address,
                location.length,
            )?;
            Ok(bytes)
        })
    }

    /// [`BlockStore::get_for_open`]: a block held here is read into `buffer` in one
    /// read, its record header checked against the index but its payload not hashed
    /// ([`AddressCheck::Unhashed`]: opening checks it more strongly, see `seal`); a
    /// block fetched from the remote is hashed like any fetched block.
    pub fn get_for_open(&self, address: &Address, buffer: &mut Vec<u8>) -> Result<Fetched> {
        let local = self.read_local(address, |file, location| {
            let (_, range) = arena::read_record_unhashed(
                file,
                location.arena,
                location.offset,
                address,
                location.length,
                buffer,
            )?;
            Ok(Fetched {
                range,
                check: AddressCheck::Unhashed {
                    arena: location.arena,
                    offset: location.offset,
                },
            })
        });
        match local {
            Err(Error::NotFound { .. }) => {}
            held => return held,
        }
        *buffer = self.get(address)?;
        Ok(Fetched {
            range: 0..buffer.len(),
            check: AddressCheck::Hashed,
        })
    }

    /// Find `address` here (waiting for its record if it is still queued) and `read`
    /// its record; counts a hit of a cached block.
    fn read_local<T>(
        &self,
        address: &Address,
        mut read: impl FnMut(&dyn BackendFile, &Location) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..GET_ATTEMPTS_MAX {
            let pending = self.pending.read().get(address).copied();
            let location = match pending {
                Some(pending) => {
                    if pending.ticket != PutTicket::DONE.0 {
                        // Still queued, perhaps: wait until its record is in the file.
                        self.queue.wait(pending.ticket, pending.ticket)?;
                    }
                    pending.location
                }
                None => match self.locate(address)? {
                    Some(location) => location,
                    None => return Err(Error::NotFound { address: *address }),
                },
            };
            let Some(file) = self.arenas.read().get(&location.arena).cloned() else {
                // Compaction retired the arena between lookup and read: look again.
                continue;
            };
            let value = read(file.as_ref(), &location)?;
            if location.class == Class::Cached {
                let mut hits = self.hits.lock();
                if hits.len() < HIT_BUFFER_ENTRIES_MAX || hits.contains_key(address) {
                    *hits.entry(*address).or_insert(0) += 1;
                }
            }
            return Ok(value);
        }
        Err(Error::NotFound { address: *address })
    }

    pub fn contains(&self, address: &Address) -> Result<bool> {
        Ok(self.locate(address)?.is_some())
    }

    /// The class of a stored block.
    pub fn class(&self, address: &Address) -> Result<Option<Class>> {
        Ok(self.locate(address)?.map(|location| location.class))
    }

    /// Make every earlier put durable, then (with a pusher set) have other devices
    /// hold this device's new blocks; see [`crate::remote`]. Blocks the pusher could
    /// not place stay queued and do not make this fail.
    pub fn sync(&self) -> Result<()> {
        self.sync_local()?;
        self.pushes.push(self)?;
        Ok(())
    }

    /// Make every earlier put durable, without pushing.
    pub fn sync_local(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)
    }

    /// Hand this device's new blocks to `pusher` at every sync (none: stop noting and
    /// pushing them). See [`crate::remote`].
    pub fn set_pusher(&self, pusher: Option<Arc<dyn BlockPusher>>) {
        self.pushes.set(pusher);
    }

    /// Push the queued blocks now (a background retry); returns how many stay queued.
    pub fn push_unpushed(&self) -> Result<usize> {
        self.pushes.push(self)
    }

    /// Queue `addresses` for the next push (for example those a previous run could
    /// not place); ignored without a pusher.
    pub fn queue_push(&self, addresses: &[Address]) {
        self.pushes.queue(addresses);
    }

    /// Push counters; cheap.
    pub fn push_stats(&self) -> PushStats {
        self.pushes.stats()
    }

    /// Change a stored block's class. Pinning a cached block writes a new record (so a
    /// rebuilt index keeps the pin); unpinning changes the index only.
    pub fn set_class(&self, address: &Address, class: Class) -> Result<()> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        let location = index::lookup(writer.index.conn(), address)?
            .ok_or(Error::NotFound { address: *address })?;
        match (location.class, class) {
            (Class::Cached, Class::Pinned) => {
                let file = self.arena_file(location.arena)?;
                let (_, bytes) = arena::read_record(
                    file.as_ref(),
                    location.arena,
                    location.offset,
                    address,
                    location.length,
                )?;
                writer.cached_bytes = writer
                    .cached_bytes
                    .saturating_sub(u64::from(location.length));
                let seq = writer.next_seq();
                let mut buffer = vec![0; PUT_HEADROOM_BYTES];
                buffer.extend_from_slice(&bytes);
                self.append(
                    &mut writer,
                    address,
                    buffer,
                    Class::Pinned,
                    seq,
                    Write::DirectWhenIdle,
                )?;
                self.sync_locked(&mut writer)
            }
            (Class::Pinned, Class::Cached) => {
                let tx = writer.index.transaction()?;
                index::set_class(&tx, address, Class::Cached)?;
                self.backend.commit_point()?;
                tx.commit()?;
                writer.cached_bytes += u64::from(location.length);
                self.evict_locked(&mut writer)
            }
            _ => Ok(()),
        }
    }

    /// Forget `addresses` (absent ones are ignored); durable when this returns. The
    /// bytes stay in their arenas until the next compaction.
    pub fn remove(&self, addresses: &[Address]) -> Result<()> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        self.remove_locked(&mut writer, addresses)
    }

    /// A counter that moves whenever blocks leave the index (`remove`, eviction of
    /// cached blocks, compaction dropping damaged records). While it stands still, a
    /// block once seen here is still here: callers that learned "this whole tree is
    /// held" may rely on it until then.
    pub fn removals(&self) -> u64 {
        self.removals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counted after the deletion commits: whoever read the count before it may
    /// have seen the rows, and will see the count move.
    fn count_removal(&self) {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Check every indexed record (header, length, hash) and every arena header.
    /// Damaged blocks are reported, never repaired; undamaged ones stay readable.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        let mut report = VerifyReport::default();
        let arenas: Vec<(u32, Arc<dyn BackendFile>)> = {
            let map = self.arenas.read();
            let mut list: Vec<_> = map.iter().map(|(id, file)| (*id, file.clone())).collect();
            list.sort_by_key(|(id, _)| *id);
            list
        };
        for (id, file) in &arenas {
            let mut header = [0u8; ARENA_HEADER_BYTES as usize];
            match file.read_at(0, &mut header) {
                Ok(()) => {
                    if let Err(error) = ArenaHeader::decode(&header, *id) {
                        report.problems.push(error);
                    }
                }
                Err(error) => report.problems.push(error),
            }
            for (address, location, _) in index::blocks_in_arena(writer.index.conn(), *id)? {
                report.records_checked += 1;
                if let Err(error) = arena::read_record(
                    file.as_ref(),
                    *id,
                    location.offset,
                    &address,
                    location.length,
                ) {
                    report.problems.push(error);
                }
            }
        }
        Ok(report)
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        let (pinned_bytes, cached_bytes, blocks) = index::totals(writer.index.conn())?;
        let mut stats = Stats {
            blocks,
            pinned_bytes,
            cached_bytes,
            remote: self.flights.stats(),
            ..Stats::default()
        };
        let live = index::live_bytes_per_arena(writer.index.conn(), RECORD_HEADER_BYTES as u64)?;
        let live: HashMap<u32, u64> = live.into_iter().collect();
        for (id, file) in self.arenas.read().iter() {
            let len = file.len()?;
            stats.arenas += 1;
            stats.arena_bytes += len;
            let used = ARENA_HEADER_BYTES + live.get(id).copied().unwrap_or(0);
            stats.dead_bytes += len.saturating_sub(used);
        }
        Ok(stats)
    }

    /// Rewrite every arena whose dead bytes are at least `dead_fraction_min` of it
    /// (0.0: any dead byte) so dead records leave the disk. Crash-safe at every step:
    /// live records are copied to a new arena and synced, one transaction moves their
    /// rows and retires the old arena, and only then is the old file deleted.
    pub fn compact(&self, dead_fraction_min: f64) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let candidates = {
            let mut writer = self.writer.lock();
            self.sync_locked(&mut writer)?;
            let live: HashMap<u32, u64> =
                index::live_bytes_per_arena(writer.index.conn(), RECORD_HEADER_BYTES as u64)?
                    .into_iter()
                    .collect();
            let mut candidates = Vec::new();
            let mut ids: Vec<u32> = self.arenas.read().keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let len = self.arena_file(id)?.len()?;
                let used = ARENA_HEADER_BYTES + live.get(&id).copied().unwrap_or(0);
                let dead = len.saturating_sub(used);
                if dead > 0 && dead as f64 >= dead_fraction_min * len as f64 {
                    candidates.push(id);
                    if writer.current.map(|(current, _)| current) == Some(id) {
                        // New puts go to a fresh arena from now on.
                        writer.current = None;
                    }
                }
            }
            candidates
        };
        let bytes_before = self.arena_bytes()?;
        let mut destination: Option<(u32, u64)> = None;
        for source in candidates {
            // The writer lock is taken per source arena, so puts interleave with a long
            // compaction; they never land in an arena being compacted.
            let mut writer = self.writer.lock();
            self.sync_locked(&mut writer)?;
            self.compact_one(&mut writer, source, &mut destination, &mut report)?;
        }
        report.bytes_freed = bytes_before.saturating_sub(self.arena_bytes()?);
        Ok(report)
    }

    fn compact_one(
        &self,
        writer: &mut Writer,
        source: u32,
        destination: &mut Option<(u32, u64)>,
        report: &mut CompactReport,
    ) -> Result<()> {
        let source_file = self.arena_file(source)?;
        let rows = index::blocks_in_arena(writer.index.conn(), source)?;
        let mut moved = Vec::with_capacity(rows.len());
        let mut lost = Vec::new();
        let mut written: BTreeMap<u32, u64> = BTreeMap::new();
        for (address, location, seq) in rows {
            let bytes = match arena::read_record(
                source_file.as_ref(),
                source,
                location.offset,
                &address,
                location.length,
            ) {
                Ok((_, bytes)) => bytes,
                Err(error) => {
                    report.damaged.push(error);
                    lost.push(address);
                    continue;
                }
            };
            let record_bytes = RECORD_HEADER_BYTES as u64 + bytes.len() as u64;
            let (id, len) = match *destination {
                Some((id, len))
                    if len + record_bytes <= self.options.arena_bytes_max
                        || len == ARENA_HEADER_BYTES =>
                {
                    (id, len)
                }
                _ => {
                    let id = self.create_arena(writer)?;
                    (id, ARENA_HEADER_BYTES)
                }
            };
            let file = self.arena_file(id)?;
            writer.scratch.clear();
            let header = RecordHeader {
                class: location.class,
                length: location.length,
                address,
            };
            arena::encode_record(&mut writer.scratch, &header, &bytes);
            file.write_at(len, &writer.scratch)?;
            *destination = Some((id, len + record_bytes));
            written.insert(id, len + record_bytes);
            moved.push(Upsert {
                address,
                location: Location {
                    arena: id,
                    offset: len,
                    ..location
                },
                seq,
            });
        }
        for id in written.keys() {
            self.arena_file(*id)?.sync()?;
        }
        if writer.dir_dirty {
            self.backend.sync_dir()?;
            writer.dir_dirty = false;
        }
        let tx = writer.index.transaction()?;
        // Retire first (drops the source rows), then insert the moved rows.
        index::retire_arena(&tx, source)?;
        index::upsert(&tx, &moved)?;
        for (id, len) in &written {
            index::set_indexed_through(&tx, *id, *len)?;
        }
        index::write_meta(&tx, &writer.meta)?;
        self.backend.commit_point()?;
        tx.commit()?;
        // Damaged records of the source were not moved: they left the index.
        self.count_removal();
        for (id, len) in &written {
            // The destination is indexed through `len` now; nothing in it is pending.
            if let Some(through) = writer.unsynced_arenas.get_mut(id) {
                *through = (*through).max(*len);
            }
        }
        writer
            .unsynced_arenas
            .retain(|id, _| !written.contains_key(id));
        self.arenas.write().remove(&source);
        self.backend.remove(&arena::arena_name(source))?;
        self.backend.sync_dir()?;
        for address in &lost {
            tracing::warn!(%address, arena = source, "damaged block dropped by compaction");
        }
        let (_, cached_bytes, _) = index::totals(writer.index.conn())?;
        writer.cached_bytes = cached_bytes;
        report.arenas_rewritten += 1;
        report.records_copied += moved.len() as u64;
        Ok(())
    }

    /// The put sequence number GC's sweep must not reach: every block put (or put
    /// again) from now on has a sequence number at or above it.
    pub(crate) fn gc_fence(&self) -> Result<u64> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        Ok(writer.meta.next_seq)
    }

    /// Remove every block put before `fence` for which `is_live` is false. Returns the
    /// removed addresses.
    pub(crate) fn sweep(
        &self,
        fence: u64,
        is_live: &dyn Fn(&Address) -> bool,
    ) -> Result<Vec<Address>> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)?;
        let dead: Vec<Address> = index::addresses_before(writer.index.conn(), fence)?
            .into_iter()
            .filter(|address| !is_live(address))
            .collect();
        self.remove_locked(&mut writer, &dead)?;
        Ok(dead)
    }

    fn locate(&self, address: &Address) -> Result<Option<Location>> {
        if let Some(pending) = self.pending.read().get(address) {
            return Ok(Some(pending.location));
        }
        let reader = match self.readers.lock().pop() {
            Some(reader) => reader,
            None => Reader::open(&self.index_path)?,
        };
        let found = reader.lookup(address);
        let mut readers = self.readers.lock();
        if readers.len() < self.options.readers_idle_max {
            readers.push(reader);
        }
        found
    }

    /// Bytes of all open arena files.
    fn arena_bytes(&self) -> Result<u64> {
        let files: Vec<_> = self.arenas.read().values().cloned().collect();
        files.iter().try_fold(0, |sum, file| Ok(sum + file.len()?))
    }

    fn arena_file(&self, id: u32) -> Result<Arc<dyn BackendFile>> {
        self.arenas
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                arena: id,
                offset: 0,
                reason: "arena is not open".into(),
            })
    }

    /// Reserve the record's place, fill the header into `buffer`'s headroom, write it
    /// (see [`Write`]) and note the block as pending.
    fn append(
        &self,
        writer: &mut Writer,
        address: &Address,
        mut buffer: Vec<u8>,
        class: Class,
        seq: u64,
        write: Write,
    ) -> Result<PutTicket> {
        let sealed_bytes = buffer.len().saturating_sub(PUT_HEADROOM_BYTES);
        let length = u32::try_from(sealed_bytes).map_err(|_| Error::TooLarge {
            bytes: sealed_bytes,
            bytes_max: RECORD_PAYLOAD_BYTES_MAX as usize,
        })?;
        let record_bytes = RECORD_HEADER_BYTES as u64 + u64::from(length);
        let (id, len) = match writer.current {
            Some((id, len))
                if len + record_bytes <= self.options.arena_bytes_max
                    || len == ARENA_HEADER_BYTES =>
            {
                (id, len)
            }
            _ => {
                let id = self.create_arena(writer)?;
                writer.current = Some((id, ARENA_HEADER_BYTES));
                (id, ARENA_HEADER_BYTES)
            }
        };
        let file = self.arena_file(id)?;
        let header = RecordHeader {
            class,
            length,
            address: *address,
        };
        let header_bytes = header.encode();
        let headroom = buffer
            .get_mut(..PUT_HEADROOM_BYTES)
            .ok_or_else(|| Error::Malformed {
                what: "put buffer",
                detail: "shorter than its headroom".into(),
            })?;
        headroom.copy_from_slice(&header_bytes);
        let ticket = if write == Write::DirectWhenIdle && self.queue.is_idle(writer.last_ticket) {
            // Nothing queued and the writer lock held: no other write can be under way,
            // so this one keeps the arena's order. A failure reserves nothing.
            self.queue.write_now(id, &file, len, &buffer)?;
            self.queue.recycle(buffer);
            PutTicket::DONE.0
        } else {
            let ticket = writer.last_ticket + 1;
            self.queue.push(WriteJob {
                ticket,
                arena: id,
                file,
                offset: len,
                bytes: buffer,
            })?;
            writer.last_ticket = ticket;
            ticket
        };
        let location = Location {
            arena: id,
            offset: len,
            length,
            class,
        };
        writer.current = Some((id, len + record_bytes));
        writer.unsynced_arenas.insert(id, len + record_bytes);
        writer.upserts.push(Upsert {
            address: *address,
            location,
            seq,
        });
        writer.unsynced_bytes += record_bytes;
        if class == Class::Cached {
            writer.cached_bytes += u64::from(length);
            // A block is cached because it was just needed: that counts as its first
            // hit, so it is not the first to go.
            let mut hits = self.hits.lock();
            if hits.len() < HIT_BUFFER_ENTRIES_MAX {
                *hits.entry(*address).or_insert(0) += 1;
            }
        }
        self.pending
            .write()
            .insert(*address, Pending { location, ticket });
        // Forget reservations known written (none can fail any more), then note this one.
        let written_through = self.queue.written_through();
        while writer
            .in_flight
            .front()
            .is_some_and(|reservation| reservation.ticket <= written_through)
        {
            writer.in_flight.pop_front();
        }
        if ticket != PutTicket::DONE.0 {
            writer.in_flight.push_back(Reservation { ticket, location });
        }
        if writer.unsynced_bytes >= self.options.unsynced_bytes_max {
            self.sync_locked(writer)?;
        }
        Ok(PutTicket(ticket))
    }

    /// Wait until every queued record is written; if one failed, roll back and return
    /// its error.
    fn drain(&self, writer: &mut Writer) -> Result<()> {
        self.queue.wait_done(writer.last_ticket)?;
        self.roll_back_failed_writes(writer)?;
        writer.in_flight.clear();
        Ok(())
    }

    /// If a queued write failed: forget every reservation from it on (the writer
    /// thread wrote none of them) — their rows, their pending entries, the arena space
    /// — and return the error. New records then go where the first failed one was.
    fn roll_back_failed_writes(&self, writer: &mut Writer) -> Result<()> {
        let Some((first_failed, error)) = self.queue.take_failure(writer.last_ticket)? else {
            return Ok(());
        };
        let lost: Vec<Location> = writer
            .in_flight
            .drain(..)
            .filter(|reservation| reservation.ticket >= first_failed)
            .map(|reservation| reservation.location)
            .collect();
        let lost_at: HashSet<(u32, u64)> = lost
            .iter()
            .map(|location| (location.arena, location.offset))
            .collect();
        writer
            .upserts
            .retain(|row| !lost_at.contains(&(row.location.arena, row.location.offset)));
        self.pending.write().retain(|_, pending| {
            !lost_at.contains(&(pending.location.arena, pending.location.offset))
        });
        for location in &lost {
            if location.class == Class::Cached {
                writer.cached_bytes = writer
                    .cached_bytes
                    .saturating_sub(u64::from(location.length));
            }
            // Records of one arena are reserved back to back, so the first lost one
            // is where that arena's written part ends.
            if let Some(through) = writer.unsynced_arenas.get_mut(&location.arena) {
                *through = (*through).min(location.offset);
            }
            if let Some((current, len)) = writer.current.as_mut()
                && *current == location.arena
            {
                *len = (*len).min(location.offset);
            }
        }
        tracing::warn!(%error, records = lost.len(), "arena write failed; queued puts rolled back");
        Err(error)
    }

    /// A new empty arena with its header written; durable at the next sync.
    fn create_arena(&self, writer: &mut Writer) -> Result<u32> {
        let id = writer.meta.next_arena;
        writer.meta.next_arena = id.checked_add(1).ok_or_else(|| Error::Malformed {
            what: "arena ids",
            detail: "exhausted".into(),
        })?;
        let file = self.backend.open(&arena::arena_name(id), true)?;
        file.set_len(0)?;
        file.write_at(0, &ArenaHeader { arena: id }.encode())?;
        writer.unsynced_arenas.insert(id, ARENA_HEADER_BYTES);
        writer.dir_dirty = true;
        self.arenas.write().insert(id, file);
        Ok(id)
    }

    fn sync_locked(&self, writer: &mut Writer) -> Result<()> {
        self.drain(writer)?;
        let hits: Vec<(Address, u32)> =
            std::mem::take(&mut *self.hits.lock()).into_iter().collect();
        if writer.unsynced_arenas.is_empty() && writer.touches.is_empty() && hits.is_empty() {
            return Ok(());
        }
        for id in writer.unsynced_arenas.keys() {
            self.arena_file(*id)?.sync()?;
        }
        if writer.dir_dirty {
            self.backend.sync_dir()?;
        }
        let hit_count: u64 = hits.iter().map(|(_, count)| u64::from(*count)).sum();
        let age = writer.hits_since_ageing + hit_count >= self.options.ageing_interval_hits;
        let mut meta = writer.meta;
        meta.hit_clock += u64::from(!hits.is_empty());
        let tx = writer.index.transaction()?;
        index::upsert(&tx, &writer.upserts)?;
        index::touch(&tx, &writer.touches)?;
        for (id, through) in &writer.unsynced_arenas {
            index::set_indexed_through(&tx, *id, *through)?;
        }
        index::add_hits(&tx, &hits, meta.hit_clock)?;
        if age {
            index::age_hits(&tx)?;
        }
        index::write_meta(&tx, &meta)?;
        self.backend.commit_point()?;
        tx.commit()?;
        writer.meta = meta;
        writer.hits_since_ageing = if age {
            0
        } else {
            writer.hits_since_ageing + hit_count
        };
        writer.dir_dirty = false;
        writer.unsynced_arenas.clear();
        writer.upserts.clear();
        writer.touches.clear();
        writer.unsynced_bytes = 0;
        self.pending.write().clear();
        self.evict_locked(writer)
    }

    /// Drop least-hit cached blocks until cached bytes fit the budget. Pending puts must
    /// be committed already (the caller synced).
    fn evict_locked(&self, writer: &mut Writer) -> Result<()> {
        while writer.cached_bytes > self.options.cache_bytes_max {
            let candidates = index::eviction_order(writer.index.conn(), EVICTION_BATCH_ROWS)?;
            if candidates.is_empty() {
                // The running total drifted from the index: trust the index.
                writer.cached_bytes = index::totals(writer.index.conn())?.1;
                break;
            }
            let mut victims = Vec::new();
            let mut cached_bytes = writer.cached_bytes;
            for (address, length) in candidates {
                if cached_bytes <= self.options.cache_bytes_max {
                    break;
                }
                cached_bytes = cached_bytes.saturating_sub(u64::from(length));
                victims.push(address);
            }
            self.remove_locked(writer, &victims)?;
        }
        Ok(())
    }

    fn remove_locked(&self, writer: &mut Writer, addresses: &[Address]) -> Result<()> {
        if addresses.is_empty() {
            return Ok(());
        }
        let tx = writer.index.transaction()?;
        index::remove(&tx, addresses)?;
        self.backend.commit_point()?;
        tx.commit()?;
        self.count_removal();
        writer.cached_bytes = index::totals(writer.index.conn())?.1;
        let mut hits = self.hits.lock();
        for address in addresses {
            hits.remove(address);
        }
        Ok(())
    }
}

impl Writer {
    fn next_seq(&mut self) -> u64 {
        let seq = self.meta.next_seq;
        self.meta.next_seq += 1;
        seq
    }
}

impl std::fmt::Debug for Store {
    // The maps can hold millions of entries: print their sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .field("pending", &self.pending.read().len())
            .field("queue", &self.queue)
            .field("arenas", &self.arenas.read().len())
            .field("open_problems", &self.open_report.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The thread writes what is queued, then exits. A thread that panicked has
        // marked the queue stopped already; there is nothing more to clean up.
        self.queue.close();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl BlockStore for Store {
    fn put(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        Store::put(self, address, sealed, class)
    }

    fn put_sealed_here(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        Store::put_sealed_here(self, address, sealed, class)
    }

    fn put_sealed_owned(
        &self,
        address: &Address,
        buffer: &mut Vec<u8>,
        class: Class,
    ) -> Result<PutTicket> {
        Store::put_sealed_owned(self, address, buffer, class)
    }

    fn wait_puts(&self, first: PutTicket, last: PutTicket) -> Result<()> {
        Store::wait_puts(self, first, last)
    }

    fn spare_buffer(&self) -> Option<Vec<u8>> {
        Store::spare_buffer(self)
    }

    fn get(&self, address: &Address) -> Result<Vec<u8>> {
        Store::get(self, address)
    }

    fn get_local(&self, address: &Address) -> Result<Vec<u8>> {
        Store::get_local(self, address)
    }

    fn get_for_open(&self, address: &Address, buffer: &mut Vec<u8>) -> Result<Fetched> {
        Store::get_for_open(self, address, buffer)
    }

    fn prefetch(&self, addresses: &[Address]) -> Result<()> {
        Store::prefetch(self, addresses)
    }

    fn contains(&self, address: &Address) -> Result<bool> {
        Store::contains(self, address)
    }
}

/// Bring the index in line with the arena files on open; returns the open arenas.
fn reconcile(
    backend: &dyn Backend,
    writer: &mut Writer,
    state: IndexState,
    report: &mut Vec<Error>,
) -> Result<HashMap<u32, Arc<dyn BackendFile>>> {
    let mut files: BTreeMap<u32, String> = BTreeMap::new();
    for name in backend.list()? {
        if let Some(id) = arena::parse_arena_name(&name) {
            files.insert(id, name);
        }
    }
    let conn = writer.index.conn();
    let mut meta = index::read_meta(conn)?;
    let retired: HashSet<u32> = index::retired_arenas(conn)?.into_iter().collect();
    let indexed: HashMap<u32, u64> = index::arenas(conn)?.into_iter().collect();
    let referenced = index::arenas_referenced(conn)?;
    let max_id = files
        .keys()
        .chain(retired.iter())
        .chain(indexed.keys())
        .chain(referenced.iter())
        .copied()
        .max();
    if let Some(max_id) = max_id {
        meta.next_arena = meta.next_arena.max(max_id.saturating_add(1));
    }
    meta.next_seq = meta.next_seq.max(1);

    let tx = writer.index.transaction()?;
    // An interrupted compaction: the index already moved the rows away.
    for id in files.keys().filter(|id| retired.contains(id)) {
        backend.remove(&arena::arena_name(*id))?;
    }
    files.retain(|id, _| !retired.contains(id));
    // Rows pointing at arenas whose files are gone are lost.
    for id in indexed.keys().chain(referenced.iter()) {
        if !files.contains_key(id) && !retired.contains(id) {
            let lost = index::drop_past(&tx, *id, 0, RECORD_HEADER_BYTES as u64)?;
            report.push(Error::Corrupt {
                arena: *id,
                offset: 0,
                reason: format!("arena file missing; {} indexed blocks lost", lost.len()),
            });
            index::retire_arena(&tx, *id)?;
        }
    }
    let mut arenas: HashMap<u32, Arc<dyn BackendFile>> = HashMap::new();
    let mut last: Option<(u32, u64)> = None;
    for (&id, name) in &files {
        let file = backend.open(name, false)?;
        let len = file.len()?;
        if len <= ARENA_HEADER_BYTES && !indexed.contains_key(&id) {
            // Created but never got a record (or even its header) to disk.
            backend.remove(name)?;
            continue;
        }
        if len >= ARENA_HEADER_BYTES {
            let mut header = [0u8; ARENA_HEADER_BYTES as usize];
            file.read_at(0, &mut header)?;
            if let Err(error) = ArenaHeader::decode(&header, id) {
                // Records describe themselves and the header holds nothing the file name
                // does not: rewrite it. Only a header that was once durable (its arena is
                // indexed) is worth reporting; otherwise it was torn at creation.
                if indexed.contains_key(&id) {
                    report.push(error);
                }
                file.write_at(0, &ArenaHeader { arena: id }.encode())?;
                file.sync()?;
            }
        }
        let mut start = match state {
            IndexState::Fresh => ARENA_HEADER_BYTES,
            IndexState::Existing => indexed.get(&id).copied().unwrap_or(ARENA_HEADER_BYTES),
        };
        if len < start {
            let lost = index::drop_past(&tx, id, len, RECORD_HEADER_BYTES as u64)?;
            for address in &lost {
                report.push(Error::Damaged {
                    address: *address,
                    arena: id,
                    offset: len,
                    reason: "arena truncated: record lost".into(),
                });
            }
            start = index::blocks_in_arena(&tx, id)?
                .last()
                .map(|(_, location, _)| {
                    location.offset + RECORD_HEADER_BYTES as u64 + u64::from(location.length)
                })
                .unwrap_or(ARENA_HEADER_BYTES)
                .max(ARENA_HEADER_BYTES);
        }
        let scan_from = start.min(len.max(ARENA_HEADER_BYTES));
        let scan = arena::scan(file.as_ref(), scan_from)?;
        for item in scan.items {
            match item {
                ScanItem::Record { offset, header } => {
                    let existing = index::lookup(&tx, &header.address)?;
                    let replace = match existing {
                        None => true,
                        // A later pinned copy wins over a cached one; otherwise the
                        // indexed copy stays (both hold the same bytes).
                        Some(location) => {
                            location.class == Class::Cached && header.class == Class::Pinned
                        }
                    };
                    if replace {
                        let row = Upsert {
                            address: header.address,
                            location: Location {
                                arena: id,
                                offset,
                                length: header.length,
                                class: header.class,
                            },
                            seq: meta.next_seq,
                        };
                        meta.next_seq += 1;
                        // One row at a time: a later record of the same address must
                        // see this one.
                        index::upsert(&tx, &[row])?;
                    }
                }
                ScanItem::Damaged {
                    offset,
                    bytes,
                    reason,
                } => report.push(Error::Corrupt {
                    arena: id,
                    offset,
                    reason: format!("{bytes} bytes hold no valid record ({reason})"),
                }),
            }
        }
        let mut len = len;
        if scan.valid_end < len {
            report.push(Error::Corrupt {
                arena: id,
                offset: scan.valid_end,
                reason: format!(
                    "torn tail of {} bytes cut ({})",
                    len - scan.valid_end,
                    scan.tail_reason.unwrap_or_default()
                ),
            });
            file.set_len(scan.valid_end)?;
            file.sync()?;
            len = scan.valid_end;
        }
        if scan.valid_end > scan_from {
            // The tail was written but maybe never synced (the process died before its
            // sync): make it durable before the commit that indexes it.
            file.sync()?;
        }
        if len < ARENA_HEADER_BYTES {
            // Not even a header survived: give the arena a fresh one.
            file.set_len(0)?;
            file.write_at(0, &ArenaHeader { arena: id }.encode())?;
            file.sync()?;
            len = ARENA_HEADER_BYTES;
        }
        index::set_indexed_through(&tx, id, len)?;
        last = Some((id, len));
        arenas.insert(id, file);
    }
    index::write_meta(&tx, &meta)?;
    // Always: an arena created just before a crash may be indexed now, and its
    // directory entry was perhaps never made durable.
    backend.sync_dir()?;
    backend.commit_point()?;
    tx.commit()?;
    writer.meta = meta;
    writer.current = last;
    Ok(arenas)
}
