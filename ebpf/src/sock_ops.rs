//! Follows each translated TCP connection from connect to close: a live record in
//! `WEFT_CONNS_V1` (keyed by socket cookie) refreshed from the kernel's own socket counters,
//! and an event with the record to the ring buffer when it is established, fails to connect
//! or closes. The events feed statistics and passive failure detection.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_ops,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    programs::SockOpsContext,
};
use weft_common::{ConnRecord, FAMILY_V4, FAMILY_V6, RevNatKey, conn_flags, event};

use crate::{
    events::{connection_stats_off, emit},
    maps::{CONNS, REVNAT},
};

const AF_INET: u32 = 2;

const TCP_CONNECT_CB: u32 = 3;
const ACTIVE_ESTABLISHED_CB: u32 = 4;
const STATE_CB: u32 = 10;
const RTT_CB: u32 = 12;
const PARSE_HDR_OPT_CB: u32 = 13;

const STATE_CB_FLAG: i32 = 1 << 2;
const RTT_CB_FLAG: i32 = 1 << 3;
const PARSE_ALL_HDR_OPT_CB_FLAG: i32 = 1 << 4;

const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

const TCPHDR_FIN: u32 = 0x01;

#[inline(always)]
pub fn handle(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        TCP_CONNECT_CB => on_connect(ctx),
        ACTIVE_ESTABLISHED_CB => on_established(ctx),
        RTT_CB => {
            if let Some(record) = live(ctx) {
                refresh(ctx, record);
            }
        }
        PARSE_HDR_OPT_CB => on_segment_after_fin(ctx),
        STATE_CB => on_state(ctx, ctx.arg(0), ctx.arg(1)),
        _ => {}
    }
    0
}

/// A translated connection starts: follow its state changes and RTT samples (each ACK that
/// moves data), and open its live record.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let Some(mut record) = translated(ctx) else {
        return;
    };
    if connection_stats_off() {
        // Still follow the state: a connect failure feeds passive failure detection, and the
        // close removes the reverse-NAT entry.
        let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | STATE_CB_FLAG);
        return;
    }
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | STATE_CB_FLAG | RTT_CB_FLAG);
    refresh(ctx, &mut record);
    if let Err(error) = CONNS.insert(&record.cookie, &record, 0) {
        crate::diag::write_failed(
            "WEFT_CONNS_V1",
            "the connection has no live record (weft conns misses it)",
            error.into(),
        );
    }
}

/// A fresh record of this socket (addresses, service, endpoint, times set to now) if the
/// socket programs translated its connect: they left a reverse-NAT entry for it.
#[inline(always)]
fn translated(ctx: &SockOpsContext) -> Option<ConnRecord> {
    // SAFETY: plain helper calls valid for sock_ops programs.
    let (cookie, now) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_ktime_get_boot_ns()) };
    let mut record = ConnRecord {
        cookie,
        start_ns: now,
        update_ns: now,
        ..ConnRecord::default()
    };
    fill_addresses(ctx, &mut record);
    // SAFETY: LRU element copied immediately.
    let translation = (unsafe { REVNAT.get(&revnat_key(&record)) }).copied()?;
    record.service_id = translation.service_id;
    record.backend_id = translation.backend_id;
    Some(record)
}

/// The reverse-NAT entry connect4/6 wrote for this socket: keyed by cookie and endpoint.
#[inline(always)]
fn revnat_key(record: &ConnRecord) -> RevNatKey {
    RevNatKey::new(
        record.cookie,
        record.dst_addr,
        record.dst_port,
        record.family,
    )
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    if let Some(record) = live(ctx) {
        record.flags |= conn_flags::ESTABLISHED;
        refresh(ctx, record);
        emit(record, event::ESTABLISHED);
    }
}

/// Only enabled once this side sent its FIN: the one segment that matters is the peer's FIN
/// arriving in FIN_WAIT2, which closes the socket without a state callback that says so.
#[inline(always)]
fn on_segment_after_fin(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: fixed-offset context load (see `fill_addresses`).
    let tcp_flags = unsafe { read_volatile(&raw const (*ops).skb_tcp_flags) };
    if tcp_flags & TCPHDR_FIN != 0
        && let Some(record) = live(ctx)
    {
        record.flags |= conn_flags::FIN_RECEIVED;
    }
}

#[inline(always)]
fn on_state(ctx: &SockOpsContext, old: u32, new: u32) {
    match live(ctx) {
        Some(record) => follow_state(ctx, record, old, new),
        None if new == TCP_CLOSE => close_untracked(ctx, old),
        None => {}
    }
}

