//! Operator messages: what happened to watched processes, in ProcessSaver's
//! wording (so existing log watchers keep matching), written to stderr, to
//! `psmon.log` in the log directory, and to syslog (`/dev/log`, which
//! journald also serves) — or, under systemd, to the journal natively with
//! their fields instead of stderr and syslog. `LOG_LEVEL` applies to all
//! three; `--log-format json` makes stderr and the file structured with the
//! same fields.
//!
//! psmon's own diagnostics (start-up, source selection) go through `tracing`.
//!
//! This file writes messages; `notices` picks the message each of the
//! monitor's notices becomes, `wording` holds their texts.

pub mod crash_loop;
mod notices;
mod wording;

use notices::event_kind;
pub use wording::{
    command_ending, duration, failure, group_message, hung_text, policy_text, status,
    switch_request,
};

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value, json};

use crate::{
    config::LogLevel,
    logsink,
    monitor::{Monitor, Notice},
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text, as ProcessSaver's log lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Sees every message written, as JSON, with the kind of event it tells
/// of (`down`, `up`, `restart`, `restart_failed`, `retry_over`,
/// `failover`, `hung`, `group`), if any.
pub type Tap = std::sync::Arc<dyn Fn(Option<&'static str>, &Value) + Send + Sync>;

/// Writes messages to the log file, stderr and syslog (or the journal),
/// and shows them to its tap.
pub struct Reporter {
    level: LogLevel,
    format: LogFormat,
    tap: Option<Tap>,
    /// The kind of the notice being said.
    kind: Option<&'static str>,
    /// Writes to the log file, stderr and syslog (not so in tests that
    /// only look at the tap: the sinks are the process's, shared).
    sinks: bool,
}

impl Reporter {
    /// Opens `DIR/psmon.log` (creating DIR); it may be missing, which is
    /// said once and does not stop psmon. Writing is `logsink`'s: a message
    /// never waits for stderr, the file or syslog.
    pub fn new(level: LogLevel, format: LogFormat, log_dir: Option<&Path>) -> Self {
        let file = log_dir.and_then(|dir| {
            let path: PathBuf = dir.join("psmon.log");
            let opened = std::fs::create_dir_all(dir).and_then(|()| logsink::open_log(&path));
            match opened {
                Ok(f) => Some((f, path)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the log file; logging to stderr and syslog only");
                    None
                }
            }
        });
        logsink::set_file(file);
        Reporter {
            level,
            format,
            tap: None,
            kind: None,
            sinks: true,
        }
    }

    /// A reporter that shows every message to `tap` and writes nowhere.
    #[cfg(test)]
    pub fn tap_only(tap: Tap) -> Self {
        Reporter {
            level: LogLevel::Info,
            format: LogFormat::Json,
            tap: Some(tap),
            kind: None,
            sinks: false,
        }
    }

    /// Another reporter to the same sinks (for another thread), without a tap.
    pub fn sibling(&self) -> Reporter {
        Reporter {
            level: self.level,
            format: self.format,
            tap: None,
            kind: None,
            sinks: self.sinks,
        }
    }

    /// Shows every message to `tap` from now on.
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    /// The least a message must be to be written.
    pub fn set_level(&mut self, level: LogLevel) {
        self.level = level;
    }

    /// Writes `message` with structured `fields` to every sink.
    pub fn report(&mut self, level: LogLevel, message: &str, fields: &[(&str, Value)]) {
        // The tap sees events whatever LOG_LEVEL keeps from the log.
        if level < self.level && (self.tap.is_none() || self.kind.is_none()) {
            return;
        }
        // Fractional numbers (milliseconds, microseconds) to three places:
        // `elapsed_ms=5.818`, not the float's `5.817588000000001`.
        let rounded: Vec<(&str, Value)> = fields
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(x) if v.is_f64() => (*k, json!((x * 1000.0).round() / 1000.0)),
                _ => (*k, v.clone()),
            })
            .collect();
        let fields = rounded.as_slice();
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let name = match level {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        };
        let as_json = || {
            let mut obj = Map::new();
            obj.insert("time".into(), json!(time));
            obj.insert("level".into(), json!(name));
            obj.insert("message".into(), json!(message));
            for (k, v) in fields {
                obj.insert((*k).into(), v.clone());
            }
            Value::Object(obj)
        };
        if let Some(tap) = &self.tap {
            tap(self.kind, &as_json());
        }
        if level < self.level || !self.sinks {
            return;
        }
        let mut line = match self.format {
            LogFormat::Json => as_json().to_string(),
            LogFormat::Text => {
                let mut line = format!("{time} {name:<5} {}", escape_controls(message));
                for (k, v) in fields {
                    if let Some(text) = field_text(v) {
                        line.push_str(&format!(" {k}={text}"));
                    }
                }
                line
            }
        };
        line.push('\n');
        let severity = match level {
            LogLevel::Debug => 7,
            LogLevel::Info => 6,
            LogLevel::Warn => 4,
            LogLevel::Error => 3,
        };
        let message = escape_controls(message);
        let record = if logsink::to_journal() {
            let fields: Vec<(&str, String)> = fields
                .iter()
                .filter_map(|(k, v)| Some((*k, field_text(v)?.into_owned())))
                .collect();
            logsink::journal_record(severity, &message, &fields)
        } else {
            logsink::syslog_record(severity, &message)
        };
        logsink::line(line.into_bytes(), true, Some(record));
    }
}

