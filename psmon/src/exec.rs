//! Running restart and failover commands with the psenv environment and
//! umask, in a process group of its own, with a time limit past which the
//! whole group is killed. The command is always waited for (no zombie), and
//! the tail of what it wrote is kept for the log.
//!
//! A command with no shell syntax — only words, no `$` `` ` `` `*` `?` `[`
//! `]` `;` `&` `|` `<` `>` `(` `)` `{` `}` `~` `#` `'` `"` `\` or newline,
//! no `VAR=value` prefix, not a shell builtin — is executed directly, its
//! first word looked up in PATH, the way systemd runs `ExecStart=` (a
//! leading `exec` is dropped: it means the same). That spares a shell's
//! start-up on every restart. Anything else runs as `/bin/sh -c COMMAND`.
//!
//! Data seen in events (paths, pids, exit codes) reaches the command only
//! through environment variables, never spliced into the shell string.

use std::{
    io::{Read, Seek, SeekFrom},
    os::{fd::AsFd, unix::process::ExitStatusExt},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    facts::{CommandOutcome, Ending},
    spawner::{self, Spawner, Started},
};

/// Bytes of the command's output kept for the log.
const TAIL_BYTES: u64 = 2048;

/// Output file space a daemon the command left running may fill before it
/// is given back; how often that is looked at.
const LEFTOVER_BYTES: u64 = 1 << 20;
const LEFTOVER_CHECK: Duration = Duration::from_millis(250);

/// A command to run, and how.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    /// The command line.
    pub command: String,
    /// psenv's variables, then the PSMON_* details.
    pub env: Vec<(String, String)>,
    /// psenv's UMASK, applied in the child.
    pub umask: Option<u32>,
    /// Past this, its process group is killed.
    pub timeout: Duration,
}

/// Runs the command to its end (or its time limit). Dropped before that
/// (a caller's own deadline, shutdown), it kills the command's process
/// group: a probe that hangs must not leave a process behind each time.
pub async fn run(spec: &CommandSpec, spawner: &Spawner) -> CommandOutcome {
    match start(spec, spawner) {
        Ok(mut running) => {
            running.kill_on_drop = true;
            running.finish().await
        }
        Err(failed) => failed,
    }
}

/// Kills a command's process group when dropped, unless disarmed
/// (`pgid: None`). Only while its leader is not reaped, so the group id
/// is still the command's: the spawner's commands through the spawner,
/// which knows.
struct KillGroupOnDrop<'a> {
    pgid: Option<u32>,
    spawner: Option<&'a Spawner>,
}

impl Drop for KillGroupOnDrop<'_> {
    fn drop(&mut self) {
        match (self.pgid, self.spawner) {
            (Some(pgid), Some(spawner)) => spawner.kill_group(pgid),
            (Some(pgid), None) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            (None, _) => {}
        }
    }
}

/// A command started by [`start`].
pub struct Running {
    child: Child,
    spawner: Spawner,
    output: std::fs::File,
    begun: Instant,
    timeout: Duration,
    /// Whether [`Running::finish`] dropped before the end kills the group.
    kill_on_drop: bool,
}

enum Child {
    /// Started by psmon itself.
    Own(tokio::process::Child),
    /// Asked of the spawner; its answer to come.
    Asked(oneshot::Receiver<Result<Started, String>>),
    Spawned(Started),
    /// The spawner could not start it.
    Failed(String),
}

/// Starts the command now (the restart's latency is up to here): through
/// the spawner when there is one, else from psmon. Its end is
/// [`Running::finish`]'s. `Err` is the outcome of a command psmon could
/// not start.
pub fn start(spec: &CommandSpec, spawner: &Spawner) -> Result<Running, CommandOutcome> {
    let begun = Instant::now();
    let output = match output_file() {
        Ok(f) => f,
        Err(e) => {
            return Err(spawn_failed(
                begun,
                format!("cannot create an output file: {e}"),
            ));
        }
    };
    let argv = argv(&spec.command);
    let running = |child, output| Running {
        child,
        spawner: spawner.clone(),
        output,
        begun,
        timeout: spec.timeout,
        kill_on_drop: false,
    };
    if let Some(answer) = spawner.spawn(argv.clone(), spec.env.clone(), spec.umask, output.as_fd())
    {
        return Ok(running(Child::Asked(answer), output));
    }
    let (out, err) = match (output.try_clone(), output.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(spawn_failed(
                begun,
                "cannot duplicate the output file".into(),
            ));
        }
    };
    let mut cmd = tokio::process::Command::from(spawner::command(&argv, &spec.env));
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    // Without a pre_exec hook std spawns with posix_spawn (vfork-like), the
    // fast path of a restart: descriptors psmon inherited are made
    // close-on-exec once at start instead (`cloexec_inherited_fds`).
    if let Some(mask) = spec.umask {
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(c) => Ok(running(Child::Own(c), output)),
        Err(e) => Err(spawn_failed(begun, e.to_string())),
    }
}

