//! `psmon run` on real daemons from Debian's packages (redis-server,
//! nginx) and on the shapes that fooled it before: a symlinked multi-call
//! binary, a forking master with workers, a pidfile, a process that renamed
//! itself, a binary replaced while it runs, restarts that fail at first or
//! die at once, a daemon that detaches, sshd with users logged in.
//! `.ci/run` installs redis-server, nginx-light, psmisc, openssh-server and
//! -client, dovecot-core and -imapd, apache2, rsyslog, postfix.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// Tests of one real daemon run one at a time: every nginx on the host is
/// `/usr/sbin/nginx`, and a test's entry would count the others'.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `request` to 127.0.0.1:`port` and returns what comes back.
fn ask(port: u16, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_answer(port: u16, request: &[u8], expect: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ask(port, request).is_some_and(|r| r.contains(expect)) {
        assert!(
            Instant::now() < deadline,
            "nothing on port {port} answered {expect:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The executable a package installs; the test fails (never skips) without it.
fn installed(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package {package} (.ci/run does)"
    );
    p
}

/// Pids of live processes whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills a daemon's master and the children it has (a cleanup).
fn kill_with_children(master: u32) {
    for pid in pids_with_cmdline("") {
        if proc_ppid(pid) == Some(master) {
            kill_pid(pid);
        }
    }
    kill_pid(master);
}

fn messages_containing<'a>(seen: &'a [Value], text: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|m| m["message"].as_str().is_some_and(|s| s.contains(text)))
        .collect()
}

/// Runs a daemon's usual start command (it detaches); fails the test if
/// the command does.
fn start_daemon(command: &str, what: &str) {
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .status()
        .unwrap();
    assert!(status.success(), "{what} did not start");
}

/// The pid a daemon's pidfile holds.
fn read_pid(pidfile: impl AsRef<Path>) -> u32 {
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn pid_of(m: &Value) -> u32 {
    m["pid"].as_u64().expect("a pid") as u32
}

/// A private redis on its own port and directory.
struct Redis {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
}

impl Redis {
    fn new() -> Redis {
        installed("/usr/bin/redis-server", "redis-server");
        let dir = TempDir::new("redis");
        let port = free_port();
        let conf = dir.0.join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n",
                dir.0.display(),
                dir.0.join("redis.log").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        Redis { dir, port, conf }
    }

    fn ping(&self) -> Option<String> {
        ask(self.port, b"PING\r\n")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&format!(":{}", self.port)) {
            kill_pid(pid);
        }
    }
}

/// redis-server started as usual before psmon, watched by its symlinked
/// path with `switch`: Up with its real pid, never restarted or failed over;
/// killed, it is restarted once and answers again.
fn redis_is_watched_by_its_symlinked_path(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let r = Redis::new();
    let failover = r.dir.0.join("failover.out");
    std::fs::write(
        r.dir.0.join("conf/pfile_redis"),
        format!(
            "##### PARAM #####\nMONITOR_INTERVAL = 1\n##### PENT #####\n\
             /usr/bin/redis-server : redis-server {} --daemonize yes : 86400 : 3 : switch\n",
            r.conf.display()
        ),
    )
    .unwrap();
    std::fs::write(
        r.dir.0.join("conf/psagent.conf"),
        format!("FAILOVER_COMMAND = touch {}\n", failover.display()),
    )
    .unwrap();
    let mut redis = Command::new("redis-server").arg(&r.conf).spawn().unwrap();
    wait_answer(r.port, b"PING\r\n", "+PONG");

    let mut psmon = Psmon::start(&r.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), redis.id(), "{up}");
    psmon.collect(Duration::from_millis(2500)); // two scans
    assert!(
        messages_containing(&psmon.seen, "Down").is_empty()
            && messages_containing(&psmon.seen, "Try to restart").is_empty(),
        "a healthy redis was taken for dead: {:?}",
        psmon.seen
    );
    assert_eq!(r.ping().as_deref(), Some("+PONG\r\n"));

    kill9(&redis);
    let down = psmon.wait(&format!(
        "Process ['/usr/bin/redis-server',pid={}] Down",
        redis.id()
    ));
    redis.wait().unwrap();
    assert_eq!(down["signal"], 9, "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != redis.id());
    wait_answer(r.port, b"PING\r\n", "+PONG");
    assert!(
        pids_with_cmdline(&format!(":{}", r.port)).contains(&pid_of(&up)),
        "the Up pid is not the new redis: {up}"
    );
    psmon.collect(Duration::from_millis(1500));
    assert_eq!(
        messages_containing(&psmon.seen, "Try to restart").len(),
        1,
        "restarted once: {:?}",
        psmon.seen
    );
    assert!(!failover.exists(), "failed over a redis that came back");
}

/// A private nginx (master + 2 workers) on a high port.
struct Nginx {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
    pidfile: PathBuf,
}

impl Nginx {
    fn new(tag: &str) -> Nginx {
        installed("/usr/sbin/nginx", "nginx-light");
        installed("/usr/bin/fuser", "psmisc");
        let dir = TempDir::new(tag);
        let port = free_port();
        let d = dir.0.display();
        let conf = dir.0.join("nginx.conf");
        let pidfile = dir.0.join("nginx.pid");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\npid {};\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        Nginx {
            dir,
            port,
            conf,
            pidfile,
        }
    }

    fn command(&self) -> String {
        format!(
            "/usr/sbin/nginx -c {} -p {}/ -e {}/error.log",
            self.conf.display(),
            self.dir.0.display(),
            self.dir.0.display()
        )
    }

    /// The restart command: frees the port from workers a killed master
    /// left behind, then starts nginx (which daemonizes).
    fn restart(&self) -> String {
        format!("fuser -k {}/tcp; {}", self.port, self.command())
    }

    fn start(&self) -> u32 {
        start_daemon(&self.command(), "nginx");
        wait_answer(self.port, b"GET / HTTP/1.0\r\n\r\n", "200");
        self.master()
    }

    fn master(&self) -> u32 {
        read_pid(&self.pidfile)
    }

    fn workers(&self, master: u32) -> Vec<u32> {
        pids_with_cmdline("nginx: worker process")
            .into_iter()
            .filter(|p| support::proc_ppid(*p) == Some(master))
            .collect()
    }

    fn watch(&self, rule: &str) {
        std::fs::write(
            self.dir.0.join("conf/nginx.toml"),
            format!(
                "monitor_interval = 1\n[[entry]]\npath = \"/usr/sbin/nginx\"\nrestart = \"{}\"\n{rule}\n",
                self.restart()
            ),
        )
        .unwrap();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("fuser")
            .args(["-k", "-s", &format!("{}/tcp", self.port)])
            .stderr(std::process::Stdio::null())
            .status();
        for pid in pids_with_cmdline(&self.conf.display().to_string()) {
            kill_pid(pid);
        }
    }
}

/// The master of a forking daemon is what counts: killed (after a reload
/// forked new workers while psmon watched), it is Down with its own pid and
/// restarted, and the new master is the pid reported Up.
fn nginx_master_death_is_reported(source: &str, rule: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let n = Nginx::new("nginx");
    let rule = rule
        .replace("PIDFILE", &n.pidfile.display().to_string())
        .replace("CONF", &n.conf.display().to_string());
    n.watch(&rule);
    let master = n.start();
    let mut psmon = Psmon::start(&n.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), master, "the Up pid must be the master's: {up}");
    assert_eq!(up["running"], 1, "workers are not instances: {up}");

    // A reload forks new workers while psmon watches.
    let old_workers = n.workers(master);
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{} -s reload", n.command()))
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.workers(master).iter().all(|w| old_workers.contains(w)) {
        assert!(Instant::now() < deadline, "the reload forked no workers");
        std::thread::sleep(Duration::from_millis(20));
    }
    psmon.collect(Duration::from_millis(300));

    kill_pid(master);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), master, "{down}");
    assert_eq!(down["signal"], 9, "{down}");
    psmon.wait("Try to restart");
    let up = psmon.wait_for(") Up", |m| m["pid"] != master);
    wait_answer(n.port, b"GET / HTTP/1.0\r\n\r\n", "200");
    assert_eq!(pid_of(&up), n.master(), "the new master is Up: {up}");
}

