//! A witness: an acceptor of the home volume's Paxos group that holds sealed log
//! entries only, so that a user with two devices keeps writing while one is off.
//!
//! With two devices, every commit needs both. With a witness the group has three
//! acceptors (two devices, one witness) and any two commit: the laptop and the witness
//! keep committing while the desktop is off, and the desktop catches up when it
//! returns. A witness never leads, proposes or applies (the Paxos core refuses it);
//! it stores what it accepts — entries sealed under the volume key it does not have —
//! and votes.
//!
//! What a witness is *not*: it has no `volume.key` (its pairing answer carries no
//! sealed secret: [`net::pairing::JoinGrant::Witness`]), no namespace, no content
//! store and no mount. It refuses block fetches and pushes. So what it guarantees is
//! agreement on the log, not redundancy of content: a write's blocks are on its writer
//! until another device holds them (see `docs/devices.md`, "Two devices and a
//! witness").
//!
//! Life cycle, with the daemon plumbing of [`crate::daemon`] (lock file, log file,
//! re-exec with a `ready` line, signal mask) and [`crate::control`] (the socket):
//!
//! ```text
//! kith witness add                  on a device holding the user root key: a code
//! kith witness join CODE [--listen]   on the witness machine, a fresh store
//! kith witness run [--foreground] [--listen A:P]
//! kith witness stop                 (or SIGTERM / SIGINT)
//! kith status                       shows the running witness
//! ```
//!
//! The store: `keyring` (a device identity; passphrase rules as for a device),
//! `membership` (role witness: chain, configuration, node table, addresses) and the
//! acceptor store `paxos.sqlite`. Nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use net::frame::Kind;
use net::identity::DeviceId;
use net::link::{Dispatch, NodeTable, PaxosRouter, QuicLink};
use net::pairing::JoinRole;
use net::quic::{Admission, Endpoint, Inbound, Trust, TrustSet};
use net::replica::{BlockingReplica, Replica, ReplicaOptions, StaticKeys};
use parking_lot::Mutex;
use paxos::NodeOptions;

use crate::config::{self, Config, Dirs};
use crate::control::{self, Handler, Request};
use crate::daemon::{self, DEFAULT_LISTEN};
use crate::error::{Error, Result};
use crate::join::{self, JoinSummary};
use crate::membership::{self, KeyringMode, Membership};
use crate::status::{DeviceReport, WitnessReport};
use crate::sync::{ACCEPTOR_FILE, reachable_addresses};

/// Worker threads of the witness's network runtime.
const NETWORK_WORKERS: usize = 1;
/// Inbound chain and refused frames waiting for their handler.
const OTHER_FRAMES_QUEUED_MAX: usize = 16;
/// How long the replica and the endpoint get to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The witness tells the devices where it listens (and learns of new ones) this often.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// How often a sleeping thread looks for a stop.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a stopping witness waits for control answers to be written.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything `kith witness run` needs, resolved.
#[derive(Clone, Debug)]
pub struct WitnessPlan {
    pub dirs: Dirs,
    pub config: Config,
    pub store: PathBuf,
    /// Where to listen for the devices (QUIC); `None`: [`DEFAULT_LISTEN`], or a free
    /// port when another daemon on this machine holds it.
    pub listen: Option<SocketAddr>,
}

/// `kith witness join CODE`: makes the fresh `store` a witness of the code's user.
pub fn join(
    store: &Path,
    config: &Config,
    code: &str,
    listen: Option<SocketAddr>,
) -> Result<JoinSummary> {
    join::join(store, config, code, listen, JoinRole::Witness)
}

/// Refuses to open a volume on a witness store (it has no key to open one with).
pub fn refuse_volume(store: &Path) -> Result<()> {
    match membership::store_role(store)? {
        Some(JoinRole::Witness) => Err(Error::Startup(format!(
            "the store {} is a witness: it holds no volume key and mounts nothing \
             (run it with `kith witness run`)",
            store.display()
        ))),
        _ => Ok(()),
    }
}

