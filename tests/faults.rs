//! Fault injection: the promise (no reading lost, nothing marked that the
//! broker did not acknowledge, duplicates bounded) under cut links, killed
//! processes, swallowed acknowledgements, a busy producer and overlapping
//! runs. Randomness is seeded and the seed printed (see util::Rng); every
//! loop is bounded in rounds and time. Each test prints its figures (rounds,
//! lost, falsely marked, worst duplicates): `cargo test --test faults --
//! --nocapture` shows them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{
    Broker, Fault, Proxy, Rng, Subscriber, TestEnv, marked_ids, received_under, wait_received,
};

const WAIT: Duration = Duration::from_secs(30);
/// Acknowledged rows not yet committed as marked, at most (`MAX_UNMARKED`
/// in src/marker.rs; README, "Duplicates are bounded").
const UNMARKED_CAP: usize = 8000;

/// The figures a fault test reports.
#[derive(Default, Debug)]
struct Figures {
    rounds: usize,
    lost: usize,
    falsely_marked: usize,
    worst_duplicates: usize,
    total_duplicates: usize,
    failed_runs: usize,
}

impl Figures {
    fn report(&self, fault: &str) {
        println!(
            "{fault}: {} rounds ({} runs failed as injected), rows lost {}, falsely marked {}, duplicates worst {} per round, {} in all",
            self.rounds,
            self.failed_runs,
            self.lost,
            self.falsely_marked,
            self.worst_duplicates,
            self.total_duplicates
        );
    }
}

/// What every round of a fault test shares: the test directory, the
/// broker, the subscriber connected straight to it, and the seed.
struct Rig<'a> {
    env: &'a TestEnv,
    broker: &'a Broker,
    sub: &'a Subscriber,
    seed: u64,
}

/// After a faulty run: nothing marked that the subscriber did not receive.
/// Then a clean rerun must deliver and mark everything; the round's
/// duplicates go into the figures.
fn check_round(rig: &Rig<'_>, db: &Path, prefix: &str, rows: usize, figures: &mut Figures) {
    let Rig {
        env,
        broker,
        sub,
        seed,
    } = *rig;
    let all: BTreeSet<i64> = (1..=rows as i64).collect();
    let marked = marked_ids(db, 64);
    let got = wait_received(sub, prefix, &marked);
    let falsely: Vec<i64> = marked
        .iter()
        .copied()
        .filter(|id| !got.contains_key(id))
        .collect();
    figures.falsely_marked += falsely.len();
    assert!(
        falsely.is_empty(),
        "seed {seed}, {prefix}: rows marked but never received: {falsely:?}"
    );
    util::accounting::assert_accounted(env, db, 64);

    // A clean rerun delivers the rest.
    let db_arg = db.display().to_string();
    let url = broker.url();
    let topic = format!("{prefix}/{{id}}");
    let rerun = env.run(&[
        "flush",
        "--db",
        &db_arg,
        "-L",
        &url,
        "-t",
        &topic,
        "--max-time",
        "120",
    ]);
    assert_eq!(
        rerun.code,
        Some(0),
        "seed {seed}, {prefix}: the rerun failed: {rerun:#?}"
    );
    let got = wait_received(sub, prefix, &all);
    let lost: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| !got.contains_key(id))
        .collect();
    figures.lost += lost.len();
    assert!(
        lost.is_empty(),
        "seed {seed}, {prefix}: rows never delivered: {} (first {:?})",
        lost.len(),
        lost.first()
    );
    assert_eq!(
        marked_ids(db, 64),
        all,
        "seed {seed}, {prefix}: not every row marked after the rerun"
    );
    let dups: usize = got.values().map(|n| n - 1).sum();
    figures.worst_duplicates = figures.worst_duplicates.max(dups);
    figures.total_duplicates += dups;
    figures.rounds += 1;
    util::accounting::assert_accounted(env, db, 64);
}

