//! The publishing half of a run: connect, isolate suspects, keep the window
//! full, mark what the broker accepted, record what it refused, and stop at
//! the first sign that the connection is gone.
//!
//! [`Drain`] holds the run's moving parts and has one method per event:
//! `refill` (the next chunk from the source), `fill_window`, `on_ack`,
//! `on_refusal`, `on_broken` (the connection ended), `on_ack_timeout`, and
//! `mark`. It sees the source through [`Source`] and the broker through
//! [`Session`]: which database and which MQTT version are underneath is not
//! its business.
//!
//! A lost connection (or PUBACKs that stop coming) with messages in flight
//! leaves those messages in doubt: the broker may have taken them, or one of
//! them may be what killed the connection (over the broker's packet size
//! limit, refused by an ACL that resets the connection, a message after
//! which the broker goes silent). The run marks what was acknowledged
//! (also what the broker acknowledged right before it closed), connects
//! again and sends the messages in doubt one at a time, each waiting for
//! its PUBACK (`probation`), so no PUBACK is lost with a connection and the
//! culprit shows itself. Who is at fault is not decided here: [`blame`]
//! gives the verdict on each loss (the link, this message, not known yet)
//! and keeps the in-run evidence ([`Trial`]): a message that fails alone is
//! charged only once a later message is accepted; while one is unproven,
//! the next messages go alone too, so a run of bad messages is crossed; too
//! many failures in a row mean the broker or the link, and the run ends
//! charging nobody, the unproven messages kept as suspects in the source's
//! state. The next run sends each suspect alone, first on its own
//! connection, before opening the window. Every wait is capped by the run's
//! hard deadline, `--max-time` + `--ack-timeout` after its start.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::{
    Chunk, MAX_ROW_ERRORS_SHOWN, chunk_log, chunk_of, next_chunk, next_rows, render_and_record,
    renderer, split_frames,
};
use crate::blame::{self, Loss, Trial, Verdict as Blamed};
use crate::config::{Config, Group, Log};
use crate::error::{Error, Exit, Result};
use crate::marker::{COMMIT_ROWS, MAX_UNMARKED, Marking};
use crate::session::reason::Verdict;
use crate::session::{Blame, Broken, Message, Options, Polled, Refusal, Rows, Session, Unsent};
use crate::source::Source;
use crate::summary::{Summary, exit_status};

/// How long the DISCONNECT may take to go out. With it, a run lasts at most
/// `--max-time` + `--ack-timeout` + this (50 + 5 + 1 s by default: under
/// cron's minute).
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);
/// How often a publishing loop paused by [`MAX_UNMARKED`] looks again.
const CAPPED_POLL: Duration = Duration::from_millis(2);
/// While events keep coming, acknowledged rows are handed to the marking
/// thread this many at a time (and whenever the loop would wait, the window
/// emptied, or the oldest has waited [`HAND_WAIT`]), not one lock and
/// wake-up check per PUBACK: at W=100 3 to 5% more rows per second
/// (50,000 rows, this disk, 10 runs taking turns: 0.79 -> 0.82 of the bare
/// loop under `-V 5`, 0.72 -> 0.76 under `-V 311`). They count towards
/// [`MAX_UNMARKED`] all the same.
const HAND_ROWS: usize = 64;
/// Acknowledged rows wait at most about this long to be handed over while
/// events keep coming (on a slow link, between PUBACKs that trickle in).
const HAND_WAIT: Duration = Duration::from_millis(5);
/// Suspects remembered per destination at most, and tried alone per run.
const MAX_SUSPECTS: usize = 16;

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
        crate::sys::say_part!(
            "\r\x1b[Kframeflush: {} sent, {rate:.0}/s, {left} left",
            summary.marked
        );
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown {
            crate::sys::say_part!("\r\x1b[K");
        }
    }
}

/// The state key of this destination's suspects: their first row ids.
fn suspects_key(mask: i64) -> String {
    crate::source::suspects_key(mask)
}

/// The state key of the protocol a broker was last reached with.
pub fn protocol_key(cfg: &Config) -> String {
    format!("protocol:{}:{}", cfg.broker.host, cfg.broker.port)
}

