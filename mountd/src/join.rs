//! Adding a device to the user and the home volume: both sides of pairing.
//!
//! Inviter (a running daemon holding the user root key):
//! 1. `kith device add` → [`Inviter::issue_code_as`]: a one-time code (10 minutes) naming
//!    this device, its user and its listen addresses; while a code is open the
//!    [`TrustSet`] admits unknown devices as `PairingOnly` (they may send
//!    [`Kind::PAIR`] requests and nothing else).
//! 2. The joiner's `PAIR` request → [`Inviter::handle_join`]: spends the code, appends
//!    the joiner to the user chain (signed with the root key), gives it the next free
//!    node id, records it in the membership (saved before answering, so a node id is
//!    never handed out twice) and answers with a [`JoinAnswer`]: the chain, the
//!    volume's configuration, node table and addresses, and the epoch secret sealed to
//!    the joiner's X25519 key. The [`JoinOutcome`] tells the daemon what is left:
//!    propose `AddLearner(node)`, grant the device write access in fossil, and tell the
//!    other devices ([`crate::membership::Membership::announcement`]).
//!
//! Learners first: a joined device starts as a *learner* (it pulls the log, proposes,
//! reads; it does not vote) and becomes a voter only once it has caught up, which the
//! root-key daemon's reconcile step sees and finishes (`crate::sync`). Adding it as a
//! voter at once would make every quorum need a device whose daemon may not run for a
//! long time (`kith device join` writes the store; `kith mount` may come much later):
//! on a one-device volume every write would stall until then (Raft's and etcd's
//! learners exist for the same reason).
//!
//! Witnesses (`kith witness add` / `kith witness join CODE`): the code is issued for
//! [`JoinRole::Witness`] and the role is kept with it on the inviter, so the answer to
//! its redemption is chosen from the code, not from the request: it carries no sealed
//! secret ([`JoinGrant::Witness`] has no room for one) and the outcome proposes
//! `AddWitness(node)` and grants nothing in fossil. The joiner refuses an answer of
//! another role than it asked for (a witness never writes a `volume.key`).
//!
//! Joiner (`kith device join CODE`, no daemon): [`join`] creates a fresh device
//! identity, dials the inviter's addresses pinning its key, sends the request, checks
//! the answer (the chain verifies, holds this device with its keys and the inviter,
//! the node table maps the assigned node to this device, the secret opens) and writes
//! keyring, `volume.key` (devices only) and membership into the store.
//!
//! Not here: removing a device ([`Membership::revoke`]), friends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fossil::venti_content::EpochSecrets;
use net::entry::KeyEpoch;
use net::frame::Kind;
use net::identity::{DeviceId, DeviceIdentity};
use net::keyring::Keyring;
use net::pairing::{
    JoinAnswer, JoinGrant, JoinRequest, JoinRole, PAIRING_TTL_S_DEFAULT, PairingCode,
    PairingOffers, open_epoch_secret, seal_epoch_secret,
};
use net::quic::{Endpoint, TrustSet};
use paxos::NodeId;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::membership::{
    self, JoinedVolume, KEYRING_FILE, KeyringMode, MEMBERSHIP_FILE, Membership, VOLUME_KEY_FILE,
};

/// How long the joiner waits for each address of the inviter.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Files whose presence means a store is already in use.
const STORE_MARKERS: [&str; 6] = [
    MEMBERSHIP_FILE,
    KEYRING_FILE,
    VOLUME_KEY_FILE,
    "namespace.sqlite",
    "log",
    "blocks",
];

/// The inviter's open pairing codes. One per daemon.
#[derive(Debug)]
pub struct Inviter {
    offers: PairingOffers,
    ttl_s: u64,
}

/// What the daemon must still do after a successful join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The new device.
    pub device: DeviceId,
    /// Its node id: propose [`JoinOutcome::membership_change`] and grant
    /// `fossil::DeviceId(node)` write access.
    pub node: NodeId,
    /// Its name in the user chain.
    pub name: String,
    /// Where it said it will listen (may be empty).
    pub addresses: Vec<SocketAddr>,
    /// A device, or a witness (the code's role).
    pub role: JoinRole,
}

impl JoinOutcome {
    /// The change that makes the new device take part in the volume's group: a device
    /// is a learner until it has caught up (then promoted to voter, see the module
    /// comment); a witness votes at once (it holds sealed entries only and catches up
    /// in the background as every acceptor does).
    pub fn membership_change(&self) -> net::replica::MembershipChange {
        match self.role {
            JoinRole::Device => net::replica::MembershipChange::AddLearner(self.node),
            JoinRole::Witness => net::replica::MembershipChange::AddWitness(self.node),
        }
    }

