//! The command spawner: a small process that starts psmon's commands.
//!
//! psmon holds a pidfd for every process it watches. A command started
//! from psmon itself copies that table of descriptors when it is forked
//! and closes each of them, one by one, when it execs: with 10,000
//! watched processes, 10,000 descriptors on every restart's critical
//! path. The spawner is psmon forked at start, before it has opened
//! anything, so its own table holds a handful. psmon sends it each
//! command (the words to execute, the environment, the umask, and the
//! output file over `SCM_RIGHTS`); it starts the command the way psmon
//! would ([`command`]: root directory, a process group of its
//! own, stdin from /dev/null), answers with its pid, and later with how it
//! ended, since the command is its child.
//!
//! It lives exactly as long as psmon: it ends when psmon's end of the
//! socket closes or psmon dies (`PR_SET_PDEATHSIG`), and drops the
//! signals that stop psmon (systemd may signal the whole unit), with a
//! handler that does nothing: what it starts gets them at their defaults. Should it be gone
//! anyway, psmon says so once and starts its commands itself.

use std::{
    collections::{HashMap, VecDeque},
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::process::CommandExt,
    process::Stdio,
    sync::{Arc, Mutex},
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::oneshot};

/// Largest request (a command's words and environment) or answer.
const MAX_MESSAGE: usize = 256 * 1024;

/// A command to start, or a process group to kill.
#[derive(Serialize, Deserialize, Debug)]
enum SpawnRequest {
    Spawn {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        umask: Option<u32>,
    },
    /// SIGKILL to the group of a command the spawner started, if that
    /// command has not been reaped (so the group id is still its own).
    KillGroup { pid: u32 },
}

/// What the spawner answers: one `Started` or `Failed` per `Spawn`, in
/// order, and an `Exited` for each started command when it ends.
#[derive(Serialize, Deserialize, Debug)]
enum Answer {
    Started {
        pid: u32,
    },
    Failed {
        error: String,
    },
    /// The command's wait status, as waitpid(2) gives it.
    Exited {
        pid: u32,
        status: i32,
    },
}

/// psmon's end of the socket to a spawner forked by [`fork`], before the
/// async runtime exists; [`Spawner::connect`] takes it into the runtime.
pub struct Forked {
    socket: OwnedFd,
    /// The spawner's pid.
    pub pid: u32,
}

/// Forks the spawner. To be called while psmon has one thread and has
/// opened nothing but what it inherited (first thing in `main`): the
/// child goes on running Rust code, which is only sound in a copy of a
/// single-threaded process.
pub fn fork() -> std::io::Result<Forked> {
    let (mine, theirs) = socket_pair()?;
    let parent = std::process::id();
    // SAFETY: the caller guarantees psmon has a single thread, so the
    // child is a complete copy and may allocate and run anything.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(mine);
            become_spawner(parent);
            serve(theirs);
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Parent { child } => Ok(Forked {
            socket: mine,
            pid: child.as_raw() as u32,
        }),
    }
}

fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The spawner's own set-up after the fork: its name, its end with
/// psmon's, its signals and its standard descriptors.
fn become_spawner(parent: u32) {
    let _ = nix::sys::prctl::set_name(c"psmon-spawner");
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // psmon died between the fork and the line above: nothing would end us.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        std::process::exit(0);
    }
    // Caught and dropped, neither blocked nor ignored: a blocked signal or
    // an ignored one would be inherited by every command (and the daemons
    // they start), while a caught one reverts to its default at exec.
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn dropped(_: libc::c_int) {}
    let catch = SigAction::new(
        SigHandler::Handler(dropped),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(s, &catch) };
    }
    // Nothing is written to psmon's stdout or stderr from here (a reader
    // of psmon's output waiting for its end would wait for ours too).
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, integer arguments.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The spawner's loop: requests from psmon, the ends of its commands.
/// Returns when psmon's end of the socket is closed.
fn serve(socket: OwnedFd) {
    serve_spawns(socket, usize::MAX);
}

