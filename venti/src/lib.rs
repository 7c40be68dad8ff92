//! venti — Kith's encrypted, content-addressed block store.
//!
//! Every byte a Kith user stores passes through here. Content is cut into chunks by a
//! keyed FastCDC chunker ([`chunk`]), each chunk is sealed under a keyed-convergent key
//! ([`seal`]) and addressed by the BLAKE3 hash of its sealed bytes ([`Address`]); large
//! content becomes a hash tree of pointer blocks ([`tree`]). Sealed blocks are kept in
//! append-only arenas with a SQLite index ([`store`]).
//!
//! venti is deliberately *not* a filesystem: it knows nothing of files, names, peers or
//! the network. Callers hand it bytes and keys; it hands back [`BlockRef`]s.
//!
//! (The crate-level example is added with the tree writer.)

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
pub mod seal;
pub mod store;
pub mod tree;

pub use address::Address;
pub use block_ref::{BlockRef, Kind};
pub use error::{Error, Result};
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

/// The narrow interface the tree writer/reader and GC use to move sealed blocks.
///
/// Implementations verify nothing about content — callers seal and open — but every
/// `get` must return bytes whose BLAKE3 hash equals the address asked for.
pub trait BlockStore: Send + Sync {
    /// Store sealed bytes under their address. Idempotent; a second put of an existing
    /// address may upgrade its class from `Cached` to `Pinned`, never the reverse.
    fn put(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()>;
    /// The sealed bytes stored under `address`, verified against it.
    fn get(&self, address: &Address) -> Result<Vec<u8>>;
    fn contains(&self, address: &Address) -> Result<bool>;
}
