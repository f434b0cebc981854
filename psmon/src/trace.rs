//! `psmon trace`: a live fork/exec/exit stream for debugging process churn,
//! with filters, JSON lines, lost-event counts and a churn summary.
//!
//! It owns formatting, filtering and the churn statistics; events come from
//! whichever `source` was opened, unfiltered in the kernel unless
//! `--kernel-filter` asks for it.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    error::UsageError,
    event::{EventKind, ExitStatus, ProcEvent, monotonic_ns},
    source::{self, SourceChoice, SourceOptions},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFilter {
    Fork,
    Exec,
    Exit,
    /// Signals that end a process by default, with their sender (ebpf
    /// source only; shown only when asked for).
    Signal,
}

#[derive(Debug, clap::Args)]
pub struct TraceOptions {
    /// Where events come from; `auto` tries ebpf, then netlink, then poll.
    #[arg(long, value_enum, default_value = "auto")]
    pub source: SourceChoice,
    /// Only this process and its descendants, followed as they fork (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// With --pid: only the process and its direct children.
    #[arg(long, requires = "pid")]
    pub children_only: bool,
    /// Only processes with this command name (`comm`, at most 15 bytes; repeatable).
    #[arg(long)]
    pub comm: Vec<String>,
    /// Only processes whose executable matches this glob, as exec'd or
    /// with symlinks resolved (`/bin/true` finds `/usr/bin/true`; repeatable).
    #[arg(long, value_parser = parse_glob)]
    pub path: Vec<glob::Pattern>,
    /// Only these kinds of event (repeatable).
    #[arg(long, value_enum)]
    pub event: Vec<EventFilter>,
    /// One JSON object per line instead of columns.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Print a churn summary every SECS seconds (default 5), of the events
    /// the filters select.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5", value_parser = parse_secs)]
    pub stats: Option<f64>,
    /// ebpf only: apply --comm and --pid in the kernel, so other processes
    /// never wake psmon (children of matched processes are included).
    #[arg(long)]
    pub kernel_filter: bool,
    /// ebpf ring buffer size in KiB.
    #[arg(long, value_name = "KIB", default_value_t = psmon_ebpf::DEFAULT_RING_BYTES / 1024,
          value_parser = clap::value_parser!(u32).range(4..=1 << 20))]
    pub ring_kib: u32,
    /// netlink socket receive buffer in KiB.
    #[arg(long, value_name = "KIB", default_value_t = source::netlink::DEFAULT_RCVBUF / 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(4..=1 << 20))]
    pub rcvbuf_kib: usize,
    /// poll scan interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub poll_interval: u64,
    /// Bound of the queue between the source and the printer; overflow is reported as lost.
    #[arg(long, value_name = "EVENTS", default_value_t = 16384,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1 << 24))]
    pub queue: usize,
    /// During a burst, read events in batches this many milliseconds apart
    /// (less CPU; the first event of a burst is read at once, later ones wait
    /// up to this long); 0 reads each event at once.
    #[arg(long, value_name = "MS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub coalesce_ms: u64,
}

/// Counts for the final summary of a trace.
#[derive(Debug, Default)]
pub struct Totals {
    pub shown: u64,
    pub lost: u64,
}

