//! Keeps each pfile's health queue (System V shared memory, see
//! [`crate::shm`]) current, and writes it to the pfile's SHM_DUMP_FILE on
//! every Down and retry over.

use std::collections::HashMap;

use super::Supervisor;
use crate::{config::LogLevel, monitor::Notice, policy::Action, shm};

/// A dump file past this size is moved to `FILE.1` before the next write.
const DUMP_FILE_LIMIT: u64 = 1 << 20;

/// The segments, by pfile name, with their keys.
pub(super) type Queues = HashMap<String, (u32, shm::HealthQueue)>;

impl Supervisor {
    /// Opens the segment of every configured pfile with an IPCKEY, and
    /// removes those of pfiles no longer configured (or keyed otherwise).
    pub(super) fn open_queues(&mut self) {
        let wanted: HashMap<String, u32> = self
            .config
            .pfiles
            .iter()
            .filter_map(|p| p.ipckey.map(|k| (p.name.clone(), k)))
            .collect();
        let stale: Vec<String> = self
            .queues
            .iter()
            .filter(|(name, (key, _))| wanted.get(*name) != Some(key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, queue)) = self.queues.remove(&name) {
                queue.remove();
            }
        }
        for (name, key) in wanted {
            if self.queues.contains_key(&name) {
                continue;
            }
            let file = self
                .config
                .pfile_named(&name)
                .map(|p| p.file.clone())
                .unwrap_or_default();
            match shm::HealthQueue::open(key, &name, &file) {
                Ok(queue) => {
                    self.queues.insert(name.clone(), (key, queue));
                    self.write_queue(&name, None);
                }
                Err(e) => self.reporter.report(
                    LogLevel::Warn,
                    &format!("no health queue for pfile '{name}' (IPCKEY {key:#x}): {e}"),
                    &[],
                ),
            }
        }
    }

    /// Records a notice in its pfile's queue.
    pub(super) fn queue_notice(&mut self, notice: &Notice) {
        let (pfile, text, dump) = match notice {
            Notice::Policy {
                entry,
                action,
                running,
            } => {
                let e = self.monitor.entry(*entry);
                let path = e.path.display().to_string();
                let text = crate::report::policy_text(e, &path, *action, *running);
                let dump = matches!(
                    action,
                    Action::ReportDown { .. } | Action::ReportRetryOver { .. }
                );
                (self.monitor.pfile(*entry).to_string(), text, dump)
            }
            Notice::Hung {
                entry,
                pid,
                timeout,
                why,
            } => {
                let path = self.monitor.entry(*entry).path.display().to_string();
                let text = crate::report::hung_text(&path, *pid, *timeout, why);
                (self.monitor.pfile(*entry).to_string(), text, false)
            }
            Notice::Operator { what, pfile } => (
                pfile.clone(),
                format!("Command execute. [{what}] pfile='{pfile}'"),
                false,
            ),
            // A group's retry over goes into the queue (and dump) of every
            // pfile with a member, before any failover is asked for.
            Notice::Group {
                group,
                event: event @ crate::monitor::GroupEvent::RetryOver { .. },
                ..
            } => {
                let (_, text, _) = crate::report::group_message(&self.monitor, *group, event);
                let mut pfiles: Vec<String> = self
                    .monitor
                    .group_members(*group)
                    .iter()
                    .map(|id| self.monitor.pfile(*id).to_string())
                    .collect();
                pfiles.sort();
                pfiles.dedup();
                for pfile in pfiles {
                    self.write_queue(&pfile, Some(&text));
                    self.write_dump_file(&pfile);
                }
                return;
            }
            _ => return,
        };
        self.write_queue(&pfile, Some(&text));
        if dump {
            self.write_dump_file(&pfile);
        }
    }

    /// Adds a message to a pfile's health queue, if it has one.
    pub(super) fn queue_text(&mut self, pfile: &str, text: &str) {
        if self.queues.contains_key(pfile) {
            self.write_queue(pfile, Some(text));
        }
    }

    fn write_queue(&mut self, pfile: &str, event: Option<&str>) {
        if !self.queues.contains_key(pfile) {
            return;
        }
        let begun = std::time::Instant::now();
        let ids = self.monitor.entries_of(pfile);
        let status = self.monitor.status_of(&ids, self.clock.now());
        let entries: Vec<shm::QueueEntry> = status
            .iter()
            .map(|e| shm::QueueEntry {
                path: &e.path,
                state: e.state,
                pid: e.instances.first().map(|(pid, _)| *pid),
                attempts: e.attempts as u32,
                retry: e.retry,
            })
            .collect();
        if let Some((_, queue)) = self.queues.get_mut(pfile) {
            queue.write(&entries, event);
        }
        self.queue_writes.add(begun.elapsed());
    }

    /// SHM_DUMP_FILE, off the event thread (a slow disk must not matter).
    fn write_dump_file(&self, pfile: &str) {
        let Some((key, _)) = self.queues.get(pfile) else {
            return;
        };
        let Some(file) = self
            .config
            .pfiles
            .iter()
            .find(|p| p.name == pfile)
            .and_then(|p| p.shm_dump_file.clone())
        else {
            return;
        };
        let key = *key;
        self.helpers.spawn_blocking(move || {
            let text = shm::dump(key).unwrap_or_else(|e| format!("{e}\n"));
            if let Err(e) = shm::write_dump_file(&file, &format!("{text}\n"), DUMP_FILE_LIMIT) {
                tracing::warn!(file = %file.display(), "cannot write SHM_DUMP_FILE: {e}");
            }
        });
    }
}
