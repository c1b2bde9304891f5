//! TLS and mutual TLS against real mosquitto TLS listeners, with a PKI made
//! by the `openssl` command; and secrets that never print.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::net::TcpListener;
use std::time::Duration;

use util::{Broker, Pki, Run, Subscriber, TestEnv, marked_ids};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "tls-pw-7f3a9c";

/// A broker with a TLS listener (its `port`) and a plain one for the
/// subscriber.
fn tls_broker(
    env: &TestEnv,
    server: &str,
    require_certificate: bool,
    extra: &str,
) -> (Broker, u16) {
    let plain = util::free_port();
    let pki = Pki::get();
    let conf = format!(
        "{extra}{}",
        pki.listener_conf(server, require_certificate, plain)
    );
    (Broker::start_with(env, &conf), plain)
}

/// Nothing that is a secret appears in anything the tool printed.
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

fn run_checked(env: &TestEnv, args: &[&str]) -> Run {
    let run = env.run(args);
    assert_no_secrets(&run);
    run
}

#[test]
fn tls_with_the_brokers_ca_delivers_through_an_mqtts_url_or_cafile_alone() {
    let env = TestEnv::new("tls");
    env.seed(20);
    let (broker, plain) = tls_broker(&env, "server", false, "allow_anonymous true\n");
    let sub = Subscriber::connect(plain, "#");
    let pki = Pki::get();
    let (db, ca) = (env.db_arg(), pki.path("ca.pem"));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let run = run_checked(
        &env,
        &[
            "flush", "--db", &db, "-L", &url, "--cafile", &ca, "--limit", "10",
        ],
    );
    run.expect_code(0);
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let port = broker.port.to_string();
    // --cafile alone turns TLS on; localhost is in the certificate too.
    run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "--host",
            "localhost",
            "--port",
            &port,
            "--cafile",
            &ca,
        ],
    )
    .expect_code(0);
    assert_eq!(sub.wait_for(20, WAIT).len(), 20);
    assert_eq!(marked_ids(&env.db(), 64).len(), 20);
}

#[test]
fn mutual_tls_delivers_with_a_client_certificate_in_every_key_format_and_is_refused_without_one() {
    let env = TestEnv::new("mtls");
    let mut c = env.seed(0);
    let (broker, plain) = tls_broker(&env, "server", true, "allow_anonymous true\n");
    let sub = Subscriber::connect(plain, "#");
    let pki = Pki::get();
    let (db, ca) = (env.db_arg(), pki.path("ca.pem"));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);

    // Refused without a client certificate: nothing marked.
    util::insert_rows(&mut c, 5, 0);
    let run = run_checked(
        &env,
        &["flush", "--db", &db, "-L", &url, "--cafile", &ca, "--json"],
    );
    run.expect_code(77)
        .expect_one_error_line("refused the TLS client certificate");
    assert_eq!(run.json()["marked"], 0);
    assert!(marked_ids(&env.db(), 64).is_empty());

    for (i, format) in ["pkcs8", "pkcs1", "sec1"].into_iter().enumerate() {
        let (cert, key) = (
            pki.path(&format!("client-{format}.pem")),
            pki.path(&format!("client-{format}.key")),
        );
        let run = run_checked(
            &env,
            &[
                "flush", "--db", &db, "-L", &url, "--cafile", &ca, "--cert", &cert, "--key", &key,
            ],
        );
        run.expect_code(0);
        assert_eq!(run.stderr, "", "{format}");
        assert_eq!(marked_ids(&env.db(), 64).len(), 5 * (i + 1), "{format}");
        util::insert_rows(&mut c, 5, 0);
    }
    assert_eq!(sub.wait_for(15, WAIT).len(), 15);
}

#[test]
fn a_broker_certificate_from_an_unknown_ca_gives_69_and_marks_nothing() {
    let env = TestEnv::new("wrongca");
    env.seed(5);
    let (broker, plain) = tls_broker(&env, "server", false, "allow_anonymous true\n");
    let sub = Subscriber::connect(plain, "#");
    let (db, other) = (env.db_arg(), Pki::get().path("other-ca.pem"));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let run = run_checked(
        &env,
        &[
            "flush", "--db", &db, "-L", &url, "--cafile", &other, "--json",
        ],
    );
    run.expect_code(69)
        .expect_one_error_line("not signed by a trusted CA");
    assert_eq!(run.json()["exit_code"], 69);
    // The system's CAs do not know the test CA either: no --cafile reads the
    // system bundle (without panicking) and fails the same way.
    let run = run_checked(&env, &["flush", "--db", &db, "-L", &url]);
    run.expect_code(69)
        .expect_one_error_line("not signed by a trusted CA");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sub.count(), 0);
    assert!(marked_ids(&env.db(), 64).is_empty());
}

