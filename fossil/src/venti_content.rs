//! [`VentiContent`]: file content as sealed venti hash trees.
//!
//! New content streams through a [`venti::tree::TreeWriter`] running on a thread of its
//! own (the writer borrows the store, the volume's buffers outlive any borrow), fed by
//! a bounded channel: the FUSE thread hands over a buffer and goes back to the kernel
//! while chunking and sealing proceed. Reads open only the blocks covering the range.
//! Checkpoint images are trees with `Kind::Meta` leaves.
//!
//! # Key epochs
//!
//! A volume directory's own store lives in `blocks/` and its epoch secrets in
//! `volume.key` ([`EpochSecrets`], the one reader and writer of that file). New content
//! is sealed with the newest epoch this device holds; any content is opened with the
//! keys of the epoch its root [`BlockRef`] names. Every tree is sealed under one epoch
//! (venti checks that every child carries its parent's epoch): an edit of a tree of an
//! older epoch is not spliced (venti's `TreeEditor` answers `OtherEpoch`) but rewritten
//! whole under the newest, so no tree ever mixes epochs; content left alone keeps its
//! old-epoch tree and stays readable. A running volume learns a new epoch through
//! [`VentiContent::add_epoch`] (clones share the key set).
//!
//! # Holes
//!
//! `seek` finds all-zero leaves from pointer blocks alone (venti's
//! [`venti::tree::Holes`]: a zero leaf's key is known per epoch and length). One
//! `Holes` per epoch is kept, with the pointer blocks recent seeks decoded, so the two
//! seeks per extent of a sparse copy cost no store reads. `data_bytes` (a file's
//! `st_blocks`) counts the bytes outside those holes once per root, for trees of more
//! than one leaf, within a bound on the pointer blocks it opens.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use venti::chunk::CHUNK_BYTES_MIN;
use venti::keys::{EPOCH_SECRET_LEN, EpochKeys, VOLUME_ID_LEN};
use venti::seal::Sealer;
use venti::tree::{Holes, TreeReader, TreeWriter};
use venti::{BlockRef, BlockStore, Class, Kind, Store, StoreOptions};
use zeroize::Zeroizing;

use crate::content::{Collected, ContentStore, ContentWriter};
use crate::{Error, Result, SeekTo};

/// `write_all` of less than this seals on the calling thread.
const SEAL_INLINE_BYTES_MAX: usize = 512 << 10;
/// A periodic GC round rewrites only the arenas at least this dead: copying live
/// records costs disk bandwidth, so mostly live arenas wait for a fuller harvest.
const COMPACT_DEAD_FRACTION_MIN: f64 = 0.5;
/// Buffers queued to one writer thread before `write` waits.
const WRITER_QUEUE_BUFFERS: usize = 16;

/// Roots whose `data_bytes` answer is remembered; the map starts over when full.
const DATA_BYTES_ROOTS_MAX: usize = 16_384;

/// Sealers kept for reuse by `write_all` of single-chunk content (one per thread that
/// writes at the same time; more are dropped).
const SEALERS_KEPT_MAX: usize = 4;

/// The volume key file in a volume directory.
pub const VOLUME_KEY_FILE: &str = "volume.key";
/// Most epochs one `volume.key` holds (a new one per device removal).
pub const EPOCHS_MAX: usize = 4096;
const KEY_FILE_MAGIC: &[u8; 8] = b"KITHVKEY";
const KEY_FILE_VERSION: u8 = 2;
const KEY_FILE_CHECK_CONTEXT: &str = "kith 2026-01-01 volume key file v2";
/// The file before epochs: `secret[32] ‖ volume id[16]`, read as epoch 0.
const KEY_FILE_V1_BYTES: usize = EPOCH_SECRET_LEN + VOLUME_ID_LEN;
const KEY_FILE_HEADER_BYTES: usize = KEY_FILE_MAGIC.len() + 1 + VOLUME_ID_LEN + 4;
const KEY_FILE_RECORD_BYTES: usize = 4 + EPOCH_SECRET_LEN;
const KEY_FILE_CHECK_BYTES: usize = 32;
const KEY_FILE_BYTES_MAX: usize =
    KEY_FILE_HEADER_BYTES + EPOCHS_MAX * KEY_FILE_RECORD_BYTES + KEY_FILE_CHECK_BYTES;

