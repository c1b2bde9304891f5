//! The Prometheus textfile-collector output of `--metrics-file`: a few
//! gauges about the last run and the backlog, written atomically (a
//! temporary file in the same directory, then a rename) at the end of every
//! run, so node_exporter never reads half a file.
//!
//! The last success time and the running total of rows sent live only in
//! the file: a run reads them back from the previous file and carries them
//! on. Nothing is written to the database for them (a run with nothing to
//! send writes nothing there).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Exit, Result};
use crate::summary::Summary;

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The value of `name` in a previous metrics file, if it is there.
fn previous(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Writes the metrics of this run to `path`.
pub fn write(path: &Path, db: &str, mask: i64, s: &Summary) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let last_success = if s.exit_code == 0 {
        Some(now)
    } else {
        previous(&old, "frameflush_last_success_timestamp_seconds")
    };
    let sent_total = previous(&old, "frameflush_rows_sent_total").unwrap_or(0.0) + s.marked as f64;
    let labels = format!("{{db=\"{}\",sync_mask=\"{mask}\"}}", label(db));
    let mut text = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {v}"
            );
        }
    };
    gauge(
        "frameflush_last_run_timestamp_seconds",
        "gauge",
        "When the last run ended (Unix time).",
        Some(now),
    );
    gauge(
        "frameflush_last_run_exit_code",
        "gauge",
        "Exit status of the last run (0 ok, 65 rows failed, 69 broker unreachable, 75 partial, ...).",
        Some(f64::from(s.exit_code)),
    );
    gauge(
        "frameflush_last_run_duration_seconds",
        "gauge",
        "How long the last run took.",
        Some(s.elapsed_ms as f64 / 1000.0),
    );
    gauge(
        "frameflush_last_run_rows_sent",
        "gauge",
        "Rows acknowledged by the broker and marked sent by the last run.",
        Some(s.marked as f64),
    );
    gauge(
        "frameflush_last_run_rows_failed",
        "gauge",
        "Rows the last run could not turn into a message.",
        Some(s.failed as f64),
    );
    gauge(
        "frameflush_rows_sent_total",
        "counter",
        "Rows marked sent, over all runs that wrote this file.",
        Some(sent_total),
    );
    gauge(
        "frameflush_backlog_rows",
        "gauge",
        "Rows still to send for this sync mask (quarantined rows not counted).",
        s.backlog.map(|b| b as f64),
    );
    gauge(
        "frameflush_oldest_unsent_age_seconds",
        "gauge",
        "Age of the oldest row still to send (0 when none).",
        s.backlog.map(|_| s.oldest_unsent_age_s.unwrap_or(0) as f64),
    );
    gauge(
        "frameflush_last_success_timestamp_seconds",
        "gauge",
        "When a run last ended with exit status 0 (Unix time).",
        last_success,
    );

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::new(
            Exit::IoErr,
            format!(
                "cannot write metrics file {}: {}",
                path.display(),
                crate::sys::io_reason(&e)
            ),
        )
    };
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_values_are_read_back_by_name_and_labels_are_escaped() {
        let text = "# HELP x y\nframeflush_rows_sent_total{db=\"a\",sync_mask=\"64\"} 42\nframeflush_rows_sent_total_other 7\n";
        assert_eq!(previous(text, "frameflush_rows_sent_total"), Some(42.0));
        assert_eq!(
            previous(text, "frameflush_last_success_timestamp_seconds"),
            None
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
