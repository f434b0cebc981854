//! psmon's kernel programs: three BTF tracepoints (`tp_btf`) that turn
//! process fork, exec and thread-group exit into [`RawEvent`] records in a
//! BPF ring buffer.
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
            bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str_bytes,
        },
        macros::{btf_tracepoint, map},
        maps::{HashMap, PerCpuArray, RingBuf},
        programs::BtfTracePointContext,
    };
    use psmon_ebpf::{
        COMM_LEN, Config, DEFAULT_RING_BYTES, FLAG_PATH_TRUNCATED, KIND_EXEC, KIND_EXIT, KIND_FORK,
        PATH_LEN, RawEvent, WATCH_MAP_ENTRIES,
    };

    /// Written by the loader before the programs are loaded (a `.rodata` global).
    #[unsafe(no_mangle)]
    static CONFIG: Config = unsafe { core::mem::zeroed() };

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

    /// Slot 0: ring buffer reservations that failed on this CPU since load.
    #[map]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Slot 0: execs on this CPU since load, whether the filter passed them or not.
    #[map]
    static EXECS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

    /// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
    #[btf_tracepoint(function = "sched_process_exec")]
    pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
        let _ = try_exec(&ctx);
        0
    }

    fn try_exec(ctx: &BtfTracePointContext) -> Result<(), i32> {
        if let Some(execs) = EXECS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *execs += 1 };
        }
        let cfg = config();
        let o = &cfg.offsets;
        let task: *const u8 = ctx.arg(0);
        let bprm: *const u8 = ctx.arg(2);
        let tgid: u32 = read(task, o.task_tgid)?;
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
