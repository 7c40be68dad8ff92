//! Helpers for tests with several devices: separate `kith` daemons on loopback, each
//! with its own store, XDG directories and FUSE mount, paired through `kith device
//! add` / `kith device join` as a user would (see `/work/briefs/sync-cli-contract.md`).
//!
//! [`cluster`] builds N paired, mounted devices of one user and waits until each sees
//! all of them; [`tree`] walks a mount into a comparable value (names, kinds, modes,
//! sizes, content hashes, symlink targets, xattrs) so tests can assert that every
//! device ends with the same tree.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Kith;

/// How long pairing, mounting and catching up may take on a loaded 2-core machine.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

impl Kith {
    /// `kith mount MNT --listen 127.0.0.1:0`; returns the daemon's pid.
    pub fn mount_listening(&self) -> anyhow::Result<u32> {
        let out = self.ok([
            OsStr::new("mount"),
            self.mnt.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ])?;
        daemon_pid_in(&out)
    }

    /// `kith device add`: the pairing code (line 1 of its output).
    pub fn device_add(&self) -> anyhow::Result<String> {
        let out = self.ok(["device", "add"])?;
        let code = out.lines().next().unwrap_or_default().trim().to_owned();
        if code.is_empty() || code.contains(' ') {
            bail!("no pairing code on line 1 of {out:?}");
        }
        Ok(code)
    }

    /// Writes this installation's `config.toml` (before its first mount or join).
    pub fn set_config(&self, text: &str) -> anyhow::Result<()> {
        let dir = self.root().join("config/kith");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.toml"), text)?;
        Ok(())
    }

    /// `kith device join CODE` on this (fresh) store.
    pub fn device_join(&self, code: &str) -> anyhow::Result<String> {
        self.ok(["device", "join", code])
    }

    /// `kith status --json`, parsed.
    pub fn sync_status(&self) -> anyhow::Result<SyncStatus> {
        let out = self.ok(["status", "--json"])?;
        SyncStatus::parse(&out).with_context(|| format!("kith status --json printed {out:?}"))
    }

    /// The pid of the daemon holding this store, from its lock file.
    pub fn daemon_pid(&self) -> Option<u32> {
        let holder = std::fs::read_to_string(self.store().join("kith-daemon.lock")).ok()?;
        holder
            .strip_prefix("pid ")
            .and_then(|rest| rest.lines().next())
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Detaches the mount of a daemon that was killed, as a user would: `kith unmount`
    /// finds no daemon answering, aborts the mount's FUSE connection (a daemon killed
    /// while its invalidation thread waits in the kernel for a directory lock, held by
    /// a request in flight to that very daemon, never closes `/dev/fuse`) and detaches.
    pub fn detach_dead_mount(&self) -> anyhow::Result<()> {
        let said = self.unmount()?;
        anyhow::ensure!(said.contains("detached"), "kith unmount said {said:?}");
        Ok(())
    }
}

/// A witness of one user's home volume, in an installation of its own: paired through
/// `kith witness add` / `kith witness join`, run with `kith witness run` on loopback.
/// Dropping it stops its daemon (`kith witness stop`, else SIGKILL).
#[derive(Debug)]
pub struct Witness {
    pub kith: Kith,
    /// Where it listens (told to the inviter at join, used by every run).
    pub listen: std::net::SocketAddr,
}

impl Witness {
    /// A fresh store made a witness through `inviter` (a mounted device holding the
    /// user root key), listening on a free loopback port.
    pub fn join(inviter: &Kith) -> anyhow::Result<Witness> {
        let code = inviter.ok(["witness", "add"])?;
        let code = code.lines().next().unwrap_or_default().trim().to_owned();
        let kith = Kith::new()?;
        let listen = free_loopback_port()?;
        kith.ok(["witness", "join", &code, "--listen", &listen.to_string()])
            .context("kith witness join")?;
        Ok(Witness { kith, listen })
    }

    /// `kith witness run --listen …` (background); returns the daemon's pid.
    pub fn run(&self) -> anyhow::Result<u32> {
        let out = self
            .kith
            .ok(["witness", "run", "--listen", &self.listen.to_string()])?;
        daemon_pid_in(&out)
    }

