//! The MQTT side: one clean-session connection through rumqttc's
//! synchronous client, a bounded window of QoS 1 PUBLISHes, and the
//! correlation of each PUBACK with the row it acknowledges.
//!
//! rumqttc's `publish` returns no packet id, so [`Tracker`] follows the
//! order in which the event loop reports `Outgoing::Publish(pkid)` (or
//! `Outgoing::AwaitAck(pkid)` when an id is still taken) for the requests
//! it was handed. The window is kept here, below rumqttc's request channel
//! capacity, so `try_publish` never meets a full channel (a blocking
//! `publish` would deadlock this single thread). After any connection error
//! the session is finished: rumqttc would reconnect by itself and, with a
//! clean session, silently drop what was queued and in flight, so those rows
//! stay unsent and the run ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event, MqttOptions, Outgoing, Packet,
    QoS, RecvTimeoutError, StateError,
};

use crate::config::{Broker, Log};
use crate::error::{Error, Exit, Result};
use crate::template::MAX_TOPIC_LEN;

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
}

/// Follows which message (`T`: the rows it carries) each packet id stands
/// for.
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

/// What one wait on the connection brought.
#[derive(Debug)]
pub enum Polled {
    /// The broker acknowledged the message carrying these rows.
    Acked(Rows),
    /// Some other event.
    Other,
    /// Nothing before the time was up.
    Idle,
}

pub struct Session {
    client: Client,
    connection: Connection,
    tracker: Tracker<Rows>,
    log: Log,
    /// host:port, for messages.
    name: String,
    /// The connection failed: nothing more can be sent on it.
    broken: bool,
}

/// The size of a QoS 1 PUBLISH packet on the wire.
pub fn packet_size(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + payload_len;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

impl Session {
    /// Connects and waits for the CONNACK. Errors: 69 unreachable, 77
    /// credentials or client id refused.
    pub fn connect(
        broker: &Broker,
        inflight: u16,
        max_payload: usize,
        log: Log,
    ) -> Result<Session> {
        // rumqttc joins host and port as "host:port": an IPv6 literal needs
        // its brackets back.
        let addr = if broker.host.contains(':') {
            format!("[{}]", broker.host)
        } else {
            broker.host.clone()
        };
        let name = format!("{addr}:{}", broker.port);
        let mut opts = MqttOptions::new(broker.client_id.clone(), addr, broker.port);
        opts.set_keep_alive(broker.keepalive)
            .set_clean_session(true)
            .set_inflight(inflight)
            .set_max_packet_size(16 * 1024, packet_size(MAX_TOPIC_LEN, max_payload));
        #[cfg(feature = "tls")]
        if let Some(tls) = &broker.tls {
            opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                tls.config.clone(),
            )));
        }
        if let (Some(user), Some(pw)) = (&broker.username, &broker.password) {
            opts.set_credentials(user.clone(), pw.expose().to_string());
        } else if let Some(user) = &broker.username {
            opts.set_credentials(user.clone(), String::new());
        }
        // The channel holds the whole window plus a DISCONNECT: try_publish
        // is never refused for a full channel.
        let (client, mut connection) = Client::new(opts, usize::from(inflight) + 4);
        let secs = broker.connect_timeout.as_secs_f64().ceil().max(1.0) as u64;
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(secs);
        connection.eventloop.set_network_options(net);

        let deadline = Instant::now() + broker.connect_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    Exit::Unavailable,
                    format!(
                        "broker {name} did not answer within {} s",
                        broker.connect_timeout.as_secs_f64()
                    ),
                ));
            }
            match connection.recv_timeout(left) {
                Ok(Ok(event)) => {
                    if log.debug {
                        eprintln!("frameflush: mqtt: {event:?}");
                    }
                    if let Event::Incoming(Packet::ConnAck(_)) = event {
                        break;
                    }
                }
                Ok(Err(e)) => return Err(connect_error(&name, broker, e)),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(
                        Exit::Unavailable,
                        format!("connection to broker {name} ended at once"),
                    ));
                }
            }
        }
        if log.verbose {
            eprintln!("frameflush: connected to {name} as {}", broker.client_id);
        }
        Ok(Session {
            client,
            connection,
            tracker: Tracker::new(inflight),
            log,
            name,
            broken: false,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Hands one QoS 1 PUBLISH to rumqttc. The caller keeps the window, so
    /// the channel always has room.
    pub fn publish(&mut self, rows: Rows, topic: String, payload: Vec<u8>) -> Result<()> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| {
                Error::new(
                    Exit::TempFail,
                    format!(
                        "cannot queue row {} for publishing: {e}",
                        rows.ids().first().copied().unwrap_or_default()
                    ),
                )
            })?;
        self.tracker.handed(rows);
        Ok(())
    }

    /// Waits up to `wait` for one event. A connection error ends the session
    /// (75): what is in flight stays unsent.
    pub fn poll(&mut self, wait: Duration) -> Result<Polled> {
        let event = match self.connection.recv_timeout(wait) {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => {
                self.broken = true;
                if let Some(tls_error) = crate::tls::handshake_failure(&e, &self.name) {
                    return Err(Error::new(
                        Exit::TempFail,
                        format!("connection to broker lost: {tls_error}"),
                    ));
                }
                return Err(Error::new(
                    Exit::TempFail,
                    format!(
                        "connection to broker {} lost: {}; {} row(s) in flight stay unsent",
                        self.name,
                        describe(&e),
                        self.tracker.in_flight()
                    ),
                ));
            }
            Err(RecvTimeoutError::Timeout) => return Ok(Polled::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                self.broken = true;
                return Err(Error::new(
                    Exit::TempFail,
                    format!("connection to broker {} ended", self.name),
                ));
            }
        };
        if self.log.debug {
            eprintln!("frameflush: mqtt: {event:?}");
        }
        let step = match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self
                .tracker
                .on_outgoing_publish(pkid)
                .map(|()| Polled::Other),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                self.tracker.on_await_ack(pkid).map(|()| Polled::Other)
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.tracker.on_puback(ack.pkid).map(Polled::Acked)
            }
            _ => Ok(Polled::Other),
        };
        step.map_err(|Mismatch(why)| {
            Error::new(
                Exit::TempFail,
                format!("lost track of packet ids ({why}); rows in doubt stay unsent"),
            )
        })
    }

    /// Sends DISCONNECT and waits (at most `wait`) until it has gone out, so
    /// the broker sees a clean end rather than a dropped connection.
    pub fn disconnect(mut self, wait: Duration) {
        if self.broken || self.client.try_disconnect().is_err() {
            return;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if self.log.verbose {
                    eprintln!(
                        "frameflush: DISCONNECT did not go out within {} s",
                        wait.as_secs_f64()
                    );
                }
                return;
            }
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                    if self.log.debug {
                        eprintln!("frameflush: mqtt: Outgoing(Disconnect)");
                    }
                    return;
                }
                Ok(Ok(event)) => {
                    if self.log.debug {
                        eprintln!("frameflush: mqtt: {event:?}");
                    }
                }
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) => crate::sys::io_reason(io),
        ConnectionError::MqttState(StateError::Io(io)) => crate::sys::io_reason(io),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "the broker closed the connection".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "the broker stopped answering pings".into()
        }
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            "the network timed out".into()
        }
        other => other.to_string(),
    }
}

