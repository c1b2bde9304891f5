#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Input fuzzing of what users type: flags, the JSON config file, topic
//! templates and the environment, run through the real binary with a
//! cleared environment.
//!
//! The contract for a bad input: never a panic (exit 101, a signal or
//! "panicked" on stderr), exactly one line on stderr starting with
//! `frameflush: error: `, nothing on stdout unless --json was given (then at
//! most one JSON summary carrying the same status), no secret ever printed,
//! and exit 64 for a bad value on the command line or 78 for one in the
//! config file or the environment.
//!
//! Every run works on `sensors.db` whose rows are all sent for every mask
//! (`sync = -1`), so a value that happens to be valid ends with exit 0 at
//! once and without any network. Random cases are seeded ([`util::Rng`]:
//! replay with `FRAMEFLUSH_TEST_SEED`) and bounded in count and time.
//! Failures are collected and reported together, each with the command line
//! (and config text or environment) that reproduces it in the test's
//! directory.

mod util;

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use util::{Rng, Run, TestEnv};

/// A password that must never appear on stdout or stderr.
const SECRET: &str = "s3cr3t-Zq7xK9";
/// Random cases per randomized test.
const RANDOM_CASES: usize = 200;
/// Templates of the property test.
const TEMPLATE_CASES: usize = 500;
/// A randomized test stops generating cases after this long.
const TIME_BUDGET: Duration = Duration::from_secs(40);
/// One run of the binary may take this long before it counts as a hang.
const RUN_LIMIT: Duration = Duration::from_secs(20);
/// The config file a case writes, relative to the test directory.
const CONFIG: &str = "fuzz.json";
/// The placeholders of a topic template, as documented.
const COLUMNS: [&str; 8] = [
    "id",
    "id_wasp",
    "id_secret",
    "frame_type",
    "frame_number",
    "sensor",
    "value",
    "timestamp",
];

// ---------------------------------------------------------------------------
// The harness: cases, the contract, failures with their reproduction.
// ---------------------------------------------------------------------------

/// One run of `frameflush flush …` (or `check …`) and what it must end
/// with.
struct Case {
    label: String,
    /// The command: `flush`, or `check`, which takes the same options.
    sub: &'static str,
    /// The arguments after the command.
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    /// Written to `fuzz.json` before the run.
    config: Option<Vec<u8>>,
    expect: i32,
    /// --json was given (flag or config file): one JSON line may appear.
    json: bool,
    /// Texts that must appear neither on stdout nor on stderr.
    secrets: Vec<String>,
    /// For exit 78: the config key the error line must name (or serde's
    /// message with its line and column).
    key: Option<String>,
    /// The run may print on stdout (a --dry-run that exits 0).
    stdout_ok: bool,
}

impl Case {
    fn new(label: impl Into<String>, args: Vec<OsString>, expect: i32) -> Case {
        let json = args.iter().any(|a| a == "--json");
        let secrets = if args.iter().any(|a| {
            a.as_bytes()
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes())
        }) {
            vec![SECRET.to_string()]
        } else {
            Vec::new()
        };
        Case {
            label: label.into(),
            sub: "flush",
            args,
            env: Vec::new(),
            config: None,
            expect,
            json,
            secrets,
            key: None,
            stdout_ok: false,
        }
    }

    fn config(mut self, text: impl Into<Vec<u8>>) -> Case {
        let text = text.into();
        if contains(&text, SECRET.as_bytes()) && !self.secrets.iter().any(|s| s == SECRET) {
            self.secrets.push(SECRET.to_string());
        }
        self.config = Some(text);
        self
    }

    fn env(mut self, key: &'static str, value: impl Into<OsString>) -> Case {
        let value = value.into();
        if contains(value.as_bytes(), SECRET.as_bytes())
            && !self.secrets.iter().any(|s| s == SECRET)
        {
            self.secrets.push(SECRET.to_string());
        }
        self.env.push((key, value));
        self
    }

    fn key(mut self, key: &str) -> Case {
        self.key = Some(key.to_string());
        self
    }

    /// The same case as `frameflush check …`.
    fn under_check(mut self) -> Case {
        self.sub = "check";
        self
    }

    fn secret(mut self, s: &str) -> Case {
        self.secrets.push(s.to_string());
        self
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `--db sensors.db` followed by `rest`.
fn with_db(rest: &[&str]) -> Vec<OsString> {
    let mut v = os(&["--db", "sensors.db"]);
    v.extend(os(rest));
    v
}

/// A test directory with `sensors.db` (rows all sent) and a failure list.
struct Fuzz {
    env: TestEnv,
    name: &'static str,
    seed: Option<u64>,
    cases: usize,
    failures: Vec<String>,
    start: Instant,
}

impl Fuzz {
    fn new(name: &'static str) -> Fuzz {
        let env = TestEnv::new(name);
        let c = env.seed(3);
        // Sent for every sync mask: a valid value makes a run with nothing
        // to send, which ends with 0 before any network.
        c.execute("UPDATE sensorParser SET sync = -1", []).unwrap();
        drop(c);
        env.write("good.json", "{\"dry-run\": false}");
        env.write("good-url.json", "{\"url\": \"mqtt://127.0.0.1\"}");
        Fuzz {
            env,
            name,
            seed: None,
            cases: 0,
            failures: Vec::new(),
            start: Instant::now(),
        }
    }

    fn rng(&mut self) -> Rng {
        let rng = Rng::new(self.name);
        self.seed = Some(rng.seed);
        rng
    }

    fn out_of_time(&self) -> bool {
        self.start.elapsed() > TIME_BUDGET
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Runs a case, checks the contract, records what broke it. Returns the
    /// run for further checks.
    fn check(&mut self, case: &Case) -> Option<Run> {
        self.cases += 1;
        if let Some(text) = &case.config {
            std::fs::write(self.env.path(CONFIG), text).unwrap();
        }
        let mut cmd = command(&self.env);
        cmd.arg(case.sub).args(&case.args);
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        let run = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            util::run_cmd(cmd, RUN_LIMIT)
        })) {
            Ok(run) => run,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                    .unwrap_or_default();
                let repro = repro(case);
                self.fail(format!(
                    "{}: the run failed to start or to end: {why}\n    {repro}",
                    case.label
                ));
                return None;
            }
        };
        let problems = contract(case, &run);
        if !problems.is_empty() {
            let repro = repro(case);
            self.fail(format!(
                "{}: {}\n    {repro}\n    got: exit {:?}, stdout {:?}, stderr {:?}",
                case.label,
                problems.join("; "),
                run.code,
                clip(&run.stdout, 300),
                clip(&run.stderr, 400)
            ));
        }
        Some(run)
    }

    /// Fails the test with every recorded failure.
    fn finish(self) {
        let elapsed = self.start.elapsed();
        println!("{}: {} case(s) in {elapsed:.1?}", self.name, self.cases);
        if self.failures.is_empty() {
            return;
        }
        let replay = match self.seed {
            Some(seed) => format!(
                " (seed {seed}: replay with FRAMEFLUSH_TEST_SEED={seed} cargo test --test fuzz_input {})",
                self.name
            ),
            None => String::new(),
        };
        let shown: Vec<&String> = self.failures.iter().take(60).collect();
        panic!(
            "{} of {} case(s) broke the contract{replay}.\nEach runs in a directory holding sensors.db (3 rows, all sent: sync = -1), \
             good.json ({{\"dry-run\": false}}) and good-url.json ({{\"url\": \"mqtt://127.0.0.1\"}}), with a cleared environment:\n\n{}{}",
            self.failures.len(),
            self.cases,
            shown.iter().map(|s| format!("- {s}\n")).collect::<String>(),
            if self.failures.len() > shown.len() {
                format!("… and {} more\n", self.failures.len() - shown.len())
            } else {
                String::new()
            }
        );
    }
}

/// The binary under test, hard-linked (else copied) once per test process
/// from util::BIN: target/ is shared, and a concurrent build replacing
/// util::BIN must not make runs fail to start halfway through.
fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join("frameflush-tests");
        std::fs::create_dir_all(&dir).unwrap();
        // Links left by earlier runs whose process is gone.
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("frameflush-fuzz-")
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let path = dir.join(format!("frameflush-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        for _ in 0..50 {
            if std::fs::hard_link(util::BIN, &path).is_ok()
                || std::fs::copy(util::BIN, &path).is_ok()
            {
                return path;
            }
            // Being rebuilt right now.
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot link or copy {} to {}", util::BIN, path.display());
    })
}

/// The binary with a cleared environment, run in the test directory (like
/// TestEnv::cmd, on the process's own link to the binary).
fn command(env: &TestEnv) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear().current_dir(&env.dir).stdin(Stdio::null());
    cmd
}

/// What a run did wrong, by the contract of its case.
fn contract(case: &Case, run: &Run) -> Vec<String> {
    let mut p = Vec::new();
    match run.code {
        None => p.push("killed by a signal".to_string()),
        Some(101) => p.push("exit 101: a panic".to_string()),
        Some(c) if c != case.expect => p.push(format!("exit {c}, expected {}", case.expect)),
        Some(_) => {}
    }
    if run.stderr.contains("panicked") {
        p.push("\"panicked\" on stderr".to_string());
    }
    let lines: Vec<&str> = run.stderr.lines().collect();
    if case.expect == 0 {
        if !run.stderr.is_empty() {
            p.push("stderr is not empty for a valid input".to_string());
        }
    } else if lines.len() != 1 {
        p.push(format!(
            "{} line(s) on stderr, expected exactly one",
            lines.len()
        ));
    } else if !lines[0].starts_with("frameflush: error: ") {
        p.push("the stderr line does not start with \"frameflush: error: \"".to_string());
    } else if let Some(key) = &case.key
        && !names_key(lines[0], key)
    {
        p.push(format!(
            "the error line names neither the key \"{key}\" nor a line and column"
        ));
    }
    if case.sub == "check" && !case.json && case.expect != 0 {
        // check's report: nothing (the command line did not parse), or
        // step lines only, the failure among them.
        let out: Vec<&str> = run.stdout.lines().collect();
        if let Some(l) = out.iter().find(|l| {
            !["ok   ", "warn ", "FAIL ", "skip "]
                .iter()
                .any(|p| l.starts_with(p))
        }) {
            p.push(format!("check printed a line that is not a step: {l:?}"));
        }
        if let [line] = lines.as_slice()
            && !out.is_empty()
            && let Some(e) = line.strip_prefix("frameflush: error: ")
            && !out.iter().any(|l| l.starts_with("FAIL ") && l.ends_with(e))
        {
            p.push("check's report has no FAIL line with the error".to_string());
        }
    } else if !run.stdout.is_empty() && !case.stdout_ok {
        if !case.json {
            p.push("stdout is not empty (no --json given)".to_string());
        } else {
            let out: Vec<&str> = run.stdout.lines().collect();
            match (
                out.as_slice(),
                serde_json::from_str::<serde_json::Value>(out.first().unwrap_or(&"")),
            ) {
                ([_], Ok(v)) => {
                    if v["exit_code"].as_i64().map(|c| c as i32) != run.code {
                        p.push(format!(
                            "the JSON summary's exit_code {} is not the exit status",
                            v["exit_code"]
                        ));
                    }
                    if case.expect != 0
                        && let (Some(e), [line]) = (v["error"].as_str(), lines.as_slice())
                        && line.strip_prefix("frameflush: error: ") != Some(e)
                    {
                        p.push("the JSON summary's error differs from the stderr line".to_string());
                    }
                }
                _ => p.push("with --json, stdout is not one JSON object".to_string()),
            }
        }
    }
    for s in &case.secrets {
        if run.stderr.contains(s.as_str()) || run.stdout.contains(s.as_str()) {
            p.push(format!("the secret {s:?} was printed"));
        }
    }
    p
}

