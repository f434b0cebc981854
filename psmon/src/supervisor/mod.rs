//! The supervisor: the I/O shell around the [`Monitor`]. It reads the
//! event source, runs scans, watches exits through pidfds, runs commands,
//! keeps the kernel filter and says what the monitor has to say; the
//! monitor decides. It sleeps until the monitor's next deadline.
//!
//! Nothing that can block runs on the task that receives events: `/proc`
//! reads (classifying an exec, a scan, a pidfile, a command line, a
//! zombie's status) run on the blocking pool and come back as inputs;
//! messages go to [`crate::logsink`], which never waits. An exit event for
//! a process whose exec is still being classified is held until the
//! classification is in, so the monitor sees them in order.
//!
//! Every task it starts is tracked. At shutdown, exit watches are dropped,
//! and restart or failover commands still running are waited for up to
//! [`COMMAND_GRACE`] so that their outcome is logged; past it they are
//! left running in their own process group (killing a half-done start
//! would leave the service half-started) and psmon exits.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    audit::Outcome,
    clock::Time,
    config::{Config, ConfigErrors, LoadOptions, LogLevel},
    control::{Asked, Reply},
    event::ProcEvent,
    facts::{EntryId, Seen},
    monitor::{Effect, Input, Monitor, Notice},
    proc,
    recorder::Recorder,
    report::Reporter,
    scan::{Matcher, ScanState, read_pidfile},
    self_check::{Canary, SelfCheck},
    source::{
        Handle,
        keeper::{Order, Report},
    },
    state::Store,
};

mod audit;
mod commands;
mod exits;
mod failover;
mod fleet;
mod health;
mod intake;
mod leftovers;
mod notify;
mod ops;
mod ordering;
mod probe;
mod scans;
mod self_check;
mod status;
mod systemd;
mod young;

pub use ops::Prepared;

/// How long shutdown waits for restart and failover commands still running.
pub const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// Messages from the rest of the daemon.
pub enum Control {
    /// SIGHUP (from whom, when known) with a valid new configuration.
    Reload(Box<Prepared>, Option<crate::audit::Who>),
    /// SIGHUP with a broken one: report it, keep running the old one.
    ReloadFailed(ConfigErrors, Option<crate::audit::Who>),
    /// What the source's keeper did.
    Source(Report),
}

impl From<Report> for Control {
    fn from(report: Report) -> Self {
        Control::Source(report)
    }
}

/// What tasks the supervisor started send back.
enum Back {
    /// An input for the monitor; `generation` when it names entries, which
    /// a reload meanwhile renumbered.
    Input {
        input: Input,
        generation: Option<u64>,
    },
    /// An exec or fork of `tgid` was classified; `input` says what it matched.
    Classified {
        tgid: u32,
        input: Option<Input>,
        generation: u64,
    },
    /// An audited request was answered.
    Audit {
        who: crate::audit::Who,
        action: &'static str,
        pfile: Option<String>,
        outcome: crate::audit::Outcome,
    },
    /// An operator's reload has read the files.
    Reloaded {
        result: Box<Result<Prepared, ConfigErrors>>,
        pfile: Option<String>,
        reply: oneshot::Sender<Reply>,
    },
}

/// What the supervisor starts from.
pub struct Setup {
    pub config: Config,
    pub reporter: Reporter,
    /// Where the configuration was read from, and how (for reloads).
    pub conf_dir: std::path::PathBuf,
    pub load: LoadOptions,
    /// The state a previous psmon saved, if any.
    pub saved: Option<Monitor>,
    /// Where state is saved; `None`: nowhere.
    pub store: Option<Store>,
    /// What the HTTP endpoint reads (metrics, recent messages).
    pub telemetry: Arc<crate::endpoint::Telemetry>,
    /// The control socket's directory (checked): notify sockets go there.
    pub runtime_dir: std::path::PathBuf,
    /// Starts the self-check's canaries; `None`: no self-check.
    pub canary: Option<Canary>,
    /// Where a source that misses its self-checks is reported for replacing.
    pub source_orders: mpsc::Sender<Order>,
    /// Starts restart, failover and probe commands.
    pub spawner: crate::spawner::Spawner,
}

