//! State that survives psmon's own restart: the monitor's state, saved
//! under `--state-dir` (default `/var/lib/psmon`) on every change, and read
//! back at start.
//!
//! Saving never makes monitoring wait: the event thread hands a snapshot
//! of the state (taken without copying the entries, see
//! [`crate::monitor::Snapshot`]) to a writer thread, which keeps only the
//! newest. The writer appends what changed since the last save to the
//! journal (`journal`) and syncs it; when the journal has grown as large
//! as the state file (at least [`COMPACT_AT`]), and at the first save, it
//! writes the whole state instead, atomically (temporary file, fsync,
//! rename), and starts the journal again. The file records the boot it
//! belongs to: times in it are of the monotonic clock, which a reboot
//! starts again, so a file from another boot is not used.

mod journal;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
};

use serde::Deserialize;

use crate::monitor::{Form, Monitor, Snapshot, SnapshotWriter};
use journal::Journal;

/// The layout of the state file; another one is not read.
pub const VERSION: u32 = 1;
/// Where state is saved.
pub const DEFAULT_DIR: &str = "/var/lib/psmon";
const FILE: &str = "psmon.state";

/// The journal is written whole again (compacted into the state file)
/// once it is as large as the state file and at least this large.
pub const COMPACT_AT: u64 = 1 << 20;

#[derive(Deserialize)]
struct Saved {
    version: u32,
    boot_id: String,
    /// The name of the journal's records that follow this file.
    #[serde(default)]
    journal: Option<String>,
    monitor: Monitor,
}

/// A state read back.
#[derive(Debug)]
pub struct Loaded {
    /// The monitor it was saved from.
    pub monitor: Monitor,
    /// What could not be read of the journal (psmon goes on with the state
    /// as it was before that).
    pub warning: Option<String>,
}

/// A state file larger than this is not read: 10,000 entries and as many
/// processes save about 4 MB, and parsing a planted 100 MB file would cost
/// gigabytes of memory.
const MAX_STATE_BYTES: u64 = 32 << 20;

/// The state a previous psmon saved in `dir`: `Ok(None)` when there is
/// none, `Err(warning)` when there is one that cannot be used (unreadable,
/// corrupt, another layout, another boot) — psmon then starts afresh.
pub fn load(dir: &Path) -> Result<Option<Loaded>, String> {
    let path = dir.join(FILE);
    let bytes = match read_regular(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e}; starting afresh",
                path.display()
            ));
        }
    };
    // The version first, so that a future layout is named as such.
    let value = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| format!("{} is corrupt ({e}); starting afresh", path.display()))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(VERSION)) {
        return Err(format!(
            "{} has layout version {}, this psmon reads {VERSION}; starting afresh",
            path.display(),
            version.map_or("(none)".into(), |v| v.to_string())
        ));
    }
    let saved: Saved = serde_json::from_value(value)
        .map_err(|e| format!("{} is corrupt ({e}); starting afresh", path.display()))?;
    debug_assert_eq!(saved.version, VERSION);
    if saved.boot_id != crate::proc::boot_id() {
        return Err(format!(
            "{} was written before the last reboot; starting afresh",
            path.display()
        ));
    }
    let mut monitor = saved.monitor;
    let Some(base) = saved.journal else {
        return Ok(Some(Loaded {
            monitor,
            warning: None,
        }));
    };
    let path = dir.join(journal::FILE);
    let (records, mut warning) = match read_regular(&path) {
        Ok(bytes) => journal::records(&bytes, &base),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
        Err(e) => (Vec::new(), Some(format!("cannot be read: {e}"))),
    };
    for (n, changes) in records.into_iter().enumerate() {
        if let Err(e) = monitor.apply(changes) {
            warning = Some(format!("record {} does not fit: {e}", n + 1));
            break;
        }
    }
    Ok(Some(Loaded {
        monitor,
        warning: warning.map(|w| {
            format!(
                "{} {w}; psmon goes on with the state saved before it",
                path.display()
            )
        }),
    }))
}

