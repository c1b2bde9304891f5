//! Turning a row into an MQTT message: the topic template and the payload.
//!
//! A [`Template`] is parsed once, when the configuration is built, so a bad
//! template is a configuration error before anything is read or sent. Per
//! row, [`Template::render`] and [`PayloadFormat::render`] either give the
//! topic and payload or a [`RowError`] that says why this row cannot become
//! a message; such a row is not published and stays unsent. Rendered topics
//! are checked here, not by the broker: an empty topic or one with a
//! wildcard makes mosquitto drop the connection, and a topic starting with
//! `$` is swallowed by brokers while still acknowledged.

pub use crate::row::RowError;
use crate::row::{Column, Field, Made, Row};

/// The longest topic MQTT can carry, in bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Column),
    /// Meshlium's `#TS("fmt")#`: the timestamp in a PHP date() format.
    Date(String),
}

/// What a template makes: a topic (wildcards, NUL, a leading `$` and NULL
/// fields refused) or a message (any text; a NULL field is empty, as on
/// Meshlium).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Message,
}

/// A parsed template: literal text, `{column}` placeholders (`{{` and `}}`
/// stand for literal braces) and Meshlium's `#NAME#` placeholders:
/// `#ID# #ID_WASP# #ID_SECRET# #SENSOR# #VALUE# #FRAME_TYPE# #FRAME_NUMBER#
/// #TIMESTAMP#`, `#MESHLIUM#` (this host's name) and `#TS("fmt")#` (the
/// timestamp in a PHP date() format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    kind: Kind,
}

/// Meshlium's placeholder names and the columns they stand for.
const MESHLIUM_NAMES: [(&str, Column); 8] = [
    ("ID", Column::Id),
    ("ID_WASP", Column::IdWasp),
    ("ID_SECRET", Column::IdSecret),
    ("SENSOR", Column::Sensor),
    ("VALUE", Column::Value),
    ("FRAME_TYPE", Column::FrameType),
    ("FRAME_NUMBER", Column::FrameNumber),
    ("TIMESTAMP", Column::Timestamp),
];

/// A Meshlium `#…#` placeholder at the start of `s` (which starts with
/// `#`): its part and its length in bytes. `None`: not a placeholder.
fn meshlium_token(s: &str, host: &str) -> Option<Result<(Part, usize), String>> {
    let body = &s[1..];
    if let Some(rest) = body.strip_prefix("TS(") {
        let quote = rest.chars().next().filter(|&q| q == '"' || q == '\'')?;
        let inner = &rest[1..];
        let close = format!("{quote})#");
        let Some(end) = inner.find(&close) else {
            return Some(Err(format!("has an unclosed #TS({quote}…{quote})#")));
        };
        let format = &inner[..end];
        if let Err(why) = crate::meshlium::check_php_format(format) {
            return Some(Err(format!("has a bad #TS date format: {why}")));
        }
        return Some(Ok((
            Part::Date(format.to_string()),
            1 + 3 + 1 + end + close.len(),
        )));
    }
    let end = body.find('#')?;
    let name = &body[..end];
    if name == "MESHLIUM" {
        return Some(Ok((Part::Literal(host.to_string()), end + 2)));
    }
    let (_, col) = MESHLIUM_NAMES.iter().find(|(n, _)| *n == name)?;
    Some(Ok((Part::Field(*col), end + 2)))
}

impl Template {
    /// A topic template.
    pub fn parse(s: &str) -> Result<Template, String> {
        Template::parse_as(s, Kind::Topic, &crate::sys::hostname())
    }

