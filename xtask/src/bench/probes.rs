//! (g) Hang probes and restart groups, part of `cargo xtask bench`: how
//! long after a server freezes psmon says it hangs, against interval +
//! timeout; psmon's cost with 1,000 TCP probes a second, with how spread
//! out they start; and what a three-member group restart costs above the
//! members' own start times.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use super::support::{Daemon, compile};
use super::support::{cpu_ns, fmt_ns, percentile};

/// `probeserver PORT [LOG]`: answers `+PONG` to whatever it reads; with
/// LOG, appends the CLOCK_MONOTONIC ns of every connection accepted.
const SERVER: &str = r#"
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 64;
    FILE *log = argc > 2 ? fopen(argv[2], "a") : NULL;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) return 70;
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (log) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            fprintf(log, "%lld\n", ts.tv_sec * 1000000000LL + ts.tv_nsec);
            fflush(log);
        }
        char buf[64];
        if (read(c, buf, sizeof buf) > 0) write(c, "+PONG\r\n", 7);
        close(c);
    }
}
"#;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut got = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut got).is_ok_and(|n| n > 0)
}

/// (g) Hang probes.
pub fn probes(psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    let server = compile(dir, "probeserver", SERVER)?;
    let mut out = String::from("\n### (g) Hang probes\n\n");
    out.push_str(&detection(psmon, dir, &server)?);
    out.push_str(&thousand(psmon, dir, &server)?);
    out.push_str(&group_restart(psmon, dir, &server)?);
    Ok(out)
}

/// A group of three servers; its middle member killed 10 times. From
/// psmon's own `at_ms` (monotonic, since the restart began) on each step:
/// the stop phase, each member's start (its command run → it is Up),
/// and the hand-overs between one member ready and the next started.
fn group_restart(psmon: &Path, dir: &Path, server: &Path) -> anyhow::Result<String> {
    const ROUNDS: usize = 10;
    let conf = dir.join("conf-group");
    let bins = dir.join("group-bin");
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&bins)?;
    let mut toml = String::from("monitor_interval = 10\n");
    let mut members = Vec::new();
    for name in ["stored", "imapd", "popd"] {
        let exe = bins.join(name);
        std::fs::copy(server, &exe)?;
        let port = free_port()?;
        write!(
            toml,
            "[[entry]]\npath = \"{e}\"\nrestart = \"{e} {port} >/dev/null 2>&1 &\"\nstart_secs = 0\n",
            e = exe.display()
        )?;
        members.push((exe, port));
    }
    let names: Vec<String> = members
        .iter()
        .map(|(e, _)| format!("\"{}\"", e.display()))
        .collect();
    write!(
        toml,
        "[[group]]\nname = \"bench\"\nmembers = [{}]\nrestarts = 1000\nkill_grace = 1\n",
        names.join(", ")
    )?;
    std::fs::write(conf.join("group.toml"), toml)?;
    // The members' own start, without psmon: spawned as its restart
    // command would be, until it accepts a connection.
    let mut by_hand = Vec::new();
    for (exe, port) in &members {
        let t = Instant::now();
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{} {port} >/dev/null 2>&1 &", exe.display()))
            .status()?;
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(5),
                "{} never listened",
                exe.display()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        by_hand.push(t.elapsed().as_nanos() as u64);
        kill_all_named(exe);
    }
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    let restarted = |m: &serde_json::Value| {
        m["message"]
            .as_str()
            .is_some_and(|t| t.contains("Group 'bench': restarted in"))
    };
    // Nothing runs: psmon starts the group first.
    daemon.wait_message(restarted, Duration::from_secs(15))?;
    let (mut totals, mut stops, mut starts, mut handovers) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(300));
        let pid = pid_running(&members[1].0).with_context(|| format!("round {round}: no imapd"))?;
        // SAFETY: kill with a pid read from /proc and a valid signal.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut steps: Vec<(String, f64)> = Vec::new();
        loop {
            let m = daemon.wait_message(|m| m["group"] == "bench", Duration::from_secs(15))?;
            let text = m["message"].as_str().unwrap_or_default().to_string();
            let at = m["at_ms"].as_f64().unwrap_or(0.0);
            let done = restarted(&m);
            steps.push((text, at));
            if done {
                break;
            }
        }
        let at = |what: &str| -> Vec<f64> {
            steps
                .iter()
                .filter(|(t, _)| t.contains(what))
                .map(|(_, a)| *a)
                .collect()
        };
        let (starting, ready) = (at(": starting"), at(") ready"));
        ensure!(
            starting.len() == 3 && ready.len() == 3,
            "round {round}: {steps:?}"
        );
        let ms = |x: f64| (x * 1e6) as u64;
        totals.push(ms(*at("restarted in").last().unwrap_or(&0.0)));
        stops.push(ms(starting[0]));
        starts.push(ms((0..3).map(|i| ready[i] - starting[i]).sum()));
        handovers.push(ms((1..3).map(|i| starting[i] - ready[i - 1]).sum()));
    }
    let _ = daemon.stop();
    for (exe, _) in &members {
        kill_all_named(exe);
    }
    for v in [&mut totals, &mut stops, &mut starts, &mut handovers] {
        v.sort_unstable();
    }
    let row = |name: &str, v: &[u64]| {
        format!(
            "| {name} | {} | {} |\n",
            fmt_ns(percentile(v, 50.0)),
            fmt_ns(v.last().copied().unwrap_or(0))
        )
    };
    let hand: u64 = by_hand.iter().sum();
    Ok(format!(
        "A group of three servers (no probes: each is ready once Up); its middle member \
         killed with SIGKILL {ROUNDS} times. Times from psmon's own `at_ms` on each step \
         (monotonic, from the restart's decision). The members' own start, by hand (spawned \
         through `sh -c '… &'` until it accepts a connection): {} for the three.\n\n\
         | group restart, {ROUNDS} rounds | p50 | max |\n|---|---|---|\n{}{}{}{}\n",
        fmt_ns(hand),
        row("whole restart (decision → last member ready)", &totals),
        row(
            "stop phase (SIGTERM to popd, stored → both exits seen)",
            &stops
        ),
        row("three member starts (command run → Up), summed", &starts),
        row(
            "hand-overs (member ready → next command run), summed",
            &handovers
        ),
    ))
}

