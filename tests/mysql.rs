//! The MySQL/MariaDB source (cargo feature `mysql`) against a real MariaDB
//! started by the test binary (tests/util/mariadb.rs) and real mosquitto
//! brokers: Meshlium's own tables, a producer inserting concurrently
//! (MyISAM, and InnoDB with commits out of id order), killed processes, a
//! cut link, overlapping runs, a stopped server, a wrong password, and the
//! idle cost on a million marked rows. Each test works in a database of its
//! own; every loop is bounded in rounds and time.
#![cfg(feature = "mysql")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use util::mariadb::{self, MESHLIUM_313, MESHLIUM_NEWER, MariaDb, TestDb, insert_rows};
use util::{Broker, Fault, Proxy, Rng, Subscriber, TestEnv, wait_received};

const WAIT: Duration = Duration::from_secs(30);
/// Acknowledged rows not yet committed as marked, at most (`MAX_UNMARKED`
/// in src/marker.rs; README, "Duplicates are bounded").
const UNMARKED_CAP: usize = 8000;

fn newer(engine: &str) -> String {
    MESHLIUM_NEWER.replace("{engine}", engine)
}

/// 10,000 rows with gaps (deleted rows), other destinations' bits and rows
/// already sent: all unsent ones delivered once, in id order; the other
/// bits and the timestamps kept; a second run sends nothing and connects to
/// no broker.
fn a_backlog_in(create: &str, label: &str) {
    let env = TestEnv::new(label);
    let db = TestDb::new(label);
    let mut c = db.create(create);
    insert_rows(&mut c, 10_000, 0);
    c.query_drop("UPDATE sensorParser SET sync = 5 WHERE id % 7 = 0")
        .unwrap();
    c.query_drop("UPDATE sensorParser SET sync = 66 WHERE id % 11 = 0")
        .unwrap();
    c.query_drop("DELETE FROM sensorParser WHERE id % 13 = 0")
        .unwrap();
    let before = db.sync_bits();
    let expected: Vec<i64> = before
        .iter()
        .filter(|(_, s)| s & 64 == 0)
        .map(|(id, _)| *id)
        .collect();
    assert!(expected.len() > 8_000);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let (url, burl) = (db.url(), broker.url());
    let run = mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]);
    run.expect_code(0);
    assert_eq!(run.stderr, "", "{run:#?}");
    let got = sub.wait_for(expected.len(), WAIT);
    let ids: Vec<i64> = got.iter().map(util::Received::id).collect();
    assert_eq!(ids, expected, "{label}: complete, once each, in id order");
    let first: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(first["timestamp"], "2026-11-24 10:00:00");
    assert_eq!(first["frame_type"], 134);
    assert_eq!(first["id_wasp"], "node_00");
    assert_eq!(got[0].topic, "sensors/node_00/TC");
    let after = db.sync_bits();
    let want: Vec<(i64, i64)> = before.iter().map(|&(id, s)| (id, s | 64)).collect();
    assert_eq!(after, want, "{label}: the bit set, the others kept");
    let stamps: Vec<String> = c
        .query("SELECT DISTINCT CAST(`timestamp` AS CHAR) FROM sensorParser")
        .unwrap();
    assert_eq!(stamps, ["2026-11-24 10:00:00"], "timestamps unchanged");
    // Nothing to send: exit 0 without connecting (no broker listens there).
    let dead = format!("mqtt://127.0.0.1:{}", util::refused_port());
    let idle = mariadb::run(&env, &["flush", "--db", &url, "-L", &dead]);
    idle.expect_code(0);
    assert_eq!(idle.stderr, "");
    assert_eq!(db.sync_bits(), want);
}

#[test]
fn the_firmware_3_1_3_myisam_latin1_table_delivers_10000_rows_in_id_order_keeps_other_bits_and_an_idle_run_connects_to_no_broker()
 {
    a_backlog_in(MESHLIUM_313, "fw313");
}

#[test]
fn the_newer_utf8_table_with_parser_type_delivers_10000_rows_in_id_order_keeps_other_bits_and_an_idle_run_connects_to_no_broker()
 {
    a_backlog_in(&newer("InnoDB"), "newer");
}

#[test]
fn a_timestamp_declared_on_update_current_timestamp_keeps_its_value_when_rows_are_marked() {
    let env = TestEnv::new("onupdate");
    let db = TestDb::new("onupdate");
    let mut c = db.create(&MESHLIUM_313.replace(
        "DEFAULT CURRENT_TIMESTAMP,",
        "DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,",
    ));
    insert_rows(&mut c, 50, 0);
    let broker = Broker::start(&env);
    let (url, burl) = (db.url(), broker.url());
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    assert_eq!(db.marked_ids(64).len(), 50);
    let stamps: Vec<String> = c
        .query("SELECT DISTINCT CAST(`timestamp` AS CHAR) FROM sensorParser")
        .unwrap();
    assert_eq!(stamps, ["2026-11-24 10:00:00"]);
}

#[test]
fn latin1_text_with_non_ascii_bytes_arrives_as_the_right_utf8() {
    let env = TestEnv::new("latin1");
    let db = TestDb::new("latin1");
    let mut c = db.create(MESHLIUM_313);
    // latin1 bytes (MySQL's latin1 is cp1252: 0x80 is the euro sign).
    c.query_drop(
        "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value) VALUES \
         (_latin1 X'4DFC6E6368656E', 's', 134, 1, 'TC', _latin1 X'436166E9203235B043'), \
         ('node', 's', 134, 1, 'EUR', _latin1 X'3580')",
    )
    .unwrap();
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, burl) = (db.url(), broker.url());
    mariadb::run(
        &env,
        &[
            "flush",
            "--db",
            &url,
            "-L",
            &burl,
            "-t",
            "t/{id_wasp}/{sensor}",
        ],
    )
    .expect_code(0);
    let got = sub.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].topic, "t/München/TC");
    let v: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(v["value"], "Café 25°C");
    assert_eq!(v["id_wasp"], "München");
    let v: serde_json::Value = serde_json::from_slice(&got[1].payload).unwrap();
    assert_eq!(v["value"], "5€");
    assert_eq!(db.marked_ids(64).len(), 2);
}

