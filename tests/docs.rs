//! The documents against the program: every example of output in README.md
//! and the man page that a test can produce is produced here and compared
//! by its structure (values such as times, ports and ids vary; the keys,
//! the steps and the codes do not), so that an example cannot go stale.
//!
//! The examples are found generically, not listed: every JSON object in a
//! fenced block of the README or an `.EX` block of the man page is matched,
//! by its keys, to one of the objects the program prints (`status --json`,
//! `flush --json`, `check --json`, a message's payload, a frame's payload)
//! or to the config file's keys; every `ok   step: ...` line to the steps
//! `check` prints; the exit status table to `--help`'s list. A changed
//! output shape fails here until the documents show the new one; a changed
//! example is followed as long as the program prints it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use util::{Broker, Pki, TestEnv, insert_rows};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The man page's escapes that appear in its examples, as plain text.
fn unroff(line: &str) -> String {
    line.replace("\\(->", "->")
        .replace("\\(aq", "'")
        .replace("\\(em", "—")
        .replace("\\-", "-")
        .replace("\\e", "\\")
        .replace("\\&", "")
        .replace("\\~", " ")
}

/// The README's fenced blocks and the man page's `.EX`/`.EE` blocks, each
/// with where it comes from.
fn example_blocks() -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let readme = read("README.md");
    let mut current: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            match current.take() {
                Some((start, text)) => blocks.push((format!("README.md:{}", start + 1), text)),
                None => current = Some((n, String::new())),
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let man = read("man/frameflush.1");
    let mut current: Option<(usize, String)> = None;
    for (n, line) in man.lines().enumerate() {
        if line == ".EX" {
            current = Some((n, String::new()));
        } else if line == ".EE" {
            if let Some((start, text)) = current.take() {
                blocks.push((format!("man/frameflush.1:{}", start + 1), text));
            }
        } else if let Some((_, text)) = current.as_mut().filter(|_| !line.starts_with(".ft")) {
            text.push_str(&unroff(line));
            text.push('\n');
        }
    }
    blocks
}

/// Every JSON object in the example blocks: a block that is one object, or
/// a line (with the lines after it, up to 5) that starts one. Objects
/// shortened with "..." or "…" are not complete examples and are left out.
fn json_examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (place, text) in example_blocks() {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text.trim()) {
            out.push((place, v));
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let mut skip_to = 0;
        for (i, line) in lines.iter().enumerate() {
            if i < skip_to {
                continue;
            }
            // A line of output may carry a prefix (a topic and a tab).
            let Some(p) = line
                .find('{')
                .filter(|&p| p == 0 || line[..p].ends_with('\t') || line[..p].ends_with("  "))
            else {
                continue;
            };
            let mut candidate = String::new();
            for (j, more) in lines.iter().enumerate().skip(i).take(5) {
                candidate.push_str(if j == i { &line[p..] } else { more });
                if candidate.contains("...") || candidate.contains('…') {
                    break;
                }
                if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&candidate) {
                    out.push((format!("{place} (line {})", i + 1), v));
                    skip_to = j + 1;
                    break;
                }
            }
        }
    }
    out
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The example's keys are the real object's, at every level where both
/// hold objects (an array is compared by its first element; a null in the
/// real object, e.g. "no run yet", compares with anything).
fn same_shape(path: &str, example: &Value, real: &Value) -> Result<(), String> {
    match (example, real) {
        // A frame's readings are keyed by the sensors it holds: data, not
        // a shape.
        (Value::Object(_), Value::Object(_)) if path.ends_with(".readings") => Ok(()),
        (Value::Object(e), Value::Object(r)) => {
            let (ek, rk) = (keys(example), keys(real));
            if ek != rk {
                return Err(format!(
                    "{path}: keys differ: only in the example {:?}, only in the program's output {:?}",
                    ek.difference(&rk).collect::<Vec<_>>(),
                    rk.difference(&ek).collect::<Vec<_>>()
                ));
            }
            for (k, ev) in e {
                same_shape(&format!("{path}.{k}"), ev, &r[k])?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(r)) => match (e.first(), r.first()) {
            (Some(e0), Some(r0)) => same_shape(&format!("{path}[0]"), e0, r0),
            _ => Ok(()),
        },
        (_, Value::Null) | (Value::Null, _) => Ok(()),
        (e, r) if std::mem::discriminant(e) == std::mem::discriminant(r) => Ok(()),
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            // A reading's value is text or a number, as the column holds it.
            Ok(())
        }
        (e, r) => Err(format!(
            "{path}: the example has {e}, the program prints {r}"
        )),
    }
}

