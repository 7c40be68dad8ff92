//! Model-based test of `Volume` against a `BTreeMap` namespace.
//!
//! Random mkdir/create/write/truncate/rename/link/unlink/rmdir sequences run against
//! the volume and a trivial model side by side; after every step the error (or
//! success) must agree, and at checkpoints the whole tree — names, kinds, contents,
//! link counts, shared inodes — must be equal. Steps include closing and reopening the
//! volume, a crash right after `sync_all` (the volume is leaked, never dropped), and a
//! checkpoint followed by the loss of the namespace database, so recovery from the log
//! and from a checkpoint plus the log after it are checked too.
//!
//! `KITH_LONG=1` runs many more cases.

// A test binary: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::Arc;

use fossil::content::{ContentStore, MemContent};
use fossil::volume::VolumeOptions;
use fossil::{Caller, Error, FileKind, InodeNo, RenameFlags, SetAttr, Volume};
use proptest::prelude::*;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    /// A file id: hard links share it.
    File(u32),
}

#[derive(Debug, Default)]
struct Model {
    /// Path (components joined by '/') → node. The root is "".
    nodes: BTreeMap<String, Node>,
    files: HashMap<u32, Vec<u8>>,
    next_file: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    NotPermitted,
}

fn classify(result: Result<(), Error>) -> Expect {
    match result {
        Ok(()) => Expect::Ok,
        Err(Error::NotFound) => Expect::NotFound,
        Err(Error::Exists) => Expect::Exists,
        Err(Error::NotDir) => Expect::NotDir,
        Err(Error::IsDir) => Expect::IsDir,
        Err(Error::NotEmpty) => Expect::NotEmpty,
        Err(Error::Invalid(_)) => Expect::Invalid,
        Err(Error::NotPermitted) => Expect::NotPermitted,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |at| &path[..at])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Model {
    fn new() -> Model {
        let mut model = Model::default();
        model.nodes.insert(String::new(), Node::Dir);
        model
    }

    fn dirs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, node)| **node == Node::Dir)
            .map(|(path, _)| path.clone())
            .collect()
    }

    fn all(&self) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|path| !path.is_empty())
            .cloned()
            .collect()
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|path| !path.is_empty() && parent_of(path) == dir)
            .cloned()
            .collect()
    }

    fn parent_ok(&self, path: &str) -> Expect {
        match self.nodes.get(parent_of(path)) {
            Some(Node::Dir) => Expect::Ok,
            Some(Node::File(_)) => Expect::NotDir,
            None => Expect::NotFound,
        }
    }

    fn create(&mut self, path: &str, dir: bool) -> Expect {
        let parent = self.parent_ok(path);
        if parent != Expect::Ok {
            return parent;
        }
        if self.nodes.contains_key(path) {
            return Expect::Exists;
        }
        let node = if dir {
            Node::Dir
        } else {
            self.next_file += 1;
            self.files.insert(self.next_file, Vec::new());
            Node::File(self.next_file)
        };
        self.nodes.insert(path.to_string(), node);
        Expect::Ok
    }

    fn remove(&mut self, path: &str, dir: bool) -> Expect {
        match (self.nodes.get(path), dir) {
            (None, _) => Expect::NotFound,
            (Some(Node::Dir), false) => Expect::IsDir,
            (Some(Node::File(_)), true) => Expect::NotDir,
            (Some(Node::Dir), true) if !self.children(path).is_empty() => Expect::NotEmpty,
            _ => {
                self.nodes.remove(path);
                Expect::Ok
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Expect {
        let Some(node) = self.nodes.get(from).cloned() else {
            return Expect::NotFound;
        };
        let parent = self.parent_ok(to);
        if parent != Expect::Ok {
            return parent;
        }
        if node == Node::Dir && (to == from || to.starts_with(&format!("{from}/"))) {
            return if to == from {
                Expect::Ok
            } else {
                Expect::Invalid
            };
        }
        match (self.nodes.get(to), &node) {
            (Some(target), _) if *target == node && node != Node::Dir => return Expect::Ok,
            (Some(Node::Dir), Node::File(_)) => return Expect::IsDir,
            (Some(Node::File(_)), Node::Dir) => return Expect::NotDir,
            (Some(Node::Dir), Node::Dir) if !self.children(to).is_empty() => {
                return Expect::NotEmpty;
            }
            _ => {}
        }
        // Move the node and everything under it.
        let moved: Vec<(String, Node)> = self
            .nodes
            .iter()
            .filter(|(path, _)| *path == from || path.starts_with(&format!("{from}/")))
            .map(|(path, node)| (path.clone(), node.clone()))
            .collect();
        for (path, _) in &moved {
            self.nodes.remove(path);
        }
        for (path, node) in moved {
            let new_path = format!("{to}{}", &path[from.len()..]);
            self.nodes.insert(new_path, node);
        }
        Expect::Ok
    }

    fn link(&mut self, from: &str, to: &str) -> Expect {
        let Some(node) = self.nodes.get(from).cloned() else {
            return Expect::NotFound;
        };
        if node == Node::Dir {
            return Expect::NotPermitted;
        }
        let parent = self.parent_ok(to);
        if parent != Expect::Ok {
            return parent;
        }
        if self.nodes.contains_key(to) {
            return Expect::Exists;
        }
        self.nodes.insert(to.to_string(), node);
        Expect::Ok
    }

    fn nlink(&self, id: u32) -> u32 {
        self.nodes
            .values()
            .filter(|node| **node == Node::File(id))
            .count() as u32
    }
}

/// Resolve a path to an inode.
fn resolve(volume: &Volume, path: &str) -> Result<InodeNo, Error> {
    let mut ino = InodeNo::ROOT;
    for component in path.split('/').filter(|part| !part.is_empty()) {
        ino = volume.lookup(ino, OsStr::new(component))?.ino;
    }
    Ok(ino)
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => ("", path),
    }
}

#[derive(Clone, Debug)]
enum Step {
    Mkdir(usize, u8),
    Create(usize, u8),
    Write(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Rename(usize, usize, u8),
    Link(usize, usize, u8),
    Unlink(usize),
    Rmdir(usize),
    Reopen,
    SyncAndCrash,
    /// Checkpoint (truncating the log), then lose the namespace database: the volume
    /// must rebuild from the checkpoint plus the log after it.
    CheckpointAndLoseNamespace,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..4).prop_map(|(dir, name)| Step::Mkdir(dir, name)),
        4 => (any::<usize>(), 0u8..4).prop_map(|(dir, name)| Step::Create(dir, name)),
        4 => (any::<usize>(), 0u16..9000, proptest::collection::vec(any::<u8>(), 1..6000))
            .prop_map(|(file, at, bytes)| Step::Write(file, at, bytes)),
        1 => (any::<usize>(), 0u16..12000).prop_map(|(file, size)| Step::Truncate(file, size)),
        3 => (any::<usize>(), any::<usize>(), 0u8..4).prop_map(|(from, dir, name)| Step::Rename(from, dir, name)),
        2 => (any::<usize>(), any::<usize>(), 0u8..4).prop_map(|(from, dir, name)| Step::Link(from, dir, name)),
        2 => any::<usize>().prop_map(Step::Unlink),
        2 => any::<usize>().prop_map(Step::Rmdir),
        1 => Just(Step::Reopen),
        1 => Just(Step::SyncAndCrash),
        1 => Just(Step::CheckpointAndLoseNamespace),
    ]
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

struct Harness {
    dir: tempfile::TempDir,
    content: Arc<MemContent>,
    volume: Option<Volume>,
}

impl Harness {
    fn new() -> Harness {
        let mut harness = Harness {
            dir: tempfile::tempdir().unwrap(),
            content: Arc::new(MemContent::new()),
            volume: None,
        };
        harness.volume = Some(harness.open());
        harness
    }

    fn open(&self) -> Volume {
        let content: Arc<dyn ContentStore> = Arc::new(Arc::clone(&self.content));
        let options = VolumeOptions {
            content: Some(content),
            background: false,
            ..VolumeOptions::default()
        };
        Volume::open_with(self.dir.path(), options).unwrap()
    }

    fn volume(&self) -> &Volume {
        self.volume.as_ref().unwrap()
    }
}

fn pick(paths: &[String], index: usize) -> Option<String> {
    (!paths.is_empty()).then(|| paths[index % paths.len()].clone())
}

fn run_step(harness: &mut Harness, model: &mut Model, step: &Step) {
    match step {
        Step::Mkdir(dir, name) | Step::Create(dir, name) => {
            let path = join(&pick(&model.dirs(), *dir).unwrap(), NAMES[*name as usize]);
            let is_dir = matches!(step, Step::Mkdir(..));
            let expected = model.create(&path, is_dir);
            let (parent, leaf) = split(&path);
            let volume = harness.volume();
            let parent = resolve(volume, parent).unwrap();
            let actual = if is_dir {
                volume
                    .mkdir(parent, OsStr::new(leaf), 0o755, ME)
                    .map(|_| ())
            } else {
                volume
                    .create(parent, OsStr::new(leaf), 0o644, ME, true)
                    .and_then(|(attr, handle)| volume.release(attr.ino, handle))
            };
            assert_eq!(classify(actual), expected, "{step:?} {path}");
        }
        Step::Write(file, at, _) | Step::Truncate(file, at) if !model.all().is_empty() => {
            let path = pick(&model.all(), *file).unwrap();
            let Some(Node::File(id)) = model.nodes.get(&path).cloned() else {
                return;
            };
            let volume = harness.volume();
            let ino = resolve(volume, &path).unwrap();
            let content = model.files.get_mut(&id).unwrap();
            if let Step::Write(_, _, bytes) = step {
                let end = *at as usize + bytes.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*at as usize..end].copy_from_slice(bytes);
                let handle = volume.open_file(ino).unwrap();
                volume.write(ino, handle, u64::from(*at), bytes).unwrap();
                volume.release(ino, handle).unwrap();
            } else {
                content.resize(*at as usize, 0);
                volume
                    .setattr(
                        ino,
                        &SetAttr {
                            size: Some(u64::from(*at)),
                            ..SetAttr::default()
                        },
                        None,
                    )
                    .unwrap();
            }
        }
        Step::Write(..) | Step::Truncate(..) => {}
        Step::Rename(from, dir, name) | Step::Link(from, dir, name) => {
            let Some(from) = pick(&model.all(), *from) else {
                return;
            };
            let to = join(&pick(&model.dirs(), *dir).unwrap(), NAMES[*name as usize]);
            let is_link = matches!(step, Step::Link(..));
            let volume = harness.volume();
            let (from_parent, from_leaf) = split(&from);
            let (to_parent, to_leaf) = split(&to);
            let from_parent_ino = resolve(volume, from_parent).unwrap();
            let to_parent_ino = resolve(volume, to_parent).unwrap();
            let expected = if is_link {
                model.link(&from, &to)
            } else {
                model.rename(&from, &to)
            };
            let actual = if is_link {
                let ino = resolve(volume, &from).unwrap();
                volume
                    .link(ino, to_parent_ino, OsStr::new(to_leaf))
                    .map(|_| ())
            } else {
                volume.rename(
                    from_parent_ino,
                    OsStr::new(from_leaf),
                    to_parent_ino,
                    OsStr::new(to_leaf),
                    RenameFlags::default(),
                )
            };
            assert_eq!(classify(actual), expected, "{step:?} {from} → {to}");
        }
        Step::Unlink(path) | Step::Rmdir(path) => {
            let Some(path) = pick(&model.all(), *path) else {
                return;
            };
            let is_dir = matches!(step, Step::Rmdir(..));
            let expected = model.remove(&path, is_dir);
            let volume = harness.volume();
            let (parent, leaf) = split(&path);
            let parent = resolve(volume, parent).unwrap();
            let actual = if is_dir {
                volume.rmdir(parent, OsStr::new(leaf))
            } else {
                volume.unlink(parent, OsStr::new(leaf))
            };
            assert_eq!(classify(actual), expected, "{step:?} {path}");
        }
        Step::Reopen => {
            drop(harness.volume.take());
            harness.volume = Some(harness.open());
        }
        Step::CheckpointAndLoseNamespace => {
            harness.volume().checkpoint().unwrap();
            drop(harness.volume.take());
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(
                    harness.dir.path().join(format!("namespace.sqlite{suffix}")),
                );
            }
            harness.volume = Some(harness.open());
        }
        Step::SyncAndCrash => {
            harness.volume().sync_all().unwrap();
            // A crash: nothing of the volume's shutdown path runs.
            std::mem::forget(harness.volume.take());
            harness.volume = Some(harness.open());
        }
    }
}

