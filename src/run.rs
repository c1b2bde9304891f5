//! One flush run, start to end: lock, open, select, publish, mark, report.
//!
//! The order is what keeps readings safe. The database is opened and
//! checked, then the lock is taken; a run with nothing to send stops there,
//! before any network traffic and before any write (but the lock file's
//! creation and the index's, both once per database and mask). With
//! something to send, a write to frameflush's own table proves the database
//! takes writes before the broker is contacted. Rows are read in chunks of `--batch`, published in a
//! window of `--inflight`, and marked in short transactions as their PUBACKs
//! arrive; anything not acknowledged stays unsent. The [`Summary`] counts
//! what happened, for `--json` and for the exit status.

use std::collections::VecDeque;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::config::{Config, Group, Log};
use crate::error::{Error, Exit, Result};
use crate::publish::{Polled, Rows, Session};
use crate::row::{Column, Field, Row};
use crate::source::{self, Mode, Source};
use crate::summary::{Summary, exit_status};
use crate::template::{FRAME_COLUMNS, RowError, check_reading, frame_json};

/// At most this many rows that cannot become a message are named on stderr
/// per run; the rest are counted.
const MAX_ROW_ERRORS_SHOWN: u64 = 10;
/// Acknowledged rows are marked at least this often, however slow the link.
const MARK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the DISCONNECT may take to go out. With it, a run lasts at most
/// `--max-time` + `--ack-timeout` + this (50 + 5 + 1 s by default: under
/// cron's minute).
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// The one-line progress display: only on a terminal, only for runs that
/// last over a second, redrawn four times a second, erased at the end.
struct Progress {
    enabled: bool,
    shown: bool,
    last: Instant,
    /// Rows left when first shown, and rows acknowledged by then.
    base: Option<(u64, u64)>,
}

impl Progress {
    fn new(log: Log) -> Progress {
        use std::io::IsTerminal as _;
        Progress {
            enabled: !log.quiet && std::io::stderr().is_terminal(),
            shown: false,
            last: Instant::now(),
            base: None,
        }
    }

