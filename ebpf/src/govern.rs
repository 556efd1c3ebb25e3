//! Governance at connect, for services with a `WEFT_POLICY_V1` entry: who may connect
//! (`allow`), fault injection (`fault`) and circuit breaking (`limits`). Checked in that
//! order, so a denied or aborted connect never takes a count.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_uid_gid, bpf_get_prandom_u32,
};
use weft_common::{
    Addr, Backend, CgroupMatch, GovernCount, GovernKey, MAGLEV_CHUNK, MAX_ALLOW_RULES, Policy,
    WHOLE_SERVICE, allow_kind, sock_gov,
};

use crate::{
    maps::{GOVERN, POLICIES},
    select::{self, Drawn},
};

/// The governance of service `service_id`, if it has any.
#[inline(always)]
pub fn policy(service_id: u32) -> Option<&'static Policy> {
    // SAFETY: a BPF_F_NO_PREALLOC hash map: an entry the agent replaces is freed only after
    // readers are done (RCU).
    unsafe { POLICIES.get(&service_id) }
}

/// Whether the calling task may connect: the service has no rules, or one of its cgroup,
/// uid or gid rules matches (CIDR rules are for forwarded traffic and never match here).
#[inline(always)]
pub fn task_allowed(policy: &Policy) -> bool {
    let rules = policy.rule_count;
    if rules == 0 {
        return true;
    }
    // SAFETY: plain helper call, valid in cgroup programs with a process context.
    let ids = unsafe { bpf_get_current_uid_gid() };
    let (uid, gid) = (ids as u32, (ids >> 32) as u32);
    for (i, rule) in policy.rules.iter().enumerate().take(MAX_ALLOW_RULES) {
        if i as u32 >= rules {
            break;
        }
        let hit = match rule.kind {
            allow_kind::UID => rule.id == uid,
            allow_kind::GID => rule.id == gid,
            allow_kind::CGROUP => in_cgroup(&rule.cgroup),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

/// Whether a forwarded packet from `source` may open a flow: the service has no rules, or
/// one of its CIDR rules holds the address.
#[inline(always)]
pub fn source_allowed(policy: &Policy, source: &Addr, family: u8) -> bool {
    let rules = policy.rule_count;
    if rules == 0 {
        return true;
    }
    for (i, rule) in policy.rules.iter().enumerate().take(MAX_ALLOW_RULES) {
        if i as u32 >= rules {
            break;
        }
        if rule.kind == allow_kind::CIDR
            && rule.family == family
            && in_network(source, &rule.network, rule.prefix)
        {
            return true;
        }
    }
    false
}

/// Whether `addr` (words in network byte order) lies in `network`/`prefix`.
#[inline(always)]
fn in_network(addr: &Addr, network: &Addr, prefix: u8) -> bool {
    let mut left = u32::from(prefix);
    for word in 0..4 {
        let bits = if left >= 32 { 32 } else { left };
        left -= bits;
        if bits == 0 {
            break;
        }
        // Network order: the prefix's first bits are the word's first bytes, so compare
        // in host order.
        let mask = if bits == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> bits)
        };
        if u32::from_be(addr[word]) & mask != u32::from_be(network[word]) & mask {
            return false;
        }
    }
    true
}

/// Whether the calling task is in `cgroup` or below it.
#[inline(always)]
fn in_cgroup(cgroup: &CgroupMatch) -> bool {
    // SAFETY: plain helper call; a level deeper than the task's cgroup returns 0, no id.
    unsafe { bpf_get_current_ancestor_cgroup_id(cgroup.level as i32) == cgroup.id }
}

/// Whether fault injection refuses this connect.
#[inline(always)]
pub fn fault_hits(policy: &Policy) -> bool {
    if policy.abort_percent == 0 {
        return false;
    }
    if policy.fault_cgroup.id != 0 && !in_cgroup(&policy.fault_cgroup) {
        return false;
    }
    // SAFETY: plain helper call.
    let draw = unsafe { bpf_get_prandom_u32() } % 100;
    draw < policy.abort_percent
}

/// Refusals counted on the whole service.
#[derive(Clone, Copy)]
pub enum Refusal {
    Denied,
    Aborted,
    Overflow,
}

/// Counts a refusal of service `service_id`.
#[inline(always)]
pub fn count_refusal(service_id: u32, refusal: Refusal) {
    let Some(count) = counts(service_id, WHOLE_SERVICE) else {
        return;
    };
    // SAFETY: a pointer into a map value; concurrent CPUs add atomically.
    unsafe {
        let field = match refusal {
            Refusal::Denied => &raw mut (*count).denied,
            Refusal::Aborted => &raw mut (*count).aborted,
            Refusal::Overflow => &raw mut (*count).overflow,
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, 1);
    }
}

/// The endpoint a new connection to a limited service takes, with the counts it holds;
/// `None` when the service, or every endpoint tried, is full (the caller refuses).
///
/// The drawn endpoint is tried first; if it is full, the other slots of its table chunk
/// (64 consecutive slots, which Maglev fills in a scattered order) are looked at from the
/// drawn one on, and the first endpoint with room takes it, so the second choice still
/// follows the weights. An endpoint with room that holds none of those 64 slots is not
/// found.
#[inline(always)]
pub fn take_room(
    policy: &Policy,
    service_id: u32,
    drawn: &Drawn,
    first: u32,
) -> Option<(u32, Backend)> {
    let service_capped = policy.max_connections != 0;
    if service_capped && !take(service_id, WHOLE_SERVICE, policy.max_connections) {
        count_refusal(service_id, Refusal::Overflow);
        return None;
    }
    let per_endpoint = policy.max_per_endpoint;
    let chosen = if take(service_id, first, per_endpoint) {
        first
    } else {
        count_overflow(service_id, first);
        let other = with_room(service_id, drawn, first, per_endpoint);
        // 0 (none found) or a count another CPU just took: no room after all.
        if other != 0 && take(service_id, other, per_endpoint) {
            other
        } else {
            0
        }
    };
    if chosen != 0 {
        if let Some(backend) = select::backend(chosen) {
            return Some((chosen, backend));
        }
        give_back(service_id, chosen);
    }
    if service_capped {
        give_back(service_id, WHOLE_SERVICE);
    }
    count_refusal(service_id, Refusal::Overflow);
    None
}

/// The `SockGov::counted` bits of a connection `take_room` found room for under `policy`.
#[inline(always)]
pub fn counts_held(policy: &Policy) -> u32 {
    if policy.max_connections != 0 {
        sock_gov::ENDPOINT | sock_gov::SERVICE
    } else {
        sock_gov::ENDPOINT
    }
}

/// The first endpoint other than `full` in the drawn slot's chunk, from the drawn slot on,
/// with fewer than `limit` open connections; 0 if none. Only reads: a loop whose every
/// round ends the same way unless it found one, which the verifier walks in linear time.
#[inline(always)]
fn with_room(service_id: u32, drawn: &Drawn, full: u32, limit: u32) -> u32 {
    let Some(slots) = select::neighbours(drawn) else {
        return 0;
    };
    let base = drawn.slot - drawn.slot % MAGLEV_CHUNK;
    let start = drawn.slot % MAGLEV_CHUNK;
    let mut found = 0;
    for step in 1..MAGLEV_CHUNK {
        let offset = (start + step) % MAGLEV_CHUNK;
        let candidate = slots[offset as usize];
        if base + offset < drawn.table_size
            && candidate != 0
            && candidate != full
            && has_room(service_id, candidate, limit)
        {
            found = candidate;
            break;
        }
    }
    found
}

#[inline(always)]
fn has_room(service_id: u32, backend_id: u32, limit: u32) -> bool {
    let key = GovernKey {
        service_id,
        backend_id,
    };
    // SAFETY: a read of a value other CPUs add to atomically; a stale read only sends the
    // connection to a `take` that may then fail.
    match unsafe { GOVERN.get(&key) } {
        Some(count) => limit == 0 || count.open < i64::from(limit),
        None => true,
    }
}

/// Gives back the counts a connection held (its socket is gone): `counted` in
/// `sock_gov` bits.
#[inline(always)]
pub fn release(service_id: u32, backend_id: u32, counted: u32) {
    if counted & sock_gov::ENDPOINT != 0 {
        give_back(service_id, backend_id);
    }
    if counted & sock_gov::SERVICE != 0 {
        give_back(service_id, WHOLE_SERVICE);
    }
}

/// Takes one of `limit` (0 = no limit) open connections of a count; false if it was full.
#[inline(always)]
fn take(service_id: u32, backend_id: u32, limit: u32) -> bool {
    let Some(count) = counts(service_id, backend_id) else {
        // No room in the map to count: refusing would turn a full map into an outage.
        return true;
    };
    // SAFETY: a pointer into a map value; the add is atomic and returns the count before it.
    // Sequentially consistent on purpose: LLVM's BPF backend emits a relaxed add whose result
    // is used as the plain `lock +=`, which returns nothing (the source register is read
    // back as if it held the old value); only this ordering gets BPF_FETCH.
    let before =
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::SeqCst }>(&raw mut (*count).open, 1) };
    if limit != 0 && before >= i64::from(limit) {
        // SAFETY: as above.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*count).open, -1) };
        return false;
    }
    true
}

