//! Sealed, signed log entries: what a volume's log holds on the wire and at rest.
//!
//! A fossil operation (or a fossil checkpoint) is sealed with the volume key epoch's
//! entry key and signed by its author device before it reaches the Paxos core, so the
//! log, the acceptors (witnesses included) and every frame only ever hold ciphertext
//! (DESIGN invariant 1), and a reader refuses anything forged or altered.
//!
//! # Format (version 1, integers little-endian)
//!
//! ```text
//! 0   version u8 = 1
//! 1   kind u8            1 = operation, 2 = checkpoint, 3 = key rotation
//! 2   volume u128
//! 18  key epoch u64
//! 26  author u64         the signing device (a paxos NodeId)
//! 34  seq u64            operation: the author's proposal seq; checkpoint: its slot
//! 42  nonce [24]         random
//! 66  ciphertext         XChaCha20-Poly1305(entry key, nonce, aad = bytes 0..42),
//!                        plaintext + 16-byte tag; its length is implied by the total
//! end-64 signature [64]  Ed25519(author, "kith/entry-sig/v1" ‖ bytes 0..end-64)
//! ```
//!
//! # Key rotation (kind 3)
//!
//! Removing a device starts a new key epoch through the log, so every device switches
//! at the same slot. The entry is sealed and signed like an operation (under the epoch
//! in force when it was proposed) and its plaintext is a [`KeyRotation`]:
//!
//! ```text
//! rotation = ver u8 (=1) ‖ epoch u64 ‖ n u16 ‖ (node u64 ‖ share[80])*n   nodes increasing
//! share    = HPKE-sealed epoch secret to that node's device X25519 key
//!            (`crate::pairing::seal_epoch_share`, info binds volume, node and epoch)
//! ```
//!
//! The shares go to the remaining devices (voters and learners; never witnesses, never
//! the removed device): a device that holds the old entry key can read which nodes got a
//! share, not the new secret. It is a log entry rather than a fossil operation because
//! the entry keys are net's: the replica must learn the epoch before it opens the
//! entries sealed under it, and fossil never sees key material.
//!
//! # Why a random 192-bit nonce
//!
//! A nonce derived from `(author, seq)` under ChaCha20-Poly1305 would save 24 bytes, but
//! it is unique only while a device never seals two different plaintexts under the same
//! `(author, seq)` and key. That breaks in cases this system must survive: a crash
//! between sealing and the durable enqueue of the proposal (the seq is reused for the
//! next operation), or a device restored from a backup or after losing its acceptor
//! database (seqs restart). One reuse reveals the XOR of two plaintexts and the
//! Poly1305 key, i.e. forgeries under the whole epoch key. XChaCha20-Poly1305 with a
//! random nonce has no such state to keep; collisions are negligible (2⁻⁹⁶ after 2⁴⁸
//! entries per key). `(author, seq)` is still bound, in the AAD and the signature.
//!
//! # Checks on open, in order
//!
//! Bounds and version → volume (`WrongVolume`) → author known (`UnknownAuthor`) →
//! signature over the sealed bytes (`BadSignature`; before any decryption, so an
//! outsider's bytes cost one verification) → key epoch known (`UnknownKeyEpoch`) →
//! AEAD (`Tampered`). The signature is over ciphertext, so a member who knows the entry
//! key still cannot author entries as another device.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use paxos::{NodeId, VolumeId};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Encoding version written by this build.
pub const ENTRY_VERSION: u8 = 1;
/// Bytes of the authenticated header (the AAD).
pub const HEADER_BYTES: usize = 42;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const SIGNATURE_BYTES: usize = 64;
/// Bytes a sealed entry adds to its plaintext.
pub const ENTRY_OVERHEAD_BYTES: usize = HEADER_BYTES + NONCE_BYTES + TAG_BYTES + SIGNATURE_BYTES;
/// Largest operation that fits one log entry (the core's payload bound less overhead).
pub const OP_BYTES_MAX: usize = paxos::limits::ENTRY_BYTES_MAX - ENTRY_OVERHEAD_BYTES;
/// Room a snapshot keeps for the key rotations it carries (`crate::replica`).
pub const SNAPSHOT_ROTATIONS_BYTES_MAX: usize = 2 << 20;
/// Largest checkpoint that fits one snapshot (the core's bound less overhead and the
/// carried key rotations).
pub const CHECKPOINT_BYTES_MAX: usize =
    paxos::limits::SNAPSHOT_BYTES_MAX - ENTRY_OVERHEAD_BYTES - SNAPSHOT_ROTATIONS_BYTES_MAX;
