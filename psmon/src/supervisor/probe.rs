//! Hang probes, run off the event loop: each is a task of its own with its
//! own deadline, so a probe that hangs delays nothing else. The answer goes
//! back to the monitor, which decides; killing a hung process is here too.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Back, Supervisor};
use crate::{
    config::{Probe, ProbeKind},
    facts::EntryId,
    monitor::Input,
};

/// Bytes of an answer read while looking for `expect`.
const MAX_ANSWER: usize = 64 * 1024;

impl Supervisor {
    pub(super) fn probe(&mut self, entry: EntryId, pid: u32, probe: Probe) {
        let tx = self.back_tx.clone();
        let umask = self.umask;
        let spawner = self.spawner.clone();
        let generation = Some(self.monitor.generation());
        self.helpers.spawn(async move {
            let begun = Instant::now();
            let result =
                match tokio::time::timeout(probe.timeout, ask(&probe, umask, &spawner)).await {
                    Ok(Ok(())) => Ok(begun.elapsed()),
                    Ok(Err(why)) => Err(why),
                    Err(_) => Err("timed out".to_string()),
                };
            if let Err(why) = &result {
                tracing::debug!(pid, why, "probe failed");
            } else {
                tracing::debug!(
                    pid,
                    ms = begun.elapsed().as_secs_f64() * 1e3,
                    "probe answered"
                );
            }
            let input = Input::Probed { entry, pid, result };
            let _ = tx.send(Back::Input { input, generation });
        });
    }

    /// SIGTERM now, SIGKILL after `grace` if the same process still lives
    /// and still matches an entry: a process that is not what psmon took it
    /// for (a pid from a doctored state file, a program exec'd since) is
    /// never signalled.
    pub(super) fn kill_gracefully(&mut self, tgid: u32, start: u64, grace: Duration) {
        let matcher = self.matcher.clone();
        self.helpers.spawn(async move {
            let pid = nix::unistd::Pid::from_raw(tgid as i32);
            let same = move || {
                let matcher = matcher.clone();
                move || {
                    crate::proc::is_alive(tgid, start)
                        && matcher
                            .classify(tgid)
                            .is_some_and(|(_, seen)| seen.start_ticks == start)
                }
            };
            let alive = tokio::task::spawn_blocking(same()).await.unwrap_or(false);
            if !alive {
                return;
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            tokio::time::sleep(grace).await;
            if tokio::task::spawn_blocking(same()).await.unwrap_or(false) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
    }
}

/// One probe, without its time limit (the caller's).
async fn ask(
    probe: &Probe,
    umask: Option<u32>,
    spawner: &crate::spawner::Spawner,
) -> Result<(), String> {
    match &probe.kind {
        ProbeKind::Tcp { address } => connect(address).await.map(drop),
        ProbeKind::SendExpect {
            address,
            send,
            expect,
        } => {
            let mut stream = connect(address).await?;
            if !send.is_empty() {
                stream
                    .write_all(send)
                    .await
                    .map_err(|e| format!("sending failed: {e}"))?;
            }
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                if String::from_utf8_lossy(&answer).contains(expect.as_str()) {
                    return Ok(());
                }
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading failed: {e}"))?;
                if n == 0 || answer.len() > MAX_ANSWER {
                    let got = String::from_utf8_lossy(&answer);
                    let got: String = got.trim().chars().take(80).collect();
                    return Err(format!("answered {got:?}, not {expect:?}"));
                }
                answer.extend_from_slice(&buf[..n]);
            }
        }
        ProbeKind::Http {
            url,
            status,
            insecure,
        } => {
            let (url, status, insecure, timeout) = (url.clone(), *status, *insecure, probe.timeout);
            tokio::task::spawn_blocking(move || http_get(&url, status, insecure, timeout))
                .await
                .map_err(|e| format!("probe task: {e}"))?
        }
        ProbeKind::Unix { path } => tokio::net::UnixStream::connect(path)
            .await
            .map(drop)
            .map_err(|e| format!("connecting to {} failed: {e}", path.display())),
        // Not asked: the process speaks (see supervisor::notify).
        ProbeKind::Notify => Ok(()),
        ProbeKind::Command { command } => {
            let spec = crate::exec::CommandSpec {
                command: command.clone(),
                env: Vec::new(),
                umask,
                timeout: probe.timeout,
            };
            let outcome = crate::exec::run(&spec, spawner).await;
            if outcome.ok() {
                Ok(())
            } else {
                Err(format!(
                    "probe command: {}",
                    crate::report::command_ending(&outcome.ending)
                ))
            }
        }
    }
}

/// GET `url`; good when the status is `status`, or any 2xx/3xx.
fn http_get(
    url: &str,
    status: Option<u16>,
    insecure: bool,
    timeout: Duration,
) -> Result<(), String> {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(insecure)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let got = response.status().as_u16();
    let good = match status {
        Some(want) => got == want,
        None => (200..400).contains(&got),
    };
    if good {
        Ok(())
    } else {
        Err(format!("GET {url} answered HTTP {got}"))
    }
}

async fn connect(address: &str) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address} failed: {e}"))
}
