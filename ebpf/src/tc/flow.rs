//! The TC path's conntrack: a flow's two entries in `WEFT_FLOWS_V1` (forward: where the
//! client's packets go; reverse: what the endpoint's replies must show), created when the
//! flow's first packet picks its endpoint, followed by every packet after.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use weft_common::{
    Addr, ConnRecord, FlowKey, FlowValue, PROTO_TCP, ServiceKey, conn_flags, event, flow_dir,
    flow_flags, tc_counter,
};

use super::{
    maps::{FLOWS, count},
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use crate::{
    events, govern,
    maps::BACKENDS,
    select::{Choice, Chosen, choose},
};

/// The last-seen time is rewritten at most this often (a store per packet would bounce
/// the entry's cache line between CPUs for nothing).
const REFRESH_NS: u64 = 1_000_000_000;

/// One packet's view of its flow: addresses and ports as the packet carries them.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub family: u8,
}

impl Tuple {
    #[inline(always)]
    pub fn key(&self, dir: u8) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            protocol: self.protocol,
            family: self.family,
            dir,
            _pad: 0,
        }
    }

    /// A hash of the flow that does not change between packets, boots or agents: a flow
    /// whose entry was lost (evicted, or an agent restart that recreated the map) picks
    /// the same endpoint again as long as the service's table is the same.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        let mut h: u32 = 0x9e37_79b9 ^ self.protocol as u32;
        let words = [
            self.src[0],
            self.src[1],
            self.src[2],
            self.src[3],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.dst[3],
            (self.sport as u32) << 16 | self.dport as u32,
        ];
        let mut i = 0;
        while i < words.len() {
            h = mix(h ^ words[i]);
            i += 1;
        }
        h
    }
}

/// murmur3's 32-bit finalizer.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flag bits a packet with these TCP flags sets in its direction's entry.
#[inline(always)]
fn flags_of(protocol: u8, tcp: u8) -> u8 {
    if protocol != PROTO_TCP {
        return flow_flags::SEEN_NON_SYN;
    }
    let mut flags = 0;
    if tcp & TCP_SYN != 0 && tcp & TCP_ACK == 0 {
        flags |= flow_flags::SYN;
    } else {
        flags |= flow_flags::SEEN_NON_SYN;
    }
    if tcp & TCP_FIN != 0 {
        flags |= flow_flags::FIN;
    }
    if tcp & TCP_RST != 0 {
        flags |= flow_flags::RST;
    }
    flags
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no arguments; available from 5.11 (weft needs 5.18).
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Counts a packet of `bytes` in an entry and notes its flags; refreshes the last-seen time
/// when it is a second old.
#[inline(always)]
fn account(entry: *mut FlowValue, bytes: u64, flags: u8) {
    // SAFETY: `entry` points into a map value the kernel keeps alive for this program run;
    // the counters are updated atomically (both directions' CPUs may touch one entry after
    // a reroute), the rest with plain stores whose races only lose a refresh.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).bytes, bytes);
        if (*entry).flags | flags != (*entry).flags {
            (*entry).flags |= flags;
        }
        let now = now();
        if now.wrapping_sub((*entry).last_ns) > REFRESH_NS {
            (*entry).last_ns = now;
        }
    }
}

/// Where a client's packet goes.
pub enum Forward {
    /// Not a service (wrong port or protocol for this address): leave the packet alone.
    NotService,
    /// A new flow to a service with no usable endpoint.
    NoEndpoint,
    /// A new flow from a source the service's `allow` rules do not name.
    Denied,
    /// The flow's entries could not be written.
    NotWritten,
    /// Send it to this endpoint (address and port, network order).
    To(Addr, u16),
}

