//! Each `[[entry]]`, its `[entry.probe]` and each `[[group]]` checked and
//! turned into the configuration's model; every mistake is a diagnostic at
//! its line and column.

use std::path::Path;

use toml::Spanned;

use super::{
    Checker, position,
    schema::{EntryToml, GroupToml, ProbeToml, UserToml},
    unit_restart,
};
use crate::config::{Entry, Group, Match, OnRetryOver, Owner, Probe, ProbeKind, Rule};

pub(super) fn entry(c: &mut Checker, spanned: &Spanned<EntryToml>) -> Option<Entry> {
    let t = spanned.get_ref();
    let before = c.errors.len();
    let (path, target) = match (&t.path, &t.unit, &t.cgroup) {
        (Some(p), None, None) => {
            if !p.get_ref().starts_with('/') {
                c.error(
                    p.span(),
                    format!("process path `{}` must be absolute", p.get_ref()),
                );
            }
            (p.get_ref().clone(), Match::Path)
        }
        (None, Some(u), None) => {
            let unit = u.get_ref();
            let valid = !unit.is_empty()
                && !unit.contains('/')
                && !unit.contains(char::is_whitespace)
                && unit.contains('.');
            if !valid {
                c.error(
                    u.span(),
                    format!("unit `{unit}` is not a systemd unit name such as sshd.service"),
                );
            }
            (unit.clone(), Match::Unit(unit.clone()))
        }
        (None, None, Some(g)) => {
            let dir = g.get_ref();
            if !dir.starts_with('/') {
                c.error(
                    g.span(),
                    format!("cgroup `{dir}` must be the absolute path of a cgroup directory"),
                );
            }
            (dir.clone(), Match::Cgroup(dir.into()))
        }
        _ => {
            c.error(
                spanned.span(),
                "an entry names what it watches with exactly one of path, unit or cgroup".into(),
            );
            return None;
        }
    };
    let restart = match t.restart.as_ref().map(|r| (r.get_ref().trim(), r.span())) {
        // A unit is restarted by systemd unless a command is given.
        None if matches!(target, Match::Unit(_)) => Some(unit_restart(&path)),
        None | Some(("-", _)) => None,
        Some(("", span)) => {
            c.error(
                span,
                "the restart command is empty: leave it out to only detect and report".into(),
            );
            None
        }
        Some((cmd, _)) => Some(cmd.to_string()),
    };
    let grace = c.int("grace", &t.grace, 0, 366 * 86400).unwrap_or(86400);
    let retry = c
        .int("retry", &t.retry, 0, 1000)
        .unwrap_or(if restart.is_some() { 3 } else { 0 });
    let action = c.action(&t.action, true);
    let mut e = Entry::new(path.into(), restart, grace as u64, retry as u32, action);
    e.matcher = target;
    if let (Some(pattern), true) = (&t.cmdline, e.matcher.by_cgroup()) {
        c.error(
            pattern.span(),
            "cmdline goes with a path rule: a unit's or cgroup's processes are all its own".into(),
        );
    } else if let Some(pattern) = &t.cmdline {
        match glob::Pattern::new(pattern.get_ref()) {
            Ok(p) => e.matcher = Match::Cmdline(p),
            Err(err) => c.error(
                pattern.span(),
                format!("cmdline is not a valid glob: {err}"),
            ),
        }
    }
    if let Some(min) = c.int("min", &t.min, 1, 100_000) {
        e.min = min as u32;
    }
    e.max = c.int("max", &t.max, 1, 100_000).map(|m| m as u32);
    if let (Some(max), Some(span)) = (e.max, t.max.as_ref().map(|m| m.span()))
        && max < e.min
    {
        c.error(span, format!("max {max} is below min {}", e.min));
    }
    if let Some(codes) = &t.stop_exit_codes {
        for code in codes.get_ref() {
            if !(0..=255).contains(code) {
                c.error(
                    codes.span(),
                    format!("exit code {code} is out of range: expected 0 to 255"),
                );
            }
        }
        e.stop_exit_codes = codes.get_ref().iter().map(|c| *c as i32).collect();
    }
    if let Some(d) = c.secs("restart_timeout", &t.restart_timeout, 1, 3600) {
        e.restart_timeout = d;
    }
    if let Some(d) = c.secs("start_wait", &t.start_wait, 0, 3600) {
        e.start_wait = d;
    }
    e.failover = t.failover.as_ref().map(|f| f.get_ref().clone());
    e.failover_choice =
        c.failover_choice(&t.failover_driver, &t.failover_resource, &t.failover_mode);
    if let Some(d) = c.secs_f("start_secs", &t.start_secs, 0.0, 3600.0) {
        e.start_secs = d;
    }
    if let Some(d) = c.secs_f("restart_backoff", &t.restart_backoff, 0.0, 3600.0) {
        e.restart_backoff = d;
    }
    // A restart stops counting once its process has stayed up this long:
    // by default ten times start_secs (at least 10 s); 0: never.
    let start = e.start_secs.max(std::time::Duration::from_secs(1));
    e.healthy = match c.secs_f("healthy_secs", &t.healthy_secs, 0.0, 366.0 * 86400.0) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(start * Entry::HEALTHY_START_SECS),
    };
    if let Some(d) = c.secs_f("restart_jitter", &t.restart_jitter, 0.0, 3600.0) {
        e.restart_jitter = d;
    }
    match c.secs_f("slow_retry_interval", &t.slow_retry_interval, 1.0, 86400.0) {
        Some(_) if action != OnRetryOver::RetrySlowly => c.error(
            t.slow_retry_interval.as_ref().map_or(0..0, |s| s.span()),
            "slow_retry_interval applies only with action = \"retry_slowly\"".into(),
        ),
        Some(d) => e.slow_retry_interval = d,
        None => {}
    }
    let main_only = t.main_only.as_ref().is_some_and(|m| *m.get_ref());
    match (&t.pidfile, main_only, &e.matcher) {
        (Some(p), _, _) if !p.get_ref().starts_with('/') => c.error(
            p.span(),
            format!("pidfile `{}` must be an absolute path", p.get_ref()),
        ),
        (Some(p), true, _) => c.error(
            p.span(),
            "pidfile and main_only both say which process counts: keep one".into(),
        ),
        (Some(p), false, _) => e.rule = Rule::Pidfile(p.get_ref().into()),
        (None, true, Match::Cmdline(_)) => c.error(
            t.main_only.as_ref().expect("set").span(),
            "main_only goes with a path rule; a cmdline pattern already names the main process"
                .into(),
        ),
        (None, true, Match::Path | Match::Unit(_) | Match::Cgroup(_)) => e.rule = Rule::MainOnly,
        (None, false, _) => {}
    }
    if let Some(count) = &t.count {
        match (count.get_ref().as_str(), &e.rule) {
            ("all", Rule::Lineage) => e.rule = Rule::All,
            ("all", _) => c.error(
                count.span(),
                "count = \"all\" and pidfile or main_only all say which process counts: keep one"
                    .into(),
            ),
            ("started", _) => {}
            (other, _) => c.error(
                count.span(),
                format!(
                    "count = \"{other}\" is not known: \"started\" (the default: what was started, not what it forked) or \"all\" (every matching process)"
                ),
            ),
        }
    }
    if let Some(p) = &t.probe {
        e.probe = probe(c, p).map(Box::new);
    }
    if let Some(user) = &t.user {
        match user.get_ref() {
            UserToml::Name(any) if any == "any" => e.owner = Owner::Any,
            UserToml::Name(name) => match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => e.owner = Owner::Uid(u.uid.as_raw()),
                _ => c.error(
                    user.span(),
                    format!(
                        "no user `{name}` on this host: name an existing user, a uid, or \"any\""
                    ),
                ),
            },
            UserToml::Id(uid) => match u32::try_from(*uid) {
                Ok(uid) => e.owner = Owner::Uid(uid),
                Err(_) => c.error(user.span(), format!("uid {uid} is out of range")),
            },
        }
    }
    e.line = position(c.text, spanned.span().start).0;
    (c.errors.len() == before).then_some(e)
}

