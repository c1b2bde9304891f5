//! The small commands around `flush`: `init`, `status`, `failures`,
//! `requeue` and `purge`, and what they print.
//!
//! Each builds its [`Target`] (database and destination bit) from its flags
//! and the config file, does one thing through [`crate::source`] or
//! [`crate::retention`], and prints text for people or one JSON value for
//! scripts (`--json`). Successful commands that change something print
//! nothing.

use serde::Serialize;

use crate::cli::{FailuresArgs, ImportMeshliumArgs, InitArgs, PurgeArgs, RequeueArgs, StatusArgs};
use crate::config::Target;
use crate::error::{Error, Exit, Result};
use crate::retention;
use crate::source::{self, Destination, Mode};
use crate::sys::{age, out, print_json};

pub fn init(args: &InitArgs) -> Result<Exit> {
    let target = Target::from_flags(
        args.db.as_deref(),
        args.db_pw_file.as_deref(),
        args.config.as_deref(),
        args.sync_mask,
    )?;
    source::init(&target)?;
    Ok(Exit::Ok)
}

/// `status --json`: the table's size and each destination's state.
#[derive(Debug, Serialize)]
struct Status {
    total: u64,
    destinations: Vec<DestinationStatus>,
}

/// A destination as `status` shows it: the source's figures and the MQTT
/// version its last connection spoke.
#[derive(Debug, Serialize)]
struct DestinationStatus {
    #[serde(flatten)]
    figures: Destination,
    /// "5" or "311", and the broker, from the last run that connected.
    protocol: Option<String>,
    broker: Option<String>,
}

pub fn status(args: &StatusArgs) -> Result<Exit> {
    let first = args.sync_mask.first().copied();
    let target = Target::from_flags(
        args.db.as_deref(),
        args.db_pw_file.as_deref(),
        args.config.as_deref(),
        first,
    )?;
    let mut db = source::open(&target, Mode::ReadOnly)?;
    // The masks asked for; else the config's; else every mask the
    // database has seen, and the default one.
    let masks: Vec<i64> = if !args.sync_mask.is_empty() {
        args.sync_mask
            .iter()
            .map(|&m| {
                Target::from_flags(
                    args.db.as_deref(),
                    args.db_pw_file.as_deref(),
                    args.config.as_deref(),
                    Some(m),
                )
                .map(|t| t.sync_mask)
            })
            .collect::<Result<_>>()?
    } else if args.config.is_some() {
        vec![target.sync_mask]
    } else {
        let mut known = db.known_masks()?;
        if !known.contains(&target.sync_mask) {
            known.insert(0, target.sync_mask);
        }
        known
    };
    let mut destinations = Vec::new();
    for mask in masks {
        db.for_mask(mask)?;
        let last = db.state(&crate::drain::last_protocol_key(mask))?;
        let (protocol, broker) = match last.as_deref().and_then(|l| l.split_once(' ')) {
            Some((p, b)) => (Some(p.to_string()), Some(b.to_string())),
            None => (None, None),
        };
        destinations.push(DestinationStatus {
            figures: db.destination()?,
            protocol,
            broker,
        });
    }
    let status = Status {
        total: db.total()?,
        destinations,
    };
    if args.json {
        print_json(&status);
        return Ok(Exit::Ok);
    }
    let mut text = format!("total rows:    {}", status.total);
    for dest in &status.destinations {
        let d = &dest.figures;
        let protocol = match (dest.protocol.as_deref(), &dest.broker) {
            (Some("5"), Some(b)) => format!("MQTT 5 (to {b})"),
            (Some(_), Some(b)) => format!(
                "MQTT 3.1.1 (to {b}; refusals are invisible: a 3.1.1 broker cannot say it refused a message)"
            ),
            _ => "- (no connection yet)".to_string(),
        };
        let oldest = match (&d.oldest_unsent, d.oldest_unsent_age_s) {
            (None, _) => "-".to_string(),
            (Some(t), Some(a)) => format!("{t} ({} ago)", age(a)),
            (Some(t), None) => t.clone(),
        };
        let last_run = match &d.last_run {
            None => "- (none with rows to send yet)".to_string(),
            Some(r) => match (&r.finished_at, r.exit_code) {
                (Some(f), Some(code)) => format!(
                    "started {}, finished {f}, exit {code}, {} row(s) marked",
                    r.started_at, r.rows_marked
                ),
                _ => format!(
                    "started {}, not finished (running, or killed)",
                    r.started_at
                ),
            },
        };
        text.push_str(&format!(
            "\nsync mask {}:\n  sent:          {}\n  waiting:       {}\n  failing:       {} (failed, to be retried)\n  quarantined:   {} (failed --max-attempts times, skipped until requeued)\n  of total:      {}\n  unsent:        {} (waiting + failing)\n  oldest unsent: {oldest}",
            d.sync_mask, d.sent, d.waiting, d.failing, d.quarantined, d.total, d.unsent
        ));
        if d.null_sync > 0 {
            text.push_str(&format!(
                "\n  sync NULL:     {} (sent to no destination yet; counted above)",
                d.null_sync
            ));
        }
        if !d.suspects.is_empty() {
            text.push_str(&format!(
                "\n  suspects:      {} held, tried alone first by the next run:",
                d.suspects.len()
            ));
            for s in &d.suspects {
                text.push_str(&format!("\n    row {}: {}", s.row_id, s.why));
            }
        }
        text.push_str(&format!(
            "\n  last run:      {last_run}\n  protocol:      {protocol}"
        ));
    }
    out(&text);
    Ok(Exit::Ok)
}

