//! The monitor: psmon's state machine. It owns the watched entries, the
//! processes that belong to them and everything pending, and turns inputs
//! (a process started, exec'd or exited, a scan's findings, a command's
//! outcome, time passing, a reload) into effects for the shell around it
//! ([`crate::supervisor`]) to carry out: run a command, watch a process's
//! exit, add a key to the kernel filter, read a pidfile, say something.
//!
//! It is pure and synchronous: no tokio, no `/proc`, no clock. The time
//! comes with each input, and facts that need I/O (what a pidfile says,
//! whether a worker still carries its command line) are asked for as
//! effects and come back as inputs. Its state is one serialisable value.
//! [`policy::step`] stays the restart decision for one entry; this module
//! decides what it is fed.
//!
//! # Vocabulary
//! - **process**: a thread group, known by its tgid and its start time (a
//!   reused pid is another process). [`crate::event::Process`] is one as an
//!   event saw it, [`Seen`] one as a scan or a classification saw it.
//! - **entry**: one watched path with its policy, known by an [`EntryId`].
//! - **member**: a process the monitor tracks because it matches an entry.
//! - **instance**: a member that counts under the entry's [`Rule`]: every
//!   member, the main ones (parent not a member), or the one a pidfile names.
//!
//! # Where things are
//! This file holds the monitor's state, its start (new, restore) and the
//! routing of inputs, the scan and exec findings, ticks, reloads and the
//! policy's steps. Beside it: `io` (inputs, effects, notices), `members`
//! (membership and instances), `probes` (hang probes), `commands` (restart
//! and failover commands and their environment), `status` (the status
//! read-model), `snapshot` (what is saved, taken without a copy), `group` (restart groups), `failover` (switch requests).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Time,
    config::{Config, Entry, Match, Rule},
    event::ExitStatus,
    facts::{Cause, EntryId, Known, KnownMember, Seen},
    policy::{self, Action, EntryState, Phase, SetPidFail},
};

mod by_pid;
mod commands;
pub mod crash_loop;
mod failover;
mod group;
mod io;
mod members;
mod probes;
mod snapshot;
mod status;
#[cfg(test)]
mod tests;

use by_pid::ByPid;
pub use failover::LeftConstraint;
pub use io::{Effect, Input, Job, Notice, Run};
use members::Member;
use probes::{ProbeState, first_probe_at};
pub use snapshot::{Changes, Form, Snapshot, SnapshotWriter};
pub use status::{EntryStatus, StatusModel};

use group::{GroupConf, GroupWatch, Said};
pub use group::{GroupEvent, GroupStatus, GroupWhy, StartFailure};

/// How often an entry with a pidfile has it re-read while its restarted
/// process is expected: daemons write it a moment after they start.
pub const PIDFILE_POLL: Duration = Duration::from_millis(50);

/// How long an instance seen gone without its exit event waits for it
/// before it is declared gone: events can trail a scan or a pidfd, and the
/// event carries the exit status the others cannot know.
pub const MISSED_GRACE: Duration = Duration::from_millis(300);

/// How long after its restart command ended a new process not yet seen
/// is looked for by a scan. Its exec event normally comes first (a daemon
/// that double-forks execs a moment after the command returns); the scan
/// is for an exec the source lost or filtered, and reads all of /proc,
/// which costs 20–30 ms of a CPU on a host of 10,000 processes: it must
/// not follow every restart.
pub const CATCH_UP: Duration = Duration::from_millis(250);

/// How long an exit is remembered, so that a scan begun before it does
/// not bring the process back.
const GONE_MEMORY: Duration = Duration::from_secs(120);

/// At most this many exits are remembered (a churning host exits
/// thousands of members a second; pid_max may be four million).
const MAX_GONE: usize = 65_536;

/// How a process came to be classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Came {
    Exec,
    Scan,
}

/// How long the next attempt waits at most for a dead instance's reaping.
pub const REAP_WAIT: Duration = Duration::from_secs(10);

