//! Editing a tree: the root of changed content, from the old tree and the changed
//! byte ranges, with work proportional to the change rather than to the content.
//!
//! The defining property: [`TreeEditor::edit`] returns exactly the root a full
//! [`TreeWriter`](super::TreeWriter) pass over the new content gives — the same leaves,
//! pointer blocks and root ref — so dedup, sync and GC cannot tell which path made a
//! tree. Edits never insert (POSIX writes overwrite), so old and new content share
//! byte offsets below the shorter length, and every node of either tree is named by
//! the byte range it covers.
//!
//! Both tree levels are "chunkings" with the same locality: a leaf's cut depends only
//! on the `bytes_max` bytes from its start (and the content's end if nearer); a pointer
//! block's end depends only on its own children (and the level's end, for the last
//! block of a level). So, level by level:
//!
//! - leaves: from the start of the first old leaf whose `bytes_max` window reaches a
//!   changed byte, cut the new content until a cut falls on an old leaf boundary whose
//!   window holds no change — from there on the old leaves are the new ones;
//! - pointer levels: from the start of the old pointer block holding the first changed
//!   child, regroup the new children until a block ends on an old block boundary and
//!   the old block there has no changed child (and is not the level's last, or nothing
//!   after it changed).
//!
//! Each level's outcome is a list of [`Splice`]s (old nodes in a byte range replaced by
//! new ones), trimmed of nodes equal to the old ones, and is the input of the level
//! above. A level whose first node covers the whole content holds the root. A node
//! that comes out equal to the old node at its place (same range, no changed byte or
//! child under it) is taken from the old tree, not sealed again.
//!
//! Only pointer blocks on the paths to the changed ranges (and to where levels resync)
//! are opened; they are hostile input like any other and are checked as the reader
//! checks them. A tree of another epoch cannot be edited in place (its cut points come
//! from its own keyed Gear table): the answer says so, and the caller rewrites.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::{Builder, DEPTH_MAX, FANOUT, Fanout, TreeReader, encode_pointer};
use crate::chunk::{CHUNK_BYTES_MAX, Chunker};
use crate::error::BlockFault;
use crate::keys::EpochKeys;
use crate::seal;
use crate::{Address, BlockRef, BlockStore, Class, Error, Kind, Result};

/// New content is read in pieces of at least this many bytes.
const READ_PIECE_BYTES: u64 = CHUNK_BYTES_MAX as u64;

/// What one edit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditStats {
    /// New leaves sealed and put.
    pub leaves_sealed: u64,
    /// New pointer blocks sealed and put.
    pub pointers_sealed: u64,
    /// Pointer blocks of the old tree opened.
    pub pointers_opened: u64,
    /// Bytes of new content read (changed bytes and the windows around them).
    pub bytes_read: u64,
}

/// The answer of [`TreeEditor::edit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditOutcome {
    /// The root of the new content.
    Edited { root: BlockRef, stats: EditStats },
    /// The old tree is of epoch `tree`, the editor's keys of epoch `keys`: its chunk
    /// boundaries are not this epoch's, so the content must be written anew.
    OtherEpoch { tree: u32, keys: u32 },
}

/// Edits trees of one epoch in a block store (see the module comment).
///
/// ```
/// # use std::sync::Arc;
/// # use venti::{backend::MemoryBackend, keys::EpochKeys};
/// # use venti::tree::{EditOutcome, TreeEditor, TreeReader, TreeWriter};
/// # fn main() -> venti::Result<()> {
/// # let store = venti::Store::open(Arc::new(MemoryBackend::new(1)?), Default::default())?;
/// let keys = EpochKeys::derive(&[7; 32], &[1; 16], 0);
/// let mut content = vec![5u8; 1 << 20];
/// let mut writer = TreeWriter::new(&store, &keys, venti::Class::Pinned);
/// writer.write(&content)?;
/// let old = writer.finish()?;
/// content[300_000..300_004].copy_from_slice(b"edit");
/// let editor = TreeEditor::new(&store, &keys, venti::Class::Pinned);
/// let mut read = |at: u64, len: usize| -> venti::Result<Vec<u8>> {
///     Ok(content[at as usize..at as usize + len].to_vec())
/// };
/// let EditOutcome::Edited { root, .. } =
///     editor.edit(&old, content.len() as u64, &[(300_000, 300_004)], &mut read)?
/// else {
///     unreachable!("same epoch")
/// };
/// assert_eq!(TreeReader::new(&store, &keys).read_range(&root, 300_000, 4)?, b"edit");
/// # Ok(()) }
/// ```
pub struct TreeEditor<'s> {
    store: &'s dyn BlockStore,
    keys: &'s EpochKeys,
    class: Class,
    leaf_kind: Kind,
    chunker: Chunker,
    fanout: Fanout,
}

