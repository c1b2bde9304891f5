//! The fake MQTT broker of `tests/util/fake_mqtt.rs` checked against
//! independent clients: raw bytes written and read here by hand, rumqttc's
//! 3.1.1 and 5 clients (the ones frameflush uses), and mosquitto_pub.
//!
//! The comments on the rumqttc v5 tests record what rumqttc 0.25.1 reports
//! for each way a broker can answer; the asserts keep those records true.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectReturnCode5, DisconnectReasonCode, Packet as Packet5, PubAck,
    PubAckProperties, PubAckReason, PublishProperties,
};
use util::fake_mqtt::{FakeBroker, FakeConfig, Published, Reply, V5Connect};

const LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A raw client: bytes by hand.

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and sends a CONNECT with protocol level `level` (4 or 5).
    fn connect(port: u16, level: u8) -> Raw {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let mut raw = Raw {
            sock,
            buf: Vec::new(),
        };
        raw.send(&connect_packet(level));
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    /// The next whole packet the broker sent, or None when the connection
    /// ended (closed or reset) or nothing came within `LIMIT`.
    fn packet(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return Some(self.buf.drain(..n).collect());
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut b = [0u8; 4096];
            match self.sock.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// How the connection ends: `Ok(bytes)` after an orderly close (FIN),
    /// with whatever came before it, `Err(kind)` on an error such as a
    /// reset. Panics if it is still open after `LIMIT`.
    fn end(&mut self) -> Result<Vec<u8>, std::io::ErrorKind> {
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "the connection is still open after {LIMIT:?}"
            );
            let mut b = [0u8; 4096];
            match self.sock.read(&mut b) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e.kind()),
            }
        }
    }

    /// True when nothing arrives for `quiet` and the connection stays open.
    fn quiet_for(&mut self, quiet: Duration) -> bool {
        let end = Instant::now() + quiet;
        while Instant::now() < end {
            let mut b = [0u8; 64];
            match self.sock.read(&mut b) {
                Ok(_) => return false,
                Err(e) if is_timeout(&e) => {}
                Err(_) => return false,
            }
        }
        self.buf.is_empty()
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            return v;
        }
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend(varint(body.len()));
    v.extend(body);
    v
}

fn frame_len(b: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let byte = *b.get(i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let total = 1 + i + remaining;
            return (b.len() >= total).then_some(total);
        }
    }
    None
}

/// A clean-session CONNECT, keep alive 60 s, client id "raw".
fn connect_packet(level: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3c];
    if level == 5 {
        body.push(0x00); // no properties
    }
    body.extend([0x00, 0x03, b'r', b'a', b'w']);
    frame(0x10, &body)
}

/// A QoS 1 PUBLISH; `props` = the MQTT 5 properties (None under 3.1.1).
fn publish_packet(topic: &str, pkid: u16, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    if let Some(p) = props {
        body.extend(varint(p.len()));
        body.extend(p);
    }
    body.extend(payload);
    frame(0x32, &body)
}

fn alias_prop(alias: u16) -> Vec<u8> {
    let mut v = vec![0x23];
    v.extend(alias.to_be_bytes());
    v
}

/// A broker answering every PUBLISH with `reply(index)`.
fn broker_replying(reply: impl Fn(u64) -> Reply + Send + Sync + 'static) -> FakeBroker {
    FakeBroker::start(FakeConfig {
        on_publish: Box::new(move |p: &Published| reply(p.index)),
        ..FakeConfig::default()
    })
}

// ---------------------------------------------------------------------------
// rumqttc clients.

fn v5_client(port: u16, name: &str) -> (v5::Client, v5::Connection) {
    let mut o = v5::MqttOptions::new(format!("fake-mqtt-{name}"), "127.0.0.1", port);
    o.set_connection_timeout(2)
        .set_keep_alive(Duration::from_secs(30));
    v5::Client::new(o, 100)
}

/// Polls a v5 connection until `done` holds for the events so far, the
/// first error (returned), or `LIMIT`.
fn v5_poll(
    conn: &mut v5::Connection,
    done: impl Fn(&[v5::Event]) -> bool,
) -> (Vec<v5::Event>, Option<v5::ConnectionError>) {
    v5_poll_for(conn, LIMIT, done)
}

fn v5_poll_for(
    conn: &mut v5::Connection,
    limit: Duration,
    done: impl Fn(&[v5::Event]) -> bool,
) -> (Vec<v5::Event>, Option<v5::ConnectionError>) {
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(e)) => events.push(e),
            Ok(Err(e)) => return (events, Some(e)),
            Err(_) => break,
        }
    }
    (events, None)
}

