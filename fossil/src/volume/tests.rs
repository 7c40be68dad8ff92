//! POSIX corner cases of `Volume`, one test per behaviour.

use std::ffi::OsStr;
use std::sync::Arc;

use super::*;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

struct Fixture {
    dir: tempfile::TempDir,
    content: Arc<MemContent>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            content: Arc::new(MemContent::new()),
        }
    }

    fn open(&self) -> Volume {
        let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&self.content));
        Volume::open_with(
            self.dir.path(),
            VolumeOptions {
                content: Some(content),
                background: false,
                ..VolumeOptions::default()
            },
        )
        .unwrap()
    }
}

fn name(text: &str) -> &OsStr {
    OsStr::new(text)
}

fn create_with(volume: &Volume, parent: InodeNo, file: &str, bytes: &[u8]) -> InodeNo {
    let (attr, handle) = volume.create(parent, name(file), 0o644, ME, true).unwrap();
    volume.write(attr.ino, handle, 0, bytes).unwrap();
    volume.release(attr.ino, handle).unwrap();
    attr.ino
}

fn read_all(volume: &Volume, ino: InodeNo) -> Vec<u8> {
    let handle = volume.open_file(ino).unwrap();
    let size = volume.getattr(ino).unwrap().size;
    let bytes = volume.read(ino, handle, 0, size as u32 + 10).unwrap();
    volume.release(ino, handle).unwrap();
    bytes
}

fn names(volume: &Volume, dir: InodeNo) -> Vec<String> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let entries = volume.readdir(dir, cookie).unwrap();
        let Some(last) = entries.last() else { break };
        cookie = last.cookie;
        out.extend(
            entries
                .iter()
                .map(|entry| entry.name.to_string_lossy().into_owned()),
        );
    }
    out
}

#[test]
fn fresh_volume_has_a_root_directory() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let root = volume.getattr(InodeNo::ROOT).unwrap();
    assert_eq!(root.kind, FileKind::Dir);
    assert_eq!(root.nlink, 2);
    assert_eq!(names(&volume, InodeNo::ROOT), vec![".", ".."]);
}

#[test]
fn small_and_large_files_round_trip_and_survive_reopen() {
    let fixture = Fixture::new();
    let big: Vec<u8> = (0..300_000u32)
        .map(|index| (index * 7 % 251) as u8)
        .collect();
    let (small_ino, big_ino) = {
        let volume = fixture.open();
        let small = create_with(&volume, InodeNo::ROOT, "small", b"hello");
        let big_ino = create_with(&volume, InodeNo::ROOT, "big", &big);
        assert_eq!(read_all(&volume, small), b"hello");
        assert_eq!(read_all(&volume, big_ino), big);
        (small, big_ino)
    };
    let volume = fixture.open();
    assert_eq!(
        volume.lookup(InodeNo::ROOT, name("small")).unwrap().ino,
        small_ino
    );
    assert_eq!(read_all(&volume, small_ino), b"hello");
    assert_eq!(read_all(&volume, big_ino), big);
    assert!(
        fixture.content.blob_count() > 0,
        "large content went to the store"
    );
}

#[test]
fn reads_see_buffered_writes_before_flush() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let (attr, handle) = volume
        .create(InodeNo::ROOT, name("f"), 0o644, ME, true)
        .unwrap();
    volume.write(attr.ino, handle, 0, b"abcdef").unwrap();
    volume.write(attr.ino, handle, 2, b"XY").unwrap();
    assert_eq!(volume.read(attr.ino, handle, 0, 100).unwrap(), b"abXYef");
    assert_eq!(volume.getattr(attr.ino).unwrap().size, 6);
    volume.write(attr.ino, handle, 10, b"z").unwrap();
    assert_eq!(
        volume.read(attr.ino, handle, 0, 100).unwrap(),
        b"abXYef\0\0\0\0z"
    );
}

#[test]
fn hard_links_share_an_inode_and_count_links() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let ino = create_with(&volume, InodeNo::ROOT, "a", b"data");
    let dir = volume.mkdir(InodeNo::ROOT, name("d"), 0o755, ME).unwrap();
    let linked = volume.link(ino, dir.ino, name("b")).unwrap();
    assert_eq!(linked.ino, ino);
    assert_eq!(linked.nlink, 2);
    assert_eq!(volume.lookup(dir.ino, name("b")).unwrap().ino, ino);
    volume.unlink(InodeNo::ROOT, name("a")).unwrap();
    assert_eq!(volume.getattr(ino).unwrap().nlink, 1);
    assert_eq!(read_all(&volume, ino), b"data");
    assert!(matches!(
        volume.link(dir.ino, InodeNo::ROOT, name("dirlink")),
        Err(Error::NotPermitted)
    ));
    assert!(matches!(
        volume.link(ino, dir.ino, name("b")),
        Err(Error::Exists)
    ));
}

#[test]
fn directory_link_counts_follow_subdirectories() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let a = volume.mkdir(InodeNo::ROOT, name("a"), 0o755, ME).unwrap();
    assert_eq!(volume.getattr(InodeNo::ROOT).unwrap().nlink, 3);
    let b = volume.mkdir(a.ino, name("b"), 0o755, ME).unwrap();
    assert_eq!(volume.getattr(a.ino).unwrap().nlink, 3);
    volume
        .rename(
            a.ino,
            name("b"),
            InodeNo::ROOT,
            name("b"),
            RenameFlags::default(),
        )
        .unwrap();
    assert_eq!(volume.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(volume.getattr(InodeNo::ROOT).unwrap().nlink, 4);
    assert_eq!(volume.lookup(b.ino, name("..")).unwrap().ino, InodeNo::ROOT);
    volume.rmdir(InodeNo::ROOT, name("b")).unwrap();
    assert_eq!(volume.getattr(InodeNo::ROOT).unwrap().nlink, 3);
}

