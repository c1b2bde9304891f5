//! Marking off the publishing path: a thread of its own commits the marks of
//! acknowledged rows, on a connection of its own to the source
//! ([`crate::source::Marker`]), while the publishing loop goes on reading
//! PUBACKs and refilling the window. The next unsent rows are read ahead
//! beside it.
//!
//! The hand-off is a short list under a mutex: the drain appends the ids the
//! broker acknowledged ([`Marking::hand`]); the thread takes everything
//! there is and commits it in one transaction (group commit: the longer a
//! commit takes, the more rows the next one carries), as soon as
//! [`COMMIT_ROWS`] rows are waiting (unless the end of the run is nearer
//! than a commit: they then wait for the run's last commit, which would
//! otherwise follow one still under way) or the oldest has waited
//! [`MARK_INTERVAL`], or when the drain asks for everything to be committed
//! ([`Marking::flush`]: before a reconnect selects rows again, and at the
//! end of the run). The drain never waits for a commit but there. What a
//! connection learned about the broker ([`Marking::hand_states`]) goes in
//! the same transaction as the next marks, and the run's end
//! ([`Marking::finish`]) in that of the last: on a slow disk every commit
//! costs several fsyncs.
//!
//! Reading ahead ([`Marking::read_ahead`], [`Marking::take_read`]) is done
//! by a third connection on a thread of its own when the source offers one
//! ([`crate::source::Source::reader`]: SQLite in WAL mode, where a read
//! does not wait for a commit), else by the marking thread between its
//! commits, reads first (SQLite's rollback journal, where a commit holds
//! the file's lock through its fsyncs; MySQL, where a second busy server
//! thread would cost the broker's cores more than the wait). With
//! `--group row` the thread that read the rows also makes their messages
//! ([`Renderer`]: topic, payload, `--max-payload`, or why a row cannot be
//! one), so the publishing loop only sends them (callgrind, 20,000 rows at
//! W=100: its instructions per row 15,400 -> 10,800, the bare loop's 8,600).
//! A read is made a piece at a time ([`Marker::read_piece`] rows), each
//! piece handed over as soon as it is made, into a queue sized once for
//! the most ever held (peak RSS, 1,000,000 rows: 12.6 MiB when all 4,000
//! rows of a read were rendered before any was handed over, 10.6 MiB so).
//!
//! These threads work in slices and give the CPU way between two (a piece
//! read, a marking statement: [`crate::source::MARK_SLICE`]): the
//! publishing loop and a broker on the same cores wait for no more than a
//! slice of theirs (see [`crate::source::READ_PIECE`]).
//!
//! The rows acknowledged and not yet committed are bounded:
//! [`Marking::unmarked`] counts them, and the drain publishes nothing while
//! they reach [`MAX_UNMARKED`]. A run killed at any moment therefore sends
//! again at most the window plus that many rows.
//!
//! Rows count as marked only once their transaction committed. A marking
//! error stops the thread; the drain gets it at its next hand-off and the
//! run ends with it, as when marks were made on the publishing loop. A
//! reading error only ends the reading ahead: the drain reads that chunk
//! itself and meets the error there if it stays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Exit, Result};
use crate::row::Row;
use crate::source::{Marker, RunEnd};
use crate::template::Renderer;

/// Acknowledged rows are committed as marked at least this often, however
/// slow the link.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

/// Rows acknowledged by the broker and not yet committed as marked, at most:
/// publishing pauses while this many wait. With the window, the most a
/// killed run sends again (README, "Duplicates are bounded"). A commit on a
/// slow disk (four fsyncs of 5 ms in a rollback journal) carries what came
/// while the one before it was under way: at 80,000 rows/s about 2,000, and
/// as many again arrive while it commits; the cap leaves room for twice that.
pub const MAX_UNMARKED: usize = 8000;

/// A commit starts once this many acknowledged rows wait (or the oldest has
/// waited [`MARK_INTERVAL`]). Not fewer: every commit costs a journal of its
/// own and its fsyncs whatever it carries, and commits of 200 rows cost
/// three times the CPU per row of commits of 2,000 (`UPDATE` in one
/// transaction each, rollback journal, this machine: 3.3 against 0.9 µs per
/// row), CPU the publishing loop and a broker on the same machine need.
pub const COMMIT_ROWS: usize = 2000;

/// Rows read ahead per SELECT of the marking thread, which reads before it
/// commits: a commit in progress delays the next read (in a rollback
/// journal a read on another connection would wait for the commit's lock
/// all the same), so a read is asked for while half of one is still held,
/// and what is held must outlast a slow commit: 2,000 rows are 25 ms at
/// 80,000 rows/s, a commit of four 5 ms fsyncs about 22 ms.
const READ_AHEAD: usize = 4000;
/// Chunks (`--batch`) of at most this many rows are read ahead.
pub const READ_AHEAD_CHUNK: usize = READ_AHEAD / 2;
/// Rows held read ahead, at most: a read is asked for while fewer than half
/// a read are held. The queue is made this large at once (touched only as
/// used), not grown by doubling past it.
const AHEAD_ROOM: usize = READ_AHEAD + READ_AHEAD / 2;

