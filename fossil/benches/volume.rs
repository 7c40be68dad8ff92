//! Volume throughput without FUSE: small-file creates and sequential writes.
//!
//! `cargo bench -p fossil --bench volume`. `mem` runs put content in an in-memory map
//! (fossil's own overhead: namespace, log, write buffer); `venti` runs use the real
//! sealed store under the volume directory, as `Volume::open` does.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fossil::content::{ContentStore, MemContent};
use fossil::volume::VolumeOptions;
use fossil::{Caller, InodeNo, Volume};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
const FILES: u64 = 10_000;

#[allow(clippy::unwrap_used)]
fn open(dir: &tempfile::TempDir, store: &str) -> Volume {
    if store == "venti" {
        return Volume::open(dir.path()).unwrap();
    }
    let content: Arc<dyn ContentStore> = Arc::new(Arc::new(MemContent::new()));
    let options = VolumeOptions {
        content: Some(content),
        ..VolumeOptions::default()
    };
    Volume::open_with(dir.path(), options).unwrap()
}

#[allow(clippy::unwrap_used)]
fn small_files(c: &mut Criterion) {
    let mut group = c.benchmark_group("volume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(FILES));
    for store in ["mem", "venti"] {
        group.bench_function(format!("create_write_close_10k_files_{store}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let volume = open(&dir, store);
                    let parent = volume
                        .mkdir(InodeNo::ROOT, "d".as_ref(), 0o755, ME)
                        .unwrap()
                        .ino;
                    (dir, volume, parent)
                },
                |(dir, volume, parent)| {
                    for index in 0..FILES {
                        let name = OsString::from(format!("file-{index}"));
                        let (attr, handle) = volume.create(parent, &name, 0o644, ME, true).unwrap();
                        volume
                            .write(attr.ino, handle, 0, b"a small file's content\n")
                            .unwrap();
                        volume.flush(attr.ino, handle).unwrap();
                        volume.release(attr.ino, handle).unwrap();
                    }
                    volume.sync_all().unwrap();
                    (dir, volume)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

#[allow(clippy::unwrap_used)]
fn sequential_write(c: &mut Criterion) {
    const BYTES: u64 = 256 << 20;
    const PIECE: usize = 128 << 10;
    // Incompressible, like the benchmark files.
    let mut data = vec![0u8; BYTES as usize];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut data {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut group = c.benchmark_group("volume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(BYTES));
    for store in ["mem", "venti"] {
        group.bench_function(format!("sequential_write_256MiB_fsync_{store}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let volume = open(&dir, store);
                    (dir, volume)
                },
                |(dir, volume)| {
                    let (attr, handle) = volume
                        .create(InodeNo::ROOT, "big".as_ref(), 0o644, ME, true)
                        .unwrap();
                    let mut offset = 0;
                    while offset < BYTES {
                        let piece = &data[offset as usize..offset as usize + PIECE];
                        volume.write(attr.ino, handle, offset, piece).unwrap();
                        offset += PIECE as u64;
                    }
                    volume.fsync(attr.ino, false).unwrap();
                    volume.release(attr.ino, handle).unwrap();
                    (dir, volume)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Sequential 128 KiB reads of a 256 MiB file from a freshly opened volume (venti
/// store; the arenas may still be in the OS page cache).
#[allow(clippy::unwrap_used)]
fn sequential_read(c: &mut Criterion) {
    const BYTES: u64 = 256 << 20;
    const PIECE: u32 = 128 << 10;
    let dir = tempfile::tempdir().unwrap();
    let ino = {
        let volume = open(&dir, "venti");
        let mut data = vec![0u8; 1 << 20];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (attr, handle) = volume
            .create(InodeNo::ROOT, "big".as_ref(), 0o644, ME, true)
            .unwrap();
        let mut offset = 0;
        while offset < BYTES {
            for byte in &mut data {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            volume.write(attr.ino, handle, offset, &data).unwrap();
            offset += data.len() as u64;
        }
        volume.release(attr.ino, handle).unwrap();
        attr.ino
    };
    let mut group = c.benchmark_group("volume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(BYTES));
    group.bench_function("sequential_read_256MiB_venti", |b| {
        b.iter_batched(
            || open(&dir, "venti"),
            |volume| {
                let handle = volume.open_file(ino).unwrap();
                let mut offset = 0;
                while offset < BYTES {
                    let bytes = volume.read(ino, handle, offset, PIECE).unwrap();
                    assert_eq!(bytes.len(), PIECE as usize);
                    offset += u64::from(PIECE);
                }
                volume.release(ino, handle).unwrap();
                volume
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, small_files, sequential_write, sequential_read);
criterion_main!(benches);
