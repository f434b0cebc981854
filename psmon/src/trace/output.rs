//! One event as a line: text for people, JSON for tools.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use serde_json::json;

use crate::event::{EventKind, ExitStatus, ProcEvent, monotonic_ns};

/// Wall-clock time of an event, from its monotonic timestamp.
pub(super) fn wall_time(event: &ProcEvent) -> SystemTime {
    let at = event.time.kernel_ns.unwrap_or(event.time.received_ns);
    SystemTime::now() - Duration::from_nanos(monotonic_ns().saturating_sub(at))
}

pub(super) fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().trim_start_matches("SIG").to_string())
        .unwrap_or_else(|_| signal.to_string())
}

pub(super) fn write_event(
    out: &mut impl Write,
    event: &ProcEvent,
    json: bool,
) -> anyhow::Result<()> {
    let time = humantime::format_rfc3339_micros(wall_time(event)).to_string();
    if json {
        let mut obj = json!({ "time": time, "event": event.name() });
        let map = obj.as_object_mut().expect("an object");
        if let EventKind::Lost { count } = event.kind {
            map.insert("count".into(), json!(count));
        }
        if let EventKind::Signal(s) = &event.kind {
            map.insert("pid".into(), json!(s.target));
            map.insert("signal".into(), json!(s.signal));
            map.insert("oom".into(), json!(s.oom));
            map.insert("si_code".into(), json!(s.code));
            map.insert("sender".into(), json!(s.sender));
        }
        if let Some(p) = event.process() {
            map.insert("pid".into(), json!(p.tgid));
            map.insert("tid".into(), json!(p.pid));
            map.insert("ppid".into(), json!(p.ppid));
            // Unknown (the process was gone before it could be read): null.
            map.insert(
                "comm".into(),
                json!((!p.comm.is_empty()).then_some(&p.comm)),
            );
            map.insert("path".into(), json!(p.path));
            map.insert("start_ticks".into(), json!(p.start.map(|s| s.ticks())));
        }
        if let EventKind::Exit { status, .. } = event.kind {
            let (code, signal, core) = match status {
                ExitStatus::Code(c) => (Some(c), None, false),
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => (None, Some(signal), core_dumped),
                ExitStatus::Unknown => (None, None, false),
            };
            map.insert("exit_code".into(), json!(code));
            map.insert("signal".into(), json!(signal));
            map.insert("core_dumped".into(), json!(core));
            map.insert(
                "lifetime_ms".into(),
                json!(event.lifetime().map(|d| d.as_secs_f64() * 1e3)),
            );
        }
        map.insert("kernel_ns".into(), json!(event.time.kernel_ns));
        map.insert("received_ns".into(), json!(event.time.received_ns));
        map.insert("cpu".into(), json!(event.time.cpu));
        serde_json::to_writer(&mut *out, &obj)?;
        writeln!(out)?;
        return Ok(());
    }
    let clock = &time[11..time.len() - 1]; // HH:MM:SS.uuuuuu of the UTC stamp
    let Some(p) = event.process() else {
        match &event.kind {
            EventKind::Lost { count: Some(n) } => writeln!(out, "{clock} LOST   {n} events lost")?,
            EventKind::Lost { count: None } => {
                writeln!(out, "{clock} LOST   events lost (count follows)")?
            }
            EventKind::Signal(s) => {
                let what = if s.oom {
                    "chosen by the OOM killer".to_string()
                } else {
                    format!("{} from", signal_name(s.signal))
                };
                writeln!(
                    out,
                    "{clock} signal {:>7} {what} pid {} '{}' uid {}{}",
                    s.target,
                    s.sender.pid,
                    s.sender.comm,
                    s.sender.uid,
                    s.sender
                        .parent
                        .as_ref()
                        .map(|(pid, comm)| format!(", parent '{comm}' pid {pid}"))
                        .unwrap_or_default()
                )?
            }
            _ => {}
        }
        return Ok(());
    };
    let path = p
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let comm = if p.comm.is_empty() { "-" } else { &p.comm };
    write!(
        out,
        "{clock} {:<6} {:>7} {:>7} {:<15} {}",
        event.name(),
        p.tgid,
        p.ppid,
        comm,
        path
    )?;
    if let EventKind::Exit { status, .. } = event.kind {
        match status {
            ExitStatus::Code(c) => write!(out, "  code={c}")?,
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                write!(out, "  signal={}", signal_name(signal))?;
                if core_dumped {
                    write!(out, " (core dumped)")?;
                }
            }
            ExitStatus::Unknown => write!(out, "  status=unknown")?,
        }
        if let Some(life) = event.lifetime() {
            write!(out, "  lived={}", format_duration(life))?;
        }
    }
    writeln!(out)?;
    Ok(())
}

pub(super) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{:.0}us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else {
        format!("{secs:.2}s")
    }
}
