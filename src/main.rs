//! frameflush: flush unsent sensor rows from a gateway's SQLite database to
//! an MQTT broker at QoS 1, marking each row sent only after its PUBACK.
//!
//! `main` stays thin: parse the command line, build the validated
//! configuration, run the command, print the one error line and exit with
//! its status. The map of the rest: `cli` (syntax) → `config` (meaning) →
//! `run` (one flush: `lock`, `db`, `template` over `row`, `publish`);
//! `error` holds the one error type and the exit statuses.

mod cli;
mod config;
mod db;
mod error;
mod lock;
mod publish;
mod retention;
mod row;
mod run;
mod template;
mod tls;

use std::process::ExitCode;

use argh::FromArgs;

use crate::cli::{Cli, Command};
use crate::config::{Config, Target};
use crate::db::{Db, Mode};
use crate::error::{Error, Exit, Result};

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("frameflush: error: argument {bad:?} is not valid UTF-8");
            return ExitCode::from(Exit::Usage.code());
        }
    };
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if rest == ["--version"] {
        out(&format!("frameflush {}", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::from_args(&["frameflush"], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    out(early.output.trim_end());
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    let why: Vec<&str> = early.output.split_whitespace().collect();
                    eprintln!(
                        "frameflush: error: {} (see `frameflush --help`)",
                        why.join(" ")
                    );
                    ExitCode::from(Exit::Usage.code())
                }
            };
        }
    };
    let mut quiet = false;
    match run(cli, &mut quiet) {
        Ok(code) => ExitCode::from(code.code()),
        Err(e) => {
            if !quiet {
                eprintln!("frameflush: error: {e}");
            }
            ExitCode::from(e.exit.code())
        }
    }
}

/// Runs the command. A flush reports its own outcome (summary and status);
/// other commands succeed or fail with one error. `quiet` is set when the
/// configuration asks for no error line.
fn run(cli: Cli, quiet: &mut bool) -> Result<Exit> {
    match cli.command {
        Command::Flush(args) => {
            let env = |k: &str| std::env::var_os(k);
            *quiet = args.quiet;
            let cfg = match Config::build(&args, &env) {
                Ok(cfg) => cfg,
                Err(e) => {
                    if args.json {
                        print_json(&run::Summary {
                            exit_code: e.exit.code(),
                            error: Some(e.message.clone()),
                            ..Default::default()
                        });
                    }
                    return Err(e);
                }
            };
            *quiet = cfg.log.quiet;
            if !cfg.log.quiet {
                for w in &cfg.warnings {
                    eprintln!("frameflush: warning: {w}");
                }
            }
            let (summary, error) = run::flush(&cfg);
            if cfg.json {
                print_json(&summary);
            }
            match error {
                Some(e) => Err(e),
                None => Ok(run::exit_status(&summary, None)),
            }
        }
        Command::Init(args) => {
            let target =
                Target::from_flags(args.db.as_deref(), args.config.as_deref(), args.sync_mask)?;
            Db::init(&target)?;
            Ok(Exit::Ok)
        }
        Command::Status(args) => {
            let target =
                Target::from_flags(args.db.as_deref(), args.config.as_deref(), args.sync_mask)?;
            let db = Db::open(&target, Mode::ReadOnly)?;
            let status = db.status()?;
            if args.json {
                print_json(&status);
            } else {
                let last_run = match &status.last_run {
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
                out(&format!(
                    "unsent:        {} (sync mask {})\noldest unsent: {}\nquarantined:   {} (failing, to be retried: {})\ntotal rows:    {}\nlast run:      {last_run}",
                    status.unsent,
                    status.sync_mask,
                    status.oldest_unsent.as_deref().unwrap_or("-"),
                    status.quarantined,
                    status.failing,
                    status.total
                ));
            }
            Ok(Exit::Ok)
        }
        Command::Failures(args) => {
            let target =
                Target::from_flags(args.db.as_deref(), args.config.as_deref(), args.sync_mask)?;
            let failures = Db::open(&target, Mode::ReadOnly)?.failures()?;
            if args.json {
                print_json(&failures);
            } else {
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
            }
            Ok(Exit::Ok)
        }
        Command::Purge(args) => {
            let target = Target::from_flags(args.db.as_deref(), args.config.as_deref(), None)?;
            let purged = retention::purge(&args, &target)?;
            if purged.over_cap
                && let Some(cap) = args.max_rows
            {
                eprintln!(
                    "frameflush: warning: {}",
                    retention::over_cap_warning(&purged, cap)
                );
            }
            if args.json {
                print_json(&purged);
            }
            Ok(Exit::Ok)
        }
        Command::Requeue(args) => {
            let target =
                Target::from_flags(args.db.as_deref(), args.config.as_deref(), args.sync_mask)?;
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
            let mut db = Db::open(&target, Mode::ReadWrite)?;
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
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => out(&s),
        Err(e) => eprintln!("frameflush: error: cannot write the JSON summary: {e}"),
    }
}

/// One line on stdout. A closed stdout (`| head`) is not worth a panic: the
/// exit status still tells.
fn out(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}
