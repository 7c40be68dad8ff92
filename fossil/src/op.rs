//! Operations: the only way a volume's namespace changes.
//!
//! An [`Op`] is what an author device appends to the volume's log. It carries the
//! author, the author's strictly increasing sequence number, the author's clock (so
//! timestamps are part of the log and every device computes the same namespace) and a
//! body. Bodies that can race with other authors carry preconditions: the version a
//! write replaces, the inode a name is expected to point at, the inode a rename expects
//! to replace. `apply` resolves failed preconditions by fixed rules.
//!
//! The codec is hand-written, little-endian, versioned ([`OP_FORMAT_VERSION`]) and
//! bounded: names, symlink targets, xattrs and inline content have named maxima and
//! decoding rejects trailing bytes. Garbage never panics; it is a typed error.
//!
//! ```text
//! op       = version u8 (=1) ‖ author u32 ‖ seq u64 ‖ time_ns i64 ‖ tag u8 ‖ body
//! bytes    = len u32 ‖ len bytes                (names ≤ 255, targets ≤ 4096, …)
//! content  = 0 ‖ bytes (≤ 4096)                 inline
//!          | 1 ‖ BlockRef (76)                  venti tree root
//!          | 2 ‖ count u16 (≤ 64) ‖ count × (BlockRef ‖ offset u64 ‖ len u64)
//! ```
//!
//! Bodies by tag: 0 Genesis, 1 Grant, 2 Create, 3 Write, 4 SetAttr (a presence bitmask
//! then every field), 5 Link, 6 Unlink, 7 Rename (flags: bit 0 `replaced` present, bit 1
//! exchange), 8 SetXattr, 9 RemoveXattr, 10 Reclaim, 11 Snapshot; fields in the order
//! of [`OpBody`]'s declarations. A new body or field is a new version.

use venti::BlockRef;

use crate::{Error, FileKind, InodeNo, Result};

pub const OP_FORMAT_VERSION: u8 = 1;
/// `NAME_MAX`: longest name component in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// `PATH_MAX`: longest symlink target.
pub const SYMLINK_BYTES_MAX: usize = 4096;
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Linux's `XATTR_SIZE_MAX`.
pub const XATTR_VALUE_BYTES_MAX: usize = 65536;
/// Content at most this long lives in the write op itself instead of venti blocks.
pub const INLINE_BYTES_MAX: usize = 4096;
/// No encoded op is longer than this (largest body: an xattr value).
pub const OP_BYTES_MAX: usize = 2 * XATTR_VALUE_BYTES_MAX;

/// A device's number within a volume. Membership ops will map device keys to these;
/// device 0 is reserved for the volume itself (root inode, genesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

/// Inode numbers are minted by the author, without coordination: the device number in
/// the high bits, the seq of the creating op in the low [`INO_SEQ_BITS`] bits. Every
/// device that applies the log therefore sees the same inode numbers, and two authors
/// never mint the same one.
pub const INO_SEQ_BITS: u32 = 40;

impl DeviceId {
    /// Devices above this would mint inode numbers in the range reserved for
    /// snapshot views (bit 62 and up).
    pub const MAX: u32 = (1 << (62 - INO_SEQ_BITS)) - 1;

    pub fn mint_ino(self, seq: u64) -> InodeNo {
        InodeNo((u64::from(self.0) << INO_SEQ_BITS) | (seq & ((1 << INO_SEQ_BITS) - 1)))
    }

    /// Whether `ino` is one this device minted (see [`DeviceId::mint_ino`]).
    pub fn minted(self, ino: InodeNo) -> bool {
        ino.0 >> INO_SEQ_BITS == u64::from(self.0)
    }
}

/// What a device may do in a volume, decided at apply time from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rights {
    None = 0,
    Read = 1,
    Write = 2,
    /// Write, and change membership.
    Owner = 3,
}

/// A file's content: inline bytes, the root of a venti hash tree, or byte ranges of
/// several trees in order (older versions stored an edit's bytes apart as slices; they
/// are still read, and the file's next write makes them one tree again — edits are
/// now tree edits). Bytes past the content's length up to the file size read as zeros
/// (a sparse tail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Inline(Vec<u8>),
    Tree(BlockRef),
    Slices(Vec<Slice>),
}

