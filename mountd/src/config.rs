//! Where Kith keeps things on this device, and the little configuration it reads.
//!
//! Everything follows the XDG base directories, so a test (or a second user) gets a
//! fully separate Kith by pointing `XDG_DATA_HOME`, `XDG_CONFIG_HOME` and
//! `XDG_RUNTIME_DIR` elsewhere:
//!
//! ```text
//! $XDG_DATA_HOME/kith/          (~/.local/share/kith)
//!     device.id                 random device id, hex, 0600
//!     store/                    the default embedded store (fossil + venti); fossil
//!                               keeps the volume's epoch secret in store/volume.key (0600)
//!     logs/<store-id>.log       a background daemon's log
//!     run/                      control sockets when XDG_RUNTIME_DIR is unset
//! $XDG_CONFIG_HOME/kith/config.toml   (~/.config/kith/config.toml)
//! $XDG_RUNTIME_DIR/kith/<store-id>.sock   one control socket per running daemon
//! ```
//!
//! A store is named by its *store id*: a short hash of its canonical path, so every
//! command that is given the same `--store` finds the same daemon.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::membership::KeyringMode;

/// Longest accepted configuration file.
const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// Bounds of the tunables, so a typo cannot make the daemon unusable.
const FUSE_THREADS_MAX: i64 = 64;
const TTL_MS_MAX: i64 = 60_000;
const DEVICE_ID_BYTES: usize = 16;
/// Largest accepted `checkpoint_ops` (a longer log than this between checkpoints only
/// costs memory and catch-up time).
const CHECKPOINT_OPS_MAX: i64 = 100_000_000;

const DEFAULT_CONFIG: &str = "\
# Kith configuration. Every key is optional; the values shown are the defaults.
#
# store = \"~/.local/share/kith/store\"   # the embedded store `kith mount` uses
# fuse_threads = 1                       # threads serving kernel requests
# attr_ttl_ms = 60000                    # how long the kernel caches attributes
# entry_ttl_ms = 60000                   # how long the kernel caches names
# keyring = \"encrypted\"                # or \"unencrypted\" (servers, tests; flagged by status)
# listen = \"0.0.0.0:7420\"               # where the daemon listens for its devices (QUIC)
# keep = \"on-demand\"                   # or \"full\": hold every block the volume refers to
# checkpoint_ops = 10000                 # checkpoint (and truncate the log) after this many ops; 0: never
";

/// The directories of one Kith installation.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub data: PathBuf,
    pub config: PathBuf,
    pub runtime: PathBuf,
}

impl Dirs {
    /// Resolve from the environment (XDG variables, then `$HOME`).
    pub fn from_env() -> Result<Dirs> {
        let home = || {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .ok_or(Error::NoHome)
        };
        let xdg = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let data = match xdg("XDG_DATA_HOME") {
            Some(dir) => dir.join("kith"),
            None => home()?.join(".local/share/kith"),
        };
        let config = match xdg("XDG_CONFIG_HOME") {
            Some(dir) => dir.join("kith"),
            None => home()?.join(".config/kith"),
        };
        let runtime = match xdg("XDG_RUNTIME_DIR") {
            Some(dir) => dir.join("kith"),
            None => data.join("run"),
        };
        Ok(Dirs {
            data,
            config,
            runtime,
        })
    }

    pub fn default_store(&self) -> PathBuf {
        self.data.join("store")
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }

    pub fn socket_for(&self, store_id: &str) -> PathBuf {
        self.runtime.join(format!("{store_id}.sock"))
    }

    pub fn log_for(&self, store_id: &str) -> PathBuf {
        self.data.join("logs").join(format!("{store_id}.log"))
    }

