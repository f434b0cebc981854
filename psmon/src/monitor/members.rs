//! Membership: which processes belong to which entry, which of them are
//! instances under the entry's rule, and what is remembered of those gone.

use serde::{Deserialize, Serialize};

use super::{Came, Effect, EntryId, MAX_GONE, Monitor, Notice};
use crate::{
    clock::Time,
    config::{Match, Owner, Rule},
    event::ExitStatus,
    facts::Seen,
    policy::{self, Phase},
};

/// A process the monitor tracks because it matches an entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Member {
    pub(super) entry: EntryId,
    pub(super) start_ticks: u64,
    pub(super) comm: [u8; 16],
    pub(super) ppid: u32,
    /// Effective uid when it was matched (a forked worker: its parent's).
    #[serde(default)]
    pub(super) uid: u32,
    /// Forked (at any depth) by another of the entry's processes: not an
    /// instance under [`Rule::Lineage`], orphaned or not, unless its
    /// parent daemonized (see [`Monitor::hand_over`]).
    #[serde(default)]
    pub(super) worker: bool,
    /// An instance under the entry's rule (see [`Monitor::recount`]).
    pub(super) counts: bool,
    pub(super) added: Time,
    /// A pidfd watches its exit: scans need not confirm it.
    pub(super) exit_watched: bool,
}

impl Monitor {
    /// Keeps at most [`MAX_GONE`] remembered exits, the newest.
    pub(super) fn cap_gone(&mut self) {
        if self.gone.len() <= MAX_GONE {
            return;
        }
        let mut at: Vec<Time> = self.gone.values().map(|(_, t)| *t).collect();
        let cut = at.len() - MAX_GONE / 2;
        at.select_nth_unstable(cut);
        let oldest_kept = at[cut];
        self.gone.retain(|_, (_, t)| *t >= oldest_kept);
    }

    /// Whether this process's exit has been applied already.
    pub(super) fn is_gone(&self, seen: &Seen) -> bool {
        self.gone
            .get(&seen.tgid)
            .is_some_and(|(start, _)| *start == seen.start_ticks)
    }

    /// Whether a matching process running as `uid` may be one of the
    /// entry's (see [`Owner`]). With a learned owner, a process exec'd
    /// while psmon restarts the entry (none of its instances running) may
    /// run as another user: the one psmon started; it is learned anew.
    pub(super) fn admits(&self, id: EntryId, uid: u32, came: Came) -> bool {
        let i = id.index();
        match self.config[i].owner {
            _ if uid == 0 => true,
            Owner::Any => true,
            Owner::Uid(owner) => owner == uid,
            Owner::Learned => {
                let w = &self.watches[i];
                w.owner.is_none_or(|o| o == uid)
                    || (came == Came::Exec && w.state.phase == Phase::Restarting && w.running == 0)
            }
        }
    }

    pub(super) fn add(
        &mut self,
        entry: EntryId,
        seen: Seen,
        worker: bool,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let tgid = seen.tgid;
        let w = &mut self.watches[entry.index()];
        if self.config[entry.index()].owner == Owner::Learned
            && (w.owner.is_none() || (w.running == 0 && seen.uid != 0))
        {
            w.owner = Some(seen.uid);
        }
        let member = Member {
            entry,
            start_ticks: seen.start_ticks,
            comm: seen.comm,
            ppid: seen.ppid,
            uid: seen.uid,
            worker,
            counts: false,
            added: now,
            exit_watched: self.pidfds,
        };
        if let Some(old) = self.members.insert(tgid, member) {
            self.watches[old.entry.index()].members.remove(&tgid);
            if old.exit_watched {
                out.push(Effect::UnwatchExit { tgid });
            }
        }
        self.missed.remove(&tgid);
        self.watches[entry.index()].members.insert(tgid);
        out.push(Effect::FilterTgid { tgid, watch: true });
        if self.pidfds {
            out.push(Effect::WatchExit {
                tgid,
                start: seen.start_ticks,
            });
        }
        if let Rule::Pidfile(path) = &self.config[entry.index()].rule {
            // The new process may be the one the daemon writes there.
            out.push(Effect::ReadPidfile {
                entry,
                path: path.clone(),
            });
        }
    }

    /// Stops tracking `tgid`: its exit watch, its kernel-filter key (the
    /// kernel forgets an exited tgid itself; one that exec'd another
    /// program or stopped matching must stop passing), its membership.
    pub(super) fn untrack(&mut self, tgid: u32, out: &mut Vec<Effect>) -> Option<Member> {
        let m = self.members.remove(&tgid)?;
        self.causes.remove(&tgid);
        if m.exit_watched {
            out.push(Effect::UnwatchExit { tgid });
        }
        out.push(Effect::FilterTgid { tgid, watch: false });
        self.watches[m.entry.index()].members.remove(&tgid);
        Some(m)
    }

