//! Hang probes end to end: a real TCP server frozen with SIGSTOP, a slow
//! one, one that answers the wrong thing. psmon probes it, judges it, kills
//! what hangs and restarts it.

mod support;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use support::*;

/// A test's directory, a victim serving a free port with `reply` after
/// `delay_ms`, and a TOML entry probing it with `probe(port)` (the
/// `[entry.probe]` keys).
struct Served {
    dir: TempDir,
    victim: PathBuf,
    port: u16,
}

impl Served {
    fn new(tag: &str, reply: &str, delay_ms: u32, probe: impl Fn(u16) -> String) -> Served {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let victim = victim_copy(&dir.0, "served");
        let port = free_port();
        let serve = format!("{} serve {port} {reply} {delay_ms}", victim.display());
        std::fs::write(
            dir.0.join("conf/app.toml"),
            format!(
                "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"{serve} >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\n{probe}\n",
                victim.display(),
                probe = probe(port),
            ),
        )
        .unwrap();
        let served = Served { dir, victim, port };
        let child = spawn_fresh(Command::new(&served.victim).args([
            "serve",
            &port.to_string(),
            reply,
            &delay_ms.to_string(),
        ]));
        reap_later(child);
        served.answers(); // listening
        served
    }

    /// What the server says to a PING, waiting for it to listen.
    fn answers(&self) -> String {
        for _ in 0..200 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"PING\r\n").unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                return answer;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nothing listens on port {}", self.port);
    }

    fn psmon(&self) -> Psmon {
        let source = if is_root() { "ebpf" } else { "poll" };
        Psmon::start(&self.dir.0.join("conf"), source)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_all(&self.victim);
    }
}

fn send_expect(port: u16, extra: &str) -> String {
    format!(
        "kind = \"send_expect\"\naddress = \"127.0.0.1:{port}\"\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"\n{extra}"
    )
}

/// Frozen (SIGSTOP), a server still accepts connections but never
/// answers: hung within interval + timeout, killed (TERM, then KILL: a
/// stopped process does not act on TERM), Down for a hang, restarted, and
/// answering again.
#[test]
fn a_frozen_server_is_hung_killed_and_restarted() {
    let served = Served::new("probe-frozen", "+PONG", 0, |port| {
        send_expect(
            port,
            "interval = 0.2\ntimeout = 0.5\nstart_grace = 0\nkill_grace = 0.3\n",
        )
    });
    let mut psmon = served.psmon();
    let up = psmon.wait(") Up");
    let pid = up["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let hung = psmon.wait("hung");
    assert_eq!(hung["pid"], pid);
    assert!(
        hung["message"]
            .as_str()
            .unwrap()
            .contains("no answer in 0.5 s"),
        "{hung}"
    );
    let down = psmon.wait("Down");
    assert_eq!(down["pid"], pid);
    assert_eq!(down["reason"], "hang", "{down}");
    assert_eq!(
        down["signal"], 9,
        "TERM does not reach a stopped process: {down}"
    );
    psmon.wait_for(") Up", |m| m["pid"] != pid);
    assert_eq!(served.answers().trim(), "+PONG");
}

/// Slow but answering: a warning, nothing killed.
#[test]
fn a_slow_answer_is_a_warning_only() {
    let served = Served::new("probe-slow", "+PONG", 300, |port| {
        send_expect(
            port,
            "interval = 0.3\nwarn = 0.1\ntimeout = 3\nstart_grace = 0\n",
        )
    });
    let mut psmon = served.psmon();
    let up = psmon.wait(") Up");
    let slow = psmon.wait("slow");
    assert_eq!(slow["pid"], up["pid"]);
    assert!(slow["probe_ms"].as_f64().unwrap() >= 300.0, "{slow}");
    let after = psmon.collect(Duration::from_millis(1500));
    assert!(
        !after.iter().any(|m| m["message"]
            .as_str()
            .is_some_and(|t| t.contains("hung") || t.contains("Down"))),
        "{after:#?}"
    );
}

/// The wrong banner is no answer: hung.
#[test]
fn a_wrong_answer_is_hung() {
    let served = Served::new("probe-wrong", "-ERR", 0, |port| {
        send_expect(
            port,
            "interval = 0.2\ntimeout = 2\nstart_grace = 0\nkill_grace = 0.2\n",
        )
    });
    let mut psmon = served.psmon();
    psmon.wait(") Up");
    let hung = psmon.wait("hung");
    assert!(hung["why"].as_str().unwrap().contains("\"-ERR\""), "{hung}");
    let down = psmon.wait("Down");
    assert_eq!(down["reason"], "hang");
}

/// A Unix-socket probe: the server still runs, but its socket is gone
/// (removed by a careless cleanup): hung, killed, restarted, and the
/// restarted server's socket answers.
#[test]
fn a_server_whose_socket_is_gone_is_hung() {
    let dir = TempDir::new("probe-unix");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let victim = victim_copy(&dir.0, "unixserved");
    let socket = dir.0.join("app.sock");
    let serve = format!("{} serve-unix {}", victim.display(), socket.display());
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"{serve} >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"unix\"\npath = \"{}\"\ninterval = 0.2\ntimeout = 1\nstart_grace = 0\nkill_grace = 0.2\n",
            victim.display(),
            socket.display()
        ),
    )
    .unwrap();
    reap_later(spawn_fresh(
        Command::new(&victim).arg("serve-unix").arg(&socket),
    ));
    let listening = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !listening() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let source = if is_root() { "ebpf" } else { "poll" };
    let mut psmon = Psmon::start(&dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    std::fs::remove_file(&socket).unwrap();
    let hung = psmon.wait("hung");
    assert_eq!(hung["pid"], up["pid"]);
    let down = psmon.wait("Down");
    assert_eq!(down["reason"], "hang", "{down}");
    psmon.wait_for(") Up", |m| m["pid"] != up["pid"]);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !listening() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted server has no socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(psmon); // else it restarts what is killed next
    kill_all(&victim);
}

