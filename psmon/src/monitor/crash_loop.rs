//! Crash loops explained: each entry's recent failures (deaths and failed
//! restart attempts) and what they have in common. The same exit status
//! within `start_secs`, again and again, is **deterministic** — restarting
//! will not help; OOM kills and the kernel's own fatal signals are
//! **resource**; kills by the hang probe are **hung**; signals from other
//! processes are **external**, with their senders; anything else is
//! **mixed**. Plain data: [`crate::report`] words it.

use std::{collections::VecDeque, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{clock::Time, event::ExitStatus, facts::Cause};

/// Failures remembered per entry.
const KEPT: usize = 16;
/// How far back failures count when the entry has no `grace` window.
const WINDOW: Duration = Duration::from_secs(3600);
/// Failures before anything is said of them.
const AT_LEAST: usize = 2;

/// One failure of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When.
    pub at: Time,
    /// What failed.
    pub what: Failed,
}

/// What failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failed {
    /// An instance ended on its own (an exit code, or a signal nobody
    /// sent it), `lived` after it started when psmon knows.
    Ended {
        /// How it ended.
        status: ExitStatus,
        /// How long it lived, when psmon knows.
        lived: Option<Duration>,
        /// Within `start_secs`: before it ever counted as Up.
        early: bool,
    },
    /// The OOM killer, or the kernel for a limit or fault (`what`).
    Resource {
        /// The OOM killer, or the kernel's signal and why.
        what: String,
    },
    /// The hang probe killed it.
    Hung,
    /// Another process signalled it: who.
    External {
        /// Who sent the signal.
        sender: String,
    },
    /// The restart command failed, or no process came of it.
    Command {
        /// The command succeeded but no process came of it (false: the
        /// command itself failed).
        started: bool,
    },
}

/// What an entry's recent failures have in common.
#[derive(Clone, Debug, PartialEq)]
pub enum CrashLoop {
    /// The same ending, `times` in a row, each within `start_secs`.
    Deterministic {
        /// The ending they share.
        status: ExitStatus,
        /// How long the last one lived, when psmon knows.
        lived: Option<Duration>,
        /// How many in a row.
        times: u32,
    },
    /// The restart command failed (`started`: its process never came)
    /// `times` in a row.
    CommandFails {
        /// The command succeeded but no process came of it (false: the
        /// command itself failed).
        started: bool,
        /// How many in a row.
        times: u32,
    },
    /// The OOM killer, or the kernel for a limit or fault, every time:
    /// what, each time.
    Resource {
        /// What, each time.
        what: Vec<String>,
        /// How many in a row.
        times: u32,
    },
    /// The hang probe killed it every time.
    Hung {
        /// How many in a row.
        times: u32,
    },
    /// Other processes signalled it every time: who.
    External {
        /// Who, each time.
        senders: Vec<String>,
        /// How many in a row.
        times: u32,
    },
    /// Failures with nothing in common.
    Mixed {
        /// How many.
        times: u32,
    },
}

impl CrashLoop {
    /// For `status`, `/status` and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            CrashLoop::Deterministic { .. } | CrashLoop::CommandFails { .. } => "deterministic",
            CrashLoop::Resource { .. } => "resource",
            CrashLoop::Hung { .. } => "hung",
            CrashLoop::External { .. } => "external",
            CrashLoop::Mixed { .. } => "mixed",
        }
    }
}

/// The classes, in the order metrics show them.
pub const CLASSES: [&str; 5] = ["deterministic", "resource", "hung", "external", "mixed"];

/// An entry's recent failures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures(VecDeque<Failure>);

