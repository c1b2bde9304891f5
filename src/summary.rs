//! What a run did, counted: the [`Summary`] that `--json` prints, the
//! metrics file carries and the exit status is decided from. `run` fills it;
//! `metrics` and `main` only read it.

use serde::Serialize;

use crate::error::{Error, Exit};

/// What a run did: printed by `--json`, one object, failed runs too.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub selected: u64,
    pub published: u64,
    pub acknowledged: u64,
    pub marked: u64,
    pub failed: u64,
    /// Rows this run quarantined (they reached `--max-attempts`).
    pub quarantined: u64,
    /// Selected by this run and still unsent at its end.
    pub unsent: u64,
    /// Unsent rows for this mask in the database at the end, when known.
    pub backlog: Option<u64>,
    /// Age in seconds of the oldest of them, when known.
    pub oldest_unsent_age_s: Option<i64>,
    pub elapsed_ms: u64,
    pub exit_code: u8,
    pub error: Option<String>,
    pub dry_run: bool,
}

/// An error's status wins; otherwise rows that could not be made into
/// messages give 65.
pub fn exit_status(summary: &Summary, error: Option<&Error>) -> Exit {
    match error {
        Some(e) => e.exit,
        None if summary.failed > 0 => Exit::DataErr,
        None => Exit::Ok,
    }
}