/// An HTTP probe: a server answering 200 is left alone; one answering 500
/// hangs, is killed and restarted.
#[test]
fn an_http_probe_judges_the_status() {
    let dir = TempDir::new("probe-http");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let good = victim_copy(&dir.0, "httpgood");
    let bad = victim_copy(&dir.0, "httpbad");
    let (good_port, bad_port) = (free_port(), free_port());
    let entry = |exe: &std::path::Path, port: u16, status: u16| {
        let serve = format!("{} serve-http {port} {status}", exe.display());
        format!(
            "[[entry]]\npath = \"{}\"\nrestart = \"{serve} >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/health\"\ninterval = 0.2\ntimeout = 2\nstart_grace = 0\nkill_grace = 0.2\n",
            exe.display()
        )
    };
    std::fs::write(
        dir.0.join("conf/web.toml"),
        format!(
            "monitor_interval = 1\n{}{}",
            entry(&good, good_port, 200),
            entry(&bad, bad_port, 500)
        ),
    )
    .unwrap();
    for (exe, port, status) in [(&good, good_port, 200), (&bad, bad_port, 500)] {
        reap_later(spawn_fresh(Command::new(exe).args([
            "serve-http",
            &port.to_string(),
            &status.to_string(),
        ])));
    }
    let source = if is_root() { "ebpf" } else { "poll" };
    let mut psmon = Psmon::start(&dir.0.join("conf"), source);
    let hung = psmon.wait("hung");
    assert_eq!(hung["path"], bad.to_str().unwrap(), "{hung}");
    assert!(hung["why"].as_str().unwrap().contains("HTTP 500"), "{hung}");
    let down = psmon.wait("Down");
    assert_eq!(down["reason"], "hang");
    let later = psmon.collect(Duration::from_millis(1000));
    assert!(
        !later
            .iter()
            .chain(psmon.seen.iter())
            .any(|m| m["path"] == good.to_str().unwrap()
                && m["message"].as_str().is_some_and(|t| t.contains("hung"))),
        "the 200 server is fine"
    );
    drop(psmon); // else it restarts what is killed next
    kill_all(&good);
    kill_all(&bad);
}

