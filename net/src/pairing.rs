//! One-time pairing codes (adding one's own device) and `kith1…` friend invites.
//!
//! Pairing: `kith device add` on device A calls [`PairingOffers::issue`], which
//! remembers a random one-time secret with an expiry and returns a [`PairingCode`]
//! carrying A's addresses, A's user and device ids and that secret. Device B parses the code
//! (a checksum catches typos), dials A expecting A's device id, and sends a
//! [`JoinRequest`] with the secret. A calls [`PairingOffers::redeem`], which succeeds
//! once per secret and only before it expires; then A records B in the user chain.
//! A stores only a hash of each secret, and at most [`PAIRING_OPEN_MAX`] at a time.
//!
//! Invite: [`Invite`] is the public `kith1…` string a user hands a friend: their user
//! key, optional address hints and a checksum, with a short fingerprint to check by voice.
//!
//! Formats (little-endian; `addr = 4 ‖ ip[4] ‖ port u16 | 6 ‖ ip[16] ‖ port u16`):
//! ```text
//! pairing code = ver u8 (=1) ‖ user[32] ‖ device[32] ‖ secret[16] ‖ expires_unix_s u64 ‖ n u8 ‖ addr*n ‖ check[4]
//!   text: RFC 4648 base32 without padding, upper case, groups of 5 joined by '-'
//! invite       = ver u8 (=1) ‖ flags u8 (=0) ‖ user[32] ‖ n u8 ‖ addr*n ‖ check[4]
//!   text: "kith1" ‖ base32 lower case without padding
//! check        = BLAKE3-derive_key(context, everything before it)[..4]
//! join request = ver u8 (=2) ‖ role u8 ‖ secret[16] ‖ kem_public[32] ‖ name_len u16 ‖ name ‖ proof[64]
//!                ‖ n u8 ‖ addr*n                       role: 0 = device, 1 = witness
//! join answer  = ver u8 (=3) ‖ node u64 ‖ grant ‖ chain_len u32 ‖ chain ‖ info_len u32 ‖ volume info
//!   grant         = 0 ‖ n u16 ‖ (epoch u64 ‖ sealed_secret)*n   (a device: every epoch the
//!                                                    inviter holds, epochs increasing, n ≥ 1)
//!                 | 1                                  (a witness: no secret, by construction)
//!   sealed_secret = enc[32] ‖ ciphertext[32] ‖ tag[16]: HPKE base mode (RFC 9180), DHKEM(X25519,
//!                   HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, to the joiner's X25519 key,
//!                   info = "kith/epoch-secret/v2" ‖ volume u128 ‖ node u64 ‖ epoch u64, aad
//!                   empty (the same sealing carries a key rotation's shares, `crate::entry`)
//! volume info  = ver u8 (=1) ‖ volume u128 ‖ config ‖ n u16 ‖ (node u64 ‖ device[32])*n
//!                ‖ m u16 ‖ (device[32] ‖ n u8 ‖ addr*n)*m
//! config       = id u64 ‖ phase1 u8 ‖ phase2 u8 ‖ nv u8 ‖ voter u64*nv ‖ nw u8 ‖ witness u64*nw
//!                ‖ nl u16 ‖ learner u64*nl
//! announcement = ver u8 (=1) ‖ chain_len u32 ‖ chain ‖ info_len u32 ‖ volume info
//! ```
//!
//! The join answer travels on the pairing connection (TLS 1.3, both ends authenticated by
//! device key), and the epoch secret inside it is additionally sealed (HPKE) to the
//! joiner's X25519 key, so it is readable only by the holder of the key the chain records.
//!
//! Roles: the inviter issues a code *for* a role ([`PairingOffers::issue_as`]) and the
//! role is remembered with the secret, on the inviter. A request must name the same role
//! (a mismatch is refused before the code is spent), and the answer's grant is chosen
//! from the code's role, never from the request: a witness code can only ever yield
//! [`JoinGrant::Witness`], whose encoding has no room for a secret. A witness holds
//! sealed log entries and votes on them; it never learns the volume's keys.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hpke::{Deserializable, Serializable};
use paxos::{Config, ConfigId, NodeId, VolumeId};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::entry::KeyEpoch;
use crate::error::{Error, Result};
use crate::identity::{
    ChainState, DEVICE_NAME_BYTES_MAX, DeviceId, DevicePublic, LinkBody, UserChain, UserId,
    UserRootKey,
};

/// Most addresses a code or invite carries.
pub const ADDRESSES_MAX: usize = 8;
/// Most pairing codes open at once on one device.
pub const PAIRING_OPEN_MAX: usize = 16;
/// Longest accepted pairing code or invite text.
pub const CODE_TEXT_CHARS_MAX: usize = 512;
/// Default lifetime of a pairing code.
pub const PAIRING_TTL_S_DEFAULT: u64 = 10 * 60;
/// Bytes of the one-time secret.
pub const PAIRING_SECRET_BYTES: usize = 16;

