//! (m) A busy host with few entries: 20 entries (one restarted by the
//! stamper, 19 report-only) among tens of thousands of unwatched sleeping
//! processes, side by side with the same 20 on a quiet host. Each
//! reconciliation scan reads every process on the host; a death must never
//! wait for one, and the scans must stay cheap. Then what saving the state
//! costs per death at 1, 1,000 and 10,000 entries.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::support::{
    Daemon, PAUSER, STAMPER, ScaleWorld, Storm, compile, cpu_seconds, fmt_ns, kill_and_time,
    kill_last, pace, percentile, wait_stamp,
};

/// Entries besides the one that is killed.
const OTHERS: usize = 19;

/// How long (m) lets psmon idle, for its CPU: a clock tick is 10 ms, so
/// 0.017 % of a minute.
const IDLE_SECS: u64 = 60;

pub fn busy_host(
    psmon: &Path,
    dir: &Path,
    kills: usize,
    sleepers: usize,
) -> anyhow::Result<String> {
    let stamper = compile(dir, "stamper", STAMPER)?;
    let victim = compile(dir, "busyvictim", PAUSER)?;
    let sleeper = compile(dir, "busysleeper", PAUSER)?;
    let programs = (stamper.as_path(), victim.as_path());
    let _pid_max = PidMax::at_least(sleepers + 10_000)?;
    let mut hosts = Vec::new();
    for n in [0, sleepers] {
        let label = if n == 0 {
            "quiet host".to_string()
        } else {
            format!("{n} unwatched sleeping processes")
        };
        println!("xtask: (m) {label}");
        let mut asleep = Storm(Vec::with_capacity(n));
        for _ in 0..n {
            asleep.0.push(
                Command::new(&sleeper)
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting a sleeper (is pid_max or the memory too small?)")?,
            );
        }
        let run = kill_loop(psmon, dir, programs, OTHERS, kills, true);
        drop(asleep);
        hosts.push((label, run?));
    }
    let mut out = format!(
        "\n### (m) A busy host, few entries\n\n\
         {} entries (one restarted by the stamper, `start_secs = 0`; {OTHERS} report-only, each \
         its own running program), MONITOR_INTERVAL = 10, `psmon run --source ebpf`, on a quiet \
         host and beside {sleepers} unwatched sleeping processes (pid_max raised for them). \
         SIGKILL → the stamper's first instruction, {kills} kills 0–99 ms apart (so that they \
         fall anywhere in a scan); then {IDLE_SECS} s idle, whose scans and CPU are the next \
         two columns; then a reload, whose scan reads every process (as the first scan does, \
         and every few minutes when the kernel names the processes that exec'd).\n\n\
         | host | kills | p50 | p95 | p99 | idle: scans, median (max) | idle CPU | a scan reading every process |\n\
         |---|---|---|---|---|---|---|---|\n",
        OTHERS + 1,
    );
    for (label, h) in &hosts {
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} ({}) of {} | {:.3}% | {:.1} ms |",
            h.samples.len(),
            fmt_ns(percentile(&h.samples, 50.0)),
            fmt_ns(percentile(&h.samples, 95.0)),
            fmt_ns(percentile(&h.samples, 99.0)),
            fmt_ms(h.scans.get(h.scans.len() / 2).copied().unwrap_or(0.0)),
            fmt_ms(h.scans.last().copied().unwrap_or(0.0)),
            h.scans.len(),
            h.idle_cpu,
            h.walk_ms,
        )?;
    }
    if let [(_, quiet), (_, busy)] = &hosts[..] {
        let delta =
            |p| (percentile(&busy.samples, p) as f64 - percentile(&quiet.samples, p) as f64) / 1e6;
        writeln!(
            out,
            "\nBusy against quiet: {:+.2} ms at p50, {:+.2} ms at p95 (target: +0.2 / +1 ms); \
             scan target ≤ 40 ms, idle CPU target ≤ 0.1 % (one clock tick in {IDLE_SECS} s is \
             {:.3} %).",
            delta(50.0),
            delta(95.0),
            1.0 / IDLE_SECS as f64,
        )?;
    }
    out.push_str(&saves(psmon, dir, programs, kills.min(100))?);
    Ok(out)
}

