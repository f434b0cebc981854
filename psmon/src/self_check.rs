//! The event source's self-check: every `SELF_CHECK_INTERVAL` psmon starts
//! a process of its own that exits at once — the canary — and expects the
//! open source to report that exit within [`DEADLINE`]. A netlink
//! subscription that stopped delivering, a ring buffer nobody fills any
//! more, a BPF program someone else detached: each fails the check, where
//! before only the next reconciliation scan could notice, and only if it
//! saw a death.
//!
//! The canary is a `clone(CLONE_VM | CLONE_VFORK)` child of a thread named
//! [`CANARY_COMM`] that calls `_exit(0)` and nothing else: no exec, no
//! page tables copied, about the cost of a thread. It keeps that name in
//! every event of it, so `psmon trace` and the flight recorders can leave
//! it out, and it stays a zombie (its pid taken) until psmon has its
//! verdict, so the pid an exit event names cannot be another process.
//!
//! [`SelfCheck`] is the schedule and the verdicts, with time passed in;
//! [`Canary`] is the thread that makes canaries. What a missed check leads
//! to (a rescan; after [`MISSES_BEFORE_REPLACING`] in a row, reopening the
//! source or falling back) is the daemon's.

use std::{
    collections::VecDeque,
    io,
    sync::mpsc,
    time::{Duration, Instant},
};

/// The canary's name (`comm`) in every event of it.
pub const CANARY_COMM: &str = "psmon-canary";

/// How long after the canary is started its exit event must be in.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Missed checks in a row after which the source is reopened or replaced.
pub const MISSES_BEFORE_REPLACING: u32 = 3;

/// Canary pids remembered after their verdict, so that a late event of
/// one (its exit after a missed check) is still recognised.
const REMEMBERED: usize = 8;

/// Whether an event is a canary's: its pid is one psmon started and its
/// name is the canary's (a remembered pid may since be someone else's).
pub fn is_canary_comm(comm: &str) -> bool {
    comm == CANARY_COMM
}

/// A canary started and not yet judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flying {
    /// The canary.
    pub pid: u32,
    /// When it was started.
    pub fired: Instant,
}

/// What became of a canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its exit came after `took`; `after_misses` checks had failed before.
    Passed {
        /// The canary.
        pid: u32,
        /// From its start to its exit event.
        took: Duration,
        /// Checks that had failed in a row before.
        after_misses: u32,
    },
    /// No exit event by the deadline; `in_a_row` checks have failed now.
    Missed {
        /// The canary.
        pid: u32,
        /// Checks failed in a row now.
        in_a_row: u32,
    },
}

/// The self-check's schedule: when the next canary flies, which one is in
/// the air, how many checks failed in a row.
#[derive(Debug)]
pub struct SelfCheck {
    /// Zero: off.
    interval: Duration,
    /// Whether the open source can be checked (a polling source cannot see
    /// a process that lives a millisecond; no source, nothing to check).
    checkable: bool,
    flying: Option<Flying>,
    next: Option<Instant>,
    misses: u32,
    judged: VecDeque<u32>,
}

impl SelfCheck {
    /// A self-check every `interval` (zero: off).
    pub fn new(interval: Duration) -> Self {
        SelfCheck {
            interval,
            checkable: false,
            flying: None,
            next: None,
            misses: 0,
            judged: VecDeque::new(),
        }
    }