const CODE_VERSION: u8 = 1;
const INVITE_VERSION: u8 = 1;
const JOIN_VERSION: u8 = 2;
const CHECK_BYTES: usize = 4;
const CODE_CHECK_CONTEXT: &str = "kith 2026-01-01 pairing code checksum v1";
const INVITE_CHECK_CONTEXT: &str = "kith 2026-01-01 invite checksum v1";
const SECRET_HASH_CONTEXT: &str = "kith 2026-01-01 pairing secret v1";
const INVITE_PREFIX: &str = "kith1";
const ANSWER_VERSION: u8 = 3;
const GRANT_DEVICE: u8 = 0;
const GRANT_WITNESS: u8 = 1;
const INFO_VERSION: u8 = 1;
const ANNOUNCEMENT_VERSION: u8 = 1;
const SEAL_INFO_DOMAIN: &[u8] = b"kith/epoch-secret/v2";
/// Most epoch secrets one join answer carries.
pub const GRANT_EPOCHS_MAX: usize = 4096;
/// Bytes of an epoch secret.
pub const EPOCH_SECRET_BYTES: usize = 32;
/// Bytes of a sealed epoch secret: HPKE encapsulated key, ciphertext, tag.
pub const SEALED_SECRET_BYTES: usize = 32 + EPOCH_SECRET_BYTES + 16;
/// Most entries in a volume's node table (every voter and learner).
pub const NODES_MAX: usize = paxos::limits::VOTERS_MAX + paxos::limits::LEARNERS_MAX;
/// Longest encoded user chain carried in a join answer or an announcement.
pub const CHAIN_BYTES_MAX: usize = 1 << 20;
/// Longest encoded [`VolumeInfo`].
pub const VOLUME_INFO_BYTES_MAX: usize = 256 << 10;

/// A one-time pairing secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairingSecret(pub [u8; PAIRING_SECRET_BYTES]);

impl std::fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairingSecret(..)")
    }
}

/// What device B needs to join device A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingCode {
    /// The user B joins (B's possession proof names it).
    pub user: UserId,
    pub device: DeviceId,
    pub secret: PairingSecret,
    /// After this instant (seconds since the Unix epoch) A refuses the code.
    pub expires_unix_s: u64,
    pub addresses: Vec<SocketAddr>,
}

impl PairingCode {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(CODE_VERSION)
            .put(self.user.as_bytes())
            .put(self.device.as_bytes())
            .put(&self.secret.0)
            .u64(self.expires_unix_s);
        put_addresses(&mut out, &self.addresses);
        let check = checksum(CODE_CHECK_CONTEXT, &out.bytes);
        out.put(&check);
        out.into_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let body = verify_checksum(CODE_CHECK_CONTEXT, bytes, "pairing code")?;
        let mut input = Reader::new(body, "pairing code");
        let version = input.u8()?;
        if version != CODE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "pairing code",
                version,
            });
        }
        let user = UserId::from_bytes(input.array()?);
        let device = DeviceId::from_bytes(input.array()?);
        let secret = PairingSecret(input.array()?);
        let expires_unix_s = input.u64()?;
        let addresses = take_addresses(&mut input)?;
        input.finish()?;
        Ok(Self {
            user,
            device,
            secret,
            expires_unix_s,
            addresses,
        })
    }

    /// The copy-pasteable text: base32 in dash-separated groups of five.
    pub fn to_text(&self) -> String {
        let text = data_encoding::BASE32_NOPAD.encode(&self.to_bytes());
        let mut out = String::with_capacity(text.len() + text.len() / 5);
        for (index, ch) in text.chars().enumerate() {
            if index > 0 && index % 5 == 0 {
                out.push('-');
            }
            out.push(ch);
        }
        out
    }

    /// Parses the text form; ignores case, dashes and white space.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > CODE_TEXT_CHARS_MAX {
            return Err(Error::TooLong {
                what: "pairing code",
                len_bytes: text.len(),
                max_bytes: CODE_TEXT_CHARS_MAX,
            });
        }
        let cleaned: String = text
            .chars()
            .filter(|ch| *ch != '-' && !ch.is_whitespace())
            .map(|ch| ch.to_ascii_uppercase())
            .collect();
        let bytes = data_encoding::BASE32_NOPAD
            .decode(cleaned.as_bytes())
            .map_err(|_| Error::malformed("pairing code", "not base32 (check for a typo)"))?;
        Self::from_bytes(&bytes)
    }
}

