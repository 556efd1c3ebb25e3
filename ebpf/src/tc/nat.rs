//! Rewriting an address and a port in place, with every checksum that covers them kept
//! right: the IPv4 header checksum, and the transport checksum, whose pseudo-header holds
//! the addresses (IPv4 and IPv6 alike). The changes are incremental (RFC 1624) through the
//! kernel's helpers, which also keep a device-computed packet checksum valid and leave a
//! checksum-offloaded packet (CHECKSUM_PARTIAL) for the device to finish.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use weft_common::{Addr, FAMILY_V4, PROTO_UDP};

use super::packet::ETH_HLEN;

/// Offsets of the IPv4 header's checksum and addresses from the start of the IP header.
const IPV4_CHECK: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
/// Offsets of the IPv6 addresses.
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// A transport checksum to keep right, if the packet has one here: its offset, and whether
/// it is UDP's (whose 0 means "none", and must stay 0).
#[derive(Clone, Copy)]
pub struct L4Checksum {
    pub offset: usize,
    pub protocol: u8,
    /// The checksum covers a pseudo-header with the addresses (TCP, UDP, ICMPv6); ICMPv4's
    /// does not.
    pub pseudo_header: bool,
}

impl L4Checksum {
    #[inline(always)]
    fn flags(self) -> u64 {
        let mut flags = 0;
        if self.protocol == PROTO_UDP {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        flags
    }
}

/// Rewrites the address at `end` of the IP header at `l3` from `old` to `new`. With `l4`,
/// also corrects that transport checksum for the pseudo-header change. Returns false if
/// the kernel refused a write (the packet is then dropped by the caller).
#[inline(always)]
pub fn set_address(
    ctx: &TcContext,
    l3: usize,
    family: u8,
    end: End,
    old: &Addr,
    new: &Addr,
    l4: Option<L4Checksum>,
) -> bool {
    if family == FAMILY_V4 {
        let field = l3
            + if end == End::Source {
                IPV4_SRC
            } else {
                IPV4_DST
            };
        if ctx.store(field, &new[0], 0).is_err() {
            return false;
        }
        if ctx
            .l3_csum_replace(l3 + IPV4_CHECK, old[0] as u64, new[0] as u64, 4)
            .is_err()
        {
            return false;
        }
        if let Some(sum) = l4.filter(|s| s.pseudo_header) {
            let flags = sum.flags() | BPF_F_PSEUDO_HDR as u64 | 4;
            if ctx
                .l4_csum_replace(sum.offset, old[0] as u64, new[0] as u64, flags)
                .is_err()
            {
                return false;
            }
        }
        return true;
    }
    let field = l3
        + if end == End::Source {
            IPV6_SRC
        } else {
            IPV6_DST
        };
    if ctx.store(field, new, 0).is_err() {
        return false;
    }
    match l4.filter(|s| s.pseudo_header) {
        Some(sum) => adjust_by_diff(
            ctx,
            sum.offset,
            old,
            new,
            sum.flags() | BPF_F_PSEUDO_HDR as u64,
        ),
        None => true,
    }
}

/// Corrects the checksum at `offset` for 16 bytes of the data it covers changing from `old`
/// to `new` (an IPv6 address; with `BPF_F_PSEUDO_HDR` in `flags`, one in the pseudo-header).
#[inline(always)]
pub fn adjust_by_diff(ctx: &TcContext, offset: usize, old: &Addr, new: &Addr, flags: u64) -> bool {
    let mut from = *old;
    let mut to = *new;
    // SAFETY: both buffers are 16-byte stack arrays, as the sizes say.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return false;
    }
    ctx.l4_csum_replace(offset, 0, diff as u64, flags).is_ok()
}

/// Rewrites the port at `offset` (network order values) and corrects the transport checksum.
#[inline(always)]
pub fn set_port(
    ctx: &TcContext,
    offset: usize,
    old: u16,
    new: u16,
    l4: Option<L4Checksum>,
) -> bool {
    if old == new {
        return true;
    }
    if ctx.store(offset, &new, 0).is_err() {
        return false;
    }
    match l4 {
        Some(sum) => ctx
            .l4_csum_replace(sum.offset, old as u64, new as u64, sum.flags() | 2)
            .is_ok(),
        None => true,
    }
}

/// The IP header's offset in an Ethernet frame.
pub const L3: usize = ETH_HLEN;
