//! The store's arena writer: records reach their arena files in the order queued, and
//! no thread that chunks or seals waits for the device.
//!
//! The store decides *where* every record goes (arena and offset) under its writer
//! lock and hands the record — header and sealed block side by side in one buffer — to
//! this queue, in ticket order ([`WriteQueue::append`]).
//!
//! **Staging** (a file with a direct write path, [`BackendFile::supports_direct`]:
//! `O_DIRECT`). The putting thread copies the record into the [`Stage`]: a
//! `STAGE_BYTES` buffer aligned to `DIRECT_ALIGN_BYTES` that mirrors the arena from an
//! aligned offset (`base`) to its end; the caller keeps its buffer for its next block.
//! A full stage becomes a job for the writer thread, which writes it with one direct
//! write (no page-cache copy, no dirty pages for the kernel to write back), while the
//! putter goes on in a fresh buffer from a small pool. The writer thread therefore
//! needs almost no CPU — it waits for the device, and its wake-ups are not on anyone's
//! critical path — and a put waits only when `WRITE_QUEUE_BYTES_MAX` of stages are
//! queued. When someone waits for a staged record (a `sync`, a reader of a queued
//! block, the tree writer's `finish`), the waiter *cuts* the stage: the bytes the file
//! lacks become a job of their own (their aligned part written direct if at least
//! `FLUSH_DIRECT_BYTES_MIN`, else through the page cache; the unaligned tail, under
//! `DIRECT_ALIGN_BYTES`, through the page cache with `write_at`), and the stage goes on
//! in a fresh buffer that starts with that partial block, so the next direct write
//! covers it again. The file therefore always ends exactly at the last record written
//! — the arena format does not change and nothing is padded — and a block is only ever
//! rewritten with the bytes it already holds, so a crash during a rewrite cannot damage
//! a record that was synced (a torn rewrite leaves old or new bytes, which are equal
//! there). One thread writes the jobs, in order, so two writes of one block never race.
//! The tail written through the page cache and the direct writes are coherent on Linux
//! (see `backend::DiskFile`). When the stage must start over elsewhere (another arena,
//! after a rollback), it waits until every job is written and reads the partial block
//! before the new offset back from the file.
//!
//! **Unstaged** (no direct path: tmpfs, the memory backend by default): the buffer
//! itself is queued and the writer thread appends it with one `write_at`, woken once
//! `WAKE_BYTES` are queued (or someone waits), with a writeback hint every
//! `WRITEBACK_HINT_BYTES`.
//!
//! Every queued record has a *ticket* (1, 2, … in queue order). The writer thread
//! publishes `done_through`: every ticket up to it is wholly in the file, or was
//! skipped. The first write that fails puts the queue in a *failed* state: the first
//! ticket not wholly written and every later one are skipped (not written) until the
//! store takes the failure ([`WriteQueue::take_failure`]), rolls back what it had
//! reserved for them and records the failed range; the stage is then dropped and
//! rebuilt from the file at the next record. So a failure can never leave a written
//! record after a missing one, and a waiter on any ticket learns whether its record
//! reached the file ([`WriteQueue::wait`]).
//!
//! Bounds: at most `WRITE_QUEUE_BYTES_MAX` bytes queued (a put that finds the queue
//! full waits) plus the stage being filled, at most `SPARE_STAGES_MAX` stage buffers
//! and `SPARE_BUFFERS_MAX` record buffers kept for reuse, and the outcome of the last
//! `FAILED_RANGES_MAX` failures remembered (a ticket older than that which was never
//! waited for is reported as failed, which errs on the safe side). No busy-waiting:
//! every wait is on a condition variable.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::backend::{BackendFile, DIRECT_ALIGN_BYTES};
use crate::{Error, Result};

