//! The status read-model: what `psmon status`, `/status` and the metrics
//! show of each entry.
//!
//! [`StatusModel`] is the monitor's entries as they are at one moment,
//! taken without copying them (the configuration, the entries and the
//! member table are shared, and copied on write by whoever changes them
//! next), so that a status of 10,000 entries is built away from the event
//! thread while the monitor goes on.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{ByPid, EntryId, Member, Monitor, snapshot::Watches};
use crate::{
    clock::Time,
    config::Entry,
    event::ExitStatus,
    facts::{Cause, GroupId},
    policy::{Phase, SetPidFail},
};

/// What `psmon status` shows of an entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryStatus {
    /// The entry.
    pub id: EntryId,
    /// Its pfile's name.
    pub pfile: String,
    /// Its path.
    pub path: PathBuf,
    /// `unknown` (not yet seen), `up`, `down`, `restarting`, `retry_over`,
    /// `failed_over` or `paused`.
    pub state: &'static str,
    /// The instances: (tgid, start time in clock ticks), oldest first.
    pub instances: Vec<(u32, u64)>,
    /// When it entered its state.
    pub since: Time,
    /// Restart attempts in the current window, of `retry`.
    pub attempts: usize,
    /// Restart attempts allowed within the window.
    pub retry: u32,
    /// Its last death: the instance, when known, and how it ended.
    pub last_down: Option<(Option<u32>, ExitStatus)>,
    /// Why its last restart attempt failed, if one did.
    pub last_failure: Option<SetPidFail>,
    /// What its recent failures have in common.
    pub crash_loop: Option<super::crash_loop::CrashLoop>,
}

/// The entries as they were when it was taken (see the module docs).
#[derive(Clone)]
pub struct StatusModel {
    config: Arc<Vec<Entry>>,
    watches: Watches,
    members: ByPid<Member>,
    group_of: Vec<Option<GroupId>>,
    group_names: Vec<String>,
}

impl Monitor {
    /// The read-model of every entry now: references, nothing copied but
    /// the entries' group numbers.
    pub fn status_model(&self) -> StatusModel {
        StatusModel {
            config: Arc::clone(&self.config),
            watches: self.watches.clone(),
            members: self.members.clone(),
            group_of: self.group_of.clone(),
            group_names: self
                .group_conf
                .iter()
                .map(|g| g.group.name.clone())
                .collect(),
        }
    }

    /// What `psmon status` shows, entry by entry.
    pub fn status(&self, now: Time) -> Vec<EntryStatus> {
        let all: Vec<EntryId> = EntryId::all(self.watches.len()).collect();
        self.status_of(&all, now)
    }

    /// [`Monitor::status`] of these entries.
    pub fn status_of(&self, ids: &[EntryId], now: Time) -> Vec<EntryStatus> {
        status_of(&self.config, &self.watches, &self.members, ids, now)
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

impl StatusModel {
    /// What `psmon status` shows, entry by entry.
    pub fn status(&self, now: Time) -> Vec<EntryStatus> {
        let all: Vec<EntryId> = EntryId::all(self.watches.len()).collect();
        self.status_of(&all, now)
    }

    /// [`StatusModel::status`] of these entries.
    pub fn status_of(&self, ids: &[EntryId], now: Time) -> Vec<EntryStatus> {
        status_of(&self.config, &self.watches, &self.members, ids, now)
    }

    /// Entry `id`'s configuration.
    pub fn entry(&self, id: EntryId) -> &Entry {
        &self.config[id.index()]
    }

    /// Why `pid`, the entry's last instance to die, died, when known.
    pub fn cause(&self, id: EntryId, pid: u32) -> Option<&Cause> {
        self.watches.get(id.index())?.cause(pid)
    }

    /// The entry's last hang probe: how long it took, or why it failed.
    pub fn last_probe(&self, id: EntryId) -> Option<&Result<Duration, String>> {
        self.watches
            .get(id.index())
            .and_then(|w| w.probe.last.as_ref())
    }

    /// The name of the restart group the entry is in, if any.
    pub fn group_name(&self, id: EntryId) -> Option<&str> {
        let g = self.group_of.get(id.index()).copied().flatten()?;
        self.group_names.get(g.index()).map(String::as_str)
    }
}

/// The status of entries `ids`.
fn status_of(
    config: &[Entry],
    watches: &Watches,
    members: &ByPid<Member>,
    ids: &[EntryId],
    now: Time,
) -> Vec<EntryStatus> {
    ids.iter()
        .filter(|id| id.index() < watches.len())
        .map(|id| (id.index(), &watches[id.index()]))
        .map(|(i, w)| {
            let entry = &config[i];
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
            let mut instances: Vec<(u32, u64)> = w
                .members
                .iter()
                .filter_map(|tgid| members.get(tgid).map(|m| (*tgid, m)))
                .filter(|(_, m)| m.counts)
                .map(|(tgid, m)| (tgid, m.start_ticks))
                .collect();
            instances.sort_by_key(|(tgid, start)| (*start, *tgid));
            EntryStatus {
                id: EntryId::at(i),
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
