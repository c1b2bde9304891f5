//! The benchmark's baseline: a bare QoS 1 publish loop over rumqttc's sync
//! client, with no database, as fast as rumqttc allows. It publishes
//! `--count` messages shaped like frameflush's (topic `sensors/node_XX/TC`,
//! a ~160-byte JSON payload), keeps at most `--window` of them
//! unacknowledged, waits for every PUBACK, disconnects, and prints one JSON
//! line: `{"messages":N,"window":W,"elapsed_ms":…}`. The time runs from
//! before the connection to after the DISCONNECT went out, as frameflush's
//! `elapsed_ms` does, so `scripts/bench` can hold the two against each
//! other: `cargo run --release --example bare_publish -- --host 127.0.0.1
//! --port P --count N --window W`.
//!
//! What frameflush adds on top (SQLite reads and marking, rendering topics
//! and payloads, PUBACK ↔ row correlation, deadlines) is left out on
//! purpose: the payloads are rendered once and cloned, acknowledgements are
//! only counted, and the event loop is driven by `recv` without a timer.
//!
//! By default the loop is reactive: each PUBACK frees a slot that is
//! refilled at once. `--pause-every N --pause-us U` makes it sleep U µs
//! after every N acknowledgements instead. That is no mistake: when the
//! broker is the bottleneck (a local mosquitto on two cores), a client that
//! answers every PUBACK at once keeps the broker handling one message per
//! wake-up, while one that lets acknowledgements pile up for a moment makes
//! it work in batches, and the whole loop gets faster. `scripts/bench` runs
//! both and takes the faster as the ceiling.
//!
//! `--v5` runs the same loop over rumqttc's MQTT 5 client
//! (`rumqttc::v5::Client`), putting on the wire what frameflush puts there
//! for a JSON payload under MQTT 5 by default: topic aliases up to the
//! broker's Topic Alias Maximum (and with `--content-type`, as frameflush's
//! `--content-type`, content type `application/json` and payload format
//! indicator 1), an alias sent alone only once the PUBLISHes that set the
//! aliases were acknowledged (the first round of nodes is waited for). The
//! window is capped by the broker's Receive Maximum, as frameflush's is; the
//! JSON line then also gives `"protocol":"5"`, the window used and what the
//! CONNACK announced.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, PublishProperties};
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

/// Node names cycle like the seed example's: twelve nodes.
const NODES: u64 = 12;

/// What frameflush's MQTT 5 session says a JSON payload is, when asked.
const CONTENT_TYPE_JSON: &str = "application/json";

struct Args {
    host: String,
    port: u16,
    count: u64,
    window: u16,
    /// Sleep `pause` after every `pause_every` acknowledgements (0: never).
    pause_every: u64,
    pause: Duration,
    /// MQTT 5 instead of 3.1.1.
    v5: bool,
    /// Under MQTT 5, content type and payload format indicator on every
    /// PUBLISH (frameflush's `--content-type`).
    content_type: bool,
}

/// What one run did: its time, and under MQTT 5 the window it used and
/// what the broker's CONNACK announced.
struct Done {
    elapsed: Duration,
    v5: Option<Announced>,
}

struct Announced {
    window: u16,
    receive_max: Option<u16>,
    topic_alias_max: u16,
}

fn usage() -> String {
    "usage: bare_publish [--host HOST] --port PORT [--count N] [--window W] [--pause-every N --pause-us U] [--v5 [--content-type]]"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".to_string(),
        port: 0,
        count: 100_000,
        window: 100,
        pause_every: 0,
        pause: Duration::ZERO,
        v5: false,
        content_type: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--v5" {
            args.v5 = true;
            continue;
        }
        if flag == "--content-type" {
            args.content_type = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |what: &str| format!("{flag} {value:?}: {what}\n{}", usage());
        match flag.as_str() {
            "--host" => args.host = value,
            "--port" => {
                args.port = value
                    .parse()
                    .map_err(|_| bad("not a port number"))
                    .and_then(|p| {
                        if p == 0 {
                            Err(bad("not a port"))
                        } else {
                            Ok(p)
                        }
                    })?;
            }
            "--count" => args.count = value.parse().map_err(|_| bad("not a count"))?,
            "--window" => {
                args.window = value
                    .parse()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or_else(|| bad("must be from 1 to 65535"))?;
            }
            "--pause-every" => {
                args.pause_every = value.parse().map_err(|_| bad("not a count"))?;
            }
            "--pause-us" => {
                args.pause =
                    Duration::from_micros(value.parse().map_err(|_| bad("not a number of µs"))?);
            }
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    if args.port == 0 {
        return Err(format!("--port is required\n{}", usage()));
    }
    Ok(args)
}

/// One message per node, rendered once: what frameflush's default topic
/// template and JSON payload make of a seeded row.
fn messages() -> Vec<(String, Vec<u8>)> {
    (0..NODES)
        .map(|node| {
            let topic = format!("sensors/node_{node:02}/TC");
            let payload = format!(
                r#"{{"id":{id},"id_wasp":"node_{node:02}","id_secret":"{secret}","frame_type":134,"frame_number":{frame},"sensor":"TC","value":"23.50","timestamp":"2026-11-24 10:00:00"}}"#,
                id = 100_000 + node * 4,
                secret = 400_577_471 + node,
                frame = 100 + node,
            );
            (topic, payload.into_bytes())
        })
        .collect()
}

/// The paused loop's sleep, after the `acked`-th acknowledgement.
fn after_ack(args: &Args, acked: u64) {
    if args.pause_every > 0 && acked.is_multiple_of(args.pause_every) {
        std::thread::sleep(args.pause);
    }
}

fn run(args: &Args) -> Result<Done, String> {
    let start = Instant::now();
    let window = u64::from(args.window);
    let name = format!("{}:{}", args.host, args.port);
    let mut opts = MqttOptions::new(
        format!("bare-publish-{}", std::process::id()),
        args.host.clone(),
        args.port,
    );
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(args.window)
        .set_max_packet_size(16 * 1024, 256 * 1024);
    // Room for the whole window plus the DISCONNECT: try_publish never
    // meets a full channel.
    let (client, mut connection) = Client::new(opts, usize::from(args.window) + 4);

    loop {
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot connect to {name}: {e}")),
            Err(_) => return Err(format!("connection to {name} ended at once")),
        }
    }

    let messages = messages();
    let mut next = messages.iter().cycle();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < args.count {
        while sent < args.count && sent - acked < window {
            let (topic, payload) = next.next().ok_or("no message to send")?;
            client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .map_err(|e| format!("cannot queue message {sent}: {e}"))?;
            sent += 1;
        }
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                acked += 1;
                after_ack(args, acked);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(format!(
                    "connection to {name} lost after {acked} acknowledgements: {e}"
                ));
            }
            Err(_) => return Err(format!("connection to {name} ended")),
        }
    }

    client
        .try_disconnect()
        .map_err(|e| format!("cannot queue the DISCONNECT: {e}"))?;
    loop {
        match connection.recv() {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            // Everything was acknowledged: a connection ending now costs
            // nothing but the clean goodbye.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Ok(Done {
        elapsed: start.elapsed(),
        v5: None,
    })
}

