//! Restart groups (the watcher's half of the product): entries that depend
//! on each other are restarted together. Any member Down or hung stops the
//! members still running in reverse order (SIGTERM, SIGKILL after the
//! group's `kill_grace`, each waited for until gone), then starts them in
//! order, each Up (and ready: its probe answers) before the next, within
//! `start_timeout`. A member that does not start stops the sequence and the
//! attempt counts as failed. At most `restarts` group restarts within
//! `window`; the next failure is the group's retry-over and its action.
//! Attempts never overlap: the next one starts once the last one's restart
//! commands have finished, after the back-off of the member that failed
//! (its `restart_backoff`, doubled with each failure in a row) — and not at
//! all when every member turns out to be Up by then (a daemon that was slow
//! to show it had started).
//!
//! A member's own policy still says when it is Up or Down; its own budget,
//! back-off and restarts do not apply. While the group is stopping or
//! starting, the members it has not yet started are *held*: tracked, but
//! their policy gets no input.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod sequence;

use super::{Effect, EntryId, Monitor, Notice};
use crate::facts::GroupId;
use crate::{
    clock::Time,
    config::{Config, Group},
    policy::{Action, Phase, SetPidFail},
};

/// A member being stopped that is still there after its `kill_grace` and
/// this much more is left behind (it was sent SIGKILL; it may be stuck in
/// the kernel), and the group goes on.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// While a group waits for a started member to become ready, its failing
/// probe is asked again this soon rather than after its interval.
pub const READY_POLL: Duration = Duration::from_millis(100);

/// A group: its configuration with the members as entry ids.
#[derive(Clone, Debug)]
pub(super) struct GroupConf {
    pub group: Group,
    pub members: Vec<EntryId>,
}

/// What the monitor keeps of each group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct GroupWatch {
    name: String,
    phase: GroupPhase,
    /// Start times of the group restarts that still count.
    attempts: Vec<Time>,
    /// When the current restart began.
    began: Time,
    /// The failover command was run for the budget spent now.
    failover_sent: bool,
    /// Failed attempts in a row (the back-off doubles with each).
    #[serde(default)]
    failures: u32,
    /// The instances the current restart saw die or stopped: awaited until
    /// reaped before the first member starts.
    #[serde(default)]
    stopped: Vec<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
enum GroupPhase {
    #[default]
    Watching,
    /// Stopping member `at` (members above it are stopped already).
    Stopping { at: usize, deadline: Time },
    /// Every member is stopped; the instances that died or were stopped
    /// are awaited until reaped (a daemon whose pidfile names a zombie
    /// refuses to start), at most until `deadline`. `entry` is the member
    /// whose [`Input::Reaped`](super::Input::Reaped) ends the wait.
    Reaping { entry: EntryId, deadline: Time },
    /// Starting member `at` (those below it are Up and ready); `up` once it
    /// is Up and only its readiness is awaited.
    Starting { at: usize, deadline: Time, up: bool },
    /// An attempt failed at `cause`: the next begins at `until`, once no
    /// member's restart command runs and its dead instance is reaped.
    Backoff { cause: EntryId, until: Time },
    /// The budget is spent: members are reported, not restarted, until all
    /// are Up again.
    RetryOver,
}

/// A group as `psmon status` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatus {
    /// Its name.
    pub name: String,
    /// `watching`, `stopping`, `starting`, `backoff`, `retry_over` or
    /// `failed_over`.
    pub state: &'static str,
    /// Its members, in start order.
    pub members: Vec<EntryId>,
    /// Group restarts within the window now, of `allowed`.
    pub restarts: usize,
    /// Restarts allowed within `window`.
    pub allowed: u32,
    /// The window restarts are counted in.
    pub window: Duration,
}

/// Why a group restarts; only a failure counts against its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupWhy {
    /// A member went down or hung.
    Failure,
    /// The operator's recovery drill killed the member.
    Drill,
    /// A member was missing when psmon first looked (start-up, resume).
    FirstLook,
}

