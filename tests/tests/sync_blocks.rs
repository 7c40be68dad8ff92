//! A device that serves a block which does not match its address: the reading device
//! refuses it, so a read of that range fails (EIO) and never returns other bytes; every
//! other range reads right and all devices keep serving.
//!
//! Device A writes a large file; its blocks are on A and on the voter A pushed them to
//! (the holder); the third device (the reader) fetches on demand. A and the holder are
//! unmounted, one payload byte of the same leaf is flipped in both copies, they are
//! mounted again, and the reader reads the file: every copy of that block is wrong.

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
    // B and C know the name; one holds the blocks (A pushed them there before its
    // fsync returned), the other has read nothing and holds none of them.
    let mut holder = None;
    let mut reader = None;
    wait_until(SYNC_TIMEOUT, "the holder and the reader of big.bin", || {
        for index in [1, 2] {
            let device = &devices[index];
            if !fs::metadata(device.path("big.bin")).is_ok_and(|m| m.len() == BIG_BYTES as u64) {
                return Ok(false);
            }
            let status = device.sync_status()?.volume;
            if !status.content_walked || status.content_bytes < BIG_BYTES as u64 {
                return Ok(false);
            }
            if status.bytes_to_fetch == 0 {
                holder = Some(index);
            } else {
                ensure!(
                    status.bytes_to_fetch >= BIG_BYTES as u64,
                    "device {index} holds part of big.bin: {status:?}"
                );
                reader = Some(index);
            }
        }
        Ok(holder.is_some() && reader.is_some())
    })?;
    let (Some(holder), Some(reader)) = (holder, reader) else {
        anyhow::bail!("no holder and reader");
    };
    let (holder, reader) = (&devices[holder], &devices[reader]);

    a.unmount()?;
    holder.unmount()?;
    let (arena, flipped) = damage_a_leaf_of_the_last_file(&a.store())?;
    let copies = damage_every_copy(&arena, flipped, &[holder.store()])?;
    println!(
        "flipped the byte at {flipped} of {} and {copies} copy on the holder",
        arena.display()
    );
    ensure!(copies == 1, "the holder had {copies} copies of the block");
    a.mount_listening()?;
    holder.mount_listening()?;
    wait_until(SYNC_TIMEOUT, "three devices online", || {
        Ok(reader
            .sync_status()?
            .devices
            .iter()
            .filter(|d| d.online)
            .count()
            == 3)
    })?;

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
    wait_for_content(&a.path("after.bin"), &after, SYNC_TIMEOUT)?;
    wait_for_content(&holder.path("after.bin"), &after, SYNC_TIMEOUT)?;
    Ok(())
}