/// Every epoch secret of one volume this device was given: the contents of
/// `volume.key`. Secrets are zeroed on drop and never printed.
///
/// ```text
/// volume.key = "KITHVKEY" ‖ ver u8 (=2) ‖ volume id[16] ‖ n u32 ‖ (epoch u32 ‖ secret[32])*n
///              ‖ check[32]
/// check      = BLAKE3-derive_key("kith 2026-01-01 volume key file v2", everything before)
/// ```
///
/// `1 ≤ n ≤ EPOCHS_MAX`, epochs strictly increasing. A 48-byte file
/// (`secret[32] ‖ volume id[16]`, before epochs) reads as epoch 0 and is rewritten in
/// this form the first time an epoch is added.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochSecrets {
    volume_id: [u8; VOLUME_ID_LEN],
    secrets: BTreeMap<u32, Zeroizing<[u8; EPOCH_SECRET_LEN]>>,
}

impl std::fmt::Debug for EpochSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochSecrets")
            .field("epochs", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EpochSecrets {
    /// A volume's first epoch.
    pub fn new(
        volume_id: [u8; VOLUME_ID_LEN],
        epoch: u32,
        secret: &[u8; EPOCH_SECRET_LEN],
    ) -> EpochSecrets {
        EpochSecrets {
            volume_id,
            secrets: [(epoch, Zeroizing::new(*secret))].into(),
        }
    }

    /// A new volume: a random id and a random secret for epoch 0.
    pub fn generate() -> Result<EpochSecrets> {
        let mut fresh = Zeroizing::new([0u8; KEY_FILE_V1_BYTES]);
        std::fs::File::open("/dev/urandom")?.read_exact(fresh.as_mut())?;
        decode_v1(fresh.as_ref())
    }

    pub fn volume_id(&self) -> [u8; VOLUME_ID_LEN] {
        self.volume_id
    }

    /// The newest epoch and its secret (new content is sealed with it).
    pub fn newest(&self) -> (u32, &[u8; EPOCH_SECRET_LEN]) {
        // `secrets` is never empty: every constructor and decoder puts one in.
        match self.secrets.last_key_value() {
            Some((epoch, secret)) => (*epoch, secret),
            None => (0, &ZERO_SECRET),
        }
    }

    pub fn get(&self, epoch: u32) -> Option<&[u8; EPOCH_SECRET_LEN]> {
        self.secrets.get(&epoch).map(|secret| &**secret)
    }

    /// Every epoch held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8; EPOCH_SECRET_LEN])> {
        self.secrets
            .iter()
            .map(|(epoch, secret)| (*epoch, &**secret))
    }

    /// Adds `epoch`; `false` if it was held already with this very secret. Another
    /// secret for an epoch held is refused (two rotations to one epoch cannot both be
    /// right), and so is an epoch past `EPOCHS_MAX`.
    pub fn insert(&mut self, epoch: u32, secret: &[u8; EPOCH_SECRET_LEN]) -> Result<bool> {
        match self.secrets.get(&epoch) {
            Some(held) if **held == *secret => Ok(false),
            Some(_) => Err(Error::Corrupt {
                what: "epoch secret",
                detail: format!("epoch {epoch} is held with another secret"),
            }),
            None if self.secrets.len() >= EPOCHS_MAX => Err(Error::Invalid(
                "a volume key file holds at most EPOCHS_MAX epochs",
            )),
            None => {
                self.secrets.insert(epoch, Zeroizing::new(*secret));
                Ok(true)
            }
        }
    }

    /// venti's keys of `epoch`, if held.
    pub fn epoch_keys(&self, epoch: u32) -> Option<EpochKeys> {
        self.get(epoch)
            .map(|secret| EpochKeys::derive(secret, &self.volume_id, epoch))
    }

    /// The file's bytes (always the current version).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            KEY_FILE_HEADER_BYTES
                + self.secrets.len() * KEY_FILE_RECORD_BYTES
                + KEY_FILE_CHECK_BYTES,
        ));
        out.extend_from_slice(KEY_FILE_MAGIC);
        out.push(KEY_FILE_VERSION);
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(&(self.secrets.len() as u32).to_le_bytes());
        for (epoch, secret) in &self.secrets {
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(secret.as_ref());
        }
        let check = blake3::derive_key(KEY_FILE_CHECK_CONTEXT, &out);
        out.extend_from_slice(&check);
        out
    }

    /// Parses a key file of either version; anything else is `Corrupt` with the reason.
    pub fn decode(bytes: &[u8]) -> Result<EpochSecrets> {
        if bytes.len() == KEY_FILE_V1_BYTES && !bytes.starts_with(KEY_FILE_MAGIC) {
            return decode_v1(bytes);
        }
        let corrupt = |detail: String| Error::Corrupt {
            what: "volume key file",
            detail,
        };
        if !bytes.starts_with(KEY_FILE_MAGIC) {
            return Err(corrupt(format!(
                "{} bytes, neither the 48-byte form nor KITHVKEY",
                bytes.len()
            )));
        }
        if bytes.len() < KEY_FILE_HEADER_BYTES + KEY_FILE_CHECK_BYTES
            || bytes.len() > KEY_FILE_BYTES_MAX
        {
            return Err(corrupt(format!("{} bytes", bytes.len())));
        }
        let (body, check) = bytes.split_at(bytes.len() - KEY_FILE_CHECK_BYTES);
        if blake3::derive_key(KEY_FILE_CHECK_CONTEXT, body).as_slice() != check {
            return Err(corrupt("checksum mismatch (damaged)".into()));
        }
        let version = body.get(KEY_FILE_MAGIC.len()).copied().unwrap_or(0);
        if version != KEY_FILE_VERSION {
            return Err(corrupt(format!("unknown version {version}")));
        }
        let mut at = KEY_FILE_MAGIC.len() + 1;
        let volume_id: [u8; VOLUME_ID_LEN] =
            take_array(body, &mut at).ok_or_else(|| corrupt("truncated volume id".into()))?;
        let count = u32::from_le_bytes(
            take_array(body, &mut at).ok_or_else(|| corrupt("truncated count".into()))?,
        ) as usize;
        if count == 0 || count > EPOCHS_MAX {
            return Err(corrupt(format!("{count} epochs")));
        }
        if body.len() != KEY_FILE_HEADER_BYTES + count * KEY_FILE_RECORD_BYTES {
            return Err(corrupt(format!("{} bytes for {count} epochs", bytes.len())));
        }
        let mut secrets = BTreeMap::new();
        let mut previous: Option<u32> = None;
        for _ in 0..count {
            let epoch = u32::from_le_bytes(
                take_array(body, &mut at).ok_or_else(|| corrupt("truncated epoch".into()))?,
            );
            let secret = Zeroizing::new(
                take_array::<EPOCH_SECRET_LEN>(body, &mut at)
                    .ok_or_else(|| corrupt("truncated secret".into()))?,
            );
            if previous.is_some_and(|previous| previous >= epoch) {
                return Err(corrupt("epochs out of order".into()));
            }
            previous = Some(epoch);
            secrets.insert(epoch, secret);
        }
        Ok(EpochSecrets { volume_id, secrets })
    }

    /// Reads `path`; `None` if there is no such file.
    pub fn read(path: &Path) -> Result<Option<EpochSecrets>> {
        let mut bytes = Zeroizing::new(Vec::new());
        match std::fs::File::open(path) {
            Ok(file) => {
                file.take(KEY_FILE_BYTES_MAX as u64 + 1)
                    .read_to_end(&mut bytes)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        EpochSecrets::decode(&bytes).map(Some)
    }

    /// Reads `path`, or creates it with a new volume ([`EpochSecrets::generate`]).
    pub fn read_or_create(path: &Path) -> Result<EpochSecrets> {
        if let Some(secrets) = EpochSecrets::read(path)? {
            return Ok(secrets);
        }
        let fresh = EpochSecrets::generate()?;
        fresh.write(path)?;
        Ok(fresh)
    }

    /// Writes `path` atomically: a temporary sibling (mode 0600), fsync, rename, fsync of
    /// the directory. A crash leaves either the old file or the new one.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&self.encode())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

const ZERO_SECRET: [u8; EPOCH_SECRET_LEN] = [0; EPOCH_SECRET_LEN];

fn decode_v1(bytes: &[u8]) -> Result<EpochSecrets> {
    let mut at = 0;
    let (Some(secret), Some(volume_id)) = (
        take_array::<EPOCH_SECRET_LEN>(bytes, &mut at).map(Zeroizing::new),
        take_array::<VOLUME_ID_LEN>(bytes, &mut at),
    ) else {
        return Err(Error::Corrupt {
            what: "volume key file",
            detail: format!("{} bytes", bytes.len()),
        });
    };
    Ok(EpochSecrets::new(volume_id, 0, &secret))
}

fn take_array<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let array = <[u8; N]>::try_from(bytes.get(*at..at.checked_add(N)?)?).ok()?;
    *at += N;
    Some(array)
}

/// The epochs' venti keys a volume holds; the newest seals.
#[derive(Debug)]
struct KeySet {
    by_epoch: BTreeMap<u32, Arc<EpochKeys>>,
}

impl KeySet {
    fn newest(&self) -> Result<Arc<EpochKeys>> {
        self.by_epoch
            .last_key_value()
            .map(|(_, keys)| Arc::clone(keys))
            .ok_or(Error::Invalid("no key epoch held"))
    }

    fn of(&self, epoch: u32) -> Result<Arc<EpochKeys>> {
        self.by_epoch
            .get(&epoch)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                what: "content reference",
                detail: format!("key epoch {epoch} is not held by this device"),
            })
    }
}

