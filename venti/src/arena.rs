//! Arena files: append-only logs of block records.
//!
//! An arena starts with a 32-byte [`ArenaHeader`] and then holds records back to back.
//! A record is a 56-byte [`RecordHeader`] (magic, version, class, payload length,
//! address, a checksum of the header itself) followed by the sealed block bytes; the
//! address doubles as the payload checksum. All integers are little-endian; the byte
//! layout is in `docs/formats-store.md`.
//!
//! Records are never modified in place. A record is *valid* only when its header
//! checksum holds, its length is within bounds and its payload hashes to its address —
//! so a torn write (any prefix of a record) is never mistaken for a block.
//! [`scan`] walks a byte range of an arena and reports every valid record and every
//! damaged stretch between them; the store uses it to re-index the unindexed tail on
//! open, to rebuild a lost index, and to cut a torn tail.
//!
//! Reads: [`read_record`] checks a record fully (header against the index, payload
//! hash) and is what `verify`, compaction and every `get` use. [`read_record_unhashed`]
//! checks the header against the index but leaves the payload hash out; it is only for
//! a reader that opens the block right after, whose tag and key-commitment checks
//! subsume the hash for content (see `seal`'s "Which checks a read needs"), and who
//! hashes the payload when the block fails to authenticate, so damage is still
//! reported with this arena and offset. It reads header and payload in one read into
//! a caller's reusable buffer and returns the payload's place in it: no move, no
//! allocation per record.

use std::ops::Range;

use crate::backend::BackendFile;
use crate::{Address, Class, Error, Result};

/// Arena file names: `arena-` + 8 lower-case hex digits of the arena id + `.kva`.
pub const ARENA_NAME_PREFIX: &str = "arena-";
pub const ARENA_NAME_SUFFIX: &str = ".kva";

pub const ARENA_MAGIC: [u8; 8] = *b"KITHVNA\0";
pub const ARENA_VERSION: u32 = 1;
pub const ARENA_HEADER_BYTES: u64 = 32;

pub const RECORD_MAGIC: [u8; 4] = *b"KVRC";
pub const RECORD_VERSION: u8 = 1;
pub const RECORD_HEADER_BYTES: usize = 56;
/// Bound on one record's payload: far above any sealed chunk or pointer block, small
/// enough that a corrupt length can never make us allocate much.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 16 << 20;
/// How much a resynchronising scan reads at once when looking for the next record.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

const _: () = assert!(RECORD_HEADER_BYTES as u64 + (RECORD_PAYLOAD_BYTES_MAX as u64) < (1 << 32));

/// The name of arena `id`'s file.
pub fn arena_name(id: u32) -> String {
    format!("{ARENA_NAME_PREFIX}{id:08x}{ARENA_NAME_SUFFIX}")
}

