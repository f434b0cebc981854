//! `psmon trace`: a live fork/exec/exit stream for debugging process churn,
//! with filters, JSON lines, lost-event counts and a churn summary.
//!
//! It owns formatting, filtering and the churn statistics; events come from
//! whichever `source` was opened, unfiltered in the kernel unless
//! `--kernel-filter` asks for it.

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::UsageError,
    event::{EventKind, ExitStatus, ProcEvent, monotonic_ns},
    source::{self, SourceChoice, SourceOptions},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFilter {
    Fork,
    Exec,
    Exit,
}

#[derive(Debug, clap::Args)]
pub struct TraceOptions {
    /// Where events come from; `auto` tries ebpf, then netlink, then poll.
    #[arg(long, value_enum, default_value = "auto")]
    pub source: SourceChoice,
    /// Only this process and its children (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Only processes with this command name (`comm`, at most 15 bytes; repeatable).
    #[arg(long)]
    pub comm: Vec<String>,
    /// Only processes whose executable path matches this glob (repeatable).
    #[arg(long, value_parser = parse_glob)]
    pub path: Vec<glob::Pattern>,
    /// Only these kinds of event (repeatable).
    #[arg(long, value_enum)]
    pub event: Vec<EventFilter>,
    /// One JSON object per line instead of columns.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print a churn summary every SECS seconds (default 5).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
    pub stats: Option<f64>,
    /// ebpf only: apply --comm and --pid in the kernel, so other processes
    /// never wake psmon (children of matched processes are included).
    #[arg(long)]
    pub kernel_filter: bool,
    /// ebpf ring buffer size in KiB.
    #[arg(long, value_name = "KIB", default_value_t = psmon_ebpf::DEFAULT_RING_BYTES / 1024)]
    pub ring_kib: u32,
    /// netlink socket receive buffer in KiB.
    #[arg(long, value_name = "KIB", default_value_t = source::netlink::DEFAULT_RCVBUF / 1024)]
    pub rcvbuf_kib: usize,
    /// poll scan interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_interval: u64,
    /// Bound of the queue between the source and the printer; overflow is reported as lost.
    #[arg(long, value_name = "EVENTS", default_value_t = 16384)]
    pub queue: usize,
    /// During a burst, read events in batches this many milliseconds apart
    /// (less CPU; the first event of a burst is read at once, later ones wait
    /// up to this long); 0 reads each event at once.
    #[arg(long, value_name = "MS", default_value_t = 1)]
    pub coalesce_ms: u64,
}

/// Counts for the final summary of a trace.
#[derive(Debug, Default)]
pub struct Totals {
    pub shown: u64,
    pub lost: u64,
}

pub async fn run(opts: TraceOptions, shutdown: CancellationToken) -> anyhow::Result<Totals> {
    let filter = Filter::new(&opts);
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
    let mut window = Churn::new();
    let mut whole = Churn::new();
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
                window = Churn::new();
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
                    window.count(&event);
                    whole.count(&event);
                    if let EventKind::Lost { count } = event.kind {
                        totals.lost += count.unwrap_or(0);
                    }
                    if filter.matches(&event) {
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
    pids: Vec<u32>,
    comms: Vec<String>,
    paths: Vec<glob::Pattern>,
    events: Vec<EventFilter>,
}

fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("not a valid glob: {e}"))
}

impl Filter {
    fn new(opts: &TraceOptions) -> Self {
        Filter {
            pids: opts.pid.clone(),
            comms: opts.comm.clone(),
            paths: opts.path.clone(),
            events: opts.event.clone(),
        }
    }

