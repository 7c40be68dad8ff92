//! Hash trees: content of any length as sealed blocks under one root [`BlockRef`].
//!
//! [`TreeWriter`] takes a byte stream in pieces of any size, cuts it into chunks
//! ([`crate::chunk`]), seals the chunks ([`crate::seal`]) and puts them into a
//! [`BlockStore`]; above the leaves, pointer blocks list child refs. Content of one
//! chunk (and empty content: one empty leaf) has that leaf as its root; anything longer
//! has a pointer block as its root.
//!
//! Pointer block payload (sealed like any block, `Kind::Pointer`):
//!
//! ```text
//! format u8 = 1 ‖ level u8 ‖ count u16 LE ‖ count × BlockRef (76 B each)
//! ```
//!
//! `level` 1 lists leaves; level n lists pointer blocks of level n − 1. A ref's
//! `length` is the content length below it, so the children's lengths add up to the
//! parent's. Pointer-block boundaries are content-defined too: a block ends after a
//! child whose key has its low `log2(FANOUT_BOUNDARY_ONE_IN)` bits zero (once it holds
//! `FANOUT_MIN` children), or at `FANOUT_MAX`. An insert then rewrites the pointer
//! blocks on the path to the changed leaves, not every pointer block after it.
//!
//! Ingest is a pipeline: the calling thread chunks and builds the tree; a pool of
//! sealing threads (started on the second chunk, so small content costs no thread)
//! hashes, compresses and encrypts each chunk in place in the buffer it was copied
//! into, behind `PUT_HEADROOM_BYTES` left free for the store's record header; sealed
//! leaves come back through a reorder window and are handed to the store in stream
//! order, buffer and all, through `put_sealed_owned` (their address was computed from
//! these very bytes, so the store need not hash them again, and a file store writes
//! them on its own thread). `finish` returns only once the store confirms every put
//! (`wait_puts`). Buffers circulate (the store hands written ones back through
//! `spare_buffer`) instead of being allocated per chunk, and at most
//! `IN_FLIGHT_PER_THREAD × threads` chunks are being sealed at once.
//!
//! With [`TreeWriter::with_segments`] the calling thread neither chunks nor copies
//! chunks: whole segments go to the threads, each chunks and seals its own, and the
//! caller stitches them at the first chunk start a segment shares with the true chunk
//! sequence (`Segments`). The tree is the same either way (tested on random and
//! adversarial content).
//!
//! [`TreeEditor`] makes the tree of edited content from the old tree, re-chunking only
//! around the changed ranges and resealing only the pointer blocks on changed paths;
//! its root is the one a writer pass over the new content gives (see `edit`).
//!
//! [`TreeReader`] reads any byte range by opening only the blocks that cover it (asking
//! the store to [`prefetch`](BlockStore::prefetch) a pointer block's covering children
//! together, so a remote-backed store fetches them in one batch), and
//! walks a tree's addresses for GC without opening leaves. Pointer blocks are hostile
//! input like everything else: fan-out, depth, levels, epochs and lengths are checked.
//! [`TreeReader::next_data`] and [`TreeReader::next_hole`] find the leaves that are all
//! zeros (`SEEK_DATA`/`SEEK_HOLE`) from pointer blocks alone: a zero leaf's key is
//! known per epoch and length ([`Holes`], see `holes`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::chunk::{CHUNK_BYTES_MAX, Chunker, StreamChunker};
use crate::error::BlockFault;
use crate::keys::EpochKeys;
use crate::seal::{self, AddressCheck, CONTENT_BYTES_MAX, IN_PLACE_OFFSET_BYTES, Opened, Sealer};
use crate::{
    Address, BlockRef, BlockStore, Class, Error, Kind, PUT_HEADROOM_BYTES, PutTicket, Result,
};

mod edit;
mod holes;
pub use edit::{EditOutcome, EditStats, TreeEditor};
pub use holes::{
    Holes, POINTER_CACHE_BYTES_MAX, SEEK_POINTERS_MAX, TAIL_KEYS_MAX, ZERO_BYTES_POINTERS_MAX,
};

/// A pointer block ends at a child whose key's low bits are zero with this odds.
pub const FANOUT_BOUNDARY_ONE_IN: u32 = 128;
/// No content-defined boundary before this many children.
pub const FANOUT_MIN: usize = 32;
/// A pointer block never lists more children than this.
pub const FANOUT_MAX: usize = 1024;
/// Highest pointer level. With at least `FANOUT_MIN` children per pointer block and
/// 16 KiB leaves, level 8 covers more than 10^16 bytes.
pub const DEPTH_MAX: u8 = 8;
/// Chunks each sealing thread may have queued or in progress (or sealed and waiting in
/// the reorder window). Generous, so that a sealing thread preempted for a few
/// milliseconds (the caller's and the store's writer thread share the cores) does not
/// stall the others behind the oldest chunk: about 4 MiB of chunks per thread.
pub const IN_FLIGHT_PER_THREAD: usize = 64;
/// `read_range` reserves at most this much up front; more grows as blocks arrive.
pub const READ_PREALLOC_BYTES_MAX: usize = 16 * 1024 * 1024;

const POINTER_FORMAT: u8 = 1;
const POINTER_HEADER_BYTES: usize = 4;

/// How pointer blocks group their children: Kith's is [`FANOUT`]; tests use small
/// ones to build deep trees from little content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fanout {
    min: usize,
    max: usize,
    boundary_one_in: u32,
}

const FANOUT: Fanout = Fanout {
    min: FANOUT_MIN,
    max: FANOUT_MAX,
    boundary_one_in: FANOUT_BOUNDARY_ONE_IN,
};

impl Fanout {
    /// Whether a pointer block holding `count` children, the last being `last`, ends
    /// there. The decision depends only on the block's own children, so a pointer
    /// block that is not the last of its level is a function of its children alone.
    fn closes(&self, count: usize, last: &BlockRef) -> bool {
        count >= self.max || (count >= self.min && self.is_boundary(last))
    }

    /// A content-defined pointer-block boundary: the key is a PRF of the child's
    /// content, so boundaries follow content and are unknown to anyone without the
    /// keys.
    fn is_boundary(&self, block_ref: &BlockRef) -> bool {
        let mut low = [0u8; 4];
        low.copy_from_slice(&block_ref.key[..4]);
        u32::from_le_bytes(low) % self.boundary_one_in == 0
    }
}

const _: () = assert!(FANOUT_BOUNDARY_ONE_IN.is_power_of_two());
const _: () = assert!(2 <= FANOUT_MIN && FANOUT_MIN < FANOUT_MAX);
const _: () = assert!(FANOUT_MAX <= u16::MAX as usize);
const _: () =
    assert!(POINTER_HEADER_BYTES + FANOUT_MAX * BlockRef::ENCODED_LEN <= CONTENT_BYTES_MAX);

/// Writes one byte stream as a hash tree into a block store.
///
/// After an error the writer must be dropped: blocks it already put stay in the store,
/// unreferenced, until GC.
///
/// ```
/// # use std::sync::Arc;
/// # use venti::{backend::MemoryBackend, keys::EpochKeys, tree::{TreeReader, TreeWriter}};
/// # fn main() -> venti::Result<()> {
/// # let store = venti::Store::open(Arc::new(MemoryBackend::new(1)?), Default::default())?;
/// let keys = EpochKeys::derive(&[7; 32], &[1; 16], 0);
/// let mut writer = TreeWriter::new(&store, &keys, venti::Class::Pinned);
/// writer.write(b"hello, ")?;
/// writer.write(b"world")?;
/// let root = writer.finish()?;
/// assert_eq!(root.length, 12);
/// assert_eq!(TreeReader::new(&store, &keys).read_range(&root, 7, 5)?, b"world");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TreeWriter<'s> {
    chunker: StreamChunker,
    builder: Builder<'s>,
    /// Segment-parallel mode ([`TreeWriter::with_segments`]).
    segments: Option<Segments>,
}

