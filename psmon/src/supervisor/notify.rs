//! The sd_notify protocol for the processes psmon starts (`kind =
//! "notify"` probes): each such entry has a datagram socket of psmon's own,
//! named in the environment of its restart command as `NOTIFY_SOCKET`
//! (with `WATCHDOG_USEC`, the probe's timeout), so a service written for
//! systemd's `Type=notify` and watchdog runs under psmon unchanged.
//!
//! Sockets are files in `notify/` beside the control socket (a directory
//! only psmon can write, 0711), each 0600 and owned by root, or by the
//! entry's `user` when it names one: no other user can send to one, flood
//! it or take its name (an abstract socket's name anyone can bind or send
//! to). A socket is named after the entry's path so that a psmon
//! restarted while the service runs listens where the service still
//! sends. Each datagram carries its sender's pid (SCM_CREDENTIALS, given by
//! the kernel); the supervisor accepts it only from a process of the entry.
//! An entry whose socket cannot be opened is never judged by its probe:
//! its service was given no channel to speak on.

use std::{
    collections::HashMap,
    io::IoSliceMut,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::task::TaskTracker;

use crate::config::{Entry, Owner, ProbeKind};

/// A datagram from a process of a notify entry.
#[derive(Debug)]
pub struct Message {
    pub path: PathBuf,
    pub pid: u32,
    pub ready: bool,
    pub watchdog: bool,
}

/// The open sockets, by entry path.
pub struct Sockets {
    /// Where they are: `notify/` beside the control socket.
    dir: PathBuf,
    open: HashMap<PathBuf, Open>,
}

struct Open {
    /// The socket file.
    at: PathBuf,
    owner: Owner,
    watchdog: Duration,
    task: tokio::task::AbortHandle,
}

impl Sockets {
    /// Sockets in `runtime/notify`, `runtime` being the control socket's
    /// directory (checked already).
    pub fn new(runtime: &Path) -> Sockets {
        Sockets {
            dir: runtime.join("notify"),
            open: HashMap::new(),
        }
    }

    /// Opens a socket for each entry with a notify probe (keeping those
    /// open already) and closes the others. Returns the paths of entries
    /// whose socket could not be opened, and why, for the operator.
    pub fn sync<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a Entry>,
        tx: &mpsc::Sender<Message>,
        tasks: &TaskTracker,
    ) -> Vec<(PathBuf, String)> {
        let mut wanted: HashMap<PathBuf, (Duration, Owner)> = HashMap::new();
        for e in entries {
            if let Some(p) = &e.probe
                && p.kind == ProbeKind::Notify
            {
                wanted.insert(e.path.clone(), (p.timeout, e.owner));
            }
        }
        self.open.retain(|path, open| {
            let keep = wanted.get(path).is_some_and(|(_, o)| *o == open.owner);
            if !keep {
                open.task.abort();
                let _ = crate::secure_dir::remove_socket(&open.at);
            }
            keep
        });
        let mut failed = Vec::new();
        let mut made = None;
        for (path, (watchdog, owner)) in wanted {
            if let Some(open) = self.open.get_mut(&path) {
                open.watchdog = watchdog;
                continue;
            }
            let made = made.get_or_insert_with(|| {
                crate::secure_dir::ensure(&self.dir, 0o711, false).map_err(|e| e.to_string())
            });
            let at = self.dir.join(socket_name(&path));
            let listening = match made {
                Ok(()) => listen(&at, owner).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            match listening {
                Ok(fd) => {
                    let task = tasks.spawn(receive(fd, path.clone(), tx.clone()));
                    let task = task.abort_handle();
                    let open = Open {
                        at,
                        owner,
                        watchdog,
                        task,
                    };
                    self.open.insert(path, open);
                }
                Err(e) => {
                    let why = format!(
                        "no notify socket for {} ({}): {e}; its READY=1 and WATCHDOG=1 cannot be heard, so its probe judges nothing",
                        path.display(),
                        at.display()
                    );
                    failed.push((path, why));
                }
            }
        }
        failed
    }

    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` for a command started for the
    /// entry of `path`, if it has a notify probe.
    pub fn env(&self, path: &Path) -> Vec<(String, String)> {
        match self.open.get(path) {
            Some(open) => vec![
                ("NOTIFY_SOCKET".into(), open.at.display().to_string()),
                (
                    "WATCHDOG_USEC".into(),
                    open.watchdog.as_micros().to_string(),
                ),
            ],
            None => Vec::new(),
        }
    }

    pub fn close_all(&mut self) {
        for open in self.open.values() {
            open.task.abort();
        }
        self.open.clear();
    }
}

/// A hash of the path (FNV-1a): stable across psmon restarts, different
/// for every entry, short enough for `sun_path` under a long directory.
fn socket_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Binds the socket file `at` (replacing a socket left there by a psmon
/// that stopped; anything else there is refused), 0600, owned by the
/// entry's user when it names one. The directory is psmon's alone, so
/// nothing can be swapped under the chmod and chown.
fn listen(at: &Path, owner: Owner) -> anyhow::Result<AsyncFd<OwnedFd>> {
    use std::os::unix::fs::PermissionsExt;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // The kernel then attaches each sender's credentials.
    setsockopt(&fd, sockopt::PassCred, &true)?;
    if std::fs::symlink_metadata(at).is_ok() {
        crate::secure_dir::remove_socket(at)?;
    }
    bind(fd.as_raw_fd(), &UnixAddr::new(at)?)?;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600))?;
    if let Owner::Uid(uid) = owner {
        nix::unistd::chown(at, Some(nix::unistd::Uid::from_raw(uid)), None)?;
    }
    // SAFETY: the AsyncFd owns the socket, which stays open and the same
    // until the AsyncFd is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    Ok(registered.map_err(|e| e.into_parts().1)?)
}

/// Datagrams waiting for the supervisor at most; past that they are
/// dropped (any local process can send to the socket: a flood must not
/// grow psmon, and keep-alives say the same thing again soon).
pub const QUEUE: usize = 256;

async fn receive(fd: AsyncFd<OwnedFd>, path: PathBuf, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let got = guard.try_io(|inner| read_one(inner.get_ref(), &mut buf));
        let (pid, len) = match got {
            Ok(Ok(Some(got))) => got,
            // No credentials (cannot be told apart): dropped.
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!("notify socket for {}: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_would_block) => continue,
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        let said = |field: &str| text.lines().any(|l| l.trim() == field);
        let message = Message {
            path: path.clone(),
            pid,
            ready: said("READY=1"),
            watchdog: said("WATCHDOG=1"),
        };
        if !(message.ready || message.watchdog) {
            continue;
        }
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(message) {
            return;
        }
    }
}

/// One datagram: its sender's pid and length.
fn read_one(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<(u32, usize)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut pid = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmCredentials(cred) = c {
            pid = Some(cred.pid() as u32);
        }
    }
    Ok(pid.map(|pid| (pid, msg.bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_differ_by_path() {
        let a = socket_name(Path::new("/usr/sbin/a"));
        assert_eq!(a, socket_name(Path::new("/usr/sbin/a")));
        assert_ne!(a, socket_name(Path::new("/usr/sbin/b")));
        assert_eq!(a.len(), 16);
    }
}