#[test]
fn unlink_and_rmdir_check_kinds_and_emptiness() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let dir = volume.mkdir(InodeNo::ROOT, name("d"), 0o755, ME).unwrap();
    create_with(&volume, dir.ino, "f", b"");
    assert!(matches!(
        volume.rmdir(InodeNo::ROOT, name("d")),
        Err(Error::NotEmpty)
    ));
    assert!(matches!(
        volume.unlink(InodeNo::ROOT, name("d")),
        Err(Error::IsDir)
    ));
    assert!(matches!(
        volume.rmdir(dir.ino, name("f")),
        Err(Error::NotDir)
    ));
    assert!(matches!(
        volume.unlink(dir.ino, name("missing")),
        Err(Error::NotFound)
    ));
    volume.unlink(dir.ino, name("f")).unwrap();
    volume.rmdir(InodeNo::ROOT, name("d")).unwrap();
    assert!(matches!(
        volume.lookup(InodeNo::ROOT, name("d")),
        Err(Error::NotFound)
    ));
}

#[test]
fn rename_replaces_files_and_empty_directories_only() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let a = create_with(&volume, InodeNo::ROOT, "a", b"A");
    let b = create_with(&volume, InodeNo::ROOT, "b", b"B");
    volume
        .rename(
            InodeNo::ROOT,
            name("a"),
            InodeNo::ROOT,
            name("b"),
            RenameFlags::default(),
        )
        .unwrap();
    assert_eq!(volume.lookup(InodeNo::ROOT, name("b")).unwrap().ino, a);
    assert!(matches!(
        volume.lookup(InodeNo::ROOT, name("a")),
        Err(Error::NotFound)
    ));
    assert_eq!(
        volume.getattr(b).unwrap().nlink,
        0,
        "the kernel still holds the replaced file"
    );
    volume.forget(b, 1);
    assert!(
        matches!(volume.getattr(b), Err(Error::NotFound)),
        "replaced file is reclaimed"
    );
    let d1 = volume.mkdir(InodeNo::ROOT, name("d1"), 0o755, ME).unwrap();
    let d2 = volume.mkdir(InodeNo::ROOT, name("d2"), 0o755, ME).unwrap();
    assert!(matches!(
        volume.rename(
            InodeNo::ROOT,
            name("b"),
            InodeNo::ROOT,
            name("d1"),
            RenameFlags::default()
        ),
        Err(Error::IsDir)
    ));
    assert!(matches!(
        volume.rename(
            InodeNo::ROOT,
            name("d1"),
            InodeNo::ROOT,
            name("b"),
            RenameFlags::default()
        ),
        Err(Error::NotDir)
    ));
    create_with(&volume, d2.ino, "inside", b"");
    assert!(matches!(
        volume.rename(
            InodeNo::ROOT,
            name("d1"),
            InodeNo::ROOT,
            name("d2"),
            RenameFlags::default()
        ),
        Err(Error::NotEmpty)
    ));
    assert!(matches!(
        volume.rename(
            InodeNo::ROOT,
            name("d2"),
            d2.ino,
            name("x"),
            RenameFlags::default()
        ),
        Err(Error::Invalid(_))
    ));
    volume
        .rename(
            InodeNo::ROOT,
            name("d2"),
            InodeNo::ROOT,
            name("d1"),
            RenameFlags::default(),
        )
        .unwrap();
    assert_eq!(
        volume.lookup(InodeNo::ROOT, name("d1")).unwrap().ino,
        d2.ino
    );
    volume.forget(d1.ino, 1);
    assert!(matches!(volume.getattr(d1.ino), Err(Error::NotFound)));
    assert_eq!(volume.getattr(InodeNo::ROOT).unwrap().nlink, 3);
}

#[test]
fn rename_noreplace_and_exchange() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let a = create_with(&volume, InodeNo::ROOT, "a", b"A");
    let dir = volume.mkdir(InodeNo::ROOT, name("d"), 0o755, ME).unwrap();
    let b = create_with(&volume, dir.ino, "b", b"B");
    let no_replace = RenameFlags {
        no_replace: true,
        exchange: false,
    };
    let exchange = RenameFlags {
        no_replace: false,
        exchange: true,
    };
    assert!(matches!(
        volume.rename(InodeNo::ROOT, name("a"), dir.ino, name("b"), no_replace),
        Err(Error::Exists)
    ));
    assert!(matches!(
        volume.rename(InodeNo::ROOT, name("a"), dir.ino, name("zz"), exchange),
        Err(Error::NotFound)
    ));
    volume
        .rename(InodeNo::ROOT, name("a"), dir.ino, name("b"), exchange)
        .unwrap();
    assert_eq!(volume.lookup(InodeNo::ROOT, name("a")).unwrap().ino, b);
    assert_eq!(volume.lookup(dir.ino, name("b")).unwrap().ino, a);
    // Exchange a directory with a file across parents: link counts follow.
    let sub = volume.mkdir(dir.ino, name("sub"), 0o755, ME).unwrap();
    volume
        .rename(dir.ino, name("sub"), InodeNo::ROOT, name("a"), exchange)
        .unwrap();
    assert_eq!(
        volume.lookup(InodeNo::ROOT, name("a")).unwrap().ino,
        sub.ino
    );
    assert_eq!(
        volume.lookup(sub.ino, name("..")).unwrap().ino,
        InodeNo::ROOT
    );
    assert_eq!(volume.getattr(dir.ino).unwrap().nlink, 2);
    assert_eq!(volume.getattr(InodeNo::ROOT).unwrap().nlink, 4);
}

#[test]
fn unlinked_open_file_lives_until_release_and_fsync_works() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let (attr, handle) = volume
        .create(InodeNo::ROOT, name("tmp"), 0o600, ME, true)
        .unwrap();
    volume.write(attr.ino, handle, 0, b"still here").unwrap();
    volume.unlink(InodeNo::ROOT, name("tmp")).unwrap();
    volume.fsync(attr.ino, false).unwrap();
    assert_eq!(volume.getattr(attr.ino).unwrap().nlink, 0);
    assert_eq!(
        volume.read(attr.ino, handle, 0, 100).unwrap(),
        b"still here"
    );
    volume.release(attr.ino, handle).unwrap();
    // The kernel still holds the lookup from create.
    assert!(volume.getattr(attr.ino).is_ok());
    volume.forget(attr.ino, 1);
    assert!(matches!(volume.getattr(attr.ino), Err(Error::NotFound)));
}