fn nginx_cmdline(source: &str) {
    nginx_master_death_is_reported(source, "cmdline = \"nginx: master process*CONF*\"");
}

fn nginx_pidfile(source: &str) {
    nginx_master_death_is_reported(source, "pidfile = \"PIDFILE\"");
}

fn nginx_main_only(source: &str) {
    // main_only counts the master; after its death its orphaned workers
    // are nobody's children, and keep the entry Up (see the README).
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let n = Nginx::new("nginx-main");
    n.watch("main_only = true\nretry = 0");
    let master = n.start();
    let mut psmon = Psmon::start(&n.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), master, "{up}");
    assert_eq!(up["running"], 1, "{up}");
}

/// A plain path counts the processes of the executable that run as the
/// service's user (learned from the first one found, the root master) or
/// root: nginx's workers, found running as www-data when psmon starts, are
/// not instances, so the master's death is Down although they live on.
fn nginx_plain_path(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let n = Nginx::new("nginx-plain");
    n.watch("retry = 0");
    let master = n.start();
    let mut psmon = Psmon::start(&n.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), master, "{up}");
    assert_eq!(
        up["running"], 1,
        "the master; its workers run as www-data: {up}"
    );
    kill_pid(master);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), master, "{down}");
}

/// Debian's sshd on a private port, run from a copy of its binary (every
/// sshd on the host is `/usr/sbin/sshd`, and the entry would count a host's
/// own): the listener forks a process per connection, which re-executes the
/// binary, so every logged-in session runs the watched file too.
struct Sshd {
    dir: TempDir,
    port: u16,
    exe: PathBuf,
    conf: PathBuf,
    pidfile: PathBuf,
}

impl Sshd {
    fn new() -> Sshd {
        installed("/usr/sbin/sshd", "openssh-server");
        installed("/usr/bin/ssh", "openssh-client");
        let dir = TempDir::new("sshd");
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        // The privilege-separation directory the package's unit makes.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let exe = dir.0.join("sshd");
        std::fs::copy("/usr/sbin/sshd", &exe).unwrap();
        for key in ["host_key", "user_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.0.join(key))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        std::fs::copy(dir.0.join("user_key.pub"), dir.0.join("authorized_keys")).unwrap();
        let port = free_port();
        let conf = dir.0.join("sshd_config");
        let pidfile = dir.0.join("sshd.pid");
        let d = dir.0.display();
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {}\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n",
                pidfile.display()
            ),
        )
        .unwrap();
        Sshd {
            dir,
            port,
            exe,
            conf,
            pidfile,
        }
    }

    /// Starts sshd the usual way (it detaches) and returns the listener.
    fn command(&self) -> String {
        format!("{} -f {}", self.exe.display(), self.conf.display())
    }

    fn start(&self) -> u32 {
        start_daemon(&self.command(), "sshd");
        wait_answer(self.port, b"", "SSH-2.0");
        self.listener()
    }

    fn listener(&self) -> u32 {
        read_pid(&self.pidfile)
    }

    fn ssh(&self, command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(self.dir.0.join("user_key"))
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["root@127.0.0.1", command])
            .stdin(std::process::Stdio::null());
        c
    }

    /// A logged-in session that stays: returns the ssh client once the
    /// session's processes are there.
    fn session(&self) -> Child {
        let before = pids_of(&self.exe);
        let mut client = self
            .ssh("echo in; exec sleep 600")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 3];
        client
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut line)
            .unwrap();
        assert_eq!(&line, b"in\n");
        assert!(
            pids_of(&self.exe).iter().any(|p| !before.contains(p)),
            "no session process"
        );
        client
    }

    /// Whether a new session can log in and run a command.
    fn logs_in(&self) -> bool {
        self.ssh("true").status().is_ok_and(|s| s.success())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_all(&self.exe);
    }
}

