//! Exit watches: a pidfd per watched process, so that its exit is the
//! kernel's word whatever the source does.
//!
//! All pidfds sit in one epoll set that one task waits on. Ten thousand
//! watches are ten thousand entries of a table and of the kernel's set,
//! not ten thousand tasks with a reactor registration each (0.77 KB
//! apiece, and the CPU to start them).
//!
//! Each watch needs /proc twice: once to make sure the pid it opened is
//! still the process that was matched, and once, after the exit, for the
//! zombie's wait status. The task does those reads in batches on one
//! blocking thread, so ten thousand watches set up at start (or ten
//! thousand exits at once) cost one thread, not the hundreds the blocking
//! pool would start for ten thousand separate reads.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::task::TaskTracker;

use super::{Back, Supervisor};
use crate::{event::ExitStatus, monitor::Input, proc};

/// At most this many orders, or ended processes, per batch of /proc reads
/// (a few ms of /proc).
const BATCH: usize = 1024;

/// Told of each watched process that ended: (tgid, start ticks) and its
/// wait status if it was still a zombie when read.
pub(super) type Ended = Box<dyn Fn(u32, u64, Option<ExitStatus>) + Send + Sync>;

enum WatchOrder {
    Watch {
        tgid: u32,
        start: u64,
        pidfd: OwnedFd,
    },
    Unwatch {
        tgid: u32,
    },
}

/// The handle the supervisor keeps: orders go to the task that waits.
pub(super) struct ExitWatches {
    orders: mpsc::UnboundedSender<WatchOrder>,
}

impl ExitWatches {
    /// Starts the task that waits on every pidfd; `ended` is told of each
    /// exit. Fails only if the kernel gives no epoll set.
    pub(super) fn start(tasks: &TaskTracker, ended: Ended) -> std::io::Result<Self> {
        // SAFETY: the AsyncFd owns the set, whose descriptor stays open and
        // the same until the AsyncFd is dropped.
        let set = unsafe {
            AsyncFd::register_with_interest(PidfdSet::new()?, tokio::io::Interest::READABLE)
        }?;
        let (orders, rx) = mpsc::unbounded_channel();
        tasks.spawn(wait(set, rx, ended));
        Ok(ExitWatches { orders })
    }

    /// Watches (tgid, start) through its pidfd; a pid reused meanwhile, or
    /// a process already ended, is reported as ended at once.
    pub(super) fn watch(&self, tgid: u32, start: u64, pidfd: OwnedFd) {
        let _ = self.orders.send(WatchOrder::Watch { tgid, start, pidfd });
    }

    /// Stops watching `tgid`, without a report.
    pub(super) fn unwatch(&self, tgid: u32) {
        let _ = self.orders.send(WatchOrder::Unwatch { tgid });
    }
}

/// What the supervisor is told of an exit: the monitor's input.
pub(super) fn reporting_to(back: mpsc::UnboundedSender<Back>) -> Ended {
    Box::new(move |tgid, start, zombie| {
        let input = Input::ExitSeen {
            tgid,
            start,
            zombie,
        };
        let _ = back.send(Back::Input {
            input,
            generation: None,
        });
    })
}

impl Supervisor {
    /// Waits on a pidfd for the exit of (tgid, start): the kernel's word,
    /// whatever the event source does.
    pub(super) fn watch_exit(&mut self, tgid: u32, start: u64) {
        let Some(watches) = &self.exit_watches else {
            return;
        };
        match proc::pidfd_open(tgid) {
            Ok(pidfd) => watches.watch(tgid, start, pidfd),
            // Gone already.
            Err(_) => (reporting_to(self.back_tx.clone()))(tgid, start, None),
        }
    }
}

/// The epoll set of pidfds. A pidfd turns readable when its process has
/// exited; each is added with its tgid as the event's data.
struct PidfdSet {
    set: Epoll,
}

impl PidfdSet {
    fn new() -> std::io::Result<Self> {
        let set = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(PidfdSet { set })
    }
}

impl AsRawFd for PidfdSet {
    fn as_raw_fd(&self) -> RawFd {
        self.set.0.as_raw_fd()
    }
}

/// A watched process.
struct Watched {
    start: u64,
    pidfd: OwnedFd,
}

async fn wait(
    set: AsyncFd<PidfdSet>,
    mut orders: mpsc::UnboundedReceiver<WatchOrder>,
    ended: Ended,
) {
    let mut watched: HashMap<u32, Watched> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        tokio::select! {
            n = orders.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let gone = apply(std::mem::take(&mut batch), &set, &mut watched).await;
                tell(gone, &ended).await;
            }
            ready = set.readable() => {
                let Ok(mut ready) = ready else { return };
                let mut gone = Vec::new();
                let n = ready
                    .get_inner()
                    .set
                    .wait(&mut events, EpollTimeout::ZERO)
                    .unwrap_or(0);
                for event in &events[..n] {
                    let tgid = event.data() as u32;
                    if let Some(w) = watched.remove(&tgid) {
                        let _ = ready.get_inner().set.delete(&w.pidfd);
                        gone.push((tgid, w.start));
                    }
                }
                if n < events.len() {
                    ready.clear_ready();
                }
                tell(gone, &ended).await;
            }
        }
    }
}

