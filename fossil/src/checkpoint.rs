//! Checkpoints: the whole namespace as one byte image.
//!
//! An [`Image`] holds every table `apply` writes, plus the log slot it reflects. Its
//! encoding is canonical (tables in key order), so two devices with equal namespaces
//! produce equal images — and, sealed convergently in one epoch, equal venti roots. A
//! volume can start from an image plus the log after `applied_end`; snapshots are named
//! images browsed read-only.
//!
//! Format (little-endian): `"KITHCKP" ‖ version u8 ‖ applied_end u64`, then five
//! sections, each `count u64` followed by records: inodes, dirents, xattrs, authors,
//! snapshots. Decoding is bounded by the input: a count can never promise more records
//! than the remaining bytes could hold, and an image decodes only in its one canonical
//! form: every section strictly in key order (so no duplicates) and every entry name
//! valid, as `capture` writes it. A checkpoint arrives from another device; a
//! non-canonical one would load into a namespace that no device's log produced.

use crate::namespace::{DirentRow, Inode, Namespace, XattrRow};
use crate::op::{
    DeviceId, NAME_BYTES_MAX, Reader, Rights, XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
    kind_from_byte, kind_to_byte, name_is_valid, put_bytes, put_u16, put_u32, put_u64,
};
use crate::{Error, InodeNo, Result};

const MAGIC: &[u8; 7] = b"KITHCKP";
pub const IMAGE_FORMAT_VERSION: u8 = 1;
/// Smallest encoded record of any section: a bound on counts while decoding.
const RECORD_BYTES_MIN: u64 = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub applied_end: u64,
    pub inodes: Vec<Inode>,
    pub dirents: Vec<DirentRow>,
    pub xattrs: Vec<XattrRow>,
    pub authors: Vec<(DeviceId, u64, Rights)>,
    pub snapshots: Vec<(Vec<u8>, u64, i64)>,
}

