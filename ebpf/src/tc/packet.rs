//! Reading a packet's headers at TC: Ethernet, then IPv4 or IPv6, then the ports. Headers
//! are copied to the stack with `bpf_skb_load_bytes` (which fails cleanly past the end of
//! the packet, so a truncated packet is an error here, never a wrong read).

use aya_ebpf::programs::TcContext;
use weft_common::{Addr, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Ethernet: the TC programs attach to Ethernet-like interfaces (veth, physical NICs).
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// IPv4 header flags and fragment offset (host order after `from_be`).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// TCP header flag bits (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Header {
    pub version_class_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Addr,
    pub dst: Addr,
}

/// Where an IPv4 packet stands among the fragments of its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the ports.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// The IP layer of a packet.
#[derive(Clone, Copy)]
pub struct Ip {
    pub family: u8,
    pub protocol: u8,
    pub src: Addr,
    pub dst: Addr,
    /// Offset of the transport header.
    pub l4: usize,
    pub fragment: Fragment,
    /// IPv4 identification (network order), for fragments.
    pub id: u16,
}

/// Why a packet could not be read as IP (to a service address, these are dropped).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not IPv4 or IPv6 at all: always passed.
    NotIp,
    /// Shorter than its headers say.
    Truncated,
    /// An IPv4 header length below 20 bytes, or a version that contradicts the EtherType.
    BadHeader,
    /// IPv6 with extension headers before the transport header.
    Ipv6Extension,
}

/// Reads the IP header after the Ethernet header.
#[inline(always)]
pub fn ip(ctx: &TcContext) -> Result<Ip, (Malformed, Addr, u8)> {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    match ethertype {
        ETH_P_IP => ipv4(ctx, ETH_HLEN),
        ETH_P_IPV6 => ipv6(ctx, ETH_HLEN),
        _ => Err((Malformed::NotIp, [0; 4], 0)),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, l3: usize) -> Result<Ip, (Malformed, Addr, u8)> {
    let header: Ipv4Header = ctx
        .load(l3)
        .map_err(|_| (Malformed::Truncated, [0; 4], FAMILY_V4))?;
    let dst = [header.dst, 0, 0, 0];
    let ihl = (header.version_ihl & 0x0f) as usize * 4;
    if header.version_ihl >> 4 != 4 || ihl < 20 {
        return Err((Malformed::BadHeader, dst, FAMILY_V4));
    }
    let total = u16::from_be(header.total_len) as usize;
    if total < ihl || l3 + total > ctx.len() as usize {
        return Err((Malformed::Truncated, dst, FAMILY_V4));
    }
    let frag = u16::from_be(header.frag_off);
    let fragment = if frag & IP_OFFSET != 0 {
        Fragment::Later
    } else if frag & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    Ok(Ip {
        family: FAMILY_V4,
        protocol: header.protocol,
        src: [header.src, 0, 0, 0],
        dst,
        // IP options are allowed: the transport header starts after them.
        l4: l3 + ihl,
        fragment,
        id: header.id,
    })
}

#[inline(always)]
fn ipv6(ctx: &TcContext, l3: usize) -> Result<Ip, (Malformed, Addr, u8)> {
    let header: Ipv6Header = ctx
        .load(l3)
        .map_err(|_| (Malformed::Truncated, [0; 4], FAMILY_V6))?;
    if u32::from_be(header.version_class_flow) >> 28 != 6 {
        return Err((Malformed::BadHeader, header.dst, FAMILY_V6));
    }
    match header.next_header {
        PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {}
        // Hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6:
        // the transport header is further on, behind a chain weft does not walk.
        0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 => {
            return Err((Malformed::Ipv6Extension, header.dst, FAMILY_V6));
        }
        _ => {}
    }
    let payload = u16::from_be(header.payload_len) as usize;
    if l3 + 40 + payload > ctx.len() as usize {
        return Err((Malformed::Truncated, header.dst, FAMILY_V6));
    }
    Ok(Ip {
        family: FAMILY_V6,
        protocol: header.next_header,
        src: header.src,
        dst: header.dst,
        l4: l3 + 40,
        fragment: Fragment::None,
        id: 0,
    })
}

/// The ports of a TCP or UDP header at `l4` (network order), and the TCP flags (0 for UDP).
#[inline(always)]
pub fn ports(ctx: &TcContext, l4: usize, protocol: u8) -> Option<(u16, u16, u8)> {
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    let flags = if protocol == PROTO_TCP {
        // Also proves the whole fixed TCP header is there (20 bytes).
        let tail: [u8; 8] = ctx.load(l4 + 12).ok()?;
        tail[1]
    } else {
        // The whole UDP header (8 bytes).
        let _: [u8; 8] = ctx.load(l4).ok()?;
        0
    };
    Some((ports[0], ports[1], flags))
}

/// Offset of the transport checksum within its header.
#[inline(always)]
pub const fn checksum_offset(protocol: u8) -> usize {
    match protocol {
        PROTO_TCP => 16,
        // UDP, ICMP and ICMPv6 all keep it at 6 and 2: callers pass the right protocol.
        PROTO_UDP => 6,
        PROTO_ICMP | PROTO_ICMPV6 => 2,
        _ => 0,
    }
}