/// The id in an arena file name, if `name` is one.
pub fn parse_arena_name(name: &str) -> Option<u32> {
    let hex = name
        .strip_prefix(ARENA_NAME_PREFIX)?
        .strip_suffix(ARENA_NAME_SUFFIX)?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

fn checksum8(bytes: &[u8]) -> [u8; 8] {
    let hash = blake3::hash(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    out
}

/// `magic[8] ‖ version u32 ‖ arena id u32 ‖ reserved[8] = 0 ‖ checksum[8]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaHeader {
    pub arena: u32,
}

impl ArenaHeader {
    pub fn encode(&self) -> [u8; ARENA_HEADER_BYTES as usize] {
        let mut out = [0u8; ARENA_HEADER_BYTES as usize];
        out[..8].copy_from_slice(&ARENA_MAGIC);
        out[8..12].copy_from_slice(&ARENA_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.arena.to_le_bytes());
        let checksum = checksum8(&out[..24]);
        out[24..].copy_from_slice(&checksum);
        out
    }

    pub fn decode(bytes: &[u8; ARENA_HEADER_BYTES as usize], arena: u32) -> Result<ArenaHeader> {
        let corrupt = |reason: String| Error::Corrupt {
            arena,
            offset: 0,
            reason,
        };
        if bytes[..8] != ARENA_MAGIC {
            return Err(corrupt("arena header: bad magic".into()));
        }
        if bytes[24..] != checksum8(&bytes[..24]) {
            return Err(corrupt("arena header: checksum mismatch".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != ARENA_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "arena",
                version,
            });
        }
        let id = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if id != arena {
            return Err(corrupt(format!("arena header names arena {id}")));
        }
        Ok(ArenaHeader { arena: id })
    }
}

/// `magic[4] ‖ version u8 ‖ class u8 ‖ reserved u16 = 0 ‖ length u32 ‖ reserved u32 = 0
/// ‖ address[32] ‖ checksum[8]` where checksum = BLAKE3(first 48 bytes)[..8].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub class: Class,
    pub length: u32,
    pub address: Address,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut out = [0u8; RECORD_HEADER_BYTES];
        out[..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = RECORD_VERSION;
        out[5] = class_to_byte(self.class);
        out[8..12].copy_from_slice(&self.length.to_le_bytes());
        out[16..48].copy_from_slice(&self.address.0);
        let checksum = checksum8(&out[..48]);
        out[48..].copy_from_slice(&checksum);
        out
    }

    /// Parse a header; the reason string says what is wrong.
    pub fn decode(bytes: &[u8; RECORD_HEADER_BYTES]) -> std::result::Result<RecordHeader, String> {
        if bytes[..4] != RECORD_MAGIC {
            return Err("record header: bad magic".into());
        }
        if bytes[48..] != checksum8(&bytes[..48]) {
            return Err("record header: checksum mismatch".into());
        }
        if bytes[4] != RECORD_VERSION {
            return Err(format!("record header: unknown version {}", bytes[4]));
        }
        let class = class_from_byte(bytes[5])
            .ok_or_else(|| format!("record header: unknown class {}", bytes[5]))?;
        let length = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if length > RECORD_PAYLOAD_BYTES_MAX {
            return Err(format!("record header: length {length} over the maximum"));
        }
        let mut address = [0u8; 32];
        address.copy_from_slice(&bytes[16..48]);
        Ok(RecordHeader {
            class,
            length,
            address: Address(address),
        })
    }

    /// Header plus payload, in bytes.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.length)
    }
}

pub fn class_to_byte(class: Class) -> u8 {
    match class {
        Class::Pinned => 0,
        Class::Cached => 1,
    }
}

pub fn class_from_byte(byte: u8) -> Option<Class> {
    match byte {
        0 => Some(Class::Pinned),
        1 => Some(Class::Cached),
        _ => None,
    }
}

/// Append `header ‖ sealed` to `out`.
pub fn encode_record(out: &mut Vec<u8>, header: &RecordHeader, sealed: &[u8]) {
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(sealed);
}

/// Read and fully check the record at `offset`, which the index says holds `address`:
/// its header and its payload's hash. Returns the header and the payload (the sealed
/// block). Every failure names the arena, the offset and what is wrong.
pub fn read_record(
    file: &dyn BackendFile,
    arena: u32,
    offset: u64,
    address: &Address,
    length: u32,
) -> Result<(RecordHeader, Vec<u8>)> {
    let damaged = damaged_at(arena, offset, address);
    check_index_length(length).map_err(&damaged)?;
    // Header and payload in two reads: the payload lands in a vector of its own
    // without being moved past the header.
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
    read_exact(file, offset, &mut header_bytes).map_err(|error| error.into_error(&damaged))?;
    let header = check_header(&header_bytes, address, length).map_err(&damaged)?;
    let mut payload = vec![0u8; length as usize];
    read_exact(file, offset + RECORD_HEADER_BYTES as u64, &mut payload)
        .map_err(|error| error.into_error(&damaged))?;
    if Address::of(&payload) != *address {
        return Err(damaged(PAYLOAD_MISMATCH.into()));
    }
    Ok((header, payload))
}

/// [`read_record`] into `buffer` (overwritten; grown when too short, never shrunk, so
/// a reader of many records allocates and zeroes once) in one read, checking the
/// header against the index but NOT hashing the payload: only for a reader that opens
/// the block and so checks it more strongly (see `seal`'s "Which checks a read
/// needs"). Returns the header and where the payload is in `buffer`.
pub fn read_record_unhashed(
    file: &dyn BackendFile,
    arena: u32,
    offset: u64,
    address: &Address,
    length: u32,
    buffer: &mut Vec<u8>,
) -> Result<(RecordHeader, Range<usize>)> {
    let damaged = damaged_at(arena, offset, address);
    check_index_length(length).map_err(&damaged)?;
    let record_bytes = RECORD_HEADER_BYTES + length as usize;
    if buffer.len() < record_bytes {
        buffer.resize(record_bytes, 0);
    }
    let record = &mut buffer[..record_bytes];
    read_exact(file, offset, record).map_err(|error| error.into_error(&damaged))?;
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
    header_bytes.copy_from_slice(&record[..RECORD_HEADER_BYTES]);
    let header = check_header(&header_bytes, address, length).map_err(&damaged)?;
    Ok((header, RECORD_HEADER_BYTES..record_bytes))
}

