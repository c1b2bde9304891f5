//! The validated configuration: flags, the JSON config file and the
//! environment, merged and checked once.
//!
//! Flags win over the config file. A bad value that came from a flag is a
//! usage error (exit 64); one that came from the config file, the
//! environment or a file the configuration names is a configuration error
//! (exit 78). The rest of the program only ever sees a [`Config`] (or, for
//! `init` and `status`, a [`Target`]) and never re-validates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::FlushArgs;
use crate::error::{Error, Exit, Result};
use crate::sys::{hostname, io_reason};
use crate::template::{PayloadFormat, Template};
use crate::tls::{Tls, TlsOptions, secret_file_warning};

/// The environment variable the MQTT password may come from.
pub const PASSWORD_ENV: &str = "FRAMEFLUSH_PASSWORD";
/// The environment variable the MySQL password may come from.
pub const DB_PASSWORD_ENV: &str = "FRAMEFLUSH_DB_PASSWORD";
/// The MySQL server's port when the URL names none.
pub const MYSQL_DEFAULT_PORT: u16 = 3306;
/// Meshlium's MQTT sender bit: the default destination.
pub const DEFAULT_SYNC_MASK: i64 = 64;
pub const DEFAULT_TOPIC: &str = "sensors/{id_wasp}/{sensor}";

/// Which database and which destination bit a command works on.
#[derive(Debug, Clone)]
pub struct Target {
    pub db: Database,
    /// A single bit: a row is unsent while `sync & sync_mask = 0`.
    pub sync_mask: i64,
    pub busy_timeout: Duration,
}

/// Where `sensorParser` lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A MySQL or MariaDB database (`--db mysql://…`).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    Mysql(MysqlDb),
}

/// A MySQL database as `mysql://USER@HOST[:PORT]/DATABASE[?socket=PATH]`
/// names it, and its password (from the environment or a file).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub struct MysqlDb {
    pub user: String,
    /// As given; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    pub database: String,
    /// The server's Unix socket, used instead of TCP when given.
    pub socket: Option<PathBuf>,
    pub password: Option<Secret>,
}

impl Database {
    /// The database as shown to people (errors, metrics labels): the file's
    /// path, or the URL (which never holds the password).
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Mysql(m) => m.to_string(),
        }
    }
}

impl fmt::Display for MysqlDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "mysql://{}@{host}", self.user)?;
        if self.port != MYSQL_DEFAULT_PORT {
            write!(f, ":{}", self.port)?;
        }
        write!(f, "/{}", self.database)?;
        if let Some(s) = &self.socket {
            write!(f, "?socket={}", s.display())?;
        }
        Ok(())
    }
}

/// Everything `flush` needs, validated.
#[derive(Debug)]
pub struct Config {
    pub target: Target,
    pub broker: Broker,
    pub topic: Template,
    pub payload: PayloadFormat,
    /// `--content-type`: under MQTT 5, JSON payloads carry content type
    /// `application/json` and payload format indicator 1 (off: 22 bytes
    /// saved per message).
    pub content_type: bool,
    /// One message per row, or per Waspmote frame.
    pub group: Group,
    /// Rows read per SELECT; the marking thread commits once this many acknowledged rows wait.
    pub batch: usize,
    /// Unacknowledged PUBLISHes at most.
    pub inflight: u16,
    pub limit: Option<u64>,
    /// PUBLISHes per second at most.
    pub rate: Option<f64>,
    pub max_time: Duration,
    pub ack_timeout: Duration,
    pub max_payload: usize,
    /// Runs a row may fail before it is quarantined.
    pub max_attempts: u32,
    /// `-V`: MQTT 5, 3.1.1, or 5 falling back to 3.1.1.
    pub protocol: Wanted,
    /// Where to write Prometheus metrics at the end of the run.
    pub metrics_file: Option<PathBuf>,
    pub dry_run: bool,
    pub json: bool,
    pub log: Log,
    /// Things the user should know but that do not stop the run (a secret
    /// file readable by others, `--insecure`); printed unless quiet.
    pub warnings: Vec<String>,
}

/// What one message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Row,
    /// The rows of one Waspmote frame (same id_wasp, frame_number and
    /// timestamp), as one JSON object.
    Frame,
}

/// The default topic of frame messages.
pub const DEFAULT_FRAME_TOPIC: &str = "sensors/{id_wasp}";

/// An MQTT protocol version: asked for with `-V`, negotiated by the
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "MQTT 3.1.1",
            Protocol::V5 => "MQTT 5",
        }
    }
    /// As `-V` takes it and as it is remembered.
    pub fn short(self) -> &'static str {
        match self {
            Protocol::V311 => "311",
            Protocol::V5 => "5",
        }
    }
}

/// `-V/--protocol-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// MQTT 5, and 3.1.1 only when the broker answers as a 3.1.1-only one (see `blame`).
    Auto,
    Only(Protocol),
}

impl Wanted {
    pub fn parse(s: &str) -> Option<Wanted> {
        match s {
            "auto" => Some(Wanted::Auto),
            "5" | "mqttv5" => Some(Wanted::Only(Protocol::V5)),
            "311" | "mqttv311" | "3.1.1" => Some(Wanted::Only(Protocol::V311)),
            _ => None,
        }
    }
}

