//! The MQTT session: one clean connection to the broker, a bounded window of
//! QoS 1 PUBLISHes, and the correlation of each PUBACK with the rows it
//! acknowledges, written once for both protocol versions.
//!
//! What differs between MQTT 3.1.1 and MQTT 5 (rumqttc's client of each, the
//! size of a PUBLISH on the wire, what a CONNACK, a PUBACK or a DISCONNECT
//! can say) sits behind the small [`Wire`] trait, implemented in `v311` and
//! `v5`. [`Session`] owns the rest: the protocol choice (`auto`: MQTT 5
//! first, 3.1.1 when [`crate::blame::protocol`] says the broker answered as
//! a 3.1.1-only one, the answer remembered by the caller as an opaque
//! string; every attempt within the caller's deadline), the window (at most `--inflight`, and
//! under MQTT 5 at most the broker's Receive Maximum), the Maximum Packet
//! Size check before anything is sent, topic aliases, and the blame when a
//! connection dies: the message the broker's DISCONNECT names, or the oldest
//! unacknowledged one as a suspect. `run` sees only [`Session`]. `check`
//! also opens a second, receiving session ([`Session::subscriber`],
//! [`Session::subscribe`], [`Session::incoming`]) for its round trip; a run
//! never subscribes.
//!
//! rumqttc's `publish` returns no packet id, so [`Tracker`] follows the
//! order in which the event loop reports `Outgoing::Publish(pkid)` (or
//! `Outgoing::AwaitAck(pkid)` when an id is still taken) for the requests
//! it was handed. The window is kept below rumqttc's request channel
//! capacity, so `try_publish` never meets a full channel. After any
//! connection error the session is finished: rumqttc would reconnect by
//! itself and, with a clean session, silently drop what was queued and in
//! flight, so those rows stay unsent. What rumqttc had read before the
//! error (PUBACKs it queued in `state.events`) is handed out first, then
//! the error.

/// `Wire::next` and `Wire::leftovers`, written once for both clients: the
/// same code over rumqttc's 3.1.1 and v5 types (`Connection`, `Event as
/// Ev`, `TryRecvError`, `RecvTimeoutError`), which share no trait. Expanded
/// inside each `impl Wire`, where those names and `self.event`/`self.fault`
/// are the client's own.
macro_rules! wire_events {
    () => {
        fn next(&mut self, until: Instant) -> Next {
            // An event already there is taken without a timer: recv_timeout's
            // runtime entry and timer cost more than the event (callgrind),
            // and without reading the clock for the wait.
            let got = match self.connection.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => self
                    .connection
                    .recv_timeout(until.saturating_duration_since(Instant::now())),
            };
            let event = match got {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => return Next::Failed(self.fault(e)),
                Err(RecvTimeoutError::Timeout) => return Next::Idle,
                Err(RecvTimeoutError::Disconnected) => return Next::Ended,
            };
            if self.log.debug {
                crate::sys::say!("frameflush: mqtt: {event:?}");
            }
            Next::Event(self.event(event))
        }

        fn leftovers(&mut self) -> Vec<Event> {
            let events: Vec<Ev> = self.connection.eventloop.state.events.drain(..).collect();
            events
                .into_iter()
                .map(|e| {
                    if self.log.debug {
                        crate::sys::say!(
                            "frameflush: mqtt (read before the connection failed): {e:?}"
                        );
                    }
                    self.event(e)
                })
                .collect()
        }
    };
}
use wire_events;

pub mod reason;
mod v311;
mod v5;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::blame::{self, ProtocolVerdict, V5Answer};
use crate::config::{Broker, Log};
pub use crate::config::{Protocol, Wanted};
use crate::error::{Error, Exit, Result};
use crate::sys::io_reason;
use reason::Verdict;

/// How often a broker remembered as 3.1.1-only is asked for MQTT 5 again
/// (it may have been upgraded): once a day costs one refused CONNECT.
pub const PROBE_INTERVAL_S: u64 = 24 * 3600;

/// How long the DISCONNECT of a 3.1.1 connection made only to see whether
/// the broker answers 3.1.1 may take.
const PROBE_GOODBYE: Duration = Duration::from_millis(300);

/// The rows one message carries: one row, or a whole Waspmote frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    One(i64),
    Frame(Vec<i64>),
}

impl Rows {
    pub fn ids(&self) -> &[i64] {
        match self {
            Rows::One(id) => std::slice::from_ref(id),
            Rows::Frame(ids) => ids,
        }
    }
    /// "row 7" or "rows 7-9", for error lines.
    pub fn label(&self) -> String {
        match self.ids() {
            [one] => format!("row {one}"),
            [first, .., last] => format!("rows {first}-{last}"),
            [] => "no row".to_string(),
        }
    }
}

/// A message ready to go: the rows it carries, its topic and payload.
#[derive(Debug, Clone)]
pub struct Message {
    pub rows: Rows,
    pub topic: String,
    pub payload: Vec<u8>,
    /// The payload is JSON and `--content-type` asks to say so: under MQTT
    /// 5 it carries content type `application/json`, payload format
    /// indicator 1.
    pub json: bool,
}

/// What the broker announced in its CONNACK (MQTT 5 only; under 3.1.1
/// nothing is announced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub receive_max: Option<u16>,
    pub max_packet_size: Option<u32>,
    pub topic_alias_max: u16,
    /// Maximum QoS (absent: 2). Only `check` reads it: a broker that takes
    /// no QoS 1 cannot serve frameflush at all.
    pub max_qos: Option<u8>,
    /// Retain Available (absent: yes); frameflush never retains, `check`
    /// reports it.
    pub retain_available: Option<bool>,
}

/// What a subscription brought (`check`'s round trip; a run never
/// subscribes, so its sessions never see one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The broker's answer to [`Session::subscribe`]: the granted QoS (0 to
    /// 2) or a failure code (0x80 and up; MQTT 3.1.1's only failure reads
    /// as 0x80).
    SubAck { code: u8, reason: Option<String> },
    /// A message the subscription delivered.
    Publish { topic: String, payload: Vec<u8> },
}

