//! `ProcEvent`: the one stream every event source produces — fork, exec and
//! thread-group exit of processes, and `Lost` markers when the source knows it
//! missed some. It owns the event vocabulary and its units; it does not own
//! how events are obtained (`source`) or shown (`trace`).

use std::{path::PathBuf, sync::OnceLock, time::Duration};

/// When a process started: nanoseconds of `CLOCK_BOOTTIME`, the clock of
/// `task_struct.start_boottime`. `/proc/PID/stat` field 22 (`starttime`) is
/// [`StartTime::ticks`] of this, so the two compare exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StartTime(u64);

impl StartTime {
    /// From nanoseconds of `CLOCK_BOOTTIME` (what the kernel programs read).
    pub fn from_ns(ns: u64) -> Self {
        Self(ns)
    }

    /// From `/proc/PID/stat` field 22 (clock ticks since boot); precision is one tick.
    pub fn from_ticks(ticks: u64) -> Self {
        Self(ticks * ns_per_tick())
    }

    /// Nanoseconds since boot (`CLOCK_BOOTTIME`).
    pub fn ns(self) -> u64 {
        self.0
    }

    /// Time since boot.
    pub fn duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Clock ticks (`USER_HZ`) since boot, as `/proc/PID/stat` field 22 shows.
    pub fn ticks(self) -> u64 {
        self.0 / ns_per_tick()
    }

    /// This start time (of tick precision) made precise by `ns`, a kernel
    /// timestamp taken just after the process started (the proc
    /// connector's fork event). Kept within the same tick, so that
    /// [`StartTime::ticks`], and with it the process's identity, is unchanged.
    pub fn refined(self, ns: u64) -> Self {
        let tick = ns_per_tick();
        let first = self.ticks() * tick;
        Self(ns.clamp(first, first + tick - 1))
    }

    /// Same tick: the same start as far as `/proc` can tell.
    pub fn same_tick(self, other: StartTime) -> bool {
        self.ticks() == other.ticks()
    }
}

fn ns_per_tick() -> u64 {
    static NS: OnceLock<u64> = OnceLock::new();
    *NS.get_or_init(|| 1_000_000_000 / crate::clock::ticks_per_second())
}

/// How a thread group ended, as `waitpid(2)` would report it to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitStatus {
    /// Exited normally with this code (0–255).
    Code(i32),
    /// Terminated by this signal.
    Signal {
        /// The signal's number.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// The source cannot tell (polling found the process already gone).
    Unknown,
}

impl ExitStatus {
    /// Decodes a wait status word (`task_struct.exit_code`).
    pub fn from_wait_status(status: u32) -> Self {
        let signal = (status & 0x7f) as i32;
        if signal == 0 {
            ExitStatus::Code(((status >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signal {
                signal,
                core_dumped: status & 0x80 != 0,
            }
        }
    }
}

/// A process (thread group) as an event saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Thread group id: the process id userspace knows.
    pub tgid: u32,
    /// Kernel pid of the thread concerned: the thread that exec'd or exited
    /// last (equal to `tgid` unless a non-leader thread did it).
    pub pid: u32,
    /// Thread group id of the parent; 0 when unknown.
    pub ppid: u32,
    /// Start time of the thread group leader; `None` when the source could
    /// not learn it (the process vanished before it could be read).
    pub start: Option<StartTime>,
    /// `task_struct.comm`: at most 15 bytes of the executable's name.
    pub comm: String,
    /// Executable path: for exec, the path given to `execve` (made absolute
    /// when possible); for fork and exit, the last one known.
    pub path: Option<PathBuf>,
}

impl Process {
    /// (tgid, start time): what identifies a process; a reused pid is another process.
    pub fn identity(&self) -> (u32, Option<u64>) {
        (self.tgid, self.start.map(StartTime::ticks))
    }
}

/// What happened to a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new process (new threads are not reported).
    Fork(Process),
    /// A successful `execve`.
    Exec(Process),
    /// The last thread of the group has exited.
    Exit {
        /// The process, as last known.
        process: Process,
        /// How it ended.
        status: ExitStatus,
    },
    /// A signal that ends a process by default was generated for process
    /// `target` (or the OOM killer chose it): the `ebpf` source only.
    Signal(Signal),
    /// The source missed events; `count` is how many when it can tell.
    Lost {
        /// How many, when the source can tell.
        count: Option<u64>,
    },
}

/// The process that was running when a signal was generated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sender {
    /// Its thread group id.
    pub pid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its name (`comm`).
    pub comm: String,
    /// Its parent: (pid, comm).
    pub parent: Option<(u32, String)>,
    /// Its grandparent: (pid, comm).
    pub grandparent: Option<(u32, String)>,
}