#[test]
fn names_longer_than_name_max_are_refused() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let long = "x".repeat(256);
    assert!(matches!(
        volume.mkdir(InodeNo::ROOT, name(&long), 0o755, ME),
        Err(Error::NameTooLong { len: 256, max: 255 })
    ));
    assert!(matches!(
        volume.lookup(InodeNo::ROOT, name(&long)),
        Err(Error::NameTooLong { .. })
    ));
    volume
        .mkdir(InodeNo::ROOT, name(&long[..255]), 0o755, ME)
        .unwrap();
    assert_eq!(volume.statfs().unwrap().name_len_max, 255);
}

#[test]
fn xattr_create_and_replace_flags() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let ino = create_with(&volume, InodeNo::ROOT, "f", b"");
    let create = XattrFlags {
        create: true,
        replace: false,
    };
    let replace = XattrFlags {
        create: false,
        replace: true,
    };
    assert!(matches!(
        volume.setxattr(ino, name("user.a"), b"1", replace),
        Err(Error::NoAttribute)
    ));
    volume.setxattr(ino, name("user.a"), b"1", create).unwrap();
    assert!(matches!(
        volume.setxattr(ino, name("user.a"), b"2", create),
        Err(Error::Exists)
    ));
    volume.setxattr(ino, name("user.a"), b"2", replace).unwrap();
    volume
        .setxattr(ino, name("user.b"), b"", XattrFlags::default())
        .unwrap();
    assert_eq!(volume.getxattr(ino, name("user.a")).unwrap(), b"2");
    assert_eq!(
        volume.listxattr(ino).unwrap(),
        vec![OsString::from("user.a"), OsString::from("user.b")]
    );
    volume.removexattr(ino, name("user.a")).unwrap();
    assert!(matches!(
        volume.getxattr(ino, name("user.a")),
        Err(Error::NoAttribute)
    ));
    assert!(matches!(
        volume.removexattr(ino, name("user.a")),
        Err(Error::NoAttribute)
    ));
}

