//! Scenarios: the monitor driven by made-up inputs and a made-up clock.
//! No processes, no `/proc`, no root: each runs in microseconds.

use std::time::Duration;

use super::*;
use crate::{
    config::{Agent, Env, Match, OnRetryOver, Pfile},
    facts::{CommandOutcome, Ending, Seen},
    policy::{Action, SetPidFail, Uncounted},
};

const KILLED: ExitStatus = ExitStatus::Signal {
    signal: 9,
    core_dumped: false,
};

const A: EntryId = EntryId(0);
const B: EntryId = EntryId(1);

fn entry(path: &str) -> Entry {
    let mut e = Entry::new(
        path.into(),
        Some(format!("start {path}")),
        60,
        3,
        OnRetryOver::Continue,
    );
    e.start_secs = Duration::ZERO;
    e.restart_backoff = Duration::ZERO;
    e
}

fn config(entries: Vec<Entry>) -> Config {
    Config {
        pfiles: vec![Pfile {
            name: "app".into(),
            file: "/etc/psmon/pfile_app".into(),
            ipckey: None,
            monitor_interval: Duration::from_secs(1),
            msg_check_interval: Duration::from_secs(5),
            shm_dump_file: None,
            entries,
            groups: Vec::new(),
        }],
        agent: Agent::default(),
        env: Env::default(),
        tls: None,
    }
}

fn seen(tgid: u32, start_ticks: u64) -> Seen {
    Seen {
        tgid,
        start_ticks,
        comm: crate::scan::comm_key(b"d"),
        ppid: 1,
        uid: 0,
    }
}

/// A monitor, a clock, and what it last said.
struct World {
    m: Monitor,
    now: Time,
    out: Vec<Effect>,
}

impl World {
    fn with(config: Config, pidfds: bool) -> World {
        let (m, out) = Monitor::new(config, pidfds);
        World {
            m,
            now: Time::from_secs(1_000),
            out,
        }
    }

    /// Starts it with `found` running: the first scan.
    fn started(entries: Vec<Entry>, pidfds: bool, found: Vec<Vec<Seen>>) -> World {
        World::started_with(config(entries), pidfds, found)
    }

    fn started_with(config: Config, pidfds: bool, found: Vec<Vec<Seen>>) -> World {
        let mut w = World::with(config, pidfds);
        let started = w.now;
        w.later(5);
        w.feed(Input::Scanned {
            started,
            took: Duration::ZERO,
            found,
        });
        w
    }

    fn feed(&mut self, input: Input) -> &[Effect] {
        self.out = self.m.handle(input, self.now);
        &self.out
    }

    fn later(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
    }

    /// Moves the clock to the monitor's next deadline and ticks.
    fn tick(&mut self) -> &[Effect] {
        let at = self
            .m
            .next_deadline(self.now)
            .expect("something waits for a time");
        self.now = self.now.max(at);
        self.feed(Input::Tick)
    }

    fn exit(&mut self, tgid: u32, start: u64, status: ExitStatus) -> Vec<Action> {
        self.feed(Input::Exited {
            tgid,
            start: Some(start),
            status,
        });
        self.actions()
    }

    /// The restart decisions in the last effects.
    fn actions(&self) -> Vec<Action> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Effect::Notice(Notice::Policy { action, .. }) => Some(*action),
                _ => None,
            })
            .collect()
    }

    fn runs(&self) -> Vec<&Run> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Effect::Run(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn done(&mut self, path: &str, ok: bool) -> Vec<Action> {
        let outcome = CommandOutcome {
            ending: if ok {
                Ending::Exited(0)
            } else {
                Ending::Exited(1)
            },
            elapsed: Duration::from_millis(2),
            output_tail: String::new(),
        };
        self.feed(Input::CommandDone {
            path: path.into(),
            job: Job::Restart,
            outcome,
        });
        self.actions()
    }
}

fn up(pid: u32) -> Action {
    Action::ReportUp {
        pid: Some(pid),
        rearmed: false,
    }
}

#[test]
fn first_scan_reports_up_and_a_kill_restarts() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    assert_eq!(w.actions(), vec![up(100)]);
    assert!(w.out.contains(&Effect::WatchExit {
        tgid: 100,
        start: 5
    }));
    assert!(w.out.contains(&Effect::FilterTgid {
        tgid: 100,
        watch: true
    }));
    assert_eq!(
        w.m.next_deadline(w.now),
        None,
        "idle: nothing waits for a time"
    );

    let actions = w.exit(100, 5, KILLED);
    assert_eq!(
        actions,
        vec![
            Action::ReportDown {
                pid: Some(100),
                status: KILLED
            },
            Action::Restart { attempt: 1 }
        ]
    );
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].command, "start /d");
    let env: HashMap<_, _> = runs[0].env.iter().cloned().collect();
    assert_eq!(env["PSMON_PID"], "100");
    assert_eq!(env["PSMON_SIGNAL"], "9");
    assert_eq!(env["PSMON_ATTEMPT"], "1");
    assert!(w.out.contains(&Effect::UnwatchExit { tgid: 100 }));

    w.later(2);
    assert!(w.done("/d", true).is_empty());
    assert!(
        !w.out.contains(&Effect::Scan),
        "its exec event normally comes before long: no scan of all /proc yet"
    );
    w.later(CATCH_UP.as_millis() as u64);
    w.feed(Input::Tick);
    assert!(
        w.out.contains(&Effect::Scan),
        "a scan catches a filtered exec"
    );
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 9))),
    });
    assert_eq!(w.actions(), vec![up(101)]);
    assert_eq!(w.m.running(A), 1);
}

/// A scan began before an exit and reports after it: the dead process
/// must not come back.
#[test]
fn a_scan_older_than_an_exit_does_not_bring_it_back() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    let scan_started = w.now;
    w.later(1);
    w.exit(100, 5, KILLED);
    w.later(1);
    w.feed(Input::Scanned {
        took: Duration::ZERO,
        started: scan_started,
        found: vec![vec![seen(100, 5)]],
    });
    assert!(w.actions().is_empty(), "{:?}", w.out);
    assert_eq!(w.m.member_entry(100), None);
    assert_eq!(w.m.phase(A), Phase::Restarting);
}

