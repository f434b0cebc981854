//! What the parts of `cargo xtask bench` share: the clocks and CPU
//! counters they read, how they summarise samples, the small C programs
//! they compile (the stamper, the pauser), a `psmon run` daemon they start
//! and talk to, and a world of many watched processes.

use std::{
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Time on CPU of every thread of `pid` now, in ns (schedstat: exact,
/// unlike the tick-counted utime and stime).
pub(crate) fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// utime + stime of process `pid` (all threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    Ok(ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// A `| label | n | p50 | p99 | max | mean |` row of latencies in ns.
pub(crate) fn latency_row(out: &mut String, label: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} | {} |",
        samples.len(),
        fmt_ns(percentile(samples, 50.0)),
        fmt_ns(percentile(samples, 99.0)),
        fmt_ns(*samples.last().unwrap_or(&0)),
        fmt_ns(samples.iter().sum::<u64>() / samples.len().max(1) as u64),
    );
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.0} µs", ns as f64 / 1e3)
    }
}

pub(crate) const STAMPER: &str = r#"
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* stamper OUT PROGRAM ARGS...: appends "<CLOCK_MONOTONIC ns> <pid>" to OUT,
   where pid is PROGRAM started as a daemon (double fork, own session). */
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (argc < 3) return 64;
    pid_t mid = fork();
    if (mid == 0) {
        setsid();
        pid_t daemon = fork();
        if (daemon == 0) { execv(argv[2], argv + 2); _exit(127); }
        FILE *f = fopen(argv[1], "a");
        fprintf(f, "%lld %d\n", now, daemon);
        fclose(f);
        _exit(0);
    }
    waitpid(mid, 0, 0);
    return 0;
}
"#;

pub(crate) const PAUSER: &str = "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n";

pub(crate) fn compile(dir: &Path, name: &str, source: &str) -> anyhow::Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source)?;
    let ok = |args: &[&str]| {
        Command::new("cc")
            .args(args)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success())
    };
    ensure!(
        ok(&["-O2", "-static"]) || ok(&["-O2"]),
        "cannot compile {name}"
    );
    Ok(bin)
}

/// A running `psmon run` whose JSON messages are read on a thread.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) messages: mpsc::Receiver<Value>,
}

impl Daemon {
    pub(crate) fn start(psmon: &Path, conf: &Path, source: &str) -> anyhow::Result<Daemon> {
        Self::start_with(psmon, conf, source, &[])
    }

    pub(crate) fn start_with(
        psmon: &Path,
        conf: &Path,
        source: &str,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        Self::start_in(&[], psmon, conf, source, extra)
    }

    /// Started through `wrapper` (e.g. `nsenter` into a cluster node).
    pub(crate) fn start_in(
        wrapper: &[String],
        psmon: &Path,
        conf: &Path,
        source: &str,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        let mut child = psmon_testkit::psmon_run(wrapper, psmon, conf, source)
            .arg("--socket")
            .arg(conf.join("psmon.sock"))
            .arg("--state-dir")
            .arg(conf.join("state"))
            .args(extra)
            .spawn()
            .context("starting psmon run")?;
        let messages = psmon_testkit::messages(child.stderr.take().unwrap());
        Ok(Daemon { child, messages })
    }

    pub(crate) fn wait_up(&self, pid: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.messages.recv_timeout(left).with_context(|| {
                format!(
                    "psmon never reported {pid} Up; it said:\n{}",
                    seen.join("\n")
                )
            })?;
            seen.push(m.to_string());
            let up = m["message"].as_str().is_some_and(|s| s.ends_with(") Up"));
            if up && m["pid"] == pid {
                return Ok(());
            }
        }
    }

    /// The next message `pred` accepts, within `timeout` of quiet.
    pub(crate) fn wait_message(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .messages
                .recv_timeout(left)
                .context("psmon did not say what was expected in time")?;
            if pred(&m) {
                return Ok(m);
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops psmon; returns what it said from now to its exit.
    pub(crate) fn stop(mut self) -> Vec<Value> {
        self.terminate();
        self.messages.iter().collect()
    }

    /// SIGTERM and wait, unless psmon has exited already.
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill with our child's pid and a valid signal.
            unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// A bench that fails half-way leaves no psmon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS")
}

/// The number in field `name` of `/proc/PID/status` (`VmRSS:  123 kB`).
pub(crate) fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
    Ok(value
        .split_whitespace()
        .next()
        .with_context(|| format!("{name} is empty"))?
        .parse()?)
}

/// Line `n` (1-based) of the stamps file, waiting up to 10 s for it.
pub(crate) fn wait_stamp(path: &Path, n: usize) -> anyhow::Result<(u64, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = last_stamp(path, n) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("restart stamp {n} never came");
        }
        // The stamp is taken by the restarted program itself: how often this
        // looks only decides how much CPU the benchmark takes from psmon.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Line `n` (1-based) of the stamps file, when it is there.