/// Bytes queued before a put waits for the writer thread: four stages, so the putters
/// go on while the device takes a few milliseconds over a write.
pub const WRITE_QUEUE_BYTES_MAX: usize = 16 << 20;
/// Bytes of a staging buffer: appends reach a direct-capable file in writes of this
/// size (and smaller ones only when someone waits).
pub const STAGE_BYTES: usize = 4 << 20;
/// A cut writes its aligned part direct only from this size on; less (a small file's
/// `finish`) goes through the page cache and waits for no device. The stage moves
/// past what was written either way, so nothing is written twice but the last partial
/// block.
const FLUSH_DIRECT_BYTES_MIN: u64 = 1 << 20;

const _: () =
    assert!(STAGE_BYTES.is_multiple_of(DIRECT_ALIGN_BYTES) && STAGE_BYTES >= DIRECT_ALIGN_BYTES);
const _: () = assert!(WRITE_QUEUE_BYTES_MAX >= STAGE_BYTES);
/// An idle writer thread is woken once this much unstaged data is queued (or a stage
/// job is, or someone waits for a ticket, or the queue closes), so it writes records
/// in batches instead of being woken for every one.
pub const WAKE_BYTES: usize = 256 << 10;
/// Written record buffers kept for reuse by the next puts.
pub const SPARE_BUFFERS_MAX: usize = 64;
/// Record buffers smaller than this are not worth keeping.
const SPARE_BUFFER_BYTES_MIN: usize = 16 << 10;
/// Stage buffers kept for reuse: as many as can be queued, and the one being filled.
const SPARE_STAGES_MAX: usize = WRITE_QUEUE_BYTES_MAX / STAGE_BYTES + 1;
/// Failed ticket ranges remembered for late waiters.
const FAILED_RANGES_MAX: usize = 256;
/// After this many bytes appended to one unstaged arena, ask the kernel to start
/// writing them back, so the next `sync` finds little left to flush.
pub const WRITEBACK_HINT_BYTES: u64 = 2 << 20;

/// One record of an unstaged file, its buffer owned by the queue until written.
pub(crate) struct WriteJob {
    pub ticket: u64,
    pub arena: u32,
    pub file: Arc<dyn BackendFile>,
    pub offset: u64,
    /// Record header and payload, contiguous.
    pub bytes: Vec<u8>,
}

/// What the writer thread writes, in queue order.
enum Job {
    /// One record of an unstaged file.
    Record(WriteJob),
    /// Bytes of a stage the file lacks.
    Stage(StageJob),
    /// Tickets `..=through` that were staged but dropped with the stage (an append
    /// that failed): they fail, unless an earlier failure skips them anyway.
    Lost { through: u64, error: StoredError },
}

/// A stage buffer handed to the writer thread: the arena's bytes `base..base +
/// filled`, of which `unwritten_from..` are not in the file yet.
struct StageJob {
    file: Arc<dyn BackendFile>,
    buffer: AlignedBuffer,
    base: u64,
    filled: usize,
    unwritten_from: u64,
    /// Every staged ticket up to this one is wholly in the file once this job is.
    done_after: u64,
}

impl Job {
    /// What the job counts against `WRITE_QUEUE_BYTES_MAX`.
    fn queued_bytes(&self) -> usize {
        match self {
            Job::Record(job) => job.bytes.len(),
            Job::Stage(_) => STAGE_BYTES,
            Job::Lost { .. } => 0,
        }
    }

    /// Every ticket up to this one is written (or skipped) once the job is.
    fn done_through(&self) -> u64 {
        match self {
            Job::Record(job) => job.ticket,
            Job::Stage(job) => job.done_after,
            Job::Lost { through, .. } => *through,
        }
    }

    fn write(&self, hint: &mut Option<(u32, u64, u64)>) -> Result<()> {
        match self {
            Job::Record(job) => write_record(job, hint),
            Job::Stage(job) => job.write(),
            Job::Lost { error, .. } => Err(error.to_error()),
        }
    }
}

