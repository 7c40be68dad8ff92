//! The applied namespace: inodes, directory entries, xattrs, authors and snapshots in
//! one SQLite database per device.
//!
//! Everything here is derived from the log: `state.applied_end` says which prefix of
//! the log the tables reflect, and a device that loses the database rebuilds it by
//! replaying the log from its last checkpoint. The database runs in WAL mode with
//! `synchronous=NORMAL`: a commit may be lost by a power cut, which costs nothing but
//! a replay, because the log is made durable first.
//!
//! Only `apply` changes these tables (plus `snapshot_roots`, local bookkeeping of the
//! checkpoint roots this device computed for snapshots).
//!
//! Inode rows are read several times per file system request, so recently used rows
//! are kept decoded in memory (write-through: `put_inode` and `delete_inode` update the
//! copy). Whenever the database may have rolled a transaction back, the copies are
//! dropped, so they never show a change the database lost.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::op::{Content, DeviceId, Rights, kind_from_byte, kind_to_byte};
use crate::{Error, FileKind, InodeNo, Result};

/// Deepest directory nesting walked when checking ancestry; a longer parent chain is
/// treated as a loop (corrupt state), never followed forever.
pub const DEPTH_MAX: u32 = 1 << 20;
/// Inode rows kept decoded in memory; when full, the copies are dropped wholesale.
const INODE_CACHE_ENTRIES_MAX: usize = 8192;

/// `(parent, name, ino)`.
pub type DirentRow = (InodeNo, Vec<u8>, InodeNo);
/// `(ino, name, value)`.
pub type XattrRow = (InodeNo, Vec<u8>, Vec<u8>);

