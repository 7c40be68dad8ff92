//! A key rotation owed by a removal is proposed later, not lost: three daemons as
//! separate processes on loopback with real mounts.
//!
//! A (the root-key device, started with the test hook `KITH_TEST_KILL_AFTER_REMOVE`)
//! runs `kith device remove C`: it dies (SIGKILL, as `kill -9`) right after
//! `Remove(C)` took effect and before the rotation is proposed. Then nobody holds a
//! new epoch and A's store records the removal as owed. A mounts again: it proposes
//! the rotation at start; A and B come to hold epoch 1 (one secret), C's `volume.key`
//! does not, C is revoked, the record is gone, and a file written after it reaches B.

use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fossil::venti_content::EpochSecrets;
use kith_tests::sync::{
    SYNC_TIMEOUT, join_and_mount, own_fingerprint, read, wait_for_content, wait_until, write_synced,
};
use kith_tests::{Kith, pattern, skip_without_fuse, wait_gone};
use net::entry::{EntryHeader, EntryKind};

/// Three daemons per test on two cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const KILL_AFTER_REMOVE_ENV: &str = "KITH_TEST_KILL_AFTER_REMOVE";
const REMOVALS_OWED_FILE: &str = "removals-owed";

fn epochs(device: &Kith) -> anyhow::Result<Vec<u32>> {
    let secrets =
        EpochSecrets::read(&device.store().join("volume.key"))?.context("no volume.key")?;
    Ok(secrets.iter().map(|(epoch, _)| epoch).collect())
}

fn secret(device: &Kith, epoch: u32) -> anyhow::Result<Option<[u8; 32]>> {
    let secrets =
        EpochSecrets::read(&device.store().join("volume.key"))?.context("no volume.key")?;
    Ok(secrets.get(epoch).copied())
}

/// The key-rotation entries committed in `device`'s acceptor store.
fn rotations(device: &Kith) -> anyhow::Result<usize> {
    let store = paxos::SqliteStore::open(&device.store().join("paxos.sqlite"))?;
    let state = paxos::AcceptorStore::load(&store)?;
    Ok(state
        .committed
        .values()
        .filter(|entry| match entry {
            paxos::Entry::Command(command) => EntryHeader::parse(&command.payload)
                .is_ok_and(|header| header.kind == EntryKind::KeyRotation),
            _ => false,
        })
        .count())
}

/// `kith mount` of `device` with the kill-after-remove hook in the daemon's
/// environment; returns the daemon's pid.
fn mount_with_kill_hook(device: &Kith) -> anyhow::Result<u32> {
    let output = device
        .command([
            OsStr::new("mount"),
            device.mnt.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ])
        .env(KILL_AFTER_REMOVE_ENV, "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "mount failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .with_context(|| format!("no daemon pid in {stdout:?}"))
}

#[test]
fn a_rotation_owed_by_a_removal_is_proposed_after_a_crash() -> anyhow::Result<()> {
    if skip_without_fuse("a_rotation_owed_by_a_removal_is_proposed_after_a_crash") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let a = Kith::new()?;
    let a_pid = mount_with_kill_hook(&a).context("mounting a")?;
    let b = join_and_mount(&a, 1, |_| Ok(()))?;
    let c = join_and_mount(&a, 2, |_| Ok(()))?;
    let a_fingerprint = own_fingerprint(&a)?;
    wait_until(SYNC_TIMEOUT, "three voters, a leading", || {
        for device in [&a, &b, &c] {
            let status = device.sync_status()?;
            if status.devices.len() != 3
                || !status.devices.iter().all(|d| d.role == "voter" && d.online)
                || status.leader() != Some(a_fingerprint.as_str())
            {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let f1 = pattern(1, 300_000);
    write_synced(&a.path("f1"), &f1)?;
    wait_for_content(&b.path("f1"), &f1, SYNC_TIMEOUT)?;
    wait_for_content(&c.path("f1"), &f1, SYNC_TIMEOUT)?;

    // The removal: a dies after Remove(c) took effect, before any rotation.
    let c_fingerprint = own_fingerprint(&c)?;
    let removal = a.run(["device", "remove", &c_fingerprint])?;
    ensure!(
        !removal.status.success(),
        "the removal finished although the hook should have killed the daemon: {}",
        String::from_utf8_lossy(&removal.stdout)
    );
    ensure!(
        wait_gone(a_pid, Duration::from_secs(20)),
        "a's daemon is still running"
    );
    ensure!(
        a.store().join(REMOVALS_OWED_FILE).exists(),
        "a's store records no owed removal"
    );
    // Removed from the configuration (b no longer lists c as a member), no new epoch.
    wait_until(SYNC_TIMEOUT, "b to see c out of the configuration", || {
        let status = b.sync_status()?;
        Ok(status
            .devices
            .iter()
            .any(|d| d.fingerprint == c_fingerprint && d.role != "voter"))
    })?;
    ensure!(
        epochs(&a)? == [0] && epochs(&b)? == [0],
        "a rotation happened before the crash"
    );
    ensure!(rotations(&b)? == 0, "a rotation entry before the crash");

    // a comes back: the owed rotation is proposed and commits with b.
    a.detach_dead_mount()?;
    a.mount_listening().context("mounting a again")?;
    wait_until(SYNC_TIMEOUT, "a and b to hold epoch 1", || {
        Ok(epochs(&a)? == [0, 1] && epochs(&b)? == [0, 1])
    })?;
    let shared = secret(&a, 1)?;
    ensure!(
        shared.is_some() && shared == secret(&b, 1)?,
        "a and b hold different epoch-1 secrets"
    );
    ensure!(epochs(&c)? == [0], "the removed device holds a new epoch");
    // The removal finished: c revoked, the record gone, exactly one rotation.
    wait_until(SYNC_TIMEOUT, "a to finish the removal", || {
        let listed = a
            .sync_status()?
            .devices
            .iter()
            .any(|d| d.fingerprint == c_fingerprint);
        Ok(!listed && !a.store().join(REMOVALS_OWED_FILE).exists())
    })?;
    let rotations_b = rotations(&b)?;
    if rotations_b != 1 {
        bail!("{rotations_b} rotation entries in b's log, one expected");
    }

    // Writing on: b reads what a wrote under the new epoch; c's keys stay as they were.
    let f2 = pattern(2, 300_000);
    write_synced(&a.path("f2"), &f2)?;
    wait_for_content(&b.path("f2"), &f2, SYNC_TIMEOUT)?;
    ensure!(read(&b.path("f1"))? == f1);
    ensure!(epochs(&c)? == [0], "the removed device learned epoch 1");
    Ok(())
}
