//! Benchmarks of `psmon run` (the monitoring engine), part of `cargo xtask
//! bench`:
//!
//! (d) SIGKILL of a watched process to its restart command starting, per
//!     source. The restart command is a tiny static program that stamps
//!     CLOCK_MONOTONIC first thing, so the time includes psmon noticing,
//!     deciding, and starting `/bin/sh`, which execs the stamper;
//! (e) 10,000 PENT entries watching 10,000 live processes: psmon's RSS, the
//!     duration of one reconciliation scan, and idle CPU;
//! (f) idle cost on this host: one watched process, MONITOR_INTERVAL = 1,
//!     psmon's CPU and scan time beside the simplest 1 s /proc poller.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use super::support::{
    Daemon, PAUSER, STAMPER, ScaleWorld, Storm, compile, cpu_ns, cpu_seconds, kill_and_time,
    kill_last, latency_row, monotonic_ns, pace, percentile, rss_kib, status_field,
    status_round_trips, wait_stamp,
};

/// How a row's restart command starts the stamper.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `stamper OUT VICTIM`, no shell syntax: psmon spawns it.
    Direct,
    /// Through `/bin/sh -c` (the quotes make psmon use a shell).
    Shell,
    /// A bash script whose first line runs the stamper as its child (a
    /// fork, as a restart script's first command is).
    Script,
}

/// One row of (d).
struct RestartCase {
    label: &'static str,
    /// `none`: no psmon; the bench starts the stamper itself, at the same
    /// pace, so the host's own start-up cost is beside psmon's.
    source: &'static str,
    /// How the stamper is started.
    via: Via,
    /// While unwatched processes exec at this rate (0: none).
    storm_rate: u32,
    /// While another watched process forks short-lived children at this
    /// rate (0: none): the ebpf source then takes events in batches.
    churn_rate: u32,
    /// psmon saves its state on every change (`--no-state` otherwise).
    state: bool,
    /// Unwatched processes sleeping on the host meanwhile (0: none): each
    /// reconciliation scan reads them all.
    sleepers: u32,
}

/// A row with no load besides psmon's own, its state saved.
const fn row(label: &'static str, source: &'static str, via: Via) -> RestartCase {
    RestartCase {
        label,
        source,
        via,
        storm_rate: 0,
        churn_rate: 0,
        state: true,
        sleepers: 0,
    }
}

const RESTART_CASES: &[RestartCase] = &[
    row("ebpf, direct", "ebpf", Via::Direct),
    RestartCase {
        state: false,
        ..row("ebpf, direct, no state saved", "ebpf", Via::Direct)
    },
    row("ebpf, through /bin/sh", "ebpf", Via::Shell),
    RestartCase {
        storm_rate: 2000,
        ..row("ebpf, direct, 2,000 unwatched exec/s", "ebpf", Via::Direct)
    },
    RestartCase {
        churn_rate: 5000,
        ..row(
            "ebpf, direct, a watched process forking 5,000 children/s",
            "ebpf",
            Via::Direct,
        )
    },
    row(
        "no psmon: the stamper started by the bench, quiet host",
        "none",
        Via::Direct,
    ),
    RestartCase {
        sleepers: 10_000,
        ..row(
            "no psmon: the stamper started by the bench, 10,000 unwatched sleeping processes",
            "none",
            Via::Direct,
        )
    },
    row(
        "no psmon: a bash script forking the stamper, started by the bench, quiet host",
        "none",
        Via::Script,
    ),
    RestartCase {
        sleepers: 10_000,
        ..row(
            "no psmon: a bash script forking the stamper, started by the bench, 10,000 unwatched sleeping processes",
            "none",
            Via::Script,
        )
    },
    row(
        "ebpf, a bash script forking the stamper, quiet host",
        "ebpf",
        Via::Script,
    ),
    RestartCase {
        sleepers: 10_000,
        ..row(
            "ebpf, a bash script forking the stamper, 10,000 unwatched sleeping processes",
            "ebpf",
            Via::Script,
        )
    },
    RestartCase {
        sleepers: 10_000,
        ..row(
            "ebpf, direct, 10,000 unwatched sleeping processes",
            "ebpf",
            Via::Direct,
        )
    },
    RestartCase {
        sleepers: 10_000,
        ..row(
            "netlink, direct, 10,000 unwatched sleeping processes",
            "netlink",
            Via::Direct,
        )
    },
    row("netlink, direct", "netlink", Via::Direct),
    row("netlink, through /bin/sh", "netlink", Via::Shell),
    row("poll, direct", "poll", Via::Direct),
];