/// The bytes of `path` if it is a regular file. Opened non-blocking: a
/// FIFO planted there must not hold psmon's start-up.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_STATE_BYTES {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the {} MiB a state file may have",
            meta.len(),
            MAX_STATE_BYTES >> 20
        )));
    }
    let mut bytes = Vec::new();
    // Bounded again: the file may grow between the check and the read.
    (&mut file)
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(std::io::Error::other("it grew past its limit while read"));
    }
    Ok(bytes)
}

/// What saving cost the writer's thread, by the form of each save.
#[derive(Clone, Default)]
pub struct WriterCosts {
    /// Serialising a journal record, in ns.
    pub record_ns: crate::stats::Samples,
    /// Appending it and syncing the journal, in ns.
    pub append_ns: crate::stats::Samples,
    /// Each record's size in bytes.
    pub record_bytes: crate::stats::Samples,
    /// Serialising the whole state, in ns.
    pub whole_ns: crate::stats::Samples,
    /// Writing it (write, fsync, rename, a new journal), in ns.
    pub replace_ns: crate::stats::Samples,
    /// The whole state's size in bytes.
    pub whole_bytes: crate::stats::Samples,
}

/// The writer of the state file.
pub struct Store {
    shared: Arc<(Mutex<PendingSave>, Condvar)>,
    /// Time each save took on the caller's thread (taking the snapshot),
    /// in ns.
    pub snapshot_ns: crate::stats::Samples,
}

#[derive(Default)]
struct PendingSave {
    newest: Option<Snapshot>,
    costs: WriterCosts,
    /// The writer holds one it has not finished writing.
    writing: bool,
    stop: bool,
    /// The writer has stopped.
    done: bool,
}

impl Store {
    /// Creates `dir` (0700) and starts the writer thread.
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let shared: Arc<(Mutex<PendingSave>, Condvar)> = Arc::default();
        let writer = shared.clone();
        let files = Files {
            state: dir.join(FILE),
            journal: dir.join(journal::FILE),
            boot_id: crate::proc::boot_id(),
        };
        std::thread::Builder::new()
            .name("psmon-state".into())
            .spawn(move || write_loop(&files, &writer))?;
        Ok(Store {
            shared,
            snapshot_ns: crate::stats::Samples::default(),
        })
    }

    /// Hands a snapshot of `monitor` to the writer; returns at once.
    pub fn save(&mut self, monitor: &Monitor) {
        let begun = std::time::Instant::now();
        let snapshot = monitor.snapshot();
        let (lock, wake) = &*self.shared;
        let replaced = lock.lock().ok().map(|mut pending| {
            let old = pending.newest.replace(snapshot);
            wake.notify_one();
            old
        });
        self.snapshot_ns.add(begun.elapsed());
        // A snapshot not yet written is dropped here, not under the lock.
        drop(replaced);
    }

    /// What saving cost the writer's thread so far.
    pub fn writer_costs(&self) -> WriterCosts {
        let (lock, _) = &*self.shared;
        lock.lock().map(|p| p.costs.clone()).unwrap_or_default()
    }

    /// Waits (up to `limit`) until what was handed over is written.
    pub fn flush(&self, limit: std::time::Duration) {
        let (lock, wake) = &*self.shared;
        let Ok(pending) = lock.lock() else { return };
        let _ = wake.wait_timeout_while(pending, limit, |p| p.newest.is_some() || p.writing);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush(std::time::Duration::from_secs(2));
        let (lock, wake) = &*self.shared;
        if let Ok(mut pending) = lock.lock() {
            pending.stop = true;
            wake.notify_all();
            // Its last write (the state whole) is waited for, within
            // bounds: a stuck disk must not keep psmon from stopping.
            let limit = std::time::Duration::from_secs(2);
            let _ = wake.wait_timeout_while(pending, limit, |p| !p.done);
        }
    }
}

/// Where the writer writes.
struct Files {
    state: PathBuf,
    journal: PathBuf,
    boot_id: String,
}

