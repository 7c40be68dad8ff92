//! The volume log: an ordered sequence of committed entries, numbered by [`Slot`].
//!
//! [`Log`] is what the volume needs from agreement: append an entry, read committed
//! entries from a slot, know how far the log is durable, make it durable, and forget
//! the prefix a checkpoint covers. This module supplies the single-device logs:
//! [`FileLog`] (an append-only file with group commit) and [`MemLog`] (tests). A
//! Paxos-backed log implements the same trait and runs the same contract tests.
//!
//! Durability: `append` only buffers in memory; `write_out` hands buffered entries to
//! the OS (they survive a crash of the process), `write_out_to` a prefix of them;
//! `sync` makes them durable (fdatasync). Reads serve buffered entries from memory,
//! so reading never writes anything out.
//! On open, a torn or garbled tail is cut back to the last whole record, never served.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A position in the log.
pub type Slot = u64;

/// Longest entry any log accepts.
pub const ENTRY_BYTES_MAX: usize = 1 << 20;

pub trait Log: Send + std::fmt::Debug {
    /// Append one entry; returns its slot. Not durable until [`Log::sync`].
    fn append(&mut self, entry: &[u8]) -> Result<Slot>;
    /// Up to `count_max` committed entries starting at `from` (≥ [`Log::start`]).
    fn read(&mut self, from: Slot, count_max: usize) -> Result<Vec<(Slot, Vec<u8>)>>;
    /// First slot still held (entries before it were truncated behind a checkpoint).
    fn start(&self) -> Slot;
    /// The slot the next append gets.
    fn end(&self) -> Slot;
    /// Entries before this slot survive a power loss.
    fn durable_end(&self) -> Slot;
    /// Hand buffered entries to the OS: they survive a crash of this process.
    fn write_out(&mut self) -> Result<()>;
    /// [`Log::write_out`] of the entries before `end` only; later ones stay buffered
    /// (they may refer to blocks that are not durable yet).
    fn write_out_to(&mut self, end: Slot) -> Result<()>;
    /// Make every appended entry durable.
    fn sync(&mut self) -> Result<()>;
    /// Forget entries before `slot` (a checkpoint covers them). Durable on return.
    fn truncate_before(&mut self, slot: Slot) -> Result<()>;
}

const MAGIC: &[u8; 8] = b"KITHLOG1";
const HEADER_BYTES: u64 = 16;
/// Record header: entry length (u32 LE) and the first 8 bytes of BLAKE3(entry).
const RECORD_HEADER_BYTES: usize = 12;

/// The single-device log: one append-only file.
///
/// File = `"KITHLOG1" ‖ start slot u64` then records `len u32 ‖ blake3(entry)[..8] ‖
/// entry`. Slot of the n-th record = start + n.
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    file: File,
    start: Slot,
    /// File offset of every record from `start`; the last element is the end offset.
    offsets: Vec<u64>,
    /// Encoded records appended but not yet written to the file.
    pending: Vec<u8>,
    /// Records in `pending`.
    pending_count: u64,
    durable_end: Slot,
}

impl FileLog {
    /// Open or create the log at `path`, cutting a torn tail.
    pub fn open(path: &Path) -> Result<FileLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.len() < HEADER_BYTES as usize {
            // New, or torn while being created: nothing was ever committed to it.
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            file.set_len(0)?;
            file.write_all_at(&header, 0)?;
            file.sync_all()?;
            sync_parent(path)?;
            bytes = header;
        }
        if &bytes[..8] != MAGIC {
            return Err(Error::Corrupt {
                what: "log",
                detail: format!("{}: bad magic", path.display()),
            });
        }
        let mut start_bytes = [0u8; 8];
        start_bytes.copy_from_slice(&bytes[8..16]);
        let start = u64::from_le_bytes(start_bytes);
        // Slots are counted from here: a start near u64::MAX would overflow every end.
        if start > u64::MAX >> 1 {
            return Err(Error::Corrupt {
                what: "log",
                detail: format!("{}: start slot {start} out of range", path.display()),
            });
        }
        let mut offsets = vec![HEADER_BYTES];
        let mut at = HEADER_BYTES as usize;
        while let Some(len) = whole_record_at(&bytes, at) {
            at += RECORD_HEADER_BYTES + len;
            offsets.push(at as u64);
        }
        if at != bytes.len() {
            tracing::warn!(path = %path.display(), offset = at, cut_bytes = bytes.len() - at, "log: cutting torn tail");
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        let end = start + offsets.len() as u64 - 1;
        Ok(FileLog {
            path: path.to_path_buf(),
            file,
            start,
            offsets,
            pending: Vec::new(),
            pending_count: 0,
            durable_end: end,
        })
    }

    fn written_end(&self) -> Slot {
        self.start + self.offsets.len() as u64 - 1
    }