/// What saving the state costs per death at 1, 1,000 and 10,000 entries, as
/// psmon itself reports it when it stops: the snapshot on the event
/// thread, the journal record's size and making, its append and sync.
fn saves(
    psmon: &Path,
    dir: &Path,
    programs: (&Path, &Path),
    kills: usize,
) -> anyhow::Result<String> {
    let mut out = format!(
        "\nSaving the state, per death ({kills} kills of one entry's process, the others \
         report-only and running; psmon's own figures at its stop):\n\n\
         | entries | kill → restart p50 / p99 | snapshot, event thread p50 / p99 | record p50 / p99 | \
         making it p50 | append + sync p50 |\n|---|---|---|---|---|---|\n"
    );
    for others in [0, 999, 9_999] {
        println!("xtask: (m) saves at {} entries", others + 1);
        let run = kill_loop(psmon, dir, programs, others, kills, false)?;
        let saved = run
            .said
            .iter()
            .find(|m| {
                m["message"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("state saved"))
            })
            .context("psmon did not say what its saves cost")?;
        let f = |key: &str| saved[key].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "| {} | {} / {} | {:.0} / {:.0} µs | {:.1} / {:.1} KB | {:.0} µs | {:.0} µs |",
            others + 1,
            fmt_ns(percentile(&run.samples, 50.0)),
            fmt_ns(percentile(&run.samples, 99.0)),
            f("snapshot_p50_us"),
            f("snapshot_p99_us"),
            f("record_bytes_p50") / 1024.0,
            f("record_bytes_p99") / 1024.0,
            f("record_p50_us"),
            f("append_p50_us"),
        )?;
    }
    Ok(out)
}

/// What one run of [`kill_loop`] gave.
struct Run {
    /// Kill → the stamper's first instruction, sorted (ns).
    samples: Vec<u64>,
    /// Reconciliation scans in the idle window (ms), sorted.
    scans: Vec<f64>,
    idle_cpu: f64,
    /// A scan that read everything (the one after a reload), ms.
    walk_ms: f64,
    /// What psmon said from SIGTERM to its exit (its own costs among it).
    said: Vec<serde_json::Value>,
}

/// `others` report-only entries of running programs and one the stamper
/// restarts, MONITOR_INTERVAL = 10; `kills` kills of that one, paced; then,
/// with `idle`, 30 s of nothing, its scans and CPU.
fn kill_loop(
    psmon: &Path,
    dir: &Path,
    (stamper, victim): (&Path, &Path),
    others: usize,
    kills: usize,
    idle: bool,
) -> anyhow::Result<Run> {
    let world = ScaleWorld::start(dir, "busy", others, "LOG_LEVEL = DEBUG\n")?;
    if others == 0 {
        // A pfile without PENT lines is refused: the victim's file alone.
        std::fs::remove_file(world.conf.join("pfile_scale"))?;
    }
    let stamps = world.conf.join("stamps");
    let _ = std::fs::remove_file(&stamps);
    std::fs::write(
        world.conf.join("victim.toml"),
        format!(
            "monitor_interval = 10\n[[entry]]\npath = \"{v}\"\nrestart = \"{s} {out} {v}\"\n\
             grace = 1\nretry = 1000\nstart_secs = 0\n",
            v = victim.display(),
            s = stamper.display(),
            out = stamps.display(),
        ),
    )?;
    let daemon = Daemon::start(psmon, &world.conf, "ebpf")?;
    let mut samples = Vec::with_capacity(kills);
    let mut lines = 1;
    // The first process is Up only once the world's 10,000 are.
    let first = wait_stamp(&stamps, lines)?.1;
    daemon.wait_up(first, Duration::from_secs(60))?;
    for i in 0..kills {
        samples.push(kill_and_time(
            &daemon,
            &stamps,
            &mut lines,
            i == 0,
            pace(i),
        )?);
    }
    samples.sort_unstable();
    let mut scans = Vec::new();
    let mut idle_cpu = 0.0;
    let mut walk_ms = 0.0;
    if idle {
        // The restarts' after-effects settle, then a minute of nothing.
        std::thread::sleep(Duration::from_secs(2));
        while daemon.messages.try_recv().is_ok() {}
        let cpu0 = cpu_seconds(daemon.pid())?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(IDLE_SECS) {
            if let Ok(m) = daemon.messages.recv_timeout(Duration::from_millis(200))
                && let Some(ms) = m["scan_ms"].as_f64()
            {
                scans.push(ms);
            }
        }
        idle_cpu = (cpu_seconds(daemon.pid())? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        scans.sort_by(f64::total_cmp);
        // A reload proves nothing about execs: its scan reads everything.
        // SAFETY: kill with our child's pid and a valid signal.
        unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
        let walk = daemon.wait_message(|m| m["scan_ms"].is_number(), Duration::from_secs(30))?;
        walk_ms = walk["scan_ms"].as_f64().unwrap_or(0.0);
    }
    let said = daemon.stop();
    kill_last(&stamps, lines);
    drop(world);
    Ok(Run {
        samples,
        scans,
        idle_cpu,
        walk_ms,
        said,
    })
}

/// Milliseconds, as µs below one.
fn fmt_ms(ms: f64) -> String {
    fmt_ns((ms * 1e6) as u64)
}

/// `kernel.pid_max` raised to at least a number for the run, put back on drop.
struct PidMax(Option<String>);

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    fn at_least(n: usize) -> anyhow::Result<PidMax> {
        let was = std::fs::read_to_string(PID_MAX)?;
        if was.trim().parse::<usize>()? >= n {
            return Ok(PidMax(None));
        }
        std::fs::write(PID_MAX, n.to_string()).context("raising kernel.pid_max")?;
        Ok(PidMax(Some(was)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::fs::write(PID_MAX, was.trim());
        }
    }
}
