//! The health queue: per pfile with an `IPCKEY`, a System V shared-memory
//! segment (mode 0600, `ipcs -m` lists it) holding each entry's current
//! state and a ring of the recent events (Down, restart, Up, retry over,
//! switch, pause, resume), written by the daemon on every change.
//! `psmon dump` reads it directly, so it works while the daemon is stuck or
//! gone; on every Down and retry over the daemon also writes the dump to
//! the pfile's `SHM_DUMP_FILE`.
//!
//! The segment starts with a header: a magic, the layout version, its size,
//! the pfile's name and file, the writer's pid and start time, and a
//! sequence number that is odd while
//! a write is under way (a seqlock). A reader copies the segment and checks
//! the sequence did not move; a foreign segment, another layout or a write
//! caught half-way is reported as such, never trusted.

use std::{fmt::Write as _, path::Path};

/// `PSMONHQ` and a NUL: a segment that starts otherwise is not psmon's.
pub const MAGIC: [u8; 8] = *b"PSMONHQ\0";
/// The layout of this module's segments (2: the pfile's name and file in
/// the header).
pub const LAYOUT: u32 = 2;
/// Entries of one pfile kept in the segment (more are left out).
pub const ENTRIES: usize = 64;
/// Events kept in the ring.
pub const RING: usize = 256;
const TEXT: usize = 192;
const PATH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    magic: [u8; 8],
    layout: u32,
    size: u32,
    writer_pid: u32,
    entry_count: u32,
    writer_start_ticks: u64,
    /// Odd while a write is under way.
    seq: u64,
    /// Events ever written; the newest is at `(events - 1) % RING`.
    events: u64,
    /// The pfile's name (`app` for pfile_app) and file, so that a segment
    /// found by its header says whose it is.
    pfile: [u8; 64],
    file: [u8; PATH],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EntryRec {
    path: [u8; PATH],
    state: [u8; 16],
    pid: u32,
    attempts: u32,
    retry: u32,
    _pad: u32,
    since_unix_ms: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EventRec {
    unix_ms: u64,
    text: [u8; TEXT],
}

#[repr(C)]
struct Segment {
    header: Header,
    entries: [EntryRec; ENTRIES],
    ring: [EventRec; RING],
}

const SIZE: usize = std::mem::size_of::<Segment>();

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get(src: &[u8]) -> String {
    let n = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..n]).into_owned()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One entry's state as the queue shows it.
pub struct QueueEntry<'a> {
    /// The entry's path.
    pub path: &'a Path,
    /// Its state, as `psmon status` gives it.
    pub state: &'a str,
    /// Its main instance, if one runs.
    pub pid: Option<u32>,
    /// Restart attempts in the window.
    pub attempts: u32,
    /// Of these allowed.
    pub retry: u32,
}

/// A pfile's segment, attached for writing.
pub struct HealthQueue {
    id: i32,
    base: *mut Segment,
}

// SAFETY: the mapping is owned by this value and only touched through it.
unsafe impl Send for HealthQueue {}

