//! Cause of death end to end, on the ebpf source: who sent the signal
//! (pid, comm, uid, parent), a kill from a script, the kernel's own
//! SIGSEGV with a core, the OOM killer in a memory cgroup the test makes,
//! and a netlink source that says it cannot tell.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// A directory with a conf for `exe` (report only: nothing restarts it).
fn site(tag: &str, exe_name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let exe = victim_copy(&dir.0, exe_name);
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\n",
            exe.display()
        ),
    )
    .unwrap();
    (dir, exe)
}

/// Waits until `pid` is Up and the source is open: before that, the
/// kernel filter does not yet let its signals through.
fn watching(psmon: &mut Psmon, pid: u32) {
    psmon.wait_for(") Up", |m| m["pid"] == pid);
    let open = |m: &Value| message(m).starts_with("watching process events");
    if !psmon.seen.iter().any(open) {
        psmon.wait("watching process events");
    }
}

fn down_of(psmon: &mut Psmon, pid: u32) -> Value {
    psmon.wait_for("Down", |m| m["pid"] == pid)
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

#[test]
fn a_down_names_the_sender_its_uid_and_parent() {
    if !needs_root("setpriv and the ebpf source") {
        return;
    }
    let (dir, exe) = site("cause-sender", "victimd");
    // Both run as nobody: a user may kill only its own processes.
    let as_nobody = |c: &mut Command| {
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    };
    let mut victim = Command::new("setpriv");
    as_nobody(&mut victim);
    let pid = reap_later(spawn_fresh(victim.arg(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    let mut killer = Command::new("setpriv");
    as_nobody(&mut killer);
    let killer = killer
        .args(["/bin/kill", "-9", &pid.to_string()])
        .spawn()
        .unwrap();
    let killer_pid = reap_later(killer);
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["cause"], "signal", "{down}");
    assert_eq!(down["killer_pid"], killer_pid, "{down}");
    assert_eq!(down["killer_comm"], "kill");
    assert_eq!(down["killer_uid"], 65534);
    // setpriv exec'd kill: its parent is this test.
    assert_eq!(down["killer_parent"][0], std::process::id(), "{down}");
    assert!(
        message(&down).ends_with(&format!(
            "Down (signal 9 from pid {killer_pid} 'kill' uid 65534, parent '{}' pid {})",
            down["killer_parent"][1].as_str().unwrap(),
            std::process::id()
        )),
        "{down}"
    );
}

#[test]
fn a_kill_from_a_script_names_the_script() {
    if !needs_root("the ebpf source") {
        return;
    }
    let (dir, exe) = site("cause-script", "victimd");
    let script = dir.0.join("rotate-logs");
    std::fs::write(&script, "#!/bin/sh\n/bin/kill -TERM \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    let status = Command::new(&script).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["killer_comm"], "kill", "{:#?}", psmon.seen);
    assert_eq!(down["killer_parent"][1], "rotate-logs", "{down}");
    assert!(message(&down).contains("signal 15 from pid"), "{down}");
}

#[test]
fn a_segfault_is_the_kernels_with_its_core() {
    if !needs_root("the ebpf source") {
        return;
    }
    let (dir, exe) = site("cause-segv", "victimd");
    // core_pattern here is `core`: the core goes to its working directory.
    let mut victim = Command::new("/bin/sh");
    victim
        .arg("-c")
        .arg(format!(
            "ulimit -c unlimited; exec {} segv-on-usr1",
            exe.display()
        ))
        .current_dir(&dir.0);
    let pid = reap_later(spawn_fresh(&mut victim));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    kill_with(pid, nix::sys::signal::Signal::SIGUSR1);
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["cause"], "kernel", "{:#?}", psmon.seen);
    // The message names where the dump went.
    assert!(
        message(&down).ends_with("Down (SIGSEGV, core dumped: core_pattern core)"),
        "{down}"
    );
    assert_eq!(down["core"], "core_pattern core", "{down}");
    assert_eq!(down["core_dumped"], true);
}

#[test]
fn the_oom_killer_is_named_with_the_memory_cgroup() {
    if !needs_root("cgroups and the ebpf source") {
        return;
    }
    let (dir, exe) = site("cause-oom", "hogd");
    let cgroup = MemoryCgroup::new(&format!("psmon-test-oom-{}", std::process::id()));
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("hog-on-usr1")));
    cgroup.add(pid);
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    kill_with(pid, nix::sys::signal::Signal::SIGUSR1);
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["cause"], "oom", "{down}");
    assert_eq!(down["cgroup"], cgroup.name.as_str(), "{down}");
    assert!(
        message(&down).ends_with(&format!(
            "Down (killed by the OOM killer: memory cgroup {})",
            cgroup.name
        )),
        "{down}"
    );
}

#[test]
fn netlink_says_the_cause_is_unknown() {
    if !needs_root("the netlink source") {
        return;
    }
    let (dir, exe) = site("cause-netlink", "victimd");
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "netlink");
    watching(&mut psmon, pid);
    kill9_pid(pid);
    let down = down_of(&mut psmon, pid);
    assert!(
        message(&down).ends_with("Down (SIGKILL, cause unknown: source netlink)"),
        "{down}"
    );
    assert_eq!(down["cause"], "unknown");
}

