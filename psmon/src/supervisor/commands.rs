//! The commands the monitor asks for, carried out: restart and failover
//! commands run on the command tracker (their environment with the notify
//! socket's), switch requests sent to a cluster driver, and a restart
//! command a previous psmon started awaited to its end. Each answers with
//! an input when it is done.

use std::time::Duration;

use serde_json::json;

use super::{Back, Supervisor};
use crate::{
    config::LogLevel,
    exec::{self, CommandSpec},
    facts::CommandOutcome,
    monitor::{Input, Run},
};

impl Supervisor {
    pub(super) fn run_command(&mut self, mut run: Run) {
        if run.job == crate::monitor::Job::Restart {
            run.env.extend(self.notify.env(&run.path));
        }
        let spec = CommandSpec {
            command: run.command,
            env: run.env,
            umask: self.umask,
            timeout: run.timeout,
        };
        let (path, job) = (run.path, run.job);
        // Started here and now, before anything else this input brings
        // (messages, saving state): the restart's latency ends here.
        let running = exec::start(&spec, &self.spawner);
        let tx = self.back_tx.clone();
        self.commands.spawn(async move {
            let outcome = match running {
                Ok(mut running) => {
                    if let Some(pgid) = running.pgid().await {
                        let input = Input::CommandStarted {
                            path: path.clone(),
                            job,
                            pgid,
                        };
                        let _ = tx.send(Back::Input {
                            input,
                            generation: None,
                        });
                    }
                    running.finish().await
                }
                Err(failed) => failed,
            };
            let input = Input::CommandDone { path, job, outcome };
            let _ = tx.send(Back::Input {
                input,
                generation: None,
            });
        });
    }

    /// Carries out a cluster driver's failover request; its outcome comes
    /// back as [`Input::Switched`].
    pub(super) fn send_failover(
        &mut self,
        path: std::path::PathBuf,
        request: crate::facts::SwitchRequest,
    ) {
        self.reporter.report(
            LogLevel::Info,
            &format!(
                "Switch request ('{}') sent: {}",
                path.display(),
                crate::report::switch_request(&request)
            ),
            &[("path", json!(path.display().to_string()))],
        );
        let tx = self.back_tx.clone();
        self.commands.spawn(async move {
            let outcome = crate::failover::send(&request).await;
            let _ = tx.send(Back::Input {
                input: Input::Switched { path, outcome },
                generation: None,
            });
        });
    }

    /// A restart command a previous psmon started: wait for its leader
    /// (the shell, or the program run directly) to end, polling since it
    /// is not our child, then say it ended. What it started in the
    /// background (a daemon) may stay in its group: that is the service,
    /// not the command. Past the time `left`, the group is killed, as a
    /// command psmon started would be.
    pub(super) fn await_command(&mut self, path: std::path::PathBuf, pgid: u32, left: Duration) {
        let tx = self.back_tx.clone();
        self.commands.spawn(async move {
            let begun = std::time::Instant::now();
            let ending = exec::await_unowned(pgid, tokio::time::Instant::now() + left).await;
            let outcome = CommandOutcome {
                ending,
                elapsed: begun.elapsed(),
                output_tail: String::new(),
            };
            let input = Input::CommandDone {
                path,
                job: crate::monitor::Job::Restart,
                outcome,
            };
            let _ = tx.send(Back::Input {
                input,
                generation: None,
            });
        });
    }
}
