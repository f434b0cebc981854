//! The `ebpf` source: loads psmon's kernel programs (built from `psmon-ebpf`
//! and embedded in this binary), resolves the kernel struct offsets they need
//! from BTF, attaches them to the `sched_process_{fork,exec,exit}` BTF
//! tracepoints and drains their ring buffer through `AsyncFd`.
//!
//! It owns the load, the decode of [`RawEvent`]s and the in-kernel watch
//! filter ([`KernelFilter`], in its own file); it does not own what is watched (the caller
//! fills the filter).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError},
};
use psmon_ebpf::{
    CODE_UNKNOWN, COMM_LEN, Config, FLAG_PATH_TRUNCATED, GLOBAL_CONFIG, KIND_EXEC, KIND_EXIT,
    KIND_FORK, KIND_OOM, KIND_SIGNAL, MAP_EVENTS, MAP_LOST, RawEvent, RawSignal,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{EventSink, ProcessTable, SourceError, SourceOptions, btf};
use crate::event::{EventKind, EventTime, ExitStatus, ProcEvent, Process, StartTime};
use crate::proc;

mod kernel_filter;
mod refusal;

pub use kernel_filter::KernelFilter;
pub use refusal::Refusal;
use refusal::{refusal, take};

/// The kernel programs, built by `psmon/build.rs`; empty when the eBPF
/// toolchain was missing at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PSMON_EBPF_OBJ"));

/// Why the build left the programs out (empty when they are in).
const MISSING_BECAUSE: &str = env!("PSMON_EBPF_MISSING");

const PROGRAMS: [&str; 3] = [
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
];

/// Loads program `program` of the embedded object and attaches it to the
/// BTF tracepoint `tracepoint`.
fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
    kernel_btf: &aya::Btf,
) -> Result<(), Refusal> {
    let name = program;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Refusal::Missing {
            what: format!("program `{name}`"),
        })?;
    program.load(tracepoint, kernel_btf).map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.raw_os_error() == Some(libc::EPERM) {
                Refusal::NotPermitted {
                    what: format!("loading `{name}`"),
                }
            } else {
                Refusal::Verifier {
                    program: name.into(),
                    log: format!("{io_error}\n{verifier_log}"),
                }
            }
        }
        other => refusal(&format!("loading `{name}`"), other),
    })?;
    program
        .attach()
        .map_err(|e| refusal(&format!("attaching `{name}`"), e))?;
    Ok(())
}

/// Detaches and unloads the process programs: the ring stays open and
/// silent (a fault a test injects; see [`super::fault`]).
fn detach_all(ebpf: &mut Ebpf) {
    for name in PROGRAMS {
        let program: Option<&mut BtfTracePoint> =
            ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        match program.map(|p| p.unload()) {
            Some(Err(ProgramError::NotLoaded)) | Some(Ok(())) | None => {}
            Some(Err(e)) => tracing::warn!("unloading `{name}` failed: {e}"),
        }
    }
}

/// The `ebpf` source: the loaded programs, their ring buffer and, when
/// asked for, the kernel filter.
pub struct EbpfSource {
    /// Owns the loaded programs and their links: dropping it detaches them.
    programs: Ebpf,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    filter: Option<KernelFilter>,
    table: ProcessTable,
    coalesce: Duration,
    /// What the kernel programs cannot see of a death's cause, and why.
    pub causes_missing: Option<String>,
}

impl EbpfSource {
    /// Loads and attaches the programs, or says why it cannot.
    pub fn open(options: &SourceOptions) -> Result<Self, Refusal> {
        if OBJECT.is_empty() {
            return Err(Refusal::NotBuilt {
                why: MISSING_BECAUSE.to_string(),
            });
        }
        if !crate::proc::in_init_pid_namespace() {
            return Err(Refusal::NotInitPidNamespace);
        }
        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        if !btf_path.exists() {
            return Err(Refusal::NoBtf {
                path: btf_path.into(),
            });
        }
        let offsets = btf::Btf::from_file(btf_path)
            .and_then(|b| b.kernel_offsets())
            .map_err(|source| Refusal::Offsets { source })?;
        let config = Config {
            offsets,
            filter: options.kernel_filter as u32,
        };
        super::raise_memlock_limit();

        let ring_bytes = ring_size(options.ring_bytes);
        let mut ebpf = EbpfLoader::new()
            .set_global(GLOBAL_CONFIG, &config, true)
            .set_max_entries(MAP_EVENTS, ring_bytes)
            .load(OBJECT)
            .map_err(|e| refusal("loading the eBPF maps", e))?;
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| Refusal::Kernel {
            what: "reading kernel BTF".into(),
            source: Box::new(e),
        })?;
        for name in PROGRAMS {
            attach(&mut ebpf, name, name, &kernel_btf)?;
        }
        // Who killed a process: wanted, not required (the kernel may lack
        // the tracepoints); without them a death's cause is unknown.
        let oom = match btf::Btf::from_file(btf_path).map(|b| b.tracepoint_args("mark_victim")) {
            Ok(Some(1)) => Ok("mark_victim_pid"),
            Ok(Some(2)) => Ok("mark_victim_task"),
            Ok(other) => Err(format!("mark_victim has {other:?} arguments here")),
            Err(e) => Err(e.to_string()),
        };
        let mut causes = Vec::new();
        if let Err(e) = attach(&mut ebpf, "signal_generate", "signal_generate", &kernel_btf) {
            causes.push(format!("senders of signals: {e}"));
        }
        match oom.map(|program| attach(&mut ebpf, program, "mark_victim", &kernel_btf)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => causes.push(format!("OOM kills: {e}")),
            Err(e) => causes.push(format!("OOM kills: {e}")),
        }
        let causes_missing = (!causes.is_empty()).then(|| causes.join("; "));

