//! Which running processes belong to which watched entry, read from `/proc`:
//! for one process when an event names it, or for all of them in the
//! reconciliation scan ("events give speed, the scan gives truth").
//!
//! A process belongs to an entry when its executable (`/proc/PID/exe`), its
//! argv[0], or the script an interpreter runs equals the entry's path, or
//! its command line matches the entry's `cmdline` glob. Zombies belong to
//! nothing: they are dead.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::{
    config::{Entry, Match},
    source::procfs,
};

/// A running process, identified by (tgid, start time in clock ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Instance {
    pub tgid: u32,
    pub start_ticks: u64,
    /// `comm` when it was matched, NUL padded: an exec changes it.
    pub comm: [u8; 16],
}

/// What is already known to match: tgid → (start ticks, comm, entry,
/// exit watched by a pidfd). A process still the same (same start time, same
/// comm) is confirmed by one read of its stat file instead of a full match;
/// one whose exit a pidfd watches is not read at all.
pub type Known = HashMap<u32, (u64, [u8; 16], usize, bool)>;

/// The stat files of known instances, kept open between scans so that
/// confirming each costs one `pread` rather than open, read and close.
#[derive(Default)]
pub struct StatFiles {
    files: HashMap<u32, (u64, std::fs::File)>,
}

/// Fields of `/proc/PID/stat` a scan needs.
struct Stat<'a> {
    comm: &'a [u8],
    state: u8,
    num_threads: i64,
    start_ticks: u64,
}

impl Stat<'_> {
    /// The whole group has exited (see `ProcEntry::is_dead`).
    fn dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x') && self.num_threads <= 1
    }
}

/// Reads and parses `/proc/PID/stat` into `buf` (reused across processes).
fn read_stat(tgid: u32, buf: &mut Vec<u8>) -> Option<Stat<'_>> {
    use std::io::Read;
    buf.clear();
    let mut f = std::fs::File::open(format!("/proc/{tgid}/stat")).ok()?;
    f.read_to_end(buf).ok()?;
    parse_stat(buf)
}

/// Re-reads an open stat file from the start. procfs regenerates it on
/// every read; once the process is gone the read fails (the file stays
/// bound to that process, never to a later one with the same pid).
fn pread_stat<'a>(file: &std::fs::File, buf: &'a mut Vec<u8>) -> Option<Stat<'a>> {
    use std::os::unix::fs::FileExt;
    buf.resize(4096, 0);
    let n = file.read_at(buf, 0).ok()?;
    buf.truncate(n);
    parse_stat(buf)
}

fn parse_stat(buf: &[u8]) -> Option<Stat<'_>> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // After the state: fields 4 (ppid) to 19, then num_threads (20), 21, starttime (22).
    let num_threads = fields.nth(16)?.parse().ok()?;
    let start_ticks = fields.nth(1)?.parse().ok()?;
    Some(Stat {
        comm: &buf[open + 1..close],
        state,
        num_threads,
        start_ticks,
    })
}

/// `comm` as a fixed, NUL padded key.
pub fn comm_key(comm: &[u8]) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = comm.len().min(15);
    key[..n].copy_from_slice(&comm[..n]);
    key
}

/// The index of watched entries a scan matches against (cheap to share).
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    by_path: HashMap<PathBuf, usize>,
    by_cmdline: Vec<(usize, glob::Pattern)>,
    /// `comm` values (first 15 bytes of file names) that may belong to an entry.
    comms: HashSet<Vec<u8>>,
    /// Some entry is a script, so interpreter processes must be looked at.
    scripts: bool,
}

/// Executables that run a script named on their command line.
fn is_interpreter(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        base,
        "sh" | "bash"
            | "dash"
            | "ksh"
            | "zsh"
            | "csh"
            | "tcsh"
            | "python"
            | "perl"
            | "ruby"
            | "node"
            | "php"
            | "lua"
            | "tclsh"
            | "awk"
            | "gawk"
    )
}

/// The first 15 bytes of a file name, as the kernel keeps it in `comm`.
pub fn comm_of(path: &Path) -> Vec<u8> {
    let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
    name[..name.len().min(15)].to_vec()
}

