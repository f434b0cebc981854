//! Operating a running psmon through its control socket, end to end: status
//! after real kills, pause and resume, reload of one pfile, the recovery
//! drill, who may ask, garbage on the socket, a second daemon, and psmon
//! killed -9 and started again.

mod support;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// A test's directory with one pfile watching a copy of the victim.
struct Site {
    dir: TempDir,
    victim: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Site {
        Site::with(TempDir::new(tag))
    }

    fn with(dir: TempDir) -> Site {
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let victim = victim_copy(&dir.0, "opvictim");
        let site = Site { dir, victim };
        let start = format!("{} sleep", site.victim.display());
        site.pfile("app", &site.victim, &start, 3);
        site
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    /// `pfile_NAME` watching `path`, restarted by `restart` (daemonized by
    /// the shell), `retry` attempts in 60 s.
    fn pfile(&self, name: &str, path: &Path, restart: &str, retry: u32) {
        std::fs::write(
            self.conf().join(format!("pfile_{name}")),
            format!(
                "##### PARAM #####\nMONITOR_INTERVAL = 1\n##### PENT #####\n{} : {restart} >/dev/null 2>&1 & : 60 : {retry} : continue\n",
                path.display()
            ),
        )
        .unwrap();
    }

    /// `psmon ARGS` as a client of this site's daemon.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_psmon"));
        isolate(&mut command, &self.dir.0)
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Starts the victim, then psmon, and waits until it is Up.
    fn running(&self) -> (Psmon, u32) {
        let pid = reap_later(spawn_fresh(Command::new(&self.victim).arg("sleep")));
        let mut psmon = Psmon::start(&self.conf(), source());
        psmon.wait_for(") Up", |m| m["pid"] == pid);
        (psmon, pid)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        kill_all(&self.victim);
    }
}

fn source() -> &'static str {
    if is_root() { "ebpf" } else { "poll" }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entry of `status` for `path`.
fn entry<'a>(status: &'a Value, path: &Path) -> &'a Value {
    status["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not in {status:#}", path.display()))
}