#[inline(always)]
fn give_back(service_id: u32, backend_id: u32) {
    let key = GovernKey {
        service_id,
        backend_id,
    };
    if let Some(count) = GOVERN.get_ptr_mut(&key) {
        // SAFETY: as in `take`.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*count).open, -1) };
    }
}

#[inline(always)]
fn count_overflow(service_id: u32, backend_id: u32) {
    if let Some(count) = counts(service_id, backend_id) {
        // SAFETY: as in `take`.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*count).overflow, 1)
        };
    }
}

/// The counts of a (service, endpoint) or a whole service, created at zero when missing.
#[inline(always)]
fn counts(service_id: u32, backend_id: u32) -> Option<*mut GovernCount> {
    let key = GovernKey {
        service_id,
        backend_id,
    };
    if let Some(count) = GOVERN.get_ptr_mut(&key) {
        return Some(count);
    }
    // BPF_NOEXIST: a CPU that lost the race to create it uses the winner's.
    let _ = GOVERN.insert(&key, &GovernCount::default(), 1);
    GOVERN.get_ptr_mut(&key)
}

/// A socket is being released: the count its connection took, if any, goes back.
#[inline(always)]
pub fn released(ctx: &aya_ebpf::programs::SockContext) {
    // SAFETY: the map pointer is the map's own definition (what the loader relocates);
    // sock_release programs may look up storage of the socket they run for, without creating.
    let held = unsafe {
        aya_ebpf::helpers::generated::bpf_sk_storage_get(
            (&raw const crate::maps::SOCK_GOV)
                .cast_mut()
                .cast::<core::ffi::c_void>(),
            ctx.sock.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<weft_common::SockGov>();
    if held.is_null() {
        return;
    }
    // SAFETY: the socket's own storage, valid for this run; release runs once per socket.
    let held = unsafe { &mut *held };
    let counted = held.counted;
    if counted != 0 {
        held.counted = 0;
        release(held.service_id, held.backend_id, counted);
    }
}
