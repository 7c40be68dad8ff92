//! venti's one error type.

use crate::Address;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything venti can fail with. `Io` and `Remote` are the variants worth retrying;
/// the rest describe damaged or hostile input and name what and where.
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
    Unseal {
        address: Address,
        reason: &'static str,
    },
    #[error("arena {arena}, offset {offset}: corrupt record ({reason})")]
    Corrupt {
        arena: u32,
        offset: u64,
        reason: String,
    },
    #[error("block {address} in arena {arena} at offset {offset}: {reason}")]
    Damaged {
        address: Address,
        arena: u32,
        offset: u64,
        reason: String,
    },
    #[error("unsupported {what} format version {version}")]
    UnsupportedVersion { what: &'static str, version: u32 },
    #[error("block of {bytes} bytes is over the maximum of {bytes_max}")]
    TooLarge { bytes: usize, bytes_max: usize },
    #[error("index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("block {address}: {fault}")]
    Block { address: Address, fault: BlockFault },
    /// Another device sent bytes for `address` that hash to `actual`: refused, not
    /// stored.
    #[error("block {address}: bytes fetched from another device hash to {actual}")]
    FetchedMismatch { address: Address, actual: Address },
    /// Fetching `address` from other devices failed (network, refusal); worth retrying.
    #[error("block {address}: fetch from other devices failed: {detail}")]
    Remote { address: Address, detail: String },
}

/// What is wrong with a sealed block or hash-tree node, in the order `seal::open` and
/// the tree reader check. None of these is worth retrying with the same inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockFault {
    #[error("sealed length {bytes} outside {bytes_min}..={bytes_max}")]
    SealedLength {
        bytes: u64,
        bytes_min: u64,
        bytes_max: u64,
    },
    #[error("declared length {declared} exceeds the block limit {bytes_max}")]
    DeclaredLength { declared: u64, bytes_max: u64 },
    #[error("ref is of epoch {found}, keys are of epoch {expected}")]
    Epoch { expected: u32, found: u32 },
    #[error("unknown format version {found:#04x}")]
    Version { found: u8 },
    #[error("authentication failed (wrong key or damaged block)")]
    Aead,
    #[error("bad padding")]
    Padding,
    #[error("unknown kind byte {found:#04x}")]
    UnknownKind { found: u8 },
    #[error("kind {found:?}, expected {expected}")]
    Kind {
        expected: &'static str,
        found: crate::Kind,
    },
    #[error("unknown flags {found:#04x}")]
    Flags { found: u8 },
    #[error("content does not decompress: {detail}")]
    Decompress { detail: String },
    #[error("content is {found} bytes, declared {declared}")]
    Length { declared: u64, found: u64 },
    #[error("key does not commit to the content")]
    KeyCommitment,
    #[error("malformed pointer block: {detail}")]
    Pointer { detail: String },
    #[error("pointer level {found}, expected {expected}")]
    Level { expected: u8, found: u8 },
    #[error("children add up to {sum} bytes, declared {declared}")]
    ChildLengths { declared: u64, sum: u64 },
}