impl StageJob {
    /// The aligned part direct when it is a full stage or at least
    /// `FLUSH_DIRECT_BYTES_MIN` the file lacks (rewriting the bytes of the first block
    /// before `unwritten_from` with what they already hold), the rest through the page
    /// cache.
    fn write(&self) -> Result<()> {
        let end = self.base + self.filled as u64;
        let aligned = self.filled - self.filled % DIRECT_ALIGN_BYTES;
        let mut from = self.unwritten_from;
        if self.base + aligned as u64 >= from + FLUSH_DIRECT_BYTES_MIN {
            self.file
                .write_direct_at(self.base, &self.buffer.bytes()[..aligned])?;
            from = self.base + aligned as u64;
        }
        if from < end {
            // `from - base` is within the buffer: base <= unwritten_from <= from < end.
            let start = (from - self.base) as usize;
            self.file
                .write_at(from, &self.buffer.bytes()[start..self.filled])?;
        }
        Ok(())
    }
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
    jobs: VecDeque<Job>,
    queued_bytes: usize,
    /// The writer thread holds a job it took from `jobs`.
    writing: bool,
    /// Every ticket up to this one has been written or skipped.
    done_through: u64,
    /// The first failed ticket, until the store takes it.
    failure: Option<Failure>,
    failed_ranges: VecDeque<FailedRange>,
    /// Ranges at or below this were forgotten (see the module comment).
    forgotten_through: u64,
    /// Write now, however little is queued (someone waits, or a stage job is queued).
    kicked: bool,
    /// No more jobs will come: the thread exits once the queue is empty.
    closed: bool,
    /// The thread is gone (it finished, or panicked): nothing more will be done.
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued that should start a batch, a waiter kicks, or
    /// the queue closes.
    work: Condvar,
    /// Signalled when a job is done or the thread stops.
    progress: Condvar,
    spare: Mutex<Vec<Vec<u8>>>,
    spare_stages: Mutex<Vec<AlignedBuffer>>,
    /// The stage putters fill. Lock order: `stage` before `state`; the writer thread
    /// never takes `stage`, so a putter may wait for the queue while holding it.
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
        let before_first = first_ticket.saturating_sub(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                done_through: before_first,
                forgotten_through: before_first,
                ..State::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            spare: Mutex::new(Vec::new()),
            spare_stages: Mutex::new(Vec::new()),
            stage: Mutex::new(Stage::new(before_first)),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("venti-writer".into())
            .spawn(move || run(&thread_shared))?;
        Ok((WriteQueue { shared }, thread))
    }