/// An error line names a config key when it quotes it (`config key
/// "port"`), or when it is serde's message with a line and column.
fn names_key(line: &str, key: &str) -> bool {
    if line.contains(&format!("\"{key}\"")) || (key == "password" && line.contains("password")) {
        return true;
    }
    let Some(i) = line.rfind(" at line ") else {
        return false;
    };
    let mut words = line[i + 9..].split(' ');
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(l), Some("column"), Some(c)) if l.parse::<u64>().is_ok() && c.parse::<u64>().is_ok()
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes in all)", &s[..end], s.len())
}

/// A shell word for `arg`: bare, '…' or $'…' (non-UTF-8 bytes as \xNN);
/// long words are cut and their length given.
fn sh(arg: &[u8]) -> String {
    let (shown, cut) = if arg.len() > 160 {
        (&arg[..120], Some(arg.len()))
    } else {
        (arg, None)
    };
    let word = if !shown.is_empty()
        && shown
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-./:=@,%".contains(c))
    {
        String::from_utf8_lossy(shown).into_owned()
    } else if let Ok(s) = std::str::from_utf8(shown)
        && !s.chars().any(char::is_control)
    {
        format!("'{}'", s.replace('\'', "'\\''"))
    } else {
        let mut w = String::from("$'");
        for &b in shown {
            match b {
                b'\'' => w.push_str("\\'"),
                b'\\' => w.push_str("\\\\"),
                0x20..=0x7e => w.push(b as char),
                _ => w.push_str(&format!("\\x{b:02x}")),
            }
        }
        w.push('\'');
        w
    };
    match cut {
        Some(n) => format!("{word}…({n} bytes in all)"),
        None => word,
    }
}

/// The reproduction of a case: config text, environment, command line.
fn repro(case: &Case) -> String {
    let mut r = String::new();
    if let Some(text) = &case.config {
        r.push_str(&format!("printf %s {} > {CONFIG}; ", sh(text)));
    }
    for (k, v) in &case.env {
        r.push_str(&format!("{k}={} ", sh(v.as_bytes())));
    }
    r.push_str("frameflush ");
    r.push_str(case.sub);
    for a in &case.args {
        r.push(' ');
        r.push_str(&sh(a.as_bytes()));
    }
    r
}

// ---------------------------------------------------------------------------
// The flags of `flush`, from its --help, and what is certainly bad for each.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Flag {
    long: String,
    short: Option<String>,
    takes_value: bool,
}

impl Flag {
    fn name(&self) -> &str {
        &self.long[2..]
    }
}

/// The flags of `flush` as its --help lists them (without --help).
fn flush_flags(env: &TestEnv) -> Vec<Flag> {
    flags_of(env, "flush")
}

/// The flags of a command as its --help lists them (without --help).
fn flags_of(env: &TestEnv, sub: &str) -> Vec<Flag> {
    let mut cmd = command(env);
    cmd.args([sub, "--help"]);
    let run = util::run_cmd(cmd, RUN_LIMIT);
    run.expect_code(0);
    let usage = run.stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        usage.starts_with(&format!("Usage: frameflush {sub}")),
        "{run:#?}"
    );
    let mut flags = Vec::new();
    let mut in_options = false;
    for line in run.stdout.lines() {
        if line == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options {
            continue;
        }
        if line.is_empty() {
            break;
        }
        // Option lines start with two spaces and a dash; continued
        // descriptions are indented further.
        if !line.starts_with("  -") {
            continue;
        }
        let names: Vec<String> = line
            .split_whitespace()
            .take_while(|w| w.starts_with('-'))
            .map(|w| w.trim_end_matches(',').to_string())
            .collect();
        let Some(long) = names.iter().find(|n| n.starts_with("--")).cloned() else {
            panic!("no long name in the --help line {line:?}");
        };
        if long == "--help" {
            continue;
        }
        let short = names.iter().find(|n| !n.starts_with("--")).cloned();
        let takes_value = std::iter::once(&long)
            .chain(short.iter())
            .any(|n| usage.contains(&format!("[{n} <")) || usage.contains(&format!(" {n} <")));
        flags.push(Flag {
            long,
            short,
            takes_value,
        });
    }
    assert!(
        flags.len() >= 20,
        "too few flags parsed from flush --help: {flags:?}"
    );
    flags
}

/// What a flag (or config key of the same name) holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A file name: only "" is certainly bad.
    Path,
    /// `--db`: a file name or a `mysql://` URL; "" and broken URLs are bad.
    Db,
    Host,
    /// An integer of a type whose largest value is `max`, valid in lo..=hi.
    Int {
        max: u64,
        lo: u64,
        hi: u64,
    },
    /// 0, or 5 to 65535.
    Keepalive,
    /// A power of two from 1 to 2^62.
    SyncMask,
    /// A finite number from `lo` (itself allowed when `lo_ok`) to `hi`:
    /// seconds (greater than 0, at most 86400), a rate.
    Float {
        lo: f64,
        lo_ok: bool,
        hi: f64,
    },
    /// 1 to 65535 bytes without NUL.
    Text,
    Url,
    Topic,
    /// One of these words, exactly.
    Choice(&'static [&'static str]),
    /// A message template (`--message`): any text but unbalanced braces,
    /// unknown `{placeholders}` and broken `#TS(…)#`.
    Message,
    /// A TLS application protocol: 1 to 255 bytes (and TLS on).
    Alpn,
    Switch,
}

/// The kind of a flag or config key; None for one this file does not know
/// yet, which fails the tests until a bad-value generator is added.
fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "db" => Kind::Db,
        "config" | "pw-file" | "db-pw-file" | "cafile" | "cert" | "key" | "metrics-file" => {
            Kind::Path
        }
        "alpn" => Kind::Alpn,
        "host" => Kind::Host,
        "port" | "inflight" => Kind::Int {
            max: u16::MAX.into(),
            lo: 1,
            hi: u16::MAX.into(),
        },
        "keepalive" => Kind::Keepalive,
        "batch" | "max-attempts" => Kind::Int {
            max: u32::MAX.into(),
            lo: 1,
            hi: 1_000_000,
        },
        "max-payload" => Kind::Int {
            max: u32::MAX.into(),
            lo: 1,
            hi: 268_435_455 - 65_545,
        },
        "limit" => Kind::Int {
            max: u64::MAX,
            lo: 1,
            hi: u64::MAX,
        },
        "sync-mask" => Kind::SyncMask,
        "connect-timeout" | "max-time" | "ack-timeout" | "busy-timeout" => Kind::Float {
            lo: 0.0,
            lo_ok: false,
            hi: 86_400.0,
        },
        "rate" => Kind::Float {
            lo: 0.01,
            lo_ok: true,
            hi: 1_000_000.0,
        },
        "id" | "username" => Kind::Text,
        "url" => Kind::Url,
        "topic" => Kind::Topic,
        "payload" => Kind::Choice(&["json", "value"]),
        "group" => Kind::Choice(&["row", "frame"]),
        "protocol-version" => Kind::Choice(&["5", "311", "mqttv5", "mqttv311", "3.1.1", "auto"]),
        "message" => Kind::Message,
        "topic-file" | "message-file" => Kind::Path,
        "dry-run" | "json" | "verbose" | "debug" | "quiet" | "insecure" | "content-type" => {
            Kind::Switch
        }
        // check's own switch (no config key).
        "no-publish" => Kind::Switch,
        _ => return None,
    })
}

/// Whether frameflush should accept `v` for this kind (None where the test
/// cannot tell: URLs and switches, whose bad values are built bad).
fn accepts(kind: Kind, v: &str) -> Option<bool> {
    Some(match kind {
        Kind::Path => !v.is_empty(),
        Kind::Db => return None,
        Kind::Host => !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '/'),
        Kind::Int { max, lo, hi } => v
            .parse::<u64>()
            .is_ok_and(|n| n <= max && n >= lo && n <= hi),
        Kind::Keepalive => v.parse::<u16>().is_ok_and(|n| n == 0 || n >= 5),
        Kind::SyncMask => v
            .parse::<u64>()
            .is_ok_and(|n| n.is_power_of_two() && n <= 1 << 62),
        Kind::Float { lo, lo_ok, hi } => v
            .parse::<f64>()
            .is_ok_and(|x| x.is_finite() && (x > lo || (lo_ok && x == lo)) && x <= hi),
        Kind::Text => !v.is_empty() && v.len() <= 65_535 && !v.contains('\0'),
        Kind::Topic => ref_parse(v).is_some(),
        Kind::Choice(words) => words.contains(&v),
        Kind::Message => return None,
        Kind::Alpn => !v.is_empty() && v.len() <= 255,
        Kind::Url | Kind::Switch => return None,
    })
}

