//! Replicated volumes over an in-process agreement group ([`MemGroup`]): several
//! `Volume`s share one log, one content store (standing in for fetching blocks from
//! other devices), and go offline, crash and come back.

// A test binary: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use fossil::agreement::{Agreement, MemGroup};
use fossil::content::{ContentStore, MemContent};
use fossil::op::{DeviceId, Rights};
use fossil::volume::{Invalidation, RemoteChangeHook, VolumeOptions};
use fossil::{Caller, Error, FileKind, InodeNo, RenameFlags, SetAttr, Volume, XattrFlags};
use parking_lot::Mutex;

mod common;
use common::incompressible;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// One user's devices: a group log, a content store they all reach, and a directory
/// per device.
struct Devices {
    group: MemGroup,
    content: Arc<MemContent>,
    dirs: Vec<tempfile::TempDir>,
}

impl Devices {
    fn new(count: usize) -> Devices {
        Devices {
            group: MemGroup::new(),
            content: Arc::new(MemContent::new()),
            dirs: (0..count).map(|_| tempfile::tempdir().unwrap()).collect(),
        }
    }

    fn options(&self, device: u32) -> VolumeOptions {
        let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&self.content));
        let agreement: Arc<dyn Agreement> = self.group.member(device);
        VolumeOptions {
            device: DeviceId(device),
            content: Some(content),
            agreement: Some(agreement),
            // Device 1 created the volume; the others joined it.
            create_if_empty: device == 1,
            // Offline devices give up waiting for a commit quickly in tests.
            commit_wait_ms: 50,
            ..VolumeOptions::default()
        }
    }

    fn open(&self, device: u32) -> Volume {
        self.open_with(device, self.options(device))
    }

    fn open_with(&self, device: u32, options: VolumeOptions) -> Volume {
        Volume::open_with(self.dirs[device as usize - 1].path(), options).unwrap()
    }

    /// Device 1 (the creator) and devices 2..=count with write rights.
    fn open_all(&self) -> Vec<Volume> {
        let first = self.open(1);
        for device in 2..=self.dirs.len() as u32 {
            first.grant(DeviceId(device), Rights::Write).unwrap();
        }
        let mut volumes = vec![first];
        for device in 2..=self.dirs.len() as u32 {
            volumes.push(self.open(device));
        }
        volumes
    }
}

fn name(text: &str) -> &OsStr {
    OsStr::new(text)
}

