//! File content: where bytes live, and how a volume reads and writes them.
//!
//! [`ContentStore`] is the narrow view fossil has of venti: stream bytes in and get a
//! root [`BlockRef`], read a byte range of a root, store and load metadata blobs
//! (checkpoints), and make everything stored durable. [`crate::venti_content::VentiContent`] implements it
//! over venti's tree writer and store; [`MemContent`] keeps whole contents in a map
//! for tests.
//!
//! [`Overlay`] is the write buffer of one file: the dirty pieces (data or zeros) over
//! the committed content, and the size.
//!
//! [`seek_content`] answers `SEEK_DATA`/`SEEK_HOLE` for committed content: the bytes
//! past the content's end (a file grown by truncate) are a hole; inside a tree, the
//! store finds holes at leaf granularity without reading leaves
//! ([`ContentStore::seek`]); inline content is one region, a hole only if all zeros.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use venti::{Address, BlockRef};

use crate::op::Content;
use crate::{Error, Result, SeekTo};

/// What a volume needs from the block store.
pub trait ContentStore: Send + Sync + std::fmt::Debug {
    /// A writer for new file content.
    fn writer(&self) -> Result<Box<dyn ContentWriter>>;
    /// Store content already in memory (no writer thread for small content).
    fn write_all(&self, bytes: &[u8]) -> Result<BlockRef> {
        let mut writer = self.writer()?;
        writer.write(bytes)?;
        writer.finish()
    }
    /// Up to `len` bytes of the content under `root` from `offset` (shorter at the end).
    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The root of new content of `new_len` bytes that differs from the tree under
    /// `base` only inside `changed` (ranges `[start, end)`) and from `base.length` on,
    /// doing work around the changes only; `read_new(offset, len)` gives exactly `len`
    /// bytes of the new content. The root is the one [`ContentStore::writer`] would
    /// give for the same bytes. `None` when this store cannot edit `base` in place (a
    /// tree of another key epoch, or a store without trees): the caller writes the
    /// content anew.
    fn edit(
        &self,
        base: &BlockRef,
        new_len: u64,
        changed: &[(u64, u64)],
        read_new: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>,
    ) -> Result<Option<BlockRef>> {
        let _ = (base, new_len, changed, read_new);
        Ok(None)
    }
    /// The first offset at or after `offset` (below `root.length`) in the content
    /// under `root` that is data ([`SeekTo::Data`]) or in a hole ([`SeekTo::Hole`]),
    /// `None` if there is none. A store may call zeros data, never data a hole; one
    /// that knows no holes answers that everything is data (this default).
    fn seek(&self, root: &BlockRef, offset: u64, to: SeekTo) -> Result<Option<u64>> {
        Ok(match to {
            SeekTo::Data => (offset < root.length).then_some(offset),
            SeekTo::Hole => None,
        })
    }
    /// Bytes of the content under `root` outside the holes [`ContentStore::seek`]
    /// finds (what `st_blocks` counts), or `None` when that is unknown or too costly
    /// to find out (this default).
    fn data_bytes(&self, root: &BlockRef) -> Result<Option<u64>> {
        let _ = root;
        Ok(None)
    }
    /// Store a metadata blob (a checkpoint image).
    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef>;
    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>>;
    /// Everything stored so far survives a power loss.
    fn sync(&self) -> Result<()>;
    /// A garbage-collection fence: blocks put (or put again) from now on survive every
    /// round that starts from it ([`ContentStore::collect_garbage`]).
    fn gc_fence(&self) -> Result<u64> {
        Err(Error::Invalid("this content store collects no garbage"))
    }
    /// Remove every block put before `fence` that no tree under `roots` holds, then
    /// compact: all storage with dead bytes if `compact_all`, else only where at least
    /// half is dead.
    fn collect_garbage(
        &self,
        fence: u64,
        roots: &[BlockRef],
        compact_all: bool,
    ) -> Result<Collected> {
        let _ = (fence, roots, compact_all);
        Err(Error::Invalid("this content store collects no garbage"))
    }
}

/// What a garbage-collection round removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blocks marked live (reachable from the roots).
    pub live_blocks: u64,
    /// Blocks removed.
    pub swept_blocks: u64,
    /// Bytes of storage given back to the file system by compaction.
    pub freed_bytes: u64,
    /// Damaged records compaction found and dropped (each is logged).
    pub damaged_records: u64,
}

/// Streams one file's new content into the store.
pub trait ContentWriter: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn finish(self: Box<Self>) -> Result<BlockRef>;
}

