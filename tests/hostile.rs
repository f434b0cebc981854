//! Hostile or careless input never stalls, fools or crashes psmon: a PID
//! namespace, a FIFO or a huge file where configuration should be, a
//! world-writable configuration directory, misnamed files, and a daemon
//! started twice. Each test would have caught the fault it names.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

fn psmon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(args)
        .output()
        .unwrap()
}

/// A directory of this test's own under `/var/tmp`, whose parents (root's,
/// 0755, and the sticky /var/tmp) pass the directory checks wherever the
/// checkout lives.
struct SafeDir(PathBuf);

impl SafeDir {
    fn new(tag: &str) -> SafeDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new("/var/tmp").join(format!("psmon-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SafeDir(dir)
    }
}

impl Drop for SafeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pfile(victim: &Path, retry: u32) -> String {
    format!(
        "##### PARAM #####\nMONITOR_INTERVAL = 1\n##### PENT #####\n{v} : {v} sleep >/dev/null 2>&1 & : 86400 : {retry} : continue\n",
        v = victim.display()
    )
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Inside a PID namespace the kernel programs would report host pids that
/// match nothing in psmon's /proc: ebpf is refused with the reason, and
/// `auto` falls back to a source that works there.
#[test]
fn a_pid_namespace_refuses_ebpf_and_still_monitors() {
    if !needs_root("unshare --pid") {
        return;
    }
    let dir = TempDir::new("pidns");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "nsvictim");
    std::fs::write(conf.join("pfile_ns"), pfile(&victim, 3)).unwrap();
    let wrapper = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let mut psmon = Psmon::start_in(&wrapper, &conf, "auto");
    let refusal = psmon.wait("`ebpf` source is unavailable");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("PID namespace"),
        "{refusal}"
    );
    psmon.wait("watching process events with the poll source");
    // Not running at start: restarted inside the namespace.
    psmon.wait(") Up");
    let host_pids = pids_of(&victim);
    assert_eq!(host_pids.len(), 1, "{host_pids:?}");
    kill_all(&victim);
    psmon.wait("Down");
    psmon.wait("Try to restart");
    psmon.wait(") Up");
    drop(psmon);
    kill_all(&victim);
}

/// A FIFO where a pfile should be: refused at start at once (not a hang),
/// and refused on reload while monitoring goes on; a later good reload works.
#[test]
fn a_fifo_in_the_configuration_never_blocks() {
    let dir = TempDir::new("fifo");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "fifovictim");
    std::fs::write(conf.join("pfile_app"), pfile(&victim, 3)).unwrap();
    let fifo = conf.join("pfile_fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let mut run = Command::new(env!("CARGO_BIN_EXE_psmon"));
    let mut run = isolate(&mut run, &dir.0)
        .args(["run", "--insecure-config", "--source", "poll", "--conf"])
        .arg(&conf)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!("psmon run hung on a FIFO in its configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    let out = run.wait_with_output().unwrap();
    assert!(
        stderr_of(&out).contains("pfile_fifo: refused: a FIFO"),
        "{}",
        stderr_of(&out)
    );

    // At run time: SIGHUP with the FIFO planted.
    std::fs::remove_file(&fifo).unwrap();
    let mut psmon = Psmon::start(&conf, "poll");
    psmon.wait(") Up");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    psmon.wait("refused: a FIFO");
    psmon.wait("still running the previous one");
    std::fs::remove_file(&fifo).unwrap();
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    psmon.wait("configuration reloaded");
    drop(psmon);
    kill_all(&victim);
}

/// A megabyte of garbage, then SIGHUP: a bounded report (the first errors
/// with positions, then a count), and a kill meanwhile is still restarted.
/// Past the size limit the file is refused unread.
#[test]
fn a_garbage_reload_is_reported_briefly_and_monitoring_goes_on() {
    let dir = TempDir::new("garbage");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "garbvictim");
    std::fs::write(conf.join("pfile_app"), pfile(&victim, 3)).unwrap();
    let mut psmon = Psmon::start(&conf, "poll");
    let first = psmon.wait(") Up")["pid"].as_u64().unwrap() as u32;

    let line = "this is : not : a : pent line\n";
    let garbage = "##### PENT #####\n".to_string()
        + &line.repeat((psmon::config::MAX_FILE_BYTES as usize - 64) / line.len());
    std::fs::write(conf.join("pfile_garbage"), &garbage).unwrap();
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    psmon.wait("still running the previous one");
    let refused: Vec<&Value> = psmon
        .seen
        .iter()
        .filter(|m| {
            m["message"]
                .as_str()
                .is_some_and(|s| s.starts_with("reload refused"))
        })
        .collect();
    assert_eq!(
        refused.len(),
        psmon::config::MAX_ERRORS_PER_FILE + 1,
        "{refused:?}"
    );
    let last = refused.last().unwrap()["message"].as_str().unwrap();
    assert!(
        last.contains("more errors in this file"),
        "the rest is counted: {last}"
    );
    support::kill9_pid(first);
    psmon.wait("Try to restart");
    psmon.wait_for(") Up", |m| m["pid"] != first);

    // Over the limit: refused before it is read.
    std::fs::write(conf.join("pfile_garbage"), garbage.repeat(2)).unwrap();
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = psmon.wait("reload refused");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("more than the 1024 KiB"),
        "{refused}"
    );
    drop(psmon);
    kill_all(&victim);
}