/// The same pid with another start time is another process.
#[test]
fn a_reused_pid_is_another_process() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    // An exit event of an older process that had pid 100: not ours.
    assert!(w.exit(100, 3, KILLED).is_empty());
    assert_eq!(w.m.member_entry(100), Some(A));

    // The scan finds pid 100 started later: ours died unseen, and a new
    // one took its pid.
    let started = w.now;
    w.later(5);
    w.feed(Input::Scanned {
        took: Duration::ZERO,
        started,
        found: vec![vec![seen(100, 9)]],
    });
    assert_eq!(
        w.actions(),
        vec![
            Action::ReportDown {
                pid: Some(100),
                status: ExitStatus::Unknown
            },
            Action::Restart { attempt: 1 },
            Action::ReportUp {
                pid: Some(100),
                rearmed: false
            },
        ]
    );
    assert!(w.out.contains(&Effect::WatchExit {
        tgid: 100,
        start: 9
    }));
}

/// The pidfd says the process exited, but it was reaped before its status
/// could be read: the exit event, which carries it, is waited for.
#[test]
fn an_exit_event_trailing_its_pidfd_brings_the_status() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::ExitSeen {
        tgid: 100,
        start: 5,
        zombie: None,
    });
    assert!(w.actions().is_empty());
    assert_eq!(w.m.next_deadline(w.now), Some(w.now + MISSED_GRACE));
    w.later(1);
    let actions = w.exit(100, 5, ExitStatus::Code(3));
    assert_eq!(
        actions[0],
        Action::ReportDown {
            pid: Some(100),
            status: ExitStatus::Code(3)
        }
    );
    // Nothing left to wait for but the restart.
    assert_eq!(w.m.next_deadline(w.now), None);
}

#[test]
fn a_zombie_seen_by_the_pidfd_is_down_at_once() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::ExitSeen {
        tgid: 100,
        start: 5,
        zombie: Some(ExitStatus::Code(2)),
    });
    assert_eq!(
        w.actions()[0],
        Action::ReportDown {
            pid: Some(100),
            status: ExitStatus::Code(2)
        }
    );
    // Its exit event, later, changes nothing.
    assert!(w.exit(100, 5, ExitStatus::Code(2)).is_empty());
}

/// Without pidfds, a member a scan no longer sees waits MISSED_GRACE (plus
/// the source's lag) for its exit event, then is Down with an unknown status.
#[test]
fn a_member_missed_by_a_scan_is_down_after_the_grace() {
    let mut w = World::started(vec![entry("/d")], false, vec![vec![seen(100, 5)]]);
    assert!(!w.out.iter().any(|e| matches!(e, Effect::WatchExit { .. })));
    w.feed(Input::SourceOpened {
        name: "poll".into(),
        kernel_filter: false,
        exit_lag: Duration::from_secs(1),
        cause_unknown: Some("source poll".into()),
    });
    w.later(10);
    let started = w.now;
    w.later(5);
    w.feed(Input::Scanned {
        took: Duration::ZERO,
        started,
        found: vec![vec![]],
    });
    assert!(
        w.actions().is_empty(),
        "not yet: the event may be on its way"
    );
    let due = w.m.next_deadline(w.now).unwrap();
    assert_eq!(due, w.now + MISSED_GRACE + Duration::from_secs(1));
    w.tick();
    assert_eq!(
        w.actions()[0],
        Action::ReportDown {
            pid: Some(100),
            status: ExitStatus::Unknown
        }
    );
}

/// A member added after a scan started is not missing from it.
#[test]
fn a_member_younger_than_the_scan_is_not_missed() {
    let mut w = World::started(vec![entry("/d")], false, vec![vec![seen(100, 5)]]);
    let started = w.now;
    w.later(1);
    w.feed(Input::Execd {
        tgid: 200,
        matched: Some((A, seen(200, 7))),
    });
    w.later(1);
    w.feed(Input::Scanned {
        took: Duration::ZERO,
        started,
        found: vec![vec![seen(100, 5)]],
    });
    assert_eq!(w.m.next_deadline(w.now), None, "{:?}", w.m.missed);
}

/// Classifying an exec runs on another thread: its answer can come after
/// the process's exit was applied, and must not bring the dead back (seen
/// as "2 instances after its restart" under an exec storm).
#[test]
fn a_late_classification_does_not_bring_a_dead_process_back() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::ExitSeen {
        tgid: 100,
        start: 5,
        zombie: Some(KILLED),
    });
    w.feed(Input::Execd {
        tgid: 100,
        matched: Some((A, seen(100, 5))),
    });
    assert_eq!(w.m.member_entry(100), None);
    w.feed(Input::Forked {
        entry: A,
        child: seen(100, 5),
    });
    assert_eq!(w.m.member_entry(100), None);
    // The restarted process is the only instance.
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    assert_eq!(w.actions(), vec![up(101)]);
    assert_eq!(w.m.running(A), 1);
    // A new process that got the same pid is another process.
    w.feed(Input::Execd {
        tgid: 100,
        matched: Some((A, seen(100, 9))),
    });
    assert_eq!(w.m.member_entry(100), Some(A));
}

/// The restart command is still running when the process comes back by
/// other means: it is taken as is, and the command's end starts nothing.
#[test]
fn a_process_back_on_its_own_during_a_restart_is_not_restarted_again() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    assert_eq!(w.m.phase(A), Phase::Restarting);
    w.later(1);
    w.feed(Input::Execd {
        tgid: 300,
        matched: Some((A, seen(300, 8))),
    });
    assert_eq!(w.actions(), vec![up(300)]);
    w.later(1);
    assert!(w.done("/d", true).is_empty());
    assert!(w.runs().is_empty());
    assert_eq!(w.m.phase(A), Phase::Up);
}

/// A member that execs the program of another entry leaves the first
/// (which goes Down) and joins the second.
#[test]
fn a_reexec_into_another_watched_path_moves_the_process() {
    let mut w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![]],
    );
    w.feed(Input::Execd {
        tgid: 100,
        matched: Some((B, seen(100, 5))),
    });
    assert_eq!(w.m.member_entry(100), Some(B));
    let notices: Vec<(EntryId, Action)> = w
        .out
        .iter()
        .filter_map(|e| match e {
            Effect::Notice(Notice::Policy { entry, action, .. }) => Some((*entry, *action)),
            _ => None,
        })
        .collect();
    assert_eq!(
        notices[0],
        (
            A,
            Action::ReportDown {
                pid: Some(100),
                status: ExitStatus::Unknown
            }
        )
    );
    assert!(notices.contains(&(B, up(100))), "{notices:?}");
    // Exec'ing something nobody watches, past its first moments (see
    // a_wrapper_that_execs_its_service_is_followed): it is gone from B too.
    w.later(1_500);
    w.feed(Input::Execd {
        tgid: 100,
        matched: None,
    });
    assert_eq!(w.m.member_entry(100), None);
    assert!(w.out.contains(&Effect::FilterTgid {
        tgid: 100,
        watch: false
    }));
}

