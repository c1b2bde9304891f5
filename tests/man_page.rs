#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The man page (man/frameflush.1) against the program's own `--help`:
//! every long flag, every short alias and every exit code the binary prints
//! must be documented, and the page must render without groff warnings.

use std::path::PathBuf;
use std::process::Command;

mod util;
use util::BIN;

fn man_page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("man")
        .join("frameflush.1")
}

fn man_page() -> String {
    let path = man_page_path();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the man page {}: {e}", path.display()))
}

/// Runs the binary with these arguments and returns its stdout; `--help`
/// must succeed.
fn help(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(
        out.status.success(),
        "frameflush {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("--help prints UTF-8")
}

/// The lines of the section of `--help` output headed `title` (e.g.
/// "Commands:"), up to the next blank line.
fn help_section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim_end() != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// The subcommands listed under "Commands:" in the top-level help. An entry
/// starts at two spaces of indentation; its wrapped description lines are
/// indented further.
fn subcommands() -> Vec<String> {
    let top = help(&["--help"]);
    let commands: Vec<String> = help_section(&top, "Commands:")
        .into_iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        !commands.is_empty(),
        "found no commands under \"Commands:\" in `frameflush --help`:\n{top}"
    );
    commands
}

/// The help texts: top level first, then `<sub> --help` for each command.
fn all_help_texts() -> Vec<(String, String)> {
    let mut texts = vec![("frameflush --help".to_string(), help(&["--help"]))];
    for sub in subcommands() {
        texts.push((format!("frameflush {sub} --help"), help(&[&sub, "--help"])));
    }
    texts
}

/// Every `--long-flag` token in a text: `--` at a word start, followed by a
/// lower-case letter or digit and then letters, digits and hyphens.
fn long_flags(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut flags = Vec::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-');
        if at_word_start && bytes[i] == b'-' && bytes[i + 1] == b'-' {
            let start = i + 2;
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'-')
            {
                end += 1;
            }
            let name = text[start..end].trim_end_matches('-');
            if name
                .as_bytes()
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                flags.push(format!("--{name}"));
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    flags
}

/// Every short alias (`-L` in "  -L, --url  ...") in the options of a help
/// text.
fn short_aliases(text: &str) -> Vec<String> {
    help_section(text, "Options:")
        .into_iter()
        .filter_map(|l| {
            let first = l.split_whitespace().next()?.trim_end_matches(',');
            let b = first.as_bytes();
            (b.len() == 2 && b[0] == b'-' && b[1].is_ascii_alphanumeric())
                .then(|| first.to_string())
        })
        .collect()
}

/// Whether `needle` occurs in `hay` as a whole option: the next thing after
/// it must not continue the option's name (a letter, a digit, `_`, or a
/// hyphen, plain or as roff's `\-`).
fn contains_option(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(at, _)| {
        let rest = &hay[at + needle.len()..];
        let continues = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        !(continues(rest)
            || rest.strip_prefix("\\-").is_some_and(continues)
            || rest.strip_prefix('-').is_some_and(continues))
    })
}

/// `--sync-mask` as roff writes it: every hyphen escaped.
fn roff_escaped(flag: &str) -> String {
    flag.replace('-', "\\-")
}

/// The text of the man page's section `name`, from its `.SH` line to the
/// next `.SH`.
fn man_section(page: &str, name: &str) -> String {
    let is_heading = |l: &str| {
        l.strip_prefix(".SH")
            .is_some_and(|rest| rest.trim().trim_matches('"') == name)
    };
    let section: Vec<&str> = page
        .lines()
        .skip_while(|l| !is_heading(l))
        .skip(1)
        .take_while(|l| !l.starts_with(".SH"))
        .collect();
    assert!(
        !section.is_empty(),
        "the man page has no (or an empty) section .SH {name}"
    );
    section.join("\n")
}

/// A roff line without its macro name and font escapes: `.B 64` → `64`.
fn plain_tag(line: &str) -> String {
    let text = match line.strip_prefix('.') {
        Some(rest) => rest.split_once(char::is_whitespace).map_or("", |(_, t)| t),
        None => line,
    };
    let mut out = text.replace("\\fB", "").replace("\\fI", "");
    for esc in ["\\fR", "\\fP", "\\&", "\""] {
        out = out.replace(esc, "");
    }
    out.trim().to_string()
}

