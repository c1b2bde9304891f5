//! Databases in bad shape: random bytes, a truncated file, corrupt pages, a
//! table without `sync`, a directory that takes no journal, a full disk, a
//! lock held past the busy timeout, a directory instead of a file.
//!
//! The contract for each: exactly one `frameflush: error: ` line naming the
//! problem, the documented exit status (also in the `--json` summary, with
//! `marked` 0), nothing published to a real broker the run was pointed at,
//! and the database left as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use util::{Broker, Run, Subscriber, TestEnv, marked_ids};

const LIMIT: Duration = Duration::from_secs(60);
const MASK: i64 = 64;

/// One run of frameflush and the ids the subscriber received during it.
struct Attempt {
    run: Run,
    received: Vec<i64>,
}

/// Waits until the subscriber has received nothing new for 300 ms (at most
/// 10 s) and returns how many messages it holds.
fn settle(sub: &Subscriber) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = sub.count();
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let n = sub.count();
        if n != last {
            last = n;
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() >= Duration::from_millis(300) || Instant::now() > deadline {
            return n;
        }
    }
}

/// Runs `run` and collects what the subscriber received meanwhile (every
/// attempt settles after its run, so the count before is stable).
fn attempt(sub: &Subscriber, run: impl FnOnce() -> Run) -> Attempt {
    let before = sub.count();
    let run = run();
    settle(sub);
    let received = sub.ids()[before..].to_vec();
    Attempt { run, received }
}

fn flush_args(db: &Path, url: &str, json: bool) -> Vec<String> {
    let mut args = vec![
        "flush".to_string(),
        "--db".to_string(),
        db.display().to_string(),
        "-L".to_string(),
        url.to_string(),
    ];
    if json {
        args.push("--json".to_string());
    }
    args
}

fn run_flush(env: &TestEnv, db: &Path, url: &str, json: bool, extra: &[&str]) -> Run {
    let mut args = flush_args(db, url, json);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    util::run_cmd(env.cmd(&args), LIMIT)
}

/// Exactly one error line on stderr holding every needle, and nothing on
/// stdout but the summary (with `--json`).
#[track_caller]
fn expect_error(run: &Run, code: i32, needles: &[&str], json: bool) {
    run.expect_code(code);
    for n in needles {
        run.expect_one_error_line(n);
    }
    if json {
        assert_eq!(
            run.stdout.lines().count(),
            1,
            "one summary line on stdout: {run:#?}"
        );
        let j = run.json();
        assert_eq!(j["exit_code"], code, "summary's exit_code: {run:#?}");
        assert!(
            j["error"].is_string(),
            "summary's error is not null: {run:#?}"
        );
        assert_eq!(j["marked"], 0, "summary's marked: {run:#?}");
    } else {
        assert_eq!(run.stdout, "", "nothing on stdout: {run:#?}");
    }
}

#[track_caller]
fn expect_nothing_published(a: &Attempt) {
    assert!(
        a.received.is_empty(),
        "{} row(s) were published before the failure (ids {:?}…): {:#?}",
        a.received.len(),
        &a.received[..a.received.len().min(10)],
        a.run
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives a path its mode back when dropped, also when the test panics (so
/// the test directory can be removed).
struct RestoreMode(PathBuf, u32);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(self.1));
    }
}

/// A database at `env.path(name)` seeded with `rows` unsent rows, with
/// frameflush's index and tables (`frameflush init`) when `init`; returns
/// its bytes.
fn seeded_bytes(env: &TestEnv, name: &str, rows: usize, init: bool) -> Vec<u8> {
    let path = env.path(name);
    drop(util::seed_at(&path, rows));
    if init {
        let p = path.display().to_string();
        env.run(&["init", "--db", &p]).expect_code(0);
    }
    std::fs::read(&path).unwrap()
}

/// The page size in an SQLite header.
fn page_size(header: &[u8]) -> usize {
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => usize::from(n),
    }
}

