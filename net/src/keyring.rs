//! The device's secrets on disk: one keyring file; and [`VolumeKeyring`], the entry keys
//! of one volume's epochs as the replica uses them (the epoch secrets themselves live in
//! fossil's `volume.key`, which the owner of a [`VolumeKeyring`] writes through its
//! [`KeepEpoch`] hook).
//!
//! Holds the device keys, the user root key if this device keeps it, and the
//! per-user X25519 key generations this device can use. The file is sealed with
//! XChaCha20-Poly1305 under a key derived from a passphrase with Argon2id
//! (crypto-design §4.3; RFC 9106 second option t=3, p=4, m=64 MiB by default, the
//! parameters stored in the header so they can be raised later). An explicit
//! unencrypted mode exists for servers and tests; it is recorded in the header, so
//! [`read_protection`] tells `kith status` to flag it.
//!
//! Writes are atomic (temp file, fsync, rename, directory fsync) and the file is
//! created mode 0600. Secrets live in zeroizing types and are wiped on drop.
//!
//! Format (little-endian):
//! ```text
//! header  = "KITHKEY1" ‖ format u8 (=1) ‖ protection u8
//!           protection 0 (unencrypted): nothing more
//!           protection 1 (argon2id + xchacha20poly1305): m_kib u32 ‖ t u32 ‖ p u32 ‖ salt[16] ‖ nonce[24]
//! file    = header ‖ body_len u32 ‖ body
//!           protection 0: body = secrets ‖ BLAKE3(header ‖ secrets)   (detects damage)
//!           protection 1: body = AEAD(key, nonce, aad = header, secrets)
//! secrets = ver u8 (=1) ‖ device_sign_seed[32] ‖ device_kem_secret[32]
//!           ‖ has_root u8 ‖ [root_seed[32]] ‖ n u8 ‖ (generation u32 ‖ user_key_secret[32])*n
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use paxos::{NodeId, VolumeId};

use crate::codec::{Reader, Writer};
use crate::entry::{EntryKey, KeyEpoch, KeyRotation};
use crate::error::{Error, Result};
use crate::identity::{DeviceIdentity, UserRootKey};
use crate::pairing::open_epoch_secret;
use crate::replica::VolumeKeys;

const MAGIC: &[u8; 8] = b"KITHKEY1";
const FORMAT_VERSION: u8 = 1;
const SECRETS_VERSION: u8 = 1;
const PROTECTION_UNENCRYPTED: u8 = 0;
const PROTECTION_ARGON2ID_XCHACHA: u8 = 1;
/// Most per-user key generations kept.
pub const USER_KEYS_MAX: usize = 32;
/// Largest keyring file read.
pub const KEYRING_BYTES_MAX: usize = 64 * 1024;
/// Argon2 memory cost accepted from a file header, at most (1 GiB), so a damaged
/// header cannot make us allocate without bound.
pub const KDF_MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// Argon2 passes and lanes accepted from a file header, at most.
pub const KDF_PASSES_MAX: u32 = 64;
pub const KDF_LANES_MAX: u32 = 64;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106 §4, second recommended option: t=3, p=4, m=64 MiB.
    pub const RECOMMENDED: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 4,
    };

    /// Cheap parameters for tests only: a weak passphrase falls to them quickly.
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };
}

/// How a keyring file is (to be) protected, as its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Secrets stored in the clear: `kith status` should warn.
    Unencrypted,
    /// Sealed under a passphrase.
    Passphrase(KdfParams),
}

/// How to seal a keyring when saving it.
#[derive(Clone, Copy)]
pub enum Lock<'a> {
    Unencrypted,
    Passphrase {
        passphrase: &'a str,
        params: KdfParams,
    },
}

impl fmt::Debug for Lock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lock::Unencrypted => f.write_str("Unencrypted"),
            Lock::Passphrase { params, .. } => f
                .debug_struct("Passphrase")
                .field("params", params)
                .finish_non_exhaustive(),
        }
    }
}

/// One generation of the per-user X25519 key.
pub struct UserKeySecret {
    pub generation: u32,
    pub secret: StaticSecret,
}

impl fmt::Debug for UserKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeySecret")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Everything secret a device holds.
#[derive(Debug)]
pub struct Keyring {
    pub device: DeviceIdentity,
    pub user_root: Option<UserRootKey>,
    pub user_keys: Vec<UserKeySecret>,
}

impl Keyring {
    /// A keyring holding only `device`.
    pub fn new(device: DeviceIdentity) -> Self {
        Self {
            device,
            user_root: None,
            user_keys: Vec::new(),
        }
    }

