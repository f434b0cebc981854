//! Event push (`PUSH_URL`): each Down, Up, failed restart, retry over,
//! failover, hang and group event is POSTed as one JSON object, in order,
//! to a receiver (an alert manager, a job scheduler).
//!
//! Events go first to a queue on disk, `STATE_DIR/push/queue.jsonl` (one
//! line each, appended and fsync'd), and `STATE_DIR/push/sent` records how
//! far the receiver has acknowledged (a byte offset, replaced atomically).
//! An event is sent until the receiver answers 2xx, every `RETRY_INTERVAL`
//! while it does not; then the offset moves past it. So psmon restarting,
//! the receiver down for hours or a connection cut mid-request loses
//! nothing; a request whose answer was lost is sent again, and the event's
//! `id` lets the receiver drop the duplicate. The queue is bounded
//! ([`MAX_QUEUE_BYTES`]): when full, the oldest unsent events are dropped,
//! counted and logged.
//!
//! All of it runs on a thread of its own: the supervisor only hands it
//! each event (never waiting: past [`MAX_IN_FLIGHT`] waiting, events are
//! dropped and counted).
//!
//! The event:
//! `{"id": "<uuid>", "host": "web1", "time": "2026-…Z", "kind": "down",
//!   "level": "ERROR", "message": "Process ['/usr/sbin/sshd',pid=812] Down",
//!   "pfile": "os", "path": "/usr/sbin/sshd", …the message's other fields}`
//! with `kind` one of `down`, `up`, `restart_failed`, `retry_over`,
//! `failover`, `hung`, `group`.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Map, Value};

use std::sync::atomic::Ordering::Relaxed;

use crate::{config::LogLevel, endpoint::metrics::PushCells, report::Reporter};