fn write_loop(files: &Files, shared: &(Mutex<PendingSave>, Condvar)) {
    let (lock, wake) = shared;
    let mut writer = SnapshotWriter::default();
    // The journal following the state file last written, with that
    // file's name and size; none before the first save, or after a
    // failed write.
    let mut journal: Option<(Journal, String, u64)> = None;
    let mut body = Vec::new();
    loop {
        let snapshot = {
            let Ok(mut pending) = lock.lock() else { return };
            while pending.newest.is_none() && !pending.stop {
                pending = match wake.wait(pending) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
            pending.writing = pending.newest.is_some();
            match pending.newest.take() {
                Some(snapshot) => snapshot,
                None => {
                    // Stopping, nothing left: the next psmon reads one
                    // file rather than a journal too.
                    if let Some((j, _, _)) = &journal
                        && j.bytes() > 0
                    {
                        compact(files, &mut writer);
                    }
                    pending.done = true;
                    wake.notify_all();
                    return;
                }
            }
        };
        let whole = journal
            .as_ref()
            .is_none_or(|(j, _, size)| j.bytes() >= (*size).max(COMPACT_AT));
        let begun = std::time::Instant::now();
        body.clear();
        let form = writer.write(snapshot, whole, &mut body);
        let serialized = begun.elapsed();
        let begun = std::time::Instant::now();
        let written = match &form {
            Ok(Form::Changes) => match &mut journal {
                Some((j, base, _)) => j.append(base, &body),
                None => Err(std::io::Error::other("no journal")),
            },
            Ok(Form::Whole) => replace(files, &body).map(|next| journal = Some(next)),
            Err(e) => Err(std::io::Error::other(format!("cannot serialise it: {e}"))),
        };
        if let Err(e) = written {
            tracing::warn!(path = %files.state.display(), "cannot save psmon's state: {e}");
            // The next save writes it all again.
            writer.forget();
            journal = None;
        }
        if let Ok(mut pending) = lock.lock() {
            let costs = &mut pending.costs;
            let bytes = body.len() as u64;
            match &form {
                Ok(Form::Changes) => {
                    costs.record_ns.add(serialized);
                    costs.append_ns.add(begun.elapsed());
                    costs.record_bytes.add_value(bytes);
                }
                _ => {
                    costs.whole_ns.add(serialized);
                    costs.replace_ns.add(begun.elapsed());
                    costs.whole_bytes.add_value(bytes);
                }
            }
            pending.writing = false;
            wake.notify_all();
        }
        // A large buffer is not kept for the small records after it.
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
    }
}

/// Writes the last snapshot written whole, starting the journal again.
fn compact(files: &Files, writer: &mut SnapshotWriter) {
    let mut body = Vec::new();
    let written = match writer.rewrite_whole(&mut body) {
        Some(Ok(())) => replace(files, &body).map(|_| ()),
        Some(Err(e)) => Err(std::io::Error::other(format!("cannot serialise it: {e}"))),
        None => Ok(()),
    };
    if let Err(e) = written {
        tracing::warn!(path = %files.state.display(), "cannot save psmon's state: {e}");
    }
}

/// Writes the state file (`monitor` is the monitor's JSON) under a new
/// journal name, then starts that journal.
fn replace(files: &Files, monitor: &[u8]) -> std::io::Result<(Journal, String, u64)> {
    let name = crate::proc::random_uuid().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}-{}", std::process::id(), now.as_nanos())
    });
    let bytes = saved_bytes(&files.boot_id, &name, monitor)?;
    write_atomically(&files.state, &bytes)?;
    let journal = Journal::start(&files.journal)?;
    Ok((journal, name, bytes.len() as u64))
}

/// The file's bytes (`version`, `boot_id`, `journal`, `monitor`: what
/// [`load`] reads).
fn saved_bytes(boot_id: &str, journal: &str, monitor: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut out = format!("{{\"version\":{VERSION},\"boot_id\":").into_bytes();
    serde_json::to_writer(&mut out, boot_id)?;
    out.extend_from_slice(b",\"journal\":");
    serde_json::to_writer(&mut out, journal)?;
    out.extend_from_slice(b",\"monitor\":");
    out.extend_from_slice(monitor);
    out.push(b'}');
    Ok(out)
}

