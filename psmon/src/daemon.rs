//! `psmon run`: wires the daemon together — loads the configuration, opens
//! the best event source (reopening it if it fails), starts the supervisor,
//! reloads on SIGHUP and stops on SIGTERM/SIGINT, leaving watched processes
//! running. Only start-up errors are fatal.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, LoadOptions},
    control,
    event::ProcEvent,
    report::{LogFormat, Reporter},
    source::{self, SourceChoice, SourceOptions},
    supervisor::{Control, Setup, Supervisor},
};

/// The layout ProcessSaver installs; used when `/etc/psmon` does not exist.
pub const LEGACY_CONF_DIR: &str = "/var/opt/HA/PS/conf";
/// Where psmon's configuration lives.
pub const DEFAULT_CONF_DIR: &str = "/etc/psmon";

/// What `psmon run` is told on its command line.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Configuration directory (pfile_*, *.toml, psagent.conf, psenv).
    /// Default: /etc/psmon, else /var/opt/HA/PS/conf.
    #[arg(long, value_name = "DIR")]
    pub conf: Option<PathBuf>,
    /// Where events come from; `auto` tries ebpf, then netlink, then poll.
    #[arg(long, value_enum, default_value = "auto")]
    pub source: SourceChoice,
    /// Accept configuration files not owned by root or writable by others
    /// (for tests and development only).
    #[arg(long)]
    pub insecure_config: bool,
    /// Format of operator messages on stderr and in the log file.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Directory of psmon.log (default: LOG_DIR from psagent.conf).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Where psmon keeps the state that survives its own restart (retry
    /// budgets, pauses, the processes it watches).
    #[arg(long, value_name = "DIR", env = "PSMON_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// Keep no state: a restarted psmon starts afresh (budgets reset).
    #[arg(long)]
    pub no_state: bool,
}

/// The configuration directory: the one given, else /etc/psmon, else
/// ProcessSaver's when only it exists.
pub fn conf_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let default = PathBuf::from(DEFAULT_CONF_DIR);
        if !default.exists() && std::path::Path::new(LEGACY_CONF_DIR).exists() {
            PathBuf::from(LEGACY_CONF_DIR)
        } else {
            default
        }
    })
}