    /// `kith witness stop`.
    pub fn stop(&self) -> anyhow::Result<String> {
        self.kith.ok(["witness", "stop"])
    }

    /// `kith status --json` of the witness, parsed.
    pub fn status(&self) -> anyhow::Result<SyncStatus> {
        self.kith.sync_status()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let pid = self.kith.daemon_pid();
        let _ = self.stop();
        if let Some(pid) = pid
            && !crate::wait_gone(pid, Duration::from_secs(5))
        {
            crate::kill_and_wait(pid);
        }
    }
}

/// A fresh device joined through `inviter`, not mounted. A failed join is retried on
/// a fresh store with a fresh code, and said on stdout (pairing has lost its
/// connection now and then on this loaded machine).
pub fn join_retrying(inviter: &Kith) -> anyhow::Result<Kith> {
    let mut attempt = 1;
    loop {
        let device = Kith::new()?;
        let code = inviter.device_add()?;
        match device.device_join(&code) {
            Ok(_) => return Ok(device),
            Err(error) if attempt < 3 => {
                println!("join attempt {attempt} failed, retrying: {error:#}");
                attempt += 1;
            }
            Err(error) => return Err(error.context("joining")),
        }
    }
}

/// `device`'s own fingerprint, as its status lists it.
pub fn own_fingerprint(device: &Kith) -> anyhow::Result<String> {
    device
        .sync_status()?
        .devices
        .into_iter()
        .find(|d| d.this)
        .map(|d| d.fingerprint)
        .context("status lists no device as this one")
}

/// A loopback UDP port free a moment ago.
pub fn free_loopback_port() -> anyhow::Result<std::net::SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

/// Aborts the FUSE connection mounted at `mount` (fusectl, mounted if needed; needs
/// root) and leaves the mount in place, which `kith unmount` would not. Reads the connection number from the mount table: a `stat` of a dead mount
/// could block.
pub fn abort_fuse_connection(mount: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(minor) = table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let at = fields.get(4)?;
        (Path::new(at) == mount)
            .then(|| {
                fields
                    .get(2)?
                    .split_once(':')
                    .map(|(_, minor)| minor.to_owned())
            })
            .flatten()
    }) else {
        return;
    };
    let connections = Path::new("/sys/fs/fuse/connections");
    if !connections.join(&minor).exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(connections)
            .output();
    }
    let _ = std::fs::write(connections.join(minor).join("abort"), b"1");
}

fn daemon_pid_in(out: &str) -> anyhow::Result<u32> {
    out.split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .with_context(|| format!("no daemon pid in {out:?}"))
}

/// `n` devices of one user: the first creates the user and the volume, the others
/// join through it; all are mounted and listening on loopback, and each lists all
/// `n` devices online, every one a voter (a device joins as a learner and is promoted
/// once caught up), with nothing left to apply.
pub fn cluster(n: usize) -> anyhow::Result<Vec<Kith>> {
    cluster_with(n, |_, _| Ok(()))
}

/// [`cluster`] with each device `prepare`d (e.g. its configuration) before its first
/// mount or join: `prepare(index, device)`.
pub fn cluster_with(
    n: usize,
    prepare: impl Fn(usize, &Kith) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Kith>> {
    let mut devices = Vec::with_capacity(n);
    let first = Kith::new()?;
    prepare(0, &first)?;
    first
        .mount_listening()
        .context("mounting the first device")?;
    devices.push(first);
    for index in 1..n {
        devices.push(join_and_mount(&devices[0], index, |device| {
            prepare(index, device)
        })?);
    }
    for (index, device) in devices.iter().enumerate() {
        wait_until(
            SYNC_TIMEOUT,
            &format!("device {index} sees {n} online voters"),
            || {
                let status = device.sync_status()?;
                Ok(status.devices.iter().filter(|d| d.online).count() == n
                    && status.devices.iter().all(|d| d.role == "voter")
                    && status.volume.behind == 0)
            },
        )?;
    }
    Ok(devices)
}

/// What a device's Paxos store (`paxos.sqlite`) holds of the volume's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptorLog {
    /// The last slot of the snapshot the log is truncated behind, if any.
    pub snapshot_through: Option<u64>,
    /// The first committed slot still stored, if any.
    pub first_slot: Option<u64>,
    /// Committed entries stored.
    pub entries: usize,
}

