//! Read-only views of the kernel-written maps, for statistics and the admin API: the live
//! connection table, the reverse-NAT entries, the count of events the ring dropped and the
//! kernel's event counters. Every read is a syscall on the map's fd (walks are one per
//! entry): callers sample it off the control loop, and not per request.

use aya::maps::{HashMap, MapData, PerCpuArray};
use weft_common::{ConnRecord, RevNatKey, RevNatValue, counter, maps as names};

use super::{DatapathError, maps::map_error};

pub struct Observer {
    conns: HashMap<MapData, u64, ConnRecord>,
    revnat: HashMap<MapData, RevNatKey, RevNatValue>,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
}

/// The kernel's own event counts (`WEFT_COUNTERS_V1`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Reverse-NAT entries evicted while their socket was open.
    pub revnat_evicted: u64,
    /// Translations back recovered from a socket's own record after such an eviction.
    pub revnat_recovered: u64,
}

impl Observer {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Observer, DatapathError> {
        fn raw(ebpf: &mut aya::Ebpf, map: &'static str) -> Result<aya::maps::Map, DatapathError> {
            ebpf.take_map(map).ok_or(DatapathError::MissingMap { map })
        }
        Ok(Observer {
            conns: HashMap::try_from(raw(ebpf, names::CONNS)?).map_err(map_error(names::CONNS))?,
            revnat: HashMap::try_from(raw(ebpf, names::REVNAT)?)
                .map_err(map_error(names::REVNAT))?,
            lost: PerCpuArray::try_from(raw(ebpf, names::LOST)?).map_err(map_error(names::LOST))?,
            counters: PerCpuArray::try_from(raw(ebpf, names::COUNTERS)?)
                .map_err(map_error(names::COUNTERS))?,
        })
    }

    /// Every live translated connection. Entries that vanish while we walk (closed in the
    /// meantime) are skipped.
    pub fn connections(&self) -> Vec<ConnRecord> {
        self.conns
            .iter()
            .filter_map(Result::ok)
            .map(|(_, record)| record)
            .collect()
    }

    /// Entries in the live connection table, without copying the records.
    pub fn connection_entries(&self) -> usize {
        self.conns.keys().filter(Result::is_ok).count()
    }

    /// Entries in the reverse-NAT map (kernel-written, so counted rather than known).
    pub fn revnat_entries(&self) -> usize {
        self.revnat.keys().filter(Result::is_ok).count()
    }

    /// Ring-buffer records the kernel could not deliver because the ring was full.
    pub fn events_lost(&self) -> u64 {
        sum(&self.lost, 0)
    }

    pub fn counters(&self) -> KernelCounters {
        KernelCounters {
            revnat_evicted: sum(&self.counters, counter::REVNAT_EVICTED),
            revnat_recovered: sum(&self.counters, counter::REVNAT_RECOVERED),
        }
    }
}

fn sum(array: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    array
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}
