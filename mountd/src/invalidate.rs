//! Tells the kernel about what other devices changed.
//!
//! fossil reports the inodes and names remote ops touched ([`Invalidation`]) after it
//! has released the volume lock; the hook only queues them. One thread of its own
//! sends them to the kernel with fuser's [`fuser::Notifier`]: an invalidation can
//! wait on the kernel's locks of that inode, which a FUSE request in progress (and
//! the volume lock behind it) may hold, so it is never sent from a FUSE thread or
//! under the volume lock.
//!
//! Nothing is ever dropped: the kernel keeps names and attributes for the whole TTL
//! (long, see `config`), so a lost invalidation would show stale data that long. The
//! queue coalesces instead: an inode or name already waiting is not queued twice, so
//! it is bounded by the distinct inodes and names changed while the sender is busy,
//! however many ops a catch-up applies meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use fossil::volume::{Invalidation, RemoteChangeHook};
use fuser::INodeNo;
use parking_lot::{Condvar, Mutex};

/// Where the kernel's invalidations wait: the hooks fossil calls fill it, one thread
/// empties it.
#[derive(Debug, Default)]
pub struct Invalidations {
    queue: Arc<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    /// In the order first reported.
    order: VecDeque<Invalidation>,
    /// Exactly the elements of `order`.
    queued: HashSet<Invalidation>,
    /// Hooks alive: the sender stops once none is left and the queue is empty.
    hooks: usize,
}

/// What receives the invalidations (the FUSE session's notifier, or a test's record).
pub trait Kernel: Send + 'static {
    fn inval_inode(&self, ino: u64) -> std::io::Result<()>;
    fn inval_entry(&self, parent: u64, name: &std::ffi::OsStr) -> std::io::Result<()>;
}

impl Kernel for fuser::Notifier {
    fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
        // Offset 0, length 0: the attributes and every cached page.
        fuser::Notifier::inval_inode(self, INodeNo(ino), 0, 0)
    }

    fn inval_entry(&self, parent: u64, name: &std::ffi::OsStr) -> std::io::Result<()> {
        fuser::Notifier::inval_entry(self, INodeNo(parent), name)
    }
}

/// One hook's share of the queue; dropping the hook (the volume closing) releases it.
struct HookHandle(Arc<Queue>);

impl Drop for HookHandle {
    fn drop(&mut self) {
        self.0.pending.lock().hooks -= 1;
        self.0.changed.notify_all();
    }
}

impl Invalidations {
    pub fn new() -> Invalidations {
        Invalidations::default()
    }

    /// fossil's `on_remote_change`: queues, never blocks on the kernel.
    pub fn hook(&self) -> RemoteChangeHook {
        self.queue.pending.lock().hooks += 1;
        let handle = HookHandle(Arc::clone(&self.queue));
        Arc::new(move |changes: &[Invalidation]| {
            if changes.is_empty() {
                return;
            }
            let queue = &handle.0;
            let mut pending = queue.pending.lock();
            for change in changes {
                if pending.queued.insert(change.clone()) {
                    pending.order.push_back(change.clone());
                }
            }
            drop(pending);
            queue.changed.notify_one();
        })
    }

    /// Sends queued invalidations to `kernel` on a thread of its own until every hook
    /// is gone (the volume closed) and the queue is empty.
    pub fn spawn(self, kernel: impl Kernel) -> std::io::Result<std::thread::JoinHandle<()>> {
        let queue = self.queue;
        std::thread::Builder::new()
            .name("kith-invalidate".into())
            .spawn(move || {
                while let Some(batch) = next_batch(&queue) {
                    send(&kernel, &batch);
                }
            })
    }
}

/// Everything queued, once there is something; `None` when no hook is left to add more.
fn next_batch(queue: &Queue) -> Option<Vec<Invalidation>> {
    let mut pending = queue.pending.lock();
    while pending.order.is_empty() {
        if pending.hooks == 0 {
            return None;
        }
        queue.changed.wait(&mut pending);
    }
    pending.queued.clear();
    Some(pending.order.drain(..).collect())
}

