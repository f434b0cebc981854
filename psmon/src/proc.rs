//! Reading `/proc`, in one place: a process's `stat` (parsed one way),
//! its executable link, its command line, status fields, cgroups, whether
//! it is dead, the snapshot of every process, pidfds; and what the kernel
//! says of itself (boot time and id, clock ticks, core pattern, System V
//! segments, mounts) and of psmon (its own usage). Sources, the scan, the
//! shell and the endpoint all read through here. The hot reads (`stat`,
//! `exe`, `cmdline` of every process) are done here into reused buffers;
//! the cold ones use the `procfs` crate where it has them.
//!
//! It does not decide what a process means to the monitor; it reports what
//! the kernel shows.

use std::{
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

use procfs::Current as _;

use crate::event::StartTime;

/// `task_struct.comm` holds at most this many bytes of a name (16 with
/// its NUL); longer executable names are cut there.
pub const COMM_LEN: usize = 15;

/// `PF_EXITING` in `task_struct.flags` (`/proc/PID/stat` field 9): the
/// thread has entered `do_exit` and can never run user code again.
const PF_EXITING: u32 = 0x4;

/// The fields of `/proc/PID/stat` psmon uses, borrowed from the buffer
/// they were read into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat<'a> {
    /// Field 1, as the thread group id.
    pub tgid: u32,
    /// Field 2, without its parentheses.
    pub comm: &'a [u8],
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: u8,
    /// Field 4.
    pub ppid: u32,
    /// Field 9.
    pub flags: u32,
    /// Field 20.
    pub num_threads: i64,
    /// Field 22: clock ticks since boot.
    pub start_ticks: u64,
    /// Field 52: the wait status of a zombie, when the kernel shows it.
    pub exit_code: Option<i32>,
}

impl Stat<'_> {
    /// The whole group has exited; only its parent's wait is pending. A
    /// leader that called `pthread_exit` also shows `Z` while its other
    /// threads run, so the thread count must have dropped to one as well.
    pub fn is_dead(&self) -> bool {
        dead(self.state, self.num_threads)
    }
}

/// State Z or X with at most one thread left: see [`Stat::is_dead`].
fn dead(state: u8, num_threads: i64) -> bool {
    matches!(state, b'Z' | b'X' | b'x') && num_threads <= 1
}

/// Parses a stat line. `comm` may hold spaces and parentheses, so fields
/// are counted after the last `)`.
pub fn parse_stat(buf: &[u8]) -> Option<Stat<'_>> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    let tgid = std::str::from_utf8(buf.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?; // 3
    let ppid = fields.next()?.parse().ok()?; // 4
    let flags = fields.nth(4)?.parse().ok()?; // 9
    let num_threads = fields.nth(10)?.parse().ok()?; // 20
    let start_ticks = fields.nth(1)?.parse().ok()?; // 22
    let exit_code = fields.nth(29).and_then(|f| f.parse().ok()); // 52
    Some(Stat {
        tgid,
        comm: &buf[open + 1..close],
        state,
        ppid,
        flags,
        num_threads,
        start_ticks,
        exit_code,
    })
}

/// The value of one line of `/proc/PID/status` (`Uid:`, `Tgid:`,
/// `Groups:`), after its name.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The effective uid of process `tgid` (`/proc/TGID/status`, `Uid:`'s
/// second field). Not the owner of `/proc/TGID`: a process that made itself
/// non-dumpable shows root there.
pub fn euid(tgid: u32) -> Option<u32> {
    status_field(tgid, "Uid")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The thread group of thread `pid` (`Tgid:` of `/proc/PID/status`).
pub fn tgid_of(pid: u32) -> Option<u32> {
    status_field(pid, "Tgid")?.parse().ok()
}

/// The supplementary groups of process `pid` (`Groups:`); empty when it
/// is gone.
pub fn groups(pid: u32) -> Vec<u32> {
    status_field(pid, "Groups").map_or_else(Vec::new, |groups| {
        groups
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect()
    })
}

/// `/proc/TGID/stat`, opened to be re-read with [`pread_stat`].
pub fn open_stat(tgid: u32) -> std::io::Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{tgid}/stat"))
}

