//! What a run did, counted: the [`Summary`] that `--json` prints, the
//! metrics file carries and the exit status is decided from. `run` fills it;
//! `metrics` and `main` only read it.
//!
//! Its words are `status`'s: a row is sent (`marked` by this run), waiting,
//! failing (failed, to be retried) or quarantined; `unsent` counts the rows
//! this run selected that are still to send at its end (waiting or
//! failing), `backlog` all of them in the database (`waiting` + `failing`).

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
    /// Rows this run quarantined (they reached `--max-attempts`): no
    /// longer unsent, skipped until requeued.
    pub quarantined: u64,
    /// New connections after a lost one (the messages in doubt then go one
    /// at a time).
    pub reconnects: u32,
    /// Selected by this run and still to send at its end (waiting or
    /// failing; neither marked nor quarantined by it).
    pub unsent: u64,
    /// Rows still to send for this mask in the database at the end, when
    /// known: `waiting` + `failing` (quarantined rows not counted).
    pub backlog: Option<u64>,
    /// Of the backlog, rows that never failed, when known.
    pub waiting: Option<u64>,
    /// Of the backlog, rows that failed but are tried again, when known.
    pub failing: Option<u64>,
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
    /// Of the refused rows, those this run quarantined.
    #[serde(skip)]
    pub refused_quarantined: u64,
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

    /// The error line of a run whose only trouble was refusals: what
    /// became of the refused rows, quarantined now or to be retried.
    pub fn refusal_error(&self) -> Option<Error> {
        let exit = self.refusal_exit?;
        let (refused, quarantined) = (self.refused, self.refused_quarantined.min(self.refused));
        let fate = if quarantined == 0 {
            "they stay unsent and are retried by the next runs up to --max-attempts".to_string()
        } else if quarantined == refused {
            "they have reached --max-attempts and are quarantined".to_string()
        } else {
            format!(
                "{quarantined} of them have reached --max-attempts and are quarantined, the other {} stay unsent and are retried",
                refused - quarantined
            )
        };
        Some(Error::new(
            exit,
            format!(
                "the broker refused {refused} row(s), first {}; {fate} (see `frameflush failures`)",
                self.first_refusal.as_deref().unwrap_or("?")
            ),
        ))
    }

    /// The backlog at the end, and how it divides into waiting and failing
    /// rows (left unknown when the database does not answer).
    pub fn count_backlog(&mut self, db: &dyn crate::source::Source) {
        self.backlog = db.backlog().ok();
        let failing = db.failure_counts().ok().map(|(_, failing)| failing);
        self.waiting = match (self.backlog, failing) {
            (Some(b), Some(f)) => Some(b.saturating_sub(f)),
            _ => None,
        };
        self.failing = failing.filter(|_| self.backlog.is_some());
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
