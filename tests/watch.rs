//! Watching and running several destinations: `--metrics-file`, the
//! progress line on a terminal, two destinations with one broker down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use util::{Broker, Subscriber, TestEnv, marked_ids};

const WAIT: Duration = Duration::from_secs(30);

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

#[test]
fn the_metrics_file_tells_the_last_run_the_backlog_and_the_last_success() {
    let env = TestEnv::new("metrics");
    let mut c = env.seed(30);
    c.execute_batch("UPDATE sensorParser SET timestamp = datetime('now', '-600 seconds')")
        .unwrap();
    let mut broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let metrics = env.path("frameflush.prom");
    let m = metrics.display().to_string();
    env.run(&[
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--metrics-file",
        &m,
        "--limit",
        "20",
    ])
    .expect_code(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(&format!(
            "frameflush_last_run_rows_sent{{db=\"{db}\",sync_mask=\"64\"}} 20"
        )),
        "{text}"
    );
    assert_eq!(metric(&text, "frameflush_last_run_exit_code"), Some(0.0));
    assert_eq!(metric(&text, "frameflush_backlog_rows"), Some(10.0));
    let age = metric(&text, "frameflush_oldest_unsent_age_seconds").unwrap();
    assert!((600.0..700.0).contains(&age), "{text}");
    assert_eq!(metric(&text, "frameflush_rows_sent_total"), Some(20.0));
    let success = metric(&text, "frameflush_last_success_timestamp_seconds").unwrap();
    assert!(
        text.contains("# TYPE frameflush_backlog_rows gauge"),
        "{text}"
    );

    // A failed run keeps the last success time and the total.
    broker.kill();
    util::insert_rows(&mut c, 1, 0);
    env.run(&["flush", "--db", &db, "-L", &url, "--metrics-file", &m])
        .expect_code(69);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "frameflush_last_run_exit_code"), Some(69.0));
    assert_eq!(
        metric(&text, "frameflush_last_success_timestamp_seconds"),
        Some(success)
    );
    assert_eq!(metric(&text, "frameflush_rows_sent_total"), Some(20.0));
    assert_eq!(metric(&text, "frameflush_backlog_rows"), Some(11.0));

    // The next success adds to the total; no temporary file is left behind.
    broker.restart();
    env.run(&["flush", "--db", &db, "-L", &url, "--metrics-file", &m])
        .expect_code(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "frameflush_rows_sent_total"), Some(31.0));
    assert_eq!(metric(&text, "frameflush_backlog_rows"), Some(0.0));
    assert_eq!(
        metric(&text, "frameflush_oldest_unsent_age_seconds"),
        Some(0.0)
    );
    assert!(metric(&text, "frameflush_last_success_timestamp_seconds").unwrap() >= success);
    let leftovers: Vec<_> = std::fs::read_dir(&env.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A run with nothing to send writes the file too (and nothing else).
    env.run(&["flush", "--db", &db, "-L", &url, "--metrics-file", &m])
        .expect_code(0);
    assert_eq!(
        metric(
            &std::fs::read_to_string(&metrics).unwrap(),
            "frameflush_last_run_rows_sent"
        ),
        Some(0.0)
    );
}

#[test]
fn a_run_on_a_terminal_that_lasts_over_a_second_shows_one_progress_line() {
    let env = TestEnv::new("progress");
    env.seed(900);
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    // `script` gives the run a pseudo-terminal; --rate makes it last ~2 s.
    let command = format!("{} flush --db {db} -L {url} --rate 450", util::BIN);
    let run = util::run_cmd(
        {
            let mut c = std::process::Command::new("script");
            c.args(["-qec", &command, "/dev/null"])
                .env_clear()
                .env("TERM", "dumb");
            c
        },
        WAIT,
    );
    run.expect_code(0);
    assert!(run.stdout.contains("\r\x1b[Kframeflush: "), "{run:#?}");
    assert!(
        run.stdout.contains(" sent, ")
            && run.stdout.contains("/s, ")
            && run.stdout.contains(" left"),
        "{run:#?}"
    );
    assert!(
        run.stdout.ends_with("\r\x1b[K"),
        "the line is erased at the end: {run:#?}"
    );
    assert_eq!(marked_ids(&env.db(), 64).len(), 900);
}

#[test]
fn two_destinations_with_one_broker_down_the_other_still_gets_everything() {
    let env = TestEnv::new("twodest");
    let mut c = env.seed(500);
    let up = Broker::start(&env);
    let mut down = Broker::start(&env);
    down.kill();
    let sub = Subscriber::connect(up.port, "#");
    let db = env.db_arg();
    env.write(
        "a.json",
        &format!(
            "{{\"db\": \"{db}\", \"url\": \"{}\", \"sync-mask\": 64}}",
            up.url()
        ),
    );
    env.write(
        "b.json",
        &format!(
            "{{\"db\": \"{db}\", \"url\": \"{}\", \"sync-mask\": 128, \"connect-timeout\": 2}}",
            down.url()
        ),
    );
    // Both start together: different masks do not share a lock.
    let a = env
        .cmd(&["flush", "--config", "a.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .cmd(&["flush", "--config", "b.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (util::wait_output(a, WAIT), util::wait_output(b, WAIT));
    assert_eq!(a.status.code(), Some(0), "{a:?}");
    assert_eq!(b.status.code(), Some(69), "{b:?}");
    assert_eq!(sub.wait_for(500, WAIT).len(), 500);
    assert_eq!(marked_ids(&env.db(), 64).len(), 500);
    assert!(marked_ids(&env.db(), 128).is_empty());
    // More rows: A keeps up while B is still down; then B's broker returns.
    util::insert_rows(&mut c, 100, 0);
    env.run(&["flush", "--config", "a.json"]).expect_code(0);
    env.run(&["flush", "--config", "b.json"]).expect_code(69);
    assert_eq!(marked_ids(&env.db(), 64).len(), 600);
    down.restart();
    let sub_b = Subscriber::connect(down.port, "#");
    env.run(&["flush", "--config", "b.json"]).expect_code(0);
    assert_eq!(sub_b.wait_for(600, WAIT).len(), 600);
    assert_eq!(marked_ids(&env.db(), 128).len(), 600);
    assert!(
        util::sync_bits(&env.db()).iter().all(|&(_, s)| s == 192),
        "both bits on every row"
    );
    // status shows both destinations.
    let j = env.run(&["status", "--db", &db, "--json"]).json();
    assert_eq!(j["destinations"].as_array().unwrap().len(), 2);
}
