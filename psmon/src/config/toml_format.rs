//! psmon's own configuration format (TOML): everything a pfile says, plus
//! match rules, instance counts, exit codes that mean "stopped on purpose",
//! per-entry time limits and failover command. It loads into the same
//! [`Pfile`] model; [`to_toml`] writes a pfile's model back out (`psmon convert`).

use std::{fmt::Write as _, ops::Range, path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Action, Diagnostic, Entry, FailoverChoice, FailoverDriver, FailoverMode, Group, Match, Owner,
    Pfile, Probe, ProbeKind, Rule, hint, pfile::parse_action,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ipckey: Option<Spanned<i64>>,
    monitor_interval: Option<Spanned<i64>>,
    msg_check_interval: Option<Spanned<i64>>,
    shm_dump_file: Option<Spanned<String>>,
    #[serde(default)]
    entry: Vec<Spanned<EntryToml>>,
    #[serde(default)]
    group: Vec<Spanned<GroupToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupToml {
    name: Spanned<String>,
    members: Spanned<Vec<Spanned<String>>>,
    restarts: Option<Spanned<i64>>,
    window: Option<Spanned<i64>>,
    action: Option<Spanned<String>>,
    start_timeout: Option<Spanned<f64>>,
    kill_grace: Option<Spanned<f64>>,
    failover_driver: Option<Spanned<String>>,
    failover_resource: Option<Spanned<String>>,
    failover_mode: Option<Spanned<String>>,
    failover: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryToml {
    path: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    grace: Option<Spanned<i64>>,
    retry: Option<Spanned<i64>>,
    action: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
    stop_exit_codes: Option<Spanned<Vec<i64>>>,
    restart_timeout: Option<Spanned<i64>>,
    start_wait: Option<Spanned<i64>>,
    failover: Option<Spanned<String>>,
    failover_driver: Option<Spanned<String>>,
    failover_resource: Option<Spanned<String>>,
    failover_mode: Option<Spanned<String>>,
    pidfile: Option<Spanned<String>>,
    main_only: Option<Spanned<bool>>,
    count: Option<Spanned<String>>,
    start_secs: Option<Spanned<f64>>,
    restart_backoff: Option<Spanned<f64>>,
    healthy_secs: Option<Spanned<f64>>,
    restart_jitter: Option<Spanned<f64>>,
    slow_retry_interval: Option<Spanned<f64>>,
    probe: Option<Spanned<ProbeToml>>,
    user: Option<Spanned<UserToml>>,
}

/// `user = "name"`, `user = "any"` or `user = 1000`.
#[derive(Deserialize)]
#[serde(untagged)]
enum UserToml {
    Id(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeToml {
    kind: Spanned<String>,
    address: Option<Spanned<String>>,
    send: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    status: Option<Spanned<i64>>,
    insecure: Option<Spanned<bool>>,
    interval: Option<Spanned<f64>>,
    warn: Option<Spanned<f64>>,
    timeout: Option<Spanned<f64>>,
    failures: Option<Spanned<i64>>,
    start_grace: Option<Spanned<f64>>,
    kill_grace: Option<Spanned<f64>>,
}

const FILE_KEYS: [&str; 6] = [
    "ipckey",
    "monitor_interval",
    "msg_check_interval",
    "shm_dump_file",
    "entry",
    "group",
];
const GROUP_KEYS: [&str; 11] = [
    "failover",
    "failover_driver",
    "failover_resource",
    "failover_mode",
    "name",
    "members",
    "restarts",
    "window",
    "action",
    "start_timeout",
    "kill_grace",
];
const PROBE_KEYS: [&str; 15] = [
    "kind",
    "path",
    "url",
    "status",
    "insecure",
    "address",
    "send",
    "expect",
    "command",
    "interval",
    "warn",
    "timeout",
    "failures",
    "start_grace",
    "kill_grace",
];
const ENTRY_KEYS: [&str; 27] = [
    "healthy_secs",
    "restart_jitter",
    "slow_retry_interval",
    "user",
    "unit",
    "cgroup",
    "failover_driver",
    "failover_resource",
    "failover_mode",
    "probe",
    "path",
    "restart",
    "grace",
    "retry",
    "action",
    "cmdline",
    "min",
    "max",
    "stop_exit_codes",
    "restart_timeout",
    "start_wait",
    "failover",
    "pidfile",
    "main_only",
    "count",
    "start_secs",
    "restart_backoff",
];

/// Line and column (1-based) of byte offset `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..at].chars().count() + 1)
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        let (line, col) = position(self.text, span.start);
        self.errors.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        });
    }

    fn int(&mut self, what: &str, v: &Option<Spanned<i64>>, min: i64, max: i64) -> Option<i64> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.error(
                v.span(),
                format!("{what} {n} is out of range: expected {min} to {max}"),
            );
            None
        }
    }

    /// `continue` (the default) or `switch`; an entry's may also be
    /// `retry_slowly`.
    fn action(&mut self, v: &Option<Spanned<String>>, entry: bool) -> Action {
        let Some(a) = v else {
            return Action::Continue;
        };
        match (parse_action(a.get_ref()), a.get_ref().as_str()) {
            (Some(action), _) => action,
            (None, "retry_slowly") if entry => Action::RetrySlowly,
            (None, "retry_slowly") => {
                self.error(
                    a.span(),
                    "a group's action is `continue` or `switch`: `retry_slowly` is for entries"
                        .into(),
                );
                Action::Continue
            }
            (None, other) => {
                let expected = match entry {
                    true => "`continue`, `switch` or `retry_slowly`",
                    false => "`continue` or `switch`",
                };
                self.error(
                    a.span(),
                    format!("unknown action `{other}`: expected {expected}"),
                );
                Action::Continue
            }
        }
    }

    /// `failover_driver`, `failover_resource` and `failover_mode`.
    fn failover_choice(
        &mut self,
        driver: &Option<Spanned<String>>,
        resource: &Option<Spanned<String>>,
        mode: &Option<Spanned<String>>,
    ) -> FailoverChoice {
        let mut choice = FailoverChoice::default();
        if let Some(d) = driver {
            match FailoverDriver::parse(d.get_ref()) {
                Ok(d) => choice.driver = Some(d),
                Err(e) => self.error(d.span(), e),
            }
        }
        if let Some(r) = resource {
            let name = r.get_ref();
            if name.is_empty() || name.contains(char::is_whitespace) {
                self.error(
                    r.span(),
                    format!("failover_resource `{name}` is not a resource name"),
                );
            } else {
                choice.resource = Some(name.clone());
            }
        }
        if let Some(m) = mode {
            match FailoverMode::parse(m.get_ref()) {
                Ok(m) => choice.mode = Some(m),
                Err(e) => self.error(m.span(), e),
            }
        }
        choice
    }

    /// Seconds, fractions allowed.
    fn secs_f(
        &mut self,
        what: &str,
        v: &Option<Spanned<f64>>,
        min: f64,
        max: f64,
    ) -> Option<Duration> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Some(Duration::from_secs_f64(n))
        } else {
            self.error(
                v.span(),
                format!("{what} {n} is out of range: expected {min} to {max} seconds"),
            );
            None
        }
    }

    fn secs(
        &mut self,
        what: &str,
        v: &Option<Spanned<i64>>,
        min: i64,
        max: i64,
    ) -> Option<Duration> {
        self.int(what, v, min, max)
            .map(|s| Duration::from_secs(s as u64))
    }
}