    /// First-run setup: directories, device identity, a commented config. (The volume's
    /// secret is created by fossil inside the store, next to what it protects.)
    /// Idempotent; never overwrites an existing identity.
    pub fn ensure_initialized(&self) -> Result<()> {
        for dir in [&self.data, &self.config, &self.runtime] {
            create_private_dir(dir)?;
        }
        create_private_dir(&self.data.join("logs"))?;
        write_new_secret_file(&self.data.join("device.id"), || {
            let mut hex = random_bytes(DEVICE_ID_BYTES)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            hex.push('\n');
            Ok(hex.into_bytes())
        })?;
        let config_file = self.config_file();
        if !config_file.exists() {
            write_atomically(&config_file, DEFAULT_CONFIG.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// The device id written at first run.
    pub fn device_id(&self) -> Result<String> {
        let path = self.data.join("device.id");
        let text = fs::read_to_string(&path).map_err(|source| Error::Path {
            what: "read the device id",
            path: path.clone(),
            source,
        })?;
        Ok(text.trim().to_owned())
    }
}

/// The settings read from `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub store: Option<PathBuf>,
    pub fuse_threads: usize,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// How a new keyring is stored (`KITH_KEYRING` overrides); `None`: encrypted.
    pub keyring: Option<KeyringMode>,
    /// Where the daemon listens for its devices; `None`: the daemon's default.
    pub listen: Option<SocketAddr>,
    /// What this device keeps of the volume's content.
    pub keep: Keep,
    /// Checkpoint the volume and truncate its log after this many ops (0: never);
    /// `None`: fossil's default.
    pub checkpoint_ops: Option<u64>,
}

/// What a device keeps of its volume's content (`keep` in the configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keep {
    /// Blocks other devices wrote are fetched when read and cached within a byte
    /// budget (evicted least-hit first).
    #[default]
    OnDemand,
    /// A full copy: a background task fetches every block the namespace refers to,
    /// and fetched blocks are pinned (never evicted).
    Full,
}

impl Keep {
    pub fn parse(text: &str) -> Option<Keep> {
        match text {
            "on-demand" => Some(Keep::OnDemand),
            "full" => Some(Keep::Full),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Keep::OnDemand => "on-demand",
            Keep::Full => "full",
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            store: None,
            // One thread serves small-file work fastest: the volume serialises
            // changes behind one lock anyway, and a second thread only adds lock
            // hand-offs between a request and the background release of the
            // previous file (measured: creates ~2x faster than with 2 or 4 threads;
            // cold sequential reads unchanged, they fan out inside the volume).
            fuse_threads: 1,
            // Long: the kernel is told of every change it did not make itself (its
            // own requests update its caches; the daemon invalidates what other
            // devices changed, and that queue never drops, see `invalidate`), so the
            // TTL only spares it revalidating names and attributes (a stat of a path
            // was one request per component, every second).
            attr_ttl: Duration::from_secs(60),
            entry_ttl: Duration::from_secs(60),
            keyring: None,
            listen: None,
            keep: Keep::OnDemand,
            checkpoint_ops: None,
        }
    }
}

impl Config {
    /// Read the file if it exists; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(Error::Path {
                    what: "read the configuration",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut text = String::new();
        file.take(CONFIG_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|source| Error::Path {
                what: "read the configuration",
                path: path.to_owned(),
                source,
            })?;
        if text.len() as u64 > CONFIG_BYTES_MAX {
            return Err(Error::Config {
                path: path.to_owned(),
                detail: format!("larger than {CONFIG_BYTES_MAX} bytes"),
            });
        }
        Config::parse(&text).map_err(|detail| Error::Config {
            path: path.to_owned(),
            detail,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
        let mut config = Config::default();
        for (key, item) in doc.iter() {
            match key {
                "store" => {
                    let value = item
                        .as_str()
                        .ok_or_else(|| "`store` must be a string".to_owned())?;
                    config.store = Some(expand_home(value));
                }
                "fuse_threads" => {
                    config.fuse_threads = bounded_int(item, key, 1, FUSE_THREADS_MAX)? as usize;
                }
                "attr_ttl_ms" => {
                    config.attr_ttl =
                        Duration::from_millis(bounded_int(item, key, 0, TTL_MS_MAX)? as u64);
                }
                "entry_ttl_ms" => {
                    config.entry_ttl =
                        Duration::from_millis(bounded_int(item, key, 0, TTL_MS_MAX)? as u64);
                }
                "keyring" => {
                    let value = item.as_str().and_then(KeyringMode::parse).ok_or_else(|| {
                        "`keyring` must be \"encrypted\" or \"unencrypted\"".to_owned()
                    })?;
                    config.keyring = Some(value);
                }
                "listen" => {
                    let value = item
                        .as_str()
                        .and_then(|text| text.parse::<SocketAddr>().ok())
                        .ok_or_else(|| "`listen` must be \"ADDRESS:PORT\"".to_owned())?;
                    config.listen = Some(value);
                }
                "keep" => {
                    config.keep = item
                        .as_str()
                        .and_then(Keep::parse)
                        .ok_or_else(|| "`keep` must be \"on-demand\" or \"full\"".to_owned())?;
                }
                "checkpoint_ops" => {
                    let ops = bounded_int(item, key, 0, CHECKPOINT_OPS_MAX)?;
                    config.checkpoint_ops = u64::try_from(ops).ok();
                }
                other => return Err(format!("unknown key `{other}`")),
            }
        }
        Ok(config)
    }
}

/// Sets `keep` in the configuration file at `path` (created with the commented
/// defaults if missing), keeping every other line and comment as it is. The file is
/// checked to parse afterwards, so a broken edit is never written.
pub fn set_keep(path: &Path, keep: Keep) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => DEFAULT_CONFIG.to_owned(),
        Err(source) => {
            return Err(Error::Path {
                what: "read the configuration",
                path: path.to_owned(),
                source,
            });
        }
    };
    let config_error = |detail: String| Error::Config {
        path: path.to_owned(),
        detail,
    };
    // Refuse to rewrite a file that does not parse today: the user should see why.
    Config::parse(&text).map_err(config_error)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| config_error(format!("{e}")))?;
    doc["keep"] = toml_edit::value(keep.as_str());
    let updated = doc.to_string();
    Config::parse(&updated).map_err(config_error)?;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_atomically(path, updated.as_bytes(), 0o644)
}

