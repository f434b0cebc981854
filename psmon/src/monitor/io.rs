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

/// Which command an entry runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// Its restart command.
    Restart,
    /// Its failover command (`switch`, no cluster driver).
    Failover,
}

/// What happened, as the shell learnt it.
#[derive(Debug)]
pub enum Input {
    /// A member forked `child`, which belongs to the same entry.
    Forked {
        /// The member's entry.
        entry: EntryId,
        /// The child, as the fork showed it.
        child: Seen,
    },
    /// Process `tgid` exec'd; `matched` is what it matches now, if anything.
    Execd {
        /// The process (its thread group id).
        tgid: u32,
        /// The entry it matches now and how it was seen, if any.
        matched: Option<(EntryId, Seen)>,
    },
    /// An exit event: the process's last thread ended. `start` (clock
    /// ticks) when the source knew it.
    Exited {
        /// The process (its thread group id).
        tgid: u32,
        /// When it started (clock ticks), when the source knew.
        start: Option<u64>,
        /// How it ended.
        status: ExitStatus,
    },
    /// A pidfd said process (tgid, start) exited; `zombie` is its status
    /// when it was read from the zombie before it was reaped.
    ExitSeen {
        /// The process (its thread group id).
        tgid: u32,
        /// When it started, in clock ticks since boot.
        start: u64,
        /// Its status, when read from the zombie before it was reaped.
        zombie: Option<ExitStatus>,
    },
    /// The source missed events.
    Lost {
        /// How many, when the source can tell.
        count: Option<u64>,
    },
    /// A reconciliation scan begun at `started` found these processes,
    /// `found[i]` for entry `i`; reading `/proc` took `took`.
    Scanned {
        /// When the scan began.
        started: Time,
        /// How long reading /proc took.
        took: Duration,
        /// `found[i]`: the processes matching entry `i`.
        found: Vec<Vec<Seen>>,
    },
    /// What entry's pidfile names now.
    Pidfile {
        /// The entry.
        entry: EntryId,
        /// The pid it names, if it names one.
        pid: Option<u32>,
    },
    /// The entry's dead instance is reaped (or waited for long enough);
    /// `stopped`: the last attempt's leftovers in this process group were
    /// stopped.
    Reaped {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// The process group whose leftovers were stopped, if any.
        stopped: Option<u32>,
    },
    /// These members of a command-line entry no longer match it.
    Rechecked {
        /// The entry.
        entry: EntryId,
        /// The members that no longer match.
        stale: Vec<u32>,
    },
    /// What saved members ([`Effect::Verify`]) match now: each tgid with
    /// its entry and identity, or `None`.
    Verified {
        /// Each saved member's tgid, with its entry and identity now, or `None`.
        found: Vec<(u32, Option<(EntryId, Seen)>)>,
    },
    /// A restart or failover command for the entry of `path` finished.
    CommandDone {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// The restart command or the failover command.
        job: Job,
        /// How it ended, how long it took, what it wrote.
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
        /// The source's name.
        name: String,
        /// It filters in the kernel.
        kernel_filter: bool,
        /// How far its exit events may trail an exit.
        exit_lag: Duration,
        /// Why it cannot tell who killed a process (`None`: it can).
        cause_unknown: Option<String>,
    },
    /// The source stopped; the shell reopens it.
    SourceFailed(String),
    /// An operator's `pause`: the pfile's entries are neither restarted
    /// nor reported Down until `resume`.
    Pause {
        /// The pfile's name.
        pfile: String,
    },
    /// An operator's `resume`: the pfile's entries are looked at afresh.
    Resume {
        /// The pfile's name.
        pfile: String,
    },
    /// A recovery drill starts on the entry: the restart its kill brings
    /// does not count against the retry budget.
    Drill {
        /// The entry.
        entry: EntryId,
    },
    /// The drill is over, whatever came of it.
    DrillEnd {
        /// The entry.
        entry: EntryId,
    },
    /// An operator's request was carried out (it is only said).
    Operator {
        /// What was asked, in padmin's words.
        what: &'static str,
        /// The pfile's name.
        pfile: String,
    },
    /// A restart or failover command for the entry of `path` started, in
    /// process group `pgid` (remembered: a psmon that restarts meanwhile
    /// waits for it rather than start another).
    CommandStarted {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// The restart command or the failover command.
        job: Job,
        /// Its process group (the command's pid).
        pgid: u32,
    },
    /// A signal that may end process `tgid` was generated, or the OOM
    /// killer chose it: the cause of its death, if it dies of it.
    Signalled {
        /// The process (its thread group id).
        tgid: u32,
        /// The signal and who sent it, or the OOM killer.
        cause: Cause,
    },
    /// A process of the entry of `path` spoke the sd_notify protocol on
    /// its socket (the shell made sure `pid` is one of the entry's).
    Notified {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// The process that spoke (one of the entry's).
        pid: u32,
        /// It said `READY=1`.
        ready: bool,
        /// It said `WATCHDOG=1`.
        watchdog: bool,
    },
    /// A hang probe of the entry's process `pid` answered in the time given,
    /// or did not (why).
    Probed {
        /// The entry.
        entry: EntryId,
        /// The process.
        pid: u32,
        /// How long it took to answer, or why it gave no good answer.
        result: Result<Duration, String>,
    },
    /// A cluster driver's failover request for the entry of `path` ended.
    Switched {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// What the cluster said.
        outcome: SwitchOutcome,
    },
    /// An operator cleared the constraints failover left on these resources.
    FailoverCleared {
        /// The resources cleared.
        resources: Vec<String>,
    },
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Tell the operator.
    Notice(Notice),
    /// Run a restart or failover command.
    Run(Run),
    /// Send a failover request to a cluster driver; answered by
    /// [`Input::Switched`].
    Switch {
        /// The entry's path: its answer finds the entry by it (a reload
        /// meanwhile renumbers entries).
        path: PathBuf,
        /// What is asked of the cluster.
        request: SwitchRequest,
    },
    /// Watch for the exit of (tgid, start) (a pidfd); answered by
    /// [`Input::ExitSeen`], at once when the process is already gone.
    WatchExit {
        /// The process (its thread group id).
        tgid: u32,
        /// When it started, in clock ticks since boot.
        start: u64,
    },
    /// Stop watching the exit of `tgid` (it is no member now).
    UnwatchExit {
        /// The process (its thread group id).
        tgid: u32,
    },
    /// Let events of this process through the kernel filter, or stop.
    FilterTgid {
        /// The process (its thread group id).
        tgid: u32,
        /// Let it through (or stop letting it through).
        watch: bool,
    },
    /// An attempt failed: wait until `tgids` (the instances that died) are
    /// reaped (at most [`REAP_WAIT`](super::REAP_WAIT)) and nothing the last restart command
    /// (process group `pgid`) left is running — what it left once it has
    /// finished is stopped (SIGTERM, SIGKILL after [`LEFTOVER_GRACE`](super::LEFTOVER_GRACE)), so
    /// the next attempt never runs beside it. Answered by [`Input::Reaped`].
    AwaitReaped {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// The instances that died.
        tgids: Vec<u32>,
        /// The last restart command's process group, if one ran.
        pgid: Option<u32>,
    },
    /// Answered by [`Input::Pidfile`].
    ReadPidfile {
        /// The entry.
        entry: EntryId,
        /// The pidfile.
        path: PathBuf,
    },
    /// Which of these members still match the entry's command line;
    /// answered by [`Input::Rechecked`].
    Recheck {
        /// The entry.
        entry: EntryId,
        /// The members to check.
        tgids: Vec<u32>,
    },
    /// Run a reconciliation scan soon, answered by [`Input::Scanned`].
    Scan,
    /// Classify these members afresh (taken over from saved state, which
    /// is trusted for nothing); answered by [`Input::Verified`].
    Verify {
        /// The members taken over from saved state.
        tgids: Vec<u32>,
    },
    /// Ask process `pid` whether it answers; answered by [`Input::Probed`]
    /// within the probe's timeout.
    Probe {
        /// The entry.
        entry: EntryId,
        /// The process.
        pid: u32,
        /// How to ask.
        probe: Probe,
    },
    /// Kill a hung process: SIGTERM, then SIGKILL after `grace` if the
    /// same process (tgid, start) still lives.
    Kill {
        /// The process (its thread group id).
        tgid: u32,
        /// When it started, in clock ticks since boot.
        start: u64,
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// A restart command a previous psmon started may still run in
    /// process group `pgid` (its leader's pid): answer
    /// [`Input::CommandDone`] once the leader has ended, without running it
    /// again; still running `timeout` after `since` (when the restart
    /// began), its group is killed, as psmon kills a command it started.
    AwaitCommand {
        /// The entry's path: what answers finds the entry by (a reload meanwhile renumbers entries).
        path: PathBuf,
        /// Its process group (its leader's pid).
        pgid: u32,
        /// When the restart began.
        since: Time,
        /// The command's time limit, counted from `since`.
        timeout: Duration,
    },
}

/// A restart or failover command to run for an entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The entry.
    pub entry: EntryId,
    /// The entry's path: its answer finds the entry by it.
    pub path: PathBuf,
    /// The restart command or the failover command.
    pub job: Job,
    /// The command line, as configured.
    pub command: String,
    /// psenv's variables, then the PSMON_* details.
    pub env: Vec<(String, String)>,
    /// Its time limit: past it, its process group is killed.
    pub timeout: Duration,
}

