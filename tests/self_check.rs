//! The event source's self-check, end to end: a running psmon whose source
//! goes deaf (its BPF programs detached, its netlink socket out of the
//! proc connector's group, through the test build's hidden `fault`
//! request) misses its canaries, rescans, and is given a source that hears
//! — a reopened one, or the next one — returning to the better one once
//! it hears again. A death of a process psmon knows is seen through its
//! pidfd whatever the source (a victim killed while the source is deaf is
//! restarted); a process that appears while the source is deaf is found
//! by the rescan a miss triggers (MONITOR_INTERVAL is an hour here, so no
//! other scan could find it). The canaries never show in `psmon trace`.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use support::*;

struct World {
    dir: TempDir,
    victim: PathBuf,
    /// A report-only entry's program, started by hand.
    lone: PathBuf,
    port: u16,
}

impl World {
    fn new(tag: &str) -> World {
        let dir = TempDir::new(tag);
        let conf = dir.0.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let victim = victim_copy(&dir.0, "canaried");
        let port = free_port();
        std::fs::write(
            conf.join("psagent.conf"),
            format!("SELF_CHECK_INTERVAL = 1\nRETRY_INTERVAL = 1\nHEARTBEAT_PORT = {port}\n"),
        )
        .unwrap();
        // Only events or a self-check's rescan can find a death within the hour.
        std::fs::write(
            conf.join("pfile_canaried"),
            format!(
                "##### PARAM #####\nMONITOR_INTERVAL = 3600\n##### PENT #####\n{v} : {v} sleep >/dev/null 2>&1 & : 0 : 100 : continue\n",
                v = victim.display()
            ),
        )
        .unwrap();
        // Report only: nothing restarts it, only seeing it start makes it Up.
        let lone = victim_copy(&dir.0, "loner");
        std::fs::write(
            conf.join("lone.toml"),
            format!(
                "monitor_interval = 3600\n[[entry]]\npath = \"{}\"\n",
                lone.display()
            ),
        )
        .unwrap();
        World {
            dir,
            victim,
            lone,
            port,
        }
    }

    /// Starts the report-only program and waits until psmon has it Up.
    fn start_lone(&self, psmon: &mut Psmon) -> u32 {
        let pid = reap_later(spawn_fresh(Command::new(&self.lone).arg("sleep")));
        psmon.wait_for("Up", |m| m["pid"] == pid && is_up(m));
        pid
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    /// A victim, then psmon on `source`, which has found it Up.
    fn start(&self, source: &str) -> (Child, Psmon) {
        let victim = Command::new(&self.victim).arg("sleep").spawn().unwrap();
        let mut psmon = Psmon::start(&self.conf(), source);
        psmon.wait_for("Up", |m| m["pid"] == victim.id() && is_up(m));
        (victim, psmon)
    }

    /// The hidden request of test builds: these sources go deaf (the
    /// running one has, when the reply comes).
    fn deafen(&self, kinds: &[&str], sticky: bool) {
        let reply = ask(
            &socket_in(&self.dir.0),
            json!({"v": 1, "cmd": "fault", "deaf": kinds, "sticky": sticky}),
        );
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["result"]["went_deaf"], json!(kinds), "{reply}");
    }

    fn metric(&self, name: &str, source: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let body = ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let wanted = format!("{name}{{source=\"{source}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&wanted))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {wanted:?} in /metrics:\n{body}"))
    }

    /// Kills the running victim and waits until psmon has said it Down
    /// and brought another one up; returns the new one's pid.
    fn kill_and_see_back(&self, psmon: &mut Psmon) -> u32 {
        let pids = pids_of(&self.victim);
        assert_eq!(pids.len(), 1, "one victim runs: {pids:?}");
        kill9_pid(pids[0]);
        psmon.wait_for("Down", |m| m["pid"] == pids[0]);
        let up = psmon.wait_for("Up", |m| m["pid"] != pids[0] && is_up(m));
        up["pid"].as_u64().unwrap() as u32
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_all(&self.victim);
        kill_all(&self.lone);
    }
}

/// Whether `m` says a process is Up (not "started; Up once …").
fn is_up(m: &Value) -> bool {
    m["message"].as_str().is_some_and(|s| s.ends_with(") Up"))
}

/// Whether psmon has said `text` already.
fn said(psmon: &Psmon, text: &str) -> bool {
    psmon
        .seen
        .iter()
        .any(|m| m["message"].as_str().is_some_and(|s| s.contains(text)))
}

/// Waits for `text` unless psmon has said it already.
fn said_or_wait(psmon: &mut Psmon, text: &str) {
    if !said(psmon, text) {
        psmon.wait(text);
    }
}