/// What a pairing code adds to the user and the volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JoinRole {
    /// A full device: it receives the volume's epoch secret, mounts the volume, votes
    /// and may lead.
    #[default]
    Device,
    /// A witness: a device identity in the user chain that votes on sealed log entries
    /// and never receives the epoch secret (it holds ciphertext only).
    Witness,
}

impl JoinRole {
    fn to_byte(self) -> u8 {
        match self {
            JoinRole::Device => 0,
            JoinRole::Witness => 1,
        }
    }

    fn from_byte(byte: u8) -> Result<JoinRole> {
        match byte {
            0 => Ok(JoinRole::Device),
            1 => Ok(JoinRole::Witness),
            _ => Err(Error::malformed("join request", "unknown role")),
        }
    }

    /// `device` or `witness`.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Device => "device",
            JoinRole::Witness => "witness",
        }
    }
}

/// The issuing device's open pairing codes.
#[derive(Debug, Default)]
pub struct PairingOffers {
    /// Hash of the secret → (expiry in Unix seconds, the role the code adds). Only
    /// hashes are kept in memory.
    open: HashMap<[u8; 32], (u64, JoinRole)>,
}

impl PairingOffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a new code adding a device for `device` of `user`, reachable at
    /// `addresses`, valid for `ttl_s` from `now_unix_s`.
    pub fn issue(
        &mut self,
        user: UserId,
        device: DeviceId,
        addresses: &[SocketAddr],
        now_unix_s: u64,
        ttl_s: u64,
    ) -> Result<PairingCode> {
        self.issue_as(JoinRole::Device, user, device, addresses, now_unix_s, ttl_s)
    }

    /// [`issue`](Self::issue) for a code that adds a `role`.
    pub fn issue_as(
        &mut self,
        role: JoinRole,
        user: UserId,
        device: DeviceId,
        addresses: &[SocketAddr],
        now_unix_s: u64,
        ttl_s: u64,
    ) -> Result<PairingCode> {
        self.forget_expired(now_unix_s);
        if self.open.len() >= PAIRING_OPEN_MAX {
            return Err(Error::PairingTooMany {
                open_max: PAIRING_OPEN_MAX,
            });
        }
        if addresses.len() > ADDRESSES_MAX {
            return Err(Error::TooLong {
                what: "pairing code addresses",
                len_bytes: addresses.len(),
                max_bytes: ADDRESSES_MAX,
            });
        }
        let mut secret = [0u8; PAIRING_SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        let expires_unix_s = now_unix_s.saturating_add(ttl_s);
        self.open
            .insert(secret_hash(&secret), (expires_unix_s, role));
        Ok(PairingCode {
            user,
            device,
            secret: PairingSecret(secret),
            expires_unix_s,
            addresses: addresses.to_vec(),
        })
    }

    /// Consumes `secret` if it is open and not expired. Either way an expired or used
    /// secret never succeeds again.
    pub fn redeem(&mut self, secret: &PairingSecret, now_unix_s: u64) -> Result<JoinRole> {
        let hash = secret_hash(&secret.0);
        let (expires, role) = self.open.remove(&hash).ok_or(Error::PairingUnknown)?;
        self.forget_expired(now_unix_s);
        if now_unix_s >= expires {
            return Err(Error::PairingExpired);
        }
        Ok(role)
    }

    /// The role the open code with `secret` adds, without spending it.
    pub fn role_of(&self, secret: &PairingSecret) -> Option<JoinRole> {
        self.open
            .get(&secret_hash(&secret.0))
            .map(|(_, role)| *role)
    }

    /// The issuing side of a join: consumes the secret in `request` and, if it was
    /// open, records `joiner` (the device authenticated by the connection) in `chain`
    /// with the keys and name it sent. The secret is spent even if the chain then
    /// refuses the device (e.g. a revoked key); a request for another role than the
    /// code's is refused without spending it. Answer with the role this returns (the
    /// code's), never the request's.
    pub fn admit_joiner(
        &mut self,
        joiner: DeviceId,
        request: &JoinRequest,
        chain: &mut UserChain,
        root: &UserRootKey,
        now_unix_s: u64,
    ) -> Result<(ChainState, JoinRole)> {
        if let Some(role) = self.role_of(&request.secret)
            && role != request.role
        {
            return Err(Error::PairingRole {
                code: role.as_str(),
                asked: request.role.as_str(),
            });
        }
        let role = self.redeem(&request.secret, now_unix_s)?;
        let state = chain.append(
            root,
            LinkBody::AddDevice {
                device: DevicePublic {
                    id: joiner,
                    kem_public: request.kem_public,
                },
                name: request.name.clone(),
                proof: request.proof,
            },
        )?;
        Ok((state, role))
    }

    /// True while some code can still be redeemed (the transport then admits unknown
    /// devices for pairing requests only).
    pub fn any_open(&self, now_unix_s: u64) -> bool {
        self.open.values().any(|(expires, _)| now_unix_s < *expires)
    }

    /// Withdraws every open code.
    pub fn cancel_all(&mut self) {
        self.open.clear();
    }

    fn forget_expired(&mut self, now_unix_s: u64) {
        self.open.retain(|_, (expires, _)| now_unix_s < *expires);
    }
}

