//! `psmon run` end to end, for every source: real victims killed, restart
//! commands run, retry budgets spent, failover observed, configuration
//! reloaded. Each test has its own directory, configuration and victim
//! binary, and kills whatever it started.

mod support;

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use support::*;

/// A test's world: its directory, configuration and victim binary.
struct World {
    dir: TempDir,
    victim: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let victim = victim_copy(&dir.0, "watched");
        World { dir, victim }
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.conf().join(name), text).unwrap();
    }

    /// A pfile watching the victim; `restart` `None` restarts it for real.
    fn pfile(&self, restart: Option<&str>, grace: u32, retry: u32, action: &str) {
        let start = format!("{} sleep >/dev/null 2>&1 &", self.victim.display());
        let restart = restart.map_or(start, str::to_string);
        self.write(
            "pfile_test",
            &format!(
                "##### PARAM #####\nMONITOR_INTERVAL = 1\n##### PENT #####\n{} : {restart} : {grace} : {retry} : {action}\n",
                self.victim.display()
            ),
        );
    }

    /// Starts a victim, then psmon, and waits until psmon reports it Up.
    fn watch_running(&self, source: &str) -> (Child, u32, Psmon) {
        let victim = self.spawn_victim();
        let pid = victim.id();
        let mut psmon = Psmon::start(&self.conf(), source);
        psmon.wait_for("Up", |m| m["pid"] == pid);
        (victim, pid, psmon)
    }

    fn spawn_victim(&self) -> Child {
        let child = spawn_fresh(Command::new(&self.victim).arg("sleep"));
        wait_until_running(child.id());
        child
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_all(&self.victim);
    }
}

