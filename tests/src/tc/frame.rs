//! Ethernet frames built by hand for the TC programs (IPv4 and IPv6; TCP, UDP, ICMP errors;
//! fragments; deliberately broken ones), read back, and their checksums verified by an
//! implementation of RFC 1071 of the tests' own — so a test never trusts the kernel's
//! arithmetic to judge the kernel's arithmetic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const GRE: u8 = 47;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

const ETH_HLEN: usize = 14;

/// The one's-complement sum of 16-bit big-endian words (an odd byte padded with zero).
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let (pairs, rest) = data.as_chunks::<2>();
    for pair in pairs {
        sum += u32::from(u16::from_be_bytes(*pair));
    }
    if let [last] = rest {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `data` (with its checksum field zeroed by the caller).
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// The transport checksum over the pseudo-header of `src`, `dst`, `protocol` and `segment`.
pub fn transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
            sum += u32::from(protocol);
            sum += segment.len() as u32;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
            sum += segment.len() as u32;
            sum += u32::from(protocol);
        }
        _ => panic!("mixed families"),
    }
    fold(sum16(segment, sum))
}

/// A transport header and payload, before the IP layer is put around it.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        zero_checksum: bool,
    },
    /// An ICMP or ICMPv6 error quoting `quoted` (a whole IP packet, cut to `quote_len`).
    IcmpError {
        kind: u8,
        code: u8,
        quoted: Vec<u8>,
        quote_len: usize,
    },
    /// Bytes of another protocol.
    Raw { protocol: u8, bytes: Vec<u8> },
}

impl Transport {
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
        Transport::Tcp {
            sport,
            dport,
            flags,
            payload: b"hello".to_vec(),
        }
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Transport {
        Transport::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
            zero_checksum: false,
        }
    }

    fn protocol(&self, v6: bool) -> u8 {
        match self {
            Transport::Tcp { .. } => TCP,
            Transport::Udp { .. } => UDP,
            Transport::IcmpError { .. } => {
                if v6 {
                    ICMPV6
                } else {
                    ICMP
                }
            }
            Transport::Raw { protocol, .. } => *protocol,
        }
    }

    /// The segment with its checksum filled in for `src` → `dst`.
    fn segment(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        match self {
            Transport::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut s = Vec::new();
                s.extend(sport.to_be_bytes());
                s.extend(dport.to_be_bytes());
                s.extend(1000u32.to_be_bytes());
                s.extend(if flags & ACK != 0 { 2000u32 } else { 0 }.to_be_bytes());
                s.push(5 << 4);
                s.push(*flags);
                s.extend(65535u16.to_be_bytes());
                s.extend([0, 0, 0, 0]);
                s.extend(payload);
                let sum = transport_checksum(src, dst, TCP, &s);
                s[16..18].copy_from_slice(&sum.to_be_bytes());
                s
            }
            Transport::Udp {
                sport,
                dport,
                payload,
                zero_checksum,
            } => {
                let mut s = Vec::new();
                s.extend(sport.to_be_bytes());
                s.extend(dport.to_be_bytes());
                s.extend(((8 + payload.len()) as u16).to_be_bytes());
                s.extend([0, 0]);
                s.extend(payload);
                if !zero_checksum {
                    let mut sum = transport_checksum(src, dst, UDP, &s);
                    if sum == 0 {
                        sum = 0xffff;
                    }
                    s[6..8].copy_from_slice(&sum.to_be_bytes());
                }
                s
            }
            Transport::IcmpError {
                kind,
                code,
                quoted,
                quote_len,
            } => {
                let mut s = vec![*kind, *code, 0, 0];
                // Unused, or the next-hop MTU (frag needed) / MTU (packet too big).
                s.extend(1280u32.to_be_bytes());
                s.extend(&quoted[..(*quote_len).min(quoted.len())]);
                let sum = if src.is_ipv6() {
                    transport_checksum(src, dst, ICMPV6, &s)
                } else {
                    checksum(&s)
                };
                s[2..4].copy_from_slice(&sum.to_be_bytes());
                s
            }
            Transport::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// IPv4 header details a test may vary.
#[derive(Clone, Copy, Debug)]
pub struct V4Options {
    pub id: u16,
    /// Flags and fragment offset (host order): 0x2000 = more fragments, low 13 bits the
    /// offset in 8-byte units.
    pub frag: u16,
    /// 32-bit words of IP options (each 0x01, NOP), making the header longer.
    pub option_words: u8,
    /// The header-length field, if not the true one.
    pub ihl_override: Option<u8>,
}

impl Default for V4Options {
    fn default() -> Self {
        V4Options {
            id: 0x1234,
            frag: 0,
            option_words: 0,
            ihl_override: None,
        }
    }
}

/// An IP packet (no Ethernet header): `src` → `dst` carrying `transport`.
pub fn ip_packet(src: IpAddr, dst: IpAddr, transport: &Transport, v4: V4Options) -> Vec<u8> {
    let protocol = transport.protocol(src.is_ipv6());
    let segment = transport.segment(src, dst);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let options = 4 * v4.option_words as usize;
            let header_len = 20 + options;
            let mut p = Vec::new();
            let ihl = v4.ihl_override.unwrap_or((header_len / 4) as u8);
            p.push(0x40 | ihl);
            p.push(0);
            p.extend(((header_len + segment.len()) as u16).to_be_bytes());
            p.extend(v4.id.to_be_bytes());
            p.extend(v4.frag.to_be_bytes());
            p.push(64);
            p.push(protocol);
            p.extend([0, 0]);
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend(std::iter::repeat_n(1u8, options));
            let sum = checksum(&p);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend(segment);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_packet(s, d, protocol, &segment),
        _ => panic!("mixed families"),
    }
}

fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((payload.len() as u16).to_be_bytes());
    p.push(next);
    p.push(64);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(payload);
    p
}

/// An IPv6 packet to `dst` with a hop-by-hop options header before `transport`.
pub fn ipv6_with_extension(src: Ipv6Addr, dst: Ipv6Addr, transport: &Transport) -> Vec<u8> {
    let segment = transport.segment(IpAddr::V6(src), IpAddr::V6(dst));
    // Next header, length 0 (8 bytes), PadN option filling the rest.
    let mut payload = vec![transport.protocol(true), 0, 1, 4, 0, 0, 0, 0];
    payload.extend(segment);
    ipv6_packet(src, dst, 0, &payload)
}

/// An Ethernet frame around an IP packet.
pub fn frame(packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend(ethertype.to_be_bytes());
    f.extend(packet);
    f
}

/// An Ethernet frame of another protocol (ARP).
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x02]);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0; 28]);
    f
}

/// A frame as the tests read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Ports of TCP/UDP (0 otherwise, or in a later fragment).
    pub sport: u16,
    pub dport: u16,
    /// Offset of the transport header in the frame.
    pub l4: usize,
}

/// Reads a frame's addresses and ports (IPv6 without extension headers).
pub fn parse(frame: &[u8]) -> Seen {
    let ip = &frame[ETH_HLEN..];
    let (src, dst, protocol, l4, later) = if ip[0] >> 4 == 4 {
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        (
            IpAddr::from(s),
            IpAddr::from(d),
            ip[9],
            ETH_HLEN + ihl,
            frag & 0x1fff != 0,
        )
    } else {
        let s: [u8; 16] = ip[8..24].try_into().unwrap();
        let d: [u8; 16] = ip[24..40].try_into().unwrap();
        (
            IpAddr::from(s),
            IpAddr::from(d),
            ip[6],
            ETH_HLEN + 40,
            false,
        )
    };
    let (sport, dport) = if (protocol == TCP || protocol == UDP) && !later {
        (
            u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
            u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
        )
    } else {
        (0, 0)
    };
    Seen {
        src,
        dst,
        protocol,
        sport,
        dport,
        l4,
    }
}

