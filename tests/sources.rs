//! Every event source against real processes: exit codes, signals, exec
//! paths, thread-group exits, identity and lost events. The ebpf and netlink
//! sources need root; CI runs these as root.

mod support;

use std::time::{Duration, Instant};

use psmon::{
    event::{EventKind, ExitStatus, ProcEvent},
    source::{self, Source, SourceChoice, SourceKind, SourceOptions},
};
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const POLL_INTERVAL: Duration = Duration::from_millis(100);

struct Running {
    rx: mpsc::Receiver<ProcEvent>,
    token: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn options() -> SourceOptions {
    SourceOptions {
        poll_interval: POLL_INTERVAL,
        ..SourceOptions::default()
    }
}

fn open(kind: SourceKind, options: &SourceOptions) -> Option<Source> {
    if kind != SourceKind::Poll && !needs_root(&format!("the {kind} source")) {
        return None;
    }
    let choice = match kind {
        SourceKind::Ebpf => SourceChoice::Ebpf,
        SourceKind::Netlink => SourceChoice::Netlink,
        SourceKind::Poll => SourceChoice::Poll,
    };
    let opened = source::open(choice, options).unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(opened.source.kind(), kind);
    Some(opened.source)
}

async fn run(source: Source, queue: usize) -> Running {
    let (tx, rx) = mpsc::channel(queue);
    let token = CancellationToken::new();
    let kind = source.kind();
    tokio::spawn(source.run(tx, token.clone()));
    if kind == SourceKind::Poll {
        // Let the first scan (which only records what exists) happen first.
        tokio::time::sleep(POLL_INTERVAL * 3).await;
    }
    Running { rx, token }
}

async fn start(kind: SourceKind) -> Option<Running> {
    let source = open(kind, &options())?;
    Some(run(source, 65536).await)
}

impl Running {
    /// The first event matching `pred`, failing the test after `TIMEOUT`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&ProcEvent) -> bool) -> ProcEvent {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return ev,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the source stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {TIMEOUT:?}"),
            }
        }
    }

    /// Everything that arrives within `period`.
    async fn collect(&mut self, period: Duration) -> Vec<ProcEvent> {
        let mut got = Vec::new();
        let until = tokio::time::Instant::now() + period;
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, self.rx.recv()).await {
            got.push(ev);
        }
        got
    }
}

fn is_exit_of(ev: &ProcEvent, tgid: u32) -> bool {
    matches!(&ev.kind, EventKind::Exit { process, .. } if process.tgid == tgid)
}

fn status(ev: &ProcEvent) -> ExitStatus {
    match ev.kind {
        EventKind::Exit { status, .. } => status,
        _ => panic!("not an exit: {ev:?}"),
    }
}

/// Waits for the one exit of `tgid`, then checks no second one follows.
async fn single_exit(src: &mut Running, tgid: u32) -> ProcEvent {
    let exit = src
        .wait_for("the exit event", |e| is_exit_of(e, tgid))
        .await;
    let later = src.collect(POLL_INTERVAL * 5).await;
    let extra: Vec<_> = later.iter().filter(|e| is_exit_of(e, tgid)).collect();
    assert!(extra.is_empty(), "a second exit for {tgid}: {extra:?}");
    exit
}

async fn exit_code_is_reported(kind: SourceKind) {
    let Some(mut src) = start(kind).await else {
        return;
    };
    let mut child = spawn_victim(&["exit", "7"]);
    let tgid = child.id();
    // The child stays a zombie until reaped below, as a monitored daemon's
    // child would; `poll` reads the status from the zombie.
    let exit = single_exit(&mut src, tgid).await;
    assert_eq!(status(&exit), ExitStatus::Code(7), "{exit:?}");
    assert_eq!(exit.process().unwrap().pid, tgid);
    child.wait().unwrap();
}

async fn kill_signal_is_reported(kind: SourceKind) {
    let Some(mut src) = start(kind).await else {
        return;
    };
    let mut child = spawn_victim(&["sleep"]);
    let tgid = child.id();
    kill9(&child);
    let exit = single_exit(&mut src, tgid).await;
    assert_eq!(
        status(&exit),
        ExitStatus::Signal {
            signal: 9,
            core_dumped: false
        }
    );
    child.wait().unwrap();
}

async fn exec_path_and_identity(kind: SourceKind) {
    let Some(mut src) = start(kind).await else {
        return;
    };
    let mut child = spawn_victim(&["sleep"]);
    let tgid = child.id();
    let exec = src
        .wait_for(
            "the exec event",
            |e| matches!(&e.kind, EventKind::Exec(p) if p.tgid == tgid),
        )
        .await;
    let p = exec.process().unwrap();
    assert_eq!(p.path.as_deref(), Some(victim()));
    assert_eq!(p.comm, "victim");
    assert_eq!(
        p.start.map(|s| s.ticks()),
        Some(proc_start_ticks(tgid)),
        "identity (tgid, start time) must equal /proc's"
    );
    kill9(&child);
    let exit = src
        .wait_for("the exit event", |e| is_exit_of(e, tgid))
        .await;
    assert_eq!(exit.process().unwrap().identity(), p.identity());
    child.wait().unwrap();
}