    fn end_offset(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(HEADER_BYTES)
    }
}

/// Length of the whole, checksummed record at `at`, if there is one.
fn whole_record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + RECORD_HEADER_BYTES)?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&header[..4]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > ENTRY_BYTES_MAX {
        return None;
    }
    let body = bytes.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len)?;
    (blake3::hash(body).as_bytes()[..8] == header[4..12]).then_some(len)
}

fn sync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Log for FileLog {
    fn append(&mut self, entry: &[u8]) -> Result<Slot> {
        if entry.len() > ENTRY_BYTES_MAX {
            return Err(Error::Invalid("log entry too long"));
        }
        let slot = self.end();
        self.pending
            .extend_from_slice(&(entry.len() as u32).to_le_bytes());
        self.pending
            .extend_from_slice(&blake3::hash(entry).as_bytes()[..8]);
        self.pending.extend_from_slice(entry);
        self.pending_count += 1;
        Ok(slot)
    }

    fn read(&mut self, from: Slot, count_max: usize) -> Result<Vec<(Slot, Vec<u8>)>> {
        if from < self.start {
            return Err(Error::Invalid("log slot before the log start (truncated)"));
        }
        let wanted_end = self.end().min(from.saturating_add(count_max as u64));
        let mut out = Vec::new();
        // Entries already in the file.
        let file_end = self.written_end().min(wanted_end);
        if from < file_end {
            let first = (from - self.start) as usize;
            let last = (file_end - self.start) as usize;
            let (Some(&begin_offset), Some(&end_offset)) =
                (self.offsets.get(first), self.offsets.get(last))
            else {
                return Err(Error::Invalid("log offsets lost a record"));
            };
            let mut bytes = vec![0u8; (end_offset - begin_offset) as usize];
            self.file.read_exact_at(&mut bytes, begin_offset)?;
            let mut at = 0usize;
            for slot in from..file_end {
                let Some(len) = whole_record_at(&bytes, at) else {
                    return Err(Error::Corrupt {
                        what: "log",
                        detail: format!("{}: record {slot}", self.path.display()),
                    });
                };
                let body = at + RECORD_HEADER_BYTES;
                out.push((slot, bytes[body..body + len].to_vec()));
                at = body + len;
            }
        }
        // Entries still buffered come from memory: reading never writes out.
        let mut at = 0usize;
        for slot in self.written_end()..wanted_end {
            let Some(len) = whole_record_at(&self.pending, at) else {
                return Err(Error::Invalid("log buffer lost a record"));
            };
            let body = at + RECORD_HEADER_BYTES;
            if slot >= from {
                out.push((slot, self.pending[body..body + len].to_vec()));
            }
            at = body + len;
        }
        Ok(out)
    }

    fn start(&self) -> Slot {
        self.start
    }

    fn end(&self) -> Slot {
        self.written_end() + self.pending_count
    }

    fn durable_end(&self) -> Slot {
        self.durable_end
    }

    fn write_out(&mut self) -> Result<()> {
        self.write_out_to(self.end())
    }

    fn write_out_to(&mut self, end: Slot) -> Result<()> {
        let count = end.min(self.end()).saturating_sub(self.written_end());
        if count == 0 {
            return Ok(());
        }
        let mut records_end = 0usize;
        let mut record_ends = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Some(len) = whole_record_at(&self.pending, records_end) else {
                return Err(Error::Invalid("log buffer lost a record"));
            };
            records_end += RECORD_HEADER_BYTES + len;
            record_ends.push(records_end as u64);
        }
        let offset = self.end_offset();
        self.file
            .write_all_at(&self.pending[..records_end], offset)?;
        self.offsets.extend(
            record_ends
                .into_iter()
                .map(|record_end| offset + record_end),
        );
        self.pending.drain(..records_end);
        self.pending_count -= count;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.write_out()?;
        if self.durable_end < self.written_end() {
            self.file.sync_data()?;
            self.durable_end = self.written_end();
        }
        Ok(())
    }

    fn truncate_before(&mut self, slot: Slot) -> Result<()> {
        self.sync()?;
        let slot = slot.min(self.end());
        if slot <= self.start {
            return Ok(());
        }
        let first = (slot - self.start) as usize;
        let Some(&keep_from) = self.offsets.get(first) else {
            return Err(Error::Invalid("log truncation past the end"));
        };
        let end_offset = self.end_offset();
        let mut kept = vec![0u8; (end_offset - keep_from) as usize];
        self.file.read_exact_at(&mut kept, keep_from)?;
        let tmp_path = self.path.with_extension("truncating");
        let mut tmp = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&slot.to_le_bytes())?;
        tmp.write_all(&kept)?;
        tmp.sync_all()?;
        std::fs::rename(&tmp_path, &self.path)?;
        sync_parent(&self.path)?;
        *self = FileLog::open(&self.path)?;
        Ok(())
    }
}

