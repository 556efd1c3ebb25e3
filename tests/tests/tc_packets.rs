//! The TC programs one packet at a time, in the kernel, with `BPF_PROG_TEST_RUN` (the way
//! Cilium's bpf/tests exercise its datapath): hand-built frames in, verdict and bytes out,
//! every checksum checked by the tests' own arithmetic. Each test loads its own copy of the
//! programs and maps.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use weft_common::{flow_dir, tc_counter};
use weft_tests::tc::{
    frame::{self, ACK, FIN, ICMP, ICMPV6, RST, SYN, TCP, Transport, UDP, V4Options, at, v4, v6},
    lab::{Run, TC_ACT_SHOT, TC_ACT_UNSPEC, TcLab},
};

fn lab(name: &str) -> Option<TcLab> {
    weft_tests::privileged(name).then(TcLab::load)
}

fn packet(src: SocketAddr, dst: SocketAddr, t: impl Fn(u16, u16) -> Transport) -> Vec<u8> {
    frame::frame(&frame::ip_packet(
        src.ip(),
        dst.ip(),
        &t(src.port(), dst.port()),
        V4Options::default(),
    ))
}

fn tcp(flags: u8) -> impl Fn(u16, u16) -> Transport {
    move |s, d| Transport::tcp(s, d, flags)
}

fn udp(payload: &'static [u8]) -> impl Fn(u16, u16) -> Transport {
    move |s, d| Transport::udp(s, d, payload)
}

/// The run passed the frame on, with these ends and every checksum right.
fn translated(run: &Run, src: SocketAddr, dst: SocketAddr) {
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "verdict");
    let seen = frame::parse(&run.frame);
    assert_eq!(at(seen.src, seen.sport), src, "source");
    assert_eq!(at(seen.dst, seen.dport), dst, "destination");
    assert_eq!(frame::verify(&run.frame), Ok(()));
}

/// The run passed the frame on exactly as it was.
fn untouched(run: &Run, input: &[u8]) {
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "verdict");
    assert_eq!(run.frame, input, "the frame must pass unchanged");
}

fn dropped(run: &Run) {
    assert_eq!(run.verdict, TC_ACT_SHOT, "verdict");
}

struct Setup {
    lab: TcLab,
    vip: SocketAddr,
    endpoint: SocketAddr,
    client: SocketAddr,
}

fn v4_setup(name: &str, protocol: u8) -> Option<Setup> {
    let mut lab = lab(name)?;
    let vip = at(v4("10.96.0.10"), 80);
    let endpoint = at(v4("10.0.2.2"), 8080);
    lab.service(vip, protocol, &[endpoint]);
    Some(Setup {
        lab,
        vip,
        endpoint,
        client: at(v4("10.0.1.2"), 40000),
    })
}

#[test]
fn tcp_and_udp_are_translated_both_ways_in_both_families() {
    let Some(mut lab) = lab("tc-both-ways") else {
        return;
    };
    let cases = [
        (
            at(v4("10.96.0.10"), 80),
            at(v4("10.0.2.2"), 8080),
            at(v4("10.0.1.2"), 40000),
        ),
        (
            at(v6("fd96::10"), 80),
            at(v6("fd02::2"), 8080),
            at(v6("fd01::2"), 40000),
        ),
    ];
    for (vip, endpoint, client) in cases {
        for protocol in [TCP, UDP] {
            lab.service(vip, protocol, &[endpoint]);
            let t = |flags: u8| {
                move |s, d| match protocol {
                    TCP => Transport::tcp(s, d, flags),
                    _ => Transport::udp(s, d, b"a datagram"),
                }
            };
            let run = lab.ingress(&packet(client, vip, t(SYN)));
            translated(&run, client, endpoint);
            let run = lab.ingress(&packet(client, vip, t(ACK)));
            translated(&run, client, endpoint);
            let run = lab.egress(&packet(endpoint, client, t(SYN | ACK)));
            translated(&run, vip, client);
        }
    }
    // One flow per case and protocol, two entries each, with the packets counted.
    let flows = lab.flows();
    assert_eq!(flows.len(), 8, "{flows:?}");
    for (key, value) in flows {
        let want = if key.dir == flow_dir::FORWARD { 2 } else { 1 };
        assert_eq!(value.packets, want, "{key:?}");
        assert!(value.bytes > 0);
    }
}