/// The first error of a v5 connection (panics when none comes).
fn v5_error(conn: &mut v5::Connection) -> v5::ConnectionError {
    let (events, err) = v5_poll(conn, |_| false);
    err.unwrap_or_else(|| panic!("no error within {LIMIT:?}; events: {events:?}"))
}

fn v5_pubacks(events: &[v5::Event]) -> Vec<PubAck> {
    events
        .iter()
        .filter_map(|e| match e {
            v5::Event::Incoming(Packet5::PubAck(a)) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn v311_client(port: u16, name: &str) -> (rumqttc::Client, rumqttc::Connection) {
    let mut o = rumqttc::MqttOptions::new(format!("fake-mqtt-{name}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    rumqttc::Client::new(o, 100)
}

/// Polls a 3.1.1 connection until `n` PUBACKs, the first error, or `LIMIT`.
fn v311_poll(
    conn: &mut rumqttc::Connection,
    n: usize,
) -> (Vec<rumqttc::PubAck>, Option<rumqttc::ConnectionError>) {
    let deadline = Instant::now() + LIMIT;
    let mut acks = Vec::new();
    while acks.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)))) => acks.push(a),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return (acks, Some(e)),
            Err(_) => break,
        }
    }
    (acks, None)
}

/// A 3.1.1 client publishes one message and gets its PUBACK: the broker
/// (still) takes 3.1.1.
fn assert_v311_publish_goes_through(port: u16) {
    let (client, mut conn) = v311_client(port, "v311-after");
    client
        .publish("after/v5", rumqttc::QoS::AtLeastOnce, false, "x")
        .unwrap();
    let (acks, err) = v311_poll(&mut conn, 1);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks.len(), 1);
}

// ---------------------------------------------------------------------------
// CONNACK.

#[test]
fn a_v5_connack_carries_exactly_the_configured_receive_maximum_packet_size_and_alias_maximum() {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(7),
        max_packet_size: Some(2000),
        topic_alias_max: Some(3),
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    assert_eq!(
        raw.packet().unwrap(),
        [
            0x20, 0x0e, 0x00, 0x00, 0x0b, 0x21, 0x00, 0x07, 0x27, 0x00, 0x00, 0x07, 0xd0, 0x22,
            0x00, 0x03
        ]
    );
    // Without properties: a property length of 0.
    let plain = FakeBroker::start(FakeConfig::default());
    let mut raw = Raw::connect(plain.port, 5);
    assert_eq!(raw.packet().unwrap(), [0x20, 0x03, 0x00, 0x00, 0x00]);
    let mut raw = Raw::connect(plain.port, 4);
    assert_eq!(raw.packet().unwrap(), [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(plain.connects(), [5, 4]);
}

#[test]
fn a_rumqttc_v5_client_reads_receive_maximum_maximum_packet_size_and_topic_alias_maximum() {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(20),
        max_packet_size: Some(2000),
        topic_alias_max: Some(10),
        ..FakeConfig::default()
    });
    let (_client, mut conn) = v5_client(broker.port, "connack-props");
    let (events, err) = v5_poll(&mut conn, |e| !e.is_empty());
    assert!(err.is_none(), "{err:?}");
    let v5::Event::Incoming(Packet5::ConnAck(ack)) = &events[0] else {
        panic!("first event is not a CONNACK: {events:?}");
    };
    assert_eq!(ack.code, ConnectReturnCode5::Success);
    let props = ack.properties.as_ref().expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(20));
    assert_eq!(props.max_packet_size, Some(2000));
    assert_eq!(props.topic_alias_max, Some(10));
    assert_eq!(broker.connects(), [5]);
}

#[test]
fn rumqttc_v5_refuses_to_send_a_publish_above_the_announced_maximum_packet_size() {
    let broker = FakeBroker::start(FakeConfig {
        max_packet_size: Some(200),
        ..FakeConfig::default()
    });
    let (client, mut conn) = v5_client(broker.port, "max-packet");
    client
        .publish("big", QoS5::AtLeastOnce, false, vec![b'x'; 500])
        .unwrap();
    // rumqttc checks the size itself (in its codec, when writing) and fails
    // the whole connection: MqttState(Deserialization(OutgoingPacketTooLarge
    // { pkt_size: 511, max: 200 })), "Mqtt state: Mqtt
    // serialization/deserialization error: Cannot send packet of size '511'.
    // It's greater than the broker's maximum packet size of: '200'". Not
    // StateError::OutgoingPacketTooLarge: framed.rs maps every codec error
    // to Deserialization. The PUBLISH stays in rumqttc's pending queue.
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::MqttState(v5::StateError::Deserialization(
                v5::mqttbytes::Error::OutgoingPacketTooLarge {
                    pkt_size: 511,
                    max: 200
                }
            ))
        ),
        "{err:?}"
    );
    assert!(broker.published().is_empty());
}