/// A producer inserting for a few seconds while runs go back to back; with
/// `out_of_order`, it inserts in pairs of transactions of which the second
/// commits first. Between runs the high-water mark's time is aged past its
/// margin (as if ten minutes had gone by), but only while no producer
/// transaction is open: the promise under test is that the mark never
/// skips a row whose transaction commits within the margin.
fn producer_with_back_to_back_runs(create: &str, label: &str, out_of_order: bool) {
    let env = TestEnv::new(label);
    let db = TestDb::new(label);
    drop(db.create(create));
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let quiet = Arc::new(Mutex::new(()));
    let (mut a, mut b, q) = (db.conn(), db.conn(), quiet.clone());
    let producer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut inserted = 0usize;
        let insert =
            "INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('node_01', 'TC', '21.5')";
        while Instant::now() < deadline && inserted < 4_000 {
            let guard = q.lock().unwrap();
            if out_of_order {
                let mut first = a.start_transaction(mysql::TxOpts::default()).unwrap();
                first.query_drop(insert).unwrap();
                let mut second = b.start_transaction(mysql::TxOpts::default()).unwrap();
                second.query_drop(insert).unwrap();
                second.commit().unwrap();
                // The later id is visible, the earlier one not yet.
                std::thread::sleep(Duration::from_millis(3));
                first.commit().unwrap();
                inserted += 2;
            } else {
                for _ in 0..5 {
                    a.query_drop(insert).unwrap();
                }
                inserted += 5;
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(2));
        }
        inserted
    });
    let (url, burl) = (db.url(), broker.url());
    let mut runs = 0;
    let start = Instant::now();
    while !producer.is_finished() && start.elapsed() < Duration::from_secs(30) {
        let run = mariadb::run(
            &env,
            &["flush", "--db", &url, "-L", &burl, "--batch", "100"],
        );
        assert_eq!(run.code, Some(0), "{label}: {run:#?}");
        runs += 1;
        if runs % 3 == 0 {
            let _quiet = quiet.lock().unwrap();
            db.age_state(601);
        }
    }
    let inserted = producer.join().unwrap();
    // Every transaction has committed: the mark may move past them all.
    db.age_state(601);
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    db.age_state(601);
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    let all: BTreeSet<i64> = db.sync_bits().into_iter().map(|(id, _)| id).collect();
    assert_eq!(all.len(), inserted);
    let got: BTreeSet<i64> = sub
        .wait_for(inserted, WAIT)
        .iter()
        .map(util::Received::id)
        .collect();
    let lost: Vec<&i64> = all.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{label}: {} rows lost, first {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(db.marked_ids(64), all);
    let mark = db.state("hwm:64");
    println!(
        "producer, {label}: {inserted} rows inserted during {runs} back-to-back runs, none lost; high-water mark {mark:?}"
    );
    assert!(
        mark.is_some_and(|m| m.parse::<i64>().unwrap() > 0),
        "{label}: the high-water mark never moved"
    );
    util::accounting::assert_accounted_mysql(&env, &db, 64);
}

#[test]
fn a_producer_inserting_into_a_myisam_table_while_runs_go_back_to_back_loses_no_row() {
    producer_with_back_to_back_runs(MESHLIUM_313, "prod_myisam", false);
}

#[test]
fn a_producer_whose_innodb_transactions_commit_out_of_id_order_while_runs_go_back_to_back_loses_no_row()
 {
    producer_with_back_to_back_runs(&newer("InnoDB"), "prod_innodb", true);
}

#[test]
fn a_row_committed_below_the_mark_after_the_margin_is_found_by_the_hourly_full_scan() {
    let env = TestEnv::new("late");
    let db = TestDb::new("late");
    let mut a = db.create(&newer("InnoDB"));
    let mut b = db.conn();
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, burl) = (db.url(), broker.url());
    let flush = || {
        mariadb::run(&env, &["flush", "--db", &url, "-L", &burl])
            .expect_code(0)
            .code
    };
    insert_rows(&mut a, 10, 0);
    // Within the margin: id 11's transaction commits after id 12's.
    let mut t11 = a.start_transaction(mysql::TxOpts::default()).unwrap();
    insert_rows(&mut t11, 1, 0);
    insert_rows(&mut b, 1, 0);
    flush();
    assert_eq!(db.marked_ids(64), (1..=10).chain([12]).collect());
    t11.commit().unwrap();
    db.age_state(601);
    flush();
    assert_eq!(db.marked_ids(64).len(), 12, "the late row is sent");
    // The mark stopped below the row it found unsent, then moves on.
    assert_eq!(db.state("hwm:64").as_deref(), Some("10"));
    db.age_state(601);
    flush();
    assert_eq!(db.state("hwm:64").as_deref(), Some("12"));
    // Beyond the margin: id 13's transaction stays open while the mark
    // moves past it (to 14), then commits.
    let mut t13 = a.start_transaction(mysql::TxOpts::default()).unwrap();
    insert_rows(&mut t13, 1, 0);
    insert_rows(&mut b, 1, 0);
    flush();
    db.age_state(601);
    flush();
    assert_eq!(db.state("hwm:64").as_deref(), Some("14"));
    t13.commit().unwrap();
    flush();
    assert!(
        !db.marked_ids(64).contains(&13),
        "below the mark: not seen before the full scan"
    );
    db.age_state(3601);
    flush();
    assert_eq!(
        db.marked_ids(64),
        (1..=14).collect(),
        "the full scan found it"
    );
    let ids = sub
        .wait_for(14, WAIT)
        .iter()
        .map(util::Received::id)
        .collect::<BTreeSet<_>>();
    assert_eq!(ids, (1..=14).collect());
    util::accounting::assert_accounted_mysql(&env, &db, 64);
}

