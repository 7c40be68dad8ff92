//! The SQLite index: address → where the record lives, its class and its hits.
//!
//! The index is a cache of the arenas, never the only copy of anything: every row can
//! be recomputed by scanning arena records, and the store does exactly that for the
//! part of each arena past `arenas.indexed_through` on every open, and for everything
//! when the index is missing, unreadable or from another schema version.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a commit is durable when it
//! returns (compaction deletes arena files right after its commit, so a lost commit
//! would lose data). Writers batch many rows per transaction; readers open their own
//! read-only connections and never wait for the writer.
//!
//! Schema (version 1):
//! - `meta(key TEXT PRIMARY KEY, value INTEGER)`: `schema_version`, `next_seq`,
//!   `hit_clock`, `next_arena`.
//! - `arenas(id INTEGER PRIMARY KEY, indexed_through INTEGER)`: every record in
//!   `[header, indexed_through)` of the arena has been seen by the index.
//! - `retired_arenas(id INTEGER PRIMARY KEY)`: arenas compaction emptied; their files are
//!   deleted (again) on open and never scanned.
//! - `blocks(address BLOB PRIMARY KEY, arena, offset, length, class, hits, last_hit, seq)
//!   WITHOUT ROWID`, with indexes on `(arena, offset)` and `(class, hits, last_hit)`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use crate::arena::{class_from_byte, class_to_byte};
use crate::{Address, Class, Error, Result};

pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS arenas (id INTEGER PRIMARY KEY, indexed_through INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retired_arenas (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS blocks (
    address BLOB PRIMARY KEY,
    arena INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    class INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_hit INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_arena ON blocks (arena, offset);
CREATE INDEX IF NOT EXISTS blocks_by_eviction ON blocks (class, hits, last_hit);
";

/// Where a block's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub arena: u32,
    /// Offset of the record header in the arena file.
    pub offset: u64,
    /// Payload (sealed block) bytes.
    pub length: u32,
    pub class: Class,
}

/// One row to insert or overwrite.
#[derive(Clone, Copy, Debug)]
pub struct Upsert {
    pub address: Address,
    pub location: Location,
    /// Put sequence number: GC never sweeps a block whose `seq` is past its fence.
    pub seq: u64,
}

/// Counters kept in `meta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub next_seq: u64,
    pub hit_clock: u64,
    pub next_arena: u32,
}

/// The writer's connection. Readers use [`Reader`].
#[derive(Debug)]
pub struct Index {
    conn: Connection,
}

/// How [`Index::open`] found the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexState {
    /// Existing and usable.
    Existing,
    /// Created empty (missing, unreadable or from another schema version): every arena
    /// must be scanned from its start.
    Fresh,
}

impl Index {
    /// Open or create the index at `path`. An unreadable database or one with another
    /// schema version is moved aside (`.bad`) and replaced by an empty one.
    pub fn open(path: &Path) -> Result<(Index, IndexState)> {
        match Self::open_existing(path) {
            Ok(Some(index)) => return Ok((index, IndexState::Existing)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "index unusable, rebuilding from arenas");
                let mut aside = path.as_os_str().to_owned();
                aside.push(".bad");
                std::fs::rename(path, &aside)?;
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(suffix);
                    let _ = std::fs::remove_file(side);
                }
            }
        }
        let conn = Self::connect(path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION],
        )?;
        Ok((Index { conn }, IndexState::Fresh))
    }

    /// `Ok(None)` when there is no index file yet.
    fn open_existing(path: &Path) -> Result<Option<Index>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Self::connect(path)?;
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        match version {
            Some(version) if version == i64::from(SCHEMA_VERSION) => {
                // Verify the tables are all there (a half-created index is rebuilt).
                conn.query_row("SELECT COUNT(*) FROM arenas", [], |row| {
                    row.get::<_, i64>(0)
                })?;
                conn.query_row("SELECT COUNT(*) FROM retired_arenas", [], |row| {
                    row.get::<_, i64>(0)
                })?;
                conn.query_row("SELECT COUNT(*) FROM blocks", [], |row| {
                    row.get::<_, i64>(0)
                })?;
                Ok(Some(Index { conn }))
            }
            Some(version) => Err(Error::UnsupportedVersion {
                what: "index schema",
                version: u32::try_from(version).unwrap_or(u32::MAX),
            }),
            None => Err(Error::Malformed {
                what: "index",
                detail: "no schema version".into(),
            }),
        }
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// A read-only connection for one reader at a time.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Reader { conn })
    }

    pub fn lookup(&self, address: &Address) -> Result<Option<Location>> {
        lookup(&self.conn, address)
    }
}

