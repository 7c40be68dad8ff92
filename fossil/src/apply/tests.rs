//! Synthetic interleavings of two authors: fixed conflict rules, rights, replays, and
//! random logs checked for determinism and namespace invariants.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::checkpoint::Image;

const OWNER: DeviceId = DeviceId(1);
const FRIEND: DeviceId = DeviceId(2);

/// A log under construction, with each author's seq counter.
struct Log {
    ops: Vec<Op>,
    seqs: HashMap<DeviceId, u64>,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            ops: Vec::new(),
            seqs: HashMap::new(),
        };
        log.push(
            OWNER,
            OpBody::Genesis {
                owner: OWNER,
                uid: 0,
                gid: 0,
                perm: 0o755,
            },
        );
        log.push(
            OWNER,
            OpBody::Grant {
                device: FRIEND,
                rights: Rights::Write,
            },
        );
        log
    }

    /// Append an op by `author`; returns the inode it would mint.
    fn push(&mut self, author: DeviceId, body: OpBody) -> InodeNo {
        let seq = self.seqs.entry(author).or_insert(0);
        *seq += 1;
        let seq = *seq;
        self.ops.push(Op {
            author,
            seq,
            time_ns: self.ops.len() as i64 * 1000,
            body,
        });
        author.mint_ino(seq)
    }
}

fn apply_all(ops: &[Op]) -> (Namespace, Vec<Outcome>) {
    let mut ns = Namespace::open_in_memory().unwrap();
    ns.begin().unwrap();
    let outcomes = ops
        .iter()
        .enumerate()
        .map(|(slot, op)| apply(&ns, slot as u64, op).unwrap())
        .collect();
    ns.set_applied_end(ops.len() as u64).unwrap();
    ns.commit().unwrap();
    (ns, outcomes)
}

fn create(parent: InodeNo, name: &str, kind: FileKind) -> OpBody {
    OpBody::Create {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: Vec::new(),
    }
}

fn write(ino: InodeNo, base_version: u64, bytes: &[u8], name: &str) -> OpBody {
    OpBody::Write {
        ino,
        base_version,
        size: bytes.len() as u64,
        content: Content::Inline(bytes.to_vec()),
        parent: InodeNo::ROOT,
        name: name.as_bytes().to_vec(),
    }
}

fn lookup(ns: &Namespace, parent: InodeNo, name: &str) -> Option<InodeNo> {
    ns.lookup(parent, name.as_bytes()).unwrap()
}

/// Every structural invariant of a namespace.
fn check_invariants(ns: &Namespace) -> std::result::Result<(), String> {
    let inodes: HashMap<InodeNo, Inode> = ns
        .all_inodes()
        .unwrap()
        .into_iter()
        .map(|inode| (inode.ino, inode))
        .collect();
    let dirents = ns.all_dirents().unwrap();
    let mut names_of: HashMap<InodeNo, Vec<InodeNo>> = HashMap::new();
    let mut subdirs: HashMap<InodeNo, u32> = HashMap::new();
    for (parent, name, ino) in &dirents {
        let dir = inodes
            .get(parent)
            .ok_or(format!("entry {name:?} in missing dir {parent:?}"))?;
        if dir.kind != FileKind::Dir || dir.nlink == 0 {
            return Err(format!(
                "entry in a non-directory or removed directory {parent:?}"
            ));
        }
        let child = inodes
            .get(ino)
            .ok_or(format!("entry {name:?} → missing inode {ino:?}"))?;
        names_of.entry(*ino).or_default().push(*parent);
        if child.kind == FileKind::Dir {
            *subdirs.entry(*parent).or_default() += 1;
        }
    }
    for inode in inodes.values() {
        let names = names_of.get(&inode.ino).map_or(0, Vec::len) as u32;
        if inode.kind == FileKind::Dir {
            let expected = if inode.nlink == 0 {
                0
            } else {
                2 + subdirs.get(&inode.ino).copied().unwrap_or(0)
            };
            if inode.nlink != expected {
                return Err(format!(
                    "dir {:?} nlink {} want {expected}",
                    inode.ino, inode.nlink
                ));
            }
            if inode.ino != InodeNo::ROOT && inode.nlink > 0 {
                if names != 1 {
                    return Err(format!("dir {:?} has {names} names", inode.ino));
                }
                if names_of[&inode.ino][0] != inode.parent {
                    return Err(format!("dir {:?} parent field is stale", inode.ino));
                }
                // Acyclic: the parent chain reaches the root.
                let mut at = inode.parent;
                let mut steps = 0;
                while at != InodeNo::ROOT {
                    at = inodes.get(&at).ok_or("broken parent chain")?.parent;
                    steps += 1;
                    if steps > inodes.len() {
                        return Err(format!("dir {:?} is in a cycle", inode.ino));
                    }
                }
            }
        } else if inode.nlink != names {
            return Err(format!(
                "{:?} nlink {} but {names} names",
                inode.ino, inode.nlink
            ));
        }
    }
    Ok(())
}

