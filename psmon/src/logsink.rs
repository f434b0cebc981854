//! The one thread that writes psmon's output — operator messages to stderr,
//! the log file and syslog, and psmon's own diagnostics (tracing) to stderr
//! — so that nothing that monitors ever waits on a full pipe nobody reads, a
//! slow or full disk, or a stuck syslog. Lines are queued, up to
//! [`QUEUE_BYTES`] (a burst such as 10,000 processes found Up at start fits;
//! the memory is used only while the burst lasts); when the writer cannot
//! keep up they are dropped and counted, and the count is written as soon
//! as it can be.
//!
//! The log file survives rotation: it is opened for appending (so a
//! `copytruncate` leaves no hole), and reopened by path when it was renamed
//! or removed (looked at no more than once a second, one stat) or when
//! asked ([`reopen`], on SIGHUP).
//!
//! It owns the sinks and the queue; what a line says is `report`'s.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::{
        Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

/// How often the log file's path is looked at for a rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// Bytes of lines that may wait for the writer; past this they are dropped.
pub const QUEUE_BYTES: usize = 8 << 20;

enum Msg {
    Line {
        text: Vec<u8>,
        to_file: bool,
        syslog: Option<Vec<u8>>,
    },
    SetFile(Option<(File, PathBuf)>),
    Reopen,
    Flush(SyncSender<()>),
}

impl Msg {
    fn bytes(&self) -> usize {
        match self {
            Msg::Line { text, syslog, .. } => text.len() + syslog.as_ref().map_or(0, Vec::len) + 64,
            _ => 64,
        }
    }
}

#[derive(Default)]
struct Queue {
    msgs: VecDeque<Msg>,
    bytes: usize,
}

struct Sink {
    queue: Mutex<Queue>,
    ready: Condvar,
    dropped: AtomicU64,
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("psmon-log".into())
            .spawn(writer);
        if spawned.is_err() {
            // Without a thread nothing is written; monitoring goes on.
            eprintln!("psmon: cannot start the log writer thread");
        }
        Sink {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    })
}

fn send(msg: Msg) {
    let s = sink();
    let size = msg.bytes();
    let Ok(mut q) = s.queue.lock() else {
        return;
    };
    if q.bytes + size > QUEUE_BYTES {
        s.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    q.bytes += size;
    q.msgs.push_back(msg);
    drop(q);
    s.ready.notify_one();
}

/// The next message for the writer, waiting for one.
fn next() -> Option<Msg> {
    let s = sink();
    let mut q = s.queue.lock().ok()?;
    loop {
        if let Some(msg) = q.msgs.pop_front() {
            q.bytes -= msg.bytes();
            if q.msgs.is_empty() && q.msgs.capacity() > 1024 {
                // A burst is over: give its room back.
                q.msgs.shrink_to(1024);
            }
            return Some(msg);
        }
        q = s.ready.wait(q).ok()?;
    }
}

/// Queues `text` (one whole line, newline included) for stderr, and for
/// the log file when `to_file`; `syslog` is a datagram for `/dev/log`.
pub fn line(text: Vec<u8>, to_file: bool, syslog: Option<Vec<u8>>) {
    send(Msg::Line {
        text,
        to_file,
        syslog,
    });
}

/// From now on, lines `to_file` also go to `file`, opened from `path`.
pub fn set_file(file: Option<(File, PathBuf)>) {
    send(Msg::SetFile(file));
}

/// Opens the log file again by its path (after a rotation).
pub fn reopen() {
    send(Msg::Reopen);
}

/// Opens `path` as psmon opens its log: appending, created 0640.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // It holds restart commands' output: not for every user.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The log file and what it was opened as.
struct LogFile {
    file: File,
    path: PathBuf,
    id: (u64, u64),
    checked: Instant,
}

impl LogFile {
    fn new(file: File, path: PathBuf) -> LogFile {
        let id = file.metadata().map_or((0, 0), |m| (m.dev(), m.ino()));
        LogFile {
            file,
            path,
            id,
            checked: Instant::now(),
        }
    }

    /// Renamed or removed since it was opened: open the path anew.
    fn follow_rotation(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.checked) < ROTATION_CHECK {
            return;
        }
        self.checked = now;
        let same = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if same && !force {
            return;
        }
        if let Ok(file) = open_log(&self.path) {
            *self = LogFile::new(file, std::mem::take(&mut self.path));
        }
    }
}

/// Waits until what was queued before is written, at most `limit` (at exit,
/// so the last messages are not lost; a stuck sink cannot hold psmon).
pub fn flush(limit: Duration) {
    let (tx, rx) = sync_channel(1);
    send(Msg::Flush(tx));
    let _ = rx.recv_timeout(limit);
}

/// A `tracing` writer into the same queue (stderr only).
pub struct Tracing;

impl Write for Tracing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        line(buf.to_vec(), false, None);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn writer() {
    let mut file: Option<LogFile> = None;
    // Non-blocking: a stuck syslog daemon gets no datagram rather than a wait.
    let syslog = UnixDatagram::unbound()
        .ok()
        .filter(|s| s.connect("/dev/log").is_ok() && s.set_nonblocking(true).is_ok());
    let stderr = std::io::stderr();
    while let Some(msg) = next() {
        let dropped = sink().dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let notice = format!(
                "psmon: {dropped} log lines dropped: stderr or the log file could not keep up\n"
            );
            let _ = stderr.lock().write_all(notice.as_bytes());
            if let Some(f) = &mut file {
                let _ = f.file.write_all(notice.as_bytes());
            }
        }
        match msg {
            Msg::Line {
                text,
                to_file,
                syslog: datagram,
            } => {
                let _ = stderr.lock().write_all(&text);
                if to_file && let Some(f) = &mut file {
                    f.follow_rotation(Instant::now(), false);
                    let _ = f.file.write_all(&text);
                }
                if let (Some(s), Some(d)) = (&syslog, datagram) {
                    let _ = s.send(&d);
                }
            }
            Msg::SetFile(f) => file = f.map(|(f, path)| LogFile::new(f, path)),
            Msg::Reopen => {
                if let Some(f) = &mut file {
                    f.follow_rotation(Instant::now(), true);
                }
            }
            Msg::Flush(done) => {
                let _ = done.try_send(());
            }
        }
    }
}
