//! Failover that a cluster acts on: a real two-node Pacemaker (Corosync
//! and Pacemaker from Debian, the nodes in network namespaces, built by
//! tests/pacemaker/cluster.sh), the OCF agent that lets Pacemaker run
//! psmon, and the CLUSTERPRO driver against a stand-in `clpgrp` (there is
//! no CLUSTERPRO here: the stand-in records its arguments and answers the
//! way the product's reference describes; it is not the product).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Psmon, TempDir, kill_all, needs, needs_root, socket_in, spawn_fresh, victim_copy};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/pacemaker/cluster.sh");
const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/ocf/psmon");
const PSMON: &str = env!("CARGO_BIN_EXE_psmon");

/// Pacemaker's tools are installed (.ci/run installs them; CI never skips).
fn has_pacemaker() -> bool {
    if !needs_root("a Pacemaker cluster") {
        return false;
    }
    needs("/usr/sbin/pacemakerd", "pacemaker and corosync")
        && needs("/usr/sbin/crm_resource", "pacemaker-cli-utils")
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A configuration directory with one `switch` entry whose restart
/// command fails, so that one kill is a retry over.
struct Setup {
    dir: TempDir,
    victim: PathBuf,
}

impl Setup {
    fn new(tag: &str, agent: &str) -> Setup {
        // Under /tmp: Pacemaker's users must reach the cluster's files too.
        let dir = TempDir::new_in(Path::new("/tmp"), tag);
        let conf = dir.0.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let victim = victim_copy(&dir.0, &format!("{tag}d"));
        std::fs::write(
            conf.join("app.toml"),
            format!(
                "[[entry]]\npath = \"{}\"\nrestart = \"exit 1\"\nretry = 1\ngrace = 86400\naction = \"switch\"\n",
                victim.display()
            ),
        )
        .unwrap();
        std::fs::write(conf.join("psagent.conf"), agent).unwrap();
        Setup { dir, victim }
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    /// Starts the victim and psmon (through `wrapper`), and waits until it is Up.
    fn watch(&self, wrapper: &[&str]) -> (u32, Psmon) {
        let victim = spawn_fresh(Command::new(&self.victim).arg("sleep"));
        let pid = support::reap_later(victim);
        let mut psmon = Psmon::start_in(wrapper, &self.conf(), "auto");
        psmon.wait_for("Up", |m| m["pid"] == pid);
        (pid, psmon)
    }

    fn status(&self) -> Value {
        let out = run(Command::new(PSMON)
            .env("PSMON_SOCKET", socket_in(&self.dir.0))
            .args(["status", "--json"]));
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn client(&self, args: &[&str]) -> Output {
        run(Command::new(PSMON)
            .env("PSMON_SOCKET", socket_in(&self.dir.0))
            .args(args))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        kill_all(&self.victim);
    }
}

/// The two-node cluster, stopped and removed on drop.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = TempDir::new_in(Path::new("/tmp"), "pcmk");
        let out = run(Command::new(CLUSTER).arg("up").arg(&dir.0));
        let cluster = Cluster { dir };
        assert!(
            out.status.success(),
            "cluster did not start: {}",
            text(&out)
        );
        cluster
    }

    /// `nsenter` into node `n`: its network, mounts and host name.
    fn wrapper(&self, n: u32) -> Vec<String> {
        let pid = std::fs::read_to_string(self.dir.0.join(format!("n{n}/pacemakerd.pid"))).unwrap();
        ["nsenter", "-t", pid.trim(), "-n", "-m", "-u"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn on(&self, n: u32, args: &[&str]) -> Output {
        let w = self.wrapper(n);
        run(Command::new(&w[0]).args(&w[1..]).args(args))
    }

    /// R's role and the nodes it runs on, from crm_mon's XML.
    fn where_is(&self, resource: &str) -> (String, Vec<String>) {
        let out = self.on(1, &["crm_mon", "-1", "--output-as=xml"]);
        let xml = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        let r = doc
            .descendants()
            .find(|n| n.has_tag_name("resource") && n.attribute("id") == Some(resource))
            .unwrap_or_else(|| panic!("no resource {resource} in {xml}"));
        let nodes = r
            .children()
            .filter(|n| n.has_tag_name("node"))
            .filter_map(|n| n.attribute("name").map(str::to_string))
            .collect();
        (r.attribute("role").unwrap_or_default().to_string(), nodes)
    }

    /// Waits (up to `limit`) until `resource` is Started on `node`; how long it took.
    fn wait_started_on(&self, resource: &str, node: &str, limit: Duration) -> Duration {
        let begun = Instant::now();
        loop {
            let (role, nodes) = self.where_is(resource);
            if role == "Started" && nodes == [node] {
                return begun.elapsed();
            }
            assert!(
                begun.elapsed() < limit,
                "{resource} not Started on {node} within {limit:?}: {role} on {nodes:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn constraints(&self) -> String {
        text(&self.on(1, &["cibadmin", "-Q", "-o", "constraints"]))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(Command::new(CLUSTER).arg("down").arg(&self.dir.0));
    }
}

/// Retry over on node1 → psmon bans R from node1 → R Started on node2,
/// read from crm_mon; the constraint is in `psmon status` and `psmon
/// clear-failover` removes it (R comes home). An unknown resource is said
/// clearly. Then Pacemaker runs psmon itself through the OCF agent.
#[test]
fn pacemaker_moves_the_resource_and_runs_psmon() {
    if !has_pacemaker() {
        return;
    }
    let cluster = Cluster::up();
    let node1 = cluster.wrapper(1);
    let node1: Vec<&str> = node1.iter().map(String::as_str).collect();

    let (s, mut psmon, over) = retry_over_on(&node1, "pcmk-move", "R", "move");
    let over_at = Instant::now();
    psmon.wait("Switch request ('");
    let sent = psmon.wait("sent: pacemaker");
    assert!(
        sent["message"]
            .as_str()
            .unwrap()
            .contains("sent: pacemaker (move) of resource 'R'"),
        "{sent}"
    );
    cluster.wait_started_on("R", "node2", Duration::from_secs(5));
    let took = over_at.elapsed();
    let said = psmon.wait("→");
    let message = said["message"].as_str().unwrap();
    assert!(
        message.contains("→ resource 'R' started on node2 in"),
        "{said}\nretry over: {over}"
    );
    assert_eq!(said["switched"], true);
    eprintln!(
        "retry over → R Started on node2 (crm_mon, test's view): {:.2} s; psmon: {message}",
        took.as_secs_f64()
    );

    // The ban is in the cluster, and psmon lists it as its own.
    assert!(cluster.constraints().contains("cli-ban-R-on-node1"));
    let status = s.status();
    let left = status["failover_constraints"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{status}");
    assert_eq!(left[0]["id"], "cli-ban-R-on-node1");
    assert_eq!(left[0]["resource"], "R");
    assert_eq!(left[0]["pfile"], "app");
    let table = text(&s.client(&["status"]));
    assert!(
        table.contains("failover constraint cli-ban-R-on-node1"),
        "{table}"
    );

    let cleared = s.client(&["clear-failover"]);
    assert!(cleared.status.success(), "{}", text(&cleared));
    assert_eq!(text(&cleared).trim(), "cleared: cli-ban-R-on-node1");
    assert!(
        !cluster.constraints().contains("cli-ban"),
        "{}",
        cluster.constraints()
    );
    assert_eq!(s.status()["failover_constraints"], serde_json::json!([]));
    // Nothing keeps R from its preferred node now.
    cluster.wait_started_on("R", "node1", Duration::from_secs(20));
    drop(psmon);

    // A resource the cluster does not know: said at once, never retried.
    let (_, mut psmon, _) = retry_over_on(&node1, "pcmk-unknown", "NoSuchResource", "move");
    let said = psmon.wait("→");
    let message = said["message"].as_str().unwrap();
    assert!(
        message
            .contains("→ failed: resource 'NoSuchResource' is unknown to the cluster (it has: R)"),
        "{said}"
    );
    assert!(!message.contains("gave up after"), "{said}");
    drop(psmon);
    let (role, nodes) = cluster.where_is("R");
    assert_eq!(
        (role.as_str(), nodes.as_slice()),
        ("Started", ["node1".to_string()].as_slice())
    );

    // FAILOVER_MODE = ban: the same ban, asked for this node by name.
    let (s, mut psmon, _) = retry_over_on(&node1, "pcmk-ban", "R", "ban");
    psmon.wait("sent: pacemaker (ban) of resource 'R'");
    cluster.wait_started_on("R", "node2", Duration::from_secs(5));
    said_started_on_node2(&mut psmon);
    assert_eq!(
        s.status()["failover_constraints"][0]["id"],
        "cli-ban-R-on-node1"
    );
    assert!(s.client(&["clear-failover", "app"]).status.success());
    cluster.wait_started_on("R", "node1", Duration::from_secs(20));
    drop(psmon);

    // FAILOVER_MODE = fail: a failure of R on this node; with a
    // migration-threshold of 1 the cluster moves it, and leaves no constraint.
    let out = cluster.on(
        1,
        &[
            "crm_resource",
            "--resource",
            "R",
            "--meta",
            "--set-parameter",
            "migration-threshold",
            "--parameter-value",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (s, mut psmon, _) = retry_over_on(&node1, "pcmk-fail", "R", "fail");
    psmon.wait("sent: pacemaker (fail) of resource 'R'");
    cluster.wait_started_on("R", "node2", Duration::from_secs(10));
    said_started_on_node2(&mut psmon);
    assert_eq!(s.status()["failover_constraints"], serde_json::json!([]));
    assert!(
        !cluster.constraints().contains("cli-"),
        "{}",
        cluster.constraints()
    );
    drop(psmon);
    // The failure cleaned up, R goes home.
    let out = cluster.on(1, &["crm_resource", "--resource", "R", "--cleanup"]);
    assert!(out.status.success(), "{}", text(&out));
    cluster.wait_started_on("R", "node1", Duration::from_secs(20));

    // Pacemaker runs psmon: start, monitor, stop through ocf:psmon:psmon.
    ocf_agent_under_the_cluster(&cluster);
}

/// psmon on node1 failing over `resource` in `mode`, its watched process
/// killed (its restart fails): the setup, psmon, and its `Retry over`.
fn retry_over_on(node1: &[&str], tag: &str, resource: &str, mode: &str) -> (Setup, Psmon, Value) {
    let s = Setup::new(
        tag,
        &format!(
            "FAILOVER_DRIVER = pacemaker\nFAILOVER_RESOURCE = {resource}\nFAILOVER_MODE = {mode}\nRETRY_INTERVAL = 1\nFAILOVER_TIMEOUT = 20\n"
        ),
    );
    let (pid, mut psmon) = s.watch(node1);
    support::kill9_pid(pid);
    let over = psmon.wait("Retry over");
    (s, psmon, over)
}

/// psmon's outcome of the request: R started on node2.
fn said_started_on_node2(psmon: &mut Psmon) {
    let said = psmon.wait("→");
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("→ resource 'R' started on node2"),
        "{said}"
    );
}

fn ocf_agent_under_the_cluster(cluster: &Cluster) {
    let agents = Path::new("/usr/lib/ocf/resource.d/psmon");
    std::fs::create_dir_all(agents).unwrap();
    std::fs::copy(AGENT, agents.join("psmon")).unwrap();
    let s = Setup::new("pcmk-ocf", "");
    let socket = s.dir.0.join("ocf.sock");
    let primitive = format!(
        r#"<primitive id="P" class="ocf" provider="psmon" type="psmon">
  <meta_attributes id="P-meta">
    <nvpair id="P-target-role" name="target-role" value="Stopped"/>
  </meta_attributes>
  <instance_attributes id="P-params">
    <nvpair id="P-binary" name="binary" value="{PSMON}"/>
    <nvpair id="P-config" name="config" value="{}"/>
    <nvpair id="P-socket" name="socket" value="{}"/>
    <nvpair id="P-state" name="state_dir" value="{}"/>
    <nvpair id="P-options" name="options" value="--insecure-config --log-dir {}"/>
  </instance_attributes>
  <operations>
    <op id="P-monitor" name="monitor" interval="2s" timeout="20s"/>
  </operations>
</primitive>"#,
        s.conf().display(),
        socket.display(),
        s.dir.0.join("ocf-state").display(),
        s.dir.0.join("log").display(),
    );
    // Created stopped, placed on node1, then started.
    let out = cluster.on(
        1,
        &[
            "cibadmin",
            "--create",
            "-o",
            "resources",
            "--xml-text",
            &primitive,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let on_node1 = r#"<rsc_location id="P-on-node1" rsc="P" node="node1" score="INFINITY"/>"#;
    let out = cluster.on(
        1,
        &[
            "cibadmin",
            "--create",
            "-o",
            "constraints",
            "--xml-text",
            on_node1,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    target_role(cluster, "Started");
    cluster.wait_started_on("P", "node1", Duration::from_secs(30));
    // The psmon Pacemaker started answers, with its source open.
    let status = run(Command::new(PSMON)
        .env("PSMON_SOCKET", &socket)
        .args(["status", "--json"]));
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["source"].is_string(), "{status}");
    let pid = status["pid"].as_u64().unwrap() as i32;

    // Killed behind the cluster's back: its monitor notices, it is started again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let begun = Instant::now();
    let again = loop {
        let out = run(Command::new(PSMON)
            .env("PSMON_SOCKET", &socket)
            .args(["status", "--json"]));
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["pid"].as_u64() != Some(pid as u64) && v["source"].is_string() {
                break v;
            }
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "psmon not restarted by Pacemaker"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Stopped through the cluster: the daemon is gone.
    target_role(cluster, "Stopped");
    let new_pid = again["pid"].as_u64().unwrap();
    let begun = Instant::now();
    while Path::new(&format!("/proc/{new_pid}")).exists() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "psmon {new_pid} not stopped by Pacemaker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let begun = Instant::now();
    while cluster.where_is("P").0 != "Stopped" {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "P not Stopped: {:?}",
            cluster.where_is("P")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn target_role(cluster: &Cluster, role: &str) {
    let out = cluster.on(
        1,
        &[
            "crm_resource",
            "--resource",
            "P",
            "--meta",
            "--set-parameter",
            "target-role",
            "--parameter-value",
            role,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// No cluster answers (psmon is on a host without one): the request is
/// tried every RETRY_INTERVAL, then given up with the reason.
#[test]
fn pacemaker_without_a_cluster_is_retried_then_given_up() {
    if !has_pacemaker() {
        return;
    }
    let s = Setup::new(
        "pcmk-down",
        "FAILOVER_DRIVER = pacemaker\nRETRY_INTERVAL = 1\nFAILOVER_TIMEOUT = 3\n",
    );
    let (pid, mut psmon) = s.watch(&[]);
    support::kill9_pid(pid);
    psmon.wait("Retry over");
    let said = psmon.wait("→");
    let message = said["message"].as_str().unwrap();
    assert!(message.contains("→ failed: no cluster"), "{said}");
    assert!(message.contains("gave up after 3 tries in 3 s"), "{said}");
    assert_eq!(said["level"], "ERROR", "{said}");
    assert_eq!(s.status()["failover_constraints"], serde_json::json!([]));
}

/// CLUSTERPRO X, with a stand-in `clpgrp` found through psenv's PATH:
/// `clpgrp -m GROUP` once, then `clpgrp -n GROUP` until it names the other
/// server. A group it does not know is given up at once.
#[test]
fn clusterpro_moves_the_group_with_clpgrp() {
    if !needs_root("watching a process with the ebpf source") {
        return;
    }
    for (group, expect) in [
        ("failover1", "→ group 'failover1' started on server2 in"),
        (
            "nosuch",
            "→ failed: failover group 'nosuch' is unknown to CLUSTERPRO",
        ),
    ] {
        let s = Setup::new(
            "clp",
            &format!(
                "FAILOVER_DRIVER = clusterpro\nFAILOVER_RESOURCE = {group}\nRETRY_INTERVAL = 1\nFAILOVER_TIMEOUT = 10\n"
            ),
        );
        let bin = s.dir.0.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let calls = s.dir.0.join("clpgrp.calls");
        let at = s.dir.0.join("clpgrp.server");
        // The stand-in: the group runs on this host until `-m` moves it.
        let stand_in = format!(
            r#"#!/bin/sh
echo "$*" >> {calls}
[ "$2" = failover1 ] || {{ echo "Invalid group name."; exit 1; }}
case "$1" in
-m) echo server2 > {at}; echo "Command succeeded." ;;
-n) cat {at} 2>/dev/null || uname -n ;;
*) echo "Invalid option."; exit 1 ;;
esac
"#,
            calls = calls.display(),
            at = at.display()
        );
        let tool = bin.join("clpgrp");
        std::fs::write(&tool, stand_in).unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(
            s.conf().join("psenv"),
            format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin\n", bin.display()),
        )
        .unwrap();

        let (pid, mut psmon) = s.watch(&[]);
        support::kill9_pid(pid);
        psmon.wait("Retry over");
        let said = psmon.wait("→");
        assert!(said["message"].as_str().unwrap().contains(expect), "{said}");
        drop(psmon);
        let calls = std::fs::read_to_string(&calls).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        if group == "failover1" {
            assert_eq!(
                calls,
                [
                    &format!("-n {group}"),
                    &format!("-m {group}"),
                    &format!("-n {group}")
                ][..]
            );
        } else {
            assert_eq!(calls, [format!("-n {group}")]);
        }
    }
}

/// The agent passes Debian's `ocf-tester` (meta-data against the OCF DTD,
/// every action's exit code, start and stop twice), and its refusals use
/// the OCF codes.
#[test]
fn the_ocf_agent_passes_ocf_tester() {
    if !needs_root("starting psmon through its OCF agent") {
        return;
    }
    let tester = Path::new("/usr/sbin/ocf-tester");
    if !needs("/usr/sbin/ocf-tester", "resource-agents") {
        return;
    }
    let s = Setup::new("ocf", "");
    // ocf-tester runs meta-data as `nobody` too: the agent must be where
    // anyone can reach it (a checkout may be in a private directory).
    let agent_path = s.dir.0.join("psmon-agent");
    std::fs::copy(AGENT, &agent_path).unwrap();
    std::fs::set_permissions(
        &agent_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let params = |socket: &str| {
        vec![
            format!("binary={PSMON}"),
            format!("config={}", s.conf().display()),
            format!("socket={}", s.dir.0.join(socket).display()),
            format!("state_dir={}", s.dir.0.join("state").display()),
            format!(
                "options=--insecure-config --log-dir {}",
                s.dir.0.join("log").display()
            ),
        ]
    };
    let mut tester_cmd = Command::new(tester);
    tester_cmd
        .env("OCF_ROOT", "/usr/lib/ocf")
        .args(["-n", "psmon"]);
    for p in params("ocf.sock") {
        tester_cmd.arg("-o").arg(p);
    }
    let out = run(tester_cmd.arg(&agent_path));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("passed all tests"), "{}", text(&out));

    let agent = |action: &str, env: &[(&str, String)]| -> i32 {
        let mut c = Command::new(&agent_path);
        c.arg(action).env("OCF_ROOT", "/usr/lib/ocf");
        for p in params("codes.sock") {
            let (k, v) = p.split_once('=').unwrap();
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c).status.code().unwrap()
    };
    assert_eq!(agent("monitor", &[]), 7, "not running");
    assert_eq!(agent("stop", &[]), 0, "stopping what is stopped");
    assert_eq!(agent("validate-all", &[]), 0);
    assert_eq!(
        agent(
            "validate-all",
            &[("OCF_RESKEY_binary", "/nonexistent/psmon".into())]
        ),
        5
    );
    assert_eq!(
        agent(
            "validate-all",
            &[("OCF_RESKEY_config", "/nonexistent".into())]
        ),
        6
    );
    std::fs::write(s.conf().join("broken.toml"), "[[entry]]\npaht = \"/x\"\n").unwrap();
    assert_eq!(agent("validate-all", &[]), 6, "a broken configuration");
    assert_eq!(agent("bogus", &[]), 3);
}
