//! The daemon: one process per mounted store.
//!
//! Life of a daemon:
//!
//! 1. `kith mount DIR` (background mode) re-executes itself as
//!    `kith mount --foreground --notify-stdout DIR` in its own process group, with
//!    stdin closed, stderr appended to the store's log and stdout a pipe. It then
//!    waits for the child's single status line — `ready` or `error MESSAGE` — and
//!    reports it on the terminal. Re-exec rather than fork: the daemon starts threads
//!    (fuser, control socket), and forking a threaded process is unsound.
//!    Opening can take long (a device added later installs a checkpoint and replays
//!    the log): while it waits, `kith mount` asks the daemon's control socket how far
//!    it is every [`STARTUP_POLL`], prints the catch-up lines when they change (at
//!    most once a second), and waits for as long as the catch-up moves
//!    ([`StartupWatch`]). Once nothing has
//!    moved for [`STARTUP_STALL_TIMEOUT`] it gives up and says so, and leaves the
//!    daemon running: stalled mostly means waiting for other devices (no quorum, a
//!    checkpoint's blocks held only by devices that are off), which the daemon gets
//!    over on its own, keeping what it caught up so far; and a daemon that has not
//!    mounted yet acts on SIGTERM only once it has (its signals wait, blocked, for the
//!    signal thread), so stopping it now would take a SIGKILL.
//! 2. The foreground daemon blocks SIGINT/SIGTERM/SIGHUP before any thread exists (so
//!    every thread inherits the mask and one thread receives them with `sigwait`),
//!    takes an exclusive `flock` on the store (a second daemon is refused, naming the
//!    holder), checks the mount point, binds the control socket (from here on
//!    `kith status` answers, saying the daemon is starting), then brings the volume up
//!    in this order: membership (created on first run: user, device, home volume) →
//!    network ([`crate::sync`]: QUIC endpoint, the volume's replica, block exchange;
//!    status now shows the log and a catch-up's progress) → volume (replicated on the
//!    replica, its venti store fetching missing blocks from the other devices; a
//!    device added later installs a checkpoint and replays the log here) → FUSE mount,
//!    and only then says `ready`.
//!    A store from before sync (a namespace, no membership) runs single-device on its
//!    local log, without the network.
//! 3. It runs until a signal, `kith unmount`, or an external `umount`. Shutdown is
//!    always: unmount (lazily if busy and a signal asked), let the FUSE threads end,
//!    `Volume::sync_all` (its wait for commits is bounded), close the volume, stop the
//!    replica and the endpoint, remove the socket, drop the lock. A `kill -9` skips all
//!    of that, which the volume must survive (fsync'd data is durable, queued ops are
//!    in the replica's store) — and the next `kith unmount DIR` detaches the dead mount.
//!
//! Remote changes reach the kernel through [`crate::invalidate`], on a thread of its
//! own.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use fossil::Volume;
use fossil::venti_content::VentiContent;
use fossil::volume::{ApplyProgress, ApplyProgressHook, VolumeOptions};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;

use crate::agreement::ReplicaAgreement;
use crate::config::{self, Config, Dirs};
use crate::control::{self, Handler, Request};
use crate::error::{Error, Result};
use crate::fuse_fs::{CacheTtls, KithFs};
use crate::gc;
use crate::invalidate::Invalidations;
use crate::membership;
use crate::mounts;
use crate::status::{self, KeyEpochs, LogProgress, ReplicaView, StartupProgress, SyncReport};
use crate::sync::{Home, HomeRole};
use crate::verify;

/// Where a daemon listens for its devices unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 7420);
/// `kith mount` waits for a starting daemon as long as its catch-up moves, and gives
/// up once nothing has moved for this long (see [`StartupWatch`]).
const STARTUP_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `kith mount` asks a starting daemon how far it is.
const STARTUP_POLL: Duration = Duration::from_millis(250);
/// It shows changed progress lines at most this often.
const STARTUP_PRINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one such question may take (a daemon that does not answer has not moved).
const STARTUP_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// After a signal, how long the FUSE threads get to finish once unmounted.
const SESSION_END_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping daemon waits for control answers to be written.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Name of the lock file inside the store directory.
const LOCK_FILE: &str = "kith-daemon.lock";
/// Holder description read back from a lock file, at most this long.
const LOCK_INFO_BYTES_MAX: u64 = 4096;

/// Everything a mount needs to know, resolved.
#[derive(Clone, Debug)]
pub struct MountPlan {
    pub dirs: Dirs,
    pub config: Config,
    pub mount_point: PathBuf,
    pub store: PathBuf,
    /// Where the daemon listens for its devices (QUIC); `None`: [`DEFAULT_LISTEN`],
    /// or a free port when another daemon on this machine holds it.
    pub listen: Option<SocketAddr>,
}

impl MountPlan {
    fn store_id(&self) -> String {
        config::store_id(&self.store)
    }
}

/// `kith mount` without `--foreground`: start a daemon and report how it went.
pub fn spawn_background(plan: &MountPlan) -> Result<String> {
    mounts::check_mount_point(&plan.mount_point)?;
    plan.dirs.ensure_initialized()?;
    let log_path = plan.dirs.log_for(&plan.store_id());
    let mut command = kith_command(&plan.store)?;
    command.args(["mount", "--foreground", "--notify-stdout"]);
    if let Some(listen) = plan.listen {
        command.arg("--listen").arg(listen.to_string());
    }
    command.arg(&plan.mount_point);
    // The keyring passphrase, if one is needed, goes in the child's environment only.
    if !is_local_store(&plan.store) {
        for (name, value) in membership::daemon_environment(&plan.store, &plan.config)? {
            command.env(name, value.as_str());
        }
    }
    let mut progress = ControlProgress {
        socket: plan.dirs.socket_for(&plan.store_id()),
    };
    let pid = spawn_watching(command, &log_path, &plan.mount_point, &mut progress)?;
    Ok(format!(
        "mounted {} (daemon pid {pid}, log {})",
        plan.mount_point.display(),
        log_path.display()
    ))
}

