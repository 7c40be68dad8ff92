//! venti — Kith's encrypted, content-addressed block store.
//!
//! Every byte a Kith user stores passes through here. Content is cut into chunks by a
//! keyed FastCDC chunker ([`chunk`]), each chunk is sealed under a keyed-convergent key
//! ([`seal`]) and addressed by the BLAKE3 hash of its sealed bytes ([`Address`]); large
//! content becomes a hash tree of pointer blocks ([`tree`]). Sealed blocks are kept in
//! append-only arenas with a SQLite index ([`store`]); a block missing there may be
//! fetched from other devices through a caller-supplied [`RemoteBlocks`] ([`remote`]).
//!
//! venti is deliberately *not* a filesystem: it knows nothing of files, names, peers or
//! the network. Callers hand it bytes and keys; it hands back [`BlockRef`]s.
//!
//! ```
//! use std::sync::Arc;
//! use venti::backend::MemoryBackend;
//! use venti::keys::EpochKeys;
//! use venti::tree::{TreeReader, TreeWriter};
//! use venti::{Class, Store, StoreOptions};
//!
//! # fn main() -> venti::Result<()> {
//! // One volume epoch's keys (the secret comes from `net` in a real mount).
//! let keys = EpochKeys::derive(&[7; 32], &[1; 16], 0);
//! let store = Store::open(Arc::new(MemoryBackend::new(1)?), StoreOptions::default())?;
//!
//! // Write a stream of any length; get one root ref back.
//! let content: Vec<u8> = (0..1_000_000u32).flat_map(|n| n.to_le_bytes()).collect();
//! let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
//! for piece in content.chunks(100_000) {
//!     writer.write(piece)?;
//! }
//! let root = writer.finish()?;
//! store.sync()?;
//!
//! // Read any range back; only the blocks covering it are fetched and opened.
//! let reader = TreeReader::new(&store, &keys);
//! assert_eq!(reader.read_range(&root, 400_000, 8)?, &content[400_000..400_008]);
//! # Ok(())
//! # }
//! ```

pub mod address;
pub mod arena;
pub mod backend;
pub mod block_ref;
pub mod chunk;
pub mod compress;
pub mod error;
pub mod gc;
pub mod index;
pub mod keys;
pub mod remote;
pub mod seal;
pub mod store;
pub mod tree;
mod write_queue;

pub use address::Address;
pub use block_ref::{BlockRef, Kind};
pub use error::{Error, Result};
pub use remote::{BlockPusher, PushStats, RemoteBlocks, RemoteStats};
pub use store::{Store, StoreOptions};

/// Which promise a device made about a block.
///
/// Pinned blocks are never evicted (own data, replicas promised to others); cached
/// blocks were fetched from others and are evicted least-hit first when the cache is
/// over its byte budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Pinned,
    Cached,
}

/// Bytes a buffer handed to [`BlockStore::put_sealed_owned`] keeps free in front of the
/// sealed block (the store writes its record header there: one write per record).
pub const PUT_HEADROOM_BYTES: usize = arena::RECORD_HEADER_BYTES;

/// Receipt of a put that may still be in progress; [`BlockStore::wait_puts`] says
/// whether it reached the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PutTicket(pub u64);

impl PutTicket {
    /// A put that is complete already (an implementation without a queue, or a
    /// duplicate that needed no write).
    pub const DONE: PutTicket = PutTicket(0);
}

/// Where [`BlockStore::get_for_open`] put a block's sealed bytes, and what is known
/// of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The sealed block's bytes in the caller's buffer.
    pub range: std::ops::Range<usize>,
    /// Whether the bytes were hashed against the address, and where they were read.
    pub check: seal::AddressCheck,
}

/// The narrow interface the tree writer/reader and GC use to move sealed blocks.
///
/// Implementations verify nothing about content — callers seal and open — but every
/// `get` must return bytes whose BLAKE3 hash equals the address asked for.
pub trait BlockStore: Send + Sync {
    /// Store sealed bytes under their address. Idempotent; a second put of an existing
    /// address may upgrade its class from `Cached` to `Pinned`, never the reverse.
    fn put(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()>;
    /// `put` of bytes this process just sealed, whose address was computed from these
    /// very bytes: an implementation may skip re-hashing them. Bytes from anywhere
    /// else (network, disk) go through `put`.
    fn put_sealed_here(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
        self.put(address, sealed, class)
    }
    /// `put_sealed_here` of `buffer[PUT_HEADROOM_BYTES..]`. The store may take the
    /// buffer (leaving `buffer` empty) to write it without a copy, possibly after this
    /// returns; a buffer left in place is the caller's to reuse. The put has succeeded
    /// only once [`BlockStore::wait_puts`] over its ticket returns `Ok`.
    fn put_sealed_owned(
        &self,
        address: &Address,
        buffer: &mut Vec<u8>,
        class: Class,
    ) -> Result<PutTicket> {
        let sealed = buffer
            .get(PUT_HEADROOM_BYTES..)
            .ok_or_else(|| Error::Malformed {
                what: "put buffer",
                detail: format!("{} bytes, shorter than its headroom", buffer.len()),
            })?;
        self.put_sealed_here(address, sealed, class)?;
        Ok(PutTicket::DONE)
    }
    /// Wait until the puts with tickets `first..=last` are complete; an error when any
    /// of them (or, conservatively, another caller's put in that range) failed.
    fn wait_puts(&self, first: PutTicket, last: PutTicket) -> Result<()> {
        let _ = (first, last);
        Ok(())
    }
    /// A buffer the store no longer needs, for the caller's next `put_sealed_owned`.
    fn spare_buffer(&self) -> Option<Vec<u8>> {
        None
    }
    /// The sealed bytes stored under `address`, verified against it.
    fn get(&self, address: &Address) -> Result<Vec<u8>>;
    /// The sealed bytes of `address`, to be opened: read into `buffer` (whatever it
    /// held is overwritten; its capacity is reused, so a reader of many blocks
    /// allocates once) at `buffer[fetched.range]`, and how they were checked against
    /// the address. A store reading its own arenas may leave the address hash to the
    /// opener ([`seal::AddressCheck::Unhashed`]; `seal` says why that is enough);
    /// this default goes through `get`, which hashes.
    fn get_for_open(&self, address: &Address, buffer: &mut Vec<u8>) -> Result<Fetched> {
        *buffer = self.get(address)?;
        Ok(Fetched {
            range: 0..buffer.len(),
            check: seal::AddressCheck::Hashed,
        })
    }
    /// `get` from this store only: a store that fetches misses from other devices
    /// (see [`Store::set_remote`]) does not ask them. Serving blocks to others goes
    /// through this, so a device never relays what it does not hold.
    fn get_local(&self, address: &Address) -> Result<Vec<u8>> {
        self.get(address)
    }
    /// A hint that `addresses` are about to be read: a store that fetches misses from
    /// other devices fetches the missing ones in one batch. Errors are those of the
    /// local store; a block that could not be fetched is left to `get`.
    fn prefetch(&self, addresses: &[Address]) -> Result<()> {
        let _ = addresses;
        Ok(())
    }
    fn contains(&self, address: &Address) -> Result<bool>;
}
