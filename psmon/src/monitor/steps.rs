//! The restart policy's steps for one entry ([`policy::step`]) and what
//! its actions do: the failure history, restart and failover commands.

use super::{Effect, Monitor, Notice, Said, crash_loop, first_probe_at};
use crate::{
    clock::Time,
    config::Rule,
    facts::EntryId,
    policy::{self, Action, EntryState, Phase, SetPidFail},
};

impl Monitor {
    /// Tells the policy how many instances the entry has now. Not before
    /// an entry with a pidfile has had it read: until then nothing counts.
    pub(super) fn step_running(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let i = id.index();
        if matches!(self.config[i].rule, Rule::Pidfile(_)) && self.watches[i].pidfile.is_none() {
            return;
        }
        let (running, pid) = self.recount(id);
        self.step(id, policy::Observed::Running { running, pid }, now, out);
    }

    pub(super) fn step(
        &mut self,
        id: EntryId,
        input: policy::Observed,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
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
