//! (k) Cost under churn: a watched instance that forks short-lived
//! children thousands of times a second (a pre-forking server recycling
//! its workers, a shell script in a loop). None of the children can be an
//! instance; psmon's CPU over the storm is what watching them costs.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::support::{Daemon, cpu_ns};

/// Forks per second the watched instance makes.
const RATE: u32 = 5_000;
/// Seconds over which psmon's CPU is measured.
const WINDOW: Duration = Duration::from_secs(5);

pub fn churn(psmon: &Path, dir: &Path) -> anyhow::Result<String> {
    let forker = dir.join("churnd");
    std::fs::copy(std::env::current_exe()?, &forker).context("copying the storm worker")?;
    let mut out = format!(
        "\n### (k) Cost under churn\n\nOne watched instance forks {RATE} children a second, \
         each exiting at once (`xtask storm-worker --mode fork`, a copy of it is the watched \
         program); ebpf source. CPU is psmon's (all threads) over {} s of the storm, in % of one \
         core; Down counts the instance's false deaths (must be 0).\n\n\
         | rule | forks/s | psmon CPU | Down |\n|---|---|---|---|\n",
        WINDOW.as_secs()
    );
    for (label, rule) in [
        ("path (every process)", ""),
        ("main_only", "main_only = true\n"),
        ("pidfile", "pidfile = \"PIDFILE\"\n"),
    ] {
        let conf = dir.join(format!(
            "conf-churn-{}",
            label.split(' ').next().unwrap_or("x")
        ));
        let _ = std::fs::remove_dir_all(&conf);
        std::fs::create_dir_all(&conf)?;
        let pidfile = conf.join("churnd.pid");
        let secs = (WINDOW + Duration::from_secs(8)).as_secs().to_string();
        let instance = Command::new(&forker)
            .args(["storm-worker", "--mode", "fork", "--seconds", &secs])
            .args(["--rate", &RATE.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        std::fs::write(&pidfile, format!("{}\n", instance.id()))?;
        std::fs::write(
            conf.join("churn.toml"),
            format!(
                "[[entry]]\npath = \"{}\"\nrestart = \"/bin/true\"\nretry = 0\n{}",
                forker.display(),
                rule.replace("PIDFILE", &pidfile.display().to_string())
            ),
        )?;
        let daemon = Daemon::start(psmon, &conf, "ebpf")?;
        daemon.wait_up(instance.id(), Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_secs(1));
        let cpu0 = cpu_ns(daemon.pid())?;
        let t0 = Instant::now();
        std::thread::sleep(WINDOW);
        let cpu = (cpu_ns(daemon.pid())? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
        let said = daemon.stop();
        let downs = said
            .iter()
            .filter(|m| m["message"].as_str().is_some_and(|s| s.contains("] Down")))
            .count();
        // Its storm ends by itself; it prints how many forks it made.
        let done = instance.wait_with_output()?;
        let forks: f64 = String::from_utf8_lossy(&done.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        let rate = forks / (WINDOW + Duration::from_secs(8)).as_secs_f64();
        let _ = writeln!(
            out,
            "| {label} | {} | {cpu:.1} % | {downs} |",
            if forks > 0.0 {
                format!("{rate:.0}")
            } else {
                format!("≈ {RATE}")
            }
        );
    }
    out.push('\n');
    Ok(out)
}
