//! What the source says, taken in: an exec or a fork classified (on the
//! blocking pool) before the monitor hears of it, an exit fed in order
//! behind the classifications it must wait for (`ordering`), a signal
//! remembered as a possible cause of death, a notify message from a
//! process psmon may not know yet, and every event kept by the flight
//! recorder.

use super::{Back, Supervisor, notify, ordering};
use crate::{
    event::{EventKind, ProcEvent},
    facts::{EntryId, Seen},
    monitor::Input,
    scan::comm_key,
};

impl Supervisor {
    pub(super) fn on_event(&mut self, event: ProcEvent) {
        if let Some(cells) = &self.source_cells {
            cells
                .events
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.self_check_claims(&event) {
            return;
        }
        let monitor = &self.monitor;
        self.recorder.record(&event, |tgid| {
            monitor
                .member_entry(tgid)
                .map(|id| monitor.entry(id).path.clone())
        });
        match event.kind {
            EventKind::Fork(p) => {
                // Through a kernel filter, a fork is of a process that
                // exec'd a watched name or of a member: the next scan reads
                // the child (scans read only what the kernel names).
                if self.source.as_ref().is_some_and(|s| s.filter.is_some()) {
                    self.scans.forked(p.tgid);
                }
                self.on_fork(p)
            }
            EventKind::Exec(p) => {
                let tgid = p.tgid;
                // Another program now: classified afresh, not as a child.
                self.young.gone(tgid);
                self.scans.execd(tgid);
                if self.matcher.may_match(&p.comm, p.path.as_deref()) {
                    let path = p.path.clone();
                    self.classify_with(tgid, path, move |found| {
                        Some(Input::Execd {
                            tgid,
                            matched: found,
                        })
                    });
                } else if self.monitor.member_entry(tgid).is_some() {
                    let input = Input::Execd {
                        tgid,
                        matched: None,
                    };
                    self.feed_after_classification(tgid, input);
                }
            }
            EventKind::Exit { process, status } => {
                let tgid = process.tgid;
                if self.young.gone(tgid) && self.monitor.member_entry(tgid).is_none() {
                    // A child that never became a member: nothing to say.
                    return;
                }
                let input = Input::Exited {
                    tgid,
                    start: process.start.map(|s| s.ticks()),
                    status,
                };
                // For the detection and restart histograms.
                self.exit_stamp = event.time.kernel_ns;
                self.feed_exit(tgid, input);
                self.exit_stamp = None;
            }
            EventKind::Signal(s) => self.on_signal(s),
            EventKind::Lost { count } => {
                self.scans.read_everything();
                self.lost_events += count.unwrap_or(1);
                if let Some(cells) = &self.source_cells {
                    cells
                        .lost
                        .fetch_add(count.unwrap_or(1), std::sync::atomic::Ordering::Relaxed);
                }
                self.feed(Input::Lost { count });
            }
        }
    }

    /// A process forked `p`: a member's child (or a child of one of those
    /// waiting to be members) waits in [`young`] to become one; a child of
    /// a process whose exec is being classified waits for that.
    pub(super) fn on_fork(&mut self, p: crate::event::Process) {
        let Some(start) = p.start else {
            return;
        };
        let (entry, p) = match self.monitor.member_entry(p.ppid) {
            Some(entry) => (entry, p),
            None => {
                let p = match self.classifying.fork(p) {
                    ordering::Fork::Now(p) => p,
                    ordering::Fork::Held => return,
                    ordering::Fork::Dropped => {
                        self.scans.read_everything();
                        return;
                    }
                };
                match self.young.entry_of(p.ppid) {
                    Some(entry) => (entry, p),
                    None => return,
                }
            }
        };
        if self.matcher.by_cmdline(entry) {
            // A forked child runs its parent's executable; with a
            // command-line rule it must match that too.
            self.classify(p.tgid, move |found| match found {
                Some((i, child)) if i == entry => Some(Input::Forked { entry, child }),
                _ => None,
            });
        } else {
            let child = Seen {
                tgid: p.tgid,
                start_ticks: start.ticks(),
                comm: comm_key(p.comm.as_bytes()),
                ppid: p.ppid,
                // The parent's, which the monitor has.
                uid: 0,
            };
            let now = std::time::Instant::now();
            for (entry, child) in self.young.born(entry, child, now) {
                self.feed(Input::Forked { entry, child });
            }
        }
    }

    /// A signal for a process: remembered by the monitor as the cause of
    /// the member's death, should it die of it. An OOM victim's memory
    /// cgroup is read first (its exit waits for that).
    pub(super) fn on_signal(&mut self, s: crate::event::Signal) {
        use crate::facts::Cause;
        // OOM kills come unfiltered (they are rare): counted apart.
        match s.oom {
            true => self.oom_events += 1,
            false => self.signal_events += 1,
        }
        if !s.oom {
            if self.monitor.member_entry(s.target).is_some() {
                let me = std::process::id();
                let cause = Cause::of_signal(s.target, s.signal, s.code, s.sender, me);
                self.feed(Input::Signalled {
                    tgid: s.target,
                    cause,
                });
            }
            return;
        }
        let (tgid, trigger, cgroup_id) = (s.target, s.sender, s.cgroup_id);
        // The directory outlives the victim; its /proc entry may not.
        let cgroup_of = move |tgid: u32| match cgroup_id {
            Some(id) => crate::proc::memory_cgroup_by_id(id),
            None => crate::proc::memory_cgroup(tgid),
        };
        if self.monitor.member_entry(tgid).is_none() {
            // Older kernels may name the victim by one of its threads.
            self.blocking(None, move || {
                let tgid = crate::proc::tgid_of(tgid).unwrap_or(tgid);
                let cgroup = cgroup_of(tgid);
                Input::Signalled {
                    tgid,
                    cause: Cause::Oom { cgroup, trigger },
                }
            });
            return;
        }
        self.classify(tgid, move |_| {
            let cgroup = cgroup_of(tgid);
            Some(Input::Signalled {
                tgid,
                cause: Cause::Oom { cgroup, trigger },
            })
        });
    }

    /// A notify datagram: fed when its sender is a process of the entry,
    /// after classifying it when the monitor does not know it yet (it may
    /// say READY=1 before its exec event is in).
    pub(super) fn on_notify(&mut self, said: notify::Message) {
        let Some(entry) = self.monitor.entry_of_path(&said.path) else {
            return;
        };
        let input = Input::Notified {
            path: said.path,
            pid: said.pid,
            ready: said.ready,
            watchdog: said.watchdog,
        };
        if self.monitor.member_entry(said.pid) == Some(entry) {
            self.feed(input);
            return;
        }
        let tgid = said.pid;
        // Already being classified: its messages wait behind.
        let Some(input) = self.classifying.notify(tgid, input) else {
            return;
        };
        self.classify(tgid, move |matched| {
            matched
                .filter(|(i, _)| *i == entry)
                .map(|found| Input::Execd {
                    tgid,
                    matched: Some(found),
                })
        });
        self.feed_after_classification(tgid, input);
    }

    /// Feeds the exit of `tgid` now, or behind a classification under way:
    /// its own, or that of another member of its entry (a forked child that
    /// exec'd before this exit must be known not to be an instance first,
    /// or it would keep the entry up in its place). Fed again through here
    /// once that one is in, so it waits for all of them.
    pub(super) fn feed_exit(&mut self, tgid: u32, input: Input) {
        if !self.young.is_empty() && self.monitor.member_entry(tgid).is_some() {
            // A member's exit: a child it leaves running may be what keeps
            // its entry up, so every waiting child is a member first.
            for (entry, child) in self.young.all() {
                self.feed(Input::Forked { entry, child });
            }
        }
        let monitor = &self.monitor;
        let entry = monitor.member_entry(tgid);
        let same_entry = |t| entry.is_some() && monitor.member_entry(t) == entry;
        if let Some(input) = self.classifying.exit(tgid, input, same_entry) {
            self.feed(input);
        }
    }

    /// Feeds `input` about `tgid` now, or after the classifications of
    /// `tgid` under way.
    pub(super) fn feed_after_classification(&mut self, tgid: u32, input: Input) {
        if let Some(input) = self.classifying.after_classification(tgid, input) {
            self.feed(input);
        }
    }

    /// Classifies `tgid` on the blocking pool; `decide` turns what it
    /// matches into the monitor's input.
    pub(super) fn classify(
        &mut self,
        tgid: u32,
        decide: impl FnOnce(Option<(EntryId, Seen)>) -> Option<Input> + Send + 'static,
    ) {
        self.classify_with(tgid, None, decide);
    }

    /// [`Supervisor::classify`] of an exec the kernel says was of `path`.
    pub(super) fn classify_with(
        &mut self,
        tgid: u32,
        path: Option<std::path::PathBuf>,
        decide: impl FnOnce(Option<(EntryId, Seen)>) -> Option<Input> + Send + 'static,
    ) {
        self.classifying.begin(tgid);
        let matcher = self.matcher.clone();
        let generation = self.monitor.generation();
        let tx = self.back_tx.clone();
        self.helpers.spawn(async move {
            let input = tokio::task::spawn_blocking(move || {
                decide(matcher.classify_exec(tgid, path.as_deref()))
            })
            .await
            .ok()
            .flatten();
            let _ = tx.send(Back::Classified {
                tgid,
                input,
                generation,
            });
        });
    }
}
