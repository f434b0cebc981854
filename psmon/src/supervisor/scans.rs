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
//! process can match that was not named, and the scan reads only the named
//! ones and the members — not the whole of /proc, which alone costs 35 ms
//! of a CPU on a host of 30,000 processes. A source that reports every exec
//! (netlink) proves that what matched nothing still does, but not that its
//! socket delivered everything: /proc is walked and only processes not
//! seen before are read. When the kernel's list is not whole (it ran
//! over), after lost events, a new source or a new configuration, and
//! every [`WALK_EVERY`] scans in any case, nothing is proved and every
//! process is read.

use std::time::Duration;

use crate::{
    config::{Config, Pfile},
    scan::Unchanged,
    source::Handle,
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

    /// What the source proves about execs since the last scan began (taken
    /// as a scan begins): none at all, or only these, and whether that
    /// list is whole. Polling proves nothing.
    pub fn unchanged(&mut self, source: Option<&mut Handle>) -> Unchanged {
        let mut execd = std::mem::take(&mut self.execd);
        let read_all = std::mem::take(&mut self.read_all);
        let Some(source) = source else {
            return Unchanged::default();
        };
        let (held, whole) = match source.filter.as_mut() {
            Some(filter) => {
                let count = filter.execs_seen();
                let same = count.is_some() && self.execs_at_last == count;
                self.execs_at_last = count;
                match filter.take_execd() {
                    Some(listed) => {
                        execd.extend(listed);
                        (true, true)
                    }
                    None => (same, false),
                }
            }
            // A source that reports every exec names those it delivered,
            // but cannot show that it delivered all (a deaf socket is
            // silent): /proc is walked, only its new processes read.
            None => (source.reports_every_exec, false),
        };
        let walk = read_all || !held || !whole || self.since_walk + 1 >= WALK_EVERY;
        self.since_walk = if walk { 0 } else { self.since_walk + 1 };
        Unchanged {
            cleared_still_hold: held && !read_all,
            execd,
            walk,
        }
    }
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

    #[test]
    fn without_a_source_nothing_is_proved() {
        let mut plan = ScanPlan::new(&Config::default());
        assert!(plan.take_request());
        assert!(!plan.take_request());
        plan.execd(7);
        let unchanged = plan.unchanged(None);
        assert!(!unchanged.cleared_still_hold);
        assert!(unchanged.execd.is_empty());
    }

    #[test]
    fn too_many_execs_read_everything() {
        let mut plan = ScanPlan::new(&Config::default());
        let _ = plan.unchanged(None);
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
        fn take_execd(&mut self) -> Option<Vec<u32>> {
            self.0.clone()
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
        let first = plan.unchanged(Some(&mut source));
        assert!(first.walk, "the first scan reads everything");
        plan.execd(43);
        let next = plan.unchanged(Some(&mut source));
        assert!(!next.walk && next.cleared_still_hold);
        assert_eq!(next.execd, vec![43, 41, 42], "seen and listed alike");
        let walks: Vec<bool> = (0..WALK_EVERY)
            .map(|_| plan.unchanged(Some(&mut source)).walk)
            .collect();
        assert_eq!(walks.iter().filter(|w| **w).count(), 1, "{walks:?}");
        plan.read_everything();
        assert!(plan.unchanged(Some(&mut source)).walk);
    }

    #[test]
    fn a_list_of_execs_that_ran_over_walks_proc() {
        let mut plan = ScanPlan::new(&Config::default());
        let mut source = filtering(None);
        let _ = plan.unchanged(Some(&mut source));
        // The exec count stood still: what matched nothing still does,
        // but a process may have exec'd that nobody named.
        let next = plan.unchanged(Some(&mut source));
        assert!(next.walk && next.cleared_still_hold);
    }
}
