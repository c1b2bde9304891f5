//! MQTT 3.1.1 through rumqttc's synchronous client: the CONNECT, and
//! rumqttc's events and errors reduced to the session's terms. A 3.1.1
//! broker announces no limits and its PUBACK carries no reason code: every
//! PUBACK reads as 0x00, which is why a broker that acknowledges and drops a
//! refused message cannot be told from one that kept it.

use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event as Ev, MqttOptions, Outgoing,
    Packet, QoS, RecvTimeoutError, StateError, SubscribeReasonCode, TryRecvError,
};

use super::{
    Event, Fault, Incoming, Limits, Next, Options, Shape, Wire, await_connack, packet_size,
};
use crate::config::Log;
use crate::template::MAX_TOPIC_LEN;

struct V311 {
    client: Client,
    connection: Connection,
    log: Log,
    name: String,
}

pub(super) fn connect(
    o: &Options<'_>,
    addr: String,
    name: &str,
    receives: bool,
    wait: Duration,
) -> Result<(Box<dyn Wire>, Limits), Fault> {
    let broker = o.broker;
    let mut opts = MqttOptions::new(broker.client_id.clone(), addr, broker.port);
    let largest = packet_size(MAX_TOPIC_LEN, o.max_payload);
    // A publishing connection only gets acknowledgements; a subscriber
    // (`check`) gets messages as large as the ones it sends.
    let incoming = if receives { largest } else { 16 * 1024 };
    opts.set_keep_alive(broker.keepalive)
        .set_clean_session(true)
        .set_inflight(o.inflight)
        .set_max_packet_size(incoming, largest);
    #[cfg(feature = "tls")]
    if let Some(tls) = &broker.tls {
        opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            tls.config.clone(),
        )));
    }
    if let Some(user) = &broker.username {
        let pw = broker.password.as_ref().map_or("", |p| p.expose());
        opts.set_credentials(user.clone(), pw.to_string());
    }
    // The channel holds the whole window plus a DISCONNECT: try_publish
    // is never refused for a full channel.
    let (client, mut connection) = Client::new(opts, usize::from(o.inflight) + 4);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut net = connection.eventloop.network_options();
    net.set_connection_timeout(secs);
    connection.eventloop.set_network_options(net);
    let mut wire = V311 {
        client,
        connection,
        log: o.log,
        name: name.to_string(),
    };
    let limits = await_connack(wait, |left| {
        match wire.connection.recv_timeout(left) {
            Ok(Ok(event)) => {
                if o.log.debug {
                    crate::sys::say!("frameflush: mqtt: {event:?}");
                }
                // MQTT 3.1.1 announces no limits.
                matches!(event, Ev::Incoming(Packet::ConnAck(_))).then(|| Ok(Limits::default()))
            }
            Ok(Err(e)) => Some(Err(wire.fault(e))),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(Fault::Closed)),
        }
    })?;
    Ok((Box::new(wire), limits))
}

impl V311 {
    /// rumqttc's event in the session's terms.
    fn event(&self, event: Ev) -> Event {
        match event {
            Ev::Outgoing(Outgoing::Publish(pkid)) => Event::Publish(pkid),
            Ev::Outgoing(Outgoing::AwaitAck(pkid)) => Event::AwaitAck(pkid),
            Ev::Outgoing(Outgoing::Disconnect) => Event::Disconnect,
            Ev::Incoming(Packet::PubAck(ack)) => Event::PubAck {
                pkid: ack.pkid,
                code: 0,
                reason: None,
            },
            Ev::Incoming(Packet::SubAck(ack)) => Event::Incoming(Incoming::SubAck {
                code: match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(qos)) => *qos as u8,
                    Some(SubscribeReasonCode::Failure) | None => 0x80,
                },
                reason: None,
            }),
            Ev::Incoming(Packet::Publish(p)) => Event::Incoming(Incoming::Publish {
                topic: p.topic,
                payload: p.payload.to_vec(),
            }),
            _ => Event::Other,
        }
    }

    fn fault(&self, e: ConnectionError) -> Fault {
        if let Some(tls) = crate::tls::handshake_failure(&e, &self.name) {
            return Fault::Tls(tls);
        }
        match e {
            ConnectionError::Io(io) | ConnectionError::MqttState(StateError::Io(io)) => {
                Fault::from_io(&io)
            }
            ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => {
                Fault::from_io(&io)
            }
            ConnectionError::MqttState(StateError::Deserialization(d)) => {
                Fault::Garbled(d.to_string())
            }
            ConnectionError::MqttState(StateError::ConnectionAborted) => Fault::Closed,
            ConnectionError::MqttState(StateError::AwaitPingResp) => Fault::NoPingResp,
            ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => Fault::Timeout,
            ConnectionError::ConnectionRefused(code) => Fault::Connack(match code {
                ConnectReturnCode::RefusedProtocolVersion => 0x84,
                ConnectReturnCode::BadClientId => 0x85,
                ConnectReturnCode::ServiceUnavailable => 0x88,
                ConnectReturnCode::BadUserNamePassword => 0x86,
                ConnectReturnCode::NotAuthorized => 0x87,
                ConnectReturnCode::Success => 0x80,
            }),
            ConnectionError::NotConnAck(p) => Fault::Garbled(format!("{p:?} before the CONNACK")),
            other => Fault::Other(other.to_string()),
        }
    }
}

impl Wire for V311 {
    fn publish(&mut self, topic: String, payload: Vec<u8>, _shape: Shape) -> Result<(), String> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| e.to_string())
    }

    // The event loop's two calls, the same for both clients.
    super::wire_events!();

    fn disconnect(&mut self) -> bool {
        self.client.try_disconnect().is_ok()
    }

    fn packet_size(&self, topic_len: usize, payload_len: usize, _shape: Shape) -> usize {
        packet_size(topic_len, payload_len)
    }

    fn subscribe(&mut self, topic: String) -> Result<(), String> {
        self.client
            .try_subscribe(topic, QoS::AtLeastOnce)
            .map_err(|e| e.to_string())
    }
}
