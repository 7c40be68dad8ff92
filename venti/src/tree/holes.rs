//! Finding holes: which leaves of a tree are all zeros, from its pointer blocks alone.
//!
//! A leaf's content key is `BLAKE3-keyed(conv_key, kind ‖ content)`, a function of its
//! plaintext and epoch only, so the key of an all-zero leaf of length `L` is known in
//! advance for each `(epoch, L)`; pointer blocks list every child's key and length. A
//! leaf whose ref carries that key *is* zeros: opening it checks the key against the
//! content (key commitment), so reporting it as a hole can never hide data — at worst
//! a damaged block reads as EIO, as it would anyway. The key is compared, not the
//! address: the address also depends on zstd's output, which is not canonical across
//! zstd versions, and needs a seal to compute.
//!
//! Which lengths to expect: FastCDC finds no cut point inside a zero run (the rolling
//! hash over zeros settles on one epoch-dependent value after 32 steps), so a zero run
//! is cut into leaves of one length per epoch, `run_leaf_bytes` — `CHUNK_BYTES_MAX`
//! unless that epoch's settled hash happens to meet the mask, then shorter. The last
//! leaf of a tree may be shorter: its length is checked too. Only those two cases are
//! tested; a zero leaf of any other length (one that ends just before data, where the
//! cut looked at the first non-zero byte) counts as data. That is always allowed:
//! `SEEK_DATA`/`SEEK_HOLE` may report zeros as data, never data as a hole.
//!
//! Cost: leaves are never read. A search opens the pointer blocks from the one holding
//! the start offset until it finds a leaf of the kind it wants; a pointer block whose
//! whole subtree was found to hold no such leaf is skipped when met again (a long zero
//! run repeats one pointer block, same content, same address), and at most
//! `SEEK_POINTERS_MAX` pointer blocks are visited per search — past that a search for
//! data answers where it stopped, one for a hole answers "none" (both true answers).
//! Decoded pointer blocks are kept in a bounded cache, so the two seeks per extent of
//! a sparse copy reopen nothing. There is no per-subtree zero flag in the format.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Pointer, TreeReader};
use crate::chunk::Chunker;
use crate::keys::EpochKeys;
use crate::seal::{self, CONTENT_BYTES_MAX};
use crate::{Address, BlockRef, Error, Kind, Result};

/// Pointer blocks one search visits at most (about 40 GiB of content at average
/// fan-out): the bound on the work one `lseek` can cause.
pub const SEEK_POINTERS_MAX: usize = 4096;
/// Pointer blocks [`TreeReader::zero_bytes`] visits at most (it runs on `stat`).
pub const ZERO_BYTES_POINTERS_MAX: usize = 256;
/// Tail-leaf lengths whose zero key is remembered; the map starts over when full.
pub const TAIL_KEYS_MAX: usize = 64;
/// Decoded pointer blocks kept (bytes of refs); the cache starts over when full.
pub const POINTER_CACHE_BYTES_MAX: usize = 8 << 20;

/// What a hole looks like in the trees of one epoch (the keys of all-zero leaves), and
/// the pointer blocks searches opened lately. Build one per epoch and keep it: it
/// chunks and hashes a zero leaf once, at creation.
pub struct Holes {
    epoch: u32,
    leaf_kind: Kind,
    /// Length of every leaf inside a long zero run, and that leaf's key.
    run_leaf_bytes: u64,
    run_leaf_key: [u8; 32],
    /// Zero keys of other lengths, for last leaves.
    tail_keys: Mutex<HashMap<u64, [u8; 32]>>,
    pointers: Mutex<PointerCache>,
    pointers_max: usize,
}

impl std::fmt::Debug for Holes {
    // Keys are key material: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holes")
            .field("epoch", &self.epoch)
            .field("leaf_kind", &self.leaf_kind)
            .field("run_leaf_bytes", &self.run_leaf_bytes)
            .finish_non_exhaustive()
    }
}

impl Holes {
    /// Holes of trees with `leaf_kind` leaves sealed under `keys`, chunked by Kith's
    /// chunker.
    pub fn new(keys: &EpochKeys, leaf_kind: Kind) -> Holes {
        Holes::with_chunker(keys, &Chunker::new(keys), leaf_kind)
    }

