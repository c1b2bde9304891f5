//! Marks committed beside the publishing loop: a run killed at any moment
//! on a slow disk loses nothing, marks nothing the broker did not take,
//! and sends again at most the window plus the cap on acknowledged rows
//! not yet committed (README, "Duplicates are bounded"). The disk is made
//! slow by an LD_PRELOAD shim (tests/util/slow_fsync.rs); the kill moments
//! are seeded and the seed printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::slow_fsync::SlowFsync;
use util::{
    Broker, Fault, Proxy, Rng, Subscriber, TestEnv, marked_ids, received_under, wait_received,
};

/// Acknowledged rows not yet committed as marked, at most: `MAX_UNMARKED`
/// in src/marker.rs, the number README's "Duplicates are bounded" states.
const UNMARKED_CAP: usize = 8000;

#[test]
fn killed_at_random_moments_on_a_slow_disk_a_run_loses_nothing_and_resends_at_most_the_window_plus_the_unmarked_cap()
 {
    let mut rng = Rng::new("killed_at_random_moments_on_a_slow_disk");
    let env = TestEnv::new("slow-kill");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let shim = SlowFsync::build(&env, Duration::from_millis(5));
    // More rows than the bound, by far: a cap that did not hold would show.
    let rows = 40_000;
    let inflight = 100;
    let all: BTreeSet<i64> = (1..=rows as i64).collect();
    let (mut killed_running, mut worst, mut total) = (0, 0, 0);
    let rounds = 8;
    for round in 0..rounds {
        let db = env.path(&format!("kill{round}.db"));
        let conn = util::seed_at(&db, rows);
        // Both journals: WAL commits with one fsync, a rollback journal
        // with several.
        let journal = if round % 2 == 0 { "wal" } else { "delete" };
        conn.query_row(&format!("PRAGMA journal_mode = {journal}"), [], |_| Ok(()))
            .unwrap();
        drop(conn);
        let prefix = format!("kill{round}");
        let (db_arg, url, topic, w) = (
            db.display().to_string(),
            broker.url(),
            format!("{prefix}/{{id}}"),
            inflight.to_string(),
        );
        let args = [
            "flush",
            "--db",
            &db_arg,
            "-L",
            &url,
            "-t",
            &topic,
            "--inflight",
            &w,
        ];
        let mut cmd = env.cmd(&args);
        shim.apply(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.range(30, 1000));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();

        // Nothing marked that the broker did not deliver.
        let marked = marked_ids(&db, 64);
        let got = wait_received(&sub, &prefix, &marked);
        let falsely: Vec<i64> = marked
            .iter()
            .copied()
            .filter(|id| !got.contains_key(id))
            .collect();
        assert!(
            falsely.is_empty(),
            "seed {}, round {round} ({journal}, killed after {delay:?}): {} row(s) marked but never received, first {:?}",
            rng.seed,
            falsely.len(),
            falsely.first()
        );

        // A rerun, on the same slow disk, delivers the rest.
        let mut cmd = env.cmd(&[&args[..], &["--max-time", "120"]].concat());
        shim.apply(&mut cmd);
        let rerun = util::run_cmd(cmd, Duration::from_secs(180));
        assert_eq!(
            rerun.code,
            Some(0),
            "seed {}, round {round}: the rerun failed: {rerun:#?}",
            rng.seed
        );
        let got = wait_received(&sub, &prefix, &all);
        let lost = all.iter().filter(|id| !got.contains_key(id)).count();
        assert_eq!(
            lost, 0,
            "seed {}, round {round} ({journal}): {lost} row(s) never delivered",
            rng.seed
        );
        assert_eq!(marked_ids(&db, 64), all, "round {round}: not all marked");
        // Late deliveries of the killed run's last PUBLISHes.
        std::thread::sleep(Duration::from_millis(100));
        let dups: usize = received_under(&sub, &prefix).values().map(|n| n - 1).sum();
        println!(
            "round {round} ({journal}): killed after {delay:?}, {} marked by then, {dups} duplicates",
            marked.len()
        );
        worst = worst.max(dups);
        total += dups;
        assert!(
            dups <= inflight + UNMARKED_CAP,
            "seed {}, round {round} ({journal}, killed after {delay:?}): {dups} duplicates, more than the window {inflight} + the cap {UNMARKED_CAP}",
            rng.seed
        );
    }
    println!(
        "slow disk (+{:?} per fsync, {} fsyncs slowed): {rounds} rounds, {killed_running} killed while running, duplicates worst {worst}, {total} in all, bound {}",
        shim.delay,
        shim.calls(),
        inflight + UNMARKED_CAP
    );
    assert!(
        shim.calls() > 0,
        "the shim slowed no fsync: was it preloaded?"
    );
    assert!(
        killed_running >= rounds / 2,
        "too few kills hit a running flush ({killed_running} of {rounds}, seed {})",
        rng.seed
    );
}