/// A finished scan: when it started, how long it took, what it found, what
/// it leaves to the next, and the configuration it was made with.
type ScanDone = (Time, Duration, Vec<Vec<Seen>>, ScanState, u64);

pub struct Supervisor {
    monitor: Monitor,
    /// The configuration running now, without its entries (the monitor
    /// has them; a second copy would only cost memory).
    config: Config,
    conf_dir: std::path::PathBuf,
    load: LoadOptions,
    store: Option<Store>,
    drills: Vec<ops::Drill>,
    queues: health::Queues,
    queue_writes: crate::stats::Samples,
    /// What each `status` cost the event thread (taking its read-model).
    status_views: crate::stats::Samples,
    lost_events: u64,
    matcher: Arc<Matcher>,
    reporter: Reporter,
    source: Option<Handle>,
    umask: Option<u32>,
    /// Effects not yet carried out (the monitor's first ones).
    pending: Vec<Effect>,
    commands: TaskTracker,
    helpers: TaskTracker,
    /// The pidfds of the watched processes, when the kernel has them.
    exit_watches: Option<exits::ExitWatches>,
    back_tx: mpsc::UnboundedSender<Back>,
    back_rx: mpsc::UnboundedReceiver<Back>,
    /// What waits behind the classifications under way.
    classifying: ordering::Classifying,
    /// Children of members not yet handed to the monitor.
    young: young::Young,
    /// When the next scan runs and what it reads.
    scans: scans::ScanPlan,
    /// systemd's watchdog period (WATCHDOG_USEC), when it asks for one.
    watchdog: Option<Duration>,
    /// READY=1 was sent (after the first scan).
    ready_sent: bool,
    /// Recent process events of each entry's trees.
    recorder: Recorder,
    /// Signal records the source delivered (the kernel filter keeps the
    /// signals of unwatched processes from psmon).
    signal_events: u64,
    /// OOM kills the source reported, of any process.
    oom_events: u64,
    /// The sd_notify sockets of notify-probed entries.
    notify: notify::Sockets,
    notify_tx: mpsc::Sender<notify::Message>,
    notify_rx: mpsc::Receiver<notify::Message>,
    /// What the HTTP endpoint reads; updated without waiting.
    telemetry: Arc<crate::endpoint::Telemetry>,
    /// The open source's event counters.
    source_cells: Option<Arc<crate::endpoint::metrics::SourceCells>>,
    /// Why no source is open, since it failed.
    source_down: Option<String>,
    /// While an exit event is fed: its kernel timestamp (monotonic ns).
    exit_stamp: Option<u64>,
    /// The source's self-check: its schedule, its canaries, its keeper.
    self_check: SelfCheck,
    canary: Option<Canary>,
    source_orders: mpsc::Sender<Order>,
    /// Operator actions, for `/status` and `psmon audit`.
    trail: crate::audit::Trail,
    spawner: crate::spawner::Spawner,
}