#[test]
fn a_link_cut_at_random_points_never_marks_an_undelivered_row_and_reruns_deliver_everything() {
    let mut rng = Rng::new("a_link_cut_at_random_points");
    let env = TestEnv::new("linkcut");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let rows = 2_000;
    let mut figures = Figures::default();
    for round in 0..24 {
        let db = env.path(&format!("cut{round}.db"));
        util::seed_at(&db, rows);
        // A PUBLISH here is ~200 bytes: cut anywhere from the first PUBLISH
        // to just past the last one.
        let cut_at = rng.range(40, 450_000) as usize;
        let proxy = Proxy::start(broker.port, Fault::CutAfter(cut_at));
        let prefix = format!("cut{round}");
        let (db_arg, port, topic) = (
            db.display().to_string(),
            proxy.port.to_string(),
            format!("{prefix}/{{id}}"),
        );
        let inflight = rng.pick(&["10", "100", "500"]).to_string();
        let run = env.run(&[
            "flush",
            "--db",
            &db_arg,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-t",
            &topic,
            "--inflight",
            &inflight,
            "--batch",
            "200",
            "--ack-timeout",
            "3",
            "--json",
        ]);
        let code = run.code.unwrap();
        assert!(
            code == 0 || code == 75,
            "seed {}, cut at {cut_at}: exit {code}: {run:#?}",
            rng.seed
        );
        let j = run.json();
        // A cut that hit the flush ends the run (75) or makes it reconnect
        // and go on with the messages in doubt one at a time.
        if code == 75 {
            assert_eq!(run.stderr.lines().count(), 1, "seed {}: {run:#?}", rng.seed);
        }
        if code == 75 || j["reconnects"].as_u64() > Some(0) {
            figures.failed_runs += 1;
        }
        // A cut at a byte count says nothing against any message: none is
        // charged.
        assert_eq!(j["failed"], 0, "seed {}: {run:#?}", rng.seed);
        assert_eq!(j["exit_code"], code, "the summary tells the exit status");
        assert_eq!(
            j["marked"].as_u64().unwrap() as usize,
            marked_ids(&db, 64).len(),
            "the summary counts the marks"
        );
        drop(proxy);
        check_round(
            &Rig {
                env: &env,
                broker: &broker,
                sub: &sub,
                seed: rng.seed,
            },
            &db,
            &prefix,
            rows,
            &mut figures,
        );
    }
    figures.report("link cut");
    assert!(
        figures.failed_runs >= 10,
        "too few cuts hit the flush: {figures:?} (seed {})",
        rng.seed
    );
}