    fn tick(&mut self, db: &dyn Source, summary: &Summary, start: Instant) {
        if !self.enabled
            || start.elapsed() < Duration::from_secs(1)
            || self.last.elapsed() < Duration::from_millis(250)
        {
            return;
        }
        self.last = Instant::now();
        let (left_then, marked_then) = *self
            .base
            .get_or_insert_with(|| (db.backlog().unwrap_or(0), summary.marked));
        let left = left_then.saturating_sub(summary.marked - marked_then);
        let rate = summary.marked as f64 / start.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[Kframeflush: {} sent, {rate:.0}/s, {left} left",
            summary.marked
        );
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// A message ready to go: the row it comes from, its topic and payload.
struct Message {
    rows: Rows,
    topic: String,
    payload: Vec<u8>,
}

/// Runs `flush` as configured. Always returns the summary; the error, if
/// any, decides the exit status together with `summary.failed`.
pub fn flush(cfg: &Config) -> (Summary, Option<Error>) {
    let start = Instant::now();
    let mut summary = Summary {
        dry_run: cfg.dry_run,
        ..Summary::default()
    };
    let result = if cfg.dry_run {
        dry_run(cfg, &mut summary)
    } else {
        publish_run(cfg, &mut summary, start)
    };
    let error = result.err();
    summary.unsent = summary.selected.saturating_sub(summary.marked);
    summary.elapsed_ms = start.elapsed().as_millis() as u64;
    summary.exit_code = exit_status(&summary, error.as_ref()).code();
    summary.error = error.as_ref().map(|e| e.message.clone());
    if let Some(path) = &cfg.metrics_file
        && !cfg.dry_run
    {
        let db = cfg.target.db.display().to_string();
        if let Err(e) = crate::metrics::write(path, &db, cfg.target.sync_mask, &summary) {
            // The run's own outcome matters more; a metrics problem is a
            // warning unless the run was otherwise fine.
            if error.is_none() {
                summary.exit_code = e.exit.code();
                summary.error = Some(e.message.clone());
                return (summary, Some(e));
            }
            if !cfg.log.quiet {
                eprintln!("frameflush: warning: {e}");
            }
        }
    }
    (summary, error)
}

/// Chunk size for the next SELECT, within `--batch` and what `--limit`
/// leaves.
fn next_chunk(cfg: &Config, selected: u64) -> usize {
    match cfg.limit {
        Some(limit) => (limit.saturating_sub(selected)).min(cfg.batch as u64) as usize,
        None => cfg.batch,
    }
}

/// A payload within `--max-payload`, or why not.
fn within_limit(cfg: &Config, payload: Vec<u8>) -> Result<Vec<u8>, RowError> {
    if payload.len() > cfg.max_payload {
        return Err(RowError(format!(
            "payload of {} bytes exceeds --max-payload {}",
            payload.len(),
            cfg.max_payload
        )));
    }
    Ok(payload)
}

/// The rows of a chunk cut into Waspmote frames: runs of consecutive rows
/// that share id_wasp, id_secret, frame_type, frame_number and timestamp. A
/// sensor seen twice starts a new message (a JSON object holds one value
/// per key).
fn split_frames(rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut frames: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let same = frames.last().is_some_and(|f: &Vec<Row>| {
            FRAME_COLUMNS.iter().all(|&c| f[0].get(c) == row.get(c))
                && !f
                    .iter()
                    .any(|r| r.get(Column::Sensor) == row.get(Column::Sensor))
        });
        match frames.last_mut() {
            Some(f) if same => f.push(row),
            _ => frames.push(vec![row]),
        }
    }
    frames
}

/// With `--group frame`, a full chunk may end inside a frame: its last
/// frame is left for the next SELECT (unless it is the only one: a frame
/// larger than `--batch` rows is split). Returns the rows to take now.
fn hold_back(cfg: &Config, mut rows: Vec<Row>, full: bool) -> Vec<Row> {
    if cfg.group != Group::Frame || !full {
        return rows;
    }
    let Some(last) = rows.last() else { return rows };
    let key: Vec<Field> = FRAME_COLUMNS.iter().map(|&c| last.get(c).clone()).collect();
    let start = rows
        .iter()
        .rposition(|r| FRAME_COLUMNS.iter().zip(&key).any(|(&c, k)| r.get(c) != k))
        .map_or(0, |i| i + 1);
    if start > 0 {
        rows.truncate(start);
    }
    rows
}

/// The next rows to send after `after`: at most a chunk, within what
/// `--limit` leaves, whole frames only with `--group frame`.
struct Chunk {
    rows: Vec<Row>,
    /// The table may hold more rows after these.
    more: bool,
}

fn next_rows(cfg: &Config, db: &dyn Source, after: i64, selected: u64) -> Result<Chunk> {
    let want = next_chunk(cfg, selected);
    if want == 0 {
        return Ok(Chunk {
            rows: Vec::new(),
            more: false,
        });
    }
    let rows = db.select_unsent(after, want)?;
    let full = rows.len() == want;
    let got = rows.len();
    let rows = hold_back(cfg, rows, full);
    if cfg.group == Group::Frame && full && rows.len() == got && want < cfg.batch {
        // --limit cut this chunk short inside what may be one frame: the
        // frame waits for the next run rather than go out in halves.
        return Ok(Chunk {
            rows: Vec::new(),
            more: false,
        });
    }
    Ok(Chunk { rows, more: full })
}

/// Renders rows into messages (one per row, or one per frame); rows that
/// cannot become one are counted, named on stderr, stay unsent, and are
/// returned with the reason.
fn render(
    cfg: &Config,
    rows: Vec<Row>,
    summary: &mut Summary,
    out: &mut VecDeque<Message>,
) -> Vec<(i64, String)> {
    let mut failed = Vec::new();
    let mut fail = |id: i64, why: RowError, summary: &mut Summary| {
        summary.failed += 1;
        if !cfg.log.quiet && summary.failed <= MAX_ROW_ERRORS_SHOWN {
            eprintln!("frameflush: row {id} not sent: {why}");
        }
        failed.push((id, why.0));
    };
    match cfg.group {
        Group::Row => {
            for row in rows {
                let made = cfg.topic.render(&row).and_then(|topic| {
                    let payload = within_limit(cfg, cfg.payload.render(&row)?)?;
                    Ok(Message {
                        rows: Rows::One(row.id),
                        topic,
                        payload,
                    })
                });
                match made {
                    Ok(m) => out.push_back(m),
                    Err(why) => fail(row.id, why, summary),
                }
            }
        }
        Group::Frame => {
            for frame in split_frames(rows) {
                let (good, bad): (Vec<Row>, Vec<Row>) =
                    frame.into_iter().partition(|r| check_reading(r).is_ok());
                for row in bad {
                    if let Err(why) = check_reading(&row) {
                        fail(row.id, why, summary);
                    }
                }
                if good.is_empty() {
                    continue;
                }
                let made = cfg.topic.render(&good[0]).and_then(|topic| {
                    let payload = within_limit(cfg, frame_json(&good)?)?;
                    Ok((topic, payload))
                });
                match made {
                    Ok((topic, payload)) => out.push_back(Message {
                        rows: Rows::Frame(good.iter().map(|r| r.id).collect()),
                        topic,
                        payload,
                    }),
                    Err(why) => {
                        for row in &good {
                            fail(row.id, why.clone(), summary);
                        }
                    }
                }
            }
        }
    }
    failed
}

/// Renders a chunk and records its failures (quarantining rows that reached
/// `--max-attempts`).
fn render_and_record(
    cfg: &Config,
    db: &mut dyn Source,
    rows: Vec<Row>,
    summary: &mut Summary,
    out: &mut VecDeque<Message>,
) -> Result<()> {
    let failed = render(cfg, rows, summary, out);
    let quarantined = db.record_failures(&failed, cfg.max_attempts)?;
    if quarantined > 0 && !cfg.log.quiet {
        eprintln!(
            "frameflush: {quarantined} row(s) failed {} time(s) and are quarantined: see `frameflush failures`",
            cfg.max_attempts
        );
    }
    summary.quarantined += quarantined;
    Ok(())
}

fn dry_run(cfg: &Config, summary: &mut Summary) -> Result<()> {
    let db = source::open(&cfg.target, Mode::ReadOnly)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    let mut queue = VecDeque::new();
    loop {
        let Chunk { rows, more } = next_rows(cfg, &*db, after, summary.selected)?;
        summary.selected += rows.len() as u64;
        if let Some(last) = rows.last() {
            after = last.id;
        }
        render(cfg, rows, summary, &mut queue);
        for m in queue.drain(..) {
            let written = out
                .write_all(m.topic.as_bytes())
                .and_then(|()| out.write_all(b"\t"))
                .and_then(|()| out.write_all(&m.payload))
                .and_then(|()| out.write_all(b"\n"));
            written.map_err(|e| Error::new(Exit::IoErr, format!("cannot write to stdout: {e}")))?;
        }
        if !more {
            break;
        }
    }
    out.flush()
        .map_err(|e| Error::new(Exit::IoErr, format!("cannot write to stdout: {e}")))?;
    if cfg.json {
        summary.backlog = db.backlog().ok();
    }
    Ok(())
}

fn publish_run(cfg: &Config, summary: &mut Summary, start: Instant) -> Result<()> {
    // The database is checked before the lock file is made beside it: a
    // missing database leaves no stray lock file.
    let mut db = source::open(&cfg.target, Mode::ReadWrite)?;
    db.lock_run()?;
    db.ensure_schema()?;
    if cfg.log.debug {
        eprintln!("frameflush: query plan: {}", db.selection_plan()?);
    }
    let first = next_rows(cfg, &*db, 0, 0)?;
    if first.rows.is_empty() {
        if cfg.json || cfg.metrics_file.is_some() {
            summary.backlog = db.backlog().ok();
        }
        return Ok(());
    }
    summary.selected += first.rows.len() as u64;
    db.begin_run()?;
    let result = drain(cfg, &mut *db, first, summary, start);
    let exit = exit_status(summary, result.as_ref().err());
    if let Err(e) = db.end_run(exit, summary.marked)
        && cfg.log.verbose
    {
        eprintln!("frameflush: could not record the run's outcome: {e}");
    }
    if cfg.json || cfg.metrics_file.is_some() {
        summary.backlog = db.backlog().ok();
        summary.oldest_unsent_age_s = db.oldest_unsent().ok().and_then(|(_, age)| age);
    }
    result
}

/// The publishing loop: keeps the window full, marks acks as they come,
/// stops at the first connection error, at the deadline or when drained.
fn drain(
    cfg: &Config,
    db: &mut dyn Source,
    first: Chunk,
    summary: &mut Summary,
    start: Instant,
) -> Result<()> {
    let log = cfg.log;
    let publish_deadline = start + cfg.max_time;
    let mut queue = VecDeque::with_capacity(first.rows.len());
    let mut more = first.more;
    let mut after = first.rows.last().map_or(0, |r| r.id);
    chunk_log(log, summary, first.rows.len());
    render_and_record(cfg, db, first.rows, summary, &mut queue)?;
    if queue.is_empty() && !more {
        return Ok(());
    }

    let mut session = Session::connect(&cfg.broker, cfg.inflight, cfg.max_payload, log)?;
    // With --rate, the n-th PUBLISH (from 0) goes out no earlier than
    // n / rate seconds after the connection.
    let rate_start = Instant::now();
    let rate_due = |published: u64| {
        cfg.rate
            .map(|r| rate_start + Duration::from_secs_f64(published as f64 / r))
    };
    let window = usize::from(cfg.inflight);
    let mut acked: Vec<i64> = Vec::with_capacity(cfg.batch.min(window.max(64) * 4));
    let mut oldest_unmarked_ack: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut progress = Progress::new(log);
    // PUBLISHes handed over (a frame message carries several rows).
    let mut messages = 0u64;
    // A failure that ends the run at once (the connection, marking).
    let mut failure: Option<Error> = None;
    // A failure after which nothing more is published, but what is in
    // flight still gets --ack-timeout to be acknowledged and marked (the
    // database could not be read further), and when.
    let mut stopped: Option<(Error, Instant)> = None;

    loop {
        let now = Instant::now();
        let mut publishing = now < publish_deadline && stopped.is_none();
        // Refill from the database once the current chunk has gone out.
        if publishing && queue.is_empty() && more {
            let refill = next_rows(cfg, db, after, summary.selected).and_then(|chunk| {
                more = chunk.more;
                if let Some(last) = chunk.rows.last() {
                    after = last.id;
                }
                summary.selected += chunk.rows.len() as u64;
                chunk_log(log, summary, chunk.rows.len());
                render_and_record(cfg, db, chunk.rows, summary, &mut queue)
            });
            if let Err(e) = refill {
                stopped = Some((e, now));
                publishing = false;
            }
        }
        // Fill the window (and no faster than --rate).
        let mut rate_wait = None;
        while publishing && session.in_flight() < window {
            if let Some(due) = rate_due(messages)
                && Instant::now() < due
            {
                rate_wait = Some(due);
                break;
            }
            let Some(m) = queue.pop_front() else { break };
            if session.in_flight() == 0 {
                last_progress = now;
            }
            let rows = m.rows.ids().len() as u64;
            if let Err(e) = session.publish(m.rows, m.topic, m.payload) {
                failure = Some(e);
                break;
            }
            summary.published += rows;
            messages += 1;
        }
        if failure.is_some() {
            break;
        }
        let nothing_left = queue.is_empty() && !more;
        if session.in_flight() == 0 && (nothing_left || !publishing) {
            break;
        }
        // Wait for the broker, at most until the next deadline. Once
        // publishing has stopped, what is in flight gets --ack-timeout.
        let stopped_at = match &stopped {
            Some((_, at)) => Some(*at),
            None if !publishing => Some(publish_deadline),
            None => None,
        };
        let ack_deadline = match stopped_at {
            None => last_progress + cfg.ack_timeout,
            Some(at) => (last_progress + cfg.ack_timeout).min(at + cfg.ack_timeout),
        };
        let mut wake = ack_deadline;
        if publishing && !queue.is_empty() {
            wake = wake.min(publish_deadline);
        }
        if let Some(t) = oldest_unmarked_ack {
            wake = wake.min(t + MARK_INTERVAL);
        }
        if let Some(due) = rate_wait {
            wake = wake.min(due);
        }
        match session.poll(wake.saturating_duration_since(Instant::now())) {
            Ok(Polled::Acked(rows)) => {
                summary.acknowledged += rows.ids().len() as u64;
                last_progress = Instant::now();
                acked.extend_from_slice(rows.ids());
                oldest_unmarked_ack.get_or_insert(last_progress);
            }
            Ok(Polled::Other) => {}
            Ok(Polled::Idle) => {
                if session.in_flight() > 0 && Instant::now() >= ack_deadline {
                    failure = Some(Error::new(
                        Exit::TempFail,
                        format!(
                            "{} PUBLISH(es) not acknowledged within --ack-timeout {} s; they stay unsent",
                            session.in_flight(),
                            cfg.ack_timeout.as_secs_f64()
                        ),
                    ));
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        progress.tick(db, summary, start);
        let due = oldest_unmarked_ack.is_some_and(|t| t.elapsed() >= MARK_INTERVAL);
        if acked.len() >= cfg.batch || due {
            if let Err(e) = mark(db, &mut acked, summary, log) {
                failure = Some(e);
                break;
            }
            oldest_unmarked_ack = None;
        }
    }
    // What stopped the publishing is the run's error, before any that came
    // while the window drained.
    if let Some((e, _)) = stopped {
        failure = Some(e);
    }
    // Whatever was acknowledged is marked, also when the run failed.
    if let Err(e) = mark(db, &mut acked, summary, log) {
        failure.get_or_insert(e);
    }
    progress.finish();
    session.disconnect(DISCONNECT_WAIT);
    if log.verbose
        && failure.is_none()
        && (!queue.is_empty() || more)
        && Instant::now() >= publish_deadline
    {
        eprintln!("frameflush: --max-time reached; the rest waits for the next run");
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn mark(db: &mut dyn Source, acked: &mut Vec<i64>, summary: &mut Summary, log: Log) -> Result<()> {
    if acked.is_empty() {
        return Ok(());
    }
    let n = db.mark(acked)?;
    summary.marked += n as u64;
    if log.verbose {
        eprintln!(
            "frameflush: marked {} row(s) sent ({} so far)",
            acked.len(),
            summary.marked
        );
    }
    acked.clear();
    Ok(())
}

fn chunk_log(log: Log, summary: &Summary, rows: usize) {
    if log.verbose && rows > 0 {
        eprintln!(
            "frameflush: selected {rows} row(s) ({} so far, {} published, {} acknowledged, {} marked)",
            summary.selected, summary.published, summary.acknowledged, summary.marked
        );
    }
}
