//! The command line, the config file, `init` and `status`: what a user
//! types and what they are told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::{Broker, Subscriber, TestEnv, marked_ids};

#[test]
fn help_goes_to_stdout_with_0_and_lists_the_exit_codes() {
    let env = TestEnv::new("help");
    for args in [vec!["--help"], vec!["flush", "--help"], vec!["help"]] {
        let run = env.run(&args);
        run.expect_code(0);
        assert!(run.stdout.starts_with("Usage: frameflush"), "{run:#?}");
        assert_eq!(run.stderr, "");
    }
    let help = env.run(&["flush", "--help"]).stdout;
    for code in ["64", "65", "66", "69", "74", "75", "77", "78"] {
        assert!(
            help.contains(&format!("\n  {code} ")),
            "--help lacks exit code {code}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let env = TestEnv::new("version");
    let run = env.run(&["--version"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        format!("frameflush {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_give_64_and_one_line() {
    let env = TestEnv::new("badflags");
    env.seed(1);
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["flush", "--db", "sensors.db", "--bogus"],
        &["flush", "--db", "sensors.db", "--port", "70000"],
        &["flush", "--db", "sensors.db", "--port", "0"],
        &["flush", "--db", "sensors.db", "--port", "-1"],
        &["flush", "--db", "sensors.db", "--inflight", "0"],
        &["flush", "--db", "sensors.db", "--batch", "abc"],
        &["flush", "--db", "sensors.db", "--sync-mask", "3"],
        &["flush", "--db", "sensors.db", "--sync-mask", "0"],
        &["flush", "--db", "sensors.db", "--max-time", "-5"],
        &["flush", "--db", "sensors.db", "--max-time", "NaN"],
        &["flush", "--db", "sensors.db", "--ack-timeout", "0"],
        &["flush", "--db", "sensors.db", "--keepalive", "2"],
        &["flush", "--db", "sensors.db", "--payload", "xml"],
        &["flush", "--db", "sensors.db", "--topic", "a/{nope}"],
        &["flush", "--db", "sensors.db", "--topic", "a/+"],
        &["flush", "--db", "sensors.db", "--topic", ""],
        &["flush", "--db", "sensors.db", "-L", "http://x"],
        &["flush", "--db", "sensors.db", "-L", "mqtt://u:s3cr3t-pw@h"],
        &[
            "flush",
            "--db",
            "sensors.db",
            "-L",
            "mqtt://h",
            "--port",
            "1",
        ],
        &["flush"],
        &["flush", "--db"],
    ];
    for args in cases {
        let run = env.run(args);
        run.expect_code(64);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:#?}");
        assert!(
            run.stderr.starts_with("frameflush: error: "),
            "{args:?}: {run:#?}"
        );
        assert!(
            !run.stderr.contains("s3cr3t-pw"),
            "a password never prints: {run:#?}"
        );
        assert_eq!(run.stdout, "", "{args:?}");
    }
    assert_eq!(marked_ids(&env.db(), 64).len(), 0);
}

#[test]
fn a_bad_config_file_gives_78_and_one_line_naming_the_problem() {
    let env = TestEnv::new("badconfig");
    env.seed(1);
    let cases = [
        (
            "{\"db\": \"sensors.db\", \"colour\": 1}",
            "unknown field `colour`",
        ),
        (
            "{\"db\": \"sensors.db\", \"port\": \"1883\"}",
            "invalid type",
        ),
        ("{\"db\": \"sensors.db\", \"port\": 1883", "EOF"),
        ("[]", "must hold one JSON object"),
        (
            "{\"db\": \"sensors.db\", \"password\": \"hunter2\"}",
            "a password does not belong in the config file",
        ),
        (
            "{\"db\": \"sensors.db\", \"topic\": \"x/{bad\"}",
            "config key \"topic\"",
        ),
        (
            "{\"db\": \"sensors.db\", \"inflight\": 0}",
            "config key \"inflight\"",
        ),
        (
            "{\"db\": \"sensors.db\", \"url\": \"mqtt://h:99999\"}",
            "config key \"url\"",
        ),
        (
            "{\"db\": \"sensors.db\", \"username\": \"u\", \"pw-file\": \"missing-file\"}",
            "cannot read password file",
        ),
    ];
    for (text, needle) in cases {
        env.write("config.json", text);
        let run = env.run(&["flush", "--config", "config.json"]);
        run.expect_code(78).expect_one_error_line(needle);
        assert!(!run.stderr.contains("hunter2"));
    }
    env.run(&["flush", "--config", "no-such.json"])
        .expect_code(78)
        .expect_one_error_line("cannot read config file");
    // A password without a user name is a configuration error too.
    let mut cmd = env.cmd(&["flush", "--db", "sensors.db"]);
    cmd.env("FRAMEFLUSH_PASSWORD", "pw");
    util::run_cmd(cmd, std::time::Duration::from_secs(30))
        .expect_code(78)
        .expect_one_error_line("no user name");
}

#[test]
fn the_config_file_supplies_options_and_flags_win_over_it() {
    let env = TestEnv::new("config");
    env.seed(3);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    env.write(
        "config.json",
        &format!(
            "{{\"db\": \"sensors.db\", \"host\": \"127.0.0.1\", \"port\": {}, \"topic\": \"from-file/{{sensor}}\", \"payload\": \"value\", \"inflight\": 2, \"batch\": 2}}",
            broker.port
        ),
    );
    env.run(&[
        "flush",
        "--config",
        "config.json",
        "--topic",
        "from-flag/{id}",
    ])
    .expect_code(0);
    let topics: Vec<String> = sub
        .wait_for(3, std::time::Duration::from_secs(10))
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(topics, vec!["from-flag/1", "from-flag/2", "from-flag/3"]);
    assert_eq!(sub.messages()[0].payload, b"20.00");
}

#[test]
fn the_url_sets_host_port_user_and_topic() {
    let env = TestEnv::new("url");
    env.seed(2);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let url = format!("mqtt://127.0.0.1:{}/gw/{{id_wasp}}", broker.port);
    env.run(&["flush", "--db", "sensors.db", "-L", &url])
        .expect_code(0);
    let topics: Vec<String> = sub
        .wait_for(2, std::time::Duration::from_secs(10))
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(topics, vec!["gw/node_00", "gw/node_01"]);
}

#[test]
fn init_creates_the_table_and_index_and_keeps_an_existing_table() {
    let env = TestEnv::new("init");
    env.run(&["init", "--db", "new.db"]).expect_code(0);
    let c = rusqlite::Connection::open(env.path("new.db")).unwrap();
    let names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE name IN ('sensorParser', 'frameflush_unsent_64') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(names, vec!["frameflush_unsent_64", "sensorParser"]);
    // An existing Meshlium export keeps its rows; the index is added.
    env.seed(5);
    env.run(&["init", "--db", "sensors.db", "--sync-mask", "128"])
        .expect_code(0);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sensorParser", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
    let idx: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'frameflush_unsent_128'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(idx, 1);
    env.write("junk.db", &"x".repeat(5000));
    env.run(&["init", "--db", "junk.db"])
        .expect_code(74)
        .expect_one_error_line("not an SQLite database");
    env.run(&["init", "--db", "no/such/dir/x.db"])
        .expect_code(74);
}

#[test]
fn flush_adds_its_index_to_a_meshlium_export_that_lacks_it() {
    let env = TestEnv::new("addindex");
    env.seed(0);
    env.run(&["flush", "--db", "sensors.db"]).expect_code(0);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let idx: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'frameflush_unsent_64'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(idx, 1);
}

#[test]
fn status_reports_unsent_oldest_and_total_as_text_and_json() {
    let env = TestEnv::new("status");
    let c = env.seed(0);
    c.execute_batch(
        "INSERT INTO sensorParser (id_wasp, sensor, value, timestamp, sync) VALUES
           ('n', 'TC', '1', '2026-11-20 08:00:00', 64), ('n', 'TC', '2', '2026-11-21 09:00:00', 0),
           ('n', 'TC', '3', '2026-11-22 10:00:00', 1), ('n', 'TC', '4', '2026-11-23 11:00:00', 0)",
    )
    .unwrap();
    c.execute_batch(
        "UPDATE sensorParser SET timestamp = datetime('now', '-3 hours') WHERE id = 2;
         UPDATE sensorParser SET timestamp = datetime('now', '-2 hours') WHERE id = 3;
         UPDATE sensorParser SET timestamp = datetime('now', '-1 hours') WHERE id = 4;",
    )
    .unwrap();
    let run = env.run(&["status", "--db", "sensors.db", "--json"]);
    run.expect_code(0);
    let j = run.json();
    assert_eq!(j["total"], 4);
    let d = &j["destinations"][0];
    assert_eq!(d["sync_mask"], 64);
    assert_eq!(d["unsent"], 3);
    let four: Vec<u64> = ["sent", "waiting", "failing", "quarantined", "total"]
        .iter()
        .map(|k| d[k].as_u64().unwrap())
        .collect();
    assert_eq!(four, [1, 3, 0, 0, 4], "{d}");
    let age = d["oldest_unsent_age_s"].as_i64().unwrap();
    assert!((3 * 3600..3 * 3600 + 60).contains(&age), "{j}");
    assert!(d["last_run"].is_null());
    let run = env.run(&["status", "--db", "sensors.db", "--sync-mask", "1"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains(
            "sync mask 1:\n  sent:          1\n  waiting:       3\n  failing:       0 (failed, to be retried)\n  \
             quarantined:   0 (failed --max-attempts times, skipped until requeued)\n  of total:      4\n  \
             unsent:        3 (waiting + failing)\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("oldest unsent: 2026-11-20 08:00:00 ("),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("total rows:    4"), "{}", run.stdout);
}

#[test]
fn status_lists_every_destination_the_database_has_seen() {
    let env = TestEnv::new("status-masks");
    let mut c = env.seed(0);
    util::insert_rows(&mut c, 3, 64);
    util::insert_rows(&mut c, 2, 0);
    env.run(&["init", "--db", "sensors.db", "--sync-mask", "128"])
        .expect_code(0);
    let j = env.run(&["status", "--db", "sensors.db", "--json"]).json();
    let per_mask: Vec<(i64, u64)> = j["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["sync_mask"].as_i64().unwrap(),
                d["unsent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_mask, vec![(64, 2), (128, 5)]);
    let j = env
        .run(&[
            "status",
            "--db",
            "sensors.db",
            "--sync-mask",
            "128",
            "--sync-mask",
            "1",
            "--json",
        ])
        .json();
    assert_eq!(j["destinations"].as_array().unwrap().len(), 2);
    env.run(&["status", "--db", "sensors.db", "--sync-mask", "3"])
        .expect_code(64);
}

#[test]
fn status_shows_the_last_run_that_had_rows_to_send() {
    let env = TestEnv::new("lastrun");
    env.seed(4);
    let broker = Broker::start(&env);
    let url = broker.url();
    env.run(&["flush", "--db", "sensors.db", "-L", &url])
        .expect_code(0);
    let j = env.run(&["status", "--db", "sensors.db", "--json"]).json()["destinations"][0].clone();
    assert_eq!(j["unsent"], 0);
    assert_eq!(j["last_run"]["exit_code"], 0);
    assert_eq!(j["last_run"]["rows_marked"], 4);
}

#[test]
fn a_closed_stderr_costs_the_error_line_but_never_a_panic_or_the_exit_status() {
    let env = TestEnv::new("closed-stderr");
    env.seed(3);
    let db = env.db_arg();
    let cases: [(&[&str], i32); 3] = [
        (&["flush", "--no-such-flag"], 64),
        (&["flush", "--db", "missing.db"], 66),
        (
            &["flush", "--db", &db, "-L", "mqtt://127.0.0.1:1", "-v"],
            69,
        ),
    ];
    for (args, code) in cases {
        // A pipe whose reader is gone: every write to stderr fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = env
            .cmd(args)
            .stderr(writer)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}
