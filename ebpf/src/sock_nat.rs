//! A socket's own record of its translations (`WEFT_SOCKNAT_V1`, socket storage the kernel
//! frees with the socket). Every translated socket notes each reverse-NAT entry it creates,
//! so its release removes exactly those — UDP sockets have no close to follow, and a TCP
//! connect can fail before its SYN, when sock_ops never sees it — and a reply whose shared
//! entry the LRU evicted still finds the service address here.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::{SockAddrContext, SockContext},
};
use weft_common::{
    Addr, PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue, SOCK_NAT_SLOTS, SockNat, SockNatEntry,
    counter,
};

use crate::{
    addr, diag,
    maps::{REVNAT, SOCK_NAT, count},
    sock_addr::Peer,
    sock_udp,
};

/// Notes a translation in the socket's record: always when the shared entry is new or
/// changed (`fresh`); otherwise only if the socket has no record yet (its entry predates
/// the record: written by an earlier release of weft, or when the record could not be
/// allocated), so that its release still removes it.
#[inline(always)]
pub fn note(ctx: &SockAddrContext, peer: &Peer, translation: &RevNatValue, fresh: bool) {
    if fresh || SOCK_NAT.get_ptr_mut(ctx).is_null() {
        remember(ctx, peer, translation);
    }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, peer: &Peer, translation: &RevNatValue) {
    let record = SOCK_NAT.get_or_insert_ptr_mut(ctx, None);
    if record.is_null() {
        // No memory for the record: the entry then lives until the LRU evicts it.
        diag::write_failed(
            "WEFT_SOCKNAT_V1",
            "the socket's reverse-NAT entry outlives it until evicted",
            0,
        );
        return;
    }
    // SAFETY: the kernel returned this socket's storage; it stays valid for this run.
    let record = unsafe { &mut *record };
    let entry = SockNatEntry {
        endpoint: peer.endpoint,
        endpoint_port: peer.endpoint_port,
        family: peer.family.tag(),
        _pad: 0,
        service: *translation,
    };
    let mut slot = record.written as usize % SOCK_NAT_SLOTS;
    let mut known = false;
    for (i, existing) in record.entries.iter().enumerate() {
        if i < record.written as usize && same_endpoint(existing, &entry) {
            slot = i;
            known = true;
        }
    }
    let udp = addr::protocol(ctx) == u32::from(PROTO_UDP);
    // SAFETY: the context's socket, a fixed-offset load the verifier checks.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // Past SOCK_NAT_SLOTS endpoints the oldest slot is reused, and its shared entry goes
    // with it: replies from that endpoint then show its own address (documented), but no
    // entry outlives the record that would remove it.
    if !known && record.written as usize >= SOCK_NAT_SLOTS {
        let old = record.entries[slot];
        let key = RevNatKey::new(peer.cookie, old.endpoint, old.endpoint_port, old.family);
        let _ = REVNAT.remove(&key);
        if udp {
            sock_udp::reused(sk, peer.cookie, slot, &old);
        }
    }
    record.entries[slot] = entry;
    if !known {
        record.written = record.written.wrapping_add(1);
        if udp {
            sock_udp::opened(sk, peer.cookie, slot, &entry);
        }
    }
}

/// The service address behind `peer`, from the socket's own record: the fallback when the
/// shared reverse-NAT entry is gone.
#[inline(always)]
pub fn recall(ctx: &SockAddrContext, peer: &Addr, port: u16, family: u8) -> Option<RevNatValue> {
    let record = SOCK_NAT.get_ptr_mut(ctx);
    if record.is_null() {
        return None;
    }
    // SAFETY: as in `remember`.
    let record = unsafe { &*record };
    let wanted = SockNatEntry {
        endpoint: *peer,
        endpoint_port: port,
        family,
        ..SockNatEntry::default()
    };
    let mut found = None;
    for (i, entry) in record.entries.iter().enumerate() {
        if i < record.written as usize && same_endpoint(entry, &wanted) {
            found = Some(entry.service);
        }
    }
    found
}

const TCP_CLOSE: u32 = 7;

/// The socket is being released: its reverse-NAT entries go with it. An entry already gone
/// was evicted from the full LRU while the socket lived, and is counted — unless this is a
/// TCP socket that already reached CLOSE, whose entry sock_ops removed then.
#[inline(always)]
pub fn forget(ctx: &SockContext) {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: fixed-offset context loads the verifier checks.
    let (protocol, state) = unsafe { ((*sk).protocol, (*sk).state) };
    let closed_tcp = protocol == u32::from(PROTO_TCP) && state == TCP_CLOSE;
    // SAFETY: the map pointer is the map's own definition (what the loader relocates);
    // sock_release programs may look up storage of the socket they run for, without creating.
    let record = unsafe {
        bpf_sk_storage_get(
            (&raw const SOCK_NAT).cast_mut().cast::<c_void>(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<SockNat>();
    if record.is_null() {
        return;
    }
    // SAFETY: as in `remember`; plain helper call valid for cgroup sock programs.
    let (record, cookie) = unsafe { (&*record, bpf_get_socket_cookie(ctx.as_ptr())) };
    for (i, entry) in record.entries.iter().enumerate() {
        if i >= record.written as usize {
            break;
        }
        let key = RevNatKey::new(cookie, entry.endpoint, entry.endpoint_port, entry.family);
        if REVNAT.remove(&key).is_err() && !closed_tcp {
            count(counter::REVNAT_EVICTED);
        }
    }
    if protocol == u32::from(PROTO_UDP) {
        sock_udp::released(sk, cookie, record);
    }
}

#[inline(always)]
fn same_endpoint(a: &SockNatEntry, b: &SockNatEntry) -> bool {
    a.endpoint == b.endpoint && a.endpoint_port == b.endpoint_port && a.family == b.family
}