/// This `kith` executable with `--store STORE`: how a daemon re-executes itself.
pub(crate) fn kith_command(store: &Path) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|source| Error::Path {
        what: "find the kith executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut command = Command::new(exe);
    command.arg("--store").arg(store);
    Ok(command)
}

/// Starts `command` (a `--foreground --notify-stdout` daemon) in its own process
/// group with stdin closed, stderr appended to `log_path` and stdout a pipe, and waits
/// for its one status line: its pid once it said `ready`, else what it reported.
/// `what` names the daemon's mount point (or store) in errors. It says nothing while
/// it starts: the wait ends [`STARTUP_STALL_TIMEOUT`] after the start.
pub(crate) fn spawn_reporting(command: Command, log_path: &Path, what: &Path) -> Result<u32> {
    spawn_watching(command, log_path, what, &mut NoProgress)
}

/// [`spawn_reporting`], printing what `progress` says the starting daemon does (to
/// stderr) and waiting for as long as that moves.
fn spawn_watching(
    mut command: Command,
    log_path: &Path,
    what: &Path,
    progress: &mut dyn StartupSource,
) -> Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| Error::Path {
            what: "open the log",
            path: log_path.to_owned(),
            source,
        })?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C meant for the shell does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Path {
            what: "start the daemon",
            path: what.to_owned(),
            source,
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Startup("no pipe to the daemon".into()))?;
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout.take(64 * 1024)).read_line(&mut line);
        let _ = line_tx.send(read.map(|_| line));
    });
    let mut watch = StartupWatch::new(
        Instant::now(),
        STARTUP_STALL_TIMEOUT,
        STARTUP_PRINT_INTERVAL,
    );
    let waited = wait_for_daemon(
        &line_rx,
        progress,
        &mut watch,
        STARTUP_POLL,
        &mut std::io::stderr(),
    );
    let line = match waited {
        Waited::Line(Ok(line)) => line,
        Waited::Line(Err(error)) => return Err(Error::Startup(error.to_string())),
        Waited::Stalled { last } => {
            return Err(Error::Startup(stalled_message(
                &last,
                child.id(),
                what,
                log_path,
            )));
        }
    };
    let line = line.trim_end();
    if line == "ready" {
        return Ok(child.id());
    }
    if let Some(message) = line.strip_prefix("error ") {
        let _ = child.wait();
        return Err(Error::Reported(message.to_owned()));
    }
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Err(Error::Startup(format!(
        "the daemon exited ({status}) before it was ready; see {}",
        log_path.display()
    )))
}

/// What `kith mount` says when a starting daemon stopped moving: the daemon is left
/// running (see the module comment for why).
fn stalled_message(last: &[String], pid: u32, what: &Path, log_path: &Path) -> String {
    let last = match last {
        [] => String::new(),
        lines => format!(" (last: {})", lines.join("; ")),
    };
    format!(
        "nothing moved for {} s while it started{last}. It was left running (pid {pid}) \
         and serves {} if it gets there: `kith status` shows how far it is; `kill {pid}` \
         stops it once it is up, `kill -9 {pid}` at once; its log is {}",
        STARTUP_STALL_TIMEOUT.as_secs(),
        what.display(),
        log_path.display()
    )
}

/// Where `kith mount` learns how far a starting daemon is.
trait StartupSource {
    /// What the daemon says now; `None` if it says nothing (not answering yet).
    fn progress(&mut self) -> Option<StartupProgress>;
}

/// A daemon that is not asked (the witness): nothing ever moves.
struct NoProgress;

impl StartupSource for NoProgress {
    fn progress(&mut self) -> Option<StartupProgress> {
        None
    }
}

/// Asks the daemon's control socket (bound before its volume opens).
struct ControlProgress {
    socket: PathBuf,
}

impl StartupSource for ControlProgress {
    fn progress(&mut self) -> Option<StartupProgress> {
        let answer =
            control::call_within(&self.socket, &Request::Progress, STARTUP_ASK_TIMEOUT).ok()?;
        StartupProgress::parse(answer.trim_end())
    }
}

/// How a wait for a starting daemon ended.
#[derive(Debug)]
enum Waited {
    /// The daemon's status line (empty: it closed its stdout, i.e. it exited).
    Line(std::io::Result<String>),
    /// Nothing moved for the watch's stall timeout; the last lines it showed.
    Stalled { last: Vec<String> },
}

/// Waits for the daemon's status line on `lines`, asking `source` every `poll` how far
/// the daemon is and writing what changed to `out`, until the line comes (a reported
/// error ends the wait at once, as `ready` does) or `watch` finds it stalled.
fn wait_for_daemon(
    lines: &mpsc::Receiver<std::io::Result<String>>,
    source: &mut dyn StartupSource,
    watch: &mut StartupWatch,
    poll: Duration,
    out: &mut dyn Write,
) -> Waited {
    loop {
        match lines.recv_timeout(poll) {
            Ok(line) => return Waited::Line(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Waited::Line(Err(std::io::Error::other(
                    "the daemon's status line was lost",
                )));
            }
        }
        let progress = source.progress();
        let now = Instant::now();
        for line in watch.observe(now, progress.as_ref()) {
            // Progress is a courtesy: a closed terminal must not end the wait.
            let _ = writeln!(out, "kith: {line}");
        }
        if watch.stalled(now) {
            return Waited::Stalled {
                last: watch.shown.clone(),
            };
        }
    }
}

/// What `kith mount` makes of a starting daemon's answers: which lines to show (when
/// they changed, at most once per `print_interval`), and whether the daemon stalled
/// (nothing it reports moved for `stall_timeout`; not answering at all counts as not
/// moving). Pure: the caller brings the clock.
#[derive(Debug)]
struct StartupWatch {
    stall_timeout: Duration,
    print_interval: Duration,
    /// When the position last changed (or the wait began).
    moved_at: Instant,
    /// The last position the daemon reported.
    position: Option<Vec<u64>>,
    /// The lines shown last, and when.
    shown: Vec<String>,
    shown_at: Option<Instant>,
}

impl StartupWatch {
    fn new(now: Instant, stall_timeout: Duration, print_interval: Duration) -> StartupWatch {
        StartupWatch {
            stall_timeout,
            print_interval,
            moved_at: now,
            position: None,
            shown: Vec::new(),
            shown_at: None,
        }
    }

