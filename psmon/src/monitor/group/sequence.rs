//! A group's restart sequence: a member down stops the members above it
//! in reverse order, then they start again in order, each Up and ready
//! before the next; a member that does not start fails the attempt, and
//! the last allowed failure is the group's retry-over.

use super::{GroupEvent, GroupPhase, GroupWhy, STOP_MARGIN, StartFailure};
use crate::{
    clock::Time,
    config::{OnRetryOver, ProbeKind},
    facts::{EntryId, GroupId},
    monitor::{Effect, Monitor, REAP_WAIT},
    policy::Phase,
};

impl Monitor {
    /// Down, not restarted by itself: its group decides.
    pub(super) fn settle_down(&mut self, id: EntryId) {
        let w = &mut self.watches[id.index()];
        w.state.phase = Phase::Down;
        self.waiting.remove(&id);
    }

    /// The group has the member: no policy input until it is started.
    pub(super) fn hold(&mut self, id: EntryId, now: Time) {
        self.settle_down(id);
        let w = &mut self.watches[id.index()];
        w.held = true;
        w.since = now;
        w.probe.next_at = None;
        w.probe.failures = 0;
    }

    pub(super) fn member_down(
        &mut self,
        g: GroupId,
        id: EntryId,
        first_look: bool,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        match self.groups[g.index()].phase {
            GroupPhase::Watching => {
                // The instance that died is awaited with those the restart
                // stops.
                let dead = self.watches[id.index()].last_down.and_then(|(pid, _)| pid);
                self.groups[g.index()].stopped = dead.filter(|_| !first_look).into_iter().collect();
                self.restart(g, id, first_look, now, out)
            }
            // The next attempt restarts it.
            GroupPhase::RetryOver | GroupPhase::Backoff { .. } => self.settle_down(id),
            // A member started earlier in this sequence died: it failed.
            GroupPhase::Stopping { .. }
            | GroupPhase::Reaping { .. }
            | GroupPhase::Starting { .. } => self.start_failed(g, id, StartFailure::Died, now, out),
        }
    }

    pub(super) fn member_up(&mut self, g: GroupId, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        match self.groups[g.index()].phase {
            GroupPhase::Starting {
                at,
                deadline,
                up: false,
            } if self.group_conf[g.index()].members[at] == id => {
                let probe = self.config[id.index()].probe.as_ref().map(|p| &p.kind);
                let w = &mut self.watches[id.index()];
                match probe {
                    None => self.ready(g, now, out),
                    // It says when it is ready (perhaps said so already).
                    // It says when it is ready (perhaps said so already),
                    // unless it cannot speak: then Up is ready.
                    Some(ProbeKind::Notify) if w.probe.ready_seen || !w.probe.armed => {
                        self.ready(g, now, out)
                    }
                    Some(kind) => {
                        self.groups[g.index()].phase = GroupPhase::Starting {
                            at,
                            deadline,
                            up: true,
                        };
                        if *kind != ProbeKind::Notify {
                            // Ask at once rather than after an interval.
                            w.probe.next_at = Some(now);
                        }
                    }
                }
            }
            GroupPhase::RetryOver => {
                let all_up = self.group_conf[g.index()]
                    .members
                    .iter()
                    .all(|m| self.watches[m.index()].state.phase == Phase::Up);
                if all_up {
                    let w = &mut self.groups[g.index()];
                    w.phase = GroupPhase::Watching;
                    w.attempts.clear();
                    w.failures = 0;
                    w.failover_sent = false;
                    self.say(g, GroupEvent::UpAgain, now, out);
                }
            }
            _ => {}
        }
    }