/// What a group did, for the operator.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupEvent {
    /// `cause` went down: restart `attempt` of `restarts` allowed.
    Restarting {
        /// The member that went down.
        cause: EntryId,
        /// Which restart of the budget.
        attempt: u32,
        /// Why the group restarts.
        why: GroupWhy,
    },
    /// A member is being stopped (SIGTERM).
    Stopping {
        /// The member.
        entry: EntryId,
        /// Its instances.
        pids: Vec<u32>,
    },
    /// Still there after SIGKILL and the margin: left behind.
    NotStopped {
        /// The member.
        entry: EntryId,
    },
    /// A member is being started.
    Starting {
        /// The member.
        entry: EntryId,
    },
    /// A member is Up and ready.
    Ready {
        /// The member.
        entry: EntryId,
        /// Its main instance, when known.
        pid: Option<u32>,
    },
    /// Every member is Up and ready again.
    Restarted {
        /// Since the restart began.
        took: Duration,
    },
    /// The sequence stopped at `entry`; `left` were not started.
    StartFailed {
        /// The member.
        entry: EntryId,
        /// Why its start failed.
        why: StartFailure,
        /// The members after it.
        left: Vec<EntryId>,
    },
    /// The group's budget is spent.
    RetryOver {
        /// Restarts allowed.
        restarts: u32,
        /// Within this.
        window: Duration,
    },
    /// The next attempt waits this long (and for the last one's commands).
    Backoff {
        /// How long.
        delay: Duration,
    },
    /// The failover command was due but there is none.
    SwitchNotSent,
    /// `cause` is down, but member `paused` is paused: nothing is done.
    NotRestarted {
        /// The member that went down.
        cause: EntryId,
        /// The paused member.
        paused: EntryId,
    },
    /// Every member is Up again after a retry-over: the budget is re-armed.
    UpAgain,
}

/// Why a member's start failed in its group's sequence (`report` words it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StartFailure {
    /// The member's own policy: its restart command failed, nothing
    /// appeared, or it ended before `start_secs`.
    SetPidFail(SetPidFail),
    /// Not Up (or Up but not ready, `up`) within the group's `start_timeout`.
    Timeout {
        /// It was Up, but not ready.
        up: bool,
        /// The group's `start_timeout`.
        within: Duration,
    },
    /// It died while later members were being started.
    Died,
    /// It has no restart command.
    NoRestartCommand,
}

/// What a member's policy said in one step, as far as its group cares.
#[derive(Default)]
pub(super) struct Said {
    pub down: bool,
    pub stopped_on_purpose: bool,
    pub up: bool,
    pub failed: Option<StartFailure>,
    /// The policy wanted to restart, back off or give up on its own.
    pub own_restart: bool,
    /// The entry was not yet observed before this step.
    pub first_look: bool,
}

impl Said {
    /// Sorts one policy action: those the group takes over are not acted
    /// on (false).
    pub fn take(&mut self, action: &Action) -> bool {
        match action {
            Action::ReportDown { .. } => self.down = true,
            Action::ReportStopped { .. } => self.stopped_on_purpose = true,
            Action::ReportUp { .. } => self.up = true,
            Action::ReportSetPidFail { why } => self.failed = Some(StartFailure::SetPidFail(*why)),
            Action::Restart { .. }
            | Action::RestartUncounted { .. }
            | Action::RestartSlowly { .. }
            | Action::ReportBackoff { .. }
            | Action::ReportRetryOver { .. }
            | Action::ReportSlowRetry { .. }
            | Action::Failover => {
                self.own_restart = true;
                return false;
            }
            Action::ReportStarted { .. }
            | Action::ReportTooMany { .. }
            | Action::ReportTooManyAfterRestart { .. } => {}
        }
        true
    }
}

impl Monitor {
    /// Rebuilds the groups for a new configuration. Budgets of groups kept
    /// by name stay; a restart in progress is abandoned and the members are
    /// looked at afresh (one still down starts a new one).
    pub(super) fn apply_groups(&mut self, config: &Config) {
        let mut old: Vec<GroupWatch> = std::mem::take(&mut self.groups);
        self.group_conf.clear();
        self.group_of = vec![None; self.watches.len()];
        for (_, group) in config.groups() {
            let members: Vec<EntryId> = group
                .members
                .iter()
                .filter_map(|p| self.config.iter().position(|e| &e.path == p))
                .map(EntryId::at)
                .collect();
            let g = GroupId(self.group_conf.len() as u32);
            for id in &members {
                self.group_of[id.index()] = Some(g);
            }
            let mut watch = match old.iter().position(|w| w.name == group.name) {
                Some(i) => old.swap_remove(i),
                None => GroupWatch {
                    name: group.name.clone(),
                    ..GroupWatch::default()
                },
            };
            if matches!(
                watch.phase,
                GroupPhase::Stopping { .. }
                    | GroupPhase::Reaping { .. }
                    | GroupPhase::Starting { .. }
                    | GroupPhase::Backoff { .. }
            ) {
                watch.phase = GroupPhase::Watching;
            }
            self.groups.push(watch);
            self.group_conf.push(GroupConf {
                group: group.clone(),
                members,
            });
        }
        // Only those held are written (a write copies what a snapshot shares).
        for i in 0..self.watches.len() {
            if self.watches[i].held {
                let w = &mut self.watches[i];
                w.held = false;
                w.state.phase = Phase::Unknown;
                self.waiting.remove(&EntryId::at(i));
            }
        }
    }

