//! A table keyed by process id, kept in shards that snapshots share.
//!
//! The monitor's per-process tables (members, exits remembered, causes)
//! hold one row per watched process: 10,000 rows on a large host. A
//! snapshot of the monitor must not copy them ([`super::snapshot`]), and
//! the state's journal must not write them all after one death. So the
//! rows are spread over [`SHARDS`] maps by pid, each behind an `Arc`: a
//! snapshot takes the `Arc`s, a change copies the one shard it touches
//! while a snapshot still holds it, and the journal writes the shards that
//! are no longer the ones it wrote last.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeMap};

/// How many shards: a change copies (and the journal writes) about
/// 1/256 of the table, and an empty table costs 256 small allocations.
pub(super) const SHARDS: usize = 256;

/// One shard: the rows whose pid is its index modulo [`SHARDS`].
pub(super) type Shard<V> = Arc<HashMap<u32, V>>;

/// See the module's documentation.
#[derive(Clone, Debug)]
pub(super) struct ByPid<V>(Vec<Shard<V>>);

impl<V> Default for ByPid<V> {
    fn default() -> Self {
        ByPid((0..SHARDS).map(|_| Arc::new(HashMap::new())).collect())
    }
}

fn shard_of(pid: u32) -> usize {
    pid as usize % SHARDS
}

impl<V: Clone> ByPid<V> {
    pub fn get(&self, pid: &u32) -> Option<&V> {
        self.0[shard_of(*pid)].get(pid)
    }

    pub fn contains_key(&self, pid: &u32) -> bool {
        self.0[shard_of(*pid)].contains_key(pid)
    }

    /// The row of `pid`, its shard copied first if a snapshot holds it;
    /// a missing row copies nothing.
    pub fn get_mut(&mut self, pid: &u32) -> Option<&mut V> {
        let shard = &mut self.0[shard_of(*pid)];
        if !shard.contains_key(pid) {
            return None;
        }
        Arc::make_mut(shard).get_mut(pid)
    }

    pub fn insert(&mut self, pid: u32, row: V) -> Option<V> {
        Arc::make_mut(&mut self.0[shard_of(pid)]).insert(pid, row)
    }

    /// Inserts `row` unless `pid` has one (which is left as it is).
    pub fn insert_if_absent(&mut self, pid: u32, row: V) {
        if !self.contains_key(&pid) {
            self.insert(pid, row);
        }
    }

    pub fn remove(&mut self, pid: &u32) -> Option<V> {
        let shard = &mut self.0[shard_of(*pid)];
        if !shard.contains_key(pid) {
            return None;
        }
        Arc::make_mut(shard).remove(pid)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|s| s.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &V)> {
        self.0.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().flat_map(|s| s.keys())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().flat_map(|s| s.values())
    }

    /// Every row, each shard copied that a snapshot holds (for changes
    /// to all rows: a reload, a restore).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut V)> {
        self.0.iter_mut().flat_map(|s| Arc::make_mut(s).iter_mut())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Keeps the rows `keep` says to; a shard it keeps whole is not copied.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32, &V) -> bool) {
        for shard in &mut self.0 {
            if shard.iter().all(|(pid, row)| keep(pid, row)) {
                continue;
            }
            Arc::make_mut(shard).retain(|pid, row| keep(pid, row));
        }
    }

    /// The shards, in order, for the journal to compare with those it
    /// wrote last.
    pub fn shards(&self) -> &[Shard<V>] {
        &self.0
    }

    /// Puts `rows` in place of shard `index` (a journal record read
    /// back, checked with [`fits`]).
    pub fn replace_shard(&mut self, index: usize, rows: HashMap<u32, V>) {
        debug_assert!(fits(index, &rows));
        self.0[index] = Arc::new(rows);
    }
}

/// Whether `rows` can be shard `index`: there is one, and each pid is its.
pub(super) fn fits<V>(index: usize, rows: &HashMap<u32, V>) -> bool {
    index < SHARDS && rows.keys().all(|pid| shard_of(*pid) == index)
}

/// Written as one map (pid → row), as the table was before it had shards.
impl<V: Serialize> Serialize for ByPid<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.0.iter().map(|s| s.len()).sum();
        let mut map = s.serialize_map(Some(len))?;
        for (pid, row) in self.0.iter().flat_map(|s| s.iter()) {
            map.serialize_entry(pid, row)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de> + Clone> Deserialize<'de> for ByPid<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = HashMap::<u32, V>::deserialize(d)?;
        let mut table = ByPid::default();
        for (pid, row) in all {
            table.insert(pid, row);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_shard_and_reading_none() {
        let mut table = ByPid::default();
        for pid in 1..=10_000u32 {
            table.insert(pid, pid * 2);
        }
        let held = table.clone();
        let same = |a: &ByPid<u32>, b: &ByPid<u32>| {
            a.shards()
                .iter()
                .zip(b.shards())
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        assert_eq!(same(&table, &held), SHARDS);
        assert_eq!(table.get(&77), Some(&154));
        assert_eq!(table.get_mut(&20_000), None);
        assert_eq!(table.remove(&20_000), None);
        table.retain(|pid, _| *pid <= 10_000);
        assert_eq!(same(&table, &held), SHARDS, "nothing read copied");

        table.remove(&77);
        *table.get_mut(&78).unwrap() = 0;
        assert_eq!(same(&table, &held), SHARDS - 2);
        assert_eq!((held.get(&77), held.get(&78)), (Some(&154), Some(&156)));
        assert_eq!(table.len(), 9_999);

        let json = serde_json::to_string(&table).unwrap();
        let back: ByPid<u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 9_999);
        assert_eq!((back.get(&77), back.get(&78)), (None, Some(&0)));

        let mut rows = HashMap::new();
        rows.insert(3 + SHARDS as u32, 1);
        assert!(!fits(4, &rows) && !fits(SHARDS + 3, &rows));
        assert!(fits(3, &rows));
        table.replace_shard(3, rows);
        assert_eq!(table.get(&3), None);
        assert_eq!(table.get(&(3 + SHARDS as u32)), Some(&1));
    }
}