    /// Writes the keyring to `path` atomically, sealed as `lock` says.
    pub fn save(&self, path: &Path, lock: Lock<'_>) -> Result<()> {
        let secrets = self.encode_secrets()?;
        let mut file = Writer::new();
        file.put(MAGIC).u8(FORMAT_VERSION);
        match lock {
            Lock::Unencrypted => {
                file.u8(PROTECTION_UNENCRYPTED);
                let mut check = blake3::Hasher::new();
                check.update(&file.bytes).update(&secrets);
                let check = check.finalize();
                file.u32((secrets.len() + 32) as u32)
                    .put(&secrets)
                    .put(check.as_bytes());
            }
            Lock::Passphrase { passphrase, params } => {
                check_params(&params, path)?;
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 24];
                rand::rng().fill_bytes(&mut salt);
                rand::rng().fill_bytes(&mut nonce);
                file.u8(PROTECTION_ARGON2ID_XCHACHA)
                    .u32(params.memory_kib)
                    .u32(params.passes)
                    .u32(params.lanes)
                    .put(&salt)
                    .put(&nonce);
                let key = derive_key(passphrase, &salt, &params)?;
                let cipher =
                    XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()));
                let sealed = cipher
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &secrets,
                            aad: &file.bytes,
                        },
                    )
                    .map_err(|_| Error::Kdf {
                        reason: "sealing failed".into(),
                    })?;
                file.u32(sealed.len() as u32).put(&sealed);
            }
        }
        write_atomic(path, &file.into_bytes())
    }

    /// Reads and opens the keyring at `path`. An encrypted keyring needs `passphrase`;
    /// an unencrypted one ignores it.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self> {
        let bytes = read_bounded(path)?;
        let parsed = parse_file(&bytes, path)?;
        match parsed.protection {
            Protection::Unencrypted => {
                let Some((secrets, check)) = parsed
                    .body
                    .len()
                    .checked_sub(32)
                    .map(|at| parsed.body.split_at(at))
                else {
                    return Err(corrupt(path, "body too short"));
                };
                let mut hasher = blake3::Hasher::new();
                hasher.update(parsed.header).update(secrets);
                if hasher.finalize() != blake3::Hash::from_bytes(to_array(check)) {
                    return Err(corrupt(path, "checksum mismatch"));
                }
                Self::decode_secrets(secrets, path)
            }
            Protection::Passphrase(params) => {
                let passphrase = passphrase.ok_or_else(|| Error::PassphraseNeeded {
                    path: path.to_owned(),
                })?;
                let key = derive_key(passphrase, &parsed.salt, &params)?;
                let cipher =
                    XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()));
                let secrets = Zeroizing::new(
                    cipher
                        .decrypt(
                            XNonce::from_slice(&parsed.nonce),
                            Payload {
                                msg: parsed.body,
                                aad: parsed.header,
                            },
                        )
                        .map_err(|_| Error::WrongPassphrase {
                            path: path.to_owned(),
                        })?,
                );
                Self::decode_secrets(&secrets, path)
            }
        }
    }

    fn encode_secrets(&self) -> Result<Zeroizing<Vec<u8>>> {
        if self.user_keys.len() > USER_KEYS_MAX {
            return Err(Error::TooLong {
                what: "keyring user keys",
                len_bytes: self.user_keys.len(),
                max_bytes: USER_KEYS_MAX,
            });
        }
        let mut out = Writer::new();
        out.u8(SECRETS_VERSION)
            .put(self.device.sign_seed().as_ref())
            .put(self.device.kem_secret().as_ref());
        match &self.user_root {
            Some(root) => {
                out.u8(1).put(root.seed().as_ref());
            }
            None => {
                out.u8(0);
            }
        }
        out.u8(self.user_keys.len() as u8);
        for key in &self.user_keys {
            out.u32(key.generation)
                .put(Zeroizing::new(key.secret.to_bytes()).as_ref());
        }
        Ok(Zeroizing::new(out.into_bytes()))
    }

    fn decode_secrets(bytes: &[u8], path: &Path) -> Result<Self> {
        let decode = || -> Result<Self> {
            let mut input = Reader::new(bytes, "keyring secrets");
            let version = input.u8()?;
            if version != SECRETS_VERSION {
                return Err(Error::UnsupportedVersion {
                    what: "keyring secrets",
                    version,
                });
            }
            let sign_seed = Zeroizing::new(input.array::<32>()?);
            let kem_secret = Zeroizing::new(input.array::<32>()?);
            let device = DeviceIdentity::from_secrets(&sign_seed, &kem_secret);
            let user_root = match input.u8()? {
                0 => None,
                1 => Some(UserRootKey::from_seed(&Zeroizing::new(
                    input.array::<32>()?,
                ))),
                _ => return Err(Error::malformed("keyring secrets", "bad root flag")),
            };
            let count = usize::from(input.u8()?);
            if count > USER_KEYS_MAX {
                return Err(Error::malformed("keyring secrets", "too many user keys"));
            }
            let mut user_keys = Vec::with_capacity(count);
            for _ in 0..count {
                let generation = input.u32()?;
                let secret = StaticSecret::from(*Zeroizing::new(input.array::<32>()?));
                user_keys.push(UserKeySecret { generation, secret });
            }
            input.finish()?;
            Ok(Self {
                device,
                user_root,
                user_keys,
            })
        };
        decode().map_err(|error| match error {
            Error::UnsupportedVersion { .. } => error,
            _ => corrupt(path, "secrets malformed"),
        })
    }
}

