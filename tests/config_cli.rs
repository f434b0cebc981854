//! `psmon check` and `psmon convert` through the real binary, and every
//! sample in conf/ loaded and validated.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use psmon::config::{Config, LoadOptions};
use support::TempDir;

fn psmon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(args)
        .output()
        .unwrap()
}

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

/// Checked as content: in a fresh clone the files belong to whoever cloned.
const INSECURE: LoadOptions = LoadOptions { insecure: true };

#[test]
fn every_sample_in_conf_loads() {
    let config = Config::load_dir(&conf_dir(), INSECURE).unwrap();
    assert_eq!(config.pfiles.len(), 2);
    assert_eq!(config.entries().count(), 16);
    let matchers: Vec<&psmon::config::Match> = config.entries().map(|(_, e)| &e.matcher).collect();
    assert!(matchers.contains(&&psmon::config::Match::Unit("chronyd.service".into())));
    assert_eq!(config.groups().count(), 1, "the sample group loads");
    assert!(
        config.entries().any(|(_, e)| e.probe.is_some()),
        "the sample hang probe loads"
    );
    let rules: Vec<&psmon::config::Rule> = config.entries().map(|(_, e)| &e.rule).collect();
    assert!(rules.contains(&&psmon::config::Rule::Pidfile("/run/nginx.pid".into())));
    assert!(rules.contains(&&psmon::config::Rule::Pidfile(
        "/var/spool/postfix/pid/master.pid".into()
    )));
    // By default, what was started counts (apache2, the pfiles' lines).
    assert!(rules.contains(&&psmon::config::Rule::Lineage));
    assert!(!rules.contains(&&psmon::config::Rule::All));
    assert_eq!(
        config.agent.failover_command.as_deref(),
        Some("clpgrp -m failover-app")
    );
    assert_eq!(config.env.umask, Some(0o022));
    let demo = Config::load_dir(&conf_dir().join("demo"), INSECURE).unwrap();
    assert_eq!(demo.entries().count(), 1);
    // Every file there is one psmon reads: nothing is silently ignored.
    for dir in [conf_dir(), conf_dir().join("demo")] {
        for file in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if file.is_file() {
                let out = psmon(&["check", "--insecure-config", file.to_str().unwrap()]);
                assert!(out.status.success(), "{}: {out:?}", file.display());
            }
        }
    }
}

