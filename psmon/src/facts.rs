//! The facts the monitor reasons about, as plain data: entries, what a
//! scan saw of a process, what a command came to, what a switch asks of a cluster and
//! what the cluster said, and why a process died. The monitor and the
//! shell both speak these; the shell finds them out (`scan`, `exec`,
//! `failover`, the sources), the monitor decides on them, and `report`
//! words them for the operator.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::FailoverMode,
    event::{ExitStatus, Sender},
};

// Entries, and processes as a scan saw them.

/// An entry: its place in the configuration's order (pfiles by name, then
/// lines). A reload renumbers entries; the monitor's generation tells ids
/// of different configurations apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(pub u32);

impl EntryId {
    /// The entry at `index` in the configuration's order.
    pub fn at(index: usize) -> EntryId {
        EntryId(index as u32)
    }

    /// Every entry of a configuration of `n`, in order.
    pub fn all(n: usize) -> impl Iterator<Item = EntryId> {
        (0..n as u32).map(EntryId)
    }

    /// Its place in the configuration's order.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A restart group: its place in the configuration's order of groups,
/// renumbered by a reload like entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u32);

impl GroupId {
    /// Its place in the configuration's order of groups.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A process as a scan or a classification saw it: its identity (tgid,
/// start time in clock ticks) and what tells it apart later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Seen {
    /// Its thread group id (the pid userspace knows).
    pub tgid: u32,
    /// When it started: `/proc/PID/stat` field 22, clock ticks since boot.
    pub start_ticks: u64,
    /// `comm` when it was matched, NUL padded: an exec changes it.
    pub comm: [u8; 16],
    /// Thread group id of the parent when it was matched.
    pub ppid: u32,
    /// Effective uid when it was matched (0 where it was not read: a
    /// member confirmed alive, whose uid the monitor already has).
    #[serde(default)]
    pub uid: u32,
}

/// A process already known to match an entry (a member). One still the
/// same (same start time, same comm) is confirmed by one read of its stat
/// file instead of a full match; one whose exit a pidfd watches is not read
/// at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownMember {
    /// When it started, in clock ticks since boot.
    pub start_ticks: u64,
    /// Its `comm` when it was matched, NUL padded.
    pub comm: [u8; 16],
    /// The entry it is a member of.
    pub entry: EntryId,
    /// A pidfd watches its exit: a scan need not read it.
    pub exit_watched: bool,
}

/// The members, by tgid.
pub type Known = HashMap<u32, KnownMember>;

// What a command came to.

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Killed (with its process group) at the time limit.
    TimedOut,
    /// Could not be started at all.
    SpawnFailed(String),
    /// Started by a previous psmon, which died meanwhile; it ended, with a
    /// status nobody can know now. Taken as success: whether the process
    /// it started comes up decides.
    Adopted,
}

/// What came of a restart, failover or probe command.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    /// How it ended.
    pub ending: Ending,
    /// From its start to its end.
    pub elapsed: Duration,
    /// The last bytes the command wrote to stdout and stderr.
    pub output_tail: String,
}

impl CommandOutcome {
    /// It succeeded: exited 0, or was adopted from a previous psmon.
    pub fn ok(&self) -> bool {
        matches!(self.ending, Ending::Exited(0) | Ending::Adopted)
    }
}

// What a switch asks of a cluster, and what came of it.

/// What the monitor asks a cluster to do.
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchRequest {
    /// Which cluster, and how.
    pub cluster: Cluster,
    /// Pacemaker's resource, or CLUSTERPRO's failover group.
    pub resource: String,
    /// Trying and waiting end here.
    pub timeout: Duration,
    /// Between tries of a request the cluster did not take.
    pub retry_interval: Duration,
    /// psenv's variables (PATH among them) and the PSMON_* details, for
    /// the cluster's tools.
    pub env: Vec<(String, String)>,
}

/// Which cluster a switch goes to, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Pacemaker, through `crm_resource`, in this mode (move, ban, fail).
    Pacemaker(FailoverMode),
    /// CLUSTERPRO, through `clpgrp`.
    Clusterpro,
}

/// What came of a switch request.
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchOutcome {
    /// The resource runs on another node now.
    pub ok: bool,
    /// `resource 'R' started on node2 in 0.41 s`, or why not.
    pub said: String,
    /// From the request to its answer.
    pub elapsed: Duration,
    /// Location constraints the request left in the cluster (Pacemaker's
    /// `cli-ban-…`/`cli-prefer-…`): they keep the resource away until
    /// cleared (`psmon clear-failover`).
    pub constraints: Vec<Constraint>,
}

/// A location constraint psmon's request created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// The resource it is on.
    pub resource: String,
    /// Its id in the cluster's configuration (`cli-ban-…`).
    pub id: String,
    /// The node it keeps the resource from (ban) or on (prefer).
    pub node: Option<String>,
}

// Why a process died.

