//! The store's membership: who this device is, which user it belongs to, and which
//! volume group it takes part in — everything a daemon needs to join its volume.
//!
//! Three files in the store directory, each written atomically (temporary file,
//! fsync, rename, directory fsync) and mode 0600:
//!
//! ```text
//! store/keyring      net::keyring: this device's keys, and the user root key on the
//!                    device that created the user; sealed under a passphrase
//!                    (Argon2id) or, when asked explicitly, unencrypted
//! store/volume.key   fossil's `EpochSecrets` (its one reader and writer): the volume id
//!                    and every epoch secret this device was given; the content keys and
//!                    the Paxos entry keys come from them
//! store/membership   "KITHMEMB" ‖ ver u8 (=2) ‖ role u8 ‖ node u64 ‖ chain_len u32
//!                    ‖ user chain ‖ info_len u32 ‖ net::pairing::VolumeInfo ‖ check[32]
//!                    role: 0 = device, 1 = witness; version 1 had no role byte (a device)
//!                    check = BLAKE3-derive_key(MEMBERSHIP_CHECK_CONTEXT, everything before)
//! ```
//!
//! On the device holding the user root key, `store/removals-owed` lists the removals
//! `kith device remove` started whose key rotation has not committed yet
//! ([`read_removals_owed`]); it is absent when there are none.
//!
//! The membership file is written last: a store that has it is complete. The first run
//! creates a user, this device (node 1) and the home volume (genesis = {1}); a device
//! that joins gets all three from its inviter ([`crate::join`]).
//!
//! A *witness* store (`kith witness join`, [`crate::witness`]) has a keyring and a
//! membership of role witness and no `volume.key`: it never holds the epoch secret.
//!
//! Invariants: the chain verifies and holds this device live; the node table maps this
//! device to `node`; a device's `volume.key` names the same volume as the membership; a
//! witness store has no `volume.key`. A load that finds otherwise refuses the store
//! rather than guess.
//!
//! The passphrase comes from `KITH_PASSPHRASE`, else a terminal prompt. The daemon is
//! re-executed by `kith mount`: [`daemon_environment`] gives the passphrase to pass in
//! the child's environment (never argv).

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fossil::venti_content::EpochSecrets;
use net::identity::{ChainState, DeviceId, DeviceIdentity, LinkBody, UserChain, UserRootKey};
use net::keyring::{KdfParams, Keyring, Lock, Protection};
use net::link::NodeTable;
use net::pairing::{Announcement, JoinRole, VolumeInfo};
use net::quic::TrustSet;
use paxos::{Config as PaxosConfig, ConfigId, NodeId, VolumeId};
use zeroize::Zeroizing;

use crate::config::{Config, Dirs};
use crate::error::{Error, Result};

/// The keyring file in the store.
pub const KEYRING_FILE: &str = "keyring";
/// The membership file in the store.
pub const MEMBERSHIP_FILE: &str = "membership";
/// fossil's volume key file in the store.
pub const VOLUME_KEY_FILE: &str = "volume.key";
/// Removals the root-key daemon has started and not finished (see
/// [`read_removals_owed`]); absent when there are none.
pub const REMOVALS_OWED_FILE: &str = "removals-owed";
const REMOVALS_OWED_MAGIC: &[u8; 8] = b"KITHROWE";
const REMOVALS_OWED_VERSION: u8 = 1;
const REMOVALS_OWED_CHECK_CONTEXT: &str = "kith 2026-01-01 removals owed file v1";
/// Most removals one file records (each is one node id).
const REMOVALS_OWED_MAX: usize = 4096;
/// The network's views of the membership that [`Membership::publish`] keeps in step.
pub(crate) struct NetworkViews<'a> {
    pub trust: &'a TrustSet,
    pub nodes: &'a NodeTable,
    pub endpoint: &'a net::quic::Endpoint,
}

/// Sends this device's announcement (chain, volume, addresses) to every other device
/// of the volume.
pub(crate) fn announce(
    membership: &parking_lot::Mutex<Membership>,
    endpoint: &net::quic::Endpoint,
) {
    let (bytes, others) = {
        let membership = membership.lock();
        let me = membership.device();
        let others: Vec<DeviceId> = membership
            .nodes
            .iter()
            .map(|(_, device)| *device)
            .filter(|device| *device != me)
            .collect();
        (membership.announcement(), others)
    };
    for device in others {
        endpoint.send_detached(device, net::frame::Kind::CHAIN, bytes.clone());
    }
}

/// Takes what device `from` announced ([`Membership::adopt`]) and, when it taught
/// something, publishes the result to the network's views.
pub(crate) fn adopt_announcement(
    membership: &parking_lot::Mutex<Membership>,
    store: &Path,
    views: &NetworkViews<'_>,
    from: DeviceId,
    bytes: &[u8],
) {
    let mut membership = membership.lock();
    match membership.adopt(store, from, bytes) {
        Ok(adopted) if adopted.changed() => {
            tracing::info!(%from, ?adopted, "learned devices from an announcement");
            if let Err(error) = membership.publish(views.trust, views.nodes, views.endpoint) {
                tracing::warn!(%error, "cannot apply an announcement");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%from, %error, "announcement refused"),
    }
}

/// The passphrase of the keyring, for non-interactive use.
pub const PASSPHRASE_ENV: &str = "KITH_PASSPHRASE";
/// `unencrypted` stores a new keyring in the clear (servers, tests); `encrypted` insists.
pub const KEYRING_ENV: &str = "KITH_KEYRING";
/// This device's name in the user chain (default: the host name).
pub const DEVICE_NAME_ENV: &str = "KITH_DEVICE_NAME";

const MEMBERSHIP_MAGIC: &[u8; 8] = b"KITHMEMB";
const MEMBERSHIP_VERSION: u8 = 2;
/// The version before stores had a role (every one a device).
const MEMBERSHIP_VERSION_DEVICE_ONLY: u8 = 1;
const MEMBERSHIP_CHECK_CONTEXT: &str = "kith 2026-01-01 membership file v1";
/// Largest membership file read.
const MEMBERSHIP_BYTES_MAX: u64 = 4 << 20;
/// The genesis configuration's number (the first ballot epoch).
const GENESIS_CONFIG: ConfigId = ConfigId(1);
/// The device that creates a volume is its node 1.
const FIRST_NODE: NodeId = NodeId(1);

/// How the keyring is stored, for `kith status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyringMode {
    /// Sealed under a passphrase.
    Encrypted,
    /// Secrets in the clear (explicitly asked for).
    Unencrypted,
}

impl KeyringMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyringMode::Encrypted => "encrypted",
            KeyringMode::Unencrypted => "unencrypted",
        }
    }

    /// Parses `encrypted` / `unencrypted` (config file and environment).
    pub fn parse(text: &str) -> Option<KeyringMode> {
        match text.trim() {
            "encrypted" => Some(KeyringMode::Encrypted),
            "unencrypted" => Some(KeyringMode::Unencrypted),
            _ => None,
        }
    }
}

