//! The network side of a daemon: one volume's replica and its block exchange on QUIC.
//!
//! [`Network::start`] brings up, on one tokio runtime (multi-thread, 2 workers) that
//! only the network uses:
//! - the QUIC [`Endpoint`] bound to the listen address, trusting exactly the live
//!   devices of the user's chain ([`TrustSet`]);
//! - the [`NodeTable`] (node id ↔ device key), the [`PaxosRouter`] and a [`Dispatch`]
//!   owning the endpoint's inbound frames;
//! - the home volume's [`Replica`] (acceptor store `paxos.sqlite` in the store
//!   directory) behind a [`QuicLink`];
//! - a [`BlockServer`] over the venti store that answers devices of the volume only,
//!   from blocks held here (`get_local`: never by asking further devices);
//! - [`PeerBlocks`], venti's [`RemoteBlocks`] hook, fetching missing blocks from the
//!   volume's other devices with [`BlockClient`];
//! - [`PeerPusher`], venti's [`BlockPusher`] hook: before fossil proposes an op that
//!   names new blocks, its `Store::sync` has them pushed to enough other voters that
//!   every quorum holds one (see [`PeerPusher`]); the block server stores what the
//!   volume's devices push here, pinned. A background thread retries pushes that
//!   could not be placed.
//!
//! Membership reconcile (the daemon holding the user root key, every
//! [`RECONCILE_INTERVAL`] from its start): work that a join or a removal leaves owed is
//! finished from state that survives restarts, never from memory —
//! - *promotions*: a device joins as a learner ([`crate::join`]); every learner that is
//!   a live device of the user's chain, connected now, and has caught up as this leader
//!   sees it (its reported commit index within [`PROMOTE_WITHIN_SLOTS`] of the commit
//!   end: [`learners_to_promote`]) is proposed
//!   as a voter, one configuration change at a time. Derived from the configuration in
//!   force, so a restart between the join and the promotion changes nothing.
//! - *removals*: `kith device remove` records the node in the store's
//!   [`membership::REMOVALS_OWED_FILE`] before it proposes `Remove(node)`, and the
//!   record goes only once a key rotation that excludes the node has committed (then
//!   the device is revoked too, if it is not yet). A daemon stopped anywhere in between
//!   proposes the rotation again at start: at worst one rotation too many, which only
//!   adds an epoch (a second rotation to an epoch already held is ignored everywhere
//!   alike). A marker rather than a rule read from the log: the log does not keep what
//!   the rule would need (a checkpoint truncates it, and carries rotations without
//!   their slots and the configuration in force only), and only this daemon decides
//!   removals, so its own durable record of what it started is the whole truth.
//!
//! Threads: fossil and the FUSE threads never enter this runtime. They reach the
//! replica through [`BlockingReplica`] and the block client through
//! [`PeerBlocks`], both of which refuse to run on a runtime thread rather than block
//! one. Frames that are neither Paxos nor block requests (pairing, chain updates) go
//! to a plain thread, so their handler may call the volume and the replica.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fossil::Volume;

use fossil::venti_content::{EpochSecrets, VentiContent};
use net::blocks::{BlockClient, BlockServer};
use net::entry::{KeyEpoch, KeyRotation};
use net::frame::Kind;
use net::identity::{ChainState, DeviceId, DeviceIdentity};
use net::keyring::{KeepEpoch, VolumeKeyring};
use net::link::{Dispatch, NodeTable, PaxosRouter, QuicLink};
use net::quic::{Admission, Endpoint, Inbound, Trust, TrustSet};
use net::replica::{
    BlockingReplica, MembershipChange, ProposalId, Replica, ReplicaOptions, ReplicaStatus,
    VolumeKeys,
};
use paxos::{Config, NodeId, NodeOptions, VolumeId};
use tokio::sync::mpsc;
use venti::keys::EpochKeys;
use venti::tree::TreeReader;
use venti::{Address, BlockPusher, BlockRef, RemoteBlocks, Store};

use crate::config::{self, Dirs, Keep};
use crate::daemon::DEFAULT_LISTEN;
use crate::error::{Error, Result};
use crate::join::{self, Inviter, JoinOutcome};
use crate::membership::{self, KeyringMode, Membership};
use crate::status::{DeviceReport, SyncReport};

/// Worker threads of the network runtime.
const NETWORK_WORKERS: usize = 2;
/// Inbound pairing and chain frames waiting for their handler; more are refused.
const OTHER_FRAMES_QUEUED_MAX: usize = 16;
/// How long the endpoint and the replica get to close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The acceptor store of the home volume's replica, in the store directory.
pub const ACCEPTOR_FILE: &str = "paxos.sqlite";

/// Everything the network needs to start, resolved from the store's membership.
pub struct NetworkPlan<'a> {
    pub identity: &'a DeviceIdentity,
    /// The user's chain, verified.
    pub chain: ChainState,
    pub volume: VolumeId,
    pub node: NodeId,
    pub genesis: Config,
    pub nodes: Vec<(NodeId, DeviceId)>,
    pub addresses: Vec<(DeviceId, Vec<SocketAddr>)>,
    /// Every epoch secret this device holds (entry keys derive from them; the newest
    /// seals).
    pub epoch_secrets: EpochSecrets,
    /// Makes an epoch learned from a key rotation durable (see [`EpochSink`]).
    pub keep_epoch: KeepEpoch,
    pub listen: SocketAddr,
    /// When `listen` is taken, listen on a free port of the same address instead
    /// (the default port, with several daemons on one machine).
    pub listen_fallback: bool,
    pub acceptor_path: PathBuf,
}

impl std::fmt::Debug for NetworkPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPlan")
            .field("volume", &self.volume)
            .field("node", &self.node)
            .field("epoch_secrets", &self.epoch_secrets)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Handles inbound frames that are neither Paxos nor block requests, on a plain
/// thread (it may block: call the volume, the replica, write files).
pub type FrameHandler = Box<dyn FnMut(Inbound) + Send>;

/// A running network side. Stop it with [`Network::stop`].
pub struct Network {
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: Endpoint,
    trust: Arc<TrustSet>,
    nodes: Arc<NodeTable>,
    replica: Replica,
    blocking: BlockingReplica,
    volume: VolumeId,
    node: NodeId,
    device: DeviceId,
    listen: SocketAddr,
    blocks: Arc<PeerBlocks>,
    pusher: Arc<PeerPusher>,
    keyring: Arc<VolumeKeyring>,
    other: Option<mpsc::Receiver<Inbound>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("device", &self.device)
            .field("node", &self.node)
            .field("volume", &self.volume)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Binds the endpoint, opens the replica and starts serving. `store` serves
    /// blocks to the volume's devices.
    pub fn start(plan: NetworkPlan<'_>, store: Arc<Store>) -> Result<Network> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(NETWORK_WORKERS)
            .thread_name("kith-net")
            .enable_all()
            .build()
            .map_err(|e| Error::Startup(format!("cannot start the network runtime: {e}")))?;
        let trust = Arc::new(TrustSet::new());
        trust.set_from_chains([&plan.chain]);
        let nodes = Arc::new(NodeTable::new(plan.nodes.iter().copied()));
        let (endpoint, inbound) = {
            let _guard = runtime.enter();
            let trust_dyn: Arc<dyn Trust> = trust.clone();
            match Endpoint::bind(plan.listen, plan.identity, trust_dyn.clone()) {
                Err(net::Error::Bind { addr, source }) if plan.listen_fallback => {
                    tracing::info!(%addr, %source, "listen address taken; using a free port");
                    let any_port = SocketAddr::new(plan.listen.ip(), 0);
                    Endpoint::bind(any_port, plan.identity, trust_dyn)?
                }
                bound => bound?,
            }
        };
        for (device, addresses) in &plan.addresses {
            if *device != plan.identity.device_id() {
                endpoint.set_addresses(*device, addresses.clone());
            }
        }
        let listen = endpoint.local_addr()?;
        let keyring = Arc::new(node_keyring(
            plan.volume,
            plan.node,
            plan.identity,
            &plan.epoch_secrets,
            plan.keep_epoch,
            nodes.clone(),
        ));
        let keys: Arc<dyn VolumeKeys> = keyring.clone();
        let link = Arc::new(QuicLink::new(endpoint.clone(), plan.volume, nodes.clone()));
        let unplaced_path = plan.acceptor_path.with_file_name(UNPLACED_FILE);
        let options = ReplicaOptions {
            node: NodeOptions::new(plan.node, plan.volume),
            genesis: plan.genesis,
            store_path: plan.acceptor_path.clone(),
            signing_key: Some(plan.identity.signing_key()),
        };
        let replica = {
            let _guard = runtime.enter();
            Replica::open(options, keys, link)?
        };
        let router = Arc::new(PaxosRouter::new(nodes.clone()));
        router.attach(replica.clone());
        let policy_nodes = nodes.clone();
        let policy_trust = trust.clone();
        let home = plan.volume;
        let policy = move |device: &DeviceId, volume: VolumeId| {
            volume == home
                && policy_nodes.node(device).is_some()
                && policy_trust.admit(device) == Admission::Member
        };
        // The server reads with `get_local`: it never relays a miss to other devices.
        let server =
            Arc::new(BlockServer::new(store.clone(), Arc::new(policy)).accepting_pushes(store));
        let (other_tx, other_rx) = mpsc::channel(OTHER_FRAMES_QUEUED_MAX);
        let dispatch = Dispatch {
            paxos: Some(router),
            blocks: Some(server),
            other: Some(other_tx),
        };
        {
            let _guard = runtime.enter();
            dispatch.spawn(inbound);
        }
        let device = plan.identity.device_id();
        let blocking = BlockingReplica::new(replica.clone())?;
        let blocks = Arc::new(PeerBlocks {
            client: BlockClient::new(endpoint.clone()),
            runtime: runtime.handle().clone(),
            volume: plan.volume,
            nodes: nodes.clone(),
            this_device: device,
            endpoint: endpoint.clone(),
            stopped: Arc::new(AtomicBool::new(false)),
            replica: blocking.clone(),
            witnesses: parking_lot::Mutex::new((None, Vec::new())),
        });
        let pusher = Arc::new(PeerPusher {
            client: BlockClient::new(endpoint.clone()),
            runtime: runtime.handle().clone(),
            volume: plan.volume,
            nodes: nodes.clone(),
            node: plan.node,
            replica: blocking.clone(),
            slow: Arc::new(parking_lot::Mutex::new(BTreeMap::new())),
            stopped: AtomicBool::new(false),
            carried: parking_lot::Mutex::new(load_unplaced(&unplaced_path)),
            unplaced_path,
        });
        tracing::info!(%listen, node = %plan.node, volume = plan.volume.0, "network up");
        Ok(Network {
            runtime: Some(runtime),
            endpoint,
            trust,
            nodes,
            replica,
            blocking,
            volume: plan.volume,
            node: plan.node,
            device,
            listen,
            blocks,
            pusher,
            keyring,
            other: Some(other_rx),
        })
    }