/// Waits until `pid` has exec'd the victim (its comm changed).
fn wait_until_running(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() != "watched")
    {
        assert!(Instant::now() < deadline, "victim {pid} never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn usable(source: &str) -> bool {
    source == "poll" || needs_root(&format!("the {source} source"))
}

fn restart_after_kill(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("restart");
    w.pfile(None, 86400, 3, "continue");
    let (mut victim, old, mut psmon) = w.watch_running(source);
    kill9(old);
    // Reaped only once psmon has seen it: `poll` reads the status of the zombie.
    let down = psmon.wait(&format!(
        "Process ['{}',pid={old}] Down",
        w.victim.display()
    ));
    victim.wait().unwrap();
    assert_eq!(down["signal"], 9, "{down}");
    psmon.wait(&format!("Try to restart ('{}')", w.victim.display()));
    let up = psmon.wait_for(") Up", |m| m["pid"] != old);
    let new = up["pid"].as_u64().unwrap() as u32;
    assert!(
        pids_of(&w.victim).contains(&new),
        "the new pid {new} is not the victim"
    );
}

fn retry_over_continue(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("continue");
    w.pfile(Some("exit 1"), 86400, 2, "continue");
    let mut psmon = Psmon::start(&w.conf(), source);
    psmon.wait("Down");
    for _ in 0..2 {
        psmon.wait("Try to restart");
        psmon.wait("Set pid fail");
    }
    let over = psmon.wait("Retry over");
    assert_eq!(over["action"], "continue");
    // Started by hand: Up again, and the budget is re-armed.
    let mut victim = w.spawn_victim();
    let up = psmon.wait_for(") Up", |m| m["pid"] == victim.id());
    assert_eq!(up["budget_rearmed"], true, "{up}");
    kill9(victim.id());
    victim.wait().unwrap();
    let again = psmon.wait("Try to restart");
    assert_eq!(again["attempt"], 1, "{again}");
}

fn retry_over_switch(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("switch");
    let out = w.dir.0.join("failover.out");
    w.pfile(Some("exit 1"), 86400, 1, "switch");
    w.write(
        "psagent.conf",
        &format!(
            "FAILOVER_COMMAND = echo \"$PSMON_PFILE|$PSMON_PATH|$PSMON_PID|$PSMON_SIGNAL|$PSMON_REASON\" >> {}\n",
            out.display()
        ),
    );
    let (mut victim, pid, mut psmon) = w.watch_running(source);
    kill9(pid);
    psmon.wait("Retry over");
    victim.wait().unwrap();
    psmon.wait("Switch request");
    psmon.wait("failover command");
    psmon.collect(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the failover command must run exactly once: {text}"
    );
    let fields: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(fields[0], "test");
    assert_eq!(fields[1], w.victim.display().to_string());
    assert_eq!(fields[2], pid.to_string());
    assert_eq!(fields[3], "9");
    assert!(fields[4].starts_with("retry over"), "{}", fields[4]);
}

fn grace_expiry_rearms(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("grace");
    // The window outlasts start_secs (1 s) and poll's detection (about a
    // second) of the second death below.
    w.pfile(None, 4, 1, "continue");
    let mut psmon = Psmon::start(&w.conf(), source);
    // Not running at start: started, and not counted.
    let start = psmon.wait("Try to restart");
    assert_eq!(start["attempt"], 0, "{start}");
    let first = psmon.wait(") Up")["pid"].as_u64().unwrap() as u32;
    // The window's one attempt.
    kill9(first);
    let spent = psmon.wait("Try to restart");
    assert_eq!(spent["attempt"], 1, "{spent}");
    let second = psmon.wait_for(") Up", |m| m["pid"] != first)["pid"]
        .as_u64()
        .unwrap() as u32;
    std::thread::sleep(Duration::from_millis(3500)); // the window slides past that attempt
    kill9(second);
    let again = psmon.wait("Try to restart");
    assert_eq!(again["attempt"], 1, "re-armed: {again}");
    let third = psmon.wait_for(") Up", |m| m["pid"] != second)["pid"]
        .as_u64()
        .unwrap() as u32;
    // Within the window now: no attempt left.
    kill9(third);
    psmon.wait("Retry over");
}

/// `healthy_secs`: a restart whose process stayed up that long no longer
/// counts; one that did not still spends the budget.
fn healthy_run_gives_the_budget_back(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("healthy");
    w.write(
        "app.toml",
        &format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{v}\"\nrestart = \"{v} sleep >/dev/null 2>&1 &\"\nretry = 1\ngrace = 3600\nstart_secs = 0.2\nhealthy_secs = 1.5\n",
            v = w.victim.display()
        ),
    );
    let (_victim, first, mut psmon) = w.watch_running(source);
    kill9(first);
    let spent = psmon.wait("Try to restart");
    assert_eq!(spent["attempt"], 1, "{spent}");
    let second = psmon.wait_for(") Up", |m| m["pid"] != first)["pid"]
        .as_u64()
        .unwrap() as u32;
    // Up longer than healthy_secs (and far less than the hour's window).
    std::thread::sleep(Duration::from_millis(2500));
    kill9(second);
    let again = psmon.wait("Try to restart");
    assert_eq!(again["attempt"], 1, "the healthy run gave it back: {again}");
    let third = psmon.wait_for(") Up", |m| m["pid"] != second)["pid"]
        .as_u64()
        .unwrap() as u32;
    // Killed at once: that restart still counts.
    kill9(third);
    psmon.wait("Retry over");
}

/// `action = "retry_slowly"`: a spent budget is said once, and attempts go
/// on every `slow_retry_interval` until the cause is gone.
fn retry_slowly_until_the_cause_is_gone(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("slowly");
    let fixed = w.dir.0.join("fixed");
    w.write(
        "app.toml",
        &format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{v}\"\nrestart = \"test -e {f} && {v} sleep >/dev/null 2>&1 &\"\nretry = 1\ngrace = 3600\nstart_wait = 1\nrestart_backoff = 0\naction = \"retry_slowly\"\nslow_retry_interval = 1\n",
            v = w.victim.display(),
            f = fixed.display()
        ),
    );
    let (_victim, first, mut psmon) = w.watch_running(source);
    kill9(first);
    psmon.wait("Set pid fail");
    let over = psmon.wait("Retry over");
    assert_eq!(over["action"], "retry_slowly", "{over}");
    psmon.wait("retries slowly: the next attempt in 1.0 s");
    for n in 1..=2 {
        let slow = psmon.wait("Try to restart");
        assert_eq!(slow["slow_attempt"], n, "{slow}");
        psmon.wait("Set pid fail");
    }
    std::fs::write(&fixed, "").unwrap();
    let up = psmon.wait_for(") Up", |m| m["pid"] != first);
    assert_eq!(up["budget_rearmed"], true, "{up}");
    let said = |text: &str| {
        psmon
            .seen
            .iter()
            .filter(|m| m["message"].as_str().is_some_and(|s| s.contains(text)))
            .count()
    };
    assert_eq!(said("Retry over"), 1, "said once");
    assert_eq!(said("Switch request"), 0, "never a failover");
    assert_eq!(pids_of(&w.victim).len(), 1);
}

