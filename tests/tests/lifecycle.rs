//! The daemon's life: mount, status, snapshot, verify, unmount, remount, signals, and
//! the refusals a user may run into.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::time::Duration;

use kith_tests::{Kith, pattern, skip_without_fuse, terminate, wait_gone};

#[test]
fn data_survives_unmount_and_remount() -> anyhow::Result<()> {
    if skip_without_fuse("data_survives_unmount_and_remount") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;
    fs::create_dir(kith.path("docs"))?;
    fs::write(kith.path("docs/small"), b"small file")?;
    let big = pattern(7, 3 << 20);
    fs::write(kith.path("docs/big"), &big)?;
    fs::hard_link(kith.path("docs/big"), kith.path("big-link"))?;
    std::os::unix::fs::symlink("docs/small", kith.path("link"))?;
    let message = kith.unmount()?;
    assert!(message.contains("unmounted"), "{message}");
    assert!(!kith.is_mounted());
    assert!(
        !kith.path("docs").exists(),
        "the mount point is empty when unmounted"
    );

    kith.mount()?;
    assert_eq!(fs::read(kith.path("docs/small"))?, b"small file");
    assert!(fs::read(kith.path("docs/big"))? == big);
    assert!(fs::read(kith.path("big-link"))? == big);
    assert_eq!(fs::read(kith.path("link"))?, b"small file");
    kith.unmount()?;

    // The store reads back clean with no daemon running.
    let report = kith.ok(["verify"])?;
    assert!(report.contains("problems: 0"), "{report}");
    Ok(())
}

#[test]
fn status_snapshot_and_verify_talk_to_the_daemon() -> anyhow::Result<()> {
    if skip_without_fuse("status_snapshot_and_verify_talk_to_the_daemon") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let pid = kith.mount()?;
    fs::write(kith.path("before"), b"1")?;

    let status = kith.ok(["status"])?;
    assert!(status.contains(&format!("pid: {pid}")), "{status}");
    assert!(
        status.contains(&format!("mountpoint: {}", kith.mnt.display())),
        "{status}"
    );

    let out = kith.ok(["snapshot", "first"])?;
    assert!(out.contains("first"), "{out}");
    fs::write(kith.path("before"), b"2")?;
    fs::write(kith.path("after"), b"3")?;
    assert_eq!(fs::read(kith.path(".snapshots/first/before"))?, b"1");
    assert!(!kith.path(".snapshots/first/after").exists());
    let refused = fs::write(kith.path(".snapshots/first/before"), b"x");
    assert_eq!(
        refused.err().and_then(|e| e.raw_os_error()),
        Some(libc::EROFS)
    );
    let bad = kith.run(["snapshot", "a/b"])?;
    assert!(!bad.status.success());

    let report = kith.ok(["verify"])?;
    assert!(report.contains("problems: 0"), "{report}");
    kith.unmount()?;
    let status = kith.ok(["status"])?;
    assert!(status.contains("no kith daemon"), "{status}");
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_store_is_refused() -> anyhow::Result<()> {
    if skip_without_fuse("a_second_daemon_on_the_same_store_is_refused") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let pid = kith.mount()?;
    let other = kith.root().join("other");
    fs::create_dir(&other)?;
    let second = kith.run([OsStr::new("mount"), other.as_os_str()])?;
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // The first mount is unharmed.
    fs::write(kith.path("still"), b"fine")?;
    assert_eq!(fs::read(kith.path("still"))?, b"fine");
    Ok(())
}

#[test]
fn bad_mount_points_get_one_clear_line() -> anyhow::Result<()> {
    if skip_without_fuse("bad_mount_points_get_one_clear_line") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let missing = kith.root().join("missing");
    let file = kith.root().join("file");
    fs::write(&file, b"")?;
    for (dir, expected) in [(&missing, "does not exist"), (&file, "is not a directory")] {
        let out = kith.run([OsStr::new("mount"), dir.as_os_str()])?;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    kith.mount()?;
    let again = kith.run([OsStr::new("mount"), kith.mnt.as_os_str()])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("already mounted"), "{stderr}");

    // Busy: a process inside the mount keeps `unmount` from succeeding; the daemon
    // stays up and says why.
    let mut inside = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(&kith.mnt)
        .spawn()?;
    let busy = kith.run([OsStr::new("unmount"), kith.mnt.as_os_str()])?;
    let _ = inside.kill();
    let _ = inside.wait();
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("busy"), "{stderr}");
    assert!(kith.is_mounted());

    let not_kith = kith.run([OsStr::new("unmount"), kith.root().as_os_str()])?;
    assert!(!not_kith.status.success());
    assert!(String::from_utf8_lossy(&not_kith.stderr).contains("not mounted by kith"));
    kith.unmount()?;
    Ok(())
}

