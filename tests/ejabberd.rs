//! ejabberd 23.01 (Debian's `ejabberd`, mod_mqtt) as a second, independent
//! real MQTT 5 broker: delivery under `auto`, 5 and 3.1.1; its refusals
//! (PUBACK 0x90 "Topic Name invalid" for a topic its `access_publish`
//! denies: exit 77, the line pointing at the ACL), in a run and in
//! `check`; and its `max_payload_size`, which it does not announce in
//! CONNACK and enforces with DISCONNECT 0x95 or a bare TCP reset. One
//! private node serves the whole file ([`Ejabberd::shared`]); each test has
//! its own topics and client ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use util::ejabberd::{self, Ejabberd};
use util::{Run, Subscriber, TestEnv, marked_ids};

/// `frameflush ARGS` logged in as the gateway user.
fn frameflush(env: &TestEnv, args: &[&str]) -> Run {
    let mut cmd = env.cmd(args);
    cmd.env("FRAMEFLUSH_PASSWORD", ejabberd::PASSWORD);
    let run = util::run_cmd(cmd, Duration::from_secs(120));
    assert!(
        !run.stdout.contains(ejabberd::PASSWORD) && !run.stderr.contains(ejabberd::PASSWORD),
        "the password was printed: {run:#?}"
    );
    run
}

fn subscriber(node: &Ejabberd, filter: &str) -> Subscriber {
    Subscriber::connect_as(node.port, filter, ejabberd::SUB_USER, ejabberd::PASSWORD)
}

/// The ids received, each once.
fn ids(sub: &Subscriber) -> BTreeSet<i64> {
    sub.ids().into_iter().collect()
}

#[test]
fn every_row_is_delivered_and_marked_under_auto_mqtt_5_and_3_1_1() {
    let node = Ejabberd::shared();
    for version in ["auto", "5", "311"] {
        let env = TestEnv::new("ej-deliver");
        drop(env.seed(60));
        let sub = subscriber(&node, &format!("deliver/{version}/#"));
        let topic = format!("deliver/{version}/{{id_wasp}}/{{sensor}}");
        let id = format!("ff-deliver-{version}");
        let (db, url) = (env.db_arg(), node.url());
        let started = Instant::now();
        let run = frameflush(
            &env,
            &[
                "flush",
                "--db",
                &db,
                "-L",
                &url,
                "-u",
                ejabberd::USER,
                "-V",
                version,
                "-t",
                &topic,
                "--id",
                &id,
                "-v",
            ],
        );
        run.expect_code(0);
        let label = if version == "311" {
            "with MQTT 3.1.1"
        } else {
            "with MQTT 5"
        };
        assert!(run.stderr.contains(label), "{version}: {run:#?}");
        assert_eq!(marked_ids(&env.db(), 64).len(), 60, "{version}");
        sub.wait_for(60, Duration::from_secs(10));
        assert_eq!(ids(&sub), (1..=60).collect(), "{version}");
        println!("-V {version}: 60 rows in {:?}", started.elapsed());
    }
}

#[test]
fn a_topic_the_acl_refuses_gets_0x90_exit_77_and_a_line_pointing_at_access_publish_while_the_rest_goes_out()
 {
    let node = Ejabberd::shared();
    for version in ["auto", "5"] {
        let env = TestEnv::new("ej-acl");
        // node_00..node_04 in turn: node_03's rows (4, 9, 14, …) are refused.
        drop(env.seed(40));
        let sub = subscriber(&node, "acl/#");
        let (db, url) = (env.db_arg(), node.url());
        let id = format!("ff-acl-{version}");
        let run = frameflush(
            &env,
            &[
                "flush",
                "--db",
                &db,
                "-L",
                &url,
                "-u",
                ejabberd::USER,
                "-V",
                version,
                "-t",
                "acl/{id_wasp}/{sensor}",
                "--id",
                &id,
            ],
        );
        run.expect_code(77);
        assert!(
            run.stderr.contains("0x90 Topic Name invalid")
                && run.stderr.contains("acl/node_03/")
                && run.stderr.contains("access_publish"),
            "{version}: {run:#?}"
        );
        let refused: BTreeSet<i64> = (4..=40).step_by(5).collect();
        let allowed: BTreeSet<i64> = (1..=40).filter(|i| !refused.contains(i)).collect();
        assert_eq!(marked_ids(&env.db(), 64), allowed, "{version}");
        sub.wait_for(allowed.len(), Duration::from_secs(10));
        assert_eq!(ids(&sub), allowed, "{version}");
    }
    // check names the refused node, wherever its rows are in the backlog.
    let env = TestEnv::new("ej-check");
    let mut c = env.create_db();
    util::insert_rows(&mut c, 40, 0);
    drop(c);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    // The oldest 20 rows belong to other nodes.
    c.execute(
        "UPDATE sensorParser SET id_wasp = 'node_00' WHERE id <= 20 AND id_wasp = 'node_03'",
        [],
    )
    .unwrap();
    drop(c);
    env.run(&["init", "--db", &env.db_arg()]).expect_code(0);
    let (db, url) = (env.db_arg(), node.url());
    for (version, why) in [
        ("5", "0x90 Topic Name invalid"),
        // ejabberd acknowledges and drops a refused 3.1.1 PUBLISH: only
        // the missing echo shows it.
        ("311", "acknowledged the message but did not route it"),
    ] {
        let id = format!("ff-check-{version}");
        let run = frameflush(
            &env,
            &[
                "check",
                "--db",
                &db,
                "-L",
                &url,
                "-u",
                ejabberd::USER,
                "-V",
                version,
                "-t",
                "check/{id_wasp}/{sensor}",
                "--id",
                &id,
                "--batch",
                "10",
                "--ack-timeout",
                "2",
            ],
        );
        run.expect_code(77);
        let fail = run
            .stdout
            .lines()
            .find(|l| l.starts_with("FAIL round-trip:"))
            .unwrap_or_else(|| panic!("{run:#?}"));
        assert!(
            fail.contains("refused: check/node_03/… (")
                || fail.contains("routed: check/node_03/… ("),
            "{fail}"
        );
        assert!(fail.contains(why), "{version}: {fail}");
        if version == "5" {
            assert!(fail.contains("access_publish"), "{fail}");
        }
        // Only node_03 fails.
        assert_eq!(
            run.stdout.lines().filter(|l| l.starts_with("FAIL")).count(),
            1,
            "{}",
            run.stdout
        );
    }
}

