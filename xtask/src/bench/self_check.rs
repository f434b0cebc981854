//! (l) The event source's self-check: what the canaries cost, and how long
//! a death goes unseen when the source stops hearing.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::support::{Daemon, PAUSER, compile, fmt_ns};

/// Seconds each idle cost is measured over.
const IDLE_SECS: u64 = 30;
/// Broken-source trials.
const TRIALS: usize = 5;

pub fn self_check(psmon: &Path, fault_psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    let victim = compile(dir, "checkvictim", PAUSER)?;
    let mut out = String::from(
        "\n### (l) Self-check of the event source\n\n\
         Cost: `psmon run` with one watched (running) process, MONITOR_INTERVAL = 3600, nothing \
         happening, CPU of every thread over 30 s with SELF_CHECK_INTERVAL = 0 (off) and 1 (a \
         canary a second, ten times the default, so that its cost stands out of the noise); \
         the difference per canary, and what it makes at the default of one every 10 s \
         (360 processes an hour).\n\n\
         | source | CPU, off | CPU, 1 s | per canary | at 10 s |\n|---|---|---|---|---|\n",
    );
    for source in ["ebpf", "netlink"] {
        let mut cpu = Vec::new();
        for interval in [0, 1] {
            let conf = dir.join(format!("conf-check-{source}-{interval}"));
            write_conf(&conf, &victim, interval)?;
            let mut pauser = Command::new(&victim).spawn()?;
            let daemon = Daemon::start(psmon, &conf, source)?;
            daemon.wait_up(pauser.id(), Duration::from_secs(10))?;
            std::thread::sleep(Duration::from_secs(2));
            let used = cpu_per_second(daemon.pid(), Duration::from_secs(IDLE_SECS))?;
            daemon.stop();
            let _ = pauser.kill();
            let _ = pauser.wait();
            cpu.push(used);
        }
        // ns of CPU per second; one canary a second in the second run.
        let per_canary = (cpu[1] - cpu[0]).max(0.0);
        let _ = writeln!(
            out,
            "| {source} | {:.4} % | {:.4} % | {:.0} µs | {:.5} % |",
            cpu[0] / 1e7,
            cpu[1] / 1e7,
            per_canary / 1e3,
            per_canary / 10.0 / 1e7,
        );
    }
    out.push_str(
        "\nA deaf source: the ebpf source's programs detached under a running psmon (the \
         test build's hidden `fault` request; `psmon` built with `--features fault-injection`), \
         MONITOR_INTERVAL = 3600 (no scan but the self-check's), the default 10 s self-check, \
         at a varying moment of its schedule. Two entries: one restarted, one report-only. \
         0.5 s after the source goes deaf, the restarted one's process is killed; once its \
         successor has started, the report-only one's process is killed and, once psmon has \
         said it Down, started again by hand. A death of a process psmon knows is seen by its \
         pidfd whatever the source (kill → Down, kill → restart command); a process that \
         appears apart from a restart is seen only by an event or a scan — here the rescan \
         the next missed canary triggers (started → Up). psmon then reopens the source after 3 misses in a row.\n\n\
         | trials | kill → Down p50 / max | kill → restart p50 / max | started while deaf → Up p50 / max | reopened after (p50) |\n\
         |---|---|---|---|---|\n",
    );
    let conf = dir.join("conf-check-deaf");
    write_conf(&conf, &victim, 10)?;
    let lone = compile(dir, "checklone", PAUSER)?;
    let mut toml = std::fs::read_to_string(conf.join("check.toml"))?;
    toml.push_str(&format!("[[entry]]\npath = \"{}\"\n", lone.display()));
    std::fs::write(conf.join("check.toml"), toml)?;
    let mut first = Command::new(&victim).spawn()?;
    let mut lone_child = Command::new(&lone).spawn()?;
    let daemon = Daemon::start(fault_psmon, &conf, "ebpf")?;
    daemon.wait_up(first.id(), Duration::from_secs(10))?;
    let (mut downs, mut restarts, mut found, mut reopens) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        // A moment of the canary's schedule that differs each time.
        std::thread::sleep(Duration::from_millis(1_000 + 1_937 * trial as u64 % 10_000));
        let victim_pid = pids_of(&victim)?;
        ask(
            &conf.join("psmon.sock"),
            json!({"v": 1, "cmd": "fault", "deaf": ["ebpf"]}),
        )?;
        // The source unloads its programs when it next runs: surely by now.
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        // SAFETY: kill with a pid this bench started and a valid signal.
        unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
        let (mut down, mut restart, mut restarted) = (None, None, false);
        let mut seen = Vec::new();
        while down.is_none() || restart.is_none() || !restarted {
            let m = daemon
                .wait_message(|_| true, Duration::from_secs(60))
                .with_context(|| format!("after the kill psmon said only:\n{}", seen.join("\n")))?;
            seen.push(m.to_string());
            let text = m["message"].as_str().unwrap_or("");
            if text.contains("] Down") && m["pid"] == victim_pid {
                down.get_or_insert(killed.elapsed());
            } else if text.contains("Try to restart") {
                restart.get_or_insert(killed.elapsed());
            } else if text.contains("started; Up once")
                && m["path"] == victim.to_str().unwrap_or("")
            {
                restarted = true;
            }
        }
        // Then, apart from any restart (whose search for the new process
        // would find it too), the report-only process: killed (its pidfd
        // says so) and started again by hand, which nothing reports but a
        // scan.
        let old_lone = lone_child.id();
        // SAFETY: as above.
        unsafe { libc::kill(old_lone as i32, libc::SIGKILL) };
        let gone = |m: &Value| said(m, "] Down") && m["pid"] == old_lone;
        daemon.wait_message(gone, Duration::from_secs(60))?;
        let _ = lone_child.wait();
        lone_child = Command::new(&lone).spawn()?;
        let (at, pid) = (Instant::now(), lone_child.id());
        let up_again = |m: &Value| {
            m["message"].as_str().is_some_and(|s| s.ends_with(") Up")) && m["pid"] == pid
        };
        daemon.wait_message(up_again, Duration::from_secs(60))?;
        found.push(at.elapsed());
        downs.extend(down);
        restarts.extend(restart);
        let reopened = |m: &Value| said(m, "reopened, and the new one");
        daemon.wait_message(reopened, Duration::from_secs(60))?;
        reopens.push(killed.elapsed());
        if trial == 0 {
            let _ = first.wait();
        }
    }
    daemon.stop();
    let _ = lone_child.kill();
    let _ = lone_child.wait();
    let _ = Command::new("pkill")
        .arg("-KILL")
        .arg("-f")
        .arg(&victim)
        .status();
    let show = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        let at = |d: Duration| match d.as_secs_f64() {
            s if s < 1.0 => fmt_ns(d.as_nanos() as u64),
            s => format!("{s:.2} s"),
        };
        format!("{} / {}", at(v[v.len() / 2]), at(v[v.len() - 1]))
    };
    reopens.sort_unstable();
    let _ = writeln!(
        out,
        "| {TRIALS} | {} | {} | {} | {:.1} s |",
        show(&mut downs),
        show(&mut restarts),
        show(&mut found),
        reopens[TRIALS / 2].as_secs_f64(),
    );
    Ok(out)
}