    /// Whether it gets write access in fossil (a witness reads and writes nothing).
    pub fn grants_write(&self) -> bool {
        self.role == JoinRole::Device
    }
}

/// What `kith device join` did.
#[derive(Clone, Debug)]
pub struct JoinSummary {
    pub device: DeviceId,
    pub name: String,
    pub node: NodeId,
    pub user: net::identity::UserId,
    pub inviter: DeviceId,
    pub keyring: KeyringMode,
    pub role: JoinRole,
}

impl std::fmt::Display for JoinSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "joined: this {} {} ({}) is node {} of the home volume of user {} (added by {}); keyring {}",
            self.role.as_str(),
            self.name,
            self.device,
            self.node.0,
            self.user,
            self.inviter,
            self.keyring.as_str()
        )
    }
}

impl Default for Inviter {
    fn default() -> Self {
        Self::new()
    }
}

impl Inviter {
    pub fn new() -> Inviter {
        Inviter::with_ttl(PAIRING_TTL_S_DEFAULT)
    }

    /// Codes valid for `ttl_s` seconds.
    pub fn with_ttl(ttl_s: u64) -> Inviter {
        Inviter {
            offers: PairingOffers::new(),
            ttl_s,
        }
    }

    /// `kith device add` / `kith witness add`: a new one-time code that adds a `role`,
    /// reachable at `listen` (the daemon's reachable QUIC addresses), and pairing
    /// admission opened in `trust`. Only the device holding the user root key can add
    /// devices.
    pub fn issue_code_as(
        &mut self,
        role: JoinRole,
        membership: &Membership,
        trust: &TrustSet,
        listen: &[SocketAddr],
    ) -> Result<PairingCode> {
        self.issue_code_at(role, membership, trust, listen, now_unix_s())
    }

    fn issue_code_at(
        &mut self,
        role: JoinRole,
        membership: &Membership,
        trust: &TrustSet,
        listen: &[SocketAddr],
        now_unix_s: u64,
    ) -> Result<PairingCode> {
        if membership.keyring.user_root.is_none() {
            return Err(Error::Join(
                "this device does not hold the user root key: add devices from the first device"
                    .into(),
            ));
        }
        let reachable: Vec<SocketAddr> = listen
            .iter()
            .copied()
            .filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0)
            .take(net::pairing::ADDRESSES_MAX)
            .collect();
        if reachable.is_empty() {
            return Err(Error::Join(
                "the daemon has no reachable listen address to put in a code (listen on a \
                 specific address, e.g. --listen 192.168.1.2:7420)"
                    .into(),
            ));
        }
        if membership.role != JoinRole::Device {
            return Err(Error::Join("a witness cannot add devices".into()));
        }
        let code = self.offers.issue_as(
            role,
            membership.chain.user(),
            membership.device(),
            &reachable,
            now_unix_s,
            self.ttl_s,
        )?;
        trust.set_pairing_open(true);
        Ok(code)
    }

    /// Closes pairing admission once no code is open any more (call now and then).
    pub fn expire(&mut self, trust: &TrustSet) {
        if !self.offers.any_open(now_unix_s()) {
            trust.set_pairing_open(false);
        }
    }

    /// Answers a `PAIR` request from `peer` (the device the handshake authenticated).
    /// On success the joiner is in the chain, the node table and the saved membership,
    /// and `trust` admits it as a member; the answer goes back as a [`Kind::CHAIN`] frame.
    pub fn handle_join(
        &mut self,
        membership: &mut Membership,
        store: &Path,
        trust: &TrustSet,
        peer: DeviceId,
        request: &[u8],
    ) -> Result<(Vec<u8>, JoinOutcome)> {
        self.handle_join_at(membership, store, trust, peer, request, now_unix_s())
    }

    fn handle_join_at(
        &mut self,
        membership: &mut Membership,
        store: &Path,
        trust: &TrustSet,
        peer: DeviceId,
        request: &[u8],
        now_unix_s: u64,
    ) -> Result<(Vec<u8>, JoinOutcome)> {
        let request = JoinRequest::from_bytes(request)?;
        let Some(root) = membership.keyring.user_root.as_ref() else {
            return Err(Error::Join(
                "this device does not hold the user root key".into(),
            ));
        };
        // Work on copies: a refused join changes nothing but the spent code.
        let mut chain = membership.chain.clone();
        let outcome = self
            .offers
            .admit_joiner(peer, &request, &mut chain, root, now_unix_s);
        if !self.offers.any_open(now_unix_s) {
            trust.set_pairing_open(false);
        }
        let (state, role) = outcome?;
        let mut info = membership.info();
        let node = info.next_node();
        info.nodes.push((node, peer));
        let addresses: Vec<SocketAddr> = request
            .addresses
            .iter()
            .copied()
            .filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0)
            .collect();
        if !addresses.is_empty() {
            info.set_addresses(peer, addresses.clone());
        }
        // The grant follows the code's role: a witness code never seals a secret. A
        // device gets every epoch held here (`volume.key` as it is now: rotations add
        // to it while the daemon runs), so it reads content of any epoch and a
        // checkpoint sealed under the newest.
        let grant = match role {
            JoinRole::Device => {
                let held = membership::read_volume_key(store)?;
                let secrets = held
                    .iter()
                    .map(|(epoch, secret)| {
                        let epoch = KeyEpoch(u64::from(epoch));
                        seal_epoch_secret(
                            &request.kem_public,
                            membership.volume,
                            node,
                            epoch,
                            secret,
                        )
                        .map(|sealed| (epoch, sealed))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                JoinGrant::Device { secrets }
            }
            JoinRole::Witness => JoinGrant::Witness,
        };
        membership.chain = chain;
        membership.nodes = info.nodes.clone();
        membership.addresses = info.addresses.clone();
        // Durable before the answer leaves: the node id must never be handed out twice.
        membership.save(store)?;
        trust.set_from_chains([&state]);
        let answer = JoinAnswer {
            node,
            grant,
            chain: membership.chain.clone(),
            info,
        };
        tracing::info!(device = %peer, name = %request.name, %node, role = role.as_str(), "a device joined");
        Ok((
            answer.to_bytes(),
            JoinOutcome {
                device: peer,
                node,
                name: request.name,
                addresses,
                role,
            },
        ))
    }
}