#[test]
fn setattr_truncates_and_sets_times_and_modes() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let ino = create_with(&volume, InodeNo::ROOT, "f", b"0123456789");
    let before = volume.getattr(ino).unwrap();
    let attr = volume
        .setattr(
            ino,
            &SetAttr {
                size: Some(4),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(attr.size, 4);
    assert!(attr.ctime >= before.ctime);
    // Growing again shows zeros, never the old tail.
    volume
        .setattr(
            ino,
            &SetAttr {
                size: Some(8),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(read_all(&volume, ino), b"0123\0\0\0\0");
    let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let attr = volume
        .setattr(
            ino,
            &SetAttr {
                perm: Some(0o4750),
                mtime: Some(TimeSet::At(at)),
                uid: Some(7),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(attr.perm, 0o4750);
    assert_eq!(attr.mtime, at);
    assert_eq!(attr.uid, 7);
    assert!(attr.ctime > at);
}

#[test]
fn fallocate_punch_hole_zero_range_and_keep_size() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let ino = create_with(&volume, InodeNo::ROOT, "f", &[7u8; 100]);
    volume
        .fallocate(
            ino,
            10,
            20,
            FallocateMode {
                punch_hole: true,
                keep_size: true,
                zero_range: false,
            },
        )
        .unwrap();
    let bytes = read_all(&volume, ino);
    assert_eq!(bytes.len(), 100);
    assert!(bytes[10..30].iter().all(|&b| b == 0));
    assert!(bytes[..10].iter().chain(&bytes[30..]).all(|&b| b == 7));
    volume
        .fallocate(
            ino,
            90,
            50,
            FallocateMode {
                keep_size: true,
                ..FallocateMode::default()
            },
        )
        .unwrap();
    assert_eq!(volume.getattr(ino).unwrap().size, 100);
    volume
        .fallocate(ino, 90, 50, FallocateMode::default())
        .unwrap();
    assert_eq!(volume.getattr(ino).unwrap().size, 140);
    volume
        .fallocate(
            ino,
            95,
            100,
            FallocateMode {
                zero_range: true,
                ..FallocateMode::default()
            },
        )
        .unwrap();
    let bytes = read_all(&volume, ino);
    assert_eq!(bytes.len(), 195);
    assert!(bytes[95..].iter().all(|&b| b == 0));
    assert!(matches!(
        volume.fallocate(
            ino,
            0,
            10,
            FallocateMode {
                punch_hole: true,
                ..FallocateMode::default()
            }
        ),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn lseek_data_and_hole() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let ino = create_with(&volume, InodeNo::ROOT, "f", &[1u8; 50]);
    assert_eq!(volume.lseek(ino, 10, SeekTo::Data).unwrap(), 10);
    assert_eq!(volume.lseek(ino, 10, SeekTo::Hole).unwrap(), 50);
    assert!(matches!(
        volume.lseek(ino, 50, SeekTo::Data),
        Err(Error::SeekPastEnd)
    ));
}

#[test]
fn copy_file_range_copies_bytes() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let source: Vec<u8> = (0..50_000u32).map(|index| index as u8).collect();
    let from = create_with(&volume, InodeNo::ROOT, "from", &source);
    let to = create_with(&volume, InodeNo::ROOT, "to", b"xx");
    assert_eq!(
        volume.copy_file_range(from, 100, to, 2, 1_000_000).unwrap(),
        49_900
    );
    let bytes = read_all(&volume, to);
    assert_eq!(&bytes[..2], b"xx");
    assert_eq!(&bytes[2..], &source[100..]);
}

#[test]
fn snapshots_are_read_only_views_of_the_past() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let dir = volume
        .mkdir(InodeNo::ROOT, name("docs"), 0o755, ME)
        .unwrap();
    let big: Vec<u8> = vec![3u8; 100_000];
    let file = create_with(&volume, dir.ino, "note", b"version 1");
    create_with(&volume, dir.ino, "big", &big);
    volume.snapshot("monday").unwrap();
    let handle = volume.open_file(file).unwrap();
    volume.write(file, handle, 0, b"version 2").unwrap();
    volume.release(file, handle).unwrap();
    let snapshots = volume.lookup(InodeNo::ROOT, name(".snapshots")).unwrap();
    assert!(names(&volume, InodeNo::ROOT).contains(&".snapshots".to_string()));
    assert_eq!(names(&volume, snapshots.ino), vec![".", "..", "monday"]);
    let monday = volume.lookup(snapshots.ino, name("monday")).unwrap();
    let old_docs = volume.lookup(monday.ino, name("docs")).unwrap();
    let old_note = volume.lookup(old_docs.ino, name("note")).unwrap();
    assert_ne!(old_note.ino, file);
    assert_eq!(read_all(&volume, old_note.ino), b"version 1");
    assert_eq!(read_all(&volume, file), b"version 2");
    let old_big = volume.lookup(old_docs.ino, name("big")).unwrap();
    assert_eq!(read_all(&volume, old_big.ino), big);
    assert_eq!(names(&volume, old_docs.ino), vec![".", "..", "big", "note"]);
    assert!(matches!(
        volume.mkdir(old_docs.ino, name("x"), 0o755, ME),
        Err(Error::ReadOnly)
    ));
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert!(matches!(
        volume.setattr(old_note.ino, &truncate, None),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        volume.unlink(old_docs.ino, name("note")),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(volume.snapshot("monday"), Err(Error::Exists)));
    drop(volume);
    // Snapshots survive a restart.
    let volume = fixture.open();
    assert_eq!(volume.snapshots().unwrap(), vec!["monday".to_string()]);
    let snapshots = volume.lookup(InodeNo::ROOT, name(".snapshots")).unwrap();
    let monday = volume.lookup(snapshots.ino, name("monday")).unwrap();
    let old_docs = volume.lookup(monday.ino, name("docs")).unwrap();
    let old_note = volume.lookup(old_docs.ino, name("note")).unwrap();
    assert_eq!(read_all(&volume, old_note.ino), b"version 1");
}

#[test]
fn checkpoint_truncates_the_log_and_a_lost_namespace_rebuilds_from_it() {
    let fixture = Fixture::new();
    {
        let volume = fixture.open();
        create_with(&volume, InodeNo::ROOT, "before", b"1");
        volume.checkpoint().unwrap();
        create_with(&volume, InodeNo::ROOT, "after", b"2");
        volume.sync_all().unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(fixture.dir.path().join(format!("namespace.sqlite{suffix}")));
    }
    let volume = fixture.open();
    let before = volume.lookup(InodeNo::ROOT, name("before")).unwrap();
    let after = volume.lookup(InodeNo::ROOT, name("after")).unwrap();
    assert_eq!(read_all(&volume, before.ino), b"1");
    assert_eq!(read_all(&volume, after.ino), b"2");
}

#[test]
fn namespace_ahead_of_the_log_is_rebuilt_from_the_log() {
    let fixture = Fixture::new();
    {
        let volume = fixture.open();
        create_with(&volume, InodeNo::ROOT, "kept", b"1");
        volume.sync_all().unwrap();
    }
    let log_path = fixture.dir.path().join("log");
    let kept_len = std::fs::metadata(&log_path).unwrap().len();
    {
        let volume = fixture.open();
        create_with(&volume, InodeNo::ROOT, "lost", b"2");
        volume.sync_all().unwrap();
    }
    // A power cut kept the namespace's commit but not the log's tail.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log_path)
        .unwrap()
        .set_len(kept_len)
        .unwrap();
    let volume = fixture.open();
    assert!(volume.lookup(InodeNo::ROOT, name("kept")).is_ok());
    assert!(matches!(
        volume.lookup(InodeNo::ROOT, name("lost")),
        Err(Error::NotFound)
    ));
    create_with(&volume, InodeNo::ROOT, "new", b"3");
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let dir = volume
        .mkdir(
            InodeNo::ROOT,
            name("shared"),
            0o2775,
            Caller { uid: 1, gid: 50 },
        )
        .unwrap();
    let sub = volume.mkdir(dir.ino, name("sub"), 0o755, ME).unwrap();
    assert_eq!(sub.gid, 50);
    assert_eq!(sub.perm & 0o2000, 0o2000);
    let (file, _) = volume.create(dir.ino, name("f"), 0o644, ME, true).unwrap();
    assert_eq!(file.gid, 50);
    assert_eq!(file.perm & 0o2000, 0);
    // Sticky and set-id bits are kept as given: the kernel enforces them.
    let sticky = volume
        .mkdir(InodeNo::ROOT, name("tmp"), 0o1777, ME)
        .unwrap();
    assert_eq!(sticky.perm, 0o1777);
    let attr = volume
        .setattr(
            file.ino,
            &SetAttr {
                perm: Some(0o6755),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(attr.perm, 0o6755);
}

#[test]
fn creates_update_parent_times_and_special_files_work() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let before = volume.getattr(InodeNo::ROOT).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let fifo = volume
        .mknod(InodeNo::ROOT, name("fifo"), FileKind::Fifo, 0o644, 0, ME)
        .unwrap();
    assert_eq!(fifo.kind, FileKind::Fifo);
    let after = volume.getattr(InodeNo::ROOT).unwrap();
    assert!(after.mtime > before.mtime && after.ctime > before.ctime);
    let link = volume
        .symlink(InodeNo::ROOT, name("ln"), Path::new("../target"), ME)
        .unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.size, 9);
    assert_eq!(volume.readlink(link.ino).unwrap(), b"../target");
    assert!(matches!(
        volume.mkdir(InodeNo::ROOT, name("fifo"), 0o755, ME),
        Err(Error::Exists)
    ));
    assert!(matches!(
        volume.create(InodeNo::ROOT, name("fifo"), 0o644, ME, true),
        Err(Error::Exists)
    ));
}

#[test]
fn default_volume_stores_content_sealed_in_venti() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = vec![0u8; 2_000_000];
    rand::RngCore::fill_bytes(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7),
        &mut big,
    );
    let ino = {
        let volume = Volume::open(dir.path()).unwrap();
        let (attr, handle) = volume
            .create(InodeNo::ROOT, name("big"), 0o644, ME, true)
            .unwrap();
        for (index, piece) in big.chunks(128 << 10).enumerate() {
            volume
                .write(attr.ino, handle, (index * (128 << 10)) as u64, piece)
                .unwrap();
        }
        volume.fsync(attr.ino, false).unwrap();
        volume.release(attr.ino, handle).unwrap();
        // An edit in the middle of the now-committed file.
        let handle = volume.open_file(attr.ino).unwrap();
        volume.write(attr.ino, handle, 1_000_000, b"EDIT").unwrap();
        volume.release(attr.ino, handle).unwrap();
        attr.ino
    };
    let mut expected = big.clone();
    expected[1_000_000..1_000_004].copy_from_slice(b"EDIT");
    let volume = Volume::open(dir.path()).unwrap();
    assert_eq!(read_all(&volume, ino), expected);
    // Nothing of the content is stored in the clear.
    let mut arena_bytes = Vec::new();
    let mut dirs = vec![dir.path().join("blocks")];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                arena_bytes.extend(std::fs::read(path).unwrap());
            }
        }
    }
    assert!(arena_bytes.len() > 1_000_000);
    assert!(
        !arena_bytes
            .windows(64)
            .any(|window| window == &big[500_000..500_064])
    );
}

