//! Checkpoints on a replicated volume, with daemons as separate processes on loopback
//! and real mounts: every device truncates its log behind checkpoints of its own
//! (`checkpoint_ops` set low), and a device that needs slots no peer keeps any more
//! starts from a peer's checkpoint (`SnapshotData`) plus the log after it, fetching
//! the image's blocks and the files' content from its peers.
//!
//! - A third device joins after two checkpoints: it never sees slot 0, every file opens
//!   on it with the right bytes, and the three trees are the same. `kith status` shows
//!   the checkpoints, and on the new device answers while its volume opens (it says
//!   it is not mounted yet and how its catch-up goes).
//! - A device stopped (with operations it queued while it had no quorum) while the
//!   others write past two checkpoints, then restarted: it catches up from a
//!   checkpoint, its queued operations commit, and the trees are the same.
//!
//! A device whose own `checkpoint_ops` is 0 never checkpoints: a snapshot in its Paxos
//! store can only have come from a peer.

use std::sync::Mutex;

use anyhow::{Context, ensure};
use kith_tests::sync::{
    SYNC_TIMEOUT, acceptor_log, cluster_with, join_retrying, json, mounts, pause, read, resume,
    wait_for_same_trees, wait_until, write_synced,
};
use kith_tests::{Kith, pattern, skip_without_fuse, wait_gone};

static SERIAL: Mutex<()> = Mutex::new(());

/// Checkpoint after this many ops: a few files' worth, so two checkpoints take
/// seconds, not minutes.
const CHECKPOINT_OPS: u64 = 40;

fn checkpoint_config(ops: u64) -> String {
    format!("checkpoint_ops = {ops}\n")
}

/// Content for file `n` of `writer`: inline sizes and a few over several blocks.
fn content(writer: &str, n: u64) -> Vec<u8> {
    let seed = writer
        .bytes()
        .fold(n, |acc, b| acc.wrapping_mul(31) ^ u64::from(b));
    let len = if n % 10 == 9 {
        40_000
    } else {
        200 + (n as usize % 5) * 700
    };
    pattern(seed, len)
}

/// Writes `{writer}-{n}` for `n` in `range` on `device`, each fsynced.
fn write_files(device: &Kith, writer: &str, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    for n in range {
        write_synced(&device.path(format!("{writer}-{n}")), &content(writer, n))?;
    }
    Ok(())
}

/// Waits until `device` has truncated its log behind a snapshot through at least
/// `slot`; answers the snapshot's last slot.
fn wait_for_snapshot(device: &Kith, slot: u64, what: &str) -> anyhow::Result<u64> {
    let mut through = 0;
    wait_until(SYNC_TIMEOUT, what, || {
        let log = acceptor_log(device)?;
        through = log.snapshot_through.unwrap_or(0);
        Ok(log.snapshot_through.is_some_and(|at| at >= slot))
    })?;
    Ok(through)
}

/// Every file of `writers` × `range` reads with its bytes on `device`.
fn check_files(device: &Kith, writers: &[&str], range: std::ops::Range<u64>) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for writer in writers {
        for n in range.clone() {
            let name = format!("{writer}-{n}");
            match read(&device.path(&name)) {
                Ok(bytes) if bytes == content(writer, n) => {}
                Ok(_) => wrong.push(format!("{name}: other bytes")),
                Err(error) => wrong.push(format!("{name}: {error:#}")),
            }
        }
    }
    ensure!(wrong.is_empty(), "files that do not read back: {wrong:?}");
    Ok(())
}

