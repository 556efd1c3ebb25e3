//! How the kernel side lays things out, in one place below everyone who needs it: table
//! sizes, the endpoint hash both Maglev and probe jitter use, and the conversions between
//! socket addresses and the maps' key and value encodings.

use std::net::{IpAddr, SocketAddr};

use weft_common::{
    Addr, Backend, FAMILY_V4, FAMILY_V6, MAGLEV_CHUNK, PROTO_TCP, PROTO_UDP, ServiceKey,
};

use crate::config::{Frontend, Protocol};

/// Slots per endpoint: M ≥ 100·N keeps disruption on a change within about 1 %.
const SLOTS_PER_ENDPOINT: u64 = 100;
const MIN_TABLE: u64 = 101;
/// Largest table (a prime); services with more than ~1,300 endpoints share it.
pub const MAX_TABLE: u32 = 131_071;

/// The Maglev table size for a service with `endpoints` configured endpoints: the smallest
/// prime ≥ 100 × (endpoints rounded up to a power of two). Rounding means M stays the same
/// while endpoints come and go within a power of two, so such changes stay minimally
/// disruptive.
pub fn table_size(endpoints: usize) -> u32 {
    let rounded = (endpoints.max(1) as u64).next_power_of_two();
    let wanted = (rounded * SLOTS_PER_ENDPOINT).max(MIN_TABLE);
    if wanted >= u64::from(MAX_TABLE) {
        return MAX_TABLE;
    }
    let mut candidate = wanted | 1;
    while !is_prime(candidate) {
        candidate += 2;
    }
    candidate.min(u64::from(MAX_TABLE)) as u32
}

/// Map elements a table of `m` slots occupies.
pub fn chunks(m: u32) -> u32 {
    m.div_ceil(MAGLEV_CHUNK)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A stable 64-bit identity hash of an endpoint: the same on every agent and every run, so
/// a restarted agent rebuilds exactly the tables that are installed.
pub fn endpoint_hash(endpoint: SocketAddr) -> u64 {
    // FNV-1a over the address bytes and port, then a finalizer to spread the bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    match endpoint.ip() {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut feed),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut feed),
    }
    endpoint
        .port()
        .to_be_bytes()
        .into_iter()
        .for_each(&mut feed);
    mix(hash)
}

/// A 64-bit finalizer (splitmix64's): spreads every input bit over the output.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A service frontend as the service map's key.
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    let (addr, family) = kernel_addr(frontend.address);
    ServiceKey {
        addr,
        port: frontend.port.to_be(),
        protocol: match frontend.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family,
    }
}

/// The frontend a service map key stands for.
pub fn frontend_of(key: &ServiceKey) -> Frontend {
    Frontend {
        address: ip_from_kernel(&key.addr, key.family),
        port: u16::from_be(key.port),
        protocol: if key.protocol == PROTO_UDP {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
    }
}

/// An endpoint as the backend map's value.
pub fn backend(endpoint: SocketAddr) -> Backend {
    let (addr, family) = kernel_addr(endpoint.ip());
    Backend {
        addr,
        port: endpoint.port().to_be(),
        family,
        _pad: 0,
    }
}

/// The endpoint a backend map value names.
pub fn endpoint_of(backend: &Backend) -> SocketAddr {
    SocketAddr::new(
        ip_from_kernel(&backend.addr, backend.family),
        u16::from_be(backend.port),
    )
}

/// An address in the kernel's layout: words holding network-order bytes.
pub fn kernel_addr(address: IpAddr) -> (Addr, u8) {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    match address {
        IpAddr::V4(a) => ([word(&a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            (
                [
                    word(&o[0..4]),
                    word(&o[4..8]),
                    word(&o[8..12]),
                    word(&o[12..16]),
                ],
                FAMILY_V6,
            )
        }
    }
}

/// The inverse of `kernel_addr`.
pub fn ip_from_kernel(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        let mut octets = [0u8; 16];
        for (i, word) in addr.iter().enumerate() {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    } else {
        IpAddr::from(addr[0].to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_prime_and_large_enough() {
        for n in [0, 1, 2, 3, 7, 10, 100, 1000, 5000] {
            let m = table_size(n);
            assert!(is_prime(u64::from(m)), "{m} not prime");
            assert!(
                u64::from(m) >= (100 * n as u64).min(u64::from(MAX_TABLE)),
                "n={n} m={m}"
            );
        }
        assert_eq!(
            table_size(3),
            table_size(4),
            "M is stable within a power of two"
        );
    }

    #[test]
    fn addresses_round_trip_through_the_kernel_layout() {
        for text in ["10.1.2.3:80", "[fd00::2]:8080", "[::ffff:10.0.0.1]:53"] {
            let endpoint: SocketAddr = text.parse().unwrap();
            assert_eq!(endpoint_of(&backend(endpoint)), endpoint);
        }
    }
}