    /// Begins a group restart because `cause` is down, if the budget allows
    /// (`first_look`: it was down when first looked at, which is not counted).
    pub(super) fn restart(
        &mut self,
        g: GroupId,
        cause: EntryId,
        first_look: bool,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        // An operator paused a member: the group is not touched until resume.
        let paused = self.group_conf[g.index()]
            .members
            .iter()
            .copied()
            .find(|m| self.watches[m.index()].paused);
        if let Some(paused) = paused {
            self.settle_down(cause);
            self.say(g, GroupEvent::NotRestarted { cause, paused }, now, out);
            return;
        }
        let conf = &self.group_conf[g.index()].group;
        let (restarts, window) = (conf.restarts, conf.window);
        let drill = std::mem::take(&mut self.watches[cause.index()].drill);
        let why = match (drill, first_look) {
            (true, _) => GroupWhy::Drill,
            (false, true) => GroupWhy::FirstLook,
            (false, false) => GroupWhy::Failure,
        };
        let w = &mut self.groups[g.index()];
        w.attempts
            .retain(|t| now.saturating_duration_since(*t) < window);
        if why == GroupWhy::Failure {
            if w.attempts.len() as u32 >= restarts {
                self.retry_over(g, cause, now, out);
                return;
            }
            w.attempts.push(now);
        }
        w.began = now;
        let attempt = w.attempts.len() as u32;
        self.say(
            g,
            GroupEvent::Restarting {
                cause,
                attempt,
                why,
            },
            now,
            out,
        );
        for id in self.group_conf[g.index()].members.clone() {
            self.hold(id, now);
        }
        self.dirty = true;
        let last = self.group_conf[g.index()].members.len() - 1;
        self.stop_from(g, last + 1, now, out);
    }

    /// Stops the highest running member below `above`; when none runs,
    /// awaits the reaping of what died or was stopped, then starts the
    /// first.
    pub(super) fn stop_from(&mut self, g: GroupId, above: usize, now: Time, out: &mut Vec<Effect>) {
        let grace = self.group_conf[g.index()].group.kill_grace;
        for at in (0..above).rev() {
            let id = self.group_conf[g.index()].members[at];
            if self.watches[id.index()].running == 0 {
                continue;
            }
            let pids = self.instances(id);
            self.groups[g.index()].phase = GroupPhase::Stopping {
                at,
                deadline: now + grace + STOP_MARGIN,
            };
            let entry = id;
            let listed = pids.iter().map(|(p, _)| *p).collect();
            self.say(
                g,
                GroupEvent::Stopping {
                    entry,
                    pids: listed,
                },
                now,
                out,
            );
            for (tgid, start) in pids {
                self.groups[g.index()].stopped.push(tgid);
                out.push(Effect::Kill { tgid, start, grace });
            }
            return;
        }
        let tgids = std::mem::take(&mut self.groups[g.index()].stopped);
        let Some(&entry) = self.group_conf[g.index()].members.first() else {
            return;
        };
        if tgids.is_empty() {
            self.start(g, 0, now, out);
            return;
        }
        self.groups[g.index()].phase = GroupPhase::Reaping {
            entry,
            deadline: now + REAP_WAIT + STOP_MARGIN,
        };
        let w = &mut self.watches[entry.index()];
        w.reaping = true;
        out.push(Effect::AwaitReaped {
            path: w.path.clone(),
            tgids,
            pgid: None,
        });
    }

    /// Starts member `at` (the ones before it are ready); past the last,
    /// the restart is done.
    pub(super) fn start(&mut self, g: GroupId, at: usize, now: Time, out: &mut Vec<Effect>) {
        let members = &self.group_conf[g.index()].members;
        let Some(&id) = members.get(at) else {
            self.groups[g.index()].phase = GroupPhase::Watching;
            self.groups[g.index()].failures = 0;
            let took = now.saturating_duration_since(self.groups[g.index()].began);
            self.say(g, GroupEvent::Restarted { took }, now, out);
            return;
        };
        self.groups[g.index()].phase = GroupPhase::Starting {
            at,
            deadline: now + self.group_conf[g.index()].group.start_timeout,
            up: false,
        };
        let w = &mut self.watches[id.index()];
        w.held = false;
        w.since = now;
        if w.running >= self.config[id.index()].min {
            // Back by other means (or never stopped): judged as it is.
            w.state.phase = Phase::Unknown;
            self.step_running(id, now, out);
            return;
        }
        let Some(command) = self.config[id.index()].restart.clone() else {
            self.start_failed(g, id, StartFailure::NoRestartCommand, now, out);
            return;
        };
        self.watches[id.index()].state.phase = Phase::Restarting;
        let heard = !self.unheard.contains(&self.watches[id.index()].path);
        self.watches[id.index()].probe.started_by_us(heard);
        self.waiting.remove(&id);
        self.say(g, GroupEvent::Starting { entry: id }, now, out);
        let mut env = self.base_env(id);
        env.push(("PSMON_GROUP".into(), self.group_name(g).to_string()));
        let attempt = self.groups[g.index()].attempts.len().max(1);
        env.push(("PSMON_ATTEMPT".into(), attempt.to_string()));
        out.push(self.run_restart(id, command, env));
    }