/// Content in a venti [`Store`], sealed with the newest epoch's keys and opened with
/// the keys of each root's epoch.
#[derive(Debug, Clone)]
pub struct VentiContent {
    store: Arc<Store>,
    keys: Arc<RwLock<KeySet>>,
    /// Sealers (each holds a zstd context) for content of one chunk: a small file's
    /// write should not pay for setting up a tree writer.
    sealers: Arc<Mutex<Vec<Sealer>>>,
    /// What a hole looks like in each epoch's trees, made on the first seek in one.
    holes: Arc<Mutex<BTreeMap<u32, Arc<Holes>>>>,
    /// `data_bytes` answers by root address (content under a root never changes).
    data_bytes: Arc<Mutex<HashMap<venti::Address, Option<u64>>>>,
}

impl VentiContent {
    /// Content sealed with `keys` (one epoch; more with [`VentiContent::add_epoch`]).
    pub fn new(store: Arc<Store>, keys: EpochKeys) -> VentiContent {
        VentiContent {
            store,
            keys: Arc::new(RwLock::new(KeySet {
                by_epoch: [(keys.epoch(), Arc::new(keys))].into(),
            })),
            sealers: Arc::new(Mutex::new(Vec::new())),
            holes: Arc::default(),
            data_bytes: Arc::default(),
        }
    }

