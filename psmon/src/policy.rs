//! The restart decision: a pure function of (entry, its state, an input,
//! the time) to the actions to take. No I/O, no clocks of its own, no tokio:
//! the supervisor feeds it and carries the actions out.
//!
//! Budget: at most `retry` attempts within any `grace` window (sliding; no
//! window when grace is 0). When it is spent, `continue` reports and keeps
//! watching and `switch` also asks for failover, once. A process that comes
//! back by other means after that is Up again and the budget is re-armed.
//!
//! A restart succeeds only when its process lives `start_secs`: one that
//! dies sooner (a port still in TIME_WAIT, a stale lock) is a failed
//! attempt, like a failing command or no process at all. The first attempt
//! after a death is immediate; each further one in a row waits a back-off
//! (`restart_backoff`, doubled each time, at most `backoff_max`, plus up to
//! `restart_jitter` at random), so that a hiccup does not spend the whole
//! budget in milliseconds.
//!
//! With `healthy_secs`, a restart stops counting once its process has
//! stayed up that long: a service that crashes once a day is restarted
//! every day, one that crashes at once still spends its budget. With
//! `retry_slowly`, a spent budget is said once and attempts go on every
//! `slow_retry_interval`, uncounted, until one stays up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    clock::Time,
    config::{Entry, OnRetryOver},
    event::ExitStatus,
};

/// Where an entry stands in its restart cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not yet observed.
    Unknown,
    /// Running, as many instances as it needs.
    Up,
    /// Down, and psmon does not restart it (report only, or stopped on purpose).
    Down,
    /// A failed attempt; the next one starts at `until`.
    Backoff {
        /// When the next attempt may start.
        until: Time,
    },
    /// The restart command is running.
    Restarting,
    /// The restart command succeeded; a matching process must appear by the deadline.
    Starting {
        /// When the attempt has failed if none has appeared.
        deadline: Time,
    },
    /// A restarted process appeared at `since`; it is Up once it has lived
    /// `start_secs`.
    Started {
        /// When it appeared.
        since: Time,
        /// Its pid, when known.
        pid: Option<u32>,
        /// Instances now: more than expected means an earlier start was
        /// still under way when this one ran.
        running: u32,
    },
    /// The budget is spent.
    RetryOver,
    /// The budget is spent and the entry retries slowly: the next attempt
    /// starts at `until`.
    SlowRetry {
        /// When the next attempt starts.
        until: Time,
    },
}

impl Phase {
    /// When the entry next needs a [`Observed::Tick`], if it waits for time.
    pub fn deadline(&self, entry: &Entry) -> Option<Time> {
        match *self {
            Phase::Backoff { until } | Phase::SlowRetry { until } => Some(until),
            Phase::Starting { deadline } => Some(deadline),
            Phase::Started { since, .. } => Some(since + entry.start_secs),
            _ => None,
        }
    }
}

/// What the policy keeps of one entry between steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// Where it stands.
    pub phase: Phase,
    /// Start times of the restart attempts that still count.
    attempts: Vec<Time>,
    /// Failed attempts since the entry was last Up (sets the back-off).
    failures: u32,
    /// Warned that more than `max` instances run (until the count drops).
    warned_max: bool,
    /// When the entry last came Up (for `healthy_secs`).
    #[serde(default)]
    up_since: Option<Time>,
    /// Attempts after the budget was spent (`retry_slowly`), since it was.
    #[serde(default)]
    slow_attempts: u32,
}

impl Default for EntryState {
    fn default() -> Self {
        EntryState {
            phase: Phase::Unknown,
            attempts: Vec::new(),
            failures: 0,
            warned_max: false,
            up_since: None,
            slow_attempts: 0,
        }
    }
}

impl EntryState {
    /// Takes back the last attempt (a drill's restart is not counted).
    pub fn forget_last_attempt(&mut self) {
        self.attempts.pop();
    }

    /// Attempts inside the window at `now` (none once the entry has been
    /// up `healthy_secs`).
    pub fn attempts_in_window(&self, entry: &Entry, now: Time) -> usize {
        if self.phase == Phase::Up && self.healthy(entry, now) {
            return 0;
        }
        self.attempts
            .iter()
            .filter(|t| in_window(entry.grace, **t, now))
            .count()
    }

