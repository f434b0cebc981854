//! Restart groups end to end: three real servers that depend on each
//! other, started by psmon in order, a killed middle member bringing the
//! whole group down in reverse and up again in order, a member that cannot
//! start, and the group's retry-over switching once.

mod support;

use std::{path::PathBuf, time::Duration};

use support::*;

/// Three members `stored`, `imapd`, `popd` (copies of the victim) serving
/// free ports; each restart command records "NAME NANOSECONDS" in
/// `starts` and starts its server in the background.
struct Store {
    dir: TempDir,
    victims: Vec<PathBuf>,
    ports: Vec<u16>,
}

const NAMES: [&str; 3] = ["stored", "imapd", "popd"];

impl Store {
    /// `extra[i]`: more TOML for member i's entry; `restart[i]`: its
    /// command, or None for the recorded start of its server;
    /// `listen_after[i]`: how long its server takes to listen.
    fn new(tag: &str, group: &str, extra: [&str; 3], restart: [Option<&str>; 3]) -> Store {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let mut toml = String::from("monitor_interval = 1\n");
        let mut victims = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let victim = victim_copy(&dir.0, NAMES[i]);
            let port = free_port();
            let listen_after = if i == 1 { 400 } else { 0 };
            let command = restart[i].map(str::to_string).unwrap_or_else(|| {
                format!(
                    "echo {} $(date +%s%N) >> {starts}; {} serve {port} +OK 0 {listen_after} >/dev/null 2>&1 &",
                    NAMES[i],
                    victim.display(),
                    starts = dir.0.join("starts").display(),
                )
            });
            toml.push_str(&format!(
                "[[entry]]\npath = \"{}\"\nrestart = \"{command}\"\nstart_secs = 0\n{}\n",
                victim.display(),
                extra[i].replace("PORT", &port.to_string()),
            ));
            victims.push(victim);
            ports.push(port);
        }
        let members: Vec<String> = victims
            .iter()
            .map(|v| format!("\"{}\"", v.display()))
            .collect();
        toml.push_str(&format!(
            "[[group]]\nname = \"store\"\nmembers = [{}]\nkill_grace = 1\n{group}\n",
            members.join(", ")
        ));
        std::fs::write(dir.0.join("conf/store.toml"), toml).unwrap();
        Store {
            dir,
            victims,
            ports,
        }
    }

    fn psmon(&self) -> Psmon {
        let source = if is_root() { "ebpf" } else { "poll" };
        Psmon::start(&self.dir.0.join("conf"), source)
    }

    /// The recorded starts: (member name, realtime ns), in order.
    fn starts(&self) -> Vec<(String, u128)> {
        std::fs::read_to_string(self.dir.0.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (name, ns) = l.split_once(' ').unwrap();
                (name.to_string(), ns.parse().unwrap())
            })
            .collect()
    }

    /// Each member's server accepts a connection (a member without a
    /// probe is ready when it runs, and may listen a moment later).
    fn all_answer(&self) {
        for port in &self.ports {
            let answered = (0..200).any(|_| {
                let ok = std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(10));
                }
                ok
            });
            assert!(answered, "nothing listens on {port}");
        }
    }

    fn names(&self) -> Vec<String> {
        self.starts().into_iter().map(|(n, _)| n).collect()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for v in &self.victims {
            kill_all(v);
        }
    }
}

fn group_messages(psmon: &Psmon) -> Vec<String> {
    psmon
        .seen
        .iter()
        .filter_map(|m| m["message"].as_str())
        .filter(|m| m.starts_with("Group 'store'"))
        .map(str::to_string)
        .collect()
}

/// The middle member (`imapd`) answers a TCP probe only 400 ms after it
/// starts: `popd` must not start before.
const IMAPD_PROBE: &str =
    "[entry.probe]\nkind = \"tcp\"\naddress = \"127.0.0.1:PORT\"\ninterval = 5\n";