/// A signal generated for a process, with the process that was running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Thread group id of the process it is for.
    pub target: u32,
    /// The signal's number.
    pub signal: i32,
    /// `si_code`, when the kernel passed a siginfo.
    pub code: Option<i32>,
    /// The OOM killer chose `target`; `sender` is the task whose
    /// allocation set it off.
    pub oom: bool,
    /// The task that was running when the signal was generated.
    pub sender: Sender,
    /// For OOM: the inode number of the victim's memory cgroup directory,
    /// when the kernel program could read it.
    pub cgroup_id: Option<u64>,
}

/// When and where an event happened and when psmon got it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTime {
    /// Kernel timestamp, nanoseconds of `CLOCK_MONOTONIC`; `None` for polling.
    pub kernel_ns: Option<u64>,
    /// CPU that reported the event, when known.
    pub cpu: Option<u32>,
    /// When psmon decoded the event: nanoseconds of `CLOCK_MONOTONIC`.
    pub received_ns: u64,
    /// When the event happened (kernel time when known, else receipt):
    /// nanoseconds of `CLOCK_BOOTTIME`, comparable with [`StartTime::ns`].
    pub boot_ns: u64,
}

impl EventTime {
    /// Stamps an event being decoded now.
    pub fn now(kernel_ns: Option<u64>, cpu: Option<u32>) -> Self {
        let received_ns = monotonic_ns();
        let boot_now = boottime_ns();
        let delay = kernel_ns.map_or(0, |k| received_ns.saturating_sub(k));
        EventTime {
            kernel_ns,
            cpu,
            received_ns,
            boot_ns: boot_now.saturating_sub(delay),
        }
    }
}

/// One event of a source: what happened, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// What happened.
    pub kind: EventKind,
    /// When it happened and when psmon got it.
    pub time: EventTime,
}

impl ProcEvent {
    /// An event of `kind` at `time`.
    pub fn new(kind: EventKind, time: EventTime) -> Self {
        ProcEvent { kind, time }
    }

    /// The source missed `count` events (when it can tell), now.
    pub fn lost(count: Option<u64>) -> Self {
        ProcEvent::new(EventKind::Lost { count }, EventTime::now(None, None))
    }

    /// The process a fork, exec or exit is of; `None` for the others.
    pub fn process(&self) -> Option<&Process> {
        match &self.kind {
            EventKind::Fork(p) | EventKind::Exec(p) => Some(p),
            EventKind::Exit { process, .. } => Some(process),
            EventKind::Signal(_) | EventKind::Lost { .. } => None,
        }
    }

    /// For exits: how long the process lived (start to exit).
    pub fn lifetime(&self) -> Option<Duration> {
        match &self.kind {
            EventKind::Exit { process, .. } => process
                .start
                .map(|s| Duration::from_nanos(self.time.boot_ns.saturating_sub(s.ns()))),
            _ => None,
        }
    }

    /// Short name of the kind: `fork`, `exec`, `exit`, `lost`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::Fork(_) => "fork",
            EventKind::Exec(_) => "exec",
            EventKind::Exit { .. } => "exit",
            EventKind::Signal(_) => "signal",
            EventKind::Lost { .. } => "lost",
        }
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock of `bpf_ktime_get_ns` and of
/// the proc connector's `timestamp_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// Nanoseconds of `CLOCK_BOOTTIME` (the clock of process start times).
pub fn boottime_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_BOOTTIME)
}

fn clock_ns(clock: nix::time::ClockId) -> u64 {
    let ts = nix::time::clock_gettime(clock).expect("clock_gettime on a Linux clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status() {
        assert_eq!(ExitStatus::from_wait_status(7 << 8), ExitStatus::Code(7));
        assert_eq!(ExitStatus::from_wait_status(0), ExitStatus::Code(0));
        assert_eq!(
            ExitStatus::from_wait_status(9),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(11 | 0x80),
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }
        );
    }

    #[test]
    fn start_time_ticks_round_trip() {
        let s = StartTime::from_ticks(123_456);
        assert_eq!(s.ticks(), 123_456);
        // ns inside one tick map to that tick, as /proc truncates.
        let per_tick = ns_per_tick();
        assert_eq!(StartTime::from_ns(5 * per_tick + per_tick - 1).ticks(), 5);
        // Refining keeps the tick, whatever the timestamp says.
        let s = StartTime::from_ticks(5);
        assert_eq!(s.refined(5 * per_tick + 42).ns(), 5 * per_tick + 42);
        assert_eq!(s.refined(9 * per_tick).ticks(), 5);
        assert_eq!(s.refined(0).ticks(), 5);
    }
}
