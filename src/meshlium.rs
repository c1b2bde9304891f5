//! Meshlium compatibility: what users migrating from Libelium Meshlium's
//! MQTT sender bring along. Two things live here: PHP `date()` formats, which
//! Meshlium's `#TS("fmt")#` message placeholder takes ([`php_date`],
//! [`check_php_format`]), and reading Meshlium's MQTT settings directory
//! (`/mnt/lib/cfg/mqtt`: `setup.ini`, `topic_template`, `message_template`)
//! into the equivalent frameflush JSON config object ([`import`]). The
//! calendar arithmetic is done here, with std only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Exit, Result};
use crate::sys::io_reason;

// ---------------------------------------------------------------------------
// PHP date()
// ---------------------------------------------------------------------------

/// Indexed by the day of the week, 0 = Sunday.
const DAYS_FULL: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
/// Indexed by the month, 0 = January.
const MONTHS_FULL: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The zone a timestamp is read and shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// No offset, or a trailing `Z`.
    Utc,
    /// A written offset, in seconds east of UTC (as PHP's offset-type zones).
    Offset(i32),
}

impl Zone {
    fn seconds(self) -> i32 {
        match self {
            Zone::Utc => 0,
            Zone::Offset(s) => s,
        }
    }
}

/// A parsed sensorParser timestamp: the wall-clock fields as written, in
/// `zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    micros: u32,
    zone: Zone,
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

/// The day of the week, 0 = Sunday (PHP's `w`).
fn weekday(y: i64, m: u32, d: u32) -> u32 {
    // 1970-01-01 was a Thursday.
    (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32
}

/// The day of the year, 0 = January 1st (PHP's `z`).
fn day_of_year(y: i64, m: u32, d: u32) -> u32 {
    (days_from_civil(y, m, d) - days_from_civil(y, 1, 1)) as u32
}

/// ISO 8601 weeks in a year: 53 when it starts on a Thursday, or on a
/// Wednesday in a leap year.
fn iso_weeks_in_year(y: i64) -> u32 {
    let jan1 = weekday(y, 1, 1);
    if jan1 == 4 || (jan1 == 3 && is_leap(y)) {
        53
    } else {
        52
    }
}

/// The ISO 8601 week-numbering year and week (PHP's `o` and `W`).
fn iso_week(y: i64, m: u32, d: u32) -> (i64, u32) {
    let iso_day = i64::from(match weekday(y, m, d) {
        0 => 7,
        w => w,
    });
    let ordinal = i64::from(day_of_year(y, m, d)) + 1;
    let week = (ordinal - iso_day + 10) / 7;
    if week < 1 {
        (y - 1, iso_weeks_in_year(y - 1))
    } else if week > i64::from(iso_weeks_in_year(y)) {
        (y + 1, 1)
    } else {
        (y, week as u32)
    }
}

fn english_suffix(d: u32) -> &'static str {
    match d {
        11..=13 => "th",
        _ => match d % 10 {
            1 => "st",
            2 => "nd",
            3 => "rd",
            _ => "th",
        },
    }
}

impl Stamp {
    /// Seconds since the Unix epoch.
    fn unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
            - i64::from(self.zone.seconds())
    }

    fn weekday(&self) -> u32 {
        weekday(self.year, self.month, self.day)
    }

    fn day_name(&self) -> &'static str {
        DAYS_FULL[self.weekday() as usize % 7]
    }

    fn month_name(&self) -> &'static str {
        MONTHS_FULL[(self.month as usize + 11) % 12]
    }

    fn hour12(&self) -> u32 {
        match self.hour % 12 {
            0 => 12,
            h => h,
        }
    }
}

/// An offset as `+HH:MM` (`colon`) or `+HHMM`.
fn offset_text(seconds: i32, colon: bool) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let abs = seconds.unsigned_abs();
    let (h, m) = (abs / 3600, abs % 3600 / 60);
    if colon {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}")
    }
}

/// A year as PHP's `Y`: at least four digits, `-` before years BCE.
fn year_text(y: i64, plus: bool) -> String {
    let sign = if y < 0 {
        "-"
    } else if plus {
        "+"
    } else {
        ""
    };
    format!("{sign}{:04}", y.unsigned_abs())
}

