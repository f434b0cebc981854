//! What a RHEL host gets besides the binary: the systemd unit (checked by
//! `systemd-analyze`), man pages (rendered by `man` without a warning) and
//! completions, and a log that survives logrotate under load.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const PSMON: &str = env!("CARGO_BIN_EXE_psmon");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `systemd-analyze verify` accepts the unit (its ExecStart pointed at
/// the binary under test; man pages are checked below), and `security`
/// rates it.
#[test]
fn the_unit_verifies() {
    if !needs("/usr/bin/systemd-analyze", "systemd") {
        return;
    }
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(root().join("conf/systemd/psmon.service")).unwrap();
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "KillMode=process",
    ] {
        assert!(unit.contains(must), "{must}");
    }
    let path = dir.0.join("psmon.service");
    std::fs::write(&path, unit.replace("/usr/sbin/psmon", PSMON)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Overall exposure level"), "{text}");
    eprintln!("{}", text.lines().last().unwrap_or_default());
}

/// psmon(8) and a page per command from the clap definition, the two
/// format pages written by hand; `man` renders each without a warning.
/// Completions for bash, zsh and fish; bash loads its own.
#[test]
fn man_pages_and_completions() {
    if !needs("/usr/bin/man", "man-db") {
        return;
    }
    let dir = TempDir::new("man");
    let out = Command::new(PSMON)
        .arg("generate")
        .arg("--man")
        .arg(dir.0.join("man"))
        .arg("--completions")
        .arg(dir.0.join("completions"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir.0.join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "psmon.8",
        "psmon-run.8",
        "psmon-status.8",
        "psmon-clear-failover.8",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    pages.push(root().join("man/psmon-pfile.5"));
    pages.push(root().join("man/psmon.toml.5"));
    pages.push(root().join("man/psmon-psagent.conf.5"));
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", page.display());
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{}: {warnings}", page.display());
        assert!(!out.stdout.is_empty(), "{}", page.display());
    }
    let top = Command::new("man")
        .arg("-l")
        .arg(dir.0.join("man/psmon.8"))
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.contains("clear-failover") && top.contains("status"),
        "{top}"
    );
    // What psmon does, its files, signals and exit codes, not one line.
    for section in ["DESCRIPTION", "FILES", "SIGNALS", "EXIT STATUS", "SEE ALSO"] {
        assert!(top.contains(&format!("\n{section}\n")), "{section}: {top}");
    }
    for said in [
        "psagent.conf",
        "/var/lib/psmon",
        "SIGHUP",
        "psmon-psagent.conf(5)",
    ] {
        assert!(top.contains(said), "{said}: {top}");
    }
    // Every page another page points to is shipped.
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap_or_default();
        for (name, section) in [
            ("psmon-psagent.conf", "5"),
            ("psmon-pfile", "5"),
            ("psmon.toml", "5"),
        ] {
            if text.contains(&format!("{name} ({section})"))
                || text.contains(&format!(".BR {name} ({section})"))
            {
                assert!(
                    root().join(format!("man/{name}.{section}")).exists(),
                    "{} points to {name}({section})",
                    page.display()
                );
            }
        }
    }

    for file in ["psmon.bash", "_psmon", "psmon.fish"] {
        assert!(dir.0.join("completions").join(file).exists(), "{file}");
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p psmon",
            dir.0.join("completions/psmon.bash").display()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("psmon"),
        "{out:?}"
    );
}

