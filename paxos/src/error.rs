//! The crate's one error type.

use crate::ids::{ConfigId, NodeId, Slot};

/// Errors of the Paxos crate. Peer input never produces a panic; it produces one of
/// these (from the codec) or is ignored by the core.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration broke a structural rule.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Which rule.
        reason: &'static str,
    },
    /// Bytes that are not a valid encoding (peer or disk input).
    #[error("malformed {what} at byte {offset}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Byte offset of the problem.
        offset: usize,
    },
    /// A length field or payload above its bound.
    #[error("{what} too large: {len} > {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// An encoding version this build does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The proposal queue is full (an offline proposer with `QUEUE_ENTRIES_MAX` waiting).
    #[error("proposal queue full ({len} entries)")]
    QueueFull {
        /// Entries already queued.
        len: usize,
    },
    /// Too many reads are waiting for confirmation.
    #[error("too many pending reads")]
    TooManyReads,
    /// This node cannot do that in its role (e.g. a witness asked to propose).
    #[error("node {node} cannot {action} in configuration {config}")]
    NotAllowed {
        /// This node.
        node: NodeId,
        /// What was asked.
        action: &'static str,
        /// The configuration in force.
        config: ConfigId,
    },
    /// A hash-chain link did not verify (a corrupt or forged committed entry).
    #[error("hash chain broken at slot {slot}")]
    ChainMismatch {
        /// The first slot that failed.
        slot: Slot,
    },
    /// The durable store failed; the node must stop rather than continue unpersisted.
    #[error("store: {message}")]
    Store {
        /// The underlying error, as text (SQLite errors are not `Clone`).
        message: String,
    },
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store {
            message: e.to_string(),
        }
    }
}