fn kill_with(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// A memory cgroup of 32 MiB made for a test, on whichever hierarchy has
/// the memory controller (v1 here, v2 on RHEL 9), found from mountinfo;
/// removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    /// Its path as `/proc/PID/cgroup` shows it.
    name: String,
    v2: bool,
}

impl MemoryCgroup {
    fn new(leaf: &str) -> MemoryCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut v1 = None;
        let mut v2 = None;
        for line in mountinfo.lines() {
            let (left, right) = line.split_once(" - ").unwrap();
            let mount = left.split(' ').nth(4).unwrap();
            let mut fs = right.split(' ');
            let (kind, opts) = (fs.next().unwrap(), fs.nth(1).unwrap_or(""));
            if kind == "cgroup" && opts.split(',').any(|o| o == "memory") {
                v1 = Some(PathBuf::from(mount));
            }
            if kind == "cgroup2" {
                v2 = Some(PathBuf::from(mount));
            }
        }
        let v2_has_memory = v2.as_ref().is_some_and(|m| {
            std::fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (root, v2) = match (v1, v2) {
            (_, Some(m)) if v2_has_memory => (m, true),
            (Some(m), _) => (m, false),
            _ => panic!("no memory cgroup controller mounted"),
        };
        let dir = root.join(leaf);
        std::fs::create_dir_all(&dir).unwrap();
        let limit = (32u64 << 20).to_string();
        if v2 {
            std::fs::write(dir.join("memory.max"), &limit).unwrap();
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        } else {
            std::fs::write(dir.join("memory.limit_in_bytes"), &limit).unwrap();
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &limit);
        }
        MemoryCgroup {
            dir,
            name: format!("/{leaf}"),
            v2,
        }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once its process is gone; retry while it is being reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.v2;
        eprintln!("left behind: {}", Path::new(&self.dir).display());
    }
}

/// The flight recorder: a service (a script) that runs a failing helper
/// three times and then exits; its Down is followed by the block of what
/// its tree did, in order.
#[test]
fn the_flight_recorder_shows_what_the_tree_did_before_the_death() {
    if !needs_root("the ebpf source") {
        return;
    }
    let dir = TempDir::new("cause-recorder");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let fifo = dir.0.join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = dir.0.join("batchd");
    std::fs::write(
        &script,
        "#!/bin/sh\nread go < \"$1\"\nfor i in 1 2 3; do /bin/sh -c 'exit 7'; done\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\n",
            script.display()
        ),
    )
    .unwrap();
    let pid = reap_later(spawn_fresh(Command::new(&script).arg(&fifo)));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    std::fs::write(&fifo, "go\n").unwrap();
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["exit_code"], 3, "{down}");
    let block = psmon.wait("flight recorder of");
    let events: Vec<&str> = block["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let helpers: Vec<&&str> = events
        .iter()
        .filter(|e| e.contains("exit code 7"))
        .collect();
    assert_eq!(helpers.len(), 3, "{events:#?}");
    // Each helper: forked, exec'd, exited, in that order.
    let first = events.iter().position(|e| e.contains("fork")).unwrap();
    assert!(events[first + 1].contains("exec") && events[first + 1].contains("/bin/sh"));
    assert!(events[first + 2].contains("exit code 7"), "{events:#?}");
    assert!(
        events
            .last()
            .unwrap()
            .contains(&format!("exit   pid {pid}")),
        "the death itself ends the block: {events:#?}"
    );
}

/// Signals between unwatched processes are counted in the kernel and never
/// reach psmon; a watched process's do.
#[test]
fn unwatched_signals_stay_in_the_kernel() {
    if !needs_root("the ebpf source") {
        return;
    }
    // A name of its own: the kernel filter passes processes by name too, and
    // other tests' `victimd`s are signalled meanwhile.
    let (dir, exe) = site("cause-storm", "stormd");
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    let status = || -> Value {
        let out = isolate(&mut Command::new(env!("CARGO_BIN_EXE_psmon")), &dir.0)
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = status();
    // An unwatched process with a SIGUSR2 handler, signalled 5,000 times.
    let other = reap_later(spawn_fresh(Command::new(victim()).arg("catch")));
    std::thread::sleep(Duration::from_millis(100));
    let unwatched = nix::unistd::Pid::from_raw(other as i32);
    for _ in 0..5000 {
        let _ = nix::sys::signal::kill(unwatched, nix::sys::signal::Signal::SIGUSR2);
    }
    kill9_pid(other);
    std::thread::sleep(Duration::from_millis(300));
    let after = status();
    let kernel = |v: &Value| v["signals"]["kernel"].as_u64().expect("a kernel count");
    assert!(
        kernel(&after) - kernel(&before) >= 5000,
        "the kernel saw them: {before} → {after}"
    );
    assert_eq!(
        after["signals"]["received"], before["signals"]["received"],
        "none reached psmon"
    );
    // The watched one's does.
    kill_with(pid, nix::sys::signal::Signal::SIGTERM);
    let down = down_of(&mut psmon, pid);
    assert_eq!(down["cause"], "signal", "{down}");
    assert!(status()["signals"]["received"].as_u64().unwrap() > 0);
}

/// `psmon status --json` of the daemon isolated under `dir`.
fn status_of(dir: &Path) -> Value {
    let out = isolate(&mut Command::new(env!("CARGO_BIN_EXE_psmon")), dir)
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A site whose entry restarts `exe` with `restart`, `retry` times.
fn restarting_site(tag: &str, exe_name: &str, restart: &str, retry: u32) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let exe = victim_copy(&dir.0, exe_name);
    let restart = restart.replace("EXE", &exe.display().to_string());
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"{restart}\"\nretry = {retry}\ngrace = 3600\nrestart_backoff = 0.1\nuser = \"any\"\n",
            exe.display()
        ),
    )
    .unwrap();
    (dir, exe)
}

