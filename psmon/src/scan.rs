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
        !self.by_cmdline.is_empty() || self.scripts || self.comms.contains(comm.as_bytes())
    }

    /// The entry process `tgid` belongs to, with its identity; `None` for
    /// other processes, zombies and processes already gone.
    pub fn classify(&self, tgid: u32) -> Option<(usize, Instance)> {
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
        let entry = procfs::read_entry(tgid)?;
        if entry.is_dead() {
            return None;
        }
        Some((
            idx,
            Instance {
                tgid,
                start_ticks: entry.start.ticks(),
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
    pub fn scan(&self, entries: usize) -> Vec<Vec<Instance>> {
        let mut found = vec![Vec::new(); entries];
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for d in dir.filter_map(Result::ok) {
            let Some(tgid) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((i, inst)) = self.classify(tgid)
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
        let found = m.scan(1);
        let pid = std::process::id();
        assert!(found[0].iter().any(|i| i.tgid == pid), "{found:?}");
    }
}
