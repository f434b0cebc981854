//! What the monitor saves, taken without stopping it.
//!
//! Serialising 10,000 entries and their processes takes about 10 ms; done
//! on the event thread it held every event behind it (a kill landing just
//! after an Up waited for the save that Up caused). The monitor instead
//! hands over a [`Snapshot`]: its entries are shared, not copied
//! ([`Watches`] keeps each behind an `Arc` and copies one only when it
//! changes while a snapshot still holds it), so taking one costs a
//! reference count per entry and a copy of the member table, and the
//! state file's writer serialises it on its own thread.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeSeq};

use super::{GroupWatch, LeftConstraint, Member, Monitor, Watch};
use crate::{clock::Time, facts::Cause, facts::EntryId};

/// The entries' state, in [`EntryId`] order, each shared with the
/// snapshots that hold it and copied when it changes under one.
#[derive(Clone, Debug, Default)]
pub(super) struct Watches(Vec<Arc<Watch>>);

impl Watches {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, i: usize) -> Option<&Watch> {
        self.0.get(i).map(|w| &**w)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Watch> {
        self.0.get_mut(i).map(Arc::make_mut)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Watch> {
        self.0.iter().map(|w| &**w)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Watch> {
        self.0.iter_mut().map(Arc::make_mut)
    }

    pub fn push(&mut self, w: Watch) {
        self.0.push(Arc::new(w));
    }

    /// How many entries are the same (not copied since) in both.
    #[cfg(test)]
    pub fn shared_with(&self, other: &Watches) -> usize {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }

    /// All of them, leaving none.
    pub fn take_all(&mut self) -> impl Iterator<Item = Watch> + use<> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(Arc::unwrap_or_clone)
    }
}

impl std::ops::Index<usize> for Watches {
    type Output = Watch;
    fn index(&self, i: usize) -> &Watch {
        &self.0[i]
    }
}

impl std::ops::IndexMut<usize> for Watches {
    fn index_mut(&mut self, i: usize) -> &mut Watch {
        Arc::make_mut(&mut self.0[i])
    }
}

impl Serialize for Watches {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for w in &self.0 {
            seq.serialize_element(&**w)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Watches {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = Vec::<Watch>::deserialize(d)?;
        Ok(Watches(all.into_iter().map(Arc::new).collect()))
    }
}

/// The monitor's saved fields as they were when it was taken; written by
/// a [`SnapshotWriter`], it loads as a monitor.
pub struct Snapshot {
    pub(super) watches: Watches,
    rest: Rest,
}

/// The saved fields but the entries.
#[derive(Serialize)]
struct Rest {
    constraints: Vec<LeftConstraint>,
    members: HashMap<u32, Member>,
    gone: HashMap<u32, (u64, Time)>,
    missed: HashMap<u32, (u64, Time)>,
    waiting: BTreeSet<EntryId>,
    pidfds: bool,
    exit_lag: Duration,
    generation: u64,
    causes: HashMap<u32, Cause>,
    groups: Vec<GroupWatch>,
}

impl Monitor {
    /// What to save, taken at once: see the module's documentation.
    pub fn snapshot(&self) -> Snapshot {
        let Monitor {
            config: _,
            settings: _,
            failover: _,
            constraints,
            watches,
            members,
            gone,
            missed,
            waiting,
            pidfds,
            exit_lag,
            generation,
            causes,
            cause_unknown: _,
            sees_causes: _,
            groups,
            group_conf: _,
            group_of: _,
            dirty: _,
            unheard: _,
        } = self;
        Snapshot {
            watches: watches.clone(),
            rest: Rest {
                constraints: constraints.clone(),
                members: members.clone(),
                gone: gone.clone(),
                missed: missed.clone(),
                waiting: waiting.clone(),
                pidfds: *pidfds,
                exit_lag: *exit_lag,
                generation: *generation,
                causes: causes.clone(),
                groups: groups.clone(),
            },
        }
    }
}

/// Serialises snapshots one after another, keeping each entry's JSON for
/// the next: an entry that did not change since (the same `Arc`: a change
/// copies it, since this writer holds it too) is not serialised again, so
/// a save costs the entries that changed plus a copy of the bytes.
#[derive(Default)]
pub struct SnapshotWriter {
    kept: Vec<(Arc<Watch>, Vec<u8>)>,
}

impl SnapshotWriter {
    /// Appends `snapshot` to `out` as the JSON of a monitor.
    pub fn write(&mut self, snapshot: &Snapshot, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *out, &snapshot.rest)?;
        // `{…}` with fields in it: the entries go before its closing brace.
        debug_assert_eq!(out.last(), Some(&b'}'));
        out.pop();
        out.extend_from_slice(b",\"watches\":[");
        let watches = &snapshot.watches.0;
        self.kept.truncate(watches.len());
        for (i, w) in watches.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match self.kept.get_mut(i) {
                Some((kept, _)) if Arc::ptr_eq(kept, w) => {}
                Some((kept, bytes)) => {
                    bytes.clear();
                    serde_json::to_writer(&mut *bytes, &**w)?;
                    *kept = Arc::clone(w);
                }
                None => self.kept.push((Arc::clone(w), serde_json::to_vec(&**w)?)),
            }
            out.extend_from_slice(&self.kept[i].1);
        }
        out.extend_from_slice(b"]}");
        Ok(())
    }
}