/// Reads `/proc/TGID/stat` into `buf` (reused across processes).
pub fn read_stat(tgid: u32, buf: &mut Vec<u8>) -> Option<Stat<'_>> {
    buf.clear();
    open_stat(tgid).ok()?.read_to_end(buf).ok()?;
    parse_stat(buf)
}

/// Re-reads an open stat file from the start. procfs regenerates it on
/// every read; once the process is gone the read fails (the file stays
/// bound to that process, never to a later one with the same pid).
pub fn pread_stat<'a>(file: &std::fs::File, buf: &'a mut Vec<u8>) -> Option<Stat<'a>> {
    use std::os::unix::fs::FileExt;
    buf.resize(4096, 0);
    let n = file.read_at(buf, 0).ok()?;
    buf.truncate(n);
    parse_stat(buf)
}

/// One thread group as `/proc/PID/stat` shows it, owned.
#[derive(Clone, Debug)]
pub struct ProcEntry {
    /// Field 1.
    pub tgid: u32,
    /// Field 4: the parent's tgid.
    pub ppid: u32,
    /// Field 22: when it started.
    pub start: StartTime,
    /// Field 2, without its parentheses.
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 52: the wait status of a zombie, when the kernel shows it.
    pub exit_code: Option<i32>,
    /// Field 20.
    pub num_threads: i64,
    /// Field 9.
    pub flags: u32,
}

impl ProcEntry {
    /// See [`Stat::is_dead`].
    pub fn is_dead(&self) -> bool {
        dead(self.state as u8, self.num_threads)
    }

    fn from_stat(stat: &Stat) -> Self {
        ProcEntry {
            tgid: stat.tgid,
            ppid: stat.ppid,
            start: StartTime::from_ticks(stat.start_ticks),
            comm: String::from_utf8_lossy(stat.comm).into_owned(),
            state: stat.state as char,
            exit_code: stat.exit_code,
            num_threads: stat.num_threads,
            flags: stat.flags,
        }
    }
}

/// `/proc/self/ns/pid` inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Whether psmon runs in the initial PID namespace, whose pids the kernel's
/// event interfaces (the proc connector, BPF programs) report.
pub fn in_init_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

/// Reads `/proc/TGID/stat`; `None` when the process is gone.
pub fn read_entry(tgid: u32) -> Option<ProcEntry> {
    let mut buf = Vec::with_capacity(512);
    read_stat(tgid, &mut buf).map(|s| ProcEntry::from_stat(&s))
}

/// Whether process (tgid, start ticks) is still there and not dead.
pub fn is_alive(tgid: u32, start_ticks: u64) -> bool {
    let mut buf = Vec::with_capacity(512);
    read_stat(tgid, &mut buf).is_some_and(|s| s.start_ticks == start_ticks && !s.is_dead())
}

/// The wait status of process (tgid, start ticks) if it is a zombie now.
pub fn zombie_status(tgid: u32, start_ticks: u64) -> Option<crate::event::ExitStatus> {
    let mut buf = Vec::with_capacity(512);
    let stat = read_stat(tgid, &mut buf)?;
    (stat.start_ticks == start_ticks && stat.is_dead())
        .then_some(stat.exit_code)
        .flatten()
        .map(|c| crate::event::ExitStatus::from_wait_status(c as u32))
}

/// `tgid` has exited or is exiting and is not yet reaped: a zombie, or
/// its leader is inside `do_exit` (the proc connector reports an exit
/// before the task becomes a zombie). Until it is reaped, `kill(pid, 0)`
/// still succeeds, so a daemon whose pidfile names it refuses to start.
/// A pid reused by a new process is not exiting.
pub fn is_going(tgid: u32) -> bool {
    let mut buf = Vec::with_capacity(512);
    read_stat(tgid, &mut buf).is_some_and(|s| s.is_dead() || s.flags & PF_EXITING != 0)
}