/// (d) SIGKILL → restart command started. `exec_program` is what the
/// storm processes run.
pub fn restart_latency(
    psmon: &Path,
    dir: &Path,
    kills: usize,
    exec_program: &Path,
    rows: Option<&str>,
) -> anyhow::Result<String> {
    let stamper = compile(dir, "stamper", STAMPER)?;
    let victim = compile(dir, "benchvictim", PAUSER)?;
    let sleeper = compile(dir, "benchsleeper", PAUSER)?;
    let mut out = String::from(
        "\n### (d) Death to restart\n\nSIGKILL of a watched process (timestamp taken by the killer \
         just before kill(2)) to its restart command starting: the command is the stamper, a \
         static program that reads CLOCK_MONOTONIC first thing, so this includes psmon's \
         detection, its decision, and starting the command — directly (`stamper OUT VICTIM`, no \
         shell syntax) or through `/bin/sh -c` (`exec \"stamper\" OUT VICTIM`, quoted). `psmon run` \
         with one entry; poll uses MONITOR_INTERVAL = 1 s. The storm row runs two processes that \
         spawn and reap a do-nothing program at 2,000 exec/s in all, which the in-kernel filter \
         keeps from psmon. The churn row watches a second process, a copy of `xtask \
         storm-worker` forking 5,000 children a second that exit at once: their events reach \
         psmon, whose ebpf source then takes events in batches 0.5 ms apart. The sleeping rows \
         keep 10,000 unwatched processes alive meanwhile (each reconciliation scan, every \
         second, reads them all) and wait 0–99 ms before each kill; the `no psmon` rows start \
         the stamper from the bench itself at that pace, the host's own cost of starting a \
         program.\n\n\
         | case | kills | p50 | p99 | max | mean |\n|---|---|---|---|---|---|\n",
    );
    let mut costs = Vec::new();
    for (n, case) in RESTART_CASES.iter().enumerate() {
        if rows.is_some_and(|r| !case.label.contains(r)) {
            continue;
        }
        // Each poll kill waits for a scan (about a second): 200 is the floor asked for.
        let kills = if case.source == "poll" {
            kills.min(200)
        } else {
            kills
        };
        let conf = dir.join(format!("conf-restart-{n}"));
        let _ = std::fs::remove_dir_all(&conf);
        std::fs::create_dir_all(&conf)?;
        let stamps = conf.join("stamps");
        let script = conf.join("restart.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\n{} {} {}\n",
                stamper.display(),
                stamps.display(),
                victim.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let restart = match case.via {
            Via::Shell => format!(
                "exec \\\"{}\\\" {} {}",
                stamper.display(),
                stamps.display(),
                victim.display()
            ),
            Via::Direct => format!(
                "{} {} {}",
                stamper.display(),
                stamps.display(),
                victim.display()
            ),
            Via::Script => script.display().to_string(),
        };
        // The churning process: a copy of this program, forking.
        let mut churn = None;
        let mut churn_entry = String::new();
        if case.churn_rate > 0 {
            let forker = conf.join("churnd");
            std::fs::copy(std::env::current_exe()?, &forker)?;
            let rate = case.churn_rate.to_string();
            churn = Some(Storm(vec![
                Command::new(&forker)
                    .args(["storm-worker", "--mode", "fork", "--seconds", "3600"])
                    .args(["--rate", &rate])
                    .stdout(Stdio::null())
                    .spawn()?,
            ]));
            churn_entry = format!(
                "[[entry]]\npath = \"{}\"\nrestart = \"/bin/true\"\nretry = 0\n",
                forker.display()
            );
        }
        std::fs::write(
            conf.join("bench.toml"),
            // start_secs = 0: Up as soon as the restarted process runs, so
            // each kill follows its restart at once (a second of idle
            // between kills costs the VM about a millisecond of wake-up,
            // which is not psmon's).
            format!(
                "monitor_interval = 1\nipckey = {key}\n[[entry]]\npath = \"{v}\"\nrestart = \"{restart}\"\ngrace = 1\nretry = 1000\nstart_secs = 0\n{churn_entry}",
                v = victim.display(),
                key = 0x7c00_0000 + n,
            ),
        )?;
        let storm = (case.storm_rate > 0)
            .then(|| start_storm(exec_program, case.storm_rate))
            .transpose()?;
        let mut sleepers = Storm(Vec::with_capacity(case.sleepers as usize));
        for _ in 0..case.sleepers {
            sleepers.0.push(Command::new(&sleeper).spawn()?);
        }
        if case.source == "none" {
            let program = match case.via {
                Via::Script => script.clone(),
                _ => stamper.clone(),
            };
            let mut samples = started_by_the_bench(&program, &stamps, &victim, kills)?;
            drop(sleepers);
            latency_row(&mut out, case.label, &mut samples);
            continue;
        }
        let extra: &[&str] = if case.state { &[] } else { &["--no-state"] };
        let daemon = Daemon::start_with(psmon, &conf, case.source, extra)?;
        // Not running at start: psmon starts the first one.
        let mut samples = Vec::with_capacity(kills);
        let mut lines = 1;
        let paced = case.sleepers > 0 || case.via == Via::Script;
        for i in 0..kills {
            let pause = if paced { pace(i) } else { Duration::ZERO };
            let took =
                kill_and_time(&daemon, &stamps, &mut lines, false, pause).context(case.label)?;
            samples.push(took);
        }
        let said = daemon.stop();
        kill_last(&stamps, lines);
        drop(storm);
        drop(churn);
        drop(sleepers);
        latency_row(&mut out, case.label, &mut samples);
        if n == 0 {
            costs = said;
        }
    }
    // What psmon said of its own costs in the first case, as it stopped.
    let field = |text: &str, key: &str| {
        costs
            .iter()
            .find(|m| m["message"].as_str().is_some_and(|t| t.starts_with(text)))
            .map(|m| {
                (
                    m["message"].as_str().unwrap_or("").to_string(),
                    m[key].as_f64().unwrap_or(0.0),
                )
            })
    };
    let _ = writeln!(
        out,
        "\nWhat each event costs psmon besides (first row, measured by psmon itself):\n\n\
         | cost | p50 | p99 |\n|---|---|---|"
    );
    // (message it starts with, field prefix, what the row measures, named by the message)
    let rows = [
        (
            "state saved",
            "snapshot_",
            "taking the snapshot, on the event thread",
            true,
        ),
        (
            "state saved",
            "record_",
            "serialising what changed (a journal record), on the writer's thread",
            false,
        ),
        (
            "state saved",
            "append_",
            "appending it to the journal and syncing it",
            false,
        ),
        (
            "state saved",
            "whole_",
            "serialising the whole state (the first save, a compaction)",
            false,
        ),
        (
            "state saved",
            "replace_",
            "writing it whole (write, fsync, rename, a new journal)",
            false,
        ),
        ("health queues", "", "one segment write", true),
    ];
    for (text, key, what, named) in rows {
        if let (Some((message, p50)), Some((_, p99))) = (
            field(text, &format!("{key}p50_us")),
            field(text, &format!("{key}p99_us")),
        ) {
            let label = if named {
                format!("{message}: {what}")
            } else {
                what.to_string()
            };
            let _ = writeln!(out, "| {label} | {p50:.1} µs | {p99:.1} µs |");
        }
    }
    out.push('\n');
    Ok(out)
}

/// The baseline rows: `n` times, at the pace of the busy rows, the bench
/// itself starts the stamper (posix_spawn, as psmon does) and the sample
/// is the stamper's first clock reading less the moment before the spawn.
/// `program` is the stamper (given OUT and `victim`) or the script that
/// runs it; the victims it starts are killed at once.
fn started_by_the_bench(
    program: &Path,
    stamps: &Path,
    victim: &Path,
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let _ = std::fs::remove_file(stamps);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        std::thread::sleep(pace(i));
        let before = monotonic_ns();
        let mut command = Command::new(program);
        if program.extension().is_none_or(|e| e != "sh") {
            command.arg(stamps).arg(victim);
        }
        command.status()?;
        let (stamp, pid) = wait_stamp(stamps, i + 1)?;
        // SAFETY: kill with a pid the stamper wrote and a valid signal.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        samples.push(stamp.saturating_sub(before));
    }
    Ok(samples)
}