/// A reload keeps what it can: an unchanged path keeps its members and
/// its spent budget (a changed retry count applies to it); a removed
/// entry's members are let go; a new entry starts unknown.
#[test]
fn a_reload_keeps_members_and_budgets_of_entries_it_keeps() {
    let mut w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 6)]],
    );
    w.exit(100, 5, KILLED); // one attempt spent on /a
    w.done("/a", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 7))),
    });
    assert_eq!(w.m.phase(A), Phase::Up);

    let mut a = entry("/a");
    a.retry = 2;
    let generation = w.m.generation();
    w.feed(Input::Reload(Box::new(config(vec![entry("/c"), a]))));
    assert_ne!(w.m.generation(), generation);
    assert!(
        w.out.contains(&Effect::UnwatchExit { tgid: 200 }),
        "{:?}",
        w.out
    );
    assert!(w.out.contains(&Effect::Scan));
    // /c is first now, /a second.
    let (c, a) = (EntryId(0), EntryId(1));
    assert_eq!(w.m.entry(a).path, PathBuf::from("/a"));
    assert_eq!(w.m.member_entry(101), Some(a));
    assert_eq!(w.m.member_entry(200), None);
    assert_eq!(w.m.phase(a), Phase::Up);
    assert_eq!(w.m.phase(c), Phase::Unknown);

    // /a has one attempt left of its new two.
    w.exit(101, 7, KILLED);
    assert_eq!(w.runs().len(), 1);
    w.done("/a", false);
    assert!(
        w.actions()
            .contains(&Action::ReportRetryOver { attempts: 2 }),
        "{:?}",
        w.actions()
    );
}

/// Two instances of one entry exit in one batch of events: one Down for
/// the second (the first leaves one running), one restart.
#[test]
fn two_instances_exiting_together_restart_once() {
    let mut w = World::started(
        vec![entry("/d")],
        true,
        vec![vec![seen(100, 5), seen(101, 5)]],
    );
    assert_eq!(w.m.running(A), 2);
    assert!(w.exit(100, 5, KILLED).is_empty(), "one still runs");
    let actions = w.exit(101, 5, KILLED);
    assert_eq!(
        actions,
        vec![
            Action::ReportDown {
                pid: Some(101),
                status: KILLED
            },
            Action::Restart { attempt: 1 }
        ]
    );
    assert_eq!(w.runs().len(), 1);
}

/// With a `min` of 2, the first of two exits is already Down.
#[test]
fn below_min_is_down() {
    let mut e = entry("/d");
    e.min = 2;
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5), seen(101, 5)]]);
    let actions = w.exit(100, 5, KILLED);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(w.exit(101, 5, KILLED).is_empty(), "already restarting");
}

/// A pidfile entry counts only the process its pidfile names, and says
/// nothing until the file has been read.
#[test]
fn a_pidfile_entry_waits_for_its_file() {
    let mut e = entry("/d");
    e.rule = Rule::Pidfile("/run/d.pid".into());
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5), seen(101, 6)]]);
    assert!(w.actions().is_empty(), "no Down before the pidfile is read");
    assert!(w.out.contains(&Effect::ReadPidfile {
        entry: A,
        path: "/run/d.pid".into()
    }));
    w.feed(Input::Pidfile {
        entry: A,
        pid: Some(100),
    });
    assert_eq!(w.actions(), vec![up(100)]);
    assert_eq!(w.m.running(A), 1);
    // A worker's exit is not the daemon's.
    assert!(w.exit(101, 6, KILLED).is_empty());
    // The daemon's is, though the file still names it.
    let actions = w.exit(100, 5, KILLED);
    assert_eq!(actions.len(), 2, "{actions:?}");
    // After the restart, the new process counts once the file names it.
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 300,
        matched: Some((A, seen(300, 9))),
    });
    assert!(w.actions().is_empty());
    assert!(
        w.out
            .iter()
            .any(|e| matches!(e, Effect::ReadPidfile { .. }))
    );
    w.feed(Input::Pidfile {
        entry: A,
        pid: Some(300),
    });
    assert_eq!(w.actions(), vec![up(300)]);
}

/// While a restarted pidfile entry is expected, its file is read again
/// every PIDFILE_POLL.
#[test]
fn a_starting_pidfile_entry_polls_its_file() {
    let mut e = entry("/d");
    e.rule = Rule::Pidfile("/run/d.pid".into());
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Pidfile {
        entry: A,
        pid: Some(100),
    });
    w.exit(100, 5, KILLED);
    w.done("/d", true);
    assert_eq!(w.m.next_deadline(w.now), Some(w.now + PIDFILE_POLL));
    w.tick();
    assert!(
        w.out
            .iter()
            .any(|e| matches!(e, Effect::ReadPidfile { .. }))
    );
}

/// A command-line entry: the master's exit is held until the others are
/// checked again; a worker that retitled itself does not keep it up.
#[test]
fn a_retitled_worker_does_not_keep_a_cmdline_entry_up() {
    let mut e = entry("/usr/sbin/nginx");
    e.matcher = Match::Cmdline(glob::Pattern::new("nginx: master*").unwrap());
    // Every matching process counts, forked ones too.
    e.rule = Rule::All;
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    // A worker forked before it retitled: it matched then.
    w.feed(Input::Forked {
        entry: A,
        child: seen(101, 6),
    });
    assert_eq!(w.m.running(A), 2);
    assert!(w.exit(100, 5, KILLED).is_empty(), "held");
    assert!(w.out.contains(&Effect::Recheck {
        entry: A,
        tgids: vec![101]
    }));
    w.feed(Input::Rechecked {
        entry: A,
        stale: vec![101],
    });
    assert_eq!(
        w.actions(),
        vec![
            Action::ReportDown {
                pid: Some(100),
                status: KILLED
            },
            Action::Restart { attempt: 1 }
        ]
    );
    assert_eq!(w.m.member_entry(101), None);
}

/// A second master that still matches keeps the entry up.
#[test]
fn a_held_exit_with_others_still_matching_is_no_down() {
    let mut e = entry("/usr/sbin/nginx");
    e.matcher = Match::Cmdline(glob::Pattern::new("nginx: master*").unwrap());
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5), seen(101, 6)]]);
    w.exit(100, 5, KILLED);
    w.feed(Input::Rechecked {
        entry: A,
        stale: vec![],
    });
    assert!(w.actions().is_empty());
    assert_eq!(w.m.phase(A), Phase::Up);
}

