//! Volume throughput without FUSE: small-file creates and sequential writes.
//!
//! `cargo bench -p fossil --bench volume`. Content goes to the in-memory store, so
//! these figures are fossil's own overhead (namespace, log, write buffer).

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

fn open(dir: &tempfile::TempDir) -> Volume {
    let content: Arc<dyn ContentStore> = Arc::new(Arc::new(MemContent::new()));
    let options = VolumeOptions {
        content: Some(content),
        ..VolumeOptions::default()
    };
    #[allow(clippy::unwrap_used)]
    Volume::open_with(dir.path(), options).unwrap()
}

#[allow(clippy::unwrap_used)]
fn small_files(c: &mut Criterion) {
    let mut group = c.benchmark_group("volume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(FILES));
    group.bench_function("create_write_close_10k_files", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let volume = open(&dir);
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
    group.finish();
}

#[allow(clippy::unwrap_used)]
fn sequential_write(c: &mut Criterion) {
    const BYTES: u64 = 256 << 20;
    let piece = vec![0x5au8; 128 << 10];
    let mut group = c.benchmark_group("volume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(BYTES));
    group.bench_function("sequential_write_256MiB_fsync", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let volume = open(&dir);
                (dir, volume)
            },
            |(dir, volume)| {
                let (attr, handle) = volume
                    .create(InodeNo::ROOT, "big".as_ref(), 0o644, ME, true)
                    .unwrap();
                let mut offset = 0;
                while offset < BYTES {
                    volume.write(attr.ino, handle, offset, &piece).unwrap();
                    offset += piece.len() as u64;
                }
                volume.fsync(attr.ino, false).unwrap();
                volume.release(attr.ino, handle).unwrap();
                (dir, volume)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, small_files, sequential_write);
criterion_main!(benches);
