//! One sensor reading as read from `sensorParser`, column by column.
//!
//! SQLite is dynamically typed: a Meshlium export may hold an integer in
//! `value` or a BLOB anywhere. A [`Row`] keeps each column's storage class
//! as found ([`Field`]), including text that is not UTF-8, so that reading
//! never fails or panics and the decision "can this become a message?" is
//! made in one place, by [`crate::template`]. A row read ahead of need
//! may carry that decision with it ([`Row::made`]): the thread that read it
//! made its message there, off the publishing loop.

use std::fmt;
use std::ops::Deref;

/// The columns a message can use, in `SELECT` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    IdWasp,
    IdSecret,
    FrameType,
    FrameNumber,
    Sensor,
    Value,
    Timestamp,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Id,
        Column::IdWasp,
        Column::IdSecret,
        Column::FrameType,
        Column::FrameNumber,
        Column::Sensor,
        Column::Value,
        Column::Timestamp,
    ];

    /// The column's name in the table, in templates and in JSON payloads.
    pub fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::IdWasp => "id_wasp",
            Column::IdSecret => "id_secret",
            Column::FrameType => "frame_type",
            Column::FrameNumber => "frame_number",
            Column::Sensor => "sensor",
            Column::Value => "value",
            Column::Timestamp => "timestamp",
        }
    }

    pub fn from_name(name: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column's value, by SQLite storage class.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field {
    #[default]
    Null,
    Int(i64),
    Real(f64),
    Text(Text),
    /// TEXT whose bytes are not UTF-8.
    NotUtf8,
    /// A BLOB, of this many bytes.
    Blob(usize),
}

/// One row of `sensorParser`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's `id` (its rowid): what gets marked.
    pub id: i64,
    /// Indexed by `Column as usize`.
    pub fields: [Field; 8],
    /// This row's message of its own (`--group row`), made ahead of need by
    /// the thread that read it ([`crate::template::Renderer`]), or why it
    /// cannot be one; `None`: made when the row is taken.
    pub made: Option<Result<Made, RowError>>,
}

/// A row's message: its topic and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Made {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why a row cannot become a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Row {
    /// A row as read, its message not made yet.
    pub fn new(id: i64, fields: [Field; 8]) -> Row {
        Row {
            id,
            fields,
            made: None,
        }
    }

    pub fn get(&self, c: Column) -> &Field {
        &self.fields[c as usize]
    }
}

/// Bytes of text kept in place by [`Text`].
const INLINE: usize = 22;

/// A column's text. A Meshlium row's texts (node, serial, sensor, value,
/// timestamp) are a few bytes each: up to 22 bytes are kept in place,
/// longer ones on the heap. Reading a row then allocates nothing for its
/// texts: five allocations a row, made by the thread that reads and freed
/// by the one that publishes (perf: malloc and its consolidation were 15%
/// of the marking thread's CPU; client CPU per row 9.55 -> 9.04 us).
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    /// The first `.0` bytes of `.1`, valid UTF-8 (copied from a `&str`).
    Inline(u8, [u8; INLINE]),
    Heap(Box<str>),
}

impl Text {
    pub fn new(s: &str) -> Text {
        let bytes = s.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut buf = [0; INLINE];
                buf[..bytes.len()].copy_from_slice(bytes);
                Text(Repr::Inline(len, buf))
            }
            _ => Text(Repr::Heap(s.into())),
        }
    }

    /// The text's bytes (UTF-8), without the check [`Text::as_str`] makes:
    /// what a payload or topic is written from.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, buf) => buf.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes came from a `&str` and were cut at its
            // end. The check is what safe code allows (about a hundred
            // instructions, callgrind): still cheaper than an allocation.
            Repr::Inline(len, buf) => buf
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Repr::Heap(s) => s,
        }
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::new(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_reads_back_as_given_whether_kept_in_place_or_on_the_heap() {
        let full = "x".repeat(INLINE);
        let over = "x".repeat(INLINE + 1);
        for s in [
            "",
            "TC",
            "2026-11-24 10:00:00",
            &full,
            &over,
            "é☃ multibyte text that runs past the inline room",
        ] {
            let t = Text::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t.as_bytes(), s.as_bytes());
            assert_eq!(&*t, s);
            assert_eq!(t.clone(), Text::from(s.to_string()));
            assert_eq!(format!("{t:?}"), format!("{s:?}"));
        }
        assert!(matches!(Text::new(&full).0, Repr::Inline(..)));
        assert!(matches!(Text::new(&over).0, Repr::Heap(_)));
        assert_ne!(Text::new("a"), Text::new("b"));
    }

    #[test]
    fn a_field_of_text_takes_no_more_room_than_one_of_a_string() {
        assert!(std::mem::size_of::<Field>() <= std::mem::size_of::<String>() + 8);
    }
}