impl HealthQueue {
    /// Creates (or takes over) the segment of `key` for pfile `name` (read
    /// from `file`). A segment of that key that is not psmon's is left
    /// alone and refused.
    pub fn open(key: u32, name: &str, file: &Path) -> std::io::Result<HealthQueue> {
        let key = key as libc::key_t;
        // SAFETY: shmget with integer arguments.
        let mut id = unsafe { libc::shmget(key, SIZE, libc::IPC_CREAT | 0o600) };
        if id < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // One of another size: psmon's of another layout, or not psmon's.
            // SAFETY: as above, attaching an existing segment of any size.
            let old = unsafe { libc::shmget(key, 0, 0) };
            if old >= 0 && is_ours(old) {
                // SAFETY: removing a segment that carries psmon's magic.
                unsafe { libc::shmctl(old, libc::IPC_RMID, std::ptr::null_mut()) };
                // SAFETY: as above.
                id = unsafe { libc::shmget(key, SIZE, libc::IPC_CREAT | 0o600) };
            }
        }
        if id < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: attaching the segment just created or found, read-write.
        let base = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if base as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        let queue = HealthQueue {
            id,
            base: base.cast(),
        };
        // SAFETY: the segment is SIZE bytes, mapped, and ours to write.
        let header = unsafe { &mut (*queue.base).header };
        if header.magic != MAGIC && header.magic != [0; 8] {
            return Err(std::io::Error::other(format!(
                "IPCKEY {key:#x} is used by a segment that is not psmon's"
            )));
        }
        header.magic = MAGIC;
        header.layout = LAYOUT;
        header.size = SIZE as u32;
        put(&mut header.pfile, name);
        put(&mut header.file, &file.display().to_string());
        header.writer_pid = std::process::id();
        header.writer_start_ticks =
            crate::proc::read_entry(std::process::id()).map_or(0, |e| e.start.ticks());
        if header.seq % 2 == 1 {
            header.seq += 1; // a writer died mid-write
        }
        Ok(queue)
    }

    /// Writes every entry's state and, when given, one event.
    pub fn write(&mut self, entries: &[QueueEntry], event: Option<&str>) {
        // SAFETY: the segment is SIZE bytes, mapped, and written only here.
        let seg = unsafe { &mut *self.base };
        let seq = &raw mut seg.header.seq;
        // SAFETY: seq lives in the mapping; volatile keeps the order of the
        // marker writes around the data for readers in other processes.
        unsafe { seq.write_volatile(seq.read_volatile() + 1) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let now = unix_ms();
        seg.header.entry_count = entries.len().min(ENTRIES) as u32;
        for (rec, e) in seg.entries.iter_mut().zip(entries) {
            put(&mut rec.path, &e.path.display().to_string());
            put(&mut rec.state, e.state);
            rec.pid = e.pid.unwrap_or(0);
            rec.attempts = e.attempts;
            rec.retry = e.retry;
            rec.since_unix_ms = now;
        }
        if let Some(text) = event {
            let slot = (seg.header.events % RING as u64) as usize;
            seg.ring[slot].unix_ms = now;
            put(&mut seg.ring[slot].text, text);
            seg.header.events += 1;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as above.
        unsafe { seq.write_volatile(seq.read_volatile() + 1) };
    }

    /// Removes the segment (its pfile is no longer configured).
    pub fn remove(self) {
        // SAFETY: marking our own segment for removal; it goes once detached.
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

impl Drop for HealthQueue {
    fn drop(&mut self) {
        // SAFETY: detaching the mapping this value attached.
        unsafe { libc::shmdt(self.base.cast()) };
    }
}

/// Whether segment `id` starts with psmon's magic.
fn is_ours(id: i32) -> bool {
    // SAFETY: attaching read-only to look at the first bytes.
    let base = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if base as isize == -1 {
        return false;
    }
    let mut magic = [0u8; 8];
    if segment_size(id).is_some_and(|s| s >= 8) {
        // SAFETY: the segment has at least 8 bytes.
        unsafe { std::ptr::copy_nonoverlapping(base.cast::<u8>(), magic.as_mut_ptr(), 8) };
    }
    // SAFETY: detaching what was just attached.
    unsafe { libc::shmdt(base) };
    magic == MAGIC
}

fn segment_size(id: i32) -> Option<usize> {
    // SAFETY: IPC_STAT into a zeroed struct we own.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0).then_some(ds.shm_segsz)
}

/// Every System V segment on the host that starts with psmon's magic (as
/// `ipcs -m` lists them, from `/proc/sysvipc/shm`): their keys, lowest
/// first. Those of another layout are included; [`dump`] says so.
pub fn segments() -> Vec<u32> {
    let mut keys: Vec<u32> = crate::proc::shm_segments()
        .into_iter()
        .filter(|&(key, id)| key != 0 && is_ours(id))
        .map(|(key, _)| key as u32)
        .collect();
    keys.sort_unstable();
    keys
}

/// The pfile whose segment `key` is, as its header says (`None` if it is
/// not a readable segment of this layout).
pub fn pfile_of(key: u32) -> Option<String> {
    let (id, size) = attachable(key).ok()?;
    // SAFETY: attaching read-only.
    let base = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if base as isize == -1 {
        return None;
    }
    let name = read_copy(base.cast(), size, key)
        .ok()
        .map(|seg| get(&seg.header.pfile));
    // SAFETY: detaching what was attached.
    unsafe { libc::shmdt(base) };
    name
}

/// Why a health queue cannot be read, or trusted.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// No segment has this key.
    #[error("no health queue with IPCKEY {key:#x}: psmon has not run with it since boot")]
    NoSegment {
        /// The IPCKEY.
        key: u32,
    },
    /// The segment could not be attached.
    #[error("cannot read the health queue {key:#x}: {source}")]
    Attach {
        /// The IPCKEY.
        key: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The segment is not psmon's.
    #[error("the segment {key:#x} is not psmon's ({why})")]
    Foreign {
        /// The IPCKEY.
        key: u32,
        /// What tells.
        why: &'static str,
    },
    /// The segment is of another psmon's layout.
    #[error(
        "the segment {key:#x} has layout {layout} ({size} bytes); this psmon reads layout {LAYOUT} ({SIZE} bytes)"
    )]
    OtherLayout {
        /// The IPCKEY.
        key: u32,
        /// The segment's layout.
        layout: u32,
        /// Its size in bytes.
        size: u32,
    },
    /// Every copy was caught mid-write.
    #[error(
        "the segment {key:#x} is being written without end (its writer may have died mid-write); try again"
    )]
    HalfWritten {
        /// The IPCKEY.
        key: u32,
    },
}

