//! `frameflush purge`: rows every destination has go, by age or by a cap;
//! unsent rows never do; the space goes back; the producer is not blocked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use util::TestEnv;

fn ids(db: &std::path::Path) -> BTreeSet<i64> {
    util::sync_bits(db).into_iter().map(|(id, _)| id).collect()
}

#[test]
fn purge_by_age_deletes_only_old_rows_that_every_required_destination_has() {
    let env = TestEnv::new("purge-age");
    let c = env.seed(0);
    c.execute_batch(
        "INSERT INTO sensorParser (id_wasp, sensor, value, timestamp, sync) VALUES
           ('n', 'TC', '1', datetime('now', '-40 days'), 192),  -- old, both bits: goes
           ('n', 'TC', '2', datetime('now', '-40 days'), 64),   -- old, one bit: stays
           ('n', 'TC', '3', datetime('now', '-40 days'), 0),    -- old, unsent: stays
           ('n', 'TC', '4', datetime('now', '-40 days'), 195),  -- old, both and more: goes
           ('n', 'TC', '5', datetime('now', '-1 days'), 192),   -- recent: stays
           ('n', 'TC', '6', 'not a date', 192)                 -- no date: stays",
    )
    .unwrap();
    drop(c);
    let db = env.db_arg();
    let run = env.run(&[
        "purge",
        "--db",
        &db,
        "--older-than",
        "30d",
        "--require-mask",
        "192",
        "--json",
    ]);
    run.expect_code(0);
    assert_eq!(run.stderr, "");
    let j = run.json();
    assert_eq!(
        (j["deleted_by_age"].as_u64(), j["remaining"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(ids(&env.db()), BTreeSet::from([2, 3, 5, 6]));
    // With the default require mask (64) the one-bit row goes too, the
    // unsent one never.
    env.run(&["purge", "--db", &db, "--older-than", "30d"])
        .expect_code(0);
    assert_eq!(ids(&env.db()), BTreeSet::from([3, 5, 6]));
}

#[test]
fn max_rows_deletes_the_oldest_sent_rows_and_never_an_unsent_one() {
    let env = TestEnv::new("purge-cap");
    let mut c = env.seed(0);
    util::insert_rows(&mut c, 50, 64); // ids 1..=50, sent
    util::insert_rows(&mut c, 10, 0); // ids 51..=60, unsent
    util::insert_rows(&mut c, 40, 64); // ids 61..=100, sent
    drop(c);
    let db = env.db_arg();
    let run = env.run(&["purge", "--db", &db, "--max-rows", "70", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["deleted_by_cap"], 30);
    let left = ids(&env.db());
    assert_eq!(left.len(), 70);
    assert_eq!(left.first(), Some(&31), "the oldest sent rows went first");
    assert!((51..=60).all(|id| left.contains(&id)), "unsent rows stay");
    // A cap below the unsent rows: every sent row goes, the unsent stay,
    // and the run says so.
    let run = env.run(&["purge", "--db", &db, "--max-rows", "5", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["over_cap"], true);
    assert!(
        run.stderr
            .contains("10 rows are not yet sent to every destination"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("more than --max-rows 5"), "{run:#?}");
    assert_eq!(ids(&env.db()), (51..=60).collect());
}

#[test]
fn purge_gives_the_space_back_and_truncates_the_wal() {
    let env = TestEnv::new("purge-space");
    let db = env.db_arg();
    env.run(&["init", "--db", &db]).expect_code(0);
    let mut c = Connection::open(env.db()).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    util::insert_rows(&mut c, 30_000, 64);
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let before = std::fs::metadata(env.db()).unwrap().len();
    let run = env.run(&["purge", "--db", &db, "--older-than", "0s", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["deleted_by_age"], 30_000);
    assert!(
        run.json()["freed_pages"].as_u64().unwrap() > 100,
        "{run:#?}"
    );
    drop(c);
    let after = std::fs::metadata(env.db()).unwrap().len();
    assert!(after < before / 4, "file {before} -> {after} bytes");
    let wal = std::fs::metadata(env.path("sensors.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "the WAL was truncated");
}

#[test]
fn purge_with_a_producer_inserting_never_blocks_it_or_deletes_its_rows() {
    let env = TestEnv::new("purge-producer");
    let mut c = env.seed(0);
    util::insert_rows(&mut c, 100_000, 64);
    drop(c);
    let db_path = env.db();
    let producer = std::thread::spawn(move || {
        let c = Connection::open(&db_path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut ids = Vec::new();
        let mut worst = Duration::ZERO;
        while Instant::now() < deadline && ids.len() < 4_000 {
            let t = Instant::now();
            c.execute(
                "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('p', 'TC', '1')",
                [],
            )
            .unwrap();
            worst = worst.max(t.elapsed());
            ids.push(c.last_insert_rowid());
            std::thread::sleep(Duration::from_millis(1));
        }
        (ids, worst)
    });
    std::thread::sleep(Duration::from_millis(100));
    let db = env.db_arg();
    env.run(&["purge", "--db", &db, "--older-than", "0s"])
        .expect_code(0);
    let (inserted, worst) = producer.join().unwrap();
    let left = ids(&env.db());
    assert!(
        inserted.iter().all(|id| left.contains(id)),
        "a producer row (unsent) was deleted"
    );
    assert!(left.iter().all(|id| *id > 100_000), "sent rows remain");
    println!(
        "producer: {} inserts during the purge, the slowest took {worst:?}",
        inserted.len()
    );
}

#[test]
fn purge_needs_an_age_or_a_cap_and_refuses_bad_ones() {
    let env = TestEnv::new("purge-args");
    env.seed(1);
    let db = env.db_arg();
    env.run(&["purge", "--db", &db])
        .expect_code(64)
        .expect_one_error_line("--older-than");
    env.run(&["purge", "--db", &db, "--older-than", "30"])
        .expect_code(64)
        .expect_one_error_line("needs a unit");
    env.run(&["purge", "--db", &db, "--older-than", "soon"])
        .expect_code(64);
    env.run(&[
        "purge",
        "--db",
        &db,
        "--max-rows",
        "1",
        "--require-mask",
        "0",
    ])
    .expect_code(64);
    env.run(&["purge", "--db", "missing.db", "--max-rows", "1"])
        .expect_code(66);
}
