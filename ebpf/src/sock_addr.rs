//! Forward translation at connect and sendmsg: service address → chosen endpoint.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use weft_common::{Addr, FAMILY_V4, PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue, ServiceKey};

use crate::{
    addr::{self, Family},
    maps::REVNAT,
    select::{self, Choice},
    sock_nat,
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
    // An IPv6 socket reaching an IPv4 service uses its v4-mapped address (::ffff:a.b.c.d);
    // dual-stack runtimes (Java, Node) do this for every IPv4 destination.
    let mapped = family == Family::V6 && addr::is_v4_mapped(&dst);
    let key = ServiceKey {
        addr: if mapped { [dst[3], 0, 0, 0] } else { dst },
        port,
        protocol: protocol as u8,
        family: if mapped { FAMILY_V4 } else { family.tag() },
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
            let endpoint = if mapped {
                addr::v4_mapped(backend.addr[0])
            } else {
                backend.addr
            };
            // Replies and getpeername are seen in the socket's own family: an IPv6 socket that
            // came through a v4 hook (UDP to a v4-mapped or AF_INET address) is answered
            // through recvmsg6, from the v4-mapped endpoint.
            let seen_as_v6 = family == Family::V4 && addr::socket_is_v6(ctx);
            let peer = if seen_as_v6 {
                Peer {
                    cookie,
                    family: Family::V6,
                    endpoint: addr::v4_mapped(backend.addr[0]),
                    endpoint_port: backend.port,
                    service: addr::v4_mapped(dst[0]),
                    service_port: port,
                }
            } else {
                Peer {
                    cookie,
                    family,
                    endpoint,
                    endpoint_port: backend.port,
                    service: dst,
                    service_port: port,
                }
            };
            let translation = RevNatValue {
                addr: peer.service,
                port: peer.service_port,
                _pad: 0,
                service_id,
                backend_id,
            };
            let fresh = remember_service(&peer, &translation);
            // The socket notes its entries, so its release removes exactly those (and a TCP
            // connect that fails before its SYN, with no close to follow, leaks none).
            sock_nat::note(ctx, &peer, &translation, fresh);
            addr::write(ctx, family, &endpoint, backend.port);
            ALLOW
        }
    }
}

/// A translated destination, in the socket's own address family.
pub struct Peer {
    pub cookie: u64,
    pub family: Family,
    pub endpoint: Addr,
    pub endpoint_port: u16,
    pub service: Addr,
    pub service_port: u16,
}

/// Records which service address this socket meant, so replies and getpeername can show it.
/// True if the entry was new or changed.
#[inline(always)]
fn remember_service(peer: &Peer, translation: &RevNatValue) -> bool {
    let key = RevNatKey::new(
        peer.cookie,
        peer.endpoint,
        peer.endpoint_port,
        peer.family.tag(),
    );
    // A UDP socket sends many datagrams: skip the write when nothing changed.
    if let Some(existing) = REVNAT.get_ptr(&key) {
        // SAFETY: pointer into an LRU element, read once; a stale read only costs a rewrite.
        if unsafe { *existing } == *translation {
            return false;
        }
    }
    // A full LRU evicts its least recently used entry; failure here only loses the reverse
    // mapping (the socket's own record still has it, if it keeps one).
    let _ = REVNAT.insert(&key, translation, 0);
    true
}
