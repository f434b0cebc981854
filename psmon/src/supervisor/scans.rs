//! When the reconciliation scan runs, and how much of `/proc` it must read.
//!
//! A scan is due every `MONITOR_INTERVAL` (the shortest of the pfiles'),
//! when the monitor asks ([`crate::monitor::Effect::Scan`]), and when a
//! finished scan was made for a configuration a reload replaced. What it
//! reads depends on what the source proves about execs since the last scan
//! began: a filtering source whose kernel exec count stood still proves
//! that processes found to match nothing still match nothing; a source
//! that reports every exec names the processes to read again. After lost
//! events, a new source or a new configuration, nothing is proved and
//! every process is read.

use std::time::Duration;

use crate::{
    config::{Config, Pfile},
    scan::Unchanged,
    source::Handle,
};

/// More execs than this between two scans: read everything instead.
const MAX_EXECD: usize = 4096;

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
    /// as a scan begins): none at all, or only these. Polling proves
    /// nothing.
    pub fn unchanged(&mut self, source: Option<&Handle>) -> Unchanged {
        let execd = std::mem::take(&mut self.execd);
        let read_all = std::mem::take(&mut self.read_all);
        let Some(source) = source else {
            return Unchanged::default();
        };
        let count = source.filter.as_ref().and_then(|f| f.execs_seen());
        let held = if let Some(count) = count {
            let same = self.execs_at_last == Some(count);
            self.execs_at_last = Some(count);
            same
        } else {
            source.reports_every_exec
        };
        Unchanged {
            cleared_still_hold: held && !read_all,
            execd,
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
}
