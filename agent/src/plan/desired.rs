//! What the kernel should hold for a config: per service, its frontend key, table size and
//! the endpoints with their effective weights.

use std::{collections::BTreeMap, net::IpAddr};

use weft_common::{Addr, Backend, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, ServiceKey};

use super::maglev;
use crate::config::{Config, Protocol};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceKey, DesiredService>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub table_size: u32,
    pub members: Vec<DesiredMember>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredMember {
    pub backend: Backend,
    pub hash: u64,
    pub weight: u32,
}

/// The desired datapath state. `effective_weight(service, endpoint)` turns a configured
/// endpoint into the weight the kernel should use (health lowers it to 0).
pub fn desired_state(
    config: &Config,
    effective_weight: impl Fn(&crate::config::Service, &crate::config::Endpoint) -> u32,
) -> Desired {
    let services = config
        .services
        .iter()
        .map(|service| {
            let key = service_key(service.address, service.port, service.protocol);
            let members = service
                .endpoints
                .iter()
                .map(|endpoint| DesiredMember {
                    backend: backend(endpoint.address, endpoint.port),
                    hash: maglev::endpoint_hash(endpoint.address, endpoint.port),
                    weight: effective_weight(service, endpoint),
                })
                .collect();
            let desired = DesiredService {
                name: service.name.clone(),
                table_size: maglev::table_size(service.endpoints.len()),
                members,
            };
            (key, desired)
        })
        .collect();
    Desired { services }
}

pub fn service_key(address: IpAddr, port: u16, protocol: Protocol) -> ServiceKey {
    let (addr, family) = kernel_addr(address);
    ServiceKey {
        addr,
        port: port.to_be(),
        protocol: match protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family,
    }
}

pub fn backend(address: IpAddr, port: u16) -> Backend {
    let (addr, family) = kernel_addr(address);
    Backend {
        addr,
        port: port.to_be(),
        family,
        _pad: 0,
    }
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

/// The inverse of `kernel_addr`, for display.
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