/// The id and size of the segment of `key`.
fn attachable(key: u32) -> Result<(i32, usize), DumpError> {
    // SAFETY: shmget of an existing segment.
    let id = unsafe { libc::shmget(key as libc::key_t, 0, 0) };
    if id < 0 {
        return Err(DumpError::NoSegment { key });
    }
    Ok((id, segment_size(id).unwrap_or(0)))
}

/// Reads the segment of `key` and renders it for people; an error says
/// why it cannot be trusted (none, foreign, another layout, half-written).
pub fn dump(key: u32) -> Result<String, DumpError> {
    let (id, size) = attachable(key)?;
    // SAFETY: attaching read-only.
    let base = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if base as isize == -1 {
        return Err(DumpError::Attach {
            key,
            source: std::io::Error::last_os_error(),
        });
    }
    let result = read_copy(base.cast(), size, key);
    // SAFETY: detaching what was attached.
    unsafe { libc::shmdt(base) };
    result.map(|seg| render(&seg, key))
}

/// A consistent copy of the segment at `base` (`size` bytes).
fn read_copy(base: *const u8, size: usize, key: u32) -> Result<Box<Segment>, DumpError> {
    if size < std::mem::size_of::<Header>() {
        return Err(DumpError::Foreign {
            key,
            why: "it is too small",
        });
    }
    // SAFETY: the header fits in the segment.
    let header: Header = unsafe { std::ptr::read_unaligned(base.cast()) };
    if header.magic != MAGIC {
        return Err(DumpError::Foreign {
            key,
            why: "no psmon header",
        });
    }
    if header.layout != LAYOUT || header.size as usize != SIZE || size < SIZE {
        return Err(DumpError::OtherLayout {
            key,
            layout: header.layout,
            size: header.size,
        });
    }
    for _ in 0..100 {
        let seq = |b: *const u8| {
            // SAFETY: `seq` is inside the header, which is inside the segment.
            unsafe {
                std::ptr::read_volatile(b.add(std::mem::offset_of!(Header, seq)).cast::<u64>())
            }
        };
        let before = seq(base);
        if before % 2 == 0 {
            let mut copy: Box<std::mem::MaybeUninit<Segment>> = Box::new_uninit();
            // SAFETY: SIZE bytes are mapped at base; the copy is of the same size.
            unsafe { std::ptr::copy_nonoverlapping(base, copy.as_mut_ptr().cast::<u8>(), SIZE) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            if seq(base) == before {
                // SAFETY: every bit pattern is a valid Segment (integers and bytes).
                return Ok(unsafe { copy.assume_init() });
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Err(DumpError::HalfWritten { key })
}

fn render(seg: &Segment, key: u32) -> String {
    let h = &seg.header;
    let alive = crate::proc::read_entry(h.writer_pid)
        .is_some_and(|e| e.start.ticks() == h.writer_start_ticks);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "health queue {key:#x} of pfile '{}' ({}): written by psmon pid {} ({})",
        get(&h.pfile),
        get(&h.file),
        h.writer_pid,
        if alive {
            "running"
        } else {
            "no longer running"
        }
    );
    let _ = writeln!(out, "entries:");
    for e in seg.entries.iter().take(h.entry_count as usize) {
        let pid = if e.pid == 0 {
            "-".to_string()
        } else {
            e.pid.to_string()
        };
        let _ = writeln!(
            out,
            "  {}  {}  pid {pid}  attempts {}/{}",
            get(&e.path),
            get(&e.state),
            e.attempts,
            e.retry
        );
    }
    let _ = writeln!(out, "events (oldest first):");
    let n = h.events.min(RING as u64);
    for i in (h.events - n)..h.events {
        let ev = &seg.ring[(i % RING as u64) as usize];
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ev.unix_ms);
        let _ = writeln!(
            out,
            "  {}  {}",
            humantime::format_rfc3339_millis(at),
            get(&ev.text)
        );
    }
    out
}

/// Writes `text` to `file`, first moving a file over `limit` bytes to
/// `FILE.1` (one generation kept).
pub fn write_dump_file(file: &Path, text: &str, limit: u64) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::metadata(file).is_ok_and(|m| m.len() > limit) {
        let mut old = file.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(file, old)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of this test's own (the pid keeps parallel runs apart).
    fn key(n: u32) -> u32 {
        0x7a00_0000 | ((std::process::id() & 0xffff) << 4) | n
    }

    #[test]
    fn writes_reads_and_refuses_what_is_not_its_own() {
        let k = key(1);
        let mut q = HealthQueue::open(k, "app", Path::new("/etc/psmon/pfile_app")).unwrap();
        let path = Path::new("/usr/sbin/sshd");
        let state = |s, pid| QueueEntry {
            path,
            state: s,
            pid,
            attempts: 1,
            retry: 3,
        };
        q.write(
            &[state("up", Some(812))],
            Some("Process ['/usr/sbin/sshd',pid=800] Down"),
        );
        q.write(
            &[state("up", Some(812))],
            Some("('/usr/sbin/sshd',pid=812) Up"),
        );
        let text = dump(k).unwrap();
        assert!(text.contains("(running)"), "{text}");
        assert!(
            text.contains("of pfile 'app' (/etc/psmon/pfile_app)"),
            "{text}"
        );
        // Found by its header, without the configuration.
        assert!(segments().contains(&k));
        assert_eq!(pfile_of(k).as_deref(), Some("app"));
        assert!(
            text.contains("/usr/sbin/sshd  up  pid 812  attempts 1/3"),
            "{text}"
        );
        let down = text.find("pid=800] Down").unwrap();
        let up = text.find("pid=812) Up").unwrap();
        assert!(down < up, "oldest first: {text}");
        // The ring keeps the newest RING events.
        for i in 0..RING + 10 {
            q.write(&[], Some(&format!("event {i}")));
        }
        let text = dump(k).unwrap();
        assert!(!text.contains("event 9\n") && text.contains(&format!("event {}", RING + 9)));
        // Caught mid-write (a writer that died there).
        // SAFETY: the test's own segment.
        unsafe { (*q.base).header.seq += 1 };
        assert!(matches!(dump(k), Err(DumpError::HalfWritten { .. })));
        // SAFETY: as above.
        unsafe { (*q.base).header.seq += 1 };
        // Another layout, then a foreign header.
        // SAFETY: as above.
        unsafe { (*q.base).header.layout = 7 };
        assert!(dump(k).unwrap_err().to_string().contains("layout 7"));
        // SAFETY: as above.
        unsafe { (*q.base).header.magic = *b"SOMEONE\0" };
        assert!(matches!(dump(k), Err(DumpError::Foreign { .. })));
        let id = q.id;
        drop(q);
        // psmon will not take over a foreign segment.
        assert!(HealthQueue::open(k, "app", Path::new("/etc/psmon/pfile_app")).is_err());
        // SAFETY: removing the test's segment.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        assert!(matches!(dump(k), Err(DumpError::NoSegment { .. })));
    }
}
