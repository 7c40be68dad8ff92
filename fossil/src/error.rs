//! fossil's one error type. The FUSE adapter maps it to an errno in one place.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long ({len} bytes, at most {max})")]
    NameTooLong { len: usize, max: usize },
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("read-only (snapshot)")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttribute,
    #[error("value too large for the buffer")]
    Range,
    #[error("no space left on device")]
    NoSpace,
    #[error("not supported")]
    Unsupported,
    #[error("stale file handle")]
    StaleHandle,
    #[error("seek offset at or past the end of the file")]
    SeekPastEnd,
    #[error("too many links")]
    TooManyLinks,
    #[error("block store: {0}")]
    Store(#[from] venti::Error),
    #[error("namespace database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The replicated log failed (its store, or it stopped).
    #[error("replicated log: {0}")]
    Agreement(String),
    /// A joined device opened a volume whose genesis it has not received yet.
    #[error("volume has no root yet: its genesis did not arrive within {waited_ms} ms")]
    NoRoot { waited_ms: u64 },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl Error {
    /// The disk (or a store's quota) is full, whichever layer noticed: the adapter
    /// answers ENOSPC.
    pub fn is_no_space(&self) -> bool {
        fn io_full(error: &std::io::Error) -> bool {
            error.raw_os_error() == Some(libc::ENOSPC)
        }
        fn db_full(error: &rusqlite::Error) -> bool {
            error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
        }
        match self {
            Error::NoSpace => true,
            Error::Io(error) | Error::Store(venti::Error::Io(error)) => io_full(error),
            Error::Db(error) | Error::Store(venti::Error::Index(error)) => db_full(error),
            _ => false,
        }
    }
}
