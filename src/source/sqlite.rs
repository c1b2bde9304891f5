//! The SQLite source: opening and checking the database file, selecting
//! unsent rows through a partial index, marking acknowledged ones, the
//! tables and index frameflush owns, and the run lock (a file beside the
//! database, [`crate::lock`]).
//!
//! The contract with the producer (Meshlium's parser or any other process
//! that inserts into `sensorParser`): a row is unsent for a destination
//! while `sync & MASK = 0`; frameflush sets that bit (`sync = sync | MASK`)
//! and touches nothing else of the producer's table. A row whose `sync` is
//! NULL has been sent nowhere: it reads as 0, and marking makes it `MASK`
//! (`sync = coalesce(sync, 0) | MASK`). It adds a partial index per mask,
//! `frameflush_unsent_MASK` on `id WHERE (coalesce(sync, 0) & MASK) = 0`
//! (one from before NULL was read as 0, `WHERE (sync & MASK) = 0`, is
//! replaced by the next run or `init`), so that finding unsent rows costs
//! the same on ten million sent rows as on none; a table `frameflush_failures` of rows that could not become a
//! message (per mask: attempts, last error, and once `--max-attempts` is
//! reached the quarantine that later runs skip); a table `frameflush_runs`
//! with the start and outcome of the last run that had something to send;
//! and `frameflush_state`, frameflush's own key/value store. Writes are
//! short IMMEDIATE transactions: a concurrent writer waits (busy timeout)
//! instead of failing, and no write lock is ever held while waiting on the
//! network.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{Failure, Health, Index, LastRun, Marker, Mode, RunEnd, Source};
use crate::config::Target;
use crate::error::{Error, Exit, Result};
use crate::lock::RunLock;
use crate::row::{Field, Row, Text};
use crate::sys::io_reason;

/// Meshlium's table as SQLite spells it.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS sensorParser (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  id_wasp      TEXT NOT NULL,
  id_secret    TEXT,
  frame_type   INTEGER,
  frame_number INTEGER,
  sensor       TEXT NOT NULL,
  value        TEXT,
  timestamp    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
  sync         INTEGER NOT NULL DEFAULT 0,
  raw          TEXT,
  parser_type  INTEGER NOT NULL DEFAULT 0)";

/// frameflush's own tables, created beside the producer's.
const OWN_TABLES: &str = "
CREATE TABLE IF NOT EXISTS frameflush_failures (
  sync_mask       INTEGER NOT NULL,
  row_id          INTEGER NOT NULL,
  attempts        INTEGER NOT NULL,
  last_error      TEXT NOT NULL,
  first_failed_at TEXT NOT NULL,
  last_attempt_at TEXT NOT NULL,
  quarantined_at  TEXT,
  PRIMARY KEY (sync_mask, row_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frameflush_runs (
  sync_mask   INTEGER PRIMARY KEY,
  started_at  TEXT NOT NULL,
  finished_at TEXT,
  exit_code   INTEGER,
  rows_marked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS frameflush_state (
  key        TEXT PRIMARY KEY,
  value      TEXT NOT NULL,
  updated_at TEXT) WITHOUT ROWID;";

/// The tables of [`OWN_TABLES`] that selections and `status` consult; the
/// state table (newer) is checked on its own, so that a database from
/// before it keeps its failures and runs visible to read-only commands.
const OWN_TABLE_NAMES: [&str; 2] = ["frameflush_failures", "frameflush_runs"];
const STATE_TABLE: &str = "frameflush_state";

const SELECT_COLUMNS: &str =
    "id, id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp";

/// An open SQLite database, for one destination bit at a time.
pub struct Sqlite {
    conn: Connection,
    mask: i64,
    path: String,
    busy_secs: f64,
    /// The run lock's file, and the lock once taken.
    lock_path: PathBuf,
    lock: Option<RunLock>,
    /// The partial index of this mask exists, in its current form:
    /// selections can use it.
    indexed: bool,
    /// This mask's index exists in its form from before NULL was read as 0
    /// (`WHERE (sync & MASK) = 0`): the next write replaces it.
    old_index: bool,
    /// For `-v`, taken by [`Source::take_notes`].
    notes: Vec<String>,
    /// frameflush's own tables exist (`frameflush_failures` is consulted).
    own_tables: bool,
    /// `frameflush_state` exists.
    state_table: bool,
}

/// The lock file of a database and destination bit:
/// `DB.frameflush-MASK.lock`, beside the database.
fn lock_path(file: &Path, mask: i64) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".frameflush-{mask}.lock"));
    PathBuf::from(name)
}

fn index_name(mask: i64) -> String {
    format!("frameflush_unsent_{mask}")
}

/// Whether this mask's index is there in its current form, and whether it
/// is there in its old form (which does not hold rows whose sync is NULL).
fn index_state(conn: &Connection, mask: i64) -> rusqlite::Result<(bool, bool)> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [index_name(mask)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match sql {
        None => (false, false),
        Some(sql) if sql.to_ascii_lowercase().contains("coalesce(sync, 0)") => (true, false),
        Some(_) => (false, true),
    })
}

/// The condition of a row still to send (or quarantined) for `mask`, as the
/// partial index states it: the planner uses the index only for a query
/// that says the same.
fn unsent_condition(mask: i64) -> String {
    format!("(coalesce(sync, 0) & {mask}) = 0")
}

/// What every connection of a run is set to: the busy timeout, and the
/// query planner's stability guarantee (QPSG), under which a statement's
/// plan does not depend on the values bound to it. Without it SQLite
/// prepared the selection of unsent rows again at every execution (it
/// weighs the partial index's condition against the value bound to `id >
/// ?1`, new each time): callgrind, 20,000 rows read ahead 128 at a time,
/// 24.9 million instructions of `sqlite3Reprepare` on the marking thread,
/// about 160,000 per SELECT. The selection names its index (`INDEXED BY`):
/// no plan is lost.
fn settle(conn: &Connection, busy: std::time::Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}

