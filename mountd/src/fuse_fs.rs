//! The FUSE adapter: kernel requests in, [`fossil::Volume`] calls out.
//!
//! The adapter is deliberately thin. It owns no namespace state: node ids are fossil
//! [`InodeNo`]s (one kernel inode per file, so hard links share a node id), every
//! reply carries attributes fresh from the volume, and every fossil error becomes an
//! errno in exactly one place, [`errno_of`]. What it does own is the translation of
//! kernel encodings (mode bits, flag words, `TimeOrNow`, xattr size probing) into
//! fossil's typed vocabulary, and the choice of kernel caching:
//!
//! - entry/attribute TTLs come from the configuration; the kernel invalidates its own
//!   copies after every change made through this mount, and the daemon invalidates
//!   them for changes other devices made (`crate::invalidate`); a lookup that finds
//!   nothing runs a read barrier first, so a name another device created opens here;
//! - `FOPEN_KEEP_CACHE` is set only when the file's version is the one seen at its
//!   previous open, so the page cache survives reopen but never shows stale content;
//! - writeback caching stays off: with it the kernel owns mtime/size and delays data,
//!   which would weaken "durable when fsync returns" through no fault of fossil.
//!
//! Requests may run on several fuser threads at once (`fuse_threads`, default 1);
//! `Volume` is `Sync` and does its own locking, the adapter's only shared state is the
//! open-version map behind a mutex.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fossil::{
    Attr, Caller, FallocateMode, FileKind, InodeNo, RenameFlags, SeekTo, SetAttr, TimeSet, Volume,
    XattrFlags,
};
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

/// Largest single read or write the kernel may send (it caps this at its `max_pages`).
pub const IO_BYTES_MAX: u32 = 1 << 20;
/// Largest xattr value accepted (Linux's `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// `copy_file_range` copies at most this much per request; callers loop on short counts.
const COPY_CHUNK_BYTES_MAX: u64 = 1 << 30;
/// Preferred I/O size reported in `st_blksize` (programs size their buffers by it).
const BLKSIZE_BYTES: u32 = 128 * 1024;

/// Kernel cache lifetimes for names and attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTtls {
    pub entry: Duration,
    pub attr: Duration,
}

/// The `fuser::Filesystem` over one volume.
#[derive(Debug)]
pub struct KithFs {
    volume: Arc<Volume>,
    ttls: CacheTtls,
    /// Device nodes are only created when the daemon runs as root (it cannot represent
    /// them faithfully otherwise, and the kernel would refuse to open them anyway).
    devices_allowed: bool,
    /// Version of each file at its last open: equal at the next open = keep the cache.
    opened_versions: Mutex<HashMap<InodeNo, u64>>,
}