/// The words to execute for `command`: its own when it needs no shell,
/// else `/bin/sh -c COMMAND`.
fn argv(command: &str) -> Vec<String> {
    match direct_argv(command) {
        Some(words) => words.into_iter().map(String::from).collect(),
        None => vec!["/bin/sh".into(), "-c".into(), command.into()],
    }
}

impl Running {
    /// Its process group (the command's pid), once it has started; `None`
    /// when it could not be started.
    pub async fn pgid(&mut self) -> Option<u32> {
        if let Child::Asked(answer) = &mut self.child {
            self.child = match answer.await {
                Ok(Ok(started)) => Child::Spawned(started),
                Ok(Err(error)) => Child::Failed(error),
                Err(_) => Child::Failed(spawner::GONE.into()),
            };
        }
        match &self.child {
            Child::Own(c) => c.id(),
            Child::Spawned(s) => Some(s.pid),
            Child::Asked(_) | Child::Failed(_) => None,
        }
    }

    /// Waits for the command to end, or kills its whole group at the limit.
    pub async fn finish(mut self) -> CommandOutcome {
        let pgid = self.pgid().await;
        let spawned = matches!(self.child, Child::Spawned(_));
        let mut guard = KillGroupOnDrop {
            pgid: pgid.filter(|_| self.kill_on_drop),
            spawner: spawned.then_some(&self.spawner),
        };
        let deadline = tokio::time::Instant::from_std(self.begun + self.timeout);
        let ending = match &mut self.child {
            Child::Own(child) => wait_own(child, deadline).await,
            Child::Spawned(started) => wait_spawned(started, &self.spawner, deadline).await,
            Child::Failed(error) => Ending::SpawnFailed(std::mem::take(error)),
            Child::Asked(_) => Ending::SpawnFailed(spawner::GONE.into()),
        };
        guard.pgid = None;
        drop(guard);
        let output_tail = tail(&mut self.output);
        bound_leftover_output(self.output);
        CommandOutcome {
            ending,
            elapsed: self.begun.elapsed(),
            output_tail,
        }
    }
}

/// The end of a command psmon started itself.
async fn wait_own(child: &mut tokio::process::Child, deadline: tokio::time::Instant) -> Ending {
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => ending(status),
        Ok(Err(e)) => Ending::SpawnFailed(e.to_string()),
        Err(_) => {
            if let Some(pgid) = child.id() {
                // The whole group: the shell and whatever it started and still runs.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Ending::TimedOut
        }
    }
}

/// The end of a command the spawner started, as it reports it. Should
/// the spawner be gone first, the command is nobody's child psmon can
/// wait for: it is watched as an adopted one is, to its end or its limit.
async fn wait_spawned(
    started: &mut Started,
    spawner: &Spawner,
    deadline: tokio::time::Instant,
) -> Ending {
    match tokio::time::timeout_at(deadline, &mut started.exit).await {
        Ok(Ok(status)) => ending(std::process::ExitStatus::from_raw(status)),
        Ok(Err(_gone)) => await_unowned(started.pid, deadline).await,
        Err(_) => {
            // The whole group: the shell and whatever it started and still runs.
            spawner.kill_group(started.pid);
            let _ = (&mut started.exit).await;
            Ending::TimedOut
        }
    }
}