/// `/proc/TGID/exe`, when it can be read (not for zombies or kernel threads).
/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on RHEL 9,
/// `/sys/fs/cgroup/unified` on a hybrid host), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    mountinfo()?
        .lines()
        .filter_map(mount_of)
        .find_map(|(mount, kind, _)| (kind == "cgroup2").then(|| PathBuf::from(mount)))
}

/// The process's cgroup in the v2 hierarchy (`0::/system.slice/sshd.service`
/// → `/system.slice/sshd.service`).
pub fn cgroup_v2(tgid: u32) -> Option<String> {
    cgroups(tgid)?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// `/proc/TGID/cgroup`: a line per hierarchy, `ID:CONTROLLERS:PATH`.
fn cgroups(tgid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()
}

/// psmon's own mount table (`/proc/self/mountinfo`).
fn mountinfo() -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo").ok()
}

/// One line of mountinfo: its mount point, file system type and super
/// options.
fn mount_of(line: &str) -> Option<(&str, &str, &str)> {
    let (left, right) = line.split_once(" - ")?;
    let mount = left.split(' ').nth(4)?;
    let mut fs = right.split(' ');
    let kind = fs.next()?;
    Some((mount, kind, fs.nth(1).unwrap_or("")))
}

/// `/proc/PID/comm`: the process's name, without its newline.
pub fn comm(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

/// `/proc/PID/exe`: the file the process runs.
pub fn exe(tgid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{tgid}/exe")).ok()
}

/// The arguments of `/proc/TGID/cmdline`; `None` for kernel threads,
/// zombies and processes gone.
pub fn cmdline(tgid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{tgid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// The tgids in `/proc`, read through one open directory.
pub fn tgids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|d| d.file_name().to_str().and_then(|n| n.parse().ok()))
}

/// Every thread group now in `/proc`, zombies included.
pub fn snapshot() -> Vec<ProcEntry> {
    let mut buf = Vec::with_capacity(512);
    tgids()
        .filter_map(|tgid| read_stat(tgid, &mut buf).map(|s| ProcEntry::from_stat(&s)))
        .collect()
}

/// True when no thread of the group can run again: every thread still listed
/// has entered `do_exit` (or the group is gone, `leader` being `None`). Used
/// where the kernel reports thread exits one by one (the proc connector).
pub fn group_exiting(tgid: u32, leader: Option<&ProcEntry>) -> bool {
    let Some(leader) = leader else {
        return true;
    };
    let leader_done = leader.is_dead() || leader.flags & PF_EXITING != 0;
    if !leader_done {
        return false;
    }
    if leader.num_threads <= 1 {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        let stat = std::fs::read(task.path().join("stat")).unwrap_or_default();
        match parse_stat(&stat) {
            Some(s) => matches!(s.state, b'Z' | b'X' | b'x') || s.flags & PF_EXITING != 0,
            None => true, // vanished while we looked: released, so exited
        }
    })
}

/// Reads `/proc/PID/exe` links into one reused buffer, relative to an open
/// `/proc`, without allocating per process.
pub struct ExeReader {
    proc_dir: Option<std::fs::File>,
    link: Vec<u8>,
    name: Vec<u8>,
}

impl Default for ExeReader {
    fn default() -> Self {
        ExeReader {
            proc_dir: std::fs::File::open("/proc").ok(),
            link: vec![0; libc::PATH_MAX as usize],
            name: Vec::with_capacity(32),
        }
    }
}

impl ExeReader {
    /// The link's target; `None` for kernel threads, zombies and processes gone.
    pub fn read(&mut self, tgid: u32) -> Option<&[u8]> {
        use std::io::Write;
        let dir = self.proc_dir.as_ref()?;
        self.name.clear();
        write!(self.name, "{tgid}/exe\0").ok()?;
        // SAFETY: `name` is NUL terminated, `link` is a writable buffer of
        // the length passed, and `dir` is an open directory.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                self.name.as_ptr().cast(),
                self.link.as_mut_ptr().cast(),
                self.link.len(),
            )
        };
        (n > 0).then(|| &self.link[..n as usize])
    }
}

