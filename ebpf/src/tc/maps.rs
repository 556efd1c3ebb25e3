//! The TC path's own maps (the service, backend and Maglev maps are shared with the socket
//! path). Layouts live in `weft-common`.
//!
//! Not pinned by the object, and the LRU maps (which the kernel allocates in full at
//! creation) declared with one entry: the agent sizes and pins them only when it attaches
//! TC programs, so an agent without them holds no conntrack memory.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use weft_common::{
    BPF_F_NO_PREALLOC, FlowKey, FlowValue, FragKey, FragPorts, VipKey, maps, tc_counter,
};

/// Conntrack: two entries per flow. LRU: under a flood the oldest flows go first, and a
/// flow that lost its entry picks the same endpoint again from its hash.
#[map(name = "WEFT_FLOWS_V1")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1, 0);

/// The ports of IPv4 datagrams in fragments, remembered from their first fragment.
#[map(name = "WEFT_FRAGS_V1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(1, 0);

/// Service addresses (any port), written by the agent.
#[map(name = "WEFT_VIPS_V1")]
pub static VIPS: HashMap<VipKey, u32> =
    HashMap::with_max_entries(maps::VIPS_CAPACITY, BPF_F_NO_PREALLOC);

/// What happened to packets that were not simply translated (`tc_counter` indexes), per CPU.
#[map(name = "WEFT_TCSTAT_V1")]
pub static TC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tc_counter::SLOTS, 0);

/// Adds one to a TC counter of this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = TC_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on it meanwhile.
        unsafe { *slot += 1 };
    }
}

/// Whether `addr` is a service address.
#[inline(always)]
pub fn is_vip(addr: &weft_common::Addr, family: u8) -> bool {
    let key = VipKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: only presence is read.
    unsafe { VIPS.get(&key) }.is_some()
}
