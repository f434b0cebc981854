use super::*;
use crate::config::{Match, ProbeKind};

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
        (2, OnRetryOver::Switch, 2, Some(4))
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
    assert_eq!(a.action, OnRetryOver::Continue);
    assert_eq!(c.healthy, Some(Duration::from_secs(30)));
    assert_eq!(c.action, OnRetryOver::RetrySlowly);
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
        parse_text("[[entry]]\npath = \"a\"\nretry = -1\naction = \"stop\"\nmin = 3\nmax = 2\n"),
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