    /// Hands pairing and chain frames to `handler` on a thread of its own (once).
    pub fn serve_other_frames(&mut self, mut handler: FrameHandler) -> Result<()> {
        let Some(mut other) = self.other.take() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("kith-pairing".into())
            .spawn(move || {
                while let Some(inbound) = other.blocking_recv() {
                    handler(inbound);
                }
            })
            .map_err(|e| Error::Startup(format!("cannot start the pairing thread: {e}")))?;
        Ok(())
    }

    /// The replica for fossil's agreement (blocking calls from plain threads).
    pub fn blocking_replica(&self) -> BlockingReplica {
        self.blocking.clone()
    }

    /// The volume's entry keys (every epoch held here).
    pub fn keyring(&self) -> Arc<VolumeKeyring> {
        self.keyring.clone()
    }

    /// venti's hook for blocks this device does not hold.
    pub fn remote_blocks(&self) -> Arc<dyn RemoteBlocks> {
        self.blocks.clone()
    }

    /// venti's hook that places this device's new blocks on other voters.
    pub fn block_pusher(&self) -> Arc<dyn BlockPusher> {
        self.pusher.clone()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn trust(&self) -> &Arc<TrustSet> {
        &self.trust
    }

    pub fn nodes(&self) -> &Arc<NodeTable> {
        &self.nodes
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Stops the replica (its store closed), then the endpoint, then the runtime.
    pub fn stop(mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        // A store that outlives the network keeps its pushes queued instead.
        self.pusher.stopped.store(true, Ordering::SeqCst);
        self.blocks.stopped.store(true, Ordering::SeqCst);
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
        tracing::info!("network stopped");
    }
}

/// The replica's keys: the entry key of every epoch in `secrets`; authors are the
/// devices the node table names or named. A device revoked later still verifies the
/// entries it authored while it was a member (the Paxos membership, not this check,
/// stops its new ones), so every device applies the same log whatever it has heard of
/// the revocation.
fn node_keyring(
    volume: VolumeId,
    node: NodeId,
    identity: &DeviceIdentity,
    secrets: &EpochSecrets,
    keep: KeepEpoch,
    nodes: Arc<NodeTable>,
) -> VolumeKeyring {
    VolumeKeyring::new(
        volume,
        node,
        identity,
        secrets
            .iter()
            .map(|(epoch, secret)| (KeyEpoch(u64::from(epoch)), zeroize::Zeroizing::new(*secret))),
        keep,
        Box::new(move |author| nodes.author(author)?.verifying_key().ok()),
    )
}

/// Where an epoch learned from a key rotation goes: first `volume.key` (read, extended,
/// written atomically: durable before the replica reads past the rotation), then the
/// content store's keys, so new blocks are sealed with it from then on. A crash in
/// between is harmless: the store reopens with the file's epochs, and the rotation,
/// read again, finds its epoch held.
#[derive(Clone)]
struct EpochSink {
    store: PathBuf,
    /// The volume's content, once attached ([`Home::attach_content`]).
    content: Arc<parking_lot::Mutex<Option<VentiContent>>>,
}

impl EpochSink {
    fn keep(&self, epoch: KeyEpoch, secret: &[u8; 32]) -> std::result::Result<(), String> {
        let epoch = u32::try_from(epoch.0).map_err(|_| format!("epoch {epoch} out of range"))?;
        // One writer of the file at a time: the content lock serializes them.
        let content = self.content.lock();
        let mut held = membership::read_volume_key(&self.store).map_err(|e| e.to_string())?;
        if held.insert(epoch, secret).map_err(|e| e.to_string())? {
            membership::write_volume_key(&self.store, &held).map_err(|e| e.to_string())?;
        }
        if let Some(content) = content.as_ref() {
            content.add_epoch(EpochKeys::derive(secret, &held.volume_id(), epoch));
        }
        Ok(())
    }

    /// Gives `content` every epoch the file holds (one may have been learned before
    /// the content was attached) and keeps it for later rotations.
    fn attach(&self, content: VentiContent) -> Result<()> {
        let mut slot = self.content.lock();
        let held = membership::read_volume_key(&self.store)?;
        for (epoch, secret) in held.iter() {
            content.add_epoch(EpochKeys::derive(secret, &held.volume_id(), epoch));
        }
        *slot = Some(content);
        Ok(())
    }
}

/// venti's [`RemoteBlocks`]: asks the volume's other devices, connected ones first.
pub struct PeerBlocks {
    client: BlockClient,
    runtime: tokio::runtime::Handle,
    volume: VolumeId,
    nodes: Arc<NodeTable>,
    this_device: DeviceId,
    endpoint: Endpoint,
    /// The network is stopping: fetch nothing more.
    stopped: Arc<AtomicBool>,
    /// For the configuration's witnesses, which hold no blocks and are never asked.
    replica: BlockingReplica,
    /// The witnesses' devices, and when they were last read from the replica.
    witnesses: parking_lot::Mutex<(Option<Instant>, Vec<DeviceId>)>,
}

/// How long the witnesses a fetch leaves out are taken as known.
const WITNESSES_FRESH_FOR: Duration = Duration::from_secs(1);

impl std::fmt::Debug for PeerBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBlocks")
            .field("volume", &self.volume)
            .finish_non_exhaustive()
    }
}

impl PeerBlocks {
    /// The devices of the configuration's witnesses (read from the replica at most
    /// every [`WITNESSES_FRESH_FOR`]; the last answer if it cannot be asked).
    fn witnesses(&self) -> Vec<DeviceId> {
        let mut cached = self.witnesses.lock();
        if cached
            .0
            .is_some_and(|at| at.elapsed() < WITNESSES_FRESH_FOR)
        {
            return cached.1.clone();
        }
        if let Ok(status) = self.replica.status() {
            let devices = status
                .config
                .witnesses
                .iter()
                .filter_map(|node| self.nodes.device(*node))
                .collect();
            *cached = (Some(Instant::now()), devices);
        }
        cached.1.clone()
    }

    /// The other devices of the volume that may hold blocks (no witnesses), those
    /// connected now first.
    fn peers(&self) -> Vec<DeviceId> {
        let witnesses = self.witnesses();
        let mut peers: Vec<(bool, DeviceId)> = self
            .nodes
            .pairs()
            .into_iter()
            .map(|(_, device)| device)
            .filter(|device| *device != self.this_device && !witnesses.contains(device))
            .map(|device| (self.endpoint.existing_connection(&device).is_none(), device))
            .collect();
        peers.sort();
        peers.into_iter().map(|(_, device)| device).collect()
    }

    fn run<T>(
        &self,
        address: &Address,
        future: impl std::future::Future<Output = T>,
    ) -> venti::Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(venti::Error::Remote {
                address: *address,
                detail: "block fetch from inside the network runtime".into(),
            });
        }
        if self.stopped.load(Ordering::SeqCst) {
            return Err(venti::Error::Remote {
                address: *address,
                detail: "the network is stopped".into(),
            });
        }
        Ok(self.runtime.block_on(future))
    }
}

impl RemoteBlocks for PeerBlocks {
    fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
        let peers = self.peers();
        if peers.is_empty() {
            return Ok(None);
        }
        match self.run(address, self.client.fetch(self.volume, address, &peers))? {
            Ok(fetched) => Ok(Some(fetched.bytes)),
            Err(net::Error::BlockNotFound { .. }) => Ok(None),
            Err(error) => Err(venti::Error::Remote {
                address: *address,
                detail: error.to_string(),
            }),
        }
    }

    fn fetch_many(&self, addresses: &[Address]) -> venti::Result<Vec<(Address, Vec<u8>)>> {
        let peers = self.peers();
        let Some(first) = addresses.first() else {
            return Ok(Vec::new());
        };
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.run(
            first,
            self.client.fetch_many(self.volume, addresses, &peers),
        )?;
        let mut found = Vec::with_capacity(results.len());
        for (address, result) in addresses.iter().zip(results) {
            match result {
                Ok(fetched) => found.push((*address, fetched.bytes)),
                // Left out: the reader's own `get` fetches it again and reports why.
                Err(error) => tracing::debug!(%address, %error, "prefetch of a block failed"),
            }
        }
        Ok(found)
    }
}

/// Blocks written here that the last push could not place (their ops may be queued
/// or committed): 32-byte addresses back to back, replaced atomically after every push
/// that leaves some, removed after one that leaves none.
pub const UNPLACED_FILE: &str = "unplaced-pushes";
/// Largest unplaced-pushes file read back (a million addresses).
const UNPLACED_FILE_BYTES_MAX: u64 = 32 << 20;

/// The addresses in an unplaced-pushes file (none if it is missing or unreadable: the
/// blocks are still held here, only their push is lost).
fn load_unplaced(path: &Path) -> Vec<Address> {
    let bytes = match std::fs::metadata(path) {
        Ok(meta) if meta.len() <= UNPLACED_FILE_BYTES_MAX => std::fs::read(path),
        Ok(meta) => {
            tracing::warn!(
                bytes = meta.len(),
                "unplaced-pushes file too large; ignored"
            );
            return Vec::new();
        }
        Err(_) => return Vec::new(),
    };
    match bytes {
        Ok(bytes) => bytes
            .chunks_exact(Address::LEN)
            .filter_map(|chunk| <[u8; 32]>::try_from(chunk).ok().map(Address))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the unplaced-pushes file");
            Vec::new()
        }
    }
}