/// What a failed attempt's command left running gets this long after
/// SIGTERM before SIGKILL.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// What the monitor keeps of each entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Watch {
    pfile: String,
    path: PathBuf,
    state: EntryState,
    members: BTreeSet<u32>,
    /// How many members count under the rule.
    running: u32,
    /// The last instance that went down, for the failover environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_down: Option<(Option<u32>, ExitStatus)>,
    /// What the pidfile said when last read; `None` before the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pidfile: Option<Option<u32>>,
    /// An instance exit held until its entry's command line was checked
    /// again (a forked worker that retitled must not keep it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_exit: Option<(u32, ExitStatus)>,
    /// Paused by an operator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    paused: bool,
    /// When the phase last changed.
    #[serde(default)]
    since: Time,
    /// Why the last restart attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure: Option<SetPidFail>,
    /// The failover command was run for the budget spent now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    failover_sent: bool,
    /// A drill is on: its restart is not counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    drill: bool,
    /// The process group of the restart command running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_pgid: Option<u32>,
    /// A restart command was started and has not finished: no other
    /// attempt starts until it has (two `postfix start` at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    restart_running: bool,
    /// An attempt failed while the instance that died may still be a
    /// zombie (a daemon whose pidfile names it refuses to start): the next
    /// waits until it is reaped ([`Effect::AwaitReaped`]).
    #[serde(skip)]
    reaping: bool,
    /// The process group of the last restart command (running or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_pgid: Option<u32>,
    /// The hang probe's bookkeeping.
    #[serde(default, skip_serializing_if = "ProbeState::is_idle")]
    probe: ProbeState,
    /// Its restart group has it (see [`group`]): no policy input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    held: bool,
    /// The uid its instances run as, learned (see [`Owner::Learned`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<u32>,
    /// Why the last instance that went down died: (its pid, the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_cause: Option<Box<(u32, Cause)>>,
    /// Recent deaths and failed attempts, for what they have in common.
    #[serde(default, skip_serializing_if = "crash_loop::Failures::is_empty")]
    failures: crash_loop::Failures,
}

impl Watch {
    /// The next attempt waits: the last one's restart command runs, or the
    /// instance that died is not yet reaped.
    fn attempt_blocked(&self) -> bool {
        self.restart_running || self.reaping
    }

    /// Backing off, and past the back-off only once an input says the
    /// attempt is no longer blocked (no deadline, no tick moves it).
    fn backoff_held(&self) -> bool {
        self.attempt_blocked() && matches!(self.state.phase, Phase::Backoff { .. })
    }

    /// Why instance `pid`, the last of the entry's to die, died, if the
    /// kernel said.
    fn cause(&self, pid: u32) -> Option<&Cause> {
        self.last_cause
            .as_deref()
            .filter(|(p, _)| *p == pid)
            .map(|(_, c)| c)
    }
}

/// Settings taken from the configuration that are not per entry.
#[derive(Clone, Debug, Default)]
struct Settings {
    env: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Monitor {
    /// The entries' configuration, in [`EntryId`] order; it comes from the
    /// files, not from saved state.
    #[serde(skip)]
    config: Arc<Vec<Entry>>,
    #[serde(skip)]
    settings: Settings,
    #[serde(skip)]
    failover: failover::Settings,
    /// Location constraints failover requests left in the cluster.
    #[serde(default)]
    constraints: Vec<LeftConstraint>,
    watches: snapshot::Watches,
    members: ByPid<Member>,
    /// tgid → (start ticks, when its exit was applied).
    gone: ByPid<(u64, Time)>,
    /// Members seen gone without their exit event: tgid → (start ticks,
    /// until when the event is awaited).
    missed: ByPid<(u64, Time)>,
    /// Entries whose phase waits for a time.
    waiting: BTreeSet<EntryId>,
    /// Whether exits are watched by pidfds (Linux 5.3).
    pidfds: bool,
    /// How far the source's exit events may trail an exit.
    exit_lag: Duration,
    generation: u64,
    /// The last signal generated for each member that may end it.
    #[serde(default)]
    causes: ByPid<Cause>,
    /// Why the source cannot tell who killed a process.
    #[serde(skip)]
    cause_unknown: Option<String>,
    /// An open source tells who killed a process.
    #[serde(skip)]
    sees_causes: bool,
    /// The restart groups' state, in configuration order.
    #[serde(default)]
    groups: Vec<GroupWatch>,
    #[serde(skip)]
    group_conf: Vec<GroupConf>,
    /// Entry index → its group.
    #[serde(skip)]
    group_of: Vec<Option<usize>>,
    /// The entries with a hang probe: only they have probes due (10,000
    /// entries without one are not looked at for each deadline).
    #[serde(skip)]
    probed: Vec<EntryId>,
    /// Each entry by its path (answers name their entry by path).
    #[serde(skip)]
    by_path: HashMap<PathBuf, EntryId>,
    /// Entries whose restart command ended before their new process was
    /// seen, with when it ended: a scan looks for the process
    /// [`CATCH_UP`] later if it is still not seen.
    #[serde(skip)]
    catch_up: Vec<(Time, EntryId)>,
    /// Something worth saving changed since [`Monitor::take_dirty`].
    #[serde(skip)]
    dirty: bool,
    /// Entries (by path) with a notify probe whose socket could not be
    /// opened: what psmon starts gets no channel, so is never judged.
    #[serde(skip)]
    unheard: std::collections::HashSet<PathBuf>,
}

impl Monitor {
    /// A monitor for `config`; `pidfds` when the kernel has them. The
    /// returned effects start it: a scan, and the pidfiles read.
    pub fn new(config: Config, pidfds: bool) -> (Monitor, Vec<Effect>) {
        let mut m = Monitor {
            pidfds,
            ..Monitor::default()
        };
        let mut out = Vec::new();
        m.apply_config(config, &mut out);
        (m, out)
    }