    /// Content with every epoch of `secrets`.
    pub fn with_secrets(store: Arc<Store>, secrets: &EpochSecrets) -> VentiContent {
        let (newest, _) = secrets.newest();
        let mut by_epoch = BTreeMap::new();
        for (epoch, secret) in secrets.iter() {
            by_epoch.insert(
                epoch,
                Arc::new(EpochKeys::derive(secret, &secrets.volume_id(), epoch)),
            );
        }
        debug_assert!(by_epoch.contains_key(&newest));
        VentiContent {
            store,
            keys: Arc::new(RwLock::new(KeySet { by_epoch })),
            sealers: Arc::new(Mutex::new(Vec::new())),
            holes: Arc::default(),
            data_bytes: Arc::default(),
        }
    }

    /// Holds one more epoch (every clone sees it): if it is the newest, new content is
    /// sealed with it from now on. The caller has made it durable first.
    pub fn add_epoch(&self, keys: EpochKeys) {
        self.keys
            .write()
            .by_epoch
            .entry(keys.epoch())
            .or_insert_with(|| Arc::new(keys));
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.keys.read().by_epoch.keys().copied().collect()
    }

    /// The keys new content is sealed with.
    pub fn sealing_keys(&self) -> Result<Arc<EpochKeys>> {
        self.keys.read().newest()
    }

    /// The keys of `epoch`, if held.
    pub fn epoch_keys(&self, epoch: u32) -> Result<Arc<EpochKeys>> {
        self.keys.read().of(epoch)
    }

    /// The holes of `keys`' epoch (made once per epoch: it chunks and hashes a zero
    /// leaf).
    fn holes(&self, keys: &EpochKeys) -> Arc<Holes> {
        Arc::clone(
            self.holes
                .lock()
                .entry(keys.epoch())
                .or_insert_with(|| Arc::new(Holes::new(keys, Kind::Data))),
        )
    }

    /// Content that the chunker leaves in one piece is a tree of one leaf: seal and put
    /// that leaf directly. Same root as a [`TreeWriter`] would give.
    fn write_one_chunk(&self, bytes: &[u8]) -> Result<BlockRef> {
        let keys = self.sealing_keys()?;
        let mut sealer = self.sealers.lock().pop().unwrap_or_default();
        let mut sealed = Vec::new();
        let sealing = sealer.seal_into(&keys, Kind::Data, bytes, &mut sealed);
        {
            let mut sealers = self.sealers.lock();
            if sealers.len() < SEALERS_KEPT_MAX {
                sealers.push(sealer);
            }
        }
        let leaf = sealing?;
        self.store
            .put_sealed_here(&leaf.address, &sealed, Class::Pinned)?;
        Ok(leaf)
    }