    /// Whether the entry has been up long enough for its restarts to stop
    /// counting.
    fn healthy(&self, entry: &Entry, now: Time) -> bool {
        match (entry.healthy, self.up_since) {
            (Some(healthy), Some(since)) => now.saturating_duration_since(since) >= healthy,
            _ => false,
        }
    }
}

fn in_window(grace: Option<Duration>, at: Time, now: Time) -> bool {
    grace.is_none_or(|g| now.saturating_duration_since(at) < g)
}

/// What was seen of an entry's instances, or that time passed: what
/// [`step`] decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// `running` instances exist now (after an exec, a fork or a scan);
    /// `pid` is the main (oldest) one.
    Running {
        /// How many instances run.
        running: u32,
        /// The main one, when there is one.
        pid: Option<u32>,
    },
    /// Instance `pid` ended; `running` remain.
    Exited {
        /// The instance that ended.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// How many instances remain.
        running: u32,
    },
    /// The restart command finished; `ok` when it exited 0.
    RestartDone {
        /// It exited 0.
        ok: bool,
    },
    /// Time passed (deadlines).
    Tick,
}

/// Why a restart does not count against the entry's budget (groups say
/// the same of theirs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncounted {
    /// Missing when psmon first looked (start-up, resume, a new entry).
    FoundDown,
    /// The operator's recovery drill killed it.
    Drill,
}

/// What the supervisor must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Process ['PATH',pid=PID] Down`
    ReportDown {
        /// The instance that ended, when one did (not when found missing).
        pid: Option<u32>,
        /// How it ended.
        status: ExitStatus,
    },
    /// Exited with a code configured as "stopped on purpose": not restarted.
    ReportStopped {
        /// The instance.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// `Try to restart ('PATH')`, then run the restart command.
    Restart {
        /// Which attempt of the budget this is (from 1).
        attempt: u32,
    },
    /// The same, not counted against the budget: why.
    RestartUncounted {
        /// Why it does not count.
        why: Uncounted,
    },
    /// A failed attempt: the next one waits `delay`.
    ReportBackoff {
        /// How long the next attempt waits.
        delay: Duration,
    },
    /// A restarted process appeared; it is not Up until it has lived `start_secs`.
    ReportStarted {
        /// Its pid, when known.
        pid: Option<u32>,
    },
    /// `('PATH',pid=PID) Up`
    ReportUp {
        /// The main instance, when known.
        pid: Option<u32>,
        /// The budget was re-armed (it had been spent).
        rearmed: bool,
    },
    /// `Set pid fail ('PATH')`: the attempt did not bring the process back.
    ReportSetPidFail {
        /// Why the attempt failed.
        why: SetPidFail,
    },
    /// The budget is spent.
    ReportRetryOver {
        /// How many attempts it took.
        attempts: u32,
    },
    /// … and attempts go on every `every` (`retry_slowly`).
    ReportSlowRetry {
        /// Between two slow attempts.
        every: Duration,
    },
    /// `Try to restart ('PATH')` beyond the spent budget (`retry_slowly`):
    /// the `attempt`th since it was spent.
    RestartSlowly {
        /// Which slow attempt this is (from 1).
        attempt: u32,
    },
    /// Run the failover command (`switch`).
    Failover,
    /// More instances than `max`.
    ReportTooMany {
        /// How many run.
        running: u32,
    },
    /// More instances than expected (`min`, there being no `max`) once a
    /// restart is Up: an earlier start was still under way (a `start_wait`
    /// shorter than the daemon's start-up), or the daemon forks workers.
    ReportTooManyAfterRestart {
        /// How many run.
        running: u32,
        /// How many were expected.
        expected: u32,
    },
}

/// Why a restart attempt did not bring the process back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetPidFail {
    /// The command failed or timed out.
    CommandFailed,
    /// No matching process appeared within `start_wait`.
    NotStarted,
    /// The restarted process ended after `lived`, before `start_secs`.
    DiedEarly {
        /// The restarted process, when known.
        pid: Option<u32>,
        /// How it ended.
        status: ExitStatus,
        /// How long it lived.
        lived: Duration,
    },
}