/// The seed's own `/usr/sbin/sshd` line, as a plain path entry, while users
/// are logged in (one session from before psmon started, one after): each
/// session's sshd is a worker of the listener, not an instance, so killing
/// a session is nothing, and killing the listener is a death although the
/// sessions live on. The restarted sshd detaches: its first process exits
/// 0 and hands over to its child, which is Up (no failed start).
fn sshd_listener_death_is_seen_while_users_are_logged_in(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let sshd = Sshd::new();
    std::fs::write(
        sshd.dir.0.join("conf/sshd.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"{}\"\nrestart = \"{}\"\nretry = 2\n",
            sshd.exe.display(),
            sshd.command()
        ),
    )
    .unwrap();
    let listener = sshd.start();
    let mut old_session = sshd.session();
    let mut psmon = Psmon::start(&sshd.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), listener, "{up}");
    assert_eq!(up["running"], 1, "sessions are not instances: {up}");

    let mut new_session = sshd.session();
    psmon.collect(Duration::from_millis(200));
    // Kill the newest session's processes: nothing to say.
    let children: Vec<u32> = pids_of(&sshd.exe)
        .into_iter()
        .filter(|p| proc_ppid(*p) == Some(listener))
        .collect();
    let newest = children
        .iter()
        .copied()
        .max_by_key(|p| proc_start_ticks(*p))
        .expect("a session");
    kill_pid(newest);
    let _ = new_session.wait();
    let after = psmon.collect(Duration::from_millis(1500));
    assert!(
        messages_containing(&after, "Down").is_empty(),
        "a session's end is not a death: {after:?}"
    );

    kill_pid(listener);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), listener, "{down}");
    assert_eq!(down["signal"], 9, "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != listener);
    assert_eq!(pid_of(&up), sshd.listener(), "the new listener is Up: {up}");
    assert!(sshd.logs_in(), "no new session after the restart");
    psmon.collect(Duration::from_millis(1200));
    assert!(
        messages_containing(&psmon.seen, "Set pid fail").is_empty(),
        "sshd detaching is not a failed start: {:?}",
        psmon.seen
    );
    assert_eq!(up["running"], 1, "one listener: {up}");
    assert_eq!(
        messages_containing(&psmon.seen, "Try to restart").len(),
        1,
        "{:?}",
        psmon.seen
    );
    let _ = old_session.kill();
    let _ = old_session.wait();
}

/// Debian's dovecot (IMAP only, no TLS) on a private port and directory.
/// Started, it detaches: its first process forks the master and exits 0.
struct Dovecot {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
}

impl Dovecot {
    fn new() -> Dovecot {
        installed("/usr/sbin/dovecot", "dovecot-core");
        installed("/usr/lib/dovecot/imap-login", "dovecot-imapd");
        let dir = TempDir::new("dovecot");
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        std::fs::create_dir_all(dir.0.join("state")).unwrap();
        let port = free_port();
        let conf = dir.0.join("dovecot.conf");
        let d = dir.0.display();
        std::fs::write(
            &conf,
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
                 protocols = imap\nlisten = 127.0.0.1\nssl = no\n\
                 default_internal_user = dovecot\ndefault_login_user = dovenull\n\
                 service imap-login {{\n  inet_listener imap {{\n    port = {port}\n  }}\n\
                   inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
                 passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/home\n}}\n"
            ),
        )
        .unwrap();
        Dovecot { dir, port, conf }
    }

    fn command(&self) -> String {
        format!("/usr/sbin/dovecot -c {}", self.conf.display())
    }

    fn start(&self) -> u32 {
        start_daemon(&self.command(), "dovecot");
        self.wait_greeting();
        self.master()
    }

    fn wait_greeting(&self) {
        wait_answer(self.port, b"", "* OK");
    }

    fn master(&self) -> u32 {
        read_pid(self.dir.0.join("run/master.pid"))
    }

    /// `doveadm reload`: the master re-reads its configuration and forks
    /// new workers.
    fn reload(&self) {
        start_daemon(
            &format!("/usr/bin/doveadm -c {} reload", self.conf.display()),
            "doveadm reload",
        );
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        for master in pids_with_cmdline(&self.conf.display().to_string()) {
            kill_with_children(master);
        }
    }
}

/// dovecot as a one-member `switch` group with an IMAP probe, the
/// watcher's own use: each kill of its master is one group restart that
/// succeeds (the detaching start hands over to the master it forks), and
/// the group never fails over a service that answers.
fn dovecot_switch_group_never_fails_over_a_working_service(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let dv = Dovecot::new();
    let failed_over = dv.dir.0.join("failed-over");
    std::fs::write(
        dv.dir.0.join("conf/mail.toml"),
        format!(
            "monitor_interval = 1\n\
             [[entry]]\npath = \"/usr/sbin/dovecot\"\nrestart = \"{}\"\n\
             [entry.probe]\nkind = \"send_expect\"\naddress = \"127.0.0.1:{}\"\nexpect = \"* OK\"\n\
             interval = 1\ntimeout = 2\n\
             [[group]]\nname = \"mail\"\nmembers = [\"/usr/sbin/dovecot\"]\nrestarts = 50\n\
             action = \"switch\"\nfailover = \"touch {}\"\n",
            dv.command(),
            dv.port,
            failed_over.display()
        ),
    )
    .unwrap();
    let mut master = dv.start();
    let mut psmon = Psmon::start(&dv.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), master, "{up}");
    // Twenty deaths in a row, each a real one: the budget (50, as a kill
    // may cost two attempts where the reaper is late) is not what is
    // tested, that no working dovecot is ever failed over is.
    const KILLS: usize = 20;
    for kill in 1..=KILLS {
        let from = psmon.seen.len();
        kill_pid(master);
        let down = psmon.wait("Down");
        assert_eq!(pid_of(&down), master, "kill {kill}: {down}");
        let up = psmon.wait_for(") Up", |m| m["pid"] != master);
        psmon.wait("Group 'mail': restarted in");
        dv.wait_greeting();
        // Past start_secs, so the next kill is a death, not a failed start.
        psmon.collect(Duration::from_millis(1200));
        let this = &psmon.seen[from..];
        // Where the killed master's parent reaps it late (this host's PID
        // 1 takes ~1.6 s), dovecot refuses to start while its pidfile
        // names the zombie: that attempt fails, and the next waits for the
        // reaping. No other attempt fails.
        let attempts = messages_containing(this, "Group 'mail': restarting").len();
        assert!((1..=2).contains(&attempts), "kill {kill}: {this:?}");
        for failed in messages_containing(this, "restart command for")
            .into_iter()
            .filter(|m| m["level"] == "ERROR")
        {
            let zombie = format!("already running with PID {master} ");
            assert!(
                failed["output"]
                    .as_str()
                    .is_some_and(|o| o.contains(&zombie)),
                "kill {kill}: only the zombie stops a start: {failed}"
            );
        }
        master = dv.master();
        assert_eq!(
            pid_of(&up),
            master,
            "kill {kill}: the new master is Up: {this:?}"
        );
    }
    // Attempts never overlap: each starts after the last one's command.
    let mut running = 0;
    for m in &psmon.seen {
        let text = m["message"].as_str().unwrap_or_default();
        if text.contains("Group 'mail': starting") {
            running += 1;
        } else if text.starts_with("restart command for") {
            running -= 1;
        }
        assert!(
            running <= 1,
            "two restart commands at once: {:?}",
            psmon.seen
        );
    }
    for bad in ["retry over", "failover command"] {
        assert!(
            messages_containing(&psmon.seen, bad).is_empty(),
            "{bad}: {:?}",
            psmon.seen
        );
    }
    assert!(!failed_over.exists(), "failed over a working dovecot");
}