/// One to nine ASCII digits as a number, or None.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, &c| n * 10 + u32::from(c - b'0')))
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM|±HH]`.
fn parse_timestamp(s: &str) -> Option<Stamp> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits(&b[0..4])?);
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0;
    if let Some(after) = rest.strip_prefix(b".") {
        let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Microseconds: the first six digits, padded on the right.
        micros = after[..n]
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(6)
            .fold(0, |us, &c| us * 10 + u32::from(c - b'0'));
        rest = &after[n..];
    }
    let zone = match rest {
        [] | [b'Z'] => Zone::Utc,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (h, m) = match tail {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                [h1, h2, b':', m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = (h * 3600 + m * 60) as i32;
            Zone::Offset(if *sign == b'-' { -secs } else { secs })
        }
        _ => return None,
    };
    Some(Stamp {
        year,
        month,
        day,
        hour,
        minute,
        second,
        micros,
        zone,
    })
}

/// Formats a sensorParser timestamp ("YYYY-MM-DD HH:MM:SS", also with a 'T'
/// separator, optional fractional seconds, optional trailing 'Z' or +HH:MM offset)
/// with a PHP date() format string. The timestamp is taken as UTC unless it carries an offset.
///
/// A timestamp with an offset is shown in that offset, as PHP's
/// `DateTime::format` does: the date and time letters give the time as
/// written, `U` and `B` the instant, and `e`, `T`, `P` give `+HH:MM`.
pub fn php_date(format: &str, timestamp: &str) -> Result<String, String> {
    check_php_format(format)?;
    let Some(t) = parse_timestamp(timestamp) else {
        let shown: String = timestamp.chars().take(64).collect();
        let more = if shown.len() < timestamp.len() {
            "…"
        } else {
            ""
        };
        return Err(format!(
            "timestamp {shown:?}{more} is not \"YYYY-MM-DD HH:MM:SS\" \
             (optionally with 'T', fractional seconds and Z or ±HH:MM)"
        ));
    };
    let mut out = String::with_capacity(format.len() * 2);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        // Writing to a String cannot fail.
        let _ = match c {
            // day
            'd' => write!(out, "{:02}", t.day),
            'D' => out.write_str(&t.day_name()[..3]),
            'j' => write!(out, "{}", t.day),
            'l' => out.write_str(t.day_name()),
            'N' => write!(out, "{}", if t.weekday() == 0 { 7 } else { t.weekday() }),
            'S' => out.write_str(english_suffix(t.day)),
            'w' => write!(out, "{}", t.weekday()),
            'z' => write!(out, "{}", day_of_year(t.year, t.month, t.day)),
            // week
            'W' => write!(out, "{:02}", iso_week(t.year, t.month, t.day).1),
            // month
            'F' => out.write_str(t.month_name()),
            'm' => write!(out, "{:02}", t.month),
            'M' => out.write_str(&t.month_name()[..3]),
            'n' => write!(out, "{}", t.month),
            't' => write!(out, "{}", days_in_month(t.year, t.month)),
            // year
            'L' => out.write_str(if is_leap(t.year) { "1" } else { "0" }),
            'o' => write!(out, "{}", iso_week(t.year, t.month, t.day).0),
            'X' => out.write_str(&year_text(t.year, true)),
            'x' => out.write_str(&year_text(t.year, t.year >= 10_000)),
            'Y' => out.write_str(&year_text(t.year, false)),
            'y' => write!(out, "{:02}", t.year.rem_euclid(100)),
            // time
            'a' => out.write_str(if t.hour >= 12 { "pm" } else { "am" }),
            'A' => out.write_str(if t.hour >= 12 { "PM" } else { "AM" }),
            'B' => {
                // Swatch Internet time: thousandths of a day in UTC+1.
                let beats = (t.unix().rem_euclid(86_400) + 3600) * 10 / 864 % 1000;
                write!(out, "{beats:03}")
            }
            'g' => write!(out, "{}", t.hour12()),
            'G' => write!(out, "{}", t.hour),
            'h' => write!(out, "{:02}", t.hour12()),
            'H' => write!(out, "{:02}", t.hour),
            'i' => write!(out, "{:02}", t.minute),
            's' => write!(out, "{:02}", t.second),
            'u' => write!(out, "{:06}", t.micros),
            'v' => write!(out, "{:03}", t.micros / 1000),
            // time zone
            'e' | 'T' => match t.zone {
                Zone::Utc => out.write_str("UTC"),
                Zone::Offset(s) => out.write_str(&offset_text(s, true)),
            },
            'I' => out.write_str("0"),
            'O' => out.write_str(&offset_text(t.zone.seconds(), false)),
            'P' => out.write_str(&offset_text(t.zone.seconds(), true)),
            'p' if t.zone.seconds() == 0 => out.write_str("Z"),
            'p' => out.write_str(&offset_text(t.zone.seconds(), true)),
            'Z' => write!(out, "{}", t.zone.seconds()),
            // full date and time
            'c' => write!(
                out,
                "{}-{:02}-{:02}T{:02}:{:02}:{:02}{}",
                year_text(t.year, false),
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second,
                offset_text(t.zone.seconds(), true)
            ),
            'r' => write!(
                out,
                "{}, {:02} {} {} {:02}:{:02}:{:02} {}",
                &t.day_name()[..3],
                t.day,
                &t.month_name()[..3],
                year_text(t.year, false),
                t.hour,
                t.minute,
                t.second,
                offset_text(t.zone.seconds(), false)
            ),
            'U' => write!(out, "{}", t.unix()),
            // check_php_format made sure a character follows.
            '\\' => match chars.next() {
                Some(next) => out.write_char(next),
                None => Ok(()),
            },
            other => out.write_char(other),
        };
    }
    Ok(out)
}

/// Checks a PHP date() format once (unknown letters are literal in PHP, so this only
/// rejects what cannot be rendered, e.g. a trailing backslash); returns the reason.
pub fn check_php_format(format: &str) -> Result<(), String> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next().is_none() {
            return Err(
                "ends with a backslash, which escapes nothing (write \\\\ for a literal backslash)"
                    .into(),
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Meshlium's MQTT settings
// ---------------------------------------------------------------------------

/// Meshlium's topic when `topic_template` is missing.
const MESHLIUM_TOPIC: &str = "/#MESHLIUM#/#ID_WASP#";
/// Meshlium's message when `message_template` is missing.
const MESHLIUM_MESSAGE: &str = "#SENSOR#|#VALUE#|#TIMESTAMP#";
/// The `sync` bit Meshlium's MQTT sender sets.
const MESHLIUM_SYNC_MASK: u64 = 64;
/// Where Meshlium keeps these files.
const MESHLIUM_DIR: &str = "/mnt/lib/cfg/mqtt";
/// Where a Meshlium keeps `sensorParser`: its MySQL database, as the
/// factory user.
const MESHLIUM_DB: &str = "mysql://root@localhost/MeshliumDB";

/// The `[mqtt]` keys frameflush knows what to do with.
const KNOWN_KEYS: [&str; 9] = [
    "mqttserver",
    "mqttport",
    "mqttuser",
    "mqttpassword",
    "qos",
    "log_level",
    "limit",
    "interval",
    "client_id",
];

/// One `key = value` line of an INI file.
#[derive(Debug)]
struct Entry {
    /// The section it is in, None before any section header.
    section: Option<String>,
    key: String,
    value: String,
}

/// Reads a whole file: Ok(None) when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::new(
            Exit::IoErr,
            format!("cannot read {}: {}", path.display(), io_reason(&e)),
        )),
    }
}

/// The value part of `key = value`: quotes removed, a trailing comment cut.
fn ini_value(raw: &str) -> std::result::Result<String, &'static str> {
    let raw = raw.trim();
    let rest_is_comment = |rest: &str| {
        let rest = rest.trim_start();
        rest.is_empty() || rest.starts_with(';') || rest.starts_with('#')
    };
    if let Some(inner) = raw.strip_prefix('"') {
        // Double quotes: \" and \\ are escapes, any other backslash is literal.
        let mut value = String::new();
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.clone().next() {
                    Some((_, e @ ('"' | '\\'))) => {
                        chars.next();
                        value.push(e);
                    }
                    _ => value.push('\\'),
                },
                '"' => {
                    return if rest_is_comment(&inner[i + 1..]) {
                        Ok(value)
                    } else {
                        Err("has text after its closing double quote")
                    };
                }
                c => value.push(c),
            }
        }
        return Err("has no closing double quote");
    }
    if let Some(inner) = raw.strip_prefix('\'') {
        let Some(end) = inner.find('\'') else {
            return Err("has no closing single quote");
        };
        return if rest_is_comment(&inner[end + 1..]) {
            Ok(inner[..end].to_string())
        } else {
            Err("has text after its closing single quote")
        };
    }
    // Unquoted: ';' starts a comment anywhere (as in PHP), '#' after a blank.
    let mut end = raw.len();
    let mut prev_blank = false;
    for (i, c) in raw.char_indices() {
        if c == ';' || (c == '#' && prev_blank) {
            end = i;
            break;
        }
        prev_blank = c.is_whitespace();
    }
    Ok(raw[..end].trim_end().to_string())
}

/// A parsed INI file.
#[derive(Debug, Default)]
struct Ini {
    entries: Vec<Entry>,
    /// Every section header's name, also of empty sections.
    sections: Vec<String>,
    /// The numbers of the lines that are neither a section header, a
    /// `key = value` nor a comment.
    odd_lines: Vec<usize>,
}

/// Parses an INI file (the path is for error messages).
fn parse_ini(bytes: &[u8], path: &Path) -> Result<Ini> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut ini = Ini::default();
    let mut section = None;
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = n + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| {
            let key = line
                .iter()
                .position(|&b| b == b'=')
                .map(|i| String::from_utf8_lossy(&line[..i]).trim().to_string())
                .filter(|k| !k.is_empty())
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default();
            Error::config(format!(
                "{} line {n}{key} is not valid UTF-8",
                path.display()
            ))
        })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some(end) = header.find(']') else {
                return Err(Error::config(format!(
                    "{} line {n}: the section header has no closing ']'",
                    path.display()
                )));
            };
            let name = header[..end].trim().to_string();
            ini.sections.push(name.clone());
            section = Some(name);
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            ini.odd_lines.push(n);
            continue;
        };
        let key = key.trim().to_string();
        let value = ini_value(raw).map_err(|why| {
            Error::config(format!(
                "{} line {n}: the value of {key} {why}",
                path.display()
            ))
        })?;
        ini.entries.push(Entry {
            section: section.clone(),
            key,
            value,
        });
    }
    Ok(ini)
}

/// A template file's text without its trailing line end; None when the
/// file is missing or empty.
fn read_template(path: &Path) -> Result<Option<String>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::config(format!("{} is not valid UTF-8", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']);
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// A number of seconds in words: "every minute", "every 5 minutes",
/// "every 30 s".
fn every(seconds: u64) -> String {
    match seconds {
        3600 => "every hour".into(),
        s if s % 3600 == 0 => format!("every {} hours", s / 3600),
        60 => "every minute".into(),
        s if s % 60 == 0 => format!("every {} minutes", s / 60),
        s => format!("every {s} s"),
    }
}

/// How scripts/frameflush.timer (shipped with `OnCalendar=minutely`) runs
/// frameflush every `seconds`.
fn timer_setting(seconds: u64) -> String {
    match seconds {
        60 => "as shipped, OnCalendar=minutely".into(),
        s if s % 60 == 0 && 3600 % s == 0 => format!("with OnCalendar=*:0/{}", s / 60),
        s if s % 3600 == 0 && 86_400 % s == 0 => format!("with OnCalendar=0/{}:00", s / 3600),
        s => {
            format!("with OnBootSec={s}s and OnUnitActiveSec={s}s in place of OnCalendar=minutely")
        }
    }
}

/// Whether a URL's authority (after `scheme://`, before the path) names a
/// port.
fn authority_has_port(authority: &str) -> bool {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match hostport.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => hostport.contains(':'),
    }
}

