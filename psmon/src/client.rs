//! The operator's commands that talk to a running `psmon run` over the
//! control socket: `status`, `pause`, `resume`, `reload`, `test`,
//! `clear-failover`, `audit`.

use std::{fmt::Write as _, path::Path, time::Duration};

use serde_json::Value;

use crate::control::{self, ClientError, ControlRequest};

/// How a client command ended: what to print, and the exit code.
pub struct Done {
    /// What to print.
    pub out: String,
    /// The exit code.
    pub code: u8,
}

/// Sends `command`; refusals whose reason starts with `usage:` exit 2,
/// others 1, and no daemon at all 1.
pub fn run(socket: &Path, command: ControlRequest, json: bool) -> Result<Done, ClientError> {
    // A drill waits for the restart; anything else answers at once.
    let timeout = match command {
        ControlRequest::Test { .. } => Duration::from_secs(3600),
        _ => Duration::from_secs(30),
    };
    let result = match control::request(socket, &command, timeout) {
        Ok(result) => result,
        Err(ClientError::Refused(why)) => {
            let (code, why) = match why.strip_prefix("usage: ") {
                Some(rest) => (2, rest.to_string()),
                None => (1, why),
            };
            return Ok(Done {
                out: format!("psmon: {why}\n"),
                code,
            });
        }
        Err(e) => return Err(e),
    };
    let out = match (&command, json) {
        (_, true) => format!("{result:#}\n"),
        (ControlRequest::Status { .. }, false) => status_table(&result),
        (ControlRequest::Pause { .. }, _) => format!(
            "pfile '{}' paused: its {} process(es) are neither restarted nor reported until resume\n",
            result["pfile"].as_str().unwrap_or("?"),
            result["entries"]
        ),
        (ControlRequest::Resume { .. }, _) => format!(
            "pfile '{}' resumed: {} process(es) watched again\n",
            result["pfile"].as_str().unwrap_or("?"),
            result["entries"]
        ),
        (ControlRequest::Reload { pfile }, _) => match pfile {
            Some(p) => format!(
                "pfile '{p}' reloaded; {} process(es) watched in all\n",
                result["entries"]
            ),
            None => format!(
                "configuration reloaded; {} process(es) watched\n",
                result["entries"]
            ),
        },
        (ControlRequest::Test { .. }, _) => format!(
            "{}: killed pid {}; down after {}, back up (pid {}) after {}\n",
            result["path"].as_str().unwrap_or("?"),
            result["killed"],
            ms(&result["detection_ms"]),
            result["pid"],
            ms(&result["recovery_ms"]),
        ),
        (ControlRequest::ClearFailover { .. }, _) => {
            let cleared: Vec<&str> = result["cleared"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if cleared.is_empty() {
                "no failover constraints to clear\n".to_string()
            } else {
                format!("cleared: {}\n", cleared.join(", "))
            }
        }
        (ControlRequest::Ping, _) => format!("psmon pid {}\n", result["pid"]),
        (ControlRequest::Audit { .. }, false) => audit_lines(&result),
        #[cfg(feature = "fault-injection")]
        (ControlRequest::Fault { .. }, _) => format!("{result}\n"),
    };
    Ok(Done { out, code: 0 })
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(ms) if ms < 1000.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
        None => "-".into(),
    }
}

/// `psmon status` for people: an aligned table.
fn status_table(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "psmon pid {}, events from {}, {} lost",
        status["pid"],
        status["source"].as_str().unwrap_or("(none yet)"),
        status["lost_events"]
    );
    let header = [
        "PFILE",
        "PATH",
        "STATE",
        "PIDS",
        "SINCE",
        "ATTEMPTS",
        "LAST EXIT",
        "LAST FAILURE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(ToString::to_string).collect()];
    for e in status["entries"].as_array().into_iter().flatten() {
        let pids: Vec<String> = e["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["pid"].to_string())
            .collect();
        let since = e["since"]
            .as_str()
            .map(|s| s.replace('T', " ").chars().take(19).collect())
            .unwrap_or_else(|| "-".into());
        let last_exit = match &e["last_exit"] {
            Value::Null => "-".to_string(),
            x if x.get("code").is_some() => format!("code {}", x["code"]),
            x if x.get("signal").is_some() => format!("signal {}", x["signal"]),
            _ => "unknown".to_string(),
        };
        rows.push(vec![
            e["pfile"].as_str().unwrap_or("").into(),
            e["path"].as_str().unwrap_or("").into(),
            e["state"].as_str().unwrap_or("").into(),
            if pids.is_empty() {
                "-".into()
            } else {
                pids.join(",")
            },
            since,
            format!("{}/{}", e["attempts"], e["retry"]),
            last_exit,
            e["last_failure"].as_str().unwrap_or("-").into(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for e in status["entries"].as_array().into_iter().flatten() {
        if let Some(text) = e["failures"]["text"].as_str() {
            let _ = writeln!(
                out,
                "{} failing ({}): {text}",
                e["path"].as_str().unwrap_or(""),
                e["failures"]["class"].as_str().unwrap_or(""),
            );
        }
    }
    for g in status["groups"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "group {}: {}, {}/{} restarts in {} s; members {}",
            g["name"].as_str().unwrap_or(""),
            g["state"].as_str().unwrap_or(""),
            g["restarts"],
            g["allowed"],
            g["window_s"],
            g["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for c in status["failover_constraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "failover constraint {} on resource {} (pfile {}): clear with `psmon clear-failover`",
            c["id"].as_str().unwrap_or(""),
            c["resource"].as_str().unwrap_or(""),
            c["pfile"].as_str().unwrap_or(""),
        );
    }
    out
}

/// `psmon audit` for people: one line per record, oldest first.
fn audit_lines(result: &Value) -> String {
    let mut out = String::new();
    for r in result["records"].as_array().into_iter().flatten() {
        let at = r["time"]
            .as_f64()
            .map(|t| std::time::UNIX_EPOCH + Duration::from_secs_f64(t))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into());
        let who = match (r["pid"].as_u64(), r["comm"].as_str()) {
            (Some(pid), Some(comm)) => format!("uid {} (pid {pid} '{comm}')", r["uid"]),
            (Some(pid), None) => format!("uid {} (pid {pid})", r["uid"]),
            _ => format!("uid {}", r["uid"]),
        };
        let via = match r["via"].as_str() {
            Some("sighup") => " by SIGHUP",
            _ => "",
        };
        let pfile = r["pfile"]
            .as_str()
            .map(|p| format!(" pfile='{p}'"))
            .unwrap_or_default();
        let text = r["text"].as_str().filter(|t| !t.is_empty());
        let _ = writeln!(
            out,
            "{at}  {}{pfile}  {who}{via}  {}{}",
            r["action"].as_str().unwrap_or("?"),
            r["outcome"].as_str().unwrap_or("?"),
            text.map(|t| format!(": {t}")).unwrap_or_default(),
        );
    }
    if out.is_empty() {
        out.push_str("no operator actions recorded\n");
    }
    out
}
