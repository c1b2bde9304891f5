//! The round trip: proof that the broker accepts and routes what the next
//! run will send. For each of a few distinct topics, a second connection
//! (client id `<id>-check-sub`, the same user) subscribes to that exact
//! topic; the real next message of that topic goes out at QoS 1 on the
//! first connection; then the PUBACK (under MQTT 5 with its reason code) and
//! the message's return through the subscription are awaited, each for at
//! most `--ack-timeout`.
//!
//! Under MQTT 3.1.1 the echo is the only proof: mosquitto acknowledges a
//! PUBLISH its ACL refuses and drops it, so a PUBACK without the echo is a
//! FAIL (77: the topic is refused, and a run would mark those rows sent).
//! Under MQTT 5 the PUBACK's reason code is the proof (0x87 is a FAIL
//! naming the topic); a success without the echo means the subscription
//! may not read the topic: a warning. So is a subscription the broker
//! refuses (SUBACK 0x80 and up; mosquitto's dynamic security plugin does,
//! its ACL file grants and then delivers nothing): the PUBACK alone is
//! reported. Nothing is marked, so each message checked goes out once more
//! with the next run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Report;
use crate::config::{Broker, Config};
use crate::error::{Error, Exit};
use crate::session::reason::{self, Verdict};
use crate::session::{Incoming, Message, Options, Polled, Protocol, Session, Unsent};

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How waiting for a PUBACK ended.
enum Acked {
    Yes(Duration),
    Refused {
        code: u8,
        reason: Option<String>,
        verdict: Verdict,
    },
    TimedOut,
    /// The connection ended while the message was in flight.
    Lost,
}

