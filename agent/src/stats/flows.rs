//! TC flows as connection records, so that the per-service and per-endpoint statistics and
//! `weft conns --follow` count forwarded traffic the way they count the socket path's.
//! The kernel sends no events for TC flows (a ring write per flow on the forwarding path
//! would cost more than the translation); the agent's flow expiry reports what it saw
//! instead: a flow opens at the first sweep that finds its endpoint answered (at most one
//! sweep, 5 s, late) and closes when the sweep removes it, with its final counters.

use weft_common::{ConnRecord, PROTO_TCP, conn_flags, event};

use crate::datapath::{Flow, Sweep};

/// The records one sweep reports: opened for each newly answered flow; for each removed
/// flow, closed (opened first if it was never reported answered), or a failed connect for a
/// TCP flow whose endpoint never answered.
pub fn records(sweep: &Sweep) -> Vec<ConnRecord> {
    let mut out = Vec::with_capacity(sweep.answered.len() + sweep.ended.len());
    out.extend(sweep.answered.iter().map(|f| record(f, event::ESTABLISHED)));
    for flow in &sweep.ended {
        if flow.reverse.is_some() {
            out.push(record(flow, event::CLOSED));
        } else if flow.key.protocol == PROTO_TCP {
            out.push(record(flow, event::CONNECT_FAILED));
        } else {
            out.push(record(flow, event::ESTABLISHED));
            out.push(record(flow, event::CLOSED));
        }
    }
    out
}

/// One flow as a record: the client is the source, the endpoint the destination; the
/// counters are IP bytes and packets as the interface saw them each way.
fn record(flow: &Flow, kind: u8) -> ConnRecord {
    let reply = flow.reverse.unwrap_or_default();
    ConnRecord {
        start_ns: flow.forward.created_ns,
        update_ns: flow.last_ns(),
        bytes_acked: flow.forward.bytes,
        bytes_received: reply.bytes,
        src_addr: flow.key.src,
        dst_addr: flow.forward.nat_addr,
        service_id: flow.forward.service_id,
        backend_id: flow.forward.backend_id,
        segs_out: flow.forward.packets.min(u64::from(u32::MAX)) as u32,
        segs_in: reply.packets.min(u64::from(u32::MAX)) as u32,
        src_port: flow.key.sport,
        dst_port: flow.forward.nat_port,
        family: flow.key.family,
        kind,
        flags: conn_flags::TC,
        ..ConnRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use weft_common::{FAMILY_V4, FlowKey, FlowValue, PROTO_UDP};

    use super::*;
    use crate::stats::record as conn;

    fn flow(protocol: u8, answered: bool) -> Flow {
        let forward = FlowValue {
            nat_addr: [u32::from_ne_bytes([10, 0, 2, 2]), 0, 0, 0],
            nat_port: 80u16.to_be(),
            service_id: 7,
            created_ns: 1_000,
            last_ns: 5_000,
            packets: 3,
            bytes: 180,
            ..FlowValue::default()
        };
        Flow {
            key: FlowKey {
                src: [u32::from_ne_bytes([10, 0, 1, 2]), 0, 0, 0],
                sport: 40_000u16.to_be(),
                protocol,
                family: FAMILY_V4,
                ..FlowKey::default()
            },
            forward,
            reverse: answered.then_some(FlowValue {
                packets: 2,
                bytes: 1_500,
                last_ns: 9_000,
                ..FlowValue::default()
            }),
        }
    }

    #[test]
    fn each_flow_opens_once_and_ends_by_what_it_saw() {
        let sweep = Sweep {
            answered: vec![flow(PROTO_TCP, true)],
            ended: vec![
                flow(PROTO_TCP, true),
                flow(PROTO_TCP, false),
                flow(PROTO_UDP, false),
            ],
            ..Sweep::default()
        };
        let kinds: Vec<u8> = records(&sweep).iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                event::ESTABLISHED,
                event::CLOSED,
                event::CONNECT_FAILED,
                event::ESTABLISHED,
                event::CLOSED
            ]
        );
    }

    #[test]
    fn a_flow_reads_as_its_client_and_endpoint_with_both_directions_counted() {
        let r = record(&flow(PROTO_TCP, true), event::CLOSED);
        assert_eq!(conn::source(&r), "10.0.1.2:40000".parse().unwrap());
        assert_eq!(conn::destination(&r), "10.0.2.2:80".parse().unwrap());
        assert_eq!(
            (conn::bytes_sent(&r), conn::bytes_received(&r)),
            (180, 1_500)
        );
        assert_eq!((r.segs_out, r.segs_in), (3, 2));
        assert_eq!(
            r.update_ns - r.start_ns,
            8_000,
            "lasts until the last reply"
        );
        assert!(!conn::is_socket_tcp(&r));
    }
}
