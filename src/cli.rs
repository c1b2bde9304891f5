//! The command line as typed: argh structs that capture syntax only.
//!
//! Nothing here validates meaning or reads files; [`crate::config`] turns
//! these structs (plus the JSON config file and the environment) into a
//! validated `Config`. Parsing goes through `FromArgs::from_args` so that
//! `--help` goes to stdout with status 0 and a usage error to stderr with 64.

use argh::FromArgs;

/// Flush unsent sensor rows from a gateway's database (SQLite, or MySQL/MariaDB
/// as on a Meshlium) to an MQTT broker at QoS 1, marking each row sent only
/// after the broker's PUBACK.
#[derive(FromArgs, Debug)]
#[argh(
    note = "Run `frameflush <command> --help` for the options of a command. `frameflush --version` prints the version.",
    error_code(0, "every selected row acknowledged and marked, or nothing to send"),
    error_code(64, "bad command line"),
    error_code(
        65,
        "some rows could not be sent: not a valid message, over the broker's packet size limit, or refused by the broker for the message itself (they stay unsent; the rest went out)"
    ),
    error_code(66, "database (file, MySQL database) or table missing"),
    error_code(
        69,
        "broker unreachable (refused, timed out, DNS, no CONNACK), unavailable, or taking no QoS 1"
    ),
    error_code(
        74,
        "database or its lock file unreadable or unwritable, or the MySQL server unreachable"
    ),
    error_code(
        75,
        "partial: connection lost, acks not all in before the deadline, the broker wants no more for now, another run holds the lock, or the database stayed locked"
    ),
    error_code(
        77,
        "the broker refused the credentials or the client id, or (MQTT 5) a message for permission: its ACL refuses the topic; or the MySQL server refused the database login or a privilege a run needs"
    ),
    error_code(78, "invalid configuration (config file, template, password setup)")
)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Flush(Box<FlushArgs>),
    Check(Box<CheckArgs>),
    Init(InitArgs),
    Status(StatusArgs),
    Failures(FailuresArgs),
    Requeue(RequeueArgs),
    Purge(PurgeArgs),
    ImportMeshlium(ImportMeshliumArgs),
}