/// What the program prints, from real runs against a real mosquitto (TLS,
/// so that check shows every step): name and object.
struct Outputs {
    objects: Vec<(&'static str, Value)>,
    check_steps: Vec<String>,
    /// The same, against the broker's plain TCP listener (no `tls-files`).
    plain_check_steps: Vec<String>,
}

fn outputs() -> Outputs {
    let env = TestEnv::new("docs");
    let mut db = env.seed(0);
    insert_rows(&mut db, 12, 0);
    drop(db);
    let db = env.db_arg();
    let pki = Pki::get();
    let plain = util::free_port();
    let broker = Broker::start_with(
        &env,
        &format!(
            "allow_anonymous true\n{}",
            pki.listener_conf("server", false, plain)
        ),
    );
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca = pki.path("ca.pem");
    let mut objects = Vec::new();

    let dry = env.run(&["flush", "--db", &db, "--dry-run", "--limit", "1"]);
    dry.expect_code(0);
    let payload = dry
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_once('\t')
        .unwrap()
        .1;
    objects.push((
        "a message's payload",
        serde_json::from_str(payload).unwrap(),
    ));
    let dry = env.run(&[
        "flush",
        "--db",
        &db,
        "--dry-run",
        "--group",
        "frame",
        "--limit",
        "4",
    ]);
    dry.expect_code(0);
    let payload = dry
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_once('\t')
        .unwrap()
        .1;
    objects.push((
        "a frame's payload (--group frame)",
        serde_json::from_str(payload).unwrap(),
    ));

    let check = env.run(&["check", "--db", &db, "-L", &url, "--cafile", &ca, "--json"]);
    check.expect_code(0);
    let check_json = check.json();
    let check_steps = check_json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    objects.push(("check --json", check_json));
    let plain_url = format!("mqtt://127.0.0.1:{plain}");
    let plain_check = env.run(&["check", "--db", &db, "-L", &plain_url, "--json"]);
    plain_check.expect_code(0);
    let plain_check_steps = plain_check.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let text = env.run(&["check", "--db", &db, "-L", &url, "--cafile", &ca]);
    text.expect_code(0);

    let flush = env.run(&[
        "flush", "--db", &db, "-L", &url, "--cafile", &ca, "--json", "--limit", "8",
    ]);
    flush.expect_code(0);
    objects.push(("flush --json", flush.json()));
    // A suspect held (as a run that saw row 10 fail alone leaves it), so
    // that status prints the keys of its `suspects` entries too.
    rusqlite::Connection::open(env.db())
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO frameflush_state (key, value) VALUES ('suspects:64', '10')",
            [],
        )
        .unwrap();
    let status = env.run(&["status", "--db", &db, "--json"]);
    status.expect_code(0);
    objects.push(("status --json", status.json()));
    Outputs {
        objects,
        check_steps,
        plain_check_steps,
    }
}