/// Everything a daemon needs to join its volume's group.
#[derive(Debug)]
pub struct Membership {
    /// This device's keys; the user root key on the device that created the user.
    pub keyring: Keyring,
    /// The user's signed device list.
    pub chain: UserChain,
    /// The home volume.
    pub volume: VolumeId,
    /// This device's node id in it (also its fossil device number).
    pub node: NodeId,
    /// The volume's first configuration.
    pub genesis: PaxosConfig,
    /// Node id ↔ device key.
    pub nodes: Vec<(NodeId, DeviceId)>,
    /// Where devices were last known to listen.
    pub addresses: Vec<(DeviceId, Vec<SocketAddr>)>,
    /// A device, or a witness (which holds no epoch secret).
    pub role: JoinRole,
    mode: KeyringMode,
    /// The volume's epoch secrets as of loading (`volume.key` is the truth: rotations
    /// add to it while the daemon runs); `None` exactly for a witness.
    epoch_secrets: Option<EpochSecrets>,
}

/// A device [`Membership::revoke`] removed from the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub device: DeviceId,
    pub name: String,
    /// Its node id in the volume: propose `MembershipChange::Remove(node)`.
    pub node: Option<NodeId>,
}

/// What [`Membership::adopt`] learned from another device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// The user chain grew (devices added or revoked): refresh trust.
    pub chain_grew: bool,
    /// Node ids learned for devices.
    pub new_nodes: Vec<(NodeId, DeviceId)>,
    /// Addresses learned or changed.
    pub addresses_changed: bool,
}

impl Adopted {
    pub fn changed(&self) -> bool {
        self.chain_grew || !self.new_nodes.is_empty() || self.addresses_changed
    }
}

impl Membership {
    /// Loads the store's membership, or on first run creates the user, this device and
    /// the home volume (this device is node 1, genesis = {1}). A store from before
    /// membership existed keeps its `volume.key` (and so its data).
    pub fn load_or_create(store: &Path, dirs: &Dirs, config: &Config) -> Result<Membership> {
        let _ = dirs;
        create_private_dir(store)?;
        if store.join(MEMBERSHIP_FILE).exists() {
            return Membership::load(store);
        }
        let keyring_path = store.join(KEYRING_FILE);
        let (keyring, mode) = if keyring_path.exists() {
            // A first run that stopped before writing the membership: carry on with its keys.
            let mode = stored_mode(store)?;
            let keyring = open_keyring(store, mode)?;
            if keyring.user_root.is_none() {
                return Err(membership_error(
                    store,
                    "a join into this store did not finish; remove the store and join again",
                ));
            }
            (keyring, mode)
        } else {
            let mode = creation_mode(config)?;
            let mut keyring = Keyring::new(DeviceIdentity::generate());
            keyring.user_root = Some(UserRootKey::generate());
            save_keyring(store, &keyring, mode, KdfParams::RECOMMENDED)?;
            (keyring, mode)
        };
        let Some(root) = keyring.user_root.as_ref() else {
            return Err(membership_error(store, "no user root key"));
        };
        let epoch_secrets = read_or_create_volume_key(store)?;
        let volume = volume_of(&epoch_secrets);
        let device = keyring.device.public();
        let name = device_name();
        let mut chain = UserChain::new(root.user_id());
        chain
            .append(
                root,
                LinkBody::AddDevice {
                    device,
                    proof: keyring.device.possession_proof(&root.user_id(), &name),
                    name,
                },
            )
            .map_err(|error| membership_error(store, &error.to_string()))?;
        let genesis = PaxosConfig::majority(GENESIS_CONFIG, [FIRST_NODE], [], [])
            .map_err(|error| membership_error(store, &error.to_string()))?;
        let membership = Membership {
            keyring,
            chain,
            volume,
            node: FIRST_NODE,
            genesis,
            nodes: vec![(FIRST_NODE, device.id)],
            addresses: Vec::new(),
            role: JoinRole::Device,
            mode,
            epoch_secrets: Some(epoch_secrets),
        };
        membership.save(store)?;
        tracing::info!(
            device = %membership.device(),
            user = %membership.chain.user(),
            "created a new user, device and home volume"
        );
        Ok(membership)
    }

    /// Loads a complete store (keyring, volume key, membership) and checks that they
    /// agree. A witness store has no volume key (and must not have one).
    pub fn load(store: &Path) -> Result<Membership> {
        let (role, node, chain, info) = read_membership_file(store)?;
        let epoch_secrets = match role {
            JoinRole::Device => {
                let epoch_secrets = read_volume_key(store)?;
                if volume_of(&epoch_secrets) != info.volume {
                    return Err(membership_error(
                        store,
                        "volume.key belongs to another volume than the membership",
                    ));
                }
                Some(epoch_secrets)
            }
            JoinRole::Witness => {
                if store.join(VOLUME_KEY_FILE).exists() {
                    return Err(membership_error(
                        store,
                        "a witness store holds a volume.key: a witness must never hold the \
                         volume's secret",
                    ));
                }
                None
            }
        };
        let mode = stored_mode(store)?;
        let keyring = open_keyring(store, mode)?;
        let membership = Membership {
            keyring,
            chain,
            volume: info.volume,
            node,
            genesis: info.genesis,
            nodes: info.nodes,
            addresses: info.addresses,
            role,
            mode,
            epoch_secrets,
        };
        membership.check(store)?;
        Ok(membership)
    }

