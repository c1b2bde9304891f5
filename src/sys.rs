//! What the operating system tells us, in the operator's words: the
//! machine's host name (for the default client id and Meshlium's
//! `#MESHLIUM#`), an I/O error's reason without the "(os error N)" noise, an
//! age ("3d 4h"), and the one-line writes to stdout that never panic on a
//! closed pipe. Every other module may use these; this one uses none of
//! them.

/// An io::Error's reason without the "(os error N)" noise.
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The machine's host name, for the default client id.
pub fn hostname() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "gateway".to_string()
}

/// One JSON value on one line of stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => out(&s),
        Err(e) => crate::sys::say!("frameflush: error: cannot write JSON: {e}"),
    }
}

/// One line on stdout. A closed stdout (`| head`) is not worth a panic: the
/// exit status still tells.
pub fn out(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

/// Writes to stderr. `eprintln!` panics when stderr is gone (a pipe whose
/// reader exited, `2>&1 | head`); a message nobody can read is not worth a
/// panic and exit 101: the exit status still tells.
pub fn to_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `eprintln!` that never panics: see [`to_stderr`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::sys::to_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics.
macro_rules! say_part {
    ($($arg:tt)*) => {
        $crate::sys::to_stderr(format_args!($($arg)*))
    };
}

pub(crate) use {say, say_part};

/// "3d 4h", "12m 5s": an age for people (`status`, `check`).
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}
