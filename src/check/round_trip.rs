//! The round trip: proof that the broker accepts and routes what the next
//! run will send, for every topic of the backlog (within
//! [`super::MAX_TOPICS`]). One second connection (client id
//! `<id>-check-sub`, the same user) subscribes to the exact topics, in
//! batches of [`BATCH`]; the real next message of each topic of a batch
//! then goes out at QoS 1 on the first connection, as many at once as the
//! window allows; the PUBACKs (under MQTT 5 with their reason codes) are
//! awaited, and the messages' return through the subscription is awaited
//! once all are sent. Every wait is at most `--ack-timeout`, and the whole
//! round trip at most [`bound`].
//!
//! Under MQTT 3.1.1 the echo is the only proof: mosquitto acknowledges a
//! PUBLISH its ACL refuses and drops it, so a PUBACK without the echo is a
//! FAIL (77: the topic is refused, and a run would mark those rows sent).
//! Under MQTT 5 the PUBACK's reason code is the proof (0x87, and
//! ejabberd's 0x90, are a FAIL naming the topics); a success without the
//! echo means the subscription may not read the topic: a warning. So is a
//! subscription the broker refuses (SUBACK 0x80 and up; mosquitto's
//! dynamic security plugin does, its ACL file grants and then delivers
//! nothing): the PUBACK alone is reported. A connection the broker closes
//! is made again (at most [`MAX_LOSSES`] times), and the messages that
//! were in flight go out again one at a time, so that the one the broker
//! closed on is named. Nothing is marked, so each message checked goes out
//! once more with the next run.
//!
//! The PUBACK times give the round trip, and with the window the ceiling
//! of a run's rate: at most a window of messages per round trip.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Report;
use crate::config::{Broker, Config, Group, Wanted};
use crate::error::{Error, Exit};
use crate::session::reason::{self, Verdict};
use crate::session::{Incoming, Message, Options, Polled, Protocol, Session, Unsent};

/// Topics subscribed to, and then published, per batch.
pub const BATCH: usize = 50;
/// Connections the broker may close before the rest is left unchecked.
pub const MAX_LOSSES: usize = 8;
/// Topics named at most per line.
const NAMED: usize = 5;
/// Topics that went round shown one line each.
const SHOWN: usize = 3;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The longest the round trip of `topics` topics may take: per batch, one
/// wait for its SUBACKs and one for its PUBACKs, then one for the echoes.
pub fn bound(cfg: &Config, topics: usize) -> Duration {
    let batches = topics.div_ceil(BATCH).max(1) as u32;
    cfg.ack_timeout * (2 * batches + 1)
}

/// What became of one topic's message.
#[derive(Debug, Clone)]
enum Outcome {
    /// Not sent yet (or out of time).
    Unchecked,
    /// In flight since then.
    Sent(Instant),
    /// PUBACK (success) after this long; the echo is awaited.
    Acked(Duration),
    Echoed {
        ack: Duration,
        echo: Duration,
    },
    Refused {
        code: u8,
        reason: Option<String>,
        verdict: Verdict,
    },
    /// Acknowledged, and the broker closed the connection right after.
    AckedThenClosed,
    /// The broker closed the connection with this message alone in flight.
    Lost,
    /// No PUBACK within --ack-timeout.
    TimedOut,
    NotSent,
}

struct Topic {
    m: Message,
    /// Its subscription was granted: the echo can be awaited.
    verifiable: bool,
    outcome: Outcome,
    /// Times it went out (a message in flight when a connection was lost
    /// goes out again, alone).
    tries: u32,
    /// When it last went out.
    sent: Option<Instant>,
    /// It came back before its PUBACK, after this long.
    echo: Option<Duration>,
}