/// The sync value of each row 1..=rows that can still be read, one lookup
/// per row, so that corrupt pages hide only their own rows; and how many
/// could not be read.
fn readable_sync_bits(db: &Path, rows: usize) -> (BTreeMap<i64, i64>, usize) {
    let mut out = BTreeMap::new();
    let Ok(c) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return (out, rows);
    };
    let Ok(mut st) = c.prepare("SELECT sync FROM sensorParser WHERE id = ?1") else {
        return (out, rows);
    };
    for id in 1..=rows as i64 {
        if let Ok(sync) = st.query_row([id], |r| r.get::<_, i64>(0)) {
            out.insert(id, sync);
        }
    }
    let unreadable = rows - out.len();
    (out, unreadable)
}

/// A database file in bad shape and what frameflush must say about it.
struct BadFile<'a> {
    /// File name in the test directory (`json-NAME` for the `--json` run).
    name: &'a str,
    bytes: &'a [u8],
    /// Unsent rows the file held before it was damaged.
    rows: usize,
    code: i32,
    needles: &'a [&'a str],
}

/// Runs flush on the bad file, once plain and once with `--json` (each on
/// its own copy of the bytes), and checks the contract, the most important
/// part first: nothing marked that was not delivered; the exit status and
/// the one line; nothing published; the file unchanged.
fn expect_bad_file_refused(env: &TestEnv, broker: &Broker, sub: &Subscriber, bad: &BadFile) {
    let url = broker.url();
    let mut tries = Vec::new();
    for json in [false, true] {
        let path = env.path(&format!("{}{}", if json { "json-" } else { "" }, bad.name));
        std::fs::write(&path, bad.bytes).unwrap();
        let a = attempt(sub, || run_flush(env, &path, &url, json, &[]));
        let after = std::fs::read(&path).unwrap();
        tries.push((json, path, a, after));
    }
    let mut published = Vec::new();
    for (json, path, a, _) in &tries {
        let (syncs, unreadable) = readable_sync_bits(path, bad.rows);
        let marked: BTreeSet<i64> = syncs
            .iter()
            .filter(|&(_, &s)| s & MASK != 0)
            .map(|(&id, _)| id)
            .collect();
        let received: BTreeSet<i64> = a.received.iter().copied().collect();
        let undelivered: Vec<i64> = marked.difference(&received).copied().collect();
        assert!(
            undelivered.is_empty(),
            "{}: {} row(s) marked sent that the broker never delivered (ids {:?}…): {:#?}",
            path.display(),
            undelivered.len(),
            &undelivered[..undelivered.len().min(10)],
            a.run
        );
        a.run.expect_code(bad.code);
        for n in bad.needles {
            a.run.expect_one_error_line(n);
        }
        if !a.received.is_empty() {
            let ids = |v: &BTreeSet<i64>| {
                format!(
                    "{}..={}",
                    v.first().copied().unwrap_or(0),
                    v.last().copied().unwrap_or(0)
                )
            };
            published.push(format!(
                "{} run: published {} row(s) (ids {}), {} of them left unmarked; {} row(s) marked \
                 (ids {}); {unreadable} of {} row(s) unreadable afterwards; stderr: {:?}; stdout: {:?}",
                if *json { "--json" } else { "plain" },
                a.received.len(),
                ids(&received),
                received.difference(&marked).count(),
                marked.len(),
                ids(&marked),
                bad.rows,
                a.run.stderr,
                a.run.stdout,
            ));
        }
    }
    assert!(
        published.is_empty(),
        "{}: nothing may be published from a database that fails:\n{}",
        bad.name,
        published.join("\n")
    );
    for (json, path, a, after) in &tries {
        expect_error(&a.run, bad.code, bad.needles, *json);
        assert!(
            after.as_slice() == bad.bytes,
            "{}: the file changed ({} bytes before, {} after)",
            path.display(),
            bad.bytes.len(),
            after.len()
        );
    }
}

