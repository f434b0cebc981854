//! When the reconciliation scan runs, and how much of `/proc` it must read.
//!
//! A scan is due every `MONITOR_INTERVAL` (the shortest of the pfiles'),
//! when the monitor asks ([`crate::monitor::Effect::Scan`]), and when a
//! finished scan was made for a configuration a reload replaced. What it
//! reads depends on what the source proves about execs since the last scan
//! began. A process changes program only by exec, and a fork is a copy of
//! its parent: so when the kernel filter names every process that exec'd
//! (its programs keep the list, and counted forks meanwhile, so they still
//! run), the processes found to match nothing still match nothing, no new
//! process can match that was not named (the fork of one that exec'd a
//! watched name comes through the filter as an event, and is named too),
//! and the scan reads only the named ones and the members — not the
//! whole of /proc, which alone costs 35 ms of a CPU on a host of 30,000
//! processes. A source that reports every exec
//! (netlink) proves that what matched nothing still does, but not that its
//! socket delivered everything: /proc is walked and only processes not
//! seen before are read. When the kernel's list is not whole (it ran
//! over), after lost events, a new source or a new configuration, and
//! every [`WALK_EVERY`] scans in any case, nothing is proved and every
//! process is read.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{
    clock::Time,
    config::{Config, Pfile},
    facts::{Known, Seen},
    scan::{Matcher, ScanState, Unchanged},
    source::{Handle, TakeExecd},
};

/// More execs than this between two scans: read everything instead.
const MAX_EXECD: usize = 4096;

/// Scans that may read only what exec'd, between two that read everything:
/// a second line of defence, cheap at this rate (one walk of /proc every
/// 5 minutes at the vendor's MONITOR_INTERVAL of 10 s).
pub const WALK_EVERY: u32 = 30;

pub(super) struct ScanPlan {
    /// How often: the shortest MONITOR_INTERVAL.
    every: Duration,
    requested: bool,
    /// Processes that exec'd since the last scan began (sources that
    /// report every exec).
    execd: Vec<u32>,
    /// The kernel's exec count when the last scan began (a filtering
    /// source's way of saying nothing exec'd).
    execs_at_last: Option<u64>,
    /// Something may have happened unseen: the next scan reads every
    /// process.
    read_all: bool,
    /// Scans since the last that read every process.
    since_walk: u32,
}

impl ScanPlan {
    /// For `config`; the first scan is due at once and reads everything.
    pub fn new(config: &Config) -> ScanPlan {
        ScanPlan {
            every: interval(config),
            requested: true,
            execd: Vec::new(),
            execs_at_last: None,
            read_all: true,
            since_walk: 0,
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// A scan is wanted as soon as none runs.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether a scan should start now (and it is no longer requested).
    pub fn take_request(&mut self) -> bool {
        std::mem::take(&mut self.requested)
    }

    /// The kernel filter passed the fork of `tgid` (its parent exec'd a
    /// watched name, or is a member): a new process the kernel's list of
    /// execs does not name, which may match. The next scan reads it, as it
    /// reads one that exec'd: a daemon's parent may be gone before its exec
    /// was classified, leaving only this child.
    pub fn forked(&mut self, tgid: u32) {
        self.execd(tgid);
    }

    /// Process `tgid` exec'd: the next scan reads it again.
    pub fn execd(&mut self, tgid: u32) {
        if self.execd.len() < MAX_EXECD {
            self.execd.push(tgid);
        } else {
            self.read_all = true;
        }
    }

    /// Something may have been missed (events lost, a fork dropped): the
    /// next scan reads everything.
    pub fn read_everything(&mut self) {
        self.read_all = true;
    }

    /// A source opened: what the last one counted proves nothing now.
    pub fn source_opened(&mut self) {
        self.read_all = true;
        self.execs_at_last = None;
    }

    /// A new configuration: its interval, and everything read again.
    pub fn reconfigured(&mut self, config: &Config) {
        self.every = interval(config);
        self.read_all = true;
    }

    /// What the source proves about execs since the last scan began (asked
    /// as a scan begins): none at all, or only those a list names, and
    /// whether that list is whole. Polling proves nothing. A kernel's list
    /// is taken out on the scan's thread ([`Planned::settle`]).
    pub fn unchanged(&mut self, source: Option<&mut Handle>) -> Planned {
        let execd = std::mem::take(&mut self.execd);
        let read_all = std::mem::take(&mut self.read_all);
        let Some(source) = source else {
            return Planned::default();
        };
        let walk_anyway = read_all || self.since_walk + 1 >= WALK_EVERY;
        let (held, listed, held_without_list) = match source.filter.as_mut() {
            Some(filter) => {
                let count = filter.execs_seen();
                let same = count.is_some() && self.execs_at_last == count;
                self.execs_at_last = count;
                match filter.execd() {
                    Some(take) => (true, Some(take), same),
                    None => (same, None, same),
                }
            }
            // A source that reports every exec names those it delivered,
            // but cannot show that it delivered all (a deaf socket is
            // silent): /proc is walked, only its new processes read.
            None => (source.reports_every_exec, None, false),
        };
        Planned {
            unchanged: Unchanged {
                cleared_still_hold: held && !read_all,
                execd,
                walk: walk_anyway || !held || listed.is_none(),
            },
            listed,
            held_without_list: held_without_list && !read_all,
        }
    }

    /// A scan ended; `walked`: it read every process.
    pub fn finished(&mut self, walked: bool) {
        self.since_walk = if walked { 0 } else { self.since_walk + 1 };
    }
}

/// What a scan about to start may leave unread, until the kernel's list of
/// execs is taken out.
#[derive(Default)]
pub(super) struct Planned {
    unchanged: Unchanged,
    listed: Option<TakeExecd>,
    /// What `cleared_still_hold` becomes if the list is not whole.
    held_without_list: bool,
}

impl Planned {
    /// Takes the kernel's list out (on the scan's thread: two system calls
    /// a process listed) and says what the scan may leave unread. A list
    /// that is not whole means walking /proc.
    pub fn settle(self) -> Unchanged {
        let mut unchanged = self.unchanged;
        if let Some(take) = self.listed {
            match take() {
                Some(listed) => unchanged.execd.extend(listed),
                None => {
                    unchanged.walk = true;
                    unchanged.cleared_still_hold = self.held_without_list;
                }
            }
        }
        unchanged
    }
}

/// A finished scan: when it started, how long it took, what it found, what
/// it leaves to the next, the configuration it was made with, and whether
/// it read every process.
pub(super) struct ScanDone {
    pub started: Time,
    pub took: Duration,
    pub found: Vec<Vec<Seen>>,
    pub files: ScanState,
    pub generation: u64,
    pub walked: bool,
}

/// Starts a scan on a blocking thread, for `entries` entries of
/// configuration `generation`. Called at `started` with the snapshot of
/// the members (`known`): an exit applied after this moment wins over
/// what the scan reports.
pub(super) fn start(
    started: Time,
    matcher: Arc<Matcher>,
    entries: usize,
    known: Known,
    generation: u64,
    planned: Planned,
    mut files: ScanState,
) -> JoinHandle<ScanDone> {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let unchanged = planned.settle();
        let found = matcher.scan(entries, &known, &mut files, &unchanged);
        ScanDone {
            started,
            took: t.elapsed(),
            found,
            files,
            generation,
            walked: unchanged.walk,
        }
    })
}

