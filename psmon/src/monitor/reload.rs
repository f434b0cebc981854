//! A new configuration taken: entries whose path is unchanged keep their
//! state and members, in place when the layout did not change.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use super::{Effect, Monitor, Settings, Watch, failover};
use crate::{config::Config, facts::EntryId};

impl Monitor {
    /// Takes a new configuration: entries whose path is unchanged keep
    /// their state and members (nothing is restarted); others start fresh.
    pub(super) fn apply_config(&mut self, mut config: Config, out: &mut Vec<Effect>) {
        let same_paths = config.entries().count() == self.watches.len()
            && config
                .entries()
                .zip(self.watches.iter())
                .all(|((_, e), w)| e.path == w.path);
        if same_paths {
            self.keep_entries(&mut config);
        } else {
            self.remap_entries(&config, out);
        }
        // Same paths, same index; but a monitor just read from saved state
        // has none yet.
        if !same_paths || self.by_path.is_empty() {
            // The first entry of a path, as a search from the start finds.
            self.by_path = (self.config.iter().enumerate().rev())
                .map(|(i, e)| (e.path.clone(), EntryId::at(i)))
                .collect();
        }
        self.waiting = (0..self.watches.len())
            .map(EntryId::at)
            .filter(|id| {
                self.watches[id.index()]
                    .state
                    .phase
                    .deadline(&self.config[id.index()])
                    .is_some()
            })
            .collect();
        self.catch_up.clear();
        self.probed = (0..self.config.len())
            .filter(|i| self.config[*i].probe.is_some())
            .map(EntryId::at)
            .collect();
        self.settings = Settings {
            env: config.env.vars.clone(),
        };
        self.failover = failover::Settings::new(&config);
        self.apply_groups(&config);
        self.generation += 1;
        out.push(Effect::Scan);
    }

    /// The same paths in the same order (what a reload that changed an
    /// entry's settings, or nothing, brings): every entry keeps its place,
    /// its state and its members, and an entry whose pfile name did not
    /// change is not even copied (a save after the reload writes only what
    /// changed, not 10,000 entries). The entries are moved out of `config`,
    /// not cloned.
    fn keep_entries(&mut self, config: &mut Config) {
        let mut entries = Vec::with_capacity(self.watches.len());
        for pfile in &mut config.pfiles {
            for entry in std::mem::take(&mut pfile.entries) {
                let i = entries.len();
                if self.watches[i].pfile != pfile.name {
                    self.watches[i].pfile = pfile.name.clone();
                }
                entries.push(entry);
            }
        }
        self.config = Arc::new(entries);
    }

    /// Entries added, removed or moved: each keeps its state and members
    /// under its new place, by path.
    fn remap_entries(&mut self, config: &Config, out: &mut Vec<Effect>) {
        let mut old: HashMap<PathBuf, (EntryId, Watch)> = self
            .watches
            .take_all()
            .enumerate()
            .map(|(i, w)| (w.path.clone(), (EntryId::at(i), w)))
            .collect();
        let mut remap: HashMap<EntryId, EntryId> = HashMap::new();
        let mut entries = Vec::with_capacity(config.entries().count());
        for (pfile, entry) in config.entries() {
            let id = EntryId(self.watches.len() as u32);
            let w = match old.remove(&entry.path) {
                Some((was, mut w)) => {
                    remap.insert(was, id);
                    w.pfile = pfile.name.clone();
                    w
                }
                None => Watch::new(pfile.name.clone(), entry.path.clone()),
            };
            self.watches.push(w);
            entries.push(entry.clone());
        }
        self.config = Arc::new(entries);
        let dropped: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, m)| !remap.contains_key(&m.entry))
            .map(|(tgid, _)| *tgid)
            .collect();
        for tgid in dropped {
            // No longer watched: stop waiting for its exit.
            if let Some(m) = self.members.remove(&tgid) {
                if m.exit_watched {
                    out.push(Effect::UnwatchExit { tgid });
                }
                out.push(Effect::FilterTgid { tgid, watch: false });
            }
            self.missed.remove(&tgid);
        }
        for m in self.members.values_mut() {
            m.entry = remap[&m.entry];
        }
        let members = &self.members;
        self.causes.retain(|tgid, _| members.contains_key(tgid));
    }
}
