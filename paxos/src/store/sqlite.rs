//! SQLite acceptor store: one database file per volume group, `synchronous=FULL`, WAL.
//!
//! Writes between two `sync` calls go into one transaction; `sync` commits it, which
//! with `synchronous=FULL` fsyncs before returning. Entries and snapshots are stored in
//! the crate's versioned codec, so a corrupt row is reported, never trusted.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::codec;
use crate::error::Error;
use crate::store::{AcceptorStore, DurableState, DurableWrite};

/// A durable store backed by one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    in_transaction: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS accepted (slot INTEGER PRIMARY KEY, ballot BLOB NOT NULL, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS committed (slot INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, command BLOB NOT NULL);",
        )?;
        Ok(SqliteStore {
            conn,
            in_transaction: false,
        })
    }

    fn begin(&mut self) -> Result<(), Error> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

/// SQLite integers are signed; slots and seqs above `i64::MAX` never occur, saturate.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(what: &'static str) -> Error {
    Error::Malformed { what, offset: 0 }
}

/// A `u64` stored as 8 little-endian bytes.
fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, Error> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what))?;
    Ok(u64::from_le_bytes(bytes))
}

impl AcceptorStore for SqliteStore {
    fn write(&mut self, write: &DurableWrite) -> Result<(), Error> {
        self.begin()?;
        match write {
            DurableWrite::Promise { ballot } => {
                let current = match self.meta("promised")? {
                    Some(b) => codec::decode_ballot(&b)?,
                    None => crate::Ballot::ZERO,
                };
                self.set_meta("promised", &codec::encode_ballot(current.max(*ballot)))?;
            }
            DurableWrite::Accept {
                ballot,
                first,
                entries,
            } => {
                let current = match self.meta("promised")? {
                    Some(b) => codec::decode_ballot(&b)?,
                    None => crate::Ballot::ZERO,
                };
                self.set_meta("promised", &codec::encode_ballot(current.max(*ballot)))?;
                let ballot_bytes = codec::encode_ballot(*ballot);
                let mut stmt = self.conn.prepare_cached(
                    "INSERT OR REPLACE INTO accepted (slot, ballot, entry) VALUES (?1, ?2, ?3)",
                )?;
                let mut slot = *first;
                let mut bytes = Vec::new();
                for entry in entries {
                    bytes.clear();
                    codec::encode_entry(entry, &mut bytes);
                    stmt.execute(params![sql_int(slot.0), ballot_bytes, bytes])?;
                    slot = slot.next();
                }
            }
            DurableWrite::Commit {
                first,
                entries,
                head,
            } => {
                let mut slot = *first;
                {
                    let mut stmt = self.conn.prepare_cached(
                        "INSERT OR REPLACE INTO committed (slot, entry) VALUES (?1, ?2)",
                    )?;
                    let mut bytes = Vec::new();
                    for entry in entries {
                        bytes.clear();
                        codec::encode_entry(entry, &mut bytes);
                        stmt.execute(params![sql_int(slot.0), bytes])?;
                        slot = slot.next();
                    }
                }
                self.conn
                    .execute("DELETE FROM accepted WHERE slot < ?1", [sql_int(slot.0)])?;
                self.set_meta("head", &head.0)?;
            }
            DurableWrite::Snapshot(snapshot) => {
                let slot = sql_int(snapshot.slot.0);
                self.conn
                    .execute("DELETE FROM committed WHERE slot <= ?1", [slot])?;
                self.conn
                    .execute("DELETE FROM accepted WHERE slot <= ?1", [slot])?;
                let remaining: i64 =
                    self.conn
                        .query_row("SELECT COUNT(*) FROM committed", [], |r| r.get(0))?;
                if remaining == 0 {
                    self.set_meta("head", &snapshot.chain.0)?;
                }
                self.set_meta("snapshot", &codec::encode_snapshot(snapshot))?;
            }
            DurableWrite::DiscardAccepted { from } => {
                self.conn
                    .execute("DELETE FROM accepted WHERE slot >= ?1", [sql_int(from.0)])?;
            }
            DurableWrite::Enqueue { command } => {
                self.conn.execute(
                    "INSERT OR REPLACE INTO queue (seq, command) VALUES (?1, ?2)",
                    params![sql_int(command.seq), codec::encode_command(command)],
                )?;
            }
            DurableWrite::Dequeue { through_seq } => {
                self.conn
                    .execute("DELETE FROM queue WHERE seq <= ?1", [sql_int(*through_seq)])?;
            }
            DurableWrite::ReserveReadIds { through } => {
                let current = match self.meta("read_ids_reserved")? {
                    Some(b) => decode_u64(&b, "reserved read ids")?,
                    None => 0,
                };
                let reserved = current.max(through.0);
                self.set_meta("read_ids_reserved", &reserved.to_le_bytes())?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Error> {
        if self.in_transaction {
            self.conn.execute_batch("COMMIT")?;
            self.in_transaction = false;
        }
        Ok(())
    }

    fn load(&self) -> Result<DurableState, Error> {
        let mut state = DurableState::default();
        if let Some(b) = self.meta("promised")? {
            state.promised = codec::decode_ballot(&b)?;
        }
        if let Some(b) = self.meta("snapshot")? {
            state.snapshot = Some(codec::decode_snapshot(&b)?);
        }
        if let Some(b) = self.meta("read_ids_reserved")? {
            state.read_ids_reserved = crate::ReadId(decode_u64(&b, "reserved read ids")?);
        }
        if let Some(b) = self.meta("head")? {
            let bytes: [u8; 32] = b.try_into().map_err(|_| corrupt("chain head"))?;
            state.head = Some(crate::ChainHash(bytes));
        }
        let slot_of = |v: i64| u64::try_from(v).map(crate::Slot);
        let mut stmt = self
            .conn
            .prepare("SELECT slot, ballot, entry FROM accepted ORDER BY slot")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let slot = slot_of(row.get(0)?).map_err(|_| corrupt("accepted slot"))?;
            let ballot = codec::decode_ballot(&row.get::<_, Vec<u8>>(1)?)?;
            let entry = codec::decode_entry(&row.get::<_, Vec<u8>>(2)?)?;
            state.accepted.insert(slot, (ballot, entry));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT slot, entry FROM committed ORDER BY slot")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let slot = slot_of(row.get(0)?).map_err(|_| corrupt("committed slot"))?;
            let entry = codec::decode_entry(&row.get::<_, Vec<u8>>(1)?)?;
            state.committed.insert(slot, entry);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT seq, command FROM queue ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let seq = u64::try_from(row.get::<_, i64>(0)?).map_err(|_| corrupt("queue seq"))?;
            let command = codec::decode_command(&row.get::<_, Vec<u8>>(1)?)?;
            state.queue.insert(seq, command);
        }
        Ok(state)
    }
}
