//! Migrating from Meshlium: its topic and message templates work as they
//! are, from flags or from its template files, and `import-meshlium` turns
//! its MQTT settings into a frameflush config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use util::{Broker, Subscriber, TestEnv, marked_ids};

const WAIT: Duration = Duration::from_secs(30);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The epoch seconds of the seeded rows' timestamp, 2026-11-24 10:00:00 UTC.
const EPOCH: &str = "1795514400";

#[test]
fn meshlium_topic_and_message_templates_work_as_they_are() {
    let env = TestEnv::new("meshlium-templates");
    env.seed(3);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let (db, url) = (env.db_arg(), broker.url());
    let run = env.run(&[
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--topic",
        "/#MESHLIUM#/#ID_WASP#",
        "--message",
        "#SENSOR#|#VALUE#|#TS(\"U\")#|#TS(\"Y-m-d\\TH:i:sP\")#|#ID#",
    ]);
    run.expect_code(0);
    let got = sub.wait_for(3, WAIT);
    assert_eq!(got[0].topic, format!("/{}/node_00", hostname()));
    assert_eq!(
        String::from_utf8(got[0].payload.clone()).unwrap(),
        format!("TC|20.00|{EPOCH}|2026-11-24T10:00:00+00:00|1")
    );
    assert_eq!(marked_ids(&env.db(), 64).len(), 3);
}

#[test]
fn meshlium_template_files_are_read_as_they_are() {
    let env = TestEnv::new("meshlium-files");
    env.seed(2);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    env.write("topic_template", "gw/#ID_WASP#/#SENSOR#\n");
    env.write("message_template", "#SENSOR#|#VALUE#|#TIMESTAMP#\r\n");
    let (db, url) = (env.db_arg(), broker.url());
    env.run(&[
        "flush",
        "--db",
        &db,
        "-L",
        &url,
        "--topic-file",
        "topic_template",
        "--message-file",
        "message_template",
    ])
    .expect_code(0);
    let got = sub.wait_for(2, WAIT);
    assert_eq!(got[1].topic, "gw/node_01/HUM");
    assert_eq!(got[1].payload, b"HUM|21.01|2026-11-24 10:00:00");
    // Files that are missing, or clash with --topic/--payload, are refused.
    env.run(&["flush", "--db", &db, "--topic-file", "nope"])
        .expect_code(78)
        .expect_one_error_line("cannot read template file nope");
    env.run(&[
        "flush",
        "--db",
        &db,
        "--topic-file",
        "topic_template",
        "-t",
        "x",
    ])
    .expect_code(64);
    env.run(&[
        "flush",
        "--db",
        &db,
        "--message",
        "#VALUE#",
        "--payload",
        "json",
    ])
    .expect_code(64)
    .expect_one_error_line("--payload");
    env.run(&["flush", "--db", &db, "--message", "x", "--group", "frame"])
        .expect_code(64);
    env.run(&["flush", "--db", &db, "--message", "#TS(\"U)#"])
        .expect_code(64)
        .expect_one_error_line("unclosed");
}

#[test]
fn a_timestamp_that_ts_cannot_read_makes_its_row_fail_not_the_run() {
    let env = TestEnv::new("meshlium-badts");
    let c = env.seed(2);
    c.execute(
        "UPDATE sensorParser SET timestamp = 'last tuesday' WHERE id = 1",
        [],
    )
    .unwrap();
    let broker = Broker::start(&env);
    let (db, url) = (env.db_arg(), broker.url());
    let run = env.run(&["flush", "--db", &db, "-L", &url, "--message", "#TS(\"U\")#"]);
    run.expect_code(65);
    assert!(run.stderr.contains("row 1 not sent: #TS"), "{run:#?}");
    assert_eq!(marked_ids(&env.db(), 64).len(), 1);
}

#[test]
fn import_meshlium_prints_a_config_that_flush_accepts_and_keeps_the_password_out() {
    let env = TestEnv::new("meshlium-import");
    env.seed(2);
    let broker = Broker::start(&env);
    let sub = Subscriber::connect(broker.port, "#");
    let dir = env.path("mqtt");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("setup.ini"),
        format!(
            "; Meshlium MQTT settings\n[mqtt]\nmqttserver = \"127.0.0.1\"\nmqttport = {}\nmqttuser = \"\"\nmqttpassword = \"hunter2-secret\"\nqos = 0\nlimit = 200\ninterval = 60\nclient_id = \"Meshlium4711\"\n",
            broker.port
        ),
    )
    .unwrap();
    std::fs::write(dir.join("topic_template"), "meshlium/#ID_WASP#/#SENSOR#\n").unwrap();
    std::fs::write(
        dir.join("message_template"),
        "#SENSOR#|#VALUE#|#TS(\"U\")#\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    let run = env.run(&["import-meshlium", &d]);
    run.expect_code(0);
    assert!(
        !run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("frameflush: note: "), "{run:#?}");
    assert!(
        run.stderr.contains("password"),
        "the user is told where the password goes: {run:#?}"
    );
    let config: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(config["host"], "127.0.0.1");
    assert_eq!(config["port"], broker.port);
    assert_eq!(config["topic"], "meshlium/#ID_WASP#/#SENSOR#");
    assert_eq!(config["message"], "#SENSOR#|#VALUE#|#TS(\"U\")#");
    assert_eq!(config["sync-mask"], 64);
    assert_eq!(config["db"], "mysql://root@localhost/MeshliumDB");
    assert!(
        run.stderr.contains("db-pw-file"),
        "the user is told where the database password goes: {run:#?}"
    );
    assert!(!run.stderr.contains("libelium2007"), "{run:#?}");
    assert_eq!(config["id"], "Meshlium4711");
    env.write("config.json", &run.stdout);
    let db = env.db_arg();
    env.run(&["flush", "--config", "config.json", "--db", &db])
        .expect_code(0);
    let got = sub.wait_for(2, WAIT);
    assert_eq!(got[0].topic, "meshlium/node_00/TC");
    assert_eq!(
        String::from_utf8(got[0].payload.clone()).unwrap(),
        format!("TC|20.00|{EPOCH}")
    );
    // A directory without setup.ini.
    env.run(&["import-meshlium", "nowhere"]).expect_code(66);
}