    /// A monitor carried over from one a previous psmon saved, under the
    /// configuration of now: entries whose path is still configured keep
    /// their state, budgets, pauses and members; the members are watched
    /// again (one that died meanwhile is found dead at once, or by the first
    /// scan), and a restart command that was running is waited for.
    pub fn restore(mut saved: Monitor, config: Config, pidfds: bool) -> (Monitor, Vec<Effect>) {
        let mut out = Vec::new();
        saved.pidfds = pidfds;
        saved.apply_config(config, &mut out);
        saved.cap_gone();
        if !saved.members.is_empty() {
            out.push(Effect::Verify {
                tgids: saved.members.keys().copied().collect(),
            });
        }
        for (tgid, m) in saved.members.iter_mut() {
            m.exit_watched = pidfds;
            out.push(Effect::FilterTgid {
                tgid: *tgid,
                watch: true,
            });
            if pidfds {
                out.push(Effect::WatchExit {
                    tgid: *tgid,
                    start: m.start_ticks,
                });
            }
        }
        for i in 0..saved.watches.len() {
            // Only a command psmon can still await is still running.
            let w = &mut saved.watches[i];
            w.restart_running = w.command_pgid.is_some() && w.state.phase == Phase::Restarting;
            let w = &saved.watches[i];
            if w.state.phase != Phase::Restarting {
                continue;
            }
            match w.command_pgid {
                Some(pgid) => out.push(Effect::AwaitCommand {
                    path: w.path.clone(),
                    pgid,
                    since: w.since,
                    timeout: saved.config[i].restart_timeout,
                }),
                // Decided, but psmon died before the command started.
                None => {
                    let now = w.since;
                    let input = policy::Input::RestartDone { ok: false };
                    saved.step(EntryId(i as u32), input, now, &mut out);
                }
            }
        }
        (saved, out)
    }

