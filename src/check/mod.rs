//! `frameflush check`: before the first timer run, walk the path a run
//! takes and say, one plain line per step, what is right (`ok`), what
//! deserves a look (`warn`) and what to fix (`FAIL`), marking nothing. It
//! takes exactly the options of `flush` (the same [`Config`]) and goes in a
//! run's order: the configuration; the database (kind, writable, index,
//! backlog, and for MySQL the high-water mark with a full scan below it)
//! and the run lock; the broker (DNS, TCP, TLS and the broker's
//! certificate, CONNACK, the MQTT 5 limits); the messages the next run
//! would send; the topics of the whole backlog (within [`MAX_TOPICS`] and
//! [`MAX_SCAN_ROWS`]); a round trip that publishes the real next message of
//! each of those topics and waits for it to come back through a
//! subscription on a second connection (the one proof, under MQTT 3.1.1,
//! that the broker routes what it acknowledges), and the ceiling of a
//! run's rate it implies; and the timer. A failure that makes later
//! steps meaningless turns them into `skip` lines. The exit status is what
//! `flush` would give for the first failure (see [`Report::finish`]).
//!
//! `check` writes nothing to the database: no row marked, no failure
//! recorded, not even the protocol a broker was found to speak (the next
//! run learns it again in one CONNECT). It holds the run lock while it
//! runs, so that a timer run starting meanwhile exits 75 at once instead of
//! connecting with the same client id and throwing check (or itself) off
//! the broker. Its parts: `probe` (DNS, TCP, TLS), `round_trip`, `cert`
//! (certificate dates), `schedule` (systemd timers).

#[cfg(feature = "tls")]
mod cert;
mod probe;
mod round_trip;
mod schedule;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use crate::batch::{messages, next_rows};
use crate::cli::CheckArgs;
use crate::config::{Config, Wanted};
use crate::error::{Error, Exit, Result};
use crate::session::{Message, Options, Protocol, Session};
use crate::source::{self, HighWater, Index, Mode, Source};
use crate::sys::{age, out, print_json};

/// Distinct topics the round trip checks at most (each costs one
/// duplicate message).
pub const MAX_TOPICS: usize = 1000;
/// Unsent rows read at most to find the backlog's topics.
pub const MAX_SCAN_ROWS: u64 = 100_000;
/// Messages shown, one line each.
const ROUND_TRIP_SHOWN: usize = 3;
/// Rows that cannot be sent named at most, one line each.
const ROWS_NAMED: usize = 5;
/// A certificate expiring sooner than this many days is a warning.
#[cfg(feature = "tls")]
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// How long the DISCONNECTs at the end may take.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// The verdict of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not done: an earlier failure makes it meaningless, or it does not
    /// apply here.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub status: Status,
    pub text: String,
    /// The step's numbers and facts, for `--json`.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub figures: serde_json::Map<String, Value>,
    /// For a FAIL: the exit status `flush` would give for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
}

/// The report: printed line by line as the steps go (text), or kept for one
/// JSON object at the end (`--json`).
pub struct Report {
    steps: Vec<Step>,
    json: bool,
    first_failure: Option<Error>,
}

/// `check --json`: every step, the exit status and the first failure.
#[derive(Serialize)]
struct JsonReport<'a> {
    steps: &'a [Step],
    exit_code: u8,
    error: Option<&'a str>,
}

impl Report {
    fn new(json: bool) -> Report {
        Report {
            steps: Vec::new(),
            json,
            first_failure: None,
        }
    }