impl Failures {
    /// No failure is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keeps failure `what` at `at`, dropping the oldest past the bound.
    pub fn record(&mut self, at: Time, what: Failed) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back(Failure { at, what });
    }

    /// The entry stayed up long enough (`healthy_secs`, or its budget was
    /// re-armed): what failed before is history.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// What the failures within `window` (the entry's `grace`, else an
    /// hour) before `now` have in common, once there are at least two.
    pub fn classify(&self, window: Option<Duration>, now: Time) -> Option<CrashLoop> {
        let window = window.unwrap_or(WINDOW);
        let recent: Vec<&Failed> = self
            .0
            .iter()
            .filter(|f| now.saturating_duration_since(f.at) < window)
            .map(|f| &f.what)
            .collect();
        if recent.len() < AT_LEAST {
            return None;
        }
        let times = recent.len() as u32;
        // The newest failures, alike: what happens now.
        let last = recent[recent.len() - 1];
        let same = recent.iter().rev().take_while(|f| alike(f, last)).count();
        if same >= AT_LEAST {
            match last {
                Failed::Ended {
                    status,
                    lived,
                    early: true,
                } => {
                    return Some(CrashLoop::Deterministic {
                        status: *status,
                        lived: *lived,
                        times: same as u32,
                    });
                }
                Failed::Command { started } => {
                    return Some(CrashLoop::CommandFails {
                        started: *started,
                        times: same as u32,
                    });
                }
                _ => {}
            }
        }
        let all = |f: fn(&Failed) -> bool| recent.iter().all(|x| f(x));
        let distinct = |pick: fn(&Failed) -> Option<&String>| {
            let mut seen: Vec<String> = Vec::new();
            for name in recent.iter().filter_map(|f| pick(f)) {
                if !seen.contains(name) {
                    seen.push(name.clone());
                }
            }
            seen
        };
        if all(|f| matches!(f, Failed::Resource { .. })) {
            let what = distinct(|f| match f {
                Failed::Resource { what } => Some(what),
                _ => None,
            });
            return Some(CrashLoop::Resource { what, times });
        }
        if all(|f| matches!(f, Failed::Hung)) {
            return Some(CrashLoop::Hung { times });
        }
        if all(|f| matches!(f, Failed::External { .. })) {
            let senders = distinct(|f| match f {
                Failed::External { sender } => Some(sender),
                _ => None,
            });
            return Some(CrashLoop::External { senders, times });
        }
        Some(CrashLoop::Mixed { times })
    }
}

/// The same failure again: the same ending within start_secs, or the
/// same command failure.
fn alike(a: &Failed, b: &Failed) -> bool {
    match (a, b) {
        (
            Failed::Ended {
                status: x,
                early: true,
                ..
            },
            Failed::Ended {
                status: y,
                early: true,
                ..
            },
        ) => same_ending(*x, *y),
        (Failed::Command { started: x }, Failed::Command { started: y }) => x == y,
        _ => false,
    }
}

fn same_ending(a: ExitStatus, b: ExitStatus) -> bool {
    match (a, b) {
        (ExitStatus::Code(x), ExitStatus::Code(y)) => x == y,
        (ExitStatus::Signal { signal: x, .. }, ExitStatus::Signal { signal: y, .. }) => x == y,
        _ => false,
    }
}

