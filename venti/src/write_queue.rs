//! The store's arena writer: one thread that appends queued records to arena files.
//!
//! The store decides *where* every record goes (arena and offset) under its writer
//! lock and hands the record — header and sealed block already side by side in one
//! owned buffer — to this queue; the writer thread appends them in the order queued.
//! So the caller's thread never waits for the kernel, and writes to one arena stay
//! sequential.
//!
//! **Staging.** On a file with a direct write path ([`BackendFile::supports_direct`]:
//! `O_DIRECT`), records are copied into a [`Stage`]: a `STAGE_BYTES` buffer aligned
//! to `DIRECT_ALIGN_BYTES` that mirrors the arena from an aligned offset (`base`) to
//! its end. A full stage is written with one direct write — no page-cache copy, no
//! dirty pages for the kernel to track and write back — and the stage moves on to the
//! next `STAGE_BYTES`. When someone waits (a `sync`, a reader of a queued block, the
//! tree writer's `finish`), the stage is *flushed*: its aligned part goes out direct
//! (if it is at least `FLUSH_DIRECT_BYTES_MIN`; less, as a small file leaves, goes
//! through the page cache with the rest), the unaligned tail (under
//! `DIRECT_ALIGN_BYTES`) through the page cache with `write_at`, and the stage keeps
//! that partial block at its front, so the next direct
//! write covers it again. The file therefore always ends exactly at the last record
//! written — the arena format does not change and nothing is padded — and a block is
//! only ever rewritten with the bytes it already holds, so a crash during a rewrite
//! cannot damage a record that was synced (a torn rewrite leaves old or new bytes,
//! which are equal there). The tail written through the page cache and the direct
//! writes are coherent on Linux (see `backend::DiskFile`). A file without a direct
//! path gets one `write_at` per record, as before, with a writeback hint every
//! `WRITEBACK_HINT_BYTES`.
//!
//! Every queued record has a *ticket* (1, 2, … in queue order). The thread processes
//! tickets in order and publishes `done_through`: every ticket up to it is in the file
//! (a staged record counts once the write holding its last byte returned) or was
//! skipped. The first write that fails puts the
//! queue in a *failed* state: that ticket and every later one are skipped (not
//! written) until the store takes the failure ([`WriteQueue::take_failure`]), rolls back
//! what it had reserved for them and records the failed range. So a failure can never
//! leave a written record after a missing one, and a waiter on any ticket learns
//! whether its record reached the file ([`WriteQueue::wait`]).
//!
//! A write of the stage that fails fails the first record it did not complete and
//! every later one; the stage is dropped and rebuilt from the file at the next record.
//!
//! Bounds: at most `WRITE_QUEUE_BYTES_MAX` bytes queued (a queue that is full makes the
//! caller wait) plus one stage of `STAGE_BYTES`, at most `SPARE_BUFFERS_MAX` written buffers kept for reuse, and the
//! outcome of the last `FAILED_RANGES_MAX` failures remembered (a ticket older than
//! that which was never waited for is reported as failed, which errs on the safe side).
//! No busy-waiting: every wait is on a condition variable.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::backend::{BackendFile, DIRECT_ALIGN_BYTES};
use crate::{Error, Result};

/// Bytes queued before a put waits for the writer thread. Two stages' worth: the
/// sealers go on while the thread waits for a direct write of a full stage.
pub const WRITE_QUEUE_BYTES_MAX: usize = 8 << 20;
/// Bytes of the staging buffer: appends reach a direct-capable file in writes of this
/// size (and smaller ones only when someone waits).
pub const STAGE_BYTES: usize = 4 << 20;
/// A flush writes its aligned part direct only from this size on (see [`Flush`]).
const FLUSH_DIRECT_BYTES_MIN: u64 = 1 << 20;

const _: () =
    assert!(STAGE_BYTES.is_multiple_of(DIRECT_ALIGN_BYTES) && STAGE_BYTES >= DIRECT_ALIGN_BYTES);
/// An idle writer thread is woken once this much is queued (or someone waits for a
/// ticket, or the queue closes), so it writes in batches instead of being woken for
/// every record.
pub const WAKE_BYTES: usize = 256 << 10;
/// Written buffers kept for reuse by the next puts.
pub const SPARE_BUFFERS_MAX: usize = 64;
/// Buffers smaller than this are not worth keeping.
const SPARE_BUFFER_BYTES_MIN: usize = 16 << 10;
/// Failed ticket ranges remembered for late waiters.
const FAILED_RANGES_MAX: usize = 256;
/// After this many bytes appended to one arena, ask the kernel to start writing them
/// back, so the next `sync` finds little left to flush.
pub const WRITEBACK_HINT_BYTES: u64 = 2 << 20;

