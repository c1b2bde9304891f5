//! The MySQL/MariaDB source (cargo feature `mysql`): `sensorParser` where a
//! real Meshlium keeps it, in its MySQL database, read through the pure-Rust
//! `mysql` client (no C zlib, no OpenSSL; no TLS, which localhost does not
//! need).
//!
//! Meshlium's table is not ours: frameflush never alters it (no column, no
//! index: a MyISAM ALTER copies the table under a lock that blocks the
//! parser, and a firmware update may restore the schema). Without an index
//! on `sync`, "unsent" cannot be found cheaply, so this source keeps a
//! *high-water mark* per destination bit in its own state: an id at or
//! below which every row is marked or quarantined. A run selects
//! `WHERE id > mark AND (COALESCE(sync, 0) & MASK) = 0 ORDER BY id LIMIT
//! batch` (a NULL `sync` has been sent nowhere), a range scan on the
//! primary key that costs the rows since the mark, not the table. The mark never skips a row that can still appear (see [`step`]):
//! it only moves to an id that was the table's largest at least
//! [`MARGIN_S`] earlier (InnoDB commits ids out of order; MyISAM, whose
//! inserts are visible at once, needs no margin) and only past rows found
//! marked or quarantined then; and every [`FULL_SCAN_EVERY_S`] one run
//! selects from id 0, so a row that appeared below the mark anyway (a
//! transaction open longer than the margin, a restored dump) is found
//! within that time. A table whose ids started again (emptied by
//! `TRUNCATE`, dropped and made again, restored) is caught at once, by
//! what the mark is kept against (see [`Mysql::mismatch`]): the row at the
//! mark, which must be there sent or quarantined, as it was when the mark
//! moved there; one that no longer matches sends the run back to id 0.
//!
//! frameflush's own state lives in the same database, in tables
//! `frameflush_failures`, `frameflush_runs` and `frameflush_state` beside
//! `sensorParser` (README, "The database contract", says why): the same
//! tables and meaning as for SQLite, in MySQL's dialect. Text columns of
//! those tables are binary (UTF-8 by contract), so they work on every
//! server from MySQL 5.0 on, whatever its character sets.
//!
//! One run per database and destination bit holds
//! `GET_LOCK('frameflush:<database>:<mask>', 0)` on a connection of its
//! own, released by the server when that connection ends, however the
//! process dies. Marking is one short `UPDATE … WHERE id BETWEEN … OR id IN
//! (…)` per chunk of acknowledged ids; on MyISAM each statement is atomic,
//! so a crash can only re-send, never lose. Text comes converted by the
//! server to UTF-8 (`SET NAMES utf8mb4`, `utf8` on servers before 5.5), so
//! latin1 columns arrive as the right characters; text that is still not
//! UTF-8 is a failed row, as for SQLite. The session's time zone is UTC, so
//! a `timestamp` reads `YYYY-MM-DD HH:MM:SS` in UTC, as SQLite's
//! `CURRENT_TIMESTAMP` writes it.

use std::cell::RefCell;
use std::time::Duration;

use mysql::consts::{CapabilityFlags, ColumnType};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Params, Value};

use super::{Failure, Health, HighWater, Index, LastRun, Marker, Mode, RunEnd, Source};
use crate::config::{MysqlDb, Target};
use crate::error::{Error, Exit, Result};
use crate::row::{Field, Row, Text};

/// Seconds a table's largest id must have been seen before the mark may
/// move up to it (tables that are not MyISAM): longer than any producer
/// transaction stays open.
pub const MARGIN_S: i64 = 600;
/// A run selects from id 0 (not from the mark) when the last such run is
/// this many seconds ago.
pub const FULL_SCAN_EVERY_S: i64 = 3600;
/// TCP connection and login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ids per marking or deleting statement at most.
const IDS_PER_STATEMENT: usize = 500;