/// `kith device join CODE` (`role` device) or `kith witness join CODE` (`role`
/// witness): makes `store` (which must be new) a device of the code's user and a
/// member of its home volume. `listen` is where this device's daemon will listen, told
/// to the inviter (optional).
pub fn join(
    store: &Path,
    config: &Config,
    code_text: &str,
    listen: Option<SocketAddr>,
    role: JoinRole,
) -> Result<JoinSummary> {
    let code = PairingCode::parse(code_text)
        .map_err(|error| Error::Join(format!("not a valid pairing code: {error}")))?;
    check_fresh_store(store)?;
    if now_unix_s() >= code.expires_unix_s {
        return Err(Error::Join(
            "the pairing code has expired: ask for a new one with `kith device add`".into(),
        ));
    }
    let mode = membership::creation_mode(config)?;
    let passphrase = match mode {
        KeyringMode::Encrypted => Some(membership::passphrase(store, true)?),
        KeyringMode::Unencrypted => None,
    };
    let identity = DeviceIdentity::generate();
    let name = membership::device_name();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|error| Error::Join(format!("cannot start the network runtime: {error}")))?;
    let answer = runtime.block_on(request_join(&identity, &code, &name, listen, role))?;
    let joined = check_answer(&identity, &code, answer, role)?;
    let node = joined.node;
    let user = joined.chain.user();
    let mut keyring = Keyring::new(identity);
    keyring.user_root = None;
    let mut membership = Membership::from_join(
        store,
        keyring,
        mode,
        passphrase.as_ref().map(|p| p.as_str()),
        joined,
    )?;
    if let Some(listen) = listen.filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0)
        && membership.set_own_addresses(vec![listen])
    {
        membership.save(store)?;
    }
    Ok(JoinSummary {
        device: membership.device(),
        name,
        node,
        user,
        inviter: code.device,
        keyring: mode,
        role,
    })
}