/// An in-memory log for tests; [`MemLog::crash`] drops what was not synced.
#[derive(Debug, Default)]
pub struct MemLog {
    start: Slot,
    entries: Vec<Vec<u8>>,
    durable_count: usize,
}

impl MemLog {
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// What survives a power loss.
    pub fn crash(&mut self) {
        self.entries.truncate(self.durable_count);
    }
}

impl Log for MemLog {
    fn append(&mut self, entry: &[u8]) -> Result<Slot> {
        if entry.len() > ENTRY_BYTES_MAX {
            return Err(Error::Invalid("log entry too long"));
        }
        self.entries.push(entry.to_vec());
        Ok(self.end() - 1)
    }

    fn read(&mut self, from: Slot, count_max: usize) -> Result<Vec<(Slot, Vec<u8>)>> {
        if from < self.start {
            return Err(Error::Invalid("log slot before the log start (truncated)"));
        }
        let first = (from - self.start) as usize;
        Ok(self
            .entries
            .iter()
            .enumerate()
            .skip(first)
            .take(count_max)
            .map(|(index, entry)| (self.start + index as u64, entry.clone()))
            .collect())
    }

    fn start(&self) -> Slot {
        self.start
    }

    fn end(&self) -> Slot {
        self.start + self.entries.len() as u64
    }

    fn durable_end(&self) -> Slot {
        self.start + self.durable_count as u64
    }

    fn write_out(&mut self) -> Result<()> {
        Ok(())
    }

    fn write_out_to(&mut self, _end: Slot) -> Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.durable_count = self.entries.len();
        Ok(())
    }

    fn truncate_before(&mut self, slot: Slot) -> Result<()> {
        self.sync()?;
        let slot = slot.min(self.end());
        if slot > self.start {
            let drop_count = (slot - self.start) as usize;
            self.entries.drain(..drop_count);
            self.durable_count = self.entries.len();
            self.start = slot;
        }
        Ok(())
    }
}

/// Contract tests: every `Log` implementation runs these bodies. Other crates (the
/// Paxos-backed log) get them with fossil's `test-support` feature.
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::unwrap_used)]
pub mod contract {
    use super::*;

    /// Opens a fresh log, and reopens it "after a crash of the process".
    pub trait Harness {
        type L: Log;
        fn fresh(&mut self) -> Self::L;
        /// Simulate a process crash: keep what was written out, reopen.
        fn reopen(&mut self, log: Self::L) -> Self::L;
    }

