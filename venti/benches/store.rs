//! Store throughput and whole-ingest figures on the file backend.
//!
//! - `store/…`: puts of 256 MiB of 64 KiB sealed-size blocks (+ the final sync; also
//!   without the sync and without put-time hashing, to separate the store's own cost
//!   from the disk's), the same bytes written straight to a file with one fdatasync
//!   (the disk's ceiling in the same run), and gets on one and on two threads.
//! - `ingest/…`: `TreeWriter` chunk + seal + store of 256 MiB of incompressible data
//!   into the file store (+ sync), and reading it back with `TreeReader`.
//! - Printed once before the timed groups: the dedup of a tree — ingest a mixed tree of
//!   files (`KITH_BENCH_TREE_MIB`, default 1024), then a copy with bytes inserted
//!   mid-file in a few large files, appends and deleted files, and report the arena
//!   bytes the second ingest added as a percentage of its size.
//!
//! `cargo bench -p venti --bench store`. `KITH_BENCH_DIR` puts the stores on a given
//! disk (default: the system temp directory); `KITH_BENCH_NO_DEDUP=1` skips the dedup
//! report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use venti::backend::FileBackend;
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{Address, BlockRef, Class, Store, StoreOptions};

const BLOCK_BYTES: usize = 64 << 10;
const TOTAL_BYTES: usize = 256 << 20;

fn ok<T>(result: venti::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("bench: {error}"),
    }
}

/// xorshift bytes: incompressible, fast to make.
fn random(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// Text-like bytes (words, numbers, newlines): compresses a few times with zstd.
fn text(bytes: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "store", "arena", "record", "index", "sync", "block", "let", "mut", "fn", "if",
        "return", "error", "offset", "length", "{", "}", "(", ");", "//", "=",
    ];
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut out = Vec::with_capacity(bytes + 32);
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        match state % 12 {
            0 => out.extend_from_slice(format!("{} ", state >> 40).as_bytes()),
            1 => out.push(b'\n'),
            _ => {
                out.extend_from_slice(WORDS[(state >> 8) as usize % WORDS.len()].as_bytes());
                out.push(b' ');
            }
        }
    }
    out.truncate(bytes);
    out
}

fn blocks() -> Vec<(Address, Vec<u8>)> {
    (0..TOTAL_BYTES / BLOCK_BYTES)
        .map(|n| {
            let data = random(BLOCK_BYTES, n as u64 + 1);
            (Address::of(&data), data)
        })
        .collect()
}

fn temp_dir() -> tempfile::TempDir {
    let result = match std::env::var_os("KITH_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    };
    match result {
        Ok(dir) => dir,
        Err(error) => panic!("bench temp dir: {error}"),
    }
}

fn open(dir: &tempfile::TempDir, options: StoreOptions) -> Store {
    ok(FileBackend::new(dir.path()).and_then(|backend| Store::open(Arc::new(backend), options)))
}

fn keys() -> EpochKeys {
    EpochKeys::derive(&[0x42; 32], &[0x17; 16], 1)
}

/// Time `body` on a fresh store per iteration; setup and teardown are not timed.
fn per_fresh_store(
    iterations: u64,
    options: &StoreOptions,
    mut body: impl FnMut(&Store),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    for _ in 0..iterations {
        let dir = temp_dir();
        let store = open(&dir, options.clone());
        let start = Instant::now();
        body(&store);
        elapsed += start.elapsed();
    }
    elapsed
}

fn store_throughput(c: &mut Criterion) {
    let blocks = blocks();
    let mut group = c.benchmark_group("store");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(TOTAL_BYTES as u64));

    group.bench_function("raw file: 64 KiB writes + fdatasync (disk ceiling)", |b| {
        use std::io::Write;
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let dir = temp_dir();
                let start = Instant::now();
                let written = std::fs::File::create(dir.path().join("raw")).and_then(|mut file| {
                    for (_, data) in &blocks {
                        file.write_all(data)?;
                    }
                    file.sync_data()
                });
                if let Err(error) = written {
                    panic!("raw write: {error}");
                }
                elapsed += start.elapsed();
            }
            elapsed
        });
    });

    let defaults = StoreOptions::default();
    group.bench_function("put 64 KiB blocks + sync", |b| {
        b.iter_custom(|iterations| {
            per_fresh_store(iterations, &defaults, |store| {
                for (address, data) in &blocks {
                    ok(store.put(address, data, Class::Pinned));
                }
                ok(store.sync());
            })
        });
    });
    group.bench_function("put 64 KiB blocks, no sync", |b| {
        b.iter_custom(|iterations| {
            per_fresh_store(iterations, &defaults, |store| {
                for (address, data) in &blocks {
                    ok(store.put(address, data, Class::Pinned));
                }
            })
        });
    });
    let unverified = StoreOptions {
        verify_puts: false,
        ..StoreOptions::default()
    };
    group.bench_function("put 64 KiB blocks + sync, no put-time hash", |b| {
        b.iter_custom(|iterations| {
            per_fresh_store(iterations, &unverified, |store| {
                for (address, data) in &blocks {
                    ok(store.put(address, data, Class::Pinned));
                }
                ok(store.sync());
            })
        });
    });

    let dir = temp_dir();
    let store = open(&dir, StoreOptions::default());
    for (address, data) in &blocks {
        ok(store.put(address, data, Class::Pinned));
    }
    ok(store.sync());
    group.bench_function("get 64 KiB blocks, 1 thread", |b| {
        b.iter(|| {
            for (address, _) in &blocks {
                ok(store.get(address));
            }
        });
    });
    group.bench_function("get 64 KiB blocks, 2 threads", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for half in blocks.chunks(blocks.len() / 2) {
                    let store = &store;
                    scope.spawn(move || {
                        for (address, _) in half {
                            ok(store.get(address));
                        }
                    });
                }
            });
        });
    });
    group.finish();
}