#[test]
fn a_broker_certificate_for_another_host_name_gives_69_unless_insecure_which_warns() {
    let env = TestEnv::new("wrongname");
    env.seed(5);
    let (broker, plain) = tls_broker(&env, "wrongname", false, "allow_anonymous true\n");
    let sub = Subscriber::connect(plain, "#");
    let (db, ca) = (env.db_arg(), Pki::get().path("ca.pem"));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let run = run_checked(&env, &["flush", "--db", &db, "-L", &url, "--cafile", &ca]);
    run.expect_code(69)
        .expect_one_error_line("not valid for the host name 127.0.0.1");
    assert!(marked_ids(&env.db(), 64).is_empty());
    let run = run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--cafile",
            &ca,
            "--insecure",
        ],
    );
    run.expect_code(0);
    assert_eq!(
        run.stderr,
        "frameflush: warning: --insecure: the broker's certificate is not checked against its host name\n"
    );
    assert_eq!(sub.wait_for(5, WAIT).len(), 5);
    // --insecure still checks the chain: another CA is refused.
    let mut c = rusqlite::Connection::open(env.db()).unwrap();
    util::insert_rows(&mut c, 1, 0);
    let other = Pki::get().path("other-ca.pem");
    run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--cafile",
            &other,
            "--insecure",
        ],
    )
    .expect_code(69);
}

#[test]
fn username_and_password_over_tls_deliver_and_a_bad_password_gives_77() {
    let env = TestEnv::new("tlsauth");
    let mut c = env.seed(3);
    let passwd = env.path("passwd");
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gateway", PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success());
    let extra = format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    );
    let (broker, plain) = tls_broker(&env, "server", false, &extra);
    let sub = Subscriber::connect_as(plain, "#", "gateway", PASSWORD);
    let (db, ca) = (env.db_arg(), Pki::get().path("ca.pem"));
    let url = format!("mqtts://gateway@127.0.0.1:{}", broker.port);
    let pw = env.write("pw", &format!("{PASSWORD}\n"));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw_arg = pw.display().to_string();
    let run = run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--cafile",
            &ca,
            "--pw-file",
            &pw_arg,
            "-d",
        ],
    );
    run.expect_code(0);
    assert_eq!(sub.wait_for(3, WAIT).len(), 3);

    util::insert_rows(&mut c, 2, 0);
    let mut cmd = env.cmd(&[
        "flush", "--db", &db, "-L", &url, "--cafile", &ca, "--json", "-d",
    ]);
    cmd.env("FRAMEFLUSH_PASSWORD", "not-the-password");
    let run = util::run_cmd(cmd, WAIT);
    assert_no_secrets(&run);
    assert!(!run.stderr.contains("not-the-password") && !run.stdout.contains("not-the-password"));
    run.expect_code(77);
    assert!(run.stderr.contains("refused"), "{run:#?}");
    assert_eq!(marked_ids(&env.db(), 64).len(), 3);
}

#[test]
fn a_secret_file_readable_by_others_gets_a_warning_and_quiet_silences_it() {
    let env = TestEnv::new("perms");
    env.seed(0);
    let pki = Pki::get();
    let key = env.path("client.key");
    std::fs::copy(pki.dir.join("client-sec1.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pw = env.write("pw", "x\n");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (db, ca, cert, key_arg, pw_arg) = (
        env.db_arg(),
        pki.path("ca.pem"),
        pki.path("client-sec1.pem"),
        key.display().to_string(),
        pw.display().to_string(),
    );
    let args = [
        "flush",
        "--db",
        &db,
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key_arg,
        "-u",
        "u",
        "--pw-file",
        &pw_arg,
    ];
    let run = run_checked(&env, &args);
    run.expect_code(0);
    assert!(
        run.stderr.contains(&format!(
            "warning: key file {key_arg} is readable by group or others (mode 644)"
        )),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "warning: password file {pw_arg} is readable by group or others (mode 640)"
        )),
        "{run:#?}"
    );
    let mut quiet = args.to_vec();
    quiet.push("--quiet");
    let run = run_checked(&env, &quiet);
    run.expect_code(0);
    assert_eq!(run.stderr, "");
}

