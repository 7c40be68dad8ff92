//! Chunk compression: zstd at a fast level, kept only when it pays.
//!
//! A chunk is stored compressed when that saves at least an eighth of its length;
//! otherwise it is stored as is (a flag inside the sealed bytes says which). To keep
//! incompressible data (media, archives, already-encrypted files) cheap, a 4 KiB sample
//! from the middle of the chunk is checked first: if its byte values are as evenly
//! spread as random bytes the chunk is stored as is; otherwise the sample is compressed
//! and the full attempt is skipped when it does not shrink.
//!
//! Decompression never allocates from an unchecked size: the caller passes the
//! declared plaintext length (already bounded by the block format) and output longer or
//! shorter than that is an error.

use std::cell::RefCell;
use std::io;

/// zstd level used for chunks. Level 1 is zstd's fastest regular level; higher levels
/// cost several times the CPU for a few percent on typical mixed trees.
pub const ZSTD_LEVEL: i32 = 1;
/// Keep the compressed form only if it is at most `len - len / SAVING_DIVISOR`.
pub const SAVING_DIVISOR: usize = 8;
/// Length of the sample tried before compressing a whole chunk.
pub const SAMPLE_BYTES: usize = 4096;
/// The sample must save at least `1 / SAMPLE_SAVING_DIVISOR` for the full attempt to
/// be made (looser than the final rule: small samples compress worse than chunks).
pub const SAMPLE_SAVING_DIVISOR: usize = 16;
/// Chunks shorter than this are not worth a zstd frame header.
pub const COMPRESS_BYTES_MIN: usize = 128;

/// A reusable compression context (one per sealing thread).
pub struct Compressor {
    /// `None` when zstd could not allocate a context: chunks are then stored
    /// uncompressed, which is always a valid encoding.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    output: Vec<u8>,
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
            output: Vec::new(),
        }
    }

    /// The compressed form of `data` if it saves at least `1 / SAVING_DIVISOR`.
    pub fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        if data.len() < COMPRESS_BYTES_MIN {
            return None;
        }
        let zstd = self.zstd.as_mut()?;
        if data.len() >= 4 * SAMPLE_BYTES {
            let start = data.len() / 2 - SAMPLE_BYTES / 2;
            let sample = data.get(start..start + SAMPLE_BYTES)?;
            if bytes_look_uniform(sample) {
                return None;
            }
            let limit = sample.len() - sample.len() / SAMPLE_SAVING_DIVISOR;
            if !compress_within(zstd, sample, &mut self.output, limit) {
                return None;
            }
        }
        let limit = data.len() - data.len() / SAVING_DIVISOR;
        if compress_within(zstd, data, &mut self.output, limit) {
            Some(&self.output)
        } else {
            None
        }
    }
}

impl Default for Compressor {
    fn default() -> Compressor {
        Compressor::new()
    }
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &ZSTD_LEVEL)
            .field("available", &self.zstd.is_some())
            .finish()
    }
}

/// True when the byte values of `sample` are spread about as evenly as random bytes:
/// entropy coding cannot shrink such data, and it is almost always compressed media,
/// archives or ciphertext, which LZ matching cannot shrink either. Integer-only, so
/// every device makes the same decision for the same chunk (dedup depends on it).
///
/// The statistic is the sum of squared byte counts: about `n + n²/256` for uniform
/// bytes, larger the more the values cluster. The cut-off, 1.25 × the uniform
/// expectation, is a collision entropy of 7.68 bits per byte.
fn bytes_look_uniform(sample: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for byte in sample {
        counts[usize::from(*byte)] += 1;
    }
    let length = sample.len() as u64;
    let sum_of_squares: u64 = counts.iter().map(|count| u64::from(*count).pow(2)).sum();
    sum_of_squares * 256 * 4 <= (length * length + length * 256) * 5
}

/// Compress `data` into `output`; true when the result is at most `limit` bytes.
fn compress_within(
    zstd: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
    output: &mut Vec<u8>,
    limit: usize,
) -> bool {
    output.clear();
    // Room for the worst case so zstd never fails for lack of space; its own bound
    // check then only fails on internal errors, which mean "store uncompressed".
    output.reserve(zstd::zstd_safe::compress_bound(data.len()));
    match zstd.compress_to_buffer(data, output) {
        Ok(written) => written <= limit,
        Err(_) => false,
    }
}

/// Why compressed bytes could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("zstd: {0}")]
    Zstd(#[from] io::Error),
    #[error("decompressed to {found} bytes, declared {declared}")]
    Length { declared: usize, found: usize },
}

