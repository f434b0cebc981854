//! Children of members in their first moments. A watched process that
//! forks thousands of short-lived children a second (a pre-forking server
//! recycling workers, a script in a loop) would otherwise cost a member
//! added and removed, an exit watch, a kernel-filter update and a state
//! save for each, all for a process that is gone a millisecond later.
//! A child is handed to the monitor only once it has lived [`AGE`], or at
//! once when anything could make it matter sooner: a member's exit (it may
//! be the one left running), a scan, too many waiting.
//!
//! It owns the waiting children; what they mean is the monitor's.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use crate::facts::{EntryId, Seen};

/// How long a child waits before it is a member.
pub const AGE: Duration = Duration::from_millis(50);
/// Children waiting at most; past it the oldest are handed over.
const MOST: usize = 4096;

#[derive(Default)]
pub struct Young {
    /// Birth order (tgid, start ticks); entries of children gone since are
    /// skipped when they come up.
    born: VecDeque<(u32, u64, Instant)>,
    waiting: HashMap<u32, (EntryId, Seen)>,
    /// Waiting children that have forked waiting children themselves (a
    /// daemon's second fork): when one goes, its children are its
    /// parent's, so lineage survives it.
    parents: HashSet<u32>,
}

impl Young {
    /// A member forked `child` (of `entry`) at `now`; returns the children
    /// to hand over at once (the oldest, past [`MOST`]).
    pub fn born(&mut self, entry: EntryId, child: Seen, now: Instant) -> Vec<(EntryId, Seen)> {
        if self.waiting.contains_key(&child.ppid) {
            self.parents.insert(child.ppid);
        }
        self.waiting.insert(child.tgid, (entry, child));
        self.born.push_back((child.tgid, child.start_ticks, now));
        let mut over = Vec::new();
        while self.waiting.len() > MOST {
            match self.pop() {
                Some(c) => over.push(c),
                None => break,
            }
        }
        over
    }

    /// `tgid` exited, or exec'd another program: if it was waiting, it is
    /// forgotten (it never was a member), and true is returned.
    pub fn gone(&mut self, tgid: u32) -> bool {
        let Some((_, seen)) = self.waiting.remove(&tgid) else {
            return false;
        };
        if self.parents.remove(&tgid) {
            for (_, child) in self.waiting.values_mut() {
                if child.ppid == tgid {
                    child.ppid = seen.ppid;
                }
            }
        }
        true
    }

    /// The entry of `tgid` if it is waiting: its own children are the
    /// entry's too (a daemon's second fork).
    pub fn entry_of(&self, tgid: u32) -> Option<EntryId> {
        self.waiting.get(&tgid).map(|(entry, _)| *entry)
    }

    /// When the oldest waiting child is due.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.skip_gone();
        self.born.front().map(|(_, _, at)| *at + AGE)
    }

    /// The children that have lived [`AGE`] by `now`, oldest first.
    pub fn grown(&mut self, now: Instant) -> Vec<(EntryId, Seen)> {
        let mut out = Vec::new();
        while self.next_due().is_some_and(|due| due <= now) {
            out.extend(self.pop());
        }
        out
    }

    /// Every waiting child, oldest first.
    pub fn all(&mut self) -> Vec<(EntryId, Seen)> {
        let mut out = Vec::with_capacity(self.waiting.len());
        while let Some(c) = self.pop() {
            out.push(c);
        }
        self.born.clear();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn pop(&mut self) -> Option<(EntryId, Seen)> {
        while let Some((tgid, start, _)) = self.born.pop_front() {
            if self
                .waiting
                .get(&tgid)
                .is_some_and(|(_, s)| s.start_ticks == start)
            {
                // A member now: its children's lineage is the monitor's.
                self.parents.remove(&tgid);
                return self.waiting.remove(&tgid);
            }
        }
        None
    }

    /// Drops birth records of children no longer waiting from the front.
    fn skip_gone(&mut self) {
        while let Some((tgid, start, _)) = self.born.front() {
            let waiting = self
                .waiting
                .get(tgid)
                .is_some_and(|(_, s)| s.start_ticks == *start);
            if waiting {
                return;
            }
            self.born.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(tgid: u32) -> Seen {
        Seen {
            tgid,
            start_ticks: u64::from(tgid),
            comm: [0; 16],
            ppid: 1,
            uid: 0,
        }
    }

    #[test]
    fn short_lives_are_forgotten_and_long_ones_handed_over_in_order() {
        let mut y = Young::default();
        let t0 = Instant::now();
        assert!(y.born(EntryId(0), child(10), t0).is_empty());
        assert!(y.born(EntryId(0), child(11), t0 + AGE / 2).is_empty());
        assert!(y.gone(10));
        assert!(!y.gone(10));
        assert_eq!(y.next_due(), Some(t0 + AGE / 2 + AGE));
        assert!(y.grown(t0 + AGE).is_empty());
        let grown = y.grown(t0 + 2 * AGE);
        assert_eq!(grown.iter().map(|(_, s)| s.tgid).collect::<Vec<_>>(), [11]);
        assert!(y.is_empty());
        assert_eq!(y.next_due(), None);
    }

    #[test]
    fn a_waiting_child_that_goes_leaves_its_children_to_its_parent() {
        let mut y = Young::default();
        let t0 = Instant::now();
        y.born(EntryId(0), child(10), t0);
        y.born(
            EntryId(0),
            Seen {
                ppid: 10,
                ..child(11)
            },
            t0,
        );
        assert_eq!(y.entry_of(10), Some(EntryId(0)));
        assert!(y.gone(10));
        let all = y.all();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].1.tgid, all[0].1.ppid), (11, 1));
    }

    #[test]
    fn too_many_waiting_hands_over_the_oldest() {
        let mut y = Young::default();
        let t0 = Instant::now();
        let mut over = Vec::new();
        for tgid in 0..(MOST as u32 + 3) {
            over.extend(y.born(EntryId(0), child(tgid + 1), t0));
        }
        assert_eq!(
            over.iter().map(|(_, s)| s.tgid).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(y.all().len(), MOST);
        assert!(y.is_empty());
    }
}