/// `[entry.probe]`: how to tell a process that no longer answers.
fn probe(c: &mut Checker, spanned: &Spanned<ProbeToml>) -> Option<Probe> {
    let t = spanned.get_ref();
    let before = c.errors.len();
    let address = |c: &mut Checker| -> Option<String> {
        let Some(a) = &t.address else {
            c.error(
                t.kind.span(),
                format!(
                    "a `{}` probe needs an address = \"host:port\"",
                    t.kind.get_ref()
                ),
            );
            return None;
        };
        let text = a.get_ref();
        let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            c.error(a.span(), format!("probe address `{text}` is not host:port"));
            return None;
        }
        Some(text.clone())
    };
    let kind = match t.kind.get_ref().as_str() {
        "tcp" => address(c).map(|address| ProbeKind::Tcp { address }),
        "send_expect" => {
            let address = address(c);
            let send = match &t.send {
                Some(s) => match unescape(s.get_ref()) {
                    Ok(bytes) => Some(bytes),
                    Err(why) => {
                        c.error(s.span(), format!("send: {why}"));
                        None
                    }
                },
                None => Some(Vec::new()),
            };
            let expect = match &t.expect {
                Some(e) if !e.get_ref().is_empty() => Some(e.get_ref().clone()),
                Some(e) => {
                    c.error(
                        e.span(),
                        "expect is empty: it would match any answer".into(),
                    );
                    None
                }
                None => {
                    c.error(
                        t.kind.span(),
                        "a send_expect probe needs expect = \"…\"".into(),
                    );
                    None
                }
            };
            match (address, send, expect) {
                (Some(address), Some(send), Some(expect)) => Some(ProbeKind::SendExpect {
                    address,
                    send,
                    expect,
                }),
                _ => None,
            }
        }
        "http" => {
            let url = match (&t.url, &t.address) {
                (Some(u), _) => {
                    let text = u.get_ref();
                    let ok = ["http://", "https://"]
                        .iter()
                        .any(|p| text.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
                    if !ok {
                        c.error(
                            u.span(),
                            format!("probe url `{text}` must start with http:// or https://"),
                        );
                    }
                    ok.then(|| text.clone())
                }
                (None, Some(_)) => address(c).map(|a| format!("http://{a}/")),
                (None, None) => {
                    c.error(
                        t.kind.span(),
                        "an http probe needs url = \"http://…\" or address".into(),
                    );
                    None
                }
            };
            let status = c.int("status", &t.status, 100, 599).map(|s| s as u16);
            let insecure = t.insecure.as_ref().is_some_and(|i| *i.get_ref());
            url.map(|url| ProbeKind::Http {
                url,
                status,
                insecure,
            })
        }
        "unix" => match &t.path {
            Some(p) if p.get_ref().starts_with('/') => Some(ProbeKind::Unix {
                path: p.get_ref().into(),
            }),
            Some(p) => {
                c.error(
                    p.span(),
                    format!("probe path `{}` must be absolute", p.get_ref()),
                );
                None
            }
            None => {
                c.error(
                    t.kind.span(),
                    "a unix probe needs path = \"/run/…sock\"".into(),
                );
                None
            }
        },
        "command" => match &t.command {
            Some(cmd) if !cmd.get_ref().trim().is_empty() => Some(ProbeKind::Command {
                command: cmd.get_ref().clone(),
            }),
            _ => {
                c.error(
                    t.kind.span(),
                    "a command probe needs command = \"…\"".into(),
                );
                None
            }
        },
        "notify" => Some(ProbeKind::Notify),
        other => {
            c.error(
                t.kind.span(),
                format!(
                    "unknown probe kind `{other}`: expected tcp, send_expect, http, unix, command or notify"
                ),
            );
            None
        }
    };
    let mut probe = Probe::new(kind?);
    if let Some(d) = c.secs_f("interval", &t.interval, 0.1, 3600.0) {
        probe.interval = d;
    }
    if let Some(d) = c.secs_f("warn", &t.warn, 0.0, 3600.0) {
        probe.warn = d;
    }
    if let Some(d) = c.secs_f("timeout", &t.timeout, 0.1, 3600.0) {
        probe.timeout = d;
    }
    if let Some(n) = c.int("failures", &t.failures, 1, 100) {
        probe.failures = n as u32;
    }
    if let Some(d) = c.secs_f("start_grace", &t.start_grace, 0.0, 3600.0) {
        probe.start_grace = d;
    }
    if let Some(d) = c.secs_f("kill_grace", &t.kill_grace, 0.0, 3600.0) {
        probe.kill_grace = d;
    }
    (c.errors.len() == before).then_some(probe)
}