/// Bytes `offset .. offset + len` of the tree under `root`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub root: BlockRef,
    pub offset: u64,
    pub len: u64,
}

/// Most slices one content may have; more are rewritten as one tree.
pub const SLICES_MAX: usize = 64;

impl Content {
    pub const EMPTY: Content = Content::Inline(Vec::new());

    pub fn len(&self) -> u64 {
        match self {
            Content::Inline(bytes) => bytes.len() as u64,
            Content::Tree(root) => root.length,
            Content::Slices(slices) => slices.iter().map(|slice| slice.len).sum(),
        }
    }

    /// Every tree root the content refers to.
    pub fn roots(&self) -> Vec<BlockRef> {
        match self {
            Content::Inline(_) => Vec::new(),
            Content::Tree(root) => vec![*root],
            Content::Slices(slices) => slices.iter().map(|slice| slice.root).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Content::Inline(bytes) => {
                out.push(0);
                put_bytes(out, bytes);
            }
            Content::Tree(root) => {
                out.push(1);
                out.extend_from_slice(&root.encode());
            }
            Content::Slices(slices) => {
                out.push(2);
                put_u16(out, slices.len() as u16);
                for slice in slices {
                    out.extend_from_slice(&slice.root.encode());
                    put_u64(out, slice.offset);
                    put_u64(out, slice.len);
                }
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Content> {
        let mut reader = Reader::new(bytes);
        let content = reader.content()?;
        reader.finish()?;
        Ok(content)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub author: DeviceId,
    /// Strictly increasing per author; a repeat or lower seq applies as a no-op.
    pub seq: u64,
    /// The author's clock, nanoseconds since the Unix epoch: the ctime/mtime the op sets.
    pub time_ns: i64,
    pub body: OpBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpBody {
    /// First op of every volume: creates the root and names its owner device.
    Genesis {
        owner: DeviceId,
        uid: u32,
        gid: u32,
        perm: u16,
    },
    /// Give `device` rights (owner only).
    Grant {
        device: DeviceId,
        rights: Rights,
    },
    /// Precondition: `name` absent in `parent` (else the new file gets a conflict name).
    /// `ino` is `author.mint_ino(seq)`.
    Create {
        parent: InodeNo,
        name: Vec<u8>,
        kind: FileKind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        /// Symlink target (empty for other kinds).
        target: Vec<u8>,
    },
    /// New content and size. Precondition: the file is still at `base_version`; if it
    /// moved on, this write becomes a conflict copy next to `parent`/`name`.
    Write {
        ino: InodeNo,
        base_version: u64,
        size: u64,
        content: Content,
        parent: InodeNo,
        name: Vec<u8>,
    },
    /// Last writer wins; ctime becomes the op time.
    SetAttr {
        ino: InodeNo,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
    },
    /// Precondition: `new_name` absent (else a conflict name).
    Link {
        ino: InodeNo,
        new_parent: InodeNo,
        new_name: Vec<u8>,
    },
    /// Remove one name of `ino` (a file or an empty directory). Precondition: the name
    /// still points at `ino` (else stale: no-op); a directory must be empty.
    Unlink {
        parent: InodeNo,
        name: Vec<u8>,
        ino: InodeNo,
    },
    /// Precondition: source names `ino`, target names `replaced` (or is absent when
    /// `None`); else the moved file takes a conflict name. With `exchange` the two swap.
    Rename {
        parent: InodeNo,
        name: Vec<u8>,
        ino: InodeNo,
        new_parent: InodeNo,
        new_name: Vec<u8>,
        replaced: Option<InodeNo>,
        exchange: bool,
    },
    SetXattr {
        ino: InodeNo,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        ino: InodeNo,
        name: Vec<u8>,
    },
    /// Drop an inode with no names left once no device holds it open.
    Reclaim {
        ino: InodeNo,
    },
    /// Record the namespace as it is after this op under `name`.
    Snapshot {
        name: Vec<u8>,
    },
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(OP_FORMAT_VERSION);
        out.extend_from_slice(&self.author.0.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.time_ns.to_le_bytes());
        let o = &mut out;
        match &self.body {
            OpBody::Genesis {
                owner,
                uid,
                gid,
                perm,
            } => {
                o.push(0);
                put_u32(o, owner.0);
                put_u32(o, *uid);
                put_u32(o, *gid);
                put_u16(o, *perm);
            }
            OpBody::Grant { device, rights } => {
                o.push(1);
                put_u32(o, device.0);
                o.push(*rights as u8);
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
                o.push(2);
                put_u64(o, parent.0);
                put_bytes(o, name);
                o.push(kind_to_byte(*kind));
                put_u16(o, *perm);
                put_u32(o, *uid);
                put_u32(o, *gid);
                put_u32(o, *rdev);
                put_bytes(o, target);
            }
            OpBody::Write {
                ino,
                base_version,
                size,
                content,
                parent,
                name,
            } => {
                o.push(3);
                put_u64(o, ino.0);
                put_u64(o, *base_version);
                put_u64(o, *size);
                content.encode(o);
                put_u64(o, parent.0);
                put_bytes(o, name);
            }
            OpBody::SetAttr {
                ino,
                perm,
                uid,
                gid,
                atime_ns,
                mtime_ns,
            } => {
                o.push(4);
                put_u64(o, ino.0);
                let flags = u8::from(perm.is_some())
                    | u8::from(uid.is_some()) << 1
                    | u8::from(gid.is_some()) << 2
                    | u8::from(atime_ns.is_some()) << 3
                    | u8::from(mtime_ns.is_some()) << 4;
                o.push(flags);
                put_u16(o, perm.unwrap_or(0));
                put_u32(o, uid.unwrap_or(0));
                put_u32(o, gid.unwrap_or(0));
                put_u64(o, atime_ns.unwrap_or(0) as u64);
                put_u64(o, mtime_ns.unwrap_or(0) as u64);
            }
            OpBody::Link {
                ino,
                new_parent,
                new_name,
            } => {
                o.push(5);
                put_u64(o, ino.0);
                put_u64(o, new_parent.0);
                put_bytes(o, new_name);
            }
            OpBody::Unlink { parent, name, ino } => {
                o.push(6);
                put_u64(o, parent.0);
                put_bytes(o, name);
                put_u64(o, ino.0);
            }
            OpBody::Rename {
                parent,
                name,
                ino,
                new_parent,
                new_name,
                replaced,
                exchange,
            } => {
                o.push(7);
                put_u64(o, parent.0);
                put_bytes(o, name);
                put_u64(o, ino.0);
                put_u64(o, new_parent.0);
                put_bytes(o, new_name);
                o.push(u8::from(replaced.is_some()) | u8::from(*exchange) << 1);
                put_u64(o, replaced.map_or(0, |ino| ino.0));
            }
            OpBody::SetXattr { ino, name, value } => {
                o.push(8);
                put_u64(o, ino.0);
                put_bytes(o, name);
                put_bytes(o, value);
            }
            OpBody::RemoveXattr { ino, name } => {
                o.push(9);
                put_u64(o, ino.0);
                put_bytes(o, name);
            }
            OpBody::Reclaim { ino } => {
                o.push(10);
                put_u64(o, ino.0);
            }
            OpBody::Snapshot { name } => {
                o.push(11);
                put_bytes(o, name);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Op> {
        if bytes.len() > OP_BYTES_MAX {
            return Err(corrupt(format!(
                "{} bytes, at most {OP_BYTES_MAX}",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != OP_FORMAT_VERSION {
            return Err(corrupt(format!("unknown op format version {version}")));
        }
        let author = DeviceId(r.u32()?);
        let seq = r.u64()?;
        let time_ns = r.u64()? as i64;
        let tag = r.u8()?;
        let body = match tag {
            0 => OpBody::Genesis {
                owner: DeviceId(r.u32()?),
                uid: r.u32()?,
                gid: r.u32()?,
                perm: r.u16()?,
            },
            1 => OpBody::Grant {
                device: DeviceId(r.u32()?),
                rights: match r.u8()? {
                    0 => Rights::None,
                    1 => Rights::Read,
                    2 => Rights::Write,
                    3 => Rights::Owner,
                    other => return Err(corrupt(format!("unknown rights {other}"))),
                },
            },
            2 => OpBody::Create {
                parent: InodeNo(r.u64()?),
                name: r.name()?,
                kind: kind_from_byte(r.u8()?)?,
                perm: r.u16()?,
                uid: r.u32()?,
                gid: r.u32()?,
                rdev: r.u32()?,
                target: r.bytes(SYMLINK_BYTES_MAX)?,
            },
            3 => OpBody::Write {
                ino: InodeNo(r.u64()?),
                base_version: r.u64()?,
                size: r.u64()?,
                content: r.content()?,
                parent: InodeNo(r.u64()?),
                name: r.bytes(NAME_BYTES_MAX)?,
            },
            4 => {
                let ino = InodeNo(r.u64()?);
                let flags = r.u8()?;
                if flags >> 5 != 0 {
                    return Err(corrupt(format!("unknown setattr flags {flags:#x}")));
                }
                let perm = r.u16()?;
                let uid = r.u32()?;
                let gid = r.u32()?;
                let atime_ns = r.u64()? as i64;
                let mtime_ns = r.u64()? as i64;
                // One encoding per op: an absent field is written as zero.
                let absent_but_set = [
                    (1, u64::from(perm)),
                    (2, u64::from(uid)),
                    (4, u64::from(gid)),
                    (8, atime_ns as u64),
                    (16, mtime_ns as u64),
                ]
                .into_iter()
                .any(|(bit, value)| flags & bit == 0 && value != 0);
                if absent_but_set {
                    return Err(corrupt(
                        "setattr carries a value for an absent field".into(),
                    ));
                }
                OpBody::SetAttr {
                    ino,
                    perm: (flags & 1 != 0).then_some(perm),
                    uid: (flags & 2 != 0).then_some(uid),
                    gid: (flags & 4 != 0).then_some(gid),
                    atime_ns: (flags & 8 != 0).then_some(atime_ns),
                    mtime_ns: (flags & 16 != 0).then_some(mtime_ns),
                }
            }
            5 => OpBody::Link {
                ino: InodeNo(r.u64()?),
                new_parent: InodeNo(r.u64()?),
                new_name: r.name()?,
            },
            6 => OpBody::Unlink {
                parent: InodeNo(r.u64()?),
                name: r.name()?,
                ino: InodeNo(r.u64()?),
            },
            7 => {
                let parent = InodeNo(r.u64()?);
                let name = r.name()?;
                let ino = InodeNo(r.u64()?);
                let new_parent = InodeNo(r.u64()?);
                let new_name = r.name()?;
                let flags = r.u8()?;
                if flags >> 2 != 0 {
                    return Err(corrupt(format!("unknown rename flags {flags:#x}")));
                }
                let replaced = r.u64()?;
                if flags & 1 == 0 && replaced != 0 {
                    return Err(corrupt("rename carries an absent replaced inode".into()));
                }
                OpBody::Rename {
                    parent,
                    name,
                    ino,
                    new_parent,
                    new_name,
                    replaced: (flags & 1 != 0).then_some(InodeNo(replaced)),
                    exchange: flags & 2 != 0,
                }
            }
            8 => OpBody::SetXattr {
                ino: InodeNo(r.u64()?),
                name: r.bytes(XATTR_NAME_BYTES_MAX)?,
                value: r.bytes(XATTR_VALUE_BYTES_MAX)?,
            },
            9 => OpBody::RemoveXattr {
                ino: InodeNo(r.u64()?),
                name: r.bytes(XATTR_NAME_BYTES_MAX)?,
            },
            10 => OpBody::Reclaim {
                ino: InodeNo(r.u64()?),
            },
            11 => OpBody::Snapshot { name: r.name()? },
            other => return Err(corrupt(format!("unknown op tag {other}"))),
        };
        r.finish()?;
        Ok(Op {
            author,
            seq,
            time_ns,
            body,
        })
    }
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt { what: "op", detail }
}

pub(crate) fn kind_to_byte(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::Fifo => 3,
        FileKind::Socket => 4,
        FileKind::CharDevice => 5,
        FileKind::BlockDevice => 6,
    }
}

pub(crate) fn kind_from_byte(byte: u8) -> Result<FileKind> {
    Ok(match byte {
        0 => FileKind::File,
        1 => FileKind::Dir,
        2 => FileKind::Symlink,
        3 => FileKind::Fifo,
        4 => FileKind::Socket,
        5 => FileKind::CharDevice,
        6 => FileKind::BlockDevice,
        other => return Err(corrupt(format!("unknown file kind {other}"))),
    })
}

pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}
/// u32 length, then the bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor: every read is checked, every length is bounded.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.rest.len() < len {
            return Err(corrupt(format!(
                "truncated: want {len} bytes, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn bytes(&mut self, len_max: usize) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > len_max {
            return Err(corrupt(format!("field of {len} bytes, at most {len_max}")));
        }
        Ok(self.take(len)?.to_vec())
    }

    /// A file name: non-empty, no '/' or NUL, not "." or "..".
    fn name(&mut self) -> Result<Vec<u8>> {
        let name = self.bytes(NAME_BYTES_MAX)?;
        if !name_is_valid(&name) {
            return Err(corrupt(format!(
                "invalid name {:?}",
                String::from_utf8_lossy(&name)
            )));
        }
        Ok(name)
    }

    pub(crate) fn content(&mut self) -> Result<Content> {
        match self.u8()? {
            0 => Ok(Content::Inline(self.bytes(INLINE_BYTES_MAX)?)),
            1 => {
                let root = venti::BlockRef::decode(self.take(BlockRef::ENCODED_LEN)?)
                    .map_err(|error| corrupt(format!("content root: {error}")))?;
                Ok(Content::Tree(root))
            }
            2 => {
                let count = usize::from(self.u16()?);
                if count > SLICES_MAX {
                    return Err(corrupt(format!("{count} slices, at most {SLICES_MAX}")));
                }
                let mut slices = Vec::with_capacity(count);
                for _ in 0..count {
                    let root = venti::BlockRef::decode(self.take(BlockRef::ENCODED_LEN)?)
                        .map_err(|error| corrupt(format!("slice root: {error}")))?;
                    let offset = self.u64()?;
                    let len = self.u64()?;
                    if len == 0 || offset.checked_add(len).is_none_or(|end| end > root.length) {
                        return Err(corrupt(format!(
                            "slice {offset}+{len} of a tree of {}",
                            root.length
                        )));
                    }
                    slices.push(Slice { root, offset, len });
                }
                Ok(Content::Slices(slices))
            }
            other => Err(corrupt(format!("unknown content tag {other}"))),
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!("{} trailing bytes", self.rest.len())))
        }
    }
}

pub fn name_is_valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use venti::Address;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..20).prop_filter("valid", |name| name_is_valid(name))
    }

    fn kind() -> impl Strategy<Value = FileKind> {
        (0u8..7).prop_map(|byte| kind_from_byte(byte).unwrap_or(FileKind::File))
    }

    fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            proptest::collection::vec(
                (any::<[u8; 32]>(), 1u64..1000, 0u64..1000, 1u64..1000),
                0..5
            )
            .prop_map(|slices| {
                Content::Slices(
                    slices
                        .into_iter()
                        .map(|(address, len, offset, extra)| Slice {
                            root: BlockRef {
                                address: Address(address),
                                key: [1; 32],
                                epoch: 2,
                                length: offset + len + extra,
                            },
                            offset,
                            len,
                        })
                        .collect(),
                )
            }),
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(Content::Inline),
            (
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(|(address, key, epoch, length)| Content::Tree(BlockRef {
                    address: Address(address),
                    key,
                    epoch,
                    length
                })),
        ]
    }

    fn ino() -> impl Strategy<Value = InodeNo> {
        any::<u64>().prop_map(InodeNo)
    }

    pub(crate) fn body() -> impl Strategy<Value = OpBody> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>()).prop_map(
                |(owner, uid, gid, perm)| OpBody::Genesis {
                    owner: DeviceId(owner),
                    uid,
                    gid,
                    perm
                }
            ),
            (any::<u32>(), 0u8..4).prop_map(|(device, rights)| OpBody::Grant {
                device: DeviceId(device),
                rights: [Rights::None, Rights::Read, Rights::Write, Rights::Owner]
                    [usize::from(rights)],
            }),
            (
                ino(),
                name(),
                kind(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                name()
            )
                .prop_map(|(parent, name, kind, perm, uid, gid, rdev, target)| {
                    OpBody::Create {
                        parent,
                        name,
                        kind,
                        perm,
                        uid,
                        gid,
                        rdev,
                        target,
                    }
                }),
            (ino(), any::<u64>(), any::<u64>(), content(), ino(), name()).prop_map(
                |(ino, base_version, size, content, parent, name)| OpBody::Write {
                    ino,
                    base_version,
                    size,
                    content,
                    parent,
                    name
                }
            ),
            (
                ino(),
                any::<Option<u16>>(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
                any::<Option<i64>>(),
                any::<Option<i64>>()
            )
                .prop_map(|(ino, perm, uid, gid, atime_ns, mtime_ns)| {
                    OpBody::SetAttr {
                        ino,
                        perm,
                        uid,
                        gid,
                        atime_ns,
                        mtime_ns,
                    }
                }),
            (ino(), ino(), name()).prop_map(|(ino, new_parent, new_name)| OpBody::Link {
                ino,
                new_parent,
                new_name
            }),
            (ino(), name(), ino()).prop_map(|(parent, name, ino)| OpBody::Unlink {
                parent,
                name,
                ino
            }),
            (
                ino(),
                name(),
                ino(),
                ino(),
                name(),
                proptest::option::of(ino()),
                any::<bool>()
            )
                .prop_map(
                    |(parent, name, ino, new_parent, new_name, replaced, exchange)| {
                        OpBody::Rename {
                            parent,
                            name,
                            ino,
                            new_parent,
                            new_name,
                            replaced,
                            exchange,
                        }
                    }
                ),
            (
                ino(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(ino, name, value)| OpBody::SetXattr { ino, name, value }),
            (ino(), name()).prop_map(|(ino, name)| OpBody::RemoveXattr { ino, name }),
            ino().prop_map(|ino| OpBody::Reclaim { ino }),
            name().prop_map(|name| OpBody::Snapshot { name }),
        ]
    }

    proptest! {
        #[test]
        fn op_round_trips(author: u32, seq: u64, time_ns: i64, body in body()) {
            let op = Op { author: DeviceId(author), seq, time_ns, body };
            prop_assert_eq!(Op::decode(&op.encode())?, op);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Op::decode(&bytes);
        }

        #[test]
        fn truncated_or_extended_ops_are_rejected(body in body(), cut in any::<prop::sample::Index>(), extra: u8) {
            let encoded = Op { author: DeviceId(1), seq: 2, time_ns: 3, body }.encode();
            let cut = cut.index(encoded.len());
            prop_assert!(Op::decode(&encoded[..cut]).is_err());
            let mut longer = encoded.clone();
            longer.push(extra);
            prop_assert!(Op::decode(&longer).is_err());
        }

        #[test]
        fn flipped_bytes_never_panic(body in body(), at in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut encoded = Op { author: DeviceId(1), seq: 2, time_ns: 3, body }.encode();
            let at = at.index(encoded.len());
            encoded[at] ^= xor;
            let _ = Op::decode(&encoded);
        }

        /// Every device must read the same op from the same bytes, and an op must
        /// have one encoding: whatever decodes re-encodes to exactly its bytes.
        #[test]
        fn whatever_decodes_has_one_encoding(body in body(), at in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut encoded = Op { author: DeviceId(1), seq: 2, time_ns: 3, body }.encode();
            let at = at.index(encoded.len());
            encoded[at] ^= xor;
            if let Ok(op) = Op::decode(&encoded) {
                prop_assert_eq!(op.encode(), encoded);
            }
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            let op = Op {
                author: DeviceId(1),
                seq: 1,
                time_ns: 0,
                body: OpBody::Unlink {
                    parent: InodeNo::ROOT,
                    name: bad.to_vec(),
                    ino: InodeNo(5),
                },
            };
            assert!(Op::decode(&op.encode()).is_err(), "{bad:?} accepted");
        }
        let long = vec![b'x'; NAME_BYTES_MAX + 1];
        assert!(!name_is_valid(&long));
        assert!(name_is_valid(&long[..NAME_BYTES_MAX]));
    }

    #[test]
    fn minted_inodes_are_distinct_per_author() {
        assert_ne!(DeviceId(1).mint_ino(7), DeviceId(2).mint_ino(7));
        assert_ne!(DeviceId(1).mint_ino(7), DeviceId(1).mint_ino(8));
        assert!(DeviceId(DeviceId::MAX).mint_ino(u64::MAX).0 < 1 << 62);
    }
}
