//! What the supervisor tells the HTTP endpoint's metrics beyond counts:
//! how long after a watched process's exit (the kernel's timestamp) psmon
//! decided it was Down, and started its restart command.

use std::time::Duration;

use super::Supervisor;
use crate::{
    monitor::{Effect, Job, Notice},
    policy::Action,
};

/// Which histogram an effect brought by an exit event goes into.
#[derive(Clone, Copy)]
pub(super) enum Timed {
    /// The Down decision.
    Detection,
    /// The restart command started.
    RestartStart,
}

impl Supervisor {
    pub(super) fn timed(effect: &Effect) -> Option<Timed> {
        match effect {
            Effect::Run(r) if r.job == Job::Restart => Some(Timed::RestartStart),
            Effect::Notice(Notice::Policy {
                action: Action::ReportDown { .. },
                ..
            }) => Some(Timed::Detection),
            _ => None,
        }
    }

    /// The time from the exit stamped `stamp` (monotonic ns) to now.
    pub(super) fn observe_since_exit(&self, stamp: u64, what: Timed) {
        let took = Duration::from_nanos(crate::event::monotonic_ns().saturating_sub(stamp));
        let metrics = &self.telemetry.metrics;
        match what {
            Timed::Detection => metrics.observe_detection(took),
            Timed::RestartStart => metrics.observe_restart_start(took),
        }
    }
}