/// Largest sealed entry of any kind; longer input is refused before any parsing.
pub const SEALED_BYTES_MAX: usize = paxos::limits::SNAPSHOT_BYTES_MAX;
const SIGNATURE_CONTEXT: &[u8] = b"kith/entry-sig/v1";
/// `blake3::derive_key` context turning a volume epoch secret into its entry key.
const ENTRY_KEY_CONTEXT: &str = "kith 2026-01-01 log entry aead v1";

const _: () = assert!(OP_BYTES_MAX > 0 && OP_BYTES_MAX < CHECKPOINT_BYTES_MAX);
const _: () = assert!(paxos::limits::ENTRY_BYTES_MAX <= SEALED_BYTES_MAX);

/// A volume key epoch: a new one starts whenever a member or device is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct KeyEpoch(pub u64);

impl std::fmt::Display for KeyEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// The symmetric key entries of one volume key epoch are sealed with.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct EntryKey([u8; 32]);

impl EntryKey {
    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EntryKey(bytes)
    }

    /// The entry key of a volume epoch, derived from the epoch's random secret (the
    /// epoch secret also yields other subkeys under other contexts).
    pub fn derive(epoch_secret: &[u8; 32]) -> Self {
        EntryKey(blake3::derive_key(ENTRY_KEY_CONTEXT, epoch_secret))
    }
}

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryKey(..)")
    }
}

/// What a sealed entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A fossil operation proposed to the log.
    Op,
    /// A fossil checkpoint (the state a snapshot replaces the log prefix with).
    Checkpoint,
    /// A new key epoch's secret, sealed to each remaining device ([`KeyRotation`]).
    KeyRotation,
}

impl EntryKind {
    fn to_byte(self) -> u8 {
        match self {
            EntryKind::Op => 1,
            EntryKind::Checkpoint => 2,
            EntryKind::KeyRotation => 3,
        }
    }

    fn from_byte(byte: u8) -> Result<Self> {
        match byte {
            1 => Ok(EntryKind::Op),
            2 => Ok(EntryKind::Checkpoint),
            3 => Ok(EntryKind::KeyRotation),
            _ => Err(Error::malformed("entry", "unknown kind")),
        }
    }

    fn plaintext_bytes_max(self) -> usize {
        match self {
            EntryKind::Op | EntryKind::KeyRotation => OP_BYTES_MAX,
            EntryKind::Checkpoint => CHECKPOINT_BYTES_MAX,
        }
    }
}

/// The authenticated header of an entry (readable without keys, trusted only after
/// [`Entry::open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryHeader {
    /// Operation or checkpoint.
    pub kind: EntryKind,
    /// The volume whose log the entry belongs to.
    pub volume: VolumeId,
    /// The key epoch it is sealed under.
    pub epoch: KeyEpoch,
    /// The signing device.
    pub author: NodeId,
    /// Operation: the author's proposal seq (`(author, seq)` is applied at most once);
    /// checkpoint: the last slot it covers.
    pub seq: u64,
}

