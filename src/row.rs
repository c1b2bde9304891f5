//! One sensor reading as read from `sensorParser`, column by column.
//!
//! SQLite is dynamically typed: a Meshlium export may hold an integer in
//! `value` or a BLOB anywhere. A [`Row`] keeps each column's storage class
//! as found ([`Field`]), including text that is not UTF-8, so that reading
//! never fails or panics and the decision "can this become a message?" is
//! made in one place, by [`crate::template`].

use std::fmt;

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
    Text(String),
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
}

impl Row {
    pub fn get(&self, c: Column) -> &Field {
        &self.fields[c as usize]
    }
}
