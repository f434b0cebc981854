//! What `/metrics` says, kept where the supervisor can update it without
//! ever waiting for a scrape: per entry a set of atomics, per source two
//! counters, two histograms. The supervisor stores; the endpoint's thread
//! reads and encodes (Prometheus/OpenMetrics text, by `prometheus-client`).
//!
//! Names follow Prometheus' conventions: `psmon_` prefix, counters end in
//! `_total`, times in seconds; psmon's own process metrics are the
//! standard `process_*` ones.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, histogram::Histogram},
    registry::Registry,
};

use crate::{
    clock::Time,
    facts::EntryId,
    monitor::crash_loop::CLASSES,
    monitor::{Monitor, Notice},
    policy::Action,
};

/// The states an entry can be in, as `psmon status` names them.
const STATES: [&str; 8] = [
    "unknown",
    "up",
    "down",
    "restarting",
    "retry_over",
    "failed_over",
    "paused",
    "retrying_slowly",
];

/// Detection and restart times: 50 µs to 10 s.
const BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// One entry's numbers.
#[derive(Debug)]
struct EntryCells {
    /// The entry's pfile and path, escaped as label values (which also
    /// tells entries apart: the escaping is one to one).
    pfile_label: String,
    path_label: String,
    state: AtomicU8,
    /// 0: no crash loop; else 1 + its index in [`CLASSES`].
    crash_loop: AtomicU8,
    instances: AtomicU32,
    attempts: AtomicU32,
    allowed: AtomicU32,
    downs: AtomicU64,
    restarts: AtomicU64,
    restart_failures: AtomicU64,
    retry_overs: AtomicU64,
    failovers: AtomicU64,
}

impl EntryCells {
    /// Cells for the entry whose label values are `pfile_label` and
    /// `path_label`.
    fn new(pfile_label: String, path_label: String) -> EntryCells {
        EntryCells {
            pfile_label,
            path_label,
            state: AtomicU8::new(0),
            crash_loop: AtomicU8::new(0),
            instances: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
            allowed: AtomicU32::new(0),
            downs: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            restart_failures: AtomicU64::new(0),
            retry_overs: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }
}

/// A label value as both exposition formats write it: `\`, `"` and
/// newline escaped (the encoder writes values as they are, and a path or
/// pfile name may hold any of them).
fn label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The event push's counts (all zero without PUSH_URL).
#[derive(Debug, Default)]
pub struct PushCells {
    /// Events waiting on disk for the receiver.
    pub waiting: AtomicU64,
    /// Events the receiver accepted.
    pub delivered: AtomicU64,
    /// Dropped: the queue full, or the pushing thread behind.
    pub dropped: AtomicU64,
    /// Requests the receiver did not accept (each retried).
    pub failed_requests: AtomicU64,
}

/// Events, losses and self-checks of one event source.
#[derive(Debug, Default)]
pub struct SourceCells {
    /// Events it delivered.
    pub events: AtomicU64,
    /// Events it lost.
    pub lost: AtomicU64,
    /// Canaries whose exit the source reported in time.
    pub self_checks_passed: AtomicU64,
    /// Canaries whose exit it did not.
    pub self_check_failures: AtomicU64,
}

/// What `/metrics` shows, kept up to date by the supervisor.
#[derive(Debug)]
pub struct Metrics {
    /// In entry-id order; swapped whole when the configuration changes.
    entries: Mutex<Arc<Vec<Arc<EntryCells>>>>,
    /// Per source name; the open one is `current`.
    sources: Mutex<Vec<(String, Arc<SourceCells>)>>,
    current: Mutex<Option<String>>,
    /// Exit (kernel timestamp) → the Down decision.
    detection: Histogram,
    /// Exit (kernel timestamp) → the restart command started.
    restart_start: Histogram,
    /// The event push, when PUSH_URL is set.
    pub push: Arc<PushCells>,
    pushing: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            entries: Mutex::default(),
            sources: Mutex::default(),
            current: Mutex::default(),
            detection: Histogram::new(BUCKETS),
            restart_start: Histogram::new(BUCKETS),
            push: Arc::default(),
            pushing: Default::default(),
        }
    }
}