/// The whole tree of the volume equals the model.
fn check_tree(volume: &Volume, model: &Model) {
    let mut inode_of_file: HashMap<u32, InodeNo> = HashMap::new();
    let mut seen = Vec::new();
    let mut stack = vec![(String::new(), InodeNo::ROOT)];
    while let Some((path, ino)) = stack.pop() {
        let mut cookie = 0;
        loop {
            let entries = volume.readdir(ino, cookie).unwrap();
            let Some(last) = entries.last() else { break };
            cookie = last.cookie;
            for entry in entries {
                let name = entry.name.to_string_lossy().into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let child = join(&path, &name);
                seen.push(child.clone());
                match model.nodes.get(&child) {
                    Some(Node::Dir) => {
                        assert_eq!(entry.attr.kind, FileKind::Dir, "{child}");
                        stack.push((child, entry.attr.ino));
                    }
                    Some(Node::File(id)) => {
                        assert_eq!(entry.attr.kind, FileKind::File, "{child}");
                        let expected = &model.files[id];
                        assert_eq!(entry.attr.size, expected.len() as u64, "size of {child}");
                        assert_eq!(entry.attr.nlink, model.nlink(*id), "nlink of {child}");
                        let handle = volume.open_file(entry.attr.ino).unwrap();
                        let bytes = volume
                            .read(entry.attr.ino, handle, 0, expected.len() as u32 + 1)
                            .unwrap();
                        volume.release(entry.attr.ino, handle).unwrap();
                        assert!(bytes == *expected, "content of {child}");
                        let first = *inode_of_file.entry(*id).or_insert(entry.attr.ino);
                        assert_eq!(
                            first, entry.attr.ino,
                            "hard links of {child} share an inode"
                        );
                    }
                    None => panic!("volume has {child}, model does not"),
                }
            }
        }
    }
    seen.sort();
    assert_eq!(seen, model.all());
}

fn cases() -> u32 {
    if std::env::var_os("KITH_LONG").is_some() {
        2000
    } else {
        48
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn volume_matches_a_btreemap_model(steps in proptest::collection::vec(step(), 1..60)) {
        let mut harness = Harness::new();
        let mut model = Model::new();
        for step in &steps {
            run_step(&mut harness, &mut model, step);
            if matches!(step, Step::Reopen | Step::SyncAndCrash | Step::CheckpointAndLoseNamespace) {
                check_tree(harness.volume(), &model);
            }
        }
        check_tree(harness.volume(), &model);
        drop(harness.volume.take());
        let volume = harness.open();
        check_tree(&volume, &model);
    }
}

#[test]
fn path_helpers() {
    assert_eq!(split("a/b/c"), ("a/b", "c"));
    assert_eq!(split("a"), ("", "a"));
    assert_eq!(parent_of("a/b"), "a");
    assert_eq!(join("", "x"), "x");
}
