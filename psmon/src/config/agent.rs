//! `psagent.conf` (daemon-wide settings, `KEY = value` like a pfile's PARAM
//! section) and `psenv` (`KEY=VALUE` environment for restart commands, with
//! `UMASK` applied rather than exported).

use std::{path::Path, path::PathBuf, time::Duration};

use super::{
    Diagnostic, FailoverDriver, FailoverMode, hint,
    pfile::{Diagnostics, col, key_value_lines, normalize_key},
};

/// LOG_LEVEL: the least a message must be to be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, scans and untracked processes too.
    Debug,
    /// What happened: restarts, Up, operators' requests.
    #[default]
    Info,
    /// What needs a look: a process Down, a slow probe.
    Warn,
    /// What failed.
    Error,
}

/// Daemon-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// LOG_LEVEL.
    pub log_level: LogLevel,
    /// Bound of the internal event queue; overflow = lost events = resync.
    pub event_queue_size: usize,
    /// Port of the HTTP endpoint (/healthz, /status, /metrics, the status
    /// page); 0 = off.
    pub heartbeat_port: u16,
    /// Address the endpoint listens on.
    pub heartbeat_address: std::net::IpAddr,
    /// Where events are POSTed (http or https); `None` = no push.
    pub push_url: Option<String>,
    /// Seconds between re-attach attempts of anything external.
    pub retry_interval: Duration,
    /// Run for `switch` entries when their retries are over.
    pub failover_command: Option<String>,
    /// How `switch` asks for failover.
    pub failover_driver: FailoverDriver,
    /// The cluster's resource or group; `None`: the pfile's (or group's) name.
    pub failover_resource: Option<String>,
    /// How the Pacemaker driver asks.
    pub failover_mode: FailoverMode,
    /// How long a cluster driver tries, and waits for the resource to start elsewhere.
    pub failover_timeout: Duration,
    /// Where psmon writes its log file.
    pub log_dir: PathBuf,
    /// Members of this group may use the control socket as root does.
    pub control_group: Option<String>,
    /// The flight recorder keeps, per entry, at most this many recent
    /// events of the watched process's tree …
    pub recorder_events: usize,
    /// … and none older than this.
    pub recorder_window: Duration,
    /// How often the event source's self-check runs; zero: never.
    pub self_check_interval: Duration,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            log_level: LogLevel::Info,
            event_queue_size: 2048,
            heartbeat_port: 0,
            heartbeat_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            push_url: None,
            retry_interval: Duration::from_secs(15),
            failover_command: None,
            failover_driver: FailoverDriver::Command,
            failover_resource: None,
            failover_mode: FailoverMode::Move,
            failover_timeout: Duration::from_secs(60),
            log_dir: PathBuf::from("/var/opt/HA/PS/log"),
            control_group: None,
            recorder_events: 64,
            recorder_window: Duration::from_secs(60),
            self_check_interval: Duration::from_secs(10),
        }
    }
}

impl Agent {
    /// The keys read only when psmon starts whose value differs in `new`:
    /// a reload keeps the running values of these.
    pub fn changed_at_start_only(&self, new: &Agent) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        check("LOG_DIR", self.log_dir != new.log_dir);
        check(
            "EVENT_QUEUE_SIZE",
            self.event_queue_size != new.event_queue_size,
        );
        check("RETRY_INTERVAL", self.retry_interval != new.retry_interval);
        check("HEARTBEAT_PORT", self.heartbeat_port != new.heartbeat_port);
        check(
            "HEARTBEAT_ADDRESS",
            self.heartbeat_address != new.heartbeat_address,
        );
        check("PUSH_URL", self.push_url != new.push_url);
        check("CONTROL_GROUP", self.control_group != new.control_group);
        changed
    }
}

const AGENT_KEYS: [&str; 16] = [
    "SELF_CHECK_INTERVAL",
    "HEARTBEAT_ADDRESS",
    "PUSH_URL",
    "FAILOVER_DRIVER",
    "FAILOVER_RESOURCE",
    "FAILOVER_MODE",
    "FAILOVER_TIMEOUT",
    "FLIGHT_RECORDER_EVENTS",
    "FLIGHT_RECORDER_SECONDS",
    "CONTROL_GROUP",
    "LOG_LEVEL",
    "EVENT_QUEUE_SIZE",
    "HEARTBEAT_PORT",
    "RETRY_INTERVAL",
    "FAILOVER_COMMAND",
    "LOG_DIR",
];