/// Debian's apache2 on a private port and directory, workers as www-data.
struct Apache {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
    pidfile: PathBuf,
}

impl Apache {
    fn new() -> Apache {
        installed("/usr/sbin/apache2", "apache2");
        installed("/usr/bin/fuser", "psmisc");
        // Under /tmp: its workers (www-data) must reach the document root
        // wherever the checkout is.
        let dir = TempDir::new_in(Path::new("/tmp"), "apache");
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        std::fs::create_dir_all(dir.0.join("www")).unwrap();
        std::fs::write(dir.0.join("www/index.html"), "ok\n").unwrap();
        let port = free_port();
        let conf = dir.0.join("apache2.conf");
        let pidfile = dir.0.join("apache2.pid");
        let d = dir.0.display();
        std::fs::write(
            &conf,
            format!(
                "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
                 LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
                 ServerName localhost\nListen 127.0.0.1:{port}\nPidFile {}\n\
                 ErrorLog {d}/error.log\nDefaultRuntimeDir {d}\nMutex file:{d} default\n\
                 DocumentRoot {d}/www\nUser www-data\nGroup www-data\n\
                 <Directory {d}/www>\n  Require all granted\n</Directory>\n",
                pidfile.display()
            ),
        )
        .unwrap();
        Apache {
            dir,
            port,
            conf,
            pidfile,
        }
    }

    fn command(&self) -> String {
        format!("/usr/sbin/apache2 -f {} -k start", self.conf.display())
    }

    fn start(&self) -> u32 {
        start_daemon(&self.command(), "apache2");
        wait_answer(self.port, b"GET /index.html HTTP/1.0\r\n\r\n", "200");
        self.master()
    }

    fn master(&self) -> u32 {
        read_pid(&self.pidfile)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = Command::new("fuser")
            .args(["-k", "-s", &format!("{}/tcp", self.port)])
            .stderr(std::process::Stdio::null())
            .status();
        for pid in pids_with_cmdline(&self.conf.display().to_string()) {
            kill_pid(pid);
        }
    }
}

/// Debian's apache2 watched by its plain path, as the seed would: its
/// master is the instance (its workers are www-data's and forked by it);
/// a worker's death is nothing; the master's is Down, and the restart
/// (freeing the port from the workers it left) answers HTTP 200 again, the
/// detaching start handing over to the new master.
fn apache_plain_path(source: &str) {
    apache_master_counts(source, false)
}

/// The same with the rule by pidfile.
fn apache_pidfile(source: &str) {
    apache_master_counts(source, true)
}

fn apache_master_counts(source: &str, by_pidfile: bool) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    let a = Apache::new();
    let pidfile = if by_pidfile {
        format!("pidfile = \"{}\"\n", a.pidfile.display())
    } else {
        String::new()
    };
    std::fs::write(
        a.dir.0.join("conf/apache.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"/usr/sbin/apache2\"\n{pidfile}\
             restart = \"fuser -k {}/tcp; {}\"\nretry = 3\n",
            a.port,
            a.command()
        ),
    )
    .unwrap();
    let master = a.start();
    let mut psmon = Psmon::start(&a.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), master, "{up}");
    assert_eq!(up["running"], 1, "{up}");

    let worker = pids_with_cmdline(&a.conf.display().to_string())
        .into_iter()
        .find(|p| proc_ppid(*p) == Some(master))
        .expect("a worker");
    kill_pid(worker);
    let after = psmon.collect(Duration::from_millis(1500));
    assert!(
        messages_containing(&after, "Down").is_empty(),
        "a worker's death is nothing: {after:?}"
    );

    kill_pid(master);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), master, "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != master);
    wait_answer(a.port, b"GET /index.html HTTP/1.0\r\n\r\n", "200");
    assert_eq!(pid_of(&up), a.master(), "the new master is Up: {up}");
    psmon.collect(Duration::from_millis(1200));
    assert!(
        messages_containing(&psmon.seen, "Retry over").is_empty(),
        "{:?}",
        psmon.seen
    );
}

/// A `#!` wrapper that serves HTTP on a port of its own through python,
/// which it either execs (`exec python3 -m http.server`, the usual pattern)
/// or runs as its child.
struct Wrapper {
    dir: TempDir,
    script: PathBuf,
    port: u16,
}

impl Wrapper {
    fn new(execs: bool) -> Wrapper {
        installed("/usr/bin/python3", "python3");
        let dir = TempDir::new("wrapper");
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let port = free_port();
        let script = dir.0.join("serve");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncd {}\n{}python3 -m http.server {port} --bind 127.0.0.1\n",
                dir.0.display(),
                if execs { "exec " } else { "" }
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Wrapper { dir, script, port }
    }