#[test]
fn replayed_and_old_seqs_are_noops() {
    let mut log = Log::new();
    log.push(OWNER, create(InodeNo::ROOT, "a", FileKind::File));
    let replay = log.ops[2].clone();
    log.ops.push(replay);
    let (ns, outcomes) = apply_all(&log.ops);
    assert_eq!(outcomes[3], Outcome::NoOp("replayed seq"));
    check_invariants(&ns).unwrap();
}

#[test]
fn rights_are_checked_at_apply_time() {
    let stranger = DeviceId(9);
    let mut log = Log::new();
    log.push(stranger, create(InodeNo::ROOT, "spam", FileKind::File));
    log.push(
        FRIEND,
        OpBody::Grant {
            device: stranger,
            rights: Rights::Owner,
        },
    );
    log.push(
        OWNER,
        OpBody::Grant {
            device: FRIEND,
            rights: Rights::Read,
        },
    );
    log.push(FRIEND, create(InodeNo::ROOT, "late", FileKind::File));
    log.push(
        OWNER,
        OpBody::Grant {
            device: FRIEND,
            rights: Rights::Write,
        },
    );
    log.push(FRIEND, create(InodeNo::ROOT, "ok", FileKind::File));
    let (ns, outcomes) = apply_all(&log.ops);
    assert_eq!(outcomes[2], Outcome::NoOp("author is not a member"));
    assert_eq!(outcomes[3], Outcome::NoOp("author lacks rights"));
    assert_eq!(outcomes[5], Outcome::NoOp("author lacks rights"));
    assert!(lookup(&ns, InodeNo::ROOT, "spam").is_none());
    assert!(lookup(&ns, InodeNo::ROOT, "late").is_none());
    assert!(lookup(&ns, InodeNo::ROOT, "ok").is_some());
}

#[test]
fn concurrent_creates_of_one_name_keep_both() {
    let mut log = Log::new();
    let first = log.push(OWNER, create(InodeNo::ROOT, "report", FileKind::File));
    let second = log.push(FRIEND, create(InodeNo::ROOT, "report", FileKind::File));
    let (ns, outcomes) = apply_all(&log.ops);
    assert_eq!(lookup(&ns, InodeNo::ROOT, "report"), Some(first));
    assert_eq!(
        lookup(&ns, InodeNo::ROOT, "report (conflict 2 1)"),
        Some(second)
    );
    assert!(matches!(outcomes[3], Outcome::Conflict { .. }));
    check_invariants(&ns).unwrap();
}

#[test]
fn concurrent_writes_to_one_file_give_a_visible_conflict_copy() {
    let mut log = Log::new();
    let file = log.push(OWNER, create(InodeNo::ROOT, "notes", FileKind::File));
    // Both authors saw version 1 and wrote.
    log.push(OWNER, write(file, 1, b"owner's text", "notes"));
    let copy = log.push(FRIEND, write(file, 1, b"friend's text", "notes"));
    let (ns, _) = apply_all(&log.ops);
    let original = ns.inode(file).unwrap().unwrap();
    assert_eq!(original.content, Content::Inline(b"owner's text".to_vec()));
    assert_eq!(
        lookup(&ns, InodeNo::ROOT, "notes (conflict 2 1)"),
        Some(copy)
    );
    let copy = ns.inode(copy).unwrap().unwrap();
    assert_eq!(copy.content, Content::Inline(b"friend's text".to_vec()));
    assert_eq!(copy.size, 13);
    check_invariants(&ns).unwrap();
}