/// How often the reconciliation scan runs: the shortest MONITOR_INTERVAL.
pub(super) fn interval(config: &Config) -> Duration {
    config
        .pfiles
        .iter()
        .map(|p| p.monitor_interval)
        .min()
        .unwrap_or(Pfile::DEFAULT_MONITOR_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One scan's plan, settled as the scan's thread would, and its end.
    fn scan(plan: &mut ScanPlan, source: Option<&mut Handle>) -> Unchanged {
        let unchanged = plan.unchanged(source).settle();
        plan.finished(unchanged.walk);
        unchanged
    }

    #[test]
    fn without_a_source_nothing_is_proved() {
        let mut plan = ScanPlan::new(&Config::default());
        assert!(plan.take_request());
        assert!(!plan.take_request());
        plan.execd(7);
        let unchanged = scan(&mut plan, None);
        assert!(!unchanged.cleared_still_hold);
        assert!(unchanged.execd.is_empty());
    }

    #[test]
    fn too_many_execs_read_everything() {
        let mut plan = ScanPlan::new(&Config::default());
        let _ = scan(&mut plan, None);
        for tgid in 0..=MAX_EXECD as u32 {
            plan.execd(tgid);
        }
        assert!(plan.read_all);
        assert_eq!(plan.execd.len(), MAX_EXECD);
    }

    /// A kernel filter that says which processes exec'd, or that its
    /// list ran over (`None`).
    struct Listed(Option<Vec<u32>>);

    impl crate::source::Filter for Listed {
        fn watch_comm(&mut self, _: &str) {}
        fn watch_tgid(&mut self, _: u32) {}
        fn unwatch_tgid(&mut self, _: u32) {}
        fn execs_seen(&self) -> Option<u64> {
            Some(7)
        }
        fn execd(&mut self) -> Option<TakeExecd> {
            let listed = self.0.clone();
            Some(Box::new(move || listed))
        }
        fn signals_seen(&self) -> Option<u64> {
            None
        }
    }

    fn filtering(listed: Option<Vec<u32>>) -> Handle {
        Handle {
            kind: crate::source::SourceKind::Ebpf,
            filter: Some(Box::new(Listed(listed))),
            exit_lag: Duration::ZERO,
            reports_every_exec: false,
            cause_unknown: None,
        }
    }

    #[test]
    fn a_whole_list_of_execs_spares_the_walk_of_proc_but_not_for_ever() {
        let mut plan = ScanPlan::new(&Config::default());
        let mut source = filtering(Some(vec![41, 42]));
        let first = scan(&mut plan, Some(&mut source));
        assert!(first.walk, "the first scan reads everything");
        plan.execd(43);
        let next = scan(&mut plan, Some(&mut source));
        assert!(!next.walk && next.cleared_still_hold);
        assert_eq!(next.execd, vec![43, 41, 42], "seen and listed alike");
        let walks: Vec<bool> = (0..WALK_EVERY)
            .map(|_| scan(&mut plan, Some(&mut source)).walk)
            .collect();
        assert_eq!(walks.iter().filter(|w| **w).count(), 1, "{walks:?}");
        plan.read_everything();
        assert!(scan(&mut plan, Some(&mut source)).walk);
    }

    #[test]
    fn a_fork_the_filter_passed_is_read_without_walking_proc() {
        let mut plan = ScanPlan::new(&Config::default());
        let mut source = filtering(Some(vec![41]));
        let _ = scan(&mut plan, Some(&mut source));
        plan.forked(42);
        let next = scan(&mut plan, Some(&mut source));
        assert!(!next.walk);
        assert_eq!(next.execd, vec![42, 41], "the child as well as the exec'd");
    }

    #[test]
    fn a_list_of_execs_that_ran_over_walks_proc() {
        let mut plan = ScanPlan::new(&Config::default());
        let mut source = filtering(None);
        let _ = scan(&mut plan, Some(&mut source));
        // The exec count stood still: what matched nothing still does,
        // but a process may have exec'd that nobody named.
        let next = scan(&mut plan, Some(&mut source));
        assert!(next.walk && next.cleared_still_hold);
    }
}