/// Like sshd's StrictModes: a configuration directory others can write, or
/// one below a directory others can write (not sticky), is refused.
#[test]
fn writable_directories_are_refused() {
    if !needs_root("root-owned directories") {
        return;
    }
    let top = SafeDir::new("modes");
    let conf = top.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(conf.join("pfile_app"), pfile(Path::new("/usr/sbin/d"), 0)).unwrap();
    std::fs::set_permissions(
        conf.join("pfile_app"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap();
    let out = psmon(&["check", conf_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));

    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = psmon(&["check", conf_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("mode 777 lets group or others write it"),
        "{}",
        stderr_of(&out)
    );
    let out = psmon(&["run", "--conf", conf_s, "--source", "poll"]);
    assert_eq!(out.status.code(), Some(2), "run agrees with check");

    // A writable parent: others could rename the directory and put theirs.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&top.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = psmon(&["check", conf_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("a directory above"),
        "{}",
        stderr_of(&out)
    );
    // Sticky, like /tmp: only the owner may rename what is in it.
    std::fs::set_permissions(&top.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = psmon(&["check", conf_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    // --insecure-config lifts it all, for tests.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = psmon(&["check", "--insecure-config", conf_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

/// Small wrongs a user sees: each now says the right thing.
#[test]
fn misnamed_missing_and_empty_inputs_say_what_they_are() {
    let dir = TempDir::new("small");
    let out = psmon(&["convert", "/nonexistent/pfile_x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("no such file or directory"),
        "{}",
        stderr_of(&out)
    );
    // A pfile under another name, given explicitly: known by its content.
    let myfile = dir.0.join("myfile");
    std::fs::write(&myfile, pfile(Path::new("/usr/sbin/d"), 0)).unwrap();
    let out = psmon(&["check", "--insecure-config", myfile.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let other = dir.0.join("notes.txt");
    std::fs::write(&other, "hello\n").unwrap();
    let out = psmon(&["check", "--insecure-config", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("name it pfile_NAME"),
        "{}",
        stderr_of(&out)
    );
    // A directory with nothing to watch: check and run agree.
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = psmon(&["check", "--insecure-config", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("nothing to watch"),
        "{}",
        stderr_of(&out)
    );
    // An unknown log level is a usage error, not silently "info".
    let out = psmon(&["--log-level", "bogus", "check", myfile.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// A restart command that starts two processes (as a second restart of a
/// daemon still starting would): warned once it is Up.
#[test]
fn more_instances_than_expected_after_a_restart_are_warned() {
    let dir = TempDir::new("twice");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "twicevictim");
    std::fs::write(
        conf.join("pfile_app"),
        format!(
            // Both started before the command ends, so the scan after it
            // sees both (a poll source finds processes only by scanning).
            "##### PENT #####\n{v} : {v} sleep >/dev/null 2>&1 & {v} sleep >/dev/null 2>&1 & sleep 0.2 : 86400 : 3 : continue\n",
            v = victim.display()
        ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "poll");
    let warning = psmon.wait("instances after its restart");
    assert_eq!(warning["running"], 2, "{warning}");
    assert_eq!(warning["expected"], 1, "{warning}");
    drop(psmon);
    kill_all(&victim);
}

/// With `poll`, a death the pidfd saw is acted on at once, not at the next
/// scan: with scans 5 s apart, Down comes well before one.
#[test]
fn poll_acts_on_the_pidfd_not_the_next_scan() {
    let dir = TempDir::new("pollfd");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "pollvictim");
    std::fs::write(
        conf.join("pfile_app"),
        pfile(&victim, 3).replace("MONITOR_INTERVAL = 1", "MONITOR_INTERVAL = 5"),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "poll");
    let first = psmon.wait(") Up")["pid"].as_u64().unwrap() as u32;
    let killed = Instant::now();
    support::kill9_pid(first);
    psmon.wait(&format!("pid={first}] Down"));
    let after = killed.elapsed();
    assert!(
        after < Duration::from_secs(3),
        "Down came {after:?} after the kill: it waited for a scan"
    );
    drop(psmon);
    kill_all(&victim);
}

/// Logging that cannot proceed never delays monitoring: psmon's stderr is
/// a pipe nobody reads, already full (every write would block), and mid-run
/// the filesystem of its log file fills up (every write fails). The victim
/// is started, and restarted after each kill, with messages dropped and
/// counted. On every source.
fn stuck_logging_never_stops_monitoring(source: &str) {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new(&format!("stuck-log-{source}"));
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, &format!("stuck{source}"));
    std::fs::write(conf.join("pfile_app"), pfile(&victim, 100)).unwrap();
    // The log directory: a small filesystem of its own, to fill up.
    let log = dir.0.join("log");
    std::fs::create_dir_all(&log).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "psmon-test-log"])
        .arg(&log)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted || !is_root(), "root can mount a tmpfs");
    let (_unread, write) = nix::unistd::pipe().unwrap();
    // Fill it: non-blocking while the test writes, blocking again for psmon.
    let set_nonblocking = |on: bool| {
        let flags = if on { libc::O_NONBLOCK } else { 0 };
        // SAFETY: F_SETFL on a descriptor this test owns.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, flags) };
    };
    set_nonblocking(true);
    let chunk = [b'x'; 4096];
    while nix::unistd::write(&write, &chunk).is_ok() {}
    set_nonblocking(false);
    let mut psmon = Command::new(env!("CARGO_BIN_EXE_psmon"));
    let mut psmon = isolate(&mut psmon, &dir.0)
        .args(["run", "--insecure-config", "--source", source, "--conf"])
        .arg(&conf)
        .arg("--log-dir")
        .arg(&log)
        .stderr(std::process::Stdio::from(write))
        .spawn()
        .unwrap();
    let appear = |not: Option<u32>| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(pid) = pids_of(&victim).into_iter().find(|p| Some(*p) != not) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "psmon did not (re)start the victim: stuck on its logging?"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = appear(None);
    std::thread::sleep(Duration::from_millis(1200)); // Up (start_secs)
    support::kill9_pid(first);
    let second = appear(Some(first));
    if mounted {
        // The log file's filesystem is full from now on.
        let mut filler = std::fs::File::create(log.join("filler")).unwrap();
        use std::io::Write;
        while filler.write_all(&chunk).is_ok() {}
        assert_eq!(
            std::fs::OpenOptions::new()
                .append(true)
                .open(log.join("psmon.log"))
                .unwrap()
                .write_all(&chunk[..1])
                .map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOSPC)),
            "the log filesystem is full"
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    support::kill9_pid(second);
    let third = appear(Some(second));
    assert_ne!(second, third);
    let _ = psmon.kill();
    let _ = psmon.wait();
    kill_all(&victim);
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&log).status();
    }
}

mod stuck_logging_never_stops_monitoring {
    #[test]
    fn ebpf() {
        if super::is_root() {
            super::stuck_logging_never_stops_monitoring("ebpf")
        }
    }
    #[test]
    fn netlink() {
        if super::is_root() {
            super::stuck_logging_never_stops_monitoring("netlink")
        }
    }
    #[test]
    fn poll() {
        super::stuck_logging_never_stops_monitoring("poll")
    }
}

/// Under systemd (`Type=notify`, `WatchdogSec=`), with NOTIFY_SOCKET an
/// abstract socket as in containers: psmon says READY=1 once it watches,
/// keeps the watchdog fed from its event loop, and says STOPPING=1.
#[test]
fn systemd_notify_over_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("notify");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "notifyvictim");
    std::fs::write(conf.join("pfile_app"), pfile(&victim, 3)).unwrap();
    let name = format!("psmon-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_psmon"));
    let mut psmon = isolate(&mut command, &dir.0)
        .args(["run", "--insecure-config", "--source", "poll", "--conf"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kept fed every 100 ms (half of WATCHDOG_USEC): five keep-alives
    // well within the 10 s a read may wait.
    let mut said = Vec::new();
    let mut buf = [0u8; 512];
    while said
        .iter()
        .filter(|s: &&String| s.contains("WATCHDOG=1"))
        .count()
        < 5
    {
        let n = listener
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({e}); had {said:?}"));
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = said.iter().position(|s| s.contains("READY=1"));
    assert!(ready.is_some(), "{said:?}");
    assert!(
        said[ready.unwrap()].contains("STATUS=source poll; "),
        "{said:?}"
    );
    // A reload is framed by RELOADING=1 and READY=1.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(psmon.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let mut framed = Vec::new();
    while !framed.iter().any(|s: &String| s.contains("READY=1")) {
        let n = listener.recv(&mut buf).expect("READY=1 after the reload");
        let s = String::from_utf8_lossy(&buf[..n]).into_owned();
        if s.contains("RELOADING=1") || s.contains("READY=1") {
            framed.push(s);
        }
    }
    assert!(framed[0].contains("RELOADING=1"), "{framed:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(psmon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n = listener.recv(&mut buf).expect("STOPPING=1 before exit");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    psmon.wait().unwrap();
    kill_all(&victim);
}