    /// Takes what the daemon said at `now` (`None`: nothing); answers the lines to
    /// show: they differ from the ones shown last, which were shown at least
    /// `print_interval` ago.
    fn observe(&mut self, now: Instant, progress: Option<&StartupProgress>) -> Vec<String> {
        let Some(progress) = progress else {
            return Vec::new();
        };
        if self.position.as_ref() != Some(&progress.position) {
            self.position = Some(progress.position.clone());
            self.moved_at = now;
        }
        if progress.lines.is_empty()
            || progress.lines == self.shown
            || self
                .shown_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.print_interval)
        {
            return Vec::new();
        }
        self.shown.clone_from(&progress.lines);
        self.shown_at = Some(now);
        progress.lines.clone()
    }

    /// Nothing has moved for the stall timeout.
    fn stalled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.moved_at) >= self.stall_timeout
    }
}

/// `kith mount --foreground`: run the daemon in this process until it is told to stop.
pub fn run_foreground(plan: &MountPlan, notify_stdout: bool) -> Result<()> {
    // Before any thread exists: every later thread inherits the blocked set.
    let signals = shutdown_signals();
    signals
        .thread_block()
        .map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let running = match start(plan) {
        Ok(running) => running,
        Err(error) => {
            if notify_stdout {
                notify(&format!("error {}", error.to_string().replace('\n', " ")));
            }
            return Err(error);
        }
    };
    tracing::info!(
        mount_point = %plan.mount_point.display(),
        store = %plan.store.display(),
        pid = std::process::id(),
        "mounted"
    );
    if notify_stdout {
        // The last thing ever written to stdout: the parent closes the pipe after it.
        notify("ready");
    }
    running.serve()
}

/// The daemon's one status line to `kith mount`. That may have given up waiting and
/// gone (a long catch-up that stalled): a closed pipe is not the daemon's failure.
fn notify(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::info!(%error, "kith mount is no longer waiting for the status line");
    }
}

/// The parts of a running daemon that shutdown needs.
struct Running {
    volume: Arc<Volume>,
    /// The network side of a replicated volume; stopped after the volume closed.
    home: Option<Arc<Home>>,
    events: mpsc::Receiver<Event>,
    mount_point: PathBuf,
    socket: PathBuf,
    control: control::ServerHandle,
    lock: File,
}

enum Event {
    Signal(Signal),
    Unmount(mpsc::Sender<std::result::Result<String, String>>),
    SessionEnded(std::io::Result<()>),
}

fn start(plan: &MountPlan) -> Result<Running> {
    plan.dirs.ensure_initialized()?;
    std::fs::create_dir_all(&plan.store).map_err(|source| Error::Path {
        what: "create the store",
        path: plan.store.clone(),
        source,
    })?;
    let lock = lock_store(&plan.store, Some(&plan.mount_point))?;
    mounts::check_mount_point(&plan.mount_point)?;
    // The control socket answers from here on: while the volume opens (a device that
    // catches up installs a checkpoint and replays the log first), `kith status` says
    // so and how far it has come.
    let (event_tx, events) = mpsc::channel();
    let handler = Arc::new(DaemonHandler::new(plan, event_tx.clone()));
    let server = control::Server::bind(&plan.dirs.socket_for(&plan.store_id()))?;
    let socket = server.path().to_owned();
    let handle = server.spawn(handler.clone())?;
    let control = Control {
        handler,
        handle,
        socket,
        events,
        event_tx,
    };
    let invalidations = Invalidations::new();
    let opened = if is_local_store(&plan.store) {
        tracing::info!("a single-device store from before sync: serving it locally");
        Volume::open(&plan.store)
            .map(|volume| (Arc::new(volume), None))
            .map_err(Error::from)
    } else {
        open_replicated(plan, &invalidations, &control.handler)
            .map(|(volume, home)| (volume, Some(home)))
    };
    let (volume, home) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = std::fs::remove_file(&control.socket);
            return Err(error);
        }
    };
    let socket = control.socket.clone();
    let started = serve_volume(
        plan,
        volume.clone(),
        home.clone(),
        invalidations,
        lock,
        control,
    );
    match started {
        Ok(running) => Ok(running),
        Err(error) => {
            let _ = std::fs::remove_file(&socket);
            // Close the volume before the network it commits through.
            drop(volume);
            if let Some(home) = home {
                home.stop();
            }
            Err(error)
        }
    }
}

/// The control socket, bound and answering before the volume opens.
struct Control {
    handler: Arc<DaemonHandler>,
    handle: control::ServerHandle,
    socket: PathBuf,
    events: mpsc::Receiver<Event>,
    event_tx: mpsc::Sender<Event>,
}

/// Membership → network → volume (replicated on the network's replica, its content
/// store fetching missing blocks from the other devices).
fn open_replicated(
    plan: &MountPlan,
    invalidations: &Invalidations,
    handler: &DaemonHandler,
) -> Result<(Arc<Volume>, Arc<Home>)> {
    let (volume, home) = open_on_network(
        &plan.store,
        &plan.dirs,
        &plan.config,
        plan.listen,
        HomeRole::Daemon,
        |options| {
            options.on_remote_change = Some(invalidations.hook());
            // A replay at open tells status how far it is as it goes.
            options.apply_progress = Some(handler.progress.apply_hook());
        },
        |home| handler.network_up(home),
    )?;
    home.serve(Arc::downgrade(&volume));
    Ok((volume, home))
}

