//! The legacy pfile format, accepted as ProcessSaver's manual writes it:
//!
//! ```text
//! ##### PARAM #####               # common parameters
//! IPCKEY            = 0x1f000101  # shared memory key
//! MONITOR_INTERVAL  = 10
//! ##### PENT #####
//! /usr/sbin/sshd  :systemctl restart sshd :86400:3 :continue
//! ```
//!
//! A PENT line's path ends at the first `:`; grace, retry and action are
//! split from the right, so the restart command may itself contain `:`.

use std::{path::Path, time::Duration};

use super::{Diagnostic, Entry, MAX_ERRORS_PER_FILE, OnRetryOver, Pfile, hint, suggest};

/// Known PARAM keys, as the manual spells them.
const PARAM_KEYS: [&str; 4] = [
    "IPCKEY",
    "MSG_CHECK_INTERVAL",
    "MONITOR_INTERVAL",
    "SHM_DUMP_FILE",
];

/// Upper bounds that catch typos (an interval of a day is not a monitor).
const MAX_INTERVAL_SECS: u64 = 3600;
const MAX_GRACE_SECS: u64 = 366 * 86400;
const MAX_RETRY: u64 = 1000;

/// A `KEY = value` / `KEY value` line, with 1-based columns.
pub(super) struct KeyValue<'a> {
    pub key: &'a str,
    pub key_col: usize,
    pub value: &'a str,
    pub value_col: usize,
}

/// Cuts a comment: `#` at the start or after white space (so `a#b` in a
/// command survives).
pub(super) fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Column (1-based, in characters) of byte offset `at` in `line`.
pub(super) fn col(line: &str, at: usize) -> usize {
    line[..at].chars().count() + 1
}

/// [`key_value`] of line `n`, reporting a line that is not one.
pub(super) fn key_value_at<'a>(
    r: &mut Diagnostics,
    line: &'a str,
    n: usize,
) -> Option<KeyValue<'a>> {
    let kv = key_value(line);
    if kv.is_none() {
        let c = col(line, line.len() - line.trim_start().len());
        r.error(n, c, "expected `KEY = value`");
    }
    kv
}

/// The `KEY = value` lines of a file made of nothing else (psagent.conf,
/// ps_ssl.conf), with their line numbers; comments and blank lines are
/// skipped, anything else is reported.
pub(super) fn key_value_lines<'a>(
    r: &mut Diagnostics,
    text: &'a str,
) -> Vec<(usize, KeyValue<'a>)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = strip_comment(raw);
            if line.trim().is_empty() {
                return None;
            }
            key_value_at(r, line, i + 1).map(|kv| (i + 1, kv))
        })
        .collect()
}

/// Parses `KEY = value`, `KEY= value` or `KEY value` (comment already cut).
pub(super) fn key_value(line: &str) -> Option<KeyValue<'_>> {
    let start = line.len() - line.trim_start().len();
    let rest = &line[start..];
    let key_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if key_len == 0 {
        return None;
    }
    let key = &rest[..key_len];
    let mut after = &rest[key_len..];
    let trimmed = after.trim_start();
    after = trimmed.strip_prefix('=').unwrap_or(trimmed);
    let value = after.trim();
    let value_at = if value.is_empty() {
        line.len()
    } else {
        line.len() - after.trim_start().len()
    };
    Some(KeyValue {
        key,
        key_col: col(line, start),
        value,
        value_col: col(line, value_at),
    })
}

/// Key names match without regard to case or underscores (`MonitorInterval`).
pub(super) fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Collects a file's problems: the first [`MAX_ERRORS_PER_FILE`] in full,
/// the rest only counted (a file of garbage must not cost memory per line),
/// and said as one line when the file is done.
pub(super) struct Diagnostics<'a> {
    pub file: &'a Path,
    pub errors: &'a mut Vec<Diagnostic>,
    start: usize,
    more: usize,
}

impl Drop for Diagnostics<'_> {
    fn drop(&mut self) {
        if self.more > 0 {
            self.errors.push(Diagnostic {
                file: self.file.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("and {} more errors in this file", self.more),
            });
        }
    }
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a Path, errors: &'a mut Vec<Diagnostic>) -> Self {
        let start = errors.len();
        Diagnostics {
            file,
            errors,
            start,
            more: 0,
        }
    }

    pub fn error(&mut self, line: usize, col: usize, message: impl Into<String>) {
        if self.errors.len() - self.start >= MAX_ERRORS_PER_FILE {
            self.more += 1;
            return;
        }
        self.errors.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// An integer in `min..=max`, decimal or `0x` hex.
    pub fn number(
        &mut self,
        what: &str,
        text: &str,
        line: usize,
        col: usize,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse::<u64>(),
        };
        match parsed {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.error(
                    line,
                    col,
                    format!("{what} {n} is out of range: expected {min} to {max}"),
                );
                None
            }
            Err(_) if text.is_empty() => {
                self.error(line, col, format!("{what} is missing: expected a number"));
                None
            }
            Err(_) => {
                self.error(line, col, format!("{what} `{text}` is not a number"));
                None
            }
        }
    }
}

