//! A mount whose daemon stops answering — stopped, or killed while one of its threads
//! is stuck in the kernel — hangs every program that touches it. `kith unmount DIR`
//! frees them (it aborts the FUSE connection), detaches the mount, and the store mounts
//! again with every fsynced file intact.
//!
//! The daemon is frozen with SIGSTOP here: like a daemon wedged while dying, it keeps
//! /dev/fuse open and answers nothing, and unlike that state it can be made on demand.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kith_tests::{Kith, kill_and_wait, pattern, skip_without_fuse};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Poll `child` until it exits or `timeout` passes; `true` if it exited.
fn exits_within(child: &mut std::process::Child, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

#[test]
fn unmount_frees_programs_blocked_on_a_wedged_daemon_and_the_store_mounts_again()
-> anyhow::Result<()> {
    if skip_without_fuse("unmount_frees_programs_blocked_on_a_wedged_daemon") {
        return Ok(());
    }
    let kith = Kith::new()?;
    let pid = kith.mount()?;
    let content = pattern(7, 200_000);
    let file = kith.path("kept");
    fs::write(&file, &content)?;
    fs::File::open(&file)?.sync_all()?;

    let daemon = Pid::from_raw(i32::try_from(pid)?);
    kill(daemon, Signal::SIGSTOP)?;
    // A program that needs the daemon: a name the kernel has not cached.
    let mut blocked = Command::new("stat")
        .arg(kith.path("never-looked-up"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let hung = !exits_within(&mut blocked, Duration::from_secs(1))?;

    let unmounted = kith.unmount();
    let freed = exits_within(&mut blocked, Duration::from_secs(10))?;
    // Whatever happened, end the frozen daemon before asserting.
    let _ = kill(daemon, Signal::SIGKILL);
    let _ = kill(daemon, Signal::SIGCONT);
    let gone = kill_and_wait(pid);
    if !freed {
        let _ = blocked.kill();
    }
    assert!(hung, "stat returned while the daemon was stopped");
    let unmounted = unmounted?;
    assert!(unmounted.contains("aborted"), "{unmounted}");
    assert!(freed, "the blocked program was not freed by `kith unmount`");
    assert!(gone, "the daemon did not end");
    assert!(!kith.is_mounted(), "the mount is still there");

    kith.mount()?;
    assert_eq!(fs::read(&file)?, content);
    kith.unmount()?;
    Ok(())
}
