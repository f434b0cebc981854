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
//!   event saw it, [`Seen`](crate::facts::Seen) one as a scan or a classification saw it.
//! - **entry**: one watched path with its policy, known by an [`EntryId`].
//! - **member**: a process the monitor tracks because it matches an entry.
//! - **instance**: a member that counts under the entry's [`Rule`]: every
//!   member, the main ones (parent not a member), or the one a pidfile names.
//!
//! # Where things are
//! This file holds the monitor's state, its start (new, restore), the
//! routing of inputs and its ticks. Beside it: `io` (inputs, effects,
//! notices), `queries` (what the shell reads of it), `watch` (what is
//! kept of each entry), `findings`
//! (exec classifications and scan findings applied), `steps` (the
//! policy's steps and what its actions do), `reload` (a new configuration
//! taken), `members` (membership and instances), `probes` (hang probes),
//! `commands` (restart and failover commands and their environment),
//! `status` (the status read-model), `snapshot` (what is saved, taken
//! without a copy), `group` (restart groups), `failover` (switch requests).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Time,
    config::{Config, Entry, Rule},
    event::ExitStatus,
    facts::{Cause, EntryId, GroupId},
    policy::{self, Phase},
};

mod by_pid;
mod commands;
pub mod crash_loop;
mod failover;
mod findings;
mod group;
mod io;
mod members;
mod probes;
mod queries;
mod reload;
mod snapshot;
mod status;
mod steps;
#[cfg(test)]
mod tests;
mod watch;

use by_pid::ByPid;
pub use failover::LeftConstraint;
pub use io::{Effect, Input, Job, Notice, Run};
use members::Member;
use probes::{ProbeState, first_probe_at};
pub use snapshot::{Changes, Form, Snapshot, SnapshotWriter};
pub use status::{EntryStatus, StatusModel};
use watch::Watch;

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

/// Settings taken from the configuration that are not per entry.
#[derive(Clone, Debug, Default)]
struct Settings {
    env: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
/// The state machine: every entry's configuration, state and members,
/// the groups, and what is awaited. Inputs in ([`Monitor::handle`]),
/// effects out; no I/O, time passed in.
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
    group_of: Vec<Option<GroupId>>,
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
                    let input = policy::Observed::RestartDone { ok: false };
                    saved.step(EntryId::at(i), input, now, &mut out);
                }
            }
        }
        (saved, out)
    }

    /// Applies `input` at `now`: what the shell must do, in order.
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
                            entry: EntryId::at(i),
                            pgid,
                        }));
                    }
                    self.attempt_unblocked(EntryId::at(i), now, &mut out);
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
                    let id = EntryId::at(i);
                    // Looked at first: taking copies an entry a saved
                    // snapshot still shares.
                    if self.watches[i].held_exit.is_none() {
                        continue;
                    }
                    if let Some((pid, status)) = self.watches[i].held_exit.take() {
                        let (running, _) = self.recount(id);
                        self.step(
                            id,
                            policy::Observed::Exited {
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

    /// Whether a death of `tgid` by a signal should wait for its cause: the
    /// source sees senders and none explaining `status` has come.
    fn awaits_cause(&self, tgid: u32, status: ExitStatus) -> bool {
        matches!(status, ExitStatus::Signal { .. })
            && self.sees_causes
            && !self.causes.get(&tgid).is_some_and(|c| c.explains(status))
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
            self.step(id, policy::Observed::Tick, now, out);
        }
    }
}
