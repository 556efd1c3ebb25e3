//! Accounting of translated UDP sockets: UDP has no connection for sock_ops to follow, so a
//! socket's traffic with each endpoint it was translated to is its "connection". It opens
//! with the socket's first datagram to the endpoint (an event, at translation), its
//! datagrams and payload bytes are counted by a cgroup skb program each way into socket
//! storage (`WEFT_SOCKUDP_V1`, slot for slot beside the socket's `SockNat` record), and it
//! closes when the socket is released (an event with the totals).

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_sk_storage_get},
    programs::SkBuffContext,
};
use weft_common::{
    Addr, ConnRecord, PROTO_UDP, SOCK_NAT_SLOTS, SockNat, SockNatEntry, SockUdp, UdpTraffic,
    conn_flags, event,
};

use crate::{
    addr,
    events::{connection_stats_off, emit},
    maps::{SOCK_NAT, SOCK_UDP},
};

/// Which way a packet crosses the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

/// A cgroup skb program's verdict that lets the packet through.
const PASS: i32 = 1;

/// A UDP socket was translated to an endpoint it had not been before, into `slot` of its
/// record: its traffic there starts (and a slot reused past `SOCK_NAT_SLOTS` endpoints ends
/// the traffic it held first).
#[inline(always)]
pub fn opened(sk: *mut bpf_sock, cookie: u64, slot: usize, entry: &SockNatEntry) {
    if connection_stats_off() || slot >= SOCK_NAT_SLOTS {
        return;
    }
    let storage = storage::<_, SockUdp>(&raw const SOCK_UDP, sk, true);
    if storage.is_null() {
        return;
    }
    // SAFETY: the kernel returned this socket's storage; slot is bounded above.
    let traffic = unsafe { &mut (*storage).slots[slot] };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    *traffic = UdpTraffic {
        opened_ns: now,
        ..UdpTraffic::default()
    };
    emit(&record(cookie, entry, traffic, now), event::ESTABLISHED);
}

/// A translated socket's slot is reused for another endpoint: what it held closes.
#[inline(always)]
pub fn reused(sk: *mut bpf_sock, cookie: u64, slot: usize, previous: &SockNatEntry) {
    if slot >= SOCK_NAT_SLOTS {
        return;
    }
    let storage = storage::<_, SockUdp>(&raw const SOCK_UDP, sk, false);
    if storage.is_null() {
        return;
    }
    // SAFETY: as in `opened`.
    close(cookie, previous, unsafe { &(*storage).slots[slot] });
}

/// The socket is released: the traffic of every endpoint it was translated to closes.
#[inline(always)]
pub fn released(sk: *mut bpf_sock, cookie: u64, nat: &SockNat) {
    let storage = storage::<_, SockUdp>(&raw const SOCK_UDP, sk, false);
    if storage.is_null() {
        return;
    }
    // SAFETY: as in `opened`.
    let udp = unsafe { &*storage };
    for (i, entry) in nat.entries.iter().enumerate() {
        if i >= nat.written as usize {
            break;
        }
        close(cookie, entry, &udp.slots[i]);
    }
}

#[inline(always)]
fn close(cookie: u64, entry: &SockNatEntry, traffic: &UdpTraffic) {
    // A slot opened while statistics were off has nothing to report.
    if traffic.opened_ns == 0 || connection_stats_off() {
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    emit(&record(cookie, entry, traffic, now), event::CLOSED);
}

#[inline(always)]
fn record(cookie: u64, entry: &SockNatEntry, traffic: &UdpTraffic, now: u64) -> ConnRecord {
    ConnRecord {
        cookie,
        start_ns: traffic.opened_ns,
        update_ns: now,
        bytes_acked: traffic.bytes_out,
        bytes_received: traffic.bytes_in,
        dst_addr: entry.endpoint,
        dst_port: entry.endpoint_port,
        family: entry.family,
        service_id: entry.service.service_id,
        backend_id: entry.service.backend_id,
        segs_out: saturate(traffic.datagrams_out),
        segs_in: saturate(traffic.datagrams_in),
        flags: conn_flags::UDP,
        ..ConnRecord::default()
    }
}

#[inline(always)]
fn saturate(n: u64) -> u32 {
    if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    }
}