impl<'s> TreeWriter<'s> {
    /// A writer of `Kind::Data` leaves, sealing on as many threads as the machine has
    /// cores.
    pub fn new(store: &'s dyn BlockStore, keys: &EpochKeys, class: Class) -> TreeWriter<'s> {
        let threads = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        TreeWriter {
            chunker: StreamChunker::new(Chunker::new(keys)),
            builder: Builder::new(store, Arc::new(keys.clone()), class, threads),
            segments: None,
        }
    }

    /// Seal on `threads` worker threads; 0 seals on the calling thread. The tree is
    /// the same whatever the thread count.
    pub fn with_threads(mut self, threads: usize) -> TreeWriter<'s> {
        self.builder.threads = threads;
        self
    }

    /// Leaves of another kind (fossil writes checkpoints as `Kind::Meta` trees).
    pub fn with_leaf_kind(mut self, kind: Kind) -> TreeWriter<'s> {
        self.builder.leaf_kind = kind;
        self
    }

    /// Test shapes: other chunk sizes and fan-out, for deep trees from little content.
    #[cfg(test)]
    fn with_shape(mut self, chunker: Chunker, fanout: Fanout) -> TreeWriter<'s> {
        self.chunker = StreamChunker::new(chunker);
        self.builder.fanout = fanout;
        self
    }

    /// Segment-parallel chunk-and-seal: the content is handed to the sealing threads
    /// in segments of `segment_bytes`, each thread chunks *and* seals its own segment
    /// (so the calling thread neither chunks nor copies chunks), and the calling
    /// thread stitches the segments together at the first chunk start a segment shares
    /// with the true chunk sequence (see [`Chunker::chunk_lengths_parallel`]); the few
    /// chunks before it are cut and sealed on the calling thread. The tree is the same
    /// as without segments. Ignored with fewer than two threads, or once bytes were
    /// written.
    pub fn with_segments(mut self, segment_bytes: usize) -> TreeWriter<'s> {
        if self.builder.threads >= 2 && self.length() == 0 {
            let segment_bytes = segment_bytes.max(CHUNK_BYTES_MAX);
            self.segments = Some(Segments::new(segment_bytes));
        }
        self
    }

    /// Append bytes to the content.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        let TreeWriter {
            chunker,
            builder,
            segments,
        } = self;
        if let Some(segments) = segments {
            while !bytes.is_empty() {
                let take = (segments.segment_bytes - segments.filling.len()).min(bytes.len());
                let (now, rest) = bytes.split_at(take);
                segments.filling.extend_from_slice(now);
                bytes = rest;
                if segments.filling.len() == segments.segment_bytes {
                    segments.dispatch(builder, chunker.chunker(), false)?;
                }
            }
            return Ok(());
        }
        chunker.push(bytes, |chunk| builder.add_chunk(chunk))
    }

    /// Content bytes written so far.
    pub fn length(&self) -> u64 {
        let segmented = self.segments.as_ref().map_or(0, Segments::unchunked_bytes);
        self.builder.length + self.chunker.held_bytes() as u64 + segmented
    }

    /// Seal what remains, wait for every block to be in the store, and return the
    /// root ref (of the single leaf for content of one chunk).
    pub fn finish(mut self) -> Result<BlockRef> {
        let TreeWriter {
            chunker,
            builder,
            segments,
        } = &mut self;
        if let Some(mut segments) = segments.take() {
            if segments.next_index == 0 {
                // Content under one segment: the plain path, no speculation.
                let content = std::mem::take(&mut segments.filling);
                chunker.push(&content, |chunk| builder.add_chunk(chunk))?;
            } else {
                segments.dispatch(builder, chunker.chunker(), true)?;
                segments.drain(builder, chunker.chunker())?;
            }
        }
        chunker.finish(|chunk| builder.add_chunk(chunk))?;
        builder.finish()
    }
}

impl std::io::Write for TreeWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        TreeWriter::write(self, bytes).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Blocks reach the store by `finish`; a tree has no meaning before its root.
        Ok(())
    }
}

/// Buffers a writer keeps for reuse when the store leaves them with it.
const FREE_BUFFERS_MAX: usize = 64;
/// Where chunk content starts in a buffer: after the store's headroom and the room
/// sealing in place needs.
const CONTENT_OFFSET_BYTES: usize = PUT_HEADROOM_BYTES + IN_PLACE_OFFSET_BYTES;