#[test]
fn rumqttc_v5_keeps_at_most_the_announced_receive_maximum_in_flight() {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(3),
        on_publish: Box::new(|_| Reply::Silent),
        ..FakeConfig::default()
    });
    let (client, mut conn) = v5_client(broker.port, "receive-max");
    for i in 0..6 {
        client
            .publish("t", QoS5::AtLeastOnce, false, format!("{i}"))
            .unwrap();
    }
    let (_, err) = v5_poll(&mut conn, |_| broker.published().len() >= 3);
    assert!(err.is_none(), "{err:?}");
    // Some time for a fourth one, which must not come.
    let (_, err) = v5_poll_for(&mut conn, Duration::from_millis(300), |_| false);
    assert!(err.is_none(), "{err:?}");
    let pkids: Vec<u16> = broker.published().iter().map(|p| p.pkid).collect();
    assert_eq!(pkids, [1, 2, 3]);
}

#[test]
fn rumqttc_v5_packet_ids_wrap_at_the_brokers_receive_maximum() {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(3),
        ..FakeConfig::default()
    });
    let (client, mut conn) = v5_client(broker.port, "pkid-wrap");
    for i in 0..7 {
        client
            .publish("t", QoS5::AtLeastOnce, false, format!("{i}"))
            .unwrap();
    }
    let (events, err) = v5_poll(&mut conn, |e| v5_pubacks(e).len() == 7);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(v5_pubacks(&events).len(), 7);
    let seen: Vec<(u16, Vec<u8>)> = broker
        .published()
        .into_iter()
        .map(|p| (p.pkid, p.payload))
        .collect();
    let expected: Vec<(u16, Vec<u8>)> = [1, 2, 3, 1, 2, 3, 1]
        .into_iter()
        .zip(0..7)
        .map(|(k, i)| (k, format!("{i}").into_bytes()))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_refusing_connack_reason_reaches_rumqttc_v5_as_connection_refused() {
    let broker = FakeBroker::start(FakeConfig {
        connack_reason: 0x87,
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    assert_eq!(raw.end(), Ok(vec![0x20, 0x03, 0x00, 0x87, 0x00]));
    let (_client, mut conn) = v5_client(broker.port, "refused-87");
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::ConnectionRefused(ConnectReturnCode5::NotAuthorized)
        ),
        "{err:?}"
    );
    let broker = FakeBroker::start(FakeConfig {
        connack_reason: 0x86,
        ..FakeConfig::default()
    });
    let (_client, mut conn) = v5_client(broker.port, "refused-86");
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::ConnectionRefused(ConnectReturnCode5::BadUserNamePassword)
        ),
        "{err:?}"
    );
}

#[test]
fn a_broker_refusing_3_1_1_answers_return_code_1_and_rumqttc_reports_refused_protocol_version() {
    let broker = FakeBroker::start(FakeConfig {
        accept_v311: false,
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 4);
    assert_eq!(raw.end(), Ok(vec![0x20, 0x02, 0x00, 0x01]));
    let (_client, mut conn) = v311_client(broker.port, "no-311");
    let (_, err) = v311_poll(&mut conn, 1);
    assert!(
        matches!(
            err,
            Some(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::RefusedProtocolVersion
            ))
        ),
        "{err:?}"
    );
    assert_eq!(broker.connects(), [4, 4]);
}

// ---------------------------------------------------------------------------
// A 3.1.1-only broker answering an MQTT 5 CONNECT.

#[test]
fn a_v5_connect_closed_without_connack_is_connection_aborted_for_rumqttc_v5() {
    let broker = FakeBroker::start(FakeConfig {
        on_v5_connect: V5Connect::CloseWithoutConnack,
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    assert_eq!(raw.end(), Ok(vec![]), "an orderly close, nothing sent");
    // rumqttc v5: MqttState(ConnectionAborted), "Mqtt state: Connection
    // closed by peer abruptly".
    let (_client, mut conn) = v5_client(broker.port, "close-no-connack");
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted)
        ),
        "{err:?}"
    );
    assert_v311_publish_goes_through(broker.port);
    assert_eq!(broker.connects(), [5, 5, 4]);
}

