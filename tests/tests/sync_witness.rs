//! Two devices and a witness: the desktop is killed and the laptop keeps committing
//! with the witness (no op stays queued); the desktop restarts and catches up. Without
//! a witness, the same laptop queues its ops until the desktop is back — what the
//! witness buys. The witness's store never holds the volume key or any content block.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kith_tests::sync::{
    SYNC_TIMEOUT, SyncStatus, Witness, cluster, mounts, wait_for_content, wait_for_same_trees,
    wait_until, write_synced,
};
use kith_tests::{Kith, kill_and_wait, pattern, skip_without_fuse};

static SERIAL: Mutex<()> = Mutex::new(());

/// How long ops may take to commit once a quorum is reachable.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Renames, deletes, a directory and a chmod on `device`, each made durable.
fn more_operations(device: &Kith, tag: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = device.path(format!("{tag}-dir"));
    std::fs::create_dir(&dir)?;
    write_synced(&dir.join("a"), b"in a directory")?;
    write_synced(&dir.join("gone"), b"to be deleted")?;
    std::fs::rename(dir.join("a"), dir.join("b"))?;
    std::fs::remove_file(dir.join("gone"))?;
    std::fs::set_permissions(dir.join("b"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// Files `{tag}-{n}` of 2 KB (inline in their op) and 300 KB (several blocks),
/// alternately, each created, written and fsynced; the time of each. Contents differ
/// for every `seed` (equal contents would be blocks held already).
fn timed_writes(device: &Kith, tag: &str, seed: u64) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::new();
    for n in 0..8u64 {
        let len = if n % 2 == 0 { 2_000 } else { 300_000 };
        let started = Instant::now();
        write_synced(
            &device.path(format!("{tag}-{n}")),
            &pattern(seed * 100 + n, len),
        )?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// Median of `samples` (sorted here).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Whether `needle` occurs in any file under `dir`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)?
                .windows(needle.len())
                .any(|window| window == needle)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn fingerprint_of_this(status: &SyncStatus) -> Option<String> {
    status
        .devices
        .iter()
        .find(|d| d.this)
        .map(|d| d.fingerprint.clone())
}

#[test]
fn a_laptop_with_a_witness_keeps_committing_while_the_desktop_is_off() -> anyhow::Result<()> {
    if skip_without_fuse("a_laptop_with_a_witness_keeps_committing_while_the_desktop_is_off") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(2)?;
    let [laptop, desktop] = [&devices[0], &devices[1]];
    let witness = Witness::join(laptop)?;
    witness.run()?;

    // Three acceptors, two of them needed: every daemon sees the witness.
    for (name, device) in [("laptop", laptop), ("desktop", desktop)] {
        wait_until(SYNC_TIMEOUT, &format!("{name} sees the witness"), || {
            let status = device.sync_status()?;
            let roles: Vec<&str> = status.devices.iter().map(|d| d.role.as_str()).collect();
            Ok(roles.iter().filter(|r| **r == "voter").count() == 2
                && roles.contains(&"witness")
                && status.devices.iter().all(|d| d.online)
                && status.volume.queued == 0)
        })?;
    }
    // The witness catches up the log to the configuration that holds it.
    let laptop_end = laptop.sync_status()?.volume.commit_end;
    wait_until(SYNC_TIMEOUT, "the witness to catch up", || {
        let text = witness.kith.ok(["status"])?;
        Ok(text.starts_with("witness: ")
            && text.contains("quorum: 2 of 3")
            && witness.status()?.volume.commit_end >= laptop_end)
    })
    .with_context(|| {
        let text = witness.kith.ok(["status"]).unwrap_or_default();
        format!("the witness's status: {text}")
    })?;
    // The same writes with everyone up, for comparison.
    let mut fsyncs_all_up = timed_writes(laptop, "up", 1)?;
    write_synced(&laptop.path("before"), b"all three up")?;
    wait_for_content(&desktop.path("before"), b"all three up", SYNC_TIMEOUT)?;
    let witness_seen = witness.status()?.volume.commit_end;

    // The desktop is switched off.
    let desktop_pid = desktop.daemon_pid().context("desktop pid")?;
    ensure!(kill_and_wait(desktop_pid), "the desktop did not die");
    desktop.detach_dead_mount()?;

    // The laptop writes small files (inline in their op) and files of several blocks,
    // renames, deletes: each fsync returns and its op commits with the witness.
    let mut fsyncs = timed_writes(laptop, "off", 2)?;
    let first_after_kill = fsyncs.first().copied().unwrap_or_default();
    std::fs::rename(laptop.path("off-0"), laptop.path("renamed-0"))?;
    std::fs::remove_file(laptop.path("off-2"))?;
    more_operations(laptop, "off")?;
    std::fs::File::open(&laptop.mnt)?.sync_all()?;
    wait_until(COMMIT_TIMEOUT, "the laptop's ops to commit", || {
        Ok(laptop.sync_status()?.volume.queued == 0)
    })?;
    let status = laptop.sync_status()?;
    ensure!(
        status.leader().map(str::to_owned) == fingerprint_of_this(&status),
        "the laptop leads while the desktop is off: {status:?}"
    );
    // The trade-off: the new content is on the laptop only until the desktop is back.
    // (venti counts queued blocks outside a push: a retry in flight reads as 0.)
    wait_until(
        Duration::from_secs(10),
        "the blocks written with the desktop off to wait for it",
        || Ok(laptop.sync_status()?.volume.unpushed_blocks > 0),
    )?;
    ensure!(
        witness.status()?.volume.commit_end > witness_seen,
        "the witness took part in the commits"
    );
    println!(
        "fsync on the laptop (2 KB and 300 KB files, create + write + fsync): all up: median \
         {:?} of {}; desktop off: median {:?} of {} (the first after the kill {:?})",
        median(&mut fsyncs_all_up),
        fsyncs_all_up.len(),
        median(&mut fsyncs),
        fsyncs.len(),
        first_after_kill,
    );

    // The desktop comes back and catches up; its copy of the new blocks arrives.
    desktop.mount_listening()?;
    let tree = wait_for_same_trees(&mounts(&devices), SYNC_TIMEOUT)?;
    for name in ["renamed-0", "off-1", "off-7", "off-dir/b", "before"] {
        ensure!(
            tree.contains_key(Path::new(name)),
            "{name} missing: {tree:?}"
        );
    }
    ensure!(!tree.contains_key(Path::new("off-2")), "off-2 was deleted");
    wait_until(
        SYNC_TIMEOUT,
        "the laptop's blocks to reach the desktop",
        || Ok(laptop.sync_status()?.volume.unpushed_blocks == 0),
    )?;

    // The witness's store: no volume key, no content, no namespace, and nowhere the
    // epoch secret's bytes.
    let store = witness.kith.store();
    for absent in ["volume.key", "blocks", "namespace.sqlite", "log"] {
        ensure!(
            !store.join(absent).exists(),
            "the witness store holds {absent}"
        );
    }
    let key = std::fs::read(laptop.store().join("volume.key"))?;
    let secret = key.get(..32).context("short volume.key")?;
    ensure!(
        !any_file_contains(&store, secret)?,
        "a file of the witness store holds the epoch secret"
    );
    // `kith witness stop` stops it.
    let said = witness.stop()?;
    ensure!(said.contains("stopped"), "kith witness stop said {said:?}");
    Ok(())
}

#[test]
fn without_a_witness_the_laptop_queues_while_the_desktop_is_off() -> anyhow::Result<()> {
    if skip_without_fuse("without_a_witness_the_laptop_queues_while_the_desktop_is_off") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(2)?;
    let [laptop, desktop] = [&devices[0], &devices[1]];
    let desktop_pid = desktop.daemon_pid().context("desktop pid")?;
    ensure!(kill_and_wait(desktop_pid), "the desktop did not die");
    desktop.detach_dead_mount()?;

    // fsync still returns (the op is durable in the laptop's queue) but nothing commits.
    write_synced(&laptop.path("alone"), b"written with the desktop off")?;
    std::thread::sleep(Duration::from_secs(2));
    let status = laptop.sync_status()?;
    ensure!(
        status.volume.queued > 0,
        "with two voters and one off, ops stay queued: {:?}",
        status.volume
    );
    // Back: the queue drains and both see the file.
    desktop.mount_listening()?;
    wait_until(COMMIT_TIMEOUT + SYNC_TIMEOUT, "the queue to drain", || {
        Ok(laptop.sync_status()?.volume.queued == 0)
    })?;
    wait_for_same_trees(&mounts(&devices), SYNC_TIMEOUT)?;
    Ok(())
}
