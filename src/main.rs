//! frameflush: flush unsent sensor rows from a gateway's database (SQLite,
//! or MySQL/MariaDB with the cargo feature `mysql`) to an MQTT broker at
//! QoS 1, marking each row sent only after its PUBACK.
//!
//! `main` stays thin: parse the command line, build the validated
//! configuration, run the command, print the one error line and exit with
//! its status. The map of the rest: `cli` (syntax) → `config` (meaning) →
//! `run` (one flush: `source` (`sqlite` with its `lock`, `mysql`),
//! `template` over `row`, `publish`); `check` walks the same path without
//! marking;
//! `error` holds the one error type and the exit statuses.

mod admin;
mod batch;
mod blame;
mod check;
mod cli;
mod config;
mod drain;
mod error;
mod lock;
mod marker;
mod meshlium;
mod metrics;
mod retention;
mod row;
mod run;
mod session;
mod source;
mod summary;
mod sys;
mod template;
mod tls;

use std::process::ExitCode;

use argh::FromArgs;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::{Exit, Result};
use crate::sys::{out, print_json};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for (i, arg) in std::env::args_os().enumerate() {
        match arg.into_string() {
            Ok(a) => args.push(a),
            // The argument itself is not shown: it may hold a secret.
            Err(_) => {
                crate::sys::say!("frameflush: error: argument {i} is not valid UTF-8");
                return ExitCode::from(Exit::Usage.code());
            }
        }
    }
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
                    if let Some(hint) = cli::equals_form_hint(&rest) {
                        crate::sys::say!("frameflush: error: {hint} (see `frameflush --help`)");
                        return ExitCode::from(Exit::Usage.code());
                    }
                    let why: Vec<&str> = early.output.split_whitespace().collect();
                    crate::sys::say!(
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
                crate::sys::say!("frameflush: error: {e}");
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
                        print_json(&summary::Summary {
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
                    crate::sys::say!("frameflush: warning: {w}");
                }
            }
            let (summary, error) = run::flush(&cfg);
            if cfg.json {
                print_json(&summary);
            }
            match error {
                Some(e) => Err(e),
                None => Ok(summary::exit_status(&summary, None)),
            }
        }
        Command::Check(args) => check::check(&args, quiet),
        Command::Init(args) => admin::init(&args),
        Command::Status(args) => admin::status(&args),
        Command::Failures(args) => admin::failures(&args),
        Command::Requeue(args) => admin::requeue(&args),
        Command::Purge(args) => admin::purge(&args),
        Command::ImportMeshlium(args) => admin::import_meshlium(&args),
    }
}