/// What device B sends A (on a pairing connection) to join: the secret and B's keys.
/// B's signing key is the connection's authenticated peer id, so it is not repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// What the joiner asks to become; it must be what the code was issued for.
    pub role: JoinRole,
    pub secret: PairingSecret,
    pub kem_public: [u8; 32],
    pub name: String,
    /// B's [`crate::identity::DeviceIdentity::possession_proof`] for A's user.
    pub proof: [u8; 64],
    /// Where B's daemon will listen, if it knows (devices dial it there later).
    pub addresses: Vec<SocketAddr>,
}

impl JoinRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(JOIN_VERSION)
            .u8(self.role.to_byte())
            .put(&self.secret.0)
            .put(&self.kem_public)
            .bytes_u16(self.name.as_bytes())
            .put(&self.proof);
        put_addresses(&mut out, &self.addresses);
        out.into_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut input = Reader::new(bytes, "join request");
        let version = input.u8()?;
        if version != JOIN_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "join request",
                version,
            });
        }
        let role = JoinRole::from_byte(input.u8()?)?;
        let secret = PairingSecret(input.array()?);
        let kem_public = input.array()?;
        let name = input.string(DEVICE_NAME_BYTES_MAX)?;
        let proof = input.array()?;
        let addresses = take_addresses(&mut input)?;
        input.finish()?;
        Ok(Self {
            role,
            secret,
            kem_public,
            name,
            proof,
            addresses,
        })
    }
}

/// A volume as a device must know it to take part in its Paxos group: shared by the
/// join answer, chain announcements and the store's membership file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume: VolumeId,
    /// The volume's first configuration (the same on every device, forever).
    pub genesis: Config,
    /// Which device speaks for which node id (one each way).
    pub nodes: Vec<(NodeId, DeviceId)>,
    /// Where devices were last known to listen.
    pub addresses: Vec<(DeviceId, Vec<SocketAddr>)>,
}

impl VolumeInfo {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        self.encode(&mut out);
        out.into_bytes()
    }

    fn encode(&self, out: &mut Writer) {
        out.u8(INFO_VERSION).put(&self.volume.0.to_le_bytes());
        put_config(out, &self.genesis);
        let nodes = self.nodes.get(..NODES_MAX).unwrap_or(&self.nodes);
        out.u16(nodes.len() as u16);
        for (node, device) in nodes {
            out.u64(node.0).put(device.as_bytes());
        }
        let addresses = self.addresses.get(..NODES_MAX).unwrap_or(&self.addresses);
        out.u16(addresses.len() as u16);
        for (device, list) in addresses {
            out.put(device.as_bytes());
            put_addresses(out, list);
        }
    }

    /// Decodes and checks: a valid genesis, and no node or device named twice.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > VOLUME_INFO_BYTES_MAX {
            return Err(Error::TooLong {
                what: "volume info",
                len_bytes: bytes.len(),
                max_bytes: VOLUME_INFO_BYTES_MAX,
            });
        }
        let mut input = Reader::new(bytes, "volume info");
        let version = input.u8()?;
        if version != INFO_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "volume info",
                version,
            });
        }
        let volume = VolumeId(u128::from_le_bytes(input.array()?));
        let genesis = take_config(&mut input)?;
        let count = usize::from(input.u16()?);
        if count > NODES_MAX {
            return Err(Error::malformed("volume info", "too many nodes"));
        }
        let mut nodes: Vec<(NodeId, DeviceId)> = Vec::with_capacity(count);
        for _ in 0..count {
            let node = NodeId(input.u64()?);
            let device = DeviceId::from_bytes(input.array()?);
            if nodes.iter().any(|(n, d)| *n == node || *d == device) {
                return Err(Error::malformed(
                    "volume info",
                    "node or device named twice",
                ));
            }
            nodes.push((node, device));
        }
        let count = usize::from(input.u16()?);
        if count > NODES_MAX {
            return Err(Error::malformed("volume info", "too many address lists"));
        }
        let mut addresses: Vec<(DeviceId, Vec<SocketAddr>)> = Vec::with_capacity(count);
        for _ in 0..count {
            let device = DeviceId::from_bytes(input.array()?);
            let list = take_addresses(&mut input)?;
            if addresses.iter().any(|(d, _)| *d == device) {
                return Err(Error::malformed(
                    "volume info",
                    "device addresses named twice",
                ));
            }
            addresses.push((device, list));
        }
        input.finish()?;
        Ok(Self {
            volume,
            genesis,
            nodes,
            addresses,
        })
    }

    /// The node id of `device`, if it has one.
    pub fn node_of(&self, device: &DeviceId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, d)| d == device)
            .map(|(node, _)| *node)
    }

    /// The device of `node`, if known.
    pub fn device_of(&self, node: NodeId) -> Option<DeviceId> {
        self.nodes
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, device)| *device)
    }

    /// The next unused node id (above every id ever handed out, so ids are never reused).
    pub fn next_node(&self) -> NodeId {
        let highest = self
            .nodes
            .iter()
            .map(|(node, _)| node.0)
            .chain(self.genesis.voters.iter().map(|node| node.0))
            .max()
            .unwrap_or(0);
        NodeId(highest.saturating_add(1))
    }

    /// Records where `device` listens (replacing what was known), dropping the excess
    /// beyond [`ADDRESSES_MAX`].
    pub fn set_addresses(&mut self, device: DeviceId, mut list: Vec<SocketAddr>) {
        list.truncate(ADDRESSES_MAX);
        match self.addresses.iter_mut().find(|(d, _)| *d == device) {
            Some((_, known)) => *known = list,
            None => self.addresses.push((device, list)),
        }
    }

    /// The known addresses of `device`.
    pub fn addresses_of(&self, device: &DeviceId) -> &[SocketAddr] {
        self.addresses
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, list)| list.as_slice())
            .unwrap_or(&[])
    }
}