#[test]
fn the_tool_killed_at_a_random_moment_marks_only_delivered_rows_and_duplicates_stay_within_window_plus_the_unmarked_cap()
 {
    let mut rng = Rng::new("mysql_sigkill");
    let env = TestEnv::new("my_sigkill");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    // More rows than the bound: a cap that did not hold would show.
    let rows = 20_000usize;
    let (inflight, batch) = (50usize, 200usize);
    let mut hit = 0;
    for round in 0..8 {
        let db = TestDb::new(&format!("kill{round}"));
        let mut c = db.create(MESHLIUM_313);
        insert_rows(&mut c, rows, 0);
        let prefix = format!("kill{round}");
        let (url, burl, topic) = (db.url(), broker.url(), format!("{prefix}/{{id}}"));
        let (w, b) = (inflight.to_string(), batch.to_string());
        let mut child = mariadb::cmd(
            &env,
            &[
                "flush",
                "--db",
                &url,
                "-L",
                &burl,
                "-t",
                &topic,
                "--inflight",
                &w,
                "--batch",
                &b,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let delay = Duration::from_millis(rng.range(20, 500));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            hit += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let marked = db.marked_ids(64);
        let got = wait_received(&sub, &prefix, &marked);
        let falsely: Vec<&i64> = marked.iter().filter(|id| !got.contains_key(id)).collect();
        assert!(
            falsely.is_empty(),
            "seed {}, round {round}: marked but never received: {falsely:?}",
            rng.seed
        );
        // The lock went with the killed run's connection: a rerun runs.
        mariadb::run(
            &env,
            &[
                "flush",
                "--db",
                &url,
                "-L",
                &burl,
                "-t",
                &topic,
                "--max-time",
                "120",
            ],
        )
        .expect_code(0);
        let all: BTreeSet<i64> = (1..=rows as i64).collect();
        let got = wait_received(&sub, &prefix, &all);
        assert_eq!(
            got.len(),
            rows,
            "seed {}, round {round}: rows lost",
            rng.seed
        );
        assert_eq!(db.marked_ids(64), all);
        util::accounting::assert_accounted_mysql(&env, &db, 64);
        let dups: usize = got.values().map(|n| n - 1).sum();
        assert!(
            dups <= inflight + UNMARKED_CAP,
            "seed {}, round {round} (killed after {delay:?}): {dups} duplicates, more than window {inflight} + the unmarked cap {UNMARKED_CAP}",
            rng.seed
        );
    }
    println!("SIGKILL on MySQL: {hit} of 8 kills hit a running flush");
    assert!(
        hit >= 5,
        "too few kills hit a running flush (seed {})",
        rng.seed
    );
}

#[test]
fn the_broker_killed_mid_flush_gives_75_and_a_rerun_after_restart_delivers_every_unmarked_row() {
    let env = TestEnv::new("my_killbroker");
    let db = TestDb::new("killbroker");
    let mut c = db.create(MESHLIUM_313);
    let rows = 60_000;
    insert_rows(&mut c, rows, 0);
    let mut broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, burl) = (db.url(), broker.url());
    let child = mariadb::cmd(&env, &["flush", "--db", &url, "-L", &burl, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while sub.count() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(sub.count() >= 2_000, "the flush did not get going");
    broker.kill();
    let out = util::wait_output(child, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "stderr: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let marked_first = db.marked_ids(64);
    assert_eq!(summary["marked"].as_u64(), Some(marked_first.len() as u64));
    assert!(marked_first.len() < rows, "the kill came too late");
    drop(sub);
    broker.restart();
    let sub = Subscriber::connect(broker.port, "#");
    mariadb::run(
        &env,
        &["flush", "--db", &url, "-L", &burl, "--max-time", "120"],
    )
    .expect_code(0);
    let expected: BTreeSet<i64> = (1..=rows as i64)
        .filter(|id| !marked_first.contains(id))
        .collect();
    let received: BTreeSet<i64> = sub
        .wait_for(expected.len(), WAIT)
        .iter()
        .map(util::Received::id)
        .collect();
    assert!(expected.is_subset(&received), "the rerun missed rows");
    assert_eq!(db.marked_ids(64).len(), rows);
    util::accounting::assert_accounted_mysql(&env, &db, 64);
}

#[test]
fn a_link_cut_at_random_points_never_marks_an_undelivered_row_and_reruns_deliver_everything() {
    let mut rng = Rng::new("mysql_linkcut");
    let env = TestEnv::new("my_linkcut");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let rows = 2_000usize;
    for round in 0..6 {
        let db = TestDb::new(&format!("cut{round}"));
        let mut c = db.create(&newer("InnoDB"));
        insert_rows(&mut c, rows, 0);
        let cut_at = rng.range(40, 450_000) as usize;
        let proxy = Proxy::start(broker.port, Fault::CutAfter(cut_at));
        let prefix = format!("cut{round}");
        let (url, port, topic) = (db.url(), proxy.port.to_string(), format!("{prefix}/{{id}}"));
        let run = mariadb::run(
            &env,
            &[
                "flush",
                "--db",
                &url,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "-t",
                &topic,
                "--ack-timeout",
                "3",
            ],
        );
        let code = run.code.unwrap();
        assert!(code == 0 || code == 75, "seed {}: {run:#?}", rng.seed);
        let marked = db.marked_ids(64);
        let got = wait_received(&sub, &prefix, &marked);
        assert!(
            marked.iter().all(|id| got.contains_key(id)),
            "seed {}, cut at {cut_at}: a row marked but never received",
            rng.seed
        );
        let burl = broker.url();
        mariadb::run(&env, &["flush", "--db", &url, "-L", &burl, "-t", &topic]).expect_code(0);
        let all: BTreeSet<i64> = (1..=rows as i64).collect();
        let got = wait_received(&sub, &prefix, &all);
        assert_eq!(
            got.len(),
            rows,
            "seed {}, cut at {cut_at}: rows lost",
            rng.seed
        );
        assert_eq!(db.marked_ids(64), all);
        util::accounting::assert_accounted_mysql(&env, &db, 64);
    }
}

#[test]
fn two_runs_started_together_let_exactly_one_publish_and_the_other_exits_75() {
    let env = TestEnv::new("my_overlap");
    let db = TestDb::new("overlap");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 30_000, 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, burl) = (db.url(), broker.url());
    let args = ["flush", "--db", &url, "-L", &burl, "-t", "o/{id}"];
    let spawn = || {
        mariadb::cmd(&env, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (util::wait_output(a, WAIT), util::wait_output(b, WAIT));
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(75)], "{a:?} {b:?}");
    let loser = if a.status.code() == Some(75) { &a } else { &b };
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("another frameflush run holds the lock frameflush:"),
        "{stderr}"
    );
    let all: BTreeSet<i64> = (1..=30_000).collect();
    let got = wait_received(&sub, "o", &all);
    assert_eq!(got.len(), 30_000);
    assert!(got.values().all(|&n| n == 1), "a row was published twice");
    util::accounting::assert_accounted_mysql(&env, &db, 64);
}

#[test]
fn a_stopped_database_server_gives_one_clear_line_and_74_and_nothing_is_marked() {
    let env = TestEnv::new("my_down");
    let mut server = MariaDb::start("down");
    let port = server.port;
    let name = "meshlium_down";
    {
        let mut c = server.admin();
        c.query_drop(format!("CREATE DATABASE {name}")).unwrap();
        c.query_drop(format!("USE {name}")).unwrap();
        c.query_drop(MESHLIUM_313).unwrap();
        insert_rows(&mut c, 100, 0);
    }
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let url = format!("mysql://{}@127.0.0.1:{port}/{name}", mariadb::USER);
    let burl = broker.url();
    server.stop();
    let run = mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]);
    run.expect_code(74).expect_one_error_line(&format!(
        "cannot connect to MySQL database {name} at 127.0.0.1:{port}: Connection refused; is the server running?"
    ));
    // The same for the other commands.
    mariadb::run(&env, &["status", "--db", &url]).expect_code(74);
    server.restart();
    let marked: i64 = server
        .admin()
        .query_first(format!(
            "SELECT COUNT(*) FROM {name}.sensorParser WHERE sync & 64"
        ))
        .unwrap()
        .unwrap();
    assert_eq!(marked, 0, "nothing marked");
    assert_eq!(sub.count(), 0, "nothing published");
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    assert_eq!(sub.wait_for(100, WAIT).len(), 100);
}

