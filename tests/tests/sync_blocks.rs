//! A device that serves a block which does not match its address: the reading device
//! refuses it, so a read of that range fails (EIO) and never returns other bytes; every
//! other range reads right and all devices keep serving.
//!
//! Device A writes a large file and is the only holder of its blocks (the others fetch
//! on demand). A is unmounted, one payload byte of a leaf in its arena is flipped, A is
//! mounted again, and B reads the file: every block comes from A.

use std::fs;
use std::os::unix::fs::FileExt;

use std::sync::Mutex;

use anyhow::ensure;
use kith_tests::sync::{SYNC_TIMEOUT, cluster, wait_for_content, wait_until};
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
    let [a, b, c] = [&devices[0], &devices[1], &devices[2]];
    let big = pattern(7, BIG_BYTES);
    {
        let file = fs::File::create(a.path("big.bin"))?;
        file.write_all_at(&big, 0)?;
        file.sync_all()?;
    }
    // B and C know the name; neither has read the content.
    wait_until(SYNC_TIMEOUT, "big.bin listed on b", || {
        Ok(fs::metadata(b.path("big.bin")).is_ok_and(|meta| meta.len() == BIG_BYTES as u64))
    })?;

    a.unmount()?;
    let (arena, flipped) = damage_a_leaf_of_the_last_file(&a.store())?;
    println!("flipped the byte at {flipped} of {}", arena.display());
    a.mount_listening()?;
    wait_until(SYNC_TIMEOUT, "three devices online", || {
        Ok(b.sync_status()?.devices.iter().filter(|d| d.online).count() == 3)
    })?;

    let failed = eio_pieces(&b.path("big.bin"), &big, PIECE_BYTES)?;
    println!("pieces failing with EIO on b: {failed:?}");
    ensure!(
        !failed.is_empty(),
        "the damaged block was served and accepted"
    );

    // Everyone still serves.
    let after = pattern(9, 10_000);
    {
        let file = fs::File::create(c.path("after.bin"))?;
        file.write_all_at(&after, 0)?;
        file.sync_all()?;
    }
    wait_for_content(&a.path("after.bin"), &after, SYNC_TIMEOUT)?;
    wait_for_content(&b.path("after.bin"), &after, SYNC_TIMEOUT)?;
    Ok(())
}
