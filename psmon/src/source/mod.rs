//! Event sources: how psmon learns that processes forked, exec'd and exited.
//!
//! Three sources turn kernel signals into one stream of [`ProcEvent`]s sent
//! into a bounded channel: `ebpf` (BTF tracepoints and a ring buffer),
//! `netlink` (the proc connector) and `poll` (diffing `/proc`). [`open`]
//! picks one — `auto` tries them best first and records why each better one
//! was refused. This module owns acquiring a source and the bookkeeping all
//! of them share ([`EventSink`], [`ProcessTable`]); it does not decide what
//! an event means for a watched process.

pub mod btf;
pub mod ebpf;
pub mod fault;
pub mod keeper;
pub mod netlink;
pub mod poll;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    path::PathBuf,
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{ProcEvent, Process, StartTime};

/// The three sources, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SourceKind {
    /// eBPF programs on the scheduler's tracepoints.
    Ebpf,
    /// The netlink proc connector.
    Netlink,
    /// Polling `/proc` every MONITOR_INTERVAL.
    Poll,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Ebpf => "ebpf",
            SourceKind::Netlink => "netlink",
            SourceKind::Poll => "poll",
        })
    }
}

/// `--source`: a specific source, or `auto` (best available).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// The best that opens: ebpf, else netlink, else poll.
    Auto,
    /// eBPF programs on the scheduler's tracepoints (root, kernel BTF).
    Ebpf,
    /// The kernel's proc connector (root).
    Netlink,
    /// Polling /proc every MONITOR_INTERVAL (any kernel).
    Poll,
}

/// How a source is opened.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Ring buffer size in bytes for `ebpf` (rounded up to a power of two pages).
    pub ring_bytes: u32,
    /// Socket receive buffer in bytes for `netlink`.
    pub netlink_rcvbuf: usize,
    /// Scan interval for `poll`.
    pub poll_interval: Duration,
    /// `ebpf` only: send only events of watched comms and tgids (monitoring).
    /// Trace runs unfiltered unless asked.
    pub kernel_filter: bool,
    /// After a read that found events, wait this long before the next one,
    /// so that a storm is read in batches rather than with one wake-up per
    /// event. The first event after a quiet spell is read at once; one that
    /// follows another within this time waits up to this long. Zero (the
    /// monitor's setting) reads every event at once.
    pub coalesce: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            ring_bytes: psmon_ebpf::DEFAULT_RING_BYTES,
            netlink_rcvbuf: netlink::DEFAULT_RCVBUF,
            poll_interval: Duration::from_secs(1),
            kernel_filter: false,
            coalesce: Duration::ZERO,
        }
    }
}