pub(super) fn parse(file: &Path, text: &str, errors: &mut Vec<Diagnostic>) -> Option<Pfile> {
    let parsed: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let (line, col) = e.span().map_or((0, 0), |s| position(text, s.start));
            errors.push(Diagnostic {
                file: file.to_path_buf(),
                line,
                col,
                message: explain(e.message()),
            });
            return None;
        }
    };
    let mut c = Checker { file, text, errors };
    let mut pfile = Pfile {
        name: file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string(),
        file: file.to_path_buf(),
        ipckey: c
            .int("ipckey", &parsed.ipckey, 1, u32::MAX as i64)
            .map(|k| k as u32),
        monitor_interval: c
            .secs("monitor_interval", &parsed.monitor_interval, 1, 3600)
            .unwrap_or(Pfile::DEFAULT_MONITOR_INTERVAL),
        msg_check_interval: c
            .secs("msg_check_interval", &parsed.msg_check_interval, 1, 3600)
            .unwrap_or(Pfile::DEFAULT_MSG_CHECK_INTERVAL),
        shm_dump_file: None,
        entries: Vec::new(),
        groups: Vec::new(),
    };
    if let Some(dump) = &parsed.shm_dump_file {
        if dump.get_ref().starts_with('/') {
            pfile.shm_dump_file = Some(dump.get_ref().into());
        } else {
            c.error(
                dump.span(),
                format!(
                    "shm_dump_file `{}` must be an absolute path",
                    dump.get_ref()
                ),
            );
        }
    }
    if parsed.entry.is_empty() && parsed.group.is_empty() {
        c.error(0..0, "no [[entry]]: there is nothing to watch".into());
    }
    for spanned in &parsed.entry {
        if let Some(e) = entry(&mut c, spanned) {
            pfile.entries.push(e);
        }
    }
    for spanned in &parsed.group {
        if let Some(g) = group(&mut c, spanned) {
            pfile.groups.push(g);
        }
    }
    // Returned even with errors: checks across files still see what parsed.
    Some(pfile)
}