/// One inode row. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: InodeNo,
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
    pub version: u64,
    /// Directories: the directory holding them (the root: itself). Others: 0.
    pub parent: InodeNo,
    /// File content; a symlink's target (inline).
    pub content: Content,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY, kind INTEGER NOT NULL, perm INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER NOT NULL,
    nlink INTEGER NOT NULL, size INTEGER NOT NULL,
    atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
    crtime INTEGER NOT NULL, version INTEGER NOT NULL, parent INTEGER NOT NULL,
    content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dirents(
    id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS dirents_by_name ON dirents(parent, name);
CREATE TABLE IF NOT EXISTS xattrs(
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS authors(
    device INTEGER PRIMARY KEY, seq INTEGER NOT NULL, rights INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots(
    name BLOB PRIMARY KEY, slot INTEGER NOT NULL, time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_roots(name BLOB PRIMARY KEY, root BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// The SQLite namespace. Not `Sync`: the volume serialises access.
#[derive(Debug)]
pub struct Namespace {
    conn: Connection,
    in_transaction: bool,
    /// The database rolled back a transaction this `Namespace` still had open.
    rolled_back: bool,
    /// Decoded copies of inode rows as the database has them (see the module doc).
    inode_cache: RefCell<HashMap<InodeNo, Inode>>,
    /// Test hook: the next commit fails as on a full disk, rolled back.
    #[cfg(test)]
    pub(crate) fail_next_commit: bool,
}

impl Namespace {
    pub fn open(path: &Path) -> Result<Namespace> {
        let conn = Connection::open(path)?;
        Namespace::init(conn)
    }

    /// A second, read-only connection to the database at `path` (the volume holds
    /// the first): a read transaction on it sees the last committed state. Its page
    /// cache is kept small: it serves one sequential scan (a checkpoint's capture), and
    /// memory it touched stays with the process after it is closed.
    pub fn open_reader(path: &Path) -> Result<Namespace> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "cache_size", -2048)?;
        Ok(Namespace::over(conn))
    }

    pub fn open_in_memory() -> Result<Namespace> {
        Namespace::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Namespace> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -32768)?;
        conn.execute_batch(SCHEMA)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Namespace::over(conn))
    }

    fn over(conn: Connection) -> Namespace {
        Namespace {
            conn,
            in_transaction: false,
            rolled_back: false,
            inode_cache: RefCell::new(HashMap::new()),
            #[cfg(test)]
            fail_next_commit: false,
        }
    }

    /// Start a transaction if none is open. Changes become visible to this connection
    /// at once and reach the database file at [`Namespace::commit`].
    pub fn begin(&mut self) -> Result<()> {
        if self.in_transaction && self.conn.is_autocommit() {
            // A failed statement (e.g. SQLITE_FULL) made SQLite roll the whole
            // transaction back; `commit` reports it so the caller applies again.
            self.rolled_back = true;
            self.in_transaction = false;
            self.forget_cached_inodes();
        }
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// On failure (e.g. SQLITE_FULL) SQLite may have rolled the whole transaction
    /// back: [`Namespace::in_transaction`] then says false, and the caller must apply
    /// again what the transaction held.
    pub fn commit(&mut self) -> Result<()> {
        let lost = std::mem::take(&mut self.rolled_back)
            || (self.in_transaction && self.conn.is_autocommit());
        if lost {
            self.forget_cached_inodes();
            if !self.conn.is_autocommit() {
                self.conn.execute_batch("ROLLBACK")?;
            }
            self.in_transaction = false;
            return Err(Error::Io(std::io::Error::other(
                "namespace transaction was rolled back by the database",
            )));
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_commit) && self.in_transaction {
            // What SQLite does when the disk fills under a COMMIT.
            self.forget_cached_inodes();
            self.conn.execute_batch("ROLLBACK")?;
            self.in_transaction = false;
            return Err(Error::Db(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )));
        }
        if self.in_transaction {
            if let Err(error) = self.conn.execute_batch("COMMIT") {
                self.forget_cached_inodes();
                self.in_transaction = !self.conn.is_autocommit();
                return Err(error.into());
            }
            self.in_transaction = false;
        }
        Ok(())
    }

    /// Drop the open transaction's changes (a replicated volume's pending layer).
    pub fn rollback(&mut self) -> Result<()> {
        self.forget_cached_inodes();
        self.rolled_back = false;
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.in_transaction = false;
        Ok(())
    }

    /// A transaction is open: applied changes are not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn forget_cached_inodes(&self) {
        self.inode_cache.borrow_mut().clear();
    }

    /// Drop the inode copies if SQLite rolled back the open transaction on its own
    /// (a failed statement, e.g. a full disk): they may hold its lost changes.
    fn check_cached_inodes(&self) {
        if self.in_transaction && self.conn.is_autocommit() {
            self.forget_cached_inodes();
        }
    }

    fn cache_inode(&self, inode: &Inode) {
        let mut cache = self.inode_cache.borrow_mut();
        if cache.len() >= INODE_CACHE_ENTRIES_MAX && !cache.contains_key(&inode.ino) {
            cache.clear();
        }
        cache.insert(inode.ino, inode.clone());
    }

    /// The next log slot to apply.
    pub fn applied_end(&self) -> Result<u64> {
        Ok(self.state("applied_end")?.unwrap_or(0))
    }

    pub fn set_applied_end(&self, slot: u64) -> Result<()> {
        self.set_state("applied_end", slot)
    }

    pub fn state(&self, key: &str) -> Result<Option<u64>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?;
        Ok(statement
            .query_row([key], |row| row.get::<_, i64>(0))
            .optional()?
            .map(|value| value as u64))
    }

    pub fn set_state(&self, key: &str, value: u64) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)")?;
        statement.execute(params![key, value as i64])?;
        Ok(())
    }

    pub fn inode(&self, ino: InodeNo) -> Result<Option<Inode>> {
        self.check_cached_inodes();
        if let Some(inode) = self.inode_cache.borrow().get(&ino) {
            return Ok(Some(inode.clone()));
        }
        let inode = self.inode_from_db(ino)?;
        if let Some(inode) = &inode {
            self.cache_inode(inode);
        }
        Ok(inode)
    }

    fn inode_from_db(&self, ino: InodeNo) -> Result<Option<Inode>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT kind, perm, uid, gid, rdev, nlink, size, atime, mtime, ctime, crtime, version, parent, content
             FROM inodes WHERE ino = ?1",
        )?;
        let row = statement
            .query_row([ino.0 as i64], |row| {
                Ok((
                    row.get::<_, u8>(0)?,
                    row.get::<_, u16>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, u32>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, u32>(5)?,
                    row.get::<_, i64>(6)?,
                    [
                        row.get::<_, i64>(7)?,
                        row.get::<_, i64>(8)?,
                        row.get::<_, i64>(9)?,
                        row.get::<_, i64>(10)?,
                    ],
                    row.get::<_, i64>(11)?,
                    row.get::<_, i64>(12)?,
                    row.get::<_, Vec<u8>>(13)?,
                ))
            })
            .optional()?;
        let Some((kind, perm, uid, gid, rdev, nlink, size, times, version, parent, content)) = row
        else {
            return Ok(None);
        };
        Ok(Some(Inode {
            ino,
            kind: kind_from_byte(kind)?,
            perm,
            uid,
            gid,
            rdev,
            nlink,
            size: size as u64,
            atime_ns: times[0],
            mtime_ns: times[1],
            ctime_ns: times[2],
            crtime_ns: times[3],
            version: version as u64,
            parent: InodeNo(parent as u64),
            content: Content::decode(&content)?,
        }))
    }

    pub fn put_inode(&self, inode: &Inode) -> Result<()> {
        self.check_cached_inodes();
        // Whatever happens below, the old copy is no longer known to be right.
        self.inode_cache.borrow_mut().remove(&inode.ino);
        let mut statement = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO inodes
             (ino, kind, perm, uid, gid, rdev, nlink, size, atime, mtime, ctime, crtime, version, parent, content)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        statement.execute(params![
            inode.ino.0 as i64,
            kind_to_byte(inode.kind),
            inode.perm,
            inode.uid,
            inode.gid,
            inode.rdev,
            inode.nlink,
            inode.size as i64,
            inode.atime_ns,
            inode.mtime_ns,
            inode.ctime_ns,
            inode.crtime_ns,
            inode.version as i64,
            inode.parent.0 as i64,
            inode.content.to_bytes(),
        ])?;
        self.cache_inode(inode);
        Ok(())
    }

    pub fn delete_inode(&self, ino: InodeNo) -> Result<()> {
        self.check_cached_inodes();
        self.inode_cache.borrow_mut().remove(&ino);
        self.conn
            .prepare_cached("DELETE FROM inodes WHERE ino = ?1")?
            .execute([ino.0 as i64])?;
        self.conn
            .prepare_cached("DELETE FROM xattrs WHERE ino = ?1")?
            .execute([ino.0 as i64])?;
        Ok(())
    }

    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<Option<InodeNo>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT ino FROM dirents WHERE parent = ?1 AND name = ?2")?;
        Ok(statement
            .query_row(params![parent.0 as i64, name], |row| row.get::<_, i64>(0))
            .optional()?
            .map(|ino| InodeNo(ino as u64)))
    }

    /// The files whose version is `version` (versions name the op that set them).
    /// Scans: only for conflicting writes.
    pub fn files_with_version(&self, version: u64) -> Result<Vec<InodeNo>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT ino FROM inodes WHERE version = ?1 AND kind = ?2")?;
        let rows = statement.query_map(
            params![version as i64, kind_to_byte(FileKind::File)],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(rows
            .map(|ino| ino.map(|ino| InodeNo(ino as u64)))
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One name of `ino` and the directory holding it (messages only: this scans).
    pub fn name_of(&self, ino: InodeNo) -> Result<Option<(InodeNo, Vec<u8>)>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT parent, name FROM dirents WHERE ino = ?1 LIMIT 1")?;
        Ok(statement
            .query_row([ino.0 as i64], |row| {
                Ok((InodeNo(row.get::<_, i64>(0)? as u64), row.get(1)?))
            })
            .optional()?)
    }

    pub fn insert_dirent(&self, parent: InodeNo, name: &[u8], ino: InodeNo) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("INSERT INTO dirents(parent, name, ino) VALUES (?1, ?2, ?3)")?;
        statement.execute(params![parent.0 as i64, name, ino.0 as i64])?;
        Ok(())
    }

    pub fn remove_dirent(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("DELETE FROM dirents WHERE parent = ?1 AND name = ?2")?;
        statement.execute(params![parent.0 as i64, name])?;
        Ok(())
    }

    /// Point an existing entry at another inode, keeping its readdir position.
    pub fn repoint_dirent(&self, parent: InodeNo, name: &[u8], ino: InodeNo) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("UPDATE dirents SET ino = ?3 WHERE parent = ?1 AND name = ?2")?;
        statement.execute(params![parent.0 as i64, name, ino.0 as i64])?;
        Ok(())
    }

    pub fn dir_is_empty(&self, dir: InodeNo) -> Result<bool> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT 1 FROM dirents WHERE parent = ?1 LIMIT 1")?;
        Ok(statement
            .query_row([dir.0 as i64], |_| Ok(()))
            .optional()?
            .is_none())
    }

    /// Up to `count_max` entries of `dir` with position above `after`, in position
    /// order: `(position, name, ino)`. Positions are stable while an entry exists.
    pub fn dir_entries(
        &self,
        dir: InodeNo,
        after: u64,
        count_max: usize,
    ) -> Result<Vec<(u64, Vec<u8>, InodeNo)>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, name, ino FROM dirents WHERE parent = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![dir.0 as i64, after as i64, count_max as i64],
            |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, Vec<u8>>(1)?,
                    InodeNo(row.get::<_, i64>(2)? as u64),
                ))
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn xattr(&self, ino: InodeNo, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?;
        Ok(statement
            .query_row(params![ino.0 as i64, name], |row| row.get(0))
            .optional()?)
    }

    pub fn xattr_names(&self, ino: InodeNo) -> Result<Vec<Vec<u8>>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
        let rows = statement.query_map([ino.0 as i64], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn set_xattr(&self, ino: InodeNo, name: &[u8], value: &[u8]) -> Result<()> {
        let mut statement = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?1, ?2, ?3)",
        )?;
        statement.execute(params![ino.0 as i64, name, value])?;
        Ok(())
    }

    pub fn remove_xattr(&self, ino: InodeNo, name: &[u8]) -> Result<bool> {
        let mut statement = self
            .conn
            .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?;
        Ok(statement.execute(params![ino.0 as i64, name])? > 0)
    }

    /// `(highest seq applied, rights)` of `device`.
    pub fn author(&self, device: DeviceId) -> Result<Option<(u64, Rights)>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT seq, rights FROM authors WHERE device = ?1")?;
        let row = statement
            .query_row([device.0], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, u8>(1)?))
            })
            .optional()?;
        Ok(row.map(|(seq, rights)| {
            let rights = match rights {
                1 => Rights::Read,
                2 => Rights::Write,
                3 => Rights::Owner,
                _ => Rights::None,
            };
            (seq, rights)
        }))
    }

    pub fn set_author(&self, device: DeviceId, seq: u64, rights: Rights) -> Result<()> {
        let mut statement = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO authors(device, seq, rights) VALUES (?1, ?2, ?3)",
        )?;
        statement.execute(params![device.0, seq as i64, rights as u8])?;
        Ok(())
    }

    pub fn snapshot_exists(&self, name: &[u8]) -> Result<bool> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT 1 FROM snapshots WHERE name = ?1")?;
        Ok(statement
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn add_snapshot(&self, name: &[u8], slot: u64, time_ns: i64) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("INSERT INTO snapshots(name, slot, time) VALUES (?1, ?2, ?3)")?;
        statement.execute(params![name, slot as i64, time_ns])?;
        Ok(())
    }

    /// Snapshot names in name order, with the slot they were taken at.
    pub fn snapshots(&self) -> Result<Vec<(Vec<u8>, u64, i64)>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT name, slot, time FROM snapshots ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn snapshot_root(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT root FROM snapshot_roots WHERE name = ?1")?;
        Ok(statement.query_row([name], |row| row.get(0)).optional()?)
    }

    pub fn set_snapshot_root(&self, name: &[u8], root: &[u8]) -> Result<()> {
        let mut statement = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO snapshot_roots(name, root) VALUES (?1, ?2)")?;
        statement.execute(params![name, root])?;
        Ok(())
    }

    pub fn inode_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM inodes", [], |row| {
                row.get::<_, i64>(0)
            })? as u64)
    }

    /// Inodes without names (unlinked while open somewhere).
    pub fn orphans(&self) -> Result<Vec<InodeNo>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino")?;
        let rows = statement.query_map([], |row| Ok(InodeNo(row.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every inode, ordered by number (checkpoints, equality checks).
    pub fn all_inodes(&self) -> Result<Vec<Inode>> {
        let mut statement = self.conn.prepare("SELECT ino FROM inodes ORDER BY ino")?;
        let inos = statement
            .query_map([], |row| Ok(InodeNo(row.get::<_, i64>(0)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(inos.len());
        for ino in inos {
            if let Some(inode) = self.inode(ino)? {
                out.push(inode);
            }
        }
        Ok(out)
    }

    /// Every entry `(parent, name, ino)` in name order.
    pub fn all_dirents(&self) -> Result<Vec<DirentRow>> {
        let mut statement = self
            .conn
            .prepare("SELECT parent, name, ino FROM dirents ORDER BY parent, name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                InodeNo(row.get::<_, i64>(0)? as u64),
                row.get::<_, Vec<u8>>(1)?,
                InodeNo(row.get::<_, i64>(2)? as u64),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn all_xattrs(&self) -> Result<Vec<XattrRow>> {
        let mut statement = self
            .conn
            .prepare("SELECT ino, name, value FROM xattrs ORDER BY ino, name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                InodeNo(row.get::<_, i64>(0)? as u64),
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn all_authors(&self) -> Result<Vec<(DeviceId, u64, Rights)>> {
        let mut statement = self
            .conn
            .prepare("SELECT device FROM authors ORDER BY device")?;
        let devices = statement
            .query_map([], |row| Ok(DeviceId(row.get::<_, u32>(0)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for device in devices {
            if let Some((seq, rights)) = self.author(device)? {
                out.push((device, seq, rights));
            }
        }
        Ok(out)
    }

    /// Replace every derived table with a checkpoint's contents.
    pub fn load(&mut self, image: &crate::checkpoint::Image) -> Result<()> {
        self.begin()?;
        self.forget_cached_inodes();
        self.conn.execute_batch(
            "DELETE FROM inodes; DELETE FROM dirents; DELETE FROM xattrs; DELETE FROM authors;
             DELETE FROM snapshots; DELETE FROM snapshot_roots;",
        )?;
        for inode in &image.inodes {
            self.put_inode(inode)?;
        }
        for (parent, name, ino) in &image.dirents {
            self.insert_dirent(*parent, name, *ino)?;
        }
        for (ino, name, value) in &image.xattrs {
            self.set_xattr(*ino, name, value)?;
        }
        for (device, seq, rights) in &image.authors {
            self.set_author(*device, *seq, *rights)?;
        }
        for (name, slot, time_ns) in &image.snapshots {
            self.add_snapshot(name, *slot, *time_ns)?;
        }
        self.set_applied_end(image.applied_end)?;
        self.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, size: u64) -> Inode {
        Inode {
            ino: InodeNo(ino),
            kind: FileKind::File,
            perm: 0o644,
            uid: 1,
            gid: 1,
            rdev: 0,
            nlink: 1,
            size,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            crtime_ns: 0,
            version: size,
            parent: InodeNo(0),
            content: Content::EMPTY,
        }
    }

    #[test]
    fn cached_inodes_follow_writes_deletes_and_rollbacks() -> Result<()> {
        let mut ns = Namespace::open_in_memory()?;
        ns.begin()?;
        ns.put_inode(&file(5, 1))?;
        ns.commit()?;
        assert_eq!(ns.inode(InodeNo(5))?, Some(file(5, 1)));

        ns.begin()?;
        ns.put_inode(&file(5, 2))?;
        assert_eq!(ns.inode(InodeNo(5))?, Some(file(5, 2)), "write-through");
        ns.fail_next_commit = true;
        assert!(ns.commit().is_err());
        assert_eq!(
            ns.inode(InodeNo(5))?,
            Some(file(5, 1)),
            "a rolled-back change is not served from memory"
        );

        ns.begin()?;
        ns.delete_inode(InodeNo(5))?;
        assert_eq!(ns.inode(InodeNo(5))?, None);
        ns.commit()?;

        // More rows than the cache holds still read back right.
        ns.begin()?;
        for ino in 10..10 + INODE_CACHE_ENTRIES_MAX as u64 + 10 {
            ns.put_inode(&file(ino, ino))?;
        }
        ns.commit()?;
        for ino in [10, 11, 10 + INODE_CACHE_ENTRIES_MAX as u64 + 9] {
            assert_eq!(ns.inode(InodeNo(ino))?, Some(file(ino, ino)));
        }
        Ok(())
    }
}
