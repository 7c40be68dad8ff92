//! A small edit of a large tree: the tree editor against a full rewrite.
//!
//! - `edit/…`: one byte changed in a 256 MiB tree of incompressible data in the file
//!   store, then the store synced — through `TreeEditor` (re-chunks around the byte,
//!   seals a leaf or two and the pointer path) and through `TreeWriter` over all 256
//!   MiB (chunks and seals everything; the store finds all but the new blocks already
//!   held). Both give the same root (checked once before timing). Each iteration
//!   changes another byte, so every edit seals something new.
//!
//! `cargo bench -p venti --bench edit`. `KITH_BENCH_DIR` puts the store on a given disk
//! (default: the system temp directory).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use venti::backend::FileBackend;
use venti::keys::EpochKeys;
use venti::tree::{EditOutcome, TreeEditor, TreeWriter};
use venti::{BlockRef, Class, Store, StoreOptions};

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

fn rewrite(store: &Store, keys: &EpochKeys, data: &[u8]) -> BlockRef {
    let mut writer = TreeWriter::new(store, keys, Class::Pinned);
    for piece in data.chunks(1 << 20) {
        ok(writer.write(piece));
    }
    ok(writer.finish())
}

fn edit(store: &Store, keys: &EpochKeys, old: &BlockRef, data: &[u8], at: usize) -> BlockRef {
    let editor = TreeEditor::new(store, keys, Class::Pinned);
    let mut read = |offset: u64, len: usize| -> venti::Result<Vec<u8>> {
        let start = offset as usize;
        Ok(data[start..start + len].to_vec())
    };
    match ok(editor.edit(
        old,
        data.len() as u64,
        &[(at as u64, at as u64 + 1)],
        &mut read,
    )) {
        EditOutcome::Edited { root, .. } => root,
        other => panic!("bench: {other:?}"),
    }
}

fn one_byte_edit(c: &mut Criterion) {
    let keys = EpochKeys::derive(&[0x42; 32], &[0x17; 16], 1);
    let dir = temp_dir();
    let store = ok(FileBackend::new(dir.path())
        .and_then(|backend| Store::open(Arc::new(backend), StoreOptions::default())));
    let mut data = random(TOTAL_BYTES, 7);
    let old = rewrite(&store, &keys, &data);
    ok(store.sync());
    // The property the editor is built on, once, untimed.
    data[TOTAL_BYTES / 3] ^= 0x5a;
    assert_eq!(
        edit(&store, &keys, &old, &data, TOTAL_BYTES / 3),
        rewrite(&store, &keys, &data)
    );
    let mut group = c.benchmark_group("edit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    let mut at = 1usize;
    group.bench_function("1-byte edit of a 256 MiB tree + sync, tree editor", |b| {
        b.iter(|| {
            at = (at * 7_919 + 104_729) % TOTAL_BYTES;
            data[at] ^= 1;
            let root = edit(&store, &keys, &old, &data, at);
            ok(store.sync());
            data[at] ^= 1;
            root
        });
    });
    group.bench_function("1-byte edit of a 256 MiB tree + sync, full rewrite", |b| {
        b.iter(|| {
            at = (at * 7_919 + 104_729) % TOTAL_BYTES;
            data[at] ^= 1;
            let root = rewrite(&store, &keys, &data);
            ok(store.sync());
            data[at] ^= 1;
            root
        });
    });
    group.finish();
}

criterion_group!(benches, one_byte_edit);
criterion_main!(benches);
