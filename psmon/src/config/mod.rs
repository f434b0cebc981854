//! Configuration: reading pfiles (the legacy ProcessSaver format), psmon's
//! TOML files, `psagent.conf` and `psenv` into one validated [`Config`].
//!
//! Parsing and validation are separate passes and every problem is reported
//! at once, each with file, line and column ([`Diagnostic`]). This module
//! owns the model and its checks; it does not act on it.

mod agent;
mod files;
#[cfg(test)]
mod fuzz;
mod load;
mod pfile;
mod tls;
mod toml_format;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

pub use agent::{Agent, Env, LogLevel};
pub use files::{MAX_ERRORS_PER_FILE, MAX_FILE_BYTES};
pub use tls::Tls;
pub use toml_format::to_toml;

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file it is in.
    pub file: PathBuf,
    /// 1-based; 0 when the problem is with the file as a whole.
    pub line: usize,
    /// 1-based column of the offending text.
    pub col: usize,
    /// What is wrong, and what is expected instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// A problem with `file` as a whole (no line, no column).
fn whole_file(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.0 {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// What to do when the restart budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRetryOver {
    /// Report and keep watching.
    Continue,
    /// Report and run the failover command.
    Switch,
    /// Report, then keep trying every `slow_retry_interval` (TOML only).
    RetrySlowly,
}

impl OnRetryOver {
    /// As configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            OnRetryOver::Continue => "continue",
            OnRetryOver::Switch => "switch",
            OnRetryOver::RetrySlowly => "retry_slowly",
        }
    }
}

/// How `switch` asks for failover (psagent.conf's FAILOVER_DRIVER).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverDriver {
    /// Run the failover command (FAILOVER_COMMAND or the entry's `failover`).
    #[default]
    Command,
    /// Move a Pacemaker resource away from this node, and check it started elsewhere.
    Pacemaker,
    /// Move a CLUSTERPRO X failover group with `clpgrp`.
    Clusterpro,
}

/// How the Pacemaker driver asks (psagent.conf's FAILOVER_MODE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// `crm_resource --move`: the cluster bans the resource from this node.
    #[default]
    Move,
    /// `crm_resource --ban --node THIS`.
    Ban,
    /// `crm_resource --fail --node THIS`: the resource's own
    /// migration-threshold decides whether it moves.
    Fail,
}

impl FailoverDriver {
    /// The names a configuration may give.
    pub const NAMES: [&str; 3] = ["command", "pacemaker", "clusterpro"];

    /// Parses a driver name; the error says what is expected.
    pub fn parse(v: &str) -> Result<FailoverDriver, String> {
        match v.to_ascii_lowercase().as_str() {
            "command" => Ok(FailoverDriver::Command),
            "pacemaker" => Ok(FailoverDriver::Pacemaker),
            "clusterpro" => Ok(FailoverDriver::Clusterpro),
            _ => Err(format!(
                "unknown failover driver `{v}`{}",
                hint(v, &Self::NAMES)
            )),
        }
    }
}

impl FailoverMode {
    /// The names a configuration may give.
    pub const NAMES: [&str; 3] = ["move", "ban", "fail"];

    /// Parses a mode name; the error says what is expected.
    pub fn parse(v: &str) -> Result<FailoverMode, String> {
        match v.to_ascii_lowercase().as_str() {
            "move" => Ok(FailoverMode::Move),
            "ban" => Ok(FailoverMode::Ban),
            "fail" => Ok(FailoverMode::Fail),
            _ => Err(format!(
                "unknown failover mode `{v}`{}",
                hint(v, &Self::NAMES)
            )),
        }
    }
}

/// An entry's or group's own choice of failover, over psagent.conf's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailoverChoice {
    /// Which driver sends the request.
    pub driver: Option<FailoverDriver>,
    /// The cluster's resource (Pacemaker) or failover group (CLUSTERPRO).
    pub resource: Option<String>,
    /// How Pacemaker is asked.
    pub mode: Option<FailoverMode>,
}

/// How a process is recognised as an instance of an entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// `/proc/PID/exe`, `argv[0]`, or the script an interpreter runs equals the path.
    Path,
    /// The command line (arguments joined by spaces) matches this glob.
    Cmdline(glob::Pattern),
    /// Every process of this systemd unit (found through its cgroup); the
    /// entry's `path` is the unit's name.
    Unit(String),
    /// Every process of this cgroup v2 directory (the entry's `path`).
    Cgroup(PathBuf),
}

