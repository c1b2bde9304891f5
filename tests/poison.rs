//! Poison rows: a row that can never become a message must neither block the
//! queue nor be retried forever, and is never dropped silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use util::{Broker, Subscriber, TestEnv, marked_ids};

const WAIT: Duration = Duration::from_secs(30);

fn table_layout(db: &std::path::Path) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT name, type FROM pragma_table_info('sensorParser')")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn a_poison_row_is_retried_max_attempts_times_then_quarantined_listed_and_requeued() {
    let env = TestEnv::new("quarantine");
    let c = env.seed(3);
    // Row 4: its value makes an invalid topic under `v/{value}`.
    c.execute_batch("INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', 'a+b')")
        .unwrap();
    util::insert_rows(&mut rusqlite::Connection::open(env.db()).unwrap(), 2, 0);
    let layout = table_layout(&env.db());
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    let args = [
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "-t",
        "v/{value}",
        "--json",
    ];

    // Attempts 1 and 2: the row is reported and stays unsent; the others go.
    for attempt in 1..=2 {
        let run = env.run(&args);
        run.expect_code(65);
        assert!(
            run.stderr
                .contains("row 4 not sent: topic \"v/a+b\" contains a wildcard"),
            "{run:#?}"
        );
        assert_eq!(run.json()["quarantined"], 0);
        let f = env.run(&["failures", "--db", &db, "--json"]).json();
        assert_eq!(f[0]["row_id"], 4);
        assert_eq!(f[0]["attempts"], attempt);
        assert!(f[0]["quarantined_at"].is_null());
    }
    assert_eq!(marked_ids(&env.db(), 64), BTreeSet::from([1, 2, 3, 5, 6]));
    // Attempt 3 (the default --max-attempts) quarantines it, and says so.
    let run = env.run(&args);
    run.expect_code(65);
    assert!(
        run.stderr
            .contains("1 row(s) failed 3 time(s) and are quarantined"),
        "{run:#?}"
    );
    assert_eq!(run.json()["quarantined"], 1);
    // Later runs skip it: nothing to send, exit 0, silent.
    util::insert_rows(&mut rusqlite::Connection::open(env.db()).unwrap(), 1, 0);
    let run = env.run(&args);
    run.expect_code(0);
    assert_eq!(run.stderr, "");
    assert_eq!(run.json()["failed"], 0);
    assert_eq!(run.json()["backlog"], 0);
    let run = env.run(&["flush", "--db", &db, "-L", &url, "-t", "v/{value}"]);
    run.expect_code(0);
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    // status counts it; failures lists it.
    let s = env.run(&["status", "--db", &db, "--json"]).json()["destinations"][0].clone();
    assert_eq!(
        (
            s["quarantined"].as_u64(),
            s["unsent"].as_u64(),
            s["failing"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    let text = env.run(&["failures", "--db", &db]).stdout;
    assert!(
        text.starts_with("row 4\t3 attempt(s)\tquarantined "),
        "{text}"
    );
    assert!(text.contains("contains a wildcard"), "{text}");
    // Its sync bit was never set; the producer's table kept its layout.
    assert!(!marked_ids(&env.db(), 64).contains(&4));
    assert_eq!(table_layout(&env.db()), layout);
    // A fixed template: requeue it, and it goes out.
    env.run(&["requeue", "--db", &db, "4"]).expect_code(0);
    let s = env.run(&["status", "--db", &db, "--json"]).json()["destinations"][0].clone();
    assert_eq!(
        (s["quarantined"].as_u64(), s["unsent"].as_u64()),
        (Some(0), Some(1))
    );
    env.run(&["flush", "--db", &db, "-L", &url, "-t", "fixed/{id}"])
        .expect_code(0);
    assert!(marked_ids(&env.db(), 64).contains(&4));
    let topics: Vec<String> = sub
        .wait_for(7, WAIT)
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    assert!(topics.contains(&"fixed/4".to_string()), "{topics:?}");
    // Delivered rows leave no failure record behind.
    assert_eq!(
        env.run(&["failures", "--db", &db, "--json"]).json(),
        serde_json::json!([])
    );
    util::accounting::assert_accounted(&env, &env.db(), 64);
}

#[test]
fn oversized_and_non_utf8_rows_are_quarantined_after_max_attempts_while_the_queue_moves_on() {
    let env = TestEnv::new("poisonkinds");
    let c = env.seed(0);
    c.execute(
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'CAM', ?1)",
        [&"x".repeat(5000)],
    )
    .unwrap();
    c.execute(
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', CAST(?1 AS TEXT))",
        [vec![0xc3u8, 0x28]],
    )
    .unwrap();
    drop(c);
    util::insert_rows(&mut rusqlite::Connection::open(env.db()).unwrap(), 3, 0);
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let args = [
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--max-payload",
        "1000",
        "--max-attempts",
        "1",
        "--json",
    ];
    let run = env.run(&args);
    run.expect_code(65);
    assert!(
        run.stderr.contains("row 1 not sent: payload of"),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("row 2 not sent: value is text that is not UTF-8"),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("2 row(s) failed 1 time(s) and are quarantined"),
        "{run:#?}"
    );
    assert_eq!(run.json()["quarantined"], 2);
    assert_eq!(marked_ids(&env.db(), 64), BTreeSet::from([3, 4, 5]));
    env.run(&args).expect_code(0);
    let f = env.run(&["failures", "--db", &db, "--json"]).json();
    assert_eq!(f.as_array().unwrap().len(), 2);
    // requeue --all puts both back; they fail again (exit 65) until fixed.
    env.run(&["requeue", "--db", &db, "--all"]).expect_code(0);
    env.run(&args).expect_code(65);
    util::accounting::assert_accounted(&env, &env.db(), 64);
}

#[test]
fn a_poison_row_in_every_chunk_never_stalls_a_large_backlog() {
    let env = TestEnv::new("poisonchunks");
    let mut c = env.seed(0);
    for _ in 0..20 {
        util::insert_rows(&mut c, 49, 0);
        c.execute_batch(
            "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', NULL)",
        )
        .unwrap();
    }
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let run = env.run(&[
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--payload",
        "value",
        "--batch",
        "50",
        "--json",
    ]);
    run.expect_code(65);
    let j = run.json();
    assert_eq!(
        (j["marked"].as_u64(), j["failed"].as_u64()),
        (Some(980), Some(20))
    );
    // Only the first ten are named; the count tells the rest.
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.contains("not sent"))
            .count(),
        10,
        "{}",
        run.stderr
    );
    util::accounting::assert_accounted(&env, &env.db(), 64);
}

#[test]
fn requeue_needs_ids_or_all_and_says_which_ids_had_no_failure() {
    let env = TestEnv::new("requeueargs");
    env.seed(1);
    let db = env.db_arg();
    env.run(&["requeue", "--db", &db])
        .expect_code(64)
        .expect_one_error_line("--all");
    env.run(&["requeue", "--db", &db, "--all", "3"])
        .expect_code(64)
        .expect_one_error_line("not both");
    env.run(&["requeue", "--db", &db, "12"])
        .expect_code(65)
        .expect_one_error_line("requeued 0 of 1");
}
