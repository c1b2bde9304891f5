//! MQTT 5 through rumqttc's synchronous v5 client: the CONNECT and the
//! limits its CONNACK announces, PUBLISH properties (content type, payload
//! format indicator, topic alias), and rumqttc's events and errors reduced
//! to the session's terms, PUBACK reason codes and server DISCONNECTs
//! included.
//!
//! rumqttc 0.25.1 traps handled here: `set_keep_alive` panics below 5 s
//! (0, "none", becomes the protocol's largest interval); its state returns
//! before the collision check on a PUBACK with a failed reason code, so a
//! collided PUBLISH would wait until `CollisionTimeout` (see
//! `release_collision`); it enforces the broker's Maximum Packet Size by
//! failing the whole connection (the session checks sizes first).

use std::time::{Duration, Instant};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Code, Packet, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{
    Client, Connection, ConnectionError, Event as Ev, MqttOptions, RecvTimeoutError, Request,
    StateError, TryRecvError,
};

use super::{
    CONTENT_TYPE_JSON, Event, Fault, Incoming, Limits, Next, Options, Shape, Wire, await_connack,
    packet_size_v5,
};
use crate::config::Log;
use crate::template::MAX_TOPIC_LEN;

struct V5 {
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
    let keepalive = match broker.keepalive.as_secs() {
        0 => Duration::from_secs(u64::from(u16::MAX)),
        s => Duration::from_secs(s.max(5)),
    };
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    opts.set_keep_alive(keepalive)
        .set_clean_start(true)
        .set_connection_timeout(secs)
        .set_outgoing_inflight_upper_limit(o.inflight);
    if receives {
        // A subscriber (`check`) announces, and accepts, messages as large
        // as the ones it may be sent, with room for the broker's properties.
        let json = Shape {
            json: true,
            ..Shape::default()
        };
        let largest = packet_size_v5(MAX_TOPIC_LEN, o.max_payload, json) + 1024;
        opts.set_max_packet_size(Some(u32::try_from(largest).unwrap_or(u32::MAX)));
    }
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
    let (client, connection) = Client::new(opts, usize::from(o.inflight) + 4);
    let mut wire = V5 {
        client,
        connection,
        log: o.log,
        name: name.to_string(),
    };
    let limits = await_connack(wait, |left| match wire.connection.recv_timeout(left) {
        Ok(Ok(event)) => {
            if o.log.debug {
                crate::sys::say!("frameflush: mqtt: {event:?}");
            }
            let Ev::Incoming(Packet::ConnAck(ack)) = event else {
                return None;
            };
            let p = ack.properties.as_ref();
            Some(Ok(Limits {
                receive_max: p.and_then(|p| p.receive_max),
                max_packet_size: p.and_then(|p| p.max_packet_size),
                topic_alias_max: p.and_then(|p| p.topic_alias_max).unwrap_or(0),
                max_qos: p.and_then(|p| p.max_qos),
                retain_available: p.and_then(|p| p.retain_available).map(|r| r != 0),
            }))
        }
        Ok(Err(e)) => Some(Err(wire.fault(e))),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => Some(Err(Fault::Closed)),
    })?;
    Ok((Box::new(wire), limits))
}

/// The number MQTT 5 gives a CONNACK reason code.
fn connack_code(c: Code) -> u8 {
    match c {
        Code::Success => 0x00,
        Code::RefusedProtocolVersion | Code::UnsupportedProtocolVersion => 0x84,
        Code::BadClientId | Code::ClientIdentifierNotValid => 0x85,
        Code::ServiceUnavailable | Code::ServerUnavailable => 0x88,
        Code::UnspecifiedError => 0x80,
        Code::MalformedPacket => 0x81,
        Code::ProtocolError => 0x82,
        Code::ImplementationSpecificError => 0x83,
        Code::BadUserNamePassword => 0x86,
        Code::NotAuthorized => 0x87,
        Code::ServerBusy => 0x89,
        Code::Banned => 0x8A,
        Code::BadAuthenticationMethod => 0x8C,
        Code::TopicNameInvalid => 0x90,
        Code::PacketTooLarge => 0x95,
        Code::QuotaExceeded => 0x97,
        Code::PayloadFormatInvalid => 0x99,
        Code::RetainNotSupported => 0x9A,
        Code::QoSNotSupported => 0x9B,
        Code::UseAnotherServer => 0x9C,
        Code::ServerMoved => 0x9D,
        Code::ConnectionRateExceeded => 0x9F,
    }
}