/// A translated socket without a live record (connection statistics off) closes: report a
/// failed connect with what the reverse-NAT entry knows, and drop that entry.
#[inline(always)]
fn close_untracked(ctx: &SockOpsContext, old: u32) {
    let Some(mut record) = translated(ctx) else {
        return;
    };
    if old == TCP_SYN_SENT {
        record.state = TCP_CLOSE as u8;
        emit(&record, event::CONNECT_FAILED);
    }
    let _ = REVNAT.remove(&revnat_key(&record));
}

#[inline(always)]
fn follow_state(ctx: &SockOpsContext, record: &mut ConnRecord, old: u32, new: u32) {
    match new {
        TCP_FIN_WAIT1 | TCP_LAST_ACK => {
            record.flags |= conn_flags::FIN_SENT;
            if new == TCP_FIN_WAIT1 {
                let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | PARSE_ALL_HDR_OPT_CB_FLAG);
            }
        }
        TCP_CLOSE_WAIT | TCP_CLOSING => record.flags |= conn_flags::FIN_RECEIVED,
        _ => {}
    }
    refresh(ctx, record);
    record.state = new as u8;
    if new != TCP_CLOSE {
        return;
    }
    let kind = if old == TCP_SYN_SENT {
        event::CONNECT_FAILED
    } else {
        event::CLOSED
    };
    emit(record, kind);
    // The connection is over: its live record and reverse-NAT entry too (if the socket's
    // release has not removed it already; evictions are counted there).
    let revnat = revnat_key(record);
    let cookie = record.cookie;
    let _ = REVNAT.remove(&revnat);
    let _ = CONNS.remove(&cookie);
}

/// The live record of this socket, if weft follows it.
#[inline(always)]
fn live(ctx: &SockOpsContext) -> Option<&mut ConnRecord> {
    // SAFETY: plain helper call valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the element stays valid for this program run; LRU eviction defers the free
    // past RCU readers like us.
    CONNS.get_ptr_mut(&cookie).map(|p| unsafe { &mut *p })
}

/// Copies the kernel's counters into the record.
#[inline(always)]
fn refresh(ctx: &SockOpsContext, record: &mut ConnRecord) {
    let ops: *const bpf_sock_ops = ctx.ops;
    // SAFETY: fixed-offset context loads; the kernel reads 0 for a socket that is not full.
    let (bytes_acked, bytes_received, segs_in, segs_out, srtt, retrans, snd_una, snd_nxt) = unsafe {
        (
            read_volatile(&raw const (*ops).bytes_acked),
            read_volatile(&raw const (*ops).bytes_received),
            read_volatile(&raw const (*ops).segs_in),
            read_volatile(&raw const (*ops).segs_out),
            read_volatile(&raw const (*ops).srtt_us),
            read_volatile(&raw const (*ops).total_retrans),
            read_volatile(&raw const (*ops).snd_una),
            read_volatile(&raw const (*ops).snd_nxt),
        )
    };
    record.bytes_acked = bytes_acked;
    record.bytes_received = bytes_received;
    record.segs_in = segs_in;
    record.segs_out = segs_out;
    // The kernel keeps srtt scaled by 8.
    record.srtt_us = srtt >> 3;
    record.total_retrans = retrans;
    // Our FIN is the last sequence number we send: once it went out and everything is
    // acknowledged, the peer has it.
    if record.flags & conn_flags::FIN_SENT != 0 && snd_una == snd_nxt {
        record.flags |= conn_flags::FIN_ACKED;
    }
    // SAFETY: plain helper call.
    record.update_ns = unsafe { bpf_ktime_get_boot_ns() };
}

#[inline(always)]
fn fill_addresses(ctx: &SockOpsContext, record: &mut ConnRecord) {
    let ops: *const bpf_sock_ops = ctx.ops;
    // Every field is loaded up front, each at its own fixed offset: left to itself LLVM
    // shares one computed ctx pointer between the v4 and v6 branches, which the verifier
    // rejects ("dereference of modified ctx ptr").
    // SAFETY: the kernel hands sock_ops programs a valid context; reads are fixed loads.
    let (family, local4, remote4, local6, remote6, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_ip4),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            read_volatile(&raw const (*ops).local_port),
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    if family == AF_INET {
        record.family = FAMILY_V4;
        record.src_addr = [local4, 0, 0, 0];
        record.dst_addr = [remote4, 0, 0, 0];
    } else {
        record.family = FAMILY_V6;
        record.src_addr = local6;
        record.dst_addr = remote6;
    }
    // local_port is in host order; remote_port keeps the network-order port in its upper
    // 16 bits.
    record.src_port = (local_port as u16).to_be();
    record.dst_port = (remote_port >> 16) as u16;
}