fn require_witness_store(store: &Path) -> Result<()> {
    match membership::store_role(store)? {
        Some(JoinRole::Witness) => Ok(()),
        Some(JoinRole::Device) => Err(Error::Startup(format!(
            "the store {} is a device, not a witness (mount it with `kith mount`)",
            store.display()
        ))),
        None => Err(Error::Startup(format!(
            "the store {} is not a witness yet: `kith witness join CODE` first",
            store.display()
        ))),
    }
}

/// `kith witness run` without `--foreground`: start the witness daemon in the
/// background and report how it went.
pub fn spawn_background(plan: &WitnessPlan) -> Result<String> {
    require_witness_store(&plan.store)?;
    plan.dirs.ensure_initialized()?;
    let store_id = config::store_id(&plan.store);
    let log_path = plan.dirs.log_for(&store_id);
    let mut command = daemon::kith_command(&plan.store)?;
    command.args(["witness", "run", "--foreground", "--notify-stdout"]);
    if let Some(listen) = plan.listen {
        command.arg("--listen").arg(listen.to_string());
    }
    for (name, value) in membership::daemon_environment(&plan.store, &plan.config)? {
        command.env(name, value.as_str());
    }
    let pid = daemon::spawn_reporting(command, &log_path, &plan.store)?;
    Ok(format!(
        "witness running for the store {} (daemon pid {pid}, log {})",
        plan.store.display(),
        log_path.display()
    ))
}

/// `kith witness stop`: asks the store's witness daemon to stop and waits for it.
pub fn stop(dirs: &Dirs, store: &Path) -> Result<String> {
    let socket = dirs.socket_for(&config::store_id(store));
    if !control::is_alive(&socket) {
        return Err(Error::NoDaemon {
            store: store.to_owned(),
        });
    }
    control::call(&socket, &Request::Unmount)
}

