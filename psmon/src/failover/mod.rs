//! Failover drivers: how `switch` reaches a cluster, and whether it worked.
//!
//! The monitor decides *that* failover is due (once per retry-over) and
//! hands the shell a [`SwitchRequest`]; a driver carries it out on the shell's
//! task pool and answers with an [`SwitchOutcome`]: the resource started on
//! another node, or why not. A request the cluster refused (or could not
//! be reached for) is tried again every `retry_interval` until `timeout`;
//! once the cluster took it, it is never sent again, only waited for.
//!
//! - [`pacemaker`]: `crm_resource --move`/`--ban`/`--fail` away from this
//!   node, then `crm_mon --output-as=xml` until the resource is Started on
//!   another node.
//! - [`clusterpro`]: CLUSTERPRO X's `clpgrp -m GROUP`, then `clpgrp -n
//!   GROUP` until the group runs on another server.
//!
//! The `command` driver is not here: it is a failover command, run like a
//! restart command.

pub mod clusterpro;
pub mod pacemaker;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::facts::{Cluster, SwitchOutcome, SwitchRequest};

/// Carries out `request` to its end: success, or failure with the reason.
pub async fn send(request: &SwitchRequest) -> SwitchOutcome {
    let begun = Instant::now();
    let deadline = begun + request.timeout;
    let (ok, said, constraints) = match request.cluster {
        Cluster::Pacemaker(mode) => pacemaker::switch(request, mode, deadline).await,
        Cluster::Clusterpro => clusterpro::switch(request, deadline).await,
    };
    SwitchOutcome {
        ok,
        said,
        elapsed: begun.elapsed(),
        constraints,
    }
}

/// One step of a driver that may be tried again.
pub(crate) enum Step<T> {
    Done(T),
    /// Not now (the cluster is unreachable, the request was refused): try
    /// again after the retry interval, while time is left.
    Retry(String),
    /// Trying again cannot help (the resource is unknown).
    GiveUp(String),
}

/// Runs `step` until it is done, gives up, or `deadline` passes; `Err`
/// says why it ended without success, and how many tries it took.
pub(crate) async fn retrying<T, F, Fut>(
    request: &SwitchRequest,
    deadline: Instant,
    mut step: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Step<T>>,
{
    let mut tries = 0u32;
    loop {
        tries += 1;
        let why = match step().await {
            Step::Done(t) => return Ok(t),
            Step::GiveUp(why) => return Err(why),
            Step::Retry(why) => why,
        };
        let next = Instant::now() + request.retry_interval;
        if next >= deadline {
            let tries = if tries == 1 {
                "1 try".to_string()
            } else {
                format!("{tries} tries")
            };
            return Err(format!(
                "{why}; gave up after {tries} in {} s (FAILOVER_TIMEOUT)",
                request.timeout.as_secs()
            ));
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

/// A cluster tool's answer: its standard output, or why it failed.
#[derive(Debug)]
pub(crate) struct ToolAnswer {
    pub ok: bool,
    pub stdout: String,
    /// The tool's complaint (its last lines of stderr, else stdout).
    pub complaint: String,
}

/// Runs a cluster tool (no shell), bounded by `deadline` (at least a
/// second). A tool that cannot be started is `Err` with what to install.
pub(crate) async fn tool(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    deadline: Instant,
) -> Result<ToolAnswer, String> {
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    // psenv may set PATH: look the tool up in it, as a shell would.
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v);
    let program_path = match path {
        Some(path) if !program.contains('/') => std::env::split_paths(path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| program.into()),
        _ => program.into(),
    };
    let child = tokio::process::Command::new(program_path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "`{program}` is not installed (not found on PATH); install the cluster's command-line tools"
            ));
        }
        Err(e) => return Err(format!("cannot run `{shown}`: {e}")),
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let output = match tokio::time::timeout(left, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("`{shown}` failed: {e}")),
        Err(_) => {
            return Err(format!(
                "`{shown}` did not answer within {} s",
                left.as_secs()
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = if stderr.trim().is_empty() {
        &stdout[..]
    } else {
        &stderr[..]
    };
    let complaint = last_lines(text, 2);
    Ok(ToolAnswer {
        ok: output.status.success(),
        stdout,
        complaint: if output.status.success() {
            complaint
        } else {
            format!("`{shown}`: {}", describe_failure(output.status, &complaint))
        },
    })
}

fn describe_failure(status: std::process::ExitStatus, complaint: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".into(),
    };
    if complaint.is_empty() {
        how
    } else {
        format!("{how}: {complaint}")
    }
}

/// The last `n` non-empty lines, joined with "; ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

/// This machine's node name as the cluster tools say it (`uname -n`).
pub(crate) fn hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\n\nb\n c \n", 2), "b; c");
        assert_eq!(last_lines("", 2), "");
    }

    #[tokio::test]
    async fn a_missing_tool_says_what_to_install() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = tool("psmon-no-such-tool", &[], &[], deadline)
            .await
            .unwrap_err();
        assert!(e.contains("not installed"), "{e}");
    }

    #[tokio::test]
    async fn retrying_gives_up_at_the_deadline() {
        let request = SwitchRequest {
            cluster: Cluster::Clusterpro,
            resource: "g".into(),
            timeout: Duration::from_millis(250),
            retry_interval: Duration::from_millis(100),
            env: Vec::new(),
        };
        let begun = Instant::now();
        let mut n = 0;
        let r: Result<(), String> = retrying(&request, begun + request.timeout, || {
            n += 1;
            async { Step::Retry("refused".into()) }
        })
        .await;
        let e = r.unwrap_err();
        assert!(e.starts_with("refused; gave up after 3 tries"), "{e}");
        assert_eq!(n, 3);
    }
}
