//! Device identities, the user root key and the signed user chain.
//!
//! A device holds two keys (crypto-design §3.1): an Ed25519 signing key — its QUIC
//! identity and the signer of its log entries — and an X25519 key that receives
//! sealed keys. [`DeviceId`] is the Ed25519 public key. A user is an Ed25519 root
//! key ([`UserRootKey`], [`UserId`]) that signs an append-only, hash-linked
//! [`UserChain`] of [`LinkBody`] statements: add a device, revoke a device, publish
//! a new per-user key. [`UserChain::verify`] replays the chain and yields the live
//! devices ([`ChainState`]); a tampered, reordered or truncated chain is refused,
//! and [`UserChain::check_extends`] detects a fork against a chain known before.
//!
//! Not here: sealing keys to devices (HPKE), root key rotation, gossip of chains.
//!
//! Encodings (little-endian, versioned, bounded):
//! ```text
//! link  = ver u8 (=1) ‖ seq u64 ‖ prev[32] ‖ tag u8 ‖ body ‖ sig[64]
//!   tag 1 AddDevice    body = sign_pk[32] ‖ kem_pk[32] ‖ name_len u16 ‖ name ‖ proof[64]
//!   tag 2 RevokeDevice body = device[32]
//!   tag 3 NewUserKey   body = generation u32 ‖ public[32]
//! chain = ver u8 (=1) ‖ user[32] ‖ count u32 ‖ (len u32 ‖ link)*
//! sig   = Ed25519_root("kith/user-chain/v1" ‖ user ‖ seq ‖ prev ‖ tag ‖ body)
//! proof = Ed25519_device("kith/add-device/v1" ‖ user ‖ sign_pk ‖ kem_pk ‖ name)
//! prev  = 0^32 for the first link, else BLAKE3-derive_key(LINK_HASH_CONTEXT, previous link)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};

/// Longest device name, in bytes of UTF-8.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;
/// Most links a user chain may hold.
pub const CHAIN_LINKS_MAX: usize = 4096;
/// Longest encoded link.
pub const LINK_BYTES_MAX: usize = 1 + 8 + 32 + 1 + 32 + 32 + 2 + DEVICE_NAME_BYTES_MAX + 64 + 64;

const LINK_VERSION: u8 = 1;
const CHAIN_VERSION: u8 = 1;
const LINK_HASH_CONTEXT: &str = "kith 2026-01-01 user chain link v1";
const FINGERPRINT_CONTEXT: &str = "kith 2026-01-01 key fingerprint v1";
const LINK_SIGNATURE_DOMAIN: &[u8] = b"kith/user-chain/v1";
const POSSESSION_DOMAIN: &[u8] = b"kith/add-device/v1";

/// Short printable fingerprint of a public key: 80 bits of a keyed hash as
/// base32, in four groups of four (`ABCD-EFGH-IJKL-MNOP`), for checking by eye or voice.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    let digest = blake3::derive_key(FINGERPRINT_CONTEXT, public_key);
    let text = data_encoding::BASE32_NOPAD.encode(digest.get(..10).unwrap_or(&digest));
    let mut out = String::with_capacity(19);
    for (index, ch) in text.chars().enumerate() {
        if index > 0 && index % 4 == 0 {
            out.push('-');
        }
        out.push(ch);
    }
    out
}

/// A device: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Short printable fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// The key as a verifier; fails for bytes that are not a curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature {
            what: "device key (not a valid Ed25519 point)",
        })
    }

    /// Checks a signature by this device with `verify_strict`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64], what: &'static str) -> Result<()> {
        verify_strict(&self.0, message, signature, what)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.fingerprint())
    }
}

/// A user: the Ed25519 public key of their root key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId([u8; 32]);

impl UserId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.fingerprint())
    }
}

/// What others know of a device: its two public keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePublic {
    pub id: DeviceId,
    pub kem_public: [u8; 32],
}

/// A device's secret keys. Both zeroize on drop; `Debug` shows only the id.
pub struct DeviceIdentity {
    signing: SigningKey,
    kem: StaticSecret,
}