#[test]
fn a_3_1_1_connack_with_rc_1_to_a_v5_connect_is_connection_aborted_for_rumqttc_v5() {
    let broker = FakeBroker::start(FakeConfig {
        on_v5_connect: V5Connect::V311ConnackRc1ThenClose,
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    assert_eq!(raw.end(), Ok(vec![0x20, 0x02, 0x00, 0x01]));
    // rumqttc v5 never sees the return code: its CONNACK parser asks for
    // the (absent) property length, gets InsufficientBytes, which its codec
    // takes as "wait for more" after the 4 bytes were already consumed; the
    // close then reads as MqttState(ConnectionAborted).
    let (_client, mut conn) = v5_client(broker.port, "connack-rc1");
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted)
        ),
        "{err:?}"
    );
    assert_v311_publish_goes_through(broker.port);
    assert_eq!(broker.connects(), [5, 5, 4]);
}

#[test]
fn a_silent_answer_to_a_v5_connect_is_a_timeout_for_rumqttc_v5() {
    let broker = FakeBroker::start(FakeConfig {
        on_v5_connect: V5Connect::Silent,
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    assert!(raw.quiet_for(Duration::from_millis(300)));
    // rumqttc v5: Timeout(Elapsed) after MqttOptions::set_connection_timeout
    // (2 s here), "Timeout".
    let (_client, mut conn) = v5_client(broker.port, "silent-connect");
    let start = Instant::now();
    let err = v5_error(&mut conn);
    assert!(matches!(err, v5::ConnectionError::Timeout(_)), "{err:?}");
    assert!(start.elapsed() >= Duration::from_millis(1900));
    assert_v311_publish_goes_through(broker.port);
    assert_eq!(broker.connects(), [5, 5, 4]);
}

// ---------------------------------------------------------------------------
// PUBACK.

#[test]
fn puback_reasons_reach_a_rumqttc_v5_client_with_their_reason_strings() {
    let broker = broker_replying(|i| match i {
        0 => Reply::AckWith {
            reason: 0x87,
            reason_string: Some("Publishing to this topic is forbidden".into()),
        },
        1 => Reply::AckWith {
            reason: 0x10,
            reason_string: None,
        },
        2 => Reply::AckWith {
            reason: 0x90,
            reason_string: None,
        },
        _ => Reply::Ack,
    });
    let (client, mut conn) = v5_client(broker.port, "puback-reasons");
    for i in 0..4 {
        client
            .publish(format!("t/{i}"), QoS5::AtLeastOnce, false, "x")
            .unwrap();
    }
    let (events, err) = v5_poll(&mut conn, |e| v5_pubacks(e).len() == 4);
    assert!(err.is_none(), "the connection stays up: {err:?}");
    assert_eq!(
        v5_pubacks(&events),
        [
            PubAck {
                pkid: 1,
                reason: PubAckReason::NotAuthorized,
                properties: Some(PubAckProperties {
                    reason_string: Some("Publishing to this topic is forbidden".into()),
                    user_properties: vec![],
                }),
            },
            PubAck {
                pkid: 2,
                reason: PubAckReason::NoMatchingSubscribers,
                properties: None,
            },
            PubAck {
                pkid: 3,
                reason: PubAckReason::TopicNameInvalid,
                properties: None,
            },
            PubAck {
                pkid: 4,
                reason: PubAckReason::Success,
                properties: None,
            },
        ]
    );
}

#[test]
fn a_v5_puback_has_the_short_form_the_reason_form_and_the_reason_string_form() {
    let broker = broker_replying(|i| match i {
        0 => Reply::Ack,
        1 => Reply::AckWith {
            reason: 0x97,
            reason_string: None,
        },
        _ => Reply::AckWith {
            reason: 0x87,
            reason_string: Some("no".into()),
        },
    });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    for pkid in 1..=3 {
        raw.send(&publish_packet("a", pkid, Some(&[]), b"x"));
    }
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x01]);
    assert_eq!(raw.packet().unwrap(), [0x40, 0x03, 0x00, 0x02, 0x97]);
    assert_eq!(
        raw.packet().unwrap(),
        [
            0x40, 0x09, 0x00, 0x03, 0x87, 0x05, 0x1f, 0x00, 0x02, b'n', b'o'
        ]
    );
}

#[test]
fn under_3_1_1_a_refusing_puback_is_a_plain_success_puback_as_mosquitto_sends() {
    let broker = broker_replying(|_| Reply::AckWith {
        reason: 0x87,
        reason_string: Some("denied".into()),
    });
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 9, None, b"x"));
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x09]);
    let p = &broker.published()[0];
    assert_eq!((p.protocol, p.pkid, p.qos), (4, 9, 1));
}

