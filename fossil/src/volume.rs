//! `Volume`: the namespace and file contents of one tree, driven by inode numbers.
//!
//! Every change goes the same way: check POSIX preconditions against the applied
//! namespace, build an [`Op`], append it to the log, apply it into the namespace (in
//! one SQLite transaction that is committed in groups), and answer. Reads come from
//! the namespace, the write buffers of open files and the content store.
//!
//! Commit points: the SQLite transaction is committed at most every
//! `commit_interval_ms` or `commit_ops_max` ops (the log is written out to the OS
//! first, so the namespace is never ahead of the log); `fsync`/`sync_all` make content
//! blocks durable in the store first, then the log. A log entry reaches the OS only
//! after the blocks it refers to are durable, so a power cut never leaves a logged
//! write pointing at lost blocks. A background thread flushes idle dirty files and
//! commits on the interval; it syncs the store without holding the volume lock.
//! `close` makes a file's writes one operation, visible at once; durability comes
//! with `fsync` (or the next interval, for a crash of the process).
//!
//! Lookup counts (`forget`) and open handles keep unlinked files alive until the
//! kernel lets go of them; `readdir` entries count as lookups (readdirplus semantics).
//! `.snapshots/NAME/…` shows snapshot images read-only under inode numbers from bit 62
//! up, which real inodes never use.
//!
//! With [`VolumeOptions::agreement`] the volume is replicated: the log is the group's,
//! ops are proposed at the same commit points, and the database holds committed state
//! with this device's pending ops on top in the open transaction (see the
//! `replicated` submodule and `docs/replication.md`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use venti::BlockRef;

use crate::agreement::Agreement;
use crate::apply::{Outcome, apply};
use crate::checkpoint::Image;
use crate::content::{Collected, ContentStore, ContentWriter, Overlay, read_content, seek_content};
use crate::log::{FileLog, Log};
use crate::namespace::{Inode, Namespace};
use crate::op::{
    Content, DeviceId, INLINE_BYTES_MAX, NAME_BYTES_MAX, Op, OpBody, Rights, SYMLINK_BYTES_MAX,
    XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX, name_is_valid,
};
use crate::venti_content::VentiContent;
use crate::*;

mod replicated;
pub use replicated::{
    ApplyProgress, ApplyProgressHook, CHECKPOINT_BYTES_DEFAULT, CHECKPOINT_OPS_DEFAULT,
    Invalidation, SyncStatus,
};
use replicated::{Checkpoints, ProgressHook, Replica};

/// Told what other devices changed, after it is applied and the volume lock released:
/// the daemon invalidates the kernel's caches for these inodes and names. It runs on a
/// fossil thread (the applier, a notifier), or inside [`Volume::apply_committed`] —
/// never inside a `Volume` call that serves a kernel request, so it may call the
/// kernel's notify functions.
pub type RemoteChangeHook = Arc<dyn Fn(&[Invalidation]) + Send + Sync>;

/// Inode of the virtual `.snapshots` directory; snapshot views count up from it.
const SNAPSHOTS_INO: InodeNo = InodeNo(1 << 62);
const SNAPSHOTS_NAME: &[u8] = b".snapshots";
/// Most entries one `readdir` call returns; the caller continues from the last cookie.
pub const READDIR_ENTRIES_MAX: usize = 1024;
const LINKS_MAX: u32 = 65000;
/// `path_of` names at most this many components (a deeper path is cut at the top).
const PATH_COMPONENTS_MAX: usize = 256;
/// All write buffers together hold at most about this much before files are flushed.
const DIRTY_TOTAL_BYTES_MAX: usize = 256 << 20;
/// Buffers smaller than this never trigger the global check (it walks open files).
const DIRTY_CHECK_BYTES: usize = 1 << 20;
/// Rewrites and edits up to this size are assembled in memory and sealed in one call.
const REWRITE_IN_MEMORY_BYTES_MAX: usize = 4 << 20;
/// A new file written sequentially streams to the store once it is this long.
const STREAM_AFTER_BYTES: u64 = 256 << 10;
/// Pieces of a streamed copy or rewrite.
const COPY_BYTES: usize = 1 << 20;

/// How to open a volume. `Default` gives a device-1 volume on a file log.
pub struct VolumeOptions {
    pub device: DeviceId,
    /// Where file content goes; `None`: the volume's own store under its directory.
    pub content: Option<Arc<dyn ContentStore>>,
    /// The log; `None`: a [`FileLog`] under the volume directory. Unused when
    /// `agreement` is set.
    pub log: Option<Box<dyn Log>>,
    /// Replicated: the volume runs on this group log instead of `log` (see
    /// `docs/replication.md`): a committed namespace plus this device's pending ops.
    pub agreement: Option<Arc<dyn Agreement>>,
    /// Replicated: called with what remote ops changed (see [`RemoteChangeHook`]).
    pub on_remote_change: Option<RemoteChangeHook>,
    /// Replicated: an empty volume is created here (this device proposes genesis).
    /// `false` on a device that joined: `open` then waits up to `genesis_wait_ms` for
    /// the committed genesis and fails with [`Error::NoRoot`] if it does not come.
    pub create_if_empty: bool,
    pub genesis_wait_ms: u64,
    /// Replicated: `fsync`, close after a write and `sync_all` wait this long for their
    /// ops to commit, then succeed anyway (the ops stay durably queued).
    pub commit_wait_ms: u64,
    /// Replicated: `open_file` waits this long for a read barrier, then serves the
    /// local state.
    pub read_barrier_ms: u64,
    pub commit_interval_ms: u64,
    pub commit_ops_max: usize,
    /// A dirty file untouched this long is turned into a write op by the timer.
    pub idle_flush_ms: u64,
    /// Over this many buffered bytes in one file, it is flushed as a write op.
    pub dirty_file_bytes_max: usize,
    /// Run the background commit/flush thread.
    pub background: bool,
    /// Replicated: the background thread checkpoints (and the agreement truncates its
    /// log) once this many slots were applied since the last checkpoint; 0: never on
    /// its own.
    pub checkpoint_ops: u64,
    /// Replicated: or once this many bytes of committed ops were; 0: no byte bound.
    pub checkpoint_bytes: u64,
    /// Replicated: told how far a long run of committed ops has come while it is
    /// applied (a replay at open; see [`ApplyProgressHook`]).
    pub apply_progress: Option<ApplyProgressHook>,
}

impl Default for VolumeOptions {
    fn default() -> VolumeOptions {
        VolumeOptions {
            device: DeviceId(1),
            content: None,
            log: None,
            agreement: None,
            on_remote_change: None,
            create_if_empty: true,
            genesis_wait_ms: 10_000,
            commit_wait_ms: 2_000,
            read_barrier_ms: 1_000,
            commit_interval_ms: 50,
            commit_ops_max: 4096,
            idle_flush_ms: 1000,
            dirty_file_bytes_max: 64 << 20,
            background: true,
            checkpoint_ops: CHECKPOINT_OPS_DEFAULT,
            checkpoint_bytes: CHECKPOINT_BYTES_DEFAULT,
            apply_progress: None,
        }
    }
}

impl std::fmt::Debug for VolumeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeOptions")
            .field("device", &self.device)
            .field("content", &self.content)
            .field("log", &self.log)
            .field("agreement", &self.agreement)
            .field("on_remote_change", &self.on_remote_change.is_some())
            .field("create_if_empty", &self.create_if_empty)
            .field("genesis_wait_ms", &self.genesis_wait_ms)
            .field("commit_wait_ms", &self.commit_wait_ms)
            .field("read_barrier_ms", &self.read_barrier_ms)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("commit_ops_max", &self.commit_ops_max)
            .field("idle_flush_ms", &self.idle_flush_ms)
            .field("dirty_file_bytes_max", &self.dirty_file_bytes_max)
            .field("background", &self.background)
            .field("checkpoint_ops", &self.checkpoint_ops)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .field("apply_progress", &self.apply_progress.is_some())
            .finish()
    }
}

/// One mounted volume.
#[derive(Debug)]
pub struct Volume {
    shared: Arc<Shared>,
    timer: Option<std::thread::JoinHandle<()>>,
    /// Replicated: applies commits as the agreement reports them.
    applier: Option<std::thread::JoinHandle<()>>,
    /// Set by [`Volume::abandon`]: drop without the final flush (a simulated crash).
    abandoned: bool,
}

struct Shared {
    state: Mutex<State>,
    content: Arc<dyn ContentStore>,
    read_ahead: Mutex<ReadAhead>,
    stop: Mutex<bool>,
    wake: Condvar,
    /// Set (under `stop`'s lock) to have the background thread commit now rather than
    /// at the end of its interval: a replicated close asks for it.
    commit_soon: std::sync::atomic::AtomicBool,
    sync: Option<SyncShared>,
}

/// What the replicated paths need without taking the volume lock.
struct SyncShared {
    agreement: Arc<dyn Agreement>,
    on_remote_change: Option<RemoteChangeHook>,
    /// The committed layer's applied end (also in `State`), read without the lock.
    applied_end: Arc<AtomicU64>,
    commit_wait: Duration,
    read_barrier: Duration,
    /// When a read barrier last found no quorum (cleared by one that did).
    barrier_failed_at: Mutex<Option<Instant>>,
    /// Invalidations found while serving requests go to the notifier thread.
    notifier: Option<std::sync::mpsc::Sender<Vec<Invalidation>>>,
    /// Held by a catch-up that runs the hook on its own thread, through the hook.
    delivering: Mutex<()>,
    /// The replica's proposal lock (`Replica::proposing`).
    proposing: Arc<Mutex<()>>,
    /// When to checkpoint on its own (`Replica::checkpoints`).
    checkpoints: Arc<Checkpoints>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .field("content", &self.content)
            .field("replicated", &self.sync.is_some())
            .finish_non_exhaustive()
    }
}

/// Namespace state key set once a volume has been opened on an agreement.
const REPLICATED_STATE_KEY: &str = "replicated";

/// A sequential reader gets this much per trip to the store: the tree's pointer
/// blocks and partly read leaves are opened once per window, not once per FUSE read.
const READ_AHEAD_BYTES: usize = 4 << 20;
/// Threads that open the blocks of one read-ahead window.
const READ_THREADS_MAX: usize = 4;
/// Less content than this is opened on the calling thread.
const PARALLEL_READ_BYTES_MIN: u64 = 1 << 20;
/// Windows kept (one per inode): bounds read-ahead memory to 64 MiB (twice that
/// while each also fetches its successor).
const READ_AHEAD_WINDOWS_MAX: usize = 16;

/// Read-ahead windows of committed tree content. Content under a root never changes,
/// so a window is valid for as long as the file's root is the one it was read from.
#[derive(Debug, Default)]
struct ReadAhead {
    windows: HashMap<InodeNo, Window>,
    clock: u64,
}

#[derive(Debug)]
struct Window {
    root: venti::Address,
    start: u64,
    bytes: Arc<Vec<u8>>,
    /// Where a sequential reader continues.
    next_offset: u64,
    last_used: u64,
    /// The following window, fetched in the background once the reader is half way
    /// through this one, so store reads and unsealing overlap the kernel's copying.
    prefetch: Option<Prefetch>,
}

#[derive(Debug)]
struct Prefetch {
    start: u64,
    fetching: std::thread::JoinHandle<Result<Vec<u8>>>,
}

impl Prefetch {
    /// Fetch `[start, start + READ_AHEAD_BYTES)` of `root` on a thread of its own.
    fn start(content: &Arc<dyn ContentStore>, root: &BlockRef, start: u64) -> Option<Prefetch> {
        let content = Arc::clone(content);
        let root = *root;
        std::thread::Builder::new()
            .name("fossil-prefetch".into())
            .spawn(move || read_parallel(content.as_ref(), &root, start, READ_AHEAD_BYTES))
            .ok()
            .map(|fetching| Prefetch { start, fetching })
    }
}

