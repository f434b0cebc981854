//! The order in which what the source says reaches the monitor while
//! processes are being classified. A classification (what an exec'd or
//! forked process matches) reads `/proc` on the blocking pool; what
//! arrives about that process meanwhile waits behind it:
//!
//! - its exit, and the exit of another member of the same entry that
//!   arrived after the classification began (a forked child that exec'd
//!   before the exit must be known not to be an instance first, or it
//!   would keep the entry up in its place) — never behind one begun after
//!   the exit, so a storm of new classifications cannot hold it for ever;
//! - its forks (a daemon forks its real master a moment after its exec,
//!   and that child is what stays when it exits), a bounded number;
//! - what its notify socket said, a bounded number.
//!
//! Plain state, no I/O: the supervisor asks before it feeds, and feeds
//! what comes back once a classification is in.

use std::collections::HashMap;

use crate::{event::Process, monitor::Input};

/// Forks held behind one exec's classification; past this, a scan finds
/// what was dropped (a fork bomb stays bounded).
const MAX_FORKS_BEHIND: usize = 64;

/// Notify messages held behind one classification (a stranger's flood
/// must not grow psmon).
const MAX_HELD_INPUTS: usize = 16;

#[derive(Default)]
pub(super) struct Classifying {
    /// Processes whose classification is under way: how many, and the
    /// inputs about them held until it is in.
    held: HashMap<u32, (u32, Vec<Input>)>,
    /// Classifications begun so far: when each held process's began, and
    /// when deferred exits arrived, in that count.
    begun: u64,
    held_since: HashMap<u32, u64>,
    exit_arrived: HashMap<u32, u64>,
    forks_behind: HashMap<u32, Vec<Process>>,
}

/// What a finished classification releases, in the order it arrived.
pub(super) struct Released {
    pub forks: Vec<Process>,
    pub inputs: Vec<Input>,
}

/// Where a fork of a process being classified went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fork {
    /// Its parent is not being classified: decide now.
    Now(Process),
    /// Held behind the parent's classification.
    Held,
    /// Dropped (too many behind one exec): a full scan must find it.
    Dropped,
}

impl Classifying {
    /// A classification of `tgid` begins.
    pub fn begin(&mut self, tgid: u32) {
        self.held.entry(tgid).or_default().0 += 1;
        self.begun += 1;
        self.held_since.entry(tgid).or_insert(self.begun - 1);
    }

    /// A classification of `tgid` is in: once it was the last one under
    /// way for `tgid`, what waited behind it, to be handled now.
    pub fn finished(&mut self, tgid: u32) -> Option<Released> {
        let (n, _) = self.held.get_mut(&tgid)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        let (_, inputs) = self.held.remove(&tgid)?;
        self.held_since.remove(&tgid);
        Some(Released {
            forks: self.forks_behind.remove(&tgid).unwrap_or_default(),
            inputs,
        })
    }

    #[cfg(test)]
    fn is_classifying(&self, tgid: u32) -> bool {
        self.held.contains_key(&tgid)
    }

    /// The exit of `tgid`: `Some` to feed it now; `None` when it waits
    /// behind a classification, its own or that of a process `same_entry`
    /// says is of its entry, begun before the exit arrived. An exit held
    /// once is asked about again when released, and waits for the next.
    pub fn exit(
        &mut self,
        tgid: u32,
        input: Input,
        same_entry: impl Fn(u32) -> bool,
    ) -> Option<Input> {
        let arrived = *self.exit_arrived.entry(tgid).or_insert(self.begun);
        let behind = if self.held.contains_key(&tgid) {
            Some(tgid)
        } else {
            self.held
                .keys()
                .copied()
                .find(|t| self.held_since.get(t).is_some_and(|s| *s < arrived) && same_entry(*t))
        };
        match behind.and_then(|t| self.held.get_mut(&t)) {
            Some((_, inputs)) => {
                inputs.push(input);
                None
            }
            None => {
                self.exit_arrived.remove(&tgid);
                Some(input)
            }
        }
    }

    /// Any other input about `tgid`: `Some` to feed it now, `None` when it
    /// waits behind `tgid`'s classification.
    pub fn after_classification(&mut self, tgid: u32, input: Input) -> Option<Input> {
        match self.held.get_mut(&tgid) {
            Some((_, inputs)) => {
                inputs.push(input);
                None
            }
            None => Some(input),
        }
    }