#[test]
fn read_ahead_serves_sequential_and_random_reads_and_sees_rewrites() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    // Several read-ahead windows, each fetched ahead; odd-sized reads straddle them.
    let mut data = vec![0u8; 10_000_000];
    rand::RngCore::fill_bytes(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3),
        &mut data,
    );
    let ino = create_with(&volume, InodeNo::ROOT, "big", &data);
    let read_sequentially = |volume: &Volume| {
        let handle = volume.open_file(ino).unwrap();
        let mut out = Vec::new();
        loop {
            let piece = volume.read(ino, handle, out.len() as u64, 100_000).unwrap();
            if piece.is_empty() {
                break;
            }
            out.extend(piece);
        }
        volume.release(ino, handle).unwrap();
        out
    };
    assert!(read_sequentially(&volume) == data);
    for (offset, len) in [
        (9_999_990u64, 100u32),
        (17, 3),
        (2_100_000, 300_000),
        (0, 10),
    ] {
        let handle = volume.open_file(ino).unwrap();
        let end = (offset as usize + len as usize).min(data.len());
        assert!(volume.read(ino, handle, offset, len).unwrap() == data[offset as usize..end]);
        volume.release(ino, handle).unwrap();
    }
    let handle = volume.open_file(ino).unwrap();
    volume.write(ino, handle, 1_000_000, b"changed").unwrap();
    volume.release(ino, handle).unwrap();
    data[1_000_000..1_000_007].copy_from_slice(b"changed");
    assert!(read_sequentially(&volume) == data);
}

/// A venti content store that counts how content reaches it: whole (a writer, or
/// `write_all`) or as edits.
#[derive(Debug)]
struct CountingContent {
    venti: Arc<VentiContent>,
    whole_bytes: std::sync::atomic::AtomicU64,
    edits: std::sync::atomic::AtomicU64,
}

impl CountingContent {
    fn whole_bytes(&self) -> u64 {
        self.whole_bytes.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn edits(&self) -> u64 {
        self.edits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct CountingWriter {
    inner: Box<dyn ContentWriter>,
    whole_bytes: Arc<CountingContent>,
}

impl ContentWriter for CountingWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.whole_bytes
            .whole_bytes
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn finish(self: Box<Self>) -> Result<BlockRef> {
        self.inner.finish()
    }
}

impl ContentStore for Arc<CountingContent> {
    fn writer(&self) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(CountingWriter {
            inner: self.venti.writer()?,
            whole_bytes: Arc::clone(self),
        }))
    }

    fn write_all(&self, bytes: &[u8]) -> Result<BlockRef> {
        self.whole_bytes
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
        self.venti.write_all(bytes)
    }

    fn edit(
        &self,
        base: &BlockRef,
        new_len: u64,
        changed: &[(u64, u64)],
        read_new: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>>,
    ) -> Result<Option<BlockRef>> {
        self.edits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.venti.edit(base, new_len, changed, read_new)
    }

    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.venti.read(root, offset, len)
    }

    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        self.venti.write_meta(bytes)
    }

    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        self.venti.read_meta(root)
    }

    fn sync(&self) -> Result<()> {
        self.venti.sync()
    }
}

/// A volume on a real venti store in `dir`, and that store (to count its blocks and
/// how content reached it).
fn venti_volume(dir: &Path) -> (Volume, Arc<CountingContent>) {
    let counting = Arc::new(CountingContent {
        venti: Arc::new(VentiContent::open_dir(dir).unwrap()),
        whole_bytes: Default::default(),
        edits: Default::default(),
    });
    let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&counting));
    let options = VolumeOptions {
        content: Some(content),
        background: false,
        ..VolumeOptions::default()
    };
    (Volume::open_with(dir, options).unwrap(), counting)
}

fn content_of(volume: &Volume, ino: InodeNo) -> Content {
    let state = volume.shared.state.lock();
    state.ns.inode(ino).unwrap().unwrap().content
}

fn stored_blocks(content: &CountingContent) -> u64 {
    content.venti.store().stats().unwrap().blocks
}