#[test]
fn a_zero_udp_checksum_stays_zero_and_a_computed_zero_becomes_ffff() {
    let Some(Setup {
        mut lab,
        vip,
        endpoint,
        client,
    }) = v4_setup("tc-udp-zero", UDP)
    else {
        return;
    };
    let none = frame::frame(&frame::ip_packet(
        client.ip(),
        vip.ip(),
        &Transport::Udp {
            sport: client.port(),
            dport: vip.port(),
            payload: b"abcd".to_vec(),
            zero_checksum: true,
        },
        V4Options::default(),
    ));
    let run = lab.ingress(&none);
    translated(&run, client, endpoint);
    let seen = frame::parse(&run.frame);
    assert_eq!(
        &run.frame[seen.l4 + 6..seen.l4 + 8],
        [0, 0],
        "no checksum stays no checksum"
    );

    // A payload chosen so that the translated datagram's checksum computes to 0: it must
    // be sent as 0xffff (0 would mean "no checksum").
    let payload = (0..=u16::MAX)
        .map(|w| w.to_be_bytes().to_vec())
        .find(|p| {
            let after = frame::ip_packet(
                client.ip(),
                endpoint.ip(),
                &Transport::udp(client.port(), endpoint.port(), p),
                V4Options::default(),
            );
            let mut segment = after[20..].to_vec();
            segment[6] = 0;
            segment[7] = 0;
            frame::transport_checksum(client.ip(), endpoint.ip(), UDP, &segment) == 0
        })
        .expect("some payload makes the checksum 0");
    let input = frame::frame(&frame::ip_packet(
        client.ip(),
        vip.ip(),
        &Transport::Udp {
            sport: client.port(),
            dport: vip.port(),
            payload: payload.clone(),
            zero_checksum: false,
        },
        V4Options::default(),
    ));
    let run = lab.ingress(&input);
    translated(&run, client, endpoint);
    let seen = frame::parse(&run.frame);
    assert_eq!(&run.frame[seen.l4 + 6..seen.l4 + 8], [0xff, 0xff]);
}

#[test]
fn ip_options_move_the_transport_header_and_are_kept() {
    let Some(Setup {
        mut lab,
        vip,
        endpoint,
        client,
    }) = v4_setup("tc-options", TCP)
    else {
        return;
    };
    let options = V4Options {
        option_words: 2,
        ..V4Options::default()
    };
    let input = frame::frame(&frame::ip_packet(
        client.ip(),
        vip.ip(),
        &Transport::tcp(client.port(), vip.port(), SYN),
        options,
    ));
    let run = lab.ingress(&input);
    translated(&run, client, endpoint);
    assert_eq!(run.frame[14] & 0x0f, 7, "the header keeps its options");
}