/// Publish unsent rows (oldest first) and mark each one after its PUBACK.
#[derive(FromArgs, Debug, Default)]
#[argh(
    subcommand,
    name = "flush",
    example = "frameflush flush --db /var/lib/gateway/sensors.db --host broker.example --topic 'sensors/{{id_wasp}}/{{sensor}}'",
    note = "Topic placeholders: {{id}} {{id_wasp}} {{id_secret}} {{frame_type}} {{frame_number}} {{sensor}} {{value}} {{timestamp}}; {{{{ and }}}} stand for literal braces. The password comes from the environment variable FRAMEFLUSH_PASSWORD or from --pw-file, never from the command line; a MySQL password likewise from FRAMEFLUSH_DB_PASSWORD or --db-pw-file. A successful run prints nothing.",
    error_code(0, "every selected row acknowledged and marked, or nothing to send"),
    error_code(64, "bad command line"),
    error_code(
        65,
        "some rows could not be sent: not a valid message, over the broker's packet size limit, or refused by the broker for the message itself (they stay unsent; the rest went out)"
    ),
    error_code(66, "database (file, MySQL database) or table missing"),
    error_code(
        69,
        "broker unreachable (refused, timed out, DNS, no CONNACK), unavailable, or taking no QoS 1"
    ),
    error_code(
        74,
        "database or its lock file unreadable or unwritable, or the MySQL server unreachable"
    ),
    error_code(
        75,
        "partial: connection lost, acks not all in before the deadline, the broker wants no more for now, another run holds the lock, or the database stayed locked"
    ),
    error_code(
        77,
        "the broker refused the credentials or the client id, or (MQTT 5) a message for permission: its ACL refuses the topic; or the MySQL server refused the database login or a privilege a run needs"
    ),
    error_code(78, "invalid configuration (config file, template, password setup)")
)]
pub struct FlushArgs {
    /// the database holding the sensorParser table: an SQLite file, or mysql://USER@HOST[:PORT]/DATABASE[?socket=PATH] (in a build with the mysql feature)
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON file with defaults for any of these options (keys named like the long flags); flags win
    #[argh(option)]
    pub config: Option<String>,
    /// broker host name or address (default localhost)
    #[argh(option)]
    pub host: Option<String>,
    /// broker port (default 1883, 8883 with TLS)
    #[argh(option)]
    pub port: Option<u16>,
    /// broker as a URL: mqtt://[USER@]HOST[:PORT][/TOPIC], or mqtts:// for TLS
    #[argh(option, short = 'L')]
    pub url: Option<String>,
    /// MQTT client id (default frameflush-<hostname>, plus -<mask> for a sync mask other than 64)
    #[argh(option, short = 'i')]
    pub id: Option<String>,
    /// MQTT user name
    #[argh(option, short = 'u')]
    pub username: Option<String>,
    /// file holding the MQTT password (first line); see also FRAMEFLUSH_PASSWORD
    #[argh(option)]
    pub pw_file: Option<String>,
    /// CA certificate(s) (PEM) to verify the broker with; turns TLS on (default port 8883)
    #[argh(option)]
    pub cafile: Option<String>,
    /// client certificate (PEM) for mutual TLS; goes with --key
    #[argh(option)]
    pub cert: Option<String>,
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1) of --cert
    #[argh(option)]
    pub key: Option<String>,
    /// TLS without checking that the broker's certificate names the host (a warning says so)
    #[argh(switch)]
    pub insecure: bool,
    /// TLS application protocol to ask for (ALPN), e.g. x-amzn-mqtt-ca for AWS IoT on port 443
    #[argh(option)]
    pub alpn: Option<String>,
    /// keep-alive interval in seconds, 0 for none (default 60)
    #[argh(option, short = 'k')]
    pub keepalive: Option<u16>,
    /// seconds to wait for the TCP connection and CONNACK (default 10)
    #[argh(option)]
    pub connect_timeout: Option<f64>,
    /// topic template (default sensors/{id_wasp}/{sensor})
    #[argh(option, short = 't')]
    pub topic: Option<String>,
    /// file holding the topic template (e.g. Meshlium's topic_template)
    #[argh(option)]
    pub topic_file: Option<String>,
    /// message template instead of the JSON payload: {column} or Meshlium's #SENSOR#|#VALUE#|#TS("U")# placeholders
    #[argh(option)]
    pub message: Option<String>,
    /// file holding the message template (e.g. Meshlium's message_template)
    #[argh(option)]
    pub message_file: Option<String>,
    /// payload format: json (one object per row, the default) or value (the bare value)
    #[argh(option)]
    pub payload: Option<String>,
    /// under MQTT 5, label JSON payloads with content type application/json and payload format indicator 1 (22 bytes more per message; off by default)
    #[argh(switch)]
    pub content_type: bool,
    /// row (one message per row, the default) or frame (one JSON message per Waspmote frame: the rows sharing id_wasp, frame_number and timestamp)
    #[argh(option)]
    pub group: Option<String>,
    /// the sync bit of this destination: a power of two (default 64, Meshlium's MQTT bit)
    #[argh(option)]
    pub sync_mask: Option<u64>,
    /// rows read from the database at a time (default 200)
    #[argh(option)]
    pub batch: Option<u32>,
    /// unacknowledged PUBLISHes in flight at most, 1 to 65535 (default 100)
    #[argh(option)]
    pub inflight: Option<u16>,
    /// publish at most this many messages per second (for brokers that limit the rate, e.g. AWS IoT: 100)
    #[argh(option)]
    pub rate: Option<f64>,
    /// publish at most this many rows in this run
    #[argh(option)]
    pub limit: Option<u64>,
    /// seconds after which nothing new is published (default 50)
    #[argh(option)]
    pub max_time: Option<f64>,
    /// seconds in-flight PUBLISHes may wait for their acknowledgement before the run gives up (default 5)
    #[argh(option)]
    pub ack_timeout: Option<f64>,
    /// largest payload in bytes; a larger row is not sent (default 131072)
    #[argh(option)]
    pub max_payload: Option<u32>,
    /// seconds to wait for a database lock held by another process (default 5)
    #[argh(option)]
    pub busy_timeout: Option<f64>,
    /// runs that may fail to turn a row into a message before it is quarantined (default 3)
    #[argh(option)]
    pub max_attempts: Option<u32>,
    /// MQTT version: 5, 311 (also mqttv5, mqttv311) or auto (the default: 5, and 3.1.1 only when the broker answers as a 3.1.1-only one)
    #[argh(option, short = 'V')]
    pub protocol_version: Option<String>,
    /// write Prometheus metrics (textfile-collector format) to this file at the end of each run
    #[argh(option)]
    pub metrics_file: Option<String>,
    /// print topic<TAB>payload for what would go out; connect to nothing, mark nothing
    #[argh(switch)]
    pub dry_run: bool,
    /// print one JSON summary object on stdout at the end of the run
    #[argh(switch)]
    pub json: bool,
    /// log each chunk to stderr
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// log each chunk and every MQTT event to stderr
    #[argh(switch, short = 'd')]
    pub debug: bool,
    /// print no error messages (the exit status still tells)
    #[argh(switch)]
    pub quiet: bool,
}