pub async fn run(opts: TraceOptions, shutdown: CancellationToken) -> anyhow::Result<Totals> {
    let mut filter = Filter::new(&opts);
    let options = SourceOptions {
        ring_bytes: opts.ring_kib.saturating_mul(1024),
        netlink_rcvbuf: opts.rcvbuf_kib.saturating_mul(1024),
        poll_interval: Duration::from_millis(opts.poll_interval.max(10)),
        kernel_filter: opts.kernel_filter,
        coalesce: Duration::from_millis(opts.coalesce_ms),
    };
    if opts.kernel_filter && opts.comm.is_empty() && opts.pid.is_empty() {
        return Err(UsageError::new(
            "--kernel-filter needs --comm or --pid to say what to let through",
        )
        .into());
    }
    let opened = source::open(opts.source, &options)?;
    for refusal in &opened.refused {
        tracing::warn!("{refusal:#}");
    }
    let mut src = opened.source;
    tracing::info!(source = %src.kind(), "tracing process events");
    if opts.kernel_filter {
        let source::Source::Ebpf(ebpf) = &mut src else {
            bail!(
                "--kernel-filter needs the ebpf source, but {} was opened",
                src.kind()
            );
        };
        let mut kernel = ebpf.take_filter().context("the kernel filter is missing")?;
        for comm in &opts.comm {
            kernel
                .watch_comm(comm)
                .context("filling the kernel filter")?;
        }
        for pid in &opts.pid {
            kernel
                .watch_tgid(*pid)
                .context("filling the kernel filter")?;
        }
    }

    let (tx, mut rx) = mpsc::channel(opts.queue.max(16));
    let token = shutdown.child_token();
    let source_task = tokio::spawn(src.run(tx, token.clone()));

    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut totals = Totals::default();
    let scope = filter.describe();
    let mut window = Churn::new(&scope);
    let mut whole = Churn::new(&scope);
    let stats_every = opts.stats.map(|s| Duration::from_secs_f64(s.max(0.1)));
    let mut stats_tick = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;
    let deadline = opts.duration.map(|d| Duration::from_secs_f64(d.max(0.0)));
    let stop_at = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u32::MAX as u64)));
    tokio::pin!(stop_at);

    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = &mut stop_at => break Ok(()),
            _ = stats_tick.tick(), if stats_every.is_some() => {
                window.print(&mut out, opts.json, "stats")?;
                out.flush()?;
                window = Churn::new(&scope);
            }
            event = rx.recv() => {
                let Some(event) = event else {
                    // The source ended on its own: that is an error worth showing.
                    break match source_task.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(anyhow::Error::new(e)),
                        Err(e) => Err(anyhow::Error::new(e)),
                    };
                };
                let mut next = Some(event);
                // Drain what is queued before flushing: one write per burst.
                while let Some(event) = next {
                    if let EventKind::Lost { count } = event.kind {
                        totals.lost += count.unwrap_or(0);
                    }
                    if filter.matches(&event) {
                        window.count(&event);
                        whole.count(&event);
                        totals.shown += 1;
                        write_event(&mut out, &event, opts.json)?;
                    }
                    next = rx.try_recv().ok();
                }
                out.flush()?;
            }
        }
    };
    token.cancel();
    whole.print(&mut out, opts.json, "summary")?;
    out.flush()?;
    end.map(|()| totals)
}

struct Filter {
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

/// Seconds: a finite number above zero, at most a year.
fn parse_secs(text: &str) -> Result<f64, String> {
    const YEAR: f64 = 365.0 * 86400.0;
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= YEAR => Ok(s),
        Ok(_) => Err(format!("expected seconds above 0 and at most {YEAR}")),
        Err(e) => Err(format!("not a number of seconds: {e}")),
    }
}

fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("not a valid glob: {e}"))
}

