//! A damaged block on disk: reads of the file range it holds fail with EIO, every other
//! range of that file and every other file still reads back right, the daemon stays
//! up, and its log names the damaged file.
//!
//! The damage is one flipped byte in the payload of an arena record that holds a leaf
//! of a large file (found by walking the arena's record headers, see
//! docs/formats-store.md), made while the store is not mounted.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure};
use kith_tests::{Kith, damage_a_leaf_of_the_last_file, eio_pieces, pattern, skip_without_fuse};

/// venti's largest chunk: one damaged leaf covers at most this much of its file.
const CHUNK_BYTES_MAX: u64 = 256 * 1024;
const PIECE_BYTES: usize = 64 * 1024;

const BIG_BYTES: usize = 8 << 20;
const OTHER_BYTES: usize = 1 << 20;

#[test]
fn a_damaged_block_fails_only_its_range_and_the_log_names_the_file() -> anyhow::Result<()> {
    if skip_without_fuse("a_damaged_block_fails_only_its_range_and_the_log_names_the_file") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;
    // `other` first, `big` last: the arena's last megabytes are leaves of `big`.
    fs::create_dir(kith.path("docs"))?;
    write_synced(&kith.path("docs/other.bin"), &pattern(8, OTHER_BYTES))?;
    write_synced(&kith.path("small.txt"), b"a small file lives inline\n")?;
    write_synced(&kith.path("docs/big.bin"), &pattern(7, BIG_BYTES))?;
    kith.unmount()?;

    let (arena, damaged_at) = damage_a_leaf_of_the_last_file(&kith.store())?;
    println!("flipped the byte at {damaged_at} of {}", arena.display());

    kith.mount()?;
    let big = pattern(7, BIG_BYTES);
    let failed = eio_pieces(&kith.path("docs/big.bin"), &big, PIECE_BYTES)?;
    println!("pieces failing with EIO at {failed:?}");
    let (Some(&first), Some(&last)) = (failed.first(), failed.last()) else {
        bail!("no read of big.bin failed after its block was damaged");
    };
    ensure!(
        last - first + PIECE_BYTES as u64 <= CHUNK_BYTES_MAX + 2 * PIECE_BYTES as u64,
        "failures span {first}..{last}: more than one block's range"
    );
    ensure!(
        failed.len() as u64 == (last - first) / PIECE_BYTES as u64 + 1,
        "failing pieces are not one contiguous range: {failed:?}"
    );

    // The rest of the file system is untouched and the daemon still serves.
    ensure!(fs::read(kith.path("docs/other.bin"))? == pattern(8, OTHER_BYTES));
    ensure!(fs::read(kith.path("small.txt"))? == b"a small file lives inline\n");
    write_synced(&kith.path("after.txt"), b"still writable")?;
    ensure!(fs::read(kith.path("after.txt"))? == b"still writable");
    kith.unmount()?;

    let log = daemon_log(kith.root())?;
    ensure!(
        log.lines()
            .any(|line| line.contains("read failed") && line.contains("/docs/big.bin")),
        "no log line names /docs/big.bin:\n{log}"
    );
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file = fs::File::create(path)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    Ok(())
}

/// Everything the installation's daemons logged.
fn daemon_log(root: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    for entry in fs::read_dir(root.join("data/kith/logs"))? {
        text.push_str(&fs::read_to_string(entry?.path())?);
    }
    Ok(text)
}
