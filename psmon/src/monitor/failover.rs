//! Which failover a `switch` sends (a command, or a request to Pacemaker
//! or CLUSTERPRO), what came of it, and the location constraints a
//! request left in the cluster until an operator clears them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Effect, EntryId, Job, Monitor, Notice};
use crate::{
    config::{Config, FailoverChoice, FailoverDriver, FailoverMode},
    facts::{Cluster, Constraint, GroupId, SwitchOutcome, SwitchRequest},
};

/// psagent.conf's failover settings.
#[derive(Clone, Debug, Default)]
pub(super) struct Settings {
    command: Option<String>,
    driver: FailoverDriver,
    resource: Option<String>,
    mode: FailoverMode,
    timeout: Duration,
    retry_interval: Duration,
}

impl Settings {
    pub(super) fn new(config: &Config) -> Settings {
        let a = &config.agent;
        Settings {
            command: a.failover_command.clone(),
            driver: a.failover_driver,
            resource: a.failover_resource.clone(),
            mode: a.failover_mode,
            timeout: a.failover_timeout,
            retry_interval: a.retry_interval,
        }
    }
}

/// A constraint a failover request left, and for which pfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftConstraint {
    /// The pfile whose entry failed over.
    pub pfile: String,
    #[serde(flatten)]
    /// The constraint.
    pub constraint: Constraint,
}

impl Monitor {
    /// The effect that asks for failover for entry `id`, or for the group
    /// `group` whose member `id` failed; `None` when there is no way to
    /// (the command driver with no command).
    pub(super) fn failover_run(
        &self,
        id: EntryId,
        group: Option<GroupId>,
        env: Vec<(String, String)>,
    ) -> Option<Effect> {
        let entry = &self.config[id.index()];
        let (choice, name, own): (&FailoverChoice, &str, &Option<String>) = match group {
            Some(g) => {
                let conf = &self.group_conf[g.index()].group;
                (&conf.failover_choice, &conf.name, &conf.failover)
            }
            None => (
                &entry.failover_choice,
                &self.watches[id.index()].pfile,
                &entry.failover,
            ),
        };
        let s = &self.failover;
        let cluster = match choice.driver.unwrap_or(s.driver) {
            FailoverDriver::Command => {
                // A group's own command, else the failed member's, else
                // psagent.conf's.
                let command = own
                    .clone()
                    .or_else(|| entry.failover.clone())
                    .or_else(|| s.command.clone())?;
                return Some(self.run(id, Job::Failover, command, env));
            }
            FailoverDriver::Pacemaker => Cluster::Pacemaker(choice.mode.unwrap_or(s.mode)),
            FailoverDriver::Clusterpro => Cluster::Clusterpro,
        };
        let request = SwitchRequest {
            cluster,
            resource: choice
                .resource
                .clone()
                .or_else(|| s.resource.clone())
                .unwrap_or_else(|| name.to_string()),
            timeout: s.timeout,
            retry_interval: s.retry_interval,
            env,
        };
        Some(Effect::Switch {
            path: entry.path.clone(),
            request,
        })
    }

    /// A cluster driver's request for the entry of `path` ended.
    pub(super) fn on_switched(
        &mut self,
        path: &std::path::Path,
        outcome: SwitchOutcome,
        out: &mut Vec<Effect>,
    ) {
        let Some(i) = self.by_path.get(path).map(|id| id.index()) else {
            return;
        };
        let pfile = self.watches[i].pfile.clone();
        for constraint in outcome.constraints {
            let left = LeftConstraint {
                pfile: pfile.clone(),
                constraint,
            };
            if !self.constraints.contains(&left) {
                self.constraints.push(left);
                self.dirty = true;
            }
        }
        out.push(Effect::Notice(Notice::Switched {
            entry: EntryId::at(i),
            group: self.group_of[i].map(|g| self.group_conf[g.index()].group.name.clone()),
            ok: outcome.ok,
            said: outcome.said,
            elapsed: outcome.elapsed,
        }));
    }

    /// An operator cleared the constraints on these resources.
    pub(super) fn on_failover_cleared(&mut self, resources: &[String]) {
        let before = self.constraints.len();
        self.constraints
            .retain(|c| !resources.contains(&c.constraint.resource));
        self.dirty |= self.constraints.len() != before;
    }

    /// Location constraints psmon's failover requests left in the cluster.
    pub fn failover_constraints(&self) -> &[LeftConstraint] {
        &self.constraints
    }
}