/// Bad topic templates: each is refused whatever the row holds.
fn bad_templates() -> Vec<String> {
    let mut v: Vec<String> = [
        "{nope}",
        "a/{nope}/b",
        "{ID}",
        "{}",
        "{ id}",
        "{",
        "}",
        "{id",
        "id}",
        "{{id}",
        "{{id}}}",
        "{id}}",
        "a/{sen{sor}",
        "{id}{",
        "",
        "+",
        "a/+/b",
        "#",
        "a/#",
        "{{+}}",
        "$",
        "$SYS/{sensor}",
        "é/{valeur}",
        "☃/}",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    v.push("a".repeat(70_000));
    v
}

/// Bad --url values. `mqtts://` and `ssl://` appear only with a password:
/// TLS may become supported, a password in the URL never.
fn bad_urls() -> Vec<String> {
    let mut v: Vec<String> = [
        "127.0.0.1",
        "127.0.0.1:1883",
        "broker.example",
        "http://127.0.0.1",
        "https://127.0.0.1:1883",
        "ws://127.0.0.1",
        "MQTT://127.0.0.1",
        "mqtt:/127.0.0.1",
        "mqtt:127.0.0.1",
        "mqtt//127.0.0.1",
        "",
        "mqtt://",
        "mqtt:///topic",
        "mqtt://:1883",
        "mqtt://alice@",
        "mqtt://@127.0.0.1",
        "mqtt://127.0.0.1:0",
        "mqtt://127.0.0.1:00",
        "mqtt://127.0.0.1:65536",
        "mqtt://127.0.0.1:99999",
        "mqtt://127.0.0.1:-1",
        "mqtt://127.0.0.1:",
        "mqtt://127.0.0.1:abc",
        "mqtt://127.0.0.1: 1883",
        "mqtt://[::1",
        "mqtt://[::1:1883",
        "mqtt://[::1]x",
        "mqtt://[::1]:",
        "mqtt://[::1]:0",
        "mqtt://[]:1883",
        "mqtt://a b",
        "mqtt://a\tb:1883",
        "mqtt://127.0.0.1/a/+",
        "mqtt://127.0.0.1/#",
        "mqtt://127.0.0.1/{nope}",
        "mqtt://127.0.0.1/$SYS/x",
        "mqtt://127.0.0.1/{",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    v.extend(secret_urls());
    v
}

/// URLs carrying a password: refused, and the password never printed.
fn secret_urls() -> Vec<String> {
    [
        "mqtt://user:{S}@host",
        "mqtt://user:{S}@127.0.0.1:1883/t",
        "mqtt://:{S}@host",
        "mqtt://user:{S}@[::1",
        "mqtt://user:{S}@host:0",
        "tcp://user:{S}@host",
        "mqtts://user:{S}@host",
        "ssl://user:{S}@host",
        "http://user:{S}@host",
        "MQTT://user:{S}@host",
        "mqtt:/user:{S}@host",
    ]
    .iter()
    .map(|u| u.replace("{S}", SECRET))
    .collect()
}

/// Values certainly bad for a kind, as typed on the command line.
fn bad_table(kind: Kind) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<String>>();
    let common_int = [
        "",
        "abc",
        "0x10",
        " 5",
        "5 ",
        "1.5",
        "-1",
        "-0",
        "1e3",
        "NaN",
        "inf",
        "18446744073709551616",
        "18446744073709551617",
        "99999999999999999999999",
        "5_000",
        "٣",
    ];
    match kind {
        Kind::Path => s(&[""]),
        Kind::Db => {
            let mut v = s(&[
                "",
                "mysql://",
                "mysql://localhost/MeshliumDB",
                "mysql://@localhost/MeshliumDB",
                "mysql://root@localhost",
                "mysql://root@localhost/",
                "mysql://root@/MeshliumDB",
                "mysql://root@localhost:0/MeshliumDB",
                "mysql://root@localhost:65536/MeshliumDB",
                "mysql://root@localhost/Meshlium.DB",
                "mysql://root@[::1/MeshliumDB",
                "mysql://root@localhost/MeshliumDB?ssl=1",
                "mysql://root@localhost/MeshliumDB?socket=relative.sock",
            ]);
            v.push(format!("mysql://root:{SECRET}@localhost/MeshliumDB"));
            v
        }
        Kind::Host => s(&[
            "",
            " ",
            "a b",
            "a/b",
            "/",
            "host\t",
            "\u{a0}host",
            "broker.example/",
            "h\u{3000}",
        ]),
        Kind::Int { max, lo, hi } => {
            let mut v = s(&common_int);
            if lo >= 1 {
                v.push("0".into());
                v.push("000".into());
            }
            if hi < u64::MAX {
                v.push((u128::from(hi) + 1).to_string());
            }
            if max < u64::MAX && max != hi {
                v.push((u128::from(max) + 1).to_string());
            }
            v
        }
        Kind::Keepalive => {
            let mut v = s(&common_int);
            v.extend(s(&["1", "2", "3", "4", "04", "65536"]));
            v
        }
        Kind::SyncMask => {
            let mut v = s(&common_int);
            v.extend(s(&[
                "0",
                "3",
                "5",
                "6",
                "7",
                "12",
                "100",
                "255",
                "9223372036854775808",
                "9223372036854775807",
                "18446744073709551615",
                "-64",
                "64.0",
                "0x40",
                " 64",
                "1e2",
            ]));
            v
        }
        Kind::Float { lo, hi, .. } => {
            let mut v = s(&[
                "",
                "0",
                "0.0",
                "-0",
                "-0.5",
                "-1",
                "NaN",
                "nan",
                "inf",
                "-inf",
                "infinity",
                "86401",
                "86400.001",
                "1e400",
                "1e5",
                "-1e400",
                "abc",
                "0x10",
                " 5",
                "5s",
                "1,5",
                "1e-400",
                "1e308",
                "-0.0",
                "١",
            ]);
            v.push(format!("{}", hi + 1.0));
            v.push(format!("{}.001", hi as u64));
            v.push(format!("{hi:e}1"));
            if lo > 0.0 {
                v.push(format!("{}", lo / 10.0));
                v.push(format!("{}", -lo));
            }
            v.retain(|b| accepts(kind, b) == Some(false));
            v
        }
        Kind::Text => vec![String::new(), "a".repeat(65_536), "☃".repeat(21_846)],
        Kind::Url => bad_urls(),
        Kind::Topic => bad_templates(),
        Kind::Message => s(&[
            "",
            "{nope}",
            "#SENSOR#={",
            "}|#VALUE#",
            "#TS(\"U)#",
            "#TS(\"Y\\\")#",
            "{id_wasp",
        ]),
        Kind::Choice(words) => {
            let mut v = s(&["", "xml", "raw", "jsonvalue", "rows"]);
            for w in words {
                v.extend([
                    w.to_uppercase(),
                    format!(" {w}"),
                    format!("{w} "),
                    format!("{w}s"),
                    format!("{w}\n"),
                ]);
            }
            v.retain(|x| !words.contains(&x.as_str()));
            v
        }
        Kind::Alpn => vec![String::new(), "a".repeat(256), "☃".repeat(86)],
        Kind::Switch => Vec::new(),
    }
}

fn random_digits(rng: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let lo = if i == 0 { 1 } else { 0 };
        s.push(char::from(b'0' + rng.range(lo, 10) as u8));
    }
    s
}

fn random_garbage(rng: &mut Rng) -> String {
    const BITS: &[&str] = &[
        "a", "b", "x", "Z", "-", "+", ".", ",", "_", " ", "é", "☃", "0", "7", "e", "%", "\t",
    ];
    let n = rng.range(0, 8);
    (0..n).map(|_| *rng.pick(BITS)).collect()
}

fn random_number_like(rng: &mut Rng, max: u64, hi: u64) -> String {
    let n = rng.range(0, 100_000);
    match rng.range(0, 10) {
        0 => "0".repeat(rng.range(1, 4) as usize),
        1 if hi < u64::MAX => {
            let bits = rng.range(1, 40);
            (u128::from(hi) + 1 + u128::from(rng.range(0, 1 << bits))).to_string()
        }
        1 | 2 => {
            let len = rng.range(21, 60) as usize;
            random_digits(rng, len)
        }
        3 => format!("-{}", rng.range(0, u64::MAX)),
        4 => format!("{n}.{}", rng.range(1, 1000)),
        5 => format!("{n}e{}", rng.range(0, 400)),
        6 => format!("0x{:x}", rng.next_u64()),
        7 => {
            let ws = *rng.pick(&[" ", "\t", "\n", "\u{a0}"]);
            if rng.range(0, 2) == 0 {
                format!("{ws}{n}")
            } else {
                format!("{n}{ws}")
            }
        }
        8 => (u128::from(max) + 1 + u128::from(rng.range(0, 1000))).to_string(),
        _ => random_garbage(rng),
    }
}