#[test]
fn small_edits_of_a_large_file_store_only_the_edited_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, venti) = venti_volume(dir.path());
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let mut data = vec![0u8; 32 << 20];
    rand::RngCore::fill_bytes(&mut rng, &mut data);
    let ino = create_with(&volume, InodeNo::ROOT, "db", &data);
    volume.fsync(ino, true).unwrap();
    let whole_bytes = venti.whole_bytes();
    let mut added_max = 0;
    for round in 0..200 {
        let offset = rand::Rng::random_range(&mut rng, 0..data.len() - 4096);
        let len = rand::Rng::random_range(&mut rng, 1..4096);
        let mut bytes = vec![0u8; len];
        rand::RngCore::fill_bytes(&mut rng, &mut bytes);
        let before = stored_blocks(&venti);
        let handle = volume.open_file(ino).unwrap();
        volume.write(ino, handle, offset as u64, &bytes).unwrap();
        volume.fsync(ino, true).unwrap();
        volume.release(ino, handle).unwrap();
        data[offset..offset + len].copy_from_slice(&bytes);
        // One or two leaves (an edit may straddle a cut, or move one), and one
        // pointer block per level (two levels at 32 MiB), two where a boundary moved.
        let added = stored_blocks(&venti) - before;
        assert!(added <= 8, "round {round}: {added} blocks for {len} bytes");
        added_max = added_max.max(added);
        let content = content_of(&volume, ino);
        assert!(
            matches!(&content, Content::Tree(root) if root.length == data.len() as u64),
            "round {round}: {content:?}"
        );
        if round % 50 == 0 {
            assert!(read_all(&volume, ino) == data, "round {round}");
        }
    }
    assert!(added_max >= 2, "edits stored nothing new");
    // Every flush was an edit: no content went to the store whole.
    assert_eq!(venti.edits(), 200);
    assert_eq!(venti.whole_bytes(), whole_bytes);
    assert!(read_all(&volume, ino) == data);
    drop(volume);
    let (volume, _venti) = venti_volume(dir.path());
    assert!(read_all(&volume, ino) == data);
    // Truncating and appending are edits at the end.
    volume
        .setattr(
            ino,
            &SetAttr {
                size: Some(20_000_000),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    let handle = volume.open_file(ino).unwrap();
    volume.write(ino, handle, 25_000_000, b"tail").unwrap();
    volume.release(ino, handle).unwrap();
    data.truncate(20_000_000);
    data.resize(25_000_000, 0);
    data.extend_from_slice(b"tail");
    assert!(read_all(&volume, ino) == data);
}

#[test]
fn an_edited_tree_is_the_tree_a_rewrite_makes() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, venti) = venti_volume(dir.path());
    let mut data = vec![0u8; 12_000_000];
    rand::RngCore::fill_bytes(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(9),
        &mut data,
    );
    let ino = create_with(&volume, InodeNo::ROOT, "big", &data);
    let handle = volume.open_file(ino).unwrap();
    // 5 MB rewritten backwards (nothing streams), then a zeroed range and a truncate
    // into the last leaves.
    for index in (0..50usize).rev() {
        let offset = 3_000_000 + index * 100_000;
        let piece = vec![index as u8; 100_000];
        volume.write(ino, handle, offset as u64, &piece).unwrap();
        data[offset..offset + 100_000].copy_from_slice(&piece);
    }
    volume
        .fallocate(
            ino,
            9_000_000,
            70_000,
            FallocateMode {
                punch_hole: true,
                keep_size: true,
                zero_range: false,
            },
        )
        .unwrap();
    data[9_000_000..9_070_000].fill(0);
    volume.release(ino, handle).unwrap();
    volume
        .setattr(
            ino,
            &SetAttr {
                size: Some(11_900_000),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    data.truncate(11_900_000);
    let content = content_of(&volume, ino);
    let Content::Tree(root) = content else {
        panic!("{content:?}")
    };
    assert!(read_all(&volume, ino) == data);
    assert!(
        venti.edits() >= 2,
        "the writes, the hole and the truncate were edits"
    );
    // The same bytes written from scratch (streamed through a tree writer).
    let copy = create_with(&volume, InodeNo::ROOT, "copy", &data);
    assert_eq!(content_of(&volume, copy), Content::Tree(root));
}

#[test]
fn a_removed_directory_still_lists_dot_entries() {
    let fixture = Fixture::new();
    let volume = fixture.open();
    let outer = volume
        .mkdir(InodeNo::ROOT, name("outer"), 0o755, ME)
        .unwrap();
    let inner = volume.mkdir(outer.ino, name("inner"), 0o755, ME).unwrap();
    volume.rmdir(outer.ino, name("inner")).unwrap();
    volume.rmdir(InodeNo::ROOT, name("outer")).unwrap();
    volume.forget(outer.ino, 1);
    assert_eq!(names(&volume, inner.ino), vec![".", ".."]);
    assert_eq!(volume.getattr(inner.ino).unwrap().nlink, 0);
    assert!(matches!(
        volume.mkdir(inner.ino, name("x"), 0o755, ME),
        Err(Error::NotFound)
    ));
}

#[test]
fn a_write_buffer_over_its_budget_becomes_a_write_op_before_close() {
    let fixture = Fixture::new();
    let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&fixture.content));
    let options = VolumeOptions {
        content: Some(content),
        background: false,
        dirty_file_bytes_max: 64 << 10,
        ..VolumeOptions::default()
    };
    let volume = Volume::open_with(fixture.dir.path(), options).unwrap();
    let (attr, handle) = volume
        .create(InodeNo::ROOT, name("f"), 0o644, ME, true)
        .unwrap();
    // Backwards, so nothing streams: every byte sits in the buffer.
    for index in (0..10u64).rev() {
        volume
            .write(attr.ino, handle, index * 10_000, &[index as u8 + 1; 10_000])
            .unwrap();
    }
    let committed_version = volume.image().unwrap().inode(attr.ino).unwrap().version;
    assert!(
        committed_version > attr.version,
        "the buffer was flushed while still open"
    );
    volume.release(attr.ino, handle).unwrap();
    let bytes = read_all(&volume, attr.ino);
    assert_eq!(bytes.len(), 100_000);
    assert!(
        bytes
            .chunks(10_000)
            .enumerate()
            .all(|(index, chunk)| chunk.iter().all(|&b| b == index as u8 + 1))
    );
}