#[derive(PartialEq)]
enum Section {
    None,
    Param,
    Pent,
}

/// `##### PARAM #####` → Param, `##### PENT #####` → Pent.
fn section_header(trimmed: &str) -> Option<Section> {
    if !trimmed.starts_with('#') {
        return None;
    }
    let inner = trimmed.trim_matches('#').trim();
    let word = inner.split_whitespace().next().unwrap_or("");
    // Only a line of the shape `### WORD ###…` is a header, not any comment.
    let shaped = trimmed[trimmed.find(word).unwrap_or(0) + word.len()..]
        .trim_start()
        .starts_with('#');
    match word.to_ascii_uppercase().as_str() {
        "PARAM" if shaped => Some(Section::Param),
        "PENT" if shaped => Some(Section::Pent),
        _ => None,
    }
}

pub(super) fn parse(file: &Path, text: &str, errors: &mut Vec<Diagnostic>) -> Option<Pfile> {
    let mut r = Diagnostics::new(file, errors);
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_prefix("pfile_").unwrap_or(n))
        .unwrap_or("")
        .to_string();
    let mut pfile = Pfile {
        name,
        file: file.to_path_buf(),
        ipckey: None,
        monitor_interval: Pfile::DEFAULT_MONITOR_INTERVAL,
        msg_check_interval: Pfile::DEFAULT_MSG_CHECK_INTERVAL,
        shm_dump_file: None,
        entries: Vec::new(),
        groups: Vec::new(),
    };
    let mut section = Section::None;
    let mut pent_line = None;
    let mut pent_lines = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if let Some(s) = section_header(trimmed) {
            if s == Section::Pent {
                pent_line = Some(n);
            }
            section = s;
            continue;
        }
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        match section {
            Section::None => {
                let c = col(raw, raw.len() - raw.trim_start().len());
                r.error(
                    n,
                    c,
                    "expected `##### PARAM #####` or `##### PENT #####` before this line",
                );
            }
            Section::Param => param(&mut r, &mut pfile, line, n),
            Section::Pent => {
                pent_lines += 1;
                if let Some(e) = pent(&mut r, line, n) {
                    pfile.entries.push(e);
                }
            }
        }
    }
    match pent_line {
        None => r.error(
            0,
            0,
            "no `##### PENT #####` section: there is nothing to watch",
        ),
        Some(n) if pent_lines == 0 => r.error(
            n,
            1,
            "the PENT section has no entries: add one line per process to watch",
        ),
        _ => {}
    }
    // Returned even with errors: checks across files still see what parsed.
    Some(pfile)
}

fn param(r: &mut Diagnostics, pfile: &mut Pfile, line: &str, n: usize) {
    let Some(kv) = key_value_at(r, line, n) else {
        return;
    };
    let secs = |r: &mut Diagnostics, what| {
        r.number(what, kv.value, n, kv.value_col, 1, MAX_INTERVAL_SECS)
            .map(Duration::from_secs)
    };
    match normalize_key(kv.key).as_str() {
        "IPCKEY" => {
            pfile.ipckey = r
                .number("IPCKEY", kv.value, n, kv.value_col, 1, u32::MAX as u64)
                .map(|k| k as u32)
        }
        "MSGCHECKINTERVAL" => {
            if let Some(d) = secs(r, "MSG_CHECK_INTERVAL") {
                pfile.msg_check_interval = d;
            }
        }
        "MONITORINTERVAL" => {
            if let Some(d) = secs(r, "MONITOR_INTERVAL") {
                pfile.monitor_interval = d;
            }
        }
        "SHMDUMPFILE" => {
            if kv.value.starts_with('/') {
                pfile.shm_dump_file = Some(kv.value.into());
            } else {
                r.error(
                    n,
                    kv.value_col,
                    format!("SHM_DUMP_FILE `{}` must be an absolute path", kv.value),
                );
            }
        }
        _ => {
            let hint = hint(kv.key, &PARAM_KEYS);
            r.error(
                n,
                kv.key_col,
                format!("unknown PARAM key `{}`{hint}", kv.key),
            );
        }
    }
}