fn open_on_network(
    store: &Path,
    dirs: &Dirs,
    config: &Config,
    listen: Option<SocketAddr>,
    role: HomeRole,
    adjust: impl FnOnce(&mut VolumeOptions),
    network_up: impl FnOnce(&Arc<Home>) -> Result<()>,
) -> Result<(Arc<Volume>, Arc<Home>)> {
    // A witness store holds no volume key: it runs with `kith witness run`.
    crate::witness::refuse_volume(store)?;
    let content = VentiContent::open_dir(store)?;
    let home = Arc::new(Home::start(
        store,
        dirs,
        config,
        listen,
        content.store().clone(),
        role,
    )?);
    // A full copy pins what it fetches; on demand, fetched blocks are a cache.
    let fetched_class = match config.keep {
        config::Keep::Full => venti::Class::Pinned,
        config::Keep::OnDemand => venti::Class::Cached,
    };
    content
        .store()
        .set_remote(home.remote_blocks(), fetched_class);
    // New blocks reach other voters before the op naming them is proposed.
    content.store().set_pusher(home.block_pusher());
    // Key rotations read from the log reach the content store's keys.
    if let Err(error) = home.attach_content(&content) {
        home.stop();
        return Err(error);
    }
    if role == HomeRole::Daemon
        && let Err(error) = home.start_content_walk(content.clone(), config.keep)
    {
        home.stop();
        return Err(error);
    }
    if let Err(error) = network_up(&home) {
        home.stop();
        return Err(error);
    }
    let mut options = VolumeOptions {
        device: home.fossil_device(),
        content: Some(Arc::new(content)),
        agreement: Some(Arc::new(ReplicaAgreement::new(home.blocking_replica()))),
        create_if_empty: home.is_creator(),
        ..VolumeOptions::default()
    };
    if let Some(ops) = config.checkpoint_ops {
        options.checkpoint_ops = ops;
    }
    adjust(&mut options);
    match Volume::open_with(store, options) {
        Ok(volume) => Ok((Arc::new(volume), home)),
        Err(error) => {
            home.stop();
            Err(error.into())
        }
    }
}

/// The store's volume for a one-off command while no daemon serves it (the caller
/// holds the store lock). A replicated store opens on its replica, as the daemon
/// would (opening it on a local log would rebuild its namespace from nothing); reads
/// serve the local state without waiting for a quorum.
pub struct CommandVolume {
    volume: Option<Arc<Volume>>,
    home: Option<Arc<Home>>,
}

impl CommandVolume {
    pub fn open(store: &Path, dirs: &Dirs, config: &Config) -> Result<CommandVolume> {
        if is_local_store(store) {
            return Ok(CommandVolume {
                volume: Some(Arc::new(Volume::open(store)?)),
                home: None,
            });
        }
        let loopback_any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (volume, home) = open_on_network(
            store,
            dirs,
            config,
            Some(loopback_any_port),
            HomeRole::Command,
            |options| options.read_barrier_ms = 0,
            |_| Ok(()),
        )?;
        Ok(CommandVolume {
            volume: Some(volume),
            home: Some(home),
        })
    }

    pub fn volume(&self) -> Result<&Volume> {
        self.volume
            .as_deref()
            .ok_or_else(|| Error::Startup("the volume is closed".into()))
    }
}

impl Drop for CommandVolume {
    fn drop(&mut self) {
        // The volume's last sync commits through the replica: close it first.
        drop(self.volume.take());
        if let Some(home) = self.home.take() {
            home.stop();
        }
    }
}

/// A store that holds a single-device volume from before sync (a namespace but no
/// membership) keeps running on its local log.
pub fn is_local_store(store: &Path) -> bool {
    store.join("namespace.sqlite").exists() && !store.join(membership::MEMBERSHIP_FILE).exists()
}

