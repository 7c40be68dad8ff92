//! Tells the kernel about what other devices changed.
//!
//! fossil reports the inodes and names remote ops touched ([`Invalidation`]) after it
//! has released the volume lock; the hook only queues them. One thread of its own
//! sends them to the kernel with fuser's [`fuser::Notifier`]: an invalidation can
//! wait on the kernel's locks of that inode, which a FUSE request in progress (and
//! the volume lock behind it) may hold, so it is never sent from a FUSE thread or
//! under the volume lock.
//!
//! The queue is bounded; when it is full a batch is dropped with a warning and the
//! kernel's copies expire with their TTLs instead (correct, only later).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use fossil::volume::{Invalidation, RemoteChangeHook};
use fuser::INodeNo;

/// Batches of invalidations waiting for the kernel.
const BATCHES_QUEUED_MAX: usize = 1024;

/// Where the kernel's invalidations go: the sending half is fossil's hook.
#[derive(Debug)]
pub struct Invalidations {
    sender: SyncSender<Vec<Invalidation>>,
    receiver: Receiver<Vec<Invalidation>>,
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

impl Invalidations {
    pub fn new() -> Invalidations {
        let (sender, receiver) = sync_channel(BATCHES_QUEUED_MAX);
        Invalidations { sender, receiver }
    }

    /// fossil's `on_remote_change`: queues, never blocks.
    pub fn hook(&self) -> RemoteChangeHook {
        let sender = self.sender.clone();
        Arc::new(move |changes: &[Invalidation]| {
            if changes.is_empty() {
                return;
            }
            match sender.try_send(changes.to_vec()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        count = changes.len(),
                        "kernel invalidations dropped (queue full); caches expire by TTL"
                    );
                }
            }
        })
    }

    /// Sends queued invalidations to `kernel` on a thread of its own until every hook
    /// is gone (the volume closed).
    pub fn spawn(self, kernel: impl Kernel) -> std::io::Result<std::thread::JoinHandle<()>> {
        let Invalidations { sender, receiver } = self;
        drop(sender);
        std::thread::Builder::new()
            .name("kith-invalidate".into())
            .spawn(move || {
                while let Ok(batch) = receiver.recv() {
                    send(&kernel, &batch);
                }
            })
    }
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations::new()
    }
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
}