impl DeviceIdentity {
    /// Fresh random keys.
    pub fn generate() -> Self {
        let mut seeds = Zeroizing::new([0u8; 64]);
        rand::rng().fill_bytes(seeds.as_mut());
        let mut sign_seed = Zeroizing::new([0u8; 32]);
        let mut kem_seed = Zeroizing::new([0u8; 32]);
        sign_seed.copy_from_slice(&seeds[..32]);
        kem_seed.copy_from_slice(&seeds[32..]);
        Self::from_secrets(&sign_seed, &kem_seed)
    }

    /// Rebuilds an identity from its two 32-byte secrets (as stored in the keyring).
    pub fn from_secrets(sign_seed: &[u8; 32], kem_secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(sign_seed),
            kem: StaticSecret::from(*kem_secret),
        }
    }

    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.signing.verifying_key().to_bytes())
    }

    pub fn public(&self) -> DevicePublic {
        DevicePublic {
            id: self.device_id(),
            kem_public: x25519_dalek::PublicKey::from(&self.kem).to_bytes(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// A copy of the device's Ed25519 signing key, for signing log entries (a volume's
    /// entry authors are verified with their device keys). Zeroized on drop.
    pub fn signing_key(&self) -> SigningKey {
        self.signing.clone()
    }

    /// The proof a device gives that it holds its keys and agrees to join `user`
    /// under `name`; goes into the `AddDevice` link.
    pub fn possession_proof(&self, user: &UserId, name: &str) -> [u8; 64] {
        self.sign(&possession_message(user, &self.public(), name))
    }

    pub(crate) fn sign_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    pub(crate) fn kem_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.kem.to_bytes())
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.device_id())
            .finish_non_exhaustive()
    }
}

/// The user root key: signs the user chain only. Zeroizes on drop.
pub struct UserRootKey {
    signing: SigningKey,
}

impl UserRootKey {
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    pub fn user_id(&self) -> UserId {
        UserId(self.signing.verifying_key().to_bytes())
    }

    pub(crate) fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for UserRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRootKey")
            .field("user", &self.user_id())
            .finish_non_exhaustive()
    }
}

/// One statement of a user chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkBody {
    /// A device joins the user. `proof` is the device's [`DeviceIdentity::possession_proof`].
    AddDevice {
        device: DevicePublic,
        name: String,
        proof: [u8; 64],
    },
    /// A device leaves for good: it can never be added again.
    RevokeDevice { device: DeviceId },
    /// A new per-user X25519 key; generations strictly increase.
    NewUserKey { generation: u32, public: [u8; 32] },
}

/// A signed, hash-linked link of a user chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: u64,
    pub prev: [u8; 32],
    pub body: LinkBody,
    pub signature: [u8; 64],
}

impl ChainLink {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(LINK_VERSION).u64(self.seq).put(&self.prev);
        encode_body(&mut out, &self.body);
        out.put(&self.signature);
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > LINK_BYTES_MAX {
            return Err(Error::TooLong {
                what: "chain link",
                len_bytes: bytes.len(),
                max_bytes: LINK_BYTES_MAX,
            });
        }
        let mut input = Reader::new(bytes, "chain link");
        let version = input.u8()?;
        if version != LINK_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "chain link",
                version,
            });
        }
        let seq = input.u64()?;
        let prev = input.array()?;
        let body = match input.u8()? {
            1 => {
                let id = DeviceId(input.array()?);
                let kem_public = input.array()?;
                let name = input.string(DEVICE_NAME_BYTES_MAX)?;
                let proof = input.array()?;
                LinkBody::AddDevice {
                    device: DevicePublic { id, kem_public },
                    name,
                    proof,
                }
            }
            2 => LinkBody::RevokeDevice {
                device: DeviceId(input.array()?),
            },
            3 => LinkBody::NewUserKey {
                generation: input.u32()?,
                public: input.array()?,
            },
            _ => return Err(Error::malformed("chain link", "unknown link kind")),
        };
        let signature = input.array()?;
        input.finish()?;
        Ok(Self {
            seq,
            prev,
            body,
            signature,
        })
    }

    /// The hash the next link names as `prev`.
    pub fn hash(&self) -> [u8; 32] {
        blake3::derive_key(LINK_HASH_CONTEXT, &self.encode())
    }
}

