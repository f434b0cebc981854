//! Failover through a cluster driver: which request a retry-over sends,
//! once, and the constraints the cluster was left with.

use super::*;
use crate::{
    config::{FailoverChoice, FailoverDriver, FailoverMode, Group},
    facts::{Cluster, Constraint, SwitchOutcome, SwitchRequest},
};

fn switching(path: &str) -> Entry {
    let mut e = entry(path);
    e.retry = 1;
    e.action = OnRetryOver::Switch;
    e
}

fn pacemaker_config(entries: Vec<Entry>) -> Config {
    let mut c = config(entries);
    c.agent.failover_driver = FailoverDriver::Pacemaker;
    c.agent.failover_timeout = Duration::from_secs(20);
    c.agent.retry_interval = Duration::from_secs(2);
    c
}

fn requests(w: &World) -> Vec<SwitchRequest> {
    w.out
        .iter()
        .filter_map(|e| match e {
            Effect::Switch { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

/// Retry over → one request to the cluster, for the resource named after
/// the pfile, with psagent.conf's mode, timeout and retry interval;
/// nothing sends it again.
#[test]
fn retry_over_sends_one_pacemaker_request() {
    let config = pacemaker_config(vec![switching("/d")]);
    let mut w = World::started_with(config, true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.done("/d", false);
    let sent = requests(&w);
    assert_eq!(sent.len(), 1, "{:?}", w.out);
    let r = &sent[0];
    assert_eq!(r.cluster, Cluster::Pacemaker(FailoverMode::Move));
    assert_eq!(r.resource, "app");
    assert_eq!(r.timeout, Duration::from_secs(20));
    assert_eq!(r.retry_interval, Duration::from_secs(2));
    assert!(r.env.iter().any(|(k, _)| k == "PSMON_REASON"));
    // The retry-over's message comes before the request (its dump is written first).
    let over = w
        .out
        .iter()
        .position(|e| {
            matches!(
                e,
                Effect::Notice(Notice::Policy {
                    action: Action::ReportRetryOver { .. },
                    ..
                })
            )
        })
        .unwrap();
    let switch = w
        .out
        .iter()
        .position(|e| matches!(e, Effect::Switch { .. }))
        .unwrap();
    assert!(over < switch);
    assert_eq!(w.m.status(w.now)[0].state, "failed_over");

    // Time passing and the driver's answer send nothing more.
    w.later(60_000);
    w.feed(Input::Tick);
    assert!(requests(&w).is_empty(), "{:?}", w.out);
    w.feed(Input::Switched {
        path: "/d".into(),
        outcome: SwitchOutcome {
            ok: false,
            said: "no other node".into(),
            elapsed: Duration::from_secs(20),
            constraints: Vec::new(),
        },
    });
    assert!(requests(&w).is_empty(), "{:?}", w.out);
}

/// An entry's own driver, resource and mode win over psagent.conf's.
#[test]
fn an_entrys_choice_overrides_psagent_conf() {
    let mut e = switching("/d");
    e.failover_choice = FailoverChoice {
        driver: Some(FailoverDriver::Clusterpro),
        resource: Some("failover1".into()),
        mode: None,
    };
    let mut w = World::started_with(pacemaker_config(vec![e]), true, vec![vec![seen(100, 5)]]);
    w.exit(100, 5, KILLED);
    w.done("/d", false);
    let sent = requests(&w);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].cluster, Cluster::Clusterpro);
    assert_eq!(sent[0].resource, "failover1");
}

/// A switching group of /a and /b, named "store", spent at once.
fn store_of_two() -> Group {
    Group {
        name: "store".into(),
        members: vec!["/a".into(), "/b".into()],
        restarts: 0,
        window: Duration::from_secs(600),
        action: OnRetryOver::Switch,
        start_timeout: Duration::from_secs(60),
        kill_grace: Duration::from_secs(5),
        failover_choice: FailoverChoice::default(),
        failover: None,
        line: 1,
        member_cols: vec![(1, 1); 2],
    }
}

/// A group's request names the group unless it says otherwise.
#[test]
fn a_groups_request_names_the_group() {
    let mut config = pacemaker_config(vec![entry("/a"), entry("/b")]);
    config.pfiles[0].groups.push(Group {
        failover_choice: FailoverChoice {
            mode: Some(FailoverMode::Fail),
            ..Default::default()
        },
        ..store_of_two()
    });
    let w = World::started_with(config, true, vec![vec![seen(100, 1)], vec![seen(200, 1)]]);
    let Some(Effect::Switch { request: r, .. }) = w.m.failover_run(A, Some(GroupId(0)), Vec::new())
    else {
        panic!("no request");
    };
    assert_eq!(r.resource, "store");
    assert_eq!(r.cluster, Cluster::Pacemaker(FailoverMode::Fail));
}

/// What the driver reports is said; the constraints it left are kept
/// (and saved) until an operator clears them.
#[test]
fn constraints_are_kept_until_cleared() {
    let config = pacemaker_config(vec![switching("/d")]);
    let mut w = World::started_with(config, true, vec![vec![seen(100, 5)]]);
    let ban = Constraint {
        resource: "app".into(),
        id: "cli-ban-app-on-node1".into(),
        node: Some("node1".into()),
    };
    w.feed(Input::Switched {
        path: "/d".into(),
        outcome: SwitchOutcome {
            ok: true,
            said: "resource 'app' started on node2 in 0.31 s".into(),
            elapsed: Duration::from_millis(310),
            constraints: vec![ban.clone()],
        },
    });
    assert!(w.out.iter().any(|e| matches!(
        e,
        Effect::Notice(Notice::Switched { ok: true, said, group: None, .. }) if said.contains("node2")
    )));
    assert!(w.m.take_dirty());
    let left = w.m.failover_constraints();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].pfile.as_str(), &left[0].constraint), ("app", &ban));

    let saved = serde_json::to_string(&w.m).unwrap();
    let mut back: Monitor = serde_json::from_str(&saved).unwrap();
    assert_eq!(back.failover_constraints(), w.m.failover_constraints());

    back.handle(
        Input::FailoverCleared {
            resources: vec!["app".into()],
        },
        w.now,
    );
    assert!(back.failover_constraints().is_empty());
}

/// The command driver: a group's own `failover` command, else the failed
/// member's, else FAILOVER_COMMAND.
#[test]
fn a_groups_own_failover_command_comes_first() {
    let mut b = entry("/b");
    b.failover = Some("member-away".into());
    let mut config = config(vec![entry("/a"), b]);
    config.agent.failover_command = Some("agent-away".into());
    let mut group = store_of_two();
    let running = || vec![vec![seen(100, 1)], vec![seen(200, 1)]];
    let command = |w: &World, id: EntryId| match w.m.failover_run(id, Some(GroupId(0)), Vec::new())
    {
        Some(Effect::Run(run)) => run.command,
        other => panic!("{other:?}"),
    };
    let mut with = config.clone();
    with.pfiles[0].groups.push(group.clone());
    let w = World::started_with(with, true, running());
    assert_eq!(command(&w, A), "agent-away");
    assert_eq!(command(&w, EntryId(1)), "member-away");
    group.failover = Some("group-away".into());
    config.pfiles[0].groups.push(group);
    let w = World::started_with(config, true, running());
    assert_eq!(command(&w, A), "group-away");
    assert_eq!(command(&w, EntryId(1)), "group-away");
}