/// A start that fails its start_secs, then backs off: the deadlines are
/// the monitor's, and ticks drive them.
#[test]
fn a_restart_that_dies_early_backs_off_then_tries_again() {
    let mut e = entry("/d");
    e.start_secs = Duration::from_secs(1);
    e.restart_backoff = Duration::from_millis(200);
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    assert_eq!(w.actions(), vec![Action::ReportStarted { pid: Some(101) }]);
    w.later(100);
    let actions = w.exit(101, 6, ExitStatus::Code(1));
    assert!(
        matches!(
            actions[0],
            Action::ReportSetPidFail {
                why: SetPidFail::DiedEarly { .. }
            }
        ),
        "{actions:?}"
    );
    assert_eq!(
        actions[1],
        Action::ReportBackoff {
            delay: Duration::from_millis(200)
        }
    );
    // The next attempt waits for the dead instance's reaping too.
    assert!(w.out.contains(&Effect::AwaitReaped {
        path: "/d".into(),
        tgids: vec![100],
        pgid: None,
    }));
    assert_eq!(w.m.next_deadline(w.now), None);
    w.feed(Input::Reaped {
        path: "/d".into(),
        stopped: None,
    });
    assert!(w.actions().is_empty(), "not before the back-off");
    let before = w.now;
    w.tick();
    assert_eq!(w.now, before + Duration::from_millis(200));
    assert_eq!(w.actions(), vec![Action::Restart { attempt: 2 }]);
}

/// A zombie the dead instance's parent reaps late (a daemon whose pidfile
/// still names it refuses to start) holds the next attempt past the
/// back-off, until it is reaped; so does the last attempt's command.
#[test]
fn the_next_attempt_waits_for_the_reaping_and_the_last_command() {
    let mut e = entry("/d");
    e.start_secs = Duration::from_secs(1);
    e.restart_backoff = Duration::from_millis(200);
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    w.later(10);
    w.exit(101, 6, ExitStatus::Code(89));
    w.later(500);
    w.feed(Input::Tick);
    assert!(w.actions().is_empty(), "the zombie is not reaped yet");
    w.feed(Input::Reaped {
        path: "/d".into(),
        stopped: None,
    });
    assert!(w.actions().is_empty(), "its restart command still runs");
    w.later(10);
    w.done("/d", false);
    assert_eq!(w.actions(), vec![Action::Restart { attempt: 2 }]);
    assert_eq!(w.runs().len(), 1);
}

/// Failover with no command anywhere is said, not attempted.
#[test]
fn retry_over_with_switch_and_no_command_says_so() {
    let mut e = entry("/d");
    e.retry = 1;
    e.action = OnRetryOver::Switch;
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.done("/d", false);
    assert!(
        w.out
            .contains(&Effect::Notice(Notice::SwitchNotSent { entry: A }))
    );
    assert!(w.runs().is_empty());
}

#[test]
fn answers_for_a_previous_configuration_are_ignored() {
    let mut w = World::started(vec![entry("/a")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Reload(Box::new(config(vec![]))));
    // Numbered for the old configuration: there is no entry 0 now.
    w.feed(Input::Pidfile {
        entry: A,
        pid: Some(1),
    });
    w.feed(Input::Forked {
        entry: A,
        child: seen(2, 2),
    });
    w.feed(Input::Scanned {
        took: Duration::ZERO,
        started: w.now,
        found: vec![vec![seen(3, 3)]],
    });
    assert_eq!(w.m.member_tgids().count(), 0);
}

/// The state is one value: it serialises and comes back the same.
#[test]
fn the_state_round_trips_through_json() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    let saved = serde_json::to_string(&w.m).unwrap();
    let mut back: Monitor = serde_json::from_str(&saved).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), saved);
    // With its configuration given again, it carries on where it was.
    back.handle(Input::Reload(Box::new(config(vec![entry("/d")]))), w.now);
    assert_eq!(back.phase(A), Phase::Restarting);
    let out = back.handle(
        Input::Execd {
            tgid: 101,
            matched: Some((A, seen(101, 6))),
        },
        w.now,
    );
    assert!(out.contains(&Effect::Notice(Notice::Policy {
        entry: A,
        action: up(101),
        running: 1
    })));
}

/// A paused pfile's deaths are neither reported nor restarted; resume
/// looks afresh, and a death meanwhile is then a Down and a restart.
#[test]
fn pause_holds_everything_and_resume_looks_again() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Pause {
        pfile: "app".into(),
    });
    assert!(w.out.contains(&Effect::Notice(Notice::Operator {
        what: "stop",
        pfile: "app".into()
    })));
    assert!(
        w.exit(100, 5, KILLED).is_empty(),
        "paused: nothing said or done"
    );
    assert!(w.runs().is_empty());
    assert_eq!(w.m.status(w.now)[0].state, "paused");
    assert_eq!(w.m.next_deadline(w.now), None);
    w.feed(Input::Resume {
        pfile: "app".into(),
    });
    assert_eq!(
        w.actions(),
        vec![
            Action::ReportDown {
                pid: None,
                status: ExitStatus::Unknown
            },
            Action::RestartUncounted {
                why: Uncounted::FoundDown
            }
        ]
    );
    assert_eq!(w.runs().len(), 1);
}

/// A paused process still running is simply Up again on resume.
#[test]
fn resume_of_a_process_still_running_is_up() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Pause {
        pfile: "app".into(),
    });
    w.feed(Input::Resume {
        pfile: "app".into(),
    });
    assert_eq!(w.actions(), vec![up(100)]);
}

/// The drill's restart is not counted against the budget; later ones are.
#[test]
fn a_drill_restart_is_not_counted() {
    let mut e = entry("/d");
    e.retry = 1;
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Drill { entry: A });
    w.exit(100, 5, KILLED);
    assert_eq!(w.runs().len(), 1);
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    w.feed(Input::DrillEnd { entry: A });
    assert_eq!(w.m.status(w.now)[0].attempts, 0);
    // A real death spends the one attempt there is.
    w.exit(101, 6, KILLED);
    assert_eq!(w.runs().len(), 1);
    assert_eq!(w.m.status(w.now)[0].attempts, 1);
}

