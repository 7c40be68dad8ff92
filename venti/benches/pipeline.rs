//! The ingest pipeline and its parts: BLAKE3, ChaCha20-Poly1305, zstd's sample check,
//! FastCDC alone, the bare chunk→hash→seal pipeline on one core and on two, and
//! `TreeWriter` ingest into a memory store and into the file store — over an
//! incompressible corpus and a mixed one (text-like compressible + random).
//!
//! `cargo bench -p venti --bench pipeline`. `KITH_BENCH_MIB` sets the corpus size
//! (default 256). With `KITH_CHUNK_REPORT=1` it first prints, once, the dedup of an
//! edited copy and the chunking speed for several chunk-size choices (the measurement
//! behind `docs/formats.md`'s sizes); with `KITH_CPU_REPORT=1`, wall-clock and
//! CPU-time throughput of the bare pipeline and of tree ingest (robust to a shared
//! machine), the cores each kept busy, and the file store's final sync; also tree
//! ingest into a bare record sink written buffered and with `O_DIRECT` (what the page
//! cache costs the store) and into the file store with its direct path turned off
//! (`tree_file_store_buffered`), and with segment-parallel chunk-and-seal
//! (`tree_file_store_segments`); runs into a store or a sink are timed from the first
//! write through the final sync, not the creation and deletion of their directory
//! (as the criterion ingest benches are). `KITH_BENCH_DIR` puts the stores on a given
//! disk (the default temp directory must not be a tmpfs for the direct path to be
//! measured).
//! The ratio of two MB/CPU-s figures bounds the ratio of their wall-clock figures on a
//! quiet machine: `chunk_seal_2core` (the real block format on two independent
//! halves) is the ceiling for tree ingest on two cores. `KITH_CPU_RUNS` (a comma list
//! of run names) restricts the report to those runs.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, RngCore, SeedableRng};
use venti::backend::FileBackend;
use venti::chunk::Chunker;
use venti::compress::Compressor;
use venti::keys::EpochKeys;
use venti::seal::{self, Sealer};
use venti::tree::{TreeReader, TreeWriter};
use venti::{Address, BlockStore, Class, Kind, Store, StoreOptions};

const BLOCK_BYTES: usize = 64 * 1024;
/// Pieces the benchmark feeds the tree writer, like a file copy loop would.
const WRITE_PIECE_BYTES: usize = 1 << 20;
/// Segment size of `tree_file_store_segments` (segment-parallel chunk-and-seal).
const SEGMENT_BYTES: usize = 4 << 20;

fn corpus_bytes() -> usize {
    let mib = std::env::var("KITH_BENCH_MIB")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(256);
    mib.max(1) << 20
}

fn keys() -> EpochKeys {
    EpochKeys::derive(&[0x42; 32], &[0x17; 16], 1)
}

fn ok<T>(result: venti::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("bench: {error}"),
    }
}

fn random(bytes: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; bytes];
    rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Text-like bytes: words, numbers and line breaks — compresses about 3× with zstd -1,
/// like source code, logs and documents.
fn text(bytes: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "block", "store", "of", "kith", "seals", "every", "chunk", "and", "fn", "let",
        "mut", "return", "if", "else", "error", "while", "data", "for", "volume", "epoch",
        "address", "pointer", "level", "tree", "=", "{", "}", "(", ");", "//",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(bytes + 32);
    while out.len() < bytes {
        match rng.random_range(0..12) {
            0 => out.extend_from_slice(format!("{} ", rng.random::<u32>()).as_bytes()),
            1 => out.push(b'\n'),
            _ => {
                out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
                out.push(b' ');
            }
        }
    }
    out.truncate(bytes);
    out
}

