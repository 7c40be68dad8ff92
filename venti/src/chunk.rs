//! Content-defined chunking: FastCDC v2020 with a keyed Gear table.
//!
//! Cut points depend only on content, so an insert in a large file changes the chunks
//! next to it and no others. The Gear table — the 256 random words the rolling hash
//! adds per byte — is filled from the epoch's `gear_key` (BLAKE3 XOF), so chunk sizes
//! of a known file cannot be predicted by anyone without the key. The scan loop is the
//! `fastcdc` crate's `v2020::cut_gear`, which takes a caller-supplied table; sizes,
//! masks and normalization are fixed here and are part of the chunking format
//! (`docs/formats.md`).
//!
//! [`Chunker`] cuts whole buffers; [`StreamChunker`] takes bytes in pieces of any size
//! and emits the same chunks, without copying when a piece holds whole chunks.

use fastcdc::v2020::{self, Normalization};

use crate::keys::EpochKeys;

/// No chunk is shorter than this, except the last one of a stream.
pub const CHUNK_BYTES_MIN: usize = 16 * 1024;
/// Target average chunk length.
pub const CHUNK_BYTES_AVG: usize = 64 * 1024;
/// No chunk is longer than this.
pub const CHUNK_BYTES_MAX: usize = 256 * 1024;
/// FastCDC normalization level: how strongly chunk sizes are pulled towards the
/// average (level 1: the mask is one bit stricter below the average and one bit looser
/// above it).
pub const NORMALIZATION: Normalization = Normalization::Level1;

const _: () = assert!(CHUNK_BYTES_MIN < CHUNK_BYTES_AVG && CHUNK_BYTES_AVG < CHUNK_BYTES_MAX);
// Powers of two: the v2020 scan tests two bytes per step (sizes must be even) and
// its masks are chosen by log2 of the average.
const _: () = assert!(CHUNK_BYTES_MIN.is_power_of_two() && CHUNK_BYTES_AVG.is_power_of_two());
const _: () = assert!(CHUNK_BYTES_MAX.is_power_of_two());
// Inside the ranges the fastcdc crate supports.
const _: () =
    assert!(CHUNK_BYTES_MIN >= v2020::MINIMUM_MIN && CHUNK_BYTES_MIN <= v2020::MINIMUM_MAX);
const _: () =
    assert!(CHUNK_BYTES_AVG >= v2020::AVERAGE_MIN && CHUNK_BYTES_AVG <= v2020::AVERAGE_MAX);
const _: () =
    assert!(CHUNK_BYTES_MAX >= v2020::MAXIMUM_MIN && CHUNK_BYTES_MAX <= v2020::MAXIMUM_MAX);

/// A FastCDC v2020 chunker keyed for one volume epoch.
#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_shifted: Box<[u64; 256]>,
    mask_small: u64,
    mask_large: u64,
    bytes_min: usize,
    bytes_avg: usize,
    bytes_max: usize,
}

impl Chunker {
    /// The chunker of the epoch `keys` belong to, with Kith's fixed sizes.
    pub fn new(keys: &EpochKeys) -> Chunker {
        Chunker::with_sizes(keys, CHUNK_BYTES_MIN, CHUNK_BYTES_AVG, CHUNK_BYTES_MAX)
    }

    /// A chunker with other sizes, for measuring size choices. Sizes are clamped into
    /// the ranges FastCDC supports and rounded down to even numbers.
    pub fn with_sizes(
        keys: &EpochKeys,
        bytes_min: usize,
        bytes_avg: usize,
        bytes_max: usize,
    ) -> Chunker {
        let even = |value: usize| value & !1;
        let bytes_min = even(bytes_min.clamp(v2020::MINIMUM_MIN, v2020::MINIMUM_MAX));
        let bytes_avg = even(bytes_avg.clamp(v2020::AVERAGE_MIN, v2020::AVERAGE_MAX));
        let bytes_max = even(bytes_max.clamp(v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX));
        let mut gear = Box::new([0u64; 256]);
        let mut words = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(keys.gear_key())
            .finalize_xof()
            .fill(&mut words);
        for (entry, word) in gear.iter_mut().zip(words.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            *entry = u64::from_le_bytes(bytes);
        }
        words.fill(0);
        // The v2020 loop consumes two bytes per step; the first of each pair uses the
        // table shifted left by one.
        let gear_shifted = Box::new(gear.map(|entry| entry << 1));
        let (mask_small, mask_large) = v2020::select_masks(bytes_avg, NORMALIZATION);
        Chunker {
            gear,
            gear_shifted,
            mask_small,
            mask_large,
            bytes_min,
            bytes_avg,
            bytes_max,
        }
    }