/// How a message goes out on this connection: its topic alias, if any, and
/// whether the topic itself is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub alias: Option<u16>,
    /// The topic is left out (the alias stands for it).
    pub alias_only: bool,
    pub json: bool,
}

/// The protocol-specific half of a session: rumqttc's client and event loop
/// of one protocol version, reduced to what [`Session`] needs.
trait Wire {
    /// Hands one QoS 1 PUBLISH to rumqttc (never blocks: the channel has
    /// room for the whole window).
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        shape: Shape,
    ) -> std::result::Result<(), String>;
    /// The next event, waiting at most until `until`.
    fn next(&mut self, until: Instant) -> Next;
    /// Queues a DISCONNECT; false when it could not be queued.
    fn disconnect(&mut self) -> bool;
    /// The size on the wire of a QoS 1 PUBLISH of this shape.
    fn packet_size(&self, topic_len: usize, payload_len: usize, shape: Shape) -> usize;
    /// Hands one SUBSCRIBE (QoS 1) for this exact topic to rumqttc.
    fn subscribe(&mut self, topic: String) -> std::result::Result<(), String>;
    /// A refused PUBACK freed `pkid`, which a collided PUBLISH waits for:
    /// rumqttc 0.25.1's MQTT 5 state returns before its collision check on
    /// a failed reason code, so the collided PUBLISH must be sent by hand.
    fn release_collision(&mut self, _pkid: u16) {}
    /// What rumqttc had already read and handled (PUBACKs the broker sent
    /// before it closed) when it reported a read error: rumqttc 0.25.1
    /// keeps those events in `state.events` and would hand them out only
    /// after reconnecting.
    fn leftovers(&mut self) -> Vec<Event> {
        Vec::new()
    }
}

/// One event, in the terms both protocol versions share.
#[derive(Debug)]
enum Event {
    Publish(u16),
    AwaitAck(u16),
    PubAck {
        pkid: u16,
        code: u8,
        reason: Option<String>,
    },
    Disconnect,
    /// A subscription was answered or delivered (see [`Incoming`]).
    Incoming(Incoming),
    Other,
}

#[derive(Debug)]
enum Next {
    Event(Event),
    Idle,
    Failed(Fault),
    Ended,
}

/// A connection failure, in the terms both protocol versions share.
#[derive(Debug)]
pub enum Fault {
    /// Nothing listens on the port.
    TcpRefused,
    /// The CONNACK refused us, with the (MQTT 5 numbered) code.
    Connack(u8),
    /// The broker closed the connection.
    Closed,
    /// The broker reset the connection.
    Reset,
    /// No answer in time.
    Timeout,
    /// No answer before the run's time ran out (`--max-time`).
    OutOfTime,
    NoPingResp,
    /// The broker sent DISCONNECT with a reason code.
    ServerDisconnect {
        code: u8,
        reason: Option<String>,
    },
    /// The broker sent something that is not MQTT of this version.
    Garbled(String),
    /// The TLS handshake failed: the line is ready.
    Tls(Error),
    Io(String),
    Other(String),
}

impl Fault {
    fn from_io(e: &std::io::Error) -> Fault {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Fault::TcpRefused,
            K::ConnectionReset => Fault::Reset,
            K::UnexpectedEof | K::ConnectionAborted | K::BrokenPipe => Fault::Closed,
            K::TimedOut => Fault::Timeout,
            _ => Fault::Io(io_reason(e)),
        }
    }

    /// This failure of an MQTT 5 CONNECT as evidence about the protocol
    /// (aedes and amqtt send a 3.1.1 CONNACK that rumqttc cannot parse,
    /// RabbitMQ closes, amqtt with a password stays silent).
    fn v5_answer(&self) -> V5Answer {
        match self {
            Fault::Garbled(_) => V5Answer::Unsupported,
            Fault::Connack(code) if reason::connack(*code).1 => V5Answer::Unsupported,
            Fault::Connack(_) => V5Answer::Mqtt5,
            Fault::Closed | Fault::Reset => V5Answer::Dropped,
            Fault::Timeout => V5Answer::Silent,
            _ => V5Answer::Unreachable,
        }
    }

    /// The error line for a failure before the CONNACK.
    fn connect_error(
        self,
        name: &str,
        broker: &Broker,
        protocol: Protocol,
        broker_tried_v5: bool,
    ) -> Error {
        let secs = broker.connect_timeout.as_secs_f64();
        match self {
            Fault::Tls(e) => e,
            Fault::TcpRefused => Error::new(
                Exit::Unavailable,
                format!(
                    "broker {name} refused the connection (is it running and listening on that port?)"
                ),
            ),
            Fault::Connack(code) => Error::new(
                reason::connack(code).0,
                format!(
                    "broker {name} refused the connection: {}{}",
                    reason::describe(code, None),
                    match (code, protocol) {
                        (0x85, _) =>
                            format!(" (client id {:?}: set another with --id)", broker.client_id),
                        _ => reason::connack_hint(code).to_string(),
                    }
                ),
            ),
            Fault::Timeout => Error::new(
                Exit::Unavailable,
                format!(
                    "broker {name} did not answer within {secs} s (no CONNACK to the {} CONNECT{}; see --connect-timeout)",
                    protocol.label(),
                    if protocol == Protocol::V311 && broker_tried_v5 {
                        ", nor to an MQTT 5 one"
                    } else {
                        ""
                    }
                ),
            ),
            Fault::OutOfTime => Error::new(
                Exit::TempFail,
                format!(
                    "no CONNACK from broker {name} before the run's time ran out (--max-time + --ack-timeout); the rest waits for the next run"
                ),
            ),
            Fault::Closed | Fault::Reset => Error::new(
                Exit::Unavailable,
                format!(
                    "broker {name} closed the connection without a CONNACK ({} CONNECT){}",
                    protocol.label(),
                    match protocol {
                        Protocol::V5 => ": does it speak MQTT 5? try --protocol-version 311",
                        Protocol::V311 =>
                            ": is that port an MQTT listener, and does it allow this client?",
                    }
                ),
            ),
            Fault::Garbled(why) => Error::new(
                Exit::Unavailable,
                format!(
                    "broker {name} did not answer the {} CONNECT in that protocol ({why})",
                    protocol.label()
                ),
            ),
            other => Error::new(
                Exit::Unavailable,
                format!("cannot reach broker {name}: {}", other.words()),
            ),
        }
    }

    /// What happened, in a few words, for a failure after the CONNACK.
    fn words(&self) -> String {
        match self {
            Fault::TcpRefused => "the connection was refused".into(),
            Fault::Connack(code) => format!("refused: {}", reason::describe(*code, None)),
            Fault::Closed => "the broker closed the connection".into(),
            Fault::Reset => "the broker reset the connection".into(),
            Fault::Timeout => "the network timed out".into(),
            Fault::OutOfTime => "the run's time ran out".into(),
            Fault::NoPingResp => "the broker stopped answering pings".into(),
            Fault::ServerDisconnect { code, reason } => format!(
                "the broker disconnected with {}",
                reason::describe(*code, reason.as_deref())
            ),
            Fault::Garbled(why) => format!("the broker sent what is not MQTT ({why})"),
            Fault::Tls(e) => e.message.clone(),
            Fault::Io(why) | Fault::Other(why) => why.clone(),
        }
    }
}