/// Checks every checksum of a frame: the IPv4 header's, and the transport checksum of a
/// whole (unfragmented) TCP/UDP/ICMP packet. Returns what is wrong, if anything.
pub fn verify(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[ETH_HLEN..];
    let seen = parse(frame);
    let v4 = ip[0] >> 4 == 4;
    let (total, fragmented) = if v4 {
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let mut header = ip[..ihl].to_vec();
        let stated = u16::from_be_bytes([header[10], header[11]]);
        header[10] = 0;
        header[11] = 0;
        let want = checksum(&header);
        if stated != want {
            return Err(format!(
                "IPv4 header checksum {stated:#06x}, should be {want:#06x}"
            ));
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        (
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            frag & 0x3fff != 0,
        )
    } else {
        (40 + u16::from_be_bytes([ip[4], ip[5]]) as usize, false)
    };
    if fragmented {
        return Ok(());
    }
    let mut segment = frame[seen.l4..ETH_HLEN + total].to_vec();
    let offset = match seen.protocol {
        TCP => 16,
        UDP => 6,
        ICMP | ICMPV6 => 2,
        _ => return Ok(()),
    };
    let stated = u16::from_be_bytes([segment[offset], segment[offset + 1]]);
    if seen.protocol == UDP && stated == 0 && v4 {
        return Ok(());
    }
    segment[offset] = 0;
    segment[offset + 1] = 0;
    let mut want = if seen.protocol == ICMP {
        checksum(&segment)
    } else {
        transport_checksum(seen.src, seen.dst, seen.protocol, &segment)
    };
    if seen.protocol == UDP && want == 0 {
        want = 0xffff;
    }
    if stated != want {
        return Err(format!(
            "{} checksum {stated:#06x}, should be {want:#06x}",
            match seen.protocol {
                TCP => "TCP",
                UDP => "UDP",
                _ => "ICMP",
            }
        ));
    }
    Ok(())
}

/// The quoted packet inside an ICMP error frame, as a frame of its own (for `parse`).
pub fn quoted(frame: &[u8]) -> Vec<u8> {
    let seen = parse(frame);
    let mut inner = frame[..ETH_HLEN].to_vec();
    inner.extend(&frame[seen.l4 + 8..]);
    inner
}

/// The IPv4 header checksum of the packet quoted in an ICMP error frame is right.
pub fn quoted_ipv4_header_ok(frame: &[u8]) -> bool {
    let inner = &quoted(frame)[ETH_HLEN..];
    let ihl = (inner[0] & 0x0f) as usize * 4;
    let mut header = inner[..ihl].to_vec();
    let stated = u16::from_be_bytes([header[10], header[11]]);
    header[10] = 0;
    header[11] = 0;
    stated == checksum(&header)
}

pub fn v4(a: &str) -> IpAddr {
    IpAddr::V4(a.parse::<Ipv4Addr>().expect("an IPv4 address"))
}

pub fn v6(a: &str) -> IpAddr {
    IpAddr::V6(a.parse::<Ipv6Addr>().expect("an IPv6 address"))
}

pub fn at(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_a_flipped_bit_does_not() {
        for (src, dst) in [
            (v4("10.0.1.2"), v4("10.96.0.10")),
            (v6("fd01::2"), v6("fd96::10")),
        ] {
            for t in [
                Transport::tcp(40000, 80, SYN),
                Transport::udp(40000, 53, b"query"),
            ] {
                let mut f = frame(&ip_packet(src, dst, &t, V4Options::default()));
                assert_eq!(verify(&f), Ok(()));
                let last = f.len() - 1;
                f[last] ^= 1;
                assert!(verify(&f).is_err());
            }
        }
        // RFC 1071's example sum.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