fn send(kernel: &impl Kernel, batch: &[Invalidation]) {
    for change in batch {
        let result = match change {
            Invalidation::Inode(ino) => kernel.inval_inode(ino.0),
            Invalidation::Entry { parent, name } => kernel.inval_entry(parent.0, name),
        };
        // ENOENT (the kernel holds nothing for it) is filtered by fuser already.
        if let Err(error) = result {
            tracing::debug!(?change, %error, "kernel invalidation failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::ffi::{OsStr, OsString};
    use std::sync::Mutex;

    use fossil::InodeNo;

    use super::*;

    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<String>>>);

    impl Kernel for Record {
        fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("inode {ino}"));
            Ok(())
        }

        fn inval_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("entry {parent}/{}", name.to_string_lossy()));
            Ok(())
        }
    }

    #[test]
    fn remote_changes_reach_the_kernel_in_order_on_their_own_thread() {
        let invalidations = Invalidations::new();
        let hook = invalidations.hook();
        let record = Record::default();
        let thread = invalidations.spawn(record.clone()).unwrap();
        hook(&[
            Invalidation::Entry {
                parent: InodeNo(1),
                name: OsString::from("new.txt"),
            },
            Invalidation::Inode(InodeNo(7)),
        ]);
        hook(&[]);
        hook(&[Invalidation::Inode(InodeNo(9))]);
        drop(hook);
        thread.join().unwrap();
        assert_eq!(
            *record.0.lock().unwrap(),
            vec!["entry 1/new.txt", "inode 7", "inode 9"]
        );
    }

    /// A kernel that holds its first invalidation until told to go on.
    struct Stuck {
        record: Record,
        entered: std::sync::mpsc::Sender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Kernel for Stuck {
        fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
            if self.record.0.lock().unwrap().is_empty() {
                self.entered.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            self.record.inval_inode(ino)
        }

        fn inval_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()> {
            self.record.inval_entry(parent, name)
        }
    }

    #[test]
    fn while_the_kernel_is_busy_repeats_coalesce_and_nothing_is_dropped() {
        let invalidations = Invalidations::new();
        let hook = invalidations.hook();
        let (entered, entered_rx) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let record = Record::default();
        let kernel = Stuck {
            record: record.clone(),
            entered,
            go: Mutex::new(go_rx),
        };
        let thread = invalidations.spawn(kernel).unwrap();
        hook(&[Invalidation::Inode(InodeNo(1))]);
        entered_rx.recv().unwrap();
        // The sender is stuck in the kernel: 100,000 changes to 10 inodes and one name
        // wait as 11 invalidations (the old bounded queue dropped batches here).
        for round in 0..10_000u64 {
            hook(&[
                Invalidation::Inode(InodeNo(100 + round % 10)),
                Invalidation::Entry {
                    parent: InodeNo(1),
                    name: OsString::from("a"),
                },
            ]);
        }
        go.send(()).unwrap();
        drop(hook);
        thread.join().unwrap();
        let sent = record.0.lock().unwrap().clone();
        let mut expected = vec!["inode 1".to_owned()];
        expected.extend((100..110).map(|ino| format!("inode {ino}")));
        expected.insert(2, "entry 1/a".to_owned());
        assert_eq!(sent, expected);
    }

    #[test]
    fn the_sender_stops_only_when_every_hook_is_gone() {
        let invalidations = Invalidations::new();
        let first = invalidations.hook();
        let second = invalidations.hook();
        let record = Record::default();
        let thread = invalidations.spawn(record.clone()).unwrap();
        drop(first);
        second(&[Invalidation::Inode(InodeNo(5))]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!thread.is_finished(), "a hook is still alive");
        drop(second);
        thread.join().unwrap();
        assert_eq!(*record.0.lock().unwrap(), vec!["inode 5"]);
    }
}
