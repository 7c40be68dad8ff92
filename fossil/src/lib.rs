//! fossil — Kith's mutable filesystem on top of venti.
//!
//! A [`Volume`] is one shared tree: a namespace that is a pure function of its
//! operation log. Every metadata change becomes an operation appended to the volume's
//! log (behind a trait: a local log for one device, a Paxos-backed log later) and is
//! applied deterministically into a SQLite namespace. File content lives in venti as
//! sealed hash trees; small files live inline in their operation.
//!
//! fossil never opens a socket and knows nothing of FUSE: [`Volume`] speaks in inode
//! numbers, names and byte ranges, and the `kith` binary adapts that to the kernel.

pub mod apply;
pub mod checkpoint;
pub mod content;
pub mod error;
pub mod log;
pub mod namespace;
pub mod op;
pub mod types;
pub mod venti_content;
pub mod volume;

pub use error::{Error, Result};
pub use types::*;
pub use volume::Volume;