/// The protection recorded in the header of the keyring at `path` (no passphrase needed).
pub fn read_protection(path: &Path) -> Result<Protection> {
    let bytes = read_bounded(path)?;
    Ok(parse_file(&bytes, path)?.protection)
}

/// Parses keyring file bytes without opening them; exposed for fuzz-style tests.
pub fn parse_protection(bytes: &[u8]) -> Result<Protection> {
    Ok(parse_file(bytes, Path::new("<bytes>"))?.protection)
}

struct ParsedFile<'a> {
    header: &'a [u8],
    protection: Protection,
    salt: [u8; 16],
    nonce: [u8; 24],
    body: &'a [u8],
}

fn parse_file<'a>(bytes: &'a [u8], path: &Path) -> Result<ParsedFile<'a>> {
    let mut input = Reader::new(bytes, "keyring");
    let structural = |_| corrupt(path, "truncated header");
    if input.take(MAGIC.len()).map_err(structural)? != MAGIC {
        return Err(corrupt(path, "not a keyring (bad magic)"));
    }
    let version = input.u8().map_err(structural)?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "keyring",
            version,
        });
    }
    let (protection, salt, nonce) = match input.u8().map_err(structural)? {
        PROTECTION_UNENCRYPTED => (Protection::Unencrypted, [0; 16], [0; 24]),
        PROTECTION_ARGON2ID_XCHACHA => {
            let params = KdfParams {
                memory_kib: input.u32().map_err(structural)?,
                passes: input.u32().map_err(structural)?,
                lanes: input.u32().map_err(structural)?,
            };
            check_params(&params, path)?;
            let salt = input.array().map_err(structural)?;
            let nonce = input.array().map_err(structural)?;
            (Protection::Passphrase(params), salt, nonce)
        }
        _ => return Err(corrupt(path, "unknown protection")),
    };
    let header_len = bytes.len() - input.remaining();
    let header = bytes
        .get(..header_len)
        .ok_or_else(|| corrupt(path, "truncated header"))?;
    let body = input
        .bytes_u32(KEYRING_BYTES_MAX)
        .map_err(|_| corrupt(path, "truncated body"))?;
    input
        .finish()
        .map_err(|_| corrupt(path, "trailing bytes"))?;
    Ok(ParsedFile {
        header,
        protection,
        salt,
        nonce,
        body,
    })
}

fn check_params(params: &KdfParams, path: &Path) -> Result<()> {
    if params.memory_kib > KDF_MEMORY_KIB_MAX
        || params.passes > KDF_PASSES_MAX
        || params.lanes > KDF_LANES_MAX
        || params.passes == 0
        || params.lanes == 0
        || params.memory_kib < 8 * params.lanes
    {
        return Err(corrupt(path, "key derivation parameters out of range"));
    }
    Ok(())
}

