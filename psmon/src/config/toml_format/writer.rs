//! A pfile's model written back as psmon's TOML (`psmon convert`).

use std::fmt::Write as _;

use crate::config::{Entry, Match, OnRetryOver, Pfile, Rule};

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// psmon's TOML for a pfile's model: what `psmon convert` prints.
pub fn to_toml(p: &Pfile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Converted from {} by `psmon convert`.",
        p.file.display()
    );
    if let Some(k) = p.ipckey {
        let _ = writeln!(out, "ipckey = {k:#x}");
    }
    let _ = writeln!(out, "monitor_interval = {}", p.monitor_interval.as_secs());
    let _ = writeln!(
        out,
        "msg_check_interval = {}",
        p.msg_check_interval.as_secs()
    );
    if let Some(d) = &p.shm_dump_file {
        let _ = writeln!(out, "shm_dump_file = {}", quote(&d.display().to_string()));
    }
    for e in &p.entries {
        let _ = writeln!(out, "\n[[entry]]");
        let _ = writeln!(out, "path = {}", quote(&e.path.display().to_string()));
        if let Some(r) = &e.restart {
            let _ = writeln!(out, "restart = {}", quote(r));
        }
        let _ = writeln!(out, "grace = {}", e.grace.map_or(0, |g| g.as_secs()));
        let _ = writeln!(out, "retry = {}", e.retry);
        let _ = writeln!(out, "action = \"{}\"", e.action.name());
        if let Match::Cmdline(p) = &e.matcher {
            let _ = writeln!(out, "cmdline = {}", quote(p.as_str()));
        }
        if e.min != 1 {
            let _ = writeln!(out, "min = {}", e.min);
        }
        if let Some(m) = e.max {
            let _ = writeln!(out, "max = {m}");
        }
        if !e.stop_exit_codes.is_empty() {
            let _ = writeln!(out, "stop_exit_codes = {:?}", e.stop_exit_codes);
        }
        if e.restart_timeout != Entry::DEFAULT_RESTART_TIMEOUT {
            let _ = writeln!(out, "restart_timeout = {}", e.restart_timeout.as_secs());
        }
        if e.start_wait != Entry::DEFAULT_START_WAIT {
            let _ = writeln!(out, "start_wait = {}", e.start_wait.as_secs());
        }
        if let Some(f) = &e.failover {
            let _ = writeln!(out, "failover = {}", quote(f));
        }
        // A pfile's budget counts every restart in its window.
        match e.healthy {
            None => {
                let _ = writeln!(out, "healthy_secs = 0");
            }
            Some(h) => {
                let _ = writeln!(out, "healthy_secs = {}", h.as_secs_f64());
            }
        }
        if !e.restart_jitter.is_zero() {
            let _ = writeln!(out, "restart_jitter = {}", e.restart_jitter.as_secs_f64());
        }
        if e.action == OnRetryOver::RetrySlowly {
            let every = e.slow_retry_interval.as_secs_f64();
            let _ = writeln!(out, "slow_retry_interval = {every}");
        }
        match &e.rule {
            Rule::Lineage => {}
            Rule::All => {
                let _ = writeln!(out, "count = \"all\"");
            }
            Rule::MainOnly => {
                let _ = writeln!(out, "main_only = true");
            }
            Rule::Pidfile(p) => {
                let _ = writeln!(out, "pidfile = {}", quote(&p.display().to_string()));
            }
        }
    }
    out
}

/// The restart command of a `unit =` entry that names none: a unit with
/// systemd's own `Restart=` is *started* — the start job waits for
/// systemd's pending restart (or finds the unit started), so the unit is
/// started once; a restart job would stop the start systemd has begun and
/// start it again, and a few kills would run it into its start limit. A
/// unit without `Restart=` is restarted, which also clears what is left of
/// it. The unit's setting is read when the command runs.
pub fn unit_restart(unit: &str) -> String {
    format!(
        "if [ \"$(systemctl show -p Restart --value '{unit}')\" = no ]; then systemctl restart '{unit}'; else systemctl start '{unit}'; fi"
    )
}
