//! The texts of psmon's messages, in ProcessSaver's wording where
//! ProcessSaver had a message (log watchers keep matching): deaths,
//! restarts, failures, failover, restart groups, hangs.

use serde_json::{Value, json};

use super::escape_controls;
use crate::{
    config::{Entry, FailoverMode, LogLevel},
    facts::{Cluster, Ending, EntryId, GroupId, SwitchRequest},
    monitor::{GroupEvent, GroupWhy, Monitor},
    policy::{Action, SetPidFail, Uncounted},
};

/// A restart group's step: level, text, fields. Each starts with
/// `Group 'NAME':` so that one group's sequence can be read with grep.
pub fn group_message(
    monitor: &Monitor,
    g: GroupId,
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
pub(super) fn policy_message(
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
pub(super) fn down_cause(
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
pub(super) fn with_dump(text: String, pid: u32, fields: &mut Vec<(&'static str, Value)>) -> String {
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
pub(super) fn name_dump(pattern: Option<&str>, pid: u32) -> Option<String> {
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

pub(super) fn status_fields(status: crate::event::ExitStatus) -> Vec<(&'static str, Value)> {
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
pub(super) fn start_failure(entry: &Entry, why: crate::monitor::StartFailure) -> String {
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

/// A duration as messages give it: `0.42 s`, `3 min`, …
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
pub(super) fn uncounted(why: Uncounted) -> &'static str {
    match why {
        Uncounted::FoundDown => "found down at start, not counted",
        Uncounted::Drill => "a drill, not counted",
    }
}
