//! The flight recorder: for each watched entry, the recent process events
//! of its processes' trees (their children and their children's children:
//! fork, exec, exit), bounded by count and age. On a Down it is written out
//! with the cause, so that a post-mortem shows what the service did just
//! before it died (say, exec'd `/usr/bin/curl` three times, each exiting 7).
//!
//! With the ebpf source's kernel filter the tree's events reach psmon
//! anyway: a watched process's children are watched in the kernel.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    event::{EventKind, ExitStatus, ProcEvent},
    report::{duration, status},
};

/// Processes followed (members' descendants) at most, so that a fork bomb
/// under a watched process cannot grow psmon without bound.
const MAX_FOLLOWED: usize = 65_536;

/// One event of a tree.
#[derive(Clone, Debug)]
struct Record {
    /// `CLOCK_BOOTTIME` ns of the event.
    at: u64,
    text: String,
}

/// The flight recorders: for each entry, the last events of its
/// processes and their descendants, dumped when it goes Down.
pub struct Recorder {
    events: usize,
    window: Duration,
    /// Descendants of members followed: tgid → the entry's path.
    followed: HashMap<u32, PathBuf>,
    rings: HashMap<PathBuf, VecDeque<Record>>,
}

impl Recorder {
    /// Recorders of up to `events` events within `window` each.
    pub fn new(events: usize, window: Duration) -> Recorder {
        Recorder {
            events,
            window,
            followed: HashMap::new(),
            rings: HashMap::new(),
        }
    }

    /// New bounds, from a reload.
    pub fn set_limits(&mut self, events: usize, window: Duration) {
        self.events = events;
        self.window = window;
    }

    /// Records `event` if it is of a watched tree; `entry_of` says which
    /// entry's path a member belongs to.
    pub fn record(&mut self, event: &ProcEvent, entry_of: impl Fn(u32) -> Option<PathBuf>) {
        if self.events == 0 {
            return;
        }
        let Some(p) = event.process() else {
            return;
        };
        let owner = |tgid: u32, followed: &HashMap<u32, PathBuf>| {
            entry_of(tgid).or_else(|| followed.get(&tgid).cloned())
        };
        let (path, text) = match &event.kind {
            EventKind::Fork(_) => {
                let Some(path) = owner(p.ppid, &self.followed) else {
                    return;
                };
                if self.followed.len() < MAX_FOLLOWED {
                    self.followed.insert(p.tgid, path.clone());
                }
                (path, format!("fork   pid {} (parent {})", p.tgid, p.ppid))
            }
            EventKind::Exec(_) => {
                let Some(path) = owner(p.tgid, &self.followed) else {
                    return;
                };
                let exe = p
                    .path
                    .as_ref()
                    .map_or_else(|| format!("[{}]", p.comm), |x| x.display().to_string());
                (path, format!("exec   pid {} {exe}", p.tgid))
            }
            EventKind::Exit { status: s, .. } => {
                let followed = self.followed.remove(&p.tgid);
                let Some(path) = entry_of(p.tgid).or(followed) else {
                    return;
                };
                let lived = event
                    .lifetime()
                    .map(|d| format!(" after {}", duration(d)))
                    .unwrap_or_default();
                let how = match s {
                    ExitStatus::Code(c) => format!("exit code {c}"),
                    other => status(*other),
                };
                (
                    path,
                    format!("exit   pid {} '{}' {how}{lived}", p.tgid, p.comm),
                )
            }
            _ => return,
        };
        let ring = self.rings.entry(path).or_default();
        ring.push_back(Record {
            at: event.time.boot_ns,
            text,
        });
        while ring.len() > self.events {
            ring.pop_front();
        }
    }

    /// The entry's recent events, oldest first, each with how long before
    /// `now` (`CLOCK_BOOTTIME` ns) it happened; those older than the window
    /// are left out.
    pub fn recent(&self, path: &Path, now: u64) -> Vec<String> {
        let window = self.window.as_nanos() as u64;
        self.rings
            .get(path)
            .into_iter()
            .flatten()
            .filter(|r| now.saturating_sub(r.at) <= window)
            .map(|r| {
                let ago = Duration::from_nanos(now.saturating_sub(r.at));
                format!("-{:.3} s {}", ago.as_secs_f64(), r.text)
            })
            .collect()
    }

    /// Forgets entries no longer configured.
    pub fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        self.rings.retain(|p, _| keep(p));
        self.followed.retain(|_, p| keep(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventTime, Process, StartTime};

    fn event(kind: &str, tgid: u32, ppid: u32, at: u64) -> ProcEvent {
        let p = Process {
            tgid,
            pid: tgid,
            ppid,
            start: Some(StartTime::from_ns(at.saturating_sub(1000))),
            comm: "curl".into(),
            path: Some("/usr/bin/curl".into()),
        };
        let kind = match kind {
            "fork" => EventKind::Fork(p),
            "exec" => EventKind::Exec(p),
            _ => EventKind::Exit {
                process: p,
                status: ExitStatus::Code(7),
            },
        };
        let mut time = EventTime::now(None, None);
        time.boot_ns = at;
        ProcEvent::new(kind, time)
    }

    #[test]
    fn keeps_the_trees_recent_events_within_bounds() {
        let mut r = Recorder::new(4, Duration::from_secs(60));
        let member = |tgid| (tgid == 100).then(|| PathBuf::from("/srv/d"));
        let s = 1_000_000_000u64;
        // A child, a grandchild, and a stranger.
        r.record(&event("fork", 200, 100, 10 * s), member);
        r.record(&event("fork", 300, 200, 11 * s), member);
        r.record(&event("fork", 999, 1, 11 * s), member);
        r.record(&event("exec", 300, 200, 12 * s), member);
        r.record(&event("exit", 300, 200, 13 * s), member);
        let recent = r.recent(Path::new("/srv/d"), 14 * s);
        assert_eq!(recent.len(), 4, "{recent:?}");
        assert!(recent[0].contains("fork   pid 200"), "{recent:?}");
        assert!(recent[2].contains("exec   pid 300 /usr/bin/curl"));
        assert!(recent[3].contains("exit   pid 300 'curl' exit code 7"));
        assert!(recent[3].starts_with("-1.000 s"), "{recent:?}");
        // The fifth event pushes out the first; the window drops old ones.
        r.record(&event("exit", 200, 100, 14 * s), member);
        let recent = r.recent(Path::new("/srv/d"), 14 * s);
        assert!(recent[0].contains("fork   pid 300"), "{recent:?}");
        assert!(r.recent(Path::new("/srv/d"), 100 * s).is_empty());
        assert!(r.followed.is_empty(), "exited processes are not followed");
    }
}
