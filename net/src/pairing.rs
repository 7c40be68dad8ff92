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
//! join request = ver u8 (=1) ‖ secret[16] ‖ kem_public[32] ‖ name_len u16 ‖ name ‖ proof[64]
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand::RngCore;

use crate::codec::{Reader, Writer};
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
const JOIN_VERSION: u8 = 1;
const CHECK_BYTES: usize = 4;
const CODE_CHECK_CONTEXT: &str = "kith 2026-01-01 pairing code checksum v1";
const INVITE_CHECK_CONTEXT: &str = "kith 2026-01-01 invite checksum v1";
const SECRET_HASH_CONTEXT: &str = "kith 2026-01-01 pairing secret v1";
const INVITE_PREFIX: &str = "kith1";

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

/// The issuing device's open pairing codes.
#[derive(Debug, Default)]
pub struct PairingOffers {
    /// Hash of the secret → expiry (Unix seconds). Only hashes are kept in memory.
    open: HashMap<[u8; 32], u64>,
}

impl PairingOffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a new code for `device` of `user`, reachable at `addresses`, valid for
    /// `ttl_s` from `now_unix_s`.
    pub fn issue(
        &mut self,
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
        self.open.insert(secret_hash(&secret), expires_unix_s);
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
    pub fn redeem(&mut self, secret: &PairingSecret, now_unix_s: u64) -> Result<()> {
        let hash = secret_hash(&secret.0);
        let expires = self.open.remove(&hash).ok_or(Error::PairingUnknown)?;
        self.forget_expired(now_unix_s);
        if now_unix_s >= expires {
            return Err(Error::PairingExpired);
        }
        Ok(())
    }

    /// The issuing side of a join: consumes the secret in `request` and, if it was
    /// open, records `joiner` (the device authenticated by the connection) in `chain`
    /// with the keys and name it sent. The secret is spent even if the chain then
    /// refuses the device (e.g. a revoked key).
    pub fn admit_joiner(
        &mut self,
        joiner: DeviceId,
        request: &JoinRequest,
        chain: &mut UserChain,
        root: &UserRootKey,
        now_unix_s: u64,
    ) -> Result<ChainState> {
        self.redeem(&request.secret, now_unix_s)?;
        chain.append(
            root,
            LinkBody::AddDevice {
                device: DevicePublic {
                    id: joiner,
                    kem_public: request.kem_public,
                },
                name: request.name.clone(),
                proof: request.proof,
            },
        )
    }

    /// True while some code can still be redeemed (the transport then admits unknown
    /// devices for pairing requests only).
    pub fn any_open(&self, now_unix_s: u64) -> bool {
        self.open.values().any(|expires| now_unix_s < *expires)
    }

    /// Withdraws every open code.
    pub fn cancel_all(&mut self) {
        self.open.clear();
    }

    fn forget_expired(&mut self, now_unix_s: u64) {
        self.open.retain(|_, expires| now_unix_s < *expires);
    }
}

/// What device B sends A (on a pairing connection) to join: the secret and B's keys.
/// B's signing key is the connection's authenticated peer id, so it is not repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub secret: PairingSecret,
    pub kem_public: [u8; 32],
    pub name: String,
    /// B's [`crate::identity::DeviceIdentity::possession_proof`] for A's user.
    pub proof: [u8; 64],
}

impl JoinRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer::new();
        out.u8(JOIN_VERSION)
            .put(&self.secret.0)
            .put(&self.kem_public)
            .bytes_u16(self.name.as_bytes())
            .put(&self.proof);
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
        let secret = PairingSecret(input.array()?);
        let kem_public = input.array()?;
        let name = input.string(DEVICE_NAME_BYTES_MAX)?;
        let proof = input.array()?;
        input.finish()?;
        Ok(Self {
            secret,
            kem_public,
            name,
            proof,
        })
    }
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
