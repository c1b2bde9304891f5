//! Retention: `frameflush purge`, which keeps the gateway's database from
//! growing until the flash is full.
//!
//! Only rows that every destination has are deleted: rows whose
//! `--require-mask` bits are all set. By age (`--older-than`) and/or by a cap
//! on the table (`--max-rows`, oldest sent rows first); an unsent row is
//! never deleted, and when unsent rows alone exceed the cap the run says so.
//! Deletes go in short transactions of [`BATCH`] rows, so the producer
//! never waits long; then the space goes back to the file system
//! (incremental vacuum where the database allows it, `--vacuum` for a full
//! one) and a WAL is checkpointed and truncated.

use serde::Serialize;

use crate::cli::PurgeArgs;
use crate::config::Target;
use crate::error::{Error, Result};
use crate::source::{self, Mode, Source};

/// Rows deleted per transaction.
pub const BATCH: usize = 1000;

/// What a purge did, for `--json`.
#[derive(Debug, Default, Serialize)]
pub struct Purged {
    pub require_mask: i64,
    pub deleted_by_age: u64,
    pub deleted_by_cap: u64,
    pub remaining: u64,
    /// Rows remaining that some destination still needs.
    pub unsent: u64,
    pub freed_pages: u64,
    /// Set when unsent rows alone are more than `--max-rows`.
    pub over_cap: bool,
}

/// Parses `30d`, `12h`, `90m`, `3600s`, `2w` into seconds.
pub fn parse_age(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 30d (a number and s, m, h, d or w)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?} needs a unit: s, m, h, d or w (e.g. 30d)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too long an age"))
}

pub fn purge(args: &PurgeArgs, target: &Target) -> Result<Purged> {
    if args.older_than.is_none() && args.max_rows.is_none() {
        return Err(Error::usage("give --older-than AGE and/or --max-rows N"));
    }
    let age = match &args.older_than {
        Some(a) => Some(parse_age(a).map_err(|why| Error::usage(format!("--older-than {why}")))?),
        None => None,
    };
    let require = match args.require_mask {
        None => target.sync_mask,
        Some(m) if m == 0 || m > i64::MAX as u64 => {
            return Err(Error::usage(format!(
                "--require-mask must be from 1 to {}, not {m}",
                i64::MAX
            )));
        }
        Some(m) => m as i64,
    };
    let mut db = source::open(target, Mode::ReadWrite)?;
    let mut out = Purged {
        require_mask: require,
        ..Purged::default()
    };
    if let Some(age) = age {
        let cutoff = db.cutoff(age)?;
        out.deleted_by_age = delete(&mut *db, require, Some(&cutoff), u64::MAX)?;
    }
    let (total, unsent) = db.row_counts(require)?;
    if let Some(cap) = args.max_rows
        && total > cap
    {
        let excess = total - cap;
        // Only sent rows go; unsent ones may keep the table over the cap.
        out.deleted_by_cap = delete(&mut *db, require, None, excess.min(total - unsent))?;
    }
    out.freed_pages = db.reclaim(args.vacuum)?;
    (out.remaining, out.unsent) = db.row_counts(require)?;
    out.over_cap = args.max_rows.is_some_and(|cap| out.unsent > cap);
    Ok(out)
}

/// Deletes up to `at_most` matching rows in batches; returns how many.
fn delete(db: &mut dyn Source, require: i64, before: Option<&str>, at_most: u64) -> Result<u64> {
    let mut deleted = 0u64;
    let mut after = 0;
    while deleted < at_most {
        let limit = (at_most - deleted).min(BATCH as u64) as usize;
        let (n, last) = db.purge_batch(require, before, after, limit)?;
        deleted += n as u64;
        match last {
            Some(id) => after = id,
            None => break,
        }
    }
    Ok(deleted)
}

/// The one line `purge` prints when the cap cannot be kept.
pub fn over_cap_warning(p: &Purged, cap: u64) -> String {
    format!(
        "{} rows are not yet sent to every destination (mask {}): more than --max-rows {cap}; \
         none of them was deleted",
        p.unsent, p.require_mask
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_number_and_a_unit() {
        assert_eq!(parse_age("30d"), Ok(30 * 86_400));
        assert_eq!(parse_age("12h"), Ok(43_200));
        assert_eq!(parse_age("90m"), Ok(5_400));
        assert_eq!(parse_age("3600s"), Ok(3_600));
        assert_eq!(parse_age("2w"), Ok(1_209_600));
        assert_eq!(parse_age("0d"), Ok(0));
        for bad in [
            "30",
            "d",
            "",
            "-1d",
            "1.5d",
            "30 days",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