fn hanging_restart_is_killed(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("hang");
    let hang = victim_copy(&w.dir.0, "hanging");
    w.write(
        "app.toml",
        &format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"{h} sleep & {h} sleep\"\nretry = 1\nrestart_timeout = 1\n",
            w.victim.display(),
            h = hang.display()
        ),
    );
    let mut psmon = Psmon::start(&w.conf(), source);
    psmon.wait("Try to restart");
    let done = psmon.wait("restart command");
    assert!(
        done["message"].as_str().unwrap().contains("timed out"),
        "{done}"
    );
    psmon.wait("Set pid fail");
    // The command and the child it put in the background are both gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids_of(&hang).iter().all(|p| is_zombie(*p)) {
        assert!(
            Instant::now() < deadline,
            "the hanging command's processes survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_all(&hang);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn zombie_target_is_down(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("zombie");
    w.pfile(Some("exit 1"), 86400, 0, "continue");
    let (mut victim, pid, mut psmon) = w.watch_running(source);
    kill9(pid);
    // Not reaped: it stays a zombie, which is dead.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_zombie(pid) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    psmon.wait(&format!(
        "Process ['{}',pid={pid}] Down",
        w.victim.display()
    ));
    victim.wait().unwrap();
}

fn min_two_instances(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("min2");
    w.write(
        "app.toml",
        &format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"exit 1\"\nretry = 0\nmin = 2\n",
            w.victim.display()
        ),
    );
    let mut a = w.spawn_victim();
    let mut b = w.spawn_victim();
    let mut psmon = Psmon::start(&w.conf(), source);
    let up = psmon.wait(") Up");
    assert_eq!(up["running"], 2, "{up}");
    kill9(a.id());
    a.wait().unwrap();
    let down = psmon.wait("Down");
    assert_eq!(down["pid"], a.id(), "{down}");
    kill9(b.id());
    b.wait().unwrap();
}

/// Kills the victim, then starts an unrelated process as its pid (clone3's
/// `set_tid`), and expects Down all the same.
fn reused_pid_is_still_down(source: &str) {
    if !needs_root("steering pid allocation") {
        return;
    }
    let w = World::new("reuse");
    w.pfile(Some("exit 1"), 86400, 0, "continue");
    let (mut victim, pid, mut psmon) = w.watch_running(source);
    kill9(pid);
    victim.wait().unwrap();
    // The impostor is given the pid itself (clone3 set_tid); a fork
    // elsewhere may hold it for a moment, so it is asked for until free.
    let impostor = (0..500)
        .find_map(|_| {
            sleep_as_pid(pid, 30).or_else(|| {
                std::thread::sleep(Duration::from_millis(10));
                None
            })
        })
        .expect("the victim's pid stayed taken for 5 s");
    psmon.wait(&format!(
        "Process ['{}',pid={pid}] Down",
        w.victim.display()
    ));
    kill_and_reap(impostor);
}

fn broken_reload_keeps_monitoring(source: &str) {
    if !usable(source) {
        return;
    }
    let w = World::new("reload");
    w.pfile(None, 86400, 3, "continue");
    let (mut victim, pid, mut psmon) = w.watch_running(source);
    w.write(
        "pfile_test",
        "##### PARAM #####\nMONITOR_INTERVAL = soon\n##### PENT #####\n/bin/x : - : 0 : 0\n",
    );
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = psmon.wait("reload refused");
    let text = refused["message"].as_str().unwrap();
    assert!(
        text.contains("pfile_test:2:20: MONITOR_INTERVAL `soon` is not a number"),
        "{text}"
    );
    psmon.wait("still running the previous one");
    kill9(pid);
    victim.wait().unwrap();
    psmon.wait("Try to restart");
    psmon.wait_for(") Up", |m| m["pid"] != pid);
}