/// Everything of the writer except the chunker (split so the chunker can call it).
struct Builder<'s> {
    store: &'s dyn BlockStore,
    keys: Arc<EpochKeys>,
    class: Class,
    leaf_kind: Kind,
    threads: usize,
    /// Seals on the calling thread: single-chunk content, pointer blocks, threads = 0.
    sealer: Sealer,
    pool: Option<SealPool>,
    /// The first chunk, held until a second shows whether a pool is worth starting.
    first_chunk: Option<Vec<u8>>,
    /// Sequence number of the next chunk handed to the pool.
    next_seq: u64,
    /// Sequence number of the next leaf to put into the store.
    next_commit: u64,
    /// Sealed leaves that came back before their predecessors; index 0 is
    /// `next_commit`.
    reorder: VecDeque<Option<Sealed>>,
    /// Buffers the store left with us after a put, for reuse.
    free_buffers: Vec<Vec<u8>>,
    /// Tickets of this writer's puts, lowest and highest: `finish` waits for them.
    tickets: Option<(PutTicket, PutTicket)>,
    /// `levels[n]`: refs of level-n blocks not yet in a pointer block.
    levels: Vec<Vec<BlockRef>>,
    length: u64,
    chunks: u64,
    fanout: Fanout,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("threads", &self.threads)
            .field("leaf_kind", &self.leaf_kind)
            .field("length", &self.length)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl<'s> Builder<'s> {
    fn new(
        store: &'s dyn BlockStore,
        keys: Arc<EpochKeys>,
        class: Class,
        threads: usize,
    ) -> Builder<'s> {
        Builder {
            store,
            keys,
            class,
            leaf_kind: Kind::Data,
            threads,
            sealer: Sealer::new(),
            pool: None,
            first_chunk: None,
            next_seq: 0,
            next_commit: 0,
            reorder: VecDeque::new(),
            free_buffers: Vec::new(),
            tickets: None,
            levels: Vec::new(),
            length: 0,
            chunks: 0,
            fanout: FANOUT,
        }
    }

    fn add_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.length += chunk.len() as u64;
        self.chunks += 1;
        // The chunk goes straight into the buffer it will be sealed in.
        let data = self.buffer_with(chunk);
        if self.threads == 0 {
            let block_ref = self.seal_and_put(self.leaf_kind, data)?;
            return self.push_ref(0, block_ref);
        }
        if self.pool.is_none() {
            match self.first_chunk.take() {
                None => {
                    self.first_chunk = Some(data);
                    return Ok(());
                }
                Some(first) => {
                    self.pool = Some(SealPool::start(
                        self.threads,
                        Arc::clone(&self.keys),
                        self.leaf_kind,
                    )?);
                    self.submit(first)?;
                }
            }
        }
        self.submit(data)
    }

    /// Seal one chunk on this thread and put it as the next leaf (segment mode: the
    /// chunks where a segment joins the true chunk sequence).
    fn add_inline(&mut self, chunk: &[u8]) -> Result<()> {
        self.length += chunk.len() as u64;
        self.chunks += 1;
        let data = self.buffer_with(chunk);
        let block_ref = self.seal_and_put(self.leaf_kind, data)?;
        self.push_ref(0, block_ref)
    }

    /// Put a leaf a segment worker sealed, as the next leaf.
    fn add_sealed(&mut self, candidate: Candidate) -> Result<()> {
        self.length += candidate.length as u64;
        self.chunks += 1;
        self.put(&candidate.block_ref.address, candidate.sealed)?;
        self.push_ref(0, candidate.block_ref)
    }

    /// Keep a buffer for reuse.
    fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() > 0 && self.free_buffers.len() < FREE_BUFFERS_MAX {
            self.free_buffers.push(buffer);
        }
    }

    /// A buffer holding `content` at `CONTENT_OFFSET_BYTES`, reusing one the store is
    /// done with when it has one.
    fn buffer_with(&mut self, content: &[u8]) -> Vec<u8> {
        let mut buffer = self
            .free_buffers
            .pop()
            .or_else(|| self.store.spare_buffer())
            .unwrap_or_default();
        buffer.clear();
        buffer.reserve(CONTENT_OFFSET_BYTES + content.len() + content.len() / 8 + 64);
        buffer.resize(CONTENT_OFFSET_BYTES, 0);
        buffer.extend_from_slice(content);
        buffer
    }

    /// Seal the content of `buffer` (see `buffer_with`) on this thread and hand it to
    /// the store.
    fn seal_and_put(&mut self, kind: Kind, mut buffer: Vec<u8>) -> Result<BlockRef> {
        let block_ref =
            self.sealer
                .seal_in_place_at(&self.keys, kind, &mut buffer, PUT_HEADROOM_BYTES)?;
        self.put(&block_ref.address, buffer)?;
        Ok(block_ref)
    }

    fn put(&mut self, address: &Address, mut buffer: Vec<u8>) -> Result<()> {
        let ticket = self
            .store
            .put_sealed_owned(address, &mut buffer, self.class)?;
        if buffer.capacity() > 0 && self.free_buffers.len() < FREE_BUFFERS_MAX {
            self.free_buffers.push(buffer);
        }
        if ticket != PutTicket::DONE {
            self.tickets = Some(match self.tickets {
                None => (ticket, ticket),
                Some((first, last)) => (first.min(ticket), last.max(ticket)),
            });
        }
        Ok(())
    }

    fn submit(&mut self, data: Vec<u8>) -> Result<()> {
        let in_flight_max = (self.threads * IN_FLIGHT_PER_THREAD) as u64;
        while self.next_seq - self.next_commit >= in_flight_max {
            self.receive(true)?;
        }
        let pool = self.pool.as_ref().ok_or_else(pool_stopped)?;
        pool.jobs
            .as_ref()
            .ok_or_else(pool_stopped)?
            .send(Job {
                seq: self.next_seq,
                buffer: data,
            })
            .map_err(|_| pool_stopped())?;
        self.next_seq += 1;
        // Commit whatever is already done without waiting.
        while self.receive(false)? {}
        Ok(())
    }

    /// Take one sealed leaf from the pool (waiting for it if `wait`) and commit all
    /// leaves that are now in order. False when nothing was ready.
    fn receive(&mut self, wait: bool) -> Result<bool> {
        let pool = self.pool.as_ref().ok_or_else(pool_stopped)?;
        let done = if wait {
            pool.results.recv().map_err(|_| pool_stopped())?
        } else {
            match pool.results.try_recv() {
                Ok(done) => done,
                Err(crossbeam_channel::TryRecvError::Empty) => return Ok(false),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(pool_stopped()),
            }
        };
        let done = done?;
        // Each sequence number comes back exactly once, at or after `next_commit`.
        let slot = done
            .seq
            .checked_sub(self.next_commit)
            .and_then(|slot| usize::try_from(slot).ok())
            .ok_or_else(pool_stopped)?;
        if self.reorder.len() <= slot {
            self.reorder.resize_with(slot + 1, || None);
        }
        self.reorder[slot] = Some(done);
        while let Some(Some(_)) = self.reorder.front() {
            if let Some(Some(done)) = self.reorder.pop_front() {
                self.put(&done.block_ref.address, done.sealed)?;
                self.next_commit += 1;
                self.push_ref(0, done.block_ref)?;
            }
        }
        Ok(true)
    }

    /// Add the ref of a level-`level` block; close the pointer block above it at a
    /// boundary.
    fn push_ref(&mut self, level: usize, block_ref: BlockRef) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        let pending = &mut self.levels[level];
        pending.push(block_ref);
        let count = pending.len();
        if self.fanout.closes(count, &block_ref) {
            self.close_level(level)?;
        }
        Ok(())
    }

    /// Seal the pending refs of `level` into a pointer block of `level + 1`.
    fn close_level(&mut self, level: usize) -> Result<()> {
        let pointer_level = u8::try_from(level + 1)
            .ok()
            .filter(|pointer_level| *pointer_level <= DEPTH_MAX)
            .ok_or(Error::Malformed {
                what: "tree",
                detail: format!("deeper than {DEPTH_MAX} pointer levels"),
            })?;
        let children = std::mem::take(&mut self.levels[level]);
        let mut buffer = self.buffer_with(&[]);
        encode_pointer(pointer_level, &children, &mut buffer);
        let mut block_ref = self.seal_and_put(Kind::Pointer, buffer)?;
        block_ref.length = children.iter().map(|child| child.length).sum();
        // Reuse the allocation for the next pointer block of this level.
        let mut children = children;
        children.clear();
        self.levels[level] = children;
        self.push_ref(level + 1, block_ref)
    }

    fn finish(&mut self) -> Result<BlockRef> {
        let root = self.finish_tree()?;
        self.wait_puts()?;
        Ok(root)
    }

    /// Wait until the store holds every block this builder put.
    fn wait_puts(&mut self) -> Result<()> {
        if let Some((first, last)) = self.tickets.take() {
            self.store.wait_puts(first, last)?;
        }
        Ok(())
    }

    fn finish_tree(&mut self) -> Result<BlockRef> {
        if let Some(first) = self.first_chunk.take() {
            let block_ref = self.seal_and_put(self.leaf_kind, first)?;
            self.push_ref(0, block_ref)?;
        }
        while self.next_commit < self.next_seq {
            self.receive(true)?;
        }
        self.pool = None;
        if self.chunks == 0 {
            let empty = self.buffer_with(&[]);
            return self.seal_and_put(self.leaf_kind, empty);
        }
        let mut level = 0;
        loop {
            let is_top = level + 1 >= self.levels.len();
            match self.levels.get(level).map(Vec::as_slice) {
                Some([root]) if is_top => return Ok(*root),
                Some([]) | None => {}
                Some(_) => self.close_level(level)?,
            }
            level += 1;
            if level > DEPTH_MAX as usize {
                return Err(Error::Malformed {
                    what: "tree",
                    detail: format!("deeper than {DEPTH_MAX} pointer levels"),
                });
            }
        }
    }
}

fn pool_stopped() -> Error {
    Error::Io(std::io::Error::other("sealing thread stopped"))
}

/// Append the pointer block payload listing `children` to `payload`.
fn encode_pointer(level: u8, children: &[BlockRef], payload: &mut Vec<u8>) {
    payload.reserve(POINTER_HEADER_BYTES + children.len() * BlockRef::ENCODED_LEN);
    payload.push(POINTER_FORMAT);
    payload.push(level);
    // close_level never holds more than FANOUT_MAX <= u16::MAX children.
    payload.extend_from_slice(&(children.len() as u16).to_le_bytes());
    for child in children {
        payload.extend_from_slice(&child.encode());
    }
}

/// A parsed pointer block.
#[derive(Debug)]
struct Pointer {
    level: u8,
    children: Vec<BlockRef>,
}

/// Parse and check a pointer block's payload (hostile input).
fn decode_pointer(address: Address, epoch: u32, payload: &[u8]) -> Result<Pointer> {
    let fault = |fault: BlockFault| Error::Block { address, fault };
    let malformed = |detail: String| fault(BlockFault::Pointer { detail });
    let (header, body) = payload
        .split_at_checked(POINTER_HEADER_BYTES)
        .ok_or_else(|| malformed(format!("{} bytes", payload.len())))?;
    let [format, level, count_low, count_high] = [header[0], header[1], header[2], header[3]];
    if format != POINTER_FORMAT {
        return Err(malformed(format!("format {format}")));
    }
    if !(1..=DEPTH_MAX).contains(&level) {
        return Err(malformed(format!("level {level} outside 1..={DEPTH_MAX}")));
    }
    let count = usize::from(u16::from_le_bytes([count_low, count_high]));
    if !(1..=FANOUT_MAX).contains(&count) {
        return Err(malformed(format!("{count} children, limit {FANOUT_MAX}")));
    }
    if body.len() != count * BlockRef::ENCODED_LEN {
        return Err(malformed(format!(
            "{} bytes for {count} children",
            body.len()
        )));
    }
    let children = body
        .chunks_exact(BlockRef::ENCODED_LEN)
        .map(BlockRef::decode)
        .collect::<Result<Vec<_>>>()?;
    for child in &children {
        if child.epoch != epoch {
            return Err(fault(BlockFault::Epoch {
                expected: epoch,
                found: child.epoch,
            }));
        }
        if child.length == 0 {
            return Err(malformed("empty child".to_string()));
        }
    }
    Ok(Pointer { level, children })
}