        let ring = take(&mut ebpf, MAP_EVENTS, RingBuf::try_from)?;
        let lost = take(&mut ebpf, MAP_LOST, PerCpuArray::try_from)?;
        let filter = match options.kernel_filter {
            true => Some(KernelFilter::take_from(&mut ebpf)?),
            false => None,
        };
        if super::fault::deaf_from_the_start(super::SourceKind::Ebpf) {
            detach_all(&mut ebpf);
        }
        Ok(EbpfSource {
            causes_missing,
            programs: ebpf,
            ring,
            lost,
            filter,
            table: ProcessTable::default(),
            coalesce: options.coalesce,
        })
    }

    /// The in-kernel filter, when the source was opened with `kernel_filter`.
    /// Taken once: whoever decides what is watched owns it.
    pub fn take_filter(&mut self) -> Option<KernelFilter> {
        self.filter.take()
    }

    /// Drains the ring buffer into `tx` until `token` is cancelled or the
    /// consumer is gone.
    pub async fn run(
        self,
        tx: mpsc::Sender<ProcEvent>,
        token: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut sink = EventSink::new(tx);
        let mut seed = super::Seed::start();
        // Counted from load: losses before `run` (a slow start) are reported too.
        let mut lost_seen = 0;
        // SAFETY: the ring buffer map owns its fd, which stays open and the
        // same for as long as the map lives, and the AsyncFd owns the map.
        let fd = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|e| SourceError::RingBuf {
                source: e.into_parts().1,
            })?;
        let mut table = self.table;
        let lost = self.lost;
        let mut programs = self.programs;
        let mut deaf = false;
        let deafness = super::fault::Deafness::of(super::SourceKind::Ebpf);
        let mut fd = fd;
        // Reading the loss counter is a bpf(2) call: after a drain large
        // enough that the ring may have filled, else at most every
        // LOST_CHECK (a watched process forking thousands of children a
        // second would otherwise pay one per wake-up).
        let mut unchecked = false;
        let mut checked_at = std::time::Instant::now();
        let mut drained_at = checked_at;
        loop {
            let mut drained = 0;
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                guard = fd.readable_mut() => {
                    let mut guard = guard.map_err(|source| SourceError::RingBuf { source })?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        drained += 1;
                        if let Some(event) = decode(&item, &mut table)
                            && !sink.send(event)
                        {
                            return Ok(());
                        }
                    }
                    guard.clear_ready();
                }
                // Kernel-side losses happen only while the ring is full,
                // which wakes this loop: only a `Lost` the channel had no
                // room for needs a timer.
                _ = tokio::time::sleep(super::FLUSH_INTERVAL), if sink.pending() => {}
                _ = tokio::time::sleep(LOST_CHECK), if unchecked => {}
                entries = seed.ready(), if seed.pending() => table.seed(entries),
                _ = deafness.come(), if !deaf => {
                    deaf = true;
                    detach_all(&mut programs);
                    deafness.went();
                }
            }
            unchecked |= drained > 0;
            if unchecked && (drained >= LOST_CHECK_DRAIN || checked_at.elapsed() >= LOST_CHECK) {
                unchecked = false;
                checked_at = std::time::Instant::now();
                let total = lost_total(&lost);
                if total > lost_seen {
                    if !sink.send(ProcEvent::lost(Some(total - lost_seen))) {
                        return Ok(());
                    }
                    lost_seen = total;
                }
            }
            if !sink.flush() {
                return Ok(());
            }
            // Under a storm (a drain right after the last one), events are
            // taken in batches: waiting half a millisecond (up to 1.5 ms:
            // tokio's timer ticks in milliseconds) spares a wake-up of the
            // source and of the supervisor per event, a third of psmon's
            // CPU under a watched fork storm for about +0.8 ms of latency
            // then (BENCHMARKS (k)). A lone event, the common case, is
            // never held back.
            let storm = drained > 0 && drained_at.elapsed() < STORM_GAP;
            if drained > 0 {
                drained_at = std::time::Instant::now();
            }
            let pause = if storm {
                self.coalesce.max(STORM_BATCH)
            } else {
                self.coalesce
            };
            if drained > 0 && !super::pause(pause, &token).await {
                return Ok(());
            }
        }
    }
}