/// What a join gives the joiner besides its place in the chain and the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinGrant {
    /// A device: every epoch secret of the volume the inviter holds (so a joiner that
    /// starts from a checkpoint reads content of every epoch), each sealed to the
    /// joiner's X25519 key ([`seal_epoch_secret`]); epochs increasing.
    Device {
        secrets: Vec<(KeyEpoch, [u8; SEALED_SECRET_BYTES])>,
    },
    /// A witness: nothing to read the volume with.
    Witness,
}

impl JoinGrant {
    /// The role this grant makes the joiner.
    pub fn role(&self) -> JoinRole {
        match self {
            JoinGrant::Device { .. } => JoinRole::Device,
            JoinGrant::Witness => JoinRole::Witness,
        }
    }
}

/// What the inviter answers a successful [`JoinRequest`] with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The node id assigned to the joiner in the volume's group.
    pub node: NodeId,
    /// The sealed epoch secret for a device; nothing for a witness.
    pub grant: JoinGrant,
    /// The user chain, now holding the joiner.
    pub chain: UserChain,
    pub info: VolumeInfo,
}

impl JoinAnswer {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(ANSWER_VERSION).u64(self.node.0);
        match &self.grant {
            JoinGrant::Device { secrets } => {
                out.u8(GRANT_DEVICE)
                    .u16(u16::try_from(secrets.len()).unwrap_or(u16::MAX));
                for (epoch, sealed) in secrets {
                    out.u64(epoch.0).put(sealed);
                }
            }
            JoinGrant::Witness => {
                out.u8(GRANT_WITNESS);
            }
        }
        out.bytes_u32(&self.chain.encode())
            .bytes_u32(&self.info.to_bytes());
        out.into_bytes()
    }

    /// Decodes (does not verify the chain).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut input = Reader::new(bytes, "join answer");
        let version = input.u8()?;
        if version != ANSWER_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "join answer",
                version,
            });
        }
        let node = NodeId(input.u64()?);
        let grant = match input.u8()? {
            GRANT_DEVICE => {
                let count = usize::from(input.u16()?);
                if count == 0 || count > GRANT_EPOCHS_MAX {
                    return Err(Error::malformed("join answer", "epoch count"));
                }
                let mut secrets: Vec<(KeyEpoch, [u8; SEALED_SECRET_BYTES])> =
                    Vec::with_capacity(count.min(input.remaining() / (8 + SEALED_SECRET_BYTES)));
                for _ in 0..count {
                    let epoch = KeyEpoch(input.u64()?);
                    if secrets.last().is_some_and(|(last, _)| *last >= epoch) {
                        return Err(Error::malformed("join answer", "epochs not increasing"));
                    }
                    secrets.push((epoch, input.array()?));
                }
                JoinGrant::Device { secrets }
            }
            GRANT_WITNESS => JoinGrant::Witness,
            _ => return Err(Error::malformed("join answer", "unknown grant")),
        };
        let chain = UserChain::decode(input.bytes_u32(CHAIN_BYTES_MAX)?)?;
        let info = VolumeInfo::from_bytes(input.bytes_u32(VOLUME_INFO_BYTES_MAX)?)?;
        input.finish()?;
        Ok(Self {
            node,
            grant,
            chain,
            info,
        })
    }
}

