//! (j) The fleet view, part of `cargo xtask bench`: what a `/metrics`
//! scrape costs with 10,000 entries, and whether `status` asked back to
//! back there moves kill → restart; whether a scraper hitting `/metrics`
//! 100 times a second moves kill → restart; how fast queued events are
//! pushed, and how long an event takes to reach its receiver.

use std::{
    fmt::Write as _,
    io::{BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::ensure;

use super::support::{
    Daemon, PAUSER, STAMPER, ScaleWorld, compile, kill_and_time, kill_last, status_round_trips,
    wait_stamp,
};
use super::support::{fmt_ns, monotonic_ns, percentile};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One GET, asked as Prometheus asks (OpenMetrics first, and compressed
/// when `gzip`): the response's length on the wire.
fn get(port: u16, path: &str, gzip: bool) -> anyhow::Result<usize> {
    Ok(get_body(port, path, gzip)?.len())
}

/// The whole response to `GET path` (status line, headers, body).
fn get_body(port: u16, path: &str, gzip: bool) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\n\
         Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
         {}Connection: close\r\n\r\n",
        if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        }
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    ensure!(out.starts_with(b"HTTP/1.1 200"), "GET {path} failed");
    Ok(out)
}

/// psmon's own mean times from a watched process's exit (the kernel's
/// timestamp) to its Down decision and to its restart command started,
/// from its histograms' sums and counts (ns).
fn inside_psmon(port: u16) -> anyhow::Result<(u64, u64)> {
    let body = String::from_utf8(get_body(port, "/metrics", false)?)?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mean = |h: &str| {
        let count = value(&format!("{h}_count"));
        if count > 0.0 {
            (value(&format!("{h}_sum")) / count * 1e9) as u64
        } else {
            0
        }
    };
    Ok((
        mean("psmon_detection_seconds"),
        mean("psmon_restart_start_seconds"),
    ))
}

pub(crate) fn fleet(psmon: &Path, dir: &Path, n: usize) -> anyhow::Result<String> {
    let mut out = String::from("\n### (j) Fleet view: scrapes and event push\n\n");
    // One entry first, on a quiet host: after the 10,000-entry world the
    // host is still tearing down 10,000 processes and flushing the
    // reloads' state writes for a while.
    let mut one = String::new();
    restart_under_scrapes(psmon, dir, &mut one)?;
    scrape_at_scale(psmon, dir, n, &mut out)?;
    out.push_str(&one);
    push(psmon, dir, &mut out)?;
    Ok(out)
}

/// One entry whose restart command is the stamper (as in (d): it notes when
/// it started, then runs the victim as a daemon), with `psagent`:
/// the configuration directory and the stamps file.
fn stamped_entry(dir: &Path, tag: &str, psagent: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let conf = dir.join(format!("conf-{tag}-stamped"));
    std::fs::create_dir_all(&conf)?;
    std::fs::write(conf.join("psagent.conf"), psagent)?;
    let stamps = stamped_entry_in(&conf, dir, tag)?;
    Ok((conf, stamps))
}

/// The stamped entry, written into `conf` (as `bench.toml`): the stamps file.
fn stamped_entry_in(conf: &Path, dir: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    let stamper = compile(dir, &format!("{tag}stamper"), STAMPER)?;
    let victim = compile(dir, &format!("{tag}victim"), PAUSER)?;
    let stamps = conf.join("stamps");
    std::fs::write(
        conf.join("bench.toml"),
        format!(
            "[[entry]]\npath = \"{v}\"\nrestart = \"{s} {st} {v}\"\ngrace = 1\nretry = 1000\nstart_secs = 0\n",
            v = victim.display(),
            s = stamper.display(),
            st = stamps.display()
        ),
    )?;
    Ok(stamps)
}

/// Changes one line of the scale world's pfile (the first entry's retry
/// count, by `n`'s parity) and asks psmon to reload, waiting for its answer.
fn reload_changed(conf: &Path, n: usize) -> anyhow::Result<()> {
    use std::io::BufRead;
    let pfile = conf.join("pfile_scale");
    let text = std::fs::read_to_string(&pfile)?;
    let (from, to) = if n.is_multiple_of(2) {
        (" : - : 0 : 0 : continue", " : - : 0 : 1 : continue")
    } else {
        (" : - : 0 : 1 : continue", " : - : 0 : 0 : continue")
    };
    std::fs::write(&pfile, text.replacen(from, to, 1))?;
    let mut stream = std::os::unix::net::UnixStream::connect(conf.join("psmon.sock"))?;
    stream.write_all(b"{\"v\":1,\"cmd\":\"reload\"}\n")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    ensure!(
        reply.contains("\"ok\":true"),
        "reload failed: {}",
        &reply[..reply.len().min(200)]
    );
    Ok(())
}

/// `/metrics` and `/status` through the endpoint with `n` entries Up.
fn scrape_at_scale(psmon: &Path, dir: &Path, n: usize, out: &mut String) -> anyhow::Result<()> {
    const KILLS: usize = 30;
    let port = free_port()?;
    let world = ScaleWorld::start(dir, "fleet", n, &format!("HEARTBEAT_PORT = {port}\n"))?;
    let conf = world.conf.clone();
    let stamps = stamped_entry_in(&conf, dir, "fleetscale")?;
    let mut lines = 1;
    let measured = (|| -> anyhow::Result<Scale> {
        let daemon = Daemon::start(psmon, &conf, "ebpf")?;
        let (mut up, mut stamped_up) = (0, false);
        // The n processes, and the stamped entry's (pfile `bench`) if it
        // comes first.
        while up < n {
            let m = daemon.wait_message(|_| true, Duration::from_secs(60))?;
            if m["message"].as_str().is_some_and(|s| s.ends_with(") Up")) {
                if m["pfile"] == "bench" {
                    stamped_up = true;
                } else {
                    up += 1;
                }
            }
        }
        let mut r = Scale::default();
        for _ in 0..20 {
            let t = Instant::now();
            r.metrics_bytes = get(port, "/metrics", false)?;
            r.metrics.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            r.gzip_bytes = get(port, "/metrics", true)?;
            r.gzip.push(t.elapsed().as_nanos() as u64);
        }
        for _ in 0..5 {
            // Past the endpoint's one-second cache: each one asks psmon.
            std::thread::sleep(Duration::from_millis(1100));
            let t = Instant::now();
            r.status_bytes = get(port, "/status", false)?;
            r.status.push(t.elapsed().as_nanos() as u64);
        }
        for i in 0..KILLS {
            r.quiet.push(kill_and_time(
                &daemon,
                &stamps,
                &mut lines,
                i == 0 && stamped_up,
                Duration::ZERO,
            )?);
            std::thread::sleep(Duration::from_millis(50));
        }
        r.inside = Some(inside_psmon(port)?);
        // `psmon status` on the control socket, one after another.
        let socket = conf.join("psmon.sock");
        (r.asked, r.answered) = kills_beside(KILLS, &daemon, &stamps, &mut lines, move |_| {
            status_round_trips(&socket, 1).is_ok()
        })?;
        // `psmon reload` on the control socket one after another, each
        // with one line of the 10,000-line pfile changed.
        let changed = conf.clone();
        (r.reloading, r.reloads) = kills_beside(KILLS, &daemon, &stamps, &mut lines, move |n| {
            reload_changed(&changed, n).is_ok()
        })?;
        let said = daemon.stop();
        let find = |start: &str| {
            said.iter()
                .find(|m| m["message"].as_str().is_some_and(|s| s.starts_with(start)))
                .cloned()
        };
        r.saves = find("state saved");
        r.status_loop = find("status answered");
        Ok(r)
    })();
    kill_last(&stamps, lines);
    drop(world);
    let mut r = measured?;
    for v in [
        &mut r.metrics,
        &mut r.gzip,
        &mut r.status,
        &mut r.quiet,
        &mut r.asked,
        &mut r.reloading,
    ] {
        v.sort_unstable();
    }
    writeln!(
        out,
        "{n} entries Up (one pfile, report only; `--source ebpf`), scraped over loopback:\n\n\
         | request | on the wire | n | median | max |\n|---|---|---|---|---|\n\
         | `GET /metrics` | {} KB | {} | {} | {} |\n\
         | `GET /metrics`, `Accept-Encoding: gzip` (as Prometheus asks) | {} KB | {} | {} | {} |\n\
         | `GET /status` (asks the supervisor) | {} KB | {} | {} | {} |\n\n\
         In the same daemon, one more entry whose restart command is the stamper: SIGKILL → \
         restart command started, {KILLS} kills 50 ms apart, then {KILLS} more while a client \
         asks `psmon status` (all {n} entries) on the control socket one request after another \
         ({} answered meanwhile):\n\n\
         | case | kills | p50 | p99 | max |\n|---|---|---|---|---|\n\
         | nobody asking | {} | {} | {} | {} |\n\
         | `status` back to back | {} | {} | {} | {} |\n\
         | `reload` back to back, one line of the pfile changed each time ({} reloads) | {} | {} | {} | {} |\n",
        r.metrics_bytes / 1024,
        r.metrics.len(),
        fmt_ns(percentile(&r.metrics, 50.0)),
        fmt_ns(*r.metrics.last().unwrap_or(&0)),
        r.gzip_bytes / 1024,
        r.gzip.len(),
        fmt_ns(percentile(&r.gzip, 50.0)),
        fmt_ns(*r.gzip.last().unwrap_or(&0)),
        r.status_bytes / 1024,
        r.status.len(),
        fmt_ns(percentile(&r.status, 50.0)),
        fmt_ns(*r.status.last().unwrap_or(&0)),
        r.answered,
        r.quiet.len(),
        fmt_ns(percentile(&r.quiet, 50.0)),
        fmt_ns(percentile(&r.quiet, 99.0)),
        fmt_ns(*r.quiet.last().unwrap_or(&0)),
        r.asked.len(),
        fmt_ns(percentile(&r.asked, 50.0)),
        fmt_ns(percentile(&r.asked, 99.0)),
        fmt_ns(*r.asked.last().unwrap_or(&0)),
        r.reloads,
        r.reloading.len(),
        fmt_ns(percentile(&r.reloading, 50.0)),
        fmt_ns(percentile(&r.reloading, 99.0)),
        fmt_ns(*r.reloading.last().unwrap_or(&0)),
    )?;
    if let Some((down, started)) = r.inside {
        writeln!(
            out,
            "\nInside psmon, over the kills with nobody asking (its own histograms, from the \
             kernel's exit timestamp): Down decided after {} on average, the restart command \
             started (spawn returned) after {}; the rest of kill → first instruction is the \
             command's exec.",
            fmt_ns(down),
            fmt_ns(started)
        )?;
    }
    if let Some(m) = &r.status_loop {
        writeln!(
            out,
            "\nWhat each `status` cost psmon's event thread (taking the read-model the reply is \
             built from, as psmon reported it when it stopped: {}): p50 {:.0} µs / p99 {:.0} µs.",
            m["message"].as_str().unwrap_or(""),
            m["loop_p50_us"].as_f64().unwrap_or(0.0),
            m["loop_p99_us"].as_f64().unwrap_or(0.0),
        )?;
    }
    if let Some(m) = &r.saves {
        let us = |k: &str| m[k].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "\nWhat saving the state cost meanwhile, as psmon reported it when it stopped \
             ({}): taking the snapshot on the event thread p50 {:.0} µs / p99 {:.0} µs; \
             a journal record (what changed) p50 {:.0} bytes / p99 {:.0} bytes, serialised in \
             p50 {:.0} µs / p99 {:.0} µs, appended and synced in p50 {:.2} ms / p99 {:.2} ms; \
             the whole state {:.0} KB, serialised in p50 {:.1} ms, written in p50 {:.1} ms.",
            m["message"].as_str().unwrap_or(""),
            us("snapshot_p50_us"),
            us("snapshot_p99_us"),
            us("record_bytes_p50"),
            us("record_bytes_p99"),
            us("record_p50_us"),
            us("record_p99_us"),
            us("append_p50_us") / 1e3,
            us("append_p99_us") / 1e3,
            us("whole_bytes_p50") / 1024.0,
            us("whole_p50_us") / 1e3,
            us("replace_p50_us") / 1e3,
        )?;
    }
    Ok(())
}