/// One record to append.
pub(crate) struct WriteJob {
    pub ticket: u64,
    pub arena: u32,
    pub file: Arc<dyn BackendFile>,
    pub offset: u64,
    /// Record header and payload, contiguous.
    pub bytes: Vec<u8>,
}

/// An I/O error kept so every interested caller can get an equivalent one: the OS
/// error code survives (callers test for ENOSPC).
#[derive(Clone, Debug)]
struct StoredError {
    raw_os_error: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl StoredError {
    fn of(error: &Error) -> StoredError {
        match error {
            Error::Io(io) => StoredError {
                raw_os_error: io.raw_os_error(),
                kind: io.kind(),
                message: io.to_string(),
            },
            other => StoredError {
                raw_os_error: None,
                kind: io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    fn to_error(&self) -> Error {
        match self.raw_os_error {
            Some(code) => Error::Io(io::Error::from_raw_os_error(code)),
            None => Error::Io(io::Error::new(self.kind, self.message.clone())),
        }
    }
}

#[derive(Debug)]
struct Failure {
    ticket: u64,
    error: StoredError,
}

#[derive(Debug)]
struct FailedRange {
    first: u64,
    last: u64,
    error: StoredError,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<WriteJob>,
    queued_bytes: usize,
    /// Every ticket up to this one has been written or skipped.
    done_through: u64,
    /// Every ticket up to this one has been taken from the queue: written, skipped, or
    /// staged (`done_through` lags while staged records are not in the file yet).
    processed_through: u64,
    /// The first failed ticket, until the store takes it.
    failure: Option<Failure>,
    failed_ranges: VecDeque<FailedRange>,
    /// Ranges at or below this were forgotten (see the module comment).
    forgotten_through: u64,
    /// Someone waits for a queued ticket: write now, however little is queued.
    kicked: bool,
    /// No more jobs will come: the thread exits once the queue is empty.
    closed: bool,
    /// The thread is gone (it finished, or panicked): nothing more will be done.
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when enough is queued, a waiter kicks, or the queue closes.
    work: Condvar,
    /// Signalled when a job is done or the thread stops.
    progress: Condvar,
    spare: Mutex<Vec<Vec<u8>>>,
    /// The thread's staging buffer; `write_now` uses it too (only while the queue is
    /// idle, so the two never contend).
    stage: Mutex<Stage>,
}

/// Handle to the writer thread; cheap to clone for readers that wait on tickets.
#[derive(Clone)]
pub(crate) struct WriteQueue {
    shared: Arc<Shared>,
}

impl WriteQueue {
    /// Start the writer thread; `done_through` starts at `first_ticket - 1`.
    pub fn start(first_ticket: u64) -> Result<(WriteQueue, JoinHandle<()>)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                done_through: first_ticket.saturating_sub(1),
                processed_through: first_ticket.saturating_sub(1),
                forgotten_through: first_ticket.saturating_sub(1),
                ..State::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            spare: Mutex::new(Vec::new()),
            stage: Mutex::new(Stage::new()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("venti-writer".into())
            .spawn(move || run(&thread_shared))?;
        Ok((WriteQueue { shared }, thread))
    }

    /// Queue a record; waits while the queue is full.
    pub fn push(&self, job: WriteJob) -> Result<()> {
        let mut state = self.shared.state.lock();
        while !state.jobs.is_empty()
            && state.queued_bytes + job.bytes.len() > WRITE_QUEUE_BYTES_MAX
            && !state.stopped
        {
            self.shared.progress.wait(&mut state);
        }
        if state.stopped || state.closed {
            return Err(stopped_error());
        }
        state.queued_bytes += job.bytes.len();
        state.jobs.push_back(job);
        if state.queued_bytes >= WAKE_BYTES {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Every ticket up to this one was written successfully.
    pub fn written_through(&self) -> u64 {
        let state = self.shared.state.lock();
        match &state.failure {
            Some(failure) => state.done_through.min(failure.ticket.saturating_sub(1)),
            None => state.done_through,
        }
    }

    /// Whether every ticket through `last_queued` is written and nothing failed: the
    /// thread is idle and, while no one queues, stays so.
    pub fn is_idle(&self, last_queued: u64) -> bool {
        let state = self.shared.state.lock();
        state.done_through >= last_queued && state.failure.is_none()
    }

    /// Keep a buffer written on another thread for reuse.
    pub fn recycle(&self, buffer: Vec<u8>) {
        recycle(&self.shared, buffer);
    }

    /// Write one record on the calling thread, now. Only while the queue is idle
    /// (every queued ticket done) and under the store's writer lock, so no other
    /// append runs. The record goes into the stage like a queued one (the stage must
    /// keep mirroring the arena's end) and then, with whatever else the file lacks,
    /// through the page cache: one `write_at`, the record is in the file when this
    /// returns, and a single small put costs no synchronous direct write. A failure
    /// leaves nothing reserved and the stage is rebuilt from the file next time.
    pub fn write_now(
        &self,
        arena: u32,
        file: &Arc<dyn BackendFile>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let mut stage = self.shared.stage.lock();
        let result = if file.supports_direct() {
            stage
                .follow(arena, file, offset, Flush::Direct)
                .and_then(|()| stage.append(None, bytes))
                .and_then(|()| stage.flush(Flush::Buffered))
        } else {
            stage.leave().and_then(|()| file.write_at(offset, bytes))
        };
        if result.is_err() {
            stage.abandon();
        }
        result
    }

    /// Whether a failure waits to be taken.
    pub fn has_failure(&self) -> bool {
        self.shared.state.lock().failure.is_some()
    }

    /// Wait until every ticket up to `ticket` is done.
    pub fn wait_done(&self, ticket: u64) -> Result<()> {
        let mut state = self.shared.state.lock();
        if state.done_through < ticket && !state.kicked {
            state.kicked = true;
            self.shared.work.notify_one();
        }
        while state.done_through < ticket {
            if state.stopped {
                return Err(stopped_error());
            }
            self.shared.progress.wait(&mut state);
        }
        Ok(())
    }

    /// Wait for tickets `first..=last` and report whether any of them failed. (A ticket
    /// of another caller inside the range failing counts too: conservative.)
    pub fn wait(&self, first: u64, last: u64) -> Result<()> {
        self.wait_done(last)?;
        let state = self.shared.state.lock();
        if let Some(failure) = &state.failure
            && failure.ticket <= last
        {
            return Err(failure.error.to_error());
        }
        if let Some(range) = state
            .failed_ranges
            .iter()
            .find(|range| range.first <= last && first <= range.last)
        {
            return Err(range.error.to_error());
        }
        if first <= state.forgotten_through {
            return Err(Error::Io(io::Error::other(
                "outcome of an old queued write was forgotten",
            )));
        }
        Ok(())
    }

    /// After every ticket up to `last_queued` is done: the failure, if any, as
    /// `(first failed ticket, error)`. The caller must roll back its reservations for
    /// tickets from the first failed one through `last_queued`; from now on those are
    /// reported failed to waiters and new tickets are written again.
    pub fn take_failure(&self, last_queued: u64) -> Result<Option<(u64, Error)>> {
        self.wait_done(last_queued)?;
        let mut state = self.shared.state.lock();
        let Some(failure) = state.failure.take() else {
            return Ok(None);
        };
        let error = failure.error.to_error();
        state.failed_ranges.push_back(FailedRange {
            first: failure.ticket,
            last: last_queued,
            error: failure.error,
        });
        if state.failed_ranges.len() > FAILED_RANGES_MAX
            && let Some(oldest) = state.failed_ranges.pop_front()
        {
            state.forgotten_through = state.forgotten_through.max(oldest.last);
        }
        Ok(Some((failure.ticket, error)))
    }

    /// A written buffer to reuse, if one is spare.
    pub fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.shared.spare.lock().pop()
    }

    /// No more jobs: the thread writes what is queued and exits.
    pub fn close(&self) {
        self.shared.state.lock().closed = true;
        self.shared.work.notify_all();
    }
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("WriteQueue")
            .field("queued", &state.jobs.len())
            .field("done_through", &state.done_through)
            .field("failed", &state.failure.is_some())
            .finish_non_exhaustive()
    }
}

fn stopped_error() -> Error {
    Error::Io(io::Error::other("arena writer thread stopped"))
}

/// Marks the queue stopped when the thread ends, even by a panic, so no waiter waits
/// forever.
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.state.lock().stopped = true;
        self.0.progress.notify_all();
    }
}

/// What the writer thread does next.
enum Action {
    /// Write (or, after a failure, skip) one queued record.
    Job { job: WriteJob, skip: bool },
    /// Someone waits and the queue is empty: write what the stage holds.
    Flush,
}

fn run(shared: &Shared) {
    let _guard = StopGuard(shared);
    // Writeback hints of the unstaged path: the arena, where its unhinted bytes start,
    // and where they end.
    let mut hint: Option<(u32, u64, u64)> = None;
    // In a batch: write until the queue is empty.
    let mut batch = false;
    loop {
        let action = {
            let mut state = shared.state.lock();
            loop {
                // A batch starts when enough is queued or someone waits, and goes on
                // until the queue is empty (so it covers every waiter's ticket).
                let start = state.queued_bytes >= WAKE_BYTES || state.kicked || state.closed;
                if batch || start {
                    if let Some(job) = state.jobs.pop_front() {
                        batch = true;
                        let skip = state.failure.is_some();
                        break Action::Job { job, skip };
                    }
                    if (state.kicked || state.closed)
                        && state.done_through < state.processed_through
                    {
                        break Action::Flush;
                    }
                    batch = false;
                    state.kicked = false;
                    if state.closed {
                        return;
                    }
                }
                shared.work.wait(&mut state);
            }
        };
        let mut stage = shared.stage.lock();
        let (job, result) = match action {
            Action::Job { job, skip } => {
                let result = if skip {
                    Ok(())
                } else {
                    write_job(&mut stage, &job, &mut hint)
                };
                (Some(job), result)
            }
            Action::Flush => (None, stage.flush(Flush::Direct)),
        };
        let failure = match result {
            Ok(()) => None,
            Err(error) => {
                // The first record not wholly written fails, and every one after it.
                let ticket = stage
                    .first_unwritten()
                    .or(job.as_ref().map(|job| job.ticket))
                    .unwrap_or(0);
                stage.abandon();
                Some(Failure {
                    ticket,
                    error: StoredError::of(&error),
                })
            }
        };
        let first_unwritten = stage.first_unwritten();
        drop(stage);
        {
            let mut state = shared.state.lock();
            if let Some(job) = &job {
                state.processed_through = job.ticket;
                state.queued_bytes = state.queued_bytes.saturating_sub(job.bytes.len());
            }
            if let Some(failure) = failure
                && failure.ticket > 0
                && state.failure.is_none()
            {
                state.failure = Some(failure);
            }
            state.done_through = match first_unwritten {
                Some(ticket) => ticket.saturating_sub(1),
                None => state.processed_through,
            };
        }
        shared.progress.notify_all();
        if let Some(job) = job {
            recycle(shared, job.bytes);
        }
    }
}

/// Append one queued record: into the stage on a direct-capable file, else with one
/// `write_at` (and a writeback hint every `WRITEBACK_HINT_BYTES`).
fn write_job(stage: &mut Stage, job: &WriteJob, hint: &mut Option<(u32, u64, u64)>) -> Result<()> {
    if job.file.supports_direct() {
        stage.follow(job.arena, &job.file, job.offset, Flush::Direct)?;
        return stage.append(Some(job.ticket), &job.bytes);
    }
    stage.leave()?;
    job.file.write_at(job.offset, &job.bytes)?;
    let end = job.offset + job.bytes.len() as u64;
    let from = match *hint {
        Some((arena, from, until)) if arena == job.arena && until == job.offset => from,
        _ => job.offset,
    };
    if end - from >= WRITEBACK_HINT_BYTES {
        // Only a hint: the durability order rests on `sync`, never on this.
        job.file.start_writeback(from, end - from);
        *hint = Some((job.arena, end, end));
    } else {
        *hint = Some((job.arena, from, end));
    }
    Ok(())
}

/// How a flush writes the stage's unwritten bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Whole aligned blocks direct when at least `FLUSH_DIRECT_BYTES_MIN` of them are
    /// unwritten, the rest through the page cache. (A small flush — a small file's
    /// `finish` — would otherwise wait for the device where a buffered write does not;
    /// the stage moves past what it wrote either way, so nothing is written twice but
    /// the last partial block.)
    Direct,
    /// All through the page cache (a single small record: one `write_at`, no wait for
    /// the device).
    Buffered,
}

/// `STAGE_BYTES` of memory aligned to `DIRECT_ALIGN_BYTES`, in safe code: an
/// over-allocated vector and the aligned window inside it.
struct AlignedBuffer {
    memory: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    fn new() -> AlignedBuffer {
        // Zeroed allocation: the kernel maps pages only as they are first written.
        let memory = vec![0u8; STAGE_BYTES + DIRECT_ALIGN_BYTES];
        let address = memory.as_ptr() as usize;
        let start = (DIRECT_ALIGN_BYTES - address % DIRECT_ALIGN_BYTES) % DIRECT_ALIGN_BYTES;
        AlignedBuffer { memory, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + STAGE_BYTES]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + STAGE_BYTES]
    }
}