fn write_file(volume: &Volume, parent: InodeNo, file: &str, bytes: &[u8]) -> InodeNo {
    let (attr, handle) = volume.create(parent, name(file), 0o644, ME, false).unwrap();
    volume
        .setattr(
            attr.ino,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    volume.write(attr.ino, handle, 0, bytes).unwrap();
    volume.fsync(attr.ino, false).unwrap();
    volume.release(attr.ino, handle).unwrap();
    attr.ino
}

fn read_path(volume: &Volume, path: &[&str]) -> Vec<u8> {
    let ino = resolve(volume, path);
    let handle = volume.open_file(ino).unwrap();
    let size = volume.getattr(ino).unwrap().size;
    let bytes = volume.read(ino, handle, 0, size as u32 + 10).unwrap();
    volume.release(ino, handle).unwrap();
    bytes
}

/// Lookups serve the local state without a barrier (the kernel's entry TTL bounds
/// their staleness), so resolving a path first applies what is committed.
fn resolve(volume: &Volume, path: &[&str]) -> InodeNo {
    volume.apply_committed().unwrap();
    let mut at = InodeNo::ROOT;
    for component in path {
        at = volume.lookup(at, name(component)).unwrap().ino;
    }
    at
}

fn names(volume: &Volume, dir: InodeNo) -> Vec<String> {
    let mut out: Vec<String> = volume
        .readdir(dir, 0)
        .unwrap()
        .into_iter()
        .map(|entry| entry.name.to_string_lossy().into_owned())
        .filter(|entry| entry != "." && entry != "..")
        .collect();
    out.sort();
    out
}

/// Both volumes applied everything and hold nothing pending: their namespaces match.
fn assert_converged(a: &Volume, b: &Volume) {
    a.sync_all().unwrap();
    b.sync_all().unwrap();
    a.apply_committed().unwrap();
    b.apply_committed().unwrap();
    assert_eq!(a.sync_status().pending, 0, "a: {:?}", a.sync_status());
    assert_eq!(b.sync_status().pending, 0, "b: {:?}", b.sync_status());
    assert_eq!(a.sync_status().applied_end, b.sync_status().applied_end);
    assert_eq!(a.image().unwrap(), b.image().unwrap());
}

#[test]
fn a_tree_written_on_one_device_reads_the_same_on_another() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);

    let docs = a.mkdir(InodeNo::ROOT, name("docs"), 0o755, ME).unwrap().ino;
    let deep = a.mkdir(docs, name("deep"), 0o700, ME).unwrap().ino;
    let big = incompressible(7, 300_000);
    write_file(a, docs, "big.bin", &big);
    write_file(a, deep, "small.txt", b"hello from a");
    write_file(a, InodeNo::ROOT, "doomed", b"x");
    a.symlink(InodeNo::ROOT, name("link"), "docs/big.bin".as_ref(), ME)
        .unwrap();
    // A write on A, fsync returned: an open on B sees it.
    assert_eq!(read_path(b, &["docs", "big.bin"]), big);
    assert_eq!(
        read_path(b, &["docs", "deep", "small.txt"]),
        b"hello from a"
    );

    a.rename(
        docs,
        name("big.bin"),
        deep,
        name("moved.bin"),
        RenameFlags::default(),
    )
    .unwrap();
    a.unlink(InodeNo::ROOT, name("doomed")).unwrap();
    let small = resolve(a, &["docs", "deep", "small.txt"]);
    a.setattr(
        small,
        &SetAttr {
            perm: Some(0o600),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    a.setxattr(small, name("user.tag"), b"blue", XattrFlags::default())
        .unwrap();
    a.sync_all().unwrap();

    assert_eq!(read_path(b, &["docs", "deep", "moved.bin"]), big);
    assert_eq!(names(b, InodeNo::ROOT), vec!["docs", "link"]);
    assert_eq!(names(b, resolve(b, &["docs"])), vec!["deep"]);
    let small_on_b = resolve(b, &["docs", "deep", "small.txt"]);
    assert_eq!(
        small_on_b, small,
        "inode numbers are the same on every device"
    );
    assert_eq!(b.getattr(small_on_b).unwrap().perm, 0o600);
    assert_eq!(b.getxattr(small_on_b, name("user.tag")).unwrap(), b"blue");
    assert_eq!(
        b.readlink(resolve(b, &["link"])).unwrap(),
        b"docs/big.bin".to_vec()
    );
    // Open runs a barrier: B knows the inode, A rewrites it and fsyncs, and B's very
    // next open (no explicit catch-up) reads the new bytes.
    let handle = a.open_file(small).unwrap();
    a.write(small, handle, 0, b"HELLO").unwrap();
    a.fsync(small, false).unwrap();
    let handle_b = b.open_file(small).unwrap();
    assert_eq!(b.read(small, handle_b, 0, 100).unwrap(), b"HELLO from a");
    b.release(small, handle_b).unwrap();
    a.release(small, handle).unwrap();
    // And back: B's changes show on A.
    write_file(b, InodeNo::ROOT, "from-b", b"b was here");
    assert_eq!(read_path(a, &["from-b"]), b"b was here");
    assert_converged(a, b);
}

#[test]
fn concurrent_offline_edits_keep_the_winner_and_one_conflict_copy_on_both() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    write_file(a, InodeNo::ROOT, "notes", b"base");
    assert_eq!(read_path(b, &["notes"]), b"base");

    devices.group.set_online(1, false);
    // A edits offline: it sees its own text at once; fsync still succeeds.
    let notes = resolve(a, &["notes"]);
    let handle = a.open_file(notes).unwrap();
    a.write(notes, handle, 0, b"a's text, written offline")
        .unwrap();
    a.fsync(notes, false).unwrap();
    a.release(notes, handle).unwrap();
    assert_eq!(read_path(a, &["notes"]), b"a's text, written offline");
    assert!(a.sync_status().pending > 0);
    // B edits the same file and commits first.
    let handle = b.open_file(notes).unwrap();
    b.write(notes, handle, 0, b"b's text").unwrap();
    b.release(notes, handle).unwrap();
    b.sync_all().unwrap();

    devices.group.set_online(1, true);
    assert_converged(a, b);
    for volume in [a, b] {
        let entries = names(volume, InodeNo::ROOT);
        let conflicts: Vec<&String> = entries
            .iter()
            .filter(|entry| entry.starts_with("notes (conflict 1 "))
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(conflicts.len(), 1, "{entries:?}");
        assert_eq!(read_path(volume, &["notes"]), b"b's text");
        assert_eq!(
            read_path(volume, &[conflicts[0]]),
            b"a's text, written offline"
        );
    }
}