/// Taken over by a restarted psmon: members are watched again; a restart
/// command that was running is waited for, not run again; one decided but
/// never started counts as failed and is tried again; entries no longer
/// configured are let go.
#[test]
fn restore_watches_members_and_waits_for_a_running_command() {
    let mut w = World::started(
        vec![entry("/a"), entry("/b"), entry("/c")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 6)], vec![seen(300, 7)]],
    );
    w.exit(100, 5, KILLED); // /a restarting, its command started:
    w.feed(Input::CommandStarted {
        path: "/a".into(),
        job: Job::Restart,
        pgid: 4242,
    });
    w.exit(200, 6, KILLED); // /b restarting, psmon died before its command
    let saved: Monitor = serde_json::from_str(&serde_json::to_string(&w.m).unwrap()).unwrap();
    let (m, out) = Monitor::restore(saved, config(vec![entry("/a"), entry("/b")]), true);
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::AwaitCommand { path, pgid: 4242, timeout, .. }
            if path.as_path() == std::path::Path::new("/a") && *timeout == entry("/a").restart_timeout
    )));
    let failed_then_retried = out.iter().any(|e| {
        matches!(
            e,
            Effect::Notice(Notice::Policy {
                entry: B,
                action: Action::ReportSetPidFail {
                    why: SetPidFail::CommandFailed
                },
                ..
            })
        )
    }) && out
        .iter()
        .any(|e| matches!(e, Effect::Run(r) if r.path == std::path::Path::new("/b")));
    assert!(failed_then_retried, "{out:?}");
    assert!(
        !out.iter()
            .any(|e| matches!(e, Effect::Run(r) if r.path == std::path::Path::new("/a")))
    );
    // /c is not configured now: its member is let go.
    assert_eq!(m.member_entry(300), None);
    assert_eq!(m.entry_count(), 2);
    let mut w = World { m, now: w.now, out };
    // The waited-for command ends; the process it started comes up.
    let outcome = CommandOutcome {
        ending: Ending::Adopted,
        elapsed: Duration::from_millis(500),
        output_tail: String::new(),
    };
    w.feed(Input::CommandDone {
        path: "/a".into(),
        job: Job::Restart,
        outcome,
    });
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 8))),
    });
    assert_eq!(w.actions(), vec![up(101)]);
    assert_eq!(
        w.m.status(w.now)[0].attempts,
        1,
        "the budget is the one saved"
    );
}

/// Restored under the same entries (no entry added, removed or moved):
/// a command's end still finds its entry by path.
#[test]
fn restored_under_the_same_entries_a_command_end_finds_its_entry() {
    let mut w = World::started(vec![entry("/a")], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.feed(Input::CommandStarted {
        path: "/a".into(),
        job: Job::Restart,
        pgid: 4242,
    });
    let saved: Monitor = serde_json::from_str(&serde_json::to_string(&w.m).unwrap()).unwrap();
    let (m, out) = Monitor::restore(saved, config(vec![entry("/a")]), true);
    let mut w = World { m, now: w.now, out };
    let ended = w.feed(Input::CommandDone {
        path: "/a".into(),
        job: Job::Restart,
        outcome: CommandOutcome {
            ending: Ending::TimedOut,
            elapsed: Duration::from_secs(4),
            output_tail: String::new(),
        },
    });
    assert!(
        ended.iter().any(|e| matches!(e, Effect::Notice(_))),
        "{ended:?}"
    );
}

/// Status says failed_over once the failover command ran.
#[test]
fn status_says_failed_over() {
    let mut e = entry("/d");
    e.retry = 1;
    e.action = OnRetryOver::Switch;
    e.failover = Some("move it".into());
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.done("/d", false);
    assert!(w.runs().iter().any(|r| r.job == Job::Failover));
    let status = &w.m.status(w.now)[0];
    assert_eq!(status.state, "failed_over");
    assert_eq!(status.last_failure, Some(SetPidFail::CommandFailed));
    assert_eq!(status.last_down, Some((Some(100), KILLED)));
}

/// The status read-model is the monitor as it was when taken: what
/// happens after (a death, a restart) changes the monitor, not the model
/// a reply is being built from, and the model says the same as the
/// monitor did at that moment.
#[test]
fn a_status_model_is_the_monitor_as_it_was() {
    let mut w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 6)]],
    );
    let before = w.m.status(w.now);
    let model = w.m.status_model();
    assert_eq!(model.status(w.now), before);
    w.exit(100, 5, KILLED);
    let after = w.m.status(w.now);
    assert_ne!(after[0].state, "up", "{after:?}");
    assert_eq!(after[0].last_down, Some((Some(100), KILLED)));
    assert_eq!(model.status(w.now), before);
    assert_eq!(model.status(w.now)[0].state, "up");
    assert_eq!(model.status(w.now)[0].instances, vec![(100, 5)]);
    assert_eq!(w.m.status_model().status(w.now), after);
}

/// A probe is due every interval while Up; no good answer `failures`
/// times in a row is a hang: said, the process killed, and its Down then
/// says so (report's business; here `hung()` names it). A slow answer is
/// a warning; failures within start_grace are not judged.
#[test]
fn probes_judge_hangs() {
    use crate::config::{Probe, ProbeKind};
    let mut e = entry("/d");
    let mut probe = Probe::new(ProbeKind::Tcp {
        address: "127.0.0.1:1".into(),
    });
    probe.interval = Duration::from_secs(1);
    probe.warn = Duration::from_millis(100);
    probe.failures = 2;
    probe.start_grace = Duration::from_secs(5);
    e.probe = Some(Box::new(probe));
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    let probed = |w: &World| {
        w.out
            .iter()
            .any(|e| matches!(e, Effect::Probe { pid: 100, .. }))
    };
    assert_eq!(
        w.m.next_deadline(w.now),
        Some(w.now + Duration::from_secs(1))
    );
    w.tick();
    assert!(probed(&w), "{:?}", w.out);
    assert_eq!(
        w.m.next_deadline(w.now),
        None,
        "one probe in flight at a time"
    );
    // Within start_grace: a failure is not judged.
    w.feed(Input::Probed {
        entry: A,
        pid: 100,
        result: Err("timed out".into()),
    });
    assert!(w.out.is_empty(), "{:?}", w.out);
    w.later(5000);
    w.tick();
    w.feed(Input::Probed {
        entry: A,
        pid: 100,
        result: Ok(Duration::from_millis(300)),
    });
    assert!(matches!(
        w.out[..],
        [Effect::Notice(Notice::ProbeSlow { pid: 100, .. })]
    ));
    for n in 0..2 {
        w.tick();
        assert!(probed(&w));
        w.feed(Input::Probed {
            entry: A,
            pid: 100,
            result: Err("connecting failed".into()),
        });
        if n == 0 {
            assert!(w.out.is_empty(), "one failure of two: {:?}", w.out);
        }
    }
    assert!(
        w.out
            .iter()
            .any(|e| matches!(e, Effect::Notice(Notice::Hung { pid: 100, .. })))
    );
    assert!(w.out.contains(&Effect::Kill {
        tgid: 100,
        start: 5,
        grace: Duration::from_secs(5),
    }));
    assert_eq!(w.m.hung(A), Some(100));
    assert_eq!(
        w.m.next_deadline(w.now),
        None,
        "no probing a process being killed"
    );
    // It dies of the kill: an ordinary Down and restart.
    let actions = w.exit(
        100,
        5,
        ExitStatus::Signal {
            signal: 15,
            core_dumped: false,
        },
    );
    assert_eq!(actions.len(), 2, "{actions:?}");
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    assert_eq!(w.m.hung(A), None, "Up again");
    assert_eq!(
        w.m.next_deadline(w.now),
        Some(w.now + Duration::from_secs(1))
    );
    // Paused: not probed.
    w.feed(Input::Pause {
        pfile: "app".into(),
    });
    w.later(2000);
    w.feed(Input::Tick);
    assert!(!w.out.iter().any(|e| matches!(e, Effect::Probe { .. })));
}