/// `psmon run`: watches the configured processes until `shutdown`.
pub async fn run(
    opts: RunOptions,
    socket: PathBuf,
    shutdown: CancellationToken,
    spawner: Option<crate::spawner::Forked>,
) -> anyhow::Result<()> {
    // Installed first: a SIGHUP before the reload task first ran (an
    // operator's reload right at start) would kill psmon, its default.
    let hup = signal(SignalKind::hangup());
    if let Err(e) = crate::signals::remember_sighup_senders() {
        tracing::warn!("SIGHUP senders will not be named in the audit trail: {e}");
    }
    let dir = conf_dir(opts.conf.clone());
    let load = LoadOptions {
        insecure: opts.insecure_config,
    };
    let config = Config::load_dir(&dir, load)?;
    raise_open_file_limit();
    let log_dir = opts
        .log_dir
        .clone()
        .unwrap_or_else(|| config.agent.log_dir.clone());
    let mut reporter = Reporter::new(config.agent.log_level, opts.log_format, Some(&log_dir));
    let access = control_access(&config)?;
    // Before anything is watched: a second psmon must not start at all.
    let listener = control::bind(&socket, &access, !opts.insecure_config)?;
    reporter.report(
        crate::config::LogLevel::Info,
        &format!(
            "psmon starting: {} processes watched from {}",
            config.entries().count(),
            dir.display()
        ),
        &[],
    );
    for warning in crate::survey::Survey::new(&config).warnings() {
        reporter.report(crate::config::LogLevel::Warn, &warning.to_string(), &[]);
    }
    let (saved, store, no_state) = open_state(&opts, &mut reporter);
    let retry_interval = config.agent.retry_interval;
    let telemetry = Arc::new(crate::endpoint::Telemetry::default());
    let push = match &config.agent.push_url {
        Some(url) if !no_state => start_push(
            url,
            &opts.state_dir,
            retry_interval,
            &mut reporter,
            &telemetry,
        ),
        _ => None,
    };
    tap_messages(
        &mut reporter,
        &config,
        &telemetry,
        push.as_ref().map(|(p, _)| p),
    );
    let endpoint_reporter = reporter.sibling();
    let (config_agent, config_tls) = (config.agent.clone(), config.tls.clone());
    let (event_tx, event_rx) = mpsc::channel::<ProcEvent>(config.agent.event_queue_size);
    let (orders_tx, orders_rx) = mpsc::channel(4);
    let canary = start_canary();
    let supervisor = Supervisor::new(Setup {
        config,
        spawner: connect_spawner(spawner),
        reporter,
        conf_dir: dir.clone(),
        load,
        saved,
        store,
        telemetry: Arc::clone(&telemetry),
        canary: canary.clone(),
        source_orders: orders_tx,
        runtime_dir: socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf(),
    });
    let source_options = SourceOptions {
        poll_interval: supervisor.scan_interval(),
        kernel_filter: supervisor.kernel_filter_usable(),
        ..SourceOptions::default()
    };
    let (control_tx, control_rx) = mpsc::channel::<Control>(16);

    // Fatal only now, at start-up: the chosen source must open once.
    let first = source::open(opts.source, &source_options).context("opening the event source")?;
    for refusal in &first.refused {
        tracing::warn!("{refusal:#}");
    }
    let token = shutdown.child_token();
    let tasks = tokio_util::task::TaskTracker::new();
    let keeper = source::keeper::Keeper {
        choice: opts.source,
        options: source_options,
        retry_interval,
        events: event_tx,
        reports: control_tx.clone(),
        orders: orders_rx,
        canary: canary.clone(),
        token: token.clone(),
    };
    tasks.spawn(keeper.keep(first.source));
    tasks.spawn(reload_on_sighup(hup, dir, load, control_tx, token.clone()));
    let (asked_tx, asked_rx) = mpsc::channel::<control::Asked>(64);
    start_endpoint(
        &config_agent,
        config_tls.as_ref(),
        telemetry,
        asked_tx.clone(),
        endpoint_reporter,
        token.clone(),
    );
    tasks.spawn(control::serve(
        listener,
        socket,
        access,
        asked_tx,
        token.clone(),
    ));
    let mut supervisor = supervisor;
    if let Some(period) = libsystemd::daemon::watchdog_enabled(false) {
        supervisor.keep_watchdog_alive(period);
    }
    supervisor
        .run(event_rx, control_rx, asked_rx, token.clone())
        .await;
    token.cancel();
    stop(tasks, push).await;
    notify_systemd(libsystemd::daemon::NotifyState::Stopping);
    Ok(())
}

/// The self-check's canary thread; `None` (and said) when it cannot start.
fn start_canary() -> Option<crate::self_check::Canary> {
    match crate::self_check::Canary::start() {
        Ok(canary) => Some(canary),
        Err(e) => {
            tracing::error!("the event source's self-check is off: cannot start its thread: {e}");
            None
        }
    }
}

/// The spawner forked at start; without one (or if it cannot be reached,
/// which is said) psmon starts commands itself.
fn connect_spawner(forked: Option<crate::spawner::Forked>) -> crate::spawner::Spawner {
    match forked.map(crate::spawner::Spawner::connect) {
        Some(Ok(spawner)) => spawner,
        Some(Err(e)) => {
            tracing::warn!("cannot reach the command spawner ({e}): psmon starts commands itself");
            crate::spawner::Spawner::none()
        }
        None => crate::spawner::Spawner::none(),
    }
}

/// Who may use the control socket: root, and CONTROL_GROUP's members.
fn control_access(config: &Config) -> anyhow::Result<control::Access> {
    let Some(name) = &config.agent.control_group else {
        return Ok(control::Access::default());
    };
    let group = nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "CONTROL_GROUP {name} in psagent.conf is not a group on this host: create it, or remove the setting"
            )
        })?;
    Ok(control::Access {
        group: Some((name.clone(), group.gid.as_raw())),
    })
}

