//! Which events `psmon trace` shows: `--pid` trees, `--comm`, `--path`
//! globs, `--event` kinds; a running psmon's canaries never.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use super::{EventFilter, TraceOptions};
use crate::event::{EventKind, ProcEvent};

pub(super) struct Selection {
    /// `--pid` roots and, unless `children_only`, every descendant seen
    /// since (followed through fork events, seeded from `/proc`).
    tree: HashSet<u32>,
    roots: Vec<u32>,
    children_only: bool,
    comms: Vec<String>,
    paths: Vec<glob::Pattern>,
    events: Vec<EventFilter>,
    /// Exec paths with symlinks resolved, so `--path` means the same on
    /// every source (ebpf reports the exec argument, netlink the file).
    resolved: HashMap<PathBuf, Option<PathBuf>>,
    /// A running psmon's self-check canaries: never shown.
    canaries: HashSet<u32>,
}

impl Selection {
    pub(super) fn new(opts: &TraceOptions) -> Self {
        let mut paths = opts.path.clone();
        // A literal path also matches the file it names (`/bin/true` is
        // `/usr/bin/true` on a merged-/usr system).
        for p in &opts.path {
            if !p.as_str().contains(['*', '?', '[']) {
                let real = std::fs::canonicalize(p.as_str()).ok().and_then(|r| {
                    glob::Pattern::new(&glob::Pattern::escape(&r.to_string_lossy())).ok()
                });
                if let Some(real) = real.filter(|r| r.as_str() != p.as_str()) {
                    paths.push(real);
                }
            }
        }
        let mut tree: HashSet<u32> = opts.pid.iter().copied().collect();
        if !opts.children_only && !tree.is_empty() {
            tree.extend(descendants(&opts.pid));
        }
        Selection {
            tree,
            roots: opts.pid.clone(),
            children_only: opts.children_only,
            comms: opts.comm.clone(),
            paths,
            events: opts.event.clone(),
            resolved: HashMap::new(),
            canaries: HashSet::new(),
        }
    }

    /// What the filters select, for the churn summary's header.
    pub(super) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.roots.is_empty() {
            let pids: Vec<String> = self.roots.iter().map(u32::to_string).collect();
            let what = if self.children_only {
                "and children"
            } else {
                "and descendants"
            };
            parts.push(format!("pid {} {what}", pids.join(",")));
        }
        if !self.comms.is_empty() {
            parts.push(format!("comm {}", self.comms.join(",")));
        }
        if !self.paths.is_empty() {
            let globs: Vec<&str> = self.paths.iter().map(glob::Pattern::as_str).collect();
            parts.push(format!("path {}", globs.join(",")));
        }
        if !self.events.is_empty() {
            let kinds: Vec<&str> = self
                .events
                .iter()
                .map(|e| match e {
                    EventFilter::Fork => "fork",
                    EventFilter::Exec => "exec",
                    EventFilter::Exit => "exit",
                    EventFilter::Signal => "signal",
                })
                .collect();
            parts.push(format!("event {}", kinds.join(",")));
        }
        if parts.is_empty() {
            "all processes".into()
        } else {
            parts.join("; ")
        }
    }

    pub(super) fn matches(&mut self, event: &ProcEvent) -> bool {
        let (kind, p) = match &event.kind {
            EventKind::Lost { .. } => return true, // never hidden
            EventKind::Signal(s) => {
                let inside = self.roots.is_empty()
                    || self.roots.contains(&s.target)
                    || self.tree.contains(&s.target);
                return inside && self.events.contains(&EventFilter::Signal);
            }
            EventKind::Fork(p) => (EventFilter::Fork, p),
            EventKind::Exec(p) => (EventFilter::Exec, p),
            EventKind::Exit { process, .. } => (EventFilter::Exit, process),
        };
        if self.is_canary(kind, p) {
            return false;
        }
        let in_tree = if self.roots.is_empty() {
            true
        } else if self.children_only {
            self.roots.iter().any(|&n| p.tgid == n || p.ppid == n)
        } else {
            if kind == EventFilter::Fork && self.tree.contains(&p.ppid) {
                self.tree.insert(p.tgid);
            }
            let inside = self.tree.contains(&p.tgid);
            if kind == EventFilter::Exit && !self.roots.contains(&p.tgid) {
                self.tree.remove(&p.tgid);
            }
            inside
        };
        in_tree
            && (self.events.is_empty() || self.events.contains(&kind))
            && (self.comms.is_empty() || self.comms.iter().any(|c| comm_eq(c, &p.comm)))
            && (self.paths.is_empty()
                || p.path.as_ref().is_some_and(|path| self.path_matches(path)))
    }

    /// A psmon self-check's canary (named so in its fork event; its exit
    /// may come when the name can no longer be read).
    pub(super) fn is_canary(&mut self, kind: EventFilter, p: &crate::event::Process) -> bool {
        let named = crate::self_check::is_canary_comm(&p.comm);
        match kind {
            EventFilter::Fork if named => {
                if self.canaries.len() >= 64 {
                    self.canaries.clear();
                }
                self.canaries.insert(p.tgid);
                true
            }
            EventFilter::Exit => self.canaries.remove(&p.tgid) || named,
            _ => named,
        }
    }

    pub(super) fn path_matches(&mut self, path: &Path) -> bool {
        if self.paths.iter().any(|g| g.matches_path(path)) {
            return true;
        }
        if self.resolved.len() > 4096 {
            self.resolved.clear();
        }
        let real = self
            .resolved
            .entry(path.to_path_buf())
            .or_insert_with(|| std::fs::canonicalize(path).ok());
        real.as_ref()
            .is_some_and(|r| r != path && self.paths.iter().any(|g| g.matches_path(r)))
    }
}

/// Every live descendant of `roots`, from one walk of `/proc`.
pub(super) fn descendants(roots: &[u32]) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in crate::proc::snapshot() {
        children.entry(e.ppid).or_default().push(e.tgid);
    }
    let mut found = HashSet::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if found.insert(*child) {
                todo.push(*child);
            }
        }
    }
    found
}

/// `comm` holds at most 15 bytes, so a longer name matches its truncation.
pub(super) fn comm_eq(wanted: &str, comm: &str) -> bool {
    let cut = wanted.len().min(15);
    wanted == comm || (wanted.len() > 15 && wanted.as_bytes()[..cut] == *comm.as_bytes())
}