/// Why a source could not open, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The `ebpf` source was refused.
    #[error("the `ebpf` source is unavailable: {reason}")]
    Ebpf {
        /// Why.
        reason: ebpf::Refusal,
    },
    /// The `netlink` source was refused.
    #[error("the `netlink` source is unavailable: {reason}")]
    Netlink {
        /// Why.
        reason: netlink::Refusal,
    },
    /// Reading the ring buffer failed.
    #[error("reading the BPF ring buffer failed")]
    RingBuf {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Receiving from the netlink socket failed.
    #[error("receiving from the proc connector failed")]
    Recv {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source's task ended abnormally.
    #[error("a /proc scan task failed")]
    Task {
        /// How.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// An opened source, ready to run.
pub enum Source {
    /// The eBPF programs and their ring buffer.
    Ebpf(Box<ebpf::EbpfSource>),
    /// The proc connector's socket.
    Netlink(netlink::NetlinkSource),
    /// The poller.
    Poll(poll::PollSource),
}

impl Source {
    /// Which kind it is.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Ebpf(_) => SourceKind::Ebpf,
            Source::Netlink(_) => SourceKind::Netlink,
            Source::Poll(_) => SourceKind::Poll,
        }
    }

    /// Sends events into `tx` until `token` is cancelled or `tx` is closed.
    pub async fn run(
        self,
        tx: mpsc::Sender<ProcEvent>,
        token: CancellationToken,
    ) -> Result<(), SourceError> {
        match self {
            Source::Ebpf(s) => s.run(tx, token).await,
            Source::Netlink(s) => s.run(tx, token).await,
            Source::Poll(s) => s.run(tx, token).await,
        }
    }
}

/// A filter in the kernel that drops events of processes nobody watches.
pub trait Filter: Send {
    /// Passes execs of programs whose `comm` is `name`'s, and from then on
    /// every event of such a process.
    fn watch_comm(&mut self, name: &str);
    /// Passes every event of thread group `tgid` (and forks of it).
    fn watch_tgid(&mut self, tgid: u32);
    /// Stops passing the events of thread group `tgid`.
    fn unwatch_tgid(&mut self, tgid: u32);
    /// How many execs the kernel has seen since the filter was loaded,
    /// passed or not: while it stands still, no process changed program.
    fn execs_seen(&self) -> Option<u64>;
    /// A way to take out the list of processes that exec'd, passed or
    /// not, since it was last taken out (each named once, whatever it
    /// ran); `None` when the kernel keeps no such list.
    fn execd(&mut self) -> Option<TakeExecd>;
    /// How many signals that may end a process the kernel has seen since
    /// the filter was loaded, passed or not.
    fn signals_seen(&self) -> Option<u64>;
}

/// Takes out a kernel filter's list of processes that exec'd: `None` when
/// the kernel could not record them all, or cannot say. It costs system
/// calls for each process listed: run it where blocking is fine (the
/// scan's thread), not on the event loop.
pub type TakeExecd = Box<dyn FnOnce() -> Option<Vec<u32>> + Send>;

/// What a consumer of a source's events may rely on, handed over when the
/// source opens: its name for messages, its kernel filter if it has one,
/// and how far its exit events may trail an exit.
pub struct Handle {
    /// Which kind of source.
    pub kind: SourceKind,
    /// Its kernel filter, if it has one.
    pub filter: Option<Box<dyn Filter>>,
    /// A polling source learns of an exit only at its next scan.
    pub exit_lag: Duration,
    /// Every exec on the system comes as an event (no filter drops any,
    /// and the source sees execs that keep the pid, unlike polling).
    pub reports_every_exec: bool,
    /// Why this source cannot tell who killed a process; `None` when it can.
    pub cause_unknown: Option<String>,
}

impl Source {
    /// The handle on this source; its filter, if any, moves into it.
    pub fn handle(&mut self) -> Handle {
        let (filter, exit_lag) = match self {
            Source::Ebpf(s) => (
                s.take_filter().map(|f| Box::new(f) as Box<dyn Filter>),
                Duration::ZERO,
            ),
            Source::Netlink(_) => (None, Duration::ZERO),
            Source::Poll(p) => (None, p.interval),
        };
        let reports_every_exec = match self {
            Source::Ebpf(_) => filter.is_none(),
            Source::Netlink(_) => true,
            Source::Poll(_) => false,
        };
        let cause_unknown = match self {
            Source::Ebpf(s) => s.causes_missing.clone(),
            Source::Netlink(_) => Some("source netlink".to_string()),
            Source::Poll(_) => Some("source poll".to_string()),
        };
        Handle {
            kind: self.kind(),
            filter,
            exit_lag,
            reports_every_exec,
            cause_unknown,
        }
    }
}

/// What [`open`] got, and why better sources were refused.
pub struct Opened {
    /// The source that opened.
    pub source: Source,
    /// Why better ones did not.
    pub refused: Vec<SourceError>,
}

/// Opens the chosen source; with `Auto`, the first of ebpf, netlink, poll
/// that works. Subscribing happens here, before the caller's `/proc`
/// snapshot, so no event between the two is missed.
pub fn open(choice: SourceChoice, options: &SourceOptions) -> Result<Opened, SourceError> {
    let mut refused = Vec::new();
    if matches!(choice, SourceChoice::Auto | SourceChoice::Ebpf) {
        match ebpf::EbpfSource::open(options) {
            Ok(s) => {
                return Ok(Opened {
                    source: Source::Ebpf(Box::new(s)),
                    refused,
                });
            }
            Err(reason) if choice == SourceChoice::Auto => {
                refused.push(SourceError::Ebpf { reason })
            }
            Err(reason) => return Err(SourceError::Ebpf { reason }),
        }
    }
    if matches!(choice, SourceChoice::Auto | SourceChoice::Netlink) {
        match netlink::NetlinkSource::open(options) {
            Ok(s) => {
                return Ok(Opened {
                    source: Source::Netlink(s),
                    refused,
                });
            }
            Err(reason) if choice == SourceChoice::Auto => {
                refused.push(SourceError::Netlink { reason })
            }
            Err(reason) => return Err(SourceError::Netlink { reason }),
        }
    }
    Ok(Opened {
        source: Source::Poll(poll::PollSource {
            interval: options.poll_interval,
        }),
        refused,
    })
}

/// The start-up `/proc` snapshot (with executables), taken on the blocking
/// pool while events are already being read; the source merges it into its
/// [`ProcessTable`] when it is ready. Subscribing came first, so nothing
/// falls between the two.
pub(crate) struct Seed(Option<tokio::task::JoinHandle<ProcListing>>);

/// Every process in `/proc` with its executable, when readable.
pub(crate) type ProcListing = Vec<(crate::proc::ProcEntry, Option<PathBuf>)>;

impl Seed {
    pub fn start() -> Self {
        Seed(Some(tokio::task::spawn_blocking(|| {
            crate::proc::snapshot()
                .into_iter()
                .map(|e| {
                    let exe = crate::proc::exe(e.tgid);
                    (e, exe)
                })
                .collect()
        })))
    }

    pub fn pending(&self) -> bool {
        self.0.is_some()
    }

    /// The snapshot, once; pending forever after.
    pub async fn ready(&mut self) -> ProcListing {
        match self.0.as_mut() {
            Some(task) => {
                let entries = task.await.unwrap_or_default();
                self.0 = None;
                entries
            }
            None => std::future::pending().await,
        }
    }
}

/// How often sources retry delivering a pending `Lost` when no event comes
/// (only while one is pending: an idle source does not wake).
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Sleeps `period` (unless zero), returning false if cancelled meanwhile.
pub(crate) async fn pause(period: Duration, token: &CancellationToken) -> bool {
    if period.is_zero() {
        return true;
    }
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

/// The sending end every source uses: never blocks the source. When the
/// channel is full the event is dropped and counted, and a `Lost` with the
/// count goes out as soon as there is room, so consumers resynchronise.
pub struct EventSink {
    tx: mpsc::Sender<ProcEvent>,
    dropped: u64,
}

impl EventSink {
    /// A sink that sends to `tx`.
    pub fn new(tx: mpsc::Sender<ProcEvent>) -> Self {
        EventSink { tx, dropped: 0 }
    }

    /// Returns false when the receiver is gone and the source should stop.
    pub fn send(&mut self, event: ProcEvent) -> bool {
        use mpsc::error::TrySendError;
        if !self.flush() {
            return false;
        }
        if self.dropped > 0 {
            self.dropped += 1;
            return true;
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// A `Lost` waits for room in the channel: the source should call
    /// [`EventSink::flush`] again soon even if no event comes.
    pub fn pending(&self) -> bool {
        self.dropped > 0
    }

    /// Sends the pending `Lost`, if any and if there is room. Sources call it
    /// periodically too, so a loss is reported even when no event follows.
    /// Returns false when the receiver is gone.
    pub fn flush(&mut self) -> bool {
        use mpsc::error::TrySendError;
        if self.dropped == 0 {
            return !self.tx.is_closed();
        }
        match self.tx.try_send(ProcEvent::lost(Some(self.dropped))) {
            Ok(()) => {
                self.dropped = 0;
                true
            }
            Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// What a source remembers of live processes: filled from a `/proc`
/// snapshot taken after subscribing, then kept current by fork and exec
/// events. It completes exit events (path, start time, comm) and drops a
/// second exit of the same (tgid, start time).
#[derive(Default)]
pub struct ProcessTable {
    live: HashMap<u32, Alive>,
    recent_exits: RecentSet,
}

#[derive(Clone)]
struct Alive {
    start: Option<StartTime>,
    ppid: u32,
    comm: String,
    path: Option<PathBuf>,
}

impl ProcessTable {
    /// Merges a snapshot. Events already applied are newer than the
    /// snapshot: entries present win, and exits already reported stay gone.
    pub(crate) fn seed(&mut self, entries: ProcListing) {
        for (e, path) in entries {
            if e.is_dead() || self.recent_exits.contains(e.tgid, Some(e.start.ticks())) {
                continue;
            }
            self.live.entry(e.tgid).or_insert(Alive {
                start: Some(e.start),
                ppid: e.ppid,
                comm: e.comm,
                path,
            });
        }
    }

    /// Start time of the live process `tgid`, if known.
    pub fn start_of(&self, tgid: u32) -> Option<StartTime> {
        self.live.get(&tgid).and_then(|k| k.start)
    }

    /// Records a fork (the child runs the parent's executable and has its
    /// name) and fills what the event lacks.
    pub fn fork(&mut self, p: &mut Process) {
        if let Some(parent) = self.live.get(&p.ppid) {
            if p.path.is_none() {
                p.path = parent.path.clone();
            }
            if p.comm.is_empty() {
                p.comm = parent.comm.clone();
            }
        }
        self.remember(p);
    }

    /// Records an exec; the start time and parent already known (from the
    /// fork event, whose start is precise) fill or refine the event's. The
    /// name is not taken from before the exec: the exec changed it, and an
    /// unknown name stays unknown rather than wrong.
    pub fn exec(&mut self, p: &mut Process) {
        if let Some(k) = self.live.get(&p.tgid) {
            match (p.start, k.start) {
                (None, known) => p.start = known,
                (Some(s), Some(known)) if s.same_tick(known) => p.start = Some(known),
                _ => {}
            }
            if p.ppid == 0 {
                p.ppid = k.ppid;
            }
        }
        self.remember(p);
    }

    /// A process renamed itself (`PR_SET_NAME`).
    pub fn comm(&mut self, tgid: u32, comm: String) {
        if let Some(k) = self.live.get_mut(&tgid) {
            k.comm = comm;
        }
    }

    fn remember(&mut self, p: &Process) {
        self.live.insert(
            p.tgid,
            Alive {
                start: p.start,
                ppid: p.ppid,
                comm: p.comm.clone(),
                path: p.path.clone(),
            },
        );
    }

    /// Completes an exit from what is known and forgets the process.
    /// Returns false when this exit was already reported.
    pub fn exit(&mut self, p: &mut Process) -> bool {
        let known = self.live.get(&p.tgid).cloned();
        if let Some(k) = &known {
            let same = match (p.start, k.start) {
                (Some(a), Some(b)) => a.same_tick(b),
                _ => true,
            };
            if same {
                p.start = k.start.or(p.start);
                p.path = p.path.take().or_else(|| k.path.clone());
                if p.comm.is_empty() {
                    p.comm = k.comm.clone();
                }
                if p.ppid == 0 {
                    p.ppid = k.ppid;
                }
                self.live.remove(&p.tgid);
            }
        }
        self.recent_exits.insert(p.identity())
    }
}

/// A bounded set of recently reported exit identities.
#[derive(Default)]
struct RecentSet {
    set: HashSet<(u32, Option<u64>)>,
    /// How many identities of each tgid the set holds.
    tgids: HashMap<u32, u32>,
    order: VecDeque<(u32, Option<u64>)>,
}

impl RecentSet {
    const CAPACITY: usize = 4096;

    fn contains(&self, tgid: u32, start_ticks: Option<u64>) -> bool {
        self.set.contains(&(tgid, start_ticks))
    }

    /// Returns false if `id` was already reported. An exit whose start is
    /// unknown, of a tgid that just exited, is a straggler of that exit (a
    /// thread's exit message arriving after its group was reported and
    /// reaped) rather than another process.
    fn insert(&mut self, id: (u32, Option<u64>)) -> bool {
        if id.1.is_none() && self.tgids.contains_key(&id.0) {
            return false;
        }
        if !self.set.insert(id) {
            return false;
        }
        *self.tgids.entry(id.0).or_default() += 1;
        self.order.push_back(id);
        if self.order.len() > Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
            if let Some(n) = self.tgids.get_mut(&old.0) {
                *n -= 1;
                if *n == 0 {
                    self.tgids.remove(&old.0);
                }
            }
        }
        true
    }
}

/// Lifts `RLIMIT_MEMLOCK`: kernels before 5.11 charge BPF maps to it (64 KiB
/// by default), and a ring buffer then fails with EPERM. Harmless elsewhere.
pub(crate) fn raise_memlock_limit() {
    use nix::{
        libc::RLIM_INFINITY,
        sys::resource::{Resource, setrlimit},
    };
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn proc(tgid: u32, ticks: Option<u64>) -> Process {
        Process {
            tgid,
            pid: tgid,
            ppid: 0,
            start: ticks.map(StartTime::from_ticks),
            comm: String::new(),
            path: None,
        }
    }

    #[test]
    fn exit_is_completed_and_reported_once() {
        let mut table = ProcessTable::default();
        let mut exec = proc(5, Some(100));
        exec.comm = "victim".into();
        exec.path = Some("/bin/victim".into());
        exec.ppid = 1;
        table.exec(&mut exec);

        let mut exit = proc(5, None);
        assert!(table.exit(&mut exit));
        assert_eq!(
            exit.path.as_deref(),
            Some(std::path::Path::new("/bin/victim"))
        );
        assert_eq!(exit.comm, "victim");
        assert_eq!(exit.start, Some(StartTime::from_ticks(100)));
        assert_eq!(exit.ppid, 1);

        let mut again = proc(5, Some(100));
        assert!(!table.exit(&mut again), "a duplicate exit must be dropped");
        // The same pid with another start time is another process.
        let mut reused = proc(5, Some(200));
        assert!(table.exit(&mut reused));
        // A thread's exit after its group was reaped: nothing is known of it.
        let mut straggler = proc(5, None);
        straggler.pid = 7;
        assert!(!table.exit(&mut straggler), "one exit per process");
    }

    #[test]
    fn fork_and_comm_events_fill_what_proc_no_longer_shows() {
        let mut table = ProcessTable::default();
        let mut parent = proc(5, Some(100));
        parent.comm = "sh".into();
        parent.path = Some("/bin/sh".into());
        table.exec(&mut parent);
        let per_tick = StartTime::from_ticks(1).ns();
        let mut child = proc(6, Some(100));
        child.ppid = 5;
        child.start = child.start.map(|s| s.refined(100 * per_tick + 1234));
        table.fork(&mut child);
        assert_eq!(child.comm, "sh", "a fork has its parent's name");
        // The exec read /proc too late: only the tick-precise start, no name.
        let mut exec = proc(6, Some(100));
        table.exec(&mut exec);
        assert_eq!(exec.comm, "", "unknown, not the name before the exec");
        assert_eq!(exec.ppid, 5);
        table.comm(6, "renamed".into());
        assert_eq!(
            exec.start.unwrap().ns(),
            100 * per_tick + 1234,
            "the precise start is kept"
        );
        let mut exit = proc(6, None);
        assert!(table.exit(&mut exit));
        assert_eq!(exit.comm, "renamed");
        assert_eq!(exit.start.unwrap().ns(), 100 * per_tick + 1234);
    }

    #[tokio::test]
    async fn full_channel_becomes_lost_with_count() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut sink = EventSink::new(tx);
        let ev = || ProcEvent::lost(None);
        assert!(sink.send(ev()));
        assert!(sink.send(ev())); // dropped
        assert!(sink.send(ev())); // dropped
        rx.recv().await.unwrap();
        assert!(sink.send(ev())); // the Lost goes first, then this is dropped
        let lost = rx.recv().await.unwrap();
        assert_eq!(lost.kind, EventKind::Lost { count: Some(2) });
        // With no event to carry it, flush delivers the pending count.
        assert!(sink.flush());
        let lost = rx.recv().await.unwrap();
        assert_eq!(lost.kind, EventKind::Lost { count: Some(1) });
    }
}