/// The broker part of the config: `host` and `port`, or `url`.
fn import_server(
    server: &str,
    port: Option<u16>,
    out: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) {
    let server = server.trim();
    if server.is_empty() {
        notes.push(
            "setup.ini names no mqttserver: set \"host\" (frameflush would try localhost)".into(),
        );
        if let Some(p) = port {
            out.insert("port".into(), p.into());
        }
        return;
    }
    // "host:port" (one colon, digits after it) is a URL without a scheme;
    // an IPv6 address has more colons.
    let url = if server.contains("://") {
        server.to_string()
    } else if server.matches(':').count() == 1
        && server.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())
        })
    {
        format!("mqtt://{server}")
    } else {
        out.insert("host".into(), server.into());
        if let Some(p) = port {
            out.insert("port".into(), p.into());
        }
        return;
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url.as_str()));
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "mqtt" | "tcp" | "mqtts" | "ssl") {
        notes.push(format!(
            "mqttserver is a {scheme}:// URL: frameflush understands mqtt://, tcp://, mqtts:// and ssl:// only; correct \"url\""
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // A password in the URL goes the way of mqttpassword.
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            notes.push(
                "mqttserver's URL carries a password: left out of \"url\"; write it to a file \
                 readable only by frameflush's user and pass it with --pw-file FILE (or the pw-file key)"
                    .into(),
            );
            if user.is_empty() {
                host.to_string()
            } else {
                format!("{user}@{host}")
            }
        }
        _ => authority.to_string(),
    };
    let authority = match port {
        Some(p) if !authority_has_port(&authority) => format!("{authority}:{p}"),
        Some(p) => {
            notes.push(format!(
                "mqttserver's URL names its own port and mqttport = {p}: the URL's port is kept"
            ));
            authority
        }
        None => authority,
    };
    out.insert("url".into(), format!("{scheme}://{authority}{path}").into());
}

/// Reads a Meshlium MQTT settings directory (setup.ini, topic_template, message_template;
/// the template files are optional, setup.ini is required) and returns the equivalent
/// frameflush JSON config object and notes for the user (one line each, e.g. that
/// setup.ini holds a password that must go into a pw-file, that qos 0/2 becomes QoS 1,
/// what interval/limit map to).
///
/// setup.ini's password is never copied, into the object or the notes.
pub fn import(dir: &Path) -> Result<(Value, Vec<String>)> {
    let setup = dir.join("setup.ini");
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::new(
                Exit::NoInput,
                format!(
                    "{} is not a directory: give the directory that holds setup.ini (on a Meshlium, {MESHLIUM_DIR})",
                    dir.display()
                ),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::new(
                Exit::NoInput,
                format!(
                    "cannot read {}: no such directory {} (on a Meshlium the settings are in {MESHLIUM_DIR})",
                    setup.display(),
                    dir.display()
                ),
            ));
        }
        Err(e) => {
            return Err(Error::new(
                Exit::IoErr,
                format!("cannot read {}: {}", dir.display(), io_reason(&e)),
            ));
        }
    }
    let Some(bytes) = read_optional(&setup)? else {
        return Err(Error::new(
            Exit::NoInput,
            format!(
                "{} does not exist: Meshlium's MQTT settings need it",
                setup.display()
            ),
        ));
    };

    let mut notes = Vec::new();
    let ini = parse_ini(&bytes, &setup)?;
    if !ini.odd_lines.is_empty() {
        notes.push(format!(
            "setup.ini {} neither a [section], a key = value nor a comment: ignored",
            listed("line", "is", &ini.odd_lines)
        ));
    }
    let has_mqtt = ini.sections.iter().any(|s| is_mqtt(s));
    if !has_mqtt {
        notes.push("setup.ini has no [mqtt] section: read the keys outside any section".into());
    }
    // The last of a repeated key wins, as in PHP.
    let mut settings = BTreeMap::new();
    for e in ini.entries {
        let wanted = if has_mqtt {
            e.section.as_deref().is_some_and(is_mqtt)
        } else {
            e.section.is_none()
        };
        if !wanted {
            continue;
        }
        settings.insert(e.key.to_ascii_lowercase(), e.value);
    }
    let get = |key: &str| settings.get(key).map(|v| v.trim());
    let nonempty = |key: &str| get(key).filter(|v| !v.is_empty());

    let mut out = Map::new();
    let port = match nonempty("mqttport") {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                return Err(Error::config(format!(
                    "{}: mqttport = {p:?} is not a port number (1 to 65535)",
                    setup.display()
                )));
            }
        },
    };
    import_server(get("mqttserver").unwrap_or(""), port, &mut out, &mut notes);

    let user = nonempty("mqttuser");
    if let Some(u) = user {
        out.insert("username".into(), u.into());
    }
    if nonempty("mqttpassword").is_some() {
        notes.push(
            "setup.ini holds a password: write it to a file readable only by frameflush's user \
             and pass it with --pw-file FILE (or the pw-file key)"
                .into(),
        );
        if user.is_none() {
            notes.push(
                "setup.ini has a password but no mqttuser: MQTT sends a password only with a user name; set \"username\""
                    .into(),
            );
        }
    }
    if let Some(id) = nonempty("client_id") {
        out.insert("id".into(), id.into());
    }

    match get("qos") {
        Some("1") => {}
        None | Some("") => notes.push(
            "setup.ini sets no qos (Meshlium's default is QoS 0, at most once): frameflush always \
             publishes at QoS 1 and marks a row sent only after the broker acknowledged it, so a \
             reading may arrive twice but is not lost"
                .into(),
        ),
        Some("0") => notes.push(
            "Meshlium published at QoS 0 (at most once): frameflush always publishes at QoS 1 and \
             marks a row sent only after the broker acknowledged it, so a reading may arrive twice \
             but is not lost"
                .into(),
        ),
        Some("2") => notes.push(
            "Meshlium was set to QoS 2 (exactly once): frameflush always publishes at QoS 1 \
             (at least once), so subscribers may see a reading twice"
                .into(),
        ),
        Some(q) => notes.push(format!(
            "qos = {q:?} is not 0, 1 or 2: ignored; frameflush always publishes at QoS 1"
        )),
    }

    match nonempty("limit") {
        None => {}
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=1_000_000).contains(&n) => {
                out.insert("batch".into(), n.into());
                notes.push(format!(
                    "Meshlium sent at most limit = {n} rows per interval; frameflush sends every \
                     unsent row in a run, {n} per transaction (\"batch\": {n}); add \"limit\": {n} \
                     to cap a run the way Meshlium did"
                ));
            }
            _ => {
                return Err(Error::config(format!(
                    "{}: limit = {l:?} is not a number of rows from 1 to 1000000",
                    setup.display()
                )));
            }
        },
    }

    let interval = match nonempty("interval") {
        None => Some((60, " (Meshlium's default; setup.ini sets no interval)")),
        Some(i) => match i.parse::<u64>() {
            Ok(s) if s > 0 => Some((s, "")),
            _ => {
                notes.push(format!(
                    "interval = {i:?} is not a number of seconds: ignored; run frameflush from a \
                     timer every minute (scripts/frameflush.timer)"
                ));
                None
            }
        },
    };
    if let Some((s, why)) = interval {
        notes.push(format!(
            "Meshlium ran every {s} s{why}: run frameflush from a timer {} (scripts/frameflush.timer {})",
            every(s),
            timer_setting(s)
        ));
    }

    if get("log_level").is_some() {
        notes.push(
            "log_level is ignored: frameflush prints nothing when all went well and one error \
             line otherwise; \"verbose\" or \"debug\" say more, \"quiet\" nothing"
                .into(),
        );
    }
    let unknown: Vec<String> = settings
        .keys()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
        .map(|k| format!("{k:?}"))
        .collect();
    if !unknown.is_empty() {
        let verb = if unknown.len() == 1 { "has" } else { "have" };
        notes.push(format!(
            "setup.ini {} no frameflush equivalent: ignored",
            listed("key", verb, &unknown)
        ));
    }

    let topic_path = dir.join("topic_template");
    let topic = match read_template(&topic_path)? {
        Some(t) => t,
        None => {
            notes.push(format!(
                "{} is missing or empty: used Meshlium's default topic {MESHLIUM_TOPIC:?}",
                topic_path.display()
            ));
            MESHLIUM_TOPIC.to_string()
        }
    };
    if let Some(rest) = topic.strip_prefix('/') {
        notes.push(format!(
            "the topic starts with '/', as Meshlium's default does: kept, so subscribers see the \
             same topics (the first level is empty, valid but unusual); consider {rest:?} once \
             subscribers are updated"
        ));
    }
    out.insert("topic".into(), topic.into());

    let message_path = dir.join("message_template");
    let message = match read_template(&message_path)? {
        Some(m) => m,
        None => {
            notes.push(format!(
                "{} is missing or empty: used Meshlium's default message {MESHLIUM_MESSAGE:?}",
                message_path.display()
            ));
            MESHLIUM_MESSAGE.to_string()
        }
    };
    out.insert("message".into(), message.into());

    out.insert("db".into(), MESHLIUM_DB.into());
    notes.push(format!(
        "\"db\": {MESHLIUM_DB:?} is Meshlium's own MySQL database (it needs a frameflush built with \
         --features mysql); its password (the factory one unless it was changed) goes into a file \
         readable only by frameflush's user, named by the \"db-pw-file\" key or --db-pw-file, \
         never into the config; add ?socket=/var/run/mysqld/mysqld.sock to the URL if the server \
         does not listen on TCP"
    ));
    out.insert("sync-mask".into(), MESHLIUM_SYNC_MASK.into());
    notes.push(format!(
        "\"sync-mask\": {MESHLIUM_SYNC_MASK} is the bit Meshlium's own MQTT sender sets: stop \
         Meshlium's MQTT sender before running frameflush, or the two share the bit and each \
         reading goes out through only one of them"
    ));

    Ok((Value::Object(out), notes))
}

