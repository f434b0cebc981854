//! The supervisor: the single owner of monitoring state. It turns process
//! events and reconciliation scans into per-entry instance counts, feeds
//! them to [`policy::step`], and carries out the resulting actions
//! (messages, restart and failover commands run as tasks whose outcome comes
//! back as a message). Nothing else holds its state.
//!
//! Every process that matches an entry is tracked (its *members*); the
//! entry's [`Rule`] says which of them are its *instances*, the ones that
//! count: all of them, the main ones (parent not a member), or the one a
//! pidfile names. A command-line rule is checked again whenever the count
//! matters, so a forked worker that retitled itself stops counting.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, ConfigErrors, Entry, LogLevel, Rule},
    event::{EventKind, ExitStatus, ProcEvent},
    exec::{self, CommandSpec, Outcome},
    policy::{self, Action, EntryState, Input, Phase, SetPidFail},
    report::Reporter,
    scan::{Instance, Known, Matcher, StatFiles, comm_key, read_pidfile},
    source::{SourceKind, ebpf::KernelFilter},
};

/// How often an entry with a pidfile re-reads it while its restarted
/// process is expected: daemons write it a moment after they start.
const PIDFILE_POLL: Duration = Duration::from_millis(50);

/// How long an instance a scan missed may wait for its exit event before it
/// is declared gone without one: events can trail a scan, and the event
/// carries the exit status the scan cannot know.
const MISSED_GRACE: Duration = Duration::from_millis(300);

/// Messages from the rest of the daemon.
pub enum Control {
    /// SIGHUP with a valid new configuration.
    Reload(Box<Config>),
    /// SIGHUP with a broken one: report it, keep running the old one.
    ReloadFailed(ConfigErrors),
    /// A source was (re)opened; with the in-kernel filter when it has one.
    Source {
        kind: SourceKind,
        filter: Option<KernelFilter>,
    },
    /// The source stopped with this error; the daemon is reopening it.
    SourceFailed(String),
}

struct Watched {
    pfile: String,
    entry: Entry,
    state: EntryState,
    /// Tracked processes that match the entry (tgids).
    members: HashSet<u32>,
    /// How many of them count under the entry's rule.
    running: u32,
    /// The last instance that went down, for the failover environment.
    last_down: Option<(Option<u32>, ExitStatus)>,
}

#[derive(Clone)]
struct Tracked {
    entry: usize,
    start_ticks: u64,
    comm: [u8; 16],
    ppid: u32,
    /// An instance under the entry's rule (see [`Supervisor::recount`]).
    counts: bool,
    added: Instant,
    /// The task waiting on this process's pidfd; `None` where pidfds are
    /// not available (before Linux 5.3), and scans confirm it instead.
    exit_watch: Option<tokio::task::AbortHandle>,
}

enum Job {
    Restart,
    Failover,
}

/// A finished scan: when it started, what it found, its open stat files.
type ScanDone = (Instant, Vec<Vec<Instance>>, StatFiles);

struct Done {
    path: PathBuf,
    job: Job,
    outcome: Outcome,
}

pub struct Supervisor {
    config: Config,
    watched: Vec<Watched>,
    matcher: Arc<Matcher>,
    instances: HashMap<u32, Tracked>,
    /// (tgid, start ticks) → when its exit was applied, so a scan that began
    /// before it does not bring it back.
    gone: HashMap<(u32, u64), Instant>,
    reporter: Reporter,
    filter: Option<KernelFilter>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    scan_requested: bool,
    /// Instances seen gone without their exit event: tgid → (start ticks,
    /// until when the event, which carries the exit status, is awaited).
    missed: HashMap<u32, (u64, Instant)>,
    /// How long one a scan missed waits (longer with `poll`, whose events
    /// come a scan interval apart). One a pidfd saw exit waits only
    /// MISSED_GRACE on every source: the kernel said so, and an unknown
    /// status beats a late Down.
    missed_grace: Duration,
    /// Entries whose phase waits for a time (back-off, start wait, start_secs).
    starting: HashSet<usize>,
    /// Exits seen through pidfds: (tgid, start ticks).
    exited_tx: mpsc::Sender<(u32, u64)>,
    exited_rx: mpsc::Receiver<(u32, u64)>,
}