    fn matches(&self, event: &ProcEvent) -> bool {
        let (kind, p) = match &event.kind {
            EventKind::Lost { .. } => return true, // never hidden
            EventKind::Fork(p) => (EventFilter::Fork, p),
            EventKind::Exec(p) => (EventFilter::Exec, p),
            EventKind::Exit { process, .. } => (EventFilter::Exit, process),
        };
        (self.events.is_empty() || self.events.contains(&kind))
            && (self.pids.is_empty() || self.pids.iter().any(|&n| p.tgid == n || p.ppid == n))
            && (self.comms.is_empty() || self.comms.iter().any(|c| comm_eq(c, &p.comm)))
            && (self.paths.is_empty()
                || p.path
                    .as_ref()
                    .is_some_and(|path| self.paths.iter().any(|g| g.matches_path(path))))
    }
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
        if let Some(p) = event.process() {
            map.insert("pid".into(), json!(p.tgid));
            map.insert("tid".into(), json!(p.pid));
            map.insert("ppid".into(), json!(p.ppid));
            map.insert("comm".into(), json!(p.comm));
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
        if let EventKind::Lost { count } = event.kind {
            match count {
                Some(n) => writeln!(out, "{clock} LOST   {n} events lost")?,
                None => writeln!(out, "{clock} LOST   events lost (count follows)")?,
            }
        }
        return Ok(());
    };
    let path = p
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    write!(
        out,
        "{clock} {:<6} {:>7} {:>7} {:<15} {}",
        event.name(),
        p.tgid,
        p.ppid,
        p.comm,
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

/// Churn statistics over a window of time.
struct Churn {
    started: Instant,
    forks: u64,
    execs: u64,
    exits: u64,
    lost: u64,
    lost_unknown: u64,
    execs_by_exe: HashMap<String, u64>,
    /// The shortest-lived exits seen: (lifetime, pid, name), sorted, at most `SHORTEST`.
    shortest: Vec<(Duration, u32, String)>,
}

impl Churn {
    const TOP: usize = 5;

    fn new() -> Self {
        Churn {
            started: Instant::now(),
            forks: 0,
            execs: 0,
            exits: 0,
            lost: 0,
            lost_unknown: 0,
            execs_by_exe: HashMap::new(),
            shortest: Vec::new(),
        }
    }

    fn count(&mut self, event: &ProcEvent) {
        match &event.kind {
            EventKind::Fork(_) => self.forks += 1,
            EventKind::Exec(p) => {
                self.execs += 1;
                let exe = p.path.as_ref().map(|x| x.display().to_string());
                *self
                    .execs_by_exe
                    .entry(exe.unwrap_or_else(|| p.comm.clone()))
                    .or_default() += 1;
            }
            EventKind::Exit { process, .. } => {
                self.exits += 1;
                if let Some(life) = event.lifetime() {
                    let full = self.shortest.len() >= Self::TOP;
                    if !full || life < self.shortest[Self::TOP - 1].0 {
                        let name = process.comm.clone();
                        let at = self.shortest.partition_point(|s| s.0 <= life);
                        self.shortest.insert(at, (life, process.tgid, name));
                        self.shortest.truncate(Self::TOP);
                    }
                }
            }
            EventKind::Lost { count: Some(n) } => self.lost += n,
            EventKind::Lost { count: None } => self.lost_unknown += 1,
        }
    }

    fn top_execs(&self) -> Vec<(&str, u64)> {
        let mut top: Vec<(&str, u64)> = self
            .execs_by_exe
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(Self::TOP);
        top
    }

    fn print(&self, out: &mut impl Write, json: bool, label: &str) -> anyhow::Result<()> {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = |n: u64| n as f64 / secs;
        if json {
            let obj = json!({
                "event": label,
                "seconds": secs,
                "forks": self.forks, "execs": self.execs, "exits": self.exits,
                "fork_per_s": rate(self.forks), "exec_per_s": rate(self.execs),
                "exit_per_s": rate(self.exits),
                "lost": self.lost, "lost_overflows": self.lost_unknown,
                "top_execs": self.top_execs().iter()
                    .map(|(exe, n)| json!({"path": exe, "execs": n, "per_s": rate(*n)}))
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
            "--- {label} over {secs:.1}s: {:.1} fork/s  {:.1} exec/s  {:.1} exit/s  lost {}{}",
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

    #[test]
    fn filters_combine() {
        let ev = exit(10, 1, "sleep", "/usr/bin/sleep");
        assert!(filter(&[]).matches(&ev));
        assert!(filter(&["--pid", "10"]).matches(&ev));
        assert!(
            filter(&["--pid", "1"]).matches(&ev),
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
        let mut churn = Churn::new();
        for (i, ms) in [50u64, 10, 30, 70, 20, 60, 40].iter().enumerate() {
            let mut ev = exit(i as u32, 1, "x", "/x");
            ev.time.boot_ns = ms * 1_000_000;
            churn.count(&ev);
        }
        let got: Vec<u128> = churn.shortest.iter().map(|s| s.0.as_millis()).collect();
        assert_eq!(got, vec![10, 20, 30, 40, 50]);
    }
}
