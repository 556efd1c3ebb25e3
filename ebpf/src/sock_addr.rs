//! Forward translation at connect and sendmsg: service address → chosen endpoint.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use weft_common::{
    Addr, ConnRecord, FAMILY_V4, PROTO_TCP, PROTO_UDP, Policy, RevNatKey, RevNatValue, ServiceKey,
    SockGov, event,
};

use crate::{
    addr::{self, Family},
    diag, events,
    govern::{self, Refusal},
    maps::{REVNAT, SOCK_GOV},
    select::{self, Choice, Chosen, Drawn},
    sock_nat,
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
/// What a client the service's `allow` rules refuse sees: "permission denied", told apart
/// from the EPERM any other cgroup or netfilter refusal gives.
const EACCES: i32 = 13;

/// Which hook runs: fault injection and circuit breaking act on connects only (an
/// unconnected UDP socket's datagrams are not connections).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

/// Handles connect4/6 and sendmsg4/6. Always lets non-service traffic through unchanged.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, family: Family, hook: Hook) -> i32 {
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
    let mut drawn = Drawn::default();
    match select::draw(&key, entropy, &mut drawn) {
        Choice::NotService => ALLOW,
        Choice::NoEndpoint => {
            diag::refused(&key, "the service has no usable endpoint");
            refuse(ECONNREFUSED)
        }
        Choice::Endpoint(Chosen {
            mut backend,
            mut backend_id,
            service_id,
        }) => {
            if let Some(policy) = govern::policy(service_id) {
                let request = Request {
                    cookie,
                    key: &key,
                    service_id,
                    hook,
                    tcp: protocol == PROTO_TCP as u32,
                };
                match governed(ctx, policy, &request, &drawn, backend_id) {
                    Governed::Refused(errno) => return refuse(errno),
                    Governed::Endpoint(id, chosen) => {
                        backend_id = id;
                        backend = chosen;
                    }
                    Governed::AsDrawn => {}
                }
            }
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
            diag::chosen(&key, &backend.addr, backend.port, backend_id);
            ALLOW
        }
    }
}

/// Refuses the connect or datagram with `errno`.
#[inline(always)]
fn refuse(errno: i32) -> i32 {
    // SAFETY: set_retval is allowed for connect and sendmsg hooks (Linux >= 5.18); without it
    // the caller would see EPERM instead of the errno meant.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

/// A connect or datagram to a governed service.
struct Request<'a> {
    cookie: u64,
    key: &'a ServiceKey,
    service_id: u32,
    hook: Hook,
    tcp: bool,
}

enum Governed {
    /// Refuse with this errno.
    Refused(i32),
    /// Circuit breaking chose this endpoint (the drawn one was full).
    Endpoint(u32, weft_common::Backend),
    /// Go where the draw said.
    AsDrawn,
}

/// Applies a service's governance: `allow`, then `fault`, then `limits`.
#[inline(always)]
fn governed(
    ctx: &SockAddrContext,
    policy: &Policy,
    request: &Request,
    drawn: &Drawn,
    backend_id: u32,
) -> Governed {
    if !govern::task_allowed(policy) {
        govern::count_refusal(request.service_id, Refusal::Denied);
        diag::refused(
            request.key,
            "no allow rule of the service matches the client",
        );
        report_refusal(request, event::DENIED);
        return Governed::Refused(EACCES);
    }
    if request.hook != Hook::Connect {
        return Governed::AsDrawn;
    }
    if govern::fault_hits(policy) {
        govern::count_refusal(request.service_id, Refusal::Aborted);
        diag::refused(request.key, "aborted by the service's fault injection");
        report_refusal(request, event::ABORTED);
        return Governed::Refused(policy.abort_errno as i32);
    }
    if !request.tcp || !policy.limited() {
        return Governed::AsDrawn;
    }
    let held = SOCK_GOV.get_or_insert_ptr_mut(ctx, None);
    if held.is_null() {
        // No memory for the socket's record: its count could never be given back, so it
        // takes none.
        diag::write_failed(
            "WEFT_SOCKGOV_V1",
            "the connection is not counted against its limits",
            0,
        );
        return Governed::AsDrawn;
    }
    // SAFETY: the kernel returned this socket's storage; it stays valid for this run.
    let held = unsafe { &mut *held };
    if held.counted != 0 {
        // connect() again on a socket already connecting (the kernel answers EALREADY or
        // EISCONN): it keeps the count it holds.
        return Governed::AsDrawn;
    }
    match govern::take_room(policy, request.service_id, drawn, backend_id) {
        Some((id, backend)) => {
            *held = SockGov {
                service_id: request.service_id,
                backend_id: id,
                counted: govern::counts_held(policy),
                _pad: 0,
            };
            if id == backend_id {
                Governed::AsDrawn
            } else {
                Governed::Endpoint(id, backend)
            }
        }
        None => {
            diag::refused(request.key, "every endpoint is at its connection limit");
            report_refusal(request, event::OVERFLOW);
            Governed::Refused(ECONNREFUSED)
        }
    }
}

/// Tells `weft conns --follow` about a refused connect.
#[inline(always)]
fn report_refusal(request: &Request, kind: u8) {
    let record = ConnRecord {
        cookie: request.cookie,
        dst_addr: request.key.addr,
        dst_port: request.key.port,
        family: request.key.family,
        service_id: request.service_id,
        ..ConnRecord::default()
    };
    events::emit_refusal(record, kind);
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
    if let Err(error) = REVNAT.insert(&key, translation, 0) {
        diag::write_failed(
            "WEFT_REVNAT_V1",
            "replies and getpeername show the endpoint, not the service",
            error.into(),
        );
    }
    true
}