#[test]
fn a_file_of_random_bytes_gives_74_not_an_sqlite_database_and_publishes_nothing() {
    let env = TestEnv::new("random");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let mut rng = util::Rng::new(
        "a_file_of_random_bytes_gives_74_not_an_sqlite_database_and_publishes_nothing",
    );
    let bytes: Vec<u8> = (0..8192)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    expect_bad_file_refused(
        &env,
        &broker,
        &sub,
        &BadFile {
            name: "random.db",
            bytes: &bytes,
            rows: 0,
            code: 74,
            needles: &["not an SQLite database"],
        },
    );
}

#[test]
fn a_database_truncated_to_half_or_into_its_header_gives_74_and_publishes_nothing() {
    let env = TestEnv::new("truncated");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let rows = 20_000;
    // A Meshlium export as it comes, and one that frameflush already ran on
    // (its index is there: the selection would not need the whole table).
    let export = seeded_bytes(&env, "export-src.db", rows, false);
    let indexed = seeded_bytes(&env, "indexed-src.db", rows, true);
    let cases: [(&str, &[u8], &[&str]); 5] = [
        ("half.db", &export[..export.len() / 2], &["is corrupt"]),
        (
            "indexed-half.db",
            &indexed[..indexed.len() / 2],
            &["is corrupt"],
        ),
        // The header says how many pages there are: past the 100 bytes of
        // the header, SQLite sees the file is short.
        ("header.db", &export[..100], &["is corrupt"]),
        // Not even the 16-byte magic string is whole.
        ("magic.db", &export[..10], &["not an SQLite database"]),
        // A page and a half: the schema page is whole, the rest is gone.
        (
            "page.db",
            &export[..page_size(&export) * 3 / 2],
            &["is corrupt"],
        ),
    ];
    for (name, bytes, needles) in cases {
        expect_bad_file_refused(
            &env,
            &broker,
            &sub,
            &BadFile {
                name,
                bytes,
                rows,
                code: 74,
                needles,
            },
        );
    }
}

#[test]
fn a_database_truncated_to_nothing_is_an_empty_database_without_the_table_and_gives_66() {
    let env = TestEnv::new("empty-file");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    expect_bad_file_refused(
        &env,
        &broker,
        &sub,
        &BadFile {
            name: "zero.db",
            bytes: &[],
            rows: 0,
            code: 66,
            needles: &["no sensorParser table"],
        },
    );
}

/// The seeded database with its middle third of pages overwritten with
/// random bytes; the first page (the 100-byte header and the schema) is
/// intact.
fn with_random_middle_pages(mut bytes: Vec<u8>, rng: &mut util::Rng) -> Vec<u8> {
    let page = page_size(&bytes);
    let pages = bytes.len() / page;
    assert!(pages >= 30, "{pages} pages is too small a database");
    for b in &mut bytes[(pages / 3) * page..(2 * pages / 3) * page] {
        *b = rng.next_u64() as u8;
    }
    bytes
}

#[test]
fn a_database_with_random_middle_pages_gives_74_corrupt_and_publishes_nothing() {
    let env = TestEnv::new("corrupt-export");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let mut rng = util::Rng::new(
        "a_database_with_random_middle_pages_gives_74_corrupt_and_publishes_nothing",
    );
    let rows = 20_000;
    // A Meshlium export: frameflush's first run builds its index over the
    // whole table and meets the damage there.
    let bytes = with_random_middle_pages(seeded_bytes(&env, "src.db", rows, false), &mut rng);
    expect_bad_file_refused(
        &env,
        &broker,
        &sub,
        &BadFile {
            name: "corrupt.db",
            bytes: &bytes,
            rows,
            code: 74,
            needles: &["is corrupt", "malformed"],
        },
    );
}