#[test]
fn two_offline_edits_against_one_remote_edit_lose_nothing() {
    // With counter versions, A's second write ("replaces v + 1") would have
    // overwritten B's edit, which is also v + 1.
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    let file = write_file(a, InodeNo::ROOT, "f", b"base");
    b.apply_committed().unwrap();
    devices.group.set_online(1, false);
    for text in [&b"a one"[..], b"a two"] {
        let handle = a.open_file(file).unwrap();
        a.write(file, handle, 0, text).unwrap();
        a.release(file, handle).unwrap();
    }
    let handle = b.open_file(file).unwrap();
    b.write(file, handle, 0, b"b one").unwrap();
    // fsync waits for the commit (a close only starts the proposal).
    b.fsync(file, false).unwrap();
    b.release(file, handle).unwrap();
    devices.group.set_online(1, true);
    assert_converged(a, b);
    let mut contents: Vec<Vec<u8>> = names(b, InodeNo::ROOT)
        .iter()
        .map(|entry| read_path(b, &[entry]))
        .collect();
    contents.sort();
    assert!(contents.contains(&b"b one".to_vec()), "{contents:?}");
    assert!(contents.contains(&b"a two".to_vec()), "{contents:?}");
    assert_eq!(
        read_path(b, &["f"]),
        b"b one",
        "the first commit wins the name"
    );
}

#[test]
fn an_offline_device_catches_up_on_hundreds_of_ops() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    b.apply_committed().unwrap();
    devices.group.set_online(2, false);
    let dir = a.mkdir(InodeNo::ROOT, name("many"), 0o755, ME).unwrap().ino;
    for index in 0..150u64 {
        let file = format!("file-{index}");
        write_file(
            a,
            dir,
            &file,
            &incompressible(index, 10 + index as usize * 37),
        );
        if index % 3 == 0 {
            a.rename(
                dir,
                name(&file),
                InodeNo::ROOT,
                name(&file),
                RenameFlags::default(),
            )
            .unwrap();
        } else if index % 5 == 0 {
            a.unlink(dir, name(&file)).unwrap();
        }
    }
    a.sync_all().unwrap();
    b.apply_committed().unwrap();
    assert_eq!(
        names(b, InodeNo::ROOT),
        Vec::<String>::new(),
        "offline: nothing arrives"
    );

    devices.group.set_online(2, true);
    assert_converged(a, b);
    assert_eq!(
        read_path(b, &["file-3"]),
        incompressible(3, 10 + 3 * 37),
        "content of a renamed file"
    );
    assert!(b.sync_status().applied_end > 300);
}

