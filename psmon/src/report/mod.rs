//! Operator messages: what happened to watched processes, in ProcessSaver's
//! wording (so existing log watchers keep matching), written to stderr, to
//! `psmon.log` in the log directory, and to syslog (`/dev/log`, which
//! journald also serves) — or, under systemd, to the journal natively with
//! their fields instead of stderr and syslog. `LOG_LEVEL` applies to all
//! three; `--log-format json` makes stderr and the file structured with the
//! same fields.
//!
//! psmon's own diagnostics (start-up, source selection) go through `tracing`.

pub mod crash_loop;

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value, json};

use crate::{
    config::{Entry, FailoverMode, LogLevel},
    facts::{Cluster, Ending, EntryId, SwitchRequest},
    logsink,
    monitor::{GroupEvent, GroupWhy, Job, Monitor, Notice},
    policy::{Action, SetPidFail, Uncounted},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sees every message written, as JSON, with the kind of event it tells
/// of (`down`, `up`, `restart`, `restart_failed`, `retry_over`,
/// `failover`, `hung`, `group`), if any.
pub type Tap = std::sync::Arc<dyn Fn(Option<&'static str>, &Value) + Send + Sync>;

pub struct Reporter {
    level: LogLevel,
    format: LogFormat,
    tap: Option<Tap>,
    /// The kind of the notice being said.
    kind: Option<&'static str>,
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
        }
    }

    /// Another reporter to the same sinks (for another thread), without a tap.
    pub fn sibling(&self) -> Reporter {
        Reporter {
            level: self.level,
            format: self.format,
            tap: None,
            kind: None,
        }
    }

    /// Shows every message to `tap` from now on.
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

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
        if level < self.level {
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

/// The kind of event a notice tells of, for those pushed and counted.
fn event_kind(notice: &Notice) -> Option<&'static str> {
    Some(match notice {
        Notice::Policy { action, .. } => match action {
            Action::ReportDown { .. } => "down",
            Action::ReportUp { .. } => "up",
            Action::Restart { .. }
            | Action::RestartUncounted { .. }
            | Action::RestartSlowly { .. } => "restart",
            Action::ReportSetPidFail { .. } => "restart_failed",
            Action::ReportRetryOver { .. } => "retry_over",
            Action::Failover => "failover",
            _ => return None,
        },
        Notice::SwitchNotSent { .. } | Notice::Switched { .. } => "failover",
        Notice::CommandDone {
            job: Job::Failover, ..
        } => "failover",
        Notice::Hung { .. } => "hung",
        Notice::Group { .. } => "group",
        _ => return None,
    })
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

    fn say_notice(&mut self, monitor: &Monitor, notice: &Notice) {
        let about = |id: EntryId| {
            let entry = monitor.entry(id);
            let path = entry.path.display().to_string();
            let fields: Vec<(&'static str, Value)> =
                vec![("pfile", json!(monitor.pfile(id))), ("path", json!(path))];
            (entry, path, fields)
        };
        match notice {
            Notice::Policy {
                entry: id,
                action,
                running,
            } => {
                let (entry, path, base) = about(*id);
                let (level, mut message, extra) = policy_message(entry, &path, *action, *running);
                let mut fields = base;
                fields.extend(extra);
                if let Action::ReportDown { pid, status } = action {
                    let (text, extra) = down_cause(monitor, *id, *pid, *status);
                    message.push_str(&text);
                    fields.extend(extra);
                }
                if let Action::ReportRetryOver { .. } = action
                    && let Some(c) = monitor.crash_loop(*id, crate::clock::Time::now())
                {
                    let text = crash_loop::describe(&c);
                    message.push_str(&format!(": {text}"));
                    fields.push(("failures", json!(c.class())));
                    fields.push(("failures_text", json!(text)));
                }
                self.report(level, &message, &fields);
            }
            Notice::ProbeSlow { entry, pid, took } => {
                let (entry, path, mut fields) = about(*entry);
                let warn = entry.probe.as_ref().map_or(0.0, |p| p.warn.as_secs_f64());
                fields.push(("pid", json!(pid)));
                fields.push(("probe_ms", json!(took.as_secs_f64() * 1e3)));
                self.report(
                    LogLevel::Warn,
                    &format!(
                        "Process ['{path}',pid={pid}] slow: answered in {} (warn {warn:.1} s)",
                        duration(*took)
                    ),
                    &fields,
                );
            }
            Notice::Hung {
                entry,
                pid,
                timeout,
                why,
            } => {
                let (_, path, mut fields) = about(*entry);
                fields.push(("pid", json!(pid)));
                fields.push(("why", json!(why)));
                self.report(
                    LogLevel::Error,
                    &hung_text(&path, *pid, *timeout, why),
                    &fields,
                );
            }
            Notice::LeftoversStopped { entry, pgid } => {
                let (_, path, mut base) = about(*entry);
                base.push(("pgid", json!(pgid)));
                self.report(
                    LogLevel::Warn,
                    &format!("restart command for ('{path}') left processes running after its attempt failed (process group {pgid}): stopped before the next attempt"),
                    &base,
                );
            }
            Notice::SwitchNotSent { entry } => {
                let (_, path, base) = about(*entry);
                self.report(
                    LogLevel::Error,
                    &format!("Switch request ('{path}') not sent: no FAILOVER_COMMAND in psagent.conf and no failover for this entry"),
                    &base,
                );
            }
            Notice::Switched {
                entry,
                group,
                ok,
                said,
                elapsed,
            } => {
                let (_, path, mut fields) = about(*entry);
                fields.push(("elapsed_ms", json!(elapsed.as_secs_f64() * 1e3)));
                fields.push(("switched", json!(ok)));
                if let Some(g) = group {
                    fields.push(("group", json!(g)));
                }
                let (level, how) = if *ok {
                    (LogLevel::Info, "")
                } else {
                    (LogLevel::Error, "failed: ")
                };
                self.report(
                    level,
                    &format!("Switch request ('{path}') → {how}{said}"),
                    &fields,
                );
            }
            Notice::CommandDone {
                entry,
                job,
                ok,
                ending,
                elapsed,
                output,
            } => {
                let (_, path, mut fields) = about(*entry);
                fields.push(("elapsed_ms", json!(elapsed.as_secs_f64() * 1e3)));
                if !output.is_empty() {
                    fields.push(("output", json!(output)));
                }
                let what = match job {
                    Job::Restart => "restart",
                    Job::Failover => "failover",
                };
                let level = if *ok { LogLevel::Info } else { LogLevel::Error };
                self.report(
                    level,
                    &format!("{what} command for ('{path}'): {}", command_ending(ending)),
                    &fields,
                );
            }
            Notice::Operator { what, pfile } => self.report(
                LogLevel::Info,
                &format!("Command execute. [{what}] pfile='{pfile}'"),
                &[("pfile", json!(pfile)), ("command", json!(what))],
            ),
            Notice::Reloaded { entries } => self.report(
                LogLevel::Info,
                "configuration reloaded",
                &[("entries", json!(entries))],
            ),
            Notice::ReloadRefused(lines) => {
                for line in lines {
                    self.report(LogLevel::Error, &format!("reload refused: {line}"), &[]);
                }
                self.report(
                    LogLevel::Error,
                    "the new configuration has errors; still running the previous one",
                    &[],
                );
            }
            Notice::SourceOpened {
                name,
                kernel_filter,
            } => self.report(
                LogLevel::Info,
                &format!("watching process events with the {name} source"),
                &[("kernel_filter", json!(kernel_filter))],
            ),
            Notice::SourceFailed(why) => self.report(
                LogLevel::Error,
                &format!("the event source stopped ({why}); scans continue while it is reopened"),
                &[],
            ),
            Notice::EventsLost { count } => self.report(
                LogLevel::Warn,
                "process events were lost; scanning /proc now",
                &[("count", json!(count))],
            ),
            Notice::Scanned { matched, took } => self.report(
                LogLevel::Debug,
                "reconciliation scan done",
                &[
                    ("matched", json!(matched)),
                    ("scan_ms", json!(took.as_secs_f64() * 1e3)),
                ],
            ),
            Notice::Group { group, event, at } => {
                let (level, text, mut fields) = group_message(monitor, *group, event);
                fields.push(("at_ms", json!(at.as_secs_f64() * 1e3)));
                self.report(level, &text, &fields);
            }
            Notice::Gone { tgid, why } => self.report(
                LogLevel::Debug,
                "instance gone",
                &[("pid", json!(tgid)), ("why", json!(why))],
            ),
        }
    }
}

/// A restart group's step: level, text, fields. Each starts with
/// `Group 'NAME':` so that one group's sequence can be read with grep.
pub fn group_message(
    monitor: &Monitor,
    g: usize,
    event: &GroupEvent,
) -> (LogLevel, String, Vec<(&'static str, Value)>) {
    let name = monitor.group_name(g);
    let path = |id: EntryId| monitor.entry(id).path.display().to_string();
    let mut fields = vec![("group", json!(name))];
    let (level, text) = match event {
        GroupEvent::Restarting {
            cause,
            attempt,
            why,
        } => {
            fields.push(("path", json!(path(*cause))));
            fields.push(("attempt", json!(attempt)));
            let counted = match why {
                GroupWhy::Failure => format!("attempt {attempt}"),
                GroupWhy::Drill => uncounted(Uncounted::Drill).to_string(),
                GroupWhy::FirstLook => uncounted(Uncounted::FoundDown).to_string(),
            };
            (
                LogLevel::Warn,
                format!("restarting: ('{}') is down ({counted})", path(*cause)),
            )
        }
        GroupEvent::Stopping { entry, pids } => {
            fields.push(("path", json!(path(*entry))));
            fields.push(("pids", json!(pids)));
            let pids: Vec<String> = pids.iter().map(|p| format!("pid={p}")).collect();
            (
                LogLevel::Info,
                format!("stopping ('{}',{})", path(*entry), pids.join(",")),
            )
        }
        GroupEvent::NotStopped { entry } => {
            fields.push(("path", json!(path(*entry))));
            (
                LogLevel::Error,
                format!(
                    "('{}') still runs after SIGKILL; starting the group regardless",
                    path(*entry)
                ),
            )
        }
        GroupEvent::Starting { entry } => {
            fields.push(("path", json!(path(*entry))));
            (LogLevel::Info, format!("starting ('{}')", path(*entry)))
        }
        GroupEvent::Ready { entry, pid } => {
            fields.push(("path", json!(path(*entry))));
            fields.push(("pid", json!(pid)));
            let pid = pid.map_or(String::new(), |p| format!(",pid={p}"));
            (LogLevel::Info, format!("('{}'{pid}) ready", path(*entry)))
        }
        GroupEvent::Restarted { took } => {
            fields.push(("elapsed_ms", json!(took.as_secs_f64() * 1e3)));
            (LogLevel::Info, format!("restarted in {}", duration(*took)))
        }
        GroupEvent::StartFailed { entry, why, left } => {
            let why = start_failure(monitor.entry(*entry), *why);
            fields.push(("path", json!(path(*entry))));
            fields.push(("why", json!(why)));
            let left: Vec<String> = left.iter().map(|id| format!("'{}'", path(*id))).collect();
            let rest = if left.is_empty() {
                String::new()
            } else {
                format!("; not started: {}", left.join(", "))
            };
            (
                LogLevel::Error,
                format!("('{}') did not start: {why}{rest}", path(*entry)),
            )
        }
        GroupEvent::RetryOver { restarts, window } => (
            LogLevel::Error,
            format!(
                "retry over: {restarts} group restarts within {} s; members are reported, not restarted",
                window.as_secs()
            ),
        ),
        GroupEvent::Backoff { delay } => (
            LogLevel::Warn,
            format!(
                "next attempt in {}, once the last one's restart commands have finished",
                duration(*delay)
            ),
        ),
        GroupEvent::NotRestarted { cause, paused } => {
            fields.push(("path", json!(path(*cause))));
            (
                LogLevel::Warn,
                format!(
                    "('{}') is down; not restarted while ('{}') is paused",
                    path(*cause),
                    path(*paused)
                ),
            )
        }
        GroupEvent::SwitchNotSent => (
            LogLevel::Error,
            "switch request not sent: no FAILOVER_COMMAND in psagent.conf and no failover for the member that failed".to_string(),
        ),
        GroupEvent::UpAgain => (
            LogLevel::Info,
            "every member is up again; restarts re-armed".to_string(),
        ),
    };
    (level, format!("Group '{name}': {text}"), fields)
}

/// The message of one restart decision: level, text, extra fields.
fn policy_message(
    entry: &Entry,
    path: &str,
    action: Action,
    running: u32,
) -> (LogLevel, String, Vec<(&'static str, Value)>) {
    match action {
        Action::ReportDown { pid, status: s } => {
            let message = match pid {
                Some(pid) => format!("Process ['{path}',pid={pid}] Down"),
                None => format!("Process ['{path}'] Down"),
            };
            let mut fields = vec![("pid", json!(pid))];
            fields.extend(status_fields(s));
            (LogLevel::Warn, message, fields)
        }
        Action::ReportStopped { pid, code } => (
            LogLevel::Info,
            format!(
                "Process ['{path}',pid={pid}] stopped on purpose (exit code {code}); not restarted"
            ),
            vec![("pid", json!(pid)), ("exit_code", json!(code))],
        ),
        Action::Restart { attempt } => (
            LogLevel::Info,
            format!("Try to restart ('{path}')"),
            vec![("attempt", json!(attempt)), ("retry", json!(entry.retry))],
        ),
        Action::RestartUncounted { why } => (
            LogLevel::Info,
            format!("Try to restart ('{path}') ({})", uncounted(why)),
            vec![("attempt", json!(0)), ("retry", json!(entry.retry))],
        ),
        Action::ReportUp { pid, rearmed } => {
            let message = match pid {
                Some(pid) => format!("('{path}',pid={pid}) Up"),
                None => format!("('{path}') Up"),
            };
            let fields = vec![
                ("pid", json!(pid)),
                ("running", json!(running)),
                ("budget_rearmed", json!(rearmed)),
            ];
            (LogLevel::Info, message, fields)
        }
        Action::ReportSetPidFail { why } => {
            let mut fields = Vec::new();
            if let SetPidFail::DiedEarly {
                pid,
                status: s,
                lived,
            } = why
            {
                fields.push(("pid", json!(pid)));
                fields.push(("lived_ms", json!(lived.as_secs_f64() * 1e3)));
                fields.extend(status_fields(s));
            }
            let reason = failure(entry, why);
            fields.push(("reason", json!(reason)));
            (
                LogLevel::Error,
                format!("Set pid fail ('{path}'): {reason}"),
                fields,
            )
        }
        Action::ReportBackoff { delay } => (
            LogLevel::Info,
            format!("next restart of ('{path}') in {}", duration(delay)),
            vec![("delay_ms", json!(delay.as_secs_f64() * 1e3))],
        ),
        Action::ReportStarted { pid } => {
            let who = pid.map(|p| format!(",pid={p}")).unwrap_or_default();
            (
                LogLevel::Info,
                format!(
                    "('{path}'{who}) started; Up once it has run {} s",
                    entry.start_secs.as_secs_f64()
                ),
                vec![("pid", json!(pid))],
            )
        }
        Action::ReportRetryOver { attempts } => {
            let action = entry.action.name();
            (
                LogLevel::Error,
                format!("Retry over ('{path}')"),
                vec![("attempts", json!(attempts)), ("action", json!(action))],
            )
        }
        Action::Failover => (
            LogLevel::Error,
            format!("Switch request ('{path}')"),
            vec![],
        ),
        Action::ReportSlowRetry { every } => (
            LogLevel::Warn,
            format!(
                "('{path}') retries slowly: the next attempt in {}, and so on until one stays up",
                duration(every)
            ),
            vec![("every_ms", json!(every.as_secs_f64() * 1e3))],
        ),
        Action::RestartSlowly { attempt } => (
            LogLevel::Info,
            format!(
                "Try to restart ('{path}') (retrying slowly: attempt {attempt} since the budget was spent)"
            ),
            vec![
                ("attempt", json!(entry.retry + attempt)),
                ("retry", json!(entry.retry)),
                ("slow_attempt", json!(attempt)),
            ],
        ),
        Action::ReportTooManyAfterRestart { running, expected } => (
            LogLevel::Warn,
            format!(
                "Process ('{path}') has {running} instances after its restart, {expected} expected: \
                 a start still under way was restarted again (raise start_wait), or the daemon \
                 forks workers (see pidfile, cmdline, main_only, max)"
            ),
            vec![("running", json!(running)), ("expected", json!(expected))],
        ),
        Action::ReportTooMany { running } => (
            LogLevel::Warn,
            format!("Process ('{path}') has {running} instances, above the maximum"),
            vec![("running", json!(running)), ("max", json!(entry.max))],
        ),
    }
}

/// What a Down message adds about the cause: ` (hang)`, ` (signal 9 from
/// pid 4242 'kill' uid 1000, parent 'bash' pid 4100)`, ` (SIGSEGV, core
/// dumped)`, ` (killed by the OOM killer: …)`, or for a death by a signal
/// the source could not attribute, ` (signal 9, cause unknown: source
/// netlink)`; and the same as fields.
fn down_cause(
    monitor: &Monitor,
    id: EntryId,
    pid: Option<u32>,
    status: crate::event::ExitStatus,
) -> (String, Vec<(&'static str, Value)>) {
    let mut fields = Vec::new();
    let Some(pid) = pid else {
        return (String::new(), fields);
    };
    if monitor.hung(id) == Some(pid) {
        fields.push(("reason", json!("hang")));
        return (" (hang)".to_string(), fields);
    }
    if let Some(cause) = monitor.cause(id, pid) {
        let text = with_dump(cause.describe(status), pid, &mut fields);
        fields.push(("cause", json!(cause.kind())));
        fields.push(("cause_text", json!(text)));
        if let Some(s) = cause.sender() {
            fields.push(("killer_pid", json!(s.pid)));
            fields.push(("killer_comm", json!(s.comm)));
            fields.push(("killer_uid", json!(s.uid)));
            fields.push(("killer_parent", json!(s.parent)));
            fields.push(("killer_grandparent", json!(s.grandparent)));
        }
        if let crate::facts::Cause::Oom { cgroup, .. } = cause {
            fields.push(("cgroup", json!(cgroup)));
        }
        return (format!(" ({text})"), fields);
    }
    let crate::event::ExitStatus::Signal {
        signal,
        core_dumped,
    } = status
    else {
        return (String::new(), fields);
    };
    let core = if core_dumped { ", core dumped" } else { "" };
    let why = monitor.cause_unknown().unwrap_or("its sender was not seen");
    fields.push(("cause", json!("unknown")));
    let text = with_dump(
        format!("{}{core}", crate::facts::signal_name(signal)),
        pid,
        &mut fields,
    );
    (format!(" ({text}, cause unknown: {why})"), fields)
}

/// `text` (a cause that may end in `core dumped`) naming where the dump
/// went: `core dumped: coredumpctl info 4242` when systemd-coredump takes
/// the kernel's dumps, `core dumped: core_pattern core.%p` otherwise; and
/// the same as the field `core`. The dump itself is not waited for: the
/// kernel has handed it over before the process's exit is seen.
fn with_dump(text: String, pid: u32, fields: &mut Vec<(&'static str, Value)>) -> String {
    let Some(head) = text.strip_suffix("core dumped") else {
        return text;
    };
    let Some(dump) = name_dump(crate::proc::core_pattern(), pid) else {
        return text;
    };
    fields.push(("core", json!(dump)));
    format!("{head}core dumped: {dump}")
}

/// Where the dump of `pid` went, by the kernel's `core_pattern`.
fn name_dump(pattern: Option<&str>, pid: u32) -> Option<String> {
    match pattern? {
        p if p.starts_with('|') && p.contains("systemd-coredump") => {
            Some(format!("coredumpctl info {pid}"))
        }
        p => Some(format!("core_pattern {}", escape_controls(p))),
    }
}

/// `Process ['P',pid=N] hung (no answer in 10.0 s: why)`.
pub fn hung_text(path: &str, pid: u32, timeout: std::time::Duration, why: &str) -> String {
    format!(
        "Process ['{path}',pid={pid}] hung (no answer in {:.1} s: {why})",
        timeout.as_secs_f64()
    )
}

/// The text of one restart decision's message (the health queue keeps it).
pub fn policy_text(entry: &Entry, path: &str, action: Action, running: u32) -> String {
    policy_message(entry, path, action, running).1
}

/// Why a restart attempt failed, in words (messages and `psmon status`).
pub fn failure(entry: &Entry, why: SetPidFail) -> String {
    match why {
        SetPidFail::CommandFailed => "the restart command failed".to_string(),
        SetPidFail::NotStarted => "no matching process appeared in time".to_string(),
        SetPidFail::DiedEarly {
            pid,
            status: s,
            lived,
        } => format!(
            "the restarted process{} ended {} after it started ({}), before start_secs {} s",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            duration(lived),
            status(s),
            entry.start_secs.as_secs_f64()
        ),
    }
}

fn status_fields(status: crate::event::ExitStatus) -> Vec<(&'static str, Value)> {
    use crate::event::ExitStatus;
    match status {
        ExitStatus::Code(c) => vec![("exit_code", json!(c))],
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => vec![
            ("signal", json!(signal)),
            ("core_dumped", json!(core_dumped)),
        ],
        ExitStatus::Unknown => vec![("exit", json!("unknown"))],
    }
}

/// A short human duration for messages: `5 ms`, `1.2 s`.
/// How a command ended, for messages: `exit status 1`, `killed by signal
/// 9`, …
pub fn command_ending(ending: &Ending) -> String {
    match ending {
        Ending::Exited(c) => format!("exit status {c}"),
        Ending::Signaled(s) => format!("killed by signal {s}"),
        Ending::TimedOut => "timed out; its process group was killed".into(),
        Ending::SpawnFailed(e) => format!("could not be started: {e}"),
        Ending::Adopted => {
            "ended (started before psmon restarted; its exit status is unknown)".into()
        }
    }
}

/// A switch request, for messages: `pacemaker (move) of resource 'R'`.
pub fn switch_request(request: &SwitchRequest) -> String {
    match request.cluster {
        Cluster::Pacemaker(mode) => {
            let mode = match mode {
                FailoverMode::Move => "move",
                FailoverMode::Ban => "ban",
                FailoverMode::Fail => "fail",
            };
            format!("pacemaker ({mode}) of resource '{}'", request.resource)
        }
        Cluster::Clusterpro => format!("clusterpro move of group '{}'", request.resource),
    }
}

/// Why a group member did not start.
fn start_failure(entry: &Entry, why: crate::monitor::StartFailure) -> String {
    use crate::monitor::StartFailure;
    match why {
        StartFailure::SetPidFail(why) => failure(entry, why),
        StartFailure::Timeout { up, within } => format!(
            "{} within {}",
            if up { "Up, not ready" } else { "not Up" },
            duration(within)
        ),
        StartFailure::Died => "died while its group started".into(),
        StartFailure::NoRestartCommand => "it has no restart command".into(),
    }
}

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

/// Why a restart is not counted, as entries and groups both say it.
fn uncounted(why: Uncounted) -> &'static str {
    match why {
        Uncounted::FoundDown => "found down at start, not counted",
        Uncounted::Drill => "a drill, not counted",
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