/// Records `left` as the blocks not placed (durably), or removes the record.
fn save_unplaced(path: &Path, left: &[Address]) -> std::io::Result<()> {
    if left.is_empty() {
        return match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    let bytes: Vec<u8> = left.iter().flat_map(|a| a.0).collect();
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// How long one push may wait for enough voters to hold it.
const PUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// The same when no voter has been heard from lately (offline: a commit cannot
/// happen either, and the background retry places the blocks once they are back).
const PUSH_TIMEOUT_UNHEARD: Duration = Duration::from_millis(300);
/// A voter silent this long counts as unheard.
const HEARD_RECENTLY_MS: u64 = 3_000;
/// Without an answer from the voters asked, ask one more after this long.
const PUSH_HEDGE: Duration = Duration::from_millis(1500);
/// A voter that failed or was outrun on a push goes last for this long.
const SLOW_FOR: Duration = Duration::from_secs(10);
/// Pushes of one sync in flight at once (each up to `PUSH_SEALED_BYTES_MAX`).
const PUSHES_IN_FLIGHT: usize = 4;
/// How often the background thread retries blocks no push has placed yet.
const PUSH_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// venti's [`BlockPusher`]: places blocks written here on enough other voters that
/// every quorum of the volume includes a device holding them, before fossil proposes
/// the op naming them.
///
/// With `n` voters and quorums of `q` (the smaller of the two phases'), a voter's
/// write needs `n − q` other holders, and at least one when there is another voter
/// (with two voters both hold it, as commit needs both); a writer that is not a
/// voter needs `n − q + 1`. Witnesses hold sealed entries only and are never asked.
/// Voters heard from most recently are asked first, `needed` at once; a failure or
/// [`PUSH_HEDGE`] without an answer brings in the next; a push is placed when
/// `needed` of them answered that it is durable there. A push not placed within
/// [`PUSH_TIMEOUT`] stops this round: its blocks and the ones after it are returned
/// to venti's queue (retried at the next sync and every [`PUSH_RETRY_INTERVAL`]) and
/// recorded in [`UNPLACED_FILE`] before `push` returns, so a restart pushes them too.
pub struct PeerPusher {
    client: BlockClient,
    runtime: tokio::runtime::Handle,
    volume: VolumeId,
    nodes: Arc<NodeTable>,
    node: NodeId,
    replica: BlockingReplica,
    /// Voters that failed or were outrun lately, until when they go last.
    slow: Arc<parking_lot::Mutex<BTreeMap<DeviceId, Instant>>>,
    /// The network is stopping: push nothing more.
    stopped: AtomicBool,
    /// Where the blocks a push could not place are kept across restarts, and those
    /// read from it at start (handed over with the first push).
    unplaced_path: PathBuf,
    carried: parking_lot::Mutex<Vec<Address>>,
}

impl std::fmt::Debug for PeerPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPusher")
            .field("volume", &self.volume)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Who to push to, and how many of them must hold a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTargets {
    /// Other voters (no witnesses), best first.
    pub candidates: Vec<DeviceId>,
    pub needed: usize,
    /// Some candidate was heard from lately.
    pub any_heard: bool,
    /// Every candidate failed or was outrun on a push lately.
    pub all_slow: bool,
}

/// Holders besides the writer that every quorum of `config` must meet.
pub fn holders_needed(config: &Config, writer: NodeId) -> usize {
    let voters = config.voters.len();
    let quorum = usize::from(config.phase1_quorum.min(config.phase2_quorum));
    if !config.voters.contains(&writer) {
        return (voters + 1).saturating_sub(quorum);
    }
    let needed = voters.saturating_sub(quorum);
    if voters >= 2 { needed.max(1) } else { needed }
}

/// The voters to push to, best first: not slow lately, then heard from most recently;
/// and how many must hold each push.
fn push_targets(
    config: &Config,
    heard_ms_ago: &BTreeMap<NodeId, Option<u64>>,
    writer: NodeId,
    device_of: impl Fn(NodeId) -> Option<DeviceId>,
    is_slow: impl Fn(&DeviceId) -> bool,
) -> PushTargets {
    let mut ranked: Vec<(bool, u64, DeviceId)> = config
        .voters
        .iter()
        .filter(|node| **node != writer && !config.witnesses.contains(node))
        .filter_map(|node| {
            let device = device_of(*node)?;
            let heard = heard_ms_ago
                .get(node)
                .copied()
                .flatten()
                .unwrap_or(u64::MAX);
            Some((is_slow(&device), heard, device))
        })
        .collect();
    ranked.sort();
    let any_heard = ranked
        .iter()
        .any(|(_, heard, _)| *heard <= HEARD_RECENTLY_MS);
    let all_slow = !ranked.is_empty() && ranked.iter().all(|(slow, _, _)| *slow);
    let candidates: Vec<DeviceId> = ranked.into_iter().map(|(_, _, device)| device).collect();
    let needed = holders_needed(config, writer).min(candidates.len());
    PushTargets {
        candidates,
        needed,
        any_heard,
        all_slow,
    }
}

impl PeerPusher {
    fn targets(&self) -> venti::Result<PushTargets> {
        let status = self
            .replica
            .status()
            .map_err(|error| venti::Error::Remote {
                address: Address([0; 32]),
                detail: format!("replica status: {error}"),
            })?;
        let now = Instant::now();
        let slow = {
            let mut slow = self.slow.lock();
            slow.retain(|_, until| *until > now);
            slow.clone()
        };
        Ok(push_targets(
            &status.config,
            &status.heard_ms_ago,
            self.node,
            |node| self.nodes.device(node),
            |device| slow.contains_key(device),
        ))
    }
}

/// One push placed on `targets.needed` of its candidates before `deadline`, or why
/// not. Candidates that fail or are outrun are marked slow.
async fn place(
    client: BlockClient,
    slow: Arc<parking_lot::Mutex<BTreeMap<DeviceId, Instant>>>,
    body: Arc<Vec<u8>>,
    targets: Arc<PushTargets>,
    deadline: tokio::time::Instant,
) -> std::result::Result<(), String> {
    let mark_slow = |device: DeviceId| {
        slow.lock().insert(device, Instant::now() + SLOW_FOR);
    };
    let mut running = tokio::task::JoinSet::new();
    let mut asked: Vec<DeviceId> = Vec::new();
    let start = |running: &mut tokio::task::JoinSet<_>, asked: &mut Vec<DeviceId>| {
        let Some(peer) = targets.candidates.get(asked.len()).copied() else {
            return;
        };
        asked.push(peer);
        let (client, body) = (client.clone(), body.clone());
        running.spawn(async move { (peer, client.push_to(peer, &body).await) });
    };
    for _ in 0..targets.needed {
        start(&mut running, &mut asked);
    }
    let mut held: Vec<DeviceId> = Vec::new();
    let mut hedge = tokio::time::Instant::now() + PUSH_HEDGE;
    let mut last_error = String::from("no voter to push to");
    loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                None => return Err(last_error),
                Some(Ok((peer, Ok(())))) => {
                    held.push(peer);
                    if held.len() >= targets.needed {
                        // Those still running were outrun: ask the faster first next time.
                        for peer in asked.iter().filter(|peer| !held.contains(peer)) {
                            mark_slow(*peer);
                        }
                        return Ok(());
                    }
                }
                Some(Ok((peer, Err(error)))) => {
                    tracing::debug!(%peer, %error, "block push failed; asking the next voter");
                    mark_slow(peer);
                    last_error = format!("{peer}: {error}");
                    start(&mut running, &mut asked);
                }
                Some(Err(error)) => last_error = error.to_string(),
            },
            () = tokio::time::sleep_until(hedge), if asked.len() < targets.candidates.len() => {
                start(&mut running, &mut asked);
                hedge = tokio::time::Instant::now() + PUSH_HEDGE;
            }
            () = tokio::time::sleep_until(deadline) => {
                for peer in asked.iter().filter(|peer| !held.contains(peer)) {
                    mark_slow(*peer);
                }
                return Err(format!(
                    "held by {} of the {} voter(s) needed in time (last failure: {last_error})",
                    held.len(),
                    targets.needed
                ));
            }
        }
    }
}

impl PeerPusher {
    /// After a push: `left` is every block whose op may be proposed and that no
    /// voter holds yet (venti hands each push its whole queue, pushes run one at a
    /// time, and blocks noted since are pushed before their ops are proposed).
    fn keep_unplaced(&self, left: &[Address]) {
        if let Err(error) = save_unplaced(&self.unplaced_path, left) {
            tracing::warn!(%error, blocks = left.len(), "cannot record the unplaced pushes");
        }
    }
}

impl BlockPusher for PeerPusher {
    fn push(&self, store: &Store, addresses: &[Address]) -> venti::Result<Vec<Address>> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(addresses.to_vec());
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(venti::Error::Remote {
                address: addresses.first().copied().unwrap_or(Address([0; 32])),
                detail: "block push from inside the network runtime".into(),
            });
        }
        // Blocks a previous run could not place go with the first push.
        let mut with_carried = addresses.to_vec();
        with_carried.append(&mut self.carried.lock());
        with_carried.sort_unstable();
        with_carried.dedup();
        let addresses = &with_carried[..];
        let targets = match self.targets() {
            Ok(targets) => Arc::new(targets),
            Err(error) => {
                // All stay queued, those carried over included.
                tracing::info!(%error, "no push targets; blocks stay queued");
                self.keep_unplaced(addresses);
                return Ok(addresses.to_vec());
            }
        };
        if targets.needed == 0 {
            self.keep_unplaced(&[]);
            return Ok(Vec::new());
        }
        if !targets.any_heard && targets.all_slow {
            // Every voter that could take them failed a push lately and has not been
            // heard from since (the other device of two is off, while a witness keeps
            // the quorum): keep them queued now rather than wait out another push
            // nobody answers. The retry thread places them once a voter is heard.
            self.keep_unplaced(addresses);
            return Ok(addresses.to_vec());
        }
        let timeout = if targets.any_heard {
            PUSH_TIMEOUT
        } else {
            PUSH_TIMEOUT_UNHEARD
        };
        let started = Instant::now();
        type Placed = (Vec<Address>, std::result::Result<(), String>);
        let left = self.runtime.block_on(async {
            let mut in_flight: tokio::task::JoinSet<Placed> = tokio::task::JoinSet::new();
            let mut failed = false;
            let mut left: Vec<Address> = Vec::new();
            let mut rest = addresses.iter();
            loop {
                // One push's worth of blocks still held here (read on this thread, not
                // on a runtime worker).
                let mut batch: Vec<(Address, Vec<u8>)> = Vec::new();
                let mut batch_bytes = 0usize;
                let mut exhausted = true;
                for address in rest.by_ref() {
                    if failed {
                        left.push(*address);
                        continue;
                    }
                    match store.get_local(address) {
                        Ok(bytes) => {
                            batch_bytes += bytes.len();
                            batch.push((*address, bytes));
                        }
                        // Gone here (a rolled-back put, removed): nothing to place.
                        Err(venti::Error::NotFound { .. }) => {}
                        Err(error) => {
                            tracing::warn!(%address, %error, "reading a block to push failed");
                            left.push(*address);
                        }
                    }
                    if batch.len() >= net::blocks::PUSH_BLOCKS_MAX
                        || batch_bytes + venti::seal::SEALED_BYTES_MAX
                            > net::blocks::PUSH_SEALED_BYTES_MAX
                    {
                        exhausted = false;
                        break;
                    }
                }
                if !batch.is_empty() {
                    let batch_addresses: Vec<Address> = batch.iter().map(|(a, _)| *a).collect();
                    let blocks: Vec<(Address, &[u8])> =
                        batch.iter().map(|(a, b)| (*a, b.as_slice())).collect();
                    match net::blocks::encode_push(self.volume, &blocks) {
                        Ok(body) => {
                            let placed = place(
                                self.client.clone(),
                                self.slow.clone(),
                                Arc::new(body),
                                targets.clone(),
                                tokio::time::Instant::now() + timeout,
                            );
                            in_flight.spawn(async move { (batch_addresses, placed.await) });
                        }
                        Err(error) => {
                            tracing::warn!(%error, "encoding a block push failed");
                            left.extend(batch_addresses);
                        }
                    }
                }
                while in_flight.len() >= PUSHES_IN_FLIGHT || (exhausted && !in_flight.is_empty()) {
                    match in_flight.join_next().await {
                        Some(Ok((_, Ok(())))) | None => {}
                        Some(Ok((batch_addresses, Err(error)))) => {
                            tracing::info!(
                                blocks = batch_addresses.len(),
                                %error,
                                "blocks not placed on other voters; kept queued"
                            );
                            // The voters are not answering: stop this round.
                            failed = true;
                            left.extend(batch_addresses);
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "a block push task failed");
                            failed = true;
                        }
                    }
                }
                if exhausted {
                    return left;
                }
            }
        });
        tracing::debug!(
            blocks = addresses.len(),
            left = left.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "block push"
        );
        self.keep_unplaced(&left);
        Ok(left)
    }
}

