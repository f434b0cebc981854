//! The command line: what `psmon` accepts. Parsing only; each command's
//! behaviour lives in its own module.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "psmon",
    version,
    about = "Event-driven process monitor for Linux servers",
    long_about = "Event-driven process monitor for Linux servers.\n\n\
psmon keeps the processes of a server alive. psmon run, the daemon, learns of every \
exec and exit the moment it happens (from an eBPF program, else the kernel's proc \
connector, else by polling /proc), and applies to each watched process the policy of its \
configuration: restart it with its command within a retry budget, then report it or ask \
for failover (a command, Pacemaker or CLUSTERPRO); probe it for hangs; restart groups of \
services together in order. Its configuration is NEC CLUSTERPRO MC ProcessSaver's pfile \
format, read as written, or TOML.\n\n\
The other commands talk to the running daemon over its control socket (status, pause, \
resume, reload, test, clear-failover), check a configuration (check), read a pfile's \
health queue from shared memory even when the daemon is gone (dump), convert a pfile to \
TOML (convert), or show process churn live (trace).\n\n\
It logs what happens in ProcessSaver's words to its log file, the journal or standard \
error, saves its state so that a restarted psmon takes over without restarting what runs, \
and serves /healthz, /status, /metrics and a status page over HTTP when asked to."
)]
/// psmon's command line.
pub struct Cli {
    /// Log level for psmon's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace", "off"])]
    pub log_level: String,
    /// The control socket `psmon run` listens on and the other commands
    /// talk to.
    #[arg(long, global = true, value_name = "PATH", env = "PSMON_SOCKET",
          default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// psmon's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the configured processes and restart them when they die (the daemon).
    Run(crate::daemon::RunOptions),
    /// Validate configuration files or directories; print every error.
    Check {
        /// pfile_*, *.toml, psagent.conf, psenv, or directories of them.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Accept files not owned by root or writable by others.
        #[arg(long)]
        insecure_config: bool,
        /// Also list, for each entry, the processes that match it now and why.
        #[arg(long)]
        live: bool,
    },
    /// Print a pfile as psmon's TOML format.
    Convert {
        /// The pfile.
        pfile: std::path::PathBuf,
    },
    /// Show process fork/exec/exit events live, for debugging process churn.
    Trace(crate::trace::TraceOptions),
    /// What the running psmon sees: each entry's state, processes, restart
    /// attempts and last failure, and the event source.
    ///
    /// States: unknown (not seen yet), up, down (not restarted: report-only
    /// or stopped on purpose), restarting, retry_over, failed_over (retries
    /// spent and the failover command run), paused.
    Status {
        /// Only this pfile (`app` for pfile_app or app.toml).
        pfile: Option<String>,
        /// One JSON object: {"source", "lost_events", "entries": [{"pfile",
        /// "path", "state", "pids", "since", "attempts", "retry",
        /// "last_exit", "last_failure"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Stop monitoring a pfile's processes (ProcessSaver's `padmin stop`):
    /// they are neither restarted nor reported Down until `resume`.
    Pause {
        /// The pfile (its name, or `pfile_NAME`).
        pfile: String,
    },
    /// Monitor a paused pfile again (`padmin start`); a process that died
    /// meanwhile is handled at once.
    Resume {
        /// The pfile (its name, or `pfile_NAME`).
        pfile: String,
    },
    /// Read the configuration again (`padmin reload`): one pfile, leaving
    /// the others as they run, or all of them. A broken file is refused
    /// with every error and the running configuration is kept.
    Reload {
        /// The pfile (its name, or `pfile_NAME`); all when absent.
        pfile: Option<String>,
    },
    /// Print (or write) a pfile's health queue: its entries' states and
    /// recent events, read straight from its shared-memory segment (keyed
    /// by IPCKEY), so it works while psmon is stopped, stuck or gone. A
    /// segment that is not psmon's, of another layout, or caught half-way
    /// through a write is reported as such (exit 1).
    Dump {
        /// The pfile (`app` for pfile_app); default: every pfile with an IPCKEY.
        pfile: Option<String>,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// Configuration directory, to find the pfiles' IPCKEYs; without it,
        /// every segment on the host that carries psmon's header (ipcs -m),
        /// each naming its pfile.
        #[arg(long, value_name = "DIR")]
        conf: Option<std::path::PathBuf>,
        /// Accept configuration files not owned by root (tests only).
        #[arg(long)]
        insecure_config: bool,
    },
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        /// Where psmon.8 and psmon-COMMAND.8 go.
        #[arg(long, value_name = "DIR")]
        man: Option<std::path::PathBuf>,
        /// Where the bash, zsh and fish completions go.
        #[arg(long, value_name = "DIR")]
        completions: Option<std::path::PathBuf>,
    },
    /// Remove the location constraints (`cli-ban-…`, `cli-prefer-…`) that
    /// psmon's Pacemaker failover requests left, so the resource may run on
    /// this node again: those of one pfile, or all (`psmon status` lists them).
    ClearFailover {
        /// The pfile (its name, or `pfile_NAME`); all when absent.
        pfile: Option<String>,
    },
    /// The audit trail: the operator actions the running psmon recorded
    /// (pause, resume, reload, test, clear-failover, SIGHUP, refused ones
    /// too), who asked and how each ended, oldest first.
    Audit {
        /// Only those of the last DURATION (`10m`, `2h`, `1d`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// One JSON object: {"records": [{"time", "action", "pfile", "uid",
        /// "pid", "comm", "via", "outcome", "text"}]}.
        #[arg(long)]
        json: bool,
    },
    /// The recovery drill (ProcessSaver's `pcheck -k`): kill the watched
    /// process, wait for psmon to bring it back, and print how long
    /// detection and recovery took. Exit 0 when it recovered, 1 when it did
    /// not within the entry's limits, 2 when the drill cannot be run (a
    /// paused or report-only entry). The drill's restart does not count
    /// against the retry budget.
    Test {
        /// The pfile (its name, or `pfile_NAME`).
        pfile: String,
        /// The entry's path, when the pfile watches several processes.
        path: Option<String>,
        /// The signal to kill with (number).
        #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(i32).range(1..=64))]
        signal: i32,
    },
}
