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

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    audit::Outcome,
    config::{Config, ConfigErrors, LoadOptions, LogLevel},
    control::{Asked, Reply},
    event::ProcEvent,
    monitor::{Effect, Input, Monitor},
    proc,
    recorder::Recorder,
    report::Reporter,
    scan::{Matcher, ScanState},
    self_check::{Canary, SelfCheck},
    source::{
        Handle,
        keeper::{Order, Report},
    },
    state::Store,
};

mod audit;
mod clock;
mod commands;
mod effects;
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
mod reload;
mod scans;
mod self_check;
mod shutdown;
mod source;
mod status;
mod systemd;
mod young;

pub use ops::Prepared;
use reload::{sighup, without_entries};

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
    /// The configuration to run.
    pub config: Config,
    /// Where messages go.
    pub reporter: Reporter,
    /// Where the configuration was read from, and how (for reloads).
    pub conf_dir: std::path::PathBuf,
    /// How it was loaded (for reloads).
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

/// psmon run's I/O shell: it feeds the monitor what the source, the
/// scans, the commands and the operators say, and carries out what the
/// monitor asks.
pub struct Supervisor {
    monitor: Monitor,
    /// What time it is: tokio's clock in monitor time.
    clock: clock::Clock,
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
    /// A supervisor for `setup`, not running yet.
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
        let clock = clock::Clock::new();
        telemetry.metrics.set_entries(&monitor, clock.now());
        let (notify_tx, notify_rx) = mpsc::channel(notify::QUEUE);
        Supervisor {
            clock,
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

    /// Runs until `token` is cancelled, then stops (see `shutdown`).
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
        let mut scan: Option<JoinHandle<scans::ScanDone>> = None;
        let mut stat_files = Some(ScanState::default());
        loop {
            if scan.is_none() && self.scans.take_request() {
                // Taken with the snapshot of the members: an exit applied
                // after this moment wins over what the scan reports.
                let planned = self.scans.unchanged(self.source.as_mut());
                scan = Some(scans::start(
                    self.clock.now(),
                    Arc::clone(&self.matcher),
                    self.monitor.entry_count(),
                    self.monitor.known(),
                    self.monitor.generation(),
                    planned,
                    stat_files.take().unwrap_or_default(),
                ));
            }
            let wake = [
                self.monitor.next_deadline(self.clock.now()),
                self.drill_deadline(),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|at| self.clock.tokio_instant(at));
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
                    if let Ok(scans::ScanDone { started, took, found, files, generation, walked }) = result {
                        stat_files = Some(files);
                        self.scans.finished(walked);
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
                    self.expire_drills(self.clock.now());
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
            .handle(input, self.clock.now())
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
            Control::Source(report) => self.on_source(report),
        }
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
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