mod failover;
mod group;

#[test]
fn a_notify_probe_wants_keepalives_only_from_what_psmon_started() {
    use crate::config::{Probe, ProbeKind};
    let mut e = entry("/d");
    let mut probe = Probe::new(ProbeKind::Notify);
    probe.timeout = Duration::from_secs(2);
    probe.start_grace = Duration::ZERO;
    e.probe = Some(Box::new(probe));
    // Running before psmon: it has no socket, so it is not judged.
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    assert_eq!(w.m.next_deadline(w.now), None);
    w.exit(100, 5, KILLED);
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    let up = w.now;
    assert_eq!(w.m.next_deadline(w.now), Some(up + Duration::from_secs(2)));
    // A keep-alive from another process is not its.
    w.later(1500);
    w.feed(Input::Notified {
        path: "/d".into(),
        pid: 999,
        ready: false,
        watchdog: true,
    });
    assert_eq!(w.m.next_deadline(w.now), Some(up + Duration::from_secs(2)));
    w.feed(Input::Notified {
        path: "/d".into(),
        pid: 101,
        ready: false,
        watchdog: true,
    });
    assert_eq!(
        w.m.next_deadline(w.now),
        Some(w.now + Duration::from_secs(2))
    );
    w.tick();
    assert!(
        w.out.iter().any(|e| matches!(
            e,
            Effect::Notice(Notice::Hung { pid: 101, why, .. }) if why.contains("WATCHDOG=1")
        )),
        "{:?}",
        w.out
    );
    assert!(
        w.out
            .iter()
            .any(|e| matches!(e, Effect::Kill { tgid: 101, .. }))
    );
    assert!(
        !w.out.iter().any(|e| matches!(e, Effect::Probe { .. })),
        "a notify probe is never asked"
    );
}

#[test]
fn a_down_carries_the_cause_the_kernel_gave() {
    use crate::{event::Sender, facts::Cause};
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    let sender = Sender {
        pid: 4242,
        uid: 1000,
        comm: "kill".into(),
        parent: Some((4100, "bash".into())),
        grandparent: None,
    };
    // A SIGTERM it survived (handled), then the SIGKILL it died of.
    for signal in [15, 9] {
        w.feed(Input::Signalled {
            tgid: 100,
            cause: Cause::Sent {
                signal,
                sender: sender.clone(),
            },
        });
    }
    // Another process's signal is not remembered.
    w.feed(Input::Signalled {
        tgid: 555,
        cause: Cause::Kernel { signal: 11 },
    });
    w.exit(100, 5, KILLED);
    let cause = w.m.cause(A, 100).expect("a cause");
    assert_eq!(
        cause.describe(KILLED),
        "signal 9 from pid 4242 'kill' uid 1000, parent 'bash' pid 4100"
    );
    let env: HashMap<_, _> = w.runs()[0].env.iter().cloned().collect();
    assert_eq!(env["PSMON_KILLER_PID"], "4242");
    assert_eq!(env["PSMON_KILLER_COMM"], "kill");
    assert_eq!(env["PSMON_KILLER_UID"], "1000");
    assert!(env["PSMON_CAUSE"].starts_with("signal 9 from pid 4242"));
    assert!(w.m.causes.is_empty(), "forgotten with the member");
    // A death by another signal than the one seen: no cause claimed.
    w.done("/d", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((A, seen(101, 6))),
    });
    w.feed(Input::Signalled {
        tgid: 101,
        cause: Cause::Sent { signal: 15, sender },
    });
    w.exit(101, 6, KILLED);
    assert_eq!(w.m.cause(A, 101), None);
}

#[test]
fn a_pidfd_exit_waits_for_the_cause_when_the_source_tells_senders() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::SourceOpened {
        name: "ebpf".into(),
        kernel_filter: true,
        exit_lag: Duration::ZERO,
        cause_unknown: None,
    });
    // The pidfd wins the race with the ring: its status alone is held back.
    w.feed(Input::ExitSeen {
        tgid: 100,
        start: 5,
        zombie: Some(KILLED),
    });
    assert!(w.actions().is_empty(), "{:?}", w.out);
    w.feed(Input::Signalled {
        tgid: 100,
        cause: crate::facts::Cause::Kernel { signal: 9 },
    });
    let actions = w.exit(100, 5, KILLED);
    assert!(
        matches!(actions[0], Action::ReportDown { .. }),
        "{actions:?}"
    );
    assert!(w.m.cause(A, 100).is_some());
}

fn seen_as(tgid: u32, start_ticks: u64, uid: u32) -> Seen {
    Seen {
        uid,
        ..seen(tgid, start_ticks)
    }
}

/// Another user's copy of the program is no instance: root's instance
/// dies → Down, whatever the copy does.
#[test]
fn another_users_copy_does_not_keep_the_entry_up() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen_as(100, 5, 0)]]);
    assert_eq!(w.actions(), vec![up(100)]);
    w.later(10);
    w.feed(Input::Execd {
        tgid: 200,
        matched: Some((EntryId(0), seen_as(200, 9, 65534))),
    });
    assert_eq!(w.m.running(EntryId(0)), 1, "the copy is not counted");
    assert!(w.m.member_entry(200).is_none());
    let actions = w.exit(100, 5, KILLED);
    assert!(
        matches!(actions.first(), Some(Action::ReportDown { .. })),
        "{actions:?}"
    );
    // A later scan while it is down does not take the copy either.
    let started = w.now;
    w.later(5);
    w.feed(Input::Scanned {
        started,
        took: Duration::ZERO,
        found: vec![vec![seen_as(200, 9, 65534)]],
    });
    assert!(w.m.member_entry(200).is_none());
}

