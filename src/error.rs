//! The one error type of frameflush and the exit status it maps to.
//!
//! Every failure the program can report is an [`Error`]: a sysexits.h code
//! ([`Exit`]) and one line of text that names what to fix. `main` prints the
//! line once as `frameflush: error: …` and exits with the code; nothing else
//! in the program prints errors or chooses exit codes.

use std::fmt;

/// Exit status, from sysexits.h. The numbers are part of the interface:
/// scripts and systemd units act on them (see README and `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every selected row was acknowledged and marked, or nothing to send.
    Ok = 0,
    /// Bad command line.
    Usage = 64,
    /// Some rows could not be turned into a message; the others went out.
    DataErr = 65,
    /// Database file or table missing.
    NoInput = 66,
    /// Broker unreachable: refused, timed out, DNS.
    Unavailable = 69,
    /// Database unreadable or unwritable.
    IoErr = 74,
    /// Partial: connection lost, acks not all in before the deadline, or
    /// another run holds the lock. Try again later.
    TempFail = 75,
    /// The broker refused the credentials or the client id.
    NoPerm = 77,
    /// Invalid configuration (config file, template, environment).
    Config = 78,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failure with its exit status and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub exit: Exit,
    pub message: String,
}

impl Error {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        // One line, always: a message built from outside text (a path, a
        // broker's reply, SQLite's text) must not break the one-line promise.
        let message: String = message
            .into()
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        Error { exit, message }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Error::new(Exit::Usage, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(Exit::Config, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
