//! Which message each notice of the monitor becomes: its level, its text
//! (from [`super::wording`]) and its fields.

use serde_json::{Value, json};

use super::{
    Reporter, crash_loop,
    wording::{command_ending, down_cause, duration, group_message, hung_text, policy_message},
};
use crate::{
    config::LogLevel,
    facts::EntryId,
    monitor::{Job, Monitor, Notice},
    policy::Action,
};

impl Reporter {
    pub(super) fn say_notice(&mut self, monitor: &Monitor, notice: &Notice) {
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

/// The kind of event a notice tells of, for those pushed and counted.
pub(super) fn event_kind(notice: &Notice) -> Option<&'static str> {
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