/// Dials the inviter (each address in turn) and exchanges the join request.
async fn request_join(
    identity: &DeviceIdentity,
    code: &PairingCode,
    name: &str,
    listen: Option<SocketAddr>,
    role: JoinRole,
) -> Result<JoinAnswer> {
    if code.addresses.is_empty() {
        return Err(Error::Join("the pairing code carries no address".into()));
    }
    let trust = std::sync::Arc::new(TrustSet::with_members([code.device]));
    // One endpoint per address family the code names (a socket of one family cannot
    // dial the other).
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut failures = Vec::new();
    let mut connection = None;
    for addr in &code.addresses {
        let any_port = match addr.ip() {
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        };
        let existing = endpoints
            .iter()
            .find(|endpoint| {
                endpoint
                    .local_addr()
                    .is_ok_and(|local| local.is_ipv6() == addr.is_ipv6())
            })
            .cloned();
        let endpoint = match existing {
            Some(endpoint) => endpoint,
            None => match Endpoint::bind(any_port, identity, trust.clone()) {
                Ok((endpoint, _inbound)) => {
                    endpoints.push(endpoint.clone());
                    endpoint
                }
                Err(error) => {
                    failures.push(format!("{addr}: cannot open a socket: {error}"));
                    continue;
                }
            },
        };
        match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(*addr, code.device)).await {
            Ok(Ok(found)) => {
                connection = Some(found);
                break;
            }
            Ok(Err(net::Error::Connection { reason, .. })) if reason.contains("handshake") => {
                // The inviter admits unknown devices only while a code is open there.
                failures.push(format!(
                    "{addr}: refused this device in the handshake (no pairing code is open \
                     there: the code was used or expired, or its daemon restarted)"
                ))
            }
            Ok(Err(error)) => failures.push(format!("{addr}: {error}")),
            Err(_) => failures.push(format!("{addr}: no answer within {DIAL_TIMEOUT:?}")),
        }
    }
    let Some(connection) = connection else {
        for endpoint in &endpoints {
            endpoint.close().await;
        }
        return Err(Error::Join(format!(
            "could not get through to the inviting device (is its daemon running?) — tried {}",
            failures.join("; ")
        )));
    };
    let request = JoinRequest {
        role,
        secret: code.secret,
        kem_public: identity.public().kem_public,
        name: name.to_owned(),
        proof: identity.possession_proof(&code.user, name),
        addresses: listen.into_iter().collect(),
    };
    let exchanged = connection.request(Kind::PAIR, &request.to_bytes()).await;
    for endpoint in &endpoints {
        endpoint.close().await;
    }
    let frame = exchanged.map_err(|error| match error {
        net::Error::Refused { message } => {
            Error::Join(format!("the inviting device refused: {message}"))
        }
        other => Error::Join(format!(
            "the exchange with the inviting device failed: {other}"
        )),
    })?;
    if frame.kind != Kind::CHAIN {
        return Err(Error::Join(
            "the inviting device answered with the wrong frame".into(),
        ));
    }
    JoinAnswer::from_bytes(&frame.body).map_err(|error| {
        Error::Join(format!(
            "the inviting device's answer is malformed: {error}"
        ))
    })
}

/// Checks an answer against the code and this device's keys, and opens the secret.
fn check_answer(
    identity: &DeviceIdentity,
    code: &PairingCode,
    answer: JoinAnswer,
    role: JoinRole,
) -> Result<JoinedVolume> {
    let refuse = |problem: String| Error::Join(format!("the inviting device's answer: {problem}"));
    if answer.grant.role() != role {
        return Err(refuse(format!(
            "it adds a {}, this device asked to join as a {}",
            answer.grant.role().as_str(),
            role.as_str()
        )));
    }
    if answer.chain.user() != code.user {
        return Err(refuse("the user chain is another user's".into()));
    }
    let state = answer
        .chain
        .verify()
        .map_err(|error| refuse(format!("the user chain does not verify: {error}")))?;
    let me = identity.public();
    match state.devices.get(&me.id) {
        Some(live) if live.kem_public == me.kem_public => {}
        _ => return Err(refuse("the user chain does not hold this device".into())),
    }
    if !state.is_live(&code.device) {
        return Err(refuse(
            "the user chain does not hold the inviting device".into(),
        ));
    }
    if answer.info.device_of(answer.node) != Some(me.id) {
        return Err(refuse(
            "the node table does not give this device its node".into(),
        ));
    }
    if answer.info.node_of(&code.device).is_none() {
        return Err(refuse("the node table lacks the inviting device".into()));
    }
    let epoch_secrets = match &answer.grant {
        JoinGrant::Device { secrets } => {
            let mut held: Option<EpochSecrets> = None;
            for (epoch, sealed) in secrets {
                let secret =
                    open_epoch_secret(identity, answer.info.volume, answer.node, *epoch, sealed)
                        .map_err(|error| {
                            refuse(format!("the volume key of {epoch} does not open: {error}"))
                        })?;
                let epoch = u32::try_from(epoch.0)
                    .map_err(|_| refuse(format!("key epoch {epoch} is out of range")))?;
                match &mut held {
                    None => {
                        held = Some(EpochSecrets::new(
                            answer.info.volume.0.to_le_bytes(),
                            epoch,
                            &secret,
                        ));
                    }
                    Some(held) => {
                        held.insert(epoch, &secret).map_err(|error| {
                            refuse(format!("the volume keys do not add up: {error}"))
                        })?;
                    }
                }
            }
            Some(held.ok_or_else(|| refuse("the answer carries no volume key".into()))?)
        }
        JoinGrant::Witness => None,
    };
    Ok(JoinedVolume {
        chain: answer.chain,
        info: answer.info,
        node: answer.node,
        epoch_secrets,
    })
}

