//! (g) Hang probes, part of `cargo xtask bench`: how long after a server
//! freezes psmon says it hangs, against interval + timeout; and psmon's
//! cost with 1,000 TCP probes a second, with how spread out they start.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::bench::{cpu_ns, fmt_ns, percentile};
use crate::bench_monitor::{Daemon, compile};

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
    Ok(out)
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