/// A device's view of its user and volume, sent to the other devices so a device added
/// through one of them becomes known to all (on connect, and after a join).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub chain: UserChain,
    pub info: VolumeInfo,
}

impl Announcement {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(ANNOUNCEMENT_VERSION)
            .bytes_u32(&self.chain.encode())
            .bytes_u32(&self.info.to_bytes());
        out.into_bytes()
    }

    /// Decodes (does not verify the chain).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut input = Reader::new(bytes, "announcement");
        let version = input.u8()?;
        if version != ANNOUNCEMENT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "announcement",
                version,
            });
        }
        let chain = UserChain::decode(input.bytes_u32(CHAIN_BYTES_MAX)?)?;
        let info = VolumeInfo::from_bytes(input.bytes_u32(VOLUME_INFO_BYTES_MAX)?)?;
        input.finish()?;
        Ok(Self { chain, info })
    }
}

/// Seals a volume's epoch secret to a device's X25519 key with HPKE (RFC 9180) base
/// mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305; `info`
/// binds the volume, the node the secret is for and the epoch.
pub fn seal_epoch_secret(
    recipient_kem_public: &[u8; 32],
    volume: VolumeId,
    node: NodeId,
    epoch: KeyEpoch,
    epoch_secret: &[u8; EPOCH_SECRET_BYTES],
) -> Result<[u8; SEALED_SECRET_BYTES]> {
    let recipient = <SealKem as hpke::Kem>::PublicKey::from_bytes(recipient_kem_public)
        .map_err(|_| Error::malformed("device key", "not an X25519 public key"))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<SealAead, SealKdf, SealKem, _>(
        &hpke::OpModeS::Base,
        &recipient,
        &seal_info(volume, node, epoch),
        epoch_secret,
        &[],
        &mut rand::rng(),
    )
    .map_err(|_| Error::malformed("device key", "sealing to it failed (low-order key?)"))?;
    let enc = enc.to_bytes();
    let mut out = [0u8; SEALED_SECRET_BYTES];
    let (head, tail) = out.split_at_mut(SEAL_ENC_BYTES);
    if head.len() != enc.len() || tail.len() != ciphertext.len() {
        return Err(Error::malformed("epoch secret", "sealed length"));
    }
    head.copy_from_slice(&enc);
    tail.copy_from_slice(&ciphertext);
    Ok(out)
}

/// Opens what [`seal_epoch_secret`] sealed to `identity`'s X25519 key.
pub fn open_epoch_secret(
    identity: &crate::identity::DeviceIdentity,
    volume: VolumeId,
    node: NodeId,
    epoch: KeyEpoch,
    sealed: &[u8; SEALED_SECRET_BYTES],
) -> Result<Zeroizing<[u8; EPOCH_SECRET_BYTES]>> {
    let refused = || Error::BadSignature {
        what: "sealed epoch secret (not for this device, or altered)",
    };
    let (enc, ciphertext) = sealed.split_at(SEAL_ENC_BYTES);
    let enc = <SealKem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| refused())?;
    let own = <SealKem as hpke::Kem>::PrivateKey::from_bytes(identity.kem_secret().as_ref())
        .map_err(|_| refused())?;
    let opened = Zeroizing::new(
        hpke::single_shot_open::<SealAead, SealKdf, SealKem>(
            &hpke::OpModeR::Base,
            &own,
            &enc,
            &seal_info(volume, node, epoch),
            ciphertext,
            &[],
        )
        .map_err(|_| refused())?,
    );
    let mut secret = Zeroizing::new([0u8; EPOCH_SECRET_BYTES]);
    if opened.len() != EPOCH_SECRET_BYTES {
        return Err(Error::malformed("sealed epoch secret", "wrong length"));
    }
    secret.copy_from_slice(&opened);
    Ok(secret)
}

type SealKem = hpke::kem::X25519HkdfSha256;
type SealKdf = hpke::kdf::HkdfSha256;
type SealAead = hpke::aead::ChaCha20Poly1305;
/// Bytes of the HPKE encapsulated key (an X25519 public key).
const SEAL_ENC_BYTES: usize = 32;

fn seal_info(volume: VolumeId, node: NodeId, epoch: KeyEpoch) -> Vec<u8> {
    let mut out = Writer::new();
    out.put(SEAL_INFO_DOMAIN)
        .put(&volume.0.to_le_bytes())
        .u64(node.0)
        .u64(epoch.0);
    out.into_bytes()
}