/// A service running as its own user: the user is learned from it, root
/// processes always count, and `user = "any"` / a uid say it outright.
#[test]
fn the_owner_is_learned_or_configured() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen_as(100, 5, 998)]]);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((EntryId(0), seen_as(101, 6, 998))),
    });
    w.feed(Input::Execd {
        tgid: 102,
        matched: Some((EntryId(0), seen_as(102, 7, 0))),
    });
    w.feed(Input::Execd {
        tgid: 103,
        matched: Some((EntryId(0), seen_as(103, 8, 1000))),
    });
    assert_eq!(w.m.running(EntryId(0)), 3);

    let mut any = entry("/d");
    any.owner = crate::config::Owner::Any;
    let mut pinned = entry("/e");
    pinned.owner = crate::config::Owner::Uid(1000);
    let w = World::started(
        vec![any, pinned],
        true,
        vec![
            vec![seen_as(100, 5, 998), seen_as(101, 5, 1000)],
            vec![seen_as(200, 5, 998), seen_as(201, 5, 1000)],
        ],
    );
    assert_eq!(w.m.running(EntryId(0)), 2);
    assert_eq!(w.m.running(EntryId(1)), 1);
    assert!(w.m.member_entry(200).is_none());
}

/// Saved members are classified afresh at take-over: one that exec'd
/// another program, or a bystander whose pid was written into the state,
/// is no instance (the entry is Down and restarted), and one still right
/// stays without a restart.
#[test]
fn saved_members_are_verified_at_take_over() {
    let w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 6)]],
    );
    let saved: Monitor = serde_json::from_str(&serde_json::to_string(&w.m).unwrap()).unwrap();
    let (m, out) = Monitor::restore(saved, config(vec![entry("/a"), entry("/b")]), true);
    let asked = out.iter().find_map(|e| match e {
        Effect::Verify { tgids } => Some(tgids.clone()),
        _ => None,
    });
    let mut asked = asked.expect("the saved members are verified");
    asked.sort_unstable();
    assert_eq!(asked, vec![100, 200]);
    let mut w = World { m, now: w.now, out };
    w.later(10);
    w.feed(Input::Verified {
        found: vec![(100, Some((EntryId(0), seen(100, 5)))), (200, None)],
    });
    let actions = w.actions();
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::ReportDown { pid: Some(200), .. },
                Action::Restart { .. }
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(w.m.member_entry(100), Some(EntryId(0)));
    assert!(w.m.member_entry(200).is_none());
}

fn child_of(parent: u32, tgid: u32, start_ticks: u64) -> Seen {
    Seen {
        ppid: parent,
        ..seen(tgid, start_ticks)
    }
}

/// A process an instance forks is a worker: it never keeps the entry up,
/// orphaned or not (sshd's logged-in sessions, a master's workers).
#[test]
fn a_forked_worker_does_not_keep_the_entry_up() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Forked {
        entry: A,
        child: child_of(100, 101, 6),
    });
    // A worker's worker, forked after its parent was orphaned.
    w.feed(Input::Forked {
        entry: A,
        child: child_of(101, 102, 7),
    });
    assert_eq!(w.m.running(A), 1);
    assert!(
        w.exit(101, 6, KILLED).is_empty(),
        "a worker's end is nothing"
    );
    assert_eq!(
        w.exit(100, 5, KILLED),
        vec![
            Action::ReportDown {
                pid: Some(100),
                status: KILLED
            },
            Action::Restart { attempt: 1 }
        ]
    );
    assert_eq!(w.m.member_entry(102), Some(A), "still watched, as a worker");
    assert_eq!(w.m.running(A), 0);
}

/// Found at start, a process whose parent is another of them is a worker.
#[test]
fn a_worker_found_at_start_is_judged_by_its_ancestry() {
    let found = vec![vec![child_of(100, 101, 6), seen(100, 5)]];
    let mut w = World::started(vec![entry("/d")], true, found);
    assert_eq!(w.actions(), vec![up(100)]);
    assert_eq!(w.m.running(A), 1);
    assert_eq!(w.exit(100, 5, KILLED)[0], {
        Action::ReportDown {
            pid: Some(100),
            status: KILLED,
        }
    });
}

/// `count = "all"`: every matching process counts, workers too.
#[test]
fn count_all_counts_workers() {
    let mut e = entry("/d");
    e.rule = Rule::All;
    let found = vec![vec![seen(100, 5), child_of(100, 101, 6)]];
    let mut w = World::started(vec![e], true, found);
    assert_eq!(w.m.running(A), 2);
    assert!(w.exit(100, 5, KILLED).is_empty(), "the worker keeps it up");
}

/// A daemon that detaches: the process the restart started forks the
/// real one and exits 0 within start_secs. That is no failed start: the
/// child takes over, and is the one reported Up.
#[test]
fn a_detaching_daemon_hands_over_to_its_child() {
    let mut e = entry("/d");
    e.start_secs = Duration::from_secs(1);
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.later(5);
    w.feed(Input::Execd {
        tgid: 200,
        matched: Some((A, seen(200, 7))),
    });
    assert_eq!(w.actions(), vec![Action::ReportStarted { pid: Some(200) }]);
    w.later(2);
    w.feed(Input::Forked {
        entry: A,
        child: child_of(200, 201, 8),
    });
    // Its own worker, forked before the hand-over.
    w.feed(Input::Forked {
        entry: A,
        child: child_of(201, 202, 9),
    });
    w.later(1);
    w.feed(Input::Exited {
        tgid: 200,
        start: Some(7),
        status: ExitStatus::Code(0),
    });
    assert!(
        !w.actions()
            .iter()
            .any(|a| matches!(a, Action::ReportSetPidFail { .. })),
        "{:?}",
        w.out
    );
    w.done("/d", true);
    assert_eq!(w.m.running(A), 1);
    w.later(1_100);
    w.feed(Input::Tick);
    assert_eq!(w.actions(), vec![up(201)]);
    assert_eq!(w.m.running(A), 1, "its worker is not an instance");
}

/// A process that exits 0 long after it started did not detach: the
/// children it leaves are workers, and its end is a death.
#[test]
fn a_late_clean_exit_is_no_hand_over() {
    let mut w = World::started(vec![entry("/d")], true, vec![vec![seen(100, 5)]]);
    w.feed(Input::Forked {
        entry: A,
        child: child_of(100, 101, 6),
    });
    w.later(5_000);
    let actions = w.exit(100, 5, ExitStatus::Code(0));
    assert!(
        matches!(actions[0], Action::ReportDown { pid: Some(100), .. }),
        "{actions:?}"
    );
}