/// A notify service: psmon starts it with a `NOTIFY_SOCKET` and
/// `WATCHDOG_USEC`. One that keeps sending WATCHDOG=1 is left alone; one
/// that stops after three keep-alives is hung once its timeout passes
/// without one, killed and started again.
#[test]
fn a_notify_service_that_stops_its_keepalives_is_hung() {
    let dir = TempDir::new("probe-notify");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let steady = victim_copy(&dir.0, "steady");
    let stopper = victim_copy(&dir.0, "stopper");
    let entry = |exe: &std::path::Path, beats: i32| {
        format!(
            "[[entry]]\npath = \"{exe}\"\nrestart = \"{exe} notify 0 {beats} >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"notify\"\ntimeout = 0.6\nstart_grace = 0\nkill_grace = 0.2\n",
            exe = exe.display()
        )
    };
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n{}{}",
            entry(&steady, -1),
            entry(&stopper, 3)
        ),
    )
    .unwrap();
    let source = if is_root() { "ebpf" } else { "poll" };
    let mut psmon = Psmon::start(&dir.0.join("conf"), source);
    // Nothing runs yet: both are started by psmon, with the socket.
    let first = psmon.wait_for(") Up", |m| m["path"] == stopper.to_str().unwrap());
    let up_at = std::time::Instant::now();
    let hung = psmon.wait("hung");
    let lived = up_at.elapsed();
    assert_eq!(hung["path"], stopper.to_str().unwrap(), "{hung}");
    assert_eq!(hung["pid"], first["pid"]);
    assert!(
        hung["why"].as_str().unwrap().contains("WATCHDOG=1"),
        "{hung}"
    );
    // Three keep-alives every 0.3 s kept it alive past 0.6 s.
    assert!(lived >= Duration::from_millis(800), "hung after {lived:?}");
    let down = psmon.wait_for("Down", |m| m["path"] == stopper.to_str().unwrap());
    assert_eq!(down["reason"], "hang", "{down}");
    psmon.wait_for(") Up", |m| {
        m["path"] == stopper.to_str().unwrap() && m["pid"] != first["pid"]
    });
    psmon.collect(Duration::from_millis(1000));
    assert!(
        !psmon
            .seen
            .iter()
            .any(|m| m["path"] == steady.to_str().unwrap()
                && m["message"].as_str().is_some_and(|t| t.contains("hung"))),
        "the steady one keeps its keep-alives"
    );
    drop(psmon); // else it restarts what is killed next
    kill_all(&steady);
    kill_all(&stopper);
}

/// A stranger allowed to send to a notify socket (root: this test)
/// flooding it with WATCHDOG=1 keeps nothing alive — a service that said
/// READY=1 and then went silent is still hung on time — and psmon still
/// answers meanwhile.
#[test]
fn a_strangers_keepalives_do_not_count() {
    let dir = TempDir::new("probe-notify-flood");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let quiet = victim_copy(&dir.0, "quietd");
    let socket_file = dir.0.join("socket");
    std::fs::write(
        dir.0.join("conf/app.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{q}\"\nrestart = \"echo $NOTIFY_SOCKET > {s}; {q} notify 0 0 >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"notify\"\ntimeout = 1\nstart_grace = 0\nkill_grace = 0.2\n",
            q = quiet.display(),
            s = socket_file.display()
        ),
    )
    .unwrap();
    let source = if is_root() { "ebpf" } else { "poll" };
    let mut psmon = Psmon::start(&dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    let name = std::fs::read_to_string(&socket_file).unwrap();
    let addr = std::os::unix::net::SocketAddr::from_pathname(name.trim()).unwrap();
    let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let flood = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        let mut sent = 0u64;
        while std::time::Instant::now() < until {
            if stranger.send_to_addr(b"READY=1\nWATCHDOG=1", &addr).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let hung = psmon.wait("hung");
    assert_eq!(hung["pid"], up["pid"], "{hung}");
    assert!(flood.join().unwrap() > 1000, "the flood was sent");
    let out = isolate(&mut Command::new(env!("CARGO_BIN_EXE_psmon")), &dir.0)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "psmon still answers: {out:?}");
    drop(psmon);
    kill_all(&quiet);
}
