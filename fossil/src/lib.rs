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
//!
//! The pieces, in the order a change flows through them:
//!
//! - [`op`]: the operations, their preconditions and their bounded, versioned codec.
//! - [`log`]: the [`log::Log`] trait (append → slot, read committed, durable point,
//!   truncate behind a checkpoint) and the single-device [`log::FileLog`].
//! - [`agreement`]: the [`agreement::Agreement`] seam a replicated volume runs on
//!   (propose, pending, committed runs, barriers, compaction) and
//!   [`agreement::MemGroup`], an in-process group for tests.
//! - [`apply`]: the pure state machine; failed preconditions resolve by fixed rules
//!   (conflict names and copies, deterministic no-ops); rights and `(author, seq)` are
//!   checked from the log itself.
//! - [`namespace`]: the SQLite tables `apply` writes.
//! - [`content`] / [`venti_content`]: the write buffer ([`content::Overlay`]) and the
//!   content store (venti trees; an edit of a large file stores only the edited bytes).
//! - [`checkpoint`]: the namespace as one canonical image (checkpoints, snapshots).
//! - [`volume`]: POSIX semantics, group commit, durability order (blocks → log →
//!   namespace), snapshot views; replicated volumes keep a committed layer plus this
//!   device's pending ops (`docs/replication.md`).
//!
//! What it deliberately is not: a permission checker (the kernel checks with
//! `default_permissions`), a network peer, or a cache of other devices' state.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fossil::{Caller, InodeNo, Volume};
//! let dir = tempfile::tempdir()?;
//! let volume = Volume::open(dir.path())?;
//! let me = Caller { uid: 1000, gid: 1000 };
//! let (attr, handle) = volume.create(InodeNo::ROOT, "hello.txt".as_ref(), 0o644, me, true)?;
//! volume.write(attr.ino, handle, 0, b"hello")?;
//! volume.fsync(attr.ino, false)?; // blocks, then the log: survives a crash from here
//! volume.release(attr.ino, handle)?;
//! assert_eq!(volume.lookup(InodeNo::ROOT, "hello.txt".as_ref())?.size, 5);
//! # Ok(()) }
//! ```

pub mod agreement;
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