#[derive(Debug)]
struct State {
    dir: PathBuf,
    ns: Namespace,
    /// The single-device log; unused (an empty [`NoLog`]) when `replica` is set.
    log: Box<dyn Log>,
    /// Replicated: the agreement and this device's pending ops.
    replica: Option<Replica>,
    content: Arc<dyn ContentStore>,
    device: DeviceId,
    next_seq: u64,
    options: Tuning,
    files: HashMap<InodeNo, OpenFile>,
    handles: HashMap<u64, InodeNo>,
    next_handle: u64,
    lookups: HashMap<InodeNo, u64>,
    /// Where each looked-up inode was last seen: the hint a write op carries for its
    /// conflict copy.
    names: HashMap<InodeNo, (InodeNo, Vec<u8>)>,
    uncommitted_ops: usize,
    last_commit: Instant,
    /// Ops referring to store blocks were logged since the store was last synced.
    content_unsynced: bool,
    /// Counts the times `content_unsynced` was set: the background commit syncs the
    /// store without the lock and learns from it whether new blocks came meanwhile.
    content_generation: u64,
    /// The background thread commits on the interval (else `submit` does).
    background_commits: bool,
    /// A failed commit lost applied ops the log holds: re-apply before the next commit.
    ns_behind: bool,
    views: Views,
}

#[derive(Clone, Copy, Debug)]
struct Tuning {
    commit_interval: Duration,
    commit_ops_max: usize,
    idle_flush: Duration,
    dirty_file_bytes_max: usize,
}

#[derive(Debug, Default)]
struct OpenFile {
    handles: u32,
    dirty: Option<Dirty>,
    /// Buffered writes were lost (the store failed, e.g. the disk is full) after
    /// `write` had answered: the next write, flush or fsync of the file reports it.
    lost_write: Option<LostWrite>,
    /// `lost_write` was already answered to a `write` (it still fails flush/fsync).
    lost_write_told_writer: bool,
}

/// Why buffered writes of a file were dropped, kept to be reported later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LostWrite {
    NoSpace,
    Io,
}

impl LostWrite {
    fn of(error: &Error) -> LostWrite {
        if error.is_no_space() {
            LostWrite::NoSpace
        } else {
            LostWrite::Io
        }
    }

    fn error(self) -> Error {
        match self {
            LostWrite::NoSpace => Error::NoSpace,
            LostWrite::Io => Error::Io(std::io::Error::other(
                "buffered writes of this file were lost to a store failure",
            )),
        }
    }
}

/// The write buffer of one file.
struct Dirty {
    overlay: Overlay,
    /// Sequential writes of a new file stream straight into the store: the first
    /// `streamed` bytes are in `stream`, not in the overlay.
    stream: Option<Box<dyn ContentWriter>>,
    mtime_ns: i64,
    last_write: Instant,
    /// The file as the buffer started over it: if another device's write replaced it
    /// meanwhile, the buffer's write op must not claim to replace that one (it becomes
    /// a conflict copy instead of silently overwriting it).
    started_from: (Content, u64),
    started_version: u64,
}

impl std::fmt::Debug for Dirty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dirty")
            .field("size", &self.overlay.size)
            .field("buffered_bytes", &self.overlay.data_bytes())
            .field(
                "streaming",
                &self.stream.as_ref().map(|stream| stream.len()),
            )
            .finish()
    }
}

impl Volume {
    /// Open (creating on first use) the volume stored under `dir`.
    pub fn open(dir: &Path) -> Result<Volume> {
        Volume::open_with(dir, VolumeOptions::default())
    }

    pub fn open_with(dir: &Path, options: VolumeOptions) -> Result<Volume> {
        std::fs::create_dir_all(dir)?;
        if options.device.0 == 0 || options.device.0 > DeviceId::MAX {
            return Err(Error::Invalid("device number out of range"));
        }
        let content: Arc<dyn ContentStore> = match options.content {
            Some(content) => content,
            None => default_content_store(dir)?,
        };
        let replica = options.agreement.as_ref().map(|agreement| {
            let mut replica = Replica::new(
                Arc::clone(agreement),
                options.create_if_empty,
                Duration::from_millis(options.genesis_wait_ms),
                Duration::from_millis(options.commit_interval_ms),
                options.commit_ops_max.max(1),
                Checkpoints::new(
                    options.checkpoint_ops,
                    options.checkpoint_bytes,
                    dir.join("namespace.sqlite"),
                ),
            );
            replica.apply_progress = ProgressHook(options.apply_progress.clone());
            replica
        });
        let log: Box<dyn Log> = match (options.log, &replica) {
            (_, Some(_)) => Box::new(NoLog),
            (Some(log), None) => log,
            (None, None) => Box::new(FileLog::open(&dir.join("log"))?),
        };
        let tuning = Tuning {
            commit_interval: Duration::from_millis(options.commit_interval_ms),
            commit_ops_max: options.commit_ops_max.max(1),
            idle_flush: Duration::from_millis(options.idle_flush_ms),
            dirty_file_bytes_max: options.dirty_file_bytes_max.max(INLINE_BYTES_MAX),
        };
        let ns_path = dir.join("namespace.sqlite");
        let mut state = State {
            dir: dir.to_path_buf(),
            ns: Namespace::open(&ns_path)?,
            log,
            replica,
            content: Arc::clone(&content),
            device: options.device,
            next_seq: 1,
            options: tuning,
            files: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            lookups: HashMap::new(),
            names: HashMap::new(),
            uncommitted_ops: 0,
            last_commit: Instant::now(),
            content_unsynced: false,
            content_generation: 0,
            background_commits: options.background,
            ns_behind: false,
            views: Views::default(),
        };
        state.recover(&ns_path)?;
        let notifier = match (&state.replica, &options.on_remote_change) {
            (Some(_), Some(hook)) => {
                let (sender, receiver) = std::sync::mpsc::channel();
                let hook = Arc::clone(hook);
                std::thread::Builder::new()
                    .name("fossil-notify".into())
                    .spawn(move || replicated::notifier_loop(receiver, hook))?;
                Some(sender)
            }
            _ => None,
        };
        let sync = state.replica.as_ref().map(|replica| SyncShared {
            agreement: Arc::clone(&replica.agreement),
            on_remote_change: options.on_remote_change.clone(),
            applied_end: Arc::clone(&replica.applied_end_shared),
            commit_wait: Duration::from_millis(options.commit_wait_ms),
            read_barrier: Duration::from_millis(options.read_barrier_ms),
            barrier_failed_at: Mutex::new(None),
            notifier,
            delivering: Mutex::new(()),
            proposing: Arc::clone(&replica.proposing),
            checkpoints: Arc::clone(&replica.checkpoints),
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            content,
            read_ahead: Mutex::new(ReadAhead::default()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            commit_soon: std::sync::atomic::AtomicBool::new(false),
            sync,
        });
        let timer = if options.background {
            let weak = Arc::downgrade(&shared);
            let interval = tuning.commit_interval.max(Duration::from_millis(10));
            Some(
                std::thread::Builder::new()
                    .name("fossil-commit".into())
                    .spawn(move || background_loop(weak, interval))?,
            )
        } else {
            None
        };
        let applier = match &shared.sync {
            Some(sync) => {
                let weak = Arc::downgrade(&shared);
                let agreement = Arc::clone(&sync.agreement);
                // Also how often a deferred group commit is checked; bounded so a stop
                // is seen soon.
                let poll = tuning
                    .commit_interval
                    .clamp(Duration::from_millis(10), Duration::from_millis(100));
                Some(
                    std::thread::Builder::new()
                        .name("fossil-apply".into())
                        .spawn(move || replicated::applier_loop(weak, agreement, poll))?,
                )
            }
            None => None,
        };
        Ok(Volume {
            shared,
            timer,
            applier,
            abandoned: false,
        })
    }

    pub fn lookup(&self, parent: InodeNo, name: &OsStr) -> Result<Attr> {
        let mut state = self.shared.state.lock();
        let name = name.as_bytes();
        check_name_len(name)?;
        if let Some(attr) = state.view_lookup(parent, name)? {
            return Ok(attr);
        }
        let dir = state.dir_inode(parent)?;
        let ino = match name {
            b"." => parent,
            b".." => dir.parent,
            _ => state.ns.lookup(parent, name)?.ok_or(Error::NotFound)?,
        };
        let attr = state.getattr(ino)?;
        state.remember(ino, parent, name);
        Ok(attr)
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: InodeNo, count: u64) {
        let mut state = self.shared.state.lock();
        if let Some(lookups) = state.lookups.get_mut(&ino) {
            *lookups = lookups.saturating_sub(count);
            if *lookups == 0 {
                state.lookups.remove(&ino);
                state.names.remove(&ino);
            }
        }
        if let Err(error) = state.reclaim_if_unused(ino) {
            tracing::warn!(?ino, %error, "reclaiming an unlinked inode failed");
        }
    }

    pub fn getattr(&self, ino: InodeNo) -> Result<Attr> {
        self.shared.state.lock().getattr(ino)
    }

    pub fn setattr(
        &self,
        ino: InodeNo,
        change: &SetAttr,
        _handle: Option<FileHandle>,
    ) -> Result<Attr> {
        let mut state = self.shared.state.lock();
        state.writable(ino)?;
        let inode = state.inode(ino)?;
        if let Some(size) = change.size {
            match inode.kind {
                FileKind::File => state.truncate(ino, size)?,
                FileKind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("truncate of a special file")),
            }
        }
        let now = now_ns();
        let time = |set: Option<TimeSet>| {
            set.map(|set| match set {
                TimeSet::Now => now,
                TimeSet::At(at) => system_time_ns(at),
            })
        };
        let atime_ns = time(change.atime);
        let mtime_ns = time(change.mtime);
        if change.perm.is_some()
            || change.uid.is_some()
            || change.gid.is_some()
            || atime_ns.is_some()
            || mtime_ns.is_some()
        {
            if mtime_ns.is_some() {
                // An explicit mtime must not be overtaken by buffered writes.
                state.flush_file(ino)?;
            }
            state.submit(OpBody::SetAttr {
                ino,
                perm: change.perm.map(|perm| perm & 0o7777),
                uid: change.uid,
                gid: change.gid,
                atime_ns,
                mtime_ns,
            })?;
        } else if change.ctime.is_some() && change.size.is_none() {
            state.submit(OpBody::SetAttr {
                ino,
                perm: None,
                uid: None,
                gid: None,
                atime_ns: None,
                mtime_ns: None,
            })?;
        }
        state.getattr(ino)
    }