#[test]
fn a_wrong_database_password_gives_77_and_one_line_that_never_shows_it() {
    let env = TestEnv::new("my_badpw");
    let db = TestDb::new("badpw");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 3, 0);
    let url = db.url();
    let secret = "not-the-pw-Kq2";
    let mut cmd = env.cmd(&["flush", "--db", &url, "--port", "1"]);
    cmd.env("FRAMEFLUSH_DB_PASSWORD", secret);
    let run = util::run_cmd(cmd, WAIT);
    run.expect_code(77)
        .expect_one_error_line("refused the login of user frameflush");
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    env.write("db.pw", &format!("{secret}\n"));
    let run = env.run(&["status", "--db", &url, "--db-pw-file", "db.pw"]);
    run.expect_code(77).expect_one_error_line("--db-pw-file");
    assert!(!run.stderr.contains(secret));
    // The right one from the file works.
    env.write("good.pw", &format!("{}\n", mariadb::PASSWORD));
    let run = env.run(&["status", "--db", &url, "--db-pw-file", "good.pw", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["destinations"][0]["unsent"], 3);
    // A password in the URL is refused and not repeated.
    let with_pw = url.replace("frameflush@", &format!("frameflush:{secret}@"));
    let run = env.run(&["flush", "--db", &with_pw]);
    run.expect_code(64)
        .expect_one_error_line("FRAMEFLUSH_DB_PASSWORD");
    assert!(!run.stderr.contains(secret));
    util::accounting::assert_accounted_mysql(&env, &db, 64);
}

#[test]
fn an_idle_run_on_a_million_marked_rows_reads_a_range_of_the_primary_key_not_the_table() {
    let env = TestEnv::new("my_idle");
    let server = Arc::new(MariaDb::start("idle"));
    let db = TestDb::on(server.clone(), "idle");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 1_000, 64 | 2);
    for _ in 0..10 {
        c.query_drop(
            "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, `timestamp`, sync, raw) \
             SELECT id_wasp, id_secret, frame_type, frame_number, sensor, value, `timestamp`, sync, raw FROM sensorParser",
        )
        .unwrap();
    }
    let total: i64 = c
        .query_first("SELECT COUNT(*) FROM sensorParser")
        .unwrap()
        .unwrap();
    assert_eq!(total, 1_024_000);
    let url = db.url();
    let dead = format!("mqtt://127.0.0.1:{}", util::refused_port());
    // The first run sets the mark (MyISAM: no margin) and scans once.
    mariadb::run(&env, &["flush", "--db", &url, "-L", &dead]).expect_code(0);
    assert_eq!(db.state("hwm:64").as_deref(), Some("1024000"));
    // An idle run: nothing to send, a few rows read, no table scan, nothing
    // written (the mark and the row it is kept against stay as they were).
    let own_state = || -> Vec<(Vec<u8>, Vec<u8>, Option<String>)> {
        db.conn()
            .query("SELECT `key`, value, CAST(updated_at AS CHAR) FROM frameflush_state ORDER BY `key`")
            .unwrap()
    };
    let state_before = own_state();
    assert!(
        state_before.iter().any(|(k, _, _)| k == b"hwm-row:64"),
        "the mark is kept against its row"
    );
    let writes = || -> u64 {
        let rows: Vec<(String, String)> = server
            .admin()
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Com_insert', 'Com_update', 'Com_delete', 'Com_replace', 'Com_insert_select', 'Com_update_multi', 'Com_delete_multi')",
            )
            .unwrap();
        rows.iter()
            .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
            .sum()
    };
    let writes_before = writes();
    let before = mariadb::rows_read(&server);
    let run = mariadb::run(&env, &["flush", "--db", &url, "-L", &dead, "-d"]);
    let read = mariadb::rows_read(&server) - before;
    run.expect_code(0);
    assert_eq!(own_state(), state_before, "the idle run wrote nothing");
    assert_eq!(
        writes() - writes_before,
        0,
        "the idle run ran no write statement"
    );
    let plan = run
        .stderr
        .lines()
        .find(|l| l.contains("query plan"))
        .unwrap_or_else(|| panic!("no query plan on stderr: {run:#?}"))
        .to_string();
    assert!(plan.contains("from id 1024000"), "{plan}");
    assert!(plan.contains("s: type range, key PRIMARY"), "{plan}");
    assert!(read < 1_000, "the idle run read {read} rows");
    println!("idle run on {total} marked rows: {read} rows read by the server; plan: {plan}");
    // The hourly full scan reads them all, once.
    db.age_state(3601);
    let before = mariadb::rows_read(&server);
    mariadb::run(&env, &["flush", "--db", &url, "-L", &dead]).expect_code(0);
    let read = mariadb::rows_read(&server) - before;
    assert!(read >= 1_000_000, "the full scan read only {read} rows");
}

