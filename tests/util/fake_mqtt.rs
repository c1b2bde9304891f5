//! A fake MQTT broker on a raw socket, for the behaviour no real broker
//! (mosquitto, spawned by the tests) can be made to show: chosen PUBACK
//! reason codes and reason strings, a server DISCONNECT in either of its
//! wire forms, the ways 3.1.1-only brokers answer an MQTT 5 CONNECT (close,
//! 3.1.1 CONNACK with return code 1, silence), a connection closed or reset
//! on a given PUBLISH, and a broker that stops acknowledging (RabbitMQ after
//! an oversized message).
//!
//! It speaks MQTT 3.1.1 (protocol level 4) and MQTT 5 well enough for
//! rumqttc's clients and mosquitto_pub: CONNECT/CONNACK (with Receive
//! Maximum, Maximum Packet Size and Topic Alias Maximum under 5), QoS 0 and 1
//! PUBLISH with topic aliases, PUBACK, PINGREQ/PINGRESP and DISCONNECT, over
//! several sequential (or concurrent) connections, one thread each. Packets
//! may arrive split across reads in any way; remaining lengths of 1 to 4
//! bytes are understood. Not spoken: QoS 2, SUBSCRIBE/UNSUBSCRIBE, AUTH,
//! sessions, retained messages, wills: such a packet closes the connection.
//! A malformed PUBLISH, or one naming an unknown topic alias, an alias of 0
//! or above the announced maximum, or neither topic nor alias, closes the
//! connection without being recorded (a real MQTT 5 broker would send
//! DISCONNECT 0x82 or 0x94 first).
//!
//! Everything is bounded: every read has a 50 ms timeout and polls the stop
//! flag, every write a 5 s timeout, a broker lives at most 300 s, at most 64
//! connections are served at once, and dropping the [`FakeBroker`] stops and
//! joins every thread (each finishes within about 100 ms).
//!
//! Std only: a `TcpListener` on 127.0.0.1, port 0.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Worker;

/// How long a fake broker serves at most.
const LIFETIME: Duration = Duration::from_secs(300);
/// How many connections are served at the same time at most; a further one
/// is closed at once.
const MAX_CONNECTIONS: usize = 64;
/// The largest packet read (remaining length); a larger one closes the
/// connection.
const MAX_REMAINING: usize = 16 << 20;
/// How long a closing connection waits for the client's FIN.
const DRAIN: Duration = Duration::from_secs(1);

/// How the fake answers a CONNECT with protocol level 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V5Connect {
    /// An MQTT 5 CONNACK with [`FakeConfig::connack_reason`] and, when that
    /// is a success, the configured properties (mosquitto, ejabberd).
    Accept,
    /// The TCP connection is closed without a CONNACK (RabbitMQ 3.10).
    CloseWithoutConnack,
    /// A 3.1.1-format CONNACK `20 02 00 01` (return code 1, unacceptable
    /// protocol version), then the connection is closed (aedes, amqtt).
    V311ConnackRc1ThenClose,
    /// No answer at all; the connection stays open and everything the client
    /// sends is read and ignored (amqtt with a password configured).
    Silent,
}