    /// Writes the membership file atomically (keyring and volume key are written when
    /// they are created and never change).
    pub fn save(&self, store: &Path) -> Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(MEMBERSHIP_MAGIC);
        body.push(MEMBERSHIP_VERSION);
        body.push(role_byte(self.role));
        body.extend_from_slice(&self.node.0.to_le_bytes());
        put_u32_prefixed(&mut body, &self.chain.encode());
        put_u32_prefixed(&mut body, &self.info().to_bytes());
        let check = blake3::derive_key(MEMBERSHIP_CHECK_CONTEXT, &body);
        body.extend_from_slice(&check);
        write_atomically(&store.join(MEMBERSHIP_FILE), &body)
    }

    pub fn keyring_mode(&self) -> KeyringMode {
        self.mode
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.keyring.device.device_id()
    }

    /// This device's number in fossil (its node id).
    pub fn fossil_device(&self) -> Result<fossil::op::DeviceId> {
        u32::try_from(self.node.0)
            .ok()
            .filter(|number| (1..=fossil::op::DeviceId::MAX).contains(number))
            .map(fossil::op::DeviceId)
            .ok_or_else(|| Error::Membership {
                store: PathBuf::new(),
                problem: format!("node id {} is out of fossil's device range", self.node),
            })
    }

    /// The verified chain: live and revoked devices with their names.
    pub fn chain_state(&self) -> Result<ChainState> {
        Ok(self.chain.verify()?)
    }

    /// The volume as announcements and join answers carry it.
    pub fn info(&self) -> VolumeInfo {
        VolumeInfo {
            volume: self.volume,
            genesis: self.genesis.clone(),
            nodes: self.nodes.clone(),
            addresses: self.addresses.clone(),
        }
    }

    /// The volume key file's epoch secrets as loaded (the source of every volume
    /// subkey). A witness has none.
    pub(crate) fn epoch_secrets(&self) -> Result<&EpochSecrets> {
        self.epoch_secrets
            .as_ref()
            .ok_or_else(|| Error::Membership {
                store: PathBuf::new(),
                problem: "this store is a witness: it holds no volume key and mounts nothing \
                          (run it with `kith witness run`)"
                    .into(),
            })
    }

    /// Brings a running daemon's trust, node table and endpoint addresses up to date
    /// with this membership (after a join or an adopted announcement). Connections of
    /// devices no longer trusted are closed.
    pub fn publish(
        &self,
        trust: &TrustSet,
        nodes: &NodeTable,
        endpoint: &net::quic::Endpoint,
    ) -> Result<()> {
        let state = self.chain_state()?;
        trust.set_from_chains([&state]);
        for (node, device) in &self.nodes {
            if state.is_live(device) {
                nodes.insert(*node, *device);
            } else {
                nodes.remove(*node);
            }
        }
        let me = self.device();
        for (device, list) in &self.addresses {
            if *device != me && state.is_live(device) && !list.is_empty() {
                endpoint.set_addresses(*device, list.clone());
            }
        }
        endpoint.refresh_trust();
        Ok(())
    }

    /// Records where this device listens, so announcements tell the others. Returns
    /// whether that changed (then [`save`](Self::save)).
    pub fn set_own_addresses(&mut self, addresses: Vec<SocketAddr>) -> bool {
        let me = self.device();
        set_addresses(&mut self.addresses, me, addresses)
    }

    /// This device's view of user and volume, for the other devices
    /// (send as a [`net::frame::Kind::CHAIN`] message).
    pub fn announcement(&self) -> Vec<u8> {
        Announcement {
            chain: self.chain.clone(),
            info: self.info(),
        }
        .to_bytes()
    }

    /// Takes what device `from` (authenticated by the connection) announced: a valid
    /// extension of the user chain, node ids of live devices not known yet, and `from`'s
    /// own addresses (other devices' addresses only where none are known). Refuses
    /// another user's chain, a fork, another volume or genesis. Saves when something
    /// changed.
    pub fn adopt(&mut self, store: &Path, from: DeviceId, bytes: &[u8]) -> Result<Adopted> {
        let announcement = Announcement::from_bytes(bytes)?;
        let mut adopted = Adopted::default();
        let info = announcement.info;
        if info.volume != self.volume || info.genesis != self.genesis {
            return Err(Error::Network(net::Error::Malformed {
                what: "announcement",
                reason: "another volume",
            }));
        }
        let theirs = announcement.chain;
        if theirs.user() != self.chain.user() {
            return Err(Error::Network(net::Error::ChainBroken {
                seq: 0,
                reason: "announcement of another user",
            }));
        }
        if theirs.links().len() > self.chain.links().len() {
            theirs.verify()?;
            theirs.check_extends(&self.chain)?;
            self.chain = theirs;
            adopted.chain_grew = true;
        } else {
            // Ours must extend theirs; a differing link is a fork.
            self.chain.check_extends(&theirs)?;
        }
        let state = self.chain.verify()?;
        for (node, device) in info.nodes {
            let known = self.nodes.iter().any(|(n, d)| *n == node || *d == device);
            if !known && state.is_live(&device) {
                self.nodes.push((node, device));
                adopted.new_nodes.push((node, device));
            }
        }
        let me = self.device();
        for (device, list) in info.addresses {
            if device == me || !state.is_live(&device) {
                continue;
            }
            let replace = device == from
                || !self
                    .addresses
                    .iter()
                    .any(|(d, known)| *d == device && !known.is_empty());
            if replace && set_addresses(&mut self.addresses, device, list) {
                adopted.addresses_changed = true;
            }
        }
        if adopted.changed() {
            self.save(store)?;
        }
        Ok(adopted)
    }

    /// `kith device remove WHO`: revokes the live device named `who` (its name in the
    /// chain, or its fingerprint with or without dashes) with a signed link, and saves.
    /// Only the device holding the user root key can, and not on itself. The daemon
    /// proposes `Remove(node)` and a key rotation before it calls this, then publishes
    /// (closing the device's connections) and announces the chain (`crate::sync`).
    pub fn revoke(&mut self, store: &Path, who: &str) -> Result<Revoked> {
        let revoked = self.revocable(store, who)?;
        let Some(root) = self.keyring.user_root.as_ref() else {
            return Err(membership_error(store, "no user root key"));
        };
        let mut chain = self.chain.clone();
        chain.append(
            root,
            LinkBody::RevokeDevice {
                device: revoked.device,
            },
        )?;
        self.chain = chain;
        self.save(store)?;
        Ok(revoked)
    }

    /// The device [`revoke`](Self::revoke) would remove, checked but not revoked yet (so
    /// its vote can be removed while it is still trusted).
    pub fn revocable(&self, store: &Path, who: &str) -> Result<Revoked> {
        if self.keyring.user_root.is_none() {
            return Err(membership_error(
                store,
                "only the device holding the user root key can remove devices",
            ));
        }
        let state = self.chain_state()?;
        let wanted = who.trim();
        let wanted_fingerprint: String = wanted
            .chars()
            .filter(|ch| *ch != '-')
            .map(|ch| ch.to_ascii_uppercase())
            .collect();
        let matches: Vec<(&DeviceId, &net::identity::LiveDevice)> = state
            .devices
            .iter()
            .filter(|(device, live)| {
                live.name == wanted || device.fingerprint().replace('-', "") == wanted_fingerprint
            })
            .collect();
        let (device, live) = match matches.as_slice() {
            [one] => (*one.0, one.1.clone()),
            [] => {
                return Err(membership_error(
                    store,
                    &format!("no live device is named {wanted:?} (see `kith device list`)"),
                ));
            }
            _ => {
                return Err(membership_error(
                    store,
                    &format!("several devices are named {wanted:?}: give a fingerprint"),
                ));
            }
        };
        if device == self.device() {
            return Err(membership_error(store, "a device cannot remove itself"));
        }
        Ok(Revoked {
            device,
            name: live.name,
            node: self.info().node_of(&device),
        })
    }

    /// The invariants a loaded or joined membership must hold.
    fn check(&self, store: &Path) -> Result<()> {
        let state = self
            .chain
            .verify()
            .map_err(|error| membership_error(store, &format!("user chain: {error}")))?;
        let me = self.device();
        if !state.is_live(&me) {
            return Err(membership_error(
                store,
                "this device is not (or no longer) a device of its user",
            ));
        }
        if let Some(root) = &self.keyring.user_root
            && root.user_id() != self.chain.user()
        {
            return Err(membership_error(
                store,
                "the keyring's root key is another user's",
            ));
        }
        let mapped = self
            .nodes
            .iter()
            .find(|(_, device)| *device == me)
            .map(|(node, _)| *node);
        if mapped != Some(self.node) {
            return Err(membership_error(
                store,
                "the node table does not map this device to its node id",
            ));
        }
        self.fossil_device()?;
        Ok(())
    }

    /// A membership received by `kith device join` (or `kith witness join`, with no
    /// epoch secret): written into `store` (keyring, a device's volume key, then the
    /// membership file) after the same checks as a load.
    pub(crate) fn from_join(
        store: &Path,
        keyring: Keyring,
        mode: KeyringMode,
        passphrase: Option<&str>,
        answer: JoinedVolume,
    ) -> Result<Membership> {
        let role = match answer.epoch_secrets {
            Some(_) => JoinRole::Device,
            None => JoinRole::Witness,
        };
        let membership = Membership {
            keyring,
            chain: answer.chain,
            volume: answer.info.volume,
            node: answer.node,
            genesis: answer.info.genesis,
            nodes: answer.info.nodes,
            addresses: answer.info.addresses,
            role,
            mode,
            epoch_secrets: answer.epoch_secrets,
        };
        membership.check(store)?;
        create_private_dir(store)?;
        let lock = match (mode, passphrase) {
            (KeyringMode::Unencrypted, _) => Lock::Unencrypted,
            (KeyringMode::Encrypted, Some(passphrase)) => Lock::Passphrase {
                passphrase,
                params: KdfParams::RECOMMENDED,
            },
            (KeyringMode::Encrypted, None) => {
                return Err(membership_error(store, "no passphrase for the keyring"));
            }
        };
        membership.keyring.save(&store.join(KEYRING_FILE), lock)?;
        if let Some(secrets) = &membership.epoch_secrets {
            if volume_of(secrets) != membership.volume {
                return Err(membership_error(
                    store,
                    "the epoch secrets name another volume",
                ));
            }
            write_volume_key(store, secrets)?;
        }
        membership.save(store)?;
        Ok(membership)
    }
}