/// Waits for the SUBACK of the subscription just made: its code, or why
/// there is none.
fn suback(sub: &mut Session, until: Instant) -> Result<(u8, Option<String>), String> {
    loop {
        while let Some(i) = sub.incoming() {
            if let Incoming::SubAck { code, reason } = i {
                return Ok((code, reason));
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no SUBACK within --ack-timeout".to_string());
        }
        if let Err(b) = sub.poll(left.min(Duration::from_millis(100))) {
            return Err(b.error.message);
        }
    }
}

/// Waits for the message to come back through the subscription.
fn echo(sub: &mut Session, m: &Message, until: Instant) -> Result<bool, String> {
    loop {
        while let Some(i) = sub.incoming() {
            if let Incoming::Publish { topic, payload } = i
                && payload == m.payload
                && (topic.is_empty() || topic == m.topic)
            {
                return Ok(true);
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        if let Err(b) = sub.poll(left.min(Duration::from_millis(100))) {
            return Err(b.error.message);
        }
    }
}

fn puback(s: &mut Session, until: Instant, sent: Instant) -> Acked {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Acked::TimedOut;
        }
        match s.poll(left.min(Duration::from_millis(100))) {
            Ok(Polled::Acked(_)) => return Acked::Yes(sent.elapsed()),
            Ok(Polled::Refused(r)) => {
                return Acked::Refused {
                    code: r.code,
                    reason: r.reason,
                    verdict: r.verdict,
                };
            }
            Ok(Polled::Other | Polled::Idle) => {}
            Err(_) => return Acked::Lost,
        }
    }
}

/// Whether the broker closed the publishing connection after its last
/// PUBACK, polled for a moment: mosquitto with `max_queued_messages 0`
/// acknowledges a refused MQTT 3.1.1 PUBLISH and then closes the
/// connection, and the next message must not take the blame.
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

/// The round trip of each sample message, published on `publisher`
/// (connected as `pub_broker`). A connection the broker closes on a
/// message is made again for the next topic. Returns the publishing
/// session when it is still usable (for its DISCONNECT).
pub fn run(
    cfg: &Config,
    pub_broker: &Broker,
    sub_broker: &Broker,
    mut publisher: Session,
    samples: Vec<Message>,
    r: &mut Report,
) -> Option<Session> {
    let protocol = publisher.protocol();
    let wait = cfg.ack_timeout;
    let options = Options {
        broker: sub_broker,
        inflight: cfg.inflight.min(16),
        max_payload: cfg.max_payload,
        wanted: crate::config::Wanted::Only(protocol),
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
    // Messages the broker took (and, as far as can be seen, delivered):
    // each goes out once more with the next run.
    let mut duplicates = 0;
    let mut alive = true;
    let count = samples.len();
    for (i, m) in samples.into_iter().enumerate() {
        if !alive {
            // The broker closed the connection on the last message: a new
            // one for the rest.
            let options = Options {
                broker: pub_broker,
                inflight: cfg.inflight,
                max_payload: cfg.max_payload,
                wanted: crate::config::Wanted::Only(protocol),
                log: cfg.log,
            };
            match Session::connect(&options, None, 0) {
                Ok((s, _)) => {
                    publisher = s;
                    alive = true;
                }
                Err(e) => {
                    r.warn(
                        "round-trip",
                        format!(
                            "cannot connect again to check the {} other topic(s): {}",
                            count - i,
                            e.message
                        ),
                        Value::Null,
                    );
                    break;
                }
            }
        }
        let topic = m.topic.clone();
        // The subscription first, so that the message cannot pass it by.
        let mut verifiable = false;
        if let Some(s) = sub.as_mut() {
            let answer = s
                .subscribe(&topic)
                .map_err(|e| e.message)
                .and_then(|()| suback(s, Instant::now() + wait));
            match answer {
                Ok((code, _)) if code < 0x80 => verifiable = true,
                Ok((code, reason)) => r.warn(
                    "subscribe",
                    format!(
                        "cannot verify routing of {topic}: the broker refused the subscription ({}): the ACL does not let this user read the topic; the PUBACK alone is reported",
                        reason::describe(code, reason.as_deref())
                    ),
                    json!({ "topic": topic, "suback_code": code }),
                ),
                Err(why) => {
                    r.warn(
                        "subscribe",
                        format!("cannot verify routing of {topic}: {why}"),
                        json!({ "topic": topic }),
                    );
                    sub = None;
                }
            }
        }
        let bytes = publisher.packet_bytes(&m);
        let label = m.rows.label();
        let start = Instant::now();
        match publisher.publish(m.clone()) {
            Ok(()) => {}
            Err(Unsent::TooLarge { why, .. }) => {
                // Named by the templates step already.
                r.skip("round-trip", format!("{topic}: not sent: {why}"));
                continue;
            }
            Err(Unsent::Failed(e)) => {
                r.fail("round-trip", e, Value::Null);
                alive = false;
                break;
            }
        }
        let figures = |extra: Value| {
            let mut v = json!({ "topic": topic, "rows": label, "bytes": bytes });
            if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
                a.extend(b);
            }
            v
        };
        match puback(&mut publisher, Instant::now() + wait, start) {
            Acked::Yes(took) => {
                if !verifiable {
                    if closed(&mut publisher) {
                        publisher.close();
                        alive = false;
                        r.fail(
                            "round-trip",
                            Error::new(
                                Exit::NoPerm,
                                format!(
                                    "{topic}: the broker acknowledged {label} and then closed the connection: its ACL may refuse this topic (mosquitto with max_queued_messages 0 does so)"
                                ),
                            ),
                            figures(json!({ "ack_ms": took.as_secs_f64() * 1000.0 })),
                        );
                        continue;
                    }
                    duplicates += 1;
                    r.warn(
                        "round-trip",
                        format!(
                            "{topic}: the broker acknowledged {label} in {}{}; whether it routes the topic is not verified",
                            ms(took),
                            if protocol == Protocol::V311 {
                                " (under MQTT 3.1.1 a PUBACK proves little: a broker may acknowledge and drop)"
                            } else {
                                ""
                            }
                        ),
                        figures(json!({ "ack_ms": took.as_secs_f64() * 1000.0, "echo": Value::Null })),
                    );
                    continue;
                }
                let Some(s) = sub.as_mut() else { continue };
                let echoed = echo(s, &m, Instant::now() + wait);
                let then_closed = closed(&mut publisher);
                if then_closed {
                    publisher.close();
                    alive = false;
                }
                // Not a duplicate: what an MQTT 3.1.1 broker acknowledged
                // and did not route was dropped.
                if !matches!(echoed, Ok(false)) || protocol == Protocol::V5 {
                    duplicates += 1;
                }
                match echoed {
                    Ok(true) => r.ok(
                        "round-trip",
                        format!(
                            "{topic}: accepted ({label}, PUBACK in {}) and delivered back through the subscription in {}",
                            ms(took),
                            ms(start.elapsed())
                        ),
                        figures(json!({
                            "ack_ms": took.as_secs_f64() * 1000.0,
                            "echo": true,
                            "echo_ms": start.elapsed().as_secs_f64() * 1000.0,
                        })),
                    ),
                    Ok(false) if protocol == Protocol::V311 => r.fail(
                        "round-trip",
                        Error::new(
                            Exit::NoPerm,
                            format!(
                                "{topic}: the broker acknowledged the message but did not route it{}: its ACL may refuse this topic (nothing came back through the subscription within {} s; an MQTT 3.1.1 broker acknowledges a refused message and drops it, and one that does not let this user read the topic back looks the same: `frameflush check -V 5` tells which, if the broker speaks MQTT 5); a run would mark {label} sent and it may never arrive",
                                if then_closed {
                                    ", and then closed the connection"
                                } else {
                                    ""
                                },
                                wait.as_secs_f64()
                            ),
                        ),
                        figures(json!({ "ack_ms": took.as_secs_f64() * 1000.0, "echo": false })),
                    ),
                    Ok(false) => r.warn(
                        "round-trip",
                        format!(
                            "{topic}: the broker accepted {label} (PUBACK in {}), but nothing came back through the subscription within {} s: cannot verify routing (the ACL may not let this user read the topic)",
                            ms(took),
                            wait.as_secs_f64()
                        ),
                        figures(json!({ "ack_ms": took.as_secs_f64() * 1000.0, "echo": false })),
                    ),
                    Err(why) => r.warn(
                        "round-trip",
                        format!(
                            "{topic}: the broker acknowledged it in {}, but the subscription's connection failed: {why}",
                            ms(took)
                        ),
                        figures(json!({ "ack_ms": took.as_secs_f64() * 1000.0 })),
                    ),
                }
            }
            Acked::Refused {
                code,
                reason: why,
                verdict,
            } => {
                let exit = match verdict {
                    Verdict::Refused(exit) => exit,
                    Verdict::Stop | Verdict::Accepted => Exit::TempFail,
                };
                let hint = match code {
                    0x87 => ": its ACL does not let this user publish to the topic",
                    0x90 => ": the broker does not take this topic name",
                    _ => "",
                };
                r.fail(
                    "round-trip",
                    Error::new(
                        exit,
                        format!(
                            "{topic}: the broker refused the message with {}{hint}; a run leaves {label} unsent and retries it up to --max-attempts",
                            reason::describe(code, why.as_deref())
                        ),
                    ),
                    figures(json!({ "puback_code": code })),
                );
            }
            Acked::TimedOut => {
                r.fail(
                    "round-trip",
                    Error::new(
                        Exit::TempFail,
                        format!(
                            "{topic}: no PUBACK within --ack-timeout {} s: a run would stop there and try again later",
                            wait.as_secs_f64()
                        ),
                    ),
                    figures(Value::Null),
                );
                alive = false;
                break;
            }
            Acked::Lost => {
                publisher.close();
                r.fail(
                    "round-trip",
                    Error::new(
                        Exit::DataErr,
                        format!(
                            "{topic}: the broker closed the connection on this message ({bytes} bytes): its ACL may refuse the topic, or the message is over its packet size limit; a run would charge {label} and quarantine it after --max-attempts runs"
                        ),
                    ),
                    figures(Value::Null),
                );
                alive = false;
            }
        }
    }
    if let Some(s) = sub {
        s.disconnect(Duration::from_secs(1));
    }
    let publisher = alive.then_some(publisher);
    if duplicates > 0 {
        r.ok(
            "duplicates",
            format!(
                "check marks nothing: the next run sends the {duplicates} message(s) the broker took once more (1 duplicate per topic checked)"
            ),
            json!({ "duplicates": duplicates }),
        );
    }
    publisher
}