/// How much a run says on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Log {
    pub verbose: bool,
    pub debug: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone)]
pub struct Broker {
    /// As given; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Where the password came from, for `check`: "the environment
    /// variable FRAMEFLUSH_PASSWORD" or "the file PATH".
    pub password_from: Option<String>,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    /// TLS settings, when TLS is on.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub tls: Option<Tls>,
}

/// A secret that never prints: its Debug and Display say `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The config file's keys: the long flags' names. `password` is recognised
/// only to be refused with a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileSettings {
    db: Option<String>,
    db_pw_file: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    url: Option<String>,
    id: Option<String>,
    username: Option<String>,
    password: Option<serde::de::IgnoredAny>,
    pw_file: Option<String>,
    cafile: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    insecure: Option<bool>,
    alpn: Option<String>,
    keepalive: Option<u16>,
    connect_timeout: Option<f64>,
    topic: Option<String>,
    topic_file: Option<String>,
    message: Option<String>,
    message_file: Option<String>,
    payload: Option<String>,
    content_type: Option<bool>,
    group: Option<String>,
    sync_mask: Option<u64>,
    batch: Option<u32>,
    inflight: Option<u16>,
    limit: Option<u64>,
    rate: Option<f64>,
    max_time: Option<f64>,
    ack_timeout: Option<f64>,
    max_payload: Option<u32>,
    busy_timeout: Option<f64>,
    max_attempts: Option<u32>,
    protocol_version: Option<String>,
    metrics_file: Option<String>,
    dry_run: Option<bool>,
    json: Option<bool>,
    verbose: Option<bool>,
    debug: Option<bool>,
    quiet: Option<bool>,
}

/// Where a value came from: decides between exit 64 and 78.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    File,
}

impl Origin {
    fn error(self, message: String) -> Error {
        match self {
            Origin::Flag => Error::usage(message),
            Origin::File => Error::config(message),
        }
    }
    fn name(self, key: &str) -> String {
        match self {
            Origin::Flag => format!("--{key}"),
            Origin::File => format!("config key \"{key}\""),
        }
    }
}

/// A value and where it came from.
struct Val<T> {
    v: T,
    from: Origin,
    key: &'static str,
}

impl<T> Val<T> {
    fn bad(&self, why: impl fmt::Display) -> Error {
        self.from
            .error(format!("{} {why}", self.from.name(self.key)))
    }
}

/// Like [`pick`], for a value a URL may also give: the flag, else the
/// flag's URL, else the file's key, else the file's URL. A bad value is
/// then blamed on the URL when it came from one.
fn pick_or_url<T>(
    key: &'static str,
    flag: Option<T>,
    flag_url: Option<T>,
    file: Option<T>,
    file_url: Option<T>,
) -> Option<Val<T>> {
    let (v, from, key) = match (flag, flag_url, file, file_url) {
        (Some(v), ..) => (v, Origin::Flag, key),
        (None, Some(v), ..) => (v, Origin::Flag, "url"),
        (None, None, Some(v), _) => (v, Origin::File, key),
        (None, None, None, Some(v)) => (v, Origin::File, "url"),
        (None, None, None, None) => return None,
    };
    Some(Val { v, from, key })
}

/// The flag's value if given, else the file's.
fn pick<T>(key: &'static str, flag: Option<T>, file: Option<T>) -> Option<Val<T>> {
    match (flag, file) {
        (Some(v), _) => Some(Val {
            v,
            from: Origin::Flag,
            key,
        }),
        (None, Some(v)) => Some(Val {
            v,
            from: Origin::File,
            key,
        }),
        (None, None) => None,
    }
}

fn read_file_settings(path: Option<&str>) -> Result<FileSettings> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    if path.is_empty() {
        return Err(Error::usage("--config is empty: give the config file"));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read config file {path}: {}", io_reason(&e))))?;
    if !text.trim_start().starts_with('{') {
        return Err(Error::config(format!(
            "config file {path}: must hold one JSON object, {{\"key\": value, ...}}"
        )));
    }
    let settings: FileSettings = serde_json::from_str(&text)
        .map_err(|e| Error::config(format!("config file {path}: {e}")))?;
    if settings.password.is_some() {
        return Err(Error::config(format!(
            "config file {path}: a password does not belong in the config file; \
             use the environment variable {PASSWORD_ENV} or the pw-file key"
        )));
    }
    Ok(settings)
}

