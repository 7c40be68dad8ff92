//! The replicated path's cost over an in-process agreement ([`MemGroup`]), next to the
//! single-device path on the same in-memory content store.
//!
//! `cargo bench -p fossil --bench replicated`. What it isolates is fossil's own work:
//! the pending layer (apply, roll back, apply again once committed), proposing at
//! commit points, waiting for the commit at close, and the read barrier at open.
//! A real agreement adds its fsync and a network round trip per commit point.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fossil::agreement::{Agreement, MemGroup};
use fossil::content::{ContentStore, MemContent};
use fossil::volume::VolumeOptions;
use fossil::{Caller, InodeNo, Volume};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
const FILES: u64 = 2_000;

#[allow(clippy::unwrap_used)]
fn open(dir: &tempfile::TempDir, replicated: bool) -> Volume {
    let content: Arc<dyn ContentStore> = Arc::new(Arc::new(MemContent::new()));
    let agreement: Option<Arc<dyn Agreement>> = if replicated {
        Some(MemGroup::new().member(1))
    } else {
        None
    };
    let options = VolumeOptions {
        content: Some(content),
        agreement,
        ..VolumeOptions::default()
    };
    Volume::open_with(dir.path(), options).unwrap()
}

fn mode(replicated: bool) -> &'static str {
    if replicated { "replicated" } else { "local" }
}

/// Create, write, close: each close of a written file is a commit point.
#[allow(clippy::unwrap_used)]
fn small_files(c: &mut Criterion) {
    let mut group = c.benchmark_group("replicated");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(FILES));
    for replicated in [false, true] {
        group.bench_function(
            format!("create_write_close_2k_files_{}", mode(replicated)),
            |b| {
                b.iter_batched(
                    || {
                        let dir = tempfile::tempdir().unwrap();
                        let volume = open(&dir, replicated);
                        let parent = volume
                            .mkdir(InodeNo::ROOT, "d".as_ref(), 0o755, ME)
                            .unwrap()
                            .ino;
                        (dir, volume, parent)
                    },
                    |(dir, volume, parent)| {
                        for index in 0..FILES {
                            let name = OsString::from(format!("file-{index}"));
                            let (attr, handle) =
                                volume.create(parent, &name, 0o644, ME, true).unwrap();
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
            },
        );
    }
    group.finish();
}

/// Metadata ops with no commit point of their own (mkdir): proposed in batches.
#[allow(clippy::unwrap_used)]
fn mkdirs(c: &mut Criterion) {
    let mut group = c.benchmark_group("replicated");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(FILES));
    for replicated in [false, true] {
        group.bench_function(format!("mkdir_2k_{}", mode(replicated)), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let volume = open(&dir, replicated);
                    (dir, volume)
                },
                |(dir, volume)| {
                    for index in 0..FILES {
                        let name = OsString::from(format!("dir-{index}"));
                        volume.mkdir(InodeNo::ROOT, &name, 0o755, ME).unwrap();
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

/// open + release of an existing file: the replicated open runs a read barrier.
#[allow(clippy::unwrap_used)]
fn open_barrier(c: &mut Criterion) {
    let mut group = c.benchmark_group("replicated");
    group.throughput(Throughput::Elements(1));
    for replicated in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let volume = open(&dir, replicated);
        let (attr, handle) = volume
            .create(InodeNo::ROOT, "f".as_ref(), 0o644, ME, true)
            .unwrap();
        volume.write(attr.ino, handle, 0, b"content").unwrap();
        volume.release(attr.ino, handle).unwrap();
        volume.sync_all().unwrap();
        group.bench_function(format!("open_release_{}", mode(replicated)), |b| {
            b.iter(|| {
                let handle = volume.open_file(attr.ino).unwrap();
                volume.release(attr.ino, handle).unwrap();
            });
        });
    }
    group.finish();
}

/// A device added later opens on a log of 10,000 mkdirs and replays all of it in one
/// run: without a progress hook, and with one that stores the applied end the way the
/// daemon's does (`VolumeOptions::apply_progress`).
#[allow(clippy::unwrap_used)]
fn replay_at_open(c: &mut Criterion) {
    const DIRS: u64 = 10_000;
    let group_log = MemGroup::new();
    let content = Arc::new(MemContent::new());
    let writer_dir = tempfile::tempdir().unwrap();
    let writer = Volume::open_with(
        writer_dir.path(),
        VolumeOptions {
            content: Some(Arc::new(Arc::clone(&content))),
            agreement: Some(group_log.member(1)),
            checkpoint_ops: 0,
            ..VolumeOptions::default()
        },
    )
    .unwrap();
    for index in 0..DIRS {
        let name = OsString::from(format!("dir-{index}"));
        writer.mkdir(InodeNo::ROOT, &name, 0o755, ME).unwrap();
    }
    writer.sync_all().unwrap();
    let mut group = c.benchmark_group("replicated");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(DIRS));
    for hooked in [false, true] {
        let name = if hooked { "with_progress" } else { "no_hook" };
        group.bench_function(format!("replay_10k_at_open_{name}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let hook: Option<fossil::volume::ApplyProgressHook> = hooked.then(|| {
                        let applied = Arc::clone(&applied);
                        Arc::new(move |progress: fossil::volume::ApplyProgress| {
                            applied.fetch_max(
                                progress.applied_end,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }) as fossil::volume::ApplyProgressHook
                    });
                    let volume = Volume::open_with(
                        dir.path(),
                        VolumeOptions {
                            device: fossil::op::DeviceId(2),
                            content: Some(Arc::new(Arc::clone(&content))),
                            agreement: Some(group_log.member(2)),
                            create_if_empty: false,
                            checkpoint_ops: 0,
                            background: false,
                            apply_progress: hook,
                            ..VolumeOptions::default()
                        },
                    )
                    .unwrap();
                    (dir, volume)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, small_files, mkdirs, open_barrier, replay_at_open);
criterion_main!(benches);