/// A process running `exe`, read from /proc.
fn pid_running(exe: &Path) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|d| {
            let pid = d.file_name().to_string_lossy().parse::<i32>().ok()?;
            (std::fs::read_link(d.path().join("exe")).ok()? == exe).then_some(pid)
        })
}

/// A send/expect probe every 1 s with a 1 s timeout; the server is frozen
/// with SIGSTOP at a random moment of the interval, 10 times.
fn detection(psmon: &Path, dir: &Path, server: &Path) -> anyhow::Result<String> {
    let conf = dir.join("conf-probe-detect");
    std::fs::create_dir_all(&conf)?;
    let port = free_port()?;
    let (interval, timeout) = (1.0, 1.0);
    std::fs::write(
        conf.join("detect.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{s}\"\nrestart = \"{s} {port} >/dev/null 2>&1 &\"\nstart_secs = 0\nretry = 1000\ngrace = 1\n\
             [entry.probe]\nkind = \"send_expect\"\naddress = \"127.0.0.1:{port}\"\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"\n\
             interval = {interval}\ntimeout = {timeout}\nstart_grace = 0\nkill_grace = 0.1\n",
            s = server.display()
        ),
    )?;
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    let mut samples = Vec::new();
    let mut rng = 0x9e37_79b9_u64;
    for round in 0..10 {
        let up = daemon
            .wait_message(
                |m| m["message"].as_str().is_some_and(|t| t.ends_with(") Up")),
                Duration::from_secs(15),
            )
            .with_context(|| format!("round {round}: the server never came Up"))?;
        let pid = up["pid"].as_u64().context("Up without a pid")? as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !answers(port) {
            ensure!(Instant::now() < deadline, "the server does not answer");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Somewhere within the probe interval.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(200 + rng % 1000));
        // SAFETY: kill with a pid psmon reported and a valid signal.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let frozen = Instant::now();
        daemon.wait_message(
            |m| m["message"].as_str().is_some_and(|t| t.contains("hung")),
            Duration::from_secs(10),
        )?;
        samples.push(frozen.elapsed().as_nanos() as u64);
    }
    let said = daemon.stop();
    drop(said);
    kill_all_named(server);
    samples.sort_unstable();
    let bound = Duration::from_secs_f64(interval + timeout).as_nanos() as u64;
    let max = *samples.last().unwrap_or(&0);
    Ok(format!(
        "A send/expect probe every {interval} s with a {timeout} s timeout; the server frozen with \
         SIGSTOP at a random moment, 10 times. A hang can only be seen once a probe started after \
         the freeze times out, so detection falls between the timeout and interval + timeout \
         ({}).\n\n| freeze → `hung` message | p50 | max | max − (interval + timeout) |\n|---|---|---|---|\n\
         | 10 freezes | {} | {} | {} |\n\n",
        fmt_ns(bound),
        fmt_ns(percentile(&samples, 50.0)),
        fmt_ns(max),
        if max > bound {
            format!("+{}", fmt_ns(max - bound))
        } else {
            format!("−{}", fmt_ns(bound - max))
        },
    ))
}