#[test]
fn pending_ops_survive_a_crash_and_commit() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let mut volumes = volumes.into_iter();
    let (a, b) = (volumes.next().unwrap(), volumes.next().unwrap());
    devices.group.set_online(1, false);
    write_file(&a, InodeNo::ROOT, "fsynced offline", b"kept");
    let status = a.sync_status();
    assert!(status.pending >= 2 && status.unproposed == 0, "{status:?}");
    a.abandon();

    // Restarted, still offline: its own ops are back in its view.
    let a = devices.open(1);
    assert_eq!(read_path(&a, &["fsynced offline"]), b"kept");
    assert!(a.sync_status().pending >= 2);
    assert_eq!(
        a.sync_status().applied_end,
        devices.group.commit_end(),
        "the database holds committed state only"
    );
    devices.group.set_online(1, true);
    assert_converged(&a, &b);
    assert_eq!(read_path(&b, &["fsynced offline"]), b"kept");
    // The next op does not reuse a seq of the pending ones.
    write_file(&a, InodeNo::ROOT, "after", b"new");
    assert_converged(&a, &b);
    assert_eq!(read_path(&b, &["after"]), b"new");
}

#[test]
fn remote_ops_during_buffered_writes_lose_none_of_them() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    let quiet = write_file(a, InodeNo::ROOT, "quiet", b"0000000000");
    let contested = write_file(a, InodeNo::ROOT, "contested", b"original");
    b.apply_committed().unwrap();

    let quiet_handle = a.open_file(quiet).unwrap();
    a.write(quiet, quiet_handle, 2, b"AA").unwrap();
    let contested_handle = a.open_file(contested).unwrap();
    a.write(contested, contested_handle, 0, b"A's edit")
        .unwrap();
    // Meanwhile B changes the mode of one and the content of the other.
    b.setattr(
        quiet,
        &SetAttr {
            perm: Some(0o640),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    let handle = b.open_file(contested).unwrap();
    b.write(contested, handle, 0, b"B's edit").unwrap();
    b.release(contested, handle).unwrap();
    b.sync_all().unwrap();
    a.apply_committed().unwrap();
    // A still reads its own buffered bytes.
    assert_eq!(a.read(quiet, quiet_handle, 0, 100).unwrap(), b"00AA000000");
    a.release(quiet, quiet_handle).unwrap();
    a.release(contested, contested_handle).unwrap();

    assert_converged(a, b);
    for volume in [a, b] {
        assert_eq!(read_path(volume, &["quiet"]), b"00AA000000");
        assert_eq!(volume.getattr(quiet).unwrap().perm, 0o640);
        assert_eq!(read_path(volume, &["contested"]), b"B's edit");
        let copies: Vec<String> = names(volume, InodeNo::ROOT)
            .into_iter()
            .filter(|entry| entry.starts_with("contested (conflict 1 "))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(read_path(volume, &[&copies[0]]), b"A's edit");
    }
}

fn recorder() -> (RemoteChangeHook, Arc<Mutex<Vec<Invalidation>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let hook: RemoteChangeHook = Arc::new(move |changes: &[Invalidation]| {
        sink.lock().extend_from_slice(changes);
    });
    (hook, seen)
}

fn entry(parent: InodeNo, text: &str) -> Invalidation {
    Invalidation::Entry {
        parent,
        name: OsString::from(text),
    }
}

#[test]
fn the_hook_hears_of_remotely_changed_inodes_and_names() {
    let devices = Devices::new(2);
    let (hook, seen) = recorder();
    let a = devices.open_with(
        1,
        VolumeOptions {
            on_remote_change: Some(hook),
            ..devices.options(1)
        },
    );
    a.grant(DeviceId(2), Rights::Write).unwrap();
    let b = devices.open(2);

    // A's own ops committing tell the kernel nothing.
    write_file(&a, InodeNo::ROOT, "mine", b"1");
    a.apply_committed().unwrap();
    assert_eq!(*seen.lock(), Vec::new());

    let theirs = write_file(&b, InodeNo::ROOT, "theirs", b"2");
    b.rename(
        InodeNo::ROOT,
        name("theirs"),
        InodeNo::ROOT,
        name("renamed"),
        RenameFlags::default(),
    )
    .unwrap();
    let mine = resolve(&a, &["mine"]);
    b.setattr(
        mine,
        &SetAttr {
            perm: Some(0o600),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    b.sync_all().unwrap();
    a.apply_committed().unwrap();
    let changes = std::mem::take(&mut *seen.lock());
    for expected in [
        entry(InodeNo::ROOT, "theirs"),
        entry(InodeNo::ROOT, "renamed"),
        Invalidation::Inode(InodeNo::ROOT),
        Invalidation::Inode(theirs),
        Invalidation::Inode(mine),
    ] {
        assert!(
            changes.contains(&expected),
            "{expected:?} missing from {changes:?}"
        );
    }
    assert!(
        !changes.contains(&entry(InodeNo::ROOT, "mine")),
        "{changes:?}"
    );

    // A's pending create lands under a conflict name: same inode, new name.
    devices.group.set_online(1, false);
    let (attr, handle) = a
        .create(InodeNo::ROOT, name("same"), 0o644, ME, true)
        .unwrap();
    a.write(attr.ino, handle, 0, b"from a").unwrap();
    a.flush(attr.ino, handle).unwrap();
    write_file(&b, InodeNo::ROOT, "same", b"from b");
    devices.group.set_online(1, true);
    a.apply_committed().unwrap();
    let changes = std::mem::take(&mut *seen.lock());
    let conflict = names(&a, InodeNo::ROOT)
        .into_iter()
        .find(|entry| entry.starts_with("same (conflict 1 "))
        .unwrap();
    assert!(
        changes.contains(&entry(InodeNo::ROOT, "same")),
        "{changes:?}"
    );
    assert!(
        changes.contains(&entry(InodeNo::ROOT, &conflict)),
        "{changes:?}"
    );
    assert_eq!(
        resolve(&a, &[&conflict]),
        attr.ino,
        "A's file keeps its inode"
    );
    // A's open handle still writes A's file.
    a.write(attr.ino, handle, 6, b", more").unwrap();
    a.release(attr.ino, handle).unwrap();
    assert_converged(&a, &b);
    assert_eq!(read_path(&b, &[&conflict]), b"from a, more");
    assert_eq!(read_path(&b, &["same"]), b"from b");
}

#[test]
fn a_fresh_device_catches_up_from_a_checkpoint() {
    let devices = Devices::new(3);
    let a = devices.open(1);
    a.grant(DeviceId(3), Rights::Write).unwrap();
    for index in 0..20u64 {
        write_file(
            &a,
            InodeNo::ROOT,
            &format!("before-{index}"),
            &incompressible(index, 5000),
        );
    }
    a.snapshot("first").unwrap();
    a.checkpoint().unwrap();
    let (through, _) = devices.group.member(1).checkpoint().unwrap().unwrap();
    assert!(through > 20, "the log was compacted through slot {through}");
    write_file(&a, InodeNo::ROOT, "after", b"after the checkpoint");

    // Device 3 joins late: the log before the checkpoint is gone.
    let c = devices.open(3);
    assert!(c.sync_status().applied_end > through);
    assert_eq!(read_path(&c, &["before-7"]), incompressible(7, 5000));
    assert_eq!(read_path(&c, &["after"]), b"after the checkpoint");
    assert_eq!(c.snapshots().unwrap(), vec!["first"]);
    write_file(&c, InodeNo::ROOT, "from-c", b"c writes too");
    assert_converged(&a, &c);
}

#[test]
fn a_joined_device_waits_for_genesis_and_for_its_grant() {
    let devices = Devices::new(2);
    // Nobody created the volume yet: a joined device does not make up a root.
    let early = Volume::open_with(
        devices.dirs[1].path(),
        VolumeOptions {
            genesis_wait_ms: 100,
            ..devices.options(2)
        },
    );
    assert!(matches!(early, Err(Error::NoRoot { .. })), "{early:?}");

    let a = devices.open(1);
    let b = devices.open(2);
    assert_eq!(b.getattr(InodeNo::ROOT).unwrap().kind, FileKind::Dir);
    // Not granted yet: refused now, and never applied later.
    assert!(matches!(
        b.mkdir(InodeNo::ROOT, name("too early"), 0o755, ME),
        Err(Error::NotPermitted)
    ));
    a.grant(DeviceId(2), Rights::Write).unwrap();
    b.apply_committed().unwrap();
    b.mkdir(InodeNo::ROOT, name("granted"), 0o755, ME).unwrap();
    assert_converged(&a, &b);
    assert_eq!(names(&a, InodeNo::ROOT), vec!["granted"]);
}

#[test]
fn the_database_holds_exactly_the_committed_log() {
    let devices = Devices::new(2);
    let a = devices.open(1);
    let dir = a.mkdir(InodeNo::ROOT, name("d"), 0o755, ME).unwrap().ino;
    for index in 0..30u64 {
        write_file(
            &a,
            dir,
            &format!("f{index}"),
            &incompressible(index, 100 + index as usize),
        );
    }
    a.rename(
        dir,
        name("f3"),
        InodeNo::ROOT,
        name("top"),
        RenameFlags::default(),
    )
    .unwrap();
    a.sync_all().unwrap();
    // Killed: what is on disk is what the next open starts from.
    a.abandon();
    let a = devices.open(1);
    // A device that never saw any of it replays the log from the start.
    let replayed = devices.open(2);
    replayed.apply_committed().unwrap();
    a.apply_committed().unwrap();
    assert_eq!(a.sync_status().pending, 0);
    assert_eq!(a.image().unwrap(), replayed.image().unwrap());
    assert_eq!(read_path(&replayed, &["top"]), incompressible(3, 103));
}

#[test]
fn a_conflict_copy_goes_where_the_file_was_moved_to() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    let old_dir = a.mkdir(InodeNo::ROOT, name("old"), 0o755, ME).unwrap().ino;
    let new_dir = a.mkdir(InodeNo::ROOT, name("new"), 0o755, ME).unwrap().ino;
    let file = write_file(a, old_dir, "f", b"base");
    b.apply_committed().unwrap();

    let handle = a.open_file(file).unwrap();
    a.write(file, handle, 0, b"A's bytes").unwrap();
    b.rename(
        old_dir,
        name("f"),
        new_dir,
        name("f"),
        RenameFlags::default(),
    )
    .unwrap();
    write_file(b, new_dir, "f", b"B's bytes");
    a.apply_committed().unwrap();
    a.release(file, handle).unwrap();

    assert_converged(a, b);
    assert_eq!(names(b, old_dir), Vec::<String>::new());
    let in_new = names(b, new_dir);
    assert_eq!(in_new.len(), 2, "{in_new:?}");
    assert_eq!(read_path(b, &["new", "f"]), b"B's bytes");
    assert_eq!(read_path(b, &["new", &in_new[1]]), b"A's bytes");
}

#[test]
fn writes_to_a_file_another_device_removed_fail_instead_of_vanishing() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    let file = write_file(a, InodeNo::ROOT, "f", b"base");
    b.apply_committed().unwrap();

    let handle = a.open_file(file).unwrap();
    a.write(file, handle, 0, b"unsaved").unwrap();
    // B removes it; nothing holds it open on B, so B reclaims the inode too.
    b.unlink(InodeNo::ROOT, name("f")).unwrap();
    b.sync_all().unwrap();
    a.apply_committed().unwrap();
    assert!(matches!(a.getattr(file), Err(Error::NotFound)));
    assert!(matches!(a.flush(file, handle), Err(Error::StaleHandle)));
    a.release(file, handle).unwrap();
    assert_converged(a, b);
}

#[test]
fn a_volume_is_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Volume>();
    shareable::<fossil::agreement::MemAgreement>();
}

