//! `kith mount` of a device added later, with daemons as separate processes on
//! loopback and real mounts: while its daemon catches up (the log of a few thousand
//! operations comes from the other device and is replayed before the mount), `kith
//! mount` prints the catch-up lines `kith status` shows on stderr, then says it is
//! mounted; the new device then shows the volume key epoch it holds.

use std::ffi::OsStr;
use std::process::Stdio;

use anyhow::{Context, ensure};
use kith_tests::sync::{SYNC_TIMEOUT, join_retrying, json, wait_until};
use kith_tests::{Kith, skip_without_fuse};

/// Operations in the log the new device replays. Its start lasts past a progress
/// question or two (every 250 ms) with any log: it asks the other device how far the
/// log is and fetches it. More would take long to write (about 85-260 ms per mkdir
/// through the mount on a loaded 2-core machine) and add little.
const DIRS: usize = 150;

/// `kith mount MNT --listen 127.0.0.1:0` with stdout and stderr in one file, in the
/// order they were written; answers whether it succeeded and what it wrote.
fn mount_capturing(device: &Kith) -> anyhow::Result<(bool, String)> {
    let path = device.root().join("mount-output");
    let output = std::fs::File::create(&path)?;
    let status = device
        .command([
            OsStr::new("mount"),
            device.mnt.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ])
        .stdout(Stdio::from(output.try_clone()?))
        .stderr(Stdio::from(output))
        .status()?;
    Ok((status.success(), std::fs::read_to_string(&path)?))
}

#[test]
fn a_device_added_later_shows_its_catch_up_while_kith_mount_waits() -> anyhow::Result<()> {
    if skip_without_fuse("a_device_added_later_shows_its_catch_up_while_kith_mount_waits") {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let a = Kith::new()?;
    a.mount_listening().context("mounting a")?;
    for n in 0..DIRS {
        std::fs::create_dir(a.path(format!("dir-{n:04}")))?;
    }
    // Committed before the new device joins: `kith status` on a shows it applied.
    let marker = a.path("last");
    kith_tests::sync::write_synced(&marker, b"written last")?;
    let commit_end = a.sync_status()?.volume.commit_end;
    ensure!(commit_end > DIRS as u64, "a's commit end {commit_end}");

    println!("{DIRS} directories written: {:?}", started.elapsed());
    let b = join_retrying(&a)?;
    println!("joined: {:?}", started.elapsed());
    let (mut mounted, mut output) = mount_capturing(&b)?;
    println!(
        "kith mount of the device added later ({:?}) printed:\n{output}",
        started.elapsed()
    );
    if !mounted {
        // A joined device's first mount waits a bounded time for the volume's genesis;
        // on a loaded machine that has run out (see `sync::join_and_mount`).
        let _ = b.detach_dead_mount();
        (mounted, output) = mount_capturing(&b)?;
        println!("the second kith mount printed:\n{output}");
    }
    ensure!(mounted, "kith mount failed: {output}");
    let lines: Vec<&str> = output.lines().collect();
    let mounted_at = lines
        .iter()
        .position(|line| line.starts_with("kith: mounted "))
        .context("no 'mounted' line")?;
    let progress: Vec<&str> = lines[..mounted_at]
        .iter()
        .copied()
        .filter(|line| {
            line.starts_with("kith: catching up: ") || line.starts_with("kith: sync: starting")
        })
        .collect();
    ensure!(
        !progress.is_empty(),
        "no progress line before the mount: {output}"
    );
    // Each line differs from the one before (only changes are shown).
    ensure!(
        progress.windows(2).all(|pair| pair[0] != pair[1]),
        "a progress line repeated: {output}"
    );

    // The device serves what it caught up with, and its status shows the key epoch
    // it holds (a volume nobody left: the first).
    wait_until(SYNC_TIMEOUT, "b to apply the log", || {
        let volume = b.sync_status()?.volume;
        Ok(volume.applied_end >= commit_end && volume.behind == 0)
    })?;
    ensure!(
        kith_tests::sync::read(&b.path("last"))? == b"written last",
        "b reads another 'last'"
    );
    ensure!(b.path(format!("dir-{:04}", DIRS - 1)).is_dir());
    let status = b.ok(["status"])?;
    ensure!(
        status.contains("\nvolume key: epoch 0 (the newest held here; 1 epoch(s) held)\n"),
        "b's status: {status}"
    );
    let value = json::parse(&b.ok(["status", "--json"])?)?;
    let volume = value.get("volume").context("no volume in the JSON")?;
    ensure!(
        volume.get("key_epoch").and_then(json::Value::as_u64) == Some(0)
            && volume.get("key_epochs_held").and_then(json::Value::as_u64) == Some(1),
        "b's status --json: {value:?}"
    );
    Ok(())
}