impl Matcher {
    /// `entries[i]` is entry number `i`.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut m = Matcher::default();
        for (i, e) in entries.into_iter().enumerate() {
            match &e.matcher {
                Match::Path => {
                    m.by_path.insert(e.path.clone(), i);
                    m.comms.insert(comm_of(&e.path));
                    if is_script(&e.path) {
                        m.scripts = true;
                    }
                }
                Match::Cmdline(p) => m.by_cmdline.push((i, p.clone())),
            }
        }
        m
    }

    /// Every comm that may belong to an entry, for the in-kernel filter;
    /// `None` when comm cannot tell (command-line patterns, scripts run by
    /// an interpreter), and every exec must be looked at.
    pub fn kernel_comms(&self) -> Option<Vec<String>> {
        if !self.by_cmdline.is_empty() || self.scripts {
            return None;
        }
        Some(
            self.comms
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        )
    }

    /// Could an exec with this `comm` belong to an entry? (Cheap pre-check
    /// before reading `/proc`.)
    pub fn may_match(&self, comm: &str) -> bool {
        self.may_match_comm(comm.as_bytes())
    }

    fn may_match_comm(&self, comm: &[u8]) -> bool {
        !self.by_cmdline.is_empty() || self.scripts || self.comms.contains(comm)
    }

    /// The entry process `tgid` belongs to, with its identity; `None` for
    /// other processes, zombies and processes already gone.
    pub fn classify(&self, tgid: u32) -> Option<(usize, Instance)> {
        let mut buf = Vec::with_capacity(512);
        let stat = read_stat(tgid, &mut buf)?;
        self.classify_stat(tgid, &stat)
    }

    fn classify_stat(&self, tgid: u32, stat: &Stat) -> Option<(usize, Instance)> {
        if stat.dead() {
            return None;
        }
        let exe = procfs::exe(tgid);
        let idx = exe
            .as_deref()
            .and_then(|e| self.by_path.get(strip_deleted(e)).copied());
        let idx = match idx {
            Some(i) => i,
            None => {
                let argv = read_cmdline(tgid)?;
                self.match_argv(exe.as_deref(), &argv)?
            }
        };
        Some((
            idx,
            Instance {
                tgid,
                start_ticks: stat.start_ticks,
                comm: comm_key(stat.comm),
            },
        ))
    }

    fn match_argv(&self, exe: Option<&Path>, argv: &[Vec<u8>]) -> Option<usize> {
        let arg0 = argv.first()?;
        if let Some(i) = self.by_path.get(Path::new(OsStr::from_bytes(arg0))) {
            return Some(*i);
        }
        if self.scripts && exe.is_some_and(is_interpreter) {
            let script = argv.iter().skip(1).find(|a| !a.starts_with(b"-"))?;
            if let Some(i) = self.by_path.get(Path::new(OsStr::from_bytes(script))) {
                return Some(*i);
            }
        }
        if !self.by_cmdline.is_empty() {
            let joined = argv
                .iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
                .join(" ");
            return self
                .by_cmdline
                .iter()
                .find(|(_, p)| p.matches(&joined))
                .map(|(i, _)| *i);
        }
        None
    }

    /// Every running instance of every entry: `result[i]` for entry `i`.
    ///
    /// One read of `/proc/PID/stat` per process: a known instance that is
    /// still the same process is confirmed by it, and a process whose
    /// `comm` no entry could have is passed over. Only candidates cost the
    /// reads of `exe` and `cmdline`. (A process that renamed itself with
    /// `PR_SET_NAME` before psmon started is therefore not found by the scan;
    /// its exec, seen by the event source, is classified by its path.)
    pub fn scan(&self, entries: usize, known: &Known, files: &mut StatFiles) -> Vec<Vec<Instance>> {
        let mut found = vec![Vec::new(); entries];
        let mut buf = Vec::with_capacity(4096);
        files
            .files
            .retain(|tgid, (start, _)| known.get(tgid).is_some_and(|k| k.0 == *start && !k.3));
        for (tgid, (start, comm, i, pidfd)) in known {
            if *pidfd {
                if let Some(slot) = found.get_mut(*i) {
                    slot.push(Instance {
                        tgid: *tgid,
                        start_ticks: *start,
                        comm: *comm,
                    });
                }
                continue;
            }
            let file = match files.files.get(tgid) {
                Some((_, f)) => f,
                None => match std::fs::File::open(format!("/proc/{tgid}/stat")) {
                    Ok(f) => &files.files.entry(*tgid).or_insert((*start, f)).1,
                    Err(_) => continue, // gone
                },
            };
            let Some(stat) = pread_stat(file, &mut buf) else {
                files.files.remove(tgid);
                continue;
            };
            let same = stat.start_ticks == *start && comm_key(stat.comm) == *comm;
            if same && !stat.dead() {
                if let Some(slot) = found.get_mut(*i) {
                    slot.push(Instance {
                        tgid: *tgid,
                        start_ticks: *start,
                        comm: *comm,
                    });
                }
            } else if !same {
                // It exec'd something else: classify it afresh below.
                files.files.remove(tgid);
            }
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for d in dir.filter_map(Result::ok) {
            let Some(tgid) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if files.files.contains_key(&tgid) || known.get(&tgid).is_some_and(|k| k.3) {
                continue; // confirmed above
            }
            let Some(stat) = read_stat(tgid, &mut buf) else {
                continue;
            };
            if known
                .get(&tgid)
                .is_some_and(|k| k.0 == stat.start_ticks && k.1 == comm_key(stat.comm))
            {
                continue; // a known instance that is a zombie now
            }
            if !self.may_match_comm(stat.comm) {
                continue;
            }
            if let Some((i, inst)) = self.classify_stat(tgid, &stat)
                && let Some(slot) = found.get_mut(i)
            {
                slot.push(inst);
            }
        }
        found
    }
}