fn serve_volume(
    plan: &MountPlan,
    volume: Arc<Volume>,
    home: Option<Arc<Home>>,
    invalidations: Invalidations,
    lock: File,
    control: Control,
) -> Result<Running> {
    let fs = KithFs::new(
        volume.clone(),
        CacheTtls {
            entry: plan.config.entry_ttl,
            attr: plan.config.attr_ttl,
        },
        is_root(),
    );
    let session = fuser::Session::new(fs, &plan.mount_point, &fuse_config(&plan.config))
        .map_err(|error| mounts::mount_failure(&plan.mount_point, &error))?;
    if home.is_some() {
        invalidations
            .spawn(session.notifier())
            .map_err(|e| Error::Startup(format!("cannot start the invalidation thread: {e}")))?;
    }

    // Garbage collection: with other writers, young blocks get a grace period.
    let shared_with_others: gc::SharedWithOthers = match &home {
        Some(home) => {
            let home = Arc::downgrade(home);
            Box::new(move || home.upgrade().is_none_or(|home| home.has_other_writers()))
        }
        None => Box::new(|| false),
    };
    let collector = Arc::new(gc::Collector::new(&volume, shared_with_others)?);
    collector.spawn()?;

    let Control {
        handler,
        handle: control,
        socket,
        events,
        event_tx,
    } = control;
    let session_tx = event_tx.clone();
    std::thread::Builder::new()
        .name("kith-fuse".into())
        .spawn(move || {
            let _ = session_tx.send(Event::SessionEnded(session.run()));
        })
        .map_err(|e| Error::Startup(format!("cannot start the FUSE thread: {e}")))?;
    let signal_tx = event_tx.clone();
    std::thread::Builder::new()
        .name("kith-signals".into())
        .spawn(move || {
            let signals = shutdown_signals();
            while let Ok(signal) = signals.wait() {
                if signal_tx.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::Startup(format!("cannot start the signal thread: {e}")))?;
    handler.serving(Serving {
        volume: Arc::downgrade(&volume),
        collector,
    });
    Ok(Running {
        control,
        volume,
        home,
        events,
        mount_point: plan.mount_point.clone(),
        socket,
        lock,
    })
}

impl Running {
    fn serve(self) -> Result<()> {
        let mut waiting_unmounts = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let event = match deadline {
                None => self.events.recv().ok(),
                Some(deadline) => self
                    .events
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            match event {
                Some(Event::Unmount(reply)) => match mounts::unmount(&self.mount_point, false) {
                    Ok(()) => waiting_unmounts.push(reply),
                    Err(error) => {
                        let message = if error.raw_os_error() == Some(libc::EBUSY) {
                            "the mount point is busy (files open or a shell in it)".to_owned()
                        } else {
                            format!("unmount failed: {error}")
                        };
                        let _ = reply.send(Err(message));
                    }
                },
                Some(Event::Signal(signal)) => {
                    tracing::info!(?signal, "stopping");
                    if let Err(error) = mounts::unmount(&self.mount_point, false) {
                        tracing::warn!(%error, "unmount failed; detaching lazily");
                        if let Err(error) = mounts::unmount(&self.mount_point, true) {
                            tracing::error!(%error, "cannot detach the mount");
                        }
                    }
                    deadline.get_or_insert(Instant::now() + SESSION_END_TIMEOUT);
                }
                Some(Event::SessionEnded(result)) => {
                    if let Err(error) = result {
                        tracing::error!(%error, "the FUSE session failed");
                    }
                    break;
                }
                // Timed out waiting for the FUSE threads, or every sender is gone.
                None => {
                    tracing::warn!("FUSE threads did not finish; syncing and exiting anyway");
                    break;
                }
            }
        }
        let synced = self.volume.sync_all();
        let _ = std::fs::remove_file(&self.socket);
        // Close the volume, then release the store, then answer: a `kith mount` right
        // after `kith unmount` returns must find the store free and consistent. If a
        // request still holds the volume, the lock goes with the process instead.
        match Arc::try_unwrap(self.volume) {
            Ok(volume) => {
                drop(volume);
                if let Some(home) = &self.home {
                    home.stop();
                }
                drop(self.lock);
            }
            Err(volume) => {
                if let Some(home) = &self.home {
                    home.stop();
                }
                std::mem::forget((volume, self.lock));
            }
        }
        let answer = match &synced {
            Ok(()) => Ok(format!("unmounted {}\n", self.mount_point.display())),
            Err(error) => Err(format!("final sync failed: {error}")),
        };
        for reply in waiting_unmounts {
            let _ = reply.send(answer.clone());
        }
        // Let the answers reach `kith unmount` before the process ends.
        self.control.wait_idle(ANSWER_TIMEOUT);
        tracing::info!("stopped");
        synced.map_err(Error::from)
    }
}

#[derive(Debug)]
struct DaemonInfo {
    mount_point: PathBuf,
    store: PathBuf,
    store_id: String,
    device_id: String,
    started: Instant,
    fuse_threads: usize,
}

/// How often the progress watcher looks at the replica.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// Watches where the log kept here starts and how far fossil has applied it, for
/// `kith status`: when the last checkpoint was taken or installed (the replica keeps
/// no time with it), and where the current catch-up began. Reads the replica's status
/// only — never the volume, whose lock a long apply holds.
#[derive(Debug)]
struct ProgressWatch {
    started: Instant,
    state: Mutex<WatchState>,
    /// How far the volume's current run of committed ops has applied (told by fossil
    /// while it runs, not committed until the run ends): while the volume opens, the
    /// replica's applied end moves only when a whole replay is done.
    applying_end: AtomicU64,
}

#[derive(Debug, Default)]
struct WatchState {
    /// The log start last seen (`None`: not looked yet).
    log_start: Option<u64>,
    /// When it was last seen to move.
    moved_at: Option<Instant>,
    /// The applied end when this device was first seen behind, until it caught up.
    catch_up_from: Option<u64>,
}

impl ProgressWatch {
    fn new() -> ProgressWatch {
        ProgressWatch {
            started: Instant::now(),
            state: Mutex::new(WatchState::default()),
            applying_end: AtomicU64::new(0),
        }
    }

    /// fossil's hook: it stores a number, under the volume's lock or inside `open`.
    fn apply_hook(self: &Arc<Self>) -> ApplyProgressHook {
        let watch = Arc::downgrade(self);
        Arc::new(move |progress: ApplyProgress| {
            if let Some(watch) = watch.upgrade() {
                watch
                    .applying_end
                    .fetch_max(progress.applied_end, Ordering::Relaxed);
            }
        })
    }

    /// The applied end as far as a run in progress has come (0: none told yet).
    fn applying_end(&self) -> u64 {
        self.applying_end.load(Ordering::Relaxed)
    }

    /// Polls the replica until the daemon lets go of `home`.
    fn spawn(self: &Arc<Self>, home: Weak<Home>) -> Result<()> {
        let watch = Arc::clone(self);
        std::thread::Builder::new()
            .name("kith-progress".into())
            .spawn(move || {
                while let Some(home) = home.upgrade() {
                    let replica = home.blocking_replica();
                    drop(home);
                    if let Ok(status) = replica.status() {
                        watch.observe(&status);
                    }
                    std::thread::sleep(PROGRESS_POLL);
                }
            })
            .map_err(|e| Error::Startup(format!("cannot start the progress thread: {e}")))?;
        Ok(())
    }

    fn observe(&self, status: &net::replica::ReplicaStatus) {
        let mut state = self.state.lock();
        let log_start = status.log_start.0;
        if state.log_start.is_some_and(|seen| seen != log_start) {
            state.moved_at = Some(Instant::now());
        }
        state.log_start = Some(log_start);
        // Behind: committed slots not applied yet (or a checkpoint not installed).
        let applied_end = status.applied_end.0;
        if applied_end >= status.commit_end.0 {
            state.catch_up_from = None;
        } else if state.catch_up_from.is_none() {
            state.catch_up_from = Some(applied_end);
        }
    }

    fn progress(&self, status: &net::replica::ReplicaStatus) -> LogProgress {
        self.observe(status);
        let state = self.state.lock();
        LogProgress {
            log_start: status.log_start.0,
            checkpoint_age_s: state.moved_at.map(|at| at.elapsed().as_secs()),
            uptime_s: self.started.elapsed().as_secs(),
            catch_up_from: state.catch_up_from,
        }
    }
}

/// What status says while the network side is not up yet.
const NETWORK_STARTING: &str = "sync: starting (opening the store and its network)";

/// What a starting daemon answers to requests that need the open volume.
const STARTING: &str = "the daemon is starting: its volume is opening (a device catching up \
                        installs a checkpoint and replays the log first; see `kith status`)";

/// What the control handler serves once the volume is open and mounted.
struct Serving {
    /// Weak: once the daemon lets go of the volume, requests get "stopping".
    volume: Weak<Volume>,
    collector: Arc<gc::Collector>,
}

/// Answers the control socket from before the volume opens (status, device list)
/// until the process ends.
struct DaemonHandler {
    /// Set once the volume is open and mounted; until then the daemon is starting.
    serving: OnceLock<Serving>,
    /// The network side of a replicated volume, once it is up (before the volume).
    home: OnceLock<Weak<Home>>,
    /// A single-device store from before sync: no network side, ever.
    local: bool,
    progress: Arc<ProgressWatch>,
    events: Mutex<mpsc::Sender<Event>>,
    info: DaemonInfo,
}

impl Handler for DaemonHandler {
    fn handle(&self, request: Request) -> std::result::Result<String, String> {
        match request {
            Request::Ping => Ok("pong\n".into()),
            Request::Mountpoint => {
                self.volume()?;
                Ok(format!("{}\n", self.info.mount_point.display()))
            }
            Request::Status => Ok(self.status()),
            Request::Snapshot(name) => {
                validate_snapshot_name(&name).map_err(|e| e.to_string())?;
                let volume = self.volume()?;
                volume
                    .snapshot(&name)
                    .and_then(|()| volume.sync_all())
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "snapshot {name} recorded (under .snapshots/{name})\n"
                ))
            }
            Request::Verify => Ok(verify::verify(self.volume()?.as_ref()).render()),
            Request::Gc => {
                self.volume()?;
                let serving = self.serving.get().ok_or_else(|| STARTING.to_owned())?;
                serving
                    .collector
                    .collect(true)
                    .map(|outcome| outcome.render())
                    .map_err(|e| e.to_string())
            }
            // Pairing grants the newcomer rights in the open volume.
            Request::DeviceAdd => {
                self.volume()?;
                self.home()?.device_add().map_err(|e| e.to_string())
            }
            Request::WitnessAdd => {
                self.volume()?;
                self.home()?.witness_add().map_err(|e| e.to_string())
            }
            Request::DeviceRemove(who) => {
                self.volume()?;
                self.home()?.device_remove(&who).map_err(|e| e.to_string())
            }
            Request::StatusJson => self.status_json(),
            Request::Progress => Ok(format!("{}\n", self.startup_progress().to_json())),
            Request::DeviceList => match self.report() {
                Some(report) => {
                    let (report, view) = report?;
                    Ok(status::device_list(
                        &report.config,
                        &report.devices,
                        &view.heard,
                    ))
                }
                None => Err("this store runs single-device (it predates sync)".into()),
            },
            Request::Unmount => {
                self.volume()?;
                let (reply_tx, reply_rx) = mpsc::channel();
                self.events
                    .lock()
                    .send(Event::Unmount(reply_tx))
                    .map_err(|_| "the daemon is stopping".to_owned())?;
                reply_rx
                    .recv()
                    .map_err(|_| "the daemon stopped without answering".to_owned())?
            }
        }
    }
}