#[test]
fn a_full_disk_gives_enospc_and_keeps_what_was_stored() -> anyhow::Result<()> {
    if skip_without_fuse("a_full_disk_gives_enospc_and_keeps_what_was_stored") {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP a_full_disk_gives_enospc_and_keeps_what_was_stored: needs root for tmpfs");
        return Ok(());
    }
    let kith = Kith::new()?;
    // The store lives on a 16 MiB tmpfs.
    let small_disk = kith.root().join("small-disk");
    fs::create_dir(&small_disk)?;
    nix::mount::mount(
        Some("tmpfs"),
        &small_disk,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )?;
    let _tmpfs = UnmountOnDrop(small_disk.clone());
    let store = small_disk.join("store");
    let store = store.to_string_lossy();
    let mount = kith.ok(["--store", &store, "mount", &kith.mnt.to_string_lossy()])?;
    assert!(mount.contains("mounted"), "{mount}");

    let kept = pattern(11, 1 << 20);
    let mut file = fs::File::create(kith.path("kept"))?;
    file.write_all(&kept)?;
    file.sync_all()?;
    drop(file);

    // Incompressible data well over the disk size: some write, flush or fsync must
    // fail with ENOSPC, and nothing may claim success for what was not stored.
    let mut big = fs::File::create(kith.path("too-big"))?;
    let mut failure = None;
    for i in 0..32u64 {
        if let Err(error) = big.write_all(&pattern(100 + i, 1 << 20)) {
            failure = Some(error);
            break;
        }
    }
    let failure = match failure {
        Some(error) => Some(error),
        None => big.sync_all().err(),
    };
    drop(big);
    assert_eq!(
        failure.as_ref().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC),
        "{failure:?}"
    );

    // The daemon is still up and what was stored before reads back intact.
    let status = kith.ok(["--store", &store, "status"])?;
    assert!(status.contains("mountpoint"), "{status}");
    assert!(fs::read(kith.path("kept"))? == kept, "kept file damaged");
    // Dropping the file that did not fit may itself need space (the log is on the same
    // disk); unmount then either succeeds or says the disk is full, and the mount is
    // gone either way.
    let _ = fs::remove_file(kith.path("too-big"));
    let unmount = kith.run([OsStr::new("unmount"), kith.mnt.as_os_str()])?;
    let stderr = String::from_utf8_lossy(&unmount.stderr);
    assert!(
        unmount.status.success() || stderr.contains("full"),
        "{stderr}"
    );
    assert!(!kith.is_mounted());
    Ok(())
}

/// Lazily unmounts a helper file system (the tmpfs) when the test ends.
struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `kith unmount` run where the daemon's control socket cannot be found (another
/// XDG_RUNTIME_DIR: another login, sudo) must not take a live daemon for a dead one
/// and abort its connection under the programs using it.
#[test]
fn unmount_from_another_runtime_dir_stops_a_live_daemon_cleanly() -> anyhow::Result<()> {
    if skip_without_fuse("unmount_from_another_runtime_dir_stops_a_live_daemon_cleanly") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let pid = kith.mount()?;
    let content = pattern(11, 300_000);
    fs::write(kith.path("kept"), &content)?;
    let elsewhere = kith.root().join("other-run");
    fs::create_dir(&elsewhere)?;
    let unmount_elsewhere = || {
        kith.command([OsStr::new("unmount"), kith.mnt.as_os_str()])
            .env("XDG_RUNTIME_DIR", &elsewhere)
            .output()
    };

    // In use: refused as busy, and the program keeps working.
    let open = fs::File::open(kith.path("kept"))?;
    let busy = unmount_elsewhere()?;
    let said = String::from_utf8_lossy(&busy.stderr).into_owned();
    assert!(!busy.status.success(), "{said}");
    assert!(said.contains("busy"), "{said}");
    assert!(kith.is_mounted());
    assert_eq!(fs::read(kith.path("kept"))?, content);
    drop(open);

    let done = unmount_elsewhere()?;
    let said = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(
        done.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        said.contains("unmounted") && !said.contains("aborted"),
        "{said}"
    );
    assert!(
        wait_gone(pid, Duration::from_secs(20)),
        "the daemon did not stop"
    );
    assert!(!kith.is_mounted());

    kith.mount()?;
    assert_eq!(fs::read(kith.path("kept"))?, content);
    kith.unmount()?;
    Ok(())
}

#[test]
fn sigterm_syncs_and_unmounts() -> anyhow::Result<()> {
    if skip_without_fuse("sigterm_syncs_and_unmounts") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let pid = kith.mount()?;
    fs::write(kith.path("unsynced"), pattern(3, 200_000))?;
    terminate(pid)?;
    assert!(
        wait_gone(pid, Duration::from_secs(20)),
        "daemon still running"
    );
    assert!(!kith.is_mounted());
    kith.mount()?;
    assert!(fs::read(kith.path("unsynced"))? == pattern(3, 200_000));
    Ok(())
}
