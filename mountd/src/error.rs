//! mountd's one error type. Every variant reads as a one-line message for the
//! terminal: `kith: <message>`; no variant needs a backtrace to be understood.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot find the home directory (set HOME or the XDG_* variables)")]
    NoHome,
    #[error("cannot {what} {}: {source}", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad configuration in {}: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    #[error("mount point {}: {problem}", path.display())]
    MountPoint { path: PathBuf, problem: String },
    #[error("the store {} is already in use by another kith daemon{holder}", store.display())]
    StoreBusy { store: PathBuf, holder: String },
    #[error("there is no store at {} yet (`kith mount` creates it)", store.display())]
    NoStore { store: PathBuf },
    #[error("{} is not mounted by kith", path.display())]
    NotAKithMount { path: PathBuf },
    #[error("control socket {}: {detail}", socket.display())]
    Control { socket: PathBuf, detail: String },
    #[error("the daemon answered: {0}")]
    Remote(String),
    #[error("the volume: {0}")]
    Volume(#[from] fossil::Error),
    #[error("network: {0}")]
    Network(#[from] net::Error),
    #[error("block store: {0}")]
    Store(#[from] venti::Error),
    /// The store's keys or membership (keyring, user chain, volume key) are unusable.
    #[error("the store {}: {problem}", store.display())]
    Membership { store: PathBuf, problem: String },
    /// `kith device join` failed; the message says why and what was tried.
    #[error("joining failed: {0}")]
    Join(String),
    #[error("no daemon serves the store {} (run `kith mount DIR` first)", store.display())]
    NoDaemon { store: PathBuf },
    #[error("FUSE: {0}")]
    Fuse(String),
    #[error("invalid snapshot name {name:?}: {reason}")]
    SnapshotName { name: String, reason: &'static str },
    #[error("the daemon did not start: {0}")]
    Startup(String),
    /// A failure the daemon already phrased for the terminal.
    #[error("{0}")]
    Reported(String),
    #[error("verify found {count} problem(s)")]
    VerifyFailed { count: usize },
}