impl EntryHeader {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0] = ENTRY_VERSION;
        out[1] = self.kind.to_byte();
        out[2..18].copy_from_slice(&self.volume.0.to_le_bytes());
        out[18..26].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[26..34].copy_from_slice(&self.author.0.to_le_bytes());
        out[34..42].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Parses the header of sealed `bytes` (bounds and version checked, nothing
    /// verified).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > SEALED_BYTES_MAX {
            return Err(Error::TooLong {
                what: "entry",
                len_bytes: bytes.len(),
                max_bytes: SEALED_BYTES_MAX,
            });
        }
        if bytes.len() < ENTRY_OVERHEAD_BYTES {
            return Err(Error::malformed("entry", "shorter than its fixed fields"));
        }
        let version = le_u8(bytes, 0)?;
        if version != ENTRY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "entry",
                version,
            });
        }
        let kind = EntryKind::from_byte(le_u8(bytes, 1)?)?;
        let plaintext_len = bytes.len() - ENTRY_OVERHEAD_BYTES;
        if plaintext_len > kind.plaintext_bytes_max() {
            return Err(Error::TooLong {
                what: "entry plaintext",
                len_bytes: plaintext_len,
                max_bytes: kind.plaintext_bytes_max(),
            });
        }
        Ok(EntryHeader {
            kind,
            volume: VolumeId(u128::from_le_bytes(le_array(bytes, 2)?)),
            epoch: KeyEpoch(u64::from_le_bytes(le_array(bytes, 18)?)),
            author: NodeId(u64::from_le_bytes(le_array(bytes, 26)?)),
            seq: u64::from_le_bytes(le_array(bytes, 34)?),
        })
    }
}

fn le_u8(bytes: &[u8], at: usize) -> Result<u8> {
    bytes
        .get(at)
        .copied()
        .ok_or(Error::malformed("entry", "truncated header"))
}

fn le_array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    bytes
        .get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(Error::malformed("entry", "truncated header"))
}

/// A sealed and signed entry (its encoded bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    bytes: Vec<u8>,
}

/// An entry that verified and decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Its header, now authenticated.
    pub header: EntryHeader,
    /// The operation or checkpoint bytes.
    pub plaintext: Vec<u8>,
}

impl Entry {
    /// Seals `plaintext` under `key` (random nonce, header as AAD) and signs the result
    /// as `header.author` with `signing_key`.
    pub fn seal(
        header: EntryHeader,
        plaintext: &[u8],
        key: &EntryKey,
        signing_key: &SigningKey,
    ) -> Result<Entry> {
        let max_bytes = header.kind.plaintext_bytes_max();
        if plaintext.len() > max_bytes {
            return Err(Error::TooLong {
                what: "entry plaintext",
                len_bytes: plaintext.len(),
                max_bytes,
            });
        }
        let aad = header.encode();
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::TooLong {
                what: "entry plaintext",
                len_bytes: plaintext.len(),
                max_bytes,
            })?;
        let mut bytes = Vec::with_capacity(plaintext.len() + ENTRY_OVERHEAD_BYTES);
        bytes.extend_from_slice(&aad);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        let signature = signing_key.sign(&signed_message(&bytes));
        bytes.extend_from_slice(&signature.to_bytes());
        Ok(Entry { bytes })
    }

    /// Verifies and opens sealed `bytes` for `volume`: `entry_key` gives the key of an
    /// epoch this device holds, `verifying_key` the key of a known, unrevoked author.
    pub fn open(
        bytes: &[u8],
        volume: VolumeId,
        entry_key: impl FnOnce(KeyEpoch) -> Option<EntryKey>,
        verifying_key: impl FnOnce(NodeId) -> Option<VerifyingKey>,
    ) -> Result<Opened> {
        let header = EntryHeader::parse(bytes)?;
        if header.volume != volume {
            return Err(Error::EntryWrongVolume {
                expected: volume.0,
                found: header.volume.0,
            });
        }
        let author = header.author;
        let public = verifying_key(author).ok_or(Error::EntryUnknownAuthor { author })?;
        let signed_len = bytes.len() - SIGNATURE_BYTES;
        let (signed, signature) = bytes.split_at(signed_len);
        let signature: [u8; SIGNATURE_BYTES] = signature
            .try_into()
            .map_err(|_| Error::EntryBadSignature { author })?;
        public
            .verify_strict(&signed_message(signed), &Signature::from_bytes(&signature))
            .map_err(|_| Error::EntryBadSignature { author })?;
        Self::decrypt(header, signed, entry_key)
    }

    /// Opens `bytes` this device sealed itself: the caller knows they are exactly the
    /// bytes [`Entry::seal`] gave it (it kept their hash), so the signature is its own
    /// and is not checked again; the volume and the AEAD still are. Verifying an
    /// Ed25519 signature costs more than everything else an own op costs to apply.
    pub fn open_own(
        bytes: &[u8],
        volume: VolumeId,
        entry_key: impl FnOnce(KeyEpoch) -> Option<EntryKey>,
    ) -> Result<Opened> {
        let header = EntryHeader::parse(bytes)?;
        if header.volume != volume {
            return Err(Error::EntryWrongVolume {
                expected: volume.0,
                found: header.volume.0,
            });
        }
        let signed = bytes
            .get(..bytes.len().saturating_sub(SIGNATURE_BYTES))
            .ok_or(Error::EntryTampered {
                author: header.author,
            })?;
        Self::decrypt(header, signed, entry_key)
    }

    /// The plaintext of the signed part of an entry (header ‖ nonce ‖ ciphertext).
    fn decrypt(
        header: EntryHeader,
        signed: &[u8],
        entry_key: impl FnOnce(KeyEpoch) -> Option<EntryKey>,
    ) -> Result<Opened> {
        let author = header.author;
        let key = entry_key(header.epoch).ok_or(Error::EntryUnknownKeyEpoch {
            epoch: header.epoch.0,
        })?;
        let nonce = signed
            .get(HEADER_BYTES..HEADER_BYTES + NONCE_BYTES)
            .ok_or(Error::EntryTampered { author })?;
        let ciphertext = signed
            .get(HEADER_BYTES + NONCE_BYTES..)
            .ok_or(Error::EntryTampered { author })?;
        let aad = signed
            .get(..HEADER_BYTES)
            .ok_or(Error::EntryTampered { author })?;
        let plaintext = XChaCha20Poly1305::new((&key.0).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Error::EntryTampered { author })?;
        Ok(Opened { header, plaintext })
    }

    /// Wraps already-sealed bytes (not verified: use [`Entry::open`] to trust them).
    pub fn from_bytes(bytes: Vec<u8>) -> Entry {
        Entry { bytes }
    }

    /// The encoded entry.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded entry, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Version of the [`KeyRotation`] encoding.
