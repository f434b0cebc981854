//! `psmon trace`: a live fork/exec/exit stream for debugging process churn,
//! with filters, JSON lines, lost-event counts and a churn summary.
//!
//! It owns formatting, filtering and the churn statistics; events come from
//! whichever `source` was opened, unfiltered in the kernel unless
//! `--kernel-filter` asks for it. `filter` decides what is shown, `output`
//! writes each event, `churn` keeps the statistics.

use std::{io::Write, time::Duration};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod churn;
mod filter;
mod output;

use churn::Churn;
use filter::Selection;
use output::write_event;

use crate::{
    error::UsageError,
    event::EventKind,
    source::{self, SourceChoice, SourceOptions},
};

/// Which kinds of event `psmon trace` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFilter {
    /// A new process.
    Fork,
    /// An exec.
    Exec,
    /// An exit.
    Exit,
    /// Signals that end a process by default, with their sender (ebpf
    /// source only; shown only when asked for).
    Signal,
}

/// What `psmon trace` is told on its command line.
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
    /// Events shown.
    pub shown: u64,
    /// Events the source lost.
    pub lost: u64,
}

/// `psmon trace`: shows events until `shutdown`.
pub async fn run(opts: TraceOptions, shutdown: CancellationToken) -> anyhow::Result<Totals> {
    let mut filter = Selection::new(&opts);
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

#[cfg(test)]
mod tests;
