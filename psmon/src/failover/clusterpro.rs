//! The CLUSTERPRO X driver: `clpgrp -m GROUP` moves the failover group to
//! another server (as ProcessSaver's `switch` did, the group has the
//! pfile's name unless FAILOVER_RESOURCE says otherwise), then `clpgrp -n
//! GROUP` (the server the group runs on) is asked every 100 ms until it
//! names another server.
//!
//! There is no CLUSTERPRO on the machines psmon is built on: this driver
//! is tested against a stand-in `clpgrp` that records its arguments and
//! answers as the reference manual describes, not against the product.

use std::time::{Duration, Instant};

use super::{Step, hostname, retrying, tool};
use crate::facts::{Constraint, SwitchRequest};

const POLL: Duration = Duration::from_millis(100);

/// The server named in `clpgrp -n`'s answer: its first word that is not
/// the tool's "Command succeeded." line.
pub fn parse_server(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("command "))
        .find_map(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// Where group `g` runs now (`Ok(None)`: nowhere the tool says).
async fn server_of(g: &str, env: &[(String, String)], deadline: Instant) -> Step<Option<String>> {
    match tool("clpgrp", &["-n", g], env, deadline).await {
        Ok(said) if said.ok => Step::Done(parse_server(&said.stdout)),
        Ok(said)
            if said
                .complaint
                .to_ascii_lowercase()
                .contains("invalid group") =>
        {
            Step::GiveUp(format!(
                "failover group '{g}' is unknown to CLUSTERPRO ({}); set FAILOVER_RESOURCE in psagent.conf or failover_resource in the entry",
                said.complaint
            ))
        }
        Ok(said) => Step::Retry(said.complaint),
        Err(e) => Step::Retry(e),
    }
}

enum Sent {
    Now,
    Already(String),
}

pub(super) async fn switch(
    request: &SwitchRequest,
    deadline: Instant,
) -> (bool, String, Vec<Constraint>) {
    let begun = Instant::now();
    let g = request.resource.as_str();
    let env = request.env.as_slice();
    let this = hostname();
    let this = this.as_str();
    let sent = retrying(request, deadline, || async move {
        match server_of(g, env, deadline).await {
            Step::Done(Some(server)) if server != this => {
                return Step::Done(Sent::Already(server));
            }
            Step::Done(_) => {}
            Step::GiveUp(why) => return Step::GiveUp(why),
            Step::Retry(why) => return Step::Retry(why),
        }
        match tool("clpgrp", &["-m", g], env, deadline).await {
            Ok(said) if said.ok => Step::Done(Sent::Now),
            Ok(said) => Step::Retry(said.complaint),
            Err(e) => Step::Retry(e),
        }
    })
    .await;
    match sent {
        Err(why) => return (false, why, Vec::new()),
        Ok(Sent::Already(server)) => {
            return (
                true,
                format!("group '{g}' already started on {server}; nothing sent"),
                Vec::new(),
            );
        }
        Ok(Sent::Now) => {}
    }
    loop {
        let last = match server_of(g, env, deadline).await {
            Step::Done(Some(server)) if server != this => {
                let took = begun.elapsed().as_secs_f64();
                return (
                    true,
                    format!("group '{g}' started on {server} in {took:.2} s"),
                    Vec::new(),
                );
            }
            Step::Done(Some(server)) => format!("still on {server}"),
            Step::Done(None) => "not running on any server".into(),
            Step::GiveUp(why) | Step::Retry(why) => why,
        };
        if Instant::now() + POLL >= deadline {
            return (
                false,
                format!(
                    "`clpgrp -m {g}` was taken, but the group was not started on another server within {} s (FAILOVER_TIMEOUT); last seen: {last}",
                    request.timeout.as_secs()
                ),
                Vec::new(),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_a_group_runs_on() {
        assert_eq!(parse_server("server2\n").as_deref(), Some("server2"));
        assert_eq!(
            parse_server("Command succeeded.\nserver1\n").as_deref(),
            Some("server1")
        );
        assert_eq!(parse_server("\n"), None);
    }
}
