//! `cargo xtask bench`: measures the event pipeline through the real
//! `psmon trace` binary, every source side by side in one run, and writes
//! the results between markers in BENCHMARKS.md.
//!
//! (a) death-to-receipt latency: the benchmark stamps CLOCK_MONOTONIC, sends
//!     SIGKILL to a victim, and psmon's JSON line gives `received_ns`, the
//!     CLOCK_MONOTONIC time at which psmon decoded the exit;
//! (b) psmon's CPU while unwatched processes exec at a fixed rate;
//! (c) where each source starts losing events under unthrottled fork storms.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::workspace_root;

mod busy;
mod causes;
mod churn;
mod cluster;
mod fleet;
mod monitor;
mod probes;
mod self_check;
mod support;

pub use monitor::poller;
use support::{cpu_seconds, latency_row, monotonic_ns};

#[derive(clap::Args)]
pub struct Options {
    /// Kills per source in the latency benchmark.
    #[arg(long, default_value_t = 300)]
    kills: usize,
    /// Seconds each storm lasts.
    #[arg(long, default_value_t = 5.0)]
    storm_secs: f64,
    /// Exec storm rate (exec/s) for the CPU benchmark.
    #[arg(long, default_value_t = 5000.0)]
    exec_rate: f64,
    /// Print the results without touching BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Processes and entries in the scale benchmark.
    #[arg(long, default_value_t = 10_000)]
    scale: usize,
    /// Unwatched sleeping processes on the busy host of (m).
    #[arg(long, default_value_t = 30_000)]
    busy: usize,
    /// Run only these parts (a: latency, b: exec storm CPU, c: loss,
    /// d: restart latency, e: scale, f: idle cost, g: hang probes and groups,
    /// h: cause of death, i: failover to a Pacemaker cluster, j: the fleet
    /// endpoint and event push, k: cost under churn, l: the source's
    /// self-check, m: a busy host with few entries); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<char>,
    /// In (d), run only the rows whose label contains this text (e.g.
    /// `sleeping`).
    #[arg(long)]
    rows: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StormMode {
    /// fork(), the child `_exit`s at once, the parent reaps: two events.
    Fork,
    /// clone(CLONE_VM | CLONE_VFORK), the child `_exit`s at once: two events,
    /// at the highest rate one process can create processes.
    Vfork,
    /// Spawn `--program` and reap it: three events (fork, exec, exit).
    Exec,
}

/// One storm process: runs for `seconds` at `rate` operations per second
/// (0 = as fast as it can) and prints how many it did.
#[derive(clap::Args)]
pub struct StormWorker {
    #[arg(long, value_enum)]
    mode: StormMode,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// What exec mode runs.
    #[arg(long, default_value = "/bin/true")]
    program: PathBuf,
}

impl StormWorker {
    pub fn run(self) -> anyhow::Result<()> {
        let start = Instant::now();
        let until = Duration::from_secs_f64(self.seconds);
        let mut done: u64 = 0;
        let mut stack = vec![0u8; 64 * 1024];
        while start.elapsed() < until {
            if self.rate > 0.0 {
                let due = Duration::from_secs_f64(done as f64 / self.rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            match self.mode {
                StormMode::Fork => {
                    // SAFETY: this process is single-threaded; the child only
                    // calls the async-signal-safe _exit.
                    let pid = unsafe { libc::fork() };
                    match pid {
                        // SAFETY: in the child, _exit is async-signal-safe.
                        0 => unsafe { libc::_exit(0) },
                        -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
                        // SAFETY: waits for our own child; a null status pointer is allowed.
                        _ => unsafe {
                            libc::waitpid(pid, std::ptr::null_mut(), 0);
                        },
                    }
                }
                StormMode::Vfork => {
                    let pid = vfork_exit(&mut stack);
                    ensure!(pid > 0, "clone failed: {}", std::io::Error::last_os_error());
                    // SAFETY: waitpid on our own child with a null status pointer.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
                }
                StormMode::Exec => {
                    Command::new(&self.program).status()?;
                }
            }
            done += 1;
        }
        println!("{done}");
        Ok(())
    }
}

/// clone(CLONE_VM | CLONE_VFORK) of a child that only `_exit(0)`s, on a stack
/// of its own (so nothing of ours is overwritten, unlike vfork(2) from Rust).
fn vfork_exit(stack: &mut [u8]) -> libc::pid_t {
    extern "C" fn child(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(0) }
    }
    // The stack grows down: hand clone the (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `child` on `stack`, which outlives it (CLONE_VFORK
    // suspends us until it has exited), and touches nothing else.
    unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the benchmarks load eBPF programs: run them as root"
    );
    let root = workspace_root();
    println!("xtask: building psmon (release)");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "--package", "psmon"])
        .env("PSMON_REQUIRE_EBPF", "1")
        .status()?;
    ensure!(status.success(), "building psmon failed");
    let dir = tempdir()?;
    let bench = Bench {
        root: root.clone(),
        psmon: root.join("target/release/psmon"),
        exec_program: static_true(&dir),
        dir,
        opts,
    };
    let result = bench.all();
    let _ = std::fs::remove_dir_all(&bench.dir);
    let report = result?;
    println!("{report}");
    if !bench.opts.no_write {
        write_report(&root.join("BENCHMARKS.md"), &report)?;
        println!("xtask: results written to BENCHMARKS.md");
    }
    Ok(())
}