/// Waits for a command nobody psmon can wait on started (a psmon that
/// died, a spawner that is gone) to end, polling whether it still leads
/// its group; at `deadline` kills the group. [`Ending::Adopted`] (its
/// status cannot be known) or [`Ending::TimedOut`].
pub async fn await_unowned(pgid: u32, deadline: tokio::time::Instant) -> Ending {
    while tokio::task::spawn_blocking(move || leads_its_group(pgid))
        .await
        .unwrap_or(false)
    {
        if tokio::time::Instant::now() >= deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Ending::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ending::Adopted
}

fn ending(status: std::process::ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(c), _) => Ending::Exited(c),
        (None, Some(s)) => Ending::Signaled(s),
        (None, None) => Ending::Exited(-1),
    }
}

/// The command has ended, but what it started in the background (`daemon
/// &`) may still write to its output file, for as long as it runs: an
/// unnamed file nobody reads, growing in /tmp (RAM where that is tmpfs).
/// While anyone else has it open for writing, its space is given back past
/// [`LEFTOVER_BYTES`] (a hole punched; the writer never notices, and never
/// gets the SIGPIPE a pipe with no reader would give it). psmon's own
/// handle is a second open file, so that a write lease (granted only when
/// nobody else writes the file) tells when the writers are gone.
fn bound_leftover_output(shared: std::fs::File) {
    let Ok(mine) = crate::proc::reopen(&shared) else {
        return;
    };
    drop(shared);
    if !others_write(&mine) || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LEFTOVER_CHECK).await;
            let Ok(meta) = mine.metadata() else { return };
            if std::os::unix::fs::MetadataExt::blocks(&meta) * 512 > LEFTOVER_BYTES {
                let _ = nix::fcntl::fallocate(
                    &mine,
                    nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    0,
                    meta.len() as libc::off_t,
                );
            }
            if !others_write(&mine) {
                return;
            }
        }
    });
}

/// Whether another open file writes `file`'s inode: a write lease is
/// refused (EAGAIN) exactly then. Other errors (leases disabled): assumed
/// so, which only keeps the file watched.
fn others_write(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor this function borrows, integer arguments.
    let leased = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } == 0;
    if leased {
        // SAFETY: as above.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
    !leased
}

/// Whether process `pgid` still runs (not a zombie) and leads its process
/// group: a command psmon started and then lost (psmon restarted) is still
/// running. Its pid cannot be another process's while the group exists.
fn leads_its_group(pgid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(pgid as i32);
    let leads = nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == pid);
    let mut buf = Vec::new();
    leads && crate::proc::read_stat(pgid, &mut buf).is_some_and(|s| !s.is_dead())
}

/// Characters that make a command need a shell.
const SHELL_SYNTAX: &[char] = &[
    '$', '`', '*', '?', '[', ']', ';', '&', '|', '<', '>', '(', ')', '{', '}', '~', '#', '\'', '"',
    '\\', '\n',
];