/// Who is to blame when a connection ends with messages in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    Nobody,
    /// The broker's DISCONNECT named the oldest message in flight: it is
    /// charged an attempt.
    Message {
        rows: Rows,
        why: String,
    },
    /// The connection died (or PUBACKs stopped) with messages in flight:
    /// the oldest one is a suspect.
    Suspect {
        rows: Rows,
        bytes: usize,
    },
}

/// A session that ended: the run's error line, who is to blame, and
/// whether a new connection may do better (not after the broker's own
/// DISCONNECT, a TLS failure or lost packet ids).
#[derive(Debug)]
pub struct Broken {
    pub error: Error,
    pub blame: Blame,
    pub retry: bool,
    /// The broker's last PUBACK on this connection was a refusal: some
    /// brokers (mosquitto with `max_queued_messages 0`) close the connection
    /// after refusing, and the message sent after it is not to blame.
    pub after_refusal: bool,
    /// The reason code of the broker's DISCONNECT, if it sent one.
    pub disconnect: Option<u8>,
}

/// The broker refused one message (MQTT 5 PUBACK reason code ≥ 0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rows: Rows,
    pub topic: String,
    pub code: u8,
    pub reason: Option<String>,
    pub verdict: Verdict,
}

impl Refusal {
    /// For the failure ledger and stderr.
    pub fn why(&self) -> String {
        format!(
            "the broker refused it (topic {}): {}{}",
            self.topic,
            reason::describe(self.code, self.reason.as_deref()),
            reason::refusal_hint(self.code)
        )
    }
}

/// What one wait on the connection brought.
#[derive(Debug)]
pub enum Polled {
    /// The broker accepted the message carrying these rows.
    Acked(Rows),
    Refused(Refusal),
    /// Some other event.
    Other,
    /// Nothing before the time was up.
    Idle,
}

/// A message that cannot go out on this session; the session is unharmed.
#[derive(Debug)]
pub enum Unsent {
    /// Its PUBLISH would exceed the broker's Maximum Packet Size: sending it
    /// would make the broker close the connection.
    TooLarge { message: Message, why: String },
    /// The session failed.
    Failed(Error),
}

/// Follows which message (`T`) each packet id stands for.
#[derive(Debug)]
pub struct Tracker<T> {
    /// Messages handed to rumqttc that have no packet id yet, in order.
    unassigned: VecDeque<T>,
    /// Packet id → message awaiting its PUBACK.
    slots: Vec<Option<T>>,
    /// A message whose packet id was still taken (`AwaitAck`): rumqttc
    /// sends it once that id is acknowledged.
    collided: Option<(u16, T)>,
    in_flight: usize,
}

/// An event sequence rumqttc should never produce; the run stops and
/// leaves everything in doubt unsent.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl<T> Tracker<T> {
    pub fn new(inflight: u16) -> Tracker<T> {
        Tracker {
            unassigned: VecDeque::new(),
            slots: std::iter::repeat_with(|| None)
                .take(usize::from(inflight) + 1)
                .collect(),
            collided: None,
            in_flight: 0,
        }
    }

    /// Messages handed over and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Every message handed over and not yet acknowledged, in no order.
    pub fn pending(&self) -> impl Iterator<Item = &T> {
        self.unassigned
            .iter()
            .chain(self.slots.iter().flatten())
            .chain(self.collided.iter().map(|(_, t)| t))
    }

    /// The packet id a collided message waits for.
    pub fn collided_on(&self) -> Option<u16> {
        self.collided.as_ref().map(|(id, _)| *id)
    }

    /// A request for this message went into rumqttc's channel.
    pub fn handed(&mut self, row: T) {
        self.unassigned.push_back(row);
        self.in_flight += 1;
    }

    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let row = match self.collided.take() {
            Some((id, row)) if id == pkid => row,
            other => {
                self.collided = other;
                self.unassigned
                    .pop_front()
                    .ok_or_else(|| Mismatch(format!("PUBLISH {pkid} went out for no row")))?
            }
        };
        let slot = self
            .slots
            .get_mut(usize::from(pkid))
            .ok_or_else(|| Mismatch(format!("packet id {pkid} is outside the window")))?;
        if slot.is_some() {
            return Err(Mismatch(format!(
                "packet id {pkid} reused while its message awaits its ack"
            )));
        }
        *slot = Some(row);
        Ok(())
    }

    pub fn on_await_ack(&mut self, pkid: u16) -> Result<(), Mismatch> {
        if self.collided.is_some() {
            return Err(Mismatch(format!("a second collision on packet id {pkid}")));
        }
        let row = self
            .unassigned
            .pop_front()
            .ok_or_else(|| Mismatch(format!("collision on packet id {pkid} for no row")))?;
        self.collided = Some((pkid, row));
        Ok(())
    }

    /// The row this PUBACK acknowledges.
    pub fn on_puback(&mut self, pkid: u16) -> Result<T, Mismatch> {
        let row = self
            .slots
            .get_mut(usize::from(pkid))
            .and_then(Option::take)
            .ok_or_else(|| Mismatch(format!("PUBACK {pkid} for no row in flight")))?;
        self.in_flight -= 1;
        Ok(row)
    }
}