    /// How an admin starts it in the background, and the restart command.
    fn command(&self) -> String {
        format!("{} >/dev/null 2>&1 &", self.script.display())
    }

    /// One TOML entry with this rule and restart command.
    fn watch(&self, rule: &str, restart: &str) {
        std::fs::write(
            self.dir.0.join("conf/serve.toml"),
            format!(
                "monitor_interval = 1\n[[entry]]\n{rule}\nrestart = \"{restart}\"\nretry = 3\n"
            ),
        )
        .unwrap();
    }

    fn start(&self) {
        start_daemon(&self.command(), "the wrapper");
        self.wait_answer();
    }

    fn wait_answer(&self) {
        wait_answer(self.port, b"GET / HTTP/1.0\r\n\r\n", "200");
    }

    /// The python processes serving the port.
    fn servers(&self) -> Vec<u32> {
        pids_with_cmdline(&format!("http.server {}", self.port))
    }

    /// Kills the server `pid` (the instance): Down with its pid, one server
    /// back and answering, never two meanwhile, no failed start.
    fn kill_and_see_one_back(&self, psmon: &mut Psmon, pid: u32) {
        self.never_two(psmon, Duration::from_secs(1));
        kill_pid(pid);
        let down = psmon.wait("Down");
        assert_eq!(pid_of(&down), pid, "{down}");
        let up = psmon.wait_for(") Up", |m| m["pid"] != pid);
        self.wait_answer();
        self.never_two(psmon, Duration::from_millis(1500));
        assert_eq!(self.servers(), vec![pid_of(&up)], "{:?}", psmon.seen);
        assert!(messages_containing(&psmon.seen, "Set pid fail").is_empty());
    }

    /// Collects psmon's messages for `period`, asserting all along that at
    /// most one server runs.
    fn never_two(&self, psmon: &mut Psmon, period: Duration) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            let servers = self.servers();
            assert!(servers.len() <= 1, "servers {servers:?}: {:?}", psmon.seen);
            psmon.collect(Duration::from_millis(20));
        }
    }
}

impl Drop for Wrapper {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&self.dir.0.display().to_string())
            .into_iter()
            .chain(self.servers())
        {
            kill_pid(pid);
        }
    }
}

/// A service started through a `#!` wrapper that execs its program, watched
/// by the wrapper's path: the process the restart started is followed
/// through the exec, so it is Up while it serves, and its death is one
/// restart; never two servers.
fn wrapper_that_execs_its_service(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let w = Wrapper::new(true);
    w.watch(&format!("path = \"{}\"", w.script.display()), &w.command());
    let mut psmon = Psmon::start(&w.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    w.wait_answer();
    let server = w.servers();
    assert_eq!(
        server,
        vec![pid_of(&up)],
        "the server is the instance: {up}"
    );
    w.kill_and_see_one_back(&mut psmon, server[0]);
    assert_eq!(
        messages_containing(&psmon.seen, "Try to restart").len(),
        2,
        "found down at start, then the kill: {:?}",
        psmon.seen
    );
}

/// The same wrapper already serving when psmon starts runs python, not the
/// wrapper: the README's rule on what it runs now finds it Up at start, and
/// the wrapper as its restart command brings back one server per kill.
fn wrapper_started_before_psmon_by_the_readme_rule(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    installed("/usr/bin/python3.11", "python3.11");
    let w = Wrapper::new(true);
    w.start();
    let server = w.servers();
    assert_eq!(server.len(), 1);
    w.watch(
        &format!(
            "path = \"/usr/bin/python3.11\"\ncmdline = \"*http.server {}*\"",
            w.port
        ),
        &w.command(),
    );
    let mut psmon = Psmon::start(&w.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), server[0], "found Up at start: {up}");
    w.kill_and_see_one_back(&mut psmon, server[0]);
    assert_eq!(
        messages_containing(&psmon.seen, "Try to restart").len(),
        1,
        "only the kill: {:?}",
        psmon.seen
    );
}

/// A wrapper that runs python as its child, watched by its path, running
/// before psmon starts: the interpreter running the script is the instance
/// (found Up), python its worker. Python killed: the wrapper ends with it,
/// one restart. The wrapper killed: its orphaned python keeps no entry up
/// (Down), and the restart command frees the port first, as the README
/// says; never two servers.
fn wrapper_that_runs_its_service_as_a_child(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    installed("/usr/bin/fuser", "psmisc");
    let w = Wrapper::new(false);
    w.start();
    let wrapper = || pids_with_cmdline(&w.script.display().to_string());
    let first = wrapper();
    assert_eq!(first.len(), 1);
    w.watch(
        &format!("path = \"{}\"", w.script.display()),
        &format!("fuser -k {}/tcp; {}", w.port, w.command()),
    );
    let mut psmon = Psmon::start(&w.dir.0.join("conf"), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), first[0], "the wrapper is the instance: {up}");
    w.never_two(&mut psmon, Duration::from_secs(1));
    // Its python dies: the wrapper ends too.
    kill_pid(w.servers()[0]);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), first[0], "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != first[0]);
    w.wait_answer();
    w.never_two(&mut psmon, Duration::from_millis(1500));
    // The wrapper dies: python is orphaned and still serves.
    let second = pid_of(&up);
    kill_pid(second);
    let down = psmon.wait_for("Down", |m| m["pid"] == second);
    assert_eq!(pid_of(&down), second, "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != second);
    w.wait_answer();
    w.never_two(&mut psmon, Duration::from_millis(1500));
    assert_eq!(wrapper(), vec![pid_of(&up)], "{:?}", psmon.seen);
    assert_eq!(w.servers().len(), 1);
    assert_eq!(
        messages_containing(&psmon.seen, "Try to restart").len(),
        2,
        "one restart per kill: {:?}",
        psmon.seen
    );
    for bad in ["Set pid fail", "Retry over"] {
        assert!(
            messages_containing(&psmon.seen, bad).is_empty(),
            "{bad}: {:?}",
            psmon.seen
        );
    }
}