pub fn failures(args: &FailuresArgs) -> Result<Exit> {
    let target = Target::from_flags(
        args.db.as_deref(),
        args.db_pw_file.as_deref(),
        args.config.as_deref(),
        args.sync_mask,
    )?;
    let failures = source::open(&target, Mode::ReadOnly)?.failures()?;
    if args.json {
        print_json(&failures);
        return Ok(Exit::Ok);
    }
    for f in &failures {
        let state = match &f.quarantined_at {
            Some(at) => format!("quarantined {at}"),
            None => format!("failing, last tried {}", f.last_attempt_at),
        };
        out(&format!(
            "row {}\t{} attempt(s)\t{state}\t{}",
            f.row_id, f.attempts, f.last_error
        ));
    }
    Ok(Exit::Ok)
}

pub fn requeue(args: &RequeueArgs) -> Result<Exit> {
    let target = Target::from_flags(
        args.db.as_deref(),
        args.db_pw_file.as_deref(),
        args.config.as_deref(),
        args.sync_mask,
    )?;
    let ids = match (args.all, args.ids.is_empty()) {
        (true, true) => None,
        (false, false) => Some(args.ids.as_slice()),
        (true, false) => return Err(Error::usage("give row ids or --all, not both")),
        (false, true) => {
            return Err(Error::usage(
                "give the ids of the rows to requeue, or --all",
            ));
        }
    };
    let mut db = source::open(&target, Mode::ReadWrite)?;
    let n = db.requeue(ids)?;
    if let Some(ids) = ids
        && n < ids.len()
    {
        return Err(Error::new(
            Exit::DataErr,
            format!(
                "requeued {n} of {} row(s): the others had no failure recorded for sync mask {}",
                ids.len(),
                target.sync_mask
            ),
        ));
    }
    Ok(Exit::Ok)
}

pub fn purge(args: &PurgeArgs) -> Result<Exit> {
    let target = Target::from_flags(
        args.db.as_deref(),
        args.db_pw_file.as_deref(),
        args.config.as_deref(),
        None,
    )?;
    let purged = retention::purge(args, &target)?;
    if purged.over_cap
        && let Some(cap) = args.max_rows
    {
        crate::sys::say!(
            "frameflush: warning: {}",
            retention::over_cap_warning(&purged, cap)
        );
    }
    if args.json {
        print_json(&purged);
    }
    Ok(Exit::Ok)
}

/// Prints the JSON config equivalent to Meshlium's MQTT settings (pretty,
/// on stdout) and what the user should know (on stderr).
pub fn import_meshlium(args: &ImportMeshliumArgs) -> Result<Exit> {
    let (config, notes) = crate::meshlium::import(std::path::Path::new(&args.dir))?;
    for note in notes {
        crate::sys::say!("frameflush: note: {note}");
    }
    match serde_json::to_string_pretty(&config) {
        Ok(text) => out(&text),
        Err(e) => {
            return Err(Error::new(
                Exit::Config,
                format!("cannot write the config: {e}"),
            ));
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(125), "2m 5s");
        assert_eq!(age(3 * 3600 + 60 * 7), "3h 7m");
        assert_eq!(age(2 * 86_400 + 5 * 3600 + 59), "2d 5h");
        assert_eq!(age(-5), "0s");
    }
}