/// How often the content walk runs when nothing is left to fetch (or on demand).
const CONTENT_WALK_INTERVAL: Duration = Duration::from_secs(10);
/// A counting walk is followed by at least this many times its own duration of rest
/// (at most 1/20 of a core).
const CONTENT_WALK_PACE: u32 = 20;
/// How soon a full copy that is still missing blocks walks again.
const CONTENT_FETCH_RETRY: Duration = Duration::from_secs(2);
/// Leaves fetched in one batch by a full copy.
const CONTENT_FETCH_BATCH: usize = 64;

/// What the background content walk last found, for `kith status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentProgress {
    pub keep: Keep,
    /// Whether a walk has finished yet (before: the byte counts mean nothing).
    pub walked: bool,
    /// Content bytes of the distinct file trees the namespace refers to (the lengths
    /// their roots declare: plaintext, before compression and sealing).
    pub referenced_bytes: u64,
    /// Of those, bytes under blocks this device does not hold.
    pub missing_bytes: u64,
    /// A full copy is fetching now.
    pub fetching: bool,
}

/// The result of one walk over the namespace's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentCount {
    pub referenced_bytes: u64,
    pub missing_bytes: u64,
}

/// A [`venti::BlockStore`] that reads only what the store holds (a walk that counts
/// must not fetch).
struct LocalOnly<'s>(&'s Store);

impl venti::BlockStore for LocalOnly<'_> {
    fn put(&self, address: &Address, sealed: &[u8], class: venti::Class) -> venti::Result<()> {
        self.0.put(address, sealed, class)
    }

    fn get(&self, address: &Address) -> venti::Result<Vec<u8>> {
        self.0.get_local(address)
    }

    fn contains(&self, address: &Address) -> venti::Result<bool> {
        self.0.contains(address)
    }
}

/// Trees a walk found whole (every block held here). Content under a root never
/// changes, so a whole tree stays whole until the store drops a block (eviction,
/// `remove`): then [`Store::removals`] moves and every tree is walked again. Without
/// this memory every round re-read every pointer block and looked up every block of
/// the volume, however little had changed.
#[derive(Debug, Default)]
pub struct WholeTrees {
    roots: HashSet<Address>,
    /// `Store::removals` when `roots` was last known to be right.
    removals: u64,
}

/// Walks the trees under `roots` (each distinct block once), skipping trees `whole`
/// knows to be held. Counting (`fetch` false): a block not held here adds its
/// subtree's declared length to the missing bytes and is not descended (what is under
/// it cannot be seen without fetching it); trees found whole are remembered, and
/// trees no longer among `roots` forgotten. Fetching: a block not held here is
/// fetched (leaves in batches, through the store's remote) and descended, so
/// afterwards every block is held unless a fetch failed. Stops early, with what it
/// has, when `stop` is set.
pub fn walk_content(
    store: &Store,
    keys: &dyn Fn(u32) -> Option<Arc<EpochKeys>>,
    roots: &[BlockRef],
    fetch: bool,
    whole: &mut WholeTrees,
    stop: &AtomicBool,
) -> ContentCount {
    // Read before walking: a block dropped during the walk moves it past this value.
    let removals = store.removals();
    if removals != whole.removals {
        whole.roots.clear();
        whole.removals = removals;
    }
    let local = LocalOnly(store);
    let reader_store: &dyn venti::BlockStore = if fetch { store } else { &local };
    let mut count = ContentCount::default();
    let mut seen: HashSet<Address> = HashSet::new();
    // Set once a block was missing or a tree could not be read: from then on a block
    // seen before may head a subtree that is not whole, so sharing one proves nothing.
    let mut round_incomplete = false;
    let mut seen_roots: HashSet<Address> = HashSet::new();
    for root in roots {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !seen_roots.insert(root.address) {
            continue;
        }
        count.referenced_bytes += root.length;
        if whole.roots.contains(&root.address) {
            continue;
        }
        // Each tree is of one epoch: its root's.
        let Some(epoch_keys) = keys(root.epoch) else {
            tracing::debug!(root = %root.address, epoch = root.epoch, "content walk: a tree of a key epoch not held here");
            continue;
        };
        let reader = TreeReader::new(reader_store, &epoch_keys);
        let mut batch: Vec<Address> = Vec::new();
        let mut tree_whole = true;
        let walked = reader.walk(root, |block| {
            if stop.load(Ordering::Relaxed) {
                tree_whole = false;
                round_incomplete = true;
                return Ok(false);
            }
            if !seen.insert(block.address) {
                tree_whole &= !round_incomplete;
                return Ok(false);
            }
            if store.contains(&block.address)? {
                return Ok(true);
            }
            tree_whole = false;
            round_incomplete = true;
            if !fetch {
                count.missing_bytes += block.length;
                return Ok(false);
            }
            batch.push(block.address);
            if batch.len() >= CONTENT_FETCH_BATCH {
                store.prefetch(&batch)?;
                batch.clear();
            }
            // A pointer block is read (fetched alone if the batch did not bring it)
            // when the walk descends into it.
            Ok(true)
        });
        let fetched = if fetch && !batch.is_empty() {
            store.prefetch(&batch)
        } else {
            Ok(())
        };
        match walked.and(fetched) {
            // Fetching proves nothing yet: the counting walk after it decides.
            Ok(()) if tree_whole && !fetch => {
                whole.roots.insert(root.address);
            }
            Ok(()) => {}
            Err(error) => {
                round_incomplete = true;
                // Counting: a held pointer block that cannot be read is damaged here;
                // fetching: a block no device sent. The next walk tries again.
                tracing::debug!(root = %root.address, %error, "content walk: a tree was not walked whole");
                seen.remove(&root.address);
            }
        }
    }
    if !fetch && !stop.load(Ordering::Relaxed) {
        whole.roots.retain(|root| seen_roots.contains(root));
    }
    count
}

fn content_walk_loop(
    store: &Store,
    keys: &dyn Fn(u32) -> Option<Arc<EpochKeys>>,
    keep: Keep,
    volume: &parking_lot::Mutex<Weak<Volume>>,
    stopping: &AtomicBool,
    progress: &parking_lot::Mutex<ContentProgress>,
) {
    let mut whole = WholeTrees::default();
    while !stopping.load(Ordering::SeqCst) {
        // The volume only for the roots: a walk never keeps it from closing.
        let upgraded = volume.lock().upgrade();
        let roots = upgraded.map(|volume| volume.live_roots());
        let mut wait = CONTENT_WALK_INTERVAL;
        match roots {
            None => wait = STOP_POLL,
            Some(Err(error)) => tracing::warn!(%error, "content walk: no roots"),
            Some(Ok(roots)) => {
                if keep == Keep::Full {
                    // Whole trees are skipped, so with everything held this is cheap.
                    progress.lock().fetching = true;
                    walk_content(store, keys, &roots, true, &mut whole, stopping);
                }
                let counting = Instant::now();
                let count = walk_content(store, keys, &roots, false, &mut whole, stopping);
                let counted_in = counting.elapsed();
                let missing = count.missing_bytes;
                {
                    let mut progress = progress.lock();
                    progress.walked = true;
                    progress.fetching = false;
                    progress.referenced_bytes = count.referenced_bytes;
                    progress.missing_bytes = missing;
                }
                if keep == Keep::Full && missing > 0 {
                    wait = CONTENT_FETCH_RETRY;
                }
                // Counting that still reads much (an on-demand device whose cache
                // evicts walks every tree again) takes at most a share of one core.
                wait = wait.max(counted_in * CONTENT_WALK_PACE);
            }
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(STOP_POLL);
        }
    }
}

/// Announcements of the user chain and the volume's devices go to every other device
/// this often (and at once after a join), so a device that was away learns newcomers.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// Tries at proposing a joined device as a member (the leader may be changing).
const VOTER_ATTEMPTS_MAX: u32 = 20;
const VOTER_RETRY: Duration = Duration::from_millis(250);
/// How often a sleeping announcer looks for a stop.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long `kith device remove` waits for the key rotation to commit.
const ROTATION_WAIT: Duration = Duration::from_secs(10);
/// How often the root-key daemon finishes owed promotions and removals.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// A learner is promoted once its reported commit index is within this many slots of
/// the commit end: one catch-up answer (`paxos::limits::CATCHUP_ENTRIES_MAX`). A
/// learner reports where it is only when it pulls (from that index), and it stops
/// pulling once one answer brought it to the end; so a caught-up learner of an idle
/// volume last reported at most one answer's worth below the end. (etcd promotes a
/// learner at 90 % of the leader's index.)
pub const PROMOTE_WITHIN_SLOTS: u64 = paxos::limits::CATCHUP_ENTRIES_MAX as u64;
/// How long one reconcile step waits to see the rotation it proposed committed.
const ROTATION_POLL: Duration = Duration::from_millis(100);
/// Test hook: with this set in the daemon's environment, `kith device remove` kills the
/// daemon (SIGKILL) right after `Remove(node)` took effect and before the key rotation
/// is proposed — the crash the owed-removal record exists for. Tests only.
pub const KILL_AFTER_REMOVE_ENV: &str = "KITH_TEST_KILL_AFTER_REMOVE";

/// The learners of `status.config` to make voters, lowest node first: those
/// `is_candidate` accepts (the daemon's rule: a live device of the user's chain,
/// connected now — a learner whose daemon is not running is never made a voter, every
/// quorum would then need it) whose reported commit index (so: heard since this
/// replica started) is within [`PROMOTE_WITHIN_SLOTS`] of the commit end as `status`
/// (the leader's) sees it. Witnesses are voters, never learners, so none is here.
///
/// Connected rather than "heard lately": a learner that has caught up on an idle
/// volume sends the leader nothing (it pulls only when told of new commits), while
/// its connection stays up as long as its daemon runs.
pub fn learners_to_promote(
    status: &ReplicaStatus,
    is_candidate: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    status
        .config
        .learners
        .iter()
        .copied()
        .filter(|node| is_candidate(*node))
        .filter(|node| {
            status.reported_commit.get(node).is_some_and(|slot| {
                slot.0.saturating_add(PROMOTE_WITHIN_SLOTS) >= status.commit_end.0
            })
        })
        .collect()
}

/// A key rotation proposed for owed removals, not seen committed yet.
#[derive(Clone, Debug)]
struct RotationInFlight {
    id: ProposalId,
    /// The nodes it leaves out (the owed removals when it was proposed).
    excluded: BTreeSet<NodeId>,
}

/// A key rotation just proposed.
struct ProposedRotation {
    id: ProposalId,
    epoch: KeyEpoch,
    /// Devices it is sealed to.
    shared: usize,
}