/// Reads `device`'s Paxos store (its daemon may be running: SQLite's WAL lets a
/// second connection read a consistent state).
pub fn acceptor_log(device: &Kith) -> anyhow::Result<AcceptorLog> {
    let store = paxos::SqliteStore::open(&device.store().join("paxos.sqlite"))?;
    let state = paxos::AcceptorStore::load(&store)?;
    Ok(AcceptorLog {
        snapshot_through: state.snapshot.map(|snapshot| snapshot.slot.0),
        first_slot: state.committed.keys().next().map(|slot| slot.0),
        entries: state.committed.len(),
    })
}

/// A fresh device (`prepare`d first, e.g. its configuration) joined through
/// `inviter` and mounted listening on loopback.
pub fn join_and_mount(
    inviter: &Kith,
    index: usize,
    prepare: impl Fn(&Kith) -> anyhow::Result<()>,
) -> anyhow::Result<Kith> {
    let device = join_with_retries(inviter, index, prepare)?;
    // A joined device's first mount waits for the volume's genesis; on a loaded
    // machine that wait has run out (said on stdout; a second mount is tried).
    if let Err(error) = device.mount_listening() {
        println!("device {index}: first mount failed, retrying: {error:#}");
        // Not necessarily mounted: a failed mount may have left nothing to detach.
        let _ = device.detach_dead_mount();
        device
            .mount_listening()
            .with_context(|| format!("mounting device {index}"))?;
    }
    Ok(device)
}

/// A fresh device joined through `inviter`. A failed join is retried on a fresh store
/// with a fresh code, as a user would, and said on stdout (pairing has failed with
/// "connection lost" now and then; the sync tests are about what comes after).
fn join_with_retries(
    inviter: &Kith,
    index: usize,
    prepare: impl Fn(&Kith) -> anyhow::Result<()>,
) -> anyhow::Result<Kith> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let device = Kith::new()?;
        prepare(&device)?;
        let code = inviter.device_add()?;
        match device.device_join(&code) {
            Ok(_) => return Ok(device),
            Err(error) if attempt < ATTEMPTS => {
                println!("device {index}: join attempt {attempt} failed, retrying: {error:#}");
                attempt += 1;
            }
            Err(error) => return Err(error.context(format!("device {index} joining"))),
        }
    }
}

/// Polls `ready` every 20 ms until it returns true; fails after `timeout` with the
/// last error, if any.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` reads as `content` (an open on another device runs a read
/// barrier, so once the writer's fsync returned this holds at once; the wait covers
/// names that appear within the kernel's entry TTL).
pub fn wait_for_content(path: &Path, content: &[u8], timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        timeout,
        &format!("{} to hold the content", path.display()),
        || Ok(std::fs::read(path).is_ok_and(|read| read == content)),
    )
}

/// Creates (or replaces) `path` with `content` and fsyncs it: acknowledged on return.
pub fn write_synced(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.write_all(content)
        .with_context(|| format!("write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))
}

/// The bytes of `path`, with the path in the error.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// The mount points of `devices`.
pub fn mounts(devices: &[Kith]) -> Vec<&Path> {
    devices.iter().map(|device| device.mnt.as_path()).collect()
}

/// SIGSTOP `pid` (its peers see it go silent; its socket stays bound).
pub fn pause(pid: u32) -> anyhow::Result<()> {
    signal(pid, nix::sys::signal::Signal::SIGSTOP)
}

/// SIGCONT `pid`.
pub fn resume(pid: u32) -> anyhow::Result<()> {
    signal(pid, nix::sys::signal::Signal::SIGCONT)
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)?;
    Ok(())
}

/// Bytes of an arena file's header and of a record's header (venti's formats).
const ARENA_HEADER_BYTES: usize = 32;
const RECORD_HEADER_BYTES: usize = 56;

/// The records of one arena file: (offset, payload length, address).
fn arena_records(bytes: &[u8]) -> Vec<(usize, usize, [u8; 32])> {
    let mut records = Vec::new();
    let mut at = ARENA_HEADER_BYTES;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_BYTES) {
        if &header[..4] != b"KVRC" {
            break;
        }
        let length = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let mut address = [0u8; 32];
        address.copy_from_slice(&header[16..48]);
        records.push((at, length, address));
        at += RECORD_HEADER_BYTES + length;
    }
    records
}