/// Fields of a PENT line with the byte offset each starts at (after spaces).
fn pent_fields(line: &str) -> Vec<(usize, &str)> {
    let Some(first) = line.find(':') else {
        return vec![field_at(line, 0, line.len())];
    };
    let mut fields = vec![field_at(line, 0, first)];
    let rest_at = first + 1;
    // Split the rest from the right into at most 4: restart, grace, retry, action.
    let rest = &line[rest_at..];
    let mut cuts: Vec<usize> = rest.rmatch_indices(':').map(|(i, _)| i).take(3).collect();
    cuts.reverse();
    let mut start = 0;
    for cut in cuts {
        fields.push(field_at(line, rest_at + start, rest_at + cut));
        start = cut + 1;
    }
    fields.push(field_at(line, rest_at + start, line.len()));
    fields
}

/// A field's text and where it starts; an empty field points just after
/// its separator.
fn field_at(line: &str, from: usize, to: usize) -> (usize, &str) {
    let text = &line[from..to];
    let lead = text.len() - text.trim_start().len();
    if text.trim().is_empty() {
        return (from, "");
    }
    (from + lead, text.trim())
}

const PENT_SHAPE: &str =
    "`<process path> : <restart command or -> : <grace seconds> : <retry count> : <action>`";

fn pent(r: &mut Diagnostics, line: &str, n: usize) -> Option<Entry> {
    let fields = pent_fields(line);
    if fields.len() != 5 {
        let c = col(line, fields[0].0);
        r.error(
            n,
            c,
            format!("expected 5 fields {PENT_SHAPE}, found {}", fields.len()),
        );
        return None;
    }
    let at = |i: usize| col(line, fields[i].0);
    let (path, restart, grace, retry, action) = (
        fields[0].1,
        fields[1].1,
        fields[2].1,
        fields[3].1,
        fields[4].1,
    );
    let mut ok = true;
    if !path.starts_with('/') {
        r.error(n, at(0), format!("process path `{path}` must be absolute"));
        ok = false;
    }
    let restart = match restart {
        "" => {
            r.error(
                n,
                at(1),
                "the restart command is empty: write `-` to only detect and report",
            );
            ok = false;
            None
        }
        "-" => None,
        cmd => Some(cmd.to_string()),
    };
    let grace = r.number("grace seconds", grace, n, at(2), 0, MAX_GRACE_SECS);
    let retry = r.number("retry count", retry, n, at(3), 0, MAX_RETRY);
    let action = parse_action(action);
    if action.is_none() {
        let hint = suggest(fields[4].1, &["continue", "switch"])
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        r.error(
            n,
            at(4),
            format!(
                "unknown action `{}`: expected `continue` or `switch`{hint}",
                fields[4].1
            ),
        );
    }
    let (Some(grace), Some(retry), Some(action), true) = (grace, retry, action, ok) else {
        return None;
    };
    let mut entry = Entry::new(path.into(), restart, grace, retry as u32, action);
    entry.line = n;
    Some(entry)
}

