//! The control socket: how `psmon status`, `pause`, `resume`, `reload` and
//! `test` talk to a running `psmon run`.
//!
//! One request per line, one reply per line, both JSON and both carrying
//! the protocol version: `{"v":1,"cmd":"status","pfile":null}` →
//! `{"v":1,"ok":true,"result":{…}}` or `{"v":1,"ok":false,"error":"…"}`.
//! The peer's credentials (SO_PEERCRED) are checked on every request: root
//! and members of `CONTROL_GROUP` may do everything, anyone else is refused
//! with the reason. A malformed, oversized or unknown request gets an error
//! reply; a client that hangs up, stalls or floods touches nothing but its
//! own connection task.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The protocol version every request and reply carries.
pub const PROTOCOL: u32 = 1;
/// The longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Where `psmon run` listens unless `--socket` or PSMON_SOCKET says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/psmon/psmon.sock";
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read a reply.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 128;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Who is there (pid): used to tell a live daemon from a stale socket.
    Ping,
    /// The entries' states (of one pfile, or all).
    Status {
        /// The pfile; all when absent.
        #[serde(default)]
        pfile: Option<String>,
    },
    /// Stop monitoring a pfile (`padmin stop`).
    Pause {
        /// The pfile.
        pfile: String,
    },
    /// Monitor a paused pfile again (`padmin start`).
    Resume {
        /// The pfile.
        pfile: String,
    },
    /// Read the configuration again (one pfile, or all).
    Reload {
        /// The pfile; all when absent.
        #[serde(default)]
        pfile: Option<String>,
    },
    /// The recovery drill: kill the entry's process with `signal`, wait
    /// for it to come back.
    Test {
        /// The pfile.
        pfile: String,
        /// The entry's path, when the pfile has several.
        #[serde(default)]
        path: Option<String>,
        /// The signal to kill with.
        #[serde(default = "default_signal")]
        signal: i32,
    },
    /// Remove the location constraints failover requests left in the
    /// cluster (all, or the pfile's).
    ClearFailover {
        /// The pfile; all when absent.
        #[serde(default)]
        pfile: Option<String>,
    },
    /// The audit trail: operator actions at or after `since` (Unix time,
    /// seconds), all when absent.
    Audit {
        /// Unix time, in seconds.
        #[serde(default)]
        since: Option<f64>,
    },
    /// Tests only: the running sources of these kinds (`ebpf`, `netlink`)
    /// go deaf, and with `sticky` those opened later too; an empty list
    /// lets later ones hear again.
    #[cfg(feature = "fault-injection")]
    Fault {
        /// The kinds that go deaf.
        deaf: Vec<String>,
        /// Those opened later too.
        #[serde(default)]
        sticky: bool,
    },
}

fn default_signal() -> i32 {
    libc::SIGKILL
}

impl ControlRequest {
    /// Requests that only read.
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            ControlRequest::Ping | ControlRequest::Status { .. } | ControlRequest::Audit { .. }
        )
    }

    /// An operator action the audit trail records (as `psmon` names it),
    /// with its pfile.
    pub fn audited(&self) -> Option<(&'static str, Option<&str>)> {
        match self {
            ControlRequest::Pause { pfile } => Some(("pause", Some(pfile))),
            ControlRequest::Resume { pfile } => Some(("resume", Some(pfile))),
            ControlRequest::Reload { pfile } => Some(("reload", pfile.as_deref())),
            ControlRequest::Test { pfile, .. } => Some(("test", Some(pfile))),
            ControlRequest::ClearFailover { pfile } => Some(("clear-failover", pfile.as_deref())),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    command: ControlRequest,
}

/// A reply: `Ok(result)` or `Err(message)`.
pub type Reply = Result<Value, String>;

/// A request for the supervisor, with where its reply goes.
pub struct Asked {
    /// What is asked.
    pub command: ControlRequest,
    /// Who asked (`None`: psmon's own HTTP endpoint).
    pub peer: Option<crate::audit::Who>,
    /// Why the request is refused, when it is: the supervisor records it
    /// and replies with this.
    pub refused: Option<String>,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Reply>,
}

/// Who may use the socket besides root.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// CONTROL_GROUP: its members may do what root may.
    pub group: Option<(String, u32)>,
}