#[derive(Default)]
struct State {
    /// Handed over, not yet being committed.
    pending: Vec<i64>,
    /// State entries handed over ([`Marking::hand_states`]), committed with
    /// the next marks.
    states: Vec<(String, String)>,
    /// When the oldest of `pending` was handed over.
    since: Option<Instant>,
    /// Rows in the transaction under way.
    committing: usize,
    /// Rows handed over while the last commit was under way: what the next
    /// commit would carry at this pace.
    arrived: usize,
    /// What the drain held at its last hand-off ([`Marking::hand`]): rows
    /// queued or in flight, and whether the source had no more for it.
    held: usize,
    source_done: bool,
    /// Rows committed as marked (as the source counted them).
    marked: u64,
    /// The first marking error; the thread stops at it.
    error: Option<Error>,
    /// Commit what is pending now, without waiting for [`COMMIT_ROWS`].
    flush: bool,
    /// No more rows come: commit what is left and end.
    closed: bool,
    /// The run's end, to record in the last commit ([`Marking::finish`]),
    /// and whether it was.
    end: Option<RunEnd>,
    ended: bool,
    /// The committing thread has ended (an error, the end, or a panic).
    stopped: bool,
    /// The reading thread has ended.
    reader_stopped: bool,
    /// Rows read ahead: the next unsent rows after `ahead_after`, in id
    /// order (`None`: nothing read ahead).
    ahead_after: Option<i64>,
    ahead: VecDeque<Row>,
    /// The last read came short: no row after those in `ahead`.
    ahead_complete: bool,
    /// A read to make: after this id, of [`READ_AHEAD`] rows, for this
    /// generation (a reset drops what an older one reads).
    read_queued: Option<i64>,
    reading: bool,
    generation: u64,
    read_error: Option<Error>,
}

impl State {
    /// Forgets what was read ahead (the drain goes on elsewhere).
    fn reset_ahead(&mut self) {
        self.ahead_after = None;
        self.ahead.clear();
        self.ahead_complete = false;
        self.read_queued = None;
        self.read_error = None;
        self.generation += 1;
    }

    /// The end of the run is nearer than one commit: the rows still to come
    /// are no more than came during the last commit, and all of them fit
    /// under [`MAX_UNMARKED`] with those waiting. A commit started now
    /// would still be under way when the drain ends, and its last commit
    /// would follow it: the rows wait for that one instead, and the tail of
    /// the run pays one commit, not up to two.
    fn end_in_sight(&self) -> bool {
        self.rows_left().is_some_and(|left| {
            left <= self.arrived && self.pending.len() + self.committing + left < MAX_UNMARKED
        })
    }

    /// The rows still to hand over, when the end of the source is known:
    /// what the drain holds, and what is read ahead once the last read came
    /// short.
    fn rows_left(&self) -> Option<usize> {
        if self.source_done {
            Some(self.held)
        } else if self.ahead_complete && self.ahead_after.is_some() {
            Some(self.held + self.ahead.len())
        } else {
            None
        }
    }

    /// Asks for more rows after those held, unless `need` (and half a
    /// read) are held, or more are coming.
    fn refill_ahead(&mut self, work: &Condvar, need: usize) {
        let Some(after) = self.ahead_after else {
            return;
        };
        if self.ahead_complete
            || self.reading
            || self.read_queued.is_some()
            || self.read_error.is_some()
            || self.ahead.len() >= need.max(READ_AHEAD / 2)
        {
            return;
        }
        self.read_queued = Some(self.ahead.back().map_or(after, |r| r.id));
        work.notify_one();
    }
}

struct Shared {
    state: Mutex<State>,
    /// The committing thread waits on it for rows (or a flush, or the end),
    /// and for reads when it makes them.
    work: Condvar,
    /// The reading thread, when there is one, waits on it for a read.
    read_work: Condvar,
    /// Reads are made by a thread of their own ([`Marking::start`]'s
    /// `reader`), not between commits.
    separate_reader: bool,
    /// The drain waits on it for commits and reads.
    done: Condvar,
    /// Handed over and not yet committed: `pending` plus `committing`, read
    /// by the drain without the lock before each PUBLISH.
    unmarked: AtomicUsize,
    /// Makes the messages of the rows read ahead, on the thread that read
    /// them (`--group row`): the publishing loop then only sends them.
    renderer: Option<Renderer>,
}

impl Shared {
    /// Where a read to make is announced.
    fn reads(&self) -> &Condvar {
        if self.separate_reader {
            &self.read_work
        } else {
            &self.work
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the marking thread poisons the lock; what it guards
        // (counts and a list of ids) is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Set when the thread ends however it ends (a panic too): nobody waits
/// for it then.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.stopped = true;
        if st.error.is_none() && !st.closed {
            st.error = Some(Error::new(
                Exit::IoErr,
                "the marking thread stopped unexpectedly; the rows it had not marked stay unsent",
            ));
        }
        self.0.done.notify_all();
    }
}

/// Set when the reading thread ends however it ends: the drain then reads
/// for itself.
struct ReaderStopped<'a>(&'a Shared);

impl Drop for ReaderStopped<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.reader_stopped = true;
        st.reading = false;
        self.0.done.notify_all();
    }
}

/// The marking thread (and the reading thread, if any) and the hand-off,
/// for one run.
pub struct Marking {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    batch: usize,
}

