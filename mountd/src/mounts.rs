//! Mount points: the checks made before mounting, and the kernel's mount table.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `fsname` of every Kith mount (the mount table's "source" column).
pub const FS_NAME: &str = "kith";

/// One line of `/proc/self/mountinfo`, the parts we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The superblock's device number; for a FUSE mount it names the connection in
    /// `/sys/fs/fuse/connections`.
    pub device: Option<(u32, u32)>,
}

impl MountEntry {
    pub fn is_kith(&self) -> bool {
        self.source == FS_NAME || self.fs_type == format!("fuse.{FS_NAME}")
    }
}

/// The current mount table (empty if it cannot be read).
pub fn mount_table() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    // The last entry wins: later mounts stack on earlier ones.
    mount_table()
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == path)
}

/// Parse mountinfo(5): `id parent dev root MOUNT_POINT opts [optional…] - TYPE SOURCE …`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut fields = before.split(' ');
            let device = fields.nth(2).and_then(|field| {
                let (major, minor) = field.split_once(':')?;
                Some((major.parse().ok()?, minor.parse().ok()?))
            });
            let mount_point = fields.nth(1)?;
            let mut after = after.split(' ');
            let fs_type = after.next()?;
            let source = after.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: unescape(fs_type),
                source: unescape(source),
                device,
            })
        })
        .collect()
}

/// Undo the kernel's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuse, with a one-line reason, a mount point that cannot take a new mount.
pub fn check_mount_point(path: &Path) -> Result<()> {
    let problem = |problem: String| Error::MountPoint {
        path: path.to_owned(),
        problem,
    };
    // The mount table first: a mount whose daemon is wedged would hang a stat.
    if let Some(entry) = mounted_at(path) {
        let what = if entry.is_kith() {
            format!(
                "is already mounted by kith (if its daemon has stopped, run `kith unmount {}`)",
                path.display()
            )
        } else {
            format!("is already a mount point ({})", entry.fs_type)
        };
        return Err(problem(what));
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => return Err(problem("is not a directory".into())),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(problem(
                "does not exist (create the directory first)".into(),
            ));
        }
        Err(error) if error.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(problem(format!(
                "is a mount whose daemon has stopped; run `kith unmount {}` first",
                path.display()
            )));
        }
        Err(error) => return Err(problem(error.to_string())),
    }
    Ok(())
}

/// Unmount `path`; `lazy` detaches it even while busy. Root calls umount2 directly,
/// anyone else goes through the setuid `fusermount3`. Unlike fuser's unmounter this
/// can be retried after EBUSY.
pub fn unmount(path: &Path, lazy: bool) -> std::io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        return nix::mount::umount2(path, flags).map_err(std::io::Error::from);
    }
    let mut command = std::process::Command::new("fusermount3");
    command.arg("-u");
    if lazy {
        command.arg("-z");
    }
    let output = command.arg(path).output()?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("busy") {
        return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(std::io::Error::other(format!(
        "fusermount3 -u failed: {}",
        stderr.trim()
    )))
}

/// The FUSE connections' control directory (the `fusectl` filesystem).
const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// Abort the FUSE connection of the mount at `path`: every request waiting on its
/// daemon fails at once and the daemon's /dev/fuse descriptor stops blocking.
///
/// This is how a mount whose daemon died but cannot finish dying is freed: a daemon
/// killed while one of its threads waits in the kernel (for example an invalidation
/// waiting for a directory lock that a request to this same daemon holds) keeps
/// /dev/fuse open, and programs using the mount hang until the connection is aborted.
/// Mounts `fusectl` if it is not mounted and we are root.
pub fn abort_connection(path: &Path) -> std::io::Result<()> {
    let entry = mounted_at(path).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let (major, minor) = entry
        .device
        .ok_or_else(|| std::io::Error::other("the mount table gives no device number"))?;
    // The kernel names connections by its internal dev_t: major << 20 | minor.
    let connection = Path::new(FUSE_CONNECTIONS).join(((major << 20) | minor).to_string());
    if !connection.exists() && nix::unistd::geteuid().is_root() {
        // Already mounted elsewhere, or not at all: mount it here and look again.
        let _ = nix::mount::mount(
            Some("fusectl"),
            FUSE_CONNECTIONS,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::write(connection.join("abort"), b"1")
}

/// Explain a failed FUSE mount in one line.
pub fn mount_failure(path: &Path, error: &std::io::Error) -> Error {
    let problem = match error.raw_os_error() {
        Some(libc::EBUSY) => "is busy".to_owned(),
        Some(libc::ENOENT) if !Path::new("/dev/fuse").exists() => {
            return Error::Fuse(
                "/dev/fuse is missing (load the fuse module, or install fuse3)".into(),
            );
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("permission denied ({error}); is fusermount3 installed and /dev/fuse usable?")
        }
        _ => {
            if error.kind() == std::io::ErrorKind::NotFound {
                return Error::Fuse(format!(
                    "cannot mount: {error} (is fusermount3 installed? try `apt-get install fuse3`)"
                ));
            }
            error.to_string()
        }
    };
    Error::MountPoint {
        path: path.to_owned(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
98 22 0:50 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:40 master:2 - fuse.kith kith rw,user_id=0\n\
garbage line\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/"));
        assert_eq!(entries[0].fs_type, "ext4");
        assert!(!entries[0].is_kith());
        assert_eq!(entries[1].mount_point, PathBuf::from("/tmp/with space"));
        assert_eq!(entries[1].source, "kith");
        assert!(entries[1].is_kith());
        assert_eq!(entries[1].device, Some((0, 50)));
    }

    #[test]
    fn bad_mount_points_get_one_line_reasons() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing");
        let message = check_mount_point(&missing).err().map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("does not exist")),
            "{message:?}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"x")?;
        let message = check_mount_point(&file).err().map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("is not a directory")),
            "{message:?}"
        );
        assert!(check_mount_point(dir.path()).is_ok());
        // "/" is always a mount point.
        let message = check_mount_point(Path::new("/"))
            .err()
            .map(|e| e.to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("already")),
            "{message:?}"
        );
        Ok(())
    }
}