fn put_config(out: &mut Writer, config: &Config) {
    out.u64(config.id.0)
        .u8(config.phase1_quorum)
        .u8(config.phase2_quorum);
    out.u8(config.voters.len() as u8);
    for node in &config.voters {
        out.u64(node.0);
    }
    out.u8(config.witnesses.len() as u8);
    for node in &config.witnesses {
        out.u64(node.0);
    }
    out.u16(config.learners.len() as u16);
    for node in &config.learners {
        out.u64(node.0);
    }
}

fn take_config(input: &mut Reader<'_>) -> Result<Config> {
    let id = ConfigId(input.u64()?);
    let phase1 = input.u8()?;
    let phase2 = input.u8()?;
    let count = usize::from(input.u8()?);
    let voters = take_nodes(input, count, paxos::limits::VOTERS_MAX)?;
    let count = usize::from(input.u8()?);
    let witnesses = take_nodes(input, count, paxos::limits::VOTERS_MAX)?;
    let count = usize::from(input.u16()?);
    let learners = take_nodes(input, count, paxos::limits::LEARNERS_MAX)?;
    Config::new(id, voters, witnesses, learners, phase1, phase2)
        .map_err(|_| Error::malformed("configuration", "not a valid configuration"))
}

fn take_nodes(input: &mut Reader<'_>, count: usize, max: usize) -> Result<Vec<NodeId>> {
    if count > max {
        return Err(Error::malformed("configuration", "too many nodes"));
    }
    (0..count).map(|_| Ok(NodeId(input.u64()?))).collect()
}

/// A friend invite: public data only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub user: UserId,
    pub addresses: Vec<SocketAddr>,
}

impl Invite {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(INVITE_VERSION).u8(0).put(self.user.as_bytes());
        put_addresses(&mut out, &self.addresses);
        let check = checksum(INVITE_CHECK_CONTEXT, &out.bytes);
        out.put(&check);
        out.into_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let body = verify_checksum(INVITE_CHECK_CONTEXT, bytes, "invite")?;
        let mut input = Reader::new(body, "invite");
        let version = input.u8()?;
        if version != INVITE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "invite",
                version,
            });
        }
        if input.u8()? != 0 {
            return Err(Error::malformed("invite", "unknown flags"));
        }
        let user = UserId::from_bytes(input.array()?);
        let addresses = take_addresses(&mut input)?;
        input.finish()?;
        Ok(Self { user, addresses })
    }

    /// `kith1…`
    pub fn to_text(&self) -> String {
        let mut text = String::from(INVITE_PREFIX);
        text.push_str(
            &data_encoding::BASE32_NOPAD
                .encode(&self.to_bytes())
                .to_ascii_lowercase(),
        );
        text
    }

    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() > CODE_TEXT_CHARS_MAX {
            return Err(Error::TooLong {
                what: "invite",
                len_bytes: text.len(),
                max_bytes: CODE_TEXT_CHARS_MAX,
            });
        }
        let rest = text
            .get(..INVITE_PREFIX.len())
            .filter(|prefix| prefix.eq_ignore_ascii_case(INVITE_PREFIX))
            .and_then(|_| text.get(INVITE_PREFIX.len()..))
            .ok_or_else(|| Error::malformed("invite", "does not start with kith1"))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::malformed("invite", "not base32 (check for a typo)"))?;
        Self::from_bytes(&bytes)
    }

    /// Short fingerprint of the user key, to compare by voice.
    pub fn fingerprint(&self) -> String {
        self.user.fingerprint()
    }
}

fn secret_hash(secret: &[u8; PAIRING_SECRET_BYTES]) -> [u8; 32] {
    blake3::derive_key(SECRET_HASH_CONTEXT, secret)
}

fn checksum(context: &str, body: &[u8]) -> [u8; CHECK_BYTES] {
    let digest = blake3::derive_key(context, body);
    let mut out = [0u8; CHECK_BYTES];
    out.copy_from_slice(digest.get(..CHECK_BYTES).unwrap_or(&[0; CHECK_BYTES]));
    out
}

fn verify_checksum<'a>(context: &str, bytes: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    let at = bytes
        .len()
        .checked_sub(CHECK_BYTES)
        .ok_or_else(|| Error::malformed(what, "too short"))?;
    let (body, check) = bytes.split_at(at);
    if checksum(context, body) != check {
        return Err(Error::Checksum { what });
    }
    Ok(body)
}

fn put_addresses(out: &mut Writer, addresses: &[SocketAddr]) {
    let addresses = addresses.get(..ADDRESSES_MAX).unwrap_or(addresses);
    out.u8(addresses.len() as u8);
    for address in addresses {
        match address.ip() {
            IpAddr::V4(ip) => out.u8(4).put(&ip.octets()),
            IpAddr::V6(ip) => out.u8(6).put(&ip.octets()),
        };
        out.u16(address.port());
    }
}

