//! A new configuration taken while running: the monitor, the metrics, the
//! kernel filter, the queues and notify sockets follow it, and the audit
//! trail says what changed.

use std::sync::Arc;

use super::{Prepared, Supervisor};
use crate::{
    config::{Config, LogLevel},
    facts::EntryId,
    monitor::{Input, Monitor},
};

impl Supervisor {
    /// Runs `config` from now on; says what changed.
    pub(super) fn reconfigure(&mut self, prepared: Prepared) -> String {
        let Prepared { config, matcher } = prepared;
        let same = same_layout(&self.monitor, &config);
        let changes = changes(
            self.monitor.entries(),
            &self.config,
            &config,
            same.as_deref(),
        );
        self.reporter.set_level(config.agent.log_level);
        let mut at_start = self.config.agent.changed_at_start_only(&config.agent);
        if self.config.tls != config.tls {
            at_start.push("ps_ssl.conf");
        }
        if !at_start.is_empty() {
            self.reporter.report(
                LogLevel::Warn,
                &format!(
                    "reload: {} changed, which psmon reads only when it starts; the running values are kept until psmon is restarted (systemctl restart psmon; the watched processes are not touched)",
                    at_start.join(", ")
                ),
                &[],
            );
        }
        self.scans.reconfigured(&config);
        self.umask = config.env.umask;
        self.config = without_entries(&config);
        self.self_check_reconfigured();
        self.feed(Input::Reload(Box::new(config)));
        match &same {
            // Same cells, same labels: only the entries whose settings changed.
            Some(changed) => {
                self.telemetry
                    .metrics
                    .refresh(&self.monitor, changed, self.clock.now())
            }
            None => self
                .telemetry
                .metrics
                .set_entries(&self.monitor, self.clock.now()),
        }
        // Built where the files were read (it resolves every entry's file):
        // the same entries in the same order as the monitor's now.
        let old = std::mem::replace(&mut self.matcher, Arc::new(matcher));
        // Only names the old entries did not have: the rest are there.
        if let Some(filter) = self.source.as_mut().and_then(|s| s.filter.as_mut()) {
            for comm in self.matcher.kernel_comms_since(&old).unwrap_or_default() {
                filter.watch_comm(&comm);
            }
        }
        tokio::task::spawn_blocking(move || drop(old));
        self.open_queues();
        self.open_notify_sockets();
        self.recorder.set_limits(
            self.config.agent.recorder_events,
            self.config.agent.recorder_window,
        );
        let monitor = &self.monitor;
        self.recorder
            .retain(|p| monitor.entries().any(|e| e.path == p));
        changes
    }
}

/// `config` with its pfiles' entries left out.
pub(super) fn without_entries(config: &Config) -> Config {
    Config {
        pfiles: config
            .pfiles
            .iter()
            .map(|p| crate::config::Pfile {
                name: p.name.clone(),
                file: p.file.clone(),
                ipckey: p.ipckey,
                monitor_interval: p.monitor_interval,
                msg_check_interval: p.msg_check_interval,
                shm_dump_file: p.shm_dump_file.clone(),
                entries: Vec::new(),
                groups: p.groups.clone(),
            })
            .collect(),
        agent: config.agent.clone(),
        env: config.env.clone(),
        tls: config.tls.clone(),
    }
}

/// Who sent a SIGHUP, when its siginfo said.
pub(super) fn sighup(by: Option<crate::audit::Who>) -> crate::audit::Who {
    by.unwrap_or(crate::audit::Who {
        uid: 0,
        pid: None,
        comm: None,
        via: crate::audit::Via::Sighup,
    })
}

/// Whether `new` has the running entries' pfiles and paths in the same
/// order (a reload that changed settings, or nothing): then the entries
/// whose settings differ.
fn same_layout(monitor: &Monitor, new: &Config) -> Option<Vec<EntryId>> {
    if new.entries().count() != monitor.entry_count() {
        return None;
    }
    let mut changed = Vec::new();
    for (i, ((pfile, entry), old)) in new.entries().zip(monitor.entries()).enumerate() {
        let id = EntryId::at(i);
        if entry.path != old.path || pfile.name != monitor.pfile(id) {
            return None;
        }
        if entry != old {
            changed.push(id);
        }
    }
    Some(changed)
}

/// What a reload changes, for the audit trail: entries added, removed and
/// changed (by path, up to five named), and the daemon-wide settings.
/// `same`: what [`same_layout`] found.
fn changes<'a>(
    old: impl Iterator<Item = &'a crate::config::Entry>,
    old_config: &Config,
    new: &Config,
    same: Option<&[EntryId]>,
) -> String {
    use std::collections::HashMap;
    let mut said = Vec::new();
    let mut list = |what: &str, mut paths: Vec<&std::path::Path>| {
        if paths.is_empty() {
            return;
        }
        paths.sort();
        let named: Vec<String> = paths
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        let more = match paths.len() > 5 {
            true => format!(" and {} more", paths.len() - 5),
            false => String::new(),
        };
        said.push(format!(
            "{} {what} ({}{more})",
            paths.len(),
            named.join(", ")
        ));
    };
    match same {
        Some(changed) => {
            let entries: Vec<&crate::config::Entry> = new.entries().map(|(_, e)| e).collect();
            list(
                "changed",
                changed
                    .iter()
                    .map(|id| entries[id.index()].path.as_path())
                    .collect(),
            );
        }
        None => {
            let old: HashMap<&std::path::Path, &crate::config::Entry> =
                old.map(|e| (e.path.as_path(), e)).collect();
            let new_entries: HashMap<&std::path::Path, &crate::config::Entry> =
                new.entries().map(|(_, e)| (e.path.as_path(), e)).collect();
            list(
                "added",
                new_entries
                    .keys()
                    .filter(|p| !old.contains_key(*p))
                    .copied()
                    .collect(),
            );
            list(
                "removed",
                old.keys()
                    .filter(|p| !new_entries.contains_key(*p))
                    .copied()
                    .collect(),
            );
            list(
                "changed",
                new_entries
                    .iter()
                    .filter(|(p, e)| old.get(*p).is_some_and(|o| o != *e))
                    .map(|(p, _)| *p)
                    .collect(),
            );
        }
    }
    if old_config.agent != new.agent {
        said.push("psagent.conf changed".to_string());
    }
    if old_config.env != new.env {
        said.push("psenv changed".to_string());
    }
    match said.is_empty() {
        true => "nothing changed".to_string(),
        false => said.join(", "),
    }
}