    /// A template of the given kind; `host` stands for `#MESHLIUM#`.
    pub fn parse_as(s: &str, kind: Kind, host: &str) -> Result<Template, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if kind == Kind::Topic && s.len() > MAX_TOPIC_LEN {
            return Err(format!(
                "is longer than a topic can be ({MAX_TOPIC_LEN} bytes)"
            ));
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while let Some(c) = s[i..].chars().next() {
            let rest = &s[i..];
            let token = match c {
                '{' if rest.starts_with("{{") => {
                    lit.push('{');
                    i += 2;
                    continue;
                }
                '{' => {
                    let body = &rest[1..];
                    let Some(end) = body
                        .find(['}', '{'])
                        .filter(|&e| body.as_bytes()[e] == b'}')
                    else {
                        return Err(format!("has an unclosed '{{' at byte {i}"));
                    };
                    let name = &body[..end];
                    let Some(col) = Column::from_name(name) else {
                        let known: Vec<String> =
                            Column::ALL.iter().map(|c| format!("{{{c}}}")).collect();
                        return Err(format!(
                            "has an unknown placeholder {{{name}}}; known: {}",
                            known.join(" ")
                        ));
                    };
                    (Part::Field(col), end + 2)
                }
                '}' if rest.starts_with("}}") => {
                    lit.push('}');
                    i += 2;
                    continue;
                }
                '}' => {
                    return Err(format!(
                        "has a '}}' without its '{{' at byte {i} (write '}}}}' for a literal brace)"
                    ));
                }
                '#' => match meshlium_token(rest, host) {
                    Some(token) => token?,
                    None if kind == Kind::Topic => {
                        return Err(
                            "has the wildcard '#', which a published topic cannot hold".into()
                        );
                    }
                    None => {
                        lit.push('#');
                        i += 1;
                        continue;
                    }
                },
                '+' if kind == Kind::Topic => {
                    return Err("has the wildcard '+', which a published topic cannot hold".into());
                }
                '\0' => return Err("has a NUL character".into()),
                c => {
                    lit.push(c);
                    i += c.len_utf8();
                    continue;
                }
            };
            let (part, len) = token;
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
            i += len;
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if kind == Kind::Topic {
            if let Some(Part::Literal(first)) = parts.first()
                && first.starts_with('$')
            {
                return Err("starts with '$', which brokers reserve for themselves".into());
            }
            // #MESHLIUM# became literal text: the host name must fit a topic.
            if parts
                .iter()
                .any(|p| matches!(p, Part::Literal(l) if l.contains(['+', '#', '\0'])))
            {
                return Err("holds a wildcard or NUL (from #MESHLIUM#, the host name)".into());
            }
        }
        Ok(Template { parts, kind })
    }

    /// The columns the template uses (`#TS(…)#` uses the timestamp).
    pub fn columns(&self) -> impl Iterator<Item = Column> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(c) => Some(*c),
            Part::Date(_) => Some(Column::Timestamp),
            Part::Literal(_) => None,
        })
    }

    /// The text for this row (a topic is checked as a topic), or why there
    /// is none.
    pub fn render(&self, row: &Row) -> Result<String, RowError> {
        // Room for the usual row at once: growing the text part by part
        // cost three reallocations per row (callgrind).
        let room: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::Field(_) | Part::Date(_) => 24,
            })
            .sum();
        // Written as bytes, checked as UTF-8 once at the end (every piece
        // is UTF-8 already): checking each text as it is used cost more.
        let mut out: Vec<u8> = Vec::with_capacity(room);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Field(c) => match row.get(*c) {
                    Field::Text(s) => out.extend_from_slice(s.as_bytes()),
                    Field::Int(n) => out.extend_from_slice(Digits::of(*n).as_bytes()),
                    Field::Real(x) => out.extend_from_slice(x.to_string().as_bytes()),
                    Field::Null if self.kind == Kind::Message => {}
                    other => return Err(not_text(*c, other)),
                },
                Part::Date(format) => match row.get(Column::Timestamp) {
                    Field::Text(t) => out.extend_from_slice(
                        crate::meshlium::php_date(format, t)
                            .map_err(|why| RowError(format!("#TS: {why}")))?
                            .as_bytes(),
                    ),
                    other => return Err(not_text(Column::Timestamp, other)),
                },
            }
        }
        let out = String::from_utf8(out)
            .map_err(|_| RowError("the text made is not UTF-8".to_string()))?;
        if self.kind == Kind::Topic {
            check_topic(&out)?;
        }
        Ok(out)
    }
}

/// A topic a broker will accept for PUBLISH.
pub fn check_topic(t: &str) -> Result<(), RowError> {
    let why = if t.is_empty() {
        "is empty"
    } else if t.len() > MAX_TOPIC_LEN {
        "is longer than 65535 bytes"
    } else if let Some(b) = t.bytes().find(|&b| matches!(b, b'+' | b'#' | 0)) {
        if b == 0 {
            "contains a NUL character"
        } else {
            "contains a wildcard ('+' or '#')"
        }
    } else if t.starts_with('$') {
        "starts with '$', which brokers reserve"
    } else {
        return Ok(());
    };
    let shown: String = t.chars().take(80).collect();
    Err(RowError(format!("topic {shown:?} {why}")))
}

