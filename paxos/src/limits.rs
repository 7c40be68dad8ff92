//! Named bounds. Every queue, batch and message the core keeps or accepts is bounded by
//! one of these; the codec refuses anything larger before allocating.

/// Voters (acceptors, witnesses included) in one configuration.
pub const VOTERS_MAX: usize = 9;
/// Learners (non-voting members) in one configuration.
pub const LEARNERS_MAX: usize = 250;
/// Payload bytes of one proposed command (big content lives in venti, not the log).
pub const ENTRY_BYTES_MAX: usize = 256 * 1024;
/// Entries carried by one phase-2 `Accept` batch.
pub const BATCH_ENTRIES_MAX: usize = 256;
/// Payload bytes carried by one `Accept` batch (the leader cuts batches at this size).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Slots the leader may have proposed but not yet seen chosen (pipelining window).
pub const SLOTS_IN_FLIGHT_MAX: u64 = 1024;
/// Accept batches the leader may have outstanding at once.
pub const BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Payload bytes the leader may have proposed but not yet seen chosen.
pub const BYTES_IN_FLIGHT_MAX: usize = 8 * 1024 * 1024;
/// Slots above its own commit index an acceptor keeps accepted values for; a leader
/// stays within `SLOTS_IN_FLIGHT_MAX` of its commit index, and an acceptor that lags
/// further first catches up. Bounds the entries of one `Promise`.
pub const ACCEPT_WINDOW_SLOTS: u64 = 2 * SLOTS_IN_FLIGHT_MAX;
/// Accepted-but-uncommitted payload bytes an acceptor keeps (bounds a `Promise`).
pub const ACCEPTED_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Committed entries in one catch-up / learner-pull reply.
pub const CATCHUP_ENTRIES_MAX: usize = 256;
/// Payload bytes in one catch-up reply.
pub const CATCHUP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Opaque state-machine bytes in one snapshot.
pub const SNAPSHOT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Proposals a node keeps queued (offline proposer) before refusing new ones.
pub const QUEUE_ENTRIES_MAX: usize = 4096;
/// Proposals forwarded to the leader in one message (also cut at `BATCH_BYTES_MAX`).
pub const FORWARD_ENTRIES_MAX: usize = 256;
/// Linearizable reads waiting for confirmation at one node.
pub const READS_PENDING_MAX: usize = 1024;
/// Read ids a node reserves durably at a time (one `Persist` per this many reads): a
/// restarted node starts above every id it may have sent before its crash.
pub const READ_IDS_PER_RESERVATION: u64 = 1 << 16;
/// Proposers in the at-most-once table a snapshot carries (16 bytes each). Proposers
/// are member devices (≤ 259 at a time); the table keeps every one ever seen.
pub const PROPOSERS_MAX: usize = 65_536;
/// Bytes of one encoded message; the decoder refuses longer input up front.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

const _: () = assert!(BATCH_ENTRIES_MAX as u64 <= SLOTS_IN_FLIGHT_MAX);
const _: () = assert!(SLOTS_IN_FLIGHT_MAX < ACCEPT_WINDOW_SLOTS);
const _: () = assert!(2 * BYTES_IN_FLIGHT_MAX <= ACCEPTED_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= BYTES_IN_FLIGHT_MAX);
const _: () = assert!(ACCEPTED_BYTES_MAX + SNAPSHOT_BYTES_MAX < MESSAGE_BYTES_MAX);
const _: () = assert!(ENTRY_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(PROPOSERS_MAX * 16 + SNAPSHOT_BYTES_MAX < MESSAGE_BYTES_MAX);