impl Filter {
    fn new(opts: &TraceOptions) -> Self {
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
        Filter {
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
    fn describe(&self) -> String {
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

    fn matches(&mut self, event: &ProcEvent) -> bool {
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
    fn is_canary(&mut self, kind: EventFilter, p: &crate::event::Process) -> bool {
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

    fn path_matches(&mut self, path: &Path) -> bool {
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
fn descendants(roots: &[u32]) -> HashSet<u32> {
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
fn comm_eq(wanted: &str, comm: &str) -> bool {
    let cut = wanted.len().min(15);
    wanted == comm || (wanted.len() > 15 && wanted.as_bytes()[..cut] == *comm.as_bytes())
}

/// Wall-clock time of an event, from its monotonic timestamp.
fn wall_time(event: &ProcEvent) -> SystemTime {
    let at = event.time.kernel_ns.unwrap_or(event.time.received_ns);
    SystemTime::now() - Duration::from_nanos(monotonic_ns().saturating_sub(at))
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().trim_start_matches("SIG").to_string())
        .unwrap_or_else(|_| signal.to_string())
}

fn write_event(out: &mut impl Write, event: &ProcEvent, json: bool) -> anyhow::Result<()> {
    let time = humantime::format_rfc3339_micros(wall_time(event)).to_string();
    if json {
        let mut obj = json!({ "time": time, "event": event.name() });
        let map = obj.as_object_mut().expect("an object");
        if let EventKind::Lost { count } = event.kind {
            map.insert("count".into(), json!(count));
        }
        if let EventKind::Signal(s) = &event.kind {
            map.insert("pid".into(), json!(s.target));
            map.insert("signal".into(), json!(s.signal));
            map.insert("oom".into(), json!(s.oom));
            map.insert("si_code".into(), json!(s.code));
            map.insert("sender".into(), json!(s.sender));
        }
        if let Some(p) = event.process() {
            map.insert("pid".into(), json!(p.tgid));
            map.insert("tid".into(), json!(p.pid));
            map.insert("ppid".into(), json!(p.ppid));
            // Unknown (the process was gone before it could be read): null.
            map.insert(
                "comm".into(),
                json!((!p.comm.is_empty()).then_some(&p.comm)),
            );
            map.insert("path".into(), json!(p.path));
            map.insert("start_ticks".into(), json!(p.start.map(|s| s.ticks())));
        }
        if let EventKind::Exit { status, .. } = event.kind {
            let (code, signal, core) = match status {
                ExitStatus::Code(c) => (Some(c), None, false),
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => (None, Some(signal), core_dumped),
                ExitStatus::Unknown => (None, None, false),
            };
            map.insert("exit_code".into(), json!(code));
            map.insert("signal".into(), json!(signal));
            map.insert("core_dumped".into(), json!(core));
            map.insert(
                "lifetime_ms".into(),
                json!(event.lifetime().map(|d| d.as_secs_f64() * 1e3)),
            );
        }
        map.insert("kernel_ns".into(), json!(event.time.kernel_ns));
        map.insert("received_ns".into(), json!(event.time.received_ns));
        map.insert("cpu".into(), json!(event.time.cpu));
        serde_json::to_writer(&mut *out, &obj)?;
        writeln!(out)?;
        return Ok(());
    }
    let clock = &time[11..time.len() - 1]; // HH:MM:SS.uuuuuu of the UTC stamp
    let Some(p) = event.process() else {
        match &event.kind {
            EventKind::Lost { count: Some(n) } => writeln!(out, "{clock} LOST   {n} events lost")?,
            EventKind::Lost { count: None } => {
                writeln!(out, "{clock} LOST   events lost (count follows)")?
            }
            EventKind::Signal(s) => {
                let what = if s.oom {
                    "chosen by the OOM killer".to_string()
                } else {
                    format!("{} from", signal_name(s.signal))
                };
                writeln!(
                    out,
                    "{clock} signal {:>7} {what} pid {} '{}' uid {}{}",
                    s.target,
                    s.sender.pid,
                    s.sender.comm,
                    s.sender.uid,
                    s.sender
                        .parent
                        .as_ref()
                        .map(|(pid, comm)| format!(", parent '{comm}' pid {pid}"))
                        .unwrap_or_default()
                )?
            }
            _ => {}
        }
        return Ok(());
    };
    let path = p
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let comm = if p.comm.is_empty() { "-" } else { &p.comm };
    write!(
        out,
        "{clock} {:<6} {:>7} {:>7} {:<15} {}",
        event.name(),
        p.tgid,
        p.ppid,
        comm,
        path
    )?;
    if let EventKind::Exit { status, .. } = event.kind {
        match status {
            ExitStatus::Code(c) => write!(out, "  code={c}")?,
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                write!(out, "  signal={}", signal_name(signal))?;
                if core_dumped {
                    write!(out, " (core dumped)")?;
                }
            }
            ExitStatus::Unknown => write!(out, "  status=unknown")?,
        }
        if let Some(life) = event.lifetime() {
            write!(out, "  lived={}", format_duration(life))?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{:.0}us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else {
        format!("{secs:.2}s")
    }
}

/// The largest counts, most first (ties by name).
fn top(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut top: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(Churn::TOP);
    top
}

/// Churn statistics over a window of time.
struct Churn {
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
    unknown_execs: u64,
    /// The path last seen for each name, for execs whose path is unknown.
    path_of_comm: HashMap<String, String>,
    /// Exec paths with symlinks resolved.
    resolved: HashMap<PathBuf, String>,
    /// The shortest-lived exits seen: (lifetime, pid, name), sorted, at most `SHORTEST`.
    shortest: Vec<(Duration, u32, String)>,
}

impl Churn {
    const TOP: usize = 5;

    fn new(scope: &str) -> Self {
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

    fn count(&mut self, event: &ProcEvent) {
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
    fn top_killers(&self) -> Vec<(&str, u64)> {
        top(&self.kills_by_sender)
    }

    fn top_execs(&self) -> Vec<(&str, u64)> {
        top(&self.execs_by_exe)
    }

    fn print(&self, out: &mut impl Write, json: bool, label: &str) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventTime, Process, StartTime};

    fn exit(tgid: u32, ppid: u32, comm: &str, path: &str) -> ProcEvent {
        let process = Process {
            tgid,
            pid: tgid,
            ppid,
            start: Some(StartTime::from_ns(0)),
            comm: comm.into(),
            path: Some(path.into()),
        };
        ProcEvent::new(
            EventKind::Exit {
                process,
                status: ExitStatus::Code(0),
            },
            EventTime::now(None, None),
        )
    }

    fn filter(args: &[&str]) -> Filter {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            trace: TraceOptions,
        }
        let cli = Cli::parse_from(std::iter::once("trace").chain(args.iter().copied()));
        Filter::new(&cli.trace)
    }

    fn fork(tgid: u32, ppid: u32) -> ProcEvent {
        let process = Process {
            tgid,
            pid: tgid,
            ppid,
            start: Some(StartTime::from_ns(0)),
            comm: "x".into(),
            path: Some("/x".into()),
        };
        ProcEvent::new(EventKind::Fork(process), EventTime::now(None, None))
    }

    #[test]
    fn a_running_psmons_canaries_are_never_shown() {
        let mut f = filter(&[]);
        let mut canary = fork(4000010, 4000000);
        if let EventKind::Fork(p) = &mut canary.kind {
            p.comm = crate::self_check::CANARY_COMM.into();
        }
        assert!(!f.matches(&canary));
        assert!(
            !f.matches(&exit(4000010, 4000000, "psmon", "/usr/bin/psmon")),
            "its exit, named by its parent once it was reaped"
        );
        assert!(
            f.matches(&exit(4000010, 4000000, "x", "/x")),
            "the pid reused"
        );
        assert!(f.matches(&fork(4000011, 4000000)));
    }

    #[test]
    fn pid_follows_the_whole_tree() {
        // Pid numbers far above any real one: nothing in /proc descends from them.
        let mut f = filter(&["--pid", "4000000"]);
        assert!(f.matches(&fork(4000001, 4000000)));
        assert!(f.matches(&fork(4000002, 4000001)), "a grandchild");
        assert!(f.matches(&exit(4000002, 4000001, "x", "/x")));
        assert!(
            !f.matches(&fork(4000003, 4000002)),
            "its exit left the tree"
        );
        let mut f = filter(&["--pid", "4000000", "--children-only"]);
        assert!(f.matches(&fork(4000001, 4000000)));
        assert!(!f.matches(&fork(4000002, 4000001)));
        // This test's own process is found below its parent at start.
        let parent = std::os::unix::process::parent_id();
        let mut f = filter(&["--pid", &parent.to_string()]);
        assert!(f.matches(&exit(std::process::id(), 0, "x", "/x")));
    }

    #[test]
    fn path_matches_the_file_as_exec_d_or_resolved() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let real = sh.to_str().unwrap().to_string();
        // Given the link, events naming the file match, and the other way round.
        assert!(filter(&["--path", "/bin/sh"]).matches(&exit(1, 0, "sh", &real)));
        assert!(filter(&["--path", &real]).matches(&exit(1, 0, "sh", "/bin/sh")));
        assert!(!filter(&["--path", "/bin/true"]).matches(&exit(1, 0, "sh", "/bin/sh")));
    }

    #[test]
    fn stats_keep_unknown_executables_apart() {
        let mut churn = Churn::new("all processes");
        let exec = |comm: &str, path: Option<&str>| {
            let process = Process {
                tgid: 9,
                pid: 9,
                ppid: 1,
                start: None,
                comm: comm.into(),
                path: path.map(Into::into),
            };
            ProcEvent::new(EventKind::Exec(process), EventTime::now(None, None))
        };
        churn.count(&exec("true", Some("/usr/bin/true")));
        churn.count(&exec("true", None));
        churn.count(&exec("", None));
        churn.count(&exec("mystery", None));
        assert_eq!(
            churn.top_execs(),
            vec![("/usr/bin/true", 2), ("[mystery]", 1)]
        );
        assert_eq!(churn.unknown_execs, 1);
    }

    #[test]
    fn filters_combine() {
        let ev = exit(10, 1, "sleep", "/usr/bin/sleep");
        assert!(filter(&[]).matches(&ev));
        assert!(filter(&["--pid", "10"]).matches(&ev));
        assert!(
            filter(&["--pid", "1", "--children-only"]).matches(&ev),
            "children of --pid match"
        );
        assert!(!filter(&["--pid", "11"]).matches(&ev));
        assert!(filter(&["--comm", "sleep", "--path", "/usr/*/sl*"]).matches(&ev));
        assert!(!filter(&["--comm", "sleep", "--path", "/bin/*"]).matches(&ev));
        assert!(!filter(&["--event", "exec"]).matches(&ev));
        assert!(filter(&["--event", "exec", "--event", "exit"]).matches(&ev));
        assert!(filter(&["--comm", "nope"]).matches(&ProcEvent::lost(Some(3))));
    }

    #[test]
    fn long_comm_matches_its_truncation() {
        assert!(comm_eq("a-very-long-daemon", "a-very-long-dae"));
        assert!(!comm_eq("short", "shorter"));
    }

    #[test]
    fn shortest_lived_keeps_the_smallest() {
        let mut churn = Churn::new("all processes");
        for (i, ms) in [50u64, 10, 30, 70, 20, 60, 40].iter().enumerate() {
            let mut ev = exit(i as u32, 1, "x", "/x");
            ev.time.boot_ns = ms * 1_000_000;
            churn.count(&ev);
        }
        let got: Vec<u128> = churn.shortest.iter().map(|s| s.0.as_millis()).collect();
        assert_eq!(got, vec![10, 20, 30, 40, 50]);
    }
}