/// What a [`Home`] is started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HomeRole {
    /// A daemon: it announces where it listens and answers joins.
    Daemon,
    /// A one-off command (`verify`, `snapshot` with no daemon running): the replica
    /// only, on a port nobody is told about.
    Command,
}

/// The home volume's network side in a daemon: membership, network, pairing.
pub struct Home {
    network: parking_lot::Mutex<Option<Network>>,
    keyring_mode: KeyringMode,
    creator: bool,
    fossil_device: fossil::op::DeviceId,
    listen: SocketAddr,
    venti: Arc<Store>,
    devices: Arc<Devices>,
    stopping: Arc<AtomicBool>,
    content: Arc<parking_lot::Mutex<ContentProgress>>,
    epoch_sink: EpochSink,
}

/// What pairing, announcements and status share: the membership and the network's
/// views of it (trust, node table, addresses), kept in step by `Membership::publish`.
struct Devices {
    store: PathBuf,
    membership: parking_lot::Mutex<Membership>,
    inviter: parking_lot::Mutex<Inviter>,
    trust: Arc<TrustSet>,
    nodes: Arc<NodeTable>,
    endpoint: Endpoint,
    blocking: BlockingReplica,
    /// The volume joins are granted in, once it is open.
    volume: parking_lot::Mutex<Weak<Volume>>,
    /// The volume's entry keys (the newest epoch held here).
    keyring: Arc<VolumeKeyring>,
    /// One removal or owed-removal step at a time; the rotation proposed for owed
    /// removals while it has not been seen committed.
    removing: parking_lot::Mutex<Option<RotationInFlight>>,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("store", &self.devices.store)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Home {
    /// Loads (or on first run creates) the store's membership and starts the network.
    /// `venti_store` serves this device's blocks to the others.
    pub fn start(
        store: &Path,
        dirs: &Dirs,
        config: &config::Config,
        listen: Option<SocketAddr>,
        venti_store: Arc<Store>,
        role: HomeRole,
    ) -> Result<Home> {
        let mut membership = Membership::load_or_create(store, dirs, config)?;
        let epoch_sink = EpochSink {
            store: store.to_owned(),
            content: Arc::new(parking_lot::Mutex::new(None)),
        };
        let sink = epoch_sink.clone();
        let plan = NetworkPlan {
            identity: &membership.keyring.device,
            chain: membership.chain_state()?,
            volume: membership.volume,
            node: membership.node,
            genesis: membership.genesis.clone(),
            nodes: membership.nodes.clone(),
            addresses: membership.addresses.clone(),
            // `volume.key` as it is now (the membership's copy is as of loading).
            epoch_secrets: {
                membership.epoch_secrets()?;
                membership::read_volume_key(store)?
            },
            keep_epoch: Box::new(move |epoch, secret| sink.keep(epoch, secret)),
            listen: listen.unwrap_or(DEFAULT_LISTEN),
            listen_fallback: listen.is_none(),
            acceptor_path: store.join(ACCEPTOR_FILE),
        };
        let network = Network::start(plan, venti_store.clone())?;
        // Where this device listens goes into its announcements.
        let own = reachable_addresses(network.listen());
        if role == HomeRole::Daemon
            && membership.set_own_addresses(own)
            && let Err(error) = membership.save(store)
        {
            network.stop();
            return Err(error);
        }
        let creator = membership.genesis.voters.contains(&membership.node);
        let fossil_device = match membership.fossil_device() {
            Ok(device) => device,
            Err(error) => {
                network.stop();
                return Err(error);
            }
        };
        let keyring_mode = membership.keyring_mode();
        let keyring = network.keyring();
        let devices = Arc::new(Devices {
            store: store.to_owned(),
            membership: parking_lot::Mutex::new(membership),
            inviter: parking_lot::Mutex::new(Inviter::new()),
            trust: network.trust().clone(),
            nodes: network.nodes().clone(),
            endpoint: network.endpoint().clone(),
            blocking: network.blocking_replica(),
            volume: parking_lot::Mutex::new(Weak::new()),
            keyring,
            removing: parking_lot::Mutex::new(None),
        });
        let home = Home {
            listen: network.listen(),
            network: parking_lot::Mutex::new(Some(network)),
            keyring_mode,
            creator,
            fossil_device,
            venti: venti_store,
            devices,
            stopping: Arc::new(AtomicBool::new(false)),
            content: Arc::new(parking_lot::Mutex::new(ContentProgress::default())),
            epoch_sink,
        };
        if role == HomeRole::Daemon
            && let Err(error) = home.spawn_threads()
        {
            home.stop();
            return Err(error);
        }
        Ok(home)
    }

    /// Whether this device created the volume (it proposes its genesis).
    /// This device (its key's fingerprint is what `kith status` and the chain show).
    pub fn device(&self) -> DeviceId {
        self.devices.membership.lock().device()
    }

    pub fn is_creator(&self) -> bool {
        self.creator
    }

    pub fn fossil_device(&self) -> fossil::op::DeviceId {
        self.fossil_device
    }

    /// Whether a device other than this one that may write is a member of the volume
    /// (a voter or learner; witnesses hold no blocks); `true` when the replica cannot
    /// say.
    pub fn has_other_writers(&self) -> bool {
        let me = self.devices.membership.lock().node;
        match self.blocking_replica().status() {
            Ok(status) => {
                let config = &status.config;
                let writers = config.voters.difference(&config.witnesses);
                writers.chain(&config.learners).any(|node| *node != me)
            }
            Err(_) => true,
        }
    }

    pub fn blocking_replica(&self) -> BlockingReplica {
        self.devices.blocking.clone()
    }

    pub fn remote_blocks(&self) -> Option<Arc<dyn RemoteBlocks>> {
        self.network.lock().as_ref().map(|n| n.remote_blocks())
    }

    /// venti's hook that places new blocks on other voters before their op is proposed.
    pub fn block_pusher(&self) -> Option<Arc<dyn BlockPusher>> {
        self.network.lock().as_ref().map(|n| n.block_pusher())
    }

    /// Walks the volume's content in the background (`kith status`'s bytes to fetch),
    /// and with `keep = "full"` fetches every block it refers to; see [`walk_content`].
    /// Fetched blocks go to the class `keep` says (set the store's remote to match).
    pub fn start_content_walk(&self, content: VentiContent, keep: Keep) -> Result<()> {
        self.content.lock().keep = keep;
        let (venti, devices, stopping, progress) = (
            self.venti.clone(),
            self.devices.clone(),
            self.stopping.clone(),
            self.content.clone(),
        );
        std::thread::Builder::new()
            .name("kith-content".into())
            .spawn(move || {
                let keys = |epoch| content.epoch_keys(epoch).ok();
                content_walk_loop(&venti, &keys, keep, &devices.volume, &stopping, &progress)
            })
            .map_err(|e| Error::Startup(format!("cannot start the content thread: {e}")))?;
        Ok(())
    }

    /// The volume's content store learns every key epoch this device learns (from now
    /// on, and those already in `volume.key`): new blocks are sealed with the newest.
    pub fn attach_content(&self, content: &VentiContent) -> Result<()> {
        self.epoch_sink.attach(content.clone())
    }

    /// Joins are answered from now on: they grant the new device access in `volume`
    /// (weak: a stopping daemon lets go of it).
    pub fn serve(&self, volume: Weak<Volume>) {
        *self.devices.volume.lock() = volume;
    }

    /// Handles announcements and joins, and announces this device to the others, from
    /// the start: a device that joined must be heard before its volume can open.
    fn spawn_threads(&self) -> Result<()> {
        let devices = self.devices.clone();
        let handler: FrameHandler = Box::new(move |inbound: Inbound| devices.on_frame(inbound));
        if let Some(network) = self.network.lock().as_mut() {
            network.serve_other_frames(handler)?;
        }
        let devices = self.devices.clone();
        self.spawn_every("kith-announce", "announce", ANNOUNCE_INTERVAL, move || {
            devices.announce();
            // Unknown devices are admitted for pairing only while a code is open.
            devices.inviter.lock().expire(&devices.trust);
        })?;
        let venti = self.venti.clone();
        self.spawn_every("kith-push", "push", PUSH_RETRY_INTERVAL, move || {
            if venti.push_stats().unpushed_blocks > 0
                && let Err(error) = venti.push_unpushed()
            {
                tracing::warn!(%error, "retrying block pushes failed");
            }
        })?;
        let holds_root = self.devices.membership.lock().keyring.user_root.is_some();
        if holds_root {
            let devices = self.devices.clone();
            self.spawn_every(
                "kith-members",
                "membership",
                RECONCILE_INTERVAL,
                move || {
                    devices.reconcile();
                },
            )?;
        }
        Ok(())
    }

    /// A thread `name` that runs `work` every `interval` until the network stops
    /// (checking for the stop every `STOP_POLL`).
    fn spawn_every(
        &self,
        name: &str,
        what: &str,
        interval: Duration,
        mut work: impl FnMut() + Send + 'static,
    ) -> Result<()> {
        let stopping = self.stopping.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    work();
                    let deadline = Instant::now() + interval;
                    while Instant::now() < deadline && !stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(STOP_POLL);
                    }
                }
            })
            .map_err(|e| Error::Startup(format!("cannot start the {what} thread: {e}")))?;
        Ok(())
    }

    /// `kith device remove WHO`: see [`Devices::device_remove`].
    pub fn device_remove(&self, who: &str) -> Result<String> {
        self.devices.device_remove(who)
    }

    /// A one-time pairing code that adds a `role`, as text.
    fn pairing_code(&self, role: net::pairing::JoinRole) -> Result<String> {
        let devices = &self.devices;
        let membership = devices.membership.lock();
        let code = devices.inviter.lock().issue_code_as(
            role,
            &membership,
            &devices.trust,
            &reachable_addresses(self.listen),
        )?;
        Ok(code.to_text())
    }

    /// `kith device add`: a one-time code (line 1) and what to do with it.
    pub fn device_add(&self) -> Result<String> {
        let text = self.pairing_code(net::pairing::JoinRole::Device)?;
        Ok(format!(
            "{text}\non the new device, with a fresh store: kith device join {text}\n\
             (valid 10 minutes, once)\n"
        ))
    }

    /// `kith witness add`: a one-time code that adds a witness (line 1) and what to do
    /// with it. The code's role is kept here: its answer never carries the volume key.
    pub fn witness_add(&self) -> Result<String> {
        let text = self.pairing_code(net::pairing::JoinRole::Witness)?;
        Ok(format!(
            "{text}\non the witness machine, with a fresh store: kith witness join {text}\n\
             then: kith witness run (valid 10 minutes, once)\n"
        ))
    }

    /// The sync part of `kith status`.
    pub fn report(&self, sync: fossil::volume::SyncStatus) -> Result<SyncReport> {
        let replica = self.devices.blocking.status()?;
        let remote = self.venti.remote_stats();
        let membership = self.devices.membership.lock();
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
                online: *device == me
                    || self.devices.endpoint.existing_connection(device).is_some(),
                this: *device == me,
            })
            .collect();
        Ok(SyncReport {
            listen: self.listen,
            keyring_encrypted: self.keyring_mode == KeyringMode::Encrypted,
            config: replica.config,
            leader: replica.leader,
            commit_end: replica.commit_end.0.max(sync.commit_end),
            applied_end: sync.applied_end,
            queued: sync.pending,
            fetches_in_flight: remote.fetches_in_flight,
            fetched_bytes: remote.fetched_bytes,
            unpushed_blocks: self.venti.push_stats().unpushed_blocks,
            content: *self.content.lock(),
            devices,
        })
    }

    /// Stops announcing, then the replica and the endpoint (after the volume closed).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(network) = self.network.lock().take() {
            network.stop();
        }
    }
}

