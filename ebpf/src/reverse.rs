//! Reverse translation at recvmsg and getpeername: endpoint → the service address the
//! application asked for, so it sees the peer it connected or sent to.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext,
};
use weft_common::{RevNatKey, counter};

use crate::{
    addr::{self, Family},
    maps::{REVNAT, count},
    sock_nat,
};

/// recvmsg and getpeername programs must return 1 (they cannot reject).
const DONE: i32 = 1;

#[inline(always)]
pub fn translate_back(ctx: &SockAddrContext, family: Family) -> i32 {
    let (peer, port) = addr::read(ctx, family);
    // SAFETY: plain helper call valid in every sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey::new(cookie, peer, port, family.tag());
    // SAFETY: LRU element copied immediately.
    if let Some(service) = unsafe { REVNAT.get(&key) } {
        let service = *service;
        addr::write(ctx, family, &service.addr, service.port);
    } else if let Some(service) = sock_nat::recall(ctx, &peer, port, family.tag()) {
        count(counter::REVNAT_RECOVERED);
        addr::write(ctx, family, &service.addr, service.port);
    }
    DONE
}