/// The kinds of event pushed.
pub const KINDS: [&str; 8] = [
    "audit",
    "down",
    "up",
    "restart_failed",
    "retry_over",
    "failover",
    "hung",
    "group",
];
/// The queue file's bound; past it the oldest unsent events go.
pub const MAX_QUEUE_BYTES: u64 = 16 << 20;
/// Events handed over but not yet written to the queue.
pub const MAX_IN_FLIGHT: usize = 4096;
/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The supervisor's end: hands events to the pushing thread.
pub struct Push {
    tx: mpsc::SyncSender<Value>,
    host: String,
    /// Events dropped because the pushing thread fell behind.
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Push {
    /// Queues the event a message of `kind` tells of (other kinds are not pushed).
    pub fn event(&self, kind: Option<&'static str>, message: &Value) {
        let Some(kind) = kind.filter(|k| KINDS.contains(k)) else {
            return;
        };
        let mut event = Map::new();
        event.insert("id".into(), Value::String(new_id()));
        event.insert("host".into(), Value::String(self.host.clone()));
        event.insert("kind".into(), Value::String(kind.into()));
        if let Value::Object(fields) = message {
            for (k, v) in fields {
                event.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if self.tx.try_send(Value::Object(event)).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A unique id: the kernel's random UUID.
fn new_id() -> String {
    crate::proc::random_uuid().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}-{}", std::process::id(), now.as_nanos())
    })
}

/// Starts the pushing thread; it writes what it was handed and stops when
/// every [`Push`] is dropped.
pub fn start(
    url: String,
    state_dir: &Path,
    retry: Duration,
    reporter: Reporter,
    cells: std::sync::Arc<PushCells>,
) -> std::io::Result<(std::sync::Arc<Push>, std::thread::JoinHandle<()>)> {
    let queue = DiskQueue::open(&state_dir.join("push"))?;
    let (tx, rx) = mpsc::sync_channel(MAX_IN_FLIGHT);
    let host = crate::failover::hostname();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let push = std::sync::Arc::new(Push {
        tx,
        host,
        dropped: std::sync::Arc::clone(&dropped),
    });
    let thread = std::thread::Builder::new()
        .name("psmon-push".into())
        .spawn(move || {
            Pusher {
                url,
                retry,
                queue,
                rx,
                reporter,
                failing: None,
                behind: dropped,
                behind_said: 0,
                cells,
            }
            .run()
        })?;
    Ok((push, thread))
}

/// The queue on disk: `queue.jsonl` and the offset acknowledged in `sent`.
struct DiskQueue {
    dir: PathBuf,
    file: File,
    len: u64,
    sent: u64,
    /// Events in the file past `sent`: kept, so that counting them never
    /// reads the file again.
    waiting: usize,
    /// Events dropped because the queue was full.
    dropped: u64,
}

impl DiskQueue {
    fn open(dir: &Path) -> std::io::Result<DiskQueue> {
        // Inside the state directory, which was checked: created 0700.
        if !dir.exists() {
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(dir)?;
        }
        crate::secure_dir::check(dir, false).map_err(std::io::Error::other)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join("queue.jsonl"))?;
        let len = file.metadata()?.len();
        let sent = std::fs::read_to_string(dir.join("sent"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(len);
        let mut q = DiskQueue {
            dir: dir.to_path_buf(),
            file,
            len,
            sent,
            waiting: 0,
            dropped: 0,
        };
        // A line cut short by a crash mid-append is not an event.
        q.drop_torn_tail()?;
        q.compact_if_done()?;
        q.waiting = q.count_from_sent()?;
        Ok(q)
    }

    fn drop_torn_tail(&mut self) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut last = [0u8];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.len - 1))?;
        std::io::Read::read_exact(&mut f, &mut last)?;
        if last[0] != b'\n' {
            let text = std::fs::read(self.dir.join("queue.jsonl"))?;
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) as u64;
            self.file.set_len(keep)?;
            self.len = keep;
            self.sent = self.sent.min(keep);
        }
        Ok(())
    }

    /// Events in the file past `sent` (read once, at open).
    fn count_from_sent(&self) -> std::io::Result<usize> {
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.sent))?;
        let mut count = 0;
        for line in BufReader::new(f).split(b'\n') {
            line?;
            count += 1;
        }
        Ok(count)
    }

    /// Appends events (one fsync for all of them), never reading what is
    /// queued. The file itself stays within [`MAX_QUEUE_BYTES`]: past it,
    /// what was sent is cut from it first, then the oldest unsent events
    /// are dropped (while the receiver fails, nothing else would ever cut
    /// the file).
    fn append(&mut self, events: &[Value]) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for e in events {
            bytes.extend_from_slice(e.to_string().as_bytes());
            bytes.push(b'\n');
        }
        let fits = |q: &DiskQueue| q.len + bytes.len() as u64 <= MAX_QUEUE_BYTES;
        if !fits(self) && self.sent > 0 {
            self.cut_sent()?;
        }
        if !fits(self) {
            // Drop the oldest whole lines until the new ones fit, in one
            // pass over the file's head, then cut them off.
            let mut f = &self.file;
            f.seek(SeekFrom::Start(self.sent))?;
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            let mut offset = self.sent;
            while self.len - offset + bytes.len() as u64 > MAX_QUEUE_BYTES {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)? as u64;
                if n == 0 {
                    break;
                }
                offset += n;
                self.waiting = self.waiting.saturating_sub(1);
                self.dropped += 1;
            }
            self.set_sent(offset)?;
            self.cut_sent()?;
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        self.waiting += events.len();
        Ok(())
    }

    /// The first unsent event and its length in bytes (with its newline).
    fn next(&self) -> std::io::Result<Option<(Value, u64)>> {
        if self.sent >= self.len {
            return Ok(None);
        }
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.sent))?;
        let mut line = String::new();
        let n = BufReader::new(f).read_line(&mut line)? as u64;
        if n == 0 {
            return Ok(None);
        }
        // A line that is not JSON (a damaged file) is skipped, sent as nothing.
        Ok(Some((
            serde_json::from_str(line.trim_end()).unwrap_or(Value::Null),
            n,
        )))
    }

    /// The first unsent event was acknowledged (or skipped): `n` bytes.
    fn sent_one(&mut self, n: u64) -> std::io::Result<()> {
        self.waiting = self.waiting.saturating_sub(1);
        self.set_sent(self.sent + n)
    }

    /// Records that everything before `offset` was acknowledged.
    fn set_sent(&mut self, offset: u64) -> std::io::Result<()> {
        self.sent = offset.min(self.len);
        let tmp = self.dir.join("sent.tmp");
        let mut f = crate::secure_dir::create_new(&tmp, 0o600)?;
        writeln!(f, "{}", self.sent)?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.dir.join("sent"))?;
        Ok(())
    }

    /// Drops what was sent from the file: all of it when everything was,
    /// else (rewriting the rest) once the sent part is large.
    fn compact(&mut self) -> std::io::Result<()> {
        if self.sent < (1 << 20) || self.sent == self.len || self.sent < self.len / 2 {
            return self.compact_if_done();
        }
        self.cut_sent()
    }

    /// Rewrites the file without its sent part.
    fn cut_sent(&mut self) -> std::io::Result<()> {
        if self.sent == self.len {
            return self.compact_if_done();
        }
        let path = self.dir.join("queue.jsonl");
        let tmp = self.dir.join("queue.jsonl.tmp");
        let mut rest = Vec::new();
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.sent))?;
        std::io::Read::read_to_end(&mut f, &mut rest)?;
        let mut out = crate::secure_dir::create_new(&tmp, 0o600)?;
        out.write_all(&rest)?;
        out.sync_data()?;
        // The offset is zeroed before the file changes: a crash between
        // the two would send the rest again (the ids tell), never skip it.
        self.set_sent(0)?;
        std::fs::rename(&tmp, &path)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        self.len = rest.len() as u64;
        Ok(())
    }

    /// Everything sent: start the file afresh.
    fn compact_if_done(&mut self) -> std::io::Result<()> {
        if self.sent == self.len && self.len > 0 {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.set_sent(0)?;
        }
        Ok(())
    }

    fn waiting(&self) -> bool {
        self.sent < self.len
    }
}