    /// How often a canary flies.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A reload may change the interval; the next canary flies by the new one.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        if interval != self.interval {
            self.interval = interval;
            self.next = self.schedule(now);
        }
    }

    /// Another source is open (`checkable`: it reports every exit), or
    /// none. A canary in the air is forgotten (its pid is returned, to be
    /// reaped) and the count of misses starts again: they were the old
    /// source's. The first check of the new one comes at once.
    pub fn source_changed(&mut self, checkable: bool, now: Instant) -> Option<u32> {
        self.checkable = checkable;
        self.misses = 0;
        let dropped = self.flying.take().map(|f| {
            self.remember(f.pid);
            f.pid
        });
        self.next = (checkable && !self.interval.is_zero()).then_some(now);
        dropped
    }

    /// When something is due: the flying canary's deadline or the next launch.
    pub fn due(&self) -> Option<Instant> {
        match self.flying {
            Some(f) => Some(f.fired + DEADLINE),
            None => self.next,
        }
    }

    /// Whether a canary should fly now.
    pub fn should_fire(&self, now: Instant) -> bool {
        self.flying.is_none() && self.next.is_some_and(|t| t <= now)
    }

    /// A canary was started as `pid`.
    pub fn fired(&mut self, pid: u32, now: Instant) {
        self.flying = Some(Flying { pid, fired: now });
        self.next = None;
    }

    /// A canary could not be started: tried again at the next interval.
    pub fn not_fired(&mut self, now: Instant) {
        self.next = self.schedule(now);
    }

    /// The flying canary, if it is past its deadline, has missed.
    pub fn expire(&mut self, now: Instant) -> Option<Verdict> {
        let f = self.flying.filter(|f| now >= f.fired + DEADLINE)?;
        self.flying = None;
        self.remember(f.pid);
        self.misses += 1;
        let in_a_row = self.misses;
        if in_a_row >= MISSES_BEFORE_REPLACING {
            // The source is being replaced: a new count for whatever comes.
            self.misses = 0;
        }
        self.next = self.schedule(now);
        Some(Verdict::Missed {
            pid: f.pid,
            in_a_row,
        })
    }

    /// An exit event of `tgid`: the flying canary's passes the check.
    pub fn exited(&mut self, tgid: u32, now: Instant) -> Option<Verdict> {
        let f = self.flying.filter(|f| f.pid == tgid)?;
        self.flying = None;
        self.remember(f.pid);
        let after_misses = std::mem::take(&mut self.misses);
        self.next = self.schedule(now);
        Some(Verdict::Passed {
            pid: f.pid,
            took: now.saturating_duration_since(f.fired),
            after_misses,
        })
    }

    /// Whether an event of `tgid` named `comm` is a canary's, to be kept
    /// from everything else psmon does with events.
    pub fn owns(&self, tgid: u32, comm: &str) -> bool {
        self.flying.is_some_and(|f| f.pid == tgid)
            || (is_canary_comm(comm) && self.judged.contains(&tgid))
    }

    fn remember(&mut self, pid: u32) {
        if self.judged.len() == REMEMBERED {
            self.judged.pop_front();
        }
        self.judged.push_back(pid);
    }

    fn schedule(&self, now: Instant) -> Option<Instant> {
        (self.checkable && !self.interval.is_zero()).then(|| now + self.interval)
    }
}

/// The thread that starts canaries and reaps them once judged.
#[derive(Clone, Debug)]
pub struct Canary {
    orders: mpsc::Sender<CanaryOrder>,
}

#[derive(Debug)]
enum CanaryOrder {
    Fire(mpsc::SyncSender<io::Result<u32>>),
    Reap(u32),
}