/// Read `len` bytes of `content` from `offset`; shorter past the content's end.
pub fn read_content(
    store: &dyn ContentStore,
    content: &Content,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let content_len = content.len();
    if offset >= content_len || len == 0 {
        return Ok(Vec::new());
    }
    let len = len.min((content_len - offset) as usize);
    match content {
        Content::Inline(bytes) => {
            let start = offset as usize;
            Ok(bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .unwrap_or_default())
        }
        Content::Tree(root) => store.read(root, offset, len),
        Content::Slices(slices) => {
            let mut out = Vec::with_capacity(len);
            let end = offset + len as u64;
            let mut slice_start = 0u64;
            for slice in slices {
                let slice_end = slice_start + slice.len;
                if slice_end > offset && slice_start < end {
                    let from = offset.max(slice_start) - slice_start;
                    let to = end.min(slice_end) - slice_start;
                    let bytes =
                        store.read(&slice.root, slice.offset + from, (to - from) as usize)?;
                    if bytes.len() as u64 != to - from {
                        return Err(Error::Corrupt {
                            what: "content",
                            detail: "slice shorter than its tree".into(),
                        });
                    }
                    out.extend_from_slice(&bytes);
                }
                if slice_end >= end {
                    break;
                }
                slice_start = slice_end;
            }
            Ok(out)
        }
    }
}

/// `lseek(SEEK_DATA / SEEK_HOLE)` in committed `content` of a file of `size` bytes,
/// from `offset < size`: the first offset at or after it that is data, or in a hole;
/// `None` when no data follows (`ENXIO`). A hole search always finds one: the end of
/// the file is the hole every file has. Bytes from the content's end to `size` read as
/// zeros and are a hole; older `Content::Slices` values are reported as data.
pub fn seek_content(
    store: &dyn ContentStore,
    content: &Content,
    size: u64,
    offset: u64,
    to: SeekTo,
) -> Result<Option<u64>> {
    let content_len = content.len().min(size);
    if offset >= content_len {
        return Ok(match to {
            SeekTo::Data => None,
            SeekTo::Hole => (offset < size).then_some(offset),
        });
    }
    let found = match content {
        Content::Inline(bytes) if bytes.iter().all(|byte| *byte == 0) => match to {
            SeekTo::Data => None,
            SeekTo::Hole => Some(offset),
        },
        Content::Inline(_) | Content::Slices(_) => match to {
            SeekTo::Data => Some(offset),
            SeekTo::Hole => None,
        },
        Content::Tree(root) => match (to, store.seek(root, offset, to)?) {
            // Never before the offset asked about: an answer that is would be a fault
            // of the store, and "data here" is true whatever the content.
            (SeekTo::Data, Some(found)) if found < offset => Some(offset),
            (_, found) => found.filter(|found| *found >= offset && *found < content_len),
        },
    };
    Ok(match to {
        SeekTo::Data => found,
        SeekTo::Hole => Some(found.unwrap_or(content_len)),
    })
}

/// Whole contents in memory, addressed by their hash. For tests (and nothing else:
/// nothing here is sealed).
#[derive(Debug, Default)]
pub struct MemContent {
    blobs: Mutex<HashMap<Address, Arc<Vec<u8>>>>,
}

impl MemContent {
    pub fn new() -> MemContent {
        MemContent::default()
    }

    fn put(&self, bytes: Vec<u8>) -> BlockRef {
        let address = Address::of(&bytes);
        let length = bytes.len() as u64;
        self.blobs.lock().insert(address, Arc::new(bytes));
        BlockRef {
            address,
            key: [0; 32],
            epoch: 0,
            length,
        }
    }

    fn get(&self, root: &BlockRef) -> Result<Arc<Vec<u8>>> {
        self.blobs
            .lock()
            .get(&root.address)
            .cloned()
            .ok_or(Error::Store(venti::Error::NotFound {
                address: root.address,
            }))
    }

    /// Blobs held (tests check that content reached the store).
    pub fn blob_count(&self) -> usize {
        self.blobs.lock().len()
    }
}

struct MemWriter {
    store: Arc<MemContent>,
    bytes: Vec<u8>,
}

impl ContentStore for Arc<MemContent> {
    fn writer(&self) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(MemWriter {
            store: Arc::clone(self),
            bytes: Vec::new(),
        }))
    }

    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        let blob = self.get(root)?;
        let start = (offset as usize).min(blob.len());
        let end = start.saturating_add(len).min(blob.len());
        Ok(blob[start..end].to_vec())
    }

    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        Ok(self.put(bytes.to_vec()))
    }

    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        Ok(self.get(root)?.as_ref().clone())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

impl ContentWriter for MemWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn finish(self: Box<Self>) -> Result<BlockRef> {
        let MemWriter { store, bytes } = *self;
        Ok(store.put(bytes))
    }
}

