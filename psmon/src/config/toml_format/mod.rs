//! psmon's own configuration format (TOML): everything a pfile says, plus
//! match rules, instance counts, exit codes that mean "stopped on purpose",
//! per-entry time limits and failover command. It loads into the same
//! [`Pfile`] model; [`to_toml`] writes a pfile's model back out (`psmon convert`).

use std::{ops::Range, path::Path, time::Duration};

use toml::Spanned;

use super::{
    Diagnostic, FailoverChoice, FailoverDriver, FailoverMode, OnRetryOver, Pfile, hint,
    pfile::parse_action,
};

mod schema;
mod sections;
mod writer;

use schema::{ENTRY_KEYS, FILE_KEYS, File, GROUP_KEYS, PROBE_KEYS};
use sections::{entry, group};
pub use writer::{to_toml, unit_restart};

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
    fn action(&mut self, v: &Option<Spanned<String>>, entry: bool) -> OnRetryOver {
        let Some(a) = v else {
            return OnRetryOver::Continue;
        };
        match (parse_action(a.get_ref()), a.get_ref().as_str()) {
            (Some(action), _) => action,
            (None, "retry_slowly") if entry => OnRetryOver::RetrySlowly,
            (None, "retry_slowly") => {
                self.error(
                    a.span(),
                    "a group's action is `continue` or `switch`: `retry_slowly` is for entries"
                        .into(),
                );
                OnRetryOver::Continue
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
                OnRetryOver::Continue
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

#[cfg(test)]
mod tests;
