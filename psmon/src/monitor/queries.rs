//! What the shell reads of the monitor: its entries and their phases,
//! members, the next deadline, why instances died; and the few settings
//! the shell hands it outside inputs.

use std::path::PathBuf;

use super::{CATCH_UP, Monitor, PIDFILE_POLL, crash_loop};
use crate::{
    clock::Time,
    config::{Entry, Rule},
    facts::{Cause, EntryId, Known, KnownMember},
    policy::Phase,
};

impl Monitor {
    /// The entries (by path) whose notify socket could not be opened.
    pub fn set_unheard(&mut self, paths: std::collections::HashSet<PathBuf>) {
        self.unheard = paths;
    }

    /// Changes with every reload: [`EntryId`]s of one generation mean
    /// nothing in another.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The entries, in [`EntryId`] order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.config.iter()
    }

    /// How many entries.
    pub fn entry_count(&self) -> usize {
        self.config.len()
    }

    /// The entry of `path` (the first, when several name it).
    pub fn entry_of_path(&self, path: &std::path::Path) -> Option<EntryId> {
        self.by_path.get(path).copied()
    }

    /// Entry `id`'s configuration.
    pub fn entry(&self, id: EntryId) -> &Entry {
        &self.config[id.index()]
    }

    /// The name of the pfile entry `id` is in.
    pub fn pfile(&self, id: EntryId) -> &str {
        &self.watches[id.index()].pfile
    }

    /// Where entry `id` stands.
    pub fn phase(&self, id: EntryId) -> Phase {
        self.watches[id.index()].state.phase
    }

    /// How many instances the entry has.
    pub fn running(&self, id: EntryId) -> u32 {
        self.watches[id.index()].running
    }

    /// The entry a process belongs to, if it is a member.
    pub fn member_entry(&self, tgid: u32) -> Option<EntryId> {
        self.members.get(&tgid).map(|m| m.entry)
    }

    /// The entries of a pfile.
    pub fn entries_of(&self, pfile: &str) -> Vec<EntryId> {
        (0..self.watches.len())
            .filter(|i| self.watches[*i].pfile == pfile)
            .map(EntryId::at)
            .collect()
    }

    /// Whether a pfile's entries are paused.
    pub fn paused(&self, id: EntryId) -> bool {
        self.watches[id.index()].paused
    }

    /// Whether state worth saving changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Every member's tgid.
    pub fn member_tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.members.keys().copied()
    }

    /// What a scan needs to know of the members.
    pub fn known(&self) -> Known {
        self.members
            .iter()
            .map(|(tgid, m)| {
                let known = KnownMember {
                    start_ticks: m.start_ticks,
                    comm: m.comm,
                    entry: m.entry,
                    exit_watched: m.exit_watched,
                };
                (*tgid, known)
            })
            .collect()
    }

    /// The earliest time something waits for: a phase deadline, a member
    /// whose exit event is overdue, a pidfile to read again. `None`: only
    /// inputs wake the monitor.
    pub fn next_deadline(&self, now: Time) -> Option<Time> {
        let phases = self.waiting.iter().filter_map(|id| {
            let w = &self.watches[id.index()];
            if w.backoff_held() {
                // The next attempt waits for the last one's command, or
                // for the dead instance's reaping: inputs say when.
                return None;
            }
            w.state.phase.deadline(&self.config[id.index()])
        });
        let missed = self.missed.values().map(|(_, until)| *until);
        let pidfile = self
            .waiting
            .iter()
            .any(|id| matches!(self.config[id.index()].rule, Rule::Pidfile(_)))
            .then(|| now + PIDFILE_POLL);
        let probes = self.probed.iter().filter_map(|id| {
            let w = &self.watches[id.index()];
            (w.state.phase == Phase::Up && !w.paused && !w.probe.in_flight)
                .then_some(w.probe.next_at)
                .flatten()
        });
        let catch_up = (self.catch_up.iter())
            .filter(|(_, id)| self.watches[id.index()].state.phase != Phase::Up)
            .map(|(asked, _)| *asked + CATCH_UP);
        phases
            .chain(missed)
            .chain(pidfile)
            .chain(probes)
            .chain(catch_up)
            .chain(self.group_deadlines())
            .min()
    }

    /// What the entry's recent failures have in common, if they are two or more.
    pub fn crash_loop(&self, id: EntryId, now: Time) -> Option<crash_loop::CrashLoop> {
        let w = self.watches.get(id.index())?;
        w.failures.classify(self.config[id.index()].grace, now)
    }

    /// Why instance `pid` of the entry died, if the kernel said.
    pub fn cause(&self, id: EntryId, pid: u32) -> Option<&Cause> {
        self.watches.get(id.index())?.cause(pid)
    }

    /// Why the source cannot tell who killed a process, if it cannot.
    pub fn cause_unknown(&self) -> Option<&str> {
        self.cause_unknown.as_deref()
    }
}