/// `\r \n \t \\ \xNN` in a probe's `send`.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16).map_err(|_| {
                    format!("\\x{hex} is not a byte: write \\xNN with two hex digits")
                })?;
                out.push(byte);
            }
            other => {
                return Err(format!(
                    "unknown escape \\{}: use \\r \\n \\t \\\\ or \\xNN",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

/// Adds "did you mean" to serde's unknown-field message.
/// `[[group]]`: entries restarted together, in order.
pub(super) fn group(c: &mut Checker, spanned: &Spanned<GroupToml>) -> Option<Group> {
    let t = spanned.get_ref();
    let before = c.errors.len();
    let name = t.name.get_ref().trim();
    if name.is_empty() {
        c.error(t.name.span(), "a group needs a name".into());
    }
    let mut members = Vec::new();
    let mut member_cols = Vec::new();
    for m in t.members.get_ref() {
        let path = m.get_ref();
        if !path.starts_with('/') {
            c.error(
                m.span(),
                format!("group member `{path}` must be an entry's absolute path"),
            );
        } else if members
            .iter()
            .any(|p: &std::path::PathBuf| p == Path::new(path))
        {
            c.error(m.span(), format!("{path} is named twice in this group"));
        } else {
            members.push(path.into());
            member_cols.push(position(c.text, m.span().start));
        }
    }
    if t.members.get_ref().is_empty() {
        c.error(
            t.members.span(),
            "a group needs members = [\"/path\", …]".into(),
        );
    }
    let action = c.action(&t.action, false);
    let g = Group {
        name: name.to_string(),
        members,
        restarts: c
            .int("restarts", &t.restarts, 0, 1000)
            .map_or(Group::DEFAULT_RESTARTS, |n| n as u32),
        window: c
            .secs("window", &t.window, 1, 366 * 86400)
            .unwrap_or(Group::DEFAULT_WINDOW),
        action,
        start_timeout: c
            .secs_f("start_timeout", &t.start_timeout, 0.1, 3600.0)
            .unwrap_or(Group::DEFAULT_START_TIMEOUT),
        kill_grace: c
            .secs_f("kill_grace", &t.kill_grace, 0.0, 3600.0)
            .unwrap_or(Group::DEFAULT_KILL_GRACE),
        failover_choice: c.failover_choice(
            &t.failover_driver,
            &t.failover_resource,
            &t.failover_mode,
        ),
        failover: t.failover.as_ref().map(|f| f.get_ref().clone()),
        line: position(c.text, spanned.span().start).0,
        member_cols,
    };
    (c.errors.len() == before).then_some(g)
}
