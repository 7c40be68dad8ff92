//! Garbage collection while a store is served: the blocks of deleted files leave the
//! disk.
//!
//! fossil does a round (`Volume::collect_garbage`): the roots of a durable namespace,
//! its snapshots and checkpoint; every tree under them marked; every block put before
//! a *fence* that is not marked swept; arenas compacted. This module picks the fence
//! and says when rounds run.
//!
//! The fence. Other voters push their new blocks here before they propose the op that
//! names them (`sync.rs`), so a block no op here names yet may be one an acknowledged
//! write of another device needs. With other members in the volume a round therefore
//! sweeps only blocks put before a fence taken at least [`GRACE`] ago: a fence is
//! taken every [`FENCE_INTERVAL`] and the newest one old enough is used. A volume whose
//! only member is this device sweeps up to a fence taken now. Fences live in memory
//! (put sequence numbers are durable, so a fence stays valid; only its age would be
//! lost): after a restart, a round with other members waits [`GRACE`].
//!
//! When. Every [`ROUND_INTERVAL`] in the daemon, compacting only mostly dead arenas;
//! and on `kith gc`, compacting every arena with dead bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fossil::Volume;
use fossil::content::Collected;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Blocks younger than this survive a round of a volume with other members: a voter
/// that pushed them proposes their op within seconds (`sync.rs` gives a push 3 s), so
/// this leaves room for a leader change and a slow disk.
pub const GRACE: Duration = Duration::from_secs(10 * 60);
/// How often a fence is taken (the grace is kept to within this).
pub const FENCE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the daemon collects on its own.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How often the collector thread looks for a stopped daemon.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Whether the volume has members other than this device (their pushes need the
/// grace). Errors count as yes.
pub type SharedWithOthers = Box<dyn Fn() -> bool + Send + Sync>;

/// The daemon's garbage collector.
pub struct Collector {
    volume: Weak<Volume>,
    shared_with_others: SharedWithOthers,
    /// (taken at, fence), oldest first.
    fences: Mutex<VecDeque<(Instant, u64)>>,
    /// One round at a time.
    round: Mutex<()>,
}

/// What `kith gc` reports.
#[derive(Debug)]
pub enum Outcome {
    Collected(Collected),
    /// Other members, and this daemon has not run long enough to hold a fence
    /// [`GRACE`] old.
    TooEarly {
        wait: Duration,
    },
}

impl Outcome {
    pub fn render(&self) -> String {
        match self {
            Outcome::Collected(collected) => format!(
                "gc: {} blocks removed, {} freed on disk, {} blocks in use{}\n",
                collected.swept_blocks,
                human_bytes(collected.freed_bytes),
                collected.live_blocks,
                match collected.damaged_records {
                    0 => String::new(),
                    n => format!(", {n} damaged records dropped (see the daemon log)"),
                },
            ),
            Outcome::TooEarly { wait } => format!(
                "gc: nothing collected yet: blocks younger than {} min stay while other \
                 devices may still commit ops naming them; try again in {} s\n",
                GRACE.as_secs() / 60,
                wait.as_secs().max(1)
            ),
        }
    }
}

impl Collector {
    /// A collector for `volume`; takes its first fence now.
    pub fn new(volume: &Arc<Volume>, shared_with_others: SharedWithOthers) -> Result<Collector> {
        let collector = Collector {
            volume: Arc::downgrade(volume),
            shared_with_others,
            fences: Mutex::new(VecDeque::new()),
            round: Mutex::new(()),
        };
        collector.take_fence(volume)?;
        Ok(collector)
    }

    /// Takes a fence in the background every [`FENCE_INTERVAL`] and collects every
    /// [`ROUND_INTERVAL`], until the volume is gone.
    pub fn spawn(self: &Arc<Self>) -> Result<()> {
        let collector = Arc::clone(self);
        std::thread::Builder::new()
            .name("kith-gc".into())
            .spawn(move || collector.background())
            .map_err(|e| Error::Startup(format!("cannot start the gc thread: {e}")))?;
        Ok(())
    }

    /// One round now. `compact_all`: rewrite every arena with dead bytes.
    pub fn collect(&self, compact_all: bool) -> Result<Outcome> {
        let _round = self.round.lock();
        let volume = self.volume()?;
        let fence = if (self.shared_with_others)() {
            let newest_old_enough = self
                .fences
                .lock()
                .iter()
                .rev()
                .find(|(taken, _)| taken.elapsed() >= GRACE)
                .copied();
            match newest_old_enough {
                Some((_, fence)) => fence,
                None => {
                    let oldest = self.fences.lock().front().map(|(taken, _)| *taken);
                    let wait = oldest.map_or(GRACE, |taken| GRACE.saturating_sub(taken.elapsed()));
                    return Ok(Outcome::TooEarly { wait });
                }
            }
        } else {
            volume.gc_fence()?
        };
        let collected = volume.collect_garbage(fence, compact_all)?;
        tracing::info!(?collected, "gc: round done");
        Ok(Outcome::Collected(collected))
    }

    fn volume(&self) -> Result<Arc<Volume>> {
        self.volume
            .upgrade()
            .ok_or_else(|| Error::Reported("the daemon is stopping".into()))
    }

    fn take_fence(&self, volume: &Volume) -> Result<()> {
        let fence = volume.gc_fence()?;
        let mut fences = self.fences.lock();
        fences.push_back((Instant::now(), fence));
        // Fences older than the newest one past the grace are never used again.
        while fences.len() > 1
            && fences
                .get(1)
                .is_some_and(|(taken, _)| taken.elapsed() >= GRACE)
        {
            fences.pop_front();
        }
        Ok(())
    }

    fn background(&self) {
        let mut next_fence = Instant::now() + FENCE_INTERVAL;
        let mut next_round = Instant::now() + ROUND_INTERVAL;
        loop {
            std::thread::sleep(STOP_POLL);
            let Some(volume) = self.volume.upgrade() else {
                return;
            };
            let now = Instant::now();
            if now >= next_fence {
                next_fence = now + FENCE_INTERVAL;
                if let Err(error) = self.take_fence(&volume) {
                    tracing::warn!(%error, "gc: cannot take a fence");
                }
            }
            drop(volume);
            if now >= next_round {
                next_round = now + ROUND_INTERVAL;
                match self.collect(false) {
                    Ok(Outcome::TooEarly { .. }) => {
                        next_round = now + FENCE_INTERVAL;
                    }
                    Ok(Outcome::Collected(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "gc: round failed; the next one tries again")
                    }
                }
            }
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn a_shared_volume_waits_for_a_fence_past_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Arc::new(Volume::open(dir.path()).unwrap());
        let shared = Collector::new(&volume, Box::new(|| true)).unwrap();
        match shared.collect(true).unwrap() {
            Outcome::TooEarly { wait } => assert!(wait > GRACE - Duration::from_secs(60)),
            other => panic!("collected without a fence past the grace: {other:?}"),
        }
        let alone = Collector::new(&volume, Box::new(|| false)).unwrap();
        assert!(matches!(
            alone.collect(true).unwrap(),
            Outcome::Collected(_)
        ));
    }
}