/// The round trip of every sample message, published on `publisher`
/// (connected as `pub_broker`), then the ceiling step. Returns the
/// publishing session when it is still usable (for its DISCONNECT).
pub fn run(
    cfg: &Config,
    pub_broker: &Broker,
    sub_broker: &Broker,
    publisher: Session,
    samples: Vec<Message>,
    per_message: (f64, f64),
    r: &mut Report,
) -> Option<Session> {
    let protocol = publisher.protocol();
    let wait = cfg.ack_timeout;
    let options = Options {
        broker: sub_broker,
        inflight: (BATCH + 14) as u16,
        max_payload: cfg.max_payload,
        wanted: Wanted::Only(protocol),
        log: cfg.log,
    };
    let mut sub = match Session::subscriber(&options, protocol) {
        Ok(s) => Some(s),
        Err(e) => {
            r.warn(
                "subscribe",
                format!(
                    "cannot verify routing: a second connection as {} was refused: {}",
                    sub_broker.client_id, e.message
                ),
                Value::Null,
            );
            None
        }
    };
    // The bound starts once the subscriber's connection is made (or not:
    // that is bounded by --connect-timeout).
    let started = Instant::now();
    let deadline = started + bound(cfg, samples.len());
    let mut t = Trip {
        cfg,
        pub_broker,
        protocol,
        publisher: Some(publisher),
        topics: samples
            .into_iter()
            .map(|m| Topic {
                m,
                verifiable: false,
                outcome: Outcome::Unchecked,
                tries: 0,
                sent: None,
                echo: None,
            })
            .collect(),
        by_rows: HashMap::new(),
        by_topic: HashMap::new(),
        measuring: true,
        alone: 0,
        losses: 0,
        deadline,
        stopped: None,
        refused_subs: Vec::new(),
        last_ack: None,
    };
    for (i, x) in t.topics.iter().enumerate() {
        t.by_rows.insert(x.m.rows.ids()[0], i);
        t.by_topic.insert(x.m.topic.clone(), i);
    }
    let count = t.topics.len();
    let mut start = 0;
    while start < count && t.stopped.is_none() {
        let end = (start + BATCH).min(count);
        if let Some(s) = sub.as_mut()
            && let Err(why) = t.subscribe(s, start..end)
        {
            r.warn(
                "subscribe",
                format!(
                    "cannot verify routing from topic {} on: {why}",
                    t.topics[start].m.topic
                ),
                Value::Null,
            );
            sub = None;
        }
        t.publish(&mut sub, start..end);
        start = end;
    }
    // The echoes still on their way.
    if let Some(s) = sub.as_mut() {
        let until = t
            .last_ack
            .map_or(Instant::now(), |a| a + wait)
            .min(t.deadline);
        t.await_echoes(s, until);
    }
    if let Some(s) = sub {
        s.disconnect(Duration::from_secs(1));
    }
    t.report(r, started.elapsed());
    t.ceiling(r, per_message);
    t.publisher
}

struct Trip<'a> {
    cfg: &'a Config,
    pub_broker: &'a Broker,
    protocol: Protocol,
    publisher: Option<Session>,
    topics: Vec<Topic>,
    /// A message's first row id, and its topic, to its index.
    by_rows: HashMap<i64, usize>,
    by_topic: HashMap<String, usize>,
    /// The first message goes out alone: its PUBACK time is the round
    /// trip, for the ceiling.
    measuring: bool,
    /// Messages still to go out one at a time (after a lost connection).
    alone: usize,
    losses: usize,
    deadline: Instant,
    /// Why the rest was not checked.
    stopped: Option<String>,
    /// Topics whose subscription the broker refused, with its code.
    refused_subs: Vec<(usize, u8, Option<String>)>,
    last_ack: Option<Instant>,
}