/// The config file's keys: the long flags of `flush --help`.
fn config_keys() -> BTreeSet<String> {
    let help = util::run_cmd(
        {
            let mut c = std::process::Command::new(util::BIN);
            c.args(["flush", "--help"]);
            c
        },
        std::time::Duration::from_secs(30),
    );
    help.stdout
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').strip_prefix("--"))
        .map(|w| {
            w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_json_example_in_the_readme_and_the_man_page_has_the_shape_the_program_prints() {
    let examples = json_examples();
    assert!(
        examples.len() >= 4,
        "too few JSON examples found: {examples:?}"
    );
    let out = outputs();
    let config = config_keys();
    let mut matched = BTreeSet::new();
    let mut problems = Vec::new();
    for (place, example) in &examples {
        let ek = keys(example);
        // A config file: every key a long flag (its values are the
        // administrator's).
        if ek.contains("db") || ek.contains("host") {
            let unknown: Vec<&String> = ek.iter().filter(|k| !config.contains(*k)).collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "{place}: config example with unknown keys {unknown:?}"
                ));
            }
            continue;
        }
        let best = out
            .objects
            .iter()
            .max_by_key(|(_, real)| {
                let rk = keys(real);
                ek.intersection(&rk).count() as i64 * 2
                    - ek.symmetric_difference(&rk).count() as i64
            })
            .unwrap();
        match same_shape("", example, &best.1) {
            Ok(()) => {
                matched.insert(best.0);
            }
            Err(why) => problems.push(format!(
                "{place}: the example {example} is closest to {}, but {why}; the program prints {}",
                best.0, best.1
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The objects the documents show at all (the man page's status example
    // among them).
    for want in [
        "a message's payload",
        "a frame's payload (--group frame)",
        "status --json",
    ] {
        assert!(
            matched.contains(want),
            "no example of {want} found in {matched:?}"
        );
    }
}

#[test]
fn the_check_reports_in_the_readme_and_the_man_page_show_the_steps_check_prints_in_its_order() {
    let out = outputs();
    let steps = |all: &[String]| -> Vec<String> {
        all.iter().fold(Vec::new(), |mut v, s| {
            if v.last() != Some(s) {
                v.push(s.clone());
            }
            v
        })
    };
    // A sample may show a run over TLS or over plain TCP (which has no
    // `tls-files` step): it must be one of the two, exactly.
    let (real, plain) = (steps(&out.check_steps), steps(&out.plain_check_steps));
    let mut reports = 0;
    for (place, text) in example_blocks() {
        let mut documented: Vec<String> = Vec::new();
        for line in text.lines() {
            let mut words = line.splitn(2, ' ');
            let status = words.next().unwrap_or_default();
            let rest = words.next().unwrap_or_default().trim_start();
            let Some((step, _)) = rest.split_once(": ") else {
                continue;
            };
            if !["ok", "warn", "FAIL", "skip"].contains(&status)
                || step.is_empty()
                || !step.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            {
                continue;
            }
            if documented.last().map(String::as_str) != Some(step) {
                documented.push(step.to_string());
            }
        }
        if documented.len() < 3 {
            continue;
        }
        reports += 1;
        let want = if documented.iter().any(|s| s == "tls-files") {
            &real
        } else {
            &plain
        };
        assert_eq!(
            &documented, want,
            "{place}: the sample report's steps (left) are not the steps check prints, in its order (right)"
        );
    }
    assert!(
        reports >= 2,
        "a sample check report in both README and man page: found {reports}"
    );
}

/// The rows of the README's exit status table: code and cause.
fn readme_exit_table() -> Vec<(u8, String)> {
    let readme = read("README.md");
    let section = readme
        .split("\n## Exit status")
        .nth(1)
        .expect("README has ## Exit status");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = cells.get(1)?.parse().ok()?;
            Some((code, cells.get(2)?.to_string()))
        })
        .collect()
}

/// `--help`'s exit code lines (top level, or a command's): code and text.
fn help_codes(args: &[&str]) -> Vec<(u8, String)> {
    let mut cmd = std::process::Command::new(util::BIN);
    cmd.args(args);
    let run = util::run_cmd(cmd, std::time::Duration::from_secs(30));
    run.expect_code(0);
    let section = run
        .stdout
        .split("Error codes:")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    section
        .lines()
        .filter_map(|l| {
            let (code, text) = l.trim().split_once(' ')?;
            Some((code.parse().ok()?, text.to_string()))
        })
        .collect()
}

#[test]
fn the_readmes_exit_status_table_and_helps_list_name_the_same_codes_and_causes() {
    let table = readme_exit_table();
    assert!(table.len() >= 9, "{table:?}");
    // The causes an operator looks for: a word in the README's row must be
    // in --help's line for that code too.
    let causes = [
        "credentials",
        "client id",
        "ACL",
        "MySQL",
        "packet size",
        "unreachable",
        "DNS",
        "QoS 1",
        "lock",
        "deadline",
        "configuration",
        "partial",
        "template",
        "password setup",
    ];
    for args in [&["--help"][..], &["flush", "--help"][..]] {
        let help = help_codes(args);
        let codes = |v: &[(u8, String)]| v.iter().map(|(c, _)| *c).collect::<BTreeSet<_>>();
        assert_eq!(
            codes(&table),
            codes(&help),
            "README's exit codes vs frameflush {args:?}"
        );
        for (code, cause) in &table {
            let line = &help.iter().find(|(c, _)| c == code).unwrap().1;
            for word in causes {
                let lower = word.to_lowercase();
                if cause.to_lowercase().contains(&lower) {
                    assert!(
                        line.to_lowercase().contains(&lower),
                        "exit {code}: the README names \"{word}\", frameflush {args:?} does not: {line}"
                    );
                }
            }
        }
    }
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_section_the_readme_points_to_exists() {
    let readme = read("README.md");
    let headings: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let anchors: BTreeSet<String> = headings.iter().map(|h| anchor(h)).collect();
    let mut missing = Vec::new();
    for part in readme.split("](#").skip(1) {
        let target = part.split(')').next().unwrap();
        if !anchors.contains(target) {
            missing.push(format!("(#{target})"));
        }
    }
    // `see "Some section"`, the quoted form.
    let flat = readme.replace('\n', " ");
    for part in flat.split("see \"").skip(1) {
        let title = part.split('"').next().unwrap();
        if title.chars().next().is_some_and(char::is_uppercase) && !headings.contains(&title) {
            missing.push(format!("see \"{title}\""));
        }
    }
    assert!(
        missing.is_empty(),
        "the README points to sections it does not have: {missing:?}"
    );
}

#[test]
fn an_option_written_as_option_equals_value_gets_the_two_argument_form() {
    let env = TestEnv::new("docs-equals");
    env.seed(1);
    let run = env.run(&["flush", "--db", &env.db_arg(), "--port=1884"]);
    run.expect_code(64)
        .expect_one_error_line("write the option and its value as two arguments, `--port 1884`");
    let run = env.run(&["status", "--db=sensors.db"]);
    run.expect_code(64).expect_one_error_line("`--db VALUE`");
    // Anything else argh rejects keeps argh's words.
    let run = env.run(&["flush", "--colour=red"]);
    run.expect_code(64)
        .expect_one_error_line("Unrecognized argument");
}

/// The keys the man page names in the `--json` paragraph of a command's
/// options (`.SS "flush options"` ... `.TP` `.B \-\-json` ... the next
/// `.TP` or section): every bold word written like a JSON key.
fn man_json_keys(command: &str) -> BTreeSet<String> {
    let man = read("man/frameflush.1");
    let section = man
        .split(&format!(".SS \"{command} options\"\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no .SS \"{command} options\""));
    let section = section.split("\n.SS ").next().unwrap();
    let paragraph = section
        .split(".TP\n.B \\-\\-json\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no --json paragraph under {command} options"));
    let paragraph = paragraph.split("\n.TP").next().unwrap();
    paragraph
        .lines()
        .filter_map(|l| l.strip_prefix(".BR ").or_else(|| l.strip_prefix(".B ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|w| {
            !["null", "true", "false"].contains(w)
                && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Every key of an object, at every level (arrays by their elements).
fn all_keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.insert(k.clone());
                all_keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| all_keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_man_pages_json_paragraphs_name_every_key_flush_and_status_print_and_no_other() {
    let out = outputs();
    for (command, name) in [("flush", "flush --json"), ("status", "status --json")] {
        let real = &out.objects.iter().find(|(n, _)| *n == name).unwrap().1;
        let mut printed = BTreeSet::new();
        all_keys(real, &mut printed);
        let documented = man_json_keys(command);
        assert_eq!(
            documented,
            printed,
            "{command} --json: only in the man page {:?}, only in the program's output {:?}",
            documented.difference(&printed).collect::<Vec<_>>(),
            printed.difference(&documented).collect::<Vec<_>>()
        );
    }
}