/// Where `address` is, if indexed.
pub fn lookup(conn: &Connection, address: &Address) -> Result<Option<Location>> {
    let mut statement =
        conn.prepare_cached("SELECT arena, offset, length, class FROM blocks WHERE address = ?1")?;
    let row = statement
        .query_row(params![&address.0[..]], |row| {
            Ok((
                row.get::<_, u32>(0)?,
                get_u64(row, 1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, u8>(3)?,
            ))
        })
        .optional()?;
    row.map(|(arena, offset, length, class)| location(arena, offset, length, class))
        .transpose()
}

/// SQLite integers are signed; every count and offset we store fits in 63 bits.
fn int(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

fn get_u64(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(column)?;
    u64::try_from(value).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Integer,
            Box::new(error),
        )
    })
}

fn location(arena: u32, offset: u64, length: u32, class: u8) -> Result<Location> {
    let class = class_from_byte(class).ok_or_else(|| Error::Malformed {
        what: "index row",
        detail: format!("class {class}"),
    })?;
    Ok(Location {
        arena,
        offset,
        length,
        class,
    })
}

fn address_from_blob(blob: Vec<u8>) -> Result<Address> {
    let bytes: [u8; 32] = blob.try_into().map_err(|blob: Vec<u8>| Error::Malformed {
        what: "index row",
        detail: format!("address of {} bytes", blob.len()),
    })?;
    Ok(Address(bytes))
}

pub fn read_meta(conn: &Connection) -> Result<Meta> {
    let get = |key: &str| -> Result<u64> {
        Ok(conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![key],
                |row| get_u64(row, 0),
            )
            .optional()?
            .unwrap_or(0))
    };
    Ok(Meta {
        next_seq: get("next_seq")?,
        hit_clock: get("hit_clock")?,
        next_arena: u32::try_from(get("next_arena")?).unwrap_or(u32::MAX),
    })
}

pub fn write_meta(conn: &Connection, meta: &Meta) -> Result<()> {
    let mut statement =
        conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    statement.execute(params!["next_seq", int(meta.next_seq)?])?;
    statement.execute(params!["hit_clock", int(meta.hit_clock)?])?;
    statement.execute(params!["next_arena", meta.next_arena])?;
    Ok(())
}

/// `(arena id, indexed_through)` for every live arena.
pub fn arenas(conn: &Connection) -> Result<Vec<(u32, u64)>> {
    let mut statement =
        conn.prepare_cached("SELECT id, indexed_through FROM arenas ORDER BY id")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, get_u64(row, 1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn set_indexed_through(conn: &Connection, arena: u32, indexed_through: u64) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO arenas (id, indexed_through) VALUES (?1, ?2)")?
        .execute(params![arena, int(indexed_through)?])?;
    Ok(())
}

pub fn retired_arenas(conn: &Connection) -> Result<Vec<u32>> {
    let mut statement = conn.prepare_cached("SELECT id FROM retired_arenas ORDER BY id")?;
    let rows = statement.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forget a live arena and everything indexed in it; remember it as retired.
pub fn retire_arena(conn: &Connection, arena: u32) -> Result<()> {
    conn.execute("DELETE FROM blocks WHERE arena = ?1", params![arena])?;
    conn.execute("DELETE FROM arenas WHERE id = ?1", params![arena])?;
    conn.execute(
        "INSERT OR IGNORE INTO retired_arenas (id) VALUES (?1)",
        params![arena],
    )?;
    Ok(())
}

/// Insert rows, or move existing ones (keeping their hits).
pub fn upsert(conn: &Connection, rows: &[Upsert]) -> Result<()> {
    let mut statement = conn.prepare_cached(
        "INSERT INTO blocks (address, arena, offset, length, class, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (address) DO UPDATE SET
           arena = excluded.arena, offset = excluded.offset, length = excluded.length,
           class = excluded.class, seq = max(seq, excluded.seq)",
    )?;
    for row in rows {
        statement.execute(params![
            &row.address.0[..],
            row.location.arena,
            int(row.location.offset)?,
            row.location.length,
            class_to_byte(row.location.class),
            int(row.seq)?
        ])?;
    }
    Ok(())
}

/// Raise the put sequence number of existing rows (a put that deduplicated).
pub fn touch(conn: &Connection, rows: &[(Address, u64)]) -> Result<()> {
    let mut statement =
        conn.prepare_cached("UPDATE blocks SET seq = max(seq, ?2) WHERE address = ?1")?;
    for (address, seq) in rows {
        statement.execute(params![&address.0[..], int(*seq)?])?;
    }
    Ok(())
}

pub fn set_class(conn: &Connection, address: &Address, class: Class) -> Result<()> {
    conn.prepare_cached("UPDATE blocks SET class = ?2 WHERE address = ?1")?
        .execute(params![&address.0[..], class_to_byte(class)])?;
    Ok(())
}

/// Add hits; `clock` is the logical time of this batch.
pub fn add_hits(conn: &Connection, hits: &[(Address, u32)], clock: u64) -> Result<()> {
    let mut statement = conn
        .prepare_cached("UPDATE blocks SET hits = hits + ?2, last_hit = ?3 WHERE address = ?1")?;
    for (address, count) in hits {
        statement.execute(params![&address.0[..], count, int(clock)?])?;
    }
    Ok(())
}

/// Halve every cached block's hits, so old popularity fades.
pub fn age_hits(conn: &Connection) -> Result<()> {
    conn.execute(
        "UPDATE blocks SET hits = hits / 2 WHERE class = ?1 AND hits > 0",
        params![class_to_byte(Class::Cached)],
    )?;
    Ok(())
}

pub fn remove(conn: &Connection, addresses: &[Address]) -> Result<()> {
    let mut statement = conn.prepare_cached("DELETE FROM blocks WHERE address = ?1")?;
    for address in addresses {
        statement.execute(params![&address.0[..]])?;
    }
    Ok(())
}

/// Cached blocks, least-hit (then least recently hit) first.
pub fn eviction_order(conn: &Connection, limit: usize) -> Result<Vec<(Address, u32)>> {
    let mut statement = conn.prepare_cached(
        "SELECT address, length FROM blocks WHERE class = ?1
         ORDER BY hits, last_hit LIMIT ?2",
    )?;
    let rows = statement.query_map(params![class_to_byte(Class::Cached), limit as i64], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, u32>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (blob, length) = row?;
        out.push((address_from_blob(blob)?, length));
    }
    Ok(out)
}

/// Payload bytes per class: `(pinned, cached)`, and the number of blocks.
pub fn totals(conn: &Connection) -> Result<(u64, u64, u64)> {
    let mut statement = conn.prepare_cached(
        "SELECT class, COALESCE(SUM(length), 0), COUNT(*) FROM blocks GROUP BY class",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, u8>(0)?, get_u64(row, 1)?, get_u64(row, 2)?))
    })?;
    let (mut pinned, mut cached, mut count) = (0, 0, 0);
    for row in rows {
        let (class, bytes, blocks) = row?;
        count += blocks;
        match class_from_byte(class) {
            Some(Class::Pinned) => pinned += bytes,
            Some(Class::Cached) => cached += bytes,
            None => {}
        }
    }
    Ok((pinned, cached, count))
}

