//! What goes into the monitor ([`Input`]: what happened, as the shell
//! learnt it) and what comes out ([`Effect`]: what the shell is to do, and
//! [`Notice`]: what the operator is to be told, worded by `report`).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{EntryId, GroupEvent};
use crate::{
    clock::Time,
    config::{Config, ConfigErrors, Probe},
    event::ExitStatus,
    facts::{Cause, CommandOutcome, Ending, GroupId, Seen, SwitchOutcome, SwitchRequest},
    policy::Action,
};

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
    /// Time passed: a deadline from [`Monitor::next_deadline`](super::Monitor::next_deadline) is reached.
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
        outcome: SwitchOutcome,
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
        /// The entry's path: its answer finds the entry by it (a reload
        /// meanwhile renumbers entries).
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
    /// reaped (at most [`REAP_WAIT`](super::REAP_WAIT)) and nothing the last restart command
    /// (process group `pgid`) left is running — what it left once it has
    /// finished is stopped (SIGTERM, SIGKILL after [`LEFTOVER_GRACE`](super::LEFTOVER_GRACE)), so
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
        group: GroupId,
        event: GroupEvent,
        at: Duration,
    },
    /// A member is no longer tracked (debug).
    Gone {
        tgid: u32,
        why: &'static str,
    },
}