    /// The largest chunk this chunker emits.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Length of the chunk at the start of `data`, assuming `data` holds either at
    /// least `bytes_max` bytes or the whole rest of the stream. Returns `data.len()`
    /// when no cut point is found before the end.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_hash, length) = v2020::cut_gear(
            data,
            self.bytes_min,
            self.bytes_avg,
            self.bytes_max,
            self.mask_small,
            self.mask_large,
            self.mask_small << 1,
            self.mask_large << 1,
            &self.gear[..],
            &self.gear_shifted[..],
        );
        // `cut_gear` never returns more than it was given; the clamp keeps that an
        // invariant of this function rather than of a dependency.
        length.clamp(1.min(data.len()), data.len())
    }

    /// Chunk lengths of a complete buffer, in order. Empty data has no chunks.
    pub fn chunk_lengths<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
        let mut offset = 0;
        std::iter::from_fn(move || {
            let rest = data.get(offset..).filter(|rest| !rest.is_empty())?;
            let length = self.cut(rest);
            offset += length;
            Some(length)
        })
    }
}

impl Chunker {
    /// [`Chunker::chunk_lengths`] of a complete buffer, computed on up to `threads`
    /// threads: the same lengths, always.
    ///
    /// Each thread chunks its own segments of `segment_bytes` as if a chunk started at
    /// the segment's start, giving a chain of *candidate* chunk starts. The calling
    /// thread then follows the true chain from the start of the data: inside segment
    /// `k` it checks whether the true position is one of segment `k`'s candidates. A
    /// cut depends only on the bytes from its chunk's start, so from the first shared
    /// position on the two chains are the same, and the candidates are taken as they
    /// are; until then (usually a chunk or two, a whole segment for input without cut
    /// points such as zeros) the caller cuts sequentially. Cuts are made with the
    /// whole rest of the data in view, exactly like the sequential chunker.
    pub fn chunk_lengths_parallel(
        &self,
        data: &[u8],
        segment_bytes: usize,
        threads: usize,
    ) -> Vec<usize> {
        let segment_bytes = segment_bytes.max(1);
        let segments = data.len().div_ceil(segment_bytes);
        // Candidate chunk starts per segment from 1 on (segment 0's chain is the true
        // one, followed below); each chain runs to the first start at or past the end
        // of its segment.
        let chain = |segment: usize| -> Vec<usize> {
            let start = segment * segment_bytes;
            let end = (start + segment_bytes).min(data.len());
            let mut starts = vec![start];
            let mut position = start;
            while position < end {
                position += data.get(position..).map_or(0, |rest| self.cut(rest)).max(1);
                starts.push(position);
            }
            starts
        };
        let threads = threads.clamp(1, segments.max(1));
        let mut candidates: Vec<Vec<usize>> = vec![Vec::new(); segments];
        if threads > 1 && segments > 1 {
            let next = std::sync::atomic::AtomicUsize::new(1);
            let results = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let segment = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if segment >= segments {
                                break;
                            }
                            mine.push((segment, chain(segment)));
                        }
                        results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .extend(mine);
                    });
                }
            });
            for (segment, starts) in results
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                if let Some(slot) = candidates.get_mut(segment) {
                    *slot = starts;
                }
            }
        }
        let mut lengths = Vec::new();
        let mut position = 0;
        while position < data.len() {
            let segment = position / segment_bytes;
            let chain = candidates.get(segment).map_or(&[][..], Vec::as_slice);
            if let Ok(at) = chain.binary_search(&position) {
                // On segment `segment`'s chain: its chunks are the true ones, up to
                // its last start (at or past the segment's end).
                for pair in chain.get(at..).unwrap_or_default().windows(2) {
                    lengths.push(pair[1] - pair[0]);
                }
                position = chain.last().copied().unwrap_or(position);
                continue;
            }
            let length = data.get(position..).map_or(0, |rest| self.cut(rest)).max(1);
            lengths.push(length);
            position += length;
        }
        lengths
    }
}