#[test]
fn mosquitto_pub_under_v5_reports_a_refused_publish_in_its_own_words() {
    let broker = broker_replying(|_| Reply::AckWith {
        reason: 0x87,
        reason_string: Some("denied by ACL".into()),
    });
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", "denied/topic", "-m", "x"])
        .output()
        .expect("mosquitto_pub is installed");
    // mosquitto_pub 2.0.11 prints "Warning: Publish 1 failed: Not
    // authorized.", then the reason string on a line of its own, and exits 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Publish 1 failed: Not authorized") && stderr.contains("denied by ACL"),
        "{out:?}"
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(broker.published().len(), 1);
}

// ---------------------------------------------------------------------------
// Server DISCONNECT, close, reset.

#[test]
fn mosquittos_short_disconnect_e0_01_8e_reaches_rumqttc_v5_as_connection_aborted() {
    let broker = broker_replying(|_| Reply::Disconnect {
        reason: 0x8e,
        reason_string: Some("not sent in the short form".into()),
        short: true,
    });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, Some(&[]), b"x"));
    assert_eq!(raw.end(), Ok(vec![0xe0, 0x01, 0x8e]));
    // rumqttc v5 reads the reason code, then asks for the property length,
    // gets InsufficientBytes, which its codec takes as "wait for more"
    // after the 3 bytes were consumed: the DISCONNECT is lost, and the
    // close reads as MqttState(ConnectionAborted).
    let (client, mut conn) = v5_client(broker.port, "short-disconnect");
    client.publish("a", QoS5::AtLeastOnce, false, "x").unwrap();
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted)
        ),
        "{err:?}"
    );
    assert_eq!(broker.published().len(), 2);
}

#[test]
fn a_long_disconnect_reaches_rumqttc_v5_as_server_disconnect_with_its_reason_string() {
    let broker = broker_replying(|i| Reply::Disconnect {
        reason: if i == 0 { 0x95 } else { 0x97 },
        reason_string: (i == 0).then(|| "Packet too large".to_string()),
        short: false,
    });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, Some(&[]), b"x"));
    let mut expected = vec![0xe0, 0x15, 0x95, 0x13, 0x1f, 0x00, 0x10];
    expected.extend(b"Packet too large");
    assert_eq!(raw.end(), Ok(expected));
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, Some(&[]), b"x"));
    assert_eq!(raw.end(), Ok(vec![0xe0, 0x02, 0x97, 0x00]));

    let broker = broker_replying(|_| Reply::Disconnect {
        reason: 0x95,
        reason_string: Some("Packet too large".into()),
        short: false,
    });
    let (client, mut conn) = v5_client(broker.port, "long-disconnect");
    client.publish("a", QoS5::AtLeastOnce, false, "x").unwrap();
    // rumqttc v5: MqttState(ServerDisconnect { reason_code: PacketTooLarge,
    // reason_string: Some("Packet too large") }).
    let err = v5_error(&mut conn);
    match err {
        v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => {
            assert_eq!(reason_code, DisconnectReasonCode::PacketTooLarge);
            assert_eq!(reason_string.as_deref(), Some("Packet too large"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn under_3_1_1_a_disconnect_reply_just_closes_the_connection() {
    let broker = broker_replying(|_| Reply::Disconnect {
        reason: 0x95,
        reason_string: None,
        short: true,
    });
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, None, b"x"));
    assert_eq!(raw.end(), Ok(vec![]));
}

#[test]
fn close_ends_the_connection_in_order_and_reset_resets_it() {
    let broker = broker_replying(|i| if i == 0 { Reply::Close } else { Reply::Reset });
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, None, b"x"));
    assert_eq!(raw.end(), Ok(vec![]));
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, None, b"x"));
    assert_eq!(raw.end(), Err(std::io::ErrorKind::ConnectionReset));
    assert_eq!(broker.published().len(), 2);
}

