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
//! Under systemd, with stderr connected to the journal (`JOURNAL_STREAM`),
//! operator messages go to the journal natively instead of to stderr and
//! syslog: one record each, with its priority and its fields
//! (`PSMON_PFILE`, `PSMON_PATH`, `PSMON_PID`, …) that `journalctl
//! PSMON_PFILE=os` selects; the log file is written as ever.
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
        record: Option<Vec<u8>>,
    },
    SetFile(Option<(File, PathBuf)>),
    Reopen,
    Flush(SyncSender<()>),
}

impl Msg {
    fn bytes(&self) -> usize {
        match self {
            Msg::Line { text, record, .. } => text.len() + record.as_ref().map_or(0, Vec::len) + 64,
            _ => 64,
        }
    }
}

#[derive(Default)]
struct Backlog {
    msgs: VecDeque<Msg>,
    bytes: usize,
    /// The most bytes queued since the queue was last empty.
    peak: usize,
}

/// A burst that queued this many bytes leaves the allocator holding its
/// freed lines; once written, they are given back to the kernel.
const GIVE_BACK_AFTER: usize = 1 << 20;

struct Sink {
    queue: Mutex<Backlog>,
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
            queue: Mutex::new(Backlog::default()),
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
    q.peak = q.peak.max(q.bytes);
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
            let mut burst = false;
            if q.msgs.is_empty() {
                if q.msgs.capacity() > 1024 {
                    // A burst is over: give its room back.
                    q.msgs.shrink_to(1024);
                }
                burst = std::mem::take(&mut q.peak) >= GIVE_BACK_AFTER;
            }
            drop(q);
            if burst {
                give_back_freed_memory();
            }
            return Some(msg);
        }
        q = s.ready.wait(q).ok()?;
    }
}

/// Returns the allocator's free pages to the kernel. glibc keeps what is
/// freed inside its heap; after ten thousand queued lines (every process
/// of a large host reported Up at start) that is megabytes of resident
/// memory nothing uses.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; it takes the
    // allocator's own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Queues `text` (one whole line, newline included) for stderr, and for
/// the log file when `to_file`; `record` is the same message for syslog
/// or the journal ([`syslog_record`], [`journal_record`], as [`to_journal`]
/// says), and replaces the stderr line when it is a journal record.
pub fn line(text: Vec<u8>, to_file: bool, record: Option<Vec<u8>>) {
    send(Msg::Line {
        text,
        to_file,
        record,
    });
}

/// The journal's native socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether messages go to the journal natively: psmon's stderr is the
/// journal stream systemd gave it, and the journal's socket is there.
pub fn to_journal() -> bool {
    static TO_JOURNAL: OnceLock<bool> = OnceLock::new();
    *TO_JOURNAL.get_or_init(|| {
        libsystemd::logging::connected_to_journal() && Path::new(JOURNAL_SOCKET).exists()
    })
}

/// A message for `/dev/log`: RFC 3164 framing, facility daemon (3).
pub fn syslog_record(severity: u8, message: &str) -> Vec<u8> {
    format!(
        "<{}>psmon[{}]: {message}",
        3 * 8 + severity,
        std::process::id()
    )
    .into_bytes()
}

/// A message for the journal's native protocol: `MESSAGE`, `PRIORITY`, the
/// syslog identifier and facility, and each field as `PSMON_<NAME>` (upper
/// case; characters a field name may not hold become `_`). A value with a
/// newline is written in the protocol's length-prefixed form.
pub fn journal_record(severity: u8, message: &str, fields: &[(&str, String)]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.extend_from_slice(name);
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    let mut out = Vec::with_capacity(128 + message.len());
    field(&mut out, b"MESSAGE", message.as_bytes());
    field(&mut out, b"PRIORITY", severity.to_string().as_bytes());
    field(&mut out, b"SYSLOG_IDENTIFIER", b"psmon");
    field(&mut out, b"SYSLOG_FACILITY", b"3");
    for (name, value) in fields {
        let name: String = name
            .chars()
            .map(|c| match c {
                'a'..='z' => c.to_ascii_uppercase(),
                'A'..='Z' | '0'..='9' => c,
                _ => '_',
            })
            .collect();
        field(
            &mut out,
            format!("PSMON_{name}").as_bytes(),
            value.as_bytes(),
        );
    }
    out
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
    // Non-blocking: a stuck syslog daemon or journal gets no datagram
    // rather than a wait.
    let journal = to_journal();
    let remote = if journal { JOURNAL_SOCKET } else { "/dev/log" };
    let remote = UnixDatagram::unbound()
        .ok()
        .filter(|s| s.connect(remote).is_ok() && s.set_nonblocking(true).is_ok());
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
                record,
            } => {
                // In the journal the record is the message; on stderr it
                // would be there twice.
                let recorded = journal && record.is_some() && remote.is_some();
                if !recorded {
                    let _ = stderr.lock().write_all(&text);
                }
                if to_file && let Some(f) = &mut file {
                    f.follow_rotation(Instant::now(), false);
                    let _ = f.file.write_all(&text);
                }
                if let (Some(s), Some(d)) = (&remote, record) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_record_carries_the_message_its_priority_and_fields() {
        let record = journal_record(
            4,
            "Process ['/usr/sbin/sshd',pid=812] Down",
            &[("pfile", "os".into()), ("pid", "812".into())],
        );
        let text = String::from_utf8(record).unwrap();
        assert_eq!(
            text,
            "MESSAGE=Process ['/usr/sbin/sshd',pid=812] Down\nPRIORITY=4\n\
             SYSLOG_IDENTIFIER=psmon\nSYSLOG_FACILITY=3\nPSMON_PFILE=os\nPSMON_PID=812\n"
        );
    }

    #[test]
    fn a_journal_field_with_a_newline_is_length_prefixed_and_names_are_made_valid() {
        let record = journal_record(3, "m", &[("last-output", "a\nb".into())]);
        let tail = b"PSMON_LAST_OUTPUT\n\x03\0\0\0\0\0\0\0a\nb\n";
        assert!(record.ends_with(tail), "{record:?}");
    }
}