/// The state a previous psmon saved, where state is kept now, and whether
/// psmon keeps none (`--no-state`, or a state directory another user could
/// write: such state would say which pids are the services' and which
/// commands run).
fn open_state(
    opts: &RunOptions,
    reporter: &mut Reporter,
) -> (
    Option<crate::monitor::Monitor>,
    Option<crate::state::Store>,
    bool,
) {
    let no_state = opts.no_state
        || match crate::secure_dir::ensure(&opts.state_dir, 0o700, !opts.insecure_config) {
            Ok(()) => false,
            Err(e) => {
                reporter.report(
                    crate::config::LogLevel::Error,
                    &format!(
                        "the state directory is refused: {e}; psmon keeps no state and pushes no events (a restarted psmon starts afresh)"
                    ),
                    &[],
                );
                true
            }
        };
    if no_state {
        return (None, None, true);
    }
    let saved = match crate::state::load(&opts.state_dir) {
        Ok(Some(loaded)) => {
            if let Some(warning) = &loaded.warning {
                reporter.report(crate::config::LogLevel::Warn, warning, &[]);
            }
            Some(loaded.monitor)
        }
        Ok(None) => None,
        Err(warning) => {
            reporter.report(crate::config::LogLevel::Warn, &warning, &[]);
            None
        }
    };
    let store = match crate::state::Store::open(&opts.state_dir) {
        Ok(store) => Some(store),
        Err(e) => {
            reporter.report(
                crate::config::LogLevel::Warn,
                &format!(
                    "cannot keep state in {}: {e}; a restarted psmon will start afresh",
                    opts.state_dir.display()
                ),
                &[],
            );
            None
        }
    };
    (saved, store, false)
}

/// The event push to `url`, its queue under the state directory; `None`
/// (said) when the queue cannot be opened: monitoring goes on.
fn start_push(
    url: &str,
    state_dir: &std::path::Path,
    retry: Duration,
    reporter: &mut Reporter,
    telemetry: &crate::endpoint::Telemetry,
) -> Option<(Arc<crate::push::Push>, std::thread::JoinHandle<()>)> {
    match crate::push::start(
        url.to_string(),
        state_dir,
        retry,
        reporter.sibling(),
        telemetry.metrics.pushing(),
    ) {
        Ok(started) => Some(started),
        Err(e) => {
            reporter.report(
                crate::config::LogLevel::Error,
                &format!(
                    "event push is off: cannot open its queue in {}: {e}; monitoring goes on",
                    state_dir.join("push").display()
                ),
                &[],
            );
            None
        }
    }
}

/// Messages are built as JSON for the endpoint's `/events` and the push
/// only when one of them is on: otherwise no message costs more.
fn tap_messages(
    reporter: &mut Reporter,
    config: &Config,
    telemetry: &Arc<crate::endpoint::Telemetry>,
    push: Option<&Arc<crate::push::Push>>,
) {
    let endpoint_on = config.agent.heartbeat_port != 0;
    if !endpoint_on && push.is_none() {
        return;
    }
    let telemetry = endpoint_on.then(|| Arc::clone(telemetry));
    let push = push.map(Arc::clone);
    let log_level = config.agent.log_level;
    reporter.set_tap(Arc::new(move |kind, message| {
        if let Some(push) = &push {
            push.event(kind, message);
        }
        let level = message["level"].as_str().unwrap_or("INFO");
        let shown = match level {
            "DEBUG" => log_level <= crate::config::LogLevel::Debug,
            _ => true,
        };
        if shown && let Some(telemetry) = &telemetry {
            telemetry.said(message.clone());
        }
    }));
}