/// Meshlium's newer table (utf8, `parser_type`), for `frameflush init` on a
/// database without one. The engine is the server's default; nothing but
/// the primary key is indexed, as on a Meshlium. `{charset}` is utf8mb4, or
/// utf8 on servers without it.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS sensorParser (
  id int(11) NOT NULL AUTO_INCREMENT,
  id_wasp text,
  id_secret text,
  frame_type int(11) DEFAULT NULL,
  frame_number int(11) DEFAULT NULL,
  sensor text,
  value text,
  `timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  sync int(1) NOT NULL DEFAULT 0,
  raw text,
  parser_type tinyint(3) NOT NULL DEFAULT 0,
  PRIMARY KEY (id)) DEFAULT CHARSET={charset}";

/// frameflush's own tables. Binary text columns: no character set to agree
/// on with old servers; the contents are UTF-8.
const OWN_TABLES: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS frameflush_failures (
  sync_mask bigint NOT NULL,
  row_id bigint NOT NULL,
  attempts int NOT NULL,
  last_error blob NOT NULL,
  first_failed_at datetime NOT NULL,
  last_attempt_at datetime NOT NULL,
  quarantined_at datetime NULL,
  PRIMARY KEY (sync_mask, row_id))",
    "CREATE TABLE IF NOT EXISTS frameflush_runs (
  sync_mask bigint NOT NULL,
  started_at datetime NOT NULL,
  finished_at datetime NULL,
  exit_code int NULL,
  rows_marked bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (sync_mask))",
    "CREATE TABLE IF NOT EXISTS frameflush_state (
  `key` varbinary(255) NOT NULL,
  value blob NOT NULL,
  updated_at datetime NULL,
  PRIMARY KEY (`key`))",
];
const OWN_TABLE_NAMES: [&str; 3] = ["frameflush_failures", "frameflush_runs", "frameflush_state"];

const SELECT_COLUMNS: &str = "s.id, s.id_wasp, s.id_secret, s.frame_type, s.frame_number, \
     s.sensor, s.`value`, s.`timestamp`";

/// An open MySQL database, for one destination bit at a time.
pub struct Mysql {
    /// The queries' connection (`Queryable` needs `&mut`, the reads of the
    /// interface take `&self`).
    conn: RefCell<Conn>,
    /// The run lock's own connection, once taken.
    lock: Option<Conn>,
    db: MysqlDb,
    /// "MySQL database MeshliumDB at localhost:3306", for error lines.
    place: String,
    mask: i64,
    mode: Mode,
    busy: Duration,
    /// frameflush's own tables exist.
    own_tables: bool,
    /// The high-water mark may only move to ids seen this long ago.
    margin_s: i64,
    /// Rows with `id <= floor` are not looked at: the mark, or 0 in a
    /// full-scan run and for read-only commands.
    floor: i64,
    /// For `-v`, taken by [`Source::take_notes`].
    notes: Vec<String>,
}

impl Mysql {
    /// Connects, checks the table and reads frameflush's state. An unknown
    /// database or a missing table is 66; a refused login 77; a server that
    /// cannot be reached 74.
    pub fn open(db: &MysqlDb, target: &Target, mode: Mode) -> Result<Mysql> {
        let conn = connect(db, target.busy_timeout, true)?;
        Mysql::checked(conn, db, target, mode)
    }

    /// `frameflush init`: the database when missing, the table when missing
    /// (an existing one is never altered), frameflush's own tables.
    pub fn init(db: &MysqlDb, target: &Target) -> Result<Mysql> {
        let mut conn = match connect(db, target.busy_timeout, true) {
            Err(e) if e.exit == Exit::NoInput => {
                let mut server = connect(db, target.busy_timeout, false)?;
                server
                    .query_drop(format!("CREATE DATABASE IF NOT EXISTS `{}`", db.database))
                    .map_err(|e| mysql_error(db, "create", &e))?;
                drop(server);
                connect(db, target.busy_timeout, true)?
            }
            other => other?,
        };
        let made = conn.query_drop(CREATE_TABLE.replace("{charset}", "utf8mb4"));
        if let Err(mysql::Error::MySqlError(e)) = &made
            && e.code == 1115
        {
            // Unknown character set: a server before 5.5.
            conn.query_drop(CREATE_TABLE.replace("{charset}", "utf8"))
                .map_err(|e| mysql_error(db, "create the table in", &e))?;
        } else {
            made.map_err(|e| mysql_error(db, "create the table in", &e))?;
        }
        let mut m = Mysql::checked(conn, db, target, Mode::ReadWrite)?;
        m.ensure_own_tables()?;
        Ok(m)
    }

    fn checked(conn: Conn, db: &MysqlDb, target: &Target, mode: Mode) -> Result<Mysql> {
        let mut m = Mysql {
            conn: RefCell::new(conn),
            lock: None,
            db: db.clone(),
            place: place(db),
            mask: target.sync_mask,
            mode,
            busy: target.busy_timeout,
            own_tables: false,
            margin_s: MARGIN_S,
            floor: 0,
            notes: Vec::new(),
        };
        m.check_table()?;
        let own: Vec<String> = m.query_strings("read", "SHOW TABLES LIKE 'frameflush\\_%'")?;
        m.own_tables = OWN_TABLE_NAMES
            .iter()
            .all(|t| own.iter().any(|have| have == t));
        if mode == Mode::ReadWrite {
            m.margin_s = if m.engine()?.eq_ignore_ascii_case("MyISAM") {
                0
            } else {
                MARGIN_S
            };
        }
        Ok(m)
    }

    fn error(&self, what: &str, e: &mysql::Error) -> Error {
        mysql_error(&self.db, what, e)
    }

    fn check_table(&self) -> Result<()> {
        let rows: Vec<mysql::Row> = match self
            .conn
            .borrow_mut()
            .query("SHOW COLUMNS FROM sensorParser")
        {
            Ok(rows) => rows,
            Err(mysql::Error::MySqlError(e)) if e.code == 1146 => {
                return Err(Error::new(
                    Exit::NoInput,
                    format!(
                        "{} has no sensorParser table (create it with `frameflush init`)",
                        self.place
                    ),
                ));
            }
            Err(e) => return Err(self.error("read", &e)),
        };
        let columns: Vec<String> = rows
            .iter()
            .filter_map(|r| r.as_ref(0).and_then(text))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        super::check_columns(&columns, &self.place.to_string())?;
        Ok(())
    }

    /// The storage engine of `sensorParser` ("" when the server does not
    /// say).
    fn engine(&self) -> Result<String> {
        Ok(self.table_status()?.0)
    }

    /// The storage engine and collation of `sensorParser` ("" for what the
    /// server does not say).
    fn table_status(&self) -> Result<(String, String)> {
        let rows: Vec<mysql::Row> = self
            .conn
            .borrow_mut()
            .query("SHOW TABLE STATUS LIKE 'sensorParser'")
            .map_err(|e| self.error("read", &e))?;
        let get = |name: &str| {
            rows.first()
                .and_then(|r| {
                    let i = r
                        .columns_ref()
                        .iter()
                        .position(|c| c.name_str().eq_ignore_ascii_case(name))?;
                    r.as_ref(i).and_then(text)
                })
                .unwrap_or_default()
        };
        Ok((get("engine"), get("collation")))
    }

    fn query_strings(&self, what: &str, sql: &str) -> Result<Vec<String>> {
        let rows: Vec<mysql::Row> = self
            .conn
            .borrow_mut()
            .query(sql)
            .map_err(|e| self.error(what, &e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.as_ref(0).and_then(text))
            .collect())
    }

    fn exec_rows(
        &self,
        what: &str,
        sql: &str,
        params: impl Into<Params>,
    ) -> Result<Vec<mysql::Row>> {
        self.conn
            .borrow_mut()
            .exec(sql, params)
            .map_err(|e| self.error(what, &e))
    }

    /// Runs a statement; returns the rows it matched.
    fn exec_drop(&self, what: &str, sql: &str, params: impl Into<Params>) -> Result<u64> {
        let mut conn = self.conn.borrow_mut();
        conn.exec_drop(sql, params)
            .map_err(|e| mysql_error(&self.db, what, &e))?;
        Ok(conn.affected_rows())
    }

    /// Runs a statement without parameters (text protocol); returns the
    /// rows it matched.
    fn query_drop(&self, what: &str, sql: &str) -> Result<u64> {
        let mut conn = self.conn.borrow_mut();
        conn.query_drop(sql)
            .map_err(|e| mysql_error(&self.db, what, &e))?;
        Ok(conn.affected_rows())
    }

    /// The first column of the first row, as an integer (None for NULL or
    /// no row).
    fn int(&self, sql: &str, params: impl Into<Params>) -> Result<Option<i64>> {
        Ok(self
            .exec_rows("read", sql, params)?
            .first()
            .and_then(|r| r.as_ref(0))
            .and_then(int))
    }

    fn count(&self, sql: &str, params: impl Into<Params>) -> Result<u64> {
        Ok(self.int(sql, params)?.unwrap_or(0).max(0) as u64)
    }

    fn ensure_own_tables(&mut self) -> Result<()> {
        if self.own_tables {
            return Ok(());
        }
        for sql in OWN_TABLES {
            self.query_drop("add frameflush's own tables to", sql)?;
        }
        self.own_tables = true;
        Ok(())
    }

    /// `FROM … WHERE …` of the rows still to send after `:after`: the bit
    /// clear and no quarantine. The join on the failures' primary key keeps
    /// the selection a range scan of `sensorParser`'s primary key (a
    /// subquery would be re-run per row on old servers).
    fn pending(&self) -> String {
        let mask = self.mask;
        if self.own_tables {
            format!(
                "FROM sensorParser s LEFT JOIN frameflush_failures f \
                 ON f.sync_mask = {mask} AND f.row_id = s.id AND f.quarantined_at IS NOT NULL \
                 WHERE (COALESCE(s.sync, 0) & {mask}) = 0 AND f.row_id IS NULL"
            )
        } else {
            format!("FROM sensorParser s WHERE (COALESCE(s.sync, 0) & {mask}) = 0")
        }
    }

    /// The first row still to send in `(lo, hi]`.
    fn first_pending(&self, lo: i64, hi: i64) -> Result<Option<i64>> {
        self.int(
            &format!(
                "SELECT s.id {} AND s.id > ? AND s.id <= ? ORDER BY s.id LIMIT 1",
                self.pending()
            ),
            (lo, hi),
        )
    }

    fn state_i64(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.state(key)?.and_then(|v| v.trim().parse().ok()))
    }

    fn delete_state(&self, key: &str) -> Result<()> {
        self.exec_drop(
            "write to",
            "DELETE FROM frameflush_state WHERE `key` = ?",
            (key.as_bytes().to_vec(),),
        )
        .map(|_| ())
    }

    /// Under the run lock: moves the high-water mark as far as is safe,
    /// and decides this run's floor (the mark, or 0 for a full scan).
    fn advance_mark(&mut self) -> Result<()> {
        let mask = self.mask;
        let (mark_key, cand_key, scan_key) = (
            format!("hwm:{mask}"),
            format!("hwm-candidate:{mask}"),
            format!("full-scan:{mask}"),
        );
        let row_key = format!("hwm-row:{mask}");
        let now = self.int("SELECT UNIX_TIMESTAMP()", ())?.unwrap_or(0);
        let max_id = self
            .int("SELECT MAX(id) FROM sensorParser", ())?
            .unwrap_or(0);
        let stored = self.state_i64(&mark_key)?.unwrap_or(0);
        let mut mark = stored;
        let mut candidate = self.state(&cand_key)?.and_then(|v| {
            let (id, at) = v.split_once(' ')?;
            Some((id.parse().ok()?, at.parse().ok()?))
        });
        let witness = self.state(&row_key)?.and_then(|v| {
            let (id, sum) = v.split_once(' ')?;
            Some((id.parse().ok()?, sum.parse().ok()?))
        });
        let mismatch = if mark > 0 {
            self.mismatch(mark, max_id, witness)?
        } else {
            None
        };
        if let Some((why, stale_ledger)) = &mismatch {
            let mut note = format!(
                "sensorParser in {} no longer matches the high-water mark {mark} of sync mask {mask}: {why}; reading it again from id 0",
                self.place
            );
            if *stale_ledger {
                // The failure records name ids of rows that are gone: the
                // new rows with those ids are not the ones that failed.
                let n = self.exec_drop(
                    "write to",
                    "DELETE FROM frameflush_failures WHERE sync_mask = ?",
                    (mask,),
                )?;
                if n > 0 {
                    note.push_str(&format!(
                        " (and forgetting the {n} failure record(s) of the rows that were there)"
                    ));
                }
            }
            self.notes.push(note);
            mark = 0;
            candidate = None;
        }
        let margin = self.margin_s;
        let (new_mark, new_candidate) =
            step(mark, candidate, max_id, now, margin, &mut |lo, hi| {
                self.first_pending(lo, hi)
            })?;
        if new_mark != stored {
            self.set_state(&mark_key, &new_mark.to_string())?;
            // What the mark is kept against: the row at it as it is now.
            match self.row_at(new_mark)? {
                Some((id, sum, _)) if new_mark > 0 => {
                    self.set_state(&row_key, &format!("{id} {sum}"))?
                }
                _ => self.delete_state(&row_key)?,
            }
        }
        if new_candidate != candidate {
            match new_candidate {
                Some((id, at)) => self.set_state(&cand_key, &format!("{id} {at}"))?,
                None => self.delete_state(&cand_key)?,
            }
        }
        let last_scan = self.state_i64(&scan_key)?;
        if mismatch.is_some() || last_scan.is_none_or(|t| now - t >= FULL_SCAN_EVERY_S || t > now) {
            self.set_state(&scan_key, &now.to_string())?;
            self.floor = 0;
        } else {
            self.floor = new_mark;
        }
        Ok(())
    }

    /// Whether the table still matches the mark (`Some(why)` when not, and
    /// whether the failure records are of rows that are gone). Every row
    /// at or below the mark is sent or quarantined, and the row at the mark
    /// is the one that was there when the mark moved: a table emptied
    /// (`TRUNCATE`), dropped and made again, or restored breaks one of
    /// these at the row the mark stands on, whatever rows came since. Reads
    /// one row, by the primary key; writes nothing.
    fn mismatch(
        &self,
        mark: i64,
        max_id: i64,
        witness: Option<(i64, i64)>,
    ) -> Result<Option<(String, bool)>> {
        if max_id < mark {
            return Ok(Some((
                format!("its largest id is {max_id}: it was emptied or made again"),
                true,
            )));
        }
        Ok(match (self.row_at(mark)?, witness) {
            (Some((id, sum, _)), Some((was, was_sum))) if id == was && sum != was_sum => Some((
                format!(
                    "row {id} is not the row it was when the mark moved there: the table was emptied, made again or restored"
                ),
                true,
            )),
            (Some((id, _, true)), _) => Some((
                format!(
                    "row {id}, at or below the mark, is unsent: the table was emptied or made again, or its bits were cleared"
                ),
                false,
            )),
            _ => None,
        })
    }

    /// The last row at or below `id`: its id, a checksum of what it says
    /// (its time, node, frame number, sensor and value) and whether it is
    /// still to send for this mask.
    fn row_at(&self, id: i64) -> Result<Option<(i64, i64, bool)>> {
        let mask = self.mask;
        let sql = format!(
            "SELECT s.id, CRC32(CONCAT_WS(',', UNIX_TIMESTAMP(s.`timestamp`), s.frame_number, \
               CRC32(s.id_wasp), CRC32(s.sensor), CRC32(s.`value`))), \
               (COALESCE(s.sync, 0) & {mask}) = 0 AND f.row_id IS NULL \
             FROM sensorParser s LEFT JOIN frameflush_failures f \
               ON f.sync_mask = {mask} AND f.row_id = s.id AND f.quarantined_at IS NOT NULL \
             WHERE s.id <= ? ORDER BY s.id DESC LIMIT 1"
        );
        let rows = self.exec_rows("read", &sql, (id,))?;
        Ok(rows.first().and_then(|r| {
            let id = r.as_ref(0).and_then(int)?;
            let sum = r.as_ref(1).and_then(int).unwrap_or(0);
            let unsent = r.as_ref(2).and_then(int).unwrap_or(0) != 0;
            Some((id, sum, unsent))
        }))
    }

    /// Lowers the mark below `id` (a requeued row must be selectable again).
    fn lower_mark_below(&mut self, id: i64) -> Result<()> {
        let key = format!("hwm:{}", self.mask);
        if let Some(mark) = self.state_i64(&key)?
            && mark >= id
        {
            self.set_state(&key, &(id - 1).max(0).to_string())?;
        }
        Ok(())
    }

    /// The marking statement of this mask, as a run sends it (for rows
    /// that do not exist).
    fn mark_probe(&self) -> String {
        mark_sql(self.mask, "id = 0")
    }

    /// Whether the server lets this user run `sql`, asked by preparing it
    /// (the server checks the privileges then) and never executing it:
    /// nothing is written, nothing locked. `Some(reason)`: refused. A
    /// table that does not exist yet passes: the privilege is checked
    /// before the table is looked up.
    fn denied(&self, sql: &str) -> Result<Option<String>> {
        let mut conn = self.conn.borrow_mut();
        match conn.prep(sql) {
            Ok(stmt) => {
                let _ = conn.close(stmt);
                Ok(None)
            }
            Err(mysql::Error::MySqlError(e)) if matches!(e.code, 1142 | 1143 | 1044) => {
                Ok(Some(e.message))
            }
            Err(mysql::Error::MySqlError(e)) if e.code == 1146 => Ok(None),
            Err(e) => Err(mysql_error(&self.db, "read", &e)),
        }
    }

    /// The session's account as the server matched it, `'user'@'host'`.
    fn account(&self) -> Result<String> {
        let who = self
            .query_strings("read", "SELECT CURRENT_USER()")?
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(match who.rsplit_once('@') {
            Some((user, host)) => format!("'{user}'@'{host}'"),
            None => format!("'{who}'"),
        })
    }

    /// Why this user may not do what a run does, one line each: UPDATE
    /// on `sensorParser`; CREATE (while missing), INSERT, UPDATE, DELETE on
    /// frameflush's own tables.
    fn unwritable(&self, account: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let database = &self.db.database;
        if let Some(why) = self.denied(&self.mark_probe())? {
            out.push(format!(
                "user {account} may not UPDATE sensorParser in {} ({why}): a run could not mark what it sent; \
                 grant it with GRANT SELECT, UPDATE ON `{database}`.sensorParser TO {account}",
                self.place
            ));
        }
        let mut refused: Vec<&str> = Vec::new();
        for (i, table) in OWN_TABLE_NAMES.iter().enumerate() {
            let key = if *table == "frameflush_state" {
                "`key`"
            } else {
                "sync_mask"
            };
            let mut probes = vec![
                ("INSERT", format!("INSERT INTO {table} () VALUES ()")),
                (
                    "UPDATE",
                    format!("UPDATE {table} SET {key} = {key} WHERE 1 = 0"),
                ),
                ("DELETE", format!("DELETE FROM {table} WHERE 1 = 0")),
            ];
            if !self.own_tables {
                probes.insert(0, ("CREATE", OWN_TABLES[i].to_string()));
            }
            for (privilege, sql) in probes {
                if self.denied(&sql)?.is_some() && !refused.contains(&privilege) {
                    refused.push(privilege);
                }
            }
        }
        if !refused.is_empty() {
            let list = refused.join(", ");
            out.push(format!(
                "user {account} may not {list} frameflush's own tables ({}) in {}: a run records its runs, failed rows and high-water mark there; \
                 grant it with GRANT {list} ON `{database}`.* TO {account} (or on each of those tables)",
                OWN_TABLE_NAMES.join(", "),
                self.place
            ));
        }
        Ok(out)
    }

    /// The mark of this mask, and what a full scan below it finds now.
    fn high_water(&self) -> Result<HighWater> {
        let mask = self.mask;
        let mark = self.state_i64(&format!("hwm:{mask}"))?;
        let unsent_below = match mark {
            Some(m) if m > 0 => self.count(
                &format!("SELECT COUNT(*) {} AND s.id <= ?", self.pending()),
                (m,),
            )?,
            _ => 0,
        };
        let now = self.int("SELECT UNIX_TIMESTAMP()", ())?.unwrap_or(0);
        let full_scan_in_s = match self.state_i64(&format!("full-scan:{mask}"))? {
            Some(t) if t <= now => (t + FULL_SCAN_EVERY_S - now).max(0),
            _ => 0,
        };
        Ok(HighWater {
            mark,
            unsent_below,
            full_scan_in_s,
        })
    }

    fn row(&self, r: mysql::Row) -> Result<Row> {
        let columns = r.columns();
        let values = r.unwrap();
        let mut fields: [Field; 8] = Default::default();
        for (i, f) in fields.iter_mut().enumerate() {
            if let (Some(v), Some(c)) = (values.get(i), columns.get(i)) {
                *f = field(v, c);
            }
        }
        let Field::Int(id) = fields[0] else {
            return Err(Error::new(
                Exit::NoInput,
                format!(
                    "table sensorParser in {} has a row whose id is not an integer",
                    self.place
                ),
            ));
        };
        Ok(Row::new(id, fields))
    }
}

impl Marker for Mysql {
    /// [`Source::mark`]'s statements, the state entries and the run's end, in one
    /// transaction: on InnoDB one commit (one log flush) for all of them,
    /// however many rows; MyISAM, which has no transactions, applies each
    /// statement at once, as before.
    fn commit_marks(
        &mut self,
        ids: &[i64],
        states: &[(String, String)],
        end: Option<RunEnd>,
    ) -> Result<usize> {
        if !states.is_empty() || end.is_some() {
            // Before the transaction: CREATE TABLE would commit it.
            self.ensure_own_tables()?;
        }
        self.query_drop("mark rows in", "START TRANSACTION")?;
        let written = states
            .iter()
            .try_for_each(|(key, value)| Source::set_state(self, key, value));
        let marked = written.and_then(|()| Source::mark(self, ids));
        let ended = marked.and_then(|n| match end {
            Some(end) => Source::end_run(self, end.exit, end.marked + n as u64).map(|()| n),
            None => Ok(n),
        });
        let n = match ended {
            Ok(n) => n,
            Err(e) => {
                let _ = self.query_drop("mark rows in", "ROLLBACK");
                return Err(e);
            }
        };
        self.query_drop("mark rows in", "COMMIT")?;
        Ok(n)
    }

    fn read_ahead(&self, after: i64, limit: usize) -> Result<Vec<Row>> {
        self.select_unsent(after, limit)
    }

    /// 500 rows, not [`super::READ_PIECE`]: the server plans and starts
    /// each SELECT anew, about 0.2 ms of its CPU whatever the size
    /// (mariadbd's CPU per 50,000 rows read ahead, InnoDB: 0.19 to 0.25 s
    /// in pieces of 500, 0.27 to 0.31 s in pieces of 128).
    fn read_piece(&self) -> usize {
        500
    }
}

impl Source for Mysql {
    fn sync_mask(&self) -> i64 {
        self.mask
    }

    /// A connection of its own, set up as the first one is; the run lock
    /// stays on the lock connection of this handle.
    fn marker(&self) -> Result<Box<dyn Marker>> {
        Ok(Box::new(Mysql {
            conn: RefCell::new(connect(&self.db, self.busy, true)?),
            lock: None,
            db: self.db.clone(),
            place: self.place.clone(),
            mask: self.mask,
            mode: self.mode,
            busy: self.busy,
            own_tables: self.own_tables,
            margin_s: self.margin_s,
            floor: self.floor,
            notes: Vec::new(),
        }))
    }

    /// None: the marking connection reads ahead between its commits. An
    /// InnoDB read would not wait for a commit, but a third connection
    /// keeps a second server thread busy beside the marking one, on the
    /// cores the broker and the publishing loop need (InnoDB, W=100,
    /// 50,000 rows, 11 rounds each paired with the bare loop: 0.87 of it
    /// with a reader of its own, 1.13 without; at +5 ms per fsync 0.95 and
    /// 1.03). MyISAM's reads wait for each `UPDATE` anyway (0.70 and 0.71).
    fn reader(&self) -> Result<Option<Box<dyn Marker>>> {
        Ok(None)
    }

    fn lock_run(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let mut conn = connect(&self.db, self.busy, true)?;
        let name = lock_name(&self.db.database, self.mask);
        let got: Option<i64> = conn
            .exec_first::<Value, _, _>("SELECT GET_LOCK(?, 0)", (name.clone(),))
            .map_err(|e| self.error("lock", &e))?
            .as_ref()
            .and_then(int);
        match got {
            Some(1) => {
                self.lock = Some(conn);
                Ok(())
            }
            Some(0) => Err(Error::new(
                Exit::TempFail,
                format!(
                    "another frameflush run holds the lock {name} on {}; not starting a second one",
                    self.place
                ),
            )),
            _ => Err(Error::new(
                Exit::IoErr,
                format!("{} could not take the lock {name}", self.place),
            )),
        }
    }

    /// Creates frameflush's own tables when missing (never touching
    /// `sensorParser`) and, under the run lock, moves the high-water mark
    /// and sets this run's floor.
    fn ensure_schema(&mut self) -> Result<()> {
        self.ensure_own_tables()?;
        if self.lock.is_some() && self.mode == Mode::ReadWrite {
            self.advance_mark()?;
        }
        Ok(())
    }

    fn select_unsent(&self, after: i64, limit: usize) -> Result<Vec<Row>> {
        let sql = format!(
            "SELECT {SELECT_COLUMNS} {} AND s.id > ? ORDER BY s.id LIMIT ?",
            self.pending()
        );
        let rows = self.exec_rows("read", &sql, (after.max(self.floor), limit as u64))?;
        rows.into_iter().map(|r| self.row(r)).collect()
    }

    /// Sets this mask's bit on the given rows: runs of consecutive ids as
    /// `BETWEEN` ranges (a range holds exactly the ids of its run), the
    /// rest in `IN (…)`, at most [`super::MARK_SLICE`] ids per statement.
    /// `timestamp = timestamp` keeps a column declared `ON UPDATE
    /// CURRENT_TIMESTAMP` as it was.
    fn mark(&mut self, ids: &[i64]) -> Result<usize> {
        super::mark_slices(ids, |slice| {
            let sql = mark_sql(self.mask, &id_condition(slice));
            self.query_drop("mark rows in", &sql).map(|n| n as usize)
        })
    }

    fn record_failures(&mut self, failed: &[(i64, String)], max_attempts: u32) -> Result<u64> {
        if failed.is_empty() {
            return Ok(0);
        }
        self.ensure_own_tables()?;
        // quarantined_at is assigned before attempts, so that it reads the
        // old count however the server orders the assignments.
        let sql = "INSERT INTO frameflush_failures
               (sync_mask, row_id, attempts, last_error, first_failed_at, last_attempt_at, quarantined_at)
             VALUES (?, ?, 1, ?, UTC_TIMESTAMP(), UTC_TIMESTAMP(), IF(? <= 1, UTC_TIMESTAMP(), NULL))
             ON DUPLICATE KEY UPDATE
               quarantined_at = COALESCE(quarantined_at, IF(attempts + 1 >= ?, UTC_TIMESTAMP(), NULL)),
               attempts = attempts + 1,
               last_error = VALUES(last_error),
               last_attempt_at = VALUES(last_attempt_at)";
        for (id, why) in failed {
            self.exec_drop(
                "record failed rows in",
                sql,
                (
                    self.mask,
                    *id,
                    why.as_bytes().to_vec(),
                    max_attempts,
                    max_attempts,
                ),
            )?;
        }
        // Quarantined rows are never selected: those quarantined now were
        // quarantined by this call.
        let ids: Vec<i64> = failed.iter().map(|(id, _)| *id).collect();
        let mut quarantined = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            quarantined += self.count(
                &format!(
                    "SELECT COUNT(*) FROM frameflush_failures WHERE sync_mask = ? \
                     AND quarantined_at IS NOT NULL AND row_id IN ({})",
                    list.join(",")
                ),
                (self.mask,),
            )?;
        }
        Ok(quarantined)
    }

    fn failures(&self) -> Result<Vec<Failure>> {
        if !self.own_tables {
            return Ok(Vec::new());
        }
        let rows = self.exec_rows(
            "read",
            "SELECT row_id, attempts, last_error, first_failed_at, last_attempt_at, quarantined_at
             FROM frameflush_failures WHERE sync_mask = ? ORDER BY row_id",
            (self.mask,),
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let get = |i: usize| r.as_ref(i);
                Failure {
                    row_id: get(0).and_then(int).unwrap_or(0),
                    attempts: get(1).and_then(int).unwrap_or(0),
                    last_error: get(2).and_then(text).unwrap_or_default(),
                    first_failed_at: get(3).and_then(text).unwrap_or_default(),
                    last_attempt_at: get(4).and_then(text).unwrap_or_default(),
                    quarantined_at: get(5).and_then(text),
                }
            })
            .collect())
    }

    fn requeue(&mut self, ids: Option<&[i64]>) -> Result<usize> {
        if !self.own_tables {
            return Ok(0);
        }
        let mask = self.mask;
        let (n, lowest) = match ids {
            None => {
                let lowest = self.int(
                    "SELECT MIN(row_id) FROM frameflush_failures WHERE sync_mask = ?",
                    (mask,),
                )?;
                let n = self.exec_drop(
                    "requeue rows in",
                    "DELETE FROM frameflush_failures WHERE sync_mask = ?",
                    (mask,),
                )?;
                (n as usize, lowest)
            }
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += self.exec_drop(
                        "requeue rows in",
                        "DELETE FROM frameflush_failures WHERE sync_mask = ? AND row_id = ?",
                        (mask, *id),
                    )? as usize;
                }
                (n, ids.iter().copied().min())
            }
        };
        if n > 0
            && let Some(id) = lowest
        {
            self.lower_mark_below(id)?;
        }
        Ok(n)
    }

    /// Also asks the server whether this user may mark rows (by preparing
    /// the marking statement, see [`Mysql::denied`]): the insert into
    /// frameflush's own table proves nothing of `sensorParser`, and a run
    /// that found out only after publishing would send the same rows
    /// again every time.
    fn begin_run(&mut self) -> Result<()> {
        if let Some(why) = self.denied(&self.mark_probe())? {
            return Err(Error::new(
                Exit::NoPerm,
                format!(
                    "{}: user {} may not mark rows in sensorParser ({why}); grant it SELECT and UPDATE on sensorParser",
                    self.place, self.db.user
                ),
            ));
        }
        self.ensure_own_tables()?;
        self.exec_drop(
            "write to",
            "INSERT INTO frameflush_runs (sync_mask, started_at) VALUES (?, UTC_TIMESTAMP())
             ON DUPLICATE KEY UPDATE started_at = VALUES(started_at),
               finished_at = NULL, exit_code = NULL, rows_marked = 0",
            (self.mask,),
        )
        .map(|_| ())
    }

    fn end_run(&mut self, exit: Exit, marked: u64) -> Result<()> {
        let mask = self.mask;
        self.exec_drop(
            "write to",
            "UPDATE frameflush_runs SET finished_at = UTC_TIMESTAMP(), exit_code = ?, rows_marked = ?
             WHERE sync_mask = ?",
            (exit.code(), marked, mask),
        )?;
        self.exec_drop(
            "write to",
            "DELETE f FROM frameflush_failures f LEFT JOIN sensorParser s
               ON s.id = f.row_id AND (COALESCE(s.sync, 0) & ?) = 0
             WHERE f.sync_mask = ? AND s.id IS NULL",
            (mask, mask),
        )
        .map(|_| ())
    }

    fn last_run(&self) -> Result<Option<LastRun>> {
        if !self.own_tables {
            return Ok(None);
        }
        let rows = self.exec_rows(
            "read",
            "SELECT started_at, finished_at, exit_code, rows_marked FROM frameflush_runs WHERE sync_mask = ?",
            (self.mask,),
        )?;
        Ok(rows.first().map(|r| LastRun {
            started_at: r.as_ref(0).and_then(text).unwrap_or_default(),
            finished_at: r.as_ref(1).and_then(text),
            exit_code: r.as_ref(2).and_then(int),
            rows_marked: r.as_ref(3).and_then(int).unwrap_or(0),
        }))
    }

    fn backlog(&self) -> Result<u64> {
        self.count(
            &format!("SELECT COUNT(*) {} AND s.id > ?", self.pending()),
            (self.floor,),
        )
    }

    fn for_mask(&mut self, mask: i64) -> Result<()> {
        self.mask = mask;
        Ok(())
    }

    fn known_masks(&self) -> Result<Vec<i64>> {
        if !self.own_tables {
            return Ok(Vec::new());
        }
        let mut masks = std::collections::BTreeSet::new();
        let rows = self.exec_rows(
            "read",
            "SELECT sync_mask FROM frameflush_runs UNION SELECT sync_mask FROM frameflush_failures",
            (),
        )?;
        masks.extend(rows.iter().filter_map(|r| r.as_ref(0).and_then(int)));
        let keys = self.exec_rows(
            "read",
            "SELECT `key` FROM frameflush_state WHERE `key` LIKE 'hwm:%'",
            (),
        )?;
        masks.extend(
            keys.iter()
                .filter_map(|r| r.as_ref(0).and_then(text))
                .filter_map(|k| k.strip_prefix("hwm:")?.parse::<i64>().ok()),
        );
        Ok(masks.into_iter().collect())
    }

    fn total(&self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM sensorParser", ())
    }

    fn null_sync(&self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM sensorParser WHERE sync IS NULL", ())
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn oldest_unsent(&self) -> Result<(Option<String>, Option<i64>)> {
        let rows = self.exec_rows(
            "read",
            &format!(
                "SELECT t, UNIX_TIMESTAMP() - UNIX_TIMESTAMP(t) FROM \
                 (SELECT MIN(s.`timestamp`) AS t {} AND s.id > ?) AS oldest",
                self.pending()
            ),
            (self.floor,),
        )?;
        Ok(rows.first().map_or((None, None), |r| {
            (r.as_ref(0).and_then(text), r.as_ref(1).and_then(int))
        }))
    }

    fn failure_counts(&self) -> Result<(u64, u64)> {
        if !self.own_tables {
            return Ok((0, 0));
        }
        let counted = |quarantined: &str| {
            format!(
                "SELECT COUNT(*) FROM frameflush_failures f JOIN sensorParser s ON s.id = f.row_id \
                 WHERE f.sync_mask = ? AND f.quarantined_at IS {quarantined} \
                   AND (COALESCE(s.sync, 0) & ?) = 0"
            )
        };
        let q = self.count(&counted("NOT NULL"), (self.mask, self.mask))?;
        let f = self.count(&counted("NULL"), (self.mask, self.mask))?;
        Ok((q, f))
    }

    /// The rows are picked, then deleted by id in one statement (each
    /// statement is atomic on MyISAM, too); their failure records after.
    fn purge_batch(
        &mut self,
        require: i64,
        before: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<(usize, Option<i64>)> {
        let rows = match before {
            Some(t) => self.exec_rows(
                "read",
                "SELECT id FROM sensorParser WHERE id > ? AND (sync & ?) = ? AND `timestamp` < ? \
                 ORDER BY id LIMIT ?",
                (after, require, require, t.to_string(), limit as u64),
            )?,
            None => self.exec_rows(
                "read",
                "SELECT id FROM sensorParser WHERE id > ? AND (sync & ?) = ? ORDER BY id LIMIT ?",
                (after, require, require, limit as u64),
            )?,
        };
        let ids: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.as_ref(0).and_then(int))
            .collect();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            self.query_drop(
                "delete rows from",
                &format!("DELETE FROM sensorParser WHERE {}", id_condition(chunk)),
            )?;
            if self.own_tables {
                let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
                self.query_drop(
                    "delete rows from",
                    &format!(
                        "DELETE FROM frameflush_failures WHERE row_id IN ({})",
                        list.join(",")
                    ),
                )?;
            }
        }
        Ok((ids.len(), ids.last().copied()))
    }

    fn row_counts(&self, require: i64) -> Result<(u64, u64)> {
        let total = self.count("SELECT COUNT(*) FROM sensorParser", ())?;
        let unsent = self.count(
            "SELECT COUNT(*) FROM sensorParser WHERE (COALESCE(sync, 0) & ?) != ?",
            (require, require),
        )?;
        Ok((total, unsent))
    }

    fn cutoff(&self, seconds: u64) -> Result<String> {
        let rows = self.exec_rows(
            "read",
            "SELECT DATE_FORMAT(UTC_TIMESTAMP() - INTERVAL ? SECOND, '%Y-%m-%d %H:%i:%s')",
            (seconds,),
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.as_ref(0))
            .and_then(text)
            .unwrap_or_default())
    }

    /// MySQL gives space back only by rebuilding the table (`OPTIMIZE
    /// TABLE`, which locks out the producer): done only with `--vacuum`.
    /// The server does not count pages freed: 0.
    fn reclaim(&mut self, full_vacuum: bool) -> Result<u64> {
        if full_vacuum {
            let _: Vec<mysql::Row> = self
                .conn
                .borrow_mut()
                .query("OPTIMIZE TABLE sensorParser")
                .map_err(|e| self.error("optimize", &e))?;
        }
        Ok(0)
    }

    /// `EXPLAIN` of the unsent-row selection from this run's floor, one
    /// `table: type …, key …, rows …` entry per table.
    fn selection_plan(&self) -> Result<String> {
        let sql = format!(
            "EXPLAIN SELECT {SELECT_COLUMNS} {} AND s.id > {} ORDER BY s.id LIMIT 10",
            self.pending(),
            self.floor
        );
        let rows: Vec<mysql::Row> = self
            .conn
            .borrow_mut()
            .query(&sql)
            .map_err(|e| self.error("read", &e))?;
        let mut out = Vec::new();
        for r in &rows {
            let get = |name: &str| {
                r.columns_ref()
                    .iter()
                    .position(|c| c.name_str().eq_ignore_ascii_case(name))
                    .and_then(|i| r.as_ref(i))
                    .and_then(text)
                    .unwrap_or_else(|| "-".into())
            };
            out.push(format!(
                "{}: type {}, key {}, rows {}, {}",
                get("table"),
                get("type"),
                get("key"),
                get("rows"),
                get("Extra")
            ));
        }
        Ok(format!("from id {}: {}", self.floor, out.join("; ")))
    }

    /// The server's version and the table's engine and character set;
    /// writability from the server itself, by preparing (never executing)
    /// every kind of statement a run writes with (see [`Mysql::denied`]);
    /// no index, by design; and the high-water mark, with a full scan for
    /// unsent rows below it. Reads only.
    fn health(&self) -> Result<Health> {
        let version = self
            .query_strings("read", "SELECT VERSION()")?
            .into_iter()
            .next()
            .unwrap_or_default();
        let (engine, collation) = self.table_status()?;
        let charset = collation.split('_').next().unwrap_or_default().to_string();
        let account = self.account()?;
        let unwritable = self.unwritable(&account)?;
        let creates = if self.own_tables {
            ""
        } else {
            " (and CREATE them: not there yet)"
        };
        Ok(Health {
            kind: Some(format!(
                "{}, sensorParser is {engine} with {charset} text",
                server_name(&version)
            )),
            unwritable,
            unwritable_exit: Some(Exit::NoPerm),
            writable: Some(format!(
                "user {account} may UPDATE sensorParser and INSERT, UPDATE, DELETE frameflush's own tables{creates}: the server accepted every statement a run writes with (prepared, none executed)"
            )),
            index: Some(Index::NotNeeded(
                "none needed: Meshlium's table is never altered; a run reads a range of the PRIMARY key after its high-water mark (and the whole table once an hour)".to_string(),
            )),
            high_water: Some(self.high_water()?),
        })
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        if !self.own_tables {
            return Ok(None);
        }
        let rows = self.exec_rows(
            "read",
            "SELECT value FROM frameflush_state WHERE `key` = ?",
            (key.as_bytes().to_vec(),),
        )?;
        Ok(rows.first().and_then(|r| r.as_ref(0)).and_then(text))
    }

    fn set_state(&mut self, key: &str, value: &str) -> Result<()> {
        self.ensure_own_tables()?;
        self.exec_drop(
            "write to",
            "INSERT INTO frameflush_state (`key`, value, updated_at) VALUES (?, ?, UTC_TIMESTAMP())
             ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)",
            (key.as_bytes().to_vec(), value.as_bytes().to_vec()),
        )
        .map(|_| ())
    }
}