/// Damage inside the table can only be found when its pages are read: with
/// frameflush's index in place, the rows before the damage are selected and
/// published first (reading the whole file before every run would cost a
/// gateway's flash far more). The promise still holds: the run stops
/// publishing at the damage, waits for what is in flight, marks exactly
/// what the broker acknowledged, and exits 74; the next run fails at once.
#[test]
fn damage_in_the_middle_of_an_indexed_table_stops_the_run_with_74_and_marks_exactly_what_was_delivered()
 {
    let env = TestEnv::new("corrupt-indexed");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let mut rng = util::Rng::new("damage_in_the_middle_of_an_indexed_table");
    let rows = 20_000;
    // A database frameflush already ran on: its index is at the end of the
    // file, intact; the damaged pages hold rows in the middle of the table.
    let bytes = with_random_middle_pages(seeded_bytes(&env, "src.db", rows, true), &mut rng);
    let path = env.path("corrupt.db");
    std::fs::write(&path, &bytes).unwrap();
    let url = broker.url();
    let a = attempt(&sub, || run_flush(&env, &path, &url, true, &[]));
    a.run
        .expect_code(74)
        .expect_one_error_line("is corrupt: database disk image is malformed");
    let j = a.run.json();
    assert_eq!(j["exit_code"], 74);
    assert_eq!(
        j["published"], j["acknowledged"],
        "everything in flight was awaited: {j}"
    );
    assert_eq!(
        j["acknowledged"], j["marked"],
        "everything acknowledged was marked: {j}"
    );
    let (syncs, _) = readable_sync_bits(&path, rows);
    let marked: BTreeSet<i64> = syncs
        .iter()
        .filter(|&(_, &s)| s & MASK != 0)
        .map(|(&id, _)| id)
        .collect();
    let received: BTreeSet<i64> = a.received.iter().copied().collect();
    assert_eq!(marked.len() as u64, j["marked"].as_u64().unwrap());
    assert!(
        marked.is_subset(&received),
        "a row was marked that the broker never delivered"
    );
    assert_eq!(
        received, marked,
        "a delivered row was left unsent: it would be sent again"
    );
    // The next run meets the damage in its first chunk: nothing published.
    let again = attempt(&sub, || run_flush(&env, &path, &url, false, &[]));
    expect_error(&again.run, 74, &["is corrupt"], false);
    assert!(
        again.received.is_empty(),
        "the second run published {} row(s)",
        again.received.len()
    );
}

#[test]
fn a_table_without_the_sync_column_gives_66_naming_it() {
    let env = TestEnv::new("nosync");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let src = env.path("src.db");
    let c = Connection::open(&src).unwrap();
    c.execute_batch(
        "CREATE TABLE sensorParser (
           id INTEGER PRIMARY KEY AUTOINCREMENT, id_wasp TEXT NOT NULL, id_secret TEXT,
           frame_type INTEGER, frame_number INTEGER, sensor TEXT NOT NULL, value TEXT,
           timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, raw TEXT,
           parser_type INTEGER NOT NULL DEFAULT 0);
         INSERT INTO sensorParser (id_wasp, sensor, value) VALUES
           ('node_00', 'TC', '21.5'), ('node_01', 'HUM', '40'), ('node_02', 'BAT', '88');",
    )
    .unwrap();
    drop(c);
    let bytes = std::fs::read(&src).unwrap();
    expect_bad_file_refused(
        &env,
        &broker,
        &sub,
        &BadFile {
            name: "nosync.db",
            bytes: &bytes,
            rows: 0,
            code: 66,
            needles: &["lacks the column(s) sync"],
        },
    );
    // Exactly `sync` is named: the line ends with it.
    let run = env.run(&["flush", "--db", "nosync.db", "-L", &broker.url()]);
    assert!(
        run.stderr.trim_end().ends_with("lacks the column(s) sync"),
        "{run:#?}"
    );
}

#[test]
fn a_database_path_that_is_a_directory_gives_74_and_publishes_nothing() {
    let env = TestEnv::new("isdir");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let url = broker.url();
    for json in [false, true] {
        let dir = env.path(if json {
            "json-sensors.db"
        } else {
            "sensors.db"
        });
        std::fs::create_dir(&dir).unwrap();
        let a = attempt(&sub, || run_flush(&env, &dir, &url, json, &[]));
        expect_error(&a.run, 74, &["is not a regular file"], json);
        expect_nothing_published(&a);
        assert!(dir.is_dir(), "still a directory");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing was created inside it"
        );
    }
}

