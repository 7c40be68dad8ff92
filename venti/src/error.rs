//! venti's one error type.

use crate::Address;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything venti can fail with. `Io` is the only variant worth retrying; the rest
/// describe damaged or hostile input and name what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("block {address} not found")]
    NotFound { address: Address },
    #[error("block {address}: stored bytes do not hash to their address")]
    AddressMismatch { address: Address },
    #[error("block {address}: cannot be opened with the given key ({reason})")]
    Unseal { address: Address, reason: &'static str },
    #[error("arena {arena}, offset {offset}: corrupt record ({reason})")]
    Corrupt { arena: u32, offset: u64, reason: String },
    #[error("index: {0}")]
    Index(#[from] rusqlite::Error),
}
