//! `kith`: the command line, the daemon and the FUSE adapter, in one binary.
//!
//! ```text
//! kith mount DIR [--listen A:P]   start a daemon serving the store at DIR
//! kith unmount DIR                flush, sync and unmount (or detach a dead mount)
//! kith status [--json]            what each running daemon serves, how sync stands
//! kith demo [--dir D]             three devices of one user on loopback, mounted
//! kith snapshot [NAME]            record a read-only snapshot under .snapshots/NAME
//! kith verify                     read back every file and directory of the store
//! kith device add                 a one-time code for adding a device (from the daemon)
//! kith device join CODE [--full-copy]   make a new store a device of the code's user
//!                                 (--full-copy: `keep = "full"` in config.toml)
//! kith device list                the user's devices, their roles, who is online
//! kith device remove WHO          revoke a device (name or fingerprint)
//! kith witness add                a one-time code for adding a witness (from the daemon)
//! kith witness join CODE          make a new store a witness of the code's user
//! kith witness run [--listen A:P] start the witness daemon (no mount, no volume key)
//! kith witness stop               stop it
//! ```
//!
//! Every command takes `--store PATH` (default: the `store` of config.toml, else
//! `$XDG_DATA_HOME/kith/store`). The first command creates the device identity and
//! the store; nothing else needs setting up.
//!
//! Modules: [`config`] (XDG paths, identity, config.toml), [`daemon`] (daemon life
//! cycle, store lock, shutdown), [`control`] (the control socket protocol),
//! [`fuse_fs`] (kernel requests → `fossil::Volume`, the errno mapping), [`mounts`]
//! (mount point checks, the mount table), [`verify`] (the read-back walk),
//! [`membership`] (keyring, user chain, the volume's group), [`join`] (pairing),
//! [`sync`] (the network side: QUIC, the replica, block exchange, announcements),
//! [`agreement`] (fossil's log seam over the replica), [`invalidate`] (remote changes
//! → kernel caches), [`status`] (`kith status` of a replicated volume), [`demo`],
//! [`witness`] (the witness daemon).
//!
//! Failures print one line, `kith: <what went wrong>`, and exit with status 1.

mod agreement;
mod config;
mod control;
mod daemon;
mod demo;
mod error;
mod fuse_fs;
mod gc;
mod invalidate;
mod join;
mod membership;
mod mounts;
mod status;
mod sync;
mod verify;
mod witness;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Dirs};
use crate::control::Request;
use crate::error::{Error, Result};

