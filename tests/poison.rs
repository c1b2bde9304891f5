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

/// Appends `groups` groups of 198 good rows and two adjacent rows that
/// cannot become a message, of two different kinds of four in turn: too
/// large for `--max-payload 1000`, text that is not UTF-8, a sensor that
/// puts a wildcard in the topic and a BLOB.
fn seed_with_poisons(c: &mut rusqlite::Connection, groups: usize) {
    const POISONS: [&str; 4] = [
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'CAM', printf('%.2000c', 'x'))",
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', CAST(X'C328' AS TEXT))",
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'T+C', '1.0')",
        "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', X'0102')",
    ];
    for g in 0..groups {
        util::insert_rows(c, 198, 0);
        c.execute_batch(POISONS[g % 4]).unwrap();
        c.execute_batch(POISONS[(g + 1) % 4]).unwrap();
    }
}

#[test]
fn rows_read_ahead_become_the_same_messages_and_the_same_failures_as_rows_the_drain_reads_itself() {
    // Two identical tables of 6,000 rows, 60 of them poison, in adjacent
    // pairs of two kinds, spread: one
    // drained in chunks of 100 (read ahead, and made into messages, by the
    // marking thread), the other in one chunk of 10,000 (read and made by
    // the publishing loop). Two runs each, 500 rows (2 poison) added before
    // the second, which quarantines the first 60 (--max-attempts 2).
    let envs = [TestEnv::new("madeahead"), TestEnv::new("madeinline")];
    let brokers: Vec<Broker> = envs.iter().map(Broker::start).collect();
    let subs: Vec<Subscriber> = brokers
        .iter()
        .map(|b| Subscriber::connect(b.port, "sensors/#"))
        .collect();
    for env in &envs {
        let mut c = env.seed(0);
        seed_with_poisons(&mut c, 30);
    }
    let mut outcomes = Vec::new();
    for round in 0..2 {
        if round == 1 {
            for env in &envs {
                let mut c = rusqlite::Connection::open(env.db()).unwrap();
                util::insert_rows(&mut c, 249, 0);
                c.execute_batch(
                    "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'TC', X'03')",
                )
                .unwrap();
                util::insert_rows(&mut c, 249, 0);
                c.execute_batch(
                    "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('n1', 'P#', '2.0')",
                )
                .unwrap();
            }
        }
        let (mut seen, mut marked) = (Vec::new(), Vec::new());
        for ((env, broker), batch) in envs.iter().zip(&brokers).zip(["100", "10000"]) {
            let (db, url) = (env.db_arg(), broker.url());
            let run = env.run(&[
                "flush",
                "--db",
                &db,
                "-L",
                &url,
                "--batch",
                batch,
                "--max-payload",
                "1000",
                "--max-attempts",
                "2",
                "--json",
            ]);
            run.expect_code(65);
            let j = run.json();
            let named: Vec<String> = run
                .stderr
                .lines()
                .filter(|l| l.contains("not sent"))
                .map(str::to_string)
                .collect();
            seen.push((
                j["selected"].as_u64(),
                j["published"].as_u64(),
                j["marked"].as_u64(),
                j["failed"].as_u64(),
                j["quarantined"].as_u64(),
                named,
            ));
            marked.push(marked_ids(&env.db(), 64));
        }
        assert_eq!(seen[0], seen[1], "round {round}");
        let differ = marked[0].symmetric_difference(&marked[1]).count();
        assert!(
            differ == 0,
            "round {round}: {differ} rows marked in one table only"
        );
        outcomes.push(seen.remove(0));
    }
    let (_, _, marked, failed, quarantined, named) = &outcomes[0];
    assert_eq!(
        (*marked, *failed, *quarantined),
        (Some(5940), Some(60), Some(0))
    );
    assert_eq!(named.len(), 10, "{named:?}");
    for why in [
        "exceeds --max-payload 1000",
        "value is text that is not UTF-8",
        "contains a wildcard",
        "value is a BLOB of 2 bytes",
    ] {
        assert!(named.iter().any(|l| l.contains(why)), "{why}: {named:?}");
    }
    let (_, _, marked, failed, quarantined, _) = &outcomes[1];
    assert_eq!(
        (*marked, *failed, *quarantined),
        (Some(498), Some(62), Some(60))
    );
    // Byte for byte the same messages, each row once.
    let got: Vec<Vec<(String, Vec<u8>)>> = subs
        .iter()
        .map(|s| {
            let mut m: Vec<_> = s
                .wait_for(6438, WAIT)
                .into_iter()
                .map(|r| (r.topic, r.payload))
                .collect();
            m.sort();
            m
        })
        .collect();
    assert_eq!(got[0].len(), 6438);
    assert!(got[0] == got[1], "the two drains sent different messages");
    let mut ids: Vec<i64> = subs[0].ids();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6438);
    for env in &envs {
        util::accounting::assert_accounted(env, &env.db(), 64);
    }
}