const ROTATION_VERSION: u8 = 1;
/// Bytes of one share record: node and sealed secret.
const ROTATION_SHARE_BYTES: usize = 8 + crate::pairing::SEALED_SECRET_BYTES;
/// Most shares one rotation carries (every voter and learner of a volume).
pub const ROTATION_SHARES_MAX: usize = crate::pairing::NODES_MAX;

/// The plaintext of a key-rotation entry: a new epoch and its secret, sealed to each
/// device that keeps reading the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    /// The epoch it starts (above every epoch before it).
    pub epoch: KeyEpoch,
    /// Per device node, the epoch secret sealed to its X25519 key; nodes increasing.
    pub shares: Vec<(NodeId, [u8; crate::pairing::SEALED_SECRET_BYTES])>,
}

impl KeyRotation {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = crate::codec::Writer::new();
        out.u8(ROTATION_VERSION)
            .u64(self.epoch.0)
            .u16(u16::try_from(self.shares.len()).unwrap_or(u16::MAX));
        for (node, share) in &self.shares {
            out.u64(node.0).put(share);
        }
        out.into_bytes()
    }

    /// Decodes and checks the shape (epoch within venti's u32, nodes increasing,
    /// bounded), opens nothing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut input = crate::codec::Reader::new(bytes, "key rotation");
        let version = input.u8()?;
        if version != ROTATION_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "key rotation",
                version,
            });
        }
        let epoch = KeyEpoch(input.u64()?);
        if epoch.0 == 0 || epoch.0 > u64::from(u32::MAX) {
            return Err(Error::malformed("key rotation", "epoch out of range"));
        }
        let count = usize::from(input.u16()?);
        if count == 0 || count > ROTATION_SHARES_MAX {
            return Err(Error::malformed("key rotation", "share count"));
        }
        let mut shares: Vec<(NodeId, [u8; crate::pairing::SEALED_SECRET_BYTES])> =
            Vec::with_capacity(count.min(input.remaining() / ROTATION_SHARE_BYTES));
        for _ in 0..count {
            let node = NodeId(input.u64()?);
            if shares.last().is_some_and(|(last, _)| *last >= node) {
                return Err(Error::malformed("key rotation", "nodes not increasing"));
            }
            shares.push((node, input.array()?));
        }
        input.finish()?;
        Ok(KeyRotation { epoch, shares })
    }

    /// A rotation to `epoch`: `secret` sealed to each of `recipients` (node and device
    /// X25519 public key) with [`crate::pairing::seal_epoch_secret`].
    pub fn seal(
        volume: VolumeId,
        epoch: KeyEpoch,
        secret: &[u8; crate::pairing::EPOCH_SECRET_BYTES],
        recipients: &[(NodeId, [u8; 32])],
    ) -> Result<Self> {
        if recipients.is_empty() || recipients.len() > ROTATION_SHARES_MAX {
            return Err(Error::malformed("key rotation", "share count"));
        }
        let mut shares = recipients
            .iter()
            .map(|(node, kem_public)| {
                crate::pairing::seal_epoch_secret(kem_public, volume, *node, epoch, secret)
                    .map(|share| (*node, share))
            })
            .collect::<Result<Vec<_>>>()?;
        shares.sort_by_key(|(node, _)| *node);
        shares.dedup_by_key(|(node, _)| *node);
        Ok(KeyRotation { epoch, shares })
    }

    /// The share sealed to `node`, if it got one.
    pub fn share_for(&self, node: NodeId) -> Option<&[u8; crate::pairing::SEALED_SECRET_BYTES]> {
        self.shares
            .binary_search_by_key(&node, |(n, _)| *n)
            .ok()
            .and_then(|at| self.shares.get(at))
            .map(|(_, share)| share)
    }
}

