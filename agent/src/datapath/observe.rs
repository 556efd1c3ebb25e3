//! Read-only views of the kernel-written maps, for statistics and the admin API: the live
//! connection table, the reverse-NAT entries, the count of events the ring dropped and the
//! kernel's event counters. Every read is a syscall on the map's fd (walks are one per
//! entry): callers sample it off the control loop, and not per request.

use aya::maps::{HashMap, MapData, PerCpuArray};
use weft_common::{
    Backend, ConnRecord, GovernCount, GovernKey, RevNatKey, RevNatValue, WHOLE_SERVICE, counter,
    maps as names, tc_counter,
};

use super::{
    DatapathError,
    flows::{Flow, FlowReader},
    maps::map_error,
};

pub struct Observer {
    conns: HashMap<MapData, u64, ConnRecord>,
    revnat: HashMap<MapData, RevNatKey, RevNatValue>,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    /// Governance counts (its own handle on the pinned map: the datapath holds another).
    govern: HashMap<MapData, GovernKey, GovernCount>,
    /// Endpoints by backend id, to name the endpoints those counts are for.
    backends: HashMap<MapData, u32, Backend>,
    /// The TC path's flows and counters, when its programs are attached.
    tc: Option<(FlowReader, PerCpuArray<MapData, u64>)>,
}

/// One row of `WEFT_GOVCNT_V1`: a governed service's counts (`endpoint` none) or one of
/// its endpoints'.
#[derive(Clone, Copy, Debug)]
pub struct GovernRow {
    pub service_id: u32,
    pub endpoint: Option<std::net::SocketAddr>,
    pub count: GovernCount,
}

/// What the TC programs counted (`WEFT_TCSTAT_V1`), summed over CPUs, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcCounters(pub Vec<(&'static str, u64)>);

/// The reasons `WEFT_TCSTAT_V1` counts, as metric labels.
const TC_REASONS: [(u32, &str); 11] = [
    (tc_counter::NO_ENDPOINT, "no_endpoint"),
    (tc_counter::TRUNCATED, "truncated"),
    (tc_counter::BAD_HEADER, "bad_header"),
    (tc_counter::FRAGMENT_UNKNOWN, "fragment_unknown"),
    (tc_counter::IPV6_EXTENSION, "ipv6_extension"),
    (tc_counter::OTHER_PROTOCOL, "other_protocol"),
    (tc_counter::ICMP_TRANSLATED, "icmp_translated"),
    (tc_counter::ICMP_UNMATCHED, "icmp_unmatched"),
    (tc_counter::FLOW_NOT_WRITTEN, "flow_not_written"),
    (tc_counter::ENDPOINT_GONE, "endpoint_gone"),
    (tc_counter::DENIED, "denied"),
];

/// The kernel's own event counts (`WEFT_COUNTERS_V1`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Reverse-NAT entries evicted while their socket was open.
    pub revnat_evicted: u64,
    /// Translations back recovered from a socket's own record after such an eviction.
    pub revnat_recovered: u64,
}

impl Observer {
    pub(super) fn take(
        ebpf: &mut aya::Ebpf,
        tc: bool,
        maps_dir: &std::path::Path,
    ) -> Result<Observer, DatapathError> {
        fn raw(ebpf: &mut aya::Ebpf, map: &'static str) -> Result<aya::maps::Map, DatapathError> {
            ebpf.take_map(map).ok_or(DatapathError::MissingMap { map })
        }
        let tc = if tc {
            Some((
                FlowReader::take(ebpf)?,
                PerCpuArray::try_from(raw(ebpf, names::TC_COUNTERS)?)
                    .map_err(map_error(names::TC_COUNTERS))?,
            ))
        } else {
            None
        };
        let pinned = |map: &'static str| {
            MapData::from_pin(maps_dir.join(map))
                .map(aya::maps::Map::HashMap)
                .map_err(map_error(map))
        };
        let govern = pinned(names::GOVERN)?;
        let backends = pinned(names::BACKENDS)?;
        Ok(Observer {
            tc,
            backends: HashMap::try_from(backends).map_err(map_error(names::BACKENDS))?,
            govern: HashMap::try_from(govern).map_err(map_error(names::GOVERN))?,
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

    /// The TC path's flows (none without TC programs).
    pub fn flows(&self) -> Vec<Flow> {
        self.tc.as_ref().map(|(f, _)| f.flows()).unwrap_or_default()
    }

    /// Entries the TC flow table holds at most (0 without TC programs).
    pub fn flows_capacity(&self) -> u64 {
        self.tc.as_ref().map_or(0, |(f, _)| f.capacity())
    }

    /// The TC programs' counts (none without TC programs).
    pub fn tc_counters(&self) -> Option<TcCounters> {
        let (_, counters) = self.tc.as_ref()?;
        Some(TcCounters(
            TC_REASONS
                .iter()
                .map(|&(index, reason)| (reason, sum(counters, index)))
                .collect(),
        ))
    }

    /// The governance counts of every governed service and its endpoints.
    pub fn governance(&self) -> Vec<GovernRow> {
        self.govern
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, count)| {
                let endpoint = if key.backend_id == WHOLE_SERVICE {
                    None
                } else {
                    // An endpoint gone from every service: its counts name nothing left.
                    let backend = self.backends.get(&key.backend_id, 0).ok()?;
                    Some(crate::layout::endpoint_of(&backend))
                };
                Some(GovernRow {
                    service_id: key.service_id,
                    endpoint,
                    count,
                })
            })
            .collect()
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
