//! Churn statistics over a window: who forks, execs and exits most, and
//! the shortest-lived.

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::output::format_duration;
use crate::event::{EventKind, ProcEvent};

/// The largest counts, most first (ties by name).
pub(super) fn top(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut top: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(Churn::TOP);
    top
}

/// Churn statistics over a window of time.
pub(super) struct Churn {
    /// What the filters select (the summary counts only that).
    scope: String,
    started: Instant,
    forks: u64,
    execs: u64,
    exits: u64,
    lost: u64,
    lost_unknown: u64,
    /// Execs by executable path; by `[comm]` when the path could not be
    /// read and no exec of that name showed one.
    execs_by_exe: HashMap<String, u64>,
    /// Fatal-by-default signals by sender, `comm[pid]`.
    kills_by_sender: HashMap<String, u64>,
    /// Execs of which neither path nor name could be read.
    pub(super) unknown_execs: u64,
    /// The path last seen for each name, for execs whose path is unknown.
    path_of_comm: HashMap<String, String>,
    /// Exec paths with symlinks resolved.
    resolved: HashMap<PathBuf, String>,
    /// The shortest-lived exits seen: (lifetime, pid, name), sorted, at most `SHORTEST`.
    pub(super) shortest: Vec<(Duration, u32, String)>,
}

impl Churn {
    pub(super) const TOP: usize = 5;

    pub(super) fn new(scope: &str) -> Self {
        Churn {
            scope: scope.to_string(),
            started: Instant::now(),
            forks: 0,
            execs: 0,
            exits: 0,
            lost: 0,
            lost_unknown: 0,
            execs_by_exe: HashMap::new(),
            kills_by_sender: HashMap::new(),
            unknown_execs: 0,
            path_of_comm: HashMap::new(),
            resolved: HashMap::new(),
            shortest: Vec::new(),
        }
    }

    pub(super) fn count(&mut self, event: &ProcEvent) {
        match &event.kind {
            EventKind::Fork(_) => self.forks += 1,
            EventKind::Exec(p) => {
                self.execs += 1;
                let key = match (&p.path, p.comm.is_empty()) {
                    (Some(path), _) => {
                        // The file, not the name it was exec'd by: sources
                        // differ there (ebpf: `/bin/true`, netlink: `/usr/bin/true`).
                        if self.resolved.len() > 4096 {
                            self.resolved.clear();
                        }
                        let path = self
                            .resolved
                            .entry(path.clone())
                            .or_insert_with(|| {
                                std::fs::canonicalize(path)
                                    .unwrap_or_else(|_| path.clone())
                                    .display()
                                    .to_string()
                            })
                            .clone();
                        if !p.comm.is_empty() && self.path_of_comm.len() < 4096 {
                            self.path_of_comm.insert(p.comm.clone(), path.clone());
                        }
                        path
                    }
                    (None, false) => match self.path_of_comm.get(&p.comm) {
                        Some(path) => path.clone(),
                        None => format!("[{}]", p.comm),
                    },
                    (None, true) => {
                        self.unknown_execs += 1;
                        return;
                    }
                };
                *self.execs_by_exe.entry(key).or_default() += 1;
            }
            EventKind::Exit { process, .. } => {
                self.exits += 1;
                if let Some(life) = event.lifetime() {
                    let full = self.shortest.len() >= Self::TOP;
                    if !full || life < self.shortest[Self::TOP - 1].0 {
                        let name = if process.comm.is_empty() {
                            "-".to_string()
                        } else {
                            process.comm.clone()
                        };
                        let at = self.shortest.partition_point(|s| s.0 <= life);
                        self.shortest.insert(at, (life, process.tgid, name));
                        self.shortest.truncate(Self::TOP);
                    }
                }
            }
            EventKind::Signal(s) => {
                let who = if s.oom {
                    "the OOM killer".to_string()
                } else {
                    format!("{}[{}]", s.sender.comm, s.sender.pid)
                };
                if self.kills_by_sender.len() < 4096 || self.kills_by_sender.contains_key(&who) {
                    *self.kills_by_sender.entry(who).or_default() += 1;
                }
            }
            EventKind::Lost { count: Some(n) } => self.lost += n,
            EventKind::Lost { count: None } => self.lost_unknown += 1,
        }
    }

    /// Who sent the most fatal-by-default signals.
    pub(super) fn top_killers(&self) -> Vec<(&str, u64)> {
        top(&self.kills_by_sender)
    }

    pub(super) fn top_execs(&self) -> Vec<(&str, u64)> {
        top(&self.execs_by_exe)
    }

    pub(super) fn print(
        &self,
        out: &mut impl Write,
        json: bool,
        label: &str,
    ) -> anyhow::Result<()> {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = |n: u64| n as f64 / secs;
        if json {
            let obj = json!({
                "event": label,
                "scope": self.scope,
                "seconds": secs,
                "unknown_execs": self.unknown_execs,
                "forks": self.forks, "execs": self.execs, "exits": self.exits,
                "fork_per_s": rate(self.forks), "exec_per_s": rate(self.execs),
                "exit_per_s": rate(self.exits),
                "lost": self.lost, "lost_overflows": self.lost_unknown,
                "top_execs": self.top_execs().iter()
                    .map(|(exe, n)| json!({"path": exe, "execs": n, "per_s": rate(*n)}))
                    .collect::<Vec<Value>>(),
                "top_killers": self.top_killers().iter()
                    .map(|(who, n)| json!({"sender": who, "signals": n}))
                    .collect::<Vec<Value>>(),
                "shortest_lived": self.shortest.iter()
                    .map(|(d, pid, comm)| json!({"pid": pid, "comm": comm, "lifetime_ms": d.as_secs_f64() * 1e3}))
                    .collect::<Vec<Value>>(),
            });
            serde_json::to_writer(&mut *out, &obj)?;
            writeln!(out)?;
            return Ok(());
        }
        writeln!(
            out,
            "--- {label} of {} over {secs:.1}s: {:.1} fork/s  {:.1} exec/s  {:.1} exit/s  lost {}{}",
            self.scope,
            rate(self.forks),
            rate(self.execs),
            rate(self.exits),
            self.lost,
            if self.lost_unknown > 0 {
                format!(" (+{} receive overflows)", self.lost_unknown)
            } else {
                String::new()
            }
        )?;
        let top = self.top_execs();
        if !top.is_empty() {
            let list: Vec<String> = top
                .iter()
                .map(|(exe, n)| format!("{exe} {:.1}/s", rate(*n)))
                .collect();
            writeln!(out, "    top execs: {}", list.join(", "))?;
        }
        let killers = self.top_killers();
        if !killers.is_empty() {
            let list: Vec<String> = killers
                .iter()
                .map(|(who, n)| format!("{who} {n}"))
                .collect();
            writeln!(out, "    who kills most: {}", list.join(", "))?;
        }
        if self.unknown_execs > 0 {
            writeln!(
                out,
                "    execs of unknown executables (gone before they could be read): {}",
                self.unknown_execs
            )?;
        }
        if !self.shortest.is_empty() {
            let list: Vec<String> = self
                .shortest
                .iter()
                .map(|(d, pid, comm)| format!("{comm}[{pid}] {}", format_duration(*d)))
                .collect();
            writeln!(out, "    shortest-lived: {}", list.join(", "))?;
        }
        Ok(())
    }
}