fn random_case(rng: &mut Rng, word: &str) -> String {
    word.chars()
        .map(|c| {
            if rng.range(0, 2) == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn random_url(rng: &mut Rng) -> String {
    let host = *rng.pick(&["127.0.0.1", "broker.example", "h", "[::1]", "gw-7"]);
    let good_port = rng.range(1, 65_536);
    match rng.range(0, 9) {
        0 => {
            let scheme = *rng.pick(&[
                "http://", "https://", "ws://", "MQTT://", "Mqtt://", "mqtt:/", "mqtt:", "",
                "tcp:/", "TCP://", "mqtt//",
            ]);
            format!("{scheme}{host}:{good_port}")
        }
        1 => {
            let port = match rng.range(0, 5) {
                0 => "0".repeat(rng.range(1, 4) as usize),
                1 => rng.range(65_536, 10_000_000).to_string(),
                2 => format!("-{good_port}"),
                3 => random_garbage(rng) + "x",
                _ => String::new(),
            };
            format!("mqtt://{host}:{port}")
        }
        2 => rng
            .pick(&[
                "mqtt://",
                "mqtt://:1883",
                "mqtt://u@",
                "mqtt://u@:1883",
                "mqtt:///t",
                "mqtt://[]",
                "mqtt://[]:1",
            ])
            .to_string(),
        3 => rng
            .pick(&[
                "mqtt://[::1",
                "mqtt://[::1]x",
                "mqtt://[::1]:",
                "mqtt://[fe80::1",
                "mqtt://[::1]]",
            ])
            .to_string(),
        4 => rng.pick(&secret_urls()).clone(),
        5 => format!("mqtt://@{host}"),
        6 => {
            let ws = *rng.pick(&[" ", "\t", "\u{a0}", "\u{2003}"]);
            format!("mqtt://a{ws}b:{good_port}")
        }
        7 => {
            let t = random_bad_template(rng);
            if t.is_empty() {
                format!("mqtt://{host}/a/+")
            } else {
                format!("mqtt://{host}/{t}")
            }
        }
        _ => format!("mqtt://{host}:{}", random_number_like(rng, 65_535, 65_535)),
    }
}

/// A random value certainly bad for a kind (a switch gets none here).
fn random_bad(rng: &mut Rng, kind: Kind) -> String {
    for _ in 0..1000 {
        let v = match kind {
            Kind::Path | Kind::Switch => String::new(),
            Kind::Db => {
                let table = bad_table(Kind::Db);
                rng.pick(&table).clone()
            }
            Kind::Host => {
                if rng.range(0, 8) == 0 {
                    String::new()
                } else {
                    let n = rng.range(0, 12) as usize;
                    let mut h: String = (0..n)
                        .map(|_| *rng.pick(&['a', 'z', '0', '9', '.', '-', 'é']))
                        .collect();
                    let at = rng.range(0, h.chars().count() as u64 + 1) as usize;
                    let at = h.char_indices().nth(at).map_or(h.len(), |(i, _)| i);
                    let bad = *rng.pick(&[
                        ' ', '\t', '\n', '\r', '\u{a0}', '\u{2003}', '\u{3000}', '\u{85}', '/',
                    ]);
                    h.insert(at, bad);
                    h
                }
            }
            Kind::Int { max, hi, .. } => random_number_like(rng, max, hi),
            Kind::Keepalive => match rng.range(0, 3) {
                0 => rng.range(1, 5).to_string(),
                _ => random_number_like(rng, 65_535, 65_535),
            },
            Kind::SyncMask => match rng.range(0, 5) {
                0 => {
                    let a = rng.range(0, 64);
                    let b = (a + rng.range(1, 64)) % 64;
                    ((1u64 << a) | (1u64 << b)).to_string()
                }
                1 => rng.next_u64().to_string(),
                2 => (1u64 << 63).to_string(),
                _ => random_number_like(rng, u64::MAX, u64::MAX),
            },
            Kind::Float { lo, hi, .. } => match rng.range(0, 8) {
                0 => rng
                    .pick(&[
                        "0", "0.0", "-0", "0e10", "+0", ".0", "-0.0", "0.000", "0e-5",
                    ])
                    .to_string(),
                1 => format!("-{}.{}", rng.range(0, 100_000), rng.range(0, 1000)),
                2 => format!("{}", hi as u64 + 1 + rng.range(0, 1 << 40)),
                3 => format!("{}e{}", rng.range(1, 10), rng.range(7, 400)),
                4 => {
                    let w = *rng.pick(&["nan", "inf", "infinity"]);
                    let sign = *rng.pick(&["", "+", "-"]);
                    format!("{sign}{}", random_case(rng, w))
                }
                5 => format!("{}.{}", hi as u64 + rng.range(0, 10), rng.range(1, 1000)),
                6 => format!("{}", lo * (rng.range(0, 1000) as f64 / 1000.0)),
                _ => random_number_like(rng, u64::MAX, u64::MAX),
            },
            Kind::Text => {
                if rng.range(0, 4) == 0 {
                    String::new()
                } else {
                    let want = rng.range(65_536, 66_000) as usize;
                    let mut s = String::with_capacity(want + 4);
                    while s.len() < want {
                        s.push_str(rng.pick::<&str>(&["a", "é", "☃", "😀", "-"]));
                    }
                    s
                }
            }
            Kind::Url => return random_url(rng),
            Kind::Topic => random_bad_template(rng),
            Kind::Message => {
                let table = bad_table(Kind::Message);
                rng.pick(&table).clone()
            }
            Kind::Choice(words) => match rng.range(0, 4) {
                0 => {
                    let w = *rng.pick(words);
                    random_case(rng, w)
                }
                1 => format!("{}{}", rng.pick(words), random_garbage(rng)),
                2 => format!("{}{}", random_garbage(rng), rng.pick(words)),
                _ => random_garbage(rng),
            },
            Kind::Alpn => match rng.range(0, 3) {
                0 => String::new(),
                _ => {
                    let want = rng.range(256, 2000) as usize;
                    let mut s = String::new();
                    while s.len() < want {
                        s.push_str(rng.pick::<&str>(&["x", "-", "é", "☃", "mqtt"]));
                    }
                    s
                }
            },
        };
        if accepts(kind, &v) == Some(false)
            || matches!(kind, Kind::Path | Kind::Db | Kind::Switch | Kind::Message)
        {
            return v;
        }
    }
    panic!("no bad value found for {kind:?}");
}

/// A switch given a value: every form is refused.
fn bad_switch_uses(long: &str, rng: &mut Rng) -> Vec<Vec<String>> {
    let mut garbage = random_garbage(rng).replace(['-', ' ', '\t'], "");
    if garbage.is_empty() || garbage == "help" {
        garbage = "yes".into();
    }
    vec![
        vec![format!("{long}=1")],
        vec![format!("{long}=")],
        vec![format!("{long}=true")],
        vec![long.to_string(), "yes".to_string()],
        vec![long.to_string(), garbage],
    ]
}

/// Valid values to mix into a random case (None: not mixed in).
fn good_flag(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "config" => &["good.json"],
        "host" => &["127.0.0.1", "broker.example"],
        "port" => &["1883", "1884"],
        "url" => &["mqtt://127.0.0.1", "mqtt://alice@127.0.0.1:1884/t/{id}"],
        "id" => &["fuzz-id"],
        "username" => &["alice"],
        "keepalive" => &["0", "30"],
        "connect-timeout" | "ack-timeout" | "max-time" | "busy-timeout" => &["1", "0.5"],
        "rate" => &["100", "0.5"],
        "topic" => &["t/{id_wasp}/{sensor}", "{{x}}/{id}"],
        "payload" => &["json", "value"],
        "group" => &["row"],
        "protocol-version" => &["5", "311", "auto"],
        "sync-mask" => &["64", "128"],
        "batch" | "inflight" | "max-attempts" | "limit" | "max-payload" => &["7"],
        _ => return None,
    })
}

/// Invalid UTF-8 byte sequences.
const NOT_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xc0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xfe\xff",
];

fn not_utf8(prefix: &str, rng: &mut Rng) -> OsString {
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(rng.pick::<&[u8]>(NOT_UTF8));
    if rng.range(0, 2) == 0 {
        b.extend_from_slice(b"tail");
    }
    OsString::from_vec(b)
}

// ---------------------------------------------------------------------------
// Topic templates: a reference parser and renderer, and a generator.
// ---------------------------------------------------------------------------

enum Part {
    Lit(String),
    Field(&'static str),
}

/// The documented template language: `{column}` placeholders, `{{` and `}}`
/// for literal braces; no `+`, `#` or NUL; not empty, at most 65535 bytes,
/// not starting with a literal `$`.
fn ref_parse(t: &str) -> Option<Vec<Part>> {
    if t.is_empty() || t.len() > 65_535 {
        return None;
    }
    let chars: Vec<char> = t.chars().collect();
    let (mut i, mut parts, mut lit) = (0, Vec::new(), String::new());
    while i < chars.len() {
        match chars[i] {
            '{' if chars.get(i + 1) == Some(&'{') => {
                lit.push('{');
                i += 2;
            }
            '{' => {
                let mut j = i + 1;
                let mut name = String::new();
                loop {
                    match chars.get(j) {
                        None | Some('{') => return None,
                        Some('}') => break,
                        Some(&c) => name.push(c),
                    }
                    j += 1;
                }
                let col = COLUMNS.iter().copied().find(|c| *c == name)?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Field(col));
                i = j + 1;
            }
            '}' if chars.get(i + 1) == Some(&'}') => {
                lit.push('}');
                i += 2;
            }
            '}' | '+' | '#' | '\0' => return None,
            c => {
                lit.push(c);
                i += 1;
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    if let Some(Part::Lit(first)) = parts.first()
        && first.starts_with('$')
    {
        return None;
    }
    Some(parts)
}

/// The unsent row of the dry-run database, column by column.
const ROW: [(&str, &str); 8] = [
    ("id", "42"),
    ("id_wasp", "nodé_☃"),
    ("id_secret", "sécret"),
    ("frame_type", "134"),
    ("frame_number", "7"),
    ("sensor", "TC"),
    ("value", "23.50"),
    ("timestamp", "2026-11-24 10:00:00"),
];

fn ref_render(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Field(c) => ROW.iter().find(|(k, _)| *k == *c).unwrap().1,
        })
        .collect()
}

const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "{{",
    "}}",
    "+",
    "#",
    "/",
    "$",
    "a",
    "b",
    "x",
    "Z",
    "0",
    "9",
    "_",
    "-",
    ".",
    " ",
    ":",
    "é",
    "☃",
    "😀",
    "{id}",
    "{id_wasp}",
    "{id_secret}",
    "{frame_type}",
    "{frame_number}",
    "{sensor}",
    "{value}",
    "{timestamp}",
    "{nope}",
    "{ID}",
    "{}",
    "{ id}",
    "{sensor ",
    "id",
    "sensor",
    "{{sensor}}",
    "value}",
    "{value",
    "sensors/",
    "/{sensor}",
];
/// The fragments that keep a template valid.
const SAFE_FRAGMENTS: &[&str] = &[
    "/",
    "a",
    "b",
    "x",
    "Z",
    "0",
    "_",
    "-",
    ".",
    " ",
    "é",
    "☃",
    "{id}",
    "{id_wasp}",
    "{id_secret}",
    "{frame_type}",
    "{frame_number}",
    "{sensor}",
    "{value}",
    "{timestamp}",
    "{{",
    "}}",
    "{{sensor}}",
    "sensors/",
];

fn random_template(rng: &mut Rng) -> String {
    let n = rng.range(0, 10) as usize;
    let safe = rng.range(0, 2) == 0;
    (0..n)
        .map(|_| {
            if safe && rng.range(0, 12) != 0 {
                *rng.pick(SAFE_FRAGMENTS)
            } else {
                *rng.pick(FRAGMENTS)
            }
        })
        .collect()
}