/// What a verified chain says: the user's live and revoked devices and current per-user key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    pub user: UserId,
    /// Number of links.
    pub len: u64,
    /// Hash of the last link (zero for an empty chain).
    pub head: [u8; 32],
    pub devices: BTreeMap<DeviceId, LiveDevice>,
    pub revoked: BTreeSet<DeviceId>,
    /// Latest per-user key `(generation, X25519 public key)`.
    pub user_key: Option<(u32, [u8; 32])>,
}

/// A live device as the chain records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveDevice {
    pub kem_public: [u8; 32],
    pub name: String,
    /// Sequence number of the link that added it.
    pub added_seq: u64,
}

impl ChainState {
    fn empty(user: UserId) -> Self {
        Self {
            user,
            len: 0,
            head: [0; 32],
            devices: BTreeMap::new(),
            revoked: BTreeSet::new(),
            user_key: None,
        }
    }

    pub fn is_live(&self, device: &DeviceId) -> bool {
        self.devices.contains_key(device)
    }

    /// Checks `link` against this state and, if it follows, applies it.
    fn apply(&mut self, link: &ChainLink) -> Result<()> {
        let seq = link.seq;
        if seq != self.len {
            return Err(Error::ChainBroken {
                seq,
                reason: "sequence number out of order",
            });
        }
        if link.prev != self.head {
            return Err(Error::ChainBroken {
                seq,
                reason: "does not link to the previous link's hash",
            });
        }
        if self.len >= CHAIN_LINKS_MAX as u64 {
            return Err(Error::ChainBroken {
                seq,
                reason: "chain longer than allowed",
            });
        }
        let message = link_message(&self.user, seq, &link.prev, &link.body);
        verify_strict(
            self.user.as_bytes(),
            &message,
            &link.signature,
            "user chain link",
        )?;
        match &link.body {
            LinkBody::AddDevice {
                device,
                name,
                proof,
            } => {
                if name.len() > DEVICE_NAME_BYTES_MAX {
                    return Err(Error::TooLong {
                        what: "device name",
                        len_bytes: name.len(),
                        max_bytes: DEVICE_NAME_BYTES_MAX,
                    });
                }
                if self.revoked.contains(&device.id) {
                    return Err(chain_device(
                        seq,
                        &device.id,
                        "was revoked and cannot return",
                    ));
                }
                if self.devices.contains_key(&device.id) {
                    return Err(chain_device(seq, &device.id, "is already a device"));
                }
                verify_strict(
                    device.id.as_bytes(),
                    &possession_message(&self.user, device, name),
                    proof,
                    "device possession proof",
                )?;
                self.devices.insert(
                    device.id,
                    LiveDevice {
                        kem_public: device.kem_public,
                        name: name.clone(),
                        added_seq: seq,
                    },
                );
            }
            LinkBody::RevokeDevice { device } => {
                if self.devices.remove(device).is_none() {
                    return Err(chain_device(seq, device, "is not a live device"));
                }
                self.revoked.insert(*device);
            }
            LinkBody::NewUserKey { generation, public } => {
                if let Some((current, _)) = self.user_key
                    && *generation <= current
                {
                    return Err(Error::ChainBroken {
                        seq,
                        reason: "per-user key generation does not increase",
                    });
                }
                self.user_key = Some((*generation, *public));
            }
        }
        self.head = link.hash();
        self.len += 1;
        Ok(())
    }
}

/// A user's chain: the statements signed by their root key, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChain {
    user: UserId,
    links: Vec<ChainLink>,
}

impl UserChain {
    /// An empty chain for `user`.
    pub fn new(user: UserId) -> Self {
        Self {
            user,
            links: Vec::new(),
        }
    }

    /// A chain from links received from elsewhere; call [`verify`](Self::verify) before trusting it.
    pub fn from_links(user: UserId, links: Vec<ChainLink>) -> Self {
        Self { user, links }
    }

    pub fn user(&self) -> UserId {
        self.user
    }

    pub fn links(&self) -> &[ChainLink] {
        &self.links
    }

    /// Signs `body` as the next link with `root` and appends it, if the chain with it verifies.
    pub fn append(&mut self, root: &UserRootKey, body: LinkBody) -> Result<ChainState> {
        if root.user_id() != self.user {
            return Err(Error::BadSignature {
                what: "user chain link (root key of another user)",
            });
        }
        let mut state = self.verify()?;
        let seq = state.len;
        let prev = state.head;
        let signature = root.sign(&link_message(&self.user, seq, &prev, &body));
        let link = ChainLink {
            seq,
            prev,
            body,
            signature,
        };
        state.apply(&link)?;
        self.links.push(link);
        Ok(state)
    }