/// `kith witness run --foreground`: the witness daemon in this process until a signal
/// or `kith witness stop`.
pub fn run_foreground(plan: &WitnessPlan, notify_stdout: bool) -> Result<()> {
    // Before any thread exists: every later thread inherits the blocked set.
    let signals = daemon::shutdown_signals();
    signals
        .thread_block()
        .map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let running = match Running::start(plan) {
        Ok(running) => running,
        Err(error) => {
            if notify_stdout {
                println!("error {}", error.to_string().replace('\n', " "));
            }
            return Err(error);
        }
    };
    tracing::info!(
        store = %plan.store.display(),
        listen = %running.shared.listen,
        pid = std::process::id(),
        "witness running"
    );
    if notify_stdout {
        use std::io::Write;
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    running.serve()
}

/// The witness's side of the network: the endpoint, the replica (no keys, no
/// signing key) and nothing that serves blocks.
struct WitnessNetwork {
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: Endpoint,
    replica: Replica,
    blocking: BlockingReplica,
    trust: Arc<TrustSet>,
    nodes: Arc<NodeTable>,
    listen: SocketAddr,
    other: Option<tokio::sync::mpsc::Receiver<Inbound>>,
}

impl WitnessNetwork {
    fn start(
        membership: &Membership,
        listen: SocketAddr,
        listen_fallback: bool,
        acceptor_path: PathBuf,
    ) -> Result<WitnessNetwork> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(NETWORK_WORKERS)
            .thread_name("kith-witness-net")
            .enable_all()
            .build()
            .map_err(|e| Error::Startup(format!("cannot start the network runtime: {e}")))?;
        let trust = Arc::new(TrustSet::new());
        trust.set_from_chains([&membership.chain_state()?]);
        let nodes = Arc::new(NodeTable::new(membership.nodes.iter().copied()));
        let identity = &membership.keyring.device;
        let (endpoint, inbound) = {
            let _guard = runtime.enter();
            let trust_dyn: Arc<dyn Trust> = trust.clone();
            match Endpoint::bind(listen, identity, trust_dyn.clone()) {
                Err(net::Error::Bind { addr, source }) if listen_fallback => {
                    tracing::info!(%addr, %source, "listen address taken; using a free port");
                    Endpoint::bind(SocketAddr::new(listen.ip(), 0), identity, trust_dyn)?
                }
                bound => bound?,
            }
        };
        let me = membership.device();
        for (device, addresses) in &membership.addresses {
            if *device != me && !addresses.is_empty() {
                endpoint.set_addresses(*device, addresses.clone());
            }
        }
        let listen = endpoint.local_addr()?;
        let link = Arc::new(QuicLink::new(
            endpoint.clone(),
            membership.volume,
            nodes.clone(),
        ));
        let options = ReplicaOptions {
            node: NodeOptions::new(membership.node, membership.volume),
            genesis: membership.genesis.clone(),
            store_path: acceptor_path,
            // A witness authors nothing.
            signing_key: None,
        };
        // No entry keys: a witness opens nothing it stores.
        let replica = {
            let _guard = runtime.enter();
            Replica::open(options, Arc::new(StaticKeys::default()), link)?
        };
        let router = Arc::new(PaxosRouter::new(nodes.clone()));
        router.attach(replica.clone());
        let (other_tx, other_rx) = tokio::sync::mpsc::channel(OTHER_FRAMES_QUEUED_MAX);
        // No block server: block requests and pushes reach `on_frame`, which refuses them.
        let dispatch = Dispatch {
            paxos: Some(router),
            blocks: None,
            other: Some(other_tx),
        };
        {
            let _guard = runtime.enter();
            dispatch.spawn(inbound);
        }
        let blocking = BlockingReplica::new(replica.clone())?;
        Ok(WitnessNetwork {
            runtime: Some(runtime),
            endpoint,
            replica,
            blocking,
            trust,
            nodes,
            listen,
            other: Some(other_rx),
        })
    }

    /// Closes the replica (its store synced and closed), then the endpoint.
    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let replica = self.replica.clone();
        let endpoint = self.endpoint.clone();
        runtime.block_on(async move {
            if tokio::time::timeout(CLOSE_TIMEOUT, replica.close())
                .await
                .is_err()
            {
                tracing::warn!("the replica did not close in time");
            }
            endpoint.close().await;
        });
        runtime.shutdown_timeout(CLOSE_TIMEOUT);
    }
}

/// What the control handler, the frame thread and the announcer share.
struct Shared {
    store: PathBuf,
    membership: Mutex<Membership>,
    trust: Arc<TrustSet>,
    nodes: Arc<NodeTable>,
    endpoint: Endpoint,
    blocking: BlockingReplica,
    listen: SocketAddr,
    keyring_mode: KeyringMode,
    started: Instant,
    stopping: AtomicBool,
}

impl Shared {
    /// Sends this witness's view of the user and the volume to every device.
    fn announce(&self) {
        membership::announce(&self.membership, &self.endpoint);
    }

    /// One frame that is not Paxos: a device's announcement is adopted; every request
    /// is refused (a witness pairs nobody and holds no blocks).
    fn on_frame(&self, inbound: Inbound) {
        let kind = inbound.frame.kind;
        if kind == Kind::CHAIN && inbound.responder.is_none() {
            if inbound.admission == Admission::Member {
                self.adopt(inbound.peer, &inbound.frame.body);
            }
            return;
        }
        let Some(responder) = inbound.responder else {
            return;
        };
        let reason = match kind {
            Kind::BLOCK_REQUEST | Kind::BLOCK_PUSH => {
                "this device is a witness: it holds no blocks and takes none"
            }
            Kind::PAIR => "this device is a witness: it adds no devices",
            _ => "no handler for this frame kind",
        };
        tracing::debug!(peer = %inbound.peer, kind = kind.as_u8(), reason, "refused a request");
        responder.refuse(reason);
    }

    fn adopt(&self, from: DeviceId, bytes: &[u8]) {
        let views = membership::NetworkViews {
            trust: &self.trust,
            nodes: &self.nodes,
            endpoint: &self.endpoint,
        };
        membership::adopt_announcement(&self.membership, &self.store, &views, from, bytes);
    }

