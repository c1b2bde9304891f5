//! Scheduling, where it can be seen: on a systemd machine, whether the
//! timer of this configuration (`frameflush.timer`, or
//! `frameflush@NAME.timer` for `/etc/frameflush/NAME.json`) is enabled, and
//! when its service last ran with which result, asked of `systemctl show`
//! (bounded in time). Elsewhere (cron) there is nothing to ask: a `skip`.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Report;

/// `systemctl show` may take this long.
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(5);

/// The timer that runs this configuration: `frameflush@NAME` for a config
/// file NAME.json (the template unit's convention), else `frameflush`.
pub fn unit_base(config: Option<&str>) -> String {
    let name = config
        .map(Path::new)
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .filter(|s| *s != "config" && !s.is_empty());
    match name {
        Some(n) => format!("frameflush@{n}"),
        None => "frameflush".to_string(),
    }
}

/// `KEY=value` lines of `systemctl show`.
pub fn properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn get<'a>(props: &'a [(String, String)], key: &str) -> &'a str {
    props
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// `systemctl show UNIT -p …`, or why not.
fn show(unit: &str, keys: &str) -> Result<Vec<(String, String)>, String> {
    let mut child = Command::new("systemctl")
        .args(["show", unit, "--property", keys])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    let deadline = Instant::now() + SYSTEMCTL_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "systemctl did not answer within {} s",
                    SYSTEMCTL_LIMIT.as_secs()
                ));
            }
        }
    }
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    Ok(properties(&text))
}

/// What the timer and its service's properties say, as a status and a
/// line: (warn?, text).
pub fn describe(
    base: &str,
    timer: &[(String, String)],
    service: &[(String, String)],
) -> (bool, String) {
    let unit = format!("{base}.timer");
    if get(timer, "LoadState") == "not-found" {
        return (
            true,
            format!("{unit} is not installed (see README, Deploy with systemd; or is cron used?)"),
        );
    }
    let enabled = get(timer, "UnitFileState");
    let active = get(timer, "ActiveState");
    let mut text = format!("{unit} is {enabled} and {active}");
    let warn = enabled != "enabled" || active != "active";
    if warn {
        text.push_str(&format!(": start it with `systemctl enable --now {unit}`"));
    }
    let last = get(timer, "LastTriggerUSec");
    if last.is_empty() || last == "n/a" || last == "0" {
        text.push_str("; it has not run yet");
    } else {
        text.push_str(&format!("; last run {last}"));
        let result = get(service, "Result");
        let status = get(service, "ExecMainStatus");
        if !status.is_empty() {
            text.push_str(&format!(
                ", {base}.service ended with status {status} ({result})"
            ));
            if status != "0" && status != "75" {
                text.push_str(": see `journalctl -u ");
                text.push_str(base);
                text.push_str(".service`");
                return (true, text);
            }
        }
    }
    (warn, text)
}

/// The `timer` line.
pub fn timer(config: Option<&str>, r: &mut Report) {
    if !Path::new("/run/systemd/system").is_dir() {
        r.skip(
            "timer",
            "not a systemd machine: under cron, `crontab -l` shows the line",
        );
        return;
    }
    let base = unit_base(config);
    let timer = match show(
        &format!("{base}.timer"),
        "LoadState,UnitFileState,ActiveState,LastTriggerUSec,NextElapseUSecRealtime",
    ) {
        Ok(p) => p,
        Err(why) => {
            r.warn("timer", why, serde_json::Value::Null);
            return;
        }
    };
    let service = show(
        &format!("{base}.service"),
        "Result,ExecMainStatus,ExecMainExitTimestamp",
    )
    .unwrap_or_default();
    let (warn, text) = describe(&base, &timer, &service);
    let figures = json!({
        "unit": format!("{base}.timer"),
        "enabled": get(&timer, "UnitFileState"),
        "active": get(&timer, "ActiveState"),
        "last_trigger": get(&timer, "LastTriggerUSec"),
        "last_status": get(&service, "ExecMainStatus"),
    });
    if warn {
        r.warn("timer", text, figures);
    } else {
        r.ok("timer", text, figures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_of_a_config_file_follows_the_template_units_convention() {
        assert_eq!(unit_base(None), "frameflush");
        assert_eq!(unit_base(Some("/etc/frameflush/config.json")), "frameflush");
        assert_eq!(
            unit_base(Some("/etc/frameflush/aws.json")),
            "frameflush@aws"
        );
        assert_eq!(unit_base(Some("settings.conf")), "frameflush");
    }

    #[test]
    fn systemctl_show_reads_as_a_line_with_the_last_result() {
        let timer = properties(
            "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nLastTriggerUSec=Tue 2026-12-01 08:00:03 UTC\n",
        );
        let ok = properties("Result=success\nExecMainStatus=0\n");
        let (warn, text) = describe("frameflush", &timer, &ok);
        assert!(!warn, "{text}");
        assert!(
            text.contains("frameflush.timer is enabled and active"),
            "{text}"
        );
        assert!(text.contains("ended with status 0 (success)"), "{text}");
        let failed = properties("Result=exit-code\nExecMainStatus=77\n");
        let (warn, text) = describe("frameflush", &timer, &failed);
        assert!(warn && text.contains("status 77"), "{text}");
        let (warn, text) = describe("frameflush@aws", &properties("LoadState=not-found\n"), &[]);
        assert!(
            warn && text.contains("frameflush@aws.timer is not installed"),
            "{text}"
        );
        let disabled = properties(
            "LoadState=loaded\nUnitFileState=disabled\nActiveState=inactive\nLastTriggerUSec=n/a\n",
        );
        let (warn, text) = describe("frameflush", &disabled, &[]);
        assert!(
            warn && text.contains("systemctl enable --now frameflush.timer"),
            "{text}"
        );
        assert!(text.contains("not run yet"), "{text}");
    }
}
