//! Hang probes: when each is due, what its answer means, and when a process
//! that stopped answering is killed as hung.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Effect, EntryId, Monitor, Notice, group};
use crate::{clock::Time, config::Probe, policy::Phase};

/// An entry's hang probe bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct ProbeState {
    /// When the next probe is due (while Up).
    pub(super) next_at: Option<Time>,
    pub(super) in_flight: bool,
    /// Failed answers in a row.
    pub(super) failures: u32,
    /// The instance killed because it hung: its Down says so.
    pub(super) hung: Option<u32>,
    /// A notify probe's keep-alives are awaited: psmon started the process
    /// (it has the socket), or it spoke already.
    #[serde(default)]
    pub(super) armed: bool,
    /// `READY=1` came since the process was last started.
    #[serde(default)]
    pub(super) ready_seen: bool,
    /// The last probe's answer: how long it took, or why it failed.
    #[serde(default)]
    pub(super) last: Option<Result<Duration, String>>,
}

impl ProbeState {
    /// Nothing to remember (not saved then).
    pub(super) fn is_idle(&self) -> bool {
        let ProbeState {
            next_at,
            in_flight,
            failures,
            hung,
            armed,
            ready_seen,
            last,
        } = self;
        next_at.is_none()
            && !in_flight
            && *failures == 0
            && hung.is_none()
            && !armed
            && !ready_seen
            && last.is_none()
    }

    /// psmon runs the entry's restart command: a notify process will have
    /// the socket (when it was `heard`: opened), and must say READY=1 anew.
    pub(super) fn started_by_us(&mut self, heard: bool) {
        self.armed = heard;
        self.ready_seen = false;
    }
}

/// When a probe is first due after the entry came Up: after its interval;
/// a notify probe's first keep-alive within its timeout (or start_grace,
/// if longer), and only when the process can send one.
pub(super) fn first_probe_at(probe: &Probe, armed: bool, now: Time) -> Option<Time> {
    match probe.kind {
        crate::config::ProbeKind::Notify if !armed => None,
        crate::config::ProbeKind::Notify => Some(now + probe.timeout.max(probe.start_grace)),
        _ => Some(now + probe.interval),
    }
}

impl Monitor {
    pub(super) fn on_probed(
        &mut self,
        id: EntryId,
        pid: u32,
        result: Result<Duration, String>,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let Some(w) = self.watches.get_mut(id.index()) else {
            return;
        };
        w.probe.in_flight = false;
        let Some(probe) = &self.config[id.index()].probe else {
            return;
        };
        w.probe.last = Some(result.clone());
        let current = w.state.phase == Phase::Up
            && !w.paused
            && self.members.get(&pid).is_some_and(|m| m.entry == id);
        if !current {
            return; // it died, was paused or restarted meanwhile
        }
        match result {
            Ok(took) => {
                w.probe.failures = 0;
                if took > probe.warn {
                    out.push(Effect::Notice(Notice::ProbeSlow {
                        entry: id,
                        pid,
                        took,
                    }));
                }
                self.group_probe_ok(id, now, out);
            }
            // Still starting up: not judged yet (its group, waiting for it
            // to be ready, asks again soon).
            Err(_) if now < w.since + probe.start_grace => {
                if self.awaits_ready(id) {
                    let w = &mut self.watches[id.index()];
                    w.probe.next_at = Some(now + group::READY_POLL);
                }
            }
            Err(why) => {
                w.probe.failures += 1;
                if w.probe.failures >= probe.failures {
                    self.hang(id, pid, why, out);
                }
            }
        }
    }

    /// The entry's process `pid` hangs: say so and kill it; its death is
    /// handled as any other.
    pub(super) fn hang(&mut self, id: EntryId, pid: u32, why: String, out: &mut Vec<Effect>) {
        let Some(probe) = &self.config[id.index()].probe else {
            return;
        };
        let w = &mut self.watches[id.index()];
        w.probe.failures = 0;
        w.probe.hung = Some(pid);
        w.probe.next_at = None;
        out.push(Effect::Notice(Notice::Hung {
            entry: id,
            pid,
            timeout: probe.timeout,
            why,
        }));
        if let Some(m) = self.members.get(&pid) {
            out.push(Effect::Kill {
                tgid: pid,
                start: m.start_ticks,
                grace: probe.kill_grace,
            });
        }
    }

    pub(super) fn on_notified(
        &mut self,
        path: PathBuf,
        pid: u32,
        ready: bool,
        watchdog: bool,
        now: Time,
        out: &mut Vec<Effect>,
    ) {
        let Some(i) = self.by_path.get(&path).map(|id| id.index()) else {
            return;
        };
        let id = EntryId::at(i);
        let Some(probe) = &self.config[i].probe else {
            return;
        };
        if self.member_entry(pid) != Some(id) {
            return;
        }
        let w = &mut self.watches[i];
        w.probe.armed = true;
        w.probe.ready_seen |= ready;
        if w.state.phase == Phase::Up && !w.paused && (watchdog || ready) {
            w.probe.next_at = Some(now + probe.timeout);
        }
        if ready {
            self.group_probe_ok(id, now, out);
        }
    }

    /// Probes that are due: the entry Up, not paused, none in flight.
    pub(super) fn probe_due(&mut self, now: Time, out: &mut Vec<Effect>) {
        for n in 0..self.probed.len() {
            let i = self.probed[n].index();
            let w = &self.watches[i];
            let Some(probe) = &self.config[i].probe else {
                continue;
            };
            let due = w.probe.next_at.is_some_and(|at| now >= at);
            if !due || w.probe.in_flight || w.paused || w.state.phase != Phase::Up {
                continue;
            }
            if probe.kind == crate::config::ProbeKind::Notify {
                // No keep-alive within its timeout.
                if let Some((pid, _)) = self.main_instance(EntryId::at(i)) {
                    let why = "no WATCHDOG=1 keep-alive".to_string();
                    self.hang(EntryId::at(i), pid, why, out);
                }
                continue;
            }
            let main = self.main_instance(EntryId::at(i));
            let w = &mut self.watches[i];
            w.probe.next_at = Some(now + probe.interval);
            if let Some((pid, _)) = main {
                w.probe.in_flight = true;
                out.push(Effect::Probe {
                    entry: EntryId::at(i),
                    pid,
                    probe: (**probe).clone(),
                });
            }
        }
    }

    /// The entry's last probe answer: how long it took, or why it failed.
    pub fn last_probe(&self, id: EntryId) -> Option<&Result<Duration, String>> {
        self.watches
            .get(id.index())
            .and_then(|w| w.probe.last.as_ref())
    }

    /// The instance killed because it hung, if any (its Down says so).
    pub fn hung(&self, id: EntryId) -> Option<u32> {
        self.watches.get(id.index()).and_then(|w| w.probe.hung)
    }
}
