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

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

/// Node names cycle like the seed example's: twelve nodes.
const NODES: u64 = 12;

struct Args {
    host: String,
    port: u16,
    count: u64,
    window: u16,
    /// Sleep `pause` after every `pause_every` acknowledgements (0: never).
    pause_every: u64,
    pause: Duration,
}

fn usage() -> String {
    "usage: bare_publish [--host HOST] --port PORT [--count N] [--window W] [--pause-every N --pause-us U]"
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
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
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

fn run(args: &Args) -> Result<Duration, String> {
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
                if args.pause_every > 0 && acked % args.pause_every == 0 {
                    std::thread::sleep(args.pause);
                }
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
    Ok(start.elapsed())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("bare_publish: {why}");
            return ExitCode::from(64);
        }
    };
    match run(&args) {
        Ok(elapsed) => {
            println!(
                r#"{{"messages":{},"window":{},"elapsed_ms":{}}}"#,
                args.count,
                args.window,
                elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("bare_publish: error: {why}");
            ExitCode::from(69)
        }
    }
}