/// Kills the processes whose command line holds this, when dropped.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&self.0) {
            kill_pid(pid);
        }
    }
}

/// psmon started under a child subreaper (as PID 1 is on a host) that
/// reaps its orphans every `every` seconds, or at once when 0 (as systemd
/// does); the daemons psmon starts are its orphans too.
fn psmon_under_reaper(dir: &Path, every: f64, source: &str) -> Psmon {
    const REAPER: &str = r#"
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
every = float(sys.argv[1])
child = os.fork()
if child == 0:
    os.execv(sys.argv[2], sys.argv[2:])
while True:
    if every > 0:
        time.sleep(every)
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG if every > 0 else 0)
            if pid == child:
                sys.exit(0)
            if pid == 0:
                break
    except ChildProcessError:
        sys.exit(0)
"#;
    let reaper = dir.join("reaper.py");
    std::fs::write(&reaper, REAPER).unwrap();
    let reaper = reaper.display().to_string();
    let every = every.to_string();
    Psmon::start_in(
        &["/usr/bin/python3", &reaper, &every],
        &dir.join("conf"),
        source,
    )
}

/// Debian's rsyslogd, which refuses to start while its pidfile names a
/// live pid, under an init that reaps late: the attempt right after the
/// kill meets the zombie and fails, the next waits for the reaping and
/// succeeds — the seed's `retry 3` is not spent in a third of a second.
fn rsyslogd_under_an_init_that_reaps_late(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    installed("/usr/sbin/rsyslogd", "rsyslog");
    installed("/usr/bin/python3", "python3");
    let dir = TempDir::new("rsyslog");
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let port = free_port();
    let d = dir.0.display();
    let conf = dir.0.join("rsyslog.conf");
    let pidfile = dir.0.join("rsyslogd.pid");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             *.* action(type=\"omfile\" file=\"{d}/messages\")\n"
        ),
    )
    .unwrap();
    let command = format!(
        "/usr/sbin/rsyslogd -f {} -i {}",
        conf.display(),
        pidfile.display()
    );
    let _cleanup = KillOnDrop(conf.display().to_string());
    std::fs::write(
        dir.0.join("conf/rsyslog.toml"),
        format!(
            "monitor_interval = 1\n[[entry]]\npath = \"/usr/sbin/rsyslogd\"\n\
             restart = \"{command}\"\nretry = 3\n"
        ),
    )
    .unwrap();
    // Reaping every 1.5 s, as this VM's init and many containers' do.
    let mut psmon = psmon_under_reaper(&dir.0, 1.5, source);
    // Found down at start: psmon starts it, and it detaches to the reaper.
    let up = psmon.wait(") Up");
    let first = pid_of(&up);
    assert_eq!(
        proc_ppid(first),
        Some(psmon.child.id()),
        "rsyslogd is the late reaper's: {up}"
    );
    psmon.collect(Duration::from_millis(1200));
    let from = psmon.seen.len();
    kill_pid(first);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), first, "{down}");
    let up = psmon.wait_for(") Up", |m| m["pid"] != first);
    assert_eq!(pid_of(&up), read_pid(&pidfile), "{up}");
    psmon.collect(Duration::from_millis(1200));
    let this = &psmon.seen[from..];
    assert!(
        messages_containing(this, "Retry over").is_empty(),
        "{this:?}"
    );
    let attempts = messages_containing(this, "Try to restart").len();
    assert!((1..=2).contains(&attempts), "{this:?}");
}

/// Debian's postfix as a private instance: its own configuration, queue
/// and port (all in `_dir`); the master's pid in the queue's
/// `pid/master.pid`.
struct Postfix {
    _dir: TempDir,
    port: u16,
    etc: PathBuf,
    pidfile: PathBuf,
}

impl Postfix {
    fn new() -> Postfix {
        installed("/usr/lib/postfix/sbin/master", "postfix");
        // Under /tmp: its daemons run as postfix and must reach the queue
        // wherever the checkout is.
        let dir = TempDir::new_in(Path::new("/tmp"), "postfix");
        let etc = dir.0.join("etc");
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        let status = Command::new("chown")
            .arg("postfix")
            .arg(dir.0.join("data"))
            .status()
            .unwrap();
        assert!(status.success());
        let port = free_port();
        let d = dir.0.display();
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\nmyhostname = localhost.localdomain\nmydestination =\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n"
            ),
        )
        .unwrap();
        let mut master = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
        for (name, kind, private, limit) in [
            ("pickup", "unix", "n", "1"),
            ("cleanup", "unix", "n", "0"),
            ("qmgr", "unix", "n", "1"),
            ("rewrite", "unix", "-", "-"),
            ("bounce", "unix", "-", "0"),
            ("defer", "unix", "-", "0"),
            ("trace", "unix", "-", "0"),
            ("proxymap", "unix", "-", "-"),
            ("anvil", "unix", "-", "1"),
            ("scache", "unix", "-", "1"),
            ("postlog", "unix-dgram", "n", "1"),
        ] {
            let program = match name {
                "rewrite" => "trivial-rewrite",
                "defer" | "trace" => "bounce",
                "postlog" => "postlogd",
                other => other,
            };
            master.push_str(&format!(
                "{name} {kind} {private} - n - {limit} {program}\n"
            ));
        }
        std::fs::write(etc.join("master.cf"), master).unwrap();
        let pidfile = dir.0.join("spool/pid/master.pid");
        Postfix {
            _dir: dir,
            port,
            etc,
            pidfile,
        }
    }

    fn command(&self) -> String {
        format!("/usr/sbin/postfix -c {} start", self.etc.display())
    }

    fn master(&self) -> u32 {
        read_pid(&self.pidfile)
    }

    fn wait_greeting(&self) {
        wait_answer(self.port, b"", "220 ");
    }

    /// `postfix reload`: the master re-reads its configuration and its
    /// services start afresh.
    fn reload(&self) {
        start_daemon(
            &format!("/usr/sbin/postfix -c {} reload", self.etc.display()),
            "postfix reload",
        );
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("abort")
            .output();
        let master = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|m| m.trim().parse::<u32>().ok());
        if let Some(master) = master {
            kill_with_children(master);
        }
    }
}

