//! An in-memory network of replicas for tests and benchmarks: frames go straight into
//! the destination's inbox, with configurable loss, delay and partitions.
//!
//! Delivery never blocks the sender: a delayed frame is a timer task on the runtime
//! given to [`MemNet::new`]. The random choices (loss) come from a seeded generator, but
//! thread scheduling still makes runs differ; the paxos crate's simulator is the
//! place for replayable runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use paxos::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Link, Replica};

/// What the network does to frames.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Percentage (0..=100) of frames silently dropped.
    pub drop_percent: u8,
    /// Delay added to every frame.
    pub delay_ms: u64,
    /// Devices cut off from everyone.
    pub isolated: BTreeSet<NodeId>,
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to a replica.
    pub delivered: u64,
    /// Frames dropped (loss, partition, or no such replica).
    pub dropped: u64,
}

/// The network. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routes: Mutex<BTreeMap<NodeId, Replica>>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    runtime: tokio::runtime::Handle,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemNet {
    /// A network without faults; delayed frames are scheduled on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle, seed: u64) -> Self {
        MemNet {
            inner: Arc::new(Inner {
                routes: Mutex::new(BTreeMap::new()),
                faults: Mutex::new(Faults::default()),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                runtime,
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The link replica `from` sends through.
    pub fn link(&self, from: NodeId) -> Arc<dyn Link> {
        Arc::new(MemLink {
            from,
            net: self.clone(),
        })
    }

    /// Routes frames for `replica.id()` to `replica` (replacing an earlier one).
    pub fn attach(&self, replica: Replica) {
        lock(&self.inner.routes).insert(replica.id(), replica);
    }

    /// Frames for `id` are dropped from now on.
    pub fn detach(&self, id: NodeId) {
        lock(&self.inner.routes).remove(&id);
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.inner.faults) = faults;
    }

    /// Cuts `id` off from everyone (both directions).
    pub fn isolate(&self, id: NodeId) {
        lock(&self.inner.faults).isolated.insert(id);
    }

    /// Reconnects `id`.
    pub fn reconnect(&self, id: NodeId) {
        lock(&self.inner.faults).isolated.remove(&id);
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    fn send(&self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let (lost, delay_ms) = {
            let faults = lock(&self.inner.faults);
            let cut = faults.isolated.contains(&from) || faults.isolated.contains(&to);
            let lost = cut
                || (faults.drop_percent > 0
                    && lock(&self.inner.rng).random_range(0..100u8) < faults.drop_percent);
            (lost, faults.delay_ms)
        };
        let target = lock(&self.inner.routes).get(&to).cloned();
        let Some(target) = target.filter(|_| !lost) else {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.inner.delivered.fetch_add(1, Ordering::Relaxed);
        if delay_ms == 0 {
            target.deliver(from, bytes);
        } else {
            self.inner.runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                target.deliver(from, bytes);
            });
        }
    }
}

#[derive(Debug)]
struct MemLink {
    from: NodeId,
    net: MemNet,
}

impl Link for MemLink {
    fn send(&self, to: NodeId, bytes: Vec<u8>) {
        self.net.send(self.from, to, bytes);
    }
}