/// Why a record whose payload does not match its address is refused.
pub(crate) const PAYLOAD_MISMATCH: &str = "payload does not hash to its address";

fn damaged_at(arena: u32, offset: u64, address: &Address) -> impl Fn(String) -> Error {
    let address = *address;
    move |reason| Error::Damaged {
        address,
        arena,
        offset,
        reason,
    }
}

fn check_index_length(length: u32) -> std::result::Result<(), String> {
    if length > RECORD_PAYLOAD_BYTES_MAX {
        return Err(format!("index length {length} over the maximum"));
    }
    Ok(())
}

/// Decode a record header and check it names what the index says is there.
fn check_header(
    bytes: &[u8; RECORD_HEADER_BYTES],
    address: &Address,
    length: u32,
) -> std::result::Result<RecordHeader, String> {
    let header = RecordHeader::decode(bytes)?;
    if header.address != *address {
        return Err(format!("record holds {}", header.address));
    }
    if header.length != length {
        return Err(format!(
            "record length {} but index says {length}",
            header.length
        ));
    }
    Ok(header)
}

/// A failed read of a record: past the end of the arena, or the backend's error.
enum ReadFailure {
    Truncated,
    Other(Error),
}

impl ReadFailure {
    fn into_error(self, damaged: &impl Fn(String) -> Error) -> Error {
        match self {
            ReadFailure::Truncated => {
                damaged("record extends past the end of the arena (truncated)".into())
            }
            ReadFailure::Other(error) => error,
        }
    }
}

fn read_exact(
    file: &dyn BackendFile,
    offset: u64,
    buf: &mut [u8],
) -> std::result::Result<(), ReadFailure> {
    file.read_at(offset, buf).map_err(|error| match error {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ReadFailure::Truncated,
        other => ReadFailure::Other(other),
    })
}

/// What [`scan`] found.
#[derive(Debug)]
pub enum ScanItem {
    /// A valid record at `offset`.
    Record { offset: u64, header: RecordHeader },
    /// Bytes `offset..offset + bytes` hold no valid record, but a valid one follows.
    Damaged {
        offset: u64,
        bytes: u64,
        reason: String,
    },
}

/// The result of scanning `start..` of an arena.
#[derive(Debug)]
pub struct Scan {
    pub items: Vec<ScanItem>,
    /// Where the last valid record ends: everything from here on is a torn or garbage
    /// tail that holds no valid record.
    pub valid_end: u64,
    /// The reason the bytes after `valid_end` are invalid, if there are any.
    pub tail_reason: Option<String>,
}

