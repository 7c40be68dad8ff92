//! The narrow disk interface every byte of an arena goes through.
//!
//! A [`Backend`] is a flat directory of named files; a [`BackendFile`] offers
//! `read_at / write_at / len / set_len / sync`, like redb's `StorageBackend`. Two
//! implementations: [`FileBackend`] (a real directory, `pread`/`pwrite`, `fsync`) and
//! [`MemoryBackend`], which keeps every file twice — what was written and what a `sync`
//! made durable — and can *crash* at the N-th durability point. After a crash every
//! operation fails; [`MemoryBackend::restart`] then rebuilds the files from what
//! survived: the durable bytes plus a seeded random subset of the unsynced writes, some of
//! them torn (only a prefix kept). Directory entries (create, remove) behave the same
//! way until `sync_dir`.
//!
//! Appends may bypass the page cache: [`BackendFile::write_direct_at`] takes whole
//! [`DIRECT_ALIGN_BYTES`]-aligned pieces and writes them with `O_DIRECT` where the file
//! system allows it ([`FileBackend`] falls back to the page cache where it refuses, as
//! tmpfs may); [`MemoryBackend`] checks the alignment so tests catch a misaligned
//! writer, and can be told to offer no direct path at all.
//!
//! The SQLite index is not behind this trait: SQLite has its own atomic commit, and both
//! backends give it a real path ([`Backend::index_path`]). What the crash model does
//! cover is the order the store relies on — arena bytes durable *before* the index
//! commit that refers to them — through [`Backend::commit_point`], which counts as a
//! durability point and may crash.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::{Error, Result};

/// Offset, length and memory alignment [`BackendFile::write_direct_at`] needs: 4 KiB
/// covers the logical block size of every common device and file system.
pub const DIRECT_ALIGN_BYTES: usize = 4096;

/// One file of a [`Backend`]. Offsets and lengths are bytes.
pub trait BackendFile: Send + Sync + fmt::Debug {
    /// Fill `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    fn len(&self) -> Result<u64>;
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&self, len: u64) -> Result<()>;
    /// Make every earlier write and `set_len` of this file durable.
    fn sync(&self) -> Result<()>;
    /// A hint that `len` bytes from `offset` were just written and will not be
    /// rewritten: start writing them back now, so a later `sync` has less to wait for.
    /// Promises nothing about durability; the default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
    /// Whether [`BackendFile::write_direct_at`] is worth its aligned staging: it
    /// bypasses the page cache here (or, in the memory backend, checks alignment).
    fn supports_direct(&self) -> bool {
        false
    }
    /// `write_at` of whole aligned pieces: `offset`, `data.len()` and `data`'s address
    /// are multiples of [`DIRECT_ALIGN_BYTES`]. Written past the page cache where the
    /// file system allows it, else through it; either way `read_at` sees the bytes once
    /// this returns, and `sync` makes them durable like any write.
    fn write_direct_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(offset, data)
    }
}

/// Whether `offset`, `data.len()` and `data`'s address are all multiples of
/// [`DIRECT_ALIGN_BYTES`].
pub fn is_direct_aligned(offset: u64, data: &[u8]) -> bool {
    let align = DIRECT_ALIGN_BYTES as u64;
    offset.is_multiple_of(align)
        && (data.len() as u64).is_multiple_of(align)
        && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN_BYTES)
}

/// A flat directory of files plus the place the SQLite index lives.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Open `name`, creating an empty file if `create` and it does not exist.
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn BackendFile>>;
    fn remove(&self, name: &str) -> Result<()>;
    fn list(&self) -> Result<Vec<String>>;
    /// Make creations and removals of files durable.
    fn sync_dir(&self) -> Result<()>;
    /// Where the SQLite index file lives (it may not exist yet).
    fn index_path(&self) -> PathBuf;
    /// Called just before an index transaction commits: everything the commit refers to
    /// is already durable. Only the crash-injecting backend does anything here.
    fn commit_point(&self) -> Result<()> {
        Ok(())
    }
}

/// Files in one real directory.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    direct_io: bool,
}

