//! Kernel-side diagnostics: lines written through aya-log's ring, which the agent reads and
//! bridges into its own log (`--kernel-log LEVEL`). The level lives in the settings word the
//! agent writes, so a support engineer turns it on or off on a live node without reloading
//! a program. Off (the default), a site costs one array read, which the verifier inlines,
//! and a compare: nothing is formatted or written.

use aya_ebpf::helpers::bpf_get_current_uid_gid;
use weft_common::{Addr, FAMILY_V4, ServiceKey, kernel_log, settings};

use crate::maps::SETTINGS;

/// Whether lines of `level` (a `kernel_log` constant) are wanted now.
#[inline(always)]
pub fn enabled(level: u32) -> bool {
    SETTINGS.get(0).is_some_and(|bits| {
        (bits >> settings::KERNEL_LOG_SHIFT) & settings::KERNEL_LOG_MASK >= level
    })
}

/// An address as aya-log prints IPv6 addresses: its sixteen bytes in order.
#[inline(always)]
fn v6_bytes(addr: &Addr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// An IPv4 address as aya-log prints it: the number its bytes spell, most significant first.
#[inline(always)]
fn v4_number(addr: &Addr) -> u32 {
    u32::from_be(addr[0])
}

/// Why weft refused a connect (or a datagram) to a service, at `info`, with the uid of the
/// process that asked.
#[inline(always)]
pub fn refused(key: &ServiceKey, reason: &str) {
    if !enabled(kernel_log::INFO) {
        return;
    }
    let uid = bpf_get_current_uid_gid() as u32;
    let port = u16::from_be(key.port);
    if key.family == FAMILY_V4 {
        aya_log_ebpf::info!(
            &(),
            "connect to {:i}:{} by uid {} refused: {}",
            v4_number(&key.addr),
            port,
            uid,
            reason
        );
    } else {
        aya_log_ebpf::info!(
            &(),
            "connect to [{:i}]:{} by uid {} refused: {}",
            v6_bytes(&key.addr),
            port,
            uid,
            reason
        );
    }
}

/// Which endpoint a connect (or a UDP socket's first datagram) to a service went to, at
/// `debug`.
#[inline(always)]
pub fn chosen(key: &ServiceKey, endpoint: &Addr, endpoint_port: u16, backend_id: u32) {
    if !enabled(kernel_log::DEBUG) {
        return;
    }
    let port = u16::from_be(key.port);
    let endpoint_port = u16::from_be(endpoint_port);
    if key.family == FAMILY_V4 {
        aya_log_ebpf::debug!(
            &(),
            "connect to {:i}:{} sent to endpoint {:i}:{} (backend {})",
            v4_number(&key.addr),
            port,
            v4_number(endpoint),
            endpoint_port,
            backend_id
        );
    } else {
        aya_log_ebpf::debug!(
            &(),
            "connect to [{:i}]:{} sent to endpoint [{:i}]:{} (backend {})",
            v6_bytes(&key.addr),
            port,
            v6_bytes(endpoint),
            endpoint_port,
            backend_id
        );
    }
}

/// A map write that failed, at `warn`: `map` names it, `what` says what is lost.
#[inline(always)]
pub fn write_failed(map: &str, what: &str, error: i64) {
    if !enabled(kernel_log::WARN) {
        return;
    }
    aya_log_ebpf::warn!(&(), "{} update failed (error {}): {}", map, error, what);
}