#[test]
fn check_reports_every_error_with_position_and_exits_2() {
    let dir = TempDir::new("check");
    let d = &dir.0;
    std::fs::write(
        d.join("pfile_a"),
        "##### PARAM #####\nIPCKEY = 0x10\nMONITOR_INTERVL = 5\n##### PENT #####\n/usr/sbin/sshd : - : 0 : 0 : continue\nrelative/path : - : 0 : 0 : continue\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pfile_b"),
        "##### PARAM #####\nIPCKEY = 16\n##### PENT #####\n/usr/sbin/sshd : - : 0 : 0 : restart\n/usr/sbin/crond : - : 0 : 0 : continue\n/usr/sbin/sshd : - : 0 : 0 : continue\n",
    )
    .unwrap();
    std::fs::write(
        d.join("app.toml"),
        "[[entry]]\npath = \"/opt/x\"\nretyr = 1\n",
    )
    .unwrap();
    let out = psmon(&["check", "--insecure-config", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let a = d.join("pfile_a").display().to_string();
    let b = d.join("pfile_b").display().to_string();
    let t = d.join("app.toml").display().to_string();
    for expected in [
        format!("{a}:3:1: unknown PARAM key `MONITOR_INTERVL`; did you mean `MONITOR_INTERVAL`?"),
        format!("{a}:6:1: process path `relative/path` must be absolute"),
        format!("{b}:4:30: unknown action `restart`: expected `continue` or `switch`"),
        format!("{b}:6:1: process /usr/sbin/sshd is already watched at {a}:5"),
        format!("{t}:3:1: unknown key `retyr`; did you mean `retry`?"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("6 configuration errors"), "{err}");
}

#[test]
fn cross_file_duplicates_are_errors() {
    let dir = TempDir::new("dup");
    let d = &dir.0;
    let pent = "##### PENT #####\n/usr/sbin/sshd : - : 0 : 0 : continue\n";
    std::fs::write(
        d.join("pfile_a"),
        format!("##### PARAM #####\nIPCKEY = 0x10\n{pent}"),
    )
    .unwrap();
    std::fs::write(
        d.join("pfile_b"),
        format!("##### PARAM #####\nIPCKEY = 16\n{pent}"),
    )
    .unwrap();
    let out = psmon(&["check", "--insecure-config", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let b = d.join("pfile_b").display().to_string();
    assert!(
        err.contains(&format!("{b}: IPCKEY 0x10 is already used by")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{b}:4:1: process /usr/sbin/sshd is already watched at"
        )),
        "{err}"
    );
}

#[test]
fn groups_join_entries_of_other_files_and_bad_ones_are_errors() {
    let dir = TempDir::new("groups");
    let d = &dir.0;
    let pent = "##### PENT #####\n/opt/msg/stored : - : 0 : 0 : continue\n\
                /opt/msg/imapd : - : 0 : 0 : continue\n";
    std::fs::write(d.join("pfile_msg"), pent).unwrap();
    let good = "[[group]]\nname = \"store\"\nmembers = [\"/opt/msg/stored\", \"/opt/msg/imapd\"]\n";
    std::fs::write(d.join("groups.toml"), good).unwrap();
    let out = psmon(&["check", "--insecure-config", d.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let config = Config::load_dir(d, INSECURE).unwrap();
    let (_, g) = config.groups().next().unwrap();
    assert_eq!(g.restarts, 2, "the watcher's default");
    assert_eq!(g.window.as_secs(), 600);

    let bad = format!(
        "{good}\n[[group]]\nname = \"store\"\nmembers = [\"/opt/msg/popd\",\n  \"/opt/msg/imapd\"]\n\
         restarts = -1\nstart_timout = 5\n"
    );
    std::fs::write(d.join("groups.toml"), &bad).unwrap();
    let out = psmon(&["check", "--insecure-config", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = d.join("groups.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:10:1: unknown key `start_timout`; did you mean `start_timeout`?"
        )),
        "{err}"
    );
    // Without the typo, each problem at its place.
    std::fs::write(
        d.join("groups.toml"),
        bad.replace("start_timout", "start_timeout"),
    )
    .unwrap();
    let out = psmon(&["check", "--insecure-config", d.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("{f}:9:12: restarts -1 is out of range")),
        "{err}"
    );
    let out = {
        std::fs::write(
            d.join("groups.toml"),
            bad.replace("restarts = -1\nstart_timout = 5\n", ""),
        )
        .unwrap();
        psmon(&["check", "--insecure-config", d.to_str().unwrap()])
    };
    let err = String::from_utf8(out.stderr).unwrap();
    for expected in [
        format!("{f}:5:1: group `store` is already defined at {f}:1"),
        format!("{f}:7:12: group `store` member /opt/msg/popd is not a watched entry"),
        format!("{f}:8:3: /opt/msg/imapd is already a member of group `store`"),
    ] {
        assert!(err.contains(&expected), "{expected}\nin\n{err}");
    }
}

#[test]
fn files_others_can_write_are_refused() {
    let dir = TempDir::new("perm");
    let file = dir.0.join("pfile_x");
    std::fs::write(
        &file,
        "##### PENT #####\n/usr/sbin/sshd : - : 0 : 0 : continue\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = psmon(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("mode 666 lets group or others write it"),
        "{err}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    if support::is_root() {
        assert!(psmon(&["check", file.to_str().unwrap()]).status.success());
    }
}

#[test]
fn convert_round_trips_to_the_same_model() {
    let pfile = conf_dir().join("pfile_os");
    let out = psmon(&["convert", pfile.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let dir = TempDir::new("convert");
    let toml = dir.0.join("os.toml");
    std::fs::write(&toml, &out.stdout).unwrap();
    let from_pfile = Config::load_files(&[pfile], INSECURE).unwrap();
    let from_toml = Config::load_files(&[toml], INSECURE).unwrap();
    let (a, b) = (&from_pfile.pfiles[0], &from_toml.pfiles[0]);
    assert_eq!(a.ipckey, b.ipckey);
    assert_eq!(a.monitor_interval, b.monitor_interval);
    assert_eq!(a.msg_check_interval, b.msg_check_interval);
    assert_eq!(a.shm_dump_file, b.shm_dump_file);
    assert_eq!(a.entries.len(), b.entries.len());
    for (x, y) in a.entries.iter().zip(&b.entries) {
        let mut y = y.clone();
        y.line = x.line; // where each was written differs, nothing else may
        assert_eq!(*x, y);
    }
}

/// `check --live` names the processes an entry matches now and why, and
/// `check` warns of a symlinked path: here the entry is a link, under
/// another name, to this test's own executable, which runs as itself.
#[test]
fn check_live_shows_what_matches_now() {
    let dir = TempDir::new("live");
    let me = std::env::current_exe().unwrap();
    let link = dir.0.join("other-name");
    std::os::unix::fs::symlink(&me, &link).unwrap();
    std::fs::write(
        dir.0.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{}\"\n\n[[entry]]\npath = \"{}\"\naction = \"switch\"\n",
            me.display(),
            link.display()
        ),
    )
    .unwrap();
    let out = psmon(&[
        "check",
        "--insecure-config",
        "--live",
        dir.0.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let pid = std::process::id();
    assert!(
        stdout.contains(&format!("pid {pid} ppid")) && stdout.contains("[instance]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("its executable is the file the path names"),
        "{stdout}"
    );
    // Run as itself, not as `other-name`: the link's entry matches nothing.
    assert!(stdout.contains("no matching process"), "{stdout}");
    assert!(stderr.contains("is a symlink to"), "{stderr}");
    assert!(stderr.contains("when started as `other-name`"), "{stderr}");
    assert!(stderr.contains("no process matches"), "{stderr}");
}

/// A `switch` whose failover driver's tool is not installed is warned
/// about; psenv's PATH is where it is looked up.
#[test]
fn check_warns_of_a_missing_cluster_tool() {
    let dir = TempDir::new("cluster-tool");
    let me = std::env::current_exe().unwrap();
    std::fs::write(
        dir.0.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{}\"\naction = \"switch\"\nfailover_driver = \"clusterpro\"\n",
            me.display()
        ),
    )
    .unwrap();
    let check = || {
        let out = psmon(&["check", "--insecure-config", dir.0.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let stderr = check();
    assert!(
        stderr.contains(
            "failover driver clusterpro needs clpgrp (from CLUSTERPRO X), not found on PATH"
        ),
        "{stderr}"
    );
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("clpgrp"), "#!/bin/sh\n").unwrap();
    std::fs::write(dir.0.join("psenv"), format!("PATH={}\n", bin.display())).unwrap();
    let stderr = check();
    assert!(!stderr.contains("needs clpgrp"), "{stderr}");
}

/// A restart command through systemctl on a host where systemd is not
/// init (a container, this CI machine) can only fail: check says so, and
/// only then.
#[test]
fn check_warns_of_systemctl_without_systemd() {
    let dir = TempDir::new("systemctl");
    let me = std::env::current_exe().unwrap();
    std::fs::write(
        dir.0.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{}\"\nrestart = \"/usr/bin/systemctl restart app\"\n\
             [[entry]]\npath = \"/bin/sh\"\nrestart = \"echo systemctl-free\"\n",
            me.display()
        ),
    )
    .unwrap();
    let out = psmon(&["check", "--insecure-config", dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let warned = stderr
        .matches("uses systemctl, but systemd is not running")
        .count();
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    assert_eq!(warned, usize::from(!systemd), "{stderr}");
}