/// The watcher's own use: postfix and dovecot as one `[[group]]` with
/// SMTP `220` and IMAP `* OK` probes, postfix by its pidfile as
/// example.toml says, under an init that reaps at once (as systemd does).
/// Each master killed (twice each, the second time after `doveadm reload`
/// and `postfix reload`) is one group restart that brings both back
/// answering: no failed start, no retry over, no failover, and a reload is
/// no Down.
fn mail_group_restarts_postfix_and_dovecot(source: &str) {
    if !needs_root(&format!("the {source} source")) {
        return;
    }
    let _one = exclusive();
    installed("/usr/bin/python3", "python3");
    let dv = Dovecot::new();
    let pf = Postfix::new();
    let conf = dv.dir.0.join("conf");
    let failed_over = dv.dir.0.join("failed-over");
    std::fs::write(
        conf.join("mail.toml"),
        format!(
            "monitor_interval = 1\n\
             [[entry]]\npath = \"/usr/sbin/dovecot\"\nrestart = \"{}\"\n\
             [entry.probe]\nkind = \"send_expect\"\naddress = \"127.0.0.1:{}\"\nexpect = \"* OK\"\n\
             interval = 1\ntimeout = 2\n\
             [[entry]]\npath = \"/usr/lib/postfix/sbin/master\"\nrestart = \"{}\"\npidfile = \"{}\"\n\
             [entry.probe]\nkind = \"send_expect\"\naddress = \"127.0.0.1:{}\"\nexpect = \"220 \"\n\
             interval = 1\ntimeout = 2\n\
             [[group]]\nname = \"mail\"\nmembers = [\"/usr/sbin/dovecot\", \"/usr/lib/postfix/sbin/master\"]\n\
             restarts = 4\naction = \"switch\"\nfailover = \"touch {}\"\n",
            dv.command(),
            dv.port,
            pf.command(),
            pf.pidfile.display(),
            pf.port,
            failed_over.display()
        ),
    )
    .unwrap();
    let mut psmon = psmon_under_reaper(&dv.dir.0, 0.0, source);
    // Both down at start: the group starts them (not counted).
    psmon.wait("Group 'mail': restarted in");
    dv.wait_greeting();
    pf.wait_greeting();
    psmon.collect(Duration::from_millis(1500));
    let from = psmon.seen.len();
    let mut kills = 0;
    for round in 0..2 {
        if round == 1 {
            // A reload is no death, and the kills after it are seen as
            // before.
            dv.reload();
            pf.reload();
            psmon.collect(Duration::from_millis(1500));
            dv.wait_greeting();
            pf.wait_greeting();
        }
        for which in ["dovecot", "postfix"] {
            let master = if which == "dovecot" {
                dv.master()
            } else {
                pf.master()
            };
            kill_pid(master);
            kills += 1;
            let down = psmon.wait("Down");
            assert_eq!(pid_of(&down), master, "{which} round {round}: {down}");
            psmon.wait("Group 'mail': restarted in");
            dv.wait_greeting();
            pf.wait_greeting();
            assert_ne!(dv.master(), 0);
            // Past start_secs and a probe or two.
            psmon.collect(Duration::from_millis(1500));
        }
    }
    let this = &psmon.seen[from..];
    for bad in [
        "did not start",
        "retry over",
        "Set pid fail",
        "failover command",
    ] {
        assert!(messages_containing(this, bad).is_empty(), "{bad}: {this:?}");
    }
    assert_eq!(
        messages_containing(this, "Group 'mail': restarting").len(),
        kills,
        "one group restart per kill: {this:?}"
    );
    assert_eq!(
        messages_containing(this, "] Down").len(),
        kills,
        "one Down per kill, none for a reload: {this:?}"
    );
    assert!(!failed_over.exists(), "failed over a working mail stack");
}

/// A test directory with a victim copy and a TOML entry for it.
struct Victim {
    dir: TempDir,
    exe: PathBuf,
}

impl Victim {
    fn new(tag: &str) -> Victim {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("conf")).unwrap();
        let exe = victim_copy(&dir.0, "watched");
        Victim { dir, exe }
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    fn entry(&self, path: &Path, extra: &str) {
        std::fs::write(
            self.conf().join("app.toml"),
            format!(
                "monitor_interval = 1\n[[entry]]\npath = \"{}\"\n{extra}\n",
                path.display()
            ),
        )
        .unwrap();
    }

    fn spawn(&self, exe: &Path, args: &[&str]) -> Child {
        let child = spawn_fresh(Command::new(exe).args(args));
        // Until it has exec'd (its exe is no longer this test's).
        let deadline = Instant::now() + TIMEOUT;
        while std::fs::read_link(format!("/proc/{}/exe", child.id()))
            .is_ok_and(|e| e != std::fs::canonicalize(exe).unwrap())
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        kill_all(&self.exe);
        for pid in pids_with_cmdline(&self.dir.0.display().to_string()) {
            kill_pid(pid);
        }
    }
}

