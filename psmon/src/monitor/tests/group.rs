//! Restart groups, driven by made-up inputs and clock.

use super::*;
use crate::config::{Group, Probe, ProbeKind};

const C: EntryId = EntryId(2);

fn group(restarts: u32, action: OnRetryOver) -> Group {
    Group {
        name: "store".into(),
        members: vec!["/a".into(), "/b".into(), "/c".into()],
        restarts,
        window: Duration::from_secs(600),
        action,
        start_timeout: Duration::from_secs(60),
        kill_grace: Duration::from_secs(5),
        failover_choice: Default::default(),
        failover: None,
        line: 1,
        member_cols: vec![(1, 1); 3],
    }
}

/// Members /a /b /c running as 100, 200, 300 (start ticks 1).
fn store(g: Group, entries: Vec<Entry>) -> World {
    let mut config = config(entries);
    config.pfiles[0].groups.push(g);
    config.agent.failover_command = Some("move-away".into());
    World::started_with(config, true, running())
}

/// /a /b /c running as 100, 200, 300.
fn running() -> Vec<Vec<Seen>> {
    vec![vec![seen(100, 1)], vec![seen(200, 1)], vec![seen(300, 1)]]
}

fn three() -> Vec<Entry> {
    vec![entry("/a"), entry("/b"), entry("/c")]
}