/// The crash-loop classification of the site's one entry.
fn failures(dir: &Path) -> Value {
    status_of(dir)["entries"][0]["failures"].clone()
}

#[test]
fn a_service_that_exits_78_at_once_is_a_deterministic_crash_loop() {
    if !needs_root("the ebpf source") {
        return;
    }
    // Each restart exits 78 (EX_CONFIG) 0.1 s after it starts.
    let (dir, exe) = restarting_site(
        "loop-78",
        "configd",
        "EXE threads-first 78 >/dev/null 2>&1 &",
        3,
    );
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    kill9_pid(pid);
    let over = psmon.wait("Retry over");
    assert_eq!(over["failures"], "deterministic", "{over}");
    let said = message(&over);
    assert!(
        said.contains(
            ": exits 78 (EX_CONFIG) 0.1 s after start, 3 times — restarting will not help"
        ),
        "{said}"
    );
    let f = failures(&dir.0);
    assert_eq!(f["class"], "deterministic", "{f}");
    let table = isolate(&mut Command::new(env!("CARGO_BIN_EXE_psmon")), &dir.0)
        .arg("status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("failing (deterministic): exits 78 (EX_CONFIG)"),
        "{table}"
    );
}

#[test]
fn oom_kills_in_a_small_cgroup_are_a_resource_crash_loop() {
    if !needs_root("cgroups and the ebpf source") {
        return;
    }
    let cgroup = MemoryCgroup::new(&format!("psmon-test-loop-oom-{}", std::process::id()));
    let procs = cgroup.dir.join("cgroup.procs");
    // The restarted hog joins the cgroup before it execs.
    let restart = format!(
        "sh -c 'echo $$ > {} && exec EXE hog-on-usr1' >/dev/null 2>&1 &",
        procs.display()
    );
    let (dir, exe) = restarting_site("loop-oom", "hogd", &restart, 5);
    let pid = reap_later(spawn_fresh(Command::new(&exe).arg("hog-on-usr1")));
    cgroup.add(pid);
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    kill_with(pid, nix::sys::signal::Signal::SIGUSR1);
    down_of(&mut psmon, pid);
    // Its restart, Up (1 s), then made to hog again.
    let up = psmon.wait_for(") Up", |m| m["pid"] != pid);
    let second = up["pid"].as_u64().unwrap() as u32;
    kill_with(second, nix::sys::signal::Signal::SIGUSR1);
    let down = down_of(&mut psmon, second);
    assert_eq!(down["cause"], "oom", "{down}");
    let f = failures(&dir.0);
    assert_eq!(f["class"], "resource", "{f}");
    assert!(
        f["text"].as_str().unwrap().starts_with(&format!(
            "killed for resources 2 times (OOM kill in {}",
            cgroup.name
        )),
        "{f}"
    );
    psmon.wait_for(") Up", |m| m["pid"] != second);
    kill_all(&exe);
}

#[test]
fn kills_by_another_user_are_an_external_crash_loop_naming_the_sender() {
    if !needs_root("setpriv and the ebpf source") {
        return;
    }
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let (dir, exe) = restarting_site(
        "loop-external",
        "victimd",
        &format!("setpriv {} EXE sleep >/dev/null 2>&1 &", nobody.join(" ")),
        5,
    );
    let mut victim = Command::new("setpriv");
    victim.args(nobody);
    let mut pid = reap_later(spawn_fresh(victim.arg(&exe).arg("sleep")));
    let mut psmon = Psmon::start(&dir.0.join("conf"), "ebpf");
    watching(&mut psmon, pid);
    for _ in 0..2 {
        let killer = Command::new("setpriv")
            .args(nobody)
            .args(["/bin/kill", "-TERM", &pid.to_string()])
            .spawn()
            .unwrap();
        reap_later(killer);
        down_of(&mut psmon, pid);
        let old = pid;
        pid = psmon.wait_for(") Up", |m| m["pid"] != old)["pid"]
            .as_u64()
            .unwrap() as u32;
    }
    let f = failures(&dir.0);
    assert_eq!(f["class"], "external", "{f}");
    let text = f["text"].as_str().unwrap();
    assert!(
        text.starts_with("killed by other processes 2 times: pid "),
        "{text}"
    );
    assert!(text.contains("'kill' uid 65534"), "{text}");
    kill_all(&exe);
}