impl std::fmt::Debug for TreeEditor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeEditor")
            .field("keys", &self.keys)
            .field("leaf_kind", &self.leaf_kind)
            .field("chunker", &self.chunker)
            .finish_non_exhaustive()
    }
}

impl<'s> TreeEditor<'s> {
    /// An editor of trees with `Kind::Data` leaves, putting new blocks in `class`.
    pub fn new(store: &'s dyn BlockStore, keys: &'s EpochKeys, class: Class) -> TreeEditor<'s> {
        TreeEditor {
            store,
            keys,
            class,
            leaf_kind: Kind::Data,
            chunker: Chunker::new(keys),
            fanout: FANOUT,
        }
    }

    /// Trees whose leaves are of `kind`.
    pub fn with_leaf_kind(mut self, kind: Kind) -> TreeEditor<'s> {
        self.leaf_kind = kind;
        self
    }

    /// Test shapes, matching [`super::TreeWriter::with_shape`].
    #[cfg(test)]
    pub(super) fn with_shape(mut self, chunker: Chunker, fanout: Fanout) -> TreeEditor<'s> {
        self.chunker = chunker;
        self.fanout = fanout;
        self
    }

    /// The root of the new content of `new_len` bytes, edited from the tree under
    /// `old_root`.
    ///
    /// `changed` lists byte ranges `[start, end)` (in any order, overlapping or not);
    /// every byte below `min(old length, new_len)` outside them must equal the old
    /// content's (bytes from the shorter length on count as changed anyway).
    /// `read_new(offset, len)` returns exactly `len` bytes of the new content from
    /// `offset`; it is asked only for ranges near the changes.
    pub fn edit<E: From<Error>>(
        &self,
        old_root: &BlockRef,
        new_len: u64,
        changed: &[(u64, u64)],
        read_new: &mut dyn FnMut(u64, usize) -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<EditOutcome, E> {
        if old_root.epoch != self.keys.epoch() {
            return Ok(EditOutcome::OtherEpoch {
                tree: old_root.epoch,
                keys: self.keys.epoch(),
            });
        }
        let mut builder = Builder::new(self.store, Arc::new(self.keys.clone()), self.class, 0);
        builder.leaf_kind = self.leaf_kind;
        builder.fanout = self.fanout;
        let mut stats = EditStats::default();
        if new_len == 0 {
            // One empty leaf, as the writer makes for empty content.
            let empty = builder.buffer_with(&[]);
            let root = builder.seal_and_put(self.leaf_kind, empty)?;
            builder.wait_puts()?;
            stats.leaves_sealed = 1;
            return Ok(EditOutcome::Edited { root, stats });
        }
        let reader = TreeReader::new(self.store, self.keys).with_leaf_kind(self.leaf_kind);
        let mut old = OldTree::open(reader, *old_root)?;
        let changes = Changes::new(changed, old_root.length, new_len);
        let mut splices = self.leaf_splices(
            &mut old,
            &mut builder,
            &changes,
            new_len,
            read_new,
            &mut stats,
        )?;
        let mut level = 0u8;
        let root = loop {
            if splices.is_empty() {
                // Nothing changed at this level, so nothing above it either.
                break *old_root;
            }
            let first = new_node(&mut old, &splices, level, 0)?;
            if first.length == new_len {
                break first;
            }
            if level >= DEPTH_MAX {
                return Err(Error::Malformed {
                    what: "tree",
                    detail: format!("deeper than {DEPTH_MAX} pointer levels"),
                }
                .into());
            }
            splices = self.regroup(&mut old, &mut builder, level, &splices, new_len, &mut stats)?;
            level += 1;
        };
        builder.wait_puts()?;
        stats.pointers_opened = old.opened;
        Ok(EditOutcome::Edited { root, stats })
    }

    /// The leaf level: re-cut around each change until the cuts resync with the old
    /// leaves.
    fn leaf_splices<E: From<Error>>(
        &self,
        old: &mut OldTree<'_>,
        builder: &mut Builder<'_>,
        changes: &Changes,
        new_len: u64,
        read_new: &mut dyn FnMut(u64, usize) -> std::result::Result<Vec<u8>, E>,
        stats: &mut EditStats,
    ) -> std::result::Result<Vec<Splice>, E> {
        let bytes_max = self.chunker.bytes_max() as u64;
        let old_len = old.len();
        let mut bytes = NewBytes::default();
        let mut splices = Vec::new();
        // Old and new leaves coincide before `position`, which starts a leaf of both.
        let mut position = 0u64;
        while let Some(change_start) = changes.next_start(position) {
            // The first leaf whose cut window reaches the change.
            let reach = (change_start + 1).saturating_sub(bytes_max).max(position);
            let mut at = match old.node_at(0, reach)? {
                Some((start, _)) => start.max(position),
                None => position,
            };
            let mut splice = Splice::new(at);
            let resynced = loop {
                if at >= new_len {
                    break false;
                }
                let window_end = at.saturating_add(bytes_max).min(new_len);
                let window = bytes.window(at, window_end, new_len, read_new, stats)?;
                let length = self.chunker.cut(window).max(1);
                let chunk = window.get(..length).unwrap_or_default();
                let end = at + length as u64;
                let leaf = match old.node_at(0, at)? {
                    Some((start, leaf))
                        if start == at
                            && leaf.length == length as u64
                            && !changes.touches(at, end) =>
                    {
                        leaf
                    }
                    _ => {
                        let buffer = builder.buffer_with(chunk);
                        stats.leaves_sealed += 1;
                        builder.seal_and_put(self.leaf_kind, buffer)?
                    }
                };
                splice.push(leaf);
                at = end;
                if at < new_len
                    && let Some((start, _)) = old.node_at(0, at)?
                    && start == at
                    && !changes.touches(at, at.saturating_add(bytes_max))
                {
                    break true;
                }
            };
            let old_end = if resynced { at } else { old_len };
            if let Some(splice) = old.trim(0, splice.finish(old_end))? {
                splices.push(splice);
            }
            if !resynced {
                break;
            }
            position = at;
        }
        Ok(splices)
    }

    /// Pointer blocks of `level + 1` over the new nodes of `level` (described by the
    /// old tree and `splices`): regroup around each splice until the groups resync with
    /// the old pointer blocks.
    fn regroup(
        &self,
        old: &mut OldTree<'_>,
        builder: &mut Builder<'_>,
        level: u8,
        splices: &[Splice],
        new_len: u64,
        stats: &mut EditStats,
    ) -> Result<Vec<Splice>> {
        let parent = level + 1;
        let old_len = old.len();
        let touches = |start: u64, end: u64| splices_touch(splices, start, end);
        let mut out = Vec::new();
        // Old and new blocks of `parent` coincide before `position`.
        let mut position = 0u64;
        while let Some(next) = splices.iter().find(|splice| splice.end_max() > position) {
            // The old block holding the splice's first node; for an append, the
            // level's last block, which the new nodes continue.
            let anchor = next.start.min(old_len.saturating_sub(1));
            let mut at = match old.node_at(parent, anchor)? {
                Some((start, _)) => start.max(position),
                None => position,
            };
            let mut splice = Splice::new(at);
            let mut pending: Vec<BlockRef> = Vec::new();
            let mut pending_start = at;
            let resynced = loop {
                if at >= new_len {
                    break false;
                }
                let node = new_node(old, splices, level, at)?;
                pending.push(node);
                at += node.length;
                if !self.fanout.closes(pending.len(), &node) && at < new_len {
                    continue;
                }
                let group = match old.node_at(parent, pending_start)? {
                    Some((start, group))
                        if start == pending_start
                            && group.length == at - pending_start
                            && !touches(pending_start, at) =>
                    {
                        group
                    }
                    _ => {
                        let mut buffer = builder.buffer_with(&[]);
                        encode_pointer(parent, &pending, &mut buffer);
                        stats.pointers_sealed += 1;
                        let mut group = builder.seal_and_put(Kind::Pointer, buffer)?;
                        group.length = at - pending_start;
                        group
                    }
                };
                splice.push(group);
                pending.clear();
                pending_start = at;
                if at < new_len
                    && let Some((start, group)) = old.node_at(parent, at)?
                    && start == at
                {
                    let group_end = at.saturating_add(group.length);
                    let clean = if group_end >= old_len {
                        // The level's last block ended with the level: it is the same
                        // only if nothing after it changed either.
                        !touches(at, u64::MAX)
                    } else {
                        !touches(at, group_end)
                    };
                    if clean {
                        break true;
                    }
                }
            };
            let old_end = if resynced { at } else { old_len };
            if let Some(splice) = old.trim(parent, splice.finish(old_end))? {
                out.push(splice);
            }
            if !resynced {
                break;
            }
            position = at;
        }
        Ok(out)
    }
}