/// Waits until the entry's status satisfies `pred`.
fn until(site: &Site, path: &Path, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = site.status();
        let e = entry(&status, path).clone();
        if pred(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "status never got there: {e:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_tells_what_happened() {
    let site = Site::new("op-status");
    let (mut psmon, pid) = site.running();
    let e = entry(&site.status(), &site.victim).clone();
    assert_eq!(e["state"], "up");
    assert_eq!(e["pids"][0]["pid"], pid);
    assert_eq!(e["attempts"], 0);
    assert_eq!(e["retry"], 3);
    kill9_pid(pid);
    psmon.wait_for(") Up", |m| m["pid"] != pid);
    let e = until(&site, &site.victim, |e| e["state"] == "up");
    assert_ne!(e["pids"][0]["pid"], pid, "the new process");
    assert_eq!(e["attempts"], 1);
    assert_eq!(e["last_exit"]["pid"], pid);
    assert_eq!(e["last_exit"]["signal"], 9);
    assert!(
        e["since"].is_string() && e["pids"][0]["started"].is_string(),
        "{e:#}"
    );
    let status = site.status();
    assert_eq!(status["source"], source());
    assert_eq!(status["lost_events"], 0);
    // The table says the same for people.
    let table = text(&site.ctl(&["status", "app"]).stdout);
    assert!(
        table.contains("STATE") && table.contains(" up ") && table.contains("1/3"),
        "{table}"
    );
    // An unknown pfile is a usage error.
    let out = site.ctl(&["status", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no pfile named 'nosuch'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn pause_stops_restarts_and_resume_handles_the_death() {
    let site = Site::new("op-pause");
    let (mut psmon, pid) = site.running();
    let out = site.ctl(&["pause", "pfile_app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    psmon.wait("Command execute. [stop] pfile='app'");
    kill9_pid(pid);
    let quiet = psmon.collect(Duration::from_millis(1500));
    assert!(
        quiet.iter().all(|m| {
            let m = m["message"].as_str().unwrap_or("");
            !m.contains("Down") && !m.contains("Try to restart")
        }),
        "paused, yet: {quiet:#?}"
    );
    assert!(
        pids_of(&site.victim).is_empty(),
        "not restarted while paused"
    );
    assert_eq!(entry(&site.status(), &site.victim)["state"], "paused");
    // A drill of a paused entry is refused: exit 2.
    let out = site.ctl(&["test", "app"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = site.ctl(&["resume", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    psmon.wait("Command execute. [start] pfile='app'");
    psmon.wait("Down");
    psmon.wait("Try to restart");
    psmon.wait(") Up");
}

#[test]
fn the_drill_measures_recovery_and_fails_when_there_is_none() {
    let site = Site::new("op-drill");
    let (mut psmon, pid) = site.running();
    let out = site.ctl(&["test", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("killed pid {pid}")) && said.contains("back up"),
        "{said}"
    );
    psmon.wait(") Up");
    // Not counted against the budget.
    assert_eq!(entry(&site.status(), &site.victim)["attempts"], 0);

    // A restart command that cannot work: the drill says so, exit 1.
    site.pfile("app", &site.victim, "false", 1);
    let out = site.ctl(&["reload", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = site.ctl(&["test", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("did not recover"),
        "{}",
        text(&out.stderr)
    );
    drop(psmon);
}

#[test]
fn reload_of_one_pfile_keeps_the_others_budgets() {
    let site = Site::new("op-reload");
    let other = victim_copy(&site.dir.0, "opother");
    site.pfile("other", &other, &format!("{} sleep", other.display()), 5);
    let first = reap_later(spawn_fresh(Command::new(&other).arg("sleep")));
    let (mut psmon, pid) = site.running();
    psmon.wait_for(") Up", |m| m["pid"] == first);
    kill9_pid(pid);
    until(&site, &site.victim, |e| {
        e["state"] == "up" && e["attempts"] == 1
    });
    // `other` gets another retry count; `app` is left as it runs.
    site.pfile("other", &other, &format!("{} sleep", other.display()), 7);
    let out = site.ctl(&["reload", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    psmon.wait("Command execute. [reload] pfile='other'");
    let status = site.status();
    assert_eq!(
        entry(&status, &site.victim)["attempts"],
        1,
        "app's budget kept"
    );
    assert_eq!(entry(&status, &other)["retry"], 7);
    assert_eq!(
        entry(&status, &other)["pids"][0]["pid"],
        first,
        "nothing restarted"
    );
    // A broken file is refused with where, and the running one kept.
    std::fs::write(
        site.conf().join("pfile_other"),
        "##### PENT #####\nnot a line\n",
    )
    .unwrap();
    let out = site.ctl(&["reload", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pfile_other:2:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(entry(&site.status(), &other)["retry"], 7);
    site.pfile("other", &other, &format!("{} sleep", other.display()), 7);
    // A key read only at start: the reload says it is not applied.
    std::fs::write(
        site.conf().join("psagent.conf"),
        "LOG_LEVEL = DEBUG\nRETRY_INTERVAL = 3\nEVENT_QUEUE_SIZE = 4096\n",
    )
    .unwrap();
    let out = site.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = psmon.wait("which psmon reads only when it starts");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload: EVENT_QUEUE_SIZE, RETRY_INTERVAL changed")),
        "{said}"
    );
    // psmon first: it would restart what is killed under it.
    drop(psmon);
    kill_all(&other);
}

#[test]
fn who_may_ask() {
    // Under /tmp: other users must reach the socket wherever the checkout is.
    let site = Site::with(TempDir::new_in(Path::new("/tmp"), "op-access"));
    let (_psmon, _) = site.running();
    // A copy other users may run, wherever the checkout is.
    let client = site.dir.0.join("psmon-client");
    std::fs::copy(env!("CARGO_BIN_EXE_psmon"), &client).unwrap();
    let nobody = |args: &[&str]| {
        let mut command = Command::new(&client);
        isolate(&mut command, &site.dir.0)
            .args(args)
            .uid(65534)
            .gid(65534);
        // Just copied: another test's fork may hold it open for a moment.
        for _ in 0..100 {
            match command.output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other.unwrap(),
            }
        }
        panic!("{} stayed busy", client.display());
    };
    if !is_root() {
        return; // only root can become nobody; CI runs as root
    }
    let out = nobody(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    drop(_psmon);

    // With CONTROL_GROUP, its members may.
    std::fs::write(
        site.conf().join("psagent.conf"),
        "CONTROL_GROUP = nogroup\n",
    )
    .unwrap();
    let mut psmon = Psmon::start(&site.conf(), source());
    // The victim is taken over as it runs (no new Up).
    psmon.wait("state of the previous psmon taken over");
    let out = nobody(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = nobody(&["pause", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn garbage_floods_and_hangups_change_nothing() {
    use std::io::{Read, Write};
    let site = Site::new("op-garbage");
    let (mut psmon, pid) = site.running();
    let socket = socket_in(&site.dir.0);
    let ask = |bytes: &[u8]| {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(bytes);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    for (bytes, says) in [
        (&b"garbage\n"[..], "not JSON"),
        (b"{\"v\":1,\"cmd\":\"reboot\"}\n", "bad request"),
        (b"{\"v\":9,\"cmd\":\"status\"}\n", "protocol version 9"),
    ] {
        let answer = ask(bytes);
        let v: Value = serde_json::from_str(answer.lines().next().unwrap()).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let huge = vec![b'x'; 70 * 1024];
    assert!(
        ask(&huge).contains("longer than"),
        "oversized requests are refused"
    );
    // A hundred clients at once, some hanging up mid-request.
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                if i % 2 == 0 {
                    let _ = s.write_all(b"{\"v\":1,\"cmd\":\"sta");
                } else {
                    let _ = s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n");
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(s).read_to_string(&mut line);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Monitoring went on all along.
    kill9_pid(pid);
    psmon.wait_for(") Up", |m| m["pid"] != pid);
}

#[test]
fn one_daemon_per_socket_and_clients_say_when_there_is_none() {
    let site = Site::new("op-second");
    let out = site.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("psmon is not running"),
        "{}",
        text(&out.stderr)
    );
    let (psmon, _) = site.running();
    let mut second = Command::new(env!("CARGO_BIN_EXE_psmon"));
    let out = isolate(&mut second, &site.dir.0)
        .args(["run", "--insecure-config", "--source", "poll", "--conf"])
        .arg(site.conf())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!("already running (pid {})", psmon.child.id())),
        "{said}"
    );
    // Killed -9, psmon leaves its socket behind: the next one replaces it.
    psmon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(psmon);
    assert!(socket_in(&site.dir.0).exists());
    let mut again = Psmon::start(&site.conf(), source());
    again.wait("psmon starting");
    assert_eq!(site.ctl(&["status"]).status.code(), Some(0));
}

/// psmon killed -9 while a restart command runs (it takes 2 s), started
/// again: the command is waited for, not run a second time; the budget
/// is kept; and a target that died while psmon was down is restarted.
#[test]
fn a_restarted_psmon_keeps_budgets_and_never_restarts_twice() {
    let site = Site::new("op-crash");
    let slow = format!("sleep 2; {} sleep", site.victim.display());
    site.pfile("app", &site.victim, &slow, 3);
    let (mut psmon, pid) = site.running();
    kill9_pid(pid);
    psmon.wait("Try to restart");
    std::thread::sleep(Duration::from_millis(500));
    psmon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(psmon);
    let mut psmon = Psmon::start(&site.conf(), source());
    psmon.wait("state of the previous psmon taken over");
    psmon.wait_for(") Up", |m| m["pid"] != pid);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pids_of(&site.victim).len(), 1, "one instance, not two");
    let e = entry(&site.status(), &site.victim).clone();
    assert_eq!(e["attempts"], 1, "{e:#}");
    assert!(
        !psmon.seen.iter().any(|m| m["message"]
            .as_str()
            .is_some_and(|t| t.contains("Try to restart"))),
        "the command was not run again"
    );

    // Down while psmon is down: found at start, restarted, budget 2 of 3.
    let now = e["pids"][0]["pid"].as_u64().unwrap() as u32;
    psmon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(psmon);
    kill9_pid(now);
    let mut psmon = Psmon::start(&site.conf(), source());
    psmon.wait("Down");
    psmon.wait("Try to restart");
    until(&site, &site.victim, |e| {
        e["state"] == "up" && e["attempts"] == 2
    });
}

/// The health queue: written on every event, read by `psmon dump` while
/// the daemon is gone; SHM_DUMP_FILE written on every Down; a segment
/// whose header is not psmon's is reported, never trusted.
#[test]
fn the_health_queue_outlives_the_daemon() {
    let site = Site::new("op-shm");
    let key: u32 = 0x7b00_0000 | ((std::process::id() & 0xffff) << 4);
    let dump_file = site.dir.0.join("app.dump");
    std::fs::write(
        site.conf().join("pfile_app"),
        format!(
            "##### PARAM #####\nMONITOR_INTERVAL = 1\nIPCKEY = {key:#x}\nSHM_DUMP_FILE = {}\n##### PENT #####\n{v} : {v} sleep >/dev/null 2>&1 & : 60 : 3 : continue\n",
            dump_file.display(),
            v = site.victim.display()
        ),
    )
    .unwrap();
    let (mut psmon, pid) = site.running();
    kill9_pid(pid);
    psmon.wait_for(") Up", |m| m["pid"] != pid);
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&dump_file).is_ok_and(|t| t.contains("] Down")) {
        assert!(
            Instant::now() < deadline,
            "SHM_DUMP_FILE not written on Down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(psmon);
    let dump = || {
        Command::new(env!("CARGO_BIN_EXE_psmon"))
            .args(["dump", "app", "--insecure-config", "--conf"])
            .arg(site.conf())
            .output()
            .unwrap()
    };
    let out = dump();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("no longer running"), "{said}");
    assert!(said.contains(&format!("pid={pid}] Down")), "{said}");
    assert!(
        said.contains("Try to restart") && said.contains(") Up"),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}  up", site.victim.display())),
        "{said}"
    );
    // Without --conf (the configuration may be anywhere): found by its
    // header, naming its pfile and file.
    let found = Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(["dump", "pfile_app"])
        .output()
        .unwrap();
    assert_eq!(found.status.code(), Some(0), "{}", text(&found.stderr));
    let found = text(&found.stdout);
    let ours = format!(
        "health queue {key:#x} of pfile 'app' ({})",
        site.conf().join("pfile_app").display()
    );
    assert!(found.contains(&ours), "{ours} in {found}");
    assert!(found.contains(&format!("pid={pid}] Down")), "{found}");
    let none = Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(["dump", "no-such-pfile"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2), "{}", text(&none.stderr));
    assert!(
        text(&none.stderr).contains("ipcs -m"),
        "{}",
        text(&none.stderr)
    );
    // Someone else's bytes where the header should be.
    // SAFETY: attaching the test's own segment and writing its first bytes.
    unsafe {
        let id = libc::shmget(key as libc::key_t, 0, 0);
        assert!(id >= 0);
        let base = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(base as isize, -1);
        std::ptr::copy_nonoverlapping(b"GARBAGE!".as_ptr(), base.cast::<u8>(), 8);
        libc::shmdt(base);
    }
    let out = dump();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not psmon's"),
        "{}",
        text(&out.stderr)
    );
    // SAFETY: removing the test's segment.
    unsafe {
        let id = libc::shmget(key as libc::key_t, 0, 0);
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// Removing a pfile's IPCKEY (or the pfile) removes its segment.
#[test]
fn a_pfile_gone_takes_its_health_queue_along() {
    let site = Site::new("op-shm-gone");
    let key: u32 = 0x7b80_0000 | ((std::process::id() & 0xffff) << 4);
    let with_key = |key: Option<u32>| {
        let param = key
            .map(|k| format!("IPCKEY = {k:#x}\n"))
            .unwrap_or_default();
        std::fs::write(
            site.conf().join("pfile_app"),
            format!(
                "##### PARAM #####\nMONITOR_INTERVAL = 1\n{param}##### PENT #####\n{v} : {v} sleep >/dev/null 2>&1 & : 60 : 3 : continue\n",
                v = site.victim.display()
            ),
        )
        .unwrap();
    };
    let exists = || {
        // SAFETY: shmget with integer arguments, creating nothing.
        unsafe { libc::shmget(key as libc::key_t, 0, 0) >= 0 }
    };
    with_key(Some(key));
    let (_psmon, _) = site.running();
    assert!(exists(), "psmon made the segment");
    with_key(None);
    let out = site.ctl(&["reload", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!exists(), "the segment went with its IPCKEY");
}

/// The audit trail: who did what and how it ended, refused requests and
/// SIGHUP included, in the log, `psmon audit` and `/status`.
#[test]
fn every_operator_action_is_on_the_record() {
    if !is_root() {
        return; // only root can become nobody; CI runs as root
    }
    let site = Site::with(TempDir::new_in(Path::new("/tmp"), "op-audit"));
    let (mut psmon, _) = site.running();
    let said =
        |psmon: &mut Psmon, text: &str| psmon.wait(text)["message"].as_str().unwrap().to_string();
    // Root pauses and resumes.
    assert_eq!(site.ctl(&["pause", "app"]).status.code(), Some(0));
    let paused = said(
        &mut psmon,
        "Command execute. [pause] pfile='app' by uid 0 (pid ",
    );
    assert!(paused.ends_with("'psmon'): done"), "{paused}");
    assert_eq!(site.ctl(&["resume", "app"]).status.code(), Some(0));
    said(&mut psmon, "Command execute. [resume] pfile='app' by uid 0");
    // A request psmon cannot carry out: refused, and recorded.
    assert_eq!(site.ctl(&["pause", "nosuch"]).status.code(), Some(2));
    let nosuch = said(
        &mut psmon,
        "Command execute. [pause] pfile='nosuch' by uid 0",
    );
    assert!(
        nosuch.contains("refused: no pfile named 'nosuch'"),
        "{nosuch}"
    );
    // Nobody may not, even with the socket opened to all by mistake.
    std::fs::set_permissions(
        socket_in(&site.dir.0),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let client = site.dir.0.join("psmon-client");
    std::fs::copy(env!("CARGO_BIN_EXE_psmon"), &client).unwrap();
    let mut as_nobody = Command::new(&client);
    isolate(&mut as_nobody, &site.dir.0)
        .args(["pause", "app"])
        .uid(65534)
        .gid(65534);
    let out = (0..100)
        .find_map(|_| match as_nobody.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
            other => Some(other.unwrap()),
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let refused = said(
        &mut psmon,
        "Command execute. [pause] pfile='app' by uid 65534",
    );
    assert!(
        refused.contains("'psmon-client'): refused: permission denied"),
        "{refused}"
    );
    // A SIGHUP names its sender (by name while it still runs: a shell
    // that signals and sleeps); a reload says what changed.
    let killer = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -HUP {}; sleep 2", psmon.child.id()))
        .spawn()
        .unwrap();
    let killer_pid = reap_later(killer);
    let hup = said(&mut psmon, "Command execute. [reload] by SIGHUP from uid 0");
    assert!(
        hup.ends_with(&format!("(pid {killer_pid} 'sh'): done: nothing changed")),
        "{hup}"
    );
    let other = victim_copy(&site.dir.0, "opother");
    site.pfile("other", &other, &format!("{} sleep", other.display()), 1);
    assert_eq!(site.ctl(&["reload"]).status.code(), Some(0));
    let reload = said(&mut psmon, "Command execute. [reload] by uid 0");
    assert!(
        reload.ends_with(&format!("done: 1 added ({})", other.display())),
        "{reload}"
    );
    // `psmon audit`, in order, and the last ones in /status.
    let out = site.ctl(&["audit", "--since", "1h", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let records: Value = serde_json::from_slice(&out.stdout).unwrap();
    let what: Vec<(String, String)> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("pause", "done"),
        ("resume", "done"),
        ("pause", "refused"),
        ("pause", "refused"),
        ("reload", "done"),
        ("reload", "done"),
    ];
    assert_eq!(
        what,
        expected.map(|(a, o)| (a.to_string(), o.to_string())),
        "{records:#}"
    );
    let table = text(&site.ctl(&["audit"]).stdout);
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(
        table
            .lines()
            .nth(3)
            .unwrap()
            .contains("pause pfile='app'  uid 65534"),
        "{table}"
    );
    let status = site.status();
    assert_eq!(status["audit"].as_array().unwrap().len(), 6, "{status:#}");
    // What its restart command started, once nothing restarts it.
    drop(psmon);
    kill_all(&other);
}