#[test]
fn every_long_flag_in_help_appears_in_the_man_page() {
    let page = man_page();
    let mut missing = Vec::new();
    let mut seen = 0;
    for (what, text) in all_help_texts() {
        for flag in long_flags(&text) {
            seen += 1;
            let documented =
                contains_option(&page, &roff_escaped(&flag)) || contains_option(&page, &flag) || {
                    // `\-\-sync-mask`: only the leading dashes escaped.
                    let lead = format!("\\-\\-{}", &flag[2..]);
                    contains_option(&page, &lead)
                };
            if !documented && !missing.iter().any(|(f, _)| f == &flag) {
                missing.push((flag, what.clone()));
            }
        }
    }
    assert!(seen > 0, "found no --flags in any help text");
    assert!(
        missing.is_empty(),
        "flags in --help but not in {}: {missing:?}",
        man_page_path().display()
    );
}

#[test]
fn the_help_of_every_subcommand_is_read_for_flags() {
    // Guards the parsing above: each known command has options of its own,
    // so a parser that found no commands or no flags would pass vacuously.
    let commands = subcommands();
    for known in ["flush", "init", "status"] {
        assert!(
            commands.iter().any(|c| c == known),
            "{known} is not among the commands parsed from --help: {commands:?}"
        );
    }
    for sub in &commands {
        if sub == "import-meshlium" {
            // It takes a directory, not a database.
            continue;
        }
        let flags = long_flags(&help(&[sub, "--help"]));
        assert!(
            flags.iter().any(|f| f == "--db"),
            "{sub} --help: no --db among {flags:?}"
        );
    }
}

#[test]
fn every_short_alias_in_help_appears_in_the_man_page() {
    let page = man_page();
    let mut missing = Vec::new();
    for (what, text) in all_help_texts() {
        for alias in short_aliases(&text) {
            if !contains_option(&page, &roff_escaped(&alias)) && !contains_option(&page, &alias) {
                missing.push((alias, what.clone()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "short options not in the man page: {missing:?}"
    );
}

#[test]
fn every_subcommand_has_its_own_options_subsection() {
    let page = man_page();
    let options = man_section(&page, "OPTIONS");
    for sub in subcommands() {
        assert!(
            options
                .lines()
                .filter(|l| l.starts_with(".SS"))
                .any(|l| l.contains(&sub)),
            "OPTIONS has no .SS subsection for {sub}"
        );
    }
}

#[test]
fn every_exit_code_in_help_is_listed_under_exit_status() {
    let top = help(&["--help"]);
    let codes: Vec<String> = help_section(&top, "Error codes:")
        .into_iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| t.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    assert!(
        codes.len() >= 2,
        "found too few codes under \"Error codes:\" in --help: {codes:?}"
    );
    let page = man_page();
    let section = man_section(&page, "EXIT STATUS");
    let lines: Vec<&str> = section.lines().collect();
    let tags: Vec<String> = lines
        .windows(2)
        .filter(|w| w[0].trim() == ".TP")
        .map(|w| plain_tag(w[1]))
        .collect();
    let missing: Vec<&String> = codes.iter().filter(|c| !tags.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "exit codes in --help without a .TP entry under EXIT STATUS: {missing:?} (entries: {tags:?})"
    );
}

#[test]
fn the_sections_come_in_man_pages_order() {
    let page = man_page();
    let headings: Vec<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    assert_eq!(
        headings,
        [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "NOTES",
            "EXAMPLES",
            "SEE ALSO"
        ]
    );
}

#[test]
fn the_man_page_renders_without_warnings() {
    let path = man_page_path();
    let out = match Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "groff is not installed, so the man page cannot be checked: install groff \
             (e.g. `apt-get install -y groff-base groff`) and run the test again"
        ),
        Err(e) => panic!("cannot run groff: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "groff -man -ww -z {} failed with {}: {stderr}",
        path.display(),
        out.status
    );
    assert!(
        stderr.trim().is_empty(),
        "groff warns about {}:\n{stderr}",
        path.display()
    );
}
