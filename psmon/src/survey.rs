//! What a configuration means on this host, before psmon watches anything:
//! warnings about entry paths (a symlink, a missing or non-executable file,
//! a `switch` entry that matches nothing now) and, for `psmon check --live`,
//! the processes each entry matches right now and why.
//!
//! It reads `/proc` and the file system; it changes nothing and decides no
//! policy. Errors that make a configuration unusable stay in `config`.

use std::{cell::OnceCell, fmt::Write as _, os::unix::fs::PermissionsExt, path::Path};

use crate::{
    config::{Config, FailoverDriver, Match, OnRetryOver, Rule},
    facts::{Known, Seen},
    scan::{MatchReason, Matcher, ScanState, Unchanged, read_pidfile, resolve},
};

/// One entry's finding, printed as `file:line: warning: …`.
pub struct Warning {
    /// The file.
    pub file: std::path::PathBuf,
    /// The line.
    pub line: usize,
    /// What was found.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: warning: {}",
            self.file.display(),
            self.line,
            self.message
        )
    }
}

/// A configuration looked at on this host: its matcher, built once, and a
/// scan of `/proc` made only when something asks what matches now.
pub struct Survey<'a> {
    config: &'a Config,
    matcher: Matcher,
    found: OnceCell<Vec<Vec<Seen>>>,
}

impl<'a> Survey<'a> {
    /// A survey of `config` on this host.
    pub fn new(config: &'a Config) -> Self {
        Survey {
            config,
            matcher: Matcher::new(config.entries().map(|(_, e)| e)),
            found: OnceCell::new(),
        }
    }

    /// The processes matching each entry now: `found()[i]` for entry `i`.
    fn found(&self) -> &[Vec<Seen>] {
        self.found.get_or_init(|| {
            let n = self.config.entries().count();
            self.matcher.scan(
                n,
                &Known::new(),
                &mut ScanState::default(),
                &Unchanged::default(),
            )
        })
    }
}

impl Survey<'_> {
    /// Warnings about what each entry's path names on this host.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        for (i, (pfile, e)) in self.config.entries().enumerate() {
            let mut warn = |message: String| {
                out.push(Warning {
                    file: pfile.file.clone(),
                    line: e.line,
                    message,
                })
            };
            if e.matcher == Match::Path {
                for message in path_findings(&e.path) {
                    warn(message);
                }
            }
            if let Some((_, why)) = self
                .matcher
                .unresolved()
                .iter()
                .find(|(j, _)| j.index() == i)
            {
                warn(format!("{}: nothing can match it: {why}", e.path.display()));
            } else if let Match::Cgroup(dir) = &e.matcher
                && !dir.join("cgroup.procs").exists()
            {
                warn(format!(
                    "cgroup {} does not exist (yet): nothing matches it until it does",
                    dir.display()
                ));
            }
            if e.action == OnRetryOver::Switch && self.found()[i].is_empty() {
                warn(format!(
                    "no process matches {} now: started like this, psmon would restart it and, \
                 if that fails, fail over at once (start it first, or check the path with \
                 `psmon check --live`)",
                    e.path.display()
                ));
            }
            if e.action == OnRetryOver::Switch
                && let Some(why) = self.missing_cluster_tool(e.failover_choice.driver)
            {
                warn(why);
            }
            if let Some(command) = &e.restart
                && uses_systemctl(command)
                && !libsystemd::daemon::booted()
            {
                warn(format!(
                    "the restart command `{command}` uses systemctl, but systemd is not running on this host (no /run/systemd/system): it will fail; start the daemon directly"
                ));
            }
            if let Some(command) = &e.restart
                && let Some(unit) = systemctl_restart_unit(command)
                && libsystemd::daemon::booted()
                && let Some(policy) = unit_restart_policy(&unit)
            {
                warn(format!(
                    "the restart command `{command}` restarts {unit}, which systemd also restarts itself (Restart={policy}): the restart stops the start systemd has begun, and a few deaths run the unit into its start limit and leave it dead; use `systemctl start {unit}`, which waits for systemd's restart instead"
                ));
            }
            if let Some(command) = &e.restart
                && !uses_systemctl(command)
                && let Some(entrypoint) = selinux_entrypoint(&e.path)
            {
                warn(format!(
                    "SELinux is enabled and {} is a daemon's entry point ({entrypoint}): started by `{command}` it runs in the domain of psmon's restart commands (unconfined_t), not in its own as when systemd starts it; restart it through systemd to keep its domain (`systemctl start UNIT` for a unit that restarts itself, `systemctl restart UNIT` for one that does not)",
                    e.path.display()
                ));
            }
        }
        out
    }

    /// The cluster tool a `switch` with this driver needs that is not
    /// installed (looked up in psenv's PATH, else psmon's).
    fn missing_cluster_tool(&self, driver: Option<FailoverDriver>) -> Option<String> {
        let driver = driver.unwrap_or(self.config.agent.failover_driver);
        let (name, tools, package): (&str, &[&str], &str) = match driver {
            FailoverDriver::Command => return None,
            FailoverDriver::Pacemaker => (
                "pacemaker",
                &["crm_resource", "crm_mon"],
                "pacemaker-cli-utils",
            ),
            FailoverDriver::Clusterpro => ("clusterpro", &["clpgrp"], "CLUSTERPRO X"),
        };
        let path = self
            .config
            .env
            .vars
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let missing: Vec<&str> = tools
            .iter()
            .copied()
            .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "failover driver {name} needs {} (from {package}), not found on PATH: switch will fail until it is installed",
                missing.join(" and ")
            )
        })
    }
}