/// Opens the socket: its directory is created (0755) and must be one
/// nobody else can write (see [`crate::secure_dir`]; its parents too with
/// `ancestors`), a stale socket file of a psmon that died is replaced
/// (nothing else at the path is), and a live psmon on it is an error.
pub fn bind(path: &Path, access: &Access, ancestors: bool) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let hint = "run as root, or give another place with --socket PATH";
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    crate::secure_dir::ensure(dir, 0o755, ancestors)
        .map_err(|e| anyhow::anyhow!("the control socket's directory is refused: {e}; {hint}"))?;
    if std::fs::symlink_metadata(path).is_ok() {
        match ping_blocking(path) {
            Some(pid) => anyhow::bail!(
                "psmon is already running (pid {pid}) on {}; stop it first, or give this one \
                 another --socket",
                path.display()
            ),
            None => crate::secure_dir::remove_socket(path)
                .map_err(|e| anyhow::anyhow!("cannot replace the stale socket: {e}"))?,
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}; {hint}", path.display()))?;
    let mode = match &access.group {
        Some((_, gid)) => {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(*gid)))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Asks a socket's daemon for its pid, briefly; `None` when nobody answers.
fn ping_blocking(path: &Path) -> Option<u32> {
    let result = request(path, &ControlRequest::Ping, Duration::from_secs(2)).ok()?;
    result["pid"].as_u64().map(|p| p as u32)
}

/// Serves the socket until `token` is cancelled, handing each request to
/// `asked` (the supervisor) and writing its reply back.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    access: Access,
    asked: mpsc::Sender<Asked>,
    token: CancellationToken,
) {
    let clients = TaskTracker::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let permit = tokio::select! {
            _ = token.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (access, asked) = (access.clone(), asked.clone());
        clients.spawn(async move {
            let _ = connection(stream, &access, &asked).await;
            drop(permit);
        });
    }
    clients.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), clients.wait()).await;
    let _ = std::fs::remove_file(&path);
}

/// One connection: requests until the client hangs up.
async fn connection(
    stream: UnixStream,
    access: &Access,
    asked: &mpsc::Sender<Asked>,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            (&mut reader)
                .take(MAX_REQUEST as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let reply = error_reply("no request within 10 s; closing");
                send(&mut write, &reply).await?;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            let reply = error_reply(&format!("request longer than {MAX_REQUEST} bytes; closing"));
            send(&mut write, &reply).await?;
            return Ok(());
        }
        let who = || {
            let pid = peer.pid().map(|p| p as u32);
            Some(crate::audit::Who::of(
                peer.uid(),
                pid,
                crate::audit::Via::Socket,
            ))
        };
        let reply = match parse(&line) {
            Err(why) => error_reply(&why),
            Ok(command) => match authorize(&peer, access, &command) {
                // Refused actions are on the record too.
                Err(why) if command.audited().is_some() => {
                    ask(asked, command, who(), Some(why)).await
                }
                Err(why) => error_reply(&why),
                Ok(()) => ask(asked, command, who(), None).await,
            },
        };
        send(&mut write, &reply).await?;
    }
}

/// Writes one reply, within [`WRITE_TIMEOUT`]: a client that sends and
/// never reads must not keep its slot (and with 128 of them, every other
/// caller out) for ever.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &str) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(reply.as_bytes())).await {
        Ok(done) => done,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its reply",
        )),
    }
}

fn parse(line: &[u8]) -> Result<ControlRequest, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_string())?;
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the request is not JSON ({e}); send one JSON object per line"))?;
    let v = value.get("v").and_then(Value::as_u64);
    if v != Some(u64::from(PROTOCOL)) {
        return Err(format!(
            "protocol version {} is not spoken here; this psmon speaks {PROTOCOL}",
            v.map_or("(none)".to_string(), |v| v.to_string())
        ));
    }
    let request: Envelope =
        serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
    Ok(request.command)
}