/// One dirty piece of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(bytes) => bytes.len() as u64,
            Piece::Zeros(len) => *len,
        }
    }

    /// The part of the piece in `[from, to)` relative to its start.
    fn slice(&self, from: u64, to: u64) -> Piece {
        match self {
            Piece::Data(bytes) => Piece::Data(bytes[from as usize..to as usize].to_vec()),
            Piece::Zeros(_) => Piece::Zeros(to - from),
        }
    }
}

/// Dirty pieces over a base content: what a file looks like before its write op.
///
/// Reading offset `x`: a piece covering `x` if any, else the base if `x <
/// base_valid`, else zero. `base_valid` only shrinks (a truncate hides the base's tail
/// for good, so growing the file again shows zeros).
#[derive(Clone, Debug)]
pub struct Overlay {
    pub base: Content,
    pub base_valid: u64,
    pub size: u64,
    pieces: BTreeMap<u64, Piece>,
    data_bytes: usize,
}

impl Overlay {
    pub fn new(base: Content, size: u64) -> Overlay {
        let base_valid = base.len().min(size);
        Overlay {
            base,
            base_valid,
            size,
            pieces: BTreeMap::new(),
            data_bytes: 0,
        }
    }

    /// Bytes of data held in memory.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn is_clean(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Cut out `[start, end)` from the pieces, splitting ones that straddle it.
    fn clear(&mut self, start: u64, end: u64) {
        let mut overlapping = Vec::new();
        if let Some((&at, piece)) = self.pieces.range(..start).next_back()
            && at + piece.len() > start
        {
            overlapping.push(at);
        }
        overlapping.extend(self.pieces.range(start..end).map(|(&at, _)| at));
        for at in overlapping {
            let Some(piece) = self.pieces.remove(&at) else {
                continue;
            };
            if let Piece::Data(bytes) = &piece {
                self.data_bytes -= bytes.len();
            }
            let piece_end = at + piece.len();
            if at < start {
                self.insert_raw(at, piece.slice(0, start - at));
            }
            if piece_end > end {
                self.insert_raw(end, piece.slice(end - at, piece_end - at));
            }
        }
    }

    fn insert_raw(&mut self, at: u64, piece: Piece) {
        if piece.len() == 0 {
            return;
        }
        if let Piece::Data(bytes) = &piece {
            self.data_bytes += bytes.len();
        }
        self.pieces.insert(at, piece);
    }