fn derive_key(
    passphrase: &str,
    salt: &[u8; 16],
    params: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>> {
    let argon_params =
        argon2::Params::new(params.memory_kib, params.passes, params.lanes, Some(32)).map_err(
            |error| Error::Kdf {
                reason: error.to_string(),
            },
        )?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|error| Error::Kdf {
            reason: error.to_string(),
        })?;
    Ok(key)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let io = |op| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let len = fs::metadata(path).map_err(io("stat keyring"))?.len();
    if len > (KEYRING_BYTES_MAX + 256) as u64 {
        return Err(corrupt(path, "file too large"));
    }
    fs::read(path).map_err(io("read keyring"))
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory:
/// after a crash the file is either the old or the new keyring, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |op, at: &Path| {
        let at = at.to_owned();
        move |source| Error::Io {
            op,
            path: at,
            source,
        }
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::rng().next_u32()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create keyring temp file", &tmp))?;
        file.write_all(bytes).map_err(io("write keyring", &tmp))?;
        file.sync_all().map_err(io("fsync keyring", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename keyring into place", path))?;
        File::open(&dir)
            .and_then(|dir_file| dir_file.sync_all())
            .map_err(io("fsync keyring directory", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn corrupt(path: &Path, reason: &'static str) -> Error {
    Error::KeyringCorrupt {
        path: path.to_owned(),
        reason,
    }
}

fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(src) = bytes.get(..32) {
        out.copy_from_slice(src);
    }
    out
}

/// Makes a newly learned epoch secret durable (the store's `volume.key`: written,
/// synced, renamed) before the replica reads past the rotation that carried it.
pub type KeepEpoch =
    Box<dyn Fn(KeyEpoch, &[u8; 32]) -> std::result::Result<(), String> + Send + Sync>;
/// The verifying key of an entry author (a device that holds or held the node id).
pub type AuthorKeys = Box<dyn Fn(NodeId) -> Option<VerifyingKey> + Send + Sync>;

/// A device's keys for one volume's log: the entry key of every epoch it holds (the
/// newest seals), and what it needs to take its share of a key rotation.
pub struct VolumeKeyring {
    volume: VolumeId,
    node: NodeId,
    device: DeviceIdentity,
    epochs: parking_lot::RwLock<BTreeMap<KeyEpoch, EntryKey>>,
    /// One rotation learned at a time (keep, then insert).
    learning: parking_lot::Mutex<()>,
    keep: KeepEpoch,
    authors: AuthorKeys,
}

impl fmt::Debug for VolumeKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeKeyring")
            .field("volume", &self.volume)
            .field("node", &self.node)
            .field("epochs", &self.epochs.read().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl VolumeKeyring {
    /// The keyring of `device` (node `node` of `volume`) holding `secrets`' epochs.
    pub fn new(
        volume: VolumeId,
        node: NodeId,
        device: &DeviceIdentity,
        secrets: impl IntoIterator<Item = (KeyEpoch, Zeroizing<[u8; 32]>)>,
        keep: KeepEpoch,
        authors: AuthorKeys,
    ) -> VolumeKeyring {
        let epochs = secrets
            .into_iter()
            .map(|(epoch, secret)| (epoch, EntryKey::derive(&secret)))
            .collect();
        VolumeKeyring {
            volume,
            node,
            device: DeviceIdentity::from_secrets(
                &device.signing_key().to_bytes(),
                &device.kem_secret(),
            ),
            epochs: parking_lot::RwLock::new(epochs),
            learning: parking_lot::Mutex::new(()),
            keep,
            authors,
        }
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> Vec<KeyEpoch> {
        self.epochs.read().keys().copied().collect()
    }

    /// The newest epoch held (new entries are sealed under it).
    pub fn newest_epoch(&self) -> Option<KeyEpoch> {
        self.epochs.read().keys().next_back().copied()
    }

    /// Takes this device's share of `rotation`: opens it, keeps the secret durably,
    /// then holds the entry key. `Ok(false)`: the epoch is held already (a rotation
    /// read again after a crash, or a second rotation to an epoch already started:
    /// ignored everywhere alike) or there is no share for this device.
    pub fn learn(&self, rotation: &KeyRotation) -> Result<bool> {
        let _one_at_a_time = self.learning.lock();
        if self.epochs.read().contains_key(&rotation.epoch) {
            return Ok(false);
        }
        let Some(share) = rotation.share_for(self.node) else {
            return Ok(false);
        };
        let secret =
            open_epoch_secret(&self.device, self.volume, self.node, rotation.epoch, share)?;
        (self.keep)(rotation.epoch, &secret).map_err(|reason| Error::EpochNotKept {
            epoch: rotation.epoch.0,
            reason,
        })?;
        self.epochs
            .write()
            .insert(rotation.epoch, EntryKey::derive(&secret));
        Ok(true)
    }
}

impl VolumeKeys for VolumeKeyring {
    fn sealing_key(&self) -> Option<(KeyEpoch, EntryKey)> {
        self.epochs
            .read()
            .last_key_value()
            .map(|(epoch, key)| (*epoch, key.clone()))
    }

    fn entry_key(&self, epoch: KeyEpoch) -> Option<EntryKey> {
        self.epochs.read().get(&epoch).cloned()
    }

    fn verifying_key(&self, author: NodeId) -> Option<VerifyingKey> {
        (self.authors)(author)
    }

    fn learn_rotation(&self, slot: paxos::Slot, rotation: &KeyRotation) -> Result<bool> {
        let _ = slot;
        self.learn(rotation)
    }
}