#[test]
fn a_database_whose_directory_is_not_writable_gives_74_at_the_write_probe_and_publishes_nothing() {
    let env = TestEnv::new("rodir");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let dir = env.path("ro");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("sensors.db");
    drop(util::seed_at(&db, 50));
    let db_arg = db.display().to_string();
    // frameflush's index and tables are there: the first write a flush
    // tries is its write probe.
    env.run(&["init", "--db", &db_arg]).expect_code(0);
    let lock = dir.join("sensors.db.frameflush-64.lock");
    std::fs::write(&lock, "").unwrap();
    chmod(&lock, 0o666);
    chmod(&db, 0o666);
    let before = std::fs::read(&db).unwrap();
    let _restore = RestoreMode(dir.clone(), 0o755);
    chmod(&dir, 0o555);
    let url = broker.url();
    // Unprivileged (as root: as nobody), who can write the file and the lock
    // file but not create a journal in the directory.
    let run = |json: bool| util::run_cmd(env.cmd_unprivileged(&flush_args(&db, &url, json)), LIMIT);
    let listing = || -> BTreeSet<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let files_before = listing();
    for json in [false, true] {
        let a = attempt(&sub, || run(json));
        expect_nothing_published(&a);
        expect_error(
            &a.run,
            74,
            &["cannot write to database", "read-only", "directory"],
            json,
        );
        assert!(
            std::fs::read(&db).unwrap() == before,
            "the database file changed"
        );
        assert_eq!(
            listing(),
            files_before,
            "no journal or other file left behind"
        );
    }
    assert!(marked_ids(&db, MASK).is_empty());
}

/// The shell script of the full-disk test, run in a private mount
/// namespace: `$1` the test directory, `$2` the binary, the rest its
/// arguments. It mounts a 512 KiB tmpfs on `$1/mnt`, copies the seeded
/// database and its lock file in, fills the rest, runs the binary (its
/// output is the script's), copies the database back out as
/// `$1/after.db`, and exits with the binary's status. `$1/setup-ok` says
/// the setup worked.
const FULL_DISK_SCRIPT: &str = r#"
set -u
dir=$1; ff=$2; shift 2
mnt=$dir/mnt
fail() { echo "setup: $*" >&2; exit 1; }
mount -t tmpfs -o size=512k frameflush-test "$mnt" || fail "cannot mount a tmpfs on $mnt"
cp "$dir/seed.db" "$mnt/sensors.db" || fail "cannot copy the database into the tmpfs"
cp "$dir/seed.db.frameflush-64.lock" "$mnt/sensors.db.frameflush-64.lock" || fail "cannot copy the lock file"
# dd stops when the tmpfs is full: that is the point.
dd if=/dev/zero of="$mnt/filler" bs=1k >/dev/null 2>&1
if printf x >"$mnt/probe" 2>/dev/null; then fail "the tmpfs is not full after filling it"; fi
rm -f "$mnt/probe"
: >"$dir/setup-ok"
env -i "$ff" "$@"
rc=$?
cp "$mnt/sensors.db" "$dir/after.db" || fail "cannot copy the database back out"
exit $rc
"#;