/// What a join brought: the parts of a membership that come from the inviter.
#[derive(Debug)]
pub(crate) struct JoinedVolume {
    pub chain: UserChain,
    pub info: VolumeInfo,
    pub node: NodeId,
    /// Every epoch secret of the volume for a device; `None` for a witness.
    pub epoch_secrets: Option<EpochSecrets>,
}

/// The role of the store's membership (public data, no passphrase needed), or `None`
/// when the store has no membership yet.
pub fn store_role(store: &Path) -> Result<Option<JoinRole>> {
    if !store.join(MEMBERSHIP_FILE).exists() {
        return Ok(None);
    }
    Ok(Some(read_membership_file(store)?.0))
}

/// Environment for the re-executed background daemon: the passphrase, asked on the
/// terminal here (the daemon has none) when the keyring needs one and
/// `KITH_PASSPHRASE` is not already set. Pass it with `Command::env`, never argv.
pub fn daemon_environment(
    store: &Path,
    config: &Config,
) -> Result<Vec<(&'static str, Zeroizing<String>)>> {
    if std::env::var_os(PASSPHRASE_ENV).is_some_and(|value| !value.is_empty()) {
        return Ok(Vec::new());
    }
    let needs = if store.join(KEYRING_FILE).exists() {
        stored_mode(store)? == KeyringMode::Encrypted
    } else {
        creation_mode(config)? == KeyringMode::Encrypted
    };
    if !needs {
        return Ok(Vec::new());
    }
    let creating = !store.join(KEYRING_FILE).exists();
    let passphrase = passphrase(store, creating)?;
    if !creating {
        // Fail here, on the terminal, rather than in the daemon's log.
        Keyring::load(&store.join(KEYRING_FILE), Some(&passphrase))?;
    }
    Ok(vec![(PASSPHRASE_ENV, passphrase)])
}

/// `kith device list`: the user's devices as the store's membership records them (no
/// passphrase needed: the membership file holds public data only).
pub fn list_devices(store: &Path) -> Result<String> {
    let (_, node, chain, info) = read_membership_file(store)?;
    let state = chain.verify()?;
    let own_device = info.device_of(node);
    let mut out = format!("user {}\n", chain.user());
    for (device, live) in &state.devices {
        let node = info
            .node_of(device)
            .map(|node| format!("node {}", node.0))
            .unwrap_or_else(|| "no node".into());
        let this = if Some(*device) == own_device {
            "  (this device)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{}  {}  {node}{this}\n",
            device.fingerprint(),
            live.name
        ));
    }
    for device in &state.revoked {
        out.push_str(&format!("{}  revoked\n", device.fingerprint()));
    }
    Ok(out)
}

/// The mode a new keyring gets: `KITH_KEYRING`, else config `keyring`, else encrypted.
pub(crate) fn creation_mode(config: &Config) -> Result<KeyringMode> {
    match std::env::var(KEYRING_ENV) {
        Ok(value) if !value.is_empty() => KeyringMode::parse(&value).ok_or_else(|| {
            Error::Startup(format!(
                "{KEYRING_ENV}={value:?}: expected `encrypted` or `unencrypted`"
            ))
        }),
        _ => Ok(config.keyring.unwrap_or(KeyringMode::Encrypted)),
    }
}

/// The passphrase: `KITH_PASSPHRASE`, else asked on the terminal (twice for a new keyring).
pub(crate) fn passphrase(store: &Path, creating: bool) -> Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var(PASSPHRASE_ENV)
        && !value.is_empty()
    {
        return Ok(Zeroizing::new(value));
    }
    if !std::io::stdin().is_terminal() {
        let problem = if creating {
            format!(
                "a new keyring needs a passphrase: set {PASSPHRASE_ENV}, or \
                 {KEYRING_ENV}=unencrypted for a server or a test"
            )
        } else {
            format!("the keyring is encrypted: set {PASSPHRASE_ENV} or run in a terminal")
        };
        return Err(membership_error(store, &problem));
    }
    let prompt_error = |error: std::io::Error| Error::Path {
        what: "read the passphrase from",
        path: PathBuf::from("/dev/tty"),
        source: error,
    };
    let first = Zeroizing::new(
        rpassword::prompt_password("kith keyring passphrase: ").map_err(prompt_error)?,
    );
    if first.is_empty() {
        return Err(membership_error(store, "empty passphrase"));
    }
    if creating {
        let second = Zeroizing::new(
            rpassword::prompt_password("again, to confirm: ").map_err(prompt_error)?,
        );
        if *first != *second {
            return Err(membership_error(store, "the passphrases differ"));
        }
    }
    Ok(first)
}

/// The mode recorded in the store's keyring header.
fn stored_mode(store: &Path) -> Result<KeyringMode> {
    Ok(
        match net::keyring::read_protection(&store.join(KEYRING_FILE))? {
            Protection::Unencrypted => KeyringMode::Unencrypted,
            Protection::Passphrase(_) => KeyringMode::Encrypted,
        },
    )
}