/// What one ending of an instance was: `cause` as the source saw it,
/// `hung` when the hang probe killed it.
pub fn failed(
    status: ExitStatus,
    cause: Option<&Cause>,
    hung: bool,
    lived: Option<Duration>,
    early: bool,
) -> Failed {
    if hung {
        return Failed::Hung;
    }
    match cause {
        Some(Cause::Oom { cgroup, .. }) => Failed::Resource {
            what: match cgroup {
                Some(c) => format!("OOM kill in {c}"),
                None => "OOM kill".to_string(),
            },
        },
        // A limit (SIGXCPU, SIGXFSZ, the SIGKILL after them); a fault
        // (SIGSEGV …) is the program's own ending.
        Some(Cause::Kernel { signal }) if matches!(signal, 9 | 24 | 25) => Failed::Resource {
            what: format!("{} from the kernel", crate::facts::signal_name(*signal)),
        },
        Some(Cause::Sent { sender, .. }) => Failed::External {
            sender: format!("pid {} '{}' uid {}", sender.pid, sender.comm, sender.uid),
        },
        _ => Failed::Ended {
            status,
            lived,
            early,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Sender;

    fn t(s: u64) -> Time {
        Time::from_secs(1000 + s)
    }

    fn ended(code: i32, ms: u64) -> Failed {
        Failed::Ended {
            status: ExitStatus::Code(code),
            lived: Some(Duration::from_millis(ms)),
            early: true,
        }
    }

    fn sender(pid: u32, comm: &str) -> Sender {
        Sender {
            pid,
            comm: comm.into(),
            uid: 1000,
            parent: None,
            grandparent: None,
        }
    }

    fn classify(failures: &[Failed]) -> Option<CrashLoop> {
        let mut f = Failures::default();
        for (n, what) in failures.iter().enumerate() {
            f.record(t(n as u64), what.clone());
        }
        f.classify(None, t(failures.len() as u64))
    }

    #[test]
    fn table() {
        let kill = |pid, comm| {
            failed(
                ExitStatus::Signal {
                    signal: 15,
                    core_dumped: false,
                },
                Some(&Cause::Sent {
                    signal: 15,
                    sender: sender(pid, comm),
                }),
                false,
                None,
                false,
            )
        };
        let oom = failed(
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            },
            Some(&Cause::Oom {
                cgroup: Some("/small".into()),
                trigger: sender(7, "app"),
            }),
            false,
            None,
            false,
        );
        let cases: Vec<(&str, Vec<Failed>, Option<CrashLoop>)> = vec![
            ("one failure says nothing", vec![ended(78, 200)], None),
            (
                "exit 78 at once, three times",
                vec![ended(78, 200), ended(78, 210), ended(78, 190)],
                Some(CrashLoop::Deterministic {
                    status: ExitStatus::Code(78),
                    lived: Some(Duration::from_millis(190)),
                    times: 3,
                }),
            ),
            (
                "the newest alike decide, an older different one aside",
                vec![kill(5, "kill"), ended(1, 100), ended(1, 100)],
                Some(CrashLoop::Deterministic {
                    status: ExitStatus::Code(1),
                    lived: Some(Duration::from_millis(100)),
                    times: 2,
                }),
            ),
            (
                "a failing restart command",
                vec![Failed::Command { started: true }; 3],
                Some(CrashLoop::CommandFails {
                    started: true,
                    times: 3,
                }),
            ),
            (
                "OOM kills",
                vec![oom.clone(), oom.clone()],
                Some(CrashLoop::Resource {
                    what: vec!["OOM kill in /small".into()],
                    times: 2,
                }),
            ),
            (
                "the hang probe",
                vec![failed(ExitStatus::Unknown, None, true, None, false); 2],
                Some(CrashLoop::Hung { times: 2 }),
            ),
            (
                "kills from others, each sender once",
                vec![kill(5, "kill"), kill(6, "pkill"), kill(5, "kill")],
                Some(CrashLoop::External {
                    senders: vec![
                        "pid 5 'kill' uid 1000".into(),
                        "pid 6 'pkill' uid 1000".into(),
                    ],
                    times: 3,
                }),
            ),
            (
                "different codes",
                vec![ended(1, 100), ended(2, 100)],
                Some(CrashLoop::Mixed { times: 2 }),
            ),
            (
                "an OOM kill and a kill",
                vec![oom, kill(5, "kill")],
                Some(CrashLoop::Mixed { times: 2 }),
            ),
        ];
        for (name, failures, want) in cases {
            assert_eq!(classify(&failures), want, "{name}");
        }
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let mut f = Failures::default();
        f.record(t(0), ended(78, 100));
        f.record(t(10), ended(78, 100));
        assert!(f.classify(Some(Duration::from_secs(60)), t(20)).is_some());
        assert_eq!(f.classify(Some(Duration::from_secs(60)), t(65)), None);
        f.clear();
        assert_eq!(f.classify(None, t(20)), None);
    }
}
