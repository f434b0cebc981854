//! The supervisor's part of the audit trail ([`crate::audit`]): an
//! operator's request is recorded once its reply is known (or at once
//! when refused), a SIGHUP reload with what it changed; each record is
//! logged (and so pushed), kept for `/status` and `psmon audit`.

use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Back, Supervisor};
use crate::{
    audit::{Outcome, Record, Who},
    config::LogLevel,
    control::Reply,
};

/// Records shown by `/status`.
const IN_STATUS: usize = 20;

impl Supervisor {
    /// Records `action` on `pfile` by `who` and logs it.
    pub(super) fn audit(
        &mut self,
        who: Who,
        action: &'static str,
        pfile: Option<String>,
        outcome: Outcome,
    ) {
        let record = Record {
            at: SystemTime::now(),
            who,
            action,
            pfile,
            outcome,
        };
        let level = match record.outcome {
            Outcome::Done(_) => LogLevel::Info,
            Outcome::Failed(_) | Outcome::Refused(_) => LogLevel::Warn,
        };
        let mut fields: Vec<(&'static str, Value)> = vec![("audit", json!(true))];
        if let Value::Object(map) = record.to_json() {
            for key in ["action", "pfile", "uid", "pid", "comm", "via", "outcome"] {
                if let Some(v) = map.get(key) {
                    fields.push((key, v.clone()));
                }
            }
        }
        self.reporter.audit(level, &record.message(), &fields);
        self.trail.push(record);
    }

    /// The reply to an audited request: the action is recorded with how
    /// it ended once the answer is in, then the answer goes on to `reply`.
    pub(super) fn audited_reply(
        &self,
        who: Who,
        action: &'static str,
        pfile: Option<String>,
        reply: oneshot::Sender<Reply>,
    ) -> oneshot::Sender<Reply> {
        let (tx, answer) = oneshot::channel::<Reply>();
        let back = self.back_tx.clone();
        self.helpers.spawn(async move {
            let answer = answer.await;
            let outcome = match &answer {
                Ok(Ok(v)) => Outcome::Done(v["changes"].as_str().unwrap_or("").to_string()),
                // Not carried out as asked (no such pfile, a paused entry's drill).
                Ok(Err(why)) if why.starts_with("usage: ") => {
                    Outcome::Refused(why["usage: ".len()..].to_string())
                }
                Ok(Err(why)) => Outcome::Failed(why.clone()),
                Err(_) => Outcome::Failed("psmon stopped before it was done".into()),
            };
            let _ = back.send(Back::Audit {
                who,
                action,
                pfile,
                outcome,
            });
            if let Ok(answer) = answer {
                let _ = reply.send(answer);
            }
        });
        tx
    }

    /// `psmon audit`: the records at or after `since` (Unix seconds).
    pub(super) fn audit_reply(&self, since: Option<f64>) -> Reply {
        let since = since
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(s));
        let records: Vec<Value> = self.trail.since(since).map(Record::to_json).collect();
        Ok(json!({ "records": records }))
    }

    /// The last records, for `/status`.
    pub(super) fn audit_status(&self) -> Value {
        Value::Array(self.trail.last(IN_STATUS).map(Record::to_json).collect())
    }
}
