//! A device that serves a block which does not match its address: the reading device
//! refuses it, so a read of that range fails (EIO) and never returns other bytes; every
//! other range reads right and all devices keep serving.
//!
//! Device A writes a large file; its blocks are on A and on the voter(s) A pushed them
//! to; the device holding least of them is the reader. All three are unmounted, one
//! payload byte of the same leaf is flipped in every copy, they are mounted again, and
//! the reader reads the file: every copy of that block is wrong.

use std::fs;
use std::os::unix::fs::FileExt;

use std::sync::Mutex;

use anyhow::ensure;
use kith_tests::sync::{SYNC_TIMEOUT, cluster, damage_every_copy, wait_for_content, wait_until};
use kith_tests::{damage_a_leaf_of_the_last_file, eio_pieces, pattern, skip_without_fuse};

static SERIAL: Mutex<()> = Mutex::new(());

const PIECE_BYTES: usize = 64 * 1024;
const BIG_BYTES: usize = 8 << 20;

#[test]
fn a_block_that_does_not_match_its_address_is_refused() -> anyhow::Result<()> {
    if skip_without_fuse("a_block_that_does_not_match_its_address_is_refused") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(3)?;
    let a = &devices[0];
    let big = pattern(7, BIG_BYTES);
    {
        let file = fs::File::create(a.path("big.bin"))?;
        file.write_all_at(&big, 0)?;
        file.sync_all()?;
    }
    // B and C know the name; A pushed the blocks to one of them before its fsync
    // returned (to both, if the first was slow to answer). The reader is the one that
    // holds least of them.
    let mut reader = 1;
    wait_until(SYNC_TIMEOUT, "b and c have counted big.bin", || {
        let mut to_fetch = [0u64; 3];
        for index in [1, 2] {
            let device = &devices[index];
            if !fs::metadata(device.path("big.bin")).is_ok_and(|m| m.len() == BIG_BYTES as u64) {
                return Ok(false);
            }
            let status = device.sync_status()?.volume;
            if !status.content_walked || status.content_bytes < BIG_BYTES as u64 {
                return Ok(false);
            }
            to_fetch[index] = status.bytes_to_fetch;
        }
        ensure!(
            to_fetch[1] == 0 || to_fetch[2] == 0,
            "no device holds A's blocks besides A: {to_fetch:?}"
        );
        reader = if to_fetch[1] >= to_fetch[2] { 1 } else { 2 };
        Ok(true)
    })?;
    let reader = &devices[reader];
    println!(
        "reader: device {}",
        if std::ptr::eq(reader, &devices[1]) {
            1
        } else {
            2
        }
    );

    // Every copy of one leaf is damaged, wherever it is: one device at a time (each
    // comes back on a new port and tells the others, who stayed up, where it is).
    let all_online = |device: &kith_tests::Kith| {
        wait_until(SYNC_TIMEOUT, "three devices online", || {
            Ok(device
                .sync_status()?
                .devices
                .iter()
                .filter(|d| d.online)
                .count()
                == 3)
        })
    };
    a.unmount()?;
    let (arena, flipped) = damage_a_leaf_of_the_last_file(&a.store())?;
    a.mount_listening()?;
    all_online(a)?;
    let mut copies = 0;
    for device in &devices[1..] {
        device.unmount()?;
        copies += damage_every_copy(&arena, flipped, &[device.store()])?;
        device.mount_listening()?;
        all_online(device)?;
    }
    println!(
        "flipped the byte at {flipped} of {} and in {copies} other copies",
        arena.display()
    );
    ensure!(copies >= 1, "no other device held the block");
    all_online(reader)?;

    let failed = eio_pieces(&reader.path("big.bin"), &big, PIECE_BYTES)?;
    println!("pieces failing with EIO on the reader: {failed:?}");
    ensure!(
        !failed.is_empty(),
        "the damaged block was served and accepted"
    );

    // Everyone still serves.
    let after = pattern(9, 10_000);
    {
        let file = fs::File::create(reader.path("after.bin"))?;
        file.write_all_at(&after, 0)?;
        file.sync_all()?;
    }
    for device in &devices {
        wait_for_content(&device.path("after.bin"), &after, SYNC_TIMEOUT)?;
    }
    Ok(())
}