/// Drains closer together than this are a storm …
const STORM_GAP: std::time::Duration = std::time::Duration::from_millis(1);
/// … whose events are then taken in batches this far apart.
const STORM_BATCH: std::time::Duration = std::time::Duration::from_micros(500);

/// A drain at least this large reads the loss counter at once.
const LOST_CHECK_DRAIN: usize = 64;
/// Otherwise it is read at most this often, and this soon after events.
const LOST_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

fn lost_total(lost: &PerCpuArray<MapData, u64>) -> u64 {
    lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// The ring buffer size must be a power of two and a multiple of the page size.
fn ring_size(requested: u32) -> u32 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u32;
    requested.max(page).next_power_of_two()
}

fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

fn decode(bytes: &[u8], table: &mut ProcessTable) -> Option<ProcEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    if kind == KIND_SIGNAL || kind == KIND_OOM {
        return decode_signal(bytes);
    }
    if bytes.len() < size_of::<RawEvent>() {
        return None;
    }
    // SAFETY: the length was checked and RawEvent is plain integers; the
    // ring buffer gives no alignment guarantee to the slice, so read unaligned.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let time = EventTime::now(Some(raw.ktime_ns), Some(raw.cpu));
    let mut process = Process {
        tgid: raw.tgid,
        pid: raw.pid,
        ppid: raw.ppid,
        start: Some(StartTime::from_ns(raw.start_ns)),
        comm: String::from_utf8_lossy(c_str(&raw.comm)).into_owned(),
        path: None,
    };
    let kind = match raw.kind {
        KIND_FORK => {
            table.fork(&mut process);
            EventKind::Fork(process)
        }
        KIND_EXEC => {
            process.path = exec_path(&raw);
            table.exec(&mut process);
            EventKind::Exec(process)
        }
        KIND_EXIT => {
            if !table.exit(&mut process) {
                return None;
            }
            EventKind::Exit {
                process,
                status: ExitStatus::from_wait_status(raw.exit_code),
            }
        }
        _ => return None,
    };
    Some(ProcEvent::new(kind, time))
}

fn decode_signal(bytes: &[u8]) -> Option<ProcEvent> {
    if bytes.len() < size_of::<RawSignal>() {
        return None;
    }
    // SAFETY: as for RawEvent: length checked, plain integers, unaligned read.
    let raw: RawSignal = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let comm = |c: &[u8; COMM_LEN]| String::from_utf8_lossy(c_str(c)).into_owned();
    let known = |pid: u32, c: &[u8; COMM_LEN]| (pid != 0).then(|| (pid, comm(c)));
    let signal = crate::event::Signal {
        target: raw.target_tgid,
        signal: raw.signal as i32,
        code: (raw.code != CODE_UNKNOWN).then_some(raw.code),
        oom: raw.kind == KIND_OOM,
        cgroup_id: (raw.cgroup_id != 0).then_some(raw.cgroup_id),
        sender: crate::event::Sender {
            pid: raw.sender_tgid,
            uid: raw.sender_uid,
            comm: comm(&raw.sender_comm),
            parent: known(raw.parent_tgid, &raw.parent_comm),
            grandparent: known(raw.grandparent_tgid, &raw.grandparent_comm),
        },
    };
    let time = EventTime::now(Some(raw.ktime_ns), Some(raw.cpu));
    Some(ProcEvent::new(EventKind::Signal(signal), time))
}

/// The `execve` path; relative or truncated ones are replaced by
/// `/proc/PID/exe` when the process is still there to ask.
fn exec_path(raw: &RawEvent) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let name = c_str(&raw.path);
    let usable = name.first() == Some(&b'/') && raw.flags & FLAG_PATH_TRUNCATED == 0;
    if usable {
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
    }
    proc::exe(raw.tgid)
        .or_else(|| (!name.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(name))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_is_a_power_of_two_of_pages() {
        assert_eq!(ring_size(1), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(1 << 20), 1 << 20);
    }
}