#[test]
fn rumqttc_3_1_1_reads_close_as_connection_aborted_and_reset_as_an_io_error() {
    let broker = broker_replying(|i| if i == 0 { Reply::Close } else { Reply::Reset });
    let (client, mut conn) = v311_client(broker.port, "close-311");
    client
        .publish("a", rumqttc::QoS::AtLeastOnce, false, "x")
        .unwrap();
    let (_, err) = v311_poll(&mut conn, 1);
    // "Mqtt state: Connection closed by peer abruptly"
    assert!(
        matches!(
            err,
            Some(rumqttc::ConnectionError::MqttState(
                rumqttc::StateError::ConnectionAborted
            ))
        ),
        "{err:?}"
    );
    drop((client, conn));
    let (client, mut conn) = v311_client(broker.port, "reset-311");
    client
        .publish("a", rumqttc::QoS::AtLeastOnce, false, "x")
        .unwrap();
    let (_, err) = v311_poll(&mut conn, 1);
    // "Mqtt state: Mqtt serialization/deserialization error: IO: Connection
    // reset by peer (os error 104)", as the issue quotes it from mosquitto.
    match err {
        Some(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::Io(e),
        ))) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        e => panic!("{e:?}"),
    }
}

// ---------------------------------------------------------------------------
// Silence.

#[test]
fn silent_from_now_on_acks_nothing_more_but_still_answers_pingreq() {
    let broker = broker_replying(|i| {
        if i == 1 {
            Reply::SilentFromNowOn
        } else {
            Reply::Ack
        }
    });
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, None, b"1"));
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x01]);
    raw.send(&publish_packet("a", 2, None, b"2"));
    raw.send(&publish_packet("a", 3, None, b"3"));
    raw.send(&[0xc0, 0x00]);
    assert_eq!(raw.packet().unwrap(), [0xd0, 0x00], "PINGRESP, no PUBACK");
    assert!(raw.quiet_for(Duration::from_millis(200)));
    assert_eq!(broker.wait_for_published(3, LIMIT).len(), 3);
    // A new connection is acknowledged again.
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 4, None, b"4"));
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x04]);
}

#[test]
fn silent_skips_one_puback_and_the_next_publish_is_acknowledged() {
    let broker = broker_replying(|i| if i == 0 { Reply::Silent } else { Reply::Ack });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, Some(&[]), b"1"));
    raw.send(&publish_packet("a", 2, Some(&[]), b"2"));
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x02]);
    assert!(raw.quiet_for(Duration::from_millis(200)));
}

// ---------------------------------------------------------------------------
// PUBLISH parsing.

#[test]
fn topic_aliases_from_rumqttc_v5_resolve_to_their_topics() {
    let broker = FakeBroker::start(FakeConfig {
        topic_alias_max: Some(2),
        ..FakeConfig::default()
    });
    let (client, mut conn) = v5_client(broker.port, "alias");
    let alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..PublishProperties::default()
    };
    for (topic, a) in [
        ("sensors/a", 1),
        ("", 1),
        ("sensors/b", 2),
        ("", 2),
        ("", 1),
        ("sensors/c", 1),
        ("", 1),
    ] {
        client
            .publish_with_properties(topic, QoS5::AtLeastOnce, false, "x", alias(a))
            .unwrap();
    }
    let (_, err) = v5_poll(&mut conn, |e| v5_pubacks(e).len() == 7);
    assert!(err.is_none(), "{err:?}");
    let seen: Vec<(String, Option<u16>)> = broker
        .published()
        .into_iter()
        .map(|p| (p.topic, p.topic_alias))
        .collect();
    let expected: Vec<(String, Option<u16>)> = [
        ("sensors/a", 1),
        ("sensors/a", 1),
        ("sensors/b", 2),
        ("sensors/b", 2),
        ("sensors/a", 1),
        ("sensors/c", 1),
        ("sensors/c", 1),
    ]
    .into_iter()
    .map(|(t, a)| (t.to_string(), Some(a)))
    .collect();
    assert_eq!(seen, expected);
}

#[test]
fn an_unknown_or_too_large_topic_alias_closes_the_connection_unrecorded() {
    let broker = FakeBroker::start(FakeConfig {
        topic_alias_max: Some(2),
        ..FakeConfig::default()
    });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("", 1, Some(&alias_prop(2)), b"x"));
    assert_eq!(raw.end(), Ok(vec![]));
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    raw.send(&publish_packet("a", 1, Some(&alias_prop(3)), b"x"));
    assert_eq!(raw.end(), Ok(vec![]));
    assert!(broker.published().is_empty());
}

#[test]
fn content_type_and_payload_format_from_rumqttc_v5_are_recorded() {
    let broker = FakeBroker::start(FakeConfig::default());
    let (client, mut conn) = v5_client(broker.port, "props");
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        user_properties: vec![("k".into(), "v".into())],
        ..PublishProperties::default()
    };
    client
        .publish_with_properties("j", QoS5::AtLeastOnce, false, "{}", props)
        .unwrap();
    let (_, err) = v5_poll(&mut conn, |e| v5_pubacks(e).len() == 1);
    assert!(err.is_none(), "{err:?}");
    let p = &broker.published()[0];
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.payload_format, Some(1));
    assert_eq!((p.topic.as_str(), p.payload.as_slice()), ("j", &b"{}"[..]));
    assert_eq!(p.protocol, 5);
}

