//! The `poll` source, for when nothing better is allowed: diffs `/proc`
//! snapshots into exec and exit events.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EventSink, SourceError};
use crate::{
    event::{EventKind, EventTime, ExitStatus, ProcEvent, Process, StartTime},
    proc::{ProcEntry, exe, snapshot},
};

/// The `poll` source: scans `/proc` every `interval` and reports thread
/// groups that appeared as exec and those that vanished or became zombies as
/// exit. A zombie's exit status comes from `/proc/PID/stat` field 52; a
/// group already reaped is reported with [`ExitStatus::Unknown`].
pub struct PollSource {
    /// Between two looks at `/proc`.
    pub interval: Duration,
}

struct Polled {
    start: StartTime,
    ppid: u32,
    comm: String,
    path: Option<PathBuf>,
    /// Already reported as exited (a zombie waiting to be reaped).
    dead: bool,
}

impl PollSource {
    /// Looks at `/proc` every interval and reports what changed into `tx`
    /// until `token` is cancelled.
    pub async fn run(
        self,
        tx: mpsc::Sender<ProcEvent>,
        token: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut sink = EventSink::new(tx);
        let mut seen: HashMap<u32, Polled> = HashMap::new();
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
            let known: HashMap<u32, (StartTime, String)> = seen
                .iter()
                .map(|(tgid, s)| (*tgid, (s.start, s.comm.clone())))
                .collect();
            let (entries, paths) = tokio::task::spawn_blocking(move || {
                let entries = snapshot();
                // Read exe only for groups not seen before, or renamed by an
                // exec: it is the costly part.
                let paths: HashMap<u32, PathBuf> = entries
                    .iter()
                    .filter(|e| {
                        !e.is_dead()
                            && known
                                .get(&e.tgid)
                                .is_none_or(|(start, comm)| *start != e.start || *comm != e.comm)
                    })
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
    seen: &mut HashMap<u32, Polled>,
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
    let process_of = |tgid: u32, s: &Polled| Process {
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
        // Same process, another name: it exec'd since the last scan (the
        // name is all polling can see of an exec that keeps the pid).
        if let Some(e) = now
            && !s.dead
            && !e.is_dead()
            && e.comm != s.comm
        {
            s.comm = e.comm.clone();
            s.path = paths.remove(tgid);
            events.push(ProcEvent::new(EventKind::Exec(process_of(*tgid, s)), time));
        }
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
        let entry = Polled {
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
    use std::path::Path;

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

    /// An exec that keeps the pid shows as a new name: reported as exec.
    #[test]
    fn a_renamed_process_exec_d() {
        let mut seen = HashMap::new();
        diff(
            &mut seen,
            vec![entry(10, 1, 'S', None)],
            HashMap::new(),
            true,
        );
        let mut renamed = entry(10, 1, 'S', None);
        renamed.comm = "victim".into();
        let paths = HashMap::from([(10, PathBuf::from("/opt/victim"))]);
        let events = diff(&mut seen, vec![renamed.clone()], paths, false);
        assert_eq!(kinds(&events), vec![("exec".into(), 10)]);
        let p = events[0].process().unwrap();
        assert_eq!(
            (p.comm.as_str(), p.path.as_deref()),
            ("victim", Some(Path::new("/opt/victim")))
        );
        assert!(diff(&mut seen, vec![renamed], HashMap::new(), false).is_empty());
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
}
