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
            Kind::Memory => {
                let memory = MemoryBackend::new(7)?;
                TestBackend {
                    backend: Arc::new(memory.clone()),
                    memory: Some(memory),
                    dir: None,
                }
            }
            Kind::File => {
                let dir = tempfile::tempdir()?;
                TestBackend {
                    backend: Arc::new(FileBackend::new(dir.path())?),
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

/// Run `body` against a memory and a file backend.
pub fn for_each_backend(body: impl Fn(&TestBackend) -> TestResult) -> TestResult {
    for kind in [Kind::Memory, Kind::File] {
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