impl Match {
    /// Membership in a cgroup decides, not the executable.
    pub fn by_cgroup(&self) -> bool {
        matches!(self, Match::Unit(_) | Match::Cgroup(_))
    }
}

/// One watched process (a PENT line, or a TOML `[[entry]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Absolute path of the executable (or script).
    pub path: PathBuf,
    /// Run through `/bin/sh -c`; `None` (`-` in a pfile) = detect and report only.
    pub restart: Option<String>,
    /// The retry window; `None` (grace 0) = the window never expires.
    pub grace: Option<Duration>,
    /// Restart attempts allowed within the window; 0 = report only.
    pub retry: u32,
    /// What to do when the budget is spent.
    pub action: OnRetryOver,
    /// How a process is recognised as an instance.
    pub matcher: Match,
    /// Up while at least this many instances run.
    pub min: u32,
    /// More than this many instances is warned about.
    pub max: Option<u32>,
    /// Exit codes that mean "stopped on purpose": reported, not restarted.
    pub stop_exit_codes: Vec<i32>,
    /// Time limit of the restart command; its process group is killed past it.
    pub restart_timeout: Duration,
    /// How long to wait after the restart command for a matching process.
    pub start_wait: Duration,
    /// Failover command for `switch`, overriding psagent.conf's.
    pub failover: Option<String>,
    /// Failover driver, resource and mode, overriding psagent.conf's.
    pub failover_choice: FailoverChoice,
    /// Which matching processes count as instances.
    pub rule: Rule,
    /// A restarted process must live this long before it is Up; one that
    /// dies sooner is a failed attempt.
    pub start_secs: Duration,
    /// Wait before the second attempt in a row; doubled for each further one.
    pub restart_backoff: Duration,
    /// The longest wait between attempts (the pfile's MONITOR_INTERVAL).
    pub backoff_max: Duration,
    /// A restart stops counting against the budget once its process has
    /// stayed up this long (TOML: `healthy_secs`); `None`: it counts for
    /// the whole window, as ProcessSaver's does.
    pub healthy: Option<Duration>,
    /// Up to this much is added at random to each back-off, so that hosts
    /// do not restart in step (TOML: `restart_jitter`).
    pub restart_jitter: Duration,
    /// With `retry_slowly`, the wait between attempts once the budget is spent.
    pub slow_retry_interval: Duration,
    /// How to tell that the process hangs (TOML `[entry.probe]`).
    pub probe: Option<Box<Probe>>,
    /// Which user an instance must run as (TOML `user`).
    pub owner: Owner,
    /// Where it was defined, for messages.
    pub line: usize,
}

/// Which user a matching process must run as (its effective uid) to be one
/// of the entry's: a local user who runs its own copy of a watched program
/// must not keep root's service "up" after it died. Processes of root
/// always may (whatever root runs is the administrator's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Owner {
    /// The user of the first instance psmon sees, or of the one it starts
    /// when none runs (the default).
    #[default]
    Learned,
    /// This uid (TOML `user = "name"` or a number).
    Uid(u32),
    /// Anyone (TOML `user = "any"`).
    Any,
}

/// A hang probe: asked every `interval`, a process that gives no good
/// answer within `timeout`, `failures` times in a row, hangs.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// How the process is asked.
    pub kind: ProbeKind,
    /// How often.
    pub interval: Duration,
    /// Slower than this but answering: a warning only.
    pub warn: Duration,
    /// No good answer within this: a failure.
    pub timeout: Duration,
    /// Failures in a row that make the process hung.
    pub failures: u32,
    /// After the process became Up, failures within this do not count.
    pub start_grace: Duration,
    /// SIGTERM to a hung process, then SIGKILL after this.
    pub kill_grace: Duration,
}

/// How a hang probe asks a process whether it answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeKind {
    /// A TCP connection to `host:port` is accepted.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// Connect, send `send`, and the answer contains `expect`.
    SendExpect {
        /// `host:port`.
        address: String,
        /// What is sent once connected.
        send: Vec<u8>,
        /// What the answer must contain.
        expect: String,
    },
    /// An HTTP(S) GET of `url` answers with `status` (any 2xx or 3xx when
    /// `None`); certificates are checked unless `insecure`.
    Http {
        /// What is asked for.
        url: String,
        /// The status the answer must have.
        status: Option<u16>,
        /// Certificates are not checked.
        insecure: bool,
    },
    /// A connection to this Unix socket is accepted.
    Unix {
        /// The socket.
        path: PathBuf,
    },
    /// The command exits 0 (run like a restart command).
    Command {
        /// The command line.
        command: String,
    },
    /// The sd_notify protocol: the commands psmon starts get a
    /// `NOTIFY_SOCKET`; `READY=1` marks the process ready, and `WATCHDOG=1`
    /// must come at least every `timeout` (given as `WATCHDOG_USEC`).
    Notify,
}