fn bounded_int(
    item: &toml_edit::Item,
    key: &str,
    min: i64,
    max: i64,
) -> std::result::Result<i64, String> {
    match item.as_integer() {
        Some(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(format!("`{key}` must be an integer from {min} to {max}")),
    }
}

fn expand_home(value: &str) -> PathBuf {
    match (value.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(value),
    }
}

/// The store id of a store directory: 16 hex digits of BLAKE3 over its canonical path.
pub fn store_id(store: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = blake3::hash(store.as_os_str().as_bytes());
    hash.to_hex()[..16].to_owned()
}

/// An absolute, normalized form of `path` that exists or can be created: the parent is
/// canonicalized (following symlinks), the last component kept as given.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|source| Error::Path {
                what: "find the current directory",
                path: path.to_owned(),
                source,
            })?
            .join(path)
    };
    if let Ok(canonical) = joined.canonicalize() {
        return Ok(canonical);
    }
    // Not resolvable as a whole (missing, or a dead mount answering ENOTCONN).
    match (joined.parent(), joined.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => Ok(parent.join(name)),
            Err(_) => Ok(joined),
        },
        _ => Ok(joined),
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Path {
            what: "create the directory",
            path: dir.to_owned(),
            source,
        })
}

/// Write a 0600 file once: an existing file is kept as it is.
fn write_new_secret_file(path: &Path, contents: impl FnOnce() -> Result<Vec<u8>>) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_atomically(path, &contents()?, 0o600)
}

/// Write to a temporary sibling, fsync, rename: a crash leaves the old file or the new.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io_error = |source| Error::Path {
        what: "write",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&tmp, path).map_err(io_error)?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = fs::File::open(parent)
    {
        dir.sync_all().map_err(io_error)?;
    }
    Ok(())
}