/// `check`: the options of `flush` (the same [`FlushArgs`], so the same
/// `Config`) plus `--no-publish`. argh has no flatten, so `FromArgs` is
/// written by hand: `--no-publish` is taken out and the rest goes to
/// `FlushArgs`' own parser; the help text is flush's, renamed, with check's
/// description, the `--no-publish` line, and check's notes and exit codes.
#[derive(Debug, Default)]
pub struct CheckArgs {
    pub flush: FlushArgs,
    /// Skip the round trip: publish nothing.
    pub no_publish: bool,
}

const CHECK_DESCRIPTION: &str = "Walk the path a run takes (configuration, database, lock, broker, templates, a round trip through the broker, the timer) and say line by line what is right and what to fix; marks nothing.";

const NO_PUBLISH_LINE: &str =
    "  --no-publish      skip the round trip: connect to the broker, publish nothing";

/// flush's options whose help says something else for check.
const CHECK_OPTION_LINES: [(&str, &str); 3] = [
    (
        "--metrics-file",
        "  --metrics-file    taken, not written: check writes no metrics",
    ),
    (
        "--dry-run",
        "  --dry-run         as --no-publish (check never marks anything)",
    ),
    (
        "--json",
        "  --json            print one JSON object on stdout: every step's name, status,\n                    text and figures, the exit code and the first failure",
    ),
];

const CHECK_EXAMPLES: &str = "Examples:
  frameflush check --config /etc/frameflush/config.json --pw-file /etc/frameflush/mqtt-password";

const CHECK_NOTES: &str = "Notes:
  Takes every option of `frameflush flush` (the same config file and unit arguments as the timer). One line per step: ok, warn, FAIL (or skip, when an earlier failure makes the step meaningless). The round trip publishes the real next message of a few distinct topics at QoS 1 and waits for it to come back through a subscription; check marks nothing, so the next run sends those messages once more (1 duplicate per topic checked). --no-publish skips it. Nothing secret is printed.";

const CHECK_ERROR_CODES: &str = "Error codes:
  0 every step ok (warnings allowed)
  64 bad command line
  65 a row cannot become a message, or is over the broker's packet size limit, or the broker refuses the message itself
  66 database file or table missing
  69 broker unreachable, TLS certificate not trusted, or no QoS 1
  74 database or its directory or lock file unreadable or unwritable
  75 the broker did not acknowledge in --ack-timeout, or wants no more for now
  77 credentials or client certificate refused, or the broker refuses the topic (MQTT 5 0x87, or no echo under MQTT 3.1.1)
  78 invalid configuration";

impl argh::SubCommand for CheckArgs {
    const COMMAND: &'static argh::CommandInfo = &argh::CommandInfo {
        name: "check",
        short: &'\0',
        description: CHECK_DESCRIPTION,
    };
}

