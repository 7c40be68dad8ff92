//! Garbage collection: mark (by the caller), sweep, compact.
//!
//! venti cannot know which blocks are reachable — only the caller knows its roots — so
//! GC is three steps around the caller's mark:
//!
//! 1. [`Gc::begin`] syncs and takes a *fence*: every block put (or put again, even as a
//!    no-op duplicate) from now on carries a sequence number at or past the fence and is
//!    never swept by this round. That is what keeps blocks written while GC runs.
//! 2. The caller marks: it builds the live set from its roots (for example with
//!    [`mark_tree`] for each root) — as long as it likes, while puts and gets go on.
//! 3. [`Gc::sweep`] removes the index rows of every block before the fence that is not
//!    live; [`Gc::finish`] sweeps and then compacts so the dead bytes leave the disk.
//!
//! A round may also start from a [`fence`] taken earlier ([`Gc::from_fence`]): then
//! everything put since that fence survives, which gives young blocks a grace period.
//!
//! Every step is crash-safe: the sweep is one index transaction; compaction's steps are
//! argued in [`Store::compact`].

use std::collections::HashSet;

use crate::store::CompactReport;
use crate::tree::TreeReader;
use crate::{Address, BlockRef, Result, Store};

/// Mark every block of the tree under `root` live: the root, its pointer blocks and
/// its leaves. A subtree already in `live` is not walked again, so marking many trees
/// that share blocks costs each shared block once. `reader` must hold the keys of the
/// tree's epoch.
pub fn mark_tree(
    reader: &TreeReader<'_>,
    root: &BlockRef,
    live: &mut HashSet<Address>,
) -> Result<()> {
    reader.walk(root, |block| Ok(live.insert(block.address)))
}

/// One GC round in progress.
#[derive(Debug)]
pub struct Gc<'a> {
    store: &'a Store,
    fence: u64,
}

/// What a GC round removed.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Blocks whose index rows the sweep removed.
    pub swept: Vec<Address>,
    pub compaction: CompactReport,
}

/// A fence to start a later round with ([`Gc::from_fence`]). Sweeping with a fence
/// taken a while ago keeps every block put (or put again) since, whatever the mark
/// says: a grace period for blocks no root names yet, such as blocks another device
/// pushed here for an operation it has not committed yet. Fences stay valid across
/// restarts (put sequence numbers are durable and only grow).
pub fn fence(store: &Store) -> Result<u64> {
    store.gc_fence()
}

impl<'a> Gc<'a> {
    /// Start a round: blocks put from now on survive it whatever the mark says.
    pub fn begin(store: &'a Store) -> Result<Gc<'a>> {
        Ok(Gc {
            fence: store.gc_fence()?,
            store,
        })
    }

    /// A round whose sweep keeps every block put since `fence` was taken ([`fence`]).
    pub fn from_fence(store: &'a Store, fence: u64) -> Gc<'a> {
        Gc { store, fence }
    }

    /// Remove every block from before [`Gc::begin`] that `is_live` rejects. Returns the
    /// removed addresses; their bytes remain until compaction.
    pub fn sweep(&self, is_live: &dyn Fn(&Address) -> bool) -> Result<Vec<Address>> {
        self.store.sweep(self.fence, is_live)
    }

    /// Sweep everything not in `live`, then compact every arena with dead bytes.
    pub fn finish(self, live: &HashSet<Address>) -> Result<GcReport> {
        let swept = self.sweep(&|address| live.contains(address))?;
        let compaction = self.store.compact(0.0)?;
        Ok(GcReport { swept, compaction })
    }
}