/// 1,000 entries, each probing (tcp) the same server every second.
fn thousand(psmon: &Path, dir: &Path, server: &Path) -> anyhow::Result<String> {
    const N: usize = 1000;
    let conf = dir.join("conf-probe-1000");
    let bins = dir.join("probe-bin");
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&bins)?;
    let pauser = compile(
        dir,
        "probepauser",
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )?;
    let port = free_port()?;
    let log = dir.join("accepts.log");
    let mut srv = Command::new(server)
        .arg(port.to_string())
        .arg(&log)
        .spawn()?;
    let mut toml = String::from("monitor_interval = 10\n");
    let mut children: Vec<Child> = Vec::with_capacity(N);
    for i in 0..N {
        let p = bins.join(format!("q{i:04}"));
        std::fs::hard_link(&pauser, &p)?;
        write!(
            toml,
            "[[entry]]\npath = \"{}\"\n[entry.probe]\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ninterval = 1\ntimeout = 2\nstart_grace = 0\n",
            p.display()
        )?;
        children.push(Command::new(&p).stdin(Stdio::null()).spawn()?);
    }
    std::fs::write(conf.join("many.toml"), toml)?;
    let daemon = Daemon::start(psmon, &conf, "ebpf")?;
    let mut up = 0;
    while up < N {
        daemon.wait_message(
            |m| m["message"].as_str().is_some_and(|t| t.ends_with(") Up")),
            Duration::from_secs(30),
        )?;
        up += 1;
    }
    std::thread::sleep(Duration::from_secs(3));
    let cpu0 = cpu_ns(daemon.pid())?;
    let t0 = Instant::now();
    let first_line = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_ns(daemon.pid())? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let accepts: Vec<u64> = std::fs::read_to_string(&log)?
        .lines()
        .skip(first_line)
        .filter_map(|l| l.parse().ok())
        .collect();
    let _ = daemon.stop();
    let _ = srv.kill();
    let _ = srv.wait();
    for c in &mut children {
        let _ = c.kill();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    // Each second's burst: from its first connection to its last.
    let mut spreads = Vec::new();
    for burst in accepts.chunk_by(|a, b| b.saturating_sub(*a) < 200_000_000) {
        if burst.len() > N / 2 {
            spreads.push(burst[burst.len() - 1] - burst[0]);
        }
    }
    spreads.sort_unstable();
    Ok(format!(
        "{N} entries, each with a tcp probe every 1 s (all to one server, which logs when it \
         accepts each connection); psmon's CPU over 10 s (schedstat), and how long each second's \
         burst of {N} probes takes from its first connection to its last.\n\n\
         | probes/s | psmon CPU | connections in 10 s | burst spread p50 | max |\n|---|---|---|---|---|\n\
         | {N} | {cpu:.1} % | {} | {} | {} |\n\n",
        accepts.len(),
        fmt_ns(percentile(&spreads, 50.0)),
        fmt_ns(spreads.last().copied().unwrap_or(0)),
    ))
}

/// Kills every process running `exe`.
fn kill_all_named(exe: &Path) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for d in dir.filter_map(Result::ok) {
        if std::fs::read_link(d.path().join("exe")).is_ok_and(|p| p == exe)
            && let Ok(pid) = d.file_name().to_string_lossy().parse::<i32>()
        {
            // SAFETY: kill with a pid read from /proc and a valid signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