fn check_fresh_store(store: &Path) -> Result<()> {
    if let Some(found) = STORE_MARKERS
        .iter()
        .find(|marker| store.join(marker).exists())
    {
        return Err(Error::Join(format!(
            "the store {} is already initialised (it has {found}); join with a new --store",
            store.display()
        )));
    }
    Ok(())
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Serves one inbound `PAIR` request from the daemon's dispatch: answers it (the join
/// answer, or a refusal naming the reason) and returns what the daemon must still do.
pub fn answer_pair_request(
    inviter: &mut Inviter,
    membership: &mut Membership,
    store: &Path,
    trust: &TrustSet,
    inbound: net::quic::Inbound,
) -> Option<JoinOutcome> {
    let responder = inbound.responder?;
    if inbound.frame.kind != Kind::PAIR {
        responder.refuse("not a pairing request");
        return None;
    }
    match inviter.handle_join(membership, store, trust, inbound.peer, &inbound.frame.body) {
        Ok((answer, outcome)) => {
            responder.respond(Kind::CHAIN, answer);
            Some(outcome)
        }
        Err(error) => {
            tracing::info!(peer = %inbound.peer, %error, "refused a join");
            responder.refuse(&error.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use net::quic::{Admission, Trust};
    use parking_lot::Mutex;

    use super::*;
    use crate::config::Dirs;

    fn unencrypted() -> Config {
        Config {
            keyring: Some(KeyringMode::Unencrypted),
            ..Config::default()
        }
    }

    /// A running inviter: a QUIC endpoint on loopback answering `PAIR` requests the way
    /// the daemon does, on a runtime of its own.
    struct InviterDaemon {
        runtime: tokio::runtime::Runtime,
        endpoint: Endpoint,
        trust: Arc<TrustSet>,
        state: Arc<Mutex<(Inviter, Membership)>>,
        outcomes: std::sync::mpsc::Receiver<JoinOutcome>,
        store: std::path::PathBuf,
    }

    impl InviterDaemon {
        fn start(store: &Path, inviter: Inviter) -> anyhow::Result<InviterDaemon> {
            Self::start_on(store, inviter, "127.0.0.1:0".parse()?)
        }

        fn start_on(
            store: &Path,
            inviter: Inviter,
            listen: SocketAddr,
        ) -> anyhow::Result<InviterDaemon> {
            let dirs = Dirs {
                data: store.join("xdg-data"),
                config: store.join("xdg-config"),
                runtime: store.join("xdg-run"),
            };
            let membership = Membership::load_or_create(store, &dirs, &unencrypted())?;
            let trust = membership.trust_set()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let (endpoint, mut inbound) = runtime.block_on(async {
                Endpoint::bind(listen, &membership.keyring.device, trust.clone())
            })?;
            let state = Arc::new(Mutex::new((inviter, membership)));
            let (outcome_tx, outcomes) = std::sync::mpsc::channel();
            let serving = (state.clone(), trust.clone(), store.to_owned());
            runtime.spawn(async move {
                let (state, trust, store) = serving;
                while let Some(request) = inbound.recv().await {
                    let mut guard = state.lock();
                    let (inviter, membership) = &mut *guard;
                    if let Some(outcome) =
                        answer_pair_request(inviter, membership, &store, &trust, request)
                    {
                        let _ = outcome_tx.send(outcome);
                    }
                }
            });
            Ok(InviterDaemon {
                runtime,
                endpoint,
                trust,
                state,
                outcomes,
                store: store.to_owned(),
            })
        }

        fn code(&self) -> anyhow::Result<PairingCode> {
            let addr = self.endpoint.local_addr()?;
            let mut guard = self.state.lock();
            let (inviter, membership) = &mut *guard;
            Ok(inviter.issue_code_as(JoinRole::Device, membership, &self.trust, &[addr])?)
        }

        fn witness_code(&self) -> anyhow::Result<PairingCode> {
            let addr = self.endpoint.local_addr()?;
            let mut guard = self.state.lock();
            let (inviter, membership) = &mut *guard;
            Ok(inviter.issue_code_as(JoinRole::Witness, membership, &self.trust, &[addr])?)
        }
    }

    #[test]
    fn a_witness_joins_without_the_volume_key() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::new())?;
        let code = daemon.witness_code()?;
        // Joining a witness code as a device: refused, nothing added, code not spent.
        let error = join_error(&root.path().join("b"), &code.to_text());
        assert!(error.contains("adds a witness"), "{error}");
        assert_eq!(daemon.state.lock().1.chain.links().len(), 1);

        let store = root.path().join("w");
        let summary = join(
            &store,
            &unencrypted(),
            &code.to_text(),
            None,
            JoinRole::Witness,
        )?;
        assert_eq!((summary.node, summary.role), (NodeId(2), JoinRole::Witness));
        assert!(summary.to_string().contains("this witness"), "{summary}");
        let outcome = daemon.outcomes.recv_timeout(Duration::from_secs(5))?;
        assert_eq!(
            outcome.membership_change(),
            net::replica::MembershipChange::AddWitness(NodeId(2))
        );
        assert!(!outcome.grants_write());
        // The witness store: keyring and membership, no volume key.
        assert!(!store.join(VOLUME_KEY_FILE).exists());
        let witness = Membership::load(&store)?;
        assert_eq!(witness.role, JoinRole::Witness);
        assert!(witness.epoch_secrets().is_err());
        assert_eq!(witness.chain, daemon.state.lock().1.chain);
        // A witness adds nobody.
        let mut inviter = Inviter::new();
        let trust = witness.trust_set()?;
        let listen: SocketAddr = "127.0.0.1:7000".parse()?;
        assert!(
            inviter
                .issue_code_as(JoinRole::Device, &witness, &trust, &[listen])
                .is_err()
        );
        daemon.runtime.block_on(daemon.endpoint.close());
        Ok(())
    }

    #[test]
    fn the_answer_to_a_witness_code_carries_no_secret() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::new())?;
        let code = daemon.witness_code()?;
        let mut guard = daemon.state.lock();
        let (inviter, membership) = &mut *guard;
        let secret = *membership.epoch_secrets()?.newest().1;
        let joiner = DeviceIdentity::generate();
        let user = membership.chain.user();
        let request = |role| JoinRequest {
            role,
            secret: code.secret,
            kem_public: joiner.public().kem_public,
            name: "w".into(),
            proof: joiner.possession_proof(&user, "w"),
            addresses: Vec::new(),
        };
        // Asking a witness code for a device is refused, whatever the joiner claims.
        let refused = inviter.handle_join(
            membership,
            &daemon.store,
            &daemon.trust,
            joiner.device_id(),
            &request(JoinRole::Device).to_bytes(),
        );
        assert!(
            matches!(refused, Err(Error::Network(net::Error::PairingRole { .. }))),
            "{refused:?}"
        );
        let (answer, outcome) = inviter.handle_join(
            membership,
            &daemon.store,
            &daemon.trust,
            joiner.device_id(),
            &request(JoinRole::Witness).to_bytes(),
        )?;
        assert_eq!(outcome.role, JoinRole::Witness);
        assert_eq!(JoinAnswer::from_bytes(&answer)?.grant, JoinGrant::Witness);
        // Nothing in the answer is the secret, in the clear or sealed to the joiner.
        assert!(!answer.windows(secret.len()).any(|window| window == secret));
        let node = outcome.node;
        let volume = membership.volume;
        for window in answer.windows(net::pairing::SEALED_SECRET_BYTES) {
            let Ok(sealed) = <[u8; net::pairing::SEALED_SECRET_BYTES]>::try_from(window) else {
                continue;
            };
            assert!(open_epoch_secret(&joiner, volume, node, KeyEpoch(0), &sealed).is_err());
        }
        Ok(())
    }

    fn join_error(store: &Path, code: &str) -> String {
        match join(store, &unencrypted(), code, None, JoinRole::Device) {
            Ok(summary) => format!("unexpectedly joined: {summary}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_device_joins_over_quic_and_a_code_works_once() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::new())?;
        let code = daemon.code()?;
        let listen: SocketAddr = "127.0.0.1:7999".parse()?;

        let store_b = root.path().join("b");
        let summary = join(
            &store_b,
            &unencrypted(),
            &code.to_text(),
            Some(listen),
            JoinRole::Device,
        )?;
        assert_eq!(summary.node, NodeId(2));
        let outcome = daemon.outcomes.recv_timeout(Duration::from_secs(5))?;
        assert_eq!(outcome.node, NodeId(2));
        assert_eq!(outcome.device, summary.device);
        assert_eq!(outcome.addresses, vec![listen]);
        // A device joins as a learner (promoted once it has caught up), with write access.
        assert_eq!(
            outcome.membership_change(),
            net::replica::MembershipChange::AddLearner(NodeId(2))
        );
        assert!(outcome.grants_write());

        // The joiner's store is complete and agrees with the inviter's.
        let b = Membership::load(&store_b)?;
        let (a_chain, a_info, a_device) = {
            let guard = daemon.state.lock();
            (guard.1.chain.clone(), guard.1.info(), guard.1.device())
        };
        assert_eq!(b.chain, a_chain);
        assert_eq!(b.info().volume, a_info.volume);
        assert_eq!(b.genesis, a_info.genesis);
        assert_eq!(b.node, NodeId(2));
        assert_eq!(b.info().node_of(&a_device), Some(NodeId(1)));
        assert!(b.keyring.user_root.is_none());
        assert_eq!(
            std::fs::read(store_b.join(VOLUME_KEY_FILE))?,
            std::fs::read(daemon.store.join(VOLUME_KEY_FILE))?
        );
        // Both ends trust each other now; the inviter saved the new device.
        assert_eq!(daemon.trust.admit(&b.device()), Admission::Member);
        assert_eq!(Membership::load(&daemon.store)?.chain, a_chain);
        assert!(b.trust_set()?.admit(&a_device) == Admission::Member);
        assert_eq!(
            b.static_keys()?.authors.keys().copied().collect::<Vec<_>>(),
            [NodeId(1), NodeId(2)]
        );

        // The daemon's node table and endpoint learn the new device.
        let table = net::link::NodeTable::default();
        daemon
            .state
            .lock()
            .1
            .publish(&daemon.trust, &table, &daemon.endpoint)?;
        assert_eq!(table.device(NodeId(2)), Some(b.device()));
        assert_eq!(table.node(&a_device), Some(NodeId(1)));

        // The same code again (another code keeps pairing open): refused.
        let _open = daemon.code()?;
        let error = join_error(&root.path().join("c"), &code.to_text());
        assert!(error.contains("unknown or already used"), "{error}");
        // A code with a secret the inviter never issued: refused the same way.
        let mut wrong = daemon.code()?;
        wrong.secret = net::pairing::PairingSecret([9; 16]);
        let error = join_error(&root.path().join("d"), &wrong.to_text());
        assert!(error.contains("unknown or already used"), "{error}");
        // An initialised store cannot join.
        let error = join_error(&store_b, &daemon.code()?.to_text());
        assert!(error.contains("already initialised"), "{error}");
        // With no code open at all, a spent code is refused in the handshake, and says so.
        daemon.state.lock().0 = Inviter::new();
        daemon.trust.set_pairing_open(false);
        let error = join_error(&root.path().join("e"), &code.to_text());
        assert!(error.contains("no pairing code is open"), "{error}");
        // No device was added by the refused attempts.
        assert_eq!(daemon.state.lock().1.chain.links().len(), 2);
        daemon.runtime.block_on(daemon.endpoint.close());
        Ok(())
    }

    #[test]
    fn a_device_joins_an_inviter_on_ipv6() -> anyhow::Result<()> {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here; nothing to test");
            return Ok(());
        }
        let root = tempfile::tempdir()?;
        let daemon =
            InviterDaemon::start_on(&root.path().join("a"), Inviter::new(), "[::1]:0".parse()?)?;
        let mut code = daemon.code()?;
        assert!(code.addresses.iter().all(SocketAddr::is_ipv6));
        // An IPv4 address first, where another device answers (refused at once), then
        // the inviter's IPv6 one: each family is dialled from a socket of its own.
        let other = DeviceIdentity::generate();
        let decoy_listen: SocketAddr = "127.0.0.1:0".parse()?;
        let (decoy, _decoy_inbound) = daemon
            .runtime
            .block_on(async { Endpoint::bind(decoy_listen, &other, Arc::new(TrustSet::new())) })?;
        code.addresses.insert(0, decoy.local_addr()?);
        let summary = join(
            &root.path().join("b"),
            &unencrypted(),
            &code.to_text(),
            None,
            JoinRole::Device,
        )?;
        assert_eq!(summary.node, NodeId(2));
        daemon.runtime.block_on(daemon.endpoint.close());
        Ok(())
    }

    #[test]
    fn expired_codes_are_refused_on_both_sides() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::with_ttl(0))?;
        let code = daemon.code()?;
        // The joiner sees the expiry itself and does not dial.
        let error = join_error(&root.path().join("b"), &code.to_text());
        assert!(error.contains("expired"), "{error}");
        // Once no code is open, unknown devices are refused again.
        let stranger = DeviceIdentity::generate().device_id();
        assert_eq!(daemon.trust.admit(&stranger), Admission::PairingOnly);
        daemon.state.lock().0.expire(&daemon.trust);
        assert_eq!(daemon.trust.admit(&stranger), Admission::Refused);

        // The inviter refuses a request that arrives after the expiry.
        let mut inviter = Inviter::with_ttl(60);
        let mut guard = daemon.state.lock();
        let membership = &mut guard.1;
        let issued = inviter.issue_code_at(
            JoinRole::Device,
            membership,
            &daemon.trust,
            &code.addresses,
            1_000,
        )?;
        let joiner = DeviceIdentity::generate();
        let user = membership.chain.user();
        let request = JoinRequest {
            role: JoinRole::Device,
            secret: issued.secret,
            kem_public: joiner.public().kem_public,
            name: "late".into(),
            proof: joiner.possession_proof(&user, "late"),
            addresses: Vec::new(),
        };
        let refused = inviter.handle_join_at(
            membership,
            &daemon.store,
            &daemon.trust,
            joiner.device_id(),
            &request.to_bytes(),
            1_061,
        );
        assert!(
            matches!(refused, Err(Error::Network(net::Error::PairingExpired))),
            "{refused:?}"
        );
        assert_eq!(membership.chain.links().len(), 1);
        Ok(())
    }

    #[test]
    fn unknown_devices_are_refused_in_the_handshake() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::new())?;
        let inviter_device = daemon.endpoint.device();
        let addr = daemon.endpoint.local_addr()?;
        let stranger = DeviceIdentity::generate();
        let stranger_trust = Arc::new(TrustSet::with_members([inviter_device]));
        let (connected, pairing_only_echo) = daemon.runtime.block_on(async {
            let (endpoint, _inbound) =
                Endpoint::bind("127.0.0.1:0".parse()?, &stranger, stranger_trust)?;
            // No code open: the handshake refuses the stranger.
            let connected = endpoint.connect(addr, inviter_device).await.is_ok();
            // With a code open it gets in, but may only send pairing requests.
            daemon.code()?;
            let connection = endpoint.connect(addr, inviter_device).await?;
            let echo = connection.request(Kind::ECHO, b"hi").await;
            endpoint.close().await;
            anyhow::Ok((connected, (connection.granted_by_peer(), echo.is_err())))
        })?;
        assert!(!connected, "an unknown device got through the handshake");
        assert_eq!(pairing_only_echo, (Some(Admission::PairingOnly), true));
        Ok(())
    }

    #[test]
    fn malformed_and_misdirected_requests_change_nothing() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let daemon = InviterDaemon::start(&root.path().join("a"), Inviter::new())?;
        let code = daemon.code()?;
        let mut guard = daemon.state.lock();
        let (inviter, membership) = &mut *guard;
        let joiner = DeviceIdentity::generate();
        assert!(
            inviter
                .handle_join(
                    membership,
                    &daemon.store,
                    &daemon.trust,
                    joiner.device_id(),
                    b"\x01junk"
                )
                .is_err()
        );
        // A proof made for another user: the chain refuses the link, the code is spent.
        let other_user = net::identity::UserRootKey::generate().user_id();
        let request = JoinRequest {
            role: JoinRole::Device,
            secret: code.secret,
            kem_public: joiner.public().kem_public,
            name: "x".into(),
            proof: joiner.possession_proof(&other_user, "x"),
            addresses: Vec::new(),
        };
        assert!(
            inviter
                .handle_join(
                    membership,
                    &daemon.store,
                    &daemon.trust,
                    joiner.device_id(),
                    &request.to_bytes()
                )
                .is_err()
        );
        assert_eq!(membership.chain.links().len(), 1);
        assert_eq!(membership.nodes.len(), 1);
        assert_eq!(daemon.trust.admit(&joiner.device_id()), Admission::Refused);
        Ok(())
    }
}