    pub fn mknod(
        &self,
        parent: InodeNo,
        name: &OsStr,
        kind: FileKind,
        perm: u16,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(Error::Invalid("mknod of a directory or symlink"));
        }
        let mut state = self.shared.state.lock();
        let ino = state.create_node(
            parent,
            name.as_bytes(),
            kind,
            perm,
            rdev,
            caller,
            Vec::new(),
        )?;
        state.getattr(ino)
    }

    pub fn mkdir(&self, parent: InodeNo, name: &OsStr, perm: u16, caller: Caller) -> Result<Attr> {
        let mut state = self.shared.state.lock();
        let ino = state.create_node(
            parent,
            name.as_bytes(),
            FileKind::Dir,
            perm,
            0,
            caller,
            Vec::new(),
        )?;
        state.getattr(ino)
    }

    pub fn symlink(
        &self,
        parent: InodeNo,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<Attr> {
        let target = target.as_os_str().as_bytes().to_vec();
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len() > SYMLINK_BYTES_MAX {
            return Err(Error::NameTooLong {
                len: target.len(),
                max: SYMLINK_BYTES_MAX,
            });
        }
        let mut state = self.shared.state.lock();
        let ino = state.create_node(
            parent,
            name.as_bytes(),
            FileKind::Symlink,
            0o777,
            0,
            caller,
            target,
        )?;
        state.getattr(ino)
    }

    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        let state = self.shared.state.lock();
        let inode = state.inode(ino)?;
        match (inode.kind, inode.content) {
            (FileKind::Symlink, Content::Inline(target)) => Ok(target),
            _ => Err(Error::Invalid("readlink of a non-symlink")),
        }
    }

    pub fn unlink(&self, parent: InodeNo, name: &OsStr) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.remove_name(parent, name.as_bytes(), false)
    }

    pub fn rmdir(&self, parent: InodeNo, name: &OsStr) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.remove_name(parent, name.as_bytes(), true)
    }

    pub fn rename(
        &self,
        parent: InodeNo,
        name: &OsStr,
        new_parent: InodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.rename(
            parent,
            name.as_bytes(),
            new_parent,
            new_name.as_bytes(),
            flags,
        )
    }

    pub fn link(&self, ino: InodeNo, new_parent: InodeNo, new_name: &OsStr) -> Result<Attr> {
        let mut state = self.shared.state.lock();
        let new_name = new_name.as_bytes();
        check_name_len(new_name)?;
        state.writable(ino)?;
        state.writable(new_parent)?;
        let inode = state.inode(ino)?;
        if inode.kind == FileKind::Dir {
            return Err(Error::NotPermitted);
        }
        if inode.nlink >= LINKS_MAX {
            return Err(Error::TooManyLinks);
        }
        state.check_absent(new_parent, new_name)?;
        state.submit(OpBody::Link {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        })?;
        state.remember(ino, new_parent, new_name);
        state.getattr(ino)
    }

    /// Open a file. O_TRUNC never reaches here: the kernel truncates by `setattr`
    /// after its own checks (see mountd's FUSE init).
    ///
    /// Replicated: a read barrier first, and everything committed before it is applied
    /// before answering, so an open after another device's `fsync` returned sees its
    /// content (without a quorum within `read_barrier_ms`: the local state).
    pub fn open_file(&self, ino: InodeNo) -> Result<FileHandle> {
        if !is_view(ino) {
            replicated::read_barrier(&self.shared);
        }
        let mut state = self.shared.state.lock();
        if is_view(ino) {
            state.view_attr(ino)?;
            return Ok(state.new_handle(ino));
        }
        let inode = state.inode(ino)?;
        if inode.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        Ok(state.new_handle(ino))
    }

    pub fn create(
        &self,
        parent: InodeNo,
        name: &OsStr,
        perm: u16,
        caller: Caller,
        exclusive: bool,
    ) -> Result<(Attr, FileHandle)> {
        let mut state = self.shared.state.lock();
        let name = name.as_bytes();
        check_name_len(name)?;
        state.writable(parent)?;
        state.dir_inode(parent)?;
        if let Some(existing) = state.ns.lookup(parent, name)? {
            if exclusive {
                return Err(Error::Exists);
            }
            if state.inode(existing)?.kind == FileKind::Dir {
                return Err(Error::IsDir);
            }
            let attr = state.getattr(existing)?;
            state.remember(existing, parent, name);
            return Ok((attr, state.new_handle(existing)));
        }
        let ino = state.create_node(parent, name, FileKind::File, perm, 0, caller, Vec::new())?;
        let attr = state.getattr(ino)?;
        Ok((attr, state.new_handle(ino)))
    }

    pub fn read(
        &self,
        ino: InodeNo,
        _handle: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        let (content, file_size) = {
            let mut state = self.shared.state.lock();
            if is_view(ino) {
                let inode = state.view_inode(ino)?;
                (inode.content, inode.size)
            } else {
                if state
                    .files
                    .get(&ino)
                    .is_some_and(|file| file.dirty.is_some())
                {
                    return state.read_dirty(ino, offset, size as usize);
                }
                let inode = state.inode(ino)?;
                if inode.kind == FileKind::Dir {
                    return Err(Error::IsDir);
                }
                (inode.content, inode.size)
            }
        };
        // Committed content is immutable: read it without holding the volume lock.
        let bytes = match &content {
            Content::Tree(root) if offset < root.length && offset < file_size => {
                let len = (size as u64).min(file_size - offset) as usize;
                self.read_tree(ino, root, offset, len).map(|mut bytes| {
                    bytes.resize(len, 0);
                    bytes
                })
            }
            _ => read_sized(
                self.shared.content.as_ref(),
                &content,
                file_size,
                offset,
                size as usize,
            ),
        };
        bytes.inspect_err(|error| {
            let path = self.path_of(ino);
            tracing::error!(
                ?ino,
                path = %path.display(),
                offset,
                size,
                %error,
                "read failed: damaged or missing content"
            );
        })
    }

    /// A path of `ino` inside the volume, for messages: from the names the kernel
    /// looked up, else from the directory entries. `?` stands for a component that
    /// cannot be found (e.g. an unlinked file).
    pub fn path_of(&self, ino: InodeNo) -> PathBuf {
        let state = self.shared.state.lock();
        let mut components: Vec<Vec<u8>> = Vec::new();
        let mut at = ino;
        for _ in 0..PATH_COMPONENTS_MAX {
            if at == InodeNo::ROOT {
                break;
            }
            let named = match state.names.get(&at) {
                Some((parent, name)) => Some((*parent, name.clone())),
                None => state.ns.name_of(at).ok().flatten(),
            };
            let Some((parent, name)) = named else {
                components.push(b"?".to_vec());
                break;
            };
            components.push(name);
            at = parent;
        }
        let mut path = PathBuf::from("/");
        for name in components.iter().rev() {
            path.push(OsStr::from_bytes(name));
        }
        path
    }

    /// `len` bytes of committed tree content from `offset`, through the read-ahead
    /// window of `ino` (shorter at the content's end).
    fn read_tree(&self, ino: InodeNo, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = (offset + len as u64).min(root.length);
        let (sequential, prefetch) = {
            let mut read_ahead = self.shared.read_ahead.lock();
            read_ahead.clock += 1;
            let clock = read_ahead.clock;
            match read_ahead.windows.get_mut(&ino) {
                Some(window) if window.root == root.address => {
                    let window_end = window.start + window.bytes.len() as u64;
                    if window.start <= offset && end <= window_end {
                        let from = (offset - window.start) as usize;
                        let to = (end - window.start) as usize;
                        window.next_offset = end;
                        window.last_used = clock;
                        let half_way = window.start + window.bytes.len() as u64 / 2;
                        if window.prefetch.is_none() && end >= half_way && window_end < root.length
                        {
                            window.prefetch =
                                Prefetch::start(&self.shared.content, root, window_end);
                        }
                        return Ok(window.bytes[from..to].to_vec());
                    }
                    let prefetch = window
                        .prefetch
                        .take()
                        .filter(|prefetch| prefetch.start <= offset);
                    (offset == window.next_offset || prefetch.is_some(), prefetch)
                }
                _ => (offset == 0, None),
            }
        };
        // The window fetched ahead, if it covers this read (else fetch as usual).
        let prefetched = prefetch.and_then(|prefetch| match prefetch.fetching.join() {
            Ok(Ok(bytes)) if end <= prefetch.start + bytes.len() as u64 => {
                Some((prefetch.start, bytes))
            }
            _ => None,
        });
        let (start, bytes) = match prefetched {
            Some(fetched) => fetched,
            None => (offset, self.fetch_tree(root, offset, len, sequential)?),
        };
        let from = (offset - start) as usize;
        let answer = bytes[from..bytes.len().min((end - start) as usize)].to_vec();
        if bytes.len() > from + answer.len() {
            let mut read_ahead = self.shared.read_ahead.lock();
            let clock = read_ahead.clock;
            if read_ahead.windows.len() >= READ_AHEAD_WINDOWS_MAX
                && !read_ahead.windows.contains_key(&ino)
            {
                let oldest = read_ahead
                    .windows
                    .iter()
                    .min_by_key(|(_, window)| window.last_used)
                    .map(|(&ino, _)| ino);
                if let Some(oldest) = oldest {
                    read_ahead.windows.remove(&oldest);
                }
            }
            let window = Window {
                root: root.address,
                start,
                bytes: Arc::new(bytes),
                next_offset: end,
                last_used: clock,
                prefetch: None,
            };
            read_ahead.windows.insert(ino, window);
        } else if let Some(window) = self.shared.read_ahead.lock().windows.get_mut(&ino) {
            window.next_offset = end;
        }
        Ok(answer)
    }

    /// Content from `offset`: a whole read-ahead window for a sequential reader, else
    /// `len` bytes.
    fn fetch_tree(
        &self,
        root: &BlockRef,
        offset: u64,
        len: usize,
        sequential: bool,
    ) -> Result<Vec<u8>> {
        // A read that already reaches the end of the content needs no window.
        let fetch_len = if sequential && root.length.saturating_sub(offset) > len as u64 {
            len.max(READ_AHEAD_BYTES)
        } else {
            len
        };
        let bytes = if fetch_len > len {
            // A damaged block must fail only the reads that cover it, not every read
            // whose read-ahead window reaches it.
            match read_parallel(self.shared.content.as_ref(), root, offset, fetch_len) {
                Ok(bytes) => bytes,
                Err(_) => self.shared.content.read(root, offset, len)?,
            }
        } else {
            self.shared.content.read(root, offset, fetch_len)?
        };
        Ok(bytes)
    }

    pub fn write(
        &self,
        ino: InodeNo,
        _handle: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32> {
        let mut state = self.shared.state.lock();
        state.writable(ino)?;
        state.tell_writer_of_lost_write(ino)?;
        state.write(ino, offset, data)?;
        Ok(data.len() as u32)
    }

    /// `close(2)` of one descriptor: dirty data becomes one write operation.
    pub fn flush(&self, ino: InodeNo, _handle: FileHandle) -> Result<()> {
        if is_view(ino) {
            return Ok(());
        }
        let mut state = self.shared.state.lock();
        let seq_before = state.next_seq;
        let flushed = state.flush_file(ino);
        state.report_flush(ino, flushed)?;
        let wrote = state.next_seq != seq_before;
        let replicated = state.replica.is_some();
        drop(state);
        if wrote && replicated {
            self.commit_soon();
        }
        Ok(())
    }

    /// Replicated: a close that wrote has the background thread propose its op now
    /// instead of at the end of the interval, without waiting for it here. A burst of
    /// closes (an unpacked archive) shares one content sync and one proposal, where
    /// waiting for each commit would cost every file a quorum round trip; `fsync`
    /// is the call that waits for the commit.
    fn commit_soon(&self) {
        let _stop = self.shared.stop.lock();
        self.shared
            .commit_soon
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake.notify_all();
    }

    pub fn release(&self, ino: InodeNo, handle: FileHandle) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.handles.remove(&handle.0);
        if is_view(ino) {
            return Ok(());
        }
        let seq_before = state.next_seq;
        let flushed = state.flush_file(ino);
        let flushed = state.report_flush(ino, flushed);
        if let Some(file) = state.files.get_mut(&ino) {
            file.handles = file.handles.saturating_sub(1);
            if file.handles == 0 && file.dirty.is_none() {
                state.files.remove(&ino);
            }
        }
        flushed?;
        state.reclaim_if_unused(ino)?;
        let wrote = state.next_seq != seq_before;
        let replicated = state.replica.is_some();
        drop(state);
        if wrote && replicated {
            self.commit_soon();
        }
        Ok(())
    }

    /// Make every op so far durable ([`State::make_durable`]), releasing `state`.
    ///
    /// Replicated: the content sync and the proposal run without the volume lock
    /// ([`replicated::propose`]); then this waits, still without it, up to
    /// `commit_wait_ms` for the ops to commit.
    fn make_durable(&self, mut state: parking_lot::MutexGuard<'_, State>) -> Result<()> {
        if self.shared.sync.is_none() {
            return state.make_durable();
        }
        // Like the local path, sync the store whatever the flag says: a store that
        // failed a write (a full disk) says so here, before anything is proposed.
        let generation = state.content_generation;
        drop(state);
        self.shared.content.sync()?;
        {
            let mut state = self.shared.state.lock();
            if state.content_generation == generation {
                state.content_unsynced = false;
            }
        }
        replicated::propose(&self.shared)?;
        let last = self.shared.state.lock().last_proposal();
        replicated::wait_committed(&self.shared, last);
        Ok(())
    }

    /// Durable when this returns, also for an open but unlinked file.
    pub fn fsync(&self, ino: InodeNo, _data_only: bool) -> Result<()> {
        if is_view(ino) {
            return Ok(());
        }
        let mut state = self.shared.state.lock();
        let flushed = state.flush_file(ino);
        state.report_flush(ino, flushed)?;
        self.make_durable(state)
    }

    /// Entries after `cookie` (0 = from the start), including "." and "..". At most
    /// [`READDIR_ENTRIES_MAX`] per call; an empty answer is the end.
    pub fn readdir(&self, ino: InodeNo, cookie: u64) -> Result<Vec<DirEntry>> {
        let mut state = self.shared.state.lock();
        if is_view(ino) {
            return state.view_readdir(ino, cookie);
        }
        let dir = state.dir_inode(ino)?;
        let mut out = Vec::new();
        if cookie < 1 {
            out.push(DirEntry {
                cookie: 1,
                name: ".".into(),
                attr: state.getattr(ino)?,
            });
        }
        if cookie < 2 {
            // A removed directory's parent may be gone too: ".." is then itself.
            let parent_attr = match state.getattr(dir.parent) {
                Err(Error::NotFound) => state.getattr(ino)?,
                other => other?,
            };
            out.push(DirEntry {
                cookie: 2,
                name: "..".into(),
                attr: parent_attr,
            });
        }
        if cookie < 3 && ino == InodeNo::ROOT && !state.ns.snapshots()?.is_empty() {
            out.push(DirEntry {
                cookie: 3,
                name: OsString::from_vec(SNAPSHOTS_NAME.to_vec()),
                attr: snapshots_dir_attr(&dir),
            });
        }
        let after = cookie.saturating_sub(3);
        for (position, name, child) in state.ns.dir_entries(ino, after, READDIR_ENTRIES_MAX)? {
            let attr = state.getattr(child)?;
            state.remember(child, ino, &name);
            out.push(DirEntry {
                cookie: position + 3,
                name: OsString::from_vec(name),
                attr,
            });
        }
        Ok(out)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let state = self.shared.state.lock();
        let files = state.ns.inode_count()?;
        let disk = rustix::fs::statvfs(&state.dir).map_err(std::io::Error::from)?;
        let block_size = 4096u64;
        let scale = |blocks: u64| blocks.saturating_mul(disk.f_frsize.max(1)) / block_size;
        Ok(StatFs {
            blocks: scale(disk.f_blocks),
            blocks_free: scale(disk.f_bfree),
            blocks_available: scale(disk.f_bavail),
            files: files + disk.f_ffree,
            files_free: disk.f_ffree,
            block_size: block_size as u32,
            name_len_max: NAME_BYTES_MAX as u32,
            fragment_size: block_size as u32,
        })
    }

    pub fn setxattr(
        &self,
        ino: InodeNo,
        name: &OsStr,
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<()> {
        let mut state = self.shared.state.lock();
        let name = name.as_bytes();
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(Error::Range);
        }
        state.writable(ino)?;
        state.inode(ino)?;
        let exists = state.ns.xattr(ino, name)?.is_some();
        if flags.create && exists {
            return Err(Error::Exists);
        }
        if flags.replace && !exists {
            return Err(Error::NoAttribute);
        }
        state.submit(OpBody::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
        })?;
        Ok(())
    }

    pub fn getxattr(&self, ino: InodeNo, name: &OsStr) -> Result<Vec<u8>> {
        let mut state = self.shared.state.lock();
        let name = name.as_bytes();
        check_xattr_name(name)?;
        if is_view(ino) {
            return state.view_xattr(ino, name);
        }
        state.inode(ino)?;
        state.ns.xattr(ino, name)?.ok_or(Error::NoAttribute)
    }

    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<std::ffi::OsString>> {
        let mut state = self.shared.state.lock();
        if is_view(ino) {
            return state.view_xattr_names(ino);
        }
        state.inode(ino)?;
        Ok(state
            .ns
            .xattr_names(ino)?
            .into_iter()
            .map(OsString::from_vec)
            .collect())
    }

    pub fn removexattr(&self, ino: InodeNo, name: &OsStr) -> Result<()> {
        let mut state = self.shared.state.lock();
        let name = name.as_bytes();
        check_xattr_name(name)?;
        state.writable(ino)?;
        state.inode(ino)?;
        if state.ns.xattr(ino, name)?.is_none() {
            return Err(Error::NoAttribute);
        }
        state.submit(OpBody::RemoveXattr {
            ino,
            name: name.to_vec(),
        })?;
        Ok(())
    }

    pub fn fallocate(
        &self,
        ino: InodeNo,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.writable(ino)?;
        let inode = state.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(if inode.kind == FileKind::Dir {
                Error::IsDir
            } else {
                Error::Invalid("fallocate of a special file")
            });
        }
        if length == 0 {
            return Err(Error::Invalid("fallocate of zero bytes"));
        }
        let end = offset
            .checked_add(length)
            .ok_or(Error::Invalid("fallocate range overflows"))?;
        if mode.punch_hole && !mode.keep_size {
            return Err(Error::Invalid("punch hole needs keep size"));
        }
        let dirty = state.dirty(ino)?;
        let size = dirty.overlay.size;
        if mode.punch_hole || mode.zero_range {
            let zero_end = if mode.keep_size { end.min(size) } else { end };
            if zero_end > offset {
                dirty.overlay.zero(offset, zero_end - offset);
            }
        }
        if !mode.keep_size && end > dirty.overlay.size {
            dirty.overlay.set_size(end);
        }
        dirty.mtime_ns = now_ns();
        dirty.last_write = Instant::now();
        state.flush_file(ino)
    }

    /// `SEEK_DATA` / `SEEK_HOLE`. Holes are the all-zero leaves of a file's tree, found
    /// from its pointer blocks without reading a leaf, and the bytes past its stored
    /// content ([`seek_content`]). A file with buffered writes is flushed first (the
    /// buffer becomes its write op, as at `close`), so the answer is about stored
    /// content. No data at or after `offset`, or `offset` at or past the end:
    /// [`Error::SeekPastEnd`] (ENXIO). A damaged pointer block fails this seek only,
    /// logged with the file.
    pub fn lseek(&self, ino: InodeNo, offset: u64, to: SeekTo) -> Result<u64> {
        let inode = {
            let mut state = self.shared.state.lock();
            if is_view(ino) {
                state.view_inode(ino)?
            } else {
                if state
                    .files
                    .get(&ino)
                    .is_some_and(|file| file.dirty.is_some())
                {
                    state.flush_file(ino)?;
                }
                state.inode(ino)?
            }
        };
        let size = inode.size;
        if offset >= size {
            return Err(Error::SeekPastEnd);
        }
        if inode.kind != FileKind::File {
            return Ok(match to {
                SeekTo::Data => offset,
                SeekTo::Hole => size,
            });
        }
        // Committed content is immutable: search it without holding the volume lock.
        let found = seek_content(
            self.shared.content.as_ref(),
            &inode.content,
            size,
            offset,
            to,
        )
        .inspect_err(|error| {
            let path = self.path_of(ino);
            tracing::error!(
                ?ino,
                path = %path.display(),
                offset,
                ?to,
                %error,
                "lseek failed: damaged or missing content"
            );
        })?;
        found.ok_or(Error::SeekPastEnd)
    }

    pub fn copy_file_range(
        &self,
        ino_in: InodeNo,
        offset_in: u64,
        ino_out: InodeNo,
        offset_out: u64,
        length: u64,
    ) -> Result<u64> {
        let mut copied = 0u64;
        while copied < length {
            let piece = (length - copied).min(COPY_BYTES as u64) as u32;
            let bytes = self.read(ino_in, FileHandle(0), offset_in + copied, piece)?;
            if bytes.is_empty() {
                break;
            }
            self.write(ino_out, FileHandle(0), offset_out + copied, &bytes)?;
            copied += bytes.len() as u64;
        }
        Ok(copied)
    }

    /// Record the current namespace as a named, read-only snapshot under `.snapshots/`.
    pub fn snapshot(&self, name: &str) -> Result<()> {
        let name = name.as_bytes();
        if !name_is_valid(name) {
            return Err(Error::Invalid("snapshot name"));
        }
        let mut state = self.shared.state.lock();
        state.flush_all()?;
        if state.ns.snapshot_exists(name)? {
            return Err(Error::Exists);
        }
        state.submit(OpBody::Snapshot {
            name: name.to_vec(),
        })?;
        self.make_durable(state)
    }

    /// Snapshot names, oldest slot first.
    pub fn snapshots(&self) -> Result<Vec<String>> {
        let state = self.shared.state.lock();
        let mut snapshots = state.ns.snapshots()?;
        snapshots.sort_by_key(|(_, slot, _)| *slot);
        Ok(snapshots
            .into_iter()
            .map(|(name, _, _)| String::from_utf8_lossy(&name).into_owned())
            .collect())
    }

    /// Flush every dirty file and make the log durable.
    ///
    /// Replicated: then waits up to `commit_wait_ms` for this device's ops to commit.
    pub fn sync_all(&self) -> Result<()> {
        let mut state = self.shared.state.lock();
        state.flush_all()?;
        self.make_durable(state)
    }

    /// Give `device` `rights` in this volume (an op through the log; the owner calls it
    /// when a device joins). Waits for the commit like `sync_all`.
    pub fn grant(&self, device: DeviceId, rights: Rights) -> Result<()> {
        if device.0 == 0 || device.0 > DeviceId::MAX {
            return Err(Error::Invalid("device number out of range"));
        }
        let mut state = self.shared.state.lock();
        state.submit(OpBody::Grant { device, rights })?;
        self.make_durable(state)
    }

    /// How far this device is with the volume's log (for `kith status`).
    pub fn sync_status(&self) -> SyncStatus {
        let state = self.shared.state.lock();
        match &state.replica {
            Some(replica) => SyncStatus {
                applied_end: replica.applied_end,
                commit_end: replica.agreement.commit_end(),
                pending: replica.uncommitted(),
                unproposed: replica.unproposed(),
            },
            None => SyncStatus {
                applied_end: state.log.end(),
                commit_end: state.log.end(),
                pending: 0,
                unproposed: 0,
            },
        }
    }

    /// Replicated: a read barrier, and everything committed before it applied (what
    /// `open_file` runs first; safe while serving a kernel request). The FUSE adapter
    /// runs it before answering that a name does not exist: the kernel looks a name up
    /// before it opens it, so without it a file another device created and fsynced
    /// would not open here until the commit arrived by itself. No-op on a local log.
    pub fn read_barrier(&self) {
        replicated::read_barrier(&self.shared);
    }

    /// Replicated: apply what is committed now (the applier thread does this on its
    /// own within milliseconds; for callers that need it done before going on). The
    /// `on_remote_change` hook runs on this thread before it returns: do not call this
    /// while serving a kernel request.
    pub fn apply_committed(&self) -> Result<()> {
        replicated::catch_up(&self.shared, true, replicated::HookThread::Here)
    }

    /// Drop the volume without its final flush and sync: what a killed process leaves
    /// (crash tests). Buffered writes and ops not yet proposed or written out are lost.
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// Write a checkpoint of the namespace to the content store, record it under the
    /// volume directory and truncate the log behind it. Returns the checkpoint root.
    ///
    /// Replicated: the image of the committed layer, handed to the agreement, which
    /// truncates the group log behind it (`Agreement::compact`).
    pub fn checkpoint(&self) -> Result<BlockRef> {
        if self.shared.sync.is_some() {
            return replicated::checkpoint(&self.shared);
        }
        let mut state = self.shared.state.lock();
        state.flush_all()?;
        state.make_durable()?;
        let image = Image::capture(&state.ns)?;
        let root = state.content.write_meta(&image.encode())?;
        state.content.sync()?;
        let path = state.dir.join("checkpoint");
        let tmp = state.dir.join("checkpoint.tmp");
        std::fs::write(&tmp, root.encode())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&state.dir)?.sync_all()?;
        state.log.truncate_before(image.applied_end)?;
        Ok(root)
    }

    /// The checkpoint image of the namespace as it is now (tests, status).
    pub fn image(&self) -> Result<Image> {
        let state = self.shared.state.lock();
        Image::capture(&state.ns)
    }

    /// Content roots the store must keep: every file of the live namespace, of the
    /// snapshots, and the snapshot images themselves.
    pub fn live_roots(&self) -> Result<Vec<BlockRef>> {
        self.shared.state.lock().content_roots()
    }

    /// A garbage-collection fence: see [`Volume::collect_garbage`].
    pub fn gc_fence(&self) -> Result<u64> {
        self.shared.content.gc_fence()
    }

    /// One garbage-collection round: every block put before `fence` (from
    /// [`Volume::gc_fence`]) that no file, snapshot or checkpoint holds leaves the
    /// store. Blocks put since the fence stay, whatever they are: a caller that gives
    /// them a grace period takes fences early and sweeps with an old one.
    pub fn collect_garbage(&self, fence: u64, compact_all: bool) -> Result<Collected> {
        // A checkpoint stores its image before the agreement names it: a round in
        // between would sweep the image. Rounds and checkpoints take turns.
        let _no_checkpoint = self
            .shared
            .sync
            .as_ref()
            .map(|sync| sync.checkpoints.exclusive());
        let roots = self.gc_roots()?;
        self.shared
            .content
            .collect_garbage(fence, &roots, compact_all)
    }

    /// Every root a GC round whose fence was taken before this call must keep: the
    /// [`Volume::live_roots`] of a namespace made durable first, plus the checkpoint
    /// image the log starts from.
    ///
    /// Why durable, under one lock: a buffered write whose blocks predate the fence
    /// belongs to no root until it is flushed; and an op applied but not yet durable
    /// (a truncate, say) may drop a root that a crash would bring back. Ops after this
    /// call can only drop roots marked here, or name blocks put after the fence.
    pub fn gc_roots(&self) -> Result<Vec<BlockRef>> {
        let mut guard = self.shared.state.lock();
        let state = &mut *guard;
        state.flush_all()?;
        state.make_durable()?;
        let mut roots = state.content_roots()?;
        let checkpoint = match &state.replica {
            Some(replica) => replica.agreement.checkpoint()?.map(|(_, root)| root),
            None => match std::fs::read(state.dir.join("checkpoint")) {
                Ok(root) => Some(root),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => return Err(error.into()),
            },
        };
        if let Some(root) = checkpoint {
            roots.push(BlockRef::decode(&root).map_err(|error| Error::Corrupt {
                what: "checkpoint root",
                detail: error.to_string(),
            })?);
        }
        Ok(roots)
    }
}