/// Why a watched process died, as the kernel told psmon: the signal and
/// who sent it, the kernel itself (a fault, a limit), the OOM killer, or
/// psmon. Only the `ebpf` source sees senders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// A process sent the signal.
    Sent {
        /// The signal's number.
        signal: i32,
        /// Who sent it.
        sender: Sender,
    },
    /// The kernel raised it for the process itself: a fault (SIGSEGV,
    /// SIGBUS, SIGILL, SIGFPE) or a resource limit (SIGXCPU, SIGXFSZ).
    Kernel {
        /// The signal's number.
        signal: i32,
    },
    /// The OOM killer chose it; `trigger` is the task whose allocation
    /// set it off.
    Oom {
        /// The victim's memory cgroup, when it could be read.
        cgroup: Option<String>,
        /// The task whose allocation set it off.
        trigger: Sender,
    },
    /// psmon's own signal (a hang kill, a group stop, a drill).
    Psmon {
        /// The signal's number.
        signal: i32,
    },
}

/// Signals the kernel raises on a fault or a limit.
const KERNEL_SIGNALS: [i32; 6] = [4, 7, 8, 11, 24, 25];

impl Cause {
    /// The cause of a signal generated for process `target` with `si_code`
    /// `code` (`None`: no siginfo); `me` is psmon's own pid.
    pub fn of_signal(
        target: u32,
        signal: i32,
        code: Option<i32>,
        sender: Sender,
        me: u32,
    ) -> Cause {
        // si_code > 0 is the kernel's own (SI_USER is 0, sigqueue and tgkill
        // are negative); a limit signal comes without siginfo.
        let by_kernel = code.is_some_and(|c| c > 0)
            || (code.is_none() && sender.pid == target && KERNEL_SIGNALS.contains(&signal));
        if sender.pid == me {
            Cause::Psmon { signal }
        } else if by_kernel && sender.pid == target {
            Cause::Kernel { signal }
        } else {
            Cause::Sent { signal, sender }
        }
    }

    /// The signal this cause would end a process with.
    pub fn signal(&self) -> i32 {
        match self {
            Cause::Sent { signal, .. } | Cause::Kernel { signal } | Cause::Psmon { signal } => {
                *signal
            }
            Cause::Oom { .. } => 9,
        }
    }

    /// Whether it explains an exit with `status`: a death by this signal.
    pub fn explains(&self, status: ExitStatus) -> bool {
        matches!(status, ExitStatus::Signal { signal, .. } if signal == self.signal())
    }

    /// The words of a Down message, for a death with `status`:
    /// `signal 9 from pid 4242 'kill' uid 1000, parent 'bash' pid 4100`.
    pub fn describe(&self, status: ExitStatus) -> String {
        let core = matches!(
            status,
            ExitStatus::Signal {
                core_dumped: true,
                ..
            }
        );
        let core = if core { ", core dumped" } else { "" };
        match self {
            Cause::Sent { signal, sender } => {
                let mut text = format!(
                    "signal {signal} from pid {} '{}' uid {}",
                    sender.pid, sender.comm, sender.uid
                );
                if let Some((pid, comm)) = &sender.parent {
                    text.push_str(&format!(", parent '{comm}' pid {pid}"));
                }
                text.push_str(core);
                text
            }
            Cause::Kernel { signal } => format!("{}{core}", signal_name(*signal)),
            Cause::Oom { cgroup, .. } => match cgroup {
                Some(c) => format!("killed by the OOM killer: memory cgroup {c}"),
                None => "killed by the OOM killer".to_string(),
            },
            Cause::Psmon { signal } => format!("signal {signal} from psmon"),
        }
    }

    /// The short kind for logs and the environment: `signal`, `kernel`,
    /// `oom`, `psmon`.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Sent { .. } => "signal",
            Cause::Kernel { .. } => "kernel",
            Cause::Oom { .. } => "oom",
            Cause::Psmon { .. } => "psmon",
        }
    }

    /// Who sent it, when a process did.
    pub fn sender(&self) -> Option<&Sender> {
        match self {
            Cause::Sent { sender, .. } => Some(sender),
            _ => None,
        }
    }
}

/// `SIGSEGV`, or `signal N` for one without a common name.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(pid: u32) -> Sender {
        Sender {
            pid,
            uid: 1000,
            comm: "kill".into(),
            parent: Some((4100, "bash".into())),
            grandparent: None,
        }
    }

    #[test]
    fn tells_who_killed() {
        let sent = Cause::of_signal(812, 9, Some(0), sender(4242), 1);
        assert_eq!(
            sent.describe(ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }),
            "signal 9 from pid 4242 'kill' uid 1000, parent 'bash' pid 4100"
        );
        let fault = Cause::of_signal(812, 11, Some(1), sender(812), 1);
        assert_eq!(
            fault.describe(ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }),
            "SIGSEGV, core dumped"
        );
        // A SIGSEGV a process sends itself with kill() is not a fault.
        assert_eq!(
            Cause::of_signal(812, 11, Some(0), sender(812), 1).kind(),
            "signal"
        );
        assert_eq!(
            Cause::of_signal(812, 15, None, sender(1), 1).kind(),
            "psmon"
        );
        assert!(sent.explains(ExitStatus::Signal {
            signal: 9,
            core_dumped: false
        }));
        assert!(!sent.explains(ExitStatus::Code(0)));
    }
}