impl Trip<'_> {
    /// Subscribes to the topics of one batch and waits for their SUBACKs
    /// (in order). An error: the subscription's connection is of no more
    /// use.
    fn subscribe(&mut self, s: &mut Session, batch: std::ops::Range<usize>) -> Result<(), String> {
        for i in batch.clone() {
            s.subscribe(&self.topics[i].m.topic)
                .map_err(|e| e.message)?;
        }
        let until = (Instant::now() + self.cfg.ack_timeout).min(self.deadline);
        let mut next = batch.start;
        while next < batch.end {
            while let Some(inc) = s.incoming() {
                match inc {
                    Incoming::SubAck { code, reason } if next < batch.end => {
                        if code < 0x80 {
                            self.topics[next].verifiable = true;
                        } else {
                            self.refused_subs.push((next, code, reason));
                        }
                        next += 1;
                    }
                    Incoming::Publish { topic, payload } => self.echoed(&topic, &payload),
                    Incoming::SubAck { .. } => {}
                }
            }
            if next >= batch.end {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} SUBACK(s) missing after --ack-timeout",
                    batch.end - next
                ));
            }
            s.poll(left.min(Duration::from_millis(100)))
                .map_err(|b| b.error.message)?;
        }
        Ok(())
    }

    /// A message that came back through the subscription.
    fn echoed(&mut self, topic: &str, payload: &[u8]) {
        let i = match self.by_topic.get(topic) {
            Some(&i) => Some(i),
            // An alias the broker set: the payload tells.
            None if topic.is_empty() => self.topics.iter().position(|t| t.m.payload == payload),
            None => None,
        };
        let Some(i) = i else { return };
        let x = &mut self.topics[i];
        if x.m.payload != payload {
            return;
        }
        // Some brokers (ejabberd) deliver before they acknowledge.
        let echo = x.sent.map_or(Duration::ZERO, |at| at.elapsed());
        match x.outcome {
            Outcome::Acked(ack) => x.outcome = Outcome::Echoed { ack, echo },
            Outcome::Sent(_) => x.echo = Some(echo),
            _ => {}
        }
    }

    fn take_echoes(&mut self, s: &mut Session) {
        // At most a few hundred events per call: bounded.
        for _ in 0..500 {
            match s.poll(Duration::from_millis(1)) {
                Ok(Polled::Idle) | Err(_) => break,
                Ok(_) => {}
            }
        }
        while let Some(inc) = s.incoming() {
            if let Incoming::Publish { topic, payload } = inc {
                self.echoed(&topic, &payload);
            }
        }
    }

    fn await_echoes(&mut self, s: &mut Session, until: Instant) {
        loop {
            self.take_echoes(s);
            let waiting = self
                .topics
                .iter()
                .any(|t| t.verifiable && matches!(t.outcome, Outcome::Acked(_)));
            let left = until.saturating_duration_since(Instant::now());
            if !waiting || left.is_zero() {
                return;
            }
            if s.poll(left.min(Duration::from_millis(50))).is_err() {
                return;
            }
        }
    }

    /// A new publishing connection after the broker closed the last one.
    fn reconnect(&mut self) -> bool {
        if let Some(mut p) = self.publisher.take() {
            p.close();
        }
        self.losses += 1;
        if self.losses > MAX_LOSSES {
            self.stopped = Some(format!(
                "the broker closed the connection {} times",
                self.losses
            ));
            return false;
        }
        let options = Options {
            broker: self.pub_broker,
            inflight: self.cfg.inflight,
            max_payload: self.cfg.max_payload,
            wanted: Wanted::Only(self.protocol),
            log: self.cfg.log,
        };
        match Session::connect(&options, None, 0) {
            Ok((s, _)) => {
                self.publisher = Some(s);
                true
            }
            Err(e) => {
                self.stopped = Some(format!("cannot connect again: {}", e.message));
                false
            }
        }
    }

    /// Publishes the messages of one batch and waits for their PUBACKs.
    fn publish(&mut self, sub: &mut Option<Session>, batch: std::ops::Range<usize>) {
        let mut queue: VecDeque<usize> = batch.collect();
        let mut in_flight: Vec<usize> = Vec::new();
        let mut taken = Instant::now();
        let mut idle = false;
        loop {
            if let Some(s) = sub.as_mut()
                && (idle || taken.elapsed() >= Duration::from_millis(20))
            {
                self.take_echoes(s);
                taken = Instant::now();
            }
            idle = false;
            let oldest = in_flight
                .iter()
                .filter_map(|&i| match self.topics[i].outcome {
                    Outcome::Sent(at) => Some((at, i)),
                    _ => None,
                })
                .min();
            if let Some((at, i)) = oldest
                && at.elapsed() >= self.cfg.ack_timeout
            {
                // A run would stop here: so does the check.
                self.topics[i].outcome = Outcome::TimedOut;
                for j in in_flight.into_iter().filter(|&j| j != i) {
                    self.topics[j].outcome = Outcome::Unchecked;
                }
                self.stopped = Some("a PUBACK did not come".to_string());
                return;
            }
            if self.stopped.is_some() || Instant::now() >= self.deadline {
                self.stopped
                    .get_or_insert_with(|| "out of time".to_string());
                for i in in_flight {
                    self.topics[i].outcome = Outcome::Unchecked;
                }
                return;
            }
            if self.publisher.is_none() && !self.reconnect() {
                continue;
            }
            let Some(p) = self.publisher.as_mut() else {
                continue;
            };
            let window = if self.alone > 0 || self.measuring {
                1
            } else {
                p.window().max(1)
            };
            while in_flight.len() < window {
                let Some(i) = queue.pop_front() else { break };
                let x = &mut self.topics[i];
                x.tries += 1;
                match p.publish(x.m.clone()) {
                    Ok(()) => {
                        x.outcome = Outcome::Sent(Instant::now());
                        x.sent = Some(Instant::now());
                        x.echo = None;
                        in_flight.push(i);
                    }
                    Err(Unsent::TooLarge { .. }) => x.outcome = Outcome::NotSent,
                    Err(Unsent::Failed(_)) => x.outcome = Outcome::NotSent,
                }
            }
            if in_flight.is_empty() && queue.is_empty() {
                return;
            }
            match p.poll(Duration::from_millis(20)) {
                Ok(Polled::Acked(rows)) => {
                    let Some(&i) = self.by_rows.get(&rows.ids()[0]) else {
                        continue;
                    };
                    in_flight.retain(|&j| j != i);
                    self.measuring = false;
                    let took = match self.topics[i].outcome {
                        Outcome::Sent(at) => at.elapsed(),
                        _ => Duration::ZERO,
                    };
                    self.last_ack = Some(Instant::now());
                    self.topics[i].outcome = match self.topics[i].echo.take() {
                        Some(echo) => Outcome::Echoed { ack: took, echo },
                        None => Outcome::Acked(took),
                    };
                    if self.alone > 0 {
                        self.alone -= 1;
                        // mosquitto with max_queued_messages 0 acknowledges
                        // a refused MQTT 3.1.1 PUBLISH and then closes the
                        // connection: the next message must not take the
                        // blame.
                        if closed(p) {
                            self.topics[i].outcome = Outcome::AckedThenClosed;
                            self.publisher = None;
                        }
                    }
                }
                Ok(Polled::Refused(f)) => {
                    let Some(&i) = self.by_rows.get(&f.rows.ids()[0]) else {
                        continue;
                    };
                    in_flight.retain(|&j| j != i);
                    self.measuring = false;
                    self.alone = self.alone.saturating_sub(1);
                    self.topics[i].outcome = Outcome::Refused {
                        code: f.code,
                        reason: f.reason,
                        verdict: f.verdict,
                    };
                }
                Ok(Polled::Other) => {}
                Ok(Polled::Idle) => idle = true,
                Err(b) => {
                    self.publisher = None;
                    let alone_in_flight = in_flight.len() == 1
                        && !b.after_refusal
                        && (self.alone > 0 || self.topics[in_flight[0]].tries > 1);
                    if alone_in_flight {
                        let i = in_flight.remove(0);
                        self.topics[i].outcome = Outcome::Lost;
                        self.alone = self.alone.saturating_sub(1);
                    } else {
                        // Each goes out again alone: the one the broker
                        // closes on is then named.
                        let n = in_flight.len();
                        for i in in_flight.drain(..).rev() {
                            queue.push_front(i);
                        }
                        self.alone = self.alone.max(n);
                    }
                }
            }
        }
    }

    /// The report: one line per kind of failure (naming the topics), the
    /// first few topics that went round, and a summary.
    fn report(&self, r: &mut Report, took: Duration) {
        let checked = self
            .topics
            .iter()
            .filter(|t| !matches!(t.outcome, Outcome::Unchecked | Outcome::NotSent))
            .count();
        let total = self.topics.len();
        let wait = self.cfg.ack_timeout.as_secs_f64();
        let v311 = self.protocol == Protocol::V311;
        // Failures, grouped by kind (and code).
        let mut groups: BTreeMap<(u8, u8), Vec<usize>> = BTreeMap::new();
        let mut unverified = Vec::new();
        let mut shown = 0;
        for (i, t) in self.topics.iter().enumerate() {
            match &t.outcome {
                Outcome::Refused { code, .. } => groups.entry((0, *code)).or_default().push(i),
                Outcome::Acked(_) if t.verifiable && v311 => {
                    groups.entry((1, 0)).or_default().push(i)
                }
                Outcome::AckedThenClosed => groups.entry((2, 0)).or_default().push(i),
                Outcome::Lost => groups.entry((3, 0)).or_default().push(i),
                Outcome::TimedOut => groups.entry((4, 0)).or_default().push(i),
                Outcome::Acked(_) => unverified.push(i),
                Outcome::Echoed { ack, echo } if shown < SHOWN => {
                    shown += 1;
                    r.ok(
                        "round-trip",
                        format!(
                            "{}: accepted ({}, PUBACK in {}) and delivered back through the subscription (within {})",
                            t.m.topic,
                            t.m.rows.label(),
                            ms(*ack),
                            ms(*echo)
                        ),
                        json!({
                            "topic": t.m.topic,
                            "rows": t.m.rows.label(),
                            "ack_ms": ack.as_secs_f64() * 1000.0,
                            "echo": true,
                        }),
                    );
                }
                _ => {}
            }
        }
        let mut failed = 0;
        for ((kind, code), list) in &groups {
            failed += list.len();
            let names = name_topics(self.topics.iter().map(|t| &t.m.topic), list);
            let rows = rows_of(&self.topics, list);
            let head = format!("{checked} of {total} topic(s) checked, {} ", list.len());
            let (exit, text) = match kind {
                0 => {
                    let (verdict, why) = match &self.topics[list[0]].outcome {
                        Outcome::Refused {
                            verdict, reason, ..
                        } => (*verdict, reason.clone()),
                        _ => (Verdict::Refused(Exit::DataErr), None),
                    };
                    let exit = match verdict {
                        Verdict::Refused(exit) => exit,
                        Verdict::Stop | Verdict::Accepted => Exit::TempFail,
                    };
                    let hint = reason::refusal_hint(*code);
                    (
                        exit,
                        format!(
                            "{head}refused: {names}: the broker refused the message with {}{hint}; a run leaves {rows} unsent and retries them up to --max-attempts",
                            reason::describe(*code, why.as_deref())
                        ),
                    )
                }
                1 => (
                    Exit::NoPerm,
                    format!(
                        "{head}acknowledged but not routed: {names}: the broker acknowledged the message but did not route it: its ACL may refuse the topic (nothing came back through the subscription within {wait} s; an MQTT 3.1.1 broker acknowledges a refused message and drops it, and one that does not let this user read the topic back looks the same: `frameflush check -V 5` tells which, if the broker speaks MQTT 5); a run would mark {rows} sent and they may never arrive"
                    ),
                ),
                2 => (
                    Exit::NoPerm,
                    format!(
                        "{head}refused: {names}: the broker acknowledged the message and then closed the connection: its ACL may refuse the topic (mosquitto with max_queued_messages 0 does so); a run would mark {rows} sent and they may never arrive"
                    ),
                ),
                3 => (
                    Exit::DataErr,
                    format!(
                        "{head}not taken: {names}: the broker closed the connection on the message sent alone: its ACL may refuse the topic, or the message is over its packet size limit; a run would charge {rows} and quarantine them after --max-attempts runs"
                    ),
                ),
                _ => (
                    Exit::TempFail,
                    format!(
                        "{head}unanswered: {names}: no PUBACK within --ack-timeout {wait} s: a run would stop there and try again later"
                    ),
                ),
            };
            let topics: Vec<&str> = list
                .iter()
                .map(|&i| self.topics[i].m.topic.as_str())
                .collect();
            r.fail(
                "round-trip",
                Error::new(exit, text),
                json!({ "topics": topics, "checked": checked, "puback_code": (*kind == 0).then_some(*code) }),
            );
        }
        if !self.refused_subs.is_empty() {
            let list: Vec<usize> = self.refused_subs.iter().map(|(i, _, _)| *i).collect();
            let (_, code, why) = &self.refused_subs[0];
            r.warn(
                "subscribe",
                format!(
                    "cannot verify routing of {}: the broker refused the subscription ({}): the ACL does not let this user read the topic; the PUBACK alone is reported",
                    name_topics(self.topics.iter().map(|t| &t.m.topic), &list),
                    reason::describe(*code, why.as_deref())
                ),
                json!({ "suback_code": code, "topics": list.len() }),
            );
        }
        if !unverified.is_empty() {
            let names = name_topics(self.topics.iter().map(|t| &t.m.topic), &unverified);
            let not_routed = unverified.iter().any(|&i| self.topics[i].verifiable);
            r.warn(
                "round-trip",
                if not_routed {
                    format!(
                        "{names}: the broker accepted the message, but nothing came back through the subscription within {wait} s: cannot verify routing (the ACL may not let this user read the topic)"
                    )
                } else {
                    format!(
                        "{names}: the broker acknowledged the message; whether it routes the topic is not verified{}",
                        if self.protocol == Protocol::V311 {
                            " (under MQTT 3.1.1 a PUBACK proves little: a broker may acknowledge and drop)"
                        } else {
                            ""
                        }
                    )
                },
                json!({ "topics": unverified.len(), "echo": false }),
            );
        }
        let not_sent = self
            .topics
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::NotSent))
            .count();
        if not_sent > 0 {
            r.skip(
                "round-trip",
                format!(
                    "{not_sent} topic(s) not sent: their next message cannot go out (named above)"
                ),
            );
        }
        if let Some(why) = &self.stopped {
            let left = self
                .topics
                .iter()
                .filter(|t| matches!(t.outcome, Outcome::Unchecked))
                .count();
            if left > 0 {
                r.warn(
                    "round-trip",
                    format!("{left} other topic(s) not checked: {why}"),
                    json!({ "unchecked": left }),
                );
            }
        }
        let echoed = self
            .topics
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Echoed { .. }))
            .count();
        if failed == 0 && checked > 0 {
            r.ok(
                "round-trip",
                format!(
                    "{checked} of {total} topic(s) checked, none refused: {echoed} delivered back through the subscription, in {}{}",
                    ms(took),
                    if v311 {
                        " (under MQTT 3.1.1 this echo is the only proof: a run cannot see a refusal)"
                    } else {
                        ""
                    }
                ),
                json!({ "checked": checked, "topics": total, "refused": 0, "echoed": echoed, "ms": took.as_secs_f64() * 1000.0 }),
            );
        }
        // What the broker took (and, as far as can be seen, delivered):
        // each goes out once more with the next run. What an MQTT 3.1.1
        // broker acknowledged and did not route was dropped.
        let duplicates = self
            .topics
            .iter()
            .filter(|t| match t.outcome {
                Outcome::Echoed { .. } => true,
                Outcome::Acked(_) => !(t.verifiable && v311),
                _ => false,
            })
            .count();
        if duplicates > 0 {
            r.ok(
                "duplicates",
                format!(
                    "check marks nothing: the next run sends the {duplicates} message(s) the broker took once more (1 duplicate per topic checked)"
                ),
                json!({ "duplicates": duplicates }),
            );
        }
    }

    /// The rate a run cannot pass here: a window of messages per round
    /// trip.
    fn ceiling(&self, r: &mut Report, (per_message, per_frame): (f64, f64)) {
        let rtt = self
            .topics
            .iter()
            .filter_map(|t| match t.outcome {
                Outcome::Acked(a) | Outcome::Echoed { ack: a, .. } => Some(a),
                _ => None,
            })
            .min();
        let Some(rtt) = rtt else {
            r.skip(
                "ceiling",
                "no PUBACK measured: no round trip to compute it from",
            );
            return;
        };
        let cfg = self.cfg;
        let (window, receive_max) = match &self.publisher {
            Some(p) => (p.window(), p.limits().receive_max),
            None => (usize::from(cfg.inflight), None),
        };
        let secs = rtt.as_secs_f64().max(1e-6);
        let messages = window as f64 / secs;
        let readings = messages * per_message;
        let source = match receive_max {
            Some(rm) if usize::from(rm) <= usize::from(cfg.inflight) => {
                format!(
                    "the broker's Receive Maximum {rm}; --inflight {}",
                    cfg.inflight
                )
            }
            Some(rm) => format!(
                "--inflight {}; the broker's Receive Maximum {rm}",
                cfg.inflight
            ),
            None if self.protocol == Protocol::V5 => format!(
                "--inflight {}; the broker announces no Receive Maximum",
                cfg.inflight
            ),
            None => format!(
                "--inflight {}; MQTT 3.1.1 has no Receive Maximum",
                cfg.inflight
            ),
        };
        let broker_caps =
            receive_max.is_some_and(|rm| usize::from(rm) <= usize::from(cfg.inflight));
        let raise = match (cfg.group, broker_caps) {
            (Group::Row, true) => format!(
                "`--group frame` ({}) or a larger Receive Maximum on the broker (mosquitto: max_inflight_messages) raises it",
                frames(per_frame)
            ),
            (Group::Row, false) => format!(
                "`--group frame` ({}) or a larger --inflight raises it",
                frames(per_frame)
            ),
            (Group::Frame, true) => {
                "a larger Receive Maximum on the broker (mosquitto: max_inflight_messages) raises it".to_string()
            }
            (Group::Frame, false) => "a larger --inflight raises it".to_string(),
        };
        r.ok(
            "ceiling",
            format!(
                "window {window} ({source}) over a round trip of {}: at most {:.0} messages/s, {:.0} readings/s ({per_message:.1} per message); {raise}",
                ms(rtt),
                messages,
                readings
            ),
            json!({
                "window": window,
                "receive_maximum": receive_max,
                "round_trip_ms": rtt.as_secs_f64() * 1000.0,
                "messages_per_s": messages,
                "readings_per_s": readings,
                "readings_per_message": per_message,
                "readings_per_frame": per_frame,
            }),
        );
    }
}

