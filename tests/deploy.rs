//! Deployment: `scripts/install`, the systemd units, the example config and
//! the example crontab. What an administrator copies must work as it is.
//!
//! The unit checks run `systemd-analyze` (Debian package `systemd`); a
//! machine without it fails them with a message saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{BIN, Run, TestEnv, run_cmd};

/// The prefix of the test installs: not /usr/local, so the installer must
/// rewrite the units' ExecStart=.
const PREFIX: &str = "/opt/frameflush-test";
const UNITS: [&str; 4] = [
    "frameflush.service",
    "frameflush.timer",
    "frameflush@.service",
    "frameflush@.timer",
];
const SERVICES: [&str; 2] = ["frameflush.service", "frameflush@.service"];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{} not installed: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A command with a cleared environment but for PATH (the scripts need
/// sed, install, mktemp...), in the test's directory.
fn clean(program: impl AsRef<std::ffi::OsStr>, env: &TestEnv) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .current_dir(&env.dir)
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: Command) -> Run {
    run_cmd(cmd, Duration::from_secs(60))
}

/// Runs scripts/install into `env`'s `dest` with PREFIX, installing the
/// test build of the binary; returns DESTDIR.
fn install(env: &TestEnv) -> (PathBuf, Run) {
    let dest = env.path("dest");
    let mut cmd = clean(repo("scripts/install"), env);
    cmd.env("DESTDIR", &dest)
        .env("PREFIX", PREFIX)
        .arg("--binary")
        .arg(BIN);
    let run = run(cmd);
    run.expect_code(0);
    (dest, run)
}

/// The values of `Key=` lines (comments and continuation-free lines only,
/// which is all these units use).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect()
}

/// systemd-analyze, or a failure that says what to install.
fn systemd_analyze(env: &TestEnv) -> Command {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "systemd-analyze is not installed: the unit checks need it. Install the \
         `systemd` package (apt-get install systemd); scripts/test should do it"
    );
    clean("systemd-analyze", env)
}

#[test]
fn the_install_script_installs_everything_under_destdir_and_prefix_with_the_right_modes() {
    let env = TestEnv::new("install");
    let (dest, run) = install(&env);
    let at = |p: &str| dest.join(p.trim_start_matches('/'));

    let bin = at(&format!("{PREFIX}/bin/frameflush"));
    let mut files = vec![
        (bin.clone(), 0o755),
        (at(&format!("{PREFIX}/share/man/man1/frameflush.1")), 0o644),
        (
            at(&format!("{PREFIX}/share/doc/frameflush/crontab.example")),
            0o644,
        ),
        (at("/etc/frameflush/config.json.example"), 0o644),
    ];
    for unit in UNITS {
        files.push((at(&format!("/etc/systemd/system/{unit}")), 0o644));
    }
    for (path, want) in &files {
        assert_eq!(mode(path), *want, "mode of {}", path.display());
        // It says what it installed, by its full path.
        assert!(
            run.stdout.contains(&path.display().to_string()),
            "the output does not name {}: {run:#?}",
            path.display()
        );
    }
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(BIN).unwrap(),
        "the installed binary is not the one given"
    );
    assert_eq!(
        read(&files[1].0),
        read(&repo("man/frameflush.1")),
        "the man page"
    );
    assert_eq!(
        read(&at("/etc/frameflush/config.json.example")),
        read(&repo("scripts/config.example.json"))
    );
    // No config.json: that one is the administrator's.
    assert!(!at("/etc/frameflush/config.json").exists());
    // Nothing outside DESTDIR (it would have failed on /opt as a non-root
    // user; as root, check).
    assert!(
        !Path::new(PREFIX).exists(),
        "{PREFIX} was created outside DESTDIR"
    );

    // The installed binary runs.
    let version = run_cmd(
        {
            let mut c = clean(&bin, &env);
            c.arg("--version");
            c
        },
        Duration::from_secs(30),
    );
    version.expect_code(0);

    // Every unit names the binary of this PREFIX, never /usr/local's nor
    // the staging directory.
    for unit in UNITS {
        let text = read(&at(&format!("/etc/systemd/system/{unit}")));
        assert!(
            !text.contains("/usr/local/bin/frameflush"),
            "{unit} still names /usr/local/bin/frameflush"
        );
        assert!(
            !text.contains(&dest.display().to_string()),
            "{unit} names DESTDIR"
        );
    }
    for unit in SERVICES {
        let text = read(&at(&format!("/etc/systemd/system/{unit}")));
        let exec = values(&text, "ExecStart");
        assert_eq!(exec.len(), 1, "{unit}: {exec:?}");
        let program = exec[0].split_whitespace().next().unwrap();
        assert_eq!(program, format!("{PREFIX}/bin/frameflush"), "{unit}");
        assert_eq!(mode(&at(program)), 0o755);
    }
    let crontab = read(&at(&format!(
        "{PREFIX}/share/doc/frameflush/crontab.example"
    )));
    assert!(crontab.contains(&format!(" {PREFIX}/bin/frameflush flush ")));
}