fn open_keyring(store: &Path, mode: KeyringMode) -> Result<Keyring> {
    let path = store.join(KEYRING_FILE);
    match mode {
        KeyringMode::Unencrypted => Ok(Keyring::load(&path, None)?),
        KeyringMode::Encrypted => {
            let passphrase = passphrase(store, false)?;
            Ok(Keyring::load(&path, Some(&passphrase))?)
        }
    }
}

fn save_keyring(
    store: &Path,
    keyring: &Keyring,
    mode: KeyringMode,
    params: KdfParams,
) -> Result<()> {
    let path = store.join(KEYRING_FILE);
    match mode {
        KeyringMode::Unencrypted => keyring.save(&path, Lock::Unencrypted)?,
        KeyringMode::Encrypted => {
            let passphrase = passphrase(store, true)?;
            keyring.save(
                &path,
                Lock::Passphrase {
                    passphrase: &passphrase,
                    params,
                },
            )?;
        }
    }
    Ok(())
}

fn read_membership_file(store: &Path) -> Result<(JoinRole, NodeId, UserChain, VolumeInfo)> {
    let path = store.join(MEMBERSHIP_FILE);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|file| file.take(MEMBERSHIP_BYTES_MAX + 1).read_to_end(&mut bytes))
        .map_err(|source| Error::Path {
            what: "read the membership",
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MEMBERSHIP_BYTES_MAX {
        return Err(membership_error(store, "membership file too large"));
    }
    let corrupt = |what: &str| membership_error(store, &format!("membership file {what}"));
    let Some(body_len) = bytes.len().checked_sub(32) else {
        return Err(corrupt("truncated"));
    };
    let (body, check) = bytes.split_at(body_len);
    if blake3::derive_key(MEMBERSHIP_CHECK_CONTEXT, body) != check {
        return Err(corrupt("damaged (checksum mismatch)"));
    }
    let mut input = body;
    if take(&mut input, MEMBERSHIP_MAGIC.len()) != Some(MEMBERSHIP_MAGIC.as_slice()) {
        return Err(corrupt("is not a membership file"));
    }
    let role = match take(&mut input, 1) {
        Some([MEMBERSHIP_VERSION_DEVICE_ONLY]) => JoinRole::Device,
        Some([MEMBERSHIP_VERSION]) => match take(&mut input, 1) {
            Some([0]) => JoinRole::Device,
            Some([1]) => JoinRole::Witness,
            _ => return Err(corrupt("has an unknown role")),
        },
        _ => return Err(corrupt("has an unsupported version")),
    };
    let node = take(&mut input, 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| NodeId(u64::from_le_bytes(b)))
        .ok_or_else(|| corrupt("truncated"))?;
    let chain = take_u32_prefixed(&mut input).ok_or_else(|| corrupt("truncated"))?;
    let chain = UserChain::decode(chain)?;
    let info = take_u32_prefixed(&mut input).ok_or_else(|| corrupt("truncated"))?;
    let info = VolumeInfo::from_bytes(info)?;
    if !input.is_empty() {
        return Err(corrupt("has trailing bytes"));
    }
    Ok((role, node, chain, info))
}

/// Reads `volume.key`, creating a fresh random one if there is none.
fn read_or_create_volume_key(store: &Path) -> Result<EpochSecrets> {
    let path = store.join(VOLUME_KEY_FILE);
    EpochSecrets::read_or_create(&path).map_err(|error| volume_key_error(store, &error))
}

/// Reads `volume.key` (fossil's format, any version).
pub(crate) fn read_volume_key(store: &Path) -> Result<EpochSecrets> {
    match EpochSecrets::read(&store.join(VOLUME_KEY_FILE)) {
        Ok(Some(secrets)) => Ok(secrets),
        Ok(None) => Err(membership_error(store, "volume.key is missing")),
        Err(error) => Err(volume_key_error(store, &error)),
    }
}

/// The nodes whose removal `kith device remove` started on this store and whose key
/// rotation has not committed yet (the root-key daemon proposes it at start and on
/// its reconcile step; `crate::sync`). No file: none.
///
/// ```text
/// removals-owed = "KITHROWE" ‖ ver u8 (=1) ‖ n u16 ‖ node u64*n ‖ check[32]
///                 nodes strictly increasing, n ≤ 4096
/// check         = BLAKE3-derive_key("kith 2026-01-01 removals owed file v1", everything before)
/// ```
///
/// A damaged file is an error: the caller must not take it as "nothing owed".
pub(crate) fn read_removals_owed(store: &Path) -> Result<std::collections::BTreeSet<NodeId>> {
    let path = store.join(REMOVALS_OWED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(std::collections::BTreeSet::new());
        }
        Err(source) => {
            return Err(Error::Path {
                what: "read",
                path,
                source,
            });
        }
    };
    let corrupt = |what: &str| membership_error(store, &format!("{REMOVALS_OWED_FILE} {what}"));
    let Some(body_len) = bytes.len().checked_sub(32) else {
        return Err(corrupt("is truncated"));
    };
    let (body, check) = bytes.split_at(body_len);
    if check != blake3::derive_key(REMOVALS_OWED_CHECK_CONTEXT, body).as_slice() {
        return Err(corrupt("fails its checksum"));
    }
    let mut input = body;
    if take(&mut input, 8) != Some(REMOVALS_OWED_MAGIC.as_slice())
        || take(&mut input, 1) != Some([REMOVALS_OWED_VERSION].as_slice())
    {
        return Err(corrupt("has an unknown header"));
    }
    let count = take(&mut input, 2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| corrupt("is truncated"))?;
    let count = usize::from(count);
    if count > REMOVALS_OWED_MAX || input.len() != count * 8 {
        return Err(corrupt("has the wrong length"));
    }
    let mut nodes = std::collections::BTreeSet::new();
    let mut previous: Option<u64> = None;
    for chunk in input.chunks_exact(8) {
        let node = <[u8; 8]>::try_from(chunk)
            .map(u64::from_le_bytes)
            .map_err(|_| corrupt("is truncated"))?;
        if previous.is_some_and(|p| p >= node) {
            return Err(corrupt("lists nodes out of order"));
        }
        previous = Some(node);
        nodes.insert(NodeId(node));
    }
    Ok(nodes)
}

/// Records `nodes` as the removals owed (atomically), or removes the file when there
/// are none.
pub(crate) fn write_removals_owed(
    store: &Path,
    nodes: &std::collections::BTreeSet<NodeId>,
) -> Result<()> {
    let path = store.join(REMOVALS_OWED_FILE);
    if nodes.is_empty() {
        let io_error = |source| Error::Path {
            what: "remove",
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(error)),
        }
        return std::fs::File::open(store)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error);
    }
    let count = u16::try_from(nodes.len())
        .ok()
        .filter(|n| usize::from(*n) <= REMOVALS_OWED_MAX)
        .ok_or_else(|| membership_error(store, "too many removals owed"))?;
    let mut body = Vec::with_capacity(11 + nodes.len() * 8 + 32);
    body.extend_from_slice(REMOVALS_OWED_MAGIC);
    body.push(REMOVALS_OWED_VERSION);
    body.extend_from_slice(&count.to_le_bytes());
    for node in nodes {
        body.extend_from_slice(&node.0.to_le_bytes());
    }
    let check = blake3::derive_key(REMOVALS_OWED_CHECK_CONTEXT, &body);
    body.extend_from_slice(&check);
    write_atomically(&path, &body)
}