fn target(
    db: Option<Val<String>>,
    db_pw_file: Option<Val<String>>,
    sync_mask: Option<Val<u64>>,
    busy_timeout: Option<Val<f64>>,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    warnings: &mut Vec<String>,
) -> Result<Target> {
    let db = match db {
        Some(db) if db.v.is_empty() => return Err(db.bad("is empty: give the database file")),
        Some(db) if db.v.starts_with("mysql://") => {
            let mut m = parse_mysql_url(&db.v).map_err(|why| db.bad(why))?;
            if !cfg!(feature = "mysql") {
                return Err(db.bad(
                    "names a MySQL database, but this frameflush was built without MySQL \
                     support: install the package frameflush-mysql instead, or build it with \
                     `cargo build --release --features mysql`",
                ));
            }
            m.password = match db_pw_file {
                Some(f) if f.v.is_empty() => {
                    return Err(f.bad("is empty: give the password file"));
                }
                Some(f) => {
                    let path = Path::new(&f.v);
                    let secret = read_password_file(path)?;
                    warnings.extend(secret_file_warning(path, "database password file"));
                    Some(secret)
                }
                None => match env(DB_PASSWORD_ENV) {
                    None => None,
                    Some(p) => match p.into_string() {
                        Ok(p) => Some(Secret(p)),
                        Err(_) => {
                            return Err(Error::config(format!(
                                "{DB_PASSWORD_ENV} is not valid UTF-8"
                            )));
                        }
                    },
                },
            };
            Database::Mysql(m)
        }
        Some(db) => {
            if let Some(f) = db_pw_file {
                return Err(f.bad(
                    "has no effect with an SQLite database: a password is for a mysql:// database",
                ));
            }
            Database::Sqlite(PathBuf::from(db.v))
        }
        None => return Err(Error::usage("no database given: use --db PATH")),
    };
    let sync_mask = match sync_mask {
        None => DEFAULT_SYNC_MASK,
        Some(m) => {
            if m.v == 0 || !m.v.is_power_of_two() || m.v > (1u64 << 62) {
                return Err(m.bad(format_args!(
                    "must be a single bit (a power of two from 1 to 2^62), not {}",
                    m.v
                )));
            }
            m.v as i64
        }
    };
    let busy_timeout = seconds(busy_timeout, 5.0, false)?;
    Ok(Target {
        db,
        sync_mask,
        busy_timeout,
    })
}

/// The parts of `mysql://USER@HOST[:PORT]/DATABASE[?socket=PATH]`. The
/// reasons never quote the URL: it might hold a password by mistake.
fn parse_mysql_url(s: &str) -> std::result::Result<MysqlDb, String> {
    const FORM: &str = "mysql://USER@HOST[:PORT]/DATABASE[?socket=PATH]";
    let rest = s.strip_prefix("mysql://").unwrap_or(s);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let Some((authority, database)) = rest.split_once('/') else {
        return Err(format!("names no database: use {FORM}"));
    };
    let Some((user, hostport)) = authority.rsplit_once('@') else {
        return Err(format!("names no user: use {FORM}"));
    };
    if user.contains(':') {
        return Err(format!(
            "a password does not belong in the URL; use the environment variable {DB_PASSWORD_ENV} or --db-pw-file"
        ));
    }
    if user.is_empty() {
        return Err("has an empty user name before '@'".into());
    }
    if user.len() > 80 || user.chars().any(|c| c.is_control() || c == '/') {
        return Err(
            "has a user name MySQL cannot have (at most 80 characters, no control characters)"
                .into(),
        );
    }
    let (host, port) = split_host_port(hostport)?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has no host, or one with spaces".to_string());
    }
    let port = port.unwrap_or(MYSQL_DEFAULT_PORT);
    if database.is_empty() {
        return Err(format!("names no database: use {FORM}"));
    }
    if database.len() > 64
        || database
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '.' | '`' | '#'))
    {
        return Err(
            "has a database name MySQL cannot have (at most 64 characters; no / \\ . ` #)".into(),
        );
    }
    let mut socket = None;
    if let Some(q) = query {
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some(("socket", p)) if p.starts_with('/') => socket = Some(PathBuf::from(p)),
                Some(("socket", _)) => {
                    return Err("has a socket that is not an absolute path (?socket=/run/mysqld/mysqld.sock)".into());
                }
                _ => return Err("has an unknown parameter: only ?socket=PATH is understood".into()),
            }
        }
    }
    Ok(MysqlDb {
        user: user.to_string(),
        host: host.to_string(),
        port,
        database: database.to_string(),
        socket,
        password: None,
    })
}

/// Seconds as a Duration: finite, not negative, at most a day; zero only
/// where `zero_ok`.
fn seconds(val: Option<Val<f64>>, default: f64, zero_ok: bool) -> Result<Duration> {
    let Some(val) = val else {
        return Ok(Duration::from_secs_f64(default));
    };
    if !val.v.is_finite() || val.v < 0.0 || (!zero_ok && val.v == 0.0) || val.v > 86_400.0 {
        let lower = if zero_ok { "from 0" } else { "greater than 0" };
        return Err(val.bad(format_args!(
            "must be a number of seconds {lower} up to 86400, not {}",
            val.v
        )));
    }
    Ok(Duration::from_secs_f64(val.v))
}