#[test]
fn an_oversized_row_it_does_not_announce_is_charged_and_quarantined_while_2999_others_and_new_rows_are_delivered()
 {
    let node = Ejabberd::shared();
    let env = TestEnv::new("ej-big");
    drop(env.seed(3000));
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute(
        "UPDATE sensorParser SET value = ?1 WHERE id = 1000",
        ["7".repeat(20_000)],
    )
    .unwrap();
    drop(c);
    let sub = subscriber(&node, "big/#");
    let (db, url) = (env.db_arg(), node.url());
    let args = [
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "-u",
        ejabberd::USER,
        "-V",
        "5",
        "-t",
        "big/{id_wasp}/{sensor}",
        "--id",
        "ff-big",
        "--max-attempts",
        "3",
        "--json",
    ];
    let mut runs = Vec::new();
    let all_but: BTreeSet<i64> = (1..=3000).filter(|&i| i != 1000).collect();
    let mut quarantined_after = None;
    let mut total = 3000;
    for n in 1..=6 {
        if n > 1 {
            // The producer goes on: healthy rows behind the oversized one
            // go out in the next run (and prove the broker works).
            util::insert_rows(&mut rusqlite::Connection::open(env.db()).unwrap(), 10, 0);
            total += 10;
        }
        let started = Instant::now();
        let run = frameflush(&env, &args);
        let took = started.elapsed();
        let marked = marked_ids(&env.db(), 64);
        let f = env.run(&["failures", "--db", &db, "--json"]).json();
        let attempts = f
            .as_array()
            .and_then(|a| a.iter().find(|r| r["row_id"] == 1000))
            .map(|r| (r["attempts"].as_u64(), !r["quarantined_at"].is_null()));
        let suspects: Option<String> = rusqlite::Connection::open(env.db())
            .unwrap()
            .query_row(
                "SELECT value FROM frameflush_state WHERE key = 'suspects:64'",
                [],
                |r| r.get(0),
            )
            .ok();
        println!(
            "run {n}: exit {:?} in {took:?}, {} marked, row 1000 (attempts, quarantined): {attempts:?}, suspects:64 = {suspects:?}; stderr: {}",
            run.code,
            marked.len(),
            run.stderr.trim_end()
        );
        if let Some(s) = &suspects {
            assert!(
                s.split(|c: char| !c.is_ascii_digit())
                    .all(|id| id.is_empty() || id == "1000"),
                "run {n}: the stored suspect is not the oversized row: {s}"
            );
        }
        assert!(
            !marked.contains(&1000),
            "run {n}: the oversized row was marked"
        );
        let healthy: BTreeSet<i64> = (1..=total).filter(|&i| i != 1000).collect();
        runs.push((run, marked == healthy, marked, attempts));
        if matches!(attempts, Some((_, true))) {
            quarantined_after = Some(n);
            break;
        }
    }
    // The first run delivers and marks every other row.
    let (first, _, marked, attempts) = &runs[0];
    assert_eq!(marked, &all_but, "first run: {first:#?}");
    for (n, (run, all_healthy, _, _)) in runs.iter().enumerate() {
        assert!(
            all_healthy,
            "run {}: a healthy row is unsent: {run:#?}",
            n + 1
        );
    }
    assert_eq!(
        attempts.map(|a| a.0),
        Some(Some(1)),
        "first run: {first:#?}"
    );
    assert_eq!(
        quarantined_after,
        Some(3),
        "quarantined after --max-attempts 3 runs"
    );
    let healthy: BTreeSet<i64> = (1..=total).filter(|&i| i != 1000).collect();
    sub.wait_for(healthy.len(), Duration::from_secs(20));
    assert_eq!(ids(&sub), healthy);
}