    fn report(&self) -> Result<WitnessReport> {
        let replica = self.blocking.status()?;
        let membership = self.membership.lock();
        let state = membership.chain_state()?;
        let me = membership.device();
        let devices = membership
            .nodes
            .iter()
            .filter(|(_, device)| state.is_live(device))
            .map(|(node, device)| DeviceReport {
                node: *node,
                fingerprint: device.fingerprint(),
                name: state
                    .devices
                    .get(device)
                    .map(|d| d.name.clone())
                    .unwrap_or_default(),
                online: *device == me || self.endpoint.existing_connection(device).is_some(),
                this: *device == me,
            })
            .collect();
        Ok(WitnessReport {
            store: self.store.clone(),
            device: me.fingerprint(),
            uptime_s: self.started.elapsed().as_secs(),
            listen: self.listen,
            keyring_encrypted: self.keyring_mode == KeyringMode::Encrypted,
            config: replica.config,
            leader: replica.leader,
            commit_end: replica.commit_end.0,
            log_start: replica.log_start.0,
            devices,
            heard: replica.heard_ms_ago,
        })
    }
}

/// Hands the frames that are not Paxos to [`Shared::on_frame`] on a thread of their
/// own (adopting an announcement writes the membership file).
fn spawn_frame_thread(
    shared: Arc<Shared>,
    mut other: tokio::sync::mpsc::Receiver<Inbound>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("kith-witness-frames".into())
        .spawn(move || {
            while let Some(inbound) = other.blocking_recv() {
                shared.on_frame(inbound);
            }
        })
        .map_err(|e| Error::Startup(format!("cannot start the frame thread: {e}")))?;
    Ok(())
}

enum Event {
    Signal(nix::sys::signal::Signal),
    Stop(mpsc::Sender<std::result::Result<String, String>>),
}

struct WitnessHandler {
    shared: Arc<Shared>,
    events: Mutex<mpsc::Sender<Event>>,
}

impl Handler for WitnessHandler {
    fn handle(&self, request: Request) -> std::result::Result<String, String> {
        match request {
            Request::Ping => Ok("pong\n".into()),
            Request::Status => self
                .shared
                .report()
                .map(|report| report.to_text())
                .map_err(|e| e.to_string()),
            Request::StatusJson => self
                .shared
                .report()
                .map(|report| format!("{}\n", report.to_json()))
                .map_err(|e| e.to_string()),
            // `kith witness stop`.
            Request::Unmount => {
                let (reply_tx, reply_rx) = mpsc::channel();
                self.events
                    .lock()
                    .send(Event::Stop(reply_tx))
                    .map_err(|_| "the witness is stopping".to_owned())?;
                reply_rx
                    .recv()
                    .map_err(|_| "the witness stopped without answering".to_owned())?
            }
            Request::DeviceList => self
                .shared
                .report()
                .map(|report| {
                    crate::status::device_list(&report.config, &report.devices, &report.heard)
                })
                .map_err(|e| e.to_string()),
            Request::Mountpoint => Err("a witness mounts nothing".into()),
            // Everything else is about a volume or adding devices, which a witness has
            // and does none of (new requests land here too).
            _ => Err(
                "this daemon is a witness: it has no volume and adds no devices (ask a device)"
                    .into(),
            ),
        }
    }
}

/// A running witness daemon.
struct Running {
    shared: Arc<Shared>,
    network: WitnessNetwork,
    events: mpsc::Receiver<Event>,
    socket: PathBuf,
    control: control::ServerHandle,
    lock: std::fs::File,
}