/// One move of the high-water mark. `mark`: every row with a smaller or
/// equal id is marked or quarantined. `candidate`: the table's largest id
/// when last seen, and when (server seconds). Returns the new mark and
/// candidate.
///
/// The mark moves only to a candidate seen at least `margin` seconds ago,
/// and only up to the row before the first one still to send in between
/// (`first_pending(lo, hi)`: the first unsent id in `(lo, hi]`). A row
/// whose id is below the candidate but that was not yet committed when the
/// candidate was seen has had `margin` seconds to commit: if it did, it is
/// found there; if its transaction is still open after the margin, the
/// periodic full scan finds it. A table whose largest id went below the
/// mark was emptied or recreated (ids start again): the mark goes back to 0.
pub fn step(
    mark: i64,
    candidate: Option<(i64, i64)>,
    max_id: i64,
    now: i64,
    margin: i64,
    first_pending: &mut dyn FnMut(i64, i64) -> Result<Option<i64>>,
) -> Result<(i64, Option<(i64, i64)>)> {
    let (mut mark, mut candidate) = (mark, candidate);
    if max_id < mark {
        mark = 0;
        candidate = None;
    }
    if candidate.is_some_and(|(id, at)| id > max_id || at > now) {
        candidate = None;
    }
    if candidate.is_none() && max_id > mark {
        candidate = Some((max_id, now));
    }
    if let Some((id, at)) = candidate
        && now - at >= margin
    {
        mark = match first_pending(mark, id)? {
            Some(pending) => (pending - 1).max(mark),
            None => id,
        };
        candidate = (max_id > mark).then_some((max_id, now));
    }
    Ok((mark, candidate))
}

