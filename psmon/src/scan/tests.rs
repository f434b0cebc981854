use super::*;
use crate::facts::Known;

fn argv(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn entry(path: &str) -> Entry {
    Entry::new(
        path.into(),
        None,
        0,
        0,
        crate::config::OnRetryOver::Continue,
    )
}

#[test]
fn matches_scripts_and_cmdline_patterns() {
    let daemon = entry("/usr/sbin/d");
    let mut java = entry("/opt/app/app.jar");
    java.matcher = Match::Cmdline(glob::Pattern::new("*java*-jar /opt/app/app.jar*").unwrap());
    let mut m = Matcher::new([&daemon, &java]);
    // The script file does not exist here.
    m.by_script.insert("/opt/app/run.py".into(), EntryId(7));
    let py = b"/usr/bin/python3.11";
    assert_eq!(
        m.match_argv(py, &argv(&["python3", "-u", "/opt/app/run.py"])),
        Some((EntryId(7), MatchReason::Script))
    );
    assert_eq!(
        m.match_argv(
            b"/usr/bin/java",
            &argv(&["/usr/bin/java", "-Xmx1g", "-jar", "/opt/app/app.jar"])
        ),
        Some((EntryId(1), MatchReason::Cmdline))
    );
    // Not an interpreter: an editor opening the script is not the script.
    assert_eq!(
        m.match_argv(b"/usr/bin/vim", &argv(&["vim", "/opt/app/run.py"])),
        None
    );
    assert!(m.kernel_comms().is_none());
}

#[test]
fn a_multi_call_binary_needs_the_name_it_was_started_as() {
    let targets = [
        ExeTarget {
            entry: EntryId(0),
            alias: Some(b"redis-server".to_vec()),
        },
        ExeTarget {
            entry: EntryId(1),
            alias: Some(b"redis-check-aof".to_vec()),
        },
    ];
    // Retitled: argv[0] is "redis-server *:6379"; comm stays.
    assert_eq!(
        pick_target(&targets, b"redis-server", &argv(&["redis-server *:6379"])),
        Some((EntryId(0), MatchReason::StartedAs))
    );
    // Renamed with PR_SET_NAME, but started as redis-server.
    assert_eq!(
        pick_target(&targets, b"other", &argv(&["/usr/bin/redis-server", "x"])),
        Some((EntryId(0), MatchReason::StartedAs))
    );
    assert_eq!(
        pick_target(&targets, b"redis-check-rdb", &argv(&["redis-check-rdb"])),
        None,
        "another user of the binary is not the entry's process"
    );
    let plain = [ExeTarget {
        entry: EntryId(3),
        alias: None,
    }];
    assert_eq!(
        pick_target(&plain, b"renamed", &argv(&["whatever"])),
        Some((EntryId(3), MatchReason::Executable))
    );
}

#[test]
fn symlinked_paths_resolve_to_their_file() {
    let dir = std::env::temp_dir().join(format!("psmon-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let real = dir.join("multi-call");
    std::fs::write(&real, b"\x7fELF").unwrap();
    let same_name = dir.join("sub");
    std::fs::create_dir_all(&same_name).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("alias")).unwrap();
    std::os::unix::fs::symlink(&real, same_name.join("multi-call")).unwrap();
    let m = Matcher::new([
        &entry(dir.join("alias").to_str().unwrap()),
        &entry(same_name.join("multi-call").to_str().unwrap()),
    ]);
    let real = std::fs::canonicalize(&real).unwrap();
    let targets = &m.by_exe[real.as_os_str().as_bytes()];
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0].alias.as_deref(), Some(&b"alias"[..]));
    assert_eq!(targets[1].alias, None, "same file name: no alias needed");
    let comms = m.kernel_comms().unwrap();
    assert!(comms.contains(&"alias".to_string()) && comms.contains(&"multi-call".to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn names_are_cut_like_the_kernels() {
    assert_eq!(
        comm_of(Path::new("/usr/sbin/a-very-long-daemon")),
        b"a-very-long-dae".to_vec()
    );
    assert!(is_interpreter(b"/usr/bin/python3.11"));
    assert!(!is_interpreter(b"/usr/sbin/sshd"));
    assert_eq!(strip_deleted(b"/usr/sbin/d (deleted)"), b"/usr/sbin/d");
    assert_eq!(argv0_name(b"/usr/bin/redis-server *:6379"), b"redis-server");
    assert_eq!(argv0_name(b"nginx: master process"), b"nginx:");
}

#[test]
fn finds_this_test_process_by_its_executable() {
    let me = std::env::current_exe().unwrap();
    let m = Matcher::new([&Entry::new(
        me,
        None,
        0,
        0,
        crate::config::OnRetryOver::Continue,
    )]);
    let found = m.scan(
        1,
        &Known::new(),
        &mut ScanState::default(),
        &Unchanged::default(),
    );
    let pid = std::process::id();
    let mine = found[0].iter().find(|i| i.tgid == pid).expect("found");
    assert_eq!(mine.ppid, std::os::unix::process::parent_id());
}

/// A process found to match nothing is not read again while no exec is
/// reported — and is as soon as its exec is.
#[test]
fn processes_that_match_nothing_are_skipped_until_they_exec() {
    let dir = std::env::temp_dir().join(format!("psmon-skip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let watched = dir.join("psmon-skip-sleep");
    std::fs::copy("/bin/sleep", &watched).unwrap();
    let m = Matcher::new([&Entry::new(
        watched.clone(),
        None,
        0,
        0,
        crate::config::OnRetryOver::Continue,
    )]);
    // A shell (matches nothing) that becomes the watched program by exec.
    let script = format!("read _; exec {} 30", watched.display());
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut state = ScanState::default();
    let found = |state: &mut ScanState, unchanged: Unchanged| {
        m.scan(1, &Known::new(), state, &unchanged)[0]
            .iter()
            .any(|s| s.tgid == pid)
    };
    assert!(!found(&mut state, Unchanged::default()));
    assert!(state.cleared.contains(&pid));
    // Let it exec, and wait until it has.
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while proc::exe(pid).as_deref() != Some(watched.as_path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec did not happen"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let unseen = Unchanged {
        cleared_still_hold: true,
        execd: Vec::new(),
        walk: true,
    };
    assert!(
        !found(&mut state, unseen.clone()),
        "skipped: nothing said it exec'd"
    );
    let told = Unchanged {
        cleared_still_hold: true,
        execd: vec![pid],
        walk: true,
    };
    assert!(found(&mut state, told), "its exec was reported");
    // With the list of execs whole, only what it names is read: a
    // process it does not name is not looked at.
    let mut listed = ScanState::default();
    let only_named = |execd| Unchanged {
        cleared_still_hold: true,
        execd,
        walk: false,
    };
    assert!(!found(&mut listed, only_named(Vec::new())), "not named");
    assert!(found(&mut listed, only_named(vec![pid])), "named");
    let mut fresh = ScanState::default();
    found(&mut fresh, Unchanged::default());
    fresh.cleared.insert(pid);
    assert!(
        found(&mut fresh, Unchanged::default()),
        "no promise: everything is read"
    );
    // A command-line entry never skips: a process may retitle into matching.
    let mut by_cmdline = Entry::new(
        watched.clone(),
        None,
        0,
        0,
        crate::config::OnRetryOver::Continue,
    );
    by_cmdline.matcher = Match::Cmdline(glob::Pattern::new("*psmon-skip-sleep 30*").unwrap());
    let m2 = Matcher::new([&by_cmdline]);
    let mut state2 = ScanState::default();
    state2.cleared.insert(pid);
    assert!(
        m2.scan(1, &Known::new(), &mut state2, &unseen)[0]
            .iter()
            .any(|s| s.tgid == pid)
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