/// psmon with the test build's hidden `fault` request, apart from the
/// release binary measured elsewhere.
fn build_with_faults(root: &Path) -> anyhow::Result<PathBuf> {
    println!("xtask: building psmon with fault injection (release)");
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--release", "--package", "psmon"])
        .args([
            "--features",
            "fault-injection",
            "--target-dir",
            "target/fault",
        ])
        .env("PSMON_REQUIRE_EBPF", "1")
        .status()?;
    ensure!(
        status.success(),
        "building psmon with fault injection failed"
    );
    Ok(root.join("target/fault/release/psmon"))
}

/// Builds the storm's exec target; `/bin/true` if there is no static libc.
fn static_true(dir: &Path) -> PathBuf {
    let src = dir.join("strue.c");
    let bin = dir.join("strue");
    let built = std::fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
    if built {
        bin
    } else {
        PathBuf::from("/bin/true")
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("psmon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const START: &str = "<!-- bench:pipeline:start -->";
const END: &str = "<!-- bench:pipeline:end -->";

fn write_report(path: &Path, report: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{START}\n{report}\n{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

struct Bench {
    /// The workspace.
    root: PathBuf,
    psmon: PathBuf,
    dir: PathBuf,
    opts: Options,
    /// A statically linked program that exits 0: without the dynamic
    /// loader's work, two cores exec it about twice as often as `/bin/true`.
    exec_program: PathBuf,
}

/// A running `psmon trace`.
struct Trace {
    child: Child,
    lines: Option<mpsc::Receiver<String>>,
    output: Option<PathBuf>,
}

impl Trace {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    /// SIGTERM, wait, and return the final summary line.
    fn stop(mut self) -> anyhow::Result<Value> {
        // SAFETY: kill with a pid we own and a valid signal.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        ensure!(status.success(), "psmon trace exited with {status}");
        let text = match (&self.lines, &self.output) {
            (Some(rx), _) => rx.iter().collect::<Vec<_>>().join("\n"),
            (None, Some(path)) => std::fs::read_to_string(path)?,
            (None, None) => String::new(),
        };
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("\"summary\""))
            .context("psmon trace printed no summary")?;
        Ok(serde_json::from_str(last)?)
    }
}

impl Bench {
    fn all(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        writeln!(
            out,
            "Run `sudo cargo xtask bench` (root: it loads eBPF programs). Last run: {}, \
             Linux {}, {} CPUs.\n",
            humantime_now(),
            kernel.trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )?;
        let wanted = |part| self.opts.only.is_empty() || self.opts.only.contains(&part);
        if wanted('a') {
            out.push_str(&self.latency()?);
        }
        if wanted('b') {
            out.push_str(&self.exec_storm_cpu()?);
        }
        if wanted('c') {
            out.push_str(&self.loss_threshold()?);
        }
        if wanted('d') {
            let kills = self.opts.kills;
            out.push_str(&monitor::restart_latency(
                &self.psmon,
                &self.dir,
                kills,
                &self.exec_program,
                self.opts.rows.as_deref(),
            )?);
        }
        if wanted('g') {
            out.push_str(&probes::probes(&self.psmon, &self.dir)?);
        }
        if wanted('h') {
            out.push_str(&causes::causes(&self.psmon, &self.dir)?);
        }
        if wanted('i') {
            out.push_str(&cluster::failover(&self.root, &self.psmon, &self.dir)?);
        }
        if wanted('j') {
            out.push_str(&fleet::fleet(&self.psmon, &self.dir, self.opts.scale)?);
        }
        if wanted('f') {
            out.push_str(&monitor::idle(&self.psmon, &self.dir)?);
        }
        if wanted('k') {
            out.push_str(&churn::churn(&self.psmon, &self.dir)?);
        }
        if wanted('l') {
            let fault_psmon = build_with_faults(&self.root)?;
            out.push_str(&self_check::self_check(
                &self.psmon,
                &fault_psmon,
                &self.dir,
            )?);
        }
        if wanted('m') {
            out.push_str(&busy::busy_host(
                &self.psmon,
                &self.dir,
                self.opts.kills,
                self.opts.busy,
            )?);
        }
        if wanted('e') {
            out.push_str(&monitor::scale(&self.psmon, &self.dir, self.opts.scale)?);
        }
        Ok(out)
    }

    fn start_trace(&self, args: &[&str], to_file: bool) -> anyhow::Result<Trace> {
        let output = to_file.then(|| {
            self.dir
                .join(format!("trace-{}.out", args.join("_").replace('/', "_")))
        });
        let stdout = match &output {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::piped(),
        };
        let mut child = Command::new(&self.psmon)
            .arg("trace")
            .arg("--json")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting psmon trace")?;
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut ready = false;
        let mut said = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            ready = line.contains("tracing process events");
            said.push(line);
            if ready {
                break;
            }
        }
        ensure!(ready, "psmon trace did not start: {}", said.join("\n"));
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        if args.contains(&"poll") {
            std::thread::sleep(Duration::from_millis(1500)); // baseline scan
        }
        Ok(Trace {
            child,
            lines,
            output,
        })
    }

    /// (a) SIGKILL to psmon receiving the exit.
    fn latency(&self) -> anyhow::Result<String> {
        let victim = self.dir.join("psmonvictim");
        std::fs::copy("/bin/sleep", &victim).context("copying /bin/sleep as the victim")?;
        let mut out = String::from(
            "### (a) Death to receipt\n\nSIGKILL of a victim (timestamp taken by the killer just \
             before kill(2)) to psmon decoding its exit event (`received_ns`), both CLOCK_MONOTONIC. \
             `psmon trace --json --comm psmonvictim --event exit --coalesce-ms 0`, one victim at a time.\n\n\
             | source | kills | p50 | p99 | max | mean |\n|---|---|---|---|---|---|\n",
        );
        for (source, extra, kills) in [
            ("ebpf", vec![], self.opts.kills),
            ("netlink", vec![], self.opts.kills),
            (
                "poll",
                vec!["--poll-interval", "100"],
                self.opts.kills.min(200),
            ),
        ] {
            // No batching: the monitor reads every event at once, and so does this.
            let mut args = vec![
                "--source",
                source,
                "--comm",
                "psmonvictim",
                "--event",
                "exit",
                "--coalesce-ms",
                "0",
            ];
            args.extend(extra);
            let trace = self.start_trace(&args, false)?;
            let rx = trace.lines.as_ref().unwrap();
            let mut samples = Vec::with_capacity(kills);
            let mut received: HashMap<u64, u64> = HashMap::new();
            for _ in 0..kills {
                let mut child = Command::new(&victim).arg("1000").spawn()?;
                let pid = child.id();
                wait_for_comm(pid, "psmonvictim")?;
                let killed_at = monotonic_ns();
                // SAFETY: kill with our child's pid and a valid signal.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let deadline = Instant::now() + Duration::from_secs(5);
                let got = loop {
                    if let Some(at) = received.remove(&(pid as u64)) {
                        break at;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    let line = rx
                        .recv_timeout(left)
                        .with_context(|| format!("{source}: no exit event for {pid}"))?;
                    let v: Value = serde_json::from_str(&line)?;
                    if let (Some(p), Some(at)) = (v["pid"].as_u64(), v["received_ns"].as_u64()) {
                        received.insert(p, at);
                    }
                };
                child.wait()?;
                samples.push(got.saturating_sub(killed_at));
            }
            trace.stop()?;
            let label = if source == "poll" {
                "poll (100 ms scans)"
            } else {
                source
            };
            latency_row(&mut out, label, &mut samples);
        }
        out.push('\n');
        Ok(out)
    }

    /// Runs `workers` storm processes for the configured time; returns
    /// operations done and the wall time.
    fn storm(&self, mode: &str, workers: usize, rate_each: f64) -> anyhow::Result<(u64, f64)> {
        let me = std::env::current_exe()?;
        let secs = self.opts.storm_secs.to_string();
        let rate = rate_each.to_string();
        let started = Instant::now();
        let children: Vec<Child> = (0..workers)
            .map(|_| {
                Command::new(&me)
                    .args([
                        "storm-worker",
                        "--mode",
                        mode,
                        "--seconds",
                        &secs,
                        "--rate",
                        &rate,
                    ])
                    .arg("--program")
                    .arg(&self.exec_program)
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut total = 0;
        for child in children {
            let out = child.wait_with_output()?;
            total += String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
        Ok((total, started.elapsed().as_secs_f64()))
    }

    /// (b) psmon's CPU during an exec storm of processes it does not watch.
    fn exec_storm_cpu(&self) -> anyhow::Result<String> {
        let mut out = format!(
            "### (b) CPU during an exec storm of unwatched processes\n\n\
             Two storm processes spawn and reap a static do-nothing program at {:.0} exec/s in all for {} s; psmon \
             traces `--comm psmonnomatch` (nothing matches, nothing is printed), so the cost is \
             receiving and decoding. CPU is psmon's utime+stime over the storm, in % of one core. \
             The kernel programs run in the storm's processes: their cost is under \
             \"BPF ns/event\" (kernel.bpf_stats_enabled).\n\n\
             | source | exec/s achieved | events reaching psmon /s | psmon CPU | lost | BPF ns/event |\n\
             |---|---|---|---|---|---|\n",
            self.opts.exec_rate, self.opts.storm_secs
        );
        let _stats = BpfStats::enable();
        for (label, args) in [
            ("ebpf, no filter", vec!["--source", "ebpf"]),
            (
                "ebpf, in-kernel filter",
                vec!["--source", "ebpf", "--kernel-filter"],
            ),
            ("netlink", vec!["--source", "netlink"]),
            ("poll (1 s scans)", vec!["--source", "poll"]),
        ] {
            let mut args = args;
            args.extend(["--comm", "psmonnomatch"]);
            let trace = self.start_trace(&args, true)?;
            let prog_before = BpfStats::read(trace.pid());
            let cpu0 = trace.cpu_seconds()?;
            let (execs, wall) = self.storm("exec", 2, self.opts.exec_rate / 2.0)?;
            let cpu1 = trace.cpu_seconds()?;
            let prog_after = BpfStats::read(trace.pid());
            let summary = trace.stop()?;
            let events = summary["forks"].as_u64().unwrap_or(0)
                + summary["execs"].as_u64().unwrap_or(0)
                + summary["exits"].as_u64().unwrap_or(0);
            let bpf = match (prog_before, prog_after) {
                (Some(a), Some(b)) if b.1 > a.1 => {
                    format!("{:.0}", (b.0 - a.0) as f64 / (b.1 - a.1) as f64)
                }
                _ => "-".into(),
            };
            writeln!(
                out,
                "| {label} | {:.0} | {:.0} | {:.2}% | {} | {bpf} |",
                execs as f64 / wall,
                events as f64 / wall,
                (cpu1 - cpu0) / wall * 100.0,
                summary["lost"].as_u64().unwrap_or(0),
            )?;
        }
        out.push('\n');
        Ok(out)
    }

    /// (c) Unthrottled storms of growing size, unfiltered trace at default
    /// buffer sizes, output to a file.
    fn loss_threshold(&self) -> anyhow::Result<String> {
        let mut out = format!(
            "### (c) Where events start being lost\n\n\
             Unfiltered `psmon trace --json` at default settings (ebpf ring 1 MiB, netlink \
             receive buffer 4 MiB, queue 16384, reads batched 1 ms apart during bursts) writing every event to a file, while 1–2 processes \
             fork or vfork children that exit at once (2 events each), or spawn a static \
             do-nothing program (3 events), as fast as they can for {} s. Events/s counts what the storm generated; lost is what \
             psmon reported as lost.\n\n\
             | source | storm | storm events/s | psmon printed events/s | lost | psmon CPU |\n\
             |---|---|---|---|---|---|\n",
            self.opts.storm_secs
        );
        for source in ["ebpf", "netlink"] {
            for (mode, workers) in [("exec", 2), ("fork", 2), ("vfork", 1), ("vfork", 2)] {
                let trace = self.start_trace(&["--source", source], true)?;
                let cpu0 = trace.cpu_seconds()?;
                let (ops, wall) = self.storm(mode, workers, 0.0)?;
                let cpu1 = trace.cpu_seconds()?;
                let summary = trace.stop()?;
                let per_op = if mode == "exec" { 3 } else { 2 };
                let printed = summary["forks"].as_u64().unwrap_or(0)
                    + summary["execs"].as_u64().unwrap_or(0)
                    + summary["exits"].as_u64().unwrap_or(0);
                writeln!(
                    out,
                    "| {source} | {workers}× {mode} | {:.0} | {:.0} | {} | {:.1}% |",
                    (ops * per_op) as f64 / wall,
                    printed as f64 / wall,
                    summary["lost"].as_u64().unwrap_or(0),
                    (cpu1 - cpu0) / wall * 100.0,
                )?;
            }
        }
        out.push_str(
            "\npoll is not in this table: it loses nothing from a buffer, but it never sees a \
             process that starts and ends between two scans.\n",
        );
        Ok(out)
    }
}

/// Turns on `kernel.bpf_stats_enabled` for its lifetime, so that each BPF
/// program's fdinfo shows `run_time_ns` and `run_cnt`.
struct BpfStats {
    old: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Self {
        let old = std::fs::read_to_string(BPF_STATS).ok();
        let _ = std::fs::write(BPF_STATS, "1");
        BpfStats { old }
    }

    /// Sums (run_time_ns, run_cnt) over the BPF programs `pid` holds.
    fn read(pid: u32) -> Option<(u64, u64)> {
        let mut total = (0, 0);
        let mut any = false;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()? {
            let text = std::fs::read_to_string(entry.ok()?.path()).unwrap_or_default();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(ns), Some(cnt)) = (field("run_time_ns:"), field("run_cnt:")) {
                total.0 += ns;
                total.1 += cnt;
                any = true;
            }
        }
        any.then_some(total)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(BPF_STATS, old.trim());
        }
    }
}

/// Waits until the victim has exec'd (its comm changed from the parent's).
fn wait_for_comm(pid: u32, comm: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("victim {pid} never ran")
}

fn humantime_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
