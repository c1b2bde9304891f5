//! One run at a time per database and destination: an exclusive lock on a
//! file beside the database, `DB.frameflush-MASK.lock`.
//!
//! The lock is the kernel's (`File::try_lock`, flock on Linux): it goes away
//! with the process however the process ends, so a run killed with SIGKILL
//! never leaves a stale lock behind. The file itself stays; removing it
//! would let two runs lock two different files of the same name.

use std::fs::{File, TryLockError};
use std::path::Path;

use crate::error::{Error, Exit, Result};
use crate::sys::io_reason;

/// Held for the life of the run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock or fails at once: 75 when another run holds it, 74
    /// when the lock file cannot be created.
    pub fn acquire(path: &Path) -> Result<RunLock> {
        // flock needs no write access: an existing lock file is opened for
        // reading, so that one created by another user (a manual run as
        // root) does not lock the service's user out.
        let opened = match File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path),
            other => other,
        };
        let file = opened.map_err(|e| {
            Error::new(
                Exit::IoErr,
                format!(
                    "cannot open lock file {}: {}",
                    path.display(),
                    io_reason(&e)
                ),
            )
        })?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::new(
                Exit::TempFail,
                format!(
                    "another frameflush run holds {}; not starting a second one",
                    path.display()
                ),
            )),
            Err(TryLockError::Error(e)) => Err(Error::new(
                Exit::IoErr,
                format!("cannot lock {}: {}", path.display(), io_reason(&e)),
            )),
        }
    }
}