/// The answer to one PUBLISH, chosen by [`FakeConfig::on_publish`]. A QoS 0
/// PUBLISH gets no PUBACK whatever the answer; the other answers (close,
/// reset, DISCONNECT) apply to it as to QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A success PUBACK `40 02 <pkid>` (the short form MQTT 5 allows for
    /// reason 0 without properties).
    Ack,
    /// MQTT 5: a PUBACK with this reason code and, when given, a Reason
    /// String property (0x1F): `40 03 <pkid> <reason>` without one,
    /// `40 <len> <pkid> <reason> <props len> 1f <string>` with one.
    /// MQTT 3.1.1 has no reason codes: there it is a plain success PUBACK,
    /// whatever the reason, as mosquitto 2.0, amqtt and ejabberd answer a
    /// PUBLISH their ACL refuses (and drop the message).
    AckWith {
        reason: u8,
        reason_string: Option<String>,
    },
    /// MQTT 5: a server DISCONNECT, then the connection is closed. `short`
    /// is mosquitto's form `e0 01 <reason>` (no property length; the
    /// reason string is then not sent); otherwise `e0 <len> <reason> <props
    /// len> [1f <string>]`. MQTT 3.1.1 has no server DISCONNECT: there the
    /// connection is just closed, as with [`Reply::Close`].
    Disconnect {
        reason: u8,
        reason_string: Option<String>,
        short: bool,
    },
    /// The PUBACK of [`Reply::AckWith`] (or the plain one when `reason` is
    /// 0 and there is no reason string), sent `delay` later while the
    /// connection goes on reading and answering: acknowledgements out of
    /// order, as a broker that forwards to slow subscribers sends them. It
    /// is lost if the connection ends first.
    AckAfter {
        delay: Duration,
        reason: u8,
        reason_string: Option<String>,
    },
    /// The TCP connection is closed (FIN) without an answer; whatever the
    /// client still sends is read and dropped until it closes too (at most
    /// 1 s), so that the close stays a FIN and not a reset.
    Close,
    /// The TCP connection is reset (RST): the client's read fails with
    /// "connection reset by peer". std cannot set SO_LINGER (that setter is
    /// unstable), so the fake leaves the last byte of this PUBLISH unread in
    /// the kernel and closes: Linux answers a close with unread data by RST.
    Reset,
    /// No PUBACK for this PUBLISH; the connection stays open.
    Silent,
    /// No PUBACK for this PUBLISH nor any later one on this connection
    /// (later ones are recorded without consulting `on_publish`); PINGREQ is
    /// still answered, like RabbitMQ 3.10 after an oversized message.
    SilentFromNowOn,
}

/// One PUBLISH as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its position among every PUBLISH this broker received, from 0,
    /// across all connections.
    pub index: u64,
    /// The protocol level of its connection: 4 (3.1.1) or 5.
    pub protocol: u8,
    /// The topic, after topic alias resolution.
    pub topic: String,
    pub payload: Vec<u8>,
    /// The packet identifier (0 for QoS 0).
    pub pkid: u16,
    pub qos: u8,
    /// The DUP flag: a retransmission.
    pub dup: bool,
    /// MQTT 5 Topic Alias property (0x23), when present.
    pub topic_alias: Option<u16>,
    /// MQTT 5 Content Type property (0x03), when present.
    pub content_type: Option<String>,
    /// MQTT 5 Payload Format Indicator property (0x01), when present.
    pub payload_format: Option<u8>,
    /// The whole packet on the wire, fixed header included, in bytes.
    pub size: usize,
}

/// What a [`FakeBroker`] does. `FakeConfig::default()` accepts both
/// protocol versions, announces no CONNACK properties and acknowledges
/// every PUBLISH with success; change what a test needs with
/// `FakeConfig { on_publish: Box::new(|p| ...), ..FakeConfig::default() }`.
pub struct FakeConfig {
    /// How to answer a CONNECT with protocol level 5.
    pub on_v5_connect: V5Connect,
    /// Whether a CONNECT with protocol level 4 (3.1.1) is accepted (CONNACK
    /// `20 02 00 00`); when false it gets `20 02 00 01` (unacceptable
    /// protocol version) and the connection is closed. True by default.
    pub accept_v311: bool,
    /// CONNACK v5 Receive Maximum (0x21) when accepting; None = absent.
    pub receive_max: Option<u16>,
    /// CONNACK v5 Maximum Packet Size (0x27) when accepting; None = absent.
    /// The fake itself does not enforce it: `on_publish` sees
    /// [`Published::size`] and decides.
    pub max_packet_size: Option<u32>,
    /// CONNACK v5 Topic Alias Maximum (0x22) when accepting; None = absent,
    /// which means 0: any PUBLISH carrying an alias then closes the
    /// connection, as does an alias above the maximum.
    pub topic_alias_max: Option<u16>,
    /// CONNACK v5 reason code: below 0x80 the connection is accepted (with
    /// the properties above); 0x80 or more refuses it (e.g. 0x86 bad user
    /// name or password, 0x87 not authorized): the CONNACK `20 03 00
    /// <reason> 00` is sent and the connection closed.
    pub connack_reason: u8,
    /// Decides the answer to each PUBLISH: called with the PUBLISH (topic
    /// after alias resolution), already recorded in
    /// [`FakeBroker::published`]. Called from the connection's thread.
    pub on_publish: Box<dyn Fn(&Published) -> Reply + Send + Sync>,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            on_v5_connect: V5Connect::Accept,
            accept_v311: true,
            receive_max: None,
            max_packet_size: None,
            topic_alias_max: None,
            connack_reason: 0,
            on_publish: Box::new(|_| Reply::Ack),
        }
    }
}