/// The end of a run on a slow disk, where the marking thread holds the last
/// rows for the run's last commit (src/marker.rs, `end_in_sight`): killed
/// there twice in a row, then its PUBACKs cut off there (a different fault),
/// then a clean run, with a producer adding rows before each. Nothing is
/// marked that the broker did not deliver, every acknowledged row of the run
/// the broker stopped answering is marked (held rows are not dropped with a
/// failing end), the duplicates stay under the bound, and the clean run
/// delivers everything.
#[test]
fn killed_twice_in_a_runs_tail_on_a_slow_disk_then_its_acks_cut_there_then_clean_with_rows_added_each_time_nothing_is_lost()
 {
    let mut rng = Rng::new("killed_twice_in_a_runs_tail");
    let env = TestEnv::new("slow-tail");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let shim = SlowFsync::build(&env, Duration::from_millis(5));
    let db = env.db();
    let mut conn = util::seed_at(&db, 6000);
    let prefix = "tail";
    let inflight = 100;
    let (mut total, mut dups_before) = (6000usize, 0usize);
    for (round, fault) in ["kill", "kill", "acks cut", "clean"].iter().enumerate() {
        if round > 0 {
            util::insert_rows(&mut conn, 3000, 0);
            total += 3000;
        }
        let all: BTreeSet<i64> = (1..=total as i64).collect();
        let marked_before = marked_ids(&db, 64);
        let backlog = total - marked_before.len();
        let proxy = (*fault == "acks cut")
            .then(|| Proxy::start(broker.port, Fault::SwallowPubAcksAfter(backlog - 40)));
        let url = format!(
            "mqtt://127.0.0.1:{}",
            proxy.as_ref().map_or(broker.port, |p| p.port)
        );
        let (topic, w) = (format!("{prefix}/{{id}}"), inflight.to_string());
        let args = [
            "flush",
            "--db",
            &env.db_arg(),
            "-L",
            &url,
            "-t",
            &topic,
            "--inflight",
            &w,
            "--ack-timeout",
            "1",
            "-v",
        ];
        let mut cmd = env.cmd(&args);
        shim.apply(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
            }
        });
        // The tail: the line of the chunk that completes the backlog.
        let last_chunk = format!("({backlog} so far,");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let in_tail = loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = line.contains("selected") && line.contains(&last_chunk);
                    seen.push(line);
                    if done {
                        break true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break false,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => break false,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        };
        assert!(
            in_tail,
            "round {round}: no line selecting the last of {backlog} rows: {seen:#?}"
        );
        if *fault == "kill" {
            // Within the run's last commit (four fsyncs of 5 ms and more).
            std::thread::sleep(Duration::from_millis(rng.range(0, 15)));
            assert!(
                child.try_wait().unwrap().is_none(),
                "seed {}, round {round}: the run ended before the kill in its tail",
                rng.seed
            );
            child.kill().unwrap(); // SIGKILL
        }
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                child.kill().unwrap();
                panic!("round {round}: the run did not end in 60 s: {seen:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        reader.join().unwrap();
        seen.extend(lines.try_iter());

        let marked = marked_ids(&db, 64);
        let got = wait_received(&sub, prefix, &marked);
        let falsely = marked.iter().filter(|id| !got.contains_key(id)).count();
        assert_eq!(
            falsely, 0,
            "seed {}, round {round} ({fault}): {falsely} row(s) marked but never received",
            rng.seed
        );
        match *fault {
            "acks cut" => {
                assert_ne!(status.code(), Some(0), "round {round}: {seen:#?}");
                let acked = proxy
                    .as_ref()
                    .unwrap()
                    .acks_relayed
                    .load(std::sync::atomic::Ordering::SeqCst);
                assert_eq!(
                    marked.len() - marked_before.len(),
                    acked,
                    "round {round}: {acked} PUBACKs relayed, but not as many rows marked: held rows dropped? {seen:#?}"
                );
            }
            "clean" => {
                assert_eq!(status.code(), Some(0), "round {round}: {seen:#?}");
                let got = wait_received(&sub, prefix, &all);
                let lost = all.iter().filter(|id| !got.contains_key(id)).count();
                assert_eq!(lost, 0, "round {round}: {lost} row(s) never delivered");
                assert_eq!(marked, all, "round {round}: not all marked");
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
        let dups: usize = received_under(&sub, prefix).values().map(|n| n - 1).sum();
        assert!(
            dups - dups_before <= inflight + UNMARKED_CAP,
            "seed {}, round {round} ({fault}): {} duplicates, more than the window {inflight} + the cap {UNMARKED_CAP}",
            rng.seed,
            dups - dups_before
        );
        dups_before = dups;
    }
    assert!(
        shim.calls() > 0,
        "the shim slowed no fsync: was it preloaded?"
    );
}

/// The run record (`frameflush_runs`) of mask 64: exit code and rows
/// marked, once finished.
fn last_run(db: &std::path::Path) -> (Option<i64>, i64, bool) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT exit_code, rows_marked, finished_at IS NOT NULL FROM frameflush_runs WHERE sync_mask = 64",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// On a slow disk every commit costs several fsyncs: a run records its end
/// in the transaction of its last marks, not in one of its own. A run that
/// delivers rows then commits as often as one that reaches no broker (its
/// start, its end), twice in a row and with rows added in between, and its
/// record still says how it ended and how many rows it marked.
#[test]
fn a_run_that_delivers_records_its_end_with_its_last_marks_and_commits_no_more_than_one_that_reaches_no_broker()
 {
    let env = TestEnv::new("end-with-marks");
    let broker = Broker::start(&env);
    let shim = SlowFsync::build(&env, Duration::ZERO);
    let db = env.db();
    let mut conn = util::seed_at(&db, 30);
    let fsyncs = |port: u16| {
        let before = shim.calls();
        let url = format!("mqtt://127.0.0.1:{port}");
        let mut cmd = env.cmd(&["flush", "--db", &env.db_arg(), "-L", &url]);
        shim.apply(&mut cmd);
        let run = util::run_cmd(cmd, Duration::from_secs(60));
        (run, shim.calls() - before)
    };
    // The first run makes frameflush's index and tables; the second's
    // start and end are the commits of a run that publishes nothing.
    let (first, _) = fsyncs(util::refused_port());
    assert_ne!(first.code, Some(0), "{first:#?}");
    let (down, commits_of_two) = fsyncs(util::refused_port());
    assert_ne!(down.code, Some(0), "{down:#?}");
    assert!(marked_ids(&db, 64).is_empty());
    assert!(
        commits_of_two > 0,
        "the shim saw no fsync: was it preloaded?"
    );
    assert_eq!(last_run(&db), (down.code.map(i64::from), 0, true));
    for (round, rows) in [(0, 30), (1, 25)] {
        if round == 1 {
            util::insert_rows(&mut conn, rows, 0);
        }
        let (ok, n) = fsyncs(broker.port);
        assert_eq!(ok.code, Some(0), "round {round}: {ok:#?}");
        assert_eq!(marked_ids(&db, 64).len(), if round == 0 { 30 } else { 55 });
        assert_eq!(
            n, commits_of_two,
            "round {round}: a delivering run made {n} fsyncs, one that reached no broker {commits_of_two}: the end has a commit of its own again?"
        );
        assert_eq!(last_run(&db), (Some(0), rows as i64, true), "round {round}");
    }
}

/// Rows that trickle out are marked about a second after the broker took
/// them, not held until enough pile up (README, "Duplicates are bounded":
/// "marked at least every second"): every row the subscriber got more than
/// 2.5 s before a look at the database is marked there. Under `--rate 20`
/// (the loop waits between messages), then twice in a row over a slow link
/// with `--inflight 2` (PUBACKs trickle in while another is awaited, the
/// loop never idle: the drain's own HAND_WAIT is what hands them over; with
/// it at 5 s this fails), each run killed in the middle, with rows added
/// before the next, and then run to the end: nothing is lost and nothing
/// marked that the broker did not deliver.
#[test]
fn rows_trickling_out_under_a_rate_are_marked_within_seconds_of_delivery_and_kills_there_lose_nothing()
 {
    let env = TestEnv::new("trickle");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let db = env.path("trickle.db");
    // More rows than three runs of 4.5 s send: every kill comes while rows
    // are left.
    let mut conn = util::seed_at(&db, 400);
    let (db_arg, url) = (db.display().to_string(), broker.url());
    let prefix = "trickle";
    let topic = format!("{prefix}/{{id}}");
    let args = ["flush", "--db", &db_arg, "-t", &topic];
    let mut total = 400;
    // Rows old enough to be checked, summed over the looks.
    let mut checked = 0;
    // Every PUBLISH held 80 ms on its way: with two in flight, about 25
    // rows a second.
    let slow = Proxy::start(broker.port, Fault::DelayUp(Duration::from_millis(80)));
    let slow_url = format!("mqtt://127.0.0.1:{}", slow.port);
    for round in 0..3 {
        let extra = if round == 0 {
            vec!["-L", &url, "--rate", "20"]
        } else {
            vec!["-L", &slow_url, "--inflight", "2"]
        };
        let mut child = env
            .cmd(&[&args[..], &extra].concat())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // When each row reached the subscriber, as seen by polls 20 ms apart.
        let mut seen_at: std::collections::BTreeMap<i64, Instant> = Default::default();
        let before = received_under(&sub, prefix);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(4500) {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            // Delivered by this run: received more often than before it.
            for (id, n) in received_under(&sub, prefix) {
                if n > before.get(&id).copied().unwrap_or(0) {
                    seen_at.entry(id).or_insert(now);
                }
            }
            let marked = marked_ids(&db, 64);
            let overdue: Vec<i64> = seen_at
                .iter()
                .filter(|(id, t)| {
                    now.duration_since(**t) > Duration::from_millis(2500) && !marked.contains(id)
                })
                .map(|(id, _)| *id)
                .collect();
            assert!(
                overdue.is_empty(),
                "round {round}, {:?} into the run: {} row(s) delivered more than 2.5 s ago are not marked, first {:?}",
                start.elapsed(),
                overdue.len(),
                overdue.first()
            );
            checked += seen_at
                .values()
                .filter(|t| now.duration_since(**t) > Duration::from_millis(2500))
                .count();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the run ended before it was killed ({total} rows)"
        );
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let marked = marked_ids(&db, 64);
        let got = wait_received(&sub, prefix, &marked);
        assert!(
            marked.iter().all(|id| got.contains_key(id)),
            "round {round}: a row marked that the broker did not deliver"
        );
        // The producer goes on between runs.
        util::insert_rows(&mut conn, 6, 0);
        total += 6;
    }
    assert!(checked > 0, "no row was ever old enough to check");
    let rerun = util::run_cmd(
        env.cmd(&[&args[..], &["-L", &url]].concat()),
        Duration::from_secs(60),
    );
    assert_eq!(rerun.code, Some(0), "{rerun:#?}");
    let all: BTreeSet<i64> = (1..=total as i64).collect();
    let got = wait_received(&sub, prefix, &all);
    assert!(
        all.iter().all(|id| got.contains_key(id)),
        "a row never delivered"
    );
    assert_eq!(marked_ids(&db, 64), all);
}
