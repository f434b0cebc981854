//! What the monitor keeps of each entry besides its configuration: its
//! policy state, its members, and what its commands and probes left.

use std::{collections::BTreeSet, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{ProbeState, crash_loop};
use crate::{
    clock::Time,
    event::ExitStatus,
    facts::Cause,
    policy::{EntryState, Phase, SetPidFail},
};

/// What the monitor keeps of each entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Watch {
    pub(super) pfile: String,
    pub(super) path: PathBuf,
    pub(super) state: EntryState,
    pub(super) members: BTreeSet<u32>,
    /// How many members count under the rule.
    pub(super) running: u32,
    /// The last instance that went down, for the failover environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_down: Option<(Option<u32>, ExitStatus)>,
    /// What the pidfile said when last read; `None` before the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pidfile: Option<Option<u32>>,
    /// An instance exit held until its entry's command line was checked
    /// again (a forked worker that retitled must not keep it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) held_exit: Option<(u32, ExitStatus)>,
    /// Paused by an operator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) paused: bool,
    /// When the phase last changed.
    #[serde(default)]
    pub(super) since: Time,
    /// Why the last restart attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_failure: Option<SetPidFail>,
    /// The failover command was run for the budget spent now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) failover_sent: bool,
    /// A drill is on: its restart is not counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) drill: bool,
    /// The process group of the restart command running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) command_pgid: Option<u32>,
    /// A restart command was started and has not finished: no other
    /// attempt starts until it has (two `postfix start` at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) restart_running: bool,
    /// An attempt failed while the instance that died may still be a
    /// zombie (a daemon whose pidfile names it refuses to start): the next
    /// waits until it is reaped ([`super::Effect::AwaitReaped`]).
    #[serde(skip)]
    pub(super) reaping: bool,
    /// The process group of the last restart command (running or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_pgid: Option<u32>,
    /// The hang probe's bookkeeping.
    #[serde(default, skip_serializing_if = "ProbeState::is_idle")]
    pub(super) probe: ProbeState,
    /// Its restart group has it (see [`super::group`]): no policy input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) held: bool,
    /// The uid its instances run as, learned (see [`crate::config::Owner::Learned`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<u32>,
    /// Why the last instance that went down died: (its pid, the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_cause: Option<Box<(u32, Cause)>>,
    /// Recent deaths and failed attempts, for what they have in common.
    #[serde(default, skip_serializing_if = "crash_loop::Failures::is_empty")]
    pub(super) failures: crash_loop::Failures,
}

impl Watch {
    /// A new entry's, in `pfile`, watching `path`: nothing known yet.
    pub(super) fn new(pfile: String, path: PathBuf) -> Watch {
        Watch {
            pfile,
            path,
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
        }
    }

    /// The next attempt waits: the last one's restart command runs, or the
    /// instance that died is not yet reaped.
    pub(super) fn attempt_blocked(&self) -> bool {
        self.restart_running || self.reaping
    }

    /// Backing off, and past the back-off only once an input says the
    /// attempt is no longer blocked (no deadline, no tick moves it).
    pub(super) fn backoff_held(&self) -> bool {
        self.attempt_blocked() && matches!(self.state.phase, Phase::Backoff { .. })
    }

    /// Why instance `pid`, the last of the entry's to die, died, if the
    /// kernel said.
    pub(super) fn cause(&self, pid: u32) -> Option<&Cause> {
        self.last_cause
            .as_deref()
            .filter(|(p, _)| *p == pid)
            .map(|(_, c)| c)
    }
}
