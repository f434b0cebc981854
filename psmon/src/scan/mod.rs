//! Which running processes belong to which watched entry, read from `/proc`:
//! for one process when an event names it, or for all of them in the
//! reconciliation scan ("events give speed, the scan gives truth").
//!
//! A process matches a path entry when its executable (`/proc/PID/exe`) is
//! the file the path names — symlinks resolved when the matcher is built,
//! a binary replaced by a package update (`… (deleted)`) included, whatever
//! the process was started as or renamed itself to — or when an
//! interpreter runs the path as its script. Where the path is another name
//! for a multi-call binary (`/usr/bin/redis-server` → `redis-check-rdb`,
//! busybox), the process must also have been started under that name
//! (`argv[0]` or `comm`), or every user of the binary would match. An entry
//! with a `cmdline` glob matches by command line instead. Zombies belong to
//! nothing: they are dead.
//!
//! Which matching processes are *instances* (all, the main one, the one a
//! pidfile names) is the monitor's business, not this module's.
//!
//! `reconcile` holds the scan of every process and what one scan leaves
//! to the next.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

mod reconcile;

pub use reconcile::{ScanState, Unchanged};

use crate::{
    config::{Entry, Match},
    facts::{EntryId, Seen},
    proc::{self, Stat, read_stat},
};

/// Why a process matched its entry (shown by `psmon check --live`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchReason {
    /// Its executable is the entry's file.
    Executable,
    /// Its executable is the multi-call binary the entry's path names, and
    /// it was started under the entry's name.
    StartedAs,
    /// An interpreter runs the entry's script.
    Script,
    /// Its command line matches the entry's `cmdline` glob.
    Cmdline,
    /// It is in the entry's unit's or cgroup's cgroup.
    Cgroup,
}

impl std::fmt::Display for MatchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatchReason::Executable => "its executable is the file the path names",
            MatchReason::StartedAs => {
                "it runs the file the path links to, started under the path's name"
            }
            MatchReason::Script => "an interpreter runs the path as its script",
            MatchReason::Cmdline => "its command line matches the cmdline pattern",
            MatchReason::Cgroup => "it runs in the unit's or cgroup's cgroup",
        })
    }
}

/// `comm` as a fixed, NUL padded key.
pub fn comm_key(comm: &[u8]) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = comm.len().min(proc::COMM_LEN);
    key[..n].copy_from_slice(&comm[..n]);
    key
}

/// An entry whose path names an executable file.
#[derive(Clone, Debug)]
struct ExeTarget {
    entry: EntryId,
    /// The path's own file name when it differs from the file's (a symlink
    /// to a multi-call binary): the name the process must be started as.
    alias: Option<Vec<u8>>,
}

/// The index of watched entries a scan matches against (cheap to share).
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    /// Executable files, as `/proc/PID/exe` names them → their entries.
    by_exe: HashMap<Vec<u8>, Vec<ExeTarget>>,
    /// Scripts (`#!` files) → entry; their processes are interpreters.
    by_script: HashMap<PathBuf, EntryId>,
    by_cmdline: Vec<(EntryId, glob::Pattern)>,
    /// Cgroups (as `/proc/PID/cgroup`'s v2 line names them) → entry; their
    /// processes and those of the cgroups below belong to it.
    by_cgroup: Vec<(EntryId, String)>,
    /// Unit and cgroup entries that cannot be found (why), for warnings.
    unresolved: Vec<(EntryId, String)>,
    /// `comm` values (first 15 bytes of file names) that watched processes
    /// are exec'd with: the in-kernel filter's keys.
    comms: HashSet<Vec<u8>>,
}

/// Executables that run a script named on their command line.
/// A live process's identity, from its stat (and euid).
fn seen_of(tgid: u32, stat: &Stat) -> Option<Seen> {
    if stat.is_dead() {
        return None;
    }
    Some(Seen {
        tgid,
        start_ticks: stat.start_ticks,
        comm: comm_key(stat.comm),
        ppid: stat.ppid,
        uid: proc::euid(tgid)?,
    })
}

/// What an exec was of, as the kernel's exec event names it (bprm's
/// filename) when only `/proc` can say: the script an interpreter was
/// started on, else the executable.
pub fn exec_target(tgid: u32, exe: PathBuf) -> PathBuf {
    if !is_interpreter(exe.as_os_str().as_bytes()) {
        return exe;
    }
    let argv = proc::cmdline(tgid).unwrap_or_default();
    argv.iter()
        .skip(1)
        .find(|a| !a.starts_with(b"-"))
        .filter(|s| s.starts_with(b"/"))
        .map_or(exe, |s| PathBuf::from(OsStr::from_bytes(s)))
}