/// A symlink to the binary, a process that renamed itself, and a binary
/// replaced on disk while it runs: each is still the entry's process.
fn identity_survives_links_renames_and_updates(source: &str) {
    if source != "poll" && !needs_root(&format!("the {source} source")) {
        return;
    }
    // Symlinked path with another name: only processes started by that name.
    let v = Victim::new("ident-link");
    let link = v.dir.0.join("svc");
    std::os::unix::fs::symlink(&v.exe, &link).unwrap();
    v.entry(&link, "retry = 0");
    let mut by_target = v.spawn(&v.exe, &["sleep"]);
    let mut by_link = v.spawn(&link, &["sleep"]);
    let mut psmon = Psmon::start(&v.conf(), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), by_link.id(), "{up}");
    assert_eq!(up["running"], 1, "{up}");
    kill9(&by_link);
    let down = psmon.wait("Down");
    assert_eq!(pid_of(&down), by_link.id(), "{down}");
    by_link.wait().unwrap();
    kill9(&by_target);
    by_target.wait().unwrap();
    drop(psmon);

    // Renamed itself (PR_SET_NAME) before psmon started: found by its file.
    let v = Victim::new("ident-rename");
    v.entry(&v.exe, "retry = 0");
    let mut renamed = v.spawn(&v.exe, &["rename", "not-the-name"]);
    let mut psmon = Psmon::start(&v.conf(), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), renamed.id(), "{up}");
    kill9(&renamed);
    assert_eq!(pid_of(&psmon.wait("Down")), renamed.id());
    renamed.wait().unwrap();
    drop(psmon);

    // Replaced by an update while it runs (a new file renamed over the
    // path, as package managers do): `/proc/PID/exe` says "(deleted)".
    let v = Victim::new("ident-update");
    v.entry(
        &v.exe,
        &format!(
            "restart = \"{} sleep >/dev/null 2>&1 &\"\nretry = 1",
            v.exe.display()
        ),
    );
    let mut old = v.spawn(&v.exe, &["sleep"]);
    let fresh = v.dir.0.join("watched.new");
    std::fs::copy(victim(), &fresh).unwrap();
    std::fs::rename(&fresh, &v.exe).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", old.id())).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");
    let mut psmon = Psmon::start(&v.conf(), source);
    let up = psmon.wait(") Up");
    assert_eq!(pid_of(&up), old.id(), "{up}");
    kill9(&old);
    old.wait().unwrap();
    let up = psmon.wait_for(") Up", |m| m["pid"] != old.id());
    assert_eq!(pids_of(&v.exe), vec![pid_of(&up)], "the new binary runs");
}

/// A restart command that fails the first time and works the second: the
/// second attempt waits the default back-off (1 s: time for what held the
/// first attempt back to let go), the process comes Up, and the budget is
/// not spent.
fn failed_first_restart_backs_off(source: &str) {
    if source != "poll" && !needs_root(&format!("the {source} source")) {
        return;
    }
    let v = Victim::new("backoff");
    let flag = v.dir.0.join("tried");
    v.entry(
        &v.exe,
        &format!(
            "restart = \"if [ -e {f} ]; then {e} sleep >/dev/null 2>&1 & else touch {f}; exit 1; fi\"\nretry = 3\nstart_secs = 0.5",
            f = flag.display(),
            e = v.exe.display()
        ),
    );
    let mut first = v.spawn(&v.exe, &["sleep"]);
    let mut psmon = Psmon::start(&v.conf(), source);
    psmon.wait_for(") Up", |m| m["pid"] == first.id());
    kill9(&first);
    first.wait().unwrap();
    let t1 = psmon.wait("Try to restart");
    psmon.wait("Set pid fail");
    let backoff = psmon.wait("next restart");
    assert_eq!(backoff["delay_ms"], 1000.0, "{backoff}");
    let t2 = psmon.wait("Try to restart");
    assert_eq!(t2["attempt"], 2, "{t2}");
    let gap = time_of(&t2) - time_of(&t1);
    assert!(
        gap >= 0.999,
        "the second attempt came {gap} s after the first"
    );
    psmon.wait("started");
    let up = psmon.wait_for(") Up", |m| m["pid"] != first.id());
    assert!(pids_of(&v.exe).contains(&pid_of(&up)));
    assert!(messages_containing(&psmon.seen, "Retry over").is_empty());
}

/// Seconds of the message's RFC 3339 time stamp (millisecond precision).
fn time_of(m: &Value) -> f64 {
    let t = m["time"].as_str().unwrap();
    let stamp = humantime::parse_rfc3339(t).unwrap();
    stamp
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A restarted process that dies 5 ms after it starts is a failed attempt,
/// never Up.
fn quick_death_is_never_up(source: &str) {
    if source != "poll" && !needs_root(&format!("the {source} source")) {
        return;
    }
    let v = Victim::new("quick");
    v.entry(
        &v.exe,
        &format!(
            "restart = \"{} nap 5 &\"\nretry = 2\nstart_wait = 2",
            v.exe.display()
        ),
    );
    let mut first = v.spawn(&v.exe, &["sleep"]);
    let mut psmon = Psmon::start(&v.conf(), source);
    psmon.wait_for(") Up", |m| m["pid"] == first.id());
    kill9(&first);
    first.wait().unwrap();
    psmon.wait("Retry over");
    let ups: Vec<&Value> = messages_containing(&psmon.seen, ") Up")
        .into_iter()
        .filter(|m| m["pid"] != first.id())
        .collect();
    assert!(ups.is_empty(), "a process that lived 5 ms was Up: {ups:?}");
    assert_eq!(messages_containing(&psmon.seen, "Set pid fail").len(), 2);
}

macro_rules! on_sources {
    ($($test:ident: $($source:ident),+;)*) => {$(
        mod $test {
            $(#[test]
            fn $source() { super::$test(stringify!($source)) })+
        }
    )*};
}

on_sources!(
    redis_is_watched_by_its_symlinked_path: ebpf, netlink;
    nginx_cmdline: ebpf, netlink;
    nginx_pidfile: ebpf, netlink;
    nginx_main_only: ebpf;
    nginx_plain_path: ebpf;
    identity_survives_links_renames_and_updates: ebpf, netlink, poll;
    failed_first_restart_backs_off: ebpf, netlink, poll;
    quick_death_is_never_up: ebpf, netlink;
    sshd_listener_death_is_seen_while_users_are_logged_in: ebpf, netlink;
    dovecot_switch_group_never_fails_over_a_working_service: ebpf, netlink;
    apache_plain_path: ebpf, netlink;
    apache_pidfile: ebpf, netlink;
    // Not on netlink: its exec event names no file, and by the time /proc
    // is read the wrapper may run python already (README, Limits).
    wrapper_that_execs_its_service: ebpf;
    wrapper_started_before_psmon_by_the_readme_rule: ebpf, netlink;
    wrapper_that_runs_its_service_as_a_child: ebpf, netlink;
    rsyslogd_under_an_init_that_reaps_late: ebpf, netlink;
    mail_group_restarts_postfix_and_dovecot: ebpf, netlink;
);