/// What every connection of a broker adds to.
#[derive(Default)]
struct Shared {
    published: Mutex<Vec<Published>>,
    connects: Mutex<Vec<u8>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A fake MQTT broker on 127.0.0.1 and a free port, serving until dropped
/// (at most 300 s).
pub struct FakeBroker {
    pub port: u16,
    shared: Arc<Shared>,
    worker: Worker,
}

impl FakeBroker {
    /// Starts listening at once: a client may connect as soon as this
    /// returns.
    pub fn start(cfg: FakeConfig) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let cfg = Arc::new(cfg);
        let (s, sh) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conns.retain(|c| !c.is_finished());
                if conns.len() >= MAX_CONNECTIONS {
                    continue; // dropped: closed at once
                }
                let (cfg, sh, s) = (cfg.clone(), sh.clone(), s.clone());
                conns.push(std::thread::spawn(move || {
                    if let Some(wire) = Wire::new(sock, &sh, &s, deadline) {
                        serve(wire, &cfg, &sh);
                    }
                }));
            }
            s.store(true, Ordering::SeqCst);
            for c in conns {
                let _ = c.join();
            }
        });
        FakeBroker {
            port,
            shared,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Every PUBLISH received so far, in order of arrival.
    pub fn published(&self) -> Vec<Published> {
        self.shared.published.lock().unwrap().clone()
    }

    /// Waits until at least `n` PUBLISHes arrived (at most `limit`) and
    /// returns them all.
    pub fn wait_for_published(&self, n: usize, limit: Duration) -> Vec<Published> {
        let deadline = Instant::now() + limit;
        while self.shared.published.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.published()
    }

    /// The protocol level of every CONNECT seen, in order (4 or 5; 3 for
    /// MQTT 3.1), refused ones included.
    pub fn connects(&self) -> Vec<u8> {
        self.shared.connects.lock().unwrap().clone()
    }

    /// Every byte of every packet read from clients.
    pub fn bytes_in(&self) -> u64 {
        self.shared.bytes_in.load(Ordering::SeqCst)
    }

    /// Every byte written to clients.
    pub fn bytes_out(&self) -> u64 {
        self.shared.bytes_out.load(Ordering::SeqCst)
    }
}

/// One packet as read: the first byte and the remaining bytes. When
/// `last_unread`, the last byte of `body` was only peeked and is still in
/// the kernel's receive buffer ([`Wire::consume_last`] takes it).
struct Packet {
    first: u8,
    body: Vec<u8>,
    size: usize,
    last_unread: bool,
}

/// A client connection, read packet by packet with exact reads so that the
/// fake never reads past the packet it is deciding about.
struct Wire<'a> {
    sock: TcpStream,
    shared: &'a Shared,
    stop: &'a AtomicBool,
    deadline: Instant,
    /// Answers to send later ([`Reply::AckAfter`]), by due time.
    later: Vec<(Instant, Vec<u8>)>,
}

