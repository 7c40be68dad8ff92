//! The store's arena writer: one thread that appends queued records to arena files.
//!
//! The store decides *where* every record goes (arena and offset) under its writer
//! lock and hands the record — header and sealed block already side by side in one
//! owned buffer — to this queue; the writer thread writes each with one `write_at`, in
//! the order queued. So the caller's thread never waits for the kernel's copy into the
//! page cache, and writes to one arena stay sequential.
//!
//! Every queued record has a *ticket* (1, 2, … in queue order). The thread processes
//! tickets in order and publishes `done_through`. The first write that fails puts the
//! queue in a *failed* state: that ticket and every later one are skipped (not
//! written) until the store takes the failure ([`WriteQueue::take_failure`]), rolls back
//! what it had reserved for them and records the failed range. So a failure can never
//! leave a written record after a missing one, and a waiter on any ticket learns
//! whether its record reached the file ([`WriteQueue::wait`]).
//!
//! Bounds: at most `WRITE_QUEUE_BYTES_MAX` bytes queued (a queue that is full makes the
//! caller wait), at most `SPARE_BUFFERS_MAX` written buffers kept for reuse, and the
//! outcome of the last `FAILED_RANGES_MAX` failures remembered (a ticket older than
//! that which was never waited for is reported as failed, which errs on the safe side).
//! No busy-waiting: every wait is on a condition variable.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::backend::BackendFile;
use crate::{Error, Result};

/// Bytes queued before a put waits for the writer thread.
pub const WRITE_QUEUE_BYTES_MAX: usize = 4 << 20;
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
                forgotten_through: first_ticket.saturating_sub(1),
                ..State::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            spare: Mutex::new(Vec::new()),
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

fn run(shared: &Shared) {
    let _guard = StopGuard(shared);
    // The arena being written, where its unhinted bytes start, and where they end.
    let mut hint: Option<(u32, u64, u64)> = None;
    // In a batch: write until the queue is empty.
    let mut batch = false;
    loop {
        let (job, skip) = {
            let mut state = shared.state.lock();
            loop {
                // A batch starts when enough is queued or someone waits, and goes on
                // until the queue is empty (so it covers every waiter's ticket).
                let start = state.queued_bytes >= WAKE_BYTES || state.kicked || state.closed;
                if batch || start {
                    if let Some(job) = state.jobs.pop_front() {
                        batch = true;
                        break (job, state.failure.is_some());
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
        let result = if skip {
            Ok(())
        } else {
            job.file.write_at(job.offset, &job.bytes)
        };
        if result.is_ok() && !skip {
            let end = job.offset + job.bytes.len() as u64;
            let (from, _) = match hint {
                Some((arena, from, until)) if arena == job.arena && until == job.offset => {
                    (from, until)
                }
                _ => (job.offset, job.offset),
            };
            if end - from >= WRITEBACK_HINT_BYTES {
                // Only a hint: the durability order rests on `sync`, never on this.
                job.file.start_writeback(from, end - from);
                hint = Some((job.arena, end, end));
            } else {
                hint = Some((job.arena, from, end));
            }
        }
        {
            let mut state = shared.state.lock();
            if let Err(error) = &result
                && state.failure.is_none()
            {
                state.failure = Some(Failure {
                    ticket: job.ticket,
                    error: StoredError::of(error),
                });
            }
            state.done_through = job.ticket;
            state.queued_bytes = state.queued_bytes.saturating_sub(job.bytes.len());
        }
        shared.progress.notify_all();
        recycle(shared, job.bytes);
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