#[test]
fn the_tool_killed_at_a_random_moment_marks_only_delivered_rows_and_duplicates_stay_within_window_plus_the_unmarked_cap()
 {
    let mut rng = Rng::new("the_tool_killed_at_a_random_moment");
    let env = TestEnv::new("sigkill");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    // More rows than the bound: a cap that did not hold would show.
    let rows = 16_000;
    let (inflight, batch) = (50, 200);
    let mut figures = Figures::default();
    for round in 0..20 {
        let db = env.path(&format!("kill{round}.db"));
        util::seed_at(&db, rows);
        let prefix = format!("kill{round}");
        let (db_arg, url, topic) = (
            db.display().to_string(),
            broker.url(),
            format!("{prefix}/{{id}}"),
        );
        let (w, b) = (inflight.to_string(), batch.to_string());
        let mut child = env
            .cmd(&[
                "flush",
                "--db",
                &db_arg,
                "-L",
                &url,
                "-t",
                &topic,
                "--inflight",
                &w,
                "--batch",
                &b,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.range(5, 400));
        std::thread::sleep(delay);
        let finished_first = child.try_wait().unwrap().is_some();
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        if !finished_first {
            figures.failed_runs += 1;
        }
        check_round(
            &Rig {
                env: &env,
                broker: &broker,
                sub: &sub,
                seed: rng.seed,
            },
            &db,
            &prefix,
            rows,
            &mut figures,
        );
        let dups: usize = received_under(&sub, &prefix).values().map(|n| n - 1).sum();
        assert!(
            dups <= inflight + UNMARKED_CAP,
            "seed {}, round {round} (killed after {delay:?}): {dups} duplicates, more than window {inflight} + the unmarked cap {UNMARKED_CAP}",
            rng.seed
        );
    }
    figures.report("SIGKILL");
    assert!(
        figures.failed_runs >= 10,
        "too few kills hit a running flush: {figures:?} (seed {})",
        rng.seed
    );
}

#[test]
fn acks_swallowed_by_the_link_end_the_run_in_ack_timeout_and_only_acknowledged_rows_are_marked() {
    let mut rng = Rng::new("acks_swallowed_by_the_link");
    let env = TestEnv::new("swallow");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let rows = 1_000;
    let mut figures = Figures::default();
    for round in 0..4 {
        let db = env.path(&format!("ack{round}.db"));
        util::seed_at(&db, rows);
        let relayed = rng.range(0, 600) as usize;
        let proxy = Proxy::start(broker.port, Fault::SwallowPubAcksAfter(relayed));
        let prefix = format!("ack{round}");
        let (db_arg, port, topic) = (
            db.display().to_string(),
            proxy.port.to_string(),
            format!("{prefix}/{{id}}"),
        );
        let run = env.run(&[
            "flush",
            "--db",
            &db_arg,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-t",
            &topic,
            "--ack-timeout",
            "1",
            "--json",
        ]);
        run.expect_code(75)
            .expect_one_error_line("not acknowledged within --ack-timeout 1 s");
        figures.failed_runs += 1;
        // 1 s of silence, then the messages in doubt alone: at most
        // blame::MAX_SILENT more, plus the time the relayed part took.
        assert!(
            run.elapsed < Duration::from_secs(9),
            "seed {}: took {:?}",
            rng.seed,
            run.elapsed
        );
        let marked = marked_ids(&db, 64);
        assert_eq!(
            marked.len(),
            relayed,
            "seed {}: exactly the acknowledged rows are marked",
            rng.seed
        );
        assert_eq!(
            proxy.acks_relayed.load(std::sync::atomic::Ordering::SeqCst),
            relayed
        );
        let j = run.json();
        assert_eq!(j["acknowledged"].as_u64(), Some(relayed as u64));
        assert_eq!(j["marked"].as_u64(), Some(relayed as u64));
        drop(proxy);
        check_round(
            &Rig {
                env: &env,
                broker: &broker,
                sub: &sub,
                seed: rng.seed,
            },
            &db,
            &prefix,
            rows,
            &mut figures,
        );
    }
    figures.report("swallowed PUBACKs");
}

fn producer_with_back_to_back_runs(journal_mode: &str) {
    let env = TestEnv::new(&format!("producer-{journal_mode}"));
    let c = env.seed(0);
    let mode: String = c
        .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(mode, journal_mode);
    drop(c);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let db_path = env.db();
    // The producer: 10 rows every 5 ms for up to 3 s, its own busy timeout,
    // and it must never fail.
    let producer = std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&db_path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut inserted = 0usize;
        while Instant::now() < deadline && inserted < 6_000 {
            let tx = c.transaction().unwrap();
            for _ in 0..10 {
                tx.execute("INSERT INTO sensorParser (id_wasp, sensor, value) VALUES ('node_01', 'TC', '21.5')", [])
                    .unwrap();
            }
            tx.commit().unwrap();
            inserted += 10;
            std::thread::sleep(Duration::from_millis(5));
        }
        inserted
    });
    let (db, url) = (env.db_arg(), broker.url());
    let mut runs = 0;
    let start = Instant::now();
    while !producer.is_finished() && start.elapsed() < Duration::from_secs(20) {
        let run = env.run(&["flush", "--db", &db, "-L", &url, "--batch", "100"]);
        assert_eq!(run.code, Some(0), "{journal_mode}: {run:#?}");
        assert!(!run.stderr.contains("locked"), "{run:#?}");
        runs += 1;
    }
    let inserted = producer.join().unwrap();
    env.run(&["flush", "--db", &db, "-L", &url]).expect_code(0);
    let all: BTreeSet<i64> = (1..=inserted as i64).collect();
    let got: BTreeSet<i64> = sub
        .wait_for(inserted, WAIT)
        .iter()
        .map(|m| m.id())
        .collect();
    assert_eq!(got, all, "{journal_mode}: a row was lost");
    assert_eq!(marked_ids(&env.db(), 64), all);
    util::accounting::assert_accounted(&env, &env.db(), 64);
    println!(
        "producer, {journal_mode}: {inserted} rows inserted during {runs} back-to-back runs, none lost, no lock failure"
    );
}