    pub fn append_then_read<H: Harness>(harness: &mut H) {
        let mut log = harness.fresh();
        assert_eq!(log.start(), 0);
        assert_eq!(log.end(), 0);
        for index in 0..100u32 {
            let slot = log.append(&index.to_le_bytes()).unwrap();
            assert_eq!(slot, u64::from(index));
        }
        assert_eq!(log.end(), 100);
        let read = log.read(10, 5).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[0], (10, 10u32.to_le_bytes().to_vec()));
        assert_eq!(read[4], (14, 14u32.to_le_bytes().to_vec()));
        assert!(log.read(100, 10).unwrap().is_empty());
        assert_eq!(log.read(98, 10).unwrap().len(), 2);
        // Empty entries are entries.
        let slot = log.append(b"").unwrap();
        assert_eq!(log.read(slot, 1).unwrap(), vec![(slot, Vec::new())]);
    }

    pub fn synced_entries_survive_reopen<H: Harness>(harness: &mut H) {
        let mut log = harness.fresh();
        for index in 0..10u32 {
            log.append(&index.to_le_bytes()).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.durable_end(), 10);
        let mut log = harness.reopen(log);
        assert_eq!(log.end(), 10);
        assert_eq!(log.read(0, 100).unwrap().len(), 10);
        // Appends continue after the recovered end.
        assert_eq!(log.append(b"next").unwrap(), 10);
        log.sync().unwrap();
        let mut log = harness.reopen(log);
        assert_eq!(log.read(10, 1).unwrap(), vec![(10, b"next".to_vec())]);
    }

    pub fn truncation_keeps_the_suffix<H: Harness>(harness: &mut H) {
        let mut log = harness.fresh();
        for index in 0..20u32 {
            log.append(&index.to_le_bytes()).unwrap();
        }
        log.truncate_before(15).unwrap();
        assert_eq!(log.start(), 15);
        assert_eq!(log.end(), 20);
        assert!(log.read(3, 1).is_err());
        let mut log = harness.reopen(log);
        assert_eq!(log.start(), 15);
        let read = log.read(15, 100).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[0], (15, 15u32.to_le_bytes().to_vec()));
        assert_eq!(log.append(b"x").unwrap(), 20);
    }

    pub fn oversized_entries_are_refused<H: Harness>(harness: &mut H) {
        let mut log = harness.fresh();
        assert!(log.append(&vec![0u8; ENTRY_BYTES_MAX + 1]).is_err());
        assert_eq!(log.end(), 0);
    }

    /// One `#[test]` per contract body, for a harness expression.
    #[macro_export]
    macro_rules! log_contract_tests {
        ($harness:expr) => {
            #[test]
            fn append_then_read() {
                $crate::log::contract::append_then_read(&mut $harness);
            }
            #[test]
            fn synced_entries_survive_reopen() {
                $crate::log::contract::synced_entries_survive_reopen(&mut $harness);
            }
            #[test]
            fn truncation_keeps_the_suffix() {
                $crate::log::contract::truncation_keeps_the_suffix(&mut $harness);
            }
            #[test]
            fn oversized_entries_are_refused() {
                $crate::log::contract::oversized_entries_are_refused(&mut $harness);
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::contract::*;
    use super::*;

    struct MemHarness;
    impl Harness for MemHarness {
        type L = MemLog;
        fn fresh(&mut self) -> MemLog {
            MemLog::new()
        }
        fn reopen(&mut self, mut log: MemLog) -> MemLog {
            log.crash();
            log
        }
    }

    struct FileHarness(tempfile::TempDir);
    impl FileHarness {
        fn new() -> FileHarness {
            FileHarness(tempfile::tempdir().unwrap())
        }
    }
    impl Harness for FileHarness {
        type L = FileLog;
        fn fresh(&mut self) -> FileLog {
            FileLog::open(&self.0.path().join("log")).unwrap()
        }
        fn reopen(&mut self, mut log: FileLog) -> FileLog {
            log.write_out().unwrap();
            drop(log);
            FileLog::open(&self.0.path().join("log")).unwrap()
        }
    }

    mod mem {
        use super::*;
        crate::log_contract_tests!(MemHarness);
    }

    mod file {
        use super::*;
        crate::log_contract_tests!(FileHarness::new());
    }

    #[test]
    fn partial_write_out_keeps_the_rest_buffered_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = FileLog::open(&path).unwrap();
        for index in 0..10u32 {
            log.append(&index.to_le_bytes()).unwrap();
        }
        log.write_out_to(4).unwrap();
        log.write_out_to(2).unwrap();
        let written = std::fs::metadata(&path).unwrap().len();
        // Reading buffered entries serves them from memory, writing nothing out.
        let read = log.read(2, 6).unwrap();
        assert_eq!(
            read.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6, 7]
        );
        assert_eq!(read[3], (5, 5u32.to_le_bytes().to_vec()));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), written);
        assert_eq!(log.end(), 10);
        // A crash of the process keeps exactly what was written out.
        drop(log);
        let mut log = FileLog::open(&path).unwrap();
        assert_eq!(log.end(), 4);
        assert_eq!(
            log.read(3, 1).unwrap(),
            vec![(3, 3u32.to_le_bytes().to_vec())]
        );
        log.append(b"next").unwrap();
        log.write_out_to(100).unwrap();
        drop(log);
        let mut log = FileLog::open(&path).unwrap();
        assert_eq!(log.read(4, 10).unwrap(), vec![(4, b"next".to_vec())]);
    }

    #[test]
    fn torn_tail_is_cut_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = FileLog::open(&path).unwrap();
        for index in 0..5u32 {
            log.append(&[index as u8; 100]).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let whole_len = std::fs::metadata(&path).unwrap().len();
        // Tear the last record at every length, and garble its body.
        for cut in 1..112u64 {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let mut log = FileLog::open(&path).unwrap();
            log.append(&[9u8; 100]).unwrap();
            log.sync().unwrap();
            drop(log);
            file.set_len(whole_len + 112 - cut).unwrap();
            let mut log = FileLog::open(&path).unwrap();
            assert_eq!(log.end(), 5, "cut {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole_len);
            assert_eq!(log.read(4, 10).unwrap(), vec![(4, vec![4u8; 100])]);
        }
        let mut log = FileLog::open(&path).unwrap();
        log.append(&[9u8; 100]).unwrap();
        log.sync().unwrap();
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], whole_len + 50).unwrap();
        let log = FileLog::open(&path).unwrap();
        assert_eq!(log.end(), 5);
    }

    #[test]
    fn bad_magic_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"NOTALOG!00000000").unwrap();
        assert!(matches!(FileLog::open(&path), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn unsynced_entries_are_lost_on_power_loss_only() {
        let mut log = MemLog::new();
        log.append(b"a").unwrap();
        log.sync().unwrap();
        log.append(b"b").unwrap();
        log.crash();
        assert_eq!(log.end(), 1);
    }
}