/// The one statement that marks rows sent for `mask`, those `condition`
/// selects: a NULL `sync` becomes the mask; `timestamp = timestamp` keeps a
/// column declared `ON UPDATE CURRENT_TIMESTAMP` as it was.
pub fn mark_sql(mask: i64, condition: &str) -> String {
    format!(
        "UPDATE sensorParser SET sync = COALESCE(sync, 0) | {mask}, `timestamp` = `timestamp` WHERE {condition}"
    )
}

/// `id BETWEEN a AND b OR … OR id IN (…)` for sorted, distinct ids.
fn id_condition(sorted: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut singles = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i == sorted.len() || sorted[i] != sorted[i - 1] + 1 {
            if i - start >= 2 {
                parts.push(format!(
                    "id BETWEEN {} AND {}",
                    sorted[start],
                    sorted[i - 1]
                ));
            } else {
                singles.push(sorted[start].to_string());
            }
            start = i;
        }
    }
    if !singles.is_empty() {
        parts.push(format!("id IN ({})", singles.join(",")));
    }
    if parts.is_empty() {
        // No ids: a condition no row meets.
        return "1 = 0".into();
    }
    parts.join(" OR ")
}

/// The name of the run lock of a database and mask. MySQL 5.7 and later
/// take at most 64 characters: a longer one ends in a hash of the database
/// name instead of the name.
pub fn lock_name(database: &str, mask: i64) -> String {
    let name = format!("frameflush:{database}:{mask}");
    if name.len() <= 64 {
        return name;
    }
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in database.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("frameflush:{h:016x}:{mask}")
}