/// The same loop over MQTT 5, with frameflush's PUBLISH properties and
/// topic aliases, and the window capped by the broker's Receive Maximum.
fn run_v5(args: &Args) -> Result<Done, String> {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{Client, Event, MqttOptions};

    let start = Instant::now();
    let name = format!("{}:{}", args.host, args.port);
    let mut opts = MqttOptions::new(
        format!("bare-publish-{}", std::process::id()),
        args.host.clone(),
        args.port,
    );
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(args.window);
    let (client, mut connection) = Client::new(opts, usize::from(args.window) + 4);

    let announced = loop {
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet5::ConnAck(ack)))) => {
                let p = ack.properties.as_ref();
                let receive_max = p.and_then(|p| p.receive_max);
                break Announced {
                    window: receive_max.map_or(args.window, |r| r.min(args.window)),
                    receive_max,
                    topic_alias_max: p.and_then(|p| p.topic_alias_max).unwrap_or(0),
                };
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot connect to {name}: {e}")),
            Err(_) => return Err(format!("connection to {name} ended at once")),
        }
    };
    let window = u64::from(announced.window);

    // Node n's topic gets alias n + 1 when the broker allows that many.
    let messages: Vec<(String, Vec<u8>, Option<u16>)> = messages()
        .into_iter()
        .zip(1u16..)
        .map(|((topic, payload), alias)| {
            (
                topic,
                payload,
                (alias <= announced.topic_alias_max).then_some(alias),
            )
        })
        .collect();
    let mut next = messages.iter().cycle();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < args.count {
        // The first round of nodes sets the aliases; the rest waits until
        // all of it was acknowledged, then sends aliases alone.
        while sent < args.count && sent - acked < window && (sent < NODES || acked >= NODES) {
            let (topic, payload, alias) = next.next().ok_or("no message to send")?;
            let properties = PublishProperties {
                payload_format_indicator: args.content_type.then_some(1),
                content_type: args.content_type.then(|| CONTENT_TYPE_JSON.to_string()),
                topic_alias: *alias,
                ..PublishProperties::default()
            };
            let topic = if alias.is_some() && sent >= NODES {
                String::new()
            } else {
                topic.clone()
            };
            client
                .try_publish_with_properties(
                    topic,
                    QoS5::AtLeastOnce,
                    false,
                    payload.clone(),
                    properties,
                )
                .map_err(|e| format!("cannot queue message {sent}: {e}"))?;
            sent += 1;
        }
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet5::PubAck(ack)))) => {
                if !matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) {
                    return Err(format!(
                        "{name} refused message {} ({:?})",
                        acked + 1,
                        ack.reason
                    ));
                }
                acked += 1;
                after_ack(args, acked);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(format!(
                    "connection to {name} lost after {acked} acknowledgements: {e}"
                ));
            }
            Err(_) => return Err(format!("connection to {name} ended")),
        }
    }

    client
        .try_disconnect()
        .map_err(|e| format!("cannot queue the DISCONNECT: {e}"))?;
    loop {
        match connection.recv() {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Ok(Done {
        elapsed: start.elapsed(),
        v5: Some(announced),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("bare_publish: {why}");
            return ExitCode::from(64);
        }
    };
    let done = if args.v5 { run_v5(&args) } else { run(&args) };
    match done {
        Ok(Done { elapsed, v5: None }) => {
            println!(
                r#"{{"messages":{},"window":{},"elapsed_ms":{}}}"#,
                args.count,
                args.window,
                elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Ok(Done {
            elapsed,
            v5: Some(a),
        }) => {
            println!(
                r#"{{"messages":{},"window":{},"elapsed_ms":{},"protocol":"5","receive_max":{},"topic_alias_max":{}}}"#,
                args.count,
                a.window,
                elapsed.as_millis(),
                a.receive_max
                    .map_or_else(|| "null".to_string(), |r| r.to_string()),
                a.topic_alias_max
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("bare_publish: error: {why}");
            ExitCode::from(69)
        }
    }
}
