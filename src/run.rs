//! One flush run, start to end: lock, open, select, publish, mark, report.
//!
//! The order is what keeps readings safe. The database is opened and
//! checked, then the lock is taken; a run with nothing to send stops there,
//! before any network traffic and before any write (but the lock file's
//! creation and the index's, both once per database and mask). With
//! something to send, a write to frameflush's own table proves the database
//! takes writes before the broker is contacted; then [`Drain`] publishes
//! (rows read in chunks of `--batch`, published in a window of
//! `--inflight`, marked in short transactions as the broker accepts them;
//! anything not accepted stays unsent) and records the run's end, with its
//! last marks when there are any. The [`Summary`] counts what happened, for
//! `--json` and for the exit status.

use std::collections::VecDeque;
use std::io::Write as _;
use std::time::Instant;

use crate::batch::{Chunk, next_rows, render};
use crate::config::Config;
use crate::drain::{self, Drain};
use crate::error::{Error, Exit, Result};
use crate::source::{self, Mode};
use crate::summary::{Summary, exit_status};

/// Runs `flush` as configured. Always returns the summary; the error, if
/// any, decides the exit status together with `summary.failed`.
pub fn flush(cfg: &Config) -> (Summary, Option<Error>) {
    let start = Instant::now();
    let mut summary = Summary {
        dry_run: cfg.dry_run,
        ..Summary::default()
    };
    let result = if cfg.dry_run {
        dry_run(cfg, &mut summary)
    } else {
        publish_run(cfg, &mut summary, start)
    };
    let error = result.err().or_else(|| summary.refusal_error());
    summary.unsent = summary
        .selected
        .saturating_sub(summary.marked + summary.quarantined);
    summary.elapsed_ms = start.elapsed().as_millis() as u64;
    summary.exit_code = exit_status(&summary, error.as_ref()).code();
    summary.error = error.as_ref().map(|e| e.message.clone());
    if let Some(path) = &cfg.metrics_file
        && !cfg.dry_run
    {
        let db = cfg.target.db.display().to_string();
        if let Err(e) = crate::metrics::write(path, &db, cfg.target.sync_mask, &summary) {
            // The run's own outcome matters more; a metrics problem is a
            // warning unless the run was otherwise fine.
            if error.is_none() {
                summary.exit_code = e.exit.code();
                summary.error = Some(e.message.clone());
                return (summary, Some(e));
            }
            if !cfg.log.quiet {
                crate::sys::say!("frameflush: warning: {e}");
            }
        }
    }
    (summary, error)
}

fn dry_run(cfg: &Config, summary: &mut Summary) -> Result<()> {
    let db = source::open(&cfg.target, Mode::ReadOnly)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    let mut queue = VecDeque::new();
    loop {
        let Chunk { rows, more } = next_rows(cfg, &*db, after, summary.selected)?;
        summary.selected += rows.len() as u64;
        if let Some(last) = rows.last() {
            after = last.id;
        }
        render(cfg, rows, summary, &mut queue);
        for m in queue.drain(..) {
            let written = out
                .write_all(m.topic.as_bytes())
                .and_then(|()| out.write_all(b"\t"))
                .and_then(|()| out.write_all(&m.payload))
                .and_then(|()| out.write_all(b"\n"));
            written.map_err(|e| Error::new(Exit::IoErr, format!("cannot write to stdout: {e}")))?;
        }
        if !more {
            break;
        }
    }
    out.flush()
        .map_err(|e| Error::new(Exit::IoErr, format!("cannot write to stdout: {e}")))?;
    if cfg.json {
        summary.count_backlog(&*db);
    }
    Ok(())
}

fn publish_run(cfg: &Config, summary: &mut Summary, start: Instant) -> Result<()> {
    // The database is checked before the lock file is made beside it: a
    // missing database leaves no stray lock file.
    let mut db = source::open(&cfg.target, Mode::ReadWrite)?;
    db.lock_run()?;
    db.ensure_schema()?;
    for note in db.take_notes() {
        if cfg.log.verbose {
            crate::sys::say!("frameflush: {note}");
        }
    }
    if cfg.log.debug {
        crate::sys::say!("frameflush: query plan: {}", db.selection_plan()?);
    }
    let first = next_rows(cfg, &*db, 0, 0)?;
    if first.rows.is_empty() {
        if cfg.json || cfg.metrics_file.is_some() {
            summary.count_backlog(&*db);
        }
        return Ok(());
    }
    summary.selected += first.rows.len() as u64;
    db.begin_run()?;
    // The drain records the run's end (with its last marks when it can).
    let result = match Drain::new(cfg, &mut *db, summary, start) {
        Ok(drain) => drain.run(first),
        Err(e) => {
            drain::end_run(cfg, &mut *db, summary, Some(&e));
            Err(e)
        }
    };
    if cfg.json || cfg.metrics_file.is_some() {
        summary.count_backlog(&*db);
        summary.oldest_unsent_age_s = db.oldest_unsent().ok().and_then(|(_, age)| age);
    }
    result
}
