//! CPU cost of reading a tree back from a real `Store` on disk.
//!
//! One file store holds a 256 MiB incompressible tree and a 64 MiB text-like
//! (compressible) tree, synced; the arenas stay in the page cache, so the figures
//! are the reader's CPU (record reads, address and key-commitment hashes, decryption,
//! copies), not the disk's. Each iteration reads a whole tree the way the mount reads
//! a file: `read_range` of 1 MiB pieces in order, on one thread.
//!
//! `cargo bench -p venti --bench read`. `KITH_BENCH_DIR` puts the store on a given
//! disk (default: the system temp directory). Uses only venti's public API, so the
//! same file builds against older revisions for before/after figures.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use venti::backend::FileBackend;
use venti::keys::EpochKeys;
use venti::tree::{TreeReader, TreeWriter};
use venti::{BlockRef, Class, Store, StoreOptions};

const INCOMPRESSIBLE_BYTES: usize = 256 << 20;
const TEXT_BYTES: usize = 64 << 20;
/// What one read of the mount's read-ahead asks of the tree reader (a 4 MiB window
/// opened by 4 threads: 1 MiB each).
const PIECE_BYTES: u64 = 1 << 20;

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

/// Text-like bytes (words and numbers): compresses a few times with zstd.
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
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        out.extend_from_slice(word.as_bytes());
        if state.is_multiple_of(7) {
            out.extend_from_slice((state % 100_000).to_string().as_bytes());
        }
        out.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(bytes);
    out
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

fn write_tree(store: &Store, keys: &EpochKeys, data: &[u8]) -> BlockRef {
    let mut writer = TreeWriter::new(store, keys, Class::Pinned);
    for piece in data.chunks(1 << 20) {
        ok(writer.write(piece));
    }
    ok(writer.finish())
}

/// Read all of `root` in `PIECE_BYTES` pieces; returns the bytes read.
fn read_in_pieces(reader: &TreeReader<'_>, root: &BlockRef) -> u64 {
    let mut offset = 0;
    while offset < root.length {
        let piece = ok(reader.read_range(root, offset, PIECE_BYTES));
        assert!(!piece.is_empty(), "short read at {offset}");
        offset += piece.len() as u64;
    }
    offset
}

fn tree_read(c: &mut Criterion) {
    let keys = EpochKeys::derive(&[7; 32], &[1; 16], 0);
    let dir = temp_dir();
    let store = ok(FileBackend::new(dir.path())
        .and_then(|backend| Store::open(Arc::new(backend), StoreOptions::default())));
    let incompressible = random(INCOMPRESSIBLE_BYTES, 99);
    let incompressible_root = write_tree(&store, &keys, &incompressible);
    let compressible = text(TEXT_BYTES, 5);
    let text_root = write_tree(&store, &keys, &compressible);
    ok(store.sync());
    // Once, untimed: the trees read back as written (and the arenas are in the page
    // cache for the timed reads).
    let reader = TreeReader::new(&store, &keys);
    assert!(ok(reader.read_all(&incompressible_root)) == incompressible);
    assert!(ok(reader.read_all(&text_root)) == compressible);
    drop((incompressible, compressible));

    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(INCOMPRESSIBLE_BYTES as u64));
    group.bench_function("256 MiB incompressible tree, 1 MiB pieces", |b| {
        b.iter(|| read_in_pieces(&reader, &incompressible_root));
    });
    group.throughput(Throughput::Bytes(TEXT_BYTES as u64));
    group.bench_function("64 MiB text tree, 1 MiB pieces", |b| {
        b.iter(|| read_in_pieces(&reader, &text_root));
    });
    group.finish();
}

criterion_group!(benches, tree_read);
criterion_main!(benches);