#[test]
fn packets_split_into_single_bytes_with_long_remaining_lengths_are_read_whole() {
    let broker = FakeBroker::start(FakeConfig::default());
    let sock = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut raw = Raw {
        sock,
        buf: Vec::new(),
    };
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mid = vec![b'm'; 200];
    let mut bytes = connect_packet(5);
    let p1 = publish_packet("s/mid", 1, Some(&[]), &mid); // 2-byte length
    let p2 = publish_packet("s/big", 2, Some(&[]), &big); // 3-byte length
    bytes.extend(&p1);
    bytes.extend(&p2);
    // The first 400 bytes one by one, the rest in 7-byte pieces.
    for b in &bytes[..400] {
        raw.send(std::slice::from_ref(b));
    }
    for chunk in bytes[400..].chunks(7) {
        raw.send(chunk);
    }
    assert_eq!(raw.packet().unwrap()[0], 0x20);
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x01]);
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x02]);
    let seen = broker.published();
    assert_eq!(seen[0].payload, mid);
    assert_eq!(seen[0].size, p1.len());
    assert_eq!(seen[1].payload, big);
    assert_eq!(seen[1].size, p2.len());
    assert_eq!(p2.len(), 1 + 3 + 2 + 5 + 2 + 1 + 20_000);
}

#[test]
fn bytes_in_and_out_count_every_packet_both_ways() {
    let broker = FakeBroker::start(FakeConfig::default());
    let mut raw = Raw::connect(broker.port, 4);
    raw.packet().unwrap();
    let publish = publish_packet("a/b", 1, None, b"hello");
    raw.send(&publish);
    raw.packet().unwrap();
    raw.send(&[0xc0, 0x00]);
    raw.packet().unwrap();
    raw.send(&[0xe0, 0x00]);
    assert_eq!(raw.end(), Ok(vec![]));
    let sent = connect_packet(4).len() + publish.len() + 2 + 2;
    assert_eq!(broker.bytes_in(), sent as u64);
    assert_eq!(broker.bytes_out(), 4 + 4 + 2, "CONNACK, PUBACK, PINGRESP");
}

#[test]
fn mosquitto_pub_publishes_under_both_versions_and_indices_count_across_connections() {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(20),
        topic_alias_max: Some(10),
        ..FakeConfig::default()
    });
    for (version, topic) in [("mqttv311", "plain/311"), ("mqttv5", "json/5")] {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-V", version, "-q", "1", "-t", topic, "-m", "{\"v\":1}"]);
        if version == "mqttv5" {
            cmd.args(["-D", "publish", "content-type", "application/json"])
                .args(["-D", "publish", "payload-format-indicator", "1"]);
        }
        let out = cmd.output().expect("mosquitto_pub is installed");
        assert!(out.status.success(), "{out:?}");
    }
    let seen = broker.published();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].index, seen[0].protocol, seen[0].topic.as_str()),
        (0, 4, "plain/311")
    );
    assert_eq!(
        (seen[1].index, seen[1].protocol, seen[1].topic.as_str()),
        (1, 5, "json/5")
    );
    assert_eq!(seen[1].content_type.as_deref(), Some("application/json"));
    assert_eq!(seen[1].payload_format, Some(1));
    assert_eq!(seen[1].payload, b"{\"v\":1}");
    assert_eq!(broker.connects(), [4, 5]);
}

#[test]
fn dropping_the_broker_ends_its_open_connections_within_a_second() {
    let broker = FakeBroker::start(FakeConfig {
        on_v5_connect: V5Connect::Silent,
        ..FakeConfig::default()
    });
    let mut silent = Raw::connect(broker.port, 5);
    let mut open = Raw::connect(broker.port, 4);
    open.packet().unwrap();
    assert!(silent.quiet_for(Duration::from_millis(100)));
    let start = Instant::now();
    drop(broker);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(silent.end().is_ok());
    assert!(open.end().is_ok());
}

