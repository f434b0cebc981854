//! The reconciliation scan: every process (or, when the source proves
//! what changed, only what exec'd) matched against the entries, the
//! members confirmed, and what one scan leaves to the next.

use std::collections::{HashMap, HashSet};

use super::{Matcher, comm_key};
use crate::{
    facts::{Known, Seen},
    proc::{self, ExeReader, pread_stat, read_stat},
};

/// What one scan leaves to the next: the stat files of known members, kept
/// open so that confirming each costs one `pread` rather than open, read
/// and close; and the processes found to match nothing.
#[derive(Default)]
pub struct ScanState {
    files: HashMap<u32, (u64, std::fs::File)>,
    /// Processes that matched no entry, nor could (kernel threads, zombies).
    /// A process changes program only by exec: as long as none of them
    /// exec'd, they still match nothing and need not be read again.
    pub(super) cleared: HashSet<u32>,
    exe: Option<ExeReader>,
}

/// What the caller knows about execs since the previous scan.
#[derive(Clone, Debug, Default)]
pub struct Unchanged {
    /// The processes found to match nothing last time still do, except
    /// those in `execd`. False: read every process.
    pub cleared_still_hold: bool,
    /// Processes that exec'd since the previous scan began.
    pub execd: Vec<u32>,
    /// Every process must be looked at: `execd` may not name every process
    /// that exec'd. False (with `cleared_still_hold`): a process not named
    /// there runs what it ran at the last scan, or is a fork of one that
    /// does, so only members and `execd` are read.
    pub walk: bool,
}

impl Matcher {
    /// Every running process matching every entry: `result[i]` for entry `i`.
    ///
    /// A known instance that is still the same process is confirmed by one
    /// read of its stat file (none at all with a pidfd). Every other process
    /// costs one `readlink` of its executable, which rules out nearly all of
    /// them exactly; only candidates cost the reads of `stat` and `cmdline`.
    ///
    /// With `unchanged` saying no exec happened, processes the last scan
    /// found to match nothing are not read again (never so with a
    /// command-line entry: a process may retitle itself into matching).
    pub fn scan(
        &self,
        entries: usize,
        known: &Known,
        state: &mut ScanState,
        unchanged: &Unchanged,
    ) -> Vec<Vec<Seen>> {
        let files = &mut *state;
        // A process may retitle itself into a cmdline pattern, or be moved
        // into a cgroup, without an exec.
        let skip_none = !unchanged.cleared_still_hold
            || !self.by_cmdline.is_empty()
            || !self.by_cgroup.is_empty();
        if skip_none {
            files.cleared.clear();
        }
        let walk = skip_none || unchanged.walk;
        for tgid in &unchanged.execd {
            files.cleared.remove(tgid);
        }
        let mut cleared = HashSet::with_capacity(match walk {
            true => files.cleared.len(),
            false => unchanged.execd.len(),
        });
        let mut found = vec![Vec::new(); entries];
        let mut buf = Vec::with_capacity(4096);
        files.files.retain(|tgid, (start, _)| {
            known
                .get(tgid)
                .is_some_and(|k| k.start_ticks == *start && !k.exit_watched)
        });
        // Known instances that are zombies now: dead, and not to be matched again.
        let mut zombies = HashSet::new();
        for (tgid, k) in known {
            let (start, comm, i) = (&k.start_ticks, &k.comm, &k.entry);
            if k.exit_watched {
                if let Some(slot) = found.get_mut(i.index()) {
                    slot.push(Seen {
                        tgid: *tgid,
                        start_ticks: *start,
                        comm: *comm,
                        ppid: 0,
                        uid: 0,
                    });
                }
                continue;
            }
            let file = match files.files.get(tgid) {
                Some((_, f)) => f,
                None => match proc::open_stat(*tgid) {
                    Ok(f) => &files.files.entry(*tgid).or_insert((*start, f)).1,
                    Err(_) => continue, // gone
                },
            };
            let Some(stat) = pread_stat(file, &mut buf) else {
                files.files.remove(tgid);
                continue;
            };
            let same = stat.start_ticks == *start && comm_key(stat.comm) == *comm;
            if same && !stat.is_dead() {
                if let Some(slot) = found.get_mut(i.index()) {
                    slot.push(Seen {
                        tgid: *tgid,
                        start_ticks: *start,
                        comm: *comm,
                        ppid: stat.ppid,
                        uid: 0,
                    });
                }
            } else if same {
                zombies.insert(*tgid);
            } else {
                // It exec'd something else or renamed itself: classify it afresh below.
                files.files.remove(tgid);
            }
        }
        let exe = files.exe.get_or_insert_with(ExeReader::default);
        let tgids: Box<dyn Iterator<Item = u32>> = match walk {
            true => Box::new(proc::tgids()),
            false => Box::new(unchanged.execd.iter().copied()),
        };
        for tgid in tgids {
            let confirmed = known.get(&tgid).is_some_and(|k| k.exit_watched)
                || files.files.contains_key(&tgid)
                || zombies.contains(&tgid);
            if confirmed {
                continue;
            }
            if files.cleared.contains(&tgid) {
                cleared.insert(tgid);
                continue;
            }
            // Kernel threads and zombies have no executable: never ours.
            let Some(path) = exe.read(tgid) else {
                cleared.insert(tgid);
                continue;
            };
            if !self.exe_may_match(path) {
                cleared.insert(tgid);
                continue;
            }
            let Some(stat) = read_stat(tgid, &mut buf) else {
                continue;
            };
            if let Some((i, inst, _)) = self.classify_stat(tgid, &stat, path)
                && let Some(slot) = found.get_mut(i.index())
            {
                slot.push(inst);
            }
        }
        if walk {
            // Only processes still there: a pid that comes back is a new process.
            files.cleared = cleared;
        } else {
            // A pid that comes back without an exec is a fork of a process
            // that matched nothing: it matches nothing either.
            files.cleared.extend(cleared);
        }
        found
    }
}