impl DaemonHandler {
    fn new(plan: &MountPlan, events: mpsc::Sender<Event>) -> DaemonHandler {
        DaemonHandler {
            serving: OnceLock::new(),
            home: OnceLock::new(),
            local: is_local_store(&plan.store),
            progress: Arc::new(ProgressWatch::new()),
            events: Mutex::new(events),
            info: DaemonInfo {
                mount_point: plan.mount_point.clone(),
                store: plan.store.clone(),
                store_id: plan.store_id(),
                // A store from before sync has only the installation's random id; a
                // replicated one shows its device key's fingerprint once it is up.
                device_id: plan.dirs.device_id().unwrap_or_default(),
                started: Instant::now(),
                fuse_threads: plan.config.fuse_threads,
            },
        }
    }

    /// The network side is up (the volume opens next): status can report from it.
    fn network_up(&self, home: &Arc<Home>) -> Result<()> {
        let _ = self.home.set(Arc::downgrade(home));
        self.progress.spawn(Arc::downgrade(home))
    }

    /// The volume is open and mounted.
    fn serving(&self, serving: Serving) {
        let _ = self.serving.set(serving);
    }

    fn volume(&self) -> std::result::Result<Arc<Volume>, String> {
        match self.serving.get() {
            None => Err(STARTING.to_owned()),
            Some(serving) => serving
                .volume
                .upgrade()
                .ok_or_else(|| "the daemon is stopping".to_owned()),
        }
    }

    fn home(&self) -> std::result::Result<Arc<Home>, String> {
        if self.local {
            return Err("this store runs single-device (it predates sync)".into());
        }
        match self.home.get() {
            None => Err(STARTING.to_owned()),
            Some(home) => home
                .upgrade()
                .ok_or_else(|| "the daemon is stopping".to_owned()),
        }
    }

    /// The sync report of a replicated volume, if this daemon serves one, with what
    /// the replica and the progress watch add to it. While the volume opens, fossil's
    /// side of it comes from what it told the replica (applied end, queue).
    fn report(&self) -> Option<std::result::Result<(SyncReport, ReplicaView), String>> {
        if self.local {
            return None;
        }
        let report = (|| {
            let home = self.home()?;
            let replica = home
                .blocking_replica()
                .status()
                .map_err(|e| e.to_string())?;
            let starting = self.serving.get().is_none();
            let sync = if starting {
                fossil::volume::SyncStatus {
                    // A replay at open tells its progress as it goes; the replica
                    // hears of it when the replay is done.
                    applied_end: replica
                        .applied_end
                        .0
                        .max(self.progress.applying_end().min(replica.commit_end.0)),
                    commit_end: replica.commit_end.0,
                    pending: replica.queued,
                    unproposed: 0,
                }
            } else {
                self.volume()?.sync_status()
            };
            let report = home.report(sync).map_err(|e| e.to_string())?;
            let view = ReplicaView {
                progress: self.progress.progress(&replica),
                heard: replica.heard_ms_ago,
                starting,
                key_epochs: self.key_epochs(),
            };
            Ok((report, view))
        })();
        Some(report)
    }

    /// The volume key epochs held here, from `volume.key` (written atomically when a
    /// rotation is learned, so a read sees the old file or the new one).
    fn key_epochs(&self) -> Option<KeyEpochs> {
        match membership::read_volume_key(&self.info.store) {
            Ok(secrets) => Some(KeyEpochs {
                newest: secrets.newest().0,
                held: secrets.iter().count(),
            }),
            Err(error) => {
                tracing::debug!(%error, "status: the volume key epochs are unknown");
                None
            }
        }
    }