#[test]
fn missing_or_malformed_pem_files_give_78_before_any_network_traffic() {
    let env = TestEnv::new("badpem");
    env.seed(5);
    // A listener that would see any connection attempt.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "mqtts://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let pki = Pki::get();
    let garbage = env.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
    );
    let empty = env.write("empty.pem", "");
    let (db, ca, cert, key) = (
        env.db_arg(),
        pki.path("ca.pem"),
        pki.path("client-pkcs8.pem"),
        pki.path("client-pkcs8.key"),
    );
    let (garbage, empty) = (garbage.display().to_string(), empty.display().to_string());
    let other_key = pki.path("client-sec1.key");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--cafile", "missing-ca.pem"],
            "cannot read CA file missing-ca.pem",
        ),
        (vec!["--cafile", &garbage], "is not valid PEM"),
        (vec!["--cafile", &empty], "holds no PEM certificate"),
        (vec!["--cafile", &key], "holds no PEM certificate"),
        (
            vec!["--cafile", &ca, "--cert", "missing-cert.pem", "--key", &key],
            "cannot read certificate file missing-cert.pem",
        ),
        (
            vec!["--cafile", &ca, "--cert", &cert, "--key", "missing.key"],
            "cannot read key file missing.key",
        ),
        (
            vec!["--cafile", &ca, "--cert", &cert, "--key", &ca],
            "holds no usable private key",
        ),
        (
            vec!["--cafile", &ca, "--cert", &garbage, "--key", &key],
            "is not valid PEM",
        ),
        (
            vec!["--cafile", &ca, "--cert", &cert, "--key", &other_key],
            "do not go together",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["flush", "--db", &db, "-L", &url];
        args.extend(extra);
        let run = run_checked(&env, &args);
        run.expect_code(78).expect_one_error_line(needle);
    }
    // Missing halves of a pair are usage errors.
    run_checked(&env, &["flush", "--db", &db, "-L", &url, "--cert", &cert])
        .expect_code(64)
        .expect_one_error_line("--key");
    run_checked(&env, &["flush", "--db", &db, "-L", &url, "--key", &key])
        .expect_code(64)
        .expect_one_error_line("--cert");
    // No system bundle where SSL_CERT_FILE points.
    let mut cmd = env.cmd(&["flush", "--db", &db, "-L", &url]);
    cmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem");
    util::run_cmd(cmd, WAIT)
        .expect_code(78)
        .expect_one_error_line("cannot read system CA bundle /nonexistent/ca.pem");
    assert!(
        listener.accept().is_err(),
        "frameflush connected although its TLS files were bad"
    );
    assert!(marked_ids(&env.db(), 64).is_empty());
}

#[test]
fn tls_options_without_tls_and_tls_to_a_plain_listener_are_clear_errors() {
    let env = TestEnv::new("tlsmisuse");
    env.seed(2);
    let broker = Broker::start(&env);
    let (db, ca) = (env.db_arg(), Pki::get().path("ca.pem"));
    let plain = broker.url();
    run_checked(&env, &["flush", "--db", &db, "-L", &plain, "--insecure"])
        .expect_code(64)
        .expect_one_error_line("without TLS");
    run_checked(&env, &["flush", "--db", &db, "-L", &plain, "--alpn", "x"])
        .expect_code(64)
        .expect_one_error_line("without TLS");
    let tls_to_plain = format!("mqtts://127.0.0.1:{}", broker.port);
    let run = run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "-L",
            &tls_to_plain,
            "--cafile",
            &ca,
            "--connect-timeout",
            "3",
        ],
    );
    run.expect_code(69);
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(marked_ids(&env.db(), 64).is_empty());
}

#[test]
fn alpn_is_offered_and_a_broker_without_it_still_connects() {
    let env = TestEnv::new("alpn");
    env.seed(2);
    let (broker, _plain) = tls_broker(&env, "server", false, "allow_anonymous true\n");
    let (db, ca) = (env.db_arg(), Pki::get().path("ca.pem"));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    run_checked(
        &env,
        &[
            "flush",
            "--db",
            &db,
            "-L",
            &url,
            "--cafile",
            &ca,
            "--alpn",
            "x-amzn-mqtt-ca",
        ],
    )
    .expect_code(0);
    assert_eq!(marked_ids(&env.db(), 64).len(), 2);
}