/// Two storm processes spawning `program` at `rate` exec/s in all, until killed.
fn start_storm(program: &Path, rate: u32) -> anyhow::Result<Storm> {
    let me = std::env::current_exe()?;
    let each = (f64::from(rate) / 2.0).to_string();
    (0..2)
        .map(|_| {
            Command::new(&me)
                .args([
                    "storm-worker",
                    "--mode",
                    "exec",
                    "--seconds",
                    "86400",
                    "--rate",
                    &each,
                ])
                .arg("--program")
                .arg(program)
                .stdout(Stdio::null())
                .spawn()
                .context("starting a storm worker")
        })
        .collect::<anyhow::Result<_>>()
        .map(Storm)
}

pub fn scale(psmon: &Path, dir: &Path, n: usize) -> anyhow::Result<String> {
    let world = ScaleWorld::start(dir, "scale", n, "LOG_LEVEL = DEBUG\n")?;
    let result = measure_scale(psmon, &world.conf, n);
    drop(world);
    let r = result?;
    let mut out = String::new();
    let mut sorted = r.scans.clone();
    sorted.sort_by(f64::total_cmp);
    writeln!(
        out,
        "### (e) {n} entries watching {n} live processes\n\n\
         One pfile with {n} PENT lines (report only), each naming its own executable, and {n} \
         processes running them; `psmon run --source ebpf` (in-kernel filter on). All {n} were \
         reported Up {:.1} s after start. Start-up ends with the scan that follows the \
         source's opening; the idle window begins {SETTLE_SECS} s after the last Up, and psmon \
         then idles for {:.0} s with MONITOR_INTERVAL = 10 (the vendor default).\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | start → READY=1 (source open, first scan done) | {:.2} s of CPU, {:.1} s on the clock | ≤ 1 s of CPU |\n\
         | start-up CPU (start → settled) | {:.2} s, at most {} threads | |\n\
         | RSS after start-up | {:.1} MB | ≤ 30 MB |\n\
         | reconciliation scan, median of {} | {:.0} ms (max {:.0} ms) | < 200 ms |\n\
         | idle CPU (scans included) | {:.2}% of one core | < 0.5% |\n\
         | `status` request → its reply ({} KB of JSON, all {n} entries), median of {} | {} (max {}) | |\n",
        r.up_secs,
        r.idle_secs,
        r.ready_cpu,
        r.ready_secs,
        r.startup_cpu,
        r.startup_threads,
        r.rss_kib as f64 / 1024.0,
        sorted.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
        r.idle_cpu,
        r.status_bytes / 1024,
        r.status_ns.len(),
        super::support::fmt_ns(percentile(&r.status_ns, 50.0)),
        super::support::fmt_ns(r.status_ns.last().copied().unwrap_or(0)),
    )?;
    Ok(out)
}