#[test]
fn an_offline_rewrite_in_several_ops_gives_one_conflict_copy() {
    let mut log = Log::new();
    let file = log.push(OWNER, create(InodeNo::ROOT, "doc", FileKind::File));
    let written = log.push(OWNER, write(file, 1, b"original", "doc"));
    // Both saw `written`. The owner's edit commits first; the friend, offline, had
    // truncated (O_TRUNC), then written twice, each op based on its own previous one.
    log.push(OWNER, write(file, written.0, b"edited by the owner", "doc"));
    let truncated = log.push(FRIEND, write(file, written.0, b"", "doc"));
    let first = log.push(FRIEND, write(file, truncated.0, b"edited", "doc"));
    let second = log.push(FRIEND, write(file, first.0, b"edited by the friend", "doc"));
    // A later friend op on another file it made, at a version no longer current, is a
    // conflict of its own, not a write into the copy.
    let other = log.push(FRIEND, create(InodeNo::ROOT, "other", FileKind::File));
    log.push(OWNER, write(other, 1, b"owner", "other"));
    log.push(FRIEND, write(other, 1, b"friend", "other"));
    let (ns, outcomes) = apply_all(&log.ops);

    let docs: Vec<_> = ns
        .dir_entries(InodeNo::ROOT, 0, 100)
        .unwrap()
        .into_iter()
        .map(|entry| String::from_utf8_lossy(&entry.1).into_owned())
        .filter(|name| name.starts_with("doc"))
        .collect();
    assert_eq!(docs.len(), 2, "one winner and one copy: {docs:?}");
    let original = ns.inode(file).unwrap().unwrap();
    assert_eq!(
        original.content,
        Content::Inline(b"edited by the owner".to_vec())
    );
    let copy = lookup(&ns, InodeNo::ROOT, "doc (conflict 2 1)").expect("the copy");
    assert_eq!(copy, truncated, "the copy is the truncation's inode");
    let copy = ns.inode(copy).unwrap().unwrap();
    assert_eq!(
        copy.content,
        Content::Inline(b"edited by the friend".to_vec())
    );
    assert_eq!(copy.size, 20);
    assert_eq!(
        copy.version, second.0,
        "the copy's version names its last write"
    );
    // The truncation made the copy, and both writes went to it.
    let friend_writes = &outcomes[5..8];
    assert!(
        friend_writes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Conflict { ino, .. } if *ino == truncated)),
        "{friend_writes:?}"
    );
    assert!(lookup(&ns, InodeNo::ROOT, "other (conflict 2 5)").is_some());
    check_invariants(&ns).unwrap();
}

#[test]
fn stale_unlinks_and_rmdirs_are_noops() {
    let mut log = Log::new();
    let dir = log.push(OWNER, create(InodeNo::ROOT, "d", FileKind::Dir));
    let file = log.push(OWNER, create(InodeNo::ROOT, "f", FileKind::File));
    // Friend removes the empty dir while the owner creates a file in it.
    log.push(OWNER, create(dir, "inside", FileKind::File));
    log.push(
        FRIEND,
        OpBody::Unlink {
            parent: InodeNo::ROOT,
            name: b"d".to_vec(),
            ino: dir,
        },
    );
    // Owner renamed f to g; friend's unlink of f (as it saw it) must not hit g.
    log.push(
        OWNER,
        OpBody::Rename {
            parent: InodeNo::ROOT,
            name: b"f".to_vec(),
            ino: file,
            new_parent: InodeNo::ROOT,
            new_name: b"g".to_vec(),
            replaced: None,
            exchange: false,
        },
    );
    log.push(
        FRIEND,
        OpBody::Unlink {
            parent: InodeNo::ROOT,
            name: b"f".to_vec(),
            ino: file,
        },
    );
    let (ns, outcomes) = apply_all(&log.ops);
    assert_eq!(
        outcomes[5],
        Outcome::NoOp("rmdir of a directory that is not empty")
    );
    assert_eq!(outcomes[7], Outcome::NoOp("unlink of a name that moved"));
    assert_eq!(lookup(&ns, InodeNo::ROOT, "g"), Some(file));
    check_invariants(&ns).unwrap();
}

