//! The source of readings: the database that holds `sensorParser`, behind
//! one interface, [`Source`], that `run`, `admin` and `retention` use
//! without knowing which database is underneath.
//!
//! A source selects the rows still to send for one destination bit (after
//! an id, oldest first), marks acknowledged rows, records rows that could
//! not become a message (and quarantines them), remembers runs, keeps
//! frameflush's own small key/value state, answers `status` and `purge`
//! (and `check`: what the database is, whether this user can write it),
//! and owns the run lock: one run per database and destination bit, taken
//! the way that database allows (a lock file beside an SQLite file; the
//! server's `GET_LOCK` for MySQL).
//!
//! The seam is a trait object (`Box<dyn Source>`), made in one place,
//! [`open`] / [`init`]. The alternative, an enum with one variant per
//! database, would put a `match` (with a `cfg` on the MySQL arm) in every
//! one of the twenty-odd operations; with the trait, a backend behind a
//! cargo feature is one `cfg` line here, and the callers cannot reach past
//! the interface. The dynamic call costs nothing measurable: it happens once
//! per chunk of rows, not once per row.

#[cfg(feature = "mysql")]
pub mod mysql;
pub mod sqlite;

use serde::Serialize;

use crate::config::{Database, Target};
use crate::error::{Exit, Result};
use crate::row::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// flush: reads and marks; the database must take writes.
    ReadWrite,
    /// status, dry runs: reads only, creates nothing.
    ReadOnly,
}

/// What `status` reports of one destination (sync bit): every row of the
/// table is exactly one of sent, waiting, failing or quarantined, so the
/// four add up to `total`.
#[derive(Debug, Serialize)]
pub struct Destination {
    pub sync_mask: i64,
    /// Rows in the table when counted: sent + waiting + failing +
    /// quarantined.
    pub total: u64,
    /// Rows with this destination's bit set: delivered.
    pub sent: u64,
    /// Rows to send that never failed: the backlog proper.
    pub waiting: u64,
    /// Rows that failed but will be tried again (by the next run).
    pub failing: u64,
    /// Rows that failed `--max-attempts` times and are skipped until
    /// requeued.
    pub quarantined: u64,
    /// Rows still to send: waiting + failing (quarantined not counted).
    pub unsent: u64,
    /// Rows whose `sync` is NULL: sent to no destination yet (counted in
    /// the waiting, failing or quarantined ones).
    pub null_sync: u64,
    pub oldest_unsent: Option<String>,
    /// Seconds since `oldest_unsent`, when it is a date.
    pub oldest_unsent_age_s: Option<i64>,
    /// Messages a run suspects of killing the connection, held to be tried
    /// alone first by the next run: their first row, and why.
    pub suspects: Vec<Suspect>,
    pub last_run: Option<LastRun>,
}

/// A message held as a suspect: its first row id, and why (the failure
/// ledger's last error, or that it failed alone and is not yet charged).
#[derive(Debug, Serialize)]
pub struct Suspect {
    pub row_id: i64,
    pub why: String,
}

/// The state key of a destination's suspects: the first row ids of the
/// messages to try alone first, space-separated.
pub fn suspects_key(mask: i64) -> String {
    format!("suspects:{mask}")
}

/// Rows per statement that reads ahead, unless the source says otherwise
/// ([`Marker::read_piece`]). [`crate::marker`] makes each piece into
/// messages and hands it over before it reads the next, and gives the CPU
/// way ([`std::thread::yield_now`]) between two: a piece is about 0.3 ms of
/// CPU. On a gateway the broker may share two cores with the publishing
/// loop and this thread; a read of 4,000 rows in one go (10 ms of CPU) that
/// landed on the broker's core held it up until the window ran dry (W=100
/// holds 1.4 ms of the bench's mosquitto's work). `scripts/bench`'s
/// mosquitto, W=100, 50,000 rows from SQLite, 9 rounds taking turns with
/// the bare loop: 0.90 of it in pieces of 500 without giving way, 1.00 so
/// (`-V 311`; `-V 5` 0.85 and 0.97).
pub const READ_PIECE: usize = 128;