/// Root and CONTROL_GROUP may do everything; anyone else nothing.
fn authorize(
    peer: &tokio::net::unix::UCred,
    access: &Access,
    _command: &ControlRequest,
) -> Result<(), String> {
    if peer.uid() == 0 || peer.uid() == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    if let Some((_, gid)) = &access.group
        && (peer.gid() == *gid || peer.pid().is_some_and(|pid| in_group(pid as u32, *gid)))
    {
        return Ok(());
    }
    let group = access
        .group
        .as_ref()
        .map_or("no CONTROL_GROUP is set".to_string(), |(name, _)| {
            format!("not a member of CONTROL_GROUP {name}")
        });
    Err(format!(
        "permission denied: uid {} is not root and {group}",
        peer.uid()
    ))
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_group(pid: u32, gid: u32) -> bool {
    crate::proc::groups(pid).contains(&gid)
}

async fn ask(
    asked: &mpsc::Sender<Asked>,
    command: ControlRequest,
    peer: Option<crate::audit::Who>,
    refused: Option<String>,
) -> String {
    let (reply, answer) = oneshot::channel();
    let request = Asked {
        command,
        peer,
        refused,
        reply,
    };
    if asked.send(request).await.is_err() {
        return error_reply("psmon is stopping");
    }
    match answer.await {
        Ok(Ok(result)) => {
            // A status of 10,000 entries is megabytes: written (and freed)
            // off the thread that handles events.
            let written = tokio::task::spawn_blocking(move || {
                let mut line = json!({"v": PROTOCOL, "ok": true, "result": result}).to_string();
                line.push('\n');
                line
            });
            written
                .await
                .unwrap_or_else(|_| error_reply("psmon is stopping"))
        }
        Ok(Err(why)) => error_reply(&why),
        Err(_) => error_reply("psmon is stopping"),
    }
}

fn error_reply(why: &str) -> String {
    let mut line = json!({"v": PROTOCOL, "ok": false, "error": why}).to_string();
    line.push('\n');
    line
}

/// The client side: sends `command` to the daemon at `path` and returns
/// its result, or why there is none.
pub fn request(
    path: &Path,
    command: &ControlRequest,
    timeout: Duration,
) -> Result<Value, ClientError> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(path.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Refused(format!(
            "permission denied on {}: run as root or as a member of CONTROL_GROUP",
            path.display()
        )),
        _ => ClientError::Io(format!("cannot connect to {}: {e}", path.display())),
    })?;
    // The daemon runs as root or as this user: anyone else listening there
    // (an impostor that took the path) is not asked, nor believed.
    let server = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| {
            ClientError::Io(format!(
                "cannot tell who listens on {}: {e}",
                path.display()
            ))
        })?;
    let me = nix::unistd::geteuid().as_raw();
    if server.uid() != 0 && server.uid() != me {
        return Err(ClientError::Refused(format!(
            "{} is served by uid {} (pid {}), neither root nor you: not psmon's; remove it or give the right --socket",
            path.display(),
            server.uid(),
            server.pid()
        )));
    }
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ClientError::Io(e.to_string()))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| ClientError::Io(e.to_string()))?;
    let request = Envelope {
        v: PROTOCOL,
        command: command.clone(),
    };
    let mut line = serde_json::to_string(&request).map_err(|e| ClientError::Io(e.to_string()))?;
    line.push('\n');
    writer
        .write_all(line.as_bytes())
        .map_err(|e| ClientError::Io(format!("sending the request: {e}")))?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| ClientError::Io(format!("no answer from psmon: {e}")))?;
    if answer.is_empty() {
        return Err(ClientError::Io(
            "psmon closed the connection without an answer".into(),
        ));
    }
    let reply: Value = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Io(format!("psmon's answer is not JSON: {e}")))?;
    if reply["ok"] == true {
        Ok(reply["result"].clone())
    } else {
        Err(ClientError::Refused(
            reply["error"].as_str().unwrap_or("refused").to_string(),
        ))
    }
}

/// Why a client command could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("psmon is not running (nothing listens on {}); start it with `psmon run`", .0.display())]
    NotRunning(PathBuf),
    /// psmon refused the request: why.
    #[error("{0}")]
    Refused(String),
    /// The socket failed: why.
    #[error("{0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse(br#"{"v":1,"cmd":"status"}"#),
            Ok(ControlRequest::Status { pfile: None })
        );
        assert_eq!(
            parse(br#"{"v":1,"cmd":"test","pfile":"app"}"#),
            Ok(ControlRequest::Test {
                pfile: "app".into(),
                path: None,
                signal: libc::SIGKILL
            })
        );
        for (bad, says) in [
            (&b"garbage"[..], "not JSON"),
            (br#"{"cmd":"status"}"#, "protocol version (none)"),
            (br#"{"v":2,"cmd":"status"}"#, "protocol version 2"),
            (br#"{"v":1,"cmd":"reboot"}"#, "bad request"),
            (br#"{"v":1,"cmd":"pause"}"#, "bad request"),
            (br#"{"v":1,"cmd":"status","extra":1}"#, "bad request"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(ControlRequest::Status { pfile: None }.read_only());
        assert!(!ControlRequest::Pause { pfile: "a".into() }.read_only());
    }

    /// A client that sends a request and never reads its reply holds its
    /// slot only until [`WRITE_TIMEOUT`]; another is answered meanwhile.
    /// Time is paused once the stuck write is under way.
    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped_and_does_not_hold_up_others() {
        let dir = std::env::temp_dir().join(format!("psmon-stuck-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("psmon.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (asked, mut requests) = mpsc::channel::<Asked>(4);
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            path.clone(),
            Access::default(),
            asked,
            token.clone(),
        ));
        // Every status is larger than a socket's buffers: a reply not
        // read fills them and the server's write waits.
        let big = "x".repeat(1 << 20);
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let _ = request.reply.send(Ok(json!({ "entries": big })));
            }
        });
        let status = format!("{{\"v\":{PROTOCOL},\"cmd\":\"status\"}}\n");
        let mut stuck = UnixStream::connect(&path).await.unwrap();
        stuck.write_all(status.as_bytes()).await.unwrap();

        let mut other = UnixStream::connect(&path).await.unwrap();
        other.write_all(status.as_bytes()).await.unwrap();
        let mut reply = String::new();
        BufReader::new(&mut other)
            .read_line(&mut reply)
            .await
            .unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(
            reply["result"]["entries"].as_str().map(str::len),
            Some(1 << 20)
        );

        tokio::time::pause();
        let paused = tokio::time::Instant::now();
        tokio::time::sleep(WRITE_TIMEOUT + Duration::from_millis(100)).await;
        let mut got = Vec::new();
        stuck.read_to_end(&mut got).await.unwrap();
        assert!(
            got.len() < 1 << 20,
            "the stuck client's reply was cut short"
        );
        assert!(paused.elapsed() >= WRITE_TIMEOUT);
        token.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "the socket file is removed at the end");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