/// The options of `flush` that take a value, long and short, read from its
/// own help: the usage line marks them (`[--db <db>]`, `[-L <url>]`, by
/// the short name when there is one), the options list pairs the names
/// (`-L, --url`). So a value that happens to read `--no-publish` stays a
/// value.
fn flush_value_options() -> Vec<String> {
    let help = match FlushArgs::from_args(&["frameflush", "flush"], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => String::new(),
    };
    let usage = help.lines().next().unwrap_or_default();
    let mut out = Vec::new();
    for line in help.lines().filter(|l| l.starts_with("  -")) {
        let names: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| w.starts_with('-'))
            .map(|w| w.trim_end_matches(','))
            .collect();
        if names.iter().any(|n| usage.contains(&format!("[{n} <"))) {
            out.extend(names.iter().map(|n| n.to_string()));
        }
    }
    out
}

/// The line for an `--option=value` argument that argh rejected
/// ("Unrecognized argument"): argh takes an option's value as the next
/// argument only. `None` when no argument has that form with a known
/// option of the command (or of frameflush itself) before the `=`.
/// The value is shown but for --db and --url, which may hold a password by
/// mistake.
pub fn equals_form_hint(args: &[&str]) -> Option<String> {
    let sub = args.iter().find(|a| !a.starts_with('-')).copied();
    let help_args: Vec<&str> = sub.into_iter().chain(["--help"]).collect();
    let help = match Cli::from_args(&["frameflush"], &help_args) {
        Err(early) if early.status.is_ok() => early.output,
        _ => String::new(),
    };
    let usage = help.lines().next().unwrap_or_default();
    for arg in args.iter().take_while(|a| **a != "--") {
        let Some((name, value)) = arg.split_once('=') else {
            continue;
        };
        if !name.starts_with("--") || name.len() < 3 {
            continue;
        }
        let shown = if matches!(name, "--db" | "--url") {
            "VALUE"
        } else {
            value
        };
        // The options list pairs a long name with its short one
        // (`-t, --topic`); the usage line shows the short one when there is
        // one: `[-t <topic>]` for a value, `[-v]` for a switch.
        let Some(names) = help
            .lines()
            .filter(|l| l.starts_with("  -"))
            .map(|l| {
                l.split_whitespace()
                    .take_while(|w| w.starts_with('-'))
                    .map(|w| w.trim_end_matches(','))
                    .collect::<Vec<_>>()
            })
            .find(|names| names.contains(&name))
        else {
            continue;
        };
        if names.iter().any(|n| usage.contains(&format!("{n} <"))) {
            return Some(format!(
                "`{arg_shown}`: write the option and its value as two arguments, `{name} {shown}`",
                arg_shown = if shown == value {
                    arg.to_string()
                } else {
                    format!("{name}=...")
                }
            ));
        }
        if names.iter().any(|n| usage.contains(&format!("[{n}]"))) {
            return Some(format!(
                "`{name}` takes no value: write `{name}` alone, without `={shown}`"
            ));
        }
    }
    None
}

/// flush's help text made check's.
fn check_help(flush_help: &str) -> String {
    let mut usage = String::new();
    let mut options = String::new();
    for block in flush_help.split("\n\n") {
        if block.starts_with("Usage:") {
            usage = block.replacen("[--json]", "[--no-publish] [--json]", 1);
        } else if block.starts_with("Options:") {
            // An option's description continues on lines indented further.
            let mut replaced = false;
            for line in block.lines() {
                if line.starts_with("   ") && replaced {
                    continue;
                }
                let name = line.split_whitespace().next().unwrap_or_default();
                if name == "--json" {
                    options.push_str(NO_PUBLISH_LINE);
                    options.push('\n');
                }
                replaced = false;
                if let Some((_, text)) = CHECK_OPTION_LINES.iter().find(|(n, _)| *n == name) {
                    options.push_str(text);
                    replaced = true;
                } else {
                    options.push_str(line);
                }
                options.push('\n');
            }
        }
    }
    format!(
        "{usage}\n\n{CHECK_DESCRIPTION}\n\n{options}\n{CHECK_EXAMPLES}\n\n{CHECK_NOTES}\n\n{CHECK_ERROR_CODES}\n"
    )
}