/// Rows one marking statement carries at most. Between two statements the
/// marking thread gives the CPU way ([`std::thread::yield_now`]): a commit
/// of 2,000 rows is then sixteen slices of about 0.1 ms of work (SQLite's
/// `UPDATE`; on MySQL the server's, about 0.4 ms), not one of 2 ms that a
/// broker on the same core would wait behind (see [`crate::marker`]).
/// Measured beside `scripts/bench` (W=100, 50,000 rows, 9 rounds taking
/// turns with the bare loop), statements of 128 rows against 500: SQLite
/// 0.91 -> 0.98 of the bare loop; InnoDB 0.92 -> 1.04 under `-V 5`, 0.89 ->
/// 0.95 under `-V 311`, though mariadbd spends more per row on small
/// statements (3.4 to 3.6 µs against 2.0 to 2.6): shorter bursts on the
/// broker's core matter more than their sum.
pub const MARK_SLICE: usize = 128;

/// Hands `ids` (in any order, repeats allowed) to `mark` sorted, without
/// repeats, [`MARK_SLICE`] at a time, giving way between two slices;
/// returns the sum of what `mark` returned (the rows it updated).
fn mark_slices<E>(
    ids: &[i64],
    mut mark: impl FnMut(&[i64]) -> std::result::Result<usize, E>,
) -> std::result::Result<usize, E> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut n = 0;
    for (i, slice) in sorted.chunks(MARK_SLICE).enumerate() {
        if i > 0 {
            std::thread::yield_now();
        }
        n += mark(slice)?;
    }
    Ok(n)
}

/// What `check` says of the database beyond its rows: what it is, whether
/// this user can write what a run writes, and whether the unsent-row
/// selection reads only what it must. `None` or empty: not known.
#[derive(Debug, Default)]
pub struct Health {
    /// What the database is, in a few words ("SQLite 3.50.4, journal mode
    /// wal").
    pub kind: Option<String>,
    /// What a run must write that this user cannot, one reason each;
    /// empty: all writable, when `writable` says what was checked.
    pub unwritable: Vec<String>,
    /// The exit status a run gives for what `unwritable` names (74 when
    /// `None`).
    pub unwritable_exit: Option<Exit>,
    /// What was found writable, in a few words.
    pub writable: Option<String>,
    /// How the unsent-row selection finds its rows.
    pub index: Option<Index>,
    /// The high-water mark of this destination bit, for a source that
    /// keeps one instead of an index.
    pub high_water: Option<HighWater>,
}

/// How the unsent-row selection finds its rows.
#[derive(Debug)]
pub enum Index {
    /// Through this index, which is there.
    Present(String),
    /// Through this index, which is missing (a run creates it).
    Missing(String),
    /// Without an index of frameflush's, for this reason (MySQL only).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    NotNeeded(String),
}

/// The high-water mark of one destination bit, and what a full scan below
/// it found now.
#[derive(Debug)]
pub struct HighWater {
    /// `None`: no run has set one yet.
    pub mark: Option<i64>,
    /// Rows still to send (not quarantined) with an id at or below the
    /// mark: committed late; the next full scan sends them.
    pub unsent_below: u64,
    /// Seconds until a run does its next full scan (0: the next run).
    pub full_scan_in_s: i64,
}

/// One row that could not become a message.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub row_id: i64,
    pub attempts: i64,
    pub last_error: String,
    pub first_failed_at: String,
    pub last_attempt_at: String,
    pub quarantined_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LastRun {
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub rows_marked: i64,
}

/// How a run ended, recorded with its last marks ([`Marker::commit_marks`]):
/// on a slow disk a commit of its own would cost the run's end four fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    pub exit: Exit,
    /// Rows the run marked before the transaction that records its end;
    /// the rows that transaction marks are added to them.
    pub marked: u64,
}