/// Every file and directory under the root: `(parent, name, ino, kind)`.
fn tree(volume: &Volume) -> Vec<(InodeNo, String, InodeNo, FileKind)> {
    let mut out = Vec::new();
    let mut dirs = vec![InodeNo::ROOT];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = volume.readdir(dir, 0) else {
            continue;
        };
        for entry in entries {
            let text = entry.name.to_string_lossy().into_owned();
            if text == "." || text == ".." {
                continue;
            }
            if entry.attr.kind == FileKind::Dir {
                dirs.push(entry.attr.ino);
            }
            out.push((dir, text, entry.attr.ino, entry.attr.kind));
        }
    }
    out
}

/// Random ops on three devices that go offline and come back at random: when all are
/// online and synced, the three namespaces are identical. `KITH_LONG=1`: more rounds.
#[test]
fn random_ops_on_three_devices_converge() {
    use rand::{Rng, SeedableRng};
    let rounds = if std::env::var_os("KITH_LONG").is_some() {
        40
    } else {
        4
    };
    for seed in 0..rounds {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let devices = Devices::new(3);
        let volumes = devices.open_all();
        let mut online = [true; 3];
        const NAMES: [&str; 4] = ["a", "b", "c", "d"];
        for step in 0..200u64 {
            let index = rng.random_range(0..3);
            let volume = &volumes[index];
            let entries = tree(volume);
            let dirs: Vec<InodeNo> = std::iter::once(InodeNo::ROOT)
                .chain(
                    entries
                        .iter()
                        .filter(|entry| entry.3 == FileKind::Dir)
                        .map(|entry| entry.2),
                )
                .collect();
            let files: Vec<&(InodeNo, String, InodeNo, FileKind)> = entries
                .iter()
                .filter(|entry| entry.3 == FileKind::File)
                .collect();
            let dir = dirs[rng.random_range(0..dirs.len())];
            let new_name = NAMES[rng.random_range(0..NAMES.len())];
            // Failures (a name taken, a directory not empty) are fine: the point is
            // that whatever happened, every device ends up with the same tree.
            match rng.random_range(0..100) {
                0..3 => {
                    online[index] = !online[index];
                    devices.group.set_online(index as u32 + 1, online[index]);
                }
                3..5 => devices.group.set_held(rng.random_bool(0.6)),
                5..8 => devices
                    .group
                    .commit_some(index as u32 + 1, rng.random_range(1..4)),
                8..25 => {
                    if let Ok((attr, handle)) = volume.create(dir, name(new_name), 0o644, ME, false)
                    {
                        let _ = volume.write(attr.ino, handle, 0, &incompressible(step, 50));
                        let _ = volume.release(attr.ino, handle);
                    }
                }
                25..45 if !files.is_empty() => {
                    let file = files[rng.random_range(0..files.len())].2;
                    if let Ok(handle) = volume.open_file(file) {
                        let offset = rng.random_range(0..100);
                        let len = if rng.random_bool(0.2) { 9000 } else { 20 };
                        let _ = volume.write(file, handle, offset, &incompressible(step, len));
                        if rng.random_bool(0.5) {
                            let _ = volume.fsync(file, false);
                        }
                        let _ = volume.release(file, handle);
                    }
                }
                45..55 => {
                    let _ = volume.mkdir(dir, name(new_name), 0o755, ME);
                }
                55..70 if !entries.is_empty() => {
                    let (parent, old, _, _) = &entries[rng.random_range(0..entries.len())];
                    let _ = volume.rename(
                        *parent,
                        name(old),
                        dir,
                        name(new_name),
                        RenameFlags::default(),
                    );
                }
                70..80 if !entries.is_empty() => {
                    let (parent, old, _, kind) = &entries[rng.random_range(0..entries.len())];
                    let _ = if *kind == FileKind::Dir {
                        volume.rmdir(*parent, name(old))
                    } else {
                        volume.unlink(*parent, name(old))
                    };
                }
                80..88 if !entries.is_empty() => {
                    let ino = entries[rng.random_range(0..entries.len())].2;
                    let perm = SetAttr {
                        perm: Some(0o600 + rng.random_range(0..8)),
                        ..SetAttr::default()
                    };
                    let _ = volume.setattr(ino, &perm, None);
                    let _ =
                        volume.setxattr(ino, name("user.k"), &[step as u8], XattrFlags::default());
                }
                88..94 => volume.apply_committed().unwrap(),
                _ => volume.sync_all().unwrap(),
            }
        }
        devices.group.set_held(false);
        for device in 1..=3 {
            devices.group.set_online(device, true);
        }
        for _ in 0..2 {
            for volume in &volumes {
                volume.sync_all().unwrap();
            }
            for volume in &volumes {
                volume.apply_committed().unwrap();
            }
        }
        let first = volumes[0].image().unwrap();
        for volume in &volumes[1..] {
            assert_eq!(volume.sync_status().pending, 0, "seed {seed}");
            assert_eq!(volume.image().unwrap(), first, "seed {seed}");
        }
        assert!(first.inodes.len() > 3, "seed {seed}: the run did something");
    }
}

