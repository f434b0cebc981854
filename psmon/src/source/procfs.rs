//! Reading `/proc`: the snapshot every source merges with its events, the
//! per-process lookups the netlink source needs, and the `poll` source, which
//! diffs snapshots into exec and exit events when nothing better is allowed.
//!
//! It does not decide what a process means to the monitor; it reports what
//! the kernel shows.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EventSink, SourceError};
use crate::event::{EventKind, EventTime, ExitStatus, ProcEvent, Process, StartTime};

/// `PF_EXITING` in `task_struct.flags` (`/proc/PID/stat` field 9): the
/// thread has entered `do_exit` and can never run user code again.
const PF_EXITING: u32 = 0x4;

/// One thread group as `/proc/PID/stat` shows it.
#[derive(Clone, Debug)]
pub struct ProcEntry {
    pub tgid: u32,
    pub ppid: u32,
    pub start: StartTime,
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 52: the wait status of a zombie, when the kernel shows it.
    pub exit_code: Option<i32>,
    pub num_threads: i64,
    pub flags: u32,
}

impl ProcEntry {
    /// The whole group has exited; only its parent's wait is pending. A
    /// leader that called `pthread_exit` also shows `Z` while its other
    /// threads run, so the thread count must have dropped to one as well.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x') && self.num_threads <= 1
    }

    fn from_stat(stat: procfs::process::Stat) -> Self {
        ProcEntry {
            tgid: stat.pid as u32,
            ppid: stat.ppid as u32,
            start: StartTime::from_ticks(stat.starttime),
            comm: stat.comm,
            state: stat.state,
            exit_code: stat.exit_code,
            num_threads: stat.num_threads,
            flags: stat.flags,
        }
    }
}

/// `/proc/self/ns/pid` inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Whether psmon runs in the initial PID namespace, whose pids the kernel's
/// event interfaces (the proc connector, BPF programs) report.
pub fn in_init_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

/// Reads `/proc/TGID/stat`; `None` when the process is gone.
pub fn read_entry(tgid: u32) -> Option<ProcEntry> {
    let process = procfs::process::Process::new(tgid as i32).ok()?;
    process.stat().ok().map(ProcEntry::from_stat)
}

/// `/proc/TGID/exe`, when it can be read (not for zombies or kernel threads).
pub fn exe(tgid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{tgid}/exe")).ok()
}

/// Every thread group now in `/proc`, zombies included.
pub fn snapshot() -> Vec<ProcEntry> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .map(ProcEntry::from_stat)
        .collect()
}

/// True when no thread of the group can run again: every thread still listed
/// has entered `do_exit` (or the group is gone, `leader` being `None`). Used
/// where the kernel reports thread exits one by one (the proc connector).
pub fn group_exiting(tgid: u32, leader: Option<&ProcEntry>) -> bool {
    let Some(leader) = leader else {
        return true;
    };
    let leader_done = leader.is_dead() || leader.flags & PF_EXITING != 0;
    if !leader_done {
        return false;
    }
    if leader.num_threads <= 1 {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        match parse_state_and_flags(&stat) {
            Some((state, flags)) => matches!(state, 'Z' | 'X' | 'x') || flags & PF_EXITING != 0,
            None => true, // vanished while we looked: released, so exited
        }
    })
}

/// Fields 3 (state) and 9 (flags) of a stat line; `comm` may hold spaces and
/// parentheses, so fields are counted after the last `)`.
fn parse_state_and_flags(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// The `poll` source: scans `/proc` every `interval` and reports thread
/// groups that appeared as exec and those that vanished or became zombies as
/// exit. A zombie's exit status comes from `/proc/PID/stat` field 52; a
/// group already reaped is reported with [`ExitStatus::Unknown`].
pub struct PollSource {
    pub interval: Duration,
}

struct Seen {
    start: StartTime,
    ppid: u32,
    comm: String,
    path: Option<PathBuf>,
    /// Already reported as exited (a zombie waiting to be reaped).
    dead: bool,
}

impl PollSource {
    pub async fn run(
        self,
        tx: mpsc::Sender<ProcEvent>,
        token: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut sink = EventSink::new(tx);
        let mut seen: HashMap<u32, Seen> = HashMap::new();
        let mut first = true;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            if !sink.flush() {
                return Ok(());
            }
            let known: HashMap<u32, StartTime> =
                seen.iter().map(|(tgid, s)| (*tgid, s.start)).collect();
            let (entries, paths) = tokio::task::spawn_blocking(move || {
                let entries = snapshot();
                // Read exe only for groups not seen before: it is the costly part.
                let paths: HashMap<u32, PathBuf> = entries
                    .iter()
                    .filter(|e| !e.is_dead() && known.get(&e.tgid) != Some(&e.start))
                    .filter_map(|e| exe(e.tgid).map(|p| (e.tgid, p)))
                    .collect();
                (entries, paths)
            })
            .await
            .map_err(|e| SourceError::Task { source: e })?;
            let events = diff(&mut seen, entries, paths, first);
            first = false;
            for event in events {
                if !sink.send(event) {
                    return Ok(());
                }
            }
        }
    }
}