#[test]
fn the_install_script_never_overwrites_an_existing_config_and_can_run_twice() {
    let env = TestEnv::new("install-keep");
    let dest = env.path("dest");
    let config = dest.join("etc/frameflush/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        config.parent().unwrap(),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(&config, "{\"db\": \"/srv/mine.db\"}\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    install(&env);
    let (_, again) = install(&env);
    assert_eq!(read(&config), "{\"db\": \"/srv/mine.db\"}\n");
    assert_eq!(mode(&config), 0o640);
    // An existing directory keeps its mode.
    assert_eq!(mode(config.parent().unwrap()), 0o750);
    assert!(!again.stdout.contains("/config.json (mode"), "{again:#?}");
}

#[test]
fn the_install_script_explains_itself_and_refuses_unknown_arguments() {
    let env = TestEnv::new("install-help");
    let mut cmd = clean(repo("scripts/install"), &env);
    cmd.arg("--help");
    let help = run(cmd);
    help.expect_code(0);
    for word in ["DESTDIR", "PREFIX", "/etc/systemd/system", "--binary"] {
        assert!(help.stdout.contains(word), "--help lacks {word}: {help:#?}");
    }
    let mut cmd = clean(repo("scripts/install"), &env);
    cmd.arg("--frobnicate");
    let bad = run(cmd);
    bad.expect_code(64);
    assert!(bad.stderr.contains("--frobnicate"), "{bad:#?}");
    // A relative or odd PREFIX would make a broken ExecStart=.
    let mut cmd = clean(repo("scripts/install"), &env);
    cmd.env("DESTDIR", env.path("dest"))
        .env("PREFIX", "opt/ff")
        .arg("--binary")
        .arg(BIN);
    let relative = run(cmd);
    relative.expect_code(1);
    assert!(relative.stderr.contains("absolute"), "{relative:#?}");
    assert!(!env.path("dest").exists(), "{relative:#?}");
}

#[test]
fn the_installed_units_pass_systemd_analyze_verify() {
    let env = TestEnv::new("verify");
    let (dest, _) = install(&env);
    // verify checks that ExecStart='s program exists: copies of the units
    // whose paths point at the staged binary.
    let staged = dest.join(PREFIX.trim_start_matches('/'));
    let copies = env.path("units");
    std::fs::create_dir_all(&copies).unwrap();
    let mut args = Vec::new();
    for unit in UNITS {
        let text = read(&dest.join("etc/systemd/system").join(unit)).replace(
            &format!("{PREFIX}/bin/frameflush"),
            &staged.join("bin/frameflush").display().to_string(),
        );
        let copy = copies.join(unit);
        std::fs::write(&copy, text).unwrap();
        args.push(copy);
    }
    let mut cmd = systemd_analyze(&env);
    cmd.arg("verify");
    // Documentation=man:frameflush(1) is checked against the installed
    // man page when man(1) is there.
    let have_man = Command::new("man")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_man {
        cmd.env("MANPATH", staged.join("share/man"));
    } else {
        cmd.arg("--man=no");
    }
    cmd.args(&args);
    let verify = run(cmd);
    // verify exits 0 on unknown keys and bad values, only saying so.
    verify.expect_code(0);
    assert_eq!(verify.stderr, "", "{verify:#?}");
    assert_eq!(verify.stdout, "", "{verify:#?}");

    // And a unit that is wrong is caught by this very check.
    let broken = copies.join("frameflush.service");
    std::fs::write(
        &broken,
        read(&broken).replace("ProtectSystem=strict", "ProtectSystem=strictly"),
    )
    .unwrap();
    let mut cmd = systemd_analyze(&env);
    cmd.args(["verify", "--man=no"]).arg(&broken);
    let caught = run(cmd);
    assert!(caught.stderr.contains("strictly"), "{caught:#?}");
}

#[test]
fn the_services_are_sandboxed_to_an_exposure_of_at_most_2() {
    let env = TestEnv::new("security");
    let _ = systemd_analyze(&env);
    for unit in SERVICES {
        let mut cmd = systemd_analyze(&env);
        // --threshold is in tenths: the exposure shown as 1.2 is 12.
        cmd.args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(repo("scripts").join(unit));
        let sec = run(cmd);
        assert_eq!(sec.code, Some(0), "{unit} is exposed above 2.0: {sec:#?}");
        assert!(sec.stdout.contains("Overall exposure level"), "{sec:#?}");
    }
}

#[test]
fn the_services_success_exit_status_covers_75_and_not_the_failures_that_need_a_human() {
    for unit in SERVICES {
        let text = read(&repo("scripts").join(unit));
        let ok: BTreeSet<&str> = values(&text, "SuccessExitStatus")
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect();
        assert!(ok.contains("75"), "{unit}: SuccessExitStatus lacks 75");
        for code in ["64", "65", "66", "69", "74", "77", "78"] {
            assert!(
                !ok.contains(code),
                "{unit}: exit {code} must stay a failure"
            );
        }
        assert_eq!(values(&text, "Type"), ["oneshot"], "{unit}");
        assert_eq!(values(&text, "User"), ["frameflush"], "{unit}");
        // The start timeout outlasts the longest run of the example config:
        // max-time + ack-timeout + 1 s.
        let config: serde_json::Value =
            serde_json::from_str(&read(&repo("scripts/config.example.json"))).unwrap();
        let longest = config["max-time"].as_f64().unwrap_or(50.0)
            + config["ack-timeout"].as_f64().unwrap_or(5.0)
            + 1.0;
        let timeout: f64 = values(&text, "TimeoutStartSec")[0].parse().unwrap();
        assert!(
            timeout > longest,
            "{unit}: TimeoutStartSec {timeout} <= {longest}"
        );
    }
}

#[test]
fn the_template_units_differ_from_the_plain_ones_only_in_the_destinations_names() {
    // Settings only (no comments): the template's, with the instance's file
    // names put back to the single destination's, equal the plain unit's.
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Description="))
            .map(str::to_string)
            .collect()
    };
    for (plain, template) in [
        ("frameflush.service", "frameflush@.service"),
        ("frameflush.timer", "frameflush@.timer"),
    ] {
        let t = read(&repo("scripts").join(template))
            .replace("/etc/frameflush/%i.json", "/etc/frameflush/config.json")
            .replace(
                "/etc/frameflush/%i-password",
                "/etc/frameflush/mqtt-password",
            )
            .replace(
                "SyslogIdentifier=frameflush@%i",
                "SyslogIdentifier=frameflush",
            );
        assert_eq!(
            settings(&t),
            settings(&read(&repo("scripts").join(plain))),
            "{template} drifted from {plain}"
        );
    }
    let t = read(&repo("scripts/frameflush@.service"));
    assert!(values(&t, "ExecStart")[0].contains("--config /etc/frameflush/%i.json"));
    assert_eq!(
        values(&t, "LoadCredential"),
        ["mqtt-password:/etc/frameflush/%i-password"]
    );
}

/// A copy of the example config whose database is the test's.
fn example_config_for(env: &TestEnv) -> PathBuf {
    let mut config: serde_json::Value =
        serde_json::from_str(&read(&repo("scripts/config.example.json"))).unwrap();
    config["db"] = env.db_arg().into();
    env.write("config.json", &config.to_string())
}

#[test]
fn the_example_config_is_accepted_by_flush_dry_run() {
    let env = TestEnv::new("example-config");
    env.seed(8);
    let example = repo("scripts/config.example.json");
    let config: serde_json::Value = serde_json::from_str(&read(&example)).unwrap();
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    for secret in ["password", "pw-file"] {
        assert!(
            !keys.iter().any(|k| k.as_str() == secret),
            "the example config must not have {secret:?} (the unit passes --pw-file)"
        );
    }
    let run = env.run(&[
        "flush",
        "--config",
        example.to_str().unwrap(),
        "--db",
        &env.db_arg(),
        "--dry-run",
    ]);
    run.expect_code(0);
    assert_eq!(run.stderr, "", "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{run:#?}");
    assert!(lines[0].starts_with("sensors/node_00/TC\t{"), "{run:#?}");
    // init and status take the same file.
    let config = example_config_for(&env);
    let status = env.run(&["status", "--config", config.to_str().unwrap()]);
    status.expect_code(0);
}

/// The crontab's active lines: not comments, not blank, not `NAME=value`.
fn crontab_jobs() -> Vec<String> {
    read(&repo("scripts/crontab.example"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            !first.contains('=')
        })
        .map(str::to_string)
        .collect()
}

/// The command of a cron line (after the five time fields) with the
/// binary and the config file replaced by the test's.
fn cron_command(line: &str, config: &Path) -> String {
    let fields: Vec<&str> = line.splitn(6, char::is_whitespace).collect();
    assert_eq!(fields.len(), 6, "not a cron line: {line:?}");
    assert_eq!(&fields[..5], ["*"; 5], "not every minute: {line:?}");
    let command = fields[5].trim();
    assert!(
        !command.contains('%'),
        "cron turns % into a newline: {line:?}"
    );
    assert!(command.contains("/usr/local/bin/frameflush "), "{line:?}");
    assert!(
        command.contains(" --config /etc/frameflush/config.json"),
        "{line:?}"
    );
    command
        .replace("/usr/local/bin/frameflush", BIN)
        .replace("/etc/frameflush/config.json", config.to_str().unwrap())
}

#[test]
fn the_crontab_examples_command_line_is_accepted() {
    let env = TestEnv::new("crontab");
    env.seed(5);
    let config = example_config_for(&env);
    let jobs = crontab_jobs();
    assert_eq!(jobs.len(), 1, "one active line expected: {jobs:?}");
    let command = cron_command(&jobs[0], &config);
    let words: Vec<&str> = command.split_whitespace().collect();
    assert!(
        !command.contains(['\'', '"', '$', ';', '|', '>', '&']),
        "a plain command, nothing for the shell to interpret: {command:?}"
    );
    assert_eq!(words[1], "flush");
    assert!(words.contains(&"--quiet"), "{command:?}");
    let mut cmd = clean(words[0], &env);
    cmd.args(&words[1..]).arg("--dry-run");
    let dry = run(cmd);
    dry.expect_code(0);
    assert_eq!(dry.stdout.lines().count(), 5, "{dry:#?}");
    assert_eq!(dry.stderr, "", "{dry:#?}");

    // And it is quiet when it fails: nothing for cron to mail every minute.
    let mut cmd = clean(words[0], &env);
    cmd.args(&words[1..]).args(["--db", "missing.db"]);
    let failed = run(cmd);
    failed.expect_code(66);
    assert_eq!(failed.stderr, "", "{failed:#?}");
}

#[test]
fn the_crontabs_mail_on_failure_alternative_is_silent_when_all_is_well() {
    let env = TestEnv::new("crontab-alt");
    env.seed(3);
    let good = example_config_for(&env);
    let text = read(&repo("scripts/crontab.example"));
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .find(|l| l.starts_with("* * * * * out=$("))
        .expect("the commented mail-on-failure line");
    // As cron would run it: /bin/sh -c COMMAND. --dry-run comes from the
    // config here, the line itself is unchanged.
    let mut config: serde_json::Value = serde_json::from_str(&read(&good)).unwrap();
    config["dry-run"] = true.into();
    let dry = env.write("dry.json", &config.to_string());
    let sh = |config: &Path| {
        let mut cmd = clean("/bin/sh", &env);
        cmd.arg("-c").arg(cron_command(line, config));
        run(cmd)
    };
    let ok = sh(&dry);
    ok.expect_code(0);
    assert_eq!(ok.stdout, "", "{ok:#?}");
    let bad = sh(&env.path("missing.json"));
    bad.expect_code(0);
    assert!(
        bad.stdout
            .starts_with("frameflush: exit 78: frameflush: error: cannot read config file"),
        "{bad:#?}"
    );
}

/// The units' credential setup for a broker without authentication: the
/// LoadCredential= of the password has a SetCredential= fallback of the
/// same name whose value is one empty line (systemd.exec(5), systemd 252: a
/// missing file is then no failure; systemd 252 takes no empty value), and
/// frameflush,
/// given the example config (no user name) and an empty or absent password
/// file, delivers to an anonymous broker; a non-empty one without a user
/// name stays exit 78, before any connection.
#[test]
fn with_no_password_file_or_an_empty_one_the_units_and_the_example_config_serve_an_anonymous_broker()
 {
    for unit in SERVICES {
        let text = read(&repo("scripts").join(unit));
        let load = values(&text, "LoadCredential");
        assert_eq!(load.len(), 1, "{unit}: {load:?}");
        let id = load[0].split(':').next().unwrap();
        assert_eq!(
            values(&text, "SetCredential"),
            [format!("{id}:\\n")],
            "{unit}"
        );
        assert!(
            values(&text, "ExecStart")[0]
                .contains(&format!("--pw-file ${{CREDENTIALS_DIRECTORY}}/{id}")),
            "{unit}"
        );
    }
    let example: serde_json::Value =
        serde_json::from_str(&read(&repo("scripts/config.example.json"))).unwrap();
    assert!(
        example.get("username").is_none(),
        "the example config sets a user name"
    );

    let env = TestEnv::new("anonymous");
    let broker = util::Broker::start(&env);
    let sub = util::Subscriber::connect(broker.port, "sensors/#");
    let mut config = example.clone();
    config["db"] = env.db_arg().into();
    config["host"] = "127.0.0.1".into();
    config["port"] = broker.port.into();
    let config = env.write("config.json", &config.to_string());
    // What the unit passes when the file is missing (SetCredential='s
    // value), when it is empty, and a cron job's --pw-file naming no file.
    let fallback = env.write("fallback-credential", "\n");
    let empty = env.write("empty-credential", "");
    let absent = env.path("absent-password");
    let mut delivered = 0;
    for (i, pw) in [&fallback, &empty, &absent].into_iter().enumerate() {
        let mut db = env.seed(0);
        util::insert_rows(&mut db, 4, 0);
        drop(db);
        let run = env.run(&[
            "flush",
            "--config",
            config.to_str().unwrap(),
            "--pw-file",
            pw.to_str().unwrap(),
        ]);
        run.expect_code(0);
        assert_eq!(run.stderr, "", "{run:#?}");
        delivered += 4;
        assert_eq!(
            sub.wait_for(delivered, Duration::from_secs(10)).len(),
            delivered,
            "run {i}"
        );
    }
    let set = env.write("set-password", "s3cret\n");
    let run = env.run(&[
        "flush",
        "--config",
        config.to_str().unwrap(),
        "--pw-file",
        set.to_str().unwrap(),
    ]);
    run.expect_code(78)
        .expect_one_error_line("a password is set but no user name");
    assert!(!run.stderr.contains("s3cret"));
}