impl std::fmt::Debug for Chunker {
    // The Gear table is key material: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("bytes_min", &self.bytes_min)
            .field("bytes_avg", &self.bytes_avg)
            .field("bytes_max", &self.bytes_max)
            .finish_non_exhaustive()
    }
}

impl Drop for Chunker {
    fn drop(&mut self) {
        self.gear.fill(0);
        self.gear_shifted.fill(0);
    }
}

/// Streaming front end of a [`Chunker`]: push bytes in pieces of any size, get the
/// same chunks as [`Chunker::chunk_lengths`] over the concatenation.
///
/// Holds at most `bytes_max - 1` bytes between calls. A chunk that lies wholly inside
/// one pushed piece is emitted straight from it, without a copy; of a piece that
/// continues held bytes, only what the cuts up to the first chunk ending inside the
/// piece need is copied, and held bytes move to the front of the buffer at most once
/// per `bytes_max` bytes emitted.
#[derive(Debug)]
pub struct StreamChunker {
    chunker: Chunker,
    /// `held[start..]`: bytes pushed but not yet emitted; always shorter than
    /// `bytes_max` between calls. `held.len()` stays within `2 × bytes_max`.
    held: Vec<u8>,
    start: usize,
}

impl StreamChunker {
    pub fn new(chunker: Chunker) -> StreamChunker {
        let held = Vec::with_capacity(2 * chunker.bytes_max());
        StreamChunker {
            chunker,
            held,
            start: 0,
        }
    }

    /// The chunker this stream cuts with.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Bytes pushed but not yet emitted.
    pub fn held_bytes(&self) -> usize {
        self.held.len() - self.start
    }

    /// Push bytes; `emit` gets every chunk that is now complete, in order.
    pub fn push<E>(
        &mut self,
        mut input: &[u8],
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let bytes_max = self.chunker.bytes_max();
        // `input[..copied]` is also the tail of `held`.
        let mut copied = 0;
        while copied < input.len() {
            if self.start == self.held.len() {
                self.held.clear();
                self.start = 0;
                // Nothing held: cut straight from the input while a whole window fits.
                while input.len() >= bytes_max {
                    let length = self.chunker.cut(input);
                    let (chunk, rest) = input.split_at(length);
                    emit(chunk)?;
                    input = rest;
                }
                self.held.extend_from_slice(input);
                return Ok(());
            }
            let pending = self.held.len() - self.start;
            let take = bytes_max.saturating_sub(pending).min(input.len() - copied);
            if self.held.len() + take > 2 * bytes_max {
                self.held.drain(..self.start);
                self.start = 0;
            }
            self.held.extend_from_slice(&input[copied..copied + take]);
            copied += take;
            if self.held.len() - self.start < bytes_max {
                // All of the input is held now.
                return Ok(());
            }
            let window = &self.held[self.start..];
            let length = self.chunker.cut(window);
            emit(&window[..length])?;
            let end = self.start + length;
            let input_at = self.held.len() - copied;
            if end >= input_at {
                // The chunk ended inside the input: go on from the input itself.
                input = &input[end - input_at..];
                copied = 0;
                self.held.clear();
                self.start = 0;
            } else {
                self.start = end;
            }
        }
        Ok(())
    }

    /// Emit what is held as the final chunks.
    pub fn finish<E>(&mut self, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut offset = self.start;
        while let Some(rest) = self.held.get(offset..).filter(|rest| !rest.is_empty()) {
            let length = self.chunker.cut(rest);
            emit(&rest[..length])?;
            offset += length;
        }
        self.held.clear();
        self.start = 0;
        Ok(())
    }
}

