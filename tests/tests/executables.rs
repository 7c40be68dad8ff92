//! Programs run from the mount: the kernel's "text file busy" rule must hold, and an
//! open that the rule refuses must leave the program's bytes alone.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Command;

use kith_tests::{Kith, skip_without_fuse};

#[test]
fn a_running_program_is_busy_and_a_refused_truncating_open_keeps_its_bytes() -> anyhow::Result<()> {
    if skip_without_fuse("a_running_program_is_busy_and_a_refused_truncating_open_keeps_its_bytes")
    {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;

    let original = fs::read("/bin/sleep")?;
    let program = kith.path("sleep");
    fs::write(&program, &original)?;
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755))?;
    let mut sleeping = Command::new(&program).arg("30").spawn()?;

    let busy = |options: &mut fs::OpenOptions| {
        let outcome = options.open(&program);
        let errno = outcome
            .as_ref()
            .err()
            .and_then(|error| error.raw_os_error());
        (outcome.is_ok(), errno)
    };
    let write_only = busy(fs::OpenOptions::new().write(true));
    let read_write = busy(fs::OpenOptions::new().read(true).write(true));
    // O_RDONLY | O_TRUNC: the kernel checks "busy" only after the file system's open.
    let truncating = busy(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC),
    );
    let still_running = sleeping.try_wait()?.is_none();
    sleeping.kill()?;
    sleeping.wait()?;

    assert_eq!(write_only, (false, Some(libc::ETXTBSY)));
    assert_eq!(read_write, (false, Some(libc::ETXTBSY)));
    assert_eq!(truncating, (false, Some(libc::ETXTBSY)));
    assert!(still_running, "the program died while it was being opened");
    assert!(
        fs::read(&program)? == original,
        "a refused open changed the program"
    );
    Ok(())
}
