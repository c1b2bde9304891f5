//! `frameflush check` against real mosquitto processes (MQTT 3.1.1 and 5,
//! TLS and plain): the verdict of each step, the exit status of the first
//! failure, that nothing in the database changes, and that no secret is
//! ever printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::{Broker, Pki, Run, Subscriber, TestEnv, sync_bits};

const PASSWORD: &str = "check-pw-5e1d";
const LIMIT: Duration = Duration::from_secs(60);

/// Nothing that is a secret (the password, any line of key material)
/// appears in anything the tool printed.
fn assert_no_secrets(run: &Run) {
    let mut secrets = vec![PASSWORD.to_string()];
    secrets.extend(Pki::get().secret_lines());
    for s in secrets {
        assert!(
            !run.stdout.contains(&s) && !run.stderr.contains(&s),
            "a secret was printed: {run:#?}"
        );
    }
}

/// `frameflush check ARGS` in the test directory, as the timer's user
/// would run it (with FRAMEFLUSH_PASSWORD when given).
fn check(env: &TestEnv, args: &[&str], password: Option<&str>) -> Run {
    let mut cmd = env.cmd(&[&["check"], args].concat());
    if let Some(pw) = password {
        cmd.env("FRAMEFLUSH_PASSWORD", pw);
    }
    let run = util::run_cmd(cmd, LIMIT);
    assert_no_secrets(&run);
    run
}

/// The report's lines of one step with one status (`ok`, `warn`, `FAIL`,
/// `skip`).
fn lines<'a>(run: &'a Run, status: &str, step: &str) -> Vec<&'a str> {
    let head = format!("{status:<5}{step}: ");
    run.stdout
        .lines()
        .filter(|l| l.starts_with(&head))
        .collect()
}

/// Asserts a line of this step and status containing every needle.
#[track_caller]
fn expect_line(run: &Run, status: &str, step: &str, needles: &[&str]) {
    assert!(
        lines(run, status, step)
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n))),
        "no `{status} {step}` line with {needles:?}:\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

/// Every line of the report is a step: `ok`, `warn`, `FAIL` or `skip`.
#[track_caller]
fn expect_only_steps(run: &Run) {
    for l in run.stdout.lines() {
        assert!(
            ["ok   ", "warn ", "FAIL ", "skip "]
                .iter()
                .any(|p| l.starts_with(p)),
            "not a step line: {l:?}\n{}",
            run.stdout
        );
    }
}

/// A database of `n` rows with frameflush's index (so that nothing but the
/// thing under test is reported), and its bytes.
fn seeded(env: &TestEnv, n: usize) -> Vec<u8> {
    drop(env.seed(n));
    env.run(&["init", "--db", &env.db_arg()]).expect_code(0);
    std::fs::read(env.db()).unwrap()
}

fn args<'a>(db: &'a str, url: &'a str, version: &'a str) -> Vec<&'a str> {
    vec!["--db", db, "-L", url, "-V", version]
}

