//! Three devices of one user as separate daemons on loopback, each with its own store
//! and FUSE mount: what one writes and fsyncs, the others open; renames, unlinks,
//! chmod, xattrs, symlinks and whole trees reach every device, and the mounts end
//! with identical trees.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use kith_tests::sync::{
    SYNC_TIMEOUT, cluster, mounts, read, wait_for_content, wait_for_same_trees, write_synced,
};
use kith_tests::{pattern, skip_without_fuse};

/// Three daemons per test on two cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn an_fsynced_write_opens_with_its_content_on_every_device() -> anyhow::Result<()> {
    if skip_without_fuse("an_fsynced_write_opens_with_its_content_on_every_device") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(3)?;
    let [a, b, c] = [&devices[0], &devices[1], &devices[2]];

    // A new file: after the writer's fsync returns, an open elsewhere sees it (the
    // name was never looked up there, so no negative entry can hide it).
    write_synced(&a.path("hello.txt"), b"hello from a")?;
    assert_eq!(read(&b.path("hello.txt"))?, b"hello from a");
    assert_eq!(read(&c.path("hello.txt"))?, b"hello from a");

    // An overwrite from another device, and a larger file whose blocks are fetched.
    write_synced(&b.path("hello.txt"), b"b was here")?;
    assert_eq!(read(&a.path("hello.txt"))?, b"b was here");
    assert_eq!(read(&c.path("hello.txt"))?, b"b was here");
    let big = pattern(5, 3 << 20);
    write_synced(&c.path("big.bin"), &big)?;
    assert!(read(&a.path("big.bin"))? == big, "big file differs on a");
    assert!(read(&b.path("big.bin"))? == big, "big file differs on b");

    // An in-place edit of one byte in the middle.
    let mut edited = big.clone();
    edited[big.len() / 2] ^= 0xff;
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(a.path("big.bin"))?;
        file.write_all_at(
            &edited[big.len() / 2..big.len() / 2 + 1],
            (big.len() / 2) as u64,
        )?;
        file.sync_all()?;
    }
    assert!(read(&b.path("big.bin"))? == edited, "edit not seen on b");
    assert!(read(&c.path("big.bin"))? == edited, "edit not seen on c");

    wait_for_same_trees(&mounts(&devices), SYNC_TIMEOUT)?;
    Ok(())
}

#[test]
fn names_modes_xattrs_and_trees_converge() -> anyhow::Result<()> {
    if skip_without_fuse("names_modes_xattrs_and_trees_converge") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(3)?;
    let [a, b, c] = [&devices[0], &devices[1], &devices[2]];

    // A tree on A.
    for dir in ["src", "src/net", "src/fs", "docs", "empty"] {
        fs::create_dir(a.path(dir))?;
    }
    for n in 0..20u64 {
        let dir = ["src", "src/net", "src/fs", "docs"][n as usize % 4];
        write_synced(
            &a.path(format!("{dir}/file-{n}")),
            &pattern(n, 100 + n as usize * 997),
        )?;
    }
    std::os::unix::fs::symlink("src/fs/file-2", a.path("link"))?;
    wait_for_content(
        &b.path("src/net/file-1"),
        &pattern(1, 100 + 997),
        SYNC_TIMEOUT,
    )?;

    // B renames a file across directories and a whole directory.
    fs::rename(b.path("src/file-0"), b.path("docs/renamed-0"))?;
    fs::rename(b.path("src/net"), b.path("net"))?;
    // C unlinks a file and removes the empty directory.
    wait_for_content(
        &c.path("src/fs/file-6"),
        &pattern(6, 100 + 6 * 997),
        SYNC_TIMEOUT,
    )?;
    fs::remove_file(c.path("src/fs/file-6"))?;
    fs::remove_dir(c.path("empty"))?;
    // A changes a mode; B sets an xattr and C removes another.
    fs::set_permissions(a.path("docs/file-3"), fs::Permissions::from_mode(0o600))?;
    rustix::fs::setxattr(
        b.path("src/fs/file-2").as_path(),
        "user.colour",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )?;
    rustix::fs::setxattr(
        a.path("docs/file-7").as_path(),
        "user.gone",
        b"soon",
        rustix::fs::XattrFlags::empty(),
    )?;
    // Metadata reaches the others through the log; C waits to see the xattr before
    // it removes it.
    kith_tests::sync::wait_until(SYNC_TIMEOUT, "user.gone on c", || {
        let mut value = [0u8; 16];
        Ok(
            rustix::fs::getxattr(c.path("docs/file-7").as_path(), "user.gone", &mut value)
                .is_ok_and(|len| value.get(..len) == Some(&b"soon"[..])),
        )
    })?;
    rustix::fs::removexattr(c.path("docs/file-7").as_path(), "user.gone")?;

    let tree = wait_for_same_trees(&mounts(&devices), SYNC_TIMEOUT)?;
    let get = |path: &str| tree.get(Path::new(path));
    assert!(get("docs/renamed-0").is_some(), "rename across directories");
    assert!(get("src/file-0").is_none());
    assert!(get("net/file-1").is_some(), "directory rename");
    assert!(get("src/net").is_none());
    assert!(get("src/fs/file-6").is_none(), "unlink");
    assert!(get("empty").is_none(), "rmdir");
    assert_eq!(get("docs/file-3").map(|node| node.mode), Some(0o600));
    assert_eq!(
        get("src/fs/file-2").and_then(|node| node.xattrs.get("user.colour").cloned()),
        Some(b"blue".to_vec())
    );
    assert_eq!(
        get("docs/file-7").map(|node| node.xattrs.contains_key("user.gone")),
        Some(false)
    );
    assert_eq!(get("link").map(|node| node.kind), Some("symlink"));
    assert_eq!(read(&c.path("link"))?, pattern(2, 100 + 2 * 997));
    let files = tree.values().filter(|node| node.kind == "file").count();
    assert_eq!(files, 19, "20 files written, one unlinked");
    Ok(())
}