/// Applies `input` to `state` and returns what to do.
pub fn step(entry: &Entry, state: &mut EntryState, input: Observed, now: Time) -> Vec<Action> {
    let mut out = Vec::new();
    match input {
        Observed::Running { running, pid } => {
            if let Some(max) = entry.max {
                if running > max && !state.warned_max {
                    state.warned_max = true;
                    out.push(Action::ReportTooMany { running });
                } else if running <= max {
                    state.warned_max = false;
                }
            }
            if running >= entry.min {
                match state.phase {
                    Phase::Up => {}
                    // A daemonizing process hands over to its child: the
                    // main pid may change before it is Up.
                    Phase::Started { since, .. } => {
                        state.phase = Phase::Started {
                            since,
                            pid,
                            running,
                        }
                    }
                    // Ours (or, backing off, the last attempt's, seen
                    // late): it must prove itself first.
                    Phase::Restarting | Phase::Starting { .. } | Phase::Backoff { .. }
                        if !entry.start_secs.is_zero() =>
                    {
                        state.phase = Phase::Started {
                            since: now,
                            pid,
                            running,
                        };
                        out.push(Action::ReportStarted { pid });
                    }
                    Phase::Restarting | Phase::Starting { .. } => {
                        up(state, pid, now, &mut out);
                        too_many_after_restart(entry, running, &mut out);
                    }
                    _ => up(state, pid, now, &mut out),
                }
            } else {
                match state.phase {
                    Phase::Up => {
                        out.push(Action::ReportDown {
                            pid: None,
                            status: ExitStatus::Unknown,
                        });
                        forget_if_healthy(entry, state, now);
                        try_restart(entry, state, now, &mut out);
                    }
                    // Found so when first looked at: started, not counted,
                    // as a group's start-up bring-up is.
                    Phase::Unknown => {
                        out.push(Action::ReportDown {
                            pid: None,
                            status: ExitStatus::Unknown,
                        });
                        if entry.restarts() {
                            state.phase = Phase::Restarting;
                            out.push(Action::RestartUncounted {
                                why: Uncounted::FoundDown,
                            });
                        } else {
                            state.phase = Phase::Down;
                        }
                    }
                    Phase::Started { since, pid, .. } => {
                        died_early(entry, state, now, since, pid, ExitStatus::Unknown, &mut out);
                    }
                    _ => {}
                }
            }
        }
        Observed::Exited {
            pid,
            status,
            running,
        } => {
            if running >= entry.min {
                return out;
            }
            let started = match state.phase {
                Phase::Up | Phase::Unknown => None,
                Phase::Started { since, .. } => Some(since),
                _ => return out,
            };
            if let ExitStatus::Code(code) = status
                && entry.stop_exit_codes.contains(&code)
            {
                out.push(Action::ReportDown {
                    pid: Some(pid),
                    status,
                });
                state.phase = Phase::Down;
                out.push(Action::ReportStopped { pid, code });
                return out;
            }
            match started {
                None => {
                    out.push(Action::ReportDown {
                        pid: Some(pid),
                        status,
                    });
                    forget_if_healthy(entry, state, now);
                    try_restart(entry, state, now, &mut out);
                }
                Some(since) => died_early(entry, state, now, since, Some(pid), status, &mut out),
            }
        }
        Observed::RestartDone { ok } => {
            // Anything but Restarting: the process appeared meanwhile, and
            // whether it stays up decides.
            if state.phase != Phase::Restarting {
                return out;
            }
            if ok {
                state.phase = Phase::Starting {
                    deadline: now + entry.start_wait,
                };
            } else {
                failed(entry, state, now, SetPidFail::CommandFailed, &mut out);
            }
        }
        Observed::Tick => match state.phase {
            Phase::Starting { deadline } if now >= deadline => {
                failed(entry, state, now, SetPidFail::NotStarted, &mut out);
            }
            Phase::Started {
                since,
                pid,
                running,
            } if now >= since + entry.start_secs => {
                up(state, pid, now, &mut out);
                too_many_after_restart(entry, running, &mut out);
            }
            Phase::Backoff { until } if now >= until => {
                try_restart(entry, state, now, &mut out);
            }
            Phase::SlowRetry { until } if now >= until => {
                state.slow_attempts += 1;
                state.phase = Phase::Restarting;
                out.push(Action::RestartSlowly {
                    attempt: state.slow_attempts,
                });
            }
            _ => {}
        },
    }
    out
}

/// With a `max`, ReportTooMany has said it already.
fn too_many_after_restart(entry: &Entry, running: u32, out: &mut Vec<Action>) {
    if entry.max.is_none() && running > entry.min {
        out.push(Action::ReportTooManyAfterRestart {
            running,
            expected: entry.min,
        });
    }
}