/// Something to tell the operator. The wording is [`crate::report`]'s.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// What a failed restart attempt left in its process group was
    /// stopped before the next attempt.
    LeftoversStopped {
        /// The entry.
        entry: EntryId,
        /// The process group of the failed attempt.
        pgid: u32,
    },
    /// A restart decision about an entry; `running` instances now.
    Policy {
        /// The entry.
        entry: EntryId,
        /// The decision.
        action: Action,
        /// Instances running now.
        running: u32,
    },
    /// Failover was due, but there is no command to send it with.
    SwitchNotSent {
        /// The entry.
        entry: EntryId,
    },
    /// A cluster driver's failover request ended: the resource runs
    /// elsewhere (`ok`), or why not; for the entry's group, if it has one.
    Switched {
        /// The entry.
        entry: EntryId,
        /// The entry's restart group, if it has one.
        group: Option<String>,
        /// It succeeded.
        ok: bool,
        /// What the cluster said: where the resource runs, or why not.
        said: String,
        /// From its start to its end.
        elapsed: Duration,
    },
    /// A restart or failover command ended.
    CommandDone {
        /// The entry.
        entry: EntryId,
        /// The restart command or the failover command.
        job: Job,
        /// It exited 0 (or was adopted).
        ok: bool,
        /// How it ended.
        ending: Ending,
        /// From its start to its end.
        elapsed: Duration,
        /// The tail of what it wrote.
        output: String,
    },
    /// A new configuration was taken.
    Reloaded {
        /// Entries watched now.
        entries: usize,
    },
    /// A new configuration was refused (each error a line); the old one stays.
    ReloadRefused(Vec<String>),
    /// An operator's request, in padmin's words: `stop`, `start`, `reload`.
    Operator {
        /// What was asked, in padmin's words.
        what: &'static str,
        /// The pfile's name.
        pfile: String,
    },
    /// A probe answered, but slower than its `warn`.
    ProbeSlow {
        /// The entry.
        entry: EntryId,
        /// The process.
        pid: u32,
        /// How long it took to answer.
        took: Duration,
    },
    /// The process gave no good answer, `failures` times in a row: it is
    /// killed and handled as a death.
    Hung {
        /// The entry.
        entry: EntryId,
        /// The process.
        pid: u32,
        /// The probe's time limit.
        timeout: Duration,
        /// What the last probe got instead of a good answer.
        why: String,
    },
    /// An event source is open.
    SourceOpened {
        /// The source's name.
        name: String,
        /// It filters in the kernel.
        kernel_filter: bool,
    },
    /// The event source stopped (why); it is being reopened.
    SourceFailed(String),
    /// The source missed events; a scan follows.
    EventsLost {
        /// How many, when the source can tell.
        count: Option<u64>,
    },
    /// A reconciliation scan ended (debug).
    Scanned {
        /// How many processes matched.
        matched: usize,
        /// How long reading /proc took.
        took: Duration,
    },
    /// A restart group's step (`group` indexes the configuration's groups),
    /// `at` this long after its restart began.
    Group {
        /// The group.
        group: GroupId,
        /// What happened.
        event: GroupEvent,
        /// How long after the group's restart began.
        at: Duration,
    },
    /// A member is no longer tracked (debug).
    Gone {
        /// The process (its thread group id).
        tgid: u32,
        /// Why it is no longer tracked.
        why: &'static str,
    },
}