/// `/proc/PID/exe` of a replaced binary reads `PATH (deleted)`.
fn strip_deleted(exe: &Path) -> &Path {
    let bytes = exe.as_os_str().as_bytes();
    Path::new(OsStr::from_bytes(
        bytes.strip_suffix(b" (deleted)").unwrap_or(bytes),
    ))
}

fn read_cmdline(tgid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{tgid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a kernel thread or a zombie
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// A script starts with `#!`; its processes are interpreters running it.
fn is_script(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn matches_argv0_scripts_and_cmdline_patterns() {
        let mut script = Entry::new(
            "/opt/app/run.py".into(),
            None,
            0,
            0,
            crate::config::Action::Continue,
        );
        script.matcher = Match::Path;
        let daemon = Entry::new(
            "/usr/sbin/d".into(),
            None,
            0,
            0,
            crate::config::Action::Continue,
        );
        let mut java = Entry::new(
            "/opt/app/app.jar".into(),
            None,
            0,
            0,
            crate::config::Action::Continue,
        );
        java.matcher = Match::Cmdline(glob::Pattern::new("*java*-jar /opt/app/app.jar*").unwrap());
        let mut m = Matcher::new([&script, &daemon, &java]);
        m.scripts = true; // the script file does not exist here
        let py = Some(Path::new("/usr/bin/python3.11"));
        assert_eq!(
            m.match_argv(py, &argv(&["python3", "-u", "/opt/app/run.py"])),
            Some(0)
        );
        assert_eq!(m.match_argv(None, &argv(&["/usr/sbin/d", "-f"])), Some(1));
        assert_eq!(
            m.match_argv(
                Some(Path::new("/usr/bin/java")),
                &argv(&["/usr/bin/java", "-Xmx1g", "-jar", "/opt/app/app.jar"])
            ),
            Some(2)
        );
        // Not an interpreter: an editor opening the script is not the script.
        assert_eq!(
            m.match_argv(
                Some(Path::new("/usr/bin/vim")),
                &argv(&["vim", "/opt/app/run.py"])
            ),
            None
        );
        assert!(m.kernel_comms().is_none());
    }

    #[test]
    fn comm_is_truncated_like_the_kernels() {
        assert_eq!(
            comm_of(Path::new("/usr/sbin/a-very-long-daemon")),
            b"a-very-long-dae".to_vec()
        );
        assert!(is_interpreter(Path::new("/usr/bin/python3.11")));
        assert!(!is_interpreter(Path::new("/usr/sbin/sshd")));
        assert_eq!(
            strip_deleted(Path::new("/usr/sbin/d (deleted)")),
            Path::new("/usr/sbin/d")
        );
    }

    #[test]
    fn finds_this_test_process_by_its_executable() {
        let me = std::env::current_exe().unwrap();
        let entry = Entry::new(me, None, 0, 0, crate::config::Action::Continue);
        let m = Matcher::new([&entry]);
        let found = m.scan(1, &Known::new(), &mut StatFiles::default());
        let pid = std::process::id();
        assert!(found[0].iter().any(|i| i.tgid == pid), "{found:?}");
    }
}