impl FromArgs for CheckArgs {
    fn from_args(command_name: &[&str], args: &[&str]) -> Result<Self, argh::EarlyExit> {
        let takes_value = flush_value_options();
        let mut no_publish = false;
        let mut rest: Vec<&str> = Vec::with_capacity(args.len());
        let mut i = 0;
        while i < args.len() {
            let arg = args[i];
            if arg == "--" {
                rest.extend_from_slice(&args[i..]);
                break;
            }
            if takes_value.iter().any(|o| o == arg) {
                rest.extend_from_slice(&args[i..(i + 2).min(args.len())]);
                i += 2;
                continue;
            }
            if arg == "--no-publish" {
                no_publish = true;
            } else {
                rest.push(arg);
            }
            i += 1;
        }
        match FlushArgs::from_args(command_name, &rest) {
            Ok(flush) => Ok(CheckArgs { flush, no_publish }),
            Err(early) if early.status.is_ok() => Err(argh::EarlyExit {
                output: check_help(&early.output),
                status: Ok(()),
            }),
            Err(early) => Err(early),
        }
    }
}

/// Create the sensorParser table and frameflush's own tables and index (an existing table is kept as it is).
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "init")]
pub struct InitArgs {
    /// the SQLite database to create or complete, or mysql://USER@HOST[:PORT]/DATABASE[?socket=PATH]
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON config file (its db, sync-mask and busy-timeout keys are used)
    #[argh(option)]
    pub config: Option<String>,
    /// the sync bit whose index to create (default 64)
    #[argh(option)]
    pub sync_mask: Option<u64>,
}

/// Print the backlog of each destination (sync mask): unsent rows, the oldest one's age, quarantined rows, the last run.
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// the database holding the sensorParser table: an SQLite file or a mysql:// URL
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON config file (its db, sync-mask and busy-timeout keys are used)
    #[argh(option)]
    pub config: Option<String>,
    /// a sync bit to report on; repeat for several (default: every bit the database has seen, and 64)
    #[argh(option)]
    pub sync_mask: Vec<u64>,
    /// print one JSON object instead of text
    #[argh(switch)]
    pub json: bool,
}

/// List the rows that could not become a message: attempts, last error, quarantine.
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "failures")]
pub struct FailuresArgs {
    /// the database holding the sensorParser table: an SQLite file or a mysql:// URL
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON config file (its db, sync-mask and busy-timeout keys are used)
    #[argh(option)]
    pub config: Option<String>,
    /// the sync bit to report on (default 64)
    #[argh(option)]
    pub sync_mask: Option<u64>,
    /// print one JSON array instead of text
    #[argh(switch)]
    pub json: bool,
}

/// Put failed or quarantined rows back into the queue with a clean count.
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "requeue")]
pub struct RequeueArgs {
    /// the database holding the sensorParser table: an SQLite file or a mysql:// URL
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON config file (its db, sync-mask and busy-timeout keys are used)
    #[argh(option)]
    pub config: Option<String>,
    /// the sync bit whose failures to forget (default 64)
    #[argh(option)]
    pub sync_mask: Option<u64>,
    /// requeue every failed row of the sync mask
    #[argh(switch)]
    pub all: bool,
    /// ids of the rows to requeue
    #[argh(positional)]
    pub ids: Vec<i64>,
}

/// Delete rows every destination has, to keep the database small: by age and/or a cap on the row count.
#[derive(FromArgs, Debug, Default)]
#[argh(
    subcommand,
    name = "purge",
    example = "frameflush purge --db /var/lib/gateway/sensors.db --older-than 30d --require-mask 192 --max-rows 2000000"
)]
pub struct PurgeArgs {
    /// the database holding the sensorParser table: an SQLite file or a mysql:// URL
    #[argh(option)]
    pub db: Option<String>,
    /// file holding the MySQL password (first line); see also FRAMEFLUSH_DB_PASSWORD
    #[argh(option)]
    pub db_pw_file: Option<String>,
    /// JSON config file (its db, sync-mask and busy-timeout keys are used)
    #[argh(option)]
    pub config: Option<String>,
    /// delete sent rows whose timestamp is older than this: a number and a unit, s m h d or w (e.g. 30d)
    #[argh(option)]
    pub older_than: Option<String>,
    /// the sync bits a row must all have to count as sent, e.g. 192 for bits 64 and 128 (default the config's sync-mask, else 64)
    #[argh(option)]
    pub require_mask: Option<u64>,
    /// keep at most this many rows, deleting the oldest sent rows first (never an unsent one)
    #[argh(option)]
    pub max_rows: Option<u64>,
    /// rewrite the whole file with VACUUM afterwards (locks out the producer while it runs)
    #[argh(switch)]
    pub vacuum: bool,
    /// print one JSON summary object
    #[argh(switch)]
    pub json: bool,
}