#[test]
fn bad_packets_to_a_service_are_dropped_and_counted_others_pass_untouched() {
    let Some(Setup {
        mut lab,
        vip,
        client,
        ..
    }) = v4_setup("tc-bad", TCP)
    else {
        return;
    };
    let good = packet(client, vip, tcp(SYN));

    // Cut inside the TCP header.
    let cut = {
        let mut f = good[..14 + 20 + 10].to_vec();
        // The IP header still claims the full length: truncated.
        f[16..18].copy_from_slice(&(30u16).to_be_bytes());
        let sum = {
            let mut h = f[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            frame::checksum(&h)
        };
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f
    };
    dropped(&lab.ingress(&cut));
    assert_eq!(lab.counter(tc_counter::TRUNCATED), 1);

    // Total length beyond the frame.
    let mut long = good.clone();
    long[16..18].copy_from_slice(&(2000u16).to_be_bytes());
    dropped(&lab.ingress(&long));
    assert_eq!(lab.counter(tc_counter::TRUNCATED), 2);

    // A header length below 20 bytes.
    let bad_ihl = frame::frame(&frame::ip_packet(
        client.ip(),
        vip.ip(),
        &Transport::tcp(client.port(), 80, SYN),
        V4Options {
            ihl_override: Some(4),
            ..V4Options::default()
        },
    ));
    dropped(&lab.ingress(&bad_ihl));
    assert_eq!(lab.counter(tc_counter::BAD_HEADER), 1);

    // Another protocol to the service address: passed as it is, counted.
    let gre = frame::frame(&frame::ip_packet(
        client.ip(),
        vip.ip(),
        &Transport::Raw {
            protocol: frame::GRE,
            bytes: vec![0; 8],
        },
        V4Options::default(),
    ));
    untouched(&lab.ingress(&gre), &gre);
    assert_eq!(lab.counter(tc_counter::OTHER_PROTOCOL), 1);

    // UDP to the TCP service's port: not a service, untouched.
    let wrong_protocol = packet(client, vip, udp(b"x"));
    untouched(&lab.ingress(&wrong_protocol), &wrong_protocol);
    // Another port of the service address: untouched.
    let other_port = packet(client, at(vip.ip(), 81), tcp(SYN));
    untouched(&lab.ingress(&other_port), &other_port);

    // Not for a service at all, broken or not: untouched.
    let elsewhere = packet(client, at(v4("10.0.9.9"), 80), tcp(SYN));
    untouched(&lab.ingress(&elsewhere), &elsewhere);
    let mut broken_elsewhere = bad_ihl.clone();
    broken_elsewhere[30..34].copy_from_slice(&[10, 0, 9, 9]);
    untouched(&lab.ingress(&broken_elsewhere), &broken_elsewhere);
    let arp = frame::arp_frame();
    untouched(&lab.ingress(&arp), &arp);
    untouched(&lab.egress(&arp), &arp);

    // IPv6 with an extension header before TCP, to a service address: dropped, counted.
    let vip6 = at(v6("fd96::10"), 80);
    lab.service(vip6, TCP, &[at(v6("fd02::2"), 8080)]);
    let ext = frame::frame(&frame::ipv6_with_extension(
        "fd01::2".parse().unwrap(),
        "fd96::10".parse().unwrap(),
        &Transport::tcp(40000, 80, SYN),
    ));
    dropped(&lab.ingress(&ext));
    assert_eq!(lab.counter(tc_counter::IPV6_EXTENSION), 1);
    assert!(lab.flows().is_empty(), "no bad packet made a flow");
}

/// The first fragment of UDP datagram `id` (more fragments follow): its ports, 64 bytes of
/// `fill`.
fn first_fragment(src: SocketAddr, dst: SocketAddr, fill: u8, id: u16) -> Vec<u8> {
    frame::frame(&frame::ip_packet(
        src.ip(),
        dst.ip(),
        &Transport::udp(src.port(), dst.port(), &[fill; 64]),
        V4Options {
            id,
            frag: 0x2000,
            ..V4Options::default()
        },
    ))
}

/// A later fragment of UDP datagram `id` (offset 72 bytes): 40 bytes of `fill`, no ports.
fn later_fragment(src: SocketAddr, dst: SocketAddr, fill: u8, id: u16) -> Vec<u8> {
    frame::frame(&frame::ip_packet(
        src.ip(),
        dst.ip(),
        &Transport::Raw {
            protocol: UDP,
            bytes: vec![fill; 40],
        },
        V4Options {
            id,
            frag: 9,
            ..V4Options::default()
        },
    ))
}

#[test]
fn fragments_follow_their_first_fragment_or_are_dropped() {
    let Some(Setup {
        mut lab,
        vip,
        endpoint,
        client,
    }) = v4_setup("tc-frags", UDP)
    else {
        return;
    };
    let first = first_fragment(client, vip, 7, 77);
    let run = lab.ingress(&first);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    let seen = frame::parse(&run.frame);
    assert_eq!(at(seen.dst, seen.dport), endpoint);
    assert_eq!(frame::verify(&run.frame), Ok(()), "the IP header checksum");

    // A later fragment: no ports, but the same datagram: its destination follows.
    let later = later_fragment(client, vip, 9, 77);
    let run = lab.ingress(&later);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    let seen = frame::parse(&run.frame);
    assert_eq!(seen.dst, endpoint.ip());
    assert_eq!(frame::verify(&run.frame), Ok(()));
    assert_eq!(
        &run.frame[seen.l4..],
        &later[seen.l4..],
        "the payload is not touched"
    );

    // A later fragment of a datagram whose first fragment never came: never misrouted.
    let stray = later_fragment(client, vip, 9, 78);
    dropped(&lab.ingress(&stray));
    assert_eq!(lab.counter(tc_counter::FRAGMENT_UNKNOWN), 1);

    // The reply in fragments: both pieces show the service address.
    let first_reply = first_fragment(endpoint, client, 5, 900);
    let run = lab.egress(&first_reply);
    let seen = frame::parse(&run.frame);
    assert_eq!(at(seen.src, seen.sport), vip);
    let later_reply = later_fragment(endpoint, client, 5, 900);
    let run = lab.egress(&later_reply);
    assert_eq!(frame::parse(&run.frame).src, vip.ip());
    assert_eq!(frame::verify(&run.frame), Ok(()));
}

#[test]
fn an_established_flow_keeps_its_endpoint_when_the_table_changes() {
    let Some(mut lab) = lab("tc-sticky") else {
        return;
    };
    let vip = at(v4("10.96.0.10"), 80);
    let (a, b) = (at(v4("10.0.2.2"), 8080), at(v4("10.0.3.2"), 8080));
    let id = lab.service(vip, TCP, &[a]);
    let client = at(v4("10.0.1.2"), 40000);
    translated(&lab.ingress(&packet(client, vip, tcp(SYN))), client, a);
    // The table now sends everything to b (a weight change): the flow stays on a.
    lab.set_table(vip, TCP, id, &[b]);
    translated(&lab.ingress(&packet(client, vip, tcp(ACK))), client, a);
    // A new flow follows the new table.
    let other = at(client.ip(), 40001);
    translated(&lab.ingress(&packet(other, vip, tcp(SYN))), other, b);
    // The first flow closes (RST); a SYN on the same ports is a new flow: b.
    translated(&lab.ingress(&packet(client, vip, tcp(RST))), client, a);
    translated(&lab.ingress(&packet(client, vip, tcp(SYN))), client, b);
    // A FIN-closed flow likewise.
    translated(&lab.ingress(&packet(other, vip, tcp(FIN | ACK))), other, b);
    lab.set_table(vip, TCP, id, &[a]);
    translated(&lab.ingress(&packet(other, vip, tcp(SYN))), other, a);
}

#[test]
fn a_reused_client_port_starts_a_new_flow_in_the_closed_flows_entries() {
    let Some(Setup {
        mut lab,
        vip,
        endpoint,
        client,
    }) = v4_setup("tc-reuse", TCP)
    else {
        return;
    };
    // The client's packets go to the endpoint; the endpoint's come back from the service.
    let sent = |lab: &mut TcLab, flags: u8| {
        translated(
            &lab.ingress(&packet(client, vip, tcp(flags))),
            client,
            endpoint,
        );
    };
    let answered = |lab: &mut TcLab, flags: u8| {
        translated(
            &lab.egress(&packet(endpoint, client, tcp(flags))),
            vip,
            client,
        );
    };
    sent(&mut lab, SYN);
    answered(&mut lab, SYN | ACK);
    sent(&mut lab, ACK);
    sent(&mut lab, FIN | ACK);
    answered(&mut lab, FIN | ACK);
    let before = lab.flows();
    assert_eq!(before.len(), 2, "one flow, two entries: {before:?}");
    let created = before[0].1.created_ns;
    // The same client port again: a new flow, to the same endpoint (same hash, same table).
    sent(&mut lab, SYN);
    let after = lab.flows();
    assert_eq!(after.len(), 2, "still two entries: {after:?}");
    for (key, value) in &after {
        assert!(
            value.created_ns >= created,
            "{key:?} starts anew: {value:?}"
        );
        if key.dir == flow_dir::FORWARD {
            assert_eq!(value.packets, 1, "only the new SYN counts: {value:?}");
            assert_eq!(value.flags, weft_common::flow_flags::SYN, "{value:?}");
        } else {
            assert_eq!(
                (value.packets, value.flags),
                (0, 0),
                "no reply yet: {value:?}"
            );
        }
    }
    // The new flow's replies are translated as before.
    answered(&mut lab, SYN | ACK);
}

#[test]
fn a_flow_whose_endpoint_left_every_service_picks_anew() {
    let Some(mut lab) = lab("tc-gone") else {
        return;
    };
    let vip = at(v4("10.96.0.10"), 80);
    let (a, b) = (at(v4("10.0.2.2"), 8080), at(v4("10.0.3.2"), 8080));
    let id = lab.service(vip, TCP, &[a]);
    let client = at(v4("10.0.1.2"), 40000);
    translated(&lab.ingress(&packet(client, vip, tcp(SYN))), client, a);
    lab.set_table(vip, TCP, id, &[b]);
    lab.remove_endpoint(a);
    // Mid-flow: sent to the endpoint now chosen (which will answer with a reset), rather
    // than to one that is gone.
    translated(&lab.ingress(&packet(client, vip, tcp(ACK))), client, b);
    assert_eq!(lab.counter(tc_counter::ENDPOINT_GONE), 1);
    // And its replies are translated back from there.
    translated(&lab.egress(&packet(b, client, tcp(RST | ACK))), vip, client);
}

#[test]
fn a_service_without_endpoints_drops_new_flows_and_counts_them() {
    let Some(mut lab) = lab("tc-empty") else {
        return;
    };
    let vip = at(v4("10.96.0.10"), 80);
    lab.service(vip, TCP, &[]);
    dropped(&lab.ingress(&packet(at(v4("10.0.1.2"), 40000), vip, tcp(SYN))));
    assert_eq!(lab.counter(tc_counter::NO_ENDPOINT), 1);
}

#[test]
fn replies_of_unknown_flows_and_socket_translated_connections_are_never_touched() {
    let Some(Setup {
        mut lab,
        vip,
        endpoint,
        client,
    }) = v4_setup("tc-unknown", TCP)
    else {
        return;
    };
    // A connection the socket path already translated leaves with the endpoint as its
    // destination: ingress sees no service address, egress no flow of its own.
    let socket_path = packet(client, endpoint, tcp(SYN));
    untouched(&lab.ingress(&socket_path), &socket_path);
    let its_reply = packet(endpoint, client, tcp(SYN | ACK));
    untouched(&lab.egress(&its_reply), &its_reply);
    assert!(lab.flows().is_empty());
    // After a TC flow exists, a reply to another client port is still not ours.
    translated(
        &lab.ingress(&packet(client, vip, tcp(SYN))),
        client,
        endpoint,
    );
    let other = packet(endpoint, at(client.ip(), 40009), tcp(ACK));
    untouched(&lab.egress(&other), &other);
}

/// An ICMP error frame from `src` to `dst` quoting `quoted` (an IP packet).
fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    kind: u8,
    code: u8,
    quoted: Vec<u8>,
    quote_len: usize,
) -> Vec<u8> {
    frame::frame(&frame::ip_packet(
        src,
        dst,
        &Transport::IcmpError {
            kind,
            code,
            quoted,
            quote_len,
        },
        V4Options::default(),
    ))
}