/// A message in flight, as the session remembers it.
#[derive(Debug)]
struct Sent {
    rows: Rows,
    /// For the line that names a refused message (MQTT 5; empty under
    /// 3.1.1, whose PUBACK refuses nothing).
    topic: String,
    bytes: usize,
    /// Handed over as the n-th PUBLISH of this connection.
    seq: u64,
    /// The topic alias this PUBLISH set (topic and alias both sent): once
    /// the broker accepts it, later messages may send the alias alone.
    sets_alias: Option<u16>,
}

/// Topic aliases of one connection (MQTT 5, when the broker's Topic Alias
/// Maximum is above 0): one per distinct topic, up to the maximum. An alias
/// goes out alone only once a PUBLISH that set it was accepted: a broker
/// that refused that PUBLISH may not have kept the alias.
#[derive(Debug, Default)]
struct Aliases {
    max: u16,
    by_topic: HashMap<String, u16>,
    confirmed: Vec<bool>,
}

impl Aliases {
    fn shape(&mut self, topic: &str) -> Shape {
        if self.max == 0 {
            return Shape::default();
        }
        if let Some(&alias) = self.by_topic.get(topic) {
            let alias_only = self.confirmed[usize::from(alias)];
            return Shape {
                alias: Some(alias),
                alias_only,
                json: false,
            };
        }
        if self.by_topic.len() >= usize::from(self.max) {
            return Shape::default();
        }
        let alias = self.by_topic.len() as u16 + 1;
        self.by_topic.insert(topic.to_string(), alias);
        if self.confirmed.len() <= usize::from(alias) {
            self.confirmed.resize(usize::from(alias) + 1, false);
        }
        Shape {
            alias: Some(alias),
            alias_only: false,
            json: false,
        }
    }

    fn confirm(&mut self, alias: u16) {
        if let Some(c) = self.confirmed.get_mut(usize::from(alias)) {
            *c = true;
        }
    }
}

pub struct Session {
    wire: Box<dyn Wire>,
    protocol: Protocol,
    limits: Limits,
    window: usize,
    tracker: Tracker<Sent>,
    aliases: Aliases,
    log: Log,
    /// host:port, for messages.
    name: String,
    /// PUBLISHes handed over and PUBACKs received on this connection.
    published: u64,
    acked: u64,
    /// The connection failed: nothing more can be sent on it.
    broken: bool,
    /// The last PUBACK on this connection refused its message.
    refused_last: bool,
    /// SUBACKs and delivered messages not yet taken by [`Session::incoming`].
    incoming: VecDeque<Incoming>,
    /// Events read before the connection failed, handed out before the
    /// failure itself.
    leftover: VecDeque<Event>,
    fault: Option<Fault>,
}

/// Incoming events kept at most; older ones are dropped (only `check`
/// subscribes, to a few exact topics).
const MAX_INCOMING: usize = 1000;

/// What [`Session::connect`] needs.
pub struct Options<'a> {
    pub broker: &'a Broker,
    pub inflight: u16,
    pub max_payload: usize,
    pub wanted: Wanted,
    pub log: Log,
}

/// host:port as rumqttc joins them: an IPv6 literal gets its brackets back.
fn address(broker: &Broker) -> (String, String) {
    let addr = if broker.host.contains(':') {
        format!("[{}]", broker.host)
    } else {
        broker.host.clone()
    };
    let name = format!("{addr}:{}", broker.port);
    (addr, name)
}

/// The remembered protocol, as `"<311|5> <unix seconds when learned>"`.
fn parse_memory(s: &str) -> Option<(Protocol, u64)> {
    let (p, at) = s.split_once(' ')?;
    let p = match p {
        "311" => Protocol::V311,
        "5" => Protocol::V5,
        _ => return None,
    };
    Some((p, at.parse().ok()?))
}

impl Session {
    /// Connects and waits for the CONNACK. Under `auto`, MQTT 5 is tried
    /// first, unless `remembered` says this broker spoke only 3.1.1 less
    /// than [`PROBE_INTERVAL_S`] ago; a broker that does not answer an MQTT
    /// 5 CONNECT as MQTT 5 gets a 3.1.1 one. Returns the session and, when
    /// it changed, what to remember for this broker. Errors: 69
    /// unreachable, 77 credentials or client id refused.
    pub fn connect(
        o: &Options<'_>,
        remembered: Option<&str>,
        now: u64,
    ) -> Result<(Session, Option<String>)> {
        Session::connect_until(o, remembered, now, None)
    }

