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
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{monitor::EntryId, scan::Seen};

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
}

impl Young {
    /// A member forked `child` (of `entry`) at `now`; returns the children
    /// to hand over at once (the oldest, past [`MOST`]).
    pub fn born(&mut self, entry: EntryId, child: Seen, now: Instant) -> Vec<(EntryId, Seen)> {
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
        self.waiting.remove(&tgid).is_some()
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