/// The one statement that marks rows sent (`?1` the mask, ids `?2..=?3`):
/// a NULL `sync` becomes the mask.
pub const MARK_SQL: &str =
    "UPDATE sensorParser SET sync = coalesce(sync, 0) | ?1 WHERE id BETWEEN ?2 AND ?3";

impl Sqlite {
    /// Opens an existing database and checks its table. A missing file or
    /// table is exit 66; a file SQLite cannot use, or (in ReadWrite) cannot
    /// write, is 74.
    pub fn open(file: &Path, target: &Target, mode: Mode) -> Result<Sqlite> {
        let path = file.display().to_string();
        match std::fs::metadata(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::new(
                    Exit::NoInput,
                    format!(
                        "database {path} does not exist (create it with `frameflush init --db {path}`)"
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::new(
                    Exit::IoErr,
                    format!("cannot read database {path}: {}", io_reason(&e)),
                ));
            }
            Ok(m) if !m.is_file() => {
                return Err(Error::new(
                    Exit::IoErr,
                    format!("database {path} is not a regular file"),
                ));
            }
            Ok(_) => {}
        }
        let flags = match mode {
            Mode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
            Mode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file, flags)
            .map_err(|e| db_error(&path, "open", e, 0.0))?;
        Sqlite::checked(conn, file, target, mode)
    }

    /// Creates the database file if needed, the table if missing, and the
    /// mask's index: `frameflush init`.
    pub fn init(file: &Path, target: &Target) -> Result<Sqlite> {
        let path = file.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file, flags)
            .map_err(|e| db_error(&path, "create", e, 0.0))?;
        conn.busy_timeout(target.busy_timeout)
            .map_err(|e| db_error(&path, "open", e, 0.0))?;
        let busy = target.busy_timeout.as_secs_f64();
        // A new database gets incremental auto-vacuum (it can only be set
        // before the first table), so that `purge` can give space back to
        // the file system without a full VACUUM.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| db_error(&path, "read", e, busy))?;
        if pages == 0 {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(|e| db_error(&path, "set up", e, busy))?;
        }
        conn.execute_batch(CREATE_TABLE)
            .map_err(|e| db_error(&path, "create the table in", e, busy))?;
        let mut db = Sqlite::checked(conn, file, target, Mode::ReadWrite)?;
        db.ensure_schema()?;
        Ok(db)
    }

    fn checked(conn: Connection, file: &Path, target: &Target, mode: Mode) -> Result<Sqlite> {
        let path = file.display().to_string();
        let busy_secs = target.busy_timeout.as_secs_f64();
        settle(&conn, target.busy_timeout).map_err(|e| db_error(&path, "open", e, 0.0))?;
        let mut db = Sqlite {
            conn,
            mask: target.sync_mask,
            path,
            busy_secs,
            lock_path: lock_path(file, target.sync_mask),
            lock: None,
            indexed: false,
            old_index: false,
            notes: Vec::new(),
            own_tables: false,
            state_table: false,
        };
        db.check_table()?;
        if mode == Mode::ReadWrite && db.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(Error::new(
                Exit::IoErr,
                format!(
                    "database {} is read-only: frameflush must be able to mark the rows it sends",
                    db.path
                ),
            ));
        }
        let count_named = |kind: &str, names: &[&str]| -> rusqlite::Result<usize> {
            let mut n = 0;
            for name in names {
                n += db.conn.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = ?1 AND name = ?2",
                    [kind, name],
                    |r| r.get::<_, i64>(0),
                )? as usize;
            }
            Ok(n)
        };
        (db.indexed, db.old_index) =
            index_state(&db.conn, db.mask).map_err(|e| db.error("read the schema of", e))?;
        db.own_tables = count_named("table", &OWN_TABLE_NAMES)
            .map_err(|e| db.error("read the schema of", e))?
            == OWN_TABLE_NAMES.len();
        db.state_table = count_named("table", &[STATE_TABLE])
            .map_err(|e| db.error("read the schema of", e))?
            == 1;
        Ok(db)
    }

    fn error(&self, what: &str, e: rusqlite::Error) -> Error {
        db_error(&self.path, what, e, self.busy_secs)
    }

    fn check_table(&self) -> Result<()> {
        let mut columns = Vec::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT name FROM pragma_table_info('sensorParser')")
                .map_err(|e| self.error("read", e))?;
            let mut rows = st.query([]).map_err(|e| self.error("read", e))?;
            while let Some(r) = rows.next().map_err(|e| self.error("read", e))? {
                let name: String = r.get(0).map_err(|e| self.error("read", e))?;
                columns.push(name.to_ascii_lowercase());
            }
        }
        if columns.is_empty() {
            return Err(Error::new(
                Exit::NoInput,
                format!(
                    "database {} has no sensorParser table (create it with `frameflush init`)",
                    self.path
                ),
            ));
        }
        super::check_columns(&columns, &self.path)?;
        Ok(())
    }

    /// `FROM … WHERE …` of the rows still to send for this mask: the bit is
    /// clear and the row is not quarantined.
    fn pending(&self) -> String {
        let mask = self.mask;
        let indexed_by = if self.indexed {
            format!("INDEXED BY {}", index_name(mask))
        } else {
            String::new()
        };
        let quarantine = if self.own_tables {
            format!(
                " AND id NOT IN (SELECT row_id FROM frameflush_failures \
                 WHERE sync_mask = {mask} AND quarantined_at IS NOT NULL)"
            )
        } else {
            String::new()
        };
        format!(
            "FROM sensorParser {indexed_by} WHERE {}{quarantine}",
            unsent_condition(mask)
        )
    }

    /// The selection of unsent rows: `?1` the id after which, `?2` how many.
    fn select_sql(&self) -> String {
        format!(
            "SELECT {SELECT_COLUMNS} {} AND id > ?1 ORDER BY id LIMIT ?2",
            self.pending()
        )
    }

    /// Runs `work` in one IMMEDIATE transaction: a concurrent writer waits
    /// for it (and it for them, up to the busy timeout) instead of failing.
    fn write<T>(
        &mut self,
        what: &str,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let (path, busy) = (&self.path, self.busy_secs);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(path, what, e, busy))?;
        let out = work(&tx).map_err(|e| db_error(path, what, e, busy))?;
        tx.commit().map_err(|e| db_error(path, what, e, busy))?;
        Ok(out)
    }

    fn count(&self, sql: &str) -> Result<u64> {
        self.conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.error("read", e))
    }
}