pub(super) fn parse_agent(file: &Path, text: &str, errors: &mut Vec<Diagnostic>) -> Agent {
    let mut r = Diagnostics::new(file, errors);
    let mut agent = Agent::default();
    for (n, kv) in key_value_lines(&mut r, text) {
        let (v, vc) = (kv.value, kv.value_col);
        match normalize_key(kv.key).as_str() {
            "LOGLEVEL" => match v.to_ascii_uppercase().as_str() {
                "DEBUG" => agent.log_level = LogLevel::Debug,
                "INFO" => agent.log_level = LogLevel::Info,
                "WARN" | "WARNING" => agent.log_level = LogLevel::Warn,
                "ERROR" => agent.log_level = LogLevel::Error,
                _ => r.error(
                    n,
                    vc,
                    format!("LOG_LEVEL `{v}`: expected DEBUG, INFO, WARN or ERROR"),
                ),
            },
            "EVENTQUEUESIZE" => {
                if let Some(q) = r.number("EVENT_QUEUE_SIZE", v, n, vc, 16, 1 << 20) {
                    agent.event_queue_size = q as usize;
                }
            }
            "HEARTBEATPORT" => {
                if let Some(p) = r.number("HEARTBEAT_PORT", v, n, vc, 0, 65535) {
                    agent.heartbeat_port = p as u16;
                }
            }
            "HEARTBEATADDRESS" => match v.parse() {
                Ok(a) => agent.heartbeat_address = a,
                Err(_) => r.error(
                    n,
                    vc,
                    format!("HEARTBEAT_ADDRESS `{v}` is not an IP address (such as 127.0.0.1, 0.0.0.0 or ::)"),
                ),
            },
            "PUSHURL" => {
                let scheme_ok = v.starts_with("http://") || v.starts_with("https://");
                if !scheme_ok || v.len() <= "https://".len() || v.contains(char::is_whitespace) {
                    r.error(
                        n,
                        vc,
                        format!("PUSH_URL `{v}` is not an http:// or https:// URL"),
                    );
                } else {
                    agent.push_url = Some(v.to_string());
                }
            }
            "RETRYINTERVAL" => {
                if let Some(s) = r.number("RETRY_INTERVAL", v, n, vc, 1, 3600) {
                    agent.retry_interval = Duration::from_secs(s);
                }
            }
            "FAILOVERCOMMAND" => {
                if v.is_empty() {
                    r.error(n, vc, "FAILOVER_COMMAND is empty");
                } else {
                    agent.failover_command = Some(v.to_string());
                }
            }
            "FAILOVERDRIVER" => match FailoverDriver::parse(v) {
                Ok(d) => agent.failover_driver = d,
                Err(e) => r.error(n, vc, e),
            },
            "FAILOVERRESOURCE" => {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    r.error(
                        n,
                        vc,
                        format!("FAILOVER_RESOURCE `{v}` is not a resource name"),
                    );
                } else {
                    agent.failover_resource = Some(v.to_string());
                }
            }
            "FAILOVERMODE" => match FailoverMode::parse(v) {
                Ok(m) => agent.failover_mode = m,
                Err(e) => r.error(n, vc, e),
            },
            "FAILOVERTIMEOUT" => {
                if let Some(s) = r.number("FAILOVER_TIMEOUT", v, n, vc, 1, 3600) {
                    agent.failover_timeout = Duration::from_secs(s);
                }
            }
            "CONTROLGROUP" => {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    r.error(n, vc, format!("CONTROL_GROUP `{v}` is not a group name"));
                } else {
                    agent.control_group = Some(v.to_string());
                }
            }
            "FLIGHTRECORDEREVENTS" => {
                if let Some(n) = r.number("FLIGHT_RECORDER_EVENTS", v, n, vc, 0, 4096) {
                    agent.recorder_events = n as usize;
                }
            }
            "FLIGHTRECORDERSECONDS" => {
                if let Some(s) = r.number("FLIGHT_RECORDER_SECONDS", v, n, vc, 1, 3600) {
                    agent.recorder_window = Duration::from_secs(s);
                }
            }
            "SELFCHECKINTERVAL" => {
                if let Some(s) = r.number("SELF_CHECK_INTERVAL", v, n, vc, 0, 3600) {
                    agent.self_check_interval = Duration::from_secs(s);
                }
            }
            "LOGDIR" => {
                if v.starts_with('/') {
                    agent.log_dir = v.into();
                } else {
                    r.error(n, vc, format!("LOG_DIR `{v}` must be an absolute path"));
                }
            }
            _ => {
                let hint = hint(kv.key, &AGENT_KEYS);
                r.error(
                    n,
                    kv.key_col,
                    format!("unknown psagent.conf key `{}`{hint}", kv.key),
                );
            }
        }
    }
    agent
}

