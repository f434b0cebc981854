//! The operator's side of cluster failover: the constraints psmon's
//! requests left, listed in `psmon status` and removed by `psmon
//! clear-failover`.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Back, Supervisor, ops::usage};
use crate::{control::Reply, failover::pacemaker, monitor::Input};

impl Supervisor {
    /// The constraints psmon's failover requests left, for `status`.
    pub(super) fn constraints_json(&self, only: Option<&str>) -> Value {
        self.monitor
            .failover_constraints()
            .iter()
            .filter(|c| only.is_none_or(|o| c.pfile == o))
            .map(|c| {
                json!({
                    "pfile": c.pfile,
                    "resource": c.constraint.resource,
                    "id": c.constraint.id,
                    "node": c.constraint.node,
                })
            })
            .collect()
    }

    /// `crm_resource --clear` for each resource with constraints left (of
    /// one pfile, or all); answers with the constraints removed.
    pub(super) fn clear_failover(&mut self, pfile: Option<&str>, reply: oneshot::Sender<Reply>) {
        let only = match pfile {
            Some(name) => match self.pfile_named(name) {
                Ok(p) => Some(p.name.clone()),
                Err(e) => {
                    let _ = reply.send(usage(e));
                    return;
                }
            },
            None => None,
        };
        let left: Vec<(String, String)> = self
            .monitor
            .failover_constraints()
            .iter()
            .filter(|c| only.as_deref().is_none_or(|o| c.pfile == o))
            .map(|c| (c.constraint.resource.clone(), c.constraint.id.clone()))
            .collect();
        let resources: BTreeSet<String> = left.iter().map(|(r, _)| r.clone()).collect();
        if resources.is_empty() {
            let _ = reply.send(Ok(json!({"cleared": []})));
            return;
        }
        let env = self.config.env.vars.clone();
        let tx = self.back_tx.clone();
        self.commands.spawn(async move {
            let mut cleared = Vec::new();
            let mut failed = Vec::new();
            for r in resources {
                match pacemaker::clear(&r, &env).await {
                    Ok(()) => cleared.push(r),
                    Err(e) => failed.push(format!("resource '{r}': {e}")),
                }
            }
            let ids: Vec<&str> = left
                .iter()
                .filter(|(r, _)| cleared.contains(r))
                .map(|(_, id)| id.as_str())
                .collect();
            let answer = if failed.is_empty() {
                Ok(json!({ "cleared": ids }))
            } else {
                Err(format!(
                    "could not clear {} (cleared: {})",
                    failed.join("; "),
                    if ids.is_empty() {
                        "nothing".to_string()
                    } else {
                        ids.join(", ")
                    }
                ))
            };
            let _ = tx.send(Back::Input {
                input: Input::FailoverCleared { resources: cleared },
                generation: None,
            });
            let _ = reply.send(answer);
        });
    }
}
