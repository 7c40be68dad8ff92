//! A volume whose store fills a real (small tmpfs) disk: every layer's ENOSPC (venti
//! arena, the log, SQLite) reaches the writer as "no space", the open file stays
//! there, and what was stored before stays intact. Needs root (to mount the tmpfs);
//! skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use fossil::{Caller, InodeNo, Volume};

mod common;
use common::incompressible;

const ME: Caller = Caller { uid: 0, gid: 0 };

/// Lazily unmounts the tmpfs when the test ends.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn small_disk(dir: &Path, size: &str) -> Option<UnmountOnDrop> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(size),
    )
    .ok()?;
    Some(UnmountOnDrop(dir.to_path_buf()))
}

#[test]
fn a_full_disk_answers_no_space_and_keeps_the_open_file_and_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = small_disk(dir.path(), "size=8m") else {
        println!("SKIP: needs root for a tmpfs");
        return;
    };
    let volume = Volume::open(&dir.path().join("volume")).unwrap();
    let kept_bytes = incompressible(1, 1 << 20);
    let (kept, handle) = volume
        .create(InodeNo::ROOT, OsStr::new("kept"), 0o644, ME, true)
        .unwrap();
    volume.write(kept.ino, handle, 0, &kept_bytes).unwrap();
    volume.fsync(kept.ino, false).unwrap();
    volume.release(kept.ino, handle).unwrap();

    let (big, handle) = volume
        .create(InodeNo::ROOT, OsStr::new("too-big"), 0o644, ME, true)
        .unwrap();
    let mut failure = None;
    for index in 0..16u64 {
        // Give the background flush and commit a chance to run between writes.
        std::thread::sleep(std::time::Duration::from_millis(60));
        if let Err(error) = volume.write(
            big.ino,
            handle,
            index << 20,
            &incompressible(100 + index, 1 << 20),
        ) {
            failure = Some(error);
            break;
        }
    }
    let failure = match failure {
        Some(error) => Some(error),
        None => volume.fsync(big.ino, false).err(),
    };
    assert!(
        failure.as_ref().is_some_and(fossil::Error::is_no_space),
        "{failure:?}"
    );
    assert!(volume.getattr(big.ino).is_ok(), "the open file vanished");
    let _ = volume.release(big.ino, handle);

    let handle = volume.open_file(kept.ino).unwrap();
    let read = volume
        .read(kept.ino, handle, 0, (kept_bytes.len() + 1) as u32)
        .unwrap();
    assert!(read == kept_bytes, "kept file damaged");
    volume.release(kept.ino, handle).unwrap();
}

/// Fill what is left of the disk under `dir` with a file of its own.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.write_all(&block[..1]);
    path
}

#[test]
fn a_namespace_commit_on_a_full_disk_keeps_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = small_disk(dir.path(), "size=8m") else {
        println!("SKIP: needs root for a tmpfs");
        return;
    };
    let volume_dir = dir.path().join("volume");
    {
        let volume = Volume::open(&volume_dir).unwrap();
        let (new, handle) = volume
            .create(InodeNo::ROOT, OsStr::new("new"), 0o644, ME, true)
            .unwrap();
        volume.write(new.ino, handle, 0, b"small").unwrap();
        // The create is applied, not yet committed; now the disk is full, so the log
        // or the namespace database fails to grow at the fsync.
        let filler = fill(dir.path());
        let synced = volume.fsync(new.ino, false);
        // SQLite rolls the transaction back when its COMMIT fails: the volume must
        // apply the logged ops again, or the file is gone (ENOENT) until a restart.
        assert!(
            synced.as_ref().is_err_and(fossil::Error::is_no_space),
            "{synced:?}"
        );
        assert_eq!(
            volume.getattr(new.ino).unwrap().size,
            5,
            "the new file vanished"
        );
        std::fs::remove_file(filler).unwrap();
        volume.write(new.ino, handle, 5, b" again").unwrap();
        volume.fsync(new.ino, false).unwrap();
        volume.release(new.ino, handle).unwrap();
    }
    let volume = Volume::open(&volume_dir).unwrap();
    let new = volume.lookup(InodeNo::ROOT, OsStr::new("new")).unwrap();
    let handle = volume.open_file(new.ino).unwrap();
    assert_eq!(
        volume.read(new.ino, handle, 0, 100).unwrap(),
        b"small again"
    );
    volume.release(new.ino, handle).unwrap();
}