    /// Holes of trees chunked by `chunker` (tests build deep trees with small chunks).
    pub(in crate::tree) fn with_chunker(
        keys: &EpochKeys,
        chunker: &Chunker,
        leaf_kind: Kind,
    ) -> Holes {
        let zeros = vec![0u8; chunker.bytes_max()];
        let run_leaf_bytes = chunker.cut(&zeros);
        let run_leaf_key = *seal::content_key(keys, leaf_kind, &zeros[..run_leaf_bytes]).as_bytes();
        Holes {
            epoch: keys.epoch(),
            leaf_kind,
            run_leaf_bytes: run_leaf_bytes as u64,
            run_leaf_key,
            tail_keys: Mutex::new(HashMap::new()),
            pointers: Mutex::new(PointerCache::default()),
            pointers_max: SEEK_POINTERS_MAX,
        }
    }

    /// Length of the leaves a long zero run is cut into, in this epoch.
    pub fn run_leaf_bytes(&self) -> u64 {
        self.run_leaf_bytes
    }

    #[cfg(test)]
    fn with_pointers_max(mut self, pointers_max: usize) -> Holes {
        self.pointers_max = pointers_max;
        self
    }

    /// Whether `leaf` is all zeros, from its ref alone; `is_last` when it ends the tree
    /// (the one place a zero leaf of another length than `run_leaf_bytes` is looked
    /// for). False means "data", which is never wrong.
    fn is_zero_leaf(&self, keys: &EpochKeys, leaf: &BlockRef, is_last: bool) -> bool {
        if leaf.length == self.run_leaf_bytes {
            return leaf.key == self.run_leaf_key;
        }
        if !is_last || leaf.length == 0 || leaf.length > CONTENT_BYTES_MAX as u64 {
            return false;
        }
        let mut tail_keys = self.tail_keys.lock();
        let key = match tail_keys.get(&leaf.length) {
            Some(key) => *key,
            None => {
                // At most CONTENT_BYTES_MAX, checked above.
                let zeros = vec![0u8; leaf.length as usize];
                let key = *seal::content_key(keys, self.leaf_kind, &zeros).as_bytes();
                if tail_keys.len() >= TAIL_KEYS_MAX {
                    tail_keys.clear();
                }
                tail_keys.insert(leaf.length, key);
                key
            }
        };
        leaf.key == key
    }

    /// The pointer block `node_ref` (a child of the given `level`, `None` for a root),
    /// checked as the reader checks it; `None` if it is a root that is a leaf.
    fn pointer(
        &self,
        reader: &TreeReader<'_>,
        node_ref: &BlockRef,
        level: Option<u8>,
    ) -> Result<Option<Arc<Pointer>>> {
        let cached = self.pointers.lock().get(&node_ref.address);
        if let Some(pointer) = cached {
            reader.check_children(node_ref, level, &pointer)?;
            return Ok(Some(pointer));
        }
        let sealed = reader.store.get(&node_ref.address)?;
        // A root may be a leaf: calling it data needs no authenticated look at it.
        if level.is_none() && seal::peek_kind(node_ref, &sealed)? != Kind::Pointer {
            return Ok(None);
        }
        let content = seal::open(reader.keys, node_ref, &sealed, Kind::Pointer)?;
        let pointer = Arc::new(reader.check_pointer(node_ref, level, &content)?);
        self.pointers
            .lock()
            .insert(node_ref.address, Arc::clone(&pointer));
        Ok(Some(pointer))
    }
}

/// Decoded pointer blocks by address (one epoch's: a `Holes` is of one epoch).
#[derive(Default)]
struct PointerCache {
    by_address: HashMap<Address, Arc<Pointer>>,
    bytes: usize,
}

impl PointerCache {
    fn get(&self, address: &Address) -> Option<Arc<Pointer>> {
        self.by_address.get(address).cloned()
    }

    fn insert(&mut self, address: Address, pointer: Arc<Pointer>) {
        let bytes = pointer.children.len() * std::mem::size_of::<BlockRef>();
        if self.bytes + bytes > POINTER_CACHE_BYTES_MAX {
            self.by_address.clear();
            self.bytes = 0;
        }
        if self.by_address.insert(address, pointer).is_none() {
            self.bytes += bytes;
        }
    }
}