fn is_mqtt(section: &str) -> bool {
    section.eq_ignore_ascii_case("mqtt")
}

/// "line 3 is", "lines 3, 5 are", "lines 1, 2, 3, 4, 5 and 7 more are": a
/// list for a note, at most five items shown.
fn listed(noun: &str, verb: &str, items: &[impl std::fmt::Display]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = items.iter().take(SHOWN).map(ToString::to_string).collect();
    let more = match items.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let (noun, verb) = match (items.len(), verb) {
        (1, _) => (noun.to_string(), verb),
        (_, "is") => (format!("{noun}s"), "are"),
        _ => (format!("{noun}s"), verb),
    };
    format!("{noun} {}{more} {verb}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// php_date on a timestamp that must parse.
    fn fmt(format: &str, timestamp: &str) -> String {
        php_date(format, timestamp).unwrap_or_else(|e| panic!("{format:?} {timestamp:?}: {e}"))
    }

    const TUESDAY: &str = "2026-11-24 10:00:00";

    // Expected values below were checked against GNU date, e.g.
    // `date -u -d '2026-11-24 10:00:00' '+%s %a %u %w %j %V %G'`
    // gives `1795514400 Tue 2 2 328 48 2026` (%j counts from 1, PHP's z from 0).

    #[test]
    fn every_letter_renders_like_php_for_a_tuesday_in_november() {
        let cases = [
            ("d", "24"),
            ("D", "Tue"),
            ("j", "24"),
            ("l", "Tuesday"),
            ("N", "2"),
            ("S", "th"),
            ("w", "2"),
            ("z", "327"),
            ("W", "48"),
            ("F", "November"),
            ("m", "11"),
            ("M", "Nov"),
            ("n", "11"),
            ("t", "30"),
            ("L", "0"),
            ("o", "2026"),
            ("X", "+2026"),
            ("x", "2026"),
            ("Y", "2026"),
            ("y", "26"),
            ("a", "am"),
            ("A", "AM"),
            ("B", "458"),
            ("g", "10"),
            ("G", "10"),
            ("h", "10"),
            ("H", "10"),
            ("i", "00"),
            ("s", "00"),
            ("u", "000000"),
            ("v", "000"),
            ("e", "UTC"),
            ("I", "0"),
            ("O", "+0000"),
            ("P", "+00:00"),
            ("p", "Z"),
            ("T", "UTC"),
            ("Z", "0"),
            ("c", "2026-11-24T10:00:00+00:00"),
            ("r", "Tue, 24 Nov 2026 10:00:00 +0000"),
            ("U", "1795514400"),
        ];
        for (format, want) in cases {
            assert_eq!(fmt(format, TUESDAY), want, "format {format:?}");
        }
    }

    #[test]
    fn common_formats_combine_letters_and_literal_text() {
        assert_eq!(fmt("Y-m-d H:i:s", TUESDAY), "2026-11-24 10:00:00");
        assert_eq!(fmt("D, d M Y", TUESDAY), "Tue, 24 Nov 2026");
        assert_eq!(
            fmt("l jS \\of F Y h:i:s A", TUESDAY),
            "Tuesday 24th of November 2026 10:00:00 AM"
        );
        assert_eq!(fmt("Y-m-d\\TH:i:sP", TUESDAY), fmt("c", TUESDAY));
        assert_eq!(fmt("D, d M Y H:i:s O", TUESDAY), fmt("r", TUESDAY));
        assert_eq!(fmt("", TUESDAY), "");
    }

    #[test]
    fn the_t_separator_fractions_and_a_trailing_z_are_accepted() {
        assert_eq!(fmt("U", "2026-11-24T10:00:00"), "1795514400");
        assert_eq!(fmt("U e T", "2026-11-24T10:00:00Z"), "1795514400 UTC UTC");
        assert_eq!(fmt("u v", "2026-11-24 10:00:00.5"), "500000 500");
        assert_eq!(fmt("u v", "2026-11-24 10:00:00.123456789"), "123456 123");
        assert_eq!(fmt("u v", "2026-11-24T10:00:00.000001Z"), "000001 000");
        assert_eq!(fmt("s U", "2026-11-24 10:00:59.999"), "59 1795514459");
    }

    #[test]
    fn ordinal_suffixes_follow_english() {
        let cases = [
            (1, "1st"),
            (2, "2nd"),
            (3, "3rd"),
            (4, "4th"),
            (10, "10th"),
            (11, "11th"),
            (12, "12th"),
            (13, "13th"),
            (20, "20th"),
            (21, "21st"),
            (22, "22nd"),
            (23, "23rd"),
            (24, "24th"),
            (30, "30th"),
            (31, "31st"),
        ];
        for (day, want) in cases {
            assert_eq!(fmt("jS", &format!("2026-01-{day:02} 00:00:00")), want);
        }
    }

    #[test]
    fn twelve_hour_letters_turn_at_midnight_and_noon() {
        assert_eq!(
            fmt("g h G H a A", "2026-11-24 00:05:00"),
            "12 12 0 00 am AM"
        );
        assert_eq!(fmt("g h G H a A", "2026-11-24 01:00:00"), "1 01 1 01 am AM");
        assert_eq!(
            fmt("g h G H a A", "2026-11-24 11:59:59"),
            "11 11 11 11 am AM"
        );
        assert_eq!(
            fmt("g h G H a A", "2026-11-24 12:30:00"),
            "12 12 12 12 pm PM"
        );
        assert_eq!(
            fmt("g h G H a A", "2026-11-24 13:00:00"),
            "1 01 13 13 pm PM"
        );
        assert_eq!(
            fmt("g h G H a A", "2026-11-24 23:59:00"),
            "11 11 23 23 pm PM"
        );
    }

    #[test]
    fn swatch_beats_count_thousandths_of_a_day_in_utc_plus_one() {
        // ((seconds of the UTC day + 3600) * 10 / 864) % 1000, as PHP.
        assert_eq!(fmt("B", "2026-11-24 00:00:00"), "041");
        assert_eq!(fmt("B", "2026-11-24 22:59:59"), "999");
        assert_eq!(fmt("B", "2026-11-24 23:00:00"), "000");
        assert_eq!(fmt("B", "2026-11-24 23:01:27"), "001");
        assert_eq!(fmt("B", "1969-12-31 23:59:59"), "041");
        assert_eq!(fmt("B", "2024-02-29 12:34:56"), "565");
    }

    #[test]
    fn the_leap_day_and_century_years_count_right() {
        // date -u -d '2024-02-29 12:34:56' '+%s %a %u %j %V %G': 1709210096 Thu 4 060 09 2024
        assert_eq!(
            fmt("L t z N D W o U", "2024-02-29 12:34:56"),
            "1 29 59 4 Thu 09 2024 1709210096"
        );
        assert_eq!(fmt("L t", "2000-02-01 00:00:00"), "1 29");
        assert_eq!(fmt("L t", "1900-02-01 00:00:00"), "0 28");
        // date -u -d '2100-02-28' '+%s %a %j': 4107456000 Sun 059
        assert_eq!(
            fmt("L t U D z", "2100-02-28 00:00:00"),
            "0 28 4107456000 Sun 58"
        );
        assert_eq!(fmt("z", "2024-12-31 00:00:00"), "365");
        assert_eq!(fmt("z", "2026-12-31 00:00:00"), "364");
        assert!(php_date("U", "2100-02-29 00:00:00").is_err());
        assert!(php_date("U", "2026-02-29 00:00:00").is_err());
    }

    #[test]
    fn the_iso_week_and_year_follow_iso_8601_around_new_year() {
        // Each checked with date -u -d DAY '+%V %G %u'.
        let cases = [
            ("2026-12-31", "53 2026 4 2026"),
            ("2027-01-01", "53 2026 5 2027"),
            ("2027-01-03", "53 2026 7 2027"),
            ("2027-01-04", "01 2027 1 2027"),
            ("2020-12-31", "53 2020 4 2020"),
            ("2021-01-03", "53 2020 7 2021"),
            ("2024-12-30", "01 2025 1 2024"),
            ("2000-01-01", "52 1999 6 2000"),
            ("1970-01-01", "01 1970 4 1970"),
            ("1969-12-31", "01 1970 3 1969"),
            ("0000-01-01", "52 -1 6 0000"),
            ("9999-12-31", "52 9999 5 9999"),
        ];
        for (day, want) in cases {
            assert_eq!(fmt("W o N Y", &format!("{day} 00:00:00")), want, "{day}");
        }
    }

    #[test]
    fn the_epoch_seconds_match_gnu_date_far_from_1970() {
        assert_eq!(fmt("U", "1970-01-01 00:00:00"), "0");
        assert_eq!(fmt("U", "1969-12-31 23:59:59"), "-1");
        assert_eq!(fmt("U D", "0001-01-01 00:00:00"), "-62135596800 Mon");
        assert_eq!(fmt("U D", "0000-01-01 00:00:00"), "-62167219200 Sat");
        assert_eq!(fmt("U D", "9999-12-31 23:59:59"), "253402300799 Fri");
    }

    #[test]
    fn years_print_with_four_digits_and_the_expanded_forms_sign() {
        assert_eq!(fmt("Y y x X", "0000-03-01 00:00:00"), "0000 00 0000 +0000");
        assert_eq!(fmt("Y y x X", "0787-03-01 00:00:00"), "0787 87 0787 +0787");
        assert_eq!(fmt("Y y x X", "2009-03-01 00:00:00"), "2009 09 2009 +2009");
    }

    #[test]
    fn an_offset_moves_the_instant_and_shows_in_the_zone_letters() {
        let plus2 = "2026-11-24T10:00:00+02:00";
        assert_eq!(fmt("U", plus2), "1795507200"); // two hours before the UTC reading
        assert_eq!(fmt("Y-m-d H:i:s", plus2), "2026-11-24 10:00:00");
        assert_eq!(
            fmt("e|T|O|P|p|Z|I", plus2),
            "+02:00|+02:00|+0200|+02:00|+02:00|7200|0"
        );
        assert_eq!(fmt("c", plus2), "2026-11-24T10:00:00+02:00");
        assert_eq!(fmt("r", plus2), "Tue, 24 Nov 2026 10:00:00 +0200");
        assert_eq!(fmt("B", plus2), "375"); // 08:00 UTC
        assert_eq!(fmt("U", "2026-11-24 10:00:00+0200"), "1795507200");
        assert_eq!(fmt("U", "2026-11-24 10:00:00+02"), "1795507200");
        // date -u -d '2026-11-24 15:30:00' +%s: 1795534200
        let minus = "2026-11-24T10:00:00.25-05:30";
        assert_eq!(
            fmt("U O P Z v", minus),
            "1795534200 -0530 -05:30 -19800 250"
        );
        assert_eq!(
            fmt("e P p Z", "2026-11-24T10:00:00+00:00"),
            "+00:00 +00:00 Z 0"
        );
        // Across midnight: the date letters stay those written.
        assert_eq!(fmt("D U", "2027-01-01T00:30:00+01:00"), "Fri 1798759800");
    }

    #[test]
    fn backslash_escapes_a_letter_and_unknown_characters_are_literal() {
        assert_eq!(fmt("\\Y\\-m", TUESDAY), "Y-11");
        assert_eq!(fmt("\\\\Y", TUESDAY), "\\2026");
        assert_eq!(fmt("\\\\\\\\", TUESDAY), "\\\\");
        assert_eq!(fmt("l \\t\\h\\e jS", TUESDAY), "Tuesday the 24th");
        assert_eq!(fmt("bCEfJkKqQRV", TUESDAY), "bCEfJkKqQRV");
        assert_eq!(
            fmt("%Y {Y} #Y# \"Y\"", TUESDAY),
            "%2026 {2026} #2026# \"2026\""
        );
        assert_eq!(fmt("Ä日😀 Y", TUESDAY), "Ä日😀 2026");
        assert_eq!(fmt("\\日\\😀", TUESDAY), "日😀");
    }

    #[test]
    fn a_trailing_backslash_is_the_one_format_error() {
        for bad in ["\\", "Y\\", "\\\\\\", "日\\"] {
            let why = check_php_format(bad).unwrap_err();
            assert!(why.contains("backslash"), "{why}");
            assert_eq!(php_date(bad, TUESDAY), Err(why));
        }
        for good in ["", "\\\\", "Y\\Y", "\\日", "anything at all: 日本 ÿ \u{0}"] {
            assert_eq!(check_php_format(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn an_unparsable_timestamp_is_an_error_that_names_it() {
        let bad = [
            "",
            "2026-11-24",
            "2026-11-24 10:00",
            "2026/11/24 10:00:00",
            "2026-11-24X10:00:00",
            "2026-11-24t10:00:00",
            "2026-13-01 00:00:00",
            "2026-00-01 00:00:00",
            "2026-11-00 00:00:00",
            "2026-11-31 00:00:00",
            "2026-11-24 24:00:00",
            "2026-11-24 10:60:00",
            "2026-11-24 10:00:60",
            "2026-11-24 10:00:00.",
            "2026-11-24 10:00:00 ",
            " 2026-11-24 10:00:00",
            "2026-11-24 10:00:00+2",
            "2026-11-24 10:00:00+24:00",
            "2026-11-24 10:00:00+02:60",
            "2026-11-24 10:00:00+02:00x",
            "2026-11-24 10:00:00ZZ",
            "2026-11-24 10:00:00é",
            "2026-11-2é 10:00:00",
            "+026-11-24 10:00:00",
            "２０２６-11-24 10:00:00",
            "1795514400",
        ];
        for ts in bad {
            let e = php_date("Y", ts).unwrap_err();
            assert!(e.contains(&format!("{ts:?}")), "{ts:?}: {e}");
        }
        let long = "x".repeat(10_000);
        let e = php_date("Y", &long).unwrap_err();
        assert!(e.len() < 200, "a long timestamp is shortened: {e}");
    }

    #[test]
    fn day_by_day_the_calendar_letters_agree_with_a_plain_walk() {
        fn leap(y: i64) -> bool {
            (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        }
        fn month_len(y: i64, m: u32) -> u32 {
            [
                31,
                if leap(y) { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1]
        }
        fn next((y, m, d): (i64, u32, u32)) -> (i64, u32, u32) {
            if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            }
        }
        // 1969-12-29 was the Monday of ISO week 1 of 1970.
        let mut date = (1969, 12, 29);
        let (mut unix, mut iso_day, mut z, mut week, mut iso_year) =
            (-3 * 86_400i64, 1u32, 362u32, 1u32, 1970i64);
        while date.0 < 2101 {
            let (y, m, d) = date;
            let want = format!(
                "{y:04}-{m:02}-{d:02} {iso_day} {} {z} {week:02} {iso_year} {unix} {} {}",
                iso_day % 7,
                month_len(y, m),
                u8::from(leap(y))
            );
            let ts = format!("{y:04}-{m:02}-{d:02} 00:00:00");
            assert_eq!(fmt("Y-m-d N w z W o U t L", &ts), want);
            date = next(date);
            unix += 86_400;
            z = if date.1 == 1 && date.2 == 1 { 0 } else { z + 1 };
            iso_day = iso_day % 7 + 1;
            if iso_day == 1 {
                let thursday = next(next(next(date)));
                if thursday.0 == iso_year {
                    week += 1;
                } else {
                    iso_year = thursday.0;
                    week = 1;
                }
            }
        }
    }

    /// A small deterministic generator for the fuzz tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn odd_formats_and_timestamps_never_panic() {
        let pool: Vec<char> = "dDjlNSwzWFmMntLoXxYyaABgGhHisuveIOPpTZcrU\\\\\\ bqK%{}#\"'\u{0}\n\r\tÄé日😀\u{fffd}\u{200d}"
            .chars()
            .collect();
        let stamps = [
            TUESDAY,
            "0000-01-01 00:00:00",
            "9999-12-31T23:59:59.999999-23:59",
            "2024-02-29T12:00:00+23:59",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..5000 {
            let len = (rng.next() % 24) as usize;
            let format: String = (0..len).map(|_| rng.pick(&pool)).collect();
            let stamp = rng.pick(&stamps);
            let result = php_date(&format, stamp);
            assert_eq!(
                result.is_err(),
                check_php_format(&format).is_err(),
                "{format:?}: {result:?}"
            );
        }
        for format in ["", "\\", "\\\\", "日", "\\日", "😀\\", "\u{0}"] {
            let _ = php_date(format, TUESDAY);
        }
        // Timestamps with one byte or character changed.
        let ts_pool: Vec<char> = "0123456789-: TZz+.,é日\u{0}".chars().collect();
        for _ in 0..5000 {
            let mut chars: Vec<char> = "2026-11-24T10:00:00.123+02:00".chars().collect();
            let at = (rng.next() % chars.len() as u64) as usize;
            match rng.next() % 3 {
                0 => chars[at] = rng.pick(&ts_pool),
                1 => {
                    chars.remove(at);
                }
                _ => chars.insert(at, rng.pick(&ts_pool)),
            }
            let ts: String = chars.into_iter().collect();
            let _ = php_date("c B U u W o", &ts);
        }
    }

    // ---- import ----

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "frameflush-meshlium-{}-{}-{name}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> &Self {
            std::fs::write(self.0.join(name), contents).unwrap();
            self
        }
        fn import(&self) -> Result<(Value, Vec<String>)> {
            import(&self.0)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn has_note(notes: &[String], words: &[&str]) -> bool {
        notes.iter().any(|n| words.iter().all(|w| n.contains(w)))
    }

    #[test]
    fn a_setup_ini_with_quotes_comments_and_crlf_becomes_the_config_object() {
        let dir = TempDir::new("full");
        dir.write(
            "setup.ini",
            "; Meshlium MQTT settings\r\n\
             # written by the Manager System\r\n\
             [mqtt]\r\n\
             mqttserver = \"broker.example.com\" ; the broker\r\n\
             mqttport=1884\r\n\
             mqttuser = 'gateway'\r\n\
             qos = \"1\"\r\n\
             limit = 200 # rows per interval\r\n\
             interval = 300\r\n\
             client_id = \"Meshlium_A1\"\r\n\
             \r\n\
             [other]\r\n\
             mqttserver = other.example\r\n",
        )
        .write("topic_template", "meshlium/#ID_WASP#/#SENSOR#\r\n")
        .write(
            "message_template",
            "{\"value\":\"#VALUE#\",\n \"ts\":\"#TS(\"c\")#\"}\n",
        );
        let (json, notes) = dir.import().unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "batch": 200,
                "db": "mysql://root@localhost/MeshliumDB",
                "host": "broker.example.com",
                "id": "Meshlium_A1",
                "message": "{\"value\":\"#VALUE#\",\n \"ts\":\"#TS(\"c\")#\"}",
                "port": 1884,
                "sync-mask": 64,
                "topic": "meshlium/#ID_WASP#/#SENSOR#",
                "username": "gateway",
            })
        );
        // Stable key order.
        assert!(
            json.to_string().starts_with(
                "{\"batch\":200,\"db\":\"mysql://root@localhost/MeshliumDB\",\"host\":"
            ),
            "{json}"
        );
        assert!(
            has_note(
                &notes,
                &["every 300 s", "every 5 minutes", "frameflush.timer"]
            ),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["limit = 200", "\"batch\": 200"]),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["\"sync-mask\": 64", "stop"]),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["MeshliumDB", "db-pw-file", "socket"]),
            "{notes:#?}"
        );
        assert!(
            !has_note(&notes, &["QoS"]),
            "qos 1 needs no note: {notes:#?}"
        );
        assert!(!has_note(&notes, &["default"]), "{notes:#?}");
        assert!(!has_note(&notes, &["'/'"]), "{notes:#?}");
        assert!(notes.iter().all(|n| !n.contains('\n') && !n.is_empty()));
    }

    #[test]
    fn missing_templates_use_meshliums_defaults_and_keep_the_leading_slash() {
        let dir = TempDir::new("defaults");
        dir.write("setup.ini", "[mqtt]\nmqttserver=10.0.0.5\nmqttport=1883\n");
        let (json, notes) = dir.import().unwrap();
        assert_eq!(json["topic"], "/#MESHLIUM#/#ID_WASP#");
        assert_eq!(json["message"], "#SENSOR#|#VALUE#|#TIMESTAMP#");
        assert_eq!(json["host"], "10.0.0.5");
        assert_eq!(json["port"], 1883);
        assert_eq!(json["sync-mask"], 64);
        assert!(json.get("batch").is_none() && json.get("username").is_none());
        assert!(
            has_note(&notes, &["topic_template", "default topic"]),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["message_template", "default message"]),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["starts with '/'", "\"#MESHLIUM#/#ID_WASP#\""]),
            "{notes:#?}"
        );
        assert!(has_note(&notes, &["QoS 0", "QoS 1"]), "{notes:#?}");
        assert!(
            has_note(
                &notes,
                &["every 60 s", "every minute", "OnCalendar=minutely"]
            ),
            "{notes:#?}"
        );

        // An empty template file counts as missing; a custom topic with a
        // leading slash gets the note too.
        dir.write("topic_template", "/farm/#ID_WASP#\n")
            .write("message_template", "\n");
        let (json, notes) = dir.import().unwrap();
        assert_eq!(json["topic"], "/farm/#ID_WASP#");
        assert_eq!(json["message"], "#SENSOR#|#VALUE#|#TIMESTAMP#");
        assert!(
            has_note(&notes, &["starts with '/'", "\"farm/#ID_WASP#\""]),
            "{notes:#?}"
        );
    }

    #[test]
    fn a_url_style_server_goes_into_url_with_the_port_folded_in() {
        let dir = TempDir::new("url");
        let url_of = |ini: &str| {
            dir.write("setup.ini", ini);
            let (json, notes) = dir.import().unwrap();
            assert!(
                json.get("host").is_none() && json.get("port").is_none(),
                "{json}"
            );
            (json["url"].as_str().unwrap_or("").to_string(), notes)
        };
        let (url, _) = url_of("[mqtt]\nmqttserver = mqtt://broker.example\nmqttport = 1884\n");
        assert_eq!(url, "mqtt://broker.example:1884");
        let (url, _) = url_of("[mqtt]\nmqttserver = \"TCP://broker.example\"\n");
        assert_eq!(url, "tcp://broker.example");
        let (url, notes) = url_of("[mqtt]\nmqttserver = tcp://h:1885\nmqttport = 1884\n");
        assert_eq!(url, "tcp://h:1885");
        assert!(has_note(&notes, &["own port", "1884"]), "{notes:#?}");
        let (url, _) = url_of("[mqtt]\nmqttserver = mqtt://[::1]\nmqttport = 1884\n");
        assert_eq!(url, "mqtt://[::1]:1884");
        let (url, _) = url_of("[mqtt]\nmqttserver = mqtt://alice@[::1]:1999/t\nmqttport = 1884\n");
        assert_eq!(url, "mqtt://alice@[::1]:1999/t");
        let (url, _) = url_of("[mqtt]\nmqttserver = broker.example:1999\n");
        assert_eq!(url, "mqtt://broker.example:1999");
        // Too many digits for a port: frameflush's config check says so later.
        let (url, _) = url_of("[mqtt]\nmqttserver = h:99999999999999999999999\n");
        assert_eq!(url, "mqtt://h:99999999999999999999999");
        let (url, notes) = url_of("[mqtt]\nmqttserver = ws://broker.example\n");
        assert_eq!(url, "ws://broker.example");
        assert!(has_note(&notes, &["ws://", "mqtt://"]), "{notes:#?}");

        // An IPv6 address is a host, not host:port.
        dir.write(
            "setup.ini",
            "[mqtt]\nmqttserver = fd00::5\nmqttport = 1884\n",
        );
        let (json, _) = dir.import().unwrap();
        assert_eq!(
            (&json["host"], &json["port"]),
            (&"fd00::5".into(), &1884.into())
        );
    }

    #[test]
    fn the_password_never_reaches_the_json_or_the_notes() {
        let dir = TempDir::new("password");
        dir.write(
            "setup.ini",
            "[mqtt]\n\
             mqttserver = \"mqtt://alice:An0ther-S3cret@broker.example\"\n\
             mqttuser = alice\n\
             mqttpassword = \"S3cr3t-Pa55;word\"\n",
        );
        let (json, notes) = dir.import().unwrap();
        assert_eq!(json["url"], "mqtt://alice@broker.example");
        assert!(json.get("password").is_none() && json.get("pw-file").is_none());
        let everything = format!("{json} {}", notes.join("\n"));
        for secret in ["S3cr3t", "Pa55", "An0ther"] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked: {everything}"
            );
        }
        assert!(
            has_note(
                &notes,
                &[
                    "setup.ini holds a password",
                    "--pw-file FILE",
                    "pw-file key"
                ]
            ),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["URL carries a password", "--pw-file"]),
            "{notes:#?}"
        );

        // Without a user name, say that the password cannot be sent.
        dir.write("setup.ini", "[mqtt]\nmqttserver=h\nmqttpassword=S3cr3t\n");
        let (json, notes) = dir.import().unwrap();
        assert!(!format!("{json} {notes:?}").contains("S3cr3t"));
        assert!(has_note(&notes, &["no mqttuser"]), "{notes:#?}");

        // Nor in an error about the password's line.
        dir.write("setup.ini", "[mqtt]\nmqttpassword = \"S3cr3t\n");
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(
            e.message.contains("mqttpassword") && !e.message.contains("S3cr3t"),
            "{e}"
        );
        dir.write("setup.ini", b"[mqtt]\nmqttpassword = S3cr3t\xff\n");
        let e = dir.import().unwrap_err();
        assert!(
            e.message.contains("mqttpassword") && !e.message.contains("S3cr3t"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_port_or_limit_is_a_config_error_naming_the_file_and_key() {
        let dir = TempDir::new("badport");
        for port in ["0", "65536", "abc", "-1", "18 83", "1883.0"] {
            dir.write(
                "setup.ini",
                format!("[mqtt]\nmqttserver=h\nmqttport = {port}\n"),
            );
            let e = dir.import().unwrap_err();
            assert_eq!(e.exit, Exit::Config, "{port}");
            assert!(
                e.message.contains("setup.ini") && e.message.contains("mqttport"),
                "{e}"
            );
        }
        for limit in ["0", "ten", "2000000"] {
            dir.write(
                "setup.ini",
                format!("[mqtt]\nmqttserver=h\nlimit = {limit}\n"),
            );
            let e = dir.import().unwrap_err();
            assert_eq!(e.exit, Exit::Config, "{limit}");
            assert!(
                e.message.contains("setup.ini") && e.message.contains("limit"),
                "{e}"
            );
        }
        // An empty port is no port: frameflush's default is Meshlium's, 1883.
        dir.write("setup.ini", "[mqtt]\nmqttserver=h\nmqttport=\n");
        assert!(dir.import().unwrap().0.get("port").is_none());
    }

    #[test]
    fn a_missing_directory_or_setup_ini_is_no_input() {
        let dir = TempDir::new("missing");
        let gone = dir.0.join("nothing-here");
        let e = import(&gone).unwrap_err();
        assert_eq!(e.exit, Exit::NoInput);
        assert!(
            e.message
                .contains(&gone.join("setup.ini").display().to_string()),
            "{e}"
        );

        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::NoInput);
        assert!(e.message.contains("setup.ini"), "{e}");

        dir.write("setup.ini", "[mqtt]\n");
        let e = import(&dir.0.join("setup.ini")).unwrap_err();
        assert_eq!(e.exit, Exit::NoInput);
        assert!(e.message.contains("not a directory"), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_an_io_error() {
        // A directory where a file should be cannot be read, even by root.
        let dir = TempDir::new("unreadable");
        std::fs::create_dir(dir.0.join("setup.ini")).unwrap();
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::IoErr);
        assert!(e.message.contains("setup.ini"), "{e}");

        let dir = TempDir::new("unreadable-template");
        dir.write("setup.ini", "[mqtt]\nmqttserver=h\n");
        std::fs::create_dir(dir.0.join("message_template")).unwrap();
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::IoErr);
        assert!(e.message.contains("message_template"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_utf8_is_a_config_error_naming_it() {
        let dir = TempDir::new("latin1");
        dir.write("setup.ini", b"[mqtt]\nmqttserver=h\nmqttuser = caf\xe9\n");
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(
            e.message.contains("setup.ini line 3") && e.message.contains("mqttuser"),
            "{e}"
        );

        dir.write("setup.ini", "\u{feff}[mqtt]\nmqttserver=h\n")
            .write("topic_template", b"caf\xe9/#ID_WASP#");
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(e.message.contains("topic_template"), "{e}");
    }

    #[test]
    fn keys_outside_any_section_count_only_without_an_mqtt_section() {
        let dir = TempDir::new("sections");
        dir.write(
            "setup.ini",
            "mqttserver = top.example\n[db]\nmqttserver = db.example\n",
        );
        let (json, notes) = dir.import().unwrap();
        assert_eq!(json["host"], "top.example");
        assert!(has_note(&notes, &["no [mqtt] section"]), "{notes:#?}");

        dir.write(
            "setup.ini",
            "mqttserver = top.example\n[ MQTT ]\nmqttserver = mqtt.example\n",
        );
        let (json, notes) = dir.import().unwrap();
        assert_eq!(json["host"], "mqtt.example");
        assert!(!has_note(&notes, &["no [mqtt] section"]), "{notes:#?}");

        // An empty [mqtt] section still wins over keys outside.
        dir.write("setup.ini", "mqttserver = top.example\n[mqtt]\n");
        let (json, notes) = dir.import().unwrap();
        assert!(json.get("host").is_none());
        assert!(has_note(&notes, &["no mqttserver"]), "{notes:#?}");

        // The last of a repeated key wins.
        dir.write("setup.ini", "[mqtt]\nmqttserver = a\nmqttserver = b\n");
        assert_eq!(dir.import().unwrap().0["host"], "b");

        dir.write("setup.ini", "[mqtt\nmqttserver = a\n");
        let e = dir.import().unwrap_err();
        assert_eq!(e.exit, Exit::Config);
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn qos_interval_log_level_and_unknown_keys_become_notes() {
        let dir = TempDir::new("notes");
        let notes_of = |ini: &str| {
            dir.write("setup.ini", format!("[mqtt]\nmqttserver=h\n{ini}"));
            dir.import().unwrap().1
        };
        assert!(has_note(
            &notes_of("qos=0\n"),
            &["QoS 0", "always publishes at QoS 1"]
        ));
        assert!(has_note(
            &notes_of("qos=2\n"),
            &["QoS 2", "always publishes at QoS 1"]
        ));
        assert!(has_note(&notes_of("qos=high\n"), &["\"high\"", "QoS 1"]));
        assert!(has_note(
            &notes_of("log_level = debug\n"),
            &["log_level is ignored"]
        ));
        assert!(has_note(
            &notes_of("interval = 30\n"),
            &["every 30 s", "timer every 30 s"]
        ));
        assert!(has_note(
            &notes_of("interval = 7200\n"),
            &["every 2 hours", "OnCalendar=0/2:00"]
        ));
        assert!(has_note(
            &notes_of("interval = 300\n"),
            &["every 5 minutes", "OnCalendar=*:0/5"]
        ));
        assert!(has_note(
            &notes_of("interval = 90\n"),
            &["every 90 s", "OnUnitActiveSec=90s"]
        ));
        assert!(has_note(
            &notes_of("interval = soon\n"),
            &["\"soon\"", "ignored"]
        ));
        let notes = notes_of("api_key = k3y-value\n");
        assert!(has_note(&notes, &["\"api_key\"", "ignored"]), "{notes:#?}");
        assert!(!format!("{notes:?}").contains("k3y-value"));
        assert!(has_note(
            &notes_of("just some words\n"),
            &["line 3 is", "ignored"]
        ));
        let many = "a\nb\nc\nd\ne\nf\ng\nx1 = 1\nx2 = 2\n";
        let notes = notes_of(many);
        assert!(
            has_note(&notes, &["lines 3, 4, 5, 6, 7 and 2 more are neither"]),
            "{notes:#?}"
        );
        assert!(
            has_note(&notes, &["keys \"x1\", \"x2\" have no"]),
            "{notes:#?}"
        );

        dir.write(
            "setup.ini",
            "[mqtt]\nmqttserver=h\nmqttuser=\nclient_id = \"\"\n",
        );
        let (json, _) = dir.import().unwrap();
        assert!(
            json.get("username").is_none() && json.get("id").is_none(),
            "{json}"
        );
    }

    #[test]
    fn the_object_holds_only_keys_the_config_file_knows() {
        let dir = TempDir::new("keys");
        dir.write(
            "setup.ini",
            "[mqtt]\nmqttserver=h\nmqttport=1\nmqttuser=u\nmqttpassword=p\nqos=0\n\
             log_level=3\nlimit=5\ninterval=5\nclient_id=c\n",
        );
        let (json, _) = dir.import().unwrap();
        let known = [
            "batch",
            "db",
            "host",
            "id",
            "message",
            "port",
            "sync-mask",
            "topic",
            "url",
            "username",
        ];
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| known.contains(&k.as_str())), "{keys:?}");
        assert_eq!(keys.len(), 9, "{keys:?}");
    }

    #[test]
    fn ini_values_lose_their_quotes_and_trailing_comments() {
        let cases = [
            ("  plain  ", "plain"),
            ("\"a b\" ; comment", "a b"),
            ("\"a;b#c\"", "a;b#c"),
            ("'x;y' # comment", "x;y"),
            ("x;y", "x"),
            ("x #y", "x"),
            ("x#y", "x#y"),
            ("\"a\\\"b\"", "a\"b"),
            ("\"C:\\path\\\\x\"", "C:\\path\\x"),
            ("\"\"", ""),
            ("", ""),
            ("\"日本\"", "日本"),
        ];
        for (raw, want) in cases {
            assert_eq!(ini_value(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for bad in ["\"open", "\"a\" b", "'open", "'a' b", "\"a\\\""] {
            assert!(ini_value(bad).is_err(), "{bad:?}");
        }
    }
}