/// Write, fsync, rename: a reader sees the old file or the new one, whole.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = crate::secure_dir::create_new(&tmp, 0o600)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_refuses_what_it_cannot_trust() {
        let dir = std::env::temp_dir().join(format!("psmon-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(load(&dir), Ok(None)));
        let mut store = Store::open(&dir).unwrap();
        let (monitor, _) = Monitor::new(crate::config::Config::default(), true);
        store.save(&monitor);
        store.flush(std::time::Duration::from_secs(5));
        assert!(matches!(load(&dir), Ok(Some(_))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(store);

        for (text, says) in [
            ("{not json", "corrupt"),
            (
                r#"{"version":99,"boot_id":"x","monitor":{}}"#,
                "layout version 99",
            ),
            (
                r#"{"version":1,"boot_id":"another boot","monitor":{}}"#,
                "corrupt",
            ),
            (r#"{"boot_id":"x"}"#, "layout version (none)"),
        ] {
            std::fs::write(dir.join(FILE), text).unwrap();
            let err = load(&dir).map(|_| ()).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains("starting afresh"), "{err}");
        }
        let mut whole = Vec::new();
        SnapshotWriter::default()
            .write(monitor.snapshot(), true, &mut whole)
            .unwrap();
        let mut good: serde_json::Value =
            serde_json::from_slice(&saved_bytes("another boot", "j", &whole).unwrap()).unwrap();
        good["boot_id"] = "another boot".into();
        std::fs::write(dir.join(FILE), good.to_string()).unwrap();
        assert!(load(&dir).unwrap_err().contains("before the last reboot"));
        // A FIFO where the file should be: refused at once, not waited on.
        std::fs::remove_file(dir.join(FILE)).unwrap();
        nix::unistd::mkfifo(
            &dir.join(FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(load(&dir).unwrap_err().contains("not a regular file"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A save after the first appends what changed to the journal; it is
    /// read back in order, up to a line cut short, and lines that follow
    /// another state file are not.
    #[test]
    fn the_journal_carries_what_changed_after_the_state_file() {
        let dir = std::env::temp_dir().join(format!("psmon-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pidfds = |dir: &Path| {
            let loaded = load(dir).unwrap().unwrap();
            let v = serde_json::to_value(&loaded.monitor).unwrap();
            (v["pidfds"].as_bool().unwrap(), loaded.warning)
        };
        let mut store = Store::open(&dir).unwrap();
        let config = crate::config::Config::default;
        store.save(&Monitor::new(config(), true).0);
        store.flush(std::time::Duration::from_secs(5));
        let state = std::fs::read(dir.join(FILE)).unwrap();
        store.save(&Monitor::new(config(), false).0);
        store.flush(std::time::Duration::from_secs(5));
        assert_eq!(std::fs::read(dir.join(FILE)).unwrap(), state);
        let journal = std::fs::read(dir.join(journal::FILE)).unwrap();
        assert_eq!(journal.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(pidfds(&dir), (false, None));
        // Stopping, the writer writes the state whole and the journal
        // again empty.
        drop(store);
        assert_ne!(std::fs::read(dir.join(FILE)).unwrap(), state);
        assert_eq!(std::fs::read(dir.join(journal::FILE)).unwrap(), b"");
        assert_eq!(pidfds(&dir), (false, None));

        // The first state file and its journal again.
        std::fs::write(dir.join(FILE), &state).unwrap();
        let mut cut = journal.clone();
        cut.extend_from_slice(br#"{"base":"#);
        std::fs::write(dir.join(journal::FILE), &cut).unwrap();
        let (value, warning) = pidfds(&dir);
        assert!(!value);
        assert!(warning.unwrap().contains("line 2 is cut short"));

        let other = String::from_utf8(journal).unwrap();
        let name: serde_json::Value = serde_json::from_slice(&state).unwrap();
        let other = other.replace(name["journal"].as_str().unwrap(), "another");
        std::fs::write(dir.join(journal::FILE), other).unwrap();
        assert_eq!(pidfds(&dir), (true, None));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
