//! The supervisor as the daemon runs it, with a scripted source: the test
//! says what the source saw, while the processes, their pidfds, the scans
//! of /proc and the restart commands are real. Where a time limit is the
//! subject, tokio's time is paused once the scene is set, and the limit
//! passes in no time. No root needed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{COMMAND_GRACE, Control, Setup, Supervisor};
use crate::{
    config::{Config, LoadOptions},
    control::Asked,
    event::{EventKind, EventTime, ExitStatus, ProcEvent, Process, StartTime},
    report::Reporter,
    source::{
        Handle, SourceKind,
        keeper::{Order, Report},
    },
};

/// What psmon said: each message with the kind of event it tells of.
type Said = Arc<Mutex<Vec<(Option<&'static str>, Value)>>>;

/// One supervisor over one entry: a copy of `sleep` in a directory of its
/// own, restarted by `restart.sh` there.
struct Shell {
    dir: PathBuf,
    daemon: PathBuf,
    said: Said,
    events: mpsc::Sender<ProcEvent>,
    control: mpsc::Sender<Control>,
    token: CancellationToken,
    /// Until [`Shell::start`].
    parts: Option<(
        Supervisor,
        mpsc::Receiver<ProcEvent>,
        mpsc::Receiver<Control>,
    )>,
    run: Option<JoinHandle<()>>,
    /// Kept open: a closed channel would end the loop's branches.
    _asked: mpsc::Sender<Asked>,
    asked_rx: Option<mpsc::Receiver<Asked>>,
    _orders: mpsc::Receiver<Order>,
    daemons: Vec<Child>,
}

impl Shell {
    /// `restart` is the body of the restart command's script; `$DIR` is
    /// the shell's directory and `$DAEMON` the watched program.
    fn new(restart: &str) -> Shell {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("psmon-shell-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = dir.join(format!("shd{}-{n}", std::process::id() % 100_000));
        std::fs::copy("/bin/sleep", &daemon).unwrap();
        let script = dir.join("restart.sh");
        let body = restart
            .replace("$DIR", &dir.display().to_string())
            .replace("$DAEMON", &daemon.display().to_string());
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        chmod_x(&script);
        std::fs::write(
            dir.join("pfile_shell"),
            format!(
                "##### PARAM #####\nMONITOR_INTERVAL = 10\n##### PENT #####\n{} : {} : 0 : 3 : continue\n",
                daemon.display(),
                script.display()
            ),
        )
        .unwrap();
        let load = LoadOptions { insecure: true };
        let config = Config::load_dir(&dir, load).expect("the shell's pfile loads");
        let said: Said = Arc::default();
        let keep = Arc::clone(&said);
        let reporter = Reporter::tap_only(Arc::new(move |kind, message| {
            keep.lock().unwrap().push((kind, message.clone()));
        }));
        let (orders_tx, orders) = mpsc::channel(4);
        let supervisor = Supervisor::new(Setup {
            config,
            reporter,
            conf_dir: dir.clone(),
            load,
            saved: None,
            store: None,
            telemetry: Arc::default(),
            runtime_dir: dir.clone(),
            canary: None,
            source_orders: orders_tx,
            spawner: crate::spawner::Spawner::none(),
        });
        let (events, events_rx) = mpsc::channel(64);
        let (control, control_rx) = mpsc::channel(16);
        let (asked, asked_rx) = mpsc::channel(16);
        Shell {
            dir,
            daemon,
            said,
            events,
            control,
            token: CancellationToken::new(),
            parts: Some((supervisor, events_rx, control_rx)),
            run: None,
            _asked: asked,
            asked_rx: Some(asked_rx),
            _orders: orders,
            daemons: Vec::new(),
        }
    }

    /// Starts one instance of the watched program: its pid and start time.
    fn start_daemon(&mut self) -> (u32, u64) {
        let child = Command::new(&self.daemon).arg("30").spawn().unwrap();
        let tgid = child.id();
        self.daemons.push(child);
        let mut buf = Vec::new();
        let start = crate::proc::read_stat(tgid, &mut buf).unwrap().start_ticks;
        (tgid, start)
    }

    /// Runs the supervisor, its scripted source open as a netlink one.
    fn start(&mut self) {
        let (supervisor, events, control) = self.parts.take().expect("started once");
        let handle = Handle {
            kind: SourceKind::Netlink,
            filter: None,
            exit_lag: Duration::ZERO,
            reports_every_exec: true,
            cause_unknown: None,
        };
        let opened = Control::Source(Report::Opened { handle, why: None });
        self.control.try_send(opened).unwrap();
        let asked = self.asked_rx.take().unwrap();
        let token = self.token.clone();
        self.run = Some(tokio::spawn(supervisor.run(events, control, asked, token)));
    }

    /// Starts the supervisor with one instance of the program running,
    /// waits for the first scan to find it Up, kills it and waits for the
    /// restart command to start: the instance's pid and start time.
    async fn up_then_killed(&mut self) -> (u32, u64) {
        let (tgid, start) = self.start_daemon();
        self.start();
        until("the first scan to find the daemon", || self.said("up") >= 1).await;
        self.daemons[0].kill().unwrap();
        until("the restart command", || self.lines("restarts").len() == 1).await;
        (tgid, start)
    }

    async fn say(&self, kind: EventKind) {
        let event = ProcEvent::new(kind, EventTime::now(None, None));
        self.events.send(event).await.unwrap();
    }

    fn process(&self, tgid: u32, start: u64) -> Process {
        Process {
            tgid,
            pid: tgid,
            ppid: std::process::id(),
            start: Some(StartTime::from_ticks(start)),
            comm: self
                .daemon
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            path: Some(self.daemon.clone()),
        }
    }

    fn killed(&self, tgid: u32, start: u64) -> EventKind {
        EventKind::Exit {
            process: self.process(tgid, start),
            status: ExitStatus::Signal {
                signal: libc::SIGKILL,
                core_dumped: false,
            },
        }
    }

    /// How many messages of this kind psmon said.
    fn said(&self, kind: &str) -> usize {
        let said = self.said.lock().unwrap();
        said.iter().filter(|(k, _)| *k == Some(kind)).count()
    }

    fn said_text(&self, text: &str) -> bool {
        let said = self.said.lock().unwrap();
        said.iter()
            .any(|(_, m)| m["message"].as_str().is_some_and(|s| s.contains(text)))
    }

    /// The lines the restart script appended to `file` in the directory.
    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Stops the supervisor as SIGTERM does, and waits for it.
    async fn stop(&mut self) {
        self.token.cancel();
        if let Some(run) = self.run.take() {
            run.await.unwrap();
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self
            .lines("started")
            .into_iter()
            .chain(self.lines("restarts"))
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits (in tokio's time, which may be paused) until `done`, for at most
/// 20 s of real time.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let begun = std::time::Instant::now();
    while !done() {
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

const RESTART_AND_START_ONE: &str = "echo $$ >> $DIR/restarts\n\
     $DAEMON 30 </dev/null >/dev/null 2>&1 &\n\
     echo $! >> $DIR/started";

/// The source tells of an exec and, right behind it, of that process's
/// exit. The exec's classification reads /proc on the blocking pool; the
/// exit must wait for it, or it would find no member and be dropped, and
/// a death would go unseen.
#[tokio::test]
async fn an_exit_that_arrives_before_its_exec_is_classified_is_a_death() {
    let mut shell = Shell::new(RESTART_AND_START_ONE);
    let (tgid, start) = shell.start_daemon();
    shell.say(EventKind::Exec(shell.process(tgid, start))).await;
    shell.say(shell.killed(tgid, start)).await;
    shell.start();
    until("the restart", || shell.lines("restarts").len() == 1).await;
    assert_eq!(shell.said("down"), 1);
    shell.stop().await;
}

/// The pidfd tells of a death before the source's exit event does: one
/// death, one restart, whichever comes second.
#[tokio::test]
async fn a_pidfds_exit_then_the_sources_is_one_death() {
    let mut shell = Shell::new(RESTART_AND_START_ONE);
    let (tgid, start) = shell.up_then_killed().await;
    shell.say(shell.killed(tgid, start)).await;
    // Events are taken in order: once this one's message is out, the
    // exit before it was handled.
    shell.say(EventKind::Lost { count: Some(1) }).await;
    until("the lost events' message", || {
        shell.said_text("process events were lost")
    })
    .await;
    assert_eq!(shell.said("down"), 1, "{:?}", shell.said.lock().unwrap());
    assert_eq!(shell.lines("restarts").len(), 1);
    shell.stop().await;
}

/// SIGTERM while a restart command runs: psmon waits up to
/// [`COMMAND_GRACE`] for it, then leaves it running in its own process
/// group and ends.
#[tokio::test]
async fn at_sigterm_a_running_restart_command_gets_the_grace_and_is_left_running() {
    let mut shell = Shell::new("echo $$ >> $DIR/restarts\nexec sleep 30");
    shell.up_then_killed().await;
    tokio::time::pause();
    let stopping = tokio::time::Instant::now();
    shell.stop().await;
    let waited = stopping.elapsed();
    assert!(
        (COMMAND_GRACE..COMMAND_GRACE + Duration::from_secs(1)).contains(&waited),
        "waited {waited:?}"
    );
    assert!(shell.said_text("waiting up to 5 s for 1 restart or failover command(s)"));
    assert!(shell.said_text("commands still running are left running"));
    let pid: i32 = shell.lines("restarts")[0].parse().unwrap();
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
    assert!(
        alive.is_ok(),
        "the restart command ({pid}) was left running"
    );
}