    /// A notify message from `tgid`: held (a few at most) while `tgid` is
    /// being classified, else `Some` to classify it now.
    pub fn notify(&mut self, tgid: u32, input: Input) -> Option<Input> {
        match self.held.get_mut(&tgid) {
            Some((_, inputs)) => {
                if inputs.len() < MAX_HELD_INPUTS {
                    inputs.push(input);
                }
                None
            }
            None => Some(input),
        }
    }

    /// A fork whose parent matched nothing yet.
    pub fn fork(&mut self, child: Process) -> Fork {
        if !self.held.contains_key(&child.ppid) {
            return Fork::Now(child);
        }
        let behind = self.forks_behind.entry(child.ppid).or_default();
        if behind.len() < MAX_FORKS_BEHIND {
            behind.push(child);
            Fork::Held
        } else {
            Fork::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExitStatus;

    fn exited(tgid: u32) -> Input {
        Input::Exited {
            tgid,
            start: None,
            status: ExitStatus::Code(0),
        }
    }

    fn tgid_of(input: &Input) -> u32 {
        match input {
            Input::Exited { tgid, .. } => *tgid,
            other => panic!("{other:?}"),
        }
    }

    fn child(tgid: u32, ppid: u32) -> Process {
        Process {
            tgid,
            pid: tgid,
            ppid,
            start: None,
            comm: String::new(),
            path: None,
        }
    }

    /// An exit that arrives while its own exec is being classified waits
    /// for it, and comes out when it is in.
    #[test]
    fn an_exit_waits_for_its_own_classification() {
        let mut o = Classifying::default();
        o.begin(100);
        assert!(o.exit(100, exited(100), |_| false).is_none());
        let released = o.finished(100).expect("released");
        assert_eq!(
            released.inputs.iter().map(tgid_of).collect::<Vec<_>>(),
            [100]
        );
        // Asked again when released: nothing holds it now.
        assert!(o.exit(100, exited(100), |_| false).is_some());
    }

    /// A member's exit waits for the classification of another process of
    /// its entry begun before it arrived, not for one begun after.
    #[test]
    fn an_exit_waits_for_its_entrys_earlier_classifications_only() {
        let mut o = Classifying::default();
        o.begin(200);
        assert!(o.exit(100, exited(100), |t| t == 200).is_none());
        // Another classification of the entry begins after the exit came.
        o.begin(300);
        let released = o.finished(200).expect("released");
        let again = released.inputs.into_iter().next().unwrap();
        assert!(
            o.exit(100, again, |t| t == 300).is_some(),
            "not held behind one begun after it arrived"
        );
        // A process of another entry holds nothing.
        o.begin(400);
        assert!(o.exit(500, exited(500), |_| false).is_some());
    }

    /// Two classifications of one process: released only after both.
    #[test]
    fn released_after_the_last_classification() {
        let mut o = Classifying::default();
        o.begin(100);
        o.begin(100);
        assert!(o.after_classification(100, exited(100)).is_none());
        assert!(o.finished(100).is_none());
        assert!(o.is_classifying(100));
        assert_eq!(o.finished(100).unwrap().inputs.len(), 1);
        assert!(!o.is_classifying(100));
        assert!(o.finished(100).is_none());
    }

    /// Forks of a process being classified wait behind it, a bounded
    /// number; others are decided now.
    #[test]
    fn forks_wait_behind_their_parent_up_to_a_bound() {
        let mut o = Classifying::default();
        assert_eq!(o.fork(child(2, 1)), Fork::Now(child(2, 1)));
        o.begin(1);
        for i in 0..MAX_FORKS_BEHIND as u32 {
            assert_eq!(o.fork(child(10 + i, 1)), Fork::Held);
        }
        assert_eq!(o.fork(child(999, 1)), Fork::Dropped);
        let released = o.finished(1).unwrap();
        assert_eq!(released.forks.len(), MAX_FORKS_BEHIND);
        assert_eq!(released.forks[0].tgid, 10);
    }

    /// A stranger's notify flood behind a classification stays bounded.
    #[test]
    fn notify_messages_held_are_bounded() {
        let mut o = Classifying::default();
        o.begin(7);
        for _ in 0..100 {
            assert!(o.notify(7, exited(7)).is_none());
        }
        assert_eq!(o.finished(7).unwrap().inputs.len(), MAX_HELD_INPUTS);
        assert!(o.notify(7, exited(7)).is_some());
    }
}