#[derive(Debug, Parser)]
#[command(
    name = "kith",
    version,
    about = "Kith: an end-to-end encrypted file system for your devices and friends"
)]
struct Cli {
    /// The store to use (default: `store` in config.toml, else $XDG_DATA_HOME/kith/store).
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount the store at DIR (starts a background daemon).
    Mount {
        /// An existing, empty directory.
        dir: PathBuf,
        /// Stay in the foreground and log to stderr; Ctrl-C unmounts.
        #[arg(long)]
        foreground: bool,
        /// Internal: report "ready"/"error …" on stdout for the parent `kith mount`.
        #[arg(long, hide = true)]
        notify_stdout: bool,
        /// Where to listen for this user's other devices (QUIC; default: `listen` in
        /// config.toml, else 0.0.0.0:7420; port 0 picks a free one).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Flush, sync and unmount DIR; detach it if its daemon died.
    Unmount { dir: PathBuf },
    /// Show what the running daemons serve.
    Status {
        /// One JSON object describing the volume's sync (needs a replicated store).
        #[arg(long)]
        json: bool,
    },
    /// Three devices of one user on this machine, each with a mount, to try sync.
    Demo {
        /// Where to put the three stores and mounts (default: a new temporary dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Record a read-only snapshot of the volume (default name: the UTC time).
    Snapshot { name: Option<String> },
    /// Read back every file, directory and link of the store; exit 1 on any problem.
    Verify,
    /// Free the disk space of deleted files now (the running daemon also does it hourly).
    Gc,
    /// This user's devices: add one, join as one, list them.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// A witness: votes on the volume's sealed log so two devices keep writing while
    /// one is off; it never holds the volume key or any content.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Ask the running daemon for a one-time code that adds a witness (line 1).
    Add,
    /// Make this new store a witness of the code's user and home volume.
    Join {
        /// The code `kith witness add` printed on a device.
        code: String,
        /// Where the witness will listen, told to the devices.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the witness daemon for this store (in the background unless --foreground).
    Run {
        /// Stay in the foreground and log to stderr; Ctrl-C stops it.
        #[arg(long)]
        foreground: bool,
        /// Internal: report "ready"/"error …" on stdout for the parent.
        #[arg(long, hide = true)]
        notify_stdout: bool,
        /// Where to listen for the devices (QUIC; default: `listen` in config.toml,
        /// else 0.0.0.0:7420; port 0 picks a free one).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Stop this store's witness daemon.
    Stop,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Ask the running daemon for a one-time pairing code (line 1 of the output).
    Add,
    /// Make this new store a device of the code's user and of its home volume.
    Join {
        /// The code `kith device add` printed on the other device.
        code: String,
        /// Where this device's daemon will listen, told to the other devices.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Keep a full copy of the volume's content on this device: sets
        /// `keep = "full"` in config.toml (the default fetches content when read).
        #[arg(long)]
        full_copy: bool,
    },
    /// List the user's devices: role (device or witness) and, from the running
    /// daemon, whether each is online and when it was last heard from.
    List,
    /// Remove a device for good (from the device that created the user; running daemon).
    Remove {
        /// The device's name or fingerprint (see `kith device list`).
        who: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(
        cli.command,
        Command::Mount {
            foreground: true,
            ..
        } | Command::Witness {
            command: WitnessCommand::Run {
                foreground: true,
                ..
            }
        }
    );
    init_logging(is_daemon);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kith: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let dirs = Dirs::from_env()?;
    let config = Config::load(&dirs.config_file())?;
    let store_given = cli.store.is_some();
    let store = config::absolute(
        &cli.store
            .or_else(|| config.store.clone())
            .unwrap_or_else(|| dirs.default_store()),
    )?;
    match cli.command {
        Command::Mount {
            dir,
            foreground,
            notify_stdout,
            listen,
        } => {
            let listen = listen.or(config.listen);
            let plan = daemon::MountPlan {
                mount_point: config::absolute(&dir)?,
                dirs,
                config,
                store,
                listen,
            };
            if foreground {
                daemon::run_foreground(&plan, notify_stdout)
            } else {
                let message = daemon::spawn_background(&plan)?;
                println!("kith: {message}");
                Ok(())
            }
        }
        Command::Unmount { dir } => unmount(&dirs, &config::absolute(&dir)?),
        Command::Status { json } => status(&dirs, store_given.then_some(store.as_path()), json),
        Command::Demo { dir } => demo::run(dir),
        Command::Snapshot { name } => {
            let name = name.unwrap_or_else(utc_timestamp);
            daemon::validate_snapshot_name(&name)?;
            let socket = dirs.socket_for(&config::store_id(&store));
            if control::is_alive(&socket) {
                print!("{}", control::call(&socket, &Request::Snapshot(name))?);
            } else {
                dirs.ensure_initialized()?;
                std::fs::create_dir_all(&store).map_err(|source| Error::Path {
                    what: "create the store",
                    path: store.clone(),
                    source,
                })?;
                let _lock = daemon::lock_store(&store, None)?;
                let opened = daemon::CommandVolume::open(&store, &dirs, &config)?;
                let volume = opened.volume()?;
                volume.snapshot(&name)?;
                volume.sync_all()?;
                println!("snapshot {name} recorded (under .snapshots/{name})");
            }
            Ok(())
        }
        Command::Gc => {
            let socket = dirs.socket_for(&config::store_id(&store));
            if !control::is_alive(&socket) {
                return Err(Error::NoDaemon { store });
            }
            print!("{}", control::call(&socket, &Request::Gc)?);
            Ok(())
        }
        Command::Device { command } => device(&dirs, &config, &store, command),
        Command::Witness { command } => witness_command(dirs, config, store, command),
        Command::Verify => {
            let socket = dirs.socket_for(&config::store_id(&store));
            let rendered = if control::is_alive(&socket) {
                control::call(&socket, &Request::Verify)?
            } else {
                if !store.exists() {
                    return Err(Error::NoStore { store });
                }
                let _lock = daemon::lock_store(&store, None)?;
                let opened = daemon::CommandVolume::open(&store, &dirs, &config)?;
                verify::verify(opened.volume()?).render()
            };
            print!("{rendered}");
            match verify::problems_in(&rendered) {
                Some(0) => Ok(()),
                Some(count) => Err(Error::VerifyFailed { count }),
                None => Err(Error::Remote("verify gave no result".into())),
            }
        }
    }
}

/// `kith device …`.
fn device(dirs: &Dirs, config: &Config, store: &Path, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Add => {
            let socket = dirs.socket_for(&config::store_id(store));
            if !control::is_alive(&socket) {
                return Err(Error::NoDaemon {
                    store: store.to_owned(),
                });
            }
            print!("{}", control::call(&socket, &Request::DeviceAdd)?);
            Ok(())
        }
        DeviceCommand::Join {
            code,
            listen,
            full_copy,
        } => {
            let socket = dirs.socket_for(&config::store_id(store));
            if control::is_alive(&socket) {
                return Err(Error::Join(format!(
                    "a daemon already serves the store {}",
                    store.display()
                )));
            }
            let summary = join::join(store, config, &code, listen, net::pairing::JoinRole::Device)?;
            println!("kith: {summary}");
            if full_copy {
                let path = dirs.config_file();
                config::set_keep(&path, config::Keep::Full)?;
                println!(
                    "kith: this device keeps a full copy (keep = \"full\" in {}); \
                     `kith status` shows the fetch",
                    path.display()
                );
            }
            Ok(())
        }
        DeviceCommand::Remove { who } => {
            let socket = dirs.socket_for(&config::store_id(store));
            if !control::is_alive(&socket) {
                return Err(Error::NoDaemon {
                    store: store.to_owned(),
                });
            }
            print!("{}", control::call(&socket, &Request::DeviceRemove(who))?);
            Ok(())
        }
        DeviceCommand::List => {
            if !store.join(membership::MEMBERSHIP_FILE).exists() {
                return Err(Error::NoStore {
                    store: store.to_owned(),
                });
            }
            let socket = dirs.socket_for(&config::store_id(store));
            if control::is_alive(&socket) {
                print!("{}", control::call(&socket, &Request::DeviceList)?);
            } else {
                print!("{}", membership::list_devices(store)?);
                println!(
                    "(no daemon serves this store: roles and who is online show once \
                     `kith mount` or `kith witness run` runs)"
                );
            }
            Ok(())
        }
    }
}

/// `kith witness …`.
fn witness_command(
    dirs: Dirs,
    config: Config,
    store: PathBuf,
    command: WitnessCommand,
) -> Result<()> {
    let socket = dirs.socket_for(&config::store_id(&store));
    match command {
        WitnessCommand::Add => {
            if !control::is_alive(&socket) {
                return Err(Error::NoDaemon { store });
            }
            print!("{}", control::call(&socket, &Request::WitnessAdd)?);
            Ok(())
        }
        WitnessCommand::Join { code, listen } => {
            if control::is_alive(&socket) {
                return Err(Error::Join(format!(
                    "a daemon already serves the store {}",
                    store.display()
                )));
            }
            let summary = witness::join(&store, &config, &code, listen)?;
            println!("kith: {summary}");
            println!("kith: start it with: kith witness run");
            Ok(())
        }
        WitnessCommand::Run {
            foreground,
            notify_stdout,
            listen,
        } => {
            let plan = witness::WitnessPlan {
                dirs,
                config,
                store,
                listen,
            };
            if foreground {
                witness::run_foreground(&plan, notify_stdout)
            } else {
                println!("kith: {}", witness::spawn_background(&plan)?);
                Ok(())
            }
        }
        WitnessCommand::Stop => {
            print!("kith: {}", witness::stop(&dirs, &store)?);
            Ok(())
        }
    }
}

/// The control sockets of all daemons that answer (stale ones are skipped).
fn live_sockets(dirs: &Dirs) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(&dirs.runtime) else {
        return Vec::new();
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .filter(|path| control::is_alive(path))
        .collect();
    sockets.sort();
    sockets
}

fn unmount(dirs: &Dirs, dir: &Path) -> Result<()> {
    for socket in live_sockets(dirs) {
        let Ok(served) = control::call(&socket, &Request::Mountpoint) else {
            continue;
        };
        if Path::new(served.trim_end()) == dir {
            print!("kith: {}", control::call(&socket, &Request::Unmount)?);
            return Ok(());
        }
    }
    // No daemon reachable through this runtime directory serves it.
    match mounts::mounted_at(dir) {
        Some(entry) if entry.is_kith() && daemon_answers(dir) => {
            // A live daemon started with another XDG_RUNTIME_DIR (another login, sudo):
            // unmount it as the kernel would; the daemon sees its session end and stops
            // cleanly. Aborting it would fail every program using the mount.
            match mounts::unmount(dir, false) {
                Ok(()) => {
                    println!(
                        "kith: unmounted {} (its daemon runs outside {}; it stops by itself)",
                        dir.display(),
                        dirs.runtime.display()
                    );
                    Ok(())
                }
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => Err(Error::MountPoint {
                    path: dir.to_owned(),
                    problem: "busy (files open or a shell in it)".to_owned(),
                }),
                Err(source) => Err(Error::Path {
                    what: "unmount",
                    path: dir.to_owned(),
                    source,
                }),
            }
        }
        // A mount left behind by a daemon that died, or one that is wedged while dying.
        // Aborting the connection first frees programs blocked on it and lets such a
        // daemon finish; the detach then removes the mount.
        Some(entry) if entry.is_kith() => {
            let aborted = mounts::abort_connection(dir);
            detach(dir)?;
            match aborted {
                Ok(()) => println!(
                    "kith: detached {} (its daemon was no longer running; \
                     its FUSE connection was aborted)",
                    dir.display()
                ),
                Err(error) => println!(
                    "kith: detached {} (its daemon was no longer running; \
                     aborting its FUSE connection failed: {error})",
                    dir.display()
                ),
            }
            Ok(())
        }
        _ => Err(Error::NotAKithMount {
            path: dir.to_owned(),
        }),
    }
}

/// How long a daemon has to answer [`daemon_answers`]'s probe.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a daemon answers on the FUSE connection mounted at `dir`. `statfs` always
/// reaches the daemon (the kernel caches no answer). A dead daemon's connection fails
/// it at once; a wedged one leaves it hanging, and the probe thread stays blocked
/// until the caller aborts the connection or exits.
fn daemon_answers(dir: &Path) -> bool {
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let path = dir.to_owned();
    let probe = std::thread::Builder::new()
        .name("kith-probe".into())
        .spawn(move || {
            let _ = answer_tx.send(nix::sys::statfs::statfs(&path).is_ok());
        });
    probe.is_ok() && answer_rx.recv_timeout(PROBE_TIMEOUT).unwrap_or(false)
}

fn detach(dir: &Path) -> Result<()> {
    mounts::unmount(dir, true).map_err(|source| Error::Path {
        what: "detach",
        path: dir.to_owned(),
        source,
    })
}

fn status(dirs: &Dirs, store: Option<&Path>, json: bool) -> Result<()> {
    let sockets = match store {
        Some(store) => {
            let socket = dirs.socket_for(&config::store_id(store));
            if !control::is_alive(&socket) {
                println!("store {}: not mounted", store.display());
                return Ok(());
            }
            vec![socket]
        }
        None => live_sockets(dirs),
    };
    if json {
        // One object: the store's daemon, or the only one running.
        let [socket] = sockets.as_slice() else {
            return Err(Error::Remote(format!(
                "{} daemons are running: name one with --store",
                sockets.len()
            )));
        };
        print!("{}", control::call(socket, &Request::StatusJson)?);
        return Ok(());
    }
    if sockets.is_empty() {
        println!("no kith daemon is running");
    }
    for (i, socket) in sockets.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", control::call(socket, &Request::Status)?);
    }
    Ok(())
}

/// `YYYY-MM-DDTHHMMSSZ` in UTC (no colons: the name is a path component).
fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn init_logging(is_daemon: bool) {
    let default = if is_daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
    }

    #[test]
    fn cli_parses_every_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&["kith", "mount", "/m", "--foreground"]),
            Ok(Command::Mount {
                foreground: true,
                ..
            })
        ));
        assert!(matches!(
            parse(&["kith", "unmount", "/m"]),
            Ok(Command::Unmount { .. })
        ));
        assert!(matches!(
            parse(&["kith", "status"]),
            Ok(Command::Status { json: false })
        ));
        assert!(matches!(
            parse(&["kith", "status", "--json"]),
            Ok(Command::Status { json: true })
        ));
        assert!(matches!(
            parse(&["kith", "mount", "/m", "--listen", "127.0.0.1:0"]),
            Ok(Command::Mount {
                listen: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&["kith", "demo", "--dir", "/tmp/d"]),
            Ok(Command::Demo { dir: Some(_) })
        ));
        assert!(matches!(
            parse(&["kith", "snapshot"]),
            Ok(Command::Snapshot { name: None })
        ));
        assert!(matches!(parse(&["kith", "verify"]), Ok(Command::Verify)));
        assert!(matches!(
            parse(&["kith", "device", "add"]),
            Ok(Command::Device {
                command: DeviceCommand::Add
            })
        ));
        assert!(matches!(
            parse(&[
                "kith",
                "device",
                "join",
                "ABCDE-FGHIJ",
                "--listen",
                "127.0.0.1:0"
            ]),
            Ok(Command::Device {
                command: DeviceCommand::Join {
                    listen: Some(_),
                    full_copy: false,
                    ..
                }
            })
        ));
        assert!(matches!(
            parse(&["kith", "device", "join", "ABCDE", "--full-copy"]),
            Ok(Command::Device {
                command: DeviceCommand::Join {
                    full_copy: true,
                    ..
                }
            })
        ));
        assert!(matches!(
            parse(&["kith", "device", "list"]),
            Ok(Command::Device {
                command: DeviceCommand::List
            })
        ));
        assert!(parse(&["kith", "device", "join"]).is_err());
        assert!(matches!(
            parse(&["kith", "device", "remove", "old phone"]),
            Ok(Command::Device {
                command: DeviceCommand::Remove { .. }
            })
        ));
        assert!(matches!(
            parse(&[
                "kith",
                "witness",
                "join",
                "ABCDE",
                "--listen",
                "127.0.0.1:7421"
            ]),
            Ok(Command::Witness {
                command: WitnessCommand::Join {
                    listen: Some(_),
                    ..
                }
            })
        ));
        assert!(matches!(
            parse(&["kith", "witness", "run", "--foreground"]),
            Ok(Command::Witness {
                command: WitnessCommand::Run {
                    foreground: true,
                    listen: None,
                    ..
                }
            })
        ));
        assert!(matches!(
            parse(&["kith", "witness", "add"]),
            Ok(Command::Witness {
                command: WitnessCommand::Add
            })
        ));
        assert!(matches!(
            parse(&["kith", "witness", "stop"]),
            Ok(Command::Witness {
                command: WitnessCommand::Stop
            })
        ));
        assert!(parse(&["kith", "witness", "join"]).is_err());
        assert!(parse(&["kith", "mount"]).is_err());
        let cli = Cli::try_parse_from(["kith", "status", "--store", "/s"]);
        assert!(cli.is_ok_and(|c| c.store == Some(PathBuf::from("/s"))));
    }
}
