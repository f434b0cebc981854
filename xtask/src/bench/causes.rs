//! (h) Cause of death, part of `cargo xtask bench`: what the signal
//! program costs in the kernel per signal (`kernel.bpf_stats_enabled`), and
//! psmon's CPU while unwatched processes signal each other 10,000 times a
//! second (the kernel filter should keep every one of them from psmon).

use std::{
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::support::cpu_seconds;
use super::support::{Daemon, compile};

/// `sigstorm RATE SECONDS`: forks a child that handles SIGUSR2, sends it
/// RATE signals a second for SECONDS, then kills it.
const STORM: &str = r#"
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static void on(int s) { (void)s; }
int main(int argc, char **argv) {
    if (argc < 3) return 64;
    long rate = atol(argv[1]), secs = atol(argv[2]);
    pid_t child = fork();
    if (child == 0) { signal(SIGUSR2, on); for (;;) pause(); }
    usleep(100000);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long sent = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double t = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
        if (t >= secs) break;
        while (sent < t * rate) { kill(child, SIGUSR2); sent++; }
        usleep(1000);
    }
    kill(child, SIGKILL);
    return 0;
}
"#;

/// run_cnt and run_time_ns of every BPF program psmon holds, by fd.
fn prog_stats(pid: u32) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let text = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        if !text.contains("prog_tag") {
            continue;
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((field("run_cnt:"), field("run_time_ns:")));
    }
    Ok(out)
}

/// (h) The signal program's cost and psmon's CPU in a storm of signals
/// between unwatched processes.
pub fn causes(psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    const RATE: u64 = 10_000;
    const SECS: u64 = 5;
    let storm = compile(dir, "sigstorm", STORM)?;
    let conf = dir.join("conf-causes");
    std::fs::create_dir_all(&conf)?;
    let idle = compile(
        dir,
        "causeidle",
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )?;
    let mut watched = Command::new(&idle).spawn()?;
    std::fs::write(
        conf.join("causes.toml"),
        format!(
            "monitor_interval = 10\n[[entry]]\npath = \"{}\"\n",
            idle.display()
        ),
    )?;
    let stats = std::fs::File::options()
        .write(true)
        .open("/proc/sys/kernel/bpf_stats_enabled")
        .context("kernel.bpf_stats_enabled")?;
    // Stats count while this fd is open (BPF_ENABLE_STATS would do the
    // same); the sysctl is set back below.
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let _ = stats.as_raw_fd();
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    daemon.wait_message(
        |m| m["message"].as_str().is_some_and(|t| t.ends_with(") Up")),
        Duration::from_secs(15),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.pid();
    // utime + stime: it keeps the time of threads that ended (the
    // blocking pool's come and go), which per-thread schedstat loses.
    let share = |from: f64, t: Instant| -> anyhow::Result<f64> {
        Ok((cpu_seconds(pid)? - from).max(0.0) / t.elapsed().as_secs_f64() * 100.0)
    };
    let quiet0 = cpu_seconds(pid)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(SECS));
    let quiet = share(quiet0, t)?;
    let before = prog_stats(pid)?;
    let cpu0 = cpu_seconds(pid)?;
    let t = Instant::now();
    let status = Command::new(&storm)
        .args([RATE.to_string(), SECS.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "the signal storm failed");
    let cpu = share(cpu0, t)?;
    let after = prog_stats(pid)?;
    let _ = daemon.stop();
    let _ = watched.kill();
    let _ = watched.wait();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    // The signal program is the one that ran about RATE × SECS times.
    let (runs, ns) = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .max_by_key(|(runs, _)| *runs)
        .unwrap_or((0, 0));
    Ok(format!(
        "\n### (h) Cause of death\n\n\
         The signal program (`signal_generate`, filtered by the watch map in the kernel) \
         while a process sends {RATE} SIGUSR2 a second to an unwatched one for {SECS} s, \
         psmon watching one idle process (ebpf, kernel filter). Kernel cost from \
         `kernel.bpf_stats_enabled` (the program's run_time_ns / run_cnt); psmon's CPU from \
         utime + stime (tick precision).\n\n\
         | | signal program runs | kernel ns per signal | psmon CPU |\n|---|---|---|---|\n\
         | quiet, {SECS} s | – | – | {quiet:.2} % |\n\
         | {RATE} signals/s between unwatched processes | {runs} | {:.0} | {cpu:.2} % |\n\n",
        ns as f64 / runs.max(1) as f64,
    ))
}