#[test]
fn a_producer_inserting_steadily_in_wal_mode_loses_no_row_and_sees_no_lock_failure() {
    producer_with_back_to_back_runs("wal");
}

#[test]
fn a_producer_inserting_steadily_in_rollback_journal_mode_loses_no_row_and_sees_no_lock_failure() {
    producer_with_back_to_back_runs("delete");
}

#[test]
fn overlapping_runs_started_together_let_exactly_one_publish() {
    let env = TestEnv::new("overlap");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    for round in 0..3 {
        let db = env.path(&format!("overlap{round}.db"));
        util::seed_at(&db, 30_000);
        let prefix = format!("o{round}");
        let (db_arg, url, topic) = (
            db.display().to_string(),
            broker.url(),
            format!("{prefix}/{{id}}"),
        );
        let args = ["flush", "--db", &db_arg, "-L", &url, "-t", &topic];
        let a = env
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let b = env
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (a, b) = (util::wait_output(a, WAIT), util::wait_output(b, WAIT));
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(codes, [Some(0), Some(75)], "{a:?} {b:?}");
        let loser = if a.status.code() == Some(75) { &a } else { &b };
        let stderr = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("another frameflush run holds"), "{stderr}");
        let all: BTreeSet<i64> = (1..=30_000).collect();
        let got = wait_received(&sub, &prefix, &all);
        assert_eq!(got.len(), 30_000);
        assert!(got.values().all(|&n| n == 1), "a row was published twice");
        util::accounting::assert_accounted(&env, &db, 64);
    }
}

/// What a scenario took, for the closing note (`--nocapture` shows it).
fn report(
    case: &str,
    runs: usize,
    delivered: usize,
    charged: usize,
    quarantined: usize,
    worst: Duration,
    bound: Duration,
) {
    println!(
        "FIGURES {case}: {runs} run(s), {delivered} delivered, {charged} charged, {quarantined} quarantined, worst run {:.2} s (bound {:.0} s)",
        worst.as_secs_f64(),
        bound.as_secs_f64()
    );
}

/// Waits (bounded) until every id in `want` was received, whatever the
/// topic; returns how often each id came.
fn wait_ids(sub: &Subscriber, want: &BTreeSet<i64>) -> std::collections::BTreeMap<i64, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = std::collections::BTreeMap::new();
        for m in sub.messages() {
            *got.entry(m.id()).or_insert(0) += 1;
        }
        if want.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ledger(env: &TestEnv, db: &str) -> Vec<serde_json::Value> {
    let run = env.run(&["failures", "--db", db, "--json"]);
    run.expect_code(0);
    run.json().as_array().unwrap().clone()
}

/// A mosquitto refusing sensors/node_03/# by ACL (closing the connection
/// after each refusal, max_queued_messages 0) and any packet over 2000
/// bytes.
fn strict_broker(env: &TestEnv) -> Broker {
    let acl = env.write("acl", "topic readwrite #\ntopic deny sensors/node_03/#\n");
    Broker::start_with(
        env,
        &format!(
            "allow_anonymous true\nacl_file {}\nmax_queued_messages 0\nmax_packet_size 2000\n",
            acl.display()
        ),
    )
}

