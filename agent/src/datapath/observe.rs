//! Read-only views of the kernel-written maps, for statistics and the admin API: the live
//! connection table, the reverse-NAT entries and the count of events the ring dropped.
//! Shared across tasks: every read is a syscall on the map's fd, nothing is cached.

use aya::maps::{HashMap, MapData, PerCpuArray};
use weft_common::{ConnRecord, RevNatKey, RevNatValue, maps as names};

use super::{DatapathError, maps::map_error};

pub struct Observer {
    conns: HashMap<MapData, u64, ConnRecord>,
    revnat: HashMap<MapData, RevNatKey, RevNatValue>,
    lost: PerCpuArray<MapData, u64>,
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
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