/// Once the supervisor has stopped: the source closes (netlink
/// unsubscribes, BPF programs detach) and a reload being parsed is
/// abandoned; the push thread writes what it still holds to its queue and
/// stops once the supervisor's reporter (and with it the last sender) is
/// gone.
async fn stop(
    tasks: tokio_util::task::TaskTracker,
    push: Option<(Arc<crate::push::Push>, std::thread::JoinHandle<()>)>,
) {
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the event source did not stop within 2 s");
    }
    if let Some((push, thread)) = push {
        drop(push);
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(Duration::from_secs(3), joined)
            .await
            .is_err()
        {
            tracing::warn!(
                "the event push did not stop within 3 s; its queue on disk keeps the rest"
            );
        }
    }
}

/// Starts the HTTP endpoint when HEARTBEAT_PORT asks for one. A TLS
/// configuration that does not load keeps it off, with the reason;
/// monitoring runs on either way.
fn start_endpoint(
    agent: &crate::config::Agent,
    tls: Option<&crate::config::Tls>,
    telemetry: Arc<crate::endpoint::Telemetry>,
    asked: mpsc::Sender<control::Asked>,
    reporter: Reporter,
    token: CancellationToken,
) {
    if agent.heartbeat_port == 0 {
        return;
    }
    let reporter = std::sync::Mutex::new(reporter);
    let say = move |ok: bool, message: String| {
        let level = if ok {
            crate::config::LogLevel::Info
        } else {
            crate::config::LogLevel::Error
        };
        if let Ok(mut r) = reporter.lock() {
            r.report(level, &message, &[]);
        }
    };
    let tls = match tls.map(|t| t.server_config()) {
        None => None,
        Some(Ok(config)) => Some(config),
        Some(Err(d)) => {
            say(
                false,
                format!(
                    "the HTTP endpoint stays off: {d}; monitoring goes on (fix ps_ssl.conf, then restart psmon)"
                ),
            );
            return;
        }
    };
    let setup = crate::endpoint::Setup {
        address: std::net::SocketAddr::new(agent.heartbeat_address, agent.heartbeat_port),
        tls,
        telemetry,
        asked,
        say: Box::new(say),
    };
    if let Err(e) = crate::endpoint::start(setup, token) {
        tracing::error!("the HTTP endpoint is off: cannot start its thread: {e}");
    }
}

async fn reload_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    dir: PathBuf,
    load: LoadOptions,
    control: mpsc::Sender<Control>,
    token: CancellationToken,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP; reload is unavailable");
        return;
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = hup.recv() => {}
        }
        let by = crate::signals::last_sighup_sender()
            .map(|(uid, pid)| crate::audit::Who::of(uid, Some(pid), crate::audit::Via::Sighup));
        // READY=1 follows once the supervisor has the new configuration
        // (or has refused it).
        notify_systemd(libsystemd::daemon::NotifyState::Reloading);
        // After a rotation that did not rename (copy elsewhere, then
        // truncate, or a new file put in place), SIGHUP opens it anew.
        crate::logsink::reopen();
        let d = dir.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = Config::load_dir(&d, load).map(crate::supervisor::Prepared::new);
            // Parsing a large file (up to MAX_FILE_BYTES) can take tens of
            // MB for a moment; hand them back rather than keep them.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only returns free heap memory to the system.
            unsafe {
                libc::malloc_trim(0);
            }
            loaded
        })
        .await;
        let msg = match loaded {
            Ok(Ok(config)) => Control::Reload(Box::new(config), by),
            Ok(Err(errors)) => Control::ReloadFailed(errors, by),
            Err(_) => continue,
        };
        if control.send(msg).await.is_err() {
            return;
        }
    }
}

/// sd_notify(3) for `Type=notify` units (a path or an abstract `@name`
/// in NOTIFY_SOCKET); a no-op outside systemd.
fn notify_systemd(state: libsystemd::daemon::NotifyState) {
    if let Err(e) = libsystemd::daemon::notify(false, &[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Scans keep the stat file of every watched process open (one read each
/// per scan instead of three syscalls), so lift the soft limit on open
/// files to the hard one. Where it stays low, scans open files as needed.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // No limit is RLIM_INFINITY, the largest value: never below another.
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "could not raise RLIMIT_NOFILE");
    }
}