/// The node of the new `level` starting at `at`: from a splice, or the old one there.
fn new_node(old: &mut OldTree<'_>, splices: &[Splice], level: u8, at: u64) -> Result<BlockRef> {
    let index = splices.partition_point(|splice| splice.new_end() <= at);
    if let Some(splice) = splices.get(index)
        && splice.start <= at
    {
        let node = splice.ends.partition_point(|&end| end <= at);
        let start = match node.checked_sub(1) {
            Some(before) => splice.ends.get(before).copied(),
            None => Some(splice.start),
        };
        return match (start, splice.nodes.get(node)) {
            (Some(start), Some(node)) if start == at => Ok(*node),
            _ => Err(edit_fault(level, at)),
        };
    }
    match old.node_at(level, at)? {
        Some((start, node)) if start == at => Ok(node),
        _ => Err(edit_fault(level, at)),
    }
}

fn edit_fault(level: u8, at: u64) -> Error {
    Error::Malformed {
        what: "tree edit",
        detail: format!("no level-{level} node starts at byte {at}"),
    }
}

/// Whether a splice's range (old or new) meets `[start, end)`.
fn splices_touch(splices: &[Splice], start: u64, end: u64) -> bool {
    let index = splices.partition_point(|splice| splice.end_max() <= start);
    splices.get(index).is_some_and(|splice| splice.start < end)
}

