//! psmon's kernel programs: three BTF tracepoints (`tp_btf`) that turn
//! process fork, exec and thread-group exit into [`RawEvent`] records in a
//! BPF ring buffer, and two more that say who signalled a watched process
//! (`signal_generate`) and whom the OOM killer chose (`mark_victim`), as
//! [`RawSignal`]s in the same ring.
//!
//! `tp_btf` needs no tracefs and no kprobes (both may be missing on a server),
//! only kernel BTF, which psmon needs anyway to resolve the struct offsets in
//! [`Config`]: Rust eBPF has no CO-RE, so every `task_struct` member is read at
//! an offset userspace found in `/sys/kernel/btf/vmlinux`.
//!
//! This file owns what runs in the kernel; decoding, folding and everything
//! else is userspace's (`psmon::source::ebpf`). On the host it compiles to an
//! empty binary so that `cargo` can check the workspace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
            bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
            bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        },
        macros::{btf_tracepoint, map},
        maps::{HashMap, PerCpuArray, RingBuf},
        programs::BtfTracePointContext,
    };
    use psmon_ebpf::{
        CODE_UNKNOWN, COMM_LEN, Config, DEFAULT_RING_BYTES, EXECD_ENTRIES, EXECS_ALL,
        EXECS_UNRECORDED, FLAG_PATH_TRUNCATED, KIND_EXEC, KIND_EXIT, KIND_FORK, KIND_OOM,
        KIND_SIGNAL, NO_MEMORY_CGROUP, PATH_LEN, RawEvent, RawSignal, WATCH_MAP_ENTRIES,
    };

    /// Written by the loader before the programs are loaded (a `.rodata` global).
    #[unsafe(no_mangle)]
    static CONFIG: Config = unsafe { core::mem::zeroed() };

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

    /// Slot 0: ring buffer reservations that failed on this CPU since load.
    #[map]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Execs on this CPU since load, whether the filter passed them or not:
    /// slot `EXECS_ALL` all, slot `EXECS_UNRECORDED` those EXECD could not take.
    #[map]
    static EXECS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// Slot 0: tasks created on this CPU since load (threads too).
    #[map]
    static FORKS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// The thread groups that exec'd since userspace last took them out.
    #[map]
    static EXECD: HashMap<u32, u8> = HashMap::with_max_entries(EXECD_ENTRIES, 0);

    /// Slot 0: signals that may end a process, on this CPU since load,
    /// whether the filter passed them or not.
    #[map]
    static SIGNALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    static WATCH_COMMS: HashMap<[u8; COMM_LEN], u8> =
        HashMap::with_max_entries(WATCH_MAP_ENTRIES, 0);

    #[map]
    static WATCH_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(WATCH_MAP_ENTRIES, 0);

    #[inline(always)]
    fn config() -> Config {
        // SAFETY: the global is only ever read; volatile keeps the compiler
        // from folding the zero initialiser into the code.
        unsafe { core::ptr::read_volatile(&CONFIG) }
    }

    /// Reads a `T` at `base + offset` of kernel memory.
    #[inline(always)]
    fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
        // SAFETY: bpf_probe_read_kernel copes with any address; a bad one is an error.
        unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
    }

    fn watched_tgid(tgid: u32) -> bool {
        WATCH_TGIDS.get_ptr(&tgid).is_some()
    }

    fn watch_tgid(tgid: u32) {
        // A full map only costs the filter its precision: userspace's
        // reconciliation scan still sees the process.
        let _ = WATCH_TGIDS.insert(&tgid, &1, 0);
    }

    struct Fields {
        kind: u32,
        pid: u32,
        tgid: u32,
        ppid: u32,
        start_ns: u64,
        exit_code: u32,
        comm: [u8; COMM_LEN],
    }

    fn emit(f: &Fields, path: Option<*const u8>) {
        let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
            if let Some(lost) = LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
                unsafe { *lost += 1 };
            }
            return;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points at a reserved, exclusively owned record of the right size.
        unsafe {
            (*ev).kind = f.kind;
            (*ev).cpu = bpf_get_smp_processor_id();
            (*ev).ktime_ns = bpf_ktime_get_ns();
            (*ev).start_ns = f.start_ns;
            (*ev).pid = f.pid;
            (*ev).tgid = f.tgid;
            (*ev).ppid = f.ppid;
            (*ev).exit_code = f.exit_code;
            (*ev).flags = 0;
            (*ev)._pad = 0;
            (*ev).comm = f.comm;
            (*ev).path[0] = 0;
            if let Some(src) = path {
                match bpf_probe_read_kernel_str_bytes(src, &mut (*ev).path) {
                    Ok(s) if s.len() >= PATH_LEN - 1 => (*ev).flags |= FLAG_PATH_TRUNCATED,
                    Ok(_) => {}
                    Err(_) => (*ev).path[0] = 0,
                }
            }
        }
        entry.submit(0);
    }

    /// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
    #[btf_tracepoint(function = "sched_process_fork")]
    pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
        let _ = try_fork(&ctx);
        0
    }

    fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
        if let Some(forks) = FORKS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *forks += 1 };
        }
        let cfg = config();
        let o = &cfg.offsets;
        let parent: *const u8 = ctx.arg(0);
        let child: *const u8 = ctx.arg(1);
        let pid: u32 = read(child, o.task_pid)?;
        let tgid: u32 = read(child, o.task_tgid)?;
        if pid != tgid {
            return Ok(()); // a new thread, not a new process
        }
        let ppid: u32 = read(parent, o.task_tgid)?;
        if cfg.filter != 0 {
            if !watched_tgid(ppid) {
                return Ok(());
            }
            // Children of a watched process are watched: they may be the
            // instances an entry counts.
            watch_tgid(tgid);
        }
        let fields = Fields {
            kind: KIND_FORK,
            pid,
            tgid,
            ppid,
            start_ns: read(child, o.task_start_boottime)?,
            exit_code: 0,
            comm: read(child, o.task_comm)?,
        };
        emit(&fields, None);
        Ok(())
    }

    /// One more exec in slot `slot` of EXECS.
    #[inline(always)]
    fn count_exec(slot: u32) {
        if let Some(execs) = EXECS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *execs += 1 };
        }
    }

    /// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
    #[btf_tracepoint(function = "sched_process_exec")]
    pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
        let _ = try_exec(&ctx);
        0
    }

    fn try_exec(ctx: &BtfTracePointContext) -> Result<(), i32> {
        count_exec(EXECS_ALL);
        let cfg = config();
        let o = &cfg.offsets;
        let task: *const u8 = ctx.arg(0);
        let bprm: *const u8 = ctx.arg(2);
        let Ok(tgid) = read::<u32>(task, o.task_tgid) else {
            count_exec(EXECS_UNRECORDED);
            return Err(1);
        };
        // Filtering, psmon's scans read again only the processes that
        // exec'd; without the filter nobody takes them out.
        if cfg.filter != 0 && EXECD.insert(&tgid, &1, 0).is_err() {
            count_exec(EXECS_UNRECORDED);
        }
        // `comm` is already the new program's name here (begin_new_exec set it).
        let comm: [u8; COMM_LEN] = read(task, o.task_comm)?;
        if cfg.filter != 0 {
            if WATCH_COMMS.get_ptr(&comm).is_some() {
                watch_tgid(tgid);
            } else if !watched_tgid(tgid) {
                return Ok(());
            }
        }
        let parent: *const u8 = read(task, o.task_real_parent)?;
        let filename: *const u8 = read(bprm, o.binprm_filename)?;
        let fields = Fields {
            kind: KIND_EXEC,
            pid: read(task, o.task_pid)?,
            tgid,
            ppid: read(parent, o.task_tgid)?,
            start_ns: read(task, o.task_start_boottime)?,
            exit_code: 0,
            comm,
        };
        emit(&fields, Some(filename));
        Ok(())
    }

    /// `sched_process_exit(struct task_struct *p)`; kernels from 6.x add a
    /// `bool group_dead` argument, which 5.14 lacks, so it is not used.
    #[btf_tracepoint(function = "sched_process_exit")]
    pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
        let _ = try_exit(&ctx);
        0
    }

    fn try_exit(ctx: &BtfTracePointContext) -> Result<(), i32> {
        let cfg = config();
        let o = &cfg.offsets;
        let task: *const u8 = ctx.arg(0);
        let signal: *const u8 = read(task, o.task_signal)?;
        // do_exit() decrements signal->live before this tracepoint: zero means
        // this is the last thread of the group. Two threads racing through
        // do_exit can both read zero; userspace drops the duplicate.
        let live: i32 = read(signal, o.signal_live)?;
        if live != 0 {
            return Ok(());
        }
        let tgid: u32 = read(task, o.task_tgid)?;
        if cfg.filter != 0 {
            if !watched_tgid(tgid) {
                return Ok(());
            }
            let _ = WATCH_TGIDS.remove(&tgid);
        }
        let leader: *const u8 = read(task, o.task_group_leader)?;
        let parent: *const u8 = read(task, o.task_real_parent)?;
        // What wait(2) reports (wait_task_zombie): the group exit code after
        // exit_group() or a fatal signal, else the leader's own exit code.
        // 5.14 leaves group_exit_code zero for a single-threaded exit_group().
        let group_code: i32 = read(signal, o.signal_group_exit_code)?;
        let exit_code = if group_code != 0 {
            group_code
        } else {
            read::<i32>(leader, o.task_exit_code)?
        };
        let fields = Fields {
            kind: KIND_EXIT,
            pid: read(task, o.task_pid)?,
            tgid,
            ppid: read(parent, o.task_tgid)?,
            start_ns: read(leader, o.task_start_boottime)?,
            exit_code: exit_code as u32,
            comm: read(leader, o.task_comm)?,
        };
        emit(&fields, None);
        Ok(())
    }

    /// `signal_generate(int sig, struct kernel_siginfo *info,
    /// struct task_struct *task, int group, int result)`
    #[btf_tracepoint(function = "signal_generate")]
    pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
        let _ = try_signal(&ctx);
        0
    }

    /// Signals that do not end a process by default.
    fn harmless(sig: u32) -> bool {
        // SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH
        matches!(sig, 0 | 17..=23 | 28)
    }

    fn try_signal(ctx: &BtfTracePointContext) -> Result<(), i32> {
        let sig: u64 = ctx.arg(0);
        let sig = sig as u32;
        // TRACE_SIGNAL_IGNORED: nothing will happen.
        let result: u64 = ctx.arg(4);
        if harmless(sig) || result as u32 == 1 {
            return Ok(());
        }
        if let Some(n) = SIGNALS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *n += 1 };
        }
        let cfg = config();
        let o = &cfg.offsets;
        let task: *const u8 = ctx.arg(2);
        let tgid: u32 = read(task, o.task_tgid)?;
        if cfg.filter != 0 && !watched_tgid(tgid) {
            return Ok(());
        }
        let info: *const u8 = ctx.arg(1);
        // si_code is the third int of siginfo; NOINFO/PRIV (0 and 1) are
        // not pointers and fail to read.
        let code = read::<i32>(info, 8).unwrap_or(CODE_UNKNOWN);
        emit_signal(KIND_SIGNAL, tgid, read(task, o.task_pid)?, sig, code, 0);
        Ok(())
    }

    /// `mark_victim(struct task_struct *task, uid_t uid)` (kernels 6.8 on).
    #[btf_tracepoint(function = "mark_victim")]
    pub fn mark_victim_task(ctx: BtfTracePointContext) -> i32 {
        let o = config().offsets;
        let task: *const u8 = ctx.arg(0);
        if let (Ok(tgid), Ok(pid)) = (
            read::<u32>(task, o.task_tgid),
            read::<u32>(task, o.task_pid),
        ) {
            emit_signal(KIND_OOM, tgid, pid, 9, CODE_UNKNOWN, memory_cgroup_id(task));
        }
        0
    }

    /// `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id`: the inode
    /// number of the task's memory cgroup directory; 0 when unknown.
    fn memory_cgroup_id(task: *const u8) -> u64 {
        let [cgroups, subsys, css_cgroup, cgroup_kn, kn_id, index] = config().offsets.memory_cgroup;
        if index == NO_MEMORY_CGROUP || index > 64 {
            return 0;
        }
        let id = || -> Result<u64, i32> {
            let set: *const u8 = read(task, cgroups)?;
            let css: *const u8 = read(set, subsys + 8 * index)?;
            let cgroup: *const u8 = read(css, css_cgroup)?;
            let kn: *const u8 = read(cgroup, cgroup_kn)?;
            read(kn, kn_id)
        };
        id().unwrap_or(0)
    }

    /// `mark_victim(int pid)` (older kernels: 5.14 has this one).
    #[btf_tracepoint(function = "mark_victim")]
    pub fn mark_victim_pid(ctx: BtfTracePointContext) -> i32 {
        let pid: u64 = ctx.arg(0);
        // Only a pid here: the cgroup is read from /proc by userspace.
        emit_signal(KIND_OOM, pid as u32, pid as u32, 9, CODE_UNKNOWN, 0);
        0
    }

    /// Writes a [`RawSignal`] about `target` with the current task as its
    /// sender, and the sender's parent and grandparent.
    #[inline(always)] // six arguments: more than a BPF call may pass
    fn emit_signal(
        kind: u32,
        target_tgid: u32,
        target_pid: u32,
        signal: u32,
        code: i32,
        cgroup_id: u64,
    ) {
        let Some(mut entry) = EVENTS.reserve::<RawSignal>(0) else {
            if let Some(lost) = LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
                unsafe { *lost += 1 };
            }
            return;
        };
        let o = config().offsets;
        // SAFETY: the helper returns the running task; it is only read
        // through bpf_probe_read_kernel.
        let current = unsafe { bpf_get_current_task() } as *const u8;
        let parent: *const u8 = read(current, o.task_real_parent).unwrap_or(core::ptr::null());
        let grandparent: *const u8 = read(parent, o.task_real_parent).unwrap_or(core::ptr::null());
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points at a reserved, exclusively owned record of the right size.
        unsafe {
            (*ev).kind = kind;
            (*ev).cpu = bpf_get_smp_processor_id();
            (*ev).ktime_ns = bpf_ktime_get_ns();
            (*ev).target_tgid = target_tgid;
            (*ev).target_pid = target_pid;
            (*ev).signal = signal;
            (*ev).code = code;
            (*ev).sender_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*ev).sender_uid = bpf_get_current_uid_gid() as u32;
            (*ev).sender_comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
            (*ev).parent_tgid = read(parent, o.task_tgid).unwrap_or(0);
            (*ev).parent_comm = read(parent, o.task_comm).unwrap_or([0; COMM_LEN]);
            (*ev).grandparent_tgid = read(grandparent, o.task_tgid).unwrap_or(0);
            (*ev).grandparent_comm = read(grandparent, o.task_comm).unwrap_or([0; COMM_LEN]);
            (*ev).cgroup_id = cgroup_id;
        }
        entry.submit(0);
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