impl Devices {
    /// Sends this device's announcement to every other device of the volume.
    fn announce(&self) {
        membership::announce(&self.membership, &self.endpoint);
    }

    /// `kith device remove WHO`: records the removal as owed
    /// ([`membership::REMOVALS_OWED_FILE`]), removes the device's vote (while it is
    /// still trusted: with two voters that change needs it for its quorum), waiting up
    /// to `REMOVE_VOTE_WAIT` for the change to take effect; rotates the volume key past
    /// it; then revokes it in the user chain, stops trusting it (its connections close)
    /// and tells the others. The revocation happens whether or not the vote could be
    /// removed; the record goes once the rotation has committed (else the reconcile
    /// step finishes it, after a restart too).
    fn device_remove(&self, who: &str) -> Result<String> {
        const REMOVE_VOTE_WAIT: Duration = Duration::from_secs(5);
        let mut in_flight = self.removing.lock();
        let target = self.membership.lock().revocable(&self.store, who)?;
        let mut vote = String::new();
        let mut rotation = String::new();
        let mut rotated_past = None;
        if let Some(node) = target.node {
            let mut owed = match membership::read_removals_owed(&self.store) {
                Ok(owed) => owed,
                Err(error) => {
                    // Rewritten below: the rotation proposed now is sealed to the
                    // configuration's devices, which leaves out those already removed.
                    tracing::warn!(%error, "the owed-removal record is damaged; starting a new one");
                    BTreeSet::new()
                }
            };
            owed.insert(node);
            membership::write_removals_owed(&self.store, &owed)?;
            let change = MembershipChange::Remove(node);
            let proposed = self.blocking.change_membership(change);
            let deadline = Instant::now() + REMOVE_VOTE_WAIT;
            let removed = || {
                self.blocking
                    .status()
                    .is_ok_and(|status| !status.config.is_member(node))
            };
            while proposed.is_ok() && !removed() && Instant::now() < deadline {
                std::thread::sleep(VOTER_RETRY);
            }
            if std::env::var_os(KILL_AFTER_REMOVE_ENV).is_some() && removed() {
                tracing::warn!("{KILL_AFTER_REMOVE_ENV} is set: stopping as a crash would");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
            vote = match proposed {
                Ok(()) if removed() => format!("its vote (node {}) is removed\n", node.0),
                Ok(()) => format!(
                    "removing its vote (node {}) has not taken effect yet (it needs a quorum \
                     without that device)\n",
                    node.0
                ),
                Err(error) => format!("its vote (node {}) could not be removed: {error}\n", node.0),
            };
            // What the device holds stays readable to it; what is written from now on
            // is sealed under an epoch it never gets.
            rotation = match self.rotate_past(&owed) {
                Ok((message, None)) => {
                    rotated_past = Some(owed);
                    message
                }
                Ok((message, Some(flight))) => {
                    *in_flight = Some(flight);
                    message
                }
                Err(error) => format!("the volume key was not rotated: {error}\n"),
            };
        }
        let revoked = {
            let mut membership = self.membership.lock();
            let revoked = membership.revoke(&self.store, who)?;
            membership.publish(&self.trust, &self.nodes, &self.endpoint)?;
            revoked
        };
        if let Some(owed) = rotated_past {
            self.removals_finished(&owed);
        }
        self.announce();
        Ok(format!(
            "removed {} ({})\n{vote}{rotation}",
            revoked.name, revoked.device
        ))
    }

    /// Proposes a rotation past `excluded` and waits up to `ROTATION_WAIT` for it to
    /// commit (then nothing is in flight; the caller finishes the removals with
    /// [`Devices::removals_finished`]); otherwise the rotation is returned as in flight.
    fn rotate_past(
        &self,
        excluded: &BTreeSet<NodeId>,
    ) -> Result<(String, Option<RotationInFlight>)> {
        let proposed = self.propose_rotation(excluded)?;
        let deadline = Instant::now() + ROTATION_WAIT;
        let (next, shared) = (proposed.epoch, proposed.shared);
        match self.blocking.wait_committed(proposed.id, ROTATION_WAIT)? {
            Some(slot) => {
                tracing::info!(epoch = %next, %slot, shared, "key rotation committed");
                // This device takes its share when its volume reads the entry (at
                // once: it applies what commits); from then on what it writes is
                // sealed under the new epoch.
                while self.keyring.newest_epoch() < Some(next) && Instant::now() < deadline {
                    std::thread::sleep(STOP_POLL);
                }
                Ok((
                    format!(
                        "new key epoch {} (slot {}), sealed to {shared} device(s)\n",
                        next.0, slot.0
                    ),
                    None,
                ))
            }
            None => Ok((
                format!(
                    "new key epoch {} proposed (sealed to {shared} device(s)); it commits once \
                     a quorum is reachable\n",
                    next.0
                ),
                Some(RotationInFlight {
                    id: proposed.id,
                    excluded: excluded.clone(),
                }),
            )),
        }
    }

    /// Proposes a new key epoch whose secret is sealed to every device that keeps
    /// reading the volume (voters and learners of the configuration, never witnesses,
    /// never one of `excluded`, never a device the chain no longer holds live). Every
    /// device (this one included) takes its share when it reads the entry.
    fn propose_rotation(&self, excluded: &BTreeSet<NodeId>) -> Result<ProposedRotation> {
        let config = self.blocking.status()?.config;
        let (volume, recipients) = {
            let membership = self.membership.lock();
            let state = membership.chain_state()?;
            let recipients: Vec<(NodeId, [u8; 32])> = config
                .voters
                .difference(&config.witnesses)
                .chain(config.learners.iter())
                .filter(|node| !excluded.contains(node))
                .filter_map(|node| {
                    let (_, device) = membership.nodes.iter().find(|(n, _)| n == node)?;
                    let live = state.devices.get(device)?;
                    Some((*node, live.kem_public))
                })
                .collect();
            (membership.volume, recipients)
        };
        let newest = self
            .keyring
            .newest_epoch()
            .ok_or(Error::Startup("this device holds no key epoch".into()))?;
        let epoch = KeyEpoch(newest.0.saturating_add(1));
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rng(), secret.as_mut());
        let rotation = KeyRotation::seal(volume, epoch, &secret, &recipients)?;
        let id = self.blocking.propose_rotation(&rotation)?;
        Ok(ProposedRotation {
            id,
            epoch,
            shared: recipients.len(),
        })
    }

    /// A rotation past `removed` has committed: each of them still live in the chain
    /// is revoked (a removal stopped before its revocation), and the record forgets
    /// them. Failures are logged.
    fn removals_finished(&self, removed: &BTreeSet<NodeId>) {
        let mut membership = self.membership.lock();
        let mut revoked_any = false;
        if let Ok(state) = membership.chain_state() {
            let live: Vec<DeviceId> = membership
                .nodes
                .iter()
                .filter(|(node, device)| removed.contains(node) && state.is_live(device))
                .map(|(_, device)| *device)
                .collect();
            for device in live {
                match membership.revoke(&self.store, &device.fingerprint()) {
                    Ok(revoked) => {
                        tracing::info!(device = %revoked.device, name = %revoked.name, "revoked a removed device");
                        revoked_any = true;
                    }
                    // Its rotation committed: the record goes anyway (kith device
                    // remove NAME revokes it again).
                    Err(error) => tracing::warn!(%device, %error, "cannot revoke a removed device"),
                }
            }
        }
        if revoked_any
            && let Err(error) = membership.publish(&self.trust, &self.nodes, &self.endpoint)
        {
            tracing::warn!(%error, "cannot apply a revocation");
        }
        let left = match membership::read_removals_owed(&self.store) {
            Ok(owed) => owed.difference(removed).copied().collect(),
            // Damaged: the rotation just committed left out every removed device.
            Err(_) => BTreeSet::new(),
        };
        if let Err(error) = membership::write_removals_owed(&self.store, &left) {
            tracing::warn!(%error, "cannot update the owed-removal record");
        }
        drop(membership);
        if revoked_any {
            self.announce();
        }
    }

    /// One reconcile step of the root-key daemon (see the module comment): owed
    /// removals first, then at most one promotion. Nothing while this device knows no
    /// leader: its configuration may not be the group's yet.
    fn reconcile(&self) {
        let Ok(status) = self.blocking.status() else {
            return;
        };
        if status.leader.is_none() {
            return;
        }
        // A removal running now is finished by `device_remove` itself.
        let Some(mut in_flight) = self.removing.try_lock() else {
            return;
        };
        let owed = self.finish_removals(&status, &mut in_flight);
        drop(in_flight);
        self.promote(&status, &owed);
    }

