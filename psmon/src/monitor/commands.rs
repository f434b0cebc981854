//! The commands the monitor asks for (restart and failover) and the
//! environment they run with, and what their end means.

use std::path::PathBuf;

use super::{Effect, EntryId, Job, Monitor, Notice, Run};
use crate::{
    clock::Time,
    event::ExitStatus,
    facts::CommandOutcome,
    policy::{self, Phase},
};

impl Monitor {
    pub(super) fn on_command_done(
        &mut self,
        path: PathBuf,
        job: Job,
        outcome: CommandOutcome,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        // By path: a reload may have moved or removed the entry meanwhile.
        let Some(i) = self.by_path.get(&path).map(|id| id.index()) else {
            return;
        };
        let id = EntryId::at(i);
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
            self.step(id, policy::Observed::RestartDone { ok }, now, out);
            if ok && self.watches[i].state.phase != Phase::Up {
                // Catch the new process even if its exec event was
                // filtered or lost, if it has not come by then.
                self.catch_up.push((now, id));
            }
            self.attempt_unblocked(id, now, out);
        }
    }

    /// A restart command finished, or a dead instance was reaped: an
    /// attempt may have waited for it.
    pub(super) fn attempt_unblocked(&mut self, id: EntryId, now: Time, out: &mut Vec<Effect>) {
        let w = &self.watches[id.index()];
        if !w.attempt_blocked() && matches!(w.state.phase, Phase::Backoff { .. }) {
            self.step(id, policy::Observed::Tick, now, out);
        }
        self.group_unblocked(id, now, out);
    }

    /// The entry's restart command, to run now: no other attempt starts
    /// until it has finished.
    pub(super) fn run_restart(
        &mut self,
        id: EntryId,
        command: String,
        env: Vec<(String, String)>,
    ) -> Effect {
        self.watches[id.index()].restart_running = true;
        self.run(id, Job::Restart, command, env)
    }

    /// Running `command` for the entry, within its restart_timeout.
    pub(super) fn run(
        &self,
        id: EntryId,
        job: Job,
        command: String,
        env: Vec<(String, String)>,
    ) -> Effect {
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
    pub(super) fn base_env(&self, id: EntryId) -> Vec<(String, String)> {
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
        let cause = pid.and_then(|p| w.cause(p));
        let sender = cause.and_then(|c| c.sender());
        env.push((
            "PSMON_CAUSE".into(),
            cause.map(|c| c.describe(status)).unwrap_or_default(),
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