fn ingest(store: &Store, keys: &EpochKeys, data: &[u8]) -> BlockRef {
    let mut writer = TreeWriter::new(store, keys, Class::Pinned);
    for piece in data.chunks(1 << 20) {
        ok(writer.write(piece));
    }
    ok(writer.finish())
}

fn tree_ingest(c: &mut Criterion) {
    let keys = keys();
    let data = random(TOTAL_BYTES, 99);
    let mut group = c.benchmark_group("ingest");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(TOTAL_BYTES as u64));
    group.bench_function(
        "tree ingest 256 MiB incompressible into the file store + sync",
        |b| {
            b.iter_custom(|iterations| {
                per_fresh_store(iterations, &StoreOptions::default(), |store| {
                    ingest(store, &keys, &data);
                    ok(store.sync());
                })
            });
        },
    );
    let dir = temp_dir();
    let store = open(&dir, StoreOptions::default());
    let root = ingest(&store, &keys, &data);
    ok(store.sync());
    group.bench_function(
        "tree read back 256 MiB incompressible from the file store",
        |b| {
            b.iter(|| {
                let back = ok(TreeReader::new(&store, &keys).read_all(&root));
                assert_eq!(back.len(), data.len());
            });
        },
    );
    group.finish();
}

/// One file of the dedup tree: its name-free content.
fn tree_files(total_bytes: usize) -> Vec<Vec<u8>> {
    // A few large files, some medium ones, many small ones; half text, half random.
    let mut files = Vec::new();
    let mut left = total_bytes;
    let mut n = 0u64;
    let sizes = [96 << 20, 16 << 20, 1 << 20, 64 << 10, 4 << 10];
    let shares = [0.60, 0.25, 0.10, 0.04, 0.01];
    for (size, share) in sizes.iter().zip(shares) {
        let budget = (total_bytes as f64 * share) as usize;
        let mut used = 0;
        while used + size <= budget && left >= *size {
            n += 1;
            let content = if n.is_multiple_of(2) {
                text(*size, n)
            } else {
                random(*size, n)
            };
            used += size;
            left -= size;
            files.push(content);
        }
    }
    files
}

/// The edited copy: inserts mid-file in three large files, appends to five files,
/// two files deleted.
fn edited_tree(files: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut copy: Vec<Vec<u8>> = files.to_vec();
    for (k, file) in copy.iter_mut().take(3).enumerate() {
        let at = file.len() / 2 + k * 7919;
        let insert = random(100 + k * 300, 7000 + k as u64);
        file.splice(at..at, insert);
    }
    let len = copy.len();
    for (k, file) in copy
        .iter_mut()
        .skip(len / 3)
        .step_by(len / 6 + 1)
        .take(5)
        .enumerate()
    {
        file.extend(text(10_000 + k * 5000, 8000 + k as u64));
    }
    copy.remove(len - 1);
    copy.remove(len / 2);
    copy
}

fn dedup_report() {
    let tree_mib = std::env::var("KITH_BENCH_TREE_MIB")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(1024);
    let keys = keys();
    let files = tree_files(tree_mib << 20);
    let copy = edited_tree(&files);
    let dir = temp_dir();
    let store = open(&dir, StoreOptions::default());
    let original_bytes: usize = files.iter().map(Vec::len).sum();
    let start = Instant::now();
    for file in &files {
        ingest(&store, &keys, file);
    }
    ok(store.sync());
    let first = start.elapsed();
    let after_first = ok(store.stats()).arena_bytes;
    let copy_bytes: usize = copy.iter().map(Vec::len).sum();
    let start = Instant::now();
    for file in &copy {
        ingest(&store, &keys, file);
    }
    ok(store.sync());
    let second = start.elapsed();
    let after_second = ok(store.stats()).arena_bytes;
    let added = after_second - after_first;
    println!(
        "dedup: tree of {} files, {:.1} MiB stored as {:.1} MiB ({:.1} %) in {:.2} s ({:.0} MiB/s); \
         edited copy of {:.1} MiB added {:.3} MiB = {:.3} % of its size in {:.2} s",
        files.len(),
        original_bytes as f64 / 1048576.0,
        after_first as f64 / 1048576.0,
        100.0 * after_first as f64 / original_bytes as f64,
        first.as_secs_f64(),
        original_bytes as f64 / 1048576.0 / first.as_secs_f64(),
        copy_bytes as f64 / 1048576.0,
        added as f64 / 1048576.0,
        100.0 * added as f64 / copy_bytes as f64,
        second.as_secs_f64(),
    );
}

fn report(_: &mut Criterion) {
    // Skippable when profiling a single timed benchmark.
    if std::env::var_os("KITH_BENCH_NO_DEDUP").is_none() {
        dedup_report();
    }
}

criterion_group!(benches, report, store_throughput, tree_ingest);
criterion_main!(benches);