/// Record bytes (header + payload) still referenced, per arena.
pub fn live_bytes_per_arena(conn: &Connection, header_bytes: u64) -> Result<Vec<(u32, u64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT arena, SUM(length + ?1) FROM blocks GROUP BY arena ORDER BY arena",
    )?;
    let rows = statement.query_map(params![int(header_bytes)?], |row| {
        Ok((row.get(0)?, get_u64(row, 1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every block in `arena`, by offset.
pub fn blocks_in_arena(conn: &Connection, arena: u32) -> Result<Vec<(Address, Location, u64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT address, offset, length, class, seq FROM blocks WHERE arena = ?1 ORDER BY offset",
    )?;
    let rows = statement.query_map(params![arena], |row| {
        Ok((
            row.get::<_, Vec<u8>>(0)?,
            get_u64(row, 1)?,
            row.get::<_, u32>(2)?,
            row.get::<_, u8>(3)?,
            get_u64(row, 4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (blob, offset, length, class, seq) = row?;
        out.push((
            address_from_blob(blob)?,
            location(arena, offset, length, class)?,
            seq,
        ));
    }
    Ok(out)
}

/// Addresses of blocks put before `fence` (sequence number), for GC's sweep.
pub fn addresses_before(conn: &Connection, fence: u64) -> Result<Vec<Address>> {
    let mut statement = conn.prepare_cached("SELECT address FROM blocks WHERE seq < ?1")?;
    let rows = statement.query_map(params![int(fence)?], |row| row.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(address_from_blob(row?)?);
    }
    Ok(out)
}

/// Arena ids the index refers to in `blocks` (to find rows pointing at missing arenas).
pub fn arenas_referenced(conn: &Connection) -> Result<Vec<u32>> {
    let mut statement = conn.prepare_cached("SELECT DISTINCT arena FROM blocks")?;
    let rows = statement.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drop rows of `arena` whose records end past `len` (a truncated arena); returns them.
pub fn drop_past(
    conn: &Connection,
    arena: u32,
    len: u64,
    header_bytes: u64,
) -> Result<Vec<Address>> {
    let mut statement = conn.prepare_cached(
        "SELECT address FROM blocks WHERE arena = ?1 AND offset + ?3 + length > ?2",
    )?;
    let rows = statement.query_map(params![arena, int(len)?, int(header_bytes)?], |row| {
        row.get::<_, Vec<u8>>(0)
    })?;
    let mut lost = Vec::new();
    for row in rows {
        lost.push(address_from_blob(row?)?);
    }
    remove(conn, &lost)?;
    Ok(lost)
}