/// A field's value as a log line and the journal show it: strings with
/// their control characters escaped, other values as JSON, nothing for null.
fn field_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(escape_controls(s)),
        other => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

/// `text` with every control character written as an escape (`\n`,
/// `\x1b`, …): process names, command lines and paths come from whoever
/// runs the process, and a newline in one must not start a forged log line
/// (nor an escape sequence repaint the operator's terminal).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Reporter {
    /// An operator action on the record ([`crate::audit`]): logged, and
    /// pushed as an `audit` event.
    pub fn audit(&mut self, level: LogLevel, message: &str, fields: &[(&str, Value)]) {
        self.kind = Some("audit");
        self.report(level, message, fields);
        self.kind = None;
    }

    /// Says what the monitor has to say, in ProcessSaver's wording where
    /// ProcessSaver had a message: the one place each message is written.
    pub fn notice(&mut self, monitor: &Monitor, notice: &Notice) {
        self.kind = event_kind(notice);
        self.say_notice(monitor, notice);
        self.kind = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{wording::name_dump, *};

    #[test]
    fn writes_json_lines_to_the_log_file_at_or_above_the_level() {
        let dir = std::env::temp_dir().join(format!("psmon-report-{}", std::process::id()));
        let mut r = Reporter::new(LogLevel::Info, LogFormat::Json, Some(&dir));
        r.report(LogLevel::Debug, "hidden", &[]);
        r.report(
            LogLevel::Warn,
            "Process ['/usr/sbin/sshd',pid=812] Down",
            &[("pid", json!(812)), ("signal", json!(9))],
        );
        logsink::flush(std::time::Duration::from_secs(5));
        let text = std::fs::read_to_string(dir.join("psmon.log")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("psmon.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "restart output is not for every user");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "Process ['/usr/sbin/sshd',pid=812] Down");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["pid"], 812);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Fractional fields are written to three places.
    #[test]
    fn fractions_are_rounded_in_log_fields() {
        let dir = std::env::temp_dir().join(format!("psmon-report-round-{}", std::process::id()));
        let mut r = Reporter::new(LogLevel::Info, LogFormat::Text, Some(&dir));
        r.report(
            LogLevel::Info,
            "restart command ended",
            &[("elapsed_ms", json!(5.817588000000001)), ("pid", json!(7))],
        );
        logsink::flush(std::time::Duration::from_secs(5));
        let text = std::fs::read_to_string(dir.join("psmon.log")).unwrap();
        assert!(text.contains(" elapsed_ms=5.818 pid=7"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A process name with a newline (a killer's comm) stays on its line.
    #[test]
    fn control_characters_cannot_forge_a_text_log_line() {
        let dir = std::env::temp_dir().join(format!("psmon-report-ctl-{}", std::process::id()));
        let mut r = Reporter::new(LogLevel::Info, LogFormat::Text, Some(&dir));
        r.report(
            LogLevel::Warn,
            "Down (signal 9 from pid 7 'x\nERROR FAKE\x1b[2J')",
            &[("killer_comm", json!("x\nERROR FAKE"))],
        );
        logsink::flush(std::time::Duration::from_secs(5));
        let text = std::fs::read_to_string(dir.join("psmon.log")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("'x\\nERROR FAKE\\x1b[2J'"), "{text}");
        assert!(text.contains("killer_comm=x\\nERROR FAKE"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dump_is_named_where_it_went() {
        let coredump = "|/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h";
        assert_eq!(
            name_dump(Some(coredump), 4242).as_deref(),
            Some("coredumpctl info 4242")
        );
        assert_eq!(
            name_dump(Some("core.%p"), 7).as_deref(),
            Some("core_pattern core.%p")
        );
        assert_eq!(name_dump(None, 7), None);
    }
}