/// "MariaDB 10.11.19" from `VERSION()`'s "10.11.19-MariaDB-0+deb12u1",
/// "MySQL 5.1.73" from "5.1.73-1" (a server that does not say it is
/// MariaDB is MySQL). MariaDB 10 told old clients "5.5.5-10.…": the
/// prefix is dropped.
pub fn server_name(version: &str) -> String {
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let version = match version.strip_prefix("5.5.5-") {
        Some(rest) if mariadb => rest,
        _ => version,
    };
    let number: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let number = if number.is_empty() { version } else { &number };
    if mariadb {
        format!("MariaDB {number}")
    } else {
        format!("MySQL {number}")
    }
}

/// "MySQL database MeshliumDB at localhost:3306" (or "… at socket PATH").
fn place(db: &MysqlDb) -> String {
    match &db.socket {
        Some(s) => format!("MySQL database {} at socket {}", db.database, s.display()),
        None if db.host.contains(':') => {
            format!(
                "MySQL database {} at [{}]:{}",
                db.database, db.host, db.port
            )
        }
        None => format!("MySQL database {} at {}:{}", db.database, db.host, db.port),
    }
}

/// A connection set up for frameflush: UTF-8 text, UTC times, lock waits
/// bounded by `--busy-timeout`, every read and write bounded in time.
/// `with_db`: connect to the database (else to the server only, for
/// `init` to create it).
fn connect(db: &MysqlDb, busy: Duration, with_db: bool) -> Result<Conn> {
    let mut opts = OptsBuilder::new()
        .user(Some(db.user.clone()))
        .pass(db.password.as_ref().map(|p| p.expose().to_string()))
        .db_name(with_db.then(|| db.database.clone()))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
        .read_timeout(Some(busy + Duration::from_secs(10)))
        .write_timeout(Some(busy + Duration::from_secs(10)))
        .stmt_cache_size(16)
        // Affected rows = rows matched, as SQLite counts them.
        .additional_capabilities(CapabilityFlags::CLIENT_FOUND_ROWS);
    opts = match &db.socket {
        Some(s) => opts.socket(Some(s.display().to_string())),
        None => opts.ip_or_hostname(Some(db.host.clone())).tcp_port(db.port),
    };
    let mut conn = Conn::new(opts).map_err(|e| mysql_error(db, "connect to", &e))?;
    let names = conn
        .query_drop("SET NAMES utf8mb4")
        .or_else(|_| conn.query_drop("SET NAMES utf8"));
    names.map_err(|e| mysql_error(db, "set up a connection to", &e))?;
    conn.query_drop("SET time_zone = '+00:00'")
        .map_err(|e| mysql_error(db, "set up a connection to", &e))?;
    // InnoDB: an UPDATE in READ COMMITTED skips rows it does not match
    // without waiting for their locks, so marking never waits for a
    // producer's open transaction (REPEATABLE READ would lock the row
    // after a range: the producer's newest).
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .map_err(|e| mysql_error(db, "set up a connection to", &e))?;
    let wait = busy.as_secs().max(1);
    // Not every server knows both (lock_wait_timeout: 5.5 and later).
    let _ = conn.query_drop(format!("SET SESSION innodb_lock_wait_timeout = {wait}"));
    let _ = conn.query_drop(format!("SET SESSION lock_wait_timeout = {wait}"));
    Ok(conn)
}