pub(super) fn parse_action(text: &str) -> Option<OnRetryOver> {
    match text.to_ascii_lowercase().as_str() {
        "continue" => Some(OnRetryOver::Continue),
        "switch" => Some(OnRetryOver::Switch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "##### PARAM #####               # ----- 共通パラメータ -----
IPCKEY            = 0x1f000101  # 共有メモリ識別子
MSG_CHECK_INTERVAL= 5           # メッセージキュー監視間隔(秒)
MONITOR_INTERVAL  = 10          # プロセス監視間隔(秒)
SHM_DUMP_FILE     = /var/opt/HA/PS/log/pcheck_OS_dump
##### PENT #####                # ----- 監視対象プロセス定義 -----
/usr/lib/systemd/systemd : -                       :0     :0 :continue
/usr/sbin/rsyslogd        :systemctl restart rsyslog :86400:3 :continue
/usr/sbin/crond           :systemctl restart crond   :86400:3 :continue
/usr/sbin/sshd            :systemctl restart sshd    :86400:3 :continue
/sbin/rpcbind             :systemctl restart rpcbind :86400:3 :continue
";

    fn parse_text(text: &str) -> Result<Pfile, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let pfile = parse(Path::new("pfile_t"), text, &mut errors);
        match (pfile, errors.is_empty()) {
            (Some(p), true) => Ok(p),
            _ => Err(errors),
        }
    }

    /// (line, col, start of message) of every error.
    fn errs(text: &str) -> Vec<(usize, usize, String)> {
        parse_text(text)
            .expect_err("expected errors")
            .into_iter()
            .map(|d| (d.line, d.col, d.message))
            .collect()
    }

    #[test]
    fn parses_the_seed_as_written() {
        let p = parse_text(SEED).unwrap();
        assert_eq!(p.name, "t");
        assert_eq!(p.ipckey, Some(0x1f000101));
        assert_eq!(p.msg_check_interval, Duration::from_secs(5));
        assert_eq!(p.monitor_interval, Duration::from_secs(10));
        assert_eq!(
            p.shm_dump_file.as_deref(),
            Some(Path::new("/var/opt/HA/PS/log/pcheck_OS_dump"))
        );
        assert_eq!(p.entries.len(), 5);
        let systemd = &p.entries[0];
        assert_eq!(systemd.path, Path::new("/usr/lib/systemd/systemd"));
        assert_eq!(systemd.restart, None);
        assert_eq!((systemd.grace, systemd.retry), (None, 0));
        let sshd = &p.entries[3];
        assert_eq!(sshd.restart.as_deref(), Some("systemctl restart sshd"));
        assert_eq!(sshd.grace, Some(Duration::from_secs(86400)));
        assert_eq!(
            (sshd.retry, sshd.action, sshd.line),
            (3, OnRetryOver::Continue, 10)
        );
    }

    #[test]
    fn accepts_windows_spellings_colons_and_any_case() {
        let p = parse_text(
            "##### PARAM #####\nMonitorInterval 3\nipc_key 0x10\n##### PENT #####\n\
             /opt/app/bin/app : /opt/app/bin/ctl start --at 12:30:00 : 60 : 2 : SWITCH\n",
        )
        .unwrap();
        assert_eq!(p.monitor_interval, Duration::from_secs(3));
        assert_eq!(p.ipckey, Some(0x10));
        let e = &p.entries[0];
        assert_eq!(
            e.restart.as_deref(),
            Some("/opt/app/bin/ctl start --at 12:30:00")
        );
        assert_eq!(
            (e.grace, e.retry, e.action),
            (Some(Duration::from_secs(60)), 2, OnRetryOver::Switch)
        );
    }

    #[test]
    fn reports_every_error_with_line_and_column() {
        let text = "##### PARAM #####
MONITOR_INTERVL = 10
MSG_CHECK_INTERVAL = often
IPCKEY = 0
##### PENT #####
/usr/sbin/sshd : restart : 10 : 3
usr/sbin/crond : - : 0 : 0 : continue
/usr/sbin/atd : - : 1d : 0 : continue
/usr/sbin/x : - : 0 : 5000 : continue
/usr/sbin/y : - : 0 : 0 : contineu
/usr/sbin/z :  : 0 : 0 : continue
";
        assert_eq!(
            errs(text),
            vec![
                (2, 1, "unknown PARAM key `MONITOR_INTERVL`; did you mean `MONITOR_INTERVAL`?".into()),
                (3, 22, "MSG_CHECK_INTERVAL `often` is not a number".into()),
                (4, 10, "IPCKEY 0 is out of range: expected 1 to 4294967295".into()),
                (6, 1, format!("expected 5 fields {PENT_SHAPE}, found 4")),
                (7, 1, "process path `usr/sbin/crond` must be absolute".into()),
                (8, 21, "grace seconds `1d` is not a number".into()),
                (9, 23, "retry count 5000 is out of range: expected 0 to 1000".into()),
                (10, 27, "unknown action `contineu`: expected `continue` or `switch`; did you mean `continue`?".into()),
                (11, 14, "the restart command is empty: write `-` to only detect and report".into()),
            ]
        );
    }

    #[test]
    fn an_empty_or_missing_pent_section_is_an_error() {
        assert_eq!(
            errs("##### PARAM #####\nIPCKEY = 1\n##### PENT #####\n# nothing yet\n"),
            vec![(
                3,
                1,
                "the PENT section has no entries: add one line per process to watch".into()
            )]
        );
        assert_eq!(
            errs("##### PARAM #####\nIPCKEY = 1\n"),
            vec![(
                0,
                0,
                "no `##### PENT #####` section: there is nothing to watch".into()
            )]
        );
        assert_eq!(
            errs(
                "/usr/sbin/sshd : - : 0 : 0 : continue\n##### PENT #####\n/a : - : 0 : 0 : continue\n"
            ),
            vec![(
                1,
                1,
                "expected `##### PARAM #####` or `##### PENT #####` before this line".into()
            )]
        );
    }

    #[test]
    fn comments_need_a_space_before_the_hash() {
        let p =
            parse_text("##### PENT #####\n/bin/a : echo a#b >/tmp/x : 0 : 1 : continue # note\n")
                .unwrap();
        assert_eq!(p.entries[0].restart.as_deref(), Some("echo a#b >/tmp/x"));
    }
}
