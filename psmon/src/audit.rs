//! The audit trail: every operator action — a pause, resume, reload, drill
//! or clear-failover over the control socket, a SIGHUP, and what a reload
//! changed — with who asked (uid, pid and comm from SO_PEERCRED; the
//! sender of a SIGHUP from its siginfo), what, and how it ended, refused
//! requests included. The supervisor keeps the last [`KEPT`], logs each
//! (`Command execute. [pause] pfile='app' by uid 1000 (pid 4242 'psmon'):
//! done`), and serves them to `/status` and `psmon audit`.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

/// Records kept.
pub const KEPT: usize = 1024;

/// Who asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    /// Their uid.
    pub uid: u32,
    /// Their pid, when known.
    pub pid: Option<u32>,
    /// Their name (`comm`), read when they asked.
    pub comm: Option<String>,
    /// How: over the control socket, or by a signal.
    pub via: Via,
}

/// How an operator asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Over the control socket.
    Socket,
    /// With SIGHUP.
    Sighup,
}

impl Who {
    /// A peer on the control socket or a signal's sender; its name read now
    /// (it may be gone: then none).
    pub fn of(uid: u32, pid: Option<u32>, via: Via) -> Who {
        Who {
            uid,
            pid,
            comm: pid.and_then(crate::proc::comm),
            via,
        }
    }

    fn describe(&self) -> String {
        let by = match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("uid {} (pid {pid} '{comm}')", self.uid),
            (Some(pid), None) => format!("uid {} (pid {pid})", self.uid),
            (None, _) => format!("uid {}", self.uid),
        };
        match self.via {
            Via::Socket => by,
            Via::Sighup => format!("SIGHUP from {by}"),
        }
    }
}

/// How an action ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out: what it did.
    Done(String),
    /// Tried, and failed: why.
    Failed(String),
    /// Not allowed: not carried out.
    Refused(String),
}

/// One operator action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When.
    pub at: SystemTime,
    /// Who asked.
    pub who: Who,
    /// `pause`, `resume`, `reload`, `test`, `clear-failover`.
    pub action: &'static str,
    /// The pfile it was for, if one.
    pub pfile: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Record {
    /// The log line.
    pub fn message(&self) -> String {
        let pfile = self
            .pfile
            .as_ref()
            .map(|p| format!(" pfile='{p}'"))
            .unwrap_or_default();
        let outcome = match &self.outcome {
            Outcome::Done(t) if t.is_empty() => "done".to_string(),
            Outcome::Done(t) => format!("done: {t}"),
            Outcome::Failed(t) => format!("failed: {t}"),
            Outcome::Refused(t) => format!("refused: {t}"),
        };
        format!(
            "Command execute. [{}]{pfile} by {}: {outcome}",
            self.action,
            self.who.describe()
        )
    }

    /// As `psmon audit --json` prints it.
    pub fn to_json(&self) -> Value {
        let (outcome, text) = match &self.outcome {
            Outcome::Done(t) => ("done", t),
            Outcome::Failed(t) => ("failed", t),
            Outcome::Refused(t) => ("refused", t),
        };
        let at = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        json!({
            "time": at,
            "action": self.action,
            "pfile": self.pfile,
            "uid": self.who.uid,
            "pid": self.who.pid,
            "comm": self.who.comm,
            "via": match self.who.via {
                Via::Socket => "socket",
                Via::Sighup => "sighup",
            },
            "outcome": outcome,
            "text": text,
        })
    }
}

/// The last [`KEPT`] records, oldest first.
#[derive(Debug, Default)]
pub struct Trail(VecDeque<Record>);

impl Trail {
    /// Keeps `record`, dropping the oldest past the bound.
    pub fn push(&mut self, record: Record) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back(record);
    }

    /// Those at or after `since` (all: `None`), oldest first.
    pub fn since(&self, since: Option<SystemTime>) -> impl Iterator<Item = &Record> {
        self.0
            .iter()
            .filter(move |r| since.is_none_or(|s| r.at >= s))
    }

    /// The last `n`, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Record> {
        self.0.iter().skip(self.0.len().saturating_sub(n))
    }
}

/// `psmon audit --since`: a time `d` ago.
pub fn ago(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secs: u64, outcome: Outcome) -> Record {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            who: Who {
                uid: 1000,
                pid: Some(4242),
                comm: Some("psmon".into()),
                via: Via::Socket,
            },
            action: "pause",
            pfile: Some("app".into()),
            outcome,
        }
    }

    #[test]
    fn says_who_what_and_how_it_ended() {
        let r = record(10, Outcome::Done(String::new()));
        assert_eq!(
            r.message(),
            "Command execute. [pause] pfile='app' by uid 1000 (pid 4242 'psmon'): done"
        );
        let mut refused = record(10, Outcome::Refused("permission denied".into()));
        refused.who.via = Via::Sighup;
        refused.pfile = None;
        refused.action = "reload";
        assert_eq!(
            refused.message(),
            "Command execute. [reload] by SIGHUP from uid 1000 (pid 4242 'psmon'): refused: permission denied"
        );
        assert_eq!(refused.to_json()["via"], "sighup");
    }

    #[test]
    fn keeps_the_last_and_filters_by_time() {
        let mut trail = Trail::default();
        for s in 0..(KEPT as u64 + 10) {
            trail.push(record(s, Outcome::Done(String::new())));
        }
        assert_eq!(trail.since(None).count(), KEPT);
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(KEPT as u64);
        assert_eq!(trail.since(Some(since)).count(), 10);
        let last: Vec<_> = trail.last(2).map(|r| r.at).collect();
        assert_eq!(last.len(), 2);
        assert!(last[0] < last[1], "oldest first");
    }
}
