//! Many readers while one writer puts (directly and through the store's write queue),
//! syncs, removes and compacts: every read of a block that was put and never removed
//! returns its bytes, whatever the writer is doing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use common::{TestResult, block, for_each_backend};
use venti::{Address, Class, PUT_HEADROOM_BYTES, StoreOptions};

const READERS: usize = 3;

#[test]
fn readers_see_every_put_block_during_puts_syncs_removes_and_compaction() -> TestResult {
    for_each_backend(|backend| {
        let store = Arc::new(backend.open(StoreOptions {
            arena_bytes_max: 256 << 10,
            ..StoreOptions::default()
        })?);
        let blocks_total: u64 = if common::long() { 20_000 } else { 2_000 };
        // Blocks 0..published are readable; every 10th is removed later, so readers
        // skip those.
        let published = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let kept = |n: u64| n % 10 != 5;

        let readers: Vec<_> = (0..READERS)
            .map(|reader| {
                let (store, published, done, reads) = (
                    store.clone(),
                    published.clone(),
                    done.clone(),
                    reads.clone(),
                );
                thread::spawn(move || -> Result<(), String> {
                    let mut n = reader as u64;
                    while !done.load(Ordering::Acquire) {
                        let limit = published.load(Ordering::Acquire);
                        if limit == 0 {
                            thread::yield_now();
                            continue;
                        }
                        n = (n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1)) % limit;
                        if !kept(n) {
                            continue;
                        }
                        let (address, data) = block(n, 1000 + (n as usize % 3000));
                        let got = store.get(&address).map_err(|e| format!("block {n}: {e}"))?;
                        if got != data {
                            return Err(format!("block {n}: wrong bytes"));
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();

        let writer = || -> TestResult {
            for n in 0..blocks_total {
                let (address, data) = block(n, 1000 + (n as usize % 3000));
                if n % 2 == 0 {
                    store.put(&address, &data, Class::Pinned)?;
                } else {
                    // Queued to the store's writer thread and published at once: a
                    // reader may ask for it before it is in its arena.
                    let mut buffer = vec![0; PUT_HEADROOM_BYTES];
                    buffer.extend_from_slice(&data);
                    store.put_sealed_owned(&address, &mut buffer, Class::Pinned)?;
                }
                published.store(n + 1, Ordering::Release);
                if n % 97 == 0 {
                    store.sync()?;
                }
                if n % 500 == 499 {
                    // Remove this round's doomed blocks and rewrite arenas under the readers.
                    let doomed: Vec<Address> = (n - 499..=n)
                        .filter(|m| !kept(*m))
                        .map(|m| block(m, 1000 + (m as usize % 3000)).0)
                        .collect();
                    store.remove(&doomed)?;
                    store.compact(0.0)?;
                }
            }
            Ok(())
        };
        let written = writer();
        done.store(true, Ordering::Release);
        for reader in readers {
            reader.join().map_err(|_| "reader panicked")??;
        }
        written?;
        assert!(reads.load(Ordering::Relaxed) > 0, "readers never read");
        assert!(store.verify()?.problems.is_empty());
        Ok(())
    })
}