#[test]
fn crossed_directory_renames_cannot_make_a_cycle() {
    let mut log = Log::new();
    let a = log.push(OWNER, create(InodeNo::ROOT, "a", FileKind::Dir));
    let b = log.push(OWNER, create(InodeNo::ROOT, "b", FileKind::Dir));
    let rename = |name: &str, ino, new_parent| OpBody::Rename {
        parent: InodeNo::ROOT,
        name: name.as_bytes().to_vec(),
        ino,
        new_parent,
        new_name: name.as_bytes().to_vec(),
        replaced: None,
        exchange: false,
    };
    log.push(OWNER, rename("a", a, b));
    log.push(FRIEND, rename("b", b, a));
    let (ns, outcomes) = apply_all(&log.ops);
    assert_eq!(
        outcomes[5],
        Outcome::NoOp("rename would make a directory its own ancestor")
    );
    check_invariants(&ns).unwrap();
}

#[test]
fn rename_onto_a_name_that_changed_keeps_both() {
    let mut log = Log::new();
    let old = log.push(OWNER, create(InodeNo::ROOT, "target", FileKind::File));
    let mine = log.push(OWNER, create(InodeNo::ROOT, "mine", FileKind::File));
    // Friend replaced "target" with a new file before the owner's rename landed.
    let theirs = log.push(FRIEND, create(InodeNo::ROOT, "tmp", FileKind::File));
    log.push(
        FRIEND,
        OpBody::Rename {
            parent: InodeNo::ROOT,
            name: b"tmp".to_vec(),
            ino: theirs,
            new_parent: InodeNo::ROOT,
            new_name: b"target".to_vec(),
            replaced: Some(old),
            exchange: false,
        },
    );
    log.push(
        OWNER,
        OpBody::Rename {
            parent: InodeNo::ROOT,
            name: b"mine".to_vec(),
            ino: mine,
            new_parent: InodeNo::ROOT,
            new_name: b"target".to_vec(),
            replaced: Some(old),
            exchange: false,
        },
    );
    let (ns, _) = apply_all(&log.ops);
    assert_eq!(lookup(&ns, InodeNo::ROOT, "target"), Some(theirs));
    assert_eq!(
        lookup(&ns, InodeNo::ROOT, "target (conflict 1 5)"),
        Some(mine)
    );
    check_invariants(&ns).unwrap();
}

#[test]
fn conflict_names_stay_within_name_max() {
    let long = vec![b'n'; NAME_BYTES_MAX];
    let name = conflict_name(&long, DeviceId(123), u64::MAX);
    assert_eq!(name.len(), NAME_BYTES_MAX);
    assert!(name.ends_with(format!(" (conflict 123 {})", u64::MAX).as_bytes()));
}