/// Sets `mask`'s bit on the given rows, in `tx`. Returns how many rows were
/// updated (a row deleted meanwhile is not). Runs of consecutive ids (the
/// usual case: acks come in order) go in one `BETWEEN` statement each, of
/// at most [`super::MARK_SLICE`] rows; a range holds exactly the ids of its
/// run, so no other row is touched.
fn mark_in(tx: &rusqlite::Transaction<'_>, mask: i64, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut st = tx.prepare_cached(MARK_SQL)?;
    super::mark_slices(ids, |sorted| {
        let mut n = 0;
        let mut start = 0;
        for i in 1..=sorted.len() {
            if i == sorted.len() || sorted[i] != sorted[i - 1] + 1 {
                n += st.execute(params![mask, sorted[start], sorted[i - 1]])?;
                start = i;
            }
        }
        Ok(n)
    })
}

/// Records the end of the run `begin_run` started and forgets the failures
/// of rows delivered or deleted since, in `tx`.
fn end_run_in(
    tx: &rusqlite::Transaction<'_>,
    mask: i64,
    exit: Exit,
    marked: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE frameflush_runs SET finished_at = datetime('now'), exit_code = ?2, rows_marked = ?3
         WHERE sync_mask = ?1",
        params![mask, exit.code(), marked as i64],
    )?;
    tx.execute(
        "DELETE FROM frameflush_failures WHERE sync_mask = ?1 AND NOT EXISTS
           (SELECT 1 FROM sensorParser WHERE id = row_id AND (coalesce(sync, 0) & ?1) = 0)",
        [mask],
    )?;
    Ok(())
}

/// Writes one entry of frameflush's state table, in `tx`.
fn state_in(tx: &rusqlite::Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO frameflush_state (key, value, updated_at) VALUES (?1, ?2, datetime('now'))
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [key, value],
    )
}

/// The page cache of a marking or reading connection, in KiB (SQLite's
/// default is 2,000 KiB per connection, filled only once the file is that
/// large). A commit carries at most [`crate::marker::MAX_UNMARKED`] rows:
/// with Meshlium's rows (about 90 bytes, `raw` 'noraw') their pages and the
/// index's fit in 768 KiB and not in 512, so a commit does not spill pages
/// to the file before it ends (a spill costs a journal fsync more; a unit
/// test marks that many rows in one transaction). Measured, 200,000
/// of 1,000,000 rows with every fsync 5 ms slower: peak RSS 10.4-12.2 MiB
/// at the default, 9.3-10.8 MiB at 1,024 KiB with as many fsyncs and the
/// same speed; at 256 KiB commits spilled (392 -> 436 fsyncs at W=100).
const SECOND_CACHE_KIB: i64 = 1024;

impl Sqlite {
    /// A second handle on the same file, for the marking thread: a
    /// connection of its own with the same busy timeout, a page cache of
    /// [`SECOND_CACHE_KIB`], and no run lock (this handle holds it).
    fn second(&self) -> Result<Sqlite> {
        let file = PathBuf::from(self.conn.path().unwrap_or(&self.path));
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&file, flags)
            .map_err(|e| db_error(&self.path, "open", e, 0.0))?;
        settle(&conn, std::time::Duration::from_secs_f64(self.busy_secs))
            .map_err(|e| db_error(&self.path, "open", e, 0.0))?;
        conn.pragma_update(None, "cache_size", -SECOND_CACHE_KIB)
            .map_err(|e| db_error(&self.path, "open", e, 0.0))?;
        Ok(Sqlite {
            conn,
            mask: self.mask,
            path: self.path.clone(),
            busy_secs: self.busy_secs,
            lock_path: self.lock_path.clone(),
            lock: None,
            indexed: self.indexed,
            old_index: self.old_index,
            own_tables: self.own_tables,
            state_table: self.state_table,
            notes: Vec::new(),
        })
    }
}

impl Marker for Sqlite {
    /// One IMMEDIATE transaction, as [`Source::mark`] makes it, with the
    /// state entries and the run's end in it.
    fn commit_marks(
        &mut self,
        ids: &[i64],
        states: &[(String, String)],
        end: Option<RunEnd>,
    ) -> Result<usize> {
        if states.is_empty() && end.is_none() {
            return Source::mark(self, ids);
        }
        self.ensure_schema()?;
        let mask = self.mask;
        self.write("mark rows in", |tx| {
            for (key, value) in states {
                state_in(tx, key, value)?;
            }
            let n = mark_in(tx, mask, ids)?;
            if let Some(end) = end {
                end_run_in(tx, mask, end.exit, end.marked + n as u64)?;
            }
            Ok(n)
        })
    }

    fn read_ahead(&self, after: i64, limit: usize) -> Result<Vec<Row>> {
        self.select_unsent(after, limit)
    }
}

impl Source for Sqlite {
    fn sync_mask(&self) -> i64 {
        self.mask
    }

    fn marker(&self) -> Result<Box<dyn Marker>> {
        Ok(Box::new(self.second()?))
    }