/// The staging buffer (see the module comment): a mirror of one arena's bytes from an
/// aligned `base` to its end.
struct Stage {
    buffer: AlignedBuffer,
    window: Option<Window>,
    /// Tickets of staged records not wholly in the file yet, with the file offset each
    /// ends at, in ticket order.
    unwritten: VecDeque<(u64, u64)>,
}

struct Window {
    arena: u32,
    file: Arc<dyn BackendFile>,
    /// File offset of the buffer's first byte; a multiple of `DIRECT_ALIGN_BYTES`.
    base: u64,
    /// The buffer holds the arena's bytes `base..base + filled`, which end the arena.
    filled: usize,
    /// From this offset on, the stage's bytes are not in the file yet.
    unwritten_from: u64,
}

impl Window {
    fn end(&self) -> u64 {
        self.base + self.filled as u64
    }
}

impl Stage {
    fn new() -> Stage {
        Stage {
            buffer: AlignedBuffer::new(),
            window: None,
            unwritten: VecDeque::new(),
        }
    }

    /// Make the window end at `offset` of `arena`, where the next record goes: if it
    /// does not already, write out what it holds (`flush`) and start a new one there,
    /// reading back the bytes of the partial block before `offset`.
    fn follow(
        &mut self,
        arena: u32,
        file: &Arc<dyn BackendFile>,
        offset: u64,
        flush: Flush,
    ) -> Result<()> {
        if self
            .window
            .as_ref()
            .is_some_and(|window| window.arena == arena && window.end() == offset)
        {
            return Ok(());
        }
        self.leave_with(flush)?;
        let align = DIRECT_ALIGN_BYTES as u64;
        let base = offset - offset % align;
        // Below DIRECT_ALIGN_BYTES: the cast cannot truncate.
        let filled = (offset - base) as usize;
        if filled > 0 {
            file.read_at(base, &mut self.buffer.bytes_mut()[..filled])?;
        }
        self.window = Some(Window {
            arena,
            file: Arc::clone(file),
            base,
            filled,
            unwritten_from: offset,
        });
        Ok(())
    }

