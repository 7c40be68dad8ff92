//! Applying committed operations: the namespace as a pure function of the log.
//!
//! [`apply`] reads nothing but the namespace and the op — no clock, no randomness, no
//! local configuration — so every device applying the same log reaches the same
//! tables (DESIGN.md invariant 3). It never fails on a well-formed op: an op whose
//! author lacks rights, replays an old seq, or whose preconditions no longer hold
//! resolves by a fixed rule to a recorded no-op or a conflict copy:
//!
//! - a create or link onto a taken name, or a rename onto a name that no longer
//!   points where the author saw it, lands under `name (conflict <device> <seq>)`;
//! - a write to a file that moved past `base_version` becomes a new file, the conflict
//!   copy, next to the name the author wrote through; the copy's version names that
//!   write, so the author's later writes that followed it (their base version is that
//!   write's) go to the copy too: one edit made of several ops (an `O_TRUNC`
//!   truncation, then the write) gives one copy, not one per op;
//! - ops on names or inodes that are gone, rmdir of a directory that gained entries,
//!   and renames that would make a directory its own ancestor are no-ops.
//!
//! Errors returned are database errors only: the volume stops rather than diverge.

use crate::namespace::{Inode, Namespace};
use crate::op::{Content, DeviceId, NAME_BYTES_MAX, Op, OpBody, Rights};
use crate::{FileKind, InodeNo, Result};

/// What applying one op did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// A new inode appeared: a create, or a conflict copy.
    Created {
        ino: InodeNo,
        parent: InodeNo,
        name: Vec<u8>,
    },
    /// The op landed under a conflict name (create/link/rename) or as a conflict copy.
    Conflict {
        ino: InodeNo,
        parent: InodeNo,
        name: Vec<u8>,
    },
    Snapshot {
        name: Vec<u8>,
    },
    /// Deterministically skipped, with the reason.
    NoOp(&'static str),
}

/// Apply the op at `slot`. The caller holds a namespace transaction.
pub fn apply(ns: &Namespace, slot: u64, op: &Op) -> Result<Outcome> {
    let author = ns.author(op.author)?;
    if let OpBody::Genesis {
        owner,
        uid,
        gid,
        perm,
    } = &op.body
    {
        if ns.inode(InodeNo::ROOT)?.is_some() || *owner != op.author {
            return Ok(Outcome::NoOp("genesis of an existing volume"));
        }
        ns.set_author(*owner, op.seq, Rights::Owner)?;
        ns.put_inode(&Inode {
            ino: InodeNo::ROOT,
            kind: FileKind::Dir,
            perm: perm & 0o7777,
            uid: *uid,
            gid: *gid,
            rdev: 0,
            nlink: 2,
            size: 0,
            atime_ns: op.time_ns,
            mtime_ns: op.time_ns,
            ctime_ns: op.time_ns,
            crtime_ns: op.time_ns,
            version: 1,
            parent: InodeNo::ROOT,
            content: Content::EMPTY,
        })?;
        return Ok(Outcome::Applied);
    }
    let Some((seq_applied, rights)) = author else {
        return Ok(Outcome::NoOp("author is not a member"));
    };
    if op.seq <= seq_applied {
        return Ok(Outcome::NoOp("replayed seq"));
    }
    // The seq is consumed whatever the op does, so a replay of it is a no-op too.
    ns.set_author(op.author, op.seq, rights)?;
    let required = if matches!(op.body, OpBody::Grant { .. }) {
        Rights::Owner
    } else {
        Rights::Write
    };
    if rights < required {
        return Ok(Outcome::NoOp("author lacks rights"));
    }
    let mut cx = Apply { ns, op, slot };
    cx.body()
}

struct Apply<'a> {
    ns: &'a Namespace,
    op: &'a Op,
    slot: u64,
}