/// A process becomes the watched program through a link of another name.
/// The kernel filter passes execs by name, so the ebpf source does not
/// report this one: the scan must find it all the same (it reads again
/// every process once any exec happened), and psmon reports it Up.
fn exec_under_another_name_is_found(source: &str) {
    let w = World::new(&format!("othername-{source}"));
    w.pfile(Some("-"), 0, 0, "continue");
    let link = w.dir.0.join("another-name");
    std::os::unix::fs::symlink(&w.victim, &link).unwrap();
    let script = format!("read _; exec {} sleep", link.display());
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = shell.id();
    let mut psmon = Psmon::start(&w.conf(), source);
    psmon.wait("Down");
    // Two scans with nothing happening: they may skip the shell.
    std::thread::sleep(Duration::from_millis(2200));
    use std::io::Write;
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    psmon.wait_for(") Up", |m| m["pid"] == pid);
    kill9(pid);
    let _ = shell.wait();
    psmon.wait_for("Down", |m| m["pid"] == pid);
}

macro_rules! for_each_source {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn ebpf() { super::$test("ebpf") }
            #[test]
            fn netlink() { super::$test("netlink") }
            #[test]
            fn poll() { super::$test("poll") }
        }
    )*};
}

for_each_source!(
    restart_after_kill,
    retry_over_continue,
    retry_over_switch,
    grace_expiry_rearms,
    healthy_run_gives_the_budget_back,
    retry_slowly_until_the_cause_is_gone,
    hanging_restart_is_killed,
    zombie_target_is_down,
    min_two_instances,
    reused_pid_is_still_down,
    broken_reload_keeps_monitoring,
    exec_under_another_name_is_found,
);

/// The spawner of `pid` (psmon's child named psmon-spawner), once there.
fn spawner_of(psmon: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = std::fs::read_dir("/proc").unwrap().find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "psmon-spawner" && proc_ppid(pid) == Some(psmon)).then_some(pid)
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "psmon {psmon} has no spawner");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Restart commands are started by psmon's spawner (psmon forked at start,
/// before it holds a descriptor per watched process). It shrugs off the
/// signals that stop psmon (systemd may signal the whole unit); killed
/// anyway, psmon says so and starts the next restart itself; and it never
/// outlives psmon, not even a `kill -9` of psmon.
#[test]
fn restart_commands_come_from_the_spawner_which_ends_with_psmon() {
    let w = World::new("spawner");
    let parent = w.dir.0.join("parent");
    w.pfile(
        Some(&format!(
            "echo $PPID > {}; {} sleep >/dev/null 2>&1 &",
            parent.display(),
            w.victim.display()
        )),
        86400,
        10,
        "continue",
    );
    let (mut victim, old, mut psmon) = w.watch_running("poll");
    let spawner = spawner_of(psmon.child.id());
    kill9(old);
    victim.wait().unwrap();
    let up = psmon.wait_for(") Up", |m| m["pid"] != old);
    let parent_of = || -> u32 {
        std::fs::read_to_string(&parent)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(parent_of(), spawner, "the restart command's parent");
    // What it started gets every signal at its default: none blocked,
    // none ignored but what a shell's background job ignores anyway
    // (SIGINT, SIGQUIT), as the same command run by the test shows.
    let signals = |pid: u32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:"))
            .map(String::from)
            .collect()
    };
    let restarted = up["pid"].as_u64().unwrap() as u32;
    let reference = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} sleep >/dev/null 2>&1 & echo $!",
            w.victim.display()
        ))
        .output()
        .unwrap();
    let reference: u32 = String::from_utf8_lossy(&reference.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        signals(restarted),
        signals(reference),
        "signals of {restarted}"
    );
    kill9(reference);

    // The signals that stop psmon do not stop it.
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner as i32), signal);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(spawner), "the spawner ended on SIGTERM or SIGHUP");

    // Killed: psmon goes on, starting commands itself.
    kill9(spawner);
    psmon.wait("command spawner");
    // Reaped by psmon, not left a zombie.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{spawner}")).exists() {
        assert!(Instant::now() < deadline, "the dead spawner was not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = up["pid"].as_u64().unwrap() as u32;
    kill9(again);
    psmon.wait_for(") Up", |m| m["pid"] != again && m["pid"] != old);
    assert_eq!(
        parent_of(),
        psmon.child.id(),
        "psmon started the command itself"
    );

    // A new psmon's spawner dies with it.
    drop(psmon);
    let psmon = Psmon::start(&w.conf(), "poll");
    let spawner = spawner_of(psmon.child.id());
    kill9(psmon.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(spawner) {
        assert!(
            Instant::now() < deadline,
            "the spawner outlived psmon's kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