/// Carries out a batch of orders in their order. Returns the processes
/// that were not alive any more when their watch was asked for (and not
/// unwatched after).
async fn apply(
    orders: Vec<WatchOrder>,
    set: &AsyncFd<PidfdSet>,
    watched: &mut HashMap<u32, Watched>,
) -> Vec<(u32, u64)> {
    // The pid may have been reused between matching and pidfd_open.
    let asked: Vec<(u32, u64)> = orders
        .iter()
        .filter_map(|o| match o {
            WatchOrder::Watch { tgid, start, .. } => Some((*tgid, *start)),
            WatchOrder::Unwatch { .. } => None,
        })
        .collect();
    let alive = if asked.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || {
            asked
                .into_iter()
                .map(|(tgid, start)| proc::is_alive(tgid, start))
                .collect()
        })
        .await
        .unwrap_or_default()
    };
    let mut alive = alive.into_iter();
    let mut gone = Vec::new();
    for order in orders {
        match order {
            WatchOrder::Watch { tgid, start, pidfd } => {
                forget(tgid, set, watched);
                let event = EpollEvent::new(EpollFlags::EPOLLIN, u64::from(tgid));
                if alive.next() == Some(true) && set.get_ref().set.add(&pidfd, event).is_ok() {
                    watched.insert(tgid, Watched { start, pidfd });
                } else {
                    gone.push((tgid, start));
                }
            }
            WatchOrder::Unwatch { tgid } => {
                forget(tgid, set, watched);
                gone.retain(|&(t, _)| t != tgid);
            }
        }
    }
    gone
}

/// Takes `tgid`'s pidfd out of the set (explicitly: a forked child may
/// still hold a copy of it) and closes it.
fn forget(tgid: u32, set: &AsyncFd<PidfdSet>, watched: &mut HashMap<u32, Watched>) {
    if let Some(w) = watched.remove(&tgid) {
        let _ = set.get_ref().set.delete(&w.pidfd);
    }
}

/// Reads the wait status of each ended process while it is a zombie, in
/// batches on one blocking thread, and reports it.
async fn tell(gone: Vec<(u32, u64)>, ended: &Ended) {
    for chunk in gone.chunks(BATCH) {
        let chunk = chunk.to_vec();
        let read = tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(tgid, start)| (tgid, start, proc::zombie_status(tgid, start)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (tgid, start, status) in read {
            ended(tgid, start, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{process::Child, time::Duration};

    use super::*;

    fn start_ticks(pid: u32) -> u64 {
        let mut buf = Vec::new();
        proc::read_stat(pid, &mut buf).unwrap().start_ticks
    }

    fn sleeper() -> Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    type Told = mpsc::UnboundedReceiver<(u32, u64, Option<ExitStatus>)>;

    fn watches() -> (ExitWatches, Told) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ended: Ended = Box::new(move |tgid, start, status| {
            let _ = tx.send((tgid, start, status));
        });
        (ExitWatches::start(&TaskTracker::new(), ended).unwrap(), rx)
    }

    async fn next(told: &mut Told) -> (u32, u64, Option<ExitStatus>) {
        tokio::time::timeout(Duration::from_secs(5), told.recv())
            .await
            .expect("an exit reported within 5 s")
            .unwrap()
    }

    #[tokio::test]
    async fn reports_the_exit_of_each_watched_process_with_its_status() {
        let (watches, mut told) = watches();
        let mut children: Vec<Child> = (0..3).map(|_| sleeper()).collect();
        let ids: Vec<(u32, u64)> = children
            .iter()
            .map(|c| (c.id(), start_ticks(c.id())))
            .collect();
        for &(tgid, start) in &ids {
            watches.watch(tgid, start, proc::pidfd_open(tgid).unwrap());
        }
        // The second is no longer watched: its end is not reported.
        watches.unwatch(ids[1].0);
        children[1].kill().unwrap();
        // Killed and not reaped: reported with its wait status.
        children[2].kill().unwrap();
        assert_eq!(
            next(&mut told).await,
            (
                ids[2].0,
                ids[2].1,
                Some(ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false
                })
            )
        );
        // Reaped before its status was read: reported without one.
        children[0].kill().unwrap();
        children[0].wait().unwrap();
        let (tgid, start, status) = next(&mut told).await;
        assert_eq!((tgid, start), ids[0]);
        assert!(matches!(
            status,
            None | Some(ExitStatus::Signal {
                signal: libc::SIGKILL,
                ..
            })
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(told.try_recv().is_err(), "the unwatched one stays silent");
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[tokio::test]
    async fn a_pid_now_running_another_process_is_reported_ended_at_once() {
        let (watches, mut told) = watches();
        let mut child = sleeper();
        let (tgid, start) = (child.id(), start_ticks(child.id()));
        // Another start time is another process: the one asked for is gone.
        watches.watch(tgid, start + 1, proc::pidfd_open(tgid).unwrap());
        assert_eq!(next(&mut told).await, (tgid, start + 1, None));
        // Asked again for the same pid, the live process is watched anew.
        watches.watch(tgid, start, proc::pidfd_open(tgid).unwrap());
        child.kill().unwrap();
        let (t, s, status) = next(&mut told).await;
        assert_eq!((t, s), (tgid, start));
        assert!(status.is_some());
        let _ = child.wait();
    }
}