/// The unit of a plain `systemctl restart UNIT` command.
fn systemctl_restart_unit(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        [systemctl, "restart", unit] if systemctl.rsplit('/').next() == Some("systemctl") => {
            Some(unit.trim_matches('\'').to_string())
        }
        _ => None,
    }
}

/// systemd's own `Restart=` of `unit`, when it restarts the unit itself.
fn unit_restart_policy(unit: &str) -> Option<String> {
    let out = std::process::Command::new("systemctl")
        .args(["show", "-p", "Restart", "--value", unit])
        .output()
        .ok()?;
    let policy = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !policy.is_empty() && policy != "no").then_some(policy)
}

/// The SELinux type of `path` when SELinux is enabled and the file is a
/// daemon's entry point (`…_exec_t`, other than the shell's).
fn selinux_entrypoint(path: &Path) -> Option<String> {
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        return None;
    }
    let label = xattr_selinux(&std::fs::canonicalize(path).ok()?)?;
    let kind = label.split(':').nth(2)?.to_string();
    (kind.ends_with("_exec_t") && kind != "shell_exec_t").then_some(kind)
}

/// The `security.selinux` attribute of a file.
fn xattr_selinux(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            name.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    Some(text.trim_end_matches('\0').to_string())
}

/// Whether a shell command runs `systemctl` (as a word, not inside one).
fn uses_systemctl(command: &str) -> bool {
    command
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')'))
        .any(|word| word.rsplit('/').next() == Some("systemctl"))
}

/// What is worth saying about a path rule's file.
fn path_findings(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let r = resolve(path);
    if !r.exists {
        out.push(format!(
            "{} does not exist on this host yet: it is reported Down and restarted as configured, and a process running it is matched once it is installed at that path (should it be a symlink or a `#!` script, reload psmon after installing it)",
            path.display()
        ));
        return out;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) || r.file != path {
        let names_differ = path.file_name() != r.file.file_name();
        out.push(format!(
            "{} is a symlink to {}: processes running that file match{}",
            path.display(),
            r.file.display(),
            if names_differ {
                format!(
                    ", when started as `{}` (argv[0] or comm), since other names may run the same binary",
                    path.file_name().unwrap_or_default().to_string_lossy()
                )
            } else {
                String::new()
            }
        ));
    }
    let executable = std::fs::metadata(&r.file)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        out.push(format!(
            "{} is not an executable file: no process can run it{}",
            r.file.display(),
            if r.script {
                " (an interpreter may still run it as a script)"
            } else {
                ""
            }
        ));
    }
    out
}