#[test]
fn a_remote_op_committing_before_own_pending_ones_is_applied_under_them() {
    let devices = Devices::new(2);
    let volumes = devices.open_all();
    let (a, b) = (&volumes[0], &volumes[1]);
    devices.group.set_held(true);
    a.mkdir(InodeNo::ROOT, name("from-a"), 0o755, ME).unwrap();
    a.sync_all().unwrap();
    b.mkdir(InodeNo::ROOT, name("from-b"), 0o755, ME).unwrap();
    b.sync_all().unwrap();
    // B's op commits first; A's stays queued.
    devices.group.commit_some(2, usize::MAX);
    a.apply_committed().unwrap();
    assert_eq!(names(a, InodeNo::ROOT), vec!["from-a", "from-b"]);
    assert_eq!(a.sync_status().pending, 1);
    assert_eq!(a.sync_status().applied_end, devices.group.commit_end());
    devices.group.set_held(false);
    assert_converged(a, b);
    assert_eq!(names(b, InodeNo::ROOT), vec!["from-a", "from-b"]);
}

#[test]
fn a_close_after_writing_reaches_the_other_device_without_an_fsync() {
    let devices = Devices::new(2);
    // A's timer would only commit after a minute: what arrives sooner was proposed
    // because of the close.
    let a = &devices.open_with(
        1,
        VolumeOptions {
            commit_interval_ms: 60_000,
            ..devices.options(1)
        },
    );
    a.grant(DeviceId(2), Rights::Write).unwrap();
    let b = &devices.open(2);
    let (attr, handle) = a
        .create(InodeNo::ROOT, name("closed"), 0o644, ME, false)
        .unwrap();
    a.write(attr.ino, handle, 0, b"no fsync").unwrap();
    a.release(attr.ino, handle).unwrap();
    // The close returned without waiting; the background thread proposes at once
    // rather than at the end of its interval, so B sees it well within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        b.apply_committed().unwrap();
        if names(b, InodeNo::ROOT).contains(&"closed".to_string()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reached B");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(read_path(b, &["closed"]), b"no fsync");
}

#[test]
fn a_replicated_volume_refuses_to_open_on_a_local_log() {
    let devices = Devices::new(1);
    let volume = devices.open(1);
    write_file(&volume, InodeNo::ROOT, "kept", b"still here");
    drop(volume);
    // A local log would find the namespace ahead of it and rebuild it from nothing.
    let local = Volume::open(devices.dirs[0].path());
    assert!(
        matches!(local, Err(Error::Invalid(_))),
        "opened: {:?}",
        local.map(|_| ())
    );
    let volume = devices.open(1);
    assert_eq!(read_path(&volume, &["kept"]), b"still here");
}
