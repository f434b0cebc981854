//! What the monitor asks for, carried out: notices said (log, metrics,
//! health queues, the flight recorder), commands run, exits watched, the
//! kernel filter kept, `/proc` read on the blocking pool and fed back.

use serde_json::json;

use super::{Back, Supervisor, leftovers};
use crate::{
    config::LogLevel,
    facts::EntryId,
    monitor::{Effect, Input, Notice},
    scan::read_pidfile,
};

impl Supervisor {
    /// Carries out one of the monitor's effects.
    pub(super) fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Notice(notice) => {
                // Metrics first: whoever reads the message and then asks
                // /metrics finds what it says already counted.
                self.telemetry
                    .metrics
                    .notice(&self.monitor, &notice, self.clock.now());
                self.reporter.notice(&self.monitor, &notice);
                if let Notice::Policy {
                    entry,
                    action: crate::policy::Action::ReportDown { pid, .. },
                    ..
                } = &notice
                {
                    self.flight_record(*entry, *pid);
                }
                if !self.drills.is_empty() {
                    self.drill_notice(&notice);
                }
                if !self.queues.is_empty() {
                    self.queue_notice(&notice);
                }
            }
            Effect::AwaitCommand {
                path,
                pgid,
                since,
                timeout,
            } => {
                let left = timeout.saturating_sub(self.clock.since(since));
                self.await_command(path, pgid, left)
            }
            Effect::Run(run) => self.run_command(run),
            Effect::Switch { path, request } => self.send_failover(path, request),
            Effect::WatchExit { tgid, start } => self.watch_exit(tgid, start),
            Effect::UnwatchExit { tgid } => {
                if let Some(watches) = &self.exit_watches {
                    watches.unwatch(tgid);
                }
            }
            Effect::FilterTgid { tgid, watch } => {
                if let Some(filter) = self.source.as_mut().and_then(|s| s.filter.as_mut()) {
                    if watch {
                        filter.watch_tgid(tgid);
                    } else {
                        filter.unwatch_tgid(tgid);
                    }
                }
            }
            Effect::AwaitReaped { path, tgids, pgid } => {
                let tx = self.back_tx.clone();
                self.helpers.spawn(async move {
                    let stopped = leftovers::settle(&tgids, pgid).await;
                    // By path: a reload meanwhile renumbers entries.
                    let input = Input::Reaped { path, stopped };
                    let _ = tx.send(Back::Input {
                        input,
                        generation: None,
                    });
                });
            }
            Effect::ReadPidfile { entry, path } => {
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Pidfile {
                    entry,
                    pid: read_pidfile(&path),
                });
            }
            Effect::Recheck { entry, tgids } => {
                let matcher = self.matcher.clone();
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Rechecked {
                    entry,
                    stale: tgids
                        .into_iter()
                        .filter(|tgid| !matcher.still_matches(entry, *tgid))
                        .collect(),
                });
            }
            Effect::Scan => self.scans.request(),
            Effect::Verify { tgids } => {
                let matcher = self.matcher.clone();
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Verified {
                    found: tgids
                        .into_iter()
                        .map(|tgid| {
                            let matched = matcher.classify(tgid);
                            (tgid, matched)
                        })
                        .collect(),
                });
            }
            Effect::Probe { entry, pid, probe } => self.probe(entry, pid, probe),
            Effect::Kill { tgid, start, grace } => self.kill_gracefully(tgid, start, grace),
        }
    }

    /// Runs `read` on the blocking pool and feeds its input back.
    pub(super) fn blocking(
        &self,
        generation: Option<u64>,
        read: impl FnOnce() -> Input + Send + 'static,
    ) {
        let tx = self.back_tx.clone();
        self.helpers.spawn(async move {
            if let Ok(input) = tokio::task::spawn_blocking(read).await {
                let _ = tx.send(Back::Input { input, generation });
            }
        });
    }

    /// After a Down: the recent events of the entry's trees, to the log
    /// (INFO) and its pfile's health queue (so the dump has them too).
    pub(super) fn flight_record(&mut self, id: EntryId, pid: Option<u32>) {
        let path = self.monitor.entry(id).path.clone();
        let recent = self.recorder.recent(&path, crate::event::boottime_ns());
        if recent.is_empty() {
            return;
        }
        let who = match pid {
            Some(pid) => format!("('{}',pid={pid})", path.display()),
            None => format!("('{}')", path.display()),
        };
        let head = format!(
            "flight recorder of {who}: the last {} process events of its tree",
            recent.len()
        );
        self.reporter.report(
            LogLevel::Info,
            &head,
            &[
                ("path", json!(path)),
                ("pid", json!(pid)),
                ("events", json!(recent)),
            ],
        );
        let pfile = self.monitor.pfile(id).to_string();
        let block = format!("{head}\n  {}", recent.join("\n  "));
        self.queue_text(&pfile, &block);
    }
}