/// The forward step for a client's packet to a service address: follows the flow's entry,
/// or picks an endpoint and creates both entries. A SYN on a flow that closed starts a new
/// one; a flow whose endpoint left every service picks anew.
#[inline(always)]
pub fn forward(tuple: &Tuple, tcp: u8, bytes: u64) -> Forward {
    let key = tuple.key(flow_dir::FORWARD);
    let flags = flags_of(tuple.protocol, tcp);
    // A closed flow whose client port starts a new connection: its entry, and the endpoint
    // it had.
    let mut closed_flow = None;
    if let Some(entry) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a live map value, read field by field.
        let (nat_addr, nat_port, backend_id, old_flags) = unsafe {
            (
                (*entry).nat_addr,
                (*entry).nat_port,
                (*entry).backend_id,
                (*entry).flags,
            )
        };
        let closed = old_flags & (flow_flags::FIN | flow_flags::RST) != 0;
        if closed && flags & flow_flags::SYN != 0 {
            closed_flow = Some((entry, backend_id));
        } else if endpoint_still(backend_id, &nat_addr, nat_port) {
            account(entry, bytes, flags);
            return Forward::To(nat_addr, nat_port);
        } else {
            count(tc_counter::ENDPOINT_GONE);
        }
    }
    // Zeroed before the pick and filled by it, rather than returned in a `Result`: with the
    // BPF ISA's 32-bit registers LLVM spilled the `Result`'s undefined payload on its error
    // paths from a register a helper call had clobbered, which the verifier refuses.
    let mut picked = Chosen::default();
    if let Some(refused) = pick(tuple, &mut picked) {
        return refused;
    }
    // A client port reused for a new connection (common under churn) mostly picks the
    // endpoint its last flow had: its entries are rewritten where they are, rather than two
    // inserts that each take an LRU node and push another flow out.
    if let Some((entry, backend_id)) = closed_flow
        && picked.backend_id == backend_id
        && reuse(tuple, entry, &picked, flags, bytes)
    {
        return Forward::To(picked.backend.addr, picked.backend.port);
    }
    create(tuple, flags, bytes, &picked)
}

/// Picks the endpoint of a new flow into `picked`; what to do instead when there is none
/// or the service's `allow` rules refuse the source.
#[inline(always)]
fn pick(tuple: &Tuple, picked: &mut Chosen) -> Option<Forward> {
    let service = ServiceKey {
        addr: tuple.dst,
        port: tuple.dport,
        protocol: tuple.protocol,
        family: tuple.family,
    };
    match choose(&service, tuple.hash()) {
        Choice::NotService => Some(Forward::NotService),
        Choice::NoEndpoint => Some(Forward::NoEndpoint),
        Choice::Endpoint(chosen) => {
            if let Some(policy) = govern::policy(chosen.service_id)
                && !govern::source_allowed(policy, &tuple.src, tuple.family)
            {
                govern::count_refusal(chosen.service_id, govern::Refusal::Denied);
                report_denial(tuple, chosen.service_id);
                return Some(Forward::Denied);
            }
            *picked = chosen;
            None
        }
    }
}

/// Tells `weft conns --follow` about a forwarded flow the `allow` rules refused.
#[inline(always)]
fn report_denial(tuple: &Tuple, service_id: u32) {
    let record = ConnRecord {
        src_addr: tuple.src,
        dst_addr: tuple.dst,
        src_port: tuple.sport,
        dst_port: tuple.dport,
        family: tuple.family,
        service_id,
        flags: conn_flags::TC,
        ..ConnRecord::default()
    };
    events::emit_refusal(record, event::DENIED);
}

/// The entries of a new flow, both directions, as it starts.
#[inline(always)]
fn entries(tuple: &Tuple, flags: u8, bytes: u64, picked: &Chosen) -> (FlowValue, FlowValue) {
    let now = now();
    let forward = FlowValue {
        nat_addr: picked.backend.addr,
        nat_port: picked.backend.port,
        flags,
        _pad: 0,
        service_id: picked.service_id,
        backend_id: picked.backend_id,
        _pad2: 0,
        created_ns: now,
        last_ns: now,
        packets: 1,
        bytes,
    };
    let reverse = FlowValue {
        nat_addr: tuple.dst,
        nat_port: tuple.dport,
        flags: 0,
        packets: 0,
        bytes: 0,
        ..forward
    };
    (forward, reverse)
}