/// cgroup skb, both ways: adds a datagram of a translated UDP socket to the slot of the
/// endpoint it goes to or comes from. Everything else (TCP, untranslated sockets, other
/// peers) leaves after a socket-storage lookup at most; the packet always passes.
#[inline(always)]
pub fn count(ctx: &SkBuffContext, direction: Direction) -> i32 {
    if connection_stats_off() {
        return PASS;
    }
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: fixed-offset context loads the verifier checks; `sk` may be null.
    let (sk, len, gso_segs) = unsafe {
        (
            read_volatile(&raw const (*skb).__bindgen_anon_2.sk),
            read_volatile(&raw const (*skb).len),
            read_volatile(&raw const (*skb).gso_segs),
        )
    };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: plain helper call; returns null for request and time-wait sockets.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    // SAFETY: a full socket the helper returned; fixed-offset load.
    if sk.is_null() || unsafe { (*sk).protocol } != u32::from(PROTO_UDP) {
        return PASS;
    }
    let nat = storage::<_, SockNat>(&raw const SOCK_NAT, sk, false);
    if nat.is_null() {
        return PASS;
    }
    let Some(datagram) = Datagram::read(ctx, direction, len) else {
        return PASS;
    };
    // SAFETY: this socket's storage, as returned by the kernel.
    let Some(slot) = slot_of(unsafe { &*nat }, &datagram) else {
        return PASS;
    };
    let udp = storage::<_, SockUdp>(&raw const SOCK_UDP, sk, false);
    if udp.is_null() || slot >= SOCK_NAT_SLOTS {
        return PASS;
    }
    let datagrams = u64::from(if gso_segs == 0 { 1 } else { gso_segs });
    // SAFETY: storage of this socket; egress and ingress may run at once on two CPUs, so the
    // adds are atomic.
    unsafe {
        let traffic = &raw mut (*udp).slots[slot];
        let (count, bytes) = match direction {
            Direction::Egress => (
                &raw mut (*traffic).datagrams_out,
                &raw mut (*traffic).bytes_out,
            ),
            Direction::Ingress => (
                &raw mut (*traffic).datagrams_in,
                &raw mut (*traffic).bytes_in,
            ),
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, datagrams);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, datagram.payload);
    }
    PASS
}

/// The peer of a datagram (destination going out, source coming in) and its payload size.
struct Datagram {
    /// The peer's address as a v4 socket would see it ([a, 0, 0, 0]) or as a v6 one.
    peer: Addr,
    /// Set for an IPv4 packet: a v6 socket's record holds its v4-mapped form.
    v4: bool,
    /// Network byte order.
    peer_port: u16,
    payload: u64,
}

const UDP_HEADER: u32 = 8;
const IPV6_HEADER: u32 = 40;

impl Datagram {
    /// cgroup skb programs see the packet from its IP header, both ways.
    #[inline(always)]
    fn read(ctx: &SkBuffContext, direction: Direction, len: u32) -> Option<Datagram> {
        let first: u8 = ctx.load(0).ok()?;
        let outgoing = direction == Direction::Egress;
        let (peer, v4, l4) = match first >> 4 {
            4 => {
                let header = u32::from(first & 0x0f) * 4;
                // Later fragments carry no ports: they are not counted.
                let fragment: u16 = ctx.load(6).ok()?;
                if header < 20 || u16::from_be(fragment) & 0x1fff != 0 {
                    return None;
                }
                let at = if outgoing { 16 } else { 12 };
                let ip: u32 = ctx.load(at).ok()?;
                ([ip, 0, 0, 0], true, header)
            }
            6 => {
                // Extension headers before UDP: not counted (rare for UDP clients).
                let next: u8 = ctx.load(6).ok()?;
                if next != PROTO_UDP {
                    return None;
                }
                let at = if outgoing { 24 } else { 8 };
                let ip: [u32; 4] = ctx.load(at).ok()?;
                (ip, false, IPV6_HEADER)
            }
            _ => return None,
        };
        let port_at = (l4 + if outgoing { 2 } else { 0 }) as usize;
        let peer_port: u16 = ctx.load(port_at).ok()?;
        Some(Datagram {
            peer,
            v4,
            peer_port,
            payload: u64::from(len.saturating_sub(l4 + UDP_HEADER)),
        })
    }
}

/// The slot of the record whose endpoint is the datagram's peer.
#[inline(always)]
fn slot_of(nat: &SockNat, datagram: &Datagram) -> Option<usize> {
    let mapped = addr::v4_mapped(datagram.peer[0]);
    let mut found = None;
    for (i, entry) in nat.entries.iter().enumerate() {
        if i >= nat.written as usize {
            break;
        }
        let same_addr =
            entry.endpoint == datagram.peer || (datagram.v4 && entry.endpoint == mapped);
        if same_addr && entry.endpoint_port == datagram.peer_port {
            found = Some(i);
        }
    }
    found
}

/// This socket's storage in `map` (created if asked), or null.
#[inline(always)]
fn storage<M, T>(map: *const M, sk: *mut bpf_sock, create: bool) -> *mut T {
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: `map` is a socket-storage map definition (what the loader relocates) and `sk`
    // a socket the kernel handed to this program.
    unsafe {
        bpf_sk_storage_get(
            map.cast_mut().cast::<c_void>(),
            sk.cast(),
            core::ptr::null_mut(),
            flags,
        )
    }
    .cast::<T>()
}
