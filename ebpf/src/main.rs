//! weft's kernel programs. One module per hook family; backend selection lives in `select`.
#![no_std]
#![no_main]
// Atomic adds to map values (BPF_ATOMIC_ADD); core's atomic types need compare-and-swap,
// which BPF lacks. The kernel object is built with RUSTC_BOOTSTRAP (build-std needs it).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod addr;
mod diag;
mod events;
mod govern;
mod maps;
mod reverse;
mod select;
mod sock_addr;
mod sock_nat;
mod sock_ops;
mod sock_udp;
mod tc;

use sock_addr::Hook;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext, TcContext},
};

// Function names differ from their section names on purpose: bpf-linker mis-links a
// function named like its section.

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr::forward(&ctx, addr::Family::V4, Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr::forward(&ctx, addr::Family::V6, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::forward(&ctx, addr::Family::V4, Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn weft_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::forward(&ctx, addr::Family::V6, Hook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weft_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::translate_back(&ctx, addr::Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn weft_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse::translate_back(&ctx, addr::Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeer4(ctx: SockAddrContext) -> i32 {
    reverse::translate_back(&ctx, addr::Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_getpeer6(ctx: SockAddrContext) -> i32 {
    reverse::translate_back(&ctx, addr::Family::V6)
}

#[cgroup_sock(sock_release)]
pub fn weft_sock_release(ctx: SockContext) -> i32 {
    sock_nat::forget(&ctx);
    govern::released(&ctx);
    // A release cannot be refused; 1 is the only valid verdict.
    1
}

/// Datagrams of translated UDP sockets, counted on their way out and in.
#[cgroup_skb(egress)]
pub fn weft_udp_egress(ctx: SkBuffContext) -> i32 {
    sock_udp::count(&ctx, sock_udp::Direction::Egress)
}

#[cgroup_skb(ingress)]
pub fn weft_udp_ingress(ctx: SkBuffContext) -> i32 {
    sock_udp::count(&ctx, sock_udp::Direction::Ingress)
}

#[sock_ops]
pub fn weft_sock_ops(ctx: SockOpsContext) -> u32 {
    sock_ops::handle(&ctx)
}

/// TC ingress on an interface clients send through: service traffic to its endpoints.
#[classifier]
pub fn weft_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(&ctx)
}

/// TC egress on the same interface: replies shown from the service address.
#[classifier]
pub fn weft_tc_egress(ctx: TcContext) -> i32 {
    tc::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