impl Survey<'_> {
    /// `psmon check --live`: for each entry, the processes that match it now,
    /// which of them count as instances under its rule, and why.
    pub fn live(&self) -> String {
        let (matcher, found) = (&self.matcher, self.found());
        let mut out = String::new();
        for (i, (pfile, e)) in self.config.entries().enumerate() {
            let rule = match &e.rule {
                Rule::Lineage => {
                    "what was started counts, not what it forked (workers)".to_string()
                }
                Rule::All => "count = all: every matching process counts".to_string(),
                Rule::MainOnly => "main_only: processes whose parent does not match".to_string(),
                Rule::Pidfile(p) => format!("pidfile {}", p.display()),
            };
            let _ = writeln!(
                out,
                "{} ({}:{}; {rule}; min {})",
                e.path.display(),
                pfile.file.display(),
                e.line,
                e.min
            );
            // The user instances must run as (see `Owner`): as said, or
            // as the oldest process found runs (the first psmon would see).
            let owner = match e.owner {
                crate::config::Owner::Uid(uid) => Some(uid),
                crate::config::Owner::Any => None,
                crate::config::Owner::Learned => found[i]
                    .iter()
                    .min_by_key(|p| (p.start_ticks, p.tgid))
                    .map(|p| p.uid),
            };
            let admitted = |uid: u32| uid == 0 || owner.is_none_or(|o| o == uid);
            let members: Vec<u32> = found[i]
                .iter()
                .filter(|p| admitted(p.uid))
                .map(|p| p.tgid)
                .collect();
            let pidfile_pid = match &e.rule {
                crate::config::Rule::Pidfile(path) => read_pidfile(path),
                _ => None,
            };
            if members.is_empty() {
                let _ = writeln!(out, "  no matching process: it would be reported Down");
            }
            let mut counted = 0;
            for inst in &found[i] {
                let is_member = |pid| members.contains(&pid);
                // Forked by another of them: a worker (one orphaned before
                // psmon looked cannot be told apart).
                let worker = found[i].iter().any(|p| p.tgid == inst.ppid);
                let counts = admitted(inst.uid)
                    && e.rule
                        .counts(inst.tgid, inst.ppid, worker, is_member, pidfile_pid);
                counted += u32::from(counts);
                let why = matcher
                    .classify_why(inst.tgid)
                    .map(|(_, _, w)| w)
                    .unwrap_or(MatchReason::Executable);
                let exe = crate::proc::exe(inst.tgid)
                    .map_or_else(|| "?".into(), |p| p.display().to_string());
                let cmdline = crate::proc::cmdline(inst.tgid)
                    .map(|argv| String::from_utf8_lossy(&argv.join(&b' ')).into_owned())
                    .unwrap_or_default();
                let mark = match owner {
                    _ if counts => " [instance]".to_string(),
                    Some(o) if !admitted(inst.uid) => format!(
                        " [not counted: runs as uid {}, the entry's user is uid {o}]",
                        inst.uid
                    ),
                    _ if worker && !matches!(e.rule, Rule::Pidfile(_)) => {
                        format!(" [worker: forked by pid {}]", inst.ppid)
                    }
                    _ => " [not counted]".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  pid {} ppid {} uid {}{mark}: exe {exe}; cmdline {cmdline:?}; {why}",
                    inst.tgid, inst.ppid, inst.uid,
                );
            }
            let _ = writeln!(
                out,
                "  => {counted} instance(s): {}",
                if counted >= e.min { "Up" } else { "Down" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_systemctl_restart_names_its_unit() {
        assert_eq!(
            systemctl_restart_unit("systemctl restart sshd").as_deref(),
            Some("sshd")
        );
        assert_eq!(
            systemctl_restart_unit("/usr/bin/systemctl restart 'ssh.service'").as_deref(),
            Some("ssh.service")
        );
        assert_eq!(systemctl_restart_unit("systemctl start sshd"), None);
        assert_eq!(systemctl_restart_unit("systemctl restart a b"), None);
        assert_eq!(systemctl_restart_unit("/opt/app/restart"), None);
    }
}