fn events(w: &World) -> Vec<GroupEvent> {
    w.out
        .iter()
        .filter_map(|e| match e {
            Effect::Notice(Notice::Group { event, .. }) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn kills(w: &World) -> Vec<u32> {
    w.out
        .iter()
        .filter_map(|e| match e {
            Effect::Kill { tgid, .. } => Some(*tgid),
            _ => None,
        })
        .collect()
}

fn run_commands(w: &World) -> Vec<(String, Job)> {
    w.runs()
        .iter()
        .map(|r| (r.command.clone(), r.job))
        .collect()
}

/// Every member is stopped: the group awaits the reaping of `tgids` (the
/// one that died, then those it stopped) before the first starts.
fn reaped(w: &mut World, tgids: &[u32]) {
    assert!(w.runs().is_empty(), "nothing starts before the reaping");
    assert!(
        w.out.contains(&Effect::AwaitReaped {
            path: "/a".into(),
            tgids: tgids.to_vec(),
            pgid: None,
        }),
        "{:?}",
        w.out
    );
    w.feed(Input::Reaped {
        path: "/a".into(),
        stopped: None,
    });
}

/// The member's process appears after its restart command.
fn appears(w: &mut World, id: EntryId, tgid: u32) {
    w.feed(Input::Execd {
        tgid,
        matched: Some((id, seen(tgid, 2))),
    });
}

#[test]
fn a_killed_middle_member_stops_in_reverse_and_starts_in_order() {
    let mut w = store(group(2, OnRetryOver::Continue), three());
    assert!(events(&w).is_empty(), "all up: {:?}", w.out);

    w.exit(200, 1, KILLED);
    assert!(w.actions().contains(&Action::ReportDown {
        pid: Some(200),
        status: KILLED
    }));
    assert!(
        !w.actions()
            .iter()
            .any(|a| matches!(a, Action::Restart { .. })),
        "the member's own restart is the group's: {:?}",
        w.actions()
    );
    let ev = events(&w);
    assert!(matches!(
        ev[0],
        GroupEvent::Restarting {
            cause: B,
            attempt: 1,
            why: GroupWhy::Failure
        }
    ));
    assert_eq!(
        ev[1],
        GroupEvent::Stopping {
            entry: C,
            pids: vec![300]
        }
    );
    assert_eq!(kills(&w), vec![300], "the last member first");
    assert!(w.runs().is_empty());
    let status = w.m.status(w.now);
    assert!(status.iter().all(|s| s.state == "restarting"), "{status:?}");

    w.exit(300, 1, KILLED);
    assert!(w.actions().is_empty(), "a held member is not reported");
    assert_eq!(kills(&w), vec![100], "then the first (the second is down)");
    w.exit(100, 1, KILLED);
    reaped(&mut w, &[200, 300, 100]);
    assert_eq!(
        events(&w),
        vec![GroupEvent::Starting { entry: A }],
        "all stopped: start the first"
    );
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].command, "start /a");
    let env: HashMap<_, _> = runs[0].env.iter().cloned().collect();
    assert_eq!(env["PSMON_GROUP"], "store");

    w.later(10);
    w.done("/a", true);
    assert!(w.runs().is_empty(), "/b waits for /a");
    appears(&mut w, A, 101);
    assert_eq!(
        events(&w),
        vec![
            GroupEvent::Ready {
                entry: A,
                pid: Some(101)
            },
            GroupEvent::Starting { entry: B }
        ]
    );
    assert_eq!(run_commands(&w), vec![("start /b".into(), Job::Restart)]);
    w.done("/b", true);
    appears(&mut w, B, 201);
    assert_eq!(run_commands(&w), vec![("start /c".into(), Job::Restart)]);
    w.later(20);
    w.done("/c", true);
    appears(&mut w, C, 301);
    let ev = events(&w);
    assert_eq!(
        ev.last(),
        Some(&GroupEvent::Restarted {
            took: Duration::from_millis(30)
        })
    );
    let status = w.m.status(w.now);
    assert!(status.iter().all(|s| s.state == "up"), "{status:?}");
    assert_eq!(w.m.next_deadline(w.now), None, "idle again");
    // Every member's own budget is untouched.
    assert!(status.iter().all(|s| s.attempts == 0), "{status:?}");
}

#[test]
fn a_member_that_does_not_start_leaves_later_ones_unstarted() {
    let mut w = store(group(1, OnRetryOver::Continue), three());
    // Stop all (the first killed is the cause).
    w.exit(100, 1, KILLED);
    w.exit(300, 1, KILLED);
    w.exit(200, 1, KILLED);
    reaped(&mut w, &[100, 300, 200]);
    assert_eq!(run_commands(&w), vec![("start /a".into(), Job::Restart)]);
    w.done("/a", true);
    appears(&mut w, A, 101);
    assert_eq!(run_commands(&w), vec![("start /b".into(), Job::Restart)]);
    // /b's command fails: /c is not started, the attempt failed, and the
    // budget (1) is spent.
    w.done("/b", false);
    let ev = events(&w);
    assert!(
        matches!(&ev[0], GroupEvent::StartFailed { entry: B, left, .. } if left == &vec![C]),
        "{ev:?}"
    );
    assert!(matches!(ev[1], GroupEvent::RetryOver { restarts: 1, .. }));
    assert!(w.runs().is_empty(), "continue: nothing more is run");
    let states: Vec<&str> = w.m.status(w.now).iter().map(|s| s.state).collect();
    assert_eq!(states, vec!["up", "down", "down"]);
    assert_eq!(w.m.next_deadline(w.now), None);
    // /b and /c come back by other means: the group is re-armed.
    appears(&mut w, B, 202);
    appears(&mut w, C, 302);
    assert_eq!(events(&w), vec![GroupEvent::UpAgain]);
    w.exit(101, 2, KILLED);
    assert!(matches!(
        events(&w)[0],
        GroupEvent::Restarting { attempt: 1, .. }
    ));
}

#[test]
fn a_start_that_times_out_fails_the_attempt_and_tries_again() {
    let mut g = group(2, OnRetryOver::Continue);
    g.start_timeout = Duration::from_secs(3);
    let mut entries = three();
    entries[0].start_wait = Duration::from_secs(60);
    let mut w = store(g, entries);
    w.exit(100, 1, KILLED);
    w.exit(300, 1, KILLED);
    w.exit(200, 1, KILLED);
    reaped(&mut w, &[100, 300, 200]);
    w.done("/a", true);
    // /a never appears: a scan looks for it, and its group gives up on it
    // after start_timeout.
    w.tick();
    assert!(w.out.contains(&Effect::Scan));
    w.tick();
    let ev = events(&w);
    assert!(
        matches!(
            &ev[0],
            GroupEvent::StartFailed {
                entry: A,
                why: StartFailure::Timeout { up: false, within },
                ..
            } if *within == Duration::from_secs(3)
        ),
        "{ev:?}"
    );
    assert!(matches!(ev[1], GroupEvent::Restarting { attempt: 2, .. }));
    assert_eq!(run_commands(&w), vec![("start /a".into(), Job::Restart)]);
}

#[test]
fn the_third_failure_in_the_window_switches_once() {
    let mut w = store(group(2, OnRetryOver::Switch), three());
    let mut failovers = 0;
    let mut pid = 1000;
    for round in 0..3 {
        // /c dies; the others are stopped and all are started again.
        let c = w.m.main_instance(C).expect("/c runs").0;
        let start = w.m.status(w.now)[2].instances[0].1;
        w.exit(c, start, KILLED);
        failovers += run_commands(&w)
            .iter()
            .filter(|(_, job)| *job == Job::Failover)
            .count();
        if round == 2 {
            let env: HashMap<_, _> = w.runs()[0].env.iter().cloned().collect();
            assert_eq!(env["PSMON_PATH"], "/c");
            assert_eq!(env["PSMON_GROUP"], "store");
            assert_eq!(
                w.m.status(w.now)[2].state,
                "down",
                "retry over: reported, not restarted"
            );
            // Another member dies meanwhile: reported, no second switch.
            let (b, start) = w.m.main_instance(B).unwrap();
            w.exit(b, start, KILLED);
            assert!(w.runs().is_empty() && events(&w).is_empty(), "{:?}", w.out);
            // Back by other means: once every member is Up, re-armed.
            pid += 1;
            appears(&mut w, C, pid);
            assert!(events(&w).is_empty());
            pid += 1;
            appears(&mut w, B, pid);
            assert_eq!(events(&w), vec![GroupEvent::UpAgain]);
            break;
        }
        let mut dead = vec![c];
        for id in [B, A] {
            let (tgid, start) = w.m.main_instance(id).unwrap();
            assert_eq!(kills(&w), vec![tgid], "round {round}");
            w.exit(tgid, start, KILLED);
            dead.push(tgid);
        }
        reaped(&mut w, &dead);
        for (id, path) in [(A, "/a"), (B, "/b"), (C, "/c")] {
            w.done(path, true);
            pid += 1;
            appears(&mut w, id, pid);
        }
        assert!(matches!(
            events(&w).last(),
            Some(GroupEvent::Restarted { .. })
        ));
        w.later(1000);
    }
    assert_eq!(failovers, 1, "switch exactly once");
}

#[test]
fn a_member_with_a_probe_is_ready_when_it_answers() {
    let mut entries = three();
    let mut probe = Probe::new(ProbeKind::Tcp {
        address: "127.0.0.1:1".into(),
    });
    probe.interval = Duration::from_secs(10);
    entries[0].probe = Some(Box::new(probe));
    let mut w = store(group(2, OnRetryOver::Continue), entries);
    w.exit(100, 1, KILLED);
    w.exit(300, 1, KILLED);
    w.exit(200, 1, KILLED);
    reaped(&mut w, &[100, 300, 200]);
    w.done("/a", true);
    appears(&mut w, A, 101);
    assert!(events(&w).is_empty(), "Up, not yet ready: {:?}", w.out);
    assert!(w.runs().is_empty());
    // Asked at once, not after its 10 s interval.
    assert_eq!(w.m.next_deadline(w.now), Some(w.now));
    w.tick();
    assert!(
        w.out
            .iter()
            .any(|e| matches!(e, Effect::Probe { pid: 101, .. }))
    );
    w.feed(Input::Probed {
        entry: A,
        pid: 101,
        result: Err("refused".into()),
    });
    assert!(w.runs().is_empty());
    assert_eq!(
        w.m.next_deadline(w.now),
        Some(w.now + crate::monitor::group::READY_POLL),
        "asked again soon"
    );
    w.tick();
    w.later(7);
    w.feed(Input::Probed {
        entry: A,
        pid: 101,
        result: Ok(Duration::from_millis(1)),
    });
    assert_eq!(
        events(&w),
        vec![
            GroupEvent::Ready {
                entry: A,
                pid: Some(101)
            },
            GroupEvent::Starting { entry: B }
        ]
    );
}

#[test]
fn at_start_up_a_group_with_nothing_running_is_started_in_order() {
    let mut config = config(three());
    config.pfiles[0]
        .groups
        .push(group(2, OnRetryOver::Continue));
    let mut w = World::started_with(config, true, vec![vec![], vec![seen(200, 1)], vec![]]);
    // Partly running: /b is stopped first, then all start in order; found
    // so at start, this restart is not counted.
    assert!(matches!(
        events(&w)[0],
        GroupEvent::Restarting {
            cause: A,
            attempt: 0,
            why: GroupWhy::FirstLook
        }
    ));
    assert_eq!(kills(&w), vec![200]);
    w.exit(200, 1, KILLED);
    reaped(&mut w, &[200]);
    assert_eq!(run_commands(&w), vec![("start /a".into(), Job::Restart)]);
}

#[test]
fn a_drill_on_a_member_is_not_counted() {
    let mut w = store(group(1, OnRetryOver::Continue), three());
    w.feed(Input::Drill { entry: C });
    w.exit(300, 1, KILLED);
    assert!(matches!(
        events(&w)[0],
        GroupEvent::Restarting {
            why: GroupWhy::Drill,
            ..
        }
    ));
    assert_eq!(kills(&w), vec![200]);
    w.exit(200, 1, KILLED);
    w.exit(100, 1, KILLED);
    reaped(&mut w, &[300, 200, 100]);
    for (id, path, pid) in [(A, "/a", 101), (B, "/b", 201), (C, "/c", 301)] {
        w.done(path, true);
        appears(&mut w, id, pid);
    }
    // The one real restart the budget allows is still there.
    w.exit(201, 2, KILLED);
    assert!(matches!(
        events(&w)[0],
        GroupEvent::Restarting { attempt: 1, .. }
    ));
}

#[test]
fn groups_round_trip_and_are_config_errors_when_wrong() {
    let w = store(group(2, OnRetryOver::Continue), three());
    let json = serde_json::to_string(&w.m).unwrap();
    let back: Monitor = serde_json::from_str(&json).unwrap();
    assert_eq!(back.groups.len(), 1);
}

#[test]
fn a_group_with_a_paused_member_is_left_alone() {
    let mut c = config(vec![entry("/a")]);
    let mut other = c.pfiles[0].clone();
    other.name = "b".into();
    other.entries = vec![entry("/b"), entry("/c")];
    c.pfiles.push(other);
    c.pfiles[0].groups.push(group(2, OnRetryOver::Continue));
    let mut w = World::started_with(c, true, running());
    w.feed(Input::Pause {
        pfile: "app".into(),
    });
    w.exit(300, 1, KILLED);
    assert_eq!(
        events(&w),
        vec![GroupEvent::NotRestarted {
            cause: C,
            paused: A
        }]
    );
    assert!(kills(&w).is_empty() && w.runs().is_empty(), "{:?}", w.out);
    assert_eq!(w.m.status(w.now)[2].state, "down");
    assert_eq!(w.m.next_deadline(w.now), None);
}

#[test]
fn a_group_starts_once_what_died_and_what_it_stopped_is_reaped() {
    // A daemon whose pidfile still names its zombie refuses to start
    // ("already running"): the first member waits for the reaping.
    let mut w = store(group(2, OnRetryOver::Continue), three());
    w.exit(300, 1, KILLED);
    w.exit(200, 1, KILLED);
    let stopped_at = w.now;
    w.exit(100, 1, KILLED);
    assert!(w.runs().is_empty());
    assert!(w.out.contains(&Effect::AwaitReaped {
        path: "/a".into(),
        tgids: vec![300, 200, 100],
        pgid: None,
    }));
    assert_eq!(w.m.group_status(w.now)[0].state, "stopping");
    // Another member's reaping is not this one.
    w.feed(Input::Reaped {
        path: "/b".into(),
        stopped: None,
    });
    assert!(w.runs().is_empty());
    // Never reaped (a subreaper that does not reap): the group goes on
    // after REAP_WAIT rather than for ever.
    w.tick();
    assert!(w.now >= stopped_at + REAP_WAIT, "{:?}", w.now);
    assert_eq!(run_commands(&w), vec![("start /a".into(), Job::Restart)]);
    // The late answer starts nothing twice.
    w.feed(Input::Reaped {
        path: "/a".into(),
        stopped: None,
    });
    assert!(w.runs().is_empty());
}
