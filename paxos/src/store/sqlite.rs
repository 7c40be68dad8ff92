//! SQLite acceptor store: one database file per volume group, `synchronous=FULL`, WAL.
//!
//! Writes between two `sync` calls go into one transaction; `sync` commits it, which
//! with `synchronous=FULL` fsyncs before returning. Entries and snapshots are stored in
//! the crate's versioned codec, so a corrupt row is reported, never trusted.
//!
//! Size: a snapshot deletes the committed entries it covers in the same transaction
//! that records it (a crash keeps both or neither). The file is created with
//! `auto_vacuum = INCREMENTAL` and the pages a snapshot freed are returned to the file
//! system after its commit, so the file follows the log since the last snapshot
//! instead of its high-water mark; the WAL is truncated to
//! [`WAL_BYTES_KEPT`] after each checkpoint of it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::codec;
use crate::error::Error;
use crate::store::{AcceptorStore, DurableState, DurableWrite};

/// The WAL file is truncated to at most this many bytes when SQLite checkpoints it
/// (without it the WAL keeps the size of its largest burst).
const WAL_BYTES_KEPT: i64 = 4 << 20;

/// A durable store backed by one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    in_transaction: bool,
    /// A snapshot freed pages in the transaction `sync` commits next.
    vacuum_after_sync: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        // Takes effect only on a new, empty file (before the first table).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "journal_size_limit", WAL_BYTES_KEPT)?;
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
            vacuum_after_sync: false,
        })
    }

    fn begin(&mut self) -> Result<(), Error> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Gives the free pages back to the file system. The pragma frees one page per
    /// step: it must be stepped to the end.
    fn incremental_vacuum(&self) -> Result<(), Error> {
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
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
                self.vacuum_after_sync = true;
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
        if std::mem::take(&mut self.vacuum_after_sync) {
            // Only gives free pages back: nothing durable depends on it, so a failure
            // (or a crash during it) costs disk space, never state; the next snapshot
            // tries again.
            let _ = self.incremental_vacuum();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{Config, ConfigId, Effect, Node, NodeId, NodeOptions, Slot, Timer, VolumeId};

    const COMMANDS: u64 = 400;
    const PAYLOAD_BYTES: usize = 2048;

    fn options() -> NodeOptions {
        NodeOptions::new(NodeId(1), VolumeId(9))
    }

    fn genesis() -> Config {
        Config::majority(ConfigId(1), [NodeId(1)], [], []).unwrap()
    }

    /// Persists `fx` in order, syncing before the first non-persist effect, as a driver
    /// must; answers the commits.
    fn drive(store: &mut SqliteStore, fx: Vec<Effect>) -> Vec<Slot> {
        let mut commits = Vec::new();
        for effect in fx {
            match effect {
                Effect::Persist(write) => store.write(&write).unwrap(),
                Effect::Commit { slot, .. } => {
                    store.sync().unwrap();
                    commits.push(slot);
                }
                _ => store.sync().unwrap(),
            }
        }
        store.sync().unwrap();
        commits
    }

    /// A single-voter node that committed `COMMANDS` commands into the store at `path`.
    fn committed_node(path: &Path) -> Node {
        let mut store = SqliteStore::open(path).unwrap();
        let mut node = Node::new(options(), genesis());
        let fx = node.start(0);
        drive(&mut store, fx);
        let at_ms = 10_000;
        let fx = node.handle_timeout(at_ms, Timer::Election);
        drive(&mut store, fx);
        assert!(node.is_leader(), "a single voter leads after its timeout");
        for batch in 0..COMMANDS / 20 {
            let payloads = (0..20)
                .map(|i| vec![u8::try_from((batch * 20 + i) % 251).unwrap(); PAYLOAD_BYTES])
                .collect();
            let (_, fx) = node.propose_many(at_ms, payloads).unwrap();
            drive(&mut store, fx);
        }
        assert!(node.commit_index().0 > COMMANDS, "every command committed");
        node
    }

    /// What a restart finds: the recovered node, and the slots its log still holds.
    fn restart(path: &Path) -> (Node, Vec<Slot>) {
        let state = SqliteStore::open(path).unwrap().load().unwrap();
        let slots = state.committed.keys().copied().collect();
        let node = Node::recover(options(), genesis(), state).unwrap();
        (node, slots)
    }

    fn file_bytes(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn a_crash_at_any_point_of_compaction_keeps_every_committed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.sqlite");
        let mut node = committed_node(&path);
        let end = node.commit_index();
        let head = node.chain_head();
        let through = Slot(end.0 / 2);
        let fx = node.compact(20_000, through, b"image".to_vec()).unwrap();
        let [Effect::Persist(write @ DurableWrite::Snapshot(_))] = fx.as_slice() else {
            panic!("compaction persists exactly one snapshot: {fx:?}");
        };

        // Killed after the write, before the sync: the whole log is still there.
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store.write(write).unwrap();
            drop(store);
        }
        let (recovered, slots) = restart(&path);
        assert_eq!(recovered.commit_index(), end);
        assert_eq!(recovered.chain_head(), head);
        assert_eq!(recovered.log_start(), Slot(0));
        assert_eq!(slots.len() as u64, end.0, "an entry went missing");

        // Synced: the snapshot replaces exactly the entries it covers.
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store.write(write).unwrap();
            store.sync().unwrap();
        }
        let (recovered, slots) = restart(&path);
        assert_eq!(recovered.commit_index(), end);
        assert_eq!(recovered.chain_head(), head);
        assert_eq!(recovered.log_start(), through.next());
        assert_eq!(slots.first(), Some(&through.next()));
        assert_eq!(slots.last(), Some(&Slot(end.0 - 1)));
        for slot in through.next().0..end.0 {
            assert!(
                recovered.committed(Slot(slot)).is_some(),
                "slot {slot} lost"
            );
        }
    }

    #[test]
    fn the_file_shrinks_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.sqlite");
        let mut node = committed_node(&path);
        let mut store = SqliteStore::open(&path).unwrap();
        // Everything in the WAL goes into the main file first, to measure it.
        store
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let before = file_bytes(&path);
        let through = Slot(node.commit_index().0 - 2);
        let fx = node.compact(20_000, through, b"image".to_vec()).unwrap();
        drive(&mut store, fx);
        store
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let after = file_bytes(&path);
        let log_bytes = COMMANDS * PAYLOAD_BYTES as u64;
        assert!(
            before > log_bytes,
            "{before} bytes hold a log of {log_bytes}"
        );
        assert!(
            after < before / 4,
            "the file kept {after} of {before} bytes after the snapshot"
        );
        assert!(file_bytes(&dir.path().join("acceptor.sqlite-wal")) <= WAL_BYTES_KEPT as u64);
    }
}