/// Half text-like, half random, in alternating 4 MiB runs (files of a mixed tree).
fn mixed(bytes: usize, seed: u64) -> Vec<u8> {
    let run = 4 << 20;
    let mut out = Vec::with_capacity(bytes);
    let mut index = 0;
    while out.len() < bytes {
        let take = run.min(bytes - out.len());
        if index % 2 == 0 {
            out.extend(text(take, seed + index));
        } else {
            out.extend(random(take, seed + index));
        }
        index += 1;
    }
    out
}

/// A memory store that copies what it is given, as a real store would.
#[derive(Default)]
struct MemoryStore {
    blocks: Mutex<HashMap<Address, Vec<u8>>>,
}

impl BlockStore for MemoryStore {
    fn put(&self, address: &Address, sealed: &[u8], _class: Class) -> venti::Result<()> {
        let mut blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        blocks.entry(*address).or_insert_with(|| sealed.to_vec());
        Ok(())
    }

    fn get(&self, address: &Address) -> venti::Result<Vec<u8>> {
        let blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        blocks
            .get(address)
            .cloned()
            .ok_or(venti::Error::NotFound { address: *address })
    }

    fn contains(&self, address: &Address) -> venti::Result<bool> {
        let blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(blocks.contains_key(address))
    }
}

impl MemoryStore {
    fn stored_bytes(&self) -> usize {
        let blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        blocks.values().map(Vec::len).sum()
    }
}

/// A store that drops what it is given: the pipeline's own cost, without a store's.
struct NullStore;

impl BlockStore for NullStore {
    fn put(&self, _address: &Address, sealed: &[u8], _class: Class) -> venti::Result<()> {
        black_box(sealed);
        Ok(())
    }

    fn get(&self, address: &Address) -> venti::Result<Vec<u8>> {
        Err(venti::Error::NotFound { address: *address })
    }

    fn contains(&self, _address: &Address) -> venti::Result<bool> {
        Ok(false)
    }
}

/// A stand-in for an arena writer, to compare write paths under the same tree writer:
/// records go (buffer and all) to a thread that appends them to one file, either with
/// one buffered `pwrite` each (what `Store` does) or through a 4 MiB aligned staging
/// buffer written with `O_DIRECT` (no page-cache copy); `finish` fdatasyncs. Neither
/// indexes anything or can be read back.
struct SinkStore {
    records: Mutex<Option<crossbeam_channel::Sender<Vec<u8>>>>,
    spares: crossbeam_channel::Receiver<Vec<u8>>,
    thread: Mutex<Option<std::thread::JoinHandle<std::io::Result<()>>>>,
}

const SINK_STAGE_BYTES: usize = 4 << 20;
const SINK_ALIGN_BYTES: usize = 4096;

impl SinkStore {
    fn new(path: &std::path::Path, direct: bool) -> std::io::Result<SinkStore> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let (records, queue) = crossbeam_channel::bounded::<Vec<u8>>(64);
        let (spare_sender, spares) = crossbeam_channel::bounded::<Vec<u8>>(64);
        let mut options = std::fs::OpenOptions::new();
        options.create(true).write(true).truncate(true);
        if direct {
            options.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        }
        let file = options.open(path)?;
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let mut backing = vec![0u8; SINK_STAGE_BYTES + SINK_ALIGN_BYTES];
            let start = backing.as_ptr().align_offset(SINK_ALIGN_BYTES);
            let stage = &mut backing[start..start + SINK_STAGE_BYTES];
            let (mut filled, mut offset) = (0usize, 0u64);
            for record in queue {
                if direct {
                    let mut rest = &record[..];
                    while !rest.is_empty() {
                        let take = rest.len().min(SINK_STAGE_BYTES - filled);
                        stage[filled..filled + take].copy_from_slice(&rest[..take]);
                        (filled, rest) = (filled + take, &rest[take..]);
                        if filled == SINK_STAGE_BYTES {
                            file.write_all_at(stage, offset)?;
                            (filled, offset) = (0, offset + SINK_STAGE_BYTES as u64);
                        }
                    }
                } else {
                    file.write_all_at(&record, offset)?;
                    offset += record.len() as u64;
                }
                let _ = spare_sender.try_send(record);
            }
            if filled > 0 {
                let padded = filled.div_ceil(SINK_ALIGN_BYTES) * SINK_ALIGN_BYTES;
                stage[filled..padded].fill(0);
                file.write_all_at(&stage[..padded], offset)?;
            }
            file.sync_data()
        });
        Ok(SinkStore {
            records: Mutex::new(Some(records)),
            spares,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, record: Vec<u8>) -> venti::Result<()> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match records.as_ref().map(|records| records.send(record)) {
            Some(Ok(())) => Ok(()),
            _ => Err(venti::Error::Io(std::io::Error::other("sink closed"))),
        }
    }

    /// Write what is queued and fdatasync.
    fn finish(&self) -> std::io::Result<()> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match thread.map(std::thread::JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(std::io::Error::other("sink thread panicked")),
            None => Ok(()),
        }
    }
}

