//! The TC path: per-packet service translation for traffic the socket hooks never see
//! (forwarded from other hosts, network namespaces or VMs). On each interface the operator
//! names, ingress translates a client's packets to a service address into packets to the
//! flow's endpoint, and egress translates the endpoint's replies back, so the client only
//! ever sees the service address. The endpoint is picked by the same Maglev choice as the
//! socket path, from a hash of the flow, and kept in a conntrack map for the flow's life.
//!
//! Packets the programs do not translate go on untouched (`TC_ACT_UNSPEC`: other programs
//! and filters still see them), except packets to a service address that cannot be
//! translated correctly, which are dropped and counted: never a wrong rewrite.

mod flow;
mod icmp;
pub mod maps;
mod nat;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use weft_common::{
    FragKey, FragPorts, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, flow_dir, tc_counter,
};

use self::{
    flow::{Forward, Tuple},
    maps::{FRAGS, count, is_vip},
    nat::{End, L3, L4Checksum, set_address, set_port},
    packet::{Fragment, Ip, Malformed, checksum_offset},
};

const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

/// Ingress: a client's packet to a service address becomes a packet to its flow's endpoint.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    let ip = match packet::ip(ctx) {
        Ok(ip) => ip,
        Err((Malformed::NotIp, _, _)) => return PASS,
        Err((why, dst, family)) => {
            // Only what was meant for a service is weft's to drop.
            if family == 0 || !is_vip(&dst, family) {
                return PASS;
            }
            count(match why {
                Malformed::Ipv6Extension => tc_counter::IPV6_EXTENSION,
                Malformed::BadHeader => tc_counter::BAD_HEADER,
                _ => tc_counter::TRUNCATED,
            });
            return DROP;
        }
    };
    if !is_vip(&ip.dst, ip.family) {
        return PASS;
    }
    match ip.protocol {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP | PROTO_ICMPV6 => {
            return match icmp::from_client_side(ctx, &ip) {
                icmp::Outcome::Failed => DROP,
                _ => PASS,
            };
        }
        _ => {
            count(tc_counter::OTHER_PROTOCOL);
            return PASS;
        }
    }
    let bytes = ctx.len() as u64;
    if ip.fragment == Fragment::Later {
        return later_fragment(ctx, &ip, flow_dir::FORWARD, bytes);
    }
    let Some((sport, dport, tcp)) = packet::ports(ctx, ip.l4, ip.protocol) else {
        count(tc_counter::TRUNCATED);
        return DROP;
    };
    if ip.fragment == Fragment::First {
        remember_ports(&ip, sport, dport);
    }
    let tuple = Tuple {
        src: ip.src,
        dst: ip.dst,
        sport,
        dport,
        protocol: ip.protocol,
        family: ip.family,
    };
    match flow::forward(&tuple, tcp, bytes) {
        Forward::NotService => PASS,
        Forward::NoEndpoint => {
            count(tc_counter::NO_ENDPOINT);
            DROP
        }
        Forward::Denied => {
            count(tc_counter::DENIED);
            DROP
        }
        Forward::NotWritten => {
            count(tc_counter::FLOW_NOT_WRITTEN);
            DROP
        }
        Forward::To(endpoint, port) => {
            let sum = transport_checksum(&ip);
            let ok = set_address(
                ctx,
                L3,
                ip.family,
                End::Destination,
                &ip.dst,
                &endpoint,
                Some(sum),
            ) && set_port(ctx, ip.l4 + 2, dport, port, Some(sum));
            if ok { PASS } else { DROP }
        }
    }
}

/// Egress: an endpoint's reply on its way to a client shows the service address again.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let Ok(ip) = packet::ip(ctx) else {
        return PASS;
    };
    match ip.protocol {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP | PROTO_ICMPV6 => {
            return match icmp::to_client_side(ctx, &ip) {
                icmp::Outcome::Failed => DROP,
                _ => PASS,
            };
        }
        _ => return PASS,
    }
    let bytes = ctx.len() as u64;
    if ip.fragment == Fragment::Later {
        return later_fragment(ctx, &ip, flow_dir::REVERSE, bytes);
    }
    let Some((sport, dport, tcp)) = packet::ports(ctx, ip.l4, ip.protocol) else {
        return PASS;
    };
    let tuple = Tuple {
        src: ip.src,
        dst: ip.dst,
        sport,
        dport,
        protocol: ip.protocol,
        family: ip.family,
    };
    let Some((service, service_port)) = flow::reverse(&tuple, tcp, bytes) else {
        return PASS;
    };
    if ip.fragment == Fragment::First {
        remember_ports(&ip, sport, dport);
    }
    let sum = transport_checksum(&ip);
    let ok = set_address(
        ctx,
        L3,
        ip.family,
        End::Source,
        &ip.src,
        &service,
        Some(sum),
    ) && set_port(ctx, ip.l4, sport, service_port, Some(sum));
    if ok { PASS } else { DROP }
}

#[inline(always)]
fn transport_checksum(ip: &Ip) -> L4Checksum {
    L4Checksum {
        offset: ip.l4 + checksum_offset(ip.protocol),
        protocol: ip.protocol,
        pseudo_header: true,
    }
}

#[inline(always)]
fn fragment_key(ip: &Ip) -> FragKey {
    FragKey {
        src: ip.src[0],
        dst: ip.dst[0],
        id: ip.id,
        protocol: ip.protocol,
        _pad: 0,
    }
}

/// Notes the ports of a datagram's first fragment for the fragments that follow.
#[inline(always)]
fn remember_ports(ip: &Ip, sport: u16, dport: u16) {
    let ports = FragPorts { sport, dport };
    // A failure only means later fragments are dropped (counted) rather than misrouted.
    let _ = FRAGS.insert(&fragment_key(ip), &ports, 0);
}

/// A fragment after the first: no ports of its own, so they come from the first fragment,
/// and only its IP address is translated (the transport checksum lives in the first).
/// Unknown ones are dropped at ingress (to a service address they could only go astray)
/// and passed at egress (most are not weft's at all).
#[inline(always)]
fn later_fragment(ctx: &TcContext, ip: &Ip, dir: u8, bytes: u64) -> i32 {
    // SAFETY: the value is copied at once.
    let Some(ports) = (unsafe { FRAGS.get(&fragment_key(ip)) }).copied() else {
        return unknown_fragment(dir);
    };
    let tuple = Tuple {
        src: ip.src,
        dst: ip.dst,
        sport: ports.sport,
        dport: ports.dport,
        protocol: ip.protocol,
        family: ip.family,
    };
    let Some((addr, _)) = flow::touch(&tuple, dir, bytes) else {
        return unknown_fragment(dir);
    };
    let (end, old) = if dir == flow_dir::FORWARD {
        (End::Destination, ip.dst)
    } else {
        (End::Source, ip.src)
    };
    if set_address(ctx, L3, ip.family, end, &old, &addr, None) {
        PASS
    } else {
        DROP
    }
}

#[inline(always)]
fn unknown_fragment(dir: u8) -> i32 {
    if dir == flow_dir::FORWARD {
        count(tc_counter::FRAGMENT_UNKNOWN);
        DROP
    } else {
        PASS
    }
}
