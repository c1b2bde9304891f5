//! What a run did, counted: the [`Summary`] that `--json` prints, the
//! metrics file carries and the exit status is decided from. `run` fills it;
//! `metrics` and `main` only read it.

use serde::Serialize;

use crate::error::{Error, Exit};

/// What a run did: printed by `--json`, one object, failed runs too.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub selected: u64,
    /// Rows handed to the broker for the first time in this run.
    pub published: u64,
    /// Rows sent again after a lost connection (the messages in doubt).
    pub resent: u64,
    pub acknowledged: u64,
    pub marked: u64,
    /// Rows that could not become a message, or whose message could not be
    /// sent (over the broker's Maximum Packet Size, or suspected of killing
    /// the connection and charged).
    pub failed: u64,
    /// Rows of messages the broker refused (MQTT 5 PUBACK reason code of
    /// 0x80 or more, or a DISCONNECT naming the message): unsent, recorded.
    pub refused: u64,
    /// Rows this run quarantined (they reached `--max-attempts`).
    pub quarantined: u64,
    /// New connections after a lost one (the messages in doubt then go one
    /// at a time).
    pub reconnects: u32,
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
    /// The MQTT version the run spoke: "5" or "311"; none when it did not
    /// connect.
    pub protocol: Option<&'static str>,
    /// The exit status the refusals call for: 77 when one was about
    /// permission, else 65.
    #[serde(skip)]
    pub refusal_exit: Option<Exit>,
    /// The first refusal of the run, for the error line.
    #[serde(skip)]
    pub first_refusal: Option<String>,
}

impl Summary {
    /// Counts a refusal's exit status (permission, 77, outranks the rest)
    /// and keeps the first one's description.
    pub fn refusal(&mut self, exit: Exit, what: impl FnOnce() -> String) {
        if self.refusal_exit != Some(Exit::NoPerm) {
            self.refusal_exit = Some(exit);
        }
        if self.first_refusal.is_none() {
            self.first_refusal = Some(what());
        }
    }

    /// The error line of a run whose only trouble was refusals.
    pub fn refusal_error(&self) -> Option<Error> {
        let exit = self.refusal_exit?;
        Some(Error::new(
            exit,
            format!(
                "the broker refused {} row(s), first {}; they stay unsent and are retried up to --max-attempts (see `frameflush failures`)",
                self.refused,
                self.first_refusal.as_deref().unwrap_or("?")
            ),
        ))
    }
}

/// The run's exit status: an error that ended the run wins; then a refusal
/// by the broker (77 when about permission, 65 for the message itself);
/// then rows that could not be sent (65).
pub fn exit_status(summary: &Summary, error: Option<&Error>) -> Exit {
    match (error, summary.refusal_exit) {
        (Some(e), _) => e.exit,
        (None, Some(exit)) => exit,
        (None, None) if summary.failed > 0 || summary.refused > 0 => Exit::DataErr,
        (None, None) => Exit::Ok,
    }
}