/// "a/x/1", or "a/x/… (7 topics: a/x/1, a/x/2, …)" with the prefix
/// the topics share, or "(a/1, b/2)" when they share none.
fn name_topics<'a>(all: impl Iterator<Item = &'a String>, list: &[usize]) -> String {
    let all: Vec<&String> = all.collect();
    let picked: Vec<&str> = list.iter().map(|&i| all[i].as_str()).collect();
    let [first, rest @ ..] = picked.as_slice() else {
        return String::new();
    };
    if rest.is_empty() {
        return first.to_string();
    }
    let mut common = first.len();
    for p in rest {
        common = common.min(
            first
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let mut names: Vec<&str> = picked.iter().take(NAMED).copied().collect();
    if picked.len() > NAMED {
        names.push("…");
    }
    let names = names.join(", ");
    match first[..common].rfind('/') {
        Some(slash) => format!("{}… ({} topics: {names})", &first[..=slash], picked.len()),
        None => format!("{} topics ({names})", picked.len()),
    }
}

/// The rows of the messages listed: "rows 4, 9, 14" or "row 4".
fn rows_of(topics: &[Topic], list: &[usize]) -> String {
    let labels: Vec<String> = list
        .iter()
        .take(NAMED)
        .map(|&i| topics[i].m.rows.label())
        .collect();
    let mut s = labels.join(", ");
    if list.len() > NAMED {
        s.push_str(&format!(
            " and the messages of {} other topic(s)",
            list.len() - NAMED
        ));
    }
    s
}

/// What `--group frame` would carry per message, in the next rows.
fn frames(per_frame: f64) -> String {
    if per_frame > 1.05 {
        format!("{per_frame:.1} readings per message in the next rows")
    } else {
        "the next rows' frames hold one reading each: it would not help here".to_string()
    }
}

/// Whether the broker closed the publishing connection after its last
/// PUBACK, polled for a moment.
fn closed(s: &mut Session) -> bool {
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match s.poll(left.min(Duration::from_millis(50))) {
            Ok(Polled::Idle) => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_topics_are_named_with_their_shared_prefix_and_counted_past_five() {
        let all: Vec<String> = (0..8).map(|i| format!("sensors/node_03/S{i}")).collect();
        let list: Vec<usize> = (0..8).collect();
        let s = name_topics(all.iter(), &list);
        assert!(
            s.starts_with("sensors/node_03/… (8 topics: sensors/node_03/S0, "),
            "{s}"
        );
        assert!(s.ends_with("sensors/node_03/S4, …)"), "{s}");
        let other = ["a/1".to_string(), "b/2".to_string()];
        assert_eq!(name_topics(other.iter(), &[0, 1]), "2 topics (a/1, b/2)");
        assert_eq!(name_topics(all.iter(), &[2]), "sensors/node_03/S2");
    }
}