/// The marking thread's handle on a source ([`crate::marker`]): a
/// connection of its own to the same database, with the same settings, that
/// marks rows and nothing else. The run lock stays with the [`Source`] that
/// made it.
pub trait Marker: Send {
    /// Marks the rows as [`Source::mark`] does, writes the state entries as
    /// [`Source::set_state`] does and, with `end`, records the run's end as
    /// [`Source::end_run`] does, in one transaction committed when it
    /// returns (all of it or none).
    fn commit_marks(
        &mut self,
        ids: &[i64],
        states: &[(String, String)],
        end: Option<RunEnd>,
    ) -> Result<usize>;

    /// As [`Source::select_unsent`], on this connection: the next chunk
    /// read ahead, beside the publishing loop.
    fn read_ahead(&self, after: i64, limit: usize) -> Result<Vec<Row>>;

    /// Rows per [`Marker::read_ahead`] call when reading ahead:
    /// [`READ_PIECE`], unless a statement costs this database more than a
    /// small piece saves.
    fn read_piece(&self) -> usize {
        READ_PIECE
    }
}

/// One database holding `sensorParser`, opened for one destination bit at
/// a time. Errors are already one line for the operator, with their exit
/// status (see [`crate::error`]).
pub trait Source {
    /// The destination bit this handle works on.
    fn sync_mask(&self) -> i64;

    /// Takes the run lock of this database and destination bit, or fails
    /// at once (75 when another run holds it). Held until the source is
    /// dropped, and released however the process ends.
    fn lock_run(&mut self) -> Result<()>;

    /// Adds what frameflush needs in the database when missing (its own
    /// tables, an index where the database allows one). Writes nothing
    /// when all is there.
    fn ensure_schema(&mut self) -> Result<()>;

    /// Up to `limit` rows still to send with `id > after`, in id order.
    /// Nothing stays open while the rows are published.
    fn select_unsent(&self, after: i64, limit: usize) -> Result<Vec<Row>>;

    /// Sets this destination's bit on the given rows, touching no other bit
    /// and no other row. Returns how many rows were updated (a row deleted
    /// meanwhile is not).
    fn mark(&mut self, ids: &[i64]) -> Result<usize>;

    /// A second connection to this database for the marking thread. Only
    /// a run whose broker accepted the connection opens it.
    fn marker(&self) -> Result<Box<dyn Marker>>;

    /// A handle of its own for reading the next rows ahead beside the
    /// marking commits, when a read need not wait for a commit and a
    /// thread of its own pays (SQLite in WAL mode); `None` when a read
    /// would wait (SQLite's rollback journal: a commit holds the file's
    /// exclusive lock through its fsyncs) or when the database server's
    /// second busy thread costs the broker more than the wait (MySQL), and
    /// the marking thread reads between its commits.
    fn reader(&self) -> Result<Option<Box<dyn Marker>>> {
        Ok(None)
    }

    /// Counts one more failed attempt for each row; a row that reaches
    /// `max_attempts` is quarantined. Returns how many rows this quarantined.
    fn record_failures(&mut self, failed: &[(i64, String)], max_attempts: u32) -> Result<u64>;

    /// The failure records of this destination, oldest row first.
    fn failures(&self) -> Result<Vec<Failure>>;

    /// Forgets the failures of the given rows (all of this destination's
    /// with `None`). Returns how many records were removed.
    fn requeue(&mut self, ids: Option<&[i64]>) -> Result<usize>;

    /// Records that a run with something to send started: also the proof,
    /// before anything is published, that the database takes writes.
    fn begin_run(&mut self) -> Result<()>;

    /// Records the outcome of the run `begin_run` started, and forgets the
    /// failures of rows that were delivered or deleted since.
    fn end_run(&mut self, exit: Exit, marked: u64) -> Result<()>;

    /// The last run recorded for this destination.
    fn last_run(&self) -> Result<Option<LastRun>>;

    /// Rows still to send for this destination now: waiting and failing
    /// (quarantined rows not counted). A row whose `sync` is NULL is unsent.
    fn backlog(&self) -> Result<u64>;

    /// Points this handle at another destination bit (`status` over
    /// several).
    fn for_mask(&mut self, mask: i64) -> Result<()>;

