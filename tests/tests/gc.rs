//! `kith gc` on a mounted store: a deleted file's blocks leave the disk; what files
//! and snapshots still hold stays readable, and the store verifies.

use std::fs;
use std::path::Path;

use kith_tests::{Kith, pattern, skip_without_fuse};

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(next) = dirs.pop() {
        for entry in fs::read_dir(next)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[test]
fn gc_frees_a_deleted_file_and_keeps_what_files_and_snapshots_hold() -> anyhow::Result<()> {
    if skip_without_fuse("gc_frees_a_deleted_file_and_keeps_what_files_and_snapshots_hold") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;
    let kept = pattern(1, 2 << 20);
    let in_snapshot = pattern(2, 3 << 20);
    let doomed = pattern(3, 8 << 20);
    fs::write(kith.path("kept"), &kept)?;
    fs::write(kith.path("in-snapshot"), &in_snapshot)?;
    kith.ok(["snapshot", "before"])?;
    fs::remove_file(kith.path("in-snapshot"))?;
    fs::write(kith.path("doomed"), &doomed)?;
    fs::File::open(kith.path("doomed"))?.sync_all()?;
    let blocks = kith.store().join("blocks");
    let before = disk_bytes(&blocks)?;
    fs::remove_file(kith.path("doomed"))?;

    let out = kith.ok(["gc"])?;
    assert!(out.contains("blocks removed"), "{out}");
    let after = disk_bytes(&blocks)?;
    assert!(
        after + (6 << 20) < before,
        "8 MiB deleted, the store went from {before} to {after} bytes: {out}"
    );
    assert!(fs::read(kith.path("kept"))? == kept);
    assert!(fs::read(kith.path(".snapshots/before/in-snapshot"))? == in_snapshot);
    // A second round finds nothing more to do.
    let again = kith.ok(["gc"])?;
    assert!(again.starts_with("gc: 0 blocks removed"), "{again}");
    kith.unmount()?;

    let report = kith.ok(["verify"])?;
    assert!(report.contains("problems: 0"), "{report}");
    kith.mount()?;
    assert!(fs::read(kith.path("kept"))? == kept);
    kith.unmount()?;
    Ok(())
}

#[test]
fn gc_needs_a_running_daemon() -> anyhow::Result<()> {
    let kith = Kith::new()?;
    let refused = kith.run(["gc"])?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no daemon serves"), "{stderr}");
    Ok(())
}
