//! Helpers shared by venti's storage tests: backends to run one test body against,
//! deterministic blocks, and the `KITH_LONG` switch.
#![allow(dead_code)]

use std::sync::Arc;

use venti::backend::{Backend, FileBackend, MemoryBackend};
use venti::{Address, Class, Store, StoreOptions};

/// Test bodies return errors instead of panicking on them.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// More cases when `KITH_LONG=1`.
pub fn long() -> bool {
    std::env::var("KITH_LONG").is_ok_and(|value| value == "1")
}

/// `short` normally, `long` with `KITH_LONG=1`.
pub fn cases(short: u32, long_cases: u32) -> u32 {
    if long() { long_cases } else { short }
}

/// Deterministic pseudo-random bytes for block `n`, `len` long.
pub fn bytes(n: u64, len: usize) -> Vec<u8> {
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Block `n` of `len` bytes and its address.
pub fn block(n: u64, len: usize) -> (Address, Vec<u8>) {
    let data = bytes(n, len);
    (Address::of(&data), data)
}

/// Small arenas so tests cross arena boundaries.
pub fn small_options() -> StoreOptions {
    StoreOptions {
        arena_bytes_max: 64 << 10,
        ..StoreOptions::default()
    }
}

/// A backend kind a contract test runs against.
pub enum Kind {
    Memory,
    File,
    /// The memory backend without a direct write path: one `write_at` per record.
    MemoryBuffered,
    /// The file backend as on a file system that refuses `O_DIRECT`.
    FileBuffered,
}

/// One backend instance; keeps its temp dir alive.
pub struct TestBackend {
    pub backend: Arc<dyn Backend>,
    pub memory: Option<MemoryBackend>,
    pub dir: Option<tempfile::TempDir>,
}

impl TestBackend {
    pub fn new(kind: Kind) -> TestResult<TestBackend> {
        Ok(match kind {
            Kind::Memory | Kind::MemoryBuffered => {
                let memory = MemoryBackend::new(7)?;
                memory.set_direct_io(matches!(kind, Kind::Memory));
                TestBackend {
                    backend: Arc::new(memory.clone()),
                    memory: Some(memory),
                    dir: None,
                }
            }
            Kind::File | Kind::FileBuffered => {
                let dir = tempfile::tempdir()?;
                let direct_io = matches!(kind, Kind::File);
                TestBackend {
                    backend: Arc::new(FileBackend::new(dir.path())?.with_direct_io(direct_io)),
                    memory: None,
                    dir: Some(dir),
                }
            }
        })
    }

    pub fn open(&self, options: StoreOptions) -> venti::Result<Store> {
        Store::open(self.backend.clone(), options)
    }
}

/// Run `body` against a memory and a file backend, each with and without the direct
/// (staged) write path.
pub fn for_each_backend(body: impl Fn(&TestBackend) -> TestResult) -> TestResult {
    for kind in [
        Kind::Memory,
        Kind::File,
        Kind::MemoryBuffered,
        Kind::FileBuffered,
    ] {
        body(&TestBackend::new(kind)?)?;
    }
    Ok(())
}

pub fn put_all(store: &Store, blocks: &[(Address, Vec<u8>)], class: Class) -> venti::Result<()> {
    for (address, data) in blocks {
        store.put(address, data, class)?;
    }
    Ok(())
}
