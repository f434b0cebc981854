//! The event source as the supervisor sees it: opened (its handle, its
//! kernel filter filled with what is watched), failed, or kept after a
//! failed replacement.

use super::Supervisor;
use crate::{config::LogLevel, monitor::Input, source::keeper::Report};

impl Supervisor {
    /// What the source's keeper did.
    pub(super) fn on_source(&mut self, report: Report) {
        match report {
            Report::Opened { handle, why } => {
                if let Some(why) = why {
                    self.reporter.report(LogLevel::Warn, &why, &[]);
                }
                if let Some(why) = &handle.cause_unknown {
                    self.reporter.report(
                    LogLevel::Info,
                    &format!("senders of signals cannot be seen ({why}): causes of death will read `cause unknown`"),
                    &[],
                );
                }
                let input = Input::SourceOpened {
                    name: handle.kind.to_string(),
                    kernel_filter: handle.filter.is_some(),
                    exit_lag: handle.exit_lag,
                    cause_unknown: handle.cause_unknown.clone(),
                };
                self.source_cells = Some(self.telemetry.metrics.source(&handle.kind.to_string()));
                self.source_down = None;
                let checkable = handle.kind != crate::source::SourceKind::Poll;
                self.source = Some(handle);
                self.self_check_source_changed(checkable);
                self.scans.source_opened();
                self.fill_filter();
                self.feed(input);
            }
            Report::Failed(why) => {
                self.source = None;
                self.source_cells = None;
                self.self_check_source_changed(false);
                self.telemetry.metrics.source_closed();
                self.source_down = Some(why.clone());
                self.feed(Input::SourceFailed(why));
            }
            Report::Kept(why) => {
                self.reporter.report(LogLevel::Error, &why, &[]);
            }
        }
    }

    /// Puts every watched name and member into the kernel filter.
    pub(super) fn fill_filter(&mut self) {
        let Some(filter) = self.source.as_mut().and_then(|s| s.filter.as_mut()) else {
            return;
        };
        for comm in self.matcher.kernel_comms().unwrap_or_default() {
            filter.watch_comm(&comm);
        }
        for tgid in self.monitor.member_tgids() {
            filter.watch_tgid(tgid);
        }
        // The self-check's canaries are psmon's children.
        filter.watch_tgid(std::process::id());
    }
}
