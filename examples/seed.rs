//! Fills a database with realistic Waspmote readings, for the demo and the
//! benchmark: `cargo run --release --example seed -- DB ROWS [SYNC]`.
//!
//! Rows come frame by frame, as Meshlium's parser writes them: each frame
//! of a node gives one row per sensor (TC, HUM, PRES, BAT), sharing
//! `id_wasp`, `id_secret`, `frame_type`, `frame_number` and `timestamp`.
//! The table is created when missing; rows are appended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(db), Some(rows)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: seed DB ROWS [SYNC]");
        return ExitCode::from(64);
    };
    let sync: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sensorParser (
           id           INTEGER PRIMARY KEY AUTOINCREMENT,
           id_wasp      TEXT NOT NULL,
           id_secret    TEXT,
           frame_type   INTEGER,
           frame_number INTEGER,
           sensor       TEXT NOT NULL,
           value        TEXT,
           timestamp    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
           sync         INTEGER NOT NULL DEFAULT 0,
           raw          TEXT,
           parser_type  INTEGER NOT NULL DEFAULT 0)",
    )
    .unwrap();
    let sensors = ["TC", "HUM", "PRES", "BAT"];
    let mut written = 0u64;
    while written < rows {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp, sync, raw, parser_type)
                     VALUES (?1, ?2, 134, ?3, ?4, ?5, ?6, ?7, 'noraw', 0)",
                )
                .unwrap();
            for _ in 0..50_000u64.min(rows - written) {
                let i = written;
                let frame = i / 4;
                let node = frame % 12;
                let secs = 1_795_000_000 + frame * 5;
                let (d, s) = (secs / 86_400, secs % 86_400);
                // A frame every 5 s from 2026-11-19 on (the day wraps
                // after ten days: realistic-looking, not a calendar).
                let ts = format!(
                    "2026-11-{:02} {:02}:{:02}:{:02}",
                    19 + (d - 20_775) % 10,
                    s / 3600,
                    s / 60 % 60,
                    s % 60
                );
                let sensor = sensors[(i % 4) as usize];
                let value = match sensor {
                    "TC" => format!("{:.2}", 18.0 + (i % 700) as f64 / 100.0),
                    "HUM" => format!("{:.1}", 35.0 + (i % 400) as f64 / 10.0),
                    "PRES" => format!("{:.2}", 101_000.0 + (i % 900) as f64),
                    _ => format!("{}", 60 + i % 40),
                };
                st.execute(rusqlite::params![
                    format!("node_{node:02}"),
                    format!("{}", 400_577_471 + node),
                    (frame % 256) as i64,
                    sensor,
                    value,
                    ts,
                    sync
                ])
                .unwrap();
                written += 1;
            }
        }
        tx.commit().unwrap();
    }
    ExitCode::SUCCESS
}