impl Supervisor {
    pub fn new(setup: Setup) -> Self {
        let Setup {
            config,
            mut reporter,
            conf_dir,
            load,
            saved,
            store,
            telemetry,
            runtime_dir,
            canary,
            source_orders,
            spawner,
        } = setup;
        reporter.set_level(config.agent.log_level);
        let config_recorder = (config.agent.recorder_events, config.agent.recorder_window);
        let self_check_interval = match canary {
            Some(_) => config.agent.self_check_interval,
            None => Duration::ZERO,
        };
        let scans = scans::ScanPlan::new(&config);
        let umask = config.env.umask;
        let (back_tx, back_rx) = mpsc::unbounded_channel();
        let helpers = TaskTracker::new();
        let exit_watches = if proc::pidfds_available() {
            match exits::ExitWatches::start(&helpers, exits::reporting_to(back_tx.clone())) {
                Ok(watches) => Some(watches),
                Err(e) => {
                    reporter.report(
                        LogLevel::Warn,
                        &format!("exits cannot be watched by pidfds ({e}): the event source alone reports them"),
                        &[],
                    );
                    None
                }
            }
        } else {
            None
        };
        let pidfds = exit_watches.is_some();
        let (monitor, pending) = match saved {
            Some(saved) => {
                let (monitor, pending) = Monitor::restore(saved, config.clone(), pidfds);
                reporter.report(
                    LogLevel::Info,
                    &format!(
                        "state of the previous psmon taken over: {} processes, budgets and pauses kept",
                        monitor.member_tgids().count()
                    ),
                    &[],
                );
                (monitor, pending)
            }
            None => Monitor::new(config.clone(), pidfds),
        };
        let matcher = Arc::new(Matcher::new(monitor.entries()));
        telemetry.metrics.set_entries(&monitor, Time::now());
        let (notify_tx, notify_rx) = mpsc::channel(notify::QUEUE);
        Supervisor {
            monitor,
            config: without_entries(&config),
            conf_dir,
            load,
            store,
            drills: Vec::new(),
            queues: health::Queues::new(),
            queue_writes: crate::stats::Samples::default(),
            status_views: crate::stats::Samples::default(),
            lost_events: 0,
            matcher,
            reporter,
            source: None,
            umask,
            pending,
            commands: TaskTracker::new(),
            helpers,
            exit_watches,
            back_tx,
            back_rx,
            classifying: ordering::Classifying::default(),
            young: young::Young::default(),
            scans,
            watchdog: None,
            ready_sent: false,
            signal_events: 0,
            oom_events: 0,
            recorder: Recorder::new(config_recorder.0, config_recorder.1),
            notify: notify::Sockets::new(&runtime_dir),
            notify_tx,
            notify_rx,
            telemetry,
            source_cells: None,
            source_down: None,
            exit_stamp: None,
            self_check: SelfCheck::new(self_check_interval),
            canary,
            source_orders,
            trail: crate::audit::Trail::default(),
            spawner,
        }
    }

    /// Sends systemd `WATCHDOG=1` every half `period` from the loop that
    /// handles events, so that a stuck loop is what systemd notices.
    pub fn keep_watchdog_alive(&mut self, period: Duration) {
        self.watchdog = Some(period);
    }

    /// Whether exec names (comm) can tell watched processes apart in the
    /// kernel, so the ebpf source may filter there.
    pub fn kernel_filter_usable(&self) -> bool {
        self.matcher.kernel_comms().is_some()
    }

