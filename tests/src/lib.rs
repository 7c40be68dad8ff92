//! Helpers for Kith's integration tests: real mounts, real daemons, real stores.
//!
//! Every test gets its own [`Kith`]: a temporary home with its own XDG directories
//! (so its daemon, store, socket and identity are separate from every other test and
//! from the user's), a mount point, and the real `kith` binary. Dropping it unmounts
//! and, failing that, kills the daemon and detaches the mount, so a failing test
//! leaves nothing mounted behind.
//!
//! Tests that need FUSE call [`fuse_unavailable`] first and skip, with the reason
//! printed, on machines without `/dev/fuse` (CI installs fuse3 and runs them).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

pub mod decoders;
pub mod sync;

/// How long a daemon gets to go away after SIGKILL or unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why FUSE tests cannot run here, or `None` if they can.
pub fn fuse_unavailable() -> Option<String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened".into());
    }
    let root = nix::unistd::geteuid().is_root();
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !root && !fusermount {
        return Some("not root and fusermount3 is not installed".into());
    }
    None
}

/// Print why a FUSE test is skipped and return true, or return false if it can run.
pub fn skip_without_fuse(test: &str) -> bool {
    match fuse_unavailable() {
        Some(reason) => {
            println!("SKIP {test}: {reason}");
            true
        }
        None => false,
    }
}

/// The `kith` binary of this build, built on first use if missing or stale.
pub fn kith_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_kith().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_kith() -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/<this test> → target/<profile>/kith
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target/<profile> directory")?;
    let target_dir = profile_dir
        .parent()
        .context("no target directory above the profile directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .context("profile directory name is not UTF-8")?;
    // Cargo builds the binary for `cargo test --workspace`; a lone
    // `cargo test -p kith-tests` does not, so build it (a no-op when up to date).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "mountd", "--bin", "kith"])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().context("running cargo build for kith")?;
    if !status.success() {
        bail!("cargo build -p mountd failed ({status})");
    }
    let bin = profile_dir.join("kith");
    if !bin.exists() {
        bail!("{} missing after cargo build", bin.display());
    }
    Ok(bin)
}

/// One isolated Kith installation with one mount point.
#[derive(Debug)]
pub struct Kith {
    root: tempfile::TempDir,
    pub mnt: PathBuf,
    bin: PathBuf,
}

impl Kith {
    /// A fresh installation under a short path in /tmp (mount paths stay short).
    pub fn new() -> anyhow::Result<Kith> {
        let root = tempfile::Builder::new()
            .prefix("kith-t")
            .tempdir_in("/tmp")?;
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        Ok(Kith {
            mnt,
            bin: kith_bin()?,
            root,
        })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The store the installation uses (the default one under its data dir).
    pub fn store(&self) -> PathBuf {
        self.root.path().join("data/kith/store")
    }

    /// A `kith` command with this installation's environment.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("HOME", self.root.path())
            .env("XDG_DATA_HOME", self.root.path().join("data"))
            .env("XDG_CONFIG_HOME", self.root.path().join("config"))
            .env("XDG_RUNTIME_DIR", self.root.path().join("run"))
            // A new store creates a keyring: tests have no passphrase to give.
            .env("KITH_KEYRING", "unencrypted")
            .env_remove("RUST_LOG");
        command
    }