pub(crate) fn last_stamp(path: &Path, n: usize) -> anyhow::Result<(u64, u32)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text.lines().nth(n - 1).context("not yet")?;
    let mut f = line.split_whitespace();
    Ok((
        f.next().context("stamp")?.parse()?,
        f.next().context("pid")?.parse()?,
    ))
}

/// Waits for stamp `lines` and for its process to be reported Up (unless
/// `seen_up` already), waits `pause`, kills that process, and returns
/// SIGKILL → its restart command started (ns); `lines` then counts the new
/// stamp.
pub(crate) fn kill_and_time(
    daemon: &Daemon,
    stamps: &Path,
    lines: &mut usize,
    seen_up: bool,
    pause: Duration,
) -> anyhow::Result<u64> {
    let pid = wait_stamp(stamps, *lines)?.1;
    if !seen_up {
        // Kill only what psmon has seen Up (a process killed before that
        // is a restart that failed, a different story).
        daemon.wait_up(pid, Duration::from_secs(10))?;
    }
    std::thread::sleep(pause);
    let killed_at = monotonic_ns();
    // SAFETY: kill with a pid we read and a valid signal.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    *lines += 1;
    let (stamp, _) = wait_stamp(stamps, *lines)
        .with_context(|| format!("no restart within 10 s of killing {pid}"))?;
    Ok(stamp.saturating_sub(killed_at))
}

/// Kills the stamped entry's last process (left running by the bench).
pub(crate) fn kill_last(stamps: &Path, lines: usize) {
    if let Ok((_, pid)) = last_stamp(stamps, lines) {
        // SAFETY: kill with a pid we read and a valid signal.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// (e) 10,000 entries, 10,000 processes.
/// `n` live processes, each running its own hard link of a pausing
/// program, and in `conf` a pfile with a report-only PENT line for each;
/// the processes are killed and reaped on drop.
pub(crate) struct ScaleWorld {
    pub conf: PathBuf,
    children: Vec<Child>,
}

impl ScaleWorld {
    /// Under `dir`, its files named after `tag`, with `psagent` as psagent.conf.
    pub(crate) fn start(dir: &Path, tag: &str, n: usize, psagent: &str) -> anyhow::Result<Self> {
        let pauser = compile(dir, &format!("{tag}pauser"), PAUSER)?;
        let bins = dir.join(format!("{tag}-bin"));
        let conf = dir.join(format!("conf-{tag}"));
        // A world made again under the same tag starts afresh.
        let _ = std::fs::remove_dir_all(&bins);
        let _ = std::fs::remove_dir_all(&conf);
        std::fs::create_dir_all(&bins)?;
        std::fs::create_dir_all(&conf)?;
        let mut pfile =
            String::from("##### PARAM #####\nMONITOR_INTERVAL = 10\n##### PENT #####\n");
        let mut paths = Vec::with_capacity(n);
        for i in 0..n {
            let p = bins.join(format!("p{i:05}"));
            std::fs::hard_link(&pauser, &p)?;
            writeln!(pfile, "{} : - : 0 : 0 : continue", p.display())?;
            paths.push(p);
        }
        std::fs::write(conf.join("pfile_scale"), pfile)?;
        std::fs::write(conf.join("psagent.conf"), psagent)?;
        println!("xtask: starting {n} processes");
        let mut world = ScaleWorld {
            conf,
            children: Vec::with_capacity(n),
        };
        for p in &paths {
            world
                .children
                .push(Command::new(p).stdin(Stdio::null()).spawn()?);
        }
        Ok(world)
    }
}

impl Drop for ScaleWorld {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// `psmon status --json`'s request on the control socket, answered: the
/// reply's size and each round trip's time.
pub(crate) fn status_round_trips(socket: &Path, times: usize) -> anyhow::Result<(usize, Vec<u64>)> {
    use std::io::{BufRead, Write};
    let mut samples = Vec::with_capacity(times);
    let mut size = 0;
    for _ in 0..times {
        let t = Instant::now();
        let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        samples.push(t.elapsed().as_nanos() as u64);
        ensure!(
            reply.contains("\"ok\":true"),
            "status failed: {}",
            &reply[..reply.len().min(200)]
        );
        size = reply.len();
    }
    samples.sort_unstable();
    Ok((size, samples))
}

/// Processes the bench started (storms, sleepers), killed and reaped when
/// dropped (also when a benchmark fails).
pub(crate) struct Storm(pub Vec<Child>);

impl Drop for Storm {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// Before each kill on a busy host: 0 to 99 ms, spread evenly, so the
/// kills fall anywhere in whatever the host does periodically rather than
/// in one burst.
pub(crate) fn pace(i: usize) -> Duration {
    Duration::from_millis((i * 37 % 100) as u64)
}