    /// The destination bits this database has seen.
    fn known_masks(&self) -> Result<Vec<i64>>;

    /// Rows in the table.
    fn total(&self) -> Result<u64>;

    /// The oldest timestamp among the rows still to send, and its age in
    /// seconds (when it reads as a date).
    fn oldest_unsent(&self) -> Result<(Option<String>, Option<i64>)>;

    /// Rows of this destination quarantined, and failing but to be retried:
    /// rows that are in the table with the bit clear (a record of a row
    /// deleted or delivered since is not counted).
    fn failure_counts(&self) -> Result<(u64, u64)>;

    /// Deletes up to `limit` rows with `id > after` whose `require` bits are
    /// all set and whose timestamp is before `before` (any time when
    /// `None`), oldest id first, in one short statement or transaction.
    /// Returns how many were deleted and the last id looked at (`None`: no
    /// more rows).
    fn purge_batch(
        &mut self,
        require: i64,
        before: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<(usize, Option<i64>)>;

    /// Rows in the table, and rows with any of the `require` bits unset.
    fn row_counts(&self, require: i64) -> Result<(u64, u64)>;

    /// The timestamp `seconds` ago, in the table's text form
    /// (`YYYY-MM-DD HH:MM:SS`), by the database's clock.
    fn cutoff(&self, seconds: u64) -> Result<String>;

    /// Gives space freed by `purge` back to the file system where the
    /// database can (`full_vacuum`: also when that locks out the producer
    /// for a while). Returns the pages freed.
    fn reclaim(&mut self, full_vacuum: bool) -> Result<u64>;

    /// The query plan of the unsent-row selection, for tests and `-d`.
    fn selection_plan(&self) -> Result<String>;

    /// A value of frameflush's own state (the high-water mark, the MQTT
    /// protocol a broker accepted, …), `None` when never set. Keys are
    /// chosen by the caller; one that depends on the destination names it.
    fn state(&self, key: &str) -> Result<Option<String>>;

    /// Sets a value of frameflush's own state, creating its table when
    /// missing.
    fn set_state(&mut self, key: &str, value: &str) -> Result<()>;

    /// What `check` reports of the database itself: its kind, whether
    /// this user can write it (without writing anything: a probe file in
    /// the directory, statements prepared and never executed), the
    /// selection's index, and the high-water mark where there is one. The
    /// default knows nothing, and `check` then says "not checked" rather
    /// than ok.
    fn health(&self) -> Result<Health> {
        Ok(Health::default())
    }

    /// Notes for `-v` on what opening the database found (a table whose
    /// ids started again, an index replaced), taken once.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Rows whose `sync` is NULL (all of them unsent for every mask).
    fn null_sync(&self) -> Result<u64>;

    /// The suspects held for this destination, with why.
    fn suspects(&self) -> Result<Vec<Suspect>> {
        let Some(held) = self.state(&suspects_key(self.sync_mask()))? else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = held.split(' ').filter_map(|id| id.parse().ok()).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let failures = self.failures()?;
        Ok(ids
            .into_iter()
            .map(|row_id| {
                let why = match failures.iter().find(|f| f.row_id == row_id) {
                    Some(f) => format!("{} attempt(s), last: {}", f.attempts, f.last_error),
                    None => "failed alone, not yet charged".to_string(),
                };
                Suspect { row_id, why }
            })
            .collect())
    }

    /// What `status` says of this destination. `total` is counted first;
    /// the rest from the rows still to send and the failure ledger (which
    /// counts only rows that are there and still unsent), so the four
    /// numbers add up to it.
    fn destination(&self) -> Result<Destination> {
        let total = self.total()?;
        let unsent = self.backlog()?;
        let (oldest_unsent, oldest_unsent_age_s) = self.oldest_unsent()?;
        let (quarantined, failing) = self.failure_counts()?;
        Ok(Destination {
            sync_mask: self.sync_mask(),
            total,
            sent: total.saturating_sub(unsent + quarantined),
            waiting: unsent.saturating_sub(failing),
            failing,
            quarantined,
            unsent,
            null_sync: self.null_sync()?,
            oldest_unsent,
            oldest_unsent_age_s,
            suspects: self.suspects()?,
            last_run: self.last_run()?,
        })
    }
}

/// The columns frameflush reads or writes; a table without one of them is
/// refused before anything is sent.
const REQUIRED_COLUMNS: [&str; 9] = [
    "id",
    "id_wasp",
    "id_secret",
    "frame_type",
    "frame_number",
    "sensor",
    "value",
    "timestamp",
    "sync",
];

/// Refuses (66) a `sensorParser` whose `columns` (lower case) lack one that
/// frameflush needs; `place` names the database for the line.
fn check_columns(columns: &[String], place: &str) -> Result<()> {
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .iter()
        .copied()
        .filter(|c| !columns.iter().any(|have| have == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::error::Error::new(
        Exit::NoInput,
        format!(
            "table sensorParser in {place} lacks the column(s) {}",
            missing.join(", ")
        ),
    ))
}

/// Opens the database the target names and checks its table: a missing
/// database or table is 66, one that cannot be used (or, in ReadWrite,
/// written) is 74.
pub fn open(target: &Target, mode: Mode) -> Result<Box<dyn Source>> {
    Ok(match &target.db {
        Database::Sqlite(file) => Box::new(sqlite::Sqlite::open(file, target, mode)?),
        #[cfg(feature = "mysql")]
        Database::Mysql(db) => Box::new(mysql::Mysql::open(db, target, mode)?),
        #[cfg(not(feature = "mysql"))]
        Database::Mysql(_) => return Err(no_mysql()),
    })
}

/// `frameflush init`: creates the database where the source allows it, the
/// table when missing (never altering an existing one) and frameflush's own
/// tables.
pub fn init(target: &Target) -> Result<Box<dyn Source>> {
    Ok(match &target.db {
        Database::Sqlite(file) => Box::new(sqlite::Sqlite::init(file, target)?),
        #[cfg(feature = "mysql")]
        Database::Mysql(db) => Box::new(mysql::Mysql::init(db, target)?),
        #[cfg(not(feature = "mysql"))]
        Database::Mysql(_) => return Err(no_mysql()),
    })
}

/// Configuration refuses a mysql:// database in a build without the
/// feature; this is the same refusal, should one get this far.
#[cfg(not(feature = "mysql"))]
fn no_mysql() -> crate::error::Error {
    crate::error::Error::config(
        "this frameflush was built without MySQL support: build it with `cargo build --release --features mysql`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_go_sorted_and_distinct_in_slices_of_at_most_mark_slice_ids() {
        // Three slices' worth, out of order and with repeats (a PUBACK's
        // row handed over twice after a reconnect).
        let mut ids: Vec<i64> = (1..=(2 * MARK_SLICE as i64 + 7)).rev().collect();
        ids.extend([5, 5, MARK_SLICE as i64]);
        let mut seen: Vec<Vec<i64>> = Vec::new();
        let n = mark_slices(&ids, |slice| {
            seen.push(slice.to_vec());
            Ok::<_, ()>(slice.len() - 1)
        });
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|s| s.len() <= MARK_SLICE));
        let all: Vec<i64> = seen.concat();
        assert_eq!(all, (1..=(2 * MARK_SLICE as i64 + 7)).collect::<Vec<_>>());
        assert_eq!(n, Ok(all.len() - 3), "the sum of what each slice marked");
    }

    #[test]
    fn a_slice_that_fails_stops_the_marks_there() {
        let ids: Vec<i64> = (1..=(3 * MARK_SLICE as i64)).collect();
        let mut calls = 0;
        let n = mark_slices(&ids, |_| {
            calls += 1;
            if calls == 2 {
                Err("disk I/O error")
            } else {
                Ok(MARK_SLICE)
            }
        });
        assert_eq!(n, Err("disk I/O error"));
        assert_eq!(calls, 2, "no slice is marked after the one that failed");
        assert_eq!(
            mark_slices(&[], |_| Ok::<_, ()>(1)),
            Ok(0),
            "no ids, no statement"
        );
    }
}