impl FileBackend {
    /// Use `dir`, creating it if needed. Aligned appends use `O_DIRECT` where the file
    /// system allows it.
    pub fn new(dir: impl AsRef<Path>) -> Result<FileBackend> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        Ok(FileBackend {
            dir,
            direct_io: true,
        })
    }

    /// With `false`, every write goes through the page cache (as on a file system
    /// that refuses `O_DIRECT`).
    pub fn with_direct_io(mut self, direct_io: bool) -> FileBackend {
        self.direct_io = direct_io;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Backend for FileBackend {
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn BackendFile>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.dir.join(name))?;
        let direct = if self.direct_io {
            open_direct(&self.dir.join(name))
        } else {
            None
        };
        Ok(Arc::new(DiskFile {
            direct_usable: AtomicBool::new(direct.is_some()),
            file,
            direct,
        }))
    }

    fn remove(&self, name: &str) -> Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other?),
        }
    }

    fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self) -> Result<()> {
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.sqlite")
    }
}

/// A second descriptor of `path` opened with `O_DIRECT`, or `None` where the file
/// system refuses it (tmpfs before Linux 6.6, some FUSE and network file systems).
fn open_direct(path: &Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // The flag's bits fit an i32: it is an `open(2)` flag.
    let flag = rustix::fs::OFlags::DIRECT.bits() as i32;
    match fs::OpenOptions::new()
        .write(true)
        .custom_flags(flag)
        .open(path)
    {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "O_DIRECT refused; appends go through the page cache");
            None
        }
    }
}

/// A real file: `file` for reads and buffered writes, `direct` (the same file opened
/// with `O_DIRECT`) for aligned appends.
///
/// Coherence: Linux writes back and invalidates the page-cache pages a direct write
/// covers, before and after it (`generic_file_direct_write` /
/// `iomap_dio_rw`), so a buffered `read_at` after `write_direct_at` returns sees the
/// new bytes, and a buffered write of a block that a direct write later covers is
/// flushed first rather than lost.
#[derive(Debug)]
struct DiskFile {
    file: fs::File,
    direct: Option<fs::File>,
    /// Cleared for good the first time the file system refuses a direct write.
    direct_usable: AtomicBool,
}

impl BackendFile for DiskFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        Ok(self.file.write_all_at(data, offset)?)
    }

    fn len(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> Result<()> {
        Ok(self.file.set_len(len)?)
    }

    fn sync(&self) -> Result<()> {
        // fdatasync: the length is data for this purpose, metadata like mtime is not.
        Ok(self.file.sync_data()?)
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        // On Linux, DONTNEED starts asynchronous writeback of the range's dirty pages
        // (and drops only pages already clean). A failure here costs speed, never
        // data: `sync` still flushes everything, so the result is deliberately unused.
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }

    fn supports_direct(&self) -> bool {
        self.direct_usable.load(Ordering::Relaxed)
    }

    fn write_direct_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if let Some(direct) = &self.direct
            && self.direct_usable.load(Ordering::Relaxed)
        {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // EINVAL: this file system (or this piece's alignment) is refused for
                // direct I/O. Whatever part was written holds these same bytes, so
                // writing all of them through the page cache is correct.
                Err(error)
                    if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    tracing::debug!(%error, "direct write refused; appends go through the page cache");
                    self.direct_usable.store(false, Ordering::Relaxed);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.file.write_all_at(data, offset)?)
    }
}

/// An in-memory backend that can crash at the N-th durability point (`sync`,
/// `sync_dir`, `commit_point`), losing or tearing what was not yet durable.
///
/// Clones share the same files: keep one clone in the test, hand another to the store,
/// drop the store after a crash and call [`MemoryBackend::restart`].
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Mutex<MemoryState>>,
    index_dir: Arc<IndexDir>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MemoryBackend")
            .field("files", &state.names.len())
            .field("sync_points", &state.sync_points)
            .field("crashed", &state.crashed)
            .finish()
    }
}

/// A private directory for the SQLite index, removed when the last clone goes.
#[derive(Debug)]
struct IndexDir(PathBuf);

