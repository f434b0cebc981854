//! Shared by the end-to-end tests: the victim program, privilege checks and
//! waiting for events.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The victim program (tests/support/victim.c), compiled once per test binary.
pub fn victim() -> &'static Path {
    static VICTIM: OnceLock<PathBuf> = OnceLock::new();
    VICTIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/victim.c");
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("victim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("victim");
        let status = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("a C compiler (cc) to build the test victim");
        assert!(status.success(), "compiling {} failed", src.display());
        out.canonicalize().unwrap()
    })
}

pub fn spawn_victim(args: &[&str]) -> Child {
    Command::new(victim())
        .args(args)
        .spawn()
        .expect("spawn the victim")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when the test may run; prints why not otherwise. CI runs as root,
/// so there these tests always run.
pub fn needs_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {what} needs root (CI runs it as root)");
        return false;
    }
    true
}

/// True when `tool` (from Debian's `package`) is installed; prints why the
/// test is skipped otherwise. CI installs every such package (.ci/run), so
/// there a missing one fails the test rather than skips it.
pub fn needs(tool: &str, package: &str) -> bool {
    if Path::new(tool).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install {package} (.ci/run does)"
    );
    eprintln!("skipped: needs {tool} ({package})");
    false
}

/// `/proc/PID/stat` field 22: start time in clock ticks since boot.
pub fn proc_start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

pub fn kill9(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills every process whose executable is `exe` (cleanup of what a test,
/// or psmon on its behalf, started).
pub fn kill_all(exe: &Path) {
    for pid in pids_of(exe) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Live (non-zombie) processes whose executable is `exe`.
pub fn pids_of(exe: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

/// A private copy of the victim with its own name (so its `comm` and path
/// are this test's alone), in `dir`.
pub fn victim_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(victim(), &path).unwrap();
    path.canonicalize().unwrap()
}

/// Gives a `psmon run` its own control socket and state directory under
/// `dir`, so that daemons of tests running at once never meet.
pub fn isolate<'a>(command: &'a mut Command, dir: &Path) -> &'a mut Command {
    command
        .env("PSMON_SOCKET", socket_in(dir))
        .env("PSMON_STATE_DIR", dir.join("state"))
}

/// The control socket of a daemon isolated under `dir`.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("psmon.sock")
}

/// A temporary directory of this test's own, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        Self::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), tag)
    }

    /// Under `base` (e.g. `/tmp`, which every user can traverse, wherever
    /// the checkout is).
    pub fn new_in(base: &Path, tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("psmon-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `psmon run` and its operator messages (JSON lines).
pub struct Psmon {
    pub child: Child,
    wrapped: bool,
    messages: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Psmon {
    pub fn start(conf: &Path, source: &str) -> Psmon {
        Self::start_in(&[], conf, source)
    }

    /// Started through `wrapper` (e.g. `unshare --pid --fork`), when given.
    pub fn start_in(wrapper: &[&str], conf: &Path, source: &str) -> Psmon {
        let psmon = Path::new(env!("CARGO_BIN_EXE_psmon"));
        let mut command = psmon_testkit::psmon_run(wrapper, psmon, conf, source);
        if !wrapper.is_empty() {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        isolate(&mut command, conf.parent().unwrap_or(conf));
        let mut child = command.spawn().unwrap();
        let messages = psmon_testkit::messages(child.stderr.take().unwrap());
        Psmon {
            child,
            wrapped: !wrapper.is_empty(),
            messages,
            seen: Vec::new(),
        }
    }

    /// The next message containing `text` (earlier ones are kept in `seen`).
    pub fn wait(&mut self, text: &str) -> Value {
        self.wait_for(text, |_| true)
    }

    pub fn wait_for(&mut self, text: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.messages.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no message containing {text:?} within 15 s; saw:\n{}",
                    self.seen
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
            self.seen.push(msg.clone());
            if msg["message"].as_str().is_some_and(|m| m.contains(text)) && pred(&msg) {
                return msg;
            }
        }
    }

    /// Messages that arrive within `period`.
    pub fn collect(&mut self, period: Duration) -> Vec<Value> {
        let until = Instant::now() + period;
        let mut got = Vec::new();
        while let Ok(m) = self
            .messages
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(m.clone());
            got.push(m);
        }
        got
    }

    /// Signals psmon: through a wrapper, its whole process group (a
    /// wrapper such as `unshare --fork` does not pass signals on).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if self.wrapped {
            let _ = nix::sys::signal::killpg(pid, sig);
        } else {
            nix::sys::signal::kill(pid, sig).unwrap();
        }
    }
}

impl Drop for Psmon {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `/proc/PID/stat` field 4: the parent's pid.
pub fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn kill9_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reaps `child` whenever it ends, on a thread of its own, so that a
/// killed victim does not linger as a zombie.
pub fn reap_later(mut child: Child) -> u32 {
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    pid
}

/// Spawns a program that was just written: a fork in another test thread
/// may still hold the copy's write descriptor for a moment (until its
/// exec), and exec then fails with ETXTBSY. Retried briefly.
pub fn spawn_fresh(command: &mut Command) -> Child {
    for _ in 0..100 {
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot spawn {command:?}: {e}"),
        }
    }
    panic!("{command:?} stayed busy (ETXTBSY)");
}

/// Starts `sleep SECONDS` as exactly `pid`, through clone3's `set_tid`
/// (Linux 5.5, root), and returns it; `None` while the pid is taken. Unlike
/// steering `ns_last_pid`, no other test's fork can take the pid between the
/// write and the clone.
pub fn sleep_as_pid(pid: u32, seconds: u32) -> Option<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    // Everything the child touches is made before the clone: between clone
    // and exec it may only make system calls.
    let program = c"/bin/sleep";
    let seconds = std::ffi::CString::new(seconds.to_string()).unwrap();
    let argv = [program.as_ptr(), seconds.as_ptr(), std::ptr::null()];
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child only calls execv
    // and _exit on memory prepared above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        // SAFETY: in the child; execv's arguments were built before the
        // clone and stay alive, and _exit runs no destructors.
        0 => unsafe {
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        },
        -1 => {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EEXIST),
                "clone3 set_tid={pid}: {e}"
            );
            None
        }
        child => Some(child as u32),
    }
}

/// Kills and reaps a process this test started outside `std::process`.
pub fn kill_and_reap(pid: u32) {
    kill9_pid(pid);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
}