/// Flips one payload byte of every record of the block at `offset` in `arena`, in
/// every store of `stores` (unmounted): every copy of that block is damaged. Returns
/// how many copies were damaged.
pub fn damage_every_copy(arena: &Path, offset: u64, stores: &[PathBuf]) -> anyhow::Result<usize> {
    let bytes = std::fs::read(arena)?;
    let offset = usize::try_from(offset)?;
    let (_, _, address) = arena_records(&bytes)
        .into_iter()
        .find(|(at, length, _)| (*at..*at + RECORD_HEADER_BYTES + length).contains(&offset))
        .context("no record at the damaged offset")?;
    let mut damaged = 0;
    for store in stores {
        let arenas = std::fs::read_dir(store.join("blocks"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "kva"));
        for path in arenas {
            let mut bytes = std::fs::read(&path)?;
            let mut changed = false;
            for (at, length, _) in arena_records(&bytes)
                .into_iter()
                .filter(|(_, _, a)| *a == address)
            {
                if let Some(byte) = bytes.get_mut(at + RECORD_HEADER_BYTES + length / 2) {
                    *byte ^= 0x5a;
                    changed = true;
                    damaged += 1;
                }
            }
            if changed {
                std::fs::write(&path, &bytes)?;
                std::fs::File::open(&path)?.sync_all()?;
            }
        }
    }
    Ok(damaged)
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One file system object as the tree comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// "file", "dir", "symlink" or "other".
    pub kind: &'static str,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// BLAKE3 of the content (files) or the target (symlinks).
    pub hash: String,
    /// Extended attributes, name → value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every object under `root` by relative path, without the root's `.snapshots`.
pub fn tree(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            if relative.as_os_str().is_empty() && entry.file_name() == ".snapshots" {
                continue;
            }
            let path = relative.join(entry.file_name());
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)
                .with_context(|| format!("stat {}", full.display()))?;
            let file_type = meta.file_type();
            let (kind, size, hash) = if file_type.is_dir() {
                pending.push(path.clone());
                ("dir", 0, String::new())
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&full)?;
                let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
                ("symlink", 0, hash.to_hex().to_string())
            } else if file_type.is_file() {
                let content =
                    std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
                (
                    "file",
                    meta.size(),
                    blake3::hash(&content).to_hex().to_string(),
                )
            } else {
                ("other", 0, String::new())
            };
            let xattrs = if file_type.is_symlink() {
                BTreeMap::new()
            } else {
                xattrs(&full)?
            };
            out.insert(
                path,
                Node {
                    kind,
                    mode: meta.permissions().mode() & 0o7777,
                    size,
                    hash,
                    xattrs,
                },
            );
        }
    }
    Ok(out)
}

fn xattrs(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut names = vec![0u8; 64 << 10];
    let len = rustix::fs::listxattr(path, &mut names)
        .with_context(|| format!("listxattr {}", path.display()))?;
    let mut out = BTreeMap::new();
    for name in names.get(..len).unwrap_or_default().split(|b| *b == 0) {
        if name.is_empty() {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 64 << 10];
        let value_len = rustix::fs::getxattr(path, name.as_str(), &mut value)
            .with_context(|| format!("getxattr {} {name}", path.display()))?;
        value.truncate(value_len);
        out.insert(name, value);
    }
    Ok(out)
}