/// Print the frameflush JSON config equivalent to a Meshlium MQTT settings directory (setup.ini, topic_template, message_template).
#[derive(FromArgs, Debug, Default)]
#[argh(
    subcommand,
    name = "import-meshlium",
    example = "frameflush import-meshlium /mnt/lib/cfg/mqtt > /etc/frameflush/config.json"
)]
pub struct ImportMeshliumArgs {
    /// the directory holding setup.ini (Meshlium: /mnt/lib/cfg/mqtt)
    #[argh(positional)]
    pub dir: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<CheckArgs, argh::EarlyExit> {
        CheckArgs::from_args(&["frameflush", "check"], args)
    }

    #[test]
    fn check_takes_no_publish_anywhere_and_every_flush_option() {
        let c = check(&["--db", "x.db", "--no-publish", "-V", "5"]).unwrap();
        assert!(c.no_publish);
        assert_eq!(c.flush.db.as_deref(), Some("x.db"));
        assert_eq!(c.flush.protocol_version.as_deref(), Some("5"));
        let c = check(&["--db", "x.db"]).unwrap();
        assert!(!c.no_publish);
        let takes = flush_value_options();
        for name in [
            "--db",
            "-L",
            "--url",
            "-t",
            "--topic",
            "-V",
            "--protocol-version",
        ] {
            assert!(takes.iter().any(|t| t == name), "{name}: {takes:?}");
        }
        assert!(
            !takes.iter().any(|t| t == "--json" || t == "-v"),
            "{takes:?}"
        );
        // A value that reads --no-publish stays the option's value.
        let c = check(&["--topic", "--no-publish", "--db", "x.db"]).unwrap();
        assert!(!c.no_publish);
        assert_eq!(c.flush.topic.as_deref(), Some("--no-publish"));
        assert!(check(&["--no-publish=1"]).is_err());
        assert!(check(&["--no-publish", "yes"]).is_err());
    }

    #[test]
    fn an_option_written_with_equals_gets_the_two_argument_form() {
        assert_eq!(
            equals_form_hint(&["flush", "--db", "x.db", "--port=1884"]).as_deref(),
            Some("`--port=1884`: write the option and its value as two arguments, `--port 1884`")
        );
        assert_eq!(
            equals_form_hint(&["check", "--topic=a/b"]).as_deref(),
            Some("`--topic=a/b`: write the option and its value as two arguments, `--topic a/b`")
        );
        assert_eq!(
            equals_form_hint(&["status", "--db=x.db"]).as_deref(),
            Some("`--db=...`: write the option and its value as two arguments, `--db VALUE`")
        );
        assert_eq!(
            equals_form_hint(&["flush", "--json=yes"]).as_deref(),
            Some("`--json` takes no value: write `--json` alone, without `=yes`")
        );
        // Not an option of the command, or after `--`, or a value with '='.
        assert_eq!(equals_form_hint(&["flush", "--colour=red"]), None);
        assert_eq!(equals_form_hint(&["flush", "--", "--port=1"]), None);
        assert_eq!(equals_form_hint(&["flush", "--topic", "a=b", "x"]), None);
    }

    #[test]
    fn check_help_is_flushs_renamed_with_its_own_lines() {
        let help = match check(&["--help"]) {
            Err(e) if e.status.is_ok() => e.output,
            _ => panic!("--help is an early exit"),
        };
        assert!(help.starts_with("Usage: frameflush check "), "{help}");
        assert!(help.contains("[--no-publish] [--json]"), "{help}");
        assert!(help.contains(CHECK_DESCRIPTION), "{help}");
        assert!(help.contains(NO_PUBLISH_LINE), "{help}");
        assert!(!help.contains("Publish unsent rows"), "{help}");
        assert!(!help.contains("connect to nothing, mark nothing"), "{help}");
        assert!(help.contains("  --inflight "), "{help}");
        assert!(help.ends_with("78 invalid configuration\n"), "{help}");
    }
}
