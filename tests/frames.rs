//! `--group frame`: one message per Waspmote frame, all its rows marked on
//! its one PUBACK, never a frame in two halves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use util::{Broker, Subscriber, TestEnv, marked_ids};

const WAIT: Duration = Duration::from_secs(30);

/// Inserts `frames` frames of `sensors` readings each, as a parser writes
/// them: consecutive rows sharing id_wasp, frame_number and timestamp.
fn insert_frames(c: &rusqlite::Connection, frames: usize, sensors: &[&str], first_frame: usize) {
    for f in first_frame..first_frame + frames {
        for (i, s) in sensors.iter().enumerate() {
            c.execute(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp)
                 VALUES (?1, '400577471', 134, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    format!("node_{:02}", f % 3),
                    (f % 256) as i64,
                    s,
                    format!("{}.{i}", 20 + f % 10),
                    format!("2026-11-24 10:{:02}:{:02}", f / 60 % 60, f % 60)
                ],
            )
            .unwrap();
        }
    }
}

fn frames_received(sub: &Subscriber, n: usize) -> Vec<serde_json::Value> {
    sub.wait_for(n, WAIT)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

#[test]
fn group_frame_sends_one_message_per_frame_and_marks_all_its_rows() {
    let env = TestEnv::new("frames");
    let c = env.seed(0);
    insert_frames(&c, 20, &["TC", "HUM", "PRES", "BAT"], 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    let run = env.run(&[
        "flush", "--db", &db, "-L", &url, "--group", "frame", "--json",
    ]);
    run.expect_code(0);
    let j = run.json();
    assert_eq!(
        (j["published"].as_u64(), j["marked"].as_u64()),
        (Some(80), Some(80))
    );
    let got = sub.wait_for(20, WAIT);
    assert_eq!(got.len(), 20, "one message per frame");
    assert_eq!(got[0].topic, "sensors/node_00");
    assert_eq!(
        String::from_utf8(got[0].payload.clone()).unwrap(),
        r#"{"id_wasp":"node_00","id_secret":"400577471","frame_type":134,"frame_number":0,"timestamp":"2026-11-24 10:00:00","readings":{"TC":"20.0","HUM":"20.1","PRES":"20.2","BAT":"20.3"},"ids":[1,2,3,4]}"#
    );
    assert_eq!(marked_ids(&env.db(), 64).len(), 80);
}

#[test]
fn a_frame_that_a_chunk_would_cut_is_never_sent_in_two_halves() {
    let env = TestEnv::new("framechunks");
    let c = env.seed(0);
    // Frames of 3 rows read in chunks of 10: every chunk ends inside a frame.
    insert_frames(&c, 40, &["TC", "HUM", "BAT"], 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    env.run(&[
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--group",
        "frame",
        "--batch",
        "10",
        "--inflight",
        "3",
    ])
    .expect_code(0);
    let frames = frames_received(&sub, 40);
    assert_eq!(frames.len(), 40);
    for f in &frames {
        assert_eq!(
            f["readings"].as_object().unwrap().len(),
            3,
            "a frame went out cut: {f}"
        );
        assert_eq!(f["ids"].as_array().unwrap().len(), 3);
    }
    let ids: BTreeSet<i64> = frames
        .iter()
        .flat_map(|f| {
            f["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap())
        })
        .collect();
    assert_eq!(ids, (1..=120).collect());
    assert_eq!(marked_ids(&env.db(), 64), ids);
}

#[test]
fn limit_in_frame_mode_stops_before_a_frame_rather_than_inside_it() {
    let env = TestEnv::new("framelimit");
    let c = env.seed(0);
    insert_frames(&c, 10, &["TC", "HUM", "BAT"], 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    // 10 rows allowed: three whole frames (9 rows) go, the fourth waits.
    env.run(&[
        "flush", "--db", &db, "-L", &url, "--group", "frame", "--limit", "10",
    ])
    .expect_code(0);
    assert_eq!(frames_received(&sub, 3).len(), 3);
    assert_eq!(marked_ids(&env.db(), 64), (1..=9).collect());
    env.run(&["flush", "--db", &db, "-L", &url, "--group", "frame"])
        .expect_code(0);
    assert_eq!(marked_ids(&env.db(), 64).len(), 30);
}

#[test]
fn a_bad_reading_is_left_out_of_its_frame_and_the_rest_of_the_frame_goes() {
    let env = TestEnv::new("framebad");
    let c = env.seed(0);
    insert_frames(&c, 2, &["TC", "HUM", "BAT"], 0);
    c.execute("UPDATE sensorParser SET value = X'00' WHERE id = 2", [])
        .unwrap();
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    let run = env.run(&["flush", "--db", &db, "-L", &url, "--group", "frame"]);
    run.expect_code(65);
    assert!(
        run.stderr.contains("row 2 not sent: value is a BLOB"),
        "{run:#?}"
    );
    let frames = frames_received(&sub, 2);
    assert_eq!(frames[0]["ids"], serde_json::json!([1, 3]));
    assert_eq!(marked_ids(&env.db(), 64), BTreeSet::from([1, 3, 4, 5, 6]));
}

#[test]
fn frame_mode_refuses_a_topic_or_payload_that_differs_between_readings() {
    let env = TestEnv::new("frameflags");
    env.seed(1);
    let db = env.db_arg();
    env.run(&["flush", "--db", &db, "--group", "frame", "-t", "s/{sensor}"])
        .expect_code(64)
        .expect_one_error_line("{sensor}");
    env.run(&[
        "flush",
        "--db",
        &db,
        "--group",
        "frame",
        "--payload",
        "value",
    ])
    .expect_code(64)
    .expect_one_error_line("--payload");
    env.run(&["flush", "--db", &db, "--group", "frames"])
        .expect_code(64)
        .expect_one_error_line("row or frame");
    env.write("c.json", "{\"group\": \"frame\", \"topic\": \"t/{value}\"}");
    env.run(&["flush", "--db", &db, "--config", "c.json"])
        .expect_code(78);
    // A dry run shows the frame messages.
    let run = env.run(&[
        "flush",
        "--db",
        &db,
        "--group",
        "frame",
        "-t",
        "gw/{id_wasp}/{frame_number}",
        "--dry-run",
    ]);
    run.expect_code(0);
    assert!(
        run.stdout
            .starts_with("gw/node_00/0\t{\"id_wasp\":\"node_00\""),
        "{run:#?}"
    );
}