    /// Forgets member `tgid`, gone with `status`, and tells the policy.
    pub(super) fn remove(
        &mut self,
        tgid: u32,
        status: ExitStatus,
        why: &'static str,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let cause = self.causes.remove(&tgid);
        let Some(m) = self.untrack(tgid, out) else {
            return;
        };
        out.push(Effect::Notice(Notice::Gone { tgid, why }));
        if let Some(cause) = cause.filter(|c| c.explains(status)) {
            self.watches[m.entry.index()].last_cause = Some(Box::new((tgid, cause)));
        }
        self.gone.insert(tgid, (m.start_ticks, now));
        if self.gone.len() > MAX_GONE {
            self.cap_gone();
        }
        let id = m.entry;
        let i = id.index();
        self.hand_over(tgid, &m, status, now);
        if let Rule::Pidfile(path) = &self.config[i].rule {
            out.push(Effect::ReadPidfile {
                entry: id,
                path: path.clone(),
            });
        }
        let before = self.watches[i].running;
        let (running, _) = self.recount(id);
        let by_cmdline = matches!(self.config[i].matcher, Match::Cmdline(_));
        if m.counts && by_cmdline && running >= self.config[i].min && running > 0 {
            // Others keep it up only if they still carry the command line.
            self.watches[i].held_exit = Some((tgid, status));
            out.push(Effect::Recheck {
                entry: id,
                tgids: self.watches[i].members.iter().copied().collect(),
            });
        } else if m.counts {
            self.step(
                id,
                policy::Observed::Exited {
                    pid: tgid,
                    status,
                    running,
                },
                now,
                out,
            );
            if running >= self.config[i].min && running > 0 {
                // Another took over (a daemon's child): it is the main
                // instance now, the pid reported Up.
                self.step_running(id, now, out);
            }
        } else if running != before {
            self.step_running(id, now, out);
        }
    }

    /// Whether member `tgid` is an instance started a moment ago (within
    /// the hand-over window, see [`Monitor::hand_over`]), not a worker.
    pub(super) fn in_transit(&self, tgid: u32, now: Time) -> bool {
        self.members
            .get(&tgid)
            .is_some_and(|m| !m.worker && m.counts && self.just_started(m, now))
    }

    /// Whether member `m` was seen within its entry's hand-over window:
    /// `start_secs`, at least a second.
    pub(super) fn just_started(&self, m: &Member, now: Time) -> bool {
        let window = self.config[m.entry.index()]
            .start_secs
            .max(crate::config::Entry::DEFAULT_START_SECS);
        now.saturating_duration_since(m.added) <= window
    }

    /// Member `tgid` (`m`) is gone with `status`: its member children are
    /// its parent's now (lineage is kept across orphaning), and if it was
    /// an instance that daemonized (exited 0, or with a status unknown,
    /// within `start_secs` of being seen) they take over as instances.
    pub(super) fn hand_over(&mut self, tgid: u32, m: &Member, status: ExitStatus, now: Time) {
        // Unknown: a process that lived a moment may be reaped before its
        // status is read (a restart command's own process, exec'd by sh).
        let daemonized = !m.worker
            && matches!(status, ExitStatus::Code(0) | ExitStatus::Unknown)
            && self.just_started(m, now);
        for other in &self.watches[m.entry.index()].members {
            if let Some(child) = self.members.get_mut(other)
                && child.ppid == tgid
            {
                child.ppid = m.ppid;
                if daemonized {
                    child.worker = false;
                }
            }
        }
    }

    /// Decides which members of the entry are its instances under its
    /// rule; returns how many there are and the main (oldest) one.
    pub(super) fn recount(&mut self, id: EntryId) -> (u32, Option<u32>) {
        let i = id.index();
        let w = &self.watches[i];
        let rule = &self.config[i].rule;
        let pidfile_pid = w.pidfile.flatten();
        let decided: Vec<(u32, bool, u64)> = w
            .members
            .iter()
            .filter_map(|tgid| {
                let m = self.members.get(tgid)?;
                let is_member = |pid| w.members.contains(&pid);
                let counts = rule.counts(*tgid, m.ppid, m.worker, is_member, pidfile_pid);
                Some((*tgid, counts, m.start_ticks))
            })
            .collect();
        let mut running = 0;
        let mut main: Option<(u64, u32)> = None;
        for (tgid, counts, start) in decided {
            if let Some(m) = self.members.get_mut(&tgid) {
                m.counts = counts;
            }
            if counts {
                running += 1;
                if main.is_none_or(|m| (start, tgid) < m) {
                    main = Some((start, tgid));
                }
            }
        }
        // Written only when it changed: a write copies an entry a saved
        // snapshot still shares (see `snapshot`).
        if self.watches[i].running != running {
            self.watches[i].running = running;
        }
        (running, main.map(|(_, tgid)| tgid))
    }

    /// The entry's instances: (tgid, start ticks).
    pub(super) fn instances(&self, id: EntryId) -> Vec<(u32, u64)> {
        self.watches[id.index()]
            .members
            .iter()
            .filter_map(|tgid| self.members.get(tgid).map(|m| (*tgid, m)))
            .filter(|(_, m)| m.counts)
            .map(|(tgid, m)| (tgid, m.start_ticks))
            .collect()
    }

    /// The entry's main instance, its oldest: (tgid, start ticks).
    pub fn main_instance(&self, id: EntryId) -> Option<(u32, u64)> {
        self.watches[id.index()]
            .members
            .iter()
            .filter_map(|tgid| {
                self.members
                    .get(tgid)
                    .map(|m| (m.start_ticks, *tgid, m.counts))
            })
            .filter(|(_, _, counts)| *counts)
            .min()
            .map(|(start, tgid, _)| (tgid, start))
    }
}