impl Probe {
    /// msprobe's defaults: every 10 s, warn past 5 s, hung past 10 s.
    pub fn new(kind: ProbeKind) -> Probe {
        Probe {
            kind,
            interval: Duration::from_secs(10),
            warn: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            failures: 1,
            start_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// Entries restarted together (TOML `[[group]]`): any member Down or hung
/// stops the running members in reverse order and starts them all in
/// order, each Up and ready before the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Its name, as messages and `psmon status` give it.
    pub name: String,
    /// Entry paths, in start order.
    pub members: Vec<PathBuf>,
    /// Group restarts allowed within `window`.
    pub restarts: u32,
    /// The window the restarts are counted in.
    pub window: Duration,
    /// When the group's budget is spent.
    pub action: OnRetryOver,
    /// Per member: Up, and ready, within this.
    pub start_timeout: Duration,
    /// SIGTERM to a member being stopped, then SIGKILL after this.
    pub kill_grace: Duration,
    /// Failover driver, resource (default: the group's name) and mode.
    pub failover_choice: FailoverChoice,
    /// Failover command, overriding psagent.conf's (as an entry's
    /// `failover` does).
    pub failover: Option<String>,
    /// Where it was defined, for messages.
    pub line: usize,
    /// `members[i]`'s position in its array, for messages.
    pub member_cols: Vec<(usize, usize)>,
}

impl Group {
    /// The watcher's defaults: two restarts within ten minutes.
    pub const DEFAULT_RESTARTS: u32 = 2;
    /// … within ten minutes.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
    /// A minute for each member to be Up and ready.
    pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
    /// Five seconds from SIGTERM to SIGKILL.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
}

/// Which of the processes that match an entry are its instances.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Rule {
    /// The processes psmon or anyone else started from the path, not what
    /// they forked: a process forked (at any depth) by one of the entry's
    /// processes is a worker, orphaned or not, unless it took over from a
    /// parent that daemonized (exited 0 within `start_secs`). The default.
    #[default]
    Lineage,
    /// Every matching process (`count = "all"`: what `ps` would show).
    All,
    /// Only processes whose parent is not itself a matching process: a
    /// forking daemon's main process, not its workers (orphaned workers
    /// are workers still).
    MainOnly,
    /// Only the process whose pid the file holds (re-read when it may have
    /// changed), and only while it matches.
    Pidfile(PathBuf),
}

impl Rule {
    /// Whether process `tgid` (child of `ppid`; `worker` when forked by
    /// another of them), one of the entry's matching processes, is an
    /// instance; `is_member` says whether a pid is another of them,
    /// `pidfile_pid` what the pidfile holds now.
    pub fn counts(
        &self,
        tgid: u32,
        ppid: u32,
        worker: bool,
        is_member: impl Fn(u32) -> bool,
        pidfile_pid: Option<u32>,
    ) -> bool {
        match self {
            Rule::Lineage => !worker,
            Rule::All => true,
            Rule::MainOnly => !worker && !is_member(ppid),
            Rule::Pidfile(_) => pidfile_pid == Some(tgid),
        }
    }
}

impl Entry {
    /// A restart command still running after this is killed.
    pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);
    /// A restarted process must appear within this.
    pub const DEFAULT_START_WAIT: Duration = Duration::from_secs(10);
    /// … and live this long to be Up.
    pub const DEFAULT_START_SECS: Duration = Duration::from_secs(1);
    /// The first back-off after a failed attempt (it doubles).
    pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(1);
    /// Between attempts once the budget is spent (`retry_slowly`).
    pub const DEFAULT_SLOW_RETRY_INTERVAL: Duration = Duration::from_secs(60);
    /// TOML's default `healthy_secs`: this many times `start_secs` (at
    /// least one second's worth).
    pub const HEALTHY_START_SECS: u32 = 10;