#[test]
fn a_device_added_later_starts_from_a_checkpoint_plus_the_log() -> anyhow::Result<()> {
    if skip_without_fuse("a_device_added_later_starts_from_a_checkpoint_plus_the_log") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster_with(2, |_, device| {
        device.set_config(&checkpoint_config(CHECKPOINT_OPS))
    })?;
    let [a, b] = [&devices[0], &devices[1]];
    // Both write, past two checkpoints on both.
    write_files(a, "a", 0..40)?;
    write_files(b, "b", 0..40)?;
    let commit_end = a.sync_status()?.volume.commit_end;
    for (device, name) in [(a, "a"), (b, "b")] {
        wait_for_snapshot(
            device,
            2 * CHECKPOINT_OPS,
            &format!("{name} to truncate its log twice"),
        )?;
        let log = acceptor_log(device)?;
        ensure!(
            log.first_slot
                .is_none_or(|first| first > 2 * CHECKPOINT_OPS),
            "{name} still stores slot {:?} of {commit_end}",
            log.first_slot
        );
    }

    // Status on a device that checkpointed: the checkpoint's slot, its age, the log
    // since; the JSON has the same.
    let text = a.ok(["status"])?;
    ensure!(
        text.lines()
            .any(|line| line.starts_with("checkpoint: through slot ")
                && (line.contains(" ago; ") || line.contains(", just now; "))
                && line.ends_with("slot(s) committed since")),
        "a's status shows no checkpoint: {text}"
    );
    let value = json::parse(&a.ok(["status", "--json"])?)?;
    let through = value
        .get("volume")
        .and_then(|volume| volume.get("checkpoint_through"))
        .and_then(json::Value::as_u64);
    ensure!(
        through.is_some_and(|through| through >= 2 * CHECKPOINT_OPS - 1),
        "a's status --json: checkpoint_through {through:?}"
    );

    // A third device joins: it never checkpoints itself (checkpoint_ops = 0), so a
    // snapshot in its store came from a peer. Its status is asked while it mounts.
    let c = join_retrying(a)?;
    c.set_config(&checkpoint_config(0))?;
    let (mounted, while_starting) = std::thread::scope(|scope| {
        let mounting = scope.spawn(|| c.mount_listening());
        let mut seen = Vec::new();
        while !mounting.is_finished() {
            if let Ok(output) = c.run(["status"]) {
                seen.push(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mounted = mounting
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the mount thread panicked")));
        (mounted, seen)
    });
    mounted.context("mounting c")?;
    // Before its daemon binds the socket, status finds none; after, until it is
    // mounted, status says so (and, once its network is up, shows the log it is
    // catching up with).
    let starting: Vec<&String> = while_starting
        .iter()
        .filter(|text| !text.contains("no kith daemon is running"))
        .collect();
    for text in &starting {
        ensure!(
            text.contains("(not mounted yet") || text.contains("\nspace: "),
            "c's status while it mounted: {text}"
        );
        ensure!(
            !text.contains("(not mounted yet")
                || text.contains("log: committed to")
                || text.contains("sync: starting (opening the store and its network)"),
            "c's status while it mounted shows no log: {text}"
        );
    }
    println!(
        "c's status during its mount: {} asked, {} while starting{}",
        while_starting.len(),
        starting
            .iter()
            .filter(|text| text.contains("(not mounted yet"))
            .count(),
        starting
            .iter()
            .find(|text| text.contains("catching up"))
            .map(|text| format!(", e.g.:\n{text}"))
            .unwrap_or_default()
    );
    // More after it joined, from both: the log after the checkpoint.
    write_files(a, "a", 40..45)?;
    write_files(b, "b", 40..45)?;
    let target = a.sync_status()?.volume.commit_end;
    wait_until(SYNC_TIMEOUT, "c to apply everything", || {
        let volume = c.sync_status()?.volume;
        Ok(volume.applied_end >= target && volume.behind == 0)
    })?;
    let log = acceptor_log(&c)?;
    let installed = log
        .snapshot_through
        .context("c replayed the log from slot 0 instead of starting from a checkpoint")?;
    ensure!(
        installed >= 2 * CHECKPOINT_OPS && log.first_slot.is_none_or(|first| first > installed),
        "c's log: {log:?}"
    );
    let status = c.ok(["status"])?;
    ensure!(
        status.contains("log: committed to")
            && status.contains(&format!("checkpoint: through slot {installed}, "))
            && !status.contains("catching up")
            && !status.contains("not mounted yet"),
        "c's status once caught up: {status}"
    );
    check_files(&c, &["a", "b"], 0..45)?;
    let all = [a, b, &c].map(|device| device.mnt.as_path());
    wait_for_same_trees(&all, SYNC_TIMEOUT)?;
    Ok(())
}

#[test]
fn a_device_stopped_past_two_checkpoints_catches_up_and_its_queued_ops_commit() -> anyhow::Result<()>
{
    if skip_without_fuse(
        "a_device_stopped_past_two_checkpoints_catches_up_and_its_queued_ops_commit",
    ) {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    // c never checkpoints itself: a snapshot in its store came from a peer.
    let devices = cluster_with(3, |index, device| {
        let ops = if index == 2 { 0 } else { CHECKPOINT_OPS };
        device.set_config(&checkpoint_config(ops))
    })?;
    let [a, b, c] = [&devices[0], &devices[1], &devices[2]];
    write_files(a, "a", 0..5)?;

    // c without a quorum: its writes queue durably (fsync returns once queued).
    let paused = [
        a.daemon_pid().context("a's pid")?,
        b.daemon_pid().context("b's pid")?,
    ];
    for pid in paused {
        pause(pid)?;
    }
    let offline = write_files(c, "c", 0..3);
    // Stopped before it could reach anyone: the ops wait in its store.
    let c_pid = c.daemon_pid().context("c's pid")?;
    let stopped = c.unmount();
    let gone = wait_gone(c_pid, SYNC_TIMEOUT);
    for pid in paused {
        resume(pid)?;
    }
    offline?;
    stopped?;
    ensure!(gone, "c's daemon did not exit after kith unmount");
    let stopped_at = acceptor_log(c)?;

    // The others write past two checkpoints.
    write_files(a, "a", 5..45)?;
    write_files(b, "b", 0..40)?;
    let c_end = stopped_at.first_slot.unwrap_or(0) + stopped_at.entries as u64;
    for (device, name) in [(a, "a"), (b, "b")] {
        wait_for_snapshot(
            device,
            c_end + 2 * CHECKPOINT_OPS,
            &format!("{name} to truncate its log twice past where c stopped"),
        )?;
    }

    // c comes back: the slots it lacks are gone everywhere.
    c.mount_listening().context("remounting c")?;
    let target = a.sync_status()?.volume.commit_end;
    wait_until(SYNC_TIMEOUT, "c to catch up", || {
        let volume = c.sync_status()?.volume;
        Ok(volume.applied_end >= target && volume.behind == 0 && volume.queued == 0)
    })?;
    let log = acceptor_log(c)?;
    ensure!(
        log.snapshot_through.is_some_and(|through| through >= c_end),
        "c did not catch up from a checkpoint: stopped with {stopped_at:?}, now {log:?}"
    );
    check_files(c, &["a"], 0..45)?;
    check_files(c, &["b"], 0..40)?;
    // Its own offline writes committed and reached the others.
    check_files(a, &["c"], 0..3)?;
    check_files(b, &["c"], 0..3)?;
    wait_for_same_trees(&mounts(&devices), SYNC_TIMEOUT)?;
    Ok(())
}
