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
    os::unix::process::ExitStatusExt,
    process::Stdio,
    time::{Duration, Instant},
};

use crate::facts::{CommandOutcome, Ending};

/// Used when psenv sets no PATH: what a root shell would have.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bytes of the command's output kept for the log.
const TAIL_BYTES: u64 = 2048;

/// Output file space a daemon the command left running may fill before it
/// is given back; how often that is looked at.
const LEFTOVER_BYTES: u64 = 1 << 20;
const LEFTOVER_CHECK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub command: String,
    /// psenv's variables, then the PSMON_* details.
    pub env: Vec<(String, String)>,
    pub umask: Option<u32>,
    pub timeout: Duration,
}

/// Runs the command to its end (or its time limit). Dropped before that
/// (a caller's own deadline, shutdown), it kills the command's process
/// group: a probe that hangs must not leave a process behind each time.
pub async fn run(spec: &CommandSpec) -> CommandOutcome {
    match start(spec) {
        Ok(running) => {
            let mut guard = KillGroupOnDrop(running.pgid);
            let outcome = running.finish().await;
            guard.0 = None;
            outcome
        }
        Err(failed) => failed,
    }
}

/// Kills a process group when dropped, unless disarmed (`None`). Only
/// while its leader is not reaped, so the group id is still the command's.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A command started by [`start`].
pub struct Running {
    child: tokio::process::Child,
    output: std::fs::File,
    begun: Instant,
    timeout: Duration,
    /// Its process group (the command's pid).
    pub pgid: Option<u32>,
}

/// Starts the command now (the restart's latency is up to here); its end
/// is [`Running::finish`]'s. `Err` is the outcome of a command that could
/// not be started.
pub fn start(spec: &CommandSpec) -> Result<Running, CommandOutcome> {
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
    let (out, err) = match (output.try_clone(), output.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(spawn_failed(
                begun,
                "cannot duplicate the output file".into(),
            ));
        }
    };
    let mut cmd = match direct_argv(&spec.command) {
        Some(argv) => {
            let mut cmd = tokio::process::Command::new(argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        None => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(&spec.command);
            cmd
        }
    };
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        // Not psmon's working directory: it may be anywhere, even unmounted later.
        .current_dir("/")
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
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Err(spawn_failed(begun, e.to_string())),
    };
    Ok(Running {
        pgid: child.id(),
        child,
        output,
        begun,
        timeout: spec.timeout,
    })
}

impl Running {
    /// Waits for the command to end, or kills its whole group at the limit.
    pub async fn finish(mut self) -> CommandOutcome {
        let ending = match tokio::time::timeout(self.timeout, self.child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(c), _) => Ending::Exited(c),
                (None, Some(s)) => Ending::Signaled(s),
                (None, None) => Ending::Exited(-1),
            },
            Ok(Err(e)) => Ending::SpawnFailed(e.to_string()),
            Err(_) => {
                if let Some(pgid) = self.pgid {
                    // The whole group: the shell and whatever it started and still runs.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = self.child.wait().await;
                Ending::TimedOut
            }
        };
        let output_tail = tail(&mut self.output);
        bound_leftover_output(self.output);
        CommandOutcome {
            ending,
            elapsed: self.begun.elapsed(),
            output_tail,
        }
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
pub fn leads_its_group(pgid: u32) -> bool {
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
        // `env` prints what it was given; it is run without a shell.
        let out = run(&spec("env", 5000)).await;
        assert!(out.ok(), "{:?}", out.ending);
        assert!(
            out.output_tail.contains("PSMON_PATH=/usr/sbin/sshd"),
            "{}",
            out.output_tail
        );
        assert!(
            out.output_tail.contains("PATH=/usr/local/sbin"),
            "{}",
            out.output_tail
        );
        // A direct command that outlives its limit is killed like any other.
        let out = run(&spec("sleep 5", 200)).await;
        assert_eq!(out.ending, Ending::TimedOut);
        // A program that does not exist is said so, not run by a shell.
        let out = run(&spec("/nonexistent/psmon-test-program --flag", 5000)).await;
        assert!(
            matches!(&out.ending, Ending::SpawnFailed(e) if e.contains("No such file")),
            "{:?}",
            out.ending
        );
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
        let out = run(&spec(
            "echo \"$PSMON_PATH\"; umask; echo oops >&2; exit 3",
            5000,
        ))
        .await;
        assert_eq!(out.ending, Ending::Exited(3));
        assert!(!out.ok());
        assert_eq!(out.output_tail, "/usr/sbin/sshd\n0077\noops");
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
        let out = run(&spec(
            "pwd; ls /proc/self/fd | sort -n | tr '\\n' ' '",
            5000,
        ))
        .await;
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(leaked) };
        let mut lines = out.output_tail.lines();
        assert_eq!(lines.next(), Some("/"));
        // 0-2, and the directory `ls` itself opened to list them.
        assert_eq!(
            lines.next().map(str::trim),
            Some("0 1 2 3"),
            "{}",
            out.output_tail
        );
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_with_its_children() {
        let dir = std::env::temp_dir().join(format!("psmon-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("child.pid");
        let cmd = format!("sleep 1000 & echo $! > {}; sleep 1000", pidfile.display());
        let out = run(&spec(&cmd, 300)).await;
        assert_eq!(out.ending, Ending::TimedOut);
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was killed too: gone, or a zombie awaiting its reaper.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().next().map(String::from))
                });
            if state.as_deref().is_none_or(|s| s == "Z") {
                break;
            }
            assert!(Instant::now() < deadline, "the background child survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_missing_shell_command_is_a_failure_not_a_panic() {
        // Quoted: through the shell, which says it is not found.
        let out = run(&spec("/nonexistent/command 'x'", 5000)).await;
        assert_eq!(out.ending, Ending::Exited(127));
        assert!(out.output_tail.contains("not found"), "{}", out.output_tail);
    }
}
