//! ICMP errors about translated flows, translated too: the host that gets one matches it
//! to its socket by the packet quoted inside, so the quote must show the addresses that
//! host used. This is what makes path-MTU discovery (fragmentation needed, packet too big)
//! and port-unreachable work through a service address.
//!
//! The quoted packet's own transport checksum is left as it was: hosts do not check it
//! (and a router may quote too little of a TCP header to hold it); the quoted IPv4 header's
//! checksum and the ICMP checksum are kept right.

use aya_ebpf::programs::TcContext;
use weft_common::{
    Addr, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, flow_dir, tc_counter,
};

use super::{
    flow::{Tuple, peek},
    maps::count,
    nat::{End, L3, L4Checksum, adjust_by_diff, set_address, set_port},
    packet::{Ip, Ipv4Header, Ipv6Header},
};

/// Size of the ICMP header before the quoted packet.
const ICMP_HLEN: usize = 8;

/// What became of an ICMP packet.
pub enum Outcome {
    /// Not an error about a translated flow: leave it.
    Untouched,
    Translated,
    /// A write failed halfway: drop rather than deliver a half-translated error.
    Failed,
}

/// The quoted packet of an ICMP error: its IP layer and ports, and where they are.
struct Quote {
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    protocol: u8,
    /// Offset of the quoted IP header, and of its transport header.
    l3: usize,
    l4: usize,
}

/// Whether this ICMP type is an error that quotes a packet.
#[inline(always)]
fn is_error(family: u8, kind: u8) -> bool {
    if family == FAMILY_V4 {
        // Destination unreachable (fragmentation needed is one), time exceeded.
        kind == 3 || kind == 11
    } else {
        // Destination unreachable, packet too big, time exceeded.
        kind == 1 || kind == 2 || kind == 3
    }
}

#[inline(always)]
fn quote(ctx: &TcContext, ip: &Ip) -> Option<Quote> {
    let kind: u8 = ctx.load(ip.l4).ok()?;
    if !is_error(ip.family, kind) {
        return None;
    }
    let l3 = ip.l4 + ICMP_HLEN;
    let (src, dst, protocol, l4) = if ip.family == FAMILY_V4 {
        let inner: Ipv4Header = ctx.load(l3).ok()?;
        let ihl = (inner.version_ihl & 0x0f) as usize * 4;
        if inner.version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        (
            [inner.src, 0, 0, 0],
            [inner.dst, 0, 0, 0],
            inner.protocol,
            l3 + ihl,
        )
    } else {
        let inner: Ipv6Header = ctx.load(l3).ok()?;
        (inner.src, inner.dst, inner.next_header, l3 + 40)
    };
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    // The first 8 bytes of the transport header are always quoted: the ports are there.
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    Some(Quote {
        src,
        dst,
        sport: ports[0],
        dport: ports[1],
        protocol,
        l3,
        l4,
    })
}

/// The ICMP checksum: ICMPv6's covers a pseudo-header with the outer addresses, ICMPv4's
/// does not.
#[inline(always)]
fn icmp_checksum(ip: &Ip) -> L4Checksum {
    L4Checksum {
        offset: ip.l4 + 2,
        protocol: if ip.family == FAMILY_V4 {
            PROTO_ICMP
        } else {
            PROTO_ICMPV6
        },
        pseudo_header: ip.family != FAMILY_V4,
    }
}

/// Rewrites one address of the quoted packet, keeping the quoted IPv4 header's checksum
/// (which the ICMP checksum covers along with the address, so the two changes cancel out
/// there) or, for IPv6, the ICMPv6 checksum right.
#[inline(always)]
fn set_quoted_address(
    ctx: &TcContext,
    ip: &Ip,
    quote: &Quote,
    end: End,
    old: &Addr,
    new: &Addr,
) -> bool {
    if ip.family == FAMILY_V4 {
        // The quoted header's checksum is corrected like any IPv4 header's; no transport
        // checksum is touched.
        return set_address(ctx, quote.l3, FAMILY_V4, end, old, new, None);
    }
    if !set_address(ctx, quote.l3, ip.family, end, old, new, None) {
        return false;
    }
    adjust_by_diff(ctx, icmp_checksum(ip).offset, old, new, 0)
}

/// The tuple of the packets that answer the quoted one (its ends swapped): how the flow
/// entry an error is about is keyed.
#[inline(always)]
fn answering(quote: &Quote, family: u8) -> Tuple {
    Tuple {
        src: quote.dst,
        dst: quote.src,
        sport: quote.dport,
        dport: quote.sport,
        protocol: quote.protocol,
        family,
    }
}

/// At ingress: an error addressed to a service address, about a reply the client was sent
/// with that address as its source. Sent on to the endpoint, showing the endpoint's
/// address and port.
#[inline(always)]
pub fn from_client_side(ctx: &TcContext, ip: &Ip) -> Outcome {
    let Some(quote) = quote(ctx, ip) else {
        return Outcome::Untouched;
    };
    // The quoted reply went from the service to the client; the flow's forward entry is
    // keyed the other way round.
    let flow = answering(&quote, ip.family);
    let Some((endpoint, endpoint_port)) = peek(&flow, flow_dir::FORWARD) else {
        count(tc_counter::ICMP_UNMATCHED);
        return Outcome::Untouched;
    };
    let sum = icmp_checksum(ip);
    let ok = set_address(
        ctx,
        L3,
        ip.family,
        End::Destination,
        &ip.dst,
        &endpoint,
        Some(sum),
    ) && set_quoted_address(ctx, ip, &quote, End::Source, &quote.src, &endpoint)
        && set_port(
            ctx,
            quote.l4,
            quote.sport,
            endpoint_port,
            Some(sum_without_pseudo(sum)),
        );
    finish(ok)
}

/// At egress: an error on its way to a client about a request the client sent to a
/// service address (fragmentation needed on the endpoint's side, port unreachable from
/// the endpoint). The quote shows the service address again; the error's source too, if
/// the endpoint itself sent it.
#[inline(always)]
pub fn to_client_side(ctx: &TcContext, ip: &Ip) -> Outcome {
    let Some(quote) = quote(ctx, ip) else {
        return Outcome::Untouched;
    };
    // The quoted request went from the client to the endpoint; the reverse entry is keyed
    // as the endpoint's replies travel.
    let flow = answering(&quote, ip.family);
    let Some((service, service_port)) = peek(&flow, flow_dir::REVERSE) else {
        return Outcome::Untouched;
    };
    let sum = icmp_checksum(ip);
    let mut ok = set_quoted_address(ctx, ip, &quote, End::Destination, &quote.dst, &service)
        && set_port(
            ctx,
            quote.l4 + 2,
            quote.dport,
            service_port,
            Some(sum_without_pseudo(sum)),
        );
    if ok && ip.src == quote.dst {
        ok = set_address(
            ctx,
            L3,
            ip.family,
            End::Source,
            &ip.src,
            &service,
            Some(sum),
        );
    }
    finish(ok)
}

/// A port inside the ICMP payload changes the ICMP checksum as plain data.
#[inline(always)]
fn sum_without_pseudo(sum: L4Checksum) -> L4Checksum {
    L4Checksum {
        pseudo_header: false,
        ..sum
    }
}

#[inline(always)]
fn finish(ok: bool) -> Outcome {
    if ok {
        count(tc_counter::ICMP_TRANSLATED);
        Outcome::Translated
    } else {
        Outcome::Failed
    }
}