    /// [`Session::connect`], waiting for nothing past `until`. Under
    /// `auto` the protocol is decided by [`blame::protocol`]: an MQTT 3.1.1
    /// answer (or CONNACK 0x84) falls back at once; a drop or silence does
    /// only when it repeats on the next attempt with a 3.1.1 CONNECT
    /// accepted right after each, and never for a broker remembered as
    /// MQTT 5.
    pub fn connect_until(
        o: &Options<'_>,
        remembered: Option<&str>,
        now: u64,
        until: Option<Instant>,
    ) -> Result<(Session, Option<String>)> {
        let (_, name) = address(o.broker);
        let memory = remembered.and_then(parse_memory);
        let first = match o.wanted {
            Wanted::Only(p) => p,
            Wanted::Auto => match memory {
                Some((Protocol::V311, at)) if now.saturating_sub(at) < PROBE_INTERVAL_S => {
                    Protocol::V311
                }
                _ => Protocol::V5,
            },
        };
        // Remember what was negotiated when it is news: a first answer, a
        // change, or a probe of a 3.1.1 broker (its time is refreshed).
        let learned = |p: Protocol| {
            let known = matches!(memory, Some((q, _)) if q == p)
                && !(p == Protocol::V311 && first == Protocol::V5);
            (o.wanted == Wanted::Auto && !known).then(|| format!("{} {now}", p.short()))
        };
        // Without a bound, each attempt waits --connect-timeout.
        let until = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600));
        if o.wanted != Wanted::Auto || first == Protocol::V311 {
            return match Session::connect_with(o, first, false, until) {
                Ok(s) => Ok((s, learned(first))),
                Err(f) => Err(f.connect_error(&name, o.broker, first, false)),
            };
        }
        let remembered_v5 = matches!(memory, Some((Protocol::V5, _)));
        let mut before = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fault = match Session::connect_with(o, Protocol::V5, false, until) {
                Ok(s) => return Ok((s, learned(Protocol::V5))),
                Err(f) => f,
            };
            let answer = fault.v5_answer();
            let out_of_time = Instant::now() >= until;
            match blame::protocol(answer, remembered_v5, before, attempt) {
                ProtocolVerdict::Mqtt5 | ProtocolVerdict::Fail => {
                    return Err(fault.connect_error(&name, o.broker, Protocol::V5, false));
                }
                _ if out_of_time => {
                    return Err(Fault::OutOfTime.connect_error(
                        &name,
                        o.broker,
                        Protocol::V5,
                        false,
                    ));
                }
                ProtocolVerdict::Retry => {
                    if o.log.verbose {
                        crate::sys::say!(
                            "frameflush: broker {name} did not answer an MQTT 5 CONNECT ({}); it answered MQTT 5 before, so this is a fault, not its protocol: trying again",
                            fault.words()
                        );
                    }
                }
                ProtocolVerdict::Fallback => {
                    if remembered_v5 && !o.log.quiet {
                        crate::sys::say!(
                            "frameflush: broker {name} answered MQTT 5 before and now answers an MQTT 5 CONNECT as a 3.1.1-only broker ({}): using MQTT 3.1.1, under which the broker cannot say it refused a message (refusals are invisible)",
                            fault.words()
                        );
                    } else if o.log.verbose {
                        crate::sys::say!(
                            "frameflush: broker {name} does not speak MQTT 5 ({}); using MQTT 3.1.1",
                            fault.words()
                        );
                    }
                    return match Session::connect_with(o, Protocol::V311, false, until) {
                        Ok(s) => Ok((s, learned(Protocol::V311))),
                        Err(f) => Err(f.connect_error(&name, o.broker, Protocol::V311, true)),
                    };
                }
                ProtocolVerdict::Probe311 => {
                    if o.log.verbose {
                        crate::sys::say!(
                            "frameflush: broker {name} did not answer an MQTT 5 CONNECT ({}); trying MQTT 3.1.1 to see whether it answers that at once",
                            fault.words()
                        );
                    }
                    match Session::connect_with(o, Protocol::V311, false, until) {
                        Ok(mut s) => {
                            s.goodbye(
                                PROBE_GOODBYE.min(until.saturating_duration_since(Instant::now())),
                            );
                            before = Some(answer);
                        }
                        Err(f) => {
                            return Err(f.connect_error(&name, o.broker, Protocol::V311, true));
                        }
                    }
                }
            }
        }
    }

    /// A second connection that receives what it subscribes to (`check`'s
    /// round trip), in the protocol the first one negotiated: it accepts
    /// incoming messages as large as the ones it may be sent (a run's
    /// connections accept little, as they only get acknowledgements).
    pub fn subscriber(o: &Options<'_>, protocol: Protocol) -> Result<Session> {
        let (_, name) = address(o.broker);
        let until = Instant::now() + o.broker.connect_timeout;
        Session::connect_with(o, protocol, true, until)
            .map_err(|f| f.connect_error(&name, o.broker, protocol, false))
    }

    fn connect_with(
        o: &Options<'_>,
        protocol: Protocol,
        receives: bool,
        until: Instant,
    ) -> std::result::Result<Session, Fault> {
        let (addr, name) = address(o.broker);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fault::OutOfTime);
        }
        let wait = o.broker.connect_timeout.min(left);
        let connected = match protocol {
            Protocol::V311 => v311::connect(o, addr, &name, receives, wait),
            Protocol::V5 => v5::connect(o, addr, &name, receives, wait),
        };
        let (wire, limits) = match connected {
            Err(Fault::Timeout) if wait < o.broker.connect_timeout => {
                return Err(Fault::OutOfTime);
            }
            other => other?,
        };
        let window =
            usize::from(o.inflight).min(limits.receive_max.map_or(usize::MAX, usize::from));
        if o.log.verbose {
            let mut said = format!(
                "frameflush: connected to {name} as {} with {}",
                o.broker.client_id,
                protocol.label()
            );
            if protocol == Protocol::V5 {
                said.push_str(&format!(
                    " (broker limits: Receive Maximum {}, Maximum Packet Size {}, Topic Alias Maximum {}; window {window})",
                    limits.receive_max.map_or("none".into(), |v| v.to_string()),
                    limits.max_packet_size.map_or("none".into(), |v| v.to_string()),
                    limits.topic_alias_max
                ));
            } else {
                said.push_str(
                    " (MQTT 3.1.1: a broker cannot say it refused a message, so refusals are invisible)",
                );
            }
            crate::sys::say!("{said}");
        }
        Ok(Session {
            wire,
            protocol,
            limits,
            window,
            tracker: Tracker::new(o.inflight),
            aliases: Aliases {
                max: limits.topic_alias_max,
                ..Aliases::default()
            },
            log: o.log,
            name,
            published: 0,
            acked: 0,
            broken: false,
            refused_last: false,
            incoming: VecDeque::new(),
            leftover: VecDeque::new(),
            fault: None,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// What the broker announced in its CONNACK.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Subscribes (QoS 1) to this exact topic; the SUBACK and what the
    /// subscription delivers come through [`Session::poll`] into
    /// [`Session::incoming`].
    pub fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.wire.subscribe(topic.to_string()).map_err(|e| {
            Error::new(
                Exit::TempFail,
                format!("cannot queue a subscription to {topic}: {e}"),
            )
        })
    }

    /// The oldest SUBACK or delivered message that [`Session::poll`] saw
    /// and nobody took yet.
    pub fn incoming(&mut self) -> Option<Incoming> {
        self.incoming.pop_front()
    }

    /// How many PUBLISHes may be unacknowledged at once (none once the
    /// connection failed and what it read before is being handed out).
    pub fn window(&self) -> usize {
        if self.fault.is_some() { 0 } else { self.window }
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// PUBLISHes handed over on this connection.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Every message not yet acknowledged, oldest first: its rows and size.
    pub fn in_doubt(&self) -> Vec<(Rows, usize)> {
        let mut sent: Vec<&Sent> = self.tracker.pending().collect();
        sent.sort_by_key(|s| s.seq);
        sent.into_iter()
            .map(|s| (s.rows.clone(), s.bytes))
            .collect()
    }

    /// The oldest message not yet acknowledged: its rows and its size.
    pub fn oldest_in_flight(&self) -> Option<(Rows, usize)> {
        self.tracker
            .pending()
            .min_by_key(|s| s.seq)
            .map(|s| (s.rows.clone(), s.bytes))
    }

    /// The size of this message's PUBLISH with its whole topic.
    pub fn packet_bytes(&self, m: &Message) -> usize {
        let full = Shape {
            alias: (self.limits.topic_alias_max > 0).then_some(1),
            alias_only: false,
            json: m.json,
        };
        self.wire.packet_size(m.topic.len(), m.payload.len(), full)
    }

    /// Hands one QoS 1 PUBLISH to rumqttc. The caller keeps the window, so
    /// the channel always has room. A message over the broker's Maximum
    /// Packet Size is given back, never sent.
    pub fn publish(&mut self, m: Message) -> std::result::Result<(), Unsent> {
        let bytes = self.packet_bytes(&m);
        if let Some(max) = self.limits.max_packet_size
            && bytes > max as usize
        {
            let why = format!(
                "its PUBLISH of {bytes} bytes exceeds the broker's Maximum Packet Size of {max} bytes"
            );
            return Err(Unsent::TooLarge { message: m, why });
        }
        let mut shape = self.aliases.shape(&m.topic);
        shape.json = m.json;
        // The session keeps the topic only for the line that names a
        // refused message: a 3.1.1 PUBACK refuses nothing, so there the
        // topic itself goes to rumqttc, not a copy (one allocation and copy
        // less per message on the publishing loop).
        let (topic, kept) = if shape.alias_only {
            (String::new(), m.topic)
        } else if self.protocol == Protocol::V311 {
            (m.topic, String::new())
        } else {
            (m.topic.clone(), m.topic)
        };
        let bytes = self.wire.packet_size(topic.len(), m.payload.len(), shape);
        let rows = m.rows;
        self.wire.publish(topic, m.payload, shape).map_err(|e| {
            Unsent::Failed(Error::new(
                Exit::TempFail,
                format!("cannot queue {} for publishing: {e}", rows.label()),
            ))
        })?;
        self.tracker.handed(Sent {
            rows,
            topic: kept,
            bytes,
            seq: self.published,
            sets_alias: shape.alias.filter(|_| !shape.alias_only),
        });
        self.published += 1;
        Ok(())
    }

    /// Waits up to `wait` for one event. A connection error ends the
    /// session: what is in flight stays unsent, and the error says who is
    /// to blame.
    pub fn poll(&mut self, wait: Duration) -> std::result::Result<Polled, Broken> {
        self.poll_until(Instant::now() + wait)
    }

    /// [`Session::poll`], waiting at most until `until`: the clock is read
    /// only when no event is there yet (the publishing loop's case: most
    /// polls find one).
    pub fn poll_until(&mut self, until: Instant) -> std::result::Result<Polled, Broken> {
        let event = if let Some(e) = self.leftover.pop_front() {
            e
        } else if let Some(fault) = self.fault.take() {
            self.broken = true;
            return Err(self.broken_by(fault));
        } else {
            let fault = match self.wire.next(until) {
                Next::Event(e) => return self.handle(e),
                Next::Idle => return Ok(Polled::Idle),
                Next::Failed(fault) => fault,
                Next::Ended => Fault::Closed,
            };
            // What the broker said before it closed comes first (a PUBACK
            // 0x87 right before mosquitto closes, PUBACKs of messages it
            // took): the failure is reported once they are handled.
            self.leftover.extend(self.wire.leftovers());
            match self.leftover.pop_front() {
                Some(e) => {
                    self.fault = Some(fault);
                    e
                }
                None => {
                    self.broken = true;
                    return Err(self.broken_by(fault));
                }
            }
        };
        self.handle(event)
    }

    fn handle(&mut self, event: Event) -> std::result::Result<Polled, Broken> {
        let step = match event {
            Event::Publish(pkid) => self
                .tracker
                .on_outgoing_publish(pkid)
                .map(|()| Polled::Other),
            Event::AwaitAck(pkid) => self.tracker.on_await_ack(pkid).map(|()| Polled::Other),
            Event::PubAck { pkid, code, reason } => self.on_puback(pkid, code, reason),
            Event::Incoming(i) => {
                if self.incoming.len() >= MAX_INCOMING {
                    self.incoming.pop_front();
                }
                self.incoming.push_back(i);
                Ok(Polled::Other)
            }
            Event::Disconnect | Event::Other => Ok(Polled::Other),
        };
        step.map_err(|Mismatch(why)| {
            self.broken = true;
            Broken {
                error: Error::new(
                    Exit::TempFail,
                    format!("lost track of packet ids ({why}); rows in doubt stay unsent"),
                ),
                blame: Blame::Nobody,
                retry: false,
                after_refusal: false,
                disconnect: None,
            }
        })
    }

    fn on_puback(
        &mut self,
        pkid: u16,
        code: u8,
        reason: Option<String>,
    ) -> std::result::Result<Polled, Mismatch> {
        let collided = self.tracker.collided_on() == Some(pkid);
        let sent = self.tracker.on_puback(pkid)?;
        self.acked += 1;
        let verdict = reason::puback(code);
        self.refused_last = verdict != Verdict::Accepted;
        if verdict == Verdict::Accepted {
            if let Some(alias) = sent.sets_alias {
                self.aliases.confirm(alias);
            }
            return Ok(Polled::Acked(sent.rows));
        }
        if collided {
            self.wire.release_collision(pkid);
        }
        Ok(Polled::Refused(Refusal {
            rows: sent.rows,
            topic: sent.topic,
            code,
            reason,
            verdict,
        }))
    }

    /// The error line for a connection that ended, and the blame.
    fn broken_by(&self, fault: Fault) -> Broken {
        let in_flight = self.tracker.in_flight();
        let oldest = self.oldest_in_flight();
        let after = format!(
            "after {} PUBLISH(es) on this connection, {} acknowledged",
            self.published, self.acked
        );
        if let Fault::ServerDisconnect { code, reason } = &fault {
            let ending = reason::disconnect(*code);
            let said = reason::describe(*code, reason.as_deref());
            let hint = match code {
                0x8E => {
                    " (another client connected with the same client id: give each run its own --id)"
                }
                0x87 => {
                    " (the broker's ACL refuses this user something: check the topic and the user's rights)"
                }
                0x95 => " (above the broker's packet size limit: lower --max-payload)",
                0x97 | 0x89 | 0x96 => " (the broker wants no more for now)",
                _ => "",
            };
            let blame = match (&oldest, ending.charges_message) {
                (Some((rows, _)), true) => Blame::Message {
                    rows: rows.clone(),
                    why: format!("the broker disconnected on this message: {said}"),
                },
                _ => Blame::Nobody,
            };
            let on = match (&oldest, ending.charges_message) {
                (Some((rows, bytes)), true) => format!(" on {} ({bytes} bytes)", rows.label()),
                _ => String::new(),
            };
            return Broken {
                error: Error::new(
                    ending.exit,
                    format!(
                        "broker {} disconnected{on} with {said}{hint}, {after}; {in_flight} message(s) in flight stay unsent",
                        self.name
                    ),
                ),
                blame,
                // A code naming the message: a new connection goes on
                // with the rest.
                retry: blame::names_message(*code),
                after_refusal: self.refused_last,
                disconnect: Some(*code),
            };
        }
        if let Fault::Tls(e) = fault {
            return Broken {
                error: Error::new(Exit::TempFail, format!("connection to broker lost: {e}")),
                blame: Blame::Nobody,
                retry: false,
                after_refusal: self.refused_last,
                disconnect: None,
            };
        }
        let blame = match oldest {
            Some((rows, bytes)) => Blame::Suspect { rows, bytes },
            None => Blame::Nobody,
        };
        Broken {
            error: Error::new(
                Exit::TempFail,
                format!(
                    "connection to broker {} lost: {}, {after}; {in_flight} message(s) in flight stay unsent",
                    self.name,
                    fault.words()
                ),
            ),
            blame,
            retry: true,
            after_refusal: self.refused_last,
            disconnect: None,
        }
    }

    /// Drops the connection at once (the socket is closed): before a new
    /// one is made, so that a broker serving one client at a time sees this
    /// one gone.
    pub fn close(&mut self) {
        self.wire = Box::new(Closed);
        self.broken = true;
    }

    /// Sends DISCONNECT and waits (at most `wait`) until it has gone out, so
    /// the broker sees a clean end rather than a dropped connection.
    pub fn disconnect(mut self, wait: Duration) {
        self.goodbye(wait);
    }

    /// [`Session::disconnect`], leaving the session closed.
    pub fn goodbye(&mut self, wait: Duration) {
        self.say_goodbye(wait);
        self.close();
    }

    fn say_goodbye(&mut self, wait: Duration) {
        if self.broken || self.fault.is_some() || !self.wire.disconnect() {
            return;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if self.log.verbose {
                    crate::sys::say!(
                        "frameflush: DISCONNECT did not go out within {} s",
                        wait.as_secs_f64()
                    );
                }
                return;
            }
            match self.wire.next(deadline) {
                Next::Event(Event::Disconnect) => return,
                Next::Event(_) => {}
                Next::Idle | Next::Failed(_) | Next::Ended => return,
            }
        }
    }
}

