//! Crash loops in words: what an entry's recent failures have in common
//! ([`crate::monitor::crash_loop`]), as `status` and the Retry over
//! message say it.

use crate::{event::ExitStatus, monitor::crash_loop::CrashLoop};

/// `exits 78 (EX_CONFIG) 0.2 s after start, 3 times — restarting will not help`.
pub fn describe(c: &CrashLoop) -> String {
    match c {
        CrashLoop::Deterministic {
            status,
            lived,
            times,
        } => {
            let ending = match *status {
                ExitStatus::Code(code) => match exit_code_name(code) {
                    Some(name) => format!("exits {code} ({name})"),
                    None => format!("exits {code}"),
                },
                ExitStatus::Signal { signal, .. } => {
                    format!("dies of {}", crate::facts::signal_name(signal))
                }
                ExitStatus::Unknown => "ends".to_string(),
            };
            let when = match lived {
                Some(l) => format!(" {:.1} s after start", l.as_secs_f64()),
                None => " right after start".to_string(),
            };
            format!("{ending}{when}, {times} times — restarting will not help")
        }
        CrashLoop::CommandFails {
            started: false,
            times,
        } => {
            format!("its restart command fails, {times} times in a row — restarting will not help")
        }
        CrashLoop::CommandFails {
            started: true,
            times,
        } => format!(
            "no process comes of its restart command, {times} times in a row — check the command and the entry's path"
        ),
        CrashLoop::Resource { what, times } => {
            format!("killed for resources {times} times ({})", what.join(", "))
        }
        CrashLoop::Hung { times } => format!("hung and killed by its probe {times} times"),
        CrashLoop::External { senders, times } => format!(
            "killed by other processes {times} times: {}",
            senders.join(", ")
        ),
        CrashLoop::Mixed { times } => format!("{times} failures with different causes"),
    }
}

/// The sysexits.h names, and the shell's own codes.
fn exit_code_name(code: i32) -> Option<&'static str> {
    Some(match code {
        64 => "EX_USAGE",
        65 => "EX_DATAERR",
        66 => "EX_NOINPUT",
        67 => "EX_NOUSER",
        68 => "EX_NOHOST",
        69 => "EX_UNAVAILABLE",
        70 => "EX_SOFTWARE",
        71 => "EX_OSERR",
        72 => "EX_OSFILE",
        73 => "EX_CANTCREAT",
        74 => "EX_IOERR",
        75 => "EX_TEMPFAIL",
        76 => "EX_PROTOCOL",
        77 => "EX_NOPERM",
        78 => "EX_CONFIG",
        126 => "not executable",
        127 => "command not found",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn says_what_it_is() {
        let c = CrashLoop::Deterministic {
            status: ExitStatus::Code(78),
            lived: Some(Duration::from_millis(200)),
            times: 3,
        };
        assert_eq!(
            describe(&c),
            "exits 78 (EX_CONFIG) 0.2 s after start, 3 times — restarting will not help"
        );
        let c = CrashLoop::External {
            senders: vec!["pid 5 'kill' uid 1000".into()],
            times: 2,
        };
        assert_eq!(
            describe(&c),
            "killed by other processes 2 times: pid 5 'kill' uid 1000"
        );
    }
}