/// How a search through one node ended.
enum Step {
    /// The wanted kind of leaf holds this offset.
    Found(u64),
    /// No wanted leaf in the node (from the search's start on).
    NotHere,
    /// The pointer budget ran out at this offset: nothing before it was wanted.
    Stopped(u64),
}

/// One search of one tree for a zero leaf (`want_zero`) or a data leaf.
struct Search<'a, 's> {
    reader: &'a TreeReader<'s>,
    holes: &'a Holes,
    want_zero: bool,
    tree_bytes: u64,
    /// Pointer blocks whose whole subtree holds no wanted leaf.
    exhausted: HashSet<Address>,
    pointers_left: usize,
}

impl Search<'_, '_> {
    /// The first offset at or after `from` in a wanted leaf under `node_ref`, which
    /// starts at `node_start` and is at `level` (0 a leaf, `None` the root).
    fn node(
        &mut self,
        node_ref: &BlockRef,
        level: Option<u8>,
        node_start: u64,
        from: u64,
    ) -> Result<Step> {
        let want_zero = self.want_zero;
        let leaf = |is_zero: bool| {
            if is_zero == want_zero {
                Step::Found(from.max(node_start))
            } else {
                Step::NotHere
            }
        };
        let is_last = node_start.saturating_add(node_ref.length) == self.tree_bytes;
        let keys = self.reader.keys;
        if level == Some(0) {
            return Ok(leaf(self.holes.is_zero_leaf(keys, node_ref, is_last)));
        }
        // A pointer block's key is of another kind, so this finds zero leaves only.
        if level.is_none() && self.holes.is_zero_leaf(keys, node_ref, is_last) {
            return Ok(leaf(true));
        }
        if from <= node_start && self.exhausted.contains(&node_ref.address) {
            return Ok(Step::NotHere);
        }
        if self.pointers_left == 0 {
            return Ok(Step::Stopped(from.max(node_start)));
        }
        self.pointers_left -= 1;
        let Some(pointer) = self.holes.pointer(self.reader, node_ref, level)? else {
            // A root that is a data leaf.
            return Ok(leaf(false));
        };
        let mut child_start = node_start;
        for child in &pointer.children {
            let child_end = child_start.saturating_add(child.length);
            if child_end > from {
                match self.node(child, Some(pointer.level - 1), child_start, from)? {
                    Step::NotHere => {}
                    found_or_stopped => return Ok(found_or_stopped),
                }
            }
            child_start = child_end;
        }
        if from <= node_start {
            self.exhausted.insert(node_ref.address);
        }
        Ok(Step::NotHere)
    }
}

/// Bytes in recognisable zero leaves under one node: a walk over pointer blocks.
struct ZeroCount<'a, 's> {
    reader: &'a TreeReader<'s>,
    holes: &'a Holes,
    tree_bytes: u64,
    /// Zero bytes under each pointer block counted so far (repeated blocks once).
    counted: HashMap<Address, u64>,
    pointers_left: usize,
}

impl ZeroCount<'_, '_> {
    /// `None` when the pointer budget ran out.
    fn node(
        &mut self,
        node_ref: &BlockRef,
        level: Option<u8>,
        node_start: u64,
    ) -> Result<Option<u64>> {
        let is_last = node_start.saturating_add(node_ref.length) == self.tree_bytes;
        let keys = self.reader.keys;
        let zero_leaf = || self.holes.is_zero_leaf(keys, node_ref, is_last);
        match level {
            Some(0) => return Ok(Some(if zero_leaf() { node_ref.length } else { 0 })),
            // A pointer block's key is of another kind: only a zero leaf matches.
            None if zero_leaf() => return Ok(Some(node_ref.length)),
            _ => {}
        }
        if let Some(zero_bytes) = self.counted.get(&node_ref.address) {
            return Ok(Some(*zero_bytes));
        }
        if self.pointers_left == 0 {
            return Ok(None);
        }
        self.pointers_left -= 1;
        let Some(pointer) = self.holes.pointer(self.reader, node_ref, level)? else {
            return Ok(Some(0));
        };
        let mut zero_bytes = 0u64;
        let mut child_start = node_start;
        for child in &pointer.children {
            let Some(child_zero) = self.node(child, Some(pointer.level - 1), child_start)? else {
                return Ok(None);
            };
            zero_bytes = zero_bytes.saturating_add(child_zero);
            child_start = child_start.saturating_add(child.length);
        }
        self.counted.insert(node_ref.address, zero_bytes);
        Ok(Some(zero_bytes))
    }
}

