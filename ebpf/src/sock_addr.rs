//! Forward translation at connect and sendmsg: service address → chosen endpoint.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use weft_common::{PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue, ServiceKey};

use crate::{
    addr::{self, Family},
    maps::REVNAT,
    select::{self, Choice},
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Handles connect4/6 and sendmsg4/6. Always lets non-service traffic through unchanged.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, family: Family) -> i32 {
    let protocol = addr::protocol(ctx);
    if protocol != PROTO_TCP as u32 && protocol != PROTO_UDP as u32 {
        return ALLOW;
    }
    let (dst, port) = addr::read(ctx, family);
    let key = ServiceKey {
        addr: dst,
        port,
        protocol: protocol as u8,
        family: family.tag(),
    };
    // SAFETY: plain helper calls valid in every sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // TCP: each connection draws its own slot. UDP: the socket is the session, so all its
    // datagrams hash to the same slot (the peer a UDP client talks to must not change
    // between its request and the next one).
    let entropy = if protocol == PROTO_TCP as u32 {
        // SAFETY: as above.
        unsafe { bpf_get_prandom_u32() }
    } else {
        select::mix_cookie(cookie)
    };
    match select::choose(&key, entropy) {
        Choice::NotService => ALLOW,
        Choice::NoEndpoint => {
            // SAFETY: set_retval is allowed for connect and sendmsg hooks (Linux >= 5.18);
            // without it the caller would see EPERM instead of a plain refusal.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
        Choice::Endpoint {
            backend,
            backend_id,
            service_id,
        } => {
            remember_service(cookie, &backend, &key, service_id, backend_id);
            addr::write(ctx, family, &backend.addr, backend.port);
            ALLOW
        }
    }
}

/// Records which service address this socket meant, so replies and getpeername can show it.
#[inline(always)]
fn remember_service(
    cookie: u64,
    backend: &weft_common::Backend,
    service: &ServiceKey,
    service_id: u32,
    backend_id: u32,
) {
    let key = RevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        family: backend.family,
        _pad: [0; 5],
    };
    let value = RevNatValue {
        addr: service.addr,
        port: service.port,
        _pad: 0,
        service_id,
        backend_id,
    };
    // A UDP socket sends many datagrams: skip the write when nothing changed.
    if let Some(existing) = REVNAT.get_ptr(&key) {
        // SAFETY: pointer into an LRU element, read once; a stale read only costs a rewrite.
        if unsafe { *existing } == value {
            return;
        }
    }
    // A full LRU evicts its oldest entry; failure here only loses the reverse mapping.
    let _ = REVNAT.insert(&key, &value, 0);
}