fn is_interpreter(exe: &[u8]) -> bool {
    let name = exe.rsplit(|b| *b == b'/').next().unwrap_or(exe);
    let Ok(name) = std::str::from_utf8(name) else {
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

/// What a configured path names on this host, resolved now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The file with every symlink followed (the path itself when it does
    /// not exist).
    pub file: PathBuf,
    /// The file exists.
    pub exists: bool,
    /// It is a script (`#!`): its interpreter runs it.
    pub script: bool,
}

/// Resolves `path` to the file it names.
pub fn resolve(path: &Path) -> Resolved {
    match std::fs::canonicalize(path) {
        Ok(file) => Resolved {
            script: is_script(&file),
            file,
            exists: true,
        },
        Err(_) => Resolved {
            file: path.to_path_buf(),
            exists: false,
            script: false,
        },
    }
}

impl Matcher {
    /// `entries[i]` is entry number `i`. Paths are resolved here: a
    /// symlink that changes later is seen at the next reload.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut m = Matcher::default();
        for (i, e) in entries.into_iter().enumerate() {
            let i = EntryId::at(i);
            match &e.matcher {
                Match::Path => {
                    let r = resolve(&e.path);
                    m.comms.insert(comm_of(&e.path));
                    if r.script {
                        m.by_script.insert(e.path.clone(), i);
                        m.by_script.insert(r.file, i);
                        continue;
                    }
                    m.comms.insert(comm_of(&r.file));
                    let alias = (e.path.file_name() != r.file.file_name())
                        .then(|| e.path.file_name().map(|n| n.as_bytes().to_vec()))
                        .flatten();
                    // Most files are one entry's: room for one, not Vec's four.
                    m.by_exe
                        .entry(r.file.as_os_str().as_bytes().to_vec())
                        .or_insert_with(|| Vec::with_capacity(1))
                        .push(ExeTarget { entry: i, alias });
                }
                Match::Cmdline(p) => m.by_cmdline.push((i, p.clone())),
                Match::Unit(_) | Match::Cgroup(_) => match cgroup_of(&e.matcher) {
                    Ok(cgroup) => m.by_cgroup.push((i, cgroup)),
                    Err(why) => m.unresolved.push((i, why)),
                },
            }
        }
        m
    }

    /// Unit and cgroup entries whose cgroup cannot be known, and why.
    pub fn unresolved(&self) -> &[(EntryId, String)] {
        &self.unresolved
    }

    /// Every comm that may belong to an entry, for the in-kernel filter;
    /// `None` when comm cannot tell (command-line patterns, scripts run by
    /// an interpreter), and every exec must be looked at.
    /// [`Matcher::kernel_comms`] that `old` did not have (after a reload:
    /// the names the kernel filter does not have yet).
    pub fn kernel_comms_since(&self, old: &Matcher) -> Option<Vec<String>> {
        if old.kernel_comms_where(|_| false).is_none() {
            // Names did not suffice before: none of them were put in.
            return self.kernel_comms();
        }
        self.kernel_comms_where(|c| !old.comms.contains(c))
    }

    /// The names (`comm`) the kernel filter may pass, when every entry
    /// can be told apart by one; `None` when some cannot.
    pub fn kernel_comms(&self) -> Option<Vec<String>> {
        self.kernel_comms_where(|_| true)
    }

    fn kernel_comms_where(&self, keep: impl Fn(&Vec<u8>) -> bool) -> Option<Vec<String>> {
        if !self.by_cmdline.is_empty() || !self.by_script.is_empty() || !self.by_cgroup.is_empty() {
            return None;
        }
        Some(
            self.comms
                .iter()
                .filter(|c| keep(c))
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        )
    }

    /// Could the exec of `comm` (of the file at `path`, when the event
    /// says) belong to an entry? A cheap check before reading `/proc`; a
    /// process it passes over is still found by the next scan.
    pub fn may_match(&self, comm: &str, path: Option<&Path>) -> bool {
        !self.by_cmdline.is_empty()
            || !self.by_script.is_empty()
            || !self.by_cgroup.is_empty()
            || self.comms.contains(comm.as_bytes())
            || path.is_some_and(|p| self.by_exe.contains_key(p.as_os_str().as_bytes()))
    }

    /// Whether a process with this executable may match (before reading
    /// anything else of it).
    fn exe_may_match(&self, exe: &[u8]) -> bool {
        self.by_exe.contains_key(strip_deleted(exe))
            || (!self.by_script.is_empty() && is_interpreter(exe))
            || !self.by_cmdline.is_empty()
            || !self.by_cgroup.is_empty()
    }

    /// The entry process `tgid` belongs to, with its identity; `None` for
    /// other processes, zombies and processes already gone.
    pub fn classify(&self, tgid: u32) -> Option<(EntryId, Seen)> {
        self.classify_why(tgid).map(|(i, inst, _)| (i, inst))
    }

    /// [`Matcher::classify`] for a process the kernel says exec'd `path`:
    /// a watched script that has already exec'd onward (a wrapper's `exec
    /// python3 …`, a moment after its interpreter started) is the script's
    /// still, though `/proc` shows what it runs now.
    pub fn classify_exec(&self, tgid: u32, path: Option<&Path>) -> Option<(EntryId, Seen)> {
        let mut buf = Vec::with_capacity(512);
        let stat = read_stat(tgid, &mut buf)?;
        let found = proc::exe(tgid)
            .and_then(|exe| self.classify_stat(tgid, &stat, exe.as_os_str().as_bytes()));
        if let Some((idx, seen, _)) = found {
            return Some((idx, seen));
        }
        let &idx = self.by_script.get(path?)?;
        Some((idx, seen_of(tgid, &stat)?))
    }

    /// [`Matcher::classify`], and why it matched.
    pub fn classify_why(&self, tgid: u32) -> Option<(EntryId, Seen, MatchReason)> {
        let mut buf = Vec::with_capacity(512);
        let stat = read_stat(tgid, &mut buf)?;
        let exe = proc::exe(tgid)?;
        self.classify_stat(tgid, &stat, exe.as_os_str().as_bytes())
    }

    fn classify_stat(
        &self,
        tgid: u32,
        stat: &Stat,
        exe: &[u8],
    ) -> Option<(EntryId, Seen, MatchReason)> {
        if stat.is_dead() {
            return None;
        }
        let mut argv = None;
        let (idx, why) = match self.by_exe.get(strip_deleted(exe)) {
            Some(targets) => {
                // The command line tells only a symlink's name apart.
                let argv: &[Vec<u8>] = if targets.iter().any(|t| t.alias.is_some()) {
                    argv.get_or_insert_with(|| proc::cmdline(tgid).unwrap_or_default())
                } else {
                    &[]
                };
                pick_target(targets, stat.comm, argv)?
            }
            None => {
                let by_argv = (!self.by_script.is_empty() || !self.by_cmdline.is_empty())
                    .then(|| {
                        let argv =
                            argv.get_or_insert_with(|| proc::cmdline(tgid).unwrap_or_default());
                        self.match_argv(exe, argv)
                    })
                    .flatten();
                match by_argv {
                    Some(found) => found,
                    None => (self.match_cgroup(tgid)?, MatchReason::Cgroup),
                }
            }
        };
        Some((idx, seen_of(tgid, stat)?, why))
    }

    /// The unit or cgroup entry whose cgroup (or one below it) the process is in.
    fn match_cgroup(&self, tgid: u32) -> Option<EntryId> {
        if self.by_cgroup.is_empty() {
            return None;
        }
        let mine = proc::cgroup_v2(tgid)?;
        self.by_cgroup
            .iter()
            .find(|(_, c)| {
                mine == *c
                    || (mine.starts_with(c.as_str()) && mine.as_bytes().get(c.len()) == Some(&b'/'))
            })
            .map(|(i, _)| *i)
    }

    /// Script and command-line rules (the executable matched no entry).
    fn match_argv(&self, exe: &[u8], argv: &[Vec<u8>]) -> Option<(EntryId, MatchReason)> {
        if !self.by_script.is_empty() && is_interpreter(exe) {
            let script = argv.iter().skip(1).find(|a| !a.starts_with(b"-"));
            if let Some(i) =
                script.and_then(|s| self.by_script.get(Path::new(OsStr::from_bytes(s))))
            {
                return Some((*i, MatchReason::Script));
            }
        }
        if !self.by_cmdline.is_empty() && !argv.is_empty() {
            let joined = join_argv(argv);
            return self
                .by_cmdline
                .iter()
                .find(|(_, p)| p.matches(&joined))
                .map(|(i, _)| (*i, MatchReason::Cmdline));
        }
        None
    }

    /// Whether process `tgid` still matches entry `entry`'s command-line
    /// pattern (a forked worker that retitled itself no longer does).
    /// Entries without one: always.
    pub fn still_matches(&self, entry: EntryId, tgid: u32) -> bool {
        let Some((_, pattern)) = self.by_cmdline.iter().find(|(i, _)| *i == entry) else {
            return true;
        };
        proc::cmdline(tgid).is_some_and(|argv| pattern.matches(&join_argv(&argv)))
    }

    /// Whether entry `entry` matches by command line (its instances must be
    /// looked at again, not only confirmed alive).
    pub fn by_cmdline(&self, entry: EntryId) -> bool {
        self.by_cmdline.iter().any(|(i, _)| *i == entry)
    }
}