fn up(state: &mut EntryState, pid: Option<u32>, now: Time, out: &mut Vec<Action>) {
    let rearmed = matches!(state.phase, Phase::RetryOver | Phase::SlowRetry { .. })
        || state.slow_attempts > 0;
    if rearmed {
        state.attempts.clear();
        state.slow_attempts = 0;
    }
    state.phase = Phase::Up;
    state.failures = 0;
    state.up_since = Some(now);
    out.push(Action::ReportUp { pid, rearmed });
}

/// A death after a healthy run: the restarts before it no longer count.
fn forget_if_healthy(entry: &Entry, state: &mut EntryState, now: Time) {
    if state.healthy(entry, now) {
        state.attempts.clear();
    }
    state.up_since = None;
}

/// An attempt failed: report it, then try again after the back-off.
fn failed(
    entry: &Entry,
    state: &mut EntryState,
    now: Time,
    why: SetPidFail,
    out: &mut Vec<Action>,
) {
    out.push(Action::ReportSetPidFail { why });
    state.failures += 1;
    let delay = backoff(entry, state.failures) + jitter(entry, now);
    if delay.is_zero() || !budget_left(entry, state, now) {
        try_restart(entry, state, now, out);
    } else {
        state.phase = Phase::Backoff { until: now + delay };
        out.push(Action::ReportBackoff { delay });
    }
}

/// A restarted process ended before it had lived `start_secs`.
fn died_early(
    entry: &Entry,
    state: &mut EntryState,
    now: Time,
    since: Time,
    pid: Option<u32>,
    status: ExitStatus,
    out: &mut Vec<Action>,
) {
    let lived = now.saturating_duration_since(since);
    let why = SetPidFail::DiedEarly { pid, status, lived };
    failed(entry, state, now, why, out);
}

/// The wait before the next attempt after `failures` failed ones in a row.
pub fn backoff(entry: &Entry, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doubled = entry
        .restart_backoff
        .saturating_mul(1u32 << (failures - 1).min(20));
    doubled.min(entry.backoff_max.max(entry.restart_backoff))
}

/// Up to `restart_jitter`, drawn from the time (a pure function: the same
/// inputs give the same delay; hosts and moments differ in the nanoseconds).
fn jitter(entry: &Entry, now: Time) -> Duration {
    let max = entry.restart_jitter.as_nanos() as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    // splitmix64's finaliser: every bit of the time stirs every bit.
    let mut x = now.as_nanos().wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    Duration::from_nanos(x % (max + 1))
}

fn budget_left(entry: &Entry, state: &mut EntryState, now: Time) -> bool {
    state.attempts.retain(|t| in_window(entry.grace, *t, now));
    entry.restarts() && (state.attempts.len() as u32) < entry.retry
}