    fn add(&mut self, name: &'static str, status: Status, text: String, figures: Value) {
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if !self.json {
            out(&format!("{:<5}{name}: {text}", status.label()));
        }
        let figures = match figures {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        self.steps.push(Step {
            name,
            status,
            text,
            figures,
            exit_code: None,
        });
    }

    pub fn ok(&mut self, name: &'static str, text: impl Into<String>, figures: Value) {
        self.add(name, Status::Ok, text.into(), figures);
    }

    pub fn warn(&mut self, name: &'static str, text: impl Into<String>, figures: Value) {
        self.add(name, Status::Warn, text.into(), figures);
    }

    pub fn skip(&mut self, name: &'static str, text: impl Into<String>) {
        self.add(name, Status::Skip, text.into(), Value::Null);
    }

    /// A failure: its line, and the exit status `flush` would give for it.
    pub fn fail(&mut self, name: &'static str, e: Error, figures: Value) {
        self.add(name, Status::Fail, e.message.clone(), figures);
        if let Some(step) = self.steps.last_mut() {
            step.exit_code = Some(e.exit.code());
        }
        if self.first_failure.is_none() {
            self.first_failure = Some(e);
        }
    }

    /// Prints the JSON object (`--json`) and gives the exit status: that
    /// of the first failure (`main` prints its line on stderr), else 0;
    /// warnings do not change it.
    fn finish(self) -> Result<Exit> {
        if self.json {
            print_json(&JsonReport {
                steps: &self.steps,
                exit_code: self.first_failure.as_ref().map_or(0, |e| e.exit.code()),
                error: self.first_failure.as_ref().map(|e| e.message.as_str()),
            });
        }
        match self.first_failure {
            Some(e) => Err(e),
            None => Ok(Exit::Ok),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A payload as a line can show it: UTF-8 (lossy), no control
/// characters, at most `max` characters.
fn shown(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > max {
        s.push('…');
    }
    s
}

/// "until 2027-12-01 (365 days)", and whether that is soon (or past).
#[cfg(feature = "tls")]
pub fn validity(f: &cert::Facts, now: i64) -> (Status, String) {
    // Whole days left, rounded up: a certificate made for 10 days has 10.
    let days = (f.not_after - now + 86_399).div_euclid(86_400);
    let until = cert::date(f.not_after);
    if f.not_after <= now {
        (Status::Warn, format!("EXPIRED on {until}"))
    } else if f.not_before > now {
        (
            Status::Warn,
            format!(
                "not valid before {} (is this machine's clock right?), until {until}",
                cert::date(f.not_before)
            ),
        )
    } else if days < EXPIRY_WARNING_DAYS {
        (
            Status::Warn,
            format!("valid until {until}: expires in {days} day(s), renew it"),
        )
    } else {
        (Status::Ok, format!("valid until {until} ({days} days)"))
    }
}

/// `frameflush check`: runs every step, prints the report, and returns the
/// first failure (whose line `main` prints) or 0. `quiet` is set when the
/// configuration asks for no error line.
pub fn check(args: &CheckArgs, quiet: &mut bool) -> Result<Exit> {
    *quiet = args.flush.quiet;
    let mut r = Report::new(args.flush.json);
    let env = |k: &str| std::env::var_os(k);
    let cfg = match Config::build(&args.flush, &env) {
        Ok(cfg) => cfg,
        Err(e) => {
            r.fail("config", e, Value::Null);
            return r.finish();
        }
    };
    *quiet = cfg.log.quiet;
    r.json = cfg.json;
    let mut c = Check {
        cfg: &cfg,
        no_publish: args.no_publish || cfg.dry_run,
        r,
        db: None,
        run_in_progress: false,
        remembered: None,
        readings_per_message: 1.0,
        readings_per_frame: 1.0,
    };
    c.config(args.flush.config.as_deref());
    c.database();
    let session = c.broker();
    let samples = c.templates(session.as_ref());
    let session = c.round_trip(session, samples);
    if let Some(s) = session {
        s.disconnect(DISCONNECT_WAIT);
    }
    schedule::timer(args.flush.config.as_deref(), &mut c.r);
    c.last_run();
    drop(c.db);
    c.r.finish()
}

struct Check<'a> {
    cfg: &'a Config,
    no_publish: bool,
    r: Report,
    /// The database, open read-only, holding the run lock when it was free.
    db: Option<Box<dyn Source>>,
    /// A run holds the lock now: check does not connect with its client id.
    run_in_progress: bool,
    /// The protocol remembered for this broker, as a run would read it.
    remembered: Option<String>,
    /// Readings per message in the next chunk, as sent and as `--group
    /// frame` would send them (for the ceiling).
    readings_per_message: f64,
    readings_per_frame: f64,
}

impl Check<'_> {
    fn config(&mut self, file: Option<&str>) {
        let cfg = self.cfg;
        let b = &cfg.broker;
        let wanted = match cfg.protocol {
            Wanted::Auto => "MQTT auto (5, else 3.1.1)".to_string(),
            Wanted::Only(p) => p.label().to_string(),
        };
        let login = match (&b.username, &b.password_from) {
            (Some(u), Some(from)) => format!("user {u} with the password from {from}"),
            (Some(u), None) => format!("user {u} without a password"),
            (None, _) => "no user name".to_string(),
        };
        let from = match file {
            Some(f) => format!("{f} read"),
            None => "no config file".to_string(),
        };
        self.r.ok(
            "config",
            format!(
                "{from}, every value valid; broker {}:{} over {}, {wanted}, client id {}, {login}; sync mask {}",
                b.host,
                b.port,
                if b.tls.is_some() { "TLS" } else { "plain TCP" },
                b.client_id,
                cfg.target.sync_mask
            ),
            json!({
                "config_file": file,
                "host": b.host,
                "port": b.port,
                "tls": b.tls.is_some(),
                "client_id": b.client_id,
                "username": b.username,
                "password_from": b.password_from,
                "sync_mask": cfg.target.sync_mask,
            }),
        );
        for w in &cfg.warnings {
            self.r.warn("config", w.clone(), Value::Null);
        }
        if cfg.dry_run {
            self.r.warn(
                "config",
                "--dry-run: check publishes nothing (as with --no-publish)",
                Value::Null,
            );
        }
        self.tls_files();
    }

    /// The CA and client certificate files: read and parsed (by the
    /// configuration), and the client certificate's dates.
    #[cfg(feature = "tls")]
    fn tls_files(&mut self) {
        let Some(tls) = &self.cfg.broker.tls else {
            return;
        };
        let ca = match &tls.cafile {
            Some(path) => match crate::tls::pem_certificates(path, "CA file") {
                Ok(certs) => {
                    let names: Vec<String> = certs
                        .iter()
                        .filter_map(|d| cert::facts(d))
                        .map(|f| f.subject)
                        .take(3)
                        .collect();
                    format!(
                        "CA file {} holds {} certificate(s) ({})",
                        path.display(),
                        certs.len(),
                        names.join("; ")
                    )
                }
                Err(e) => {
                    self.r.fail("tls-files", e, Value::Null);
                    return;
                }
            },
            None => "the broker is checked against the system's CA certificates".to_string(),
        };
        let Some(path) = &tls.cert else {
            self.r.ok(
                "tls-files",
                format!("{ca}; no client certificate"),
                Value::Null,
            );
            return;
        };
        let facts = crate::tls::pem_certificates(path, "certificate file")
            .ok()
            .and_then(|certs| certs.first().and_then(|d| cert::facts(d)));
        match facts {
            Some(f) => {
                let (status, valid) = validity(&f, unix_now());
                let text = format!(
                    "{ca}; client certificate {} ({}, issued by {}) {valid}",
                    path.display(),
                    f.subject,
                    f.issuer
                );
                let figures = json!({
                    "client_cert_not_after": cert::date(f.not_after),
                    "client_cert_days_left": (f.not_after - unix_now() + 86_399).div_euclid(86_400),
                });
                match status {
                    Status::Ok => self.r.ok("tls-files", text, figures),
                    _ => self.r.warn("tls-files", text, figures),
                }
            }
            None => self.r.warn(
                "tls-files",
                format!(
                    "{ca}; client certificate {}: its dates cannot be read",
                    path.display()
                ),
                Value::Null,
            ),
        }
    }

    #[cfg(not(feature = "tls"))]
    fn tls_files(&mut self) {}

    /// Database, writable, index, backlog, lock.
    fn database(&mut self) {
        let cfg = self.cfg;
        let path = cfg.target.db.display().to_string();
        let opened =
            source::open(&cfg.target, Mode::ReadOnly).and_then(|db| db.health().map(|h| (db, h)));
        let (mut db, health) = match opened {
            Ok(v) => v,
            Err(e) => {
                self.r.fail("database", e, Value::Null);
                for step in ["writable", "index", "backlog", "lock"] {
                    self.r.skip(step, "no database to look at");
                }
                return;
            }
        };
        self.r.ok(
            "database",
            format!(
                "{path}: {}, table sensorParser has every column frameflush reads",
                health.kind.as_deref().unwrap_or("opened")
            ),
            json!({ "db": path, "kind": health.kind }),
        );
        if !health.unwritable.is_empty() {
            let exit = health.unwritable_exit.unwrap_or(Exit::IoErr);
            self.r.fail(
                "writable",
                Error::new(
                    exit,
                    format!(
                        "{}; a run would stop before publishing anything ({})",
                        health.unwritable.join("; "),
                        exit.code()
                    ),
                ),
                Value::Null,
            );
        } else if let Some(w) = health.writable {
            self.r.ok("writable", w, Value::Null);
        } else {
            self.r
                .skip("writable", "not checked for this kind of database");
        }
        match health.index {
            Some(Index::Present(name)) => self.r.ok(
                "index",
                format!("{name} is there: finding unsent rows reads no sent ones"),
                json!({ "index": name, "exists": true }),
            ),
            Some(Index::Missing(name)) => {
                let rows = db.total().map_or("its".to_string(), |n| n.to_string());
                self.r.warn(
                    "index",
                    format!(
                        "{name} is missing: the next run creates it (one pass over the table's {rows} rows); `frameflush init` makes it now"
                    ),
                    json!({ "index": name, "exists": false }),
                );
            }
            Some(Index::NotNeeded(why)) => {
                self.r
                    .ok("index", why, json!({ "index": null, "needed": false }))
            }
            None => self
                .r
                .skip("index", "not checked for this kind of database"),
        }
        self.backlog(&*db);
        if let Some(hw) = health.high_water {
            self.high_water(&hw);
        }
        match db.lock_run() {
            Ok(()) => self.r.ok(
                "lock",
                "no run holds the run lock now; check holds it until it ends (a run starting meanwhile exits 75, the next one goes on)",
                Value::Null,
            ),
            Err(e) if e.exit == Exit::TempFail => {
                self.run_in_progress = true;
                self.r.warn(
                    "lock",
                    format!(
                        "{}: a run is going on now; check connects as {}-check so as not to throw it off the broker",
                        e.message, cfg.broker.client_id
                    ),
                    Value::Null,
                );
            }
            Err(e) => self.r.fail("lock", e, Value::Null),
        }
        self.remembered = db.state(&crate::drain::protocol_key(cfg)).ok().flatten();
        self.db = Some(db);
    }

    fn backlog(&mut self, db: &dyn Source) {
        let got = db.backlog().and_then(|unsent| {
            let (oldest, age_s) = db.oldest_unsent()?;
            let (quarantined, failing) = db.failure_counts()?;
            Ok((unsent, oldest, age_s, quarantined, failing))
        });
        let (unsent, oldest, age_s, quarantined, failing) = match got {
            Ok(v) => v,
            Err(e) => {
                self.r.fail("backlog", e, Value::Null);
                return;
            }
        };
        let oldest_text = match (&oldest, age_s) {
            (Some(t), Some(a)) => format!(", the oldest from {t} ({} ago)", age(a)),
            (Some(t), None) => format!(", the oldest from {t}"),
            (None, _) => String::new(),
        };
        let mut text = format!(
            "{unsent} unsent row(s){oldest_text}; {quarantined} quarantined, {failing} failing but to be retried"
        );
        // Rows whose sync is NULL (sent nowhere yet), and the suspects a
        // run holds: told, not judged.
        let null_sync = db.null_sync().unwrap_or(0);
        if null_sync > 0 {
            text.push_str(&format!(
                "; {null_sync} row(s) with sync NULL (sent to no destination yet, counted above)"
            ));
        }
        let suspects = db.suspects().unwrap_or_default();
        if !suspects.is_empty() {
            let list: Vec<String> = suspects
                .iter()
                .map(|s| format!("row {} ({})", s.row_id, s.why))
                .collect();
            text.push_str(&format!(
                "; {} suspect(s) held, tried alone first by the next run: {}",
                suspects.len(),
                list.join(", ")
            ));
        }
        let figures = json!({
            "unsent": unsent,
            "oldest_unsent": oldest,
            "oldest_unsent_age_s": age_s,
            "quarantined": quarantined,
            "failing": failing,
            "null_sync": null_sync,
            "suspects": suspects,
        });
        if quarantined > 0 {
            self.r.warn(
                "backlog",
                format!("{text}: see `frameflush failures`, and `frameflush requeue` once fixed"),
                figures,
            );
        } else {
            self.r.ok("backlog", text, figures);
        }
    }

    /// The high-water mark, and the rows a full scan found below it now
    /// (committed late: InnoDB transactions that outlived the margin).
    fn high_water(&mut self, hw: &HighWater) {
        let mask = self.cfg.target.sync_mask;
        let due = match hw.full_scan_in_s {
            0 => "the next run".to_string(),
            s => format!("in {}", age(s)),
        };
        let figures = json!({
            "high_water_mark": hw.mark,
            "unsent_below": hw.unsent_below,
            "full_scan_in_s": hw.full_scan_in_s,
        });
        match hw.mark {
            None => self.r.ok(
                "high-water",
                format!(
                    "no high-water mark yet for sync mask {mask}: the first run reads the whole table once and sets it"
                ),
                figures,
            ),
            Some(mark) if hw.unsent_below == 0 => self.r.ok(
                "high-water",
                format!(
                    "sync mask {mask} at id {mark}: a full scan found every row up to it sent or quarantined; a run reads only the rows after it (next full scan: {due})"
                ),
                figures,
            ),
            Some(mark) => self.r.warn(
                "high-water",
                format!(
                    "{} unsent row(s) below the high-water mark {mark} of sync mask {mask} (committed late, or their bit cleared since): the next full scan (hourly, {due}) sends them",
                    hw.unsent_below
                ),
                figures,
            ),
        }
    }

    /// The broker as this check connects to it: with the run's client id,
    /// unless a run is using it now.
    fn publisher_broker(&self) -> crate::config::Broker {
        let mut b = self.cfg.broker.clone();
        if self.run_in_progress {
            b.client_id.push_str("-check");
        }
        b
    }

    /// DNS, TCP, TLS, CONNACK, limits. Returns the connected session.
    fn broker(&mut self) -> Option<Session> {
        let cfg = self.cfg;
        if !probe::reach(cfg, &mut self.r) {
            self.r.skip("connack", "the broker cannot be reached");
            self.r.skip("limits", "the broker cannot be reached");
            return None;
        }
        let broker = self.publisher_broker();
        let options = Options {
            broker: &broker,
            inflight: cfg.inflight,
            max_payload: cfg.max_payload,
            wanted: cfg.protocol,
            log: cfg.log,
        };
        let now = unix_now().max(0) as u64;
        let session = match Session::connect(&options, self.remembered.as_deref(), now) {
            Ok((s, _learned)) => s,
            Err(e) => {
                self.r.fail("connack", e, Value::Null);
                self.r.skip("limits", "no CONNACK");
                return None;
            }
        };
        let protocol = session.protocol();
        let how = match (cfg.protocol, protocol) {
            (Wanted::Auto, Protocol::V5) => " (auto: the broker speaks MQTT 5)",
            (Wanted::Auto, Protocol::V311) => {
                " (auto: the broker does not speak MQTT 5, or was remembered not to)"
            }
            (Wanted::Only(_), _) => "",
        };
        self.r.ok(
            "connack",
            format!(
                "accepted as {} with {}{how}",
                broker.client_id,
                protocol.label()
            ),
            json!({ "protocol": protocol.short(), "client_id": broker.client_id }),
        );
        self.limits(&session);
        Some(session)
    }

    fn limits(&mut self, s: &Session) {
        let cfg = self.cfg;
        if s.protocol() == Protocol::V311 {
            self.r.ok(
                "limits",
                "MQTT 3.1.1 announces none, and its PUBACK has no reason code: a refusal is invisible to a run (a refused topic gets a PUBACK and silence, and the run marks its rows sent; a message over a limit, a dropped connection); the round trip's echo tells, and MQTT 5 (`-V auto` or `-V 5`, if the broker speaks it) shows refusals to every run",
                Value::Null,
            );
            return;
        }
        let l = s.limits();
        let none = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
        let receive = match l.receive_max {
            Some(rm) if usize::from(rm) < usize::from(cfg.inflight) => {
                format!("{rm} (caps --inflight {} to {rm})", cfg.inflight)
            }
            other => none(other.map(|v| v.to_string())),
        };
        let text = format!(
            "Receive Maximum {receive}, Maximum Packet Size {}, Topic Alias Maximum {}, Maximum QoS {}, retain {}",
            none(l.max_packet_size.map(|v| format!("{v} bytes"))),
            l.topic_alias_max,
            l.max_qos.unwrap_or(2),
            if l.retain_available == Some(false) {
                "not available (frameflush never retains)"
            } else {
                "available"
            },
        );
        let figures = json!({
            "receive_maximum": l.receive_max,
            "maximum_packet_size": l.max_packet_size,
            "topic_alias_maximum": l.topic_alias_max,
            "maximum_qos": l.max_qos,
            "retain_available": l.retain_available,
            "window": s.window(),
        });
        if l.max_qos == Some(0) {
            self.r.fail(
                "limits",
                Error::new(
                    Exit::Unavailable,
                    format!(
                        "{text}: the broker takes no QoS 1, and frameflush publishes at QoS 1 only"
                    ),
                ),
                figures,
            );
            return;
        }
        let biggest = Message {
            rows: crate::session::Rows::One(0),
            topic: "x".repeat(64),
            payload: vec![0; cfg.max_payload],
            json: true,
        };
        match l.max_packet_size {
            Some(max) if s.packet_bytes(&biggest) > max as usize => self.r.warn(
                "limits",
                format!(
                    "{text}: a payload near --max-payload {} would exceed it; such a row fails (65) without being sent",
                    cfg.max_payload
                ),
                figures,
            ),
            _ => self.r.ok("limits", text, figures),
        }
    }

    /// The messages the next run would send, each checked as a run would;
    /// returns the first message of each of a few distinct topics.
    fn templates(&mut self, session: Option<&Session>) -> Vec<Message> {
        let cfg = self.cfg;
        let Some(db) = self.db.as_deref() else {
            self.r.skip("templates", "no database to read rows from");
            return Vec::new();
        };
        let (rows, more) = match next_rows(cfg, db, 0, 0) {
            Ok(chunk) => (chunk.rows, chunk.more),
            Err(e) => {
                self.r.fail("templates", e, Value::Null);
                return Vec::new();
            }
        };
        if rows.is_empty() {
            self.r.ok(
                "templates",
                "no unsent row: nothing to render (the round trip needs one)",
                json!({ "rows": 0 }),
            );
            return Vec::new();
        }
        let selected = rows.len();
        let last_id = rows.last().map_or(0, |r| r.id);
        let first_rows = rows.clone();
        let mut queue = VecDeque::new();
        let mut bad: Vec<(String, String)> = messages(cfg, rows, &mut queue)
            .into_iter()
            .map(|(id, why)| (format!("row {id}"), why.0))
            .collect();
        let limit = session.and_then(|s| s.limits().max_packet_size);
        let mut good = Vec::new();
        for m in queue {
            match (session, limit) {
                (Some(s), Some(max)) if s.packet_bytes(&m) > max as usize => bad.push((
                    m.rows.label(),
                    format!(
                        "its PUBLISH of {} bytes exceeds the broker's Maximum Packet Size of {max} bytes",
                        s.packet_bytes(&m)
                    ),
                )),
                _ => good.push(m),
            }
        }
        for (what, why) in bad.iter().take(ROWS_NAMED) {
            self.r.fail(
                "row",
                Error::new(
                    Exit::DataErr,
                    format!(
                        "{what} cannot be sent: {why}; a run leaves it unsent (65) and quarantines it after --max-attempts runs"
                    ),
                ),
                json!({ "rows": what, "why": why }),
            );
        }
        if bad.len() > ROWS_NAMED {
            self.r.warn(
                "row",
                format!("… and {} more that cannot be sent", bad.len() - ROWS_NAMED),
                Value::Null,
            );
        }
        let topics: BTreeSet<&str> = good.iter().map(|m| m.topic.as_str()).collect();
        self.r.ok(
            "templates",
            format!(
                "the {selected} oldest unsent row(s) make {} message(s) on {} topic(s){}",
                good.len(),
                topics.len(),
                if bad.is_empty() {
                    String::new()
                } else {
                    format!("; {} cannot be sent (above)", bad.len())
                }
            ),
            json!({
                "rows": selected,
                "messages": good.len(),
                "topics": topics.len(),
                "unsendable": bad.len(),
            }),
        );
        // Readings per message, as sent and as `--group frame` would send
        // them (for the ceiling).
        let sent_rows: usize = good.iter().map(|m| m.rows.ids().len()).sum();
        self.readings_per_message = sent_rows as f64 / good.len().max(1) as f64;
        let frames = crate::batch::split_frames(first_rows).len();
        self.readings_per_frame = selected as f64 / frames.max(1) as f64;
        let mut seen = BTreeSet::new();
        let mut samples = Vec::new();
        for m in good {
            if seen.insert(m.topic.clone()) {
                samples.push(m);
            }
        }
        for m in samples.iter().take(ROUND_TRIP_SHOWN) {
            self.r.ok(
                "message",
                format!(
                    "{} → {} ({} bytes): {}",
                    m.rows.label(),
                    m.topic,
                    m.payload.len(),
                    shown(&m.payload, 100)
                ),
                json!({ "rows": m.rows.ids(), "topic": m.topic, "bytes": m.payload.len() }),
            );
        }
        Self::backlog_topics(
            cfg,
            &mut self.r,
            db,
            (last_id, more, selected as u64),
            &mut seen,
            &mut samples,
        );
        samples
    }

    /// The topics of the rest of the backlog, beyond the first chunk: the
    /// first message of each new topic joins `samples`, within
    /// [`MAX_TOPICS`] topics and [`MAX_SCAN_ROWS`] rows (and what `--limit`
    /// leaves a run). States what was scanned and the round trip's bound.
    fn backlog_topics(
        cfg: &Config,
        r: &mut Report,
        db: &dyn Source,
        (mut after, mut more, mut scanned): (i64, bool, u64),
        seen: &mut BTreeSet<String>,
        samples: &mut Vec<Message>,
    ) {
        while more && scanned < MAX_SCAN_ROWS && samples.len() < MAX_TOPICS {
            let chunk = match next_rows(cfg, db, after, scanned) {
                Ok(c) => c,
                Err(e) => {
                    r.warn(
                        "topics",
                        format!("cannot read the rest of the backlog: {}", e.message),
                        Value::Null,
                    );
                    break;
                }
            };
            let Some(last) = chunk.rows.last() else {
                more = false;
                break;
            };
            after = last.id;
            more = chunk.more;
            scanned += chunk.rows.len() as u64;
            let mut queue = VecDeque::new();
            // Rows that cannot become a message are the templates step's
            // business (the first chunk's are named there); here only
            // topics count.
            let _ = messages(cfg, chunk.rows, &mut queue);
            for m in queue {
                if samples.len() < MAX_TOPICS && seen.insert(m.topic.clone()) {
                    samples.push(m);
                }
            }
        }
        let whole = !more;
        let how_far = if whole {
            format!("the {scanned} unsent row(s) a run would send")
        } else {
            format!(
                "the first {scanned} unsent row(s) (check reads at most {MAX_SCAN_ROWS} rows and {MAX_TOPICS} topics)"
            )
        };
        let batches = samples.len().div_ceil(round_trip::BATCH).max(1);
        let wait = cfg.ack_timeout.as_secs_f64();
        let bound = round_trip::bound(cfg, samples.len());
        let text = format!(
            "{} topic(s) in {how_far}; the round trip sends the next message of each ({} batch(es) of at most {} topics on one subscriber connection, each wait at most --ack-timeout {wait} s, {} s in all at most, and --connect-timeout for each connection it makes)",
            samples.len(),
            batches,
            round_trip::BATCH,
            bound.as_secs_f64()
        );
        let figures = json!({
            "topics": samples.len(),
            "rows_scanned": scanned,
            "whole_backlog": whole,
            "max_topics": MAX_TOPICS,
            "max_rows_scanned": MAX_SCAN_ROWS,
            "batches": batches,
            "bound_s": bound.as_secs_f64(),
        });
        if whole {
            r.ok("topics", text, figures);
        } else {
            r.warn("topics", text, figures);
        }
    }

    fn round_trip(&mut self, session: Option<Session>, samples: Vec<Message>) -> Option<Session> {
        let Some(session) = session else {
            self.r.skip("round-trip", "no connection to the broker");
            return None;
        };
        if self.no_publish {
            self.r.skip("round-trip", "--no-publish: nothing published");
            return Some(session);
        }
        if samples.is_empty() {
            self.r.skip(
                "round-trip",
                "no message to send: run check again once rows are waiting",
            );
            return Some(session);
        }
        let mut sub_broker = self.cfg.broker.clone();
        sub_broker.client_id.push_str("-check-sub");
        let pub_broker = self.publisher_broker();
        round_trip::run(
            self.cfg,
            &pub_broker,
            &sub_broker,
            session,
            samples,
            (self.readings_per_message, self.readings_per_frame),
            &mut self.r,
        )
    }

    fn last_run(&mut self) {
        let Some(db) = self.db.as_deref() else {
            self.r.skip("last-run", "no database to look at");
            return;
        };
        let mask = self.cfg.target.sync_mask;
        match db.last_run() {
            Ok(None) => self.r.ok(
                "last-run",
                format!("no run with rows to send recorded yet for sync mask {mask}"),
                Value::Null,
            ),
            Ok(Some(run)) => {
                let figures = json!({
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                    "exit_code": run.exit_code,
                    "rows_marked": run.rows_marked,
                });
                match (&run.finished_at, run.exit_code) {
                    (Some(f), Some(code)) => {
                        let text = format!(
                            "sync mask {mask}: started {}, finished {f}, exit {code}, {} row(s) marked",
                            run.started_at, run.rows_marked
                        );
                        if code == 0 || code == 75 {
                            self.r.ok("last-run", text, figures);
                        } else {
                            self.r.warn(
                                "last-run",
                                format!("{text}: see `frameflush --help` for what {code} means"),
                                figures,
                            );
                        }
                    }
                    _ => self.r.warn(
                        "last-run",
                        format!(
                            "sync mask {mask}: started {} and not finished: going on now, or killed",
                            run.started_at
                        ),
                        figures,
                    ),
                }
            }
            Err(e) => self.r.warn("last-run", e.message, Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tls")]
    #[test]
    fn a_certificate_is_a_warning_within_30_days_of_its_end_and_once_expired() {
        let now = 1_800_000_000;
        let f = |days: i64| cert::Facts {
            subject: String::new(),
            issuer: String::new(),
            not_before: now - 86_400,
            not_after: now + days * 86_400 - 60,
        };
        assert_eq!(validity(&f(365), now).0, Status::Ok);
        assert_eq!(validity(&f(30), now).0, Status::Ok);
        let (status, text) = validity(&f(10), now);
        assert_eq!(status, Status::Warn);
        assert!(text.contains("expires in 10 day(s)"), "{text}");
        let (status, text) = validity(&f(-2), now);
        assert_eq!(status, Status::Warn);
        assert!(text.contains("EXPIRED"), "{text}");
    }

    #[test]
    fn shown_payloads_are_one_line_and_cut() {
        assert_eq!(shown(b"a\nb", 10), "a b");
        assert_eq!(shown("é".repeat(5).as_bytes(), 3), "ééé…");
    }
}