impl State {
    /// See [`Volume::live_roots`].
    fn content_roots(&mut self) -> Result<Vec<BlockRef>> {
        let state = self;
        let mut roots = Vec::new();
        for inode in state.ns.all_inodes()? {
            roots.extend(inode.content.roots());
        }
        for (name, _, _) in state.ns.snapshots()? {
            if let Some(root) = state
                .ns
                .snapshot_root(&name)?
                .and_then(|bytes| BlockRef::decode(&bytes).ok())
            {
                roots.push(root);
                let image = state
                    .views
                    .image(&state.ns, state.content.as_ref(), &name)?;
                roots.extend(
                    image
                        .image
                        .inodes
                        .iter()
                        .flat_map(|inode| inode.content.roots()),
                );
            }
        }
        Ok(roots)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
        if self.abandoned {
            return;
        }
        let mut state = self.shared.state.lock();
        if let Err(error) = state.flush_all().and_then(|()| state.make_durable()) {
            tracing::error!(%error, "volume: final sync failed");
        }
    }
}

fn background_loop(shared: Weak<Shared>, interval: Duration) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let mut stop = shared.stop.lock();
            if *stop {
                return;
            }
            let asked = std::sync::atomic::Ordering::AcqRel;
            if !shared.commit_soon.swap(false, asked) {
                shared.wake.wait_for(&mut stop, interval);
                shared
                    .commit_soon
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            if *stop {
                return;
            }
        }
        if let Err(error) = background_commit(&shared) {
            tracing::warn!(%error, "volume: background commit failed");
        }
        replicated::checkpoint_if_due(&shared);
    }
}