#[test]
fn init_status_failures_requeue_and_purge_work_on_a_mysql_database() {
    let env = TestEnv::new("my_admin");
    let server = MariaDb::shared();
    let name = format!("t{}_admin_new", std::process::id());
    let url = format!("mysql://{}@127.0.0.1:{}/{name}", mariadb::USER, server.port);
    // init creates the database and the table.
    mariadb::run(&env, &["init", "--db", &url]).expect_code(0);
    let db = TestDb {
        name: name.clone(),
        server: server.clone(),
    };
    let mut c = db.conn();
    let tables: Vec<String> = c.query("SHOW TABLES").unwrap();
    assert_eq!(
        tables,
        [
            "frameflush_failures",
            "frameflush_runs",
            "frameflush_state",
            "sensorParser"
        ]
    );
    let keys: Vec<(String, String)> = c
        .query("SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sensorParser'")
        .unwrap();
    assert_eq!(
        keys,
        [("PRIMARY".to_string(), "id".to_string())],
        "no index but the key"
    );
    // A second init changes nothing.
    mariadb::run(&env, &["init", "--db", &url]).expect_code(0);
    insert_rows(&mut c, 5, 0);
    c.query_drop("UPDATE sensorParser SET value = NULL WHERE id = 3")
        .unwrap();
    let broker = Broker::start(&env);
    let burl = broker.url();
    let flush = [
        "flush",
        "--db",
        &url,
        "-L",
        &burl,
        "--payload",
        "value",
        "--max-attempts",
        "1",
    ];
    let run = mariadb::run(&env, &flush);
    run.expect_code(65);
    let status = mariadb::run(&env, &["status", "--db", &url, "--json"]);
    status.expect_code(0);
    let s = status.json();
    assert_eq!(s["total"], 5);
    assert_eq!(s["destinations"][0]["unsent"], 0);
    assert_eq!(s["destinations"][0]["quarantined"], 1);
    assert_eq!(s["destinations"][0]["last_run"]["exit_code"], 65);
    assert_eq!(s["destinations"][0]["last_run"]["rows_marked"], 4);
    let f = mariadb::run(&env, &["failures", "--db", &url, "--json"]);
    f.expect_code(0);
    let f = f.json();
    assert_eq!(f[0]["row_id"], 3);
    assert!(f[0]["quarantined_at"].is_string(), "{f}");
    // Quarantined: the next run sends nothing.
    mariadb::run(&env, &flush).expect_code(0);
    // Requeued, fixed: it goes out.
    mariadb::run(&env, &["requeue", "--db", &url, "--all"]).expect_code(0);
    c.query_drop("UPDATE sensorParser SET value = '7' WHERE id = 3")
        .unwrap();
    mariadb::run(&env, &flush).expect_code(0);
    assert_eq!(db.marked_ids(64).len(), 5);
    // Purge: every row is sent and older than a day.
    let purge = mariadb::run(
        &env,
        &["purge", "--db", &url, "--older-than", "1d", "--json"],
    );
    purge.expect_code(0);
    assert_eq!(purge.json()["deleted_by_age"], 5);
    assert_eq!(db.sync_bits().len(), 0);
}

/// The report's lines of one `check` step with one status (`ok`, `warn`,
/// `FAIL`, `skip`).
fn check_lines<'a>(run: &'a util::Run, status: &str, step: &str) -> Vec<&'a str> {
    let head = format!("{status:<5}{step}: ");
    run.stdout
        .lines()
        .filter(|l| l.starts_with(&head))
        .collect()
}

/// Asserts one line of this step and status, containing every needle.
#[track_caller]
fn expect_check_line(run: &util::Run, status: &str, step: &str, needles: &[&str]) {
    let found = check_lines(run, status, step);
    assert!(
        found.len() == 1 && needles.iter().all(|n| found[0].contains(n)),
        "not one `{status} {step}` line with {needles:?}:\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn check_on_the_firmware_3_1_3_table_says_ok_for_every_database_step_reports_the_high_water_mark_and_marks_nothing()
 {
    let env = TestEnv::new("my_check");
    let db = TestDb::new("check");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 20, 0);
    let broker = Broker::start(&env);
    let (url, burl) = (db.url(), broker.url());
    // A run sends the 20 rows; the next one (idle) moves the mark past
    // them (MyISAM: no margin).
    for _ in 0..2 {
        mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    }
    assert_eq!(db.state("hwm:64").as_deref(), Some("20"));
    insert_rows(&mut c, 5, 0);
    let before = db.sync_bits();
    let run = mariadb::run(&env, &["check", "--db", &url, "-L", &burl]);
    println!("{}", run.stdout);
    run.expect_code(0);
    expect_check_line(
        &run,
        "ok",
        "database",
        &["MariaDB ", "sensorParser is MyISAM with latin1 text"],
    );
    expect_check_line(
        &run,
        "ok",
        "writable",
        &[
            "user 'frameflush'@'127.0.0.1' may UPDATE sensorParser",
            "none executed",
        ],
    );
    expect_check_line(&run, "ok", "index", &["none needed", "PRIMARY key"]);
    expect_check_line(&run, "ok", "backlog", &["5 unsent row(s)"]);
    expect_check_line(
        &run,
        "ok",
        "high-water",
        &["at id 20", "sent or quarantined"],
    );
    expect_check_line(&run, "ok", "lock", &[]);
    // Three topics shown, and the line that every topic went round.
    assert_eq!(
        check_lines(&run, "ok", "round-trip").len(),
        4,
        "{}",
        run.stdout
    );
    for status in ["skip", "FAIL", "warn"] {
        for step in [
            "database",
            "writable",
            "index",
            "backlog",
            "high-water",
            "lock",
        ] {
            assert!(check_lines(&run, status, step).is_empty(), "{}", run.stdout);
        }
    }
    assert_eq!(db.sync_bits(), before, "check marks nothing");
    // A row below the mark with its bit clear (as a late commit leaves
    // one): found by check's full scan, a warning, still exit 0.
    c.query_drop("UPDATE sensorParser SET sync = 0 WHERE id = 3")
        .unwrap();
    let before = db.sync_bits();
    let run = mariadb::run(&env, &["check", "--db", &url, "-L", &burl, "--json"]);
    run.expect_code(0);
    let report = run.json();
    let hw = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "high-water")
        .unwrap_or_else(|| panic!("no high-water step: {report}"));
    assert_eq!(hw["status"], "warn", "{hw}");
    assert_eq!(hw["figures"]["unsent_below"], 1, "{hw}");
    assert_eq!(hw["figures"]["high_water_mark"], 20, "{hw}");
    assert!(
        hw["text"]
            .as_str()
            .unwrap()
            .starts_with("1 unsent row(s) below the high-water mark 20"),
        "{hw}"
    );
    assert_eq!(db.sync_bits(), before, "check marks nothing");
    assert_eq!(
        db.state("hwm:64").as_deref(),
        Some("20"),
        "nor moves the mark"
    );
    // As it says, the next full scan sends it.
    db.age_state(3601);
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    assert_eq!(db.marked_ids(64), (1..=25).collect());
}