/// Writes `volume.key` atomically (mode 0600).
pub(crate) fn write_volume_key(store: &Path, secrets: &EpochSecrets) -> Result<()> {
    secrets
        .write(&store.join(VOLUME_KEY_FILE))
        .map_err(|error| volume_key_error(store, &error))
}

fn volume_key_error(store: &Path, error: &fossil::Error) -> Error {
    membership_error(store, &format!("volume.key: {error}"))
}

/// The volume a key file belongs to.
pub(crate) fn volume_of(secrets: &EpochSecrets) -> VolumeId {
    VolumeId(u128::from_le_bytes(secrets.volume_id()))
}

/// This device's name: `KITH_DEVICE_NAME`, else the host name, cut to the chain's bound.
pub(crate) fn device_name() -> String {
    let raw = std::env::var(DEVICE_NAME_ENV)
        .ok()
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let mut name = raw.trim().to_owned();
    let mut end = name.len().min(net::identity::DEVICE_NAME_BYTES_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    if name.is_empty() {
        "device".to_owned()
    } else {
        name
    }
}

fn set_addresses(
    table: &mut Vec<(DeviceId, Vec<SocketAddr>)>,
    device: DeviceId,
    mut list: Vec<SocketAddr>,
) -> bool {
    list.truncate(net::pairing::ADDRESSES_MAX);
    match table.iter_mut().find(|(d, _)| *d == device) {
        Some((_, known)) if *known == list => false,
        Some((_, known)) => {
            *known = list;
            true
        }
        None => {
            table.push((device, list));
            true
        }
    }
}

fn role_byte(role: JoinRole) -> u8 {
    match role {
        JoinRole::Device => 0,
        JoinRole::Witness => 1,
    }
}

fn membership_error(store: &Path, problem: &str) -> Error {
    Error::Membership {
        store: store.to_owned(),
        problem: problem.to_owned(),
    }
}

fn put_u32_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(input: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if input.len() < len {
        return None;
    }
    let (head, tail) = input.split_at(len);
    *input = tail;
    Some(head)
}

fn take_u32_prefixed<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(input, 4).and_then(|b| <[u8; 4]>::try_from(b).ok())?;
    take(input, u32::from_le_bytes(len) as usize)
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Path {
            what: "create the store",
            path: dir.to_owned(),
            source,
        })
}

/// Temporary sibling, fsync, rename, fsync the directory; mode 0600.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let io_error = |source| Error::Path {
        what: "write",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }
    Ok(())
}

/// What the daemon builds from a membership, for tests that check it without a daemon.
#[cfg(test)]
impl Membership {
    /// The replica's keys (as the daemon's `NodeKeys` resolves them): the entry key of epoch 0 (derived from the volume's epoch
    /// secret) and the signing keys of the nodes whose devices are live in the chain.
    pub fn static_keys(&self) -> Result<net::replica::StaticKeys> {
        let state = self.chain_state()?;
        let mut keys = net::replica::StaticKeys::default();
        for (epoch, secret) in self.epoch_secrets()?.iter() {
            keys.epochs.insert(
                net::entry::KeyEpoch(u64::from(epoch)),
                net::entry::EntryKey::derive(secret),
            );
        }
        for (node, device) in &self.nodes {
            if state.is_live(device) {
                keys.authors.insert(*node, device.verifying_key()?);
            }
        }
        Ok(keys)
    }

    /// A node table holding every node ↔ device of the volume.
    pub fn node_table(&self) -> NodeTable {
        NodeTable::new(self.nodes.iter().copied())
    }

    /// A trust set admitting exactly the live devices of the user chain.
    pub fn trust_set(&self) -> Result<std::sync::Arc<TrustSet>> {
        let trust = TrustSet::new();
        trust.set_from_chains([&self.chain_state()?]);
        Ok(std::sync::Arc::new(trust))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::dirs_in;

    fn unencrypted() -> Config {
        Config {
            keyring: Some(KeyringMode::Unencrypted),
            ..Config::default()
        }
    }

    #[test]
    fn first_run_creates_user_device_and_volume_then_loads_them() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let dirs = dirs_in(root.path());
        let created = Membership::load_or_create(&store, &dirs, &unencrypted())?;
        assert_eq!(created.node, NodeId(1));
        assert_eq!(
            created.genesis.voters.iter().copied().collect::<Vec<_>>(),
            [NodeId(1)]
        );
        assert_eq!(created.nodes, vec![(NodeId(1), created.device())]);
        assert!(created.keyring.user_root.is_some());
        assert_eq!(created.keyring_mode(), KeyringMode::Unencrypted);
        let state = created.chain_state()?;
        assert!(state.is_live(&created.device()));
        assert_eq!(state.devices.len(), 1);
        for file in [KEYRING_FILE, VOLUME_KEY_FILE, MEMBERSHIP_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.join(file))?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }

        let loaded = Membership::load_or_create(&store, &dirs, &unencrypted())?;
        assert_eq!(loaded.device(), created.device());
        assert_eq!(loaded.chain, created.chain);
        assert_eq!(loaded.volume, created.volume);
        assert_eq!(loaded.info(), created.info());
        assert_eq!(loaded.epoch_secrets()?, created.epoch_secrets()?);
        // The volume key fossil reads names the same volume.
        let key = EpochSecrets::read(&store.join(VOLUME_KEY_FILE))?.expect("volume.key");
        assert_eq!(volume_of(&key), loaded.volume);
        assert_eq!(key.newest().0, 0);
        Ok(())
    }

    #[test]
    fn an_existing_volume_key_is_kept() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        std::fs::create_dir_all(&store)?;
        let mut old = [7u8; 48];
        old[40] = 9;
        std::fs::write(store.join(VOLUME_KEY_FILE), old)?;
        let created = Membership::load_or_create(&store, &dirs_in(root.path()), &unencrypted())?;
        assert_eq!(created.epoch_secrets()?.get(0), Some(&[7u8; 32]));
        assert_eq!(created.volume.0.to_le_bytes().as_slice(), &old[32..]);
        assert_eq!(std::fs::read(store.join(VOLUME_KEY_FILE))?, old);
        Ok(())
    }

    #[test]
    fn damaged_or_mismatched_files_are_refused() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let dirs = dirs_in(root.path());
        Membership::load_or_create(&store, &dirs, &unencrypted())?;
        let path = store.join(MEMBERSHIP_FILE);
        let good = std::fs::read(&path)?;
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        std::fs::write(&path, &flipped)?;
        let error = Membership::load(&store).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("checksum")),
            "{error:?}"
        );
        std::fs::write(&path, &good[..10])?;
        assert!(Membership::load(&store).is_err());
        std::fs::write(&path, &good)?;
        // A volume key of another volume.
        std::fs::write(store.join(VOLUME_KEY_FILE), [1u8; 48])?;
        let error = Membership::load(&store).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("another volume")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn keys_trust_and_nodes_follow_the_chain() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let membership = Membership::load_or_create(&store, &dirs_in(root.path()), &unencrypted())?;
        let keys = membership.static_keys()?;
        assert_eq!(keys.epochs.len(), 1);
        assert_eq!(
            keys.authors.get(&NodeId(1)).map(|key| key.to_bytes()),
            Some(*membership.device().as_bytes())
        );
        let trust = membership.trust_set()?;
        use net::quic::{Admission, Trust};
        assert_eq!(trust.admit(&membership.device()), Admission::Member);
        let stranger = DeviceIdentity::generate().device_id();
        assert_eq!(trust.admit(&stranger), Admission::Refused);
        assert_eq!(
            membership.node_table().device(NodeId(1)),
            Some(membership.device())
        );
        assert_eq!(membership.fossil_device()?, fossil::op::DeviceId(1));
        Ok(())
    }

    /// Device a (created the user) and device b (added by a, as a join would), with
    /// b's store written but a not yet told.
    fn two_devices(root: &Path) -> anyhow::Result<(Membership, Membership)> {
        let (store_a, store_b) = (root.join("a"), root.join("b"));
        let a = Membership::load_or_create(&store_a, &dirs_in(root), &unencrypted())?;
        // b: a copy of a's user with its own device (as a join would make it).
        let b_device = DeviceIdentity::generate();
        let user = a.chain.user();
        let Some(root_key) = a.keyring.user_root.as_ref() else {
            anyhow::bail!("no root");
        };
        let mut chain = a.chain.clone();
        chain.append(
            root_key,
            LinkBody::AddDevice {
                device: b_device.public(),
                name: "b".into(),
                proof: b_device.possession_proof(&user, "b"),
            },
        )?;
        let mut info = a.info();
        info.nodes.push((NodeId(2), b_device.device_id()));
        info.addresses
            .push((b_device.device_id(), vec!["127.0.0.1:9".parse()?]));
        let b = Membership::from_join(
            &store_b,
            Keyring::new(b_device),
            KeyringMode::Unencrypted,
            None,
            JoinedVolume {
                chain,
                info,
                node: NodeId(2),
                epoch_secrets: Some(a.epoch_secrets()?.clone()),
            },
        )?;
        Ok((a, b))
    }

    #[test]
    fn announcements_extend_but_never_fork_or_roll_back() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let (store_a, store_b) = (root.path().join("a"), root.path().join("b"));
        let dirs = dirs_in(root.path());
        let (mut a, mut b) = two_devices(root.path())?;
        let user = a.chain.user();
        let b_loaded = Membership::load(&store_b)?;
        assert_eq!(b_loaded.node, NodeId(2));
        assert!(b_loaded.keyring.user_root.is_none());

        // a learns b from b's announcement (and saves it).
        let adopted = a.adopt(&store_a, b.device(), &b.announcement())?;
        assert!(adopted.chain_grew);
        assert_eq!(adopted.new_nodes, vec![(NodeId(2), b.device())]);
        assert!(adopted.addresses_changed);
        let reloaded = Membership::load(&store_a)?;
        assert_eq!(reloaded.chain, b.chain);
        assert_eq!(reloaded.nodes.len(), 2);
        // Nothing new the second time; an older chain is no rollback of ours.
        let a_old = Membership::load(&store_a)?;
        assert!(!a.adopt(&store_a, b.device(), &b.announcement())?.changed());
        assert!(
            !b.adopt(&store_b, a.device(), &a_old.announcement())?
                .changed()
        );

        // A fork: a different second link under the same root.
        let Some(root_key) = a.keyring.user_root.as_ref() else {
            anyhow::bail!("no root");
        };
        let mut forked = Membership::load(&store_a)?;
        let mut fork_chain = UserChain::from_links(user, a.chain.links()[..1].to_vec());
        let other = DeviceIdentity::generate();
        fork_chain.append(
            root_key,
            LinkBody::AddDevice {
                device: other.public(),
                name: "c".into(),
                proof: other.possession_proof(&user, "c"),
            },
        )?;
        forked.chain = fork_chain;
        assert!(
            b.adopt(&store_b, a.device(), &forked.announcement())
                .is_err()
        );
        // Another user's announcement.
        let stranger = Membership::load_or_create(&root.path().join("c"), &dirs, &unencrypted())?;
        assert!(
            b.adopt(&store_b, a.device(), &stranger.announcement())
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn the_root_device_revokes_others_and_they_learn_it() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let (store_a, store_b) = (root.path().join("a"), root.path().join("b"));
        let (mut a, mut b) = two_devices(root.path())?;
        a.adopt(&store_a, b.device(), &b.announcement())?;
        // Only the root holder, never itself, only live devices, by name or fingerprint.
        assert!(b.revoke(&store_b, "a-device").is_err());
        let own_name = a.chain_state()?.devices[&a.device()].name.clone();
        assert!(a.revoke(&store_a, &own_name).is_err());
        assert!(a.revoke(&store_a, "nobody").is_err());
        let fingerprint = b
            .device()
            .fingerprint()
            .to_ascii_lowercase()
            .replace('-', "");
        let revoked = a.revoke(&store_a, &fingerprint)?;
        assert_eq!(
            revoked,
            Revoked {
                device: b.device(),
                name: "b".into(),
                node: Some(NodeId(2)),
            }
        );
        assert!(a.revoke(&store_a, "b").is_err());
        // Saved, and trust no longer admits b.
        let reloaded = Membership::load(&store_a)?;
        assert!(reloaded.chain_state()?.revoked.contains(&b.device()));
        use net::quic::{Admission, Trust};
        assert_eq!(reloaded.trust_set()?.admit(&b.device()), Admission::Refused);
        assert!(!reloaded.static_keys()?.authors.contains_key(&NodeId(2)));
        // b adopts the revocation and can no longer load its store as a device.
        assert!(b.adopt(&store_b, a.device(), &a.announcement())?.chain_grew);
        let error = Membership::load(&store_b).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("no longer")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn a_witness_store_has_no_volume_key_and_refuses_one() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let (a, _b) = two_devices(root.path())?;
        let store = root.path().join("witness");
        let witness = DeviceIdentity::generate();
        let Some(root_key) = a.keyring.user_root.as_ref() else {
            anyhow::bail!("no root");
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
        info.nodes.push((NodeId(3), witness.device_id()));
        let joined = Membership::from_join(
            &store,
            Keyring::new(witness),
            KeyringMode::Unencrypted,
            None,
            JoinedVolume {
                chain,
                info,
                node: NodeId(3),
                epoch_secrets: None,
            },
        )?;
        assert_eq!(joined.role, JoinRole::Witness);
        assert!(!store.join(VOLUME_KEY_FILE).exists());
        assert!(joined.epoch_secrets().is_err());
        assert_eq!(store_role(&store)?, Some(JoinRole::Witness));
        let loaded = Membership::load(&store)?;
        assert_eq!((loaded.role, loaded.node), (JoinRole::Witness, NodeId(3)));
        assert!(
            loaded
                .epoch_secrets()
                .err()
                .is_some_and(|e| e.to_string().contains("kith witness run"))
        );
        // A device store says so; a witness store given a volume key is refused.
        assert_eq!(store_role(&root.path().join("a"))?, Some(JoinRole::Device));
        assert_eq!(store_role(&root.path().join("nothing"))?, None);
        std::fs::write(store.join(VOLUME_KEY_FILE), [1u8; 48])?;
        let error = Membership::load(&store).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("witness")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn a_version_one_membership_file_is_a_device() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let created = Membership::load_or_create(&store, &dirs_in(root.path()), &unencrypted())?;
        // The same file as version 1 wrote it: no role byte.
        let bytes = std::fs::read(store.join(MEMBERSHIP_FILE))?;
        let body = &bytes[..bytes.len() - 32];
        let mut old = body[..8].to_vec();
        old.push(MEMBERSHIP_VERSION_DEVICE_ONLY);
        old.extend_from_slice(&body[10..]);
        let check = blake3::derive_key(MEMBERSHIP_CHECK_CONTEXT, &old);
        old.extend_from_slice(&check);
        std::fs::write(store.join(MEMBERSHIP_FILE), &old)?;
        let loaded = Membership::load(&store)?;
        assert_eq!(loaded.role, JoinRole::Device);
        assert_eq!(loaded.info(), created.info());
        Ok(())
    }

    #[test]
    fn a_joined_store_can_keep_its_keyring_encrypted() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let (a, _b) = two_devices(root.path())?;
        let store = root.path().join("encrypted");
        let device = DeviceIdentity::generate();
        let device_id = device.device_id();
        let mut info = a.info();
        info.nodes.push((NodeId(3), device_id));
        let Some(root_key) = a.keyring.user_root.as_ref() else {
            anyhow::bail!("no root");
        };
        let mut chain = a.chain.clone();
        chain.append(
            root_key,
            LinkBody::AddDevice {
                device: device.public(),
                name: "c".into(),
                proof: device.possession_proof(&a.chain.user(), "c"),
            },
        )?;
        let secrets = a.epoch_secrets()?.clone();
        let joined = || JoinedVolume {
            chain: chain.clone(),
            info: info.clone(),
            node: NodeId(3),
            epoch_secrets: Some(secrets.clone()),
        };
        // Encrypted without a passphrase: refused before anything is written.
        let refused = Membership::from_join(
            &store,
            Keyring::new(DeviceIdentity::generate()),
            KeyringMode::Encrypted,
            None,
            joined(),
        );
        assert!(refused.is_err());
        assert!(!store.join(MEMBERSHIP_FILE).exists());
        let membership = Membership::from_join(
            &store,
            Keyring::new(device),
            KeyringMode::Encrypted,
            Some("correct horse"),
            joined(),
        )?;
        assert_eq!(membership.keyring_mode(), KeyringMode::Encrypted);
        assert_eq!(stored_mode(&store)?, KeyringMode::Encrypted);
        let path = store.join(KEYRING_FILE);
        assert!(Keyring::load(&path, Some("wrong")).is_err());
        assert_eq!(
            Keyring::load(&path, Some("correct horse"))?
                .device
                .device_id(),
            device_id
        );
        // The membership file holds public data only: listing needs no passphrase.
        assert!(list_devices(&store)?.contains("(this device)"));
        Ok(())
    }

    #[test]
    fn encrypted_keyring_needs_its_passphrase() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        create_private_dir(&store)?;
        let keyring = Keyring::new(DeviceIdentity::generate());
        let path = store.join(KEYRING_FILE);
        keyring.save(
            &path,
            Lock::Passphrase {
                passphrase: "correct horse",
                params: KdfParams::INSECURE_FOR_TESTS,
            },
        )?;
        assert_eq!(stored_mode(&store)?, KeyringMode::Encrypted);
        assert!(Keyring::load(&path, Some("wrong")).is_err());
        assert!(Keyring::load(&path, Some("correct horse")).is_ok());
        Ok(())
    }

    #[test]
    fn an_unencrypted_store_needs_no_passphrase_for_the_daemon() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        // Not created yet, and configured unencrypted (unless the environment insists).
        if std::env::var_os(KEYRING_ENV).is_none() && std::env::var_os(PASSPHRASE_ENV).is_none() {
            assert!(daemon_environment(&store, &unencrypted())?.is_empty());
        }
        Membership::load_or_create(&store, &dirs_in(root.path()), &unencrypted())?;
        if std::env::var_os(PASSPHRASE_ENV).is_none() {
            assert!(daemon_environment(&store, &Config::default())?.is_empty());
        }
        Ok(())
    }

    #[test]
    fn removals_owed_round_trip_and_a_damaged_record_is_an_error() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = root.path();
        assert!(
            read_removals_owed(store)?.is_empty(),
            "no file: nothing owed"
        );
        let owed: std::collections::BTreeSet<NodeId> = [NodeId(3), NodeId(7)].into();
        write_removals_owed(store, &owed)?;
        assert_eq!(read_removals_owed(store)?, owed);
        let path = store.join(REMOVALS_OWED_FILE);
        let good = std::fs::read(&path)?;
        for at in 0..good.len() {
            let mut flipped = good.clone();
            flipped[at] ^= 0x10;
            std::fs::write(&path, &flipped)?;
            assert!(read_removals_owed(store).is_err(), "byte {at} flipped");
        }
        std::fs::write(&path, &good[..good.len() - 1])?;
        assert!(read_removals_owed(store).is_err());
        std::fs::write(&path, &good[..5])?;
        assert!(read_removals_owed(store).is_err());
        // Nothing owed any more: the file goes.
        write_removals_owed(store, &owed)?;
        write_removals_owed(store, &std::collections::BTreeSet::new())?;
        assert!(!path.exists());
        write_removals_owed(store, &std::collections::BTreeSet::new())?;
        Ok(())
    }

    #[test]
    fn device_names_fit_the_chain() {
        let name = device_name();
        assert!(!name.is_empty());
        assert!(name.len() <= net::identity::DEVICE_NAME_BYTES_MAX);
        assert_eq!(
            KeyringMode::parse("unencrypted"),
            Some(KeyringMode::Unencrypted)
        );
        assert_eq!(
            KeyringMode::parse("encrypted"),
            Some(KeyringMode::Encrypted)
        );
        assert_eq!(KeyringMode::parse("plain"), None);
    }
}