struct Pusher {
    url: String,
    retry: Duration,
    queue: DiskQueue,
    rx: mpsc::Receiver<Value>,
    reporter: Reporter,
    /// Since when sending fails, and why (said once per outage).
    failing: Option<String>,
    /// Events the supervisor could not hand over (this thread behind),
    /// and how many of them were said.
    behind: std::sync::Arc<std::sync::atomic::AtomicU64>,
    behind_said: u64,
    /// What `/metrics` shows of the push.
    cells: std::sync::Arc<PushCells>,
}

impl Pusher {
    fn run(mut self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            // A redirect is not a delivery: followed, the POST would turn
            // into a GET without the event and count as sent.
            .max_redirects(0)
            .build()
            .into();
        let mut open = true;
        while open {
            // Take what was handed over; wait for more only when idle.
            let mut batch = Vec::new();
            let first = if self.queue.waiting() && self.failing.is_none() {
                self.rx
                    .try_recv()
                    .map_err(|e| e == mpsc::TryRecvError::Disconnected)
            } else {
                let wait = if self.failing.is_some() {
                    self.retry
                } else {
                    Duration::from_secs(3600)
                };
                self.rx
                    .recv_timeout(wait)
                    .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected)
            };
            match first {
                Ok(e) => batch.push(e),
                Err(disconnected) => open = !disconnected,
            }
            while let Ok(e) = self.rx.try_recv() {
                batch.push(e);
            }
            let behind = self.behind.load(std::sync::atomic::Ordering::Relaxed);
            if behind > self.behind_said {
                self.cells
                    .dropped
                    .fetch_add(behind - self.behind_said, Relaxed);
                self.say(
                    LogLevel::Warn,
                    format!(
                        "event push fell behind: {} event(s) dropped before reaching its queue",
                        behind - self.behind_said
                    ),
                );
                self.behind_said = behind;
            }
            if !batch.is_empty() {
                let dropped = self.queue.dropped;
                if let Err(e) = self.queue.append(&batch) {
                    self.say(
                        LogLevel::Error,
                        format!(
                            "cannot write the push queue in {}: {e}; {} event(s) not queued",
                            self.queue.dir.display(),
                            batch.len()
                        ),
                    );
                }
                if self.queue.dropped > dropped {
                    self.cells
                        .dropped
                        .fetch_add(self.queue.dropped - dropped, Relaxed);
                    self.say(
                        LogLevel::Warn,
                        format!(
                            "push queue full ({} MiB): the {} oldest unsent event(s) dropped",
                            MAX_QUEUE_BYTES >> 20,
                            self.queue.dropped - dropped
                        ),
                    );
                }
            }
            if open || self.failing.is_none() {
                self.send_waiting(&agent);
            }
        }
    }

    /// Sends queued events in order until one fails (or, when stopping,
    /// gives up at the first failure: the queue keeps it).
    fn send_waiting(&mut self, agent: &ureq::Agent) {
        loop {
            let next = match self.queue.next() {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    self.say(LogLevel::Error, format!("cannot read the push queue: {e}"));
                    break;
                }
            };
            let (event, n) = next;
            if !event.is_null() {
                let result = agent
                    .post(&self.url)
                    .content_type("application/json")
                    .send(event.to_string());
                let why = match result {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) if r.status().is_redirection() => Some(format!(
                        "the receiver answered {} to {}: redirects are not followed, set PUSH_URL to the address that accepts the POST",
                        r.status(),
                        r.headers()
                            .get("location")
                            .and_then(|l| l.to_str().ok())
                            .unwrap_or("another address")
                    )),
                    Ok(r) => Some(format!("the receiver answered {}", r.status())),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    self.cells.failed_requests.fetch_add(1, Relaxed);
                    self.count_waiting();
                    if self.failing.is_none() {
                        let waiting = self.waiting_events();
                        self.say(
                            LogLevel::Warn,
                            format!(
                                "event push to {} failed ({why}); {waiting} event(s) kept on disk, sent again every {} s",
                                self.url,
                                self.retry.as_secs()
                            ),
                        );
                    }
                    self.failing = Some(why);
                    return;
                }
            }
            if let Err(e) = self.queue.sent_one(n) {
                self.say(LogLevel::Error, format!("cannot record pushed events: {e}"));
                return;
            }
            if !event.is_null() {
                self.cells.delivered.fetch_add(1, Relaxed);
            }
            if self.failing.take().is_some() {
                self.say(
                    LogLevel::Info,
                    format!("event push to {} works again", self.url),
                );
            }
        }
        let _ = self.queue.compact();
        self.count_waiting();
    }

    /// Events on disk not yet delivered, for `/metrics`.
    fn count_waiting(&self) {
        self.cells.waiting.store(self.queue.waiting as u64, Relaxed);
    }

    fn waiting_events(&self) -> usize {
        self.queue.waiting
    }

    fn say(&mut self, level: LogLevel, message: String) {
        self.reporter.report(level, &message, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("psmon-push-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_queue_keeps_what_was_not_acknowledged() {
        let d = dir("keep");
        let mut q = DiskQueue::open(&d).unwrap();
        q.append(&[json!({"n": 1}), json!({"n": 2}), json!({"n": 3})])
            .unwrap();
        let (first, n) = q.next().unwrap().unwrap();
        assert_eq!(first["n"], 1);
        q.set_sent(q.sent + n).unwrap();
        drop(q);
        // Reopened (psmon restarted): the second is next.
        let mut q = DiskQueue::open(&d).unwrap();
        assert_eq!(q.next().unwrap().unwrap().0["n"], 2);
        for _ in 0..2 {
            let (_, n) = q.next().unwrap().unwrap();
            q.set_sent(q.sent + n).unwrap();
        }
        assert!(q.next().unwrap().is_none());
        q.compact_if_done().unwrap();
        assert_eq!(std::fs::metadata(d.join("queue.jsonl")).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let d = dir("torn");
        let mut q = DiskQueue::open(&d).unwrap();
        q.append(&[json!({"n": 1})]).unwrap();
        drop(q);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("queue.jsonl"))
            .unwrap();
        f.write_all(b"{\"n\": 2").unwrap();
        let q = DiskQueue::open(&d).unwrap();
        let (e, _) = q.next().unwrap().unwrap();
        assert_eq!(e["n"], 1);
        assert_eq!(
            q.len,
            std::fs::metadata(d.join("queue.jsonl")).unwrap().len()
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let d = dir("full");
        let mut q = DiskQueue::open(&d).unwrap();
        let big = "x".repeat(1 << 20);
        for i in 0..20 {
            q.append(&[json!({"n": i, "pad": big})]).unwrap();
        }
        assert!(q.len - q.sent <= MAX_QUEUE_BYTES);
        assert!(q.dropped >= 4, "{}", q.dropped);
        let (oldest, _) = q.next().unwrap().unwrap();
        assert_eq!(oldest["n"], q.dropped);
        assert_eq!(q.waiting as u64, 20 - q.dropped);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// While the receiver fails nothing is sent: the file itself, not only
    /// its unsent part, stays within the bound, and the count of waiting
    /// events is kept without reading the file.
    #[test]
    fn the_file_stays_bounded_while_nothing_is_sent() {
        let d = dir("bounded");
        let mut q = DiskQueue::open(&d).unwrap();
        let pad = "y".repeat(64 << 10);
        for i in 0..600 {
            q.append(&[json!({"n": i, "pad": pad})]).unwrap();
            let on_disk = std::fs::metadata(d.join("queue.jsonl")).unwrap().len();
            assert!(on_disk <= MAX_QUEUE_BYTES, "{on_disk} bytes after {i}");
        }
        assert_eq!(q.waiting as u64 + q.dropped, 600);
        let (oldest, n) = q.next().unwrap().unwrap();
        assert_eq!(oldest["n"], q.dropped);
        q.sent_one(n).unwrap();
        let dropped = q.dropped;
        drop(q);
        let q = DiskQueue::open(&d).unwrap();
        assert_eq!(q.next().unwrap().unwrap().0["n"], dropped + 1);
        assert_eq!(q.waiting as u64, 600 - dropped - 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