fn take_addresses(input: &mut Reader<'_>) -> Result<Vec<SocketAddr>> {
    let count = usize::from(input.u8()?);
    if count > ADDRESSES_MAX {
        return Err(Error::TooLong {
            what: "address list",
            len_bytes: count,
            max_bytes: ADDRESSES_MAX,
        });
    }
    let mut addresses = Vec::with_capacity(count);
    for _ in 0..count {
        let ip = match input.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(input.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(input.array::<16>()?)),
            _ => return Err(Error::malformed("address list", "unknown address family")),
        };
        addresses.push(SocketAddr::new(ip, input.u16()?));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::identity::DeviceIdentity;

    fn request(
        role: JoinRole,
        secret: PairingSecret,
        joiner: &DeviceIdentity,
        user: &UserId,
    ) -> JoinRequest {
        JoinRequest {
            role,
            secret,
            kem_public: joiner.public().kem_public,
            name: "witness".into(),
            proof: joiner.possession_proof(user, "witness"),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn a_code_adds_only_the_role_it_was_issued_for() {
        let root = UserRootKey::generate();
        let user = root.user_id();
        let inviter = DeviceIdentity::generate();
        let mut chain = UserChain::new(user);
        let mut offers = PairingOffers::new();
        let code = offers
            .issue_as(JoinRole::Witness, user, inviter.device_id(), &[], 100, 600)
            .unwrap();
        let joiner = DeviceIdentity::generate();
        // Asking a witness code for a device: refused, the code is not spent.
        let refused = offers.admit_joiner(
            joiner.device_id(),
            &request(JoinRole::Device, code.secret, &joiner, &user),
            &mut chain,
            &root,
            101,
        );
        assert!(
            matches!(
                refused,
                Err(Error::PairingRole {
                    code: "witness",
                    asked: "device"
                })
            ),
            "{refused:?}"
        );
        assert!(chain.links().is_empty());
        assert_eq!(offers.role_of(&code.secret), Some(JoinRole::Witness));
        let (state, role) = offers
            .admit_joiner(
                joiner.device_id(),
                &request(JoinRole::Witness, code.secret, &joiner, &user),
                &mut chain,
                &root,
                102,
            )
            .unwrap();
        assert_eq!(role, JoinRole::Witness);
        assert!(state.is_live(&joiner.device_id()));
        assert_eq!(offers.role_of(&code.secret), None);
        // A plain code adds a device.
        let code = offers
            .issue(user, inviter.device_id(), &[], 100, 600)
            .unwrap();
        assert_eq!(offers.redeem(&code.secret, 101).unwrap(), JoinRole::Device);
    }

    #[test]
    fn a_witness_answer_has_no_room_for_a_secret() {
        let user = UserRootKey::generate().user_id();
        let info = VolumeInfo {
            volume: VolumeId(7),
            genesis: Config::majority(ConfigId(1), [NodeId(1)], [], []).unwrap(),
            nodes: vec![(NodeId(1), DeviceIdentity::generate().device_id())],
            addresses: Vec::new(),
        };
        let witness = JoinAnswer {
            node: NodeId(2),
            grant: JoinGrant::Witness,
            chain: UserChain::new(user),
            info: info.clone(),
        };
        let device = JoinAnswer {
            grant: JoinGrant::Device {
                secrets: vec![(KeyEpoch(0), [9; SEALED_SECRET_BYTES])],
            },
            ..witness.clone()
        };
        let (witness_bytes, device_bytes) = (witness.to_bytes(), device.to_bytes());
        assert_eq!(JoinAnswer::from_bytes(&witness_bytes).unwrap(), witness);
        assert_eq!(JoinAnswer::from_bytes(&device_bytes).unwrap(), device);
        assert_eq!(
            device_bytes.len() - witness_bytes.len(),
            2 + 8 + SEALED_SECRET_BYTES
        );
        // A witness grant followed by secret bytes is not an answer.
        let mut smuggled = witness_bytes[..10].to_vec();
        smuggled.extend_from_slice(&[9; SEALED_SECRET_BYTES]);
        smuggled.extend_from_slice(&witness_bytes[10..]);
        assert!(JoinAnswer::from_bytes(&smuggled).is_err());
        let mut unknown = witness_bytes.clone();
        unknown[9] = 7;
        assert!(JoinAnswer::from_bytes(&unknown).is_err());
        // Requests carry their role; an unknown one is refused.
        let joiner = DeviceIdentity::generate();
        let asked = request(JoinRole::Witness, PairingSecret([1; 16]), &joiner, &user);
        let mut bytes = asked.to_bytes();
        assert_eq!(JoinRequest::from_bytes(&bytes).unwrap(), asked);
        bytes[1] = 2;
        assert!(JoinRequest::from_bytes(&bytes).is_err());
    }
}