async fn threads_exiting_first_are_not_the_group(kind: SourceKind) {
    let Some(mut src) = start(kind).await else {
        return;
    };
    let mut child = spawn_victim(&["threads-first", "6"]);
    let tgid = child.id();
    let exit = single_exit(&mut src, tgid).await;
    assert_eq!(status(&exit), ExitStatus::Code(6));
    child.wait().unwrap();
}

async fn leader_exiting_first_is_not_the_group(kind: SourceKind) {
    let Some(mut src) = start(kind).await else {
        return;
    };
    let spawned = Instant::now();
    let mut child = spawn_victim(&["leader-first", "5"]);
    let tgid = child.id();
    let exit = single_exit(&mut src, tgid).await;
    assert!(
        spawned.elapsed() >= Duration::from_millis(300),
        "the exit was reported before the last thread ended: {exit:?}"
    );
    // The leader's own exit status is 0; 5 comes from the last thread, 300 ms later.
    assert_eq!(status(&exit), ExitStatus::Code(5), "{exit:?}");
    child.wait().unwrap();
}

/// Overflows the source's buffer on purpose and expects `Lost` with a count.
async fn losses_are_reported(kind: SourceKind) {
    let mut opts = options();
    opts.ring_bytes = 4096; // one page: about a dozen events
    opts.netlink_rcvbuf = 4096;
    let Some(source) = open(kind, &opts) else {
        return;
    };
    let mut children = Vec::new();
    let mut src = if kind == SourceKind::Poll {
        // Polling loses nothing in the kernel; its queue to the consumer can
        // overflow: a queue of one, and a scan that finds 20 new processes.
        let src = run(source, 1).await;
        children.extend((0..20).map(|_| spawn_victim(&["sleep"])));
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        src
    } else {
        // Subscribed but not yet reading: the storm must overflow the buffer.
        spawn_victim(&["forks", "2000"]).wait().unwrap();
        run(source, 65536).await
    };
    let lost = src
        .wait_for(
            "a Lost event with a count",
            |e| matches!(e.kind, EventKind::Lost { count: Some(n) } if n > 0),
        )
        .await;
    eprintln!("{kind}: {lost:?}");
    for mut c in children {
        kill9(&c);
        c.wait().unwrap();
    }
}

macro_rules! for_each_source {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use super::*;
            #[tokio::test]
            async fn ebpf() { super::$test(SourceKind::Ebpf).await }
            #[tokio::test]
            async fn netlink() { super::$test(SourceKind::Netlink).await }
            #[tokio::test]
            async fn poll() { super::$test(SourceKind::Poll).await }
        }
    )*};
}

for_each_source!(
    exit_code_is_reported,
    kill_signal_is_reported,
    exec_path_and_identity,
    threads_exiting_first_are_not_the_group,
    leader_exiting_first_is_not_the_group,
    losses_are_reported,
);

#[tokio::test]
async fn auto_prefers_ebpf_as_root() {
    if !needs_root("choosing ebpf") {
        return;
    }
    let opened = source::open(SourceChoice::Auto, &options()).unwrap();
    assert_eq!(opened.source.kind(), SourceKind::Ebpf);
    assert!(opened.refused.is_empty());
}

#[tokio::test]
async fn kernel_filter_passes_only_watched_processes() {
    if !needs_root("the in-kernel filter") {
        return;
    }
    let mut opts = options();
    opts.kernel_filter = true;
    let Some(Source::Ebpf(mut ebpf)) = open(SourceKind::Ebpf, &opts) else {
        panic!("the ebpf source");
    };
    ebpf.take_filter().unwrap().watch_comm("victim").unwrap();
    let mut src = run(Source::Ebpf(ebpf), 65536).await;
    // Unwatched churn, then a watched process.
    std::process::Command::new("/bin/true").status().unwrap();
    let mut child = spawn_victim(&["exit", "3"]);
    let tgid = child.id();
    let exit = src
        .wait_for("the watched exit", |e| is_exit_of(e, tgid))
        .await;
    assert_eq!(status(&exit), ExitStatus::Code(3));
    child.wait().unwrap();
    std::process::Command::new("/bin/true").status().unwrap();
    let mut seen = src.collect(Duration::from_millis(300)).await;
    seen.retain(|e| !matches!(e.kind, EventKind::Lost { .. }));
    assert!(
        seen.iter().all(|e| e.process().unwrap().comm == "victim"),
        "unwatched events leaked through: {seen:?}"
    );
}