    /// Finishes owed removals: `Remove` proposed again for those still members (this
    /// device leading), then one rotation past all of them, followed until it commits.
    /// Returns the removals owed.
    fn finish_removals(
        &self,
        status: &ReplicaStatus,
        in_flight: &mut Option<RotationInFlight>,
    ) -> BTreeSet<NodeId> {
        let (owed, damaged) = match membership::read_removals_owed(&self.store) {
            Ok(owed) => (owed, false),
            Err(error) => {
                tracing::error!(%error, "the owed-removal record is damaged: rotating the key past every removed device");
                (BTreeSet::new(), true)
            }
        };
        if owed.is_empty() && !damaged {
            *in_flight = None;
            return owed;
        }
        if let Some(flight) = in_flight.as_ref() {
            match self.blocking.wait_committed(flight.id, ROTATION_POLL) {
                Ok(Some(slot)) => {
                    tracing::info!(%slot, "the owed key rotation committed");
                    let excluded = flight.excluded.clone();
                    *in_flight = None;
                    self.removals_finished(&excluded);
                }
                // Waiting for a quorum; the proposal stays queued.
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "cannot follow the owed key rotation"),
            }
            return owed;
        }
        if status.leader == Some(status.id)
            && let Some(node) = owed.iter().find(|node| status.config.is_member(**node))
            && let Err(error) = self
                .blocking
                .change_membership(MembershipChange::Remove(*node))
        {
            tracing::debug!(%node, %error, "proposing an owed removal failed; retrying later");
        }
        match self.propose_rotation(&owed) {
            Ok(proposed) => {
                tracing::info!(epoch = %proposed.epoch, shared = proposed.shared, ?owed, "proposed the key rotation a removal owes");
                *in_flight = Some(RotationInFlight {
                    id: proposed.id,
                    excluded: owed.clone(),
                });
            }
            Err(error) => tracing::warn!(%error, "cannot propose the key rotation a removal owes"),
        }
        owed
    }

    /// Proposes the first caught-up learner ([`learners_to_promote`]) as a voter, if
    /// this device leads: only the leader proposes a configuration, and a learner
    /// pulls from the leader, so only the leader hears how far it is. Learners whose
    /// removal is owed are left alone.
    fn promote(&self, status: &ReplicaStatus, owed: &BTreeSet<NodeId>) {
        if status.leader != Some(status.id) || status.config.learners.is_empty() {
            return;
        }
        let live: BTreeSet<NodeId> = {
            let membership = self.membership.lock();
            let Ok(state) = membership.chain_state() else {
                return;
            };
            membership
                .nodes
                .iter()
                .filter(|(_, device)| {
                    state.is_live(device) && self.endpoint.existing_connection(device).is_some()
                })
                .map(|(node, _)| *node)
                .collect()
        };
        let ready =
            learners_to_promote(status, |node| live.contains(&node) && !owed.contains(&node));
        let Some(node) = ready.first().copied() else {
            return;
        };
        match self
            .blocking
            .change_membership(MembershipChange::AddVoter(node))
        {
            Ok(()) => tracing::info!(%node, "proposed a caught-up learner as a voter"),
            Err(error) => {
                tracing::debug!(%node, %error, "promoting a learner failed; retrying later")
            }
        }
    }

    /// One pairing request or announcement (on the pairing thread).
    fn on_frame(&self, inbound: Inbound) {
        let kind = inbound.frame.kind;
        if kind == Kind::CHAIN && inbound.responder.is_none() {
            if inbound.admission == Admission::Member {
                self.adopt(inbound.peer, &inbound.frame.body);
            }
            return;
        }
        if kind != Kind::PAIR {
            if let Some(responder) = inbound.responder {
                responder.refuse("no handler for this frame kind");
            }
            return;
        }
        let outcome = {
            let mut membership = self.membership.lock();
            let outcome = join::answer_pair_request(
                &mut self.inviter.lock(),
                &mut membership,
                &self.store,
                &self.trust,
                inbound,
            );
            // `handle_join` already trusts the joiner. Not `Membership::publish`: its
            // trust refresh would close the joiner's pairing connection (admitted
            // pairing-only, now a member) while the answer may still be in flight.
            if let Some(outcome) = &outcome {
                self.nodes.insert(outcome.node, outcome.device);
                if !outcome.addresses.is_empty() {
                    self.endpoint
                        .set_addresses(outcome.device, outcome.addresses.clone());
                }
            }
            outcome
        };
        if let Some(outcome) = outcome {
            self.admit_to_volume(&outcome);
            self.announce();
        }
    }

    /// Takes another device's announcement: newcomers, revocations, addresses.
    fn adopt(&self, from: DeviceId, bytes: &[u8]) {
        let views = membership::NetworkViews {
            trust: &self.trust,
            nodes: &self.nodes,
            endpoint: &self.endpoint,
        };
        membership::adopt_announcement(&self.membership, &self.store, &views, from, bytes);
    }

    /// The volume side of a join: write access first (it commits under the current
    /// configuration, before the new member is in it), then the member: a device as a
    /// learner (promoted by the reconcile step once caught up), a witness as a voter
    /// with no access.
    fn admit_to_volume(&self, outcome: &JoinOutcome) {
        if outcome.grants_write() && !self.grant_write(outcome) {
            return;
        }
        self.propose_member(outcome);
    }

    /// Whether the grant was proposed.
    fn grant_write(&self, outcome: &JoinOutcome) -> bool {
        let Some(volume) = self.volume.lock().upgrade() else {
            tracing::warn!("a device joined while the volume is closed; it is not granted yet");
            return false;
        };
        let granted = u32::try_from(outcome.node.0)
            .ok()
            .map(fossil::op::DeviceId)
            .ok_or(fossil::Error::Invalid(
                "node id out of fossil's device range",
            ))
            .and_then(|device| volume.grant(device, fossil::op::Rights::Write));
        drop(volume);
        if let Err(error) = granted {
            tracing::error!(node = %outcome.node, %error, "granting the new device failed");
            return false;
        }
        true
    }

    fn propose_member(&self, outcome: &JoinOutcome) {
        let change = outcome.membership_change();
        for attempt in 0..VOTER_ATTEMPTS_MAX {
            match self.blocking.change_membership(change) {
                Ok(()) => {
                    tracing::info!(node = %outcome.node, name = %outcome.name, ?change, "proposed the new member");
                    return;
                }
                Err(error) => {
                    tracing::info!(node = %outcome.node, attempt, %error, "adding the member failed; retrying");
                    std::thread::sleep(VOTER_RETRY);
                }
            }
        }
        tracing::error!(node = %outcome.node, "the new device was not added to the volume's group");
    }
}

