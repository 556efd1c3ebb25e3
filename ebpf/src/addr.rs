//! Reading and writing the destination of a `bpf_sock_addr` for either family.

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use weft_common::{Addr, FAMILY_V4, FAMILY_V6};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn tag(self) -> u8 {
        match self {
            Family::V4 => FAMILY_V4,
            Family::V6 => FAMILY_V6,
        }
    }
}

/// The user-supplied address and port (destination on connect/sendmsg, peer on
/// recvmsg/getpeername). The port stays in network byte order.
#[inline(always)]
pub fn read(ctx: &SockAddrContext, family: Family) -> (Addr, u16) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context; the verifier checks
    // each field access (4-byte loads of user_ip4/user_ip6[i]/user_port).
    unsafe {
        let addr = match family {
            Family::V4 => [(*sa).user_ip4, 0, 0, 0],
            Family::V6 => [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
        };
        (addr, (*sa).user_port as u16)
    }
}

#[inline(always)]
pub fn write(ctx: &SockAddrContext, family: Family, addr: &Addr, port: u16) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in `read`; these fields are writable for connect/sendmsg/recvmsg/getpeername.
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = addr[0],
            Family::V6 => {
                (*sa).user_ip6[0] = addr[0];
                (*sa).user_ip6[1] = addr[1];
                (*sa).user_ip6[2] = addr[2];
                (*sa).user_ip6[3] = addr[3];
            }
        }
        (*sa).user_port = port as u32;
    }
}

#[inline(always)]
pub fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: see `read`.
    unsafe { (*ctx.sock_addr).protocol }
}

const AF_INET6: u32 = 10;

/// Whether the socket itself is IPv6 (a dual-stack socket reaches IPv4 destinations
/// through the v4 hooks when it is given an AF_INET address or a v4-mapped one for UDP).
#[inline(always)]
pub fn socket_is_v6(ctx: &SockAddrContext) -> bool {
    // SAFETY: see `read`.
    unsafe { (*ctx.sock_addr).family == AF_INET6 }
}

/// The third word of a v4-mapped IPv6 address, ::ffff:0:0/96.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[inline(always)]
pub fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD
}

#[inline(always)]
pub fn v4_mapped(v4: u32) -> Addr {
    [0, 0, V4_MAPPED_WORD, v4]
}