/// Fails with the first difference unless every tree equals the first one.
pub fn assert_same_trees(roots: &[&Path]) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    let Some((first, rest)) = roots.split_first() else {
        bail!("no trees to compare");
    };
    let reference = tree(first)?;
    for other in rest {
        let theirs = tree(other)?;
        for (path, node) in &reference {
            match theirs.get(path) {
                None => bail!(
                    "{} has {path:?}, {} does not",
                    first.display(),
                    other.display()
                ),
                Some(their) if their != node => bail!(
                    "{path:?} differs: {node:?} on {}, {their:?} on {}",
                    first.display(),
                    other.display()
                ),
                Some(_) => {}
            }
        }
        if let Some(extra) = theirs.keys().find(|path| !reference.contains_key(*path)) {
            bail!(
                "{} has {extra:?}, {} does not",
                other.display(),
                first.display()
            );
        }
    }
    Ok(reference)
}

/// Waits until every mount shows the same tree; returns it.
pub fn wait_for_same_trees(
    roots: &[&Path],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    let mut same = None;
    wait_until(timeout, "identical trees on every device", || {
        same = Some(assert_same_trees(roots)?);
        Ok(true)
    })?;
    same.context("no tree")
}

/// What `kith status --json` says (the fields the tests use).
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    pub listen: String,
    pub keyring: String,
    pub volume: VolumeStatus,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Clone, Debug, Default)]
pub struct VolumeStatus {
    pub commit_end: u64,
    pub applied_end: u64,
    pub behind: u64,
    pub queued: u64,
    pub leader: Option<String>,
    /// Content bytes the namespace refers to that the device does not hold.
    pub bytes_to_fetch: u64,
    /// Content bytes the namespace refers to (as of the device's last content walk).
    pub content_bytes: u64,
    /// Whether the device has counted its content yet.
    pub content_walked: bool,
    /// "full" or "on-demand".
    pub keep: String,
    /// Blocks written there that no other voter holds yet.
    pub unpushed_blocks: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DeviceStatus {
    pub fingerprint: String,
    pub name: String,
    pub role: String,
    pub online: bool,
    pub this: bool,
}

impl SyncStatus {
    pub fn parse(text: &str) -> anyhow::Result<SyncStatus> {
        let value = json::parse(text)?;
        let volume = value.get("volume").context("no volume")?;
        let number = |key: &str| volume.get(key).and_then(json::Value::as_u64).unwrap_or(0);
        let text_of = |value: &json::Value, key: &str| {
            value
                .get(key)
                .and_then(json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let devices = match value.get("devices") {
            Some(json::Value::Array(devices)) => devices
                .iter()
                .map(|device| DeviceStatus {
                    fingerprint: text_of(device, "fingerprint"),
                    name: text_of(device, "name"),
                    role: text_of(device, "role"),
                    online: device.get("online") == Some(&json::Value::Bool(true)),
                    this: device.get("this") == Some(&json::Value::Bool(true)),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(SyncStatus {
            listen: text_of(&value, "listen"),
            keyring: text_of(&value, "keyring"),
            volume: VolumeStatus {
                commit_end: number("commit_end"),
                applied_end: number("applied_end"),
                behind: number("behind"),
                queued: number("queued"),
                leader: volume
                    .get("leader")
                    .and_then(json::Value::as_str)
                    .map(str::to_owned),
                bytes_to_fetch: number("bytes_to_fetch"),
                content_bytes: number("content_bytes"),
                content_walked: volume.get("content_walked") == Some(&json::Value::Bool(true)),
                keep: text_of(volume, "keep"),
                unpushed_blocks: number("unpushed_blocks"),
            },
            devices,
        })
    }

    /// The leader's fingerprint, if this device knows one.
    pub fn leader(&self) -> Option<&str> {
        self.volume.leader.as_deref()
    }
}

/// A small JSON reader for `kith status --json` (the tests crate keeps its
/// dependencies to what the workspace already builds).
pub mod json {
    use anyhow::bail;

    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Value::Number(n) if *n >= 0.0 => Some(*n as u64),
                _ => None,
            }
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Value> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = parser.value()?;
        parser.space();
        if parser.at != parser.bytes.len() {
            bail!("trailing characters at {}", parser.at);
        }
        Ok(value)
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.at).copied()
        }

        fn space(&mut self) {
            while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
                self.at += 1;
            }
        }

        fn expect(&mut self, byte: u8) -> anyhow::Result<()> {
            self.space();
            if self.peek() != Some(byte) {
                bail!("expected {:?} at {}", byte as char, self.at);
            }
            self.at += 1;
            Ok(())
        }

        fn literal(&mut self, word: &str, value: Value) -> anyhow::Result<Value> {
            if self.bytes.get(self.at..self.at + word.len()) != Some(word.as_bytes()) {
                bail!("bad literal at {}", self.at);
            }
            self.at += word.len();
            Ok(value)
        }

        fn value(&mut self) -> anyhow::Result<Value> {
            self.space();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    let mut fields = Vec::new();
                    self.space();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                        return Ok(Value::Object(fields));
                    }
                    loop {
                        self.space();
                        let key = self.string()?;
                        self.expect(b':')?;
                        fields.push((key, self.value()?));
                        self.space();
                        match self.peek() {
                            Some(b',') => self.at += 1,
                            Some(b'}') => {
                                self.at += 1;
                                return Ok(Value::Object(fields));
                            }
                            _ => bail!("expected , or }} at {}", self.at),
                        }
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    let mut items = Vec::new();
                    self.space();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        return Ok(Value::Array(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.space();
                        match self.peek() {
                            Some(b',') => self.at += 1,
                            Some(b']') => {
                                self.at += 1;
                                return Ok(Value::Array(items));
                            }
                            _ => bail!("expected , or ] at {}", self.at),
                        }
                    }
                }
                Some(b'"') => Ok(Value::String(self.string()?)),
                Some(b't') => self.literal("true", Value::Bool(true)),
                Some(b'f') => self.literal("false", Value::Bool(false)),
                Some(b'n') => self.literal("null", Value::Null),
                Some(_) => {
                    let start = self.at;
                    while self
                        .peek()
                        .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
                    {
                        self.at += 1;
                    }
                    let number =
                        std::str::from_utf8(self.bytes.get(start..self.at).unwrap_or_default())?;
                    Ok(Value::Number(number.parse()?))
                }
                None => bail!("unexpected end"),
            }
        }

