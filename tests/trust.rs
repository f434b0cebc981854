//! A local user cannot blind, fool or steer psmon, and nothing psmon starts
//! outlives its purpose: a FIFO planted at a watched path, clients that
//! never read their replies, a restart command left running by a psmon
//! that was killed, hung command probes. Each test would fail on the fault
//! it names.

mod support;

use std::{
    io::Write,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use support::*;

/// `psmon ARGS` as a client of the daemon isolated under `dir`, stopped
/// after `limit` (a client that hangs is the fault under test).
fn client(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut command = Command::new("timeout");
    command
        .arg("--signal=KILL")
        .arg(format!("{}", limit.as_secs()))
        .arg(env!("CARGO_BIN_EXE_psmon"));
    isolate(&mut command, dir).args(args).output().unwrap()
}

/// A TOML entry for `path`, restarted by running `restart` in the
/// background.
fn entry(path: &Path, restart: &str) -> String {
    format!(
        "[[entry]]\npath = \"{}\"\nrestart = \"{restart} >/dev/null 2>&1 &\"\nretry = 20\ngrace = 600\nstart_secs = 0\n",
        path.display()
    )
}

/// A test's directory with `conf/` and a private copy of the victim.
fn world(tag: &str, name: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, name);
    (dir, conf, victim)
}