/// The timer's commit. Syncing the store (fdatasync of arenas and index) is the slow
/// part, and it must precede writing out any log entry that refers to the blocks; it
/// runs without the volume lock so requests go on meanwhile. Then, if no new blocks
/// were referred to in the meantime, the log is written out and the namespace
/// committed; otherwise only the entries that were logged before the sync began are
/// written out, and the rest waits for the next round.
fn background_commit(shared: &Shared) -> Result<()> {
    if shared.sync.is_some() {
        return replicated::background_propose(shared);
    }
    let (flushed, through, generation) = {
        let mut state = shared.state.lock();
        let flushed = state.flush_idle();
        if state.uncommitted_ops == 0 {
            return flushed;
        }
        if !state.content_unsynced {
            let committed = state.commit();
            return flushed.and(committed);
        }
        (flushed, state.log.end(), state.content_generation)
    };
    // On failure the flag stays set: the next commit syncs again.
    shared.content.sync()?;
    let mut state = shared.state.lock();
    let written = if state.content_generation == generation {
        state.content_unsynced = false;
        state.commit()
    } else {
        state.log.write_out_to(through)
    };
    flushed.and(written)
}

/// The log of a replicated volume's `State`: there is none (the agreement holds the
/// log), and any use of it is a bug that must fail rather than write somewhere.
#[derive(Debug)]
struct NoLog;

impl Log for NoLog {
    fn append(&mut self, _entry: &[u8]) -> Result<u64> {
        Err(Error::Invalid("a replicated volume has no local log"))
    }
    fn read(&mut self, _from: u64, _count_max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(Vec::new())
    }
    fn start(&self) -> u64 {
        0
    }
    fn end(&self) -> u64 {
        0
    }
    fn durable_end(&self) -> u64 {
        0
    }
    fn write_out(&mut self) -> Result<()> {
        Ok(())
    }
    fn write_out_to(&mut self, _end: u64) -> Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn truncate_before(&mut self, _slot: u64) -> Result<()> {
        Ok(())
    }
}

fn default_content_store(dir: &Path) -> Result<Arc<dyn ContentStore>> {
    Ok(Arc::new(VentiContent::open_dir(dir)?))
}