#[test]
fn all_ok_exits_0_publishes_the_next_messages_once_and_leaves_every_sync_value_and_the_file_as_they_were()
 {
    for version in ["5", "311"] {
        let env = TestEnv::new("check-ok");
        let bytes = seeded(&env, 20);
        let before = sync_bits(&env.db());
        let broker = Broker::start(&env);
        let sub = Subscriber::connect(broker.port, "sensors/#");
        let (db, url) = (env.db_arg(), broker.url());
        let run = check(&env, &args(&db, &url, version), None);
        run.expect_code(0);
        assert_eq!(run.stderr, "", "{run:#?}");
        expect_only_steps(&run);
        for status in ["warn", "FAIL"] {
            assert!(
                !run.stdout.lines().any(|l| l.starts_with(status)),
                "{version}: {}",
                run.stdout
            );
        }
        let label = if version == "5" {
            "MQTT 5"
        } else {
            "MQTT 3.1.1"
        };
        expect_line(&run, "ok", "connack", &["accepted", label]);
        expect_line(&run, "ok", "backlog", &["20 unsent row(s)"]);
        expect_line(&run, "ok", "index", &["frameflush_unsent_64 is there"]);
        expect_line(&run, "ok", "templates", &["20 message(s) on 20 topic(s)"]);
        expect_line(
            &run,
            "ok",
            "topics",
            &["20 topic(s) in the 20 unsent row(s)"],
        );
        for topic in [
            "sensors/node_00/TC",
            "sensors/node_01/HUM",
            "sensors/node_02/PRES",
        ] {
            expect_line(
                &run,
                "ok",
                "round-trip",
                &[topic, "delivered back through the subscription"],
            );
        }
        expect_line(
            &run,
            "ok",
            "round-trip",
            &[
                "20 of 20 topic(s) checked, none refused",
                "20 delivered back",
            ],
        );
        expect_line(&run, "ok", "duplicates", &["1 duplicate per topic checked"]);
        expect_line(&run, "ok", "ceiling", &["messages/s", "readings/s"]);
        // The real next message of every topic went out, once each, and
        // nothing changed.
        let mut got: Vec<i64> = sub
            .wait_for(20, Duration::from_secs(10))
            .iter()
            .map(|m| m.id())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (1..=20).collect::<Vec<i64>>(), "{version}");
        assert_eq!(sync_bits(&env.db()), before);
        assert!(
            std::fs::read(env.db()).unwrap() == bytes,
            "{version}: the database file changed"
        );
        // And a flush afterwards sends all 20 (the 3 checked once more).
        env.run(&["flush", "--db", &db, "-L", &url, "-V", version])
            .expect_code(0);
        assert_eq!(util::marked_ids(&env.db(), 64).len(), 20);
    }
}

/// Anonymous clients may read everything under sensors/, and publish
/// everywhere but under sensors/node_00/ (the next row's topic).
/// `queued`: mosquitto's default max_queued_messages (1000) acknowledges a
/// 3.1.1 client's refused PUBLISH and drops it; with 0 it closes the
/// connection.
fn acl_broker(env: &TestEnv, queued: u32) -> Broker {
    let acl = env.write(
        "acl",
        "topic read sensors/node_00/#\ntopic readwrite sensors/node_01/#\ntopic readwrite sensors/node_02/#\n",
    );
    Broker::start_with(
        env,
        &format!(
            "allow_anonymous true\nacl_file {}\nmax_queued_messages {queued}\n",
            acl.display()
        ),
    )
}

#[test]
fn an_acl_that_denies_the_next_rows_topic_fails_naming_it_by_the_reason_code_under_mqtt_5_and_by_the_missing_echo_under_3_1_1()
 {
    for (version, queued) in [("5", 1000), ("311", 1000), ("311", 0)] {
        let env = TestEnv::new("check-acl");
        let bytes = seeded(&env, 20);
        let broker = acl_broker(&env, queued);
        let (db, url) = (env.db_arg(), broker.url());
        let mut a = args(&db, &url, version);
        a.extend(["--ack-timeout", "2"]);
        let run = check(&env, &a, None);
        let (codes, why): (&[i32], &str) = match (version, queued) {
            ("5", _) => (&[77], "0x87 Not authorized"),
            (_, 1000) => (&[77], "acknowledged the message but did not route it"),
            // mosquitto acknowledges and closes the connection: when the
            // PUBACK is lost with the connection, a flush would charge the
            // message (65); when it comes through, the topic is refused (77).
            _ => (&[65, 77], ""),
        };
        assert!(
            codes.iter().any(|&c| run.code == Some(c)),
            "{version}/{queued}: {run:#?}"
        );
        // With max_queued_messages 0 the broker closes the connection on
        // each refused topic, and whether its PUBACK gets through first
        // varies: the topic is named as refused either way.
        let why = if queued == 0 { "" } else { why };
        expect_line(&run, "FAIL", "round-trip", &["sensors/node_00/TC", why]);
        if queued == 0 {
            expect_line(&run, "FAIL", "round-trip", &["closed the connection"]);
        }
        run.expect_one_error_line(if queued == 0 {
            "topic(s) checked"
        } else {
            "sensors/node_00/TC"
        });
        // The allowed topics went through; only they are duplicates (the
        // 4 topics each of node_01 and node_02; node_03 and node_04 are
        // refused too, as the ACL file lists neither).
        expect_line(&run, "ok", "round-trip", &["sensors/node_01/HUM"]);
        expect_line(&run, "ok", "round-trip", &["sensors/node_02/PRES"]);
        if queued != 0 {
            expect_line(&run, "ok", "duplicates", &["the 8 message(s)"]);
            expect_line(
                &run,
                "FAIL",
                "round-trip",
                &["20 of 20 topic(s) checked, 12 "],
            );
        }
        assert!(std::fs::read(env.db()).unwrap() == bytes);
    }
}