fn not_text(c: Column, f: &Field) -> RowError {
    let what = match f {
        Field::Null => "NULL".to_string(),
        Field::NotUtf8 => "text that is not UTF-8".to_string(),
        Field::Blob(n) => format!("a BLOB of {n} bytes, not text"),
        Field::Int(_) | Field::Real(_) | Field::Text(_) => "not usable".to_string(),
    };
    RowError(format!("{c} is {what}"))
}

/// What a PUBLISH carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadFormat {
    /// A message template (`--message`), Meshlium style.
    Message(Template),
    /// One JSON object per row: integers as numbers, text as strings, NULL
    /// as null.
    Json,
    /// The bare `value` column.
    Value,
}

impl PayloadFormat {
    pub fn render(&self, row: &Row) -> Result<Vec<u8>, RowError> {
        match self {
            PayloadFormat::Message(t) => t.render(row).map(String::into_bytes),
            PayloadFormat::Json => json_object(row),
            PayloadFormat::Value => match row.get(Column::Value) {
                Field::Text(s) => Ok(s.as_bytes().to_vec()),
                Field::Int(n) => Ok(n.to_string().into_bytes()),
                Field::Real(x) => Ok(x.to_string().into_bytes()),
                other => Err(not_text(Column::Value, other)),
            },
        }
    }
}

/// A payload within `max` bytes (`--max-payload`), or why not.
pub fn within_limit(max: usize, payload: Vec<u8>) -> Result<Vec<u8>, RowError> {
    if payload.len() > max {
        return Err(RowError(format!(
            "payload of {} bytes exceeds --max-payload {max}",
            payload.len()
        )));
    }
    Ok(payload)
}

/// A row's message of its own (`--group row`): its topic, then its payload
/// within `max_payload`, or the first reason it cannot be one.
pub fn render_row(
    topic: &Template,
    payload: &PayloadFormat,
    max_payload: usize,
    row: &Row,
) -> Result<Made, RowError> {
    let topic = topic.render(row)?;
    let payload = within_limit(max_payload, payload.render(row)?)?;
    Ok(Made { topic, payload })
}

/// What makes a row a message of its own, copied from the configuration
/// for the thread that reads rows ahead: it renders them there
/// ([`Row::made`]), off the publishing loop, exactly as [`render_row`]
/// would when the row is taken.
#[derive(Debug, Clone)]
pub struct Renderer {
    topic: Template,
    payload: PayloadFormat,
    max_payload: usize,
}

impl Renderer {
    pub fn new(topic: &Template, payload: &PayloadFormat, max_payload: usize) -> Renderer {
        Renderer {
            topic: topic.clone(),
            payload: payload.clone(),
            max_payload,
        }
    }

    /// Makes the message of every row that has none yet.
    pub fn make(&self, rows: &mut [Row]) {
        for row in rows.iter_mut().filter(|r| r.made.is_none()) {
            row.made = Some(render_row(
                &self.topic,
                &self.payload,
                self.max_payload,
                row,
            ));
        }
    }
}

/// One field as a JSON value: integers and reals as numbers, text as a
/// string, NULL as null; a BLOB or non-UTF-8 text cannot be written.
/// Integers and text with nothing to escape (a reading's usual fields)
/// are written here, byte for byte as serde_json writes them, without its
/// serializer's setup per value (callgrind: half the cost of a payload);
/// reals and text to escape go through serde_json.
fn json_value(out: &mut Vec<u8>, c: Column, f: &Field) -> Result<(), RowError> {
    let written = match f {
        Field::Null => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Field::Int(n) => {
            out.extend_from_slice(Digits::of(*n).as_bytes());
            Ok(())
        }
        Field::Real(x) => serde_json::to_writer(&mut *out, x),
        Field::Text(t) => {
            let b = t.as_bytes();
            if b.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
                serde_json::to_writer(&mut *out, t.as_str())
            } else {
                out.push(b'"');
                out.extend_from_slice(b);
                out.push(b'"');
                Ok(())
            }
        }
        other => return Err(not_text(c, other)),
    };
    written.map_err(|e| RowError(format!("{c} cannot be written as JSON: {e}")))
}

