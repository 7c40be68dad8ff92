//! [`VentiContent`]: file content as sealed venti hash trees.
//!
//! New content streams through a [`venti::tree::TreeWriter`] running on a thread of its
//! own (the writer borrows the store, the volume's buffers outlive any borrow), fed by
//! a bounded channel: the FUSE thread hands over a buffer and goes back to the kernel
//! while chunking and sealing proceed. Reads open only the blocks covering the range.
//! Checkpoint images are trees with `Kind::Meta` leaves.
//!
//! A volume directory's own store lives in `blocks/` and its epoch secret and volume
//! id in `volume.key` (48 bytes, mode 0600) until `net` distributes epoch secrets.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use venti::chunk::CHUNK_BYTES_MIN;
use venti::keys::{EPOCH_SECRET_LEN, EpochKeys, VOLUME_ID_LEN};
use venti::seal::Sealer;
use venti::tree::{TreeReader, TreeWriter};
use venti::{BlockRef, BlockStore, Class, Kind, Store, StoreOptions};

use crate::content::{Collected, ContentStore, ContentWriter};
use crate::{Error, Result};

/// `write_all` of less than this seals on the calling thread.
const SEAL_INLINE_BYTES_MAX: usize = 512 << 10;
/// A periodic GC round rewrites only the arenas at least this dead: copying live
/// records costs disk bandwidth, so mostly live arenas wait for a fuller harvest.
const COMPACT_DEAD_FRACTION_MIN: f64 = 0.5;
/// Buffers queued to one writer thread before `write` waits.
const WRITER_QUEUE_BUFFERS: usize = 16;

/// Sealers kept for reuse by `write_all` of single-chunk content (one per thread that
/// writes at the same time; more are dropped).
const SEALERS_KEPT_MAX: usize = 4;

/// Content in a venti [`Store`], sealed with one epoch's keys.
#[derive(Debug, Clone)]
pub struct VentiContent {
    store: Arc<Store>,
    keys: Arc<EpochKeys>,
    /// Sealers (each holds a zstd context) for content of one chunk: a small file's
    /// write should not pay for setting up a tree writer.
    sealers: Arc<Mutex<Vec<Sealer>>>,
}

impl VentiContent {
    pub fn new(store: Arc<Store>, keys: EpochKeys) -> VentiContent {
        VentiContent {
            store,
            keys: Arc::new(keys),
            sealers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Content that the chunker leaves in one piece is a tree of one leaf: seal and put
    /// that leaf directly. Same root as a [`TreeWriter`] would give.
    fn write_one_chunk(&self, bytes: &[u8]) -> Result<BlockRef> {
        let mut sealer = self.sealers.lock().pop().unwrap_or_default();
        let mut sealed = Vec::new();
        let sealing = sealer.seal_into(&self.keys, Kind::Data, bytes, &mut sealed);
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
        let keys = volume_keys(&dir.join("volume.key"))?;
        let backend = venti::backend::FileBackend::new(dir.join("blocks"))?;
        let store = Store::open(Arc::new(backend), StoreOptions::default())?;
        for problem in store.open_report() {
            tracing::warn!(%problem, "block store: repaired on open");
        }
        Ok(VentiContent::new(Arc::new(store), keys))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn keys(&self) -> &EpochKeys {
        &self.keys
    }
}

/// Read, or create, the 32-byte epoch secret and 16-byte volume id.
fn volume_keys(path: &Path) -> Result<EpochKeys> {
    const KEY_FILE_BYTES: usize = EPOCH_SECRET_LEN + VOLUME_ID_LEN;
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = vec![0u8; KEY_FILE_BYTES];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut fresh)?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&fresh)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            if let Some(parent) = path.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            fresh
        }
        Err(error) => return Err(error.into()),
    };
    let (Some(secret), Some(volume_id)) = (
        bytes.get(..EPOCH_SECRET_LEN),
        bytes.get(EPOCH_SECRET_LEN..KEY_FILE_BYTES),
    ) else {
        return Err(Error::Corrupt {
            what: "volume key file",
            detail: format!("{} bytes", bytes.len()),
        });
    };
    if bytes.len() != KEY_FILE_BYTES {
        return Err(Error::Corrupt {
            what: "volume key file",
            detail: format!("{} bytes", bytes.len()),
        });
    }
    let mut secret_bytes = [0u8; EPOCH_SECRET_LEN];
    secret_bytes.copy_from_slice(secret);
    let mut id_bytes = [0u8; VOLUME_ID_LEN];
    id_bytes.copy_from_slice(volume_id);
    Ok(EpochKeys::derive(&secret_bytes, &id_bytes, 0))
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
        let reader = TreeReader::new(self.store.as_ref(), &self.keys);
        let mut live = HashSet::new();
        for root in roots {
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
        let keys = Arc::clone(&self.keys);
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
        let mut writer = TreeWriter::new(self.store.as_ref(), &self.keys, Class::Pinned);
        if bytes.len() < SEAL_INLINE_BYTES_MAX {
            // A thread pool costs more than sealing a few chunks here.
            writer = writer.with_threads(0);
        }
        writer.write(bytes)?;
        Ok(writer.finish()?)
    }

    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        Ok(
            TreeReader::new(self.store.as_ref(), &self.keys)
                .read_range(root, offset, len as u64)?,
        )
    }

    fn edit(
        &self,
        base: &BlockRef,
        new_len: u64,
        changed: &[(u64, u64)],
        read_new: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>,
    ) -> Result<Option<BlockRef>> {
        // A tree of another epoch answers OtherEpoch: rewritten under these keys.
        let editor = venti::tree::TreeEditor::new(self.store.as_ref(), &self.keys, Class::Pinned);
        Ok(match editor.edit(base, new_len, changed, read_new)? {
            venti::tree::EditOutcome::Edited { root, .. } => Some(root),
            venti::tree::EditOutcome::OtherEpoch { .. } => None,
        })
    }

    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        let mut writer = TreeWriter::new(self.store.as_ref(), &self.keys, Class::Pinned)
            .with_leaf_kind(Kind::Meta);
        writer.write(bytes)?;
        Ok(writer.finish()?)
    }

    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        Ok(TreeReader::new(self.store.as_ref(), &self.keys)
            .with_leaf_kind(Kind::Meta)
            .read_all(root)?)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.store.sync()?)
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
    fn single_chunk_content_gets_the_tree_writers_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = content(dir.path());
        for len in [0, 1, 4097, CHUNK_BYTES_MIN - 1, CHUNK_BYTES_MIN] {
            let bytes: Vec<u8> = (0..len).map(|index| (index * 7 + len) as u8).collect();
            let fast = store.write_all(&bytes).unwrap();
            let mut writer = TreeWriter::new(store.store().as_ref(), store.keys(), Class::Pinned);
            writer.write(&bytes).unwrap();
            assert_eq!(fast, writer.finish().unwrap(), "{len} bytes");
            assert_eq!(store.read(&fast, 0, len).unwrap(), bytes, "{len} bytes");
        }
    }

    #[test]
    fn key_file_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume.key");
        let first = volume_keys(&path).unwrap();
        let second = volume_keys(&path).unwrap();
        assert_eq!(first.conv_key(), second.conv_key());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(volume_keys(&path), Err(Error::Corrupt { .. })));
    }
}
