//! A kernel connection record as operators read it: payload byte counts (the kernel counts
//! sequence space, so SYN and FINs come out), addresses, state name and age.

use std::net::{IpAddr, SocketAddr};

use weft_common::{ConnRecord, conn_flags};

use crate::layout::ip_from_kernel;

/// A connection record as the kernel wrote it into the event ring: `None` for an item too
/// short to be one. Every bit pattern is a valid record (plain integers); what its fields
/// mean is for the functions below.
pub fn decode(item: &[u8]) -> Option<ConnRecord> {
    if item.len() < std::mem::size_of::<ConnRecord>() {
        return None;
    }
    // SAFETY: the length is checked; ConnRecord is repr(C) of plain integers, so any bytes
    // are a valid value; read_unaligned copes with the ring's 8-byte record alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnRecord>()) })
}

/// Payload bytes this side sent that the peer acknowledged.
pub fn bytes_sent(record: &ConnRecord) -> u64 {
    let mut sequence_only = 0;
    if record.flags & conn_flags::ESTABLISHED != 0 {
        sequence_only += 1; // the SYN
    }
    if record.flags & conn_flags::FIN_ACKED != 0 {
        sequence_only += 1;
    }
    record.bytes_acked.saturating_sub(sequence_only)
}

/// Payload bytes received.
pub fn bytes_received(record: &ConnRecord) -> u64 {
    let fin = u64::from(record.flags & conn_flags::FIN_RECEIVED != 0);
    record.bytes_received.saturating_sub(fin)
}

/// Whether the record is a TCP connection of the socket path: only those have a connect
/// outcome (for passive failure detection) and a round-trip time. A UDP socket's traffic
/// and a TC flow the agent found have neither.
pub fn is_socket_tcp(record: &ConnRecord) -> bool {
    record.flags & (conn_flags::UDP | conn_flags::TC) == 0
}

pub fn source(record: &ConnRecord) -> SocketAddr {
    socket(record, &record.src_addr, record.src_port)
}

pub fn destination(record: &ConnRecord) -> SocketAddr {
    socket(record, &record.dst_addr, record.dst_port)
}

fn socket(record: &ConnRecord, addr: &weft_common::Addr, port_be: u16) -> SocketAddr {
    let ip: IpAddr = ip_from_kernel(addr, record.family);
    // Dual-stack sockets reach IPv4 endpoints as ::ffff:a.b.c.d; show the IPv4 address.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, u16::from_be(port_be))
}

/// The kernel's TCP state names (include/net/tcp_states.h), lower case.
/// The state a record shows: the kernel's TCP state for a socket-path connection; for UDP
/// traffic and TC flows (no socket state to read) whether it is still going.
pub fn state(record: &ConnRecord) -> &'static str {
    if is_refusal(record) {
        "refused"
    } else if is_socket_tcp(record) {
        state_name(record.state)
    } else if record.kind == weft_common::event::CLOSED {
        "closed"
    } else {
        "active"
    }
}

/// A connect (or forwarded flow) the service's governance refused: no endpoint took it.
pub fn is_refusal(record: &ConnRecord) -> bool {
    use weft_common::event;
    matches!(
        record.kind,
        event::DENIED | event::ABORTED | event::OVERFLOW
    )
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        _ => "unknown",
    }
}

/// Milliseconds from the connect to `now_ns` (CLOCK_BOOTTIME, like the kernel's stamps).
pub fn age_ms(record: &ConnRecord, now_ns: u64) -> u64 {
    now_ns.saturating_sub(record.start_ns) / 1_000_000
}

/// Seconds from the connect to the record's last update: a closed connection's lifetime.
pub fn duration_s(record: &ConnRecord) -> f64 {
    record.update_ns.saturating_sub(record.start_ns) as f64 / 1e9
}

/// CLOCK_BOOTTIME now, in nanoseconds: the clock of the kernel's `bpf_ktime_get_boot_ns`.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(acked: u64, received: u64, flags: u8) -> ConnRecord {
        ConnRecord {
            bytes_acked: acked,
            bytes_received: received,
            flags,
            ..ConnRecord::default()
        }
    }

    #[test]
    fn syn_and_fins_are_not_payload() {
        use conn_flags::*;
        // Connecting: nothing acknowledged yet.
        assert_eq!(bytes_sent(&record(0, 0, 0)), 0);
        // Established, 100 bytes out (SYN counted by the kernel), 50 in.
        let open = record(101, 50, ESTABLISHED);
        assert_eq!((bytes_sent(&open), bytes_received(&open)), (100, 50));
        // Both FINs exchanged and ours acknowledged.
        let closed = record(102, 51, ESTABLISHED | FIN_SENT | FIN_ACKED | FIN_RECEIVED);
        assert_eq!((bytes_sent(&closed), bytes_received(&closed)), (100, 50));
        // Our FIN sent but never acknowledged (reset): only the SYN comes out.
        let reset = record(101, 50, ESTABLISHED | FIN_SENT);
        assert_eq!(bytes_sent(&reset), 100);
    }

    #[test]
    fn mapped_ipv4_reads_as_ipv4() {
        let mut r = ConnRecord {
            family: weft_common::FAMILY_V6,
            dst_port: 8080u16.to_be(),
            ..ConnRecord::default()
        };
        let mapped: std::net::Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        for (i, chunk) in mapped.octets().chunks(4).enumerate() {
            r.dst_addr[i] = u32::from_ne_bytes(chunk.try_into().unwrap());
        }
        assert_eq!(destination(&r), "10.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn state_names_follow_the_kernel() {
        assert_eq!(state_name(1), "established");
        assert_eq!(state_name(2), "syn_sent");
        assert_eq!(state_name(7), "close");
    }
}