fn ask(socket: &Path, request: Value) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    writeln!(s, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn a_deaf_ebpf_source_falls_back_to_netlink_and_returns_when_it_hears() {
    let world = World::new("deaf-ebpf");
    let (victim, mut psmon) = world.start("auto");
    let _reaped = reap_later(victim);
    said_or_wait(&mut psmon, "watching process events with the ebpf source");
    let lone = world.start_lone(&mut psmon);
    // Every ebpf source from now on, reopened ones too, hears nothing.
    world.deafen(&["ebpf"], true);
    // Nothing hears it end (its pidfd does) nor start again: the rescan
    // after the first missed canary finds it.
    kill9_pid(lone);
    psmon.wait_for("Down", |m| m["pid"] == lone);
    let again = world.start_lone(&mut psmon);
    let missed = psmon
        .seen
        .iter()
        .position(|m| {
            m["message"]
                .as_str()
                .is_some_and(|s| s.contains("missed its self-check"))
        })
        .unwrap_or_else(|| panic!("found only after a missed self-check: {:#?}", psmon.seen));
    let up = psmon
        .seen
        .iter()
        .position(|m| m["pid"] == again && is_up(m))
        .unwrap();
    assert!(missed < up, "{:#?}", psmon.seen);
    // A death of a known process is seen through its pidfd: restarted.
    world.kill_and_see_back(&mut psmon);
    psmon.wait("event source ebpf missed 3 self-checks in a row");
    let fallback = psmon.wait("falling back to netlink");
    let said = fallback["message"].as_str().unwrap();
    assert!(
        said.contains("ebpf: missed its self-check too"),
        "the reopened ebpf source was tried first: {said}"
    );
    psmon.wait("watching process events with the netlink source");
    assert!(world.metric("psmon_source_self_check_failures_total", "ebpf") >= 3.0);
    // Heard again: by events, at once.
    world.kill_and_see_back(&mut psmon);
    assert!(world.metric("psmon_source_self_checks_passed_total", "netlink") >= 1.0);
    // The fault gone, psmon goes back to the better source.
    world.deafen(&[], false);
    psmon.wait("the ebpf source passes its self-check again; leaving netlink");
    psmon.wait("watching process events with the ebpf source");
    world.kill_and_see_back(&mut psmon);
    let victim = world.victim.display().to_string();
    let ups = psmon
        .seen
        .iter()
        .filter(|m| is_up(m) && m["path"] == victim.as_str())
        .count();
    assert_eq!(ups, 4, "the first Up and one per kill");
    assert_eq!(pids_of(&world.victim).len(), 1, "never two victims");
}

#[test]
fn a_deaf_netlink_source_is_reopened() {
    let world = World::new("deaf-netlink");
    let (victim, mut psmon) = world.start("netlink");
    let _reaped = reap_later(victim);
    said_or_wait(
        &mut psmon,
        "watching process events with the netlink source",
    );
    let lone = world.start_lone(&mut psmon);
    // Only the socket open now: a reopened one hears.
    world.deafen(&["netlink"], false);
    kill9_pid(lone);
    psmon.wait_for("Down", |m| m["pid"] == lone);
    // Started while nothing hears: found by the rescan after a miss.
    let again = reap_later(spawn_fresh(Command::new(&world.lone).arg("sleep")));
    psmon.wait("event source netlink missed its self-check");
    psmon.wait_for("Up", |m| m["pid"] == again && is_up(m));
    world.kill_and_see_back(&mut psmon);
    psmon.wait("event source netlink missed 3 self-checks in a row");
    psmon.wait("the netlink source missed 3 self-checks in a row: reopened, and the new one passed its self-check");
    psmon.wait("watching process events with the netlink source");
    world.kill_and_see_back(&mut psmon);
    assert!(world.metric("psmon_source_self_check_failures_total", "netlink") >= 3.0);
    for other in ["ebpf", "poll"] {
        assert!(
            !said(
                &psmon,
                &format!("watching process events with the {other} source")
            ),
            "--source netlink is never replaced by another source"
        );
    }
}

#[test]
fn canaries_are_never_shown_by_trace_nor_counted_as_anything() {
    for source in ["ebpf", "netlink"] {
        let world = World::new(&format!("trace-beside-{source}"));
        let (victim, mut psmon) = world.start(source);
        let _reaped = reap_later(victim);
        // A trace of the whole host, beside psmon's self-checks every second.
        let trace = Command::new(env!("CARGO_BIN_EXE_psmon"))
            .args(["trace", "--source", source, "--duration", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&trace.stdout);
        assert!(trace.status.success());
        let passed = world.metric("psmon_source_self_checks_passed_total", source);
        assert!(passed >= 3.0, "{source}: {passed} self-checks in 4 s");
        assert!(
            !shown.contains("psmon-canary"),
            "{source}: a canary in the trace:\n{shown}"
        );
        // Nobody's instance, no flight record, no message at all of them.
        let said = psmon.collect(Duration::from_millis(200));
        assert!(
            !psmon
                .seen
                .iter()
                .chain(&said)
                .any(|m| m.to_string().contains("psmon-canary")),
            "{source}: {said:?}"
        );
    }
}
