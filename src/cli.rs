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
    error_code(65, "some rows could not be turned into a message (the rest went out)"),
    error_code(66, "database (file, MySQL database) or table missing"),
    error_code(69, "broker unreachable (refused, timed out, DNS)"),
    error_code(
        74,
        "database or its lock file unreadable or unwritable, or the MySQL server unreachable"
    ),
    error_code(
        75,
        "partial: connection lost, acks not all in before the deadline, or another run holds the lock"
    ),
    error_code(
        77,
        "the broker refused the credentials or the client id, or the MySQL server the database login"
    ),
    error_code(78, "invalid configuration")
)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Flush(Box<FlushArgs>),
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
    error_code(65, "some rows could not be turned into a message (the rest went out)"),
    error_code(66, "database (file, MySQL database) or table missing"),
    error_code(69, "broker unreachable (refused, timed out, DNS)"),
    error_code(
        74,
        "database or its lock file unreadable or unwritable, or the MySQL server unreachable"
    ),
    error_code(
        75,
        "partial: connection lost, acks not all in before the deadline, or another run holds the lock"
    ),
    error_code(
        77,
        "the broker refused the credentials or the client id, or the MySQL server the database login"
    ),
    error_code(78, "invalid configuration")
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
    /// row (one message per row, the default) or frame (one JSON message per Waspmote frame: the rows sharing id_wasp, frame_number and timestamp)
    #[argh(option)]
    pub group: Option<String>,
    /// the sync bit of this destination: a power of two (default 64, Meshlium's MQTT bit)
    #[argh(option)]
    pub sync_mask: Option<u64>,
    /// rows read from the database at a time, and marked per transaction (default 200)
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
    /// MQTT version: 5, 311 (also mqttv5, mqttv311) or auto (the default: 5, falling back to 3.1.1 when the broker does not speak it)
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