/// mosquitto's dynamic security plugin, where Debian, Fedora and a source
/// install put it.
fn dynsec_plugin() -> String {
    let mut dirs: Vec<std::path::PathBuf> = ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in &dirs {
        for p in [
            d.join("mosquitto_dynamic_security.so"),
            d.join("mosquitto/mosquitto_dynamic_security.so"),
        ] {
            if p.is_file() {
                return p.display().to_string();
            }
        }
    }
    panic!(
        "mosquitto_dynamic_security.so (mosquitto's dynamic security plugin, in Debian's mosquitto package) not found under {dirs:?}"
    );
}

#[test]
fn a_subscription_the_broker_refuses_is_a_warning_and_the_puback_alone_is_reported() {
    for version in ["5", "311"] {
        let env = TestEnv::new("check-subdeny");
        seeded(&env, 5);
        // mosquitto's dynamic security plugin refuses subscriptions (its
        // ACL file grants them and then delivers nothing).
        let dynsec = env.write(
            "dynsec.json",
            r#"{"defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": false, "unsubscribe": true}, "clients": [], "groups": [], "roles": []}"#,
        );
        let broker = Broker::start_with(
            &env,
            &format!(
                "allow_anonymous true\nplugin {}\nplugin_opt_config_file {}\n",
                dynsec_plugin(),
                dynsec.display()
            ),
        );
        let (db, url) = (env.db_arg(), broker.url());
        let run = check(&env, &args(&db, &url, version), None);
        run.expect_code(0);
        let code = if version == "5" { "0x87" } else { "0x80" };
        expect_line(
            &run,
            "warn",
            "subscribe",
            &[
                "cannot verify routing",
                code,
                "the ACL does not let this user read the topic",
            ],
        );
        expect_line(
            &run,
            "warn",
            "round-trip",
            &["sensors/node_00/TC", "acknowledged", "not verified"],
        );
        assert!(
            lines(&run, "FAIL", "round-trip").is_empty(),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn a_broker_that_is_down_gives_69_and_the_steps_that_need_it_are_skipped() {
    let env = TestEnv::new("check-down");
    seeded(&env, 5);
    let url = format!("mqtt://127.0.0.1:{}", util::refused_port());
    let run = check(&env, &args(&env.db_arg(), &url, "5"), None);
    run.expect_code(69)
        .expect_one_error_line("connection refused");
    expect_line(&run, "FAIL", "tcp", &["nothing listens on 127.0.0.1"]);
    for step in ["connack", "limits", "round-trip"] {
        assert_eq!(lines(&run, "skip", step).len(), 1, "{step}: {}", run.stdout);
    }
    // The database steps still tell what they found.
    expect_line(&run, "ok", "backlog", &["5 unsent row(s)"]);
}

fn auth_broker(env: &TestEnv) -> Broker {
    let pw = env.path("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["gateway", PASSWORD])
        .output()
        .expect("mosquitto_passwd is installed with mosquitto");
    assert!(out.status.success(), "{out:?}");
    Broker::start_with(
        env,
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    )
}

#[test]
fn a_wrong_password_gives_77_and_the_right_one_passes_and_neither_is_ever_printed() {
    let env = TestEnv::new("check-auth");
    seeded(&env, 5);
    let broker = auth_broker(&env);
    let url = format!("mqtt://gateway@127.0.0.1:{}", broker.port);
    let db = env.db_arg();
    for version in ["5", "311"] {
        let run = check(&env, &args(&db, &url, version), Some("wrong-password"));
        assert!(!run.stdout.contains("wrong-password") && !run.stderr.contains("wrong-password"));
        // mosquitto answers a wrong password with 0x87 under MQTT 5, and
        // return code 5 (not authorized) under 3.1.1.
        run.expect_code(77)
            .expect_one_error_line("check --username and the password");
        expect_line(&run, "FAIL", "connack", &["refused the connection"]);
        expect_line(
            &run,
            "ok",
            "config",
            &["user gateway with the password from the environment variable FRAMEFLUSH_PASSWORD"],
        );
        assert_eq!(lines(&run, "skip", "round-trip").len(), 1);
    }
    let pw = env.write("pw", &format!("{PASSWORD}\n"));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw_arg = pw.display().to_string();
    let mut a = args(&db, &url, "5");
    a.extend(["--pw-file", &pw_arg, "--json"]);
    let run = check(&env, &a, None);
    run.expect_code(0);
    assert_eq!(run.json()["exit_code"], 0);
}

/// A mosquitto with a TLS listener serving `cert`/`key` (signed by the test
/// CA), optionally asking for a client certificate.
fn tls_broker(env: &TestEnv, cert: &str, key: &str, require_certificate: bool) -> Broker {
    let pki = Pki::get();
    Broker::start_with(
        env,
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate {require_certificate}\n",
            pki.path("ca.pem")
        ),
    )
}

#[test]
fn tls_with_the_wrong_ca_gives_69_naming_the_certificates_problem() {
    let env = TestEnv::new("check-wrongca");
    seeded(&env, 5);
    let pki = Pki::get();
    let broker = tls_broker(
        &env,
        &pki.path("server.pem"),
        &pki.path("server.key"),
        false,
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let other = pki.path("other-ca.pem");
    let db = env.db_arg();
    let mut a = args(&db, &url, "5");
    a.extend(["--cafile", &other]);
    let run = check(&env, &a, None);
    run.expect_code(69)
        .expect_one_error_line("not signed by a trusted CA");
    expect_line(
        &run,
        "FAIL",
        "tls",
        &[
            "the broker's certificate is not signed by a trusted CA",
            "--cafile",
        ],
    );
    assert_eq!(lines(&run, "skip", "connack").len(), 1, "{}", run.stdout);
}

#[test]
fn a_broker_certificate_expiring_in_10_days_warns_and_mutual_tls_shows_the_client_certificate() {
    let env = TestEnv::new("check-expiry");
    let bytes = seeded(&env, 5);
    let pki = Pki::get();
    // A server certificate for 127.0.0.1 valid for 10 days, signed by the
    // test CA.
    let openssl = |a: &[&str]| {
        let out = Command::new("openssl")
            .args(a)
            .current_dir(&env.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {a:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "soon.key",
        "-out",
        "soon.csr",
        "-subj",
        "/CN=soon to expire",
    ]);
    let (ca, ca_key, ext) = (
        pki.path("ca.pem"),
        pki.path("ca.key"),
        pki.path("server.ext"),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "soon.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "4242",
        "-out",
        "soon.pem",
        "-days",
        "10",
        "-extfile",
        &ext,
    ]);
    let soon_key = env.path("soon.key");
    std::fs::set_permissions(&soon_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let broker = tls_broker(
        &env,
        &env.path("soon.pem").display().to_string(),
        &soon_key.display().to_string(),
        true,
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let (cert, key) = (pki.path("client-pkcs8.pem"), pki.path("client-pkcs8.key"));
    let db = env.db_arg();
    let mut a = args(&db, &url, "5");
    a.extend(["--cafile", &ca, "--cert", &cert, "--key", &key]);
    let run = check(&env, &a, None);
    println!("{}", run.stdout);
    run.expect_code(0);
    expect_line(
        &run,
        "warn",
        "tls",
        &["CN=soon to expire", "expires in 10 day(s)", "renew it"],
    );
    expect_line(
        &run,
        "ok",
        "tls-files",
        &["client certificate", "client-pkcs8.pem", "(365 days)"],
    );
    // Everything else over TLS is fine: the round trip went through.
    assert_eq!(lines(&run, "ok", "round-trip").len(), 4, "{}", run.stdout);
    expect_line(&run, "ok", "round-trip", &["none refused"]);
    assert!(std::fs::read(env.db()).unwrap() == bytes);
}

/// Restores a mode when dropped (a failed assertion must not leave a
/// directory the cleanup cannot remove).
struct RestoreMode<'a>(&'a Path, u32);

impl Drop for RestoreMode<'_> {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(self.1));
    }
}

#[test]
fn a_read_only_database_gives_74_for_an_unprivileged_user() {
    let env = TestEnv::new("check-readonly");
    let dir = env.path("ro");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("sensors.db");
    drop(util::seed_at(&db, 5));
    let db_arg = db.display().to_string();
    env.run(&["init", "--db", &db_arg]).expect_code(0);
    let before = std::fs::read(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let _restore = RestoreMode(&dir, 0o755);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let broker = Broker::start(&env);
    let url = broker.url();
    let a = [
        "check",
        "--db",
        &db_arg,
        "-L",
        &url,
        "-V",
        "5",
        "--no-publish",
    ];
    let run = util::run_cmd(env.cmd_unprivileged(&a), LIMIT);
    run.expect_code(74)
        .expect_one_error_line("not writable by this user");
    expect_line(
        &run,
        "FAIL",
        "writable",
        &["sensors.db is not writable by this user"],
    );
    expect_line(
        &run,
        "FAIL",
        "writable",
        &["its directory", "is not writable"],
    );
    // Reading still works: the rest is reported.
    expect_line(&run, "ok", "backlog", &["5 unsent row(s)"]);
    expect_line(&run, "ok", "connack", &["accepted"]);
    assert!(std::fs::read(&db).unwrap() == before);
}

#[test]
fn a_missing_index_is_reported_and_init_makes_it() {
    let env = TestEnv::new("check-index");
    drop(env.seed(5));
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let mut a = args(&db, &url, "5");
    a.push("--no-publish");
    let run = check(&env, &a, None);
    run.expect_code(0);
    expect_line(
        &run,
        "warn",
        "index",
        &[
            "frameflush_unsent_64 is missing",
            "the next run creates it",
            "frameflush init",
        ],
    );
    expect_line(&run, "skip", "round-trip", &["--no-publish"]);
    env.run(&["init", "--db", &db]).expect_code(0);
    let run = check(&env, &a, None);
    expect_line(&run, "ok", "index", &["frameflush_unsent_64 is there"]);
}

#[test]
fn a_row_over_the_brokers_maximum_packet_size_is_named_and_the_other_topics_still_go_round() {
    let env = TestEnv::new("check-maxpacket");
    seeded(&env, 20);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute(
        "UPDATE sensorParser SET value = ?1 WHERE id = 2",
        ["9".repeat(3000)],
    )
    .unwrap();
    drop(c);
    let broker = Broker::start_with(&env, "allow_anonymous true\nmax_packet_size 2000\n");
    let run = check(&env, &args(&env.db_arg(), &broker.url(), "5"), None);
    run.expect_code(65).expect_one_error_line("row 2");
    expect_line(
        &run,
        "FAIL",
        "row",
        &[
            "row 2 cannot be sent",
            "exceeds the broker's Maximum Packet Size of 2000 bytes",
        ],
    );
    expect_line(
        &run,
        "warn",
        "limits",
        &["Maximum Packet Size 2000 bytes", "--max-payload"],
    );
    let trips = lines(&run, "ok", "round-trip");
    assert_eq!(trips.len(), 4, "{}", run.stdout);
    assert!(trips.iter().all(|t| !t.contains("row 2,")), "{trips:?}");
    expect_line(
        &run,
        "ok",
        "round-trip",
        &["19 of 19 topic(s) checked, none refused"],
    );
    assert!(!broker.log().contains("oversize"), "{}", broker.log());
}

#[test]
fn json_prints_one_valid_object_with_every_step_and_the_exit_status() {
    let env = TestEnv::new("check-json");
    seeded(&env, 5);
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let mut a = args(&db, &url, "5");
    a.push("--json");
    let run = check(&env, &a, None);
    run.expect_code(0);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    let v = run.json();
    assert_eq!(v["exit_code"], 0);
    assert!(v["error"].is_null());
    let steps = v["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in [
        "config",
        "database",
        "writable",
        "index",
        "backlog",
        "lock",
        "dns",
        "tcp",
        "tls",
        "connack",
        "limits",
        "templates",
        "message",
        "topics",
        "round-trip",
        "duplicates",
        "ceiling",
        "timer",
        "last-run",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for s in steps {
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&s["status"].as_str().unwrap()),
            "{s}"
        );
        assert!(s["text"].is_string(), "{s}");
    }
    let backlog = steps.iter().find(|s| s["name"] == "backlog").unwrap();
    assert_eq!(backlog["figures"]["unsent"], 5);
    let trip = steps.iter().find(|s| s["name"] == "round-trip").unwrap();
    assert_eq!(trip["figures"]["echo"], true);
    // A failing check: the object carries the status and the error line.
    let down = format!("mqtt://127.0.0.1:{}", util::refused_port());
    let mut a = args(&db, &down, "5");
    a.push("--json");
    let run = check(&env, &a, None);
    run.expect_code(69);
    let v = run.json();
    assert_eq!(v["exit_code"], 69);
    let line = run
        .stderr
        .trim_end()
        .strip_prefix("frameflush: error: ")
        .unwrap();
    assert_eq!(v["error"], line);
    let tcp = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tcp")
        .unwrap()
        .clone();
    assert_eq!(tcp["status"], "fail");
    assert_eq!(tcp["exit_code"], 69);
}

#[test]
fn the_man_page_and_the_readme_document_check_with_a_sample_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let man = std::fs::read_to_string(root.join("man/frameflush.1")).unwrap();
    assert!(
        readme.contains("frameflush check"),
        "README lacks `frameflush check`"
    );
    assert!(
        man.contains(".SS \"check options\""),
        "the man page has no check options"
    );
    // A sample output: the lines of a real report, in both.
    for step in ["connack:", "round-trip:", "duplicates:"] {
        assert!(
            readme
                .lines()
                .any(|l| l.starts_with("ok   ") && l.contains(step)),
            "README has no sample `ok   {step}` line"
        );
        assert!(man.contains(step), "the man page has no sample {step} line");
    }
}

/// A fresh table whose oldest 50 rows belong to node_00 and node_01 only,
/// followed by 200 rows of five nodes on 24 sensors each (120 topics, 24
/// of them node_03's): the first chunk a run reads (`--batch 50`) has
/// nothing of node_03.
fn node_backlog(env: &TestEnv) {
    let mut c = env.create_db();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp)
                 VALUES (?1, '400577471', 134, ?2, ?3, '21.5', '2026-11-24 10:00:00')",
            )
            .unwrap();
        for i in 0..50 {
            st.execute(rusqlite::params![
                format!("node_{:02}", i % 2),
                i,
                format!("S{:02}", (i / 2) % 24)
            ])
            .unwrap();
        }
        for j in 0..200 {
            st.execute(rusqlite::params![
                format!("node_{:02}", j % 5),
                j,
                format!("S{:02}", (j / 5) % 24)
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    drop(c);
    env.run(&["init", "--db", &env.db_arg()]).expect_code(0);
}

#[test]
fn a_node_the_acl_refuses_anywhere_in_the_backlog_fails_naming_it_under_mqtt_5_and_3_1_1() {
    for version in ["5", "311"] {
        let env = TestEnv::new("check-node03");
        node_backlog(&env);
        let bytes = std::fs::read(env.db()).unwrap();
        let acl = env.write(
            "acl",
            "topic readwrite sensors/node_00/#\ntopic readwrite sensors/node_01/#\ntopic readwrite sensors/node_02/#\ntopic read sensors/node_03/#\ntopic readwrite sensors/node_04/#\n",
        );
        let broker = Broker::start_with(
            &env,
            &format!(
                "allow_anonymous true\nacl_file {}\nmax_queued_messages 1000\n",
                acl.display()
            ),
        );
        let (db, url) = (env.db_arg(), broker.url());
        let mut a = args(&db, &url, version);
        a.extend(["--ack-timeout", "3", "--batch", "50"]);
        let run = check(&env, &a, None);
        run.expect_code(77);
        expect_line(
            &run,
            "ok",
            "topics",
            &["120 topic(s) in the 250 unsent row(s)", "3 batch(es)"],
        );
        let why = if version == "5" {
            "0x87 Not authorized"
        } else {
            "acknowledged the message but did not route it"
        };
        expect_line(
            &run,
            "FAIL",
            "round-trip",
            &[
                "120 of 120 topic(s) checked, 24 ",
                "sensors/node_03/… (24 topics: sensors/node_03/S00, ",
                why,
            ],
        );
        run.expect_one_error_line("sensors/node_03/");
        // Only node_03 is named: every other topic went round.
        for l in run.stdout.lines().filter(|l| l.starts_with("FAIL")) {
            assert!(l.contains("node_03"), "{l}\n{}", run.stdout);
        }
        assert!(
            lines(&run, "warn", "round-trip").is_empty(),
            "{}",
            run.stdout
        );
        expect_line(&run, "ok", "duplicates", &["the 96 message(s)"]);
        assert!(std::fs::read(env.db()).unwrap() == bytes);
        // Within the bound it states (3 batches: 7 waits of 3 s).
        assert!(run.elapsed < Duration::from_secs(21), "{:?}", run.elapsed);
        println!("-V {version}: check took {:?}", run.elapsed);
    }
}

#[test]
fn the_ceiling_of_a_default_mosquitto_is_its_receive_maximum_of_20_per_round_trip() {
    let env = TestEnv::new("check-ceiling");
    seeded(&env, 30);
    // The harness's mosquitto keeps max_inflight_messages at its default
    // (20).
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let run = check(&env, &args(&db, &url, "5"), None);
    run.expect_code(0);
    expect_line(
        &run,
        "ok",
        "limits",
        &["Receive Maximum 20 (caps --inflight 100 to 20)"],
    );
    expect_line(
        &run,
        "ok",
        "ceiling",
        &[
            "window 20 (the broker's Receive Maximum 20; --inflight 100)",
            "over a round trip of",
            "messages/s",
            "readings/s (1.0 per message)",
            "`--group frame`",
            "max_inflight_messages",
        ],
    );
    let mut a = args(&db, &url, "5");
    a.push("--json");
    let v = check(&env, &a, None).json();
    let ceiling = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ceiling")
        .unwrap()
        .clone();
    let f = &ceiling["figures"];
    assert_eq!(f["window"], 20, "{ceiling}");
    assert_eq!(f["receive_maximum"], 20, "{ceiling}");
    let rtt = f["round_trip_ms"].as_f64().unwrap();
    let rate = f["messages_per_s"].as_f64().unwrap();
    assert!(rtt > 0.0, "{ceiling}");
    assert!((rate * rtt / 1000.0 - 20.0).abs() < 0.01, "{ceiling}");
    assert_eq!(f["readings_per_s"].as_f64().unwrap(), rate);
    // Under 3.1.1 the window is --inflight, and check says that a run
    // cannot see a refusal.
    let run = check(&env, &args(&db, &url, "311"), None);
    run.expect_code(0);
    expect_line(
        &run,
        "ok",
        "ceiling",
        &["window 100 (--inflight 100; MQTT 3.1.1 has no Receive Maximum)"],
    );
    expect_line(&run, "ok", "round-trip", &["a run cannot see a refusal"]);
    expect_line(&run, "ok", "limits", &["invisible to a run"]);
}

#[test]
fn a_broker_that_never_acknowledges_fails_the_round_trip_with_75_within_the_bound_it_states() {
    let env = TestEnv::new("check-ackless");
    seeded(&env, 20);
    // Accepts one connection at a time and never sends a PUBACK.
    let fake = util::AcklessBroker::start();
    let url = format!("mqtt://127.0.0.1:{}", fake.port);
    let db = env.db_arg();
    let mut a = args(&db, &url, "311");
    a.extend(["--ack-timeout", "1", "--connect-timeout", "2"]);
    let run = check(&env, &a, None);
    run.expect_code(75)
        .expect_one_error_line("no PUBACK within --ack-timeout 1 s");
    expect_line(&run, "ok", "topics", &["20 topic(s)", "3 s in all at most"]);
    expect_line(
        &run,
        "FAIL",
        "round-trip",
        &["1 unanswered: sensors/node_00/TC"],
    );
    expect_line(
        &run,
        "warn",
        "round-trip",
        &["19 other topic(s) not checked"],
    );
    // The round trip's bound (3 s), the subscriber's connection attempt
    // (2 s) and the rest of the check, with a margin for a loaded machine.
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
    println!(
        "check against a broker that never acknowledges: {:?}",
        run.elapsed
    );
}

#[test]
fn the_ceiling_counts_readings_per_message_and_what_group_frame_would_carry() {
    let env = TestEnv::new("check-ceiling-frames");
    // Waspmote frames of six readings: one node, one frame number, one
    // timestamp, six sensors.
    let c = env.create_db();
    for frame in 0..10 {
        for sensor in ["TC", "HUM", "PRES", "BAT", "CO2", "NO2"] {
            c.execute(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp)
                 VALUES (?1, '400577471', 128, ?2, ?3, '1.5', ?4)",
                rusqlite::params![
                    format!("node_{:02}", frame % 2),
                    frame,
                    sensor,
                    format!("2026-11-24 10:{frame:02}:00")
                ],
            )
            .unwrap();
        }
    }
    drop(c);
    env.run(&["init", "--db", &env.db_arg()]).expect_code(0);
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let run = check(&env, &args(&db, &url, "5"), None);
    run.expect_code(0);
    expect_line(
        &run,
        "ok",
        "ceiling",
        &[
            "(1.0 per message)",
            "`--group frame` (6.0 readings per message in the next rows)",
        ],
    );
    let mut a = args(&db, &url, "5");
    a.extend(["--group", "frame", "--json"]);
    let v = check(&env, &a, None).json();
    let ceiling = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ceiling")
        .unwrap()
        .clone();
    let f = &ceiling["figures"];
    assert_eq!(f["readings_per_message"], 6.0, "{ceiling}");
    let (m, r) = (
        f["messages_per_s"].as_f64().unwrap(),
        f["readings_per_s"].as_f64().unwrap(),
    );
    assert!((r - 6.0 * m).abs() < 1e-6 * r, "{ceiling}");
    assert!(
        ceiling["text"].as_str().unwrap().contains(
            "a larger Receive Maximum on the broker (mosquitto: max_inflight_messages) raises it"
        ),
        "{ceiling}"
    );
}