/// What [`scrape_at_scale`] measured (times in ns).
#[derive(Default)]
struct Scale {
    metrics: Vec<u64>,
    metrics_bytes: usize,
    /// `/metrics` asked with `Accept-Encoding: gzip`.
    gzip: Vec<u64>,
    gzip_bytes: usize,
    status: Vec<u64>,
    status_bytes: usize,
    /// Kill → restart started, with nobody asking and with `status` asked.
    quiet: Vec<u64>,
    asked: Vec<u64>,
    /// Kill → restart started while `reload` is asked back to back.
    reloading: Vec<u64>,
    reloads: usize,
    /// psmon's own means over the quiet kills: exit → Down decided, exit
    /// → restart command started.
    inside: Option<(u64, u64)>,
    answered: usize,
    /// psmon's "state saved" message, with what saving cost.
    saves: Option<serde_json::Value>,
    /// psmon's "status answered" message: what each cost its event thread.
    status_loop: Option<serde_json::Value>,
}

/// SIGKILL → restart command started, in alternating blocks without and
/// with a scraper asking `/metrics` 100 times a second.
fn restart_under_scrapes(psmon: &Path, dir: &Path, out: &mut String) -> anyhow::Result<()> {
    const BLOCK: usize = 50;
    const BLOCKS: usize = 10;
    let port = free_port()?;
    let (conf, stamps) = stamped_entry(dir, "fleet", &format!("HEARTBEAT_PORT = {port}\n"))?;
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    let mut quiet = Vec::new();
    let mut scraped = Vec::new();
    let mut scrapes = 0usize;
    let mut lines = 1;
    let mut inside = None;
    for block in 0..BLOCKS {
        let with_scraper = block % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = with_scraper.then(|| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0usize;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if get(port, "/metrics", false).is_ok() {
                        n += 1;
                    }
                    next += Duration::from_millis(10);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                n
            })
        });
        for _ in 0..BLOCK {
            let took = kill_and_time(&daemon, &stamps, &mut lines, false, Duration::ZERO)?;
            // Kills spaced out so that the scraper runs all through.
            std::thread::sleep(Duration::from_millis(20));
            if with_scraper {
                scraped.push(took);
            } else {
                quiet.push(took);
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = scraper {
            scrapes += s.join().unwrap_or(0);
        }
        if block == 0 {
            inside = Some(inside_psmon(port)?);
        }
    }
    daemon.stop();
    kill_last(&stamps, lines);
    quiet.sort_unstable();
    scraped.sort_unstable();
    let (q, s) = (percentile(&quiet, 50.0), percentile(&scraped, 50.0));
    writeln!(
        out,
        "SIGKILL → restart command started (the stamper, as in (d)), one entry, `--source ebpf`, \
         in {BLOCKS} alternating blocks of {BLOCK} kills, 20 ms apart, without and with a scraper \
         asking `/metrics` every 10 ms ({scrapes} scrapes answered during its blocks):\n\n\
         | case | kills | p50 | p99 | max |\n|---|---|---|---|---|\n\
         | no scraper | {} | {} | {} | {} |\n\
         | scraper at 100/s | {} | {} | {} | {} |\n\n\
         Difference at p50: {:+.3} ms (target: within 0.2 ms).\n",
        quiet.len(),
        fmt_ns(q),
        fmt_ns(percentile(&quiet, 99.0)),
        fmt_ns(*quiet.last().unwrap_or(&0)),
        scraped.len(),
        fmt_ns(s),
        fmt_ns(percentile(&scraped, 99.0)),
        fmt_ns(*scraped.last().unwrap_or(&0)),
        (s as f64 - q as f64) / 1e6,
    )?;
    if let Some((down, started)) = inside {
        writeln!(
            out,
            "\nInside psmon, over the first block (no scraper; its own histograms, from the \
             kernel's exit timestamp): Down decided after {} on average, the restart command \
             started (spawn returned) after {}.",
            fmt_ns(down),
            fmt_ns(started)
        )?;
    }
    Ok(())
}