impl State {
    /// Bring the namespace up to the end of the log: from the database if it is
    /// consistent with the log, else from the last checkpoint (or the empty volume).
    fn recover(&mut self, ns_path: &Path) -> Result<()> {
        if self.replica.is_some() {
            self.ns.set_state(REPLICATED_STATE_KEY, 1)?;
            return self.recover_replicated();
        }
        // A local log would find the namespace ahead of it and rebuild it from nothing.
        if self.ns.state(REPLICATED_STATE_KEY)?.is_some() {
            return Err(Error::Invalid(
                "a replicated volume: open it with its agreement, not a local log",
            ));
        }
        let applied_end = self.ns.applied_end()?;
        let has_root = self.ns.inode(InodeNo::ROOT)?.is_some();
        let consistent = applied_end <= self.log.end()
            && applied_end >= self.log.start()
            && (has_root || applied_end == 0);
        if !consistent {
            tracing::warn!(
                applied_end,
                log_start = self.log.start(),
                log_end = self.log.end(),
                "namespace does not match the log: rebuilding"
            );
            drop(std::mem::replace(
                &mut self.ns,
                Namespace::open_in_memory()?,
            ));
            for suffix in ["", "-wal", "-shm"] {
                let mut path = ns_path.as_os_str().to_owned();
                path.push(suffix);
                match std::fs::remove_file(PathBuf::from(path)) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error.into());
                    }
                    _ => {}
                }
            }
            self.ns = Namespace::open(ns_path)?;
            if self.log.start() > 0 {
                let root_bytes = std::fs::read(self.dir.join("checkpoint"))?;
                let root = BlockRef::decode(&root_bytes).map_err(|error| Error::Corrupt {
                    what: "checkpoint pointer",
                    detail: error.to_string(),
                })?;
                let image = Image::decode(&self.content.read_meta(&root)?)?;
                if image.applied_end < self.log.start() {
                    return Err(Error::Corrupt {
                        what: "checkpoint",
                        detail: "older than the log start".into(),
                    });
                }
                self.ns.load(&image)?;
            }
        }
        self.replay()?;
        if self.ns.inode(InodeNo::ROOT)?.is_none() {
            let meta = std::fs::metadata(&self.dir)?;
            self.submit(OpBody::Genesis {
                owner: self.device,
                uid: meta.uid(),
                gid: meta.gid(),
                perm: 0o755,
            })?;
        }
        // Nobody holds unlinked inodes open after a restart.
        for ino in self.ns.orphans()? {
            self.submit(OpBody::Reclaim { ino })?;
        }
        self.commit()
    }

    /// Apply every log entry after the namespace's applied end.
    fn replay(&mut self) -> Result<()> {
        let next = self.apply_log_tail()?;
        self.ns.set_applied_end(next)?;
        self.ns.commit()?;
        self.next_seq = self.ns.author(self.device)?.map_or(0, |(seq, _)| seq) + 1;
        Ok(())
    }

    /// Apply, in an open transaction, every log entry after the namespace's committed
    /// applied end; answers the slot after the last one applied.
    fn apply_log_tail(&mut self) -> Result<u64> {
        let mut next = self.ns.applied_end()?.max(self.log.start());
        self.ns.begin()?;
        loop {
            let entries = self.log.read(next, 1024)?;
            if entries.is_empty() {
                break;
            }
            for (slot, bytes) in entries {
                match Op::decode(&bytes) {
                    Ok(op) => {
                        let outcome = apply(&self.ns, slot, &op)?;
                        self.after_apply(&outcome)?;
                    }
                    // Every device sees the same bytes, so skipping is deterministic.
                    Err(error) => {
                        tracing::warn!(slot, %error, "log: undecodable entry applied as a no-op")
                    }
                }
                next = slot + 1;
            }
        }
        Ok(next)
    }

    /// Local effects of an applied op: a snapshot's image goes to the content store.
    fn after_apply(&mut self, outcome: &Outcome) -> Result<()> {
        if let Outcome::Snapshot { name } = outcome {
            let image = Image::capture(&self.ns)?;
            let root = self.content.write_meta(&image.encode())?;
            self.ns.set_snapshot_root(name, &root.encode())?;
            self.mark_content_unsynced();
        }
        Ok(())
    }

    /// Log, apply and answer one local op.
    fn submit(&mut self, body: OpBody) -> Result<Outcome> {
        let op = Op {
            author: self.device,
            seq: self.next_seq,
            time_ns: now_ns(),
            body,
        };
        let slot = self.append_op(&op)?;
        self.next_seq += 1;
        self.ns.begin()?;
        let outcome = apply(&self.ns, slot, &op)?;
        self.after_apply(&outcome)?;
        if self.replica.is_some() {
            self.note_pending_outcome(&outcome)?;
        }
        self.uncommitted_ops += 1;
        let due = self.uncommitted_ops >= self.options.commit_ops_max
            || (!self.background_commits
                && self.last_commit.elapsed() >= self.options.commit_interval);
        if due && let Err(error) = self.commit() {
            // Replicated, the op is applied and stays queued for the next commit
            // point; a failed proposal is not this call's failure.
            if self.replica.is_none() {
                return Err(error);
            }
            tracing::warn!(%error, "volume: proposing a full batch failed; its ops stay queued");
        }
        if let Outcome::NoOp(reason) = outcome {
            // A local op was checked against the same namespace: this is a bug.
            tracing::error!(?op, reason, "local op applied as a no-op");
            return Err(Error::Invalid(reason));
        }
        Ok(outcome)
    }

    /// The log reaches the OS before the namespace commit that reflects it, and the
    /// blocks a logged op refers to are durable before the op reaches the OS: a crash
    /// never leaves a logged write pointing at blocks that are gone.
    fn commit(&mut self) -> Result<()> {
        if self.replica.is_some() {
            return self.propose_batch();
        }
        if self.content_unsynced {
            self.content.sync()?;
            self.content_unsynced = false;
        }
        self.log.write_out()?;
        if self.ns_behind {
            // An earlier commit was rolled back: bring the namespace up to the log.
            self.apply_log_tail()?;
            self.ns_behind = false;
        }
        self.ns.set_applied_end(self.log.end())?;
        if let Err(error) = self.ns.commit() {
            if !self.ns.in_transaction() {
                // SQLite rolled the transaction back (disk full): the ops it held are
                // in the log, so apply them again, or the open files and names they
                // created would vanish until a restart.
                self.ns_behind = true;
                match self.apply_log_tail() {
                    Ok(_) => self.ns_behind = false,
                    Err(again) => {
                        tracing::error!(%again, "namespace: re-applying the log failed");
                    }
                }
            }
            return Err(error);
        }
        self.uncommitted_ops = 0;
        self.last_commit = Instant::now();
        Ok(())
    }

    fn mark_content_unsynced(&mut self) {
        self.content_unsynced = true;
        self.content_generation += 1;
    }

    /// Content blocks, then the log, then the namespace.
    ///
    /// Replicated: content blocks, then the ops are proposed (durably queued).
    fn make_durable(&mut self) -> Result<()> {
        self.content.sync()?;
        self.content_unsynced = false;
        if self.replica.is_some() {
            return self.propose_batch();
        }
        self.log.sync()?;
        self.commit()
    }

    /// Log (single device) or queue for proposal (replicated) one local op; answers
    /// the slot it is applied at now (replicated: a provisional one).
    fn append_op(&mut self, op: &Op) -> Result<u64> {
        match &mut self.replica {
            Some(replica) => Ok(replica.queue(op.clone())),
            None => self.log.append(&op.encode()),
        }
    }

    /// Turn files idle for `idle_flush` into write ops; answers the first failure.
    fn flush_idle(&mut self) -> Result<()> {
        let idle: Vec<InodeNo> = self
            .files
            .iter()
            .filter(|(_, file)| {
                file.dirty
                    .as_ref()
                    .is_some_and(|dirty| dirty.last_write.elapsed() >= self.options.idle_flush)
            })
            .map(|(&ino, _)| ino)
            .collect();
        // One file's failure (kept for its writer) does not hold up the others.
        let mut first_error = None;
        for ino in idle {
            if let Err(error) = self.flush_file(ino) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn new_handle(&mut self, ino: InodeNo) -> FileHandle {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, ino);
        if !is_view(ino) {
            self.files.entry(ino).or_default().handles += 1;
        }
        FileHandle(handle)
    }

    /// Count a lookup the kernel will `forget` later.
    fn remember(&mut self, ino: InodeNo, parent: InodeNo, name: &[u8]) {
        if name == b"." || name == b".." {
            return;
        }
        *self.lookups.entry(ino).or_insert(0) += 1;
        self.names.insert(ino, (parent, name.to_vec()));
    }

    fn inode(&self, ino: InodeNo) -> Result<Inode> {
        if is_view(ino) {
            return Err(Error::ReadOnly);
        }
        self.ns.inode(ino)?.ok_or(Error::NotFound)
    }

    fn dir_inode(&self, ino: InodeNo) -> Result<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        Ok(inode)
    }

    fn writable(&self, ino: InodeNo) -> Result<()> {
        if is_view(ino) {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn getattr(&mut self, ino: InodeNo) -> Result<Attr> {
        if is_view(ino) {
            return self.view_attr(ino);
        }
        let inode = self.inode(ino)?;
        let mut attr = attr_of(&inode, ino);
        attr.blocks = data_blocks(self.content.as_ref(), &inode.content).unwrap_or(attr.blocks);
        if let Some(dirty) = self.files.get(&ino).and_then(|file| file.dirty.as_ref()) {
            attr.size = dirty.overlay.size;
            attr.blocks = attr.size.div_ceil(512);
            attr.mtime = ns_time(dirty.mtime_ns);
            attr.ctime = attr.ctime.max(attr.mtime);
        }
        Ok(attr)
    }

    fn check_absent(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.dir_inode(parent)?;
        if (parent == InodeNo::ROOT && name == SNAPSHOTS_NAME)
            || self.ns.lookup(parent, name)?.is_some()
        {
            return Err(Error::Exists);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        caller: Caller,
        target: Vec<u8>,
    ) -> Result<InodeNo> {
        check_name_len(name)?;
        if !name_is_valid(name) {
            return Err(if name == b"." || name == b".." {
                Error::Exists
            } else {
                Error::Invalid("file name")
            });
        }
        self.writable(parent)?;
        let dir = self.dir_inode(parent)?;
        if dir.nlink == 0 {
            return Err(Error::NotFound);
        }
        if kind == FileKind::Dir && dir.nlink >= LINKS_MAX {
            return Err(Error::TooManyLinks);
        }
        self.check_absent(parent, name)?;
        // BSD group semantics on a set-group-id directory, as Linux does.
        let (gid, perm) = if dir.perm & 0o2000 != 0 {
            (
                dir.gid,
                if kind == FileKind::Dir {
                    perm | 0o2000
                } else {
                    perm
                },
            )
        } else {
            (caller.gid, perm)
        };
        let outcome = self.submit(OpBody::Create {
            parent,
            name: name.to_vec(),
            kind,
            perm: perm & 0o7777,
            uid: caller.uid,
            gid,
            rdev,
            target,
        })?;
        let Outcome::Created { ino, .. } = outcome else {
            return Err(Error::Invalid("create did not create"));
        };
        self.remember(ino, parent, name);
        Ok(ino)
    }

    fn remove_name(&mut self, parent: InodeNo, name: &[u8], want_dir: bool) -> Result<()> {
        check_name_len(name)?;
        self.writable(parent)?;
        self.dir_inode(parent)?;
        if parent == InodeNo::ROOT && name == SNAPSHOTS_NAME {
            return Err(Error::ReadOnly);
        }
        if name == b"." {
            return Err(Error::Invalid("rmdir of ."));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        let ino = self.ns.lookup(parent, name)?.ok_or(Error::NotFound)?;
        let inode = self.inode(ino)?;
        match (want_dir, inode.kind == FileKind::Dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) if !self.ns.dir_is_empty(ino)? => return Err(Error::NotEmpty),
            _ => {}
        }
        self.submit(OpBody::Unlink {
            parent,
            name: name.to_vec(),
            ino,
        })?;
        if self
            .names
            .get(&ino)
            .is_some_and(|(p, n)| *p == parent && n == name)
        {
            self.names.remove(&ino);
        }
        self.reclaim_if_unused(ino)
    }

    fn rename(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        new_parent: InodeNo,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        check_name_len(name)?;
        check_name_len(new_name)?;
        self.writable(parent)?;
        self.writable(new_parent)?;
        if flags.exchange && flags.no_replace {
            return Err(Error::Invalid("rename: exchange and noreplace"));
        }
        for (dir, name) in [(parent, name), (new_parent, new_name)] {
            if dir == InodeNo::ROOT && name == SNAPSHOTS_NAME {
                return Err(Error::ReadOnly);
            }
            if !name_is_valid(name) {
                return Err(Error::Invalid("rename of . or .."));
            }
        }
        self.dir_inode(parent)?;
        let new_dir = self.dir_inode(new_parent)?;
        if new_dir.nlink == 0 {
            return Err(Error::NotFound);
        }
        let ino = self.ns.lookup(parent, name)?.ok_or(Error::NotFound)?;
        let inode = self.inode(ino)?;
        let target = self.ns.lookup(new_parent, new_name)?;
        let is_dir = inode.kind == FileKind::Dir;
        if is_dir && self.is_ancestor(ino, new_parent)? {
            return Err(Error::Invalid("rename of a directory into itself"));
        }
        match target {
            None if flags.exchange => return Err(Error::NotFound),
            None => {}
            Some(_) if flags.no_replace => return Err(Error::Exists),
            Some(target) if target == ino => return Ok(()),
            Some(target) => {
                let target_inode = self.inode(target)?;
                let target_is_dir = target_inode.kind == FileKind::Dir;
                if flags.exchange {
                    if target_is_dir && self.is_ancestor(target, parent)? {
                        return Err(Error::Invalid("exchange of a directory into itself"));
                    }
                } else {
                    match (is_dir, target_is_dir) {
                        (true, false) => return Err(Error::NotDir),
                        (false, true) => return Err(Error::IsDir),
                        (true, true) if !self.ns.dir_is_empty(target)? => {
                            return Err(Error::NotEmpty);
                        }
                        _ => {}
                    }
                }
            }
        }
        if is_dir && target.is_none() && parent != new_parent && new_dir.nlink >= LINKS_MAX {
            return Err(Error::TooManyLinks);
        }
        self.submit(OpBody::Rename {
            parent,
            name: name.to_vec(),
            ino,
            new_parent,
            new_name: new_name.to_vec(),
            replaced: target,
            exchange: flags.exchange,
        })?;
        self.names.insert(ino, (new_parent, new_name.to_vec()));
        if let Some(target) = target {
            if flags.exchange {
                self.names.insert(target, (parent, name.to_vec()));
            } else {
                self.names.remove(&target);
                self.reclaim_if_unused(target)?;
            }
        }
        Ok(())
    }

    fn is_ancestor(&self, ancestor: InodeNo, dir: InodeNo) -> Result<bool> {
        let mut at = dir;
        for _ in 0..=crate::namespace::DEPTH_MAX {
            if at == ancestor {
                return Ok(true);
            }
            if at == InodeNo::ROOT {
                return Ok(false);
            }
            at = self.inode(at)?.parent;
        }
        Err(Error::Corrupt {
            what: "namespace",
            detail: format!("parent chain of {dir:?} loops"),
        })
    }

    /// Drop an inode nobody names or holds any more.
    fn reclaim_if_unused(&mut self, ino: InodeNo) -> Result<()> {
        if is_view(ino)
            || self.lookups.contains_key(&ino)
            || self.files.get(&ino).is_some_and(|file| file.handles > 0)
        {
            return Ok(());
        }
        match self.ns.inode(ino)? {
            Some(inode) if inode.nlink == 0 => {
                self.files.remove(&ino);
                self.submit(OpBody::Reclaim { ino })?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The write buffer of `ino`, started over its committed content if needed.
    fn dirty(&mut self, ino: InodeNo) -> Result<&mut Dirty> {
        let needs_start = self.files.get(&ino).is_none_or(|file| file.dirty.is_none());
        if needs_start {
            let inode = self.inode(ino)?;
            if inode.kind != FileKind::File {
                return Err(if inode.kind == FileKind::Dir {
                    Error::IsDir
                } else {
                    Error::Invalid("write to a special file")
                });
            }
            let dirty = Dirty {
                started_from: (inode.content.clone(), inode.size),
                started_version: inode.version,
                overlay: Overlay::new(inode.content, inode.size),
                stream: None,
                mtime_ns: inode.mtime_ns,
                last_write: Instant::now(),
            };
            self.files.entry(ino).or_default().dirty = Some(dirty);
        }
        self.files
            .get_mut(&ino)
            .and_then(|file| file.dirty.as_mut())
            .ok_or(Error::Invalid("write buffer vanished"))
    }

    fn write(&mut self, ino: InodeNo, offset: u64, data: &[u8]) -> Result<()> {
        offset
            .checked_add(data.len() as u64)
            .ok_or(Error::Invalid("write past the largest offset"))?;
        let content = Arc::clone(&self.content);
        let dirty_max = self.options.dirty_file_bytes_max;
        let dirty = self.dirty(ino)?;
        let buffered = match buffer_write(content.as_ref(), dirty, offset, data) {
            Ok(buffered) => buffered,
            Err(error) => {
                // A failed stream cannot take more bytes: what this file buffered is
                // lost, and its close and fsync say so too.
                self.drop_buffer(ino, &error);
                return Err(error);
            }
        };
        if buffered > dirty_max
            || (buffered > DIRTY_CHECK_BYTES && self.dirty_bytes() > DIRTY_TOTAL_BYTES_MAX)
        {
            // Memory pressure: this file's buffer becomes a write op now.
            self.flush_file(ino)?;
        }
        Ok(())
    }

    /// Forget `ino`'s write buffer after `error` made it unusable; the loss is reported
    /// by the file's next flush or fsync.
    fn drop_buffer(&mut self, ino: InodeNo, error: &Error) {
        if let Some(file) = self.files.get_mut(&ino) {
            file.dirty = None;
            file.lost_write = Some(LostWrite::of(error));
            file.lost_write_told_writer = true;
        }
    }

    /// A write buffer lost in the background (timer flush) fails the next write once.
    fn tell_writer_of_lost_write(&mut self, ino: InodeNo) -> Result<()> {
        match self.files.get_mut(&ino) {
            Some(file) if !file.lost_write_told_writer => {
                file.lost_write_told_writer = true;
                file.lost_write.map_or(Ok(()), |lost| Err(lost.error()))
            }
            _ => Ok(()),
        }
    }

    /// What a flush or fsync answers: its own failure, else a write lost earlier (then
    /// forgotten: each loss is reported once at a durability point).
    fn report_flush(&mut self, ino: InodeNo, result: Result<()>) -> Result<()> {
        let lost = self
            .files
            .get_mut(&ino)
            .and_then(|file| file.lost_write.take());
        result?;
        lost.map_or(Ok(()), |lost| Err(lost.error()))
    }
}

/// Add `data` at `offset` to a file's write buffer; answers the bytes it buffers.
fn buffer_write(
    content: &dyn ContentStore,
    dirty: &mut Dirty,
    offset: u64,
    data: &[u8],
) -> Result<usize> {
    {
        let streamed = dirty.stream.as_ref().map(|stream| stream.len());
        match streamed {
            Some(streamed) if offset == streamed && dirty.overlay.is_clean() => {
                if let Some(stream) = dirty.stream.as_mut() {
                    stream.write(data)?;
                }
                dirty.overlay.size = dirty.overlay.size.max(offset + data.len() as u64);
            }
            Some(_) => {
                // Out of order: the streamed prefix becomes the base of the overlay.
                finish_stream(dirty)?;
                dirty.overlay.write(offset, data);
            }
            None => {
                dirty.overlay.write(offset, data);
                // A new file written from the start: stream it to the store.
                if dirty.overlay.base.is_empty()
                    && dirty.overlay.base_valid == 0
                    && dirty.overlay.data_bytes() as u64 == dirty.overlay.size
                    && dirty.overlay.size > STREAM_AFTER_BYTES
                {
                    let mut stream = content.writer()?;
                    let bytes =
                        dirty
                            .overlay
                            .read(0, dirty.overlay.size as usize, &mut |_, _| Ok(Vec::new()))?;
                    stream.write(&bytes)?;
                    let size = dirty.overlay.size;
                    dirty.overlay = Overlay::new(Content::EMPTY, size);
                    dirty.stream = Some(stream);
                }
            }
        }
        dirty.mtime_ns = now_ns();
        dirty.last_write = Instant::now();
        Ok(dirty.overlay.data_bytes())
    }
}

impl State {
    /// Bytes held in all write buffers.
    fn dirty_bytes(&self) -> usize {
        self.files
            .values()
            .filter_map(|file| file.dirty.as_ref())
            .map(|dirty| dirty.overlay.data_bytes())
            .sum()
    }

    fn truncate(&mut self, ino: InodeNo, size: u64) -> Result<()> {
        let dirty = self.dirty(ino)?;
        if dirty.stream.is_some() {
            finish_stream(dirty)?;
        }
        dirty.overlay.set_size(size);
        dirty.mtime_ns = now_ns();
        dirty.last_write = Instant::now();
        // Truncation is a metadata change: commit it now, so ctime moves with it.
        self.flush_file(ino)
    }

    fn read_dirty(&mut self, ino: InodeNo, offset: u64, len: usize) -> Result<Vec<u8>> {
        let content = Arc::clone(&self.content);
        let dirty = self
            .files
            .get_mut(&ino)
            .and_then(|file| file.dirty.as_mut())
            .ok_or(Error::NotFound)?;
        if dirty.stream.is_some() {
            finish_stream(dirty)?;
        }
        let base = dirty.overlay.base.clone();
        dirty.overlay.read(offset, len, &mut |at, len| {
            read_content(content.as_ref(), &base, at, len)
        })
    }

    /// Turn `ino`'s write buffer into one write op. On failure the buffer is gone, and
    /// the file's next flush or fsync reports that too (this failure may have happened
    /// on the timer, where nobody hears of it).
    fn flush_file(&mut self, ino: InodeNo) -> Result<()> {
        let flushed = self.flush_file_buffer(ino);
        if let Err(error) = &flushed
            && let Some(file) = self.files.get_mut(&ino)
        {
            file.lost_write = Some(LostWrite::of(error));
            file.lost_write_told_writer = false;
        }
        flushed
    }

    fn flush_file_buffer(&mut self, ino: InodeNo) -> Result<()> {
        let Some(mut dirty) = self.files.get_mut(&ino).and_then(|file| file.dirty.take()) else {
            return Ok(());
        };
        if self.files.get(&ino).is_some_and(|file| file.handles == 0) {
            self.files.remove(&ino);
        }
        let Some(inode) = self.ns.inode(ino)? else {
            // Open handles keep an inode alive here, so only another device can have
            // reclaimed it: the buffered bytes have nowhere to go, and the writer must
            // hear of it.
            return Err(Error::StaleHandle);
        };
        let (content, size) = materialize(self.content.as_ref(), &mut dirty)?;
        if matches!(content, Content::Tree(_)) {
            self.mark_content_unsynced();
        }
        let mut named = self.names.get(&ino).cloned();
        if self.replica.is_some()
            && let Some((parent, name)) = &named
            && self.ns.lookup(*parent, name)? != Some(ino)
        {
            // Another device moved the name: a conflict copy goes next to where the
            // file is now.
            named = self.ns.name_of(ino)?;
        }
        let (parent, name) = named.unwrap_or((InodeNo(0), Vec::new()));
        // Local changes to a dirty file (truncate, fallocate) go through its buffer, so
        // its content moved only if another device wrote it.
        let base_version =
            if (&inode.content, inode.size) == (&dirty.started_from.0, dirty.started_from.1) {
                inode.version
            } else {
                dirty.started_version
            };
        let op = OpBody::Write {
            ino,
            base_version,
            size,
            content,
            parent,
            name,
        };
        // The op's time is the last write's, so mtime is when the data changed.
        let seq = self.next_seq;
        let op = Op {
            author: self.device,
            seq,
            time_ns: dirty.mtime_ns.max(inode.ctime_ns),
            body: op,
        };
        let slot = self.append_op(&op)?;
        self.next_seq += 1;
        self.ns.begin()?;
        let outcome = apply(&self.ns, slot, &op)?;
        if self.replica.is_some() {
            self.note_pending_outcome(&outcome)?;
        }
        self.uncommitted_ops += 1;
        if let Outcome::NoOp(reason) = outcome {
            tracing::error!(?ino, reason, "local write applied as a no-op");
            return Err(Error::Invalid(reason));
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        let dirty: Vec<InodeNo> = self
            .files
            .iter()
            .filter(|(_, file)| file.dirty.is_some())
            .map(|(&ino, _)| ino)
            .collect();
        for ino in dirty {
            self.flush_file(ino)?;
        }
        Ok(())
    }
}

/// The streamed prefix becomes the overlay's base.
fn finish_stream(dirty: &mut Dirty) -> Result<()> {
    if let Some(stream) = dirty.stream.take() {
        let root = stream.finish()?;
        let size = dirty.overlay.size;
        dirty.overlay = Overlay::new(Content::Tree(root), size);
    }
    Ok(())
}

/// The content and size a write op records for this buffer.
fn materialize(store: &dyn ContentStore, dirty: &mut Dirty) -> Result<(Content, u64)> {
    if let Some(stream) = dirty.stream.take()
        && dirty.overlay.is_clean()
    {
        let root = stream.finish()?;
        let size = dirty.overlay.size;
        return Ok((Content::Tree(root), size));
    } else if dirty.stream.is_some() {
        finish_stream(dirty)?;
    }
    let overlay = &dirty.overlay;
    let content_len = overlay.content_len();
    let base = overlay.base.clone();
    let mut read_base = |at: u64, len: usize| read_content(store, &base, at, len);
    if content_len <= INLINE_BYTES_MAX as u64 {
        let bytes = overlay.read(0, content_len as usize, &mut read_base)?;
        return Ok((Content::Inline(bytes), overlay.size));
    }
    if overlay.is_clean() && overlay.base_valid == overlay.base.len() {
        return Ok((overlay.base.clone(), overlay.size));
    }
    if let Some(root) = edit_tree(store, overlay, content_len)? {
        return Ok((Content::Tree(root), overlay.size));
    }
    if content_len <= REWRITE_IN_MEMORY_BYTES_MAX as u64 {
        let bytes = overlay.read(0, content_len as usize, &mut read_base)?;
        return Ok((Content::Tree(store.write_all(&bytes)?), overlay.size));
    }
    let mut writer = store.writer()?;
    let mut at = 0u64;
    while at < content_len {
        let piece = (content_len - at).min(COPY_BYTES as u64) as usize;
        let bytes = overlay.read(at, piece, &mut read_base)?;
        writer.write(&bytes)?;
        at += piece as u64;
    }
    Ok((Content::Tree(writer.finish()?), overlay.size))
}

/// `len` bytes from `offset` of the tree under `root`, opened on several threads:
/// unsealing (hash, decrypt, key commitment) is the cost of a read, and it is
/// independent per block.
fn read_parallel(
    store: &dyn ContentStore,
    root: &BlockRef,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(READ_THREADS_MAX);
    let end = (offset + len as u64).min(root.length);
    if threads < 2 || end <= offset || end - offset < PARALLEL_READ_BYTES_MIN {
        // Threads would cost more than they save, and would open the same leaves.
        return store.read(root, offset, len);
    }
    let part = (end - offset).div_ceil(threads as u64);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|index| offset + index * part)
            .filter(|&start| start < end)
            .map(|start| {
                let part_len = part.min(end - start) as usize;
                scope.spawn(move || store.read(root, start, part_len))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(Error::Io(std::io::Error::other("read thread panicked")))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity((end - offset) as usize);
    for part in parts {
        out.extend_from_slice(&part?);
    }
    Ok(out)
}

/// An edit of a file stored as a tree: the tree editor re-chunks only around the
/// changed ranges and seals only the leaves and pointer blocks that change; the root
/// is the one a full rewrite would give. `None` when that is not the way: the base is
/// not a tree (inline, or slices from older stores, which the full rewrite turns into
/// a tree once), most of the content is new (the full rewrite seals on several
/// threads), or the store cannot edit the base (another key epoch).
fn edit_tree(
    store: &dyn ContentStore,
    overlay: &Overlay,
    content_len: u64,
) -> Result<Option<BlockRef>> {
    let Content::Tree(base) = &overlay.base else {
        return Ok(None);
    };
    // Changed: the dirty pieces, and past `base_valid` (a truncate hid the base's
    // tail; what is there now reads as zeros or pieces).
    let mut changed: Vec<(u64, u64)> = overlay
        .dirty_ranges()
        .into_iter()
        .map(|(start, end)| (start, end.min(content_len)))
        .filter(|(start, end)| start < end)
        .collect();
    if overlay.base_valid < content_len {
        changed.push((overlay.base_valid, content_len));
    }
    let changed_bytes: u64 = changed.iter().map(|(start, end)| end - start).sum();
    if changed_bytes > content_len / 2 {
        return Ok(None);
    }
    let base_content = overlay.base.clone();
    let mut read_base = |at: u64, len: usize| read_content(store, &base_content, at, len);
    store.edit(base, content_len, &changed, &mut |at, len| {
        overlay.read(at, len, &mut read_base)
    })
}

/// Read `[offset, offset + len)` of a file whose stored content may be shorter than its
/// size (the rest reads as zeros).
fn read_sized(
    store: &dyn ContentStore,
    content: &Content,
    size: u64,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    if offset >= size {
        return Ok(Vec::new());
    }
    let len = len.min((size - offset) as usize);
    let mut bytes = read_content(store, content, offset, len)?;
    bytes.resize(len, 0);
    Ok(bytes)
}

/// `st_blocks` of stored tree content: its bytes outside the holes `lseek` reports,
/// when the store can tell cheaply (`cp` and `tar` look for holes only in files whose
/// `st_blocks` is below their size). `None`: count the content's length.
fn data_blocks(store: &dyn ContentStore, content: &Content) -> Option<u64> {
    match content {
        // A failure here is the next read's or lseek's to report, not stat's.
        Content::Tree(root) => store.data_bytes(root).ok().flatten(),
        Content::Inline(_) | Content::Slices(_) => None,
    }
    .map(|bytes| bytes.div_ceil(512))
}

fn attr_of(inode: &Inode, ino: InodeNo) -> Attr {
    Attr {
        ino,
        kind: inode.kind,
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        size: inode.size,
        blocks: inode.content.len().div_ceil(512),
        atime: ns_time(inode.atime_ns),
        mtime: ns_time(inode.mtime_ns),
        ctime: ns_time(inode.ctime_ns),
        crtime: ns_time(inode.crtime_ns),
        version: inode.version,
    }
}

fn check_name_len(name: &[u8]) -> Result<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Error::NameTooLong {
            len: name.len(),
            max: NAME_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
        return Err(Error::Range);
    }
    Ok(())
}

fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

fn system_time_ns(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

fn ns_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn is_view(ino: InodeNo) -> bool {
    ino.0 >= SNAPSHOTS_INO.0
}

fn snapshots_dir_attr(root: &Inode) -> Attr {
    Attr {
        ino: SNAPSHOTS_INO,
        kind: FileKind::Dir,
        perm: 0o555,
        nlink: 2,
        uid: root.uid,
        gid: root.gid,
        rdev: 0,
        size: 0,
        blocks: 0,
        atime: ns_time(root.atime_ns),
        mtime: ns_time(root.mtime_ns),
        ctime: ns_time(root.ctime_ns),
        crtime: ns_time(root.crtime_ns),
        version: 0,
    }
}

/// Read-only views of snapshot images: virtual inode numbers for (snapshot, inode).
#[derive(Debug, Default)]
struct Views {
    snapshot_ids: HashMap<Vec<u8>, u32>,
    snapshot_names: Vec<Vec<u8>>,
    by_key: HashMap<(u32, InodeNo), InodeNo>,
    by_virtual: HashMap<InodeNo, (u32, InodeNo)>,
    images: HashMap<u32, Arc<ViewImage>>,
}

#[derive(Debug)]
struct ViewImage {
    image: Image,
}

impl ViewImage {
    fn lookup(&self, parent: InodeNo, name: &[u8]) -> Option<InodeNo> {
        let dirents = &self.image.dirents;
        let index = dirents.partition_point(|(p, n, _)| (*p, n.as_slice()) < (parent, name));
        dirents
            .get(index)
            .filter(|(p, n, _)| *p == parent && n == name)
            .map(|(_, _, ino)| *ino)
    }

    fn children(&self, parent: InodeNo) -> &[(InodeNo, Vec<u8>, InodeNo)] {
        let dirents = &self.image.dirents;
        let start = dirents.partition_point(|(p, _, _)| *p < parent);
        let end = dirents.partition_point(|(p, _, _)| *p <= parent);
        &dirents[start..end]
    }
}

impl Views {
    fn snapshot_id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.snapshot_ids.get(name) {
            return id;
        }
        let id = self.snapshot_names.len() as u32;
        self.snapshot_names.push(name.to_vec());
        self.snapshot_ids.insert(name.to_vec(), id);
        id
    }

    fn virtual_ino(&mut self, snapshot: u32, ino: InodeNo) -> InodeNo {
        if let Some(&virtual_ino) = self.by_key.get(&(snapshot, ino)) {
            return virtual_ino;
        }
        let virtual_ino = InodeNo(SNAPSHOTS_INO.0 + 1 + self.by_virtual.len() as u64);
        self.by_key.insert((snapshot, ino), virtual_ino);
        self.by_virtual.insert(virtual_ino, (snapshot, ino));
        virtual_ino
    }

    fn image(
        &mut self,
        ns: &Namespace,
        store: &dyn ContentStore,
        name: &[u8],
    ) -> Result<Arc<ViewImage>> {
        let id = self.snapshot_id(name);
        if let Some(image) = self.images.get(&id) {
            return Ok(Arc::clone(image));
        }
        let root = ns.snapshot_root(name)?.ok_or(Error::NotFound)?;
        let root = BlockRef::decode(&root).map_err(|error| Error::Corrupt {
            what: "snapshot root",
            detail: error.to_string(),
        })?;
        let image = Arc::new(ViewImage {
            image: Image::decode(&store.read_meta(&root)?)?,
        });
        self.images.insert(id, Arc::clone(&image));
        Ok(image)
    }
}

impl State {
    /// `parent/name` when it leads into `.snapshots`.
    fn view_lookup(&mut self, parent: InodeNo, name: &[u8]) -> Result<Option<Attr>> {
        if parent == InodeNo::ROOT && name == SNAPSHOTS_NAME {
            let root = self.inode(InodeNo::ROOT)?;
            return Ok(Some(snapshots_dir_attr(&root)));
        }
        if parent == SNAPSHOTS_INO {
            if name == b"." {
                return self.view_attr(SNAPSHOTS_INO).map(Some);
            }
            if name == b".." {
                return self.getattr(InodeNo::ROOT).map(Some);
            }
            if !self.ns.snapshot_exists(name)? {
                return Err(Error::NotFound);
            }
            let id = self.views.snapshot_id(name);
            let ino = self.views.virtual_ino(id, InodeNo::ROOT);
            return self.view_attr(ino).map(Some);
        }
        if !is_view(parent) {
            return Ok(None);
        }
        let (id, real_parent) = *self
            .views
            .by_virtual
            .get(&parent)
            .ok_or(Error::StaleHandle)?;
        let image = self.view_image(id)?;
        let parent_inode = image.image.inode(real_parent).ok_or(Error::NotFound)?;
        if parent_inode.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        let real = match name {
            b"." => real_parent,
            b".." if real_parent == InodeNo::ROOT => {
                return self.view_attr(SNAPSHOTS_INO).map(Some);
            }
            b".." => parent_inode.parent,
            _ => image.lookup(real_parent, name).ok_or(Error::NotFound)?,
        };
        let ino = self.views.virtual_ino(id, real);
        self.view_attr(ino).map(Some)
    }

    fn view_image(&mut self, id: u32) -> Result<Arc<ViewImage>> {
        let name = self
            .views
            .snapshot_names
            .get(id as usize)
            .cloned()
            .ok_or(Error::StaleHandle)?;
        self.views.image(&self.ns, self.content.as_ref(), &name)
    }

    fn view_inode(&mut self, ino: InodeNo) -> Result<Inode> {
        let (id, real) = *self.views.by_virtual.get(&ino).ok_or(Error::StaleHandle)?;
        let image = self.view_image(id)?;
        image.image.inode(real).cloned().ok_or(Error::NotFound)
    }

    fn view_attr(&mut self, ino: InodeNo) -> Result<Attr> {
        if ino == SNAPSHOTS_INO {
            let root = self.inode(InodeNo::ROOT)?;
            return Ok(snapshots_dir_attr(&root));
        }
        let inode = self.view_inode(ino)?;
        Ok(attr_of(&inode, ino))
    }

    fn view_readdir(&mut self, ino: InodeNo, cookie: u64) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        if ino == SNAPSHOTS_INO {
            let root_attr = self.getattr(InodeNo::ROOT)?;
            let own = self.view_attr(SNAPSHOTS_INO)?;
            let mut entries = vec![
                (".".as_bytes().to_vec(), own),
                ("..".as_bytes().to_vec(), root_attr),
            ];
            for (name, _, _) in self.ns.snapshots()? {
                let id = self.views.snapshot_id(&name);
                let virtual_ino = self.views.virtual_ino(id, InodeNo::ROOT);
                entries.push((name, self.view_attr(virtual_ino)?));
            }
            for (index, (name, attr)) in entries.into_iter().enumerate().skip(cookie as usize) {
                out.push(DirEntry {
                    cookie: index as u64 + 1,
                    name: OsString::from_vec(name),
                    attr,
                });
            }
            return Ok(out);
        }
        let (id, real) = *self.views.by_virtual.get(&ino).ok_or(Error::StaleHandle)?;
        let image = self.view_image(id)?;
        let inode = image.image.inode(real).ok_or(Error::NotFound)?;
        if inode.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        let own = self.view_attr(ino)?;
        let parent_attr = if real == InodeNo::ROOT {
            self.view_attr(SNAPSHOTS_INO)?
        } else {
            let parent = self.views.virtual_ino(id, inode.parent);
            self.view_attr(parent)?
        };
        let mut entries = vec![(b".".to_vec(), own), (b"..".to_vec(), parent_attr)];
        let children = image.children(real);
        let skip = (cookie as usize).saturating_sub(2);
        for (_, name, child) in children.iter().skip(skip).take(READDIR_ENTRIES_MAX) {
            let virtual_ino = self.views.virtual_ino(id, *child);
            entries.push((name.clone(), self.view_attr(virtual_ino)?));
        }
        for (index, (name, attr)) in entries.into_iter().enumerate() {
            let entry_cookie = if index < 2 {
                index as u64 + 1
            } else {
                (skip + index) as u64 + 1
            };
            if entry_cookie > cookie {
                out.push(DirEntry {
                    cookie: entry_cookie,
                    name: OsString::from_vec(name),
                    attr,
                });
            }
        }
        Ok(out)
    }

    fn view_xattr(&mut self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        let (id, real) = *self.views.by_virtual.get(&ino).ok_or(Error::NoAttribute)?;
        let image = self.view_image(id)?;
        image
            .image
            .xattrs
            .iter()
            .find(|(owner, attr_name, _)| *owner == real && attr_name == name)
            .map(|(_, _, value)| value.clone())
            .ok_or(Error::NoAttribute)
    }

    fn view_xattr_names(&mut self, ino: InodeNo) -> Result<Vec<OsString>> {
        let Some(&(id, real)) = self.views.by_virtual.get(&ino) else {
            return Ok(Vec::new());
        };
        let image = self.view_image(id)?;
        Ok(image
            .image
            .xattrs
            .iter()
            .filter(|(owner, _, _)| *owner == real)
            .map(|(_, name, _)| OsString::from_vec(name.clone()))
            .collect())
    }
}

#[cfg(test)]
use crate::content::MemContent;

#[cfg(test)]
mod tests;