    /// Replays the chain: every link in order, linked, signed by the root key and valid
    /// against the state before it.
    pub fn verify(&self) -> Result<ChainState> {
        if self.links.len() > CHAIN_LINKS_MAX {
            return Err(Error::TooLong {
                what: "user chain",
                len_bytes: self.links.len(),
                max_bytes: CHAIN_LINKS_MAX,
            });
        }
        let mut state = ChainState::empty(self.user);
        for link in &self.links {
            state.apply(link)?;
        }
        Ok(state)
    }

    /// Accepts `self` as an update of `known` only if it holds every link of `known`
    /// unchanged (it may add more). A differing link is a fork; a shorter chain a rollback.
    pub fn check_extends(&self, known: &UserChain) -> Result<()> {
        if self.user != known.user {
            return Err(Error::ChainBroken {
                seq: 0,
                reason: "chain of another user",
            });
        }
        for (index, known_link) in known.links.iter().enumerate() {
            match self.links.get(index) {
                Some(link) if link == known_link => {}
                Some(_) => return Err(Error::ChainFork { seq: index as u64 }),
                None => {
                    return Err(Error::ChainBroken {
                        seq: index as u64,
                        reason: "shorter than the chain already known (rollback)",
                    });
                }
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(CHAIN_VERSION)
            .put(self.user.as_bytes())
            .u32(self.links.len() as u32);
        for link in &self.links {
            out.bytes_u32(&link.encode());
        }
        out.into_bytes()
    }

    /// Decodes (does not verify) a chain.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut input = Reader::new(bytes, "user chain");
        let version = input.u8()?;
        if version != CHAIN_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "user chain",
                version,
            });
        }
        let user = UserId(input.array()?);
        let count = input.u32()? as usize;
        if count > CHAIN_LINKS_MAX {
            return Err(Error::TooLong {
                what: "user chain",
                len_bytes: count,
                max_bytes: CHAIN_LINKS_MAX,
            });
        }
        // Each link takes at least a length prefix, so `count` is bounded by the input too.
        let mut links = Vec::with_capacity(count.min(input.remaining() / 4));
        for _ in 0..count {
            links.push(ChainLink::decode(input.bytes_u32(LINK_BYTES_MAX)?)?);
        }
        input.finish()?;
        Ok(Self { user, links })
    }
}

fn chain_device(seq: u64, device: &DeviceId, reason: &'static str) -> Error {
    Error::ChainDevice {
        seq,
        device: device.fingerprint(),
        reason,
    }
}

fn encode_body(out: &mut Writer, body: &LinkBody) {
    match body {
        LinkBody::AddDevice {
            device,
            name,
            proof,
        } => {
            out.u8(1)
                .put(device.id.as_bytes())
                .put(&device.kem_public)
                .bytes_u16(name.as_bytes())
                .put(proof);
        }
        LinkBody::RevokeDevice { device } => {
            out.u8(2).put(device.as_bytes());
        }
        LinkBody::NewUserKey { generation, public } => {
            out.u8(3).u32(*generation).put(public);
        }
    }
}

fn link_message(user: &UserId, seq: u64, prev: &[u8; 32], body: &LinkBody) -> Vec<u8> {
    let mut out = Writer::new();
    out.put(LINK_SIGNATURE_DOMAIN)
        .put(user.as_bytes())
        .u64(seq)
        .put(prev);
    encode_body(&mut out, body);
    out.into_bytes()
}

fn possession_message(user: &UserId, device: &DevicePublic, name: &str) -> Vec<u8> {
    let mut out = Writer::new();
    out.put(POSSESSION_DOMAIN)
        .put(user.as_bytes())
        .put(device.id.as_bytes())
        .put(&device.kem_public)
        .bytes_u16(name.as_bytes());
    out.into_bytes()
}

fn verify_strict(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
    what: &'static str,
) -> Result<()> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::BadSignature { what })?;
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| Error::BadSignature { what })
}
