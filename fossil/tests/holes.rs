//! `lseek(SEEK_DATA / SEEK_HOLE)` on a volume over a real venti store: holes are the
//! all-zero leaves of a file's tree, found from pointer blocks alone, and the bytes
//! past its stored content. Expected answers come from chunking the file's bytes with
//! the volume's own keys: a tree is a function of its content and epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::Path;

use fossil::venti_content::{EpochSecrets, VOLUME_KEY_FILE};
use fossil::{Caller, Error, FallocateMode, FileHandle, InodeNo, SeekTo, SetAttr, Volume};
use venti::chunk::Chunker;

mod common;
use common::incompressible;

const ME: Caller = Caller { uid: 0, gid: 0 };
const MIB: u64 = 1 << 20;

fn open(dir: &Path) -> Volume {
    Volume::open_with(
        dir,
        fossil::volume::VolumeOptions {
            background: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn create(volume: &Volume, name: &str) -> (InodeNo, FileHandle) {
    let (attr, handle) = volume
        .create(InodeNo::ROOT, OsStr::new(name), 0o644, ME, true)
        .unwrap();
    (attr.ino, handle)
}

fn write_all(volume: &Volume, ino: InodeNo, handle: FileHandle, at: u64, bytes: &[u8]) {
    for (index, piece) in bytes.chunks(1 << 20).enumerate() {
        let offset = at + (index as u64) * (1 << 20);
        volume.write(ino, handle, offset, piece).unwrap();
    }
}

/// The leaves of `content` under the volume's keys, as `(start, end)` of the all-zero
/// ones a search can recognise (of the zero-run length, or the last leaf).
fn zero_leaves(dir: &Path, content: &[u8]) -> Vec<(u64, u64)> {
    let secrets = EpochSecrets::read(&dir.join(VOLUME_KEY_FILE))
        .unwrap()
        .unwrap();
    let keys = secrets.epoch_keys(secrets.newest().0).unwrap();
    let chunker = Chunker::new(&keys);
    let run = chunker.cut(&vec![0u8; chunker.bytes_max()]);
    let mut out = Vec::new();
    let mut start = 0usize;
    for length in chunker.chunk_lengths(content) {
        let end = start + length;
        if (length == run || end == content.len()) && content[start..end].iter().all(|b| *b == 0) {
            out.push((start as u64, end as u64));
        }
        start = end;
    }
    out
}

#[test]
fn a_punched_hole_is_found_at_its_leaf_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let size = 32 * MIB;
    let mut content = incompressible(1, size as usize);
    let (ino, handle) = create(&volume, "image");
    write_all(&volume, ino, handle, 0, &content);
    volume.fsync(ino, false).unwrap();
    let (punch_start, punch_end) = (8 * MIB, 24 * MIB);
    volume
        .fallocate(
            ino,
            punch_start,
            punch_end - punch_start,
            FallocateMode {
                keep_size: true,
                punch_hole: true,
                zero_range: false,
            },
        )
        .unwrap();
    volume.flush(ino, handle).unwrap();
    content[punch_start as usize..punch_end as usize].fill(0);
    let zeros = zero_leaves(dir.path(), &content);
    let (first_start, _) = zeros[0];
    let run_end = zeros
        .iter()
        .take_while(|(start, _)| *start < punch_end)
        .last()
        .unwrap()
        .1;
    assert!(first_start >= punch_start && first_start < punch_start + MIB / 4);
    // Two leaves: the zero leaf just before data may be cut short (and is data).
    assert!(run_end <= punch_end && run_end > punch_end - MIB / 2);

    // SEEK_HOLE from 0 lands on the first all-zero leaf, SEEK_DATA from there on the
    // end of the last one: exact leaf boundaries inside the punched range.
    assert_eq!(volume.lseek(ino, 0, SeekTo::Hole).unwrap(), first_start);
    assert_eq!(
        volume.lseek(ino, first_start, SeekTo::Data).unwrap(),
        run_end
    );
    assert_eq!(volume.lseek(ino, 12 * MIB, SeekTo::Hole).unwrap(), 12 * MIB);
    assert_eq!(volume.lseek(ino, 12 * MIB, SeekTo::Data).unwrap(), run_end);
    assert_eq!(volume.lseek(ino, 100, SeekTo::Data).unwrap(), 100);
    // The last region is data: its hole is the end of the file.
    assert_eq!(volume.lseek(ino, run_end, SeekTo::Hole).unwrap(), size);
    assert_eq!(volume.lseek(ino, size - 1, SeekTo::Hole).unwrap(), size);
    assert_eq!(volume.lseek(ino, size - 1, SeekTo::Data).unwrap(), size - 1);
    for past in [size, size + 1] {
        for to in [SeekTo::Data, SeekTo::Hole] {
            assert!(matches!(
                volume.lseek(ino, past, to),
                Err(Error::SeekPastEnd)
            ));
        }
    }
    // The reads agree: what is called a hole reads as zeros.
    let bytes = volume
        .read(ino, handle, first_start, (run_end - first_start) as u32)
        .unwrap();
    assert!(bytes.iter().all(|b| *b == 0));
    volume.release(ino, handle).unwrap();

    // The same answers after a reopen (nothing cached in the volume).
    drop(volume);
    let volume = open(dir.path());
    assert_eq!(volume.lseek(ino, 0, SeekTo::Hole).unwrap(), first_start);
    assert_eq!(
        volume.lseek(ino, first_start, SeekTo::Data).unwrap(),
        run_end
    );
}

#[test]
fn a_file_grown_by_truncate_is_a_hole_up_to_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let size = 24 * MIB;
    let tail = incompressible(2, MIB as usize);
    let (ino, handle) = create(&volume, "sparse");
    let grow = SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    volume.setattr(ino, &grow, Some(handle)).unwrap();
    // Only grown: no data at all, every offset a hole.
    assert!(matches!(
        volume.lseek(ino, 0, SeekTo::Data),
        Err(Error::SeekPastEnd)
    ));
    assert_eq!(volume.lseek(ino, 5, SeekTo::Hole).unwrap(), 5);
    // One write at the end: the zeros before it are stored as zero leaves.
    write_all(&volume, ino, handle, size - MIB, &tail);
    volume.release(ino, handle).unwrap();
    let mut content = vec![0u8; (size - MIB) as usize];
    content.extend_from_slice(&tail);
    let zeros = zero_leaves(dir.path(), &content);
    let data_at = zeros[zeros.len() - 1].1;
    assert!(data_at <= size - MIB && data_at > size - MIB - MIB / 2);
    assert_eq!(volume.lseek(ino, 0, SeekTo::Hole).unwrap(), 0);
    assert_eq!(volume.lseek(ino, 0, SeekTo::Data).unwrap(), data_at);
    assert_eq!(volume.lseek(ino, data_at, SeekTo::Hole).unwrap(), size);
    // st_blocks leaves the zero leaves out (cp and tar look for holes only then).
    let blocks = volume.getattr(ino).unwrap().blocks;
    assert_eq!(blocks, (size - data_at).div_ceil(512));
}

#[test]
fn buffered_writes_are_flushed_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let (ino, handle) = create(&volume, "buffered");
    let head = incompressible(3, 2 * MIB as usize);
    write_all(&volume, ino, handle, 0, &head);
    // Still buffered: a byte at 10 MiB leaves 8 MiB of zeros between.
    volume.write(ino, handle, 10 * MIB, b"x").unwrap();
    let hole = volume.lseek(ino, 0, SeekTo::Hole).unwrap();
    let mut content = head.clone();
    content.resize(10 * MIB as usize, 0);
    content.push(b'x');
    let zeros = zero_leaves(dir.path(), &content);
    assert_eq!(hole, zeros[0].0);
    assert_eq!(
        volume.lseek(ino, hole, SeekTo::Data).unwrap(),
        zeros[zeros.len() - 1].1
    );
    assert_eq!(
        volume.lseek(ino, 10 * MIB, SeekTo::Hole).unwrap(),
        10 * MIB + 1
    );
    volume.release(ino, handle).unwrap();
}
