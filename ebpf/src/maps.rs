//! The maps the kernel programs share with the agent. Layouts live in `weft-common`.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use weft_common::{
    BPF_F_NO_PREALLOC, Backend, ConnRecord, GovernCount, GovernKey, MaglevChunk, MaglevKey, Policy,
    RevNatKey, RevNatValue, ServiceKey, ServiceValue, SockGov, SockNat, SockUdp, counter, maps,
};

#[map(name = "WEFT_SERVICE_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(maps::SERVICES_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "WEFT_BACKEND_V1")]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(maps::BACKENDS_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "WEFT_MAGLEV_V1")]
pub static MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::pinned(maps::MAGLEV_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "WEFT_REVNAT_V1")]
pub static REVNAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::pinned(maps::REVNAT_CAPACITY, 0);

#[map(name = "WEFT_EVENTS_V2")]
pub static EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

#[map(name = "WEFT_CONNS_V1")]
pub static CONNS: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(maps::CONNS_CAPACITY, 0);

/// Ring-buffer records dropped because the ring was full, per CPU; the agent reports the sum.
#[map(name = "WEFT_LOST_V1")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Agent-written switches (`weft_common::settings`), one `u32`.
#[map(name = "WEFT_SETTINGS_V1")]
pub static SETTINGS: Array<u32> = Array::pinned(1, 0);

/// Per-socket record of the translations a socket that is not TCP made (freed by the kernel
/// with the socket). A BTF map: socket storage needs the key and value types described.
#[btf_map(name = "WEFT_SOCKNAT_V1", pin_by_name)]
pub static SOCK_NAT: SkStorage<SockNat> = SkStorage::new();

/// Per-socket traffic of translated UDP sockets, slot by slot beside `SOCK_NAT`.
#[btf_map(name = "WEFT_SOCKUDP_V1", pin_by_name)]
pub static SOCK_UDP: SkStorage<SockUdp> = SkStorage::new();

/// Governance of the services that have any, by service id (written by the agent).
#[map(name = "WEFT_POLICY_V1")]
pub static POLICIES: HashMap<u32, Policy> =
    HashMap::pinned(maps::POLICY_CAPACITY, BPF_F_NO_PREALLOC);

/// Open-connection counts and refusals of governed services, per endpoint and per service.
/// Pinned, so the counts of connections still open survive an agent restart.
#[map(name = "WEFT_GOVCNT_V1")]
pub static GOVERN: HashMap<GovernKey, GovernCount> =
    HashMap::pinned(maps::GOVERN_CAPACITY, BPF_F_NO_PREALLOC);

/// The count a connection to a limited service holds, given back when its socket goes.
#[btf_map(name = "WEFT_SOCKGOV_V1", pin_by_name)]
pub static SOCK_GOV: SkStorage<SockGov> = SkStorage::new();

/// Event counts (`weft_common::counter` indexes), per CPU; the agent reports the sums.
#[map(name = "WEFT_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::SLOTS, 0);

/// Adds one to a counter of this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on it meanwhile.
        unsafe { *slot += 1 };
    }
}