fn random_bytes(count: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; count];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| Error::Path {
            what: "read random bytes from",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// XDG-style directories under `root` (unit tests of this crate share it).
    pub(crate) fn dirs_in(root: &Path) -> Dirs {
        Dirs {
            data: root.join("data/kith"),
            config: root.join("config/kith"),
            runtime: root.join("run/kith"),
        }
    }

    #[test]
    fn first_run_creates_a_private_identity_once() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let dirs = dirs_in(root.path());
        dirs.ensure_initialized()?;
        let id = dirs.device_id()?;
        assert_eq!(id.len(), DEVICE_ID_BYTES * 2);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            fs::metadata(dirs.data.join("device.id"))?
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A second run keeps the identity.
        dirs.ensure_initialized()?;
        assert_eq!(dirs.device_id()?, id);
        // The written default configuration parses to the defaults.
        assert_eq!(Config::load(&dirs.config_file())?, Config::default());
        Ok(())
    }

    #[test]
    fn config_parses_known_keys_and_rejects_the_rest() {
        let config = Config::parse(
            "store = \"/srv/kith\"\nfuse_threads = 2\nattr_ttl_ms = 0\nentry_ttl_ms = 250\n",
        );
        assert_eq!(
            config,
            Ok(Config {
                store: Some(PathBuf::from("/srv/kith")),
                fuse_threads: 2,
                attr_ttl: Duration::ZERO,
                entry_ttl: Duration::from_millis(250),
                keyring: None,
                listen: None,
                keep: Keep::OnDemand,
                checkpoint_ops: None,
            })
        );
        assert_eq!(
            Config::parse("checkpoint_ops = 50").map(|c| c.checkpoint_ops),
            Ok(Some(50))
        );
        assert!(Config::parse("checkpoint_ops = -1").is_err());
        assert_eq!(
            Config::parse("keep = \"full\"").map(|c| c.keep),
            Ok(Keep::Full)
        );
        assert_eq!(
            Config::parse("keep = \"on-demand\"").map(|c| c.keep),
            Ok(Keep::OnDemand)
        );
        assert!(Config::parse("keep = \"all\"").is_err_and(|e| e.contains("keep")));
        assert!(Config::parse("keep = 1").is_err());
        let config = Config::parse("keyring = \"unencrypted\"\nlisten = \"127.0.0.1:7421\"\n");
        assert_eq!(
            config.map(|c| (c.keyring, c.listen)),
            Ok((
                Some(KeyringMode::Unencrypted),
                Some(SocketAddr::from(([127, 0, 0, 1], 7421)))
            ))
        );
        assert!(Config::parse("keyring = \"maybe\"").is_err());
        assert!(Config::parse("listen = \"nowhere\"").is_err());
        assert!(Config::parse("colour = 1").is_err_and(|e| e.contains("colour")));
        assert!(Config::parse("fuse_threads = 0").is_err());
        assert!(Config::parse("fuse_threads = \"4\"").is_err());
        assert!(Config::parse("attr_ttl_ms = 999999").is_err());
        assert!(Config::parse("store = [").is_err());
    }

    #[test]
    fn set_keep_writes_the_setting_and_keeps_the_rest() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().join("config/kith/config.toml");
        // No file yet: the commented defaults plus the setting.
        set_keep(&path, Keep::Full)?;
        let text = fs::read_to_string(&path)?;
        assert!(text.contains("# fuse_threads = 1"), "{text}");
        assert_eq!(Config::load(&path)?.keep, Keep::Full);
        // An existing file keeps its other settings and comments.
        fs::write(&path, "# mine\ncheckpoint_ops = 50\nkeep = \"on-demand\"\n")?;
        set_keep(&path, Keep::Full)?;
        let text = fs::read_to_string(&path)?;
        assert!(text.starts_with("# mine\n"), "{text}");
        let config = Config::load(&path)?;
        assert_eq!((config.keep, config.checkpoint_ops), (Keep::Full, Some(50)));
        // A file that does not parse is left alone.
        fs::write(&path, "colour = 1\n")?;
        assert!(set_keep(&path, Keep::Full).is_err());
        assert_eq!(fs::read_to_string(&path)?, "colour = 1\n");
        Ok(())
    }

    #[test]
    fn store_ids_are_stable_and_distinct() {
        let a = store_id(Path::new("/a/store"));
        assert_eq!(a, store_id(Path::new("/a/store")));
        assert_ne!(a, store_id(Path::new("/b/store")));
        assert_eq!(a.len(), 16);
    }
}