/// Waits until `cond` holds, for at most [`TIMEOUT`].
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Anyone who can replace a watched binary (a service's own user, in a
/// directory it owns) puts a FIFO there, and psmon reloads: reading the
/// path must not wait for a writer. Every other entry is still restarted
/// and `status` still answers.
#[test]
fn a_fifo_at_a_watched_path_does_not_stop_monitoring() {
    let (dir, conf, kept) = world("fifo-path", "keptd");
    let planted = victim_copy(&dir.0, "plantd");
    let text = entry(&kept, &format!("{} sleep", kept.display()))
        + &entry(&planted, &format!("{} sleep", planted.display()));
    std::fs::write(conf.join("app.toml"), text).unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    // Both Up, in whichever order.
    let a = psmon.wait(") Up");
    let b = psmon.wait(") Up");
    let pid_of = |path: &Path| {
        [&a, &b]
            .into_iter()
            .find(|m| m["path"] == path.display().to_string())
            .expect("both entries came up")["pid"]
            .as_u64()
            .unwrap() as u32
    };
    let (first, planted_pid) = (pid_of(&kept), pid_of(&planted));

    std::fs::remove_file(&planted).unwrap();
    nix::unistd::mkfifo(&planted, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    psmon.wait("configuration reloaded");
    kill9_pid(first);
    psmon.wait_for(") Up", |m| {
        m["path"] == kept.display().to_string() && m["pid"] != first
    });
    let out = client(&dir.0, &["status", "--json"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(psmon);
    let _ = std::fs::remove_file(&planted);
    kill_all(&kept);
    // Its executable is gone from the path: killed by pid.
    kill9_pid(planted_pid);
}

/// 130 clients pipeline requests and never read a reply: each holds a
/// slot only until its reply cannot be written, and then a real client is
/// answered.
#[test]
fn clients_that_never_read_do_not_keep_their_slots() {
    let (dir, conf, victim) = world("never-read", "slotd");
    std::fs::write(
        conf.join("app.toml"),
        entry(&victim, &format!("{} sleep", victim.display())),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait(") Up");
    let socket = socket_in(&dir.0);
    let requests = "{\"v\":1,\"cmd\":\"status\"}\n".repeat(1500);
    let mut hogs = Vec::new();
    for _ in 0..130 {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_nonblocking(true).unwrap();
        // As much as fits; the rest does not matter.
        let _ = s.write_all(requests.as_bytes());
        hogs.push(s);
    }
    let out = client(&dir.0, &["status", "--json"], Duration::from_secs(20));
    assert_eq!(
        out.status.code(),
        Some(0),
        "status not answered while 130 clients do not read: {out:?}"
    );
    drop(hogs);
    drop(psmon);
    kill_all(&victim);
}

/// What psmon saved under `dir`: the state file, then its journal (what
/// changed after it).
fn saved_state(dir: &Path) -> String {
    let read =
        |name: &str| std::fs::read_to_string(dir.join("state").join(name)).unwrap_or_default();
    read("psmon.state") + &read("psmon.journal")
}

/// psmon is killed -9 while a restart command hangs; the next psmon takes
/// the command over and, at the entry's time limit, kills its group as it
/// would have killed a command it started itself.
#[test]
fn a_taken_over_restart_command_keeps_its_time_limit() {
    let (dir, conf, victim) = world("adopted", "adoptd");
    let hang = victim_copy(&dir.0, "hangcmd");
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{}\"\nrestart = \"{} sleep\"\nrestart_timeout = 4\nretry = 1\ngrace = 600\n",
            victim.display(),
            hang.display()
        ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait("Try to restart");
    until("the restart command runs", || pids_of(&hang).len() == 1);
    let saved = format!("\"command_pgid\":{}", pids_of(&hang)[0]);
    until("the command's group is saved", || {
        saved_state(&dir.0).contains(&saved)
    });
    psmon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(psmon);

    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait("state of the previous psmon taken over");
    let ended = psmon.wait("restart command for");
    let said = ended["message"].as_str().unwrap();
    assert!(said.contains("timed out"), "{ended}");
    psmon.wait("Set pid fail");
    until("the hung command is killed", || pids_of(&hang).is_empty());
    drop(psmon);
    kill_all(&hang);
}

/// A command probe that hangs is killed with its process group at its
/// time limit, every time: none piles up.
#[test]
fn hung_command_probes_leave_no_process() {
    let (dir, conf, victim) = world("hangprobe", "probed");
    let probe = victim_copy(&dir.0, "hangprobe");
    std::fs::write(
        conf.join("app.toml"),
        entry(&victim, &format!("{} sleep", victim.display()))
            + &format!(
                "[entry.probe]\nkind = \"command\"\ncommand = \"{} sleep\"\ninterval = 0.2\ntimeout = 0.3\nwarn = 0.1\nfailures = 100\nstart_grace = 0\n",
                probe.display()
            ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait(") Up");
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        most = most.max(pids_of(&probe).len());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most <= 1, "{most} hung probes at once");
    drop(psmon);
    until("the last probe is killed", || pids_of(&probe).is_empty());
    kill_all(&victim);
}

/// A restart command that leaves a chatty process behind (`chatty &`):
/// the output file it inherited does not grow without bound.
#[test]
fn output_of_what_a_restart_command_leaves_running_is_bounded() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (dir, conf, victim) = world("chatty", "chattyd");
    let chatty = dir.0.join("chatty");
    let pidfile = dir.0.join("chatty.pid");
    std::fs::write(
        &chatty,
        format!(
            "#!/bin/sh\necho $$ > {}\nwhile :; do head -c 65536 /dev/zero; sleep 0.01; done\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&chatty, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{v}\"\nrestart = \"{c} & {v} sleep >/dev/null 2>&1 &\"\nretry = 1\ngrace = 600\n",
            v = victim.display(),
            c = chatty.display()
        ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait(") Up");
    until("chatty runs", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim().parse::<u32>().is_ok())
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/1")).unwrap();
    let held = meta.blocks() * 512;
    let written = meta.len();
    kill_and_reap(pid);
    drop(psmon);
    kill_all(&victim);
    assert!(written > 8 << 20, "chatty wrote only {written} bytes");
    assert!(
        held <= 4 << 20,
        "{held} bytes held of the {written} chatty wrote"
    );
}

/// A directory under /tmp that `nobody` can enter, with a copy of the
/// victim anyone may run.
fn open_dir(tag: &str, name: &str) -> (TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new_in(Path::new("/tmp"), tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let victim = victim_copy(&dir.0, name);
    (dir, victim)
}

/// `nobody` runs its own copy of root's watched program; root's instance
/// is killed: Down and restarted, whatever the copy does.
#[test]
fn another_users_copy_does_not_mask_a_death() {
    use std::os::unix::process::CommandExt;
    if !needs_root("starting a process as nobody") {
        return;
    }
    let (dir, victim) = open_dir("owner", "ownerd");
    let conf = dir.0.join("conf");
    std::fs::write(
        conf.join("app.toml"),
        entry(&victim, &format!("{} sleep", victim.display())),
    )
    .unwrap();
    let root = reap_later(spawn_fresh(Command::new(&victim).arg("sleep")));
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait_for(") Up", |m| m["pid"] == root);
    let copy = reap_later(spawn_fresh(
        Command::new(&victim).arg("sleep").uid(65534).gid(65534),
    ));
    // `check --live` says why the copy is none of the entry's.
    let live = Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(["check", "--insecure-config", "--live"])
        .arg(&conf)
        .output()
        .unwrap();
    let live = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.contains(&format!("pid {copy} ppid"))
            && live
                .contains("uid 65534 [not counted: runs as uid 65534, the entry's user is uid 0]"),
        "{live}"
    );
    // Its exec is seen, and refused, before root's instance dies.
    std::thread::sleep(Duration::from_millis(300));
    kill9_pid(root);
    psmon.wait_for("Down", |m| m["pid"] == root);
    let up = psmon.wait_for(") Up", |m| m["pid"] != root);
    assert_ne!(up["pid"], copy, "{up}");
    kill_and_reap(copy);
    drop(psmon);
    kill_all(&victim);
}

/// A state file that names a bystander (its real pid and start time) as
/// the entry's instance: at take-over it is found not to be one, the entry
/// is restarted, and the bystander is left alone.
#[test]
fn a_doctored_state_file_is_not_trusted() {
    let (dir, conf, victim) = world("doctored", "doctord");
    let bystander_exe = victim_copy(&dir.0, "bystander");
    std::fs::write(
        conf.join("app.toml"),
        entry(&victim, &format!("{} sleep", victim.display())),
    )
    .unwrap();
    let pid = reap_later(spawn_fresh(Command::new(&victim).arg("sleep")));
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait_for(") Up", |m| m["pid"] == pid);
    let path = dir.0.join("state/psmon.state");
    let saved = format!("\"{pid}\"");
    until("the instance is saved", || {
        saved_state(&dir.0).contains(&saved)
    });
    // Stopping, psmon writes its state whole: the journal is left empty.
    drop(psmon);
    assert_eq!(
        std::fs::metadata(dir.0.join("state/psmon.journal"))
            .map(|m| m.len())
            .ok(),
        Some(0)
    );

    let bystander = reap_later(spawn_fresh(Command::new(&bystander_exe).arg("sleep")));
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let monitor = &mut state["monitor"];
    let mut member = monitor["members"][pid.to_string()].take();
    assert!(member.is_object(), "{monitor}");
    member["start_ticks"] = proc_start_ticks(bystander).into();
    monitor["members"] = serde_json::json!({ bystander.to_string(): member });
    monitor["watches"][0]["members"] = serde_json::json!([bystander]);
    std::fs::write(&path, state.to_string()).unwrap();
    kill_and_reap(pid);

    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait("state of the previous psmon taken over");
    psmon.wait_for("Down", |m| m["pid"] == bystander);
    psmon.wait_for(") Up", |m| m["pid"] != bystander);
    assert!(
        std::path::Path::new(&format!("/proc/{bystander}")).exists(),
        "the bystander was signalled"
    );
    drop(psmon);
    kill_and_reap(bystander);
    kill_all(&victim);
}

/// A notify entry's socket: a file only root may send to, in a directory
/// only psmon writes. `nobody` can neither send a keep-alive (or a flood)
/// nor take the socket's name while psmon is down.
#[test]
fn a_notify_socket_is_psmons_alone() {
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    if !needs_root("sending as nobody") {
        return;
    }
    let (dir, victim) = open_dir("notify-own", "notifyd");
    let conf = dir.0.join("conf");
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{v}\"\nrestart = \"{v} notify 0 -1 >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"notify\"\ntimeout = 1\nstart_grace = 0\nkill_grace = 0.2\n",
            v = victim.display()
        ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    let up = psmon.wait(") Up");
    let pid = up["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let socket = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| std::path::PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .expect("the service was given NOTIFY_SOCKET");
    assert!(socket.is_absolute(), "{}", socket.display());
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let send = |as_nobody: bool| {
        let mut c = Command::new("/usr/bin/python3");
        c.args([
            "-c",
            "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.sendto(b'WATCHDOG=1', sys.argv[1])",
        ])
        .arg(&socket);
        if as_nobody {
            c.uid(65534).gid(65534);
        }
        c.output().unwrap()
    };
    let refused = send(true);
    assert!(!refused.status.success(), "nobody could send");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );
    assert!(send(false).status.success(), "root sends");
    // The service keeps sending: never judged hung.
    let said = psmon.collect(Duration::from_millis(2500));
    assert!(
        !said
            .iter()
            .any(|m| m["message"].as_str().is_some_and(|t| t.contains("hung"))),
        "{said:?}"
    );
    drop(psmon);
    kill_all(&victim);
}

/// When the socket cannot be made (a file is where its directory goes),
/// the service is given no channel, and is never judged on one: a service
/// that never speaks stays up.
#[test]
fn a_service_without_a_notify_channel_is_not_judged() {
    let (dir, conf, victim) = world("notify-none", "mute");
    std::fs::write(dir.0.join("notify"), "in the way").unwrap();
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\npath = \"{v}\"\nrestart = \"{v} sleep >/dev/null 2>&1 &\"\nstart_secs = 0\n[entry.probe]\nkind = \"notify\"\ntimeout = 0.5\nstart_grace = 0\nkill_grace = 0.2\n",
            v = victim.display()
        ),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "auto");
    psmon.wait("no notify socket for");
    psmon.wait(") Up");
    let said = psmon.collect(Duration::from_millis(2000));
    assert!(
        !said
            .iter()
            .any(|m| m["message"].as_str().is_some_and(|t| t.contains("hung"))),
        "{said:?}"
    );
    drop(psmon);
    kill_all(&victim);
}

/// A directory `theirs` in `dir`, owned by nobody.
fn nobodys_dir(dir: &Path) -> std::path::PathBuf {
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    theirs
}

/// `psmon run` with `dir` as its world: control socket and state as given.
fn run_with(dir: &Path, socket: &Path, state: &Path) -> Command {
    // Bounded: a psmon that does not refuse would run for ever.
    let mut c = Command::new("timeout");
    c.args(["--signal=KILL", "10", env!("CARGO_BIN_EXE_psmon")])
        .env("PSMON_SOCKET", socket)
        .env("PSMON_STATE_DIR", state)
        .args(["run", "--insecure-config", "--source", "poll", "--conf"])
        .arg(dir.join("conf"));
    c
}

/// A socket directory another user owns is refused at start (with what to
/// do); so is a regular file where the socket goes, which is left alone.
#[test]
fn a_socket_place_another_user_controls_is_refused() {
    let (dir, victim) = open_dir("sockdir", "sockd");
    std::fs::write(
        dir.0.join("conf/app.toml"),
        entry(&victim, &format!("{} sleep", victim.display())),
    )
    .unwrap();
    let theirs = nobodys_dir(&dir.0);
    let out = run_with(&dir.0, &theirs.join("psmon.sock"), &dir.0.join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    let file = dir.0.join("psmon.sock");
    std::fs::write(&file, "precious").unwrap();
    let out = run_with(&dir.0, &file, &dir.0.join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

/// A state directory another user owns: nothing is read from it or written
/// to it (it would say which pids are the services'), and monitoring runs.
#[test]
fn a_state_directory_another_user_owns_is_not_used() {
    let (dir, victim) = open_dir("statedir", "stated");
    std::fs::write(
        dir.0.join("conf/app.toml"),
        entry(&victim, &format!("{} sleep", victim.display())),
    )
    .unwrap();
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let target = dir.0.join("root-owned");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, state.join("psmon.tmp")).unwrap();
    let mut psmon = Psmon::start(&dir.0.join("conf"), "auto");
    let refused = psmon.wait("the state directory is refused");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("owned by uid 65534"),
        "{refused}"
    );
    psmon.wait(") Up");
    drop(psmon);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(!state.join("psmon.state").exists());
    kill_all(&victim);
}

/// Another user listening where root's client looks for psmon: the client
/// does not believe it.
#[test]
fn an_impostor_socket_is_not_believed() {
    use std::os::unix::process::CommandExt;
    if !needs_root("listening as nobody") {
        return;
    }
    let (dir, _victim) = open_dir("impostor", "impd");
    let theirs = nobodys_dir(&dir.0);
    let socket = theirs.join("psmon.sock");
    let server = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\nprint('ready', flush=True)\nwhile True:\n    c, _ = s.accept()\n    c.recv(4096)\n    c.sendall(b'{\"v\":1,\"ok\":true,\"result\":{\"entries\":[],\"fake\":true}}\\n')\n    c.close()\n";
    let mut impostor = Command::new("/usr/bin/python3")
        .args(["-c", server])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(impostor.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_psmon"))
        .env("PSMON_SOCKET", &socket)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("served by uid 65534"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("fake"));
}
