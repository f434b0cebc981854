use super::{filter::comm_eq, *};
use crate::event::{EventTime, ExitStatus, ProcEvent, Process, StartTime};

fn exit(tgid: u32, ppid: u32, comm: &str, path: &str) -> ProcEvent {
    let process = Process {
        tgid,
        pid: tgid,
        ppid,
        start: Some(StartTime::from_ns(0)),
        comm: comm.into(),
        path: Some(path.into()),
    };
    ProcEvent::new(
        EventKind::Exit {
            process,
            status: ExitStatus::Code(0),
        },
        EventTime::now(None, None),
    )
}

fn filter(args: &[&str]) -> Selection {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        trace: TraceOptions,
    }
    let cli = Cli::parse_from(std::iter::once("trace").chain(args.iter().copied()));
    Selection::new(&cli.trace)
}

fn fork(tgid: u32, ppid: u32) -> ProcEvent {
    let process = Process {
        tgid,
        pid: tgid,
        ppid,
        start: Some(StartTime::from_ns(0)),
        comm: "x".into(),
        path: Some("/x".into()),
    };
    ProcEvent::new(EventKind::Fork(process), EventTime::now(None, None))
}

#[test]
fn a_running_psmons_canaries_are_never_shown() {
    let mut f = filter(&[]);
    let mut canary = fork(4000010, 4000000);
    if let EventKind::Fork(p) = &mut canary.kind {
        p.comm = crate::self_check::CANARY_COMM.into();
    }
    assert!(!f.matches(&canary));
    assert!(
        !f.matches(&exit(4000010, 4000000, "psmon", "/usr/bin/psmon")),
        "its exit, named by its parent once it was reaped"
    );
    assert!(
        f.matches(&exit(4000010, 4000000, "x", "/x")),
        "the pid reused"
    );
    assert!(f.matches(&fork(4000011, 4000000)));
}

#[test]
fn pid_follows_the_whole_tree() {
    // Pid numbers far above any real one: nothing in /proc descends from them.
    let mut f = filter(&["--pid", "4000000"]);
    assert!(f.matches(&fork(4000001, 4000000)));
    assert!(f.matches(&fork(4000002, 4000001)), "a grandchild");
    assert!(f.matches(&exit(4000002, 4000001, "x", "/x")));
    assert!(
        !f.matches(&fork(4000003, 4000002)),
        "its exit left the tree"
    );
    let mut f = filter(&["--pid", "4000000", "--children-only"]);
    assert!(f.matches(&fork(4000001, 4000000)));
    assert!(!f.matches(&fork(4000002, 4000001)));
    // This test's own process is found below its parent at start.
    let parent = std::os::unix::process::parent_id();
    let mut f = filter(&["--pid", &parent.to_string()]);
    assert!(f.matches(&exit(std::process::id(), 0, "x", "/x")));
}

#[test]
fn path_matches_the_file_as_exec_d_or_resolved() {
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let real = sh.to_str().unwrap().to_string();
    // Given the link, events naming the file match, and the other way round.
    assert!(filter(&["--path", "/bin/sh"]).matches(&exit(1, 0, "sh", &real)));
    assert!(filter(&["--path", &real]).matches(&exit(1, 0, "sh", "/bin/sh")));
    assert!(!filter(&["--path", "/bin/true"]).matches(&exit(1, 0, "sh", "/bin/sh")));
}

#[test]
fn stats_keep_unknown_executables_apart() {
    let mut churn = Churn::new("all processes");
    let exec = |comm: &str, path: Option<&str>| {
        let process = Process {
            tgid: 9,
            pid: 9,
            ppid: 1,
            start: None,
            comm: comm.into(),
            path: path.map(Into::into),
        };
        ProcEvent::new(EventKind::Exec(process), EventTime::now(None, None))
    };
    churn.count(&exec("true", Some("/usr/bin/true")));
    churn.count(&exec("true", None));
    churn.count(&exec("", None));
    churn.count(&exec("mystery", None));
    assert_eq!(
        churn.top_execs(),
        vec![("/usr/bin/true", 2), ("[mystery]", 1)]
    );
    assert_eq!(churn.unknown_execs, 1);
}

#[test]
fn filters_combine() {
    let ev = exit(10, 1, "sleep", "/usr/bin/sleep");
    assert!(filter(&[]).matches(&ev));
    assert!(filter(&["--pid", "10"]).matches(&ev));
    assert!(
        filter(&["--pid", "1", "--children-only"]).matches(&ev),
        "children of --pid match"
    );
    assert!(!filter(&["--pid", "11"]).matches(&ev));
    assert!(filter(&["--comm", "sleep", "--path", "/usr/*/sl*"]).matches(&ev));
    assert!(!filter(&["--comm", "sleep", "--path", "/bin/*"]).matches(&ev));
    assert!(!filter(&["--event", "exec"]).matches(&ev));
    assert!(filter(&["--event", "exec", "--event", "exit"]).matches(&ev));
    assert!(filter(&["--comm", "nope"]).matches(&ProcEvent::lost(Some(3))));
}

#[test]
fn long_comm_matches_its_truncation() {
    assert!(comm_eq("a-very-long-daemon", "a-very-long-dae"));
    assert!(!comm_eq("short", "shorter"));
}

#[test]
fn shortest_lived_keeps_the_smallest() {
    let mut churn = Churn::new("all processes");
    for (i, ms) in [50u64, 10, 30, 70, 20, 60, 40].iter().enumerate() {
        let mut ev = exit(i as u32, 1, "x", "/x");
        ev.time.boot_ns = ms * 1_000_000;
        churn.count(&ev);
    }
    let got: Vec<u128> = churn.shortest.iter().map(|s| s.0.as_millis()).collect();
    assert_eq!(got, vec![10, 20, 30, 40, 50]);
}