impl Supervisor {
    pub fn new(config: Config, reporter: Reporter) -> Self {
        let (done_tx, done_rx) = mpsc::channel(256);
        let (exited_tx, exited_rx) = mpsc::channel(4096);
        let mut s = Supervisor {
            config: Config::default(),
            watched: Vec::new(),
            matcher: Arc::new(Matcher::default()),
            instances: HashMap::new(),
            gone: HashMap::new(),
            reporter,
            filter: None,
            done_tx,
            done_rx,
            scan_requested: true,
            missed: HashMap::new(),
            missed_grace: MISSED_GRACE,
            exited_tx,
            exited_rx,
            starting: HashSet::new(),
        };
        s.apply_config(config);
        s
    }

    /// Whether exec names (comm) can tell watched processes apart in the
    /// kernel, so the ebpf source may filter there.
    pub fn kernel_filter_usable(&self) -> bool {
        self.matcher.kernel_comms().is_some()
    }

    /// How often the reconciliation scan runs: the shortest MONITOR_INTERVAL.
    pub fn scan_interval(&self) -> Duration {
        self.config
            .pfiles
            .iter()
            .map(|p| p.monitor_interval)
            .min()
            .unwrap_or(crate::config::Pfile::DEFAULT_MONITOR_INTERVAL)
    }

    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ProcEvent>,
        mut control: mpsc::Receiver<Control>,
        token: CancellationToken,
    ) {
        let mut scan_every = self.scan_interval();
        let mut scan_tick = tokio::time::interval(scan_every);
        let mut scan: Option<JoinHandle<ScanDone>> = None;
        let mut stat_files = Some(StatFiles::default());
        loop {
            if self.scan_requested && scan.is_none() {
                self.scan_requested = false;
                // Taken with the snapshot of `known`: an exit applied after
                // this moment must win over what the scan reports.
                let started = Instant::now();
                let matcher = self.matcher.clone();
                let n = self.watched.len();
                // Instances with a pidfd need no confirming: their exit wakes us.
                let known: Known = self
                    .instances
                    .iter()
                    .map(|(tgid, t)| {
                        (
                            *tgid,
                            (t.start_ticks, t.comm, t.entry, t.exit_watch.is_some()),
                        )
                    })
                    .collect();
                let mut files = stat_files.take().unwrap_or_default();
                scan = Some(tokio::task::spawn_blocking(move || {
                    let found = matcher.scan(n, &known, &mut files);
                    (started, found, files)
                }));
            }
            let wake = self.next_deadline();
            tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.recv() => self.on_event(event),
                Some(done) = self.done_rx.recv() => self.on_done(done),
                Some((tgid, start)) = self.exited_rx.recv() => self.on_exited(tgid, start),
                result = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                    scan = None;
                    if let Ok((started, found, files)) = result {
                        stat_files = Some(files);
                        self.on_scan(started, found);
                    }
                }
                _ = scan_tick.tick() => self.scan_requested = true,
                // Idle (nothing waiting for a time) means no wake-ups.
                _ = sleep_until(wake), if wake.is_some() => self.on_tick(),
                Some(msg) = control.recv() => {
                    self.on_control(msg);
                    if self.scan_interval() != scan_every {
                        scan_every = self.scan_interval();
                        scan_tick = tokio::time::interval(scan_every);
                    }
                }
            }
        }
        self.reporter.report(
            LogLevel::Info,
            "psmon stopping; watched processes are left running",
            &[],
        );
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Reload(config) => {
                self.apply_config(*config);
                self.reporter.report(
                    LogLevel::Info,
                    "configuration reloaded",
                    &[("entries", json!(self.watched.len()))],
                );
            }
            Control::ReloadFailed(errors) => {
                for d in &errors.0 {
                    self.reporter
                        .report(LogLevel::Error, &format!("reload refused: {d}"), &[]);
                }
                self.reporter.report(
                    LogLevel::Error,
                    "the new configuration has errors; still running the previous one",
                    &[],
                );
            }
            Control::Source { kind, filter } => {
                self.reporter.report(
                    LogLevel::Info,
                    &format!("watching process events with the {kind} source"),
                    &[("kernel_filter", json!(filter.is_some()))],
                );
                self.missed_grace = match kind {
                    SourceKind::Poll => MISSED_GRACE + self.scan_interval(),
                    _ => MISSED_GRACE,
                };
                self.filter = filter;
                self.fill_filter();
                self.scan_requested = true;
            }
            Control::SourceFailed(why) => {
                self.reporter.report(
                    LogLevel::Error,
                    &format!(
                        "the event source stopped ({why}); scans continue while it is reopened"
                    ),
                    &[],
                );
                self.scan_requested = true;
            }
        }
    }

    /// Takes a new configuration: entries whose path is unchanged keep their
    /// state and instances (nothing is restarted); others start fresh.
    fn apply_config(&mut self, config: Config) {
        let mut old: HashMap<PathBuf, (usize, Watched)> = self
            .watched
            .drain(..)
            .enumerate()
            .map(|(i, w)| (w.entry.path.clone(), (i, w)))
            .collect();
        let mut remap: HashMap<usize, usize> = HashMap::new();
        for (pfile, entry) in config.entries() {
            let new_index = self.watched.len();
            let w = match old.remove(&entry.path) {
                Some((i, mut w)) => {
                    remap.insert(i, new_index);
                    w.pfile = pfile.name.clone();
                    w.entry = entry.clone();
                    w
                }
                None => Watched {
                    pfile: pfile.name.clone(),
                    entry: entry.clone(),
                    state: EntryState::default(),
                    members: HashSet::new(),
                    running: 0,
                    last_down: None,
                },
            };
            self.watched.push(w);
        }
        self.instances.retain(|_, t| match remap.get(&t.entry) {
            Some(n) => {
                t.entry = *n;
                true
            }
            None => {
                // No longer watched: stop waiting for its exit.
                if let Some(w) = &t.exit_watch {
                    w.abort();
                }
                false
            }
        });
        self.starting = (0..self.watched.len())
            .filter(|i| {
                let w = &self.watched[*i];
                w.state.phase.deadline(&w.entry).is_some()
            })
            .collect();
        self.reporter.set_level(config.agent.log_level);
        self.matcher = Arc::new(Matcher::new(self.watched.iter().map(|w| &w.entry)));
        // The entries live on in `watched`; a second copy would only cost memory.
        let mut config = config;
        for p in &mut config.pfiles {
            p.entries = Vec::new();
        }
        self.config = config;
        self.fill_filter();
        self.scan_requested = true;
    }

    fn fill_filter(&mut self) {
        let Some(filter) = &mut self.filter else {
            return;
        };
        for comm in self.matcher.kernel_comms().unwrap_or_default() {
            let _ = filter.watch_comm(&comm);
        }
        for tgid in self.instances.keys() {
            let _ = filter.watch_tgid(*tgid);
        }
    }

    fn on_event(&mut self, event: ProcEvent) {
        match event.kind {
            EventKind::Fork(p) => {
                let (Some(parent), Some(start)) =
                    (self.instances.get(&p.ppid).map(|t| t.entry), p.start)
                else {
                    return;
                };
                // A forked child runs its parent's executable; with a
                // command-line rule it must match that too.
                let inst = if self.matcher.by_cmdline(parent) {
                    match self.matcher.classify(p.tgid) {
                        Some((i, inst)) if i == parent => inst,
                        _ => return,
                    }
                } else {
                    Instance {
                        tgid: p.tgid,
                        start_ticks: start.ticks(),
                        comm: comm_key(p.comm.as_bytes()),
                        ppid: p.ppid,
                    }
                };
                self.add(parent, inst);
                self.step_running(parent);
            }
            EventKind::Exec(p) => {
                let now = self
                    .matcher
                    .may_match(&p.comm, p.path.as_deref())
                    .then(|| self.matcher.classify(p.tgid))
                    .flatten();
                let before = self.instances.get(&p.tgid).map(|t| t.entry);
                if let Some(b) = before
                    && now.is_none_or(|(i, _)| i != b)
                {
                    // It exec'd another program: that instance is gone.
                    self.remove(p.tgid, ExitStatus::Unknown, "exec'd another program");
                }
                if let Some((i, inst)) = now
                    && before.is_none_or(|b| b != i)
                {
                    self.add(i, inst);
                    self.step_running(i);
                }
            }
            EventKind::Exit { process, status } => {
                let Some(t) = self.instances.get(&process.tgid) else {
                    return;
                };
                // Same pid, other start time: not the process we track.
                if process.start.is_some_and(|s| s.ticks() != t.start_ticks) {
                    tracing::debug!(tgid = process.tgid, event_start = ?process.start.map(|s| s.ticks()), tracked = t.start_ticks, "exit of an untracked process with a reused pid");
                    return;
                }
                self.remove(process.tgid, status, "exit event");
            }
            EventKind::Lost { count } => {
                self.reporter.report(
                    LogLevel::Warn,
                    "process events were lost; scanning /proc now",
                    &[("count", json!(count))],
                );
                self.scan_requested = true;
            }
        }
    }

    fn add(&mut self, entry: usize, inst: Instance) {
        let tgid = inst.tgid;
        let t = Tracked {
            entry,
            start_ticks: inst.start_ticks,
            comm: inst.comm,
            ppid: inst.ppid,
            counts: false,
            added: Instant::now(),
            exit_watch: self.watch_exit(tgid, inst.start_ticks),
        };
        if let Some(old) = self.instances.insert(tgid, t) {
            self.watched[old.entry].members.remove(&tgid);
            if let Some(w) = old.exit_watch {
                w.abort();
            }
        }
        self.watched[entry].members.insert(tgid);
        if let Some(f) = &mut self.filter {
            let _ = f.watch_tgid(tgid);
        }
    }

    /// Waits on a pidfd for the exit of (tgid, start) and reports it on
    /// `exited_tx`: the kernel's word, whatever the event source does.
    fn watch_exit(&self, tgid: u32, start: u64) -> Option<tokio::task::AbortHandle> {
        let fd = pidfd_open(tgid).ok()?;
        let tx = self.exited_tx.clone();
        // The pid may have been reused between matching and pidfd_open.
        let same = crate::source::procfs::read_entry(tgid)
            .is_some_and(|e| e.start.ticks() == start && !e.is_dead());
        if !same {
            let _ = tx.try_send((tgid, start));
            return None;
        }
        // SAFETY: the AsyncFd owns the pidfd, which stays open and the same
        // until the AsyncFd is dropped.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .ok()?;
        let task = tokio::spawn(async move {
            // A pidfd turns readable when the process has exited.
            let _ = afd.readable().await;
            let _ = tx.send((tgid, start)).await;
        });
        Some(task.abort_handle())
    }

    /// A pidfd said the process exited. While it is a zombie, `/proc`
    /// holds its wait status: done at once. Once reaped, its exit event
    /// (with the status) normally arrives at the same moment, so wait for
    /// it a little (`poll`'s comes only with its next scan: unknown then).
    fn on_exited(&mut self, tgid: u32, start: u64) {
        if self
            .instances
            .get(&tgid)
            .is_none_or(|t| t.start_ticks != start)
        {
            return;
        }
        let zombie = crate::source::procfs::read_entry(tgid)
            .filter(|e| e.start.ticks() == start && e.is_dead())
            .and_then(|e| e.exit_code);
        if let Some(code) = zombie {
            self.missed.remove(&tgid);
            let status = ExitStatus::from_wait_status(code as u32);
            self.remove(tgid, status, "exited (pidfd), status from its zombie");
        } else {
            self.missed
                .entry(tgid)
                .or_insert((start, Instant::now() + MISSED_GRACE));
        }
    }

    /// Stops tracking `tgid`: its exit watch, its kernel-filter key (the
    /// kernel forgets an exited tgid itself; one that exec'd another
    /// program or stopped matching must stop passing), its membership.
    fn untrack(&mut self, tgid: u32) -> Option<Tracked> {
        let t = self.instances.remove(&tgid)?;
        if let Some(w) = &t.exit_watch {
            w.abort();
        }
        if let Some(f) = &mut self.filter {
            let _ = f.unwatch_tgid(tgid);
        }
        self.watched[t.entry].members.remove(&tgid);
        Some(t)
    }

    /// Forgets instance `tgid` and tells the policy.
    fn remove(&mut self, tgid: u32, status: ExitStatus, why: &str) {
        let Some(t) = self.untrack(tgid) else {
            return;
        };
        self.reporter.report(
            LogLevel::Debug,
            "instance gone",
            &[("pid", json!(tgid)), ("why", json!(why))],
        );
        self.gone.insert((tgid, t.start_ticks), Instant::now());
        let before = self.watched[t.entry].running;
        let (running, _) = self.recount(t.entry);
        if t.counts {
            let input = Input::Exited {
                pid: tgid,
                status,
                running,
            };
            self.step(t.entry, input);
        } else if running != before {
            self.step_running(t.entry);
        }
    }

    /// Decides which members of entry `i` are its instances under its
    /// rule; returns how many there are and the main (oldest) one. Members
    /// that no longer match a command-line rule stop being tracked.
    fn recount(&mut self, i: usize) -> (u32, Option<u32>) {
        if self.matcher.by_cmdline(i) {
            let stale: Vec<u32> = self.watched[i]
                .members
                .iter()
                .copied()
                .filter(|tgid| !self.matcher.still_matches(i, *tgid))
                .collect();
            for tgid in stale {
                self.forget(tgid);
            }
        }
        let w = &self.watched[i];
        let pidfile_pid = read_pidfile(&w.entry.rule);
        let decided: Vec<(u32, bool, u64)> = w
            .members
            .iter()
            .filter_map(|tgid| {
                let t = self.instances.get(tgid)?;
                let is_member = |pid| w.members.contains(&pid);
                let counts = w.entry.rule.counts(*tgid, t.ppid, is_member, pidfile_pid);
                Some((*tgid, counts, t.start_ticks))
            })
            .collect();
        let mut running = 0;
        let mut main: Option<(u64, u32)> = None;
        for (tgid, counts, start) in decided {
            if let Some(t) = self.instances.get_mut(&tgid) {
                t.counts = counts;
            }
            if counts {
                running += 1;
                if main.is_none_or(|m| (start, tgid) < m) {
                    main = Some((start, tgid));
                }
            }
        }
        self.watched[i].running = running;
        (running, main.map(|(_, tgid)| tgid))
    }

    /// Stops tracking a process that no longer matches (not an exit).
    fn forget(&mut self, tgid: u32) {
        if self.untrack(tgid).is_none() {
            return;
        }
        self.reporter.report(
            LogLevel::Debug,
            "process no longer matches its entry",
            &[("pid", json!(tgid))],
        );
    }

    /// Tells the policy how many instances entry `i` has now.
    fn step_running(&mut self, i: usize) {
        let (running, pid) = self.recount(i);
        self.step(i, Input::Running { running, pid });
    }

    /// The earliest time something waits for: a phase deadline, or an
    /// instance whose exit event is overdue.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let phases = self.starting.iter().filter_map(|i| {
            let w = &self.watched[*i];
            w.state.phase.deadline(&w.entry)
        });
        let missed = self.missed.values().map(|(_, until)| *until);
        // Pidfile entries waiting for their process re-read the file often.
        let pidfile = self
            .starting
            .iter()
            .any(|i| matches!(self.watched[*i].entry.rule, Rule::Pidfile(_)))
            .then(|| Instant::now() + PIDFILE_POLL);
        phases
            .chain(missed)
            .chain(pidfile)
            .min()
            .map(tokio::time::Instant::from_std)
    }

    fn step(&mut self, i: usize, input: Input) {
        let w = &mut self.watched[i];
        let actions = policy::step(&w.entry, &mut w.state, input, Instant::now());
        if w.state.phase.deadline(&w.entry).is_some() {
            self.starting.insert(i);
        } else {
            self.starting.remove(&i);
        }
        for action in actions {
            self.act(i, action);
        }
    }

    fn on_tick(&mut self) {
        let overdue: Vec<(u32, u64)> = self
            .missed
            .iter()
            .filter(|(_, (_, until))| Instant::now() >= *until)
            .map(|(tgid, (start, _))| (*tgid, *start))
            .collect();
        for (tgid, start) in overdue {
            self.missed.remove(&tgid);
            if self
                .instances
                .get(&tgid)
                .is_some_and(|t| t.start_ticks == start)
            {
                self.remove(tgid, ExitStatus::Unknown, "gone without an exit event");
            }
        }
        let starting: Vec<usize> = self.starting.iter().copied().collect();
        for i in starting {
            // The count and main pid as they are now (a pidfile written
            // meanwhile, a daemon that forked and let its parent exit).
            self.step_running(i);
            self.step(i, Input::Tick);
        }
    }

    fn on_scan(&mut self, started: Instant, found: Vec<Vec<Instance>>) {
        self.reporter.report(
            LogLevel::Debug,
            "reconciliation scan done",
            &[
                ("matched", json!(found.iter().map(Vec::len).sum::<usize>())),
                ("scan_ms", json!(started.elapsed().as_secs_f64() * 1e3)),
            ],
        );
        self.gone
            .retain(|_, at| at.elapsed() < Duration::from_secs(120));
        let mut seen: HashSet<u32> = HashSet::new();
        let mut touched: HashSet<usize> = HashSet::new();
        // Additions first, so a replaced instance never looks like a shortage.
        for (i, list) in found.iter().enumerate().take(self.watched.len()) {
            for inst in list {
                seen.insert(inst.tgid);
                let known = self
                    .instances
                    .get(&inst.tgid)
                    .map(|t| (t.start_ticks, t.entry));
                if known.is_some_and(|(start, entry)| start == inst.start_ticks && entry == i) {
                    continue;
                }
                if self
                    .gone
                    .get(&(inst.tgid, inst.start_ticks))
                    .is_some_and(|at| *at > started)
                {
                    continue; // exited after the scan saw it
                }
                if known.is_some() {
                    self.remove(inst.tgid, ExitStatus::Unknown, "pid reused");
                }
                self.add(i, *inst);
                touched.insert(i);
            }
        }
        // Entries whose rule can change its mind without an event (a
        // rewritten pidfile, a retitled worker) are looked at every scan.
        for i in 0..self.watched.len() {
            let w = &self.watched[i];
            if touched.contains(&i) || w.entry.rule != Rule::All || self.matcher.by_cmdline(i) {
                self.step_running(i);
            }
        }
        // Instances the scan did not see and that are older than it: gone,
        // unless their exit event is still on its way (see MISSED_GRACE).
        for (tgid, t) in &self.instances {
            if !seen.contains(tgid) && t.added < started && t.exit_watch.is_none() {
                self.missed
                    .entry(*tgid)
                    .or_insert((t.start_ticks, Instant::now() + self.missed_grace));
            }
        }
        for i in 0..self.watched.len() {
            if self.watched[i].state.phase == Phase::Unknown {
                self.step_running(i);
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        if let Action::ReportDown { pid, status } = action {
            self.watched[i].last_down = Some((pid, status));
        }
        let w = &self.watched[i];
        let path = w.entry.path.display().to_string();
        let base: Vec<(&str, Value)> = vec![("pfile", json!(w.pfile)), ("path", json!(path))];
        let with = |extra: Vec<(&'static str, Value)>| {
            let mut f = base.clone();
            f.extend(extra);
            f
        };
        match action {
            Action::ReportDown { pid, status } => {
                let message = match pid {
                    Some(pid) => format!("Process ['{path}',pid={pid}] Down"),
                    None => format!("Process ['{path}'] Down"),
                };
                let mut fields = with(vec![("pid", json!(pid))]);
                fields.extend(status_fields(status));
                self.reporter.report(LogLevel::Warn, &message, &fields);
            }
            Action::ReportStopped { pid, code } => {
                let fields = with(vec![("pid", json!(pid)), ("exit_code", json!(code))]);
                self.reporter.report(
                    LogLevel::Info,
                    &format!("Process ['{path}',pid={pid}] stopped on purpose (exit code {code}); not restarted"),
                    &fields,
                );
            }
            Action::Restart { attempt } => {
                let fields = with(vec![
                    ("attempt", json!(attempt)),
                    ("retry", json!(w.entry.retry)),
                ]);
                self.reporter.report(
                    LogLevel::Info,
                    &format!("Try to restart ('{path}')"),
                    &fields,
                );
                let Some(command) = w.entry.restart.clone() else {
                    return;
                };
                let mut env = self.base_env(i);
                env.push(("PSMON_ATTEMPT".into(), attempt.to_string()));
                self.spawn(i, Job::Restart, command, env, w.entry.restart_timeout);
            }
            Action::ReportUp { pid, rearmed } => {
                let message = match pid {
                    Some(pid) => format!("('{path}',pid={pid}) Up"),
                    None => format!("('{path}') Up"),
                };
                let fields = with(vec![
                    ("pid", json!(pid)),
                    ("running", json!(w.running)),
                    ("budget_rearmed", json!(rearmed)),
                ]);
                self.reporter.report(LogLevel::Info, &message, &fields);
            }
            Action::ReportSetPidFail { why } => {
                let mut fields = with(vec![]);
                let reason = match why {
                    SetPidFail::CommandFailed => "the restart command failed".to_string(),
                    SetPidFail::NotStarted => "no matching process appeared in time".to_string(),
                    SetPidFail::DiedEarly { pid, status, lived } => {
                        fields.push(("pid", json!(pid)));
                        fields.push(("lived_ms", json!(lived.as_secs_f64() * 1e3)));
                        fields.extend(status_fields(status));
                        format!(
                            "the restarted process{} ended {} after it started ({}), before start_secs {} s",
                            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                            crate::report::duration(lived),
                            crate::report::status(status),
                            w.entry.start_secs.as_secs_f64()
                        )
                    }
                };
                fields.push(("reason", json!(reason)));
                self.reporter.report(
                    LogLevel::Error,
                    &format!("Set pid fail ('{path}'): {reason}"),
                    &fields,
                );
            }
            Action::ReportBackoff { delay } => {
                let fields = with(vec![("delay_ms", json!(delay.as_secs_f64() * 1e3))]);
                self.reporter.report(
                    LogLevel::Info,
                    &format!(
                        "next restart of ('{path}') in {}",
                        crate::report::duration(delay)
                    ),
                    &fields,
                );
            }
            Action::ReportStarted { pid } => {
                let fields = with(vec![("pid", json!(pid))]);
                let who = pid.map(|p| format!(",pid={p}")).unwrap_or_default();
                self.reporter.report(
                    LogLevel::Info,
                    &format!(
                        "('{path}'{who}) started; Up once it has run {} s",
                        w.entry.start_secs.as_secs_f64()
                    ),
                    &fields,
                );
            }
            Action::ReportRetryOver { attempts } => {
                let action = match w.entry.action {
                    crate::config::Action::Continue => "continue",
                    crate::config::Action::Switch => "switch",
                };
                let fields = with(vec![
                    ("attempts", json!(attempts)),
                    ("action", json!(action)),
                ]);
                self.reporter
                    .report(LogLevel::Error, &format!("Retry over ('{path}')"), &fields);
            }
            Action::Failover => {
                let command = w
                    .entry
                    .failover
                    .clone()
                    .or_else(|| self.config.agent.failover_command.clone());
                let Some(command) = command else {
                    self.reporter.report(
                        LogLevel::Error,
                        &format!("Switch request ('{path}') not sent: no FAILOVER_COMMAND in psagent.conf and no failover for this entry"),
                        &base,
                    );
                    return;
                };
                self.reporter.report(
                    LogLevel::Error,
                    &format!("Switch request ('{path}')"),
                    &base,
                );
                let mut env = self.base_env(i);
                let retry = w.entry.retry;
                let grace = w
                    .entry
                    .grace
                    .map_or("ever".to_string(), |g| format!("{} s", g.as_secs()));
                env.push((
                    "PSMON_REASON".into(),
                    format!(
                        "retry over: {retry} restart attempts within {grace} did not keep {path} up"
                    ),
                ));
                self.spawn(i, Job::Failover, command, env, w.entry.restart_timeout);
            }
            Action::ReportTooManyAfterRestart { running, expected } => {
                let fields = with(vec![
                    ("running", json!(running)),
                    ("expected", json!(expected)),
                ]);
                self.reporter.report(
                    LogLevel::Warn,
                    &format!(
                        "Process ('{path}') has {running} instances after its restart, {expected} expected: \
                         a start still under way was restarted again (raise start_wait), or the daemon \
                         forks workers (see pidfile, cmdline, main_only, max)"
                    ),
                    &fields,
                );
            }
            Action::ReportTooMany { running } => {
                let fields = with(vec![
                    ("running", json!(running)),
                    ("max", json!(w.entry.max)),
                ]);
                self.reporter.report(
                    LogLevel::Warn,
                    &format!("Process ('{path}') has {running} instances, above the maximum"),
                    &fields,
                );
            }
        }
    }

    /// psenv's variables and what psmon knows of the entry and its last death.
    fn base_env(&self, i: usize) -> Vec<(String, String)> {
        let w = &self.watched[i];
        let mut env = self.config.env.vars.clone();
        env.push(("PSMON_PFILE".into(), w.pfile.clone()));
        env.push(("PSMON_PATH".into(), w.entry.path.display().to_string()));
        let (pid, status) = w.last_down.unwrap_or((None, ExitStatus::Unknown));
        env.push((
            "PSMON_PID".into(),
            pid.map(|p| p.to_string()).unwrap_or_default(),
        ));
        let (code, signal) = match status {
            ExitStatus::Code(c) => (c.to_string(), String::new()),
            ExitStatus::Signal { signal, .. } => (String::new(), signal.to_string()),
            ExitStatus::Unknown => (String::new(), String::new()),
        };
        env.push(("PSMON_EXIT_CODE".into(), code));
        env.push(("PSMON_SIGNAL".into(), signal));
        env
    }

    fn spawn(
        &self,
        i: usize,
        job: Job,
        command: String,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) {
        let spec = CommandSpec {
            command,
            env,
            umask: self.config.env.umask,
            timeout,
        };
        let path = self.watched[i].entry.path.clone();
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = exec::run(&spec).await;
            let _ = tx.send(Done { path, job, outcome }).await;
        });
    }

    fn on_done(&mut self, done: Done) {
        // By path: a reload may have moved or removed the entry meanwhile.
        let Some(i) = self.watched.iter().position(|w| w.entry.path == done.path) else {
            return;
        };
        let path = done.path.display().to_string();
        let what = match done.job {
            Job::Restart => "restart",
            Job::Failover => "failover",
        };
        let mut fields: Vec<(&str, Value)> = vec![
            ("pfile", json!(self.watched[i].pfile)),
            ("path", json!(path)),
            (
                "elapsed_ms",
                json!(done.outcome.elapsed.as_secs_f64() * 1e3),
            ),
        ];
        if !done.outcome.output_tail.is_empty() {
            fields.push(("output", json!(done.outcome.output_tail)));
        }
        let level = if done.outcome.ok() {
            LogLevel::Info
        } else {
            LogLevel::Error
        };
        self.reporter.report(
            level,
            &format!("{what} command for ('{path}'): {}", done.outcome.describe()),
            &fields,
        );
        if let Job::Restart = done.job {
            let ok = done.outcome.ok();
            self.step(i, Input::RestartDone { ok });
            if ok && self.watched[i].state.phase != Phase::Up {
                // Catch the new process even if its exec event was filtered or lost.
                self.scan_requested = true;
            }
        }
    }
}

fn status_fields(status: ExitStatus) -> Vec<(&'static str, Value)> {
    match status {
        ExitStatus::Code(c) => vec![("exit_code", json!(c))],
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => vec![
            ("signal", json!(signal)),
            ("core_dumped", json!(core_dumped)),
        ],
        ExitStatus::Unknown => vec![("exit", json!("unknown"))],
    }
}

/// Sleeps until `at`; `None` never wakes (the branch is disabled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// pidfd_open(2) (Linux 5.3): a file descriptor that refers to one process
/// and becomes readable when it exits.
fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
