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

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Time,
    config::{Config, ConfigErrors, Entry, Match, Owner, Probe, Rule},
    event::ExitStatus,
    facts::{Cause, CommandOutcome, Ending, Known, KnownMember, Seen, SwitchRequest},
    policy::{self, Action, EntryState, Phase, SetPidFail},
};

mod failover;
mod group;
#[cfg(test)]
mod tests;

pub use failover::LeftConstraint;

use group::{GroupConf, GroupWatch, Said};
pub use group::{GroupEvent, GroupStatus, StartFailure, Why as GroupWhy};

/// How often an entry with a pidfile has it re-read while its restarted
/// process is expected: daemons write it a moment after they start.
pub const PIDFILE_POLL: Duration = Duration::from_millis(50);

/// How long an instance seen gone without its exit event waits for it
/// before it is declared gone: events can trail a scan or a pidfd, and the
/// event carries the exit status the others cannot know.
pub const MISSED_GRACE: Duration = Duration::from_millis(300);

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

/// An entry: its place in the configuration's order (pfiles by name, then
/// lines). A reload renumbers entries; [`Monitor::generation`] tells ids of
/// different configurations apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(pub u32);

impl EntryId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    Restart,
    Failover,
}

/// What happened, as the shell learnt it.
#[derive(Debug)]
pub enum Input {
    /// A member forked `child`, which belongs to the same entry.
    Forked { entry: EntryId, child: Seen },
    /// Process `tgid` exec'd; `matched` is what it matches now, if anything.
    Execd {
        tgid: u32,
        matched: Option<(EntryId, Seen)>,
    },
    /// An exit event: the process's last thread ended. `start` (clock
    /// ticks) when the source knew it.
    Exited {
        tgid: u32,
        start: Option<u64>,
        status: ExitStatus,
    },
    /// A pidfd said process (tgid, start) exited; `zombie` is its status
    /// when it was read from the zombie before it was reaped.
    ExitSeen {
        tgid: u32,
        start: u64,
        zombie: Option<ExitStatus>,
    },
    /// The source missed events.
    Lost { count: Option<u64> },
    /// A reconciliation scan begun at `started` found these processes,
    /// `found[i]` for entry `i`; reading `/proc` took `took`.
    Scanned {
        started: Time,
        took: Duration,
        found: Vec<Vec<Seen>>,
    },
    /// What entry's pidfile names now.
    Pidfile { entry: EntryId, pid: Option<u32> },
    /// The entry's dead instance is reaped (or waited for long enough);
    /// `stopped`: the last attempt's leftovers in this process group were
    /// stopped.
    Reaped { path: PathBuf, stopped: Option<u32> },
    /// These members of a command-line entry no longer match it.
    Rechecked { entry: EntryId, stale: Vec<u32> },
    /// What saved members ([`Effect::Verify`]) match now: each tgid with
    /// its entry and identity, or `None`.
    Verified {
        found: Vec<(u32, Option<(EntryId, Seen)>)>,
    },
    /// A restart or failover command for the entry of `path` finished.
    CommandDone {
        path: PathBuf,
        job: Job,
        outcome: CommandOutcome,
    },
    /// Time passed: a deadline from [`Monitor::next_deadline`] is reached.
    Tick,
    /// A valid new configuration.
    Reload(Box<Config>),
    /// A broken one: the old one stays.
    ReloadFailed(ConfigErrors),
    /// An event source is open. Its exit events may trail an exit by up to
    /// `exit_lag` (a polling source's interval).
    SourceOpened {
        name: String,
        kernel_filter: bool,
        exit_lag: Duration,
        /// Why it cannot tell who killed a process (`None`: it can).
        cause_unknown: Option<String>,
    },
    /// The source stopped; the shell reopens it.
    SourceFailed(String),
    /// An operator's `pause`: the pfile's entries are neither restarted
    /// nor reported Down until `resume`.
    Pause { pfile: String },
    /// An operator's `resume`: the pfile's entries are looked at afresh.
    Resume { pfile: String },
    /// A recovery drill starts on the entry: the restart its kill brings
    /// does not count against the retry budget.
    Drill { entry: EntryId },
    /// The drill is over, whatever came of it.
    DrillEnd { entry: EntryId },
    /// An operator's request was carried out (it is only said).
    Operator { what: &'static str, pfile: String },
    /// A restart or failover command for the entry of `path` started, in
    /// process group `pgid` (remembered: a psmon that restarts meanwhile
    /// waits for it rather than start another).
    CommandStarted { path: PathBuf, job: Job, pgid: u32 },
    /// A signal that may end process `tgid` was generated, or the OOM
    /// killer chose it: the cause of its death, if it dies of it.
    Signalled { tgid: u32, cause: Cause },
    /// A process of the entry of `path` spoke the sd_notify protocol on
    /// its socket (the shell made sure `pid` is one of the entry's).
    Notified {
        path: PathBuf,
        pid: u32,
        ready: bool,
        watchdog: bool,
    },
    /// A hang probe of the entry's process `pid` answered in the time given,
    /// or did not (why).
    Probed {
        entry: EntryId,
        pid: u32,
        result: Result<Duration, String>,
    },
    /// A cluster driver's failover request for the entry of `path` ended.
    Switched {
        path: PathBuf,
        outcome: crate::facts::SwitchOutcome,
    },
    /// An operator cleared the constraints failover left on these resources.
    FailoverCleared { resources: Vec<String> },
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Notice(Notice),
    /// Run a restart or failover command.
    Run(Run),
    /// Send a failover request to a cluster driver; answered by
    /// [`Input::Switched`].
    Switch {
        entry: EntryId,
        path: PathBuf,
        request: SwitchRequest,
    },
    /// Watch for the exit of (tgid, start) (a pidfd); answered by
    /// [`Input::ExitSeen`], at once when the process is already gone.
    WatchExit {
        tgid: u32,
        start: u64,
    },
    UnwatchExit {
        tgid: u32,
    },
    /// Let events of this process through the kernel filter, or stop.
    FilterTgid {
        tgid: u32,
        watch: bool,
    },
    /// An attempt failed: wait until `tgids` (the instances that died) are
    /// reaped (at most [`REAP_WAIT`]) and nothing the last restart command
    /// (process group `pgid`) left is running — what it left once it has
    /// finished is stopped (SIGTERM, SIGKILL after [`LEFTOVER_GRACE`]), so
    /// the next attempt never runs beside it. Answered by [`Input::Reaped`].
    AwaitReaped {
        path: PathBuf,
        tgids: Vec<u32>,
        pgid: Option<u32>,
    },
    /// Answered by [`Input::Pidfile`].
    ReadPidfile {
        entry: EntryId,
        path: PathBuf,
    },
    /// Which of these members still match the entry's command line;
    /// answered by [`Input::Rechecked`].
    Recheck {
        entry: EntryId,
        tgids: Vec<u32>,
    },
    /// Run a reconciliation scan soon, answered by [`Input::Scanned`].
    Scan,
    /// Classify these members afresh (taken over from saved state, which
    /// is trusted for nothing); answered by [`Input::Verified`].
    Verify {
        tgids: Vec<u32>,
    },
    /// Ask process `pid` whether it answers; answered by [`Input::Probed`]
    /// within the probe's timeout.
    Probe {
        entry: EntryId,
        pid: u32,
        probe: Probe,
    },
    /// Kill a hung process: SIGTERM, then SIGKILL after `grace` if the
    /// same process (tgid, start) still lives.
    Kill {
        tgid: u32,
        start: u64,
        grace: Duration,
    },
    /// A restart command a previous psmon started may still run in
    /// process group `pgid` (its leader's pid): answer
    /// [`Input::CommandDone`] once the leader has ended, without running it
    /// again; still running `timeout` after `since` (when the restart
    /// began), its group is killed, as psmon kills a command it started.
    AwaitCommand {
        path: PathBuf,
        pgid: u32,
        since: Time,
        timeout: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub entry: EntryId,
    pub path: PathBuf,
    pub job: Job,
    pub command: String,
    /// psenv's variables, then the PSMON_* details.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Something to tell the operator. The wording is [`crate::report`]'s.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// What a failed restart attempt left in its process group was
    /// stopped before the next attempt.
    LeftoversStopped {
        entry: EntryId,
        pgid: u32,
    },
    /// A restart decision about an entry; `running` instances now.
    Policy {
        entry: EntryId,
        action: Action,
        running: u32,
    },
    /// Failover was due, but there is no command to send it with.
    SwitchNotSent {
        entry: EntryId,
    },
    /// A cluster driver's failover request ended: the resource runs
    /// elsewhere (`ok`), or why not; for the entry's group, if it has one.
    Switched {
        entry: EntryId,
        group: Option<String>,
        ok: bool,
        said: String,
        elapsed: Duration,
    },
    CommandDone {
        entry: EntryId,
        job: Job,
        ok: bool,
        ending: Ending,
        elapsed: Duration,
        output: String,
    },
    Reloaded {
        entries: usize,
    },
    ReloadRefused(Vec<String>),
    /// An operator's request, in padmin's words: `stop`, `start`, `reload`.
    Operator {
        what: &'static str,
        pfile: String,
    },
    /// A probe answered, but slower than its `warn`.
    ProbeSlow {
        entry: EntryId,
        pid: u32,
        took: Duration,
    },
    /// The process gave no good answer, `failures` times in a row: it is
    /// killed and handled as a death.
    Hung {
        entry: EntryId,
        pid: u32,
        timeout: Duration,
        why: String,
    },
    SourceOpened {
        name: String,
        kernel_filter: bool,
    },
    SourceFailed(String),
    EventsLost {
        count: Option<u64>,
    },
    Scanned {
        matched: usize,
        took: Duration,
    },
    /// A restart group's step (`group` indexes the configuration's groups),
    /// `at` this long after its restart began.
    Group {
        group: usize,
        event: GroupEvent,
        at: Duration,
    },
    /// A member is no longer tracked (debug).
    Gone {
        tgid: u32,
        why: &'static str,
    },
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
    last_down: Option<(Option<u32>, ExitStatus)>,
    /// What the pidfile said when last read; `None` before the first read.
    pidfile: Option<Option<u32>>,
    /// An instance exit held until its entry's command line was checked
    /// again (a forked worker that retitled must not keep it up).
    held_exit: Option<(u32, ExitStatus)>,
    /// Paused by an operator.
    #[serde(default)]
    paused: bool,
    /// When the phase last changed.
    #[serde(default)]
    since: Time,
    /// Why the last restart attempt failed.
    #[serde(default)]
    last_failure: Option<SetPidFail>,
    /// The failover command was run for the budget spent now.
    #[serde(default)]
    failover_sent: bool,
    /// A drill is on: its restart is not counted.
    #[serde(default)]
    drill: bool,
    /// The process group of the restart command running now.
    #[serde(default)]
    command_pgid: Option<u32>,
    /// A restart command was started and has not finished: no other
    /// attempt starts until it has (two `postfix start` at once).
    #[serde(default)]
    restart_running: bool,
    /// An attempt failed while the instance that died may still be a
    /// zombie (a daemon whose pidfile names it refuses to start): the next
    /// waits until it is reaped ([`Effect::AwaitReaped`]).
    #[serde(skip)]
    reaping: bool,
    /// The process group of the last restart command (running or not).
    #[serde(default)]
    last_pgid: Option<u32>,
    /// The hang probe's bookkeeping.
    #[serde(default)]
    probe: ProbeState,
    /// Its restart group has it (see [`group`]): no policy input.
    #[serde(default)]
    held: bool,
    /// The uid its instances run as, learned (see [`Owner::Learned`]).
    #[serde(default)]
    owner: Option<u32>,
    /// Why the last instance that went down died: (its pid, the cause).
    #[serde(default)]
    last_cause: Option<(u32, Cause)>,
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
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ProbeState {
    /// When the next probe is due (while Up).
    next_at: Option<Time>,
    in_flight: bool,
    /// Failed answers in a row.
    failures: u32,
    /// The instance killed because it hung: its Down says so.
    hung: Option<u32>,
    /// A notify probe's keep-alives are awaited: psmon started the process
    /// (it has the socket), or it spoke already.
    #[serde(default)]
    armed: bool,
    /// `READY=1` came since the process was last started.
    #[serde(default)]
    ready_seen: bool,
    /// The last probe's answer: how long it took, or why it failed.
    #[serde(default)]
    last: Option<Result<Duration, String>>,
}

/// When a probe is first due after the entry came Up: after its interval;
/// a notify probe's first keep-alive within its timeout (or start_grace,
/// if longer), and only when the process can send one.
fn first_probe_at(probe: &Probe, armed: bool, now: Time) -> Option<Time> {
    match probe.kind {
        crate::config::ProbeKind::Notify if !armed => None,
        crate::config::ProbeKind::Notify => Some(now + probe.timeout.max(probe.start_grace)),
        _ => Some(now + probe.interval),
    }
}

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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    entry: EntryId,
    start_ticks: u64,
    comm: [u8; 16],
    ppid: u32,
    /// Effective uid when it was matched (a forked worker: its parent's).
    #[serde(default)]
    uid: u32,
    /// Forked (at any depth) by another of the entry's processes: not an
    /// instance under [`Rule::Lineage`], orphaned or not, unless its
    /// parent daemonized (see [`Monitor::hand_over`]).
    #[serde(default)]
    worker: bool,
    /// An instance under the entry's rule (see [`Monitor::recount`]).
    counts: bool,
    added: Time,
    /// A pidfd watches its exit: scans need not confirm it.
    exit_watched: bool,
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
    config: Vec<Entry>,
    #[serde(skip)]
    settings: Settings,
    #[serde(skip)]
    failover: failover::Settings,
    /// Location constraints failover requests left in the cluster.
    #[serde(default)]
    constraints: Vec<LeftConstraint>,
    watches: Vec<Watch>,
    members: HashMap<u32, Member>,
    /// tgid → (start ticks, when its exit was applied).
    gone: HashMap<u32, (u64, Time)>,
    /// Members seen gone without their exit event: tgid → (start ticks,
    /// until when the event is awaited).
    missed: HashMap<u32, (u64, Time)>,
    /// Entries whose phase waits for a time.
    waiting: BTreeSet<EntryId>,
    /// Whether exits are watched by pidfds (Linux 5.3).
    pidfds: bool,
    /// How far the source's exit events may trail an exit.
    exit_lag: Duration,
    generation: u64,
    /// The last signal generated for each member that may end it.
    #[serde(default)]
    causes: HashMap<u32, Cause>,
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
    /// Something worth saving changed since [`Monitor::take_dirty`].
    #[serde(skip)]
    dirty: bool,
    /// Entries (by path) with a notify probe whose socket could not be
    /// opened: what psmon starts gets no channel, so is never judged.
    #[serde(skip)]
    unheard: std::collections::HashSet<PathBuf>,
}

impl ProbeState {
    /// psmon runs the entry's restart command: a notify process will have
    /// the socket (when it was `heard`: opened), and must say READY=1 anew.
    fn started_by_us(&mut self, heard: bool) {
        self.armed = heard;
        self.ready_seen = false;
    }
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
                            .entry(tgid)
                            .or_insert((start, now + MISSED_GRACE));
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
                if let Some(i) = self.config.iter().position(|e| e.path == path) {
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
                    && let Some(i) = self.config.iter().position(|e| e.path == path)
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
                    entry: m.entry.index(),
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
        let probes = self.watches.iter().filter_map(|w| {
            (w.state.phase == Phase::Up && !w.paused && !w.probe.in_flight)
                .then_some(w.probe.next_at)
                .flatten()
        });
        phases
            .chain(missed)
            .chain(pidfile)
            .chain(probes)
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
        for (tgid, m) in &self.members {
            if !seen.contains(tgid) && m.added < started && !m.exit_watched {
                self.missed
                    .entry(*tgid)
                    .or_insert((m.start_ticks, now + grace));
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

    fn on_command_done(
        &mut self,
        path: PathBuf,
        job: Job,
        outcome: CommandOutcome,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        // By path: a reload may have moved or removed the entry meanwhile.
        let Some(i) = self.config.iter().position(|e| e.path == path) else {
            return;
        };
        let id = EntryId(i as u32);
        if job == Job::Restart {
            self.watches[i].command_pgid = None;
            self.watches[i].restart_running = false;
        }
        let ok = outcome.ok();
        out.push(Effect::Notice(Notice::CommandDone {
            entry: id,
            job,
            ok,
            ending: outcome.ending,
            elapsed: outcome.elapsed,
            output: outcome.output_tail,
        }));
        if job == Job::Restart {
            self.step(id, policy::Input::RestartDone { ok }, now, out);
            if ok && self.watches[i].state.phase != Phase::Up {
                // Catch the new process even if its exec event was filtered or lost.
                out.push(Effect::Scan);
            }
            self.attempt_unblocked(id, now, out);
        }
    }

    /// A restart command finished, or a dead instance was reaped: an
    /// attempt may have waited for it.
    fn attempt_unblocked(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let w = &self.watches[id.index()];
        if !w.attempt_blocked() && matches!(w.state.phase, Phase::Backoff { .. }) {
            self.step(id, policy::Input::Tick, now, out);
        }
        self.group_unblocked(id, now, out);
    }

    fn on_probed(
        &mut self,
        id: EntryId,
        pid: u32,
        result: Result<Duration, String>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let Some(w) = self.watches.get_mut(id.index()) else {
            return;
        };
        w.probe.in_flight = false;
        let Some(probe) = &self.config[id.index()].probe else {
            return;
        };
        w.probe.last = Some(result.clone());
        let current = w.state.phase == Phase::Up
            && !w.paused
            && self.members.get(&pid).is_some_and(|m| m.entry == id);
        if !current {
            return; // it died, was paused or restarted meanwhile
        }
        match result {
            Ok(took) => {
                w.probe.failures = 0;
                if took > probe.warn {
                    out.push(Effect::Notice(Notice::ProbeSlow {
                        entry: id,
                        pid,
                        took,
                    }));
                }
                self.group_probe_ok(id, now, out);
            }
            // Still starting up: not judged yet (its group, waiting for it
            // to be ready, asks again soon).
            Err(_) if now < w.since + probe.start_grace => {
                if self.awaits_ready(id) {
                    let w = &mut self.watches[id.index()];
                    w.probe.next_at = Some(now + group::READY_POLL);
                }
            }
            Err(why) => {
                w.probe.failures += 1;
                if w.probe.failures >= probe.failures {
                    self.hang(id, pid, why, out);
                }
            }
        }
    }

    /// The entry's process `pid` hangs: say so and kill it; its death is
    /// handled as any other.
    fn hang(&mut self, id: EntryId, pid: u32, why: String, out: &mut Vec<Effect>) {
        let Some(probe) = &self.config[id.index()].probe else {
            return;
        };
        let w = &mut self.watches[id.index()];
        w.probe.failures = 0;
        w.probe.hung = Some(pid);
        w.probe.next_at = None;
        out.push(Effect::Notice(Notice::Hung {
            entry: id,
            pid,
            timeout: probe.timeout,
            why,
        }));
        if let Some(m) = self.members.get(&pid) {
            out.push(Effect::Kill {
                tgid: pid,
                start: m.start_ticks,
                grace: probe.kill_grace,
            });
        }
    }

    fn on_notified(
        &mut self,
        path: PathBuf,
        pid: u32,
        ready: bool,
        watchdog: bool,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let Some(i) = self.config.iter().position(|e| e.path == path) else {
            return;
        };
        let id = EntryId(i as u32);
        let Some(probe) = &self.config[i].probe else {
            return;
        };
        if self.member_entry(pid) != Some(id) {
            return;
        }
        let w = &mut self.watches[i];
        w.probe.armed = true;
        w.probe.ready_seen |= ready;
        if w.state.phase == Phase::Up && !w.paused && (watchdog || ready) {
            w.probe.next_at = Some(now + probe.timeout);
        }
        if ready {
            self.group_probe_ok(id, now, out);
        }
    }

    /// Probes that are due: the entry Up, not paused, none in flight.
    fn probe_due(&mut self, now: Time, out: &mut Vec<Effect>) {
        for i in 0..self.watches.len() {
            let w = &self.watches[i];
            let Some(probe) = &self.config[i].probe else {
                continue;
            };
            let due = w.probe.next_at.is_some_and(|at| now >= at);
            if !due || w.probe.in_flight || w.paused || w.state.phase != Phase::Up {
                continue;
            }
            if probe.kind == crate::config::ProbeKind::Notify {
                // No keep-alive within its timeout.
                if let Some((pid, _)) = self.main_instance(EntryId(i as u32)) {
                    let why = "no WATCHDOG=1 keep-alive".to_string();
                    self.hang(EntryId(i as u32), pid, why, out);
                }
                continue;
            }
            let main = self.main_instance(EntryId(i as u32));
            let w = &mut self.watches[i];
            w.probe.next_at = Some(now + probe.interval);
            if let Some((pid, _)) = main {
                w.probe.in_flight = true;
                out.push(Effect::Probe {
                    entry: EntryId(i as u32),
                    pid,
                    probe: probe.clone(),
                });
            }
        }
    }

    /// The entry's instances: (tgid, start ticks).
    fn instances(&self, id: EntryId) -> Vec<(u32, u64)> {
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

    /// The entry's last probe answer: how long it took, or why it failed.
    pub fn last_probe(&self, id: EntryId) -> Option<&Result<Duration, String>> {
        self.watches
            .get(id.index())
            .and_then(|w| w.probe.last.as_ref())
    }

    /// Why instance `pid` of the entry died, if the kernel said.
    pub fn cause(&self, id: EntryId, pid: u32) -> Option<&Cause> {
        self.watches
            .get(id.index())
            .and_then(|w| w.last_cause.as_ref())
            .filter(|(p, _)| *p == pid)
            .map(|(_, c)| c)
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

    /// The instance killed because it hung, if any (its Down says so).
    pub fn hung(&self, id: EntryId) -> Option<u32> {
        self.watches.get(id.index()).and_then(|w| w.probe.hung)
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.probe_due(now, out);
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
    fn apply_config(&mut self, config: Config, out: &mut Vec<Effect>) {
        let mut old: HashMap<PathBuf, (EntryId, Watch)> = self
            .watches
            .drain(..)
            .enumerate()
            .map(|(i, w)| (w.path.clone(), (EntryId(i as u32), w)))
            .collect();
        let mut remap: HashMap<EntryId, EntryId> = HashMap::new();
        self.config.clear();
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
                },
            };
            self.watches.push(w);
            self.config.push(entry.clone());
        }
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
        self.settings = Settings {
            env: config.env.vars.clone(),
        };
        self.failover = failover::Settings::new(&config);
        self.apply_groups(&config);
        self.generation += 1;
        out.push(Effect::Scan);
    }

    // --- Members -------------------------------------------------------

    /// Keeps at most [`MAX_GONE`] remembered exits, the newest.
    fn cap_gone(&mut self) {
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
    fn is_gone(&self, seen: &Seen) -> bool {
        self.gone
            .get(&seen.tgid)
            .is_some_and(|(start, _)| *start == seen.start_ticks)
    }

    /// Whether a matching process running as `uid` may be one of the
    /// entry's (see [`Owner`]). With a learned owner, a process exec'd
    /// while psmon restarts the entry (none of its instances running) may
    /// run as another user: the one psmon started; it is learned anew.
    fn admits(&self, id: EntryId, uid: u32, came: Came) -> bool {
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

    fn add(&mut self, entry: EntryId, seen: Seen, worker: bool, now: Time, out: &mut Vec<Effect>) {
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
    fn untrack(&mut self, tgid: u32, out: &mut Vec<Effect>) -> Option<Member> {
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
    fn remove(
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
            self.watches[m.entry.index()].last_cause = Some((tgid, cause));
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
                policy::Input::Exited {
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
    fn in_transit(&self, tgid: u32, now: Time) -> bool {
        self.members
            .get(&tgid)
            .is_some_and(|m| !m.worker && m.counts && self.just_started(m, now))
    }

    /// Whether member `m` was seen within its entry's hand-over window:
    /// `start_secs`, at least a second.
    fn just_started(&self, m: &Member, now: Time) -> bool {
        let window = self.config[m.entry.index()]
            .start_secs
            .max(crate::config::Entry::DEFAULT_START_SECS);
        now.saturating_duration_since(m.added) <= window
    }

    /// Member `tgid` (`m`) is gone with `status`: its member children are
    /// its parent's now (lineage is kept across orphaning), and if it was
    /// an instance that daemonized (exited 0, or with a status unknown,
    /// within `start_secs` of being seen) they take over as instances.
    fn hand_over(&mut self, tgid: u32, m: &Member, status: ExitStatus, now: Time) {
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
    fn recount(&mut self, id: EntryId) -> (u32, Option<u32>) {
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
        self.watches[i].running = running;
        (running, main.map(|(_, tgid)| tgid))
    }

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
        let before = self.watches[i].state.clone();
        let actions = policy::step(&self.config[i], &mut self.watches[i].state, input, now);
        if self.watches[i].state != before {
            self.dirty = true;
            let w = &mut self.watches[i];
            if w.state.phase != before.phase {
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
            Action::Restart { .. } | Action::RestartUncounted { .. } if w.drill => {
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
            Action::Restart { .. } | Action::RestartUncounted { .. } => {
                let attempt = match action {
                    Action::Restart { attempt } => attempt,
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

    /// Running `command` for the entry, within its restart_timeout.
    /// The entry's restart command, to run now: no other attempt starts
    /// until it has finished.
    fn run_restart(&mut self, id: EntryId, command: String, env: Vec<(String, String)>) -> Effect {
        self.watches[id.index()].restart_running = true;
        self.run(id, Job::Restart, command, env)
    }

    fn run(&self, id: EntryId, job: Job, command: String, env: Vec<(String, String)>) -> Effect {
        let entry = &self.config[id.index()];
        Effect::Run(Run {
            entry: id,
            path: entry.path.clone(),
            job,
            command,
            env,
            timeout: entry.restart_timeout,
        })
    }

    /// psenv's variables and what is known of the entry and its last death.
    fn base_env(&self, id: EntryId) -> Vec<(String, String)> {
        let w = &self.watches[id.index()];
        let mut env = self.settings.env.clone();
        env.push(("PSMON_PFILE".into(), w.pfile.clone()));
        env.push(("PSMON_PATH".into(), w.path.display().to_string()));
        let (pid, status) = w.last_down.unwrap_or((None, ExitStatus::Unknown));
        env.push((
            "PSMON_PID".into(),
            pid.map(|p| p.to_string()).unwrap_or_default(),
        ));
        let (code, signal) = match status {
            ExitStatus::Code(c) => (c.to_string(), String::new()),
            ExitStatus::Signal { signal, .. } => (String::new(), signal.to_string()),
            ExitStatus::Unknown => (String::new(), String::new()),
        };
        env.push(("PSMON_EXIT_CODE".into(), code));
        env.push(("PSMON_SIGNAL".into(), signal));
        let cause = pid.and_then(|p| w.last_cause.as_ref().filter(|(cp, _)| *cp == p));
        let sender = cause.and_then(|(_, c)| c.sender());
        env.push((
            "PSMON_CAUSE".into(),
            cause.map(|(_, c)| c.describe(status)).unwrap_or_default(),
        ));
        env.push((
            "PSMON_KILLER_PID".into(),
            sender.map(|s| s.pid.to_string()).unwrap_or_default(),
        ));
        env.push((
            "PSMON_KILLER_COMM".into(),
            sender.map(|s| s.comm.clone()).unwrap_or_default(),
        ));
        env.push((
            "PSMON_KILLER_UID".into(),
            sender.map(|s| s.uid.to_string()).unwrap_or_default(),
        ));
        env
    }
}