fn entry(c: &mut Checker, spanned: &Spanned<EntryToml>) -> Option<Entry> {
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
        Some(_) if action != Action::RetrySlowly => c.error(
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
fn group(c: &mut Checker, spanned: &Spanned<GroupToml>) -> Option<Group> {
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

fn explain(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some(name) = rest.split('`').next() else {
        return message.to_string();
    };
    let known: &[&str] = if message.contains("`kind`") {
        &PROBE_KEYS
    } else if message.contains("`members`") {
        &GROUP_KEYS
    } else if message.contains("`path`") {
        &ENTRY_KEYS
    } else {
        &FILE_KEYS
    };
    format!("unknown key `{name}`{}", hint(name, known))
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// psmon's TOML for a pfile's model: what `psmon convert` prints.
pub fn to_toml(p: &Pfile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Converted from {} by `psmon convert`.",
        p.file.display()
    );
    if let Some(k) = p.ipckey {
        let _ = writeln!(out, "ipckey = {k:#x}");
    }
    let _ = writeln!(out, "monitor_interval = {}", p.monitor_interval.as_secs());
    let _ = writeln!(
        out,
        "msg_check_interval = {}",
        p.msg_check_interval.as_secs()
    );
    if let Some(d) = &p.shm_dump_file {
        let _ = writeln!(out, "shm_dump_file = {}", quote(&d.display().to_string()));
    }
    for e in &p.entries {
        let _ = writeln!(out, "\n[[entry]]");
        let _ = writeln!(out, "path = {}", quote(&e.path.display().to_string()));
        if let Some(r) = &e.restart {
            let _ = writeln!(out, "restart = {}", quote(r));
        }
        let _ = writeln!(out, "grace = {}", e.grace.map_or(0, |g| g.as_secs()));
        let _ = writeln!(out, "retry = {}", e.retry);
        let _ = writeln!(out, "action = \"{}\"", e.action.name());
        if let Match::Cmdline(p) = &e.matcher {
            let _ = writeln!(out, "cmdline = {}", quote(p.as_str()));
        }
        if e.min != 1 {
            let _ = writeln!(out, "min = {}", e.min);
        }
        if let Some(m) = e.max {
            let _ = writeln!(out, "max = {m}");
        }
        if !e.stop_exit_codes.is_empty() {
            let _ = writeln!(out, "stop_exit_codes = {:?}", e.stop_exit_codes);
        }
        if e.restart_timeout != Entry::DEFAULT_RESTART_TIMEOUT {
            let _ = writeln!(out, "restart_timeout = {}", e.restart_timeout.as_secs());
        }
        if e.start_wait != Entry::DEFAULT_START_WAIT {
            let _ = writeln!(out, "start_wait = {}", e.start_wait.as_secs());
        }
        if let Some(f) = &e.failover {
            let _ = writeln!(out, "failover = {}", quote(f));
        }
        // A pfile's budget counts every restart in its window.
        match e.healthy {
            None => {
                let _ = writeln!(out, "healthy_secs = 0");
            }
            Some(h) => {
                let _ = writeln!(out, "healthy_secs = {}", h.as_secs_f64());
            }
        }
        if !e.restart_jitter.is_zero() {
            let _ = writeln!(out, "restart_jitter = {}", e.restart_jitter.as_secs_f64());
        }
        if e.action == Action::RetrySlowly {
            let every = e.slow_retry_interval.as_secs_f64();
            let _ = writeln!(out, "slow_retry_interval = {every}");
        }
        match &e.rule {
            Rule::Lineage => {}
            Rule::All => {
                let _ = writeln!(out, "count = \"all\"");
            }
            Rule::MainOnly => {
                let _ = writeln!(out, "main_only = true");
            }
            Rule::Pidfile(p) => {
                let _ = writeln!(out, "pidfile = {}", quote(&p.display().to_string()));
            }
        }
    }
    out
}

/// The restart command of a `unit =` entry that names none: a unit with
/// systemd's own `Restart=` is *started* — the start job waits for
/// systemd's pending restart (or finds the unit started), so the unit is
/// started once; a restart job would stop the start systemd has begun and
/// start it again, and a few kills would run it into its start limit. A
/// unit without `Restart=` is restarted, which also clears what is left of
/// it. The unit's setting is read when the command runs.
pub fn unit_restart(unit: &str) -> String {
    format!(
        "if [ \"$(systemctl show -p Restart --value '{unit}')\" = no ]; then systemctl restart '{unit}'; else systemctl start '{unit}'; fi"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Pfile, Vec<(usize, usize, String)>> {
        let mut errors = Vec::new();
        let pfile = parse(Path::new("app.toml"), text, &mut errors);
        match (pfile, errors.is_empty()) {
            (Some(p), true) => Ok(p),
            _ => Err(errors
                .into_iter()
                .map(|d| (d.line, d.col, d.message))
                .collect()),
        }
    }

    #[test]
    fn parses_every_option() {
        let p = parse_text(
            r#"ipckey = 0x1f000102
monitor_interval = 5
[[entry]]
path = "/opt/app/bin/server"
restart = "/opt/app/bin/ctl start"
grace = 600
retry = 2
action = "switch"
cmdline = "*server --port 80*"
min = 2
max = 4
stop_exit_codes = [0, 3]
restart_timeout = 30
start_wait = 5
failover = "crm resource move app"
"#,
        )
        .unwrap();
        assert_eq!(p.name, "app");
        assert_eq!(p.ipckey, Some(0x1f000102));
        let e = &p.entries[0];
        assert_eq!(e.line, 3);
        assert_eq!(
            (e.retry, e.action, e.min, e.max),
            (2, Action::Switch, 2, Some(4))
        );
        assert_eq!(e.stop_exit_codes, vec![0, 3]);
        assert!(
            matches!(&e.matcher, Match::Cmdline(p) if p.matches("/opt/app/bin/server --port 80 -v"))
        );
        assert_eq!(e.failover.as_deref(), Some("crm resource move app"));
    }

    #[test]
    fn restarts_decay_jitter_and_retry_slowly() {
        let p = parse_text(
            "[[entry]]\npath = \"/a\"\nstart_secs = 2\n\
             [[entry]]\npath = \"/b\"\nhealthy_secs = 0\nrestart_jitter = 0.5\n\
             [[entry]]\npath = \"/c\"\nhealthy_secs = 30\naction = \"retry_slowly\"\nslow_retry_interval = 120\n",
        )
        .unwrap();
        let [a, b, c] = &p.entries[..] else {
            panic!("three entries")
        };
        assert_eq!(a.healthy, Some(Duration::from_secs(20)), "10 × start_secs");
        assert_eq!(b.healthy, None, "0: every restart counts in the window");
        assert_eq!(b.restart_jitter, Duration::from_millis(500));
        assert_eq!(a.action, Action::Continue);
        assert_eq!(c.healthy, Some(Duration::from_secs(30)));
        assert_eq!(c.action, Action::RetrySlowly);
        assert_eq!(c.slow_retry_interval, Duration::from_secs(120));
        // Written out and read back, the same.
        let again = parse_text(&to_toml(&p)).unwrap();
        assert_eq!(again.entries[1].healthy, None);
        assert_eq!(
            again.entries[2].slow_retry_interval,
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_text("[[entry]]\npath = \"/a\"\nslow_retry_interval = 5\n"),
            Err(vec![(
                3,
                23,
                "slow_retry_interval applies only with action = \"retry_slowly\"".into()
            )])
        );
        assert_eq!(
            parse_text("[[group]]\nname = \"g\"\nmembers = [\"/a\"]\naction = \"retry_slowly\"\n"),
            Err(vec![(
                4,
                10,
                "a group's action is `continue` or `switch`: `retry_slowly` is for entries".into()
            )])
        );
    }

    #[test]
    fn errors_have_line_and_column() {
        assert_eq!(
            parse_text("[[entry]]\npath = \"/a\"\nretrys = 3\n"),
            Err(vec![(
                3,
                1,
                "unknown key `retrys`; did you mean `retry`?".into()
            )])
        );
        assert_eq!(
            parse_text(
                "[[entry]]\npath = \"a\"\nretry = -1\naction = \"stop\"\nmin = 3\nmax = 2\n"
            ),
            Err(vec![
                (2, 8, "process path `a` must be absolute".into()),
                (3, 9, "retry -1 is out of range: expected 0 to 1000".into()),
                (
                    4,
                    10,
                    "unknown action `stop`: expected `continue`, `switch` or `retry_slowly`".into()
                ),
                (6, 7, "max 2 is below min 3".into()),
            ])
        );
        assert_eq!(
            parse_text("monitor_interval = 5\n"),
            Err(vec![(
                1,
                1,
                "no [[entry]]: there is nothing to watch".into()
            )])
        );
        let broken = parse_text("[[entry]\npath = 1\n").unwrap_err();
        assert_eq!((broken[0].0, broken[0].1), (1, 9), "{broken:?}");
    }

    #[test]
    fn failover_choices_of_entries_and_groups() {
        let p = parse_text(
            "[[entry]]\npath = \"/a\"\nfailover_driver = \"pacemaker\"\nfailover_resource = \"web\"\nfailover_mode = \"fail\"\n\
             [[group]]\nname = \"g\"\nmembers = [\"/a\"]\nfailover_driver = \"clusterpro\"\n",
        )
        .unwrap();
        let e = &p.entries[0].failover_choice;
        assert_eq!(e.driver, Some(FailoverDriver::Pacemaker));
        assert_eq!(e.resource.as_deref(), Some("web"));
        assert_eq!(e.mode, Some(FailoverMode::Fail));
        assert_eq!(
            p.groups[0].failover_choice.driver,
            Some(FailoverDriver::Clusterpro)
        );
        assert_eq!(
            parse_text(
                "[[entry]]\npath = \"/a\"\nfailover_driver = \"pacemkr\"\nfailover_resource = \"a b\"\n"
            ),
            Err(vec![
                (
                    3,
                    19,
                    "unknown failover driver `pacemkr`; did you mean `pacemaker`?".into()
                ),
                (
                    4,
                    21,
                    "failover_resource `a b` is not a resource name".into()
                ),
            ])
        );
    }

    #[test]
    fn a_unit_with_restart_of_its_own_is_started_not_restarted() {
        let command = unit_restart("ssh.service");
        assert!(
            command.contains("systemctl start 'ssh.service'"),
            "{command}"
        );
        assert!(
            command.contains("systemctl restart 'ssh.service'"),
            "{command}"
        );
        assert!(command.contains("-p Restart"), "{command}");
    }

    #[test]
    fn units_and_cgroups_are_targets() {
        let p = parse_text(
            "[[entry]]\nunit = \"sshd.service\"\n[[entry]]\ncgroup = \"/sys/fs/cgroup/app\"\nrestart = \"/opt/app/start\"\n",
        )
        .unwrap();
        assert_eq!(p.entries[0].matcher, Match::Unit("sshd.service".into()));
        assert_eq!(p.entries[0].path, Path::new("sshd.service"));
        // systemd restarts a unit unless a command is given.
        assert_eq!(
            p.entries[0].restart.as_deref(),
            Some(unit_restart("sshd.service").as_str())
        );
        assert_eq!(
            p.entries[1].matcher,
            Match::Cgroup("/sys/fs/cgroup/app".into())
        );
        let errors = parse_text(
            "[[entry]]\npath = \"/a\"\nunit = \"a.service\"\n[[entry]]\ncgroup = \"app\"\n[[entry]]\nunit = \"a b\"\ncmdline = \"x*\"\n",
        )
        .unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.2.as_str()).collect();
        assert!(
            messages[0].contains("exactly one of path, unit or cgroup"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("must be the absolute path of a cgroup directory"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("is not a systemd unit name"),
            "{messages:?}"
        );
        assert!(
            messages[3].contains("cmdline goes with a path rule"),
            "{messages:?}"
        );
    }

    #[test]
    fn probes_are_checked_with_positions() {
        let ok = "[[entry]]\npath = \"/usr/bin/redis-server\"\n[entry.probe]\nkind = \"send_expect\"\naddress = \"127.0.0.1:6379\"\nsend = \"PING\\r\\n\\x00\"\nexpect = \"+PONG\"\ninterval = 0.5\n";
        let p = parse_text(ok).unwrap();
        let probe = p.entries[0].probe.as_ref().unwrap();
        assert_eq!(
            probe.kind,
            ProbeKind::SendExpect {
                address: "127.0.0.1:6379".into(),
                send: b"PING\r\n\0".to_vec(),
                expect: "+PONG".into()
            }
        );
        assert_eq!(probe.interval, Duration::from_millis(500));
        assert_eq!(probe.timeout, Duration::from_secs(10));
        for (text, says) in [
            ("kind = \"ping\"", "unknown probe kind `ping`"),
            (
                "kind = \"tcp\"\naddress = \"localhost\"",
                "is not host:port",
            ),
            ("kind = \"tcp\"", "needs an address"),
            ("kind = \"send_expect\"\naddress = \"h:1\"", "needs expect"),
            (
                "kind = \"send_expect\"\naddress = \"h:1\"\nexpect = \"x\"\nsend = \"\\\\q\"",
                "unknown escape",
            ),
            (
                "kind = \"tcp\"\naddress = \"h:1\"\ntimout = 3",
                "did you mean `timeout`",
            ),
            ("kind = \"command\"", "needs command"),
            ("kind = \"unix\"", "needs path"),
            ("kind = \"http\"", "needs url"),
            ("kind = \"http\"\nurl = \"ftp://x\"", "must start with http"),
            (
                "kind = \"http\"\nurl = \"http://h/\"\nstatus = 99",
                "status 99 is out of range",
            ),
            ("kind = \"unix\"\npath = \"x.sock\"", "must be absolute"),
            (
                "kind = \"tcp\"\naddress = \"h:1\"\nfailures = 0",
                "failures 0 is out of range",
            ),
        ] {
            let text = format!("[[entry]]\npath = \"/bin/x\"\n[entry.probe]\n{text}\n");
            let errors = parse_text(&text).unwrap_err();
            let joined = errors
                .iter()
                .map(|(l, c, m)| format!("{l}:{c}: {m}"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(joined.contains(says), "{text}: {joined}");
            assert!(
                errors.iter().all(|(l, c, _)| *l >= 4 && *c >= 1),
                "{joined}"
            );
        }
    }
}
