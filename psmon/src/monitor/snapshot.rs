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

use super::{ByPid, GroupWatch, LeftConstraint, Member, Monitor, Watch, by_pid};
use crate::{clock::Time, facts::Cause, facts::EntryId};

/// How many entries a chunk of [`Watches`] holds: a snapshot takes one
/// reference a chunk, and a change copies the 64 references of its chunk.
const CHUNK: usize = 64;

/// The entries' state, in [`EntryId`] order, each shared with the
/// snapshots that hold it and copied when it changes under one. They are
/// kept in chunks, each shared too, so that taking a snapshot of 10,000
/// entries counts 157 references rather than 10,000.
#[derive(Clone, Debug, Default)]
pub(super) struct Watches {
    chunks: Vec<Arc<Vec<Arc<Watch>>>>,
    len: usize,
}

impl Watches {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> Option<&Watch> {
        let chunk = self.chunks.get(i / CHUNK)?;
        chunk.get(i % CHUNK).map(|w| &**w)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Watch> {
        (i < self.len).then(|| &mut self[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Watch> {
        self.chunks.iter().flat_map(|c| c.iter().map(|w| &**w))
    }

    pub fn push(&mut self, w: Watch) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(Arc::new(w)),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(Arc::new(w));
                self.chunks.push(Arc::new(chunk));
            }
        }
        self.len += 1;
    }

    /// Puts `w` in place of entry `i` (a journal record read back).
    fn replace(&mut self, i: usize, w: Watch) {
        Arc::make_mut(&mut self.chunks[i / CHUNK])[i % CHUNK] = Arc::new(w);
    }

    /// The entries of `self` that are not those of `then` (which has as
    /// many), in order: whole chunks that are the same are passed over.
    fn changed_since<'a>(&'a self, then: &'a Watches) -> impl Iterator<Item = (usize, &'a Watch)> {
        self.chunks
            .iter()
            .zip(&then.chunks)
            .enumerate()
            .filter(|(_, (a, b))| !Arc::ptr_eq(a, b))
            .flat_map(|(c, (a, b))| {
                a.iter()
                    .zip(b.iter())
                    .enumerate()
                    .filter(|(_, (x, y))| !Arc::ptr_eq(x, y))
                    .map(move |(k, (x, _))| (c * CHUNK + k, &**x))
            })
    }

    /// How many entries are the same (not copied since) in both.
    #[cfg(test)]
    pub fn shared_with(&self, other: &Watches) -> usize {
        self.len - other.changed_since(self).count()
    }

    /// All of them, leaving none.
    pub fn take_all(&mut self) -> impl Iterator<Item = Watch> + use<> {
        self.len = 0;
        std::mem::take(&mut self.chunks)
            .into_iter()
            .flat_map(Arc::unwrap_or_clone)
            .map(Arc::unwrap_or_clone)
    }
}

