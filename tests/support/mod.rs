//! Shared by the end-to-end tests: the victim program, privilege checks and
//! waiting for events.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::OnceLock,
    time::Duration,
};

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