impl Apply<'_> {
    fn body(&mut self) -> Result<Outcome> {
        let op = self.op;
        match &op.body {
            OpBody::Genesis { .. } => Ok(Outcome::NoOp("genesis of an existing volume")),
            OpBody::Grant { device, rights } => {
                let seq = self.ns.author(*device)?.map_or(0, |(seq, _)| seq);
                self.ns.set_author(*device, seq, *rights)?;
                Ok(Outcome::Applied)
            }
            OpBody::Create {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
                rdev,
                target,
            } => {
                let Some(mut dir) = self.live_dir(*parent)? else {
                    return Ok(Outcome::NoOp("create in a missing directory"));
                };
                let ino = op.author.mint_ino(op.seq);
                if self.ns.inode(ino)?.is_some() {
                    return Ok(Outcome::NoOp("inode number in use"));
                }
                let Some((name, conflicted)) = self.free_name(*parent, name)? else {
                    return Ok(Outcome::NoOp("no free conflict name"));
                };
                let is_dir = *kind == FileKind::Dir;
                let content = if *kind == FileKind::Symlink {
                    Content::Inline(target.clone())
                } else {
                    Content::EMPTY
                };
                self.ns.put_inode(&Inode {
                    ino,
                    kind: *kind,
                    perm: perm & 0o7777,
                    uid: *uid,
                    gid: *gid,
                    rdev: *rdev,
                    nlink: if is_dir { 2 } else { 1 },
                    size: if *kind == FileKind::Symlink {
                        target.len() as u64
                    } else {
                        0
                    },
                    atime_ns: op.time_ns,
                    mtime_ns: op.time_ns,
                    ctime_ns: op.time_ns,
                    crtime_ns: op.time_ns,
                    version: 1,
                    parent: if is_dir { *parent } else { InodeNo(0) },
                    content,
                })?;
                self.ns.insert_dirent(*parent, &name, ino)?;
                if is_dir {
                    dir.nlink += 1;
                }
                self.touch_dir(&mut dir)?;
                Ok(if conflicted {
                    Outcome::Conflict {
                        ino,
                        parent: *parent,
                        name,
                    }
                } else {
                    Outcome::Created {
                        ino,
                        parent: *parent,
                        name,
                    }
                })
            }
            OpBody::Write {
                ino,
                base_version,
                size,
                content,
                parent,
                name,
            } => {
                if content.len() > *size {
                    return Ok(Outcome::NoOp("content longer than the file"));
                }
                let Some(mut inode) = self.ns.inode(*ino)? else {
                    return Ok(Outcome::NoOp("write to a missing file"));
                };
                if inode.kind != FileKind::File {
                    return Ok(Outcome::NoOp("write to a non-file"));
                }
                if inode.version == *base_version {
                    inode.content = content.clone();
                    inode.size = *size;
                    inode.mtime_ns = op.time_ns;
                    inode.ctime_ns = op.time_ns;
                    inode.version = version_after(op);
                    self.ns.put_inode(&inode)?;
                    return Ok(Outcome::Applied);
                }
                // The author's earlier write to this file became a conflict copy: this
                // one followed it, so it goes to the copy.
                // (Its version names an op of this author; directories and other files
                // an op touched may carry it too, so the copy is the file this author
                // minted.)
                let followed = if op.author.minted(InodeNo(*base_version)) {
                    self.ns
                        .files_with_version(*base_version)?
                        .into_iter()
                        .find(|copy| copy != ino && op.author.minted(*copy))
                } else {
                    None
                };
                if let Some(copy_ino) = followed
                    && let Some(mut copy) = self.ns.inode(copy_ino)?
                    && let Some((copy_parent, copy_name)) = self.ns.name_of(copy_ino)?
                {
                    copy.content = content.clone();
                    copy.size = *size;
                    copy.mtime_ns = op.time_ns;
                    copy.ctime_ns = op.time_ns;
                    copy.version = version_after(op);
                    self.ns.put_inode(&copy)?;
                    return Ok(Outcome::Conflict {
                        ino: copy_ino,
                        parent: copy_parent,
                        name: copy_name,
                    });
                }
                // Someone else changed the file since the author read it: keep both.
                let Some(mut dir) = self.live_dir(*parent)? else {
                    return Ok(Outcome::NoOp(
                        "conflicting write, and its directory is gone",
                    ));
                };
                if name.is_empty() {
                    return Ok(Outcome::NoOp("conflicting write to an unlinked file"));
                }
                let copy_ino = op.author.mint_ino(op.seq);
                if self.ns.inode(copy_ino)?.is_some() {
                    return Ok(Outcome::NoOp("inode number in use"));
                }
                let copy_name = conflict_name(name, op.author, op.seq);
                if self.ns.lookup(*parent, &copy_name)?.is_some() {
                    return Ok(Outcome::NoOp("conflict name taken"));
                }
                self.ns.put_inode(&Inode {
                    ino: copy_ino,
                    nlink: 1,
                    size: *size,
                    content: content.clone(),
                    atime_ns: op.time_ns,
                    mtime_ns: op.time_ns,
                    ctime_ns: op.time_ns,
                    crtime_ns: op.time_ns,
                    version: version_after(op),
                    ..inode
                })?;
                self.ns.insert_dirent(*parent, &copy_name, copy_ino)?;
                self.touch_dir(&mut dir)?;
                Ok(Outcome::Conflict {
                    ino: copy_ino,
                    parent: *parent,
                    name: copy_name,
                })
            }
            OpBody::SetAttr {
                ino,
                perm,
                uid,
                gid,
                atime_ns,
                mtime_ns,
            } => {
                let Some(mut inode) = self.ns.inode(*ino)? else {
                    return Ok(Outcome::NoOp("setattr of a missing inode"));
                };
                if let Some(perm) = perm {
                    inode.perm = perm & 0o7777;
                }
                if let Some(uid) = uid {
                    inode.uid = *uid;
                }
                if let Some(gid) = gid {
                    inode.gid = *gid;
                }
                if let Some(atime_ns) = atime_ns {
                    inode.atime_ns = *atime_ns;
                }
                if let Some(mtime_ns) = mtime_ns {
                    inode.mtime_ns = *mtime_ns;
                }
                inode.ctime_ns = op.time_ns;
                inode.version = version_after(op);
                self.ns.put_inode(&inode)?;
                Ok(Outcome::Applied)
            }
            OpBody::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let Some(mut inode) = self.ns.inode(*ino)? else {
                    return Ok(Outcome::NoOp("link of a missing inode"));
                };
                if inode.kind == FileKind::Dir {
                    return Ok(Outcome::NoOp("link of a directory"));
                }
                let Some(mut dir) = self.live_dir(*new_parent)? else {
                    return Ok(Outcome::NoOp("link into a missing directory"));
                };
                let Some((name, conflicted)) = self.free_name(*new_parent, new_name)? else {
                    return Ok(Outcome::NoOp("no free conflict name"));
                };
                self.ns.insert_dirent(*new_parent, &name, *ino)?;
                inode.nlink += 1;
                self.touch_inode(&mut inode)?;
                self.touch_dir(&mut dir)?;
                Ok(if conflicted {
                    Outcome::Conflict {
                        ino: *ino,
                        parent: *new_parent,
                        name,
                    }
                } else {
                    Outcome::Applied
                })
            }
            OpBody::Unlink { parent, name, ino } => {
                if self.ns.lookup(*parent, name)? != Some(*ino) {
                    return Ok(Outcome::NoOp("unlink of a name that moved"));
                }
                let (Some(mut dir), Some(mut inode)) =
                    (self.ns.inode(*parent)?, self.ns.inode(*ino)?)
                else {
                    return Ok(Outcome::NoOp("unlink: dangling entry"));
                };
                if inode.kind == FileKind::Dir && !self.ns.dir_is_empty(*ino)? {
                    return Ok(Outcome::NoOp("rmdir of a directory that is not empty"));
                }
                self.ns.remove_dirent(*parent, name)?;
                self.drop_name(&mut dir, &mut inode)?;
                self.touch_dir(&mut dir)?;
                Ok(Outcome::Applied)
            }
            OpBody::Rename {
                parent,
                name,
                ino,
                new_parent,
                new_name,
                replaced,
                exchange,
            } => self.rename(
                *parent,
                name,
                *ino,
                *new_parent,
                new_name,
                *replaced,
                *exchange,
            ),
            OpBody::SetXattr { ino, name, value } => {
                let Some(mut inode) = self.ns.inode(*ino)? else {
                    return Ok(Outcome::NoOp("setxattr of a missing inode"));
                };
                self.ns.set_xattr(*ino, name, value)?;
                self.touch_inode(&mut inode)?;
                Ok(Outcome::Applied)
            }
            OpBody::RemoveXattr { ino, name } => {
                let Some(mut inode) = self.ns.inode(*ino)? else {
                    return Ok(Outcome::NoOp("removexattr of a missing inode"));
                };
                if !self.ns.remove_xattr(*ino, name)? {
                    return Ok(Outcome::NoOp("removexattr of a missing attribute"));
                }
                self.touch_inode(&mut inode)?;
                Ok(Outcome::Applied)
            }
            OpBody::Reclaim { ino } => match self.ns.inode(*ino)? {
                Some(inode) if inode.nlink == 0 => {
                    self.ns.delete_inode(*ino)?;
                    Ok(Outcome::Applied)
                }
                _ => Ok(Outcome::NoOp("reclaim of a named or missing inode")),
            },
            OpBody::Snapshot { name } => {
                if self.ns.snapshot_exists(name)? {
                    return Ok(Outcome::NoOp("snapshot name taken"));
                }
                self.ns.add_snapshot(name, self.slot, op.time_ns)?;
                Ok(Outcome::Snapshot { name: name.clone() })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rename(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        ino: InodeNo,
        new_parent: InodeNo,
        new_name: &[u8],
        replaced: Option<InodeNo>,
        exchange: bool,
    ) -> Result<Outcome> {
        if self.ns.lookup(parent, name)? != Some(ino) {
            return Ok(Outcome::NoOp("rename of a name that moved"));
        }
        let Some(inode) = self.ns.inode(ino)? else {
            return Ok(Outcome::NoOp("rename: dangling entry"));
        };
        if self.live_dir(new_parent)?.is_none() {
            return Ok(Outcome::NoOp("rename into a missing directory"));
        }
        if inode.kind == FileKind::Dir && self.is_ancestor(ino, new_parent)? {
            return Ok(Outcome::NoOp(
                "rename would make a directory its own ancestor",
            ));
        }
        let target = self.ns.lookup(new_parent, new_name)?;
        if exchange {
            let (Some(target_ino), Some(expected)) = (target, replaced) else {
                return Ok(Outcome::NoOp("exchange with a missing name"));
            };
            if target_ino != expected {
                return Ok(Outcome::NoOp("exchange with a name that moved"));
            }
            let Some(target_inode) = self.ns.inode(target_ino)? else {
                return Ok(Outcome::NoOp("exchange: dangling entry"));
            };
            if target_inode.kind == FileKind::Dir && self.is_ancestor(target_ino, parent)? {
                return Ok(Outcome::NoOp(
                    "exchange would make a directory its own ancestor",
                ));
            }
            if target_ino == ino {
                return Ok(Outcome::Applied);
            }
            self.ns.repoint_dirent(parent, name, target_ino)?;
            self.ns.repoint_dirent(new_parent, new_name, ino)?;
            self.moved(ino, parent, new_parent)?;
            self.moved(target_ino, new_parent, parent)?;
            self.touch_parents(parent, new_parent)?;
            return Ok(Outcome::Applied);
        }
        let mut final_name = new_name.to_vec();
        let mut conflicted = false;
        match (target, replaced) {
            (None, _) => {}
            (Some(target_ino), _) if target_ino == ino => {
                // Two names of one inode: POSIX says rename does nothing.
                return Ok(Outcome::Applied);
            }
            (Some(target_ino), Some(expected)) if target_ino == expected => {
                let (Some(mut target_inode), Some(mut dir)) =
                    (self.ns.inode(target_ino)?, self.ns.inode(new_parent)?)
                else {
                    return Ok(Outcome::NoOp("rename: dangling target"));
                };
                let target_is_dir = target_inode.kind == FileKind::Dir;
                if target_is_dir != (inode.kind == FileKind::Dir) {
                    return Ok(Outcome::NoOp(
                        "rename between a directory and a non-directory",
                    ));
                }
                if target_is_dir && !self.ns.dir_is_empty(target_ino)? {
                    return Ok(Outcome::NoOp("rename over a directory that is not empty"));
                }
                self.ns.remove_dirent(new_parent, new_name)?;
                self.drop_name(&mut dir, &mut target_inode)?;
                self.ns.put_inode(&dir)?;
            }
            (Some(_), _) => {
                // The target changed since the author looked: keep both under names.
                let Some((name, _)) = self.free_name(new_parent, new_name)? else {
                    return Ok(Outcome::NoOp("no free conflict name"));
                };
                final_name = name;
                conflicted = true;
            }
        }
        self.ns.remove_dirent(parent, name)?;
        self.ns.insert_dirent(new_parent, &final_name, ino)?;
        self.moved(ino, parent, new_parent)?;
        self.touch_parents(parent, new_parent)?;
        Ok(if conflicted {
            Outcome::Conflict {
                ino,
                parent: new_parent,
                name: final_name,
            }
        } else {
            Outcome::Applied
        })
    }

    /// `ino` now lives in `to` instead of `from`: fix a directory's `..` and the link
    /// counts of the two parents, and bump the moved inode's ctime.
    fn moved(&self, ino: InodeNo, from: InodeNo, to: InodeNo) -> Result<()> {
        let Some(mut inode) = self.ns.inode(ino)? else {
            return Ok(());
        };
        if inode.kind == FileKind::Dir && from != to {
            inode.parent = to;
            if let Some(mut old_dir) = self.ns.inode(from)? {
                old_dir.nlink = old_dir.nlink.saturating_sub(1);
                self.ns.put_inode(&old_dir)?;
            }
            if let Some(mut new_dir) = self.ns.inode(to)? {
                new_dir.nlink += 1;
                self.ns.put_inode(&new_dir)?;
            }
        }
        self.touch_inode(&mut inode)
    }

    fn touch_parents(&self, parent: InodeNo, new_parent: InodeNo) -> Result<()> {
        if let Some(mut dir) = self.ns.inode(parent)? {
            self.touch_dir(&mut dir)?;
        }
        if new_parent != parent
            && let Some(mut dir) = self.ns.inode(new_parent)?
        {
            self.touch_dir(&mut dir)?;
        }
        Ok(())
    }

    /// `inode` lost the name it had in `dir`.
    fn drop_name(&self, dir: &mut Inode, inode: &mut Inode) -> Result<()> {
        if inode.kind == FileKind::Dir {
            inode.nlink = 0;
            dir.nlink = dir.nlink.saturating_sub(1);
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        self.touch_inode(inode)
    }

    fn touch_inode(&self, inode: &mut Inode) -> Result<()> {
        inode.ctime_ns = self.op.time_ns;
        inode.version = version_after(self.op);
        self.ns.put_inode(inode)
    }

    fn touch_dir(&self, dir: &mut Inode) -> Result<()> {
        dir.mtime_ns = self.op.time_ns;
        self.touch_inode(dir)
    }

    /// A directory that still has a name (or is the root).
    fn live_dir(&self, ino: InodeNo) -> Result<Option<Inode>> {
        Ok(self
            .ns
            .inode(ino)?
            .filter(|inode| inode.kind == FileKind::Dir && inode.nlink > 0))
    }

    /// Is `ancestor` on the path from `dir` up to the root (or `dir` itself)?
    fn is_ancestor(&self, ancestor: InodeNo, dir: InodeNo) -> Result<bool> {
        let mut at = dir;
        // Bounded: a parent chain longer than DEPTH_MAX is a loop in corrupt state.
        for _ in 0..=crate::namespace::DEPTH_MAX {
            if at == ancestor {
                return Ok(true);
            }
            if at == InodeNo::ROOT {
                return Ok(false);
            }
            match self.ns.inode(at)? {
                Some(inode) if inode.parent != at => at = inode.parent,
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// `name` if free in `dir`, else its conflict name if that is free.
    fn free_name(&self, dir: InodeNo, name: &[u8]) -> Result<Option<(Vec<u8>, bool)>> {
        if self.ns.lookup(dir, name)?.is_none() {
            return Ok(Some((name.to_vec(), false)));
        }
        let conflict = conflict_name(name, self.op.author, self.op.seq);
        if self.ns.lookup(dir, &conflict)?.is_none() {
            return Ok(Some((conflict, true)));
        }
        Ok(None)
    }
}

/// The version an inode has after `op` changed it: `(author, seq)` packed like an
/// inode number, so a version names the one op that made it. A counter would not do
/// with several authors: two devices that each change a file once from version v both
/// produce v + 1, and a later op of one of them "replaces v + 1" would silently
/// overwrite the other's change. Minted versions are never 1 (the version of a new
/// inode), since device 0 authors nothing but genesis.
fn version_after(op: &Op) -> u64 {
    op.author.mint_ino(op.seq).0
}

/// `name (conflict <device> <seq>)`, shortening `name` to stay within NAME_MAX.
pub fn conflict_name(name: &[u8], author: DeviceId, seq: u64) -> Vec<u8> {
    let suffix = format!(" (conflict {} {})", author.0, seq);
    let keep = name.len().min(NAME_BYTES_MAX - suffix.len());
    let mut out = name[..keep].to_vec();
    out.extend_from_slice(suffix.as_bytes());
    out
}

#[cfg(test)]
mod tests;