/// Where other devices can reach a daemon listening on `listen`: the address itself,
/// or for an unspecified address this machine's interface addresses (loopback last).
pub fn reachable_addresses(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    let mut found: Vec<SocketAddr> = Vec::new();
    if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
        for interface in interfaces {
            let Some(address) = interface.address else {
                continue;
            };
            let ip = if let Some(v4) = address.as_sockaddr_in() {
                std::net::IpAddr::V4(v4.ip())
            } else if let Some(v6) = address.as_sockaddr_in6() {
                if listen.is_ipv4() {
                    continue;
                }
                std::net::IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let candidate = SocketAddr::new(ip, listen.port());
            if !found.contains(&candidate) {
                found.push(candidate);
            }
        }
    }
    found.sort_by_key(|a| a.ip().is_loopback());
    found.truncate(net::pairing::ADDRESSES_MAX);
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_specified_listen_address_is_the_one_told_to_other_devices() {
        let listen: SocketAddr = "127.0.0.1:7421".parse().unwrap();
        assert_eq!(reachable_addresses(listen), vec![listen]);
    }

    #[test]
    fn an_unspecified_listen_address_becomes_interface_addresses_loopback_last() {
        let reachable = reachable_addresses("0.0.0.0:7420".parse().unwrap());
        assert!(!reachable.is_empty(), "no interface address found");
        assert!(reachable.len() <= net::pairing::ADDRESSES_MAX);
        for address in &reachable {
            assert_eq!(address.port(), 7420);
            assert!(address.is_ipv4(), "{address}");
            assert!(!address.ip().is_unspecified());
        }
        let first_loopback = reachable.iter().position(|a| a.ip().is_loopback());
        if let Some(first) = first_loopback {
            assert!(reachable[first..].iter().all(|a| a.ip().is_loopback()));
        }
    }

    fn config(voters: &[u64], witnesses: &[u64]) -> Config {
        Config::majority(
            paxos::ConfigId(1),
            voters.iter().map(|n| NodeId(*n)),
            witnesses.iter().map(|n| NodeId(*n)),
            [],
        )
        .unwrap()
    }

    #[test]
    fn every_quorum_without_the_writer_meets_a_holder() {
        // (voters, holders besides the writer): n − q, at least one with another voter.
        for (voters, needed) in [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)] {
            let all: Vec<u64> = (1..=voters).collect();
            let config = config(&all, &[]);
            assert_eq!(
                holders_needed(&config, NodeId(1)),
                needed,
                "{voters} voters"
            );
            // Brute force: every quorum of the others contains one of `needed` holders.
            let quorum = usize::from(config.phase2_quorum);
            let others = voters as usize - 1;
            let survivors_without_holder = others - needed;
            assert!(
                survivors_without_holder < quorum || voters == 1,
                "{voters} voters: {survivors_without_holder} non-holders form a quorum of {quorum}"
            );
        }
        // A writer that does not vote (a learner): every quorum needs a holder.
        assert_eq!(holders_needed(&config(&[1, 2, 3], &[]), NodeId(9)), 2);
    }

    #[test]
    fn pushes_go_to_other_voters_heard_lately_first_never_to_witnesses() {
        let ids: Vec<DeviceIdentity> = (0..4).map(|_| DeviceIdentity::generate()).collect();
        let device_of = |node: NodeId| ids.get(node.0 as usize - 1).map(|id| id.device_id());
        let config = config(&[1, 2, 3, 4], &[4]);
        let heard: BTreeMap<NodeId, Option<u64>> = [
            (NodeId(2), Some(9_000)),
            (NodeId(3), Some(20)),
            (NodeId(4), Some(1)),
        ]
        .into();
        let targets = push_targets(&config, &heard, NodeId(1), device_of, |_| false);
        assert_eq!(
            targets.candidates,
            vec![ids[2].device_id(), ids[1].device_id()],
            "heard lately first; no witness; not the writer"
        );
        assert_eq!(targets.needed, 1);
        assert!(targets.any_heard);
        // A voter that was slow lately goes last, whatever was heard.
        let slow = ids[2].device_id();
        let targets = push_targets(&config, &heard, NodeId(1), device_of, |d| *d == slow);
        assert_eq!(
            targets.candidates,
            vec![ids[1].device_id(), ids[2].device_id()]
        );
        // Nobody heard lately; a voter the node table does not know is left out, and
        // `needed` never exceeds the candidates.
        let silent: BTreeMap<NodeId, Option<u64>> = [(NodeId(2), None)].into();
        let config = config_of_five();
        let targets = push_targets(&config, &silent, NodeId(1), device_of, |_| false);
        assert!(!targets.any_heard);
        assert!(!targets.all_slow);
        let all = |_: &DeviceId| true;
        assert!(push_targets(&config, &silent, NodeId(1), device_of, all).all_slow);
        assert_eq!(targets.candidates.len(), 3);
        assert_eq!(targets.needed, 2);
        let targets = push_targets(&config, &silent, NodeId(1), |_| None, |_| false);
        assert_eq!((targets.candidates.len(), targets.needed), (0, 0));
    }

    /// A store in a fresh temporary directory.
    fn store_in(dir: &Path) -> Arc<Store> {
        let backend = venti::backend::FileBackend::new(dir).unwrap();
        Arc::new(Store::open(Arc::new(backend), venti::StoreOptions::default()).unwrap())
    }

    fn by_epoch(keys: &EpochKeys) -> impl Fn(u32) -> Option<Arc<EpochKeys>> + use<> {
        let keys = Arc::new(keys.clone());
        move |epoch| (epoch == keys.epoch()).then(|| keys.clone())
    }

    fn write_tree(store: &Store, keys: &EpochKeys, len: usize, seed: u8) -> BlockRef {
        let content: Vec<u8> = (0..len)
            .map(|n| (n as u8).wrapping_mul(31) ^ seed ^ (n >> 11) as u8)
            .collect();
        let mut writer = venti::tree::TreeWriter::new(store, keys, venti::Class::Pinned);
        writer.write(&content).unwrap();
        writer.finish().unwrap()
    }

    /// Another device's store as a remote.
    struct Other(Arc<Store>);

    impl RemoteBlocks for Other {
        fn fetch(&self, address: &Address) -> venti::Result<Option<Vec<u8>>> {
            match self.0.get_local(address) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(venti::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        }
    }

    #[test]
    fn the_content_walk_counts_what_is_not_held_and_a_full_copy_fetches_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EpochKeys::derive(&[4; 32], &[2; 16], 0);
        let writer = store_in(&dir.path().join("writer"));
        let big = write_tree(&writer, &keys, 3_000_000, 1);
        let small = write_tree(&writer, &keys, 100_000, 2);
        writer.sync().unwrap();
        // The same tree twice counts once.
        let roots = [big, small, big];
        let stop = AtomicBool::new(false);

        let copy = store_in(&dir.path().join("copy"));
        let counted = walk_content(
            &copy,
            &by_epoch(&keys),
            &roots,
            false,
            &mut WholeTrees::default(),
            &stop,
        );
        assert_eq!(counted.referenced_bytes, 3_100_000);
        assert_eq!(
            counted.missing_bytes, 3_100_000,
            "nothing held: every root is missing"
        );
        // Counting never fetches.
        copy.set_remote(Some(Arc::new(Other(writer.clone()))), venti::Class::Pinned);
        assert_eq!(
            walk_content(
                &copy,
                &by_epoch(&keys),
                &roots,
                false,
                &mut WholeTrees::default(),
                &stop
            ),
            counted
        );
        assert_eq!(copy.stats().unwrap().blocks, 0);

        // Holding the small tree's blocks and the big tree's root: only what is under
        // the big root and not held is missing (its leaves), not the small tree.
        let mut small_blocks = HashSet::new();
        venti::gc::mark_tree(
            &TreeReader::new(writer.as_ref(), &keys),
            &small,
            &mut small_blocks,
        )
        .unwrap();
        for address in small_blocks.iter().chain([&big.address]) {
            copy.put(
                address,
                &writer.get_local(address).unwrap(),
                venti::Class::Cached,
            )
            .unwrap();
        }
        let partial = walk_content(
            &copy,
            &by_epoch(&keys),
            &roots,
            false,
            &mut WholeTrees::default(),
            &stop,
        );
        assert_eq!(partial.referenced_bytes, 3_100_000);
        assert!(
            partial.missing_bytes > 0 && partial.missing_bytes <= 3_000_000,
            "{partial:?}"
        );

        // A full copy fetches everything (pinned), after which nothing is missing.
        walk_content(
            &copy,
            &by_epoch(&keys),
            &roots,
            true,
            &mut WholeTrees::default(),
            &stop,
        );
        let complete = walk_content(
            &copy,
            &by_epoch(&keys),
            &roots,
            false,
            &mut WholeTrees::default(),
            &stop,
        );
        assert_eq!(complete.missing_bytes, 0, "{complete:?}");
        let mut all = HashSet::new();
        for root in &roots {
            venti::gc::mark_tree(&TreeReader::new(writer.as_ref(), &keys), root, &mut all).unwrap();
        }
        for address in &all {
            assert!(copy.contains(address).unwrap());
        }
        let fetched = all.difference(&small_blocks).filter(|a| **a != big.address);
        for address in fetched {
            assert_eq!(copy.class(address).unwrap(), Some(venti::Class::Pinned));
        }
        // A stop request ends a walk at once.
        stop.store(true, Ordering::SeqCst);
        assert_eq!(
            walk_content(
                &copy,
                &by_epoch(&keys),
                &roots,
                false,
                &mut WholeTrees::default(),
                &stop
            ),
            ContentCount::default()
        );
    }

    #[test]
    fn whole_trees_are_not_walked_again_until_the_store_drops_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EpochKeys::derive(&[4; 32], &[2; 16], 0);
        let writer = store_in(&dir.path().join("writer"));
        let big = write_tree(&writer, &keys, 3_000_000, 1);
        let small = write_tree(&writer, &keys, 100_000, 2);
        writer.sync().unwrap();
        let stop = AtomicBool::new(false);
        let copy = store_in(&dir.path().join("copy"));
        let mut big_blocks = HashSet::new();
        let reader = TreeReader::new(writer.as_ref(), &keys);
        venti::gc::mark_tree(&reader, &big, &mut big_blocks).unwrap();
        let mut all = big_blocks.clone();
        venti::gc::mark_tree(&reader, &small, &mut all).unwrap();
        for address in &all {
            let sealed = writer.get_local(address).unwrap();
            copy.put(address, &sealed, venti::Class::Cached).unwrap();
        }
        copy.sync().unwrap();

        let mut whole = WholeTrees::default();
        let roots = [big, small];
        let first = walk_content(&copy, &by_epoch(&keys), &roots, false, &mut whole, &stop);
        assert_eq!(
            (first.referenced_bytes, first.missing_bytes),
            (3_100_000, 0)
        );
        assert_eq!(whole.roots, HashSet::from([big.address, small.address]));
        // Nothing dropped: the same count, from memory.
        let again = walk_content(&copy, &by_epoch(&keys), &roots, false, &mut whole, &stop);
        assert_eq!(again, first);

        // A block of the big tree leaves the store: that tree is walked again and is
        // missing what is under it; the small tree is still whole.
        let dropped = *big_blocks
            .iter()
            .find(|address| **address != big.address && copy.class(address).unwrap().is_some())
            .unwrap();
        let dropped_bytes = {
            let mut length = None;
            reader
                .walk(&big, |block| {
                    if block.address == dropped {
                        length = Some(block.length);
                    }
                    Ok(true)
                })
                .unwrap();
            length.unwrap()
        };
        copy.remove(&[dropped]).unwrap();
        let after = walk_content(&copy, &by_epoch(&keys), &roots, false, &mut whole, &stop);
        assert_eq!(after.referenced_bytes, 3_100_000);
        assert_eq!(after.missing_bytes, dropped_bytes);
        assert_eq!(whole.roots, HashSet::from([small.address]));

        // A tree no longer referred to is forgotten.
        walk_content(&copy, &by_epoch(&keys), &[big], false, &mut whole, &stop);
        assert!(whole.roots.is_empty(), "{:?}", whole.roots);
    }

    #[test]
    fn unplaced_pushes_survive_a_restart_and_an_empty_list_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UNPLACED_FILE);
        assert!(load_unplaced(&path).is_empty());
        let left = vec![Address::of(b"one"), Address::of(b"two")];
        save_unplaced(&path, &left).unwrap();
        assert_eq!(load_unplaced(&path), left);
        save_unplaced(&path, &left[..1]).unwrap();
        assert_eq!(load_unplaced(&path), left[..1]);
        save_unplaced(&path, &[]).unwrap();
        assert!(!path.exists());
        save_unplaced(&path, &[]).unwrap();
        // A torn tail is ignored, never read as an address.
        std::fs::write(&path, [7u8; 40]).unwrap();
        assert_eq!(load_unplaced(&path), vec![Address([7; 32])]);
    }

    fn status_with(
        config: Config,
        commit_end: u64,
        peers: &[(u64, Option<u64>, Option<u64>)],
    ) -> ReplicaStatus {
        ReplicaStatus {
            id: NodeId(1),
            volume: VolumeId(7),
            role: paxos::Role::Leader,
            config,
            leader: Some(NodeId(1)),
            heard_ms_ago: peers
                .iter()
                .map(|(node, heard, _)| (NodeId(*node), *heard))
                .collect(),
            reported_commit: peers
                .iter()
                .filter_map(|(node, _, at)| Some((NodeId(*node), paxos::Slot((*at)?))))
                .collect(),
            commit_end: paxos::Slot(commit_end),
            log_start: paxos::Slot(0),
            applied_end: paxos::Slot(commit_end),
            queued: 0,
        }
    }

    #[test]
    fn learners_are_promoted_once_heard_and_caught_up_and_only_live_devices() {
        let config = Config::majority(
            paxos::ConfigId(3),
            [NodeId(1), NodeId(4)],
            [NodeId(4)],
            [2, 3, 5, 6, 7].map(NodeId),
        )
        .unwrap();
        let end = 1_000;
        let status = status_with(
            config,
            end,
            &[
                // Caught up, heard now.
                (2, Some(10), Some(end)),
                // Within one catch-up answer of the end: promoted.
                (3, Some(10), Some(end - PROMOTE_WITHIN_SLOTS)),
                // One slot further behind: not yet.
                (5, Some(10), Some(end - PROMOTE_WITHIN_SLOTS - 1)),
                // Caught up, silent for a long time (an idle volume): promoted if
                // the daemon's rule (connected now) accepts it.
                (6, Some(600_000), Some(end)),
                // Heard, never reported where it is.
                (7, Some(10), None),
            ],
        );
        assert_eq!(
            learners_to_promote(&status, |_| true),
            [NodeId(2), NodeId(3), NodeId(6)]
        );
        // One the daemon's rule refuses (revoked, unknown, or not connected: its daemon
        // stopped) stays a learner; the witness (a voter) is never a candidate.
        assert_eq!(
            learners_to_promote(&status, |node| node != NodeId(2) && node != NodeId(6)),
            [NodeId(3)]
        );
        // Never heard since this daemon started (a restart before the joiner's daemon
        // ran): not promoted.
        let silent = status_with(status.config.clone(), end, &[(2, None, None)]);
        assert!(learners_to_promote(&silent, |_| true).is_empty());
        // A fresh volume's join: the learner asks from slot 0 of a short log.
        let fresh = status_with(status.config.clone(), 5, &[(2, Some(0), Some(0))]);
        assert_eq!(learners_to_promote(&fresh, |_| true), [NodeId(2)]);
    }

    fn config_of_five() -> Config {
        config(&[1, 2, 3, 4, 5], &[])
    }

    #[test]
    fn entry_authors_are_the_devices_that_hold_or_held_their_node_ids() {
        let (alice, bob) = (DeviceIdentity::generate(), DeviceIdentity::generate());
        let nodes = Arc::new(NodeTable::new([
            (NodeId(1), alice.device_id()),
            (NodeId(2), bob.device_id()),
        ]));
        let keys = node_keyring(
            VolumeId(7),
            NodeId(1),
            &alice,
            &EpochSecrets::new([7; 16], 0, &[3; 32]),
            Box::new(|_, _| Ok(())),
            nodes.clone(),
        );
        assert_eq!(
            keys.verifying_key(NodeId(1)),
            Some(alice.signing_key().verifying_key())
        );
        // Never mapped: unknown (the replica waits rather than refuse).
        assert_eq!(keys.verifying_key(NodeId(3)), None);
        // Removed (revoked): what it signed while a member still verifies.
        nodes.remove(NodeId(2));
        assert_eq!(nodes.device(NodeId(2)), None);
        assert_eq!(
            keys.verifying_key(NodeId(2)),
            Some(bob.signing_key().verifying_key())
        );
        assert!(
            keys.sealing_key()
                .is_some_and(|(epoch, _)| epoch == KeyEpoch(0))
        );
        assert!(keys.entry_key(KeyEpoch(9)).is_none());
    }
}