/// Names the shell understands itself, with no program of that name to run.
const SHELL_ONLY: &[&str] = &[
    "!", ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "declare", "do",
    "done", "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi", "for",
    "function", "getopts", "hash", "if", "jobs", "let", "local", "read", "readonly", "return",
    "select", "set", "shift", "source", "then", "time", "times", "trap", "type", "typeset",
    "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The words of `command` when it can be executed without a shell (see
/// the module docs); `None` when it needs one.
pub fn direct_argv(command: &str) -> Option<Vec<&str>> {
    if command.contains(SHELL_SYNTAX) {
        return None;
    }
    let mut words: Vec<&str> = command.split_ascii_whitespace().collect();
    if words.first() == Some(&"exec") {
        words.remove(0);
    }
    let first = *words.first()?;
    if first.contains('=') || first.starts_with('-') || SHELL_ONLY.contains(&first) {
        return None;
    }
    Some(words)
}

/// Marks every descriptor above stderr close-on-exec, so that commands
/// psmon runs get only 0–2 whatever psmon inherited from its own parent
/// without `O_CLOEXEC` (everything psmon opens itself is close-on-exec).
/// Called once at start, before psmon opens anything.
pub fn cloexec_inherited_fds() {
    // SAFETY: plain syscalls with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Before Linux 5.11: one by one, up to a bound.
        for fd in 3..4096 {
            // SAFETY: fcntl on a descriptor number; a closed one just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn spawn_failed(started: Instant, why: String) -> CommandOutcome {
    CommandOutcome {
        ending: Ending::SpawnFailed(why),
        elapsed: started.elapsed(),
        output_tail: String::new(),
    }
}

/// An unnamed temporary file: daemons the command starts may keep writing
/// to it without ever getting SIGPIPE, it vanishes when they close it, and
/// [`bound_leftover_output`] keeps what it holds small meanwhile.
fn output_file() -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
}

/// The last [`TAIL_BYTES`] of the output, starting at a line (or, in one
/// long line, a word) rather than in the middle of one.
fn tail(file: &mut std::fs::File) -> String {
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    String::from_utf8_lossy(cut_to_start(&bytes, len > TAIL_BYTES))
        .trim()
        .to_string()
}

/// `bytes` from its first whole line or word, when `cut` (it is the end of
/// something longer).
fn cut_to_start(bytes: &[u8], cut: bool) -> &[u8] {
    if !cut {
        return bytes;
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let at = body
        .iter()
        .position(|b| *b == b'\n')
        .or_else(|| body.iter().position(|b| b.is_ascii_whitespace()));
    match at {
        Some(i) => &bytes[i + 1..],
        None => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways a command is started: from psmon, and by a spawner
    /// (served by a thread here, forked from `main` in `psmon run`).
    fn spawners() -> [(&'static str, Spawner); 2] {
        [
            ("psmon itself", Spawner::none()),
            ("the spawner", spawner::in_thread()),
        ]
    }

    #[test]
    fn a_cut_tail_starts_at_a_line_or_a_word() {
        assert_eq!(cut_to_start(b"ng line\nlast line\n", true), b"last line\n");
        assert_eq!(cut_to_start(b"rd and more words", true), b"and more words");
        assert_eq!(cut_to_start(b"whole\n", false), b"whole\n");
        assert_eq!(cut_to_start(b"onewordonly", true), b"onewordonly");
    }

    #[test]
    fn plain_words_run_directly_and_shell_syntax_goes_to_the_shell() {
        assert_eq!(
            direct_argv("/usr/sbin/sshd -D -f /etc/ssh/sshd_config"),
            Some(vec!["/usr/sbin/sshd", "-D", "-f", "/etc/ssh/sshd_config"])
        );
        assert_eq!(
            direct_argv("  systemctl start  redis "),
            Some(vec!["systemctl", "start", "redis"])
        );
        assert_eq!(
            direct_argv("exec /opt/app/bin/app --port 80"),
            Some(vec!["/opt/app/bin/app", "--port", "80"])
        );
        for shell in [
            "",
            "exec",
            "/bin/app >/dev/null 2>&1 &",
            "/bin/app $HOME",
            "/bin/app `date`",
            "/bin/app *.conf",
            "a; b",
            "a && b",
            "a | b",
            "/bin/app 'quoted arg'",
            "/bin/app \"quoted\"",
            "/bin/app ~/x",
            "/bin/app # comment",
            "/bin/app a\\ b",
            "/bin/app\nsecond",
            "LANG=C /bin/app",
            "cd /opt/app && ./run",
            "cd /opt/app",
            ". /etc/profile",
            "ulimit -n 65536",
            "if true",
        ] {
            assert_eq!(direct_argv(shell), None, "{shell:?}");
        }
    }

    #[tokio::test]
    async fn a_direct_command_gets_the_same_environment_group_and_limit() {
        for (by, spawner) in spawners() {
            // `env` prints what it was given; it is run without a shell.
            let out = run(&spec("env", 5000), &spawner).await;
            assert!(out.ok(), "{by}: {:?}", out.ending);
            assert!(
                out.output_tail.contains("PSMON_PATH=/usr/sbin/sshd"),
                "{by}: {}",
                out.output_tail
            );
            assert!(
                out.output_tail.contains("PATH=/usr/local/sbin"),
                "{by}: {}",
                out.output_tail
            );
            // A direct command that outlives its limit is killed like any other.
            let out = run(&spec("sleep 5", 200), &spawner).await;
            assert_eq!(out.ending, Ending::TimedOut, "{by}");
            // A program that does not exist is said so, not run by a shell.
            let out = run(
                &spec("/nonexistent/psmon-test-program --flag", 5000),
                &spawner,
            )
            .await;
            assert!(
                matches!(&out.ending, Ending::SpawnFailed(e) if e.contains("No such file")),
                "{by}: {:?}",
                out.ending
            );
        }
    }

    fn spec(command: &str, timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            command: command.into(),
            env: vec![("PSMON_PATH".into(), "/usr/sbin/sshd".into())],
            umask: Some(0o077),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn reports_status_output_env_and_umask() {
        for (by, spawner) in spawners() {
            let command = "echo \"$PSMON_PATH\"; umask; echo oops >&2; exit 3";
            let out = run(&spec(command, 5000), &spawner).await;
            assert_eq!(out.ending, Ending::Exited(3), "{by}");
            assert!(!out.ok());
            assert_eq!(out.output_tail, "/usr/sbin/sshd\n0077\noops", "{by}");
        }
    }

    #[tokio::test]
    async fn runs_in_the_root_directory_with_only_the_standard_fds() {
        use std::os::fd::IntoRawFd;
        // A descriptor psmon might have inherited without O_CLOEXEC.
        let leaked = std::fs::File::open("/proc/self/stat")
            .unwrap()
            .into_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns.
        unsafe { libc::fcntl(leaked, libc::F_SETFD, 0) };
        // What `main` does at start.
        cloexec_inherited_fds();
        for (by, spawner) in spawners() {
            let command = "pwd; ls /proc/self/fd | sort -n | tr '\\n' ' '";
            let out = run(&spec(command, 5000), &spawner).await;
            let mut lines = out.output_tail.lines();
            assert_eq!(lines.next(), Some("/"), "{by}");
            // 0-2, and the directory `ls` itself opened to list them.
            assert_eq!(
                lines.next().map(str::trim),
                Some("0 1 2 3"),
                "{by}: {}",
                out.output_tail
            );
        }
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(leaked) };
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_with_its_children() {
        for (by, spawner) in spawners() {
            let dir = std::env::temp_dir().join(format!("psmon-exec-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pidfile = dir.join("child.pid");
            let cmd = format!("sleep 1000 & echo $! > {}; sleep 1000", pidfile.display());
            let out = run(&spec(&cmd, 300), &spawner).await;
            assert_eq!(out.ending, Ending::TimedOut, "{by}");
            // The background child was killed too.
            ended(&pidfile, &format!("{by}: the background child survived")).await;
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// Waits until the process whose pid `pidfile` holds no longer runs
    /// (gone, or a zombie awaiting its reaper); `survived` if it still
    /// does after 5 s.
    async fn ended(pidfile: &std::path::Path, survived: &str) {
        let pid: u32 = std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        while crate::proc::read_stat(pid, &mut buf).is_some_and(|s| !s.is_dead()) {
            assert!(Instant::now() < deadline, "{survived}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_shell_command_is_a_failure_not_a_panic() {
        for (by, spawner) in spawners() {
            // Quoted: through the shell, which says it is not found.
            let out = run(&spec("/nonexistent/command 'x'", 5000), &spawner).await;
            assert_eq!(out.ending, Ending::Exited(127), "{by}");
            assert!(
                out.output_tail.contains("not found"),
                "{by}: {}",
                out.output_tail
            );
        }
    }

    /// A probe given up before its command ends (its caller's deadline)
    /// leaves nothing behind, whoever started it.
    #[tokio::test]
    async fn a_command_dropped_before_its_end_is_killed() {
        for (by, spawner) in spawners() {
            let dir = std::env::temp_dir().join(format!("psmon-drop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pidfile = dir.join("pid");
            let cmd = format!("echo $$ > {}; exec sleep 1000", pidfile.display());
            let given_up = tokio::time::timeout(
                Duration::from_millis(300),
                run(&spec(&cmd, 60_000), &spawner),
            )
            .await;
            assert!(given_up.is_err(), "{by}");
            ended(&pidfile, &format!("{by}: the dropped command survived")).await;
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// With its spawner gone, psmon starts commands itself, and one the
    /// spawner started is still waited for to its end.
    #[tokio::test]
    async fn commands_outlive_their_spawner() {
        let (spawner, server) = spawner::in_thread_for(1);
        let running = start(&spec("sleep 0.5; exit 4", 5000), &spawner).unwrap();
        // The spawner ends once it has started the command.
        server.join().unwrap();
        let out = running.finish().await;
        assert_eq!(out.ending, Ending::Adopted);
        let out = run(&spec("exit 5", 5000), &spawner).await;
        assert_eq!(out.ending, Ending::Exited(5));
        assert!(spawner.pid().is_none());
    }
}