#[test]
fn a_full_disk_gives_74_the_disk_is_full_publishes_nothing_and_every_row_stays_unsent() {
    let env = TestEnv::new("diskfull");
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let rows = 300;
    let seed = seeded_bytes(&env, "seed.db", rows, true);
    std::fs::write(env.path("seed.db.frameflush-64.lock"), "").unwrap();
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let url = broker.url();
    let unshare_flags = if util::euid() == 0 { "-m" } else { "-rm" };
    for json in [false, true] {
        let ok = env.path("setup-ok");
        let after = env.path("after.db");
        let _ = std::fs::remove_file(&ok);
        let _ = std::fs::remove_file(&after);
        let mut cmd = Command::new("unshare");
        cmd.args([unshare_flags, "--propagation", "private", "/bin/sh", "-c"])
            .arg(FULL_DISK_SCRIPT)
            .arg("sh")
            .arg(&env.dir)
            .arg(util::BIN)
            .args(flush_args(&mnt.join("sensors.db"), &url, json))
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(&env.dir);
        let a = attempt(&sub, || util::run_cmd(cmd, LIMIT));
        assert!(
            ok.exists(),
            "this test needs a private mount namespace (`unshare {unshare_flags}`) and a tmpfs \
             mounted in it, and could not have them: {:#?}",
            a.run
        );
        expect_nothing_published(&a);
        expect_error(
            &a.run,
            74,
            &["cannot write to database", "disk is full"],
            json,
        );
        let after_bytes = std::fs::read(&after).unwrap();
        assert!(after_bytes == seed, "the database changed on the full disk");
        let syncs = util::sync_bits(&after);
        assert_eq!(syncs.len(), rows);
        assert!(
            syncs.iter().all(|&(_, s)| s & MASK == 0),
            "every row is still unsent"
        );
    }
    assert!(
        !mnt.join("sensors.db").exists(),
        "the tmpfs went away with its namespace"
    );
}

/// Runs flush while `hold` (a statement batch on a connection of the
/// test's) keeps the database locked: 75 with one line within seconds,
/// nothing published, the file unchanged. Then the lock goes and a rerun
/// delivers and marks every row.
fn locked_then_released(env: &TestEnv, rows: usize, hold: &str) {
    let broker = Broker::start(env);
    let sub = Subscriber::connect(broker.port, "#");
    let db = env.db();
    let url = broker.url();
    let before = std::fs::read(&db).unwrap();
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch(hold).unwrap();
    for json in [false, true] {
        let a = attempt(&sub, || {
            run_flush(env, &db, &url, json, &["--busy-timeout", "0.5"])
        });
        expect_nothing_published(&a);
        expect_error(&a.run, 75, &["is locked by another process"], json);
        assert!(
            a.run.elapsed >= Duration::from_millis(450),
            "the run waited the busy timeout: {:?}",
            a.run.elapsed
        );
        assert!(
            a.run.elapsed < Duration::from_secs(5),
            "the run gave up within seconds: {:?}",
            a.run.elapsed
        );
    }
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the database changed while it was locked"
    );

    let again = run_flush(env, &db, &url, false, &[]);
    again.expect_code(0);
    assert_eq!((again.stdout.as_str(), again.stderr.as_str()), ("", ""));
    let received: BTreeSet<i64> = sub.wait_for(rows, LIMIT).iter().map(|m| m.id()).collect();
    let all: BTreeSet<i64> = (1..=rows as i64).collect();
    assert_eq!(received, all, "every row delivered after the lock went");
    assert_eq!(marked_ids(&db, MASK), all, "every row marked");
}

#[test]
fn a_database_held_exclusively_past_the_busy_timeout_gives_75_within_seconds_and_a_rerun_delivers_everything()
 {
    let env = TestEnv::new("exclusive");
    env.seed(200);
    // A write inside the transaction: the lock is really exclusive, no
    // reader gets in.
    locked_then_released(
        &env,
        200,
        "BEGIN EXCLUSIVE; UPDATE sensorParser SET raw = raw WHERE id = 1;",
    );
}

#[test]
fn a_database_whose_write_lock_is_held_gives_75_before_anything_is_published_and_a_rerun_delivers_everything()
 {
    // frameflush can read (a RESERVED lock lets readers in) but not write:
    // on a database it ran on before, the write probe is what fails; on a
    // Meshlium export, the creation of its index.
    for init in [true, false] {
        let env = TestEnv::new(if init {
            "reserved-init"
        } else {
            "reserved-export"
        });
        env.seed(200);
        if init {
            let db = env.db_arg();
            env.run(&["init", "--db", &db]).expect_code(0);
        }
        locked_then_released(
            &env,
            200,
            "BEGIN IMMEDIATE; UPDATE sensorParser SET raw = raw WHERE id = 1;",
        );
    }
}