/// A MySQL failure as one line for the operator and its exit status. The
/// password is never part of it.
fn mysql_error(db: &MysqlDb, what: &str, e: &mysql::Error) -> Error {
    let where_ = place(db);
    match e {
        mysql::Error::MySqlError(m) => match m.code {
            1045 => Error::new(
                Exit::NoPerm,
                format!(
                    "{where_} refused the login of user {} (wrong password, or no access from this host): \
                     check the password in {} or --db-pw-file",
                    db.user,
                    crate::config::DB_PASSWORD_ENV
                ),
            ),
            1044 | 1142 | 1143 | 1227 => Error::new(
                Exit::NoPerm,
                format!(
                    "{where_}: user {} may not {what} it: {}; grant the user SELECT and UPDATE on sensorParser and CREATE, INSERT, DELETE on frameflush's own tables",
                    db.user, m.message
                ),
            ),
            1049 => Error::new(
                Exit::NoInput,
                format!("{where_} does not exist (create it with `frameflush init`)"),
            ),
            1146 => Error::new(
                Exit::NoInput,
                format!("{where_} lacks a table: {}", m.message),
            ),
            1205 | 1213 => Error::new(
                Exit::TempFail,
                format!(
                    "{where_} is locked by another process (cannot {what} it): {}",
                    m.message
                ),
            ),
            1040 | 1203 => Error::new(
                Exit::TempFail,
                format!("{where_} has too many connections: {}", m.message),
            ),
            _ => Error::new(
                Exit::IoErr,
                format!("cannot {what} {where_}: {} (error {})", m.message, m.code),
            ),
        },
        mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(Some((_, desc, kind)))) => {
            unreachable_line(db, what, &where_, desc, *kind)
        }
        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => Error::new(
            Exit::IoErr,
            format!(
                "cannot {what} {where_}: no answer within {} s; is the server running?",
                CONNECT_TIMEOUT.as_secs()
            ),
        ),
        mysql::Error::IoError(io) => match io.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Error::new(
                Exit::TempFail,
                format!("cannot {what} {where_}: the server did not answer in time"),
            ),
            kind => unreachable_line(db, what, &where_, &crate::sys::io_reason(io), kind),
        },
        other => Error::new(Exit::IoErr, format!("cannot {what} {where_}: {other}")),
    }
}

