//! Connection lifecycle of translated TCP connections: established and failed connects go to
//! the event ring buffer, which feeds the agent's passive failure detection.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockOpsContext,
};
use weft_common::{ConnEvent, FAMILY_V4, FAMILY_V6, RevNatKey, RevNatValue, event};

use crate::maps::{EVENTS, REVNAT};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CONNECT_CB: u32 = 3;
const ACTIVE_ESTABLISHED_CB: u32 = 4;
const STATE_CB: u32 = 10;
const STATE_CB_FLAG: i32 = 1 << 2;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

#[inline(always)]
pub fn handle(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        // Follow state changes only of connections the socket programs translated.
        TCP_CONNECT_CB => {
            if translation(ctx).is_some() {
                let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | STATE_CB_FLAG);
            }
        }
        ACTIVE_ESTABLISHED_CB => {
            if let Some(t) = translation(ctx) {
                emit(ctx, event::ESTABLISHED, &t);
            }
        }
        STATE_CB => {
            if ctx.arg(0) == TCP_SYN_SENT
                && ctx.arg(1) == TCP_CLOSE
                && let Some(t) = translation(ctx)
            {
                emit(ctx, event::CONNECT_FAILED, &t);
            }
        }
        _ => {}
    }
    0
}

/// The reverse-NAT entry connect4/6 wrote for this socket and its endpoint, if any.
#[inline(always)]
fn translation(ctx: &SockOpsContext) -> Option<RevNatValue> {
    let ops = ctx.ops;
    // Every field is loaded up front, each at its own fixed offset: left to itself LLVM
    // shares one computed ctx pointer between the v4 and v6 branches, which the verifier
    // rejects ("dereference of modified ctx ptr").
    // SAFETY: the kernel hands sock_ops programs a valid context; reads are 4-byte loads.
    let (family, ip4, ip6) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let (addr, family) = match family {
        AF_INET => ([ip4, 0, 0, 0], FAMILY_V4),
        AF_INET6 => (ip6, FAMILY_V6),
        _ => return None,
    };
    // SAFETY: plain helper call valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr,
        // sock_ops keeps the network-order port in the upper 16 bits.
        port: (ctx.remote_port() >> 16) as u16,
        family,
        _pad: [0; 5],
    };
    // SAFETY: LRU element copied immediately.
    unsafe { REVNAT.get(&key) }.copied()
}

#[inline(always)]
fn emit(ctx: &SockOpsContext, kind: u32, translation: &RevNatValue) {
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let record = ConnEvent {
        kind,
        service_id: translation.service_id,
        backend_id: translation.backend_id,
        _pad: 0,
        cookie,
    };
    // A full ring drops the event; the agent counts what it lost from gaps (issue 4).
    let _ = EVENTS.output(&record, 0);
}