    /// Write `bytes` at `offset`, growing the file if needed.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len() as u64;
        self.clear(offset, end);
        // Append to the piece ending exactly here: sequential writes stay one piece.
        if let Some((&at, Piece::Data(previous))) = self.pieces.range_mut(..offset).next_back()
            && at + previous.len() as u64 == offset
            && previous.len() < (8 << 20)
        {
            previous.extend_from_slice(bytes);
            self.data_bytes += bytes.len();
        } else {
            self.insert_raw(offset, Piece::Data(bytes.to_vec()));
        }
        self.size = self.size.max(end);
    }

    /// Zero `[offset, offset + len)` without changing the size beyond it.
    pub fn zero(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        self.clear(offset, end);
        self.insert_raw(offset, Piece::Zeros(end - offset));
    }

    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.clear(size, self.size);
            self.base_valid = self.base_valid.min(size);
        }
        self.size = size;
    }

    /// Bytes `[offset, offset + len)` clamped to the size; `read_base` reads the base.
    pub fn read(
        &self,
        offset: u64,
        len: usize,
        read_base: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset + len as u64);
        let mut out = vec![0u8; (end - offset) as usize];
        if offset < self.base_valid {
            let base_end = self.base_valid.min(end);
            let base = read_base(offset, (base_end - offset) as usize)?;
            let n = base.len().min(out.len());
            out[..n].copy_from_slice(&base[..n]);
        }
        let first = self
            .pieces
            .range(..offset)
            .next_back()
            .map_or(offset, |(&at, _)| at);
        for (&at, piece) in self.pieces.range(first..end) {
            let piece_end = at + piece.len();
            if piece_end <= offset {
                continue;
            }
            let from = at.max(offset);
            let to = piece_end.min(end);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            match piece {
                Piece::Data(bytes) => {
                    dst.copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize])
                }
                Piece::Zeros(_) => dst.fill(0),
            }
        }
        Ok(out)
    }

    /// Merged ranges `[start, end)` covered by dirty pieces, in order.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&at, piece) in &self.pieces {
            let end = at + piece.len();
            match out.last_mut() {
                Some(last) if last.1 >= at => last.1 = last.1.max(end),
                _ => out.push((at, end)),
            }
        }
        out
    }

    /// Length of the content to store: up to the last byte that may be non-zero.
    pub fn content_len(&self) -> u64 {
        let pieces_end = self
            .pieces
            .iter()
            .rev()
            .find_map(|(&at, piece)| matches!(piece, Piece::Data(_)).then(|| at + piece.len()))
            .unwrap_or(0);
        self.base_valid.max(pieces_end).min(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Edit {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        Size(u64),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0u64..300, proptest::collection::vec(any::<u8>(), 1..80))
                .prop_map(|(at, bytes)| Edit::Write(at, bytes)),
            (0u64..300, 0u64..100).prop_map(|(at, len)| Edit::Zero(at, len)),
            (0u64..400).prop_map(Edit::Size),
        ]
    }

    proptest! {
        /// The overlay reads exactly like a plain byte vector edited the same way.
        #[test]
        fn overlay_matches_a_vector(base in proptest::collection::vec(any::<u8>(), 0..200), edits in proptest::collection::vec(edit(), 0..30), at in 0u64..400, len in 0usize..400) {
            let mut model = base.clone();
            let mut overlay = Overlay::new(Content::Inline(base.clone()), base.len() as u64);
            for edit in edits {
                match edit {
                    Edit::Write(at, bytes) => {
                        let end = at as usize + bytes.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[at as usize..end].copy_from_slice(&bytes);
                        overlay.write(at, &bytes);
                    }
                    Edit::Zero(at, len) => {
                        let end = ((at + len) as usize).min(model.len());
                        if (at as usize) < end { model[at as usize..end].fill(0); }
                        overlay.zero(at, len);
                    }
                    Edit::Size(size) => {
                        model.resize(size as usize, 0);
                        overlay.set_size(size);
                    }
                }
            }
            prop_assert_eq!(overlay.size, model.len() as u64);
            let mut read_base = |offset: u64, len: usize| Ok(base[offset as usize..(offset as usize + len).min(base.len())].to_vec());
            let all = overlay.read(0, model.len() + 10, &mut read_base)?;
            prop_assert_eq!(&all, &model);
            let part = overlay.read(at, len, &mut read_base)?;
            let start = (at as usize).min(model.len());
            let end = (start + len).min(model.len());
            prop_assert_eq!(&part[..], &model[start..end]);
            prop_assert!(model[overlay.content_len() as usize..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn seek_in_inline_content_and_past_the_content() {
        let store = Arc::new(MemContent::new());
        let data = Content::Inline(b"data".to_vec());
        let zeros = Content::Inline(vec![0; 10]);
        // Content of 4 bytes in a file grown to 100: the rest is a hole.
        assert_eq!(
            seek_content(&store, &data, 100, 1, SeekTo::Data).unwrap(),
            Some(1)
        );
        assert_eq!(
            seek_content(&store, &data, 100, 1, SeekTo::Hole).unwrap(),
            Some(4)
        );
        assert_eq!(
            seek_content(&store, &data, 100, 4, SeekTo::Data).unwrap(),
            None
        );
        assert_eq!(
            seek_content(&store, &data, 100, 50, SeekTo::Hole).unwrap(),
            Some(50)
        );
        assert_eq!(
            seek_content(&store, &data, 4, 3, SeekTo::Hole).unwrap(),
            Some(4)
        );
        // All-zero inline content is a hole.
        assert_eq!(
            seek_content(&store, &zeros, 10, 0, SeekTo::Data).unwrap(),
            None
        );
        assert_eq!(
            seek_content(&store, &zeros, 10, 3, SeekTo::Hole).unwrap(),
            Some(3)
        );
        // A store that knows no holes: a tree is all data.
        let root = store.write_all(&[0u8; 1000]).unwrap();
        let tree = Content::Tree(root);
        assert_eq!(
            seek_content(&store, &tree, 2000, 7, SeekTo::Data).unwrap(),
            Some(7)
        );
        assert_eq!(
            seek_content(&store, &tree, 2000, 7, SeekTo::Hole).unwrap(),
            Some(1000)
        );
        assert_eq!(
            seek_content(&store, &tree, 2000, 1500, SeekTo::Data).unwrap(),
            None
        );
    }

    #[test]
    fn sequential_writes_stay_one_piece() {
        let mut overlay = Overlay::new(Content::EMPTY, 0);
        for index in 0..100u64 {
            overlay.write(index * 10, &[index as u8; 10]);
        }
        assert_eq!(overlay.pieces.len(), 1);
        assert_eq!(overlay.data_bytes(), 1000);
    }
}
