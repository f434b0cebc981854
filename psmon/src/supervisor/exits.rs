//! Exit watches: a pidfd per watched process, so that its exit is the
//! kernel's word whatever the source does.
//!
//! Each watch needs /proc twice: once to make sure the pid it opened is
//! still the process that was matched, and once, after the exit, for the
//! zombie's wait status. Those reads go to one reader that does them in
//! batches on one blocking thread, so ten thousand watches set up at start
//! (or ten thousand exits at once) cost one thread, not the hundreds the
//! blocking pool would start for ten thousand separate reads.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{Back, Supervisor};
use crate::{event::ExitStatus, monitor::Input, proc};

/// At most this many reads per blocking call (a few ms of /proc).
const BATCH: usize = 1024;

enum Read {
    Alive(u32, u64, oneshot::Sender<bool>),
    Zombie(u32, u64, oneshot::Sender<Option<ExitStatus>>),
}

/// The reader's queue.
#[derive(Clone)]
pub(super) struct StatReads(mpsc::UnboundedSender<Read>);

impl StatReads {
    pub(super) fn start(tasks: &TaskTracker) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tasks.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let reads = std::mem::take(&mut batch);
                let done = tokio::task::spawn_blocking(move || {
                    for read in reads {
                        match read {
                            Read::Alive(tgid, start, reply) => {
                                let _ = reply.send(proc::is_alive(tgid, start));
                            }
                            Read::Zombie(tgid, start, reply) => {
                                let _ = reply.send(proc::zombie_status(tgid, start));
                            }
                        }
                    }
                });
                if done.await.is_err() {
                    break;
                }
            }
        });
        StatReads(tx)
    }

    /// Whether (tgid, start ticks) runs (a zombie does not).
    async fn alive(&self, tgid: u32, start: u64) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.0.send(Read::Alive(tgid, start, reply));
        answer.await.unwrap_or(false)
    }

    /// The wait status of (tgid, start ticks) while it is a zombie.
    async fn zombie(&self, tgid: u32, start: u64) -> Option<ExitStatus> {
        let (reply, answer) = oneshot::channel();
        let _ = self.0.send(Read::Zombie(tgid, start, reply));
        answer.await.ok().flatten()
    }
}

impl Supervisor {
    /// Waits on a pidfd for the exit of (tgid, start): the kernel's word,
    /// whatever the event source does. While the process is a zombie its
    /// wait status is still in `/proc`; it is read at once.
    pub(super) fn watch_exit(&mut self, tgid: u32, start: u64) {
        let tx = self.back_tx.clone();
        let seen = move |zombie| {
            let input = Input::ExitSeen {
                tgid,
                start,
                zombie,
            };
            let _ = tx.send(Back::Input {
                input,
                generation: None,
            });
        };
        let Ok(fd) = proc::pidfd_open(tgid) else {
            seen(None); // gone already
            return;
        };
        let reads = self.stat_reads.clone();
        let task = self.helpers.spawn(async move {
            // The pid may have been reused between matching and pidfd_open.
            if reads.alive(tgid, start).await {
                // SAFETY: the AsyncFd owns the pidfd, which stays open and
                // the same until the AsyncFd is dropped.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                let Ok(afd) = registered else {
                    return;
                };
                // A pidfd turns readable when the process has exited.
                let _ = afd.readable().await;
            }
            seen(reads.zombie(tgid, start).await);
        });
        if let Some(old) = self.exit_watches.insert(tgid, task.abort_handle()) {
            old.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_ticks(pid: u32) -> u64 {
        let mut buf = Vec::new();
        proc::read_stat(pid, &mut buf).unwrap().start_ticks
    }

    #[tokio::test]
    async fn answers_every_read_of_a_batch() {
        let tasks = TaskTracker::new();
        let reads = StatReads::start(&tasks);
        let mut children: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let ids: Vec<(u32, u64)> = children
            .iter()
            .map(|c| (c.id(), start_ticks(c.id())))
            .collect();
        // Queued together, answered together.
        let alive = tokio::join!(
            reads.alive(ids[0].0, ids[0].1),
            reads.alive(ids[1].0, ids[1].1),
            reads.alive(ids[2].0, ids[2].1),
        );
        assert_eq!(alive, (true, true, true));
        // Another start time is another process.
        assert!(!reads.alive(ids[0].0, ids[0].1 + 1).await);
        assert_eq!(reads.zombie(ids[0].0, ids[0].1).await, None);

        // Killed and not reaped: a zombie, with its wait status.
        children[1].kill().unwrap();
        let (pid, start) = ids[1];
        let mut zombie = None;
        for _ in 0..200 {
            zombie = reads.zombie(pid, start).await;
            if zombie.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            zombie,
            Some(ExitStatus::Signal {
                signal: libc::SIGKILL,
                core_dumped: false
            })
        );
        assert!(!reads.alive(pid, start).await);
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Reaped: neither alive nor a zombie.
        assert!(!reads.alive(pid, start).await);
        assert_eq!(reads.zombie(pid, start).await, None);
    }
}