/// Content in memory whose "disk" fills on demand: while `full`, storing fails with
/// ENOSPC as the venti arena write does on a full disk.
#[derive(Debug)]
struct FillableContent {
    inner: Arc<MemContent>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

fn check_space(full: &std::sync::atomic::AtomicBool) -> Result<()> {
    if full.load(std::sync::atomic::Ordering::SeqCst) {
        Err(Error::Store(venti::Error::Io(
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )))
    } else {
        Ok(())
    }
}

struct FillableWriter {
    inner: Box<dyn ContentWriter>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl ContentWriter for FillableWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        check_space(&self.full)?;
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn finish(self: Box<Self>) -> Result<BlockRef> {
        check_space(&self.full)?;
        self.inner.finish()
    }
}

impl ContentStore for FillableContent {
    fn writer(&self) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(FillableWriter {
            inner: self.inner.writer()?,
            full: Arc::clone(&self.full),
        }))
    }

    fn write_all(&self, bytes: &[u8]) -> Result<BlockRef> {
        check_space(&self.full)?;
        self.inner.write_all(bytes)
    }

    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.read(root, offset, len)
    }

    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        check_space(&self.full)?;
        self.inner.write_meta(bytes)
    }

    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        self.inner.read_meta(root)
    }

    fn sync(&self) -> Result<()> {
        check_space(&self.full)
    }
}

fn incompressible(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|index| ((index ^ seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn open_fillable(dir: &Path) -> (Volume, Arc<std::sync::atomic::AtomicBool>) {
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let content: Arc<dyn ContentStore> = Arc::new(FillableContent {
        inner: Arc::new(MemContent::new()),
        full: Arc::clone(&full),
    });
    let volume = Volume::open_with(
        dir,
        VolumeOptions {
            content: Some(content),
            background: false,
            idle_flush_ms: 0,
            ..VolumeOptions::default()
        },
    )
    .unwrap();
    (volume, full)
}

#[test]
fn a_full_store_on_the_timer_flush_reaches_the_writer_as_enospc() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (volume, full) = open_fillable(dir.path());
    let kept_bytes = incompressible(1, 300_000);
    let kept = create_with(&volume, InodeNo::ROOT, "kept", &kept_bytes);
    volume.fsync(kept, false).unwrap();

    let (attr, handle) = volume
        .create(InodeNo::ROOT, name("big"), 0o644, ME, true)
        .unwrap();
    let big = attr.ino;
    volume
        .write(big, handle, 0, &incompressible(2, 600_000))
        .unwrap();
    full.store(true, SeqCst);
    // The timer turns the idle buffer into a write op and the store is full: nobody
    // hears of it there, so the file's writer must.
    let ticked = background_commit(&volume.shared);
    assert!(ticked.is_err_and(|error| error.is_no_space()));
    assert!(volume.getattr(big).is_ok(), "the open file vanished");
    let next = volume.write(big, handle, 600_000, b"more");
    assert!(
        next.as_ref().is_err_and(Error::is_no_space),
        "next write after a lost flush: {next:?}"
    );
    let synced = volume.fsync(big, false);
    assert!(synced.is_err_and(|error| error.is_no_space()));

    // Space again: the file is usable, and each loss was reported once.
    full.store(false, SeqCst);
    volume.write(big, handle, 0, b"again").unwrap();
    volume.fsync(big, false).unwrap();
    volume.release(big, handle).unwrap();
    assert_eq!(read_all(&volume, big), b"again");
    assert_eq!(read_all(&volume, kept), kept_bytes);
}

#[test]
fn a_full_store_under_a_streaming_write_fails_that_write_and_the_close() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (volume, full) = open_fillable(dir.path());
    let (attr, handle) = volume
        .create(InodeNo::ROOT, name("big"), 0o644, ME, true)
        .unwrap();
    let big = attr.ino;
    // Over the streaming threshold: later writes go straight to the store.
    volume
        .write(big, handle, 0, &incompressible(3, 400_000))
        .unwrap();
    full.store(true, SeqCst);
    let failed = volume.write(big, handle, 400_000, &incompressible(4, 100_000));
    assert!(failed.is_err_and(|error| error.is_no_space()));
    full.store(false, SeqCst);
    // The writes acknowledged before are lost too: close says so, once.
    let closed = volume.flush(big, handle);
    assert!(closed.is_err_and(|error| error.is_no_space()));
    volume.write(big, handle, 0, b"fits").unwrap();
    volume.flush(big, handle).unwrap();
    volume.release(big, handle).unwrap();
    assert_eq!(read_all(&volume, big), b"fits");
}

#[test]
fn a_namespace_commit_rolled_back_by_a_full_disk_keeps_open_files() {
    let fixture = Fixture::new();
    {
        let volume = fixture.open();
        let (attr, handle) = volume
            .create(InodeNo::ROOT, name("new"), 0o644, ME, true)
            .unwrap();
        volume.write(attr.ino, handle, 0, b"first").unwrap();
        // The create is applied but not committed; the commit fails and SQLite rolls
        // the transaction back, as it does when the disk fills under COMMIT.
        volume.shared.state.lock().ns.fail_next_commit = true;
        let synced = volume.fsync(attr.ino, false);
        assert!(synced.is_err_and(|error| error.is_no_space()));
        assert_eq!(volume.getattr(attr.ino).unwrap().size, 5);
        assert_eq!(
            volume.lookup(InodeNo::ROOT, name("new")).unwrap().ino,
            attr.ino
        );
        volume.write(attr.ino, handle, 5, b" second").unwrap();
        volume.fsync(attr.ino, false).unwrap();
        volume.release(attr.ino, handle).unwrap();
    }
    let volume = fixture.open();
    let ino = volume.lookup(InodeNo::ROOT, name("new")).unwrap().ino;
    assert_eq!(read_all(&volume, ino), b"first second");
}

#[test]
fn path_of_names_files_from_lookups_and_from_the_namespace() {
    let fixture = Fixture::new();
    let file = {
        let volume = fixture.open();
        let dir = volume
            .mkdir(InodeNo::ROOT, name("docs"), 0o755, ME)
            .unwrap();
        let sub = volume.mkdir(dir.ino, name("old"), 0o755, ME).unwrap();
        let file = create_with(&volume, sub.ino, "notes.txt", b"hello");
        assert_eq!(volume.path_of(file), PathBuf::from("/docs/old/notes.txt"));
        file
    };
    // After a restart nothing was looked up: the names come from the directory entries.
    let volume = fixture.open();
    assert_eq!(volume.path_of(file), PathBuf::from("/docs/old/notes.txt"));
    assert_eq!(volume.path_of(InodeNo::ROOT), PathBuf::from("/"));
    assert_eq!(volume.path_of(InodeNo(999_999)), PathBuf::from("/?"));
}

/// Content store whose next `sync` first runs a hook (while the volume is unlocked).
struct HookedContent {
    inner: Arc<MemContent>,
    #[allow(clippy::type_complexity)]
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ContentStore for HookedContent {
    fn writer(&self) -> Result<Box<dyn crate::content::ContentWriter>> {
        self.inner.writer()
    }
    fn write_all(&self, bytes: &[u8]) -> Result<BlockRef> {
        self.inner.write_all(bytes)
    }
    fn read(&self, root: &BlockRef, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.read(root, offset, len)
    }
    fn write_meta(&self, bytes: &[u8]) -> Result<BlockRef> {
        self.inner.write_meta(bytes)
    }
    fn read_meta(&self, root: &BlockRef) -> Result<Vec<u8>> {
        self.inner.read_meta(root)
    }
    fn sync(&self) -> Result<()> {
        let hook = self.hook.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.sync()
    }
}

impl std::fmt::Debug for HookedContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedContent").finish_non_exhaustive()
    }
}