#[test]
fn a_group_starts_in_order_and_a_killed_member_restarts_it_in_reverse_then_in_order() {
    let store = Store::new("group-order", "", ["", IMAPD_PROBE, ""], [None; 3]);
    let mut psmon = store.psmon();
    // Nothing runs: psmon brings the group up, in order.
    psmon.wait("Group 'store': restarted in");
    assert_eq!(store.names(), NAMES);
    let starts = store.starts();
    let gap = |a: usize, b: usize| (starts[b].1 - starts[a].1) / 1_000_000;
    assert!(
        gap(1, 2) >= 400,
        "popd started {} ms after imapd, before imapd answered",
        gap(1, 2)
    );
    // Each server answers.
    store.all_answer();
    // Settle: every member Up.
    std::thread::sleep(Duration::from_millis(300));
    let pids: Vec<u32> = store
        .victims
        .iter()
        .map(|v| *pids_of(v).first().expect("member runs"))
        .collect();

    kill9_pid(pids[1]);
    let restarting = psmon.wait("Group 'store': restarting");
    assert!(
        restarting["message"].as_str().unwrap().contains("imapd"),
        "{restarting}"
    );
    let done = psmon.wait("Group 'store': restarted in");
    let messages = group_messages(&psmon);
    let from = messages
        .iter()
        .rposition(|m| m.contains("restarting"))
        .unwrap();
    let sequence: Vec<&str> = messages[from + 1..]
        .iter()
        .map(|m| m.trim_start_matches("Group 'store': "))
        .collect();
    let name = |m: &str| NAMES.iter().find(|n| m.contains(*n)).copied();
    let steps: Vec<(String, &str)> = sequence
        .iter()
        .filter_map(|m| {
            let verb = m.split_whitespace().next()?;
            let verb = if m.ends_with("ready") { "ready" } else { verb };
            Some((verb.to_string(), name(m).unwrap_or("-")))
        })
        .collect();
    let expected = [
        ("stopping", "popd"),
        ("stopping", "stored"),
        ("starting", "stored"),
        ("ready", "stored"),
        ("starting", "imapd"),
        ("ready", "imapd"),
        ("starting", "popd"),
        ("ready", "popd"),
        ("restarted", "-"),
    ];
    let steps: Vec<(&str, &str)> = steps.iter().map(|(v, n)| (v.as_str(), *n)).collect();
    assert_eq!(steps, expected, "{messages:#?}");
    assert!(done["elapsed_ms"].as_f64().unwrap() >= 400.0, "{done}");
    assert_eq!(store.names()[3..], NAMES);
    let starts = store.starts();
    assert!(
        (starts[5].1 - starts[4].1) / 1_000_000 >= 400,
        "popd started before imapd answered: {starts:?}"
    );
    // The killed member's own Down is reported; the others, stopped by
    // their group, are not Down (the one before is the start-up's).
    let downs: Vec<&serde_json::Value> = psmon
        .seen
        .iter()
        .filter(|m| m["message"].as_str().is_some_and(|m| m.contains("] Down")))
        .filter(|m| !m["pid"].is_null())
        .collect();
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert_eq!(downs[0]["pid"], pids[1]);
    // `psmon status` shows the group and its budget spent so far.
    let out = isolate(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_psmon")),
        &store.dir.0,
    )
    .args(["status", "--json"])
    .output()
    .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = &status["groups"][0];
    assert_eq!(group["name"], "store", "{status}");
    assert_eq!(group["state"], "watching");
    assert_eq!(
        group["restarts"], 1,
        "the kill (start-up is not counted): {group}"
    );
    assert_eq!(group["allowed"], 2);
    assert!(
        status["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["group"] == "store" && e["state"] == "up"),
        "{status}"
    );
    assert_eq!(
        status["entries"][1]["probe"]["ok"], true,
        "imapd's probe answered: {status}"
    );
    // And the old processes are gone, the new ones answer.
    for (v, old) in store.victims.iter().zip(&pids) {
        let now = pids_of(v);
        assert_eq!(now.len(), 1, "{}: {now:?}", v.display());
        assert_ne!(now[0], *old);
    }
    store.all_answer();
}

/// `imapd` cannot start (its command fails): `popd` is never started and
/// each attempt fails. The bring-up at start-up is not counted; its
/// failure is the first, the two failed restarts the second and third:
/// the third within the window runs the switch command, once.
#[test]
fn a_member_that_cannot_start_stops_the_sequence_and_retry_over_switches_once() {
    let dir_marker = "SWITCHED";
    let store = Store::new(
        "group-fail",
        "restarts = 2\nwindow = 600\naction = \"switch\"\n",
        ["", "", ""],
        [None, Some("echo cannot start >&2; exit 3"), None],
    );
    let switched = store.dir.0.join("switched");
    // A health queue and dump: the group's retry over goes there too.
    let dump = store.dir.0.join("dump");
    let toml_file = store.dir.0.join("conf/store.toml");
    let toml = std::fs::read_to_string(&toml_file).unwrap();
    std::fs::write(
        &toml_file,
        format!(
            "ipckey = {}\nshm_dump_file = \"{}\"\n{toml}",
            0x7d00_0000u32 + std::process::id() % 0x10000,
            dump.display()
        ),
    )
    .unwrap();
    std::fs::write(
        store.dir.0.join("conf/psagent.conf"),
        format!(
            "FAILOVER_COMMAND = echo {dir_marker} >> {}\n",
            switched.display()
        ),
    )
    .unwrap();
    let mut psmon = store.psmon();
    psmon.wait("Group 'store': retry over");
    let failed: Vec<String> = group_messages(&psmon)
        .into_iter()
        .filter(|m| m.contains("did not start"))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(
        failed[0].contains("imapd") && failed[0].contains("not started: '"),
        "{failed:?}"
    );
    assert!(failed[0].contains("popd"), "{failed:?}");
    psmon.wait("failover command");
    // Nothing more comes of it.
    psmon.collect(Duration::from_millis(1500));
    assert!(
        !store.names().iter().any(|n| n == "popd"),
        "popd was started: {:?}",
        store.names()
    );
    assert_eq!(store.names(), ["stored", "stored", "stored"]);
    let lines = std::fs::read_to_string(&switched).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        [dir_marker],
        "switch exactly once"
    );
    let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
    assert!(
        dumped.contains("Group 'store': retry over"),
        "the dump has the group's retry over: {dumped}"
    );
}