fn signed_message(sealed_without_signature: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + sealed_without_signature.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(sealed_without_signature);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VOLUME: VolumeId = VolumeId(0x4b17_0001);

    fn signing(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn header(author: u64, seq: u64) -> EntryHeader {
        EntryHeader {
            kind: EntryKind::Op,
            volume: VOLUME,
            epoch: KeyEpoch(3),
            author: NodeId(author),
            seq,
        }
    }

    fn key() -> EntryKey {
        EntryKey::derive(&[9; 32])
    }

    fn open(bytes: &[u8]) -> Result<Opened> {
        Entry::open(
            bytes,
            VOLUME,
            |e| (e == KeyEpoch(3)).then(key),
            |a| (a == NodeId(1)).then(|| signing(1).verifying_key()),
        )
    }

    #[test]
    fn round_trip_binds_header() {
        let sealed = Entry::seal(header(1, 7), b"mkdir /a", &key(), &signing(1)).unwrap();
        let opened = open(sealed.as_bytes()).unwrap();
        assert_eq!(opened.plaintext, b"mkdir /a");
        assert_eq!(opened.header, header(1, 7));
        assert_eq!(sealed.as_bytes().len(), 8 + ENTRY_OVERHEAD_BYTES);
    }

    #[test]
    fn own_entries_open_without_the_signature_but_with_volume_and_aead() {
        let sealed = Entry::seal(header(1, 7), b"rename", &key(), &signing(1)).unwrap();
        let own = |bytes: &[u8], volume| Entry::open_own(bytes, volume, |_| Some(key()));
        let opened = own(sealed.as_bytes(), VOLUME).unwrap();
        assert_eq!(
            (opened.header, opened.plaintext),
            (header(1, 7), b"rename".to_vec())
        );
        let err = own(sealed.as_bytes(), VolumeId(5)).unwrap_err();
        assert!(matches!(err, Error::EntryWrongVolume { .. }), "{err}");
        let mut tampered = sealed.as_bytes().to_vec();
        let last_ciphertext_byte = tampered.len() - SIGNATURE_BYTES - 1;
        tampered[last_ciphertext_byte] ^= 1;
        let err = own(&tampered, VOLUME).unwrap_err();
        assert!(matches!(err, Error::EntryTampered { .. }), "{err}");
        assert!(own(&sealed.as_bytes()[..10], VOLUME).is_err());
    }

    #[test]
    fn refusals_are_typed() {
        let sealed = Entry::seal(header(1, 7), b"op", &key(), &signing(1)).unwrap();
        // Another volume.
        let err = Entry::open(
            sealed.as_bytes(),
            VolumeId(5),
            |_| Some(key()),
            |_| Some(signing(1).verifying_key()),
        )
        .unwrap_err();
        assert!(matches!(err, Error::EntryWrongVolume { .. }), "{err}");
        // Unknown author.
        let other = Entry::seal(header(2, 1), b"op", &key(), &signing(2)).unwrap();
        assert!(matches!(
            open(other.as_bytes()),
            Err(Error::EntryUnknownAuthor { author: NodeId(2) })
        ));
        // Signed by the wrong key while claiming author 1.
        let forged = Entry::seal(header(1, 8), b"op", &key(), &signing(2)).unwrap();
        assert!(matches!(
            open(forged.as_bytes()),
            Err(Error::EntryBadSignature { .. })
        ));
        // Every flipped byte is refused (signature covers header, nonce, ciphertext).
        for at in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[at] ^= 0x20;
            assert!(open(&bytes).is_err(), "flip at {at} accepted");
        }
        // Validly signed, but sealed under a key this reader does not hold for it.
        let wrong_key = Entry::seal(
            header(1, 9),
            b"op",
            &EntryKey::from_bytes([1; 32]),
            &signing(1),
        )
        .unwrap();
        assert!(matches!(
            open(wrong_key.as_bytes()),
            Err(Error::EntryTampered { .. })
        ));
        let unknown_epoch = Entry::seal(
            EntryHeader {
                epoch: KeyEpoch(4),
                ..header(1, 10)
            },
            b"op",
            &key(),
            &signing(1),
        )
        .unwrap();
        assert!(matches!(
            open(unknown_epoch.as_bytes()),
            Err(Error::EntryUnknownKeyEpoch { epoch: 4 })
        ));
    }

    #[test]
    fn bounds() {
        let big = vec![0u8; OP_BYTES_MAX + 1];
        assert!(matches!(
            Entry::seal(header(1, 1), &big, &key(), &signing(1)),
            Err(Error::TooLong { .. })
        ));
        let max = Entry::seal(header(1, 1), &big[1..], &key(), &signing(1)).unwrap();
        assert_eq!(max.as_bytes().len(), paxos::limits::ENTRY_BYTES_MAX);
        assert_eq!(open(max.as_bytes()).unwrap().plaintext.len(), OP_BYTES_MAX);
        assert!(matches!(
            open(&vec![1u8; SEALED_BYTES_MAX + 1]),
            Err(Error::TooLong { .. })
        ));
    }

    #[test]
    fn key_rotations_round_trip_and_refuse_bad_shapes() {
        let rotation = KeyRotation {
            epoch: KeyEpoch(2),
            shares: vec![(NodeId(1), [1; 80]), (NodeId(4), [4; 80])],
        };
        let bytes = rotation.to_bytes();
        assert_eq!(KeyRotation::from_bytes(&bytes).unwrap(), rotation);
        assert_eq!(rotation.share_for(NodeId(4)), Some(&[4; 80]));
        assert_eq!(rotation.share_for(NodeId(3)), None);
        for len in 0..bytes.len() {
            assert!(KeyRotation::from_bytes(&bytes[..len]).is_err(), "{len}");
        }
        let mut unordered = rotation.clone();
        unordered.shares.reverse();
        assert!(KeyRotation::from_bytes(&unordered.to_bytes()).is_err());
        let zero = KeyRotation {
            epoch: KeyEpoch(0),
            ..rotation.clone()
        };
        assert!(KeyRotation::from_bytes(&zero.to_bytes()).is_err());
        let wide = KeyRotation {
            epoch: KeyEpoch(u64::from(u32::MAX) + 1),
            ..rotation
        };
        assert!(KeyRotation::from_bytes(&wide.to_bytes()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_round_trip(op in proptest::collection::vec(any::<u8>(), 0..2048), seq in any::<u64>()) {
            let sealed = Entry::seal(header(1, seq), &op, &key(), &signing(1)).unwrap();
            let opened = open(sealed.as_bytes()).unwrap();
            prop_assert_eq!(opened.plaintext, op);
            prop_assert_eq!(opened.header.seq, seq);
        }

        #[test]
        fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(open(&bytes).is_err());
        }

        #[test]
        fn random_bytes_with_valid_header_never_open(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = header(1, 1).encode().to_vec();
            bytes.extend_from_slice(&tail);
            prop_assert!(open(&bytes).is_err());
        }
    }
}