/// `(id, sync)` of every row, NULL as `None`.
fn nullable_syncs(db: &Path) -> Vec<(i64, Option<i64>)> {
    let c = Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT id, sync FROM sensorParser ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// A table whose `sync` allows NULL (an export, a hand-made table), 300
/// rows of which every tenth has sync NULL, another destination's bit on
/// some.
fn nullable_table(env: &TestEnv) -> Connection {
    let c = Connection::open(env.db()).unwrap();
    c.execute_batch(
        &util::SCHEMA.replace("sync         INTEGER NOT NULL DEFAULT 0", "sync INTEGER"),
    )
    .unwrap();
    let mut c = c;
    util::insert_rows(&mut c, 300, 0);
    c.execute_batch(
        "UPDATE sensorParser SET sync = NULL WHERE id % 10 = 0;
         UPDATE sensorParser SET sync = 1 WHERE id % 7 = 0 AND sync IS NOT NULL;",
    )
    .unwrap();
    c
}

#[test]
fn rows_whose_sync_is_null_are_unsent_all_300_are_sent_marked_and_counted_through_the_index() {
    let env = TestEnv::new("null-sync");
    let _c = nullable_table(&env);
    let nulls = nullable_syncs(&env.db())
        .iter()
        .filter(|(_, s)| s.is_none())
        .count();
    assert_eq!(nulls, 30);
    let db = env.db_arg();
    // Before any run: all 300 waiting, 30 of them NULL.
    let j = env.run(&["status", "--db", &db, "--json"]).json();
    let d = &j["destinations"][0];
    assert_eq!(
        (d["waiting"].as_u64(), d["null_sync"].as_u64()),
        (Some(300), Some(30)),
        "{j}"
    );
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let url = broker.url();
    // check says how many rows have sync NULL, and marks nothing.
    let check = env.run(&["check", "--db", &db, "-L", &url]);
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.contains("backlog: 300 unsent row(s)")
                && l.contains("30 row(s) with sync NULL")),
        "{}",
        check.stdout
    );
    let _ = sub.wait_for(usize::MAX, Duration::from_millis(300));
    let before_flush = sub.count();
    let run = run_flush(&env, &env.db(), &url, true, &["-d"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("USING INDEX frameflush_unsent_64"),
        "{}",
        run.stderr
    );
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
    let got = sub.wait_for(before_flush + 300, LIMIT);
    let ids: BTreeSet<i64> = got[before_flush..].iter().map(util::Received::id).collect();
    assert_eq!(
        ids,
        (1..=300).collect::<BTreeSet<i64>>(),
        "every row sent once"
    );
    // NULL became the mask; the other destination's bit kept.
    for (id, sync) in nullable_syncs(&env.db()) {
        let want = if id % 10 == 0 {
            MASK
        } else if id % 7 == 0 {
            MASK | 1
        } else {
            MASK
        };
        assert_eq!(sync, Some(want), "row {id}");
    }
    let a = util::accounting::assert_accounted(&env, &env.db(), MASK);
    assert_eq!((a.sent, a.total), (300, 300));
    // For the other destination, the NULL rows are unsent too.
    let other = util::accounting::assert_accounted(&env, &env.db(), 1);
    assert_eq!(other.waiting, 300 - 300 / 7 + 300 / 70, "{other:?}");
    // The idle run after reads nothing and connects nowhere.
    let dead = format!("mqtt://127.0.0.1:{}", util::refused_port());
    run_flush(&env, &env.db(), &dead, false, &[]).expect_code(0);
}