/// Waits at most `timeout` for the CONNACK: `step` waits on the connection
/// for at most the time it is given, and says how the CONNECT ended once it
/// has (None: not yet).
fn await_connack(
    timeout: Duration,
    mut step: impl FnMut(Duration) -> Option<std::result::Result<Limits, Fault>>,
) -> std::result::Result<Limits, Fault> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fault::Timeout);
        }
        if let Some(settled) = step(left) {
            return settled;
        }
    }
}

/// The wire of a closed session: nothing goes out, nothing comes in.
struct Closed;

impl Wire for Closed {
    fn publish(&mut self, _: String, _: Vec<u8>, _: Shape) -> std::result::Result<(), String> {
        Err("the connection is closed".into())
    }
    fn next(&mut self, _: Instant) -> Next {
        Next::Ended
    }
    fn disconnect(&mut self) -> bool {
        false
    }
    fn packet_size(&self, topic_len: usize, payload_len: usize, _: Shape) -> usize {
        packet_size(topic_len, payload_len)
    }
    fn subscribe(&mut self, _: String) -> std::result::Result<(), String> {
        Err("the connection is closed".into())
    }
}

/// How many bytes the MQTT "remaining length" of `n` takes.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The size of a packet on the wire from its remaining length.
fn framed(remaining: usize) -> usize {
    1 + varint_len(remaining) + remaining
}