impl<'a> Wire<'a> {
    fn new(
        sock: TcpStream,
        shared: &'a Shared,
        stop: &'a AtomicBool,
        deadline: Instant,
    ) -> Option<Wire<'a>> {
        sock.set_nonblocking(false).ok()?;
        sock.set_nodelay(true).ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .ok()?;
        sock.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(Wire {
            sock,
            shared,
            stop,
            deadline,
            later: Vec::new(),
        })
    }

    fn live(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }

    /// Sends the delayed answers that are due (called at least every 50 ms
    /// while the connection waits for the client).
    fn send_due(&mut self) -> Option<()> {
        let now = Instant::now();
        while let Some(i) = self.later.iter().position(|(due, _)| *due <= now) {
            let (_, bytes) = self.later.remove(i);
            self.send(&bytes)?;
        }
        Some(())
    }

    /// Fills `buf` entirely; None on end of stream, error, stop or deadline.
    fn fill(&mut self, buf: &mut [u8]) -> Option<()> {
        let mut have = 0;
        while have < buf.len() {
            if !self.live() {
                return None;
            }
            self.send_due()?;
            match self.sock.read(&mut buf[have..]) {
                Ok(0) => return None,
                Ok(n) => have += n,
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
        Some(())
    }

    /// The next byte, left in the receive buffer.
    fn peek_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        while self.live() {
            self.send_due()?;
            match self.sock.peek(&mut b) {
                Ok(0) => return None,
                Ok(_) => return Some(b[0]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The next packet, its last byte peeked but not consumed.
    fn next_packet(&mut self) -> Option<Packet> {
        let mut first = [0u8; 1];
        self.fill(&mut first)?;
        let mut remaining = 0usize;
        let mut len_len = 0;
        loop {
            let mut b = [0u8; 1];
            self.fill(&mut b)?;
            remaining |= usize::from(b[0] & 0x7f) << (7 * len_len);
            len_len += 1;
            if b[0] & 0x80 == 0 {
                break;
            }
            if len_len == 4 {
                return None; // malformed remaining length
            }
        }
        if remaining > MAX_REMAINING {
            return None;
        }
        let mut body = vec![0u8; remaining];
        let mut last_unread = false;
        if remaining > 0 {
            self.fill(&mut body[..remaining - 1])?;
            body[remaining - 1] = self.peek_byte()?;
            last_unread = true;
        }
        let size = 1 + len_len + remaining;
        self.shared
            .bytes_in
            .fetch_add(size as u64, Ordering::SeqCst);
        Some(Packet {
            first: first[0],
            body,
            size,
            last_unread,
        })
    }

    /// Reads the byte [`Wire::next_packet`] only peeked.
    fn consume_last(&mut self, p: &mut Packet) -> Option<()> {
        if p.last_unread {
            let mut b = [0u8; 1];
            self.fill(&mut b)?;
            p.last_unread = false;
        }
        Some(())
    }

    fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.sock.write_all(bytes).ok()?;
        self.shared
            .bytes_out
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Some(())
    }

    /// An orderly close: FIN, then whatever the client still sends is read
    /// and dropped until it closes too (at most 1 s), so that no unread
    /// data turns the close into a reset.
    fn close(mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
        let end = Instant::now() + DRAIN;
        let mut buf = [0u8; 4096];
        while self.live() && Instant::now() < end {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => break,
            }
        }
    }

    /// A reset: the socket is closed with unread data in its receive buffer
    /// (at least the peeked last byte of the current packet).
    fn reset(self) {
        drop(self.sock);
    }

    /// Reads and ignores everything until the client goes away.
    fn ignore_everything(mut self) {
        let mut buf = [0u8; 4096];
        while self.live() {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.shared.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => break,
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Serves one connection from its CONNECT to its end.
fn serve(mut wire: Wire<'_>, cfg: &FakeConfig, shared: &Shared) {
    let Some(mut connect) = wire.next_packet() else {
        return;
    };
    if connect.first != 0x10 || wire.consume_last(&mut connect).is_none() {
        return wire.close();
    }
    let Some(protocol) = connect_level(&connect.body) else {
        return wire.close();
    };
    shared.connects.lock().unwrap().push(protocol);
    match protocol {
        5 => match cfg.on_v5_connect {
            V5Connect::Accept if cfg.connack_reason >= 0x80 => {
                let _ = wire.send(&[0x20, 0x03, 0x00, cfg.connack_reason, 0x00]);
                return wire.close();
            }
            V5Connect::Accept => {
                if wire.send(&v5_connack(cfg)).is_none() {
                    return;
                }
            }
            V5Connect::CloseWithoutConnack => return wire.close(),
            V5Connect::V311ConnackRc1ThenClose => {
                let _ = wire.send(&[0x20, 0x02, 0x00, 0x01]);
                return wire.close();
            }
            V5Connect::Silent => return wire.ignore_everything(),
        },
        3 | 4 if cfg.accept_v311 => {
            if wire.send(&[0x20, 0x02, 0x00, 0x00]).is_none() {
                return;
            }
        }
        _ => {
            let _ = wire.send(&[0x20, 0x02, 0x00, 0x01]);
            return wire.close();
        }
    }
    let v5 = protocol == 5;
    let alias_max = if v5 {
        cfg.topic_alias_max.unwrap_or(0)
    } else {
        0
    };
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut silent = false;
    while let Some(mut packet) = wire.next_packet() {
        match packet.first >> 4 {
            3 => {
                let Some(mut p) = parse_publish(&packet, protocol) else {
                    return wire.close();
                };
                match p.topic_alias {
                    Some(a) if a == 0 || a > alias_max => return wire.close(),
                    Some(a) if p.topic.is_empty() => match aliases.get(&a) {
                        Some(t) => p.topic = t.clone(),
                        None => return wire.close(), // unknown alias
                    },
                    Some(a) => {
                        aliases.insert(a, p.topic.clone());
                    }
                    None if p.topic.is_empty() => return wire.close(),
                    None => {}
                }
                if p.qos > 1 {
                    return wire.close(); // QoS 2 is not spoken
                }
                {
                    let mut all = shared.published.lock().unwrap();
                    p.index = all.len() as u64;
                    all.push(p.clone());
                }
                let reply = if silent {
                    Reply::Silent
                } else {
                    (cfg.on_publish)(&p)
                };
                if reply == Reply::Reset {
                    return wire.reset();
                }
                if wire.consume_last(&mut packet).is_none() {
                    return;
                }
                let answer = match reply {
                    Reply::Ack => Some(puback(p.pkid, None)),
                    Reply::AckWith {
                        reason,
                        reason_string,
                    } if v5 => Some(puback(p.pkid, Some((reason, reason_string.as_deref())))),
                    Reply::AckWith { .. } => Some(puback(p.pkid, None)),
                    Reply::AckAfter {
                        delay,
                        reason,
                        reason_string,
                    } => {
                        let bytes = if v5 && (reason != 0 || reason_string.is_some()) {
                            puback(p.pkid, Some((reason, reason_string.as_deref())))
                        } else {
                            puback(p.pkid, None)
                        };
                        if p.qos == 1 {
                            wire.later.push((Instant::now() + delay, bytes));
                        }
                        None
                    }
                    Reply::Disconnect {
                        reason,
                        reason_string,
                        short,
                    } => {
                        if v5 {
                            let _ = wire.send(&disconnect(reason, reason_string.as_deref(), short));
                        }
                        return wire.close();
                    }
                    Reply::Close => return wire.close(),
                    // Reset was handled before the last byte was read.
                    Reply::Reset | Reply::Silent => None,
                    Reply::SilentFromNowOn => {
                        silent = true;
                        None
                    }
                };
                if let Some(bytes) = answer.filter(|_| p.qos == 1)
                    && wire.send(&bytes).is_none()
                {
                    return;
                }
            }
            12 if packet.body.is_empty() => {
                if wire.send(&[0xd0, 0x00]).is_none() {
                    return;
                }
            }
            // DISCONNECT from the client, or a packet the fake does not
            // speak.
            _ => {
                let _ = wire.consume_last(&mut packet);
                return wire.close();
            }
        }
    }
}

/// The protocol level of a CONNECT body: "MQTT" with level 4 or 5, or
/// "MQIsdp" with level 3.
fn connect_level(body: &[u8]) -> Option<u8> {
    let mut c = Cursor(body);
    let name = c.binary()?;
    let level = c.u8()?;
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => Some(level),
        _ => None,
    }
}

/// An accepting MQTT 5 CONNACK with the configured properties.
fn v5_connack(cfg: &FakeConfig) -> Vec<u8> {
    let mut props = Vec::new();
    if let Some(v) = cfg.receive_max {
        props.push(0x21);
        props.extend(v.to_be_bytes());
    }
    if let Some(v) = cfg.max_packet_size {
        props.push(0x27);
        props.extend(v.to_be_bytes());
    }
    if let Some(v) = cfg.topic_alias_max {
        props.push(0x22);
        props.extend(v.to_be_bytes());
    }
    let mut body = vec![0x00, cfg.connack_reason];
    put_varint(&mut body, props.len());
    body.extend(props);
    frame(0x20, &body)
}

/// A PUBACK: the 2-byte form, or with a reason code and an optional reason
/// string (MQTT 5).
fn puback(pkid: u16, reason: Option<(u8, Option<&str>)>) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if let Some((code, text)) = reason {
        body.push(code);
        if let Some(text) = text {
            let props = reason_string(text);
            put_varint(&mut body, props.len());
            body.extend(props);
        }
    }
    frame(0x40, &body)
}

/// A server DISCONNECT (MQTT 5).
fn disconnect(reason: u8, text: Option<&str>, short: bool) -> Vec<u8> {
    let mut body = vec![reason];
    if !short {
        let props = text.map(reason_string).unwrap_or_default();
        put_varint(&mut body, props.len());
        body.extend(props);
    }
    frame(0xe0, &body)
}

/// A Reason String property.
fn reason_string(text: &str) -> Vec<u8> {
    let mut v = vec![0x1f];
    v.extend((text.len() as u16).to_be_bytes());
    v.extend(text.as_bytes());
    v
}

/// Fixed header + body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    put_varint(&mut v, body.len());
    v.extend(body);
    v
}

/// An MQTT variable byte integer.
fn put_varint(v: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A PUBLISH's fields (index 0, alias not yet resolved); None if malformed.
fn parse_publish(packet: &Packet, protocol: u8) -> Option<Published> {
    let v5 = protocol == 5;
    let flags = packet.first & 0x0f;
    let qos = (flags >> 1) & 0x03;
    let mut c = Cursor(&packet.body);
    let topic = String::from_utf8(c.binary()?.to_vec()).ok()?;
    let pkid = if qos > 0 { c.u16()? } else { 0 };
    let mut p = Published {
        index: 0,
        protocol,
        topic,
        payload: Vec::new(),
        pkid,
        qos,
        dup: flags & 0x08 != 0,
        topic_alias: None,
        content_type: None,
        payload_format: None,
        size: packet.size,
    };
    if v5 {
        let len = c.varint()?;
        let mut props = Cursor(c.take(len)?);
        while !props.0.is_empty() {
            match props.u8()? {
                0x01 => p.payload_format = Some(props.u8()?),
                0x02 => {
                    props.take(4)?;
                }
                0x03 => p.content_type = Some(String::from_utf8(props.binary()?.to_vec()).ok()?),
                0x08 | 0x09 => {
                    props.binary()?;
                }
                0x0b => {
                    props.varint()?;
                }
                0x23 => p.topic_alias = Some(props.u16()?),
                0x26 => {
                    props.binary()?;
                    props.binary()?;
                }
                _ => return None,
            }
        }
    }
    p.payload = c.0.to_vec();
    Some(p)
}

/// Reads MQTT fields off the front of a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Two-byte length, then that many bytes (strings and binary data).
    fn binary(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn varint(&mut self) -> Option<usize> {
        let mut n = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
}