fn random_bad_template(rng: &mut Rng) -> String {
    loop {
        let t = random_template(rng);
        if ref_parse(&t).is_none() && !t.contains('\0') {
            return t;
        }
    }
}

// ---------------------------------------------------------------------------
// Config keys: the FileSettings struct of src/config.rs.
// ---------------------------------------------------------------------------

/// The config file's keys and their Rust types, read from the struct so
/// that a new key is covered (or fails the test) at once.
fn config_keys() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs");
    let src = std::fs::read_to_string(path).unwrap();
    let start = src
        .find("struct FileSettings {")
        .expect("struct FileSettings in src/config.rs");
    let body = &src[start + "struct FileSettings {".len()..];
    let body = &body[..body.find("\n}").expect("the end of struct FileSettings")];
    let mut keys = Vec::new();
    for line in body.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("//") || l.starts_with('#') {
            continue;
        }
        let (name, ty) = l
            .split_once(':')
            .unwrap_or_else(|| panic!("cannot read the field {l:?}"));
        let name = name.trim().trim_start_matches("pub ").trim();
        let ty = ty.trim().trim_end_matches(',').trim();
        let ty = ty
            .strip_prefix("Option<")
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(ty);
        keys.push((name.replace('_', "-"), ty.to_string()));
    }
    assert!(keys.len() >= 20, "too few config keys read: {keys:?}");
    keys
}

/// JSON values of the wrong type (or out of range) for a Rust type.
fn wrong_type_json(ty: &str) -> Option<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<String>>();
    let ints = |max: &str| {
        let mut v = s(&[
            "\"1\"",
            "\"abc\"",
            "true",
            "[]",
            "{}",
            "[1]",
            "{\"a\": 1}",
            "-1",
            "1.5",
            "1e308",
            "-1e308",
            "1e400",
            "18446744073709551616",
            "\"\"",
        ]);
        v.push(max.to_string());
        v
    };
    Some(match ty {
        "String" => s(&[
            "1",
            "1.5",
            "-1",
            "true",
            "false",
            "[]",
            "{}",
            "[\"x\"]",
            "{\"a\": \"b\"}",
            "1e400",
        ]),
        "u16" => ints("65536"),
        "u32" => ints("4294967296"),
        "u64" => ints("18446744073709551617"),
        "f64" => s(&[
            "\"5\"",
            "\"NaN\"",
            "\"inf\"",
            "true",
            "[]",
            "{}",
            "[1]",
            "{\"a\": 1}",
            "1e400",
            "-1e400",
            "null1",
        ]),
        "bool" => s(&[
            "\"true\"",
            "\"false\"",
            "\"yes\"",
            "1",
            "0",
            "[]",
            "{}",
            "[true]",
        ]),
        "serde::de::IgnoredAny" | "IgnoredAny" => vec![
            format!("\"{SECRET}\""),
            "12345".into(),
            format!("{{\"value\": \"{SECRET}\"}}"),
            format!("[\"{SECRET}\"]"),
            "true".into(),
            "\"\"".into(),
        ],
        _ => return None,
    })
}

/// Is `v` a JSON number literal?
fn is_json_number(v: &str) -> bool {
    let b = v.strip_prefix('-').unwrap_or(v).as_bytes();
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = digits(b);
    if i == 0 || (b[0] == b'0' && i > 1) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        let d = digits(&b[i + 1..]);
        if d == 0 {
            return false;
        }
        i += 1 + d;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let d = digits(&b[i..]);
        if d == 0 {
            return false;
        }
        i += d;
    }
    i == b.len()
}

/// Semantically bad values of a key, as JSON: the flag's table (a number
/// literal as a number for a numeric key, anything else as a string).
fn semantic_json(kind: Kind) -> Vec<String> {
    let numeric = matches!(
        kind,
        Kind::Int { .. } | Kind::Keepalive | Kind::SyncMask | Kind::Float { .. }
    );
    let mut v: Vec<String> = bad_table(kind)
        .into_iter()
        .map(|b| {
            if numeric && is_json_number(&b) {
                b
            } else {
                serde_json::to_string(&b).unwrap()
            }
        })
        .collect();
    if matches!(kind, Kind::Text | Kind::Topic) {
        v.push("\"a\\u0000b\"".into());
    }
    v
}

/// A valid JSON value of a key, to mix into a random config file.
fn good_json(key: &str) -> Option<&'static str> {
    Some(match key {
        "db" => "\"sensors.db\"",
        "host" => "\"127.0.0.1\"",
        "port" => "1884",
        "url" => "\"mqtt://127.0.0.1\"",
        "id" => "\"fuzz-id\"",
        "username" => "\"alice\"",
        "keepalive" => "30",
        "connect-timeout" => "2.5",
        "topic" => "\"t/{id}/{{x}}\"",
        "payload" => "\"value\"",
        "group" => "\"row\"",
        "protocol-version" => "\"311\"",
        "sync-mask" => "128",
        "batch" => "10",
        "inflight" => "5",
        "limit" => "3",
        "max-time" | "ack-timeout" | "busy-timeout" => "1",
        "rate" => "100",
        "max-payload" => "1000",
        "max-attempts" => "2",
        "dry-run" | "verbose" => "true",
        "json" | "debug" | "quiet" => "false",
        _ => return None,
    })
}

/// A JSON object of the pairs, compact or spread over lines.
fn json_object(pairs: &[(String, String)], rng: &mut Rng) -> String {
    let pretty = rng.range(0, 2) == 0;
    let indent = " ".repeat(rng.range(0, 5) as usize);
    let colon = *rng.pick(&[":", ": ", " : "]);
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            if pretty {
                format!("{indent}\"{k}\"{colon}{v}")
            } else {
                format!("\"{k}\"{colon}{v}")
            }
        })
        .collect();
    if pretty {
        format!("{{\n{}\n}}\n", items.join(",\n"))
    } else {
        format!("{{{}}}", items.join(", "))
    }
}

// ---------------------------------------------------------------------------
// 1. Flags.
// ---------------------------------------------------------------------------

#[test]
fn every_flush_flag_refuses_a_table_of_certainly_bad_values_with_64() {
    let mut f = Fuzz::new("every_flush_flag_refuses_a_table_of_certainly_bad_values_with_64");
    let mut rng = f.rng();
    for flag in flush_flags(&f.env) {
        let name = flag.name().to_string();
        let Some(kind) = kind_of(&name) else {
            f.fail(format!(
                "{}: no bad-value generator for this flag in tests/fuzz_input.rs (kind_of): add one",
                flag.long
            ));
            continue;
        };
        if matches!(kind, Kind::Switch) != !flag.takes_value {
            f.fail(format!(
                "{}: --help and kind_of disagree on whether it takes a value",
                flag.long
            ));
            continue;
        }
        if !flag.takes_value {
            for uses in bad_switch_uses(&flag.long, &mut rng) {
                let args: Vec<&str> = uses.iter().map(String::as_str).collect();
                f.check(&Case::new(
                    format!("switch {} given a value", flag.long),
                    with_db(&args),
                    64,
                ));
            }
            continue;
        }
        for bad in bad_table(kind) {
            if accepts(kind, &bad) == Some(true) {
                f.fail(format!(
                    "test bug: the table value {bad:?} of {} is valid",
                    flag.long
                ));
                continue;
            }
            let args = if name == "db" {
                os(&[&flag.long, &bad])
            } else {
                with_db(&[&flag.long, &bad])
            };
            f.check(&Case::new(
                format!("{} {:?}", flag.long, clip(&bad, 40)),
                args,
                64,
            ));
        }
    }
    f.finish();
}

#[test]
fn check_takes_exactly_the_flags_of_flush_and_no_publish() {
    let env = TestEnv::new("check_flags");
    let flush: Vec<(String, Option<String>, bool)> = flush_flags(&env)
        .into_iter()
        .map(|f| (f.long, f.short, f.takes_value))
        .collect();
    let mut check: Vec<(String, Option<String>, bool)> = flags_of(&env, "check")
        .into_iter()
        .map(|f| (f.long, f.short, f.takes_value))
        .collect();
    let own = check
        .iter()
        .position(|f| f.0 == "--no-publish")
        .expect("check --help lists --no-publish");
    assert_eq!(check.remove(own), ("--no-publish".to_string(), None, false));
    assert_eq!(check, flush, "check --help and flush --help differ");
}

#[test]
fn every_check_flag_refuses_the_table_of_certainly_bad_values_with_64_and_a_fail_line() {
    let mut f = Fuzz::new(
        "every_check_flag_refuses_the_table_of_certainly_bad_values_with_64_and_a_fail_line",
    );
    let mut rng = f.rng();
    // Were a bad value taken, check would go on to the broker: a closed
    // port of 127.0.0.1 (from the config file, which flags override), never
    // the machine's own broker.
    f.env.write(
        "closed.json",
        &format!(
            "{{\"host\": \"127.0.0.1\", \"port\": {}}}",
            util::refused_port()
        ),
    );
    for flag in flags_of(&f.env, "check") {
        let name = flag.name().to_string();
        let Some(kind) = kind_of(&name) else {
            f.fail(format!(
                "{}: no bad-value generator for this flag in tests/fuzz_input.rs (kind_of): add one",
                flag.long
            ));
            continue;
        };
        let mut base: Vec<&str> = Vec::new();
        if name != "config" {
            base.extend(["--config", "closed.json"]);
        }
        if name != "db" {
            base.extend(["--db", "sensors.db"]);
        }
        if !flag.takes_value {
            for uses in bad_switch_uses(&flag.long, &mut rng) {
                let mut args = base.clone();
                args.extend(uses.iter().map(String::as_str));
                f.check(
                    &Case::new(
                        format!("check: switch {} given a value", flag.long),
                        os(&args),
                        64,
                    )
                    .under_check(),
                );
            }
            continue;
        }
        for bad in bad_table(kind) {
            let mut args = base.clone();
            args.extend([flag.long.as_str(), &bad]);
            f.check(
                &Case::new(
                    format!("check: {} {:?}", flag.long, clip(&bad, 40)),
                    os(&args),
                    64,
                )
                .under_check(),
            );
        }
    }
    f.finish();
}