/// When the system booted (`btime` of `/proc/stat`), for turning process
/// start times into wall-clock times.
pub fn boot_time() -> Option<std::time::SystemTime> {
    let secs = system_stat("btime")?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// How many tasks (threads too) the kernel has created since boot
/// (`processes` of `/proc/stat`).
pub fn forks_since_boot() -> Option<u64> {
    system_stat("processes")
}

/// The number on line `name` of `/proc/stat`.
fn system_stat(name: &str) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// The memory cgroup of process `tgid`, from `/proc/PID/cgroup`: the v1
/// memory controller's line if there is one, else the v2 line.
pub fn memory_cgroup(tgid: u32) -> Option<String> {
    cgroup_of(&cgroups(tgid)?)
}

/// The path of the memory cgroup whose directory has inode number `id`
/// (what the kernel program read at the OOM kill, while the victim still
/// lived), relative to the hierarchy's mount: found by walking the
/// hierarchy that has the memory controller (v1 or v2, from mountinfo).
pub fn memory_cgroup_by_id(id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let roots: Vec<PathBuf> = mountinfo()?
        .lines()
        .filter_map(mount_of)
        .filter(|(_, kind, opts)| {
            let memory_v1 = *kind == "cgroup" && opts.split(',').any(|o| o == "memory");
            memory_v1 || *kind == "cgroup2"
        })
        .map(|(mount, _, _)| PathBuf::from(mount))
        .collect();
    for root in roots {
        let mut stack = vec![(root.clone(), 0)];
        let mut seen = 0;
        while let Some((dir, depth)) = stack.pop() {
            seen += 1;
            if seen > 100_000 {
                break;
            }
            if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
                let rel = dir.strip_prefix(&root).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            if depth >= 16 {
                continue;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    None
}

fn cgroup_of(text: &str) -> Option<String> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); empty if unreadable.
pub fn boot_id() -> String {
    procfs::sys::kernel::random::boot_id()
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// A fresh random UUID from the kernel (`/proc/sys/kernel/random/uuid`).
pub fn random_uuid() -> Option<String> {
    procfs::sys::kernel::random::uuid()
        .ok()
        .map(|id| id.trim().to_string())
}

/// The kernel's `core_pattern`, read once; `None` when empty or unreadable.
pub fn core_pattern() -> Option<&'static str> {
    static PATTERN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PATTERN
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/core_pattern")
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
        })
        .as_deref()
}

/// The System V shared memory segments on the host, as `ipcs -m` lists
/// them (`/proc/sysvipc/shm`): key and id of each.
pub fn shm_segments() -> Vec<(i32, i32)> {
    procfs::SharedMemorySegments::current()
        .map(|table| table.0.iter().map(|s| (s.key, s.shmid as i32)).collect())
        .unwrap_or_default()
}

/// What psmon's own process uses, for its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnUsage {
    /// User and system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Threads.
    pub threads: u64,
    /// When psmon started, in seconds since the epoch.
    pub start_secs: f64,
    /// Virtual memory size.
    pub virtual_bytes: u64,
    /// Resident set size.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// psmon's own usage (`/proc/self/stat` and `/proc/self/fd`).
pub fn own_usage() -> Option<OwnUsage> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let tick = crate::clock::ticks_per_second() as f64;
    let boot = boot_time()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    Some(OwnUsage {
        cpu_secs: (stat.utime + stat.stime) as f64 / tick,
        threads: stat.num_threads.max(0) as u64,
        start_secs: boot + stat.starttime as f64 / tick,
        virtual_bytes: stat.vsize,
        resident_bytes: stat.rss * procfs::page_size(),
        open_fds: me.fd_count().map_or(0, |n| n as u64),
    })
}

