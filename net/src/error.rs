//! The crate's one error type.
//!
//! Variants are structured so callers can tell a fault of the peer or of the
//! bytes they handed us (refuse, log, carry on) from a local fault (disk, bind)
//! and from a retryable condition (timeout, unreachable peer).

use std::path::PathBuf;

/// Everything that can go wrong in `net`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- encodings (identity, chain, keyring body, pairing codes, invites) ---
    /// Bytes that should hold a `what` are malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    /// An encoding carries a version this build does not read.
    #[error("{what} has unsupported version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// An input is longer than its bound allows.
    #[error("{what} is {len_bytes} bytes, more than the {max_bytes} allowed")]
    TooLong {
        what: &'static str,
        len_bytes: usize,
        max_bytes: usize,
    },
    /// A copy-pasted string failed its checksum (most likely a typo).
    #[error("{what} checksum does not match: check for a typo")]
    Checksum { what: &'static str },

    // --- identity and user chain ---
    /// A signature did not verify.
    #[error("bad signature on {what}")]
    BadSignature { what: &'static str },
    /// A chain link does not follow the one before it.
    #[error("user chain broken at link {seq}: {reason}")]
    ChainBroken { seq: u64, reason: &'static str },
    /// Two chains disagree on a link both hold: proof of a fork by the root key holder.
    #[error("user chain forked at link {seq}")]
    ChainFork { seq: u64 },
    /// A chain operation names a device the chain does not allow at that point.
    #[error("user chain link {seq}: device {device} {reason}")]
    ChainDevice {
        seq: u64,
        device: String,
        reason: &'static str,
    },

    // --- keyring ---
    /// The keyring could not be opened with the passphrase given (or was tampered with).
    #[error("wrong passphrase for keyring {path:?} (or the file was altered)")]
    WrongPassphrase { path: PathBuf },
    /// The keyring is encrypted but no passphrase was supplied.
    #[error("keyring {path:?} is encrypted: a passphrase is needed")]
    PassphraseNeeded { path: PathBuf },
    /// The keyring file is damaged.
    #[error("keyring {path:?} is corrupt: {reason}")]
    KeyringCorrupt { path: PathBuf, reason: &'static str },
    /// Deriving the key from the passphrase failed (bad parameters).
    #[error("passphrase key derivation failed: {reason}")]
    Kdf { reason: String },
    /// A file operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // --- pairing ---
    /// The pairing secret is unknown to this device, or was already used.
    #[error("pairing code unknown or already used")]
    PairingUnknown,
    /// The pairing code expired.
    #[error("pairing code expired")]
    PairingExpired,
    /// Too many pairing codes are outstanding.
    #[error("too many open pairing codes ({open_max} at most)")]
    PairingTooMany { open_max: usize },
    /// A join request asked for another role than its code was issued for.
    #[error("this pairing code adds a {code}, not a {asked}")]
    PairingRole {
        code: &'static str,
        asked: &'static str,
    },

    // --- frames and transport ---
    /// A frame header is invalid.
    #[error("bad frame: {reason}")]
    Frame { reason: &'static str },
    /// A frame's kind is not one this build knows.
    #[error("unknown frame kind {kind}")]
    FrameKind { kind: u8 },
    /// A frame's declared length exceeds the bound for its kind.
    #[error("frame of kind {kind} declares {len_bytes} bytes, at most {max_bytes} allowed")]
    FrameTooLong {
        kind: u8,
        len_bytes: u64,
        max_bytes: u32,
    },
    /// A stream ended, was reset or failed before a whole frame arrived.
    #[error("stream failed: {reason}")]
    Stream { reason: String },
    /// A deadline passed.
    #[error("{what} timed out after {timeout_ms} ms")]
    Timeout { what: &'static str, timeout_ms: u64 },
    /// The peer answered a request with an error frame.
    #[error("peer refused the request: {message}")]
    Refused { message: String },
    /// Building the TLS / QUIC configuration failed (a bug or an unusable key).
    #[error("transport configuration: {reason}")]
    Config { reason: String },
    /// Opening or binding the UDP socket failed.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A connection attempt or an established connection failed.
    #[error("connection to {peer}: {reason}")]
    Connection { peer: String, reason: String },
    /// No address is known for a device.
    #[error("no address known for device {device}")]
    NoAddress { device: String },
    /// A device was dialled recently without success; wait before trying again.
    #[error("device {device} unreachable, next attempt in {retry_in_ms} ms")]
    Backoff { device: String, retry_in_ms: u64 },
    /// The endpoint was closed.
    #[error("endpoint closed")]
    EndpointClosed,

    // --- block exchange (blocks.rs) ---
    /// A peer sent bytes that do not hash to the address asked for (a faulty or
    /// malicious peer; the bytes were dropped).
    #[error("device {peer} sent a block for {expected} that hashes to {actual}")]
    BlockMismatch {
        peer: String,
        expected: venti::Address,
        actual: venti::Address,
    },
    /// A peer's policy refuses this device blocks of this volume.
    #[error("device {peer} refuses blocks of volume {volume:x} to this device")]
    BlockRefused { peer: String, volume: u128 },
    /// Every peer asked answered that it does not hold the block.
    #[error("block {address} not found at any of {peers_asked} devices")]
    BlockNotFound {
        address: venti::Address,
        peers_asked: usize,
    },
    /// No peer delivered the block; `last` is the last failure other than "not found".
    #[error("block {address} unavailable from {peers_asked} devices: {last}")]
    BlockUnavailable {
        address: venti::Address,
        peers_asked: usize,
        #[source]
        last: Box<Error>,
    },

    // --- log entries and the replicated log (entry.rs, replica.rs) ---
    /// A log entry for another volume.
    #[error("entry for volume {found:x}, expected {expected:x}")]
    EntryWrongVolume { expected: u128, found: u128 },
    /// A log entry whose author is not a known, unrevoked device of the volume.
    #[error("entry from unknown author {author}")]
    EntryUnknownAuthor { author: paxos::NodeId },
    /// A log entry whose signature does not verify under its author's key.
    #[error("bad signature on entry from {author}")]
    EntryBadSignature { author: paxos::NodeId },
    /// A log entry sealed under a key epoch this device holds no key for.
    #[error("no entry key for key epoch {epoch}")]
    EntryUnknownKeyEpoch { epoch: u64 },
    /// A signed log entry whose ciphertext does not open under its epoch key.
    #[error("entry from {author} does not decrypt (tampered, or sealed under another key)")]
    EntryTampered { author: paxos::NodeId },
    /// A committed command whose sealed entry names another author or seq than the
    /// log carries it under (a replayed or misattributed entry).
    #[error("slot {slot}: entry names ({author}, {seq}), the log ({proposer}, {log_seq})")]
    EntryMisattributed {
        slot: paxos::Slot,
        author: paxos::NodeId,
        seq: u64,
        proposer: paxos::NodeId,
        log_seq: u64,
    },
    /// This device holds no entry keys for the volume (a witness, or keys not granted
    /// yet): it can vote but not propose or read.
    #[error("no entry keys for this volume on this device")]
    NoEntryKeys,
    /// A key epoch learned from a rotation could not be made durable here (reading
    /// stops before the rotation and tries again).
    #[error("key epoch {epoch} could not be kept: {reason}")]
    EpochNotKept { epoch: u64, reason: String },
    /// The slots asked for were truncated behind a checkpoint: install the snapshot.
    #[error("slots before {log_start} were truncated behind a checkpoint")]
    Truncated { log_start: paxos::Slot },
    /// The operation must run at the leader; `leader` is this device's best guess.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<paxos::NodeId> },
    /// No quorum answered in time (nothing was lost; retry later).
    #[error("no quorum reachable within {timeout_ms} ms")]
    NoQuorum { timeout_ms: u64 },
    /// The replica's task has stopped (closed, or stopped on a fatal store error).
    #[error("replica stopped")]
    ReplicaStopped,
    /// The Paxos core refused a request, or its store failed.
    #[error("paxos: {0}")]
    Paxos(#[from] paxos::Error),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        Error::Malformed { what, reason }
    }

    /// True for conditions that may clear up by themselves (timeouts, unreachable
    /// peers, lost connections); false for refusals and corrupt input.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Connection { .. }
                | Error::Backoff { .. }
                | Error::Stream { .. }
                | Error::NotLeader { .. }
                | Error::NoQuorum { .. }
                | Error::Paxos(paxos::Error::QueueFull { .. })
        )
    }
}