/// Updates `seen` from a new snapshot and returns the events between them.
/// The first snapshot only fills `seen` (what already runs is not news),
/// except for zombies, whose exits are reported.
fn diff(
    seen: &mut HashMap<u32, Seen>,
    entries: Vec<ProcEntry>,
    mut paths: HashMap<u32, PathBuf>,
    first: bool,
) -> Vec<ProcEvent> {
    let mut events = Vec::new();
    let mut present: HashMap<u32, ProcEntry> = HashMap::with_capacity(entries.len());
    for e in entries {
        present.insert(e.tgid, e);
    }
    let time = EventTime::now(None, None);
    let process_of = |tgid: u32, s: &Seen| Process {
        tgid,
        pid: tgid,
        ppid: s.ppid,
        start: Some(s.start),
        comm: s.comm.clone(),
        path: s.path.clone(),
    };
    let status_of = |e: &ProcEntry| {
        e.exit_code.map_or(ExitStatus::Unknown, |c| {
            ExitStatus::from_wait_status(c as u32)
        })
    };
    seen.retain(|tgid, s| {
        let now = present.get(tgid).filter(|e| e.start == s.start);
        if !s.dead {
            let status = now.map_or(ExitStatus::Unknown, status_of);
            if now.is_none_or(ProcEntry::is_dead) {
                let process = process_of(*tgid, s);
                events.push(ProcEvent::new(EventKind::Exit { process, status }, time));
                s.dead = true;
            }
        }
        // Gone or replaced by a new process with the same pid: forget it.
        now.is_some()
    });
    for (tgid, e) in present {
        if seen.contains_key(&tgid) {
            continue;
        }
        let entry = Seen {
            start: e.start,
            ppid: e.ppid,
            comm: e.comm.clone(),
            path: paths.remove(&tgid),
            dead: e.is_dead(),
        };
        // The first scan is a baseline: what runs is not news, but a zombie
        // died around start-up and its exit has been reported by no one.
        if !first || e.is_dead() {
            let process = process_of(tgid, &entry);
            let kind = if e.is_dead() {
                // Born and died between two scans: all that is left is its status.
                EventKind::Exit {
                    process,
                    status: status_of(&e),
                }
            } else {
                EventKind::Exec(process)
            };
            events.push(ProcEvent::new(kind, time));
        }
        seen.insert(tgid, entry);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tgid: u32, ticks: u64, state: char, exit_code: Option<i32>) -> ProcEntry {
        ProcEntry {
            tgid,
            ppid: 1,
            start: StartTime::from_ticks(ticks),
            comm: format!("p{tgid}"),
            state,
            exit_code,
            num_threads: 1,
            flags: 0,
        }
    }

    fn kinds(events: &[ProcEvent]) -> Vec<(String, u32)> {
        let mut v: Vec<_> = events
            .iter()
            .map(|e| (e.name().to_string(), e.process().unwrap().tgid))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn first_snapshot_reports_only_zombies() {
        let mut seen = HashMap::new();
        let start = vec![entry(10, 1, 'S', None), entry(11, 1, 'Z', Some(9))];
        let events = diff(&mut seen, start, HashMap::new(), true);
        assert_eq!(kinds(&events), vec![("exit".into(), 11)]);
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn reports_new_gone_zombie_and_reused_pids() {
        let mut seen = HashMap::new();
        let start = vec![
            entry(10, 1, 'S', None),
            entry(11, 1, 'S', None),
            entry(12, 1, 'S', None),
        ];
        diff(&mut seen, start, HashMap::new(), true);
        let next = vec![
            entry(11, 1, 'Z', Some(7 << 8)), // zombie with status
            entry(12, 5, 'S', None),         // pid reused by a new process
            entry(13, 6, 'R', None),         // new
            entry(14, 7, 'Z', Some(9)),      // born and died between scans
        ];
        let events = diff(&mut seen, next, HashMap::new(), false);
        assert_eq!(
            kinds(&events),
            vec![
                ("exec".into(), 12),
                ("exec".into(), 13),
                ("exit".into(), 10),
                ("exit".into(), 11),
                ("exit".into(), 12),
                ("exit".into(), 14),
            ]
        );
        let zombie = events
            .iter()
            .find(|e| e.name() == "exit" && e.process().unwrap().tgid == 11)
            .unwrap();
        assert!(matches!(
            zombie.kind,
            EventKind::Exit {
                status: ExitStatus::Code(7),
                ..
            }
        ));
        // A zombie stays in /proc until reaped: it is not reported again.
        let again = diff(
            &mut seen,
            vec![
                entry(11, 1, 'Z', Some(7 << 8)),
                entry(12, 5, 'S', None),
                entry(13, 6, 'R', None),
                entry(14, 7, 'Z', Some(9)),
            ],
            HashMap::new(),
            false,
        );
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194564 0 0 0 0";
        assert_eq!(parse_state_and_flags(line), Some(('S', 4194564)));
    }
}