impl KithFs {
    pub fn new(volume: Arc<Volume>, ttls: CacheTtls, devices_allowed: bool) -> KithFs {
        KithFs {
            volume,
            ttls,
            devices_allowed,
            opened_versions: Mutex::new(HashMap::new()),
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, attr: &Attr) {
        reply.entry_with_ttls(
            &self.ttls.attr,
            &self.ttls.entry,
            &file_attr(attr),
            Generation(0),
        );
    }

    /// Return the lookup reference `Volume::readdir` took for `entry`.
    fn give_back(&self, entry: &fossil::DirEntry) {
        if !is_dot_or_dotdot(&entry.name) {
            self.volume.forget(entry.attr.ino, 1);
        }
    }

    /// Open flags for a file at `version`; records it for the next open.
    fn open_flags_for(&self, ino: InodeNo, version: u64) -> FopenFlags {
        let previous = self.opened_versions.lock().insert(ino, version);
        if previous == Some(version) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }
}

impl Filesystem for KithFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: a kernel without one just keeps the default.
        // Not FUSE_ATOMIC_O_TRUNC: with it, open(O_TRUNC) truncates here before the
        // kernel's own checks (ETXTBSY for a running program) run, so a refused open
        // would still destroy the file. Without it the kernel truncates by setattr,
        // after those checks.
        for wanted in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if config.add_capabilities(wanted).is_err() {
                tracing::debug!(?wanted, "kernel lacks a FUSE capability");
            }
        }
        if let Err(nearest) = config.set_max_write(IO_BYTES_MAX) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(IO_BYTES_MAX) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(error) = self.volume.sync_all() {
            tracing::error!(%error, "final sync at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent_ino = ino_of(parent);
        let found = match self.volume.lookup(parent_ino, name) {
            // Before saying a name does not exist, catch up with the group: a file
            // another device created and fsynced must open here (close-to-open).
            Err(fossil::Error::NotFound) => {
                self.volume.read_barrier();
                self.volume.lookup(parent_ino, name)
            }
            other => other,
        };
        match found {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail("lookup", parent, &error)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let ino = ino_of(ino);
        // The kernel forgets an inode when it evicts it, page cache included.
        self.opened_versions.lock().remove(&ino);
        self.volume.forget(ino, nlookup);
    }

    fn getattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: ReplyAttr,
    ) {
        match self.volume.getattr(ino_of(ino)) {
            Ok(attr) => reply.attr(&self.ttls.attr, &file_attr(&attr)),
            Err(error) => reply.error(fail("getattr", ino, &error)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<fuser::FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            perm: mode.map(perm_of),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime,
        };
        match self.volume.setattr(ino_of(ino), &change, fh.map(handle_of)) {
            Ok(attr) => reply.attr(&self.ttls.attr, &file_attr(&attr)),
            Err(error) => reply.error(fail("setattr", ino, &error)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.volume.readlink(ino_of(ino)) {
            Ok(target) => reply.data(&target),
            Err(error) => reply.error(fail("readlink", ino, &error)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        if matches!(kind, FileKind::Dir | FileKind::Symlink) {
            reply.error(Errno::EINVAL);
            return;
        }
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && !self.devices_allowed {
            reply.error(Errno::EPERM);
            return;
        }
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            rdev
        } else {
            0
        };
        match self.volume.mknod(
            ino_of(parent),
            name,
            kind,
            perm_of(mode),
            rdev,
            caller_of(req),
        ) {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail("mknod", parent, &error)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self
            .volume
            .mkdir(ino_of(parent), name, perm_of(mode), caller_of(req))
        {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail("mkdir", parent, &error)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.unlink(ino_of(parent), name) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("unlink", parent, &error)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.rmdir(ino_of(parent), name) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("rmdir", parent, &error)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .volume
            .symlink(ino_of(parent), link_name, target, caller_of(req))
        {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail("symlink", parent, &error)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let flags = match rename_flags_of(flags.bits()) {
            Ok(flags) => flags,
            Err(errno) => {
                reply.error(errno);
                return;
            }
        };
        match self
            .volume
            .rename(ino_of(parent), name, ino_of(newparent), newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("rename", parent, &error)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.volume.link(ino_of(ino), ino_of(newparent), newname) {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail("link", ino, &error)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_of(ino);
        let handle = match self.volume.open_file(ino) {
            Ok(handle) => handle,
            Err(error) => {
                reply.error(fail("open", ino.0, &error));
                return;
            }
        };
        let mut open_flags = match self.volume.getattr(ino) {
            Ok(attr) => self.open_flags_for(ino, attr.version),
            Err(_) => FopenFlags::empty(),
        };
        // Nothing is written through a read-only descriptor, so its close has nothing
        // to flush or report: skip the FLUSH round trip (a reader's close, e.g. every
        // file `tar -c` reads). Locks are the kernel's (no getlk/setlk here), so FLUSH
        // has no lock owner to release either. Writable opens keep it: their close
        // reports ENOSPC or EIO from turning the buffer into a write op.
        if flags.acc_mode() == OpenAccMode::O_RDONLY {
            open_flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        reply.opened(fuser::FileHandle(handle.0), open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .volume
            .read(ino_of(ino), handle_of(fh), offset, size.min(IO_BYTES_MAX))
        {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(fail("read", ino, &error)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.volume.write(ino_of(ino), handle_of(fh), offset, data) {
            Ok(written) => reply.written(written),
            Err(error) => reply.error(fail("write", ino, &error)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.volume.flush(ino_of(ino), handle_of(fh)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("flush", ino, &error)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume.release(ino_of(ino), handle_of(fh)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("release", ino, &error)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume.fsync(ino_of(ino), datasync) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("fsync", ino, &error)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.volume.getattr(ino_of(ino)) {
            Ok(attr) if attr.kind == FileKind::Dir => {
                reply.opened(fuser::FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(error) => reply.error(fail("opendir", ino, &error)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Only used if the kernel declines readdirplus. Plain readdir entries are not
        // lookups for the kernel, so every reference the volume took is given back.
        let entries = match self.volume.readdir(ino_of(ino), offset) {
            Ok(entries) => entries,
            Err(error) => {
                reply.error(fail("readdir", ino, &error));
                return;
            }
        };
        let mut full = false;
        for entry in &entries {
            if !full {
                full = reply.add(
                    INodeNo(entry.attr.ino.0),
                    entry.cookie,
                    file_type(entry.attr.kind),
                    &entry.name,
                );
            }
            self.give_back(entry);
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // `Volume::readdir` counts a lookup for every entry but "." and "..", as the
        // kernel does for each entry it accepts; entries that do not fit in the
        // kernel's buffer are given back.
        let entries = match self.volume.readdir(ino_of(ino), offset) {
            Ok(entries) => entries,
            Err(error) => {
                reply.error(fail("readdirplus", ino, &error));
                return;
            }
        };
        let mut full = false;
        for entry in &entries {
            if !full {
                full = reply.add(
                    INodeNo(entry.attr.ino.0),
                    entry.cookie,
                    &entry.name,
                    &self.ttls.entry,
                    &file_attr(&entry.attr),
                    Generation(0),
                );
            }
            if full {
                self.give_back(entry);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume.fsync(ino_of(ino), datasync) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("fsyncdir", ino, &error)),
        }
    }

    /// No ioctls: ENOTTY, what a regular file answers (every `isatty` probe of a
    /// program opening a file asks; fuser's default would log each one as a warning).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.volume.statfs() {
            Ok(stat) => reply.statfs(
                stat.blocks,
                stat.blocks_free,
                stat.blocks_available,
                stat.files,
                stat.files_free,
                stat.block_size,
                stat.name_len_max,
                stat.fragment_size,
            ),
            Err(error) => reply.error(fail("statfs", 1u64, &error)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        if value.len() > XATTR_VALUE_BYTES_MAX {
            reply.error(Errno::from_i32(libc::E2BIG));
            return;
        }
        let flags = match xattr_flags_of(flags) {
            Ok(flags) => flags,
            Err(errno) => {
                reply.error(errno);
                return;
            }
        };
        match self.volume.setxattr(ino_of(ino), name, value, flags) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("setxattr", ino, &error)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.volume.getxattr(ino_of(ino), name) {
            Ok(value) => reply_sized(reply, &value, size),
            Err(error) => reply.error(fail("getxattr", ino, &error)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.volume.listxattr(ino_of(ino)) {
            Ok(names) => reply_sized(reply, &xattr_name_list(&names), size),
            Err(error) => reply.error(fail("listxattr", ino, &error)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.removexattr(ino_of(ino), name) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("removexattr", ino, &error)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks permissions itself and rarely asks;
        // answer from the mode bits all the same.
        match self.volume.getattr(ino_of(ino)) {
            Ok(attr) => {
                if access_allowed(&attr, req.uid(), req.gid(), mask.bits()) {
                    reply.ok()
                } else {
                    reply.error(Errno::EACCES)
                }
            }
            Err(error) => reply.error(fail("access", ino, &error)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Some(kind) = kind_of_mode(mode)
            && kind != FileKind::File
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let exclusive = flags & libc::O_EXCL != 0;
        match self.volume.create(
            ino_of(parent),
            name,
            perm_of(mode),
            caller_of(req),
            exclusive,
        ) {
            Ok((attr, handle)) => {
                let open_flags = self.open_flags_for(attr.ino, attr.version);
                reply.created(
                    &self.ttls.entry,
                    &file_attr(&attr),
                    Generation(0),
                    fuser::FileHandle(handle.0),
                    open_flags,
                );
            }
            Err(error) => reply.error(fail("create", parent, &error)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mode = match fallocate_mode_of(mode) {
            Ok(mode) => mode,
            Err(errno) => {
                reply.error(errno);
                return;
            }
        };
        match self.volume.fallocate(ino_of(ino), offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail("fallocate", ino, &error)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: fuser::FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let to = match whence {
            libc::SEEK_DATA => SeekTo::Data,
            libc::SEEK_HOLE => SeekTo::Hole,
            // SEEK_SET/CUR/END never reach the file system.
            _ => {
                reply.error(Errno::EINVAL);
                return;
            }
        };
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(Errno::ENXIO);
            return;
        };
        match self.volume.lseek(ino_of(ino), offset, to) {
            Ok(found) => match i64::try_from(found) {
                Ok(found) => reply.offset(found),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            // At or past the end, or no data after the offset.
            Err(fossil::Error::SeekPastEnd) => reply.error(Errno::ENXIO),
            Err(error) => reply.error(fail("lseek", ino, &error)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: fuser::FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: fuser::FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        let len = len.min(COPY_CHUNK_BYTES_MAX);
        match self.volume.copy_file_range(
            ino_of(ino_in),
            offset_in,
            ino_of(ino_out),
            offset_out,
            len,
        ) {
            // `len` is at most 1 GiB, so the copied count fits.
            Ok(copied) => reply.written(u32::try_from(copied.min(len)).unwrap_or(u32::MAX)),
            Err(error) => reply.error(fail("copy_file_range", ino_in, &error)),
        }
    }
}

/// A failed request's errno; failures that mean "the store is in trouble" (EIO,
/// ENOSPC) are logged once here, naming the request and the inode.
fn fail(request: &'static str, ino: impl Into<u64>, error: &fossil::Error) -> Errno {
    let errno = errno_of(error);
    if errno == Errno::EIO || errno == Errno::ENOSPC {
        tracing::error!(request, ino = ino.into(), %error, "file system request failed");
    }
    errno
}

/// The one mapping from fossil's errors to errnos.
pub fn errno_of(error: &fossil::Error) -> Errno {
    use fossil::Error as E;
    let errno = match error {
        E::NotFound => libc::ENOENT,
        E::Exists => libc::EEXIST,
        E::NotDir => libc::ENOTDIR,
        E::IsDir => libc::EISDIR,
        E::NotEmpty => libc::ENOTEMPTY,
        E::NameTooLong { .. } => libc::ENAMETOOLONG,
        E::Invalid(_) => libc::EINVAL,
        E::NotPermitted => libc::EPERM,
        E::ReadOnly => libc::EROFS,
        E::NoAttribute => libc::ENODATA,
        E::Range => libc::ERANGE,
        E::Unsupported => libc::EOPNOTSUPP,
        E::StaleHandle => libc::ESTALE,
        E::TooManyLinks => libc::EMLINK,
        // A full disk from any layer: fossil, venti's arenas, or either SQLite file.
        _ if error.is_no_space() => libc::ENOSPC,
        _ => libc::EIO,
    };
    Errno::from_i32(errno)
}

pub fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.crtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLKSIZE_BYTES,
        flags: 0,
    }
}

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The file type encoded in a `mode` word; `None` when it carries none (plain create).
pub fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Some(FileKind::File),
        libc::S_IFDIR => Some(FileKind::Dir),
        libc::S_IFLNK => Some(FileKind::Symlink),
        libc::S_IFIFO => Some(FileKind::Fifo),
        libc::S_IFSOCK => Some(FileKind::Socket),
        libc::S_IFCHR => Some(FileKind::CharDevice),
        libc::S_IFBLK => Some(FileKind::BlockDevice),
        _ => None,
    }
}

/// Permission and set-id/sticky bits of a mode word. The kernel has already applied
/// the umask (we do not ask for FUSE_DONT_MASK), so the bits are taken as given.
pub fn perm_of(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

pub fn rename_flags_of(bits: u32) -> Result<RenameFlags, Errno> {
    let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
    if bits & !known != 0 {
        // RENAME_WHITEOUT is for overlay file systems.
        return Err(Errno::EINVAL);
    }
    let flags = RenameFlags {
        no_replace: bits & libc::RENAME_NOREPLACE != 0,
        exchange: bits & libc::RENAME_EXCHANGE != 0,
    };
    if flags.no_replace && flags.exchange {
        return Err(Errno::EINVAL);
    }
    Ok(flags)
}

pub fn xattr_flags_of(flags: i32) -> Result<XattrFlags, Errno> {
    let known = libc::XATTR_CREATE | libc::XATTR_REPLACE;
    if flags & !known != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(XattrFlags {
        create: flags & libc::XATTR_CREATE != 0,
        replace: flags & libc::XATTR_REPLACE != 0,
    })
}

pub fn fallocate_mode_of(mode: i32) -> Result<FallocateMode, Errno> {
    let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
    if mode & !known != 0 {
        // Collapse/insert range and unshare are not offered.
        return Err(Errno::EOPNOTSUPP);
    }
    let mode = FallocateMode {
        keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
        punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
        zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
    };
    if mode.punch_hole && (!mode.keep_size || mode.zero_range) {
        // fallocate(2): PUNCH_HOLE must be ORed with KEEP_SIZE, and alone.
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(mode)
}

/// NUL-terminated names, as `listxattr(2)` returns them.
pub fn xattr_name_list(names: &[OsString]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    list
}

/// Reply to a size probe (`size == 0`) with the length, else with the bytes if they fit.
fn reply_sized(reply: ReplyXattr, bytes: &[u8], size: u32) {
    match u32::try_from(bytes.len()) {
        Err(_) => reply.error(Errno::E2BIG),
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len > size => reply.error(Errno::ERANGE),
        Ok(_) => reply.data(bytes),
    }
}

/// POSIX access check on the owner/group/other bits (root may do anything but
/// execute a file that nobody may execute).
pub fn access_allowed(attr: &Attr, uid: u32, gid: u32, mask: i32) -> bool {
    let wanted = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u16;
    if wanted == 0 {
        return true; // F_OK: the file exists.
    }
    let perm = attr.perm;
    if uid == 0 {
        let any_exec = perm & 0o111 != 0 || attr.kind == FileKind::Dir;
        return wanted & (libc::X_OK as u16) == 0 || any_exec;
    }
    let granted = if uid == attr.uid {
        (perm >> 6) & 0o7
    } else if gid == attr.gid {
        (perm >> 3) & 0o7
    } else {
        perm & 0o7
    };
    granted & wanted == wanted
}

pub fn is_dot_or_dotdot(name: &OsStr) -> bool {
    name == "." || name == ".."
}

fn ino_of(ino: INodeNo) -> InodeNo {
    InodeNo(ino.0)
}

fn handle_of(fh: fuser::FileHandle) -> fossil::FileHandle {
    fossil::FileHandle(fh.0)
}

fn caller_of(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(at) => TimeSet::At(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: InodeNo(7),
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            version: 1,
        }
    }

    #[test]
    fn errors_map_to_their_errno() {
        use fossil::Error as E;
        let cases = [
            (E::NotFound, libc::ENOENT),
            (E::Exists, libc::EEXIST),
            (E::NotDir, libc::ENOTDIR),
            (E::IsDir, libc::EISDIR),
            (E::NotEmpty, libc::ENOTEMPTY),
            (E::NameTooLong { len: 300, max: 255 }, libc::ENAMETOOLONG),
            (E::Invalid("x"), libc::EINVAL),
            (E::NotPermitted, libc::EPERM),
            (E::ReadOnly, libc::EROFS),
            (E::NoAttribute, libc::ENODATA),
            (E::Range, libc::ERANGE),
            (E::NoSpace, libc::ENOSPC),
            (E::Unsupported, libc::EOPNOTSUPP),
            (E::StaleHandle, libc::ESTALE),
            (E::TooManyLinks, libc::EMLINK),
            (
                E::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
                libc::ENOSPC,
            ),
            (
                E::Store(venti::Error::Io(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                ))),
                libc::ENOSPC,
            ),
            (
                E::Corrupt {
                    what: "block",
                    detail: "x".into(),
                },
                libc::EIO,
            ),
            (E::Io(std::io::Error::other("disk")), libc::EIO),
        ];
        for (error, expected) in cases {
            assert_eq!(errno_of(&error).code(), expected, "{error}");
        }
    }

    #[test]
    fn mode_words_decode_to_kind_and_perm() {
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o644), Some(FileKind::Fifo));
        assert_eq!(kind_of_mode(libc::S_IFSOCK), Some(FileKind::Socket));
        assert_eq!(kind_of_mode(libc::S_IFBLK), Some(FileKind::BlockDevice));
        assert_eq!(kind_of_mode(libc::S_IFCHR), Some(FileKind::CharDevice));
        assert_eq!(kind_of_mode(libc::S_IFREG), Some(FileKind::File));
        assert_eq!(kind_of_mode(0o644), None);
        assert_eq!(perm_of(libc::S_IFDIR | 0o7755), 0o7755);
        assert_eq!(perm_of(libc::S_IFREG | 0o100644), 0o644);
    }

    #[test]
    fn rename_flags_reject_whiteout_and_conflicting_bits() {
        assert_eq!(rename_flags_of(0), Ok(RenameFlags::default()));
        assert!(rename_flags_of(libc::RENAME_NOREPLACE).is_ok_and(|f| f.no_replace));
        assert!(rename_flags_of(libc::RENAME_EXCHANGE).is_ok_and(|f| f.exchange));
        assert_eq!(rename_flags_of(libc::RENAME_WHITEOUT), Err(Errno::EINVAL));
        assert_eq!(
            rename_flags_of(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn fallocate_modes_follow_linux_rules() {
        assert_eq!(fallocate_mode_of(0), Ok(FallocateMode::default()));
        let punch = fallocate_mode_of(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
        assert!(punch.is_ok_and(|m| m.punch_hole && m.keep_size));
        assert_eq!(
            fallocate_mode_of(libc::FALLOC_FL_PUNCH_HOLE),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            fallocate_mode_of(libc::FALLOC_FL_COLLAPSE_RANGE),
            Err(Errno::EOPNOTSUPP)
        );
        assert!(fallocate_mode_of(libc::FALLOC_FL_ZERO_RANGE).is_ok_and(|m| m.zero_range));
    }

    #[test]
    fn xattr_flags_and_name_lists() {
        assert!(xattr_flags_of(libc::XATTR_CREATE).is_ok_and(|f| f.create && !f.replace));
        assert!(xattr_flags_of(libc::XATTR_REPLACE).is_ok_and(|f| f.replace && !f.create));
        assert_eq!(xattr_flags_of(0x40), Err(Errno::EINVAL));
        let names = [OsString::from("user.a"), OsString::from("user.bc")];
        assert_eq!(xattr_name_list(&names), b"user.a\0user.bc\0".to_vec());
        assert!(xattr_name_list(&[]).is_empty());
    }

    #[test]
    fn access_follows_owner_group_other_bits() {
        let file = attr(FileKind::File, 0o640, 1000, 100);
        assert!(access_allowed(&file, 1000, 5, libc::R_OK | libc::W_OK));
        assert!(!access_allowed(&file, 1000, 5, libc::X_OK));
        assert!(access_allowed(&file, 2000, 100, libc::R_OK));
        assert!(!access_allowed(&file, 2000, 100, libc::W_OK));
        assert!(!access_allowed(&file, 2000, 200, libc::R_OK));
        assert!(access_allowed(&file, 2000, 200, libc::F_OK));
        // root reads and writes anything, executes only what someone may execute
        assert!(access_allowed(&file, 0, 0, libc::R_OK | libc::W_OK));
        assert!(!access_allowed(&file, 0, 0, libc::X_OK));
        let dir = attr(FileKind::Dir, 0o700, 1000, 100);
        assert!(access_allowed(&dir, 0, 0, libc::X_OK));
    }

    #[test]
    fn attributes_keep_every_field() {
        let mut a = attr(FileKind::Symlink, 0o777, 3, 4);
        a.nlink = 2;
        a.size = 12;
        a.blocks = 8;
        a.rdev = 9;
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(7));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!((f.perm, f.uid, f.gid, f.nlink), (0o777, 3, 4, 2));
        assert_eq!((f.size, f.blocks, f.rdev), (12, 8, 9));
    }
}