impl TreeReader<'_> {
    /// Bytes of the content under `root` that are in leaves [`TreeReader::next_hole`]
    /// calls holes (what a file's allocated size leaves out), or `None` if counting
    /// them would open more than [`ZERO_BYTES_POINTERS_MAX`] pointer blocks. A pointer
    /// block listed many times (a long zero run) is opened once.
    pub fn zero_bytes(&self, root: &BlockRef, holes: &Holes) -> Result<Option<u64>> {
        self.check_holes(holes)?;
        let mut count = ZeroCount {
            reader: self,
            holes,
            tree_bytes: root.length,
            counted: HashMap::new(),
            pointers_left: ZERO_BYTES_POINTERS_MAX.min(holes.pointers_max),
        };
        count.node(root, None, 0)
    }

    fn check_holes(&self, holes: &Holes) -> Result<()> {
        if holes.epoch != self.keys.epoch() || holes.leaf_kind != self.leaf_kind {
            return Err(Error::Malformed {
                what: "hole search",
                detail: format!(
                    "holes of epoch {} ({:?} leaves) for a reader of epoch {} ({:?} leaves)",
                    holes.epoch,
                    holes.leaf_kind,
                    self.keys.epoch(),
                    self.leaf_kind
                ),
            });
        }
        Ok(())
    }

    /// The first offset at or after `offset` that lies in a leaf holding data, or
    /// `None` if every leaf from there to the end is all zeros (`SEEK_DATA`). Opens
    /// pointer blocks only; a leaf of zeros may be called data (see the module
    /// comment), a leaf of data never a hole.
    pub fn next_data(&self, root: &BlockRef, offset: u64, holes: &Holes) -> Result<Option<u64>> {
        self.seek_leaf(root, offset, holes, false)
    }

    /// The first offset at or after `offset` that lies in an all-zero leaf, or `None`
    /// if there is none before the end of the content (`SEEK_HOLE`, whose caller
    /// answers the end). Opens pointer blocks only.
    pub fn next_hole(&self, root: &BlockRef, offset: u64, holes: &Holes) -> Result<Option<u64>> {
        self.seek_leaf(root, offset, holes, true)
    }

    fn seek_leaf(
        &self,
        root: &BlockRef,
        offset: u64,
        holes: &Holes,
        want_zero: bool,
    ) -> Result<Option<u64>> {
        self.check_holes(holes)?;
        if offset >= root.length {
            return Ok(None);
        }
        let mut search = Search {
            reader: self,
            holes,
            want_zero,
            tree_bytes: root.length,
            exhausted: HashSet::new(),
            pointers_left: holes.pointers_max,
        };
        Ok(match search.node(root, None, 0, offset)? {
            Step::Found(at) => Some(at),
            Step::NotHere => None,
            // Calling the rest data is true; a hole past the budget goes unreported.
            Step::Stopped(at) => (!want_zero).then_some(at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{MemoryStore, keys, random};
    use crate::tree::{FANOUT, Fanout, TreeWriter};
    use crate::{BlockStore, Class};
    use proptest::prelude::*;

    /// Kith's chunker, or a tiny one (256-byte chunks, 2..8 children) for deep trees.
    fn shape(tiny: bool, keys: &EpochKeys) -> (Chunker, Fanout) {
        if tiny {
            let fanout = Fanout {
                min: 2,
                max: 8,
                boundary_one_in: 4,
            };
            (Chunker::with_sizes(keys, 64, 256, 1024), fanout)
        } else {
            (Chunker::new(keys), FANOUT)
        }
    }

    fn write(store: &MemoryStore, data: &[u8], tiny: bool) -> (BlockRef, Holes) {
        let keys = keys();
        let (chunker, fanout) = shape(tiny, &keys);
        let holes = Holes::with_chunker(&keys, &chunker, Kind::Data);
        let mut writer = TreeWriter::new(store, &keys, Class::Pinned)
            .with_threads(0)
            .with_shape(chunker, fanout);
        writer.write(data).unwrap();
        (writer.finish().unwrap(), holes)
    }

    /// The leaves of `data` as `(start, end, is_hole)`, from the chunker and the bytes:
    /// a leaf is a hole when it is all zeros and of the run length or the last one.
    fn model(data: &[u8], tiny: bool) -> Vec<(u64, u64, bool)> {
        let keys = keys();
        let (chunker, _) = shape(tiny, &keys);
        let run = chunker.cut(&vec![0u8; chunker.bytes_max()]);
        let mut leaves = Vec::new();
        let mut start = 0usize;
        for length in chunker.chunk_lengths(data) {
            let end = start + length;
            let zeros = data[start..end].iter().all(|byte| *byte == 0);
            let hole = zeros && (length == run || end == data.len());
            leaves.push((start as u64, end as u64, hole));
            start = end;
        }
        leaves
    }

    fn expected(leaves: &[(u64, u64, bool)], offset: u64, want_hole: bool) -> Option<u64> {
        leaves
            .iter()
            .find(|(_, end, hole)| *end > offset && *hole == want_hole)
            .map(|(start, _, _)| offset.max(*start))
    }

    fn check_all(data: &[u8], tiny: bool, offsets: &[u64]) {
        let store = MemoryStore::default();
        let (root, holes) = write(&store, data, tiny);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let leaves = model(data, tiny);
        for &offset in offsets {
            assert_eq!(
                reader.next_data(&root, offset, &holes).unwrap(),
                expected(&leaves, offset, false),
                "next_data({offset})"
            );
            assert_eq!(
                reader.next_hole(&root, offset, &holes).unwrap(),
                expected(&leaves, offset, true),
                "next_hole({offset})"
            );
        }
    }

    const MIB: usize = 1 << 20;

    /// `[data 1 MiB | zeros 10 MiB | data 1 MiB | zeros 3 MiB + 5 to the end]`.
    fn sparse_image() -> Vec<u8> {
        let mut data = random(MIB, 1);
        data.resize(11 * MIB, 0);
        data.extend_from_slice(&random(MIB, 2));
        data.resize(15 * MIB + 5, 0);
        data
    }

    #[test]
    fn zero_runs_are_holes_at_exact_leaf_boundaries() {
        let data = sparse_image();
        let store = MemoryStore::default();
        let (root, holes) = write(&store, &data, false);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        assert_eq!(holes.run_leaf_bytes(), crate::chunk::CHUNK_BYTES_MAX as u64);
        let leaves = model(&data, false);
        let starts: Vec<u64> = leaves.iter().map(|(start, _, _)| *start).collect();
        let max = holes.run_leaf_bytes();

        // The first hole is the first all-zero leaf: a leaf boundary at most one leaf
        // into the zeros.
        let hole = reader.next_hole(&root, 0, &holes).unwrap().unwrap();
        assert!(starts.contains(&hole), "{hole} is no leaf boundary");
        assert!(hole >= MIB as u64 && hole <= MIB as u64 + max, "{hole}");
        assert!(
            data[hole as usize..(hole + max) as usize]
                .iter()
                .all(|b| *b == 0)
        );
        // Data resumes at the leaf holding the end of the zero run.
        let data_at = reader.next_data(&root, hole, &holes).unwrap().unwrap();
        assert!(starts.contains(&data_at), "{data_at} is no leaf boundary");
        assert!(
            data_at <= 11 * MIB as u64 && data_at + max > 11 * MIB as u64,
            "{data_at}"
        );
        assert!(
            data[hole as usize..data_at as usize]
                .iter()
                .all(|b| *b == 0)
        );
        // The second run reaches the end, its short last leaf included.
        let second = reader.next_hole(&root, data_at, &holes).unwrap().unwrap();
        assert!(second >= 12 * MIB as u64 && second <= 12 * MIB as u64 + max);
        assert_eq!(reader.next_data(&root, second, &holes).unwrap(), None);
        assert_eq!(
            reader
                .next_hole(&root, data.len() as u64 - 1, &holes)
                .unwrap(),
            Some(data.len() as u64 - 1)
        );
        // Inside a region the offset itself is the answer; past the end there is none.
        assert_eq!(reader.next_data(&root, 5, &holes).unwrap(), Some(5));
        assert_eq!(
            reader.next_hole(&root, hole + 7, &holes).unwrap(),
            Some(hole + 7)
        );
        assert_eq!(
            reader.next_data(&root, data.len() as u64, &holes).unwrap(),
            None
        );
        assert_eq!(
            reader.next_hole(&root, data.len() as u64, &holes).unwrap(),
            None
        );

        // Every leaf boundary, and a byte inside each leaf, against the model.
        let mut offsets: Vec<u64> = starts.clone();
        offsets.extend(starts.iter().map(|start| start + 3));
        check_all(&data, false, &offsets);
    }

    #[test]
    fn zero_bytes_are_the_bytes_of_zero_leaves() {
        let store = MemoryStore::default();
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let data = sparse_image();
        let (root, holes) = write(&store, &data, false);
        let in_holes: u64 = model(&data, false)
            .iter()
            .filter(|(_, _, hole)| *hole)
            .map(|(start, end, _)| end - start)
            .sum();
        assert!(in_holes > 12 * MIB as u64, "{in_holes}");
        assert_eq!(reader.zero_bytes(&root, &holes).unwrap(), Some(in_holes));
        let (random, _) = write(&store, &random(MIB, 7), false);
        assert_eq!(reader.zero_bytes(&random, &holes).unwrap(), Some(0));
        let (small, _) = write(&store, &[0u8; 100], false);
        assert_eq!(reader.zero_bytes(&small, &holes).unwrap(), Some(100));
        // Deep trees against the model; a tiny budget gives up rather than guess.
        let data = runs(
            &[(false, 3000), (true, 40_000), (false, 10), (true, 9000)],
            8,
        );
        let (root, holes) = write(&store, &data, true);
        let in_holes: u64 = model(&data, true)
            .iter()
            .filter(|(_, _, hole)| *hole)
            .map(|(start, end, _)| end - start)
            .sum();
        assert_eq!(reader.zero_bytes(&root, &holes).unwrap(), Some(in_holes));
        let holes = holes.with_pointers_max(2);
        assert_eq!(reader.zero_bytes(&root, &holes).unwrap(), None);
    }

    #[test]
    fn content_without_a_zero_leaf_is_one_data_region() {
        // Random data, with zero runs shorter than a leaf: data too.
        let mut data = random(3 * MIB, 3);
        data[100_000..300_000].fill(0);
        data[2 * MIB..2 * MIB + 200_000].fill(0);
        let store = MemoryStore::default();
        let (root, holes) = write(&store, &data, false);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        for offset in [0, 150_000, 2 * MIB as u64 + 1000, data.len() as u64 - 1] {
            assert_eq!(
                reader.next_data(&root, offset, &holes).unwrap(),
                Some(offset)
            );
            assert_eq!(reader.next_hole(&root, offset, &holes).unwrap(), None);
        }
    }

    #[test]
    fn single_leaf_roots() {
        let store = MemoryStore::default();
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let (zeros, holes) = write(&store, &[0u8; 1000], false);
        assert_eq!(reader.next_data(&zeros, 0, &holes).unwrap(), None);
        assert_eq!(reader.next_hole(&zeros, 10, &holes).unwrap(), Some(10));
        let (bytes, _) = write(&store, &[1u8; 1000], false);
        assert_eq!(reader.next_data(&bytes, 10, &holes).unwrap(), Some(10));
        assert_eq!(reader.next_hole(&bytes, 0, &holes).unwrap(), None);
        let (empty, _) = write(&store, &[], false);
        assert_eq!(reader.next_data(&empty, 0, &holes).unwrap(), None);
        assert_eq!(reader.next_hole(&empty, 0, &holes).unwrap(), None);
    }

    #[test]
    fn a_long_zero_run_opens_each_distinct_pointer_block_once() {
        // 1 MiB of zeros in 1 KiB leaves, 2..8 to a pointer block: hundreds of pointer
        // blocks over the run, but only one distinct block per level.
        let mut data = vec![0u8; MIB];
        data.extend_from_slice(&random(5000, 4));
        let store = MemoryStore::default();
        let (root, holes) = write(&store, &data, true);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let gets = store.gets();
        let found = reader.next_data(&root, 0, &holes).unwrap().unwrap();
        assert_eq!(Some(found), expected(&model(&data, true), 0, false));
        let opened = store.gets() - gets;
        assert!(opened <= 16, "{opened} blocks opened");
        // The cache serves a second search without the store.
        let gets = store.gets();
        assert_eq!(reader.next_data(&root, 0, &holes).unwrap(), Some(found));
        assert_eq!(store.gets(), gets);
    }

    #[test]
    fn a_search_past_its_budget_answers_only_true_things() {
        let mut data = vec![0u8; 200_000];
        data.extend_from_slice(&random(5000, 5));
        let store = MemoryStore::default();
        let (root, holes) = write(&store, &data, true);
        let holes = holes.with_pointers_max(3);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        // Data is claimed no earlier than the search got, a hole is not claimed.
        let data_at = reader.next_data(&root, 0, &holes).unwrap().unwrap();
        assert!(data_at < 200_000, "{data_at}");
        let leaves = model(&data, true);
        let true_data = expected(&leaves, 0, false).unwrap();
        assert!(data_at <= true_data);
        let mut beyond = random(200_000, 6);
        beyond.resize(400_000, 0);
        let (root, _) = write(&store, &beyond, true);
        assert_eq!(reader.next_hole(&root, 0, &holes).unwrap(), None);
    }

    /// Hands out a flipped copy of one block.
    struct Damaging<'s> {
        inner: &'s MemoryStore,
        damaged: Address,
    }

    impl BlockStore for Damaging<'_> {
        fn put(&self, address: &Address, sealed: &[u8], class: Class) -> Result<()> {
            self.inner.put(address, sealed, class)
        }

        fn get(&self, address: &Address) -> Result<Vec<u8>> {
            let mut sealed = self.inner.get(address)?;
            if *address == self.damaged
                && let Some(byte) = sealed.last_mut()
            {
                *byte ^= 1;
            }
            Ok(sealed)
        }

        fn contains(&self, address: &Address) -> Result<bool> {
            self.inner.contains(address)
        }
    }

    #[test]
    fn a_damaged_pointer_block_is_an_error() {
        let data = sparse_image();
        let store = MemoryStore::default();
        let (root, holes) = write(&store, &data, false);
        let damaging = Damaging {
            inner: &store,
            damaged: root.address,
        };
        let keys = keys();
        let reader = TreeReader::new(&damaging, &keys);
        assert!(reader.next_hole(&root, 0, &holes).is_err());
        assert!(reader.next_data(&root, MIB as u64 * 2, &holes).is_err());
        // Keys of another epoch are refused, not guessed with.
        let other = EpochKeys::derive(&[3u8; 32], &[4u8; 16], 10);
        let reader = TreeReader::new(&store, &other);
        assert!(matches!(
            reader.next_hole(&root, 0, &holes),
            Err(Error::Malformed { .. })
        ));
    }

    /// Content of zero runs and data runs of random lengths.
    fn runs(lengths: &[(bool, usize)], seed: u64) -> Vec<u8> {
        let mut data = Vec::new();
        for (index, &(zero, length)) in lengths.iter().enumerate() {
            if zero {
                data.resize(data.len() + length, 0);
            } else {
                data.extend_from_slice(&random(length, seed + index as u64));
            }
        }
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Deep trees (tiny chunks and fan-out): every answer is the model's.
        #[test]
        fn answers_match_the_leaf_model_in_deep_trees(
            lengths in proptest::collection::vec((any::<bool>(), 1usize..6000), 1..12),
            seed: u64,
            offsets in proptest::collection::vec(0u64..80_000, 1..16),
        ) {
            let data = runs(&lengths, seed);
            check_all(&data, true, &offsets);
        }
    }
}