/// Old nodes of one level in `[start, old_end)` replaced by `nodes`, which cover
/// `[start, new_end)`; `old_end == new_end` except at the end of content.
#[derive(Debug)]
struct Splice {
    start: u64,
    old_end: u64,
    nodes: Vec<BlockRef>,
    /// `ends[i]`: content offset where `nodes[i]` ends.
    ends: Vec<u64>,
}

impl Splice {
    fn new(start: u64) -> Splice {
        Splice {
            start,
            old_end: start,
            nodes: Vec::new(),
            ends: Vec::new(),
        }
    }

    fn push(&mut self, node: BlockRef) {
        let end = self.new_end() + node.length;
        self.nodes.push(node);
        self.ends.push(end);
    }

    fn finish(mut self, old_end: u64) -> Splice {
        self.old_end = old_end;
        self
    }

    fn new_end(&self) -> u64 {
        self.ends.last().copied().unwrap_or(self.start)
    }

    fn end_max(&self) -> u64 {
        self.old_end.max(self.new_end())
    }
}

/// Changed byte ranges, sorted and merged, with everything from the shorter length on
/// (the last leaf's window sees where content ends).
#[derive(Debug)]
struct Changes(Vec<(u64, u64)>);

impl Changes {
    fn new(changed: &[(u64, u64)], old_len: u64, new_len: u64) -> Changes {
        let mut ranges: Vec<(u64, u64)> = changed
            .iter()
            .map(|&(start, end)| (start, end.min(new_len)))
            .filter(|(start, end)| start < end)
            .collect();
        if old_len != new_len {
            ranges.push((old_len.min(new_len), old_len.max(new_len)));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Changes(merged)
    }

    /// Start of the first change ending after `position`.
    fn next_start(&self, position: u64) -> Option<u64> {
        let index = self.0.partition_point(|&(_, end)| end <= position);
        self.0.get(index).map(|&(start, _)| start)
    }

    /// Whether a change meets `[start, end)`.
    fn touches(&self, start: u64, end: u64) -> bool {
        let index = self
            .0
            .partition_point(|&(_, change_end)| change_end <= start);
        self.0
            .get(index)
            .is_some_and(|&(change_start, _)| change_start < end)
    }
}

/// A window onto the new content, read through the caller's function in pieces.
#[derive(Default)]
struct NewBytes {
    start: u64,
    bytes: Vec<u8>,
}

impl NewBytes {
    /// New content `[from, to)`, `to <= new_len`.
    fn window<E: From<Error>>(
        &mut self,
        from: u64,
        to: u64,
        new_len: u64,
        read_new: &mut dyn FnMut(u64, usize) -> std::result::Result<Vec<u8>, E>,
        stats: &mut EditStats,
    ) -> std::result::Result<&[u8], E> {
        let held_end = self.start + self.bytes.len() as u64;
        if from < self.start || from > held_end {
            self.bytes.fill(0);
            self.bytes.clear();
            self.start = from;
        } else if from - self.start > READ_PIECE_BYTES {
            let consumed = usize::try_from(from - self.start)
                .unwrap_or(usize::MAX)
                .min(self.bytes.len());
            // Plaintext: zero what is dropped.
            if let Some(prefix) = self.bytes.get_mut(..consumed) {
                prefix.fill(0);
            }
            self.bytes.drain(..consumed);
            self.start = from;
        }
        let held_end = self.start + self.bytes.len() as u64;
        if to > held_end {
            let want = (to - held_end)
                .max(READ_PIECE_BYTES)
                .min(new_len.saturating_sub(held_end));
            let want = usize::try_from(want).map_err(|_| short_read(want, 0))?;
            let piece = read_new(held_end, want)?;
            if piece.len() != want {
                return Err(short_read(want as u64, piece.len()).into());
            }
            stats.bytes_read += want as u64;
            self.bytes.extend_from_slice(&piece);
        }
        let range = usize::try_from(from - self.start)
            .ok()
            .zip(usize::try_from(to - self.start).ok());
        Ok(range
            .and_then(|(from, to)| self.bytes.get(from..to))
            .unwrap_or_default())
    }
}

impl Drop for NewBytes {
    fn drop(&mut self) {
        // Plaintext of the file being edited.
        self.bytes.fill(0);
    }
}

fn short_read(wanted: u64, got: usize) -> Error {
    Error::Malformed {
        what: "tree edit",
        detail: format!("new content read gave {got} bytes for {wanted}"),
    }
}

/// A decoded pointer block of the old tree.
#[derive(Debug)]
struct OldNode {
    level: u8,
    length: u64,
    children: Vec<BlockRef>,
    /// `ends[i]`: offset in the block's content where `children[i]` ends.
    ends: Vec<u64>,
}

/// The old tree, opened lazily along the paths an edit walks.
struct OldTree<'s> {
    reader: TreeReader<'s>,
    root: BlockRef,
    /// Level of the root: 0 for a leaf.
    height: u8,
    nodes: HashMap<Address, Rc<OldNode>>,
    opened: u64,
}

