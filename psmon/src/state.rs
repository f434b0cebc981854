//! State that survives psmon's own restart: the monitor's state, saved
//! under `--state-dir` (default `/var/lib/psmon`) on every change, and read
//! back at start.
//!
//! Saving never makes monitoring wait: the event thread hands a snapshot
//! of the state (taken without copying the entries, see
//! [`crate::monitor::Snapshot`]) to a writer thread, which keeps only the
//! newest, serialises it and writes it atomically (temporary file, fsync,
//! rename). The file records
//! the boot it belongs to: times in it are of the monotonic clock, which a
//! reboot starts again, so a file from another boot is not used.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Condvar, Mutex},
};

use serde::Deserialize;

use crate::monitor::{Monitor, Snapshot, SnapshotWriter};

/// The layout of the state file; another one is not read.
pub const VERSION: u32 = 1;
pub const DEFAULT_DIR: &str = "/var/lib/psmon";
const FILE: &str = "psmon.state";

#[derive(Deserialize)]
struct Saved {
    version: u32,
    boot_id: String,
    monitor: Monitor,
}

/// A state file larger than this is not read: 10,000 entries and as many
/// processes save about 4 MB, and parsing a planted 100 MB file would cost
/// gigabytes of memory.
const MAX_STATE_BYTES: u64 = 32 << 20;

/// The state a previous psmon saved in `dir`: `Ok(None)` when there is
/// none, `Err(warning)` when there is one that cannot be used (unreadable,
/// corrupt, another layout, another boot) — psmon then starts afresh.
pub fn load(dir: &Path) -> Result<Option<Monitor>, String> {
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
    Ok(Some(saved.monitor))
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

/// The writer of the state file.
pub struct Store {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    /// Time each save took on the caller's thread (taking the snapshot),
    /// in ns.
    pub snapshot_ns: crate::stats::Samples,
}

#[derive(Default)]
struct Pending {
    newest: Option<Snapshot>,
    /// Time each serialisation took, on the writer's thread, in ns.
    serialize_ns: crate::stats::Samples,
    /// Time each write took (write, fsync, rename), in ns.
    write_ns: crate::stats::Samples,
    /// The writer holds one it has not finished writing.
    writing: bool,
    stop: bool,
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
        let shared: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let path = dir.join(FILE);
        let writer = shared.clone();
        let boot_id = crate::proc::boot_id();
        std::thread::Builder::new()
            .name("psmon-state".into())
            .spawn(move || write_loop(&path, &boot_id, &writer))?;
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

    /// How long serialising and writing took so far, on the writer's
    /// thread.
    pub fn writer_ns(&self) -> (crate::stats::Samples, crate::stats::Samples) {
        let (lock, _) = &*self.shared;
        lock.lock()
            .map(|p| (p.serialize_ns.clone(), p.write_ns.clone()))
            .unwrap_or_default()
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
        }
    }
}

fn write_loop(path: &Path, boot_id: &str, shared: &(Mutex<Pending>, Condvar)) {
    let (lock, wake) = shared;
    let mut writer = SnapshotWriter::default();
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
                None => return, // stopping, nothing left
            }
        };
        let begun = std::time::Instant::now();
        let bytes = saved_bytes(&mut writer, boot_id, &snapshot);
        drop(snapshot);
        let serialized = begun.elapsed();
        let begun = std::time::Instant::now();
        match bytes {
            Ok(bytes) => {
                if let Err(e) = write_atomically(path, &bytes) {
                    tracing::warn!(path = %path.display(), "cannot save psmon's state: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialise psmon's state: {e}"),
        }
        if let Ok(mut pending) = lock.lock() {
            pending.serialize_ns.add(serialized);
            pending.write_ns.add(begun.elapsed());
            pending.writing = false;
            wake.notify_all();
        }
    }
}

/// The file's bytes (`version`, `boot_id`, `monitor`: what [`load`]
/// reads), the monitor's part written by `writer`.
fn saved_bytes(
    writer: &mut SnapshotWriter,
    boot_id: &str,
    snapshot: &Snapshot,
) -> serde_json::Result<Vec<u8>> {
    let mut out = format!("{{\"version\":{VERSION},\"boot_id\":").into_bytes();
    serde_json::to_writer(&mut out, boot_id)?;
    out.extend_from_slice(b",\"monitor\":");
    writer.write(snapshot, &mut out)?;
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
        let mut good: serde_json::Value = serde_json::from_slice(
            &saved_bytes(
                &mut SnapshotWriter::default(),
                "another boot",
                &monitor.snapshot(),
            )
            .unwrap(),
        )
        .unwrap();
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
}
