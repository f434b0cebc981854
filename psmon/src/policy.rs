//! The restart decision: a pure function of (entry, its state, an input,
//! the time) to the actions to take. No I/O, no clocks of its own, no tokio:
//! the supervisor feeds it and carries the actions out.
//!
//! Budget: at most `retry` attempts within any `grace` window (sliding; no
//! window when grace is 0). When it is spent, `continue` reports and keeps
//! watching and `switch` also asks for failover, once. A process that comes
//! back by other means after that is Up again and the budget is re-armed.

use std::time::{Duration, Instant};

use crate::{
    config::{Action as OnRetryOver, Entry},
    event::ExitStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not yet observed.
    Unknown,
    Up,
    /// Down, and psmon does not restart it (report only, or stopped on purpose).
    Down,
    /// The restart command is running.
    Restarting,
    /// The restart command succeeded; a matching process must appear by the deadline.
    Starting {
        deadline: Instant,
    },
    /// The budget is spent.
    RetryOver,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub phase: Phase,
    /// Start times of the restart attempts that still count.
    attempts: Vec<Instant>,
    /// Warned that more than `max` instances run (until the count drops).
    warned_max: bool,
}

impl Default for EntryState {
    fn default() -> Self {
        EntryState {
            phase: Phase::Unknown,
            attempts: Vec::new(),
            warned_max: false,
        }
    }
}

impl EntryState {
    /// Attempts inside the window at `now`.
    pub fn attempts_in_window(&self, entry: &Entry, now: Instant) -> usize {
        self.attempts
            .iter()
            .filter(|t| in_window(entry.grace, **t, now))
            .count()
    }
}

