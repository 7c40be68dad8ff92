//! Learners first, end to end: a device that joins is a learner until its daemon has
//! caught up, then the root-key daemon promotes it to voter. Separate daemons on
//! loopback with real mounts.
//!
//! A (one device) writes; B joins (`kith device join`, no daemon yet): A's `kith
//! status` and `kith device list` say "learner" for B, and A's fsyncs still return (a
//! voter from the join on would make every quorum need B's daemon). A restarts (the
//! promotion is derived from the configuration, not remembered): B stays a learner
//! while its daemon does not run. B mounts: it is promoted, both list it as a voter,
//! and writes flow both ways.

use std::sync::Mutex;

use anyhow::{Context, ensure};
use kith_tests::sync::{
    SYNC_TIMEOUT, SyncStatus, free_loopback_port, read, wait_for_content, wait_until, write_synced,
};
use kith_tests::{Kith, pattern, skip_without_fuse};

/// Several daemons per test on two cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The role `status` gives the device that is not this one.
fn other_role(status: &SyncStatus) -> Option<String> {
    status
        .devices
        .iter()
        .find(|device| !device.this)
        .map(|device| device.role.clone())
}

/// `kith mount` of `device` listening on `listen` (the same port across restarts, as
/// a user's daemon has: the joiner knows it from its pairing code).
fn mount_at(device: &Kith, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    device
        .ok([
            std::ffi::OsStr::new("mount"),
            device.mnt.as_os_str(),
            std::ffi::OsStr::new("--listen"),
            std::ffi::OsStr::new(&listen.to_string()),
        ])
        .map(drop)
}

/// Writes and fsyncs `path` on a thread; fails if that does not return within
/// `SYNC_TIMEOUT` (a commit that needs a daemon that is not running never would).
fn write_synced_returns(path: &std::path::Path, content: &[u8]) -> anyhow::Result<()> {
    let (path, content) = (path.to_owned(), content.to_vec());
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(write_synced(&path, &content));
    });
    done.recv_timeout(SYNC_TIMEOUT)
        .context("an fsync on the first device did not return: the quorum needs the joiner")?
}

#[test]
fn a_joined_device_is_a_learner_until_its_daemon_catches_up_then_a_voter() -> anyhow::Result<()> {
    if skip_without_fuse("a_joined_device_is_a_learner_until_its_daemon_catches_up_then_a_voter") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let a = Kith::new()?;
    let a_listen = free_loopback_port()?;
    mount_at(&a, a_listen).context("mounting a")?;
    let before = pattern(1, 200_000);
    write_synced(&a.path("before"), &before)?;

    // B joins; its daemon does not run yet.
    let b = Kith::new()?;
    b.device_join(&a.device_add()?)?;
    wait_until(SYNC_TIMEOUT, "a to list b as a learner", || {
        Ok(other_role(&a.sync_status()?).as_deref() == Some("learner"))
    })?;
    let status = a.ok(["status"])?;
    ensure!(
        status
            .lines()
            .any(|line| line.contains(" learner ") && line.contains("not heard")),
        "a's status shows b as a learner it has not heard: {status}"
    );
    let list = a.ok(["device", "list"])?;
    ensure!(
        list.lines()
            .any(|line| line.contains(" device ") && line.contains(" learner ")),
        "a's device list shows b as a learner: {list}"
    );
    println!("a's status with b joined, no daemon:\n{status}");
    // The one voter commits alone: an fsync returns with b's daemon not running.
    let while_away = pattern(2, 200_000);
    write_synced_returns(&a.path("while_away"), &while_away)?;
    write_synced_returns(&a.path("small"), b"a small file, inside its op")?;

    // A restarts between the join and the promotion; b is still not running.
    a.unmount()?;
    mount_at(&a, a_listen).context("mounting a again")?;
    wait_until(SYNC_TIMEOUT, "a to open its volume again", || {
        Ok(a.sync_status()?.volume.leader.is_some())
    })?;
    write_synced_returns(&a.path("after_restart"), b"written after a's restart")?;
    ensure!(
        other_role(&a.sync_status()?).as_deref() == Some("learner"),
        "b was promoted while its daemon was not running"
    );

    // B's daemon starts and catches up: a promotes it.
    b.mount_listening().context("mounting b")?;
    for (name, device) in [("a", &a), ("b", &b)] {
        wait_until(
            SYNC_TIMEOUT,
            &format!("{name} to list b as a voter"),
            || {
                let status = device.sync_status()?;
                Ok(status.devices.len() == 2 && status.devices.iter().all(|d| d.role == "voter"))
            },
        )?;
    }
    let status = a.ok(["status"])?;
    println!("a's status with b promoted:\n{status}");
    ensure!(
        !status.contains(" learner "),
        "a still shows a learner: {status}"
    );
    let list = b.ok(["device", "list"])?;
    ensure!(
        list.lines().filter(|line| line.contains(" voter ")).count() == 2,
        "b's device list: two voters: {list}"
    );

    // Both ways, every file.
    wait_for_content(&b.path("before"), &before, SYNC_TIMEOUT)?;
    wait_for_content(&b.path("while_away"), &while_away, SYNC_TIMEOUT)?;
    wait_for_content(
        &b.path("after_restart"),
        b"written after a's restart",
        SYNC_TIMEOUT,
    )?;
    let from_b = pattern(3, 150_000);
    write_synced(&b.path("from_b"), &from_b)?;
    wait_for_content(&a.path("from_b"), &from_b, SYNC_TIMEOUT)?;
    write_synced(&a.path("from_a"), b"now with two voters")?;
    ensure!(read(&b.path("from_a"))? == b"now with two voters");
    Ok(())
}