    pub(super) fn ready(&mut self, g: GroupId, now: Time, out: &mut Vec<Effect>) {
        let GroupPhase::Starting { at, .. } = self.groups[g.index()].phase else {
            return;
        };
        let entry = self.group_conf[g.index()].members[at];
        let pid = self.main_instance(entry).map(|(pid, _)| pid);
        self.say(g, GroupEvent::Ready { entry, pid }, now, out);
        self.start(g, at + 1, now, out);
    }

    /// The sequence stops at `id`: later members are not started, and the
    /// group tries again while its budget allows.
    pub(super) fn start_failed(
        &mut self,
        g: GroupId,
        id: EntryId,
        why: StartFailure,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let members = &self.group_conf[g.index()].members;
        let at = members.iter().position(|m| *m == id).unwrap_or(0);
        let left = members[at + 1..].to_vec();
        self.say(
            g,
            GroupEvent::StartFailed {
                entry: id,
                why,
                left,
            },
            now,
            out,
        );
        // Until the next attempt the group has it: a process of the failed
        // attempt classified late is no Up (nor its end a Down).
        self.hold(id, now);
        let w = &mut self.groups[g.index()];
        w.failures += 1;
        let delay = crate::policy::backoff(&self.config[id.index()], w.failures);
        w.phase = GroupPhase::Backoff {
            cause: id,
            until: now + delay,
        };
        self.dirty = true;
        if !delay.is_zero() || self.attempt_blocked(g) {
            self.say(g, GroupEvent::Backoff { delay }, now, out);
        }
        self.try_again(g, now, out);
    }

    /// The budget is spent: members are left as they are (reported, not
    /// restarted) and the group's action is taken, once, for `cause`.
    pub(super) fn retry_over(
        &mut self,
        g: GroupId,
        cause: EntryId,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let conf = self.group_conf[g.index()].group.clone();
        self.groups[g.index()].phase = GroupPhase::RetryOver;
        self.dirty = true;
        self.say(
            g,
            GroupEvent::RetryOver {
                restarts: conf.restarts,
                window: conf.window,
            },
            now,
            out,
        );
        let members = self.group_conf[g.index()].members.clone();
        for id in &members {
            let entry = &self.config[id.index()];
            let w = &mut self.watches[id.index()];
            w.held = false;
            w.since = now;
            w.state.phase = if w.running >= entry.min {
                Phase::Up
            } else {
                Phase::Down
            };
            w.probe.next_at = match (&entry.probe, w.state.phase) {
                (Some(p), Phase::Up) => Some(now + p.interval),
                _ => None,
            };
            self.waiting.remove(id);
        }
        if conf.action != OnRetryOver::Switch || self.groups[g.index()].failover_sent {
            return;
        }
        let mut env = self.base_env(cause);
        env.push(("PSMON_GROUP".into(), conf.name.clone()));
        env.push((
            "PSMON_REASON".into(),
            format!(
                "retry over: {} restarts of group '{}' within {} s did not keep it up",
                conf.restarts,
                conf.name,
                conf.window.as_secs()
            ),
        ));
        let Some(run) = self.failover_run(cause, Some(g), env) else {
            self.say(g, GroupEvent::SwitchNotSent, now, out);
            return;
        };
        self.groups[g.index()].failover_sent = true;
        out.push(run);
    }
}