fn connect_error(name: &str, broker: &Broker, e: ConnectionError) -> Error {
    if let Some(tls_error) = crate::tls::handshake_failure(&e, &broker.host) {
        return tls_error;
    }
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => Error::new(
                Exit::NoPerm,
                format!(
                    "broker {name} refused the user name or password (check --username and the password)"
                ),
            ),
            ConnectReturnCode::NotAuthorized => Error::new(
                Exit::NoPerm,
                format!(
                    "broker {name} refused the connection: not authorized (check --username and the password)"
                ),
            ),
            ConnectReturnCode::BadClientId => Error::new(
                Exit::NoPerm,
                format!(
                    "broker {name} refused the client id {:?} (set another with --id)",
                    broker.client_id
                ),
            ),
            ConnectReturnCode::ServiceUnavailable => Error::new(
                Exit::Unavailable,
                format!("broker {name} says it is unavailable"),
            ),
            ConnectReturnCode::RefusedProtocolVersion => Error::new(
                Exit::Unavailable,
                format!("broker {name} does not accept MQTT 3.1.1"),
            ),
            ConnectReturnCode::Success => Error::new(
                Exit::Unavailable,
                format!("broker {name} refused the connection"),
            ),
        },
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Error::new(
                Exit::Unavailable,
                format!(
                    "broker {name} refused the connection (is it running and listening on that port?)"
                ),
            )
        }
        ConnectionError::NetworkTimeout => Error::new(
            Exit::Unavailable,
            format!(
                "broker {name} did not answer within {} s",
                broker.connect_timeout.as_secs_f64()
            ),
        ),
        other => Error::new(
            Exit::Unavailable,
            format!("cannot reach broker {name}: {}", describe(&other)),
        ),
    }
}

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
    }
}
