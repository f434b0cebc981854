//! What the shell found out, applied: a process's exec classified, a
//! scan's findings, saved members verified after a restart, members whose
//! command line was checked again.

use std::{collections::BTreeSet, time::Duration};

use super::{Came, Effect, GONE_MEMORY, MISSED_GRACE, Monitor, Notice};
use crate::{
    clock::Time,
    config::{Match, Rule},
    event::ExitStatus,
    facts::{EntryId, Seen},
    policy::{self, Phase},
};

impl Monitor {
    pub(super) fn on_exec(
        &mut self,
        tgid: u32,
        matched: Option<(EntryId, Seen)>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        // A classification can come back after the process's exit was
        // applied (it ran on another thread): a dead process stays gone.
        let matched = matched.filter(|(id, seen)| {
            id.index() < self.watches.len()
                && !self.is_gone(seen)
                && self.admits(*id, seen.uid, Came::Exec)
        });
        let before = self.member_entry(tgid);
        if before.is_some() && matched.is_none() && self.in_transit(tgid, now) {
            // Just started, it exec'd a program that is not the entry's: a
            // wrapper that execs its service (`exec python3 -m …`), or a
            // daemon that reads its configuration through a helper that
            // execs it back (dovecot → doveconf → dovecot). Still the
            // instance started, followed until it exits.
            return;
        }
        if let Some(b) = before
            && matched.is_none_or(|(i, _)| i != b)
        {
            // It exec'd another program: that member is gone.
            self.remove(
                tgid,
                ExitStatus::Unknown,
                "exec'd another program",
                now,
                out,
            );
        }
        if let Some((i, seen)) = matched
            && before.is_none_or(|b| b != i)
        {
            // Exec'd by a child of one of the entry's processes (sshd
            // re-executes itself for each connection): a worker.
            let worker = self.member_entry(seen.ppid) == Some(i);
            self.add(i, seen, worker, now, out);
            self.step_running(i, now, out);
        }
    }

    pub(super) fn on_scan(
        &mut self,
        started: Time,
        took: Duration,
        found: Vec<Vec<Seen>>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let matched = found.iter().map(Vec::len).sum();
        out.push(Effect::Notice(Notice::Scanned { matched, took }));
        // A scan begun after a catch-up was asked has looked already.
        self.catch_up.retain(|(asked, _)| *asked > started);
        self.gone
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < GONE_MEMORY);
        let mut seen = std::collections::HashSet::new();
        let mut touched = BTreeSet::new();
        // Additions first, so a replaced member never looks like a shortage.
        for (i, list) in found.iter().enumerate().take(self.watches.len()) {
            let id = EntryId::at(i);
            let tgids: std::collections::HashSet<u32> = list.iter().map(|s| s.tgid).collect();
            for s in list {
                seen.insert(s.tgid);
                let known = self.members.get(&s.tgid).map(|m| (m.start_ticks, m.entry));
                if known.is_some_and(|(start, entry)| start == s.start_ticks && entry == id) {
                    continue;
                }
                if self
                    .gone
                    .get(&s.tgid)
                    .is_some_and(|(start, at)| *start == s.start_ticks && *at > started)
                {
                    continue; // exited after the scan saw it
                }
                if !self.admits(id, s.uid, Came::Scan) {
                    continue;
                }
                if known.is_some() {
                    self.remove(s.tgid, ExitStatus::Unknown, "pid reused", now, out);
                }
                // Its parent is another of them: a worker (one orphaned
                // before psmon looked cannot be told from an instance).
                let worker = tgids.contains(&s.ppid) || self.member_entry(s.ppid) == Some(id);
                self.add(id, *s, worker, now, out);
                touched.insert(id);
            }
        }
        for i in 0..self.watches.len() {
            let id = EntryId::at(i);
            let entry = &self.config[i];
            // Rules that can change their mind without an event: a
            // rewritten pidfile, a retitled worker.
            match (&entry.rule, &entry.matcher) {
                (Rule::Pidfile(path), _) => out.push(Effect::ReadPidfile {
                    entry: id,
                    path: path.clone(),
                }),
                (_, Match::Cmdline(_)) if !self.watches[i].members.is_empty() => {
                    out.push(Effect::Recheck {
                        entry: id,
                        tgids: self.watches[i].members.iter().copied().collect(),
                    })
                }
                (Rule::MainOnly, _) => self.step_running(id, now, out),
                _ if touched.contains(&id) => self.step_running(id, now, out),
                _ => {}
            }
        }
        // Members the scan did not see and that are older than it: gone,
        // unless their exit event is still on its way (see MISSED_GRACE).
        let grace = MISSED_GRACE + self.exit_lag;
        for (tgid, m) in self.members.iter() {
            if !seen.contains(tgid) && m.added < started && !m.exit_watched {
                self.missed
                    .insert_if_absent(*tgid, (m.start_ticks, now + grace));
            }
        }
        for i in 0..self.watches.len() {
            if self.watches[i].state.phase == Phase::Unknown {
                self.step_running(EntryId::at(i), now, out);
            }
        }
    }

    /// Saved members that are not what they were said to be (another
    /// program now, another process with that pid, another user's) are no
    /// instances: removed, as an exit (the entry may be Down).
    pub(super) fn on_verified(
        &mut self,
        found: Vec<(u32, Option<(EntryId, Seen)>)>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        for (tgid, matched) in found {
            let Some(m) = self.members.get(&tgid) else {
                continue;
            };
            let (entry, start) = (m.entry, m.start_ticks);
            let still = matched.is_some_and(|(id, seen)| {
                id == entry && seen.start_ticks == start && self.admits(id, seen.uid, Came::Scan)
            });
            if !still {
                self.remove(
                    tgid,
                    ExitStatus::Unknown,
                    "no longer matches its entry",
                    now,
                    out,
                );
            }
        }
    }

    pub(super) fn on_rechecked(
        &mut self,
        entry: EntryId,
        stale: Vec<u32>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        if entry.index() >= self.watches.len() {
            return;
        }
        for tgid in stale {
            if self.member_entry(tgid) == Some(entry) && self.untrack(tgid, out).is_some() {
                out.push(Effect::Notice(Notice::Gone {
                    tgid,
                    why: "no longer matches its entry's command line",
                }));
            }
        }
        match self.watches[entry.index()].held_exit.take() {
            Some((pid, status)) => {
                let (running, _) = self.recount(entry);
                self.step(
                    entry,
                    policy::Observed::Exited {
                        pid,
                        status,
                        running,
                    },
                    now,
                    out,
                );
            }
            None => self.step_running(entry, now, out),
        }
    }
}