/// The v2 cgroup (as `/proc/PID/cgroup` names it) of a unit or cgroup
/// entry: a unit's is systemd's ControlGroup when systemd runs, else
/// `/system.slice/UNIT`; a cgroup directory must be under the v2 mount.
fn cgroup_of(target: &Match) -> Result<String, String> {
    let mount = proc::cgroup2_mount()
        .ok_or("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")?;
    match target {
        Match::Cgroup(dir) => {
            let rel = dir.strip_prefix(&mount).map_err(|_| {
                format!(
                    "{} is not under the cgroup v2 mount {}",
                    dir.display(),
                    mount.display()
                )
            })?;
            let rel = rel.to_string_lossy();
            let rel = rel.trim_end_matches('/');
            Ok(format!("/{rel}"))
        }
        Match::Unit(unit) => {
            let from_systemd = libsystemd::daemon::booted()
                .then(|| {
                    std::process::Command::new("systemctl")
                        .args(["show", "--property=ControlGroup", "--value", unit])
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                        .filter(|c| c.starts_with('/'))
                })
                .flatten();
            Ok(from_systemd.unwrap_or_else(|| format!("/system.slice/{unit}")))
        }
        _ => Err("not a unit or cgroup entry".into()),
    }
}

/// Which of the entries naming one executable file a process belongs to:
/// one whose name it was started under, else one that names the file itself.
fn pick_target(
    targets: &[ExeTarget],
    comm: &[u8],
    argv: &[Vec<u8>],
) -> Option<(EntryId, MatchReason)> {
    let started_as = |alias: &[u8]| {
        comm == &alias[..alias.len().min(15)]
            || argv.first().is_some_and(|a| argv0_name(a) == alias)
    };
    targets
        .iter()
        .find(|t| t.alias.as_deref().is_some_and(started_as))
        .map(|t| (t.entry, MatchReason::StartedAs))
        .or_else(|| {
            targets
                .iter()
                .find(|t| t.alias.is_none())
                .map(|t| (t.entry, MatchReason::Executable))
        })
}

/// The program name in argv[0]: its file name, up to the first space (a
/// daemon that retitles itself writes `redis-server *:6379` there).
fn argv0_name(arg0: &[u8]) -> &[u8] {
    let word = arg0.split(|b| *b == b' ').next().unwrap_or(arg0);
    word.rsplit(|b| *b == b'/').next().unwrap_or(word)
}

fn join_argv(argv: &[Vec<u8>]) -> String {
    argv.iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/proc/PID/exe` of a replaced binary reads `PATH (deleted)`.
fn strip_deleted(exe: &[u8]) -> &[u8] {
    exe.strip_suffix(b" (deleted)").unwrap_or(exe)
}

/// The pid a pidfile holds now (its first word); `None` for a missing,
/// empty or odd file.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    // Non-blocking: a FIFO planted at the path must not stall monitoring.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// A script starts with `#!`; its processes are interpreters running it.
/// Only a regular file is read, opened without blocking: anyone who can
/// replace a watched file with a FIFO would otherwise stop the thread that
/// resolves paths (and with it all monitoring) until a writer came.
fn is_script(path: &Path) -> bool {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 2];
    (&file).read_exact(&mut head).is_ok_and(|()| &head == b"#!")
}

#[cfg(test)]
mod tests;