/// How long after the last Up (e) lets start-up finish before it measures.
const SETTLE_SECS: u64 = 2;

/// What (e) measured.
struct ScaleResult {
    up_secs: f64,
    /// CPU seconds from start until READY=1, and when it came.
    ready_cpu: f64,
    ready_secs: f64,
    /// CPU seconds from start until settled, and the most threads seen then.
    startup_cpu: f64,
    startup_threads: u64,
    rss_kib: u64,
    /// Scan times (ms) in the idle window.
    scans: Vec<f64>,
    idle_cpu: f64,
    idle_secs: f64,
    /// The status reply's size and its sorted round trips (ns).
    status_bytes: usize,
    status_ns: Vec<u64>,
}

fn measure_scale(psmon: &Path, conf: &Path, n: usize) -> anyhow::Result<ScaleResult> {
    // psmon says READY=1 to systemd once its source is open and its first
    // scan has found what runs: the end of start-up as a service manager
    // sees it.
    let notify_path = conf.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_nonblocking(true)?;
    let env = [
        "env".to_string(),
        format!("NOTIFY_SOCKET={}", notify_path.display()),
    ];
    let started = Instant::now();
    let daemon = Daemon::start_in(&env, psmon, conf, "ebpf", &[])?;
    let mut ready = None;
    let mut startup_threads = 0;
    let mut looked = Instant::now();
    let mut up = 0;
    while up < n {
        let m = daemon
            .messages
            .recv_timeout(Duration::from_secs(60))
            .context("waiting for every process to be Up")?;
        if m["message"].as_str().is_some_and(|s| s.ends_with(") Up")) {
            up += 1;
        }
        if looked.elapsed() > Duration::from_millis(20) {
            startup_threads = startup_threads.max(threads(daemon.pid())?);
            heard_ready(&notify, daemon.pid(), started, &mut ready)?;
            looked = Instant::now();
        }
    }
    let up_secs = started.elapsed().as_secs_f64();
    let settled = Instant::now() + Duration::from_secs(SETTLE_SECS);
    while Instant::now() < settled || ready.is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "psmon never said READY=1"
        );
        let _ = daemon.messages.recv_timeout(Duration::from_millis(20));
        startup_threads = startup_threads.max(threads(daemon.pid())?);
        heard_ready(&notify, daemon.pid(), started, &mut ready)?;
    }
    let (ready_cpu, ready_secs) = ready.expect("waited for");
    let idle = Duration::from_secs(30);
    let cpu0 = cpu_seconds(daemon.pid())?;
    let t0 = Instant::now();
    let mut scans = Vec::new();
    while t0.elapsed() < idle {
        if let Ok(m) = daemon.messages.recv_timeout(Duration::from_millis(200))
            && let Some(ms) = m["scan_ms"].as_f64()
        {
            scans.push(ms);
        }
    }
    let idle_cpu = (cpu_seconds(daemon.pid())? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss_kib = rss_kib(daemon.pid())?;
    let (status_bytes, status_ns) = status_round_trips(&conf.join("psmon.sock"), 20)?;
    daemon.stop();
    Ok(ScaleResult {
        up_secs,
        ready_cpu,
        ready_secs,
        startup_cpu: cpu0,
        startup_threads,
        rss_kib,
        scans,
        idle_cpu,
        idle_secs: idle.as_secs_f64(),
        status_bytes,
        status_ns,
    })
}