/// The line for a server that cannot be reached or went away (74).
fn unreachable_line(
    db: &MysqlDb,
    what: &str,
    where_: &str,
    desc: &str,
    kind: std::io::ErrorKind,
) -> Error {
    use std::io::ErrorKind as K;
    let hint = match (kind, &db.socket) {
        (K::ConnectionRefused | K::NotFound, None) if db.host == "localhost" => {
            "; is the server running? one that listens only on its Unix socket needs ?socket=PATH in the URL"
        }
        (K::ConnectionRefused | K::NotFound, _) => "; is the server running?",
        (K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof, _) => {
            "; the server closed the connection (stopped or restarted?)"
        }
        _ => "",
    };
    let desc = desc.split(" (os error").next().unwrap_or(desc);
    Error::new(Exit::IoErr, format!("cannot {what} {where_}: {desc}{hint}"))
}

/// One column's value as a [`Field`]: text converted by the server to
/// UTF-8 (still not UTF-8: [`Field::NotUtf8`]), binary strings as blobs,
/// dates as `YYYY-MM-DD HH:MM:SS`.
fn field(v: &Value, column: &mysql::Column) -> Field {
    match v {
        Value::NULL => Field::Null,
        Value::Int(n) => Field::Int(*n),
        Value::UInt(n) => i64::try_from(*n).map_or(Field::Real(*n as f64), Field::Int),
        Value::Float(x) => Field::Real(f64::from(*x)),
        Value::Double(x) => Field::Real(*x),
        Value::Bytes(b) => {
            let binary = column.character_set() == 63
                && !matches!(
                    column.column_type(),
                    ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL
                );
            if binary {
                Field::Blob(b.len())
            } else {
                match std::str::from_utf8(b) {
                    Ok(s) => Field::Text(Text::new(s)),
                    Err(_) => Field::NotUtf8,
                }
            }
        }
        date @ (Value::Date(..) | Value::Time(..)) => {
            Field::Text(text(date).unwrap_or_default().into())
        }
    }
}