/// Reads trees of one epoch from a block store.
pub struct TreeReader<'s> {
    store: &'s dyn BlockStore,
    keys: &'s EpochKeys,
    leaf_kind: Kind,
}

impl std::fmt::Debug for TreeReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeReader")
            .field("keys", &self.keys)
            .field("leaf_kind", &self.leaf_kind)
            .finish_non_exhaustive()
    }
}

impl<'s> TreeReader<'s> {
    /// A reader of trees with `Kind::Data` leaves.
    pub fn new(store: &'s dyn BlockStore, keys: &'s EpochKeys) -> TreeReader<'s> {
        TreeReader {
            store,
            keys,
            leaf_kind: Kind::Data,
        }
    }

    /// Read trees whose leaves are of `kind`.
    pub fn with_leaf_kind(mut self, kind: Kind) -> TreeReader<'s> {
        self.leaf_kind = kind;
        self
    }

    /// Bytes `offset .. offset + length` of the content under `root`, cut short at its
    /// end (like `pread`). Opens only the blocks covering the range.
    pub fn read_range(&self, root: &BlockRef, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_range_into(root, offset, length, &mut out)?;
        Ok(out)
    }

    /// [`TreeReader::read_range`] appended to `out`, so that a caller assembling a
    /// larger buffer (a read-ahead window read in parts) copies each leaf once, from
    /// where it was opened into `out`. On an error `out` may hold part of the range.
    pub fn read_range_into(
        &self,
        root: &BlockRef,
        offset: u64,
        length: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let end = offset.saturating_add(length).min(root.length);
        if offset >= end {
            return Ok(());
        }
        let wanted = usize::try_from(end - offset).unwrap_or(usize::MAX);
        out.reserve(wanted.min(READ_PREALLOC_BYTES_MAX));
        let mut sealed = Vec::new();
        self.read_node(root, None, offset, end, out, &mut sealed)
    }

    /// All content under `root`.
    pub fn read_all(&self, root: &BlockRef) -> Result<Vec<u8>> {
        self.read_range(root, 0, root.length)
    }

    /// Append bytes `start..end` (relative to the node, `start < end <= length`) of
    /// the node `node_ref` to `out`. `level` is the level the parent says the node has;
    /// `None` for the root, which may be a leaf or a pointer block. Each block is read
    /// into `sealed` (reused from block to block) and opened there; a leaf's content is
    /// copied once, from there into `out`.
    fn read_node(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        start: u64,
        end: u64,
        out: &mut Vec<u8>,
        sealed: &mut Vec<u8>,
    ) -> Result<()> {
        let fetched = self.store.get_for_open(&node_ref.address, sealed)?;
        let buffer_bytes = sealed.len();
        let block = sealed
            .get_mut(fetched.range.clone())
            .ok_or_else(|| Error::Malformed {
                what: "fetched block",
                detail: format!(
                    "{:?} outside a buffer of {buffer_bytes} bytes",
                    fetched.range
                ),
            })?;
        let (kind, opened) = self.open_node_in_place(node_ref, level, block, fetched.check)?;
        let content = opened.bytes(block);
        if kind == self.leaf_kind && kind != Kind::Pointer {
            // open checked content.len() == node_ref.length >= end.
            let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
            let bytes = range
                .and_then(|(start, end)| content.get(start..end))
                .ok_or(Error::Block {
                    address: node_ref.address,
                    fault: BlockFault::Length {
                        declared: node_ref.length,
                        found: content.len() as u64,
                    },
                })?;
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let pointer = self.check_pointer(node_ref, level, content)?;
        let covering = covering_children(&pointer.children, start, end);
        if covering.len() > 1 {
            // One round trip for all the children a remote-backed store is missing,
            // rather than one per child.
            let addresses: Vec<Address> = covering.iter().map(|child| child.address).collect();
            self.store.prefetch(&addresses)?;
        }
        let mut child_start = 0u64;
        for child in &pointer.children {
            let child_end = child_start + child.length;
            if child_end > start && child_start < end {
                self.read_node(
                    child,
                    Some(pointer.level - 1),
                    start.max(child_start) - child_start,
                    end.min(child_end) - child_start,
                    out,
                    sealed,
                )?;
            }
            if child_end >= end {
                break;
            }
            child_start = child_end;
        }
        Ok(())
    }

    /// Visit the ref of every block of the tree under `root`, parents before children,
    /// without opening leaves. `visit` returns whether to descend into that block: a
    /// GC marker returns false for blocks it has seen, so shared subtrees are walked
    /// once (and a hostile tree that lists one subtree many times costs nothing extra).
    pub fn walk(
        &self,
        root: &BlockRef,
        mut visit: impl FnMut(&BlockRef) -> Result<bool>,
    ) -> Result<()> {
        if !visit(root)? {
            return Ok(());
        }
        // Content longer than one block is always under a pointer block; shorter
        // content may be a single leaf, told apart by its kind byte without opening it.
        if root.length <= CONTENT_BYTES_MAX as u64 {
            let sealed = self.store.get(&root.address)?;
            if seal::peek_kind(root, &sealed)? != Kind::Pointer {
                return Ok(());
            }
            return self.walk_pointer(root, None, Some(sealed), &mut visit);
        }
        self.walk_pointer(root, None, None, &mut visit)
    }

    fn walk_pointer(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        sealed: Option<Vec<u8>>,
        visit: &mut impl FnMut(&BlockRef) -> Result<bool>,
    ) -> Result<()> {
        let sealed = match sealed {
            Some(sealed) => sealed,
            None => self.store.get(&node_ref.address)?,
        };
        let content = seal::open(self.keys, node_ref, &sealed, Kind::Pointer)?;
        let pointer = self.check_pointer(node_ref, level, &content)?;
        for child in &pointer.children {
            if visit(child)? && pointer.level > 1 {
                self.walk_pointer(child, Some(pointer.level - 1), None, visit)?;
            }
        }
        Ok(())
    }

    /// Open a node the parent says is at `level` (0 = leaf, `None` = root: either).
    fn open_node(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        sealed: &[u8],
    ) -> Result<(Kind, Vec<u8>)> {
        let mut buffer = sealed.to_vec();
        let (kind, opened) =
            self.open_node_in_place(node_ref, level, &mut buffer, AddressCheck::Verify)?;
        Ok((kind, opened.into_vec(buffer)))
    }

    /// [`TreeReader::open_node`] of a block in `sealed`, decrypted where it lies;
    /// `check` says whether its address still needs checking.
    fn open_node_in_place(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        sealed: &mut [u8],
        check: AddressCheck,
    ) -> Result<(Kind, Opened)> {
        let leaf_kind = self.leaf_kind;
        match level {
            None => seal::open_in_place(
                self.keys,
                node_ref,
                sealed,
                check,
                "leaf or Pointer",
                |kind| kind == leaf_kind || kind == Kind::Pointer,
            ),
            Some(0) => seal::open_in_place(
                self.keys,
                node_ref,
                sealed,
                check,
                seal::kind_name(leaf_kind),
                |kind| kind == leaf_kind,
            ),
            Some(_) => seal::open_in_place(
                self.keys,
                node_ref,
                sealed,
                check,
                seal::kind_name(Kind::Pointer),
                |kind| kind == Kind::Pointer,
            ),
        }
    }

    /// Decode a pointer block and check it against what its parent said.
    fn check_pointer(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        content: &[u8],
    ) -> Result<Pointer> {
        let pointer = decode_pointer(node_ref.address, self.keys.epoch(), content)?;
        self.check_children(node_ref, level, &pointer)?;
        Ok(pointer)
    }

    /// Check a decoded pointer block against what its parent said: its level, and
    /// its children's lengths adding up to the length of `node_ref`.
    fn check_children(
        &self,
        node_ref: &BlockRef,
        level: Option<u8>,
        pointer: &Pointer,
    ) -> Result<()> {
        let fault = |fault: BlockFault| Error::Block {
            address: node_ref.address,
            fault,
        };
        if let Some(expected) = level
            && pointer.level != expected
        {
            return Err(fault(BlockFault::Level {
                expected,
                found: pointer.level,
            }));
        }
        let sum = pointer
            .children
            .iter()
            .try_fold(0u64, |sum, child| sum.checked_add(child.length));
        if sum != Some(node_ref.length) {
            return Err(fault(BlockFault::ChildLengths {
                declared: node_ref.length,
                sum: sum.unwrap_or(u64::MAX),
            }));
        }
        Ok(())
    }
}