    /// The store and keys of a volume directory (`blocks/`, `volume.key`), created on
    /// first use.
    pub fn open_dir(dir: &Path) -> Result<VentiContent> {
        let secrets = EpochSecrets::read_or_create(&dir.join(VOLUME_KEY_FILE))?;
        let backend = venti::backend::FileBackend::new(dir.join("blocks"))?;
        let store = Store::open(Arc::new(backend), StoreOptions::default())?;
        for problem in store.open_report() {
            tracing::warn!(%problem, "block store: repaired on open");
        }
        Ok(VentiContent::with_secrets(Arc::new(store), &secrets))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl ContentStore for VentiContent {
    fn gc_fence(&self) -> Result<u64> {
        Ok(venti::gc::fence(&self.store)?)
    }

    fn collect_garbage(
        &self,
        fence: u64,
        roots: &[BlockRef],
        compact_all: bool,
    ) -> Result<Collected> {
        // Walking a tree opens only pointer blocks; one missing here (and on every
        // other device) fails the round before anything is swept.
        let mut live = HashSet::new();
        for root in roots {
            let keys = self.epoch_keys(root.epoch)?;
            let reader = TreeReader::new(self.store.as_ref(), &keys);
            venti::gc::mark_tree(&reader, root, &mut live)?;
        }
        let round = venti::gc::Gc::from_fence(&self.store, fence);
        let swept = round.sweep(&|address| live.contains(address))?;
        let compaction = self.store.compact(if compact_all {
            0.0
        } else {
            COMPACT_DEAD_FRACTION_MIN
        })?;
        for problem in &compaction.damaged {
            tracing::error!(%problem, "garbage collection: a damaged record was dropped");
        }
        Ok(Collected {
            live_blocks: live.len() as u64,
            swept_blocks: swept.len() as u64,
            freed_bytes: compaction.bytes_freed,
            damaged_records: compaction.damaged.len() as u64,
        })
    }

    fn writer(&self) -> Result<Box<dyn ContentWriter>> {
        let (sender, receiver) = sync_channel::<Vec<u8>>(WRITER_QUEUE_BUFFERS);
        let store = Arc::clone(&self.store);
        let keys = self.sealing_keys()?;
        let thread = std::thread::Builder::new()
            .name("fossil-ingest".into())
            .spawn(move || ingest(&store, &keys, &receiver))?;
        Ok(Box::new(VentiWriter {
            sender: Some(sender),
            thread: Some(thread),
            len: 0,
        }))
    }

    fn write_all(&self, bytes: &[u8]) -> Result<BlockRef> {
        if bytes.len() <= CHUNK_BYTES_MIN {
            return self.write_one_chunk(bytes);
        }
        let keys = self.sealing_keys()?;
        let mut writer = TreeWriter::new(self.store.as_ref(), &keys, Class::Pinned);
        if bytes.len() < SEAL_INLINE_BYTES_MAX {
            // A thread pool costs more than sealing a few chunks here.
            writer = writer.with_threads(0);
        }
        writer.write(bytes)?;
        Ok(writer.finish()?)
    }

    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        let keys = self.epoch_keys(root.epoch)?;
        Ok(TreeReader::new(self.store.as_ref(), &keys).read_range(root, offset, len as u64)?)
    }

    fn seek(&self, root: &BlockRef, offset: u64, to: SeekTo) -> Result<Option<u64>> {
        let keys = self.epoch_keys(root.epoch)?;
        let holes = self.holes(&keys);
        let reader = TreeReader::new(self.store.as_ref(), &keys);
        Ok(match to {
            SeekTo::Data => reader.next_data(root, offset, &holes)?,
            SeekTo::Hole => reader.next_hole(root, offset, &holes)?,
        })
    }

    fn data_bytes(&self, root: &BlockRef) -> Result<Option<u64>> {
        // A root of one leaf is all data or all zeros; telling which would hash a
        // zero leaf of its length on every stat of a new small file: call it data.
        if root.length <= venti::seal::CONTENT_BYTES_MAX as u64 {
            return Ok(None);
        }
        if let Some(known) = self.data_bytes.lock().get(&root.address) {
            return Ok(*known);
        }
        let keys = self.epoch_keys(root.epoch)?;
        let holes = self.holes(&keys);
        let held = HeldHere(&self.store);
        let reader = TreeReader::new(&held, &keys);
        let data_bytes = match reader.zero_bytes(root, &holes) {
            Ok(zero_bytes) => zero_bytes.map(|zero_bytes| root.length.saturating_sub(zero_bytes)),
            // A pointer block not held here (on-demand device): unknown for now, and
            // not remembered, so it is counted once the file's blocks are here.
            Err(venti::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let mut known = self.data_bytes.lock();
        if known.len() >= DATA_BYTES_ROOTS_MAX {
            known.clear();
        }
        known.insert(root.address, data_bytes);
        Ok(data_bytes)
    }

    fn edit(
        &self,
        base: &BlockRef,
        new_len: u64,
        changed: &[(u64, u64)],
        read_new: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>,
    ) -> Result<Option<BlockRef>> {
        // A tree of an older epoch answers OtherEpoch: rewritten under the newest.
        let keys = self.sealing_keys()?;
        let editor = venti::tree::TreeEditor::new(self.store.as_ref(), &keys, Class::Pinned);
        Ok(match editor.edit(base, new_len, changed, read_new)? {
            venti::tree::EditOutcome::Edited { root, .. } => Some(root),
            venti::tree::EditOutcome::OtherEpoch { .. } => None,
        })
    }

    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        let keys = self.sealing_keys()?;
        let mut writer =
            TreeWriter::new(self.store.as_ref(), &keys, Class::Pinned).with_leaf_kind(Kind::Meta);
        writer.write(bytes)?;
        Ok(writer.finish()?)
    }

    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        let keys = self.epoch_keys(root.epoch)?;
        Ok(TreeReader::new(self.store.as_ref(), &keys)
            .with_leaf_kind(Kind::Meta)
            .read_all(root)?)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }
}

/// The store as `stat` sees it: blocks held here only. Counting a file's zero leaves
/// for `st_blocks` runs under the volume lock, so it must never wait on the network.
struct HeldHere<'s>(&'s Store);

