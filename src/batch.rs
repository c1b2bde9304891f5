//! Rows into messages: the chunks a run selects (within `--batch`, what
//! `--limit` leaves, and whole Waspmote frames with `--group frame`), the
//! rendering of rows into messages (one per row, or one per frame) with
//! `--max-payload`, and the record of rows that cannot become a message.
//! `run` (dry runs), `drain` (publishing) and `check` (the next messages)
//! use it. A row read ahead by the marking thread may come with its message
//! made ([`crate::row::Row::made`], [`renderer`]): it is taken as made.

use std::collections::VecDeque;

use crate::config::{Config, Group, Log};
use crate::error::Result;
use crate::row::{Column, Field, Made, Row};
use crate::session::{Message, Rows};
use crate::source::Source;
use crate::summary::Summary;
use crate::template::{
    FRAME_COLUMNS, PayloadFormat, Renderer, RowError, check_reading, frame_json, render_row,
    within_limit,
};

/// At most this many rows that cannot become a message are named on stderr
/// per run; the rest are counted.
pub const MAX_ROW_ERRORS_SHOWN: u64 = 10;

/// Chunk size for the next SELECT, within `--batch` and what `--limit`
/// leaves.
pub fn next_chunk(cfg: &Config, selected: u64) -> usize {
    match cfg.limit {
        Some(limit) => (limit.saturating_sub(selected)).min(cfg.batch as u64) as usize,
        None => cfg.batch,
    }
}

/// The rows of a chunk cut into Waspmote frames: runs of consecutive rows
/// that share id_wasp, id_secret, frame_type, frame_number and timestamp. A
/// sensor seen twice starts a new message (a JSON object holds one value
/// per key).
pub fn split_frames(rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut frames: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let same = frames.last().is_some_and(|f: &Vec<Row>| {
            FRAME_COLUMNS.iter().all(|&c| f[0].get(c) == row.get(c))
                && !f
                    .iter()
                    .any(|r| r.get(Column::Sensor) == row.get(Column::Sensor))
        });
        match frames.last_mut() {
            Some(f) if same => f.push(row),
            _ => frames.push(vec![row]),
        }
    }
    frames
}

/// With `--group frame`, a full chunk may end inside a frame: its last
/// frame is left for the next SELECT (unless it is the only one: a frame
/// larger than `--batch` rows is split). Returns the rows to take now, and
/// those left.
fn hold_back(cfg: &Config, mut rows: Vec<Row>, full: bool) -> (Vec<Row>, Vec<Row>) {
    if cfg.group != Group::Frame || !full {
        return (rows, Vec::new());
    }
    let Some(last) = rows.last() else {
        return (rows, Vec::new());
    };
    let key: Vec<Field> = FRAME_COLUMNS.iter().map(|&c| last.get(c).clone()).collect();
    let start = rows
        .iter()
        .rposition(|r| FRAME_COLUMNS.iter().zip(&key).any(|(&c, k)| r.get(c) != k))
        .map_or(0, |i| i + 1);
    let rest = if start > 0 {
        rows.split_off(start)
    } else {
        Vec::new()
    };
    (rows, rest)
}

/// The next rows to send after `after`: at most a chunk, within what
/// `--limit` leaves, whole frames only with `--group frame`.
pub struct Chunk {
    pub rows: Vec<Row>,
    /// The table may hold more rows after these.
    pub more: bool,
}

pub fn next_rows(cfg: &Config, db: &dyn Source, after: i64, selected: u64) -> Result<Chunk> {
    let want = next_chunk(cfg, selected);
    if want == 0 {
        return Ok(Chunk {
            rows: Vec::new(),
            more: false,
        });
    }
    let rows = db.select_unsent(after, want)?;
    Ok(chunk_of(cfg, rows, want).0)
}

/// The chunk `rows` make, `want` of them asked for, and the rows left for
/// the next chunk: the last frame, when it may go on (`--group frame`).
pub fn chunk_of(cfg: &Config, rows: Vec<Row>, want: usize) -> (Chunk, Vec<Row>) {
    let full = rows.len() == want;
    let got = rows.len();
    let (rows, rest) = hold_back(cfg, rows, full);
    if cfg.group == Group::Frame && full && rows.len() == got && want < cfg.batch {
        // --limit cut this chunk short inside what may be one frame: the
        // frame waits for the next run rather than go out in halves.
        return (
            Chunk {
                rows: Vec::new(),
                more: false,
            },
            Vec::new(),
        );
    }
    (Chunk { rows, more: full }, rest)
}

