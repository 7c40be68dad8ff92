//! `Volume`: the namespace and file contents of one tree, driven by inode numbers.
//!
//! CONTRACT (skeleton): the signatures below are what the FUSE adapter calls; the
//! bodies are being written. Lookup counts (`forget`) and open handles keep unlinked
//! files alive until the kernel lets go of them.

use std::ffi::OsStr;
use std::path::Path;

use crate::*;

/// One mounted volume.
#[derive(Debug)]
pub struct Volume {
    _private: (),
}

#[allow(unused_variables, clippy::todo)]
impl Volume {
    /// Open (creating on first use) the volume stored under `dir`.
    pub fn open(dir: &Path) -> Result<Volume> {
        todo!()
    }
    pub fn lookup(&self, parent: InodeNo, name: &OsStr) -> Result<Attr> {
        todo!()
    }
    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: InodeNo, count: u64) {
        todo!()
    }
    pub fn getattr(&self, ino: InodeNo) -> Result<Attr> {
        todo!()
    }
    pub fn setattr(&self, ino: InodeNo, change: &SetAttr, handle: Option<FileHandle>) -> Result<Attr> {
        todo!()
    }
    pub fn mknod(&self, parent: InodeNo, name: &OsStr, kind: FileKind, perm: u16, rdev: u32, caller: Caller) -> Result<Attr> {
        todo!()
    }
    pub fn mkdir(&self, parent: InodeNo, name: &OsStr, perm: u16, caller: Caller) -> Result<Attr> {
        todo!()
    }
    pub fn symlink(&self, parent: InodeNo, name: &OsStr, target: &Path, caller: Caller) -> Result<Attr> {
        todo!()
    }
    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn unlink(&self, parent: InodeNo, name: &OsStr) -> Result<()> {
        todo!()
    }
    pub fn rmdir(&self, parent: InodeNo, name: &OsStr) -> Result<()> {
        todo!()
    }
    pub fn rename(&self, parent: InodeNo, name: &OsStr, new_parent: InodeNo, new_name: &OsStr, flags: RenameFlags) -> Result<()> {
        todo!()
    }
    pub fn link(&self, ino: InodeNo, new_parent: InodeNo, new_name: &OsStr) -> Result<Attr> {
        todo!()
    }
    pub fn open_file(&self, ino: InodeNo, truncate: bool) -> Result<FileHandle> {
        todo!()
    }
    pub fn create(&self, parent: InodeNo, name: &OsStr, perm: u16, caller: Caller, exclusive: bool) -> Result<(Attr, FileHandle)> {
        todo!()
    }
    pub fn read(&self, ino: InodeNo, handle: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn write(&self, ino: InodeNo, handle: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
        todo!()
    }
    /// `close(2)` of one descriptor: dirty data becomes one write operation.
    pub fn flush(&self, ino: InodeNo, handle: FileHandle) -> Result<()> {
        todo!()
    }
    pub fn release(&self, ino: InodeNo, handle: FileHandle) -> Result<()> {
        todo!()
    }
    /// Durable when this returns, also for an open but unlinked file.
    pub fn fsync(&self, ino: InodeNo, data_only: bool) -> Result<()> {
        todo!()
    }
    /// Entries after `cookie` (0 = from the start), including "." and "..".
    pub fn readdir(&self, ino: InodeNo, cookie: u64) -> Result<Vec<DirEntry>> {
        todo!()
    }
    pub fn statfs(&self) -> Result<StatFs> {
        todo!()
    }
    pub fn setxattr(&self, ino: InodeNo, name: &OsStr, value: &[u8], flags: XattrFlags) -> Result<()> {
        todo!()
    }
    pub fn getxattr(&self, ino: InodeNo, name: &OsStr) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<std::ffi::OsString>> {
        todo!()
    }
    pub fn removexattr(&self, ino: InodeNo, name: &OsStr) -> Result<()> {
        todo!()
    }
    pub fn fallocate(&self, ino: InodeNo, offset: u64, length: u64, mode: FallocateMode) -> Result<()> {
        todo!()
    }
    pub fn lseek(&self, ino: InodeNo, offset: u64, to: SeekTo) -> Result<u64> {
        todo!()
    }
    pub fn copy_file_range(&self, ino_in: InodeNo, offset_in: u64, ino_out: InodeNo, offset_out: u64, length: u64) -> Result<u64> {
        todo!()
    }
    /// Record the current namespace as a named, read-only snapshot under `.snapshots/`.
    pub fn snapshot(&self, name: &str) -> Result<()> {
        todo!()
    }
    /// Flush every dirty file and make the log durable.
    pub fn sync_all(&self) -> Result<()> {
        todo!()
    }
}