/// CPU ns per second of every thread of `pid` over `period`, threads that
/// end meanwhile included (tokio's blocking threads end after 10 s idle,
/// and their time with them from a sum of the living).
fn cpu_per_second(pid: u32, period: Duration) -> anyhow::Result<f64> {
    let sample = || -> anyhow::Result<std::collections::HashMap<String, u64>> {
        let mut ns = std::collections::HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            if let Some(n) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
                ns.insert(task.file_name().to_string_lossy().into_owned(), n);
            }
        }
        Ok(ns)
    };
    let start = sample()?;
    let mut last = start.clone();
    let t0 = Instant::now();
    while t0.elapsed() < period {
        std::thread::sleep(Duration::from_millis(250));
        for (tid, n) in sample()? {
            last.insert(tid, n);
        }
    }
    let used: u64 = last
        .iter()
        .map(|(tid, n)| n - start.get(tid).copied().unwrap_or(0))
        .sum();
    Ok(used as f64 / t0.elapsed().as_secs_f64())
}

fn write_conf(conf: &Path, victim: &Path, interval: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(conf);
    std::fs::create_dir_all(conf)?;
    std::fs::write(
        conf.join("psagent.conf"),
        format!("SELF_CHECK_INTERVAL = {interval}\n"),
    )?;
    std::fs::write(
        conf.join("check.toml"),
        format!(
            "monitor_interval = 3600\n[[entry]]\npath = \"{v}\"\nrestart = \"{v} &\"\nretry = 100\n",
            v = victim.display()
        ),
    )?;
    Ok(())
}

/// The one running process of `exe`.
fn pids_of(exe: &Path) -> anyhow::Result<u32> {
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|e| e == exe) {
            return Ok(pid);
        }
    }
    anyhow::bail!("{} is not running", exe.display())
}

fn ask(socket: &Path, request: Value) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(socket).context("psmon's control socket")?;
    writeln!(s, "{request}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line)?;
    ensure!(reply["ok"] == true, "psmon refused the fault: {reply}");
    Ok(())
}

/// Whether psmon's message `m` says `text`.
fn said(m: &Value, text: &str) -> bool {
    m["message"].as_str().is_some_and(|s| s.contains(text))
}