impl Metrics {
    /// The monitor's entries now (a reload renumbers them): counters carry
    /// over for the same (pfile, path).
    pub fn set_entries(&self, monitor: &Monitor, now: Time) {
        let old = self.entries.lock().unwrap().clone();
        let by_key: HashMap<(&str, &str), &Arc<EntryCells>> = old
            .iter()
            .map(|c| ((c.pfile_label.as_str(), c.path_label.as_str()), c))
            .collect();
        let status = monitor.status(now);
        let cells: Vec<Arc<EntryCells>> = status
            .iter()
            .map(|s| {
                let path = s.path.display().to_string();
                let key = (label_value(&s.pfile), label_value(&path));
                by_key
                    .get(&(key.0.as_str(), key.1.as_str()))
                    .map(|c| Arc::clone(c))
                    .unwrap_or_else(|| Arc::new(EntryCells::new(key.0, key.1)))
            })
            .collect();
        let cells = Arc::new(cells);
        *self.entries.lock().unwrap() = Arc::clone(&cells);
        Self::store(&cells, &status);
    }

    /// Reads these entries' state, instances and attempts again.
    pub fn refresh(&self, monitor: &Monitor, ids: &[EntryId], now: Time) {
        let cells = self.entries.lock().unwrap().clone();
        Self::store(&cells, &monitor.status_of(ids, now));
    }

    /// Puts what a status says into the entries' cells.
    fn store(cells: &[Arc<EntryCells>], status: &[crate::monitor::EntryStatus]) {
        for s in status {
            let Some(c) = cells.get(s.id.index()) else {
                continue;
            };
            let state = STATES.iter().position(|x| *x == s.state).unwrap_or(0);
            c.state.store(state as u8, Relaxed);
            let class = s
                .crash_loop
                .as_ref()
                .and_then(|l| CLASSES.iter().position(|x| *x == l.class()))
                .map_or(0, |i| i + 1);
            c.crash_loop.store(class as u8, Relaxed);
            c.instances.store(s.instances.len() as u32, Relaxed);
            c.attempts.store(s.attempts as u32, Relaxed);
            c.allowed.store(s.retry, Relaxed);
        }
    }

    /// Counts what a notice says happened, and reads its entries again.
    pub fn notice(&self, monitor: &Monitor, notice: &Notice, now: Time) {
        let Notice::Policy { entry, action, .. } = notice else {
            return;
        };
        if let Some(c) = self.entries.lock().unwrap().get(entry.index()) {
            let counter = match action {
                Action::ReportDown { .. } => Some(&c.downs),
                Action::Restart { .. }
                | Action::RestartUncounted { .. }
                | Action::RestartSlowly { .. } => Some(&c.restarts),
                Action::ReportSetPidFail { .. } => Some(&c.restart_failures),
                Action::ReportRetryOver { .. } => Some(&c.retry_overs),
                Action::Failover => Some(&c.failovers),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Relaxed);
            }
        }
        self.refresh(monitor, &[*entry], now);
    }

    /// The cells of source `name`, which is the open one from now on.
    pub fn source(&self, name: &str) -> Arc<SourceCells> {
        *self.current.lock().unwrap() = Some(name.to_string());
        let mut sources = self.sources.lock().unwrap();
        if let Some((_, cells)) = sources.iter().find(|(n, _)| n == name) {
            return Arc::clone(cells);
        }
        let cells = Arc::new(SourceCells::default());
        sources.push((name.to_string(), Arc::clone(&cells)));
        cells
    }

    /// Event push is configured: its metrics are shown.
    pub fn pushing(&self) -> Arc<PushCells> {
        self.pushing.store(true, Relaxed);
        Arc::clone(&self.push)
    }

    /// The source stopped.
    pub fn source_closed(&self) {
        *self.current.lock().unwrap() = None;
    }

    /// A death's detection took `took` (kernel exit to psmon's decision).
    pub fn observe_detection(&self, took: Duration) {
        self.detection.observe(took.as_secs_f64());
    }

    /// A restart command started `took` after the death.
    pub fn observe_restart_start(&self, took: Duration) {
        self.restart_start.observe(took.as_secs_f64());
    }

    /// A registry that encodes these metrics and psmon's process metrics.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Encoder(Arc::clone(self))));
        registry.register_collector(Box::new(ProcessMetrics));
        registry
    }
}