impl Target {
    /// The database and mask of `init`, `status`, `failures`, `requeue` and
    /// `purge`: from their flags and the config file's `db`, `db-pw-file`,
    /// `sync-mask` and `busy-timeout` keys, and the environment's
    /// FRAMEFLUSH_DB_PASSWORD.
    pub fn from_flags(
        db: Option<&str>,
        db_pw_file: Option<&str>,
        config: Option<&str>,
        sync_mask: Option<u64>,
    ) -> Result<Target> {
        let file = read_file_settings(config)?;
        let env = |k: &str| std::env::var_os(k);
        target(
            pick("db", db.map(str::to_string), file.db),
            pick(
                "db-pw-file",
                db_pw_file.map(str::to_string),
                file.db_pw_file,
            ),
            pick("sync-mask", sync_mask, file.sync_mask),
            pick("busy-timeout", None, file.busy_timeout),
            &env,
            &mut Vec::new(),
        )
    }
}

/// The parts of an `mqtt://[USER@]HOST[:PORT][/TOPIC]` URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: Option<u16>,
    username: Option<String>,
    topic: Option<String>,
}

/// `HOST[:PORT]` or `[IPV6]:PORT` of a URL: the host (without brackets)
/// and the port, 1 to 65535, when one is given. Errors finish "the URL …".
fn split_host_port(hostport: &str) -> std::result::Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            return Err("has an unclosed '[' in the host".to_string());
        };
        let after = &inner[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has text after the ']' of the host".to_string()),
        };
        (&inner[..end], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(format!("has a bad port {p:?} (1 to 65535)")),
        },
    };
    Ok((host, port))
}

fn parse_url(s: &str) -> std::result::Result<Url, String> {
    let (tls, rest) = if let Some(rest) = s
        .strip_prefix("mqtt://")
        .or_else(|| s.strip_prefix("tcp://"))
    {
        (false, rest)
    } else if let Some(rest) = s
        .strip_prefix("mqtts://")
        .or_else(|| s.strip_prefix("ssl://"))
    {
        (true, rest)
    } else {
        return Err("is not an mqtt://HOST[:PORT] or mqtts://HOST[:PORT] URL".to_string());
    };
    let (authority, topic) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        if u.contains(':') {
            return Err(format!(
                "a password does not belong in the URL; use the environment variable {PASSWORD_ENV} or --pw-file"
            ));
        }
        if u.is_empty() {
            return Err("has an empty user name before '@'".into());
        }
    }
    let (host, port) = split_host_port(hostport)?;
    if host.is_empty() {
        return Err("has no host".to_string());
    }
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        username: userinfo.map(str::to_string),
        topic: topic.filter(|t| !t.is_empty()).map(str::to_string),
    })
}

fn read_password_file(path: &Path) -> Result<Secret> {
    let text = std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "cannot read password file {}: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        Error::config(format!(
            "password file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    let first = text.lines().next().unwrap_or("");
    Ok(Secret(first.to_string()))
}

