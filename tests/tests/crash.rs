//! `kill -9` of the daemon at random moments while a writer creates and fsyncs files;
//! after each kill the dead mount is detached, the store passes `kith verify`, and a
//! fresh mount shows every file whose fsync returned, byte for byte.
//!
//! Rounds: 3 by default, `KITH_LONG=1` runs 25 (and `KITH_CRASH_ROUNDS=N` sets N).
//! The seed is printed; `KITH_CRASH_SEED=S` replays the same kill points and sizes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kith_tests::{Kith, kill_and_wait, pattern, skip_without_fuse};
use rand::{Rng, SeedableRng};

fn rounds() -> usize {
    if let Some(n) = std::env::var("KITH_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return n;
    }
    if std::env::var_os("KITH_LONG").is_some_and(|v| v == "1") {
        25
    } else {
        3
    }
}

/// Files the writer saw fsync'd: name → (seed, length) of their content.
type Durable = BTreeMap<String, (u64, usize)>;

/// Create, write and fsync files (and fsync their directory) until told to stop or the
/// mount dies. Only files whose fsyncs returned are recorded.
fn write_until_killed(dir: PathBuf, round: usize, seed: u64, stop: Arc<AtomicBool>) -> Durable {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut durable = Durable::new();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = format!("r{round}-f{i}");
        let content_seed = rng.random::<u64>();
        // Mostly small files (inline), some spanning several chunks.
        let len = if rng.random_bool(0.8) {
            rng.random_range(0..8192)
        } else {
            rng.random_range(8192..(3 << 20))
        };
        let path = dir.join(&name);
        let written = fs::File::create(&path).and_then(|mut file| {
            file.write_all(&pattern(content_seed, len))?;
            file.sync_all()
        });
        let dir_synced = written.and_then(|()| fs::File::open(&dir)?.sync_all());
        if dir_synced.is_err() {
            break; // the daemon is gone
        }
        durable.insert(name, (content_seed, len));
    }
    durable
}

#[test]
fn kill_minus_nine_loses_no_fsynced_file() -> anyhow::Result<()> {
    if skip_without_fuse("kill_minus_nine_loses_no_fsynced_file") {
        return Ok(());
    }
    let seed = std::env::var("KITH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("crash loop: seed {seed} (replay with KITH_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kith = Kith::new()?;
    let mut pid = kith.mount()?;
    let mut durable = Durable::new();

    for round in 0..rounds() {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let dir = kith.mnt.clone();
            let stop = stop.clone();
            let writer_seed = rng.random::<u64>();
            std::thread::spawn(move || write_until_killed(dir, round, writer_seed, stop))
        };
        let kill_after = Duration::from_millis(rng.random_range(50..1500));
        std::thread::sleep(kill_after);
        assert!(kill_and_wait(pid), "daemon {pid} did not die");
        stop.store(true, Ordering::SeqCst);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        println!(
            "round {round}: killed after {kill_after:?}, {} files fsync'd this round",
            written.len()
        );
        durable.extend(written);

        // The dead mount is detached by `kith unmount`, the store verifies clean.
        let detached = kith.unmount()?;
        assert!(detached.contains("detached"), "{detached}");
        let report = kith.ok(["verify"])?;
        assert!(report.contains("problems: 0"), "round {round}: {report}");

        pid = kith.mount()?;
        for (name, (content_seed, len)) in &durable {
            let path = kith.path(name);
            let back =
                fs::read(&path).map_err(|e| anyhow::anyhow!("round {round}: {name} lost: {e}"))?;
            assert_eq!(back.len(), *len, "round {round}: {name} has the wrong size");
            assert!(
                back == pattern(*content_seed, *len),
                "round {round}: {name} has the wrong content"
            );
        }
    }
    kith.unmount()?;
    let report = kith.ok(["verify"])?;
    assert!(report.contains("problems: 0"), "{report}");
    Ok(())
}
