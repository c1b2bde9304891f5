//! One account of every row: for a sync mask each row is exactly one of
//! sent, waiting, failing (to be retried) or quarantined; `status` shows
//! the four and they add up to the table's total; a flush's `--json` and
//! its end-of-run lines use the same words and never contradict each
//! other; `status` and `check` list the suspects a run holds, with why.
//! Real mosquitto: an ACL that refuses a whole node (MQTT 5), a packet
//! size limit that makes it close the connection (MQTT 3.1.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::accounting::assert_accounted;
use util::{Broker, TestEnv, marked_ids};

/// Rows of node_03 in the seeded table (`id_wasp` is node_{(id-1) % 5}).
fn is_node_03(id: i64) -> bool {
    (id - 1) % 5 == 3
}

#[test]
fn a_run_that_quarantines_refused_rows_says_so_once_and_its_json_and_status_agree_on_every_row() {
    let env = TestEnv::new("account-quarantine");
    env.seed(200);
    let acl = env.write("acl", "topic readwrite #\ntopic deny sensors/node_03/#\n");
    let broker = Broker::start_with(
        &env,
        &format!(
            "allow_anonymous true\nacl_file {}\nmax_queued_messages 1000\n",
            acl.display()
        ),
    );
    let (db, url) = (env.db_arg(), broker.url());
    let args = [
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "-V",
        "5",
        "--max-attempts",
        "2",
        "--json",
    ];
    let denied = (1..=200).filter(|&id| is_node_03(id)).count() as u64;
    assert_eq!(denied, 40);

    // First run: 160 sent, 40 refused, failing, to be retried.
    let first = env.run(&args);
    first.expect_code(77);
    let j = first.json();
    let n = |j: &serde_json::Value, k: &str| j[k].as_u64();
    assert_eq!(
        (
            n(&j, "marked"),
            n(&j, "refused"),
            n(&j, "quarantined"),
            n(&j, "unsent"),
            n(&j, "backlog"),
            n(&j, "waiting"),
            n(&j, "failing")
        ),
        (
            Some(160),
            Some(40),
            Some(0),
            Some(40),
            Some(40),
            Some(0),
            Some(40)
        ),
        "{j}"
    );
    let error = j["error"].as_str().unwrap();
    assert!(
        error.contains("the broker refused 40 row(s)")
            && error.contains("they stay unsent and are retried"),
        "{error}"
    );
    assert!(!first.stderr.contains("quarantined"), "{}", first.stderr);
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!(
        (a.sent, a.waiting, a.failing, a.quarantined),
        (160, 0, 40, 0)
    );

    // Second run: the same 40 refused again and quarantined. One line says
    // they are quarantined, the error line says the same, never that they
    // are retried; --json counts them quarantined, not unsent.
    let second = env.run(&args);
    second.expect_code(77);
    let j = second.json();
    assert_eq!(
        (
            n(&j, "marked"),
            n(&j, "refused"),
            n(&j, "quarantined"),
            n(&j, "unsent"),
            n(&j, "backlog"),
            n(&j, "waiting"),
            n(&j, "failing")
        ),
        (
            Some(0),
            Some(40),
            Some(40),
            Some(0),
            Some(0),
            Some(0),
            Some(0)
        ),
        "{j}"
    );
    let error = j["error"].as_str().unwrap();
    assert!(
        error.contains("the broker refused 40 row(s)")
            && error.contains("they have reached --max-attempts and are quarantined"),
        "{error}"
    );
    assert!(
        !second.stderr.contains("retried"),
        "the lines contradict each other: {}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains("40 row(s) failed 2 time(s) and are quarantined"),
        "{}",
        second.stderr
    );
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!(
        (a.sent, a.waiting, a.failing, a.quarantined),
        (160, 0, 0, 40)
    );
    // The text of status shows the same four numbers.
    let text = env.run(&["status", "--db", &db]).stdout;
    for line in [
        "  sent:          160\n",
        "  waiting:       0\n",
        "  failing:       0 (failed, to be retried)\n",
        "  quarantined:   40 (",
        "  of total:      200\n",
        "  unsent:        0 (waiting + failing)\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }

    // Requeued: waiting again, and the next run (ACL unchanged) has them
    // failing once more, not quarantined.
    env.run(&["requeue", "--db", &db, "--all"]).expect_code(0);
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!((a.waiting, a.quarantined), (40, 0));
    env.run(&args).expect_code(77);
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!((a.sent, a.failing), (160, 40));
    assert_eq!(marked_ids(&env.db(), 64).len(), 160);
}

#[test]
fn status_and_check_list_the_suspects_a_run_holds_with_why() {
    let env = TestEnv::new("account-suspects");
    let c = env.seed(30);
    // A suspect that failed alone and was not charged, and one that was.
    c.execute_batch(
        "CREATE TABLE frameflush_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT) WITHOUT ROWID;
         INSERT INTO frameflush_state (key, value) VALUES ('suspects:64', '7 12');",
    )
    .unwrap();
    drop(c);
    let db = env.db_arg();
    env.run(&["init", "--db", &db]).expect_code(0);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute_batch(
        "INSERT INTO frameflush_failures VALUES (64, 12, 1, 'the broker closed the connection on this message', \
         datetime('now'), datetime('now'), NULL)",
    )
    .unwrap();
    drop(c);
    let s = env.run(&["status", "--db", &db, "--json"]).json();
    let d = &s["destinations"][0];
    assert_eq!(d["suspects"][0]["row_id"], 7, "{d}");
    assert_eq!(d["suspects"][0]["why"], "failed alone, not yet charged");
    assert_eq!(d["suspects"][1]["row_id"], 12);
    assert_eq!(
        d["suspects"][1]["why"],
        "1 attempt(s), last: the broker closed the connection on this message"
    );
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!((a.waiting, a.failing), (29, 1));
    let text = env.run(&["status", "--db", &db]).stdout;
    assert!(
        text.contains("  suspects:      2 held, tried alone first by the next run:\n    row 7: failed alone, not yet charged\n    row 12: 1 attempt(s), last: the broker closed the connection on this message\n"),
        "{text}"
    );
    let broker = Broker::start(&env);
    let check = env.run(&["check", "--db", &db, "-L", &broker.url()]);
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("backlog: "))
        .unwrap_or_else(|| panic!("no backlog line: {}", check.stdout));
    assert!(
        line.contains("2 suspect(s) held")
            && line.contains("row 7 (failed alone, not yet charged)")
            && line.contains("row 12 (1 attempt(s), last: the broker closed the connection"),
        "{line}"
    );
}

