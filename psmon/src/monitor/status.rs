//! The status read-model: what `psmon status`, `/status` and the metrics
//! show of each entry.

use std::path::PathBuf;

use super::{EntryId, Monitor};
use crate::{
    clock::Time,
    event::ExitStatus,
    policy::{Phase, SetPidFail},
};

/// What `psmon status` shows of an entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryStatus {
    pub id: EntryId,
    pub pfile: String,
    pub path: PathBuf,
    /// `unknown` (not yet seen), `up`, `down`, `restarting`, `retry_over`,
    /// `failed_over` or `paused`.
    pub state: &'static str,
    /// The instances: (tgid, start time in clock ticks), oldest first.
    pub instances: Vec<(u32, u64)>,
    pub since: Time,
    /// Restart attempts in the current window, of `retry`.
    pub attempts: usize,
    pub retry: u32,
    pub last_down: Option<(Option<u32>, ExitStatus)>,
    pub last_failure: Option<SetPidFail>,
    /// What its recent failures have in common.
    pub crash_loop: Option<super::crash_loop::CrashLoop>,
}

impl Monitor {
    /// What `psmon status` shows, entry by entry.
    pub fn status(&self, now: Time) -> Vec<EntryStatus> {
        let all: Vec<EntryId> = (0..self.watches.len()).map(|i| EntryId(i as u32)).collect();
        self.status_of(&all, now)
    }

    /// [`Monitor::status`] of these entries.
    pub fn status_of(&self, ids: &[EntryId], now: Time) -> Vec<EntryStatus> {
        ids.iter()
            .filter(|id| id.index() < self.watches.len())
            .map(|id| (id.index(), &self.watches[id.index()]))
            .map(|(i, w)| {
                let entry = &self.config[i];
                let state = if w.paused {
                    "paused"
                } else if w.held {
                    "restarting"
                } else {
                    match w.state.phase {
                        Phase::Unknown => "unknown",
                        Phase::Up => "up",
                        Phase::Down => "down",
                        Phase::RetryOver if w.failover_sent => "failed_over",
                        Phase::RetryOver => "retry_over",
                        Phase::SlowRetry { .. } => "retrying_slowly",
                        _ => "restarting",
                    }
                };
                let mut instances = self.instances(EntryId(i as u32));
                instances.sort_by_key(|(tgid, start)| (*start, *tgid));
                EntryStatus {
                    id: EntryId(i as u32),
                    pfile: w.pfile.clone(),
                    path: w.path.clone(),
                    state,
                    instances,
                    since: w.since,
                    attempts: w.state.attempts_in_window(entry, now),
                    retry: entry.retry,
                    last_down: w.last_down,
                    last_failure: w.last_failure,
                    crash_loop: w.failures.classify(entry.grace, now),
                }
            })
            .collect()
    }

    /// How many entries are Up, of how many (cheap: for systemd's STATUS=).
    pub fn up_count(&self) -> (usize, usize) {
        let up = self
            .watches
            .iter()
            .filter(|w| w.state.phase == Phase::Up && !w.paused)
            .count();
        (up, self.watches.len())
    }
}
