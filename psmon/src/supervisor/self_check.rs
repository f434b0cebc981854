//! The supervisor's part of the source's self-check ([`crate::self_check`]):
//! it starts the canaries, keeps their events from everything else (the
//! monitor, the flight recorders, the young children), says a miss, counts
//! it, rescans at once, and after too many in a row asks the keeper for
//! another source.

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use super::Supervisor;
use crate::{
    config::LogLevel,
    event::{EventKind, ProcEvent},
    self_check::{DEADLINE, MISSES_BEFORE_REPLACING, Verdict},
    source::keeper::Order,
};

impl Supervisor {
    /// Another source is open, or none: canaries start over.
    pub(super) fn self_check_source_changed(&mut self, checkable: bool) {
        if let Some(pid) = self.self_check.source_changed(checkable, Instant::now())
            && let Some(canary) = &self.canary
        {
            canary.reap(pid);
        }
    }

    /// A reload may have changed SELF_CHECK_INTERVAL.
    pub(super) fn self_check_reconfigured(&mut self) {
        if self.canary.is_some() {
            let interval = self.config.agent.self_check_interval;
            self.self_check.set_interval(interval, Instant::now());
        }
    }

    /// Whether `event` is a canary's (then it goes no further). The flying
    /// canary's exit passes the check.
    pub(super) fn self_check_claims(&mut self, event: &ProcEvent) -> bool {
        let (process, exit) = match &event.kind {
            EventKind::Fork(p) | EventKind::Exec(p) => (p, false),
            EventKind::Exit { process, .. } => (process, true),
            EventKind::Signal(_) | EventKind::Lost { .. } => return false,
        };
        if !self.self_check.owns(process.tgid, &process.comm) {
            return false;
        }
        if exit && let Some(verdict) = self.self_check.exited(process.tgid, Instant::now()) {
            self.judged(verdict);
        }
        true
    }

    /// The canary's deadline or the next launch has come.
    pub(super) fn self_check_due(&mut self) {
        let now = Instant::now();
        if let Some(verdict) = self.self_check.expire(now) {
            self.judged(verdict);
        }
        if !self.self_check.should_fire(now) {
            return;
        }
        let Some(canary) = &self.canary else {
            return;
        };
        match canary.fire() {
            Ok(pid) => self.self_check.fired(pid, now),
            Err(e) => {
                self.self_check.not_fired(now);
                self.reporter.report(
                    LogLevel::Warn,
                    &format!("the event source's self-check could not start its canary: {e}"),
                    &[],
                );
            }
        }
    }

    fn judged(&mut self, verdict: Verdict) {
        let source = self.source.as_ref().map(|s| s.kind);
        let name = source.map_or_else(|| "none".to_string(), |k| k.to_string());
        let (Verdict::Passed { pid, .. } | Verdict::Missed { pid, .. }) = verdict;
        if let Some(canary) = &self.canary {
            canary.reap(pid);
        }
        match verdict {
            Verdict::Passed {
                took, after_misses, ..
            } => {
                if let Some(cells) = &self.source_cells {
                    cells.self_checks_passed.fetch_add(1, Relaxed);
                }
                if after_misses > 0 {
                    self.reporter.report(
                        LogLevel::Info,
                        &format!(
                            "event source {name} passed its self-check again after {after_misses} missed"
                        ),
                        &[("took_ms", serde_json::json!(took.as_secs_f64() * 1e3))],
                    );
                }
            }
            Verdict::Missed { pid, in_a_row } => {
                if let Some(cells) = &self.source_cells {
                    cells.self_check_failures.fetch_add(1, Relaxed);
                }
                // What the source did not say may be a death: look now.
                self.scans.read_everything();
                self.scans.request();
                self.reporter.report(
                    LogLevel::Warn,
                    &format!(
                        "event source {name} missed its self-check: no exit event for its canary (pid {pid}) within {} s; scanning /proc now ({in_a_row} in a row)",
                        DEADLINE.as_secs()
                    ),
                    &[],
                );
                if in_a_row >= MISSES_BEFORE_REPLACING
                    && let Some(kind) = source
                {
                    let why = format!("missed {in_a_row} self-checks in a row");
                    self.reporter.report(
                        LogLevel::Error,
                        &format!(
                            "event source {name} {why}; reopening it, or falling back to the next source that passes"
                        ),
                        &[],
                    );
                    // Full: a replacement is being looked for already.
                    let _ = self.source_orders.try_send(Order::Replace { kind, why });
                }
            }
        }
    }
}