/// [`serve`], ending after `spawns` commands started.
fn serve_spawns(socket: OwnedFd, mut spawns: usize) {
    // Commands started and not yet reaped: pid and pidfd.
    let mut children: Vec<(u32, OwnedFd)> = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut polled: Vec<libc::pollfd> = std::iter::once(socket.as_raw_fd())
            .chain(children.iter().map(|(_, fd)| fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll over a vector of pollfd this function owns.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        // Ends first: a pid is only reused once reaped, and a KillGroup
        // read below must find the command still ours or not at all.
        let ended: Vec<u32> = polled[1..]
            .iter()
            .zip(&children)
            .filter(|(p, _)| p.revents != 0)
            .map(|(_, (pid, _))| *pid)
            .collect();
        for pid in ended {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a pointer to a local.
            let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
            if reaped == pid as i32 {
                children.retain(|(p, _)| *p != pid);
                if !answer(&socket, &Answer::Exited { pid, status }) {
                    return;
                }
            }
        }
        if polled[0].revents == 0 {
            continue;
        }
        let Some((request, output)) = receive(&socket, &mut buf) else {
            return;
        };
        let answered = match request {
            Ok(SpawnRequest::Spawn { argv, env, umask }) => match spawn(&argv, &env, umask, output)
            {
                Ok((pid, pidfd)) => {
                    children.push((pid, pidfd));
                    spawns -= 1;
                    answer(&socket, &Answer::Started { pid }) && spawns > 0
                }
                Err(error) => answer(&socket, &Answer::Failed { error }),
            },
            Ok(SpawnRequest::KillGroup { pid }) => {
                if children.iter().any(|(p, _)| *p == pid) {
                    // SAFETY: killpg with integer arguments.
                    unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
                }
                true
            }
            // Not from psmon (nothing else has the socket): ignored.
            Err(_) => true,
        };
        if !answered {
            return;
        }
    }
}

/// One request and the descriptor it carries; `None` when psmon's end is
/// closed.
#[allow(
    clippy::type_complexity,
    reason = "a request, whether it parsed, and its descriptor"
)]
fn receive(
    socket: &OwnedFd,
    buf: &mut [u8],
) -> Option<(Result<SpawnRequest, serde_json::Error>, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let (bytes, fd) = loop {
        match nix::sys::socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fd = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: a descriptor the kernel just gave us.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                }
                break (msg.bytes, fd);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    };
    if bytes == 0 {
        return None;
    }
    Some((serde_json::from_slice(&buf[..bytes]), fd))
}