impl Running {
    fn start(plan: &WitnessPlan) -> Result<Running> {
        plan.dirs.ensure_initialized()?;
        require_witness_store(&plan.store)?;
        let lock = daemon::lock_store(&plan.store, None)?;
        let membership = Membership::load(&plan.store)?;
        if membership.role != JoinRole::Witness {
            return Err(Error::Startup("the store is not a witness".into()));
        }
        let listen = plan.listen.or(plan.config.listen);
        let mut network = WitnessNetwork::start(
            &membership,
            listen.unwrap_or(DEFAULT_LISTEN),
            listen.is_none(),
            plan.store.join(ACCEPTOR_FILE),
        )?;
        match Self::serve_network(plan, membership, &mut network) {
            Ok((shared, events, socket, control)) => Ok(Running {
                shared,
                network,
                events,
                socket,
                control,
                lock,
            }),
            Err(error) => {
                network.stop();
                Err(error)
            }
        }
    }

    /// The threads around the network: frames, announcements, signals, control.
    #[allow(clippy::type_complexity)]
    fn serve_network(
        plan: &WitnessPlan,
        mut membership: Membership,
        network: &mut WitnessNetwork,
    ) -> Result<(
        Arc<Shared>,
        mpsc::Receiver<Event>,
        PathBuf,
        control::ServerHandle,
    )> {
        // Where the witness listens goes into its announcements.
        if membership.set_own_addresses(reachable_addresses(network.listen)) {
            membership.save(&plan.store)?;
        }
        let keyring_mode = membership.keyring_mode();
        let shared = Arc::new(Shared {
            store: plan.store.clone(),
            membership: Mutex::new(membership),
            trust: network.trust.clone(),
            nodes: network.nodes.clone(),
            endpoint: network.endpoint.clone(),
            blocking: network.blocking.clone(),
            listen: network.listen,
            keyring_mode,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        });
        let Some(other) = network.other.take() else {
            return Err(Error::Startup("the witness network started twice".into()));
        };
        spawn_frame_thread(shared.clone(), other)?;
        let announcer = shared.clone();
        std::thread::Builder::new()
            .name("kith-announce".into())
            .spawn(move || {
                while !announcer.stopping.load(Ordering::SeqCst) {
                    announcer.announce();
                    let deadline = Instant::now() + ANNOUNCE_INTERVAL;
                    while Instant::now() < deadline && !announcer.stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(STOP_POLL);
                    }
                }
            })
            .map_err(|e| Error::Startup(format!("cannot start the announce thread: {e}")))?;
        let (event_tx, events) = mpsc::channel();
        let signal_tx = event_tx.clone();
        std::thread::Builder::new()
            .name("kith-signals".into())
            .spawn(move || {
                let signals = daemon::shutdown_signals();
                while let Ok(signal) = signals.wait() {
                    if signal_tx.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Startup(format!("cannot start the signal thread: {e}")))?;
        let socket_path = plan.dirs.socket_for(&config::store_id(&plan.store));
        let server = control::Server::bind(&socket_path)?;
        let socket = server.path().to_owned();
        let control = server.spawn(Arc::new(WitnessHandler {
            shared: shared.clone(),
            events: Mutex::new(event_tx),
        }))?;
        Ok((shared, events, socket, control))
    }

    /// Until a signal or `kith witness stop`; then closes the replica and the endpoint,
    /// removes the socket, releases the store and answers.
    fn serve(mut self) -> Result<()> {
        let reply = match self.events.recv() {
            Ok(Event::Stop(reply)) => Some(reply),
            Ok(Event::Signal(signal)) => {
                tracing::info!(?signal, "stopping");
                None
            }
            Err(_) => None,
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
        self.network.stop();
        drop(self.lock);
        if let Some(reply) = reply {
            let _ = reply.send(Ok(format!(
                "witness for the store {} stopped\n",
                self.shared.store.display()
            )));
        }
        self.control.wait_idle(ANSWER_TIMEOUT);
        tracing::info!("witness stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use net::blocks::BlockClient;
    use net::identity::{DeviceIdentity, LinkBody};
    use net::keyring::Keyring;

    use super::*;
    use crate::config::tests::dirs_in;
    use crate::membership::{JoinedVolume, VOLUME_KEY_FILE};

    /// Device a (created the user) and a witness store w added by it, as a join would.
    fn device_and_witness(root: &Path) -> anyhow::Result<(Membership, Membership)> {
        let config = Config {
            keyring: Some(KeyringMode::Unencrypted),
            ..Config::default()
        };
        let a = Membership::load_or_create(&root.join("a"), &dirs_in(root), &config)?;
        let witness = DeviceIdentity::generate();
        let Some(root_key) = a.keyring.user_root.as_ref() else {
            anyhow::bail!("no root key");
        };
        let mut chain = a.chain.clone();
        chain.append(
            root_key,
            LinkBody::AddDevice {
                device: witness.public(),
                name: "w".into(),
                proof: witness.possession_proof(&a.chain.user(), "w"),
            },
        )?;
        let mut info = a.info();
        info.nodes.push((paxos::NodeId(2), witness.device_id()));
        let w = Membership::from_join(
            &root.join("w"),
            Keyring::new(witness),
            KeyringMode::Unencrypted,
            None,
            JoinedVolume {
                chain,
                info,
                node: paxos::NodeId(2),
                epoch_secrets: None,
            },
        )?;
        Ok((a, w))
    }

    #[test]
    fn a_witness_refuses_block_fetches_and_pushes_and_stores_no_key() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let (a, w) = device_and_witness(root.path())?;
        let w_store = root.path().join("w");
        let mut network = WitnessNetwork::start(
            &w,
            "127.0.0.1:0".parse()?,
            false,
            w_store.join(ACCEPTOR_FILE),
        )?;
        let w_device = w.device();
        let w_listen = network.listen;
        let other = network
            .other
            .take()
            .ok_or_else(|| anyhow::anyhow!("no frames"))?;
        let shared = Arc::new(Shared {
            store: w_store.clone(),
            membership: Mutex::new(w),
            trust: network.trust.clone(),
            nodes: network.nodes.clone(),
            endpoint: network.endpoint.clone(),
            blocking: network.blocking.clone(),
            listen: w_listen,
            keyring_mode: KeyringMode::Unencrypted,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        });
        spawn_frame_thread(shared.clone(), other)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let volume = a.volume;
        let (fetched, pushed) = runtime.block_on(async {
            let trust = Arc::new(TrustSet::with_members([w_device]));
            let (endpoint, _inbound) =
                Endpoint::bind("127.0.0.1:0".parse()?, &a.keyring.device, trust)?;
            endpoint.set_addresses(w_device, vec![w_listen]);
            let client = BlockClient::new(endpoint.clone());
            let block = b"sealed bytes".to_vec();
            let address = venti::Address::of(&block);
            let fetched = client.fetch_from(w_device, volume, &address).await;
            let body = net::blocks::encode_push(volume, &[(address, block.as_slice())])?;
            let pushed = client.push_to(w_device, &body).await;
            endpoint.close().await;
            anyhow::Ok((fetched, pushed))
        })?;
        let said = |result: String| result.contains("witness");
        assert!(
            fetched.as_ref().err().is_some_and(|e| said(e.to_string())),
            "a block fetch from a witness: {fetched:?}"
        );
        assert!(
            pushed.as_ref().err().is_some_and(|e| said(e.to_string())),
            "a block push to a witness: {pushed:?}"
        );
        // The witness's status: its role and the volume's configuration.
        let report = shared.report()?;
        assert_eq!(report.config, a.genesis);
        assert!(
            report
                .devices
                .iter()
                .any(|d| d.this && d.node == paxos::NodeId(2))
        );
        network.stop();
        // Its store: keyring, membership, acceptor store; no key, no blocks.
        assert!(!w_store.join(VOLUME_KEY_FILE).exists());
        assert!(!w_store.join("blocks").exists());
        assert!(w_store.join(ACCEPTOR_FILE).exists());
        assert!(refuse_volume(&w_store).is_err());
        assert!(refuse_volume(&root.path().join("a")).is_ok());
        assert!(require_witness_store(&root.path().join("a")).is_err());
        Ok(())
    }
}
