//! Marks committed beside the publishing loop: a run killed at any moment
//! on a slow disk loses nothing, marks nothing the broker did not take,
//! and sends again at most the window plus the cap on acknowledged rows
//! not yet committed (README, "Duplicates are bounded"). The disk is made
//! slow by an LD_PRELOAD shim (tests/util/slow_fsync.rs); the kill moments
//! are seeded and the seed printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use util::slow_fsync::SlowFsync;
use util::{Broker, Rng, Subscriber, TestEnv, marked_ids, received_under, wait_received};

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