#[test]
fn an_index_from_before_null_was_unsent_is_replaced_by_the_next_run_and_the_planner_uses_the_new_one()
 {
    let env = TestEnv::new("old-index");
    let c = nullable_table(&env);
    // The index as versions before this one made it.
    c.execute_batch("CREATE INDEX frameflush_unsent_64 ON sensorParser(id) WHERE (sync & 64) = 0")
        .unwrap();
    drop(c);
    let db = env.db_arg();
    // Read-only commands work on it (without the index) and count right.
    let a = util::accounting::assert_accounted(&env, &env.db(), MASK);
    assert_eq!(a.waiting, 300);
    let broker = Broker::start(&env);
    let url = broker.url();
    let check = env.run(&["check", "--db", &db, "-L", &url]);
    assert!(
        check.stdout.lines().any(|l| l.starts_with("warn ")
            && l.contains("index: frameflush_unsent_64 in its current form")
            && l.contains("a run replaces it")),
        "{}",
        check.stdout
    );
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let run = run_flush(&env, &env.db(), &url, false, &["-v", "-d"]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("replaced the index frameflush_unsent_64")
            && run.stderr.contains("sync is NULL"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("USING INDEX frameflush_unsent_64"),
        "{}",
        run.stderr
    );
    assert_eq!(sub.wait_for(300, LIMIT).len(), 300);
    let c = Connection::open(env.db()).unwrap();
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'frameflush_unsent_64'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("coalesce(sync, 0)"), "{sql}");
    let indexes: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'frameflush%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 1, "the old index is gone, one in its place");
    // The planner uses it for the count status makes, too.
    let plan: Vec<String> = c
        .prepare("EXPLAIN QUERY PLAN SELECT count(*) FROM sensorParser WHERE (coalesce(sync, 0) & 64) = 0")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(plan.join(";").contains("frameflush_unsent_64"), "{plan:?}");
    drop(c);
    let a = util::accounting::assert_accounted(&env, &env.db(), MASK);
    assert_eq!(a.sent, 300);
    // A second run has nothing to replace and nothing to say about it.
    let dead = format!("mqtt://127.0.0.1:{}", util::refused_port());
    let idle = run_flush(&env, &env.db(), &dead, false, &["-v"]);
    idle.expect_code(0);
    assert!(!idle.stderr.contains("replaced"), "{}", idle.stderr);
}

#[test]
fn a_table_dropped_and_made_again_with_ids_from_1_has_every_new_row_sent_by_the_next_run() {
    // SQLite keeps no high-water mark: every run finds its rows through the
    // partial index from id 0, so ids that start again are found at once.
    // The index goes with the dropped table; the run that makes it again
    // forgets the failure records, which named rows that are gone.
    let env = TestEnv::new("sqlite-restart");
    let c = env.seed(500);
    // Row 250 cannot become a message (a wildcard in its topic):
    // quarantined.
    c.execute_batch("UPDATE sensorParser SET sensor = 'T#' WHERE id = 250")
        .unwrap();
    drop(c);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "sensors/#");
    let url = broker.url();
    let quarantine = ["--max-attempts", "1", "-v"];
    run_flush(&env, &env.db(), &url, false, &quarantine).expect_code(65);
    assert_eq!(sub.wait_for(499, LIMIT).len(), 499);
    let a = util::accounting::assert_accounted(&env, &env.db(), MASK);
    assert_eq!((a.sent, a.quarantined), (499, 1));
    let mut c = Connection::open(env.db()).unwrap();
    c.execute_batch("DROP TABLE sensorParser").unwrap();
    c.execute_batch(util::SCHEMA).unwrap();
    util::insert_rows(&mut c, 800, 0);
    drop(c);
    let run = run_flush(&env, &env.db(), &url, false, &quarantine);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("forgot the 1 failure record(s) of sync mask 64"),
        "{}",
        run.stderr
    );
    let got = sub.wait_for(1299, LIMIT);
    let ids: Vec<i64> = got[499..].iter().map(util::Received::id).collect();
    assert_eq!(
        ids,
        (1..=800).collect::<Vec<i64>>(),
        "once each, in id order (the new row 250 too)"
    );
    let a = util::accounting::assert_accounted(&env, &env.db(), MASK);
    assert_eq!((a.sent, a.quarantined, a.total), (800, 0, 800));
}