    /// The group an entry belongs to.
    pub fn group_of(&self, id: EntryId) -> Option<GroupId> {
        self.group_of.get(id.index()).copied().flatten()
    }

    /// The group's name.
    pub fn group_name(&self, g: GroupId) -> &str {
        &self.group_conf[g.index()].group.name
    }

    /// The group's members, in start order.
    pub fn group_members(&self, g: GroupId) -> &[EntryId] {
        &self.group_conf[g.index()].members
    }

    /// What `psmon status` shows of each group.
    pub fn group_status(&self, now: Time) -> Vec<GroupStatus> {
        (0..self.groups.len() as u32)
            .map(GroupId)
            .map(|g| {
                let w = &self.groups[g.index()];
                let conf = &self.group_conf[g.index()];
                let window = conf.group.window;
                GroupStatus {
                    name: conf.group.name.clone(),
                    state: match w.phase {
                        GroupPhase::Watching => "watching",
                        GroupPhase::Stopping { .. } | GroupPhase::Reaping { .. } => "stopping",
                        GroupPhase::Starting { .. } => "starting",
                        GroupPhase::Backoff { .. } => "backoff",
                        GroupPhase::RetryOver if w.failover_sent => "failed_over",
                        GroupPhase::RetryOver => "retry_over",
                    },
                    members: conf.members.clone(),
                    restarts: w
                        .attempts
                        .iter()
                        .filter(|t| now.saturating_duration_since(**t) < window)
                        .count(),
                    allowed: conf.group.restarts,
                    window,
                }
            })
            .collect()
    }

    /// A group member's policy spoke (its actions sorted by [`Said::take`]).
    pub(super) fn group_heard(
        &mut self,
        g: GroupId,
        id: EntryId,
        said: Said,
        now: Time,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        if said.own_restart {
            // The member's own budget does not apply: take the attempt back.
            let w = &mut self.watches[id.index()];
            if w.state.phase == Phase::Restarting {
                w.state.forget_last_attempt();
            }
            if !self.is_starting(g, id) || said.failed.is_none() {
                self.settle_down(id);
            }
        }
        if let Some(why) = said.failed {
            if self.is_starting(g, id) {
                self.start_failed(g, id, why, now, &mut out);
            } else {
                self.settle_down(id);
            }
        } else if said.down && !said.stopped_on_purpose {
            self.member_down(g, id, said.first_look, now, &mut out);
        }
        if said.up {
            self.member_up(g, id, now, &mut out);
        }
        out
    }

    /// A held member's instances changed: a stop may have finished.
    pub(super) fn group_poke(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let Some(g) = self.group_of(id) else {
            return;
        };
        if let GroupPhase::Stopping { at, .. } = self.groups[g.index()].phase
            && self.group_conf[g.index()].members[at] == id
            && self.watches[id.index()].running == 0
        {
            self.stop_from(g, at, now, out);
        }
    }

    /// A started member's probe answered: it is ready.
    pub(super) fn group_probe_ok(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let Some(g) = self.group_of(id) else {
            return;
        };
        if let GroupPhase::Starting { at, up: true, .. } = self.groups[g.index()].phase
            && self.group_conf[g.index()].members[at] == id
        {
            self.ready(g, now, out);
        }
    }

    /// Whether the group waits for this member's probe to answer.
    pub(super) fn awaits_ready(&self, id: EntryId) -> bool {
        self.group_of(id).is_some_and(|g| {
            matches!(self.groups[g.index()].phase, GroupPhase::Starting { at, up: true, .. }
                if self.group_conf[g.index()].members[at] == id)
        })
    }