impl Config {
    /// Merges the flags, the config file and the environment, and validates.
    /// `env` looks up an environment variable (std::env::var_os in main).
    pub fn build(
        args: &FlushArgs,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config> {
        let file = read_file_settings(args.config.as_deref())?;
        let mut warnings = Vec::new();
        let target = target(
            pick("db", args.db.clone(), file.db.clone()),
            pick(
                "db-pw-file",
                args.db_pw_file.clone(),
                file.db_pw_file.clone(),
            ),
            pick("sync-mask", args.sync_mask, file.sync_mask),
            pick("busy-timeout", args.busy_timeout, file.busy_timeout),
            env,
            &mut warnings,
        )?;

        // The URL expands, in its own layer, into host, port, user and topic.
        let flag_url = match &args.url {
            Some(u) => Some(parse_url(u).map_err(|why| Error::usage(format!("--url {why}")))?),
            None => None,
        };
        if flag_url.is_some() && (args.host.is_some() || args.port.is_some()) {
            return Err(Error::usage(
                "--url and --host/--port both name the broker: give one or the other",
            ));
        }
        let file_url = match &file.url {
            Some(u) => Some(
                parse_url(u).map_err(|why| Error::config(format!("config key \"url\" {why}")))?,
            ),
            None => None,
        };
        if file_url.is_some() && (file.host.is_some() || file.port.is_some()) {
            return Err(Error::config(
                "config keys \"url\" and \"host\"/\"port\" both name the broker: keep one",
            ));
        }
        let url_tls = flag_url
            .as_ref()
            .or(file_url.as_ref())
            .is_some_and(|u| u.tls);
        let (fu_host, fu_port, fu_user, fu_topic) = match file_url {
            Some(u) => (Some(u.host), u.port, u.username, u.topic),
            None => (None, None, None, None),
        };
        let (au_host, au_port, au_user, au_topic) = match flag_url {
            Some(u) => (Some(u.host), u.port, u.username, u.topic),
            None => (None, None, None, None),
        };

        let host = pick_or_url(
            "host",
            args.host.clone(),
            au_host,
            file.host.clone(),
            fu_host,
        );
        let host = match host {
            None => "localhost".to_string(),
            Some(h) => {
                if h.v.is_empty() || h.v.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(h.bad(format_args!("{:?} is not a host name or address", h.v)));
                }
                h.v.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        let tls = tls_settings(args, &file, url_tls, env, &mut warnings)?;
        let port = match pick_or_url("port", args.port, au_port, file.port, fu_port) {
            None if tls.is_some() => 8883,
            None => 1883,
            Some(p) if p.v == 0 => return Err(p.bad("must be from 1 to 65535")),
            Some(p) => p.v,
        };
        let client_id = match pick("id", args.id.clone(), file.id.clone()) {
            None => {
                let base = format!("frameflush-{}", hostname());
                if target.sync_mask == DEFAULT_SYNC_MASK {
                    base
                } else {
                    // Two destinations on one broker must not kick each other off.
                    format!("{base}-{}", target.sync_mask)
                }
            }
            Some(id) => {
                if id.v.is_empty() || id.v.len() > 65_535 || id.v.contains('\0') {
                    return Err(id.bad("must be 1 to 65535 bytes without NUL"));
                }
                id.v
            }
        };
        let username = match pick_or_url(
            "username",
            args.username.clone(),
            au_user,
            file.username.clone(),
            fu_user,
        ) {
            None => None,
            Some(u) if u.v.is_empty() || u.v.len() > 65_535 || u.v.contains('\0') => {
                return Err(u.bad("must be 1 to 65535 bytes without NUL"));
            }
            Some(u) => Some(u.v),
        };
        let mut password_from = None;
        let password = match pick("pw-file", args.pw_file.clone(), file.pw_file.clone()) {
            Some(f) if f.v.is_empty() => return Err(f.bad("is empty: give the password file")),
            Some(f) => {
                let path = Path::new(&f.v);
                // No user name and a password file that is absent or empty:
                // a broker without authentication. The units always pass
                // --pw-file, and their credential is empty when the
                // administrator's password file is missing or empty.
                let absent = std::fs::metadata(path)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                if username.is_none() && absent {
                    None
                } else {
                    let secret = read_password_file(path)?;
                    if username.is_none() && secret.0.is_empty() {
                        None
                    } else {
                        warnings.extend(secret_file_warning(path, "password file"));
                        password_from = Some(format!("the file {}", path.display()));
                        Some(secret)
                    }
                }
            }
            None => match env(PASSWORD_ENV) {
                None => None,
                Some(p) => match p.into_string() {
                    Ok(p) => {
                        password_from = Some(format!("the environment variable {PASSWORD_ENV}"));
                        Some(Secret(p))
                    }
                    Err(_) => {
                        return Err(Error::config(format!("{PASSWORD_ENV} is not valid UTF-8")));
                    }
                },
            },
        };
        if let Some(p) = &password {
            if p.0.len() > 65_535 {
                return Err(Error::config(
                    "the password is longer than MQTT allows (65535 bytes)",
                ));
            }
            if username.is_none() {
                return Err(Error::config(
                    "a password is set but no user name: MQTT sends a password only with --username \
                     (for a broker without authentication, leave the password file empty)",
                ));
            }
        }
        let keepalive = match pick("keepalive", args.keepalive, file.keepalive) {
            None => Duration::from_secs(60),
            Some(k) if k.v != 0 && k.v < 5 => {
                return Err(k.bad("must be 0 (none) or from 5 to 65535 seconds"));
            }
            Some(k) => Duration::from_secs(u64::from(k.v)),
        };
        let connect_timeout = seconds(
            pick(
                "connect-timeout",
                args.connect_timeout,
                file.connect_timeout,
            ),
            10.0,
            false,
        )?;

        let group = match pick("group", args.group.clone(), file.group.clone()) {
            None => Group::Row,
            Some(g) => match g.v.as_str() {
                "row" => Group::Row,
                "frame" => Group::Frame,
                other => return Err(g.bad(format_args!("must be row or frame, not {other:?}"))),
            },
        };
        let topic_file = template_file(pick(
            "topic-file",
            args.topic_file.clone(),
            file.topic_file.clone(),
        ))?;
        if topic_file.is_some() && (args.topic.is_some() || file.topic.is_some()) {
            return Err(Error::usage(
                "--topic and --topic-file both give the topic: keep one",
            ));
        }
        let topic = match pick_or_url(
            "topic",
            args.topic.clone(),
            au_topic,
            file.topic.clone(),
            fu_topic,
        )
        .or(topic_file)
        {
            None => {
                let default = if group == Group::Frame {
                    DEFAULT_FRAME_TOPIC
                } else {
                    DEFAULT_TOPIC
                };
                Template::parse(default).map_err(|e| Error::new(Exit::Config, e))?
            }
            Some(t) => {
                let template =
                    Template::parse(&t.v).map_err(|why| t.bad(format_args!("{:?}: {why}", t.v)))?;
                if group == Group::Frame
                    && let Some(c) = template
                        .columns()
                        .find(|c| !crate::template::FRAME_COLUMNS.contains(c))
                {
                    return Err(t.bad(format_args!(
                        "uses {{{c}}}, which differs between the rows of a frame: with --group frame a topic may use {{id_wasp}} {{id_secret}} {{frame_type}} {{frame_number}} {{timestamp}}"
                    )));
                }
                template
            }
        };
        let message = match pick("message", args.message.clone(), file.message.clone()) {
            Some(m) => {
                if args.message_file.is_some() || file.message_file.is_some() {
                    return Err(m.bad("and a message file both give the message: keep one"));
                }
                Some(m)
            }
            None => template_file(pick(
                "message-file",
                args.message_file.clone(),
                file.message_file.clone(),
            ))?,
        };
        let payload = match (
            message,
            pick("payload", args.payload.clone(), file.payload.clone()),
        ) {
            (Some(m), Some(_)) => {
                return Err(m.bad("and --payload both say what a message holds: keep one"));
            }
            (Some(m), None) if group == Group::Frame => {
                return Err(m.bad("cannot carry a whole frame: drop it or --group frame"));
            }
            (Some(m), None) => PayloadFormat::Message(
                Template::parse_as(&m.v, crate::template::Kind::Message, &hostname())
                    .map_err(|why| m.bad(format_args!("{:?}: {why}", m.v)))?,
            ),
            (None, p) => match p {
                None => PayloadFormat::Json,
                Some(p) => match p.v.as_str() {
                    "json" => PayloadFormat::Json,
                    "value" if group == Group::Frame => {
                        return Err(
                            p.bad("value cannot carry a whole frame: drop it or --group frame")
                        );
                    }
                    "value" => PayloadFormat::Value,
                    other => {
                        return Err(p.bad(format_args!("must be json or value, not {other:?}")));
                    }
                },
            },
        };

        let batch = match pick("batch", args.batch, file.batch) {
            None => 200,
            Some(b) if b.v == 0 || b.v > 1_000_000 => {
                return Err(b.bad("must be from 1 to 1000000"));
            }
            Some(b) => b.v as usize,
        };
        let inflight = match pick("inflight", args.inflight, file.inflight) {
            None => 100,
            Some(i) if i.v == 0 => return Err(i.bad("must be from 1 to 65535")),
            Some(i) => i.v,
        };
        let limit = match pick("limit", args.limit, file.limit) {
            None => None,
            Some(l) if l.v == 0 => return Err(l.bad("must be at least 1")),
            Some(l) => Some(l.v),
        };
        let rate = match pick("rate", args.rate, file.rate) {
            None => None,
            Some(r) if !r.v.is_finite() || r.v < 0.01 || r.v > 1_000_000.0 => {
                return Err(r.bad(format_args!(
                    "must be from 0.01 to 1000000 messages per second, not {}",
                    r.v
                )));
            }
            Some(r) => Some(r.v),
        };
        let max_time = seconds(pick("max-time", args.max_time, file.max_time), 50.0, false)?;
        let ack_timeout = seconds(
            pick("ack-timeout", args.ack_timeout, file.ack_timeout),
            5.0,
            false,
        )?;
        let max_payload = match pick("max-payload", args.max_payload, file.max_payload) {
            None => 131_072,
            Some(m) if m.v == 0 || m.v > 268_435_455 - 65_545 => {
                return Err(m.bad("must be from 1 to 268369910 bytes"));
            }
            Some(m) => m.v as usize,
        };
        let max_attempts = match pick("max-attempts", args.max_attempts, file.max_attempts) {
            None => 3,
            Some(m) if m.v == 0 || m.v > 1_000_000 => {
                return Err(m.bad("must be from 1 to 1000000"));
            }
            Some(m) => m.v,
        };
        let protocol = match pick(
            "protocol-version",
            args.protocol_version.clone(),
            file.protocol_version.clone(),
        ) {
            None => Wanted::Auto,
            Some(p) => Wanted::parse(&p.v)
                .ok_or_else(|| p.bad("must be 5, 311 (or mqttv5, mqttv311) or auto"))?,
        };
        let metrics_file = match pick(
            "metrics-file",
            args.metrics_file.clone(),
            file.metrics_file.clone(),
        ) {
            Some(m) if m.v.is_empty() => return Err(m.bad("is empty: give a file")),
            other => other.map(|m| PathBuf::from(m.v)),
        };
        let flag = |cli: bool, file: Option<bool>| cli || file.unwrap_or(false);
        Ok(Config {
            target,
            broker: Broker {
                host,
                port,
                client_id,
                username,
                password,
                password_from,
                keepalive,
                connect_timeout,
                tls,
            },
            topic,
            payload,
            content_type: flag(args.content_type, file.content_type),
            group,
            batch,
            inflight,
            limit,
            rate,
            max_time,
            ack_timeout,
            max_payload,
            max_attempts,
            protocol,
            metrics_file,
            dry_run: flag(args.dry_run, file.dry_run),
            json: flag(args.json, file.json),
            log: Log {
                verbose: flag(args.verbose, file.verbose) || flag(args.debug, file.debug),
                debug: flag(args.debug, file.debug),
                quiet: flag(args.quiet, file.quiet),
            },
            warnings,
        })
    }
}

/// A template read from a file (Meshlium's `topic_template` and
/// `message_template`): the file's text without its final line end. The
/// value keeps the file option's origin, so a bad template is blamed on the
/// file option.
fn template_file(v: Option<Val<String>>) -> Result<Option<Val<String>>> {
    let Some(f) = v else { return Ok(None) };
    if f.v.is_empty() {
        return Err(f.bad("is empty: give a file"));
    }
    let text = std::fs::read(&f.v).map_err(|e| {
        Error::config(format!(
            "cannot read template file {}: {}",
            f.v,
            io_reason(&e)
        ))
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::config(format!("template file {} is not UTF-8 text", f.v)))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text).to_string();
    Ok(Some(Val {
        v: text,
        from: f.from,
        key: f.key,
    }))
}

/// The TLS settings when TLS is on (an `mqtts://` URL, `--cafile` or
/// `--cert`), with every file read and checked now.
fn tls_settings(
    args: &FlushArgs,
    file: &FileSettings,
    url_tls: bool,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    warnings: &mut Vec<String>,
) -> Result<Option<Tls>> {
    let path = |v: Option<Val<String>>| -> Result<Option<PathBuf>> {
        match v {
            Some(p) if p.v.is_empty() => Err(p.bad("is empty: give a file")),
            Some(p) => Ok(Some(PathBuf::from(p.v))),
            None => Ok(None),
        }
    };
    let cafile = path(pick("cafile", args.cafile.clone(), file.cafile.clone()))?;
    let cert = pick("cert", args.cert.clone(), file.cert.clone());
    let key = pick("key", args.key.clone(), file.key.clone());
    match (&cert, &key) {
        (Some(c), None) => return Err(c.bad("needs a key as well (--key)")),
        (None, Some(k)) => return Err(k.bad("needs a certificate as well (--cert)")),
        _ => {}
    }
    let (cert, key) = (path(cert)?, path(key)?);
    let insecure = pick("insecure", args.insecure.then_some(true), file.insecure).filter(|v| v.v);
    let alpn = match pick("alpn", args.alpn.clone(), file.alpn.clone()) {
        Some(a) if a.v.is_empty() || a.v.len() > 255 => return Err(a.bad("must be 1 to 255 bytes")),
        other => other,
    };
    if !(url_tls || cafile.is_some() || cert.is_some()) {
        if let Some(i) = insecure {
            return Err(i.bad("has no effect without TLS (an mqtts:// URL or --cafile)"));
        }
        if let Some(a) = alpn {
            return Err(a.bad("has no effect without TLS (an mqtts:// URL or --cafile)"));
        }
        return Ok(None);
    }
    if let Some(k) = &key {
        warnings.extend(secret_file_warning(k, "key file"));
    }
    if insecure.is_some() {
        warnings.push(
            "--insecure: the broker's certificate is not checked against its host name".into(),
        );
    }
    let opts = TlsOptions {
        cafile,
        cert,
        key,
        insecure: insecure.is_some(),
        alpn: alpn.map(|a| a.v),
    };
    Tls::build(&opts, env).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    fn args(db: &str) -> FlushArgs {
        FlushArgs {
            db: Some(db.into()),
            ..FlushArgs::default()
        }
    }

    #[test]
    fn urls_split_into_host_port_user_and_topic() {
        assert_eq!(
            parse_url("mqtt://alice@broker.example:8884/a/b"),
            Ok(Url {
                tls: false,
                host: "broker.example".into(),
                port: Some(8884),
                username: Some("alice".into()),
                topic: Some("a/b".into())
            })
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884").map(|u| (u.host, u.port)),
            Ok(("::1".into(), Some(1884)))
        );
        assert_eq!(parse_url("tcp://h").map(|u| u.port), Ok(None));
        assert_eq!(
            parse_url("mqtts://h:8884").map(|u| (u.tls, u.port)),
            Ok((true, Some(8884)))
        );
        assert_eq!(parse_url("ssl://h").map(|u| u.tls), Ok(true));
        for bad in [
            "http://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:pw@h",
            "mqtt://[::1",
            "h:1883",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_bad_flag_value_is_a_usage_error_and_a_bad_file_value_a_config_error() {
        let mut a = args("x.db");
        a.inflight = Some(0);
        assert_eq!(
            Config::build(&a, &no_env).map(|_| ()).unwrap_err().exit,
            Exit::Usage
        );
        a.inflight = None;
        a.sync_mask = Some(3);
        let e = Config::build(&a, &no_env).map(|_| ()).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("--sync-mask"), "{}", e.message);
    }

    #[test]
    fn a_password_needs_a_user_name_and_never_prints() {
        let env = |k: &str| (k == PASSWORD_ENV).then(|| "s3cret".into());
        let e = Config::build(&args("x.db"), &env).map(|_| ()).unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        let mut a = args("x.db");
        a.username = Some("u".into());
        let c = Config::build(&a, &env).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(
            c.broker.password.as_ref().map(Secret::expose),
            Some("s3cret")
        );
    }

    #[test]
    fn an_empty_or_absent_password_file_without_a_user_name_means_no_authentication() {
        let dir = std::env::temp_dir().join(format!("frameflush-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        let newline = dir.join("newline");
        let set = dir.join("set");
        std::fs::write(&empty, "").unwrap();
        std::fs::write(&newline, "\n").unwrap();
        std::fs::write(&set, "s3cret\n").unwrap();
        let absent = dir.join("absent");
        for file in [&empty, &newline, &absent] {
            let mut a = args("x.db");
            a.pw_file = Some(file.display().to_string());
            let c = Config::build(&a, &no_env).unwrap();
            assert!(c.broker.password.is_none(), "{}", file.display());
            assert!(c.broker.password_from.is_none());
            assert!(c.broker.username.is_none());
        }
        // A password without a user name stays a configuration error.
        let mut a = args("x.db");
        a.pw_file = Some(set.display().to_string());
        let e = Config::build(&a, &no_env).map(|_| ()).unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(e.message.contains("no user name"), "{}", e.message);
        assert!(!e.message.contains("s3cret"));
        // With a user name, an absent file is an error (a typo in the path),
        // and an empty one an empty password.
        a.username = Some("u".into());
        a.pw_file = Some(absent.display().to_string());
        let e = Config::build(&a, &no_env).map(|_| ()).unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(
            e.message.contains("cannot read password file"),
            "{}",
            e.message
        );
        a.pw_file = Some(empty.display().to_string());
        let c = Config::build(&a, &no_env).unwrap();
        assert_eq!(c.broker.password.as_ref().map(Secret::expose), Some(""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn by_default_a_run_ends_within_cron_s_minute() {
        let c = Config::build(&args("x.db"), &no_env).unwrap();
        assert_eq!(c.max_time, Duration::from_secs(50));
        assert_eq!(c.ack_timeout, Duration::from_secs(5));
        // A run lasts at most max-time + ack-timeout + 1 s of DISCONNECT.
        assert!(c.max_time + c.ack_timeout + Duration::from_secs(1) < Duration::from_secs(60));
    }

    #[test]
    fn the_default_client_id_names_the_host_and_a_non_default_mask() {
        let c = Config::build(&args("x.db"), &no_env).unwrap();
        assert_eq!(c.broker.client_id, format!("frameflush-{}", hostname()));
        let mut a = args("x.db");
        a.sync_mask = Some(128);
        let c = Config::build(&a, &no_env).unwrap();
        assert_eq!(c.broker.client_id, format!("frameflush-{}-128", hostname()));
    }

    #[test]
    fn mysql_urls_split_into_user_host_port_database_and_socket() {
        let m = parse_mysql_url("mysql://root@localhost/MeshliumDB").unwrap();
        assert_eq!(
            (
                m.user.as_str(),
                m.host.as_str(),
                m.port,
                m.database.as_str()
            ),
            ("root", "localhost", 3306, "MeshliumDB")
        );
        assert_eq!(m.socket, None);
        assert_eq!(m.to_string(), "mysql://root@localhost/MeshliumDB");
        let m = parse_mysql_url("mysql://u@[::1]:3307/db?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 3307));
        assert_eq!(m.socket, Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        assert_eq!(
            m.to_string(),
            "mysql://u@[::1]:3307/db?socket=/run/mysqld/mysqld.sock"
        );
        for bad in [
            "mysql://",
            "mysql://localhost/db",
            "mysql://@localhost/db",
            "mysql://root@localhost",
            "mysql://root@localhost/",
            "mysql://root@/db",
            "mysql://root@h:0/db",
            "mysql://root@h:99999/db",
            "mysql://root@h/a.b",
            "mysql://root@h/db?socket=relative.sock",
            "mysql://root@h/db?ssl=1",
            "mysql://root@[::1/db",
        ] {
            assert!(parse_mysql_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_password_in_a_mysql_url_is_refused_without_being_repeated() {
        let mut a = args("mysql://root:hunter2@localhost/MeshliumDB");
        let e = Config::build(&a, &no_env).map(|_| ()).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(e.message.contains(DB_PASSWORD_ENV), "{}", e.message);
        a.db = Some("x.db".into());
        a.db_pw_file = Some("pw".into());
        let e = Config::build(&a, &no_env).map(|_| ()).unwrap_err();
        assert!(e.message.contains("--db-pw-file"), "{}", e.message);
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn the_mysql_password_comes_from_the_environment_and_never_prints() {
        let env = |k: &str| (k == DB_PASSWORD_ENV).then(|| "libelium2007".into());
        let c = Config::build(&args("mysql://root@localhost/MeshliumDB"), &env).unwrap();
        assert!(!format!("{c:?}").contains("libelium2007"));
        let Database::Mysql(m) = &c.target.db else {
            panic!("not a MySQL target: {:?}", c.target.db)
        };
        assert_eq!(
            m.password.as_ref().map(Secret::expose),
            Some("libelium2007")
        );
        assert_eq!(c.target.db.display(), "mysql://root@localhost/MeshliumDB");
    }

    #[cfg(not(feature = "mysql"))]
    #[test]
    fn a_mysql_url_in_a_build_without_the_feature_says_how_to_build_one() {
        let e = Config::build(&args("mysql://root@localhost/MeshliumDB"), &no_env)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("--features mysql"), "{}", e.message);
        assert!(
            e.message.contains("package frameflush-mysql"),
            "{}",
            e.message
        );
    }
}