#[test]
fn a_user_without_update_on_sensor_parser_fails_check_on_writable_with_77_and_flush_stops_before_publishing()
 {
    let env = TestEnv::new("my_grants");
    let db = TestDb::new("grants");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 5, 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let burl = broker.url();
    let (url, account) = db.user("ro", "", "SELECT", "sensorParser");
    let mut admin = db.server.admin();
    let before = db.sync_bits();
    // SELECT only, frameflush's tables not there: both named, with the
    // GRANT that fixes each.
    let run = mariadb::run(&env, &["check", "--db", &url, "-L", &burl, "--no-publish"]);
    println!("{}", run.stdout);
    run.expect_code(77);
    let fail = check_lines(&run, "FAIL", "writable");
    assert_eq!(fail.len(), 1, "{}", run.stdout);
    for needle in [
        format!("user {account} may not UPDATE sensorParser"),
        format!(
            "GRANT SELECT, UPDATE ON `{}`.sensorParser TO {account}",
            db.name
        ),
        format!("user {account} may not CREATE, INSERT, UPDATE, DELETE frameflush's own tables"),
        "a run would stop before publishing anything (77)".to_string(),
    ] {
        assert!(fail[0].contains(&needle), "{needle}: {}", fail[0]);
    }
    assert!(
        run.stderr.contains("may not UPDATE sensorParser"),
        "{run:#?}"
    );
    // frameflush's own tables there and granted: only sensorParser is
    // named, and a run refuses before it publishes (else it would send the
    // same rows again every time).
    mariadb::run(&env, &["init", "--db", &db.url()]).expect_code(0);
    for t in ["frameflush_failures", "frameflush_runs", "frameflush_state"] {
        admin
            .query_drop(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON `{}`.{t} TO {account}",
                db.name
            ))
            .unwrap();
    }
    let run = mariadb::run(&env, &["check", "--db", &url, "-L", &burl, "--no-publish"]);
    run.expect_code(77);
    let fail = check_lines(&run, "FAIL", "writable");
    assert_eq!(fail.len(), 1, "{}", run.stdout);
    assert!(
        fail[0].contains("may not UPDATE sensorParser"),
        "{}",
        fail[0]
    );
    assert!(!fail[0].contains("own tables"), "{}", fail[0]);
    let flush = mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]);
    flush
        .expect_code(77)
        .expect_one_error_line("may not mark rows in sensorParser");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.messages().len(), 0, "nothing published");
    assert_eq!(db.sync_bits(), before, "nothing marked");
    // Granted UPDATE: check is ok on writable, and the run delivers.
    admin
        .query_drop(format!(
            "GRANT UPDATE ON `{}`.sensorParser TO {account}",
            db.name
        ))
        .unwrap();
    let run = mariadb::run(&env, &["check", "--db", &url, "-L", &burl, "--no-publish"]);
    run.expect_code(0);
    expect_check_line(
        &run,
        "ok",
        "writable",
        &[&format!("user {account} may UPDATE")],
    );
    mariadb::run(&env, &["flush", "--db", &url, "-L", &burl]).expect_code(0);
    assert_eq!(db.marked_ids(64).len(), 5);
    admin.query_drop(format!("DROP USER {account}")).unwrap();
}