        fn string(&mut self) -> anyhow::Result<String> {
            if self.peek() != Some(b'"') {
                bail!("expected a string at {}", self.at);
            }
            self.at += 1;
            let mut out = Vec::new();
            loop {
                match self.peek() {
                    None => bail!("unterminated string"),
                    Some(b'"') => {
                        self.at += 1;
                        return Ok(String::from_utf8(out)?);
                    }
                    Some(b'\\') => {
                        let escaped = self.bytes.get(self.at + 1).copied();
                        self.at += 2;
                        match escaped {
                            Some(b'n') => out.push(b'\n'),
                            Some(b't') => out.push(b'\t'),
                            Some(b'u') => {
                                let hex = self.bytes.get(self.at..self.at + 4).unwrap_or_default();
                                let code = u32::from_str_radix(std::str::from_utf8(hex)?, 16)?;
                                let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                                out.extend_from_slice(ch.to_string().as_bytes());
                                self.at += 4;
                            }
                            Some(other) => out.push(other),
                            None => bail!("unterminated escape"),
                        }
                    }
                    Some(byte) => {
                        out.push(byte);
                        self.at += 1;
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_the_status_shape() {
            let value = parse(
                r#"{"listen":"127.0.0.1:4000","volume":{"commit_end":12,"leader":null},
                   "devices":[{"name":"a\"b","online":true},{"online":false}]}"#,
            )
            .unwrap();
            assert_eq!(
                value.get("listen").and_then(Value::as_str),
                Some("127.0.0.1:4000")
            );
            let volume = value.get("volume").unwrap();
            assert_eq!(volume.get("commit_end").and_then(Value::as_u64), Some(12));
            assert_eq!(volume.get("leader"), Some(&Value::Null));
            let Some(Value::Array(devices)) = value.get("devices") else {
                panic!("no devices");
            };
            assert_eq!(devices[0].get("name").and_then(Value::as_str), Some("a\"b"));
            assert_eq!(devices[1].get("online"), Some(&Value::Bool(false)));
            assert!(parse("{").is_err());
            assert!(parse("[1] x").is_err());
        }
    }
}