impl Drop for IndexDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp directory is harmless.
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct MemoryState {
    /// Current directory entries, and the ones a crash falls back to.
    names: HashMap<String, Arc<MemoryFile>>,
    names_durable: HashMap<String, Arc<MemoryFile>>,
    sync_points: u64,
    crash_at_sync_point: Option<u64>,
    crashed: bool,
    /// Arena writes fail (as on a full disk) while set; nothing else does.
    writes_fail: bool,
    /// Files offer the direct (aligned, checked) write path.
    direct_io: bool,
    rng: SplitMix64,
}

#[derive(Debug)]
struct MemoryFile {
    shared: Arc<Mutex<MemoryState>>,
    content: Mutex<FileContent>,
}

#[derive(Debug, Default, Clone)]
struct FileContent {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Operations since the last sync, in order; a crash keeps a random subset.
    unsynced: Vec<UnsyncedOp>,
}

#[derive(Debug, Clone)]
enum UnsyncedOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A tiny seeded generator (SplitMix64): crash outcomes only need to be reproducible,
/// not statistically strong.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..bound`; `bound` must be non-zero.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

static INDEX_DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl MemoryBackend {
    /// A new empty backend; `seed` decides what a crash keeps.
    pub fn new(seed: u64) -> Result<MemoryBackend> {
        let unique = INDEX_DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let index_dir = std::env::temp_dir().join(format!(
            "kith-venti-memory-{}-{unique}-{seed}",
            std::process::id()
        ));
        fs::create_dir_all(&index_dir)?;
        Ok(MemoryBackend {
            shared: Arc::new(Mutex::new(MemoryState {
                names: HashMap::new(),
                names_durable: HashMap::new(),
                sync_points: 0,
                crash_at_sync_point: None,
                crashed: false,
                writes_fail: false,
                direct_io: true,
                rng: SplitMix64(seed),
            })),
            index_dir: Arc::new(IndexDir(index_dir)),
        })
    }

    /// Crash when the durability-point counter reaches `point` (1 = the next one
    /// after the counter was last reset). `None` never crashes.
    pub fn crash_at(&self, point: Option<u64>) {
        let mut state = self.shared.lock();
        state.sync_points = 0;
        state.crash_at_sync_point = point;
    }

    /// Durability points seen since the last [`MemoryBackend::crash_at`].
    pub fn sync_points(&self) -> u64 {
        self.shared.lock().sync_points
    }

    pub fn has_crashed(&self) -> bool {
        self.shared.lock().crashed
    }

    /// While `fail` is set, every `write_at` fails with `StorageFull` and changes
    /// nothing, as on a full disk; syncs and reads go on working.
    pub fn fail_writes(&self, fail: bool) {
        self.shared.lock().writes_fail = fail;
    }

    /// With `false`, files offer no direct write path (as on a file system that
    /// refuses `O_DIRECT`), so the store writes every record through `write_at`.
    pub fn set_direct_io(&self, direct_io: bool) {
        self.shared.lock().direct_io = direct_io;
    }

    /// Crash now, as if power failed between two instructions.
    pub fn crash_now(&self) {
        self.shared.lock().crashed = true;
    }

    /// After a crash (or at any time, which simulates one): keep what was durable plus a
    /// random subset of what was not, some writes torn; then accept operations again.
    pub fn restart(&self) {
        let mut state = self.shared.lock();
        let mut survivors = HashMap::new();
        let all_names: Vec<String> = state
            .names
            .keys()
            .chain(state.names_durable.keys())
            .cloned()
            .collect();
        for name in all_names {
            if survivors.contains_key(&name) {
                continue;
            }
            // An entry whose creation or removal was not made durable may go either way.
            let current = state.names.get(&name).cloned();
            let durable = state.names_durable.get(&name).cloned();
            let keep = match (&current, &durable) {
                (Some(c), Some(d)) if Arc::ptr_eq(c, d) => Some(c.clone()),
                _ => {
                    if state.rng.below(2) == 0 {
                        current
                    } else {
                        durable
                    }
                }
            };
            if let Some(file) = keep {
                survivors.insert(name, file);
            }
        }
        for file in survivors.values() {
            let mut content = file.content.lock();
            let mut bytes = content.durable.clone();
            for op in std::mem::take(&mut content.unsynced) {
                match (state.rng.below(4), op) {
                    (0, _) => {} // lost
                    (1, UnsyncedOp::Write { offset, data }) => {
                        // torn: a prefix reached the disk
                        let kept = state.rng.below(data.len() as u64 + 1) as usize;
                        apply_write(&mut bytes, offset, &data[..kept]);
                    }
                    (_, UnsyncedOp::Write { offset, data }) => {
                        apply_write(&mut bytes, offset, &data)
                    }
                    (_, UnsyncedOp::SetLen(len)) => resize(&mut bytes, len),
                }
            }
            content.current = bytes.clone();
            content.durable = bytes;
        }
        state.names_durable = survivors.clone();
        state.names = survivors;
        state.crashed = false;
        state.crash_at_sync_point = None;
    }

    /// Flip one bit of a file's current and durable content (corruption tests).
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> Result<()> {
        let file = self.existing(name)?;
        let mut content = file.content.lock();
        let content = &mut *content;
        let index = usize::try_from(offset).map_err(io::Error::other)?;
        for bytes in [&mut content.current, &mut content.durable] {
            let byte = bytes.get_mut(index).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "flip_bit past end of file")
            })?;
            *byte ^= 1 << (bit % 8);
        }
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<Arc<MemoryFile>> {
        self.shared
            .lock()
            .names
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Io(io::Error::new(io::ErrorKind::NotFound, name.to_owned())))
    }
}

fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let end = start + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

fn resize(bytes: &mut Vec<u8>, len: u64) {
    if let Ok(len) = usize::try_from(len) {
        bytes.resize(len, 0);
    }
}

fn crashed_error() -> Error {
    Error::Io(io::Error::other("simulated crash"))
}

/// Count one durability point; fail (and stay failed) at the planned one.
fn durability_point(state: &mut MemoryState) -> Result<()> {
    if state.crashed {
        return Err(crashed_error());
    }
    state.sync_points += 1;
    if state.crash_at_sync_point == Some(state.sync_points) {
        state.crashed = true;
        return Err(crashed_error());
    }
    Ok(())
}

fn check_alive(state: &MemoryState) -> Result<()> {
    if state.crashed {
        Err(crashed_error())
    } else {
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn BackendFile>> {
        let mut state = self.shared.lock();
        check_alive(&state)?;
        if let Some(file) = state.names.get(name) {
            return Ok(file.clone());
        }
        if !create {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotFound,
                name.to_owned(),
            )));
        }
        let file = Arc::new(MemoryFile {
            shared: self.shared.clone(),
            content: Mutex::new(FileContent::default()),
        });
        state.names.insert(name.to_owned(), file.clone());
        Ok(file)
    }

    fn remove(&self, name: &str) -> Result<()> {
        let mut state = self.shared.lock();
        check_alive(&state)?;
        state.names.remove(name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>> {
        let state = self.shared.lock();
        check_alive(&state)?;
        Ok(state.names.keys().cloned().collect())
    }

    fn sync_dir(&self) -> Result<()> {
        let mut state = self.shared.lock();
        durability_point(&mut state)?;
        state.names_durable = state.names.clone();
        Ok(())
    }

    fn index_path(&self) -> PathBuf {
        self.index_dir.0.join("index.sqlite")
    }

    fn commit_point(&self) -> Result<()> {
        durability_point(&mut self.shared.lock())
    }
}

impl BackendFile for MemoryFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_alive(&self.shared.lock())?;
        let content = self.content.lock();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let source = start
            .checked_add(buf.len())
            .and_then(|end| content.current.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        {
            let state = self.shared.lock();
            check_alive(&state)?;
            if state.writes_fail {
                return Err(Error::Io(io::Error::from(io::ErrorKind::StorageFull)));
            }
        }
        let mut content = self.content.lock();
        apply_write(&mut content.current, offset, data);
        content.unsynced.push(UnsyncedOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        check_alive(&self.shared.lock())?;
        Ok(self.content.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        check_alive(&self.shared.lock())?;
        let mut content = self.content.lock();
        resize(&mut content.current, len);
        content.unsynced.push(UnsyncedOp::SetLen(len));
        Ok(())
    }

    fn supports_direct(&self) -> bool {
        self.shared.lock().direct_io
    }

    fn write_direct_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        // A real device refuses a misaligned direct write: fail loudly instead.
        if !is_direct_aligned(offset, data) {
            return Err(Error::Malformed {
                what: "direct write",
                detail: format!(
                    "{} bytes at offset {offset} (address {:p}) not {DIRECT_ALIGN_BYTES}-aligned",
                    data.len(),
                    data.as_ptr()
                ),
            });
        }
        self.write_at(offset, data)
    }

    fn sync(&self) -> Result<()> {
        durability_point(&mut self.shared.lock())?;
        let mut content = self.content.lock();
        let content = &mut *content;
        for op in content.unsynced.drain(..) {
            match op {
                UnsyncedOp::Write { offset, data } => {
                    apply_write(&mut content.durable, offset, &data)
                }
                UnsyncedOp::SetLen(len) => resize(&mut content.durable, len),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An aligned `bytes`-long window of a vector, in safe code.
    fn aligned(memory: &mut Vec<u8>, bytes: usize) -> std::ops::Range<usize> {
        memory.resize(bytes + DIRECT_ALIGN_BYTES, 0);
        let address = memory.as_ptr() as usize;
        let start = (DIRECT_ALIGN_BYTES - address % DIRECT_ALIGN_BYTES) % DIRECT_ALIGN_BYTES;
        start..start + bytes
    }

    #[test]
    fn direct_writes_are_read_back_and_a_refused_one_falls_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let backend = FileBackend::new(dir.path())?;
        let file = backend.open("a", true)?;
        let direct = file.supports_direct();
        let mut memory = Vec::new();
        let range = aligned(&mut memory, 2 * DIRECT_ALIGN_BYTES);
        memory[range.clone()].fill(0x11);
        file.write_direct_at(0, &memory[range.clone()])?;
        // A buffered tail, then a direct write covering it again (the stage's pattern).
        file.write_at(2 * DIRECT_ALIGN_BYTES as u64, b"tail")?;
        memory[range.clone()].fill(0x22);
        file.write_direct_at(DIRECT_ALIGN_BYTES as u64, &memory[range.clone()])?;
        let mut back = vec![0u8; 3 * DIRECT_ALIGN_BYTES];
        file.read_at(0, &mut back)?;
        assert!(back[..DIRECT_ALIGN_BYTES].iter().all(|b| *b == 0x11));
        assert!(back[DIRECT_ALIGN_BYTES..].iter().all(|b| *b == 0x22));
        if direct {
            // Misaligned memory: the kernel refuses the direct write (EINVAL); the
            // bytes go through the page cache and the file stops trying.
            let misaligned = range.start + 1..range.end + 1;
            memory[misaligned.clone()].fill(0x33);
            file.write_direct_at(0, &memory[misaligned])?;
            assert!(!file.supports_direct());
            file.read_at(0, &mut back[..DIRECT_ALIGN_BYTES])?;
            assert!(back[..DIRECT_ALIGN_BYTES].iter().all(|b| *b == 0x33));
        }
        let buffered = FileBackend::new(dir.path())?
            .with_direct_io(false)
            .open("a", false)?;
        assert!(!buffered.supports_direct());
        Ok(())
    }

    #[test]
    fn the_memory_backend_refuses_misaligned_direct_writes() -> Result<()> {
        let backend = MemoryBackend::new(1)?;
        let file = backend.open("a", true)?;
        let mut memory = Vec::new();
        let range = aligned(&mut memory, DIRECT_ALIGN_BYTES);
        file.write_direct_at(0, &memory[range.clone()])?;
        assert!(file.write_direct_at(512, &memory[range.clone()]).is_err());
        assert!(
            file.write_direct_at(0, &memory[range.start..range.end - 1])
                .is_err()
        );
        assert!(
            file.write_direct_at(0, &memory[range.start + 1..range.end + 1])
                .is_err()
        );
        Ok(())
    }
}
