//! The TOML file's shape as serde reads it, and the keys each table
//! knows (for "did you mean" on an unknown key).

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) ipckey: Option<Spanned<i64>>,
    pub(super) monitor_interval: Option<Spanned<i64>>,
    pub(super) msg_check_interval: Option<Spanned<i64>>,
    pub(super) shm_dump_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) entry: Vec<Spanned<EntryToml>>,
    #[serde(default)]
    pub(super) group: Vec<Spanned<GroupToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupToml {
    pub(super) name: Spanned<String>,
    pub(super) members: Spanned<Vec<Spanned<String>>>,
    pub(super) restarts: Option<Spanned<i64>>,
    pub(super) window: Option<Spanned<i64>>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) start_timeout: Option<Spanned<f64>>,
    pub(super) kill_grace: Option<Spanned<f64>>,
    pub(super) failover_driver: Option<Spanned<String>>,
    pub(super) failover_resource: Option<Spanned<String>>,
    pub(super) failover_mode: Option<Spanned<String>>,
    pub(super) failover: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryToml {
    pub(super) path: Option<Spanned<String>>,
    pub(super) unit: Option<Spanned<String>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) restart: Option<Spanned<String>>,
    pub(super) grace: Option<Spanned<i64>>,
    pub(super) retry: Option<Spanned<i64>>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) cmdline: Option<Spanned<String>>,
    pub(super) min: Option<Spanned<i64>>,
    pub(super) max: Option<Spanned<i64>>,
    pub(super) stop_exit_codes: Option<Spanned<Vec<i64>>>,
    pub(super) restart_timeout: Option<Spanned<i64>>,
    pub(super) start_wait: Option<Spanned<i64>>,
    pub(super) failover: Option<Spanned<String>>,
    pub(super) failover_driver: Option<Spanned<String>>,
    pub(super) failover_resource: Option<Spanned<String>>,
    pub(super) failover_mode: Option<Spanned<String>>,
    pub(super) pidfile: Option<Spanned<String>>,
    pub(super) main_only: Option<Spanned<bool>>,
    pub(super) count: Option<Spanned<String>>,
    pub(super) start_secs: Option<Spanned<f64>>,
    pub(super) restart_backoff: Option<Spanned<f64>>,
    pub(super) healthy_secs: Option<Spanned<f64>>,
    pub(super) restart_jitter: Option<Spanned<f64>>,
    pub(super) slow_retry_interval: Option<Spanned<f64>>,
    pub(super) probe: Option<Spanned<ProbeToml>>,
    pub(super) user: Option<Spanned<UserToml>>,
}

/// `user = "name"`, `user = "any"` or `user = 1000`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum UserToml {
    Id(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProbeToml {
    pub(super) kind: Spanned<String>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) send: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) status: Option<Spanned<i64>>,
    pub(super) insecure: Option<Spanned<bool>>,
    pub(super) interval: Option<Spanned<f64>>,
    pub(super) warn: Option<Spanned<f64>>,
    pub(super) timeout: Option<Spanned<f64>>,
    pub(super) failures: Option<Spanned<i64>>,
    pub(super) start_grace: Option<Spanned<f64>>,
    pub(super) kill_grace: Option<Spanned<f64>>,
}

pub(super) const FILE_KEYS: [&str; 6] = [
    "ipckey",
    "monitor_interval",
    "msg_check_interval",
    "shm_dump_file",
    "entry",
    "group",
];
pub(super) const GROUP_KEYS: [&str; 11] = [
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
pub(super) const PROBE_KEYS: [&str; 15] = [
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
pub(super) const ENTRY_KEYS: [&str; 27] = [
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