/// A receiver keeping (arrival time, event) for each POST, answering 200.
fn receiver(listener: TcpListener, got: Arc<Mutex<Vec<(u64, serde_json::Value)>>>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let got = Arc::clone(&got);
            std::thread::spawn(move || {
                psmon_testkit::serve_http(stream, |_, body| {
                    let at = monotonic_ns();
                    if let Ok(v) = serde_json::from_slice(body) {
                        got.lock().unwrap().push((at, v));
                    }
                    psmon_testkit::OK
                })
            });
        }
    });
}

/// `kills` timed kills, 50 ms apart, while `beside(n)` runs again and
/// again on a thread of its own (until it fails): the kills' times, and
/// how many times it ran.
fn kills_beside(
    kills: usize,
    daemon: &Daemon,
    stamps: &Path,
    lines: &mut usize,
    mut beside: impl FnMut(usize) -> bool + Send + 'static,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) && beside(n) {
                n += 1;
            }
            n
        })
    };
    let mut times = Vec::with_capacity(kills);
    let timed = (0..kills).try_for_each(|_| {
        times.push(kill_and_time(daemon, stamps, lines, false, Duration::ZERO)?);
        std::thread::sleep(Duration::from_millis(50));
        anyhow::Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let ran = runner.join().unwrap_or(0);
    timed.map(|()| (times, ran))
}

/// Events queued while the receiver is down, drained when it comes up;
/// then kill → its Down event at the receiver.
fn push(psmon: &Path, dir: &Path, out: &mut String) -> anyhow::Result<()> {
    const QUEUED_KILLS: usize = 200;
    const TIMED_KILLS: usize = 50;
    let port = free_port()?;
    let (conf, stamps) = stamped_entry(
        dir,
        "push",
        &format!("PUSH_URL = http://127.0.0.1:{port}/events\nRETRY_INTERVAL = 1\n"),
    )?;
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    let mut lines = 1;
    let kill_next = |lines: &mut usize| -> anyhow::Result<(u32, u64)> {
        let pid = wait_stamp(&stamps, *lines)?.1;
        daemon.wait_up(pid, Duration::from_secs(10))?;
        let at = monotonic_ns();
        // SAFETY: kill with a pid we read and a valid signal.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        *lines += 1;
        Ok((pid, at))
    };
    for _ in 0..QUEUED_KILLS {
        kill_next(&mut lines)?;
    }
    wait_stamp(&stamps, lines)?;
    std::thread::sleep(Duration::from_millis(500));
    let queue = std::fs::read_to_string(conf.join("state/push/queue.jsonl")).unwrap_or_default();
    let queued = queue.lines().count();
    let got = Arc::new(Mutex::new(Vec::new()));
    let up_at = monotonic_ns();
    receiver(TcpListener::bind(("127.0.0.1", port))?, Arc::clone(&got));
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.lock().unwrap().len() < queued {
        ensure!(
            Instant::now() < deadline,
            "the queue did not drain in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained_at = got.lock().unwrap().last().map_or(up_at, |(t, _)| *t);
    // The first delivery waits for the next retry (up to RETRY_INTERVAL):
    // the rate is counted from the first arrival.
    let first_at = got.lock().unwrap().first().map_or(up_at, |(t, _)| *t);
    let rate = (queued.saturating_sub(1)) as f64 / ((drained_at - first_at) as f64 / 1e9);

    let mut delays = Vec::new();
    for _ in 0..TIMED_KILLS {
        let (pid, at) = kill_next(&mut lines)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            let found = got
                .lock()
                .unwrap()
                .iter()
                .find_map(|(t, e)| (e["kind"] == "down" && e["pid"] == pid).then_some(*t));
            if let Some(t) = found {
                break t;
            }
            ensure!(Instant::now() < deadline, "no Down event for {pid}");
            std::thread::sleep(Duration::from_micros(200));
        };
        delays.push(arrived.saturating_sub(at));
    }
    daemon.stop();
    kill_last(&stamps, lines);
    delays.sort_unstable();
    writeln!(
        out,
        "Event push (receiver on loopback answering 200 at once, keep-alive): {QUEUED_KILLS} kills \
         while the receiver was down queued {queued} events on disk; once it was up they were \
         delivered at **{rate:.0} events/s** (each: one POST, then the acknowledged offset \
         written and fsync'd). With the receiver up, SIGKILL → its Down event received, \
         {TIMED_KILLS} kills: median {} (p99 {}, max {}).\n",
        fmt_ns(percentile(&delays, 50.0)),
        fmt_ns(percentile(&delays, 99.0)),
        fmt_ns(*delays.last().unwrap_or(&0)),
    )?;
    Ok(())
}
