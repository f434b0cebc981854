//! The one definition of the data psmon's kernel programs and its userspace
//! daemon exchange: the event record written to the ring buffer, the kernel
//! struct offsets handed to the programs at load time, and the map names.
//!
//! This crate is `no_std` and has no dependencies on the kernel side, so the
//! same layout is compiled into the eBPF object and into the daemon. It owns
//! layout only; decoding into `ProcEvent` lives in `psmon::source::ebpf`.
#![no_std]

/// Bytes of the executable path kept per exec event (including the NUL).
/// Longer paths are truncated and flagged with [`FLAG_PATH_TRUNCATED`].
pub const PATH_LEN: usize = 256;

/// Bytes of `task_struct.comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `RawEvent::kind` for a new process (not a new thread).
pub const KIND_FORK: u32 = 1;
/// `RawEvent::kind` for a successful `execve`.
pub const KIND_EXEC: u32 = 2;
/// `RawEvent::kind` for the exit of the last thread of a thread group.
pub const KIND_EXIT: u32 = 3;

/// [`RawSignal::kind`] for a signal generated for a process: a watched
/// one when filtering. Signals whose default action is not to terminate
/// (SIGCHLD, SIGCONT, the stop signals, SIGURG, SIGWINCH) and ignored ones
/// are not sent.
pub const KIND_SIGNAL: u32 = 4;
/// [`RawSignal::kind`] for a process the OOM killer chose (every one: they
/// are rare); the "sender" is the task whose allocation triggered it.
pub const KIND_OOM: u32 = 5;

/// `RawEvent::flags`: `path` was cut at `PATH_LEN - 1` bytes.
pub const FLAG_PATH_TRUNCATED: u32 = 1;

/// Name of the ring buffer map carrying [`RawEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU `u64` array (one slot) counting failed ring buffer reservations.
pub const MAP_LOST: &str = "LOST";
/// Name of the per-CPU `u64` array counting execs since load, filtered or
/// not: slot [`EXECS_ALL`] every one (while it stands still no process
/// changed program), slot [`EXECS_UNRECORDED`] those [`MAP_EXECD`] could
/// not take.
pub const MAP_EXECS: &str = "EXECS";
/// Slot of [`MAP_EXECS`]: every exec.
pub const EXECS_ALL: u32 = 0;
/// Slot of [`MAP_EXECS`]: execs whose thread group [`MAP_EXECD`] could not
/// take (it was full): the list of those that exec'd is not whole.
pub const EXECS_UNRECORDED: u32 = 1;
/// Name of the per-CPU `u64` array (one slot) counting every task the
/// kernel created since load (threads too), filtered or not: beside the
/// kernel's own count (`processes` in /proc/stat) it shows the programs
/// still run.
pub const MAP_FORKS: &str = "FORKS";
/// Name of the hash map `u32 tgid -> u8` of thread groups that exec'd,
/// filtered or not, until userspace takes them out: a scan reads only
/// those again, not the whole of /proc.
pub const MAP_EXECD: &str = "EXECD";
/// Capacity of [`MAP_EXECD`]: more distinct processes exec'ing between two
/// scans than this, and the next scan reads everything.
pub const EXECD_ENTRIES: u32 = 8 * 1024;
/// Name of the per-CPU `u64` array (one slot) counting every signal that may
/// end a process since load, whether the filter passed it or not.
pub const MAP_SIGNALS: &str = "SIGNALS";
/// Name of the hash map `[u8; COMM_LEN] -> u8` of watched executable names.
pub const MAP_WATCH_COMMS: &str = "WATCH_COMMS";
/// Name of the hash map `u32 tgid -> u8` of watched thread groups.
pub const MAP_WATCH_TGIDS: &str = "WATCH_TGIDS";
/// Name of the global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
/// Capacity of each watch map.
pub const WATCH_MAP_ENTRIES: u32 = 16 * 1024;

/// One event as the kernel program writes it into the ring buffer.
///
/// Layout (`#[repr(C)]`, 8-byte aligned as ring buffer records are, 312 bytes):
/// ```text
///   0 kind u32      4 cpu u32      8 ktime_ns u64     16 start_ns u64
///  24 pid u32      28 tgid u32    32 ppid u32        36 exit_code u32
///  40 flags u32    44 _pad u32    48 comm [u8;16]    64 path [u8;256]
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawEvent {
    /// One of `KIND_FORK`, `KIND_EXEC`, `KIND_EXIT`.
    pub kind: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: nanoseconds of `CLOCK_MONOTONIC`.
    pub ktime_ns: u64,
    /// `task_struct.start_boottime` of the thread group leader: nanoseconds
    /// of `CLOCK_BOOTTIME`. `/proc/PID/stat` field 22 is this divided by
    /// `1e9 / USER_HZ`.
    pub start_ns: u64,
    /// Kernel pid of the thread concerned (the thread id; for fork, the child).
    pub pid: u32,
    /// Thread group id: what userspace calls the process id.
    pub tgid: u32,
    /// Thread group id of the real parent.
    pub ppid: u32,
    /// For exits: the wait status as `waitpid(2)` would report it
    /// (`code << 8`, or the signal number, `| 0x80` if a core was dumped).
    pub exit_code: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Padding, so that `comm` starts at 48 on both sides.
    pub _pad: u32,
    /// `task_struct.comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// For execs: `linux_binprm.filename`, the path passed to `execve`, NUL terminated.
    pub path: [u8; PATH_LEN],
}