/// The size of an MQTT 3.1.1 QoS 1 PUBLISH packet on the wire.
pub fn packet_size(topic_len: usize, payload_len: usize) -> usize {
    framed(2 + topic_len + 2 + payload_len)
}

/// The size of an MQTT 5 QoS 1 PUBLISH packet on the wire, with the
/// properties frameflush sets.
pub fn packet_size_v5(topic_len: usize, payload_len: usize, shape: Shape) -> usize {
    let mut props = 0;
    if shape.json {
        props += 2 + 1 + 2 + CONTENT_TYPE_JSON.len();
    }
    if shape.alias.is_some() {
        props += 3;
    }
    framed(2 + topic_len + 2 + varint_len(props) + props + payload_len)
}

pub const CONTENT_TYPE_JSON: &str = "application/json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_order_map_back_to_rows_across_packet_id_wraparound() {
        let mut t = Tracker::<i64>::new(3);
        let mut acked = Vec::new();
        let mut next_pkid = 0u16;
        for row in 100..110 {
            t.handed(row);
            next_pkid = next_pkid % 3 + 1;
            t.on_outgoing_publish(next_pkid).unwrap();
            acked.push(t.on_puback(next_pkid).unwrap());
        }
        assert_eq!(acked, (100..110).collect::<Vec<_>>());
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_collided_publish_belongs_to_the_row_that_waited_for_the_id() {
        let mut t = Tracker::<i64>::new(2);
        t.handed(1);
        t.handed(2);
        t.on_outgoing_publish(1).unwrap();
        t.on_outgoing_publish(2).unwrap();
        // The broker acks 2 first; the next request gets id 1, still taken.
        assert_eq!(t.on_puback(2), Ok(2));
        t.handed(3);
        t.on_await_ack(1).unwrap();
        assert_eq!(t.collided_on(), Some(1));
        // The ack of 1 frees the id; rumqttc then sends row 3 with it.
        assert_eq!(t.on_puback(1), Ok(1));
        t.on_outgoing_publish(1).unwrap();
        assert_eq!(t.on_puback(1), Ok(3));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_ack_for_nothing_in_flight_is_a_mismatch_not_a_mark() {
        let mut t = Tracker::<i64>::new(4);
        assert!(t.on_puback(1).is_err());
        assert!(t.on_outgoing_publish(1).is_err());
        assert!(t.on_puback(9).is_err());
    }

    #[test]
    fn packet_sizes_count_the_fixed_header_length_bytes() {
        assert_eq!(packet_size(1, 0), 7);
        assert_eq!(packet_size(10, 113), 129);
        assert_eq!(packet_size(10, 114), 131);
        // MQTT 5: one property-length byte more, plus the properties.
        assert_eq!(packet_size_v5(1, 0, Shape::default()), 8);
        let json = Shape {
            json: true,
            ..Shape::default()
        };
        assert_eq!(packet_size_v5(1, 0, json), 8 + 21);
        let alias = Shape {
            alias: Some(3),
            alias_only: true,
            json: false,
        };
        assert_eq!(packet_size_v5(0, 0, alias), 7 + 3);
    }

    #[test]
    fn an_alias_goes_out_alone_only_after_the_broker_accepted_the_publish_that_set_it() {
        let mut a = Aliases {
            max: 2,
            ..Aliases::default()
        };
        let first = a.shape("a");
        assert_eq!((first.alias, first.alias_only), (Some(1), false));
        assert!(!a.shape("a").alias_only);
        a.confirm(1);
        assert!(a.shape("a").alias_only);
        assert_eq!(a.shape("b").alias, Some(2));
        // Over the maximum: the topic goes out in full, without an alias.
        assert_eq!(a.shape("c"), Shape::default());
    }

    #[test]
    fn auto_remembers_a_3_1_1_broker_and_probes_it_again_after_a_day() {
        assert_eq!(parse_memory("311 1000"), Some((Protocol::V311, 1000)));
        assert_eq!(parse_memory("5 7"), Some((Protocol::V5, 7)));
        assert_eq!(parse_memory("x 7"), None);
        assert_eq!(
            Wanted::parse("mqttv311"),
            Some(Wanted::Only(Protocol::V311))
        );
        assert_eq!(Wanted::parse("5"), Some(Wanted::Only(Protocol::V5)));
        assert_eq!(Wanted::parse("4"), None);
    }

    #[test]
    fn only_a_3_1_1_answer_or_0x84_to_an_mqtt_5_connect_reads_as_a_protocol_answer() {
        assert_eq!(Fault::Closed.v5_answer(), V5Answer::Dropped);
        assert_eq!(Fault::Reset.v5_answer(), V5Answer::Dropped);
        assert_eq!(Fault::Timeout.v5_answer(), V5Answer::Silent);
        assert_eq!(
            Fault::Garbled("x".into()).v5_answer(),
            V5Answer::Unsupported
        );
        assert_eq!(Fault::Connack(0x84).v5_answer(), V5Answer::Unsupported);
        assert_eq!(Fault::Connack(0x86).v5_answer(), V5Answer::Mqtt5);
        assert_eq!(Fault::TcpRefused.v5_answer(), V5Answer::Unreachable);
    }
}