    /// What `kith mount` shows and watches while this daemon starts.
    fn startup_progress(&self) -> StartupProgress {
        let starting = self.serving.get().is_none();
        let said = |line: String| StartupProgress {
            starting,
            lines: vec![line],
            position: Vec::new(),
        };
        match self.report() {
            Some(Ok((report, view))) => report.startup_progress(&view),
            Some(Err(_)) if self.home.get().is_none() => said(NETWORK_STARTING.to_owned()),
            Some(Err(error)) => said(format!("sync: unknown ({error})")),
            // A single-device store replays its own short log tail: nothing to show.
            None => StartupProgress {
                starting,
                ..StartupProgress::default()
            },
        }
    }

    fn status_json(&self) -> std::result::Result<String, String> {
        match self.report() {
            Some(report) => {
                let (report, view) = report?;
                Ok(format!("{}\n", report.to_json(&view)))
            }
            None => Err("this store runs single-device (it predates sync)".into()),
        }
    }

    fn status(&self) -> String {
        let info = &self.info;
        let starting = self.serving.get().is_none();
        let device_id = match self.home() {
            Ok(home) => home.device().fingerprint(),
            Err(_) => info.device_id.clone(),
        };
        let mut text = format!(
            "mountpoint: {}{}\nstore: {}\nstore id: {}\ndevice: {}\npid: {}\nuptime: {} s\n\
             mode: {}\nfuse threads: {}\n",
            info.mount_point.display(),
            if starting {
                " (not mounted yet: the daemon is starting, its volume is opening)"
            } else {
                ""
            },
            info.store.display(),
            info.store_id,
            device_id,
            std::process::id(),
            info.started.elapsed().as_secs(),
            if self.local {
                "local (single device, from before sync)"
            } else {
                "replicated"
            },
            info.fuse_threads,
        );
        match self.report() {
            Some(Ok((report, view))) => text.push_str(&report.to_text(&view)),
            // Before the network is up there is nothing to report yet.
            Some(Err(_)) if self.home.get().is_none() => {
                text.push_str(NETWORK_STARTING);
                text.push('\n');
            }
            Some(Err(error)) => text.push_str(&format!("sync: unknown ({error})\n")),
            None => {}
        }
        if starting {
            return text;
        }
        let statfs = self
            .volume()
            .and_then(|volume| volume.statfs().map_err(|e| e.to_string()));
        match statfs {
            Ok(stat) => text.push_str(&format!(
                "space: {} of {} blocks of {} bytes free\nfiles: {} used\n",
                stat.blocks_available,
                stat.blocks,
                stat.block_size,
                stat.files.saturating_sub(stat.files_free),
            )),
            Err(error) => text.push_str(&format!("space: unknown ({error})\n")),
        }
        text
    }
}