/// An integer in decimal, made without `fmt`'s machinery (a topic or a
/// payload writes one or more per row).
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(n: i64) -> Digits {
        let mut d = Digits {
            buf: [0; 20],
            start: 20,
        };
        let mut v = n.unsigned_abs();
        loop {
            d.start -= 1;
            d.buf[d.start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            d.start -= 1;
            d.buf[d.start] = b'-';
        }
        d
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The columns a frame message shares: those that identify the frame.
pub const FRAME_COLUMNS: [Column; 5] = [
    Column::IdWasp,
    Column::IdSecret,
    Column::FrameType,
    Column::FrameNumber,
    Column::Timestamp,
];

/// Checks that a row can be one reading of a frame message: its sensor is
/// text and its value can be written.
pub fn check_reading(row: &Row) -> Result<(), RowError> {
    match row.get(Column::Sensor) {
        Field::Text(_) => {}
        other => return Err(not_text(Column::Sensor, other)),
    }
    json_value(&mut Vec::new(), Column::Value, row.get(Column::Value))
}

/// One JSON object for a whole Waspmote frame (rows that passed
/// [`check_reading`] and share [`FRAME_COLUMNS`]):
/// `{"id_wasp":…,"id_secret":…,"frame_type":…,"frame_number":…,"timestamp":…,
/// "readings":{"TC":"23.50",…},"ids":[…]}`.
pub fn frame_json(rows: &[Row]) -> Result<Vec<u8>, RowError> {
    let Some(first) = rows.first() else {
        return Err(RowError("a frame without rows".into()));
    };
    let mut out = Vec::with_capacity(96 + rows.len() * 32);
    out.push(b'{');
    for c in FRAME_COLUMNS {
        out.push(b'"');
        out.extend_from_slice(c.name().as_bytes());
        out.extend_from_slice(b"\":");
        json_value(&mut out, c, first.get(c))?;
        out.push(b',');
    }
    out.extend_from_slice(b"\"readings\":{");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_value(&mut out, Column::Sensor, row.get(Column::Sensor))?;
        out.push(b':');
        json_value(&mut out, Column::Value, row.get(Column::Value))?;
    }
    out.extend_from_slice(b"},\"ids\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Digits::of(row.id).as_bytes());
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

fn json_object(row: &Row) -> Result<Vec<u8>, RowError> {
    let mut out = Vec::with_capacity(192);
    for (c, key) in Column::ALL.into_iter().zip(JSON_KEYS) {
        out.extend_from_slice(key.as_bytes());
        json_value(&mut out, c, row.get(c))?;
    }
    out.push(b'}');
    Ok(out)
}

/// What comes before each column's value in [`json_object`], in
/// [`Column::ALL`] order: one copy each instead of four.
const JSON_KEYS: [&str; 8] = [
    "{\"id\":",
    ",\"id_wasp\":",
    ",\"id_secret\":",
    ",\"frame_type\":",
    ",\"frame_number\":",
    ",\"sensor\":",
    ",\"value\":",
    ",\"timestamp\":",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(
            15819,
            [
                Field::Int(15819),
                Field::Text("node_01".into()),
                Field::Text("400577471".into()),
                Field::Int(134),
                Field::Int(7),
                Field::Text("TC".into()),
                Field::Text("23.50".into()),
                Field::Text("2026-11-24 10:00:00".into()),
            ],
        )
    }

    #[test]
    fn the_default_payload_is_the_documented_json_object() {
        let p = PayloadFormat::Json.render(&row()).unwrap();
        assert_eq!(
            String::from_utf8(p).unwrap(),
            r#"{"id":15819,"id_wasp":"node_01","id_secret":"400577471","frame_type":134,"frame_number":7,"sensor":"TC","value":"23.50","timestamp":"2026-11-24 10:00:00"}"#
        );
    }

    #[test]
    fn json_writes_null_for_null_numbers_for_numbers_and_escapes_odd_text() {
        let mut r = row();
        r.fields[Column::IdSecret as usize] = Field::Null;
        r.fields[Column::FrameType as usize] = Field::Real(1.5);
        r.fields[Column::Value as usize] = Field::Text("a\"b\\c\n\u{1}é☃".into());
        let p = String::from_utf8(PayloadFormat::Json.render(&r).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["id_secret"], serde_json::Value::Null);
        assert_eq!(v["frame_type"], serde_json::json!(1.5));
        assert_eq!(v["value"], serde_json::json!("a\"b\\c\n\u{1}é☃"));
        assert_eq!(v["id"], serde_json::json!(15819));
    }

    #[test]
    fn json_refuses_blobs_and_text_that_is_not_utf8() {
        let mut r = row();
        r.fields[Column::Value as usize] = Field::Blob(3);
        assert_eq!(
            PayloadFormat::Json.render(&r).unwrap_err().0,
            "value is a BLOB of 3 bytes, not text"
        );
        r.fields[Column::Value as usize] = Field::NotUtf8;
        assert!(PayloadFormat::Json.render(&r).is_err());
    }

    #[test]
    fn the_value_payload_is_the_bare_value_and_refuses_null() {
        assert_eq!(PayloadFormat::Value.render(&row()).unwrap(), b"23.50");
        let mut r = row();
        r.fields[Column::Value as usize] = Field::Int(42);
        assert_eq!(PayloadFormat::Value.render(&r).unwrap(), b"42");
        r.fields[Column::Value as usize] = Field::Null;
        assert_eq!(
            PayloadFormat::Value.render(&r).unwrap_err().0,
            "value is NULL"
        );
    }

    #[test]
    fn templates_render_every_placeholder_and_literal_braces() {
        let t = Template::parse("gw/{id}/{id_wasp}/{id_secret}/{frame_type}/{frame_number}/{sensor}/{value}/{timestamp}/{{x}}").unwrap();
        assert_eq!(
            t.render(&row()).unwrap(),
            "gw/15819/node_01/400577471/134/7/TC/23.50/2026-11-24 10:00:00/{x}"
        );
        assert_eq!(
            Template::parse("sensors/{id_wasp}/{sensor}")
                .unwrap()
                .render(&row())
                .unwrap(),
            "sensors/node_01/TC"
        );
    }

    #[test]
    fn a_frame_is_one_object_with_its_readings_and_ids() {
        let mut hum = row();
        hum.id = 15820;
        hum.fields[Column::Sensor as usize] = Field::Text("HUM".into());
        hum.fields[Column::Value as usize] = Field::Real(41.5);
        let p = String::from_utf8(frame_json(&[row(), hum]).unwrap()).unwrap();
        assert_eq!(
            p,
            r#"{"id_wasp":"node_01","id_secret":"400577471","frame_type":134,"frame_number":7,"timestamp":"2026-11-24 10:00:00","readings":{"TC":"23.50","HUM":41.5},"ids":[15819,15820]}"#
        );
        let mut bad = row();
        bad.fields[Column::Sensor as usize] = Field::Null;
        assert_eq!(check_reading(&bad).unwrap_err().0, "sensor is NULL");
        bad = row();
        bad.fields[Column::Value as usize] = Field::Blob(1);
        assert!(check_reading(&bad).is_err());
    }

    #[test]
    fn meshlium_placeholders_work_in_topics_and_messages() {
        let t = Template::parse_as("/#MESHLIUM#/#ID_WASP#", Kind::Topic, "gw7").unwrap();
        assert_eq!(t.render(&row()).unwrap(), "/gw7/node_01");
        let m = Template::parse_as(
            "#SENSOR#|#VALUE#|#TIMESTAMP#|#TS(\"U\")#|#TS('d/m/Y')#|#ID#|#ID_SECRET#|#FRAME_TYPE#|#FRAME_NUMBER#|#NOPE#|+#",
            Kind::Message,
            "gw7",
        )
        .unwrap();
        assert_eq!(
            m.render(&row()).unwrap(),
            "TC|23.50|2026-11-24 10:00:00|1795514400|24/11/2026|15819|400577471|134|7|#NOPE#|+#"
        );
        // A NULL is empty in a message (as on Meshlium), an error in a topic.
        let mut r = row();
        r.fields[Column::Value as usize] = Field::Null;
        assert_eq!(
            Template::parse_as("#SENSOR#=#VALUE#", Kind::Message, "h")
                .unwrap()
                .render(&r)
                .unwrap(),
            "TC="
        );
        assert!(
            Template::parse_as("a/#VALUE#", Kind::Topic, "h")
                .unwrap()
                .render(&r)
                .is_err()
        );
        // A timestamp #TS cannot read makes the row fail.
        r.fields[Column::Timestamp as usize] = Field::Text("yesterday".into());
        assert!(
            Template::parse_as("#TS(\"U\")#", Kind::Message, "h")
                .unwrap()
                .render(&r)
                .is_err()
        );
    }

    #[test]
    fn bad_meshlium_placeholders_are_refused() {
        for (t, kind, why) in [
            ("a/#NOPE#", Kind::Topic, "wildcard"),
            ("#TS(\"U)#", Kind::Message, "unclosed"),
            ("#TS(\"Y\\\")#", Kind::Message, "date format"),
            ("a/#MESHLIUM#", Kind::Topic, "NUL"),
        ] {
            let host = if why == "NUL" { "bad#host" } else { "h" };
            let e = Template::parse_as(t, kind, host).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        }
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (t, why) in [
            ("", "is empty"),
            ("a/{nope}", "unknown placeholder {nope}"),
            ("a/{sensor", "unclosed"),
            ("a/{sen{sor}", "unclosed"),
            ("a/sensor}", "without its"),
            ("a/+/b", "wildcard"),
            ("a/#", "wildcard"),
            ("$SYS/{sensor}", "reserve"),
            ("a\0b", "NUL"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        }
        assert!(Template::parse(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }

    #[test]
    fn a_rendered_topic_with_a_wildcard_null_or_nothing_is_a_row_error() {
        let t = Template::parse("{value}").unwrap();
        let mut r = row();
        for (v, why) in [
            (Field::Text("a+b".into()), "wildcard"),
            (Field::Text("x/#".into()), "wildcard"),
            (Field::Text("".into()), "is empty"),
            (Field::Text("$SYS/x".into()), "reserve"),
            (Field::Text("a\0".into()), "NUL"),
            (Field::Null, "value is NULL"),
            (Field::Blob(2), "BLOB"),
        ] {
            r.fields[Column::Value as usize] = v;
            let e = t.render(&r).unwrap_err();
            assert!(e.0.contains(why), "{e}");
        }
    }

    #[test]
    fn the_json_keys_are_the_column_names_in_order() {
        for (i, (c, key)) in Column::ALL.into_iter().zip(JSON_KEYS).enumerate() {
            let open = if i == 0 { "{" } else { "," };
            assert_eq!(key, format!("{open}\"{}\":", c.name()));
        }
    }

    #[test]
    fn a_renderer_makes_what_render_row_makes_and_keeps_what_is_made() {
        let topic = Template::parse_as("sensors/{id_wasp}/{sensor}", Kind::Topic, "gw").unwrap();
        let r = Renderer::new(&topic, &PayloadFormat::Json, 1000);
        let mut bad = row();
        bad.id = 15820;
        bad.fields[Column::Sensor as usize] = Field::Null;
        let mut kept = row();
        kept.id = 15821;
        let earlier = Made {
            topic: "made/before".into(),
            payload: b"{}".to_vec(),
        };
        kept.made = Some(Ok(earlier.clone()));
        let mut rows = vec![row(), bad, kept];
        r.make(&mut rows);
        let made: Vec<_> = rows.iter().map(|r| r.made.clone().unwrap()).collect();
        assert_eq!(
            made[0],
            render_row(&topic, &PayloadFormat::Json, 1000, &row())
        );
        assert_eq!(made[0].as_ref().unwrap().topic, "sensors/node_01/TC");
        assert_eq!(made[1], Err(RowError("sensor is NULL".into())));
        assert_eq!(made[2], Ok(earlier));
        let small = Renderer::new(&topic, &PayloadFormat::Json, 10);
        let mut rows = vec![row()];
        small.make(&mut rows);
        assert!(
            matches!(&rows[0].made, Some(Err(RowError(why))) if why.contains("--max-payload 10"))
        );
    }

    #[test]
    fn integers_and_text_are_written_byte_for_byte_as_serde_json_writes_them() {
        for n in [
            0,
            7,
            -1,
            10,
            -10,
            15819,
            i64::from(i32::MAX),
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut out = Vec::new();
            json_value(&mut out, Column::Id, &Field::Int(n)).unwrap();
            assert_eq!(out, serde_json::to_vec(&n).unwrap(), "{n}");
            assert_eq!(Digits::of(n).as_bytes(), n.to_string().as_bytes());
        }
        let texts = [
            "",
            "23.50",
            "node_01",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}",
            "\u{7f} del is not escaped",
            "é☃ 𝄞",
            "2026-11-24 10:00:00",
        ];
        for t in texts {
            let mut out = Vec::new();
            json_value(&mut out, Column::Value, &Field::Text(t.into())).unwrap();
            assert_eq!(out, serde_json::to_vec(t).unwrap(), "{t:?}");
        }
    }
}