/// The environment of restart and failover commands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Env {
    /// `KEY=VALUE` lines, in order.
    pub vars: Vec<(String, String)>,
    /// Applied with umask(2) in the child, not exported.
    pub umask: Option<u32>,
}

pub(super) fn parse_env(file: &Path, text: &str, errors: &mut Vec<Diagnostic>) -> Env {
    let mut r = Diagnostics::new(file, errors);
    let mut env = Env::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let at = raw.len() - line.len();
        let Some((key, value)) = line.split_once('=') else {
            r.error(n, col(raw, at), "expected `KEY=VALUE`");
            continue;
        };
        let key = key.trim();
        let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            r.error(
                n,
                col(raw, at),
                format!("`{key}` is not a valid environment variable name"),
            );
            continue;
        }
        let value = unquote(value.trim());
        if key == "UMASK" {
            match u32::from_str_radix(value, 8) {
                Ok(mask) if mask <= 0o777 => env.umask = Some(mask),
                _ => {
                    let vc = col(raw, raw.find('=').map_or(at, |e| e + 1));
                    r.error(
                        n,
                        vc,
                        format!("UMASK `{value}` is not an octal mask such as 022"),
                    );
                }
            }
        } else {
            env.vars.push((key.to_string(), value.to_string()));
        }
    }
    env
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_psagent_conf() {
        let mut errors = Vec::new();
        let text = "LOG_LEVEL        = INFO        # DEBUG / INFO / WARN / ERROR\n\
                    EVENT_QUEUE_SIZE = 2048        # 内部イベントキュー上限\n\
                    HEARTBEAT_PORT   = 65000       # Manager 送信ポート\n\
                    RETRY_INTERVAL   = 15          # 再接続間隔(秒)\n";
        let agent = parse_agent(Path::new("psagent.conf"), text, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(agent.event_queue_size, 2048);
        assert_eq!(agent.heartbeat_port, 65000);
        assert_eq!(agent.retry_interval, Duration::from_secs(15));
    }

    #[test]
    fn psagent_errors_have_positions() {
        let mut errors = Vec::new();
        parse_agent(
            Path::new("psagent.conf"),
            "LOG_LEVEL = LOUD\nHEARTBEAT_PORT = 70000\nLOGLEVL = INFO\n",
            &mut errors,
        );
        let got: Vec<_> = errors.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(1, 13), (2, 18), (3, 1)]);
        assert!(errors[2].message.contains("did you mean `LOG_LEVEL`"));
    }

    #[test]
    fn failover_driver_settings() {
        let mut errors = Vec::new();
        let agent = parse_agent(
            Path::new("psagent.conf"),
            "FAILOVER_DRIVER = pacemaker\nFAILOVER_RESOURCE = web\nFAILOVER_MODE = ban\nFAILOVER_TIMEOUT = 20\n",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(agent.failover_driver, FailoverDriver::Pacemaker);
        assert_eq!(agent.failover_resource.as_deref(), Some("web"));
        assert_eq!(agent.failover_mode, FailoverMode::Ban);
        assert_eq!(agent.failover_timeout, Duration::from_secs(20));

        let mut errors = Vec::new();
        parse_agent(
            Path::new("psagent.conf"),
            "FAILOVER_DRIVER = pacemker\nFAILOVER_MODE = sideways\nFAILOVER_TIMEOUT = 0\n",
            &mut errors,
        );
        let got: Vec<_> = errors.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(1, 19), (2, 17), (3, 20)]);
        assert!(
            errors[0].message.contains("did you mean `pacemaker`"),
            "{errors:?}"
        );
        assert!(
            errors[1]
                .message
                .contains("expected one of move, ban, fail"),
            "{errors:?}"
        );
    }

    #[test]
    fn psenv_sets_variables_and_umask() {
        let mut errors = Vec::new();
        let env = parse_env(
            Path::new("psenv"),
            "LANG=C.UTF-8\nexport PATH=\"/usr/sbin:/usr/bin\"\nUMASK=027\n1BAD=x\nUMASK=999\n",
            &mut errors,
        );
        assert_eq!(
            env.vars,
            vec![
                ("LANG".into(), "C.UTF-8".into()),
                ("PATH".into(), "/usr/sbin:/usr/bin".into())
            ]
        );
        assert_eq!(env.umask, Some(0o027));
        let got: Vec<_> = errors.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(4, 1), (5, 7)]);
    }
}