    pub fn handle(&mut self, input: Input, now: Time) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Forked { entry, mut child } => {
                if let Some(parent) = self.members.get(&child.ppid) {
                    child.uid = parent.uid;
                }
                let known = self.member_entry(child.tgid) == Some(entry);
                if entry.index() < self.watches.len() && !self.is_gone(&child) && !known {
                    self.add(entry, child, true, now, &mut out);
                    self.step_running(entry, now, &mut out);
                }
            }
            Input::Execd { tgid, matched } => self.on_exec(tgid, matched, now, &mut out),
            Input::Exited {
                tgid,
                start,
                status,
            } => {
                let Some(m) = self.members.get(&tgid) else {
                    return out;
                };
                // Same pid, other start time: not the process tracked.
                if start.is_some_and(|s| s != m.start_ticks) {
                    return out;
                }
                self.missed.remove(&tgid);
                self.remove(tgid, status, "exit event", now, &mut out);
            }
            Input::ExitSeen {
                tgid,
                start,
                zombie,
            } => {
                if self
                    .members
                    .get(&tgid)
                    .is_none_or(|m| m.start_ticks != start)
                {
                    return out;
                }
                // Killed, and the source tells senders but this one's
                // signal is not in yet: its exit event, right behind it in
                // the kernel's order, brings both.
                let zombie = zombie.filter(|status| !self.awaits_cause(tgid, *status));
                match zombie {
                    Some(status) => {
                        self.missed.remove(&tgid);
                        self.remove(
                            tgid,
                            status,
                            "exited (pidfd), status from its zombie",
                            now,
                            &mut out,
                        );
                    }
                    // Reaped already: its exit event, with the status,
                    // normally arrives at the same moment; wait a little.
                    None => {
                        self.missed
                            .insert_if_absent(tgid, (start, now + MISSED_GRACE));
                    }
                }
            }
            Input::Lost { count } => {
                out.push(Effect::Notice(Notice::EventsLost { count }));
                out.push(Effect::Scan);
            }
            Input::Scanned {
                started,
                took,
                found,
            } => self.on_scan(started, took, found, now, &mut out),
            Input::Reaped { path, stopped } => {
                if let Some(i) = self.by_path.get(&path).map(|id| id.index()) {
                    self.watches[i].reaping = false;
                    if let Some(pgid) = stopped {
                        out.push(Effect::Notice(Notice::LeftoversStopped {
                            entry: EntryId(i as u32),
                            pgid,
                        }));
                    }
                    self.attempt_unblocked(EntryId(i as u32), now, &mut out);
                }
            }
            Input::Pidfile { entry, pid } => {
                if let Some(w) = self.watches.get_mut(entry.index()) {
                    w.pidfile = Some(pid);
                    self.step_running(entry, now, &mut out);
                }
            }
            Input::Rechecked { entry, stale } => self.on_rechecked(entry, stale, now, &mut out),
            Input::Verified { found } => self.on_verified(found, now, &mut out),
            Input::CommandDone { path, job, outcome } => {
                self.on_command_done(path, job, outcome, now, &mut out)
            }
            Input::Tick => self.on_tick(now, &mut out),
            Input::Pause { pfile } => {
                for i in self.entries_of(&pfile) {
                    self.watches[i.index()].paused = true;
                    self.waiting.remove(&i);
                }
                self.dirty = true;
                out.push(Effect::Notice(Notice::Operator {
                    what: "stop",
                    pfile,
                }));
            }
            Input::Resume { pfile } => {
                out.push(Effect::Notice(Notice::Operator {
                    what: "start",
                    pfile: pfile.clone(),
                }));
                for id in self.entries_of(&pfile) {
                    let w = &mut self.watches[id.index()];
                    w.paused = false;
                    // Looked at afresh: whatever happened meanwhile is
                    // handled now (a death while paused is a Down).
                    w.state.phase = Phase::Unknown;
                    w.since = now;
                    self.step_running(id, now, &mut out);
                }
                self.dirty = true;
            }
            Input::Operator { what, pfile } => {
                out.push(Effect::Notice(Notice::Operator { what, pfile }));
            }
            Input::Drill { entry } => {
                if let Some(w) = self.watches.get_mut(entry.index()) {
                    w.drill = true;
                }
            }
            Input::DrillEnd { entry } => {
                if let Some(w) = self.watches.get_mut(entry.index()) {
                    w.drill = false;
                }
            }
            Input::Probed { entry, pid, result } => {
                self.on_probed(entry, pid, result, now, &mut out)
            }
            Input::Notified {
                path,
                pid,
                ready,
                watchdog,
            } => self.on_notified(path, pid, ready, watchdog, now, &mut out),
            Input::Signalled { tgid, cause } => {
                if self.members.contains_key(&tgid) {
                    self.causes.insert(tgid, cause);
                }
            }
            Input::Switched { path, outcome } => self.on_switched(&path, outcome, &mut out),
            Input::FailoverCleared { resources } => self.on_failover_cleared(&resources),
            Input::CommandStarted { path, job, pgid } => {
                if job == Job::Restart
                    && let Some(i) = self.by_path.get(&path).map(|id| id.index())
                {
                    self.watches[i].command_pgid = Some(pgid);
                    self.watches[i].last_pgid = Some(pgid);
                    self.dirty = true;
                }
            }
            Input::Reload(config) => {
                self.apply_config(*config, &mut out);
                // Held exits wait for answers asked under the old numbering.
                for i in 0..self.watches.len() {
                    let id = EntryId(i as u32);
                    // Looked at first: taking copies an entry a saved
                    // snapshot still shares.
                    if self.watches[i].held_exit.is_none() {
                        continue;
                    }
                    if let Some((pid, status)) = self.watches[i].held_exit.take() {
                        let (running, _) = self.recount(id);
                        self.step(
                            id,
                            policy::Input::Exited {
                                pid,
                                status,
                                running,
                            },
                            now,
                            &mut out,
                        );
                    }
                }
                out.push(Effect::Notice(Notice::Reloaded {
                    entries: self.watches.len(),
                }));
            }
            Input::ReloadFailed(errors) => {
                let lines = errors.0.iter().map(ToString::to_string).collect();
                out.push(Effect::Notice(Notice::ReloadRefused(lines)));
            }
            Input::SourceOpened {
                name,
                kernel_filter,
                exit_lag,
                cause_unknown,
            } => {
                self.sees_causes = cause_unknown.is_none();
                self.cause_unknown = cause_unknown;
                out.push(Effect::Notice(Notice::SourceOpened {
                    name,
                    kernel_filter,
                }));
                self.exit_lag = exit_lag;
                out.push(Effect::Scan);
            }
            Input::SourceFailed(why) => {
                out.push(Effect::Notice(Notice::SourceFailed(why)));
                out.push(Effect::Scan);
            }
        }
        out
    }

    // --- Queries -------------------------------------------------------

    /// Changes with every reload: [`EntryId`]s of one generation mean
    /// nothing in another.
    /// The entries (by path) whose notify socket could not be opened.
    pub fn set_unheard(&mut self, paths: std::collections::HashSet<PathBuf>) {
        self.unheard = paths;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.config.iter()
    }

    pub fn entry_count(&self) -> usize {
        self.config.len()
    }

    pub fn entry(&self, id: EntryId) -> &Entry {
        &self.config[id.index()]
    }

    pub fn pfile(&self, id: EntryId) -> &str {
        &self.watches[id.index()].pfile
    }

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
            .map(|i| EntryId(i as u32))
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

    // --- Handlers ------------------------------------------------------

    fn on_exec(
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

    fn on_scan(
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
            let id = EntryId(i as u32);
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
            let id = EntryId(i as u32);
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
                self.step_running(EntryId(i as u32), now, out);
            }
        }
    }

    /// Saved members that are not what they were said to be (another
    /// program now, another process with that pid, another user's) are no
    /// instances: removed, as an exit (the entry may be Down).
    fn on_verified(
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

    fn on_rechecked(&mut self, entry: EntryId, stale: Vec<u32>, now: Time, out: &mut Vec<Effect>) {
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
                    policy::Input::Exited {
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

    /// What the entry's recent failures have in common, if they are two or more.
    pub fn crash_loop(&self, id: EntryId, now: Time) -> Option<crash_loop::CrashLoop> {
        let w = self.watches.get(id.index())?;
        w.failures.classify(self.config[id.index()].grace, now)
    }

    /// Why instance `pid` of the entry died, if the kernel said.
    pub fn cause(&self, id: EntryId, pid: u32) -> Option<&Cause> {
        self.watches.get(id.index())?.cause(pid)
    }

    /// Whether a death of `tgid` by a signal should wait for its cause: the
    /// source sees senders and none explaining `status` has come.
    fn awaits_cause(&self, tgid: u32, status: ExitStatus) -> bool {
        matches!(status, ExitStatus::Signal { .. })
            && self.sees_causes
            && !self.causes.get(&tgid).is_some_and(|c| c.explains(status))
    }

    /// Why the source cannot tell who killed a process, if it cannot.
    pub fn cause_unknown(&self) -> Option<&str> {
        self.cause_unknown.as_deref()
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.probe_due(now, out);
        let (due, later) = std::mem::take(&mut self.catch_up)
            .into_iter()
            .partition::<Vec<_>, _>(|(asked, _)| now >= *asked + CATCH_UP);
        self.catch_up = later;
        if due
            .iter()
            .any(|(_, id)| self.watches[id.index()].state.phase != Phase::Up)
        {
            out.push(Effect::Scan);
        }
        self.group_tick(now, out);
        let overdue: Vec<(u32, u64)> = self
            .missed
            .iter()
            .filter(|(_, (_, until))| now >= *until)
            .map(|(tgid, (start, _))| (*tgid, *start))
            .collect();
        for (tgid, start) in overdue {
            self.missed.remove(&tgid);
            if self
                .members
                .get(&tgid)
                .is_some_and(|m| m.start_ticks == start)
            {
                self.remove(
                    tgid,
                    ExitStatus::Unknown,
                    "gone without an exit event",
                    now,
                    out,
                );
            }
        }
        let waiting: Vec<EntryId> = self.waiting.iter().copied().collect();
        for id in waiting {
            if let Rule::Pidfile(path) = &self.config[id.index()].rule {
                out.push(Effect::ReadPidfile {
                    entry: id,
                    path: path.clone(),
                });
            }
            // The count and main pid as they are now (a daemon that forked
            // and let its parent exit).
            self.step_running(id, now, out);
            if self.watches[id.index()].backoff_held() {
                continue;
            }
            self.step(id, policy::Input::Tick, now, out);
        }
    }

    /// Takes a new configuration: entries whose path is unchanged keep
    /// their state and members (nothing is restarted); others start fresh.
    fn apply_config(&mut self, mut config: Config, out: &mut Vec<Effect>) {
        let same_paths = config.entries().count() == self.watches.len()
            && config
                .entries()
                .zip(self.watches.iter())
                .all(|((_, e), w)| e.path == w.path);
        if same_paths {
            self.keep_entries(&mut config);
        } else {
            self.remap_entries(&config, out);
        }
        // Same paths, same index; but a monitor just read from saved state
        // has none yet.
        if !same_paths || self.by_path.is_empty() {
            // The first entry of a path, as a search from the start finds.
            self.by_path = (self.config.iter().enumerate().rev())
                .map(|(i, e)| (e.path.clone(), EntryId(i as u32)))
                .collect();
        }
        self.waiting = (0..self.watches.len())
            .map(|i| EntryId(i as u32))
            .filter(|id| {
                self.watches[id.index()]
                    .state
                    .phase
                    .deadline(&self.config[id.index()])
                    .is_some()
            })
            .collect();
        self.catch_up.clear();
        self.probed = (0..self.config.len())
            .filter(|i| self.config[*i].probe.is_some())
            .map(|i| EntryId(i as u32))
            .collect();
        self.settings = Settings {
            env: config.env.vars.clone(),
        };
        self.failover = failover::Settings::new(&config);
        self.apply_groups(&config);
        self.generation += 1;
        out.push(Effect::Scan);
    }

    /// The same paths in the same order (what a reload that changed an
    /// entry's settings, or nothing, brings): every entry keeps its place,
    /// its state and its members, and an entry whose pfile name did not
    /// change is not even copied (a save after the reload writes only what
    /// changed, not 10,000 entries). The entries are moved out of `config`,
    /// not cloned.
    fn keep_entries(&mut self, config: &mut Config) {
        let mut entries = Vec::with_capacity(self.watches.len());
        for pfile in &mut config.pfiles {
            for entry in std::mem::take(&mut pfile.entries) {
                let i = entries.len();
                if self.watches[i].pfile != pfile.name {
                    self.watches[i].pfile = pfile.name.clone();
                }
                entries.push(entry);
            }
        }
        self.config = Arc::new(entries);
    }

    /// Entries added, removed or moved: each keeps its state and members
    /// under its new place, by path.
    fn remap_entries(&mut self, config: &Config, out: &mut Vec<Effect>) {
        let mut old: HashMap<PathBuf, (EntryId, Watch)> = self
            .watches
            .take_all()
            .enumerate()
            .map(|(i, w)| (w.path.clone(), (EntryId(i as u32), w)))
            .collect();
        let mut remap: HashMap<EntryId, EntryId> = HashMap::new();
        let mut entries = Vec::with_capacity(config.entries().count());
        for (pfile, entry) in config.entries() {
            let id = EntryId(self.watches.len() as u32);
            let w = match old.remove(&entry.path) {
                Some((was, mut w)) => {
                    remap.insert(was, id);
                    w.pfile = pfile.name.clone();
                    w
                }
                None => Watch {
                    pfile: pfile.name.clone(),
                    path: entry.path.clone(),
                    state: EntryState::default(),
                    members: BTreeSet::new(),
                    running: 0,
                    last_down: None,
                    pidfile: None,
                    held_exit: None,
                    paused: false,
                    since: Time::default(),
                    last_failure: None,
                    failover_sent: false,
                    drill: false,
                    command_pgid: None,
                    restart_running: false,
                    reaping: false,
                    last_pgid: None,
                    probe: ProbeState::default(),
                    held: false,
                    owner: None,
                    last_cause: None,
                    failures: crash_loop::Failures::default(),
                },
            };
            self.watches.push(w);
            entries.push(entry.clone());
        }
        self.config = Arc::new(entries);
        let dropped: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, m)| !remap.contains_key(&m.entry))
            .map(|(tgid, _)| *tgid)
            .collect();
        for tgid in dropped {
            // No longer watched: stop waiting for its exit.
            if let Some(m) = self.members.remove(&tgid) {
                if m.exit_watched {
                    out.push(Effect::UnwatchExit { tgid });
                }
                out.push(Effect::FilterTgid { tgid, watch: false });
            }
            self.missed.remove(&tgid);
        }
        for m in self.members.values_mut() {
            m.entry = remap[&m.entry];
        }
        let members = &self.members;
        self.causes.retain(|tgid, _| members.contains_key(tgid));
    }

    // --- Members -------------------------------------------------------

    /// Tells the policy how many instances the entry has now. Not before
    /// an entry with a pidfile has had it read: until then nothing counts.
    fn step_running(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let i = id.index();
        if matches!(self.config[i].rule, Rule::Pidfile(_)) && self.watches[i].pidfile.is_none() {
            return;
        }
        let (running, pid) = self.recount(id);
        self.step(id, policy::Input::Running { running, pid }, now, out);
    }

    fn step(&mut self, id: EntryId, input: policy::Input, now: Time, out: &mut Vec<Effect>) {
        let i = id.index();
        if self.watches[i].paused {
            return;
        }
        if self.watches[i].held {
            self.group_poke(id, now, out);
            return;
        }
        // On a copy: most steps change nothing, and writing the entry
        // would copy one a saved snapshot still shares.
        let before = self.watches[i].state.clone();
        let mut state = before.clone();
        let actions = policy::step(&self.config[i], &mut state, input, now);
        self.note_failures(id, &before, &actions, now);
        if state != before {
            self.dirty = true;
            let w = &mut self.watches[i];
            w.state = state;
            if w.state.phase != before.phase {
                // Its process was seen, or its attempt ended: no scan
                // need look for it.
                self.catch_up.retain(|(_, entry)| *entry != id);
                let w = &mut self.watches[i];
                w.since = now;
                w.probe.failures = 0;
                w.probe.next_at = match (&self.config[i].probe, w.state.phase) {
                    (Some(probe), Phase::Up) => {
                        w.probe.hung = None;
                        first_probe_at(probe, w.probe.armed, now)
                    }
                    _ => None,
                };
            }
        }
        if self.watches[i]
            .state
            .phase
            .deadline(&self.config[i])
            .is_some()
        {
            self.waiting.insert(id);
        } else {
            self.waiting.remove(&id);
        }
        match self.group_of(id) {
            None => {
                for action in actions {
                    self.act(id, action, out);
                }
            }
            Some(g) => {
                let mut said = Said {
                    first_look: before.phase == Phase::Unknown,
                    ..Said::default()
                };
                for action in actions {
                    if said.take(&action) {
                        self.act(id, action, out);
                    }
                }
                let effects = self.group_heard(g, id, said, now);
                out.extend(effects);
            }
        }
    }

    /// Keeps what failed (a death, a failed attempt) for the crash-loop
    /// classification; a run that stayed up `healthy_secs` (or ten times
    /// `start_secs`, at least 10 s, when the entry does not forgive) ends
    /// the history before it.
    fn note_failures(&mut self, id: EntryId, before: &EntryState, actions: &[Action], now: Time) {
        use crash_loop::{Failed, failed};
        let a_failure = |a: &Action| {
            matches!(
                a,
                Action::ReportDown { .. } | Action::ReportSetPidFail { .. }
            )
        };
        if !actions.iter().any(a_failure)
            || actions
                .iter()
                .any(|a| matches!(a, Action::ReportStopped { .. }))
        {
            return;
        }
        let i = id.index();
        let entry = &self.config[i];
        let w = &mut self.watches[i];
        let cause_of = |pid: Option<u32>| w.cause(pid?);
        let hung = |pid: Option<u32>| pid.is_some() && w.probe.hung == pid;
        let mut noted = Vec::new();
        for action in actions {
            match *action {
                Action::ReportDown { pid, status } => {
                    let lived =
                        (before.phase == Phase::Up).then(|| now.saturating_duration_since(w.since));
                    let healthy = entry.healthy.unwrap_or(
                        entry.start_secs.max(std::time::Duration::from_secs(1))
                            * crate::config::Entry::HEALTHY_START_SECS,
                    );
                    if lived.is_some_and(|l| l >= healthy) {
                        noted.push(None);
                    }
                    noted.push(Some(failed(status, cause_of(pid), hung(pid), lived, false)));
                }
                Action::ReportSetPidFail { why } => noted.push(Some(match why {
                    SetPidFail::DiedEarly { pid, status, lived } => {
                        failed(status, cause_of(pid), hung(pid), Some(lived), true)
                    }
                    SetPidFail::CommandFailed => Failed::Command { started: false },
                    SetPidFail::NotStarted => Failed::Command { started: true },
                })),
                _ => {}
            }
        }
        for note in noted {
            match note {
                None => w.failures.clear(),
                Some(what) => w.failures.record(now, what),
            }
        }
    }

    fn act(&mut self, id: EntryId, action: Action, out: &mut Vec<Effect>) {
        let i = id.index();
        let w = &mut self.watches[i];
        match action {
            Action::ReportDown { pid, status } => w.last_down = Some((pid, status)),
            Action::ReportSetPidFail { why } => {
                w.last_failure = Some(why);
                let tgid = w.last_down.and_then(|(pid, _)| pid);
                if (tgid.is_some() || w.last_pgid.is_some()) && !w.reaping {
                    w.reaping = true;
                    out.push(Effect::AwaitReaped {
                        path: w.path.clone(),
                        tgids: tgid.into_iter().collect(),
                        pgid: w.last_pgid,
                    });
                }
            }
            Action::ReportUp { rearmed: true, .. } => w.failover_sent = false,
            _ => {}
        }
        let action = match action {
            Action::Restart { .. }
            | Action::RestartUncounted { .. }
            | Action::RestartSlowly { .. }
                if w.drill =>
            {
                // The drill's own kill: its restart is not counted.
                if matches!(action, Action::Restart { .. }) {
                    w.state.forget_last_attempt();
                }
                w.drill = false;
                Action::RestartUncounted {
                    why: policy::Uncounted::Drill,
                }
            }
            other => other,
        };
        let entry = &self.config[i];
        let notice = Effect::Notice(Notice::Policy {
            entry: id,
            action,
            running: self.watches[i].running,
        });
        match action {
            Action::Restart { .. }
            | Action::RestartUncounted { .. }
            | Action::RestartSlowly { .. } => {
                let attempt = match action {
                    Action::Restart { attempt } => attempt,
                    Action::RestartSlowly { attempt } => entry.retry + attempt,
                    _ => 0,
                };
                out.push(notice);
                if let Some(command) = entry.restart.clone() {
                    let heard = !self.unheard.contains(&self.watches[i].path);
                    self.watches[i].probe.started_by_us(heard);
                    let mut env = self.base_env(id);
                    env.push(("PSMON_ATTEMPT".into(), attempt.to_string()));
                    out.push(self.run_restart(id, command, env));
                }
            }
            Action::Failover => {
                let entry = &self.config[i];
                let mut env = self.base_env(id);
                let grace = entry
                    .grace
                    .map_or("ever".to_string(), |g| format!("{} s", g.as_secs()));
                env.push((
                    "PSMON_REASON".into(),
                    format!(
                        "retry over: {} restart attempts within {grace} did not keep {} up",
                        entry.retry,
                        entry.path.display()
                    ),
                ));
                let Some(run) = self.failover_run(id, None, env) else {
                    out.push(Effect::Notice(Notice::SwitchNotSent { entry: id }));
                    return;
                };
                out.push(notice);
                self.watches[i].failover_sent = true;
                out.push(run);
            }
            _ => out.push(notice),
        }
    }
}