impl Canary {
    /// Starts the thread (named [`CANARY_COMM`], which its canaries inherit).
    pub fn start() -> io::Result<Canary> {
        let (orders, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(CANARY_COMM.to_string())
            .spawn(move || serve(rx))?;
        Ok(Canary { orders })
    }

    /// Starts a canary and returns its pid. Waits for the thread (tens of
    /// microseconds: the child runs `_exit` before the thread goes on).
    pub fn fire(&self) -> io::Result<u32> {
        let gone = || io::Error::other("the canary thread has stopped");
        let (tx, rx) = mpsc::sync_channel(1);
        self.orders
            .send(CanaryOrder::Fire(tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// Reaps canary `pid` (on the thread: its exit event may come before
    /// it is a zombie, and reaping must not wait on the caller's thread).
    pub fn reap(&self, pid: u32) {
        let _ = self.orders.send(CanaryOrder::Reap(pid));
    }
}

fn serve(orders: mpsc::Receiver<CanaryOrder>) {
    // The child runs on this stack while this thread is suspended.
    let mut stack = vec![0u8; 16 * 1024];
    for order in orders {
        match order {
            CanaryOrder::Fire(reply) => {
                let _ = reply.send(clone_and_exit(&mut stack));
            }
            CanaryOrder::Reap(pid) => {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
    }
}

/// A child that shares this thread's memory and exits at once.
fn clone_and_exit(stack: &mut [u8]) -> io::Result<u32> {
    use nix::sched::{CloneFlags, clone};
    let flags = CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
    let exit_at_once = Box::new(|| -> isize {
        // SAFETY: `_exit` is async-signal-safe and touches no memory; it is
        // the only thing the child runs.
        unsafe { libc::_exit(0) }
    });
    // SAFETY: with CLONE_VFORK this thread is suspended until the child
    // has exited, so the child alone uses `stack` and the memory it shares;
    // it allocates nothing, takes no lock and only calls `_exit`. SIGCHLD
    // as its exit signal makes it an ordinary child for `waitpid`.
    let pid = unsafe { clone(exit_at_once, stack, flags, Some(libc::SIGCHLD)) }?;
    Ok(pid.as_raw() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_canary_flies_at_once_then_every_interval_and_passes_on_its_exit() {
        let t0 = Instant::now();
        let mut check = SelfCheck::new(Duration::from_secs(10));
        assert_eq!(check.due(), None, "no source, nothing to check");
        check.source_changed(true, t0);
        assert!(check.should_fire(t0));
        check.fired(41, t0);
        assert!(!check.should_fire(at(t0, 1)));
        assert_eq!(check.due(), Some(t0 + DEADLINE));
        assert!(check.owns(41, "anything"), "the flying pid is the canary's");
        assert_eq!(check.exited(40, at(t0, 1)), None, "another process");
        assert_eq!(
            check.exited(41, at(t0, 3)),
            Some(Verdict::Passed {
                pid: 41,
                took: Duration::from_millis(3),
                after_misses: 0
            })
        );
        assert_eq!(check.due(), Some(at(t0, 10_003)));
        assert!(check.owns(41, CANARY_COMM), "a late event of it");
        assert!(!check.owns(41, "sshd"), "its pid, since someone else's");
    }

    #[test]
    fn misses_are_counted_in_a_row_and_reset_by_a_pass_or_a_new_source() {
        let t0 = Instant::now();
        let mut check = SelfCheck::new(Duration::from_secs(1));
        check.source_changed(true, t0);
        let mut now = t0;
        for n in 1..=2 {
            check.fired(100 + n, now);
            assert_eq!(check.expire(now + DEADLINE / 2), None, "not yet");
            now += DEADLINE;
            assert_eq!(
                check.expire(now),
                Some(Verdict::Missed {
                    pid: 100 + n,
                    in_a_row: n
                })
            );
            assert!(!check.should_fire(now), "the next after the interval");
            now += Duration::from_secs(1);
            assert!(check.should_fire(now));
        }
        check.fired(200, now);
        let passed = check.exited(200, now).unwrap();
        assert!(matches!(
            passed,
            Verdict::Passed {
                after_misses: 2,
                ..
            }
        ));
        for n in 1..=MISSES_BEFORE_REPLACING {
            now += Duration::from_secs(1);
            check.fired(300 + n, now);
            now += DEADLINE;
            let missed = check.expire(now).unwrap();
            assert_eq!(
                missed,
                Verdict::Missed {
                    pid: 300 + n,
                    in_a_row: n
                }
            );
        }
        now += Duration::from_secs(1);
        check.fired(400, now);
        assert_eq!(check.source_changed(true, now), Some(400), "to be reaped");
        assert!(check.should_fire(now), "the new source is checked at once");
        check.fired(401, now);
        now += DEADLINE;
        assert_eq!(
            check.expire(now),
            Some(Verdict::Missed {
                pid: 401,
                in_a_row: 1
            })
        );
    }

    #[test]
    fn off_or_uncheckable_means_no_canary() {
        let t0 = Instant::now();
        let mut off = SelfCheck::new(Duration::ZERO);
        off.source_changed(true, t0);
        assert_eq!(off.due(), None);
        let mut poll = SelfCheck::new(Duration::from_secs(10));
        poll.source_changed(false, t0);
        assert_eq!(poll.due(), None);
        poll.set_interval(Duration::from_secs(5), t0);
        assert_eq!(poll.due(), None);
    }

    #[test]
    fn a_canary_exits_and_is_reaped() {
        let canary = Canary::start().unwrap();
        let pid = canary.fire().unwrap();
        assert_ne!(pid, std::process::id());
        // A zombie until reaped: its pid cannot be anyone else's meanwhile.
        let zombie = format!("({CANARY_COMM}) Z");
        let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let dead = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            stat().contains(&zombie)
        });
        assert!(dead, "{}", stat());
        canary.reap(pid);
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "canary {pid} was not reaped");
    }
}