impl std::ops::Index<usize> for Watches {
    type Output = Watch;
    fn index(&self, i: usize) -> &Watch {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Watches {
    fn index_mut(&mut self, i: usize) -> &mut Watch {
        let chunk = Arc::make_mut(&mut self.chunks[i / CHUNK]);
        Arc::make_mut(&mut chunk[i % CHUNK])
    }
}

impl Serialize for Watches {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for w in self.iter() {
            seq.serialize_element(w)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Watches {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut watches = Watches::default();
        for w in Vec::<Watch>::deserialize(d)? {
            watches.push(w);
        }
        Ok(watches)
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
    #[serde(flatten)]
    small: Small,
    members: ByPid<Member>,
    gone: ByPid<(u64, Time)>,
    missed: ByPid<(u64, Time)>,
    causes: ByPid<Cause>,
}

/// The saved fields that are neither entries nor per-process tables:
/// small, so written whole in every journal record.
#[derive(Clone, Serialize, Deserialize)]
struct Small {
    constraints: Vec<LeftConstraint>,
    waiting: BTreeSet<EntryId>,
    pidfds: bool,
    exit_lag: Duration,
    generation: u64,
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
            probed: _,
            by_path: _,
            catch_up: _,
            dirty: _,
            unheard: _,
        } = self;
        Snapshot {
            watches: watches.clone(),
            rest: Rest {
                small: Small {
                    constraints: constraints.clone(),
                    waiting: waiting.clone(),
                    pidfds: *pidfds,
                    exit_lag: *exit_lag,
                    generation: *generation,
                    groups: groups.clone(),
                },
                members: members.clone(),
                gone: gone.clone(),
                missed: missed.clone(),
                causes: causes.clone(),
            },
        }
    }

    /// Applies a journal record read back (what changed after the state
    /// this monitor was loaded from); an error names what does not fit.
    pub fn apply(&mut self, changes: Changes) -> Result<(), String> {
        let Changes {
            watches,
            members,
            gone,
            missed,
            causes,
            rest,
        } = changes;
        // Checked before anything changes: a record that does not fit
        // leaves the monitor as it was.
        let len = self.watches.len();
        if let Some((i, _)) = watches.iter().find(|(i, _)| *i >= len) {
            return Err(format!("entry {i} changed, of {len}"));
        }
        fn all_fit<V>(shards: &[Shard<V>]) -> bool {
            shards.iter().all(|(i, rows)| by_pid::fits(*i, rows))
        }
        if !(all_fit(&members) && all_fit(&gone) && all_fit(&missed) && all_fit(&causes)) {
            return Err("a shard holds pids not its own".into());
        }
        for (i, w) in watches {
            self.watches.replace(i, w);
        }
        fn replace<V: Clone>(table: &mut ByPid<V>, shards: Vec<Shard<V>>) {
            for (i, rows) in shards {
                table.replace_shard(i, rows);
            }
        }
        replace(&mut self.members, members);
        replace(&mut self.gone, gone);
        replace(&mut self.missed, missed);
        replace(&mut self.causes, causes);
        let Small {
            constraints,
            waiting,
            pidfds,
            exit_lag,
            generation,
            groups,
        } = rest;
        self.constraints = constraints;
        self.waiting = waiting;
        self.pidfds = pidfds;
        self.exit_lag = exit_lag;
        self.generation = generation;
        self.groups = groups;
        Ok(())
    }
}

/// One journal record: the entries and the shards of each table that
/// changed since the record (or whole state) before it, and the small
/// fields whole. Written by [`SnapshotWriter::write`].
#[derive(Deserialize)]
pub struct Changes {
    watches: Vec<(usize, Watch)>,
    members: Vec<Shard<Member>>,
    gone: Vec<Shard<(u64, Time)>>,
    missed: Vec<Shard<(u64, Time)>>,
    causes: Vec<Shard<Cause>>,
    rest: Small,
}

/// A shard of a per-process table as a record carries it: its index and
/// its rows.
type Shard<V> = (usize, HashMap<u32, V>);

/// Serialises snapshots one after another: whole (what loads as a
/// monitor), or as what changed since the one it wrote last (a journal
/// record, [`Changes`]), found by identity: an entry or a shard that did
/// not change is the same `Arc` (a change copies it, since this writer
/// holds the last snapshot too), so a record costs what changed.
#[derive(Default)]
pub struct SnapshotWriter {
    last: Option<Snapshot>,
}

/// How a [`SnapshotWriter`] wrote a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The JSON of a monitor.
    Whole,
    /// A [`Changes`] record.
    Changes,
}

impl SnapshotWriter {
    /// Appends `snapshot` to `out`: whole when asked, when nothing was
    /// written before (or [`SnapshotWriter::forget`] was called), or when
    /// its entries are not those of the last (a reload added or removed
    /// some); else as what changed since the last.
    pub fn write(
        &mut self,
        snapshot: Snapshot,
        whole: bool,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<Form> {
        let form = match self.last.take() {
            Some(last) if !whole && last.watches.len() == snapshot.watches.len() => {
                write_changes(&snapshot, &last, out)?;
                Form::Changes
            }
            _ => {
                write_whole(&snapshot, out)?;
                Form::Whole
            }
        };
        self.last = Some(snapshot);
        Ok(form)
    }

    /// Appends the last snapshot written, whole; `None` when there is none.
    pub fn rewrite_whole(&mut self, out: &mut Vec<u8>) -> Option<serde_json::Result<()>> {
        self.last.as_ref().map(|last| write_whole(last, out))
    }

    /// What was written last did not reach the file: the next is whole.
    pub fn forget(&mut self) {
        self.last = None;
    }
}

/// `snapshot` as the JSON of a monitor.
fn write_whole(snapshot: &Snapshot, out: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *out, &snapshot.rest)?;
    // `{…}` with fields in it: the entries go before its closing brace.
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"watches\":");
    serde_json::to_writer(&mut *out, &snapshot.watches)?;
    out.push(b'}');
    Ok(())
}

/// What changed from `last` to `now`, as a [`Changes`] record.
fn write_changes(now: &Snapshot, last: &Snapshot, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"watches\":[");
    for (n, (i, w)) in now.watches.changed_since(&last.watches).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, &(i, w))?;
    }
    out.push(b']');
    let (now, then) = (&now.rest, &last.rest);
    write_shards(out, "members", &now.members, &then.members)?;
    write_shards(out, "gone", &now.gone, &then.gone)?;
    write_shards(out, "missed", &now.missed, &then.missed)?;
    write_shards(out, "causes", &now.causes, &then.causes)?;
    out.extend_from_slice(b",\"rest\":");
    serde_json::to_writer(&mut *out, &now.small)?;
    out.push(b'}');
    Ok(())
}

/// `,"name":[[shard, {pid: row, …}], …]` for the shards of `now` that are
/// not those of `then`.
fn write_shards<V: Clone + Serialize>(
    out: &mut Vec<u8>,
    name: &str,
    now: &ByPid<V>,
    then: &ByPid<V>,
) -> serde_json::Result<()> {
    out.extend_from_slice(format!(",\"{name}\":[").as_bytes());
    let changed = now
        .shards()
        .iter()
        .zip(then.shards())
        .enumerate()
        .filter(|(_, (a, b))| !Arc::ptr_eq(a, b));
    for (n, (i, (shard, _))) in changed.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, &(i, &**shard))?;
    }
    out.push(b']');
    Ok(())
}