/// What the thread reading rows ahead renders them with: with `--group
/// row`, where a row is a message of its own (a frame is rendered when its
/// rows are all taken).
pub fn renderer(cfg: &Config) -> Option<Renderer> {
    (cfg.group == Group::Row).then(|| Renderer::new(&cfg.topic, &cfg.payload, cfg.max_payload))
}

/// Renders rows into messages (one per row, or one per frame); rows that
/// cannot become one are counted, named on stderr, stay unsent, and are
/// returned with the reason.
pub fn render(
    cfg: &Config,
    rows: Vec<Row>,
    summary: &mut Summary,
    out: &mut VecDeque<Message>,
) -> Vec<(i64, String)> {
    messages(cfg, rows, out)
        .into_iter()
        .map(|(id, why)| {
            summary.failed += 1;
            if !cfg.log.quiet && summary.failed <= MAX_ROW_ERRORS_SHOWN {
                crate::sys::say!("frameflush: row {id} not sent: {why}");
            }
            (id, why.0)
        })
        .collect()
}

/// Rows into messages (one per row, or one per frame), as [`render`]
/// makes them, but silently: the rows that cannot become a message are
/// returned with the reason, neither counted nor printed (`check` reports
/// them its own way).
pub fn messages(cfg: &Config, rows: Vec<Row>, out: &mut VecDeque<Message>) -> Vec<(i64, RowError)> {
    let mut failed = Vec::new();
    match cfg.group {
        Group::Row => {
            let json = cfg.content_type && cfg.payload == PayloadFormat::Json;
            for mut row in rows {
                // Made already by the thread that read the row ahead, or now.
                let made = row
                    .made
                    .take()
                    .unwrap_or_else(|| render_row(&cfg.topic, &cfg.payload, cfg.max_payload, &row));
                match made {
                    Ok(Made { topic, payload }) => out.push_back(Message {
                        rows: Rows::One(row.id),
                        topic,
                        payload,
                        json,
                    }),
                    Err(why) => failed.push((row.id, why)),
                }
            }
        }
        Group::Frame => {
            for frame in split_frames(rows) {
                let (good, bad): (Vec<Row>, Vec<Row>) =
                    frame.into_iter().partition(|r| check_reading(r).is_ok());
                for row in bad {
                    if let Err(why) = check_reading(&row) {
                        failed.push((row.id, why));
                    }
                }
                if good.is_empty() {
                    continue;
                }
                let made = cfg.topic.render(&good[0]).and_then(|topic| {
                    let payload = within_limit(cfg.max_payload, frame_json(&good)?)?;
                    Ok((topic, payload))
                });
                match made {
                    Ok((topic, payload)) => out.push_back(Message {
                        rows: Rows::Frame(good.iter().map(|r| r.id).collect()),
                        topic,
                        payload,
                        json: cfg.content_type,
                    }),
                    Err(why) => {
                        for row in &good {
                            failed.push((row.id, why.clone()));
                        }
                    }
                }
            }
        }
    }
    failed
}

/// Renders a chunk and records its failures (quarantining rows that reached
/// `--max-attempts`). Returns the ids of the rows that failed.
pub fn render_and_record(
    cfg: &Config,
    db: &mut dyn Source,
    rows: Vec<Row>,
    summary: &mut Summary,
    out: &mut VecDeque<Message>,
) -> Result<Vec<i64>> {
    let failed = render(cfg, rows, summary, out);
    let quarantined = db.record_failures(&failed, cfg.max_attempts)?;
    if quarantined > 0 && !cfg.log.quiet {
        crate::sys::say!(
            "frameflush: {quarantined} row(s) failed {} time(s) and are quarantined: see `frameflush failures`",
            cfg.max_attempts
        );
    }
    summary.quarantined += quarantined;
    Ok(failed.into_iter().map(|(id, _)| id).collect())
}

pub fn chunk_log(log: Log, summary: &Summary, rows: usize) {
    if log.verbose && rows > 0 {
        crate::sys::say!(
            "frameflush: selected {rows} row(s) ({} so far, {} published, {} acknowledged, {} marked)",
            summary.selected,
            summary.published,
            summary.acknowledged,
            summary.marked
        );
    }
}