/// Sends an answer; false when psmon's end is gone.
fn answer(socket: &OwnedFd, answer: &Answer) -> bool {
    let Ok(bytes) = serde_json::to_vec(answer) else {
        return true;
    };
    loop {
        match nix::sys::socket::send(socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Used when psenv sets no PATH: what a root shell would have.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command as psmon starts it, whoever spawns it: `argv[0]` looked up
/// in the PATH of its environment (psenv's variables over a root shell's
/// PATH, nothing of psmon's own), stdin from /dev/null, in a process
/// group of its own, in the root directory. Its stdout and stderr are the
/// caller's to set.
pub fn command(argv: &[String], env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(argv.first().map_or("", String::as_str));
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        // Not psmon's working directory: it may be anywhere, even unmounted later.
        .current_dir("/");
    cmd
}

/// Starts a command as psmon would, with `output` as its stdout and
/// stderr: its pid and a pidfd that tells its end.
fn spawn(
    argv: &[String],
    env: &[(String, String)],
    umask: Option<u32>,
    output: Option<OwnedFd>,
) -> Result<(u32, OwnedFd), String> {
    let output = output.ok_or("no output file came with the command")?;
    let err = output.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = command(argv, env);
    cmd.stdout(Stdio::from(output)).stderr(Stdio::from(err));
    // The spawner has one thread: its own umask, set around the spawn, is
    // the child's, and the spawn stays posix_spawn (no pre_exec hook).
    // SAFETY: umask(2) sets an integer.
    let previous = umask.map(|mask| unsafe { libc::umask(mask as libc::mode_t) });
    let spawned = cmd.spawn();
    if let Some(previous) = previous {
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
    }
    let child = spawned.map_err(|e| e.to_string())?;
    let pid = child.id();
    // Our unreaped child: the pid cannot be another process's yet.
    match crate::proc::pidfd_open(pid) {
        Ok(pidfd) => Ok((pid, pidfd)),
        Err(e) => {
            // SAFETY: killpg and waitpid on our own child.
            unsafe {
                libc::killpg(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
            Err(format!("cannot watch the started command: {e}"))
        }
    }
}

/// psmon's side: sends commands to the spawner, or — with none, or once it
/// is gone — says so, and the caller starts the command itself.
#[derive(Clone, Default)]
pub struct Spawner(Option<Arc<Link>>);

struct Link {
    socket: AsyncFd<OwnedFd>,
    pid: u32,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    gone: bool,
    /// Waiting for `Started` or `Failed`, in the order asked.
    starts: VecDeque<oneshot::Sender<Result<Started, String>>>,
    /// Started commands waiting for their end.
    exits: HashMap<u32, oneshot::Sender<i32>>,
}

/// A command the spawner started.
pub struct Started {
    /// The command's pid (and process group).
    pub pid: u32,
    /// Its wait status when it ends; an error if the spawner went away
    /// first (the command is then nobody's child that psmon can wait for).
    pub exit: oneshot::Receiver<i32>,
}

/// Why the spawner could not answer.
pub const GONE: &str = "psmon's command spawner ended before it answered";

impl Spawner {
    /// No spawner: commands are started by psmon itself.
    pub fn none() -> Self {
        Spawner(None)
    }

    /// Takes a forked spawner into the runtime and starts reading its
    /// answers. Needs a tokio runtime.
    pub fn connect(forked: Forked) -> std::io::Result<Self> {
        nix::fcntl::fcntl(
            &forked.socket,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the AsyncFd owns the socket, which stays open and the
        // same until the AsyncFd is dropped.
        let socket = unsafe {
            AsyncFd::register_with_interest(forked.socket, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let link = Arc::new(Link {
            socket,
            pid: forked.pid,
            state: Mutex::new(LinkState::default()),
        });
        tokio::spawn(read_answers(Arc::clone(&link)));
        Ok(Spawner(Some(link)))
    }

    /// The spawner's pid, while it is there.
    pub fn pid(&self) -> Option<u32> {
        let link = self.0.as_ref()?;
        (!link.state.lock().ok()?.gone).then_some(link.pid)
    }

    /// Asks the spawner to start a command with `output` as its stdout and
    /// stderr: the answer to come. `None` when there is no spawner (or no
    /// longer one, or it cannot take the request now): start it yourself.
    pub fn spawn(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        umask: Option<u32>,
        output: BorrowedFd<'_>,
    ) -> Option<oneshot::Receiver<Result<Started, String>>> {
        let link = self.0.as_ref()?;
        let request = serde_json::to_vec(&SpawnRequest::Spawn { argv, env, umask }).ok()?;
        if request.len() > MAX_MESSAGE {
            return None;
        }
        let mut state = link.state.lock().ok()?;
        if state.gone {
            return None;
        }
        let fds = [output.as_raw_fd()];
        let sent = nix::sys::socket::sendmsg::<()>(
            link.socket.get_ref().as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => {
                let (tx, rx) = oneshot::channel();
                state.starts.push_back(tx);
                drop(state);
                give_way(link.socket.get_ref().as_fd());
                Some(rx)
            }
            // Its queue is full (it is stuck or swamped): this one is ours.
            Err(nix::errno::Errno::EAGAIN) => None,
            // It is gone: its reader says so when it sees the socket closed.
            Err(_) => {
                state.gone = true;
                None
            }
        }
    }

    /// SIGKILL to the process group of command `pid`, which the spawner
    /// started. When the spawner cannot be asked (gone), psmon kills the
    /// group itself: the command then is nobody's child that could be
    /// reaped unseen, unless it has ended.
    pub fn kill_group(&self, pid: u32) {
        let asked = self.0.as_ref().is_some_and(|link| {
            let Ok(state) = link.state.lock() else {
                return false;
            };
            if state.gone {
                return false;
            }
            let Ok(request) = serde_json::to_vec(&SpawnRequest::KillGroup { pid }) else {
                return false;
            };
            nix::sys::socket::send(
                link.socket.get_ref().as_raw_fd(),
                &request,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .is_ok()
        });
        if !asked {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits, blocking, until the spawner answers (or [`GIVE_WAY`] passes),
/// without reading the answer (the reader does): psmon's thread sleeps
/// while the spawner starts the command, as it would in its own vfork,
/// rather than working on beside it and taking the CPU the spawner was
/// woken for. Measured on 2 CPUs: kill → command started 0.3 ms sooner.
fn give_way(socket: BorrowedFd<'_>) {
    let mut polled = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd this function owns.
    unsafe { libc::poll(&mut polled, 1, GIVE_WAY.as_millis() as libc::c_int) };
}

/// How long psmon waits, at most, for the spawner to say it started a command.
const GIVE_WAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Reads the spawner's answers until it is gone, then fails what waits.
async fn read_answers(link: Arc<Link>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let why = loop {
        let Ok(mut ready) = link.socket.readable().await else {
            break "cannot wait for it".to_string();
        };
        let read = ready.try_io(|fd| {
            nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        let bytes = match read {
            Err(_would_block) => continue,
            Ok(Ok(0)) => break "it closed its socket".to_string(),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => break e.to_string(),
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&buf[..bytes]) else {
            continue;
        };
        let Ok(mut state) = link.state.lock() else {
            return;
        };
        match answer {
            Answer::Started { pid } => {
                let (tx, exit) = oneshot::channel();
                state.exits.insert(pid, tx);
                if let Some(waiting) = state.starts.pop_front() {
                    let _ = waiting.send(Ok(Started { pid, exit }));
                }
            }
            Answer::Failed { error } => {
                if let Some(waiting) = state.starts.pop_front() {
                    let _ = waiting.send(Err(error));
                }
            }
            Answer::Exited { pid, status } => {
                if let Some(waiting) = state.exits.remove(&pid) {
                    let _ = waiting.send(status);
                }
            }
        }
    };
    if let Ok(mut state) = link.state.lock() {
        state.gone = true;
        // Dropped senders: each waiter learns the spawner is gone.
        state.starts.clear();
        state.exits.clear();
    }
    say_gone(link.pid, &why);
    // It is psmon's child: reaped, not left a zombie for as long as psmon
    // runs. (Its socket closes as it exits; the wait is short.)
    let pid = nix::unistd::Pid::from_raw(link.pid as i32);
    if pid != nix::unistd::getpid() {
        let _ = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)).await;
    }
}

fn say_gone(pid: u32, why: &str) {
    tracing::warn!(
        "psmon's command spawner (pid {pid}) is gone ({why}): psmon starts commands itself \
         from now on, each restart a little slower with many watched processes; restart psmon \
         to have it again"
    );
}

/// For tests: a spawner served by a thread of this process (its commands
/// are this process's children), as [`fork`] would serve it.
#[cfg(test)]
pub(crate) fn in_thread() -> Spawner {
    in_thread_for(usize::MAX).0
}

/// [`in_thread`], the thread ending (and the spawner gone) after `spawns`
/// commands started.
#[cfg(test)]
pub(crate) fn in_thread_for(spawns: usize) -> (Spawner, std::thread::JoinHandle<()>) {
    let (mine, theirs) = socket_pair().expect("socketpair");
    let server = std::thread::spawn(move || serve_spawns(theirs, spawns));
    let spawner = Spawner::connect(Forked {
        socket: mine,
        pid: std::process::id(),
    })
    .expect("connect");
    (spawner, server)
}