impl BlockStore for SinkStore {
    fn put(&self, _address: &Address, sealed: &[u8], _class: Class) -> venti::Result<()> {
        let mut record = vec![0; venti::PUT_HEADROOM_BYTES];
        record.extend_from_slice(sealed);
        self.send(record)
    }

    fn put_sealed_owned(
        &self,
        _address: &Address,
        buffer: &mut Vec<u8>,
        _class: Class,
    ) -> venti::Result<venti::PutTicket> {
        self.send(std::mem::take(buffer))?;
        Ok(venti::PutTicket::DONE)
    }

    fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.spares.try_recv().ok()
    }

    fn get(&self, address: &Address) -> venti::Result<Vec<u8>> {
        Err(venti::Error::NotFound { address: *address })
    }

    fn contains(&self, _address: &Address) -> venti::Result<bool> {
        Ok(false)
    }
}

/// The bare pipeline: chunk, derive the key, encrypt, hash the block. No compression,
/// padding, store or threads — the floor the real ingest is compared against.
fn bare_pipeline(keys: &EpochKeys, chunker: &Chunker, data: &[u8]) -> u64 {
    let mut sealed = Vec::with_capacity(venti::chunk::CHUNK_BYTES_MAX + 64);
    let mut offset = 0;
    let mut checksum = 0u64;
    for length in chunker.chunk_lengths(data) {
        let chunk = &data[offset..offset + length];
        offset += length;
        let key = seal::content_key(keys, Kind::Data, chunk);
        sealed.clear();
        sealed.extend_from_slice(chunk);
        let cipher = ChaCha20Poly1305::new(key.as_bytes().into());
        if let Ok(tag) = cipher.encrypt_in_place_detached(&Nonce::default(), b"", &mut sealed) {
            sealed.extend_from_slice(&tag);
        }
        checksum ^= u64::from(Address::of(&sealed).0[0]);
    }
    checksum
}