impl Drop for StreamChunker {
    fn drop(&mut self) {
        // Plaintext waiting to be chunked.
        self.held.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    fn keys() -> EpochKeys {
        EpochKeys::derive(&[7u8; 32], &[9u8; 16], 1)
    }

    fn seeded(bytes: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; bytes];
        rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Golden vector: chunk boundaries of a seeded buffer under fixed keys are part of
    /// the format (they decide dedup across devices of one epoch).
    #[test]
    fn boundaries_golden_vector() {
        let data = seeded(2 * 1024 * 1024, 42);
        let lengths: Vec<usize> = Chunker::new(&keys()).chunk_lengths(&data).collect();
        assert_eq!(lengths, GOLDEN_LENGTHS);
    }

    const GOLDEN_LENGTHS: &[usize] = &[
        84788, 79678, 21067, 25469, 168863, 71798, 54943, 66068, 35732, 67455, 79813, 78956, 93721,
        196132, 61094, 114405, 69018, 96311, 128508, 81640, 66736, 97593, 23156, 79606, 79083,
        75519,
    ];

    #[test]
    fn lengths_respect_bounds_and_cover_input() {
        let data = seeded(4 * 1024 * 1024, 1);
        let chunker = Chunker::new(&keys());
        let lengths: Vec<usize> = chunker.chunk_lengths(&data).collect();
        assert_eq!(lengths.iter().sum::<usize>(), data.len());
        let (last, body) = lengths.split_last().unwrap();
        assert!(*last <= CHUNK_BYTES_MAX);
        for length in body {
            assert!(
                (CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(length),
                "{length}"
            );
        }
        let average = data.len() / lengths.len();
        assert!(
            average > CHUNK_BYTES_AVG / 2 && average < CHUNK_BYTES_AVG * 2,
            "{average}"
        );
    }

    #[test]
    fn boundaries_depend_on_key() {
        let data = seeded(1024 * 1024, 3);
        let a: Vec<usize> = Chunker::new(&keys()).chunk_lengths(&data).collect();
        let other = EpochKeys::derive(&[7u8; 32], &[9u8; 16], 2);
        let b: Vec<usize> = Chunker::new(&other).chunk_lengths(&data).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn zeros_cut_at_max_and_empty_has_no_chunks() {
        let chunker = Chunker::new(&keys());
        let zeros = vec![0u8; 3 * CHUNK_BYTES_MAX + 5];
        let lengths: Vec<usize> = chunker.chunk_lengths(&zeros).collect();
        assert_eq!(
            lengths,
            vec![CHUNK_BYTES_MAX, CHUNK_BYTES_MAX, CHUNK_BYTES_MAX, 5]
        );
        assert_eq!(chunker.chunk_lengths(&[]).count(), 0);
    }

    #[test]
    fn insert_changes_only_nearby_chunks() {
        let chunker = Chunker::new(&keys());
        let data = seeded(8 * 1024 * 1024, 5);
        let mut edited = data.clone();
        edited.splice(3_000_000..3_000_000, b"inserted bytes".iter().copied());
        let chunks = |bytes: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            let mut offset = 0;
            chunker
                .chunk_lengths(bytes)
                .map(|length| {
                    offset += length;
                    bytes[offset - length..offset].to_vec()
                })
                .collect()
        };
        let before = chunks(&data);
        let after = chunks(&edited);
        assert!(after.difference(&before).count() <= 2);
    }

    fn stream_lengths(chunker: &Chunker, data: &[u8], pieces: &[usize]) -> Vec<usize> {
        let mut stream = StreamChunker::new(chunker.clone());
        let mut lengths = Vec::new();
        let mut emitted = Vec::new();
        let mut offset = 0;
        let mut piece = pieces.iter().cycle();
        while offset < data.len() {
            let size = (*piece.next().unwrap()).clamp(1, data.len() - offset);
            stream
                .push::<()>(&data[offset..offset + size], |chunk| {
                    lengths.push(chunk.len());
                    emitted.extend_from_slice(chunk);
                    Ok(())
                })
                .unwrap();
            assert!(stream.held_bytes() < CHUNK_BYTES_MAX);
            offset += size;
        }
        stream
            .finish::<()>(|chunk| {
                lengths.push(chunk.len());
                emitted.extend_from_slice(chunk);
                Ok(())
            })
            .unwrap();
        assert!(
            emitted == data,
            "emitted chunks differ from the pushed bytes"
        );
        lengths
    }

    #[test]
    fn streaming_small_and_mixed_pieces_match_whole_buffer() {
        // Small pieces keep bytes held for many cuts (the compaction path); mixed ones
        // alternate between held and direct cutting.
        let chunker = Chunker::new(&keys());
        let data = seeded(3_000_000, 7);
        let whole: Vec<usize> = chunker.chunk_lengths(&data).collect();
        for pieces in [&[4096][..], &[1, 70_000, 300_000, 17, 262_143], &[65_537]] {
            assert_eq!(stream_lengths(&chunker, &data, pieces), whole, "{pieces:?}");
        }
    }

    /// Inputs that stress the resynchronisation of segment-parallel chunking.
    fn adversarial(kind: u8, bytes: usize, seed: u64) -> Vec<u8> {
        match kind % 4 {
            // No cut points at all: chunks only at the maximum.
            0 => vec![0u8; bytes],
            // A short random pattern repeated: the same cut points every period.
            1 => seeded(4099, seed).into_iter().cycle().take(bytes).collect(),
            // Zeros with random islands: long forced cuts, then content-defined ones.
            2 => {
                let mut data = vec![0u8; bytes];
                let islands = seeded(bytes, seed);
                for (at, byte) in data.iter_mut().enumerate() {
                    if (at / 100_000) % 3 == 1 {
                        *byte = islands[at];
                    }
                }
                data
            }
            _ => seeded(bytes, seed),
        }
    }

    #[test]
    fn parallel_chunking_matches_sequential_on_edge_cases() {
        let chunker = Chunker::new(&keys());
        let data = seeded(2 * 1024 * 1024, 42);
        // The golden buffer, with segment edges inside the minimum-size window of the
        // first chunk, at odd sizes, and one segment per byte range of a chunk.
        for segment_bytes in [
            4096,
            9999,
            CHUNK_BYTES_MIN - 1,
            CHUNK_BYTES_MIN,
            100_003,
            1 << 20,
            4 << 20,
        ] {
            let parallel = chunker.chunk_lengths_parallel(&data, segment_bytes, 2);
            assert_eq!(parallel, GOLDEN_LENGTHS, "segment {segment_bytes}");
        }
        assert!(chunker.chunk_lengths_parallel(&[], 1 << 20, 2).is_empty());
        assert_eq!(chunker.chunk_lengths_parallel(&[5], 1 << 20, 2), vec![1]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn parallel_chunking_matches_sequential(
            kind in 0u8..4,
            seed: u64,
            bytes in prop_oneof![0usize..CHUNK_BYTES_MAX, 0usize..3_000_000],
            segment_bytes in prop_oneof![4096usize..CHUNK_BYTES_MIN * 2, 4096usize..2_000_000],
            threads in 1usize..4,
        ) {
            let chunker = Chunker::new(&keys());
            let data = adversarial(kind, bytes, seed);
            let sequential: Vec<usize> = chunker.chunk_lengths(&data).collect();
            prop_assert_eq!(chunker.chunk_lengths_parallel(&data, segment_bytes, threads), sequential);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn streaming_matches_whole_buffer(
            seed: u64,
            bytes in 0usize..1_500_000,
            pieces in proptest::collection::vec(1usize..600_000, 1..8),
        ) {
            let chunker = Chunker::new(&keys());
            let data = seeded(bytes, seed);
            let whole: Vec<usize> = chunker.chunk_lengths(&data).collect();
            prop_assert_eq!(stream_lengths(&chunker, &data, &pieces), whole);
        }
    }
}