#[test]
fn random_bad_flag_values_give_64_and_one_error_line() {
    let mut f = Fuzz::new("random_bad_flag_values_give_64_and_one_error_line");
    let mut rng = f.rng();
    let flags: Vec<Flag> = flush_flags(&f.env)
        .into_iter()
        .filter(|fl| kind_of(fl.name()).is_some())
        .collect();
    for i in 0..RANDOM_CASES {
        if f.out_of_time() {
            println!("flag_random: time budget spent after {i} case(s)");
            break;
        }
        let flag = rng.pick(&flags).clone();
        let kind = kind_of(flag.name()).unwrap();
        let spelled = match &flag.short {
            Some(s) if rng.range(0, 2) == 0 => s.clone(),
            _ => flag.long.clone(),
        };
        let bad: Vec<String> = if flag.takes_value {
            vec![spelled, random_bad(&mut rng, kind)]
        } else {
            {
                let uses = bad_switch_uses(&flag.long, &mut rng);
                rng.pick(&uses).clone()
            }
        };
        // Valid flags around it, in a random order.
        let mut groups: Vec<Vec<String>> = vec![bad];
        for _ in 0..rng.range(0, 4) {
            let other = rng.pick(&flags).clone();
            let taken = |n: &str| {
                groups.iter().any(|g| {
                    g[0] == format!("--{n}")
                        || flags
                            .iter()
                            .any(|fl| fl.name() == n && fl.short.as_deref() == Some(g[0].as_str()))
                })
            };
            if other.name() == flag.name() || taken(other.name()) {
                continue;
            }
            let broker = ["url", "host", "port"];
            if broker.contains(&other.name())
                && broker.iter().any(|n| taken(n) || flag.name() == *n)
            {
                continue;
            }
            // --topic wins over the topic of a bad URL.
            if flag.name() == "url" && other.name() == "topic" {
                continue;
            }
            if let Some(values) = good_flag(other.name()) {
                groups.push(vec![other.long.clone(), rng.pick(values).to_string()]);
            }
        }
        for sw in ["--json", "--dry-run", "-v", "-d"] {
            if rng.range(0, 5) == 0 && flag.long != sw && flag.short.as_deref() != Some(sw) {
                groups.push(vec![sw.to_string()]);
            }
        }
        if flag.name() != "db" {
            groups.push(vec!["--db".into(), "sensors.db".into()]);
        }
        for k in (1..groups.len()).rev() {
            let j = rng.range(0, k as u64 + 1) as usize;
            groups.swap(k, j);
        }
        let args: Vec<OsString> = groups.concat().into_iter().map(OsString::from).collect();
        f.check(&Case::new(format!("random bad {}", flag.long), args, 64));
    }
    f.finish();
}

#[test]
fn a_non_utf8_argument_or_a_missing_value_for_any_flag_gives_64() {
    let mut f = Fuzz::new("a_non_utf8_argument_or_a_missing_value_for_any_flag_gives_64");
    let mut rng = f.rng();
    for flag in flush_flags(&f.env) {
        let long = flag.long.clone();
        let mut spellings = vec![long.clone()];
        spellings.extend(flag.short.clone());
        for spelled in &spellings {
            let mut args = if flag.name() == "db" {
                Vec::new()
            } else {
                with_db(&[])
            };
            if flag.takes_value {
                let prefix = match flag.name() {
                    "url" => "mqtt://127.0.0.1/",
                    "port" | "batch" | "inflight" | "limit" | "keepalive" => "1883",
                    "sync-mask" => "64",
                    "topic" => "a/{id}/",
                    _ => "value",
                };
                args.push(spelled.into());
                args.push(not_utf8(prefix, &mut rng));
                f.check(&Case::new(
                    format!("{spelled} with a non-UTF-8 value"),
                    args,
                    64,
                ));
                // Without its value, at the end of the line.
                let mut args = if flag.name() == "db" {
                    Vec::new()
                } else {
                    with_db(&[])
                };
                args.push(spelled.into());
                f.check(&Case::new(format!("{spelled} without its value"), args, 64));
            } else {
                args.push(spelled.into());
                args.push(not_utf8("", &mut rng));
                f.check(&Case::new(
                    format!("{spelled} then a non-UTF-8 argument"),
                    args,
                    64,
                ));
            }
            // The flag's own name mangled.
            let mut args = with_db(&[]);
            args.push(not_utf8(spelled, &mut rng));
            if flag.takes_value {
                args.push("1".into());
            }
            f.check(&Case::new(
                format!("{spelled} followed by non-UTF-8 bytes in its name"),
                args,
                64,
            ));
        }
    }
    // A password in a URL that is not UTF-8 is not printed either.
    let mut url = format!("mqtt://user:{SECRET}").into_bytes();
    url.extend_from_slice(b"\xff@127.0.0.1");
    f.check(&Case::new(
        "a non-UTF-8 URL holding a password",
        with_db(&["-L"])
            .into_iter()
            .chain([OsString::from_vec(url)])
            .collect(),
        64,
    ));
    f.finish();
}

#[test]
fn flags_that_are_bad_only_together_give_64() {
    let mut f = Fuzz::new("flags_that_are_bad_only_together_give_64");
    let cases: &[&[&str]] = &[
        &["-L", "mqtt://127.0.0.1", "--host", "127.0.0.1"],
        &["-L", "mqtt://127.0.0.1", "--port", "1883"],
        &[
            "--url",
            "mqtt://127.0.0.1:1884",
            "--host",
            "h",
            "--port",
            "1",
        ],
        &["--host", "127.0.0.1", "--url", "mqtt://127.0.0.1/t/{id}"],
        &["-L", "mqtt://alice@127.0.0.1", "-u", ""],
        &["-L", "mqtt://127.0.0.1", "--url", "mqtt://127.0.0.1"],
        &["--port", "1883", "--port", "1884"],
        &["-t", "a", "--topic", "b"],
        &["--db", "sensors.db"],
        &["-i", "a", "--id", "b"],
        &["-u", "alice", "--pw-file", ""],
        &["--config", "good-url.json", "--port", "0"],
        &["--config", "good.json", "--config", "good.json"],
        &[
            "--config",
            "good.json",
            "-L",
            "mqtt://127.0.0.1",
            "--host",
            "h",
        ],
        &["--json", "--dry-run", "--sync-mask", "3"],
        &["--json", "-L", "mqtt://127.0.0.1", "--port", "1"],
        &["--json", "--port", "0", "--inflight", "0"],
        &["--batch", "0", "--limit", "0", "--max-time", "0"],
        // TLS options without TLS, or half of a pair.
        &["--insecure"],
        &["--alpn", "mqtt"],
        &["-L", "mqtt://127.0.0.1", "--insecure"],
        &["--insecure", "--alpn", "x-amzn-mqtt-ca"],
        &["--cert", "client.pem"],
        &["--key", "client.key"],
        &["--cafile", "ca.pem", "--cert", "client.pem"],
    ];
    for args in cases {
        f.check(&Case::new(format!("{args:?}"), with_db(args), 64));
    }
    // Controls: the same flags alone are fine.
    for args in [
        &["-L", "mqtt://127.0.0.1"][..],
        &["--host", "127.0.0.1", "--port", "1883"],
        &["--config", "good-url.json"],
        &["--json"],
    ] {
        let mut case = Case::new(format!("control {args:?}"), with_db(args), 0);
        case.stdout_ok = args.contains(&"--json");
        f.check(&case);
    }
    f.finish();
}

// ---------------------------------------------------------------------------
// 2. The config file.
// ---------------------------------------------------------------------------

#[test]
fn every_config_key_refuses_wrong_types_and_bad_values_with_78() {
    let mut f = Fuzz::new("every_config_key_refuses_wrong_types_and_bad_values_with_78");
    let keys = config_keys();
    // The keys are the long flags' names (plus "password", refused).
    let flags: Vec<String> = flush_flags(&f.env)
        .iter()
        .map(|fl| fl.name().to_string())
        .collect();
    for fl in &flags {
        if fl != "config" && !keys.iter().any(|(k, _)| k == fl) {
            f.fail(format!("--{fl} has no config key of the same name"));
        }
    }
    for (k, _) in &keys {
        if k != "password" && !flags.contains(k) {
            f.fail(format!("config key \"{k}\" is no flag of flush"));
        }
    }
    for (key, ty) in &keys {
        let Some(mut values) = wrong_type_json(ty) else {
            f.fail(format!("config key \"{key}\": no wrong-type generator for the type {ty} in tests/fuzz_input.rs"));
            continue;
        };
        if key != "password" {
            let Some(kind) = kind_of(key) else {
                f.fail(format!("config key \"{key}\": no bad-value generator in tests/fuzz_input.rs (kind_of): add one"));
                continue;
            };
            values.extend(semantic_json(kind));
        }
        // The flag --db would win over the key db.
        let args = if key == "db" {
            os(&["--config", CONFIG])
        } else {
            with_db(&["--config", CONFIG])
        };
        for v in values {
            let text = format!("{{\"{key}\": {v}}}");
            f.check(
                &Case::new(
                    format!("config key \"{key}\": {}", clip(&v, 40)),
                    args.clone(),
                    78,
                )
                .config(text)
                .key(key),
            );
        }
    }
    // Keys that are bad together.
    for (text, key) in [
        (
            "{\"url\": \"mqtt://127.0.0.1\", \"host\": \"127.0.0.1\"}",
            "url",
        ),
        ("{\"port\": 1883, \"url\": \"mqtt://127.0.0.1\"}", "url"),
        ("{\"url\": \"mqtt://127.0.0.1\", \"port\": 0}", "url"),
        (
            "{\"url\": \"mqtt://alice@127.0.0.1\", \"username\": \"\"}",
            "username",
        ),
        ("{\"insecure\": true}", "insecure"),
        ("{\"alpn\": \"mqtt\"}", "alpn"),
        (
            "{\"url\": \"mqtt://127.0.0.1\", \"alpn\": \"mqtt\"}",
            "alpn",
        ),
        ("{\"cert\": \"client.pem\"}", "cert"),
        ("{\"key\": \"client.key\"}", "key"),
    ] {
        f.check(
            &Case::new(
                "config keys bad together",
                with_db(&["--config", CONFIG]),
                78,
            )
            .config(text)
            .key(key),
        );
    }
    // Controls: valid files are fine.
    for text in [
        "{}",
        "{\"url\": \"mqtt://127.0.0.1\", \"dry-run\": false}",
        "{\"port\": 1883, \"host\": \"127.0.0.1\"}",
    ] {
        f.check(&Case::new("control", with_db(&["--config", CONFIG]), 0).config(text));
    }
    f.finish();
}