    /// How often the reconciliation scan runs: the shortest MONITOR_INTERVAL.
    pub fn scan_interval(&self) -> Duration {
        self.scans.every()
    }

    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ProcEvent>,
        mut control: mpsc::Receiver<Control>,
        mut asked: mpsc::Receiver<Asked>,
        token: CancellationToken,
    ) {
        self.open_queues();
        self.open_notify_sockets();
        for effect in std::mem::take(&mut self.pending) {
            self.apply(effect);
        }
        self.persist();
        let mut scan_tick = tokio::time::interval(self.scans.every());
        let mut keepalive = self.watchdog.map(|d| tokio::time::interval(d / 2));
        let mut scan: Option<JoinHandle<ScanDone>> = None;
        let mut stat_files = Some(ScanState::default());
        loop {
            if scan.is_none() && self.scans.take_request() {
                // Taken with the snapshot of the members: an exit applied
                // after this moment wins over what the scan reports.
                let started = Time::now();
                let matcher = self.matcher.clone();
                let n = self.monitor.entry_count();
                let known = self.monitor.known();
                let generation = self.monitor.generation();
                let unchanged = self.scans.unchanged(self.source.as_ref());
                let mut files = stat_files.take().unwrap_or_default();
                scan = Some(tokio::task::spawn_blocking(move || {
                    let t = std::time::Instant::now();
                    let found = matcher.scan(n, &known, &mut files, &unchanged);
                    (started, t.elapsed(), found, files, generation)
                }));
            }
            let wake = [
                self.monitor.next_deadline(Time::now()),
                self.drill_deadline(),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(to_tokio);
            let young_due = self.young.next_due().map(tokio::time::Instant::from_std);
            let check_due = self.self_check.due().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.recv() => self.on_event(event),
                Some(back) = self.back_rx.recv() => {
                    // Events already in are older than what a helper says
                    // now (a signal's sender before the pidfd's exit).
                    while let Ok(event) = events.try_recv() {
                        self.on_event(event);
                    }
                    self.on_back(back)
                }
                Some(said) = self.notify_rx.recv() => self.on_notify(said),
                result = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                    scan = None;
                    if let Ok((started, took, found, files, generation)) = result {
                        stat_files = Some(files);
                        if generation == self.monitor.generation() {
                            self.feed(Input::Scanned { started, took, found });
                            // Ready once the source is open (or failed for
                            // good) and a scan has found what runs. A scan
                            // done before the source opened is not enough:
                            // the opening asks for another.
                            if !self.ready_sent
                                && (self.source.is_some() || self.source_down.is_some())
                            {
                                self.ready_sent = true;
                                self.tell_systemd(true);
                            }

                        } else {
                            self.scans.request();
                        }
                    }
                }
                _ = scan_tick.tick() => self.scans.request(),
                _ = sleep_until(young_due), if young_due.is_some() => {
                    for (entry, child) in self.young.grown(std::time::Instant::now()) {
                        self.feed(Input::Forked { entry, child });
                    }
                }
                _ = sleep_until(check_due), if check_due.is_some() => self.self_check_due(),
                // Idle (nothing waiting for a time) means no wake-ups.
                _ = sleep_until(wake), if wake.is_some() => {
                    self.feed(Input::Tick);
                    self.expire_drills(Time::now());
                }
                Some(request) = asked.recv() => self.on_asked(request),
                _ = tick(&mut keepalive), if keepalive.is_some() => {
                    if let Err(e) = libsystemd::daemon::notify(
                        false,
                        &[libsystemd::daemon::NotifyState::Watchdog, self.systemd_status()],
                    ) {
                        tracing::warn!("cannot send the watchdog keep-alive to systemd: {e}");
                    }
                }
                Some(msg) = control.recv() => {
                    self.on_control(msg);
                    if scan_tick.period() != self.scans.every() {
                        scan_tick = tokio::time::interval(self.scans.every());
                    }
                }
            }
        }
        self.shut_down().await;
    }

    /// Gives the monitor an input and carries out what it says: restart
    /// commands first (a restart waits for nothing), then the rest in
    /// order (a failover after the retry-over's message and dump).
    fn feed(&mut self, input: Input) {
        let (runs, rest): (Vec<Effect>, Vec<Effect>) = self
            .monitor
            .handle(input, Time::now())
            .into_iter()
            .partition(|e| matches!(e, Effect::Run(r) if r.job == crate::monitor::Job::Restart));
        for effect in runs.into_iter().chain(rest) {
            let timed = self.exit_stamp.zip(Self::timed(&effect));
            self.apply(effect);
            if let Some((stamp, what)) = timed {
                self.observe_since_exit(stamp, what);
            }
        }
        self.persist();
    }

    /// Saves the monitor's state if it changed (on the store's thread).
    fn persist(&mut self) {
        if self.monitor.take_dirty()
            && let Some(store) = &mut self.store
        {
            store.save(&self.monitor);
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Notice(notice) => {
                // Metrics first: whoever reads the message and then asks
                // /metrics finds what it says already counted.
                self.telemetry
                    .metrics
                    .notice(&self.monitor, &notice, Time::now());
                self.reporter.notice(&self.monitor, &notice);
                if let Notice::Policy {
                    entry,
                    action: crate::policy::Action::ReportDown { pid, .. },
                    ..
                } = &notice
                {
                    self.flight_record(*entry, *pid);
                }
                if !self.drills.is_empty() {
                    self.drill_notice(&notice);
                }
                if !self.queues.is_empty() {
                    self.queue_notice(&notice);
                }
            }
            Effect::AwaitCommand {
                path,
                pgid,
                since,
                timeout,
            } => {
                let left = timeout.saturating_sub(Time::now().saturating_duration_since(since));
                self.await_command(path, pgid, left)
            }
            Effect::Run(run) => self.run_command(run),
            Effect::Switch { path, request } => self.send_failover(path, request),
            Effect::WatchExit { tgid, start } => self.watch_exit(tgid, start),
            Effect::UnwatchExit { tgid } => {
                if let Some(watches) = &self.exit_watches {
                    watches.unwatch(tgid);
                }
            }
            Effect::FilterTgid { tgid, watch } => {
                if let Some(filter) = self.source.as_mut().and_then(|s| s.filter.as_mut()) {
                    if watch {
                        filter.watch_tgid(tgid);
                    } else {
                        filter.unwatch_tgid(tgid);
                    }
                }
            }
            Effect::AwaitReaped { path, tgids, pgid } => {
                let tx = self.back_tx.clone();
                self.helpers.spawn(async move {
                    let stopped = leftovers::settle(&tgids, pgid).await;
                    // By path: a reload meanwhile renumbers entries.
                    let input = Input::Reaped { path, stopped };
                    let _ = tx.send(Back::Input {
                        input,
                        generation: None,
                    });
                });
            }
            Effect::ReadPidfile { entry, path } => {
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Pidfile {
                    entry,
                    pid: read_pidfile(&path),
                });
            }
            Effect::Recheck { entry, tgids } => {
                let matcher = self.matcher.clone();
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Rechecked {
                    entry,
                    stale: tgids
                        .into_iter()
                        .filter(|tgid| !matcher.still_matches(entry, *tgid))
                        .collect(),
                });
            }
            Effect::Scan => self.scans.request(),
            Effect::Verify { tgids } => {
                let matcher = self.matcher.clone();
                let generation = Some(self.monitor.generation());
                self.blocking(generation, move || Input::Verified {
                    found: tgids
                        .into_iter()
                        .map(|tgid| {
                            let matched = matcher.classify(tgid);
                            (tgid, matched)
                        })
                        .collect(),
                });
            }
            Effect::Probe { entry, pid, probe } => self.probe(entry, pid, probe),
            Effect::Kill { tgid, start, grace } => self.kill_gracefully(tgid, start, grace),
        }
    }

    /// Runs `read` on the blocking pool and feeds its input back.
    fn blocking(&self, generation: Option<u64>, read: impl FnOnce() -> Input + Send + 'static) {
        let tx = self.back_tx.clone();
        self.helpers.spawn(async move {
            if let Ok(input) = tokio::task::spawn_blocking(read).await {
                let _ = tx.send(Back::Input { input, generation });
            }
        });
    }

    fn on_back(&mut self, back: Back) {
        match back {
            Back::Input { input, generation } => {
                if generation.is_none_or(|g| g == self.monitor.generation()) {
                    match input {
                        // A pidfd's word on an exit: in order, as an event's.
                        Input::ExitSeen { tgid, .. } => self.feed_exit(tgid, input),
                        other => self.feed(other),
                    }
                }
            }
            Back::Reloaded {
                result,
                pfile,
                reply,
            } => self.on_reloaded(*result, pfile, reply),
            Back::Audit {
                who,
                action,
                pfile,
                outcome,
            } => self.audit(who, action, pfile, outcome),
            Back::Classified {
                tgid,
                input,
                generation,
            } => {
                if let Some(input) = input
                    && generation == self.monitor.generation()
                {
                    self.feed(input);
                }
                if let Some(released) = self.classifying.finished(tgid) {
                    for child in released.forks {
                        self.on_fork(child);
                    }
                    for input in released.inputs {
                        match input {
                            Input::Exited { tgid, .. } | Input::ExitSeen { tgid, .. } => {
                                self.feed_exit(tgid, input)
                            }
                            other => self.feed(other),
                        }
                    }
                }
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Reload(config, by) => {
                let changes = self.reconfigure(*config);
                self.tell_systemd(self.ready_sent);
                self.audit(sighup(by), "reload", None, Outcome::Done(changes));
            }
            Control::ReloadFailed(errors, by) => {
                let why = format!(
                    "{} error(s) in the configuration; the running one is kept",
                    errors.0.len()
                );
                self.feed(Input::ReloadFailed(errors));
                self.tell_systemd(self.ready_sent);
                self.audit(sighup(by), "reload", None, Outcome::Failed(why));
            }
            Control::Source(Report::Opened { handle, why }) => {
                if let Some(why) = why {
                    self.reporter.report(LogLevel::Warn, &why, &[]);
                }
                if let Some(why) = &handle.cause_unknown {
                    self.reporter.report(
                        LogLevel::Info,
                        &format!("senders of signals cannot be seen ({why}): causes of death will read `cause unknown`"),
                        &[],
                    );
                }
                let input = Input::SourceOpened {
                    name: handle.kind.to_string(),
                    kernel_filter: handle.filter.is_some(),
                    exit_lag: handle.exit_lag,
                    cause_unknown: handle.cause_unknown.clone(),
                };
                self.source_cells = Some(self.telemetry.metrics.source(&handle.kind.to_string()));
                self.source_down = None;
                let checkable = handle.kind != crate::source::SourceKind::Poll;
                self.source = Some(handle);
                self.self_check_source_changed(checkable);
                self.scans.source_opened();
                self.fill_filter();
                self.feed(input);
            }
            Control::Source(Report::Failed(why)) => {
                self.source = None;
                self.source_cells = None;
                self.self_check_source_changed(false);
                self.telemetry.metrics.source_closed();
                self.source_down = Some(why.clone());
                self.feed(Input::SourceFailed(why));
            }
            Control::Source(Report::Kept(why)) => {
                self.reporter.report(LogLevel::Error, &why, &[]);
            }
        }
    }

    /// Runs `config` from now on; says what changed.
    fn reconfigure(&mut self, prepared: Prepared) -> String {
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
            Some(changed) => self
                .telemetry
                .metrics
                .refresh(&self.monitor, changed, Time::now()),
            None => self
                .telemetry
                .metrics
                .set_entries(&self.monitor, Time::now()),
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

    fn open_notify_sockets(&mut self) {
        let failed = self
            .notify
            .sync(self.monitor.entries(), &self.notify_tx, &self.helpers);
        for (_, why) in &failed {
            self.reporter.report(LogLevel::Error, why, &[]);
        }
        self.monitor
            .set_unheard(failed.into_iter().map(|(path, _)| path).collect());
    }

    /// After a Down: the recent events of the entry's trees, to the log
    /// (INFO) and its pfile's health queue (so the dump has them too).
    fn flight_record(&mut self, id: EntryId, pid: Option<u32>) {
        let path = self.monitor.entry(id).path.clone();
        let recent = self.recorder.recent(&path, crate::event::boottime_ns());
        if recent.is_empty() {
            return;
        }
        let who = match pid {
            Some(pid) => format!("('{}',pid={pid})", path.display()),
            None => format!("('{}')", path.display()),
        };
        let head = format!(
            "flight recorder of {who}: the last {} process events of its tree",
            recent.len()
        );
        self.reporter.report(
            LogLevel::Info,
            &head,
            &[
                ("path", json!(path)),
                ("pid", json!(pid)),
                ("events", json!(recent)),
            ],
        );
        let pfile = self.monitor.pfile(id).to_string();
        let block = format!("{head}\n  {}", recent.join("\n  "));
        self.queue_text(&pfile, &block);
    }

    /// Puts every watched name and member into the kernel filter.
    fn fill_filter(&mut self) {
        let Some(filter) = self.source.as_mut().and_then(|s| s.filter.as_mut()) else {
            return;
        };
        for comm in self.matcher.kernel_comms().unwrap_or_default() {
            filter.watch_comm(&comm);
        }
        for tgid in self.monitor.member_tgids() {
            filter.watch_tgid(tgid);
        }
        // The self-check's canaries are psmon's children.
        filter.watch_tgid(std::process::id());
    }

    async fn shut_down(mut self) {
        // Its task ends when it has no more orders to wait for.
        self.exit_watches = None;
        self.notify.close_all();
        self.helpers.close();
        self.commands.close();
        let running = self.commands.len();
        if running > 0 {
            self.reporter.report(
                LogLevel::Info,
                &format!(
                    "psmon stopping; waiting up to {} s for {running} restart or failover command(s)",
                    COMMAND_GRACE.as_secs()
                ),
                &[],
            );
            if tokio::time::timeout(COMMAND_GRACE, self.commands.wait())
                .await
                .is_err()
            {
                self.reporter.report(
                    LogLevel::Warn,
                    "commands still running are left running in their own process groups",
                    &[],
                );
            }
            // Their outcomes, for the log; nothing new is started now.
            while let Ok(back) = self.back_rx.try_recv() {
                if let Back::Input {
                    input: input @ (Input::CommandDone { .. } | Input::Switched { .. }),
                    ..
                } = back
                {
                    for effect in self.monitor.handle(input, Time::now()) {
                        if let Effect::Notice(notice) = effect {
                            self.reporter.notice(&self.monitor, &notice);
                        }
                    }
                }
            }
        }
        if let Some(store) = &self.store {
            let snap = &store.snapshot_ns;
            let costs = store.writer_costs();
            let us = |s: &crate::stats::Samples, p| json!(s.percentile_us(p));
            let bytes = |s: &crate::stats::Samples, p| json!(s.percentile(p));
            self.reporter.report(
                LogLevel::Info,
                &format!(
                    "state saved {} times: {} journal records, {} whole",
                    snap.count(),
                    costs.record_ns.count(),
                    costs.whole_ns.count()
                ),
                &[
                    ("snapshot_p50_us", us(snap, 50.0)),
                    ("snapshot_p99_us", us(snap, 99.0)),
                    ("record_p50_us", us(&costs.record_ns, 50.0)),
                    ("record_p99_us", us(&costs.record_ns, 99.0)),
                    ("append_p50_us", us(&costs.append_ns, 50.0)),
                    ("append_p99_us", us(&costs.append_ns, 99.0)),
                    ("record_bytes_p50", bytes(&costs.record_bytes, 50.0)),
                    ("record_bytes_p99", bytes(&costs.record_bytes, 99.0)),
                    ("whole_p50_us", us(&costs.whole_ns, 50.0)),
                    ("whole_p99_us", us(&costs.whole_ns, 99.0)),
                    ("replace_p50_us", us(&costs.replace_ns, 50.0)),
                    ("replace_p99_us", us(&costs.replace_ns, 99.0)),
                    ("whole_bytes_p50", bytes(&costs.whole_bytes, 50.0)),
                ],
            );
        }
        if self.status_views.count() > 0 {
            let v = &self.status_views;
            self.reporter.report(
                LogLevel::Info,
                &format!("status answered {} times", v.count()),
                &[
                    ("loop_p50_us", json!(v.percentile_us(50.0))),
                    ("loop_p99_us", json!(v.percentile_us(99.0))),
                ],
            );
        }
        if self.queue_writes.count() > 0 {
            let w = &self.queue_writes;
            self.reporter.report(
                LogLevel::Info,
                &format!("health queues written {} times", w.count()),
                &[
                    ("p50_us", json!(w.percentile_us(50.0))),
                    ("p99_us", json!(w.percentile_us(99.0))),
                ],
            );
        }
        self.reporter.report(
            LogLevel::Info,
            "psmon stopping; watched processes are left running",
            &[],
        );
    }
}

/// `config` with its pfiles' entries left out.
fn without_entries(config: &Config) -> Config {
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

/// The shortest MONITOR_INTERVAL of the configuration.
/// The tokio instant of a monitor time (both are `CLOCK_MONOTONIC`).
fn to_tokio(at: Time) -> tokio::time::Instant {
    let now = Time::now();
    let base = tokio::time::Instant::now();
    base + at.saturating_duration_since(now)
}

/// The next tick of `interval`; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; `None` never wakes (the branch is disabled then).
/// Who sent a SIGHUP, when its siginfo said.
fn sighup(by: Option<crate::audit::Who>) -> crate::audit::Who {
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
        let id = EntryId(i as u32);
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