/// The table's ids start again under a mark of 500: emptied by `TRUNCATE`,
/// or dropped and made again, then filled past the old mark (ids 1–800).
/// The very next run sends all 800 (ids 1–500 too), says why with -v, and
/// `status` accounts for every row; the run after sends nothing.
fn ids_that_start_again(engine: &str, how: &str) {
    let label = format!("restart_{engine}_{how}");
    let env = TestEnv::new(&label);
    let db = TestDb::new(&label);
    let create = newer(engine);
    let mut c = db.create(&create);
    insert_rows(&mut c, 500, 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let (url, burl) = (db.url(), broker.url());
    let flush = |extra: &[&str]| {
        let mut args = vec!["flush", "--db", &url, "-L", &burl];
        args.extend(extra);
        let run = mariadb::run(&env, &args);
        run.expect_code(0);
        run
    };
    flush(&[]);
    assert_eq!(sub.wait_for(500, WAIT).len(), 500);
    // The mark moves up to 500: at once on MyISAM, after the margin else.
    flush(&[]);
    if engine != "MyISAM" {
        db.age_state(601);
        flush(&[]);
    }
    assert_eq!(db.state("hwm:64").as_deref(), Some("500"), "{label}");
    util::accounting::assert_accounted_mysql(&env, &db, 64);
    match how {
        "truncate" => c.query_drop("TRUNCATE TABLE sensorParser").unwrap(),
        _ => {
            c.query_drop("DROP TABLE sensorParser").unwrap();
            c.query_drop(&create).unwrap();
        }
    }
    insert_rows(&mut c, 800, 0);
    let max: Option<i64> = c.query_first("SELECT MAX(id) FROM sensorParser").unwrap();
    assert_eq!(max, Some(800));
    let before = sub.count();
    let run = flush(&["-v"]);
    assert!(
        run.stderr
            .contains("no longer matches the high-water mark 500 of sync mask 64")
            && run.stderr.contains("reading it again from id 0"),
        "{label}: {}",
        run.stderr
    );
    assert_eq!(
        db.marked_ids(64),
        (1..=800).collect(),
        "{label}: all 800 in the next run"
    );
    let got = sub.wait_for(before + 800, WAIT);
    let ids: Vec<i64> = got[before..].iter().map(util::Received::id).collect();
    assert_eq!(
        ids,
        (1..=800).collect::<Vec<i64>>(),
        "{label}: once each, in id order"
    );
    let a = util::accounting::assert_accounted_mysql(&env, &db, 64);
    assert_eq!((a.sent, a.waiting, a.total), (800, 0, 800), "{label}");
    // The run after: nothing to send, nothing to say about the table.
    let idle = flush(&["-v"]);
    assert!(
        !idle.stderr.contains("no longer matches"),
        "{}",
        idle.stderr
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sub.count(), before + 800, "{label}: nothing sent twice");
}

#[test]
fn a_truncated_myisam_table_refilled_past_the_mark_has_every_new_row_sent_by_the_very_next_run() {
    ids_that_start_again("MyISAM", "truncate");
}

#[test]
fn a_truncated_innodb_table_refilled_past_the_mark_has_every_new_row_sent_by_the_very_next_run() {
    ids_that_start_again("InnoDB", "truncate");
}

#[test]
fn a_myisam_table_dropped_and_made_again_has_every_new_row_sent_by_the_very_next_run() {
    ids_that_start_again("MyISAM", "drop");
}

#[test]
fn an_innodb_table_dropped_and_made_again_has_every_new_row_sent_by_the_very_next_run() {
    ids_that_start_again("InnoDB", "drop");
}

#[test]
fn rows_whose_sync_is_null_are_unsent_all_300_are_sent_marked_and_counted_on_mysql() {
    let env = TestEnv::new("my_null");
    let db = TestDb::new("null");
    let mut c = db.create(&MESHLIUM_313.replace(
        "`sync` int(1) NOT NULL DEFAULT '0'",
        "`sync` int(1) DEFAULT NULL",
    ));
    insert_rows(&mut c, 300, 0);
    c.query_drop("UPDATE sensorParser SET sync = NULL WHERE id % 10 = 0")
        .unwrap();
    c.query_drop("UPDATE sensorParser SET sync = 1 WHERE id % 7 = 0 AND sync IS NOT NULL")
        .unwrap();
    let nulls: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM sensorParser WHERE sync IS NULL")
        .unwrap();
    assert_eq!(nulls, Some(30));
    let (url, broker) = (db.url(), Broker::start(&env));
    let burl = broker.url();
    let s = mariadb::run(&env, &["status", "--db", &url, "--json"]).json();
    let d = &s["destinations"][0];
    assert_eq!(
        (d["waiting"].as_u64(), d["null_sync"].as_u64()),
        (Some(300), Some(30)),
        "{s}"
    );
    let check = mariadb::run(&env, &["check", "--db", &url, "-L", &burl]);
    expect_check_line(
        &check,
        "ok",
        "backlog",
        &["300 unsent row(s)", "30 row(s) with sync NULL"],
    );
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let run = mariadb::run(&env, &["flush", "--db", &url, "-L", &burl, "--json", "-d"]);
    run.expect_code(0);
    let j: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        (
            j["selected"].as_u64(),
            j["marked"].as_u64(),
            j["unsent"].as_u64(),
            j["backlog"].as_u64()
        ),
        (Some(300), Some(300), Some(0), Some(0)),
        "{j}"
    );
    let ids: BTreeSet<i64> = sub
        .wait_for(300, WAIT)
        .iter()
        .map(util::Received::id)
        .collect();
    assert_eq!(ids, (1..=300).collect());
    let syncs: Vec<(i64, Option<i64>)> = c
        .query("SELECT id, sync FROM sensorParser ORDER BY id")
        .unwrap();
    for (id, sync) in syncs {
        let want = if id % 7 == 0 && id % 10 != 0 { 65 } else { 64 };
        assert_eq!(
            sync,
            Some(want),
            "row {id}: NULL became the mask, other bits kept"
        );
    }
    let a = util::accounting::assert_accounted_mysql(&env, &db, 64);
    assert_eq!((a.sent, a.total), (300, 300));
    let other = util::accounting::assert_accounted_mysql(&env, &db, 1);
    assert_eq!(other.waiting, 262, "{other:?}");
    // The idle runs after (the one that moves the mark, then one on it)
    // read a range of the primary key after the mark.
    let dead = format!("mqtt://127.0.0.1:{}", util::refused_port());
    mariadb::run(&env, &["flush", "--db", &url, "-L", &dead]).expect_code(0);
    let idle = mariadb::run(&env, &["flush", "--db", &url, "-L", &dead, "-d"]);
    idle.expect_code(0);
    let plan = idle
        .stderr
        .lines()
        .find(|l| l.contains("query plan"))
        .unwrap_or_default();
    assert!(
        plan.contains("from id 300") && plan.contains("s: type range, key PRIMARY"),
        "{}",
        idle.stderr
    );
}

#[test]
fn a_table_made_again_under_a_mark_that_stands_on_a_quarantined_row_is_caught_by_that_row_s_checksum()
 {
    let env = TestEnv::new("my_restart_q");
    let db = TestDb::new("restart_q");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 10, 0);
    c.query_drop("UPDATE sensorParser SET value = NULL WHERE id = 10")
        .unwrap();
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, burl) = (db.url(), broker.url());
    let flush = [
        "flush",
        "--db",
        &url,
        "-L",
        &burl,
        "--payload",
        "value",
        "--max-attempts",
        "1",
        "-v",
    ];
    // Row 10 cannot become a message: quarantined at once; the next run
    // moves the mark onto it (MyISAM: no margin).
    mariadb::run(&env, &flush).expect_code(65);
    mariadb::run(&env, &flush).expect_code(0);
    assert_eq!(db.state("hwm:64").as_deref(), Some("10"));
    let a = util::accounting::assert_accounted_mysql(&env, &db, 64);
    assert_eq!((a.sent, a.quarantined), (9, 1));
    // A firmware update makes the table again; the producer fills it.
    c.query_drop("DROP TABLE sensorParser").unwrap();
    c.query_drop(MESHLIUM_313).unwrap();
    insert_rows(&mut c, 20, 0);
    let before = sub.count();
    let run = mariadb::run(&env, &flush);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("row 10 is not the row it was when the mark moved there")
            && run.stderr.contains("forgetting the 1 failure record(s)"),
        "{}",
        run.stderr
    );
    assert_eq!(db.marked_ids(64), (1..=20).collect(), "the new row 10 too");
    assert_eq!(sub.wait_for(before + 20, WAIT).len(), before + 20);
    let a = util::accounting::assert_accounted_mysql(&env, &db, 64);
    assert_eq!((a.sent, a.quarantined, a.total), (20, 0, 20));
}