    /// In WAL mode readers do not wait for a writer: a third connection
    /// reads ahead. In a rollback journal the marking thread reads between
    /// its commits (a read on another connection would wait for the
    /// commit's lock all the same, and longer: SQLite's busy handler sleeps
    /// in steps of 1, 2, 5, 10 ms).
    fn reader(&self) -> Result<Option<Box<dyn Marker>>> {
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.error("read", e))?;
        if mode.eq_ignore_ascii_case("wal") {
            Ok(Some(Box::new(self.second()?)))
        } else {
            Ok(None)
        }
    }

    fn lock_run(&mut self) -> Result<()> {
        if self.lock.is_none() {
            self.lock = Some(RunLock::acquire(&self.lock_path)?);
        }
        Ok(())
    }

    /// Adds what frameflush needs in the database when missing: this mask's
    /// partial index (once, one pass over the table) and frameflush's own
    /// tables. Nothing is written when all is there.
    fn ensure_schema(&mut self) -> Result<()> {
        if self.indexed && self.own_tables && self.state_table {
            return Ok(());
        }
        let index = index_name(self.mask);
        // An index from before NULL was read as 0 is replaced in the same
        // transaction (re-read under the write lock: another run may have
        // replaced it meanwhile).
        let drop_old = if self.old_index {
            format!("DROP INDEX IF EXISTS {index};")
        } else {
            String::new()
        };
        // The index gone while frameflush's tables are there: the table was
        // dropped (with its index) and made again, and its ids may start
        // again. The failure records of this mask name rows that are gone;
        // kept, they would quarantine the new rows that got those ids.
        let stale = if !self.indexed && !self.old_index && self.own_tables {
            self.count(&format!(
                "SELECT count(*) FROM frameflush_failures WHERE sync_mask = {}",
                self.mask
            ))?
        } else {
            0
        };
        let forget = if stale > 0 {
            format!(
                "DELETE FROM frameflush_failures WHERE sync_mask = {};",
                self.mask
            )
        } else {
            String::new()
        };
        let sql = format!(
            "BEGIN IMMEDIATE;
             {drop_old}
             {forget}
             CREATE INDEX IF NOT EXISTS {index} ON sensorParser(id) WHERE {};
             {OWN_TABLES}
             COMMIT;",
            unsent_condition(self.mask)
        );
        if let Err(e) = self.conn.execute_batch(&sql) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(self.error("add frameflush's index and tables to", e));
        }
        if self.old_index {
            self.notes.push(format!(
                "replaced the index {index} of {} by one that also finds rows whose sync is NULL",
                self.path
            ));
        }
        if stale > 0 {
            self.notes.push(format!(
                "the index {index} of {} was gone (the table dropped and made again?): made it again, and forgot the {stale} failure record(s) of sync mask {} (they named rows that are gone)",
                self.path, self.mask
            ));
        }
        self.old_index = false;
        self.indexed = true;
        self.own_tables = true;
        self.state_table = true;
        Ok(())
    }

    /// Up to `limit` rows still to send with `id > after`, oldest first. The
    /// statement is finished before this returns: nothing stays open while
    /// the rows are published.
    fn select_unsent(&self, after: i64, limit: usize) -> Result<Vec<Row>> {
        let sql = self.select_sql();
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.error("read", e))?;
        let mut rows = st
            .query(params![after, limit as i64])
            .map_err(|e| self.error("read", e))?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(r) = rows.next().map_err(|e| self.error("read", e))? {
            let mut fields: [Field; 8] = Default::default();
            for (i, f) in fields.iter_mut().enumerate() {
                *f = field(r.get_ref(i).map_err(|e| self.error("read", e))?);
            }
            let Field::Int(id) = fields[0] else {
                // id is the rowid alias in Meshlium's table; anything else
                // cannot be marked reliably.
                return Err(Error::new(
                    Exit::NoInput,
                    format!(
                        "table sensorParser in {} has a row whose id is not an integer",
                        self.path
                    ),
                ));
            };
            out.push(Row::new(id, fields));
        }
        Ok(out)
    }

    /// Sets this mask's bit on the given rows in one IMMEDIATE transaction.
    /// Returns how many rows were updated (a row deleted meanwhile is not).
    /// Runs of consecutive ids (the usual case: acks come in order) go in
    /// one `BETWEEN` statement each; a range holds exactly the ids of its
    /// run, so no other row is touched.
    fn mark(&mut self, ids: &[i64]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mask = self.mask;
        self.write("mark rows in", |tx| mark_in(tx, mask, ids))
    }

    /// Counts one more failed attempt for each row; a row that reaches
    /// `max_attempts` is quarantined. Returns how many rows this quarantined.
    fn record_failures(&mut self, failed: &[(i64, String)], max_attempts: u32) -> Result<u64> {
        if failed.is_empty() {
            return Ok(0);
        }
        let mask = self.mask;
        self.write("record failed rows in", |tx| {
            let mut st = tx.prepare_cached(
                "INSERT INTO frameflush_failures
                   (sync_mask, row_id, attempts, last_error, first_failed_at, last_attempt_at, quarantined_at)
                 VALUES (?1, ?2, 1, ?3, datetime('now'), datetime('now'),
                         CASE WHEN ?4 <= 1 THEN datetime('now') END)
                 ON CONFLICT (sync_mask, row_id) DO UPDATE SET
                   attempts = attempts + 1,
                   last_error = excluded.last_error,
                   last_attempt_at = excluded.last_attempt_at,
                   quarantined_at = coalesce(quarantined_at,
                     CASE WHEN attempts + 1 >= ?4 THEN datetime('now') END)
                 RETURNING quarantined_at IS NOT NULL",
            )?;
            // Quarantined rows are never selected, so each row that comes
            // out quarantined here was quarantined by this call.
            let mut quarantined = 0;
            for (id, why) in failed {
                let now_quarantined: bool =
                    st.query_row(params![mask, id, why, max_attempts], |r| r.get(0))?;
                quarantined += u64::from(now_quarantined);
            }
            Ok(quarantined)
        })
    }

    /// The failure records of this mask, oldest row first.
    fn failures(&self) -> Result<Vec<Failure>> {
        if !self.own_tables {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT row_id, attempts, last_error, first_failed_at, last_attempt_at, quarantined_at
                 FROM frameflush_failures WHERE sync_mask = ?1 ORDER BY row_id",
            )
            .map_err(|e| self.error("read", e))?;
        st.query_map([self.mask], |r| {
            Ok(Failure {
                row_id: r.get(0)?,
                attempts: r.get(1)?,
                last_error: r.get(2)?,
                first_failed_at: r.get(3)?,
                last_attempt_at: r.get(4)?,
                quarantined_at: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.error("read", e))
    }

    /// Forgets the failures of the given rows (all of this mask's with
    /// `None`): quarantined rows go back into the queue with a clean count.
    /// Returns how many records were removed.
    fn requeue(&mut self, ids: Option<&[i64]>) -> Result<usize> {
        if !self.own_tables {
            return Ok(0);
        }
        let mask = self.mask;
        self.write("requeue rows in", |tx| match ids {
            None => tx.execute(
                "DELETE FROM frameflush_failures WHERE sync_mask = ?1",
                [mask],
            ),
            Some(ids) => {
                let mut st = tx.prepare_cached(
                    "DELETE FROM frameflush_failures WHERE sync_mask = ?1 AND row_id = ?2",
                )?;
                let mut n = 0;
                for id in ids {
                    n += st.execute(params![mask, id])?;
                }
                Ok(n)
            }
        })
    }

    /// Records that a run with something to send started. It is also the
    /// proof, before anything is published, that the database takes writes
    /// (journal, directory, disk space).
    fn begin_run(&mut self) -> Result<()> {
        let mask = self.mask;
        self.write("write to", |tx| {
            tx.execute(
                "INSERT INTO frameflush_runs (sync_mask, started_at) VALUES (?1, datetime('now'))
                 ON CONFLICT(sync_mask) DO UPDATE SET started_at = excluded.started_at,
                   finished_at = NULL, exit_code = NULL, rows_marked = 0",
                [mask],
            )
        })
        .map(|_| ())
    }

    /// Records the outcome of the run `begin_run` started, and forgets the
    /// failures of rows that were delivered or deleted since.
    fn end_run(&mut self, exit: Exit, marked: u64) -> Result<()> {
        let mask = self.mask;
        self.write("write to", |tx| end_run_in(tx, mask, exit, marked))
    }

    /// Rows still to send for this mask now (quarantined rows not counted).
    fn backlog(&self) -> Result<u64> {
        self.count(&format!("SELECT count(*) {}", self.pending()))
    }

    /// Points this handle at another destination bit (for `status` over
    /// several masks).
    fn for_mask(&mut self, mask: i64) -> Result<()> {
        self.mask = mask;
        (self.indexed, self.old_index) =
            index_state(&self.conn, mask).map_err(|e| self.error("read the schema of", e))?;
        Ok(())
    }

    /// The destination bits this database has seen: those with frameflush's
    /// index, a recorded run or recorded failures.
    fn known_masks(&self) -> Result<Vec<i64>> {
        let mut masks = std::collections::BTreeSet::new();
        let mut st = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'frameflush\\_unsent\\_%' ESCAPE '\\'")
            .map_err(|e| self.error("read", e))?;
        let names: Vec<String> = st
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error("read", e))?;
        masks.extend(
            names
                .iter()
                .filter_map(|n| n.strip_prefix("frameflush_unsent_")?.parse::<i64>().ok()),
        );
        if self.own_tables {
            let mut st = self
                .conn
                .prepare("SELECT sync_mask FROM frameflush_runs UNION SELECT sync_mask FROM frameflush_failures")
                .map_err(|e| self.error("read", e))?;
            let found: Vec<i64> = st
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.error("read", e))?;
            masks.extend(found);
        }
        Ok(masks.into_iter().collect())
    }

    /// Rows in the table.
    fn total(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM sensorParser")
    }

    /// Rows whose `sync` is NULL, through this mask's index when there
    /// (they are all in it).
    fn null_sync(&self) -> Result<u64> {
        let indexed_by = if self.indexed {
            format!("INDEXED BY {}", index_name(self.mask))
        } else {
            String::new()
        };
        self.count(&format!(
            "SELECT count(*) FROM sensorParser {indexed_by} WHERE {} AND sync IS NULL",
            unsent_condition(self.mask)
        ))
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The oldest timestamp among the rows still to send, and its age in
    /// seconds (when it parses as a date).
    fn oldest_unsent(&self) -> Result<(Option<String>, Option<i64>)> {
        self.conn
            .query_row(
                &format!(
                    "SELECT t, CAST(strftime('%s', 'now') - strftime('%s', t) AS INTEGER)
                     FROM (SELECT min(timestamp) AS t {})",
                    self.pending()
                ),
                [],
                |r| {
                    let oldest = match field(r.get_ref(0)?) {
                        Field::Null => None,
                        Field::Text(s) => Some(s.to_string()),
                        Field::Int(n) => Some(n.to_string()),
                        Field::Real(x) => Some(x.to_string()),
                        Field::NotUtf8 | Field::Blob(_) => Some("?".to_string()),
                    };
                    Ok((oldest, r.get::<_, Option<i64>>(1)?))
                },
            )
            .map_err(|e| self.error("read", e))
    }

    /// Rows of this mask quarantined, and failing but to be retried.
    fn failure_counts(&self) -> Result<(u64, u64)> {
        if !self.own_tables {
            return Ok((0, 0));
        }
        let counted = |quarantined: &str| {
            format!(
                "SELECT count(*) FROM frameflush_failures f JOIN sensorParser s ON s.id = f.row_id
                 WHERE f.sync_mask = {mask} AND f.quarantined_at IS {quarantined}
                   AND (coalesce(s.sync, 0) & {mask}) = 0",
                mask = self.mask
            )
        };
        Ok((
            self.count(&counted("NOT NULL"))?,
            self.count(&counted("NULL"))?,
        ))
    }

    fn last_run(&self) -> Result<Option<LastRun>> {
        if !self.own_tables {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT started_at, finished_at, exit_code, rows_marked FROM frameflush_runs WHERE sync_mask = ?1",
                [self.mask],
                |r| {
                    Ok(LastRun {
                        started_at: r.get(0)?,
                        finished_at: r.get(1)?,
                        exit_code: r.get(2)?,
                        rows_marked: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error("read", e))
    }

    /// Deletes, in one short IMMEDIATE transaction, up to `limit` rows with
    /// `id > after` whose `require` bits are all set and whose timestamp is
    /// before `before` (any time when `None`), oldest id first. Returns how
    /// many were deleted and the last id looked at (`None`: no more rows).
    fn purge_batch(
        &mut self,
        require: i64,
        before: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<(usize, Option<i64>)> {
        let own_tables = self.own_tables;
        self.write("delete rows from", |tx| {
            let ids: Vec<i64> = {
                let mut st = tx.prepare_cached(
                    "SELECT id FROM sensorParser WHERE id > ?1 AND (sync & ?2) = ?2
                       AND (?3 IS NULL OR timestamp < ?3) ORDER BY id LIMIT ?4",
                )?;
                st.query_map(params![after, require, before, limit as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut del = tx.prepare_cached("DELETE FROM sensorParser WHERE id = ?1")?;
            for id in &ids {
                del.execute([id])?;
            }
            if !ids.is_empty() && own_tables {
                let mut forget =
                    tx.prepare_cached("DELETE FROM frameflush_failures WHERE row_id = ?1")?;
                for id in &ids {
                    forget.execute([id])?;
                }
            }
            Ok((ids.len(), ids.last().copied()))
        })
    }

    /// Rows in the table, and rows with any of the `require` bits unset
    /// (not yet sent to every destination).
    fn row_counts(&self, require: i64) -> Result<(u64, u64)> {
        let total = self.count("SELECT count(*) FROM sensorParser")?;
        let unsent = self.count(&format!(
            "SELECT count(*) FROM sensorParser WHERE (coalesce(sync, 0) & {require}) != {require}"
        ))?;
        Ok((total, unsent))
    }

    /// The timestamp `seconds` ago, in the table's text form (UTC).
    fn cutoff(&self, seconds: u64) -> Result<String> {
        self.conn
            .query_row(
                "SELECT datetime('now', ?1)",
                [format!("-{seconds} seconds")],
                |r| r.get(0),
            )
            .map_err(|e| self.error("read", e))
    }

    /// Gives freed pages back to the file system: an incremental vacuum in
    /// short steps when the database allows it, a full VACUUM only when
    /// asked (it locks out the producer while it runs), and a WAL
    /// checkpoint that truncates the log. Returns the pages freed.
    fn reclaim(&mut self, full_vacuum: bool) -> Result<u64> {
        let pages = |db: &Sqlite| -> Result<i64> {
            db.conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(|e| db.error("read", e))
        };
        let before = pages(self)?;
        let auto_vacuum: i64 = self
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .map_err(|e| self.error("read", e))?;
        if full_vacuum {
            self.conn
                .execute_batch("VACUUM")
                .map_err(|e| self.error("vacuum", e))?;
        } else if auto_vacuum == 2 {
            // INCREMENTAL: 500 pages (2 MiB at 4 KiB pages) per step.
            loop {
                let free: i64 = self
                    .conn
                    .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                    .map_err(|e| self.error("read", e))?;
                if free == 0 {
                    break;
                }
                self.conn
                    .execute_batch("PRAGMA incremental_vacuum(500)")
                    .map_err(|e| self.error("vacuum", e))?;
            }
        }
        let wal: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.error("read", e))?;
        if wal.eq_ignore_ascii_case("wal") {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| self.error("checkpoint", e))?;
        }
        Ok(before.saturating_sub(pages(self)?) as u64)
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        if !self.state_table {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT value FROM frameflush_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error("read", e))
    }

    fn set_state(&mut self, key: &str, value: &str) -> Result<()> {
        self.ensure_schema()?;
        self.write("write to", |tx| state_in(tx, key, value))
            .map(|_| ())
    }

    /// The SQLite version and journal mode; whether this user can write
    /// the database file, its -wal and -shm files and its directory (where
    /// SQLite makes its journal and frameflush its lock file), found by
    /// opening the files for writing (nothing written) and by creating and
    /// removing a probe file in the directory; and the mask's index.
    fn health(&self) -> Result<Health> {
        use std::io::ErrorKind;
        let journal: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.error("read", e))?;
        let mut unwritable = Vec::new();
        let db = PathBuf::from(&self.path);
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::OpenOptions::new().write(true).open(&file) {
                Ok(_) => {}
                Err(e) if suffix.is_empty() || e.kind() != ErrorKind::NotFound => {
                    unwritable.push(format!(
                        "{} is not writable by this user: {}",
                        file.display(),
                        io_reason(&e)
                    ))
                }
                Err(_) => {}
            }
        }
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let probe = dir.join(format!(".frameflush-check-{}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(f) => {
                drop(f);
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => unwritable.push(format!(
                "its directory {} is not writable by this user ({}): SQLite makes its journal there, frameflush its lock file",
                dir.display(),
                io_reason(&e)
            )),
        }
        Ok(Health {
            kind: Some(format!(
                "SQLite {}, journal mode {journal}",
                rusqlite::version()
            )),
            unwritable,
            writable: Some(format!(
                "{} and its directory {} are writable by this user",
                db.display(),
                dir.display()
            )),
            index: Some(if self.indexed {
                Index::Present(index_name(self.mask))
            } else if self.old_index {
                Index::Missing(format!(
                    "{} in its current form (the one there does not find rows whose sync is NULL; a run replaces it)",
                    index_name(self.mask)
                ))
            } else {
                Index::Missing(index_name(self.mask))
            }),
            ..Health::default()
        })
    }

    /// The query plan of the unsent-row selection, for tests and `-d`.
    fn selection_plan(&self) -> Result<String> {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT {SELECT_COLUMNS} {} AND id > 0 ORDER BY id LIMIT 10",
            self.pending()
        );
        let mut st = self.conn.prepare(&sql).map_err(|e| self.error("read", e))?;
        let details: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error("read", e))?;
        Ok(details.join("; "))
    }
}

fn field(v: rusqlite::types::ValueRef<'_>) -> Field {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Field::Null,
        ValueRef::Integer(n) => Field::Int(n),
        ValueRef::Real(x) => Field::Real(x),
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => Field::Text(Text::new(s)),
            Err(_) => Field::NotUtf8,
        },
        ValueRef::Blob(b) => Field::Blob(b.len()),
    }
}

/// An SQLite failure as one line and its exit status: a lock held past the
/// busy timeout is temporary (75); anything else about the file is 74.
pub fn db_error(path: &str, what: &str, e: rusqlite::Error, busy_secs: f64) -> Error {
    let code = e.sqlite_error_code();
    let detail = match &e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    };
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::new(
            Exit::TempFail,
            format!(
                "database {path} is locked by another process (waited {busy_secs} s): {detail}"
            ),
        ),
        Some(ErrorCode::NotADatabase) => {
            Error::new(Exit::IoErr, format!("{path} is not an SQLite database"))
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            Error::new(Exit::IoErr, format!("database {path} is corrupt: {detail}"))
        }
        Some(ErrorCode::ReadOnly) => Error::new(
            Exit::IoErr,
            format!(
                "cannot {what} database {path}: it is read-only ({detail}); check the file's and its directory's permissions"
            ),
        ),
        Some(ErrorCode::DiskFull) => Error::new(
            Exit::IoErr,
            format!("cannot {what} database {path}: the disk is full"),
        ),
        _ => Error::new(
            Exit::IoErr,
            format!("cannot {what} database {path}: {detail}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn target(dir: &Path, mask: i64) -> Target {
        Target {
            db: crate::config::Database::Sqlite(dir.join("t.db")),
            sync_mask: mask,
            busy_timeout: Duration::from_secs(1),
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("frameflush-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_selection_of_unsent_rows_uses_the_partial_index_not_a_table_scan() {
        let d = tempdir("plan");
        let db = Sqlite::init(&d.join("t.db"), &target(&d, 64)).unwrap();
        let plan = db.selection_plan().unwrap();
        assert!(plan.contains("USING INDEX frameflush_unsent_64"), "{plan}");
        assert!(!plan.contains("SCAN"), "{plan}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reading_ahead_after_a_new_id_each_time_prepares_its_statement_only_once() {
        let d = tempdir("reprepare");
        let db = Sqlite::init(&d.join("t.db"), &target(&d, 64)).unwrap();
        db.conn
            .execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
                 INSERT INTO sensorParser (id_wasp, sensor, value, sync) SELECT 'n', 'TC', i, 0 FROM n",
                [],
            )
            .unwrap();
        // The run's own connection (a fallback read) and the marking one.
        let second = db.second().unwrap();
        for m in [&db, &second] {
            let (mut after, mut got) = (0, 0);
            // Reads of 128 rows and a short one, as the marking thread makes.
            for limit in [128, 128, 7, 128, 128] {
                let rows = m.select_unsent(after, limit).unwrap();
                got += rows.len();
                after = rows.last().map_or(after, |r| r.id);
            }
            assert_eq!(got, 300);
            let st = m.conn.prepare_cached(&m.select_sql()).unwrap();
            assert_eq!(
                st.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "the selection was prepared again for new values (about 160,000 instructions each)"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_commit_whose_later_slice_fails_marks_none_of_its_slices_twice_and_after_rows_are_added() {
        let d = tempdir("slicefail");
        let db = Sqlite::init(&d.join("t.db"), &target(&d, 64)).unwrap();
        let add = |n: usize| {
            db.conn
                .execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                     INSERT INTO sensorParser (id_wasp, sensor, value, sync) SELECT 'n', 'TC', i, 0 FROM n",
                    [n as i64],
                )
                .unwrap();
        };
        let marked = || -> i64 {
            db.conn
                .query_row(
                    "SELECT count(*) FROM sensorParser WHERE sync & 64",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        add(4 * super::super::MARK_SLICE);
        // The third slice's UPDATE fails (as a disk error would), after two
        // slices of the same transaction were written.
        let bad = 2 * super::super::MARK_SLICE as i64 + 5;
        db.conn
            .execute_batch(&format!(
                "CREATE TRIGGER fail_mark BEFORE UPDATE OF sync ON sensorParser WHEN old.id = {bad}
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            ))
            .unwrap();
        let mut m = db.second().unwrap();
        let all = |n: i64| (1..=n).collect::<Vec<i64>>();
        let end = RunEnd {
            exit: Exit::Ok,
            marked: 0,
        };
        for round in 0..2 {
            let ids = all(4 * super::super::MARK_SLICE as i64 + 50 * round);
            assert!(
                m.commit_marks(&ids, &[], Some(end)).is_err(),
                "round {round}"
            );
            assert_eq!(
                marked(),
                0,
                "round {round}: a slice of the failed commit stayed marked"
            );
            add(50);
        }
        db.conn.execute_batch("DROP TRIGGER fail_mark").unwrap();
        let ids = all(4 * super::super::MARK_SLICE as i64 + 100);
        assert_eq!(m.commit_marks(&ids, &[], Some(end)).unwrap(), ids.len());
        assert_eq!(marked(), ids.len() as i64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn marking_sets_only_this_masks_bit_and_leaves_the_others() {
        let d = tempdir("mark");
        let mut db = Sqlite::init(&d.join("t.db"), &target(&d, 64)).unwrap();
        db.conn
            .execute_batch(
                "INSERT INTO sensorParser (id_wasp, sensor, value, sync) VALUES ('n', 'TC', '1', 0), ('n', 'TC', '2', 5), ('n', 'TC', '3', 64)",
            )
            .unwrap();
        let rows = db.select_unsent(0, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(db.mark(&[1, 2]).unwrap(), 2);
        let syncs: Vec<i64> = db
            .conn
            .prepare("SELECT sync FROM sensorParser ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(syncs, vec![64, 69, 64]);
        assert!(db.select_unsent(0, 10).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Whether marking `rows` rows of Meshlium's kind in one transaction, on
    /// the marking connection with a page cache of `cache_kib`, wrote to the
    /// database file before the commit (a spill).
    fn spills(name: &str, rows: i64, cache_kib: Option<i64>) -> bool {
        let d = tempdir(name);
        let file = d.join("t.db");
        let db = Sqlite::init(&file, &target(&d, 64)).unwrap();
        db.conn
            .execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp, sync, raw, parser_type)
                 SELECT 'node_' || (i / 6 % 40), '403476432', 134, i / 6 % 256,
                        substr('TCBATHUMPRESLUMCO2', 1 + (i % 6) * 3, 3), printf('%.2f', i % 1000 / 7.0),
                        datetime(1700000000 + i / 6, 'unixepoch'), 0, 'noraw', 0 FROM n",
                [rows + 1000],
            )
            .unwrap();
        let mut m = db.second().unwrap();
        if let Some(kib) = cache_kib {
            m.conn.pragma_update(None, "cache_size", -kib).unwrap();
        }
        let before = std::fs::read(&file).unwrap();
        let tx = m.conn.transaction().unwrap();
        let ids: Vec<i64> = (1..=rows).collect();
        assert_eq!(mark_in(&tx, 64, &ids).unwrap(), rows as usize);
        let spilled = std::fs::read(&file).unwrap() != before;
        tx.commit().unwrap();
        assert_ne!(
            std::fs::read(&file).unwrap(),
            before,
            "the commit wrote nothing"
        );
        let _ = std::fs::remove_dir_all(&d);
        spilled
    }

    #[test]
    fn the_largest_commit_of_marks_fits_the_marking_connections_page_cache() {
        let cap = crate::marker::MAX_UNMARKED as i64;
        let d = tempdir("cache");
        let db = Sqlite::init(&d.join("t.db"), &target(&d, 64)).unwrap();
        let kib: i64 = db
            .second()
            .unwrap()
            .conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kib, -SECOND_CACHE_KIB);
        let _ = std::fs::remove_dir_all(&d);
        assert!(
            !spills("nospill", cap, None),
            "{cap} marks spilled from a cache of {SECOND_CACHE_KIB} KiB"
        );
        // The check sees a spill where there is one.
        assert!(
            spills("spill", cap, Some(128)),
            "{cap} marks did not spill from 128 KiB"
        );
    }

    #[test]
    fn own_state_is_kept_by_key_and_overwritten() {
        let d = tempdir("state");
        let t = target(&d, 64);
        let mut db = Sqlite::init(&d.join("t.db"), &t).unwrap();
        assert_eq!(db.state("hwm:64").unwrap(), None);
        db.set_state("hwm:64", "10").unwrap();
        db.set_state("mqtt:localhost:1883", "5").unwrap();
        db.set_state("hwm:64", "42").unwrap();
        drop(db);
        let db = Sqlite::open(&d.join("t.db"), &t, Mode::ReadOnly).unwrap();
        assert_eq!(db.state("hwm:64").unwrap().as_deref(), Some("42"));
        assert_eq!(
            db.state("mqtt:localhost:1883").unwrap().as_deref(),
            Some("5")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_database_from_before_the_state_table_gets_it_on_the_first_write() {
        let d = tempdir("state-old");
        let t = target(&d, 64);
        let conn = Connection::open(d.join("t.db")).unwrap();
        conn.execute_batch(CREATE_TABLE).unwrap();
        drop(conn);
        // A database of the release before: failures and runs, no state.
        let conn = Connection::open(d.join("t.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE frameflush_failures (sync_mask INTEGER NOT NULL, row_id INTEGER NOT NULL,
               attempts INTEGER NOT NULL, last_error TEXT NOT NULL, first_failed_at TEXT NOT NULL,
               last_attempt_at TEXT NOT NULL, quarantined_at TEXT, PRIMARY KEY (sync_mask, row_id)) WITHOUT ROWID;
             CREATE TABLE frameflush_runs (sync_mask INTEGER PRIMARY KEY, started_at TEXT NOT NULL,
               finished_at TEXT, exit_code INTEGER, rows_marked INTEGER NOT NULL DEFAULT 0);
             INSERT INTO frameflush_failures VALUES (64, 7, 3, 'bad', '2024-01-01 00:00:00', '2024-01-01 00:00:00', '2024-01-01 00:00:00');",
        )
        .unwrap();
        drop(conn);
        let ro = Sqlite::open(&d.join("t.db"), &t, Mode::ReadOnly).unwrap();
        assert_eq!(ro.state("k").unwrap(), None);
        assert_eq!(ro.failures().unwrap().len(), 1, "failures stay visible");
        drop(ro);
        let mut db = Sqlite::open(&d.join("t.db"), &t, Mode::ReadWrite).unwrap();
        db.set_state("k", "v").unwrap();
        assert_eq!(db.state("k").unwrap().as_deref(), Some("v"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
