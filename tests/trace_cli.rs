//! `psmon trace` through the real binary: JSON lines for a real process,
//! a clean exit with a summary on SIGTERM, and the fallback explanation when
//! not run as root.

mod support;

use std::{
    io::{BufRead, BufReader},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use support::*;

fn psmon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_psmon"))
}

/// Lines of the child's stdout, read on a thread so waits can time out.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_json(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("psmon trace printed no {what} within {TIMEOUT:?}"));
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if pred(&value) {
            return value;
        }
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap()
}

fn json_trace_reports_a_real_exit(source: &str) {
    if source != "poll" && !needs_root(&format!("the {source} source")) {
        return;
    }
    let mut trace = psmon()
        .args([
            "trace",
            "--json",
            "--comm",
            "victim",
            "--poll-interval",
            "100",
        ])
        .args(["--source", source])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(trace.stderr.take().unwrap());
    let mut stderr_lines = stderr.lines();
    // The source is subscribed once this line is out.
    let started = stderr_lines
        .find(|l| {
            l.as_ref()
                .is_ok_and(|l| l.contains("tracing process events"))
        })
        .expect("psmon trace logs which source it uses")
        .unwrap();
    assert!(started.contains(&format!("source={source}")), "{started}");
    if source == "poll" {
        std::thread::sleep(Duration::from_millis(300)); // the first scan is the baseline
    }
    let out = lines(trace.stdout.take().unwrap());

    let mut victim = spawn_victim(&["exit", "7"]);
    let pid = victim.id();
    let exit = next_json(&out, "exit line", |v| {
        v["event"] == "exit" && v["pid"] == pid
    });
    victim.wait().unwrap();
    assert_eq!(exit["exit_code"], 7, "{exit}");
    assert_eq!(exit["signal"], Value::Null, "{exit}");
    assert_eq!(exit["comm"], "victim", "{exit}");
    assert_eq!(exit["core_dumped"], false, "{exit}");
    for field in [
        "time",
        "tid",
        "ppid",
        "start_ticks",
        "lifetime_ms",
        "received_ns",
    ] {
        assert!(exit.get(field).is_some(), "field {field} missing: {exit}");
    }

    let status = terminate(&mut trace);
    assert!(
        status.success(),
        "psmon trace must exit 0 on SIGTERM: {status:?}"
    );
    let summary = next_json(&out, "summary", |v| v["event"] == "summary");
    assert!(summary["exits"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn json_trace_ebpf() {
    json_trace_reports_a_real_exit("ebpf");
}

#[test]
fn json_trace_netlink() {
    json_trace_reports_a_real_exit("netlink");
}

#[test]
fn json_trace_poll() {
    json_trace_reports_a_real_exit("poll");
}

#[test]
fn duration_ends_the_trace_with_a_summary() {
    let out = psmon()
        .args([
            "trace",
            "--source",
            "poll",
            "--duration",
            "0.5",
            "--stats",
            "0.2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("--- stats over"), "{stdout}");
    assert!(stdout.contains("--- summary over"), "{stdout}");
}

#[test]
fn without_root_it_says_why_it_fell_back() {
    if !needs_root("switching to an unprivileged user") {
        return;
    }
    // The checkout may sit in a directory only root can enter: run a copy
    // from a directory everyone can.
    let dir = std::env::temp_dir().join(format!("psmon-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("psmon");
    std::fs::copy(env!("CARGO_BIN_EXE_psmon"), &copy).unwrap();
    let out = Command::new(&copy)
        .args(["trace", "--duration", "0.3"])
        .current_dir(&dir)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("`ebpf` source is unavailable"), "{stderr}");
    assert!(stderr.contains("run as root"), "{stderr}");
    assert!(!stderr.contains("source=ebpf"), "{stderr}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = psmon()
        .args(["trace", "--path", "[unclosed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("not a valid glob"), "{stderr}");
    let out = psmon().args(["trace", "--kernel-filter"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--kernel-filter needs --comm or --pid"),
        "{stderr}"
    );
    let out = psmon().args(["trace", "--event", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