/// A value as text (lossy for bytes), dates as `YYYY-MM-DD HH:MM:SS`.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Double(x) => Some(x.to_string()),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let mut t = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
            if *us != 0 {
                t.push_str(&format!(".{us:06}"));
            }
            Some(t)
        }
        Value::Time(neg, d, h, mi, s, _) => {
            let sign = if *neg { "-" } else { "" };
            Some(format!(
                "{sign}{:02}:{mi:02}:{s:02}",
                u64::from(*d) * 24 + u64::from(*h)
            ))
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::UInt(n) => i64::try_from(*n).ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::Double(x) if x.fract() == 0.0 => Some(*x as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `first_pending` over a fixed set of unsent ids.
    fn pending(unsent: &[i64]) -> impl FnMut(i64, i64) -> Result<Option<i64>> + '_ {
        move |lo, hi| Ok(unsent.iter().copied().find(|&id| id > lo && id <= hi))
    }

    #[test]
    fn the_mark_waits_the_margin_before_it_moves_to_the_largest_id_seen() {
        let mut none = pending(&[]);
        // First sight of id 100: a candidate, the mark stays.
        let (mark, cand) = step(0, None, 100, 1000, 600, &mut none).unwrap();
        assert_eq!((mark, cand), (0, Some((100, 1000))));
        // Not yet: 599 s later; rows came meanwhile, the candidate stays.
        let (mark, cand) = step(mark, cand, 150, 1599, 600, &mut none).unwrap();
        assert_eq!((mark, cand), (0, Some((100, 1000))));
        // After the margin the mark moves to 100 (not 150, seen just now).
        let (mark, cand) = step(mark, cand, 150, 1600, 600, &mut none).unwrap();
        assert_eq!((mark, cand), (100, Some((150, 1600))));
    }

    #[test]
    fn the_mark_stops_before_the_first_row_still_to_send() {
        let unsent = [42, 77];
        let mut p = pending(&unsent);
        let (mark, cand) = step(0, Some((100, 0)), 100, 600, 600, &mut p).unwrap();
        assert_eq!(mark, 41);
        assert_eq!(cand, Some((100, 600)));
    }

    #[test]
    fn an_out_of_order_commit_inside_the_margin_is_never_skipped() {
        // Id 10 is committed after id 11: when 11 was the largest id seen,
        // 10 was invisible. It commits within the margin and is unsent when
        // the mark moves: the mark stops below it.
        let (mark, cand) = step(0, None, 11, 0, 600, &mut pending(&[])).unwrap();
        assert_eq!((mark, cand), (0, Some((11, 0))));
        let (mark, _) = step(mark, cand, 11, 600, 600, &mut pending(&[10])).unwrap();
        assert_eq!(mark, 9);
    }

    #[test]
    fn with_no_margin_the_mark_follows_the_table_at_once() {
        let (mark, cand) = step(0, None, 500, 7, 0, &mut pending(&[])).unwrap();
        assert_eq!((mark, cand), (500, None));
        let (mark, cand) = step(mark, cand, 500, 8, 0, &mut pending(&[])).unwrap();
        assert_eq!((mark, cand), (500, None), "idle: nothing changes");
    }

    #[test]
    fn a_table_that_starts_its_ids_again_resets_the_mark() {
        let (mark, cand) = step(5000, Some((6000, 1)), 20, 10, 600, &mut pending(&[])).unwrap();
        assert_eq!((mark, cand), (0, Some((20, 10))));
    }

    #[test]
    fn a_candidate_from_the_future_is_dropped() {
        let (mark, cand) = step(0, Some((100, 9999)), 100, 10, 600, &mut pending(&[])).unwrap();
        assert_eq!((mark, cand), (0, Some((100, 10))));
    }

    #[test]
    fn marking_conditions_cover_exactly_the_ids_given() {
        assert_eq!(
            id_condition(&[1, 2, 3, 7, 9, 10]),
            "id BETWEEN 1 AND 3 OR id BETWEEN 9 AND 10 OR id IN (7)"
        );
        assert_eq!(id_condition(&[5]), "id IN (5)");
        assert_eq!(id_condition(&[]), "1 = 0");
        assert_eq!(id_condition(&[4, 6, 8]), "id IN (4,6,8)");
    }

    #[test]
    fn lock_names_fit_mysql_s_64_characters() {
        assert_eq!(lock_name("MeshliumDB", 64), "frameflush:MeshliumDB:64");
        let long = "d".repeat(64);
        let n = lock_name(&long, 1 << 62);
        assert!(n.len() <= 64, "{n}");
        assert_ne!(n, lock_name(&"e".repeat(64), 1 << 62));
    }

    #[test]
    fn server_versions_read_as_name_and_number() {
        assert_eq!(
            server_name("10.11.19-MariaDB-0+deb12u1"),
            "MariaDB 10.11.19"
        );
        assert_eq!(server_name("5.5.5-10.3.39-MariaDB"), "MariaDB 10.3.39");
        assert_eq!(server_name("5.1.73-1"), "MySQL 5.1.73");
        assert_eq!(server_name("8.0.36"), "MySQL 8.0.36");
    }

    #[test]
    fn dates_read_like_sqlite_s_timestamps() {
        assert_eq!(
            text(&Value::Date(2026, 11, 24, 9, 5, 7, 0)).as_deref(),
            Some("2026-11-24 09:05:07")
        );
        assert_eq!(
            text(&Value::Date(2026, 1, 2, 3, 4, 5, 120)).as_deref(),
            Some("2026-01-02 03:04:05.000120")
        );
    }
}