/// The key of the endpoint's replies: from the endpoint to the client, shown as from the
/// service.
#[inline(always)]
fn reply_key(tuple: &Tuple, picked: &Chosen) -> FlowKey {
    Tuple {
        src: picked.backend.addr,
        dst: tuple.src,
        sport: picked.backend.port,
        dport: tuple.sport,
        protocol: tuple.protocol,
        family: tuple.family,
    }
    .key(flow_dir::REVERSE)
}

/// Starts a new flow in a closed flow's entries (same key, same endpoint). False when the
/// reply entry is gone (evicted or expired): the caller inserts both instead.
#[inline(always)]
fn reuse(tuple: &Tuple, entry: *mut FlowValue, picked: &Chosen, flags: u8, bytes: u64) -> bool {
    let Some(reply) = FLOWS.get_ptr_mut(&reply_key(tuple, picked)) else {
        return false;
    };
    let (forward, reverse) = entries(tuple, flags, bytes, picked);
    // SAFETY: both point into live map values; the old flow is over, so whatever a late
    // packet of it counts concurrently is lost with it.
    unsafe {
        *reply = reverse;
        *entry = forward;
    }
    true
}

/// Whether the endpoint a flow was sent to is still one (an id the agent reused for
/// another address is not).
#[inline(always)]
fn endpoint_still(backend_id: u32, addr: &Addr, port: u16) -> bool {
    // SAFETY: BACKENDS is BPF_F_NO_PREALLOC: the element outlives this read (RCU).
    match unsafe { BACKENDS.get(&backend_id) } {
        Some(backend) => backend.addr == *addr && backend.port == port,
        None => false,
    }
}

#[inline(always)]
fn create(tuple: &Tuple, flags: u8, bytes: u64, picked: &Chosen) -> Forward {
    let (forward, reverse) = entries(tuple, flags, bytes, picked);
    // Reverse first: a reply never arrives before its request, but the forward entry is the
    // one that makes the flow exist.
    if FLOWS
        .insert(&reply_key(tuple, picked), &reverse, 0)
        .is_err()
        || FLOWS
            .insert(&tuple.key(flow_dir::FORWARD), &forward, 0)
            .is_err()
    {
        return Forward::NotWritten;
    }
    Forward::To(picked.backend.addr, picked.backend.port)
}

/// The reverse step for a packet leaving towards a client: the service address and port
/// to show as its source, if it is a reply of a translated flow.
#[inline(always)]
pub fn reverse(tuple: &Tuple, tcp: u8, bytes: u64) -> Option<(Addr, u16)> {
    let entry = FLOWS.get_ptr_mut(&tuple.key(flow_dir::REVERSE))?;
    // SAFETY: a live map value.
    let (addr, port) = unsafe { ((*entry).nat_addr, (*entry).nat_port) };
    account(entry, bytes, flags_of(tuple.protocol, tcp));
    Some((addr, port))
}

/// Looks a flow up without counting a packet: the endpoint of a forward entry, or the
/// service address of a reverse one (for ICMP errors about the flow).
#[inline(always)]
pub fn peek(tuple: &Tuple, dir: u8) -> Option<(Addr, u16)> {
    // SAFETY: FLOWS values are read at once.
    let entry = unsafe { FLOWS.get(&tuple.key(dir)) }?;
    Some((entry.nat_addr, entry.nat_port))
}

/// Counts a packet of an established flow translated only at the IP layer (a later
/// fragment).
#[inline(always)]
pub fn touch(tuple: &Tuple, dir: u8, bytes: u64) -> Option<(Addr, u16)> {
    let entry = FLOWS.get_ptr_mut(&tuple.key(dir))?;
    // SAFETY: a live map value.
    let (addr, port) = unsafe { ((*entry).nat_addr, (*entry).nat_port) };
    account(entry, bytes, 0);
    Some((addr, port))
}