    /// Groups' deadlines: a stop or a start that takes too long, the end
    /// of a back-off (unless a command is awaited: its end is an input).
    pub(super) fn group_deadlines(&self) -> impl Iterator<Item = Time> + '_ {
        (0..self.groups.len() as u32).map(GroupId).filter_map(|g| {
            match self.groups[g.index()].phase {
                GroupPhase::Stopping { deadline, .. }
                | GroupPhase::Reaping { deadline, .. }
                | GroupPhase::Starting { deadline, .. } => Some(deadline),
                GroupPhase::Backoff { until, .. } if !self.attempt_blocked(g) => Some(until),
                _ => None,
            }
        })
    }

    /// A member's restart command finished, or its dead instance was
    /// reaped: a back-off may be over, or the first member may start.
    pub(super) fn group_unblocked(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let Some(g) = self.group_of(id) else {
            return;
        };
        match self.groups[g.index()].phase {
            GroupPhase::Reaping { entry, .. }
                if entry == id && !self.watches[id.index()].reaping =>
            {
                self.start(g, 0, now, out)
            }
            _ => self.try_again(g, now, out),
        }
    }

    /// Whether a member's restart command runs, or a member's dead
    /// instance is not yet reaped: the next attempt waits.
    fn attempt_blocked(&self, g: GroupId) -> bool {
        self.group_conf[g.index()]
            .members
            .iter()
            .any(|m| self.watches[m.index()].attempt_blocked())
    }

    /// After a back-off: the next attempt, unless every member is Up by
    /// now (then the group is back without one).
    fn try_again(&mut self, g: GroupId, now: Time, out: &mut Vec<Effect>) {
        let GroupPhase::Backoff { cause, until } = self.groups[g.index()].phase else {
            return;
        };
        if now < until || self.attempt_blocked(g) {
            return;
        }
        self.groups[g.index()].phase = GroupPhase::Watching;
        let members = self.group_conf[g.index()].members.clone();
        let all_up = members
            .iter()
            .all(|m| self.watches[m.index()].running >= self.config[m.index()].min.max(1));
        if !all_up {
            // The failed attempt's dead instances were awaited already.
            self.groups[g.index()].stopped.clear();
            self.restart(g, cause, false, now, out);
            return;
        }
        self.groups[g.index()].failures = 0;
        for id in members {
            let w = &mut self.watches[id.index()];
            w.held = false;
            if w.state.phase != Phase::Up {
                w.state.phase = Phase::Unknown;
                self.step_running(id, now, out);
            }
        }
        let took = now.saturating_duration_since(self.groups[g.index()].began);
        self.say(g, GroupEvent::Restarted { took }, now, out);
    }

    pub(super) fn group_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        for g in (0..self.groups.len() as u32).map(GroupId) {
            match self.groups[g.index()].phase {
                GroupPhase::Stopping { at, deadline } if now >= deadline => {
                    let entry = self.group_conf[g.index()].members[at];
                    self.say(g, GroupEvent::NotStopped { entry }, now, out);
                    self.stop_from(g, at, now, out);
                }
                // Not reaped within REAP_WAIT: the first member starts anyway.
                GroupPhase::Reaping { deadline, .. } if now >= deadline => {
                    self.start(g, 0, now, out)
                }
                GroupPhase::Starting { at, deadline, up } if now >= deadline => {
                    let entry = self.group_conf[g.index()].members[at];
                    let timeout = self.group_conf[g.index()].group.start_timeout;
                    let why = StartFailure::Timeout {
                        up,
                        within: timeout,
                    };
                    self.start_failed(g, entry, why, now, out);
                }
                GroupPhase::Backoff { .. } => self.try_again(g, now, out),
                _ => {}
            }
        }
    }

    fn is_starting(&self, g: GroupId, id: EntryId) -> bool {
        matches!(self.groups[g.index()].phase, GroupPhase::Starting { at, .. }
            if self.group_conf[g.index()].members[at] == id)
    }

    /// Tells the operator, with the time since the restart began.
    fn say(&self, g: GroupId, event: GroupEvent, now: Time, out: &mut Vec<Effect>) {
        let at = now.saturating_duration_since(self.groups[g.index()].began);
        out.push(Effect::Notice(Notice::Group {
            group: g,
            event,
            at,
        }));
    }
}