    /// Queue record `ticket` (tickets in increasing order, under the store's writer
    /// lock) for `offset` of `arena`: copied into the stage on a direct-capable file
    /// (`buffer` stays the caller's), else `buffer` is taken. Waits while the queue is
    /// full. On an error the ticket is failed (its waiters learn it).
    pub fn append(
        &self,
        ticket: u64,
        arena: u32,
        file: &Arc<dyn BackendFile>,
        offset: u64,
        buffer: &mut Vec<u8>,
    ) -> Result<()> {
        let mut stage = self.shared.stage.lock();
        let staged = if file.supports_direct() {
            stage
                .follow(&self.shared, arena, file, offset)
                .and_then(|()| stage.append(&self.shared, Some(ticket), buffer))
        } else {
            // Whatever another file left staged goes first, keeping queue order.
            stage.leave(&self.shared).and_then(|()| {
                queue_job(
                    &self.shared,
                    Job::Record(WriteJob {
                        ticket,
                        arena,
                        file: Arc::clone(file),
                        offset,
                        bytes: std::mem::take(buffer),
                    }),
                )
            })
        };
        if let Err(error) = &staged {
            stage.fail_staged(&self.shared, Some(ticket), error);
        }
        staged
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
    /// append runs. On a direct-capable file the record goes into the stage like a
    /// queued one (the stage must keep mirroring the arena's end) and then, with
    /// whatever else the file lacks, through the page cache: the record is in the file
    /// when this returns, and a single small put costs no synchronous direct write and
    /// no thread switch. A failure leaves nothing reserved and the stage is rebuilt
    /// from the file next time.
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
                .follow(&self.shared, arena, file, offset)
                .and_then(|()| stage.append(&self.shared, None, bytes))
                // A record longer than the stage queued full stages: they go first.
                .and_then(|()| wait_all_written(&self.shared))
                .and_then(|()| stage.write_here())
        } else {
            stage
                .leave(&self.shared)
                .and_then(|()| wait_all_written(&self.shared))
                .and_then(|()| file.write_at(offset, bytes))
        };
        if let Err(error) = &result {
            stage.fail_staged(&self.shared, None, error);
        }
        result
    }

    /// Whether a failure waits to be taken.
    pub fn has_failure(&self) -> bool {
        self.shared.state.lock().failure.is_some()
    }

    /// Wait until every ticket up to `ticket` is done, cutting the stage if it holds
    /// records up to it.
    pub fn wait_done(&self, ticket: u64) -> Result<()> {
        if self.shared.state.lock().done_through >= ticket {
            return Ok(());
        }
        {
            let mut stage = self.shared.stage.lock();
            if stage.handed_through < ticket
                && let Err(error) = stage.cut(&self.shared)
            {
                stage.fail_staged(&self.shared, None, &error);
                return Err(error);
            }
        }
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
    /// `(first failed ticket, error)`. The caller (holding the store's writer lock, so
    /// no one appends) must roll back its reservations for tickets from the first
    /// failed one through `last_queued`; from now on those are reported failed to
    /// waiters, new tickets are written again, and the stage starts over from the file.
    pub fn take_failure(&self, last_queued: u64) -> Result<Option<(u64, Error)>> {
        self.wait_done(last_queued)?;
        let taken = {
            let mut state = self.shared.state.lock();
            match state.failure.take() {
                None => None,
                Some(failure) => {
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
                    Some((failure.ticket, error))
                }
            }
        };
        if taken.is_some() {
            // Every staged byte was handed to a (skipped) job above; the window's end
            // is past what the file holds.
            self.shared.stage.lock().reset();
        }
        Ok(taken)
    }

    /// A written record buffer to reuse, if one is spare.
    pub fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.shared.spare.lock().pop()
    }

    /// No more jobs: what is staged is queued, the thread writes what is queued and
    /// exits.
    pub fn close(&self) {
        {
            let mut stage = self.shared.stage.lock();
            if let Err(error) = stage.cut(&self.shared) {
                stage.fail_staged(&self.shared, None, &error);
            }
        }
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

/// Queue a job, waiting while the queue is full; stage and loss jobs wake the thread
/// at once, records once `WAKE_BYTES` are queued.
fn queue_job(shared: &Shared, job: Job) -> Result<()> {
    let bytes = job.queued_bytes();
    let mut state = shared.state.lock();
    while !state.jobs.is_empty()
        && state.queued_bytes + bytes > WRITE_QUEUE_BYTES_MAX
        && !state.stopped
    {
        shared.progress.wait(&mut state);
    }
    if state.stopped || state.closed {
        return Err(stopped_error());
    }
    state.queued_bytes += bytes;
    if !matches!(job, Job::Record(_)) {
        state.kicked = true;
    }
    state.jobs.push_back(job);
    if state.kicked || state.queued_bytes >= WAKE_BYTES {
        shared.work.notify_one();
    }
    Ok(())
}

/// Wait until the writer thread has written (or skipped) every queued job; an error if
/// a failure is pending (the file may lack bytes of queued records).
fn wait_all_written(shared: &Shared) -> Result<()> {
    let mut state = shared.state.lock();
    if !state.jobs.is_empty() && !state.kicked {
        state.kicked = true;
        shared.work.notify_one();
    }
    while (!state.jobs.is_empty() || state.writing) && !state.stopped {
        shared.progress.wait(&mut state);
    }
    if let Some(failure) = &state.failure {
        return Err(failure.error.to_error());
    }
    if !state.jobs.is_empty() {
        return Err(stopped_error());
    }
    Ok(())
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

fn run(shared: &Shared) {
    let _guard = StopGuard(shared);
    // Writeback hints of the unstaged path: the arena, where its unhinted bytes start,
    // and where they end.
    let mut hint: Option<(u32, u64, u64)> = None;
    // In a batch: write until the queue is empty.
    let mut batch = false;
    loop {
        let (job, skip) = {
            let mut state = shared.state.lock();
            loop {
                // A batch starts when enough is queued, a stage job is, or someone
                // waits, and goes on until the queue is empty (so it covers every
                // waiter's ticket).
                let start = state.queued_bytes >= WAKE_BYTES || state.kicked || state.closed;
                if batch || start {
                    if let Some(job) = state.jobs.pop_front() {
                        batch = true;
                        state.writing = true;
                        let skip = state.failure.is_some();
                        break (job, skip);
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
        let result = if skip { Ok(()) } else { job.write(&mut hint) };
        {
            let mut state = shared.state.lock();
            state.writing = false;
            state.queued_bytes = state.queued_bytes.saturating_sub(job.queued_bytes());
            if let Err(error) = result
                && state.failure.is_none()
            {
                // Jobs are written in order: everything through `done_through` is in
                // the file, and the next ticket is the first that may not be.
                let ticket = state.done_through + 1;
                state.failure = Some(Failure {
                    ticket,
                    error: StoredError::of(&error),
                });
            }
            state.done_through = state.done_through.max(job.done_through());
        }
        shared.progress.notify_all();
        match job {
            Job::Record(job) => recycle(shared, job.bytes),
            Job::Stage(job) => {
                let mut spare = shared.spare_stages.lock();
                if spare.len() < SPARE_STAGES_MAX {
                    spare.push(job.buffer);
                }
            }
            Job::Lost { .. } => {}
        }
    }
}

/// Append one unstaged record with one `write_at` (and a writeback hint every
/// `WRITEBACK_HINT_BYTES`).
fn write_record(job: &WriteJob, hint: &mut Option<(u32, u64, u64)>) -> Result<()> {
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

/// A stage buffer from the pool, or a new one.
fn spare_stage(shared: &Shared) -> AlignedBuffer {
    shared
        .spare_stages
        .lock()
        .pop()
        .unwrap_or_else(AlignedBuffer::new)
}

/// The staging buffer (see the module comment): a mirror of one arena's bytes from an
/// aligned `base` to its end, filled by the putters.
struct Stage {
    buffer: AlignedBuffer,
    window: Option<Window>,
    /// Staged tickets not yet in a job, with the file offset each record ends at, in
    /// ticket order.
    unwritten: VecDeque<(u64, u64)>,
    /// Every staged ticket up to this one is in a queued job (or was failed).
    handed_through: u64,
}

struct Window {
    arena: u32,
    file: Arc<dyn BackendFile>,
    /// File offset of the buffer's first byte; a multiple of `DIRECT_ALIGN_BYTES`.
    base: u64,
    /// The buffer holds the arena's bytes `base..base + filled`, which end the arena.
    filled: usize,
    /// From this offset on, the stage's bytes are in no job and not in the file.
    unwritten_from: u64,
}

impl Window {
    fn end(&self) -> u64 {
        self.base + self.filled as u64
    }
}

impl Stage {
    fn new(handed_through: u64) -> Stage {
        Stage {
            buffer: AlignedBuffer::new(),
            window: None,
            unwritten: VecDeque::new(),
            handed_through,
        }
    }

    /// Make the window end at `offset` of `arena`, where the next record goes: if it
    /// does not already, hand what it holds to the writer thread (`leave`) and start a
    /// new one there, reading back the bytes of the partial block before `offset` once
    /// every queued job is in the file.
    fn follow(
        &mut self,
        shared: &Shared,
        arena: u32,
        file: &Arc<dyn BackendFile>,
        offset: u64,
    ) -> Result<()> {
        if self
            .window
            .as_ref()
            .is_some_and(|window| window.arena == arena && window.end() == offset)
        {
            return Ok(());
        }
        self.leave(shared)?;
        let align = DIRECT_ALIGN_BYTES as u64;
        let base = offset - offset % align;
        // Below DIRECT_ALIGN_BYTES: the cast cannot truncate.
        let filled = (offset - base) as usize;
        if filled > 0 {
            wait_all_written(shared)?;
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

    /// Hand what the window holds to the writer thread and drop it (the next record's
    /// file takes no staging, or is another window).
    fn leave(&mut self, shared: &Shared) -> Result<()> {
        self.cut(shared)?;
        self.window = None;
        Ok(())
    }

    /// Drop the window after a failure was taken: every staged ticket was handed to a
    /// job already.
    fn reset(&mut self) {
        self.window = None;
        self.unwritten.clear();
    }

    /// After a failed append, cut or write: forget the window and its staged records,
    /// and fail their tickets (and `ticket`, the one being appended) through a job, so
    /// their waiters learn it and the store rolls them back.
    fn fail_staged(&mut self, shared: &Shared, ticket: Option<u64>, error: &Error) {
        let through = ticket
            .into_iter()
            .chain(self.unwritten.back().map(|(ticket, _)| *ticket))
            .max();
        self.window = None;
        self.unwritten.clear();
        if let Some(through) = through
            && through > self.handed_through
        {
            self.handed_through = through;
            // Refused only when the thread is gone, and then every waiter fails anyway.
            let _ = queue_job(
                shared,
                Job::Lost {
                    through,
                    error: StoredError::of(error),
                },
            );
        }
    }

    /// Copy a record to the end of the window (`ticket`: `None` for a record written
    /// before anyone asks); each time the buffer fills, queue it as a job and go on in
    /// a fresh one. The window must end where the record starts (`follow`).
    fn append(&mut self, shared: &Shared, ticket: Option<u64>, mut bytes: &[u8]) -> Result<()> {
        let Stage {
            buffer,
            window,
            unwritten,
            handed_through,
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
                let end = window.end();
                while let Some(&(ticket, record_end)) = unwritten.front()
                    && record_end <= end
                {
                    *handed_through = (*handed_through).max(ticket);
                    unwritten.pop_front();
                }
                let full = std::mem::replace(buffer, spare_stage(shared));
                let job = StageJob {
                    file: Arc::clone(&window.file),
                    buffer: full,
                    base: window.base,
                    filled: STAGE_BYTES,
                    unwritten_from: window.unwritten_from,
                    done_after: *handed_through,
                };
                window.base = end;
                window.filled = 0;
                window.unwritten_from = end;
                queue_job(shared, Job::Stage(job))?;
            }
        }
        Ok(())
    }

    /// Hand every byte of the window the file lacks to the writer thread as one job;
    /// the stage goes on in a fresh buffer holding the last partial block, so the next
    /// direct write starts aligned.
    fn cut(&mut self, shared: &Shared) -> Result<()> {
        let Stage {
            buffer,
            window,
            unwritten,
            handed_through,
        } = self;
        let Some(window) = window.as_mut() else {
            return Ok(());
        };
        if let Some((ticket, _)) = unwritten.back() {
            *handed_through = (*handed_through).max(*ticket);
        }
        unwritten.clear();
        if window.unwritten_from >= window.end() {
            return Ok(());
        }
        let aligned = window.filled - window.filled % DIRECT_ALIGN_BYTES;
        let tail = window.filled - aligned;
        let mut fresh = spare_stage(shared);
        fresh.bytes_mut()[..tail].copy_from_slice(&buffer.bytes()[aligned..window.filled]);
        let job = StageJob {
            file: Arc::clone(&window.file),
            buffer: std::mem::replace(buffer, fresh),
            base: window.base,
            filled: window.filled,
            unwritten_from: window.unwritten_from,
            done_after: *handed_through,
        };
        window.base += aligned as u64;
        window.filled = tail;
        window.unwritten_from = window.end();
        queue_job(shared, Job::Stage(job))
    }

    /// Write every byte of the window the file lacks on the calling thread, through the
    /// page cache (the writer thread is idle: `write_now`), then keep only the last
    /// partial block in the buffer.
    fn write_here(&mut self) -> Result<()> {
        let Stage { buffer, window, .. } = self;
        let Some(window) = window.as_mut() else {
            return Ok(());
        };
        if window.unwritten_from < window.end() {
            // Within the buffer: base <= unwritten_from < end.
            let start = (window.unwritten_from - window.base) as usize;
            window
                .file
                .write_at(window.unwritten_from, &buffer.bytes()[start..window.filled])?;
            window.unwritten_from = window.end();
        }
        let aligned = window.filled - window.filled % DIRECT_ALIGN_BYTES;
        if aligned > 0 {
            buffer.bytes_mut().copy_within(aligned..window.filled, 0);
            window.base += aligned as u64;
            window.filled -= aligned;
        }
        Ok(())
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
                    let mut buffer = bytes;
                    queue.append(
                        last_ticket,
                        arena as u32,
                        &files[arena],
                        offset,
                        &mut buffer,
                    )?;
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
            queue.append(ticket, 0, &file, offset, &mut record(ticket as usize, len))?;
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
        queue.append(4, 0, &file, 32 + 10_000, &mut record(4, 3000))?;
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

    #[test]
    fn an_append_that_cannot_stage_fails_its_ticket_instead_of_hanging() -> Result<()> {
        let memory = MemoryBackend::new(2)?;
        let first = memory.open("a", true)?;
        let second = memory.open("b", true)?;
        first.write_at(0, &[1u8; 32])?;
        second.write_at(0, &[2u8; 32])?;
        let (queue, thread) = WriteQueue::start(1)?;
        queue.append(1, 0, &first, 32, &mut record(1, 9000))?;
        memory.fail_writes(true);
        assert!(queue.wait(1, 1).is_err());
        // A failure is pending (not taken): starting a window in another arena would
        // read back bytes the file may lack, so the append fails, and so does its
        // ticket — a waiter learns it instead of waiting for a job that never comes.
        memory.fail_writes(false);
        assert!(
            queue
                .append(2, 1, &second, 32, &mut record(2, 100))
                .is_err()
        );
        assert!(queue.wait(2, 2).is_err(), "the unstaged ticket is failed");
        let failure = queue.take_failure(2)?;
        assert_eq!(failure.map(|(first_failed, _)| first_failed), Some(1));
        // Afterwards both arenas take records again.
        queue.append(3, 1, &second, 32, &mut record(3, 100))?;
        queue.append(4, 0, &first, 32, &mut record(4, 5000))?;
        queue.wait(3, 4)?;
        let mut back = vec![0u8; 5000];
        first.read_at(32, &mut back)?;
        assert!(back == record(4, 5000));
        assert_eq!(first.len()?, 32 + 5000, "the failed record left no bytes");
        queue.close();
        let _ = thread.join();
        Ok(())
    }

    #[test]
    fn a_staged_record_leaves_the_buffer_with_the_caller_and_an_unstaged_one_takes_it() -> Result<()>
    {
        let memory = MemoryBackend::new(3)?;
        let file = memory.open("a", true)?;
        let (queue, thread) = WriteQueue::start(1)?;
        let mut buffer = record(1, 70_000);
        queue.append(1, 0, &file, 0, &mut buffer)?;
        assert_eq!(buffer.len(), 70_000, "staged: copied, the caller keeps it");
        // The caller may overwrite it at once: the queue holds its own copy.
        buffer.fill(0xEE);
        queue.wait(1, 1)?;
        let mut back = vec![0u8; 70_000];
        file.read_at(0, &mut back)?;
        assert!(back == record(1, 70_000));
        memory.set_direct_io(false);
        let mut buffer = record(2, 70_000);
        queue.append(2, 0, &file, 70_000, &mut buffer)?;
        assert!(
            buffer.is_empty(),
            "unstaged: the queue writes the buffer itself"
        );
        queue.wait(2, 2)?;
        file.read_at(70_000, &mut back)?;
        assert!(back == record(2, 70_000));
        queue.close();
        let _ = thread.join();
        Ok(())
    }
}