#[test]
fn a_link_dropping_the_first_connection_right_after_the_mqtt_5_connect_leaves_the_protocol_at_5_and_marks_no_refused_row()
 {
    let env = TestEnv::new("drop-connect");
    let mut c = env.create_db();
    util::insert_frames(&mut c, 50, 0);
    let broker = strict_broker(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let db = env.db_arg();
    let mut worst = Duration::ZERO;
    let mut total = 300i64;
    for run_no in 1..=3 {
        // Each run's first connection is dropped after its CONNECT.
        let proxy = Proxy::start(broker.port, Fault::CloseFirstAfterConnect);
        let port = proxy.port.to_string();
        let run = env.run(&[
            "flush",
            "--db",
            &db,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--json",
            "-v",
            // What auto protects (MQTT 5's refusals): kept under the
            // suite's FRAMEFLUSH_TEST_PROTOCOL=311 run too.
            "-V",
            "auto",
        ]);
        worst = worst.max(run.elapsed);
        run.expect_code(77);
        assert_eq!(run.json()["protocol"], "5", "run {run_no}: {run:?}");
        assert!(run.stderr.contains("with MQTT 5"), "{}", run.stderr);
        let allowed: BTreeSet<i64> = (1..=total)
            .filter(|&id| util::frame_node(id) != 3)
            .collect();
        assert_eq!(
            marked_ids(&env.db(), 64),
            allowed,
            "run {run_no}: {}",
            run.stderr
        );
        assert_eq!(
            util::state(&env.db(), &format!("protocol:127.0.0.1:{port}"))
                .map(|s| s.starts_with("5 ")),
            Some(true)
        );
        util::insert_frames(&mut c, 5, 0);
        total += 30;
    }
    let refused: BTreeSet<i64> = (1..=total - 30)
        .filter(|&id| util::frame_node(id) == 3)
        .collect();
    let allowed: BTreeSet<i64> = (1..=total - 30)
        .filter(|id| !refused.contains(id))
        .collect();
    let got = wait_ids(&sub, &allowed);
    assert!(refused.iter().all(|id| !got.contains_key(id)));
    report(
        "first connection dropped after the MQTT 5 CONNECT, ACL on node_03",
        3,
        marked_ids(&env.db(), 64).len(),
        ledger(&env, &db).len(),
        0,
        worst,
        Duration::from_secs(56),
    );
}

#[test]
fn a_link_cut_at_random_offsets_with_refused_and_oversized_rows_loses_no_reading_over_15_runs() {
    let mut rng = Rng::new("a_link_cut_at_random_offsets_with_refused");
    let env = TestEnv::new("cut-refused");
    let mut c = env.create_db();
    util::insert_frames(&mut c, 100, 0);
    let big: BTreeSet<i64> = [100i64, 101, 350].into_iter().collect();
    for &id in &big {
        c.execute(
            "UPDATE sensorParser SET value = ?1 WHERE id = ?2",
            rusqlite::params!["9".repeat(3000), id],
        )
        .unwrap();
    }
    let broker = strict_broker(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let db = env.db_arg();
    let bad = |id: i64| util::frame_node(id) == 3 || big.contains(&id);
    let mut worst = Duration::ZERO;
    let mut hit = 0;
    for run_no in 0..15 {
        // Some cuts fall in the CONNECT (about 30 bytes), most among the
        // PUBLISHes: each connection is cut anew at that offset, and with
        // the broker closing after each refusal a connection carries a few
        // KB at most.
        let cut_at = if run_no % 4 == 0 {
            rng.range(1, 40)
        } else {
            rng.range(40, 5_000)
        } as usize;
        let proxy = Proxy::start(broker.port, Fault::CutAfter(cut_at));
        let port = proxy.port.to_string();
        let run = env.run(&[
            "flush",
            "--db",
            &db,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--ack-timeout",
            "2",
            "--connect-timeout",
            "2",
            "--json",
            // Refused rows stay unsent only where the broker can say so
            // (MQTT 5): auto, also under FRAMEFLUSH_TEST_PROTOCOL=311.
            "-V",
            "auto",
        ]);
        worst = worst.max(run.elapsed);
        // The cut ended the run (or the CONNECT).
        if matches!(run.code, Some(69 | 75)) {
            hit += 1;
        }
        assert!(
            [0, 65, 69, 75, 77].contains(&run.code.unwrap()),
            "seed {}: {run:?}",
            rng.seed
        );
        let marked = marked_ids(&env.db(), 64);
        assert!(
            marked.iter().all(|&id| !bad(id)),
            "seed {}, cut {cut_at}: bad rows marked: {:?}: {run:?}",
            rng.seed,
            marked.iter().filter(|&&id| bad(id)).collect::<Vec<_>>()
        );
        let got = wait_ids(&sub, &marked);
        assert!(
            marked.iter().all(|id| got.contains_key(id)),
            "seed {}: marked, not received",
            rng.seed
        );
        util::insert_frames(&mut c, 2, 0);
    }
    assert!(
        hit >= 4,
        "only {hit} of 15 cuts ended a run (seed {})",
        rng.seed
    );
    // The link heals: the rest of the healthy rows arrive.
    let url = broker.url();
    for _ in 0..3 {
        env.run(&[
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--ack-timeout",
            "2",
            "-V",
            "auto",
        ]);
    }
    let total = 600 + 15 * 12;
    let healthy: BTreeSet<i64> = (1..=total).filter(|&id| !bad(id)).collect();
    assert_eq!(marked_ids(&env.db(), 64), healthy, "seed {}", rng.seed);
    let got = wait_ids(&sub, &healthy);
    assert!(
        healthy.iter().all(|id| got.contains_key(id)),
        "seed {}: lost",
        rng.seed
    );
    assert!(got.keys().all(|&id| !bad(id)));
    let l = ledger(&env, &db);
    assert!(
        l.iter().all(|f| bad(f["row_id"].as_i64().unwrap())),
        "{l:?}"
    );
    report(
        "random cuts over 15 runs, ACL on node_03 and 3 oversized rows",
        18,
        healthy.len(),
        l.len(),
        l.iter().filter(|f| !f["quarantined_at"].is_null()).count(),
        worst,
        Duration::from_secs(56),
    );
}

#[test]
fn a_broker_that_takes_no_messages_charges_nobody_however_many_runs_and_everything_arrives_once_it_recovers()
 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use util::fake_mqtt::{FakeBroker, FakeConfig, Published, Reply};
    // Closing the connection on every PUBLISH for 4 runs; never
    // acknowledging (RabbitMQ under a memory alarm) for 10.
    for (case, refusal, runs) in [
        ("closes on every PUBLISH", Reply::Close, 4),
        ("never acknowledges", Reply::Silent, 10),
    ] {
        let env = TestEnv::new("takes-nothing");
        let mut c = env.create_db();
        util::insert_frames(&mut c, 10, 0);
        let healthy = Arc::new(AtomicBool::new(false));
        let h = healthy.clone();
        let fake = FakeBroker::start(FakeConfig {
            on_publish: Box::new(move |_: &Published| {
                if h.load(Ordering::SeqCst) {
                    Reply::Ack
                } else {
                    refusal.clone()
                }
            }),
            ..FakeConfig::default()
        });
        let (db, url) = (env.db_arg(), fake.url());
        let args = [
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--ack-timeout",
            "0.5",
            "--connect-timeout",
            "2",
            "--json",
        ];
        let mut worst = Duration::ZERO;
        // A producer adds a frame of six readings before every run: new
        // rows meet the same broker and are charged no more than the old.
        let mut total = 60;
        for run_no in 1..=runs {
            util::insert_frames(&mut c, 1, 0);
            total += 6;
            let run = env.run(&args);
            worst = worst.max(run.elapsed);
            run.expect_code(75)
                .expect_one_error_line("takes no messages");
            assert_eq!(run.json()["failed"], 0, "{case} run {run_no}: {run:?}");
            assert!(ledger(&env, &db).is_empty(), "{case} run {run_no}");
            assert!(marked_ids(&env.db(), 64).is_empty());
            // A bounded search: a few connections, not one per row.
            assert!(
                run.json()["reconnects"].as_u64().unwrap() <= 40,
                "{case}: {run:?}"
            );
        }
        healthy.store(true, Ordering::SeqCst);
        let run = env.run(&args);
        worst = worst.max(run.elapsed);
        run.expect_code(0);
        assert_eq!(marked_ids(&env.db(), 64).len(), total, "{case}: {run:?}");
        assert!(ledger(&env, &db).is_empty());
        assert_eq!(util::state(&env.db(), "suspects:64").as_deref(), Some(""));
        report(
            &format!("broker that {case}, {runs} runs then recovers"),
            runs + 1,
            total,
            0,
            0,
            worst,
            Duration::from_secs(50 + 1 + 1),
        );
    }
}

/// A run still publishing (slowed by --rate) when the link drops at `drop`,
/// after which the broker accepts TCP and never answers a CONNECT: the run
/// ends within `bound` (--max-time + --ack-timeout + 1 s, README), with
/// nothing marked that did not arrive.
fn time_bound_after_a_late_drop(name: &str, extra: &[&str], drop: Duration, bound: Duration) {
    let env = TestEnv::new(name);
    let mut c = env.create_db();
    util::insert_frames(&mut c, 2000, 0);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let proxy = Proxy::start(broker.port, Fault::CutThenMute(drop));
    let (db, port) = (env.db_arg(), proxy.port.to_string());
    let mut args = vec![
        "flush",
        "--db",
        &db,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--rate",
        "100",
    ];
    args.extend_from_slice(extra);
    let run = env.run(&args);
    run.expect_code(75);
    // The slack is for starting the process on a loaded machine.
    assert!(
        run.elapsed <= bound + Duration::from_millis(1500),
        "{name}: ran {:?} against a bound of {bound:?}: {run:?}",
        run.elapsed
    );
    assert!(run.elapsed >= drop, "{run:?}");
    let marked = marked_ids(&env.db(), 64);
    assert!(!marked.is_empty());
    let got = wait_ids(&sub, &marked);
    assert!(
        marked.iter().all(|id| got.contains_key(id)),
        "{name}: marked, not received"
    );
    report(
        &format!(
            "drop at {:?} then CONNECT never answered, {}",
            drop,
            if extra.is_empty() {
                "defaults".to_string()
            } else {
                extra.join(" ")
            }
        ),
        1,
        marked.len(),
        ledger(&env, &db).len(),
        0,
        run.elapsed,
        bound,
    );
}

#[test]
fn a_run_whose_broker_drops_it_and_then_never_answers_a_connect_ends_within_the_bound_for_a_small_max_time()
 {
    time_bound_after_a_late_drop(
        "late-drop-small",
        &["--max-time", "5", "--ack-timeout", "3"],
        Duration::from_secs(3),
        Duration::from_secs(5 + 3 + 1),
    );
}

#[test]
fn a_run_whose_broker_drops_it_late_and_then_never_answers_a_connect_ends_within_the_bound_with_the_defaults()
 {
    // The defaults: --max-time 50, --ack-timeout 5, --connect-timeout 10.
    time_bound_after_a_late_drop(
        "late-drop-defaults",
        &[],
        Duration::from_secs(44),
        Duration::from_secs(50 + 5 + 1),
    );
}
