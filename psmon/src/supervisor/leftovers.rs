//! What a failed restart attempt leaves behind, settled before the next
//! attempt: the instance that died may still be a zombie (a daemon whose
//! pidfile names it refuses to start), waited for until it is reaped; and
//! each restart command runs in a process group of its own, so once the
//! command has finished, whatever is still in that group (a server a
//! wrapper started that psmon never saw as the entry's, a helper that
//! hangs) belongs to the attempt that failed and must never run beside
//! the next one: it is stopped. A daemon that detached properly has left
//! the group (setsid) and is not touched.

use std::time::Duration;

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::time::{Instant, sleep};

use crate::{
    monitor::{LEFTOVER_GRACE, REAP_WAIT},
    proc,
};

/// How often a zombie or a group is looked at.
const POLL: Duration = Duration::from_millis(20);

/// How long the command itself (the group's leader) is waited for; its
/// own time limit normally ends it much sooner.
const COMMAND_WAIT: Duration = Duration::from_secs(3600);

/// Waits until `tgids` (the instances that died) are reaped, at most
/// [`REAP_WAIT`], then [`stop`]s what group `pgid` holds; returns `pgid`
/// if anything was stopped.
pub async fn settle(tgids: &[u32], pgid: Option<u32>) -> Option<u32> {
    let until = Instant::now() + REAP_WAIT;
    while tgids.iter().any(|&tgid| proc::is_going(tgid)) && Instant::now() < until {
        sleep(POLL).await;
    }
    match pgid {
        Some(pgid) => stop(pgid).await.then_some(pgid),
        None => None,
    }
}

/// Waits for the command that leads group `pgid` to finish, then stops
/// what it left in the group (SIGTERM, SIGKILL after [`LEFTOVER_GRACE`]).
/// Returns whether anything was left.
async fn stop(pgid: u32) -> bool {
    let group = Pid::from_raw(pgid as i32);
    let waited = Instant::now();
    let mut buf = Vec::with_capacity(512);
    while proc::read_stat(pgid, &mut buf).is_some_and(|s| !s.is_dead())
        && waited.elapsed() < COMMAND_WAIT
    {
        sleep(Duration::from_millis(100)).await;
    }
    if !exists(group) {
        return false;
    }
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let _ = killpg(group, signal);
        let until = Instant::now() + LEFTOVER_GRACE;
        while exists(group) && Instant::now() < until {
            sleep(POLL).await;
        }
        if !exists(group) {
            break;
        }
    }
    true
}

/// Whether any process (a zombie included) is still in the group.
fn exists(group: Pid) -> bool {
    killpg(group, None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[tokio::test]
    async fn what_a_finished_command_left_in_its_group_is_stopped() {
        // A command that starts a server in its group and exits at once.
        let mut command = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & exit 0"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = command.id();
        command.wait().unwrap();
        assert!(exists(Pid::from_raw(pgid as i32)), "the sleep is left");
        assert!(stop(pgid).await);
        // Its parent (init, or this test's subreaper) may not have reaped
        // it yet: what matters is that nothing in the group runs.
        let runs = proc::tgids().any(|t| {
            let mut buf = Vec::new();
            proc::read_stat(t, &mut buf).is_some_and(|s| !s.is_dead())
                && nix::unistd::getpgid(Some(Pid::from_raw(t as i32)))
                    .is_ok_and(|g| g.as_raw() as u32 == pgid)
        });
        assert!(!runs);
    }

    #[tokio::test]
    async fn an_empty_group_is_nothing_to_stop() {
        let mut command = std::process::Command::new("/bin/true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = command.id();
        command.wait().unwrap();
        assert!(!stop(pgid).await);
    }
}