#[test]
fn rumqttc_v5_reads_close_as_connection_aborted_and_reset_as_an_io_error() {
    let broker = broker_replying(|i| if i == 0 { Reply::Close } else { Reply::Reset });
    let (client, mut conn) = v5_client(broker.port, "close-5");
    client.publish("a", QoS5::AtLeastOnce, false, "x").unwrap();
    // "Mqtt state: Connection closed by peer abruptly"
    let err = v5_error(&mut conn);
    assert!(
        matches!(
            err,
            v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted)
        ),
        "{err:?}"
    );
    drop((client, conn));
    let (client, mut conn) = v5_client(broker.port, "reset-5");
    client.publish("a", QoS5::AtLeastOnce, false, "x").unwrap();
    // "Mqtt state: Mqtt serialization/deserialization error: IO: Connection
    // reset by peer (os error 104)"
    match v5_error(&mut conn) {
        v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::Io(e),
        )) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        e => panic!("{e:?}"),
    }
}

// ---------------------------------------------------------------------------
// Acknowledgements out of order.

#[test]
fn a_delayed_puback_arrives_after_the_answers_to_later_publishes() {
    let broker = broker_replying(|i| match i {
        0 => Reply::AckAfter {
            delay: Duration::from_millis(200),
            reason: 0x87,
            reason_string: None,
        },
        _ => Reply::Ack,
    });
    let mut raw = Raw::connect(broker.port, 5);
    raw.packet().unwrap();
    let start = Instant::now();
    raw.send(&publish_packet("a", 1, Some(&[]), b"1"));
    raw.send(&publish_packet("a", 2, Some(&[]), b"2"));
    assert_eq!(raw.packet().unwrap(), [0x40, 0x02, 0x00, 0x02]);
    assert_eq!(raw.packet().unwrap(), [0x40, 0x03, 0x00, 0x01, 0x87]);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

/// rumqttc v5 with Receive Maximum 2: PUBLISH 1 and 2 go out, 2 is acked at
/// once, so the third PUBLISH gets packet id 1 again while 1 is still in
/// flight: a collision; rumqttc parks it (Outgoing::AwaitAck(1)) until the
/// PUBACK of 1. Returns the PUBLISHes the broker got within 1.5 s when that
/// PUBACK (300 ms late) carries `reason`.
fn collided_publish_after_a_late_puback(reason: u8) -> (Vec<Published>, Vec<v5::Event>) {
    let broker = FakeBroker::start(FakeConfig {
        receive_max: Some(2),
        on_publish: Box::new(move |p| match p.index {
            0 => Reply::AckAfter {
                delay: Duration::from_millis(300),
                reason,
                reason_string: None,
            },
            _ => Reply::Ack,
        }),
        ..FakeConfig::default()
    });
    let (client, mut conn) = v5_client(broker.port, &format!("collision-{reason}"));
    for i in 1..=3 {
        client
            .publish("t", QoS5::AtLeastOnce, false, format!("{i}"))
            .unwrap();
    }
    let (events, err) = v5_poll_for(&mut conn, Duration::from_millis(1500), |_| false);
    assert!(err.is_none(), "{err:?}");
    assert!(
        events
            .iter()
            .any(|e| *e == v5::Event::Outgoing(rumqttc::Outgoing::AwaitAck(1))),
        "no collision: {events:?}"
    );
    (broker.published(), events)
}

#[test]
fn rumqttc_v5_sends_a_collided_publish_once_the_success_puback_frees_its_packet_id() {
    let (seen, events) = collided_publish_after_a_late_puback(0x00);
    let payloads: Vec<(u16, &[u8])> = seen.iter().map(|p| (p.pkid, &p.payload[..])).collect();
    assert_eq!(payloads, [(1, &b"1"[..]), (2, b"2"), (1, b"3")]);
    assert_eq!(v5_pubacks(&events).len(), 3);
}

#[test]
fn rumqttc_v5_never_sends_a_collided_publish_when_the_freeing_puback_is_a_refusal() {
    // v5/state.rs handle_incoming_puback: a reason other than Success or
    // NoMatchingSubscribers frees the slot, logs a warning and returns
    // before check_collision: the parked PUBLISH stays parked (and new
    // requests stay blocked) until CollisionTimeout after two keep-alive
    // pings. The PUBACK itself is still handed to the caller.
    let (seen, events) = collided_publish_after_a_late_puback(0x87);
    let payloads: Vec<(u16, &[u8])> = seen.iter().map(|p| (p.pkid, &p.payload[..])).collect();
    assert_eq!(payloads, [(1, &b"1"[..]), (2, b"2")]);
    let acks = v5_pubacks(&events);
    assert_eq!(
        acks.iter().map(|a| (a.pkid, a.reason)).collect::<Vec<_>>(),
        [(2, PubAckReason::Success), (1, PubAckReason::NotAuthorized)]
    );
}