impl Image {
    pub fn capture(ns: &Namespace) -> Result<Image> {
        Ok(Image {
            applied_end: ns.applied_end()?,
            inodes: ns.all_inodes()?,
            dirents: ns.all_dirents()?,
            xattrs: ns.all_xattrs()?,
            authors: ns.all_authors()?,
            snapshots: ns.snapshots()?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.inodes.len() * 96 + self.dirents.len() * 32);
        out.extend_from_slice(MAGIC);
        out.push(IMAGE_FORMAT_VERSION);
        put_u64(&mut out, self.applied_end);
        put_u64(&mut out, self.inodes.len() as u64);
        for inode in &self.inodes {
            put_u64(&mut out, inode.ino.0);
            out.push(kind_to_byte(inode.kind));
            put_u16(&mut out, inode.perm);
            put_u32(&mut out, inode.uid);
            put_u32(&mut out, inode.gid);
            put_u32(&mut out, inode.rdev);
            put_u32(&mut out, inode.nlink);
            put_u64(&mut out, inode.size);
            for time in [
                inode.atime_ns,
                inode.mtime_ns,
                inode.ctime_ns,
                inode.crtime_ns,
            ] {
                put_u64(&mut out, time as u64);
            }
            put_u64(&mut out, inode.version);
            put_u64(&mut out, inode.parent.0);
            inode.content.encode(&mut out);
        }
        put_u64(&mut out, self.dirents.len() as u64);
        for (parent, name, ino) in &self.dirents {
            put_u64(&mut out, parent.0);
            put_bytes(&mut out, name);
            put_u64(&mut out, ino.0);
        }
        put_u64(&mut out, self.xattrs.len() as u64);
        for (ino, name, value) in &self.xattrs {
            put_u64(&mut out, ino.0);
            put_bytes(&mut out, name);
            put_bytes(&mut out, value);
        }
        put_u64(&mut out, self.authors.len() as u64);
        for (device, seq, rights) in &self.authors {
            put_u32(&mut out, device.0);
            put_u64(&mut out, *seq);
            out.push(*rights as u8);
        }
        put_u64(&mut out, self.snapshots.len() as u64);
        for (name, slot, time_ns) in &self.snapshots {
            put_bytes(&mut out, name);
            put_u64(&mut out, *slot);
            put_u64(&mut out, *time_ns as u64);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Image> {
        let corrupt = |detail: String| Error::Corrupt {
            what: "checkpoint",
            detail,
        };
        if bytes.len() < MAGIC.len() + 1 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        if bytes[MAGIC.len()] != IMAGE_FORMAT_VERSION {
            return Err(corrupt(format!("unknown version {}", bytes[MAGIC.len()])));
        }
        let mut r = Reader::new(&bytes[MAGIC.len() + 1..]);
        let total = bytes.len() as u64;
        let count = |r: &mut Reader| -> Result<usize> {
            let count = r.u64()?;
            if count > total / RECORD_BYTES_MIN {
                return Err(Error::Corrupt {
                    what: "checkpoint",
                    detail: format!("count {count} exceeds the image"),
                });
            }
            Ok(count as usize)
        };
        let mut image = Image {
            applied_end: r.u64()?,
            ..Image::default()
        };
        for _ in 0..count(&mut r)? {
            let ino = InodeNo(r.u64()?);
            let kind = kind_from_byte(r.u8()?)?;
            let perm = r.u16()?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let rdev = r.u32()?;
            let nlink = r.u32()?;
            let size = r.u64()?;
            let times = [
                r.u64()? as i64,
                r.u64()? as i64,
                r.u64()? as i64,
                r.u64()? as i64,
            ];
            let version = r.u64()?;
            let parent = InodeNo(r.u64()?);
            let content = r.content()?;
            image.inodes.push(Inode {
                ino,
                kind,
                perm,
                uid,
                gid,
                rdev,
                nlink,
                size,
                atime_ns: times[0],
                mtime_ns: times[1],
                ctime_ns: times[2],
                crtime_ns: times[3],
                version,
                parent,
                content,
            });
        }
        for _ in 0..count(&mut r)? {
            image.dirents.push((
                InodeNo(r.u64()?),
                r.bytes(NAME_BYTES_MAX)?,
                InodeNo(r.u64()?),
            ));
        }
        for _ in 0..count(&mut r)? {
            image.xattrs.push((
                InodeNo(r.u64()?),
                r.bytes(XATTR_NAME_BYTES_MAX)?,
                r.bytes(XATTR_VALUE_BYTES_MAX)?,
            ));
        }
        for _ in 0..count(&mut r)? {
            let device = DeviceId(r.u32()?);
            let seq = r.u64()?;
            let rights = match r.u8()? {
                0 => Rights::None,
                1 => Rights::Read,
                2 => Rights::Write,
                3 => Rights::Owner,
                other => return Err(corrupt(format!("unknown rights {other}"))),
            };
            image.authors.push((device, seq, rights));
        }
        for _ in 0..count(&mut r)? {
            image
                .snapshots
                .push((r.bytes(NAME_BYTES_MAX)?, r.u64()?, r.u64()? as i64));
        }
        r.finish()?;
        image.check_canonical().map_err(corrupt)?;
        Ok(image)
    }

    /// The order `capture` writes (SQLite's `ORDER BY` on integer and blob keys is
    /// Rust's order on `u64` below 2^63 and on byte strings), strictly, and valid names.
    fn check_canonical(&self) -> std::result::Result<(), String> {
        fn strictly_increasing<K: Ord>(keys: impl Iterator<Item = K>) -> bool {
            let mut previous = None;
            keys.into_iter().all(|key| {
                let ok = previous.as_ref().is_none_or(|before| *before < key);
                previous = Some(key);
                ok
            })
        }
        if self
            .inodes
            .iter()
            .any(|inode| inode.ino.0 > i64::MAX as u64)
        {
            return Err("an inode number above 2^63".into());
        }
        if !strictly_increasing(self.inodes.iter().map(|inode| inode.ino)) {
            return Err("inodes out of order or repeated".into());
        }
        if !strictly_increasing(self.dirents.iter().map(|(parent, name, _)| (*parent, name))) {
            return Err("entries out of order or repeated".into());
        }
        if let Some((_, name, _)) = self
            .dirents
            .iter()
            .find(|(_, name, _)| !name_is_valid(name))
        {
            return Err(format!(
                "invalid entry name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        if !strictly_increasing(self.xattrs.iter().map(|(ino, name, _)| (*ino, name))) {
            return Err("xattrs out of order or repeated".into());
        }
        if !strictly_increasing(self.authors.iter().map(|(device, _, _)| *device)) {
            return Err("authors out of order or repeated".into());
        }
        if !strictly_increasing(self.snapshots.iter().map(|(name, _, _)| name)) {
            return Err("snapshots out of order or repeated".into());
        }
        Ok(())
    }
}

impl Image {
    /// An inode of the image (inodes are in number order).
    pub fn inode(&self, ino: InodeNo) -> Option<&Inode> {
        self.inodes
            .binary_search_by_key(&ino, |inode| inode.ino)
            .ok()
            .and_then(|index| self.inodes.get(index))
    }
}