fn suback_code(r: &SubscribeReasonCode) -> u8 {
    use SubscribeReasonCode as S;
    match r {
        S::Success(qos) => *qos as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn puback_code(r: PubAckReason) -> u8 {
    match r {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

impl V5 {
    /// rumqttc's event in the session's terms.
    fn event(&self, event: Ev) -> Event {
        match event {
            Ev::Outgoing(Outgoing::Publish(pkid)) => Event::Publish(pkid),
            Ev::Outgoing(Outgoing::AwaitAck(pkid)) => Event::AwaitAck(pkid),
            Ev::Outgoing(Outgoing::Disconnect) => Event::Disconnect,
            Ev::Incoming(Packet::PubAck(ack)) => Event::PubAck {
                pkid: ack.pkid,
                code: puback_code(ack.reason),
                reason: ack.properties.and_then(|p| p.reason_string),
            },
            Ev::Incoming(Packet::SubAck(ack)) => Event::Incoming(Incoming::SubAck {
                code: ack.return_codes.first().map_or(0x80, suback_code),
                reason: ack.properties.and_then(|p| p.reason_string),
            }),
            Ev::Incoming(Packet::Publish(p)) => Event::Incoming(Incoming::Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
            }),
            _ => Event::Other,
        }
    }

    fn fault(&self, e: ConnectionError) -> Fault {
        if let Some(tls) = crate::tls::handshake_failure_v5(&e, &self.name) {
            return Fault::Tls(tls);
        }
        match e {
            ConnectionError::Io(io) | ConnectionError::MqttState(StateError::Io(io)) => {
                Fault::from_io(&io)
            }
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::Io(io),
            )) => Fault::from_io(&io),
            ConnectionError::MqttState(StateError::Deserialization(d)) => {
                Fault::Garbled(d.to_string())
            }
            ConnectionError::MqttState(StateError::ConnectionAborted) => Fault::Closed,
            ConnectionError::MqttState(StateError::AwaitPingResp) => Fault::NoPingResp,
            ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code,
                reason_string,
            }) => Fault::ServerDisconnect {
                code: reason_code as u8,
                reason: reason_string,
            },
            ConnectionError::MqttState(StateError::ConnFail { reason }) => {
                Fault::Connack(connack_code(reason))
            }
            ConnectionError::ConnectionRefused(code) => Fault::Connack(connack_code(code)),
            ConnectionError::Timeout(_) => Fault::Timeout,
            ConnectionError::NotConnAck(p) => Fault::Garbled(format!("{p:?} before the CONNACK")),
            ConnectionError::RequestsDone => Fault::Closed,
            other => Fault::Other(other.to_string()),
        }
    }
}

impl Wire for V5 {
    fn publish(&mut self, topic: String, payload: Vec<u8>, shape: Shape) -> Result<(), String> {
        let properties = PublishProperties {
            payload_format_indicator: shape.json.then_some(1),
            content_type: shape.json.then(|| CONTENT_TYPE_JSON.to_string()),
            topic_alias: shape.alias,
            ..PublishProperties::default()
        };
        self.client
            .try_publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .map_err(|e| e.to_string())
    }

    // The event loop's two calls, the same for both clients.
    super::wire_events!();

    fn disconnect(&mut self) -> bool {
        self.client.try_disconnect().is_ok()
    }

    fn packet_size(&self, topic_len: usize, payload_len: usize, shape: Shape) -> usize {
        packet_size_v5(topic_len, payload_len, shape)
    }

    fn subscribe(&mut self, topic: String) -> Result<(), String> {
        self.client
            .try_subscribe(topic, QoS::AtLeastOnce)
            .map_err(|e| e.to_string())
    }

    fn release_collision(&mut self, pkid: u16) {
        let state = &mut self.connection.eventloop.state;
        if state.collision.as_ref().is_some_and(|p| p.pkid == pkid)
            && let Some(publish) = state.collision.take()
        {
            state.collision_ping_count = 0;
            self.connection
                .eventloop
                .pending
                .push_back(Request::Publish(publish));
        }
    }
}