fn in_window(grace: Option<Duration>, at: Instant, now: Instant) -> bool {
    grace.is_none_or(|g| now.saturating_duration_since(at) < g)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `running` matching instances exist now (after an exec, a fork or a
    /// scan); `pid` is the newest.
    Running { running: u32, pid: Option<u32> },
    /// Instance `pid` ended; `running` remain.
    Exited {
        pid: u32,
        status: ExitStatus,
        running: u32,
    },
    /// The restart command finished; `ok` when it exited 0.
    RestartDone { ok: bool },
    /// Time passed (deadlines).
    Tick,
}

/// What the supervisor must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Process ['PATH',pid=PID] Down`
    ReportDown {
        pid: Option<u32>,
        status: ExitStatus,
    },
    /// Exited with a code configured as "stopped on purpose": not restarted.
    ReportStopped { pid: u32, code: i32 },
    /// `Try to restart ('PATH')`, then run the restart command.
    Restart { attempt: u32 },
    /// `('PATH',pid=PID) Up`
    ReportUp { pid: Option<u32>, rearmed: bool },
    /// `Set pid fail ('PATH')`: the attempt did not bring the process back.
    ReportSetPidFail { why: SetPidFail },
    /// The budget is spent.
    ReportRetryOver { attempts: u32 },
    /// Run the failover command (`switch`).
    Failover,
    /// More instances than `max`.
    ReportTooMany { running: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetPidFail {
    /// The command failed or timed out.
    CommandFailed,
    /// No matching process appeared within `start_wait`.
    NotStarted,
}

/// Applies `input` to `state` and returns what to do.
pub fn step(entry: &Entry, state: &mut EntryState, input: Input, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    match input {
        Input::Running { running, pid } => {
            if let Some(max) = entry.max {
                if running > max && !state.warned_max {
                    state.warned_max = true;
                    out.push(Action::ReportTooMany { running });
                } else if running <= max {
                    state.warned_max = false;
                }
            }
            if running >= entry.min {
                if state.phase != Phase::Up {
                    let rearmed = state.phase == Phase::RetryOver;
                    if rearmed {
                        state.attempts.clear();
                    }
                    state.phase = Phase::Up;
                    out.push(Action::ReportUp { pid, rearmed });
                }
            } else if matches!(state.phase, Phase::Up | Phase::Unknown) {
                out.push(Action::ReportDown {
                    pid: None,
                    status: ExitStatus::Unknown,
                });
                try_restart(entry, state, now, &mut out);
            }
        }
        Input::Exited {
            pid,
            status,
            running,
        } => {
            if running >= entry.min || !matches!(state.phase, Phase::Up | Phase::Unknown) {
                return out;
            }
            out.push(Action::ReportDown {
                pid: Some(pid),
                status,
            });
            match status {
                ExitStatus::Code(code) if entry.stop_exit_codes.contains(&code) => {
                    state.phase = Phase::Down;
                    out.push(Action::ReportStopped { pid, code });
                }
                _ => try_restart(entry, state, now, &mut out),
            }
        }
        Input::RestartDone { ok } => {
            if state.phase != Phase::Restarting {
                return out; // it came Up meanwhile
            }
            if ok {
                state.phase = Phase::Starting {
                    deadline: now + entry.start_wait,
                };
            } else {
                out.push(Action::ReportSetPidFail {
                    why: SetPidFail::CommandFailed,
                });
                try_restart(entry, state, now, &mut out);
            }
        }
        Input::Tick => {
            if let Phase::Starting { deadline } = state.phase
                && now >= deadline
            {
                out.push(Action::ReportSetPidFail {
                    why: SetPidFail::NotStarted,
                });
                try_restart(entry, state, now, &mut out);
            }
        }
    }
    out
}

fn try_restart(entry: &Entry, state: &mut EntryState, now: Instant, out: &mut Vec<Action>) {
    if !entry.restarts() {
        state.phase = Phase::Down;
        return;
    }
    state.attempts.retain(|t| in_window(entry.grace, *t, now));
    if (state.attempts.len() as u32) < entry.retry {
        state.attempts.push(now);
        state.phase = Phase::Restarting;
        out.push(Action::Restart {
            attempt: state.attempts.len() as u32,
        });
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
    use crate::config::Action::{Continue, Switch};

    fn entry(retry: u32, grace: u64, action: crate::config::Action) -> Entry {
        let mut e = Entry::new(
            "/usr/sbin/d".into(),
            Some("start d".into()),
            grace,
            retry,
            action,
        );
        e.start_wait = Duration::from_secs(5);
        e
    }

    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: 9,
        core_dumped: false,
    };

    fn exited(pid: u32) -> Input {
        Input::Exited {
            pid,
            status: KILLED,
            running: 0,
        }
    }

    fn up(pid: u32) -> Input {
        Input::Running {
            running: 1,
            pid: Some(pid),
        }
    }

    /// Runs (seconds after t0, input) pairs and returns every step's actions.
    fn run(entry: &Entry, steps: &[(u64, Input)]) -> (Vec<Vec<Action>>, EntryState) {
        let t0 = Instant::now();
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
        type Case = (&'static str, Entry, Vec<(u64, Input)>, Vec<Vec<Action>>);
        let cases: Vec<Case> = vec![
            (
                "kill, restart, up",
                entry(3, 86400, Continue),
                vec![
                    (0, up(10)),
                    (1, exited(10)),
                    (1, Input::RestartDone { ok: true }),
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
                    (1, Input::RestartDone { ok: false }),
                    (2, Input::RestartDone { ok: false }),
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
                    (1, Input::RestartDone { ok: false }),
                    (2, Input::Tick),
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
                    (0, Input::RestartDone { ok: true }),
                    (4, Input::Tick),
                    (5, Input::Tick),
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
                "not running at start: down and restart",
                entry(3, 86400, Continue),
                vec![(
                    0,
                    Input::Running {
                        running: 0,
                        pid: None,
                    },
                )],
                vec![vec![
                    ReportDown {
                        pid: None,
                        status: ExitStatus::Unknown,
                    },
                    Restart { attempt: 1 },
                ]],
            ),
        ];
        for (name, entry, steps, want) in cases {
            let (got, _) = run(&entry, &steps);
            assert_eq!(got, want, "case: {name}");
        }
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
                    Input::Exited {
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
        let run2 = |running, pid| Input::Running {
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
                    Input::Exited {
                        pid: 13,
                        status: KILLED,
                        running: 3,
                    },
                ),
                (
                    4,
                    Input::Exited {
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
}
