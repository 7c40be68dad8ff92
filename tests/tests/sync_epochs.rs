//! Removing a device starts a new key epoch, end to end: three daemons as separate
//! processes on loopback with real mounts.
//!
//! A writes F1; `kith device remove` C from A; A writes F2. Then: B reads F1 and F2;
//! the log (B's acceptor store) holds the key-rotation entry and, after it, F2's
//! entries sealed under epoch 1; A and B hold epoch 1 in `volume.key` with the same
//! secret, C does not; a device added after the rotation holds both epochs and reads
//! F1 (epoch-0 content) and F2 (epoch-1 content).

use std::sync::Mutex;

use anyhow::Context;
use fossil::venti_content::EpochSecrets;
use kith_tests::sync::{
    SYNC_TIMEOUT, cluster, join_and_mount, read, wait_for_content, write_synced,
};
use kith_tests::{Kith, pattern, skip_without_fuse};
use net::entry::{EntryHeader, EntryKind, KeyEpoch};

static SERIAL: Mutex<()> = Mutex::new(());

fn volume_key(device: &Kith) -> anyhow::Result<EpochSecrets> {
    EpochSecrets::read(&device.store().join("volume.key"))?.context("no volume.key")
}

fn epochs(device: &Kith) -> anyhow::Result<Vec<u32>> {
    Ok(volume_key(device)?.iter().map(|(epoch, _)| epoch).collect())
}

/// The headers of the committed entries in `device`'s acceptor store, in slot order.
fn entry_headers(device: &Kith) -> anyhow::Result<Vec<(u64, EntryHeader)>> {
    let store = paxos::SqliteStore::open(&device.store().join("paxos.sqlite"))?;
    let state = paxos::AcceptorStore::load(&store)?;
    Ok(state
        .committed
        .iter()
        .filter_map(|(slot, entry)| match entry {
            paxos::Entry::Command(command) => EntryHeader::parse(&command.payload)
                .ok()
                .map(|header| (slot.0, header)),
            _ => None,
        })
        .collect())
}

#[test]
fn removing_a_device_rotates_the_key_and_the_others_and_newcomers_read_on() -> anyhow::Result<()> {
    if skip_without_fuse("removing_a_device_rotates_the_key_and_the_others_and_newcomers_read_on") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(3)?;
    let (a, b, c) = (&devices[0], &devices[1], &devices[2]);
    // Over several blocks (small files live inside their op).
    let f1 = pattern(1, 300_000);
    write_synced(&a.path("f1"), &f1)?;
    wait_for_content(&b.path("f1"), &f1, SYNC_TIMEOUT)?;
    wait_for_content(&c.path("f1"), &f1, SYNC_TIMEOUT)?;
    assert_eq!(epochs(a)?, [0]);

    let c_fingerprint = c
        .sync_status()?
        .devices
        .into_iter()
        .find(|device| device.this)
        .context("C lists itself")?
        .fingerprint;
    let removed = a.ok(["device", "remove", &c_fingerprint])?;
    assert!(
        removed.contains("new key epoch 1 (slot"),
        "the rotation committed: {removed}"
    );

    let f2 = pattern(2, 300_000);
    write_synced(&a.path("f2"), &f2)?;
    wait_for_content(&b.path("f2"), &f2, SYNC_TIMEOUT)?;
    assert_eq!(read(&b.path("f1"))?, f1);

    // A and B hold epoch 1, with one secret; the removed device never got it.
    let (key_a, key_b) = (volume_key(a)?, volume_key(b)?);
    assert_eq!(epochs(a)?, [0, 1]);
    assert_eq!(key_a.get(1), key_b.get(1));
    assert_eq!(key_a.get(0), key_b.get(0));
    assert_eq!(epochs(c)?, [0], "the removed device holds no epoch 1");

    // The log: the rotation (sealed under epoch 0, by A), then A's entries under
    // epoch 1 (`device remove` returns once A seals under it).
    let headers = entry_headers(b)?;
    let (rotation_slot, rotation) = headers
        .iter()
        .find(|(_, header)| header.kind == EntryKind::KeyRotation)
        .context("a key-rotation entry in the log")?;
    assert_eq!(rotation.epoch, KeyEpoch(0));
    let a_node = rotation.author;
    let after: Vec<&EntryHeader> = headers
        .iter()
        .filter(|(slot, header)| {
            slot > rotation_slot && header.kind == EntryKind::Op && header.author == a_node
        })
        .map(|(_, header)| header)
        .collect();
    assert!(!after.is_empty(), "F2's entries follow the rotation");
    assert!(
        after.iter().all(|header| header.epoch == KeyEpoch(1)),
        "entries proposed after the rotation was read are sealed under epoch 1: {after:?}"
    );

    // A device added after the rotation gets every epoch and reads both files.
    let d = join_and_mount(a, 3, |_| Ok(()))?;
    assert_eq!(epochs(&d)?, [0, 1]);
    wait_for_content(&d.path("f1"), &f1, SYNC_TIMEOUT)?;
    wait_for_content(&d.path("f2"), &f2, SYNC_TIMEOUT)?;
    Ok(())
}