#[test]
fn a_row_the_broker_closes_the_connection_on_is_held_as_a_suspect_that_status_lists_until_it_is_quarantined()
 {
    let env = TestEnv::new("account-suspect-real");
    env.seed(300);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute(
        "UPDATE sensorParser SET value = ?1 WHERE id = 150",
        ["9".repeat(3000)],
    )
    .unwrap();
    drop(c);
    let broker = Broker::start_with(&env, "allow_anonymous true\nmax_packet_size 2000\n");
    let (db, url) = (env.db_arg(), broker.url());
    let args = [
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "-V",
        "311",
        "--max-attempts",
        "3",
    ];
    let mut listed = 0;
    // A producer adds rows before every run: a message that fails alone is
    // charged only once another one is accepted in the same run (the proof
    // that the broker and the link work), so each run needs healthy rows.
    let mut producer = rusqlite::Connection::open(env.db()).unwrap();
    let mut added = 0;
    for _ in 0..8 {
        util::insert_rows(&mut producer, 5, 0);
        added += 5;
        let run = env.run(&args);
        assert!([0, 65, 75].contains(&run.code.unwrap()), "{run:?}");
        let a = assert_accounted(&env, &env.db(), 64);
        let s = env.run(&["status", "--db", &db, "--json"]).json();
        let suspects = s["destinations"][0]["suspects"].as_array().unwrap().clone();
        if let Some(held) = suspects.iter().find(|x| x["row_id"] == 150) {
            listed += 1;
            let why = held["why"].as_str().unwrap();
            assert!(
                why == "failed alone, not yet charged" || why.contains("attempt(s), last: "),
                "{why}"
            );
        }
        if a.quarantined == 1 {
            assert_eq!((a.sent, a.waiting, a.failing), (299 + added, 0, 0));
            break;
        }
    }
    let a = assert_accounted(&env, &env.db(), 64);
    assert_eq!(
        (a.sent, a.quarantined),
        (299 + added, 1),
        "the big row quarantined, the rest sent"
    );
    println!("row 150 was listed as a suspect after {listed} run(s)");
}