/// Take the store's exclusive lock, or say who holds it. `mount_point` is recorded in
/// the lock file for that message.
pub fn lock_store(store: &Path, mount_point: Option<&Path>) -> Result<File> {
    let path = store.join(LOCK_FILE);
    let io_error = |source| Error::Path {
        what: "lock",
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = (&file)
                .take(LOCK_INFO_BYTES_MAX)
                .read_to_string(&mut holder);
            let holder = holder.trim().replace('\n', ", ");
            return Err(Error::StoreBusy {
                store: store.to_owned(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({holder})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io_error(source)),
    }
    let mut info = format!("pid {}", std::process::id());
    match mount_point {
        Some(mount_point) => info.push_str(&format!("\nmounted at {}", mount_point.display())),
        None => info.push_str("\nrunning a kith command"),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(info.as_bytes()))
        .map_err(io_error)?;
    Ok(file)
}

pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("it is . or ..")
    } else if name.contains('/') || name.contains('\0') || name.contains('\n') {
        Some("it contains '/', a newline or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::SnapshotName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn fuse_config(config: &Config) -> fuser::Config {
    use fuser::MountOption;
    let mut fuse = fuser::Config::default();
    fuse.mount_options = vec![
        MountOption::FSName(mounts::FS_NAME.into()),
        MountOption::Subtype(mounts::FS_NAME.into()),
        MountOption::DefaultPermissions,
    ];
    // allow_other lets every user reach the mount (the kernel still checks their
    // permissions: default_permissions); fusermount allows it to root only by default.
    if is_root() {
        fuse.acl = fuser::SessionACL::All;
    }
    fuse.n_threads = Some(config.fuse_threads);
    fuse.clone_fd = true;
    fuse
}

pub(crate) fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_store_is_refused_naming_the_holder() -> anyhow::Result<()> {
        let store = tempfile::tempdir()?;
        let first = lock_store(store.path(), Some(Path::new("/mnt/kith")))?;
        let second = lock_store(store.path(), None);
        let message = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("already in use"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("/mnt/kith"), "{message}");
        drop(first);
        assert!(lock_store(store.path(), None).is_ok());
        Ok(())
    }

    /// A daemon whose catch-up moves for `moves` answers (each one slot further),
    /// then stays where it is.
    struct FakeDaemon {
        answers: u64,
        moves: u64,
    }

    impl StartupSource for FakeDaemon {
        fn progress(&mut self) -> Option<StartupProgress> {
            self.answers += 1;
            let applied = self.answers.min(self.moves);
            Some(StartupProgress {
                starting: true,
                lines: vec![format!("catching up: {applied} of 1000 slot(s) applied")],
                position: vec![1000, applied],
            })
        }
    }

    fn progress(lines: &[&str], position: &[u64]) -> StartupProgress {
        StartupProgress {
            starting: true,
            lines: lines.iter().map(|line| (*line).to_owned()).collect(),
            position: position.to_vec(),
        }
    }

    #[test]
    fn the_watch_waits_while_the_catch_up_moves_and_shows_only_changes() {
        let stall = Duration::from_secs(120);
        let start = Instant::now();
        let mut watch = StartupWatch::new(start, stall, Duration::from_secs(1));
        // Not answering yet (the socket is not bound): nothing shown, not moving.
        assert!(watch.observe(start, None).is_empty());
        // Ten minutes of a catch-up that moves a little every 100 s: never stalled.
        for step in 1..=6u64 {
            let now = start + Duration::from_secs(100 * step);
            let line = format!("catching up: {step} of 9 slot(s) applied");
            let shown = watch.observe(now, Some(&progress(&[&line], &[9, step])));
            assert_eq!(shown, [line], "step {step}");
            assert!(!watch.stalled(now + Duration::from_secs(99)), "step {step}");
        }
        // The same answer again: nothing to show; moved but the same line: nothing.
        let at = start + Duration::from_millis(600_500);
        let same = progress(&["catching up: 6 of 9 slot(s) applied"], &[9, 6]);
        assert!(watch.observe(at, Some(&same)).is_empty());
        let fetched = progress(&["catching up: 6 of 9 slot(s) applied"], &[9, 6, 4096]);
        assert!(watch.observe(at, Some(&fetched)).is_empty());
        // New lines within a second of the last ones wait for the second to pass.
        let later = progress(&["catching up: 7 of 9 slot(s) applied"], &[9, 7]);
        let shown_at = start + Duration::from_secs(600);
        assert!(watch.observe(at, Some(&later)).is_empty());
        assert_eq!(
            watch.observe(shown_at + Duration::from_secs(1), Some(&later)),
            ["catching up: 7 of 9 slot(s) applied"]
        );
        let at = shown_at + Duration::from_secs(1);
        let fetched = progress(&["catching up: 7 of 9 slot(s) applied"], &[9, 7, 4096]);
        assert!(watch.observe(at, Some(&fetched)).is_empty());
        // Then nothing moves (the same figures, or no answer) for the stall timeout.
        assert!(watch.observe(at + stall / 2, Some(&fetched)).is_empty());
        assert!(watch.observe(at + stall / 2, None).is_empty());
        assert!(!watch.stalled(at + stall - Duration::from_millis(1)));
        assert!(watch.stalled(at + stall));
        assert_eq!(watch.shown, ["catching up: 7 of 9 slot(s) applied"]);
    }

    #[test]
    fn moving_progress_keeps_the_wait_going_past_the_stall_timeout() {
        let stall = Duration::from_millis(100);
        let (line_tx, lines) = mpsc::channel();
        let ready_after = stall * 8;
        let sender = std::thread::spawn(move || {
            std::thread::sleep(ready_after);
            let _ = line_tx.send(Ok("ready\n".to_owned()));
        });
        let mut daemon = FakeDaemon {
            answers: 0,
            moves: u64::MAX,
        };
        let started = Instant::now();
        let mut watch = StartupWatch::new(started, stall, Duration::ZERO);
        let mut out = Vec::new();
        let waited = wait_for_daemon(
            &lines,
            &mut daemon,
            &mut watch,
            Duration::from_millis(5),
            &mut out,
        );
        let _ = sender.join();
        assert!(
            matches!(&waited, Waited::Line(Ok(line)) if line == "ready\n"),
            "{waited:?}"
        );
        assert!(started.elapsed() >= ready_after);
        let out = String::from_utf8_lossy(&out);
        let shown: Vec<&str> = out.lines().collect();
        assert!(shown.len() >= 2, "{out}");
        assert!(
            shown
                .iter()
                .all(|line| line.starts_with("kith: catching up: ")),
            "{out}"
        );
    }

    #[test]
    fn a_stalled_catch_up_ends_the_wait_with_the_last_lines() {
        let (_line_tx, lines) = mpsc::channel::<std::io::Result<String>>();
        let mut daemon = FakeDaemon {
            answers: 0,
            moves: 3,
        };
        let mut watch =
            StartupWatch::new(Instant::now(), Duration::from_millis(50), Duration::ZERO);
        let mut out = Vec::new();
        let waited = wait_for_daemon(
            &lines,
            &mut daemon,
            &mut watch,
            Duration::from_millis(5),
            &mut out,
        );
        let Waited::Stalled { last } = waited else {
            panic!("not stalled: {waited:?}");
        };
        assert_eq!(last, ["catching up: 3 of 1000 slot(s) applied"]);
        assert!(daemon.answers > 3, "asked {} times", daemon.answers);
        // Each line once, though it was answered many times.
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.lines().count(), 3, "{out}");
        let message = stalled_message(
            &last,
            4242,
            Path::new("/home/me/Kith"),
            Path::new("/home/me/.local/share/kith/logs/s.log"),
        );
        for part in [
            "nothing moved for 120 s",
            "(last: catching up: 3 of 1000 slot(s) applied)",
            "left running (pid 4242)",
            "/home/me/Kith",
            "`kill 4242` stops it once it is up, `kill -9 4242` at once",
            "its log is /home/me/.local/share/kith/logs/s.log",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }

    #[test]
    fn a_reported_error_ends_the_wait_at_once() -> anyhow::Result<()> {
        let (line_tx, lines) = mpsc::channel();
        line_tx.send(Ok("error the mount point is busy\n".to_owned()))?;
        // Moving, with a stall timeout the test would notice: only the line ends it.
        let mut daemon = FakeDaemon {
            answers: 0,
            moves: 5,
        };
        let mut watch =
            StartupWatch::new(Instant::now(), Duration::from_millis(200), Duration::ZERO);
        let waited = wait_for_daemon(
            &lines,
            &mut daemon,
            &mut watch,
            Duration::from_millis(5),
            &mut std::io::sink(),
        );
        assert!(
            matches!(&waited, Waited::Line(Ok(line)) if line.starts_with("error the mount")),
            "{waited:?}"
        );
        assert_eq!(daemon.answers, 0, "the daemon was asked after its error");
        // A daemon that exits without a word: its pipe closes, the line is empty.
        let (line_tx, lines) = mpsc::channel();
        line_tx.send(Ok(String::new()))?;
        let waited = wait_for_daemon(
            &lines,
            &mut NoProgress,
            &mut watch,
            Duration::from_millis(5),
            &mut std::io::sink(),
        );
        assert!(matches!(&waited, Waited::Line(Ok(line)) if line.is_empty()));
        Ok(())
    }

    #[test]
    fn snapshot_names_are_single_path_components() {
        assert!(validate_snapshot_name("2026-11-21T063000Z").is_ok());
        assert!(validate_snapshot_name("before upgrade").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b", "a\nb"] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_snapshot_name(&"x".repeat(256)).is_err());
    }
}
