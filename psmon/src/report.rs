//! Operator messages: what happened to watched processes, in ProcessSaver's
//! wording (so existing log watchers keep matching), written to stderr, to
//! `psmon.log` in the log directory, and to syslog (`/dev/log`, which
//! journald also serves). `LOG_LEVEL` applies to all three; `--log-format
//! json` makes stderr and the file structured with the same fields.
//!
//! psmon's own diagnostics (start-up, source selection) go through `tracing`.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value, json};

use crate::{config::LogLevel, logsink};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct Reporter {
    level: LogLevel,
    format: LogFormat,
}

impl Reporter {
    /// Opens `DIR/psmon.log` (creating DIR); it may be missing, which is
    /// said once and does not stop psmon. Writing is `logsink`'s: a message
    /// never waits for stderr, the file or syslog.
    pub fn new(level: LogLevel, format: LogFormat, log_dir: Option<&Path>) -> Self {
        let file = log_dir.and_then(|dir| {
            let path: PathBuf = dir.join("psmon.log");
            let opened = std::fs::create_dir_all(dir).and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
                // It holds restart commands' output: not for every user.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(&path)
            });
            match opened {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the log file; logging to stderr and syslog only");
                    None
                }
            }
        });
        logsink::set_file(file);
        Reporter { level, format }
    }

    pub fn set_level(&mut self, level: LogLevel) {
        self.level = level;
    }

    /// Writes `message` with structured `fields` to every sink.
    pub fn report(&mut self, level: LogLevel, message: &str, fields: &[(&str, Value)]) {
        if level < self.level {
            return;
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let name = match level {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        };
        let mut line = match self.format {
            LogFormat::Json => {
                let mut obj = Map::new();
                obj.insert("time".into(), json!(time));
                obj.insert("level".into(), json!(name));
                obj.insert("message".into(), json!(message));
                for (k, v) in fields {
                    obj.insert((*k).into(), v.clone());
                }
                Value::Object(obj).to_string()
            }
            LogFormat::Text => {
                let mut line = format!("{time} {name:<5} {message}");
                for (k, v) in fields {
                    match v {
                        Value::Null => {}
                        Value::String(s) => line.push_str(&format!(" {k}={s}")),
                        other => line.push_str(&format!(" {k}={other}")),
                    }
                }
                line
            }
        };
        line.push('\n');
        // RFC 3164 framing; facility daemon (3).
        let severity = match level {
            LogLevel::Debug => 7,
            LogLevel::Info => 6,
            LogLevel::Warn => 4,
            LogLevel::Error => 3,
        };
        let packet = format!(
            "<{}>psmon[{}]: {message}",
            3 * 8 + severity,
            std::process::id()
        );
        logsink::line(line.into_bytes(), true, Some(packet.into_bytes()));
    }
}

/// A short human duration for messages: `5 ms`, `1.2 s`.
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1e3)
    } else {
        format!("{secs:.1} s")
    }
}

/// How a process ended, for messages.
pub fn status(status: crate::event::ExitStatus) -> String {
    use crate::event::ExitStatus;
    match status {
        ExitStatus::Code(c) => format!("exit code {c}"),
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => format!(
            "signal {signal}{}",
            if core_dumped { ", core dumped" } else { "" }
        ),
        ExitStatus::Unknown => "exit status unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