fn try_restart(entry: &Entry, state: &mut EntryState, now: Time, out: &mut Vec<Action>) {
    if !entry.restarts() {
        state.phase = Phase::Down;
        return;
    }
    if budget_left(entry, state, now) {
        state.attempts.push(now);
        state.phase = Phase::Restarting;
        out.push(Action::Restart {
            attempt: state.attempts.len() as u32,
        });
    } else if entry.action == OnRetryOver::RetrySlowly {
        // Said once, when the budget is spent; the slow attempts go on.
        if state.slow_attempts == 0 {
            out.push(Action::ReportRetryOver {
                attempts: state.attempts.len() as u32,
            });
            out.push(Action::ReportSlowRetry {
                every: entry.slow_retry_interval,
            });
        }
        state.phase = Phase::SlowRetry {
            until: now + entry.slow_retry_interval,
        };
    } else {
        state.phase = Phase::RetryOver;
        out.push(Action::ReportRetryOver {
            attempts: state.attempts.len() as u32,
        });
        if entry.action == OnRetryOver::Switch {
            out.push(Action::Failover);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnRetryOver::{Continue, Switch};

    fn entry(retry: u32, grace: u64, action: crate::config::OnRetryOver) -> Entry {
        let mut e = Entry::new(
            "/usr/sbin/d".into(),
            Some("start d".into()),
            grace,
            retry,
            action,
        );
        e.start_wait = Duration::from_secs(5);
        // These tables are about budgets; start_secs and back-off have their own.
        e.start_secs = Duration::ZERO;
        e.restart_backoff = Duration::ZERO;
        e
    }

    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: 9,
        core_dumped: false,
    };

    fn exited(pid: u32) -> Observed {
        Observed::Exited {
            pid,
            status: KILLED,
            running: 0,
        }
    }

    fn up(pid: u32) -> Observed {
        Observed::Running {
            running: 1,
            pid: Some(pid),
        }
    }

    /// Runs (seconds after t0, input) pairs and returns every step's actions.
    fn run(entry: &Entry, steps: &[(u64, Observed)]) -> (Vec<Vec<Action>>, EntryState) {
        let t0 = Time::from_secs(1000);
        let mut state = EntryState::default();
        let out = steps
            .iter()
            .map(|(s, input)| step(entry, &mut state, *input, t0 + Duration::from_secs(*s)))
            .collect();
        (out, state)
    }

    fn down(pid: u32) -> Action {
        Action::ReportDown {
            pid: Some(pid),
            status: KILLED,
        }
    }

    #[test]
    fn table() {
        use Action::*;
        let fail = ReportSetPidFail {
            why: SetPidFail::CommandFailed,
        };
        /// (name, entry, (seconds after start, input) steps, actions of each step)
        type Case = (&'static str, Entry, Vec<(u64, Observed)>, Vec<Vec<Action>>);
        let cases: Vec<Case> = vec![
            (
                "kill, restart, up",
                entry(3, 86400, Continue),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, Observed::RestartDone { ok: true }),
                    (1, up(11)),
                ],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10), Restart { attempt: 1 }],
                    vec![],
                    vec![ReportUp {
                        pid: Some(11),
                        rearmed: false,
                    }],
                ],
            ),
            (
                "failing command: retries then retry over (continue)",
                entry(2, 86400, Continue),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, Observed::RestartDone { ok: false }),
                    (2, Observed::RestartDone { ok: false }),
                    (3, up(12)),
                    (4, exited(12)),
                ],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10), Restart { attempt: 1 }],
                    vec![fail, Restart { attempt: 2 }],
                    vec![fail, ReportRetryOver { attempts: 2 }],
                    vec![ReportUp {
                        pid: Some(12),
                        rearmed: true,
                    }],
                    vec![down(12), Restart { attempt: 1 }],
                ],
            ),
            (
                "switch asks for failover once",
                entry(1, 86400, Switch),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, Observed::RestartDone { ok: false }),
                    (2, Observed::Tick),
                ],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10), Restart { attempt: 1 }],
                    vec![fail, ReportRetryOver { attempts: 1 }, Failover],
                    vec![],
                ],
            ),
            (
                "no process by the deadline is a failed attempt",
                entry(1, 0, Continue),
                vec![
                    (0, exited(10)),
                    (0, Observed::RestartDone { ok: true }),
                    (4, Observed::Tick),
                    (5, Observed::Tick),
                ],
                vec![
                    vec![down(10), Restart { attempt: 1 }],
                    vec![],
                    vec![],
                    vec![
                        ReportSetPidFail {
                            why: SetPidFail::NotStarted,
                        },
                        ReportRetryOver { attempts: 1 },
                    ],
                ],
            ),
            (
                "the grace window slides: an old attempt stops counting",
                entry(1, 10, Continue),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, up(11)),
                    (20, exited(11)),
                    (20, up(12)),
                    (25, exited(12)),
                ],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10), Restart { attempt: 1 }],
                    vec![ReportUp {
                        pid: Some(11),
                        rearmed: false,
                    }],
                    vec![down(11), Restart { attempt: 1 }],
                    vec![ReportUp {
                        pid: Some(12),
                        rearmed: false,
                    }],
                    vec![down(12), ReportRetryOver { attempts: 1 }],
                ],
            ),
            (
                "grace 0: attempts never expire",
                entry(1, 0, Continue),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, up(11)),
                    (100_000, exited(11)),
                ],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10), Restart { attempt: 1 }],
                    vec![ReportUp {
                        pid: Some(11),
                        rearmed: false,
                    }],
                    vec![down(11), ReportRetryOver { attempts: 1 }],
                ],
            ),
            (
                "report only: retry 0",
                entry(0, 86400, Switch),
                vec![(0, up(10)), (1, exited(10)), (2, up(11))],
                vec![
                    vec![ReportUp {
                        pid: Some(10),
                        rearmed: false,
                    }],
                    vec![down(10)],
                    vec![ReportUp {
                        pid: Some(11),
                        rearmed: false,
                    }],
                ],
            ),
            (
                "not running at start: down and restart, not counted",
                entry(3, 86400, Continue),
                vec![(
                    0,
                    Observed::Running {
                        running: 0,
                        pid: None,
                    },
                )],
                vec![vec![
                    ReportDown {
                        pid: None,
                        status: ExitStatus::Unknown,
                    },
                    RestartUncounted {
                        why: Uncounted::FoundDown,
                    },
                ]],
            ),
        ];
        for (name, entry, steps, want) in cases {
            let (got, _) = run(&entry, &steps);
            assert_eq!(got, want, "case: {name}");
        }
    }

    /// `retry 1`: the start-up restart is not counted, so one counted
    /// attempt is left after it fails — as a group's start-up bring-up.
    #[test]
    fn found_down_at_start_leaves_the_whole_budget() {
        use Action::*;
        let e = entry(1, 86400, Continue);
        let steps = [
            (
                0,
                Observed::Running {
                    running: 0,
                    pid: None,
                },
            ),
            (1, Observed::RestartDone { ok: false }),
            (2, Observed::RestartDone { ok: false }),
        ];
        let (got, _) = run(&e, &steps);
        assert_eq!(
            got[0][1],
            RestartUncounted {
                why: Uncounted::FoundDown
            }
        );
        assert!(got[1].contains(&Restart { attempt: 1 }), "{:?}", got[1]);
        assert!(
            got[2].contains(&ReportRetryOver { attempts: 1 }),
            "{:?}",
            got[2]
        );
    }

    #[test]
    fn stopped_on_purpose_is_not_restarted() {
        let mut e = entry(3, 86400, Continue);
        e.stop_exit_codes = vec![0];
        let (got, state) = run(
            &e,
            &[
                (0, up(10)),
                (
                    1,
                    Observed::Exited {
                        pid: 10,
                        status: ExitStatus::Code(0),
                        running: 0,
                    },
                ),
            ],
        );
        assert_eq!(
            got[1],
            vec![
                Action::ReportDown {
                    pid: Some(10),
                    status: ExitStatus::Code(0)
                },
                Action::ReportStopped { pid: 10, code: 0 },
            ]
        );
        assert_eq!(state.phase, Phase::Down);
    }

    #[test]
    fn instance_counts() {
        let mut e = entry(3, 86400, Continue);
        e.min = 2;
        e.max = Some(3);
        let run2 = |running, pid| Observed::Running {
            running,
            pid: Some(pid),
        };
        let (got, _) = run(
            &e,
            &[
                (0, run2(2, 11)),
                (1, run2(4, 13)),
                (2, run2(4, 14)),
                (
                    3,
                    Observed::Exited {
                        pid: 13,
                        status: KILLED,
                        running: 3,
                    },
                ),
                (
                    4,
                    Observed::Exited {
                        pid: 12,
                        status: KILLED,
                        running: 1,
                    },
                ),
            ],
        );
        assert_eq!(
            got[0],
            vec![Action::ReportUp {
                pid: Some(11),
                rearmed: false
            }]
        );
        assert_eq!(got[1], vec![Action::ReportTooMany { running: 4 }]);
        assert_eq!(got[2], vec![], "warned once");
        assert_eq!(got[3], vec![], "still at least min");
        assert_eq!(got[4], vec![down(12), Action::Restart { attempt: 1 }]);
    }

    /// Runs (milliseconds after t0, input) pairs with start_secs 1 s and a
    /// 100 ms back-off capped at 1 s.
    fn run_ms(steps: &[(u64, Observed)], retry: u32) -> Vec<Vec<Action>> {
        let mut e = entry(retry, 86400, Switch);
        e.start_secs = Duration::from_secs(1);
        e.restart_backoff = Duration::from_millis(100);
        e.backoff_max = Duration::from_secs(1);
        let t0 = Time::from_secs(1000);
        let mut state = EntryState::default();
        steps
            .iter()
            .map(|(ms, input)| step(&e, &mut state, *input, t0 + Duration::from_millis(*ms)))
            .collect()
    }

    #[test]
    fn a_restart_counts_only_once_it_has_lived_start_secs() {
        use Action::*;
        let quick_death = Observed::Exited {
            pid: 11,
            status: ExitStatus::Code(1),
            running: 0,
        };
        let got = run_ms(
            &[
                (0, up(10)),
                (1000, exited(10)),
                (1001, up(11)), // appears while the command runs
                (1005, quick_death),
                (1050, Observed::Tick), // still backing off
                (1105, Observed::Tick),
                (1106, Observed::RestartDone { ok: true }),
                (1110, up(12)),
                (1500, Observed::Tick),
                (2110, Observed::Tick),
            ],
            3,
        );
        assert_eq!(
            got[1],
            vec![down(10), Restart { attempt: 1 }],
            "first: at once"
        );
        assert_eq!(got[2], vec![ReportStarted { pid: Some(11) }], "not Up yet");
        assert_eq!(
            got[3],
            vec![
                ReportSetPidFail {
                    why: SetPidFail::DiedEarly {
                        pid: Some(11),
                        status: ExitStatus::Code(1),
                        lived: Duration::from_millis(4),
                    }
                },
                ReportBackoff {
                    delay: Duration::from_millis(100)
                },
            ]
        );
        assert_eq!(got[4], vec![]);
        assert_eq!(got[5], vec![Restart { attempt: 2 }]);
        assert_eq!(got[7], vec![ReportStarted { pid: Some(12) }]);
        assert_eq!(got[8], vec![], "half a second is not enough");
        assert_eq!(
            got[9],
            vec![ReportUp {
                pid: Some(12),
                rearmed: false
            }]
        );
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_and_resets_when_up() {
        use Action::*;
        let failed = Observed::RestartDone { ok: false };
        let fail = ReportSetPidFail {
            why: SetPidFail::CommandFailed,
        };
        let backoff = |ms| ReportBackoff {
            delay: Duration::from_millis(ms),
        };
        let got = run_ms(
            &[
                (0, exited(10)),
                (1, failed),
                (101, Observed::Tick),
                (102, failed),
                (302, Observed::Tick),
                (303, failed),
                (703, Observed::Tick),
                (704, failed),
                (1504, Observed::Tick),
                (1505, failed),
                (2505, Observed::Tick),
            ],
            10,
        );
        assert_eq!(got[0], vec![down(10), Restart { attempt: 1 }]);
        assert_eq!(got[1], vec![fail, backoff(100)]);
        assert_eq!(got[2], vec![Restart { attempt: 2 }]);
        assert_eq!(got[3], vec![fail, backoff(200)]);
        assert_eq!(got[5], vec![fail, backoff(400)]);
        assert_eq!(got[7], vec![fail, backoff(800)]);
        assert_eq!(got[9], vec![fail, backoff(1000)], "capped");
        assert_eq!(got[10], vec![Restart { attempt: 6 }]);

        // Up again: the next death restarts at once.
        let got = run_ms(
            &[
                (0, exited(10)),
                (1, failed),
                (101, Observed::Tick),
                (102, Observed::RestartDone { ok: true }),
                (103, up(11)),
                (1103, Observed::Tick),
                (5000, exited(11)),
            ],
            10,
        );
        assert_eq!(
            got[5],
            vec![ReportUp {
                pid: Some(11),
                rearmed: false
            }]
        );
        assert_eq!(got[6], vec![down(11), Restart { attempt: 3 }]);
    }

    #[test]
    fn a_spent_budget_is_retry_over_without_waiting() {
        use Action::*;
        let got = run_ms(
            &[(0, exited(10)), (1, Observed::RestartDone { ok: false })],
            1,
        );
        assert_eq!(
            got[1],
            vec![
                ReportSetPidFail {
                    why: SetPidFail::CommandFailed
                },
                ReportRetryOver { attempts: 1 },
                Failover
            ]
        );
    }

    #[test]
    fn more_instances_than_expected_after_a_restart_are_warned() {
        use Action::*;
        let two = Observed::Running {
            running: 2,
            pid: Some(11),
        };
        let got = run_ms(
            &[
                (0, up(10)),
                (10, exited(10)),
                (20, Observed::RestartDone { ok: true }),
                (30, two),
                (1030, Observed::Tick),
            ],
            3,
        );
        assert_eq!(
            got[4],
            vec![
                ReportUp {
                    pid: Some(11),
                    rearmed: false
                },
                ReportTooManyAfterRestart {
                    running: 2,
                    expected: 1
                },
            ]
        );
    }

    #[test]
    fn a_healthy_run_gives_the_budget_back() {
        use crate::config::OnRetryOver::Continue;
        use Action::*;
        let mut e = entry(1, 86400, Continue);
        e.healthy = Some(Duration::from_secs(60));
        let steps = [
            (0, up(10)),
            (1, exited(10)),
            (1, Observed::RestartDone { ok: true }),
            (2, up(11)),
            // Up 100 s: healthy, its restart no longer counts.
            (102, exited(11)),
            (102, Observed::RestartDone { ok: true }),
            (103, up(12)),
            // Up 10 s only: the budget of one is spent.
            (113, exited(12)),
        ];
        let (got, state) = run(&e, &steps);
        assert_eq!(got[4], vec![down(11), Restart { attempt: 1 }]);
        assert_eq!(got[7], vec![down(12), ReportRetryOver { attempts: 1 }]);
        assert_eq!(state.phase, Phase::RetryOver);
        // ProcessSaver's way (no healthy_secs): the first death spends it.
        e.healthy = None;
        let (got, _) = run(&e, &steps[..5]);
        assert_eq!(got[4], vec![down(11), ReportRetryOver { attempts: 1 }]);
    }

    #[test]
    fn attempts_stop_showing_once_healthy() {
        let mut e = entry(3, 86400, crate::config::OnRetryOver::Continue);
        e.healthy = Some(Duration::from_secs(60));
        let t0 = Time::from_secs(1000);
        let (_, state) = run(
            &e,
            &[
                (0, up(10)),
                (1, exited(10)),
                (1, Observed::RestartDone { ok: true }),
                (2, up(11)),
            ],
        );
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(state.attempts_in_window(&e, at(30)), 1);
        assert_eq!(state.attempts_in_window(&e, at(62)), 0);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_spreads() {
        let mut e = entry(10, 86400, crate::config::OnRetryOver::Continue);
        e.restart_backoff = Duration::from_secs(1);
        e.restart_jitter = Duration::from_millis(500);
        let delays: Vec<Duration> = (0..200)
            .map(|n| {
                backoff(&e, 1) + jitter(&e, Time::from_secs(1000) + Duration::from_micros(n * 7919))
            })
            .collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(1)));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1500)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
        e.restart_jitter = Duration::ZERO;
        assert_eq!(jitter(&e, Time::from_secs(1000)), Duration::ZERO);
    }

    #[test]
    fn retry_slowly_says_it_once_and_goes_on_until_one_stays_up() {
        use Action::*;
        let mut e = entry(2, 86400, crate::config::OnRetryOver::RetrySlowly);
        e.slow_retry_interval = Duration::from_secs(30);
        let fail = ReportSetPidFail {
            why: SetPidFail::CommandFailed,
        };
        let (got, state) = run(
            &e,
            &[
                (0, up(10)),
                (1, exited(10)),
                (1, Observed::RestartDone { ok: false }),
                (1, Observed::RestartDone { ok: false }),
                (20, Observed::Tick),
                (31, Observed::Tick),
                (31, Observed::RestartDone { ok: false }),
                (61, Observed::Tick),
                (61, Observed::RestartDone { ok: true }),
                (62, up(13)),
            ],
        );
        assert_eq!(got[1], vec![down(10), Restart { attempt: 1 }]);
        assert_eq!(got[2], vec![fail, Restart { attempt: 2 }]);
        assert_eq!(
            got[3],
            vec![
                fail,
                ReportRetryOver { attempts: 2 },
                ReportSlowRetry {
                    every: Duration::from_secs(30)
                }
            ],
            "said once, never a failover"
        );
        assert_eq!(got[4], vec![], "not before the interval");
        assert_eq!(got[5], vec![RestartSlowly { attempt: 1 }]);
        assert_eq!(got[6], vec![fail], "no second Retry over");
        assert_eq!(got[7], vec![RestartSlowly { attempt: 2 }]);
        assert_eq!(
            got[9],
            vec![ReportUp {
                pid: Some(13),
                rearmed: true
            }]
        );
        assert_eq!(state.phase, Phase::Up);
        assert_eq!(state.slow_attempts, 0);
    }
}