    /// Run `kith ARGS` to completion.
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.command(args).output()?;
        Ok(output)
    }

    /// Run `kith ARGS`; fail with its stderr unless it succeeds. Returns stdout.
    pub fn ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.run(&args)?;
        if !output.status.success() {
            bail!(
                "kith {:?} failed ({}): {}{}",
                args,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kith mount MNT`; returns the daemon's pid.
    pub fn mount(&self) -> anyhow::Result<u32> {
        let out = self.ok([OsStr::new("mount"), self.mnt.as_os_str()])?;
        let pid = out
            .split("daemon pid ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .with_context(|| format!("no daemon pid in {out:?}"))?;
        Ok(pid)
    }

    pub fn unmount(&self) -> anyhow::Result<String> {
        self.ok([OsStr::new("unmount"), self.mnt.as_os_str()])
    }

    /// Path of `name` inside the mount.
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn is_mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|table| {
                let wanted = self.mnt.to_string_lossy().replace(' ', "\\040");
                table
                    .lines()
                    .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
            })
            .unwrap_or(false)
    }
}

impl Drop for Kith {
    fn drop(&mut self) {
        if !self.is_mounted() {
            return;
        }
        if self.unmount().is_ok() && !self.is_mounted() {
            return;
        }
        // Last resort: find the daemon by its lock file, kill it, detach the mount.
        if let Ok(holder) = std::fs::read_to_string(self.store().join("kith-daemon.lock"))
            && let Some(pid) = holder
                .strip_prefix("pid ")
                .and_then(|rest| rest.lines().next())
                .and_then(|pid| pid.trim().parse().ok())
        {
            kill_and_wait(pid);
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .output();
    }
}

/// SIGKILL `pid` and wait until it is gone (or a zombie nobody reaps).
pub fn kill_and_wait(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid.as_raw() as u32, EXIT_TIMEOUT)
}

/// Send SIGTERM to `pid`.
pub fn terminate(pid: u32) -> anyhow::Result<()> {
    let raw = i32::try_from(pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    Ok(())
}

/// Whether process `pid` has exited (a zombie counts as exited).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !is_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Deterministic pseudo-random bytes (xorshift), so content checks need no storage.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads `path` in pieces of `piece_bytes` and compares each with `expected`: answers
/// the offsets of the pieces that failed with EIO (a damaged block), and fails on a
/// piece that reads back other bytes or fails otherwise.
pub fn eio_pieces(path: &Path, expected: &[u8], piece_bytes: usize) -> anyhow::Result<Vec<u64>> {
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut failed = Vec::new();
    for (index, expected) in expected.chunks(piece_bytes).enumerate() {
        let offset = (index * piece_bytes) as u64;
        let mut piece = vec![0u8; expected.len()];
        match file.read_exact_at(&mut piece, offset) {
            Ok(()) => ensure!(
                piece == expected,
                "bytes at {offset} of {} read back wrong",
                path.display()
            ),
            Err(error) if error.raw_os_error() == Some(libc::EIO) => failed.push(offset),
            Err(error) => bail!("reading {} at {offset}: {error}", path.display()),
        }
    }
    Ok(failed)
}

/// venti's arena layout, as the damage helper below needs it.
const ARENA_HEADER_BYTES: u64 = 32;
const RECORD_HEADER_BYTES: u64 = 56;
/// A leaf holds at least venti's smallest chunk; pointer blocks of the files the
/// tests write are smaller, so a record this long is a leaf.
pub const LEAF_PAYLOAD_BYTES_MIN: u64 = 16 * 1024;

/// Flip one payload byte of the arena record holding the byte 4 MiB before the end of
/// the last arena: a leaf of the file written last.
pub fn damage_a_leaf_of_the_last_file(store: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let mut arenas: Vec<PathBuf> = fs::read_dir(store.join("blocks"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "kva"))
        .collect();
    arenas.sort();
    let arena = arenas.pop().context("no arena file in the store")?;
    let bytes = fs::read(&arena)?;
    let target = (bytes.len() as u64)
        .checked_sub(4 << 20)
        .context("arena smaller than the large file")?;
    let mut at = ARENA_HEADER_BYTES;
    while at + RECORD_HEADER_BYTES <= bytes.len() as u64 {
        let header = bytes
            .get(at as usize..(at + RECORD_HEADER_BYTES) as usize)
            .context("short record header")?;
        ensure!(&header[..4] == b"KVRC", "no record header at {at}");
        let length = u64::from(u32::from_le_bytes([
            header[8], header[9], header[10], header[11],
        ]));
        let end = at + RECORD_HEADER_BYTES + length;
        if (at..end).contains(&target) {
            ensure!(
                length >= LEAF_PAYLOAD_BYTES_MIN,
                "record at {at} ({length} bytes) is not a leaf"
            );
            let flip = at + RECORD_HEADER_BYTES + length / 2;
            let file = fs::OpenOptions::new().read(true).write(true).open(&arena)?;
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, flip)?;
            file.write_all_at(&[byte[0] ^ 0x5a], flip)?;
            file.sync_all()?;
            return Ok((arena, flip));
        }
        at = end;
    }
    bail!("no record covers offset {target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_deterministic_and_distinct() {
        assert_eq!(pattern(1, 1000), pattern(1, 1000));
        assert_ne!(pattern(1, 1000), pattern(2, 1000));
        assert_eq!(pattern(3, 13).len(), 13);
        assert_eq!(&pattern(4, 100)[..50], &pattern(4, 50)[..]);
    }

    #[test]
    fn our_own_process_is_not_gone() {
        assert!(!is_gone(std::process::id()));
        assert!(is_gone(u32::MAX));
    }
}