/// Encodes [`Metrics`] on each scrape.
#[derive(Debug)]
struct Encoder(Arc<Metrics>);

type Labels<'a> = [(&'static str, &'a str); 2];
/// Reads one of an entry's gauges.
type GaugeOf = fn(&EntryCells) -> u64;
/// Picks one of an entry's counters.
type CounterOf = fn(&EntryCells) -> &AtomicU64;

impl Collector for Encoder {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let info = [("version", env!("CARGO_PKG_VERSION"))];
        let mut e =
            encoder.encode_descriptor("psmon_build", "psmon's version", None, MetricType::Info)?;
        e.encode_info(&info)?;

        let entries = m.entries.lock().unwrap().clone();
        let labels: Vec<Labels> = entries
            .iter()
            .map(|c| {
                [
                    ("pfile", c.pfile_label.as_str()),
                    ("path", c.path_label.as_str()),
                ]
            })
            .collect();
        let gauges: [(&str, &str, GaugeOf); 4] = [
            (
                "psmon_entry_up",
                "1 while the entry is up (enough instances run), else 0",
                |c| u64::from(c.state.load(Relaxed) == 1),
            ),
            (
                "psmon_entry_instances",
                "Processes that count as the entry's instances",
                |c| u64::from(c.instances.load(Relaxed)),
            ),
            (
                "psmon_entry_restart_attempts",
                "Restart attempts used in the current retry window",
                |c| u64::from(c.attempts.load(Relaxed)),
            ),
            (
                "psmon_entry_restart_attempts_allowed",
                "Restart attempts allowed in a retry window (the entry's retry)",
                |c| u64::from(c.allowed.load(Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (c, l) in entries.iter().zip(&labels) {
                e.encode_family(l)?.encode_gauge(&(value(c) as i64))?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "psmon_entry_state",
            "The entry's state: 1 for the state it is in (unknown, up, down, restarting, retry_over, failed_over, paused, retrying_slowly)",
            None,
            MetricType::Gauge,
        )?;
        for c in entries.iter() {
            let state = STATES[usize::from(c.state.load(Relaxed)).min(STATES.len() - 1)];
            let l = [
                ("pfile", c.pfile_label.as_str()),
                ("path", c.path_label.as_str()),
                ("state", state),
            ];
            e.encode_family(&l)?.encode_gauge(&1i64)?;
        }
        let mut e = encoder.encode_descriptor(
            "psmon_entry_crash_loop",
            "1 while the entry's recent failures have something in common: the class (deterministic, resource, hung, external, mixed)",
            None,
            MetricType::Gauge,
        )?;
        for c in entries.iter() {
            let Some(class) = usize::from(c.crash_loop.load(Relaxed))
                .checked_sub(1)
                .and_then(|i| CLASSES.get(i))
            else {
                continue;
            };
            let l = [
                ("pfile", c.pfile_label.as_str()),
                ("path", c.path_label.as_str()),
                ("class", class),
            ];
            e.encode_family(&l)?.encode_gauge(&1i64)?;
        }
        let counters: [(&str, &str, CounterOf); 5] = [
            ("psmon_entry_downs", "Times the entry went down", |c| {
                &c.downs
            }),
            ("psmon_entry_restarts", "Restart commands run", |c| {
                &c.restarts
            }),
            (
                "psmon_entry_restart_failures",
                "Restart attempts that failed (Set pid fail)",
                |c| &c.restart_failures,
            ),
            (
                "psmon_entry_retry_overs",
                "Times the restart budget was spent",
                |c| &c.retry_overs,
            ),
            (
                "psmon_entry_failovers",
                "Failovers asked for (switch)",
                |c| &c.failovers,
            ),
        ];
        for (name, help, cell) in counters {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (c, l) in entries.iter().zip(&labels) {
                e.encode_family(l)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &cell(c).load(Relaxed),
                        None,
                    )?;
            }
        }

        let sources = m.sources.lock().unwrap().clone();
        let current = m.current.lock().unwrap().clone();
        let mut e = encoder.encode_descriptor(
            "psmon_source_up",
            "1 for the event source that is open",
            None,
            MetricType::Gauge,
        )?;
        for (name, _) in &sources {
            let up = current.as_deref() == Some(name.as_str());
            e.encode_family(&[("source", name.as_str())])?
                .encode_gauge(&i64::from(up))?;
        }
        type Cell = fn(&SourceCells) -> &AtomicU64;
        let counters: [(&str, &str, Cell); 4] = [
            (
                "psmon_source_events",
                "Process events the source delivered",
                |c| &c.events,
            ),
            (
                "psmon_source_lost_events",
                "Process events the source lost (each loss triggers a rescan)",
                |c| &c.lost,
            ),
            (
                "psmon_source_self_checks_passed",
                "Self-checks the source passed (a canary's exit reported in time)",
                |c| &c.self_checks_passed,
            ),
            (
                "psmon_source_self_check_failures",
                "Self-checks the source missed (each triggers a rescan)",
                |c| &c.self_check_failures,
            ),
        ];
        for (metric, help, cell) in counters {
            let mut e = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (name, cells) in &sources {
                let v = cell(cells);
                e.encode_family(&[("source", name.as_str())])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                    &v.load(Relaxed),
                    None,
                )?;
            }
        }
        if m.pushing.load(Relaxed) {
            let p = &m.push;
            let mut e = encoder.encode_descriptor(
                "psmon_push_waiting_events",
                "Events on disk waiting for the receiver",
                None,
                MetricType::Gauge,
            )?;
            e.encode_gauge(&(p.waiting.load(Relaxed) as i64))?;
            for (name, help, v) in [
                (
                    "psmon_push_delivered_events",
                    "Events the receiver accepted (2xx)",
                    &p.delivered,
                ),
                (
                    "psmon_push_dropped_events",
                    "Events dropped: the queue full or the pushing thread behind",
                    &p.dropped,
                ),
                (
                    "psmon_push_failed_requests",
                    "Requests the receiver did not accept (retried)",
                    &p.failed_requests,
                ),
            ] {
                let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                e.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                    &v.load(Relaxed),
                    None,
                )?;
            }
        }
        let seconds = prometheus_client::registry::Unit::Seconds;
        for (name, help, h) in [
            (
                "psmon_detection",
                "From a watched process's exit (kernel timestamp) to psmon's Down decision",
                &m.detection,
            ),
            (
                "psmon_restart_start",
                "From a watched process's exit (kernel timestamp) to its restart command started",
                &m.restart_start,
            ),
        ] {
            let e = encoder.encode_descriptor(name, help, Some(&seconds), MetricType::Histogram)?;
            h.encode(e)?;
        }
        Ok(())
    }
}

/// psmon's own process: CPU, memory, descriptors, threads, start time.
#[derive(Debug)]
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(me) = crate::proc::own_usage() else {
            return Ok(());
        };
        // No limit (RLIM_INFINITY) reads as 0, as it always has here.
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
            .filter(|soft| *soft != nix::libc::RLIM_INFINITY)
            .unwrap_or(0) as f64;
        let bytes = prometheus_client::registry::Unit::Bytes;
        let secs = prometheus_client::registry::Unit::Seconds;
        let mut e = encoder.encode_descriptor(
            "process_cpu",
            "CPU time psmon used (user and system)",
            Some(&secs),
            MetricType::Counter,
        )?;
        e.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&me.cpu_secs, None)?;
        for (name, help, unit, v) in [
            (
                "process_resident_memory",
                "Resident memory",
                Some(&bytes),
                me.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory",
                Some(&bytes),
                me.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "When psmon started, since the epoch",
                Some(&secs),
                me.start_secs,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                me.open_fds as f64,
            ),
            (
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                max_fds,
            ),
            ("process_threads", "Threads", None, me.threads as f64),
        ] {
            let mut e = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            e.encode_gauge(&v)?;
        }
        Ok(())
    }
}

/// The text of a scrape.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