/// The children of a pointer block that hold bytes `start..end` of it.
fn covering_children(children: &[BlockRef], start: u64, end: u64) -> &[BlockRef] {
    let mut first = children.len();
    let mut last = children.len();
    let mut child_start = 0u64;
    for (index, child) in children.iter().enumerate() {
        let child_end = child_start.saturating_add(child.length);
        if child_end > start && child_start < end {
            first = first.min(index);
            last = index + 1;
        }
        if child_end >= end {
            break;
        }
        child_start = child_end;
    }
    children.get(first..last).unwrap_or_default()
}

/// Segments in flight per sealing thread in segment mode.
const SEGMENTS_IN_FLIGHT_PER_THREAD: u64 = 2;

/// Segment mode of a [`TreeWriter`]: content goes to the sealing threads in segments;
/// each thread chunks its segment as if a chunk started at the segment's start and
/// seals every chunk of that chain that the segment holds whole (a chunk needs
/// `CHUNK_BYTES_MAX` bytes in view, or the end of the content, for its cut to be
/// final). The calling thread merges segments in order: from the true position (the
/// end of the last leaf put) it cuts and seals chunks itself until it reaches a start
/// on the segment's chain, then takes the segment's sealed chunks from there on. A cut
/// depends only on the bytes from its chunk's start, so those are the true chunks.
/// Speculative chunks before the meeting point are dropped (about a chunk per segment;
/// content without cut points, such as zeros, never meets a chain and is cut on the
/// calling thread).
struct Segments {
    segment_bytes: usize,
    /// The segment being filled by `write`.
    filling: Vec<u8>,
    /// Content offset of `filling[0]`.
    filling_start: u64,
    /// Index of the next segment to dispatch, and of the next to merge.
    next_index: u64,
    next_merge: u64,
    pool: Option<SegmentPool>,
    /// Segments sealed out of order, waiting for their predecessors.
    reorder: std::collections::BTreeMap<u64, SegmentDone>,
    /// Content offset up to which leaves are put (the true chunk sequence's position).
    position: u64,
    /// Content from `position` to the start of the next segment to merge.
    held: Vec<u8>,
    spare_segments: Vec<Vec<u8>>,
}

impl Segments {
    fn new(segment_bytes: usize) -> Segments {
        Segments {
            segment_bytes,
            filling: Vec::with_capacity(segment_bytes),
            filling_start: 0,
            next_index: 0,
            next_merge: 0,
            pool: None,
            reorder: std::collections::BTreeMap::new(),
            position: 0,
            held: Vec::new(),
            spare_segments: Vec::new(),
        }
    }

    /// Content written but not yet put as leaves.
    fn unchunked_bytes(&self) -> u64 {
        (self.filling_start + self.filling.len() as u64).saturating_sub(self.position)
    }

    /// Hand the filled segment (`last`: the content's final one) to the pool, first
    /// merging finished segments while too many are in flight.
    fn dispatch(&mut self, builder: &mut Builder<'_>, chunker: &Chunker, last: bool) -> Result<()> {
        if self.pool.is_none() {
            self.pool = Some(SegmentPool::start(
                builder.threads,
                Arc::clone(&builder.keys),
                builder.leaf_kind,
                chunker.clone(),
            )?);
        }
        let in_flight_max = builder.threads as u64 * SEGMENTS_IN_FLIGHT_PER_THREAD;
        while self.next_index - self.next_merge >= in_flight_max {
            self.receive(builder, chunker)?;
        }
        let next = self.spare_segments.pop().unwrap_or_default();
        let bytes = std::mem::replace(&mut self.filling, next);
        self.filling.clear();
        self.filling.reserve(self.segment_bytes);
        let start = self.filling_start;
        self.filling_start += bytes.len() as u64;
        // Buffers for the segment's sealed chunks, so workers rarely allocate.
        let mut buffers = Vec::new();
        while buffers.len() < self.segment_bytes / CHUNK_BYTES_MIN_HINT {
            match builder
                .free_buffers
                .pop()
                .or_else(|| builder.store.spare_buffer())
            {
                Some(buffer) => buffers.push(buffer),
                None => break,
            }
        }
        let pool = self.pool.as_ref().ok_or_else(pool_stopped)?;
        pool.jobs
            .as_ref()
            .ok_or_else(pool_stopped)?
            .send(SegmentJob {
                index: self.next_index,
                start,
                bytes,
                last,
                buffers,
            })
            .map_err(|_| pool_stopped())?;
        self.next_index += 1;
        Ok(())
    }

    /// Merge every segment still in flight.
    fn drain(&mut self, builder: &mut Builder<'_>, chunker: &Chunker) -> Result<()> {
        while self.next_merge < self.next_index {
            self.receive(builder, chunker)?;
        }
        self.pool = None;
        if !self.held.is_empty() {
            // The last segment was merged with `last` set: nothing can be left.
            return Err(Error::Malformed {
                what: "segment merge",
                detail: format!("{} bytes left unchunked", self.held.len()),
            });
        }
        Ok(())
    }

    /// Take one finished segment from the pool and merge every segment now in order.
    fn receive(&mut self, builder: &mut Builder<'_>, chunker: &Chunker) -> Result<()> {
        let pool = self.pool.as_ref().ok_or_else(pool_stopped)?;
        let done = pool.results.recv().map_err(|_| pool_stopped())??;
        self.reorder.insert(done.index, done);
        while let Some(done) = self.reorder.remove(&self.next_merge) {
            self.merge(done, builder, chunker)?;
            self.next_merge += 1;
        }
        Ok(())
    }

