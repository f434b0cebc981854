//! Stopping: exit watches and notify sockets closed, restart and failover
//! commands still running awaited up to [`COMMAND_GRACE`], then what psmon
//! measured of its own costs said.

use serde_json::json;

use super::{Back, COMMAND_GRACE, Supervisor};
use crate::{
    config::LogLevel,
    monitor::{Effect, Input},
};

impl Supervisor {
    pub(super) async fn shut_down(mut self) {
        // Its task ends when it has no more orders to wait for.
        self.exit_watches = None;
        self.notify.close_all();
        self.helpers.close();
        self.commands.close();
        let running = self.commands.len();
        if running > 0 {
            self.reporter.report(
                LogLevel::Info,
                &format!(
                    "psmon stopping; waiting up to {} s for {running} restart or failover command(s)",
                    COMMAND_GRACE.as_secs()
                ),
                &[],
            );
            if tokio::time::timeout(COMMAND_GRACE, self.commands.wait())
                .await
                .is_err()
            {
                self.reporter.report(
                    LogLevel::Warn,
                    "commands still running are left running in their own process groups",
                    &[],
                );
            }
            // Their outcomes, for the log; nothing new is started now.
            while let Ok(back) = self.back_rx.try_recv() {
                if let Back::Input {
                    input: input @ (Input::CommandDone { .. } | Input::Switched { .. }),
                    ..
                } = back
                {
                    for effect in self.monitor.handle(input, self.clock.now()) {
                        if let Effect::Notice(notice) = effect {
                            self.reporter.notice(&self.monitor, &notice);
                        }
                    }
                }
            }
        }
        if let Some(store) = &self.store {
            let snap = &store.snapshot_ns;
            let costs = store.writer_costs();
            let us = |s: &crate::stats::Samples, p| json!(s.percentile_us(p));
            let bytes = |s: &crate::stats::Samples, p| json!(s.percentile(p));
            self.reporter.report(
                LogLevel::Info,
                &format!(
                    "state saved {} times: {} journal records, {} whole",
                    snap.count(),
                    costs.record_ns.count(),
                    costs.whole_ns.count()
                ),
                &[
                    ("snapshot_p50_us", us(snap, 50.0)),
                    ("snapshot_p99_us", us(snap, 99.0)),
                    ("record_p50_us", us(&costs.record_ns, 50.0)),
                    ("record_p99_us", us(&costs.record_ns, 99.0)),
                    ("append_p50_us", us(&costs.append_ns, 50.0)),
                    ("append_p99_us", us(&costs.append_ns, 99.0)),
                    ("record_bytes_p50", bytes(&costs.record_bytes, 50.0)),
                    ("record_bytes_p99", bytes(&costs.record_bytes, 99.0)),
                    ("whole_p50_us", us(&costs.whole_ns, 50.0)),
                    ("whole_p99_us", us(&costs.whole_ns, 99.0)),
                    ("replace_p50_us", us(&costs.replace_ns, 50.0)),
                    ("replace_p99_us", us(&costs.replace_ns, 99.0)),
                    ("whole_bytes_p50", bytes(&costs.whole_bytes, 50.0)),
                ],
            );
        }
        if self.status_views.count() > 0 {
            let v = &self.status_views;
            self.reporter.report(
                LogLevel::Info,
                &format!("status answered {} times", v.count()),
                &[
                    ("loop_p50_us", json!(v.percentile_us(50.0))),
                    ("loop_p99_us", json!(v.percentile_us(99.0))),
                ],
            );
        }
        if self.queue_writes.count() > 0 {
            let w = &self.queue_writes;
            self.reporter.report(
                LogLevel::Info,
                &format!("health queues written {} times", w.count()),
                &[
                    ("p50_us", json!(w.percentile_us(50.0))),
                    ("p99_us", json!(w.percentile_us(99.0))),
                ],
            );
        }
        self.reporter.report(
            LogLevel::Info,
            "psmon stopping; watched processes are left running",
            &[],
        );
    }
}