impl Marking {
    /// Starts the thread that commits marks through `marker`, `batch` rows
    /// ([`COMMIT_ROWS`] in a run)
    /// (or what waited [`MARK_INTERVAL`]) at least per commit; `verbose`:
    /// one line per commit.
    pub fn start(
        marker: Box<dyn Marker>,
        reader: Option<Box<dyn Marker>>,
        renderer: Option<Renderer>,
        batch: usize,
        verbose: bool,
    ) -> Result<Marking> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ahead: VecDeque::with_capacity(AHEAD_ROOM),
                ..State::default()
            }),
            work: Condvar::new(),
            read_work: Condvar::new(),
            separate_reader: reader.is_some(),
            done: Condvar::new(),
            unmarked: AtomicUsize::new(0),
            renderer,
        });
        let batch = batch.max(1);
        let spawn_failed = |e: std::io::Error| {
            Error::new(
                Exit::TempFail,
                format!("cannot start the marking thread: {e}"),
            )
        };
        let theirs = Arc::clone(&shared);
        let committing = std::thread::Builder::new()
            .name("frameflush-mark".into())
            .spawn(move || commit_loop(&theirs, marker, batch, verbose))
            .map_err(spawn_failed)?;
        let mut marking = Marking {
            shared,
            threads: vec![committing],
            batch,
        };
        if let Some(reader) = reader {
            let theirs = Arc::clone(&marking.shared);
            // Dropped on failure: the committing thread ends as at the end
            // of a run.
            let reading = std::thread::Builder::new()
                .name("frameflush-read".into())
                .spawn(move || read_loop(&theirs, reader))
                .map_err(spawn_failed)?;
            marking.threads.push(reading);
        }
        Ok(marking)
    }

    /// Hands acknowledged ids over (emptying `ids`), with what the drain
    /// still holds: `held` rows queued or in flight (messages, an estimate
    /// under `--group`), and `source_done`: the source has no more for this
    /// run. From these and the rows read ahead, the thread sees the end of
    /// the run coming ([`State::end_in_sight`]). Fails with the marking
    /// error, if one came.
    pub fn hand(&self, ids: &mut Vec<i64>, held: usize, source_done: bool) -> Result<()> {
        let mut st = self.shared.lock();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        st.held = held;
        st.source_done = source_done;
        if ids.is_empty() {
            return Ok(());
        }
        let before = st.pending.len();
        st.pending.append(ids);
        st.since.get_or_insert_with(Instant::now);
        self.shared
            .unmarked
            .fetch_add(st.pending.len() - before, Ordering::Release);
        // Wake the thread only when it has something to do: the first rows
        // start its interval, a full batch is committed; not once per row.
        if before == 0 || (before < self.batch && st.pending.len() >= self.batch) {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Starts reading the unsent rows after `after` ahead, on the thread's
    /// connection ([`READ_AHEAD`] at a time; reads go before commits: the
    /// window waits for them), for [`Marking::take_read`]. In a rollback
    /// journal, reads and commits on two connections would wait for each
    /// other's locks. Nothing new when rows after `after` are already held;
    /// nothing for chunks of more than [`READ_AHEAD_CHUNK`] rows (`limit`):
    /// their queue lasts long enough, and rows held twice over would cost
    /// memory (peak RSS).
    pub fn read_ahead(&self, after: i64, limit: usize) {
        if limit > READ_AHEAD_CHUNK {
            return;
        }
        let mut st = self.shared.lock();
        if st.ahead_after != Some(after) {
            st.reset_ahead();
            st.ahead_after = Some(after);
        }
        st.refill_ahead(self.shared.reads(), 0);
    }

    /// The next `limit` unsent rows after `after` (fewer at the table's
    /// end), from those read ahead, waiting for them if they are being
    /// read; `None` when what is held starts elsewhere, when reading ahead
    /// failed (a damaged page further on: the caller's own read of this
    /// chunk tells whether this chunk can be had, so a run stops exactly
    /// where it did without reading ahead) or the thread stopped: the
    /// caller reads them itself.
    pub fn take_read(&self, after: i64, limit: usize) -> Option<Vec<Row>> {
        let mut st = self.shared.lock();
        if st.ahead_after != Some(after) || limit > READ_AHEAD_CHUNK {
            st.reset_ahead();
            return None;
        }
        loop {
            if st.ahead.len() >= limit || st.ahead_complete {
                let n = limit.min(st.ahead.len());
                let rows: Vec<Row> = st.ahead.drain(..n).collect();
                if let Some(last) = rows.last() {
                    st.ahead_after = Some(last.id);
                }
                st.refill_ahead(self.shared.reads(), limit);
                return Some(rows);
            }
            if st.read_error.is_some() || st.error.is_some() || st.stopped || st.reader_stopped {
                st.reset_ahead();
                return None;
            }
            // More than is held: a chunk larger than a read (--batch).
            st.refill_ahead(self.shared.reads(), limit);
            st = match self.shared.done.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Rows [`Marking::take_read`] gave that the drain leaves for the next
    /// chunk (a frame a chunk cut: `--group frame`): they are the first
    /// given next, after `after`.
    pub fn put_back(&self, after: i64, rows: Vec<Row>) {
        if rows.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        for row in rows.into_iter().rev() {
            st.ahead.push_front(row);
        }
        st.ahead_after = Some(after);
    }

    /// Hands over entries of frameflush's state (what a connection
    /// learned about the broker): they are written in the transaction of
    /// the next marks, not in one of their own (on a slow disk every commit
    /// costs several fsyncs). Fails with the marking error, if one came.
    pub fn hand_states(&self, states: &mut Vec<(String, String)>) -> Result<()> {
        let mut st = self.shared.lock();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        if states.is_empty() {
            return Ok(());
        }
        st.states.append(states);
        if st.since.is_none() {
            st.since = Some(Instant::now());
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Rows handed over and not yet committed.
    pub fn unmarked(&self) -> usize {
        self.shared.unmarked.load(Ordering::Acquire)
    }

    /// Rows committed as marked so far.
    pub fn marked(&self) -> u64 {
        self.shared.lock().marked
    }

    /// Waits, at most `limit`, until fewer than `cap` rows are unmarked (or
    /// the marking failed).
    pub fn wait_below(&self, cap: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            let now = Instant::now();
            if self.unmarked() < cap || now >= deadline {
                return Ok(());
            }
            // Not waiting for a batch to fill up: the drain is waiting.
            st.flush = true;
            self.shared.work.notify_one();
            st = match self.shared.done.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Commits everything handed over and waits for it. Returns the rows
    /// committed as marked so far, or the marking error.
    pub fn flush(&self) -> Result<u64> {
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.pending.is_empty() && st.states.is_empty() && st.committing == 0 {
                return Ok(st.marked);
            }
            if st.stopped {
                return Ok(st.marked);
            }
            st.flush = true;
            self.shared.work.notify_one();
            st = match self.shared.done.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Commits everything handed over with the run's end (`exit`, and the
    /// rows marked before this drain, `marked_before`) in the same
    /// transaction, and ends the threads. Returns the rows committed as
    /// marked, and `Ok` once the end was recorded with them; after a
    /// marking error the caller records the end, with the error's status.
    pub fn finish(mut self, exit: Exit, marked_before: u64) -> (u64, Result<()>) {
        self.close(Some(RunEnd {
            exit,
            marked: marked_before,
        }));
        let st = self.shared.lock();
        let result = match &st.error {
            Some(e) => Err(e.clone()),
            // Closed, so no error was set for it: the thread ended without
            // its last commit (a panic).
            None if !st.ended => Err(Error::new(
                Exit::IoErr,
                "the marking thread stopped unexpectedly; the rows it had not marked stay unsent",
            )),
            None => Ok(()),
        };
        (st.marked, result)
    }

    /// No more rows come: what was handed over is committed (with `end`
    /// in the last transaction), then the threads end.
    fn close(&mut self, end: Option<RunEnd>) {
        {
            let mut st = self.shared.lock();
            if end.is_some() {
                st.end = end;
            }
            st.closed = true;
            self.shared.work.notify_one();
            self.shared.read_work.notify_one();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Marking {
    /// What was handed over is committed, then the threads end.
    fn drop(&mut self) {
        self.close(None);
    }
}

/// The reading thread, when reads need not wait for commits: makes the
/// reads the drain asks for, one at a time, until closed.
fn read_loop(shared: &Shared, reader: Box<dyn Marker>) {
    let _stopped = ReaderStopped(shared);
    let mut st = shared.lock();
    while !st.closed {
        let Some(after) = st.read_queued.take() else {
            st = match shared.read_work.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            continue;
        };
        st = read_into(shared, st, &*reader, after);
    }
}

/// Makes one read of up to [`READ_AHEAD`] rows (the lock released
/// meanwhile) and keeps its rows, unless the drain moved elsewhere since.
/// It is made [`Marker::read_piece`] rows at a time, each piece made into
/// messages (with a renderer) and handed over before the next is read, the
/// CPU given way between two: the first rows are there sooner, no more
/// than a piece is held outside the queue, and a broker on the same core
/// waits for a piece at most.
fn read_into<'a>(
    shared: &'a Shared,
    mut st: MutexGuard<'a, State>,
    reader: &dyn Marker,
    after: i64,
) -> MutexGuard<'a, State> {
    let generation = st.generation;
    st.reading = true;
    drop(st);
    let (mut from, mut left) = (after, READ_AHEAD);
    let piece = reader.read_piece();
    loop {
        if left < READ_AHEAD {
            std::thread::yield_now();
        }
        let want = left.min(piece);
        let read = reader.read_ahead(from, want).map(|mut rows| {
            if let Some(renderer) = &shared.renderer {
                renderer.make(&mut rows);
            }
            rows
        });
        let mut st = shared.lock();
        let current = st.generation == generation;
        let done = match read {
            Ok(rows) if current => {
                let short = rows.len() < want;
                left -= rows.len();
                if let Some(last) = rows.last() {
                    from = last.id;
                }
                st.ahead.extend(rows);
                st.ahead_complete = short;
                short || left == 0
            }
            Err(e) if current => {
                st.read_error = Some(e);
                true
            }
            // The drain moved elsewhere: what was read is not wanted.
            Ok(_) | Err(_) => true,
        };
        if done {
            st.reading = false;
        }
        shared.done.notify_all();
        if done {
            return st;
        }
    }
}

/// The marking thread: waits for rows, commits them, until closed or the
/// first error.
fn commit_loop(shared: &Shared, mut marker: Box<dyn Marker>, batch: usize, verbose: bool) {
    let _stopped = Stopped(shared);
    let mut ids: Vec<i64> = Vec::new();
    let mut st = shared.lock();
    loop {
        if st.error.is_some() {
            break;
        }
        // Reads first: the window waits for them.
        if !shared.separate_reader
            && let Some(after) = st.read_queued.take()
        {
            st = read_into(shared, st, &*marker, after);
            continue;
        }
        let due = st.flush
            || st.closed
            || (st.pending.len() >= batch && !st.end_in_sight())
            || st.since.is_some_and(|t| t.elapsed() >= MARK_INTERVAL);
        // Once closed nothing more is handed over: this commit is the last,
        // and records the run's end.
        let end = if st.closed { st.end.take() } else { None };
        if (!st.pending.is_empty() || !st.states.is_empty() || end.is_some()) && due {
            std::mem::swap(&mut st.pending, &mut ids);
            let states = std::mem::take(&mut st.states);
            st.since = None;
            st.committing = ids.len();
            let end = end.map(|e| RunEnd {
                marked: e.marked + st.marked,
                ..e
            });
            drop(st);
            let result = marker.commit_marks(&ids, &states, end);
            st = shared.lock();
            st.committing = 0;
            st.arrived = st.pending.len();
            shared.unmarked.fetch_sub(ids.len(), Ordering::Release);
            match result {
                Ok(n) => {
                    st.ended |= end.is_some();
                    st.marked += n as u64;
                    if verbose {
                        crate::sys::say!(
                            "frameflush: marked {} row(s) sent ({} so far)",
                            ids.len(),
                            st.marked
                        );
                    }
                }
                Err(e) => st.error = Some(e),
            }
            ids.clear();
            shared.done.notify_all();
            continue;
        }
        if st.pending.is_empty() && st.states.is_empty() {
            st.flush = false;
            shared.done.notify_all();
            if st.closed {
                break;
            }
        }
        st = match st.since {
            Some(t) => {
                let left = (t + MARK_INTERVAL).saturating_duration_since(Instant::now());
                match shared.work.wait_timeout(st, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                }
            }
            None => match shared.work.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            },
        };
    }
    shared.done.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commits a fake made, each a list of ids.
    type Commits = Arc<Mutex<Vec<Vec<i64>>>>;
    /// The run ends a fake recorded: in which commit (an index into its
    /// [`Commits`]), and what.
    type Ends = Arc<Mutex<Vec<(usize, RunEnd)>>>;

    /// Marks into a shared list, each commit taking `delay`, failing from
    /// the `fail_at`-th commit on.
    struct Fake {
        marked: Commits,
        states: Arc<Mutex<Vec<(String, String)>>>,
        ends: Ends,
        delay: Duration,
        fail_at: Option<usize>,
        /// The last id reads find: a read past it comes short.
        rows_end: i64,
    }

    impl Marker for Fake {
        fn commit_marks(
            &mut self,
            ids: &[i64],
            states: &[(String, String)],
            end: Option<RunEnd>,
        ) -> Result<usize> {
            std::thread::sleep(self.delay);
            self.states.lock().unwrap().extend(states.iter().cloned());
            let mut m = self.marked.lock().unwrap();
            if self.fail_at.is_some_and(|f| m.len() >= f) {
                return Err(Error::new(Exit::IoErr, "disk full"));
            }
            if let Some(end) = end {
                let marked = end.marked + ids.len() as u64;
                self.ends
                    .lock()
                    .unwrap()
                    .push((m.len(), RunEnd { marked, ..end }));
            }
            m.push(ids.to_vec());
            Ok(ids.len())
        }

        fn read_ahead(&self, after: i64, limit: usize) -> Result<Vec<Row>> {
            Ok((after + 1..=(after + limit as i64).min(self.rows_end))
                .map(|id| Row::new(id, Default::default()))
                .collect())
        }
    }

    fn fake(delay_ms: u64, fail_at: Option<usize>) -> (Box<dyn Marker>, Commits) {
        fake_ending(delay_ms, fail_at, i64::MAX)
    }

    /// A fake whose table ends at id `rows_end`.
    fn fake_ending(
        delay_ms: u64,
        fail_at: Option<usize>,
        rows_end: i64,
    ) -> (Box<dyn Marker>, Commits) {
        let marked = Arc::new(Mutex::new(Vec::new()));
        let f = Fake {
            marked: Arc::clone(&marked),
            states: Arc::default(),
            ends: Arc::default(),
            delay: Duration::from_millis(delay_ms),
            fail_at,
            rows_end,
        };
        (Box::new(f), marked)
    }

    fn ids(range: std::ops::RangeInclusive<i64>) -> Vec<i64> {
        range.collect()
    }

    fn sizes(commits: &Commits) -> Vec<usize> {
        commits.lock().unwrap().iter().map(Vec::len).collect()
    }

    /// Hands 1..=10 over (batch 10: a commit of 100 ms starts), then,
    /// while it is under way, 11..=22 with `held` and `source_done`, and
    /// returns the commits made 300 ms later (the first ended at 100 ms, a
    /// second started then would have ended at 200 ms).
    fn commits_after_a_full_batch_came_during_a_commit(
        marking: &Marking,
        commits: &Commits,
        held: usize,
        source_done: bool,
    ) -> Vec<usize> {
        marking.hand(&mut ids(1..=10), 0, false).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        marking.hand(&mut ids(11..=22), held, source_done).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        sizes(commits)
    }

    #[test]
    fn when_the_end_of_the_run_is_nearer_than_a_commit_the_last_rows_wait_for_its_last_commit() {
        let (m, commits) = fake(100, None);
        let marking = Marking::start(m, None, None, 10, false).unwrap();
        // 12 rows came during a commit; the source has no more and 5 rows
        // are queued or in flight: a commit now would outlast the drain.
        let made = commits_after_a_full_batch_came_during_a_commit(&marking, &commits, 5, true);
        assert_eq!(made, vec![10]);
        marking.hand(&mut ids(23..=27), 0, true).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sizes(&commits), vec![10]);
        let (marked, ended) = marking.finish(Exit::Ok, 0);
        ended.unwrap();
        assert_eq!(marked, 27);
        assert_eq!(*commits.lock().unwrap(), vec![ids(1..=10), ids(11..=27)]);
    }

    #[test]
    fn a_full_batch_is_committed_at_once_while_more_rows_may_come_or_more_are_left_than_a_commit_carries()
     {
        for (held, source_done) in [(5, false), (13, true)] {
            let (m, commits) = fake(100, None);
            let marking = Marking::start(m, None, None, 10, false).unwrap();
            let made = commits_after_a_full_batch_came_during_a_commit(
                &marking,
                &commits,
                held,
                source_done,
            );
            assert_eq!(made, vec![10, 12], "held {held}, source done {source_done}");
            assert_eq!(marking.flush().unwrap(), 22);
        }
    }

    #[test]
    fn the_last_rows_never_wait_for_the_end_past_the_cap_on_unmarked_rows() {
        let (m, commits) = fake(100, None);
        let marking = Marking::start(m, None, None, 10, false).unwrap();
        marking.hand(&mut ids(1..=10), 0, false).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        // As many came during the commit as are left, but together they
        // would reach MAX_UNMARKED.
        let came = MAX_UNMARKED as i64 / 2;
        marking
            .hand(&mut ids(11..=10 + came), came as usize, true)
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sizes(&commits), vec![10, came as usize]);
        assert_eq!(marking.flush().unwrap(), 10 + came as u64);
    }

    #[test]
    fn the_end_is_also_seen_coming_in_rows_read_ahead_once_a_read_came_short() {
        // The table ends at id 25: the read after 22 finds 3 rows.
        let (m, commits) = fake(100, None);
        let marking = Marking::start(m, Some(fake_ending(0, None, 25).0), None, 10, false).unwrap();
        marking.read_ahead(22, 10);
        let made = commits_after_a_full_batch_came_during_a_commit(&marking, &commits, 0, false);
        assert_eq!(made, vec![10]);
        let rows = marking.take_read(22, 10).unwrap();
        assert_eq!(rows.len(), 3);
        let (marked, ended) = marking.finish(Exit::Ok, 0);
        ended.unwrap();
        assert_eq!(marked, 22);
        assert_eq!(sizes(&commits), vec![10, 12]);
    }

    #[test]
    fn rows_read_ahead_come_with_their_messages_made_by_the_thread_that_read_them() {
        use crate::template::{Kind, PayloadFormat, Template, render_row};
        let topic = Template::parse_as("t/{id}", Kind::Topic, "gw").unwrap();
        let renderer = Renderer::new(&topic, &PayloadFormat::Json, 1000);
        for separate in [false, true] {
            let (m, _) = fake(0, None);
            let reading = if separate { reader() } else { None };
            let marking = Marking::start(m, reading, Some(renderer.clone()), 10, false).unwrap();
            marking.read_ahead(0, 10);
            let rows = marking.take_read(0, 10).unwrap();
            assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids(1..=10));
            for row in &rows {
                let bare = Row::new(row.id, row.fields.clone());
                let want = render_row(&topic, &PayloadFormat::Json, 1000, &bare);
                assert_eq!(
                    row.made.as_ref(),
                    Some(&want),
                    "separate reader: {separate}"
                );
            }
            // Without a renderer (--group frame) rows come as read.
            let (m, _) = fake(0, None);
            let reading = if separate { reader() } else { None };
            let marking = Marking::start(m, reading, None, 10, false).unwrap();
            marking.read_ahead(0, 10);
            let rows = marking.take_read(0, 10).unwrap();
            assert!(rows.iter().all(|r| r.made.is_none()));
        }
    }

    #[test]
    fn a_read_ahead_made_in_pieces_gives_every_row_once_and_in_order_across_reads() {
        for separate in [false, true] {
            let (m, _) = fake(0, None);
            let reading = if separate { reader() } else { None };
            let marking = Marking::start(m, reading, None, 10, false).unwrap();
            marking.read_ahead(0, 10);
            let mut after = 0;
            let mut got = Vec::new();
            // 3 reads of READ_AHEAD rows, 8 pieces each, taken as they come.
            while got.len() < 3 * READ_AHEAD {
                let rows = marking.take_read(after, READ_AHEAD_CHUNK).unwrap();
                assert_eq!(rows.len(), READ_AHEAD_CHUNK);
                after = rows.last().unwrap().id;
                got.extend(rows.iter().map(|r| r.id));
            }
            assert_eq!(
                got,
                ids(1..=3 * READ_AHEAD as i64),
                "separate reader: {separate}"
            );
            // Never more held than the queue was made for: it never grew.
            assert_eq!(marking.shared.lock().ahead.capacity(), AHEAD_ROOM);
        }
    }

    /// A handle that only reads (at once).
    fn reader() -> Option<Box<dyn Marker>> {
        Some(fake(0, None).0)
    }

    #[test]
    fn with_a_reader_of_its_own_a_read_ahead_is_not_held_up_by_a_slow_commit() {
        let (m, _) = fake(400, None);
        let marking = Marking::start(m, reader(), None, 1, false).unwrap();
        marking.hand(&mut vec![1, 2], 0, false).unwrap();
        // The commit of 1 and 2 starts and takes 400 ms.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        marking.read_ahead(0, 10);
        let rows = marking.take_read(0, 10).unwrap();
        assert_eq!(rows.len(), 10);
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(marking.flush().unwrap(), 2);
    }

    #[test]
    fn without_one_reads_wait_for_the_commit_under_way_and_come_before_the_next() {
        let (m, _) = fake(300, None);
        let marking = Marking::start(m, None, None, 1, false).unwrap();
        marking.hand(&mut vec![1, 2], 0, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        marking.read_ahead(0, 10);
        marking.hand(&mut vec![3], 0, false).unwrap();
        assert_eq!(marking.take_read(0, 10).unwrap().len(), 10);
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(
            waited < Duration::from_millis(550),
            "{waited:?}: the read went after the next commit"
        );
        assert_eq!(marking.flush().unwrap(), 3);
    }

    #[test]
    fn a_flush_commits_everything_handed_over_and_counts_it_only_then() {
        let (m, commits) = fake(20, None);
        let marking = Marking::start(m, None, None, 100, false).unwrap();
        let mut ids: Vec<i64> = (1..=10).collect();
        marking.hand(&mut ids, 0, false).unwrap();
        assert!(ids.is_empty());
        assert_eq!(marking.unmarked(), 10);
        assert_eq!(marking.flush().unwrap(), 10);
        assert_eq!(marking.unmarked(), 0);
        assert_eq!(
            commits.lock().unwrap().concat(),
            (1..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_slow_commit_makes_the_next_one_carry_more_rows() {
        let (m, commits) = fake(30, None);
        let marking = Marking::start(m, None, None, 10, false).unwrap();
        for chunk in (1..=200i64).collect::<Vec<_>>().chunks(10) {
            marking.hand(&mut chunk.to_vec(), 0, false).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(marking.flush().unwrap(), 200);
        let commits = commits.lock().unwrap();
        assert_eq!(commits.concat(), (1..=200).collect::<Vec<_>>());
        assert!(
            commits.len() < 20 && commits.iter().any(|c| c.len() > 10),
            "{:?}",
            commits.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn fewer_rows_than_a_batch_are_committed_after_the_interval_without_a_flush() {
        let (m, commits) = fake(0, None);
        let marking = Marking::start(m, None, None, 1000, false).unwrap();
        marking.hand(&mut vec![7, 8], 0, false).unwrap();
        let t = Instant::now();
        while commits.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(t.elapsed() >= MARK_INTERVAL - Duration::from_millis(100));
        assert_eq!(commits.lock().unwrap().concat(), vec![7, 8]);
        assert_eq!(marking.marked(), 2);
    }

    #[test]
    fn a_marking_error_reaches_the_drain_and_the_rows_do_not_count() {
        let (m, _) = fake(0, Some(1));
        let marking = Marking::start(m, None, None, 1, false).unwrap();
        marking.hand(&mut vec![1], 0, false).unwrap();
        assert_eq!(marking.flush().unwrap(), 1);
        marking.hand(&mut vec![2], 0, false).unwrap();
        let e = marking.flush().unwrap_err();
        assert_eq!(e.exit, Exit::IoErr);
        assert_eq!(marking.marked(), 1);
        assert!(marking.hand(&mut vec![3], 0, false).is_err());
        assert!(marking.wait_below(1, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn waiting_below_the_cap_returns_once_the_commit_made_room() {
        let (m, _) = fake(50, None);
        let marking = Marking::start(m, None, None, 1000, false).unwrap();
        marking.hand(&mut (1..=500).collect(), 0, false).unwrap();
        marking.wait_below(100, Duration::from_secs(10)).unwrap();
        assert!(marking.unmarked() < 100);
    }

    #[test]
    fn a_chunk_read_ahead_is_given_for_the_same_place_only() {
        for separate in [false, true] {
            chunks_read_ahead(separate);
        }
    }

    fn chunks_read_ahead(separate: bool) {
        let (m, _) = fake(0, None);
        let marking =
            Marking::start(m, if separate { reader() } else { None }, None, 100, false).unwrap();
        marking.read_ahead(200, 3);
        let ids = |rows: &[Row]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        let rows = marking.take_read(200, 3).unwrap();
        assert_eq!(ids(&rows), [201, 202, 203]);
        let mut rows = marking.take_read(203, 3).unwrap();
        assert_eq!(ids(&rows), [204, 205, 206]);
        // A frame cut by the chunk waits for the next one.
        let tail = rows.split_off(1);
        marking.put_back(204, tail);
        let rows = marking.take_read(204, 3).unwrap();
        assert_eq!(ids(&rows), [205, 206, 207]);
        // A reconnect moved the place back: what was read ahead is dropped.
        assert!(marking.take_read(150, 3).is_none());
        assert!(marking.take_read(207, 3).is_none());
    }

    #[test]
    fn chunks_of_up_to_half_a_read_ahead_are_read_ahead_and_larger_ones_not() {
        let (m, _) = fake(0, None);
        let marking = Marking::start(m, None, None, 100, false).unwrap();
        marking.read_ahead(0, READ_AHEAD_CHUNK);
        for i in 0..5 {
            let after = (i * READ_AHEAD_CHUNK) as i64;
            let rows = marking.take_read(after, READ_AHEAD_CHUNK).unwrap();
            assert_eq!(rows.len(), READ_AHEAD_CHUNK);
            assert_eq!(
                rows.last().map(|r| r.id),
                Some(after + READ_AHEAD_CHUNK as i64)
            );
        }
        marking.read_ahead(0, READ_AHEAD_CHUNK + 1);
        assert!(marking.take_read(0, READ_AHEAD_CHUNK + 1).is_none());
    }

    #[test]
    fn state_entries_go_in_the_next_commit_of_marks_and_a_flush_commits_them_alone() {
        let marked: Commits = Arc::default();
        let states: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let f = Fake {
            marked: Arc::clone(&marked),
            states: Arc::clone(&states),
            ends: Arc::default(),
            delay: Duration::ZERO,
            fail_at: None,
            rows_end: i64::MAX,
        };
        let marking = Marking::start(Box::new(f), None, None, 3, false).unwrap();
        let entry = |k: &str| (k.to_string(), "v".to_string());
        marking.hand_states(&mut vec![entry("a")]).unwrap();
        marking.hand(&mut vec![1, 2, 3], 0, false).unwrap();
        assert_eq!(marking.flush().unwrap(), 3);
        assert_eq!(*states.lock().unwrap(), [entry("a")]);
        assert_eq!(marked.lock().unwrap().len(), 1, "one transaction for both");
        // Alone, at a flush.
        marking.hand_states(&mut vec![entry("b")]).unwrap();
        assert_eq!(marking.flush().unwrap(), 3);
        assert_eq!(*states.lock().unwrap(), [entry("a"), entry("b")]);
    }

    #[test]
    fn dropping_the_marking_commits_what_was_handed_over() {
        let (m, commits) = fake(10, None);
        let marking = Marking::start(m, None, None, 1000, false).unwrap();
        marking.hand(&mut vec![1, 2, 3], 0, false).unwrap();
        drop(marking);
        assert_eq!(commits.lock().unwrap().concat(), vec![1, 2, 3]);
    }

    /// A fake that keeps its run ends where the test sees them.
    fn fake_with_ends(delay_ms: u64, fail_at: Option<usize>) -> (Box<dyn Marker>, Commits, Ends) {
        let marked: Commits = Arc::default();
        let ends: Ends = Arc::default();
        let f = Fake {
            marked: Arc::clone(&marked),
            states: Arc::default(),
            ends: Arc::clone(&ends),
            delay: Duration::from_millis(delay_ms),
            fail_at,
            rows_end: i64::MAX,
        };
        (Box::new(f), marked, ends)
    }

    #[test]
    fn the_run_end_goes_in_the_transaction_of_the_last_marks_counting_every_row() {
        let (m, commits, ends) = fake_with_ends(20, None);
        let marking = Marking::start(m, None, None, 2, false).unwrap();
        marking.hand(&mut vec![1, 2], 0, false).unwrap();
        // That commit is under way (20 ms) when the last rows come.
        std::thread::sleep(Duration::from_millis(5));
        marking.hand(&mut vec![3, 4, 5], 0, false).unwrap();
        let (marked, ended) = marking.finish(Exit::Ok, 7);
        assert_eq!(marked, 5);
        ended.unwrap();
        let commits = commits.lock().unwrap();
        assert_eq!(commits.concat(), vec![1, 2, 3, 4, 5]);
        let last = commits.len() - 1;
        assert_eq!(commits[last], vec![3, 4, 5], "{commits:?}");
        assert_eq!(
            *ends.lock().unwrap(),
            [(
                last,
                RunEnd {
                    exit: Exit::Ok,
                    marked: 12
                }
            )],
            "one end, with the last marks, counting the 7 rows before the drain"
        );
    }

    #[test]
    fn with_everything_committed_already_the_end_is_one_transaction_of_its_own() {
        let (m, commits, ends) = fake_with_ends(0, None);
        let marking = Marking::start(m, None, None, 1000, false).unwrap();
        marking.hand(&mut vec![1, 2, 3], 0, false).unwrap();
        assert_eq!(marking.flush().unwrap(), 3);
        let (marked, ended) = marking.finish(Exit::DataErr, 0);
        ended.unwrap();
        assert_eq!(marked, 3);
        assert_eq!(*commits.lock().unwrap(), vec![vec![1, 2, 3], vec![]]);
        assert_eq!(
            *ends.lock().unwrap(),
            [(
                1,
                RunEnd {
                    exit: Exit::DataErr,
                    marked: 3
                }
            )]
        );
    }

    #[test]
    fn after_a_marking_error_the_end_is_left_to_the_caller_with_the_rows_that_did_commit() {
        // The second commit fails: the first one's rows still count.
        let (m, commits, ends) = fake_with_ends(0, Some(1));
        let marking = Marking::start(m, None, None, 1000, false).unwrap();
        marking.hand(&mut vec![1, 2], 0, false).unwrap();
        assert_eq!(marking.flush().unwrap(), 2);
        marking.hand(&mut vec![3], 0, false).unwrap();
        let (marked, ended) = marking.finish(Exit::Ok, 0);
        assert_eq!(marked, 2);
        assert!(ended.unwrap_err().message.contains("disk full"));
        assert_eq!(commits.lock().unwrap().concat(), vec![1, 2]);
        assert!(ends.lock().unwrap().is_empty());
    }
}