    /// A PENT line's worth of settings with every extra at its default.
    pub fn new(
        path: PathBuf,
        restart: Option<String>,
        grace: u64,
        retry: u32,
        action: OnRetryOver,
    ) -> Self {
        Entry {
            path,
            restart,
            grace: (grace > 0).then(|| Duration::from_secs(grace)),
            retry,
            action,
            matcher: Match::Path,
            min: 1,
            max: None,
            stop_exit_codes: Vec::new(),
            restart_timeout: Self::DEFAULT_RESTART_TIMEOUT,
            start_wait: Self::DEFAULT_START_WAIT,
            failover: None,
            failover_choice: FailoverChoice::default(),
            rule: Rule::Lineage,
            start_secs: Self::DEFAULT_START_SECS,
            restart_backoff: Self::DEFAULT_RESTART_BACKOFF,
            backoff_max: Pfile::DEFAULT_MONITOR_INTERVAL,
            healthy: None,
            restart_jitter: Duration::ZERO,
            slow_retry_interval: Self::DEFAULT_SLOW_RETRY_INTERVAL,
            probe: None,
            owner: Owner::Learned,
            line: 0,
        }
    }

    /// True when psmon may restart it at all.
    pub fn restarts(&self) -> bool {
        self.restart.is_some() && self.retry > 0
    }
}

/// One pfile (or TOML file): a group of watched processes with common parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Pfile {
    /// `pfile_<name>` → `<name>`; a TOML file's stem.
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// IPCKEY: the health queue's shared memory key, if it has one.
    pub ipckey: Option<u32>,
    /// MONITOR_INTERVAL: how often the reconciliation scan runs.
    pub monitor_interval: Duration,
    /// MSG_CHECK_INTERVAL: the vendor's message-queue check interval, read
    /// and kept for pfile compatibility; psmon has no use for it.
    pub msg_check_interval: Duration,
    /// SHM_DUMP_FILE: where the health queue is dumped.
    pub shm_dump_file: Option<PathBuf>,
    /// Its PENT lines (or `[[entry]]` tables), in order.
    pub entries: Vec<Entry>,
    /// Restart groups defined in this (TOML) file; their members may be
    /// entries of any file loaded with it.
    pub groups: Vec<Group>,
}

impl Pfile {
    /// The vendor's MONITOR_INTERVAL.
    pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
    /// The vendor's MSG_CHECK_INTERVAL.
    pub const DEFAULT_MSG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
}

/// Everything psmon was configured with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// The pfiles and TOML files, in the order of their file names.
    pub pfiles: Vec<Pfile>,
    /// psagent.conf.
    pub agent: Agent,
    /// psenv.
    pub env: Env,
    /// ps_ssl.conf: TLS for the HTTP endpoint.
    pub tls: Option<Tls>,
}

/// How strictly files are checked beyond their content.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Accept files not owned by root or writable by group/others.
    pub insecure: bool,
}

impl Config {
    /// The pfile an operator means: `app`, `pfile_app`, `app.toml`, or
    /// the file's path.
    pub fn pfile_named(&self, name: &str) -> Option<&Pfile> {
        let base = Path::new(name)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name);
        let short = base
            .strip_prefix("pfile_")
            .or_else(|| base.strip_suffix(".toml"))
            .unwrap_or(base);
        self.pfiles
            .iter()
            .find(|p| p.name == short || p.file == Path::new(name))
    }

    /// Every restart group with the file that defines it.
    pub fn groups(&self) -> impl Iterator<Item = (&Pfile, &Group)> {
        self.pfiles
            .iter()
            .flat_map(|p| p.groups.iter().map(move |g| (p, g)))
    }

    /// Every entry with the pfile it belongs to.
    pub fn entries(&self) -> impl Iterator<Item = (&Pfile, &Entry)> {
        self.pfiles
            .iter()
            .flat_map(|p| p.entries.iter().map(move |e| (p, e)))
    }
}

/// `; did you mean `X`?` for the closest known name, or the list of them.
pub(crate) fn hint(word: &str, known: &[&str]) -> String {
    match suggest(word, known) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => format!("; expected one of {}", known.join(", ")),
    }
}

/// The known name closest to `word` (for "did you mean"), if close enough.
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "");
    let w = norm(word);
    known
        .iter()
        .map(|k| (strsim::levenshtein(&w, &norm(k)), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys() {
        let known = ["MONITOR_INTERVAL", "IPCKEY", "SHM_DUMP_FILE"];
        assert_eq!(suggest("MONITOR_INTERVL", &known), Some("MONITOR_INTERVAL"));
        assert_eq!(suggest("monitorinterval", &known), Some("MONITOR_INTERVAL"));
        assert_eq!(suggest("IPCKY", &known), Some("IPCKEY"));
        assert_eq!(suggest("COMPLETELY_OTHER", &known), None);
    }
}