/// A random op by one of two authors, drawn from small pools of names and inodes so
/// that many ops collide.
fn arbitrary_op(
    known: &[InodeNo],
    author: bool,
    choice: u8,
    a: usize,
    b: usize,
    c: usize,
    flag: bool,
) -> (DeviceId, OpBody) {
    let author = if author { OWNER } else { FRIEND };
    let names = ["a", "b", "c"];
    let pick = |index: usize| known[index % known.len()];
    let name = |index: usize| names[index % names.len()].as_bytes().to_vec();
    let body = match choice % 9 {
        0 => create(
            pick(a),
            names[b % 3],
            if flag { FileKind::Dir } else { FileKind::File },
        ),
        1 => OpBody::Write {
            ino: pick(a),
            base_version: (b % 4) as u64,
            size: (c % 10) as u64,
            content: Content::Inline(vec![c as u8; c % 10]),
            parent: pick(b),
            name: name(c),
        },
        2 => OpBody::Link {
            ino: pick(a),
            new_parent: pick(b),
            new_name: name(c),
        },
        3 => OpBody::Unlink {
            parent: pick(a),
            name: name(b),
            ino: pick(c),
        },
        4 => OpBody::Rename {
            parent: pick(a),
            name: name(b),
            ino: pick(c),
            new_parent: pick(b + c),
            new_name: name(a + 1),
            replaced: flag.then(|| pick(a + b)),
            exchange: flag && c.is_multiple_of(2),
        },
        5 => OpBody::SetXattr {
            ino: pick(a),
            name: b"user.x".to_vec(),
            value: vec![b as u8],
        },
        6 => OpBody::Reclaim { ino: pick(a) },
        7 => OpBody::SetAttr {
            ino: pick(a),
            perm: Some(0o600),
            uid: None,
            gid: None,
            atime_ns: None,
            mtime_ns: Some(5),
        },
        _ => OpBody::Snapshot { name: name(a) },
    };
    (author, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any interleaving of two authors' ops keeps the namespace well-formed, and two
    /// devices applying the same log end up with the same namespace.
    #[test]
    fn random_interleavings_are_deterministic_and_well_formed(
        steps in proptest::collection::vec((any::<bool>(), any::<u8>(), 0usize..1000, 0usize..1000, 0usize..1000, any::<bool>()), 1..120)
    ) {
        let mut log = Log::new();
        let mut known = vec![InodeNo::ROOT];
        for (author, choice, a, b, c, flag) in steps {
            let (author, body) = arbitrary_op(&known, author, choice, a, b, c, flag);
            known.push(log.push(author, body));
        }
        let mut ns = Namespace::open_in_memory().unwrap();
        ns.begin().unwrap();
        for (slot, op) in log.ops.iter().enumerate() {
            apply(&ns, slot as u64, op).unwrap();
            if let Err(broken) = check_invariants(&ns) {
                prop_assert!(false, "after op {slot} {op:?}: {broken}");
            }
        }
        ns.set_applied_end(log.ops.len() as u64).unwrap();
        ns.commit().unwrap();
        let (other, _) = apply_all(&log.ops);
        prop_assert_eq!(Image::capture(&ns).unwrap(), Image::capture(&other).unwrap());
        // And a device starting from a checkpoint image agrees too.
        let image = Image::capture(&ns).unwrap();
        let decoded = Image::decode(&image.encode()).unwrap();
        prop_assert_eq!(&decoded, &image);
        let mut loaded = Namespace::open_in_memory().unwrap();
        loaded.load(&decoded).unwrap();
        prop_assert_eq!(Image::capture(&loaded).unwrap(), image);
    }

    /// Flip any byte of a real image: whatever still decodes is canonical — it
    /// re-encodes to exactly those bytes, and a namespace loaded from it captures the
    /// same image back (so no device can hold a state no log produces).
    #[test]
    fn whatever_image_decodes_has_one_encoding_and_loads_back(
        steps in proptest::collection::vec((any::<bool>(), any::<u8>(), 0usize..1000, 0usize..1000, 0usize..1000, any::<bool>()), 1..40),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..3),
    ) {
        let mut log = Log::new();
        let mut known = vec![InodeNo::ROOT];
        for (author, choice, a, b, c, flag) in steps {
            let (author, body) = arbitrary_op(&known, author, choice, a, b, c, flag);
            known.push(log.push(author, body));
        }
        let (ns, _) = apply_all(&log.ops);
        let mut encoded = Image::capture(&ns).unwrap().encode();
        for (at, xor) in flips {
            let at = at.index(encoded.len());
            encoded[at] ^= xor;
        }
        if let Ok(image) = Image::decode(&encoded) {
            prop_assert_eq!(image.encode(), encoded);
            let mut loaded = Namespace::open_in_memory().unwrap();
            if loaded.load(&image).is_ok() {
                prop_assert_eq!(Image::capture(&loaded).unwrap(), image);
            }
        }
    }

    #[test]
    fn checkpoint_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Image::decode(&bytes);
        let mut with_magic = b"KITHCKP\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = Image::decode(&with_magic);
    }
}