/// Just started, an instance that execs a program that is not the entry's
/// (a wrapper's `exec python3 -m http.server`, dovecot's exec through
/// doveconf and back) is still the instance: followed until it exits.
#[test]
fn a_wrapper_that_execs_its_service_is_followed() {
    let mut e = entry("/d");
    e.start_secs = Duration::from_secs(1);
    let mut w = World::started(vec![e], true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.feed(Input::Execd {
        tgid: 200,
        matched: Some((A, seen(200, 7))),
    });
    w.later(3);
    w.feed(Input::Execd {
        tgid: 200,
        matched: None,
    });
    assert!(w.actions().is_empty(), "{:?}", w.out);
    assert_eq!(w.m.member_entry(200), Some(A));
    w.done("/d", true);
    w.later(1_100);
    w.feed(Input::Tick);
    assert_eq!(w.actions(), vec![up(200)]);
    let actions = w.exit(200, 7, KILLED);
    assert!(
        matches!(actions[0], Action::ReportDown { pid: Some(200), .. }),
        "{actions:?}"
    );
}

/// A snapshot is written as the monitor was when it was taken (the state
/// file loads it as a monitor), whatever changes after it; written as the
/// changes since the one before, it gives the same monitor once applied,
/// and holds only what changed.
/// A reload with the same entries in the same order and one setting
/// changed: every entry keeps its state, members and budget; the entry
/// whose setting changed has it; and no entry is copied, so the save after
/// the reload writes none of them.
#[test]
fn a_reload_of_the_same_entries_copies_none() {
    let mut w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 7)]],
    );
    w.exit(100, 5, KILLED);
    w.done("/a", true);
    w.feed(Input::Execd {
        tgid: 101,
        matched: Some((EntryId(0), seen(101, 8))),
    });
    let mut writer = SnapshotWriter::default();
    writer
        .write(w.m.snapshot(), false, &mut Vec::new())
        .unwrap();
    let before = w.m.status(w.now);
    let mut b = entry("/b");
    b.retry = 7;
    w.feed(Input::Reload(Box::new(config(vec![entry("/a"), b]))));
    assert!(w.out.contains(&Effect::Scan));
    let after = w.m.status(w.now);
    assert_eq!(after[0], before[0], "an unchanged entry keeps everything");
    assert_eq!(after[0].attempts, 1);
    assert_eq!(after[1].retry, 7);
    assert_eq!(after[1].instances, before[1].instances);
    assert_eq!(w.m.member_entry(101), Some(EntryId(0)));
    assert_eq!(w.m.member_entry(200), Some(EntryId(1)));
    let mut record = Vec::new();
    assert_eq!(
        writer.write(w.m.snapshot(), false, &mut record).unwrap(),
        Form::Changes
    );
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["watches"], serde_json::json!([]), "{record}");
    // Moved to another pfile: that entry is copied, the other is not.
    let mut other = config(vec![entry("/a"), entry("/b")]);
    other.pfiles[0].name = "renamed".into();
    w.feed(Input::Reload(Box::new(other)));
    assert_eq!(w.m.pfile(EntryId(0)), "renamed");
}

#[test]
fn a_snapshot_is_the_monitor_as_it_was() {
    let whole = |snap: Snapshot| {
        let mut out = Vec::new();
        let form = SnapshotWriter::default().write(snap, false, &mut out);
        assert_eq!(form.unwrap(), Form::Whole);
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()
    };
    let mut w = World::started(
        vec![entry("/a"), entry("/b")],
        true,
        vec![vec![seen(100, 5)], vec![seen(200, 7)]],
    );
    let mut writer = SnapshotWriter::default();
    let snap = w.m.snapshot();
    let before = serde_json::to_value(&w.m).unwrap();
    let mut base = Vec::new();
    assert_eq!(writer.write(snap, false, &mut base).unwrap(), Form::Whole);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&base).unwrap(),
        before
    );
    let snap = w.m.snapshot();
    w.exit(100, 5, KILLED);
    let after = serde_json::to_value(&w.m).unwrap();
    assert_ne!(after, before);
    assert_eq!(whole(snap), before);
    assert_eq!(whole(w.m.snapshot()), after);

    let mut record = Vec::new();
    let form = writer.write(w.m.snapshot(), false, &mut record).unwrap();
    assert_eq!(form, Form::Changes);
    let text = String::from_utf8(record.clone()).unwrap();
    // Entry 0 changed and entry 1 did not; pid 100's shard changed.
    assert!(text.starts_with(r#"{"watches":[[0,{"#), "{text}");
    assert!(!text.contains(r#"[1,{"pfile""#), "{text}");
    assert!(text.contains(r#""members":[[100,{}]]"#), "{text}");
    let mut back: Monitor = serde_json::from_slice(&base).unwrap();
    back.apply(serde_json::from_slice(&record).unwrap())
        .unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), after);
    // Nothing changed since: a record of nothing.
    let mut empty = Vec::new();
    writer.write(w.m.snapshot(), false, &mut empty).unwrap();
    let empty: serde_json::Value = serde_json::from_slice(&empty).unwrap();
    for table in ["watches", "members", "gone", "missed", "causes"] {
        assert_eq!(empty[table], serde_json::json!([]), "{table}");
    }
    // A record that does not fit changes nothing.
    let mut bad: serde_json::Value = serde_json::from_slice(&record).unwrap();
    bad["members"] = serde_json::json!([[3, {"200": before["members"]["200"]}]]);
    assert!(back.apply(serde_json::from_value(bad).unwrap()).is_err());
    let mut far: serde_json::Value = serde_json::from_slice(&record).unwrap();
    far["watches"][0][0] = 9.into();
    assert!(back.apply(serde_json::from_value(far).unwrap()).is_err());
    assert_eq!(serde_json::to_value(&back).unwrap(), after);
    // A scan that finds what runs changes no entry: none is copied, so
    // the next save serialises none again.
    let snap = w.m.snapshot();
    let started = w.now;
    w.later(1000);
    let found = vec![vec![], vec![seen(200, 7)]];
    w.feed(Input::Scanned {
        started,
        took: Duration::ZERO,
        found,
    });
    assert_eq!(snap.watches.shared_with(&w.m.watches), 2);
    let back: Monitor = serde_json::from_value(after).unwrap();
    assert_eq!(back.members.len(), 1);
    assert_eq!(back.watches[0].state.phase, w.m.watches[0].state.phase);
    assert_eq!(back.watches[1].state.phase, Phase::Up);
}