thread_local! {
    /// One zstd decompression context per thread, made on first use: making one costs
    /// more than decompressing a small chunk (7 % of the FUSE thread in a cold
    /// `tar -c` of a source tree when each call made its own).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Decompress with this thread's context into at most `capacity` bytes. A context that
/// failed is dropped (the next call makes a fresh one), so no state carries over.
fn decompress_reusing(compressed: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::decompress(compressed, capacity);
        };
        let decompressor = match slot.as_mut() {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        let result = decompressor.decompress(compressed, capacity);
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// Decompress `compressed`, which must restore exactly `length` bytes. Never writes or
/// allocates more than `length` bytes; the caller bounds `length`.
pub fn decompress(compressed: &[u8], length: usize) -> Result<Vec<u8>, DecompressError> {
    let data = decompress_reusing(compressed, length)?;
    if data.len() != length {
        return Err(DecompressError::Length {
            declared: length,
            found: data.len(),
        });
    }
    Ok(data)
}

/// Decompress `compressed` into at most `bytes_max` bytes, however long the result.
pub fn decompress_bounded(compressed: &[u8], bytes_max: usize) -> Result<Vec<u8>, DecompressError> {
    Ok(decompress_reusing(compressed, bytes_max)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    fn random(bytes: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; bytes];
        rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn text(bytes: usize) -> Vec<u8> {
        let words = ["venti ", "fossil ", "block ", "chunk ", "sealed ", "kith\n"];
        words
            .iter()
            .cycle()
            .flat_map(|word| word.bytes())
            .take(bytes)
            .collect()
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let data = text(64 * 1024);
        let mut compressor = Compressor::new();
        let compressed = compressor.compress(&data).unwrap().to_vec();
        assert!(compressed.len() <= data.len() - data.len() / SAVING_DIVISOR);
        assert_eq!(decompress(&compressed, data.len()).unwrap(), data);
    }

    #[test]
    fn random_and_tiny_data_stay_uncompressed() {
        let mut compressor = Compressor::new();
        assert!(compressor.compress(&random(64 * 1024, 1)).is_none());
        assert!(compressor.compress(&random(1000, 2)).is_none());
        assert!(compressor.compress(b"tiny").is_none());
    }

    #[test]
    fn uniformity_check_separates_random_from_text() {
        for seed in 0..50 {
            assert!(bytes_look_uniform(&random(SAMPLE_BYTES, seed)));
        }
        assert!(!bytes_look_uniform(&text(SAMPLE_BYTES)));
        // Skewed but still noisy: random bytes with every fourth byte zero.
        let mut skewed = random(SAMPLE_BYTES, 99);
        skewed.iter_mut().step_by(4).for_each(|byte| *byte = 0);
        assert!(!bytes_look_uniform(&skewed));
        assert!(!bytes_look_uniform(&[0u8; SAMPLE_BYTES]));
    }

    #[test]
    fn decompression_is_bounded_by_declared_length() {
        let data = text(64 * 1024);
        let compressed = zstd::bulk::compress(&data, ZSTD_LEVEL).unwrap();
        assert!(matches!(
            decompress(&compressed, data.len() - 1),
            Err(DecompressError::Zstd(_))
        ));
        assert!(matches!(
            decompress(&compressed, data.len() + 1),
            Err(DecompressError::Length { .. })
        ));
        assert!(decompress(b"not zstd at all", 100).is_err());
    }

    #[test]
    fn the_reused_context_carries_nothing_from_one_call_to_the_next() {
        let mut compressor = Compressor::new();
        let first = text(40_000);
        let mut second = text(50_000);
        second.reverse();
        let first_z = compressor.compress(&first).unwrap().to_vec();
        let second_z = compressor.compress(&second).unwrap().to_vec();
        assert_eq!(decompress(&first_z, first.len()).unwrap(), first);
        // A failure (too small a bound, then garbage) leaves later calls unharmed.
        assert!(decompress(&second_z, second.len() - 1).is_err());
        assert!(decompress(b"not zstd at all", 100).is_err());
        assert_eq!(decompress(&second_z, second.len()).unwrap(), second);
        assert_eq!(decompress_bounded(&first_z, 1 << 20).unwrap(), first);
        assert_eq!(decompress(&first_z, first.len()).unwrap(), first);
    }

    proptest! {
        #[test]
        fn round_trip(seed: u64, random_bytes in 0usize..20_000, text_bytes in 0usize..60_000) {
            let mut data = text(text_bytes);
            data.extend(random(random_bytes, seed));
            let mut compressor = Compressor::new();
            if let Some(compressed) = compressor.compress(&data) {
                let compressed = compressed.to_vec();
                prop_assert!(compressed.len() < data.len());
                prop_assert_eq!(decompress(&compressed, data.len()).unwrap(), data);
            }
        }
    }
}