/// A notify member is ready when it says READY=1: `imapd` says so 400 ms
/// after it starts, and `popd` is not started before.
#[test]
fn a_notify_member_that_is_ready_late_delays_the_next() {
    let probe = "[entry.probe]\nkind = \"notify\"\ntimeout = 5\n";
    let dir_probe = Store::new("group-notify", "", ["", probe, ""], [None; 3]);
    // imapd's own command: a notify service, recorded like the others.
    let imapd = &dir_probe.victims[1];
    let command = format!(
        "echo imapd $(date +%s%N) >> {}; {} notify 400 -1 >/dev/null 2>&1 &",
        dir_probe.dir.0.join("starts").display(),
        imapd.display()
    );
    let file = dir_probe.dir.0.join("conf/store.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    let start = toml.find(&format!("{} serve", imapd.display())).unwrap();
    let line_start = toml[..start].rfind("restart = \"").unwrap();
    let line_end = start + toml[start..].find('\n').unwrap();
    let toml = format!(
        "{}restart = \"{command}\"{}",
        &toml[..line_start],
        &toml[line_end..]
    );
    std::fs::write(&file, toml).unwrap();
    let mut psmon = dir_probe.psmon();
    psmon.wait("Group 'store': restarted in");
    assert_eq!(dir_probe.names(), NAMES);
    let starts = dir_probe.starts();
    let gap = (starts[2].1 - starts[1].1) / 1_000_000;
    assert!(
        gap >= 400,
        "popd started {gap} ms after imapd, before READY=1"
    );
    let ready = psmon
        .seen
        .iter()
        .find(|m| {
            m["message"]
                .as_str()
                .is_some_and(|t| t.contains("imapd") && t.ends_with("ready"))
        })
        .cloned()
        .unwrap();
    assert!(ready["pid"].is_u64(), "{ready}");
}