#[test]
fn the_timer_syncs_the_store_unlocked_and_writes_out_only_what_that_sync_covers() {
    let dir = tempfile::tempdir().unwrap();
    let content = Arc::new(HookedContent {
        inner: Arc::new(MemContent::new()),
        hook: Mutex::new(None),
    });
    let volume = Volume::open_with(
        dir.path(),
        VolumeOptions {
            content: Some(Arc::clone(&content) as Arc<dyn ContentStore>),
            background: false,
            ..VolumeOptions::default()
        },
    )
    .unwrap();
    let log_end_on_disk = || FileLog::open(&dir.path().join("log")).unwrap().end();
    create_with(&volume, InodeNo::ROOT, "first", &[1u8; 10_000]);
    let first_end = volume.shared.state.lock().log.end();
    // While the store syncs, another file's blocks arrive: the volume is not locked
    // (the hook could not take the lock otherwise).
    let shared = Arc::clone(&volume.shared);
    *content.hook.lock() = Some(Box::new(move || {
        let mut state = shared.state.lock();
        let ino = state
            .create_node(
                InodeNo::ROOT,
                b"second",
                FileKind::File,
                0o644,
                0,
                ME,
                Vec::new(),
            )
            .unwrap();
        state.write(ino, 0, &[2u8; 10_000]).unwrap();
        state.flush_file(ino).unwrap();
    }));
    background_commit(&volume.shared).unwrap();
    assert_eq!(
        log_end_on_disk(),
        first_end,
        "entries logged during the sync stay buffered"
    );
    assert!(volume.shared.state.lock().content_unsynced);
    // The next round covers them.
    background_commit(&volume.shared).unwrap();
    let state = volume.shared.state.lock();
    assert_eq!(log_end_on_disk(), state.log.end());
    assert!(!state.content_unsynced && state.uncommitted_ops == 0);
}

#[test]
fn gc_from_its_roots_keeps_every_file_snapshot_and_buffer_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let content = VentiContent::open_dir(dir.path()).unwrap();
    let store = Arc::clone(content.store());
    let options = VolumeOptions {
        content: Some(Arc::new(content.clone()) as Arc<dyn ContentStore>),
        background: false,
        ..VolumeOptions::default()
    };
    let volume = Volume::open_with(dir.path(), options).unwrap();
    let piece = |seed: u64| {
        let mut bytes = vec![0u8; 600_000];
        rand::RngCore::fill_bytes(
            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed),
            &mut bytes,
        );
        bytes
    };
    let kept = create_with(&volume, InodeNo::ROOT, "kept", &piece(1));
    let in_snapshot = create_with(&volume, InodeNo::ROOT, "in-snapshot", &piece(2));
    volume.snapshot("before").unwrap();
    volume.unlink(InodeNo::ROOT, name("in-snapshot")).unwrap();
    let deleted = create_with(&volume, InodeNo::ROOT, "deleted", &piece(3));
    volume.checkpoint().unwrap();
    volume.unlink(InodeNo::ROOT, name("deleted")).unwrap();
    // Streamed into the store, not yet a write op: only the flush names its blocks.
    let (open, handle) = volume
        .create(InodeNo::ROOT, name("open"), 0o644, ME, true)
        .unwrap();
    volume.write(open.ino, handle, 0, &piece(4)).unwrap();
    volume.forget(deleted, 1);
    volume.forget(in_snapshot, 1);

    let fence = volume.gc_fence().unwrap();
    // Put after the fence and named by nothing: young blocks stay.
    let young = content.write_all(&piece(5)).unwrap();
    let collected = volume.collect_garbage(fence, true).unwrap();

    assert!(collected.swept_blocks > 0, "the deleted file's blocks go");
    assert!(collected.freed_bytes > 500_000, "{collected:?}");
    assert_eq!(store.stats().unwrap().dead_bytes, 0, "compacted");
    assert_eq!(content.read(&young, 0, 600_000).unwrap(), piece(5));
    volume.release(open.ino, handle).unwrap();
    assert_eq!(read_all(&volume, kept), piece(1));
    assert_eq!(read_all(&volume, open.ino), piece(4));
    let view = volume
        .lookup(InodeNo::ROOT, name(".snapshots"))
        .and_then(|snapshots| volume.lookup(snapshots.ino, name("before")))
        .and_then(|before| volume.lookup(before.ino, name("in-snapshot")))
        .unwrap();
    assert_eq!(read_all(&volume, view.ino), piece(2));
    // The log starts from the checkpoint: a lost namespace rebuilds from it.
    drop(volume);
    std::fs::remove_file(dir.path().join("namespace.sqlite")).unwrap();
    let volume = Volume::open(dir.path()).unwrap();
    let kept_again = volume.lookup(InodeNo::ROOT, name("kept")).unwrap().ino;
    assert_eq!(read_all(&volume, kept_again), piece(1));
}