/// A second open file description of `file` (through `/proc/self/fd`),
/// for reading and writing: its own offset, its own lease.
pub fn reopen(file: &std::fs::File) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// pidfd_open(2) (Linux 5.3): a descriptor that refers to one process and
/// becomes readable when it exits.
pub fn pidfd_open(tgid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(tgid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a plain syscall with integer arguments (no flags).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether this kernel has pidfds (Linux 5.3 and later).
pub fn pidfds_available() -> bool {
    pidfd_open(std::process::id()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_lines_name_their_point_type_and_options() {
        let v2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            mount_of(v2),
            Some(("/sys/fs/cgroup", "cgroup2", "rw,nsdelegate"))
        );
        let v1 = "40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(
            mount_of(v1),
            Some(("/sys/fs/cgroup/memory", "cgroup", "rw,memory"))
        );
        assert_eq!(mount_of("garbage"), None);
    }

    #[test]
    fn finds_the_memory_cgroup_on_v1_and_v2() {
        let hybrid = "12:pids:/x\n5:memory:/psmon-test/oom\n0::/user.slice\n";
        assert_eq!(cgroup_of(hybrid).as_deref(), Some("/psmon-test/oom"));
        let v2 = "0::/system.slice/sshd.service\n";
        assert_eq!(cgroup_of(v2).as_deref(), Some("/system.slice/sshd.service"));
        assert_eq!(cgroup_of("garbage"), None);
    }

    #[test]
    fn status_fields_and_own_usage_describe_this_process() {
        let me = std::process::id();
        assert_eq!(tgid_of(me), Some(me));
        // A thread of ours, asked while it runs.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(tgid_of(tid), Some(me));
        drop(done_tx);
        thread.join().unwrap();
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = groups(me);
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(euid(me), Some(nix::unistd::geteuid().as_raw()));

        let usage = own_usage().unwrap();
        assert!(usage.threads >= 1 && usage.open_fds >= 3, "{usage:?}");
        assert!(usage.resident_bytes > 1 << 20, "{usage:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            usage.start_secs <= now + 1.0 && usage.start_secs > now - 3600.0,
            "{usage:?} at {now}"
        );
        assert_eq!(boot_id().len(), 36);
        assert_ne!(random_uuid(), random_uuid());
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        // Fields 3 to 22, then 23 to 51 as zeros, then 52 (exit code).
        let line = format!(
            "42 (a) b (c)) S 1 42 42 0 -1 4194564 0 0 0 0 0 0 0 0 20 0 3 0 5000 {}2304",
            "0 ".repeat(29)
        );
        let stat = parse_stat(line.as_bytes()).unwrap();
        assert_eq!(stat.tgid, 42);
        assert_eq!(stat.comm, b"a) b (c)");
        assert_eq!((stat.state, stat.ppid, stat.flags), (b'S', 1, 4194564));
        assert_eq!((stat.num_threads, stat.start_ticks), (3, 5000));
        assert_eq!(stat.exit_code, Some(2304));
    }

    #[test]
    fn reads_this_process() {
        let me = read_entry(std::process::id()).unwrap();
        assert_eq!(me.tgid, std::process::id());
        assert!(!me.is_dead());
        assert!(is_alive(me.tgid, me.start.ticks()));
        assert!(!is_alive(me.tgid, me.start.ticks() + 1));
        assert_eq!(zombie_status(me.tgid, me.start.ticks()), None);
        assert!(cmdline(me.tgid).is_some_and(|a| !a.is_empty()));
        let mut exe = ExeReader::default();
        assert_eq!(
            exe.read(me.tgid).map(<[u8]>::to_vec),
            super::exe(me.tgid).map(|p| p.into_os_string().into_encoded_bytes())
        );
        assert!(snapshot().iter().any(|e| e.tgid == me.tgid));
    }

    #[test]
    fn a_child_is_going_from_its_death_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!is_going(pid), "alive");
        child.kill().unwrap();
        let mut buf = Vec::new();
        while !read_stat(pid, &mut buf).is_some_and(|s| s.is_dead()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(is_going(pid), "a zombie");
        child.wait().unwrap();
        assert!(!is_going(pid), "reaped");
    }
}