#[test]
fn a_user_allowed_three_connections_drains_everything_and_asks_for_no_fourth() {
    let env = TestEnv::new("my_three_conns");
    let db = TestDb::new("threeconns");
    let mut c = db.create(MESHLIUM_313);
    insert_rows(&mut c, 3000, 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    // The run lock's connection, the run's own and the marking thread's,
    // which also reads ahead between its commits: a fourth would be
    // refused, and -v would say so.
    let (url, account) = db.user("three", "WITH MAX_USER_CONNECTIONS 3", "ALL", "*");
    let mut admin = db.server.admin();
    let burl = broker.url();
    let args = ["flush", "--db", &url, "-L", &burl, "-t", "three/{id}", "-v"];
    let run = mariadb::run(&env, &args);
    run.expect_code(0);
    assert!(
        !run.stderr.contains("max_user_connections")
            && !run
                .stderr
                .contains("rows are read ahead between marking commits:"),
        "{}",
        run.stderr
    );
    let all: BTreeSet<i64> = (1..=3000).collect();
    assert_eq!(db.marked_ids(64), all);
    let got = wait_received(&sub, "three", &all);
    assert_eq!(got.len(), 3000);
    util::accounting::assert_accounted_mysql(&env, &db, 64);
    admin.query_drop(format!("DROP USER {account}")).unwrap();
}

/// A user allowed two connections (the run lock's and the run's own) leaves
/// the marking thread none: the run must stop before it publishes anything,
/// since nothing it sent could be marked. Twice in a row with a producer
/// adding rows before each, next to a run whose broker is down (that one is
/// the broker's fault, found before any second connection is asked for),
/// then a run as a user with no limit delivers every row exactly once.
#[test]
fn a_user_allowed_two_connections_publishes_nothing_run_after_run_and_a_user_without_the_limit_delivers_every_row_once()
 {
    let env = TestEnv::new("my_two_conns");
    let db = TestDb::new("twoconns");
    let mut c = db.create(MESHLIUM_313);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, account) = db.user("two", "WITH MAX_USER_CONNECTIONS 2", "ALL", "*");
    let mut admin = db.server.admin();
    let burl = broker.url();
    let down = format!("mqtt://127.0.0.1:{}", util::refused_port());
    let mut total = 0;
    for (round, broker_url) in [&burl, &burl, &down, &burl].into_iter().enumerate() {
        insert_rows(&mut c, 600, 0);
        total += 600;
        let args = ["flush", "--db", &url, "-L", broker_url, "-t", "two/{id}"];
        let run = mariadb::run(&env, &args);
        if broker_url == &down {
            run.expect_code(69);
        } else {
            run.expect_code(74);
            assert!(
                run.stderr.contains("max_user_connections"),
                "round {round}: {}",
                run.stderr
            );
        }
        assert_eq!(
            run.stderr.matches("frameflush: error:").count(),
            1,
            "round {round}: {}",
            run.stderr
        );
        assert!(db.marked_ids(64).is_empty(), "round {round}: rows marked");
    }
    // The same rows as a user without the limit: all of them, each once, so
    // the refused runs published none.
    let args = ["flush", "--db", &db.url(), "-L", &burl, "-t", "two/{id}"];
    mariadb::run(&env, &args).expect_code(0);
    let all: BTreeSet<i64> = (1..=total as i64).collect();
    assert_eq!(db.marked_ids(64), all);
    let got = wait_received(&sub, "two", &all);
    assert_eq!(got.len(), total);
    assert!(
        got.values().all(|&n| n == 1),
        "rows received more than once: {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    util::accounting::assert_accounted_mysql(&env, &db, 64);
    admin.query_drop(format!("DROP USER {account}")).unwrap();
}

/// A user allowed three connections (as two tests above), next to other
/// faults and across runs: under MAX_USER_CONNECTIONS 3, run after run, with
/// a producer adding rows between them and the link cut at a random point in
/// some runs, nothing is marked that the broker did not deliver and a clean
/// run delivers the rest.
#[test]
fn a_user_allowed_three_connections_loses_nothing_to_a_cut_link_and_drains_what_a_producer_added_run_after_run()
 {
    let mut rng = Rng::new("mysql_three_conns_cut");
    let env = TestEnv::new("my_three_conns_cut");
    let db = TestDb::new("threecut");
    let mut c = db.create(MESHLIUM_313);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (url, account) = db.user("threecut", "WITH MAX_USER_CONNECTIONS 3", "ALL", "*");
    let mut admin = db.server.admin();
    let (mut total, mut marked_before) = (0, 0);
    // Two cut runs in a row, then a clean one; twice.
    for (round, cut) in [true, true, false, true, false].into_iter().enumerate() {
        let added = 1500;
        insert_rows(&mut c, added, 0);
        total += added;
        let proxy = cut.then(|| {
            Proxy::start(
                broker.port,
                Fault::CutAfter(rng.range(2_000, 200_000) as usize),
            )
        });
        let port = proxy.as_ref().map_or(broker.port, |p| p.port).to_string();
        let args = [
            "flush",
            "--db",
            &url,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-t",
            "threecut/{id}",
            "--ack-timeout",
            "3",
            "-v",
        ];
        let run = mariadb::run(&env, &args);
        let code = run.code.unwrap();
        assert!(
            if cut {
                code == 0 || code == 75
            } else {
                code == 0
            },
            "seed {}, round {round}: {run:#?}",
            rng.seed
        );
        let marked = db.marked_ids(64);
        // The run's end, recorded with its last marks: its exit status and
        // the rows it marked, cut or not.
        let record: Option<(i64, u64)> = db
            .conn()
            .query_first("SELECT exit_code, rows_marked FROM frameflush_runs WHERE sync_mask = 64")
            .unwrap();
        assert_eq!(
            record,
            Some((i64::from(code), (marked.len() - marked_before) as u64)),
            "seed {}, round {round}: the run record",
            rng.seed
        );
        // The marking thread starts once the broker accepted the
        // connection (the cut comes 2,000 bytes or more after the CONNECT)
        // and reads ahead between its commits: three connections do.
        assert!(
            !run.stderr.contains("max_user_connections"),
            "round {round}: {}",
            run.stderr
        );
        marked_before = marked.len();
        let got = wait_received(&sub, "threecut", &marked);
        let falsely = marked.iter().filter(|id| !got.contains_key(id)).count();
        assert_eq!(
            falsely, 0,
            "seed {}, round {round}: {falsely} row(s) marked but never received",
            rng.seed
        );
        if !cut {
            let all: BTreeSet<i64> = (1..=total as i64).collect();
            assert_eq!(marked, all, "round {round}: a clean run left rows unsent");
            assert_eq!(wait_received(&sub, "threecut", &all).len(), total);
        }
        util::accounting::assert_accounted_mysql(&env, &db, 64);
    }
    admin.query_drop(format!("DROP USER {account}")).unwrap();
}