    /// Continue the true chunk sequence through segment `done` (see the type comment).
    /// On entry `held` is the content from `position` to the segment's start.
    fn merge(
        &mut self,
        done: SegmentDone,
        builder: &mut Builder<'_>,
        chunker: &Chunker,
    ) -> Result<()> {
        let SegmentDone {
            start,
            bytes,
            mut chunks,
            chain_end,
            last,
            ..
        } = done;
        let bytes_max = chunker.bytes_max();
        // `held[from..]` is the content from `position` to `start + appended`.
        let mut from = 0;
        let mut appended = 0;
        loop {
            if self.position >= start {
                let at = chunks.binary_search_by_key(&self.position, |chunk| chunk.start);
                if at.is_ok() || self.position == chain_end {
                    let at = at.unwrap_or(chunks.len());
                    let adopted = chunks.split_off(at);
                    for dropped in chunks.drain(..) {
                        builder.recycle(dropped.sealed);
                    }
                    for candidate in adopted {
                        builder.add_sealed(candidate)?;
                    }
                    self.position = chain_end;
                    self.held.clear();
                    let rest = usize::try_from(chain_end - start)
                        .ok()
                        .and_then(|offset| bytes.get(offset..))
                        .unwrap_or_default();
                    self.held.extend_from_slice(rest);
                    self.spare_segments.push(bytes);
                    return Ok(());
                }
            }
            // Cut at `position` with as much content in view as a cut can use.
            while self.held.len() - from < bytes_max && appended < bytes.len() {
                let take = (bytes_max - (self.held.len() - from)).min(bytes.len() - appended);
                self.held
                    .extend_from_slice(bytes.get(appended..appended + take).unwrap_or_default());
                appended += take;
            }
            let window = self.held.get(from..).unwrap_or_default();
            let final_cut = window.len() >= bytes_max || (last && appended == bytes.len());
            if window.is_empty() || !final_cut {
                break;
            }
            let length = chunker.cut(window).max(1);
            builder.add_inline(window.get(..length).unwrap_or_default())?;
            from += length;
            self.position += length as u64;
        }
        // The rest of the segment waits for the next one.
        self.held.drain(..from.min(self.held.len()));
        self.held
            .extend_from_slice(bytes.get(appended..).unwrap_or_default());
        for dropped in chunks {
            builder.recycle(dropped.sealed);
        }
        self.spare_segments.push(bytes);
        Ok(())
    }
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("segment_bytes", &self.segment_bytes)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Buffers handed out with a segment: one per expected chunk at the minimum size would
/// be too many to keep; this many bytes of segment per buffer.
const CHUNK_BYTES_MIN_HINT: usize = 64 * 1024;

struct SegmentJob {
    index: u64,
    start: u64,
    bytes: Vec<u8>,
    last: bool,
    buffers: Vec<Vec<u8>>,
}

/// A chunk a segment worker cut and sealed.
struct Candidate {
    /// Content offset of the chunk.
    start: u64,
    length: usize,
    block_ref: BlockRef,
    /// Headroom, then the sealed block.
    sealed: Vec<u8>,
}

struct SegmentDone {
    index: u64,
    start: u64,
    bytes: Vec<u8>,
    /// The segment's chain: consecutive chunks from `start`.
    chunks: Vec<Candidate>,
    /// Where the chain's next chunk would start.
    chain_end: u64,
    last: bool,
}

/// Chunk and seal one segment (see [`Segments`]).
fn seal_segment(
    chunker: &Chunker,
    keys: &EpochKeys,
    kind: Kind,
    sealer: &mut Sealer,
    mut job: SegmentJob,
) -> Result<SegmentDone> {
    let bytes_max = chunker.bytes_max();
    let mut chunks = Vec::new();
    let mut offset = 0;
    while let Some(rest) = job.bytes.get(offset..).filter(|rest| !rest.is_empty()) {
        if rest.len() < bytes_max && !job.last {
            break;
        }
        let length = chunker.cut(rest).max(1);
        let chunk = rest.get(..length).unwrap_or_default();
        let mut buffer = job.buffers.pop().unwrap_or_default();
        buffer.clear();
        buffer.reserve(CONTENT_OFFSET_BYTES + length + length / 8 + 64);
        buffer.resize(CONTENT_OFFSET_BYTES, 0);
        buffer.extend_from_slice(chunk);
        let block_ref = sealer.seal_in_place_at(keys, kind, &mut buffer, PUT_HEADROOM_BYTES)?;
        chunks.push(Candidate {
            start: job.start + offset as u64,
            length,
            block_ref,
            sealed: buffer,
        });
        offset += length;
    }
    Ok(SegmentDone {
        index: job.index,
        start: job.start,
        chain_end: job.start + offset as u64,
        bytes: job.bytes,
        chunks,
        last: job.last,
    })
}

/// The segment workers of one writer.
struct SegmentPool {
    /// `None` only while dropping: closing it stops the workers.
    jobs: Option<Sender<SegmentJob>>,
    results: Receiver<Result<SegmentDone>>,
    workers: Vec<JoinHandle<()>>,
}

impl SegmentPool {
    fn start(
        threads: usize,
        keys: Arc<EpochKeys>,
        kind: Kind,
        chunker: Chunker,
    ) -> Result<SegmentPool> {
        let in_flight = threads * SEGMENTS_IN_FLIGHT_PER_THREAD as usize;
        let (jobs, job_queue) = crossbeam_channel::bounded::<SegmentJob>(in_flight);
        // Never full: at most `in_flight` segments are out, so shutdown cannot deadlock.
        let (result_sender, results) = crossbeam_channel::bounded(in_flight + threads);
        let workers = (0..threads)
            .map(|_| {
                let job_queue = job_queue.clone();
                let result_sender = result_sender.clone();
                let keys = Arc::clone(&keys);
                let chunker = chunker.clone();
                std::thread::Builder::new()
                    .name("venti-segment".into())
                    .spawn(move || {
                        let mut sealer = Sealer::new();
                        for job in job_queue {
                            let result = seal_segment(&chunker, &keys, kind, &mut sealer, job);
                            if result_sender.send(result).is_err() {
                                return;
                            }
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SegmentPool {
            jobs: Some(jobs),
            results,
            workers,
        })
    }
}

impl Drop for SegmentPool {
    fn drop(&mut self) {
        self.jobs = None;
        // Drain results so no worker blocks on a full channel, then join.
        while self.results.try_recv().is_ok() {}
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The sealing threads of one writer.
struct SealPool {
    /// `None` only while dropping: closing it stops the workers.
    jobs: Option<Sender<Job>>,
    results: Receiver<Result<Sealed>>,
    workers: Vec<JoinHandle<()>>,
}

struct Job {
    seq: u64,
    /// The chunk at `CONTENT_OFFSET_BYTES`, sealed in place after the headroom.
    buffer: Vec<u8>,
}

struct Sealed {
    seq: u64,
    block_ref: BlockRef,
    /// The chunk's buffer: headroom, then the sealed block.
    sealed: Vec<u8>,
}

impl SealPool {
    fn start(threads: usize, keys: Arc<EpochKeys>, kind: Kind) -> Result<SealPool> {
        let (jobs, job_queue) = crossbeam_channel::bounded::<Job>(threads * IN_FLIGHT_PER_THREAD);
        // Never full: the writer has at most threads × IN_FLIGHT_PER_THREAD chunks
        // out, so workers never block on sending and shutdown cannot deadlock.
        let (result_sender, results) =
            crossbeam_channel::bounded(threads * IN_FLIGHT_PER_THREAD + threads);
        let workers = (0..threads)
            .map(|_| {
                let job_queue = job_queue.clone();
                let result_sender = result_sender.clone();
                let keys = Arc::clone(&keys);
                std::thread::Builder::new()
                    .name("venti-seal".into())
                    .spawn(move || {
                        let mut sealer = Sealer::new();
                        for mut job in job_queue {
                            let result = sealer
                                .seal_in_place_at(&keys, kind, &mut job.buffer, PUT_HEADROOM_BYTES)
                                .map(|block_ref| Sealed {
                                    seq: job.seq,
                                    block_ref,
                                    sealed: job.buffer,
                                });
                            if result_sender.send(result).is_err() {
                                return;
                            }
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SealPool {
            jobs: Some(jobs),
            results,
            workers,
        })
    }
}

impl Drop for SealPool {
    fn drop(&mut self) {
        self.jobs = None;
        // Workers finish their queued chunks, see the closed queue and exit. A worker
        // that panicked has nothing left to clean up.
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl std::fmt::Debug for SealPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealPool")
            .field("threads", &self.workers.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The simplest correct `BlockStore`, counting gets and puts (the editor's tests
    /// use it too).
    #[derive(Default)]
    pub(in crate::tree) struct MemoryStore {
        blocks: Mutex<HashMap<Address, Vec<u8>>>,
        gets: AtomicUsize,
        puts: AtomicUsize,
    }

    impl BlockStore for MemoryStore {
        fn put(&self, address: &Address, sealed: &[u8], _class: Class) -> Result<()> {
            assert_eq!(Address::of(sealed), *address);
            self.puts.fetch_add(1, Ordering::Relaxed);
            self.blocks
                .lock()
                .unwrap()
                .insert(*address, sealed.to_vec());
            Ok(())
        }

        fn get(&self, address: &Address) -> Result<Vec<u8>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            self.blocks
                .lock()
                .unwrap()
                .get(address)
                .cloned()
                .ok_or(Error::NotFound { address: *address })
        }

        fn contains(&self, address: &Address) -> Result<bool> {
            Ok(self.blocks.lock().unwrap().contains_key(address))
        }
    }

    impl MemoryStore {
        pub(in crate::tree) fn puts(&self) -> usize {
            self.puts.load(Ordering::Relaxed)
        }

        fn addresses(&self) -> HashSet<Address> {
            self.blocks.lock().unwrap().keys().copied().collect()
        }

        fn stored_bytes(&self) -> usize {
            self.blocks.lock().unwrap().values().map(Vec::len).sum()
        }

        pub(in crate::tree) fn gets(&self) -> usize {
            self.gets.load(Ordering::Relaxed)
        }
    }

    pub(in crate::tree) fn keys() -> EpochKeys {
        EpochKeys::derive(&[3u8; 32], &[4u8; 16], 9)
    }

    pub(in crate::tree) fn random(bytes: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; bytes];
        rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn write_tree(store: &MemoryStore, data: &[u8], piece: usize, threads: usize) -> BlockRef {
        let keys = keys();
        let mut writer = TreeWriter::new(store, &keys, Class::Pinned).with_threads(threads);
        for part in data.chunks(piece.max(1)) {
            writer.write(part).unwrap();
        }
        assert_eq!(writer.length(), data.len() as u64);
        writer.finish().unwrap()
    }

    fn fault_of<T: std::fmt::Debug>(result: Result<T>) -> BlockFault {
        match result {
            Err(Error::Block { fault, .. }) => fault,
            other => panic!("expected a block fault, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_single_chunk_content_are_one_leaf() {
        let store = MemoryStore::default();
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        for data in [Vec::new(), b"small".to_vec(), random(100_000, 1)] {
            let root = write_tree(&store, &data, 7000, 2);
            assert_eq!(root.length, data.len() as u64);
            let sealed = store.get(&root.address).unwrap();
            assert_eq!(seal::open(&keys, &root, &sealed, Kind::Data).unwrap(), data);
            assert_eq!(reader.read_all(&root).unwrap(), data);
        }
    }

    #[test]
    fn multi_level_round_trip_is_independent_of_threads_and_pieces() {
        // ~20 MiB: more leaves than FANOUT_MAX can hold in one pointer block is not
        // needed for two levels; content-defined fan-out averages ~160.
        let data = random(20 * 1024 * 1024, 2);
        let store = MemoryStore::default();
        let root = write_tree(&store, &data, 1 << 20, 2);
        let inline = write_tree(&MemoryStore::default(), &data, 4093, 0);
        let three = write_tree(&MemoryStore::default(), &data, 300_000, 3);
        assert_eq!(root, inline);
        assert_eq!(root, three);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        assert_eq!(reader.read_all(&root).unwrap(), data);
        let sealed = store.get(&root.address).unwrap();
        assert!(seal::open(&keys, &root, &sealed, Kind::Pointer).is_ok());
    }

    fn write_segmented(store: &MemoryStore, data: &[u8], piece: usize, segment: usize) -> BlockRef {
        let keys = keys();
        let mut writer = TreeWriter::new(store, &keys, Class::Pinned)
            .with_threads(2)
            .with_segments(segment);
        for chunk in data.chunks(piece.max(1)) {
            writer.write(chunk).unwrap();
        }
        writer.finish().unwrap()
    }

    /// Inputs that stress segment stitching: no cut points, a repeated pattern, zero
    /// runs with random islands, random.
    fn adversarial(kind: u8, bytes: usize, seed: u64) -> Vec<u8> {
        match kind % 4 {
            0 => vec![0u8; bytes],
            1 => random(5003, seed).into_iter().cycle().take(bytes).collect(),
            2 => {
                let islands = random(bytes, seed);
                (0..bytes)
                    .map(|at| {
                        if (at / 90_000) % 3 == 1 {
                            islands[at]
                        } else {
                            0
                        }
                    })
                    .collect()
            }
            _ => random(bytes, seed),
        }
    }

    #[test]
    fn segment_parallel_trees_equal_sequential_ones() {
        let data = random(12 * 1024 * 1024, 21);
        let sequential = write_tree(&MemoryStore::default(), &data, 1 << 20, 0);
        for (piece, segment) in [
            (1 << 20, 4 << 20),
            (300_001, 1 << 20),
            (4093, CHUNK_BYTES_MAX),
        ] {
            let store = MemoryStore::default();
            let root = write_segmented(&store, &data, piece, segment);
            assert_eq!(root, sequential, "piece {piece}, segment {segment}");
            let keys = keys();
            assert_eq!(
                TreeReader::new(&store, &keys).read_all(&root).unwrap(),
                data
            );
        }
    }

    /// Many levels, cheaply: leaves that are only refs (a walk never opens leaves).
    #[test]
    fn deep_trees_from_synthetic_leaves() {
        let store = MemoryStore::default();
        let keys = keys();
        let mut builder = Builder::new(&store, Arc::new(keys.clone()), Class::Pinned, 0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let leaves = 300_000u64;
        for _ in 0..leaves {
            let mut leaf = BlockRef {
                address: Address([0; 32]),
                key: [0; 32],
                epoch: keys.epoch(),
                length: 1000,
            };
            rng.fill_bytes(&mut leaf.address.0);
            rng.fill_bytes(&mut leaf.key);
            builder.push_ref(0, leaf).unwrap();
        }
        builder.chunks = leaves;
        let root = builder.finish().unwrap();
        assert_eq!(root.length, leaves * 1000);
        let sealed = store.get(&root.address).unwrap();
        let payload = seal::open(&keys, &root, &sealed, Kind::Pointer).unwrap();
        assert!(payload[1] >= 3, "level {}", payload[1]);

        let mut visited = 0u64;
        TreeReader::new(&store, &keys)
            .walk(&root, |_| {
                visited += 1;
                Ok(true)
            })
            .unwrap();
        let pointers = store.addresses().len() as u64;
        assert_eq!(visited, leaves + pointers);
        let average = leaves as f64 / pointers as f64;
        assert!(
            (100.0..200.0).contains(&average),
            "average fan-out {average}"
        );
    }

    #[test]
    fn read_range_opens_only_covering_blocks() {
        let data = random(20 * 1024 * 1024, 3);
        let store = MemoryStore::default();
        let root = write_tree(&store, &data, 1 << 20, 2);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let before = store.gets();
        assert_eq!(
            reader.read_range(&root, 10_000_000, 10).unwrap(),
            &data[10_000_000..10_000_010]
        );
        // Root, one pointer per level below it, one leaf (a range of 10 bytes may
        // straddle two leaves at most).
        let gets = store.gets() - before;
        assert!((3..=6).contains(&gets), "{gets} gets");
        // Past the end: cut short, then empty.
        let end = data.len() as u64;
        assert_eq!(
            reader.read_range(&root, end - 3, 100).unwrap(),
            &data[data.len() - 3..]
        );
        assert!(reader.read_range(&root, end, 100).unwrap().is_empty());
        assert!(
            reader
                .read_range(&root, u64::MAX, u64::MAX)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn walk_visits_every_block_without_opening_leaves() {
        let data = random(12 * 1024 * 1024, 4);
        let store = MemoryStore::default();
        let root = write_tree(&store, &data, 1 << 20, 2);
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let before = store.gets();
        let mut visited = HashSet::new();
        reader
            .walk(&root, |block_ref| Ok(visited.insert(block_ref.address)))
            .unwrap();
        assert_eq!(visited, store.addresses());
        let leaves = Chunker::new(&keys).chunk_lengths(&data).count();
        let pointers = visited.len() - leaves;
        assert_eq!(
            store.gets() - before,
            pointers,
            "only pointer blocks fetched"
        );

        // A single-leaf tree: one visit, and the leaf is peeked, not opened.
        let small = MemoryStore::default();
        let leaf = write_tree(&small, b"tiny", 10, 2);
        let mut count = 0;
        TreeReader::new(&small, &keys)
            .walk(&leaf, |_| {
                count += 1;
                Ok(true)
            })
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn insert_mid_file_adds_little() {
        let data = random(16 * 1024 * 1024, 5);
        let store = MemoryStore::default();
        write_tree(&store, &data, 1 << 20, 2);
        let before = store.stored_bytes();
        let mut edited = data.clone();
        edited.splice(
            8_000_000..8_000_000,
            b"a few inserted bytes".iter().copied(),
        );
        edited.extend_from_slice(b"and an append");
        let root = write_tree(&store, &edited, 1 << 20, 2);
        let added = store.stored_bytes() - before;
        // Two or three leaves around each edit, plus the pointer path above them.
        assert!(added < edited.len() / 50, "added {added} bytes");
        let keys = keys();
        assert_eq!(
            TreeReader::new(&store, &keys).read_all(&root).unwrap(),
            edited
        );
    }

    #[test]
    fn leaf_kind_is_checked() {
        let store = MemoryStore::default();
        let keys = keys();
        let mut writer = TreeWriter::new(&store, &keys, Class::Pinned).with_leaf_kind(Kind::Meta);
        writer.write(&random(600_000, 6)).unwrap();
        let root = writer.finish().unwrap();
        let meta = TreeReader::new(&store, &keys).with_leaf_kind(Kind::Meta);
        assert_eq!(meta.read_all(&root).unwrap().len(), 600_000);
        assert!(matches!(
            fault_of(TreeReader::new(&store, &keys).read_all(&root)),
            BlockFault::Kind { .. }
        ));
    }

    #[test]
    fn missing_blocks_and_wrong_keys_are_errors() {
        let data = random(1024 * 1024, 7);
        let store = MemoryStore::default();
        let root = write_tree(&store, &data, 1 << 20, 2);
        let other = EpochKeys::derive(&[3u8; 32], &[5u8; 16], 9);
        assert_eq!(
            fault_of(TreeReader::new(&store, &other).read_all(&root)),
            BlockFault::KeyCommitment
        );
        let keys = keys();
        let empty = MemoryStore::default();
        assert!(matches!(
            TreeReader::new(&empty, &keys).read_all(&root),
            Err(Error::NotFound { .. })
        ));
    }

    /// Seal a hand-made pointer payload; returns its ref with `length` declared.
    fn hostile_pointer(store: &MemoryStore, payload: &[u8], length: u64) -> BlockRef {
        let (mut block_ref, sealed) = seal::seal(&keys(), Kind::Pointer, payload).unwrap();
        store
            .put(&block_ref.address, &sealed, Class::Pinned)
            .unwrap();
        block_ref.length = length;
        block_ref
    }

    fn payload(format: u8, level: u8, count: u16, children: &[BlockRef]) -> Vec<u8> {
        let mut payload = vec![format, level];
        payload.extend_from_slice(&count.to_le_bytes());
        for child in children {
            payload.extend_from_slice(&child.encode());
        }
        payload
    }

    #[test]
    fn hostile_pointer_blocks_are_rejected() {
        let store = MemoryStore::default();
        let keys = keys();
        let reader = TreeReader::new(&store, &keys);
        let (leaf, sealed) = seal::seal(&keys, Kind::Data, b"leaf").unwrap();
        store.put(&leaf.address, &sealed, Class::Pinned).unwrap();
        let good = hostile_pointer(&store, &payload(1, 1, 2, &[leaf, leaf]), 8);
        assert_eq!(reader.read_all(&good).unwrap(), b"leafleaf");

        let check = |payload: Vec<u8>, length: u64| -> BlockFault {
            let root = hostile_pointer(&store, &payload, length);
            let fault = fault_of(reader.read_all(&root));
            assert_eq!(fault, fault_of(reader.walk(&root, |_| Ok(true))));
            fault
        };
        let is_pointer = |fault: BlockFault| matches!(fault, BlockFault::Pointer { .. });
        assert!(is_pointer(check(payload(2, 1, 1, &[leaf]), 4)), "format");
        assert!(is_pointer(check(payload(1, 0, 1, &[leaf]), 4)), "level 0");
        assert!(
            is_pointer(check(payload(1, DEPTH_MAX + 1, 1, &[leaf]), 4)),
            "too deep"
        );
        assert!(is_pointer(check(payload(1, 1, 0, &[]), 4)), "no children");
        assert!(
            is_pointer(check(payload(1, 1, 2, &[leaf]), 4)),
            "count lies"
        );
        assert!(is_pointer(check(vec![1, 1], 4)), "short header");
        let too_many = vec![leaf; FANOUT_MAX + 1];
        let count = (FANOUT_MAX + 1) as u16;
        assert!(
            is_pointer(check(payload(1, 1, count, &too_many), 4)),
            "fan-out"
        );
        let empty_child = BlockRef { length: 0, ..leaf };
        assert!(
            is_pointer(check(payload(1, 1, 2, &[leaf, empty_child]), 4)),
            "empty child"
        );
        let old_epoch = BlockRef { epoch: 8, ..leaf };
        assert!(matches!(
            check(payload(1, 1, 1, &[old_epoch]), 4),
            BlockFault::Epoch { .. }
        ));
        assert_eq!(
            check(payload(1, 1, 2, &[leaf, leaf]), 9),
            BlockFault::ChildLengths {
                declared: 9,
                sum: 8
            }
        );
        let huge = BlockRef {
            length: u64::MAX,
            ..leaf
        };
        assert!(matches!(
            check(payload(1, 1, 2, &[huge, huge]), 8),
            BlockFault::ChildLengths { .. }
        ));
        // A level-2 pointer whose child claims level 2 as well.
        let inner = hostile_pointer(&store, &payload(1, 2, 1, &[leaf]), 4);
        assert_eq!(
            check(payload(1, 2, 1, &[inner]), 4),
            BlockFault::Level {
                expected: 1,
                found: 2
            }
        );
        // A child lying about its length: the leaf's own check catches it.
        let long_leaf = BlockRef { length: 5, ..leaf };
        assert!(matches!(
            fault_of(reader.read_all(&hostile_pointer(&store, &payload(1, 1, 1, &[long_leaf]), 5))),
            BlockFault::Length { .. }
        ));
        // A pointer listed where a leaf belongs.
        assert!(matches!(
            fault_of(reader.read_all(&hostile_pointer(&store, &payload(1, 1, 1, &[good]), 8))),
            BlockFault::Kind { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn segment_parallel_matches_sequential_on_adversarial_input(
            kind in 0u8..4,
            seed: u64,
            bytes in prop_oneof![0usize..600_000, 0usize..4_000_000],
            piece in 1usize..700_000,
            segment in 1usize..1_500_000,
        ) {
            let data = adversarial(kind, bytes, seed);
            let sequential = write_tree(&MemoryStore::default(), &data, 1 << 20, 0);
            prop_assert_eq!(write_segmented(&MemoryStore::default(), &data, piece, segment), sequential);
        }

        #[test]
        fn read_range_matches_content(seed: u64, bytes in 0usize..3_000_000, piece in 1usize..400_000) {
            let data = random(bytes, seed);
            let store = MemoryStore::default();
            let root = write_tree(&store, &data, piece, 2);
            let keys = keys();
            let reader = TreeReader::new(&store, &keys);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..8 {
                let offset = rng.random_range(0..=bytes as u64 + 10);
                let length = rng.random_range(0..=bytes as u64 / 2 + 10);
                let start = (offset as usize).min(bytes);
                let end = (offset.saturating_add(length) as usize).min(bytes);
                prop_assert_eq!(reader.read_range(&root, offset, length).unwrap(), &data[start..end.max(start)]);
                let mut appended = b"before".to_vec();
                reader.read_range_into(&root, offset, length, &mut appended).unwrap();
                prop_assert_eq!(&appended[..6], b"before");
                prop_assert_eq!(&appended[6..], &data[start..end.max(start)]);
            }
        }
    }
}