#[test]
fn icmp_errors_about_a_flow_are_translated_both_ways() {
    for v6 in [false, true] {
        let Some(mut lab) = lab("tc-icmp") else {
            return;
        };
        let (vip, endpoint, client, router) = if v6 {
            (
                at(frame::v6("fd96::10"), 80),
                at(frame::v6("fd02::2"), 8080),
                at(frame::v6("fd01::2"), 40000),
                frame::v6("fd01::ff"),
            )
        } else {
            (
                at(v4("10.96.0.10"), 80),
                at(v4("10.0.2.2"), 8080),
                at(v4("10.0.1.2"), 40000),
                v4("10.0.1.254"),
            )
        };
        lab.service(vip, UDP, &[endpoint]);
        let request = Transport::udp(client.port(), vip.port(), &[1; 100]);
        translated(
            &lab.ingress(&frame::frame(&frame::ip_packet(
                client.ip(),
                vip.ip(),
                &request,
                V4Options::default(),
            ))),
            client,
            endpoint,
        );
        let (unreachable, too_big) = if v6 { (1, 2) } else { (3, 3) };

        // A router on the client's side cannot forward a reply (too big): the error is
        // addressed to the service, quoting the reply as the client side saw it.
        let reply_seen = frame::ip_packet(
            vip.ip(),
            client.ip(),
            &Transport::udp(vip.port(), client.port(), &[2; 100]),
            V4Options::default(),
        );
        for quote_len in [reply_seen.len(), if v6 { 48 } else { 28 }] {
            let error = icmp_error(
                router,
                vip.ip(),
                too_big,
                if v6 { 0 } else { 4 },
                reply_seen.clone(),
                quote_len,
            );
            let run = lab.ingress(&error);
            assert_eq!(run.verdict, TC_ACT_UNSPEC);
            let outer = frame::parse(&run.frame);
            assert_eq!(
                (outer.src, outer.dst),
                (router, endpoint.ip()),
                "sent on to the endpoint"
            );
            let inner = frame::parse(&frame::quoted(&run.frame));
            assert_eq!(
                at(inner.src, inner.sport),
                endpoint,
                "the quote shows the endpoint's reply"
            );
            assert_eq!(at(inner.dst, inner.dport), client);
            assert_eq!(
                frame::verify(&run.frame),
                Ok(()),
                "the ICMP checksum (quote {quote_len})"
            );
            assert!(
                v6 || frame::quoted_ipv4_header_ok(&run.frame),
                "the quoted IPv4 header's checksum"
            );
        }

        // The endpoint has no listener: its port-unreachable goes to the client, quoting
        // the request as the endpoint got it. The client must see the service in both.
        let request_seen = frame::ip_packet(
            client.ip(),
            endpoint.ip(),
            &Transport::udp(client.port(), endpoint.port(), &[1; 100]),
            V4Options::default(),
        );
        let error = icmp_error(
            endpoint.ip(),
            client.ip(),
            unreachable,
            if v6 { 4 } else { 3 },
            request_seen,
            200,
        );
        let run = lab.egress(&error);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        let outer = frame::parse(&run.frame);
        assert_eq!(
            (outer.src, outer.dst),
            (vip.ip(), client.ip()),
            "from the service address"
        );
        let inner = frame::parse(&frame::quoted(&run.frame));
        assert_eq!(at(inner.src, inner.sport), client);
        assert_eq!(
            at(inner.dst, inner.dport),
            vip,
            "the quote shows what the client sent"
        );
        assert_eq!(frame::verify(&run.frame), Ok(()));
        assert!(v6 || frame::quoted_ipv4_header_ok(&run.frame));
        assert_eq!(lab.counter(tc_counter::ICMP_TRANSLATED), 3);

        // An error from a router between the node and the endpoint keeps its source.
        let request_seen = frame::ip_packet(
            client.ip(),
            endpoint.ip(),
            &Transport::udp(client.port(), endpoint.port(), &[1; 100]),
            V4Options::default(),
        );
        let error = icmp_error(router, client.ip(), too_big, 0, request_seen, 200);
        let run = lab.egress(&error);
        assert_eq!(frame::parse(&run.frame).src, router);
        assert_eq!(frame::verify(&run.frame), Ok(()));

        // Echo requests to the service address, and errors about no flow, pass untouched.
        let echo = frame::frame(&frame::ip_packet(
            client.ip(),
            vip.ip(),
            &Transport::Raw {
                protocol: if v6 { ICMPV6 } else { ICMP },
                bytes: vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1],
            },
            V4Options::default(),
        ));
        untouched(&lab.ingress(&echo), &echo);
        let stranger = frame::ip_packet(
            vip.ip(),
            at(client.ip(), 1).ip(),
            &Transport::udp(vip.port(), 9, &[0; 8]),
            V4Options::default(),
        );
        let error = icmp_error(router, vip.ip(), too_big, 0, stranger, 200);
        untouched(&lab.ingress(&error), &error);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any addresses, ports and payload: the request reaches the endpoint and the reply
    /// the client, each with every checksum right.
    #[test]
    fn any_flow_translates_with_valid_checksums(
        v6 in any::<bool>(),
        tcp_flow in any::<bool>(),
        client in any::<[u8; 16]>(),
        endpoint in any::<[u8; 16]>(),
        client_port in 1024u16..,
        service_port in 1u16..,
        endpoint_port in 1u16..,
        payload in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        if !weft_tests::privileged("tc-proptest") {
            return Ok(());
        }
        let ip = |b: [u8; 16], net: u8| if v6 {
            let mut b = b;
            b[0] = 0xfd;
            b[1] = net;
            IpAddr::from(b)
        } else {
            IpAddr::from([10, net, b[2], b[3].max(1)])
        };
        let vip = at(ip([0x96; 16], 96), service_port);
        let endpoint = at(ip(endpoint, 2), endpoint_port);
        let client = at(ip(client, 1), client_port);
        let protocol = if tcp_flow { TCP } else { UDP };
        let mut lab = TcLab::load();
        lab.service(vip, protocol, &[endpoint]);
        let t = |s: u16, d: u16| if tcp_flow {
            Transport::Tcp { sport: s, dport: d, flags: SYN, payload: payload.clone() }
        } else {
            Transport::udp(s, d, &payload)
        };
        let request = frame::frame(&frame::ip_packet(client.ip(), vip.ip(), &t(client.port(), vip.port()), V4Options::default()));
        let run = lab.ingress(&request);
        prop_assert_eq!(run.verdict, TC_ACT_UNSPEC);
        let seen = frame::parse(&run.frame);
        prop_assert_eq!(at(seen.dst, seen.dport), endpoint);
        prop_assert_eq!(frame::verify(&run.frame), Ok(()));
        let reply = frame::frame(&frame::ip_packet(endpoint.ip(), client.ip(), &t(endpoint.port(), client.port()), V4Options::default()));
        let run = lab.egress(&reply);
        let seen = frame::parse(&run.frame);
        prop_assert_eq!(at(seen.src, seen.sport), vip);
        prop_assert_eq!(frame::verify(&run.frame), Ok(()));
    }
}