    /// Write out what the window holds and drop it (the next record's file takes no
    /// staging, or is another window).
    fn leave(&mut self) -> Result<()> {
        self.leave_with(Flush::Direct)
    }

    fn leave_with(&mut self, flush: Flush) -> Result<()> {
        self.flush(flush)?;
        self.window = None;
        Ok(())
    }

    /// Forget the window and its unwritten records (after a failed write: the store
    /// rolls them back).
    fn abandon(&mut self) {
        self.window = None;
        self.unwritten.clear();
    }

    /// Copy a record to the end of the window (`ticket`: `None` for a record that is
    /// flushed before anyone asks); each time the buffer fills, write it direct and
    /// move on. The window must end where the record starts (`follow`).
    fn append(&mut self, ticket: Option<u64>, mut bytes: &[u8]) -> Result<()> {
        let Stage {
            buffer,
            window,
            unwritten,
        } = self;
        let window = window.as_mut().ok_or_else(|| {
            Error::Io(io::Error::other(
                "arena writer: append without a stage window",
            ))
        })?;
        if let Some(ticket) = ticket {
            unwritten.push_back((ticket, window.end() + bytes.len() as u64));
        }
        while !bytes.is_empty() {
            let take = (STAGE_BYTES - window.filled).min(bytes.len());
            let (now, rest) = bytes.split_at(take);
            buffer.bytes_mut()[window.filled..window.filled + take].copy_from_slice(now);
            window.filled += take;
            bytes = rest;
            if window.filled == STAGE_BYTES {
                window.file.write_direct_at(window.base, buffer.bytes())?;
                window.base += STAGE_BYTES as u64;
                window.filled = 0;
                window.unwritten_from = window.base;
                while unwritten
                    .front()
                    .is_some_and(|(_, end)| *end <= window.unwritten_from)
                {
                    unwritten.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Write every byte of the window the file lacks (see [`Flush`]), then keep only
    /// the last partial block in the buffer, so the next direct write starts aligned.
    fn flush(&mut self, flush: Flush) -> Result<()> {
        let Stage {
            buffer,
            window,
            unwritten,
        } = self;
        let Some(window) = window.as_mut() else {
            return Ok(());
        };
        let end = window.end();
        let aligned = window.filled - window.filled % DIRECT_ALIGN_BYTES;
        if window.unwritten_from < end {
            let mut from = window.unwritten_from;
            if flush == Flush::Direct
                && window.base + aligned as u64 >= from + FLUSH_DIRECT_BYTES_MIN
            {
                // Rewrites `base..unwritten_from` (under one block) with the bytes it
                // already holds.
                window
                    .file
                    .write_direct_at(window.base, &buffer.bytes()[..aligned])?;
                from = window.base + aligned as u64;
            }
            if from < end {
                // `from - base` is within the buffer: from >= base, from < end.
                let start = (from - window.base) as usize;
                window
                    .file
                    .write_at(from, &buffer.bytes()[start..window.filled])?;
            }
            window.unwritten_from = end;
        }
        unwritten.clear();
        if aligned > 0 {
            buffer.bytes_mut().copy_within(aligned..window.filled, 0);
            window.base += aligned as u64;
            window.filled -= aligned;
        }
        Ok(())
    }

    /// The first staged ticket whose record is not wholly in the file.
    fn first_unwritten(&self) -> Option<u64> {
        self.unwritten.front().map(|(ticket, _)| *ticket)
    }
}

fn recycle(shared: &Shared, buffer: Vec<u8>) {
    if buffer.capacity() >= SPARE_BUFFER_BYTES_MIN {
        let mut spare = shared.spare.lock();
        if spare.len() < SPARE_BUFFERS_MAX {
            spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use proptest::prelude::*;

    /// Distinct bytes for record `n`.
    fn record(n: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ n.wrapping_mul(0x9E37)) as u8)
            .collect()
    }

    /// How the test hands a record to the queue.
    #[derive(Clone, Copy, Debug)]
    enum Way {
        Queued,
        /// Queued, then waited for (a reader of a queued block, or `finish`).
        QueuedAndWaited,
        /// Written on the calling thread once the queue is idle (a single put).
        Now,
    }

    /// Append records of `lengths` to two arena-like files through one queue, each
    /// record to arena `arena_of[n % ..]` in `way`, and check the files hold exactly
    /// the records: with staging (the memory backend refuses misaligned direct
    /// writes) and without.
    fn check_appends(direct: bool, records: &[(usize, bool, Way)]) -> Result<()> {
        let memory = MemoryBackend::new(1)?;
        memory.set_direct_io(direct);
        let files: Vec<Arc<dyn BackendFile>> =
            vec![memory.open("a", true)?, memory.open("b", true)?];
        let mut expected = vec![vec![0xA5u8; 32], vec![0x5Au8; 32]];
        for (file, bytes) in files.iter().zip(&expected) {
            file.write_at(0, bytes)?;
        }
        let (queue, thread) = WriteQueue::start(1)?;
        let mut last_ticket = 0;
        for (n, (len, second, way)) in records.iter().enumerate() {
            let arena = usize::from(*second);
            let bytes = record(n, *len);
            let offset = expected[arena].len() as u64;
            expected[arena].extend_from_slice(&bytes);
            match way {
                Way::Now => {
                    queue.wait_done(last_ticket)?;
                    assert!(queue.is_idle(last_ticket));
                    queue.write_now(arena as u32, &files[arena], offset, &bytes)?;
                    // In the file at once, whatever the stage still holds.
                    let mut back = vec![0u8; bytes.len()];
                    files[arena].read_at(offset, &mut back)?;
                    assert!(back == bytes, "record {n} written now is not in the file");
                }
                Way::Queued | Way::QueuedAndWaited => {
                    last_ticket += 1;
                    queue.push(WriteJob {
                        ticket: last_ticket,
                        arena: arena as u32,
                        file: Arc::clone(&files[arena]),
                        offset,
                        bytes,
                    })?;
                    if matches!(way, Way::QueuedAndWaited) {
                        queue.wait(last_ticket, last_ticket)?;
                        let mut back = vec![0u8; *len];
                        files[arena].read_at(offset, &mut back)?;
                        assert!(back == record(n, *len), "waited record {n} not in the file");
                    }
                }
            }
        }
        queue.wait(1, last_ticket.max(1))?;
        for (file, bytes) in files.iter().zip(&expected) {
            assert_eq!(
                file.len()?,
                bytes.len() as u64,
                "the file ends at its last record"
            );
            let mut back = vec![0u8; bytes.len()];
            file.read_at(0, &mut back)?;
            assert!(
                back == *bytes,
                "file content differs from the records appended"
            );
        }
        queue.close();
        let _ = thread.join();
        Ok(())
    }

    fn way() -> impl Strategy<Value = Way> {
        prop_oneof![
            6 => Just(Way::Queued),
            1 => Just(Way::QueuedAndWaited),
            1 => Just(Way::Now),
        ]
    }

    #[test]
    fn records_larger_than_the_stage_and_exact_stage_fills() -> Result<()> {
        // The first record fills the stage to the byte (32 + len = STAGE_BYTES); the
        // next spans two and a half stages; a flush of an aligned end follows.
        let records = [
            (STAGE_BYTES - 32, false, Way::Queued),
            (2 * STAGE_BYTES + STAGE_BYTES / 2, false, Way::Queued),
            (STAGE_BYTES / 2, false, Way::QueuedAndWaited),
            (100, false, Way::Now),
            (DIRECT_ALIGN_BYTES - 100, false, Way::QueuedAndWaited),
            (7, true, Way::Queued),
        ];
        check_appends(true, &records)?;
        check_appends(false, &records)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn staged_appends_leave_exactly_the_records(
            records in proptest::collection::vec(
                (prop_oneof![4 => 1usize..5000, 4 => 5000usize..300_000, 1 => 300_000usize..2_000_000],
                 proptest::bool::weighted(0.1), way()),
                1..40),
        ) {
            if let Err(error) = check_appends(true, &records) {
                prop_assert!(false, "staged: {error}");
            }
            if let Err(error) = check_appends(false, &records) {
                prop_assert!(false, "unstaged: {error}");
            }
        }
    }

    #[test]
    fn a_failed_stage_write_fails_the_first_record_not_in_the_file() -> Result<()> {
        let memory = MemoryBackend::new(1)?;
        let file = memory.open("a", true)?;
        file.write_at(0, &[1u8; 32])?;
        let (queue, thread) = WriteQueue::start(1)?;
        // Ticket 1 is written (waited for); tickets 2 and 3 only staged.
        let mut offset = 32u64;
        for (ticket, len) in [(1u64, 10_000usize), (2, 20_000), (3, 5000)] {
            queue.push(WriteJob {
                ticket,
                arena: 0,
                file: Arc::clone(&file),
                offset,
                bytes: record(ticket as usize, len),
            })?;
            offset += len as u64;
            if ticket == 1 {
                queue.wait(1, 1)?;
            }
        }
        memory.fail_writes(true);
        assert!(
            queue.wait(2, 3).is_err(),
            "staged records fail when their write fails"
        );
        assert!(queue.wait(1, 1).is_ok(), "the written record stays written");
        let failure = queue.take_failure(3)?;
        assert_eq!(failure.map(|(first_failed, _)| first_failed), Some(2));
        // Writes work again: the stage is rebuilt from the file where record 2 was.
        memory.fail_writes(false);
        queue.push(WriteJob {
            ticket: 4,
            arena: 0,
            file: Arc::clone(&file),
            offset: 32 + 10_000,
            bytes: record(4, 3000),
        })?;
        queue.wait(4, 4)?;
        let mut back = vec![0u8; 3000];
        file.read_at(32 + 10_000, &mut back)?;
        assert!(back == record(4, 3000));
        let mut first = vec![0u8; 10_000];
        file.read_at(32, &mut first)?;
        assert!(first == record(1, 10_000));
        queue.close();
        let _ = thread.join();
        Ok(())
    }
}