/// Reads what psmon told its notify socket; at READY=1, notes psmon's CPU
/// seconds so far and the seconds since `started`.
fn heard_ready(
    notify: &std::os::unix::net::UnixDatagram,
    pid: u32,
    started: Instant,
    ready: &mut Option<(f64, f64)>,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        let said = String::from_utf8_lossy(&buf[..n]);
        if ready.is_none() && said.lines().any(|l| l == "READY=1") {
            *ready = Some((cpu_seconds(pid)?, started.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}

/// The number of threads of `pid`.
fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads")
}

/// How long (f) measures each contender.
const IDLE_SECS: u64 = 10;

/// (f) Idle cost on this host.
pub fn idle(psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    let victim = compile(dir, "idlevictim", PAUSER)?;
    let processes = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter(|d| {
            d.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    let mut out = format!(
        "\n### (f) Idle cost\n\nOne watched process (running), MONITOR_INTERVAL = 1, nothing \
         happening, on this host ({processes} processes in /proc). CPU is the time on CPU of \
         every thread (schedstat) over {IDLE_SECS} s, in % of one core, beside the simplest \
         /proc poller (`xtask poller`: readlink every /proc/*/exe once a second, no matching, \
         no output). Scan time is psmon's reconciliation scan, timed inside the scan.\n\n\
         | who | CPU | scans | scan p50 | scan max |\n|---|---|---|---|---|\n"
    );
    let mut pauser = Command::new(&victim).spawn()?;
    for source in ["ebpf", "netlink", "poll"] {
        let conf = dir.join(format!("conf-idle-{source}"));
        std::fs::create_dir_all(&conf)?;
        std::fs::write(conf.join("psagent.conf"), "LOG_LEVEL = DEBUG\n")?;
        std::fs::write(
            conf.join("idle.toml"),
            format!(
                "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"/bin/true\"\n",
                victim.display()
            ),
        )?;
        let daemon = Daemon::start(psmon, &conf, source)?;
        daemon.wait_up(pauser.id(), Duration::from_secs(10))?;
        // Settled: start-up work done.
        std::thread::sleep(Duration::from_secs(2));
        while daemon.messages.try_recv().is_ok() {}
        let cpu0 = cpu_ns(daemon.pid())?;
        let t0 = Instant::now();
        let mut scans = Vec::new();
        while t0.elapsed() < Duration::from_secs(IDLE_SECS) {
            if let Ok(m) = daemon.messages.recv_timeout(Duration::from_millis(100))
                && let Some(ms) = m["scan_ms"].as_f64()
            {
                scans.push((ms * 1e6) as u64);
            }
        }
        let cpu = (cpu_ns(daemon.pid())? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
        daemon.stop();
        scans.sort_unstable();
        let _ = writeln!(
            out,
            "| psmon run, {source} | {cpu:.3} % | {} | {} | {} |",
            scans.len(),
            super::support::fmt_ns(percentile(&scans, 50.0)),
            super::support::fmt_ns(scans.last().copied().unwrap_or(0)),
        );
    }
    let _ = pauser.kill();
    let _ = pauser.wait();
    let mut poller = Command::new(std::env::current_exe()?)
        .arg("poller")
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_ns(poller.id())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let cpu = (cpu_ns(poller.id())? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let _ = poller.kill();
    let _ = poller.wait();
    let _ = writeln!(out, "| 1 s /proc poller | {cpu:.3} % | {IDLE_SECS} | | |");
    out.push('\n');
    Ok(out)
}

/// The baseline of (f): every second, readlink every /proc/*/exe.
pub fn poller() -> anyhow::Result<()> {
    let mut links = 0u64;
    loop {
        for d in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
            if d.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
                && std::fs::read_link(d.path().join("exe")).is_ok()
            {
                links += 1;
            }
        }
        std::hint::black_box(links);
        std::thread::sleep(Duration::from_secs(1));
    }
}