fn primitives(c: &mut Criterion) {
    let keys = keys();
    let block = random(BLOCK_BYTES, 1);
    let mut group = c.benchmark_group("primitives");
    group.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    group.bench_function("blake3_64KiB", |b| {
        b.iter(|| blake3::hash(black_box(&block)))
    });
    group.bench_function("blake3_keyed_64KiB", |b| {
        b.iter(|| blake3::keyed_hash(keys.conv_key(), black_box(&block)))
    });
    let cipher = ChaCha20Poly1305::new(keys.conv_key().into());
    let mut buffer = block.clone();
    group.bench_function("chacha20poly1305_64KiB", |b| {
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(&Nonce::default(), b"", black_box(&mut buffer))
                .ok()
        })
    });
    let mut compressor = Compressor::new();
    group.bench_function("zstd_sample_reject_random_64KiB", |b| {
        b.iter(|| compressor.compress(black_box(&block)).is_some())
    });
    let text_block = text(BLOCK_BYTES, 2);
    group.bench_function("zstd1_text_64KiB", |b| {
        b.iter(|| compressor.compress(black_box(&text_block)).map(<[u8]>::len))
    });
    let mut sealer = Sealer::new();
    let mut sealed = Vec::new();
    group.bench_function("seal_random_64KiB", |b| {
        b.iter(|| ok(sealer.seal_into(&keys, Kind::Data, black_box(&block), &mut sealed)))
    });
    let (block_ref, sealed_block) = ok(seal::seal(&keys, Kind::Data, &block));
    group.bench_function("open_random_64KiB", |b| {
        b.iter(|| {
            ok(seal::open(
                &keys,
                &block_ref,
                black_box(&sealed_block),
                Kind::Data,
            ))
        })
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let keys = keys();
    let chunker = Chunker::new(&keys);
    let bytes = corpus_bytes();
    let corpora = [("random", random(bytes, 3)), ("mixed", mixed(bytes, 4))];
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, data) in &corpora {
        group.bench_function(format!("fastcdc/{name}"), |b| {
            b.iter(|| chunker.chunk_lengths(black_box(data)).count())
        });
        group.bench_function(format!("bare_1core/{name}"), |b| {
            b.iter(|| bare_pipeline(&keys, &chunker, black_box(data)))
        });
        group.bench_function(format!("bare_2core/{name}"), |b| {
            // Two independent halves: the most two cores can do with these primitives.
            let (left, right) = data.split_at(data.len() / 2);
            b.iter(|| {
                std::thread::scope(|scope| {
                    let other = scope.spawn(|| bare_pipeline(&keys, &chunker, left));
                    let mine = bare_pipeline(&keys, &chunker, right);
                    mine ^ other.join().unwrap_or_default()
                })
            })
        });
        for threads in [0, 2] {
            group.bench_function(format!("tree_memory_{threads}threads/{name}"), |b| {
                b.iter_batched(
                    MemoryStore::default,
                    |store| {
                        let mut writer =
                            TreeWriter::new(&store, &keys, Class::Pinned).with_threads(threads);
                        for piece in data.chunks(WRITE_PIECE_BYTES) {
                            ok(writer.write(piece));
                        }
                        black_box(ok(writer.finish()));
                        store
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.bench_function(format!("tree_file_store/{name}"), |b| {
            b.iter_batched(
                || {
                    let dir = match tempfile::tempdir() {
                        Ok(dir) => dir,
                        Err(error) => panic!("bench temp dir: {error}"),
                    };
                    let backend = ok(FileBackend::new(dir.path()));
                    let store = ok(Store::open(Arc::new(backend), StoreOptions::default()));
                    (dir, store)
                },
                |(dir, store)| {
                    let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
                    for piece in data.chunks(WRITE_PIECE_BYTES) {
                        ok(writer.write(piece));
                    }
                    black_box(ok(writer.finish()));
                    ok(store.sync());
                    (dir, store)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// An edited copy of `data`: a few inserts mid-file, one deletion, an append.
fn edited(data: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = data.to_vec();
    for _ in 0..4 {
        let at = rng.random_range(0..out.len());
        let insert = random(rng.random_range(1..2000), rng.random());
        out.splice(at..at, insert);
    }
    let at = rng.random_range(0..out.len() - 10_000);
    out.drain(at..at + rng.random_range(1..10_000));
    out.extend(text(100_000, seed));
    out
}

/// Printed once: for each candidate chunk size, chunking speed and the share of the
/// edited copy's chunk bytes that are new (did not occur in the original).
fn chunk_size_report() {
    let keys = keys();
    let data = mixed(corpus_bytes().min(64 << 20), 5);
    let copy = edited(&data, 6);
    println!("chunk sizes (min/avg/max KiB): new bytes of an edited copy, chunking speed");
    for (min, avg, max) in [
        (4, 16, 64),
        (8, 32, 128),
        (16, 64, 256),
        (32, 128, 512),
        (64, 256, 1024),
    ] {
        let chunker = Chunker::with_sizes(&keys, min << 10, avg << 10, max << 10);
        let chunks = |bytes: &[u8]| -> Vec<(usize, usize)> {
            let mut offset = 0;
            chunker
                .chunk_lengths(bytes)
                .map(|length| {
                    offset += length;
                    (offset - length, length)
                })
                .collect()
        };
        let started = Instant::now();
        let original = chunks(&data);
        let seconds = started.elapsed().as_secs_f64();
        let known: HashSet<&[u8]> = original
            .iter()
            .map(|(start, length)| &data[*start..start + length])
            .collect();
        let new_bytes: usize = chunks(&copy)
            .iter()
            .map(|(start, length)| &copy[*start..start + length])
            .filter(|chunk| !known.contains(chunk))
            .map(<[u8]>::len)
            .sum();
        println!(
            "  {min:>3}/{avg:>3}/{max:>4}: {} chunks, new {:.3} % of copy, {:.0} MB/s",
            original.len(),
            100.0 * new_bytes as f64 / copy.len() as f64,
            data.len() as f64 / seconds / 1e6,
        );
    }
    // The same through the real tree writer and sealed blocks (leaves + pointers).
    let store = MemoryStore::default();
    let write = |bytes: &[u8]| {
        let mut writer = TreeWriter::new(&store, &keys, Class::Pinned);
        for piece in bytes.chunks(WRITE_PIECE_BYTES) {
            ok(writer.write(piece));
        }
        ok(writer.finish())
    };
    write(&data);
    let first = store.stored_bytes();
    let known: HashSet<Address> = store
        .blocks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .keys()
        .copied()
        .collect();
    let root = write(&copy);
    let added = store.stored_bytes() - first;
    // Split what the copy added into leaves and pointer blocks.
    let mut added_pointer_bytes = 0;
    ok(TreeReader::new(&store, &keys).walk(&root, |block_ref| {
        if known.contains(&block_ref.address) {
            return Ok(false);
        }
        let sealed = store.get(&block_ref.address)?;
        if seal::peek_kind(block_ref, &sealed)? == Kind::Pointer {
            added_pointer_bytes += sealed.len();
        }
        Ok(true)
    }));
    println!(
        "tree ingest: original {} MiB stored as {:.1} MiB ({:.1} %); edited copy added {:.3} % \
         of its size, of which pointer blocks {:.3} %",
        data.len() >> 20,
        first as f64 / (1 << 20) as f64,
        100.0 * first as f64 / data.len() as f64,
        100.0 * added as f64 / copy.len() as f64,
        100.0 * added_pointer_bytes as f64 / copy.len() as f64,
    );
}

/// CPU seconds (user + system, all threads) this process has used so far; `None` where
/// `/proc` is not available. Clock ticks are 1/100 s on Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Printed once: wall-clock and CPU-time throughput of the bare pipeline and of tree
/// ingest. On a shared machine wall-clock figures measure the share of the cores the
/// run got; MB per CPU-second measures the work per byte and does not depend on it.
fn cpu_report() {
    let keys = keys();
    let chunker = Chunker::new(&keys);
    let bytes = corpus_bytes();
    let data = random(bytes, 3);
    let sync_seconds = Mutex::new(Vec::new());
    let runs: [(&str, Run<'_>); 12] = [
        ("bare_1core", &|_| {
            black_box(bare_pipeline(&keys, &chunker, &data));
        }),
        ("chunk_seal_1core", &|_| {
            let mut sealer = Sealer::new();
            let mut sealed = Vec::new();
            let mut offset = 0;
            for length in chunker.chunk_lengths(&data) {
                let chunk = &data[offset..offset + length];
                offset += length;
                black_box(ok(sealer.seal_into(&keys, Kind::Data, chunk, &mut sealed)));
            }
        }),
        ("chunk_seal_2core", &|_| {
            // The real block format on two independent halves: the most the tree
            // writer can reach on two cores, with no store and perfect balance.
            let (left, right) = data.split_at(data.len() / 2);
            let chunk_seal = |half: &[u8]| {
                let mut sealer = Sealer::new();
                let mut sealed = Vec::new();
                let mut offset = 0;
                for length in chunker.chunk_lengths(half) {
                    let chunk = &half[offset..offset + length];
                    offset += length;
                    black_box(ok(sealer.seal_into(&keys, Kind::Data, chunk, &mut sealed)));
                }
            };
            std::thread::scope(|scope| {
                let other = scope.spawn(|| chunk_seal(left));
                chunk_seal(right);
                let _ = other.join();
            });
        }),
        ("tree_null_store_0threads", &|_| {
            let mut writer = TreeWriter::new(&NullStore, &keys, Class::Pinned).with_threads(0);
            for piece in data.chunks(WRITE_PIECE_BYTES) {
                ok(writer.write(piece));
            }
            black_box(ok(writer.finish()));
        }),
        ("tree_null_store_2threads", &|_| {
            let mut writer = TreeWriter::new(&NullStore, &keys, Class::Pinned).with_threads(2);
            for piece in data.chunks(WRITE_PIECE_BYTES) {
                ok(writer.write(piece));
            }
            black_box(ok(writer.finish()));
        }),
        ("bare_2core", &|_| {
            let (left, right) = data.split_at(data.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| bare_pipeline(&keys, &chunker, left));
                black_box(bare_pipeline(&keys, &chunker, right));
                black_box(other.join().unwrap_or_default());
            });
        }),
        ("tree_memory_2threads", &|_| {
            let store = MemoryStore::default();
            let mut writer = TreeWriter::new(&store, &keys, Class::Pinned).with_threads(2);
            for piece in data.chunks(WRITE_PIECE_BYTES) {
                ok(writer.write(piece));
            }
            black_box(ok(writer.finish()));
        }),
        ("tree_sink_buffered", &|window| {
            tree_into_sink(&keys, &data, false, window)
        }),
        ("tree_sink_direct", &|window| {
            tree_into_sink(&keys, &data, true, window)
        }),
        ("tree_file_store_buffered", &|window| {
            tree_into_file_store(&keys, &data, false, None, None, window)
        }),
        ("tree_file_store", &|window| {
            tree_into_file_store(&keys, &data, true, None, Some(&sync_seconds), window)
        }),
        ("tree_file_store_segments", &|window| {
            tree_into_file_store(&keys, &data, true, Some(SEGMENT_BYTES), None, window)
        }),
    ];
    println!(
        "random {} MiB: wall MB/s, MB per CPU-second (median of 5)",
        bytes >> 20
    );
    // `KITH_CPU_RUNS=bare_2core,tree_file_store` measures only the runs named.
    let only = std::env::var("KITH_CPU_RUNS").ok();
    for (name, run) in runs {
        if let Some(only) = &only
            && !only.split(',').any(|wanted| wanted == name)
        {
            continue;
        }
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..5 {
            let window = Window::default();
            let before = Window::now();
            run(&window);
            let after = Window::now();
            let (start, stop) = (window.start.get(), window.stop.get());
            let ((started, cpu_before), (stopped, cpu_after)) =
                (start.unwrap_or(before), stop.unwrap_or(after));
            let seconds = stopped.duration_since(started).as_secs_f64();
            let cpu_used = cpu_after - cpu_before;
            wall.push(bytes as f64 / seconds / 1e6);
            cpu.push(bytes as f64 / cpu_used.max(0.01) / 1e6);
        }
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "  {name:<24} {:>6.0} MB/s wall, {:>6.0} MB/CPU-s, {:.2} cores busy",
            wall[2],
            cpu[2],
            wall[2] / cpu[2]
        );
    }
    if let Ok(mut seconds) = sync_seconds.lock() {
        seconds.sort_by(f64::total_cmp);
        if let Some(median) = seconds.get(seconds.len() / 2) {
            println!(
                "  tree_file_store: final sync {:.0} ms (median)",
                median * 1e3
            );
        }
    }
}

/// One run of the CPU report.
type Run<'a> = &'a dyn Fn(&Window);

/// The part of a CPU-report run that is measured: the whole run, unless the run marks
/// its own start and stop (creating and deleting a store's directory is not ingest, as
/// in the criterion benches, which time only the ingest and its sync).
#[derive(Default)]
struct Window {
    start: std::cell::Cell<Option<(Instant, f64)>>,
    stop: std::cell::Cell<Option<(Instant, f64)>>,
}

impl Window {
    fn now() -> (Instant, f64) {
        (Instant::now(), cpu_seconds().unwrap_or_default())
    }

    fn start(&self) {
        self.start.set(Some(Window::now()));
    }

    fn stop(&self) {
        self.stop.set(Some(Window::now()));
    }
}

/// Tree ingest of `data` into a file store in a temporary directory of
/// `KITH_BENCH_DIR` (default: the system temp directory), its arenas written through
/// the staged `O_DIRECT` path or (`direct_io` false) through the page cache; the final
/// sync's duration goes to `sync_seconds`. Measured from the first write through the
/// sync.
fn tree_into_file_store(
    keys: &EpochKeys,
    data: &[u8],
    direct_io: bool,
    segment_bytes: Option<usize>,
    sync_seconds: Option<&Mutex<Vec<f64>>>,
    window: &Window,
) {
    let dir = match bench_dir() {
        Ok(dir) => dir,
        Err(error) => panic!("bench temp dir: {error}"),
    };
    let backend = ok(FileBackend::new(dir.path())).with_direct_io(direct_io);
    let store = ok(Store::open(Arc::new(backend), StoreOptions::default()));
    window.start();
    let mut writer = TreeWriter::new(&store, keys, Class::Pinned);
    if let Some(segment_bytes) = segment_bytes {
        writer = writer.with_segments(segment_bytes);
    }
    for piece in data.chunks(WRITE_PIECE_BYTES) {
        ok(writer.write(piece));
    }
    black_box(ok(writer.finish()));
    let started = Instant::now();
    ok(store.sync());
    window.stop();
    if let Some(Ok(mut seconds)) = sync_seconds.map(Mutex::lock) {
        seconds.push(started.elapsed().as_secs_f64());
    }
}

fn bench_dir() -> std::io::Result<tempfile::TempDir> {
    match std::env::var_os("KITH_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
}

/// Tree ingest of `data` into a [`SinkStore`] (buffered or `O_DIRECT`) in a temporary
/// directory of `KITH_BENCH_DIR` (default: the system temp directory, which must not be
/// a tmpfs for `O_DIRECT`). Measured from the first write through the sink's sync.
fn tree_into_sink(keys: &EpochKeys, data: &[u8], direct: bool, window: &Window) {
    let dir = match bench_dir() {
        Ok(dir) => dir,
        Err(error) => panic!("bench temp dir: {error}"),
    };
    let sink = match SinkStore::new(&dir.path().join("arena"), direct) {
        Ok(sink) => sink,
        Err(error) => panic!("bench sink: {error}"),
    };
    window.start();
    let mut writer = TreeWriter::new(&sink, keys, Class::Pinned);
    for piece in data.chunks(WRITE_PIECE_BYTES) {
        ok(writer.write(piece));
    }
    black_box(ok(writer.finish()));
    if let Err(error) = sink.finish() {
        panic!("bench sink: {error}");
    }
    window.stop();
}

fn report(_: &mut Criterion) {
    if std::env::var_os("KITH_CHUNK_REPORT").is_some() {
        chunk_size_report();
    }
    if std::env::var_os("KITH_CPU_REPORT").is_some() {
        cpu_report();
    }
}

criterion_group!(benches, report, primitives, pipeline);
criterion_main!(benches);