impl BlockStore for HeldHere<'_> {
    fn put(&self, address: &venti::Address, sealed: &[u8], class: Class) -> venti::Result<()> {
        self.0.put(address, sealed, class)
    }

    fn get(&self, address: &venti::Address) -> venti::Result<Vec<u8>> {
        self.0.get_local(address)
    }

    fn contains(&self, address: &venti::Address) -> venti::Result<bool> {
        self.0.contains(address)
    }
}

fn ingest(store: &Store, keys: &EpochKeys, receiver: &Receiver<Vec<u8>>) -> Result<BlockRef> {
    let store: &dyn BlockStore = store;
    let mut writer = TreeWriter::new(store, keys, Class::Pinned);
    for buffer in receiver {
        writer.write(&buffer)?;
    }
    Ok(writer.finish()?)
}

struct VentiWriter {
    sender: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<Result<BlockRef>>>,
    len: u64,
}

impl VentiWriter {
    fn join(&mut self) -> Result<BlockRef> {
        self.sender = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Io(std::io::Error::other(
                "content writer thread panicked",
            ))),
            None => Err(Error::Invalid("content writer already finished")),
        }
    }
}

impl ContentWriter for VentiWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(sender) = &self.sender else {
            return Err(Error::Invalid("content writer already finished"));
        };
        if sender.send(bytes.to_vec()).is_err() {
            // The thread stopped early: it failed, and says why.
            return self.join().map(|_| ());
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(mut self: Box<Self>) -> Result<BlockRef> {
        self.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use venti::chunk::CHUNK_BYTES_MAX;

    fn content(dir: &Path) -> VentiContent {
        VentiContent::open_dir(dir).unwrap()
    }

    #[test]
    fn streamed_content_reads_back_in_ranges_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32)
            .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let root = {
            let store = content(dir.path());
            let mut writer = store.writer().unwrap();
            for piece in bytes.chunks(100_000) {
                writer.write(piece).unwrap();
            }
            assert_eq!(writer.len(), bytes.len() as u64);
            let root = writer.finish().unwrap();
            assert_eq!(root.length, bytes.len() as u64);
            store.sync().unwrap();
            root
        };
        let store = content(dir.path());
        assert_eq!(
            store.read(&root, 1_234_567, 100_000).unwrap(),
            &bytes[1_234_567..1_334_567]
        );
        assert_eq!(
            store.read(&root, 2_999_990, 100).unwrap(),
            &bytes[2_999_990..]
        );
        let meta = store.write_meta(b"checkpoint image").unwrap();
        assert_eq!(store.read_meta(&meta).unwrap(), b"checkpoint image");
        assert!(
            store.read(&meta, 0, 5).is_err(),
            "a meta tree is not file content"
        );
    }

    #[test]
    fn seek_finds_zero_leaves_in_every_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = content(dir.path());
        let mib = 1u64 << 20;
        let mut bytes: Vec<u8> = (0..mib as u32)
            .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
            .collect();
        bytes.resize(4 << 20, 0);
        bytes.extend_from_slice(&[7u8; 100_000]);
        let leaf = CHUNK_BYTES_MAX as u64;
        let check = |root: &BlockRef| {
            let hole = store.seek(root, 0, SeekTo::Hole).unwrap().unwrap();
            assert!(hole >= mib && hole <= mib + leaf, "hole at {hole}");
            let data = store.seek(root, hole, SeekTo::Data).unwrap().unwrap();
            assert!(data <= 4 * mib && data + leaf > 4 * mib, "data at {data}");
            assert_eq!(store.seek(root, data, SeekTo::Hole).unwrap(), None);
            assert_eq!(store.seek(root, 10, SeekTo::Data).unwrap(), Some(10));
            // The zero leaves between the first hole and the data are not counted.
            let data_bytes = store.data_bytes(root).unwrap().unwrap();
            assert_eq!(data_bytes, root.length - (data - hole));
        };
        let old = store.write_all(&bytes).unwrap();
        check(&old);
        let secrets = EpochSecrets::read(&dir.path().join(VOLUME_KEY_FILE))
            .unwrap()
            .unwrap();
        store.add_epoch(EpochKeys::derive(&[4; 32], &secrets.volume_id(), 1));
        let new = store.write_all(&bytes).unwrap();
        assert_eq!((old.epoch, new.epoch), (0, 1));
        check(&new);
        check(&old);
    }

    /// Another device's store, counting what is fetched from it.
    struct Peer {
        store: Arc<Store>,
        fetches: std::sync::atomic::AtomicUsize,
    }

    impl venti::RemoteBlocks for Peer {
        fn fetch(&self, address: &venti::Address) -> venti::Result<Option<Vec<u8>>> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.store.get_local(address).ok())
        }
    }

    #[test]
    fn counting_data_bytes_never_fetches_and_counts_once_the_blocks_are_here() {
        let writer_dir = tempfile::tempdir().unwrap();
        let writer = content(writer_dir.path());
        let mut bytes: Vec<u8> = (0..1u32 << 20)
            .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
            .collect();
        bytes.resize(4 << 20, 0);
        let root = writer.write_all(&bytes).unwrap();
        let expected = writer.data_bytes(&root).unwrap();
        assert!(expected.is_some_and(|data| data < root.length));

        // An on-demand device with the same volume key and none of the blocks.
        let reader_dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            writer_dir.path().join(VOLUME_KEY_FILE),
            reader_dir.path().join(VOLUME_KEY_FILE),
        )
        .unwrap();
        let reader = content(reader_dir.path());
        let peer = Arc::new(Peer {
            store: Arc::clone(writer.store()),
            fetches: Default::default(),
        });
        reader
            .store()
            .set_remote(Some(Arc::clone(&peer) as _), Class::Cached);
        // stat runs this under the volume lock: unknown, and nothing fetched.
        assert_eq!(reader.data_bytes(&root).unwrap(), None);
        assert_eq!(peer.fetches.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Once the file has been read here, the count is the writer's.
        assert_eq!(reader.read(&root, 0, bytes.len()).unwrap(), bytes);
        assert!(peer.fetches.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_eq!(reader.data_bytes(&root).unwrap(), expected);
    }

    #[test]
    fn single_chunk_content_gets_the_tree_writers_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = content(dir.path());
        for len in [0, 1, 4097, CHUNK_BYTES_MIN - 1, CHUNK_BYTES_MIN] {
            let bytes: Vec<u8> = (0..len).map(|index| (index * 7 + len) as u8).collect();
            let fast = store.write_all(&bytes).unwrap();
            let keys = store.sealing_keys().unwrap();
            let mut writer = TreeWriter::new(store.store().as_ref(), &keys, Class::Pinned);
            writer.write(&bytes).unwrap();
            assert_eq!(fast, writer.finish().unwrap(), "{len} bytes");
            assert_eq!(store.read(&fast, 0, len).unwrap(), bytes, "{len} bytes");
        }
    }

    #[test]
    fn key_file_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VOLUME_KEY_FILE);
        let first = EpochSecrets::read_or_create(&path).unwrap();
        let second = EpochSecrets::read_or_create(&path).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.newest().0, 0);
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            EpochSecrets::read(&path),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn key_file_round_trips_every_epoch_and_reads_the_48_byte_form_as_epoch_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VOLUME_KEY_FILE);
        let mut old = [7u8; KEY_FILE_V1_BYTES];
        old[EPOCH_SECRET_LEN..].copy_from_slice(&[9u8; VOLUME_ID_LEN]);
        std::fs::write(&path, old).unwrap();
        let mut secrets = EpochSecrets::read(&path).unwrap().unwrap();
        assert_eq!(secrets.volume_id(), [9u8; VOLUME_ID_LEN]);
        assert_eq!(secrets.iter().count(), 1);
        assert_eq!(secrets.get(0), Some(&[7u8; 32]));
        assert!(secrets.insert(1, &[8u8; 32]).unwrap());
        assert!(
            !secrets.insert(1, &[8u8; 32]).unwrap(),
            "the same share twice"
        );
        assert!(
            matches!(secrets.insert(1, &[5u8; 32]), Err(Error::Corrupt { .. })),
            "another secret for a held epoch"
        );
        assert!(secrets.insert(3, &[6u8; 32]).unwrap());
        secrets.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let back = EpochSecrets::read(&path).unwrap().unwrap();
        assert_eq!(back, secrets);
        assert_eq!(back.newest(), (3, &[6u8; 32]));
        assert_eq!(
            back.iter().map(|(epoch, _)| epoch).collect::<Vec<_>>(),
            [0, 1, 3]
        );
        assert!(
            !format!("{back:?}").contains("6, 6"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn a_damaged_key_file_is_refused_with_the_reason() {
        let mut secrets = EpochSecrets::new([1; VOLUME_ID_LEN], 0, &[2; 32]);
        secrets.insert(1, &[3; 32]).unwrap();
        let good = secrets.encode();
        assert_eq!(EpochSecrets::decode(&good).unwrap(), secrets);
        for at in 0..good.len() {
            let mut bad = good.to_vec();
            bad[at] ^= 0x10;
            let error = EpochSecrets::decode(&bad).unwrap_err();
            assert!(
                matches!(error, Error::Corrupt { .. }),
                "flip at {at}: {error}"
            );
        }
        for len in 0..good.len() {
            assert!(EpochSecrets::decode(&good[..len]).is_err(), "{len} bytes");
        }
        let error = EpochSecrets::decode(&good[..good.len() - 1]).unwrap_err();
        assert!(error.to_string().contains("volume key file"), "{error}");
    }

    #[test]
    fn new_content_seals_with_the_newest_epoch_and_older_content_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = content(dir.path());
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(31) >> 3) as u8)
            .collect();
        let old_small = store.write_all(b"epoch zero").unwrap();
        let old_big = store.write_all(&big).unwrap();
        assert_eq!((old_small.epoch, old_big.epoch), (0, 0));
        let secrets = EpochSecrets::read(&dir.path().join(VOLUME_KEY_FILE))
            .unwrap()
            .unwrap();
        let clone = store.clone();
        clone.add_epoch(EpochKeys::derive(&[4; 32], &secrets.volume_id(), 1));
        assert_eq!(store.epochs(), [0, 1], "clones share the key set");
        let new_small = store.write_all(b"epoch one").unwrap();
        let mut writer = store.writer().unwrap();
        writer.write(&big).unwrap();
        let new_big = writer.finish().unwrap();
        let meta = store.write_meta(b"image").unwrap();
        assert_eq!((new_small.epoch, new_big.epoch, meta.epoch), (1, 1, 1));
        assert_ne!(new_big.address, old_big.address, "no dedup across epochs");
        assert_eq!(store.read(&old_small, 0, 100).unwrap(), b"epoch zero");
        assert_eq!(store.read(&old_big, 0, big.len()).unwrap(), big);
        assert_eq!(store.read(&new_small, 0, 100).unwrap(), b"epoch one");
        assert_eq!(store.read(&new_big, 1000, 10).unwrap(), &big[1000..1010]);
        assert_eq!(store.read_meta(&meta).unwrap(), b"image");
        // A device without epoch 1 cannot open it.
        let without = VentiContent::with_secrets(store.store().clone(), &secrets);
        assert!(without.read(&new_small, 0, 100).is_err());
    }
}