#[test]
fn broken_config_documents_give_78_and_never_overflow_the_stack() {
    let mut f = Fuzz::new("broken_config_documents_give_78_and_never_overflow_the_stack");
    let deep = 100_000;
    let open = |s: &str| s.repeat(deep);
    let mut docs: Vec<(&str, Vec<u8>)> = vec![
        ("empty file", Vec::new()),
        ("only whitespace", b"  \n\t\n".to_vec()),
        ("an open brace", b"{".to_vec()),
        ("truncated", b"{\"port\": 1883".to_vec()),
        ("truncated in a string", b"{\"topic\": \"a/{id}".to_vec()),
        ("trailing comma", b"{\"port\": 1883,}".to_vec()),
        (
            "double comma",
            b"{\"port\": 1883,, \"host\": \"h\"}".to_vec(),
        ),
        ("a top-level array", b"[{\"port\": 1883}]".to_vec()),
        ("a top-level string", b"\"port\"".to_vec()),
        ("null", b"null".to_vec()),
        ("a number", b"1883".to_vec()),
        ("two objects", b"{\"port\": 1883}{\"port\": 1}".to_vec()),
        ("trailing text", b"{\"port\": 1883} x".to_vec()),
        ("trailing NUL", b"{\"port\": 1883}\0".to_vec()),
        ("single quotes", b"{'port': 1883}".to_vec()),
        ("bare key", b"{port: 1883}".to_vec()),
        ("a comment", b"{\"port\": 1883 /* default */}".to_vec()),
        ("an unknown key", b"{\"prot\": 1883}".to_vec()),
        ("a key in snake case", b"{\"sync_mask\": 64}".to_vec()),
        ("a key in upper case", b"{\"Port\": 1883}".to_vec()),
        ("an empty key", b"{\"\": 1}".to_vec()),
        ("the key config", b"{\"config\": \"good.json\"}".to_vec()),
        (
            "a duplicate key",
            b"{\"port\": 1883, \"port\": 1884}".to_vec(),
        ),
        (
            "non-UTF-8 bytes in a value",
            b"{\"host\": \"h\xff\"}".to_vec(),
        ),
        (
            "non-UTF-8 bytes in a key",
            b"{\"ho\xc3st\": \"h\"}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            b"{\"host\": \"\\ud800\"}".to_vec(),
        ),
        ("a bad escape", b"{\"host\": \"\\q\"}".to_vec()),
        (
            "a raw newline in a string",
            b"{\"host\": \"a\nb\"}".to_vec(),
        ),
    ];
    let nested = [
        (
            "arrays 100,000 deep as a string value",
            format!("{{\"topic\": {}{}}}", open("["), open("]")),
        ),
        (
            "arrays 100,000 deep, unclosed",
            format!("{{\"topic\": {}", open("[")),
        ),
        (
            "arrays 100,000 deep as the password",
            format!("{{\"password\": {}\"{SECRET}\"{}}}", open("["), open("]")),
        ),
        (
            "objects 100,000 deep as the password",
            format!("{{\"password\": {}1{}}}", open("{\"a\":"), open("}")),
        ),
        (
            "objects 100,000 deep as an unknown key",
            format!("{{\"x\": {}1{}}}", open("{\"a\":"), open("}")),
        ),
        (
            "objects 100,000 deep as a number value",
            format!("{{\"port\": {}1{}}}", open("{\"a\":"), open("}")),
        ),
        (
            "objects 100,000 deep, unclosed",
            format!("{{\"password\": {}", open("{\"a\":")),
        ),
        (
            "arrays 100,000 deep in an unknown key",
            format!("{{\"unknown\": {}{}}}", open("["), open("]")),
        ),
    ];
    for (label, text) in &nested {
        docs.push((label, text.clone().into_bytes()));
    }
    let password_docs = [
        ("a password", format!("{{\"password\": \"{SECRET}\"}}")),
        (
            "a password with a user",
            format!("{{\"username\": \"alice\", \"password\": \"{SECRET}\"}}"),
        ),
        (
            "a password after a broken value",
            format!("{{\"port\": \"x\", \"password\": \"{SECRET}\"}}"),
        ),
        (
            "a password before a syntax error",
            format!("{{\"password\": \"{SECRET}\",}}"),
        ),
        (
            "a password and an unknown key",
            format!("{{\"password\": \"{SECRET}\", \"pasword\": \"{SECRET}\"}}"),
        ),
        (
            "a password as a number",
            "{\"password\": 12345}".to_string(),
        ),
        (
            "a password URL",
            format!("{{\"url\": \"mqtt://alice:{SECRET}@127.0.0.1\"}}"),
        ),
        (
            "a password URL of another scheme",
            format!("{{\"url\": \"http://alice:{SECRET}@127.0.0.1\"}}"),
        ),
    ];
    for (label, text) in &password_docs {
        docs.push((label, text.clone().into_bytes()));
    }
    let mut with_secret = b"{\"password\": \"".to_vec();
    with_secret.extend_from_slice(SECRET.as_bytes());
    with_secret.extend_from_slice(b"\xff\"}");
    docs.push(("a non-UTF-8 file holding a password", with_secret));
    for (label, text) in docs {
        f.check(
            &Case::new(
                format!("config file: {label}"),
                with_db(&["--config", CONFIG]),
                78,
            )
            .config(text),
        );
    }
    // The file itself missing, a directory, or named by an empty key.
    std::fs::create_dir_all(f.env.path("conf.d")).unwrap();
    for path in [
        "missing.json",
        "conf.d",
        "conf.d/",
        "sensors.db",
        "/dev/null",
    ] {
        f.check(&Case::new(
            format!("--config {path}"),
            with_db(&["--config", path]),
            78,
        ));
    }
    f.finish();
}

#[test]
fn random_bad_config_files_give_78_naming_the_key() {
    let mut f = Fuzz::new("random_bad_config_files_give_78_naming_the_key");
    let mut rng = f.rng();
    let keys = config_keys();
    for i in 0..RANDOM_CASES {
        if f.out_of_time() {
            println!("config_random: time budget spent after {i} case(s)");
            break;
        }
        let (key, ty) = rng.pick(&keys).clone();
        let Some(mut values) = wrong_type_json(&ty) else {
            f.fail(format!(
                "config key \"{key}\": no wrong-type generator for the type {ty}"
            ));
            continue;
        };
        if let Some(kind) = kind_of(&key) {
            values.extend(semantic_json(kind));
            if !matches!(kind, Kind::Switch | Kind::Path) {
                values.push(serde_json::to_string(&random_bad(&mut rng, kind)).unwrap());
            }
        }
        let bad = rng.pick(&values).clone();
        // A bad value among valid keys, in a random place.
        let broker = ["url", "host", "port"];
        let mut pairs = vec![(key.clone(), bad.clone())];
        for _ in 0..rng.range(0, 5) {
            let (other, _) = rng.pick(&keys);
            let taken = |n: &str| pairs.iter().any(|(k, _)| k == n);
            // The key topic wins over the topic of a bad url.
            if (key == "url" && other == "topic")
                || taken(other)
                || (broker.contains(&other.as_str()) && broker.iter().any(|n| taken(n)))
            {
                continue;
            }
            if let Some(v) = good_json(other) {
                pairs.push((other.clone(), v.to_string()));
            }
        }
        let at = rng.range(0, pairs.len() as u64) as usize;
        pairs.swap(0, at);
        let text = json_object(&pairs, &mut rng);
        let args = if key == "db" {
            os(&["--config", CONFIG])
        } else {
            with_db(&["--config", CONFIG])
        };
        f.check(
            &Case::new(
                format!("random config key \"{key}\": {}", clip(&bad, 40)),
                args,
                78,
            )
            .config(text)
            .key(&key),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------------------
// 3. Topic templates.
// ---------------------------------------------------------------------------

#[test]
fn bad_topic_templates_give_64_as_flags_and_78_in_the_config_file() {
    let mut f = Fuzz::new("bad_topic_templates_give_64_as_flags_and_78_in_the_config_file");
    let mut templates = bad_templates();
    templates.push("a\0b".into());
    for t in templates {
        assert!(
            ref_parse(&t).is_none(),
            "test bug: {t:?} is a valid template"
        );
        let shown = clip(&t, 40);
        if !t.contains('\0') {
            f.check(&Case::new(
                format!("-t {shown:?}"),
                with_db(&["-t", &t]),
                64,
            ));
            f.check(&Case::new(
                format!("--topic {shown:?}"),
                with_db(&["--topic", &t]),
                64,
            ));
            if !t.is_empty() {
                let url = format!("mqtt://127.0.0.1/{t}");
                f.check(&Case::new(
                    format!("the topic {shown:?} of -L"),
                    with_db(&["-L", &url]),
                    64,
                ));
            }
        }
        let text = serde_json::json!({ "topic": t }).to_string();
        f.check(
            &Case::new(
                format!("config topic {shown:?}"),
                with_db(&["--config", CONFIG]),
                78,
            )
            .config(text)
            .key("topic"),
        );
    }
    f.finish();
}

#[test]
fn random_templates_are_accepted_exactly_when_valid_and_render_as_documented() {
    let mut f =
        Fuzz::new("random_templates_are_accepted_exactly_when_valid_and_render_as_documented");
    let mut rng = f.rng();
    // One unsent row for the dry runs.
    let one = util::seed_at(&f.env.path("one.db"), 0);
    one.execute(
        "INSERT INTO sensorParser (id, id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp, sync)
         VALUES (42, 'nodé_☃', 'sécret', 134, 7, 'TC', '23.50', '2026-11-24 10:00:00', 0)",
        [],
    )
    .unwrap();
    drop(one);
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..TEMPLATE_CASES {
        if f.out_of_time() {
            println!("template_random: time budget spent after {i} case(s)");
            break;
        }
        let t = random_template(&mut rng);
        let parsed = ref_parse(&t);
        if parsed.is_some() {
            valid += 1;
        } else {
            invalid += 1;
        }
        // The template by flag, in the config file or in the URL.
        let route = rng.range(0, 4);
        let (args, config, bad_code): (Vec<String>, Option<String>, i32) = match route {
            0 | 1 => (
                vec![if route == 0 { "-t" } else { "--topic" }.into(), t.clone()],
                None,
                64,
            ),
            2 => (
                vec!["--config".into(), CONFIG.into()],
                Some(serde_json::json!({ "topic": t }).to_string()),
                78,
            ),
            _ if !t.is_empty() => (vec!["-L".into(), format!("mqtt://127.0.0.1/{t}")], None, 64),
            _ => (vec!["-t".into(), t.clone()], None, 64),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let expect = if parsed.is_some() { 0 } else { bad_code };
        let mut case = Case::new(format!("template {t:?}"), with_db(&args), expect);
        if let Some(c) = &config {
            case = case.config(c.clone());
        }
        let Some(run) = f.check(&case) else { continue };
        if run.code != Some(0) {
            continue;
        }
        // Accepted: a dry run on the unsent row prints the topic as the
        // reference renders it.
        let expected = parsed.map(|p| ref_render(&p));
        let mut dry = vec!["--db", "one.db", "--dry-run"];
        dry.extend(&args);
        let mut case = Case::new(format!("dry run of the template {t:?}"), os(&dry), 0);
        case.stdout_ok = true;
        if let Some(c) = &config {
            case = case.config(c.clone());
        }
        let Some(run) = f.check(&case) else { continue };
        let repro = repro(&case);
        match (&expected, run.stdout.split_once('\t')) {
            (Some(want), Some((topic, payload))) => {
                if topic != want {
                    f.fail(format!("template {t:?}: dry run printed the topic {topic:?}, expected {want:?}\n    {repro}"));
                }
                let id = serde_json::from_str::<serde_json::Value>(payload.trim_end_matches('\n')).ok().and_then(|v| v["id"].as_i64());
                if id != Some(42) || run.stdout.lines().count() != 1 {
                    f.fail(format!("template {t:?}: dry run printed {:?}, expected one line with the row's JSON\n    {repro}", run.stdout));
                }
            }
            _ => f.fail(format!("template {t:?}: dry run printed {:?}, expected \"<topic>\\t<payload>\"\n    {repro}", run.stdout)),
        }
    }
    println!("template_random: {valid} valid and {invalid} invalid template(s)");
    f.finish();
}

// ---------------------------------------------------------------------------
// 4. The environment and password files.
// ---------------------------------------------------------------------------

#[test]
fn bad_passwords_from_the_environment_or_a_file_give_78_and_never_print() {
    let mut f = Fuzz::new("bad_passwords_from_the_environment_or_a_file_give_78_and_never_print");
    const PW: &str = "FRAMEFLUSH_PASSWORD";
    let mut bytes = SECRET.as_bytes().to_vec();
    bytes.extend_from_slice(b"\xff\xfe");
    let not_utf8 = OsString::from_vec(bytes.clone());
    f.env.write("pw.txt", &format!("{SECRET}\nsecond line\n"));
    // Private, so that the valid runs print no warning about it.
    std::fs::set_permissions(f.env.path("pw.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        f.env.path("pw-bytes.txt"),
        [bytes.as_slice(), b"\n"].concat(),
    )
    .unwrap();
    std::fs::create_dir_all(f.env.path("pw-dir")).unwrap();
    let long = SECRET.repeat(65_536 / SECRET.len() + 1);
    let cases = [
        Case::new(
            "a non-UTF-8 password in the environment",
            with_db(&["-u", "alice"]),
            78,
        )
        .env(PW, not_utf8.clone()),
        Case::new(
            "a non-UTF-8 password in the environment, no user",
            with_db(&[]),
            78,
        )
        .env(PW, not_utf8.clone()),
        Case::new(
            "a password in the environment without a user name",
            with_db(&[]),
            78,
        )
        .env(PW, SECRET),
        Case::new(
            "a password in the environment with a user in the file",
            with_db(&["--config", CONFIG]),
            78,
        )
        .env(PW, not_utf8.clone())
        .config("{\"username\": \"alice\"}"),
        Case::new(
            "a password longer than MQTT allows",
            with_db(&["-u", "alice"]),
            78,
        )
        .env(PW, long.as_str()),
        Case::new(
            "--pw-file naming a missing file",
            with_db(&["-u", "alice", "--pw-file", "missing.txt"]),
            78,
        )
        .env(PW, SECRET),
        Case::new(
            "--pw-file naming a directory",
            with_db(&["-u", "alice", "--pw-file", "pw-dir"]),
            78,
        ),
        Case::new(
            "--pw-file naming a non-UTF-8 file",
            with_db(&["-u", "alice", "--pw-file", "pw-bytes.txt"]),
            78,
        ),
        Case::new(
            "--pw-file without a user name",
            with_db(&["--pw-file", "pw.txt"]),
            78,
        ),
        Case::new(
            "config pw-file naming a missing file",
            with_db(&["--config", CONFIG]),
            78,
        )
        .config("{\"username\": \"alice\", \"pw-file\": \"missing.txt\"}"),
        Case::new(
            "config pw-file naming a directory",
            with_db(&["--config", CONFIG, "-u", "alice"]),
            78,
        )
        .config("{\"pw-file\": \"pw-dir\"}"),
        Case::new(
            "config pw-file naming a non-UTF-8 file",
            with_db(&["--config", CONFIG, "-u", "alice"]),
            78,
        )
        .config("{\"pw-file\": \"pw-bytes.txt\"}"),
        Case::new(
            "config pw-file without a user name",
            with_db(&["--config", CONFIG]),
            78,
        )
        .config("{\"pw-file\": \"pw.txt\"}"),
        Case::new(
            "an empty --pw-file",
            with_db(&["-u", "alice", "--pw-file", ""]),
            64,
        )
        .env(PW, SECRET),
        Case::new(
            "a password with --json and no user name",
            with_db(&["--json"]),
            78,
        )
        .env(PW, SECRET),
    ];
    for case in cases {
        f.check(&case.secret(SECRET).secret("second line"));
    }
    // TLS files and the CA bundle of the environment.
    f.env.write("empty.pem", "");
    f.env.write(
        "garbage.pem",
        &format!("-----BEGIN CERTIFICATE-----\n{SECRET}!!\n-----END CERTIFICATE-----\n"),
    );
    f.env.write(
        "secret.key",
        &format!("-----BEGIN PRIVATE KEY-----\n{SECRET}!!\n-----END PRIVATE KEY-----\n"),
    );
    f.env.write("plain.key", &format!("{SECRET}\n"));
    std::fs::set_permissions(
        f.env.path("secret.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let tls: Vec<(String, Vec<&str>)> = vec![
        (
            "--cafile naming a missing file".into(),
            vec!["--cafile", "missing.pem"],
        ),
        (
            "--cafile naming a directory".into(),
            vec!["--cafile", "pw-dir"],
        ),
        (
            "--cafile naming an empty file".into(),
            vec!["--cafile", "empty.pem"],
        ),
        (
            "--cafile naming broken PEM".into(),
            vec!["--cafile", "garbage.pem"],
        ),
        (
            "--cafile naming a non-UTF-8 file".into(),
            vec!["--cafile", "pw-bytes.txt"],
        ),
        (
            "--cafile naming the database".into(),
            vec!["--cafile", "sensors.db"],
        ),
        (
            "--cafile naming the password file".into(),
            vec!["--cafile", "pw.txt"],
        ),
        (
            "--cert and --key naming missing files".into(),
            vec![
                "--cafile",
                bundle,
                "--cert",
                "missing.pem",
                "--key",
                "missing.key",
            ],
        ),
        (
            "--key naming broken PEM holding a secret".into(),
            vec!["--cafile", bundle, "--cert", bundle, "--key", "secret.key"],
        ),
        (
            "--key naming a file that is no PEM".into(),
            vec!["--cafile", bundle, "--cert", bundle, "--key", "plain.key"],
        ),
        (
            "--key naming a directory".into(),
            vec!["--cafile", bundle, "--cert", bundle, "--key", "pw-dir"],
        ),
        (
            "--cert naming broken PEM".into(),
            vec![
                "--cafile",
                bundle,
                "--cert",
                "garbage.pem",
                "--key",
                "secret.key",
            ],
        ),
    ];
    for (label, args) in &tls {
        f.check(&Case::new(label.clone(), with_db(args), 78).secret(SECRET));
    }
    let mut ssl_path = b"missing-".to_vec();
    ssl_path.extend_from_slice(b"\xff.pem");
    for (label, value) in [
        (
            "SSL_CERT_FILE naming a missing file",
            OsString::from("missing.pem"),
        ),
        ("SSL_CERT_FILE naming a directory", OsString::from("pw-dir")),
        (
            "SSL_CERT_FILE naming broken PEM",
            OsString::from("garbage.pem"),
        ),
        ("SSL_CERT_FILE empty", OsString::new()),
        ("SSL_CERT_FILE not UTF-8", OsString::from_vec(ssl_path)),
    ] {
        f.check(
            &Case::new(label, with_db(&["-L", "mqtts://127.0.0.1"]), 78)
                .env("SSL_CERT_FILE", value)
                .secret(SECRET),
        );
    }
    f.check(
        &Case::new(
            "config cafile naming broken PEM",
            with_db(&["--config", CONFIG]),
            78,
        )
        .config("{\"cafile\": \"garbage.pem\"}")
        .secret(SECRET),
    );
    if std::path::Path::new(bundle).is_file() {
        f.check(&Case::new(
            "control: --cafile with the system bundle",
            with_db(&["--cafile", bundle]),
            0,
        ));
    }
    // Controls: a password with a user name is fine, and never printed.
    f.check(
        &Case::new(
            "control: password from the environment",
            with_db(&["-u", "alice"]),
            0,
        )
        .env(PW, SECRET),
    );
    f.check(
        &Case::new(
            "control: password from a file",
            with_db(&["-u", "alice", "--pw-file", "pw.txt"]),
            0,
        )
        .secret(SECRET),
    );
    let mut json = Case::new(
        "control: password with --json",
        with_db(&["-u", "alice", "--json"]),
        0,
    )
    .env(PW, SECRET);
    json.stdout_ok = true;
    f.check(&json);
    f.finish();
}