/// psmon.log rotated by logrotate while psmon writes to it: with `create`
/// (rename, new file) every line is in one of the two files and none was
/// written to the old one after the first in the new; with
/// `copytruncate` the file goes on at its new end, without a hole.
#[test]
fn the_log_survives_logrotate_under_load() {
    if !needs_root("watching processes with the ebpf source")
        || !needs("/usr/sbin/logrotate", "logrotate")
    {
        return;
    }
    for mode in ["create 0640 root root", "copytruncate"] {
        let dir = TempDir::new("rotate");
        let conf = dir.0.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let victim = victim_copy(&dir.0, "rotated");
        std::fs::write(
            conf.join("app.toml"),
            format!("[[entry]]\npath = \"{}\"\n", victim.display()),
        )
        .unwrap();
        let mut psmon = Psmon::start(&conf, "auto");
        psmon.wait("watching process events");
        let log = conf.join("log/psmon.log");
        let rotate_conf = dir.0.join("logrotate.conf");
        std::fs::write(
            &rotate_conf,
            format!("{} {{\n    rotate 3\n    {mode}\n}}\n", log.display()),
        )
        .unwrap();
        let socket = socket_in(&dir.0);
        let say = |n: usize| {
            let cmd = if n.is_multiple_of(2) {
                "pause"
            } else {
                "resume"
            };
            let out = Command::new(PSMON)
                .env("PSMON_SOCKET", &socket)
                .args([cmd, "app"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        const LINES: usize = 200;
        for n in 0..LINES / 2 {
            say(n);
        }
        // copytruncate loses what is written between its copy and its
        // truncation, whoever writes: rotate once the first half is out.
        let deadline = Instant::now() + Duration::from_secs(10);
        // ProcessSaver's line for each pause/resume (the audit trail's
        // line beside it says who asked).
        let processsaver = |l: &str| {
            l.contains("Command execute. [stop]") || l.contains("Command execute. [start]")
        };
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| processsaver(l))
            .count()
            < LINES / 2
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = Command::new("/usr/sbin/logrotate")
            .arg("--force")
            .arg("--state")
            .arg(dir.0.join("logrotate.state"))
            .arg(&rotate_conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // psmon looks at the path at most once a second: the load goes on
        // for longer than that.
        for n in LINES / 2..LINES {
            say(n);
            std::thread::sleep(Duration::from_millis(15));
        }
        // Written by psmon's log thread: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let commands = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| processsaver(l))
                .map(str::to_string)
                .collect()
        };
        let (old, new) = loop {
            let old = std::fs::read_to_string(conf.join("log/psmon.log.1")).unwrap_or_default();
            let new = std::fs::read_to_string(&log).unwrap_or_default();
            let (o, n) = (commands(&old), commands(&new));
            if o.len() + n.len() >= LINES || Instant::now() > deadline {
                break (old, new);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(psmon);
        assert!(!new.contains('\0'), "{mode}: a hole in the log");
        let (o, n) = (commands(&old), commands(&new));
        assert_eq!(
            o.len() + n.len(),
            LINES,
            "{mode}: old {} + new {}",
            o.len(),
            n.len()
        );
        assert!(!n.is_empty(), "{mode}: nothing written after the rotation");
        // Time order (RFC 3339 sorts as text): nothing went to the old file
        // after the first line in the new one.
        let time = |l: &String| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["time"].as_str().unwrap().to_string()
        };
        if let (Some(last_old), Some(first_new)) = (o.last(), n.first()) {
            assert!(
                time(last_old) <= time(first_new),
                "{mode}: {last_old} after {first_new}"
            );
        }
        kill_all(&victim);
    }
}

/// packaging/rpm.sh (what `cargo xtask rpm` runs on the release build),
/// here on the binary under test: the RPM is inspected with rpm, installed
/// into a scratch root with `rpm --root`, and the installed psmon checks
/// the installed samples.
#[test]
fn the_rpm_installs_and_its_samples_check() {
    if !needs_root("installing an RPM into a scratch root")
        || !needs("/usr/bin/rpmbuild", "rpm")
        || !needs("/usr/share/selinux/devel/Makefile", "selinux-policy-dev")
    {
        return;
    }
    let dir = TempDir::new("rpm");
    let out = Command::new(root().join("packaging/rpm.sh"))
        .arg(PSMON)
        .arg(dir.0.join("out"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("selinux module: yes"), "{said}");
    let rpm = said.lines().last().unwrap().to_string();
    assert!(rpm.ends_with(".x86_64.rpm"), "{said}");
    let q = |args: &[&str]| {
        let out = Command::new("rpm").args(args).arg(&rpm).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let info = q(&["-qip"]);
    assert!(info.contains("Name        : psmon"), "{info}");
    let files = q(&["-qlp"]);
    for f in [
        "/usr/sbin/psmon",
        "/etc/psmon/psagent.conf",
        "/usr/lib/systemd/system/psmon.service",
        "/usr/share/man/man8/psmon.8.gz",
        "/usr/share/man/man5/psmon-pfile.5.gz",
        "/usr/share/man/man5/psmon.toml.5.gz",
        "/usr/share/man/man5/psmon-psagent.conf.5.gz",
        "/usr/share/bash-completion/completions/psmon",
        "/usr/share/zsh/site-functions/_psmon",
        "/usr/share/fish/vendor_completions.d/psmon.fish",
        "/etc/logrotate.d/psmon",
        "/usr/share/selinux/packages/psmon.pp",
        "/usr/lib/ocf/resource.d/psmon/psmon",
        "/usr/share/doc/psmon/psmon.rules.yml",
        "/usr/share/doc/psmon/psmon.rules.test.yml",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in\n{files}");
    }
    let config = q(&["-qp", "--configfiles"]);
    assert!(config.contains("/etc/psmon/psagent.conf"), "{config}");
    let scripts = q(&["-qp", "--scripts"]);
    assert!(scripts.contains("systemctl daemon-reload"), "{scripts}");
    assert!(scripts.contains("semodule -i"), "{scripts}");

    let scratch = dir.0.join("root");
    std::fs::create_dir_all(&scratch).unwrap();
    for args in [
        vec!["--root", scratch.to_str().unwrap(), "--initdb"],
        vec![
            "--root",
            scratch.to_str().unwrap(),
            "-i",
            "--nodeps",
            "--noscripts",
            &rpm,
        ],
    ] {
        let out = Command::new("rpm").args(&args).output().unwrap();
        assert!(out.status.success(), "rpm {args:?}: {out:?}");
    }
    let out = Command::new(scratch.join("usr/sbin/psmon"))
        .arg("check")
        .arg(scratch.join("etc/psmon"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: 1 pfile(s)"),
        "{out:?}"
    );
}