/// The state key `status` reads: the protocol this destination's last
/// connection used, and to which broker.
pub fn last_protocol_key(mask: i64) -> String {
    format!("last-protocol:{mask}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How one message sent alone ended.
enum Alone {
    Accepted(Rows),
    Refused(Refusal),
    TooLarge(Message, String),
    /// The broker's DISCONNECT named it (`code`): it is charged now.
    Named {
        rows: Rows,
        why: String,
        code: u8,
    },
    /// The connection died, or no PUBACK came in time: a suspect, charged
    /// only once another message is accepted; `why` goes to the ledger.
    Lost {
        rows: Rows,
        why: String,
        error: Error,
        /// No PUBACK in time (rather than a dropped connection).
        silent: bool,
    },
    /// The connection ended in a way that is not about this message.
    Cleared {
        error: Error,
        retry: bool,
    },
    /// It could not even be handed to the MQTT client.
    Failed(Error),
}

pub struct Drain<'a> {
    cfg: &'a Config,
    db: &'a mut dyn Source,
    summary: &'a mut Summary,
    start: Instant,
    publish_deadline: Instant,
    queue: VecDeque<Message>,
    more: bool,
    after: i64,
    /// Acknowledged and not yet marked.
    acked: Vec<i64>,
    /// When the oldest of `acked` was acknowledged: they are handed to the
    /// marking thread within [`HAND_WAIT`] of it.
    oldest_unmarked_ack: Option<Instant>,
    /// Refused by the broker, to be recorded with the next marking.
    refused: Vec<(i64, String)>,
    /// The marking thread, started once the broker accepted the connection.
    marking: Option<Marking>,
    /// State entries a connection learned (the broker's protocol), not yet
    /// handed to the marking thread: they are written with the next marks.
    learned: Vec<(String, String)>,
    /// Rows marked before this drain began.
    marked_before: u64,
    last_progress: Instant,
    progress: Progress,
    /// PUBLISHes handed over (a frame message carries several rows), for
    /// `--rate`, counted from `rate_start`.
    messages: u64,
    rate_start: Instant,
    /// A failure after which nothing more is published, but what is in
    /// flight still gets --ack-timeout to be acknowledged and marked, and
    /// when it came.
    stopped: Option<(Error, Instant)>,
    /// Rows not to publish again in this run: suspects tried alone, rows
    /// refused, charged, or that could not become a message.
    skip: HashSet<i64>,
    suspects: Vec<i64>,
    suspects_changed: bool,
    /// The largest id published so far (first sends count as published,
    /// later ones as resent).
    published_high: i64,
    /// The largest id selected so far: rows selected again after a
    /// reconnect are not counted twice.
    high_water: i64,
    /// After a lost connection, this many messages go out one at a time
    /// (each waits for its PUBACK before the next), so that no PUBACK is
    /// lost with the connection and the one the broker chokes on is known.
    probation: usize,
    /// Messages that lost the connection (or got no PUBACK) alone in
    /// flight, first on their connection: charged once a later message is
    /// accepted (proof that the broker and the link work); else, at the
    /// end, kept as suspects. [`Trial`] also says when to stop looking.
    trial: Trial<(Rows, String)>,
    /// The loss the last unproven message came from: the run's error if
    /// nothing proves it guilty before the run ends.
    unproven: Option<Error>,
    /// Nothing waits past this: `--max-time` + `--ack-timeout` after the
    /// start.
    hard_deadline: Instant,
}

/// Records a run's end on the run's own connection, when it could not go
/// with the last marks (nothing was acknowledged, the last marks failed,
/// or the drain could not start). A failure here is only said (`-v`): the
/// run's outcome is its exit status.
pub fn end_run(cfg: &Config, db: &mut dyn Source, summary: &Summary, failure: Option<&Error>) {
    let exit = exit_status(summary, failure);
    if let Err(e) = db.end_run(exit, summary.marked)
        && cfg.log.verbose
    {
        crate::sys::say!("frameflush: could not record the run's outcome: {e}");
    }
}

/// New connections a run makes at most after losing one.
const MAX_RECONNECTS: u32 = 5000;

impl<'a> Drain<'a> {
    pub fn new(
        cfg: &'a Config,
        db: &'a mut dyn Source,
        summary: &'a mut Summary,
        start: Instant,
    ) -> Result<Drain<'a>> {
        let suspects = match db.state(&suspects_key(cfg.target.sync_mask))? {
            Some(s) => s.split(' ').filter_map(|id| id.parse().ok()).collect(),
            None => Vec::new(),
        };
        let marked_before = summary.marked;
        Ok(Drain {
            cfg,
            db,
            summary,
            start,
            publish_deadline: start + cfg.max_time,
            queue: VecDeque::new(),
            more: true,
            after: 0,
            acked: Vec::with_capacity(cfg.batch.min(usize::from(cfg.inflight).max(64) * 4)),
            oldest_unmarked_ack: None,
            refused: Vec::new(),
            marking: None,
            learned: Vec::new(),
            marked_before,
            last_progress: Instant::now(),
            progress: Progress::new(cfg.log),
            messages: 0,
            rate_start: Instant::now(),
            stopped: None,
            skip: HashSet::new(),
            suspects,
            suspects_changed: false,
            high_water: 0,
            published_high: 0,
            probation: 0,
            trial: Trial::default(),
            unproven: None,
            hard_deadline: start + cfg.max_time + cfg.ack_timeout,
        })
    }

    /// Publishes `first` and whatever follows it, until drained, the
    /// deadline, or the first connection error.
    pub fn run(mut self, first: Chunk) -> Result<()> {
        // The caller counted the first chunk.
        self.high_water = first.rows.last().map_or(0, |r| r.id);
        if let Err(e) = self.take(first) {
            return self.finish(Err(e), None);
        }
        if self.queue.is_empty() && !self.more {
            return self.finish(Ok(()), None);
        }
        let session = match self.connect() {
            Ok(s) => s,
            Err(e) => return self.finish(Err(e), None),
        };
        if let Err(e) = self.start_marking() {
            return self.finish(Err(e), Some(session));
        }
        let session = match self.isolate(session) {
            Ok(s) => s,
            Err(e) => return self.finish(Err(e), None),
        };
        self.rate_start = Instant::now();
        self.messages = 0;
        let mut session = session;
        let result = self.pump(&mut session);
        self.finish(result, Some(session))
    }

    /// Adds a chunk the source gave to the queue, but for rows this run
    /// is done with.
    fn take(&mut self, chunk: Chunk) -> Result<()> {
        self.more = chunk.more;
        let mut rows = chunk.rows;
        if let Some(last) = rows.last() {
            self.after = last.id;
        }
        if !self.skip.is_empty() {
            rows.retain(|r| !self.skip.contains(&r.id));
        }
        chunk_log(self.cfg.log, self.summary, rows.len());
        let failed = render_and_record(self.cfg, self.db, rows, self.summary, &mut self.queue)?;
        self.skip.extend(failed);
        Ok(())
    }

    /// A value of the source's state, or the one learned since.
    fn state(&self, key: &str) -> Result<Option<String>> {
        match self.learned.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => Ok(Some(v.clone())),
            None => self.db.state(key),
        }
    }

    /// Keeps a state entry to write with the next marks.
    fn learn(&mut self, key: String, value: String) {
        self.learned.retain(|(k, _)| *k != key);
        self.learned.push((key, value));
    }

    /// Connects, with the protocol remembered for this broker, and
    /// remembers what was negotiated when it is news (written with the
    /// next marks: no commit of its own).
    fn connect(&mut self) -> Result<Session> {
        let cfg = self.cfg;
        let key = protocol_key(cfg);
        let remembered = self.state(&key)?;
        let options = Options {
            broker: &cfg.broker,
            inflight: cfg.inflight,
            max_payload: cfg.max_payload,
            wanted: cfg.protocol,
            log: cfg.log,
        };
        let (session, learned) = Session::connect_until(
            &options,
            remembered.as_deref(),
            unix_now(),
            Some(self.hard_deadline),
        )?;
        if let Some(value) = learned {
            self.learn(key, value);
        }
        let last = format!(
            "{} {}:{}",
            session.protocol().short(),
            cfg.broker.host,
            cfg.broker.port
        );
        let mask_key = last_protocol_key(cfg.target.sync_mask);
        if self.state(&mask_key)?.as_deref() != Some(last.as_str()) {
            self.learn(mask_key, last);
        }
        self.summary.protocol = Some(session.protocol().short());
        Ok(session)
    }

    /// Sends each suspect alone, the first message on its connection,
    /// before the window opens.
    fn isolate(&mut self, mut session: Session) -> Result<Session> {
        let suspects: Vec<i64> = self.suspects.iter().copied().take(MAX_SUSPECTS).collect();
        for id in suspects {
            if Instant::now() >= self.publish_deadline {
                break;
            }
            let Some(m) = self.suspect_message(id)? else {
                self.forgive(id);
                continue;
            };
            if session.published() > 0 {
                let left = self.hard_deadline.saturating_duration_since(Instant::now());
                session.goodbye(DISCONNECT_WAIT.min(left));
                session = self.connect()?;
            }
            self.skip.extend(m.rows.ids());
            if self.cfg.log.verbose {
                crate::sys::say!(
                    "frameflush: sending the suspected {} alone first",
                    m.rows.label()
                );
            }
            match self.alone(&mut session, m) {
                Alone::Accepted(rows) => {
                    self.forgive(id);
                    self.on_ack(rows);
                    self.mark()?;
                }
                Alone::Refused(r) => {
                    self.forgive(id);
                    self.on_refusal(r);
                    self.mark()?;
                    if self.stopped.is_some() {
                        break;
                    }
                }
                Alone::TooLarge(m, why) => {
                    self.forgive(id);
                    self.fail_rows(&m.rows, why)?;
                }
                Alone::Failed(e) => return Err(e),
                Alone::Named { rows, why, code } => {
                    // The broker's DISCONNECT named it, alone: proof. It
                    // stays a suspect until quarantined.
                    self.charge_named(&rows, why, code);
                    self.mark()?;
                    session.close();
                    session = self.reconnect(Error::new(
                        Exit::TempFail,
                        "the broker disconnected on a suspected message",
                    ))?;
                }
                Alone::Lost {
                    rows,
                    why,
                    error,
                    silent,
                } => {
                    // A suspect already, failing again alone: charged only
                    // once another message is accepted in this run.
                    self.trial.failed_alone((rows, why), silent, true);
                    self.unproven = Some(error.clone());
                    if self.trial.exhausted() {
                        return Err(self.stop_error(&error));
                    }
                    if self.cfg.log.verbose {
                        crate::sys::say!("frameflush: {error}; reconnecting for the rest");
                    }
                    session.close();
                    session = self.reconnect(error)?;
                }
                Alone::Cleared { error, retry } => {
                    if !retry {
                        return Err(error);
                    }
                    session.close();
                    session = self.reconnect(error)?;
                }
            }
        }
        Ok(session)
    }

    /// The message a suspect id stands for now, or None when its row was
    /// delivered, deleted or quarantined meanwhile.
    fn suspect_message(&mut self, id: i64) -> Result<Option<Message>> {
        let want = match self.cfg.group {
            Group::Row => 1,
            Group::Frame => self.cfg.batch,
        };
        let rows = self.db.select_unsent(id - 1, want)?;
        if rows.first().map(|r| r.id) != Some(id) {
            return Ok(None);
        }
        let rows = match self.cfg.group {
            Group::Row => rows,
            Group::Frame => split_frames(rows).into_iter().next().unwrap_or_default(),
        };
        // Counted here unless the first chunk had it; the window skips it.
        let fresh = rows.iter().filter(|r| r.id > self.high_water).count();
        self.summary.selected += fresh as u64;
        let mut out = VecDeque::new();
        let failed = render_and_record(self.cfg, self.db, rows, self.summary, &mut out)?;
        self.skip.extend(failed);
        Ok(out.pop_front())
    }

    /// Publishes one message with nothing else in flight and waits for its
    /// fate, at most `--ack-timeout`.
    fn alone(&mut self, session: &mut Session, m: Message) -> Alone {
        let bytes = session.packet_bytes(&m);
        let rows = m.rows.clone();
        let n = rows.ids().len() as u64;
        match session.publish(m) {
            Ok(()) => self.summary.published += n,
            Err(Unsent::TooLarge { message, why }) => return Alone::TooLarge(message, why),
            // Not the message's fault: the run ends, nobody is charged.
            Err(Unsent::Failed(error)) => return Alone::Failed(error),
        }
        let deadline = (Instant::now() + self.cfg.ack_timeout).min(self.hard_deadline);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match session.poll(left) {
                Ok(Polled::Acked(rows)) => return Alone::Accepted(rows),
                Ok(Polled::Refused(r)) => return Alone::Refused(r),
                Ok(Polled::Other) => {}
                Ok(Polled::Idle) if left.is_zero() => {
                    return Alone::Lost {
                        rows,
                        why: format!(
                            "the broker did not acknowledge this message ({bytes} bytes) within --ack-timeout, sent alone (above the broker's packet size limit? refused by its ACL?)"
                        ),
                        error: Error::new(
                            Exit::TempFail,
                            "no PUBACK for the suspected message sent alone",
                        ),
                        silent: true,
                    };
                }
                Ok(Polled::Idle) => {}
                Err(broken) => {
                    let verdict = blame::loss(Loss {
                        disconnect: broken.disconnect,
                        in_flight: 1,
                        first_on_connection: session.published() == 1,
                        after_refusal: broken.after_refusal,
                    });
                    return match (verdict, broken.blame, broken.disconnect) {
                        (Blamed::Message, Blame::Message { why, .. }, Some(code)) => {
                            Alone::Named { rows, why, code }
                        }
                        (Blamed::NotKnownYet, _, _) => Alone::Lost {
                            rows,
                            why: format!(
                                "the broker closed the connection on this message ({bytes} bytes: above the broker's packet size limit? refused by its ACL?)"
                            ),
                            error: broken.error,
                            silent: false,
                        },
                        _ => Alone::Cleared {
                            error: broken.error,
                            retry: broken.retry,
                        },
                    };
                }
            }
        }
    }

    /// The window loop.
    fn pump(&mut self, session: &mut Session) -> Result<()> {
        loop {
            let now = Instant::now();
            let mut publishing = now < self.publish_deadline && self.stopped.is_none();
            if publishing
                && self.queue.is_empty()
                && self.more
                && let Err(e) = self.refill()
            {
                self.stopped = Some((e, now));
                publishing = false;
            }
            let rate_wait = if publishing {
                self.fill_window(session)?
            } else {
                None
            };
            let capped = publishing && self.capped();
            if capped && session.in_flight() == 0 {
                // Nothing to read from the broker: wait for the marks.
                if let Some(m) = &self.marking {
                    m.wait_below(MAX_UNMARKED, self.cfg.ack_timeout)?;
                }
                continue;
            }
            let nothing_left = self.queue.is_empty() && !self.more;
            if session.in_flight() == 0 && (nothing_left || !publishing) {
                return Ok(());
            }
            let ack_deadline = self.ack_deadline(publishing);
            let mut wake = ack_deadline;
            if publishing && !self.queue.is_empty() {
                wake = wake.min(self.publish_deadline);
            }
            if let Some(t) = self.oldest_unmarked_ack {
                wake = wake.min(t + HAND_WAIT);
            }
            if let Some(due) = rate_wait {
                wake = wake.min(due);
            }
            if capped {
                // Look again soon: a commit makes room.
                wake = wake.min(Instant::now() + CAPPED_POLL);
            }
            // Whether another event may follow at once: acknowledged rows
            // then wait to be handed over in a group.
            let mut busy = false;
            match session.poll_until(wake) {
                Ok(Polled::Acked(rows)) => {
                    busy = true;
                    self.on_ack(rows);
                }
                Ok(Polled::Refused(r)) => self.on_refusal(r),
                Ok(Polled::Other) => busy = true,
                Ok(Polled::Idle) => {
                    if session.in_flight() > 0 && Instant::now() >= ack_deadline {
                        let broken = self.ack_timeout(session);
                        self.on_lost(session, broken, true)?;
                    }
                }
                Err(broken) => self.on_lost(session, broken, false)?,
            }
            let in_flight = session.in_flight();
            if !busy
                || in_flight == 0
                || self.acked.len() >= HAND_ROWS
                || self
                    .oldest_unmarked_ack
                    .is_some_and(|t| now.saturating_duration_since(t) >= HAND_WAIT)
            {
                self.hand_off(in_flight)?;
            }
            self.progress.tick(&*self.db, self.summary, self.start);
        }
    }

    /// Once publishing has stopped, what is in flight gets --ack-timeout.
    fn ack_deadline(&self, publishing: bool) -> Instant {
        let stopped_at = match &self.stopped {
            Some((_, at)) => Some(*at),
            None if !publishing => Some(self.publish_deadline),
            None => None,
        };
        let idle = self.last_progress + self.cfg.ack_timeout;
        match stopped_at {
            None => idle,
            Some(at) => idle.min(at + self.cfg.ack_timeout),
        }
    }

    /// The next chunk from the source, once the current one has gone out.
    fn refill(&mut self) -> Result<()> {
        let want = next_chunk(self.cfg, self.summary.selected);
        let ahead = match &self.marking {
            Some(m) if want > 0 => m.take_read(self.after, want),
            _ => None,
        };
        let chunk = match ahead {
            Some(rows) => {
                let (chunk, rest) = chunk_of(self.cfg, rows, want);
                if let (Some(m), Some(last)) = (&self.marking, chunk.rows.last()) {
                    m.put_back(last.id, rest);
                }
                chunk
            }
            None => next_rows(self.cfg, &*self.db, self.after, self.summary.selected)?,
        };
        // Rows selected before (or suspects, counted when isolated) are not
        // counted again.
        let fresh = chunk
            .rows
            .iter()
            .filter(|r| r.id > self.high_water && !self.skip.contains(&r.id))
            .count();
        self.summary.selected += fresh as u64;
        if let Some(last) = chunk.rows.last() {
            self.high_water = self.high_water.max(last.id);
        }
        self.take(chunk)?;
        self.read_ahead();
        Ok(())
    }

    /// Asks the marking thread to read the next chunks while this one goes
    /// out.
    fn read_ahead(&self) {
        let want = next_chunk(self.cfg, self.summary.selected);
        if let Some(m) = &self.marking
            && self.more
            && want > 0
        {
            m.read_ahead(self.after, want);
        }
    }

    /// Hands messages to the session up to its window, no faster than
    /// `--rate`. Returns when the rate lets the next one go, if it held one
    /// back.
    fn fill_window(&mut self, session: &mut Session) -> Result<Option<Instant>> {
        let window = if self.probation > 0 || self.trial.on_probation() {
            1.min(session.window())
        } else {
            session.window()
        };
        while session.in_flight() < window && !self.capped() {
            if let Some(r) = self.cfg.rate {
                let due = self.rate_start + Duration::from_secs_f64(self.messages as f64 / r);
                if Instant::now() < due {
                    return Ok(Some(due));
                }
            }
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            if !self.skip.is_empty() && m.rows.ids().iter().any(|id| self.skip.contains(id)) {
                continue;
            }
            if session.in_flight() == 0 {
                self.last_progress = Instant::now();
            }
            let rows = m.rows.ids().len() as u64;
            let first_id = m.rows.ids().first().copied().unwrap_or_default();
            let last_id = m.rows.ids().last().copied().unwrap_or_default();
            match session.publish(m) {
                Ok(()) => {
                    // Rows go out in id order: one at or below the highest
                    // published is sent again after a lost connection.
                    if first_id <= self.published_high {
                        self.summary.resent += rows;
                    } else {
                        self.summary.published += rows;
                        self.published_high = last_id;
                    }
                    self.messages += 1;
                }
                Err(Unsent::TooLarge { message, why }) => self.fail_rows(&message.rows, why)?,
                Err(Unsent::Failed(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// A PUBACK, of either kind: the probation goes on.
    fn answered(&mut self) {
        self.probation = self.probation.saturating_sub(1);
    }

    /// A message accepted: the broker and the link work, so the messages
    /// that failed alone before it were at fault and are charged (and stay
    /// suspects: the next run sends them alone first).
    fn proven(&mut self) {
        let guilty = self.trial.accepted();
        if guilty.is_empty() {
            return;
        }
        self.unproven = None;
        for (rows, why) in guilty {
            self.summary.failed += rows.ids().len() as u64;
            if !self.cfg.log.quiet && self.summary.failed <= MAX_ROW_ERRORS_SHOWN {
                crate::sys::say!("frameflush: {} not sent: {why}", rows.label());
            }
            self.refused
                .extend(rows.ids().iter().map(|&id| (id, why.clone())));
            self.suspect(&rows);
        }
    }

    /// The broker's DISCONNECT named this message, the only one it was
    /// handling: it is charged, and the run goes on. It is a suspect for
    /// the next run (sent alone first: one connection, not a window's).
    fn charge_named(&mut self, rows: &Rows, why: String, code: u8) {
        self.suspect(rows);
        self.skip.extend(rows.ids());
        self.summary.refused += rows.ids().len() as u64;
        let exit = crate::session::reason::disconnect(code).exit;
        if self.cfg.log.verbose {
            crate::sys::say!("frameflush: {} not sent: {why}", rows.label());
        }
        self.summary
            .refusal(exit, || format!("{}: {why}", rows.label()));
        self.refused
            .extend(rows.ids().iter().map(|&id| (id, why.clone())));
    }

    /// The run's error when messages sent alone kept failing with none
    /// accepted: the broker (or the link), not a message, is at fault.
    fn stop_error(&self, last: &Error) -> Error {
        let n = self.trial.unproven_count();
        let broker = format!("{}:{}", self.cfg.broker.host, self.cfg.broker.port);
        let nothing_else = !self.more
            && self
                .queue
                .iter()
                .all(|m| m.rows.ids().iter().any(|id| self.skip.contains(id)));
        if self.trial.only_known() && nothing_else {
            return Error::new(
                Exit::TempFail,
                format!(
                    "broker {broker} took none of the {n} suspected message(s) sent alone again (the last: {}), and nothing else was left to send to prove that it works: nobody is charged; they are charged once another message is accepted",
                    last.message
                ),
            );
        }
        let what = if self.trial.takes_nothing() {
            format!("broker {broker} takes no messages: it accepts connections, but")
        } else {
            format!("broker {broker} stopped taking messages:")
        };
        Error::new(
            Exit::TempFail,
            format!(
                "{what} {n} message(s) sent alone in a row lost the connection or got no PUBACK (the last: {}); nobody is charged and they stay unsent: check the broker's log (memory or disk alarm? limits?)",
                last.message
            ),
        )
    }

    fn on_ack(&mut self, rows: Rows) {
        self.answered();
        self.proven();
        self.summary.acknowledged += rows.ids().len() as u64;
        self.last_progress = Instant::now();
        self.acked.extend_from_slice(rows.ids());
        self.oldest_unmarked_ack.get_or_insert(self.last_progress);
    }

    /// The broker refused a message (MQTT 5 reason code ≥ 0x80): it stays
    /// unsent and is recorded; the run goes on, unless the broker wants no
    /// more now.
    fn on_refusal(&mut self, r: Refusal) {
        self.answered();
        self.skip.extend(r.rows.ids());
        self.last_progress = Instant::now();
        let n = r.rows.ids().len() as u64;
        self.summary.refused += n;
        let why = r.why();
        match r.verdict {
            Verdict::Refused(exit) => {
                // One error line at the end sums the refusals up; -v names
                // each.
                if self.cfg.log.verbose {
                    crate::sys::say!("frameflush: {} not sent: {why}", r.rows.label());
                }
                self.summary
                    .refusal(exit, || format!("{}: {}", r.rows.label(), why));
                self.refused
                    .extend(r.rows.ids().iter().map(|&id| (id, why.clone())));
            }
            Verdict::Accepted | Verdict::Stop => {
                if self.stopped.is_none() {
                    self.stopped = Some((
                        Error::new(
                            Exit::TempFail,
                            format!(
                                "broker {}:{} answered {} for {} (topic {}): it takes no more for now; publishing stopped, the rest waits for the next run",
                                self.cfg.broker.host,
                                self.cfg.broker.port,
                                crate::session::reason::describe(r.code, r.reason.as_deref()),
                                r.rows.label(),
                                r.topic
                            ),
                        ),
                        Instant::now(),
                    ));
                }
            }
        }
    }

    /// No PUBACK within --ack-timeout, with messages in flight.
    fn ack_timeout(&self, session: &Session) -> Broken {
        let oldest = session.oldest_in_flight();
        let error = Error::new(
            Exit::TempFail,
            format!(
                "{} PUBLISH(es) not acknowledged within --ack-timeout {} s; they stay unsent{}",
                session.in_flight(),
                self.cfg.ack_timeout.as_secs_f64(),
                oldest
                    .as_ref()
                    .map_or(String::new(), |(rows, bytes)| format!(
                        " (the oldest: {}, {bytes} bytes)",
                        rows.label()
                    ))
            ),
        );
        let blame = match oldest {
            Some((rows, bytes)) => Blame::Suspect { rows, bytes },
            None => Blame::Nobody,
        };
        Broken {
            error,
            blame,
            retry: true,
            after_refusal: false,
            disconnect: None,
        }
    }

    /// The connection ended, or went silent (`silent`: no PUBACK within
    /// --ack-timeout), with messages in flight. What was acknowledged is
    /// marked; then [`blame::loss`] judges: a message the broker's
    /// DISCONNECT named while alone is charged; one that failed alone, first
    /// on its connection, joins the [`Trial`] (charged once a later one is
    /// accepted). Unless the trial is exhausted, the loss allows no retry,
    /// or the time is up, a new connection sends the messages in doubt one
    /// at a time and the run goes on; else the run ends and the oldest
    /// message in doubt (never the neighbour of a charged one) becomes a
    /// suspect for the next.
    fn on_lost(&mut self, session: &mut Session, broken: Broken, silent: bool) -> Result<()> {
        let Broken {
            error,
            blame,
            retry,
            after_refusal,
            disconnect,
        } = broken;
        let in_doubt = session.in_doubt();
        self.mark()?;
        let verdict = blame::loss(Loss {
            disconnect,
            in_flight: in_doubt.len(),
            first_on_connection: session.published() == 1,
            after_refusal,
        });
        let mut named = false;
        match (verdict, in_doubt.as_slice()) {
            (Blamed::Message, [(rows, _)]) => {
                let why = match &blame {
                    Blame::Message { why, .. } => why.clone(),
                    _ => "the broker disconnected on this message".to_string(),
                };
                self.charge_named(rows, why, disconnect.unwrap_or(0x80));
                named = true;
            }
            (Blamed::NotKnownYet, [(rows, bytes)]) => {
                // A message alone, the first on its connection, lost it:
                // charged once another message gets through.
                let known = rows
                    .ids()
                    .first()
                    .is_some_and(|id| self.suspects.contains(id));
                self.skip.extend(rows.ids());
                self.trial.failed_alone(
                    (
                    rows.clone(),
                    format!(
                        "the broker closed the connection on this message, or did not acknowledge it, sent alone ({bytes} bytes: above the broker's packet size limit? refused by its ACL?)"
                    ),
                    ),
                    silent,
                    known,
                );
                self.unproven = Some(error.clone());
            }
            // Several in doubt (a DISCONNECT naming the oldest in a full
            // window among them): they go alone, the oldest first.
            _ => {}
        }
        let unresolved: Vec<&Rows> = in_doubt
            .iter()
            .map(|(rows, _)| rows)
            .filter(|rows| !rows.ids().iter().any(|id| self.skip.contains(id)))
            .collect();
        let exhausted = self.trial.exhausted();
        if !retry
            || exhausted
            || self.summary.reconnects >= MAX_RECONNECTS
            || Instant::now() >= self.publish_deadline
        {
            // The message a DISCONNECT named is charged; the ones after it
            // are not suspects.
            if !named && let Some(rows) = unresolved.first() {
                let rows = (*rows).clone();
                self.suspect(&rows);
            }
            return Err(if exhausted {
                self.stop_error(&error)
            } else {
                error
            });
        }
        // Start again from the oldest message in doubt (or the next one
        // queued): rows marked meanwhile are not selected again, rows this
        // run is done with are skipped.
        let restart = unresolved
            .first()
            .and_then(|r| r.ids().first().copied())
            .or_else(|| {
                self.queue
                    .front()
                    .and_then(|m| m.rows.ids().first().copied())
            });
        if let Some(id) = restart {
            self.after = self.after.min(id - 1);
            self.queue.clear();
            self.more = true;
        }
        // A probation under way goes on: the messages it had still to
        // send one at a time are among those selected again.
        self.probation = self.probation.max(unresolved.len());
        if self.cfg.log.verbose {
            crate::sys::say!(
                "frameflush: {error}; reconnecting, then {} message(s) in doubt go one at a time",
                self.probation
            );
        }
        session.close();
        *session = self.reconnect(error)?;
        Ok(())
    }

    /// A new connection after `lost`; if it cannot be had, the run ends with
    /// both reasons.
    fn reconnect(&mut self, lost: Error) -> Result<Session> {
        self.summary.reconnects += 1;
        self.last_progress = Instant::now();
        self.connect().map_err(|e| {
            Error::new(
                lost.exit,
                format!("{}; reconnecting failed: {}", lost.message, e.message),
            )
        })
    }

    fn suspect(&mut self, rows: &Rows) {
        let Some(&id) = rows.ids().first() else {
            return;
        };
        if !self.suspects.contains(&id) {
            self.suspects.push(id);
            if self.suspects.len() > MAX_SUSPECTS {
                self.suspects.remove(0);
            }
            self.suspects_changed = true;
        }
    }

    fn forgive(&mut self, id: i64) {
        if let Some(i) = self.suspects.iter().position(|&s| s == id) {
            self.suspects.remove(i);
            self.suspects_changed = true;
        }
    }

    /// Rows whose message cannot go out on this connection (over the
    /// broker's Maximum Packet Size): failed now, never sent.
    fn fail_rows(&mut self, rows: &Rows, why: String) -> Result<()> {
        self.summary.failed += rows.ids().len() as u64;
        if !self.cfg.log.quiet && self.summary.failed <= MAX_ROW_ERRORS_SHOWN {
            crate::sys::say!("frameflush: {} not sent: {why}", rows.label());
        }
        let failed: Vec<(i64, String)> = rows.ids().iter().map(|&id| (id, why.clone())).collect();
        let quarantined = self.db.record_failures(&failed, self.cfg.max_attempts)?;
        self.note_quarantined(quarantined);
        Ok(())
    }

    fn note_quarantined(&mut self, quarantined: u64) {
        if quarantined > 0 && !self.cfg.log.quiet {
            crate::sys::say!(
                "frameflush: {quarantined} row(s) failed {} time(s) and are quarantined: see `frameflush failures`",
                self.cfg.max_attempts
            );
        }
        self.summary.quarantined += quarantined;
    }

    /// Starts the marking thread, unless it runs: once the broker has
    /// accepted the connection (a run that reaches no broker opens no
    /// second connection), and with its first read ahead asked for at once,
    /// so that the thread, its connection and that read are ready by the
    /// time the first chunk has gone out, not started by the first
    /// acknowledgement while the window waits.
    fn start_marking(&mut self) -> Result<()> {
        if self.marking.is_some() {
            return Ok(());
        }
        let marker = self.db.marker()?;
        // A reader of its own only saves waiting: when its connection
        // cannot be had (a server at its max_connections), the marking
        // thread reads between its commits and the run goes on.
        let reader = self.db.reader().unwrap_or_else(|e| {
            if self.cfg.log.verbose {
                crate::sys::say!("frameflush: rows are read ahead between marking commits: {e}");
            }
            None
        });
        self.marking = Some(Marking::start(
            marker,
            reader,
            renderer(self.cfg),
            COMMIT_ROWS,
            self.cfg.log.verbose,
        )?);
        self.read_ahead();
        Ok(())
    }

    /// Hands what was acknowledged to the marking thread (started when the
    /// broker accepted the connection, [`Drain::start_marking`]), with what
    /// is still queued and `in_flight` (the marking thread saves a commit
    /// when it sees the end coming, [`Marking::hand`]), and counts what it
    /// committed.
    fn hand_off(&mut self, in_flight: usize) -> Result<()> {
        if self.acked.is_empty() {
            return Ok(());
        }
        self.oldest_unmarked_ack = None;
        self.start_marking()?;
        if let Some(m) = &self.marking {
            m.hand_states(&mut self.learned)?;
            m.hand(&mut self.acked, self.queue.len() + in_flight, !self.more)?;
            self.summary.marked = self.marked_before + m.marked();
        }
        Ok(())
    }

    /// Acknowledged rows not yet committed as marked reached
    /// [`MAX_UNMARKED`]: nothing more is published until a commit makes
    /// room.
    fn capped(&self) -> bool {
        self.acked.len() + self.marking.as_ref().map_or(0, Marking::unmarked) >= MAX_UNMARKED
    }

    /// Marks what was acknowledged (waiting for the marking thread's
    /// commit) and records what was refused.
    fn mark(&mut self) -> Result<()> {
        self.record_refused()?;
        self.hand_off(0)?;
        match &self.marking {
            Some(m) => {
                m.hand_states(&mut self.learned)?;
                self.summary.marked = self.marked_before + m.flush()?;
            }
            // Nothing was acknowledged: no marks to write them with.
            None => self.write_learned()?,
        }
        Ok(())
    }

    fn record_refused(&mut self) -> Result<()> {
        self.oldest_unmarked_ack = None;
        if !self.refused.is_empty() {
            let refused = std::mem::take(&mut self.refused);
            let quarantined = self.db.record_failures(&refused, self.cfg.max_attempts)?;
            self.summary.refused_quarantined += quarantined;
            self.note_quarantined(quarantined);
        }
        Ok(())
    }

    /// State entries learned, written on their own: no marks to write them
    /// with.
    fn write_learned(&mut self) -> Result<()> {
        for (key, value) in std::mem::take(&mut self.learned) {
            self.db.set_state(&key, &value)?;
        }
        Ok(())
    }

    /// The run's last marks, with its end (`exit`) recorded in the same
    /// transaction: on a slow disk one commit less at the end of every run.
    /// Returns whether the end was recorded.
    fn mark_last(&mut self, exit: Exit) -> Result<bool> {
        self.record_refused()?;
        self.hand_off(0)?;
        let Some(m) = self.marking.take() else {
            self.write_learned()?;
            return Ok(false);
        };
        let handed = m.hand_states(&mut self.learned);
        // The marking thread ends; its connection closes.
        let (marked, ended) = m.finish(exit, self.marked_before);
        self.summary.marked = self.marked_before + marked;
        handed?;
        ended.map(|()| true)
    }

    /// Whatever was acknowledged is marked, also when the run failed; the
    /// suspects are saved when they changed, and the run's end is recorded,
    /// both with the last marks; the session says goodbye.
    fn finish(mut self, result: Result<()>, session: Option<Session>) -> Result<()> {
        let mut failure = result.err();
        // What stopped the publishing is the run's error, before any that
        // came while the window drained.
        if let Some((e, _)) = self.stopped.take() {
            failure = Some(e);
        }
        // Not proven guilty: tried alone again by the next run, and the run
        // did not deliver everything.
        let takes_nothing = self.trial.takes_nothing();
        let unproven = self.unproven.take().map(|e| {
            if takes_nothing {
                self.stop_error(&e)
            } else {
                e
            }
        });
        for (rows, _) in self.trial.unproven() {
            self.suspect(&rows);
        }
        if self.suspects_changed {
            let value = self
                .suspects
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            self.learned
                .push((suspects_key(self.cfg.target.sync_mask), value));
        }
        // The end as it stands, unless the last commit fails.
        let exit = exit_status(self.summary, failure.as_ref().or(unproven.as_ref()));
        let ended = match self.mark_last(exit) {
            Ok(ended) => ended,
            Err(e) => {
                failure.get_or_insert(e);
                false
            }
        };
        if let Some(e) = unproven {
            failure.get_or_insert(e);
        }
        if !ended {
            end_run(self.cfg, self.db, self.summary, failure.as_ref());
        }
        self.progress.finish();
        if let Some(session) = session {
            session.disconnect(DISCONNECT_WAIT);
        }
        if self.cfg.log.verbose
            && failure.is_none()
            && (!self.queue.is_empty() || self.more)
            && Instant::now() >= self.publish_deadline
        {
            crate::sys::say!("frameflush: --max-time reached; the rest waits for the next run");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
