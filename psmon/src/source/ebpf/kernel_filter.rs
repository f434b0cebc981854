//! The in-kernel watch filter of the `ebpf` source: which programs' execs
//! and which processes' events leave the kernel, and what the programs
//! count and record of the execs they drop, for the reconciliation scan.

use std::{
    os::fd::AsFd,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray},
};
use psmon_ebpf::{
    COMM_LEN, EXECS_ALL, EXECS_UNRECORDED, MAP_EXECD, MAP_EXECS, MAP_FORKS, MAP_SIGNALS,
    MAP_WATCH_COMMS, MAP_WATCH_TGIDS,
};

use super::refusal::{Refusal, take};
use crate::source::TakeExecd;

/// Handle on the in-kernel watch filter, used when the source was opened with
/// `kernel_filter`. Events of other processes never leave the kernel.
pub struct KernelFilter {
    comms: BpfHashMap<MapData, [u8; COMM_LEN], u8>,
    tgids: BpfHashMap<MapData, u32, u8>,
    execs: PerCpuArray<MapData, u64>,
    /// Taken out on the scan's thread (see [`Filter::execd`]).
    record: Arc<Mutex<ExecRecord>>,
    signals: Option<PerCpuArray<MapData, u64>>,
}

/// What the programs record of execs between two scans.
struct ExecRecord {
    /// The thread groups that exec'd since the list was last taken out.
    execd: BpfHashMap<MapData, u32, u8>,
    /// A second handle on the filter's exec counts, for the execs the
    /// programs could not put in `execd`.
    execs: PerCpuArray<MapData, u64>,
    /// How many execs the kernel could not put in `execd`, when last read.
    unrecorded_at: u64,
    /// Tasks created since load, as the programs counted them.
    forks: PerCpuArray<MapData, u64>,
    /// The programs' fork count and the kernel's when `execd` was last
    /// taken out.
    forks_at: Option<(u64, u64)>,
}

impl KernelFilter {
    /// Takes the filter's maps out of the loaded programs.
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<KernelFilter, Refusal> {
        // Two handles on one map: the event loop reads the exec count,
        // the scan's thread the execs left unrecorded.
        let (execs, second) = take(ebpf, MAP_EXECS, |map| {
            let again = match &map {
                Map::PerCpuArray(data) => Some(data.fd().as_fd().try_clone_to_owned()),
                _ => None,
            };
            let execs = PerCpuArray::try_from(map)?;
            let again = again.ok_or("not a per-CPU array")??;
            let second = PerCpuArray::try_from(Map::PerCpuArray(MapData::from_fd(again)?))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((execs, second))
        })?;
        let record = ExecRecord {
            execd: take(ebpf, MAP_EXECD, BpfHashMap::try_from)?,
            execs: second,
            unrecorded_at: 0,
            forks: take(ebpf, MAP_FORKS, PerCpuArray::try_from)?,
            forks_at: None,
        };
        Ok(KernelFilter {
            comms: take(ebpf, MAP_WATCH_COMMS, BpfHashMap::try_from)?,
            tgids: take(ebpf, MAP_WATCH_TGIDS, BpfHashMap::try_from)?,
            execs,
            record: Arc::new(Mutex::new(record)),
            signals: take(ebpf, MAP_SIGNALS, PerCpuArray::try_from).ok(),
        })
    }

    /// Passes execs whose `comm` (the first 15 bytes of the executable's file
    /// name) is `name`'s, and from then on every event of that process.
    pub fn watch_comm(&mut self, name: &str) -> Result<(), MapError> {
        self.comms.insert(comm_key(name), 1, 0)
    }

    /// Passes every event of thread group `tgid` (and forks of it).
    pub fn watch_tgid(&mut self, tgid: u32) -> Result<(), MapError> {
        self.tgids.insert(tgid, 1, 0)
    }

    /// Stops passing the events of thread group `tgid`; one not passed is no error.
    pub fn unwatch_tgid(&mut self, tgid: u32) -> Result<(), MapError> {
        match self.tgids.remove(&tgid) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

impl crate::source::Filter for KernelFilter {
    fn watch_comm(&mut self, name: &str) {
        if let Err(e) = KernelFilter::watch_comm(self, name) {
            tracing::warn!(name, error = %e, "cannot add a name to the kernel filter");
        }
    }

    fn watch_tgid(&mut self, tgid: u32) {
        if let Err(e) = KernelFilter::watch_tgid(self, tgid) {
            tracing::warn!(tgid, error = %e, "cannot add a process to the kernel filter");
        }
    }

    fn unwatch_tgid(&mut self, tgid: u32) {
        let _ = KernelFilter::unwatch_tgid(self, tgid);
    }

    fn execs_seen(&self) -> Option<u64> {
        self.execs.get(&EXECS_ALL, 0).ok().map(|v| v.iter().sum())
    }

    fn execd(&mut self) -> Option<TakeExecd> {
        let record = Arc::clone(&self.record);
        Some(Box::new(move || {
            record.lock().unwrap_or_else(|e| e.into_inner()).take()
        }))
    }

    fn signals_seen(&self) -> Option<u64> {
        let signals = self.signals.as_ref()?;
        signals.get(&0, 0).ok().map(|v| v.iter().sum())
    }
}

impl ExecRecord {
    /// The processes that exec'd since this was last asked: `None` when the
    /// programs could not record them all or no longer run. Two `bpf(2)`
    /// calls a process listed.
    fn take(&mut self) -> Option<Vec<u32>> {
        let keys = self.execd.keys().collect::<Result<Vec<u32>, _>>();
        // Out, whatever the outcome: an exec after this is the next scan's.
        for tgid in keys.as_deref().unwrap_or_default() {
            let _ = self.execd.remove(tgid);
        }
        let unrecorded: u64 = self.execs.get(&EXECS_UNRECORDED, 0).ok()?.iter().sum();
        let whole = unrecorded == std::mem::replace(&mut self.unrecorded_at, unrecorded);
        // Programs that no longer run (detached, or the source deaf in a
        // way the self-check has not caught yet) record nothing: the list
        // is worth something only if they counted some of the tasks the
        // kernel created meanwhile.
        let ours: u64 = self.forks.get(&0, 0).ok()?.iter().sum();
        let kernels = crate::proc::forks_since_boot()?;
        let heard = match self.forks_at.replace((ours, kernels)) {
            Some((ours_then, kernels_then)) => ours > ours_then || kernels == kernels_then,
            None => false,
        };
        keys.ok().filter(|_| whole && heard)
    }
}

/// The key the kernel compares: `comm` is NUL padded and at most 15 bytes.
fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_keys_are_truncated_and_padded() {
        assert_eq!(&comm_key("sshd")[..5], b"sshd\0");
        let long = comm_key("a-very-long-daemon-name");
        assert_eq!(&long[..15], b"a-very-long-dae");
        assert_eq!(long[15], 0);
    }
}