impl<'s> OldTree<'s> {
    fn open(reader: TreeReader<'s>, root: BlockRef) -> Result<OldTree<'s>> {
        let mut tree = OldTree {
            reader,
            root,
            height: 0,
            nodes: HashMap::new(),
            opened: 0,
        };
        if root.length == 0 {
            // Empty content: no nodes at all.
            return Ok(tree);
        }
        let sealed = tree.reader.store.get(&root.address)?;
        let (kind, content) = tree.reader.open_node(&root, None, &sealed)?;
        if kind == Kind::Pointer {
            let pointer = tree.reader.check_pointer(&root, None, &content)?;
            tree.height = pointer.level;
            tree.remember(&root, pointer.level, pointer.children);
        }
        Ok(tree)
    }

    fn len(&self) -> u64 {
        self.root.length
    }

    fn remember(&mut self, node_ref: &BlockRef, level: u8, children: Vec<BlockRef>) -> Rc<OldNode> {
        self.opened += 1;
        let mut end = 0u64;
        // check_pointer proved the children's lengths add up without overflow.
        let ends = children
            .iter()
            .map(|child| {
                end = end.saturating_add(child.length);
                end
            })
            .collect();
        let node = Rc::new(OldNode {
            level,
            length: node_ref.length,
            children,
            ends,
        });
        self.nodes.insert(node_ref.address, Rc::clone(&node));
        node
    }

    /// The pointer block `node_ref`, which its parent says is at `level`.
    fn pointer(&mut self, node_ref: &BlockRef, level: u8) -> Result<Rc<OldNode>> {
        let fault = |fault: BlockFault| Error::Block {
            address: node_ref.address,
            fault,
        };
        if let Some(node) = self.nodes.get(&node_ref.address) {
            if node.level != level {
                return Err(fault(BlockFault::Level {
                    expected: level,
                    found: node.level,
                }));
            }
            if node.length != node_ref.length {
                return Err(fault(BlockFault::ChildLengths {
                    declared: node_ref.length,
                    sum: node.length,
                }));
            }
            return Ok(Rc::clone(node));
        }
        let sealed = self.reader.store.get(&node_ref.address)?;
        let content = seal::open(self.reader.keys, node_ref, &sealed, Kind::Pointer)?;
        let pointer = self.reader.check_pointer(node_ref, Some(level), &content)?;
        Ok(self.remember(node_ref, level, pointer.children))
    }

    /// The old node of `level` holding byte `at`, and its start; `None` past the old
    /// content or above the old root.
    fn node_at(&mut self, level: u8, at: u64) -> Result<Option<(u64, BlockRef)>> {
        if at >= self.root.length || level > self.height {
            return Ok(None);
        }
        let mut node_ref = self.root;
        let mut start = 0u64;
        let mut node_level = self.height;
        while node_level > level {
            let node = self.pointer(&node_ref, node_level)?;
            let offset = at - start;
            let index = node.ends.partition_point(|&end| end <= offset);
            let child = node.children.get(index).copied().ok_or(Error::Block {
                address: node_ref.address,
                fault: BlockFault::ChildLengths {
                    declared: node_ref.length,
                    sum: node.ends.last().copied().unwrap_or(0),
                },
            })?;
            let before = match index.checked_sub(1) {
                Some(previous) => node.ends.get(previous).copied().unwrap_or(0),
                None => 0,
            };
            start += before;
            node_ref = child;
            node_level -= 1;
        }
        Ok(Some((start, node_ref)))
    }

    /// `splice` without the nodes at its ends that equal the old nodes at their place;
    /// `None` when nothing is left to replace.
    fn trim(&mut self, level: u8, mut splice: Splice) -> Result<Option<Splice>> {
        let mut leading = 0;
        let mut start = splice.start;
        for node in &splice.nodes {
            if self.node_at(level, start)? != Some((start, *node)) {
                break;
            }
            leading += 1;
            start += node.length;
        }
        // Equal nodes at the front cover the same range in old and new.
        splice.nodes.drain(..leading);
        splice.ends.drain(..leading);
        splice.start = start;
        while splice.old_end == splice.new_end()
            && let Some(last) = splice.nodes.last().copied()
        {
            let last_start = splice.new_end() - last.length;
            if self.node_at(level, last_start)? != Some((last_start, last)) {
                break;
            }
            splice.nodes.pop();
            splice.ends.pop();
            splice.old_end = last_start;
        }
        if splice.nodes.is_empty() && splice.old_end == splice.start {
            return Ok(None);
        }
        Ok(Some(splice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::TreeWriter;
    use crate::tree::tests::{MemoryStore, keys};
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};

    /// Kith's shape, or a tiny one (256-byte chunks, 2..8 children) whose trees are
    /// five or six levels deep at a few hundred KB.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        Kith,
        Tiny,
    }

    impl Shape {
        fn parts(self, keys: &EpochKeys) -> (Chunker, Fanout) {
            match self {
                Shape::Kith => (Chunker::new(keys), FANOUT),
                Shape::Tiny => (
                    Chunker::with_sizes(keys, 64, 256, 1024),
                    Fanout {
                        min: 2,
                        max: 8,
                        boundary_one_in: 4,
                    },
                ),
            }
        }
    }

    fn write_full(store: &MemoryStore, shape: Shape, data: &[u8]) -> BlockRef {
        let keys = keys();
        let (chunker, fanout) = shape.parts(&keys);
        let mut writer = TreeWriter::new(store, &keys, Class::Pinned)
            .with_threads(0)
            .with_shape(chunker, fanout);
        writer.write(data).unwrap();
        writer.finish().unwrap()
    }

    fn edit(
        store: &MemoryStore,
        shape: Shape,
        old: &BlockRef,
        data: &[u8],
        changed: &[(u64, u64)],
    ) -> Result<(BlockRef, EditStats)> {
        let keys = keys();
        let (chunker, fanout) = shape.parts(&keys);
        let editor = TreeEditor::new(store, &keys, Class::Pinned).with_shape(chunker, fanout);
        let mut read = |at: u64, len: usize| -> Result<Vec<u8>> {
            Ok(data[at as usize..at as usize + len].to_vec())
        };
        match editor.edit(old, data.len() as u64, changed, &mut read)? {
            EditOutcome::Edited { root, stats } => Ok((root, stats)),
            other => panic!("{other:?}"),
        }
    }

    fn content(kind: u8, bytes: usize, seed: u64) -> Vec<u8> {
        let mut random = vec![0u8; bytes];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut random);
        match kind % 4 {
            0 => vec![0u8; bytes],
            1 => random
                .iter()
                .take(3001)
                .copied()
                .cycle()
                .take(bytes)
                .collect(),
            2 => (0..bytes)
                .map(|at| if (at / 5000) % 3 == 1 { random[at] } else { 0 })
                .collect(),
            _ => random,
        }
    }

    #[derive(Clone, Debug)]
    enum Change {
        /// Overwrite with random bytes (or zeros) at a fraction of the length.
        Write { at: f64, len: usize, zeros: bool },
        /// Truncate or extend to a fraction of the length (extensions read as zeros,
        /// then get random bytes at their end).
        Resize { to: f64 },
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0.0..1.0f64, prop_oneof![1usize..10, 1usize..5000], any::<bool>())
                .prop_map(|(at, len, zeros)| Change::Write { at, len, zeros }),
            1 => (0.0..2.0f64).prop_map(|to| Change::Resize { to }),
        ]
    }

    /// Apply `changes` to `data`; answers the changed ranges (a caller's dirty list).
    fn apply(data: &mut Vec<u8>, changes: &[Change], seed: u64) -> Vec<(u64, u64)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut changed = Vec::new();
        // A truncate hides the old bytes past it for good: an extension after it
        // reads zeros there.
        let mut old_valid = data.len();
        for change in changes {
            match *change {
                Change::Write { at, len, zeros } => {
                    let at = (at * data.len() as f64) as usize;
                    if data.len() < at + len {
                        data.resize(at + len, 0);
                    }
                    if zeros {
                        data[at..at + len].fill(0);
                    } else {
                        rng.fill_bytes(&mut data[at..at + len]);
                    }
                    changed.push((at as u64, (at + len) as u64));
                }
                Change::Resize { to } => {
                    let to = (to * data.len() as f64) as usize;
                    data.resize(to, 0);
                    old_valid = old_valid.min(to);
                    if to > 0 && rng.random_bool(0.5) {
                        let tail = to.saturating_sub(100);
                        rng.fill_bytes(&mut data[tail..]);
                        changed.push((tail as u64, to as u64));
                    }
                }
            }
        }
        if old_valid < data.len() {
            changed.push((old_valid as u64, data.len() as u64));
        }
        changed
    }

    fn check_edit(shape: Shape, kind: u8, bytes: usize, seed: u64, changes: &[Change]) {
        let store = MemoryStore::default();
        let old_data = content(kind, bytes, seed);
        let old = write_full(&store, shape, &old_data);
        let mut data = old_data.clone();
        let changed = apply(&mut data, changes, seed);
        let (root, _) = edit(&store, shape, &old, &data, &changed).unwrap();
        let full = write_full(&MemoryStore::default(), shape, &data);
        assert_eq!(
            root, full,
            "{shape:?}: edited root differs from the full rewrite"
        );
        let keys = keys();
        assert!(TreeReader::new(&store, &keys).read_all(&root).unwrap() == data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn edited_root_equals_full_rewrite_in_deep_trees(
            kind in 0u8..4,
            bytes in prop_oneof![0usize..3000, 0usize..400_000],
            seed: u64,
            changes in proptest::collection::vec(change(), 0..6),
        ) {
            check_edit(Shape::Tiny, kind, bytes, seed, &changes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn edited_root_equals_full_rewrite_with_kith_sizes(
            kind in 0u8..4,
            bytes in prop_oneof![0usize..300_000, 0usize..6_000_000],
            seed: u64,
            changes in proptest::collection::vec(change(), 0..4),
        ) {
            check_edit(Shape::Kith, kind, bytes, seed, &changes);
        }
    }

    #[test]
    fn edge_cases_equal_full_rewrite() {
        let write = |at: f64, len: usize| Change::Write {
            at,
            len,
            zeros: false,
        };
        let cases: Vec<Vec<Change>> = vec![
            vec![],
            vec![Change::Resize { to: 0.0 }],
            vec![Change::Resize { to: 1.0001 }],
            vec![Change::Resize { to: 1.9 }],
            vec![Change::Resize { to: 0.5 }],
            vec![write(0.0, 1)],
            vec![write(0.99999, 1000)],
            vec![write(0.3, 1), write(0.6, 1), write(0.31, 1)],
        ];
        for shape in [Shape::Tiny, Shape::Kith] {
            for kind in 0..4 {
                for bytes in [0, 1, 300, 5000, 700_000] {
                    for changes in &cases {
                        check_edit(shape, kind, bytes, 11, changes);
                    }
                }
            }
        }
    }

    /// A 1-byte edit of a 64 MiB file seals one or two leaves and one pointer block
    /// per level; a rewrite of the same bytes seals nothing.
    #[test]
    fn one_byte_edit_of_a_large_file_is_local() {
        let store = MemoryStore::default();
        let mut data = content(3, 64 << 20, 1);
        let old = write_full(&store, Shape::Kith, &data);
        let keys = keys();
        let sealed = store.get(&old.address).unwrap();
        let depth = seal::open(&keys, &old, &sealed, Kind::Pointer).unwrap()[1] as u64;
        assert!(depth >= 2, "depth {depth}");

        // "Changed" to the same byte: the leaf is sealed again, comes out the same,
        // and nothing above it is touched.
        let (same, stats) = edit(
            &store,
            Shape::Kith,
            &old,
            &data,
            &[(40_000_000, 40_000_001)],
        )
        .unwrap();
        assert_eq!(same, old);
        assert!(stats.leaves_sealed <= 1, "{stats:?}");
        assert_eq!(stats.pointers_sealed, 0, "{stats:?}");

        data[40_000_000] ^= 1;
        let puts = store.puts();
        let (root, stats) = edit(
            &store,
            Shape::Kith,
            &old,
            &data,
            &[(40_000_000, 40_000_001)],
        )
        .unwrap();
        let put = store.puts() - puts;
        assert!(stats.leaves_sealed <= 2, "{stats:?}");
        // One per level; two where the new leaf moved a pointer-block boundary.
        assert!(
            (depth..=2 * depth).contains(&stats.pointers_sealed),
            "{stats:?}"
        );
        assert!(
            put as u64 <= stats.leaves_sealed + stats.pointers_sealed,
            "{put} puts"
        );
        assert!(stats.pointers_opened <= 3 * depth, "{stats:?}");
        assert!(stats.bytes_read <= 6 * CHUNK_BYTES_MAX as u64, "{stats:?}");
        assert_eq!(
            root,
            write_full(&MemoryStore::default(), Shape::Kith, &data)
        );
    }

    #[test]
    fn another_epoch_asks_for_a_rewrite() {
        let store = MemoryStore::default();
        let data = content(3, 100_000, 2);
        let old = write_full(&store, Shape::Kith, &data);
        let other = EpochKeys::derive(&[3u8; 32], &[4u8; 16], 10);
        let editor = TreeEditor::new(&store, &other, Class::Pinned);
        let mut read = |_: u64, _: usize| -> Result<Vec<u8>> { panic!("nothing to read") };
        assert_eq!(
            editor.edit(&old, 100_000, &[(5, 6)], &mut read).unwrap(),
            EditOutcome::OtherEpoch { tree: 9, keys: 10 }
        );
    }

    #[test]
    fn hostile_old_trees_and_short_reads_are_errors() {
        let store = MemoryStore::default();
        let keys = keys();
        let data = content(3, 3_000_000, 3);
        let good = write_full(&store, Shape::Kith, &data);
        let mut read = |at: u64, len: usize| -> Result<Vec<u8>> {
            Ok(data[at as usize..at as usize + len].to_vec())
        };
        let editor = TreeEditor::new(&store, &keys, Class::Pinned);
        let edit = |root: &BlockRef, read: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>| {
            editor.edit(root, data.len() as u64, &[(1_000_000, 1_000_001)], read)
        };
        assert!(edit(&good, &mut read).is_ok());
        // A root that lies about its length, a missing block, a leaf posing as a
        // pointer block.
        let longer = BlockRef {
            length: good.length + 1,
            ..good
        };
        assert!(matches!(edit(&longer, &mut read), Err(Error::Block { .. })));
        let missing = BlockRef {
            address: Address([9; 32]),
            ..good
        };
        assert!(matches!(
            edit(&missing, &mut read),
            Err(Error::NotFound { .. })
        ));
        // A level-2 pointer over leaves (levels lie).
        let leaf = {
            let sealed = store.get(&good.address).unwrap();
            let payload = seal::open(&keys, &good, &sealed, Kind::Pointer).unwrap();
            BlockRef::decode(&payload[4..4 + BlockRef::ENCODED_LEN]).unwrap()
        };
        let mut payload = Vec::new();
        encode_pointer(3, &[leaf, leaf], &mut payload);
        let (mut lying, sealed) = seal::seal(&keys, Kind::Pointer, &payload).unwrap();
        store.put(&lying.address, &sealed, Class::Pinned).unwrap();
        lying.length = 2 * leaf.length;
        let result = editor.edit(&lying, lying.length, &[(5, 6)], &mut read);
        assert!(matches!(result, Err(Error::Block { .. })), "{result:?}");
        // New content that reads short.
        let mut short = |_: u64, len: usize| -> Result<Vec<u8>> { Ok(vec![0; len / 2]) };
        assert!(matches!(
            edit(&good, &mut short),
            Err(Error::Malformed { .. })
        ));
    }
}