/// Walk records from `start` to the end of `file`, checking each one completely.
/// After an invalid stretch the scan looks for the next valid record, so one damaged
/// record never hides the undamaged ones behind it.
pub fn scan(file: &dyn BackendFile, start: u64) -> Result<Scan> {
    let end = file.len()?;
    let mut items = Vec::new();
    let mut offset = start;
    let mut valid_end = start;
    let mut tail_reason = None;
    while offset < end {
        match check_record_at(file, offset, end)? {
            Ok(header) => {
                if offset != valid_end {
                    items.push(ScanItem::Damaged {
                        offset: valid_end,
                        bytes: offset - valid_end,
                        reason: tail_reason.take().unwrap_or_default(),
                    });
                }
                tail_reason = None;
                items.push(ScanItem::Record { offset, header });
                offset += header.record_bytes();
                valid_end = offset;
            }
            Err(reason) => {
                if tail_reason.is_none() {
                    tail_reason = Some(reason);
                }
                match find_next_magic(file, offset + 1, end)? {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    if valid_end >= end {
        tail_reason = None;
    }
    Ok(Scan {
        items,
        valid_end,
        tail_reason,
    })
}

/// `Ok(Ok(header))` for a valid record at `offset`, `Ok(Err(reason))` for anything else.
fn check_record_at(
    file: &dyn BackendFile,
    offset: u64,
    end: u64,
) -> Result<std::result::Result<RecordHeader, String>> {
    if end - offset < RECORD_HEADER_BYTES as u64 {
        return Ok(Err("partial record header".into()));
    }
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
    file.read_at(offset, &mut header_bytes)?;
    let header = match RecordHeader::decode(&header_bytes) {
        Ok(header) => header,
        Err(reason) => return Ok(Err(reason)),
    };
    if end - offset < header.record_bytes() {
        return Ok(Err("partial record payload".into()));
    }
    let mut payload = vec![0u8; header.length as usize];
    file.read_at(offset + RECORD_HEADER_BYTES as u64, &mut payload)?;
    if Address::of(&payload) != header.address {
        return Ok(Err(format!(
            "payload of {} does not hash to its address",
            header.address
        )));
    }
    Ok(Ok(header))
}

/// The next offset in `from..end` where the record magic appears.
fn find_next_magic(file: &dyn BackendFile, from: u64, end: u64) -> Result<Option<u64>> {
    let mut window_start = from;
    let mut window = vec![0u8; SCAN_WINDOW_BYTES];
    while window_start < end {
        let want = (end - window_start).min(SCAN_WINDOW_BYTES as u64) as usize;
        let buf = &mut window[..want];
        file.read_at(window_start, buf)?;
        if let Some(position) = buf
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)
        {
            return Ok(Some(window_start + position as u64));
        }
        if want < RECORD_MAGIC.len() {
            break;
        }
        // Overlap windows so a magic split across the boundary is still found.
        window_start += (want - (RECORD_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_header_round_trip(address: [u8; 32], length in 0..=RECORD_PAYLOAD_BYTES_MAX, pinned: bool) {
            let class = if pinned { Class::Pinned } else { Class::Cached };
            let header = RecordHeader { class, length, address: Address(address) };
            prop_assert_eq!(RecordHeader::decode(&header.encode()), Ok(header));
        }

        #[test]
        fn any_flipped_bit_breaks_a_record_header(bit in 0..(RECORD_HEADER_BYTES * 8)) {
            let header = RecordHeader { class: Class::Cached, length: 9, address: Address::of(b"x") };
            let mut bytes = header.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(RecordHeader::decode(&bytes).is_err());
        }

        #[test]
        fn arena_header_round_trip(arena: u32) {
            let header = ArenaHeader { arena };
            prop_assert_eq!(ArenaHeader::decode(&header.encode(), arena).ok(), Some(header));
        }
    }

    #[test]
    fn arena_names_round_trip_and_reject_others() {
        assert_eq!(
            parse_arena_name(&arena_name(0x1234_abcd)),
            Some(0x1234_abcd)
        );
        assert_eq!(parse_arena_name("arena-1.kva"), None);
        assert_eq!(parse_arena_name("index.sqlite"), None);
        assert_eq!(parse_arena_name("arena-0000000g.kva"), None);
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = RecordHeader {
            class: Class::Pinned,
            length: payload.len() as u32,
            address: Address::of(payload),
        };
        encode_record(&mut out, &header, payload);
        out
    }

    #[test]
    fn scan_skips_a_damaged_record_and_reports_a_torn_tail() -> Result<()> {
        let backend = MemoryBackend::new(1)?;
        let file = backend.open("a", true)?;
        let mut bytes = Vec::new();
        bytes.extend(record(b"first"));
        let second_at = bytes.len() as u64;
        bytes.extend(record(b"second"));
        let third_at = bytes.len() as u64;
        bytes.extend(record(b"third"));
        let tail_at = bytes.len() as u64;
        let mut torn = record(b"fourth, torn");
        torn.truncate(30);
        bytes.extend(torn);
        // Damage the payload of the second record.
        bytes[second_at as usize + RECORD_HEADER_BYTES] ^= 0x10;
        file.write_at(0, &bytes)?;

        let scan = scan(file.as_ref(), 0)?;
        let offsets: Vec<u64> = scan
            .items
            .iter()
            .filter_map(|item| match item {
                ScanItem::Record { offset, .. } => Some(*offset),
                ScanItem::Damaged { .. } => None,
            })
            .collect();
        assert_eq!(offsets, vec![0, third_at]);
        assert!(scan.items.iter().any(|item| matches!(
            item,
            ScanItem::Damaged { offset, bytes, .. } if *offset == second_at && *bytes == third_at - second_at
        )));
        assert_eq!(scan.valid_end, tail_at);
        assert!(scan.tail_reason.is_some());
        Ok(())
    }
}
