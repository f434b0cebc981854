//! (i) Failover to a real cluster, part of `cargo xtask bench`: a
//! two-node Pacemaker (tests/pacemaker/cluster.sh), psmon on node1 with
//! `FAILOVER_DRIVER = pacemaker`; each round kills the watched process
//! (its restart fails: retry over at once) and measures retry over →
//! resource R Started on node2 as crm_mon shows it, then `psmon
//! clear-failover` brings R home for the next round.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use super::support::{Daemon, PAUSER, compile};
use super::support::{fmt_ns, percentile};

const ROUNDS: usize = 5;

struct Cluster {
    script: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    fn up(script: PathBuf) -> anyhow::Result<Cluster> {
        let dir = PathBuf::from(format!("/tmp/psmon-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = Cluster { script, dir };
        let out = Command::new(&cluster.script)
            .arg("up")
            .arg(&cluster.dir)
            .stdin(Stdio::null())
            .output()
            .context("running tests/pacemaker/cluster.sh")?;
        ensure!(
            out.status.success(),
            "the cluster did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(cluster)
    }

    fn wrapper(&self) -> anyhow::Result<Vec<String>> {
        let pid = std::fs::read_to_string(self.dir.join("n1/pacemakerd.pid"))?;
        Ok(["nsenter", "-t", pid.trim(), "-n", "-m", "-u"]
            .map(String::from)
            .to_vec())
    }

    /// The node R is Started on, if it is.
    fn r_started_on(&self) -> anyhow::Result<Option<String>> {
        let w = self.wrapper()?;
        let out = Command::new(&w[0])
            .args(&w[1..])
            .args(["crm_mon", "-1", "--output-as=xml"])
            .output()?;
        let xml = String::from_utf8_lossy(&out.stdout);
        let Some(at) = xml.find("<resource id=\"R\"") else {
            return Ok(None);
        };
        let rest = &xml[at..];
        let end = rest.find("</resource>").unwrap_or(rest.len());
        let r = &rest[..end];
        if !r.contains("role=\"Started\"") {
            return Ok(None);
        }
        Ok(r.split("<node name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(str::to_string))
    }

    fn wait_r_on(&self, node: &str, limit: Duration) -> anyhow::Result<Instant> {
        let begun = Instant::now();
        loop {
            if self.r_started_on()?.as_deref() == Some(node) {
                return Ok(Instant::now());
            }
            if begun.elapsed() > limit {
                bail!("R not Started on {node} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn failover(root: &Path, psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    ensure!(
        Path::new("/usr/sbin/pacemakerd").exists(),
        "(i) needs Debian's pacemaker, corosync and pacemaker-cli-utils"
    );
    let victim = compile(dir, "clustervictim", PAUSER)?;
    let conf = dir.join("cluster-conf");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{}\"\nrestart = \"exit 1\"\nretry = 1\ngrace = 86400\naction = \"switch\"\n",
            victim.display()
        ),
    )?;
    std::fs::write(
        conf.join("psagent.conf"),
        "FAILOVER_DRIVER = pacemaker\nFAILOVER_RESOURCE = R\nRETRY_INTERVAL = 1\nFAILOVER_TIMEOUT = 30\n",
    )?;
    let begun = Instant::now();
    let cluster = Cluster::up(root.join("tests/pacemaker/cluster.sh"))?;
    let up_took = begun.elapsed();
    let psmon_d = Daemon::start_in(&cluster.wrapper()?, psmon, &conf, "auto", &["--no-state"])?;
    let mut seen_by_crm_mon = Vec::new();
    let mut said_by_psmon = Vec::new();
    for _ in 0..ROUNDS {
        let mut child = Command::new(&victim).spawn()?;
        psmon_d.wait_up(child.id(), Duration::from_secs(10))?;
        child.kill()?;
        let _ = child.wait();
        psmon_d.wait_message(
            |m| {
                m["message"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Retry over"))
            },
            Duration::from_secs(10),
        )?;
        let over = Instant::now();
        let moved = cluster.wait_r_on("node2", Duration::from_secs(30))?;
        seen_by_crm_mon.push((moved - over).as_nanos() as u64);
        let said = psmon_d.wait_message(
            |m| m["message"].as_str().is_some_and(|s| s.contains(") → ")),
            Duration::from_secs(30),
        )?;
        ensure!(said["switched"] == true, "psmon said: {said}");
        said_by_psmon.push((said["elapsed_ms"].as_f64().unwrap_or(0.0) * 1e6) as u64);
        let cleared = Command::new(psmon)
            .args(["--socket"])
            .arg(conf.join("psmon.sock"))
            .arg("clear-failover")
            .output()?;
        ensure!(cleared.status.success(), "clear-failover: {cleared:?}");
        cluster.wait_r_on("node1", Duration::from_secs(30))?;
    }
    psmon_d.stop();
    drop(cluster);
    let down_took = begun.elapsed();
    seen_by_crm_mon.sort_unstable();
    said_by_psmon.sort_unstable();
    let mut out = String::new();
    writeln!(
        out,
        "### (i) Failover to a real Pacemaker cluster\n\n\
         Two nodes in network namespaces (tests/pacemaker/cluster.sh), psmon on node1 with \
         `FAILOVER_DRIVER = pacemaker` (mode move); each of {ROUNDS} rounds kills the watched \
         process, whose restart command fails, so the kill is a retry over at once. Measured \
         from psmon's `Retry over` message to `crm_mon` (polled every 20 ms) showing R Started \
         on node2, and psmon's own figure (request sent → verified). `psmon clear-failover` \
         brings R home between rounds.\n"
    )?;
    writeln!(out, "| measure | n | median | max |\n|---|---|---|---|")?;
    for (label, s) in [
        (
            "retry over → R Started on node2 (crm_mon)",
            &seen_by_crm_mon,
        ),
        ("psmon: request → verified on node2", &said_by_psmon),
    ] {
        writeln!(
            out,
            "| {label} | {} | {} | {} |",
            s.len(),
            fmt_ns(percentile(s, 50.0)),
            fmt_ns(*s.last().unwrap_or(&0))
        )?;
    }
    writeln!(
        out,
        "\nCluster start {:.1} s; the whole part (start, {ROUNDS} rounds, stop) {:.1} s.\n",
        up_took.as_secs_f64(),
        down_took.as_secs_f64()
    )?;
    Ok(out)
}