/// A signal (or OOM kill) as the kernel program writes it into the same
/// ring buffer as [`RawEvent`]s; `kind` comes first in both.
///
/// Layout (`#[repr(C)]`, 104 bytes):
/// ```text
///   0 kind u32          4 cpu u32            8 ktime_ns u64
///  16 target_tgid u32  20 target_pid u32    24 signal u32     28 code i32
///  32 sender_tgid u32  36 sender_uid u32    40 parent_tgid u32 44 grandparent_tgid u32
///  48 sender_comm [u8;16]  64 parent_comm [u8;16]  80 grandparent_comm [u8;16]
///  96 cgroup_id u64
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawSignal {
    /// `KIND_SIGNAL` or `KIND_OOM`.
    pub kind: u32,
    /// The CPU it was generated on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`.
    pub ktime_ns: u64,
    /// The thread group the signal is for (for OOM on kernels whose
    /// `mark_victim` gives only a pid: that pid).
    pub target_tgid: u32,
    /// The thread it was generated for.
    pub target_pid: u32,
    /// The signal's number.
    pub signal: u32,
    /// `si_code`; [`CODE_UNKNOWN`] when the kernel passed no siginfo.
    pub code: i32,
    /// The current task when the signal was generated: its thread group,
    /// uid, and parent and grandparent (thread group and comm).
    pub sender_tgid: u32,
    /// The sender's real uid.
    pub sender_uid: u32,
    /// Its parent's thread group.
    pub parent_tgid: u32,
    /// Its grandparent's thread group.
    pub grandparent_tgid: u32,
    /// Its `comm`, NUL padded.
    pub sender_comm: [u8; COMM_LEN],
    /// Its parent's `comm`, NUL padded.
    pub parent_comm: [u8; COMM_LEN],
    /// Its grandparent's `comm`, NUL padded.
    pub grandparent_comm: [u8; COMM_LEN],
    /// For OOM: the kernfs id (inode number) of the victim's memory
    /// cgroup directory; 0 when unknown.
    pub cgroup_id: u64,
}

/// [`RawSignal::code`] when there was no siginfo to read
/// (`SEND_SIG_NOINFO`/`SEND_SIG_PRIV`).
pub const CODE_UNKNOWN: i32 = i32::MIN;

/// Byte offsets of the kernel struct members the programs read, resolved by
/// userspace from `/sys/kernel/btf/vmlinux` (Rust eBPF has no CO-RE).
///
/// All fields are byte offsets from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid` (`pid_t`).
    pub task_pid: u32,
    /// `task_struct.tgid` (`pid_t`).
    pub task_tgid: u32,
    /// `task_struct.start_boottime` (`u64`, ns), `real_start_time` before 5.5.
    pub task_start_boottime: u32,
    /// `task_struct.exit_code` (`int`).
    pub task_exit_code: u32,
    /// `task_struct.real_parent` (`struct task_struct *`).
    pub task_real_parent: u32,
    /// `task_struct.group_leader` (`struct task_struct *`).
    pub task_group_leader: u32,
    /// `task_struct.signal` (`struct signal_struct *`).
    pub task_signal: u32,
    /// `task_struct.comm` (`char[16]`).
    pub task_comm: u32,
    /// `signal_struct.live` (`atomic_t`): threads that have not yet entered `do_exit`.
    pub signal_live: u32,
    /// `signal_struct.group_exit_code` (`int`).
    pub signal_group_exit_code: u32,
    /// `linux_binprm.filename` (`const char *`).
    pub binprm_filename: u32,
    /// The path to a task's memory cgroup's kernfs id: offsets of
    /// `task_struct.cgroups`, `css_set.subsys`, `cgroup_subsys_state.cgroup`,
    /// `cgroup.kn`, `kernfs_node.id`, then the `memory_cgrp_id` index
    /// (`NO_MEMORY_CGROUP`: not available).
    pub memory_cgroup: [u32; 6],
}

/// `KernelOffsets::memory_cgroup[5]` when the kernel has no memory cgroup.
pub const NO_MEMORY_CGROUP: u32 = u32::MAX;

/// Load-time settings of the kernel programs, written into the `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Config {
    /// Where the programs find what they read in kernel structs.
    pub offsets: KernelOffsets,
    /// Non-zero: only events of watched comms and tgids are sent (monitoring).
    /// Zero: every event is sent (trace).
    pub filter: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` structs of integers, no padding bytes that
    // could be uninitialised (`_pad` is explicit), valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above: `#[repr(C)]` integers only, any bit pattern valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
}
